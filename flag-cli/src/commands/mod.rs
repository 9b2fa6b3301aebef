//! One module per noun.

pub mod auth;
pub mod code;
pub mod env;
pub mod eval;
pub mod flag;
pub mod login;
pub mod promote;
pub mod ramp;
pub mod refs;
pub mod stale;
pub mod status;
pub mod token;
pub mod validate;
pub mod watch;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{CliError, Result};

// Paths are built here and handed to `client::Api`, which joins them to the server URL; the
// `url` crate's `path_segments_mut` would need that whole URL. Segments are encoded with
// `percent-encoding` (the `url` project's own encoder) and queries with `url`'s
// `form_urlencoded`, as the server's query extractor decodes them.

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

/// One path segment naming `what`, percent-encoded. An empty segment, `.` or `..` is refused:
/// URL libraries resolve dot segments away even when percent-encoded (RFC 3986 §5.2.4), so the
/// request would reach another resource.
fn segment(what: &str, text: &str) -> Result<String> {
    if text.is_empty() {
        return Err(CliError::input(format!("the {what} may not be empty")));
    }
    if text == "." || text == ".." {
        return Err(CliError::input(format!(
            "invalid {what} {text:?}: a URL dot segment, which cannot be addressed"
        )));
    }
    Ok(encode(text))
}

/// A flag key as one path segment, after checking it as the server would (so a key such as
/// `..` is refused with a clear message).
pub fn flag_segment(key: &str) -> Result<String> {
    flag_core::check_flag_key(key)
        .map_err(|message| CliError::input(format!("invalid flag key: {message}")))?;
    Ok(encode(key))
}

/// `/api/v1/environments/{env}`.
pub fn environment_path(environment: &str) -> Result<String> {
    Ok(format!(
        "/api/v1/environments/{}",
        segment("environment name", environment)?
    ))
}

/// `/api/v1/environments/{env}/flags/{key}`.
pub fn flag_path(environment: &str, key: &str) -> Result<String> {
    Ok(format!(
        "{}/flags/{}",
        environment_path(environment)?,
        flag_segment(key)?
    ))
}

/// `/api/v1/tokens/{id}`.
pub fn token_path(id: &str) -> Result<String> {
    Ok(format!("/api/v1/tokens/{}", segment("token id", id)?))
}

/// `path?name=value&...`, form-encoded; just `path` when there are no pairs.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return path.to_owned();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
}

/// Prints a write's warnings (what flagd loads but handles at evaluation time) on stderr.
pub fn print_warnings(body: &serde_json::Value) {
    let warnings: Vec<flag_core::Problem> = body
        .get("warnings")
        .and_then(|warnings| serde_json::from_value(warnings.clone()).ok())
        .unwrap_or_default();
    for warning in &warnings {
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
pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::input(format!("cannot read {}: {error}", path.display())))?;
    // Duplicate keys are refused as the server refuses them: the last one would silently win.
    flag_core::json::from_str_unique(&text)
        .map_err(|error| CliError::input(format!("{} is not valid JSON: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_environments_stay_one_segment() {
        assert_eq!(
            flag_path("prod.eu", "checkout/v2").ok().as_deref(),
            Some("/api/v1/environments/prod.eu/flags/checkout%2Fv2")
        );
        assert_eq!(
            flag_path("default", "new checkout?x=1#über")
                .ok()
                .as_deref(),
            Some("/api/v1/environments/default/flags/new%20checkout%3Fx%3D1%23%C3%BCber")
        );
        assert_eq!(
            token_path("../environments/prod").ok().as_deref(),
            Some("/api/v1/tokens/..%2Fenvironments%2Fprod")
        );
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        for environment in ["", ".", ".."] {
            assert!(environment_path(environment).is_err(), "{environment:?}");
            assert!(flag_path(environment, "f").is_err(), "{environment:?}");
        }
        for key in ["", ".", ".."] {
            assert!(flag_path("default", key).is_err(), "{key:?}");
        }
        assert!(token_path("..").is_err());
        assert!(flag_path("default", "...").is_ok());
    }

    #[test]
    fn query_values_are_form_encoded() {
        assert_eq!(
            with_query(
                "/api/v1/audit",
                &[
                    ("environment", "default"),
                    ("flag", "a&b=c+d é"),
                    ("limit", "20")
                ]
            ),
            "/api/v1/audit?environment=default&flag=a%26b%3Dc%2Bd+%C3%A9&limit=20"
        );
        assert_eq!(
            with_query("/api/v1/environments/x", &[]),
            "/api/v1/environments/x"
        );
    }
}
