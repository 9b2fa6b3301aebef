//! Several `flagd-server` processes on one real PostgreSQL database (a scratch schema per test),
//! and resume tokens across another history. Skipped with one line when there is no database,
//! unless `FLAGD_REQUIRE_POSTGRES=1` (as in `.ci/run`).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flag_sdk::{EvaluationContext, FlagClient, Status};
use flagd_server::testing::ScratchSchema;
use serde_json::{Value, json};
use tests::{FreezableProxy, FrontDoor, ServerProcess};

const ADMIN: &str = "replica-admin-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

use tests::http;

fn flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

/// `count` replicas on `schema`, each with a data directory of its own (for its admin-token
/// file only).
fn replicas(schema: &ScratchSchema, count: usize) -> (Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    let url = schema.url();
    let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers = dirs
        .iter()
        .map(|dir| ServerProcess::start_with(dir.path(), ADMIN, &["--database-url", &url]))
        .collect();
    (servers, dirs)
}

async fn put(base: &str, key: &str, default: &str, if_match: Option<i64>) -> reqwest::StatusCode {
    let mut request = http()
        .put(format!("{base}/api/v1/environments/default/flags/{key}"))
        .bearer_auth(ADMIN)
        .json(&flag(default));
    if let Some(version) = if_match {
        request = request.header("if-match", format!("\"{version}\""));
    }
    request.send().await.unwrap().status()
}

async fn get(base: &str, path: &str, token: &str) -> (reqwest::StatusCode, Value) {
    let response = http()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ofrep(base: &str, key: &str, token: &str) -> (reqwest::StatusCode, Value) {
    let response = http()
        .post(format!(
            "{base}/ofrep/v1/evaluate/flags/{key}?environment=default"
        ))
        .bearer_auth(token)
        .json(&json!({"context": {"targetingKey": "u1"}}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn sdk_token(base: &str) -> (String, String) {
    tests::sdk_token(base, ADMIN, "replica-sdk").await
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `limit`.
async fn within<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn leads(server: &ServerProcess) -> bool {
    let Ok(response) = http()
        .get(format!("{}/metrics", server.base_url))
        .send()
        .await
    else {
        return false;
    };
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .any(|line| line == "flagd_ramp_scheduler_leader 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stay_in_step() {
    let Some(schema) = ScratchSchema::create("three_replicas_stay_in_step") else {
        return;
    };
    let (servers, _dirs) = replicas(&schema, 3);
    let (a, b, c) = (
        &servers[0].base_url,
        &servers[1].base_url,
        &servers[2].base_url,
    );
    assert_eq!(put(a, "checkout", "off", None).await, 201);
    let (token, token_id) = sdk_token(a).await;
    // Token creation reaches the other replicas within a second.
    for server in [b, c] {
        within(
            Duration::from_secs(1),
            "a token created on A works on B and C",
            async || (ofrep(server, "checkout", &token).await.0 == 200).then_some(()),
        )
        .await;
    }

    // An SDK on B, `flagctl watch` on C.
    let client = FlagClient::builder()
        .server(b)
        .token(&token)
        .build()
        .unwrap();
    assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
    let mut watch = Command::new(tests::binary("flag-cli", "flagctl"))
        .args(["watch", "-o", "json", "--server", c])
        .env("FLAGCTL_TOKEN", ADMIN)
        .env("FLAGCTL_CONFIG", "/nonexistent/flagctl.toml")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    let seen = lines.clone();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(line) = serde_json::from_str(&line) {
                seen.lock().unwrap().push(line);
            }
        }
    });
    within(WAIT, "watch prints its snapshot", async || {
        (!lines.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    // A write on A reaches the SDK on B, the watcher on C and OFREP on C.
    assert_eq!(put(a, "checkout", "on", Some(1)).await, 200);
    let user = EvaluationContext::new("u1");
    within(WAIT, "the SDK on B sees the write on A", async || {
        client.bool_value("checkout", &user, false).then_some(())
    })
    .await;
    within(
        WAIT,
        "flagctl watch on C prints the write on A",
        async || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l["key"] == "checkout" && l["action"] == "updated" && l["version"] == 2)
                .then_some(())
        },
    )
    .await;
    let (status, answer) = ofrep(c, "checkout", ADMIN).await;
    assert_eq!((status.as_u16(), &answer["value"]), (200, &json!(true)));
    // The watcher introduces itself and acknowledges what it applied.
    within(WAIT, "C lists the watcher, current", async || {
        let (_, clients) = get(c, "/api/v1/environments/default/clients", ADMIN).await;
        clients["clients"]
            .as_array()?
            .iter()
            .any(|client| client["sdk"] == "flagctl" && client["ackedVersion"] == 2)
            .then_some(())
    })
    .await;
    let _ = watch.kill();
    let _ = watch.wait();

    // Two If-Match writers on A and B with the same version: exactly one wins.
    let (first, second) = tokio::join!(
        put(a, "checkout", "off", Some(2)),
        put(b, "checkout", "on", Some(2))
    );
    let mut statuses = [first.as_u16(), second.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);
    // And every replica converges on the winner.
    let (_, stored) = get(a, "/api/v1/environments/default/flags/checkout", ADMIN).await;
    for server in [a, b, c] {
        within(WAIT, "every replica serves the winner", async || {
            let (_, answer) = ofrep(server, "checkout", ADMIN).await;
            (answer["variant"] == stored["flag"]["defaultVariant"]).then_some(())
        })
        .await;
    }

    // A token revoked on A is refused by B within a second.
    assert_eq!(ofrep(b, "checkout", &token).await.0, 200);
    let revoked = http()
        .delete(format!("{a}/api/v1/tokens/{token_id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let started = Instant::now();
    within(
        Duration::from_secs(1),
        "B refuses the token revoked on A",
        async || (ofrep(b, "checkout", &token).await.0 == 401).then_some(()),
    )
    .await;
    eprintln!("revocation reached B in {:?}", started.elapsed());
    client.close().await;
    // A replica stops cleanly on SIGTERM (its PostgreSQL connections closed off the runtime).
    let mut servers = servers;
    assert!(servers[2].terminate(WAIT), "a replica exits 0 on SIGTERM");
}

/// Replicas started together on an empty database apply the migrations once and bootstrap one
/// admin token between them (one admin-token file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_bootstrap_once() {
    let Some(schema) = ScratchSchema::create("replicas_starting_together_bootstrap_once") else {
        return;
    };
    let url = schema.url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<ServerProcess> = std::thread::scope(|scope| {
        let started: Vec<_> = dirs
            .iter()
            .map(|dir| {
                let url = url.clone();
                scope.spawn(move || {
                    ServerProcess::start_with(dir.path(), ADMIN, &["--database-url", &url])
                })
            })
            .collect();
        started.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let (_, tokens) = get(&servers[0].base_url, "/api/v1/tokens", ADMIN).await;
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(1),
        "{tokens}"
    );
    let files = dirs
        .iter()
        .filter(|dir| dir.path().join("admin-token").exists())
        .count();
    assert_eq!(files, 1, "one replica wrote the admin-token file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ramp_continues_when_its_leader_is_killed() {
    let Some(schema) = ScratchSchema::create("the_ramp_continues_when_its_leader_is_killed") else {
        return;
    };
    let (mut servers, _dirs) = replicas(&schema, 3);
    let a = servers[0].base_url.clone();
    assert_eq!(put(&a, "checkout", "off", None).await, 201);
    let started = http()
        .post(format!(
            "{a}/api/v1/environments/default/flags/checkout/ramp"
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"steps": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], "interval": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    // Exactly one leader.
    let mut leader = None;
    within(WAIT, "one replica leads", async || {
        let mut leading = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            if leads(server).await {
                leading.push(index);
            }
        }
        leader = leading.first().copied();
        (leading.len() == 1).then_some(())
    })
    .await;
    let leader = leader.unwrap();
    // Let it apply a step or two, then kill it mid-ramp.
    let ramp_path = "/api/v1/environments/default/flags/checkout/ramp";
    within(WAIT, "the ramp moves", async || {
        let (_, ramp) = get(&a, ramp_path, ADMIN).await;
        (ramp["currentStep"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    servers[leader].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&ServerProcess> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, s)| s)
        .collect();
    within(
        Duration::from_secs(8),
        "another replica takes over",
        async || {
            for server in &survivors {
                if leads(server).await {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    eprintln!("took over {:?} after the SIGKILL", killed_at.elapsed());
    let survivor = survivors[0].base_url.clone();
    within(Duration::from_secs(30), "the ramp completes", async || {
        let (_, ramp) = get(&survivor, ramp_path, ADMIN).await;
        (ramp["state"] == "completed").then_some(())
    })
    .await;

    // The audit log: every step applied at most once, and any step not applied is named as
    // skipped in the entry that jumped past it.
    let (_, audit) = get(
        &survivor,
        "/api/v1/audit?environment=default&flag=checkout&limit=200",
        ADMIN,
    )
    .await;
    let mut messages: Vec<String> = audit["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("audit: {audit}"))
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("ramp step"))
        .map(str::to_owned)
        .collect();
    messages.reverse();
    for step in 2..=10 {
        let applied = messages
            .iter()
            .filter(|m| m.starts_with(&format!("ramp step {step}/10 ")))
            .count();
        let percentage = step * 10;
        let skipped = messages
            .iter()
            .any(|m| m.contains("skipped") && m.contains(&format!(" {percentage}%")));
        assert!(
            applied == 1 || (applied == 0 && skipped),
            "step {step} applied {applied} time(s), skipped: {skipped}; log: {messages:#?}"
        );
    }
    // Every surviving replica reports the ramp, and lists it.
    for server in &survivors {
        let (_, ramp) = get(&server.base_url, ramp_path, ADMIN).await;
        assert_eq!(ramp["state"], "completed", "{ramp}");
        let (status, ramps) = get(
            &server.base_url,
            "/api/v1/environments/default/ramps",
            ADMIN,
        )
        .await;
        assert_eq!(status, 200, "{ramps}");
        assert!(ramps.to_string().contains("checkout"), "{ramps}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_fails_over_when_its_replica_is_killed() {
    let Some(schema) = ScratchSchema::create("an_sdk_fails_over_when_its_replica_is_killed") else {
        return;
    };
    let (mut servers, _dirs) = replicas(&schema, 2);
    let (a, b) = (servers[0].base_url.clone(), servers[1].base_url.clone());
    assert_eq!(put(&a, "f0", "on", None).await, 201);
    let (token, _) = sdk_token(&a).await;
    within(
        Duration::from_secs(1),
        "a token created on A works on B",
        async || (ofrep(&b, "f0", &token).await.0 == 200).then_some(()),
    )
    .await;
    let changes = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = FlagClient::builder()
        .servers([a.clone(), b.clone()])
        .token(&token)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
    let seen = changes.clone();
    client.on_change(move |change| seen.lock().unwrap().extend(change.keys.clone()));
    // It streams from A (the first server): kill A, then write on B.
    servers[0].kill();
    for i in 1..=5 {
        assert_eq!(put(&b, &format!("f{i}"), "on", None).await, 201);
    }
    let user = EvaluationContext::new("u1");
    within(WAIT, "the SDK sees every write made on B", async || {
        (1..=5)
            .all(|i| client.bool_value(&format!("f{i}"), &user, false))
            .then_some(())
    })
    .await;
    let (_, environment) = get(&b, "/api/v1/environments/default/flags", ADMIN).await;
    within(WAIT, "the SDK is at B's version", async || {
        (client.version() == environment["version"].as_i64()).then_some(())
    })
    .await;
    let mut changed = changes.lock().unwrap().clone();
    changed.sort();
    changed.dedup();
    assert_eq!(changed, ["f1", "f2", "f3", "f4", "f5"]);
    client.close().await;
}

/// The scenario on SQLite: a backup restored and edited once reaches the same version
/// number with other contents; a client resuming with that version must get a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_not_mistaken_for_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), ADMIN);
    assert_eq!(put(&server.base_url, "f", "off", None).await, 201);
    let (token, _) = sdk_token(&server.base_url).await;
    assert!(server.terminate(WAIT));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), backup.path().join(entry.file_name())).unwrap();
    }
    let door = FrontDoor::open();
    server = ServerProcess::start(dir.path(), ADMIN);
    door.forward_to(Some(&server));
    // Version 3 (the token was version-less; f created at 1, updated at 2... whatever it is,
    // the client holds the version and digest of this history).
    assert_eq!(put(&server.base_url, "f", "on", None).await, 200);
    let client = FlagClient::builder()
        .server(door.base_url())
        .token(&token)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();
    client.wait_ready(WAIT).await.unwrap();
    let user = EvaluationContext::new("u1");
    assert!(client.bool_value("f", &user, false));
    let held = client.version();

    // Restore the backup, and make one edit: the same version number, another commit.
    door.forward_to(None);
    server.kill();
    for entry in std::fs::read_dir(backup.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    for suffix in ["-wal", "-shm"] {
        let stale = dir.path().join(format!("flags.db{suffix}"));
        if !backup.path().join(format!("flags.db{suffix}")).exists() {
            let _ = std::fs::remove_file(stale);
        }
    }
    let restored = ServerProcess::start(dir.path(), ADMIN);
    assert_eq!(put(&restored.base_url, "g", "on", None).await, 201);
    let (_, environment) = get(
        &restored.base_url,
        "/api/v1/environments/default/flags",
        ADMIN,
    )
    .await;
    assert_eq!(
        environment["version"].as_i64(),
        held,
        "the same version number"
    );
    door.forward_to(Some(&restored));
    within(WAIT, "the client gets the restored history", async || {
        (client.bool_value("g", &user, false) && !client.bool_value("f", &user, true)).then_some(())
    })
    .await;
    client.close().await;
}

/// `flagd-server migrate --from-sqlite DIR --to URL` copies flags (with their versions), the
/// audit log and tokens; a replica on PostgreSQL then serves them, and a second migration into
/// the same database is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_to_postgres() {
    let Some(schema) = ScratchSchema::create("a_sqlite_store_moves_to_postgres") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), ADMIN);
    let base = server.base_url.clone();
    assert_eq!(put(&base, "a", "off", None).await, 201);
    assert_eq!(put(&base, "a", "on", Some(1)).await, 200);
    assert_eq!(put(&base, "b", "off", None).await, 201);
    let (token, _) = sdk_token(&base).await;
    // A Git source binding moves too (its first sync fails: the repository does not exist).
    let bound = http()
        .put(format!("{base}/api/v1/environments/default/source"))
        .bearer_auth(ADMIN)
        .json(&json!({"repository": "file:///nonexistent/flags", "path": "p.json", "drift": "report"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status().as_u16(), 201);
    let (_, audit_before) = get(&base, "/api/v1/audit?limit=100", ADMIN).await;
    assert!(server.terminate(WAIT));

    let migrate = |target: &str| {
        Command::new(tests::binary("flagd-server", "flagd-server"))
            .args(["migrate", "--from-sqlite"])
            .arg(dir.path())
            .args(["--to", target])
            .output()
            .unwrap()
    };
    let moved = migrate(&schema.url());
    let said = String::from_utf8_lossy(&moved.stderr);
    assert!(moved.status.success(), "{said}");
    assert!(said.contains("2 flag(s)"), "{said}");
    assert!(said.contains("1 Git source(s)"), "{said}");
    let again = migrate(&schema.url());
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let (replicas, _dirs) = replicas(&schema, 1);
    let moved = &replicas[0].base_url;
    let (_, listing) = get(moved, "/api/v1/environments/default/flags", ADMIN).await;
    assert_eq!(listing["version"], 3, "{listing}");
    let (_, a) = get(moved, "/api/v1/environments/default/flags/a", ADMIN).await;
    assert_eq!(
        (a["version"].as_i64(), &a["flag"]["defaultVariant"]),
        (Some(2), &json!("on"))
    );
    let (_, source) = get(moved, "/api/v1/environments/default/source", ADMIN).await;
    assert_eq!(source["spec"]["drift"], "report", "{source}");
    let (_, audit_after) = get(moved, "/api/v1/audit?limit=100", ADMIN).await;
    assert_eq!(audit_after["changes"], audit_before["changes"]);
    let (status, answer) = ofrep(moved, "b", &token).await;
    assert_eq!((status.as_u16(), &answer["value"]), (200, &json!(false)));
    // New writes continue the versions and the audit ids.
    assert_eq!(put(moved, "c", "on", None).await, 201);
    let (_, audit) = get(moved, "/api/v1/audit?limit=1", ADMIN).await;
    assert!(
        audit["changes"][0]["id"].as_i64() > audit_before["changes"][0]["id"].as_i64(),
        "{audit}"
    );
}

/// A replica whose database connections hang (bytes stop, sockets stay open) says it is not
/// ready within seconds, rather than serve stale flags as if current; when they flow again it
/// catches up and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_database_hangs_says_so() {
    let Some(schema) = ScratchSchema::create("a_replica_whose_database_hangs_says_so") else {
        return;
    };
    let direct = schema.url();
    let Some(database) = url::Url::parse(&direct).ok().and_then(|url| {
        let host = url.host_str()?.to_owned();
        let port = url.port().unwrap_or(5432);
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()?
            .next()
    }) else {
        panic!("cannot resolve the test database's address from {direct}");
    };
    let proxy = FreezableProxy::open(database);
    let mut through = url::Url::parse(&direct).unwrap();
    through.set_ip_host(proxy.address().ip()).unwrap();
    through.set_port(Some(proxy.address().port())).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_with(dir_a.path(), ADMIN, &["--database-url", through.as_str()]);
    let b = ServerProcess::start_with(dir_b.path(), ADMIN, &["--database-url", &direct]);
    let ready = async |server: &ServerProcess| {
        http()
            .get(format!("{}/readyz", server.base_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    within(WAIT, "A is ready", async || {
        (ready(&a).await == 200).then_some(())
    })
    .await;

    proxy.freeze(true);
    assert_eq!(put(&b.base_url, "written-meanwhile", "on", None).await, 201);
    let frozen_at = Instant::now();
    within(Duration::from_secs(15), "A reports not ready", async || {
        (ready(&a).await == 503).then_some(())
    })
    .await;
    eprintln!("not ready {:?} after the freeze", frozen_at.elapsed());
    // Not only the probe's own query timing out: the replica knows it no longer follows.
    let following = async |server: &ServerProcess| {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("flagd_replication_connected "))
            .map(str::to_owned)
    };
    within(
        Duration::from_secs(15),
        "A says it does not follow",
        async || (following(&a).await.as_deref() == Some("0")).then_some(()),
    )
    .await;
    eprintln!("not following {:?} after the freeze", frozen_at.elapsed());

    proxy.freeze(false);
    within(WAIT, "A is ready and current again", async || {
        let (status, answer) = ofrep(&a.base_url, "written-meanwhile", ADMIN).await;
        (ready(&a).await == 200 && status == 200 && answer["value"] == true).then_some(())
    })
    .await;
    assert_eq!(following(&a).await.as_deref(), Some("1"));
}
