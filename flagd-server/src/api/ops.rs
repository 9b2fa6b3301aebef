//! Health, readiness, metrics, the OpenAPI document, and the fallbacks.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::blocking;
use crate::error::ApiError;
use crate::state::AppState;

/// The OpenAPI document of the admin API (kept true by a test against `ROUTES`).
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.scheduler.check().map_err(ApiError::unavailable)?;
    state.replication.check().map_err(ApiError::unavailable)?;
    // A database connection that hangs must not hang the probe: answer within 3 s.
    let ping = blocking(&state, |store| {
        store
            .ping()
            .map_err(|error| ApiError::unavailable(format!("store is not usable: {error}")))
    });
    match tokio::time::timeout(std::time::Duration::from_secs(3), ping).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ApiError::unavailable(
                "store is not usable: it did not answer within 3 s",
            ));
        }
    }
    Ok(axum::Json(json!({"status": "ready"})))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = state.metrics.render();
        crate::metrics::render_replica(&mut text, state.is_leader(), state.replication.connected());
        crate::metrics::render_gitops(&mut text, &state.gitops.stats());
        if let Some(oidc) = state.oidc.get() {
            oidc.render_metrics(&mut text);
        }
        text
    })
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /api/v1/openapi.json")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::MethodNotAllowed,
        "method not allowed on this route; see /api/v1/openapi.json",
    )
}
