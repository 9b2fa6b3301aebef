//! The admin API through the real router (`oneshot`) and, where sockets matter, on port 0.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flagd_server::api::{Access, ROUTES};
use flagd_server::domain::tokens::TokenCache;
use flagd_server::state::AppState;
use flagd_server::store::{FlagStore, Role, SqliteStore, TokenRecord};
use flagd_server::{Server, ServerOptions};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const BODY_LIMIT: usize = 64 * 1024;

/// A router over an in-memory store, with one admin and one sdk token.
struct TestApp {
    router: axum::Router,
    store: Arc<dyn FlagStore>,
    tokens: TokenCache,
    admin: String,
    sdk: String,
}

fn token(
    store: &dyn FlagStore,
    tokens: &TokenCache,
    name: &str,
    role: Role,
    environment: Option<&str>,
) -> (String, String) {
    scoped_token(store, tokens, name, role, environment, None)
}

/// A token, of an admin confined to `environments` when given.
fn scoped_token(
    store: &dyn FlagStore,
    tokens: &TokenCache,
    name: &str,
    role: Role,
    environment: Option<&str>,
    environments: Option<&[&str]>,
) -> (String, String) {
    flagd_server::testing::insert_token(store, tokens, name, role, environment, environments)
        .unwrap()
}

impl TestApp {
    fn new() -> TestApp {
        let store: Arc<dyn FlagStore> = Arc::new(SqliteStore::in_memory(1).unwrap());
        let tokens = TokenCache::default();
        let (_, admin) = token(store.as_ref(), &tokens, "alice", Role::Admin, None);
        let (_, sdk) = token(
            store.as_ref(),
            &tokens,
            "web-app",
            Role::Sdk,
            Some("default"),
        );
        let state = AppState::new(store, tokens.clone(), Arc::new(|| 1_700_000_000)).unwrap();
        let store = state.store.clone();
        TestApp {
            router: flagd_server::api::router(state, BODY_LIMIT),
            store,
            tokens,
            admin,
            sdk,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, headers, body)
    }

    fn request(
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(Self::request(
                method,
                path,
                Some(&self.admin),
                body.as_ref(),
            ))
            .await;
        (status, body)
    }

    /// Every flag of an environment, for "nothing changed" checks.
    fn snapshot(&self, env: &str) -> (i64, Vec<(String, i64)>) {
        let version = self
            .store
            .environment(env)
            .unwrap()
            .map_or(-1, |e| e.version);
        let flags = self
            .store
            .flags(env)
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.key, f.version))
            .collect();
        (version, flags)
    }
}

fn boolean_flag() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

/// A route template with its parameters filled in. The environment does not exist, so even the
/// destructive routes change nothing whoever calls them.
fn concrete(path: &str) -> String {
    path.replace("{env}", "no-such-env")
        .replace("{key}", "some-flag")
        .replace("{id}", "tok_missing")
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let doc: Value = serde_json::from_str(flagd_server::api::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routed);
}

#[tokio::test]
async fn the_router_serves_every_route_in_the_table() {
    let app = TestApp::new();
    for (method, path, _) in ROUTES {
        let body = matches!(*method, "POST" | "PUT" | "PATCH").then(|| json!({}));
        let (status, _, response) = app
            .send(TestApp::request(
                method,
                &concrete(path),
                Some(&app.admin),
                body.as_ref(),
            ))
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let unrouted = response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no such route"));
        assert!(!unrouted, "{method} {path} is not routed");
    }
    let (status, _, body) = app
        .send(TestApp::request(
            "GET",
            "/api/v1/nope",
            Some(&app.admin),
            None,
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

/// The other direction: every method and path the router serves is in `ROUTES`, so no route
/// escapes the auth matrix and the OpenAPI document.
///
/// axum has no API that lists a router's routes, but the router's `Debug` output prints its
/// path table, and that is where the paths come from. Every path in `ROUTES` must be found there
/// too, so if an axum upgrade changes that output this test fails instead of finding nothing.
/// Methods are probed: on a routed path, a method without a handler gets the 405 fallback.
#[tokio::test]
async fn every_route_the_router_serves_is_in_the_table() {
    let app = TestApp::new();
    let routed = routed_paths(&app.router);
    let listed: BTreeSet<String> = ROUTES
        .iter()
        .map(|(_, path, _)| (*path).to_owned())
        .collect();
    let not_found: Vec<_> = listed.difference(&routed).collect();
    assert!(
        not_found.is_empty(),
        "paths in ROUTES not found in the router's Debug output: {not_found:?}; \
         has its format changed? (paths found: {routed:?})"
    );
    let unlisted: Vec<_> = routed.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "the router serves paths that ROUTES does not list: {unlisted:?}"
    );

    let mut unlisted = Vec::new();
    for path in &routed {
        for method in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        ] {
            // axum answers HEAD with the GET handler; ROUTES and OpenAPI list only the GET.
            let listed = ROUTES.iter().any(|(listed_method, listed_path, _)| {
                listed_path == path
                    && (*listed_method == method || (method == "HEAD" && *listed_method == "GET"))
            });
            if listed {
                continue;
            }
            let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}));
            let (status, _, response) = app
                .send(TestApp::request(
                    method,
                    &concrete(path),
                    Some(&app.admin),
                    body.as_ref(),
                ))
                .await;
            if status != StatusCode::METHOD_NOT_ALLOWED {
                unlisted.push(format!("{method} {path}: {status} {response}"));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "the router serves methods that ROUTES does not list:\n{}",
        unlisted.join("\n")
    );
}

/// The path templates of a router's routes, read from its `Debug` output (see above).
fn routed_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    // The fallback router has paths of its own (`/` and a catch-all); only the routes count.
    let routes = debug
        .split_once("fallback_router")
        .map_or(debug.as_str(), |(routes, _)| routes);
    // Split at quotes, every second piece is a quoted string; the paths start with a slash.
    routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|text| text.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn auth_matrix() {
    let app = TestApp::new();
    let (revoked_id, revoked) = token(app.store.as_ref(), &app.tokens, "old", Role::Admin, None);
    let (status, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{revoked_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // An admin confined to another environment than the one the routes name.
    let (_, scoped) = scoped_token(
        app.store.as_ref(),
        &app.tokens,
        "staging-ci",
        Role::Admin,
        None,
        Some(&["staging"]),
    );
    // A well-formed JWT, but this server trusts no issuer.
    let id_token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL3gifQ.c2lnbmF0dXJl";

    for (method, path, access) in ROUTES {
        let path = concrete(path);
        let body = matches!(*method, "POST" | "PUT" | "PATCH").then(|| json!({}));
        let with = |header: Option<&str>| {
            let mut builder = Request::builder().method(*method).uri(&path);
            if let Some(header) = header {
                builder = builder.header("authorization", header);
            }
            match &body {
                Some(b) => builder
                    .header("content-type", "application/json")
                    .body(Body::from(b.to_string()))
                    .unwrap(),
                None => builder.body(Body::empty()).unwrap(),
            }
        };
        let cases: [(&str, Option<String>); 7] = [
            ("no token", None),
            ("malformed", Some("Token abc".to_owned())),
            ("revoked", Some(format!("Bearer {revoked}"))),
            ("untrusted ID token", Some(format!("Bearer {id_token}"))),
            ("sdk token", Some(format!("Bearer {}", app.sdk))),
            ("admin token", Some(format!("Bearer {}", app.admin))),
            ("scoped admin", Some(format!("Bearer {scoped}"))),
        ];
        let names_environment = path.contains("/environments/no-such-env");
        for (case, header) in cases {
            let (status, _, response) = app.send(with(header.as_deref())).await;
            let expected_denial = match (access, case) {
                (Access::Public, _)
                | (
                    Access::Admin
                    | Access::AdminOrWebhook
                    | Access::UnscopedAdmin
                    | Access::Authenticated,
                    "admin token",
                )
                | (Access::Environment, "sdk token")
                | (Access::Authenticated, "sdk token" | "scoped admin") => None,
                (Access::Admin | Access::AdminOrWebhook | Access::UnscopedAdmin, "sdk token") => {
                    Some(StatusCode::FORBIDDEN)
                }
                // A scoped admin is refused other environments' routes (the routes here name
                // `no-such-env`) and what needs an admin for every environment; the global
                // routes show it its own environments.
                (Access::Admin | Access::AdminOrWebhook, "scoped admin") => {
                    names_environment.then_some(StatusCode::FORBIDDEN)
                }
                (Access::UnscopedAdmin, "scoped admin") => Some(StatusCode::FORBIDDEN),
                // An admin token may read an environment, but must name it.
                (Access::Environment, "admin token" | "scoped admin") => {
                    Some(StatusCode::BAD_REQUEST)
                }
                (_, _) => Some(StatusCode::UNAUTHORIZED),
            };
            match expected_denial {
                Some(expected) => {
                    assert_eq!(status, expected, "{method} {path} with {case}: {response}");
                    assert!(
                        response["error"]["message"].is_string(),
                        "{method} {path} with {case}: JSON error body"
                    );
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} with {case} gave {status}: {response}"
                ),
            }
        }
    }
}

/// An admin confined to `staging`: every route of `production` refuses it (403) and changes
/// nothing; its own environment's routes serve it; the global routes show it only its scope.
#[tokio::test]
async fn scoped_admins_are_confined_on_every_route() {
    let app = TestApp::new();
    for name in ["staging", "production"] {
        let (status, _) = app
            .call("POST", "/api/v1/environments", Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = app
            .call(
                "PUT",
                &format!("/api/v1/environments/{name}/flags/some-flag"),
                Some(boolean_flag()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (scoped_id, scoped) = scoped_token(
        app.store.as_ref(),
        &app.tokens,
        "staging-ci",
        Role::Admin,
        None,
        Some(&["staging"]),
    );
    let as_scoped = |method: &str, path: &str, body: Option<Value>| {
        let request = TestApp::request(method, path, Some(&scoped), body.as_ref());
        let app = &app;
        async move { app.send(request).await }
    };
    let production = app.snapshot("production");
    for (method, template, access) in ROUTES {
        if !template.contains("{env}") && *access != Access::Environment {
            continue;
        }
        let body = matches!(*method, "POST" | "PUT" | "PATCH").then(boolean_flag);
        for (env, allowed) in [("production", false), ("staging", true)] {
            let mut path = template.replace("{env}", env).replace("{key}", "some-flag");
            if *access == Access::Environment {
                path.push_str(&format!("?environment={env}"));
            }
            // Percent-encoded, the environment is the same one.
            let encoded = path.replacen("/production", "/%70roduction", 1);
            for path in [&path, &encoded] {
                let (status, _, response) = as_scoped(method, path, body.clone()).await;
                if *access == Access::UnscopedAdmin {
                    // Not for a scoped admin, even in its own environment.
                    assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {response}");
                    let message = response["error"]["message"].as_str().unwrap();
                    assert!(
                        message.contains("every environment")
                            || (!allowed && message.contains("production")),
                        "{message}"
                    );
                } else if allowed {
                    assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{method} {path}: {status} {response}"
                    );
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {response}");
                    let message = response["error"]["message"].as_str().unwrap();
                    assert!(
                        message.contains("staging") && message.contains("production"),
                        "{message}"
                    );
                }
            }
        }
    }
    assert_eq!(app.snapshot("production"), production, "production changed");

    // Global routes: its environments only.
    let (_, _, listed) = as_scoped("GET", "/api/v1/environments", None).await;
    let names: Vec<&str> = listed["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["staging"]);
    let (status, _, _) =
        as_scoped("POST", "/api/v1/environments", Some(json!({"name": "qa"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, audit) = as_scoped("GET", "/api/v1/audit?limit=1000", None).await;
    let changes = audit["changes"].as_array().unwrap();
    assert!(!changes.is_empty());
    assert!(
        changes.iter().all(|c| c["environment"] == "staging"),
        "{audit}"
    );
    let (status, _, _) = as_scoped("GET", "/api/v1/audit?environment=production", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Tokens: within its scope only.
    for (body, expected) in [
        (
            json!({"name": "p", "role": "sdk", "environment": "production"}),
            StatusCode::FORBIDDEN,
        ),
        (json!({"name": "a", "role": "admin"}), StatusCode::FORBIDDEN),
        (
            json!({"name": "a", "role": "admin", "environments": ["staging", "production"]}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "s", "role": "sdk", "environment": "staging"}),
            StatusCode::CREATED,
        ),
        (
            json!({"name": "a", "role": "admin", "environments": ["staging"]}),
            StatusCode::CREATED,
        ),
    ] {
        let (status, _, response) = as_scoped("POST", "/api/v1/tokens", Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {response}");
    }
    let (_, _, tokens) = as_scoped("GET", "/api/v1/tokens", None).await;
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|t| t["environment"] == "staging" || t["environments"] == json!(["staging"]))
    );
    let all: Vec<TokenRecord> = app.store.tokens().unwrap();
    let alice = all.iter().find(|t| t.name == "alice").unwrap();
    let (status, _, _) = as_scoped("DELETE", &format!("/api/v1/tokens/{}", alice.id), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = as_scoped("GET", "/api/v1/auth/oidc", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, who) = as_scoped("GET", "/api/v1/auth/whoami", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        who,
        json!({"actor": "staging-ci", "role": "admin", "environments": ["staging"],
               "credential": {"kind": "token", "id": scoped_id, "name": "staging-ci"}})
    );
    // Writes it makes are attributed to it.
    let (status, _, _) = as_scoped(
        "PUT",
        "/api/v1/environments/staging/flags/mine",
        Some(boolean_flag()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        app.store
            .flags("staging")
            .unwrap()
            .iter()
            .find(|f| f.key == "mine")
            .unwrap()
            .updated_by,
        "staging-ci"
    );
}

#[tokio::test]
async fn admin_token_scopes_are_checked_on_creation() {
    let app = TestApp::new();
    for (body, status, path) in [
        (
            json!({"name": "a", "role": "admin", "environments": []}),
            StatusCode::BAD_REQUEST,
            "environments",
        ),
        (
            json!({"name": "a", "role": "admin", "environments": ["nope"]}),
            StatusCode::NOT_FOUND,
            "environments[0]",
        ),
        (
            json!({"name": "a", "role": "admin", "environments": ["default", "bad name"]}),
            StatusCode::BAD_REQUEST,
            "environments[1]",
        ),
        (
            json!({"name": "a", "role": "admin", "environment": "default"}),
            StatusCode::BAD_REQUEST,
            "environment",
        ),
        // Names the audit log reserves for the server's own actors, or that hide characters.
        (
            json!({"name": "oidc:127.0.0.1:repo:acme/web", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "git:1a2b3c4", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "ops\u{202E}nimda", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "a", "role": "sdk", "environment": "default", "environments": ["default"]}),
            StatusCode::BAD_REQUEST,
            "environments",
        ),
    ] {
        let (got, response) = app.call("POST", "/api/v1/tokens", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {response}");
        assert_eq!(response["error"]["path"], path, "{body}: {response}");
    }
    let (status, created) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ci", "role": "admin", "environments": ["default", "default"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["environments"], json!(["default"]));
    // Its creation is in the audit log of its environment, by its creator, never its secret.
    let (_, audit) = app
        .call("GET", "/api/v1/audit?environment=default&limit=1", None)
        .await;
    let entry = &audit["changes"][0];
    assert_eq!(entry["operation"], "token_created");
    assert_eq!(entry["actor"], "alice");
    assert_eq!(entry["before"]["name"], "ci");
    assert_eq!(entry["before"]["environments"], json!(["default"]));
    assert!(
        !entry
            .to_string()
            .contains(created["token"].as_str().unwrap())
    );
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, audit) = app
        .call("GET", "/api/v1/audit?environment=default&limit=1", None)
        .await;
    assert_eq!(audit["changes"][0]["operation"], "token_revoked");
    // Read back through the listing, and the scoped admin is no "last admin".
    let (_, listed) = app.call("GET", "/api/v1/tokens", None).await;
    let listed = listed["tokens"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t["id"] == created["id"] && t["environments"] == json!(["default"]))
    );
    let alice = listed.iter().find(|t| t["name"] == "alice").unwrap();
    let (status, response) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{}", alice["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{response}");
    // An admin token for every environment is recorded under `*`.
    let (_, _) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ops2", "role": "admin"})),
        )
        .await;
    let (_, audit) = app
        .call("GET", "/api/v1/audit?environment=*&limit=1", None)
        .await;
    assert_eq!(audit["changes"][0]["before"]["name"], "ops2");
}

/// `POST …/analysis`: one measurement against a fake Prometheus on port 0, the query filled in,
/// and bad requests refused by field.
#[tokio::test]
async fn an_analysis_measures_once_against_prometheus() {
    let app = TestApp::new();
    let (status, _) = app
        .call(
            "PUT",
            "/api/v1/environments/default/flags/new-checkout",
            Some(boolean_flag()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let fake = flagd_server::testing::FakePrometheus::start()
        .await
        .unwrap();
    fake.answer(&["0.013"]);
    let prometheus = fake.address.clone();
    let path = "/api/v1/environments/default/flags/new-checkout/analysis";
    let body = |success: &str| {
        json!({"prometheus": prometheus, "success": success, "variant": "on",
               "query": "sum(rate(errors{flag=\"{{flag}}\",env=\"{{environment}}\",variant=\"{{variant}}\"}[5m]))"})
    };
    let (status, measured) = app.call("POST", path, Some(body("result < 0.02"))).await;
    assert_eq!(status, StatusCode::OK, "{measured}");
    assert_eq!(measured["verdict"], "success");
    assert_eq!(measured["values"], json!([0.013]));
    assert_eq!(
        fake.queries()[0],
        r#"sum(rate(errors{flag="new-checkout",env="default",variant="on"}[5m]))"#
    );
    let (_, failed) = app.call("POST", path, Some(body("result < 0.01"))).await;
    assert_eq!(failed["verdict"], "failure");
    // Refusals name the field (and, for the condition, the column).
    let (status, error) = app.call("POST", path, Some(body("result = 1"))).await;
    assert_eq!(
        (status, error["error"]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("success"))
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("column 8"),
        "{error}"
    );
    // Without a variant, {{variant}} is the boolean flag's true variant; a variant the flag
    // does not have is refused at `variant`.
    let mut no_variant = body("result < 1");
    no_variant.as_object_mut().unwrap().remove("variant");
    let (status, measured) = app.call("POST", path, Some(no_variant)).await;
    assert_eq!(status, StatusCode::OK, "{measured}");
    assert!(
        measured["query"]
            .as_str()
            .unwrap()
            .contains("variant=\"on\""),
        "{measured}"
    );
    let mut unknown_variant = body("result < 1");
    unknown_variant["variant"] = json!("purple");
    let (status, error) = app.call("POST", path, Some(unknown_variant)).await;
    assert_eq!(
        (status, error["error"]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("variant")),
        "{error}"
    );
    let mut slow = body("result < 1");
    slow["timeout"] = json!("5m");
    let (status, error) = app.call("POST", path, Some(slow)).await;
    assert_eq!(error["error"]["path"], "timeout", "{status} {error}");
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/environments/default/flags/nope/analysis",
            Some(body("result < 1")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        fake.queries().len(),
        3,
        "two measured, one with the default variant; refused requests query nothing"
    );
}

#[tokio::test]
async fn a_flag_through_its_whole_life() {
    let app = TestApp::new();
    let path = "/api/v1/environments/default/flags/new-checkout";
    let mut request = TestApp::request("PUT", path, Some(&app.admin), Some(&boolean_flag()));
    request.headers_mut().insert(
        "x-change-message",
        "merge unfinished checkout".parse().unwrap(),
    );
    let (status, headers, body) = app.send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(
        (
            body["version"].as_i64(),
            body["type"].as_str(),
            body["updatedBy"].as_str()
        ),
        (Some(1), Some("boolean"), Some("alice"))
    );

    let mut replaced = boolean_flag();
    replaced["description"] = json!("the new checkout");
    replaced["message"] = json!("describe it");
    let (status, body) = app.call("PUT", path, Some(replaced)).await;
    assert_eq!(
        (status, body["version"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    assert!(
        body["flag"].get("message").is_none(),
        "the change message is not part of the flag"
    );

    let (status, body) = app
        .call(
            "POST",
            &format!("{path}/rollout"),
            Some(json!({"percentage": 12.5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["flag"]["targeting"],
        json!({"fractional": [["on", 1250], ["off", 8750]]})
    );

    let (status, body) = app
        .call("PATCH", path, Some(json!({"state": "DISABLED"})))
        .await;
    assert_eq!(
        (status, body["flag"]["state"].as_str()),
        (StatusCode::OK, Some("DISABLED")),
        "{body}"
    );
    assert_eq!(
        body["flag"]["targeting"]["fractional"][0][1], 1250,
        "a merge patch keeps what it does not mention"
    );

    let (status, body) = app
        .call("GET", "/api/v1/environments/default/flags", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flags"][0]["rolloutPercentage"], 12.5);
    assert_eq!(body["flags"][0]["state"], "DISABLED");

    let (status, _) = app.call("DELETE", path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.call("GET", path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (_, audit) = app
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=new-checkout",
            None,
        )
        .await;
    let operations: Vec<&str> = audit["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        operations,
        ["delete", "update", "update", "update", "create"]
    );
    let first = &audit["changes"][4];
    assert_eq!(
        (first["message"].as_str(), first["actor"].as_str()),
        (Some("merge unfinished checkout"), Some("alice"))
    );
    assert_eq!(audit["changes"][3]["message"], "describe it");
    assert_eq!(audit["changes"][0]["before"]["state"], "DISABLED");
    assert_eq!(audit["changes"][0]["after"], Value::Null);
}

#[tokio::test]
async fn two_writers_with_the_same_version_exactly_one_wins() {
    let app = TestApp::new();
    let path = "/api/v1/environments/default/flags/contended";
    app.call("PUT", path, Some(boolean_flag())).await;
    let write = |default: &'static str| {
        let mut body = boolean_flag();
        body["defaultVariant"] = json!(default);
        let mut request = TestApp::request("PUT", path, Some(&app.admin), Some(&body));
        request
            .headers_mut()
            .insert("if-match", "\"1\"".parse().unwrap());
        app.send(request)
    };
    let ((a, _, _), (b, _, body_b)) = tokio::join!(write("on"), write("off"));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
        "{body_b}"
    );
    let winner = if a == StatusCode::OK { "on" } else { "off" };
    let (_, stored) = app.call("GET", path, None).await;
    assert_eq!(
        (
            stored["flag"]["defaultVariant"].as_str(),
            stored["version"].as_i64()
        ),
        (Some(winner), Some(2))
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = TestApp::new();
    app.call(
        "PUT",
        "/api/v1/environments/default/flags/existing",
        Some(boolean_flag()),
    )
    .await;
    let before = app.snapshot("default");
    let flag_path = "/api/v1/environments/default/flags/f";
    // Warnings (what flagd loads) refuse a write only in strict mode.
    let strict_flag_path = "/api/v1/environments/default/flags/f?strict=true";
    let long_key_path = format!("/api/v1/environments/default/flags/{}", "k".repeat(257));
    let existing = "/api/v1/environments/default/flags/existing";
    let json = "application/json";
    let patch = "application/merge-patch+json";
    let big = "x".repeat(BODY_LIMIT + 1);
    let valid = boolean_flag().to_string();
    let flag = |value: Value| value.to_string();
    // (method, path, body, content type, status, error code, fragment of the error)
    let cases: Vec<(&str, &str, String, &str, StatusCode, &str, &str)> = vec![
        (
            "PUT",
            flag_path,
            "{\"state\": ".into(),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed JSON",
        ),
        (
            "PUT",
            flag_path,
            r#"{"state": "ENABLED", "state": "DISABLED", "variants": {"on": true}}"#.into(),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "duplicate key \\\"state\\\"",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "message": 5})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "message must be a string",
        ),
        (
            "PUT",
            flag_path,
            "[]".into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "flags.f",
        ),
        (
            "PUT",
            flag_path,
            "{}".into(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": 5, "variants": {"on": true}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "flags.f.state",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true, "x": "y"}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "variants mix types",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": "ENABLED", "variants": {}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "at least one variant",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "of"})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "flags.f.defaultVariant",
        ),
        (
            "PUT",
            strict_flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "targeting": {"nope": []}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "unknown operator",
        ),
        (
            "PUT",
            strict_flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "targeting": {"$ref": "x"}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "$ref",
        ),
        (
            "PUT",
            flag_path,
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "metadata": {"a": []}})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "flags.f.metadata.a",
        ),
        (
            "PUT",
            strict_flag_path,
            flag(
                json!({"state": "ENABLED", "variants": {"on": true}, "targeting": {"fractional": [["on", 1.5], ["off", 1]]}}),
            ),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "whole number",
        ),
        (
            "PUT",
            "/api/v1/environments/default/flags/..",
            valid.clone(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "dot segment",
        ),
        (
            "PUT",
            &long_key_path,
            valid.clone(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "at most 256 bytes",
        ),
        (
            "PUT",
            "/api/v1/environments/nowhere/flags/f",
            valid.clone(),
            json,
            StatusCode::NOT_FOUND,
            "not_found",
            "nowhere",
        ),
        (
            "PUT",
            flag_path,
            big,
            json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "limit",
        ),
        (
            "PATCH",
            existing,
            "[1]".into(),
            patch,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "merge patch",
        ),
        (
            "PATCH",
            existing,
            flag(json!({"variants": {"on": "yes"}})),
            patch,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flag",
            "variants mix types",
        ),
        (
            "PATCH",
            "/api/v1/environments/default/flags/missing",
            "{}".into(),
            json,
            StatusCode::NOT_FOUND,
            "not_found",
            "missing",
        ),
        (
            "POST",
            "/api/v1/environments/default/flags/existing/rollout",
            flag(json!({"percentage": 101})),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_percentage",
            "between 0 and 100",
        ),
        (
            "POST",
            "/api/v1/environments/default/flags/existing/rollout",
            flag(json!({"percentage": "ten"})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "percentage",
        ),
        (
            "POST",
            "/api/v1/environments",
            flag(json!({"name": "bad name"})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "environment name",
        ),
        (
            "POST",
            "/api/v1/environments",
            flag(json!({"name": "default"})),
            json,
            StatusCode::CONFLICT,
            "conflict",
            "already exists",
        ),
        (
            "POST",
            "/api/v1/tokens",
            flag(json!({"name": "evil\u{0}\nINFO forged", "role": "admin"})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "printable",
        ),
        (
            "POST",
            "/api/v1/tokens",
            flag(json!({"name": "x", "role": "root"})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "role",
        ),
        (
            "POST",
            "/api/v1/tokens",
            flag(json!({"name": "x", "role": "sdk"})),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "environment",
        ),
        (
            "POST",
            "/api/v1/tokens",
            flag(json!({"name": "x", "role": "sdk", "environment": "nowhere"})),
            json,
            StatusCode::NOT_FOUND,
            "not_found",
            "nowhere",
        ),
        (
            "GET",
            "/api/v1/audit?limit=0",
            String::new(),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            "GET",
            "/api/v1/audit?limit=abc",
            String::new(),
            json,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "query",
        ),
        (
            "DELETE",
            "/api/v1/environments/default/flags/missing",
            String::new(),
            json,
            StatusCode::NOT_FOUND,
            "not_found",
            "missing",
        ),
    ];
    for (method, path, body, content_type, status, code, fragment) in cases {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", app.admin))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let (actual, _, response) = app.send(request).await;
        let described = format!("{method} {path}");
        assert_eq!(actual, status, "{described}: {response}");
        assert_eq!(
            response["error"]["code"].as_str(),
            Some(code),
            "{described}: {response}"
        );
        let error = response["error"].to_string();
        assert!(
            error.contains(fragment),
            "{described}: {error} should mention {fragment:?}"
        );
        assert_eq!(
            app.snapshot("default"),
            before,
            "{described} changed something"
        );
    }
    // A bad If-Match is rejected before anything happens.
    let mut request = TestApp::request("PUT", existing, Some(&app.admin), Some(&boolean_flag()));
    request
        .headers_mut()
        .insert("if-match", "yesterday".parse().unwrap());
    let (status, _, body) = app.send(request).await;
    assert_eq!(
        (status, body["error"]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("If-Match"))
    );
    assert_eq!(app.snapshot("default"), before);
}

#[tokio::test]
async fn declarative_apply_reports_then_applies_in_one_version() {
    let app = TestApp::new();
    app.call(
        "PUT",
        "/api/v1/environments/default/flags/old",
        Some(boolean_flag()),
    )
    .await;
    app.call(
        "PUT",
        "/api/v1/environments/default/flags/same",
        Some(boolean_flag()),
    )
    .await;
    let mut changed = boolean_flag();
    changed["defaultVariant"] = json!("on");
    let doc = json!({
        "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}},
        "flags": {
            "same": boolean_flag(),
            "new": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                    "targeting": {"if": [{"$ref": "staff"}, "on", "off"]}},
        }
    });
    let path = "/api/v1/environments/default/document";
    let before = app.snapshot("default");
    let (status, report) = app
        .call(
            "PUT",
            &format!("{path}?dry_run=true&prune=true"),
            Some(doc.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["summary"],
        json!({"create": 1, "delete": 1, "unchanged": 1})
    );
    assert_eq!(
        (
            report["dryRun"].as_bool(),
            report["settingsChanged"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_eq!(app.snapshot("default"), before, "a dry run writes nothing");

    let (status, report) = app
        .call("PUT", &format!("{path}?prune=false"), Some(doc.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["summary"], json!({"create": 1, "unchanged": 1}));
    assert_eq!(report["kept"], json!(["old"]));
    assert_eq!(
        report["version"].as_i64(),
        Some(before.0 + 1),
        "one apply is one version"
    );

    let (status, report) = app
        .call("PUT", &format!("{path}?prune=true"), Some(doc.clone()))
        .await;
    assert_eq!(
        (status, report["summary"].clone()),
        (StatusCode::OK, json!({"delete": 1, "unchanged": 2}))
    );

    // Applying the same document again changes nothing and keeps the version.
    let version = app.snapshot("default").0;
    let (_, report) = app
        .call("PUT", &format!("{path}?prune=true"), Some(doc.clone()))
        .await;
    assert_eq!(
        (report["changed"].as_bool(), report["version"].as_i64()),
        (Some(false), Some(version))
    );

    // The export round-trips.
    let (status, exported) = app.call("GET", path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        exported["$schema"],
        "https://flagd.dev/schema/v0/flags.json"
    );
    assert_eq!(exported["flags"], doc["flags"]);
    assert_eq!(exported["$evaluators"], doc["$evaluators"]);

    // Removing an evaluator a kept flag still uses is refused whole in strict mode...
    let before = app.snapshot("default");
    let (status, report) = app
        .call(
            "PUT",
            &format!("{path}?prune=false&strict=true"),
            Some(json!({"flags": {"same": boolean_flag()}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$ref \"staff\""),
        "{report}"
    );
    assert_eq!(app.snapshot("default"), before);

    // An invalid document is refused whole, with every problem.
    let bad = json!({"flags": {"a": {"state": "ENABLED", "variants": {}}, "b": {"state": "NOPE", "variants": {"x": 1}}}});
    let (status, report) = app.call("PUT", path, Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        report["error"]["problems"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(app.snapshot("default"), before);

    // ...and accepted with a warning by default, as flagd would load it: the kept flag then
    // evaluates to PARSE_ERROR.
    let (status, report) = app
        .call(
            "PUT",
            &format!("{path}?prune=false"),
            Some(json!({"flags": {"same": boolean_flag()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["warnings"][0]["code"], "unresolved_ref", "{report}");
    assert_eq!(
        report["warnings"][0]["path"], "flags.new.targeting.if[0].$ref",
        "{report}"
    );
}

#[tokio::test]
async fn tokens_are_shown_once_and_revocation_is_immediate() {
    let app = TestApp::new();
    let (status, created) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ci", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, listed) = app.call("GET", "/api/v1/tokens", None).await;
    assert!(
        !listed.to_string().contains(&secret),
        "a listing never shows secrets"
    );
    assert!(listed.to_string().contains(&id));

    let (status, _, _) = app
        .send(TestApp::request(
            "GET",
            "/api/v1/environments",
            Some(&secret),
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = app
        .send(TestApp::request(
            "GET",
            "/api/v1/environments",
            Some(&secret),
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The last admin token cannot be revoked.
    let (_, listed) = app.call("GET", "/api/v1/tokens", None).await;
    let last_admin = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin" && t.get("revokedAt").is_none())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app
        .call("DELETE", &format!("/api/v1/tokens/{last_admin}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn environments_are_created_listed_and_deleted_safely() {
    let app = TestApp::new();
    let (status, created) = app
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "staging"})),
        )
        .await;
    assert_eq!(
        (status, created["name"].as_str()),
        (StatusCode::CREATED, Some("staging"))
    );
    app.call(
        "PUT",
        "/api/v1/environments/staging/flags/f",
        Some(boolean_flag()),
    )
    .await;
    let (status, body) = app
        .call("DELETE", "/api/v1/environments/staging", None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an environment with flags needs force: {body}"
    );
    let (status, _) = app
        .call("DELETE", "/api/v1/environments/staging?force=true", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, listed) = app.call("GET", "/api/v1/environments", None).await;
    let names: Vec<&str> = listed["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"]);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = TestApp::new();
    assert_eq!(
        app.send(TestApp::request("GET", "/healthz", None, None))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.send(TestApp::request("GET", "/readyz", None, None))
            .await
            .0,
        StatusCode::OK
    );
    app.call(
        "PUT",
        "/api/v1/environments/default/flags/m",
        Some(boolean_flag()),
    )
    .await;
    // The same flag again (an update) and a delete: three flag writes in all. A fresh server has
    // a registry of its own, so the numbers are exact.
    app.call(
        "PUT",
        "/api/v1/environments/default/flags/m",
        Some(boolean_flag()),
    )
    .await;
    app.call("DELETE", "/api/v1/environments/default/flags/m", None)
        .await;
    let (status, _, body) = app
        .send(TestApp::request("GET", "/metrics", None, None))
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_owned()
    };
    assert_eq!(
        value(
            "flagd_http_requests_total{method=\"PUT\",route=\"/api/v1/environments/{env}/flags/{key}\",status=\"201\"}"
        ),
        "1"
    );
    assert_eq!(
        value(
            "flagd_http_requests_total{method=\"PUT\",route=\"/api/v1/environments/{env}/flags/{key}\",status=\"200\"}"
        ),
        "1"
    );
    assert_eq!(
        value(
            "flagd_http_request_duration_seconds_count{route=\"/api/v1/environments/{env}/flags/{key}\"}"
        ),
        "3"
    );
    assert_eq!(
        value("flagd_flag_writes_total{environment=\"default\"}"),
        "3"
    );
    assert_eq!(value("flagd_store_errors_total"), "0");
    // Another server in the same process counts on its own.
    let other = TestApp::new();
    let (_, _, body) = other
        .send(TestApp::request("GET", "/metrics", None, None))
        .await;
    let other_text = body.as_str().unwrap();
    assert!(
        !other_text.contains("flagd_flag_writes_total{environment=\"default\"}"),
        "{other_text}"
    );
}

/// A real server on port 0 with a data directory: restart keeps data, versions and tokens.
#[tokio::test]
async fn data_versions_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        admin_token: Some("test-admin-token-0123456789".to_owned()),
        body_limit: BODY_LIMIT,
        max_connections: 64,
        shutdown_timeout: std::time::Duration::from_secs(2),
        ..ServerOptions::new(dir.path().to_owned())
    };
    let start = |options: ServerOptions| async move {
        let server = Server::open(options, flagd_server::state::system_clock())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        (format!("http://{address}"), stop, task)
    };
    let client = reqwest::Client::new();
    let admin = "Bearer test-admin-token-0123456789";

    let (base, stop, task) = start(options.clone()).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin-token"))
            .unwrap()
            .trim(),
        "test-admin-token-0123456789"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for i in 0..3 {
        let response = client
            .put(format!("{base}/api/v1/environments/default/flags/f{i}"))
            .header("authorization", admin)
            .json(&boolean_flag())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let sdk: Value = client
        .post(format!("{base}/api/v1/tokens"))
        .header("authorization", admin)
        .json(&json!({"name": "app", "role": "sdk", "environment": "default"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let (base, stop, task) = start(options).await;
    let listed: Value = client
        .get(format!("{base}/api/v1/environments/default/flags"))
        .header("authorization", admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["version"], 3);
    let keys: Vec<&str> = listed["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["f0", "f1", "f2"]);
    let tokens: Value = client
        .get(format!("{base}/api/v1/tokens"))
        .header("authorization", admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tokens.to_string().contains(sdk["id"].as_str().unwrap()));
    // The sdk token still authenticates (it is an sdk token, so an admin route says 403, not 401).
    let status = client
        .get(format!("{base}/api/v1/environments"))
        .bearer_auth(sdk["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// `--max-connections`: a held connection keeps a second one waiting until it closes.
#[tokio::test]
async fn the_connection_limit_holds_back_extra_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        body_limit: BODY_LIMIT,
        max_connections: 1,
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..ServerOptions::new(dir.path().to_owned())
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
    let mut buffer = [0u8; 256];

    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let read = first.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));

    // The first connection is still open (keep-alive), so the second is not served...
    let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        second.read(&mut buffer),
    )
    .await;
    assert!(
        waited.is_err(),
        "a second connection was served past the limit"
    );
    // ...until the first closes.
    drop(first);
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), second.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn if_match_on_a_missing_flag_says_so() {
    let app = TestApp::new();
    let mut request = TestApp::request(
        "PUT",
        "/api/v1/environments/default/flags/ghost",
        Some(&app.admin),
        Some(&boolean_flag()),
    );
    request
        .headers_mut()
        .insert("if-match", "\"3\"".parse().unwrap());
    let (status, _, body) = app.send(request).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{body}"
    );
}

/// Two admins revoking each other at the same moment: the last-admin check and the revocation are
/// one transaction, so at least one admin token always survives (it used to be zero in 13 of 20
/// trials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_revoking_each_other_never_lock_everyone_out() {
    for trial in 0..50 {
        let app = Arc::new(TestApp::new());
        let (status, second) = app
            .call(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": "bob", "role": "admin"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (bob_id, bob) = (
            second["id"].as_str().unwrap().to_owned(),
            second["token"].as_str().unwrap().to_owned(),
        );
        let alice_id = app
            .store
            .tokens()
            .unwrap()
            .into_iter()
            .find(|t| t.name == "alice")
            .unwrap()
            .id;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let revoke = |by: String, target: String| {
            let (app, barrier) = (app.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = TestApp::request(
                    "DELETE",
                    &format!("/api/v1/tokens/{target}"),
                    Some(&by),
                    None,
                );
                barrier.wait().await;
                app.send(request).await.0
            })
        };
        let alice_revokes_bob = revoke(app.admin.clone(), bob_id);
        let bob_revokes_alice = revoke(bob, alice_id);
        let statuses = [
            alice_revokes_bob.await.unwrap(),
            bob_revokes_alice.await.unwrap(),
        ];
        let active = app
            .store
            .tokens()
            .unwrap()
            .into_iter()
            .filter(|t| t.role == Role::Admin && t.revoked_at.is_none())
            .count();
        assert_eq!(active, 1, "trial {trial}: {statuses:?}");
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::NO_CONTENT)
                .count(),
            1,
            "trial {trial}: exactly one revocation wins: {statuses:?}"
        );
    }
}

/// A new data directory is private: 0700, and the database (with its WAL) 0600.
#[cfg(unix)]
#[tokio::test]
async fn a_new_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let options = ServerOptions {
        body_limit: 1 << 20,
        max_connections: 16,
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..ServerOptions::new(data.clone())
    };
    let server = Server::open(options, flagd_server::state::system_clock())
        .await
        .unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("flags.db")), 0o600);
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    // The WAL, once written, has the database's mode.
    let store = server.state().store.clone();
    tokio::task::spawn_blocking(move || store.ping().unwrap())
        .await
        .unwrap();
    for suffix in ["-wal", "-shm"] {
        let file = data.join(format!("flags.db{suffix}"));
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{suffix}");
        }
    }
}

/// Every route with a body, given an oversized body, a wrong content type or malformed JSON,
/// answers a 4xx in our JSON error shape (the OFREP and ramp-control routes used to answer 413
/// as plain text).
#[tokio::test]
async fn every_error_has_the_json_shape() {
    let app = TestApp::new();
    let big = format!("{{\"x\": \"{}\"}}", "y".repeat(BODY_LIMIT + 1));
    let cases: [(&str, String); 3] = [
        ("application/json", big),
        ("text/plain", "{}".to_owned()),
        ("application/json", "{\"state\": ".to_owned()),
    ];
    for (method, path, _) in ROUTES {
        if !matches!(*method, "POST" | "PUT" | "PATCH") {
            continue;
        }
        for (content_type, body) in &cases {
            let request = Request::builder()
                .method(*method)
                .uri(concrete(path))
                .header("authorization", format!("Bearer {}", app.admin))
                .header("content-type", *content_type)
                .body(Body::from(body.clone()))
                .unwrap();
            let response = app.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let json_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let described = format!("{method} {path} ({content_type}, {} bytes)", body.len());
            if status.is_success() {
                // Some routes take any body (the ramp controls ignore a wrong content type).
                continue;
            }
            assert!(status.is_client_error(), "{described}: {status}");
            assert!(json_type, "{described}: {status} is not JSON");
            assert!(
                parsed["error"]["code"].is_string() && parsed["error"]["message"].is_string(),
                "{described}: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

/// A change message is never dropped: UTF-8 sent percent-encoded is decoded and recorded; a
/// header that is not visible ASCII is refused.
#[tokio::test]
async fn change_messages_are_decoded_or_refused_never_dropped() {
    let app = TestApp::new();
    let mut request = TestApp::request(
        "PUT",
        "/api/v1/environments/default/flags/f",
        Some(&app.admin),
        Some(&boolean_flag()),
    );
    request
        .headers_mut()
        .insert("x-change-message", "caf%C3%A9 au lait".parse().unwrap());
    let (status, _, _) = app.send(request).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, audit) = app
        .call(
            "GET",
            "/api/v1/audit?environment=default&flag=f&limit=1",
            None,
        )
        .await;
    assert_eq!(audit["changes"][0]["message"], "café au lait");
    let mut request = TestApp::request(
        "PUT",
        "/api/v1/environments/default/flags/g",
        Some(&app.admin),
        Some(&boolean_flag()),
    );
    request.headers_mut().insert(
        "x-change-message",
        axum::http::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
    );
    let (status, _, body) = app.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["path"], "X-Change-Message");
    let (status, _) = app
        .call("GET", "/api/v1/environments/default/flags/g", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");
}

/// A stored row that does not decode never turns a listing into a 500: an audit record shows a
/// marker, a flag row is left out (and logged), the rest stays readable.
#[tokio::test]
async fn an_undecodable_row_never_breaks_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "undecodable-admin-token-0123456789";
    let options = ServerOptions {
        admin_token: Some(admin.to_owned()),
        body_limit: 1 << 20,
        max_connections: 16,
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..ServerOptions::new(dir.path().to_owned())
    };
    let server = Server::open(options, flagd_server::state::system_clock())
        .await
        .unwrap();
    let router = server.router();
    let call = |method: &str, path: &str, body: Option<Value>| {
        let request = TestApp::request(method, path, Some(admin), body.as_ref());
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    for key in ["a", "b"] {
        let (status, _) = call(
            "PUT",
            &format!("/api/v1/environments/default/flags/{key}"),
            Some(boolean_flag()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let raw = rusqlite::Connection::open(dir.path().join("flags.db")).unwrap();
    raw.execute(
        "UPDATE changes SET after = 'not json' WHERE flag_key = 'a'",
        [],
    )
    .unwrap();
    raw.execute(
        "UPDATE flags SET definition = 'not json' WHERE key = 'a'",
        [],
    )
    .unwrap();
    let (status, audit) = call("GET", "/api/v1/audit?environment=default", None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(audit.to_string().contains("does not decode"), "{audit}");
    let (status, list) = call("GET", "/api/v1/environments/default/flags", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let keys: Vec<&str> = list["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert_eq!(keys, ["b"]);
}

/// Whatever a write accepts reads back unchanged through every read path: the flag view, the
/// export (and an apply of that export elsewhere), the audit record and OFREP.
#[test]
fn any_accepted_value_round_trips_through_every_read_path() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = TestApp::new();
    runtime.block_on(async {
        let (status, _) = app
            .call(
                "POST",
                "/api/v1/environments",
                Some(json!({"name": "copy"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    });
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let object = proptest::collection::btree_map("\\PC{1,6}", value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let config = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    proptest!(config, |(variant in object)| {
        let flag = json!({"state": "ENABLED", "variants": {"a": variant, "b": {}}, "defaultVariant": "a"});
        runtime.block_on(async {
            let (status, written) = app
                .call("PUT", "/api/v1/environments/default/flags/f", Some(flag.clone()))
                .await;
            if !status.is_success() {
                // Refused (a number that cannot be kept exactly, say): nothing to read back.
                assert!(status.is_client_error(), "{status} {written}");
                return;
            }
            assert_eq!(written["flag"]["variants"]["a"], flag["variants"]["a"]);
            let (_, view) = app.call("GET", "/api/v1/environments/default/flags/f", None).await;
            assert_eq!(view["flag"]["variants"]["a"], flag["variants"]["a"]);
            let (_, export) = app.call("GET", "/api/v1/environments/default/document", None).await;
            assert_eq!(export["flags"]["f"]["variants"]["a"], flag["variants"]["a"]);
            let (status, applied) = app
                .call("PUT", "/api/v1/environments/copy/document", Some(export.clone()))
                .await;
            assert!(status.is_success(), "the server refused its own export: {applied}");
            let (_, copy) = app.call("GET", "/api/v1/environments/copy/document", None).await;
            assert_eq!(copy["flags"]["f"], export["flags"]["f"]);
            let (status, audit) = app
                .call("GET", "/api/v1/audit?environment=default&flag=f&limit=1", None)
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(audit["changes"][0]["after"]["variants"]["a"], flag["variants"]["a"]);
            let request = TestApp::request(
                "POST",
                "/ofrep/v1/evaluate/flags/f",
                Some(&app.sdk),
                Some(&json!({"context": {}})),
            );
            let (status, _, answer) = app.send(request).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["value"], flag["variants"]["a"]);
        });
    });
}

/// The attack scenarios of issue 12, against a cap of 5 connections and 1 s timeouts: idle
/// sockets and a slowloris cannot keep `/healthz` from answering within 1 s; a header trickle,
/// an idle keep-alive connection and a body shorter than its Content-Length are all closed.
#[tokio::test]
async fn idle_and_slow_sockets_cannot_starve_the_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let admin = "timeouts-admin-token-0123456789";
    let options = ServerOptions {
        admin_token: Some(admin.to_owned()),
        body_limit: BODY_LIMIT,
        max_connections: 5,
        shutdown_timeout: std::time::Duration::from_secs(1),
        header_timeout: std::time::Duration::from_secs(1),
        request_timeout: std::time::Duration::from_secs(1),
        ..ServerOptions::new(dir.path().to_owned())
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
    let healthz = || async move {
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 64];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut buffer))
                .await
                .expect("/healthz answered within 1 s")
                .unwrap();
        assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
        started.elapsed()
    };
    // Five sockets that send nothing, one that trickles a header: the cap is full of them.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for _ in 0..3 {
        let took = healthz().await;
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }
    // A body shorter than its Content-Length: 408, and the connection closes.
    let mut short = TcpStream::connect(address).await.unwrap();
    short
        .write_all(
            format!(
                "PUT /api/v1/environments/default/flags/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        short.read_to_end(&mut answer),
    )
    .await
    .expect("the short body was cut off")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The trickling header and an idle keep-alive connection are closed by the header timeout.
    let mut kept = TcpStream::connect(address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let read = kept.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    for (name, stream) in [("slowloris", &mut slow), ("keep-alive", &mut kept)] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "{name} is still open");
    }
    let metrics = healthz_metrics(address).await;
    assert!(
        metrics.contains("flagd_connections_closed_total{reason=\"evicted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flagd_connections_closed_total{reason=\"request_timeout\"}"),
        "{metrics}"
    );
    drop(idle);
    // Below the cap, a socket that never sends a byte is closed by the header timeout too
    // (hyper's own header timer only starts at the first byte).
    let mut silent = TcpStream::connect(address).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        silent.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "a silent socket is still open");
    // A request whose body is still arriving is a real client: a flood of idle sockets at the
    // cap evicts them, never it.
    let body = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                      "defaultVariant": "on", "description": "x".repeat(4000)})
    .to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut upload = TcpStream::connect(address).await.unwrap();
    upload
        .write_all(
            format!(
                "PUT /api/v1/environments/default/flags/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut flood = Vec::new();
    for _ in 0..6 {
        flood.push(TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    upload.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    upload.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    drop(flood);
    // A client that sends its request and then shuts down its write side gets its answer.
    let mut half = TcpStream::connect(address).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    half.shutdown().await.unwrap();
    let mut answer = Vec::new();
    half.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

async fn healthz_metrics(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// A request whose body never finishes is answered 408 when `--request-timeout` (30 s by
/// default) runs out, not before: the deadline is logic, so the clock is paused and advances
/// only when everything waits.
#[tokio::test(start_paused = true)]
async fn a_body_that_never_ends_gets_408_at_the_request_timeout() {
    let app = TestApp::new();
    let body = Body::from_stream(futures_util::stream::pending::<
        Result<axum::body::Bytes, std::io::Error>,
    >());
    let request = Request::builder()
        .method("PUT")
        .uri("/api/v1/environments/default/flags/slow")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let started = tokio::time::Instant::now();
    // Without a deadline the request would wait forever: fail after a minute of paused time.
    let (status, headers, body) =
        tokio::time::timeout(std::time::Duration::from_secs(60), app.send(request))
            .await
            .expect("no answer within a minute: the request timeout did not apply");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert_eq!(headers["connection"], "close");
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(30));
    // Nothing was written.
    assert!(app.store.flag("default", "slow").unwrap().is_none());
}

/// `PUT …/source` checks every field and names it; nothing is bound by a refused request.
#[tokio::test]
async fn git_sources_refuse_bad_specs_by_field() {
    let app = TestApp::new();
    let path = "/api/v1/environments/default/source";
    let good = json!({"repository": "file:///srv/flags", "path": "flags/prod.json"});
    let cases = [
        (
            json!({"repository": "file:///r", "path": "p", "token": "x"}),
            400,
            None,
            "token",
        ),
        (json!({"path": "p"}), 400, None, "repository"),
        (
            json!({"repository": "ftp://host/r", "path": "p"}),
            400,
            Some("repository"),
            "not a Git URL",
        ),
        (
            json!({"repository": "https://u:pw@host/r.git", "path": "p"}),
            400,
            Some("repository"),
            "password",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "branch": "a..b"}),
            400,
            Some("branch"),
            "branch",
        ),
        (
            json!({"repository": "file:///r", "path": "../p"}),
            400,
            Some("path"),
            "..",
        ),
        (
            json!({"repository": "file:///r", "path": "/abs"}),
            400,
            Some("path"),
            "relative",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "interval": "soon"}),
            400,
            Some("interval"),
            "interval",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "interval": "0s"}),
            422,
            Some("interval"),
            "between 1s and 24h",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "interval": "2d"}),
            422,
            Some("interval"),
            "between 1s and 24h",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "drift": "ignore"}),
            400,
            None,
            "drift",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "credentials": "no-such-secret"}),
            400,
            Some("credentials"),
            "FLAGD_SECRET_NO_SUCH_SECRET",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "webhookSecret": "../etc"}),
            400,
            Some("webhookSecret"),
            "secret",
        ),
        (
            json!({"repository": "https://ghp_token@github.com/a/b.git", "path": "p"}),
            400,
            Some("repository"),
            "user name or password",
        ),
        (
            json!({"repository": "user:pw@host:a/b.git", "path": "p"}),
            400,
            Some("repository"),
            "user name or password",
        ),
        (
            json!({"repository": "http://host/a.git", "path": "p", "credentials": "x"}),
            400,
            Some("credentials"),
            "https://",
        ),
        (
            json!({"repository": "relative/repo", "path": "p"}),
            400,
            Some("repository"),
            "absolute path",
        ),
        (
            json!({"repository": " /srv/flags", "path": "p"}),
            400,
            Some("repository"),
            "spaces",
        ),
        (
            json!({"repository": "file:///r", "path": "p\u{0}x"}),
            400,
            Some("path"),
            "control",
        ),
        (
            json!({"repository": "file:///r", "path": "p", "interval": " 30s"}),
            400,
            Some("interval"),
            "spaces",
        ),
    ];
    for branch in [
        "@",
        "a@{1}",
        ".hidden",
        "a.lock/b",
        "refs/heads/main",
        "-x",
        "a b",
    ] {
        let body = json!({"repository": "file:///r", "path": "p", "branch": branch});
        let (got, answer) = app.call("PUT", path, Some(body)).await;
        assert_eq!(got.as_u16(), 400, "branch {branch:?}: {answer}");
        assert_eq!(answer["error"]["path"], "branch", "{answer}");
    }
    for (body, status, field, mentions) in cases {
        let (got, answer) = app.call("PUT", path, Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(mentions), "{body}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["path"], field, "{body}: {answer}");
        }
    }
    // Nothing was bound, and an unknown environment or an unbound one is a 404.
    assert_eq!(app.call("GET", path, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.call("DELETE", path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call("POST", &format!("{path}/sync"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app
        .call(
            "PUT",
            "/api/v1/environments/nope/source",
            Some(good.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A good spec binds (201), reads back as written, and rebinding answers 200.
    let (status, view) = app.call("PUT", path, Some(good.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["spec"]["repository"], "file:///srv/flags");
    assert_eq!(view["spec"]["drift"], "revert");
    assert_eq!(view["spec"]["interval"], "30s");
    let (status, read) = app.call("GET", path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["spec"], view["spec"]);
    assert_eq!(app.call("PUT", path, Some(good)).await.0, StatusCode::OK);
    // The binding is audited, never with a secret's value.
    let (_, audit) = app.call("GET", "/api/v1/audit?limit=1", None).await;
    assert_eq!(audit["changes"][0]["operation"], "source_bound");
    assert_eq!(
        app.call("DELETE", path, None).await.0,
        StatusCode::NO_CONTENT
    );
}

/// Evaluation telemetry: OFREP evaluations are counted by the server, SDK reports over HTTP are
/// added, and both read back through the usage endpoint, the listing and `/metrics`.
#[tokio::test]
async fn evaluations_are_counted_and_read_back_everywhere() {
    let app = TestApp::new();
    for key in ["used", "unused"] {
        let path = format!("/api/v1/environments/default/flags/{key}");
        assert_eq!(
            app.call("PUT", &path, Some(boolean_flag())).await.0,
            StatusCode::CREATED
        );
    }
    let context = json!({"context": {"targetingKey": "user-1"}});
    for _ in 0..3 {
        let request = TestApp::request(
            "POST",
            "/ofrep/v1/evaluate/flags/used",
            Some(&app.sdk),
            Some(&context),
        );
        assert_eq!(app.send(request).await.0, StatusCode::OK);
    }
    // Not a flag of the environment: not counted.
    let request = TestApp::request(
        "POST",
        "/ofrep/v1/evaluate/flags/nope",
        Some(&app.sdk),
        Some(&context),
    );
    assert_eq!(app.send(request).await.0, StatusCode::NOT_FOUND);
    let report = json!({"counts": [
        {"flag": "used", "variant": "on", "reason": "TARGETING_MATCH", "count": 5},
        {"flag": "nope", "variant": "on", "count": 7}
    ]});
    let request = TestApp::request("POST", "/api/v1/usage", Some(&app.sdk), Some(&report));
    let (status, _, answer) = app.send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer, json!({"counted": 1, "ignored": 1}));
    let (status, usage) = app
        .call(
            "GET",
            "/api/v1/environments/default/flags/used/usage?since=1d",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["total"], 8);
    let default_variant = boolean_flag()["defaultVariant"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(usage["variants"][&default_variant], 3, "{usage}");
    assert_eq!(usage["variants"]["on"], 5, "{usage}");
    assert!(usage["lastEvaluated"].is_i64());
    let (_, list) = app
        .call("GET", "/api/v1/environments/default/flags", None)
        .await;
    let flag = |key: &str| {
        list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(flag("used")["evaluations24h"], 8);
    assert!(flag("used")["lastEvaluated"].is_i64());
    assert_eq!(flag("unused")["lastEvaluated"], Value::Null);
    assert_eq!(flag("unused")["evaluations24h"], 0);
    let (_, _, metrics) = app
        .send(TestApp::request("GET", "/metrics", None, None))
        .await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(
            r#"flagd_evaluations_total{environment="default",flag="used",variant="on"} 5"#
        ),
        "{metrics}"
    );
    // Bad input: a clear error and nothing counted.
    for (query, fragment) in [("since=yesterday", "since"), ("until=1", "unknown field")] {
        let (status, body) = app
            .call(
                "GET",
                &format!("/api/v1/environments/default/flags/used/usage?{query}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains(fragment), "{body}");
    }
    let request = TestApp::request(
        "POST",
        "/api/v1/usage",
        Some(&app.sdk),
        Some(&json!({"counts": [{"flag": "used", "count": -1}]})),
    );
    assert_eq!(app.send(request).await.0, StatusCode::BAD_REQUEST);
    // Variants the flag does not have are not counted (nor become metric series).
    let request = TestApp::request(
        "POST",
        "/api/v1/usage",
        Some(&app.sdk),
        Some(
            &json!({"counts": [{"flag": "used", "variant": "made-up", "count": 9}, {"flag": "used", "variant": "on", "count": 0}]}),
        ),
    );
    let (_, _, answer) = app.send(request).await;
    assert_eq!(answer, json!({"counted": 0, "ignored": 2}));
    for (since, status) in [
        ("-9223372036854775808", StatusCode::BAD_REQUEST),
        ("-1", StatusCode::BAD_REQUEST),
        ("18446744073709551615", StatusCode::BAD_REQUEST),
        ("2026-11-30T08:00:00%2B01:00", StatusCode::OK),
        ("2026-11-30t07:00:00z", StatusCode::OK),
        ("106751991167301d", StatusCode::OK),
        ("0", StatusCode::OK),
    ] {
        let (actual, body) = app
            .call(
                "GET",
                &format!("/api/v1/environments/default/flags/used/usage?since={since}"),
                None,
            )
            .await;
        assert_eq!(actual, status, "{since}: {body}");
        if status == StatusCode::OK {
            assert!(body["since"].as_i64().unwrap() >= 0, "{since}: {body}");
        }
    }
    let (status, _) = app
        .call(
            "GET",
            "/api/v1/environments/default/flags/nosuch/usage",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, usage) = app
        .call("GET", "/api/v1/environments/default/flags/used/usage", None)
        .await;
    assert_eq!(usage["total"], 8);
}
