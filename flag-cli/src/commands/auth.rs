//! `flagctl auth whoami`.

use flag_protocol::auth::{Credential, Identity, WHOAMI_PATH};

use crate::Context;
use crate::cli::AuthCommand;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: AuthCommand) -> Result<u8> {
    match command {
        AuthCommand::Oidc => {
            let answer = context.api().await?.get("/api/v1/auth/oidc").await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
                return Ok(exit::OK);
            }
            let issuers = answer.body["issuers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if issuers.is_empty() {
                outln!("this server trusts no OIDC issuer (flagd-server --oidc-config)")?;
                return Ok(exit::OK);
            }
            for issuer in &issuers {
                let jwks = &issuer["jwks"];
                let fetched = jwks["fetched_at"]
                    .as_i64()
                    .map_or_else(|| "never".to_owned(), output::time);
                outln!("issuer:   {}", output::cell(&issuer["issuer"]))?;
                outln!("audience: {}", output::cell(&issuer["audience"]))?;
                outln!(
                    "keys:     {} ({} key(s), fetched {fetched}{})",
                    output::cell(&jwks["uri"]),
                    jwks["key_ids"].as_array().map_or(0, Vec::len),
                    jwks["last_error"]
                        .as_str()
                        .map(|e| format!("; last fetch failed: {e}"))
                        .unwrap_or_default()
                )?;
                let rows: Vec<Vec<String>> = issuer["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(index, rule)| {
                        let claims = rule["claims"]
                            .as_object()
                            .map(|claims| {
                                claims
                                    .iter()
                                    .map(|(name, pattern)| {
                                        format!("{name}={}", output::cell(pattern))
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default();
                        let environments = rule["environments"].as_array().map_or_else(
                            || "(all)".to_owned(),
                            |names| names.iter().map(output::cell).collect::<Vec<_>>().join(","),
                        );
                        vec![
                            rule["name"]
                                .as_str()
                                .map_or_else(|| format!("rules[{index}]"), str::to_owned),
                            claims,
                            output::cell(&rule["role"]),
                            environments,
                        ]
                    })
                    .collect();
                output::table(&["RULE", "CLAIMS", "ROLE", "ENVIRONMENTS"], &rows)?;
                outln!("")?;
            }
        }
        AuthCommand::Whoami => {
            let answer = context.api().await?.get(WHOAMI_PATH).await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
                return Ok(exit::OK);
            }
            let identity: Identity = serde_json::from_value(answer.body).map_err(|error| {
                CliError::input(format!(
                    "the server's identity answer does not parse: {error}"
                ))
            })?;
            let environments = identity
                .environments
                .as_ref()
                .map_or_else(|| "(all)".to_owned(), |names| names.join(", "));
            outln!("actor:        {}", identity.actor)?;
            outln!("role:         {}", identity.role)?;
            outln!("environments: {environments}")?;
            match &identity.credential {
                Credential::Token { id, name } => {
                    outln!("credential:   token {id} ({name})")?;
                }
                Credential::Oidc {
                    issuer,
                    subject,
                    expires_at,
                    rule,
                } => {
                    outln!("credential:   OIDC ID token")?;
                    outln!("issuer:       {issuer}")?;
                    outln!("subject:      {subject}")?;
                    outln!("rule:         {rule}")?;
                    outln!("expires:      {}", output::time(*expires_at))?;
                }
            }
        }
    }
    Ok(exit::OK)
}
