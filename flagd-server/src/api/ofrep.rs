//! OFREP, the OpenFeature Remote Evaluation Protocol: any OpenFeature SDK can evaluate flags
//! here. Evaluation runs through flag-core against the environment's in-memory compiled
//! snapshot; SQLite is never on this path.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flag_core::{EvaluationContext, Resolution};
use flag_protocol::{
    OfrepBulkEvaluation, OfrepCapabilities, OfrepConfiguration, OfrepEvaluation, OfrepFailure,
    OfrepRequest,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::PathParams;
use crate::api::auth::EnvironmentAccess;
use crate::domain::usage;
use crate::error::ApiError;
use crate::state::AppState;

/// Reads `{"context": {...}}` (`OfrepRequest`). An empty body, or no `context`, is an empty
/// context.
fn parse_context(body: &[u8]) -> Result<EvaluationContext, String> {
    OfrepRequest::from_slice(body).map(|request| EvaluationContext::from_json(request.context))
}

/// One evaluation as OFREP renders it: a success, or a failure with its status.
fn render(key: &str, resolution: &Resolution<'_>) -> (StatusCode, OfrepEvaluation) {
    let evaluation = OfrepEvaluation::from_resolution(key, resolution);
    let status = StatusCode::from_u16(evaluation.http_status()).unwrap_or(StatusCode::OK);
    (status, evaluation)
}

fn invalid_context(key: Option<&str>, details: String) -> Response {
    let body = OfrepFailure::invalid_context(key, details);
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate_flag(
    State(state): State<AppState>,
    access: EnvironmentAccess,
    PathParams(key): PathParams<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = match parse_context(&body) {
        Ok(ctx) => ctx,
        Err(details) => return Ok(invalid_context(Some(&key), details)),
    };
    let snapshot = state.hub.snapshot(&access.environment).ok_or_else(|| {
        ApiError::not_found(format!(
            "environment {:?} does not exist",
            access.environment
        ))
    })?;
    let resolution = snapshot.compiled.evaluate(&key, &ctx, (state.clock)());
    // A key the environment does not have is not counted (the resolution says so: no second
    // lookup).
    if resolution.error.as_ref().map(|e| e.code) != Some(flag_core::ErrorCode::FlagNotFound) {
        usage::count(&state, &access.environment, &key, resolution.variant, 1);
    }
    let (status, body) = render(&key, &resolution);
    Ok((status, axum::Json(body)).into_response())
}

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an `ETag`; `If-None-Match` gives 304.
pub async fn evaluate_all(
    State(state): State<AppState>,
    access: EnvironmentAccess,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = match parse_context(&body) {
        Ok(ctx) => ctx,
        Err(details) => return Ok(invalid_context(None, details)),
    };
    let snapshot = state.hub.snapshot(&access.environment).ok_or_else(|| {
        ApiError::not_found(format!(
            "environment {:?} does not exist",
            access.environment
        ))
    })?;
    let answer = OfrepBulkEvaluation {
        flags: snapshot
            .compiled
            .evaluate_all(&ctx, (state.clock)())
            .map(|(key, resolution)| {
                usage::count(&state, &access.environment, key, resolution.variant, 1);
                render(key, &resolution).1
            })
            .collect(),
    };
    let body = serde_json::to_vec(&answer).map_err(ApiError::internal)?;
    // The ETag is a digest of the answer itself: it changes exactly when the answer does.
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", hex::encode(&digest[..16]));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|list| if_none_match(list, &etag));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// Whether an `If-None-Match` list matches `etag`: `*`, or any entity tag equal to it under the
/// weak comparison of RFC 9110 §13.1.2 (`W/"x"` matches `"x"`), which §13.1.2 prescribes for
/// `If-None-Match`.
fn if_none_match(list: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    list.split(',').any(|tag| {
        let tag = tag.trim();
        tag == "*" || opaque(tag) == ours
    })
}

/// `GET /ofrep/v1/configuration`: what this server supports, for OFREP providers.
pub async fn configuration(_access: EnvironmentAccess) -> impl IntoResponse {
    axum::Json(OfrepConfiguration {
        name: "flagd-rs".to_owned(),
        capabilities: OfrepCapabilities {
            cache_invalidation: json!({"polling": {"enabled": true, "minPollingIntervalMs": 1000}}),
            flag_evaluation: json!({"supportedTypes": ["boolean", "string", "int", "float", "object"]}),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let etag = "\"abc\"";
        for list in ["\"abc\"", "W/\"abc\"", "\"x\", W/\"abc\"", "*", " \"abc\" "] {
            assert!(if_none_match(list, etag), "{list}");
        }
        for list in ["\"abd\"", "abc", "W/\"ab\"", ""] {
            assert!(!if_none_match(list, etag), "{list}");
        }
    }
}
