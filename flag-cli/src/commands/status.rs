//! `flagctl status`: the environment's version, its Git source and drift (if bound), and its
//! connected SDK clients.

use serde_json::Value;

use crate::Context;
use crate::error::{Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context) -> Result<u8> {
    let api = context.api().await?;
    let answer = api
        .get(&format!(
            "{}/clients",
            super::environment_path(&context.environment)?
        ))
        .await?;
    // The environment's Git source, if it has one (404: it has none).
    let (status, source) = api
        .call_raw(
            reqwest::Method::GET,
            &format!("{}/source", super::environment_path(&context.environment)?),
            None,
        )
        .await?;
    let source = status.is_success().then_some(source);
    if context.output == Format::Json {
        let mut body = answer.body.clone();
        if let (Some(source), Some(object)) = (&source, body.as_object_mut()) {
            object.insert("source".to_owned(), source.clone());
        }
        output::json(&body)?;
        return Ok(exit::OK);
    }
    let version = answer.body["version"].as_i64().unwrap_or(0);
    let clients = answer.body["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    outln!(
        "environment {} at version {version}; {} stream client(s)",
        context.environment,
        clients.len()
    )?;
    if let Some(view) = source
        .as_ref()
        .and_then(|s| serde_json::from_value::<flag_protocol::source::SourceView>(s.clone()).ok())
    {
        super::env::print_source(&view)?;
    }
    if clients.is_empty() {
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            let lag = c["lag"].as_i64().unwrap_or(0);
            let state = if c["ackedVersion"].is_null() {
                "no acks".to_owned()
            } else if lag > 0 {
                format!("BEHIND by {lag}")
            } else {
                "current".to_owned()
            };
            vec![
                output::cell(c.get("clientId").unwrap_or(&Value::Null)),
                format!(
                    "{} {}",
                    output::cell(&c["sdk"]),
                    output::cell(&c["sdkVersion"])
                ),
                output::cell(&c["tokenName"]),
                c["connectedAt"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), output::time),
                output::cell(&c["ackedVersion"]),
                state,
            ]
        })
        .collect();
    output::table(
        &["CLIENT", "SDK", "TOKEN", "CONNECTED", "ACKED", "STATE"],
        &rows,
    )?;
    Ok(exit::OK)
}
