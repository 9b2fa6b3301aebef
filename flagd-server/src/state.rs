//! `AppState`: the handles every handler shares: the domain, plus what only the HTTP side needs
//! (stream settings, shutdown, the stream sessions, the request timeout).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::domain::{Clock, system_clock};
use crate::domain::{Domain, tokens::TokenCache};
use crate::store::FlagStore;

/// Shared state. Cloned by axum for every request, so it is one `Arc`: a clone is a single
/// reference-count increment however many handles it holds.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What `AppState` shares. Dereferences to the [`Domain`], so handlers write `state.store`.
pub struct SharedState {
    /// The domain: store, hub, tokens, clock, ramps.
    pub domain: Domain,
    /// Stream settings.
    pub stream: StreamSettings,
    /// Cancelled when the server shuts down: stream sessions say goodbye and close.
    pub shutdown: CancellationToken,
    /// Stream sessions, so shutdown can wait for their goodbyes.
    pub sessions: TaskTracker,
    /// How long a request may take, in milliseconds (`--request-timeout`).
    request_timeout_ms: std::sync::atomic::AtomicU64,
    /// The dashboard's sessions and cookie settings.
    pub ui: UiSettings,
}

/// The dashboard's sessions and cookie settings (`api/ui.rs`).
#[derive(Debug, Default)]
pub struct UiSettings {
    /// Signed-in dashboard sessions.
    pub sessions: crate::domain::sessions::Sessions,
    /// Whether the session cookie is `Secure` (the server speaks TLS).
    pub secure_cookies: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for SharedState {
    type Target = Domain;

    fn deref(&self) -> &Domain {
        &self.domain
    }
}

/// Stream settings.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// How often a session sends `ping`.
    pub ping_interval: Duration,
    /// A send that takes longer than this means a stalled client: the session closes.
    pub write_timeout: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            ping_interval: Duration::from_secs(15),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl AppState {
    /// State over a store, with a fresh hub loaded from it (blocking: reads every environment).
    pub fn new(
        store: Arc<dyn FlagStore>,
        tokens: TokenCache,
        clock: Clock,
    ) -> Result<AppState, crate::store::StoreError> {
        Ok(AppState(Arc::new(SharedState {
            domain: Domain::new(store, tokens, clock)?,
            stream: StreamSettings::default(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            request_timeout_ms: std::sync::atomic::AtomicU64::new(30_000),
            ui: UiSettings::default(),
        })))
    }

    /// How long a request may take, its body included.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(
            self.request_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets `request_timeout` (at start).
    pub fn set_request_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.request_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}
