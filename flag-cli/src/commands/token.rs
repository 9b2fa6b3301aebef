//! `flagctl token`.

use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::cli::TokenCommand;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: TokenCommand) -> Result<u8> {
    let api = context.api().await?;
    match command {
        TokenCommand::Create {
            role,
            name,
            environments,
        } => {
            let mut body = json!({"name": name, "role": role});
            match (role.as_str(), environments.as_slice()) {
                ("sdk", []) => body["environment"] = json!(context.environment),
                ("sdk", [one]) => body["environment"] = json!(one),
                ("sdk", _) => {
                    return Err(CliError::usage(
                        "an sdk token reads one environment: give --environment once",
                    ));
                }
                (_, []) => {}
                (_, names) => body["environments"] = json!(names),
            }
            let answer = api
                .call(Method::POST, "/api/v1/tokens", Some(&body), &[])
                .await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
            } else {
                outln!("{}", output::cell(&answer.body["token"]))?;
                eprintln!(
                    "created {role} token {} ({}) for {}; the secret above is shown only this once",
                    output::cell(&answer.body["id"]),
                    name,
                    scope(&answer.body)
                );
            }
        }
        TokenCommand::List => {
            let answer = api.get("/api/v1/tokens").await?;
            if context.output == Format::Json {
                output::json(&answer.body["tokens"])?;
            } else {
                let rows: Vec<Vec<String>> = answer.body["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            output::cell(&t["id"]),
                            output::cell(&t["name"]),
                            output::cell(&t["role"]),
                            scope(t),
                            t["createdAt"]
                                .as_i64()
                                .map_or_else(|| "-".to_owned(), output::time),
                            t["revokedAt"].as_i64().map_or_else(
                                || "active".to_owned(),
                                |at| format!("revoked {}", output::time(at)),
                            ),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "NAME", "ROLE", "ENVIRONMENTS", "CREATED", "STATUS"],
                    &rows,
                )?;
            }
        }
        TokenCommand::Revoke { id } => {
            api.call(Method::DELETE, &super::token_path(&id)?, None, &[])
                .await?;
            if context.output == Format::Json {
                output::json(&json!({"revoked": id}))?;
            } else {
                outln!("revoked token {id}")?;
            }
        }
    }
    Ok(exit::OK)
}

/// What a token may use: an sdk token's environment, a scoped admin's list, or every
/// environment.
fn scope(token: &serde_json::Value) -> String {
    if let Some(environment) = token["environment"].as_str() {
        return environment.to_owned();
    }
    match token["environments"].as_array() {
        Some(names) => names.iter().map(output::cell).collect::<Vec<_>>().join(","),
        None => "(all)".to_owned(),
    }
}
