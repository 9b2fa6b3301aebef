//! One module per noun.

pub mod code;
pub mod env;
pub mod eval;
pub mod flag;
pub mod login;
pub mod promote;
pub mod ramp;
pub mod status;
pub mod token;
pub mod watch;

/// The `X-Change-Message` header, when there is a message.
pub fn message_header(message: Option<&String>) -> Vec<(&'static str, String)> {
    message
        .map(|m| vec![("x-change-message", m.clone())])
        .unwrap_or_default()
}

/// Reads a JSON file, naming the file in any error.
pub fn read_json(path: &std::path::Path) -> crate::error::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        crate::error::CliError::input(format!("cannot read {}: {error}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|error| {
        crate::error::CliError::input(format!("{} is not valid JSON: {error}", path.display()))
    })
}
