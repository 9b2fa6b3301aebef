//! Metric analysis end to end: a real Prometheus (the Debian `prometheus` package) scrapes a small
//! exporter started here, whose error ratio the test sets; the real server runs a ramp guarded by
//! a Prometheus analysis guard started with `flagctl`. A healthy ramp advances; a rising error
//! ratio aborts it and restores the rollout, with the measured values in `flagctl ramp status`,
//! the audit log and `/metrics`.
//!
//! Without the `prometheus` program the test prints one `skipped:` line, unless
//! `FLAGD_REQUIRE_PROMETHEUS=1` (set by `.ci/run`) makes it fail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{ServerProcess, flagctl, get_json, http};

const ADMIN: &str = "flg_admin_analysis_end_to_end_token";

/// An exporter on port 0 serving one gauge, `checkout_error_ratio{flag, variant}`.
async fn exporter(ratio: Arc<Mutex<f64>>) -> String {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let value = *ratio.lock().unwrap();
            async move {
                format!(
                    "# TYPE checkout_error_ratio gauge\ncheckout_error_ratio{{flag=\"checkout\",variant=\"on\"}} {value}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A Prometheus process scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    async fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // Prometheus does not say which port it took for :0, so one is reserved and released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready, and the exporter scraped once.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http()
                .get(format!("{}/api/v1/query", prometheus.url))
                .query(&[("query", "checkout_error_ratio")])
                .send()
                .await;
            if let Ok(answer) = answer
                && let Ok(body) = answer.json::<Value>().await
                && body["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape the exporter within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ramp(server: &ServerProcess) -> Value {
    get_json(
        &format!(
            "{}/api/v1/environments/default/flags/checkout/ramp",
            server.base_url
        ),
        ADMIN,
    )
    .await
}

/// Polls the ramp until `done` holds (the scheduler runs in real time here).
async fn wait_for(server: &ServerProcess, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ramp = ramp(server).await;
        if done(&ramp) {
            return ramp;
        }
        assert!(Instant::now() < deadline, "{what}: {ramp:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_advances_while_prometheus_says_healthy_and_aborts_when_errors_rise() {
    if !tests::program_available(
        "prometheus",
        "FLAGD_REQUIRE_PROMETHEUS",
        "a_ramp_advances_while_prometheus_says_healthy_and_aborts_when_errors_rise",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ratio = Arc::new(Mutex::new(0.001));
    let target = exporter(ratio.clone()).await;
    let prometheus = Prometheus::start(dir.path(), &target).await;
    let server = ServerProcess::start(&dir.path().join("data"), ADMIN);
    let created = http()
        .put(format!(
            "{}/api/v1/environments/default/flags/checkout",
            server.base_url
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let query = r#"max(checkout_error_ratio{flag="{{flag}}",variant="{{variant}}"})"#;
    let (code, out, err) = flagctl(
        &server,
        ADMIN,
        dir.path(),
        &[
            "ramp",
            "start",
            "checkout",
            "--steps",
            "10,50,100",
            "--every",
            "6s",
            "--prometheus",
            &prometheus.url,
            "--query",
            query,
            "--success",
            "result < 0.02",
            "--count",
            "2",
            "--analysis-interval",
            "2s",
            "--inconclusive",
            "abort",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("analysis[0]"), "{out}");

    // Healthy: the second step is applied after its two measurements.
    let advanced = wait_for(&server, "the healthy ramp never reached 50%", |r| {
        r["currentPercentage"] == json!(50.0)
    })
    .await;
    let taken = advanced["analysis"][0]["measurements"].as_array().unwrap();
    assert_eq!(
        taken.len(),
        3,
        "the start's and two before step 2: {advanced:#}"
    );
    assert!(
        taken
            .iter()
            .all(|m| m["verdict"] == "success" && m["values"] == json!([0.001]))
    );
    assert_eq!(
        taken[1]["query"],
        r#"max(checkout_error_ratio{flag="checkout",variant="on"})"#
    );

    // Errors rise: the next analysis fails and the ramp aborts back to 0 %.
    *ratio.lock().unwrap() = 0.08;
    let aborted = wait_for(&server, "the ramp never aborted", |r| {
        r["state"] != "active"
    })
    .await;
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");
    assert_eq!(aborted["currentPercentage"], json!(0.0));
    let flags = get_json(
        &format!("{}/api/v1/environments/default/flags", server.base_url),
        ADMIN,
    )
    .await;
    assert_eq!(
        flags["flags"][0]["rolloutPercentage"],
        json!(0.0),
        "{flags}"
    );

    let (code, status, err) = flagctl(&server, ADMIN, dir.path(), &["ramp", "status", "checkout"]);
    assert_eq!(code, 0, "{err}");
    for part in ["aborted", "analysis[0]", "failure", "0.08", "result < 0.02"] {
        assert!(status.contains(part), "{part:?} in:\n{status}");
    }
    let audit = get_json(
        &format!(
            "{}/api/v1/audit?environment=default&flag=checkout&limit=1",
            server.base_url
        ),
        ADMIN,
    )
    .await;
    let message = audit["changes"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ramp aborted")
            && message.contains("0.08")
            && message.contains("checkout_error_ratio"),
        "{audit}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("flagd_ramp_analysis_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "flagd_ramp_analysis_value{environment=\"default\",flag=\"checkout\",guard=\"0\"} 0.08"
        ),
        "{metrics}"
    );
}
