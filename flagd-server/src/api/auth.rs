//! The extractors that authenticate requests: `Admin` (an admin, confined to its environments),
//! `EnvironmentAccess` (an sdk token's environment, or an admin's with `?environment=`) and
//! `Caller` (anyone authenticated), over the domain's `TokenCache` and trusted OIDC issuers.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::Method;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;

use crate::domain::access::Principal;
use crate::domain::oidc::Oidc;
use crate::domain::sessions::SessionError;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::Role;

/// The dashboard's session cookie (`ui.rs`).
pub const SESSION_COOKIE: &str = "flagd_session";
/// The header a dashboard write repeats the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session id from the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_owned())
}

/// How a refused session reads over HTTP.
pub fn session_error(error: SessionError) -> ApiError {
    match error {
        SessionError::Csrf => ApiError::forbidden(error.to_string()),
        SessionError::Expired(_) | SessionError::NotAdmin(_) => {
            ApiError::unauthorized(error.to_string())
        }
    }
}

/// Whether a request method writes (and so needs the CSRF token).
pub fn writes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The principal of a dashboard session, for a request that carries the session cookie and no
/// other credential; a write must repeat the session's CSRF token (`X-CSRF-Token`).
fn session(parts: &Parts, state: &AppState) -> Option<Result<Principal, ApiError>> {
    if parts.headers.contains_key(header::AUTHORIZATION) || parts.headers.contains_key("x-api-key")
    {
        return None;
    }
    let id = session_cookie(&parts.headers)?;
    let csrf = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    Some(
        state
            .ui
            .sessions
            .authenticate(&state.tokens, &id, csrf, writes(&parts.method), state.now())
            .map(|(principal, _)| principal)
            .map_err(session_error),
    )
}

/// The secret of an `Authorization: Bearer` header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing Authorization header: send `Authorization: Bearer <token>`")
    })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, secret) = value.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("malformed Authorization header: expected `Bearer <token>`")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "malformed Authorization header: expected `Bearer <token>`",
        ));
    }
    Ok(secret.trim())
}

/// The secret of `Authorization: Bearer` or, for OFREP clients, `X-API-Key`.
fn sdk_secret(parts: &Parts) -> Result<&str, ApiError> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return bearer(parts);
    }
    match parts.headers.get("x-api-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.trim().is_empty() => Ok(key.trim()),
        Some(_) => Err(ApiError::unauthorized("malformed X-API-Key header")),
        None => Err(ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <token>` or `X-API-Key: <token>`",
        )),
    }
}

/// Who a bearer credential is: a token from the cache, or an ID token of a trusted OIDC issuer
/// (`domain/oidc.rs`).
async fn authenticate(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
    if let Some(token) = state.tokens.authenticate(secret) {
        return Ok(Principal::from_token(token));
    }
    if Oidc::looks_like_jwt(secret) {
        let Some(oidc) = state.oidc.get() else {
            return Err(ApiError::unauthorized(
                "an ID token was sent, but this server trusts no OIDC issuer (see --oidc-config)",
            ));
        };
        return Ok(oidc.authenticate(secret, state.now()).await?);
    }
    Err(ApiError::unauthorized("invalid or revoked token"))
}

/// A credential allowed to read one environment (evaluation and streaming): an sdk token for its
/// own environment, or an admin (token or ID token) naming one within its scope with
/// `?environment=`.
#[derive(Debug, Clone)]
pub struct EnvironmentAccess {
    /// Who.
    pub principal: Principal,
    /// The environment it reads.
    pub environment: String,
}

impl FromRequestParts<AppState> for EnvironmentAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secret = sdk_secret(parts)?;
        let principal = authenticate(state, secret).await?;
        // Decoded as every other query parameter is (`%65nv` is `env`); given twice, it is
        // ambiguous, and refused the same way on every route that takes it.
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)?.0;
        let mut named = pairs
            .into_iter()
            .filter(|(name, _)| name == "environment")
            .map(|(_, value)| value);
        let requested = named.next();
        if named.next().is_some() {
            return Err(ApiError::bad_request(
                "environment is given more than once: name one environment",
            )
            .at("environment"));
        }
        let environment = match (principal.role, &principal.environments, requested) {
            (Role::Sdk, Some(own), Some(requested)) if !own.contains(&requested) => {
                return Err(ApiError::forbidden(format!(
                    "this sdk token reads environment {:?}, not {requested:?}",
                    own.first().map_or("", String::as_str)
                )));
            }
            (Role::Sdk, Some(own), _) if own.len() == 1 => own[0].clone(),
            (Role::Sdk, _, _) => {
                return Err(ApiError::forbidden("this sdk token has no environment"));
            }
            (Role::Admin, _, Some(requested)) => requested,
            (Role::Admin, _, None) => {
                return Err(ApiError::bad_request(
                    "an admin token must name the environment: add ?environment=NAME",
                )
                .at("environment"));
            }
        };
        principal.check_environment(&environment)?;
        if state.hub.snapshot(&environment).is_none() {
            return Err(ApiError::not_found(format!(
                "environment {environment:?} does not exist"
            )));
        }
        Ok(EnvironmentAccess {
            principal,
            environment,
        })
    }
}

/// Any authenticated caller (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(session) = session(parts, state) {
            return Ok(Caller(session?));
        }
        let secret = sdk_secret(parts)?;
        Ok(Caller(authenticate(state, secret).await?))
    }
}

/// An admin for every environment (routes a scoped admin may not use at all), refused before
/// the body is read.
#[derive(Debug, Clone)]
pub struct UnscopedAdmin(pub Admin);

impl FromRequestParts<AppState> for UnscopedAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let admin = Admin::from_request_parts(parts, state).await?;
        admin.0.check_unscoped("this route")?;
        Ok(UnscopedAdmin(admin))
    }
}

/// An authenticated admin: the extractor every admin route takes. On a route with an `{env}`
/// path parameter, an admin confined to other environments is refused here (403), before the
/// handler runs: no environment route can forget the check.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = match session(parts, state) {
            Some(session) => session?,
            None => authenticate(state, bearer(parts)?).await?,
        };
        if principal.role != Role::Admin {
            return Err(ApiError::forbidden(format!(
                "{} is an sdk token; this route needs an admin token",
                principal.described()
            )));
        }
        if !principal.is_unscoped() {
            let params = RawPathParams::from_request_parts(parts, state).await?;
            if let Some((_, environment)) = params.iter().find(|(name, _)| *name == "env") {
                principal.check_environment(environment)?;
            }
        }
        Ok(Admin(principal))
    }
}
