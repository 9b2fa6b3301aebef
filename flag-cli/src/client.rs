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
    /// The private CA (PEM) from `--ca-cert`, for connections reqwest does not make (`watch`).
    ca_pem: Option<Vec<u8>>,
    /// The client certificate and key (PEM) for mutual TLS, likewise.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The TLS files flagctl was given: a private CA, and a client certificate with its key.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_cert: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

fn read_pem(path: &std::path::Path, what: &str, option: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| {
        CliError::config(format!(
            "cannot read the {what} {}: {error}",
            path.display()
        ))
        .hint(format!("{option} names a PEM file"))
    })
}

/// A successful answer: status, body and the `ETag` version, if any.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub version: Option<i64>,
}

impl Api {
    pub fn new(server: &str, token: &str, strict: bool, tls: &TlsFiles) -> Result<Api> {
        let ca_cert = tls.ca_cert.as_deref();
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
        let ca_pem = ca_cert
            .map(|path| read_pem(path, "CA certificate", "--ca-cert / FLAGCTL_CA_CERT"))
            .transpose()?;
        let identity = match (&tls.client_cert, &tls.client_key) {
            (Some(certificate), Some(key)) => Some((
                read_pem(certificate, "client certificate", "--client-cert")?,
                read_pem(key, "client key", "--client-key")?,
            )),
            (None, None) => None,
            _ => {
                return Err(CliError::usage(
                    "--client-cert and --client-key go together",
                ));
            }
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let (Some(pem), Some(path)) = (&ca_pem, ca_cert) {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|error| {
                CliError::config(format!("{} is not PEM: {error}", path.display()))
                    .hint("--ca-cert / FLAGCTL_CA_CERT names a PEM file with the CA certificate")
            })?;
            if certificates.is_empty() {
                return Err(
                    CliError::config(format!("{} holds no CERTIFICATE", path.display())).hint(
                        "--ca-cert / FLAGCTL_CA_CERT names a PEM file with the CA certificate",
                    ),
                );
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some((certificate, key)) = &identity {
            let mut pem = certificate.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|error| {
                CliError::config(format!("the client certificate and key do not load: {error}"))
                    .hint("--client-cert and --client-key name PEM files: a certificate and its private key")
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|error| {
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
            ca_pem,
            identity,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A rustls client configuration with the same trust as the HTTP client: the public roots
    /// and the `--ca-cert` CA (for the WebSocket of `watch`).
    pub fn tls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = &self.ca_pem {
            for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|error| {
                    CliError::config(format!("the CA certificate is not PEM: {error}"))
                })?;
                roots.add(certificate).map_err(|error| {
                    CliError::config(format!("the CA certificate is not usable: {error}"))
                })?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| CliError::config(format!("TLS: {error}")))?
        .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((certificate, key)) => {
                let chain = rustls_pki_types::CertificateDer::pem_slice_iter(certificate)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|error| {
                        CliError::config(format!("the client certificate is not PEM: {error}"))
                    })?;
                let key =
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(key).map_err(|error| {
                        CliError::config(format!(
                            "the client key is not a PEM private key: {error}"
                        ))
                    })?;
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    CliError::config(format!("the client certificate and key: {error}"))
                })?
            }
        };
        Ok(std::sync::Arc::new(config))
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

/// A refused server certificate in an error chain, in one line with the fix.
pub fn certificate_error(
    server: &str,
    error: &(dyn std::error::Error + 'static),
) -> Option<CliError> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) =
            error.downcast_ref::<rustls::Error>()
        {
            return Some(
                CliError::new(
                    Kind::Network,
                    format!("{server} requires a client certificate (mutual TLS)"),
                )
                .hint("pass --client-cert FILE and --client-key FILE (a certificate from the server's client CA)"),
            );
        }
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            error.downcast_ref::<rustls::Error>()
        {
            use rustls::CertificateError as E;
            let (what, hint) = match problem {
                E::UnknownIssuer => (
                    "is not signed by a trusted CA (UnknownIssuer)",
                    "pass the server's CA with --ca-cert FILE (or FLAGCTL_CA_CERT)",
                ),
                E::NotValidForName | E::NotValidForNameContext { .. } => (
                    "is not valid for this host name (NotValidForName)",
                    "use a --server host name the certificate lists",
                ),
                E::Expired | E::ExpiredContext { .. } => (
                    "has expired (Expired)",
                    "the server's certificate must be renewed",
                ),
                _ => (
                    "was refused",
                    "check the server's certificate and --ca-cert",
                ),
            };
            return Some(
                CliError::new(Kind::Network, format!("the certificate of {server} {what}"))
                    .hint(hint),
            );
        }
        // An io::Error that wraps another error reports that error's source, not the error.
        if let Some(wrapped) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = certificate_error(server, wrapped)
        {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

/// reqwest's own message is terse ("client error (Connect)"): the root cause says more.
pub fn root_cause(error: &reqwest::Error) -> String {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .last()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

fn network_error(server: &str, error: &reqwest::Error) -> CliError {
    if let Some(certificate) = certificate_error(server, error) {
        return certificate;
    }
    let cause = root_cause(error);
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
        ErrorCode::Unauthorized => cli.hint("check the credential: --token / FLAGCTL_TOKEN, `flagctl login`, or in CI the OIDC ID token (FLAGCTL_OIDC_AUDIENCE, docs/AUTH.md)"),
        ErrorCode::Forbidden => cli.hint("your credential does not cover this (`flagctl auth whoami` shows its role and environments)"),
        ErrorCode::PreconditionFailed => cli.hint("someone else changed it since it was read; look at `flagctl flag get`, then run the command again"),
        ErrorCode::RolloutVariants => cli.hint("name the variant to roll out with --variant NAME"),
        ErrorCode::ManagedByGit => cli.hint("commit the change to the environment's Git source instead; it is applied at the next sync"),
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
        assert!(bare.hint.is_some_and(|h| h.contains("auth whoami")));
    }
}
