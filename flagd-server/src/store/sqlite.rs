//! The embedded default store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! One connection behind a mutex: SQLite has a single writer anyway, and admin traffic is light
//! (evaluation never reads SQLite). Every `commit` is one transaction that writes the flags, the
//! change records and the environment version; it returns only after the commit is durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use flag_core::{Flag, Metadata};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use rusqlite_migration::{M, Migrations};
use serde_json::Value;

use super::{
    Attribution, AuditQuery, ChangeRecord, Commit, DEFAULT_ENVIRONMENT, Environment,
    EnvironmentSettings, FlagChange, FlagStore, Operation, RampQuery, RampRecord, Role,
    SourceRecord, StoreError, StoredFlag, TokenRecord, UsageRecord, UsageSummary, decode, encode,
    flag_json, hour_of, readable, source_record,
};

/// Schema migrations, applied in order at start. Never edit one that has shipped: add another.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            r#"
        CREATE TABLE environments (
            name        TEXT PRIMARY KEY,
            version     INTEGER NOT NULL DEFAULT 0,
            metadata    TEXT NOT NULL DEFAULT '{}',
            evaluators  TEXT NOT NULL DEFAULT '{}',
            created_at  INTEGER NOT NULL
        );
        CREATE TABLE flags (
            environment TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
            key         TEXT NOT NULL,
            definition  TEXT NOT NULL,
            version     INTEGER NOT NULL,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL,
            updated_by  TEXT NOT NULL,
            PRIMARY KEY (environment, key)
        );
        -- Append-only: the audit log and the stream's resume log. No foreign key, so the history
        -- of a deleted environment stays.
        CREATE TABLE changes (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            environment TEXT NOT NULL,
            version     INTEGER NOT NULL,
            flag_key    TEXT,
            operation   TEXT NOT NULL,
            before      TEXT NOT NULL,
            after       TEXT NOT NULL,
            actor       TEXT NOT NULL,
            at          INTEGER NOT NULL,
            message     TEXT
        );
        CREATE INDEX changes_by_environment ON changes (environment, version);
        CREATE INDEX changes_by_flag ON changes (environment, flag_key, id);
        CREATE TABLE tokens (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('admin', 'sdk')),
            environment TEXT,
            hash        BLOB NOT NULL UNIQUE,
            created_at  INTEGER NOT NULL,
            revoked_at  INTEGER
        );
        "#,
        ),
        M::up(
            r#"
        -- Progressive rollouts. The state machine lives in `ramp.rs`; this is its memory.
        CREATE TABLE ramps (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            environment TEXT NOT NULL,
            flag_key    TEXT NOT NULL,
            definition  TEXT NOT NULL,
            state       TEXT NOT NULL,
            next_at     INTEGER,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL
        );
        CREATE INDEX ramps_by_flag ON ramps (environment, flag_key, id);
        CREATE INDEX ramps_due ON ramps (state, next_at);
        "#,
        ),
        M::up(
            r#"
        -- Compare-and-set for ramp saves: a step is applied at most once.
        ALTER TABLE ramps ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
        "#,
        ),
        M::up(
            r#"
        -- GitOps: an environment's Git source and its reconciler's memory (JSON, see gitops.rs).
        CREATE TABLE sources (
            environment TEXT PRIMARY KEY,
            spec        TEXT NOT NULL,
            status      TEXT NOT NULL,
            baseline    TEXT,
            generation  INTEGER NOT NULL DEFAULT 1
        );
        "#,
        ),
        M::up(
            r#"
        -- Environment-scoped admin tokens: a JSON array of environment names; NULL = every one.
        ALTER TABLE tokens ADD COLUMN environments TEXT;
        "#,
        ),
        M::up(
            r#"
        -- Evaluation telemetry: counts per environment, flag, variant and hour (domain/usage.rs).
        CREATE TABLE usage (
            environment TEXT NOT NULL,
            flag_key    TEXT NOT NULL,
            variant     TEXT NOT NULL,
            hour        INTEGER NOT NULL,
            count       INTEGER NOT NULL,
            last_at     INTEGER NOT NULL,
            PRIMARY KEY (environment, flag_key, variant, hour)
        );
        CREATE INDEX usage_by_hour ON usage (hour);
        "#,
        ),
        M::up(
            r#"
        -- The digest of the commit at digest_version (store::commit_digest), so a start does not
        -- re-read and re-hash that commit; used only while digest_version = version.
        ALTER TABLE environments ADD COLUMN digest TEXT;
        ALTER TABLE environments ADD COLUMN digest_version INTEGER;
        "#,
        ),
    ])
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, migrates it, and makes sure the `default`
    /// environment exists in a fresh store.
    pub fn open(path: &Path, now: i64) -> Result<SqliteStore, StoreError> {
        let connection = Connection::open(path)?;
        SqliteStore::init(connection, now)
    }

    /// An in-memory store (for tests).
    pub fn in_memory(now: i64) -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?, now)
    }

    fn init(mut connection: Connection, now: i64) -> Result<SqliteStore, StoreError> {
        // WAL lets readers proceed during a write; FULL syncs the WAL on every commit, so an
        // acknowledged write survives power loss, not just a process crash.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut connection)?;
        let fresh: i64 =
            connection.query_row("SELECT COUNT(*) FROM environments", [], |row| row.get(0))?;
        let has_history: i64 =
            connection.query_row("SELECT COUNT(*) FROM changes", [], |row| row.get(0))?;
        if fresh == 0 && has_history == 0 {
            connection.execute(
                "INSERT INTO environments (name, created_at) VALUES (?1, ?2)",
                params![DEFAULT_ENVIRONMENT, now],
            )?;
        }
        Ok(SqliteStore {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (rusqlite
        // rolls back on drop), so the connection is still usable: recover from poisoning.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn read_environment(tx: &Connection, name: &str) -> Result<Option<Environment>, StoreError> {
    let row = tx
        .query_row(
            "SELECT name, version, metadata, evaluators, created_at, \
             CASE WHEN digest_version = version THEN digest END \
             FROM environments WHERE name = ?1",
            params![name],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((name, version, metadata, evaluators, created_at, digest)) = row else {
        return Ok(None);
    };
    let metadata: Metadata = decode(&metadata, || format!("environment {name:?} metadata"))?;
    let evaluators: BTreeMap<String, Value> =
        decode(&evaluators, || format!("environment {name:?} evaluators"))?;
    Ok(Some(Environment {
        name,
        version,
        metadata,
        evaluators,
        created_at,
        digest,
    }))
}

type FlagRow = (String, String, String, i64, i64, i64, String);

/// The `FLAG_COLUMNS` of a row, still encoded.
fn flag_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<FlagRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn flag_from_row(row: FlagRow) -> Result<StoredFlag, StoreError> {
    let (environment, key, definition, version, created_at, updated_at, updated_by) = row;
    let flag: Flag = decode(&definition, || {
        format!("flag {key:?} in environment {environment:?}")
    })?;
    Ok(StoredFlag {
        environment,
        key,
        flag,
        version,
        created_at,
        updated_at,
        updated_by,
    })
}

const FLAG_COLUMNS: &str =
    "environment, key, definition, version, created_at, updated_at, updated_by";

fn read_flag(
    tx: &Connection,
    environment: &str,
    key: &str,
) -> Result<Option<StoredFlag>, StoreError> {
    let row = tx
        .query_row(
            &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE environment = ?1 AND key = ?2"),
            params![environment, key],
            flag_columns,
        )
        .optional()?;
    row.map(flag_from_row).transpose()
}

fn read_flags(tx: &Connection, environment: &str) -> Result<Vec<StoredFlag>, StoreError> {
    Ok(decode_flag_rows(
        environment,
        read_flag_rows(tx, environment)?,
    ))
}

/// An environment's flag rows, still encoded: decoding can then happen without the connection.
fn read_flag_rows(tx: &Connection, environment: &str) -> Result<Vec<FlagRow>, StoreError> {
    let mut statement = tx.prepare(&format!(
        "SELECT {FLAG_COLUMNS} FROM flags WHERE environment = ?1 ORDER BY key"
    ))?;
    let rows = statement.query_map(params![environment], flag_columns)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn decode_flag_rows(environment: &str, rows: Vec<FlagRow>) -> Vec<StoredFlag> {
    let mut flags = Vec::with_capacity(rows.len());
    for row in rows {
        // A flag row that does not decode is left out (and logged), never an error for the
        // whole environment: the others must stay listable, exportable and servable.
        match flag_from_row(row) {
            Ok(flag) => flags.push(flag),
            Err(error) => {
                tracing::error!(environment, %error, "stored flag does not decode; left out")
            }
        }
    }
    flags
}

#[allow(clippy::too_many_arguments)]
fn append_change(
    tx: &Transaction<'_>,
    environment: &str,
    version: i64,
    flag: Option<&str>,
    operation: Operation,
    before: &Value,
    after: &Value,
    by: &Attribution,
) -> Result<ChangeRecord, StoreError> {
    tx.execute(
        "INSERT INTO changes (environment, version, flag_key, operation, before, after, actor, at, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![environment, version, flag, operation.as_str(), encode(before), encode(after), by.actor, by.at, by.message],
    )?;
    Ok(ChangeRecord {
        id: tx.last_insert_rowid(),
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

fn read_changes(
    connection: &Connection,
    filter: &str,
    parameters: &[&dyn rusqlite::ToSql],
) -> Result<Vec<ChangeRecord>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT id, environment, version, flag_key, operation, before, after, actor, at, message FROM changes {filter}"
    ))?;
    let rows = statement.query_map(parameters, |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, String>(5)?,
            row.get::<_, String>(6)?,
            row.get::<_, String>(7)?,
            row.get::<_, i64>(8)?,
            row.get::<_, Option<String>>(9)?,
        ))
    })?;
    rows.map(|row| {
        let (id, environment, version, flag, operation, before, after, actor, at, message) = row?;
        let operation = Operation::parse(&operation);
        if let Operation::Other(name) = &operation {
            tracing::warn!(
                id,
                operation = name,
                "stored change record has an operation this build does not know"
            );
        }
        Ok(ChangeRecord {
            before: readable(id, &before),
            after: readable(id, &after),
            id,
            environment,
            version,
            flag,
            operation,
            actor,
            at,
            message,
        })
    })
    .collect()
}

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = row.get(2)?;
    let hash: Vec<u8> = row.get(4)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: Role::from_stored(&role),
        environment: row.get(3)?,
        hash: super::token_hash(&hash),
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
        environments: super::scope_from_column(row.get(7)?),
    })
}

const TOKEN_COLUMNS: &str =
    "id, name, role, environment, hash, created_at, revoked_at, environments";

/// The body of a commit, inside the caller's transaction (which the caller commits).
fn commit_in(
    tx: &Transaction<'_>,
    environment: &str,
    changes: &[FlagChange],
    settings: Option<&EnvironmentSettings>,
    by: &Attribution,
) -> Result<Commit, StoreError> {
    let env = read_environment(tx, environment)?
        .ok_or_else(|| StoreError::UnknownEnvironment(environment.to_owned()))?;
    let version = env.version + 1;

    // Check every precondition before writing anything.
    let current =
        super::check_preconditions(environment, changes, |key| read_flag(tx, environment, key))?;

    let mut records = Vec::with_capacity(changes.len() + 1);
    if let Some(settings) = settings {
        let before = serde_json::json!({"metadata": env.metadata, "$evaluators": env.evaluators});
        let after =
            serde_json::json!({"metadata": settings.metadata, "$evaluators": settings.evaluators});
        tx.execute(
            "UPDATE environments SET metadata = ?2, evaluators = ?3 WHERE name = ?1",
            params![
                environment,
                encode(&settings.metadata),
                encode(&settings.evaluators)
            ],
        )?;
        records.push(append_change(
            tx,
            environment,
            version,
            None,
            Operation::UpdateSettings,
            &before,
            &after,
            by,
        )?);
    }
    for (change, existing) in changes.iter().zip(current) {
        match change {
            FlagChange::Upsert { key, flag, .. } => {
                let definition = encode(flag);
                let created_at = existing.as_ref().map_or(by.at, |f| f.created_at);
                tx.execute(
                    "INSERT INTO flags (environment, key, definition, version, created_at, updated_at, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (environment, key) DO UPDATE SET
                       definition = excluded.definition, version = excluded.version,
                       updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    params![environment, key, definition, version, created_at, by.at, by.actor],
                )?;
                let before = existing
                    .as_ref()
                    .map_or(Value::Null, |f| flag_json(&f.flag));
                let operation = if existing.is_some() {
                    Operation::Update
                } else {
                    Operation::Create
                };
                records.push(append_change(
                    tx,
                    environment,
                    version,
                    Some(key),
                    operation,
                    &before,
                    &flag_json(flag),
                    by,
                )?);
            }
            FlagChange::Delete { key, .. } => {
                tx.execute(
                    "DELETE FROM flags WHERE environment = ?1 AND key = ?2",
                    params![environment, key],
                )?;
                let before = existing
                    .as_ref()
                    .map_or(Value::Null, |f| flag_json(&f.flag));
                records.push(append_change(
                    tx,
                    environment,
                    version,
                    Some(key),
                    Operation::Delete,
                    &before,
                    &Value::Null,
                    by,
                )?);
            }
        }
    }
    let commit = Commit::new(version, records);
    tx.execute(
        "UPDATE environments SET version = ?2, digest = ?3, digest_version = ?2 WHERE name = ?1",
        params![environment, version, commit.digest],
    )?;
    Ok(commit)
}

fn insert_token_row(connection: &Connection, token: &TokenRecord) -> Result<(), StoreError> {
    connection.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            token.id,
            token.name,
            token.role.as_str(),
            token.environment,
            token.hash.as_slice(),
            token.created_at,
            token.revoked_at,
            super::scope_column(token.environments.as_deref())
        ],
    )?;
    Ok(())
}

/// Saves a stored ramp if its revision is still `ramp.revision` (compare-and-set).
fn update_ramp(connection: &Connection, ramp: &RampRecord) -> Result<i64, StoreError> {
    let id = ramp
        .id
        .ok_or_else(|| StoreError::Setup("a ramp without an id cannot be updated".into()))?;
    let updated = connection.execute(
        "UPDATE ramps SET definition = ?2, state = ?3, next_at = ?4, updated_at = ?5, revision = revision + 1
         WHERE id = ?1 AND revision = ?6",
        params![id, encode(&ramp.definition), ramp.state, ramp.next_at, ramp.updated_at, ramp.revision],
    )?;
    if updated == 0 {
        return Err(StoreError::RampConflict {
            id,
            expected: ramp.revision,
        });
    }
    Ok(id)
}

impl FlagStore for SqliteStore {
    fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        let connection = self.lock();
        let names: Vec<String> = connection
            .prepare("SELECT name FROM environments ORDER BY name")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        names
            .iter()
            .filter_map(|name| read_environment(&connection, name).transpose())
            .collect()
    }

    fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        read_environment(&self.lock(), name)
    }

    fn create_environment(&self, name: &str, by: &Attribution) -> Result<Environment, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if read_environment(&tx, name)?.is_some() {
            return Err(StoreError::EnvironmentExists(name.to_owned()));
        }
        // Continue the version sequence of an earlier environment of the same name, so a stream
        // client holding an old version can never mistake new history for old.
        let previous: Option<i64> = tx.query_row(
            "SELECT MAX(version) FROM changes WHERE environment = ?1",
            params![name],
            |row| row.get(0),
        )?;
        let version = previous.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO environments (name, version, created_at) VALUES (?1, ?2, ?3)",
            params![name, version, by.at],
        )?;
        append_change(
            &tx,
            name,
            version,
            None,
            Operation::CreateEnvironment,
            &Value::Null,
            &serde_json::json!({"name": name}),
            by,
        )?;
        let environment = read_environment(&tx, name)?
            .ok_or_else(|| StoreError::UnknownEnvironment(name.to_owned()))?;
        tx.commit()?;
        Ok(environment)
    }

    fn delete_environment(
        &self,
        name: &str,
        force: bool,
        by: &Attribution,
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let environment = read_environment(&tx, name)?
            .ok_or_else(|| StoreError::UnknownEnvironment(name.to_owned()))?;
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM flags WHERE environment = ?1",
            params![name],
            |row| row.get(0),
        )?;
        if count > 0 && !force {
            return Err(StoreError::EnvironmentNotEmpty {
                name: name.to_owned(),
                flags: count,
            });
        }
        let flags = read_flags(&tx, name)?;
        let before = serde_json::json!({
            "metadata": environment.metadata,
            "$evaluators": environment.evaluators,
            "flags": flags.iter().map(|f| (f.key.clone(), flag_json(&f.flag))).collect::<serde_json::Map<_, _>>(),
        });
        append_change(
            &tx,
            name,
            environment.version + 1,
            None,
            Operation::DeleteEnvironment,
            &before,
            &Value::Null,
            by,
        )?;
        tx.execute("DELETE FROM environments WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM sources WHERE environment = ?1", params![name])?;
        tx.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE environment = ?1 AND revoked_at IS NULL",
            params![name, by.at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn flags(&self, environment: &str) -> Result<Vec<StoredFlag>, StoreError> {
        let rows = {
            let connection = self.lock();
            if read_environment(&connection, environment)?.is_none() {
                return Err(StoreError::UnknownEnvironment(environment.to_owned()));
            }
            read_flag_rows(&connection, environment)?
        };
        // Decoded after the connection is released: environments loading on several threads
        // at start (`PublishingStore::new`) decode in parallel instead of taking turns.
        Ok(decode_flag_rows(environment, rows))
    }

    fn flag(&self, environment: &str, key: &str) -> Result<Option<StoredFlag>, StoreError> {
        let connection = self.lock();
        if read_environment(&connection, environment)?.is_none() {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
        }
        read_flag(&connection, environment, key)
    }

    fn commit(
        &self,
        environment: &str,
        changes: &[FlagChange],
        settings: Option<&EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<Commit, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let commit = commit_in(&tx, environment, changes, settings, by)?;
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
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        update_ramp(&tx, ramp)?;
        let commit = commit_in(&tx, environment, changes, None, by)?;
        tx.commit()?;
        Ok(commit)
    }

    fn changes(&self, query: &AuditQuery) -> Result<Vec<ChangeRecord>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        read_changes(
            &self.lock(),
            "WHERE (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR flag_key = ?2) AND (?3 IS NULL OR id < ?3)
               AND (?5 IS NULL OR environment IN (SELECT value FROM json_each(?5)))
             ORDER BY id DESC LIMIT ?4",
            params![
                query.environment,
                query.flag,
                query.before,
                limit,
                super::scope_column(query.environments.as_deref())
            ],
        )
    }

    fn changes_since(
        &self,
        environment: &str,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Audit-only events (`record_event`) change no flag: the stream never replays them.
        let audit_only = super::AUDIT_ONLY
            .iter()
            .map(|operation| format!("'{operation}'"))
            .collect::<Vec<_>>()
            .join(", ");
        read_changes(
            &self.lock(),
            &format!(
                "WHERE environment = ?1 AND version > ?2 AND operation NOT IN ({audit_only})
                 ORDER BY version, id LIMIT ?3"
            ),
            params![environment, after_version, limit],
        )
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
        ))?;
        let rows = statement.query_map([], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let connection = self.lock();
        if let Some(environment) = &token.environment
            && read_environment(&connection, environment)?.is_none()
        {
            return Err(StoreError::UnknownEnvironment(environment.clone()));
        }
        insert_token_row(&connection, token)?;
        Ok(())
    }

    fn insert_first_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        // One connection behind a mutex: the check and the insert cannot interleave with
        // another writer of this process, and the transaction covers other processes.
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: i64 = tx.query_row("SELECT COUNT(*) FROM tokens", [], |row| row.get(0))?;
        if existing > 0 {
            return Ok(false);
        }
        insert_token_row(&tx, token)?;
        tx.commit()?;
        Ok(true)
    }

    fn revoke_token(&self, id: &str, at: i64) -> Result<TokenRecord, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let read = |tx: &Transaction<'_>| {
            tx.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                params![id],
                token_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownToken(id.to_owned()))
        };
        let token = read(&tx)?;
        if token.role == Role::Admin && token.environments.is_none() && token.revoked_at.is_none() {
            let active: i64 = tx.query_row(
                "SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND environments IS NULL AND revoked_at IS NULL",
                [],
                |row| row.get(0),
            )?;
            if active <= 1 {
                return Err(StoreError::LastAdmin);
            }
        }
        tx.execute(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, at],
        )?;
        let token = read(&tx)?;
        tx.commit()?;
        Ok(token)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn save_ramp(&self, ramp: &RampRecord) -> Result<i64, StoreError> {
        let connection = self.lock();
        let definition = encode(&ramp.definition);
        match ramp.id {
            Some(_) => update_ramp(&connection, ramp),
            None => {
                connection.execute(
                    "INSERT INTO ramps (environment, flag_key, definition, state, next_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![ramp.environment, ramp.flag, definition, ramp.state, ramp.next_at, ramp.updated_at],
                )?;
                Ok(connection.last_insert_rowid())
            }
        }
    }

    fn record_event(
        &self,
        environment: &str,
        flag: Option<&str>,
        operation: Operation,
        details: &Value,
        by: &Attribution,
    ) -> Result<ChangeRecord, StoreError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        // The environment may be gone (the event is about what it left behind): version 0.
        let version = read_environment(&tx, environment)?.map_or(0, |env| env.version);
        let record = append_change(
            &tx,
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

    fn ramps(&self, query: &RampQuery) -> Result<Vec<RampRecord>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, environment, flag_key, definition, state, next_at, updated_at, revision FROM ramps
             WHERE (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR flag_key = ?2)
               AND (?3 = 0 OR state IN ('active', 'paused'))
               AND (?4 IS NULL OR (state = 'active' AND next_at <= ?4))
             ORDER BY id DESC",
        )?;
        let rows = statement.query_map(
            params![
                query.environment,
                query.flag,
                i64::from(query.open_only),
                query.due_at
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, i64>(7)?,
                ))
            },
        )?;
        rows.map(|row| {
            let (id, environment, flag, definition, state, next_at, updated_at, revision) = row?;
            // A definition that is not JSON comes back as a JSON string: the ramp layer marks
            // that one ramp failed instead of every ramp query failing.
            let definition = serde_json::from_str(&definition).unwrap_or_else(|error| {
                tracing::error!(id, %error, "stored ramp definition is not JSON");
                Value::String(definition)
            });
            Ok(RampRecord {
                definition,
                id: Some(id),
                environment,
                flag,
                state,
                next_at,
                updated_at,
                revision,
            })
        })
        .collect()
    }
    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT environment, spec, status, generation FROM sources ORDER BY environment",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        let mut sources = Vec::new();
        for row in rows {
            let (environment, spec, status, generation) = row?;
            sources.push(source_record(environment, &spec, &status, generation)?);
        }
        Ok(sources)
    }

    fn source(&self, environment: &str) -> Result<Option<SourceRecord>, StoreError> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT spec, status, generation FROM sources WHERE environment = ?1",
                params![environment],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(spec, status, generation)| {
            source_record(environment.to_owned(), &spec, &status, generation)
        })
        .transpose()
    }

    fn source_baseline(&self, environment: &str) -> Result<Option<Value>, StoreError> {
        let connection = self.lock();
        let text: Option<Option<String>> = connection
            .query_row(
                "SELECT baseline FROM sources WHERE environment = ?1",
                params![environment],
                |row| row.get(0),
            )
            .optional()?;
        text.flatten()
            .map(|text| {
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
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        if read_environment(&tx, environment)?.is_none() {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
        }
        let generation = tx.query_row(
            "INSERT INTO sources (environment, spec, status, baseline, generation) VALUES (?1, ?2, ?3, NULL, 1)
             ON CONFLICT (environment) DO UPDATE SET spec = excluded.spec, status = excluded.status,
                 baseline = NULL, generation = sources.generation + 1
             RETURNING generation",
            params![environment, encode(spec), encode(status)],
            |row| row.get(0),
        )?;
        tx.commit()?;
        Ok(generation)
    }

    fn unbind_source(&self, environment: &str) -> Result<bool, StoreError> {
        let connection = self.lock();
        Ok(connection.execute(
            "DELETE FROM sources WHERE environment = ?1",
            params![environment],
        )? > 0)
    }

    fn add_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO usage (environment, flag_key, variant, hour, count, last_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (environment, flag_key, variant, hour) DO UPDATE SET
                   count = MIN(count + MIN(excluded.count, ?7), ?7),
                   last_at = MAX(last_at, excluded.last_at)",
            )?;
            for row in rows {
                insert.execute(params![
                    row.environment,
                    row.flag,
                    row.variant,
                    row.hour,
                    row.count.clamp(0, super::MAX_USAGE_COUNT),
                    row.last_at,
                    super::MAX_USAGE_COUNT
                ])?;
            }
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
        let connection = self.lock();
        let mut query = connection.prepare_cached(
            "SELECT variant, hour, count, last_at FROM usage
             WHERE environment = ?1 AND flag_key = ?2 AND hour >= ?3
             ORDER BY hour, variant",
        )?;
        let rows = query.query_map(params![environment, flag, hour_of(since)], |row| {
            Ok(UsageRecord {
                environment: environment.to_owned(),
                flag: flag.to_owned(),
                variant: row.get(0)?,
                hour: row.get(1)?,
                count: row.get(2)?,
                last_at: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn usage_summary(
        &self,
        environment: &str,
        recent: i64,
    ) -> Result<Vec<UsageSummary>, StoreError> {
        let connection = self.lock();
        let mut query = connection.prepare_cached(
            "SELECT flag_key, MAX(last_at), SUM(CASE WHEN hour >= ?2 THEN count ELSE 0 END)
             FROM usage WHERE environment = ?1 GROUP BY flag_key ORDER BY flag_key",
        )?;
        let rows = query.query_map(params![environment, hour_of(recent)], |row| {
            Ok(UsageSummary {
                flag: row.get(0)?,
                last_at: row.get(1)?,
                recent: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM usage WHERE hour + 3600 <= ?1", params![before])?;
        Ok(deleted as u64)
    }

    fn save_source_status(
        &self,
        environment: &str,
        generation: i64,
        status: &Value,
        baseline: Option<&Value>,
    ) -> Result<bool, StoreError> {
        let connection = self.lock();
        let updated = connection.execute(
            "UPDATE sources SET status = ?3, baseline = COALESCE(?4, baseline)
             WHERE environment = ?1 AND generation = ?2",
            params![
                environment,
                generation,
                encode(status),
                baseline.map(encode)
            ],
        )?;
        Ok(updated > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }
}
