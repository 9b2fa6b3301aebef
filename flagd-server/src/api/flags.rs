//! `/api/v1/environments/{env}/flags[/{key}[/rollout]]`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use std::collections::BTreeMap;

use flag_core::rollout::{RolloutVariants, Share, current_rollout};
use flag_core::{FlagState, FlagType};
use serde::Deserialize;
use serde_json::{Value, json};

use super::blocking;
use super::{IfMatch, JsonBody, PathParams, Strict, attribution, change_message, etag};
use crate::api::auth::Admin;
use crate::domain::flags::{self as domain_flags, Written};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::StoredFlag;

fn flag_type(flag: &flag_core::Flag) -> Option<FlagType> {
    flag.variants.values().next().and_then(FlagType::of)
}

/// The full view of one flag.
fn view(stored: &StoredFlag) -> Value {
    json!({
        "environment": stored.environment,
        "key": stored.key,
        "version": stored.version,
        "type": flag_type(&stored.flag),
        "createdAt": stored.created_at,
        "updatedAt": stored.updated_at,
        "updatedBy": stored.updated_by,
        "flag": stored.flag,
    })
}

/// The summary row of `list`. `rolloutPercentage` is the true share of the rolled-out variant
/// (a boolean flag's `true` variant; null for other flags and for targeting a rollout cannot
/// describe).
fn summary(
    stored: &StoredFlag,
    evaluators: &BTreeMap<String, Value>,
    usage: Option<&crate::store::UsageSummary>,
    uniform: Option<&str>,
) -> Value {
    let rollout = current_rollout(&stored.flag, evaluators, &RolloutVariants::default()).ok();
    json!({
        "key": stored.key,
        "version": stored.version,
        "state": stored.flag.state,
        "enabled": stored.flag.state == FlagState::Enabled,
        "type": flag_type(&stored.flag),
        "defaultVariant": stored.flag.default_variant,
        "rolloutPercentage": rollout.as_ref().map(|r| r.percentage),
        "rolloutVariant": rollout.map(|r| r.variant),
        "description": stored.flag.description,
        "createdAt": stored.created_at,
        "updatedAt": stored.updated_at,
        "updatedBy": stored.updated_by,
        "lastEvaluated": usage.map(|u| u.last_at),
        "evaluations24h": usage.map_or(0, |u| u.recent),
        "uniformVariant": uniform,
    })
}

fn with_etag(stored: &StoredFlag, status: StatusCode) -> impl IntoResponse + use<> {
    (
        status,
        [(header::ETAG, etag(stored.version))],
        axum::Json(view(stored)),
    )
}

/// A write's answer: the flag view plus `warnings` (what flagd would warn about; the flag
/// evaluates as flagd does).
fn written(written: &Written, status: StatusCode) -> impl IntoResponse + use<> {
    let mut body = view(&written.stored);
    body["warnings"] = json!(written.warnings);
    (
        status,
        [(header::ETAG, etag(written.stored.version))],
        axum::Json(body),
    )
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams(env): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = env.clone();
    let (environment, flags) = blocking(&state, move |store| {
        let environment = domain_flags::environment_or_not_found(store, &name)?;
        Ok((environment, store.flags(&name)?))
    })
    .await?;
    let usage = crate::domain::usage::summary(&state, &env).await?;
    let snapshot = state.hub.snapshot(&env);
    Ok(axum::Json(json!({
        "environment": environment.name,
        "version": environment.version,
        "flags": flags
            .iter()
            .map(|flag| {
                let uniform = snapshot
                    .as_ref()
                    .and_then(|s| s.compiled.uniform_variant(&flag.key));
                // Counts from before a flag was (re-)created belong to the flag deleted then.
                let used = usage.get(&flag.key).filter(|u| u.last_at >= flag.created_at);
                summary(flag, &environment.evaluators, used, uniform)
            })
            .collect::<Vec<_>>(),
    })))
}

pub async fn get(
    State(state): State<AppState>,
    _admin: Admin,
    PathParams((env, key)): PathParams<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let stored = blocking(&state, move |store| {
        domain_flags::environment_or_not_found(store, &env)?;
        store.flag(&env, &key)?.ok_or_else(|| {
            ApiError::not_found(format!(
                "flag {key:?} does not exist in environment {env:?}"
            ))
        })
    })
    .await?;
    Ok(with_etag(&stored, StatusCode::OK))
}

pub async fn put(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    IfMatch(if_match): IfMatch,
    Strict(mode): Strict,
    PathParams((env, key)): PathParams<(String, String)>,
    JsonBody(mut body): JsonBody<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, Some(&mut body))?);
    let (write, created) = blocking(&state, move |store| {
        Ok(domain_flags::put_flag(
            store, &env, &key, &body, if_match, mode, &by,
        )?)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(written(&write, status))
}

pub async fn patch(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    IfMatch(if_match): IfMatch,
    Strict(mode): Strict,
    PathParams((env, key)): PathParams<(String, String)>,
    JsonBody(mut patch): JsonBody<Value>,
) -> Result<impl IntoResponse, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a merge patch must be a JSON object, e.g. {\"state\": \"DISABLED\"}",
        ));
    }
    let by = attribution(&state, &admin, change_message(&headers, Some(&mut patch))?);
    let write = blocking(&state, move |store| {
        Ok(domain_flags::modify_flag(
            store,
            &env,
            &key,
            if_match,
            mode,
            &by,
            |_, definition| {
                domain_flags::merge_patch(definition, &patch);
                Ok(())
            },
        )?)
    })
    .await?;
    Ok(written(&write, StatusCode::OK))
}

pub async fn delete(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    IfMatch(if_match): IfMatch,
    PathParams((env, key)): PathParams<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let by = attribution(&state, &admin, change_message(&headers, None)?);
    crate::domain::delete_flag(&state, &env, &key, if_match, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutRequest {
    /// 0 to 100, in steps of 0.01.
    percentage: f64,
    /// The variant being rolled out. Default: a boolean flag's `true` variant. (`onVariant` is
    /// the older name.)
    #[serde(default, alias = "onVariant")]
    variant: Option<String>,
    /// The variant users outside the rollout get when the flag has no bucket list yet. Default:
    /// what the fallthrough serves now, else a boolean flag's other variant. (`offVariant` is the
    /// older name.)
    #[serde(default, alias = "offVariant")]
    other_variant: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

pub async fn rollout(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    IfMatch(if_match): IfMatch,
    Strict(mode): Strict,
    PathParams((env, key)): PathParams<(String, String)>,
    JsonBody(request): JsonBody<RolloutRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let share = Share::from_percentage(request.percentage).map_err(domain_flags::rollout_error)?;
    let change = domain_flags::RolloutChange {
        share,
        variants: RolloutVariants {
            variant: request.variant,
            others: request.other_variant,
        },
    };
    // A running ramp owns the rollout: a manual edit would be overwritten at its next step. The
    // ramp lock makes the check and the write one step, so a ramp cannot start in between.
    let _ramps = state.ramps.lock().await;
    if let Some(ramp) = crate::domain::ramp::open_ramp(&state, &env, &key).await?
        && ramp.state == crate::domain::ramp::RampState::Active
    {
        return Err(ApiError::conflict(format!(
            "flag {key:?} is being ramped (step {} of {}); pause or abort the ramp first (flagctl ramp pause|abort {key})",
            ramp.current_step + 1,
            ramp.steps.len(),
        )));
    }
    let by = attribution(
        &state,
        &admin,
        change_message(&headers, None)?.or(request.message),
    );
    let write = blocking(&state, move |store| {
        Ok(domain_flags::rollout(
            store, &env, &key, &change, if_match, mode, &by,
        )?)
    })
    .await?;
    Ok(written(&write, StatusCode::OK))
}
