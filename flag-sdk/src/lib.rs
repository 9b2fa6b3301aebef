//! flag-sdk: the Rust client applications embed.
//!
//! Flags are evaluated locally, in nanoseconds, with the same code the server uses
//! (`flag-core`). A background task keeps them current over the server's WebSocket stream;
//! while the server is unreachable the client keeps serving the last known good flags, and a
//! cache file carries them across restarts.
//!
//! ```no_run
//! # async fn example() -> Result<(), flag_sdk::Error> {
//! use std::time::Duration;
//! use flag_sdk::{EvaluationContext, FlagClient};
//!
//! let client = FlagClient::builder()
//!     .server("http://127.0.0.1:8016")
//!     .token("flg_sdk_…")
//!     .cache_file("/var/cache/my-app/flags.json")
//!     .build()?;
//! client.wait_ready(Duration::from_secs(2)).await?;
//! let user = EvaluationContext::new("user-42").with("email", "ada@example.com");
//! if client.bool_value("new-checkout", &user, false) {
//!     // the new checkout
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod builder;
mod cache;
mod client;
mod context;
mod handle;
#[cfg(feature = "openfeature")]
pub mod openfeature;
mod state;
mod status;
mod sync;
mod tls;
mod usage;

pub use builder::FlagClientBuilder;
pub use client::{EvaluationDetails, FlagClient};
pub use context::EvaluationContext;
pub use flag_core::{ErrorCode, Metadata, MetadataValue, Reason, Resolution};
pub use handle::FlagHandle;
pub use status::{Error, FlagsChanged, Status};
pub use tls::Pem;
