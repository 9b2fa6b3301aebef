//! `/api/v1/auth/whoami` (who the server takes the caller for, and what it may use) and
//! `/api/v1/auth/oidc` (the OIDC trust policies in force).

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::api::auth::{Caller, UnscopedAdmin};
use crate::state::AppState;

/// The caller's identity: actor, role, environments (absent: every one) and credential.
pub async fn whoami(caller: Caller) -> impl IntoResponse {
    axum::Json(caller.0.identity())
}

/// The trusted issuers, their rules and key caches (keys are public: nothing secret is shown).
/// Only an admin for every environment may read them.
pub async fn oidc(State(state): State<AppState>, _admin: UnscopedAdmin) -> impl IntoResponse {
    axum::Json(match state.oidc.get() {
        Some(oidc) => oidc.describe(),
        None => json!({ "issuers": [] }),
    })
}
