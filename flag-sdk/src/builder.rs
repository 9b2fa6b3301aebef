//! `FlagClientBuilder`: settings, then the wiring of a client: its shared state, the last known
//! good flags (cache file, else bootstrap document), the cache writer and the sync task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flag_protocol::Document;
use serde_json::Value;

use crate::cache;
use crate::client::FlagClient;
use crate::state::{Persist, Shared, Snapshot};
use crate::status::{Error, Status};
use crate::sync::{self, SyncSettings};

impl FlagClient {
    /// Starts building a client.
    pub fn builder() -> FlagClientBuilder {
        FlagClientBuilder::default()
    }
}

/// Builds a [`FlagClient`].
#[derive(Debug, Clone, Default)]
pub struct FlagClientBuilder {
    servers: Vec<String>,
    token: Option<String>,
    environment: Option<String>,
    bootstrap: Option<Bootstrap>,
    cache_file: Option<PathBuf>,
    settings: SyncSettings,
    ca_certificates: Vec<crate::tls::Pem>,
    client_identity: Option<(crate::tls::Pem, crate::tls::Pem)>,
    /// `usage_reporting`: unset, on when there is a server.
    usage: Option<bool>,
}

#[derive(Debug, Clone)]
enum Bootstrap {
    File(PathBuf),
    Document(Value),
}

impl FlagClientBuilder {
    /// The flag server, e.g. `http://127.0.0.1:8016`. Without one the client runs offline from
    /// its bootstrap document or cache.
    #[must_use]
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers = vec![url.into()];
        self
    }

    /// Several replicas of the flag server (on one PostgreSQL database), tried in order: when
    /// the one the client streams from becomes unreachable, it fails over to the next at once,
    /// resuming with its resume token (version and commit digest), so no change is missed.
    /// Backoff starts only once every server has been tried. The cache file's origin is the
    /// first server.
    #[must_use]
    pub fn servers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The sdk token (or an admin token together with [`environment`](Self::environment)).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The environment, only needed with an admin token (an sdk token names its own).
    #[must_use]
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// A flagd document file used until the first sync, or for good when there is no server.
    #[must_use]
    pub fn bootstrap_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap = Some(Bootstrap::File(path.into()));
        self
    }

    /// An in-memory flagd document used until the first sync, or for good without a server.
    #[must_use]
    pub fn bootstrap_document(mut self, document: Value) -> Self {
        self.bootstrap = Some(Bootstrap::Document(document));
        self
    }

    /// A file where the last flags are kept (written atomically after each change) and read at
    /// start when the server cannot be reached.
    #[must_use]
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// Trusts this CA for an `https://` server, besides the public (Mozilla) roots: a PEM file
    /// path, or PEM text. May be called several times. Host names are always verified.
    #[must_use]
    pub fn ca_certificate(mut self, path_or_pem: impl Into<crate::tls::Pem>) -> Self {
        self.ca_certificates.push(path_or_pem.into());
        self
    }

    /// Presents this client certificate (and its private key), each a PEM file path or PEM text,
    /// to a server that requires one (mutual TLS, the server's `--tls-client-ca`).
    #[must_use]
    pub fn client_certificate(
        mut self,
        certificate: impl Into<crate::tls::Pem>,
        key: impl Into<crate::tls::Pem>,
    ) -> Self {
        self.client_identity = Some((certificate.into(), key.into()));
        self
    }

    /// How long connecting may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// With no message at all for this long, the stream is considered dead (default 45 s, three
    /// server ping intervals).
    #[must_use]
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.settings.ping_timeout = timeout;
        self
    }

    /// Reconnect backoff: exponential from `base` to `cap`, with full jitter (defaults 500 ms
    /// and 30 s).
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_cap = cap.max(base);
        self
    }

    /// Whether evaluations are counted and reported to the server (default: on with a server,
    /// off offline, where counts would go nowhere). Counting is
    /// per thread and allocation-free after a flag's first evaluation on a thread; counts go
    /// over the stream every [`usage_interval`](Self::usage_interval) and on `close()`, and
    /// feed the server's `lastEvaluated` and `flagctl stale`.
    #[must_use]
    pub fn usage_reporting(mut self, enabled: bool) -> Self {
        self.usage = Some(enabled);
        self
    }

    /// How often evaluation counts are reported (default 60 s, at least 1 s).
    #[must_use]
    pub fn usage_interval(mut self, interval: Duration) -> Self {
        self.settings.usage_interval = interval.max(Duration::from_secs(1));
        self
    }

    /// Builds the client. Never waits on the network: syncing runs in a background task on the
    /// current tokio runtime (a server is given but no runtime is running: an error).
    pub fn build(self) -> Result<FlagClient, Error> {
        // Checked before anything starts, so a bad setting starts nothing.
        let stream = match self.servers.first() {
            None => None,
            Some(server) => {
                let token = self.token.clone().ok_or_else(|| {
                    Error::Config("a server needs a token (`.token(...)`)".to_owned())
                })?;
                if tokio_tungstenite::tungstenite::http::HeaderValue::try_from(format!(
                    "Bearer {token}"
                ))
                .is_err()
                {
                    return Err(Error::Config(
                        "the token contains characters an HTTP header cannot carry (a line break?)"
                            .to_owned(),
                    ));
                }
                let url = sync::stream_url(server, self.environment.as_deref())?;
                let endpoints = self
                    .servers
                    .iter()
                    .map(|server| {
                        Ok(sync::Endpoint {
                            url: sync::stream_url(server, self.environment.as_deref())?,
                            server: server.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let tls = crate::tls::client_config(
                    &self.ca_certificates,
                    self.client_identity.as_ref(),
                )?;
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::Config(
                        "build() needs a running tokio runtime to sync in the background"
                            .to_owned(),
                    )
                })?;
                Some((endpoints, token, url, runtime, tls))
            }
        };
        let bootstrap = match &self.bootstrap {
            None => None,
            Some(Bootstrap::Document(document)) => {
                Some(checked_bootstrap("<inline>", document.clone())?)
            }
            Some(Bootstrap::File(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| Error::Bootstrap {
                    path: path.display().to_string(),
                    message: error.to_string(),
                })?;
                let document: Value =
                    serde_json::from_str(&text).map_err(|error| Error::Bootstrap {
                        path: path.display().to_string(),
                        message: format!("not valid JSON: {error}"),
                    })?;
                Some(checked_bootstrap(&path.display().to_string(), document)?)
            }
        };

        let origin = stream
            .as_ref()
            .map(|(_, token, url, _, _)| cache::Origin::new(url, token));
        let persist = match (&self.cache_file, &origin) {
            (Some(path), Some(origin)) => Some(Box::new(cache::CacheWriter::start(
                path.clone(),
                origin.clone(),
            )) as Box<dyn Persist>),
            _ => None,
        };
        let shared = Arc::new(Shared::new(persist));
        // Offline clients have nobody to report to: they count only when asked to.
        shared
            .usage
            .set_enabled(self.usage.unwrap_or(stream.is_some()));

        // Last known good first: the cache, when it is of this origin (server, environment,
        // token); else the bootstrap.
        let cached = self
            .cache_file
            .as_deref()
            .and_then(|path| cache::load(path, origin.as_ref()));
        let offline = self.servers.is_empty();
        let first =
            cached.or_else(|| bootstrap.map(|document| Snapshot::compile(None, None, document)));
        if let Some(snapshot) = first {
            let keys = snapshot.compiled.keys().map(str::to_owned).collect();
            shared.publish(snapshot, keys);
            shared.set_status(if offline {
                Status::Ready
            } else {
                Status::Stale
            });
        }

        let task = stream.map(|(endpoints, token, _, runtime, tls)| {
            sync::start(
                &runtime,
                shared.clone(),
                sync::Target {
                    endpoints,
                    token,
                    tls,
                },
                self.settings,
            )
        });
        Ok(FlagClient::new(shared, task))
    }
}

/// A bootstrap document must at least be a flagd document; broken flags are isolated.
fn checked_bootstrap(path: &str, document: Value) -> Result<Document, Error> {
    if !document
        .get("flags")
        .is_some_and(|f| f.is_object() || f.is_array())
    {
        return Err(Error::Bootstrap {
            path: path.to_owned(),
            message: "not a flagd document: no \"flags\"".to_owned(),
        });
    }
    Document::from_value(document).map_err(|error| Error::Bootstrap {
        path: path.to_owned(),
        message: format!("not a flagd document: {error}"),
    })
}
