//! Stream fan-out: commit → received by N connected clients, and the server's memory per idle
//! connection. Prints a report.
//!
//! Run: `cargo bench -p benches --bench stream_fanout` (N = 100, 1,000, 10,000 and then as many
//! idle connections as the open-file limit allows, up to 100,000), or `-- 100 1000` for other Ns.
//!
//! The server is the release binary in its own process, pinned to CPU 0 (so it has one tokio
//! worker); the clients are tokio-tungstenite connections in this process, pinned to CPU 1 on a
//! current-thread runtime. Latency is measured from just before the admin PUT is sent (so it
//! includes that request and the commit's fsync) to the moment each client has read the patch.
//! Memory is the server's RSS with N idle clients (each has its snapshot) less its RSS before any
//! client connected, divided by N. Clients connect from 127.0.0.1, 127.0.0.2, … (16,000 each) so the number of
//! connections is not bounded by one source address's ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tests::ServerProcess;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const ADMIN: &str = "bench-admin-token-0123456789";
/// Writes per N (`FANOUT_WRITES` overrides it, e.g. to profile the fan-out itself).
fn writes() -> usize {
    std::env::var("FANOUT_WRITES")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(5)
}
/// Connections per client source address (the ephemeral port range holds about 28,000).
const PER_SOURCE_ADDRESS: usize = 16_000;
/// Idle connections the last run asks for (issue 21's target: ≤ 6 KiB each at 100,000).
const IDLE_TARGET: usize = 100_000;

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

/// Pins the calling thread (and what it starts afterwards) to one CPU; `false` when it cannot.
fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: `set` is a zeroed, valid cpu_set_t; CPU_SET stays within it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux): a socket bound to an address gets its port at connect.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd as _;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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

/// The server under test and what a run needs to reach it.
struct Target {
    address: SocketAddr,
    base: String,
    ws: String,
    sdk_token: String,
    pid: u32,
    /// The server's RSS before any client connected, in KiB.
    idle_rss: u64,
    http: reqwest::Client,
}

async fn run(clients: usize, target: &Target) {
    let (server, ws, sdk, before) = (
        target.address,
        &target.ws,
        &target.sdk_token,
        target.idle_rss,
    );
    let (received, mut receipts) = mpsc::unbounded_channel::<(i64, Instant)>();
    let mut tasks = Vec::with_capacity(clients);
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    // Connect in waves so the listen backlog never overflows.
    for wave in (0..clients).collect::<Vec<_>>().chunks(200) {
        let mut wave_tasks = Vec::new();
        for &index in wave {
            // 127.0.0.1, 127.0.0.2, …: every loopback address reaches the server.
            let source = Ipv4Addr::from(
                u32::from(Ipv4Addr::LOCALHOST) + (index / PER_SOURCE_ADDRESS) as u32,
            );
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
                let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
                // The port is chosen at connect (by the 4-tuple), not by a slow bind-time search.
                bind_address_no_port(&tcp);
                tcp.bind(SocketAddr::from((source, 0))).expect("bind");
                let stream = tcp.connect(server).await.expect("connect");
                // A small read buffer: the bench holds up to 100,000 clients itself.
                let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
                let (mut socket, _) =
                    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                        .await
                        .expect("handshake");
                connected.add_permits(1);
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        let at = Instant::now();
                        // Only the version is needed here: skip a full parse so the 10,000
                        // clients sharing the server's two cores steal as little as possible.
                        if text.contains("\"type\":\"patch\"") {
                            // `{"type":"patch","version":N,...}`: the first version field.
                            let version = text
                                .split("\"version\":")
                                .nth(1)
                                .and_then(|tail| {
                                    let digits = tail
                                        .find(|c: char| !c.is_ascii_digit())
                                        .unwrap_or(tail.len());
                                    tail[..digits].parse::<i64>().ok()
                                })
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
    let after = rss_kib(target.pid);
    let per_connection = (after.saturating_sub(before) as f64 * 1024.0) / clients as f64;

    let writes = writes();
    println!("N={clients:<6} connected and idle; writing");
    let mut latencies = Vec::with_capacity(clients * writes);
    let mut slowest_write = Duration::ZERO;
    for i in 0..writes {
        let started = Instant::now();
        let response = target
            .http
            .put(format!(
                "{}/api/v1/environments/default/flags/fanout-{clients}-{i}",
                target.base
            ))
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
        "N={clients:<6} propagation p50={:>9.2?} p99={:>9.2?} max={:>9.2?} | server RSS {before} KiB with no client -> {after} KiB: {per_connection:>7.0} B per idle connection",
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
    let asked: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect::<Vec<_>>();
    let asked = if asked.is_empty() {
        vec![100, 1_000, 10_000, IDLE_TARGET]
    } else {
        asked
    };
    // Each connection is one descriptor here and one in the server (same limit, inherited);
    // keep some for the server's database, listener and the admin client.
    let most = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(500);
    let ns: Vec<usize> = asked.iter().map(|&n| n.min(most)).collect();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // The server inherits CPU 0 from this thread; then this process moves to CPU 1.
    let pinned = cpus >= 2 && pin_to_cpu(0);
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let max_connections = (most + 100).to_string();
    let server = ServerProcess::start_with(
        dir.path(),
        ADMIN,
        &["--max-connections", max_connections.as_str()],
    );
    let pinned = pinned && pin_to_cpu(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let base = server.base_url.clone();
        let ws = base.replace("http://", "ws://");
        let address: SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("server address");
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
        // Memory per connection is measured against the server before any client connected:
        // runs with fewer clients free what they used, and larger runs reuse it.
        let idle = rss_kib(server.pid());
        println!(
            "stream fan-out, 200-flag environment, {} writes per N, open-file limit {limit}",
            writes()
        );
        if pinned {
            println!("server pinned to CPU 0 (one tokio worker), clients pinned to CPU 1 (one thread)");
        } else {
            println!("not pinned ({cpus} CPUs): server and clients share the machine");
        }
        let target = Target {
            address,
            base,
            ws,
            sdk_token: sdk,
            pid: server.pid(),
            idle_rss: idle,
            http,
        };
        for (&n, &wanted) in ns.iter().zip(&asked) {
            if n < wanted {
                println!(
                    "N={wanted} asked for, {n} run: the open-file limit is {limit} (raise it with `ulimit -Hn` as root)"
                );
            }
            run(n, &target).await;
        }
    });
}
