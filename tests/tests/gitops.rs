//! GitOps end to end: a Git repository made in the test with the `git` program, the real server
//! bound to it with a 1 s interval, `flagctl` and the SDK as users run them.
//!
//! Needs `git` (the server's `file://` fetches also run `git upload-pack`). Without it each test
//! prints one `skipped:` line, unless `FLAGD_REQUIRE_GIT=1` (set by `.ci/run`) makes it fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flag_sdk::{EvaluationContext, FlagClient};
use serde_json::{Value, json};
use tests::{ServerProcess, http};

const ADMIN: &str = "flg_admin_gitops_end_to_end_token";
const HOOK_SECRET: &str = "webhook-shared-secret";

/// Whether `git` runs; otherwise one `skipped:` line (or a failure under FLAGD_REQUIRE_GIT=1).
fn git_available(test: &str) -> bool {
    tests::program_available("git", "FLAGD_REQUIRE_GIT", test)
}

/// A repository in a temporary directory, committed to with the `git` program.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(root: &Path) -> Repo {
        let dir = root.join("flags-repo");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_AUTHOR_NAME", "Ann Dev")
            .env("GIT_AUTHOR_EMAIL", "ann@example.com")
            .env("GIT_COMMITTER_NAME", "Ann Dev")
            .env("GIT_COMMITTER_EMAIL", "ann@example.com")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Writes files (path, JSON) and commits them; returns the short sha.
    fn commit(&self, message: &str, files: &[(&str, Value)]) -> String {
        for (path, document) in files {
            let path = self.dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "--short=7", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

fn boolean(state: &str, default: &str) -> Value {
    json!({"state": state, "variants": {"on": true, "off": false}, "defaultVariant": default})
}

fn flagctl(server: &ServerProcess, dir: &Path, args: &[&str]) -> (i32, String, String) {
    tests::flagctl(server, ADMIN, dir, args)
}

/// Starts a server whose secrets directory holds the webhook secret `hook`.
fn server(root: &Path) -> ServerProcess {
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("hook"), format!("{HOOK_SECRET}\n")).unwrap();
    ServerProcess::start_with(
        &root.join("data"),
        ADMIN,
        &["--secrets-dir", secrets.to_str().unwrap()],
    )
}

async fn get(server: &ServerProcess, path: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}{path}", server.base_url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `observe` until `done` holds (20 s at most), returning what it saw last.
async fn until<F, Fut>(what: &str, mut observe: F, done: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Value>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = observe().await;
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {seen:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn source(server: &ServerProcess) -> Value {
    get(server, "/api/v1/environments/default/source").await.1
}

async fn flag(server: &ServerProcess, key: &str) -> Value {
    get(server, &format!("/api/v1/environments/default/flags/{key}"))
        .await
        .1
}

fn synced_at(short: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s: &Value| s["status"]["state"] == "synced" && s["status"]["commit"]["shortSha"] == short
}

/// `flagctl env source set default` to `path` in `repo`, with more options.
fn set_source(server: &ServerProcess, dir: &Path, repo: &Repo, path: &str, options: &[&str]) {
    let url = repo.url();
    let mut args = vec![
        "env",
        "source",
        "set",
        "default",
        "--repository",
        &url,
        "--path",
        path,
    ];
    args.extend_from_slice(options);
    let (code, stdout, stderr) = flagctl(server, dir, &args);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// Binds with a 1 s interval and the webhook secret `hook`.
fn bind(server: &ServerProcess, dir: &Path, repo: &Repo, path: &str, drift: &str) {
    let options = [
        "--interval",
        "1s",
        "--drift",
        drift,
        "--webhook-secret",
        "hook",
    ];
    set_source(server, dir, repo, path, &options);
}

async fn metrics_text(server: &ServerProcess) -> String {
    http()
        .get(format!("{}/metrics", server.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sign(body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Initial sync, a new commit live and streamed to an SDK, a manual change reverted (and
/// audited as such), an invalid commit refused with live state kept, `git revert` restoring
/// the earlier state, webhooks refused without the right signature, the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn git_is_the_source_of_truth_with_drift_reverted() {
    if !git_available("git_is_the_source_of_truth_with_drift_reverted") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::new(root.path());
    // A directory of flag-set files, merged in name order.
    let first = repo.commit(
        "checkout and search flags",
        &[
            (
                "flags/a-checkout.json",
                json!({"flags": {"new-checkout": boolean("ENABLED", "off")}}),
            ),
            (
                "flags/b-search.json",
                json!({"flags": {"fast-search": boolean("ENABLED", "on")}}),
            ),
        ],
    );
    let server = server(root.path());
    bind(&server, root.path(), &repo, "flags", "revert");
    let view = until("initial sync", || source(&server), synced_at(&first)).await;
    assert_eq!(
        view["status"]["commit"]["author"],
        "Ann Dev <ann@example.com>"
    );
    let stored = flag(&server, "new-checkout").await;
    assert_eq!(stored["updatedBy"], format!("git:{first}"));
    assert_eq!(
        flag(&server, "fast-search").await["flag"]["defaultVariant"],
        "on"
    );

    // An SDK follows the stream.
    let (sdk_token, _) = tests::sdk_token(&server.base_url, ADMIN, "app").await;
    let client = FlagClient::builder()
        .server(&server.base_url)
        .token(&sdk_token)
        .build()
        .unwrap();
    let context = EvaluationContext::new("user-1");
    let wait_for = |expected: bool| {
        let client = client.clone();
        let context = context.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while client.bool_value("new-checkout", &context, !expected) != expected {
                assert!(
                    Instant::now() < deadline,
                    "the SDK never saw new-checkout = {expected}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(false).await;

    // A new commit goes live and reaches the SDK.
    let on = repo.commit(
        "turn new-checkout on",
        &[(
            "flags/a-checkout.json",
            json!({"flags": {"new-checkout": boolean("ENABLED", "on")}}),
        )],
    );
    until("the second commit", || source(&server), synced_at(&on)).await;
    wait_for(true).await;
    let audit = get(&server, "/api/v1/audit?flag=new-checkout&limit=1")
        .await
        .1;
    let record = &audit["changes"][0];
    assert_eq!(record["actor"], format!("git:{on}"));
    assert_eq!(
        record["message"],
        "turn new-checkout on (Ann Dev <ann@example.com>)"
    );

    // A manual change is drift: reverted at the next sync, and audited as such.
    let (code, _, stderr) = flagctl(&server, root.path(), &["flag", "disable", "new-checkout"]);
    assert_eq!(code, 0, "{stderr}");
    until(
        "the manual disable reverted",
        || flag(&server, "new-checkout"),
        |f| f["flag"]["state"] == "ENABLED" && f["updatedBy"] == format!("git:{on}"),
    )
    .await;
    let audit = get(&server, "/api/v1/audit?flag=new-checkout&limit=1")
        .await
        .1;
    let record = &audit["changes"][0];
    assert_eq!(record["message"], "drift reverted: new-checkout");
    assert_eq!(record["before"]["state"], "DISABLED");
    assert_eq!(record["after"]["state"], "ENABLED");
    wait_for(true).await;

    // An invalid commit fails the sync and leaves live state as it was.
    let version_before = flag(&server, "new-checkout").await["version"].clone();
    let bad = repo.commit(
        "break it",
        &[("flags/a-checkout.json", json!({"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "missing"}}}))],
    );
    let failed = until(
        "the invalid commit to fail",
        || source(&server),
        |s| s["status"]["state"] == "failed",
    )
    .await;
    let error = &failed["status"]["error"];
    assert!(error["message"].as_str().unwrap().contains(&bad), "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("flags/a-checkout.json"),
        "{error}"
    );
    assert_eq!(
        error["problems"][0]["path"],
        "flags.new-checkout.defaultVariant"
    );
    assert_eq!(
        failed["status"]["commit"]["shortSha"], on,
        "still the last good commit"
    );
    assert_eq!(
        flag(&server, "new-checkout").await["version"],
        version_before
    );
    let (code, stdout, _) = flagctl(&server, root.path(), &["env", "source", "show", "default"]);
    assert_eq!(code, 1, "a failed sync exits 1: {stdout}");
    assert!(
        stdout.contains("FAILED") && stdout.contains("defaultVariant"),
        "{stdout}"
    );

    // Rollback is `git revert`: of the broken commit, then of "turn on".
    repo.git(&["revert", "--no-edit", &bad]);
    repo.git(&["revert", "--no-edit", &on]);
    let reverted = repo.git(&["rev-parse", "--short=7", "HEAD"]);
    until("the revert", || source(&server), synced_at(&reverted)).await;
    assert_eq!(
        flag(&server, "new-checkout").await["flag"]["defaultVariant"],
        "off"
    );
    wait_for(false).await;

    // Syncs that find nothing to do write nothing: no new version, no audit record.
    let (_, before) = get(&server, "/api/v1/environments/default/flags").await;
    for _ in 0..2 {
        let (code, stdout, stderr) =
            flagctl(&server, root.path(), &["env", "source", "sync", "default"]);
        assert_eq!(code, 0, "{stdout}{stderr}");
    }
    let (_, after) = get(&server, "/api/v1/environments/default/flags").await;
    assert_eq!(after["version"], before["version"]);

    // Webhooks: a wrong or missing signature is refused; the right one syncs.
    let hook = format!(
        "{}/api/v1/environments/default/source/sync",
        server.base_url
    );
    let body = br#"{"ref":"refs/heads/main"}"#;
    for signature in [
        None,
        Some("sha256=00".to_owned()),
        Some(sign(b"another body")),
    ] {
        let mut request = http().post(&hook).body(body.to_vec());
        if let Some(signature) = &signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "signature {signature:?}");
    }
    for (token, expected) in [("not-the-secret", 401), (HOOK_SECRET, 200)] {
        let gitlab = http()
            .post(&hook)
            .header("X-Gitlab-Token", token)
            .send()
            .await
            .unwrap();
        assert_eq!(gitlab.status().as_u16(), expected, "X-Gitlab-Token {token}");
    }
    let response = http()
        .post(&hook)
        .header("X-Hub-Signature-256", sign(body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"]["state"], "synced");

    // Metrics.
    let metrics = metrics_text(&server).await;
    assert!(metrics.contains("flagd_gitops_last_sync_timestamp_seconds{environment=\"default\"}"));
    assert!(metrics.contains("flagd_gitops_sync_failures_total{environment=\"default\"}"));
    assert!(metrics.contains("flagd_gitops_drift{environment=\"default\"} 0"));
    client.close().await;
}

/// `reject`: admin writes answer 409 `managed_by_git` naming the repository and path; a ramp
/// still runs, is never reverted, and once it ends its rollout is reported until Git catches up.
#[tokio::test(flavor = "multi_thread")]
async fn reject_refuses_writes_but_ramps_run() {
    if !git_available("reject_refuses_writes_but_ramps_run") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::new(root.path());
    let first = repo.commit(
        "checkout flag",
        &[(
            "production.json",
            json!({"flags": {"new-checkout": boolean("ENABLED", "off")}}),
        )],
    );
    let server = server(root.path());
    bind(&server, root.path(), &repo, "production.json", "reject");
    until("initial sync", || source(&server), synced_at(&first)).await;

    let response = http()
        .patch(format!(
            "{}/api/v1/environments/default/flags/new-checkout",
            server.base_url
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"state": "DISABLED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "managed_by_git");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&repo.url()) && message.contains("production.json"),
        "{message}"
    );
    let (code, _, stderr) = flagctl(&server, root.path(), &["flag", "disable", "new-checkout"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("managed by Git"), "{stderr}");
    let (code, _, stderr) = flagctl(
        &server,
        root.path(),
        &["env", "delete", "default", "--force"],
    );
    assert_eq!(code, 1, "{stderr}");

    // A ramp is allowed and advances; syncs in between leave its rollout alone.
    let (code, stdout, stderr) = flagctl(
        &server,
        root.path(),
        &[
            "ramp",
            "start",
            "new-checkout",
            "--steps",
            "10,50,100",
            "--every",
            "2s",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = get(&server, "/api/v1/environments/default/flags").await.1;
        let percentage = listed["flags"][0]["rolloutPercentage"].clone();
        if seen.last() != Some(&percentage) {
            seen.push(percentage);
        }
        let ramp = get(
            &server,
            "/api/v1/environments/default/flags/new-checkout/ramp",
        )
        .await
        .1;
        if ramp["state"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ramp never completed: {ramp:#} (seen {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Percentages only went up (a revert would have sent one back to 0).
    let numbers: Vec<f64> = seen.iter().filter_map(Value::as_f64).collect();
    assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(numbers.contains(&50.0), "{seen:?}");

    // Ended: the rollout differs from Git, and is reported rather than reverted.
    let view = until(
        "the ended ramp's rollout reported",
        || async {
            let (code, stdout, stderr) =
                flagctl(&server, root.path(), &["env", "source", "sync", "default"]);
            assert_eq!(code, 0, "{stdout}{stderr}");
            source(&server).await
        },
        |s| s["status"]["drift"][0]["kind"] == "rollout_after_ramp",
    )
    .await;
    assert_eq!(view["status"]["drift"][0]["flag"], "new-checkout");
    let listed = get(&server, "/api/v1/environments/default/flags").await.1;
    assert_eq!(listed["flags"][0]["rolloutPercentage"], 100.0);
    let (_, status_out, _) = flagctl(&server, root.path(), &["status"]);
    assert!(status_out.contains("rollout_after_ramp"), "{status_out}");

    // Git catches up: the drift is gone, and the next manual change is refused again.
    let caught_up = repo.commit(
        "new checkout for everyone",
        &[(
            "production.json",
            json!({"flags": {"new-checkout": boolean("ENABLED", "on")}}),
        )],
    );
    let view = until("Git to catch up", || source(&server), synced_at(&caught_up)).await;
    let view = if view["status"]["drift"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        view
    } else {
        until(
            "the drift list to clear",
            || source(&server),
            |s| s["status"]["drift"].as_array().is_some_and(Vec::is_empty),
        )
        .await
    };
    assert_eq!(view["status"]["state"], "synced");
}

/// `report`: a manual change is kept and listed (in the source, `flagctl status` and the
/// metrics), while a later Git change to another flag is still applied.
#[tokio::test(flavor = "multi_thread")]
async fn report_keeps_and_lists_drift() {
    if !git_available("report_keeps_and_lists_drift") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::new(root.path());
    let first = repo.commit(
        "two flags",
        &[(
            "env/prod.json",
            json!({"flags": {"new-checkout": boolean("ENABLED", "off"), "fast-search": boolean("ENABLED", "off")}}),
        )],
    );
    let server = server(root.path());
    bind(&server, root.path(), &repo, "env/prod.json", "report");
    until("initial sync", || source(&server), synced_at(&first)).await;

    let (code, _, stderr) = flagctl(&server, root.path(), &["flag", "disable", "new-checkout"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        flagctl(&server, root.path(), &["env", "source", "sync", "default"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("new-checkout modified"), "{stdout}");
    let view = source(&server).await;
    assert_eq!(view["status"]["drift"][0]["flag"], "new-checkout");
    assert_eq!(view["status"]["drift"][0]["live"]["state"], "DISABLED");
    assert_eq!(view["status"]["drift"][0]["git"]["state"], "ENABLED");
    assert_eq!(
        flag(&server, "new-checkout").await["flag"]["state"],
        "DISABLED"
    );

    // Git changes another flag: applied; the drift stays and is still listed.
    let next = repo.commit(
        "fast search on",
        &[(
            "env/prod.json",
            json!({"flags": {"new-checkout": boolean("ENABLED", "off"), "fast-search": boolean("ENABLED", "on")}}),
        )],
    );
    let view = until("the next commit", || source(&server), synced_at(&next)).await;
    assert_eq!(view["status"]["drift"].as_array().unwrap().len(), 1);
    assert_eq!(
        flag(&server, "fast-search").await["flag"]["defaultVariant"],
        "on"
    );
    assert_eq!(
        flag(&server, "new-checkout").await["flag"]["state"],
        "DISABLED"
    );
    let (_, status_out, _) = flagctl(&server, root.path(), &["status"]);
    assert!(
        status_out.contains("drift:       1 item(s)"),
        "{status_out}"
    );
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("flagd_gitops_drift{environment=\"default\"} 1"),
        "{metrics}"
    );

    // Rebinding the same repository, branch and path (another interval) keeps the baseline:
    // the kept drift is still drift, not overwritten as if Git had just changed it.
    set_source(
        &server,
        root.path(),
        &repo,
        "env/prod.json",
        &["--interval", "1h", "--drift", "report"],
    );
    let (code, stdout, stderr) =
        flagctl(&server, root.path(), &["env", "source", "sync", "default"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("new-checkout modified"), "{stdout}");
    assert_eq!(
        flag(&server, "new-checkout").await["flag"]["state"],
        "DISABLED"
    );

    // A branch the repository does not have fails the sync, saying so.
    set_source(
        &server,
        root.path(),
        &repo,
        "env/prod.json",
        &["--branch", "dev", "--drift", "report"],
    );
    let (code, stdout, _) = flagctl(&server, root.path(), &["env", "source", "sync", "default"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("the repository has no branch \"dev\""),
        "{stdout}"
    );
    assert_eq!(
        flag(&server, "new-checkout").await["flag"]["state"],
        "DISABLED"
    );

    // Unbinding keeps live state and allows edits without drift bookkeeping.
    let (code, _, stderr) = flagctl(&server, root.path(), &["env", "source", "unset", "default"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        get(&server, "/api/v1/environments/default/source").await.0,
        404
    );
    let metrics = metrics_text(&server).await;
    assert!(
        !metrics.contains("flagd_gitops_drift{"),
        "unbound: no series left\n{metrics}"
    );
    assert!(
        !root
            .path()
            .join("data/git")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "unbound: the repository cache is removed"
    );
}
