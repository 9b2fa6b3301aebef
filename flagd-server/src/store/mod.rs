//! Storage: the `FlagStore` trait and its records.
//!
//! Writes go through the domain (`domain::flags`, `domain::ramp`), which validates with flag-core
//! and then asks the store to commit. The trait is synchronous (SQLite is, and the PostgreSQL
//! store uses the synchronous `postgres` client); `domain::blocking` runs it on tokio's blocking
//! pool. Both stores pass the same suite (`store/suite.rs`).

mod postgres;
mod sqlite;
#[cfg(test)]
mod suite;

use std::collections::BTreeMap;

use flag_core::{Flag, Metadata};
use flag_protocol::Change;
use serde::Serialize;
use serde_json::Value;

pub use postgres::{Heartbeat, Import, Leadership, Notice, PostgresStore, redacted_url};
pub use sqlite::SqliteStore;

/// The environment every fresh store starts with.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The environment does not exist.
    #[error("environment {0:?} does not exist")]
    UnknownEnvironment(String),
    /// The environment already exists.
    #[error("environment {0:?} already exists")]
    EnvironmentExists(String),
    /// The flag does not exist.
    #[error("flag {key:?} does not exist in environment {environment:?}")]
    UnknownFlag {
        /// The environment.
        environment: String,
        /// The flag key.
        key: String,
    },
    /// An `If-Match` version did not match the stored one.
    #[error("flag {key:?} is at version {actual}, not {expected}: it changed since you read it")]
    VersionConflict {
        /// The flag key.
        key: String,
        /// The version the writer expected.
        expected: i64,
        /// The stored version (0 when the flag does not exist).
        actual: i64,
    },
    /// The token does not exist.
    #[error("token {0:?} does not exist")]
    UnknownToken(String),
    /// The environment still has flags and the deletion was not forced.
    #[error(
        "environment {name:?} still has {flags} flag(s); export it first if you need them, then delete with ?force=true"
    )]
    EnvironmentNotEmpty {
        /// The environment.
        name: String,
        /// How many flags it has.
        flags: i64,
    },
    /// Revoking it would leave no active admin token.
    #[error(
        "refusing to revoke the last admin token for every environment: nobody could administer the server afterwards; create another admin token first (or recover with `flagd-server admin-token`)"
    )]
    LastAdmin,
    /// The ramp was saved by someone else since it was read (another replica's scheduler, an
    /// API call): re-read it.
    #[error("ramp {id} changed since it was read (revision {expected} is no longer current)")]
    RampConflict {
        /// The ramp.
        id: i64,
        /// The revision the writer read.
        expected: i64,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL failed (the server's own message included, when it sent one).
    #[error("PostgreSQL error: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The PostgreSQL database cannot be used as it is (a schema that does not exist, a schema
    /// written by a newer server).
    #[error("{0}")]
    Setup(String),
    /// A migration's target already holds data.
    #[error("the target store is not empty ({0}); migrate into a new database or schema")]
    TargetNotEmpty(String),
    /// No PostgreSQL connection could be had in time.
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(String),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// Stored JSON did not decode (a corrupted or hand-edited database).
    #[error("stored data for {what} is corrupt: {source}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// An environment (one flag set).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Bumped by every committed change in the environment.
    pub version: i64,
    /// Flag-set metadata.
    pub metadata: Metadata,
    /// Shared targeting fragments (`$evaluators`).
    pub evaluators: BTreeMap<String, Value>,
    /// Unix seconds.
    pub created_at: i64,
    /// The digest of the commit at `version` ([`commit_digest`]), when the store recorded it
    /// with that commit; `None` when it must be computed from the log. Internal: not part of
    /// the API's environment JSON.
    #[serde(skip)]
    pub digest: Option<String>,
}

/// A flag as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFlag {
    /// The environment.
    pub environment: String,
    /// The key.
    pub key: String,
    /// The definition.
    pub flag: Flag,
    /// The environment version of this flag's last write (monotonic per key, even across
    /// delete and re-create, so `If-Match` cannot be fooled by a flag that came back).
    pub version: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The actor of the last write.
    pub updated_by: String,
}

/// One change of a commit.
#[derive(Debug, Clone)]
pub enum FlagChange {
    /// Create or replace a flag; `expected_version` is the `If-Match` (0 = must not exist).
    Upsert {
        /// The key.
        key: String,
        /// The new definition.
        flag: Flag,
        /// The `If-Match` version, if any.
        expected_version: Option<i64>,
    },
    /// Delete a flag.
    Delete {
        /// The key.
        key: String,
        /// The `If-Match` version, if any.
        expected_version: Option<i64>,
    },
}

impl FlagChange {
    /// The key it changes and its `If-Match` version.
    pub fn key(&self) -> (&str, Option<i64>) {
        match self {
            FlagChange::Upsert {
                key,
                expected_version,
                ..
            }
            | FlagChange::Delete {
                key,
                expected_version,
            } => (key, *expected_version),
        }
    }
}

/// A commit's preconditions, checked before anything is written, the same way by every store:
/// each `If-Match` version is the stored one (0 for a flag that does not exist), and each
/// deleted flag exists. `stored` reads a flag as the transaction sees it. Returns the stored
/// flag of each change, in order.
fn check_preconditions(
    environment: &str,
    changes: &[FlagChange],
    mut stored: impl FnMut(&str) -> Result<Option<StoredFlag>, StoreError>,
) -> Result<Vec<Option<StoredFlag>>, StoreError> {
    let mut current = Vec::with_capacity(changes.len());
    for change in changes {
        let (key, expected) = change.key();
        let existing = stored(key)?;
        let actual = existing.as_ref().map_or(0, |f| f.version);
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(StoreError::VersionConflict {
                key: key.to_owned(),
                expected,
                actual,
            });
        }
        if matches!(change, FlagChange::Delete { .. }) && existing.is_none() {
            return Err(StoreError::UnknownFlag {
                environment: environment.to_owned(),
                key: key.to_owned(),
            });
        }
        current.push(existing);
    }
    Ok(current)
}

impl Role {
    /// Reads a stored role name (anything but `admin` is the least privileged, `sdk`).
    fn from_stored(name: &str) -> Role {
        if name == "admin" {
            Role::Admin
        } else {
            Role::Sdk
        }
    }
}

/// Reads stored JSON, naming `what` when it does not decode (a corrupted or hand-edited store).
fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: what(),
        source,
    })
}

/// JSON text for a column. Serialising our own model types cannot fail (no non-string map
/// keys).
fn encode(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// A flag as the change log records it.
fn flag_json(flag: &Flag) -> Value {
    serde_json::to_value(flag).unwrap_or(Value::Null)
}

/// A change record's stored `before`/`after`: one that does not decode (a hand edit, a bug) is
/// shown with a marker, never turned into an error for the whole listing.
fn readable(id: i64, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::error!(id, %error, "stored change record does not decode");
        serde_json::json!({"$error": format!("this stored value does not decode: {error}")})
    })
}

/// A stored token hash (a wrong length, from a hand edit, matches no secret).
fn token_hash(bytes: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes).unwrap_or([0; 32])
}

/// New environment settings (metadata and `$evaluators`), from a document apply.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentSettings {
    /// Flag-set metadata.
    pub metadata: Metadata,
    /// `$evaluators`.
    pub evaluators: BTreeMap<String, Value>,
}

/// Who made a change, and why.
#[derive(Debug, Clone)]
pub struct Attribution {
    /// The actor (a token's name, `ramp`, ...).
    pub actor: String,
    /// The change message, if any.
    pub message: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// One record of the append-only change log (the audit log and the stream's resume log).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    /// Monotonic across the store; the audit cursor.
    pub id: i64,
    /// The environment.
    pub environment: String,
    /// The environment version this change produced.
    pub version: i64,
    /// The flag, or `None` for environment-level changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// What happened.
    pub operation: Operation,
    /// The state before (null when created).
    pub before: Value,
    /// The state after (null when deleted).
    pub after: Value,
    /// Who.
    pub actor: String,
    /// Unix seconds.
    pub at: i64,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a change record records. Stored and shown (audit) as its snake_case name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A flag was created.
    Create,
    /// A flag was replaced.
    Update,
    /// A flag was deleted.
    Delete,
    /// The environment's metadata and `$evaluators` were replaced.
    UpdateSettings,
    /// The environment was created.
    CreateEnvironment,
    /// The environment was deleted.
    DeleteEnvironment,
    /// Audit only (changes no flag): a ramp failed and was stopped.
    RampFailed,
    /// Audit only: the first admin token was created at start.
    AdminTokenCreated,
    /// Audit only: the environment was bound to a Git source (GitOps); `before` is its spec.
    SourceBound,
    /// Audit only: the environment was unbound from its Git source.
    SourceUnbound,
    /// Audit only: a token was created through the API; `before` names it (never its secret).
    /// Recorded in its environment (an sdk token), each environment of its scope (a scoped
    /// admin), or `*` (an admin of every environment).
    TokenCreated,
    /// Audit only: a token was revoked; recorded as `TokenCreated` is.
    TokenRevoked,
    /// A stored name this build does not know (written by a newer server): shown as stored,
    /// never applied.
    Other(String),
}

impl Operation {
    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::UpdateSettings => "update_settings",
            Operation::CreateEnvironment => "create_environment",
            Operation::DeleteEnvironment => "delete_environment",
            Operation::RampFailed => "ramp_failed",
            Operation::AdminTokenCreated => "admin_token_created",
            Operation::SourceBound => "source_bound",
            Operation::SourceUnbound => "source_unbound",
            Operation::TokenCreated => "token_created",
            Operation::TokenRevoked => "token_revoked",
            Operation::Other(name) => name,
        }
    }

    /// Reads a stored name; [`Operation::Other`] for one this build does not know.
    pub fn parse(name: &str) -> Operation {
        match name {
            "create" => Operation::Create,
            "update" => Operation::Update,
            "delete" => Operation::Delete,
            "update_settings" => Operation::UpdateSettings,
            "create_environment" => Operation::CreateEnvironment,
            "delete_environment" => Operation::DeleteEnvironment,
            "ramp_failed" => Operation::RampFailed,
            "admin_token_created" => Operation::AdminTokenCreated,
            "source_bound" => Operation::SourceBound,
            "source_unbound" => Operation::SourceUnbound,
            "token_created" => Operation::TokenCreated,
            "token_revoked" => Operation::TokenRevoked,
            other => Operation::Other(other.to_owned()),
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl ChangeRecord {
    /// The change to the environment's flag-set document this record made, as the stream sends
    /// it; `None` for records that only a snapshot can express (environment creation and
    /// deletion), for audit-only events, and for records whose stored value did not decode
    /// (the reader marks them `{"$error": ...}`): a client resuming across one gets a snapshot
    /// rather than a marker. The only place a record becomes a [`Change`].
    pub fn change(&self) -> Option<Change> {
        if self.after.get("$error").is_some() {
            return None;
        }
        match (&self.operation, &self.flag) {
            (Operation::Create | Operation::Update, Some(key)) => Some(Change::Upsert {
                key: key.clone(),
                flag: self.after.clone(),
            }),
            (Operation::Delete, Some(key)) => Some(Change::Delete { key: key.clone() }),
            (Operation::UpdateSettings, None) => Some(Change::Settings {
                metadata: Some(serde_json::from_value(self.after.get("metadata")?.clone()).ok()?),
                evaluators: Some(
                    serde_json::from_value(self.after.get("$evaluators")?.clone()).ok()?,
                ),
            }),
            _ => None,
        }
    }
}

/// Operations that record an event and change no flag: never streamed, not part of a commit's
/// digest.
pub const AUDIT_ONLY: [&str; 6] = [
    "ramp_failed",
    "admin_token_created",
    "source_bound",
    "source_unbound",
    "token_created",
    "token_revoked",
];

impl Operation {
    /// Whether it only records an event (see [`AUDIT_ONLY`]).
    pub fn is_audit_only(&self) -> bool {
        AUDIT_ONLY.contains(&self.as_str())
    }
}

/// A short digest of the commit that produced one environment version: 16 hex digits of SHA-256
/// over its records (id, operation, flag, state after, actor, time, message). A stream client
/// resumes with its version *and* this digest, so a server whose history differs at that version
/// (another database, a restored backup, a different lineage) sends a snapshot instead of
/// patches. Audit-only records are left out (they are written later at the same version).
///
/// Each record is one compact JSON array, serialised straight into the hash (a server loading a
/// 10,000-flag commit at start spent most of its time copying records into `json!` values).
pub fn commit_digest(records: &[ChangeRecord]) -> String {
    use sha2::Digest as _;

    /// Feeds what serde_json writes into the hash.
    struct Hashing<'a>(&'a mut sha2::Sha256);
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let mut hasher = sha2::Sha256::new();
    for record in records.iter().filter(|r| !r.operation.is_audit_only()) {
        let line = (
            record.id,
            record.version,
            record.operation.as_str(),
            &record.flag,
            &record.after,
            &record.actor,
            record.at,
            &record.message,
        );
        // A tuple serialises as the JSON array; string keys and finite numbers always do.
        if let Err(error) = serde_json::to_writer(Hashing(&mut hasher), &line) {
            tracing::error!(%error, id = record.id, "a change record does not serialise for its digest");
        }
        hasher.update(b"\n");
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..8])
}

/// The result of a commit.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The environment's new version.
    pub version: i64,
    /// The records written.
    pub changes: Vec<ChangeRecord>,
    /// [`commit_digest`] of `changes`, computed once ([`Commit::new`]): the store records it
    /// with the version, the hub sends it with the patch.
    pub digest: String,
}

impl Commit {
    /// The commit that produced `version` with these records.
    pub fn new(version: i64, changes: Vec<ChangeRecord>) -> Commit {
        Commit {
            digest: commit_digest(&changes),
            version,
            changes,
        }
    }
}

/// Filters for the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this environment.
    pub environment: Option<String>,
    /// Only these environments (what an environment-scoped admin may read); `None` for all.
    pub environments: Option<Vec<String>>,
    /// Only this flag.
    pub flag: Option<String>,
    /// Only records older than this id (the cursor of the previous page).
    pub before: Option<i64>,
    /// At most this many records.
    pub limit: usize,
}

/// Token roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Stream and OFREP for one environment.
    Sdk,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Sdk => "sdk",
        }
    }
}

/// A token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public identifier (`tok_...`).
    pub id: String,
    /// A human name; also the actor recorded for its writes.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The environment of an `sdk` token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The environments an `admin` token is confined to; `None` for every environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// An admin token's environment scope as stored: a JSON array, or NULL for every environment.
pub(crate) fn scope_column(environments: Option<&[String]>) -> Option<String> {
    environments.map(|names| Value::from(names.to_vec()).to_string())
}

/// The scope of a stored token. A column that does not decode grants nothing (an empty scope)
/// rather than everything.
pub(crate) fn scope_from_column(column: Option<String>) -> Option<Vec<String>> {
    column.map(|text| serde_json::from_str(&text).unwrap_or_default())
}

/// A stored ramp. `definition` is the ramp's whole state as JSON (see `domain/ramp.rs`); `state` and
/// `next_at` are also columns so due ramps can be found by index.
#[derive(Debug, Clone, PartialEq)]
pub struct RampRecord {
    /// `None` until first saved.
    pub id: Option<i64>,
    /// The environment.
    pub environment: String,
    /// The flag.
    pub flag: String,
    /// `active`, `paused`, `completed` or `aborted`.
    pub state: String,
    /// When the next step is due (unix seconds), for active ramps.
    pub next_at: Option<i64>,
    /// Unix seconds.
    pub updated_at: i64,
    /// Bumped by every save; a save names the revision it read and is refused
    /// ([`StoreError::RampConflict`]) when the stored one moved on (compare-and-set).
    pub revision: i64,
    /// Everything else.
    pub definition: Value,
}

/// Evaluations of one flag's variant counted in one hour (evaluation telemetry, issue 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The environment.
    pub environment: String,
    /// The flag key.
    pub flag: String,
    /// The variant served (empty when none was: an error or the caller's default).
    pub variant: String,
    /// The hour (unix seconds, a multiple of 3600).
    pub hour: i64,
    /// Evaluations (added to what is stored).
    pub count: i64,
    /// The last evaluation counted (unix seconds).
    pub last_at: i64,
}

/// The start of the hour containing `at` (unix seconds).
pub fn hour_of(at: i64) -> i64 {
    at.saturating_sub(at.rem_euclid(3600))
}

/// The largest count one (flag, variant, hour) row holds: additions saturate there, so sums
/// over many rows stay far from overflowing a 64-bit integer.
pub const MAX_USAGE_COUNT: i64 = 1 << 48;

/// One flag's usage in an environment, for listings and `flagctl stale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSummary {
    /// The flag key.
    pub flag: String,
    /// Its last evaluation (unix seconds) within the retention.
    pub last_at: i64,
    /// Evaluations since the `recent` time asked for.
    pub recent: i64,
}

/// Filters for ramps, newest first.
#[derive(Debug, Clone, Default)]
pub struct RampQuery {
    /// Only this environment.
    pub environment: Option<String>,
    /// Only this flag.
    pub flag: Option<String>,
    /// Only active or paused ramps.
    pub open_only: bool,
    /// Only active ramps due at or before this time.
    pub due_at: Option<i64>,
}

/// An environment's Git source (GitOps) and its reconciler's memory. The JSON columns are
/// `flag_protocol::source` types, read and checked by `domain/gitops.rs`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// The environment.
    pub environment: String,
    /// The `SourceSpec` it is bound to.
    pub spec: Value,
    /// The reconciler's status (a `SyncStatus` plus what it keeps for itself).
    pub status: Value,
    /// Bumped by every bind: a status saved for an older binding is dropped.
    pub generation: i64,
}

/// Flag storage. Implementations must make each `commit` atomic and durable before returning.
pub trait FlagStore: Send + Sync + 'static {
    /// All environments, by name.
    fn environments(&self) -> Result<Vec<Environment>, StoreError>;
    /// One environment.
    fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError>;
    /// Creates an environment (recorded in the change log).
    fn create_environment(&self, name: &str, by: &Attribution) -> Result<Environment, StoreError>;
    /// Deletes an environment, its flags and its sdk tokens (recorded in the change log, with
    /// the whole document as `before`). Unless `force`, refuses (`EnvironmentNotEmpty`) an
    /// environment with flags, checked in the same transaction as the deletion.
    fn delete_environment(
        &self,
        name: &str,
        force: bool,
        by: &Attribution,
    ) -> Result<(), StoreError>;
    /// The flags of an environment, by key.
    fn flags(&self, environment: &str) -> Result<Vec<StoredFlag>, StoreError>;
    /// One flag.
    fn flag(&self, environment: &str, key: &str) -> Result<Option<StoredFlag>, StoreError>;
    /// Applies changes atomically as one new environment version; checks every expected
    /// version first and changes nothing if one does not match.
    fn commit(
        &self,
        environment: &str,
        changes: &[FlagChange],
        settings: Option<&EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<Commit, StoreError>;
    /// [`commit`](Self::commit) fenced by a ramp: in the same transaction, the stored ramp is
    /// saved as `ramp` if its revision is still `ramp.revision` (compare-and-set), else nothing
    /// is written (`RampConflict`). A ramp step or abort and the flag write it makes land
    /// together or not at all, so a scheduler that lost its lead (or a request on another
    /// replica) can never apply a step twice or undo a newer one.
    fn commit_fenced(
        &self,
        environment: &str,
        changes: &[FlagChange],
        by: &Attribution,
        ramp: &RampRecord,
    ) -> Result<Commit, StoreError>;
    /// Change records, newest first.
    fn changes(&self, query: &AuditQuery) -> Result<Vec<ChangeRecord>, StoreError>;
    /// The change records of one environment with a version above `after_version`, oldest
    /// first, at most `limit` (the stream's resume log).
    fn changes_since(
        &self,
        environment: &str,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError>;
    /// All tokens.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Stores a token.
    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Stores the first admin token, only if the store has no token at all, checked and
    /// inserted atomically (replicas bootstrapping an empty database at the same moment create
    /// one between them). Returns whether it was stored.
    fn insert_first_token(&self, token: &TokenRecord) -> Result<bool, StoreError>;
    /// Marks a token revoked; returns it. Refuses (`LastAdmin`) to revoke the last active admin
    /// token for every environment (scoped admins do not count), checking and revoking in one transaction so two admins revoking each other at the
    /// same moment cannot both succeed.
    fn revoke_token(&self, id: &str, at: i64) -> Result<TokenRecord, StoreError>;
    /// Whether the store can serve queries (for `/readyz`).
    fn ping(&self) -> Result<(), StoreError>;
    /// Inserts (no id, revision 0) or updates a ramp, if its stored revision is still
    /// `ramp.revision` (else `RampConflict`); returns its id. The stored revision is then
    /// `ramp.revision + 1` for an update.
    fn save_ramp(&self, ramp: &RampRecord) -> Result<i64, StoreError>;
    /// Ramps matching the query, newest first.
    fn ramps(&self, query: &RampQuery) -> Result<Vec<RampRecord>, StoreError>;
    /// Records an event that changes no flag (operation `ramp_failed`, say) in the audit log,
    /// at the environment's current version. The stream never replays it.
    fn record_event(
        &self,
        environment: &str,
        flag: Option<&str>,
        operation: Operation,
        details: &Value,
        by: &Attribution,
    ) -> Result<ChangeRecord, StoreError>;
    /// Every Git source binding.
    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError>;
    /// One environment's Git source binding.
    fn source(&self, environment: &str) -> Result<Option<SourceRecord>, StoreError>;
    /// Binds (or rebinds) an environment to a source: a new status, no baseline, the next
    /// generation (returned). `UnknownEnvironment` if it does not exist. Deleting the
    /// environment unbinds it.
    fn bind_source(
        &self,
        environment: &str,
        spec: &Value,
        status: &Value,
    ) -> Result<i64, StoreError>;
    /// The Git document last applied (what a later commit is compared with, to tell a change in
    /// Git from drift); `None` before the first sync. Read apart from the record: it is the whole
    /// document, and the record is read on every admin write and every second.
    fn source_baseline(&self, environment: &str) -> Result<Option<Value>, StoreError>;
    /// Unbinds; returns whether it was bound.
    fn unbind_source(&self, environment: &str) -> Result<bool, StoreError>;
    /// Adds evaluation counts to their hours (one transaction; counts add up, `last_at` keeps
    /// the latest), so several replicas may each add theirs.
    fn add_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError>;
    /// A flag's counts from the hour containing `since` on, oldest first.
    fn usage(
        &self,
        environment: &str,
        flag: &str,
        since: i64,
    ) -> Result<Vec<UsageRecord>, StoreError>;
    /// Every evaluated flag of an environment: its last evaluation and its evaluations since
    /// the hour containing `recent`.
    fn usage_summary(
        &self,
        environment: &str,
        recent: i64,
    ) -> Result<Vec<UsageSummary>, StoreError>;
    /// Deletes the counts of hours that ended before `before`; returns how many rows went.
    fn prune_usage(&self, before: i64) -> Result<u64, StoreError>;
    /// Saves the reconciler's status (and a new baseline, if given) if the binding is still
    /// `generation`; returns whether it was saved.
    fn save_source_status(
        &self,
        environment: &str,
        generation: i64,
        status: &Value,
        baseline: Option<&Value>,
    ) -> Result<bool, StoreError>;
}

/// Reads a source row's JSON columns (shared by both stores).
fn source_record(
    environment: String,
    spec: &str,
    status: &str,
    generation: i64,
) -> Result<SourceRecord, StoreError> {
    let what = || format!("the Git source of environment {environment:?}");
    Ok(SourceRecord {
        spec: decode(spec, what)?,
        status: decode(status, what)?,
        generation,
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(operation: Operation, flag: Option<&str>, after: Value) -> ChangeRecord {
        ChangeRecord {
            id: 1,
            environment: "e".into(),
            version: 1,
            flag: flag.map(str::to_owned),
            operation,
            before: Value::Null,
            after,
            actor: "a".into(),
            at: 0,
            message: None,
        }
    }

    #[test]
    fn commit_digests_are_the_documented_json_lines() {
        // The digest is part of stream resume tokens: its input (one `json!` array per record)
        // must not change when the way it is computed does.
        let mut records = vec![
            record(
                Operation::Create,
                Some("f\u{e9}-\"quoted\""),
                json!({"state": "ENABLED", "variants": {"b": 0.1, "a": [1, -2.5e300, null]},
                    "defaultVariant": "a", "metadata": {"z": "\u{1F600}", "y": true}}),
            ),
            record(Operation::Delete, Some("gone"), Value::Null),
            record(Operation::UpdateSettings, None, json!({"metadata": {}})),
        ];
        records[0].message = Some("why\nnot".into());
        records[1].id = 2;
        let mut reference = sha2::Sha256::default();
        for r in &records {
            use sha2::Digest as _;
            let line = json!([
                r.id,
                r.version,
                r.operation.as_str(),
                r.flag,
                r.after,
                r.actor,
                r.at,
                r.message
            ]);
            reference.update(line.to_string().as_bytes());
            reference.update(b"\n");
        }
        use sha2::Digest as _;
        let expected = hex::encode(&reference.finalize()[..8]);
        assert_eq!(commit_digest(&records), expected);
        assert_eq!(commit_digest(&records[..1]).len(), 16);
        assert_ne!(commit_digest(&records[..1]), commit_digest(&records));
    }

    #[test]
    fn records_become_changes_only_when_they_change_the_document() {
        let flag = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"});
        assert_eq!(
            record(Operation::Update, Some("f"), flag.clone()).change(),
            Some(Change::Upsert {
                key: "f".into(),
                flag
            })
        );
        assert_eq!(
            record(Operation::Delete, Some("f"), Value::Null).change(),
            Some(Change::Delete { key: "f".into() })
        );
        let settings = record(
            Operation::UpdateSettings,
            None,
            json!({"metadata": {"team": "a"}, "$evaluators": {}}),
        );
        assert!(matches!(
            settings.change(),
            Some(Change::Settings {
                metadata: Some(_),
                evaluators: Some(_)
            })
        ));
        // Only a snapshot expresses these.
        for operation in [
            Operation::CreateEnvironment,
            Operation::DeleteEnvironment,
            Operation::RampFailed,
            Operation::Other("something_new".into()),
        ] {
            assert_eq!(record(operation, None, Value::Null).change(), None);
        }
        // A stored value that did not decode (the reader's marker) is never streamed, and
        // settings that do not decode never empty a client's settings.
        let marker = json!({"$error": "this stored value does not decode"});
        assert_eq!(record(Operation::Update, Some("f"), marker).change(), None);
        let bad = json!({"metadata": [1], "$evaluators": {}});
        assert_eq!(record(Operation::UpdateSettings, None, bad).change(), None);
        assert_eq!(
            Operation::parse("update_settings"),
            Operation::UpdateSettings
        );
        assert_eq!(
            Operation::parse("something_new"),
            Operation::Other("something_new".into())
        );
        assert_eq!(
            serde_json::to_value(Operation::parse("something_new")).unwrap(),
            "something_new"
        );
    }
}
