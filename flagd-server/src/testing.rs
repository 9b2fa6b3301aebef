//! Test support (used by this crate's tests, the end-to-end tests and the benches): a scratch
//! PostgreSQL schema per test, so tests against the real database run in parallel.

use std::fmt::Write as _;

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
