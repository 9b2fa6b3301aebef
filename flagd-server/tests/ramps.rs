//! Ramps with a fake clock: `ramp::tick` is called at chosen times; nothing sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flagd_server::domain::ramp;
use flagd_server::domain::tokens::{TokenCache, generate_id, generate_secret, hash_secret};
use flagd_server::state::AppState;
use flagd_server::store::{Attribution, FlagStore, Role, SqliteStore, StoreError, TokenRecord};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const T0: i64 = 1_800_000_000;

struct Harness {
    state: AppState,
    router: axum::Router,
    clock: Arc<AtomicI64>,
    admin: String,
}

impl Harness {
    fn new() -> Harness {
        Harness::over(Arc::new(SqliteStore::in_memory(T0).unwrap()))
    }

    fn over(store: Arc<dyn FlagStore>) -> Harness {
        let clock = Arc::new(AtomicI64::new(T0));
        let tokens = TokenCache::default();
        let admin = generate_secret(Role::Admin);
        let existing = store.tokens().unwrap();
        let record = TokenRecord {
            environments: None,
            id: generate_id(),
            name: "alice".into(),
            role: Role::Admin,
            environment: None,
            hash: hash_secret(&admin),
            created_at: T0,
            revoked_at: None,
        };
        store.insert_token(&record).unwrap();
        tokens.load(existing.into_iter().chain([record]));
        let now = clock.clone();
        let state =
            AppState::new(store, tokens, Arc::new(move || now.load(Ordering::SeqCst))).unwrap();
        let router = flagd_server::api::router(state.clone(), 1 << 20);
        Harness {
            state,
            router,
            clock,
            admin,
        }
    }

    fn at(&self, seconds_after_t0: i64) {
        self.clock.store(T0 + seconds_after_t0, Ordering::SeqCst);
    }

    async fn tick_at(&self, seconds_after_t0: i64) -> usize {
        self.at(seconds_after_t0);
        ramp::tick(&self.state).await.unwrap()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.admin));
        let body = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(builder.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create_flag(&self, key: &str) {
        let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
        let (status, body) = self
            .call(
                "PUT",
                &format!("/api/v1/environments/default/flags/{key}"),
                Some(flag),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn percentage(&self, key: &str) -> f64 {
        let (_, list) = self
            .call("GET", "/api/v1/environments/default/flags", None)
            .await;
        list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .unwrap()["rolloutPercentage"]
            .as_f64()
            .unwrap()
    }

    async fn ramp(&self, key: &str) -> Value {
        self.call(
            "GET",
            &format!("/api/v1/environments/default/flags/{key}/ramp"),
            None,
        )
        .await
        .1
    }

    async fn metrics(&self) -> String {
        let request = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn start(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/api/v1/environments/default/flags/{key}/ramp"),
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn each_step_is_applied_at_its_time_through_the_audited_rollout_path() {
    let h = Harness::new();
    h.create_flag("checkout").await;
    let (status, started) = h
        .start(
            "checkout",
            json!({"steps": [1, 5, 25, 50, 100], "interval": "30m", "message": "go"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(
        h.percentage("checkout").await,
        1.0,
        "the first step applies at once"
    );
    assert_eq!(started["nextAt"], T0 + 1800);

    assert_eq!(
        h.tick_at(1799).await,
        0,
        "nothing is due before the interval"
    );
    assert_eq!(h.percentage("checkout").await, 1.0);
    for (i, expected) in [5.0, 25.0, 50.0, 100.0].into_iter().enumerate() {
        assert_eq!(h.tick_at(1800 * (i as i64 + 1)).await, 1);
        assert_eq!(h.percentage("checkout").await, expected);
    }
    let ramp = h.ramp("checkout").await;
    assert_eq!(
        (ramp["state"].as_str(), ramp["currentPercentage"].as_f64()),
        (Some("completed"), Some(100.0))
    );
    let events: Vec<&str> = ramp["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["started", "step", "step", "step", "step", "completed"]
    );
    assert_eq!(h.tick_at(100_000).await, 0, "a completed ramp does nothing");

    let (_, audit) = h
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=checkout&limit=10",
            None,
        )
        .await;
    let changes = audit["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 6, "create + 5 steps");
    assert!(changes[..5].iter().all(|c| c["actor"] == ramp::ACTOR));
    assert_eq!(changes[0]["message"], "ramp step 5/5 → 100%");
    assert!(
        changes[4]["message"]
            .as_str()
            .unwrap()
            .starts_with("ramp started by alice: go")
    );
}

#[tokio::test]
async fn pause_resume_and_abort() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.call(
        "POST",
        "/api/v1/environments/default/flags/f/rollout",
        Some(json!({"percentage": 3})),
    )
    .await;
    h.start("f", json!({"steps": [10, 20, 30, 40], "interval": "60s"}))
        .await;
    h.tick_at(60).await;
    assert_eq!(h.percentage("f").await, 20.0);

    h.at(70);
    let (status, paused) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/ramp/pause",
            Some(json!({"message": "looking at errors"})),
        )
        .await;
    assert_eq!(
        (status, paused["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    assert_eq!(h.tick_at(10_000).await, 0, "a paused ramp does not move");
    assert_eq!(h.percentage("f").await, 20.0);

    h.at(10_000);
    let (_, resumed) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/ramp/resume",
            None,
        )
        .await;
    assert_eq!(
        resumed["nextAt"],
        T0 + 10_060,
        "the interval restarts at resume"
    );
    assert_eq!(h.tick_at(10_059).await, 0);
    h.tick_at(10_060).await;
    assert_eq!(h.percentage("f").await, 30.0);

    h.at(10_070);
    let (status, aborted) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/ramp/abort",
            Some(json!({"message": "p99 regressed"})),
        )
        .await;
    assert_eq!(
        (status, aborted["state"].as_str()),
        (StatusCode::OK, Some("aborted"))
    );
    assert_eq!(aborted["abortReason"], "p99 regressed");
    assert_eq!(
        h.percentage("f").await,
        3.0,
        "abort restores the rollout from before the ramp"
    );
    assert_eq!(h.tick_at(20_000).await, 0);
    let (status, _) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/ramp/resume",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing left to resume");
}

#[tokio::test]
async fn after_downtime_only_the_step_due_now_is_applied_and_the_audit_says_so() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.start(
        "f",
        json!({"steps": [1, 5, 25, 50, 100], "interval": "60s"}),
    )
    .await;
    // Steps were due at +60 (5%), +120 (25%) and +180 (50%); the server was down until +190.
    assert_eq!(h.tick_at(190).await, 1);
    assert_eq!(h.percentage("f").await, 50.0);
    let (_, audit) = h
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=f&limit=10",
            None,
        )
        .await;
    let changes = audit["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "create, start, one catch-up step");
    assert_eq!(
        changes[0]["message"],
        "ramp step 4/5 → 50% (caught up; skipped 5%, 25%: due while no scheduler ran)"
    );
    // The schedule stays aligned: the last step is due at +240.
    assert_eq!(h.ramp("f").await["nextAt"], T0 + 240);
    h.tick_at(240).await;
    assert_eq!(h.percentage("f").await, 100.0);
}

#[tokio::test]
async fn a_restart_mid_ramp_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.db");
    {
        let h = Harness::over(Arc::new(SqliteStore::open(&path, T0).unwrap()));
        h.create_flag("f").await;
        h.start("f", json!({"steps": [10, 50, 100], "interval": "60s"}))
            .await;
        h.tick_at(60).await;
        assert_eq!(h.percentage("f").await, 50.0);
    }
    let h = Harness::over(Arc::new(SqliteStore::open(&path, T0).unwrap()));
    assert_eq!(h.ramp("f").await["state"], "active");
    assert_eq!(h.tick_at(119).await, 0);
    h.tick_at(120).await;
    assert_eq!(h.percentage("f").await, 100.0);
    assert_eq!(h.ramp("f").await["state"], "completed");
}

#[tokio::test]
async fn manual_rollout_edits_are_refused_while_a_ramp_runs() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.start("f", json!({"steps": [10, 100], "interval": "1h"}))
        .await;
    let (status, body) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/rollout",
            Some(json!({"percentage": 90})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("being ramped"),
        "{body}"
    );
    assert_eq!(h.percentage("f").await, 10.0);
    h.call(
        "POST",
        "/api/v1/environments/default/flags/f/ramp/pause",
        None,
    )
    .await;
    let (status, _) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/rollout",
            Some(json!({"percentage": 90})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a paused ramp lets people take over"
    );
    // One ramp per flag.
    let (status, body) = h.start("f", json!({"steps": [50], "interval": "1h"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn bad_ramps_are_refused_and_change_nothing() {
    let h = Harness::new();
    h.create_flag("f").await;
    let cases = [
        (
            json!({"steps": [], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "steps",
        ),
        (
            json!({"steps": [1, 50], "interval": "1m", "guard": {"url": "http://127.0.0.1:9/", "failures": 4_294_967_296_i64}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.failures",
        ),
        (
            json!({"steps": [1, 50], "interval": "1m", "guard": {"url": "http://"}}),
            StatusCode::BAD_REQUEST,
            "guard.url",
        ),
        (
            json!({"steps": [5, 5], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "strictly increasing",
        ),
        (
            json!({"steps": [50, 10], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "strictly increasing",
        ),
        (
            json!({"steps": [10, 101], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 100",
        ),
        (
            json!({"steps": [0, 10], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at least 0.01",
        ),
        // Used to be stored as such.
        (
            json!({"steps": [1e-300, 10], "interval": "1m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "steps[0]",
        ),
        // Used to wrap to a negative nextAt and reach 100 % within a second.
        (
            json!({"steps": [1, 50, 100], "interval": "9223372036854775807s"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1s and",
        ),
        // Used to wrap to 44 s in the duration parser.
        (
            json!({"steps": [1, 50], "interval": "307445734561825861m"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1s and",
        ),
        (
            json!({"steps": [1, 50], "durations": ["367d"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "durations[0]",
        ),
        (
            json!({"steps": [1, 50], "interval": "1m", "guard": {"url": "http://127.0.0.1:9/", "timeout": "61s"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.timeout",
        ),
        (
            json!({"steps": [1, 50], "interval": "1m", "guard": {"url": "http://127.0.0.1:9/", "failures": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.failures",
        ),
        (
            json!({"steps": [10, 20]}),
            StatusCode::BAD_REQUEST,
            "interval",
        ),
        (
            json!({"steps": [10, 20], "interval": "soon"}),
            StatusCode::BAD_REQUEST,
            "duration",
        ),
        (
            json!({"steps": [10, 20, 30], "durations": ["1m"]}),
            StatusCode::BAD_REQUEST,
            "durations has 1",
        ),
        (
            json!({"steps": [10, 20], "interval": "1m", "guard": {"url": "ftp://x"}}),
            StatusCode::BAD_REQUEST,
            "http:// or https://",
        ),
        (
            json!({"steps": [10, 20], "every": "1m"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (body, status, fragment) in cases {
        let (actual, answer) = h.start("f", body.clone()).await;
        assert_eq!(actual, status, "{body}: {answer}");
        assert!(answer.to_string().contains(fragment), "{body}: {answer}");
    }
    let (status, _) = h
        .start("nope", json!({"steps": [10], "interval": "1m"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let string_flag =
        json!({"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a"});
    h.call(
        "PUT",
        "/api/v1/environments/default/flags/s",
        Some(string_flag),
    )
    .await;
    let (status, answer) = h.start("s", json!({"steps": [10], "interval": "1m"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(h.percentage("f").await, 0.0);
    assert_eq!(
        h.call("GET", "/api/v1/environments/default/ramps", None)
            .await
            .1["ramps"],
        json!([])
    );
}

/// A health endpoint that can be turned unhealthy.
async fn guard_server() -> (String, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let flag = flag.clone();
            async move {
                if flag.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "error rate 12%")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, healthy)
}

#[tokio::test]
async fn an_unhealthy_guard_aborts_the_ramp_and_restores_the_rollout() {
    let (url, healthy) = guard_server().await;
    let h = Harness::new();
    h.create_flag("f").await;
    h.start("f", json!({"steps": [10, 25, 50, 100], "interval": "60s", "guard": {"url": url, "timeout": "2s"}})).await;
    h.tick_at(60).await;
    assert_eq!(h.percentage("f").await, 25.0, "healthy: the step applies");

    healthy.store(false, Ordering::SeqCst);
    h.tick_at(120).await;
    assert_eq!(
        h.percentage("f").await,
        0.0,
        "restored to the rollout before the ramp"
    );
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["state"], "aborted");
    let reason = ramp["abortReason"].as_str().unwrap();
    assert!(
        reason.contains("503") && reason.contains("error rate 12%"),
        "{reason}"
    );
    let (_, audit) = h
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=f&limit=1",
            None,
        )
        .await;
    assert!(
        audit["changes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ramp aborted: guard failed"),
        "{audit}"
    );
}

#[tokio::test]
async fn a_guard_with_a_failure_budget_retries_before_aborting() {
    let (url, healthy) = guard_server().await;
    let h = Harness::new();
    h.create_flag("f").await;
    h.start(
        "f",
        json!({"steps": [10, 50], "interval": "10m", "guard": {"url": url, "failures": 2}}),
    )
    .await;
    healthy.store(false, Ordering::SeqCst);
    h.tick_at(600).await;
    let ramp = h.ramp("f").await;
    assert_eq!(
        (ramp["state"].as_str(), ramp["guardFailures"].as_u64()),
        (Some("active"), Some(1))
    );
    assert_eq!(ramp["nextAt"], T0 + 630, "retried after at most 30 s");
    healthy.store(true, Ordering::SeqCst);
    h.tick_at(630).await;
    assert_eq!(h.percentage("f").await, 50.0, "recovered: the step applies");

    // A guard that is down at the start stops the ramp from starting.
    healthy.store(false, Ordering::SeqCst);
    h.create_flag("g").await;
    let (status, body) = h
        .start(
            "g",
            json!({"steps": [10, 50], "interval": "10m", "guard": {"url": url}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// The regression that started issue 11: `[off 75, on 25]` is 25 % on; 30 % means 30 % of users,
/// and everyone on at 25 % stays on.
#[tokio::test]
async fn an_off_first_rollout_is_listed_and_raised_by_the_true_variant() {
    let h = Harness::new();
    let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"fractional": [["off", 75], ["on", 25]]}});
    let (status, before) = h
        .call("PUT", "/api/v1/environments/default/flags/f", Some(flag))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{before}");
    assert_eq!(h.percentage("f").await, 25.0);
    let (status, after) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/rollout",
            Some(json!({"percentage": 30})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(h.percentage("f").await, 30.0);
    assert_eq!(
        after["flag"]["targeting"],
        json!({"fractional": [["off", 7000], ["on", 3000]]})
    );
    let on = |definition: &Value| {
        let document = json!({"flags": {"f": definition}});
        let (_, flags) = flag_core::CompiledFlagSet::from_value(&document).unwrap();
        (0..100_000)
            .map(|i| {
                let ctx = flag_core::EvaluationContext::new(format!("user-{i}"));
                flags.resolve_bool("f", &ctx, false, 0).value
            })
            .collect::<Vec<bool>>()
    };
    let (was, is) = (on(&before["flag"]), on(&after["flag"]));
    let share = is.iter().filter(|x| **x).count() as f64 / 1_000.0;
    assert!((share - 30.0).abs() < 1.0, "30 % served {share} %");
    assert!(
        was.iter().zip(&is).all(|(was, is)| !was || *is),
        "a user on at 25 % is off at 30 %"
    );
}

#[tokio::test]
async fn other_flag_types_name_the_variant_they_roll_out() {
    let h = Harness::new();
    let flag = json!({"state": "ENABLED", "variants": {"blue": "#00f", "red": "#f00"}, "defaultVariant": "red"});
    h.call(
        "PUT",
        "/api/v1/environments/default/flags/color",
        Some(flag),
    )
    .await;
    let rollout = |body: Value| {
        h.call(
            "POST",
            "/api/v1/environments/default/flags/color/rollout",
            Some(body),
        )
    };
    let (status, body) = rollout(json!({"percentage": 10})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "rollout_variants", "{body}");
    let (status, body) = rollout(json!({"percentage": 10, "variant": "green"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = rollout(json!({"percentage": 10, "variant": "blue"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["flag"]["targeting"],
        json!({"fractional": [["blue", 1000], ["red", 9000]]})
    );
    // A ramp of a string flag carries its variant to every step and to the abort.
    let (status, ramp) = h
        .start(
            "color",
            json!({"steps": [20, 40], "interval": "1m", "variant": "blue"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ramp}");
    h.tick_at(60).await;
    let (_, flag) = h
        .call("GET", "/api/v1/environments/default/flags/color", None)
        .await;
    assert_eq!(
        flag["flag"]["targeting"],
        json!({"fractional": [["blue", 4000], ["red", 6000]]})
    );
}

/// Points the stored guard of `flag`'s ramp at `url` (a start checks the guard, so tests start
/// with a healthy one and switch).
fn point_guard_at(h: &Harness, flag: &str, url: &str) {
    let store = h.state.store.clone();
    let mut record = store
        .ramps(&flagd_server::store::RampQuery {
            flag: Some(flag.into()),
            ..Default::default()
        })
        .unwrap()
        .remove(0);
    record.definition["guard"]["url"] = json!(url);
    store.save_ramp(&record).unwrap();
}

/// A guard endpoint that hangs until released, then answers healthy; `asked` fires on each
/// check.
async fn hanging_guard() -> (String, Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>) {
    let asked = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (notify, wait) = (asked.clone(), release.clone());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (notify, wait) = (notify.clone(), wait.clone());
            async move {
                notify.notify_one();
                wait.notified().await;
                (StatusCode::OK, "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, asked, release)
}

#[tokio::test]
async fn abort_does_not_wait_for_a_guard_that_never_answers() {
    let (hanging, asked, release) = hanging_guard().await;
    let (healthy, _) = guard_server().await;
    let h = Arc::new(Harness::new());
    h.create_flag("f").await;
    // Start with a healthy guard, then point the stored ramp's guard at the hanging one (the
    // start itself checks the guard).
    let (status, _) = h
        .start(
            "f",
            json!({"steps": [10, 50, 100], "interval": "1m", "guard": {"url": healthy, "timeout": "60s"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    point_guard_at(&h, "f", &hanging);

    h.at(60);
    let ticking = tokio::spawn({
        let h = h.clone();
        async move { ramp::tick(&h.state).await }
    });
    asked.notified().await;
    let started = std::time::Instant::now();
    let (status, body) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/f/ramp/abort",
            Some(json!({"message": "stop"})),
        )
        .await;
    let latency = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        latency < std::time::Duration::from_millis(100),
        "abort took {latency:?} while a guard check hung"
    );
    assert!(!ticking.is_finished(), "the guard check is still hanging");
    // The guard now answers healthy: the tick reads the ramp again under the lock, finds it
    // aborted, and applies nothing.
    release.notify_one();
    assert_eq!(ticking.await.unwrap().unwrap(), 0);
    assert_eq!(
        h.percentage("f").await,
        0.0,
        "restored, and no step after the abort"
    );
    assert_eq!(h.ramp("f").await["state"], "aborted");
}

#[tokio::test]
async fn a_corrupt_ramp_row_fails_alone_and_the_others_go_on() {
    let h = Harness::new();
    h.create_flag("good").await;
    h.create_flag("bad").await;
    h.start("good", json!({"steps": [10, 50], "interval": "1m"}))
        .await;
    h.start("bad", json!({"steps": [10, 50], "interval": "1m"}))
        .await;
    let store = h.state.store.clone();
    let mut record = store
        .ramps(&flagd_server::store::RampQuery {
            flag: Some("bad".into()),
            ..Default::default()
        })
        .unwrap()
        .remove(0);
    // A step index past the end: reading it used to index out of bounds.
    record.definition["currentStep"] = json!(7);
    store.save_ramp(&record).unwrap();

    assert_eq!(h.tick_at(60).await, 1, "only the good ramp moved");
    assert_eq!(h.percentage("good").await, 50.0);
    assert_eq!(h.percentage("bad").await, 10.0, "the flag is left alone");
    let bad = h.ramp("bad").await;
    assert_eq!(bad["state"], "failed", "{bad}");
    assert!(
        bad["abortReason"]
            .as_str()
            .unwrap()
            .contains("current step 7 does not exist"),
        "{bad}"
    );
    assert_eq!(bad["invalidDefinition"]["currentStep"], 7);
    // The audit log says so too, without a new environment version.
    let (_, audit) = h
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=bad&limit=1",
            None,
        )
        .await;
    let record = &audit["changes"][0];
    assert_eq!(record["operation"], "ramp_failed", "{audit}");
    assert!(
        record["message"]
            .as_str()
            .unwrap()
            .contains("current step 7 does not exist"),
        "{audit}"
    );
    let (status, list) = h
        .call("GET", "/api/v1/environments/default/ramps", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["ramps"].as_array().unwrap().len(), 2);
    // A row that is not even a ramp is reported, not a 500.
    let mut record = store
        .ramps(&flagd_server::store::RampQuery {
            flag: Some("bad".into()),
            ..Default::default()
        })
        .unwrap()
        .remove(0);
    record.definition = json!("garbage");
    store.save_ramp(&record).unwrap();
    let (status, bad) = h
        .call("GET", "/api/v1/environments/default/flags/bad/ramp", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{bad}");
    assert!(
        bad["abortReason"]
            .as_str()
            .unwrap()
            .contains("does not decode"),
        "{bad}"
    );
}

/// A store whose ramp queries fail or panic on demand (0: fine, 1: error, 2: panic).
struct FlakyStore {
    inner: SqliteStore,
    mode: Arc<std::sync::atomic::AtomicU8>,
}

impl FlagStore for FlakyStore {
    fn environments(&self) -> Result<Vec<flagd_server::store::Environment>, StoreError> {
        self.inner.environments()
    }
    fn environment(
        &self,
        name: &str,
    ) -> Result<Option<flagd_server::store::Environment>, StoreError> {
        self.inner.environment(name)
    }
    fn create_environment(
        &self,
        name: &str,
        by: &Attribution,
    ) -> Result<flagd_server::store::Environment, StoreError> {
        self.inner.create_environment(name, by)
    }
    fn delete_environment(
        &self,
        name: &str,
        force: bool,
        by: &Attribution,
    ) -> Result<(), StoreError> {
        self.inner.delete_environment(name, force, by)
    }
    fn flags(&self, environment: &str) -> Result<Vec<flagd_server::store::StoredFlag>, StoreError> {
        self.inner.flags(environment)
    }
    fn flag(
        &self,
        environment: &str,
        key: &str,
    ) -> Result<Option<flagd_server::store::StoredFlag>, StoreError> {
        self.inner.flag(environment, key)
    }
    fn commit(
        &self,
        environment: &str,
        changes: &[flagd_server::store::FlagChange],
        settings: Option<&flagd_server::store::EnvironmentSettings>,
        by: &Attribution,
    ) -> Result<flagd_server::store::Commit, StoreError> {
        self.inner.commit(environment, changes, settings, by)
    }
    fn changes(
        &self,
        query: &flagd_server::store::AuditQuery,
    ) -> Result<Vec<flagd_server::store::ChangeRecord>, StoreError> {
        self.inner.changes(query)
    }
    fn changes_since(
        &self,
        environment: &str,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<flagd_server::store::ChangeRecord>, StoreError> {
        self.inner.changes_since(environment, after_version, limit)
    }
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.tokens()
    }
    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.inner.insert_token(token)
    }
    fn commit_fenced(
        &self,
        environment: &str,
        changes: &[flagd_server::store::FlagChange],
        by: &Attribution,
        ramp: &flagd_server::store::RampRecord,
    ) -> Result<flagd_server::store::Commit, StoreError> {
        self.inner.commit_fenced(environment, changes, by, ramp)
    }
    fn insert_first_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        self.inner.insert_first_token(token)
    }
    fn revoke_token(&self, id: &str, at: i64) -> Result<TokenRecord, StoreError> {
        self.inner.revoke_token(id, at)
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }
    fn save_ramp(&self, ramp: &flagd_server::store::RampRecord) -> Result<i64, StoreError> {
        self.inner.save_ramp(ramp)
    }
    fn record_event(
        &self,
        environment: &str,
        flag: Option<&str>,
        operation: flagd_server::store::Operation,
        details: &Value,
        by: &Attribution,
    ) -> Result<flagd_server::store::ChangeRecord, StoreError> {
        self.inner
            .record_event(environment, flag, operation, details, by)
    }
    fn sources(&self) -> Result<Vec<flagd_server::store::SourceRecord>, StoreError> {
        self.inner.sources()
    }
    fn source(
        &self,
        environment: &str,
    ) -> Result<Option<flagd_server::store::SourceRecord>, StoreError> {
        self.inner.source(environment)
    }
    fn bind_source(
        &self,
        environment: &str,
        spec: &Value,
        status: &Value,
    ) -> Result<i64, StoreError> {
        self.inner.bind_source(environment, spec, status)
    }
    fn source_baseline(&self, environment: &str) -> Result<Option<Value>, StoreError> {
        self.inner.source_baseline(environment)
    }

    fn unbind_source(&self, environment: &str) -> Result<bool, StoreError> {
        self.inner.unbind_source(environment)
    }
    fn save_source_status(
        &self,
        environment: &str,
        generation: i64,
        status: &Value,
        baseline: Option<&Value>,
    ) -> Result<bool, StoreError> {
        self.inner
            .save_source_status(environment, generation, status, baseline)
    }
    fn ramps(
        &self,
        query: &flagd_server::store::RampQuery,
    ) -> Result<Vec<flagd_server::store::RampRecord>, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            1 if query.due_at.is_some() => Err(StoreError::UnknownToken("injected failure".into())),
            2 if query.due_at.is_some() => panic!("injected panic"),
            _ => self.inner.ramps(query),
        }
    }
    fn add_usage(&self, rows: &[flagd_server::store::UsageRecord]) -> Result<(), StoreError> {
        self.inner.add_usage(rows)
    }
    fn usage(
        &self,
        environment: &str,
        flag: &str,
        since: i64,
    ) -> Result<Vec<flagd_server::store::UsageRecord>, StoreError> {
        self.inner.usage(environment, flag, since)
    }
    fn usage_summary(
        &self,
        environment: &str,
        recent: i64,
    ) -> Result<Vec<flagd_server::store::UsageSummary>, StoreError> {
        self.inner.usage_summary(environment, recent)
    }
    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_usage(before)
    }
}

fn restarts(metrics: &flagd_server::metrics::Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("flagd_ramp_scheduler_restarts_total "))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn the_scheduler_restarts_after_an_error_or_a_panic_and_readyz_says_so() {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let store = FlakyStore {
        inner: SqliteStore::in_memory(T0).unwrap(),
        mode: mode.clone(),
    };
    let h = Harness::over(Arc::new(store));
    h.create_flag("f").await;
    h.start("f", json!({"steps": [10, 50, 100], "interval": "1m"}))
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let settings = ramp::SchedulerSettings {
        tick: std::time::Duration::from_millis(5),
        restart_after: std::time::Duration::from_millis(5),
    };
    let scheduler = tokio::spawn(ramp::run_scheduler(
        h.state.domain.clone(),
        stop.clone(),
        settings,
    ));
    let readyz = || async {
        let response = h
            .router
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    };
    for failure in [1u8, 2] {
        let before = restarts(&h.state.metrics);
        mode.store(failure, Ordering::SeqCst);
        let mut saw_unready = false;
        for _ in 0..500 {
            if readyz().await == StatusCode::SERVICE_UNAVAILABLE {
                saw_unready = true;
            }
            if restarts(&h.state.metrics) > before && saw_unready {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(
            restarts(&h.state.metrics) > before,
            "failure mode {failure} was counted"
        );
        assert!(saw_unready, "/readyz reported the failing scheduler");
        mode.store(0, Ordering::SeqCst);
        let mut ready = false;
        for _ in 0..500 {
            if readyz().await == StatusCode::OK {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(ready, "ready again once the scheduler runs");
    }
    // Restarted, it still applies due steps.
    h.at(60);
    let mut stepped = false;
    for _ in 0..500 {
        if h.percentage("f").await == 50.0 {
            stepped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(stepped, "the restarted scheduler applied the due step");
    stop.cancel();
    scheduler.await.unwrap();
}

#[tokio::test]
async fn a_slow_guard_delays_only_its_own_ramp() {
    let (hanging, asked, release) = hanging_guard().await;
    let (healthy, _) = guard_server().await;
    let h = Arc::new(Harness::new());
    h.create_flag("plain").await;
    h.create_flag("guarded").await;
    h.start("plain", json!({"steps": [10, 20, 30], "interval": "1m"}))
        .await;
    h.start(
        "guarded",
        json!({"steps": [10, 20], "interval": "1m", "guard": {"url": healthy, "timeout": "60s"}}),
    )
    .await;
    point_guard_at(&h, "guarded", &hanging);

    h.at(60);
    let first = tokio::spawn({
        let h = h.clone();
        async move { ramp::tick(&h.state).await }
    });
    asked.notified().await;
    assert_eq!(
        h.percentage("plain").await,
        20.0,
        "not held up by the guard"
    );
    // The next tick, while the first still waits on the guard: the plain ramp moves again and
    // the guarded one is not checked twice.
    h.at(120);
    assert_eq!(ramp::tick(&h.state).await.unwrap(), 1);
    assert_eq!(h.percentage("plain").await, 30.0);
    assert!(!first.is_finished());
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 2, "plain, then guarded");
    assert_eq!(h.percentage("guarded").await, 20.0);
}

#[tokio::test]
async fn a_manual_rollout_never_lands_inside_a_starting_ramp() {
    for trial in 0..20 {
        let h = Harness::new();
        let key = format!("race-{trial}");
        h.create_flag(&key).await;
        let rollout_path = format!("/api/v1/environments/default/flags/{key}/rollout");
        let rollout = h.call("POST", &rollout_path, Some(json!({"percentage": 77})));
        let start = h.start(&key, json!({"steps": [80, 90], "interval": "1h"}));
        let ((rolled, _), (started, ramp)) = tokio::join!(rollout, start);
        let now = h.percentage(&key).await;
        if started == StatusCode::CREATED {
            // The ramp owns the rollout from its first step on.
            assert_eq!(now, 80.0, "trial {trial}: {ramp}");
            let previous = ramp["previousPercentage"].as_f64().unwrap();
            assert_eq!(
                previous,
                if rolled == StatusCode::OK { 77.0 } else { 0.0 },
                "trial {trial}: {ramp}"
            );
        } else {
            assert_eq!(now, 77.0, "trial {trial}");
        }
    }
}

#[tokio::test]
async fn a_flag_deleted_and_created_again_is_not_ramped() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.start("f", json!({"steps": [10, 50, 100], "interval": "1m"}))
        .await;
    // Deleted and created again within the same second: the deletion closes the ramp.
    h.call("DELETE", "/api/v1/environments/default/flags/f", None)
        .await;
    let fresh =
        json!({"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no"});
    let (status, _) = h
        .call(
            "PUT",
            "/api/v1/environments/default/flags/f",
            Some(fresh.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    h.tick_at(60).await;
    let (_, flag) = h
        .call("GET", "/api/v1/environments/default/flags/f", None)
        .await;
    assert_eq!(flag["flag"], fresh, "the new flag is left alone");
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["state"], "aborted", "{ramp}");
    assert_eq!(ramp["abortReason"], "the flag was deleted", "{ramp}");
    // A new ramp can start on the new flag at once.
    let (status, body) = h
        .start(
            "f",
            json!({"steps": [10], "variant": "yes", "interval": "1m"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_rollout_changed_outside_the_ramp_stops_it_instead_of_removing_users() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.start("f", json!({"steps": [10, 20, 30], "interval": "1m"}))
        .await;
    let (status, _) = h
        .call(
            "PATCH",
            "/api/v1/environments/default/flags/f",
            Some(json!({"targeting": {"fractional": [["on", 80], ["off", 20]]}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a kill switch or a hand edit is never blocked"
    );
    h.tick_at(60).await;
    assert_eq!(
        h.percentage("f").await,
        80.0,
        "the next step did not take users away"
    );
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["state"], "aborted", "{ramp}");
    assert!(
        ramp["abortReason"]
            .as_str()
            .unwrap()
            .contains("changed outside the ramp to 80%"),
        "{ramp}"
    );
    assert_eq!(
        ramp["currentPercentage"],
        Value::Null,
        "a stopped ramp does not claim where the flag is: {ramp}"
    );

    // Changed while paused: resume refuses rather than move users the ramp did not place.
    h.create_flag("g").await;
    h.start("g", json!({"steps": [10, 20], "interval": "1m"}))
        .await;
    h.call(
        "POST",
        "/api/v1/environments/default/flags/g/ramp/pause",
        None,
    )
    .await;
    h.call(
        "POST",
        "/api/v1/environments/default/flags/g/rollout",
        Some(json!({"percentage": 40})),
    )
    .await;
    let (status, body) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/g/ramp/resume",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(h.percentage("g").await, 40.0);
}

#[tokio::test]
async fn a_ramp_may_not_start_below_the_current_rollout() {
    let h = Harness::new();
    h.create_flag("f").await;
    h.call(
        "POST",
        "/api/v1/environments/default/flags/f/rollout",
        Some(json!({"percentage": 80})),
    )
    .await;
    let (status, body) = h
        .start("f", json!({"steps": [5, 10], "interval": "1h"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "steps[0]", "{body}");
    assert_eq!(h.percentage("f").await, 80.0);
    let (status, body) = h
        .start("f", json!({"steps": [80, 90], "interval": "1h"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_ramp_row_that_is_not_json_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.db");
    let h = Harness::over(Arc::new(SqliteStore::open(&path, T0).unwrap()));
    h.create_flag("good").await;
    h.create_flag("bad").await;
    h.start("good", json!({"steps": [10, 50], "interval": "1m"}))
        .await;
    h.start("bad", json!({"steps": [10, 50], "interval": "1m"}))
        .await;
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE ramps SET definition = 'not json' WHERE flag_key = 'bad'",
        [],
    )
    .unwrap();
    drop(raw);
    assert_eq!(h.tick_at(60).await, 1);
    assert_eq!(h.percentage("good").await, 50.0);
    let (status, list) = h
        .call("GET", "/api/v1/environments/default/ramps", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let bad = h.ramp("bad").await;
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["invalidDefinition"], "not json");
    let (status, _) = h
        .call("GET", "/api/v1/environments/nowhere/ramps", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A guard server with three routes: a redirect to a "secret" internal answer, a huge unhealthy
/// answer, and a plain unhealthy one.
async fn hostile_guard() -> String {
    let app = axum::Router::new()
        .route(
            "/redirect",
            axum::routing::get(|| async {
                (
                    StatusCode::FOUND,
                    [(axum::http::header::LOCATION, "/internal")],
                    "",
                )
            }),
        )
        .route(
            "/internal",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "SECRET-INTERNAL") }),
        )
        .route(
            "/huge",
            axum::routing::get(|| async {
                (StatusCode::SERVICE_UNAVAILABLE, "x\n".repeat(4 << 20))
            }),
        )
        .route(
            "/down",
            axum::routing::get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test]
async fn guards_follow_no_redirect_keep_only_an_excerpt_and_hide_credentials() {
    let base = hostile_guard().await;
    let h = Harness::new();
    for (flag, path) in [("redirect", "/redirect"), ("huge", "/huge")] {
        h.create_flag(flag).await;
        let (status, body) = h
            .start(
                flag,
                json!({"steps": [10, 20], "interval": "1m", "guard": {"url": format!("{base}{path}")}}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("SECRET-INTERNAL"), "{message}");
        assert!(message.len() < 600, "{} bytes", message.len());
        if flag == "redirect" {
            assert!(
                message.contains("302") && message.contains("redirects are not followed"),
                "{message}"
            );
        }
    }
    // Credentials in a guard URL are never shown nor written to the audit log.
    h.create_flag("creds").await;
    let (healthy, up) = guard_server().await;
    let with_credentials = healthy.replacen("http://", "http://ops:hunter2@", 1);
    let (status, ramp) = h
        .start(
            "creds",
            json!({"steps": [10, 20], "interval": "1m", "guard": {"url": with_credentials, "failures": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ramp}");
    assert!(!ramp.to_string().contains("hunter2"), "{ramp}");
    up.store(false, Ordering::SeqCst);
    h.tick_at(60).await;
    let ramp = h.ramp("creds").await;
    assert_eq!(ramp["state"], "aborted");
    assert!(!ramp.to_string().contains("hunter2"), "{ramp}");
    let (_, audit) = h
        .call("GET", "/api/v1/audit?environment=default&flag=creds", None)
        .await;
    assert!(!audit.to_string().contains("hunter2"), "{audit}");
}

// Prometheus analysis guards (issue 18), against a fake of Prometheus's instant query API.

use flagd_server::testing::FakePrometheus;

/// A Prometheus guard of `prometheus` with a per-variant error-rate query, plus `extra` fields.
trait GuardOf {
    fn guard(&self, extra: Value) -> Value;
    fn taken(&self) -> usize;
}

impl GuardOf for FakePrometheus {
    fn guard(&self, extra: Value) -> Value {
        let mut guard = json!({
            "kind": "prometheus",
            "address": self.address,
            "query": "sum(rate(http_errors_total{flag=\"{{flag}}\",variant=\"{{variant}}\"}[1m]))",
            "success": "result < 0.02",
        });
        for (key, value) in extra.as_object().unwrap() {
            guard[key] = value.clone();
        }
        guard
    }

    fn taken(&self) -> usize {
        self.queries().len()
    }
}

fn measurements(ramp: &Value, guard: usize) -> Vec<(u64, String, Value)> {
    ramp["analysis"][guard]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["step"].as_u64().unwrap(),
                m["verdict"].as_str().unwrap().to_owned(),
                m["values"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_analysis_guard_measures_before_each_step_and_lets_healthy_steps_through() {
    let prometheus = FakePrometheus::start().await.unwrap();
    prometheus.answer(&["0.01"]);
    let h = Harness::new();
    h.create_flag("checkout").await;
    let guard = prometheus.guard(json!({"interval": "1m", "count": 3}));
    let (status, started) = h
        .start(
            "checkout",
            json!({"steps": [10, 50, 100], "interval": "10m", "guards": [guard]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(prometheus.taken(), 1, "one measurement before the start");
    assert_eq!(
        prometheus.queries()[0],
        r#"sum(rate(http_errors_total{flag="checkout",variant="on"}[1m]))"#,
        "placeholders filled with the flag and the rolled-out variant"
    );
    // The three measurements are the last three minutes before the step (due at 600 s).
    assert_eq!(started["analysis"][0]["run"]["nextAt"], json!(T0 + 480));
    assert_eq!(h.tick_at(479).await, 0, "nothing due yet");
    assert_eq!(prometheus.taken(), 1);
    h.tick_at(480).await;
    h.tick_at(540).await;
    assert_eq!(
        h.percentage("checkout").await,
        10.0,
        "the step is not due yet"
    );
    h.tick_at(600).await;
    assert_eq!(prometheus.taken(), 4);
    assert_eq!(
        h.percentage("checkout").await,
        50.0,
        "analysed and due: applied"
    );
    let ramp = h.ramp("checkout").await;
    assert_eq!(
        measurements(&ramp, 0),
        vec![
            (0, "success".to_owned(), json!([0.01])),
            (1, "success".to_owned(), json!([0.01])),
            (1, "success".to_owned(), json!([0.01])),
            (1, "success".to_owned(), json!([0.01])),
        ]
    );
    // The next step's analysis is scheduled from the step just applied.
    assert_eq!(ramp["analysis"][0]["run"]["step"], 2);
    assert_eq!(ramp["analysis"][0]["run"]["nextAt"], json!(T0 + 1080));
    for at in [1080, 1140, 1200] {
        h.tick_at(at).await;
    }
    assert_eq!(h.percentage("checkout").await, 100.0);
    assert_eq!(h.ramp("checkout").await["state"], "completed");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("flagd_ramp_analysis_total{result=\"success\"} 6"),
        "the preflight is not counted, the six scheduled are: {metrics}"
    );
}

#[tokio::test]
async fn failures_beyond_the_limit_abort_restore_and_name_the_query_and_values() {
    let prometheus = FakePrometheus::start().await.unwrap();
    prometheus.answer(&["0.001"]);
    let h = Harness::new();
    h.create_flag("f").await;
    let guard = prometheus.guard(json!({"interval": "30s", "count": 3, "failureLimit": 1}));
    h.start(
        "f",
        json!({"steps": [5, 25, 100], "interval": "2m", "guard": guard}),
    )
    .await;
    // Due at 120 s: measurements at 60, 90, 120.
    prometheus.answer(&["0.05"]);
    h.tick_at(60).await;
    assert_eq!(
        h.ramp("f").await["state"],
        "active",
        "one failure is within the limit"
    );
    prometheus.answer(&["0.01", "0.07"]);
    h.tick_at(90).await;
    assert_eq!(
        h.percentage("f").await,
        0.0,
        "restored to the rollout before the ramp"
    );
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["state"], "aborted");
    let reason = ramp["abortReason"].as_str().unwrap();
    for part in [
        "analysis[0] failed 2 of the 2 measurement(s) taken so far (count 3)",
        "failureLimit 1",
        r#"http_errors_total{flag="f",variant="on"}"#,
        "0.05; 0.07, 0.01",
        "result < 0.02",
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    let (_, audit) = h
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=f&limit=1",
            None,
        )
        .await;
    let message = audit["changes"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("ramp aborted: analysis[0]") && message.contains("0.05; 0.07, 0.01"),
        "{message}"
    );
    assert_eq!(audit["changes"][0]["actor"], "ramp");
    // The metrics count every measurement and keep the failing value.
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("flagd_ramp_analysis_total{result=\"success\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flagd_ramp_analysis_total{result=\"failure\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "flagd_ramp_analysis_value{environment=\"default\",flag=\"f\",guard=\"0\"} 0.07"
        ),
        "{metrics}"
    );
    // Nothing measures an aborted ramp.
    let taken = prometheus.taken();
    h.tick_at(120).await;
    assert_eq!(prometheus.taken(), taken);
}

#[tokio::test]
async fn inconclusive_measurements_follow_the_guard_policy() {
    let prometheus = FakePrometheus::start().await.unwrap();
    let h = Harness::new();
    for (key, policy) in [("p", "pause"), ("a", "abort"), ("c", "continue")] {
        h.create_flag(key).await;
        let guard = prometheus.guard(json!({"interval": "1m", "count": 1, "inconclusive": policy}));
        // No samples before the start is fine (a variant at 0 % has none yet).
        let (status, body) = h
            .start(
                key,
                json!({"steps": [10, 20], "interval": "5m", "guard": guard}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    prometheus.refuse("parse error: unexpected end of input");
    h.tick_at(300).await;
    let paused = h.ramp("p").await;
    assert_eq!(paused["state"], "paused");
    assert_eq!(h.percentage("p").await, 10.0, "paused where it was");
    let event = paused["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(event["event"], "paused");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("parse error: unexpected end of input"),
        "{event}"
    );
    assert_eq!(h.ramp("a").await["state"], "aborted");
    assert_eq!(h.percentage("a").await, 0.0);
    assert_eq!(h.ramp("c").await["state"], "completed");
    assert_eq!(h.percentage("c").await, 20.0);

    // Resuming starts the analysis again, from now.
    prometheus.answer(&["0"]);
    h.at(1000);
    let (status, resumed) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/p/ramp/resume",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["analysis"][0]["run"]["nextAt"], json!(T0 + 1300));
    h.tick_at(1300).await;
    assert_eq!(h.percentage("p").await, 20.0);
}

#[tokio::test]
async fn a_step_waits_for_an_analysis_longer_than_the_step_and_never_skips() {
    let prometheus = FakePrometheus::start().await.unwrap();
    prometheus.answer(&["0"]);
    let h = Harness::new();
    h.create_flag("f").await;
    let guard = prometheus.guard(json!({"interval": "1m", "count": 2}));
    h.start(
        "f",
        json!({"steps": [1, 2, 3], "interval": "30s", "guards": [guard]}),
    )
    .await;
    // Due at 30 s, but the measurements are at 60 and 120 s.
    h.tick_at(30).await;
    h.tick_at(60).await;
    assert_eq!(h.percentage("f").await, 1.0, "waiting for the analysis");
    // Long after: the step applies, only one step (the next one's analysis has not run).
    h.tick_at(500).await;
    assert_eq!(h.percentage("f").await, 2.0);
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["currentStep"], 1);
    assert_eq!(ramp["analysis"][0]["run"]["nextAt"], json!(T0 + 560));
}

#[tokio::test]
async fn a_guard_failing_or_unmeasurable_now_refuses_the_start_and_changes_nothing() {
    let prometheus = FakePrometheus::start().await.unwrap();
    let h = Harness::new();
    h.create_flag("f").await;
    let start = |guard: Value| {
        h.start(
            "f",
            json!({"steps": [10, 20], "interval": "5m", "guard": guard}),
        )
    };
    prometheus.answer(&["0.5"]);
    let (status, body) = start(prometheus.guard(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let text = body.to_string();
    assert!(text.contains("fails now") && text.contains("0.5"), "{text}");
    assert_eq!(body["error"]["path"], "guard.success");
    prometheus.refuse("unknown function rat");
    let (status, body) = start(prometheus.guard(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("unknown function rat"), "{body}");
    let (status, body) = start(json!({"kind": "prometheus", "address": "http://127.0.0.1:9", "query": "up", "success": "result == 1"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("127.0.0.1:9"), "{body}");
    assert_eq!(h.percentage("f").await, 0.0);
    assert_eq!(
        h.call("GET", "/api/v1/environments/default/ramps", None)
            .await
            .1["ramps"],
        json!([])
    );
}

#[tokio::test]
async fn bad_analysis_guards_are_refused_naming_the_field() {
    let prometheus = FakePrometheus::start().await.unwrap();
    let h = Harness::new();
    h.create_flag("f").await;
    let guard = |extra: Value| prometheus.guard(extra);
    let cases = [
        (
            json!({"guard": guard(json!({"count": 0}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.count",
        ),
        (
            json!({"guard": guard(json!({"count": 3, "failureLimit": 3}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.failureLimit",
        ),
        (
            json!({"guards": [{"url": "http://127.0.0.1:9/"}, guard(json!({"success": "result <"}))]}),
            StatusCode::BAD_REQUEST,
            "guards[1].success",
        ),
        (
            json!({"guard": guard(json!({"success": "result < 0.02 &&"}))}),
            StatusCode::BAD_REQUEST,
            "column",
        ),
        (
            json!({"guard": guard(json!({"interval": "25h"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.interval",
        ),
        (
            json!({"guard": guard(json!({"timeout": "2m"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "guard.timeout",
        ),
        (
            json!({"guard": guard(json!({"address": "ftp://prometheus"}))}),
            StatusCode::BAD_REQUEST,
            "guard.address",
        ),
        (
            json!({"guard": guard(json!({"query": " "}))}),
            StatusCode::BAD_REQUEST,
            "guard.query",
        ),
        (
            json!({"guard": guard(json!({"inconclusive": "ignore"}))}),
            StatusCode::BAD_REQUEST,
            "unknown variant",
        ),
        (
            json!({"guard": guard(json!({"thresholds": 1}))}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"guard": {"kind": "datadog"}}),
            StatusCode::BAD_REQUEST,
            "guard.kind",
        ),
        (
            json!({"guards": [{"url": "http://127.0.0.1:9/a"}, {"url": "http://127.0.0.1:9/b"}]}),
            StatusCode::BAD_REQUEST,
            "one url guard",
        ),
        (
            json!({"guard": {"url": "http://127.0.0.1:9/"}, "guards": []}),
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (
            json!({"guards": vec![guard(json!({})); 11]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 10",
        ),
        // A wrong type is named by its field.
        (
            json!({"guard": guard(json!({"count": 2.5}))}),
            StatusCode::BAD_REQUEST,
            "\"path\":\"guard.count\"",
        ),
        (
            json!({"guards": [guard(json!({"address": 5}))]}),
            StatusCode::BAD_REQUEST,
            "\"path\":\"guards[0].address\"",
        ),
        (
            json!({"guard": {"address": "http://p:9090", "query": "up", "success": "result > 0"}}),
            StatusCode::BAD_REQUEST,
            "add \\\"kind\\\": \\\"prometheus\\\"",
        ),
        (
            json!({"guard": guard(json!({"interval": "500ms"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "from 1s to 24h",
        ),
        (
            json!({"guard": guard(json!({"address": "http://p:9090/?x=1"}))}),
            StatusCode::BAD_REQUEST,
            "no query or fragment",
        ),
        (
            json!({"guard": guard(json!({"query": "up{f=\"{{ flag }}\"}"}))}),
            StatusCode::BAD_REQUEST,
            "{{ flag }}",
        ),
        (
            json!({"guards": ["prometheus"]}),
            StatusCode::BAD_REQUEST,
            "must be an object",
        ),
    ];
    for (mut body, status, fragment) in cases {
        body["steps"] = json!([10, 20]);
        body["interval"] = json!("5m");
        let (actual, answer) = h.start("f", body.clone()).await;
        assert_eq!(actual, status, "{body}: {answer}");
        assert!(
            answer.to_string().contains(fragment),
            "{fragment:?}: {answer}"
        );
    }
    assert_eq!(prometheus.taken(), 0, "nothing was measured");
    assert_eq!(h.percentage("f").await, 0.0);
}

#[tokio::test]
async fn prometheus_errors_are_cut_short_and_never_show_credentials() {
    let prometheus = FakePrometheus::start().await.unwrap();
    let h = Harness::new();
    h.create_flag("f").await;
    let with_password = prometheus
        .address
        .replace("http://", "http://carol:topsecretpw@");
    let guard =
        prometheus.guard(json!({"address": with_password, "count": 1, "inconclusive": "abort"}));
    prometheus.answer(&["0"]);
    let (status, started) = h
        .start(
            "f",
            json!({"steps": [10, 20], "interval": "5m", "guard": guard}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert!(!started.to_string().contains("topsecretpw"), "{started}");
    // Refused with a huge message: the stored error is an excerpt.
    prometheus.refuse(&"E".repeat(100_000));
    h.tick_at(300).await;
    let ramp = h.ramp("f").await;
    assert_eq!(ramp["state"], "aborted", "{ramp}");
    let error = ramp["analysis"][0]["measurements"][1]["error"]
        .as_str()
        .unwrap();
    assert!(error.len() < 1_000, "{} bytes", error.len());
    // Unreachable: the error quotes the address, without the password, everywhere.
    let h = Harness::new();
    h.create_flag("g").await;
    let guard = json!({"kind": "prometheus", "address": "http://carol:topsecretpw@127.0.0.1:9", "query": "up", "success": "result == 1"});
    let (status, refused) = h
        .start(
            "g",
            json!({"steps": [10, 20], "interval": "5m", "guard": guard}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"]["path"], "guard.address");
    assert!(!refused.to_string().contains("topsecretpw"), "{refused}");
    let (_, measured) = h
        .call(
            "POST",
            "/api/v1/environments/default/flags/g/analysis",
            Some(json!({"prometheus": "http://carol:topsecretpw@127.0.0.1:9", "query": "up{v=\"{{variant}}\"}", "success": "result == 1"})),
        )
        .await;
    assert_eq!(measured["verdict"], "inconclusive", "{measured}");
    assert!(!measured.to_string().contains("topsecretpw"), "{measured}");
}

/// (Uses this file's clock.) A flag deleted and created again starts without its
/// predecessor's evaluations, in the listing and the usage endpoint.
#[tokio::test]
async fn a_flag_created_again_does_not_inherit_its_predecessors_usage() {
    let h = Harness::new();
    h.create_flag("f").await;
    let report = json!({"counts": [{"flag": "f", "variant": "on", "count": 5}]});
    let (status, _) = h
        .call("POST", "/api/v1/usage?environment=default", Some(report))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.at(600);
    let (status, _) = h
        .call("DELETE", "/api/v1/environments/default/flags/f", None)
        .await;
    assert!(status.is_success());
    h.at(4_000);
    h.create_flag("f").await;
    let (_, list) = h
        .call("GET", "/api/v1/environments/default/flags", None)
        .await;
    assert_eq!(list["flags"][0]["lastEvaluated"], Value::Null, "{list}");
    let (_, usage) = h
        .call(
            "GET",
            "/api/v1/environments/default/flags/f/usage?since=0",
            None,
        )
        .await;
    assert_eq!(usage["total"], 0, "{usage}");
}
