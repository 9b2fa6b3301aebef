//! `AppState`: the handles every handler shares.

use std::sync::Arc;

use crate::auth::TokenCache;
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

/// Shared state: cheap to clone (all handles).
#[derive(Clone)]
pub struct AppState {
    /// Flag storage (blocking; use `service::blocking`).
    pub store: Arc<dyn FlagStore>,
    /// Active tokens, for authentication without touching the store.
    pub tokens: TokenCache,
    /// The time.
    pub clock: Clock,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}
