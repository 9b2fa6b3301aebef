//! OFREP and the WebSocket stream against a real server on port 0, with real clients.

use std::time::Duration;

use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet};
use flag_protocol::OfrepEvaluation;
use flagd_server::{Server, ServerOptions};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const ADMIN: &str = "live-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Live {
    base: String,
    ws_base: String,
    client: reqwest::Client,
    sdk: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), flagd_server::StartError>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Live {
    async fn start() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let mut live = Live::start_in(dir.path()).await;
        live._dir = Some(dir);
        live
    }

    async fn start_in(dir: &std::path::Path) -> Live {
        Live::start_with(dir, false).await
    }

    async fn start_with(dir: &std::path::Path, strict: bool) -> Live {
        let options = ServerOptions {
            admin_token: Some(ADMIN.to_owned()),
            body_limit: 16 << 20,
            max_connections: 256,
            shutdown_timeout: Duration::from_secs(3),
            strict,
            ..ServerOptions::new(dir.to_owned())
        };
        let server = Server::open(options, flagd_server::state::system_clock())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let base = format!("http://{address}");
        let created: Value = client
            .post(format!("{base}/api/v1/tokens"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "web-app", "role": "sdk", "environment": "default"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Live {
            ws_base: format!("ws://{address}"),
            base,
            client,
            sdk: created["token"].as_str().unwrap().to_owned(),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    async fn put(&self, key: &str, flag: Value) -> Value {
        let response = self
            .client
            .put(format!(
                "{}/api/v1/environments/default/flags/{key}",
                self.base
            ))
            .bearer_auth(ADMIN)
            .json(&flag)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ofrep(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .post(format!("{}/ofrep/v1/evaluate/{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn connect(&self, query: &str) -> Socket {
        self.connect_with(&self.sdk.clone(), query).await.unwrap()
    }

    async fn connect_with(
        &self,
        token: &str,
        query: &str,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("{}/api/v1/stream{query}", self.ws_base)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, _)| socket)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The next JSON message, skipping pings.
async fn next_message(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "ping" {
                    return value;
                }
            }
            Some(Ok(Message::Close(_))) | None => return json!({"type": "closed"}),
            Some(Ok(_)) => {}
            Some(Err(error)) => return json!({"type": "error", "error": error.to_string()}),
        }
    }
}

fn boolean_flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

// ------------------------------------------------------------------------------------------
// OFREP

fn evaluation_flags() -> Value {
    json!({
        "static": boolean_flag("on"),
        "disabled": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "code-default": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}},
        "match": {"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "blue",
            "targeting": {"if": [{"==": [{"var": "color"}, "red"]}, "red", null]}, "metadata": {"owner": "web"}},
        "dynamic": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"var": "choice"}},
        "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}},
        "numbers": {"state": "ENABLED", "variants": {"small": 1, "big": 1000.5}, "defaultVariant": "small",
            "targeting": {"if": [{">": [{"var": "age"}, 30]}, "big", "small"]}},
        "object": {"state": "ENABLED", "variants": {"cfg": {"limit": 5}}, "defaultVariant": "cfg"}
    })
}

async fn live_with_evaluation_flags() -> Live {
    let live = Live::start().await;
    let (status, report) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/document",
            Some(json!({"flags": evaluation_flags()})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{report}");
    live
}

#[tokio::test]
async fn ofrep_every_reason_and_error_code() {
    let live = live_with_evaluation_flags().await;
    let sdk = live.sdk.clone();
    let cases = [
        (
            "static",
            json!({}),
            200,
            json!({"key": "static", "value": true, "variant": "on", "reason": "STATIC"}),
        ),
        (
            "disabled",
            json!({}),
            200,
            json!({"key": "disabled", "reason": "DISABLED"}),
        ),
        (
            "code-default",
            json!({}),
            200,
            json!({"key": "code-default", "reason": "DEFAULT"}),
        ),
        (
            "match",
            json!({"color": "red"}),
            200,
            json!({"key": "match", "value": "#f00", "variant": "red", "reason": "TARGETING_MATCH"}),
        ),
        (
            "match",
            json!({"color": "green"}),
            200,
            json!({"key": "match", "value": "#00f", "variant": "blue", "reason": "DEFAULT"}),
        ),
        (
            "dynamic",
            json!({"choice": "zzz"}),
            400,
            json!({"key": "dynamic", "errorCode": "GENERAL"}),
        ),
        (
            "nope",
            json!({}),
            404,
            json!({"key": "nope", "errorCode": "FLAG_NOT_FOUND"}),
        ),
        (
            "numbers",
            json!({"age": 40}),
            200,
            json!({"key": "numbers", "value": 1000.5, "variant": "big", "reason": "TARGETING_MATCH"}),
        ),
        (
            "object",
            json!({}),
            200,
            json!({"key": "object", "value": {"limit": 5}, "variant": "cfg", "reason": "STATIC"}),
        ),
    ];
    for (key, context, status, expected) in cases {
        let (actual_status, _, body) = live
            .ofrep(&format!("flags/{key}"), &sdk, json!({"context": context}))
            .await;
        assert_eq!(actual_status.as_u16(), status, "{key}: {body}");
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(&body[field], value, "{key}.{field}: {body}");
        }
        if key == "disabled" || key == "code-default" {
            assert!(
                body.get("value").is_none() && body.get("variant").is_none(),
                "{key} omits value and variant: {body}"
            );
        }
        if status != 200 {
            assert!(body["errorDetails"].is_string(), "{key}: {body}");
        }
    }
    let (_, _, body) = live
        .ofrep("flags/match", &sdk, json!({"context": {"color": "red"}}))
        .await;
    assert_eq!(body["metadata"], json!({"owner": "web"}));
}

#[tokio::test]
async fn ofrep_matches_flag_core_on_the_same_document() {
    let live = live_with_evaluation_flags().await;
    let set = FlagSet::from_value(&json!({"flags": evaluation_flags()})).unwrap();
    let compiled = CompiledFlagSet::compile(&set).unwrap();
    let contexts = [
        json!({}),
        json!({"targetingKey": "user-1", "color": "red", "age": 20}),
        json!({"targetingKey": "user-2", "choice": "on", "age": 31}),
        json!({"targetingKey": "user-3", "choice": "off"}),
        json!({"targetingKey": "user-4", "color": "blue"}),
    ];
    for context in contexts {
        let ctx = EvaluationContext::from_json(context.as_object().unwrap().clone());
        let (_, _, bulk) = live
            .ofrep("flags", &live.sdk, json!({"context": context}))
            .await;
        let served: Vec<&Value> = bulk["flags"].as_array().unwrap().iter().collect();
        let expected: Vec<(&str, flag_core::Resolution<'_>)> =
            compiled.evaluate_all(&ctx, 0).collect();
        assert_eq!(served.len(), expected.len());
        for (body, (key, resolution)) in served.iter().zip(expected) {
            assert_eq!(body["key"], key);
            assert_eq!(body.get("value"), resolution.value, "{key} with {context}");
            assert_eq!(
                body["variant"].as_str(),
                resolution.variant,
                "{key} with {context}"
            );
            match &resolution.error {
                None => assert_eq!(
                    body["reason"],
                    resolution.reason.as_str(),
                    "{key} with {context}"
                ),
                Some(error) => assert_eq!(
                    body["errorCode"],
                    error.code.as_str(),
                    "{key} with {context}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn ofrep_bulk_etag_and_not_modified() {
    let live = live_with_evaluation_flags().await;
    let context = json!({"context": {"targetingKey": "user-9"}});
    let (status, headers, _) = live.ofrep("flags", &live.sdk, context.clone()).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let again = live
        .client
        .post(format!("{}/ofrep/v1/evaluate/flags", live.base))
        .bearer_auth(&live.sdk)
        .header("if-none-match", &etag)
        .json(&context)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
    // A change to a flag changes the answer, and so the ETag.
    live.put("static", boolean_flag("off")).await;
    let (status, headers, _) = live.ofrep("flags", &live.sdk, context).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_ne!(headers["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn ofrep_bad_bodies_and_auth() {
    let live = live_with_evaluation_flags().await;
    let post = |path: &str, body: &'static str| {
        live.client
            .post(format!("{}/ofrep/v1/evaluate/{path}", live.base))
            .bearer_auth(&live.sdk)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (path, body) in [
        ("flags/static", "{"),
        ("flags/static", "{\"context\": 5}"),
        ("flags", "[1]"),
    ] {
        let response = post(path, body).await.unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::BAD_REQUEST,
            "{path} {body}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["errorCode"], "INVALID_CONTEXT", "{answer}");
    }
    let url = format!("{}/ofrep/v1/evaluate/flags/static", live.base);
    // (query, header, token, expected status)
    let sdk = live.sdk.as_str();
    let cases: [(&str, &str, Option<&str>, u16); 10] = [
        // Query parameters are percent-decoded; a duplicated environment is ambiguous.
        ("?environment=%64efault", "authorization", Some(ADMIN), 200),
        (
            "?environment=default&environment=default",
            "authorization",
            Some(ADMIN),
            400,
        ),
        (
            "?environment=default&environment=staging",
            "authorization",
            Some(sdk),
            400,
        ),
        ("", "authorization", None, 401),
        ("", "authorization", Some("flg_sdk_nope"), 401),
        // X-API-Key works like Bearer.
        ("", "x-api-key", Some(sdk), 200),
        // An sdk token cannot read another environment.
        ("?environment=staging", "authorization", Some(sdk), 403),
        // An admin token must name the environment, and it must exist.
        ("", "authorization", Some(ADMIN), 400),
        ("?environment=default", "authorization", Some(ADMIN), 200),
        ("?environment=nowhere", "authorization", Some(ADMIN), 404),
    ];
    for (query, header, token, expected) in cases {
        let mut request = live.client.post(format!("{url}{query}")).json(&json!({}));
        request = match (header, token) {
            (_, None) => request,
            ("x-api-key", Some(token)) => request.header("x-api-key", token),
            (_, Some(token)) => request.bearer_auth(token),
        };
        let status = request.send().await.unwrap().status();
        assert_eq!(status.as_u16(), expected, "{query} {header} {token:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Stream

#[tokio::test]
async fn snapshot_first_then_every_change_as_a_patch_in_order() {
    let live = Live::start().await;
    live.put("a", boolean_flag("off")).await;
    let mut socket = live.connect("").await;
    let snapshot = next_message(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot");
    let version = snapshot["version"].as_i64().unwrap();
    assert_eq!(snapshot["document"]["flags"]["a"]["defaultVariant"], "off");
    assert_eq!(snapshot["environment"], "default");

    live.put("b", boolean_flag("on")).await;
    let (status, _) = live
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/environments/default/flags/a",
            Some(json!({"state": "DISABLED"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, _) = live
        .admin(
            reqwest::Method::DELETE,
            "/api/v1/environments/default/flags/b",
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);

    let first = next_message(&mut socket).await;
    let second = next_message(&mut socket).await;
    let third = next_message(&mut socket).await;
    assert_eq!(
        (first["type"].as_str(), first["version"].as_i64()),
        (Some("patch"), Some(version + 1))
    );
    assert_eq!(first["upserts"]["b"]["defaultVariant"], "on");
    assert_eq!(
        (
            second["version"].as_i64(),
            second["upserts"]["a"]["state"].as_str()
        ),
        (Some(version + 2), Some("DISABLED"))
    );
    assert_eq!(
        (third["version"].as_i64(), third["deletes"].clone()),
        (Some(version + 3), json!(["b"]))
    );
}

#[tokio::test]
async fn resume_with_since_sends_only_the_missed_patches() {
    let live = Live::start().await;
    let mut socket = live.connect("").await;
    let version = next_message(&mut socket).await["version"].as_i64().unwrap();
    drop(socket);
    live.put("x", boolean_flag("on")).await;
    live.put("y", boolean_flag("on")).await;
    let mut socket = live.connect(&format!("?since={version}")).await;
    let first = next_message(&mut socket).await;
    let second = next_message(&mut socket).await;
    assert_eq!(
        (first["type"].as_str(), first["version"].as_i64()),
        (Some("patch"), Some(version + 1))
    );
    assert_eq!(
        (second["type"].as_str(), second["version"].as_i64()),
        (Some("patch"), Some(version + 2))
    );

    // Already current: a ping says so, nothing else.
    let mut socket = live.connect(&format!("?since={}", version + 2)).await;
    let message = tokio::time::timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ping: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(
        (ping["type"].as_str(), ping["version"].as_i64()),
        (Some("ping"), Some(version + 2))
    );

    // A version this server never had (another server's, or from the future): a snapshot.
    let mut socket = live.connect(&format!("?since={}", version + 1000)).await;
    let snapshot = next_message(&mut socket).await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["version"].as_i64()),
        (Some("snapshot"), Some(version + 2))
    );
}

#[tokio::test]
async fn resume_after_a_restart_replays_the_change_log_and_too_old_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = Live::start_in(dir.path()).await;
    live.put("before", boolean_flag("on")).await;
    let (_, list) = live
        .admin(
            reqwest::Method::GET,
            "/api/v1/environments/default/flags",
            None,
        )
        .await;
    let version = list["version"].as_i64().unwrap();
    for i in 0..3 {
        live.put(&format!("after-{i}"), boolean_flag("off")).await;
    }
    live.stop().await;

    // A fresh process has an empty patch ring: the patches come from SQLite.
    let live = Live::start_in(dir.path()).await;
    let mut socket = live.connect(&format!("?since={version}")).await;
    for i in 0..3 {
        let patch = next_message(&mut socket).await;
        assert_eq!(
            (patch["type"].as_str(), patch["version"].as_i64()),
            (Some("patch"), Some(version + 1 + i)),
            "{patch}"
        );
        assert!(
            patch["upserts"].get(format!("after-{i}")).is_some(),
            "{patch}"
        );
    }
    // More versions behind than the server replays: a snapshot instead.
    let (_, list) = live
        .admin(
            reqwest::Method::GET,
            "/api/v1/environments/default/flags",
            None,
        )
        .await;
    let current = list["version"].as_i64().unwrap();
    for i in 0..(flagd_server::domain::hub::PATCH_RING + 4) {
        live.put(&format!("many-{i}"), boolean_flag("on")).await;
    }
    let mut socket = live.connect(&format!("?since={current}")).await;
    let snapshot = next_message(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(
        snapshot["version"].as_i64(),
        Some(current + flagd_server::domain::hub::PATCH_RING as i64 + 4)
    );
}

#[tokio::test]
async fn revoking_the_token_ends_its_streams() {
    let live = Live::start().await;
    let (status, created) = live
        .admin(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "temp", "role": "sdk", "environment": "default"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let mut socket = live
        .connect_with(created["token"].as_str().unwrap(), "")
        .await
        .unwrap();
    assert_eq!(next_message(&mut socket).await["type"], "snapshot");
    let (status, _) = live
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    let goodbye = next_message(&mut socket).await;
    assert_eq!(
        (goodbye["type"].as_str(), goodbye["reason"].as_str()),
        (Some("goodbye"), Some("token_revoked"))
    );
    assert_eq!(next_message(&mut socket).await["type"], "closed");
    // And the token cannot open a new one.
    assert!(
        live.connect_with(created["token"].as_str().unwrap(), "")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_says_goodbye() {
    let mut live = Live::start().await;
    let mut socket = live.connect("").await;
    assert_eq!(next_message(&mut socket).await["type"], "snapshot");
    let stopping = tokio::spawn(async move {
        live.stop().await;
    });
    let goodbye = next_message(&mut socket).await;
    assert_eq!(
        (goodbye["type"].as_str(), goodbye["reason"].as_str()),
        (Some("goodbye"), Some("shutdown")),
        "{goodbye}"
    );
    assert!(goodbye["retryAfterMs"].as_u64().is_some());
    assert_eq!(next_message(&mut socket).await["type"], "closed");
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server stops in time")
        .unwrap();
}

#[tokio::test]
async fn a_stalled_client_does_not_delay_the_others() {
    let live = Live::start().await;
    // A large environment, so the stalled client's socket buffers fill on the snapshot alone.
    let flags: serde_json::Map<String, Value> = (0..3000)
        .map(|i| {
            (
                format!("bulk-{i:04}"),
                json!({"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "metadata": {"description": "x".repeat(100)}}),
            )
        })
        .collect();
    let (status, _) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/document",
            Some(json!({"flags": flags})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);

    let _stalled = live.connect("").await; // never read
    let mut healthy = live.connect("").await;
    let version = next_message(&mut healthy).await["version"]
        .as_i64()
        .unwrap();
    for i in 0..50 {
        live.put(&format!("change-{i}"), boolean_flag("on")).await;
    }
    for i in 0..50 {
        let patch = next_message(&mut healthy).await;
        assert_eq!(patch["version"].as_i64(), Some(version + 1 + i), "{patch}");
    }
}

#[tokio::test]
async fn large_snapshots_pongs_and_patches_arrive_as_whole_frames() {
    // The server writes its messages straight to the socket (fragments of 8 KiB for large ones)
    // while tungstenite answers the client's pings: every message must still arrive whole, and
    // every patch in order.
    let live = Live::start().await;
    let flags: serde_json::Map<String, Value> = (0..60)
        .map(|i| {
            let big = json!({"state": "ENABLED", "defaultVariant": "a",
                "variants": {"a": "x".repeat(300), "b": "y".repeat(300)}});
            (format!("flag-{i:02}"), big)
        })
        .collect();
    let (status, _) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/document",
            Some(json!({"flags": flags})),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let mut socket = live.connect("").await;
    let snapshot = next_message(&mut socket).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(
        snapshot["document"]["flags"]
            .as_object()
            .map(serde_json::Map::len),
        Some(60)
    );
    assert!(
        snapshot.to_string().len() > 2 * 8 * 1024,
        "the snapshot spans several fragments"
    );
    let first = snapshot["version"].as_i64().unwrap();
    for i in 0..20u8 {
        socket.send(Message::Ping(vec![i].into())).await.unwrap();
        live.put(&format!("patched-{i}"), boolean_flag("on")).await;
    }
    let (mut pongs, mut versions) = (Vec::new(), Vec::new());
    while pongs.len() < 20 || versions.len() < 20 {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
            .expect("the stream stays open")
            .expect("every frame is well formed");
        match message {
            Message::Pong(payload) => pongs.push(payload.to_vec()),
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("a whole JSON message");
                if value["type"] == "patch" {
                    versions.push(value["version"].as_i64().unwrap());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(versions, (first + 1..=first + 20).collect::<Vec<_>>());
    assert_eq!(pongs, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
}

#[tokio::test]
async fn clients_report_their_acknowledged_versions() {
    let live = Live::start().await;
    let mut socket = live.connect("").await;
    let version = next_message(&mut socket).await["version"].as_i64().unwrap();
    socket
        .send(Message::text(
            json!({"type": "hello", "sdk": "test-sdk", "sdkVersion": "1.2.3", "clientId": "c-1"})
                .to_string(),
        ))
        .await
        .unwrap();
    live.put("f", boolean_flag("on")).await;
    let patch = next_message(&mut socket).await;
    socket
        .send(Message::text(
            json!({"type": "ack", "version": patch["version"]}).to_string(),
        ))
        .await
        .unwrap();
    for _ in 0..100 {
        let (_, body) = live
            .admin(
                reqwest::Method::GET,
                "/api/v1/environments/default/clients",
                None,
            )
            .await;
        if body["clients"][0]["ackedVersion"].as_i64() == Some(version + 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Acks of versions never sent are ignored: the listing keeps the real one (no wrapped lag).
    for bogus in [i64::MIN, -1, version + 1_000] {
        socket
            .send(Message::text(
                json!({"type": "ack", "version": bogus}).to_string(),
            ))
            .await
            .unwrap();
    }
    // A ping round trip orders the bogus acks before the next listing.
    socket.send(Message::Ping(Vec::new().into())).await.unwrap();
    loop {
        if let Message::Pong(_) = socket.next().await.unwrap().unwrap() {
            break;
        }
    }
    let (_, listed) = live
        .admin(
            reqwest::Method::GET,
            "/api/v1/environments/default/clients",
            None,
        )
        .await;
    let client = &listed["clients"][0];
    assert_eq!(
        client["ackedVersion"].as_i64(),
        Some(version + 1),
        "{listed}"
    );
    assert_eq!(
        (
            client["clientId"].as_str(),
            client["sdk"].as_str(),
            client["sdkVersion"].as_str()
        ),
        (Some("c-1"), Some("test-sdk"), Some("1.2.3"))
    );
    assert_eq!(client["lag"], 0);
    let metrics = live
        .client
        .get(format!("{}/metrics", live.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // This server's own registry: exactly one acknowledged commit (the bogus acks are not
    // counted) and one connected client.
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .to_owned()
    };
    assert_eq!(value("flagd_stream_propagation_seconds_count{}"), "1");
    assert_eq!(value("flagd_stream_clients{environment=\"default\"}"), "1");
}

#[tokio::test]
async fn deleting_the_environment_ends_its_streams_and_admins_can_stream_any() {
    let live = Live::start().await;
    let (status, _) = live
        .admin(
            reqwest::Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "staging"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let mut socket = live
        .connect_with(ADMIN, "?environment=staging")
        .await
        .unwrap();
    assert_eq!(next_message(&mut socket).await["environment"], "staging");
    // The sdk token of `default` may not stream `staging`.
    assert!(
        live.connect_with(&live.sdk.clone(), "?environment=staging")
            .await
            .is_err()
    );
    let (status, _) = live
        .admin(
            reqwest::Method::DELETE,
            "/api/v1/environments/staging",
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    let goodbye = next_message(&mut socket).await;
    assert_eq!(
        (goodbye["type"].as_str(), goodbye["reason"].as_str()),
        (Some("goodbye"), Some("environment_deleted"))
    );
}

/// A conformance row's `expect` as an OFREP evaluation (see `flag-core/tests/conformance.rs`,
/// which runs the same rows through flag-core).
fn conformance_expected(row: &Value) -> OfrepEvaluation {
    let mut expected = row["expect"].as_object().cloned().unwrap();
    expected.insert("key".to_owned(), row["flag"].clone());
    serde_json::from_value(Value::Object(expected)).unwrap()
}

/// `{base}/ofrep/v1/evaluate/flags/{key}` with the key percent-encoded as one path segment.
fn ofrep_flag_url(base: &str, key: &str) -> reqwest::Url {
    let mut url = reqwest::Url::parse(&format!("{base}/ofrep/v1/evaluate/flags")).unwrap();
    url.path_segments_mut().unwrap().push(key);
    url
}

/// The flagd conformance table over OFREP, with the document loaded whole (`PUT document`) and
/// flag by flag (`PUT` of each flag, keys percent-encoded): every row answers as flag-core does.
#[tokio::test]
async fn the_conformance_table_over_ofrep() {
    let mut live = Live::start().await;
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../flag-core/tests/data/conformance"
    );
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{data}/flags.json")).unwrap())
            .unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{data}/cases.json")).unwrap())
            .unwrap();

    let (status, report) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/document",
            Some(document.clone()),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{report}");
    assert!(
        report["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{report}"
    );

    // The same flags, each written on its own into a second environment.
    let (status, _) = live
        .admin(
            reqwest::Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "single"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let settings = json!({"metadata": document["metadata"], "$evaluators": document["$evaluators"], "flags": {}});
    let (status, _) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/single/document",
            Some(settings),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    for (key, flag) in document["flags"].as_object().unwrap() {
        let mut url =
            reqwest::Url::parse(&format!("{}/api/v1/environments/single/flags", live.base))
                .unwrap();
        url.path_segments_mut().unwrap().push(key);
        let response = live
            .client
            .put(url)
            .bearer_auth(ADMIN)
            .json(flag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{key}");
        let written: Value = response.json().await.unwrap();
        assert_eq!(written["key"], json!(key));
    }
    let (_, single_token) = live
        .admin(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "single-app", "role": "sdk", "environment": "single"})),
        )
        .await;
    let single_sdk = single_token["token"].as_str().unwrap().to_owned();

    let mut failures = Vec::new();
    let rows = cases["rows"].as_array().unwrap();
    for (environment, token) in [("default", &live.sdk), ("single", &single_sdk)] {
        for row in rows {
            let key = row["flag"].as_str().unwrap();
            let response = live
                .client
                .post(ofrep_flag_url(&live.base, key))
                .bearer_auth(token)
                .json(&json!({"context": row["context"]}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer: OfrepEvaluation = response.json().await.unwrap();
            let want_status = match row["expect"]["errorCode"].as_str() {
                None => 200,
                Some("FLAG_NOT_FOUND") => 404,
                Some(_) => 400,
            };
            if status != want_status {
                failures.push(format!(
                    "{environment} {key}: status {status}, expected {want_status}"
                ));
            }
            if let Some(problem) = answer.difference(&conformance_expected(row)) {
                failures.push(format!("{environment} {key} {}: {problem}", row["context"]));
            }
        }
    }
    // Bulk evaluation agrees too, for the rows with an empty context.
    let (status, _, bulk) = live.ofrep("flags", &live.sdk, json!({"context": {}})).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let bulk = bulk["flags"].as_array().unwrap();
    for row in rows.iter().filter(|r| r["context"] == json!({})) {
        let Some(answer) = bulk.iter().find(|f| f["key"] == row["flag"]) else {
            assert_eq!(row["expect"]["errorCode"], "FLAG_NOT_FOUND", "{row}");
            continue;
        };
        let answer: OfrepEvaluation = serde_json::from_value(answer.clone()).unwrap();
        if let Some(problem) = answer.difference(&conformance_expected(row)) {
            failures.push(format!("bulk {}: {problem}", row["flag"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    live.stop().await;
}

/// `--strict` makes every write refuse warnings; `?strict=false` relaxes one request.
#[tokio::test]
async fn the_strict_server_option_refuses_warnings_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = Live::start_with(dir.path(), true).await;
    let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [{"nope": [1]}, "on", "off"]}});
    let (status, body) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/flags/f",
            Some(flag.clone()),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["problems"][0]["code"], "unknown_operator",
        "{body}"
    );
    assert_eq!(
        body["error"]["problems"][0]["severity"], "warning",
        "{body}"
    );
    let (status, body) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/flags/f?strict=false",
            Some(flag),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    assert_eq!(body["warnings"][0]["path"], "flags.f.targeting.if[0].nope");
    let (status, body) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/flags/g?strict=maybe",
            Some(json!({"state": "ENABLED", "variants": {"on": true}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    live.stop().await;
}

/// Bulk OFREP's `If-None-Match` matches weakly (RFC 9110 §13.1.2): `W/"tag"` is `"tag"`.
#[tokio::test]
async fn bulk_if_none_match_uses_the_weak_comparison() {
    let mut live = Live::start().await;
    live.put(
        "f",
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
    )
    .await;
    let (_, headers, _) = live.ofrep("flags", &live.sdk, json!({"context": {}})).await;
    let etag = headers["etag"].to_str().unwrap().to_owned();
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", W/{etag}"),
        "*".to_owned(),
    ] {
        let response = live
            .client
            .post(format!("{}/ofrep/v1/evaluate/flags", live.base))
            .bearer_auth(&live.sdk)
            .header("if-none-match", &tag)
            .json(&json!({"context": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::NOT_MODIFIED,
            "{tag}"
        );
    }
    live.stop().await;
}

/// The stream reads `?environment=` exactly as OFREP does: decoded, and refused when given twice.
#[tokio::test]
async fn the_stream_reads_the_environment_parameter_as_ofrep_does() {
    let live = Live::start().await;
    let mut socket = live
        .connect_with(ADMIN, "?environment=%64efault")
        .await
        .unwrap();
    assert_eq!(next_message(&mut socket).await["environment"], "default");
    let refused = live
        .connect_with(ADMIN, "?environment=default&environment=default")
        .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

/// A flag larger than 1 MiB is refused with a clear 422, whichever way it is written.
#[tokio::test]
async fn an_oversized_flag_is_refused() {
    let mut live = Live::start().await;
    let countries: Vec<String> = (0..120_000).map(|i| format!("c-{i:06}")).collect();
    let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [{"in": [{"var": "country"}, countries]}, "on", "off"]}});
    let (status, body) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/flags/huge",
            Some(flag.clone()),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "flag_too_large", "{body}");
    let (status, body) = live
        .admin(
            reqwest::Method::PUT,
            "/api/v1/environments/default/document",
            Some(json!({"flags": {"huge": flag}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "flags.huge", "{body}");
    live.stop().await;
}

/// `--shutdown-timeout` bounds the whole drain, not each of its steps in turn: a request whose
/// body never finishes and a stream client that stopped reading in the middle of a large
/// snapshot are both cut off by the same deadline (3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_bounds_the_whole_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut live = Live::start().await;
    // A snapshot far larger than the socket buffers: the stalled client's session blocks on it.
    for i in 0..12 {
        let mut flag = boolean_flag("on");
        flag["description"] = json!("x".repeat(1000 * 1024));
        live.put(&format!("big-{i}"), flag).await;
    }
    let address = live.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                live.sdk
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut switching = [0u8; 12];
    stalled.read_exact(&mut switching).await.unwrap();
    assert_eq!(&switching, b"HTTP/1.1 101");
    // ...and then it never reads again. A request whose body never arrives holds the drain too.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        format!(
            "PUT /api/v1/environments/default/flags/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    live.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4_000),
        "shutdown took {took:?}"
    );
    drop((stalled, slow));
}
