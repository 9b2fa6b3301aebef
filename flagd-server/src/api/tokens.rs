//! `/api/v1/tokens`: create (the secret is shown once), list (never secrets), revoke. A scoped
//! admin sees and manages only tokens within its scope (`domain/access.rs`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{JsonBody, PathParams};
use crate::api::auth::Admin;
use crate::error::ApiError;

use crate::state::AppState;
use crate::store::Role;

pub async fn list(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let tokens = crate::domain::tokens::list(&state, &admin.0).await?;
    Ok(axum::Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
    /// An sdk token's environment.
    #[serde(default)]
    environment: Option<String>,
    /// An admin token's environments (absent: every environment).
    #[serde(default)]
    environments: Option<Vec<String>>,
}

pub async fn create(
    State(state): State<AppState>,
    admin: Admin,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let (record, secret) = crate::domain::tokens::create(
        &state,
        &admin.0,
        &request.name,
        request.role,
        request.environment,
        request.environments,
    )
    .await?;
    let mut body = serde_json::to_value(&record).map_err(ApiError::internal)?;
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(body)))
}

pub async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    PathParams(id): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    crate::domain::tokens::revoke(&state, &admin.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
