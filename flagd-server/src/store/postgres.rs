//! The PostgreSQL store, for several server replicas on one database.
//!
//! The same semantics as the SQLite store, held across processes by PostgreSQL itself:
//! - every commit is one transaction that first locks its environment's row
//!   (`SELECT … FOR UPDATE`), so the versions of one environment are assigned one after another
//!   whichever replica writes, and `If-Match` is checked against what is committed;
//! - every commit sends `NOTIFY` (delivered when the transaction commits), and token changes do
//!   too: other replicas [`listen`](PostgresStore::listen) and catch up from the change log;
//! - migrations are versioned (`flagd_schema_migrations`) and applied at start under an advisory
//!   lock, so replicas starting together apply each exactly once;
//! - one replica [leads](PostgresStore::elect) (runs the ramp scheduler) by holding an advisory
//!   lock on a connection of its own: when it dies, PostgreSQL ends its session, frees the lock,
//!   and another replica takes it.
//!
//! Channel names and lock keys are derived from the schema the connection uses (`search_path`),
//! so several deployments (or parallel tests) can share one database in different schemas.
//!
//! Crates: the synchronous `postgres` client (our store trait is synchronous and runs on tokio's
//! blocking pool, like SQLite) and `r2d2` for the pool, both well kept by the rust-postgres
//! project. `sqlx` would need the trait to become async, and brings its own macro-heavy stack.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use flag_core::{Flag, Metadata};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, GenericClient, NoTls, Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    Attribution, AuditQuery, ChangeRecord, Commit, DEFAULT_ENVIRONMENT, Environment,
    EnvironmentSettings, FlagChange, FlagStore, Operation, RampQuery, RampRecord, Role,
    SourceRecord, StoreError, StoredFlag, TokenRecord, UsageRecord, UsageSummary, decode, encode,
    flag_json, hour_of, readable, source_record,
};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Schema migrations, applied in order at start. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE environments (
        name        TEXT PRIMARY KEY,
        version     BIGINT NOT NULL DEFAULT 0,
        metadata    TEXT NOT NULL DEFAULT '{}',
        evaluators  TEXT NOT NULL DEFAULT '{}',
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE flags (
        environment TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
        key         TEXT NOT NULL,
        definition  TEXT NOT NULL,
        version     BIGINT NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL,
        updated_by  TEXT NOT NULL,
        PRIMARY KEY (environment, key)
    );
    -- Append-only: the audit log and the stream's resume log. No foreign key, so the history
    -- of a deleted environment stays. JSON is kept as TEXT, byte for byte as written.
    CREATE TABLE changes (
        id          BIGSERIAL PRIMARY KEY,
        environment TEXT NOT NULL,
        version     BIGINT NOT NULL,
        flag_key    TEXT,
        operation   TEXT NOT NULL,
        before      TEXT NOT NULL,
        after       TEXT NOT NULL,
        actor       TEXT NOT NULL,
        at          BIGINT NOT NULL,
        message     TEXT
    );
    CREATE INDEX changes_by_environment ON changes (environment, version);
    CREATE INDEX changes_by_flag ON changes (environment, flag_key, id);
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('admin', 'sdk')),
        environment TEXT,
        hash        BYTEA NOT NULL UNIQUE,
        created_at  BIGINT NOT NULL,
        revoked_at  BIGINT
    );
    CREATE TABLE ramps (
        id          BIGSERIAL PRIMARY KEY,
        environment TEXT NOT NULL,
        flag_key    TEXT NOT NULL,
        definition  TEXT NOT NULL,
        state       TEXT NOT NULL,
        next_at     BIGINT,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL,
        revision    BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX ramps_by_flag ON ramps (environment, flag_key, id);
    CREATE INDEX ramps_due ON ramps (state, next_at);
"#,
    r#"
    -- GitOps: an environment's Git source and its reconciler's memory (JSON, see gitops.rs).
    CREATE TABLE sources (
        environment TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        status      TEXT NOT NULL,
        baseline    TEXT,
        generation  BIGINT NOT NULL DEFAULT 1
    );
"#,
    r#"
    -- Environment-scoped admin tokens: a JSON array of environment names; NULL = every one.
    ALTER TABLE tokens ADD COLUMN environments TEXT;
"#,
    r#"
    -- Evaluation telemetry: counts per environment, flag, variant and hour (domain/usage.rs).
    CREATE TABLE usage (
        environment TEXT NOT NULL,
        flag_key    TEXT NOT NULL,
        variant     TEXT NOT NULL,
        hour        BIGINT NOT NULL,
        count       BIGINT NOT NULL,
        last_at     BIGINT NOT NULL,
        PRIMARY KEY (environment, flag_key, variant, hour)
    );
    CREATE INDEX usage_by_hour ON usage (hour);
"#,
    r#"
    -- The digest of the commit at digest_version (store::commit_digest), so a start does not
    -- re-read and re-hash that commit; used only while digest_version = version.
    ALTER TABLE environments ADD COLUMN digest TEXT;
    ALTER TABLE environments ADD COLUMN digest_version BIGINT;
"#,
];

/// A connection string with its password replaced by `***`, for logs and messages.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(a connection string that is not a URL)".to_owned(),
    }
}

/// Names derived from the schema: notification channels and advisory lock keys.
#[derive(Debug, Clone)]
struct Namespace {
    schema: String,
    changes_channel: String,
    tokens_channel: String,
    migration_key: i64,
    leader_key: i64,
    tokens_key: i64,
    /// With an environment name's hash, the lock that orders its creation and deletion.
    names_key: i32,
}

impl Namespace {
    fn new(schema: &str) -> Namespace {
        let hash = Sha256::digest(format!("flagd-rs:{schema}").as_bytes());
        let tag = hex::encode(&hash[..6]);
        let key = |salt: u8| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&hash[8..16]);
            bytes[0] ^= salt;
            i64::from_be_bytes(bytes)
        };
        Namespace {
            schema: schema.to_owned(),
            changes_channel: format!("flagd_changes_{tag}"),
            tokens_channel: format!("flagd_tokens_{tag}"),
            migration_key: key(1),
            leader_key: key(2),
            tokens_key: key(3),
            names_key: i32::from_be_bytes([hash[16], hash[17], hash[18], hash[19]]),
        }
    }
}

/// What the database told a replica, from [`PostgresStore::listen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Listening (again): anything may have been missed before, so catch up on everything.
    Connected,
    /// The listening connection is lost (why); reconnecting.
    Disconnected(String),
    /// An environment was committed to (or created, or deleted) at this version.
    Changed {
        /// The environment.
        environment: String,
        /// Its version after the commit.
        version: i64,
    },
    /// A token was created or revoked.
    Tokens,
}

/// When a background connection last proved alive (a notification, a poll that returned, a
/// check query answered), for watchdogs: a connection that hangs (a frozen peer, a network that
/// drops packets silently) blocks its thread, and only the age of this beat shows it.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<std::sync::atomic::AtomicU64>);

fn monotonic_millis() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Heartbeat {
    fn beat(&self) {
        self.0.store(monotonic_millis(), Ordering::Release);
    }

    /// How long ago the connection last proved alive.
    pub fn age(&self) -> Duration {
        Duration::from_millis(monotonic_millis().saturating_sub(self.0.load(Ordering::Acquire)))
    }
}

/// How long the leader's connection may go without answering before the replica stops acting as
/// leader (its lock may be gone: another replica may lead).
const LEADER_CONFIRMATION: Duration = Duration::from_secs(3);

/// Whether this replica runs the ramp scheduler. A single-process store always leads; a
/// PostgreSQL replica leads while it holds the leader lock ([`PostgresStore::elect`]).
#[derive(Debug, Clone)]
pub struct Leadership(Arc<LeadershipState>);

#[derive(Debug)]
struct LeadershipState {
    elected: bool,
    leading: AtomicBool,
    /// When the lock's connection last answered.
    confirmed: Heartbeat,
}

impl Leadership {
    /// Always the leader (one server on its own store).
    pub fn sole() -> Leadership {
        Leadership(Arc::new(LeadershipState {
            elected: false,
            leading: AtomicBool::new(true),
            confirmed: Heartbeat::default(),
        }))
    }

    /// Whether this replica leads now: it holds the lock, and (when elected) its connection
    /// answered within the last few seconds.
    pub fn is_leader(&self) -> bool {
        self.0.leading.load(Ordering::Acquire)
            && (!self.0.elected || self.0.confirmed.age() < LEADER_CONFIRMATION)
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    /// Always `Some` until dropped (see `Drop`).
    pool: Option<Pool>,
    config: Config,
    namespace: Namespace,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.namespace.schema)
            .finish_non_exhaustive()
    }
}

fn unreachable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unreachable(error.to_string())
}

/// A PostgreSQL error with the server's own message (`db error` alone says nothing) or the
/// underlying cause (connection refused, a name that does not resolve).
pub(crate) fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The synchronous client's connections shut down their own little runtime when
        // dropped, which panics on a thread that runs tokio (the server's `main` drops the
        // store there at exit): drop the pool on a thread of its own.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?options=...`), migrates
    /// the schema and makes sure a fresh store has the `default` environment. Fails (within
    /// about five seconds) when the database cannot be reached.
    pub fn connect(url: &str, now: i64) -> Result<PostgresStore, StoreError> {
        let mut config: Config = url.parse()?;
        // A peer that vanishes without closing (a machine gone, a network partition) is noticed
        // by TCP: unacknowledged data for 10 s, or keepalives unanswered for 25 s.
        config
            .connect_timeout(Duration::from_secs(5))
            .tcp_user_timeout(Duration::from_secs(10))
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .application_name("flagd-server");
        // One direct connection first: the pool reports a failed connection only as a timeout,
        // while this says why (wrong password, unknown database, connection refused).
        let probe = config.clone();
        std::thread::spawn(move || probe.connect(NoTls).map(drop))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(5))
            // r2d2 logs through `log`, which we do not collect: errors reach us as results.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(unreachable)?;
        let mut client = pool.get().map_err(unreachable)?;
        let schema: Option<String> = client.query_one("SELECT current_schema()", &[])?.get(0);
        let schema = schema.ok_or_else(|| {
            StoreError::Setup(
                "the connection's search_path names no existing schema: create it first (CREATE SCHEMA ...)".into(),
            )
        })?;
        let namespace = Namespace::new(&schema);
        migrate(&mut client, &namespace, now)?;
        drop(client);
        Ok(PostgresStore {
            pool: Some(pool),
            config,
            namespace,
        })
    }

    /// The schema it stores in.
    pub fn schema(&self) -> &str {
        &self.namespace.schema
    }

    fn pool(&self) -> Result<&Pool, StoreError> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError::Unreachable("the store is closed".into()))
    }

    fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool()?.get().map_err(unreachable)
    }

    /// Listens for other replicas' commits and token changes on a dedicated connection, on a
    /// thread of its own, sending what it hears to `notices` (first [`Notice::Connected`]). A
    /// lost connection is reported ([`Notice::Disconnected`]) and re-established every second;
    /// the connection is checked every two seconds, so a silently dead one is noticed too. The
    /// thread ends when `notices` is closed.
    pub fn listen(
        &self,
        notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    ) -> std::io::Result<Heartbeat> {
        let heartbeat = Heartbeat::default();
        heartbeat.beat();
        let store = Listener {
            config: self.config.clone(),
            namespace: self.namespace.clone(),
            heartbeat: heartbeat.clone(),
        };
        std::thread::Builder::new()
            .name("flagd-listen".into())
            .spawn(move || store.run(&notices))?;
        Ok(heartbeat)
    }

    /// Takes part in the leader election on a thread of its own: tries the leader lock every
    /// second; while held, checks its connection every second and steps down the moment it
    /// fails. Ends (releasing the lock) when every clone of the returned [`Leadership`] is gone.
    pub fn elect(&self) -> std::io::Result<Leadership> {
        let leadership = Leadership(Arc::new(LeadershipState {
            elected: true,
            leading: AtomicBool::new(false),
            confirmed: Heartbeat::default(),
        }));
        let weak = Arc::downgrade(&leadership.0);
        let listener = Listener {
            config: self.config.clone(),
            namespace: self.namespace.clone(),
            heartbeat: Heartbeat::default(),
        };
        std::thread::Builder::new()
            .name("flagd-leader".into())
            .spawn(move || listener.lead(&weak))?;
        Ok(leadership)
    }
}

/// The connection settings the background threads use.
struct Listener {
    config: Config,
    namespace: Namespace,
    heartbeat: Heartbeat,
}

impl Listener {
    fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET search_path TO {}",
            quote_identifier(&self.namespace.schema)
        ))?;
        Ok(client)
    }

    fn run(&self, notices: &tokio::sync::mpsc::UnboundedSender<Notice>) {
        // A connection attempt that keeps failing is reported once, not every second.
        let mut reported_down = false;
        loop {
            if notices.is_closed() {
                return;
            }
            let error = match self.connect() {
                Ok(mut client) => {
                    reported_down = false;
                    match self.follow(&mut client, notices) {
                        Ok(()) => return,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            if !reported_down {
                tracing::warn!(%error, "lost the PostgreSQL notification connection; reconnecting");
                if notices
                    .send(Notice::Disconnected(error.to_string()))
                    .is_err()
                {
                    return;
                }
                reported_down = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// `Ok` when `notices` closed; `Err` when the connection failed.
    fn follow(
        &self,
        client: &mut Client,
        notices: &tokio::sync::mpsc::UnboundedSender<Notice>,
    ) -> Result<(), postgres::Error> {
        client.batch_execute(&format!(
            "LISTEN {}; LISTEN {}",
            self.namespace.changes_channel, self.namespace.tokens_channel
        ))?;
        if notices.send(Notice::Connected).is_err() {
            return Ok(());
        }
        self.heartbeat.beat();
        let mut checked = Instant::now();
        loop {
            let next = client
                .notifications()
                .timeout_iter(Duration::from_millis(500))
                .next()?;
            // Only what the server sent proves the connection alive: a wait that timed out
            // proves nothing.
            if next.is_some() {
                self.heartbeat.beat();
            }
            if let Some(notification) = next {
                let notice = if notification.channel() == self.namespace.tokens_channel {
                    Some(Notice::Tokens)
                } else {
                    parse_change(notification.payload())
                };
                if let Some(notice) = notice
                    && notices.send(notice).is_err()
                {
                    return Ok(());
                }
            }
            if notices.is_closed() {
                return Ok(());
            }
            if checked.elapsed() >= Duration::from_secs(2) {
                client.simple_query("SELECT 1")?;
                self.heartbeat.beat();
                checked = Instant::now();
            }
        }
    }

    fn lead(&self, leadership: &Weak<LeadershipState>) {
        loop {
            let Some(state) = leadership.upgrade() else {
                return;
            };
            drop(state);
            if let Ok(mut client) = self.connect() {
                let held = self.hold(&mut client, leadership);
                if let Some(state) = leadership.upgrade()
                    && state.leading.swap(false, Ordering::AcqRel)
                {
                    let why = held.err().map_or_else(String::new, |e| describe(&e));
                    tracing::warn!(error = why, "stepped down as ramp scheduler leader");
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Tries the lock every second and keeps it while the connection lives. `Ok` when the
    /// leadership handle is gone.
    fn hold(
        &self,
        client: &mut Client,
        leadership: &Weak<LeadershipState>,
    ) -> Result<(), postgres::Error> {
        loop {
            let Some(state) = leadership.upgrade() else {
                return Ok(());
            };
            if state.leading.load(Ordering::Acquire) {
                client.simple_query("SELECT 1")?;
                state.confirmed.beat();
            } else {
                let acquired: bool = client
                    .query_one(
                        "SELECT pg_try_advisory_lock($1)",
                        &[&self.namespace.leader_key],
                    )?
                    .get(0);
                if acquired {
                    tracing::info!("this replica now leads the ramp scheduler");
                    state.confirmed.beat();
                    state.leading.store(true, Ordering::Release);
                }
            }
            drop(state);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// A `changes` notification's payload: `VERSION ENVIRONMENT`.
fn parse_change(payload: &str) -> Option<Notice> {
    let (version, environment) = payload.split_once(' ')?;
    Some(Notice::Changed {
        environment: environment.to_owned(),
        version: version.parse().ok()?,
    })
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn migrate(client: &mut Client, namespace: &Namespace, now: i64) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&namespace.migration_key])?;
    let result = migrate_locked(client, now);
    // Also released when the session ends, should this fail.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&namespace.migration_key]);
    result?;
    unlocked?;
    Ok(())
}

fn migrate_locked(client: &mut Client, now: i64) -> Result<(), StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('flagd_schema_migrations') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        client.batch_execute(
            "CREATE TABLE flagd_schema_migrations (
                version     INTEGER PRIMARY KEY,
                applied_at  BIGINT NOT NULL
            )",
        )?;
    }
    let applied: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM flagd_schema_migrations",
            &[],
        )?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(StoreError::Setup(format!(
            "the database schema is at version {applied}, newer than this server's {known}: a newer flagd-server wrote it; upgrade this one"
        )));
    }
    for (number, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO flagd_schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&number, &now],
        )?;
        tx.commit()?;
        tracing::info!(version = number, "applied PostgreSQL schema migration");
    }
    let mut tx = client.transaction()?;
    let environments: i64 = tx
        .query_one("SELECT COUNT(*) FROM environments", &[])?
        .get(0);
    let history: i64 = tx.query_one("SELECT COUNT(*) FROM changes", &[])?.get(0);
    if environments == 0 && history == 0 {
        tx.execute(
            "INSERT INTO environments (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&DEFAULT_ENVIRONMENT, &now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn read_environment(
    client: &mut impl GenericClient,
    name: &str,
    lock: bool,
) -> Result<Option<Environment>, StoreError> {
    let sql = if lock {
        "SELECT name, version, metadata, evaluators, created_at, CASE WHEN digest_version = version THEN digest END FROM environments WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT name, version, metadata, evaluators, created_at, CASE WHEN digest_version = version THEN digest END FROM environments WHERE name = $1"
    };
    let Some(row) = client.query_opt(sql, &[&name])? else {
        return Ok(None);
    };
    environment_from_row(&row).map(Some)
}

fn environment_from_row(row: &Row) -> Result<Environment, StoreError> {
    let name: String = row.try_get(0)?;
    let metadata: String = row.try_get(2)?;
    let evaluators: String = row.try_get(3)?;
    let metadata: Metadata = decode(&metadata, || format!("environment {name:?} metadata"))?;
    let evaluators: BTreeMap<String, Value> =
        decode(&evaluators, || format!("environment {name:?} evaluators"))?;
    Ok(Environment {
        version: row.try_get(1)?,
        created_at: row.try_get(4)?,
        digest: row.try_get(5)?,
        name,
        metadata,
        evaluators,
    })
}

const FLAG_COLUMNS: &str =
    "environment, key, definition, version, created_at, updated_at, updated_by";

fn flag_from_row(row: &Row) -> Result<StoredFlag, StoreError> {
    let environment: String = row.try_get(0)?;
    let key: String = row.try_get(1)?;
    let definition: String = row.try_get(2)?;
    let flag: Flag = decode(&definition, || {
        format!("flag {key:?} in environment {environment:?}")
    })?;
    Ok(StoredFlag {
        version: row.try_get(3)?,
        created_at: row.try_get(4)?,
        updated_at: row.try_get(5)?,
        updated_by: row.try_get(6)?,
        environment,
        key,
        flag,
    })
}

fn read_flag(
    client: &mut impl GenericClient,
    environment: &str,
    key: &str,
) -> Result<Option<StoredFlag>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE environment = $1 AND key = $2"),
            &[&environment, &key],
        )?
        .as_ref()
        .map(flag_from_row)
        .transpose()
}

fn read_flags(
    client: &mut impl GenericClient,
    environment: &str,
) -> Result<Vec<StoredFlag>, StoreError> {
    let rows = client.query(
        &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE environment = $1 ORDER BY key"),
        &[&environment],
    )?;
    let mut flags = Vec::with_capacity(rows.len());
    for row in &rows {
        // As in SQLite: one flag that does not decode is left out (and logged), never an error
        // for the whole environment.
        match flag_from_row(row) {
            Ok(flag) => flags.push(flag),
            Err(error) => {
                tracing::error!(environment, %error, "stored flag does not decode; left out")
            }
        }
    }
    Ok(flags)
}

const INSERT_CHANGE: &str = "INSERT INTO changes (environment, version, flag_key, operation, before, after, actor, at, message)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";

/// Appends to the change log with `INSERT_CHANGE` prepared once per transaction (`statement`):
/// one round trip per record instead of two.
#[allow(clippy::too_many_arguments)]
fn append_change(
    tx: &mut Transaction<'_>,
    statement: &postgres::Statement,
    environment: &str,
    version: i64,
    flag: Option<&str>,
    operation: Operation,
    before: &Value,
    after: &Value,
    by: &Attribution,
) -> Result<ChangeRecord, StoreError> {
    let id: i64 = tx
        .query_one(
            statement,
            &[
                &environment,
                &version,
                &flag,
                &operation.as_str(),
                &encode(before),
                &encode(after),
                &by.actor,
                &by.at,
                &by.message,
            ],
        )?
        .get(0);
    Ok(ChangeRecord {
        id,
        environment: environment.to_owned(),
        version,
        flag: flag.map(str::to_owned),
        operation,
        before: before.clone(),
        after: after.clone(),
        actor: by.actor.clone(),
        at: by.at,
        message: by.message.clone(),
    })
}

/// Appends many records to the change log in two round trips: ids are allocated from the
/// sequence first (so each record knows its id, in order), then every row goes in one `INSERT`.
fn append_changes(
    tx: &mut Transaction<'_>,
    environment: &str,
    version: i64,
    entries: Vec<(Option<String>, Operation, Value, Value)>,
    by: &Attribution,
) -> Result<Vec<ChangeRecord>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    let mut ids: Vec<i64> = tx
        .query(
            "SELECT nextval(pg_get_serial_sequence('changes', 'id')) FROM generate_series(1, $1::BIGINT)",
            &[&count],
        )?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    let flags: Vec<Option<&str>> = entries.iter().map(|e| e.0.as_deref()).collect();
    let operations: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
    let befores: Vec<String> = entries.iter().map(|e| encode(&e.2)).collect();
    let afters: Vec<String> = entries.iter().map(|e| encode(&e.3)).collect();
    tx.execute(
        "INSERT INTO changes (id, environment, version, flag_key, operation, before, after, actor, at, message)
         SELECT i, $1, $2, f, o, b, a, $3, $4, $5
         FROM UNNEST($6::BIGINT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[]) AS u(i, f, o, b, a)",
        &[&environment, &version, &by.actor, &by.at, &by.message, &ids, &flags, &operations, &befores, &afters],
    )?;
    Ok(ids
        .into_iter()
        .zip(entries)
        .map(|(id, (flag, operation, before, after))| ChangeRecord {
            id,
            environment: environment.to_owned(),
            version,
            flag,
            operation,
            before,
            after,
            actor: by.actor.clone(),
            at: by.at,
            message: by.message.clone(),
        })
        .collect())
}

/// Tells every replica (at commit) that `environment` is at `version`.
fn notify(
    tx: &mut Transaction<'_>,
    namespace: &Namespace,
    environment: &str,
    version: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &namespace.changes_channel,
            &format!("{version} {environment}"),
        ],
    )?;
    Ok(())
}

fn change_from_row(row: &Row) -> Result<ChangeRecord, StoreError> {
    let id: i64 = row.try_get(0)?;
    let operation: String = row.try_get(4)?;
    let before: String = row.try_get(5)?;
    let after: String = row.try_get(6)?;
    Ok(ChangeRecord {
        id,
        environment: row.try_get(1)?,
        version: row.try_get(2)?,
        flag: row.try_get(3)?,
        operation: Operation::parse(&operation),
        before: readable(id, &before),
        after: readable(id, &after),
        actor: row.try_get(7)?,
        at: row.try_get(8)?,
        message: row.try_get(9)?,
    })
}

const CHANGE_COLUMNS: &str =
    "id, environment, version, flag_key, operation, before, after, actor, at, message";

const TOKEN_COLUMNS: &str =
    "id, name, role, environment, hash, created_at, revoked_at, environments";

fn token_from_row(row: &Row) -> Result<TokenRecord, StoreError> {
    let role: String = row.try_get(2)?;
    let hash: Vec<u8> = row.try_get(4)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: Role::from_stored(&role),
        environment: row.try_get(3)?,
        hash: super::token_hash(&hash),
        created_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
        environments: super::scope_from_column(row.try_get(7)?),
    })
}

impl PostgresStore {
    /// The body of a commit, inside the caller's transaction (which the caller commits).
    fn commit_in(
        &self,
        tx: &mut Transaction<'_>,
        environment: &str,
        changes: &[FlagChange],
        settings: Option<&EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<Commit, StoreError> {
        // The row lock orders this environment's commits across every replica.
        let env = read_environment(tx, environment, true)?
            .ok_or_else(|| StoreError::UnknownEnvironment(environment.to_owned()))?;
        let version = env.version + 1;

        // Check every precondition before writing anything, reading the flags concerned in
        // one query.
        let keys: Vec<&str> = changes.iter().map(|c| c.key().0).collect();
        let mut stored: HashMap<String, StoredFlag> = HashMap::new();
        if !keys.is_empty() {
            let rows = tx.query(
                &format!(
                    "SELECT {FLAG_COLUMNS} FROM flags WHERE environment = $1 AND key = ANY($2)"
                ),
                &[&environment, &keys],
            )?;
            for row in &rows {
                let flag = flag_from_row(row)?;
                stored.insert(flag.key.clone(), flag);
            }
        }
        let current =
            super::check_preconditions(environment, changes, |key| Ok(stored.get(key).cloned()))?;
        let insert_change = tx.prepare(INSERT_CHANGE)?;

        let mut records = Vec::with_capacity(changes.len() + 1);
        if let Some(settings) = settings {
            let before =
                serde_json::json!({"metadata": env.metadata, "$evaluators": env.evaluators});
            let after = serde_json::json!({"metadata": settings.metadata, "$evaluators": settings.evaluators});
            tx.execute(
                "UPDATE environments SET metadata = $2, evaluators = $3 WHERE name = $1",
                &[
                    &environment,
                    &encode(&settings.metadata),
                    &encode(&settings.evaluators),
                ],
            )?;
            records.push(append_change(
                tx,
                &insert_change,
                environment,
                version,
                None,
                Operation::UpdateSettings,
                &before,
                &after,
                by,
            )?);
        }
        // The change records, one per change, each `before` being the flag as stored before
        // this commit (as in SQLite); the flags table gets the last change of each key. Both
        // are written with one statement each, whatever the size of the commit.
        let mut entries: Vec<(Option<String>, Operation, Value, Value)> = Vec::new();
        let mut last: BTreeMap<&str, (&FlagChange, Option<&StoredFlag>)> = BTreeMap::new();
        for (change, existing) in changes.iter().zip(&current) {
            let before = existing
                .as_ref()
                .map_or(Value::Null, |f| flag_json(&f.flag));
            match change {
                FlagChange::Upsert { key, flag, .. } => {
                    let operation = if existing.is_some() {
                        Operation::Update
                    } else {
                        Operation::Create
                    };
                    entries.push((Some(key.clone()), operation, before, flag_json(flag)));
                    last.insert(key, (change, existing.as_ref()));
                }
                FlagChange::Delete { key, .. } => {
                    entries.push((Some(key.clone()), Operation::Delete, before, Value::Null));
                    last.insert(key, (change, existing.as_ref()));
                }
            }
        }
        let (mut upsert_keys, mut definitions, mut created) = (Vec::new(), Vec::new(), Vec::new());
        let mut delete_keys = Vec::new();
        for (key, (change, existing)) in last {
            match change {
                FlagChange::Upsert { flag, .. } => {
                    upsert_keys.push(key);
                    definitions.push(encode(flag));
                    created.push(existing.map_or(by.at, |f| f.created_at));
                }
                FlagChange::Delete { .. } => delete_keys.push(key),
            }
        }
        if !upsert_keys.is_empty() {
            tx.execute(
                "INSERT INTO flags (environment, key, definition, version, created_at, updated_at, updated_by)
                 SELECT $1, k, d, $2, c, $3, $4 FROM UNNEST($5::TEXT[], $6::TEXT[], $7::BIGINT[]) AS u(k, d, c)
                 ON CONFLICT (environment, key) DO UPDATE SET
                   definition = excluded.definition, version = excluded.version,
                   updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                &[&environment, &version, &by.at, &by.actor, &upsert_keys, &definitions, &created],
            )?;
        }
        if !delete_keys.is_empty() {
            tx.execute(
                "DELETE FROM flags WHERE environment = $1 AND key = ANY($2)",
                &[&environment, &delete_keys],
            )?;
        }
        records.extend(append_changes(tx, environment, version, entries, by)?);
        let commit = Commit::new(version, records);
        tx.execute(
            "UPDATE environments SET version = $2, digest = $3, digest_version = $2 WHERE name = $1",
            &[&environment, &version, &commit.digest],
        )?;
        notify(tx, &self.namespace, environment, version)?;
        Ok(commit)
    }
}

/// Inserts a token and tells every replica (at commit).
fn insert_token_row(
    tx: &mut Transaction<'_>,
    namespace: &Namespace,
    token: &TokenRecord,
) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
        &[
            &token.id,
            &token.name,
            &token.role.as_str(),
            &token.environment,
            &token.hash.as_slice(),
            &token.created_at,
            &token.revoked_at,
            &super::scope_column(token.environments.as_deref()),
        ],
    )?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&namespace.tokens_channel, &token.id],
    )?;
    Ok(())
}

/// Saves a stored ramp if its revision is still `ramp.revision` (compare-and-set).
fn update_ramp(client: &mut impl GenericClient, ramp: &RampRecord) -> Result<i64, StoreError> {
    let id = ramp
        .id
        .ok_or_else(|| StoreError::Setup("a ramp without an id cannot be updated".into()))?;
    let updated = client.execute(
        "UPDATE ramps SET definition = $2, state = $3, next_at = $4, updated_at = $5, revision = revision + 1
         WHERE id = $1 AND revision = $6",
        &[&id, &encode(&ramp.definition), &ramp.state, &ramp.next_at, &ramp.updated_at, &ramp.revision],
    )?;
    if updated == 0 {
        return Err(StoreError::RampConflict {
            id,
            expected: ramp.revision,
        });
    }
    Ok(id)
}

impl FlagStore for PostgresStore {
    fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = self.client()?.query(
            "SELECT name, version, metadata, evaluators, created_at, CASE WHEN digest_version = version THEN digest END FROM environments ORDER BY name",
            &[],
        )?;
        rows.iter().map(environment_from_row).collect()
    }

    fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        read_environment(&mut *self.client()?, name, false)
    }

    fn create_environment(&self, name: &str, by: &Attribution) -> Result<Environment, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Creation and deletion of one name take turns: the version read below must see a
        // deletion being committed, or two commits would share a version.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&self.namespace.names_key, &name],
        )?;
        // Continue the version sequence of an earlier environment of the same name, so a stream
        // client holding an old version can never mistake new history for old.
        let previous: Option<i64> = tx
            .query_one(
                "SELECT MAX(version) FROM changes WHERE environment = $1",
                &[&name],
            )?
            .get(0);
        let version = previous.unwrap_or(0) + 1;
        let inserted = tx.execute(
            "INSERT INTO environments (name, version, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&name, &version, &by.at],
        )?;
        if inserted == 0 {
            return Err(StoreError::EnvironmentExists(name.to_owned()));
        }
        let statement = tx.prepare(INSERT_CHANGE)?;
        append_change(
            &mut tx,
            &statement,
            name,
            version,
            None,
            Operation::CreateEnvironment,
            &Value::Null,
            &serde_json::json!({"name": name}),
            by,
        )?;
        let environment = read_environment(&mut tx, name, false)?
            .ok_or_else(|| StoreError::UnknownEnvironment(name.to_owned()))?;
        notify(&mut tx, &self.namespace, name, version)?;
        tx.commit()?;
        Ok(environment)
    }

    fn delete_environment(
        &self,
        name: &str,
        force: bool,
        by: &Attribution,
    ) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&self.namespace.names_key, &name],
        )?;
        let environment = read_environment(&mut tx, name, true)?
            .ok_or_else(|| StoreError::UnknownEnvironment(name.to_owned()))?;
        let flags = read_flags(&mut tx, name)?;
        let count: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM flags WHERE environment = $1",
                &[&name],
            )?
            .get(0);
        if count > 0 && !force {
            return Err(StoreError::EnvironmentNotEmpty {
                name: name.to_owned(),
                flags: count,
            });
        }
        let before = serde_json::json!({
            "metadata": environment.metadata,
            "$evaluators": environment.evaluators,
            "flags": flags.iter().map(|f| (f.key.clone(), flag_json(&f.flag))).collect::<serde_json::Map<_, _>>(),
        });
        let version = environment.version + 1;
        let statement = tx.prepare(INSERT_CHANGE)?;
        append_change(
            &mut tx,
            &statement,
            name,
            version,
            None,
            Operation::DeleteEnvironment,
            &before,
            &Value::Null,
            by,
        )?;
        tx.execute("DELETE FROM environments WHERE name = $1", &[&name])?;
        tx.execute("DELETE FROM sources WHERE environment = $1", &[&name])?;
        tx.execute(
            "UPDATE tokens SET revoked_at = $2 WHERE environment = $1 AND revoked_at IS NULL",
            &[&name, &by.at],
        )?;
        notify(&mut tx, &self.namespace, name, version)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.namespace.tokens_channel, &name],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn flags(&self, environment: &str) -> Result<Vec<StoredFlag>, StoreError> {
        let mut client = self.client()?;
        if read_environment(&mut *client, environment, false)?.is_none() {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
        }
        read_flags(&mut *client, environment)
    }

    fn flag(&self, environment: &str, key: &str) -> Result<Option<StoredFlag>, StoreError> {
        let mut client = self.client()?;
        if read_environment(&mut *client, environment, false)?.is_none() {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
        }
        read_flag(&mut *client, environment, key)
    }

    fn commit(
        &self,
        environment: &str,
        changes: &[FlagChange],
        settings: Option<&EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<Commit, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let commit = self.commit_in(&mut tx, environment, changes, settings, by)?;
        tx.commit()?;
        Ok(commit)
    }

    fn commit_fenced(
        &self,
        environment: &str,
        changes: &[FlagChange],
        by: &Attribution,
        ramp: &RampRecord,
    ) -> Result<Commit, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        update_ramp(&mut tx, ramp)?;
        let commit = self.commit_in(&mut tx, environment, changes, None, by)?;
        tx.commit()?;
        Ok(commit)
    }

    fn changes(&self, query: &AuditQuery) -> Result<Vec<ChangeRecord>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = self.client()?.query(
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM changes
                 WHERE ($1::TEXT IS NULL OR environment = $1) AND ($2::TEXT IS NULL OR flag_key = $2)
                   AND ($3::BIGINT IS NULL OR id < $3)
                   AND ($5::TEXT[] IS NULL OR environment = ANY($5))
                 ORDER BY id DESC LIMIT $4"
            ),
            &[
                &query.environment,
                &query.flag,
                &query.before,
                &limit,
                &query.environments,
            ],
        )?;
        rows.iter().map(change_from_row).collect()
    }

    fn changes_since(
        &self,
        environment: &str,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let audit_only: Vec<&str> = super::AUDIT_ONLY.to_vec();
        let rows = self.client()?.query(
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM changes
                 WHERE environment = $1 AND version > $2 AND NOT (operation = ANY($3))
                 ORDER BY version, id LIMIT $4"
            ),
            &[&environment, &after_version, &audit_only, &limit],
        )?;
        rows.iter().map(change_from_row).collect()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.client()?.query(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
            &[],
        )?;
        rows.iter().map(token_from_row).collect()
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        if let Some(environment) = &token.environment
            && read_environment(&mut tx, environment, true)?.is_none()
        {
            return Err(StoreError::UnknownEnvironment(environment.clone()));
        }
        insert_token_row(&mut tx, &self.namespace, token)?;
        tx.commit()?;
        Ok(())
    }

    fn insert_first_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // The same lock as revocations: two replicas bootstrapping at once take turns.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&self.namespace.tokens_key],
        )?;
        let existing: i64 = tx.query_one("SELECT COUNT(*) FROM tokens", &[])?.get(0);
        if existing > 0 {
            return Ok(false);
        }
        insert_token_row(&mut tx, &self.namespace, token)?;
        tx.commit()?;
        Ok(true)
    }

    fn revoke_token(&self, id: &str, at: i64) -> Result<TokenRecord, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Serialises revocations across replicas: two admins revoking each other at the same
        // moment cannot both succeed.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&self.namespace.tokens_key],
        )?;
        let read = |tx: &mut Transaction<'_>| -> Result<TokenRecord, StoreError> {
            let row = tx
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"),
                    &[&id],
                )?
                .ok_or_else(|| StoreError::UnknownToken(id.to_owned()))?;
            token_from_row(&row)
        };
        let token = read(&mut tx)?;
        if token.role == Role::Admin && token.environments.is_none() && token.revoked_at.is_none() {
            let active: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND environments IS NULL AND revoked_at IS NULL",
                    &[],
                )?
                .get(0);
            if active <= 1 {
                return Err(StoreError::LastAdmin);
            }
        }
        tx.execute(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            &[&id, &at],
        )?;
        let token = read(&mut tx)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.namespace.tokens_channel, &id],
        )?;
        tx.commit()?;
        Ok(token)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let mut client = self
            .pool()?
            .get_timeout(Duration::from_secs(2))
            .map_err(unreachable)?;
        client.simple_query("SELECT 1")?;
        Ok(())
    }

    fn save_ramp(&self, ramp: &RampRecord) -> Result<i64, StoreError> {
        let mut client = self.client()?;
        let definition = encode(&ramp.definition);
        match ramp.id {
            Some(_) => update_ramp(&mut *client, ramp),
            None => Ok(client
                .query_one(
                    "INSERT INTO ramps (environment, flag_key, definition, state, next_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
                    &[&ramp.environment, &ramp.flag, &definition, &ramp.state, &ramp.next_at, &ramp.updated_at],
                )?
                .get(0)),
        }
    }

    fn ramps(&self, query: &RampQuery) -> Result<Vec<RampRecord>, StoreError> {
        let rows = self.client()?.query(
            "SELECT id, environment, flag_key, definition, state, next_at, updated_at, revision FROM ramps
             WHERE ($1::TEXT IS NULL OR environment = $1) AND ($2::TEXT IS NULL OR flag_key = $2)
               AND (NOT $3 OR state IN ('active', 'paused'))
               AND ($4::BIGINT IS NULL OR (state = 'active' AND next_at <= $4))
             ORDER BY id DESC",
            &[&query.environment, &query.flag, &query.open_only, &query.due_at],
        )?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0)?;
                let definition: String = row.try_get(3)?;
                // As in SQLite: a definition that is not JSON comes back as a JSON string, and
                // the ramp layer marks that one ramp failed.
                let definition = serde_json::from_str(&definition).unwrap_or_else(|error| {
                    tracing::error!(id, %error, "stored ramp definition is not JSON");
                    Value::String(definition)
                });
                Ok(RampRecord {
                    id: Some(id),
                    environment: row.try_get(1)?,
                    flag: row.try_get(2)?,
                    definition,
                    state: row.try_get(4)?,
                    next_at: row.try_get(5)?,
                    updated_at: row.try_get(6)?,
                    revision: row.try_get(7)?,
                })
            })
            .collect()
    }

    fn record_event(
        &self,
        environment: &str,
        flag: Option<&str>,
        operation: Operation,
        details: &Value,
        by: &Attribution,
    ) -> Result<ChangeRecord, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // The environment may be gone (the event is about what it left behind): version 0.
        let version = read_environment(&mut tx, environment, false)?.map_or(0, |env| env.version);
        let statement = tx.prepare(INSERT_CHANGE)?;
        let record = append_change(
            &mut tx,
            &statement,
            environment,
            version,
            flag,
            operation,
            details,
            &Value::Null,
            by,
        )?;
        tx.commit()?;
        Ok(record)
    }
    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let rows = self.client()?.query(
            "SELECT environment, spec, status, generation FROM sources ORDER BY environment",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                source_record(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                )
            })
            .collect()
    }

    fn source(&self, environment: &str) -> Result<Option<SourceRecord>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT spec, status, generation FROM sources WHERE environment = $1",
            &[&environment],
        )?;
        row.map(|row| {
            source_record(
                environment.to_owned(),
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
            )
        })
        .transpose()
    }

    fn source_baseline(&self, environment: &str) -> Result<Option<Value>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT baseline FROM sources WHERE environment = $1",
            &[&environment],
        )?;
        let text: Option<String> = match row {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        text.map(|text| {
            decode(&text, || {
                format!("the Git baseline of environment {environment:?}")
            })
        })
        .transpose()
    }

    fn bind_source(
        &self,
        environment: &str,
        spec: &Value,
        status: &Value,
    ) -> Result<i64, StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        if tx
            .query_opt(
                "SELECT 1 FROM environments WHERE name = $1 FOR UPDATE",
                &[&environment],
            )?
            .is_none()
        {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
        }
        let generation: i64 = tx
            .query_one(
                "INSERT INTO sources (environment, spec, status, baseline, generation) VALUES ($1, $2, $3, NULL, 1)
                 ON CONFLICT (environment) DO UPDATE SET spec = excluded.spec, status = excluded.status,
                     baseline = NULL, generation = sources.generation + 1
                 RETURNING generation",
                &[&environment, &encode(spec), &encode(status)],
            )?
            .get(0);
        tx.commit()?;
        Ok(generation)
    }

    fn unbind_source(&self, environment: &str) -> Result<bool, StoreError> {
        Ok(self.client()?.execute(
            "DELETE FROM sources WHERE environment = $1",
            &[&environment],
        )? > 0)
    }

    fn add_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let mut transaction = client.transaction()?;
        let insert = transaction.prepare(
            "INSERT INTO usage (environment, flag_key, variant, hour, count, last_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (environment, flag_key, variant, hour) DO UPDATE SET
               count = LEAST(usage.count + EXCLUDED.count, $7),
               last_at = GREATEST(usage.last_at, EXCLUDED.last_at)",
        )?;
        for row in rows {
            transaction.execute(
                &insert,
                &[
                    &row.environment,
                    &row.flag,
                    &row.variant,
                    &row.hour,
                    &row.count.clamp(0, super::MAX_USAGE_COUNT),
                    &row.last_at,
                    &super::MAX_USAGE_COUNT,
                ],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn usage(
        &self,
        environment: &str,
        flag: &str,
        since: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let rows = self.client()?.query(
            "SELECT variant, hour, count, last_at FROM usage
             WHERE environment = $1 AND flag_key = $2 AND hour >= $3
             ORDER BY hour, variant",
            &[&environment, &flag, &hour_of(since)],
        )?;
        Ok(rows
            .iter()
            .map(|row| UsageRecord {
                environment: environment.to_owned(),
                flag: flag.to_owned(),
                variant: row.get(0),
                hour: row.get(1),
                count: row.get(2),
                last_at: row.get(3),
            })
            .collect())
    }

    fn usage_summary(
        &self,
        environment: &str,
        recent: i64,
    ) -> Result<Vec<UsageSummary>, StoreError> {
        let rows = self.client()?.query(
            "SELECT flag_key, MAX(last_at), SUM(CASE WHEN hour >= $2 THEN count ELSE 0 END)::BIGINT
             FROM usage WHERE environment = $1 GROUP BY flag_key ORDER BY flag_key",
            &[&environment, &hour_of(recent)],
        )?;
        Ok(rows
            .iter()
            .map(|row| UsageSummary {
                flag: row.get(0),
                last_at: row.get(1),
                recent: row.get(2),
            })
            .collect())
    }

    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        Ok(self
            .client()?
            .execute("DELETE FROM usage WHERE hour + 3600 <= $1", &[&before])?)
    }

    fn save_source_status(
        &self,
        environment: &str,
        generation: i64,
        status: &Value,
        baseline: Option<&Value>,
    ) -> Result<bool, StoreError> {
        let updated = self.client()?.execute(
            "UPDATE sources SET status = $3, baseline = COALESCE($4, baseline)
             WHERE environment = $1 AND generation = $2",
            &[
                &environment,
                &generation,
                &encode(status),
                &baseline.map(encode),
            ],
        )?;
        Ok(updated > 0)
    }
}

/// Everything a store holds, for `flagd-server migrate` (SQLite to PostgreSQL).
#[derive(Debug, Default)]
pub struct Import {
    /// Environments, with their versions.
    pub environments: Vec<Environment>,
    /// Every flag of every environment.
    pub flags: Vec<StoredFlag>,
    /// The whole change log (audit and resume log), oldest first; ids are kept.
    pub changes: Vec<ChangeRecord>,
    /// Tokens (hashes only), revoked ones included.
    pub tokens: Vec<TokenRecord>,
    /// Ramps, with their ids and revisions.
    pub ramps: Vec<RampRecord>,
    /// Git source bindings, with their status, and each one's baseline.
    pub sources: Vec<(SourceRecord, Option<Value>)>,
}

impl PostgresStore {
    /// Copies `data` into this store in one transaction, keeping versions and ids (so stream
    /// clients resume across the move, and audit cursors stay valid). Refused unless this store
    /// is fresh: nothing but the empty `default` environment.
    pub fn import(&self, data: &Import) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let count = |tx: &mut Transaction<'_>, sql: &str| -> Result<i64, StoreError> {
            Ok(tx.query_one(sql, &[])?.get(0))
        };
        let held = [
            ("flags", count(&mut tx, "SELECT COUNT(*) FROM flags")?),
            (
                "audit records",
                count(&mut tx, "SELECT COUNT(*) FROM changes")?,
            ),
            ("tokens", count(&mut tx, "SELECT COUNT(*) FROM tokens")?),
            ("ramps", count(&mut tx, "SELECT COUNT(*) FROM ramps")?),
            (
                "environments besides an empty default",
                count(
                    &mut tx,
                    "SELECT COUNT(*) FROM environments WHERE name <> 'default' OR version <> 0",
                )?,
            ),
        ];
        if let Some((what, n)) = held.iter().find(|(_, n)| *n > 0) {
            return Err(StoreError::TargetNotEmpty(format!("it has {n} {what}")));
        }
        tx.execute("DELETE FROM environments", &[])?;
        for env in &data.environments {
            tx.execute(
                "INSERT INTO environments (name, version, metadata, evaluators, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&env.name, &env.version, &encode(&env.metadata), &encode(&env.evaluators), &env.created_at],
            )?;
        }
        for flag in &data.flags {
            tx.execute(
                &format!("INSERT INTO flags ({FLAG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[
                    &flag.environment,
                    &flag.key,
                    &encode(&flag.flag),
                    &flag.version,
                    &flag.created_at,
                    &flag.updated_at,
                    &flag.updated_by,
                ],
            )?;
        }
        for change in &data.changes {
            tx.execute(
                &format!("INSERT INTO changes ({CHANGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
                &[&change.id, &change.environment, &change.version, &change.flag, &change.operation.as_str(),
                  &encode(&change.before), &encode(&change.after), &change.actor, &change.at, &change.message],
            )?;
        }
        for token in &data.tokens {
            insert_token_row(&mut tx, &self.namespace, token)?;
        }
        for ramp in &data.ramps {
            tx.execute(
                "INSERT INTO ramps (id, environment, flag_key, definition, state, next_at, created_at, updated_at, revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                &[&ramp.id, &ramp.environment, &ramp.flag, &encode(&ramp.definition), &ramp.state, &ramp.next_at, &ramp.updated_at, &ramp.revision],
            )?;
        }
        for (source, baseline) in &data.sources {
            tx.execute(
                "INSERT INTO sources (environment, spec, status, baseline, generation) VALUES ($1, $2, $3, $4, $5)",
                &[&source.environment, &encode(&source.spec), &encode(&source.status),
                  &baseline.as_ref().map(encode), &source.generation],
            )?;
        }
        // New rows continue after the copied ids.
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('changes', 'id'), COALESCE((SELECT MAX(id) FROM changes), 0) + 1, false);
             SELECT setval(pg_get_serial_sequence('ramps', 'id'), COALESCE((SELECT MAX(id) FROM ramps), 0) + 1, false);",
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_say_why_without_the_password() {
        // Only meaningful with a database to be refused by.
        let Some(schema) = crate::testing::ScratchSchema::create(
            "connection_failures_say_why_without_the_password",
        ) else {
            return;
        };
        let wrong_user =
            schema
                .url()
                .replacen("postgres://postgres@", "postgres://nosuchuser:hunter2@", 1);
        let error = PostgresStore::connect(&wrong_user, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("nosuchuser"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let no_schema = schema.url().replace(schema.name(), "flagd_no_such_schema");
        let error = PostgresStore::connect(&no_schema, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no existing schema"), "{error}");
        let refused = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", 1)
            .unwrap_err()
            .to_string();
        assert!(refused.to_lowercase().contains("refused"), "{refused}");
    }

    #[test]
    fn change_notifications_parse() {
        assert_eq!(
            parse_change("12 production"),
            Some(Notice::Changed {
                environment: "production".into(),
                version: 12
            })
        );
        assert_eq!(parse_change("x production"), None);
        assert_eq!(parse_change("12"), None);
    }

    #[test]
    fn namespaces_differ_by_schema_and_passwords_are_redacted() {
        let (a, b) = (Namespace::new("public"), Namespace::new("tenant_b"));
        assert_ne!(a.changes_channel, b.changes_channel);
        assert_ne!(a.leader_key, b.leader_key);
        assert_ne!(a.leader_key, a.migration_key);
        assert!(a.changes_channel.len() < 63);
        assert_eq!(
            redacted_url("postgres://flagd:s3cret@db:5432/flags"),
            "postgres://flagd:***@db:5432/flags"
        );
        assert!(!redacted_url("not a url s3cret").contains("s3cret"));
    }
}
