//! Evaluation telemetry over HTTP: `GET /api/v1/environments/{env}/flags/{key}/usage` and
//! `POST /api/v1/usage` (`domain/usage.rs`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use flag_protocol::stream::UsageReport;
use serde::Deserialize;
use serde_json::json;

use super::{JsonBody, PathParams, QueryParams};
use crate::api::auth::{Admin, EnvironmentAccess};
use crate::domain::usage;
use crate::error::ApiError;
use crate::state::AppState;

/// The most entries one report may carry.
const MAX_REPORT_ENTRIES: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// From when: a duration ago (`7d`, `36h`), unix seconds, or an RFC 3339 time.
    #[serde(default)]
    since: Option<String>,
}

/// Reads `since` (default: 7 days ago).
fn since(text: Option<&str>, now: i64) -> Result<i64, ApiError> {
    let Some(text) = text else {
        return Ok(now.saturating_sub(7 * 86_400));
    };
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let seconds = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        return Ok(seconds);
    }
    match crate::units::parse_duration(text) {
        Ok(ago) => Ok(now.saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::bad_request(format!(
            "since {text:?} is not a duration ago (7d, 36h), unix seconds or an RFC 3339 time"
        ))
        .at("since")),
    }
}

/// `GET …/flags/{key}/usage?since=`.
pub async fn flag(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams((env, key)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<UsageParams>,
) -> Result<impl IntoResponse, ApiError> {
    let since = since(params.since.as_deref(), state.now())?;
    let answer = usage::of_flag(&state, &env, &key, since).await?;
    Ok(axum::Json(answer))
}

/// `POST /api/v1/usage`: an SDK's counts, for the environment of its credential.
pub async fn report(
    State(state): State<AppState>,
    access: EnvironmentAccess,
    JsonBody(report): JsonBody<UsageReport>,
) -> Result<impl IntoResponse, ApiError> {
    if report.counts.len() > MAX_REPORT_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "a report may carry at most {MAX_REPORT_ENTRIES} entries, found {}; send several",
            report.counts.len()
        ))
        .at("counts"));
    }
    let counted = usage::report(&state, &access.environment, &report.counts);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"counted": counted, "ignored": report.counts.len() - counted})),
    ))
}
