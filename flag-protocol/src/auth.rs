//! Identity: `GET /api/v1/auth/whoami`, who the server takes a credential for and what it may
//! use (`flagctl auth whoami` prints it). Documented in the server repository's `docs/AUTH.md`.

use serde::{Deserialize, Serialize};

/// The path of the identity endpoint.
pub const WHOAMI_PATH: &str = "/api/v1/auth/whoami";

/// The answer of `GET /api/v1/auth/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The name the audit log and `updatedBy` record: a token's name, or
    /// `oidc:<issuer host>:<sub>` for a workload.
    pub actor: String,
    /// `admin` or `sdk`.
    pub role: String,
    /// The environments it may use, sorted; absent for every environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// How it authenticated.
    pub credential: Credential,
}

/// The credential a caller presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Credential {
    /// A token (`flg_...`).
    Token {
        /// Its public id (`tok_...`).
        id: String,
        /// Its name.
        name: String,
    },
    /// An OIDC ID token that a trust rule admitted.
    Oidc {
        /// The `iss` claim.
        issuer: String,
        /// The `sub` claim.
        subject: String,
        /// The `exp` claim, unix seconds.
        #[serde(rename = "expiresAt")]
        expires_at: i64,
        /// The admitting rule: its `name`, else its position (`rules[2]`).
        rule: String,
    },
}
