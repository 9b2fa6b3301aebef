//! `flagctl watch`: one line per change of the environment, live, until interrupted.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::Context;
use crate::error::{CliError, Kind, Result, exit};
use crate::output::{self, Format};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub async fn run(context: &Context) -> Result<u8> {
    let api = context.api()?;
    let url = format!(
        "{}/api/v1/stream?environment={}",
        api.server
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1),
        super::encode(&context.environment)
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| CliError::config(format!("invalid server URL: {error}")))?;
    let authorization = format!("Bearer {}", api.token())
        .parse()
        .map_err(|_| CliError::config("the token contains characters an HTTP header cannot"))?;
    request.headers_mut().insert("authorization", authorization);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|error| match error {
            tokio_tungstenite::tungstenite::Error::Http(response) => CliError::new(
                Kind::Server,
                format!("the server refused the stream: {}", response.status()),
            )
            .hint("watch needs an admin token"),
            other => CliError::new(
                Kind::Network,
                format!("cannot reach the flag server at {}: {other}", api.server),
            ),
        })?;
    eprintln!("watching {} (Ctrl-C to stop)", context.environment);
    let mut flags: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(CliError::new(Kind::Network, "the server closed the stream"));
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                return Err(CliError::new(
                    Kind::Network,
                    format!("the stream broke: {error}"),
                ));
            }
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let version = message["version"].as_i64().unwrap_or(0);
        match message["type"].as_str() {
            Some("snapshot") => {
                flags = message["document"]["flags"]
                    .as_object()
                    .map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                if context.output == Format::Json {
                    println!(
                        "{}",
                        serde_json::json!({"time": now(), "version": version, "type": "snapshot", "flags": flags.len()})
                    );
                } else {
                    println!(
                        "{}  v{version}  snapshot: {} flag(s)",
                        output::time(now()),
                        flags.len()
                    );
                }
            }
            Some("patch") => {
                for (key, flag) in message["upserts"].as_object().into_iter().flatten() {
                    let before = flags.insert(key.clone(), flag.clone());
                    let changes = output::diff(before.as_ref().unwrap_or(&Value::Null), flag);
                    let action = if before.is_some() {
                        "updated"
                    } else {
                        "created"
                    };
                    print_change(context, version, key, action, &changes);
                }
                for key in message["deletes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    flags.remove(key);
                    print_change(context, version, key, "deleted", &[]);
                }
            }
            Some("goodbye") => {
                eprintln!(
                    "the server said goodbye: {}",
                    output::cell(&message["reason"])
                );
                return Ok(exit::OK);
            }
            _ => {}
        }
    }
}

fn print_change(context: &Context, version: i64, key: &str, action: &str, changes: &[String]) {
    if context.output == Format::Json {
        println!(
            "{}",
            serde_json::json!({"time": now(), "version": version, "key": key, "action": action, "changes": changes})
        );
    } else {
        let summary = if changes.is_empty() {
            String::new()
        } else {
            format!(": {}", changes.join("; "))
        };
        println!(
            "{}  v{version}  {key} {action}{summary}",
            output::time(now())
        );
    }
}
