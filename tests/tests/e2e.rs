//! End-to-end tests against the real `flagd-server` process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tests::ServerProcess;

const ADMIN: &str = "e2e-admin-token-0123456789abcdef";

/// An HTTP client whose requests fail after a while instead of waiting forever on a server that
/// stopped answering.
use tests::http;

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
    // Why each writer stopped, for the message if the burst never comes.
    let stopped: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, base, acknowledged, stopped) = (
            client.clone(),
            server.base_url.clone(),
            acknowledged.clone(),
            stopped.clone(),
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
                    // The server died mid-burst (or refused a write): say why, stop writing.
                    outcome => {
                        let outcome = outcome.map(|r| r.status());
                        stopped
                            .lock()
                            .unwrap()
                            .push(format!("writer {writer} at {key}: {outcome:?}"));
                        break;
                    }
                }
            }
        }));
    }
    // Let a burst of writes through, then pull the plug while requests are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count = acknowledged.lock().unwrap().len();
        if count >= 120 {
            break;
        }
        let stopped = stopped.lock().unwrap().clone();
        assert!(
            tokio::time::Instant::now() < deadline && stopped.len() < 4,
            "waited for 120 acknowledged writes: {count} acknowledged, writers stopped: \
             {stopped:?}"
        );
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
    let client = http();
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
    use serde_json::Value;
    use tests::{FrontDoor, ServerProcess};

    use super::{ADMIN, flag, http};

    const WAIT: Duration = Duration::from_secs(15);

    async fn sdk_token(base: &str) -> String {
        tests::sdk_token(base, ADMIN, "sdk-e2e").await.0
    }

    async fn put(base: &str, key: &str, default: &str) {
        let status = http()
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

    /// Waits until what `observe` sees is `done`, or fails saying what it last saw.
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
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Evaluation telemetry end to end: the SDK's exact counts, from several threads, reach the
    /// server's usage endpoint and listing; the last ones on `close()`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sdk_reports_exact_evaluation_counts_including_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), ADMIN);
        put(&server.base_url, "checkout", "on").await;
        put(&server.base_url, "banner", "off").await;
        let token = sdk_token(&server.base_url).await;
        let client = FlagClient::builder()
            .server(&server.base_url)
            .token(&token)
            .usage_interval(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
        let user = EvaluationContext::new("u1");
        // Threads that end hand their counts over; the periodic report sends them.
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        assert!(client.bool_value("checkout", &user, false));
                    }
                });
            }
        });
        let usage = |key: &'static str| {
            let base = server.base_url.clone();
            async move {
                http()
                    .get(format!(
                        "{base}/api/v1/environments/default/flags/{key}/usage"
                    ))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = usage("checkout").await;
            if seen["total"] == 3_000 {
                assert_eq!(seen["variants"]["on"], 3_000, "{seen}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not reported: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Counted on this thread, sent by `close()`; a handle counts like the key getters.
        let banner = client.flag("banner");
        for _ in 0..7 {
            assert!(!banner.bool_value(&user, true));
        }
        assert!(!client.bool_value("banner", &user, true));
        client.close().await;
        let seen = usage("banner").await;
        assert_eq!(seen["total"], 8, "{seen}");
        assert_eq!(seen["variants"]["off"], 8, "{seen}");
        assert_eq!(
            usage("checkout").await["total"],
            3_000,
            "nothing counted twice"
        );
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
        eventually(
            "the write reaches the SDK",
            || client.bool_value("checkout", &user, false),
            |on| *on,
        )
        .await;
        assert_eq!(*changed.lock().unwrap(), ["checkout"]);

        // The server sees this client and its acknowledged version.
        let clients: Value = http()
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
        let door = FrontDoor::open();
        let mut server = ServerProcess::start(dir.path(), ADMIN);
        door.forward_to(Some(&server));
        put(&server.base_url, "f", "off").await;
        let token = sdk_token(&server.base_url).await;
        let client = client(&door.base_url(), &token, None);
        assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
        let user = EvaluationContext::new("u1");

        let killed = std::time::Instant::now();
        door.forward_to(None);
        server.kill();
        eventually(
            "stale while the server is down",
            || client.status(),
            |status| *status == Status::Stale,
        )
        .await;
        eprintln!("stale {:?} after the kill", killed.elapsed());
        assert!(
            !client.bool_value("f", &user, true),
            "last known good flags keep serving"
        );

        // Back where the client expects it, with a change made while the client was away.
        let server = ServerProcess::start(dir.path(), ADMIN);
        door.forward_to(Some(&server));
        let restarted = std::time::Instant::now();
        eventually(
            "ready again",
            || client.status(),
            |status| *status == Status::Ready,
        )
        .await;
        eprintln!(
            "reconnected {:?} after the server printed its address",
            restarted.elapsed()
        );
        let written = std::time::Instant::now();
        put(&server.base_url, "f", "on").await;
        eventually(
            "converged after the restart",
            || client.bool_value("f", &user, false),
            |on| *on,
        )
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
        let door = FrontDoor::open();
        let mut server = ServerProcess::start(dir.path().join("data").as_path(), ADMIN);
        door.forward_to(Some(&server));
        put(&server.base_url, "cached", "on").await;
        let token = sdk_token(&server.base_url).await;
        // The cache is kept for the server URL it came from: both clients use the door's.
        let base = door.base_url();
        {
            let client = client(&base, &token, Some(&cache));
            client.wait_ready(WAIT).await.unwrap();
            eventually("cache written", || cache.exists(), |exists| *exists).await;
            client.close().await;
        }
        door.forward_to(None);
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
        let door = FrontDoor::open();
        // The token must exist when the server starts: seed it by starting once.
        let seed = ServerProcess::start(dir.path(), ADMIN);
        put(&seed.base_url, "late", "on").await;
        let token = sdk_token(&seed.base_url).await;
        drop(seed);

        let client = client(&door.base_url(), &token, None);
        let user = EvaluationContext::new("u");
        assert_eq!(client.status(), Status::NotReady);
        let details = client.bool_details("late", &user, false);
        assert_eq!(
            (details.value, details.error_code),
            (false, Some(ErrorCode::ProviderNotReady))
        );
        assert!(client.wait_ready(Duration::from_millis(300)).await.is_err());

        let server = ServerProcess::start(dir.path(), ADMIN);
        door.forward_to(Some(&server));
        assert_eq!(client.wait_ready(WAIT).await.unwrap(), Status::Ready);
        assert!(client.bool_value("late", &user, false));
        client.close().await;
    }

    /// The conformance table through the stream: the document written whole, the SDK
    /// evaluating every row locally exactly as flag-core, OFREP and `flagctl eval` do.
    #[tokio::test]
    async fn the_conformance_table_through_the_sdk() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let (_, document, cases) = tests::conformance();
        let status = http()
            .put(format!(
                "{}/api/v1/environments/default/document",
                server.base_url
            ))
            .bearer_auth(ADMIN)
            .json(&document)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
        let token = sdk_token(&server.base_url).await;
        let sdk = client(&server.base_url, &token, None);
        sdk.wait_ready(WAIT).await.unwrap();
        let mut failures = Vec::new();
        for row in cases["rows"].as_array().unwrap() {
            let key = row["flag"].as_str().unwrap();
            let context = row["context"].as_object().unwrap();
            let mut ctx = match context.get("targetingKey").and_then(Value::as_str) {
                Some(targeting_key) => EvaluationContext::new(targeting_key),
                None => EvaluationContext::anonymous(),
            };
            for (name, value) in context.iter().filter(|(n, _)| *n != "targetingKey") {
                ctx = ctx.with(name.clone(), value.clone());
            }
            let answer = sdk.evaluate(key, &ctx, |resolution| {
                flag_protocol::OfrepEvaluation::from_resolution(key, resolution)
            });
            if let Some(problem) = answer.difference(&tests::conformance_expected(row)) {
                failures.push(format!("{key} {}: {problem}", row["context"]));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        sdk.close().await;
    }
}

// ------------------------------------------------------------------------------------------
// flagctl against the real server

mod cli {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use serde_json::{Value, json};
    use tests::{ServerProcess, binary};

    use super::{ADMIN, http};

    /// Runs flagctl with the server and token in the environment, from `dir` (so files in it
    /// can be named plainly), with a config directory of its own.
    fn flagctl(server: &ServerProcess, dir: &Path, args: &[&str]) -> (i32, String, String) {
        flagctl_with(server, dir, args, ADMIN)
    }

    fn flagctl_with(
        server: &ServerProcess,
        dir: &Path,
        args: &[&str],
        token: &str,
    ) -> (i32, String, String) {
        tests::flagctl(server, token, dir, args)
    }

    /// A transcript of commands for a snapshot: each command, its exit code, stdout, stderr.
    fn transcript(server: &ServerProcess, dir: &Path, commands: &[&[&str]]) -> String {
        let mut out = String::new();
        for args in commands {
            let (code, stdout, stderr) = flagctl(server, dir, args);
            out.push_str(&format!(
                "$ flagctl {}\n[exit {code}]\n{stdout}",
                args.join(" ")
            ));
            if !stderr.is_empty() {
                out.push_str(&format!("[stderr]\n{stderr}"));
            }
            out.push('\n');
        }
        out
    }

    /// Redacts what changes from run to run.
    fn settings() -> insta::Settings {
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z", "[TIME]");
        settings.add_filter(r"127\.0\.0\.1:\d+", "[ADDR]");
        settings.add_filter(r"flg_(admin|sdk)_[0-9a-f]{64}", "[SECRET]");
        settings.add_filter(r"tok_[0-9a-f]{16}", "[TOKEN-ID]");
        settings.add_filter(
            r#""(createdAt|updatedAt|at|connectedAt|time)": \d+"#,
            r#""$1": [UNIX]"#,
        );
        settings.add_filter(r"/tmp/[^\s:]+", "[PATH]");
        settings
    }

    fn write(dir: &Path, name: &str, value: &Value) {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
    }

    /// `flagctl stale` against the real server: a flag never evaluated and one fully rolled out
    /// are found (with `--days 0`, every flag is old enough), an evaluated, partly rolled-out one
    /// is not; exit 3, JSON.
    #[test]
    fn stale_finds_unused_and_fully_rolled_out_flags() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        for key in ["unused", "done", "ramping"] {
            let (code, _, err) = flagctl(&server, dir.path(), &["flag", "create", key]);
            assert_eq!(code, 0, "{err}");
        }
        for (key, percentage) in [("done", "100"), ("ramping", "30")] {
            let (code, _, err) =
                flagctl(&server, dir.path(), &["flag", "rollout", key, percentage]);
            assert_eq!(code, 0, "{err}");
        }
        for key in ["done", "ramping"] {
            let (code, _, err) = flagctl(
                &server,
                dir.path(),
                &["eval", key, "--context", r#"{"targetingKey":"user-1"}"#],
            );
            assert_eq!(code, 0, "{err}");
        }
        let (code, out, err) =
            flagctl(&server, dir.path(), &["stale", "--days", "0", "-o", "json"]);
        assert_eq!(code, 3, "{out}{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        let found: Vec<(String, String)> = report["stale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["key"].as_str().unwrap().to_owned(),
                    f["finding"].as_str().unwrap().to_owned(),
                )
            })
            .filter(|(_, finding)| finding != "not-evaluated")
            .collect();
        assert_eq!(
            found,
            vec![
                ("done".to_owned(), "uniform".to_owned()),
                // Never rolled out: it serves its default, off, to everyone.
                ("unused".to_owned(), "uniform".to_owned()),
                ("unused".to_owned(), "never-evaluated".to_owned()),
            ],
            "{report}"
        );
        // The default period: everything here is new, nothing is stale.
        let (code, out, err) = flagctl(&server, dir.path(), &["stale"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("no stale flags"), "{out}");
        let (code, _, err) = flagctl(&server, dir.path(), &["stale", "--days", "-3"]);
        assert_eq!(code, 2, "{err}");
    }

    /// `flagctl refs` against the real server's environment: references, an unreferenced flag,
    /// a typo with its suggestion, exit codes, JSON.
    #[test]
    fn refs_finds_references_unused_flags_and_typos() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        for key in ["new-checkout", "old-banner"] {
            let (code, _, err) = flagctl(&server, dir.path(), &["flag", "create", key]);
            assert_eq!(code, 0, "{err}");
        }
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("gen")).unwrap();
        std::fs::write(src.join(".gitignore"), "gen/\n").unwrap();
        std::fs::write(src.join("gen/all.rs"), "\"old-banner\"\n").unwrap();
        std::fs::write(
            src.join("checkout.rs"),
            "fn pay(client: &FlagClient) {\n    if client.bool_value(\"new-checkout\", &ctx, false) {}\n    if client.bool_value(\"new-chekout\", &ctx, false) {}\n}\n",
        )
        .unwrap();
        let (code, out, err) = flagctl(&server, dir.path(), &["refs", "src"]);
        assert_eq!(code, 3, "findings exit 3: {out}{err}");
        assert!(out.contains("checkout.rs:2"), "{out}");
        assert!(out.contains("candidate for removal"), "{out}");
        assert!(out.contains("did you mean \"new-checkout\""), "{out}");
        let (code, out, _) = flagctl(
            &server,
            dir.path(),
            &["refs", "src", "--environment", "default", "-o", "json"],
        );
        assert_eq!(code, 3);
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["unreferenced"], json!(["old-banner"]));
        assert_eq!(report["unknown"][0]["key"], "new-chekout");
        assert_eq!(report["unknown"][0]["line"], 3);
        // Fixed: nothing left to act on.
        std::fs::write(
            src.join("checkout.rs"),
            "const A: &str = \"new-checkout\";\nconst B: &str = \"old-banner\";\n",
        )
        .unwrap();
        let (code, out, err) = flagctl(&server, dir.path(), &["refs", "src"]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, _, err) = flagctl(
            &server,
            dir.path(),
            &["refs", "src", "--environment", "nope"],
        );
        assert_eq!(code, 1, "an unknown environment is an error: {err}");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn walkthrough() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        write(
            dir.path(),
            "rule.json",
            &json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]}),
        );
        let text = transcript(
            &server,
            dir.path(),
            &[
                &[
                    "flag",
                    "create",
                    "new-checkout",
                    "--description",
                    "the new checkout",
                    "-m",
                    "merge unfinished work",
                ],
                &[
                    "flag",
                    "create",
                    "banner",
                    "--type",
                    "string",
                    "--variant",
                    "blue=Welcome",
                    "--variant",
                    "red=Sale!",
                    "--default",
                    "blue",
                ],
                &[
                    "flag",
                    "rollout",
                    "new-checkout",
                    "10",
                    "-m",
                    "start at 10%",
                ],
                &["flag", "target", "new-checkout", "--file", "rule.json"],
                &["flag", "disable", "banner"],
                &["flag", "list"],
                &["flag", "get", "new-checkout"],
                &[
                    "eval",
                    "new-checkout",
                    "--context",
                    r#"{"targetingKey":"u1","email":"ada@example.com"}"#,
                ],
                &["eval", "banner", "--context", r#"{"targetingKey":"u1"}"#],
                &["flag", "history", "new-checkout"],
                &["env", "create", "staging"],
                &[
                    "promote",
                    "new-checkout",
                    "--from",
                    "default",
                    "--to",
                    "staging",
                    "--yes",
                ],
                &["env", "list"],
                &["flag", "delete", "banner", "-m", "experiment over"],
            ],
        );
        settings().bind(|| insta::assert_snapshot!("walkthrough", text));
    }

    #[test]
    fn json_output() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let text = transcript(
            &server,
            dir.path(),
            &[
                &["-o", "json", "flag", "create", "dark-mode"],
                &["-o", "json", "flag", "list"],
                &[
                    "-o",
                    "json",
                    "eval",
                    "dark-mode",
                    "--context",
                    r#"{"targetingKey":"u1"}"#,
                ],
                &["-o", "json", "eval", "nope"],
                &["-o", "json", "env", "list"],
            ],
        );
        settings().bind(|| insta::assert_snapshot!("json_output", text));
    }

    #[test]
    fn errors_and_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        write(
            dir.path(),
            "invalid.json",
            &json!({"flags": {"x": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "of"}}}),
        );
        let mut text = transcript(
            &server,
            dir.path(),
            &[
                &["flag", "create", "f"],
                &["flag", "create", "f"],
                &["flag", "get", "missing"],
                &["flag", "default", "f", "maybe"],
                &["flag", "rollout", "f", "120"],
                &["flag", "create", "n", "--type", "number"],
                &["flag", "create", ".."],
                &["apply", "-f", "invalid.json"],
                &["apply", "-f", "missing.json"],
                &["flag", "enable", "f", "--if-match", "99"],
                &["promote", "f", "--from", "default", "--to", "nowhere"],
                &["eval", "f", "--context", "not json"],
                &["flag", "frobnicate"],
            ],
        );
        let (code, _, stderr) =
            flagctl_with(&server, dir.path(), &["flag", "list"], "flg_admin_wrong");
        text.push_str(&format!(
            "$ flagctl flag list  # with a bad token\n[exit {code}]\n[stderr]\n{stderr}\n"
        ));
        // Bound and never listening: connections are refused, and no other process can start
        // listening there while the socket is held.
        let nothing = tokio::net::TcpSocket::new_v4().unwrap();
        nothing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let nowhere = format!("http://{}", nothing.local_addr().unwrap());
        let (code, _, stderr) = Command::new(binary("flag-cli", "flagctl"))
            .args(["--server", &nowhere, "--token", "t", "flag", "list"])
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .output()
            .map(|o| {
                (
                    o.status.code().unwrap_or(-1),
                    (),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            })
            .unwrap();
        text.push_str(&format!(
            "$ flagctl --server {nowhere} flag list  # nothing listens\n[exit {code}]\n[stderr]\n{stderr}\n"
        ));
        settings().bind(|| insta::assert_snapshot!("errors_and_exit_codes", text));
    }

    #[test]
    fn flags_as_code_diff_apply_export() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        flagctl(&server, dir.path(), &["flag", "create", "old"]);
        flagctl(&server, dir.path(), &["flag", "create", "kept"]);
        write(
            dir.path(),
            "flags.json",
            &json!({
                "$schema": "https://flagd.dev/schema/v0/flags.json",
                "flags": {
                    "kept": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
                    "new": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                            "targeting": {"fractional": [["on", 2500], ["off", 7500]]}}
                }
            }),
        );
        let text = transcript(
            &server,
            dir.path(),
            &[
                &["diff", "-f", "flags.json"],
                &["diff", "-f", "flags.json", "--prune"],
                &["apply", "-f", "flags.json", "--prune", "--dry-run"],
                &["apply", "-f", "flags.json", "--prune", "-m", "from CI"],
                &["diff", "-f", "flags.json", "--prune"],
            ],
        );
        settings().bind(|| insta::assert_snapshot!("flags_as_code", text));
        // The export is the applied document, and applies cleanly again.
        let (code, exported, _) = flagctl(&server, dir.path(), &["export"]);
        assert_eq!(code, 0);
        let exported: Value = serde_json::from_str(&exported).unwrap();
        let file: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("flags.json")).unwrap())
                .unwrap();
        assert_eq!(exported["flags"], file["flags"]);
    }

    /// Issue 11's regression through the CLI: an off-first rollout is listed as its true share,
    /// and `flag rollout 30` gives 30 % to the `true` variant, keeping everyone already in.
    #[test]
    fn rollout_acts_on_the_variant_not_the_first_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let run = |args: &[&str]| {
            let (code, stdout, stderr) = flagctl(&server, dir.path(), args);
            assert_eq!(code, 0, "flagctl {args:?}: {stderr}");
            stdout
        };
        run(&["flag", "create", "checkout"]);
        run(&[
            "flag",
            "target",
            "checkout",
            "--json",
            r#"{"fractional": [["off", 75], ["on", 25]]}"#,
        ]);
        let listed = |run: &dyn Fn(&[&str]) -> String| {
            let list: Value = serde_json::from_str(&run(&["-o", "json", "flag", "list"])).unwrap();
            list[0]["rolloutPercentage"].as_f64().unwrap()
        };
        assert_eq!(listed(&run), 25.0);
        let human = run(&["flag", "list"]);
        assert!(human.contains("25%"), "{human}");
        run(&["flag", "rollout", "checkout", "30"]);
        assert_eq!(listed(&run), 30.0);
        let view: Value =
            serde_json::from_str(&run(&["-o", "json", "flag", "get", "checkout"])).unwrap();
        assert_eq!(
            view["flag"]["targeting"],
            json!({"fractional": [["off", 7000], ["on", 3000]]})
        );

        // A string flag names the variant it rolls out; without it, a clear error.
        run(&[
            "flag",
            "create",
            "theme",
            "--type",
            "string",
            "--variant",
            "light=l",
            "--variant",
            "dark=d",
            "--default",
            "light",
        ]);
        let (code, _, stderr) = flagctl(&server, dir.path(), &["flag", "rollout", "theme", "10"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("name the variant to roll out"), "{stderr}");
        assert!(stderr.contains("--variant NAME"), "{stderr}");
        run(&["flag", "rollout", "theme", "10", "--variant", "dark"]);
        let view: Value =
            serde_json::from_str(&run(&["-o", "json", "flag", "get", "theme"])).unwrap();
        assert_eq!(
            view["flag"]["targeting"],
            json!({"fractional": [["dark", 1000], ["light", 9000]]})
        );
    }

    #[test]
    fn a_concurrent_edit_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        flagctl(&server, dir.path(), &["flag", "create", "f"]);
        let (_, view, _) = flagctl(&server, dir.path(), &["-o", "json", "flag", "get", "f"]);
        let seen: i64 = serde_json::from_str::<Value>(&view).unwrap()["version"]
            .as_i64()
            .unwrap();
        // Someone else changes it...
        assert_eq!(
            flagctl(&server, dir.path(), &["flag", "default", "f", "on"]).0,
            0
        );
        // ...so a write based on what we saw is refused, and nothing is overwritten.
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &["flag", "disable", "f", "--if-match", &seen.to_string()],
        );
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("changed since you read it"), "{stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
        let (_, view, _) = flagctl(&server, dir.path(), &["-o", "json", "flag", "get", "f"]);
        assert_eq!(
            serde_json::from_str::<Value>(&view).unwrap()["flag"]["state"],
            "ENABLED"
        );
    }

    /// Every write that takes `--if-match` sends it: a stale version fails (exit 1, with a hint)
    /// and changes nothing in either environment; the current version goes through. `create` and
    /// `apply` do not take it (their endpoints have no `If-Match` to send it to).
    #[test]
    fn a_stale_if_match_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let run = |args: &[&str]| {
            let (code, stdout, stderr) = flagctl(&server, dir.path(), args);
            assert_eq!(code, 0, "flagctl {args:?}: {stderr}");
            stdout
        };
        let version = |environment: &str, key: &str| -> String {
            let view = run(&["-e", environment, "-o", "json", "flag", "get", key]);
            serde_json::from_str::<Value>(&view).unwrap()["version"].to_string()
        };
        // `f` was changed in default and in staging since it was first read; `g` exists in
        // default only.
        run(&["env", "create", "staging"]);
        run(&["flag", "create", "f"]);
        run(&["flag", "create", "g"]);
        let promote = ["promote", "--from", "default", "--to", "staging", "--yes"];
        run(&[&promote[..], &["f"]].concat());
        let (read_in_default, read_in_staging) = (version("default", "f"), version("staging", "f"));
        run(&["flag", "default", "f", "on"]);
        run(&["-e", "staging", "flag", "disable", "f"]);
        let everything = || {
            (
                run(&["-o", "json", "env", "list"]),
                run(&["-o", "json", "export"]),
                run(&["-e", "staging", "-o", "json", "export"]),
            )
        };
        let before = everything();

        let old = read_in_default.as_str();
        let stale: &[&[&str]] = &[
            &["flag", "enable", "f", "--if-match", old],
            &["flag", "disable", "f", "--if-match", old],
            &["flag", "default", "f", "off", "--if-match", old],
            &["flag", "rollout", "f", "30", "--if-match", old],
            &["flag", "target", "f", "--json", "{}", "--if-match", old],
            &["flag", "delete", "f", "--if-match", old],
            &[&promote[..], &["f", "--if-match", &read_in_staging]].concat(),
            &[&promote[..], &["f", "--if-match", "0"]].concat(),
            &[&promote[..], &["g", "--if-match", "1"]].concat(),
        ];
        for args in stale {
            let (code, stdout, stderr) = flagctl(&server, dir.path(), args);
            assert_eq!(code, 1, "flagctl {args:?}: {stdout}{stderr}");
            assert!(
                stderr.contains("changed since you read it"),
                "{args:?}: {stderr}"
            );
            assert!(stderr.contains("hint:"), "{args:?}: {stderr}");
        }
        assert!(before == everything(), "a refused write changed something");

        // Where no If-Match can be sent, the option is refused rather than ignored.
        write(dir.path(), "flags.json", &json!({"flags": {}}));
        for args in [
            &["apply", "-f", "flags.json", "--if-match", "1"][..],
            &["flag", "create", "h", "--if-match", "1"],
        ] {
            let (code, _, stderr) = flagctl(&server, dir.path(), args);
            assert_eq!(code, 2, "flagctl {args:?}: {stderr}");
            assert!(stderr.contains("--if-match"), "{args:?}: {stderr}");
        }
        assert!(
            before == everything(),
            "a refused command changed something"
        );

        // The current version goes through.
        let current = version("default", "f");
        run(&["flag", "rollout", "f", "30", "--if-match", &current]);
        assert_ne!(version("default", "f"), current);
        let current = version("staging", "f");
        run(&[&promote[..], &["f", "--if-match", &current]].concat());
        assert_ne!(version("staging", "f"), current);
        run(&[&promote[..], &["g", "--if-match", "0"]].concat());
        version("staging", "g");
    }

    /// A reader that leaves early (`flagctl export | head -1`) ends flagctl quietly, as it ends
    /// ripgrep: exit 0, no panic, nothing on stderr.
    #[test]
    fn a_closed_stdout_ends_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        // Far more than a pipe holds (64 KiB on Linux), so `export` is still writing when its
        // reader leaves, however the two processes are scheduled.
        let flags: serde_json::Map<String, Value> = (0..2000)
            .map(|i| (format!("flag-{i:04}"), super::flag("on")))
            .collect();
        write(dir.path(), "many.json", &json!({"flags": flags}));
        let (code, _, stderr) = flagctl(&server, dir.path(), &["apply", "-f", "many.json"]);
        assert_eq!(code, 0, "{stderr}");
        let spawn = |args: &[&str]| {
            Command::new(binary("flag-cli", "flagctl"))
                .args(args)
                .current_dir(dir.path())
                .env("FLAGCTL_SERVER", &server.base_url)
                .env("FLAGCTL_TOKEN", ADMIN)
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env_remove("FLAGCTL_ENV")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let quiet = |args: &[&str], child: std::process::Child| {
            let output = child.wait_with_output().unwrap();
            assert_eq!(
                (
                    output.status.code(),
                    String::from_utf8_lossy(&output.stderr)
                ),
                (Some(0), "".into()),
                "flagctl {args:?} with its stdout closed early"
            );
        };

        // `| head -1`: one line read, then the pipe closes under a writer that has more.
        let mut export = spawn(&["export"]);
        let mut first = String::new();
        BufReader::new(export.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first, "{\n");
        quiet(&["export"], export);

        // A reader gone before the first byte, for each way of printing: a table, JSON, lines.
        let commands: &[&[&str]] = &[
            &["flag", "list"],
            &["-o", "json", "flag", "list"],
            &["flag", "get", "flag-0001"],
            &["flag", "history", "flag-0001"],
            &["env", "list"],
            &["validate", "-f", "many.json"],
            &["diff", "-f", "many.json"],
        ];
        for args in commands {
            let mut child = spawn(args);
            drop(child.stdout.take());
            quiet(args, child);
        }
    }

    #[test]
    fn watch_prints_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        /// Kills the watcher however the test ends, so a failure leaves no process behind.
        struct Watch(std::process::Child);
        impl Drop for Watch {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut watch = Watch(
            Command::new(binary("flag-cli", "flagctl"))
                .args(["watch"])
                .env("FLAGCTL_SERVER", &server.base_url)
                .env("FLAGCTL_TOKEN", ADMIN)
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let (lines, receiver) = std::sync::mpsc::channel();
        let stdout = watch.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let next = || {
            receiver
                .recv_timeout(Duration::from_secs(10))
                .expect("no line from flagctl watch within 10 s")
        };
        let snapshot = next();
        assert!(snapshot.contains("snapshot: 0 flag(s)"), "{snapshot}");
        flagctl(&server, dir.path(), &["flag", "create", "live"]);
        let created = next();
        assert!(created.contains("v1  live created"), "{created}");
        flagctl(&server, dir.path(), &["flag", "rollout", "live", "5"]);
        let updated = next();
        assert!(
            updated.contains("v2  live updated: + targeting.fractional"),
            "{updated}"
        );
        flagctl(&server, dir.path(), &["flag", "delete", "live"]);
        let deleted = next();
        assert!(deleted.contains("v3  live deleted"), "{deleted}");
        // Shared settings: one line saying what changed.
        let file = dir.path().join("settings.json");
        std::fs::write(&file, r#"{"metadata": {"team": "checkout"}, "flags": {}}"#).unwrap();
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &["apply", "-f", file.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{stderr}");
        let settings = next();
        assert!(
            settings.contains("v4  flag-set settings replaced: ")
                && settings.contains("+ metadata.team: \"checkout\""),
            "{settings}"
        );
    }

    #[test]
    fn status_shows_connected_sdk_clients() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        // A stream client: the SDK, in this process.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (_, secret, _) = flagctl(
            &server,
            dir.path(),
            &["token", "create", "--role", "sdk", "--name", "web"],
        );
        let client = runtime.block_on(async {
            let client = flag_sdk::FlagClient::builder()
                .server(&server.base_url)
                .token(secret.trim())
                .build()
                .unwrap();
            client.wait_ready(Duration::from_secs(10)).await.unwrap();
            client
        });
        let (code, stdout, _) = flagctl(&server, dir.path(), &["status"]);
        assert_eq!(code, 0);
        assert!(stdout.contains("1 stream client(s)"), "{stdout}");
        assert!(stdout.contains("flag-sdk-rust"), "{stdout}");
        runtime.block_on(client.close());
    }

    /// Issue 12's round-trip rule on the legs outside the server: values at the edges of what a
    /// write accepts (the deepest nesting allowed, floats that need every digit, the largest exact
    /// integers, control characters, odd keys), applied with flagctl, reach the SDK through the
    /// stream and come back unchanged in `flagctl flag history` and `flagctl export`.
    #[test]
    fn edge_values_round_trip_through_the_stream_the_sdk_and_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let mut deepest = json!("bottom");
        // One level is the `{"v": …}` wrapper every value below is put in.
        for level in 0..flag_core::MAX_VALUE_DEPTH - 1 {
            deepest = if level % 2 == 0 {
                json!([deepest])
            } else {
                json!({ "k": deepest })
            };
        }
        let values = [
            deepest,
            json!(0.1),
            json!(0.30000000000000004),
            json!(1.7976931348623157e308),
            json!(5e-324),
            json!(-2.2250738585072014e-308),
            json!(9_007_199_254_740_991_i64),
            json!(-9_007_199_254_740_991_i64),
            json!(""),
            json!("\u{0}\u{1f}\n\t\"\\ \u{2028}\u{2029} ünï 🚀"),
            json!("x".repeat(100_000)),
            json!({"": 1, "a.b": [], "$ref": "not a ref", "🔑": {}, "\u{7f}": null}),
            json!([[], {}, null, true, false, 0, -0.5]),
        ];
        let mut flags = serde_json::Map::new();
        for (i, value) in values.iter().enumerate() {
            flags.insert(
                format!("edge-{i}"),
                json!({"state": "ENABLED", "defaultVariant": "a",
                       "variants": {"a": {"v": value}, "b": {}}}),
            );
        }
        std::fs::write(
            dir.path().join("flags.json"),
            serde_json::to_vec(&json!({ "flags": flags })).unwrap(),
        )
        .unwrap();
        let (code, _, stderr) = flagctl(&server, dir.path(), &["apply", "-f", "flags.json"]);
        assert_eq!(code, 0, "{stderr}");

        let (_, secret, _) = flagctl(
            &server,
            dir.path(),
            &["token", "create", "--role", "sdk", "--name", "edge"],
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime.block_on(async {
            let client = flag_sdk::FlagClient::builder()
                .server(&server.base_url)
                .token(secret.trim())
                .build()
                .unwrap();
            client.wait_ready(Duration::from_secs(10)).await.unwrap();
            client
        });
        let user = flag_sdk::EvaluationContext::new("u1");
        let (code, exported, _) = flagctl(&server, dir.path(), &["-o", "json", "export"]);
        assert_eq!(code, 0);
        let exported: Value = serde_json::from_str(&exported).unwrap();
        for (i, value) in values.iter().enumerate() {
            let key = format!("edge-{i}");
            let expected = json!({ "v": value });
            assert_eq!(
                client.json_value(&key, &user, Value::Null),
                expected,
                "SDK, {key}"
            );
            assert_eq!(
                exported["flags"][&key]["variants"]["a"], expected,
                "export, {key}"
            );
            let (code, history, stderr) = flagctl(
                &server,
                dir.path(),
                &["-o", "json", "flag", "history", &key],
            );
            assert_eq!(code, 0, "{stderr}");
            let history: Value = serde_json::from_str(&history).unwrap();
            assert_eq!(
                history[0]["after"]["variants"]["a"], expected,
                "history, {key}"
            );
        }
        runtime.block_on(client.close());
    }

    #[test]
    fn login_saves_a_private_config_that_later_commands_use() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let run = |args: &[&str], with_environment: bool| {
            let mut command = Command::new(binary("flag-cli", "flagctl"));
            command
                .args(args)
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env_remove("FLAGCTL_SERVER")
                .env_remove("FLAGCTL_TOKEN");
            if with_environment {
                command.env("FLAGCTL_SERVER", &server.base_url);
            }
            command.output().unwrap()
        };
        let output = run(
            &[
                "login",
                "--server",
                &server.base_url,
                "--token",
                "flg_admin_wrong",
            ],
            false,
        );
        assert_eq!(output.status.code(), Some(1), "a bad token is not saved");
        let output = run(
            &["login", "--server", &server.base_url, "--token", ADMIN],
            false,
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let config = dir.path().join("config/flagctl/config.toml");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let output = run(&["env", "list"], false);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("default"));
    }

    /// `eval --file` (flag-core, locally) and `eval` (OFREP, on the server) agree.
    #[test]
    fn local_and_server_evaluation_agree() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let document = json!({"$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}}, "flags": {
            "staff-only": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "staff"}, "on", null]}},
            "split": {"state": "ENABLED", "variants": {"a": "A", "b": "B", "c": "C"}, "defaultVariant": "a",
                "targeting": {"fractional": [["a", 1], ["b", 1], ["c", 1]]}},
            "versions": {"state": "ENABLED", "variants": {"new": 2, "old": 1}, "defaultVariant": "old",
                "targeting": {"if": [{"sem_ver": [{"var": "app"}, ">=", "2.0.0"]}, "new", "old"]}},
            "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
        }});
        write(dir.path(), "flags.json", &document);
        assert_eq!(
            flagctl(&server, dir.path(), &["apply", "-f", "flags.json"]).0,
            0
        );
        let contexts = [
            json!({"targetingKey": "u1", "email": "ada@example.com", "app": "2.1.0"}),
            json!({"targetingKey": "u2", "email": "bob@elsewhere.org", "app": "1.9.9"}),
            json!({"targetingKey": "u3"}),
            json!({}),
        ];
        for key in ["staff-only", "split", "versions", "off", "missing"] {
            for context in &contexts {
                let context = context.to_string();
                let (local_code, local, _) = flagctl(
                    &server,
                    dir.path(),
                    &[
                        "-o",
                        "json",
                        "eval",
                        key,
                        "--file",
                        "flags.json",
                        "--context",
                        &context,
                    ],
                );
                let (remote_code, remote, _) = flagctl(
                    &server,
                    dir.path(),
                    &["-o", "json", "eval", key, "--context", &context],
                );
                let (local, remote): (Value, Value) = (
                    serde_json::from_str(&local).unwrap(),
                    serde_json::from_str(&remote).unwrap(),
                );
                assert_eq!(local_code, remote_code, "{key} {context}");
                for field in ["value", "variant", "reason", "errorCode"] {
                    assert_eq!(local[field], remote[field], "{key} {context}: {field}");
                }
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// `flagd-server admin-token` mints an admin token offline (recovery from a lock-out), and it
    /// is in the audit log.
    #[tokio::test]
    async fn admin_token_recovers_access_offline() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut first = ServerProcess::start(&data, ADMIN);
        first.kill();
        drop(first);
        let output = Command::new(binary("flagd-server", "flagd-server"))
            .args(["admin-token", "--name", "ops-recovery", "--data-dir"])
            .arg(&data)
            .env_remove("FLAGD_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        assert!(token.starts_with("flg_admin_"), "{token}");
        let server = ServerProcess::start(&data, ADMIN);
        let (code, stdout, stderr) = flagctl_with(
            &server,
            dir.path(),
            &["-o", "json", "token", "list"],
            &token,
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("ops-recovery"), "{stdout}");
        let audit: Value = http()
            .get(format!("{}/api/v1/audit?limit=5", server.base_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            audit["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["operation"] == "admin_token_created"),
            "{audit}"
        );
        // Without a store there is nothing to recover: a clear error, no store created.
        let output = Command::new(binary("flagd-server", "flagd-server"))
            .args(["admin-token", "--data-dir"])
            .arg(dir.path().join("nowhere"))
            .env_remove("FLAGD_DATA_DIR")
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("no store at"));
        assert!(!dir.path().join("nowhere").exists());
    }

    /// The conformance table through `flagctl eval --file`: the same answers as flag-core, the
    /// server and the SDK, in OFREP's shape, with exit 1 on an error result.
    #[test]
    fn the_conformance_table_through_eval_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _, cases) = tests::conformance();
        let file = file.to_string_lossy().into_owned();
        let mut failures = Vec::new();
        for row in cases["rows"].as_array().unwrap() {
            let key = row["flag"].as_str().unwrap();
            let context = row["context"].to_string();
            let output = Command::new(binary("flag-cli", "flagctl"))
                .args([
                    "-o",
                    "json",
                    "eval",
                    key,
                    "--file",
                    &file,
                    "--context",
                    &context,
                ])
                .current_dir(dir.path())
                .env("XDG_CONFIG_HOME", dir.path().join("config"))
                .env_remove("FLAGCTL_SERVER")
                .env_remove("FLAGCTL_TOKEN")
                .env_remove("FLAGCTL_STRICT")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let answer: Option<flag_protocol::OfrepEvaluation> =
                serde_json::from_slice(&output.stdout).ok();
            let code = output.status.code();
            let want = if row["expect"]["errorCode"].is_null() {
                0
            } else {
                1
            };
            if code != Some(want) {
                failures.push(format!("{key}: exit {code:?}, expected {want}"));
            }
            let problem = match &answer {
                Some(answer) => answer.difference(&tests::conformance_expected(row)),
                None => Some(format!(
                    "no OFREP answer: {}",
                    String::from_utf8_lossy(&output.stdout)
                )),
            };
            if let Some(problem) = problem {
                failures.push(format!("{key} {context}: {problem}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A document mixing valid and broken flags: `validate` lists the warnings with their codes
    /// and exits 0, or 1 with `--strict`; `apply` writes it and prints the warnings, or refuses
    /// with `--strict`; keys that need percent-encoding work in every command.
    #[test]
    fn warnings_strict_mode_and_keys_that_need_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let (file, _, _) = tests::conformance();
        let file = file.to_string_lossy().into_owned();

        let (code, stdout, _) = flagctl(&server, dir.path(), &["validate", "-f", &file]);
        assert_eq!(code, 0, "{stdout}");
        assert!(
            stdout.contains(
                "warning: flags.error-targeting-flag.targeting.invalid: unknown operator"
            ),
            "{stdout}"
        );
        assert!(stdout.contains("[unknown_operator]"), "{stdout}");
        assert!(
            stdout.contains(": valid (49 flag(s), 0 error(s)"),
            "{stdout}"
        );
        let (code, stdout, _) =
            flagctl(&server, dir.path(), &["--strict", "validate", "-f", &file]);
        assert_eq!(code, 1, "{stdout}");
        assert!(stdout.contains("not valid"), "{stdout}");
        let (code, stdout, _) = flagctl(
            &server,
            dir.path(),
            &["-o", "json", "validate", "-f", &file],
        );
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((code, report["valid"].as_bool()), (0, Some(true)));
        assert_eq!(report["errors"], json!([]));
        assert!(
            report["warnings"].as_array().unwrap().len() >= 12,
            "{report}"
        );
        write(
            dir.path(),
            "broken.json",
            &json!({"flags": {"x": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "of"}}}),
        );
        let (code, stdout, _) = flagctl(&server, dir.path(), &["validate", "-f", "broken.json"]);
        assert_eq!(code, 1, "{stdout}");
        assert!(stdout.contains("error: flags.x.defaultVariant"), "{stdout}");
        assert!(stdout.contains("[unknown_default_variant]"), "{stdout}");
        // A duplicate key would silently keep the last value: refused, as the server refuses it.
        std::fs::write(
            dir.path().join("duplicate.json"),
            r#"{"flags": {"x": {"state": "ENABLED", "state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#,
        )
        .unwrap();
        for command in ["validate", "apply"] {
            let (code, _, stderr) =
                flagctl(&server, dir.path(), &[command, "-f", "duplicate.json"]);
            assert_eq!(code, 1, "{command}: {stderr}");
            assert!(
                stderr.contains("duplicate key \"state\""),
                "{command}: {stderr}"
            );
        }

        let (code, _, stderr) = flagctl(&server, dir.path(), &["--strict", "apply", "-f", &file]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("--strict is on"), "{stderr}");
        let (code, stdout, stderr) = flagctl(&server, dir.path(), &["apply", "-f", &file]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("49 created"), "{stdout}");
        assert!(
            stderr.contains("warning: flags.unknown-operator-flag"),
            "{stderr}"
        );

        // Keys with '/', ' ', ':' and non-ASCII, through the admin API, OFREP and ramps.
        let (code, stdout, stderr) = flagctl(
            &server,
            dir.path(),
            &["-o", "json", "flag", "get", "checkout/v2"],
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            serde_json::from_str::<Value>(&stdout).unwrap()["key"],
            "checkout/v2"
        );
        let (code, stdout, stderr) =
            flagctl(&server, dir.path(), &["-o", "json", "eval", "über-flag"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            serde_json::from_str::<Value>(&stdout).unwrap()["value"],
            "ä"
        );
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &["flag", "rollout", "new checkout", "30"],
        );
        assert_eq!(code, 0, "{stderr}");
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[
                "ramp",
                "start",
                "new checkout",
                "--steps",
                "40,50",
                "--every",
                "1h",
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        let (code, stdout, stderr) = flagctl(
            &server,
            dir.path(),
            &["-o", "json", "ramp", "status", "new checkout"],
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            serde_json::from_str::<Value>(&stdout).unwrap()["currentPercentage"],
            40.0
        );
        let (code, stdout, _) = flagctl(
            &server,
            dir.path(),
            &["-o", "json", "flag", "history", "team:checkout"],
        );
        assert_eq!(code, 0, "{stdout}");
        // The query form-encodes the space (`flag=new+checkout`), and the server finds the flag.
        let (code, stdout, stderr) = flagctl(
            &server,
            dir.path(),
            &["-o", "json", "flag", "history", "new checkout"],
        );
        assert_eq!(code, 0, "{stderr}");
        let changes: Value = serde_json::from_str(&stdout).unwrap();
        assert!(
            changes.as_array().is_some_and(|c| c.len() >= 2),
            "the apply and the rollout: {changes}"
        );
        // A write with a warning prints it; --strict makes the server refuse it (422, exit 1).
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[
                "flag",
                "target",
                "boolean-flag",
                "--json",
                r#"{"if": [{"nope": []}, "on", "off"]}"#,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("warning: flags.boolean-flag.targeting.if[0].nope"),
            "{stderr}"
        );
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[
                "--strict",
                "flag",
                "target",
                "string-flag",
                "--json",
                r#"{"nope": []}"#,
            ],
        );
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("unknown operator"), "{stderr}");
    }
}

// ------------------------------------------------------------------------------------------
// Ramps

mod ramps {
    use std::collections::HashSet;
    use std::time::Duration;

    use flag_sdk::{EvaluationContext, FlagClient};
    use serde_json::{Value, json};
    use tests::ServerProcess;

    use super::{ADMIN, http};

    /// A one-second ramp to 100 % while an SDK client watches: every user who was in at a lower
    /// step is still in at every later one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_ramp_is_sticky_for_ten_thousand_users() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), ADMIN);
        let http = http();
        let base = server.base_url.clone();
        let put = http
            .put(format!("{base}/api/v1/environments/default/flags/checkout"))
            .bearer_auth(ADMIN)
            .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
        let token: Value = http
            .post(format!("{base}/api/v1/tokens"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "watcher", "role": "sdk", "environment": "default"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client = FlagClient::builder()
            .server(&base)
            .token(token["token"].as_str().unwrap())
            .build()
            .unwrap();
        client.wait_ready(Duration::from_secs(10)).await.unwrap();
        let users: Vec<EvaluationContext> = (0..10_000)
            .map(|i| EvaluationContext::new(format!("user-{i}")))
            .collect();

        let started = http
            .post(format!(
                "{base}/api/v1/environments/default/flags/checkout/ramp"
            ))
            .bearer_auth(ADMIN)
            .json(&json!({"steps": [1, 10, 25, 50, 100], "interval": "1s"}))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), reqwest::StatusCode::CREATED);

        let mut previous: HashSet<usize> = HashSet::new();
        let mut seen_versions = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let version = client.version();
            let on: HashSet<usize> = users
                .iter()
                .enumerate()
                .filter(|(_, u)| client.bool_value("checkout", u, false))
                .map(|(i, _)| i)
                .collect();
            let lost: Vec<_> = previous.difference(&on).take(5).collect();
            assert!(
                lost.is_empty(),
                "users {lost:?} were on and are now off (version {version:?})"
            );
            if seen_versions.last() != Some(&version) {
                seen_versions.push(version);
            }
            previous = on;
            if previous.len() == users.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ramp did not reach 100% in time ({} on)",
                previous.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            seen_versions.len() >= 3,
            "the client saw the ramp move: {seen_versions:?}"
        );
        let ramp: Value = http
            .get(format!(
                "{base}/api/v1/environments/default/flags/checkout/ramp"
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ramp["state"], "completed");
        client.close().await;
    }
}

mod ramp_cli {
    use std::path::Path;
    use std::process::{Command, Stdio};

    use tests::{ServerProcess, binary};

    use super::ADMIN;

    fn transcript(server: &ServerProcess, dir: &Path, commands: &[&[&str]]) -> String {
        let mut out = String::new();
        for args in commands {
            let output = Command::new(binary("flag-cli", "flagctl"))
                .args(*args)
                .env("FLAGCTL_SERVER", &server.base_url)
                .env("FLAGCTL_TOKEN", ADMIN)
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            out.push_str(&format!(
                "$ flagctl {}\n[exit {}]\n{}",
                args.join(" "),
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout)
            ));
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.is_empty() {
                out.push_str(&format!("[stderr]\n{stderr}"));
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn ramp_commands() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let text = transcript(
            &server,
            dir.path(),
            &[
                &["flag", "create", "checkout"],
                &[
                    "ramp",
                    "start",
                    "checkout",
                    "--steps",
                    "1,5,25,50,100",
                    "--every",
                    "1h",
                    "-m",
                    "watching the error rate",
                ],
                &["flag", "rollout", "checkout", "90"],
                &["ramp", "pause", "checkout", "-m", "investigating"],
                &["ramp", "status", "checkout"],
                &["ramp", "abort", "checkout", "-m", "p99 regressed"],
                &["ramp", "list"],
                &[
                    "ramp", "start", "checkout", "--steps", "50,10", "--every", "1h",
                ],
                &["ramp", "start", "checkout", "--steps", "10,50"],
            ],
        );
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z", "[TIME]");
        settings.bind(|| insta::assert_snapshot!("ramp_commands", text));
    }
}

/// The binary with `--tls-cert`/`--tls-key`: it says `listening on https://`, serves HTTPS, and
/// re-reads the pair on SIGHUP.
/// Certificates for the TLS tests (made with rcgen) and an HTTPS client that trusts them.
#[cfg(unix)]
/// `flagctl ramp analyse` against a fake Prometheus on port 0: one measurement, run by the
/// server, with the query filled in.
mod ramp_analyse {
    use serde_json::{Value, json};
    use tests::ServerProcess;

    use super::ADMIN;

    #[tokio::test(flavor = "multi_thread")]
    async fn one_measurement_from_the_command_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let prometheus = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(|| async {
                axum::Json(json!({"status": "success", "data": {"resultType": "vector",
                    "result": [{"metric": {}, "value": [1.7e9, "0.031"]}]}}))
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
        let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
        let status = tests::http()
            .put(format!(
                "{}/api/v1/environments/default/flags/new-checkout",
                server.base_url
            ))
            .bearer_auth(ADMIN)
            .json(&flag)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 201);
        let work = dir.path().to_owned();
        let run = move |args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tests::flagctl(&server, ADMIN, &work, &args)
        };
        let args = |success: &str, output: &str| {
            vec![
                "ramp".to_owned(),
                "analyse".to_owned(),
                "new-checkout".to_owned(),
                "--prometheus".to_owned(),
                prometheus.clone(),
                "--query".to_owned(),
                r#"sum(rate(errors{flag="{{flag}}"}[5m]))"#.to_owned(),
                "--success".to_owned(),
                success.to_owned(),
                "-o".to_owned(),
                output.to_owned(),
            ]
        };
        let run = std::sync::Arc::new(run);
        let task = {
            let run = run.clone();
            let args = args("result < 0.02", "table");
            tokio::task::spawn_blocking(move || run(args))
        };
        let (code, out, err) = task.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(r#"sum(rate(errors{flag="new-checkout"}[5m]))"#),
            "{out}"
        );
        assert!(
            out.contains("0.031") && out.contains("verdict: failure"),
            "{out}"
        );
        let task = {
            let run = run.clone();
            let args = args("result < 0.05", "json");
            tokio::task::spawn_blocking(move || run(args))
        };
        let (code, out, _) = task.await.unwrap();
        assert_eq!(code, 0);
        let measured: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(measured["verdict"], "success");
        // A mistake in the condition: refused with its column, exit 1.
        let task = {
            let run = run.clone();
            let args = args("result = 1", "table");
            tokio::task::spawn_blocking(move || run(args))
        };
        let (code, _, err) = task.await.unwrap();
        assert_eq!(code, 1);
        assert!(err.contains("column 8") && err.contains("success"), "{err}");
    }
}

mod certs {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    pub const ADMIN: &str = "e2e-admin-token-0123456789abcdef";

    /// A CA: its certificate and key.
    pub fn authority(name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), key)
    }

    /// A leaf named `name` for `hosts`, signed by the CA (`expired`: one that ran out in 2020):
    /// the certificate and key as PEM.
    pub fn leaf_for(
        ca: &rcgen::Certificate,
        ca_key: &KeyPair,
        name: &str,
        hosts: &[&str],
        expired: bool,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        (
            params.signed_by(&key, ca, ca_key).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// A leaf for localhost and 127.0.0.1.
    pub fn leaf(ca: &rcgen::Certificate, ca_key: &KeyPair, name: &str) -> (String, String) {
        leaf_for(ca, ca_key, name, &["localhost", "127.0.0.1"], false)
    }

    /// An HTTPS client that trusts only `ca_pem`.
    pub fn https_client(ca_pem: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// Writes a boolean flag `key` whose default variant is `default`, as the admin.
    pub async fn put_flag(http: &reqwest::Client, base: &str, key: &str, default: &str) {
        let status = http
            .put(format!("{base}/api/v1/environments/default/flags/{key}"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"state": "ENABLED",
                "variants": {"on": true, "off": false}, "defaultVariant": default}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
    }
}

#[cfg(unix)]
mod tls {
    use std::time::Duration;

    use super::certs::{ADMIN, authority, https_client, leaf, leaf_for, put_flag};
    use tests::ServerProcess;

    /// The binary serving TLS with this pair, in `dir`.
    fn start(dir: &std::path::Path, (cert, key): &(String, String)) -> ServerProcess {
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        ServerProcess::start_with(
            &dir.join("data"),
            ADMIN,
            &[
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
            ],
        )
    }

    fn port(server: &ServerProcess) -> &str {
        server.address().rsplit(':').next().unwrap()
    }

    /// The SDK over `https://`: the snapshot, then a patch, through WSS, trusting a private CA.
    #[test]
    fn the_sdk_syncs_over_tls_with_a_private_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = authority("e2e CA");
        let server = start(dir.path(), &leaf(&ca, &ca_key, "first-leaf"));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let base = format!("https://localhost:{}", port(&server));
        let http = https_client(&ca.pem());
        runtime.block_on(put_flag(&http, &base, "checkout", "on"));
        let client = runtime.block_on(async {
            let client = flag_sdk::FlagClient::builder()
                .server(&base)
                .token(ADMIN)
                .environment("default")
                .ca_certificate(ca.pem())
                .build()
                .unwrap();
            client.wait_ready(Duration::from_secs(10)).await.unwrap();
            client
        });
        let user = flag_sdk::EvaluationContext::new("u");
        assert!(client.bool_value("checkout", &user, false));
        runtime.block_on(put_flag(&http, &base, "checkout", "off"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while client.bool_value("checkout", &user, true) {
            assert!(
                std::time::Instant::now() < deadline,
                "the patch did not arrive over WSS within 10 s (status {:?}, {:?})",
                client.status(),
                client.last_error()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(client.status(), flag_sdk::Status::Ready);
        assert_eq!(client.last_error(), None);
        runtime.block_on(client.close());
    }

    /// The SDK over TLS survives a server restart: stale while it is down, resumed over WSS,
    /// converged with a change made meanwhile.
    #[test]
    fn the_sdk_reconnects_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = authority("e2e CA");
        let pair = leaf(&ca, &ca_key, "first-leaf");
        let door = tests::FrontDoor::open();
        let mut server = start(dir.path(), &pair);
        door.forward_to(Some(&server));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let http = https_client(&ca.pem());
        runtime.block_on(put_flag(&http, &server.base_url, "f", "off"));
        let through_door = door.base_url().replacen("http://", "https://", 1);
        let client = runtime.block_on(async {
            let client = flag_sdk::FlagClient::builder()
                .server(&through_door)
                .token(ADMIN)
                .environment("default")
                .ca_certificate(ca.pem())
                .ping_timeout(Duration::from_secs(2))
                .backoff(Duration::from_millis(50), Duration::from_millis(200))
                .build()
                .unwrap();
            client.wait_ready(Duration::from_secs(10)).await.unwrap();
            client
        });
        let user = flag_sdk::EvaluationContext::new("u");
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !done() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what} within 15 s (status {:?}, {:?})",
                    client.status(),
                    client.last_error()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        door.forward_to(None);
        server.kill();
        wait("stale while the server is down", &|| {
            client.status() == flag_sdk::Status::Stale
        });
        assert!(
            !client.bool_value("f", &user, true),
            "last known good flags"
        );
        let server = start(dir.path(), &pair);
        door.forward_to(Some(&server));
        runtime.block_on(put_flag(&http, &server.base_url, "f", "on"));
        wait("converged after the restart", &|| {
            client.bool_value("f", &user, false)
        });
        assert_eq!(client.status(), flag_sdk::Status::Ready);
        runtime.block_on(client.close());
    }

    /// An untrusted issuer, a certificate for another name and an expired one: each leaves the
    /// SDK in `Status::Error` with a message naming the problem.
    #[test]
    fn certificate_problems_are_named_in_the_sdk_status() {
        let (ca, ca_key) = authority("e2e CA");
        let (stranger, _) = authority("stranger CA");
        let cases = [
            (
                "UnknownIssuer",
                leaf(&ca, &ca_key, "first-leaf"),
                stranger.pem(),
            ),
            (
                "NotValidForName",
                leaf_for(&ca, &ca_key, "first-leaf", &["elsewhere.example"], false),
                ca.pem(),
            ),
            (
                "Expired",
                leaf_for(&ca, &ca_key, "first-leaf", &["localhost"], true),
                ca.pem(),
            ),
        ];
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for (problem, pair, trusted) in cases {
            let dir = tempfile::tempdir().unwrap();
            let server = start(dir.path(), &pair);
            let client = runtime.block_on(async {
                flag_sdk::FlagClient::builder()
                    .server(format!("https://localhost:{}", port(&server)))
                    .token(ADMIN)
                    .environment("default")
                    .ca_certificate(trusted)
                    .build()
                    .unwrap()
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while client.status() != flag_sdk::Status::Error {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{problem}: status {:?}, {:?}",
                    client.status(),
                    client.last_error()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let message = client.last_error().unwrap_or_default();
            assert!(message.contains(problem), "{problem}: {message}");
            runtime.block_on(client.close());
        }
    }

    /// The common name the server presents to a fresh connection (read with a client that
    /// trusts the CA and reports the leaf through reqwest's TLS info).
    async fn presented(client_ca: &str, address: &str) -> Vec<u8> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(client_ca.as_bytes()).unwrap())
            .resolve("localhost", address.parse().unwrap())
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let port = address.rsplit(':').next().unwrap();
        let response = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
            .unwrap()
    }

    fn contains(der: &[u8], marker: &str) -> bool {
        der.windows(marker.len()).any(|w| w == marker.as_bytes())
    }

    #[test]
    fn the_binary_serves_https_and_reloads_on_sighup() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = authority("e2e CA");
        let (cert, key) = leaf(&ca, &ca_key, "first-leaf");
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let server = ServerProcess::start_with(
            &dir.path().join("data"),
            ADMIN,
            &[
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
            ],
        );
        assert!(
            server.base_url.starts_with("https://"),
            "{}",
            server.base_url
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let first = runtime.block_on(presented(&ca.pem(), server.address()));
        assert!(contains(&first, "first-leaf"));
        // Rotate the files and send SIGHUP.
        let (cert, key) = leaf(&ca, &ca_key, "second-leaf");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let der = runtime.block_on(presented(&ca.pem(), server.address()));
            if contains(&der, "second-leaf") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rotated certificate was not served within 10 s of SIGHUP"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// flagctl against the TLS server: a private CA from --ca-cert, FLAGCTL_CA_CERT or the config
/// file `login` writes; without it, one line naming the problem and the fix; `watch` over WSS.
#[cfg(unix)]
mod tls_cli {
    use std::io::{BufRead as _, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::certs::{ADMIN, authority, leaf};
    use tests::{ServerProcess, binary};

    fn flagctl(
        server: &ServerProcess,
        dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (i32, String, String) {
        tests::flagctl_env(server, Some(ADMIN), dir, env, args)
    }

    #[test]
    fn flagctl_trusts_a_private_ca_and_explains_a_refused_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = authority("cli CA");
        let (leaf_pem, key_pem) = leaf(&ca, &ca_key, "cli-leaf");
        let (cert_path, key_path, ca_path) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert_path, leaf_pem).unwrap();
        std::fs::write(&key_path, key_pem).unwrap();
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let server = ServerProcess::start_with(
            &dir.path().join("data"),
            ADMIN,
            &[
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
            ],
        );
        let ca = ca_path.to_str().unwrap();

        // Without the CA: one line saying what is wrong, and the fix.
        let (code, _, stderr) = flagctl(&server, dir.path(), &[], &["flag", "list"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("UnknownIssuer"), "{stderr}");
        assert!(stderr.contains("--ca-cert"), "{stderr}");

        // A file that holds no certificate is named as such.
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[],
            &["--ca-cert", garbage.to_str().unwrap(), "flag", "list"],
        );
        assert_ne!(code, 0);
        assert!(stderr.contains("holds no CERTIFICATE"), "{stderr}");

        // --ca-cert, then FLAGCTL_CA_CERT.
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[],
            &["--ca-cert", ca, "flag", "create", "tls-flag"],
        );
        assert_eq!(code, 0, "{stderr}");
        let (code, stdout, stderr) = flagctl(
            &server,
            dir.path(),
            &[("FLAGCTL_CA_CERT", ca)],
            &["flag", "list"],
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("tls-flag"), "{stdout}");

        // login saves it: later commands need nothing else.
        let (code, _, stderr) = flagctl(
            &server,
            dir.path(),
            &[],
            &[
                "login",
                "--server",
                &server.base_url,
                "--token",
                ADMIN,
                "--ca-cert",
                ca,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        let config =
            std::fs::read_to_string(dir.path().join("config/flagctl/config.toml")).unwrap();
        assert!(config.contains("ca_cert"), "{config}");
        let (code, stdout, stderr) = flagctl(&server, dir.path(), &[], &["flag", "list"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("tls-flag"), "{stdout}");

        // watch over WSS, with the CA from the config file.
        let mut watch = Command::new(binary("flag-cli", "flagctl"))
            .args(["watch"])
            .current_dir(dir.path())
            .env("FLAGCTL_SERVER", &server.base_url)
            .env("FLAGCTL_TOKEN", ADMIN)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env_remove("FLAGCTL_CA_CERT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = watch.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let first = received.recv_timeout(Duration::from_secs(10));
        let _ = watch.kill();
        let _ = watch.wait();
        let first = first.expect("no line from flagctl watch over TLS within 10 s");
        assert!(first.contains("snapshot: 1 flag(s)"), "{first}");
    }
}

/// Mutual TLS end to end: the server requires client certificates from a client CA; the SDK and
/// flagctl present one, and without one they say what is missing.
#[cfg(unix)]
mod mutual_tls {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::certs::{ADMIN, authority, leaf_for};
    use tests::{ServerProcess, binary};

    #[test]
    fn the_sdk_and_flagctl_present_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let servers = authority("server CA");
        let clients = authority("client CA");
        let (cert, key) = leaf_for(
            &servers.0,
            &servers.1,
            "server",
            &["localhost", "127.0.0.1"],
            false,
        );
        let (client_cert, client_key) = leaf_for(
            &clients.0,
            &clients.1,
            "client",
            &["checkout-service"],
            false,
        );
        for (name, text) in [
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.pem", servers.0.pem()),
            ("clients.pem", clients.0.pem()),
            ("client.crt", client_cert.clone()),
            ("client.key", client_key.clone()),
        ] {
            std::fs::write(path(name), text).unwrap();
        }
        let file = |name: &str| path(name).to_str().unwrap().to_owned();
        let server = ServerProcess::start_with(
            &path("data"),
            ADMIN,
            &[
                "--tls-cert",
                &file("tls.crt"),
                "--tls-key",
                &file("tls.key"),
                "--tls-client-ca",
                &file("clients.pem"),
            ],
        );
        let flagctl = |extra: &[&str]| {
            let output = Command::new(binary("flag-cli", "flagctl"))
                .args(["--ca-cert", &file("ca.pem")])
                .args(extra)
                .args(["flag", "list"])
                .current_dir(dir.path())
                .env("FLAGCTL_SERVER", &server.base_url)
                .env("FLAGCTL_TOKEN", ADMIN)
                .env("XDG_CONFIG_HOME", path("config"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let (code, stderr) = flagctl(&[]);
        assert_ne!(code, 0);
        assert!(stderr.contains("requires a client certificate"), "{stderr}");
        assert!(stderr.contains("--client-cert"), "{stderr}");
        let (code, stderr) = flagctl(&[
            "--client-cert",
            &file("client.crt"),
            "--client-key",
            &file("client.key"),
        ]);
        assert_eq!(code, 0, "{stderr}");

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let base = format!(
            "https://localhost:{}",
            server.address().rsplit(':').next().unwrap()
        );
        let build = |identity: bool| {
            let mut builder = flag_sdk::FlagClient::builder()
                .server(&base)
                .token(ADMIN)
                .environment("default")
                .ca_certificate(servers.0.pem());
            if identity {
                builder = builder.client_certificate(client_cert.clone(), client_key.clone());
            }
            builder.build().unwrap()
        };
        let with = runtime.block_on(async {
            let client = build(true);
            client.wait_ready(Duration::from_secs(10)).await.unwrap();
            client
        });
        assert_eq!(with.status(), flag_sdk::Status::Ready);
        let without = runtime.block_on(async { build(false) });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while without.status() != flag_sdk::Status::Error {
            assert!(
                std::time::Instant::now() < deadline,
                "status {:?}, {:?}",
                without.status(),
                without.last_error()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let message = without.last_error().unwrap_or_default();
        assert!(message.contains("client certificate"), "{message}");
        runtime.block_on(with.close());
        runtime.block_on(without.close());
    }
}
