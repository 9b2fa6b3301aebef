//! flag-core: the flag model, validation and evaluation, shared by the server and the SDK.
//!
//! This crate is pure: no I/O, no async runtime, no clock (the evaluation time is an argument).
//! It is the single source of evaluation truth: the server's OFREP endpoints and the SDK both
//! call [`CompiledFlagSet::evaluate`].
//!
//! ```
//! use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet, Reason};
//!
//! let doc = FlagSet::from_json_str(r#"{
//!   "flags": { "new-checkout": {
//!     "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
//!     "targeting": { "if": [ { "ends_with": [ { "var": "email" }, "@example.com" ] }, "on" ] } } } }"#)?;
//! let flags = CompiledFlagSet::compile(&doc)?;
//! let ctx = EvaluationContext::new("user-1").with("email", "ada@example.com");
//! let details = flags.resolve_bool("new-checkout", &ctx, false, 0);
//! assert_eq!((details.value, details.reason), (true, Reason::TargetingMatch));
//! # Ok::<(), flag_core::ValidationError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod compile;
mod context;
mod decision;
pub mod hash;
pub mod json;
mod model;
mod problem;
mod resolve;
pub mod rollout;
mod rule;
mod semver;
mod value;

pub use compile::{
    Loaded, MAX_FLAG_KEY_LEN, MAX_RULE_DEPTH, MAX_VALUE_DEPTH, Mode, check_flag_key, evaluate_rule,
};
pub use context::{EvaluationContext, TARGETING_KEY};
pub use model::{
    FLAGD_SCHEMA_URL, Flag, FlagSet, FlagState, FlagType, Metadata, MetadataValue, json_type_name,
};
pub use problem::{Problem, ProblemCode, Severity, ValidationError};
pub use resolve::{
    CompiledFlagSet, ErrorCode, EvaluationError, FlagRef, FlagValue, Reason, Resolution,
    ResolutionDetails,
};
pub use rule::Timestamp;
