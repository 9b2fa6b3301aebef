//! Client status and the events listeners receive.

use std::fmt;

/// Where the client's flags come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// No flags yet: every evaluation returns the caller's default with `PROVIDER_NOT_READY`.
    NotReady,
    /// Flags are current: the stream is connected, or the client runs offline from a bootstrap
    /// document.
    Ready,
    /// Serving the last known good flags (from before a disconnect, or from the cache file)
    /// while the server cannot be reached.
    Stale,
    /// The server refuses this client (its token is unknown or lacks access: HTTP 401/403). It
    /// keeps retrying at the backoff cap, since the token may be fixed on the server, and keeps
    /// serving its last flags. OpenFeature's ERROR.
    Error,
    /// The client stopped for good: its token was revoked or its environment deleted (the
    /// server said so). It keeps serving its last flags but will never update them.
    /// OpenFeature's FATAL.
    Fatal,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::NotReady => "not ready",
            Status::Ready => "ready",
            Status::Stale => "stale",
            Status::Error => "error",
            Status::Fatal => "fatal",
        })
    }
}

/// Flags changed: which keys, and between which versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsChanged {
    /// Keys whose definition was created, changed or deleted (all keys on a first snapshot).
    pub keys: Vec<String>,
    /// The environment version before (`None` before the first flags).
    pub old_version: Option<i64>,
    /// The environment version now.
    pub new_version: i64,
}

/// Why a client could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder's settings do not work together.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The bootstrap document could not be read or is not a flagd document.
    #[error("cannot use the bootstrap document {path}: {message}")]
    Bootstrap {
        /// The file (or `<inline>`).
        path: String,
        /// What was wrong.
        message: String,
    },
    /// `wait_ready` gave up.
    #[error("no flags within {0:?} (server unreachable and no cache or bootstrap)")]
    Timeout(std::time::Duration),
    /// A server URL is needed for streaming but was given in a form we cannot use.
    #[error("invalid server URL {0:?}: use http://host:port or https://host:port")]
    ServerUrl(String),
}
