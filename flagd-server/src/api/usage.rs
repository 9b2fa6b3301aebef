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

/// Reads `since` (default: 7 days ago): unix seconds (0 or more), an RFC 3339 time (any
/// offset), or a duration ago (a duration longer than the time since 1970 means 1970).
fn since(text: Option<&str>, now: i64) -> Result<i64, ApiError> {
    let refused = || {
        ApiError::bad_request(format!(
            "since {:?} is not a duration ago (7d, 36h), unix seconds from 0, or an RFC 3339 time",
            text.unwrap_or_default()
        ))
        .at("since")
    };
    let Some(text) = text else {
        return Ok(now.saturating_sub(7 * 86_400).max(0));
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return text
            .parse::<i64>()
            .ok()
            .filter(|seconds| *seconds >= 0)
            .ok_or_else(refused);
    }
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Ok(time.as_second().max(0));
    }
    match crate::units::parse_duration(text) {
        Ok(ago) => Ok(now
            .saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX))
            .max(0)),
        Err(crate::units::DurationError::TooLarge(_)) => Ok(0),
        Err(_) => Err(refused()),
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
