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
