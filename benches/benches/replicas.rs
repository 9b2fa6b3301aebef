//! Replicas on one PostgreSQL database: a write on one replica → the patch received by clients
//! spread over three replicas (p50/p99), and OFREP throughput with one replica vs three. Prints
//! a report.
//!
//! Run: `cargo bench -p benches --bench replicas` (optionally `-- 1000` for another client
//! count). Needs PostgreSQL (`FLAGD_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`); each run uses a scratch schema.
//!
//! Everything shares this machine's cores: the replicas, PostgreSQL and the clients. Three
//! replicas on two cores show the cost of replication, not its scaling; on separate machines each
//! replica brings its own cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flagd_server::testing::ScratchSchema;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tests::ServerProcess;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const ADMIN: &str = "bench-admin-token-0123456789";
const WRITES: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect_clients(
    bases: &[String],
    clients: usize,
    sdk: &str,
) -> (
    mpsc::UnboundedReceiver<(i64, Instant)>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (received, receipts) = mpsc::unbounded_channel::<(i64, Instant)>();
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let url = format!(
            "{}/api/v1/stream",
            bases[i % bases.len()].replace("http://", "ws://")
        );
        let (sdk, received, connected) = (sdk.to_owned(), received.clone(), connected.clone());
        tasks.push(tokio::spawn(async move {
            let mut request = url.into_client_request().expect("request");
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {sdk}").parse().expect("header"),
            );
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("connect");
            connected.add_permits(1);
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let at = Instant::now();
                    if text.contains("\"type\":\"patch\"") {
                        let version = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|m| m["version"].as_i64())
                            .unwrap_or(-1);
                        let _ = received.send((version, at));
                    }
                }
            }
        }));
    }
    connected
        .acquire_many(clients as u32)
        .await
        .expect("semaphore")
        .forget();
    (receipts, tasks)
}

async fn propagation(bases: &[String], clients: usize, sdk: &str, http: &reqwest::Client) {
    let (mut receipts, tasks) = connect_clients(bases, clients, sdk).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::with_capacity(clients * WRITES);
    for i in 0..WRITES {
        let started = Instant::now();
        let body: Value = http
            .put(format!("{}/api/v1/environments/default/flags/replicated-{i}", bases[0]))
            .bearer_auth(ADMIN)
            .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}))
            .send()
            .await
            .expect("write")
            .json()
            .await
            .expect("json");
        let version = body["version"].as_i64().expect("version");
        let mut got = 0;
        let deadline = started + Duration::from_secs(30);
        while got < clients {
            match tokio::time::timeout_at(deadline.into(), receipts.recv()).await {
                Ok(Some((v, at))) if v == version => {
                    got += 1;
                    latencies.push(at - started);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(
            got, clients,
            "only {got} of {clients} clients got version {version}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    println!(
        "write on replica 1 -> patch at {clients} clients over {} replica(s): p50={:.2?} p99={:.2?} max={:.2?}",
        bases.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    for task in tasks {
        task.abort();
    }
}

async fn ofrep_throughput(bases: &[String], sdk: &str) {
    const CONCURRENCY: usize = 64;
    let duration = Duration::from_secs(5);
    let done = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (http, done) = (http.clone(), done.clone());
            let url = format!(
                "{}/ofrep/v1/evaluate/flags/flag-007",
                bases[i % bases.len()]
            );
            let sdk = sdk.to_owned();
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let response = http
                        .post(&url)
                        .bearer_auth(&sdk)
                        .json(&json!({"context": {"targetingKey": "user-1"}}))
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "OFREP, {} replica(s), {CONCURRENCY} connections (reqwest, same machine): {rate:.0} req/s",
        bases.len()
    );
}

fn main() {
    let clients: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let Some(schema) = ScratchSchema::create("replicas bench") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let url = schema.url();
        let servers: Vec<ServerProcess> = dirs
            .iter()
            .map(|dir| ServerProcess::start_with(dir.path(), ADMIN, &["--database-url", &url]))
            .collect();
        let bases: Vec<String> = servers.iter().map(|s| s.base_url.clone()).collect();
        let http = reqwest::Client::new();
        let flags: serde_json::Map<String, Value> = (0..200)
            .map(|i| (format!("flag-{i:03}"), json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off", "targeting": {"fractional": [["on", i * 10], ["off", 10_000 - i * 10]]}})))
            .collect();
        http.put(format!("{}/api/v1/environments/default/document", bases[0]))
            .bearer_auth(ADMIN)
            .json(&json!({"flags": flags}))
            .send()
            .await
            .expect("apply");
        let created: Value = http
            .post(format!("{}/api/v1/tokens", bases[0]))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "bench", "role": "sdk", "environment": "default"}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        let sdk = created["token"].as_str().expect("secret").to_owned();
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("replicas on PostgreSQL, 200-flag environment, {WRITES} writes");
        propagation(&bases[..1], clients, &sdk, &http).await;
        propagation(&bases, clients, &sdk, &http).await;
        ofrep_throughput(&bases[..1], &sdk).await;
        ofrep_throughput(&bases, &sdk).await;
    });
}
