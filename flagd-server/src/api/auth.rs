//! The extractors that authenticate requests: `Admin` (an admin token) and `EnvironmentAccess`
//! (an sdk token's environment, or an admin token with `?environment=`), over the domain's
//! `TokenCache`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Role, TokenRecord};

/// The secret of an `Authorization: Bearer` header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header: send `Authorization: Bearer <token>`",
            )
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
    if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
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

/// A token allowed to read one environment (evaluation and streaming): an sdk token for its
/// own environment, or an admin token naming one with `?environment=`.
#[derive(Debug, Clone)]
pub struct EnvironmentAccess {
    /// The token.
    pub token: TokenRecord,
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
        let token = state
            .tokens
            .authenticate(secret)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
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
        let environment = match (token.role, &token.environment, requested) {
            (Role::Sdk, Some(own), Some(requested)) if *own != requested => {
                return Err(ApiError::forbidden(format!(
                    "this sdk token reads environment {own:?}, not {requested:?}"
                )));
            }
            (Role::Sdk, Some(own), _) => own.clone(),
            (Role::Sdk, None, _) => {
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
        if state.hub.snapshot(&environment).is_none() {
            return Err(ApiError::not_found(format!(
                "environment {environment:?} does not exist"
            )));
        }
        Ok(EnvironmentAccess { token, environment })
    }
}

/// An authenticated admin: the extractor every admin route takes.
#[derive(Debug, Clone)]
pub struct Admin(pub TokenRecord);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?;
        let token = state
            .tokens
            .authenticate(secret)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
        if token.role != Role::Admin {
            return Err(ApiError::forbidden(format!(
                "token {:?} is an sdk token; this route needs an admin token",
                token.name
            )));
        }
        Ok(Admin(token))
    }
}
