//! Resolution: a flag key, a context and the time in; value, variant, reason and error out,
//! exactly per flagd's semantics (DESIGN §3).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compile::Evaluators;
use crate::context::{EvaluationContext, FastHasher};
use crate::decision::{Decision, Leaf, Outcome};
use crate::hash::MurmurPrefix;
use crate::model::{Flag, FlagState, FlagType, Metadata};
use crate::rule::{Env, Node, Scope, Timestamp};

/// Why a value was returned (OpenFeature / flagd reason strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag has no targeting: its default variant was served.
    Static,
    /// Targeting did not decide (or the flag has no default variant): the default was served.
    Default,
    /// Targeting picked the variant.
    TargetingMatch,
    /// The flag is disabled: the caller's default was served.
    Disabled,
    /// Evaluation failed: the caller's default was served.
    Error,
}

impl Reason {
    /// The wire spelling, e.g. `TARGETING_MATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenFeature error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has this key.
    FlagNotFound,
    /// The flag's definition could not be compiled.
    ParseError,
    /// The flag's value is not of the requested type.
    TypeMismatch,
    /// The context lacks a targeting key that evaluation needed.
    TargetingKeyMissing,
    /// The context is malformed.
    InvalidContext,
    /// The flags are not available yet (used by clients before their first sync).
    ProviderNotReady,
    /// Any other failure, such as targeting returning something that is not a variant.
    General,
}

impl ErrorCode {
    /// The wire spelling, e.g. `FLAG_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::ProviderNotReady => "PROVIDER_NOT_READY",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An evaluation error: a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: Cow<'static, str>,
}

impl EvaluationError {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        EvaluationError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for EvaluationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The result of evaluating a flag in its own type (what OFREP returns).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'a> {
    /// The variant's value; `None` means "use the caller's default" (disabled, code default,
    /// error).
    pub value: Option<&'a Value>,
    /// The variant's name, when a variant was served.
    pub variant: Option<&'a str>,
    /// Why.
    pub reason: Reason,
    /// Set when `reason` is `Error`.
    pub error: Option<EvaluationError>,
    /// Flag-set metadata merged with the flag's own.
    pub metadata: &'a Metadata,
    /// The flag's type, when the flag exists and its variants agree on one.
    pub flag_type: Option<FlagType>,
}

impl Resolution<'static> {
    /// What evaluating a key the set does not have answers (`FLAG_NOT_FOUND`).
    pub fn flag_not_found() -> Resolution<'static> {
        Resolution {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some(EvaluationError::new(
                ErrorCode::FlagNotFound,
                "flag not found",
            )),
            metadata: &EMPTY_METADATA,
            flag_type: None,
        }
    }
}

/// A typed result, as SDK getters return it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionDetails<'a, T> {
    /// The variant's value, or the caller's default.
    pub value: T,
    /// The variant's name, when a variant was served.
    pub variant: Option<&'a str>,
    /// Why.
    pub reason: Reason,
    /// Set when `reason` is `Error`.
    pub error: Option<EvaluationError>,
    /// Flag-set metadata merged with the flag's own.
    pub metadata: &'a Metadata,
}

/// A type flag values can be read as.
pub trait FlagValue<'a>: Sized {
    /// The type's name in `TYPE_MISMATCH` messages.
    const TYPE_NAME: &'static str;
    /// Reads a variant value as this type, or `None` when it is of another type.
    fn from_value(value: &'a Value) -> Option<Self>;
}

impl<'a> FlagValue<'a> for bool {
    const TYPE_NAME: &'static str = "boolean";
    fn from_value(value: &'a Value) -> Option<Self> {
        value.as_bool()
    }
}

impl<'a> FlagValue<'a> for &'a str {
    const TYPE_NAME: &'static str = "string";
    fn from_value(value: &'a Value) -> Option<Self> {
        value.as_str()
    }
}

impl<'a> FlagValue<'a> for i64 {
    const TYPE_NAME: &'static str = "integer";
    fn from_value(value: &'a Value) -> Option<Self> {
        let Value::Number(n) = value else { return None };
        if let Some(i) = n.as_i64() {
            return Some(i);
        }
        // `1.0` is an integer; `1.5` is not. The range check excludes values that would saturate.
        let f = n.as_f64()?;
        (f == f.trunc() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
            .then_some(f as i64)
    }
}

impl<'a> FlagValue<'a> for f64 {
    const TYPE_NAME: &'static str = "float";
    fn from_value(value: &'a Value) -> Option<Self> {
        value.as_f64()
    }
}

impl<'a> FlagValue<'a> for &'a Value {
    const TYPE_NAME: &'static str = "object";
    fn from_value(value: &'a Value) -> Option<Self> {
        value.is_object().then_some(value)
    }
}

static EMPTY_METADATA: LazyLock<Metadata> = LazyLock::new(Metadata::new);

/// One compiled flag.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFlag {
    /// The key as a JSON string, for `$flagd.flagKey`.
    key: Value,
    /// The murmur3 state after the key, for `fractional` on `flagKey ++ targetingKey`.
    key_hash: MurmurPrefix,
    state: FlagState,
    flag_type: Option<FlagType>,
    variants: Box<[(Box<str>, Value)]>,
    default_variant: Option<usize>,
    targeting: Option<Decision>,
    metadata: Metadata,
    /// Set in lenient mode for a flag that failed to compile: it evaluates to this error.
    broken: Option<String>,
    /// Set for targeting flagd could not run (an unknown operator, an unresolved `$ref`): an
    /// enabled flag evaluates to `PARSE_ERROR` with this message.
    targeting_error: Option<String>,
}

impl CompiledFlag {
    pub(crate) fn new(
        key: &str,
        flag: &Flag,
        flag_type: Option<FlagType>,
        default_variant: Option<usize>,
        targeting: Option<Node>,
        metadata: Metadata,
    ) -> Self {
        let variants: Box<[(Box<str>, Value)]> = flag
            .variants
            .iter()
            .map(|(k, v)| (Box::from(k.as_str()), v.clone()))
            .collect();
        let leaf = |value: &Value| {
            let number;
            let name = match value {
                Value::Null => return Leaf::Default,
                Value::String(name) => name.as_str(),
                Value::Bool(true) => "true",
                Value::Bool(false) => "false",
                Value::Number(n) => {
                    number = number_name(n);
                    number.as_str()
                }
                _ => return Leaf::Invalid(value.clone()),
            };
            match variants.iter().position(|(n, _)| n.as_ref() == name) {
                Some(index) => Leaf::Variant(index),
                None => Leaf::Invalid(value.clone()),
            }
        };
        let targeting = targeting.map(|node| Decision::build(node, &leaf));
        CompiledFlag {
            key: Value::String(key.to_owned()),
            key_hash: MurmurPrefix::new(key.as_bytes()),
            state: flag.state,
            flag_type,
            variants,
            default_variant,
            targeting,
            metadata,
            broken: None,
            targeting_error: None,
        }
    }

    /// This flag with targeting that fails as a whole (`PARSE_ERROR`, after the state check).
    pub(crate) fn with_targeting_error(mut self, message: String) -> Self {
        self.targeting = None;
        self.targeting_error = Some(message);
        self
    }

    pub(crate) fn broken(key: &str, message: String, metadata: Metadata) -> Self {
        CompiledFlag {
            key: Value::String(key.to_owned()),
            key_hash: MurmurPrefix::new(key.as_bytes()),
            state: FlagState::Enabled,
            flag_type: None,
            variants: Box::new([]),
            default_variant: None,
            targeting: None,
            metadata,
            broken: Some(message),
            targeting_error: None,
        }
    }

    /// Constant targeting results that name no variant.
    pub(crate) fn invalid_results(&self) -> Vec<&Value> {
        self.targeting
            .as_ref()
            .map(Decision::invalid_results)
            .unwrap_or_default()
    }

    pub(crate) fn key(&self) -> &str {
        self.key.as_str().unwrap_or_default()
    }

    fn variant(&self, index: usize) -> (&str, &Value) {
        let (name, value) = &self.variants[index];
        (name, value)
    }

    fn find_variant(&self, name: &str) -> Option<usize> {
        // Flags have a handful of variants: a scan is faster than hashing.
        self.variants.iter().position(|(n, _)| n.as_ref() == name)
    }

    fn served(&self, index: usize, reason: Reason) -> Resolution<'_> {
        let (name, value) = self.variant(index);
        Resolution {
            value: Some(value),
            variant: Some(name),
            reason,
            error: None,
            metadata: &self.metadata,
            flag_type: self.flag_type,
        }
    }

    fn default_result(&self, reason_if_served: Reason) -> Resolution<'_> {
        match self.default_variant {
            Some(index) => self.served(index, reason_if_served),
            // No default variant: the caller's default ("code default").
            None => self.caller_default(Reason::Default, None),
        }
    }

    fn caller_default(&self, reason: Reason, error: Option<EvaluationError>) -> Resolution<'_> {
        Resolution {
            value: None,
            variant: None,
            reason,
            error,
            metadata: &self.metadata,
            flag_type: self.flag_type,
        }
    }

    fn evaluate(&self, ctx: &EvaluationContext, timestamp: Timestamp) -> Resolution<'_> {
        if let Some(message) = &self.broken {
            return self.caller_default(
                Reason::Error,
                Some(EvaluationError::new(ErrorCode::ParseError, message.clone())),
            );
        }
        if self.state == FlagState::Disabled {
            return self.caller_default(Reason::Disabled, None);
        }
        if let Some(message) = &self.targeting_error {
            return self.caller_default(
                Reason::Error,
                Some(EvaluationError::new(ErrorCode::ParseError, message.clone())),
            );
        }
        let Some(targeting) = &self.targeting else {
            return self.default_result(Reason::Static);
        };
        let env = Env::new(ctx, &self.key, &self.key_hash, timestamp);
        let outcome = targeting.decide(Scope::root(&env));
        if env.failed.get() {
            // A custom operator failed: the targeting result is null, as in flagd.
            return self.default_result(Reason::Default);
        }
        let result = match outcome {
            Outcome::Leaf(Leaf::Variant(index)) => {
                return self.served(*index, Reason::TargetingMatch);
            }
            Outcome::Leaf(Leaf::Default) | Outcome::Null => {
                return self.default_result(Reason::Default);
            }
            Outcome::Leaf(Leaf::Invalid(value)) => return self.not_a_variant(value),
            Outcome::Value(value) => value,
        };
        let number;
        let name = match result.as_ref() {
            Value::Null => return self.default_result(Reason::Default),
            Value::String(name) => name.as_str(),
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
            Value::Number(n) => {
                // Rare (a rule returning a number): the allocation is off the common paths.
                number = number_name(n);
                number.as_str()
            }
            other => return self.not_a_variant(other),
        };
        match self.find_variant(name) {
            Some(index) => self.served(index, Reason::TargetingMatch),
            None => self.not_a_variant(result.as_ref()),
        }
    }

    fn not_a_variant(&self, returned: &Value) -> Resolution<'_> {
        let message = format!(
            "targeting of flag {:?} returned {returned}, which is not a variant",
            self.key()
        );
        self.caller_default(
            Reason::Error,
            Some(EvaluationError::new(ErrorCode::General, message)),
        )
    }
}

/// The variant name a numeric targeting result stands for, as flagd turns it into text: `2` and
/// `2.0` name variant `"2"`, `0.5` names `"0.5"`.
pub(crate) fn number_name(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) if f == f.trunc() && f.abs() < 9.0e15 => format!("{f:.0}"),
        _ => n.to_string(),
    }
}

/// A compiled flag set: compile once per update, evaluate many times, from many threads.
#[derive(Debug, Clone, Default)]
pub struct CompiledFlagSet {
    /// In key order, so bulk evaluation is deterministic. Shared between versions of a set:
    /// `with_changes` recompiles only the flags that changed.
    flags: Box<[Arc<CompiledFlag>]>,
    /// Key to flag directly (not to a slot in `flags`): one dependent load fewer per evaluation.
    index: HashMap<Box<str>, Arc<CompiledFlag>, FastHasher>,
    metadata: Metadata,
    evaluators: Arc<Evaluators>,
}

impl CompiledFlagSet {
    pub(crate) fn parts(&self) -> (&[Arc<CompiledFlag>], &Metadata, &Arc<Evaluators>) {
        (&self.flags, &self.metadata, &self.evaluators)
    }

    pub(crate) fn new(
        mut flags: Vec<Arc<CompiledFlag>>,
        metadata: Metadata,
        evaluators: Arc<Evaluators>,
    ) -> Self {
        flags.sort_by(|a, b| a.key().cmp(b.key()));
        let index = flags
            .iter()
            .map(|flag| (Box::from(flag.key()), flag.clone()))
            .collect();
        CompiledFlagSet {
            flags: flags.into_boxed_slice(),
            index,
            metadata,
            evaluators,
        }
    }

    /// The number of flags (including broken ones).
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether the set has no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Whether a flag with this key exists.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The flag keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|flag| flag.key())
    }

    /// The flag-set metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Evaluates a flag in its own type. `timestamp` (unix seconds) is `$flagd.timestamp`.
    pub fn evaluate(&self, key: &str, ctx: &EvaluationContext, timestamp: i64) -> Resolution<'_> {
        self.evaluate_at(key, ctx, Timestamp::At(timestamp))
    }

    /// [`evaluate`](Self::evaluate) with a [`Timestamp`] that may be a clock, read only if a rule
    /// uses `$flagd.timestamp`.
    pub fn evaluate_at(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        timestamp: Timestamp,
    ) -> Resolution<'_> {
        match self.index.get(key) {
            Some(flag) => flag.evaluate(ctx, timestamp),
            None => Resolution::flag_not_found(),
        }
    }

    /// Evaluates every flag, in key order.
    pub fn evaluate_all<'a>(
        &'a self,
        ctx: &'a EvaluationContext,
        timestamp: i64,
    ) -> impl Iterator<Item = (&'a str, Resolution<'a>)> + 'a {
        self.flags
            .iter()
            .map(move |flag| (flag.key(), flag.evaluate(ctx, Timestamp::At(timestamp))))
    }

    /// Evaluates a flag as type `T`, falling back to `default` per the resolution table.
    pub fn resolve<'a, T: FlagValue<'a>>(
        &'a self,
        key: &str,
        ctx: &EvaluationContext,
        default: T,
        timestamp: i64,
    ) -> ResolutionDetails<'a, T> {
        self.resolve_at(key, ctx, default, Timestamp::At(timestamp))
    }

    /// [`resolve`](Self::resolve) with a [`Timestamp`] that may be a clock.
    pub fn resolve_at<'a, T: FlagValue<'a>>(
        &'a self,
        key: &str,
        ctx: &EvaluationContext,
        default: T,
        timestamp: Timestamp,
    ) -> ResolutionDetails<'a, T> {
        typed(self.evaluate_at(key, ctx, timestamp), key, default)
    }

    /// The flag with this key, as a [`FlagRef`]: evaluating through it skips the key lookup.
    /// It stays valid (and unchanged) however this set changes later; a holder that wants the
    /// current definition looks it up again when the set is replaced.
    pub fn flag_ref(&self, key: &str) -> Option<FlagRef> {
        self.index.get(key).map(|flag| FlagRef(flag.clone()))
    }

    /// The one variant flag `key` serves to every context, if it can serve only one: an enabled
    /// flag without targeting (its default variant), or whose targeting can only yield that
    /// variant (constant branches, `fractional` buckets of weight 0 aside). `None` for a
    /// disabled flag (it serves the caller's default), a missing or broken one, one whose rules
    /// compute a variant, or one that can serve several. Used to find flags that are fully
    /// rolled out or off (`flagctl stale`).
    pub fn uniform_variant(&self, key: &str) -> Option<&str> {
        let flag = self.index.get(key)?;
        if flag.state != FlagState::Enabled
            || flag.broken.is_some()
            || flag.targeting_error.is_some()
        {
            return None;
        }
        let reachable = match &flag.targeting {
            None => std::collections::BTreeSet::from([flag.default_variant?]),
            Some(decision) => decision.reachable(flag.default_variant)?,
        };
        match reachable.into_iter().collect::<Vec<_>>().as_slice() {
            [only] => flag.variants.get(*only).map(|(name, _)| &**name),
            _ => None,
        }
    }
}

/// One compiled flag of a [`CompiledFlagSet`], evaluated without the key lookup (SDK flag
/// handles hold one per set version). Cheap to clone: a reference count.
#[derive(Debug, Clone)]
pub struct FlagRef(Arc<CompiledFlag>);

impl FlagRef {
    /// The flag's key.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// Whether both refer to the same compiled flag (not merely an equal one): names borrowed
    /// from one stay valid, and mean the same, while either is alive.
    pub fn same(&self, other: &FlagRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// [`CompiledFlagSet::evaluate_at`] for this flag.
    pub fn evaluate_at(&self, ctx: &EvaluationContext, timestamp: Timestamp) -> Resolution<'_> {
        self.0.evaluate(ctx, timestamp)
    }

    /// [`CompiledFlagSet::resolve_at`] for this flag.
    pub fn resolve_at<'a, T: FlagValue<'a>>(
        &'a self,
        ctx: &EvaluationContext,
        default: T,
        timestamp: Timestamp,
    ) -> ResolutionDetails<'a, T> {
        typed(self.0.evaluate(ctx, timestamp), self.0.key(), default)
    }
}

/// A resolution as type `T`, falling back to `default` per the resolution table.
fn typed<'a, T: FlagValue<'a>>(
    resolution: Resolution<'a>,
    key: &str,
    default: T,
) -> ResolutionDetails<'a, T> {
    {
        let Some(value) = resolution.value else {
            return ResolutionDetails {
                value: default,
                variant: None,
                reason: resolution.reason,
                error: resolution.error,
                metadata: resolution.metadata,
            };
        };
        match T::from_value(value) {
            Some(typed) => ResolutionDetails {
                value: typed,
                variant: resolution.variant,
                reason: resolution.reason,
                error: None,
                metadata: resolution.metadata,
            },
            None => ResolutionDetails {
                value: default,
                variant: None,
                reason: Reason::Error,
                error: Some(EvaluationError::new(
                    ErrorCode::TypeMismatch,
                    format!(
                        "flag {key:?} has value {value}, which is not of the requested type {}",
                        T::TYPE_NAME
                    ),
                )),
                metadata: resolution.metadata,
            },
        }
    }
}

impl CompiledFlagSet {
    /// [`resolve`](Self::resolve) for a boolean flag.
    pub fn resolve_bool(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        default: bool,
        timestamp: i64,
    ) -> ResolutionDetails<'_, bool> {
        self.resolve(key, ctx, default, timestamp)
    }

    /// [`resolve`](Self::resolve) for a string flag.
    pub fn resolve_string<'a>(
        &'a self,
        key: &str,
        ctx: &EvaluationContext,
        default: &'a str,
        timestamp: i64,
    ) -> ResolutionDetails<'a, &'a str> {
        self.resolve(key, ctx, default, timestamp)
    }

    /// [`resolve`](Self::resolve) for an integer flag (`1.0` reads as 1; `1.5` is a type mismatch).
    pub fn resolve_int(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        default: i64,
        timestamp: i64,
    ) -> ResolutionDetails<'_, i64> {
        self.resolve(key, ctx, default, timestamp)
    }

    /// [`resolve`](Self::resolve) for a number flag.
    pub fn resolve_float(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        default: f64,
        timestamp: i64,
    ) -> ResolutionDetails<'_, f64> {
        self.resolve(key, ctx, default, timestamp)
    }

    /// [`resolve`](Self::resolve) for an object flag.
    pub fn resolve_object<'a>(
        &'a self,
        key: &str,
        ctx: &EvaluationContext,
        default: &'a Value,
        timestamp: i64,
    ) -> ResolutionDetails<'a, &'a Value> {
        self.resolve(key, ctx, default, timestamp)
    }
}
