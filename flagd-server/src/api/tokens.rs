//! `/api/v1/tokens`: create (the secret is shown once), list (never secrets), revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::blocking;
use super::{JsonBody, PathParams};
use crate::api::auth::Admin;
use crate::domain::tokens::{generate_id, generate_secret, hash_secret};
use crate::error::ApiError;

use crate::state::AppState;
use crate::store::{Role, TokenRecord};

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let tokens = blocking(&state, |store| Ok(store.tokens()?)).await?;
    Ok(axum::Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
    #[serde(default)]
    environment: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let name = request.name.trim().to_owned();
    // Names become audit actors and log fields: no control characters, so no forged lines.
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a token name must be 1 to 100 printable characters (no line breaks or control characters)",
        )
        .at("name"));
    }
    match (request.role, &request.environment) {
        (Role::Sdk, None) => {
            return Err(
                ApiError::bad_request("an sdk token needs the environment it may read")
                    .at("environment"),
            );
        }
        (Role::Admin, Some(_)) => {
            return Err(ApiError::bad_request(
                "admin tokens cover every environment: omit environment",
            )
            .at("environment"));
        }
        _ => {}
    }
    let secret = generate_secret(request.role);
    let record = TokenRecord {
        id: generate_id(),
        name,
        role: request.role,
        environment: request.environment,
        hash: hash_secret(&secret),
        created_at: (state.clock)(),
        revoked_at: None,
    };
    let stored = record.clone();
    blocking(&state, move |store| Ok(store.insert_token(&stored)?)).await?;
    state.tokens.insert(record.clone());
    let mut body = serde_json::to_value(&record).map_err(ApiError::internal)?;
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(body)))
}

pub async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(id): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    // The last-admin check and the revocation are one store transaction (`revoke_token`).
    let at = (state.clock)();
    let revoke_id = id.clone();
    blocking(&state, move |store| Ok(store.revoke_token(&revoke_id, at)?)).await?;
    state.tokens.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}
