//! `flagctl login`: save the server and token.

use crate::client::{Api, TlsFiles};
use crate::config::{self, ConfigFile};
use crate::error::{CliError, Result, exit};

pub async fn run(server: Option<&str>, token: Option<&str>, tls: &TlsFiles) -> Result<u8> {
    let (Some(server), Some(token)) = (server, token) else {
        return Err(CliError::usage(
            "login needs --server URL and --token TOKEN",
        ));
    };
    // Check both before saving: a typo should fail now, not on the next command.
    let api = Api::new(server, token, false, tls)?;
    api.get("/api/v1/environments").await?;
    // Saved as absolute paths: later commands run from other directories.
    let absolute = |path: &Option<std::path::PathBuf>| {
        path.as_deref()
            .map(|path| {
                std::fs::canonicalize(path).map_err(|error| {
                    CliError::config(format!("cannot read {}: {error}", path.display()))
                })
            })
            .transpose()
    };
    let file = ConfigFile {
        server: Some(api.server.clone()),
        token: Some(token.to_owned()),
        ca_cert: absolute(&tls.ca_cert)?,
        client_cert: absolute(&tls.client_cert)?,
        client_key: absolute(&tls.client_key)?,
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
