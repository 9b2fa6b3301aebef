//! `flagctl token`.

use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::cli::TokenCommand;
use crate::error::{Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: TokenCommand) -> Result<u8> {
    let api = context.api()?;
    match command {
        TokenCommand::Create { role, name } => {
            let mut body = json!({"name": name, "role": role});
            if role == "sdk" {
                body["environment"] = json!(context.environment);
            }
            let answer = api
                .call(Method::POST, "/api/v1/tokens", Some(&body), &[])
                .await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
            } else {
                outln!("{}", output::cell(&answer.body["token"]))?;
                eprintln!(
                    "created {role} token {} ({}); the secret above is shown only this once",
                    output::cell(&answer.body["id"]),
                    name
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
                            output::cell(&t["environment"]),
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
                    &["ID", "NAME", "ROLE", "ENVIRONMENT", "CREATED", "STATUS"],
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
