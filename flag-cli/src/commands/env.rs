//! `flagctl env`.

use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::cli::EnvCommand;
use crate::error::{Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: EnvCommand) -> Result<u8> {
    let api = context.api()?;
    match command {
        EnvCommand::List => {
            let answer = api.get("/api/v1/environments").await?;
            if context.output == Format::Json {
                output::json(&answer.body["environments"])?;
            } else {
                let rows: Vec<Vec<String>> = answer.body["environments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| vec![output::cell(&e["name"]), output::cell(&e["version"])])
                    .collect();
                output::table(&["NAME", "VERSION"], &rows)?;
            }
        }
        EnvCommand::Create { name } => {
            let answer = api
                .call(
                    Method::POST,
                    "/api/v1/environments",
                    Some(&json!({"name": name})),
                    &[],
                )
                .await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
            } else {
                outln!("created environment {name}")?;
            }
        }
        EnvCommand::Delete { name, force } => {
            let force: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
            let path = super::with_query(&super::environment_path(&name)?, force);
            api.call(Method::DELETE, &path, None, &[]).await?;
            if context.output == Format::Json {
                output::json(&json!({"deleted": name}))?;
            } else {
                outln!("deleted environment {name}")?;
            }
        }
    }
    Ok(exit::OK)
}
