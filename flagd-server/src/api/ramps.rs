//! `/api/v1/environments/{env}/flags/{key}/ramp[/pause|resume|abort]` and `.../ramps`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{JsonBody, PathParams, change_message};
use crate::api::auth::Admin;
use crate::domain::ramp::{self, Control, StartRequest};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn start(
    State(state): State<AppState>,
    admin: Admin,
    PathParams((env, key)): PathParams<(String, String)>,
    JsonBody(request): JsonBody<StartRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let ramp = ramp::start(&state, &env, &key, request, &admin.0.actor).await?;
    Ok((StatusCode::CREATED, axum::Json(ramp.view())))
}

pub async fn status(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams((env, key)): PathParams<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let name = env.clone();
    crate::domain::blocking(&state, move |store| {
        crate::domain::flags::environment_or_not_found(store, &name).map(drop)
    })
    .await?;
    let ramp = ramp::latest(&state, &env, &key).await?.ok_or_else(|| {
        ApiError::not_found(format!("flag {key:?} in {env:?} has never been ramped"))
    })?;
    Ok(axum::Json(ramp.view()))
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ramps: Vec<Value> = ramp::list(&state, &env)
        .await?
        .iter()
        .map(ramp::Ramp::view)
        .collect();
    Ok(axum::Json(json!({"environment": env, "ramps": ramps})))
}

/// The message of a control request: `X-Change-Message`, or `{"message": "..."}`.
fn message(headers: &HeaderMap, body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return change_message(headers, None);
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON body: {error}")))?;
    change_message(headers, Some(&mut value))
}

async fn control(
    state: AppState,
    admin: Admin,
    env: String,
    key: String,
    headers: HeaderMap,
    body: Bytes,
    which: Control,
) -> Result<impl IntoResponse, ApiError> {
    let note = message(&headers, &body)?;
    let ramp = ramp::control(&state, &env, &key, which, &admin.0.actor, note).await?;
    Ok(axum::Json(ramp.view()))
}

pub async fn pause(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams((env, key)): PathParams<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    control(state, admin, env, key, headers, body, Control::Pause).await
}

pub async fn resume(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams((env, key)): PathParams<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    control(state, admin, env, key, headers, body, Control::Resume).await
}

pub async fn abort(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams((env, key)): PathParams<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    control(state, admin, env, key, headers, body, Control::Abort).await
}

/// `POST /api/v1/environments/{env}/flags/{key}/analysis`: one Prometheus measurement now, as a
/// metric guard would take it (`domain/analysis.rs`).
pub async fn analyse(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams((env, key)): PathParams<(String, String)>,
    JsonBody(request): JsonBody<crate::domain::analysis::AnalysisRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let measurement = crate::domain::analysis::analyse(&state, &env, &key, request).await?;
    Ok(axum::Json(measurement))
}
