//! `/api/v1/audit`: the change log, newest first.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::QueryParams;
use super::blocking;
use crate::api::auth::Admin;
use crate::error::ApiError;

use crate::state::AppState;
use crate::store::AuditQuery;

/// The most records one page returns.
const MAX_LIMIT: usize = 1_000;

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    environment: Option<String>,
    flag: Option<String>,
    /// Page size (default 50, at most 1000).
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    before: Option<i64>,
}

pub async fn query(
    State(state): State<AppState>,
    admin: Admin,
    QueryParams(params): QueryParams<AuditParams>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(
            ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")).at("limit"),
        );
    }
    // A scoped admin reads its environments' entries only.
    if let Some(environment) = &params.environment {
        admin.0.check_environment(environment)?;
    }
    let query = AuditQuery {
        environments: admin.0.environments.clone(),
        environment: params.environment,
        flag: params.flag,
        before: params.before,
        limit,
    };
    let changes = blocking(&state, move |store| Ok(store.changes(&query)?)).await?;
    // A full page may have more behind it: hand out the cursor.
    let next = (changes.len() == limit)
        .then(|| changes.last().map(|c| c.id))
        .flatten();
    Ok(axum::Json(json!({ "changes": changes, "next": next })))
}
