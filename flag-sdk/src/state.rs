//! The client's shared state, in one place: the current [`Snapshot`] (an `ArcSwap`), the status,
//! the listeners, and the one path that changes them ([`Shared::publish`],
//! [`Shared::set_status`]).
//!
//! Everything else depends on this module and not on each other: `client.rs` reads snapshots,
//! `sync.rs` publishes them, `cache.rs` loads and persists them (as the [`Persist`] hook), and
//! `builder.rs` wires them together.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use flag_core::CompiledFlagSet;
use flag_protocol::Document;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::status::{FlagsChanged, Status};

/// One version of the flags, compiled. Immutable: a change builds a new one and swaps it in.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The environment version (`None` for a bootstrap document).
    pub(crate) version: Option<i64>,
    /// The digest of the server's commit at `version` (resumed with, to detect another history).
    pub(crate) digest: Option<String>,
    /// The environment, as the server named it.
    pub(crate) environment: Option<String>,
    /// The flag set, flags as raw JSON (kept to apply patches and to write the cache).
    pub(crate) document: Document,
    pub(crate) compiled: CompiledFlagSet,
}

impl Snapshot {
    /// Compiles a whole document. Nothing is refused: a broken flag evaluates to PARSE_ERROR and
    /// every other flag keeps working.
    pub(crate) fn compile(
        version: Option<i64>,
        environment: Option<String>,
        document: Document,
    ) -> Snapshot {
        let json = serde_json::to_value(&document).unwrap_or(Value::Null);
        let (compiled, problems) = CompiledFlagSet::compile_json_lenient(&json);
        log_problems(problems);
        Snapshot {
            version,
            digest: None,
            environment,
            document,
            compiled,
        }
    }
}

/// Logs compile problems: a broken flag is isolated, never fatal.
pub(crate) fn log_problems(problems: Vec<flag_core::Problem>) {
    for problem in problems {
        if problem.is_warning() {
            tracing::debug!(%problem, "flag has a warning; it evaluates as flagd would");
        } else {
            tracing::warn!(%problem, "flag failed to compile; it evaluates to PARSE_ERROR");
        }
    }
}

/// Where published snapshots are kept across restarts (the cache file).
pub(crate) trait Persist: Send + Sync + std::fmt::Debug {
    /// Keeps `snapshot`; must not block (it is called from the sync task).
    fn persist(&self, snapshot: Arc<Snapshot>);
    /// Completes once everything persisted before is on disk (`None`: nothing to wait for).
    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>>;
}

type ChangeListener = Arc<dyn Fn(&FlagsChanged) + Send + Sync>;
type StatusListener = Arc<dyn Fn(Status) + Send + Sync>;

/// Distinguishes clients in the per-thread snapshot cache.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What the client and its background tasks share.
pub(crate) struct Shared {
    flags: ArcSwapOption<Snapshot>,
    /// Bumped after every swap of `flags`.
    generation: AtomicU64,
    id: u64,
    status: AtomicU8,
    status_watch: watch::Sender<Status>,
    change_listeners: Mutex<Vec<ChangeListener>>,
    status_listeners: Mutex<Vec<StatusListener>>,
    persist: Option<Box<dyn Persist>>,
    /// Why the last connection attempt failed, for people (`None` once synced).
    last_error: Mutex<Option<String>>,
    /// Evaluation counts on their way to the server.
    pub(crate) usage: Arc<crate::usage::UsageSink>,
    /// Wakes the sync task to report the counts now.
    pub(crate) usage_report: tokio::sync::Notify,
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
        Status::Fatal => 4,
    }
}

fn status_from(code: u8) -> Status {
    match code {
        1 => Status::Ready,
        2 => Status::Stale,
        3 => Status::Error,
        4 => Status::Fatal,
        _ => Status::NotReady,
    }
}

impl Shared {
    /// No flags yet, status `NotReady`.
    pub(crate) fn new(persist: Option<Box<dyn Persist>>) -> Shared {
        let (status_watch, _) = watch::channel(Status::NotReady);
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        Shared {
            flags: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            id,
            usage: Arc::new(crate::usage::UsageSink::new(id, true)),
            usage_report: tokio::sync::Notify::new(),
            status: AtomicU8::new(status_code(Status::NotReady)),
            status_watch,
            change_listeners: Mutex::default(),
            status_listeners: Mutex::default(),
            persist,
            last_error: Mutex::default(),
        }
    }

    /// Why the client is not in sync, when it knows.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Records (or, with `None`, clears) why the client is not in sync.
    pub(crate) fn set_last_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.flags.load_full()
    }

    /// The current snapshot, borrowed cheaply (for one evaluation).
    pub(crate) fn load(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.flags.load()
    }

    /// The resume token of the current snapshot: its version and that commit's digest.
    pub(crate) fn resume_token(&self) -> Option<(i64, Option<String>)> {
        let snapshot = self.flags.load();
        let snapshot = snapshot.as_ref()?;
        Some((snapshot.version?, snapshot.digest.clone()))
    }

    /// The version of the current snapshot.
    pub(crate) fn version(&self) -> Option<i64> {
        self.flags.load().as_ref().and_then(|s| s.version)
    }

    /// Which client this is, and how many snapshots it has published (for per-thread caches).
    pub(crate) fn generation(&self) -> (u64, u64) {
        (self.id, self.generation.load(Ordering::Acquire))
    }

    pub(crate) fn status(&self) -> Status {
        status_from(self.status.load(Ordering::Acquire))
    }

    /// A receiver that sees every status change (for `wait_ready`).
    pub(crate) fn watch_status(&self) -> watch::Receiver<Status> {
        self.status_watch.subscribe()
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
            guarded("status", || listener(status));
        }
    }

    /// Swaps in new flags and tells the change listeners.
    pub(crate) fn publish(&self, snapshot: Snapshot, changed: Vec<String>) {
        let old_version = self.version();
        let new_version = snapshot.version.unwrap_or(0);
        self.flags.store(Some(Arc::new(snapshot)));
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
            guarded("change", || listener(&event));
        }
    }

    /// Hands the current snapshot to the cache, if one is configured (flags from the server
    /// only: a bootstrap document is not a server's state).
    pub(crate) fn persist(&self) {
        if let (Some(persist), Some(snapshot)) = (&self.persist, self.snapshot()) {
            persist.persist(snapshot);
        }
    }

    /// Waits (at most `limit`) until every snapshot handed to the cache is on disk.
    pub(crate) async fn flush(&self, limit: Duration) {
        if let Some(flushed) = self.persist.as_ref().and_then(|p| p.flush()) {
            let _ = tokio::time::timeout(limit, flushed).await;
        }
    }

    pub(crate) fn on_change(&self, listener: impl Fn(&FlagsChanged) + Send + Sync + 'static) {
        lock(&self.change_listeners).push(Arc::new(listener));
    }

    pub(crate) fn on_status(&self, listener: impl Fn(Status) + Send + Sync + 'static) {
        lock(&self.status_listeners).push(Arc::new(listener));
    }
}

/// Runs an application's listener. A panic in it is logged and contained: it must not take the
/// sync task (and with it every future update) down.
fn guarded(kind: &str, listener: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(listener)).is_err() {
        tracing::error!(kind, "a flag listener panicked; the client carries on");
    }
}

/// Listener lists are only locked to copy them; a panicking listener runs after the lock is
/// released, so poisoning cannot happen there, and recovering is safe.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A background task the client owns: told to stop through a watch, awaited (bounded) on
/// `close()`, told to stop when the last client clone is dropped.
#[derive(Debug)]
pub(crate) struct Task {
    stop: watch::Sender<bool>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Task {
    /// Spawns `run` with a receiver that turns `true` when the task must stop.
    pub(crate) fn spawn<F>(
        runtime: &tokio::runtime::Handle,
        run: impl FnOnce(watch::Receiver<bool>) -> F,
    ) -> Task
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let handle = runtime.spawn(run(stopped));
        Task {
            stop,
            handle: Mutex::new(Some(handle)),
        }
    }

    /// Tells the task to stop and waits for it (at most 5 s).
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // The last client clone is gone: let the task end (it holds the shared state alive).
        let _ = self.stop.send(true);
    }
}
