//! The HTTP client: the server's API, with its errors turned into `CliError`s that show the
//! server's message and path instead of an HTTP dump.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use flag_protocol::{ErrorBody, ErrorCode};

use crate::error::{CliError, Kind, Result};

/// A connection to one server with one token.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    pub server: String,
    token: String,
    /// Send `strict=true` with every write.
    strict: bool,
}

/// A successful answer: status, body and the `ETag` version, if any.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub version: Option<i64>,
}

impl Api {
    pub fn new(server: &str, token: &str, strict: bool) -> Result<Api> {
        let server = server.trim_end_matches('/').to_owned();
        let usable = url::Url::parse(&server).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https") && url.has_host() && url.query().is_none()
        });
        if !usable {
            return Err(CliError::config(format!(
                "invalid server URL {server:?}: use http://host:port"
            ))
            .hint("set --server or FLAGCTL_SERVER, e.g. http://127.0.0.1:8016"));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|error| {
                CliError::new(
                    Kind::Network,
                    format!("cannot create an HTTP client: {error}"),
                )
            })?;
        Ok(Api {
            http,
            server,
            token: token.to_owned(),
            strict,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends a request; any non-2xx answer becomes an error carrying the server's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer> {
        let (status, version, body) = self.send(method, path, body, headers).await?;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(Answer {
                status,
                body,
                version,
            });
        }
        Err(server_error(status, &body))
    }

    /// Sends a request and returns any answer as it is; only the network can fail.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let (status, _, body) = self.send(method, path, body, &[]).await?;
        Ok((status, body))
    }

    /// The status, the `ETag` version and the JSON body (null when empty or not JSON).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Option<i64>, Value)> {
        let strict = self.strict && method != Method::GET;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token);
        if strict {
            // Writes that check flags honour it; the others ignore unknown query parameters.
            request = request.query(&[("strict", "true")]);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| network_error(&self.server, &error))?;
        let status = response.status();
        let version = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|error| network_error(&self.server, &error))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, version, body))
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.call(Method::GET, path, None, &[]).await
    }
}

fn network_error(server: &str, error: &reqwest::Error) -> CliError {
    // reqwest's own message is terse ("client error (Connect)"): the root cause says more.
    let cause = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .last()
        .unwrap_or(error);
    CliError::new(
        Kind::Network,
        format!("cannot reach the flag server at {server}: {cause}"),
    )
    .hint("is it running? check --server / FLAGCTL_SERVER (or `flagctl login`)")
}

/// The server's `{"error": {"code", "message", "path", "problems"}}` as a `CliError` carrying
/// the code.
pub fn server_error(status: StatusCode, body: &Value) -> CliError {
    // A code this build does not know, or no body of ours at all (a proxy in between, say):
    // decide by the status, as docs/API.md tells clients to.
    let by_status = ErrorCode::for_status(status.as_u16());
    let Ok(ErrorBody { mut error }) = serde_json::from_value::<ErrorBody>(body.clone()) else {
        return with_hint(
            CliError::new(Kind::Server, format!("the server answered {status}")),
            by_status,
        );
    };
    if error.code == ErrorCode::Unknown {
        error.code = by_status;
    }
    // A validation error's message already lists its problems; show them one per line instead.
    let problems: Vec<String> = error
        .problems
        .iter()
        .map(|problem| {
            let line = if problem.path.is_empty() {
                problem.message.clone()
            } else {
                format!("{}: {}", problem.path, problem.message)
            };
            format!("{line} [{}]", problem.code)
        })
        .collect();
    let all_warnings =
        !error.problems.is_empty() && error.problems.iter().all(flag_core::Problem::is_warning);
    let cli = if problems.is_empty() {
        let message = match &error.path {
            Some(path) => format!("{} (at {path})", error.message),
            None => error.message.clone(),
        };
        CliError::new(Kind::Server, message)
    } else {
        let message = if all_warnings {
            format!(
                "refused in strict mode: {} warning(s) (flagd would load it; each flag would evaluate as flagd does)",
                problems.len()
            )
        } else {
            format!("the server rejected it: {} problem(s)", problems.len())
        };
        let mut cli = CliError::new(Kind::Server, message);
        cli.details = problems;
        if all_warnings {
            cli = cli.hint(
                "drop --strict (or ?strict=true, or the server's --strict) to accept warnings",
            );
        }
        cli
    };
    with_hint(cli, error.code)
}

/// Adds the hint for a server error code and records the code.
fn with_hint(cli: CliError, code: ErrorCode) -> CliError {
    let mut cli = match code {
        ErrorCode::Unauthorized => cli.hint("check the token: --token / FLAGCTL_TOKEN (or `flagctl login`)"),
        ErrorCode::Forbidden => cli.hint("this needs an admin token"),
        ErrorCode::PreconditionFailed => cli.hint("someone else changed it since it was read; look at `flagctl flag get`, then run the command again"),
        ErrorCode::RolloutVariants => cli.hint("name the variant to roll out with --variant NAME"),
        _ => cli,
    };
    cli.server_code = Some(code);
    cli
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_errors_are_decided_by_code_and_by_status_when_the_code_is_unknown() {
        let ours = server_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": {"code": "rollout_variants", "message": "which variant?"}}),
        );
        assert_eq!(ours.server_code, Some(ErrorCode::RolloutVariants));
        assert_eq!(ours.message, "which variant?");
        assert!(ours.hint.is_some_and(|h| h.contains("--variant")));
        // A code from a newer server: the status decides, the message is kept.
        let newer = server_error(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"code": "token_expired", "message": "expired"}}),
        );
        assert_eq!(newer.server_code, Some(ErrorCode::Unauthorized));
        assert_eq!(newer.message, "expired");
        assert!(newer.hint.is_some_and(|h| h.contains("token")));
        // A proxy's body without a code keeps its message.
        let proxy = server_error(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "custom message from a proxy"}}),
        );
        assert_eq!(proxy.message, "custom message from a proxy");
        assert_eq!(proxy.server_code, Some(ErrorCode::BadRequest));
        // No JSON at all: the status says it, with its hint.
        let bare = server_error(StatusCode::FORBIDDEN, &Value::Null);
        assert_eq!(bare.server_code, Some(ErrorCode::Forbidden));
        assert!(bare.hint.is_some_and(|h| h.contains("admin token")));
    }
}
