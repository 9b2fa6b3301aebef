//! The web dashboard at `/ui/`: its embedded assets (a framework-free ES module over the JSON
//! API, `flagd-server/ui/`), sign-in and sign-out (`/ui/session`), and the live event stream
//! the pages follow (`/ui/events`, server-sent events). The API routes accept the session cookie
//! through the `Admin` and `Caller` extractors (`auth.rs`). docs/DASHBOARD.md.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use crate::domain::access::Principal;
use crate::domain::hub::HubEvent;
use crate::error::ApiError;
use crate::state::AppState;

use super::JsonBody;
use super::auth::{CSRF_HEADER, SESSION_COOKIE, session_cookie, session_error};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// Scripts, styles and connections only from this server; no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: to `/ui/`.
pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// A browser's write from another site names it in `Origin`: refused (defence in depth behind
/// `SameSite=Strict`, the JSON body and the CSRF token). The origin's host must be the `Host`
/// the request came to, or the `X-Forwarded-Host` a reverse proxy set (a page on another site
/// cannot set either).
fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name).and_then(|h| h.to_str().ok()))
        // A chain of proxies lists the host the browser used first.
        .filter_map(|value| value.split(',').next())
        .collect();
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        });
    match origin_host {
        Some(origin) if hosts.iter().any(|h| origin.eq_ignore_ascii_case(h.trim())) => Ok(()),
        _ => Err(ApiError::forbidden(
            "cross-origin request refused: the dashboard only accepts requests from its own pages \
             (behind a reverse proxy, pass the original Host header, or set X-Forwarded-Host)",
        )),
    }
}

/// Whether the session cookie gets `Secure`: the server speaks TLS, `--ui-secure-cookie` says
/// so, or a TLS-terminating proxy says the browser used https (`X-Forwarded-Proto`).
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .ui
        .secure_cookies
        .load(std::sync::atomic::Ordering::Relaxed)
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            // A chain of proxies lists the client's scheme first.
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(secure: bool, value: &str, max_age: Option<i64>) -> Result<HeaderValue, ApiError> {
    let mut cookie = cookie::Cookie::build((SESSION_COOKIE, value.to_owned()))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(cookie::SameSite::Strict);
    if let Some(seconds) = max_age {
        cookie = cookie.max_age(cookie::time::Duration::seconds(seconds));
    }
    HeaderValue::from_str(&cookie.build().to_string())
        .map_err(|e| ApiError::internal(format!("session cookie: {e}")))
}

/// The session as the page reads it (sign-in and `GET /ui/session`).
fn session_view(state: &AppState, principal: &Principal, csrf: &str) -> serde_json::Value {
    json!({
        "actor": principal.actor,
        "role": principal.role.as_str(),
        "environments": principal.environments,
        "csrfToken": csrf,
        "idleTimeout": state.ui.sessions.policy().idle,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /ui/session`'s body.
pub struct SignIn {
    /// An admin token.
    token: String,
}

/// `POST /ui/session` `{"token"}`: signs in; 201, the session (with its CSRF token) and the
/// cookie.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    let session = state
        .ui
        .sessions
        .sign_in(&state.tokens, &request.token, state.now())
        .map_err(|e| session_error(e).at("token"))?;
    tracing::info!(actor = %session.principal.actor, "dashboard sign-in");
    let cookie = set_cookie(secure(&state, &headers), &session.id, None)?;
    let body = session_view(&state, &session.principal, &session.csrf);
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        axum::Json(body),
    )
        .into_response())
}

/// `GET /ui/session`: who is signed in, with the CSRF token (for a page that was reloaded); 204
/// when nobody is (the page's first question, answered without an error in its console).
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(id) = session_cookie(&headers) else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let Ok((principal, csrf)) =
        state
            .ui
            .sessions
            .authenticate(&state.tokens, &id, None, false, state.now())
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(axum::Json(session_view(&state, &principal, &csrf)).into_response())
}

/// `DELETE /ui/session`: signs out (CSRF token required); 204 and an expired cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    let id = session_cookie(&headers).ok_or_else(|| ApiError::unauthorized("not signed in"))?;
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    state
        .ui
        .sessions
        .authenticate(&state.tokens, &id, csrf, true, state.now())
        .map_err(session_error)?;
    state.ui.sessions.sign_out(&id);
    let cookie = set_cookie(secure(&state, &headers), "", Some(0))?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// `GET /ui/events`: server-sent events for the signed-in admin's environments: `version`
/// `{"environment", "version"}` after every commit, `environment-deleted`. Ends when the session
/// does (checked every 15 s); following it does not keep an idle session alive.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_cookie(&headers).ok_or_else(|| ApiError::unauthorized("not signed in"))?;
    let principal = state
        .ui
        .sessions
        .peek(&state.tokens, &id, state.now())
        .map_err(session_error)?;
    let receiver = state.hub.subscribe();
    let check = tokio::time::interval(Duration::from_secs(15));
    let stream = futures_util::stream::unfold(
        (receiver, check, state, id, principal),
        |(mut receiver, mut check, state, id, principal)| async move {
            loop {
                tokio::select! {
                    event = receiver.recv() => {
                        let event = match event {
                            Ok(HubEvent::Version { environment, version, .. }) => {
                                if principal.check_environment(&environment).is_err() {
                                    continue;
                                }
                                Event::default()
                                    .event("version")
                                    .data(json!({"environment": &*environment, "version": version}).to_string())
                            }
                            Ok(HubEvent::EnvironmentDeleted { environment }) => {
                                if principal.check_environment(&environment).is_err() {
                                    continue;
                                }
                                Event::default()
                                    .event("environment-deleted")
                                    .data(json!({"environment": environment}).to_string())
                            }
                            Ok(HubEvent::TokenRevoked { .. }) => continue,
                            // Missed some: tell the page to re-read everything.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                Event::default().event("version").data("{}")
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        };
                        return Some((Ok::<_, Infallible>(event), (receiver, check, state, id, principal)));
                    }
                    _ = check.tick() => {
                        if state.ui.sessions.peek(&state.tokens, &id, state.now()).is_err() {
                            return None;
                        }
                    }
                    () = state.shutdown.cancelled() => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
