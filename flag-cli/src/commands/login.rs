//! `flagctl login`: save the server and token.

use crate::client::Api;
use crate::config::{self, ConfigFile};
use crate::error::{CliError, Result, exit};

pub async fn run(server: Option<&str>, token: Option<&str>) -> Result<u8> {
    let (Some(server), Some(token)) = (server, token) else {
        return Err(CliError::usage(
            "login needs --server URL and --token TOKEN",
        ));
    };
    // Check both before saving: a typo should fail now, not on the next command.
    let api = Api::new(server, token, false)?;
    api.get("/api/v1/environments").await?;
    let file = ConfigFile {
        server: Some(api.server.clone()),
        token: Some(token.to_owned()),
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
