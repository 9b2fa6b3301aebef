//! flag-protocol: the wire types the flag server, the SDK and `flagctl` share.
//!
//! Every JSON message that crosses a process boundary is typed here once, so no crate builds or
//! parses protocol JSON by hand:
//!
//! - [`stream`]: the WebSocket update stream (`GET /api/v1/stream`): [`ServerMessage`]s
//!   (`snapshot`, `patch`, `ping`, `goodbye`) and [`ClientMessage`]s (`hello`, `ack`), the flag-set
//!   [`Document`] they carry, and [`Change`], applied by one function,
//!   [`Document::apply`], on the server's hub, in the SDK and in `flagctl watch`.
//! - [`error`]: the admin API's `{"error": {"code", "message", "path", "problems"}}` body, with a
//!   typed [`ErrorCode`] that clients decide on (never on the message text).
//! - [`ofrep`]: the OpenFeature Remote Evaluation Protocol's bodies.
//! - [`auth`]: the caller's [`auth::Identity`] (`GET /api/v1/auth/whoami`).
//! - [`source`]: GitOps: an environment's Git source (`/api/v1/environments/{env}/source`), its
//!   sync status and drift.
//!
//! The human description, with every message as an example, is the server repository's
//! `docs/PROTOCOL.md`; a test parses each example there with these types. Golden fixtures in
//! `tests/golden/` pin the exact wire form.
//!
//! Pure: serde types and the functions that apply them, no I/O. It depends on `flag-core` for
//! the vocabulary the messages carry (`Metadata`, validation `Problem`s, evaluation results).
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod auth;
pub mod error;
pub mod ofrep;
pub mod source;
pub mod stream;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ofrep::{
    OfrepBulkEvaluation, OfrepCapabilities, OfrepConfiguration, OfrepEvaluation, OfrepFailure,
    OfrepRequest,
};
pub use stream::{
    Ack, Change, ClientMessage, Document, Goodbye, GoodbyeReason, Hello, Patch, Ping,
    ServerMessage, Snapshot,
};
