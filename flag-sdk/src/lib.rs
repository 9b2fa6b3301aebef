//! flag-sdk: the Rust client applications embed (not yet implemented; see the SDK issue).
//!
//! Until the streaming client lands, applications can evaluate a flag file locally with
//! [`flag_core`], which this crate re-exports.
#![deny(missing_docs)]

pub use flag_core;
