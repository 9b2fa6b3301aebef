//! `flagctl login`: save the server and token.

use crate::client::Api;
use crate::config::{self, ConfigFile};
use crate::error::{CliError, Result, exit};

pub async fn run(
    server: Option<&str>,
    token: Option<&str>,
    ca_cert: Option<&std::path::Path>,
) -> Result<u8> {
    let (Some(server), Some(token)) = (server, token) else {
        return Err(CliError::usage(
            "login needs --server URL and --token TOKEN",
        ));
    };
    // Check both before saving: a typo should fail now, not on the next command.
    let api = Api::new(server, token, false, ca_cert)?;
    api.get("/api/v1/environments").await?;
    // Saved as an absolute path: later commands run from other directories.
    let ca_cert = ca_cert
        .map(|path| {
            std::fs::canonicalize(path).map_err(|error| {
                CliError::config(format!("cannot read {}: {error}", path.display()))
            })
        })
        .transpose()?;
    let file = ConfigFile {
        server: Some(api.server.clone()),
        token: Some(token.to_owned()),
        ca_cert,
        ..config::load().unwrap_or_default()
    };
    let path = config::save(&file)?;
    eprintln!(
        "logged in to {}; saved to {} (mode 0600)",
        api.server,
        path.display()
    );
    Ok(exit::OK)
}
