//! Stream fan-out: commit → received by N connected clients (N = 100, 1,000, 10,000), and the
//! server's memory per idle connection. Prints a report.
//!
//! Run: `cargo bench -p benches --bench stream_fanout` (optionally `-- 100 1000` for other Ns).
//!
//! The server is the release binary in its own process (so its RSS is its own); the clients are
//! tokio-tungstenite connections in this process, on the same 2 cores. Latency is measured from
//! just before the admin PUT is sent (so it includes that request and the commit's fsync) to the
//! moment each client has read the patch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tests::ServerProcess;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const ADMIN: &str = "bench-admin-token-0123456789";
const WRITES: usize = 5;

fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, fully initialised struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            return limit.rlim_cur;
        }
    }
    0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(clients: usize, base: &str, ws: &str, sdk: &str, pid: u32, http: &reqwest::Client) {
    let (received, mut receipts) = mpsc::unbounded_channel::<(i64, Instant)>();
    let mut tasks = Vec::with_capacity(clients);
    let before = rss_kib(pid);
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    // Connect in waves so the listen backlog never overflows.
    for wave in (0..clients).collect::<Vec<_>>().chunks(200) {
        let mut wave_tasks = Vec::new();
        for _ in wave {
            let (url, sdk, received, connected) = (
                format!("{ws}/api/v1/stream"),
                sdk.to_owned(),
                received.clone(),
                connected.clone(),
            );
            wave_tasks.push(tokio::spawn(async move {
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
                        // Only the version is needed here: skip a full parse so the 10,000
                        // clients sharing the server's two cores steal as little as possible.
                        if text.contains("\"type\":\"patch\"") {
                            let version = text
                                .rsplit("\"version\":")
                                .next()
                                .and_then(|tail| tail.trim_end_matches('}').parse::<i64>().ok())
                                .unwrap_or(-1);
                            let _ = received.send((version, at));
                        }
                    }
                }
            }));
        }
        connected
            .acquire_many(wave.len() as u32)
            .await
            .expect("semaphore")
            .forget();
        tasks.extend(wave_tasks);
    }
    // Let every session send its snapshot and go idle before measuring memory.
    tokio::time::sleep(Duration::from_millis(500 + clients as u64 / 10)).await;
    let after = rss_kib(pid);
    let per_connection = (after.saturating_sub(before) as f64 * 1024.0) / clients as f64;

    let mut latencies = Vec::with_capacity(clients * WRITES);
    let mut slowest_write = Duration::ZERO;
    for i in 0..WRITES {
        let started = Instant::now();
        let response = http
            .put(format!("{base}/api/v1/environments/default/flags/fanout-{clients}-{i}"))
            .bearer_auth(ADMIN)
            .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}))
            .send()
            .await
            .expect("write");
        let body: Value = response.json().await.expect("json");
        let version = body["version"].as_i64().expect("version");
        let mut got = 0;
        let deadline = started + Duration::from_secs(60);
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
        slowest_write = slowest_write.max(started.elapsed());
        assert_eq!(
            got, clients,
            "only {got} of {clients} clients got version {version} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    println!(
        "N={clients:<6} propagation p50={:>9.2?} p99={:>9.2?} max={:>9.2?} | server RSS {before} KiB -> {after} KiB: {per_connection:>7.0} B per idle connection",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    for task in tasks {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn main() {
    let limit = raise_fd_limit();
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect::<Vec<_>>();
    let ns = if ns.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        ns
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir_in(".").expect("temp dir");
        let server = ServerProcess::start_with(dir.path(), ADMIN, &["--max-connections", "20000"]);
        let http = reqwest::Client::new();
        let base = server.base_url.clone();
        let ws = base.replace("http://", "ws://");
        // A realistic environment: 200 flags.
        let flags: serde_json::Map<String, Value> = (0..200)
            .map(|i| (format!("flag-{i:03}"), json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off", "targeting": {"fractional": [["on", i * 10], ["off", 10_000 - i * 10]]}})))
            .collect();
        http.put(format!("{base}/api/v1/environments/default/document"))
            .bearer_auth(ADMIN)
            .json(&json!({"flags": flags}))
            .send()
            .await
            .expect("apply");
        let created: Value = http
            .post(format!("{base}/api/v1/tokens"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "bench", "role": "sdk", "environment": "default"}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        let sdk = created["token"].as_str().expect("secret").to_owned();
        println!("stream fan-out, 200-flag environment, {WRITES} writes per N, fd limit {limit}");
        for n in ns {
            run(n, &base, &ws, &sdk, server.pid(), &http).await;
        }
    });
}
