//! Admin write latency and throughput: a real server (SQLite in WAL mode, `synchronous=FULL`,
//! on the data directory's disk) over loopback HTTP. Prints a report.
//!
//! Run: `cargo bench -p benches --bench server_writes`

use std::time::{Duration, Instant};

use flagd_server::{Server, ServerOptions};
use serde_json::json;

const ADMIN: &str = "bench-admin-token-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, wall: Duration) {
    samples.sort();
    let n = samples.len();
    println!(
        "{name:<44} n={n:<5} p50={:>8.2?} p99={:>8.2?} max={:>8.2?} throughput={:>7.0}/s",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[n - 1],
        n as f64 / wall.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DATA_DIR").unwrap_or_else(|_| ".".to_owned()))
            .expect("temp dir");
        let options = ServerOptions {
            admin_token: Some(ADMIN.to_owned()),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(5),
            ..ServerOptions::new(dir.path().to_owned())
        };
        let server = Server::open(options, flagd_server::state::system_clock()).await.expect("server opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 1000], ["off", 9000]]}});

        println!("admin writes over loopback HTTP, SQLite WAL + synchronous=FULL in {}", dir.path().display());
        // Warm up connections and the page cache.
        for i in 0..20 {
            let _ = client.put(format!("{base}/api/v1/environments/default/flags/warm-{i}"))
                .bearer_auth(ADMIN).json(&flag).send().await;
        }

        for (label, distinct) in [("PUT create (sequential)", true), ("PUT replace same flag (sequential)", false)] {
            let mut samples = Vec::new();
            let started = Instant::now();
            for i in 0..500 {
                let key = if distinct { format!("seq-{i}") } else { "hot".to_owned() };
                let t = Instant::now();
                let response = client.put(format!("{base}/api/v1/environments/default/flags/{key}"))
                    .bearer_auth(ADMIN).json(&flag).send().await.expect("request");
                assert!(response.status().is_success(), "{}", response.status());
                samples.push(t.elapsed());
            }
            report(label, samples, started.elapsed());
        }

        for writers in [4usize, 16] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let (client, base, flag) = (client.clone(), base.clone(), flag.clone());
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    for i in 0..(1000 / writers) {
                        let t = Instant::now();
                        let response = client.put(format!("{base}/api/v1/environments/default/flags/c{writers}-{w}-{i}"))
                            .bearer_auth(ADMIN).json(&flag).send().await.expect("request");
                        assert!(response.status().is_success());
                        samples.push(t.elapsed());
                    }
                    samples
                }));
            }
            let mut samples = Vec::new();
            for task in tasks {
                samples.extend(task.await.expect("writer"));
            }
            report(&format!("PUT create ({writers} concurrent writers)"), samples, started.elapsed());
        }

        let mut samples = Vec::new();
        let started = Instant::now();
        for i in 0..500 {
            let t = Instant::now();
            let response = client.post(format!("{base}/api/v1/environments/default/flags/hot/rollout"))
                .bearer_auth(ADMIN).json(&json!({"percentage": f64::from(i % 100)})).send().await.expect("request");
            assert!(response.status().is_success());
            samples.push(t.elapsed());
        }
        report("POST rollout (read-modify-write)", samples, started.elapsed());

        let mut samples = Vec::new();
        let started = Instant::now();
        for _ in 0..500 {
            let t = Instant::now();
            let response = client.get(format!("{base}/api/v1/environments/default/flags/hot"))
                .bearer_auth(ADMIN).send().await.expect("request");
            assert!(response.status().is_success());
            samples.push(t.elapsed());
        }
        report("GET flag (read)", samples, started.elapsed());

        let _ = stop.send(());
        let _ = task.await;
    });
}
