//! The dashboard's HTTP side (`/ui/`): assets, sign-in for a session cookie, CSRF on every
//! write made with it, idle expiry on a fake clock, sign-out, revocation, and the event stream.
//! The pages themselves are driven in a real browser by `tests/tests/dashboard.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use flagd_server::domain::tokens::TokenCache;
use flagd_server::state::AppState;
use flagd_server::store::{FlagStore, Role, SqliteStore};

struct Dashboard {
    router: axum::Router,
    tokens: TokenCache,
    clock: Arc<AtomicI64>,
    admin: String,
    admin_id: String,
    sdk: String,
}

fn token(store: &dyn FlagStore, tokens: &TokenCache, name: &str, role: Role) -> (String, String) {
    let environment = (role == Role::Sdk).then_some("default");
    flagd_server::testing::insert_token(store, tokens, name, role, environment, None).unwrap()
}

/// A signed-in browser: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

impl Dashboard {
    fn new() -> Dashboard {
        let store: Arc<dyn FlagStore> = Arc::new(SqliteStore::in_memory(1).unwrap());
        let tokens = TokenCache::default();
        let (admin_id, admin) = token(store.as_ref(), &tokens, "alice", Role::Admin);
        let (_, sdk) = token(store.as_ref(), &tokens, "web-app", Role::Sdk);
        let clock = Arc::new(AtomicI64::new(1_700_000_000));
        let now = clock.clone();
        let state = AppState::new(
            store,
            tokens.clone(),
            Arc::new(move || now.load(Ordering::SeqCst)),
        )
        .unwrap();
        Dashboard {
            router: flagd_server::api::router(state, 1 << 20),
            tokens,
            clock,
            admin,
            admin_id,
            sdk,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, body)
    }

    /// A request as the dashboard's page makes it: the cookie, and the CSRF token if given.
    fn request(
        method: &str,
        path: &str,
        browser: Option<&Browser>,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(browser) = browser {
            builder = builder.header(header::COOKIE, format!("flagd_session={}", browser.cookie));
        }
        if let Some(csrf) = csrf {
            builder = builder.header("x-csrf-token", csrf);
        }
        match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    /// Opens the live event stream (`GET /ui/events`) as `browser`.
    async fn events(&self, browser: &Browser) -> axum::response::Response {
        self.router
            .clone()
            .oneshot(Dashboard::request(
                "GET",
                "/ui/events",
                Some(browser),
                None,
                None,
            ))
            .await
            .unwrap()
    }

    async fn sign_in(&self) -> Browser {
        let (status, headers, body) = self
            .send(Self::request(
                "POST",
                "/ui/session",
                None,
                None,
                Some(json!({"token": self.admin})),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let set_cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        let cookie = set_cookie
            .split(';')
            .next()
            .and_then(|pair| pair.strip_prefix("flagd_session="))
            .unwrap()
            .to_owned();
        Browser {
            cookie,
            csrf: body["csrfToken"].as_str().unwrap().to_owned(),
        }
    }

    fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }
}

fn flag() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let app = Dashboard::new();
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (status, headers, body) = app
            .send(Dashboard::request("GET", path, None, None, None))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert!(
            !body.as_str().unwrap().contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let (status, headers, _) = app
        .send(Dashboard::request("GET", "/ui", None, None, None))
        .await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], "/ui/");
}

#[tokio::test]
async fn an_admin_token_signs_in_for_a_strict_http_only_cookie_and_others_are_refused() {
    let app = Dashboard::new();
    let (status, headers, body) = app
        .send(Dashboard::request(
            "POST",
            "/ui/session",
            None,
            None,
            Some(json!({"token": app.admin})),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    assert!(!cookie.contains(&app.admin) && !body.to_string().contains(&app.admin));
    assert_eq!(body["actor"], "alice");
    assert_eq!(body["idleTimeout"], 1_800);

    for (token, expected) in [
        (app.sdk.as_str(), "sdk token"),
        ("flg_admin_nope", "invalid or revoked"),
    ] {
        let (status, headers, body) = app
            .send(Dashboard::request(
                "POST",
                "/ui/session",
                None,
                None,
                Some(json!({"token": token})),
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["path"], "token");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{body}"
        );
        assert!(!headers.contains_key(header::SET_COOKIE));
    }
    // A sign-in posted from another site is refused.
    let mut request = Dashboard::request(
        "POST",
        "/ui/session",
        None,
        None,
        Some(json!({"token": app.admin})),
    );
    request
        .headers_mut()
        .insert(header::HOST, "flags.example.com".parse().unwrap());
    request
        .headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let (status, _, body) = app.send(request).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Behind a TLS proxy that rewrites Host: its X-Forwarded-Host and X-Forwarded-Proto.
    let mut request = Dashboard::request(
        "POST",
        "/ui/session",
        None,
        None,
        Some(json!({"token": app.admin})),
    );
    for (name, value) in [
        ("host", "127.0.0.1:8016"),
        ("origin", "https://flags.example.com"),
        ("x-forwarded-host", "flags.example.com"),
        ("x-forwarded-proto", "https"),
    ] {
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (status, headers, body) = app.send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("Secure"),
        "the browser used https: {cookie}"
    );
}

#[tokio::test]
async fn the_cookie_reads_the_api_but_writes_need_the_csrf_token() {
    let app = Dashboard::new();
    let browser = app.sign_in().await;
    let (status, _, body) = app
        .send(Dashboard::request(
            "GET",
            "/api/v1/environments",
            Some(&browser),
            None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["environments"][0]["name"], "default");

    let path = "/api/v1/environments/default/flags/checkout";
    for csrf in [None, Some("0123"), Some("")] {
        let (status, _, body) = app
            .send(Dashboard::request(
                "PUT",
                path,
                Some(&browser),
                csrf,
                Some(flag()),
            ))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf:?}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("CSRF"),
            "{body}"
        );
    }
    let (status, _, _) = app
        .send(Dashboard::request("GET", path, Some(&browser), None, None))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");

    let (status, _, body) = app
        .send(Dashboard::request(
            "PUT",
            path,
            Some(&browser),
            Some(&browser.csrf),
            Some(flag()),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, body) = app
        .send(Dashboard::request("GET", path, Some(&browser), None, None))
        .await;
    assert_eq!(
        body["updatedBy"], "alice",
        "audited as the token that signed in"
    );

    // A request with a bearer credential does not use the cookie at all.
    let mut request = Dashboard::request("DELETE", path, Some(&browser), None, None);
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {}", app.sdk).parse().unwrap(),
    );
    let (status, _, _) = app.send(request).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the sdk token decides, not the cookie"
    );
}

#[tokio::test]
async fn sessions_end_when_idle_on_sign_out_and_when_the_token_is_revoked() {
    let app = Dashboard::new();
    let browser = app.sign_in().await;
    let read = |browser: &Browser| {
        Dashboard::request("GET", "/api/v1/environments", Some(browser), None, None)
    };
    // Used every 29 minutes, it lives; 30 minutes idle end it.
    for _ in 0..3 {
        app.advance(29 * 60);
        assert_eq!(app.send(read(&browser)).await.0, StatusCode::OK);
    }
    app.advance(30 * 60);
    let (status, _, body) = app.send(read(&browser)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sign in again"),
        "{body}"
    );

    // Sign-out needs the CSRF token, then ends the session and expires the cookie.
    let browser = app.sign_in().await;
    let (status, _, _) = app
        .send(Dashboard::request(
            "DELETE",
            "/ui/session",
            Some(&browser),
            None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = app
        .send(Dashboard::request(
            "DELETE",
            "/ui/session",
            Some(&browser),
            Some(&browser.csrf),
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(app.send(read(&browser)).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, _) = app
        .send(Dashboard::request(
            "GET",
            "/ui/session",
            Some(&browser),
            None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "signed out");

    // Following the event stream does not keep a session alive.
    let browser = app.sign_in().await;
    for _ in 0..3 {
        app.advance(20 * 60);
        let (status, _, _) = app
            .send(Dashboard::request(
                "GET",
                "/ui/session",
                Some(&browser),
                None,
                None,
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "used, so alive");
    }
    app.advance(20 * 60);
    let events = app.events(&browser).await;
    assert_eq!(events.status(), StatusCode::OK);
    drop(events);
    app.advance(15 * 60);
    assert_eq!(app.send(read(&browser)).await.0, StatusCode::UNAUTHORIZED);

    // Revoking the token ends its sessions at once.
    let browser = app.sign_in().await;
    assert_eq!(app.send(read(&browser)).await.0, StatusCode::OK);
    app.tokens.remove(&app.admin_id);
    assert_eq!(app.send(read(&browser)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_event_stream_tells_the_page_when_an_environment_moves() {
    let app = Dashboard::new();
    let browser = app.sign_in().await;
    let (status, _, _) = app
        .send(Dashboard::request("GET", "/ui/events", None, None, None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app.events(&browser).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body().into_data_stream();
    let (status, _, _) = app
        .send(Dashboard::request(
            "PUT",
            "/api/v1/environments/default/flags/checkout",
            Some(&browser),
            Some(&browser.csrf),
            Some(flag()),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut seen = String::new();
    while !seen.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: version"), "{seen}");
    assert!(seen.contains(r#""environment":"default""#), "{seen}");
    assert!(seen.contains(r#""version":1"#), "{seen}");
}
