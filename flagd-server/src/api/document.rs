//! `/api/v1/environments/{env}/document`: export and declarative apply (flags as code).

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::blocking;
use super::{JsonBody, PathParams, QueryParams, Strict, attribution, change_message, etag};
use crate::api::auth::Admin;
use crate::domain::flags as domain_flags;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn export(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (document, version) = blocking(&state, move |store| {
        Ok(domain_flags::document(store, &env)?)
    })
    .await?;
    Ok(([(header::ETAG, etag(version))], axum::Json(document)))
}

#[derive(Debug, Deserialize)]
pub struct ApplyOptions {
    /// Report only; write nothing.
    #[serde(default)]
    dry_run: bool,
    /// Delete stored flags the document does not mention.
    #[serde(default)]
    prune: bool,
}

pub async fn apply(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams(env): PathParams<String>,
    Strict(mode): Strict,
    QueryParams(options): QueryParams<ApplyOptions>,
    JsonBody(document): JsonBody<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, None)?);
    let env_name = env.clone();
    let dry_run = options.dry_run;
    let report = blocking(&state, move |store| {
        Ok(domain_flags::apply_document(
            store,
            &env,
            &document,
            options.dry_run,
            options.prune,
            mode,
            &by,
        )?)
    })
    .await?;
    if !dry_run {
        for change in report.changes.iter().filter(|c| c.action == "delete") {
            crate::domain::ramp::close_deleted(&state, &env_name, Some(&change.key)).await;
        }
    }
    Ok(([(header::ETAG, etag(report.version))], axum::Json(report)))
}
