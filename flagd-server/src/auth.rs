//! Tokens: generation, hashing, the in-memory cache, and the extractors that authenticate
//! requests.
//!
//! A token is shown once, when created; the store keeps only its SHA-256. Requests are matched
//! by that hash in an in-memory map (so authentication never touches SQLite); the stored hash is
//! then compared in constant time. Looking up by hash leaks nothing useful: the secret has 256
//! random bits, and learning where its hash sorts does not help find it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Role, TokenRecord};

/// A new secret: a readable prefix naming the role, then 256 random bits in hex.
pub fn generate_secret(role: Role) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("flg_{}_{hex}", role.as_str())
}

/// A new public token id.
pub fn generate_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("tok_{hex}")
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The active (unrevoked) tokens, by hash.
#[derive(Debug, Default, Clone)]
pub struct TokenCache {
    by_hash: Arc<DashMap<[u8; 32], TokenRecord>>,
}

impl TokenCache {
    /// Replaces the cache's contents with these records (revoked ones are skipped).
    pub fn load(&self, tokens: impl IntoIterator<Item = TokenRecord>) {
        self.by_hash.clear();
        for token in tokens {
            self.insert(token);
        }
    }

    /// Adds a token (ignored if revoked).
    pub fn insert(&self, token: TokenRecord) {
        if token.revoked_at.is_none() {
            self.by_hash.insert(token.hash, token);
        }
    }

    /// Removes a token by id.
    pub fn remove(&self, id: &str) {
        self.by_hash.retain(|_, token| token.id != id);
    }

    /// Removes the sdk tokens of an environment.
    pub fn remove_environment(&self, environment: &str) {
        self.by_hash
            .retain(|_, token| token.environment.as_deref() != Some(environment));
    }

    /// The active token with this secret.
    pub fn authenticate(&self, secret: &str) -> Option<TokenRecord> {
        let hash = hash_secret(secret);
        let entry = self.by_hash.get(&hash)?;
        bool::from(entry.hash.ct_eq(&hash)).then(|| entry.value().clone())
    }

    /// Whether the token with this id is active.
    pub fn is_active(&self, id: &str) -> bool {
        self.by_hash.iter().any(|t| t.id == id)
    }

    /// How many active admin tokens there are.
    pub fn active_admins(&self) -> usize {
        self.by_hash
            .iter()
            .filter(|t| t.role == Role::Admin)
            .count()
    }
}

/// The secret of an `Authorization: Bearer` header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header: send `Authorization: Bearer <token>`",
            )
        })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, secret) = value.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("malformed Authorization header: expected `Bearer <token>`")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "malformed Authorization header: expected `Bearer <token>`",
        ));
    }
    Ok(secret.trim())
}

/// The secret of `Authorization: Bearer` or, for OFREP clients, `X-API-Key`.
fn sdk_secret(parts: &Parts) -> Result<&str, ApiError> {
    if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        return bearer(parts);
    }
    match parts.headers.get("x-api-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.trim().is_empty() => Ok(key.trim()),
        Some(_) => Err(ApiError::unauthorized("malformed X-API-Key header")),
        None => Err(ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <token>` or `X-API-Key: <token>`",
        )),
    }
}

/// A token allowed to read one environment (evaluation and streaming): an sdk token for its
/// own environment, or an admin token naming one with `?environment=`.
#[derive(Debug, Clone)]
pub struct EnvironmentAccess {
    /// The token.
    pub token: TokenRecord,
    /// The environment it reads.
    pub environment: String,
}

impl FromRequestParts<AppState> for EnvironmentAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secret = sdk_secret(parts)?;
        let token = state
            .tokens
            .authenticate(secret)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
        // Decoded as every other query parameter is (`%65nv` is `env`); given twice, it is
        // ambiguous, and refused the same way on every route that takes it.
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)?.0;
        let mut named = pairs
            .into_iter()
            .filter(|(name, _)| name == "environment")
            .map(|(_, value)| value);
        let requested = named.next();
        if named.next().is_some() {
            return Err(ApiError::bad_request(
                "environment is given more than once: name one environment",
            )
            .at("environment"));
        }
        let environment = match (token.role, &token.environment, requested) {
            (Role::Sdk, Some(own), Some(requested)) if *own != requested => {
                return Err(ApiError::forbidden(format!(
                    "this sdk token reads environment {own:?}, not {requested:?}"
                )));
            }
            (Role::Sdk, Some(own), _) => own.clone(),
            (Role::Sdk, None, _) => {
                return Err(ApiError::forbidden("this sdk token has no environment"));
            }
            (Role::Admin, _, Some(requested)) => requested,
            (Role::Admin, _, None) => {
                return Err(ApiError::bad_request(
                    "an admin token must name the environment: add ?environment=NAME",
                )
                .at("environment"));
            }
        };
        if state.hub.snapshot(&environment).is_none() {
            return Err(ApiError::not_found(format!(
                "environment {environment:?} does not exist"
            )));
        }
        Ok(EnvironmentAccess { token, environment })
    }
}

/// An authenticated admin: the extractor every admin route takes.
#[derive(Debug, Clone)]
pub struct Admin(pub TokenRecord);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?;
        let token = state
            .tokens
            .authenticate(secret)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
        if token.role != Role::Admin {
            return Err(ApiError::forbidden(format!(
                "token {:?} is an sdk token; this route needs an admin token",
                token.name
            )));
        }
        Ok(Admin(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let a = generate_secret(Role::Admin);
        let b = generate_secret(Role::Admin);
        assert_ne!(a, b);
        assert!(a.starts_with("flg_admin_"));
        assert_eq!(a.len(), "flg_admin_".len() + 64);
        assert!(generate_secret(Role::Sdk).starts_with("flg_sdk_"));
    }

    #[test]
    fn the_cache_authenticates_by_secret_and_forgets_revoked_tokens() {
        let cache = TokenCache::default();
        let secret = generate_secret(Role::Admin);
        let record = TokenRecord {
            id: "tok_1".into(),
            name: "ops".into(),
            role: Role::Admin,
            environment: None,
            hash: hash_secret(&secret),
            created_at: 0,
            revoked_at: None,
        };
        cache.insert(record);
        assert_eq!(
            cache.authenticate(&secret).map(|t| t.id),
            Some("tok_1".to_owned())
        );
        assert!(cache.authenticate("flg_admin_wrong").is_none());
        cache.remove("tok_1");
        assert!(cache.authenticate(&secret).is_none());
    }
}
