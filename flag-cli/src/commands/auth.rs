//! `flagctl auth whoami`.

use flag_protocol::auth::{Credential, Identity, WHOAMI_PATH};

use crate::Context;
use crate::cli::AuthCommand;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: AuthCommand) -> Result<u8> {
    match command {
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
