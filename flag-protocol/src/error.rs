//! The admin API's error body: `{"error": {"code", "message", "path"?, "problems"?}}`.
//!
//! Clients decide on [`ErrorCode`] (and the HTTP status), never on `message`, which is for
//! people and may be reworded. The table of codes is `docs/API.md`.

use flag_core::Problem;
use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Each has one HTTP status ([`ErrorCode::http_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong field types, a bad query or `If-Match`.
    BadRequest,
    /// 401: no token, or not a valid one.
    Unauthorized,
    /// 403: a valid token without the right role.
    Forbidden,
    /// 404: unknown environment, flag, token or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 408: the request took longer than the server's request timeout.
    RequestTimeout,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 409: the environment is managed by Git with the `reject` drift policy: change it in its
    /// repository (the message names the repository, branch and path).
    ManagedByGit,
    /// 412: `If-Match` named a stale version (or a version of a flag that does not exist).
    PreconditionFailed,
    /// 413: the body is over the server's limit.
    PayloadTooLarge,
    /// 415: the body was not sent as JSON.
    UnsupportedMediaType,
    /// 422: a flag or document fails validation; `problems` lists every problem.
    InvalidFlag,
    /// 422: a rollout percentage outside 0–100 or finer than 0.01.
    InvalidPercentage,
    /// 422: the rolled-out variant is unknown or ambiguous: name it.
    RolloutVariants,
    /// 422: targeting a rollout cannot edit safely.
    TargetingTooComplex,
    /// 422: another rollout that cannot be applied.
    Rollout,
    /// 422: a flag definition over the size limit.
    FlagTooLarge,
    /// 422: a value outside its range; `path` names the field.
    OutOfRange,
    /// 422: well-formed but not acceptable, with no more specific code.
    Unprocessable,
    /// 429: too many requests.
    TooManyRequests,
    /// 500: logged by the server; the message is generic.
    Internal,
    /// 503: the store (or another dependency) is unavailable.
    Unavailable,
    /// A code this build does not know (a newer server): decide on the HTTP status.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ManagedByGit => "managed_by_git",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidFlag => "invalid_flag",
            ErrorCode::InvalidPercentage => "invalid_percentage",
            ErrorCode::RolloutVariants => "rollout_variants",
            ErrorCode::TargetingTooComplex => "targeting_too_complex",
            ErrorCode::Rollout => "rollout",
            ErrorCode::FlagTooLarge => "flag_too_large",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status the server answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::Unknown => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Conflict | ErrorCode::ManagedByGit => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidFlag
            | ErrorCode::InvalidPercentage
            | ErrorCode::RolloutVariants
            | ErrorCode::TargetingTooComplex
            | ErrorCode::Rollout
            | ErrorCode::FlagTooLarge
            | ErrorCode::OutOfRange
            | ErrorCode::Unprocessable => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The generic code for an HTTP error status (for errors raised outside our handlers, such
    /// as an unknown route).
    pub fn for_status(status: u16) -> ErrorCode {
        match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            409 => ErrorCode::Conflict,
            412 => ErrorCode::PreconditionFailed,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::TooManyRequests,
            503 => ErrorCode::Unavailable,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// For programs (`unknown` when a body has none: a proxy's, say).
    #[serde(default = "unknown_code")]
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The request field (or JSON path in a flag document) at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Every validation problem, for `invalid_flag` (errors and, in strict mode, warnings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

fn unknown_code() -> ErrorCode {
    ErrorCode::Unknown
}

impl ErrorBody {
    /// A body with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                path: None,
                problems: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_their_strings() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RequestTimeout,
            ErrorCode::Conflict,
            ErrorCode::ManagedByGit,
            ErrorCode::PreconditionFailed,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::InvalidFlag,
            ErrorCode::InvalidPercentage,
            ErrorCode::RolloutVariants,
            ErrorCode::TargetingTooComplex,
            ErrorCode::Rollout,
            ErrorCode::FlagTooLarge,
            ErrorCode::OutOfRange,
            ErrorCode::Unprocessable,
            ErrorCode::TooManyRequests,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
        ];
        for code in all {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert_eq!(serde_json::from_value::<ErrorCode>(json).unwrap(), code);
            let status = code.http_status();
            // The generic code for a status gives the same status back.
            assert_eq!(
                ErrorCode::for_status(status).http_status(),
                status,
                "{code}"
            );
        }
        let newer: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
    }
}
