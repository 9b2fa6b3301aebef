//! `AppState`: the handles every handler shares.

use std::sync::Arc;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenCache;
use crate::hub::Hub;
use crate::store::FlagStore;

/// The current time in unix seconds. Injected so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            })
    })
}

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

/// What `AppState` shares.
pub struct SharedState {
    /// Flag storage (blocking; use `service::blocking`).
    pub store: Arc<dyn FlagStore>,
    /// Active tokens, for authentication without touching the store.
    pub tokens: TokenCache,
    /// The time.
    pub clock: Clock,
    /// Live snapshots, patches, the version broadcast and stream clients.
    pub hub: Arc<Hub>,
    /// Stream settings.
    pub stream: StreamSettings,
    /// Cancelled when the server shuts down: stream sessions say goodbye and close.
    pub shutdown: CancellationToken,
    /// Stream sessions, so shutdown can wait for their goodbyes.
    pub sessions: TaskTracker,
    /// Serialises ramp state changes (API calls and the scheduler).
    pub ramps: crate::ramp::RampLock,
    /// The ramps whose guard is being checked.
    pub guard_checks: crate::ramp::GuardChecks,
    /// Whether the ramp scheduler runs (for `/readyz`).
    pub scheduler: crate::ramp::SchedulerHealth,
    /// Whether writes refuse warnings by default (`--strict`; `?strict=` overrides per request).
    pub strict_writes: std::sync::atomic::AtomicBool,
    /// How long a request may take, in milliseconds (`--request-timeout`).
    request_timeout_ms: std::sync::atomic::AtomicU64,
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
        let hub = Arc::new(Hub::new());
        let store: Arc<dyn FlagStore> =
            Arc::new(crate::hub::PublishingStore::new(store, hub.clone())?);
        Ok(AppState(Arc::new(SharedState {
            store,
            tokens,
            clock,
            hub,
            stream: StreamSettings::default(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            ramps: crate::ramp::RampLock::default(),
            guard_checks: crate::ramp::GuardChecks::default(),
            scheduler: crate::ramp::SchedulerHealth::default(),
            strict_writes: std::sync::atomic::AtomicBool::new(false),
            request_timeout_ms: std::sync::atomic::AtomicU64::new(30_000),
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
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}
