//! `/api/v1/environments/{env}/source[/sync]`: GitOps sources (`domain/gitops.rs`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use flag_protocol::source::{SIGNATURE_HEADER, SourceSpec};

use super::{JsonBody, PathParams, attribution, change_message};
use crate::api::auth::{Admin, UnscopedAdmin};
use crate::domain::gitops;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(gitops::show(&state, &env).await?))
}

/// Binds a source: admins for every environment only. A source is fetched with server-wide
/// means: named secrets (`credentials`, `webhookSecret`) any environment's source may name, and
/// the server's own Git access (its ssh keys, local paths); an admin confined to environments
/// could send those to a repository it chooses.
pub async fn bind(
    State(state): State<AppState>,
    UnscopedAdmin(admin): UnscopedAdmin,
    headers: HeaderMap,
    PathParams(env): PathParams<String>,
    JsonBody(spec): JsonBody<SourceSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, None)?);
    let (view, created) = gitops::bind(&state, &env, spec, by).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)))
}

pub async fn unbind(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, None)?);
    gitops::unbind(&state, &env, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The header GitLab sends its webhook secret in.
const GITLAB_TOKEN_HEADER: &str = "x-gitlab-token";

/// Reconciles now. Allowed to an admin token, or to a webhook that signs its body with the
/// source's webhook secret (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`, as GitHub, Gitea
/// and Forgejo send it), or that sends the secret itself (`X-Gitlab-Token`, GitLab's way).
pub async fn sync(
    State(state): State<AppState>,
    admin: Result<Admin, ApiError>,
    headers: HeaderMap,
    PathParams(env): PathParams<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if let Err(denied) = admin {
        let signature = headers.get(SIGNATURE_HEADER);
        let gitlab = headers.get(GITLAB_TOKEN_HEADER);
        if signature.is_none() && gitlab.is_none() {
            return Err(denied);
        }
        // The same answer whether the environment, the source or its webhook secret is missing,
        // or the signature is wrong: nothing is revealed to an unauthenticated caller.
        let secret = gitops::webhook_secret(&state, &env).await.ok().flatten();
        let valid = secret.is_some_and(|secret| match (signature, gitlab) {
            (Some(signature), _) => {
                gitops::signature_matches(&secret, &body, signature.to_str().unwrap_or_default())
            }
            (None, Some(token)) => {
                use subtle::ConstantTimeEq as _;
                bool::from(token.as_bytes().ct_eq(secret.as_bytes()))
            }
            (None, None) => false,
        });
        if !valid {
            return Err(ApiError::unauthorized(format!(
                "the webhook's {SIGNATURE_HEADER} signature (or {GITLAB_TOKEN_HEADER}) does not match the source's webhook secret"
            )));
        }
    }
    Ok(axum::Json(gitops::sync(&state, &env).await?))
}
