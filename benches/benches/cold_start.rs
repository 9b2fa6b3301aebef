//! Cold start: how long `Server::open` takes over a store holding 10 environments of 10,000
//! flags each (the mix of `benches::large_document`), until the server is ready to serve (every
//! environment read and compiled into the hub). Prints a report.
//!
//! Run: `cargo bench -p benches --bench cold_start` (`BENCH_DATA_DIR` picks the disk; default
//! the current directory).

use std::time::{Duration, Instant};

use flagd_server::store::{Attribution, FlagChange, FlagStore, SqliteStore};
use flagd_server::{Server, ServerOptions};

const ENVIRONMENTS: usize = 10;
const FLAGS: usize = 10_000;
const RUNS: usize = 5;

fn main() {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DATA_DIR").unwrap_or_else(|_| ".".to_owned()))
            .expect("temp dir");
    let by = Attribution {
        actor: "bench".to_owned(),
        message: None,
        at: 1_700_000_000,
    };
    let document = benches::large_document(FLAGS);
    let flags: Vec<FlagChange> = document["flags"]
        .as_object()
        .expect("flags")
        .iter()
        .map(|(key, flag)| FlagChange::Upsert {
            key: key.clone(),
            flag: serde_json::from_value(flag.clone()).expect("a flag"),
            expected_version: None,
        })
        .collect();
    let filling = Instant::now();
    {
        let store = SqliteStore::open(&dir.path().join("flags.db"), 1_700_000_000).expect("store");
        for e in 0..ENVIRONMENTS {
            let name = format!("env-{e}");
            store.create_environment(&name, &by).expect("environment");
            store.commit(&name, &flags, None, &by).expect("commit");
        }
    }
    println!(
        "store: {ENVIRONMENTS} environments x {FLAGS} flags written in {:.1?} ({})",
        filling.elapsed(),
        dir.path().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut samples: Vec<Duration> = Vec::new();
    for _ in 0..RUNS {
        let options = ServerOptions {
            admin_token: Some("cold-start-bench-admin-token".to_owned()),
            ..ServerOptions::new(dir.path().to_owned())
        };
        let started = Instant::now();
        let server = runtime
            .block_on(Server::open(options, flagd_server::state::system_clock()))
            .expect("server opens");
        let elapsed = started.elapsed();
        let loaded = (0..ENVIRONMENTS)
            .filter(|e| server.state().hub.snapshot(&format!("env-{e}")).is_some())
            .count();
        assert_eq!(loaded, ENVIRONMENTS, "every environment is in the hub");
        samples.push(elapsed);
        drop(server);
    }
    samples.sort();
    println!(
        "Server::open to ready, {} runs: min {:.1?}, median {:.1?}, max {:.1?} (target <= 300 ms)",
        RUNS,
        samples[0],
        samples[RUNS / 2],
        samples[RUNS - 1]
    );
}
