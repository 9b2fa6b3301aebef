//! The HTTP client: the server's API, with its errors turned into `CliError`s that show the
//! server's message and path instead of an HTTP dump.

use reqwest::{Method, StatusCode};
use serde_json::Value;

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
        if !(server.starts_with("http://") || server.starts_with("https://")) {
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
        let mut url = format!("{}{path}", self.server);
        if self.strict && method != Method::GET {
            // Writes that check flags honour it; the others ignore unknown query parameters.
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str("strict=true");
        }
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
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
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    CliError::new(
        Kind::Network,
        format!("cannot reach the flag server at {server}: {cause}"),
    )
    .hint("is it running? check --server / FLAGCTL_SERVER (or `flagctl login`)")
}

/// The server's `{"error": {"code", "message", "path", "problems"}}` as a `CliError`.
pub fn server_error(status: StatusCode, body: &Value) -> CliError {
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the server answered {status}"));
    // A validation error's message already lists its problems; show them one per line instead.
    let problems: Vec<String> = error["problems"]
        .as_array()
        .map(|problems| {
            problems
                .iter()
                .map(|p| {
                    let line = match p["path"].as_str() {
                        Some(path) if !path.is_empty() => {
                            format!("{path}: {}", p["message"].as_str().unwrap_or(""))
                        }
                        _ => p["message"].as_str().unwrap_or("").to_owned(),
                    };
                    match p["code"].as_str() {
                        Some(code) => format!("{line} [{code}]"),
                        None => line,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let all_warnings = error["problems"].as_array().is_some_and(|problems| {
        !problems.is_empty() && problems.iter().all(|p| p["severity"] == "warning")
    });
    let mut cli = if problems.is_empty() {
        let mut message = message;
        if let Some(path) = error["path"].as_str() {
            message = format!("{message} (at {path})");
        }
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
    cli = match status {
        StatusCode::UNAUTHORIZED => cli.hint("check the token: --token / FLAGCTL_TOKEN (or `flagctl login`)"),
        StatusCode::FORBIDDEN => cli.hint("this needs an admin token"),
        StatusCode::PRECONDITION_FAILED => cli.hint("someone else changed it since it was read; look at `flagctl flag get`, then run the command again"),
        _ if error["code"] == "rollout_variants" => {
            cli.hint("name the variant to roll out with --variant NAME")
        }
        _ => cli,
    };
    cli
}
