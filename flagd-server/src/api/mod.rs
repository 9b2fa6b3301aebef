//! The HTTP API: the router, the route table, and the small extractors handlers share.

mod audit;
pub mod auth;
mod document;
mod environments;
mod flags;
mod identity;
mod ofrep;
mod ops;
mod ramps;
mod sources;
mod stream;
mod tokens;
pub mod ui;
mod usage;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};

use crate::api::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Attribution, FlagStore};

pub use ops::OPENAPI;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, metrics, the OpenAPI document).
    Public,
    /// Admins: admin tokens and trusted ID tokens. An admin confined to environments is refused
    /// the routes of other environments (`{env}`), and sees only its own on the global ones.
    Admin,
    /// One environment's readers: its sdk tokens, or an admin token with `?environment=`.
    Environment,
    /// Admin tokens, or a webhook signing its body with the Git source's secret.
    AdminOrWebhook,
    /// Admins for every environment only (not an environment-scoped admin).
    UnscopedAdmin,
    /// Any valid credential: a token of either role, or a trusted ID token.
    Authenticated,
    /// A dashboard session cookie only (`ui.rs`).
    Session,
}

/// Every route: method, path template, access. The OpenAPI document and the auth-matrix test
/// are checked against this table, and a test checks the router serves every row.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/api/v1/environments", Access::Admin),
    ("POST", "/api/v1/environments", Access::Admin),
    ("DELETE", "/api/v1/environments/{env}", Access::Admin),
    ("GET", "/api/v1/environments/{env}/clients", Access::Admin),
    ("GET", "/api/v1/environments/{env}/flags", Access::Admin),
    (
        "GET",
        "/api/v1/environments/{env}/flags/{key}",
        Access::Admin,
    ),
    (
        "PUT",
        "/api/v1/environments/{env}/flags/{key}",
        Access::Admin,
    ),
    (
        "PATCH",
        "/api/v1/environments/{env}/flags/{key}",
        Access::Admin,
    ),
    (
        "DELETE",
        "/api/v1/environments/{env}/flags/{key}",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/rollout",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/ramp",
        Access::Admin,
    ),
    (
        "GET",
        "/api/v1/environments/{env}/flags/{key}/ramp",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/ramp/pause",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/ramp/resume",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/ramp/abort",
        Access::Admin,
    ),
    (
        "POST",
        "/api/v1/environments/{env}/flags/{key}/analysis",
        Access::Admin,
    ),
    (
        "GET",
        "/api/v1/environments/{env}/flags/{key}/usage",
        Access::Admin,
    ),
    ("POST", "/api/v1/usage", Access::Environment),
    ("GET", "/api/v1/environments/{env}/ramps", Access::Admin),
    ("GET", "/api/v1/environments/{env}/document", Access::Admin),
    ("PUT", "/api/v1/environments/{env}/document", Access::Admin),
    ("GET", "/api/v1/environments/{env}/source", Access::Admin),
    (
        "PUT",
        "/api/v1/environments/{env}/source",
        Access::UnscopedAdmin,
    ),
    ("DELETE", "/api/v1/environments/{env}/source", Access::Admin),
    (
        "POST",
        "/api/v1/environments/{env}/source/sync",
        Access::AdminOrWebhook,
    ),
    ("GET", "/api/v1/audit", Access::Admin),
    ("GET", "/api/v1/tokens", Access::Admin),
    ("POST", "/api/v1/tokens", Access::Admin),
    ("DELETE", "/api/v1/tokens/{id}", Access::Admin),
    ("GET", "/api/v1/auth/whoami", Access::Authenticated),
    ("GET", "/api/v1/auth/oidc", Access::UnscopedAdmin),
    (
        "GET",
        flag_protocol::stream::STREAM_PATH,
        Access::Environment,
    ),
    (
        "POST",
        "/ofrep/v1/evaluate/flags/{key}",
        Access::Environment,
    ),
    ("POST", "/ofrep/v1/evaluate/flags", Access::Environment),
    ("GET", "/ofrep/v1/configuration", Access::Environment),
    ("GET", "/api/v1/openapi.json", Access::Public),
    ("GET", "/ui", Access::Public),
    ("GET", "/ui/", Access::Public),
    ("GET", "/ui/app.js", Access::Public),
    ("GET", "/ui/app.css", Access::Public),
    ("POST", "/ui/session", Access::Public),
    ("GET", "/ui/session", Access::Public),
    ("DELETE", "/ui/session", Access::Session),
    ("GET", "/ui/events", Access::Session),
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Public),
];

/// The router, with state, body limit and metrics. Tests call it with `oneshot`.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route(
            "/api/v1/environments",
            get(environments::list).post(environments::create),
        )
        .route(
            "/api/v1/environments/{env}",
            axum::routing::delete(environments::delete),
        )
        .route(
            "/api/v1/environments/{env}/clients",
            get(environments::clients),
        )
        .route("/api/v1/environments/{env}/flags", get(flags::list))
        .route(
            "/api/v1/environments/{env}/flags/{key}",
            get(flags::get)
                .put(flags::put)
                .patch(flags::patch)
                .delete(flags::delete),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/rollout",
            post(flags::rollout),
        )
        .route(
            "/api/v1/environments/{env}/document",
            get(document::export).put(document::apply),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/ramp",
            post(ramps::start).get(ramps::status),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/ramp/pause",
            post(ramps::pause),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/ramp/resume",
            post(ramps::resume),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/ramp/abort",
            post(ramps::abort),
        )
        .route(
            "/api/v1/environments/{env}/flags/{key}/analysis",
            post(ramps::analyse),
        )
        .route("/api/v1/environments/{env}/ramps", get(ramps::list))
        .route(
            "/api/v1/environments/{env}/flags/{key}/usage",
            get(usage::flag),
        )
        .route("/api/v1/usage", post(usage::report))
        .route(
            "/api/v1/environments/{env}/source",
            get(sources::show)
                .put(sources::bind)
                .delete(sources::unbind),
        )
        .route(
            "/api/v1/environments/{env}/source/sync",
            post(sources::sync),
        )
        .route("/api/v1/audit", get(audit::query))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/api/v1/auth/whoami", get(identity::whoami))
        .route("/api/v1/auth/oidc", get(identity::oidc))
        .route(flag_protocol::stream::STREAM_PATH, get(stream::stream))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route("/ofrep/v1/configuration", get(ofrep::configuration))
        .route("/api/v1/openapi.json", get(ops::openapi))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route(
            "/ui/session",
            get(ui::current).post(ui::sign_in).delete(ui::sign_out),
        )
        .route("/ui/events", get(ui::events))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts each request by method, route template and status, and times it; and counts the
/// store failures behind error responses (`ApiError` marks them on the response).
async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    if response
        .extensions()
        .get::<crate::error::StoreFailure>()
        .is_some()
    {
        state.metrics.store_error();
    }
    state
        .metrics
        .request(method.as_str(), &route, response.status().as_u16(), started);
    response
}

/// A request, its body included, is answered within `--request-timeout` or gets 408 and its
/// connection closed: a body shorter than its `Content-Length` cannot hold a handler forever.
/// Stream sessions are not requests: the upgrade answers at once.
async fn request_deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if request.uri().path() == flag_protocol::stream::STREAM_PATH {
        return next.run(request).await;
    }
    let limit = state.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.connection_closed("request_timeout");
            let mut response = ApiError::request_timeout(format!(
                "the request took longer than {}s (was the body shorter than its Content-Length?)",
                limit.as_secs()
            ))
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Every error the router answers has our shape, `{"error": {"code", "message"}}`, including
/// those axum or a body limit produce as plain text (a 413 from a handler that reads raw bytes,
/// say): the kind is fixed here once rather than route by route.
async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // 101 (stream upgrades) and other successes, and errors already in JSON, pass unchanged.
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = flag_protocol::ErrorCode::for_status(status.as_u16());
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.chars().take(500).collect(),
    };
    let body = flag_protocol::ErrorBody::new(code, message);
    let mut rebuilt = (status, axum::Json(body)).into_response();
    // Keep what the client may need (Allow, WWW-Authenticate, Retry-After...), but not the old
    // body's length and type.
    for (name, value) in &headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    rebuilt
}

/// A JSON body: content type, size limit and syntax as `axum::Json` checks them, and then no
/// duplicate object keys (a body that says `"state"` twice means nothing reliable, and serde
/// would silently keep the last). Rejections are `ApiError`s, so they get our error shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(checked) =
            axum::Json::<flag_core::json::UniqueKeys>::from_request(request, state).await?;
        serde_path_to_error::deserialize(checked.0)
            .map(JsonBody)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = format!("malformed JSON body: {path}: {}", error.inner());
                match path.as_str() {
                    "." | "" => {
                        ApiError::bad_request(format!("malformed JSON body: {}", error.inner()))
                    }
                    _ => ApiError::bad_request(message).at(path),
                }
            })
    }
}

/// `Path` with our error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);

/// `Query` with our error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

/// `domain::blocking` for handlers: the work answers in `ApiError`s (domain errors convert with
/// `?`), which fixes the error type the handlers' closures would otherwise leave open.
pub async fn blocking<T, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn FlagStore) -> Result<T, ApiError> + Send + 'static,
{
    crate::domain::blocking_as(state, work).await
}

/// `?strict=true|false` on a write: whether warnings refuse it (default: the server's
/// `--strict`).
#[derive(Debug, Clone, Copy)]
pub struct Strict(pub crate::domain::flags::WriteMode);

impl FromRequestParts<AppState> for Strict {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        #[derive(serde::Deserialize)]
        struct Query {
            strict: Option<String>,
        }
        let default = state
            .strict_writes
            .load(std::sync::atomic::Ordering::Relaxed);
        let query = axum::extract::Query::<Query>::try_from_uri(&parts.uri)?;
        let strict = match query.0.strict.as_deref() {
            None => default,
            Some("true" | "1" | "") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "strict must be true or false, got {other:?}"
                ))
                .at("strict"));
            }
        };
        Ok(Strict(crate::domain::flags::WriteMode { strict }))
    }
}

/// The `If-Match` header as a flag version: `3`, `"3"` or `W/"3"`.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().unwrap_or_default().trim();
        let bare = text.trim_start_matches("W/").trim_matches('"');
        bare.parse::<i64>().map(|v| IfMatch(Some(v))).map_err(|_| {
            ApiError::bad_request(format!(
                "If-Match must be a version as returned in ETag, such as \"3\"; got {text:?}"
            ))
            .at("If-Match")
        })
    }
}

/// The `ETag` value for a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// The change message: the `X-Change-Message` header, else a top-level `message` string taken
/// out of the body.
///
/// A message is never silently dropped: a non-string `message` is a 400, and so is a header that
/// is not visible ASCII (send UTF-8 percent-encoded: `X-Change-Message: caf%C3%A9`, which is
/// decoded).
pub fn change_message(
    headers: &HeaderMap,
    body: Option<&mut serde_json::Value>,
) -> Result<Option<String>, ApiError> {
    let from_body = match body
        .and_then(|b| b.as_object_mut())
        .and_then(|o| o.remove("message"))
    {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(message)) => Some(message),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "message must be a string, found {}",
                flag_core::json_type_name(&other)
            ))
            .at("message"));
        }
    };
    let Some(header) = headers.get("x-change-message") else {
        return Ok(from_body);
    };
    let invalid = || {
        ApiError::bad_request(
            "X-Change-Message must be visible ASCII; percent-encode other text as UTF-8 (caf%C3%A9)",
        )
        .at("X-Change-Message")
    };
    let text = header.to_str().map_err(|_| invalid())?;
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| invalid())?;
    Ok(Some(decoded.into_owned()))
}

/// Who is writing (a token's name, or `oidc:<issuer host>:<sub>`), the message, and the time.
pub fn attribution(state: &AppState, admin: &Admin, message: Option<String>) -> Attribution {
    Attribution {
        actor: admin.0.actor.clone(),
        message,
        at: (state.clock)(),
    }
}
