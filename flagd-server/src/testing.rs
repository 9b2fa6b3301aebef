//! Test support (used by this crate's tests, the end-to-end tests and the benches): a scratch
//! PostgreSQL schema per test, so tests against the real database run in parallel; a fake of
//! Prometheus's query API for metric analysis guards; `insert_token` for tests that need tokens.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::domain::tokens::{TokenCache, generate_id, generate_secret, hash_secret};
use crate::store::{FlagStore, Role, TokenRecord};

/// The variable naming the PostgreSQL database tests use.
pub const DATABASE_URL_VARIABLE: &str = "FLAGD_TEST_DATABASE_URL";
/// The database tests use when [`DATABASE_URL_VARIABLE`] is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Set to `1` (as `.ci/run` does) to fail, not skip, when the database is missing.
pub const REQUIRE_VARIABLE: &str = "FLAGD_REQUIRE_POSTGRES";

/// A schema of its own in the test database, dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct ScratchSchema {
    base: String,
    name: String,
}

impl ScratchSchema {
    /// A new schema, or `None` (having printed one "skipped" line naming `test`) when the test
    /// database cannot be reached. Panics instead when `FLAGD_REQUIRE_POSTGRES=1`.
    pub fn create(test: &str) -> Option<ScratchSchema> {
        let base = std::env::var(DATABASE_URL_VARIABLE)
            .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let name = format!("flagd_test_{:016x}", rand::random::<u64>());
        let created = off_runtime(&base, format!("CREATE SCHEMA {name}"));
        match created {
            Ok(()) => Some(ScratchSchema { base, name }),
            Err(error) => {
                let required = std::env::var(REQUIRE_VARIABLE).is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "{test}: PostgreSQL at {base} is required ({REQUIRE_VARIABLE}=1) but unreachable: {error}"
                );
                eprintln!(
                    "skipped: {test}: no PostgreSQL at {base} ({error}); start PostgreSQL 15 there or set {DATABASE_URL_VARIABLE}, and {REQUIRE_VARIABLE}=1 to fail instead of skipping"
                );
                None
            }
        }
    }

    /// The connection string selecting this schema (`options=-csearch_path=...`).
    pub fn url(&self) -> String {
        let mut url = self.base.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        let _ = write!(url, "options=-csearch_path%3D{}", self.name);
        url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let _ = off_runtime(&self.base, format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// Runs one statement on a thread of its own: the synchronous client must not run on an async
/// test's runtime thread.
fn off_runtime(url: &str, statement: String) -> Result<(), postgres::Error> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
        client.batch_execute(&statement)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A fake Prometheus on port 0 (`GET /api/v1/query` only): every query gets the current answer
/// (at first an empty vector) and is recorded.
#[derive(Debug)]
pub struct FakePrometheus {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    answer: Arc<Mutex<(u16, Value)>>,
    queries: Arc<Mutex<Vec<String>>>,
}

impl FakePrometheus {
    /// Starts it on the current tokio runtime.
    pub async fn start() -> std::io::Result<FakePrometheus> {
        let answer = Arc::new(Mutex::new((200, vector(&[]))));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (current, seen) = (answer.clone(), queries.clone());
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(
                move |query: axum::extract::Query<std::collections::HashMap<String, String>>| {
                    let asked = query.0.get("query").cloned().unwrap_or_default();
                    lock(&seen).push(asked);
                    let (status, body) = lock(&current).clone();
                    let status = axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    async move { (status, axum::Json(body)) }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakePrometheus {
            address,
            answer,
            queries,
        })
    }

    /// Answers with an instant vector of these sample values (none: an empty vector).
    pub fn answer(&self, values: &[&str]) {
        *lock(&self.answer) = (200, vector(values));
    }

    /// Answers 400 `bad_data` with this error.
    pub fn refuse(&self, error: &str) {
        *lock(&self.answer) = (
            400,
            json!({"status": "error", "errorType": "bad_data", "error": error}),
        );
    }

    /// The queries received, oldest first.
    pub fn queries(&self) -> Vec<String> {
        lock(&self.queries).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A successful instant-vector answer with these sample values.
pub fn vector(values: &[&str]) -> Value {
    let samples: Vec<Value> = values
        .iter()
        .map(|v| json!({"metric": {}, "value": [1.8e9, v]}))
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": samples}})
}

/// Creates a token in `store` and `tokens` (an sdk token's `environment`; an admin confined to
/// `environments` when given); returns its id and secret.
pub fn insert_token(
    store: &dyn FlagStore,
    tokens: &TokenCache,
    name: &str,
    role: Role,
    environment: Option<&str>,
    environments: Option<&[&str]>,
) -> Result<(String, String), crate::store::StoreError> {
    let secret = generate_secret(role);
    let record = TokenRecord {
        environments: environments.map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
        id: generate_id(),
        name: name.to_owned(),
        role,
        environment: environment.map(str::to_owned),
        hash: hash_secret(&secret),
        created_at: 1,
        revoked_at: None,
    };
    store.insert_token(&record)?;
    tokens.insert(record.clone());
    Ok((record.id, secret))
}
