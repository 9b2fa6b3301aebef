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
pub mod validate;
// `watch` still prints with `println!`, so `flagctl watch | head -1` can panic; it is being
// rewritten separately, and should write through `output::line` like every other command.
#[allow(clippy::print_stdout)]
pub mod watch;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters is encoded, so a flag key such as
/// `checkout/v2` or `new checkout` stays one path segment (`checkout%2Fv2`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment or query value, percent-encoded.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// `/api/v1/environments/{env}`.
pub fn environment_path(environment: &str) -> String {
    format!("/api/v1/environments/{}", encode(environment))
}

/// `/api/v1/environments/{env}/flags/{key}`, after checking the key as the server would (so a
/// key such as `..`, which URL libraries would resolve away, is refused with a clear message).
pub fn flag_path(environment: &str, key: &str) -> crate::error::Result<String> {
    flag_core::check_flag_key(key)
        .map_err(|message| crate::error::CliError::input(format!("invalid flag key: {message}")))?;
    Ok(format!(
        "{}/flags/{}",
        environment_path(environment),
        encode(key)
    ))
}

/// Prints a write's warnings (what flagd loads but handles at evaluation time) on stderr.
pub fn print_warnings(body: &serde_json::Value) {
    for warning in body["warnings"].as_array().into_iter().flatten() {
        eprintln!("{}", crate::output::problem(warning));
    }
}

/// The `If-Match` header for a flag version: the server refuses the write (412) unless the flag
/// is still at `version` (0: unless it does not exist yet).
pub fn if_match(version: i64) -> (&'static str, String) {
    ("if-match", format!("\"{version}\""))
}

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
    // Duplicate keys are refused as the server refuses them: the last one would silently win.
    flag_core::json::from_str_unique(&text).map_err(|error| {
        crate::error::CliError::input(format!("{} is not valid JSON: {error}", path.display()))
    })
}
