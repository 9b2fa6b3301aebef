//! `FlagClient`: local evaluation against the shared, atomically swapped compiled snapshot.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use flag_core::{ErrorCode, EvaluationError, Metadata, Reason, Resolution, Timestamp};
use serde_json::Value;

use crate::context::EvaluationContext;
use crate::handle::FlagHandle;
use crate::state::{Shared, Snapshot, Task};
use crate::status::{Error, FlagsChanged, Status};

thread_local! {
    /// The last snapshot this thread evaluated against: (client id, generation, flags).
    ///
    /// Why not just `ArcSwap::load`: it costs about 10 ns per call here (a debt-list slot taken and
    /// released), as much as a whole static-flag evaluation. Checking a generation counter is one
    /// load. A thread that stops evaluating keeps one old snapshot alive until its next call.
    static SNAPSHOT: RefCell<Option<(u64, u64, Arc<Snapshot>)>> = const { RefCell::new(None) };
}

static EMPTY_METADATA: std::sync::LazyLock<Metadata> = std::sync::LazyLock::new(Metadata::new);

/// The clock flag-core reads only when a rule uses `$flagd.timestamp`.
pub(crate) const CLOCK: Timestamp = Timestamp::Clock(now);

/// The current time in unix seconds, for `$flagd.timestamp`.
///
/// Every evaluation needs it, and only to the second, so on Linux it is read from the coarse
/// realtime clock (a few nanoseconds, updated every tick) rather than `SystemTime::now()`, which
/// measured about 25 ns here: more than a whole static-flag evaluation.
#[cfg(target_os = "linux")]
fn now() -> i64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on every Linux
    // this crate supports, and on failure `time` stays zeroed and we fall back below.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut time) };
    if result == 0 {
        time.tv_sec
    } else {
        system_now()
    }
}

#[cfg(not(target_os = "linux"))]
fn now() -> i64 {
    system_now()
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A typed evaluation result, owned (it allocates for the variant name and metadata; the plain
/// `*_value` getters do not).
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationDetails<T> {
    /// The value, or the caller's default.
    pub value: T,
    /// The variant served, if any.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// The error code, when `reason` is `Error`.
    pub error_code: Option<ErrorCode>,
    /// What went wrong.
    pub error_message: Option<String>,
    /// Flag metadata (merged over the flag-set metadata).
    pub flag_metadata: Metadata,
}

/// The Rust client: evaluates flags locally, kept current by the server's update stream.
///
/// Cheap to clone (all clones share one set of flags and one sync task). Evaluation takes no
/// lock and, for booleans and numbers, allocates nothing.
#[derive(Debug, Clone)]
pub struct FlagClient {
    shared: Arc<Shared>,
    sync: Option<Arc<Task>>,
}

impl FlagClient {
    /// A client over `shared`, owning its sync task, if any (for the builder).
    pub(crate) fn new(shared: Arc<Shared>, sync: Option<Task>) -> FlagClient {
        FlagClient {
            shared,
            sync: sync.map(Arc::new),
        }
    }

    /// The client's status.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Why the client is not in sync (status `Error`, `Stale` or `NotReady`), when it knows: a
    /// refused token, a certificate problem with its fix, an unreachable server. `None` once
    /// synced.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }

    /// The environment version of the flags in use (`None` before any, or for a bootstrap).
    pub fn version(&self) -> Option<i64> {
        self.with_flags(|flags| flags.and_then(|state| state.version))
    }

    /// Waits until flags are available (a snapshot, the cache file or a bootstrap document).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Status, Error> {
        let mut statuses = self.shared.watch_status();
        let wait = async {
            loop {
                // With flags, or never to get any (the server ended this client for good).
                if self.shared.load().is_some() || self.status() == Status::Fatal {
                    return self.status();
                }
                if statuses.changed().await.is_err() {
                    return self.status();
                }
            }
        };
        let status = tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout(timeout))?;
        if self.shared.load().is_some() {
            Ok(status)
        } else {
            Err(Error::Timeout(timeout))
        }
    }

    /// Calls `listener` after every change of flags, with the keys that changed. Listeners run on
    /// the sync task, never while the client holds a lock; keep them short.
    pub fn on_change(&self, listener: impl Fn(&FlagsChanged) + Send + Sync + 'static) {
        self.shared.on_change(listener);
    }

    /// Calls `listener` on every status change.
    pub fn on_status(&self, listener: impl Fn(Status) + Send + Sync + 'static) {
        self.shared.on_status(listener);
    }

    /// Evaluates a flag and hands the borrowed result to `inspect`: the zero-allocation form of
    /// every getter, for any type.
    pub fn evaluate<R>(
        &self,
        key: &str,
        context: &EvaluationContext,
        inspect: impl FnOnce(&Resolution<'_>) -> R,
    ) -> R {
        self.with_flags(|flags| {
            let resolution = match flags {
                Some(state) => state.compiled.evaluate_at(key, context.inner(), CLOCK),
                None => not_ready(),
            };
            self.count(flags, key, resolution.variant, resolution.reason);
            inspect(&resolution)
        })
    }

    /// Counts an evaluation for the server's telemetry (`usage.rs`). `variant` borrows from
    /// `snapshot` when that is given.
    #[inline]
    pub(crate) fn count(
        &self,
        snapshot: Option<&Arc<Snapshot>>,
        key: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        self.shared.usage.record(snapshot, key, variant, reason);
    }

    /// The client's counts, for handles.
    pub(crate) fn usage(&self) -> &Arc<crate::usage::UsageSink> {
        &self.shared.usage
    }

    /// Reports the evaluations counted so far now (this thread's included), rather than at the
    /// next report interval. `close()` does it too.
    pub fn report_usage(&self) {
        self.shared.usage_report.notify_one();
    }

    /// A boolean flag's value, or `default`. No lock, no allocation.
    pub fn bool_value(&self, key: &str, context: &EvaluationContext, default: bool) -> bool {
        self.copied(key, context, default)
    }

    /// An integer flag's value (`1.0` counts as 1), or `default`. No lock, no allocation.
    pub fn int_value(&self, key: &str, context: &EvaluationContext, default: i64) -> i64 {
        self.copied(key, context, default)
    }

    /// A number flag's value, or `default`. No lock, no allocation.
    pub fn float_value(&self, key: &str, context: &EvaluationContext, default: f64) -> f64 {
        self.copied(key, context, default)
    }

    /// A string flag's value, or `default` (allocates the returned `String`; use `evaluate` to
    /// borrow instead).
    pub fn string_value(&self, key: &str, context: &EvaluationContext, default: &str) -> String {
        self.with_flags(|flags| match flags {
            Some(state) => {
                let details = state
                    .compiled
                    .resolve_at(key, context.inner(), default, CLOCK);
                self.count(Some(state), key, details.variant, details.reason);
                details.value.to_owned()
            }
            None => {
                self.count(None, key, None, Reason::Error);
                default.to_owned()
            }
        })
    }

    /// An object flag's value, or `default`.
    pub fn json_value(&self, key: &str, context: &EvaluationContext, default: Value) -> Value {
        self.with_flags(|flags| match flags {
            Some(state) => {
                let details = state
                    .compiled
                    .resolve_at(key, context.inner(), &default, CLOCK);
                self.count(Some(state), key, details.variant, details.reason);
                if details.error.is_some() {
                    default.clone()
                } else {
                    details.value.clone()
                }
            }
            None => {
                self.count(None, key, None, Reason::Error);
                default
            }
        })
    }

    /// [`bool_value`](Self::bool_value) with variant, reason, error and metadata.
    pub fn bool_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: bool,
    ) -> EvaluationDetails<bool> {
        self.copied_details(key, context, default)
    }

    /// [`int_value`](Self::int_value) with variant, reason, error and metadata.
    pub fn int_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: i64,
    ) -> EvaluationDetails<i64> {
        self.copied_details(key, context, default)
    }

    /// [`float_value`](Self::float_value) with variant, reason, error and metadata.
    pub fn float_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: f64,
    ) -> EvaluationDetails<f64> {
        self.copied_details(key, context, default)
    }

    /// [`string_value`](Self::string_value) with variant, reason, error and metadata.
    pub fn string_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: &str,
    ) -> EvaluationDetails<String> {
        self.details(key, default.to_owned(), |state, now| {
            state
                .compiled
                .resolve_at(key, context.inner(), default, now)
                .into_owned_with(|v| (*v).to_owned())
        })
    }

    /// [`json_value`](Self::json_value) with variant, reason, error and metadata.
    pub fn json_details(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: Value,
    ) -> EvaluationDetails<Value> {
        let fallback = default.clone();
        self.details(key, fallback, |state, now| {
            state
                .compiled
                .resolve_at(key, context.inner(), &default, now)
                .into_owned_with(|v| (*v).clone())
        })
    }

    /// A `Copy` type's value: no allocation.
    fn copied<T>(&self, key: &str, context: &EvaluationContext, default: T) -> T
    where
        T: Copy + for<'a> flag_core::FlagValue<'a>,
    {
        self.with_flags(|flags| match flags {
            Some(state) => {
                let details = state
                    .compiled
                    .resolve_at(key, context.inner(), default, CLOCK);
                self.count(Some(state), key, details.variant, details.reason);
                details.value
            }
            None => {
                self.count(None, key, None, Reason::Error);
                default
            }
        })
    }

    /// Runs `read` on the current flags, from this thread's cached snapshot when it is still
    /// current. Every read goes through here (getters, `evaluate`, `version`), so the versions
    /// one thread sees never go backwards, whichever methods it mixes.
    ///
    /// The cache is held with a shared borrow while `read` runs, so `read` may call back into
    /// the client (an `evaluate` closure may): the nested call reuses the cached snapshot or, if
    /// a newer one was published meanwhile, loads it directly.
    fn with_flags<R>(&self, read: impl FnOnce(Option<&Arc<Snapshot>>) -> R) -> R {
        let (client, generation) = self.shared.generation();
        // While this thread's locals are being destroyed (a read from a thread-local's
        // destructor) the cache is gone: read directly. On one thread this cannot change between
        // the check and the use below.
        if SNAPSHOT.try_with(|_| ()).is_err() {
            return read(self.shared.snapshot().as_ref());
        }
        SNAPSHOT.with(|cache| {
            if let Ok(cached) = cache.try_borrow()
                && let Some((id, seen, state)) = cached.as_ref()
                && *id == client
                && *seen == generation
            {
                return read(Some(state));
            }
            // Loaded after reading the generation: at least as new as it, never older.
            let state = self.shared.snapshot();
            if let Ok(mut cached) = cache.try_borrow_mut() {
                *cached = state.clone().map(|state| (client, generation, state));
            }
            read(state.as_ref())
        })
    }

    /// A `Copy` type's details.
    fn copied_details<T>(
        &self,
        key: &str,
        context: &EvaluationContext,
        default: T,
    ) -> EvaluationDetails<T>
    where
        T: Copy + for<'a> flag_core::FlagValue<'a>,
    {
        self.details(key, default, |state, now| {
            state
                .compiled
                .resolve_at(key, context.inner(), default, now)
                .into_owned_with(|v| *v)
        })
    }

    fn details<T>(
        &self,
        key: &str,
        default: T,
        resolve: impl FnOnce(&Arc<Snapshot>, Timestamp) -> EvaluationDetails<T>,
    ) -> EvaluationDetails<T> {
        let details = self.with_flags(|flags| match flags {
            Some(state) => resolve(state, CLOCK),
            None => not_ready_details(default),
        });
        self.count(None, key, details.variant.as_deref(), details.reason);
        details
    }

    /// A handle on one flag: the typed getters without the key lookup per call (see
    /// [`FlagHandle`]). The flag need not exist yet.
    pub fn flag(&self, key: &str) -> FlagHandle {
        FlagHandle::new(self.clone(), key)
    }

    /// The generation of the client's flags (bumped by every publish), for handles.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation().1
    }

    /// The client's current flags, for handles.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.snapshot()
    }

    /// Stops syncing: sends a Close frame, ends the background task. Evaluation keeps working on
    /// the last flags.
    pub async fn close(&self) {
        if let Some(sync) = &self.sync {
            sync.stop().await;
        }
        // The newest flags reach the cache file before `close` returns (dropping the client
        // without `close` may leave the last few versions unwritten).
        self.shared.flush(Duration::from_secs(5)).await;
    }
}

/// Converts flag-core's borrowed details into owned ones.
pub(crate) trait IntoOwnedDetails<'a, T> {
    fn into_owned_with<U>(self, convert: impl FnOnce(&T) -> U) -> EvaluationDetails<U>;
}

impl<'a, T> IntoOwnedDetails<'a, T> for flag_core::ResolutionDetails<'a, T> {
    fn into_owned_with<U>(self, convert: impl FnOnce(&T) -> U) -> EvaluationDetails<U> {
        EvaluationDetails {
            value: convert(&self.value),
            variant: self.variant.map(str::to_owned),
            reason: self.reason,
            error_code: self.error.as_ref().map(|e| e.code),
            error_message: self.error.map(|e| e.message.into_owned()),
            flag_metadata: self.metadata.clone(),
        }
    }
}

/// The details when the client has no flags yet.
pub(crate) fn not_ready_details<T>(default: T) -> EvaluationDetails<T> {
    EvaluationDetails {
        value: default,
        variant: None,
        reason: Reason::Error,
        error_code: Some(ErrorCode::ProviderNotReady),
        error_message: Some(
            "no flags yet: the client has not synced and has no cache or bootstrap".to_owned(),
        ),
        flag_metadata: Metadata::new(),
    }
}

pub(crate) fn not_ready() -> Resolution<'static> {
    Resolution {
        value: None,
        variant: None,
        reason: Reason::Error,
        error: Some(EvaluationError {
            code: ErrorCode::ProviderNotReady,
            message: "no flags yet: the client has not synced and has no cache or bootstrap".into(),
        }),
        metadata: &EMPTY_METADATA,
        flag_type: None,
    }
}
