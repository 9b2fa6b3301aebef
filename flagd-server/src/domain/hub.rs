//! The live side of the server: per-environment compiled snapshots (what OFREP evaluates and
//! what a new stream client receives first), a ring of recent patches, the broadcast that says
//! "environment E is now at version V", and the connected stream clients.
//!
//! `PublishingStore` wraps the real store so that every committed change is published here, in
//! commit order, before the write is acknowledged: no handler can forget to publish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use flag_core::{CompiledFlagSet, FLAGD_SCHEMA_URL, Flag, FlagSet};
use flag_protocol::stream as protocol;
use flag_protocol::{Change, Document, Patch, ServerMessage};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
// The one transport type the domain names, as a data container: an immutable, reference-counted
// buffer known to be UTF-8. Serialised messages are stored in it once and every stream session
// sends the same buffer, without a copy and without validating the UTF-8 again per session.
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::store::{
    Attribution, AuditQuery, ChangeRecord, Commit, Environment, EnvironmentSettings, FlagChange,
    FlagStore, Operation, RampQuery, RampRecord, SourceRecord, StoreError, StoredFlag, TokenRecord,
    commit_digest,
};

/// How many recent patches each environment keeps in memory for reconnecting clients.
pub const PATCH_RING: usize = 256;
/// How many bytes of patches each environment keeps at most: large patches push older ones out
/// sooner (a client that needs those resumes from the change log or gets a snapshot).
pub const PATCH_RING_BYTES: usize = 32 << 20;

/// A compiled, immutable view of one environment at one version.
///
/// Flags are shared (`Arc`) between consecutive snapshots, and `CompiledFlagSet::with_changes`
/// recompiles only the flags a commit touched: a write to a large environment costs what the
/// write changed, not the size of the environment.
#[derive(Debug)]
pub struct Snapshot {
    /// The environment.
    pub environment: String,
    /// The environment version it reflects.
    pub version: i64,
    /// The digest of the commit that produced `version` (`store::commit_digest`).
    pub digest: String,
    /// The flag set (settings and flags), changed only through [`Document::apply`].
    pub document: Document<Arc<Flag>>,
    /// The compiled flags (what OFREP evaluates).
    pub compiled: CompiledFlagSet,
    message: OnceLock<Utf8Bytes>,
}

fn report(environment: &str, problems: Vec<flag_core::Problem>) {
    // Stored flags were checked when written: warnings were accepted then (and returned to the
    // writer), and errors cannot be stored. Lenient compilation is used so a surprise can never
    // take the other flags down.
    for problem in problems {
        if problem.is_warning() {
            tracing::debug!(environment, %problem, "stored flag has a warning; it evaluates as flagd would");
        } else {
            tracing::error!(environment, %problem, "stored flag failed to compile; it evaluates to an error");
        }
    }
}

/// A stored change as the stream's [`Change`], its flag decoded; `None` for records that do not
/// change the document (environment creation and deletion, audit events) or do not decode
/// (logged: stored flags were valid when written).
fn decoded_change(record: &ChangeRecord) -> Option<Change<Arc<Flag>>> {
    let change = record.change()?;
    match change.try_map(|flag| serde_json::from_value::<Flag>(flag).map(Arc::new)) {
        Ok(change) => Some(change),
        Err(error) => {
            tracing::error!(key = record.flag, %error, "stored change does not decode");
            None
        }
    }
}

impl Snapshot {
    /// A snapshot compiled from scratch.
    fn new(
        environment: &str,
        version: i64,
        digest: String,
        mut document: Document<Arc<Flag>>,
    ) -> Snapshot {
        document.schema = Some(FLAGD_SCHEMA_URL.to_owned());
        // From the document's own flags: no copy of every flag (most of a cold start was
        // cloning and dropping them).
        let (compiled, problems) = CompiledFlagSet::compile_lenient_parts(
            &document.metadata,
            &document.evaluators,
            document
                .flags
                .iter()
                .map(|(key, flag)| (key.as_str(), flag.as_ref())),
        );
        report(environment, problems);
        Snapshot {
            environment: environment.to_owned(),
            version,
            digest,
            document,
            compiled,
            message: OnceLock::new(),
        }
    }

    /// The next snapshot after a commit's records.
    fn after(&self, commit: &Commit) -> Snapshot {
        let (version, records, digest) = (commit.version, &commit.changes, commit.digest.clone());
        let mut document = self.document.clone();
        let mut upserts: Vec<(String, Arc<Flag>)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let mut settings_changed = false;
        for change in records.iter().filter_map(decoded_change) {
            match &change {
                Change::Upsert { key, flag } => upserts.push((key.clone(), flag.clone())),
                Change::Delete { key } => deletes.push(key.clone()),
                Change::Settings { .. } => settings_changed = true,
            }
            document.apply(change);
        }
        if settings_changed {
            // Shared evaluators or metadata changed: every flag may compile differently.
            return Snapshot::new(&self.environment, version, digest, document);
        }
        let upsert_refs: Vec<(&str, &Flag)> = upserts
            .iter()
            .map(|(k, f)| (k.as_str(), f.as_ref()))
            .collect();
        let delete_refs: Vec<&str> = deletes.iter().map(String::as_str).collect();
        let (compiled, problems) = self.compiled.with_changes(&upsert_refs, &delete_refs);
        report(&self.environment, problems);
        Snapshot {
            environment: self.environment.clone(),
            version,
            digest,
            document,
            compiled,
            message: OnceLock::new(),
        }
    }

    /// The stream's `snapshot` message, serialised once and shared by every session.
    pub fn message(&self) -> Utf8Bytes {
        self.message
            .get_or_init(|| {
                let message = ServerMessage::Snapshot(protocol::Snapshot {
                    environment: Some(self.environment.clone()),
                    version: self.version,
                    digest: Some(self.digest.clone()),
                    document: self.document.by_ref(|flag| flag.as_ref()),
                });
                encode(&message)
            })
            .clone()
    }
}

/// A server message as text. Our messages are maps with string keys and finite numbers, which
/// always serialise; a failure would be a bug, logged, and sent as an empty message the client
/// treats as malformed (it resynchronises).
pub fn encode<F: Serialize>(message: &ServerMessage<F>) -> Utf8Bytes {
    match serde_json::to_string(message) {
        Ok(text) => text.into(),
        Err(error) => {
            tracing::error!(%error, "a stream message does not serialise");
            Utf8Bytes::default()
        }
    }
}

/// One committed change, ready to send.
#[derive(Debug, Clone)]
pub struct RecentPatch {
    /// The environment version it produces.
    pub version: i64,
    /// The digest of the commit.
    pub digest: String,
    /// The stream's `patch` message.
    pub message: Utf8Bytes,
    /// When it was committed (for the propagation histogram).
    pub committed_at: Instant,
}

/// What the broadcast carries.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// An environment moved to a new version.
    Version {
        /// The environment.
        environment: Arc<str>,
        /// Its new version.
        version: i64,
        /// The patch from the version before to `version`, encoded once for every session that
        /// is one version behind (`None` after a reset, when only a snapshot will do).
        patch: Option<Utf8Bytes>,
    },
    /// A token was revoked: its streams must end.
    TokenRevoked {
        /// The token id.
        id: String,
    },
    /// An environment was deleted: its streams must end.
    EnvironmentDeleted {
        /// The environment.
        environment: String,
    },
}

/// A connected stream client, as `GET .../clients` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    /// Server-assigned session id.
    pub session: u64,
    /// The environment it streams.
    pub environment: String,
    /// The token's name.
    pub token_name: String,
    /// From `hello`.
    pub client_id: Option<String>,
    /// From `hello`.
    pub sdk: Option<String>,
    /// From `hello`.
    pub sdk_version: Option<String>,
    /// Unix seconds.
    pub connected_at: i64,
    /// The last version the server sent.
    pub sent_version: i64,
    /// The last version the client acknowledged.
    pub acked_version: Option<i64>,
    /// Unix seconds.
    pub last_ack_at: Option<i64>,
}

/// The hub.
#[derive(Debug)]
pub struct Hub {
    snapshots: DashMap<String, Arc<Snapshot>>,
    /// Recent patches per environment: an immutable ring replaced on every publish, so the
    /// many sessions reading it never contend on a lock.
    patches: DashMap<String, Arc<VecDeque<RecentPatch>>>,
    events: broadcast::Sender<HubEvent>,
    clients: DashMap<u64, ClientInfo>,
    next_session: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub, counting its stream clients in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        // Sessions only need the latest version, so a lagging receiver loses nothing it cannot
        // recompute; the capacity just bounds memory.
        let (events, _) = broadcast::channel(1024);
        Hub {
            snapshots: DashMap::new(),
            patches: DashMap::new(),
            events,
            clients: DashMap::new(),
            next_session: AtomicU64::new(1),
            metrics,
        }
    }

    /// Loads an environment's state (at start, when an environment is created, and when a
    /// replica's catch-up needs a fresh start); `digest` is that of the commit at `version`.
    pub fn load(&self, environment: &str, version: i64, digest: String, document: FlagSet) {
        let document = Document {
            schema: document.schema,
            metadata: document.metadata,
            evaluators: document.evaluators,
            flags: document
                .flags
                .into_iter()
                .map(|(k, f)| (k, Arc::new(f)))
                .collect(),
        };
        self.snapshots.insert(
            environment.to_owned(),
            Arc::new(Snapshot::new(environment, version, digest, document)),
        );
        self.patches.insert(environment.to_owned(), Arc::default());
        let _ = self.events.send(HubEvent::Version {
            environment: environment.into(),
            version,
            patch: None,
        });
    }

    /// Publishes a commit: new snapshot, patch in the ring, broadcast.
    pub fn publish(&self, environment: &str, commit: &Commit) {
        let Some(previous) = self.snapshot(environment) else {
            tracing::error!(
                environment,
                "commit to an environment the hub does not know"
            );
            return;
        };
        let Some(message) = patch_message(commit.version, &commit.changes) else {
            return;
        };
        let snapshot = Arc::new(previous.after(commit));
        let patch = RecentPatch {
            version: commit.version,
            digest: snapshot.digest.clone(),
            message: message.clone(),
            committed_at: Instant::now(),
        };
        let mut ring = self
            .patches
            .get(environment)
            .map(|r| VecDeque::clone(&r))
            .unwrap_or_default();
        ring.push_back(patch);
        let mut bytes: usize = ring.iter().map(|p| p.message.len()).sum();
        while ring.len() > PATCH_RING || (bytes > PATCH_RING_BYTES && ring.len() > 1) {
            if let Some(old) = ring.pop_front() {
                bytes -= old.message.len();
            }
        }
        self.patches.insert(environment.to_owned(), Arc::new(ring));
        self.snapshots.insert(environment.to_owned(), snapshot);
        let _ = self.events.send(HubEvent::Version {
            environment: environment.into(),
            version: commit.version,
            patch: Some(message),
        });
    }

    /// Forgets a deleted environment and ends its streams.
    pub fn remove(&self, environment: &str) {
        self.snapshots.remove(environment);
        self.patches.remove(environment);
        let _ = self.events.send(HubEvent::EnvironmentDeleted {
            environment: environment.to_owned(),
        });
    }

    /// Ends the streams of a revoked token.
    pub fn revoke(&self, token_id: &str) {
        let _ = self.events.send(HubEvent::TokenRevoked {
            id: token_id.to_owned(),
        });
    }

    /// The environments it holds.
    pub fn environments(&self) -> Vec<String> {
        self.snapshots.iter().map(|s| s.key().clone()).collect()
    }

    /// The current snapshot of an environment.
    pub fn snapshot(&self, environment: &str) -> Option<Arc<Snapshot>> {
        self.snapshots.get(environment).map(|s| s.value().clone())
    }

    /// The patches after `after` up to and including `upto`, if the ring still has them all.
    pub fn patches_between(
        &self,
        environment: &str,
        after: i64,
        upto: i64,
    ) -> Option<Vec<RecentPatch>> {
        if upto <= after {
            return Some(Vec::new());
        }
        let ring = self.patches.get(environment)?.value().clone();
        // The ring holds consecutive versions, so the range is a slice found by arithmetic.
        let first = ring.front()?.version;
        // `after` comes from a client: checked arithmetic.
        let start = usize::try_from(after.checked_add(1)?.checked_sub(first)?).ok()?;
        let end = usize::try_from(upto.checked_sub(first)?).ok()?;
        let patches: Vec<RecentPatch> = ring
            .range(start..=end.min(ring.len().checked_sub(1)?))
            .cloned()
            .collect();
        let complete = patches.first().is_some_and(|p| p.version == after + 1)
            && patches.last().is_some_and(|p| p.version == upto)
            && patches.len() == usize::try_from(upto.checked_sub(after)?).ok()?;
        complete.then_some(patches)
    }

    /// The digest of the commit at `version`, if this hub still knows it (the current snapshot's,
    /// or a patch in the ring).
    pub fn digest(&self, environment: &str, version: i64) -> Option<String> {
        if let Some(snapshot) = self.snapshot(environment)
            && snapshot.version == version
        {
            return Some(snapshot.digest.clone());
        }
        let ring = self.patches.get(environment)?.value().clone();
        let index = usize::try_from(version.checked_sub(ring.front()?.version)?).ok()?;
        ring.get(index)
            .filter(|p| p.version == version)
            .map(|p| p.digest.clone())
    }

    /// When a version was committed, if it is still in the ring.
    pub fn committed_at(&self, environment: &str, version: i64) -> Option<Instant> {
        let ring = self.patches.get(environment)?.value().clone();
        let index = usize::try_from(version.checked_sub(ring.front()?.version)?).ok()?;
        ring.get(index)
            .filter(|p| p.version == version)
            .map(|p| p.committed_at)
    }

    /// A receiver of hub events. Subscribe *before* reading the snapshot, so nothing committed
    /// in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// Registers a stream client; returns its session id.
    pub fn register(&self, mut info: ClientInfo) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        info.session = session;
        self.metrics.connected_clients(&info.environment, 1);
        self.clients.insert(session, info);
        session
    }

    /// Updates a client's record.
    pub fn update_client(&self, session: u64, update: impl FnOnce(&mut ClientInfo)) {
        if let Some(mut info) = self.clients.get_mut(&session) {
            update(&mut info);
        }
    }

    /// Forgets a disconnected client.
    pub fn unregister(&self, session: u64) {
        if let Some((_, info)) = self.clients.remove(&session) {
            self.metrics.connected_clients(&info.environment, -1);
        }
    }

    /// The clients of an environment, by session.
    pub fn clients(&self, environment: &str) -> Vec<ClientInfo> {
        let mut clients: Vec<ClientInfo> = self
            .clients
            .iter()
            .filter(|c| c.environment == environment)
            .map(|c| c.value().clone())
            .collect();
        clients.sort_by_key(|c| c.session);
        clients
    }
}

/// The stream's `patch` message for one version's records; `None` when the records change the
/// environment itself (creation, deletion), which only a snapshot can express.
pub fn patch_message(version: i64, records: &[ChangeRecord]) -> Option<Utf8Bytes> {
    let changes = records
        .iter()
        .map(ChangeRecord::change)
        .collect::<Option<Vec<Change>>>()?;
    let mut patch = Patch::from_changes(version, changes);
    patch.digest = Some(commit_digest(records));
    Some(encode(&ServerMessage::Patch(patch)))
}

/// A store that publishes every committed change to the hub, in commit order.
pub struct PublishingStore {
    inner: Arc<dyn FlagStore>,
    hub: Arc<Hub>,
    /// Held across commit and publish, so the hub sees commits in version order.
    order: Mutex<()>,
}

impl std::fmt::Debug for PublishingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishingStore").finish_non_exhaustive()
    }
}

impl PublishingStore {
    /// Wraps `inner`, loading every environment into the hub first: on one thread per core,
    /// since compiling is most of a cold start (the reads serialise on the store; the compiles
    /// do not).
    pub fn new(inner: Arc<dyn FlagStore>, hub: Arc<Hub>) -> Result<PublishingStore, StoreError> {
        let environments = inner.environments()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(environments.len())
            .max(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let load = || -> Result<(), StoreError> {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(environment) = environments.get(index) else {
                    return Ok(());
                };
                let flags = match inner.flags(&environment.name) {
                    // Deleted (by another replica) while this one starts: nothing to load.
                    Err(StoreError::UnknownEnvironment(_)) => continue,
                    other => other?,
                };
                // Recorded with the commit when the store has it: re-reading and re-hashing a
                // large last commit was most of a cold start.
                let digest = match &environment.digest {
                    Some(digest) => digest.clone(),
                    None => version_digest(inner.as_ref(), &environment.name, environment.version)?,
                };
                let document = document_of(environment, flags);
                hub.load(&environment.name, environment.version, digest, document);
            }
        };
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|_| scope.spawn(load)).collect();
            let mut result = load();
            for worker in workers {
                let outcome = worker.join().unwrap_or_else(|_| {
                    Err(StoreError::Setup(
                        "a thread loading environments panicked".to_owned(),
                    ))
                });
                result = result.and(outcome);
            }
            result
        })?;
        Ok(PublishingStore {
            inner,
            hub,
            order: Mutex::new(()),
        })
    }

    /// Publishes a commit just made (the `order` lock held).
    fn published(&self, environment: &str, commit: &Commit) {
        let flag_writes = commit.changes.iter().filter(|c| c.flag.is_some()).count();
        self.hub.metrics.flag_writes(environment, flag_writes);
        let known = self.hub.snapshot(environment).map(|s| s.version);
        if known == Some(commit.version - 1) {
            self.hub.publish(environment, commit);
        } else if let Err(error) = self.catch_up_locked(environment) {
            // Another replica committed versions this one has not heard of yet: they (and
            // this commit) come from the log. A failure here is caught up by the next notice or
            // poll; the commit itself is durable.
            tracing::warn!(environment, %error, "cannot catch up after a commit; will retry");
        }
    }

    fn ordered(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the hub's view of `environment` up to the store's, from the change log, version
    /// by version in order (no gap, no duplicate): how a replica learns of commits made by the
    /// others. A version the log cannot express as a patch (an environment created or deleted,
    /// a gap) reloads the environment from the store instead. Returns how many versions were
    /// published.
    pub fn catch_up(&self, environment: &str) -> Result<usize, StoreError> {
        let _order = self.ordered();
        self.catch_up_locked(environment)
    }

    fn catch_up_locked(&self, environment: &str) -> Result<usize, StoreError> {
        const BATCH: usize = 1024;
        let mut published = 0;
        loop {
            let Some(known) = self.hub.snapshot(environment).map(|s| s.version) else {
                return self.reload(environment).map(|()| published + 1);
            };
            let mut records = self.inner.changes_since(environment, known, BATCH)?;
            let full = records.len() == BATCH;
            if full {
                // The last version may be cut short by the limit: leave it to the next batch.
                let last = records.last().map(|r| r.version);
                let kept = records.iter().filter(|r| Some(r.version) != last).count();
                if kept == 0 {
                    // One version larger than a batch: only a reload shows it whole.
                    return self.reload(environment).map(|()| published + 1);
                }
                records.truncate(kept);
            }
            let mut expected = known + 1;
            let mut rest = records.as_slice();
            while let Some(first) = rest.first() {
                let count = rest
                    .iter()
                    .take_while(|r| r.version == first.version)
                    .count();
                let (group, tail) = rest.split_at(count);
                let patchable =
                    first.version == expected && group.iter().all(|r| r.change().is_some());
                if !patchable {
                    return self.reload(environment).map(|()| published + 1);
                }
                self.hub
                    .publish(environment, &Commit::new(expected, group.to_vec()));
                published += 1;
                expected += 1;
                rest = tail;
            }
            if !full {
                return Ok(published);
            }
        }
    }

    /// Replaces the hub's view of `environment` with the store's (or forgets it, if deleted).
    fn reload(&self, environment: &str) -> Result<(), StoreError> {
        match self.inner.environment(environment)? {
            None => {
                if self.hub.snapshot(environment).is_some() {
                    self.hub.remove(environment);
                }
            }
            Some(stored) => {
                let flags = match self.inner.flags(environment) {
                    Err(StoreError::UnknownEnvironment(_)) => {
                        self.hub.remove(environment);
                        return Ok(());
                    }
                    other => other?,
                };
                let digest = version_digest(self.inner.as_ref(), environment, stored.version)?;
                self.hub.load(
                    environment,
                    stored.version,
                    digest,
                    document_of(&stored, flags),
                );
            }
        }
        Ok(())
    }
}

/// The digest of an environment's commit at `version`, from the change log.
pub fn version_digest(
    store: &dyn FlagStore,
    environment: &str,
    version: i64,
) -> Result<String, StoreError> {
    if version <= 0 {
        return Ok(commit_digest(&[]));
    }
    let mut records = store.changes_since(environment, version - 1, usize::MAX)?;
    records.retain(|r| r.version == version);
    Ok(commit_digest(&records))
}

/// An environment's flagd document.
pub fn document_of(environment: &Environment, flags: Vec<StoredFlag>) -> FlagSet {
    FlagSet {
        schema: Some(FLAGD_SCHEMA_URL.to_owned()),
        metadata: environment.metadata.clone(),
        evaluators: environment.evaluators.clone(),
        flags: flags.into_iter().map(|f| (f.key, f.flag)).collect(),
    }
}

impl FlagStore for PublishingStore {
    fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        self.inner.environments()
    }

    fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        self.inner.environment(name)
    }

    fn create_environment(&self, name: &str, by: &Attribution) -> Result<Environment, StoreError> {
        let _order = self.ordered();
        let environment = self.inner.create_environment(name, by)?;
        let digest = version_digest(self.inner.as_ref(), name, environment.version)?;
        self.hub.load(
            name,
            environment.version,
            digest,
            document_of(&environment, Vec::new()),
        );
        Ok(environment)
    }

    fn delete_environment(
        &self,
        name: &str,
        force: bool,
        by: &Attribution,
    ) -> Result<(), StoreError> {
        let _order = self.ordered();
        self.inner.delete_environment(name, force, by)?;
        self.hub.remove(name);
        Ok(())
    }

    fn flags(&self, environment: &str) -> Result<Vec<StoredFlag>, StoreError> {
        self.inner.flags(environment)
    }

    fn flag(&self, environment: &str, key: &str) -> Result<Option<StoredFlag>, StoreError> {
        self.inner.flag(environment, key)
    }

    fn commit(
        &self,
        environment: &str,
        changes: &[FlagChange],
        settings: Option<&EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<Commit, StoreError> {
        let _order = self.ordered();
        let commit = self.inner.commit(environment, changes, settings, by)?;
        self.published(environment, &commit);
        Ok(commit)
    }

    fn commit_fenced(
        &self,
        environment: &str,
        changes: &[FlagChange],
        by: &Attribution,
        ramp: &RampRecord,
    ) -> Result<Commit, StoreError> {
        let _order = self.ordered();
        let commit = self.inner.commit_fenced(environment, changes, by, ramp)?;
        self.published(environment, &commit);
        Ok(commit)
    }

    fn changes(&self, query: &AuditQuery) -> Result<Vec<ChangeRecord>, StoreError> {
        self.inner.changes(query)
    }

    fn changes_since(
        &self,
        environment: &str,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        self.inner.changes_since(environment, after_version, limit)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.tokens()
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.inner.insert_token(token)
    }

    fn insert_first_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        self.inner.insert_first_token(token)
    }

    fn revoke_token(&self, id: &str, at: i64) -> Result<TokenRecord, StoreError> {
        let token = self.inner.revoke_token(id, at)?;
        self.hub.revoke(id);
        Ok(token)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }

    fn save_ramp(&self, ramp: &RampRecord) -> Result<i64, StoreError> {
        self.inner.save_ramp(ramp)
    }

    fn ramps(&self, query: &RampQuery) -> Result<Vec<RampRecord>, StoreError> {
        self.inner.ramps(query)
    }

    fn record_event(
        &self,
        environment: &str,
        flag: Option<&str>,
        operation: Operation,
        details: &Value,
        by: &Attribution,
    ) -> Result<ChangeRecord, StoreError> {
        // Not published: an event changes no flag.
        self.inner
            .record_event(environment, flag, operation, details, by)
    }

    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        self.inner.sources()
    }

    fn source(&self, environment: &str) -> Result<Option<SourceRecord>, StoreError> {
        self.inner.source(environment)
    }

    fn bind_source(
        &self,
        environment: &str,
        spec: &Value,
        status: &Value,
    ) -> Result<i64, StoreError> {
        self.inner.bind_source(environment, spec, status)
    }

    fn source_baseline(&self, environment: &str) -> Result<Option<Value>, StoreError> {
        self.inner.source_baseline(environment)
    }

    fn unbind_source(&self, environment: &str) -> Result<bool, StoreError> {
        self.inner.unbind_source(environment)
    }

    fn add_usage(&self, rows: &[crate::store::UsageRecord]) -> Result<(), StoreError> {
        self.inner.add_usage(rows)
    }

    fn usage(
        &self,
        environment: &str,
        flag: &str,
        since: i64,
    ) -> Result<Vec<crate::store::UsageRecord>, StoreError> {
        self.inner.usage(environment, flag, since)
    }

    fn usage_summary(
        &self,
        environment: &str,
        recent: i64,
    ) -> Result<Vec<crate::store::UsageSummary>, StoreError> {
        self.inner.usage_summary(environment, recent)
    }

    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_usage(before)
    }

    fn save_source_status(
        &self,
        environment: &str,
        generation: i64,
        status: &Value,
        baseline: Option<&Value>,
    ) -> Result<bool, StoreError> {
        self.inner
            .save_source_status(environment, generation, status, baseline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn commit(version: i64, description_bytes: usize) -> Commit {
        let flag = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "description": "d".repeat(description_bytes)});
        Commit::new(
            version,
            vec![ChangeRecord {
                id: version,
                environment: "e".into(),
                version,
                flag: Some("f".into()),
                operation: Operation::Update,
                before: Value::Null,
                after: flag,
                actor: "t".into(),
                at: 0,
                message: None,
            }],
        )
    }

    #[test]
    fn the_patch_ring_keeps_a_bounded_number_of_bytes() {
        let hub = Hub::new(Arc::default());
        hub.load("e", 0, String::new(), FlagSet::default());
        // 40 patches of 1 MiB: far fewer than PATCH_RING, far more than PATCH_RING_BYTES.
        for version in 1..=40 {
            hub.publish("e", &commit(version, 1 << 20));
        }
        let ring = hub.patches.get("e").unwrap().value().clone();
        let bytes: usize = ring.iter().map(|p| p.message.len()).sum();
        assert!(bytes <= PATCH_RING_BYTES, "{bytes} bytes kept");
        assert_eq!(
            ring.back().map(|p| p.version),
            Some(40),
            "the newest is kept"
        );
        assert!(ring.len() < 40);
        // A client behind the ring's start is told it is gone (it resumes from the log).
        assert!(hub.patches_between("e", 0, 40).is_none());
        assert!(hub.patches_between("e", 39, 40).is_some());
        // Small patches still fill the count bound.
        let small = Hub::new(Arc::default());
        small.load("e", 0, String::new(), FlagSet::default());
        for version in 1..=300 {
            small.publish("e", &commit(version, 10));
        }
        assert_eq!(small.patches.get("e").unwrap().len(), PATCH_RING);
    }
}
