//! `FlagHandle`: one flag of a client, looked up once per published snapshot instead of once per
//! evaluation.

use std::cell::RefCell;

use flag_core::{ErrorCode, FlagRef, Reason, Resolution};
use serde_json::Value;

use crate::client::{
    CLOCK, EvaluationDetails, FlagClient, IntoOwnedDetails, not_ready, not_ready_details,
};
use crate::context::EvaluationContext;
use crate::usage::HandleUsage;

/// One flag of a [`FlagClient`], from [`FlagClient::flag`]: the typed getters without the key
/// lookup.
///
/// The handle remembers the compiled flag of the snapshot it last saw and checks one counter per
/// call; when the client publishes new flags it looks the key up again, so it follows every
/// update, and a flag deleted and created again is found again. Evaluation takes no lock and,
/// for booleans and numbers, allocates nothing.
///
/// A handle is `Send` but not `Sync`: keep one per thread (clone it; clones are cheap and share
/// the client).
#[derive(Debug, Clone)]
pub struct FlagHandle {
    client: FlagClient,
    key: Box<str>,
    cache: RefCell<Resolved>,
    /// This handle's evaluation counts (`usage.rs`); a clone counts on its own.
    usage: RefCell<HandleUsage>,
}

/// What the handle found at a generation.
#[derive(Debug, Clone)]
struct Resolved {
    /// `None` until the first lookup.
    generation: Option<u64>,
    found: Found,
}

#[derive(Debug, Clone)]
enum Found {
    /// The client has no flags yet.
    NotReady,
    /// The flags have no flag with this key.
    Missing,
    Flag(FlagRef),
}

impl FlagHandle {
    pub(crate) fn new(client: FlagClient, key: &str) -> FlagHandle {
        FlagHandle {
            key: key.into(),
            cache: RefCell::new(Resolved {
                generation: None,
                found: Found::NotReady,
            }),
            usage: RefCell::new(HandleUsage::new(client.usage().clone())),
            client,
        }
    }

    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Runs `read` on the flag as of the client's current flags, looked up again only when the
    /// client has published new ones since this handle last looked.
    fn with_flag<R>(&self, read: impl FnOnce(&Found) -> R) -> R {
        let generation = self.client.generation();
        if let Ok(cached) = self.cache.try_borrow()
            && cached.generation == Some(generation)
        {
            return read(&cached.found);
        }
        // Loaded after reading the generation: at least as new as it.
        let found = match self.client.snapshot() {
            None => Found::NotReady,
            Some(snapshot) => snapshot
                .compiled
                .flag_ref(&self.key)
                .map_or(Found::Missing, Found::Flag),
        };
        // Not stored when a nested call (from an `evaluate` closure) holds the cache.
        if let Ok(mut cached) = self.cache.try_borrow_mut() {
            *cached = Resolved {
                generation: Some(generation),
                found: found.clone(),
            };
        }
        read(&found)
    }

    /// Counts an evaluation for the server's telemetry. `variant` borrows from `flag` when that
    /// is given.
    #[inline]
    fn count(&self, flag: Option<&FlagRef>, variant: Option<&str>, reason: Reason) {
        match self.usage.try_borrow_mut() {
            Ok(mut usage) => usage.record(flag, &self.key, variant, reason),
            // Counting from inside a count cannot happen; counted per thread if it does.
            Err(_) => self.client.count(None, &self.key, variant, reason),
        }
    }

    /// Evaluates the flag and hands the borrowed result to `inspect` (any type, no allocation).
    pub fn evaluate<R>(
        &self,
        context: &EvaluationContext,
        inspect: impl FnOnce(&Resolution<'_>) -> R,
    ) -> R {
        self.with_flag(|found| {
            let resolution = match found {
                Found::Flag(flag) => flag.evaluate_at(context.inner(), CLOCK),
                Found::Missing => Resolution::flag_not_found(),
                Found::NotReady => not_ready(),
            };
            let flag = match found {
                Found::Flag(flag) => Some(flag),
                Found::Missing | Found::NotReady => None,
            };
            self.count(flag, resolution.variant, resolution.reason);
            inspect(&resolution)
        })
    }

    /// A `Copy` type's value: no allocation.
    fn copied<T>(&self, context: &EvaluationContext, default: T) -> T
    where
        T: Copy + for<'a> flag_core::FlagValue<'a>,
    {
        self.with_flag(|found| match found {
            Found::Flag(flag) => {
                let details = flag.resolve_at(context.inner(), default, CLOCK);
                self.count(Some(flag), details.variant, details.reason);
                details.value
            }
            Found::Missing | Found::NotReady => {
                self.count(None, None, Reason::Error);
                default
            }
        })
    }

    /// The flag's boolean value, or `default`. No lock, no allocation.
    pub fn bool_value(&self, context: &EvaluationContext, default: bool) -> bool {
        self.copied(context, default)
    }

    /// The flag's integer value (`1.0` counts as 1), or `default`. No lock, no allocation.
    pub fn int_value(&self, context: &EvaluationContext, default: i64) -> i64 {
        self.copied(context, default)
    }

    /// The flag's number value, or `default`. No lock, no allocation.
    pub fn float_value(&self, context: &EvaluationContext, default: f64) -> f64 {
        self.copied(context, default)
    }

    /// The flag's string value, or `default` (allocates the returned `String`; use `evaluate`
    /// to borrow instead).
    pub fn string_value(&self, context: &EvaluationContext, default: &str) -> String {
        self.with_flag(|found| match found {
            Found::Flag(flag) => {
                let details = flag.resolve_at(context.inner(), default, CLOCK);
                self.count(Some(flag), details.variant, details.reason);
                details.value.to_owned()
            }
            Found::Missing | Found::NotReady => {
                self.count(None, None, Reason::Error);
                default.to_owned()
            }
        })
    }

    /// The flag's object value, or `default`.
    pub fn json_value(&self, context: &EvaluationContext, default: Value) -> Value {
        self.with_flag(|found| match found {
            Found::Flag(flag) => {
                let details = flag.resolve_at(context.inner(), &default, CLOCK);
                self.count(Some(flag), details.variant, details.reason);
                if details.error.is_some() {
                    default.clone()
                } else {
                    details.value.clone()
                }
            }
            Found::Missing | Found::NotReady => {
                self.count(None, None, Reason::Error);
                default
            }
        })
    }

    /// [`bool_value`](Self::bool_value) with variant, reason, error and metadata.
    pub fn bool_details(
        &self,
        context: &EvaluationContext,
        default: bool,
    ) -> EvaluationDetails<bool> {
        self.copied_details(context, default)
    }

    /// [`int_value`](Self::int_value) with variant, reason, error and metadata.
    pub fn int_details(&self, context: &EvaluationContext, default: i64) -> EvaluationDetails<i64> {
        self.copied_details(context, default)
    }

    /// [`float_value`](Self::float_value) with variant, reason, error and metadata.
    pub fn float_details(
        &self,
        context: &EvaluationContext,
        default: f64,
    ) -> EvaluationDetails<f64> {
        self.copied_details(context, default)
    }

    /// [`string_value`](Self::string_value) with variant, reason, error and metadata.
    pub fn string_details(
        &self,
        context: &EvaluationContext,
        default: &str,
    ) -> EvaluationDetails<String> {
        self.details(default.to_owned(), |flag| {
            flag.resolve_at(context.inner(), default, CLOCK)
                .into_owned_with(|v| (*v).to_owned())
        })
    }

    /// [`json_value`](Self::json_value) with variant, reason, error and metadata.
    pub fn json_details(
        &self,
        context: &EvaluationContext,
        default: Value,
    ) -> EvaluationDetails<Value> {
        let fallback = default.clone();
        self.details(fallback, |flag| {
            flag.resolve_at(context.inner(), &default, CLOCK)
                .into_owned_with(|v| (*v).clone())
        })
    }

    fn copied_details<T>(&self, context: &EvaluationContext, default: T) -> EvaluationDetails<T>
    where
        T: Copy + for<'a> flag_core::FlagValue<'a>,
    {
        self.details(default, |flag| {
            flag.resolve_at(context.inner(), default, CLOCK)
                .into_owned_with(|v| *v)
        })
    }

    fn details<T>(
        &self,
        default: T,
        resolve: impl FnOnce(&FlagRef) -> EvaluationDetails<T>,
    ) -> EvaluationDetails<T> {
        let details = self.with_flag(|found| match found {
            Found::Flag(flag) => resolve(flag),
            Found::NotReady => not_ready_details(default),
            Found::Missing => EvaluationDetails {
                value: default,
                variant: None,
                reason: Reason::Error,
                error_code: Some(ErrorCode::FlagNotFound),
                error_message: Some("flag not found".to_owned()),
                flag_metadata: flag_core::Metadata::new(),
            },
        });
        self.count(None, details.variant.as_deref(), details.reason);
        details
    }
}
