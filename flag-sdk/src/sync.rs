//! The background sync task: one WebSocket to `/api/v1/stream`, reconnecting with exponential
//! backoff and full jitter, resuming with `since`, resynchronising on any gap or malformed
//! message. Protocol: the server repository's `docs/PROTOCOL.md`.

use std::sync::Arc;
use std::time::Duration;

use flag_protocol::stream::STREAM_PATH;
use flag_protocol::{Ack, ClientMessage, Hello, Patch, ServerMessage};
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::state::{Shared, Snapshot, Task, log_problems};
use crate::status::{Error, Status};

/// Timing settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    /// How often evaluation counts are reported.
    pub(crate) usage_interval: Duration,
}

/// The largest `usage` message sent (the server closes connections whose client messages pass
/// 16 KiB).
const MAX_USAGE_MESSAGE: usize = 12 * 1024;

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            connect_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(45),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            usage_interval: Duration::from_secs(60),
        }
    }
}

/// The longest `retryAfterMs` a goodbye can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The stream URL for a server URL (`http://host:port[/prefix]`), the environment percent-encoded
/// in the query.
pub(crate) fn stream_url(server: &str, environment: Option<&str>) -> Result<url::Url, Error> {
    let mut url = url::Url::parse(server.trim_end_matches('/'))
        .map_err(|_| Error::ServerUrl(server.to_owned()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(Error::ServerUrl(server.to_owned())),
    };
    if url.set_scheme(scheme).is_err() || url.cannot_be_a_base() {
        return Err(Error::ServerUrl(server.to_owned()));
    }
    let path = format!("{}{STREAM_PATH}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    if let Some(environment) = environment {
        url.query_pairs_mut()
            .append_pair("environment", environment);
    }
    Ok(url)
}

/// One server's stream.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `ws://` or `wss://`, with the environment in the query.
    pub(crate) url: url::Url,
    /// The server URL as configured (for logs).
    pub(crate) server: String,
}

/// Where the stream is and how to reach it.
pub(crate) struct Target {
    /// The servers, in the order they are tried (at least one).
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) token: String,
    /// Trust for `wss://`.
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

/// Starts the sync task.
pub(crate) fn start(
    runtime: &tokio::runtime::Handle,
    shared: Arc<Shared>,
    target: Target,
    settings: SyncSettings,
) -> Task {
    let client_id = format!("{:016x}", rand::rng().random::<u64>());
    let follower = StreamFollower {
        shared,
        endpoints: target.endpoints,
        token: target.token,
        tls: target.tls,
        settings,
        client_id,
    };
    Task::spawn(runtime, move |stop| run(follower, stop))
}

/// Follows one server's stream for one client: connects, applies what arrives, reconnects.
struct StreamFollower {
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    settings: SyncSettings,
    client_id: String,
}

/// How one connection ended.
enum Ended {
    /// `close()` was called.
    Stopped,
    /// The server will not serve this client again (token revoked, environment deleted).
    Final(String),
    /// Reconnect; `resync` drops `since` (after a gap or a malformed message).
    Disconnected {
        synced: bool,
        resync: bool,
        retry_after: Duration,
    },
}

async fn run(follower: StreamFollower, mut stop: watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    let mut resync = false;
    let servers = follower.endpoints.len().max(1);
    let mut current = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let since = if resync {
            None
        } else {
            follower.shared.resume_token()
        };
        // The connection watches `stop` itself, so it can say goodbye with a Close frame.
        let endpoint = &follower.endpoints[current % servers];
        let ended = follower.connection(endpoint, since, &stop).await;
        let (synced, retry_after) = match ended {
            Ended::Stopped => break,
            Ended::Final(reason) => {
                tracing::error!(
                    reason,
                    "the flag server ended this client's stream for good; serving the last flags"
                );
                follower.shared.set_status(Status::Fatal);
                break;
            }
            Ended::Disconnected {
                synced,
                resync: again,
                retry_after,
            } => {
                resync = again;
                (synced, retry_after)
            }
        };
        if synced {
            attempt = 0;
        }
        // A refused token stays an error while retrying; otherwise the flags are now stale.
        if follower.shared.status() != Status::Error {
            follower
                .shared
                .set_status(if follower.shared.load().is_some() {
                    Status::Stale
                } else {
                    Status::NotReady
                });
        }
        // Several servers: fail over to the next one at once (it resumes from the same version
        // and digest); back off only once every server has been tried.
        let others = u32::try_from(servers - 1).unwrap_or(u32::MAX);
        let delay = if attempt < others {
            Duration::ZERO
        } else {
            backoff(&follower.settings, attempt - others).max(retry_after)
        };
        if servers > 1 {
            current = (current + 1) % servers;
            tracing::info!(server = %follower.endpoints[current].server, "failing over to the next flag server");
        }
        attempt = attempt.saturating_add(1);
        tracing::debug!(?delay, "reconnecting to the flag stream");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
}

/// Completes once `close()` has been called.
async fn stopped(stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Exponential backoff with full jitter: uniform in `0..=backoff_ceiling(attempt)`.
fn backoff(settings: &SyncSettings, attempt: u32) -> Duration {
    let millis = u64::try_from(backoff_ceiling(settings, attempt).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// `min(cap, base * 2^attempt)`, without overflow.
fn backoff_ceiling(settings: &SyncSettings, attempt: u32) -> Duration {
    settings
        .backoff_base
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(settings.backoff_cap)
}

/// Text for a client message. These are small structs of strings and integers, which always
/// serialise.
fn client_text(message: &ClientMessage) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

impl StreamFollower {
    async fn connection(
        &self,
        endpoint: &Endpoint,
        since: Option<(i64, Option<String>)>,
        stop: &watch::Receiver<bool>,
    ) -> Ended {
        let lost = |synced| Ended::Disconnected {
            synced,
            resync: false,
            retry_after: Duration::ZERO,
        };
        let resynchronise = |synced| Ended::Disconnected {
            synced,
            resync: true,
            retry_after: Duration::ZERO,
        };
        let url = match since {
            Some((version, digest)) => {
                let mut url = endpoint.url.clone();
                let mut query = url.query_pairs_mut();
                query.append_pair(flag_protocol::stream::SINCE_PARAMETER, &version.to_string());
                if let Some(digest) = &digest {
                    query.append_pair(flag_protocol::stream::DIGEST_PARAMETER, digest);
                }
                drop(query);
                url
            }
            None => endpoint.url.clone(),
        };
        let Ok(mut request) = url.as_str().into_client_request() else {
            return Ended::Final(format!("invalid stream URL {url}"));
        };
        let Ok(authorization) = format!("Bearer {}", self.token).parse() else {
            return Ended::Final("the token contains characters an HTTP header cannot".to_owned());
        };
        request.headers_mut().insert("authorization", authorization);
        let connecting = tokio::time::timeout(
            self.settings.connect_timeout,
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                false,
                Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
            ),
        );
        let connected = tokio::select! {
            connected = connecting => connected,
            () = stopped(stop) => return Ended::Stopped,
        };
        let mut socket = match connected {
            Err(_) => {
                tracing::warn!(server = %endpoint.server, "connecting to the flag server timed out");
                return lost(false);
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status();
                tracing::warn!(server = %endpoint.server, %status, "the flag server refused the stream");
                self.shared.set_last_error(Some(format!(
                    "the flag server refused the stream: {status}"
                )));
                if status == 401 || status == 403 {
                    // A bad token does not heal by retrying fast; keep trying at the backoff cap
                    // (the token may be fixed on the server side) and say so in the status.
                    self.shared.set_status(Status::Error);
                    return Ended::Disconnected {
                        synced: false,
                        resync: false,
                        retry_after: self.settings.backoff_cap,
                    };
                }
                return lost(false);
            }
            Ok(Err(error)) => {
                if let Some(problem) = crate::tls::certificate_problem(&error) {
                    // Retrying fast will not fix a certificate: keep trying at the backoff cap
                    // (it may be replaced on the server) and say what is wrong.
                    tracing::error!(server = %endpoint.server, problem, "TLS certificate refused");
                    self.shared.set_last_error(Some(problem));
                    self.shared.set_status(Status::Error);
                    return Ended::Disconnected {
                        synced: false,
                        resync: false,
                        retry_after: self.settings.backoff_cap,
                    };
                }
                tracing::warn!(server = %endpoint.server, %error, "cannot reach the flag server");
                self.shared.set_last_error(Some(format!(
                    "cannot reach the flag server at {}: {error}",
                    endpoint.server
                )));
                return lost(false);
            }
            Ok(Ok((socket, _))) => {
                // The server took the token and the certificate: whatever `Error` said no longer
                // holds. Until flags arrive the client is as stale (or as empty) as it was.
                if self.shared.status() == Status::Error {
                    self.shared.set_last_error(None);
                    self.shared.set_status(if self.shared.load().is_some() {
                        Status::Stale
                    } else {
                        Status::NotReady
                    });
                }
                socket
            }
        };
        let hello = ClientMessage::Hello(Hello {
            sdk: Some("flag-sdk-rust".to_owned()),
            sdk_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            client_id: Some(self.client_id.clone()),
        });
        if socket
            .send(Message::text(client_text(&hello)))
            .await
            .is_err()
        {
            return lost(false);
        }

        let mut synced = false;
        let mut usage_ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.usage_interval,
            self.settings.usage_interval,
        );
        usage_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.settings.ping_timeout, socket.next()) => next,
                () = stopped(stop) => {
                    // `close()`: the last counts, then a Close frame rather than just dropping
                    // the socket.
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.report(&mut socket)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                    return Ended::Stopped;
                }
                _ = usage_ticks.tick() => {
                    if !self.report(&mut socket).await {
                        return lost(synced);
                    }
                    continue;
                }
                () = self.shared.usage_report.notified() => {
                    if !self.report(&mut socket).await {
                        return lost(synced);
                    }
                    continue;
                }
            };
            let message = match next {
                Err(_) => {
                    tracing::warn!(timeout = ?self.settings.ping_timeout, "no message from the flag server; the stream is dead");
                    return lost(synced);
                }
                Ok(None | Some(Err(_))) => return lost(synced),
                Ok(Some(Ok(message))) => message,
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => return lost(synced),
                _ => continue,
            };
            let message = match serde_json::from_str::<ServerMessage>(&text) {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "malformed message on the flag stream; resynchronising");
                    return resynchronise(synced);
                }
            };
            let version = message.version();
            match message {
                ServerMessage::Snapshot(snapshot) => {
                    self.apply_snapshot(snapshot);
                }
                ServerMessage::Patch(patch) => {
                    let current = self.shared.version();
                    if current.and_then(|v| v.checked_add(1)) != Some(patch.version) {
                        tracing::warn!(
                            ?current,
                            received = patch.version,
                            "gap in the flag stream; resynchronising"
                        );
                        return resynchronise(synced);
                    }
                    if !self.apply_patch(patch) {
                        return resynchronise(synced);
                    }
                }
                ServerMessage::Ping(ping) => {
                    // A ping at our version right after resuming means "already up to date".
                    if !synced && self.shared.version() == Some(ping.version) {
                        synced = true;
                        self.shared.set_last_error(None);
                        self.shared.set_status(Status::Ready);
                    }
                    continue;
                }
                ServerMessage::Goodbye(goodbye) => {
                    // Honoured up to five minutes: a bogus huge value must not stop the client
                    // from ever coming back.
                    let retry_after =
                        Duration::from_millis(goodbye.retry_after_ms).min(MAX_RETRY_AFTER);
                    let reason = goodbye.reason.as_str();
                    tracing::info!(reason, ?retry_after, "the flag server said goodbye");
                    return if goodbye.reason.is_final() {
                        Ended::Final(reason.to_owned())
                    } else {
                        Ended::Disconnected {
                            synced,
                            resync: false,
                            retry_after,
                        }
                    };
                }
                ServerMessage::Unknown => continue,
            }
            synced = true;
            self.shared.set_last_error(None);
            self.shared.set_status(Status::Ready);
            if let Some(version) = version {
                let ack = ClientMessage::Ack(Ack { version });
                if socket.send(Message::text(client_text(&ack))).await.is_err() {
                    return lost(synced);
                }
            }
        }
    }

    /// Sends the evaluation counts gathered so far as `usage` messages; `false` when the socket
    /// failed (the unsent counts are kept for the next connection).
    async fn report<S>(&self, socket: &mut S) -> bool
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        let mut reports = self
            .shared
            .usage
            .take_reports(MAX_USAGE_MESSAGE)
            .into_iter();
        while let Some(report) = reports.next() {
            let message = ClientMessage::Usage(report.clone());
            if socket
                .send(Message::text(client_text(&message)))
                .await
                .is_err()
            {
                self.shared
                    .usage
                    .restore(std::iter::once(report).chain(reports).collect());
                return false;
            }
        }
        true
    }

    fn apply_snapshot(&self, message: flag_protocol::Snapshot) {
        let changed = match self.shared.snapshot() {
            Some(old) => old.document.changed_keys(&message.document),
            None => message.document.flags.keys().cloned().collect(),
        };
        let mut snapshot =
            Snapshot::compile(Some(message.version), message.environment, message.document);
        snapshot.digest = message.digest;
        self.shared.publish(snapshot, changed);
        self.shared.persist();
    }

    /// Applies a patch to a copy of the current document; `false` if it cannot be applied.
    fn apply_patch(&self, patch: Patch) -> bool {
        let Some(current) = self.shared.snapshot() else {
            return false;
        };
        let version = patch.version;
        let digest = patch.digest.clone();
        let settings_changed = patch.changes_settings();
        let mut document = current.document.clone();
        let mut upserts: Vec<(String, Option<flag_core::Flag>)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        for change in patch.into_changes() {
            match &change {
                flag_protocol::Change::Upsert { key, flag } => {
                    upserts.push((key.clone(), serde_json::from_value(flag.clone()).ok()));
                }
                flag_protocol::Change::Delete { key } => deletes.push(key.clone()),
                flag_protocol::Change::Settings { .. } => {}
            }
            document.apply(change);
        }
        let changed: Vec<String> = if settings_changed {
            current.document.changed_keys(&document)
        } else {
            let mut keys: Vec<String> = upserts.iter().map(|(k, _)| k.clone()).collect();
            keys.extend(deletes.iter().cloned());
            keys.sort();
            keys.dedup();
            keys
        };
        // Shared settings can change any flag's behaviour, and a flag that does not even parse
        // needs the full (lenient) compile to be isolated as a broken flag: both compile the
        // whole document. Otherwise only the patched flags are compiled.
        let typed: Option<Vec<(&str, &flag_core::Flag)>> = upserts
            .iter()
            .map(|(k, f)| f.as_ref().map(|f| (k.as_str(), f)))
            .collect();
        let mut snapshot = match typed {
            Some(typed) if !settings_changed => {
                let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
                let (compiled, problems) = current.compiled.with_changes(&typed, &deletes);
                log_problems(problems);
                Snapshot {
                    version: Some(version),
                    digest: None,
                    environment: current.environment.clone(),
                    document,
                    compiled,
                }
            }
            _ => Snapshot::compile(Some(version), current.environment.clone(), document),
        };
        snapshot.digest = digest;
        self.shared.publish(snapshot, changed);
        self.shared.persist();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls() {
        let url = |server, environment| stream_url(server, environment).map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:8016/", None).unwrap(),
            "ws://127.0.0.1:8016/api/v1/stream"
        );
        assert_eq!(
            url("http://h:1", Some("staging")).unwrap(),
            "ws://h:1/api/v1/stream?environment=staging"
        );
        assert_eq!(
            url("http://h:1/flags/", Some("a b&c")).unwrap(),
            "ws://h:1/flags/api/v1/stream?environment=a+b%26c"
        );
        assert!(url("ftp://h", None).is_err());
        assert_eq!(
            url("https://h:8443", None).unwrap(),
            "wss://h:8443/api/v1/stream"
        );
        assert!(url("not a url", None).is_err());
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let settings = SyncSettings {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            ..SyncSettings::default()
        };
        let ceilings: Vec<u128> = (0..8)
            .map(|attempt| backoff_ceiling(&settings, attempt).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff_ceiling(&settings, u32::MAX).as_millis(), 2000);
        // Full jitter: every delay within the ceiling, and spread over it (not always the top
        // or the bottom).
        let delays: Vec<Duration> = (0..200).map(|_| backoff(&settings, 3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    }
}
