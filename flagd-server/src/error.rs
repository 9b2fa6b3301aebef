//! `ApiError`: the one error type handlers return, rendered as
//! `{"error": {"code", "message", "path"?, "problems"?}}` (`flag_protocol::ErrorBody`) with the
//! status its code fixes. Domain errors become `ApiError`s here (`From<DomainError>`); internal
//! errors are logged when they become responses, with the detail the client does not see.

use axum::Json;
use axum::extract::rejection::{
    JsonRejection, PathRejection, QueryRejection, RawPathParamsRejection,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flag_core::{Problem, ValidationError};
pub use flag_protocol::ErrorCode;
use flag_protocol::{ErrorBody, ErrorDetail};

use crate::domain::{DomainError, Rejection};
use crate::store::StoreError;

/// Marks a response that reports a store failure, for the metrics middleware (an error is
/// built where no server state is at hand; the middleware has it).
#[derive(Debug, Clone, Copy)]
pub struct StoreFailure;

/// An error answer. Client errors keep their message; internal errors are logged and answered
/// with a generic one.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    /// For internal errors: what the log gets (the client gets a generic message).
    detail: Option<String>,
    /// The store failed: the metrics middleware counts it (see [`StoreFailure`]).
    store_failure: bool,
    path: Option<String>,
    problems: Vec<Problem>,
}

impl ApiError {
    /// An error with a code (which fixes the HTTP status) and a message for people.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            detail: None,
            store_failure: false,
            path: None,
            problems: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// 408: the request (its body included) took too long.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::RequestTimeout, message)
    }

    /// 401: no token, or not a valid one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    /// 403: a valid token that may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Conflict, message)
    }

    /// 412: `If-Match` named a stale version.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::PreconditionFailed, message)
    }

    /// 422: a flag definition is invalid; every problem is listed.
    pub fn invalid(error: ValidationError) -> Self {
        let first = error
            .problems
            .first()
            .map(|p| p.path.clone())
            .filter(|p| !p.is_empty());
        ApiError {
            detail: None,
            store_failure: false,
            code: ErrorCode::InvalidFlag,
            message: error.to_string(),
            path: first,
            problems: error.problems,
        }
    }

    /// 422 for a request field that is well-formed JSON but not acceptable.
    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(code, message)
    }

    /// 500: logged here, answered generically.
    /// 500: answered generically; `error` is logged when the response is made.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        let mut api = ApiError::new(
            ErrorCode::Internal,
            "internal server error; see the server log",
        );
        api.detail = Some(error.to_string());
        api
    }

    /// 503: the store is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unavailable, message)
    }

    /// Names the offending field.
    #[must_use]
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The machine code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(detail) = &self.detail {
            tracing::error!(error = %detail, "internal error");
        }
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                path: self.path,
                problems: self.problems,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if self.store_failure {
            response.extensions_mut().insert(StoreFailure);
        }
        response
    }
}

/// The message a person reads (abort reasons, logs): the message and, if any, the field.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(path) = &self.path {
            write!(f, " (at {path})")?;
        }
        Ok(())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::UnknownEnvironment(_)
            | StoreError::UnknownFlag { .. }
            | StoreError::UnknownToken(_) => ApiError::not_found(error.to_string()),
            StoreError::EnvironmentExists(_)
            | StoreError::LastAdmin
            | StoreError::EnvironmentNotEmpty { .. } => ApiError::conflict(error.to_string()),
            StoreError::RampConflict { .. } => ApiError::conflict(format!(
                "{error}: the ramp was changed at the same moment (a step being applied, or a request on another replica); read it again and retry"
            )),
            StoreError::VersionConflict {
                key,
                expected,
                actual: 0,
            } => ApiError::precondition_failed(format!(
                "flag {key:?} does not exist, but If-Match expected version {expected}"
            )),
            StoreError::VersionConflict { .. } => ApiError::precondition_failed(error.to_string()),
            StoreError::Unreachable(_) => {
                let mut api = ApiError::unavailable(format!(
                    "the database is unreachable; try again shortly ({error})"
                ));
                api.store_failure = true;
                api
            }
            StoreError::Database(_)
            | StoreError::Postgres(_)
            | StoreError::TargetNotEmpty(_)
            | StoreError::Setup(_)
            | StoreError::Migration(_)
            | StoreError::Corrupt { .. } => {
                let mut api = ApiError::internal(error);
                api.store_failure = true;
                api
            }
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Store(error) => ApiError::from(error),
            DomainError::Invalid(error) => ApiError::invalid(error),
            DomainError::Rejected {
                kind,
                message,
                field,
            } => {
                let code = match kind {
                    Rejection::BadRequest => ErrorCode::BadRequest,
                    Rejection::NotFound => ErrorCode::NotFound,
                    Rejection::Conflict => ErrorCode::Conflict,
                    Rejection::PreconditionFailed => ErrorCode::PreconditionFailed,
                    Rejection::InvalidPercentage => ErrorCode::InvalidPercentage,
                    Rejection::RolloutVariants => ErrorCode::RolloutVariants,
                    Rejection::TargetingTooComplex => ErrorCode::TargetingTooComplex,
                    Rejection::Rollout => ErrorCode::Rollout,
                    Rejection::FlagTooLarge => ErrorCode::FlagTooLarge,
                    Rejection::OutOfRange => ErrorCode::OutOfRange,
                    Rejection::ManagedByGit => ErrorCode::ManagedByGit,
                    Rejection::Unauthorized => ErrorCode::Unauthorized,
                    Rejection::Forbidden => ErrorCode::Forbidden,
                    Rejection::Unavailable => ErrorCode::Unavailable,
                };
                let mut api = ApiError::new(code, message);
                api.path = field;
                api
            }
            DomainError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than the server's limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ),
            _ => ApiError::bad_request(format!("malformed JSON body: {}", rejection.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<RawPathParamsRejection> for ApiError {
    fn from(rejection: RawPathParamsRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
    }
}
