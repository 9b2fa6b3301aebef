//! Keyless CI: an OIDC ID token from the CI platform as flagctl's credential.
//!
//! With `FLAGCTL_OIDC_TOKEN_FILE`, the token is read from that file (GitLab CI `id_tokens`
//! written to a file, a Kubernetes projected service-account token, any platform that hands out
//! a file). Otherwise, with `FLAGCTL_OIDC_AUDIENCE`, it is requested from the endpoint the
//! platform exposes in `ACTIONS_ID_TOKEN_REQUEST_URL`, authenticated with
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (GitHub Actions' convention: `GET <url>&audience=<aud>` with
//! `Authorization: bearer <request token>` answers `{"value": "<JWT>"}`; see
//! <https://docs.github.com/en/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect>).

use crate::error::{CliError, Kind, Result};

/// The audience to request (what the server's trust policy expects).
pub const AUDIENCE_VAR: &str = "FLAGCTL_OIDC_AUDIENCE";
/// A file holding an ID token.
pub const TOKEN_FILE_VAR: &str = "FLAGCTL_OIDC_TOKEN_FILE";
/// The platform's token request endpoint.
pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer token for the request endpoint.
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Where the ID token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from a file.
    File(std::path::PathBuf),
    /// Requested for an audience from the platform's endpoint (read from the environment when
    /// needed).
    Request { audience: String },
}

impl Source {
    /// The source the environment configures, if any.
    pub fn from_env() -> Option<Source> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(path) = var(TOKEN_FILE_VAR) {
            return Some(Source::File(path.into()));
        }
        var(AUDIENCE_VAR).map(|audience| Source::Request {
            audience: audience.trim().to_owned(),
        })
    }

    /// Obtains the ID token.
    pub async fn id_token(&self) -> Result<String> {
        match self {
            Source::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    CliError::config(format!(
                        "cannot read the ID token file {}: {error}",
                        path.display()
                    ))
                    .hint(format!(
                        "{TOKEN_FILE_VAR} names a file holding an OIDC ID token"
                    ))
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(CliError::config(format!(
                        "the ID token file {} is empty",
                        path.display()
                    )));
                }
                Ok(token.to_owned())
            }
            Source::Request { audience } => {
                let (Ok(url), Ok(bearer)) = (
                    std::env::var(REQUEST_URL_VAR),
                    std::env::var(REQUEST_TOKEN_VAR),
                ) else {
                    return Err(CliError::config(format!(
                        "{AUDIENCE_VAR} is set, but there is no ID token to use: neither {REQUEST_URL_VAR} and {REQUEST_TOKEN_VAR} nor {TOKEN_FILE_VAR} are set"
                    ))
                    .hint("in GitHub Actions, give the job `permissions: id-token: write`; elsewhere write the platform's ID token to a file and set FLAGCTL_OIDC_TOKEN_FILE"));
                };
                request(&url, &bearer, audience).await
            }
        }
    }
}

/// `GET <url>&audience=<aud>` with the request token; the answer's `value`.
async fn request(url: &str, bearer: &str, audience: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|error| CliError::config(format!("{REQUEST_URL_VAR} is not a URL: {error}")))?;
    parsed.query_pairs_mut().append_pair("audience", audience);
    let failed = |why: String| {
        CliError::new(
            Kind::Network,
            format!("cannot obtain an ID token from the CI platform ({REQUEST_URL_VAR}): {why}"),
        )
    };
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|error| failed(error.to_string()))?
        .get(parsed)
        .bearer_auth(bearer)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| failed(crate::client::root_cause(&error)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(200).collect();
        return Err(failed(if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body}")
        }));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|error| failed(format!("the answer is not JSON: {error}")))?;
    body.get("value")
        .and_then(serde_json::Value::as_str)
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| failed("the answer has no `value`".to_owned()))
}
