//! `/api/v1/environments`: list, create, delete.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::blocking;
use super::{JsonBody, PathParams, QueryParams, attribution, change_message};
use crate::api::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// Every environment, or those of a scoped admin.
pub async fn list(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    let mut environments = blocking(&state, |store| Ok(store.environments()?)).await?;
    environments.retain(|environment| admin.0.may_use(&environment.name));
    Ok(axum::Json(json!({ "environments": environments })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    name: String,
    #[serde(default)]
    message: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateEnvironment>,
) -> Result<impl IntoResponse, ApiError> {
    let message = change_message(&headers, None)?.or(body.message);
    let by = attribution(&state, &admin, message);
    let environment = crate::domain::create_environment(&state, &admin.0, &body.name, by).await?;
    Ok((StatusCode::CREATED, axum::Json(environment)))
}

#[derive(Debug, Deserialize)]
pub struct DeleteOptions {
    /// Delete even when the environment still has flags.
    #[serde(default)]
    force: bool,
}

pub async fn delete(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams(env): PathParams<String>,
    QueryParams(options): QueryParams<DeleteOptions>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, None)?);
    crate::domain::delete_environment(&state, &env, options.force, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/environments/{env}/clients`: connected stream clients and how far behind they are.
pub async fn clients(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    let snapshot = state
        .hub
        .snapshot(&env)
        .ok_or_else(|| ApiError::not_found(format!("environment {env:?} does not exist")))?;
    let clients: Vec<serde_json::Value> = state
        .hub
        .clients(&env)
        .into_iter()
        .map(|client| {
            let lag = snapshot.version - client.acked_version.unwrap_or(0);
            let mut value = serde_json::to_value(&client).unwrap_or_default();
            value["lag"] = json!(lag);
            value
        })
        .collect();
    Ok(axum::Json(
        json!({"environment": env, "version": snapshot.version, "clients": clients}),
    ))
}
