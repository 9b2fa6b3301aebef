//! The dashboard in a real browser: Debian's `chromium` driven over WebDriver (`chromedriver`,
//! package `chromium-driver`) against the real server on port 0, as a product manager would use
//! it, with `flagctl` and OFREP as the other side of every change.
//!
//! Without `chromedriver` the tests print one `skipped:` line, unless `FLAGD_REQUIRE_BROWSER=1`
//! (set by `.ci/run`) makes them fail. A failing step saves a screenshot under
//! `$CARGO_TARGET_TMPDIR/dashboard/`; `FLAGD_UPDATE_SCREENSHOTS=1` also refreshes the README's
//! `docs/images/dashboard.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tests::{ServerProcess, flagctl, http, sdk_token};

const ADMIN: &str = "flg_admin_dashboard_end_to_end_token";
const WAIT: Duration = Duration::from_secs(15);

type Step<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+).into());
        }
    };
}

/// A headless Chromium behind its chromedriver; both end when dropped.
struct Browser {
    client: Client,
    driver: Child,
    driver_url: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A browser, or `None` (after the `skipped:` line) where chromedriver is not installed.
async fn browser(test: &str) -> Option<Browser> {
    if !tests::program_available_from(
        "chromedriver",
        "chromium chromium-driver",
        "FLAGD_REQUIRE_BROWSER",
        test,
    ) {
        return None;
    }
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    while http()
        .get(format!("{driver_url}/status"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                        "--disable-gpu", "--window-size=1280,800"]}),
    );
    capabilities.insert("goog:loggingPrefs".to_owned(), json!({"browser": "ALL"}));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .unwrap();
    Some(Browser {
        client,
        driver,
        driver_url,
    })
}

impl Browser {
    /// Waits for an element by CSS selector.
    async fn find(&self, css: &str) -> Step<fantoccini::elements::Element> {
        Ok(self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| format!("no element {css:?} within {WAIT:?}: {e}"))?)
    }

    /// Clicks `css`, finding it again if the page re-rendered it meanwhile.
    async fn click(&self, css: &str) -> Step {
        let deadline = Instant::now() + WAIT;
        loop {
            let result: Step = async { Ok(self.find(css).await?.click().await.map(drop)?) }.await;
            match result {
                Err(error) if error.to_string().contains("stale") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Selects option `value` of the `<select>` `css`, as [`click`](Self::click) does.
    async fn select(&self, css: &str, value: &str) -> Step {
        let deadline = Instant::now() + WAIT;
        loop {
            let result: Step = async {
                Ok(self
                    .find(css)
                    .await?
                    .select_by_value(value)
                    .await
                    .map(drop)?)
            }
            .await;
            match result {
                Err(error) if error.to_string().contains("stale") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn text(&self, css: &str) -> Step<String> {
        Ok(self.find(css).await?.text().await?)
    }

    /// Waits until the text of `css` satisfies `check`.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> Step<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if check(&text) {
                return Ok(text);
            }
            ensure!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what} in {css:?}; it reads {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a script in the page; its `return` value.
    async fn script(&self, source: &str, args: Vec<Value>) -> Step<Value> {
        Ok(self.client.execute(source, args).await?)
    }

    /// A `fetch` made by the page itself (its cookie, no CSRF token unless the script adds it):
    /// the status.
    async fn fetch(&self, method: &str, path: &str, body: Option<Value>) -> Step<i64> {
        let status = self
            .client
            .execute_async(
                "const [method, path, body, done] = arguments;
                 fetch(path, {method, credentials: 'same-origin',
                              headers: body ? {'Content-Type': 'application/json'} : {},
                              body: body ? JSON.stringify(body) : undefined})
                   .then(r => done(r.status), e => done(String(e)));",
                vec![json!(method), json!(path), body.unwrap_or(Value::Null)],
            )
            .await?;
        status
            .as_i64()
            .ok_or_else(|| format!("fetch {method} {path} failed: {status}").into())
    }

    /// The browser console's errors, leaving out the network lines of HTTP answers the test
    /// provoked on purpose (a 412, a 403, a 401).
    async fn console_errors(&self) -> Step<Vec<String>> {
        let session = self.client.session_id().await?.unwrap_or_default();
        let logs: Value = http()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&json!({"type": "browser"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(logs["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| !message.contains("Failed to load resource"))
            .map(str::to_owned)
            .collect())
    }

    async fn screenshot(&self, path: &Path) {
        if let Ok(png) = self.client.screenshot().await {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(path, png);
        }
    }
}

fn output_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// Runs `steps`; on failure saves a screenshot and fails the test with the step's message.
/// Ends the WebDriver session too, so chromedriver closes the browser (killing chromedriver
/// alone would leave Chromium running).
async fn run(browser: &Browser, test: &str, steps: impl Future<Output = Step>) {
    let result = steps.await;
    let shot = output_dir().join(format!("{test}.png"));
    if result.is_err() {
        browser.screenshot(&shot).await;
    }
    let _ = browser.client.clone().close().await;
    if let Err(error) = result {
        panic!("{test}: {error} (screenshot: {})", shot.display());
    }
}

/// OFREP for one targeting key: (value, reason).
async fn ofrep(base: &str, sdk: &str, key: &str, targeting_key: &str) -> Step<(Value, String)> {
    let answer: Value = http()
        .post(format!("{base}/ofrep/v1/evaluate/flags/{key}"))
        .bearer_auth(sdk)
        .json(&json!({"context": {"targetingKey": targeting_key}}))
        .send()
        .await?
        .json()
        .await?;
    Ok((
        answer["value"].clone(),
        answer["reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Polls OFREP until `key` answers `value` for `user-1`.
async fn ofrep_until(base: &str, sdk: &str, key: &str, value: Value) -> Step {
    let deadline = Instant::now() + WAIT;
    loop {
        let (seen, reason) = ofrep(base, sdk, key, "user-1").await?;
        if seen == value {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "OFREP kept answering {seen} ({reason}) for {key}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(browser: &Browser, base: &str) -> Step {
    browser.client.goto(&format!("{base}/ui/")).await?;
    browser.find("#token").await?.send_keys(ADMIN).await?;
    browser.click("#sign-in").await?;
    browser
        .wait_text("h1", "the environments page", |t| t == "Environments")
        .await?;
    Ok(())
}

async fn admin_token(base: &str, name: &str) -> Step<String> {
    let created: Value = http()
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": name, "role": "admin"}))
        .send()
        .await?
        .json()
        .await?;
    Ok(created["token"]
        .as_str()
        .ok_or_else(|| format!("no token in {created}"))?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_is_created_toggled_rolled_out_and_edited_from_the_dashboard() {
    const TEST: &str = "a_flag_is_created_toggled_rolled_out_and_edited_from_the_dashboard";
    let Some(browser) = browser(TEST).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ADMIN);
    let base = server.base_url.clone();
    let (sdk, _) = sdk_token(&base, ADMIN, "web-app").await;
    run(&browser, TEST, async {
        sign_in(&browser, &base).await?;
        browser.click("a[href='#/e/default']").await?;
        browser.find("#new-key").await?.send_keys("new-checkout").await?;
        browser.click("#create").await?;
        browser
            .wait_text("h1", "the flag page", |t| t.starts_with("new-checkout"))
            .await?;
        let (_, reason) = ofrep(&base, &sdk, "new-checkout", "user-1").await?;
        ensure!(reason == "DISABLED", "a new flag is disabled, OFREP says {reason}");

        // Toggle on: OFREP serves the default variant (off = false); then default `on`.
        browser.click("#toggle").await?;
        browser
            .wait_text("#toggle", "the enabled state", |t| t.starts_with("Enabled"))
            .await?;
        ofrep_until(&base, &sdk, "new-checkout", json!(false)).await?;
        browser.select("#default-variant", "on").await?;
        ofrep_until(&base, &sdk, "new-checkout", json!(true)).await?;
        browser.select("#default-variant", "off").await?;
        ofrep_until(&base, &sdk, "new-checkout", json!(false)).await?;
        browser
            .wait_text("#rollout-note", "the page at 0 %", |t| t.contains("Now 0%"))
            .await?;

        // The slider to 25 %: a quarter of 10,000 users (± 1 %) get `true`.
        browser.find("#rollout").await?;
        browser
            .script(
                "const s = document.getElementById('rollout'); s.value = '25';
                 s.dispatchEvent(new Event('input', {bubbles: true}));",
                vec![],
            )
            .await?;
        ensure!(
            browser.find("#rollout-value").await?.prop("value").await?.as_deref() == Some("25"),
            "the number field follows the slider"
        );
        browser.click("#apply-rollout").await?;
        browser
            .wait_text("#rollout-note", "the new rollout", |t| t.contains("Now 25%"))
            .await?;
        // Our own write's live event is not reported as someone else's change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let notice = browser.text("#notice").await?;
        ensure!(!notice.contains("changed by"), "own write reported as a conflict: {notice:?}");
        let mut on = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in 0..20 {
            let (base, sdk) = (base.clone(), sdk.clone());
            tasks.spawn(async move {
                let mut on = 0;
                for i in (chunk * 500)..((chunk + 1) * 500) {
                    let (value, _) = ofrep(&base, &sdk, "new-checkout", &format!("user-{i}"))
                        .await
                        .map_err(|e| e.to_string())?;
                    if value == json!(true) {
                        on += 1;
                    }
                }
                Ok::<_, String>(on)
            });
        }
        while let Some(result) = tasks.join_next().await {
            on += result??;
        }
        ensure!(
            (2_400..=2_600).contains(&on),
            "25 % ± 1 % of 10,000 users should get true; {on} did"
        );

        // A jump of more than 50 points asks first; dismissed, nothing changes.
        browser
            .script(
                "const s = document.getElementById('rollout-value'); s.value = '90';
                 s.dispatchEvent(new Event('input', {bubbles: true}));",
                vec![],
            )
            .await?;
        browser.click("#apply-rollout").await?;
        let prompt = browser.client.get_alert_text().await?;
        ensure!(prompt.contains("25% to 90%"), "the confirmation reads {prompt:?}");
        browser.client.dismiss_alert().await?;
        let listing: Value = tests::get_json(&format!("{base}/api/v1/environments/default/flags"), ADMIN).await;
        ensure!(
            listing["flags"][0]["rolloutPercentage"].as_f64() == Some(25.0),
            "a dismissed confirmation changes nothing: {listing}"
        );

        // An emptied field is refused, not taken as 0 %.
        browser
            .script(
                "const s = document.getElementById('rollout-value'); s.value = '';
                 s.dispatchEvent(new Event('input', {bubbles: true}));",
                vec![],
            )
            .await?;
        browser.click("#apply-rollout").await?;
        browser
            .wait_text("#notice", "the refusal", |t| t.contains("percentage from 0 to 100"))
            .await?;
        let listing: Value =
            tests::get_json(&format!("{base}/api/v1/environments/default/flags"), ADMIN).await;
        ensure!(
            listing["flags"][0]["rolloutPercentage"].as_f64() == Some(25.0),
            "an empty rollout changes nothing: {listing}"
        );

        // Targeting with a mistake: the server's message, with its JSON path, and no write.
        let version = tests::get_json(&format!("{base}/api/v1/environments/default/flags/new-checkout"), ADMIN).await["version"].clone();
        browser
            .script(
                "document.getElementById('targeting').value = arguments[0];",
                vec![json!(r#"{"if": [{"in": ["@example.com", {"var": "email"}]}, "on", "no-such-variant"]}"#)],
            )
            .await?;
        browser.click("#save-targeting").await?;
        let message = browser.text("#targeting-error").await?;
        ensure!(
            message.contains("no-such-variant") && message.contains("targeting"),
            "the error names the mistake and its path: {message:?}"
        );
        let after = tests::get_json(&format!("{base}/api/v1/environments/default/flags/new-checkout"), ADMIN).await["version"].clone();
        ensure!(after == version, "a refused edit writes nothing ({version} → {after})");
        // Accepting warnings saves it, and shows them with their paths.
        browser.click("#allow-warnings").await?;
        browser.click("#save-targeting").await?;
        let saved = browser
            .wait_text("#targeting-result", "the save with warnings", |t| t.contains("Saved."))
            .await?;
        ensure!(
            saved.contains("warning at flags.new-checkout.targeting") && saved.contains("no-such-variant"),
            "the warning and its path: {saved:?}"
        );

        // A write without the CSRF token, from the page itself, is refused.
        let status = browser
            .fetch(
                "PATCH",
                "/api/v1/environments/default/flags/new-checkout",
                Some(json!({"state": "DISABLED"})),
            )
            .await?;
        ensure!(status == 403, "a write without the CSRF token answered {status}");
        let flag = tests::get_json(&format!("{base}/api/v1/environments/default/flags/new-checkout"), ADMIN).await;
        ensure!(flag["flag"]["state"] == "ENABLED", "the refused write changed nothing: {flag}");

        // Readable on a phone: nothing wider than the screen.
        browser.client.set_window_size(390, 844).await?;
        browser.client.goto(&format!("{base}/ui/#/e/default")).await?;
        browser.find("tr[data-key='new-checkout']").await?;
        let fits = browser
            .script("return document.documentElement.scrollWidth <= window.innerWidth;", vec![])
            .await?;
        ensure!(fits == json!(true), "the flag list scrolls sideways at phone width");
        browser.client.set_window_size(1280, 800).await?;

        let errors = browser.console_errors().await?;
        ensure!(errors.is_empty(), "console errors: {errors:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_ramps_live_updates_and_sign_out_in_the_dashboard() {
    const TEST: &str = "conflicts_ramps_live_updates_and_sign_out_in_the_dashboard";
    let Some(browser) = browser(TEST).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ADMIN);
    let base = server.base_url.clone();
    run(&browser, TEST, async {
        let bob = admin_token(&base, "bob").await?;
        let (code, _, stderr) = flagctl(&server, &bob, dir.path(), &["flag", "create", "checkout"]);
        ensure!(code == 0, "flagctl flag create: {stderr}");
        sign_in(&browser, &base).await?;

        // Live: the list shows a flag created with flagctl, without reloading the page.
        browser
            .client
            .goto(&format!("{base}/ui/#/e/default"))
            .await?;
        browser.find("tr[data-key='checkout']").await?;
        browser.script("window.notReloaded = true;", vec![]).await?;
        let (code, _, stderr) =
            flagctl(&server, &bob, dir.path(), &["flag", "create", "live-flag"]);
        ensure!(code == 0, "flagctl flag create: {stderr}");
        browser.find("tr[data-key='live-flag']").await?;
        let kept = browser
            .script("return window.notReloaded === true;", vec![])
            .await?;
        ensure!(
            kept == json!(true),
            "the page was reloaded to show the new flag"
        );
        if std::env::var("FLAGD_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images/dashboard.png");
            browser.screenshot(&readme).await;
        }

        // A concurrent edit: the page is being edited while bob disables the flag with flagctl.
        browser.click("a[href='#/e/default/f/checkout']").await?;
        browser
            .wait_text("h1", "the flag page", |t| t.starts_with("checkout"))
            .await?;
        browser
            .script(
                "document.getElementById('targeting').value = arguments[0];",
                vec![json!(
                    r#"{"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}"#
                )],
            )
            .await?;
        let (code, _, stderr) = flagctl(
            &server,
            &bob,
            dir.path(),
            &["flag", "default", "checkout", "on"],
        );
        ensure!(code == 0, "flagctl flag default: {stderr}");
        browser
            .wait_text("#notice", "the live notice", |t| {
                t.contains("changed by bob")
            })
            .await?;
        browser.click("#save-targeting").await?;
        let conflict = browser
            .wait_text("#conflict", "the conflict", |t| {
                t.contains("changed by bob since you opened it")
            })
            .await?;
        ensure!(
            conflict.contains("~ defaultVariant: \"off\" → \"on\""),
            "the diff shows bob's change: {conflict:?}"
        );
        let flag = tests::get_json(
            &format!("{base}/api/v1/environments/default/flags/checkout"),
            ADMIN,
        )
        .await;
        ensure!(
            flag["flag"].get("targeting").is_none(),
            "the conflicting edit was not saved: {flag}"
        );

        // A ramp: start, pause, resume, abort (from bob's 100 % back to 0 % first).
        browser.client.refresh().await?;
        browser.select("#default-variant", "off").await?;
        browser
            .wait_text("#rollout-note", "the rollout back at 0 %", |t| {
                t.contains("Now 0%")
            })
            .await?;
        browser.find("#ramp-steps").await?.clear().await?;
        browser
            .find("#ramp-steps")
            .await?
            .send_keys("10,50,100")
            .await?;
        browser.find("#ramp-interval").await?.clear().await?;
        browser
            .find("#ramp-interval")
            .await?
            .send_keys("1h")
            .await?;
        browser.click("#ramp-start").await?;
        browser
            .wait_text("#ramp-state", "an active ramp", |t| t == "active")
            .await?;
        ensure!(
            browser.text("#ramp").await?.contains("step 1 of 3: 10%"),
            "the ramp shows its step"
        );
        browser.click("#ramp-pause").await?;
        browser
            .wait_text("#ramp-state", "a paused ramp", |t| t == "paused")
            .await?;
        browser.click("#ramp-resume").await?;
        browser
            .wait_text("#ramp-state", "a resumed ramp", |t| t == "active")
            .await?;
        browser.click("#ramp-abort").await?;
        browser.client.accept_alert().await?;
        browser
            .wait_text("#ramp-state", "an aborted ramp", |t| t == "aborted")
            .await?;
        let ramp = tests::get_json(
            &format!("{base}/api/v1/environments/default/flags/checkout/ramp"),
            ADMIN,
        )
        .await;
        ensure!(ramp["state"] == "aborted", "the server agrees: {ramp}");

        // An environment deleted while its page is open sends the page back to the list.
        let created = http()
            .post(format!("{base}/api/v1/environments"))
            .bearer_auth(&bob)
            .json(&json!({"name": "gone"}))
            .send()
            .await?;
        ensure!(
            created.status() == 201,
            "environment gone: {}",
            created.status()
        );
        browser.client.goto(&format!("{base}/ui/#/e/gone")).await?;
        browser
            .wait_text("h1", "the empty environment", |t| {
                t.starts_with("Flags in gone")
            })
            .await?;
        let deleted = http()
            .delete(format!("{base}/api/v1/environments/gone"))
            .bearer_auth(&bob)
            .send()
            .await?;
        ensure!(deleted.status() == 204, "delete gone: {}", deleted.status());
        browser
            .wait_text("#notice", "the deletion notice", |t| {
                t.contains("gone was deleted")
            })
            .await?;
        browser
            .wait_text("h1", "the environment list", |t| t == "Environments")
            .await?;

        // Sign-out ends the session: the page's own requests are refused afterwards.
        browser.click("#sign-out").await?;
        browser.find("#token").await?;
        ensure!(
            !browser.find("#nav").await?.is_displayed().await?,
            "the signed-in header is hidden after sign-out"
        );
        let status = browser.fetch("GET", "/api/v1/environments", None).await?;
        ensure!(status == 401, "after sign-out the API answered {status}");

        let errors = browser.console_errors().await?;
        ensure!(errors.is_empty(), "console errors: {errors:?}");
        Ok(())
    })
    .await;
}
