//! `FlagClient`: local evaluation against an atomically swapped compiled flag set.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use flag_core::{
    CompiledFlagSet, ErrorCode, EvaluationError, Metadata, Reason, Resolution, Timestamp,
};
use serde_json::Value;
use tokio::sync::watch;

use crate::cache;
use crate::context::EvaluationContext;
use crate::status::{Error, FlagsChanged, Status};
use crate::sync::{self, SyncSettings};

/// One version of the flags, compiled. Immutable: a change builds a new one and swaps it in.
#[derive(Debug)]
pub(crate) struct FlagState {
    /// The environment version (`None` for a bootstrap document).
    pub(crate) version: Option<i64>,
    /// The environment, as the server named it.
    pub(crate) environment: Option<String>,
    /// The flagd document (kept to apply patches and to write the cache).
    pub(crate) document: Value,
    pub(crate) compiled: CompiledFlagSet,
}

impl FlagState {
    pub(crate) fn new(
        version: Option<i64>,
        environment: Option<String>,
        document: Value,
    ) -> FlagState {
        let (compiled, problems) = CompiledFlagSet::compile_json_lenient(&document);
        for problem in problems {
            // A broken flag evaluates to PARSE_ERROR; every other flag keeps working.
            if problem.is_warning() {
                tracing::debug!(%problem, "flag has a warning; it evaluates as flagd would");
            } else {
                tracing::warn!(%problem, "flag failed to compile; it evaluates to PARSE_ERROR");
            }
        }
        FlagState {
            version,
            environment,
            document,
            compiled,
        }
    }
}

type ChangeListener = Arc<dyn Fn(&FlagsChanged) + Send + Sync>;
type StatusListener = Arc<dyn Fn(Status) + Send + Sync>;

/// Distinguishes clients in the per-thread snapshot cache.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last snapshot this thread evaluated against: (client id, generation, flags).
    ///
    /// Why not just `ArcSwap::load`: it costs about 10 ns per call here (a debt-list slot taken and
    /// released), as much as a whole static-flag evaluation. Checking a generation counter is one
    /// load. A thread that stops evaluating keeps one old snapshot alive until its next call.
    static SNAPSHOT: RefCell<Option<(u64, u64, Arc<FlagState>)>> = const { RefCell::new(None) };
}

/// What the client and its sync task share.
pub(crate) struct Shared {
    pub(crate) flags: ArcSwapOption<FlagState>,
    /// Bumped after every swap of `flags`.
    generation: AtomicU64,
    id: u64,
    status: AtomicU8,
    status_watch: watch::Sender<Status>,
    change_listeners: Mutex<Vec<ChangeListener>>,
    status_listeners: Mutex<Vec<StatusListener>>,
    pub(crate) cache_file: Option<PathBuf>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn status_code(status: Status) -> u8 {
    match status {
        Status::NotReady => 0,
        Status::Ready => 1,
        Status::Stale => 2,
        Status::Error => 3,
    }
}

fn status_from(code: u8) -> Status {
    match code {
        1 => Status::Ready,
        2 => Status::Stale,
        3 => Status::Error,
        _ => Status::NotReady,
    }
}

impl Shared {
    pub(crate) fn status(&self) -> Status {
        status_from(self.status.load(Ordering::Acquire))
    }

    /// Sets the status and tells the listeners if it changed. Never called with a lock held.
    pub(crate) fn set_status(&self, status: Status) {
        let previous = self.status.swap(status_code(status), Ordering::AcqRel);
        if previous == status_code(status) {
            return;
        }
        self.status_watch.send_replace(status);
        let listeners: Vec<StatusListener> = lock(&self.status_listeners).clone();
        for listener in listeners {
            listener(status);
        }
    }

    /// Swaps in new flags and tells the change listeners.
    pub(crate) fn publish(&self, state: FlagState, changed: Vec<String>) {
        let old_version = self.flags.load().as_ref().and_then(|s| s.version);
        let new_version = state.version.unwrap_or(0);
        self.flags.store(Some(Arc::new(state)));
        self.generation.fetch_add(1, Ordering::Release);
        if changed.is_empty() {
            return;
        }
        let event = FlagsChanged {
            keys: changed,
            old_version,
            new_version,
        };
        let listeners: Vec<ChangeListener> = lock(&self.change_listeners).clone();
        for listener in listeners {
            listener(&event);
        }
    }
}

/// Listener lists are only locked to copy them; a panicking listener runs after the lock is
/// released, so poisoning cannot happen there, and recovering is safe.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

static EMPTY_METADATA: std::sync::LazyLock<Metadata> = std::sync::LazyLock::new(Metadata::new);

/// The clock flag-core reads only when a rule uses `$flagd.timestamp`.
const CLOCK: Timestamp = Timestamp::Clock(now);

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
    sync: Option<Arc<sync::SyncHandle>>,
}

impl FlagClient {
    /// Starts building a client.
    pub fn builder() -> FlagClientBuilder {
        FlagClientBuilder::default()
    }

    /// The client's status.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// The environment version of the flags in use (`None` before any, or for a bootstrap).
    pub fn version(&self) -> Option<i64> {
        self.shared.flags.load().as_ref().and_then(|s| s.version)
    }

    /// Waits until flags are available (a snapshot, the cache file or a bootstrap document).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Status, Error> {
        let mut statuses = self.shared.status_watch.subscribe();
        let wait = async {
            loop {
                if self.shared.flags.load().is_some() {
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
        if self.shared.flags.load().is_some() {
            Ok(status)
        } else {
            Err(Error::Timeout(timeout))
        }
    }

    /// Calls `listener` after every change of flags, with the keys that changed. Listeners run on
    /// the sync task, never while the client holds a lock; keep them short.
    pub fn on_change(&self, listener: impl Fn(&FlagsChanged) + Send + Sync + 'static) {
        lock(&self.shared.change_listeners).push(Arc::new(listener));
    }

    /// Calls `listener` on every status change.
    pub fn on_status(&self, listener: impl Fn(Status) + Send + Sync + 'static) {
        lock(&self.shared.status_listeners).push(Arc::new(listener));
    }

    /// Evaluates a flag and hands the borrowed result to `inspect`: the zero-allocation form of
    /// every getter, for any type.
    pub fn evaluate<R>(
        &self,
        key: &str,
        context: &EvaluationContext,
        inspect: impl FnOnce(&Resolution<'_>) -> R,
    ) -> R {
        let guard = self.shared.flags.load();
        match guard.as_ref() {
            Some(state) => inspect(&state.compiled.evaluate_at(key, context.inner(), CLOCK)),
            None => inspect(&not_ready()),
        }
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
        let guard = self.shared.flags.load();
        match guard.as_ref() {
            Some(state) => state
                .compiled
                .resolve_at(key, context.inner(), default, CLOCK)
                .value
                .to_owned(),
            None => default.to_owned(),
        }
    }

    /// An object flag's value, or `default`.
    pub fn json_value(&self, key: &str, context: &EvaluationContext, default: Value) -> Value {
        let guard = self.shared.flags.load();
        match guard.as_ref() {
            Some(state) => {
                let details = state
                    .compiled
                    .resolve_at(key, context.inner(), &default, CLOCK);
                if details.error.is_some() {
                    default.clone()
                } else {
                    details.value.clone()
                }
            }
            None => default,
        }
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
        self.details(default.to_owned(), |state, now| {
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
        self.details(fallback, |state, now| {
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
                state
                    .compiled
                    .resolve_at(key, context.inner(), default, CLOCK)
                    .value
            }
            None => default,
        })
    }

    /// Runs `read` on the current flags, from this thread's cached snapshot when it is still
    /// current. Only for code that cannot call back into the client (the typed getters).
    fn with_flags<R>(&self, read: impl FnOnce(Option<&FlagState>) -> R) -> R {
        let generation = self.shared.generation.load(Ordering::Acquire);
        SNAPSHOT.with(|cache| {
            let Ok(mut cached) = cache.try_borrow_mut() else {
                return read(self.shared.flags.load().as_deref());
            };
            if let Some((id, seen, state)) = cached.as_ref()
                && *id == self.shared.id
                && *seen == generation
            {
                return read(Some(state));
            }
            // Loaded after reading the generation: at least as new as it, never older.
            let state = self.shared.flags.load_full();
            *cached = state
                .clone()
                .map(|state| (self.shared.id, generation, state));
            read(state.as_deref())
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
        self.details(default, |state, now| {
            state
                .compiled
                .resolve_at(key, context.inner(), default, now)
                .into_owned_with(|v| *v)
        })
    }

    fn details<T>(
        &self,
        default: T,
        resolve: impl FnOnce(&FlagState, Timestamp) -> EvaluationDetails<T>,
    ) -> EvaluationDetails<T> {
        let guard = self.shared.flags.load();
        match guard.as_ref() {
            Some(state) => resolve(state, CLOCK),
            None => EvaluationDetails {
                value: default,
                variant: None,
                reason: Reason::Error,
                error_code: Some(ErrorCode::ProviderNotReady),
                error_message: Some(
                    "no flags yet: the client has not synced and has no cache or bootstrap"
                        .to_owned(),
                ),
                flag_metadata: Metadata::new(),
            },
        }
    }

    /// Stops syncing: sends a Close frame, ends the background task. Evaluation keeps working on
    /// the last flags.
    pub async fn close(&self) {
        if let Some(sync) = &self.sync {
            sync.stop().await;
        }
    }
}

/// Converts flag-core's borrowed details into owned ones.
trait IntoOwnedDetails<'a, T> {
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

fn not_ready() -> Resolution<'static> {
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

/// Builds a [`FlagClient`].
#[derive(Debug, Clone, Default)]
pub struct FlagClientBuilder {
    server: Option<String>,
    token: Option<String>,
    environment: Option<String>,
    bootstrap: Option<Bootstrap>,
    cache_file: Option<PathBuf>,
    settings: SyncSettings,
}

#[derive(Debug, Clone)]
enum Bootstrap {
    File(PathBuf),
    Document(Value),
}

impl FlagClientBuilder {
    /// The flag server, e.g. `http://127.0.0.1:8016`. Without one the client runs offline from
    /// its bootstrap document or cache.
    #[must_use]
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.server = Some(url.into());
        self
    }

    /// The sdk token (or an admin token together with [`environment`](Self::environment)).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The environment, only needed with an admin token (an sdk token names its own).
    #[must_use]
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// A flagd document file used until the first sync, or for good when there is no server.
    #[must_use]
    pub fn bootstrap_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap = Some(Bootstrap::File(path.into()));
        self
    }

    /// An in-memory flagd document used until the first sync, or for good without a server.
    #[must_use]
    pub fn bootstrap_document(mut self, document: Value) -> Self {
        self.bootstrap = Some(Bootstrap::Document(document));
        self
    }

    /// A file where the last flags are kept (written atomically after each change) and read at
    /// start when the server cannot be reached.
    #[must_use]
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// How long connecting may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// With no message at all for this long, the stream is considered dead (default 45 s, three
    /// server ping intervals).
    #[must_use]
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.settings.ping_timeout = timeout;
        self
    }

    /// Reconnect backoff: exponential from `base` to `cap`, with full jitter (defaults 500 ms
    /// and 30 s).
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_cap = cap.max(base);
        self
    }

    /// Builds the client. Never waits on the network: syncing runs in a background task on the
    /// current tokio runtime (a server is given but no runtime is running: an error).
    pub fn build(self) -> Result<FlagClient, Error> {
        let (status_watch, _) = watch::channel(Status::NotReady);
        let shared = Arc::new(Shared {
            flags: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            status: AtomicU8::new(status_code(Status::NotReady)),
            status_watch,
            change_listeners: Mutex::default(),
            status_listeners: Mutex::default(),
            cache_file: self.cache_file.clone(),
        });

        // Last known good first: the cache, when it matches this server; else the bootstrap.
        let cached = self
            .cache_file
            .as_deref()
            .and_then(|path| cache::load(path, self.server.as_deref()));
        let bootstrap = match &self.bootstrap {
            None => None,
            Some(Bootstrap::Document(document)) => {
                Some(checked_bootstrap("<inline>", document.clone())?)
            }
            Some(Bootstrap::File(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| Error::Bootstrap {
                    path: path.display().to_string(),
                    message: error.to_string(),
                })?;
                let document: Value =
                    serde_json::from_str(&text).map_err(|error| Error::Bootstrap {
                        path: path.display().to_string(),
                        message: format!("not valid JSON: {error}"),
                    })?;
                Some(checked_bootstrap(&path.display().to_string(), document)?)
            }
        };
        let offline = self.server.is_none();
        if let Some(cached) = cached {
            let keys = cached.compiled.keys().map(str::to_owned).collect();
            shared.publish(cached, keys);
            shared.set_status(if offline {
                Status::Ready
            } else {
                Status::Stale
            });
        } else if let Some(document) = bootstrap {
            let state = FlagState::new(None, None, document);
            let keys = state.compiled.keys().map(str::to_owned).collect();
            shared.publish(state, keys);
            shared.set_status(if offline {
                Status::Ready
            } else {
                Status::Stale
            });
        }

        let sync = match self.server {
            None => None,
            Some(server) => {
                let token = self.token.ok_or_else(|| {
                    Error::Config("a server needs a token (`.token(...)`)".to_owned())
                })?;
                let url = sync::stream_url(&server, self.environment.as_deref())?;
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::Config(
                        "build() needs a running tokio runtime to sync in the background"
                            .to_owned(),
                    )
                })?;
                Some(Arc::new(sync::SyncHandle::start(
                    &runtime,
                    shared.clone(),
                    url,
                    token,
                    server,
                    self.settings,
                )))
            }
        };
        Ok(FlagClient { shared, sync })
    }
}

/// A bootstrap document must at least be a flagd document; broken flags are isolated.
fn checked_bootstrap(path: &str, document: Value) -> Result<Value, Error> {
    if !document
        .get("flags")
        .is_some_and(|f| f.is_object() || f.is_array())
    {
        return Err(Error::Bootstrap {
            path: path.to_owned(),
            message: "not a flagd document: no \"flags\"".to_owned(),
        });
    }
    Ok(document)
}
