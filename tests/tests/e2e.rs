//! End-to-end tests against the real `flagd-server` process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tests::ServerProcess;

const ADMIN: &str = "e2e-admin-token-0123456789abcdef";

fn flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

/// Every write the server acknowledged before a SIGKILL is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), ADMIN);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let acknowledged: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();

    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, base, acknowledged) = (
            client.clone(),
            server.base_url.clone(),
            acknowledged.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{writer}-{i}");
                let default = if i % 2 == 0 { "on" } else { "off" };
                let response = client
                    .put(format!("{base}/api/v1/environments/default/flags/{key}"))
                    .bearer_auth(ADMIN)
                    .json(&flag(default))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        acknowledged.lock().unwrap().push((key, default))
                    }
                    // The server died mid-burst: stop writing.
                    _ => break,
                }
            }
        }));
    }
    // Let a burst of writes through, then pull the plug while requests are in flight.
    while acknowledged.lock().unwrap().len() < 120 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let server = ServerProcess::start(dir.path(), ADMIN);
    let document: Value = client
        .get(format!(
            "{}/api/v1/environments/default/document",
            server.base_url
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut missing = Vec::new();
    for (key, default) in &acknowledged {
        if document["flags"][key]["defaultVariant"] != *default {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    // Each acknowledged write was its own commit: the environment version counts at least them.
    let stored = document["flags"].as_object().unwrap().len();
    eprintln!(
        "acknowledged {} writes before SIGKILL; {stored} flags stored after restart",
        acknowledged.len()
    );
    assert!(
        stored >= acknowledged.len(),
        "stored {stored} < acknowledged {}",
        acknowledged.len()
    );
}

/// SIGTERM stops the server cleanly, and it restarts on the same data.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), ADMIN);
    let client = reqwest::Client::new();
    let status = client
        .put(format!(
            "{}/api/v1/environments/default/flags/kept",
            server.base_url
        ))
        .bearer_auth(ADMIN)
        .json(&flag("on"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::CREATED);
    assert!(
        server.terminate(Duration::from_secs(10)),
        "flagd-server did not exit cleanly on SIGTERM"
    );
    let server = ServerProcess::start(dir.path(), ADMIN);
    let response = client
        .get(format!(
            "{}/api/v1/environments/default/flags/kept",
            server.base_url
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}

// ------------------------------------------------------------------------------------------
// The SDK against the real server

mod sdk {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use flag_sdk::{ErrorCode, EvaluationContext, FlagClient, Status};
    use serde_json::{Value, json};
    use tests::{ServerProcess, free_port};

    use super::{ADMIN, flag};

    const WAIT: Duration = Duration::from_secs(15);

    async fn sdk_token(base: &str) -> String {
        let created: Value = reqwest::Client::new()
            .post(format!("{base}/api/v1/tokens"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "sdk-e2e", "role": "sdk", "environment": "default"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["token"].as_str().unwrap().to_owned()
    }

    async fn put(base: &str, key: &str, default: &str) {
        let status = reqwest::Client::new()
            .put(format!("{base}/api/v1/environments/default/flags/{key}"))
            .bearer_auth(ADMIN)
            .json(&flag(default))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
    }

    fn client(base: &str, token: &str, cache: Option<&std::path::Path>) -> FlagClient {
        let mut builder = FlagClient::builder()
            .server(base)
            .token(token)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(500));
        if let Some(cache) = cache {
            builder = builder.cache_file(cache);
        }
        builder.build().unwrap()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_after_the_snapshot_and_a_write_reaches_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), ADMIN);
        put(&server.base_url, "checkout", "off").await;
        let token = sdk_token(&server.base_url).await;
        let client = client(&server.base_url, &token, None);
        assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
        let user = EvaluationContext::new("u1");
        assert!(!client.bool_value("checkout", &user, true));

        let changed = Arc::new(Mutex::new(Vec::new()));
        let seen = changed.clone();
        client.on_change(move |change| seen.lock().unwrap().extend(change.keys.clone()));
        put(&server.base_url, "checkout", "on").await;
        eventually("the write reaches the SDK", || {
            client.bool_value("checkout", &user, false)
        })
        .await;
        assert_eq!(*changed.lock().unwrap(), ["checkout"]);

        // The server sees this client and its acknowledged version.
        let clients: Value = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/environments/default/clients",
                server.base_url
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(clients["clients"][0]["sdk"], "flag-sdk-rust");
        client.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_restart_is_survived_and_converges() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = ServerProcess::start(dir.path(), ADMIN);
        let address = server.address().to_owned();
        put(&server.base_url, "f", "off").await;
        let token = sdk_token(&server.base_url).await;
        let client = client(&server.base_url, &token, None);
        client.wait_ready(WAIT).await.unwrap();
        let user = EvaluationContext::new("u1");

        let killed = std::time::Instant::now();
        server.kill();
        eventually("stale while the server is down", || {
            client.status() == Status::Stale
        })
        .await;
        eprintln!("stale {:?} after the kill", killed.elapsed());
        assert!(
            !client.bool_value("f", &user, true),
            "last known good flags keep serving"
        );

        // Back on the same address, with a change made while the client was away.
        let server = ServerProcess::start_on(dir.path(), ADMIN, &address, &[]);
        let restarted = std::time::Instant::now();
        eventually("ready again", || client.status() == Status::Ready).await;
        eprintln!(
            "reconnected {:?} after the server printed its address",
            restarted.elapsed()
        );
        let written = std::time::Instant::now();
        put(&server.base_url, "f", "on").await;
        eventually("converged after the restart", || {
            client.bool_value("f", &user, false)
        })
        .await;
        eprintln!(
            "a write reached the SDK {:?} after the PUT was sent",
            written.elapsed()
        );
        client.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_serves_when_the_server_is_down_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("flags-cache.json");
        let mut server = ServerProcess::start(dir.path().join("data").as_path(), ADMIN);
        put(&server.base_url, "cached", "on").await;
        let token = sdk_token(&server.base_url).await;
        let base = server.base_url.clone();
        {
            let client = client(&base, &token, Some(&cache));
            client.wait_ready(WAIT).await.unwrap();
            eventually("cache written", || cache.exists()).await;
            client.close().await;
        }
        server.kill();
        let client = client(&base, &token, Some(&cache));
        assert_eq!(
            client.wait_ready(Duration::from_millis(100)).await.unwrap(),
            Status::Stale
        );
        assert!(client.bool_value("cached", &EvaluationContext::new("u"), false));
        client.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_cache_and_no_server_gives_defaults_then_flags_when_the_server_appears() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        // The token must exist when the server starts: seed it by starting once.
        let seed = ServerProcess::start_on(dir.path(), ADMIN, &address, &[]);
        put(&seed.base_url, "late", "on").await;
        let token = sdk_token(&seed.base_url).await;
        drop(seed);

        let client = client(&format!("http://{address}"), &token, None);
        let user = EvaluationContext::new("u");
        assert_eq!(client.status(), Status::NotReady);
        let details = client.bool_details("late", &user, false);
        assert_eq!(
            (details.value, details.error_code),
            (false, Some(ErrorCode::ProviderNotReady))
        );
        assert!(client.wait_ready(Duration::from_millis(300)).await.is_err());

        let _server = ServerProcess::start_on(dir.path(), ADMIN, &address, &[]);
        assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
        assert!(client.bool_value("late", &user, false));
        client.close().await;
    }
}
