//! The SDK against a scripted fake stream server (every recovery path), offline modes, the cache,
//! and concurrent evaluation during updates.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flag_sdk::{ErrorCode, EvaluationContext, FlagClient, Reason, Status};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WAIT: Duration = Duration::from_secs(10);

/// One accepted stream connection and the query string it asked with.
struct Connection {
    socket: WebSocketStream<tokio::net::TcpStream>,
    query: String,
}

impl Connection {
    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    /// The next client message of a type, skipping others; fails the test, saying what came
    /// instead, if none comes in time or the client goes away.
    async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let message = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => {
                    panic!("the stream failed ({error}) before a {kind:?} message; got {skipped:?}")
                }
                Ok(None) => panic!("the client left before a {kind:?} message; got {skipped:?}"),
                Err(_) => panic!("no {kind:?} message within {WAIT:?}; got {skipped:?}"),
            };
            if let Message::Text(text) = &message
                && let Ok(value) = serde_json::from_str::<Value>(text)
                && value["type"] == kind
            {
                return value;
            }
            skipped.push(message);
        }
    }

    fn since(&self) -> Option<i64> {
        self.query
            .split('&')
            .find_map(|p| p.strip_prefix("since="))
            .and_then(|v| v.parse().ok())
    }
}

/// A fake server: every accepted WebSocket arrives on the channel, for the test to script.
// tungstenite dictates the handshake callback's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
async fn fake_server() -> (String, mpsc::UnboundedReceiver<Connection>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let query = Arc::new(Mutex::new(String::new()));
            let seen = query.clone();
            let callback = move |request: &Request, response: Response| {
                *seen.lock().unwrap() = request.uri().query().unwrap_or_default().to_owned();
                Ok(response)
            };
            if let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                let query = query.lock().unwrap().clone();
                let _ = sender.send(Connection { socket, query });
            }
        }
    });
    (url, receiver)
}

fn client(url: &str) -> FlagClient {
    FlagClient::builder()
        .server(url)
        .token("flg_sdk_test")
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .ping_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

fn snapshot(version: i64, flags: Value) -> Value {
    json!({"type": "snapshot", "environment": "default", "version": version, "document": {"flags": flags}})
}

fn patch(version: i64, upserts: Value, deletes: Value) -> Value {
    json!({"type": "patch", "version": version, "upserts": upserts, "deletes": deletes})
}

async fn accept(connections: &mut mpsc::UnboundedReceiver<Connection>) -> Connection {
    tokio::time::timeout(WAIT, connections.recv())
        .await
        .expect("the client connects in time")
        .unwrap()
}

/// Waits until what `observe` sees is `done` (the client applies messages on its own task), or
/// fails saying what it last saw.
async fn eventually<T: std::fmt::Debug>(
    what: &str,
    observe: impl Fn() -> T,
    done: impl Fn(&T) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = observe();
        if done(&seen) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}; last saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn snapshot_then_patches_with_acks_hello_and_listeners() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    assert_eq!(client.status(), Status::NotReady);
    let anyone = EvaluationContext::new("u");
    let missing = client.bool_details("a", &anyone, true);
    assert_eq!(
        (missing.value, missing.error_code),
        (true, Some(ErrorCode::ProviderNotReady))
    );

    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    client.on_change(move |change| seen.lock().unwrap().push(change.clone()));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = statuses.clone();
    client.on_status(move |status| seen.lock().unwrap().push(status));

    let mut connection = accept(&mut connections).await;
    let hello = connection.next_of("hello").await;
    assert_eq!(hello["sdk"], "flag-sdk-rust");
    assert!(hello["clientId"].is_string());
    connection
        .send(snapshot(5, json!({"a": flag("off"), "b": flag("on")})))
        .await;
    assert_eq!(connection.next_of("ack").await["version"], 5);
    client.wait_ready(WAIT).await.unwrap();
    assert_eq!(client.status(), Status::Ready);
    assert!(!client.bool_value("a", &anyone, true));

    connection
        .send(patch(6, json!({"a": flag("on")}), json!(["b"])))
        .await;
    assert_eq!(connection.next_of("ack").await["version"], 6);
    eventually("patch applied", || client.version(), |v| *v == Some(6)).await;
    assert!(client.bool_value("a", &anyone, false));
    assert_eq!(
        client.bool_details("b", &anyone, false).error_code,
        Some(ErrorCode::FlagNotFound)
    );

    let changes = changes.lock().unwrap().clone();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].keys, ["a", "b"]);
    assert_eq!(
        (
            changes[1].keys.clone(),
            changes[1].old_version,
            changes[1].new_version
        ),
        (vec!["a".to_owned(), "b".to_owned()], Some(5), 6)
    );
    assert_eq!(statuses.lock().unwrap().first(), Some(&Status::Ready));
}

#[tokio::test]
async fn malformed_json_resyncs_without_since() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut first = accept(&mut connections).await;
    first.send(snapshot(1, json!({"a": flag("on")}))).await;
    first.next_of("ack").await;
    first.send_raw("{ not json").await;
    let mut second = accept(&mut connections).await;
    assert_eq!(
        second.since(),
        None,
        "after a malformed message the client asks for a snapshot"
    );
    // Still serving the last good flags meanwhile.
    assert!(client.bool_value("a", &EvaluationContext::new("u"), false));
    second.send(snapshot(2, json!({"a": flag("off")}))).await;
    second.next_of("ack").await;
    eventually("resynced", || client.version(), |v| *v == Some(2)).await;
}

#[tokio::test]
async fn a_gap_or_a_duplicate_resyncs_and_never_serves_a_mixed_state() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let anyone = EvaluationContext::new("u");
    let mut first = accept(&mut connections).await;
    first.send(snapshot(10, json!({"a": flag("off")}))).await;
    first.next_of("ack").await;
    // Version 12 after 10: a gap. The patch must not be applied.
    first
        .send(patch(12, json!({"a": flag("on")}), json!([])))
        .await;
    let mut second = accept(&mut connections).await;
    assert_eq!(second.since(), None);
    assert_eq!(client.version(), Some(10));
    assert!(
        !client.bool_value("a", &anyone, true),
        "the gapped patch was not applied"
    );
    second.send(snapshot(12, json!({"a": flag("on")}))).await;
    second.next_of("ack").await;
    // A duplicate of version 12.
    second
        .send(patch(12, json!({"a": flag("off")}), json!([])))
        .await;
    let mut third = accept(&mut connections).await;
    assert_eq!(third.since(), None);
    assert!(
        client.bool_value("a", &anyone, false),
        "the duplicate was not applied"
    );
    third.send(snapshot(13, json!({"a": flag("on")}))).await;
    third.next_of("ack").await;
    eventually("resynced", || client.version(), |v| *v == Some(13)).await;
}

/// A stream that goes quiet for longer than the ping timeout is dead: the client turns Ready →
/// Stale, keeps serving its flags, and reconnects asking for what came after its version; the
/// first ping at that version makes it Ready again.
///
/// Real time, not a paused clock: the client's timers share the runtime with real sockets, and a
/// paused clock jumps to the next timer whenever the runtime waits for the network (tried: the
/// ping timeout fired before the test had read the client's ack).
#[tokio::test]
async fn missed_pings_mean_a_dead_stream_and_a_resume_with_since() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let (sender, mut statuses) = mpsc::unbounded_channel();
    client.on_status(move |status| {
        let _ = sender.send(status);
    });
    let anyone = EvaluationContext::new("u");
    let mut first = accept(&mut connections).await;
    first.send(snapshot(3, json!({"a": flag("on")}))).await;
    let last_message = tokio::time::Instant::now();
    first.next_of("ack").await;
    assert_eq!(next_status(&mut statuses, &client).await, Status::Ready);

    // Say nothing for longer than the ping timeout (500 ms): the client gives up on us.
    assert_eq!(next_status(&mut statuses, &client).await, Status::Stale);
    assert!(
        last_message.elapsed() >= Duration::from_millis(500),
        "stale {:?} after the last message, before the ping timeout",
        last_message.elapsed()
    );
    assert_eq!(client.version(), Some(3));
    assert!(
        client.bool_value("a", &anyone, false),
        "stale flags keep serving"
    );

    let mut second = accept(&mut connections).await;
    assert_eq!(
        second.since(),
        Some(3),
        "a dead stream resumes from the last version"
    );
    assert_eq!(
        client.status(),
        Status::Stale,
        "connected again, but nothing heard yet"
    );
    second.send(json!({"type": "ping", "version": 3})).await;
    assert_eq!(
        next_status(&mut statuses, &client).await,
        Status::Ready,
        "ready again after the ping"
    );
    assert!(client.bool_value("a", &anyone, false));
    drop(first);
}

/// The client's next status change, as its status listener reports it.
async fn next_status(
    statuses: &mut mpsc::UnboundedReceiver<Status>,
    client: &FlagClient,
) -> Status {
    tokio::time::timeout(WAIT, statuses.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no status change within {WAIT:?}; the status is still {:?}",
                client.status()
            )
        })
        .expect("the client keeps its status listener")
}

#[tokio::test]
async fn an_abrupt_reset_keeps_the_flags_and_resumes() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let anyone = EvaluationContext::new("u");
    let mut first = accept(&mut connections).await;
    first.send(snapshot(7, json!({"a": flag("on")}))).await;
    first.next_of("ack").await;
    drop(first); // TCP closed without a close handshake
    let mut second = accept(&mut connections).await;
    assert_eq!(second.since(), Some(7));
    assert!(
        client.bool_value("a", &anyone, false),
        "last known good flags keep serving"
    );
    second
        .send(patch(8, json!({"a": flag("off")}), json!([])))
        .await;
    second.next_of("ack").await;
    eventually("patch after resume", || client.version(), |v| *v == Some(8)).await;
    assert!(!client.bool_value("a", &anyone, true));
}

#[tokio::test]
async fn goodbye_is_honoured() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut first = accept(&mut connections).await;
    first.send(snapshot(1, json!({"a": flag("on")}))).await;
    first.next_of("ack").await;
    let started = std::time::Instant::now();
    first
        .send(json!({"type": "goodbye", "version": 1, "reason": "shutdown", "retryAfterMs": 300}))
        .await;
    let mut second = accept(&mut connections).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "reconnected before retryAfterMs"
    );
    assert_eq!(second.since(), Some(1));
    // A revoked token: stop for good, keep serving.
    second
        .send(
            json!({"type": "goodbye", "version": 1, "reason": "token_revoked", "retryAfterMs": 0}),
        )
        .await;
    eventually(
        "fatal status",
        || client.status(),
        |status| *status == Status::Fatal,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), connections.recv())
            .await
            .is_err(),
        "no reconnect after revocation"
    );
    assert!(client.bool_value("a", &EvaluationContext::new("u"), false));
}

#[tokio::test]
async fn close_sends_the_socket_away() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut connection = accept(&mut connections).await;
    connection.send(snapshot(1, json!({"a": flag("on")}))).await;
    connection.next_of("ack").await;
    client.close().await;
    // A Close frame, not just a dropped connection.
    let frame = tokio::time::timeout(WAIT, connection.socket.next())
        .await
        .unwrap();
    assert!(matches!(frame, Some(Ok(Message::Close(_)))), "{frame:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), connections.recv())
            .await
            .is_err(),
        "no reconnect after close"
    );
    assert!(
        client.bool_value("a", &EvaluationContext::new("u"), false),
        "evaluation still works after close"
    );
}

/// Two flags, `n` and `m`, serve 7 × version at every version. Reader threads evaluate them while
/// a thousand patches arrive, each changing both: every value read was published, no reader goes
/// back in time, and the two flags agree. Reads of two flags are two evaluations, so they may see
/// two versions; but reading `n`, then `m`, then `n` again, the versions seen never go down, and
/// none is newer than the version the client reports afterwards. A patch applied one flag at a
/// time would show as an `m` older than the `n` before it, or an `n` older than the `m`.
#[tokio::test]
async fn no_torn_reads_while_a_thousand_updates_arrive() {
    const UPDATES: i64 = 1000;
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut connection = accept(&mut connections).await;
    let numbers = |v: i64| json!({"state": "ENABLED", "variants": {"value": v * 7}, "defaultVariant": "value"});
    connection
        .send(snapshot(1, json!({"n": numbers(1), "m": numbers(1)})))
        .await;
    client.wait_ready(WAIT).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // However the test ends, the readers stop.
    let _stop_readers = StopOnDrop(stop.clone());
    let newest_read = Arc::new(AtomicI64::new(1));
    let evaluations = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for t in 0..4 {
        let (client, stop, newest_read, evaluations) = (
            client.clone(),
            stop.clone(),
            newest_read.clone(),
            evaluations.clone(),
        );
        readers.push(std::thread::spawn(move || {
            let context = EvaluationContext::new(format!("reader-{t}"));
            // Reader 0 uses the typed getters, reader 1 `evaluate`, readers 2 and 3 alternate
            // between them call by call: mixed on one thread, the versions must still never go
            // back (a typed getter once served its per-thread snapshot after `evaluate` had
            // already served a newer one).
            let calls = std::cell::Cell::new(0u64);
            let read = |key: &str| {
                calls.set(calls.get() + 1);
                let typed = match t {
                    0 => true,
                    1 => false,
                    _ => (calls.get() + t).is_multiple_of(2),
                };
                if typed {
                    client.int_value(key, &context, -1)
                } else {
                    client
                        .evaluate(key, &context, |r| r.value.and_then(Value::as_i64))
                        .unwrap_or(-1)
                }
            };
            let mut last = 7;
            while !stop.load(Ordering::Relaxed) {
                let n = read("n");
                let m = read("m");
                let n_again = read("n");
                let reported = client.version().map_or(-1, |v| v * 7);
                let seen = format!(
                    "reader {t}: n = {n}, then m = {m}, then n = {n_again}, then version {}, \
                     after n = {last}",
                    reported / 7
                );
                for value in [n, m, n_again] {
                    assert!(
                        (7..=7 * (UPDATES + 1)).contains(&value) && value % 7 == 0,
                        "{seen}: {value} was never published"
                    );
                }
                assert!(
                    last <= n && n <= m && m <= n_again && n_again <= reported,
                    "{seen}: the flags disagree or went back in time"
                );
                last = n_again;
                newest_read.fetch_max(n_again / 7, Ordering::Relaxed);
                evaluations.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    'updates: for version in 2..=UPDATES + 1 {
        connection
            .send(patch(
                version,
                json!({"n": numbers(version), "m": numbers(version)}),
                json!([]),
            ))
            .await;
        // Every hundred versions, wait until a reader has read this one: the reads interleave
        // with the updates instead of all coming before or after them.
        if version % 100 == 0 {
            let deadline = tokio::time::Instant::now() + WAIT;
            while newest_read.load(Ordering::Relaxed) < version {
                if readers.iter().any(|reader| reader.is_finished()) {
                    break 'updates; // A reader failed: joining it below says why.
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "waited for a reader to read version {version}; the newest read is {}, \
                     the client is at {:?}",
                    newest_read.load(Ordering::Relaxed),
                    client.version()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    if !readers.iter().any(|reader| reader.is_finished()) {
        eventually(
            "all updates applied",
            || client.version(),
            |v| *v == Some(UPDATES + 1),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
    }
    assert!(evaluations.load(Ordering::Relaxed) > 1000);
    assert_eq!(
        client.int_value("n", &EvaluationContext::new("u"), -1),
        7 * (UPDATES + 1)
    );
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------------------------------
// Offline, bootstrap and cache

fn document() -> Value {
    json!({"flags": {
        "a": flag("on"),
        "broken": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": {"nope": []}},
        "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}}
    }})
}

#[tokio::test]
async fn offline_from_a_bootstrap_document_with_a_broken_flag_isolated() {
    let client = FlagClient::builder()
        .bootstrap_document(document())
        .build()
        .unwrap();
    assert_eq!(client.status(), Status::Ready);
    let anyone = EvaluationContext::new("u");
    assert!(client.bool_value("a", &anyone, false));
    let broken = client.bool_details("broken", &anyone, false);
    assert_eq!(
        (broken.reason, broken.error_code),
        (Reason::Error, Some(ErrorCode::ParseError))
    );
    // The SDK and flag-core agree, user by user.
    let (compiled, _) = flag_core::CompiledFlagSet::compile_json_lenient(&document());
    for i in 0..200 {
        let user = EvaluationContext::new(format!("user-{i}"));
        let core = compiled
            .resolve_bool(
                "split",
                &flag_core::EvaluationContext::new(format!("user-{i}")),
                false,
                0,
            )
            .value;
        assert_eq!(client.bool_value("split", &user, false), core);
    }
}

#[tokio::test]
async fn a_bootstrap_file_that_is_not_a_flag_document_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, "{\"nope\": 1}").unwrap();
    let error = FlagClient::builder()
        .bootstrap_file(&path)
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains("not a flagd document"),
        "{error}"
    );
    let error = FlagClient::builder()
        .bootstrap_file(dir.path().join("missing.json"))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("missing.json"), "{error}");
}

#[tokio::test]
async fn the_cache_serves_when_the_server_is_down_and_bad_caches_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let (url, mut connections) = fake_server().await;
    {
        let client = FlagClient::builder()
            .server(&url)
            .token("t")
            .cache_file(&cache)
            .build()
            .unwrap();
        let mut connection = accept(&mut connections).await;
        connection.send(snapshot(9, json!({"a": flag("on")}))).await;
        connection.next_of("ack").await;
        eventually(
            "cache written",
            || std::fs::read_to_string(&cache).ok(),
            |text| text.as_ref().is_some_and(|t| t.contains("\"version\":9")),
        )
        .await;
        client.close().await;
    }
    // A cache is only used for the server it came from (this other one never answers).
    let (other_url, _other_connections) = fake_server().await;
    let from_other_server = FlagClient::builder()
        .server(&other_url)
        .token("t")
        .cache_file(&cache)
        .build()
        .unwrap();
    assert_eq!(
        from_other_server.status(),
        Status::NotReady,
        "a cache from another server is ignored"
    );
    from_other_server.close().await;

    let client = FlagClient::builder()
        .server(&url)
        .token("t")
        .cache_file(&cache)
        .connect_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(
        client.status(),
        Status::Stale,
        "cached flags are served as stale until the server answers"
    );
    assert_eq!(client.version(), Some(9));
    assert!(client.bool_value("a", &EvaluationContext::new("u"), false));
    client.close().await;

    // A corrupt cache is ignored. From the server it names: from another it would be ignored
    // anyway, whether or not it could be read. Nothing answers its connection.
    std::fs::write(&cache, "{ corrupt").unwrap();
    let client = FlagClient::builder()
        .server(&url)
        .token("t")
        .cache_file(&cache)
        .build()
        .unwrap();
    assert_eq!(
        client.status(),
        Status::NotReady,
        "a corrupt cache is not served"
    );
    assert!(client.wait_ready(Duration::from_millis(100)).await.is_err());
    client.close().await;
}

#[tokio::test]
async fn a_server_without_a_token_or_a_bad_url_or_ca_is_a_configuration_error() {
    assert!(
        FlagClient::builder()
            .server("http://127.0.0.1:1")
            .build()
            .is_err()
    );
    // https is fine; a CA that is not a certificate is not.
    let https = FlagClient::builder()
        .server("https://flags.example.com")
        .token("t")
        .build()
        .unwrap();
    https.close().await;
    let error = FlagClient::builder()
        .server("https://flags.example.com")
        .token("t")
        .ca_certificate("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("CA certificate"), "{error}");
    let missing = FlagClient::builder()
        .server("https://flags.example.com")
        .token("t")
        .ca_certificate(std::path::Path::new("/nonexistent/ca.pem"))
        .build()
        .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/ca.pem"),
        "{missing}"
    );
    assert!(
        FlagClient::builder()
            .server("flags.example.com")
            .token("t")
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn a_malformed_flag_in_a_patch_is_isolated_and_the_rest_keep_working() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let anyone = EvaluationContext::new("u");
    let mut connection = accept(&mut connections).await;
    connection
        .send(snapshot(1, json!({"a": flag("on"), "b": flag("on")})))
        .await;
    connection.next_of("ack").await;
    // `b` arrives broken (an unknown state), `a` changes: the patch still applies.
    connection
        .send(patch(
            2,
            json!({"a": flag("off"), "b": {"state": "SOMETIMES", "variants": {"on": true}}}),
            json!([]),
        ))
        .await;
    connection.next_of("ack").await;
    eventually("patch applied", || client.version(), |v| *v == Some(2)).await;
    assert!(!client.bool_value("a", &anyone, true));
    let broken = client.bool_details("b", &anyone, true);
    assert_eq!(
        (broken.value, broken.error_code),
        (true, Some(ErrorCode::ParseError))
    );
    // And a well-formed fix heals it incrementally.
    connection
        .send(patch(3, json!({"b": flag("off")}), json!([])))
        .await;
    connection.next_of("ack").await;
    eventually("fixed", || client.version(), |v| *v == Some(3)).await;
    assert!(!client.bool_value("b", &anyone, true));
}

#[tokio::test]
async fn two_clients_on_one_thread_never_see_each_others_flags() {
    let with_default = |default: &str| {
        FlagClient::builder()
            .bootstrap_document(json!({"flags": {"f": flag(default)}}))
            .build()
            .unwrap()
    };
    let (on, off) = (with_default("on"), with_default("off"));
    let user = EvaluationContext::new("u");
    for _ in 0..100 {
        assert!(on.bool_value("f", &user, false));
        assert!(!off.bool_value("f", &user, true));
    }
}

/// A refused token (HTTP 401) is `Status::Error` while the client keeps retrying, not the terminal
/// `Status::Fatal`: once the server accepts the token, the client syncs and is `Ready`.
#[tokio::test]
async fn a_refused_token_is_an_error_that_heals() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let refusals = Arc::new(AtomicUsize::new(0));
    let (sender, mut connections) = mpsc::unbounded_channel();
    let counted = refusals.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            // The first three connections are refused as a server refuses an unknown token.
            if counted.load(Ordering::SeqCst) < 3 {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                counted.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if let Ok(socket) = tokio_tungstenite::accept_async(stream).await {
                let _ = sender.send(Connection {
                    socket,
                    query: String::new(),
                });
            }
        }
    });
    let client = client(&url);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = statuses.clone();
    client.on_status(move |status| seen.lock().unwrap().push(status));
    let mut connection = accept(&mut connections).await;
    assert_eq!(
        refusals.load(Ordering::SeqCst),
        3,
        "it retried after each refusal"
    );
    connection.send(snapshot(1, json!({"a": flag("on")}))).await;
    eventually("ready", || client.status(), |s| *s == Status::Ready).await;
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(
        statuses,
        [Status::Error, Status::NotReady, Status::Ready],
        "refused: Error (never Fatal); accepted: no longer Error; synced: Ready"
    );
}

/// A cache written for one environment is never served (nor resumed with `since`) by a client of
/// another environment of the same server.
#[tokio::test]
async fn a_cache_from_another_environment_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let (url, mut connections) = fake_server().await;
    let staging = FlagClient::builder()
        .server(&url)
        .token("flg_admin_test")
        .environment("staging")
        .cache_file(&path)
        .build()
        .unwrap();
    let mut connection = accept(&mut connections).await;
    connection
        .send(
            json!({"type": "snapshot", "environment": "staging", "version": 7,
                     "document": {"flags": {"a": flag("on")}}}),
        )
        .await;
    connection.next_of("ack").await;
    staging.close().await;
    // Same server, same token, another environment: no cached flags, no `since`.
    let production = FlagClient::builder()
        .server(&url)
        .token("flg_admin_test")
        .environment("production")
        .cache_file(&path)
        .build()
        .unwrap();
    assert_eq!(production.status(), Status::NotReady);
    assert_eq!(production.version(), None);
    let connection = accept(&mut connections).await;
    assert_eq!(connection.since(), None);
    // The same environment again: the cache is used and resumed from.
    let again = FlagClient::builder()
        .server(&url)
        .token("flg_admin_test")
        .environment("staging")
        .cache_file(&path)
        .build()
        .unwrap();
    assert_eq!(again.status(), Status::Stale);
    assert_eq!(again.version(), Some(7));
}

/// `close` leaves the newest flags in the cache file, and no temporary file beside it.
#[tokio::test]
async fn close_flushes_the_newest_version_to_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let (url, mut connections) = fake_server().await;
    let client = FlagClient::builder()
        .server(&url)
        .token("flg_sdk_test")
        .cache_file(&path)
        .build()
        .unwrap();
    let mut connection = accept(&mut connections).await;
    connection.send(snapshot(1, json!({"a": flag("on")}))).await;
    for version in 2..=300 {
        let default = if version % 2 == 0 { "off" } else { "on" };
        connection
            .send(patch(version, json!({"a": flag(default)}), json!([])))
            .await;
    }
    eventually(
        "all patches applied",
        || client.version(),
        |v| *v == Some(300),
    )
    .await;
    client.close().await;
    let cached: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cached["version"], 300);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

/// A patch whose version cannot follow (here `i64::MIN`, whose predecessor overflows) makes the
/// client resynchronise; it never panics the sync task.
#[tokio::test]
async fn an_impossible_patch_version_resynchronises() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut connection = accept(&mut connections).await;
    connection.send(snapshot(1, json!({"a": flag("on")}))).await;
    connection.next_of("ack").await;
    connection
        .send(json!({"type": "patch", "version": i64::MIN, "upserts": {}, "deletes": []}))
        .await;
    let mut again = accept(&mut connections).await;
    assert_eq!(again.since(), None, "a resync asks for a snapshot");
    again.send(snapshot(5, json!({"a": flag("off")}))).await;
    eventually("synced again", || client.version(), |v| *v == Some(5)).await;
}

/// A listener that panics is contained: updates keep arriving.
#[tokio::test]
async fn a_panicking_listener_does_not_stop_updates() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    client.on_change(|_| panic!("a bug in the application's listener"));
    let mut connection = accept(&mut connections).await;
    connection.send(snapshot(1, json!({"a": flag("on")}))).await;
    connection.next_of("ack").await;
    connection
        .send(patch(2, json!({"a": flag("off")}), json!([])))
        .await;
    connection.next_of("ack").await;
    eventually("patch applied", || client.version(), |v| *v == Some(2)).await;
    assert!(!client.bool_value("a", &EvaluationContext::new("u"), true));
}

/// `wait_ready` returns at once when the server ends the client for good before any flags.
#[tokio::test]
async fn wait_ready_returns_on_a_final_goodbye() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let mut connection = accept(&mut connections).await;
    connection
        .send(
            json!({"type": "goodbye", "version": 0, "reason": "token_revoked", "retryAfterMs": 0}),
        )
        .await;
    let started = std::time::Instant::now();
    let error = client
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    assert_eq!(client.status(), Status::Fatal);
}

/// A token that cannot be an HTTP header is a configuration error at `build()`.
#[tokio::test]
async fn a_token_that_cannot_be_a_header_is_refused_at_build() {
    let error = FlagClient::builder()
        .server("http://127.0.0.1:1")
        .token("flg_sdk_x\nInjected: 1")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("token"), "{error}");
}

/// Reading a flag from a thread-local's destructor (the per-thread cache is gone then) works.
#[test]
fn reads_from_a_thread_local_destructor_work() {
    struct ReadOnDrop(FlagClient);
    impl Drop for ReadOnDrop {
        fn drop(&mut self) {
            assert!(self.0.bool_value("a", &EvaluationContext::new("u"), false));
        }
    }
    thread_local! {
        static GUARD: std::cell::RefCell<Option<ReadOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let client = FlagClient::builder()
        .bootstrap_document(json!({"flags": {"a": flag("on")}}))
        .build()
        .unwrap();
    std::thread::spawn(move || {
        // Registered before the client's per-thread cache, so destroyed after it.
        GUARD.with(|guard| *guard.borrow_mut() = Some(ReadOnDrop(client.clone())));
        assert!(client.bool_value("a", &EvaluationContext::new("u"), false));
    })
    .join()
    .unwrap();
}

#[tokio::test]
async fn a_flag_handle_follows_updates_deletion_and_recreation() {
    let (url, mut connections) = fake_server().await;
    let client = client(&url);
    let anyone = EvaluationContext::new("u");
    // Made before the client has flags, and before the flag exists.
    let a = client.flag("a");
    let c = client.flag("c");
    assert_eq!(a.key(), "a");
    assert_eq!(
        a.bool_details(&anyone, true).error_code,
        Some(ErrorCode::ProviderNotReady)
    );
    let mut connection = accept(&mut connections).await;
    connection.next_of("hello").await;
    connection
        .send(snapshot(5, json!({"a": flag("off"), "b": flag("on")})))
        .await;
    client.wait_ready(WAIT).await.unwrap();
    assert!(!a.bool_value(&anyone, true));
    assert_eq!(
        c.bool_details(&anyone, false).error_code,
        Some(ErrorCode::FlagNotFound)
    );
    // Changed: the handle sees the new definition.
    connection
        .send(patch(6, json!({"a": flag("on")}), json!([])))
        .await;
    eventually("patch 6", || client.version(), |v| *v == Some(6)).await;
    assert!(a.bool_value(&anyone, false));
    // Deleted: not found; created again: found again.
    connection.send(patch(7, json!({}), json!(["a"]))).await;
    eventually("patch 7", || client.version(), |v| *v == Some(7)).await;
    let gone = a.bool_details(&anyone, true);
    assert_eq!(
        (gone.value, gone.error_code),
        (true, Some(ErrorCode::FlagNotFound))
    );
    connection
        .send(patch(
            8,
            json!({"a": flag("off"), "c": flag("on")}),
            json!([]),
        ))
        .await;
    eventually("patch 8", || client.version(), |v| *v == Some(8)).await;
    let back = a.bool_details(&anyone, true);
    assert_eq!(
        (back.value, back.variant.as_deref(), back.error_code),
        (false, Some("off"), None)
    );
    assert!(c.bool_value(&anyone, false));
    // The handle and the key-based getter agree, and a clone on another thread works too.
    assert_eq!(
        a.bool_value(&anyone, true),
        client.bool_value("a", &anyone, true)
    );
    let on_thread = a.clone();
    let context = anyone.clone();
    let value = std::thread::spawn(move || on_thread.bool_value(&context, true))
        .join()
        .unwrap();
    assert!(!value);
    // A type mismatch is the caller's default with the error, as through the client.
    assert_eq!(
        a.string_details(&anyone, "x").error_code,
        Some(ErrorCode::TypeMismatch)
    );
    // Nested use from an evaluate closure.
    let nested = a.evaluate(&anyone, |outer| {
        (
            outer.variant.map(str::to_owned),
            a.bool_value(&anyone, true),
        )
    });
    assert_eq!(nested, (Some("off".to_owned()), false));
}
