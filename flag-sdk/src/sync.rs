//! The background sync task: one WebSocket to `/api/v1/stream`, reconnecting with exponential
//! backoff and full jitter, resuming with `since`, resynchronising on any gap or malformed
//! message. Protocol: the server repository's `docs/PROTOCOL.md`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::cache;
use crate::client::{FlagState, Shared};
use crate::status::{Error, Status};

/// Timing settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            connect_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(45),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// The stream URL for a server URL.
pub(crate) fn stream_url(server: &str, environment: Option<&str>) -> Result<String, Error> {
    let trimmed = server.trim_end_matches('/');
    let base = if let Some(rest) = trimmed.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if trimmed.starts_with("ws://") {
        trimmed.to_owned()
    } else if trimmed.starts_with("https://") || trimmed.starts_with("wss://") {
        return Err(Error::Config(
            "this build of flag-sdk speaks plain http/ws only: terminate TLS in front of it, or use a private network".to_owned(),
        ));
    } else {
        return Err(Error::ServerUrl(server.to_owned()));
    };
    let mut url = format!("{base}/api/v1/stream");
    if let Some(environment) = environment {
        url.push_str("?environment=");
        url.push_str(environment);
    }
    Ok(url)
}

/// The running sync task.
#[derive(Debug)]
pub(crate) struct SyncHandle {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SyncHandle {
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        shared: Arc<Shared>,
        url: String,
        token: String,
        server: String,
        settings: SyncSettings,
    ) -> SyncHandle {
        let (stop, stopped) = watch::channel(false);
        let client_id = format!("{:016x}", rand::rng().random::<u64>());
        let task = runtime.spawn(run(
            Sync {
                shared,
                url,
                token,
                server,
                settings,
                client_id,
            },
            stopped,
        ));
        SyncHandle {
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        // The last client clone is gone: let the task end (it holds the shared state alive).
        let _ = self.stop.send(true);
    }
}

struct Sync {
    shared: Arc<Shared>,
    url: String,
    token: String,
    server: String,
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

async fn run(sync: Sync, mut stop: watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    let mut resync = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let since = if resync {
            None
        } else {
            sync.shared.flags.load().as_ref().and_then(|s| s.version)
        };
        // The connection watches `stop` itself, so it can say goodbye with a Close frame.
        let ended = sync.connection(since, &stop).await;
        let (synced, retry_after) = match ended {
            Ended::Stopped => break,
            Ended::Final(reason) => {
                tracing::error!(
                    reason,
                    "the flag server ended this client's stream for good; serving the last flags"
                );
                sync.shared.set_status(Status::Error);
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
        if sync.shared.status() != Status::Error {
            let has_flags = sync.shared.flags.load().is_some();
            sync.shared.set_status(if has_flags {
                Status::Stale
            } else {
                Status::NotReady
            });
        }
        let delay = backoff(&sync.settings, attempt).max(retry_after);
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

/// Exponential backoff with full jitter: uniform in `0..=min(cap, base * 2^attempt)`.
fn backoff(settings: &SyncSettings, attempt: u32) -> Duration {
    let ceiling = settings
        .backoff_base
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(settings.backoff_cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

impl Sync {
    async fn connection(&self, since: Option<i64>, stop: &watch::Receiver<bool>) -> Ended {
        let lost = |synced| Ended::Disconnected {
            synced,
            resync: false,
            retry_after: Duration::ZERO,
        };
        let url = match since {
            Some(version) if self.url.contains('?') => format!("{}&since={version}", self.url),
            Some(version) => format!("{}?since={version}", self.url),
            None => self.url.clone(),
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
            tokio_tungstenite::connect_async(request),
        );
        let connected = tokio::select! {
            connected = connecting => connected,
            () = stopped(stop) => return Ended::Stopped,
        };
        let mut socket = match connected {
            Err(_) => {
                tracing::warn!(server = %self.server, "connecting to the flag server timed out");
                return lost(false);
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status();
                tracing::warn!(server = %self.server, %status, "the flag server refused the stream");
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
                tracing::warn!(server = %self.server, %error, "cannot reach the flag server");
                return lost(false);
            }
            Ok(Ok((socket, _))) => socket,
        };
        let hello = json!({"type": "hello", "sdk": "flag-sdk-rust", "sdkVersion": env!("CARGO_PKG_VERSION"), "clientId": self.client_id});
        if socket.send(Message::text(hello.to_string())).await.is_err() {
            return lost(false);
        }

        let mut synced = false;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.settings.ping_timeout, socket.next()) => next,
                () = stopped(stop) => {
                    // `close()`: say so with a Close frame rather than just dropping the socket.
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                    return Ended::Stopped;
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
            let Ok(message) = serde_json::from_str::<Value>(&text) else {
                tracing::warn!("malformed message on the flag stream; resynchronising");
                return Ended::Disconnected {
                    synced,
                    resync: true,
                    retry_after: Duration::ZERO,
                };
            };
            let version = message["version"].as_i64();
            match (message["type"].as_str(), version) {
                (Some("snapshot"), Some(version)) => {
                    if !message["document"].is_object() {
                        tracing::warn!("snapshot without a document; resynchronising");
                        return Ended::Disconnected {
                            synced,
                            resync: true,
                            retry_after: Duration::ZERO,
                        };
                    }
                    let environment = message["environment"].as_str().map(str::to_owned);
                    self.apply_snapshot(version, environment, message["document"].clone());
                }
                (Some("patch"), Some(version)) => {
                    let current = self.shared.flags.load().as_ref().and_then(|s| s.version);
                    if current != Some(version - 1) {
                        tracing::warn!(
                            ?current,
                            received = version,
                            "gap in the flag stream; resynchronising"
                        );
                        return Ended::Disconnected {
                            synced,
                            resync: true,
                            retry_after: Duration::ZERO,
                        };
                    }
                    if !self.apply_patch(version, &message) {
                        return Ended::Disconnected {
                            synced,
                            resync: true,
                            retry_after: Duration::ZERO,
                        };
                    }
                }
                (Some("ping"), Some(version)) => {
                    // A ping at our version right after resuming means "already up to date".
                    let current = self.shared.flags.load().as_ref().and_then(|s| s.version);
                    if !synced && current == Some(version) {
                        synced = true;
                        self.shared.set_status(Status::Ready);
                    }
                    continue;
                }
                (Some("goodbye"), _) => {
                    let reason = message["reason"].as_str().unwrap_or("unknown").to_owned();
                    let retry_after =
                        Duration::from_millis(message["retryAfterMs"].as_u64().unwrap_or(0));
                    tracing::info!(reason, ?retry_after, "the flag server said goodbye");
                    return match reason.as_str() {
                        "token_revoked" | "environment_deleted" => Ended::Final(reason),
                        _ => Ended::Disconnected {
                            synced,
                            resync: false,
                            retry_after,
                        },
                    };
                }
                (Some("snapshot" | "patch" | "ping"), None) => {
                    tracing::warn!("flag stream message without a version; resynchronising");
                    return Ended::Disconnected {
                        synced,
                        resync: true,
                        retry_after: Duration::ZERO,
                    };
                }
                _ => continue,
            }
            synced = true;
            self.shared.set_status(Status::Ready);
            if let Some(version) = version {
                let ack = json!({"type": "ack", "version": version});
                if socket.send(Message::text(ack.to_string())).await.is_err() {
                    return lost(synced);
                }
            }
        }
    }

    fn apply_snapshot(&self, version: i64, environment: Option<String>, document: Value) {
        let previous = self.shared.flags.load_full();
        let changed = match previous.as_deref() {
            Some(old) => changed_keys(&old.document, &document),
            None => flag_keys(&document),
        };
        self.shared.publish(
            FlagState::new(Some(version), environment, document),
            changed,
        );
        self.persist();
    }

    /// Applies a patch to a copy of the current document; `false` if it cannot be applied.
    fn apply_patch(&self, version: i64, patch: &Value) -> bool {
        let Some(current) = self.shared.flags.load_full() else {
            return false;
        };
        let mut document = current.document.clone();
        let Some(flags) = document.get_mut("flags").and_then(Value::as_object_mut) else {
            tracing::warn!(
                "cannot patch a document whose flags are not an object; resynchronising"
            );
            return false;
        };
        let mut changed = BTreeSet::new();
        if let Some(upserts) = patch["upserts"].as_object() {
            for (key, flag) in upserts {
                flags.insert(key.clone(), flag.clone());
                changed.insert(key.clone());
            }
        }
        if let Some(deletes) = patch["deletes"].as_array() {
            for key in deletes.iter().filter_map(Value::as_str) {
                flags.remove(key);
                changed.insert(key.to_owned());
            }
        }
        let mut settings_changed = false;
        for field in ["metadata", "$evaluators"] {
            if let Some(value) = patch.get(field) {
                document[field] = value.clone();
                settings_changed = true;
            }
        }
        let state = if settings_changed {
            None
        } else {
            incremental(&current, version, document.clone(), patch)
        };
        // Shared settings can change any flag's behaviour; and a flag that does not even parse
        // needs the full (lenient) compile to be isolated as a broken flag.
        let state = state.unwrap_or_else(|| {
            FlagState::new(Some(version), current.environment.clone(), document)
        });
        let changed = if settings_changed {
            flag_keys(&state.document)
        } else {
            changed.into_iter().collect()
        };
        self.shared.publish(state, changed);
        self.persist();
        true
    }

    /// Writes the cache file in the background (atomically), if one is configured.
    fn persist(&self) {
        let (Some(path), Some(state)) = (
            self.shared.cache_file.clone(),
            self.shared.flags.load_full(),
        ) else {
            return;
        };
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = cache::store(&path, &server, &state) {
                tracing::warn!(path = %path.display(), %error, "cannot write the flag cache");
            }
        });
    }
}

/// The next state compiling only the patched flags, sharing the others with `current`;
/// `None` when an upsert is not a well-formed flag.
fn incremental(
    current: &FlagState,
    version: i64,
    document: Value,
    patch: &Value,
) -> Option<FlagState> {
    let mut upserts: Vec<(String, flag_core::Flag)> = Vec::new();
    for (key, flag) in patch["upserts"].as_object().into_iter().flatten() {
        upserts.push((key.clone(), serde_json::from_value(flag.clone()).ok()?));
    }
    let deletes: Vec<&str> = patch["deletes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let refs: Vec<(&str, &flag_core::Flag)> =
        upserts.iter().map(|(k, f)| (k.as_str(), f)).collect();
    let (compiled, problems) = current.compiled.with_changes(&refs, &deletes);
    for problem in problems {
        if problem.is_warning() {
            tracing::debug!(%problem, "flag has a warning; it evaluates as flagd would");
        } else {
            tracing::warn!(%problem, "flag failed to compile; it evaluates to PARSE_ERROR");
        }
    }
    Some(FlagState {
        version: Some(version),
        environment: current.environment.clone(),
        document,
        compiled,
    })
}

fn flags_of(document: &Value) -> Option<&Map<String, Value>> {
    document.get("flags").and_then(Value::as_object)
}

fn flag_keys(document: &Value) -> Vec<String> {
    flags_of(document)
        .map(|flags| flags.keys().cloned().collect())
        .unwrap_or_default()
}

/// Keys created, changed or removed between two documents (all of them if shared settings
/// changed).
fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    if old.get("metadata") != new.get("metadata")
        || old.get("$evaluators") != new.get("$evaluators")
    {
        let mut keys: BTreeSet<String> = flag_keys(old).into_iter().collect();
        keys.extend(flag_keys(new));
        return keys.into_iter().collect();
    }
    let empty = Map::new();
    let (old, new) = (
        flags_of(old).unwrap_or(&empty),
        flags_of(new).unwrap_or(&empty),
    );
    let mut keys: BTreeSet<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls() {
        assert_eq!(
            stream_url("http://127.0.0.1:8016/", None).unwrap(),
            "ws://127.0.0.1:8016/api/v1/stream"
        );
        assert_eq!(
            stream_url("http://h:1", Some("staging")).unwrap(),
            "ws://h:1/api/v1/stream?environment=staging"
        );
        assert!(stream_url("ftp://h", None).is_err());
        assert!(stream_url("https://h", None).is_err());
    }

    #[test]
    fn backoff_stays_within_the_exponential_ceiling() {
        let settings = SyncSettings {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            ..SyncSettings::default()
        };
        for attempt in 0..30 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(2));
            for _ in 0..20 {
                assert!(backoff(&settings, attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn changed_keys_between_documents() {
        let old = json!({"flags": {"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}}});
        let new = json!({"flags": {"a": {"v": 1}, "b": {"v": 2}, "d": {"v": 1}}});
        assert_eq!(changed_keys(&old, &new), ["b", "c", "d"]);
        let with_settings = json!({"flags": {"a": {"v": 1}}, "$evaluators": {"x": true}});
        assert_eq!(
            changed_keys(&json!({"flags": {"a": {"v": 1}}}), &with_settings),
            ["a"]
        );
    }
}
