//! `GET /api/v1/stream`: the WebSocket update stream (protocol: `docs/PROTOCOL.md`).
//!
//! Each connection is one session task. The hub's broadcast only says "environment E is now at
//! version V"; the session works out what its client lacks from the last version it sent: the
//! missing patches from the in-memory ring, or a fresh snapshot when the client is too far
//! behind. A slow client therefore only ever delays itself, and its session holds at most one
//! message in flight.

use std::io::IoSlice;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flag_protocol::{ClientMessage, GoodbyeReason, Ping, ServerMessage};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::QueryParams;
use crate::api::auth::EnvironmentAccess;
use crate::domain::hub::{ClientInfo, HubEvent, encode, patch_message};
use crate::error::ApiError;
use crate::state::AppState;

/// More patches than this to catch up on, and a snapshot is sent instead.
const MAX_CATCH_UP_PATCHES: usize = 64;
/// Largest message a client may send (hello and ack are tiny).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// tungstenite's read buffer (128 KiB by default): idle connections should cost little, and
/// tungstenite zeroes the free part before every read. Client messages are small (a hello, acks);
/// a larger one (a usage report) grows the buffer while it is read.
const READ_BUFFER: usize = 1024;
/// Larger messages (snapshots) go out as fragments of this size (`send_text`).
const FRAGMENT: usize = 8 * 1024;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    /// The last version the client applied.
    since: Option<i64>,
    /// The digest of the commit at `since`, as the server sent it (the rest of the resume
    /// token).
    digest: Option<String>,
    /// Used by the access extractor for admin tokens.
    #[serde(rename = "environment")]
    _environment: Option<String>,
}

pub async fn stream(
    State(state): State<AppState>,
    access: EnvironmentAccess,
    QueryParams(params): QueryParams<StreamParams>,
    request: Request,
) -> Result<Response, ApiError> {
    // A session lives as long as its token: revoking the token ends it. An ID token expires
    // within the hour and cannot be revoked, so it does not open sessions.
    let Some(token_id) = access.principal.token_id().map(str::to_owned) else {
        return Err(ApiError::forbidden(
            "the stream needs a token (an sdk token, or an admin token with ?environment=); ID tokens authenticate API requests only",
        ));
    };
    let (mut parts, _) = request.into_parts();
    let key = websocket_key(&parts.headers)?;
    let upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::bad_request("this connection cannot be upgraded to a WebSocket")
        })?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each message through at once; a blocked socket makes `send` wait (bounded by
        // the write timeout) instead of growing a buffer.
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let sessions = state.sessions.clone();
    sessions.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let resume = params.since.map(|version| (version, params.digest));
                let (session, events) = Session::open(socket, state, access, token_id);
                // A task of its own: this one's captures (the request's parts) are freed now
                // instead of being kept for as long as the connection lives.
                let sessions = session.state.sessions.clone();
                sessions.spawn(session.run(events, resume));
            }
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(key.as_bytes()),
            ),
        ],
    )
        .into_response())
}

/// Checks the upgrade request (RFC 6455 §4.2.1) and returns its `Sec-WebSocket-Key`.
fn websocket_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::bad_request(
            "this endpoint is a WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::bad_request(
            "unsupported WebSocket version: send `Sec-WebSocket-Version: 13`",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))
}

/// Why a session ended on the server's initiative.
struct Goodbye {
    reason: GoodbyeReason,
    retry_after_ms: u64,
    code: CloseCode,
}

struct Session {
    socket: Socket,
    state: AppState,
    environment: String,
    token_id: String,
    id: u64,
    last_sent: i64,
}

/// A resume token: the version a reconnecting client applied, and that commit's digest.
type Resume = (i64, Option<String>);

enum Flow {
    Continue,
    Stop,
    Goodbye(Goodbye),
}

impl Session {
    /// Registers the session and subscribes to the hub's events (before the snapshot is read, so
    /// a commit in between is seen as an event).
    fn open(
        socket: Socket,
        state: AppState,
        access: EnvironmentAccess,
        token_id: String,
    ) -> (Session, tokio::sync::broadcast::Receiver<HubEvent>) {
        let events = state.hub.subscribe();
        let id = state.hub.register(ClientInfo {
            session: 0,
            environment: access.environment.clone(),
            token_name: access.principal.actor.clone(),
            client_id: None,
            sdk: None,
            sdk_version: None,
            connected_at: (state.clock)(),
            sent_version: 0,
            acked_version: None,
            last_ack_at: None,
        });
        let session = Session {
            socket,
            state,
            environment: access.environment,
            token_id,
            id,
            last_sent: 0,
        };
        (session, events)
    }

    /// Serves the session until the client leaves or the server says goodbye. This future lives
    /// as long as the connection: what it holds while idle is the memory an idle client costs
    /// (rarely used steps are boxed so their state is not part of it).
    async fn run(
        mut self,
        mut events: tokio::sync::broadcast::Receiver<HubEvent>,
        since: Option<Resume>,
    ) {
        let outcome = self.serve(&mut events, since).await;
        if let Flow::Goodbye(goodbye) = outcome {
            Box::pin(self.goodbye(goodbye)).await;
        }
        self.state.hub.unregister(self.id);
    }

    async fn serve(
        &mut self,
        events: &mut tokio::sync::broadcast::Receiver<HubEvent>,
        since: Option<Resume>,
    ) -> Flow {
        // Boxed: the first sync's future is large and lives only while the client connects;
        // inline, its size would be part of every idle session for as long as it lives.
        if let flow @ (Flow::Stop | Flow::Goodbye(_)) = Box::pin(self.initial_sync(since)).await {
            return flow;
        }
        let mut pings = tokio::time::interval(self.state.stream.ping_interval);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings.tick().await;
        let shutdown = self.state.shutdown.clone();
        // Made once: each `cancelled()` takes the token's lock.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let flow = tokio::select! {
                () = &mut cancelled => Flow::Goodbye(Goodbye { reason: GoodbyeReason::Shutdown, retry_after_ms: 1_000, code: CloseCode::Away }),
                // Boxed (one allocation per event) for the same reason as the first sync.
                event = events.recv() => Box::pin(self.on_event(event)).await,
                message = self.socket.next() => self.on_message(message),
                _ = pings.tick() => {
                    let ping = ping(self.last_sent);
                    if Box::pin(self.send(ping)).await { Flow::Continue } else { Flow::Stop }
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    /// The first message(s): patches since the client's version when they can be had, else a
    /// snapshot.
    async fn initial_sync(&mut self, since: Option<Resume>) -> Flow {
        let Some(mut current) = self.state.hub.snapshot(&self.environment) else {
            return Flow::Goodbye(environment_deleted());
        };
        // A client failing over from a replica that was ahead of this one: catch up from the
        // database first, rather than send it an older snapshot (its flags would go back).
        if let Some((version, _)) = &since
            && *version > current.version
            && self.state.replication.connected().is_some()
        {
            let (publisher, environment) = (self.state.publisher.clone(), self.environment.clone());
            let _ = tokio::task::spawn_blocking(move || publisher.catch_up(&environment)).await;
            match self.state.hub.snapshot(&self.environment) {
                Some(caught_up) => current = caught_up,
                None => return Flow::Goodbye(environment_deleted()),
            }
        }
        // A resume token from another history (another database, a restored backup) names a
        // version this server may also have, with other contents: only a snapshot is right.
        let since = match since {
            Some((version, Some(digest))) => {
                let same = Session::same_history(
                    self.state.clone(),
                    self.environment.clone(),
                    version,
                    digest,
                )
                .await;
                same.then_some(version)
            }
            Some((version, None)) => Some(version),
            None => None,
        };
        match since {
            Some(version) if version == current.version => {
                // Already current: a ping tells the client so.
                self.last_sent = version;
                return if self.send(ping(version)).await {
                    Flow::Continue
                } else {
                    Flow::Stop
                };
            }
            Some(version) if (0..current.version).contains(&version) => {
                let resumed = Session::resume_patches(
                    self.state.clone(),
                    self.environment.clone(),
                    version,
                    current.version,
                )
                .await;
                if let Some(patches) = resumed {
                    self.last_sent = version;
                    for (patch_version, message) in patches {
                        if !self.send(message).await {
                            return Flow::Stop;
                        }
                        self.last_sent = patch_version;
                    }
                    return Flow::Continue;
                }
            }
            _ => {}
        }
        if !self.send(current.message()).await {
            return Flow::Stop;
        }
        self.last_sent = current.version;
        self.record_sent();
        Flow::Continue
    }

    /// Whether this server's commit at `version` has `digest` (from the hub, or else the log).
    async fn same_history(
        state: AppState,
        environment: String,
        version: i64,
        digest: String,
    ) -> bool {
        if let Some(known) = state.hub.digest(&environment, version) {
            return known == digest;
        }
        let store = state.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            crate::domain::hub::version_digest(store.as_ref(), &environment, version)
        })
        .await;
        matches!(stored, Ok(Ok(stored)) if stored == digest)
    }

    /// The patches after `since` up to `upto`: from the in-memory ring, or else from the change
    /// log in SQLite (after a server restart). `None` when only a snapshot will do.
    async fn resume_patches(
        state: AppState,
        environment: String,
        since: i64,
        upto: i64,
    ) -> Option<Vec<(i64, Utf8Bytes)>> {
        let wanted = usize::try_from(upto - since).ok()?;
        if wanted > crate::domain::hub::PATCH_RING {
            return None;
        }
        if let Some(patches) = state.hub.patches_between(&environment, since, upto) {
            return Some(
                patches
                    .into_iter()
                    .map(|p| (p.version, p.message))
                    .collect(),
            );
        }
        let store = state.store.clone();
        let records = tokio::task::spawn_blocking(move || {
            store.changes_since(&environment, since, 4 * crate::domain::hub::PATCH_RING)
        })
        .await
        .ok()?
        .ok()?;
        let mut patches = Vec::new();
        let mut expected = since + 1;
        let mut index = 0;
        while expected <= upto {
            let group: Vec<_> = records[index..]
                .iter()
                .take_while(|r| r.version == expected)
                .cloned()
                .collect();
            if group.is_empty() {
                return None;
            }
            index += group.len();
            patches.push((expected, patch_message(expected, &group)?));
            expected += 1;
        }
        Some(patches)
    }

    async fn on_event(&mut self, event: Result<HubEvent, RecvError>) -> Flow {
        match event {
            Ok(HubEvent::Version {
                environment,
                version,
                patch,
            }) if *environment == *self.environment && version > self.last_sent => {
                match patch {
                    // The usual case: one version behind, and the event carries the patch every
                    // session of the environment sends (encoded once, shared).
                    Some(patch) if self.last_sent.checked_add(1) == Some(version) => {
                        if !self.send(patch).await {
                            return Flow::Stop;
                        }
                        self.last_sent = version;
                        self.record_sent();
                        Flow::Continue
                    }
                    _ => self.catch_up().await,
                }
            }
            Ok(HubEvent::TokenRevoked { id }) if id == self.token_id => Flow::Goodbye(Goodbye {
                reason: GoodbyeReason::TokenRevoked,
                retry_after_ms: 0,
                code: CloseCode::Policy,
            }),
            Ok(HubEvent::EnvironmentDeleted { environment }) if environment == self.environment => {
                Flow::Goodbye(environment_deleted())
            }
            Ok(_) => Flow::Continue,
            Err(RecvError::Lagged(_)) => {
                // Events were dropped; only two facts matter, and both can be re-read.
                if !self.state.tokens.is_active(&self.token_id) {
                    return Flow::Goodbye(Goodbye {
                        reason: GoodbyeReason::TokenRevoked,
                        retry_after_ms: 0,
                        code: CloseCode::Policy,
                    });
                }
                self.catch_up().await
            }
            Err(RecvError::Closed) => Flow::Stop,
        }
    }

    /// Sends what the client lacks to reach the current version.
    async fn catch_up(&mut self) -> Flow {
        let Some(current) = self.state.hub.snapshot(&self.environment) else {
            return Flow::Goodbye(environment_deleted());
        };
        if current.version <= self.last_sent {
            return Flow::Continue;
        }
        match self
            .state
            .hub
            .patches_between(&self.environment, self.last_sent, current.version)
        {
            Some(patches) if patches.len() <= MAX_CATCH_UP_PATCHES => {
                for patch in patches {
                    if !self.send(patch.message).await {
                        return Flow::Stop;
                    }
                    self.last_sent = patch.version;
                }
            }
            _ => {
                // Too far behind (a slow client, or the ring moved on): reset with a snapshot.
                if !self.send(current.message()).await {
                    return Flow::Stop;
                }
                self.last_sent = current.version;
            }
        }
        self.record_sent();
        Flow::Continue
    }

    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Flow {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Flow::Stop,
            Some(Ok(_)) => return Flow::Continue,
        };
        let Ok(message) = serde_json::from_str::<ClientMessage>(&text) else {
            tracing::debug!(
                session = self.id,
                "ignoring a client message that does not parse"
            );
            return Flow::Continue;
        };
        let now = (self.state.clock)();
        match message {
            ClientMessage::Hello(hello) => {
                let clip =
                    |field: Option<String>| field.map(|s| s.chars().take(200).collect::<String>());
                self.state.hub.update_client(self.id, |info| {
                    info.client_id = clip(hello.client_id);
                    info.sdk = clip(hello.sdk);
                    info.sdk_version = clip(hello.sdk_version);
                });
            }
            ClientMessage::Ack(ack) => {
                // Only a version this session has sent can be acknowledged: anything else (a
                // negative, a future or a wrapped number) is ignored, so lag never goes wrong.
                let version = ack.version;
                if (0..=self.last_sent).contains(&version) {
                    if let Some(committed) = self.state.hub.committed_at(&self.environment, version)
                    {
                        self.state.metrics.propagation(committed.elapsed());
                    }
                    self.state.hub.update_client(self.id, |info| {
                        info.acked_version = Some(version);
                        info.last_ack_at = Some(now);
                    });
                }
            }
            ClientMessage::Usage(report) => {
                crate::domain::usage::report(&self.state, &self.environment, &report.counts);
            }
            ClientMessage::Unknown => {
                tracing::debug!(session = self.id, "ignoring an unknown client message");
            }
        }
        Flow::Continue
    }

    fn record_sent(&self) {
        let version = self.last_sent;
        self.state
            .hub
            .update_client(self.id, |info| info.sent_version = version);
    }

    /// Sends one message; `false` when the client is gone or too slow to take it in time.
    async fn send(&mut self, text: Utf8Bytes) -> bool {
        let timeout = self.state.stream.write_timeout;
        match tokio::time::timeout(timeout, send_text(&mut self.socket, &text)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::info!(
                    session = self.id,
                    ?timeout,
                    "closing a stream client that stopped reading"
                );
                false
            }
        }
    }

    async fn goodbye(&mut self, goodbye: Goodbye) {
        let message = ServerMessage::<()>::Goodbye(flag_protocol::Goodbye {
            version: self.last_sent,
            reason: goodbye.reason,
            retry_after_ms: goodbye.retry_after_ms,
        });
        if self.send(encode(&message)).await {
            let close = CloseFrame {
                code: goodbye.code,
                reason: goodbye.reason.as_str().into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.socket.send(Message::Close(Some(close))),
            )
            .await;
        }
    }
}

/// The `ping` message.
fn ping(version: i64) -> Utf8Bytes {
    encode(&ServerMessage::<()>::Ping(Ping { version }))
}

fn environment_deleted() -> Goodbye {
    Goodbye {
        reason: GoodbyeReason::EnvironmentDeleted,
        retry_after_ms: 0,
        code: CloseCode::Normal,
    }
}

/// Sends a text message straight to the connection, bypassing tungstenite's write buffer: the
/// frame headers and the message's shared bytes go out in vectored writes, nothing is copied per
/// session, and no session keeps a buffer the size of the largest message it ever sent. A
/// message larger than `FRAGMENT` goes out as continuation frames of that size (clients with a
/// small frame limit still take a large snapshot), `FRAGMENTS_PER_WRITE` of them per `writev`.
///
/// The frame format is tungstenite's (`FrameHeader::format`); only the write path is ours,
/// because it is the fan-out's hot path (`docs/PERFORMANCE.md`).
async fn send_text(socket: &mut Socket, text: &Utf8Bytes) -> std::io::Result<()> {
    // Whatever tungstenite has queued (a pong to a client's ping, written while reading) goes
    // out whole first, so this message starts on a frame boundary. Nothing reads or writes
    // through tungstenite while this runs: the session awaits it.
    socket.flush().await.map_err(std::io::Error::other)?;
    let payload = text.as_bytes();
    let count = payload.len().div_ceil(FRAGMENT).max(1);
    let io = socket.get_mut();
    if count == 1 {
        // The common case (patches, pings): one frame, nothing allocated.
        let header = FrameHead::new(true, true, payload.len())?;
        return write_all_vectored(io, &mut [header.slice(), IoSlice::new(payload)]).await;
    }
    let frames = payload
        .chunks(FRAGMENT)
        .enumerate()
        .map(|(index, fragment)| {
            let header = FrameHead::new(index == 0, index + 1 == count, fragment.len())?;
            Ok((header, fragment))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for batch in frames.chunks(FRAGMENTS_PER_WRITE) {
        let mut slices: Vec<IoSlice<'_>> = batch
            .iter()
            .flat_map(|(header, fragment)| [header.slice(), IoSlice::new(fragment)])
            .collect();
        write_all_vectored(io, &mut slices).await?;
    }
    Ok(())
}

/// The longest header of an unmasked frame: 2 bytes and a 64-bit length (RFC 6455 §5.2).
const MAX_HEADER: usize = 10;
/// Fragments per vectored write (two slices each, well under `IOV_MAX`).
const FRAGMENTS_PER_WRITE: usize = 32;

/// The header of an unmasked frame, formatted by tungstenite.
struct FrameHead {
    bytes: [u8; MAX_HEADER],
    length: usize,
}

impl FrameHead {
    /// The header of a text frame (`first`) or continuation frame carrying `length` bytes.
    fn new(first: bool, last: bool, length: usize) -> std::io::Result<FrameHead> {
        let header = FrameHeader {
            is_final: last,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::Data(if first { Data::Text } else { Data::Continue }),
            mask: None,
        };
        let mut bytes = [0u8; MAX_HEADER];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        header
            .format(length as u64, &mut cursor)
            .map_err(std::io::Error::other)?;
        let length = usize::try_from(cursor.position()).map_err(std::io::Error::other)?;
        Ok(FrameHead { bytes, length })
    }

    fn slice(&self) -> IoSlice<'_> {
        IoSlice::new(&self.bytes[..self.length])
    }
}

/// Writes every slice, in order, with as few `writev` calls as the socket allows, then flushes:
/// under TLS a write may only have reached rustls's buffer (free on plain TCP).
async fn write_all_vectored(
    io: &mut TokioIo<hyper::upgrade::Upgraded>,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    io.flush().await
}
