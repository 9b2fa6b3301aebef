//! Tokens: generation, hashing and the in-memory cache of active tokens (the extractors that
//! authenticate requests with it are `api/auth.rs`).
//!
//! A token is shown once, when created; the store keeps only its SHA-256. Requests are matched
//! by that hash in an in-memory map (so authentication never touches SQLite); the stored hash is
//! then compared in constant time. Looking up by hash leaks nothing useful: the secret has 256
//! random bits, and learning where its hash sorts does not help find it.

use std::sync::Arc;

use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::access::{self, Principal};
use super::{Domain, DomainError, blocking};
use crate::store::{Attribution, Operation, Role, TokenRecord};

/// A new secret: a readable prefix naming the role, then 256 random bits in hex.
pub fn generate_secret(role: Role) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("flg_{}_{}", role.as_str(), hex::encode(bytes))
}

/// A new public token id.
pub fn generate_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("tok_{}", hex::encode(bytes))
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

    /// Makes the cache hold exactly the active tokens among `tokens` (as another replica left
    /// the store), without a moment where a still-active token is missing. Returns the ids of
    /// tokens that were active and no longer are (their streams must end).
    pub fn replace(&self, tokens: impl IntoIterator<Item = TokenRecord>) -> Vec<String> {
        let active: std::collections::HashMap<[u8; 32], TokenRecord> = tokens
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .map(|t| (t.hash, t))
            .collect();
        let mut gone = Vec::new();
        self.by_hash.retain(|hash, token| {
            let keep = active.contains_key(hash);
            if !keep {
                gone.push(token.id.clone());
            }
            keep
        });
        for (hash, token) in active {
            self.by_hash.insert(hash, token);
        }
        gone
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

    /// The active token with this hash (a dashboard session's token, `sessions.rs`).
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<TokenRecord> {
        self.by_hash.get(hash).map(|entry| entry.value().clone())
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

/// Creates a token; returns its record and its secret (shown once, never stored). A name is 1 to
/// 100 printable characters (names become audit actors and log fields: no control characters,
/// so no forged lines); an sdk token names its environment; an admin token may be confined to
/// `environments` (each existing). A scoped creator creates only tokens within its own scope.
pub async fn create(
    domain: &Domain,
    creator: &Principal,
    name: &str,
    role: Role,
    environment: Option<String>,
    environments: Option<Vec<String>>,
) -> Result<(TokenRecord, String), DomainError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > 100 || !access::is_plain_text(&name) {
        return Err(DomainError::bad_request(
            "a token name must be 1 to 100 printable characters (no line breaks, control or invisible characters)",
        )
        .at("name"));
    }
    if let Some(prefix) = access::RESERVED_ACTOR_PREFIXES
        .iter()
        .find(|prefix| name.starts_with(**prefix))
    {
        return Err(DomainError::bad_request(format!(
            "token names starting with {prefix:?} are reserved: the audit log uses them for the server's own actors"
        ))
        .at("name"));
    }
    // A workload's ID token lives minutes and cannot be revoked; a token it minted would outlive
    // it. Pipelines that need a token get one from an admin.
    if matches!(creator.credential, access::Credential::Oidc { .. }) {
        return Err(DomainError::forbidden(format!(
            "workload {} authenticated with an ID token, which may not create tokens (a token would outlive it); ask an admin for one",
            creator.actor
        )));
    }
    let environments = match (role, &environment, environments) {
        (Role::Sdk, None, _) => {
            return Err(
                DomainError::bad_request("an sdk token needs the environment it may read")
                    .at("environment"),
            );
        }
        (Role::Sdk, Some(_), Some(_)) => {
            return Err(DomainError::bad_request(
                "an sdk token reads one environment: give environment, not environments",
            )
            .at("environments"));
        }
        (Role::Admin, Some(_), _) => {
            return Err(DomainError::bad_request(
                "an admin token takes environments (a list; omit it for every environment), not environment",
            )
            .at("environment"));
        }
        (Role::Sdk, Some(_), None) => None,
        (Role::Admin, None, None) => None,
        (Role::Admin, None, Some(names)) => {
            let names = access::normalise_scope(names, "environments")?;
            for (index, name) in names.iter().enumerate() {
                if domain.hub.snapshot(name).is_none() {
                    return Err(DomainError::not_found(format!(
                        "environment {name:?} does not exist"
                    ))
                    .at(format!("environments[{index}]")));
                }
            }
            Some(names)
        }
    };
    let secret = generate_secret(role);
    let record = TokenRecord {
        environments,
        id: generate_id(),
        name,
        role,
        environment,
        hash: hash_secret(&secret),
        created_at: domain.now(),
        revoked_at: None,
    };
    if !creator.covers_token(&record) {
        return Err(DomainError::forbidden(format!(
            "{} is confined to {}; it cannot create a token for {}",
            creator.described(),
            creator.scope_text(),
            Principal::from_token(record.clone()).scope_text()
        )));
    }
    let stored = record.clone();
    blocking(domain, move |store| Ok(store.insert_token(&stored)?)).await?;
    domain.tokens.insert(record.clone());
    audit(domain, creator, &record, Operation::TokenCreated).await;
    Ok((record, secret))
}

/// The tokens a principal may see: every one, or, for a scoped admin, those within its scope.
pub async fn list(domain: &Domain, viewer: &Principal) -> Result<Vec<TokenRecord>, DomainError> {
    let tokens = blocking(domain, |store| Ok(store.tokens()?)).await?;
    Ok(tokens
        .into_iter()
        .filter(|token| viewer.covers_token(token))
        .collect())
}

/// Revokes a token. The last-admin check and the revocation are one store transaction
/// (`FlagStore::revoke_token`), so two admins revoking each other cannot both succeed. A scoped
/// admin revokes only tokens within its scope (403 for others).
pub async fn revoke(domain: &Domain, revoker: &Principal, id: &str) -> Result<(), DomainError> {
    if !revoker.is_unscoped() {
        let tokens = blocking(domain, |store| Ok(store.tokens()?)).await?;
        // An unknown id falls through to the store's "no such token".
        if let Some(token) = tokens.iter().find(|token| token.id == id)
            && !revoker.covers_token(token)
        {
            return Err(DomainError::forbidden(format!(
                "{} is confined to {}; token {id:?} is not within it",
                revoker.described(),
                revoker.scope_text()
            )));
        }
    }
    let at = domain.now();
    let revoke_id = id.to_owned();
    let revoked = blocking(domain, move |store| Ok(store.revoke_token(&revoke_id, at)?)).await?;
    domain.tokens.remove(id);
    audit(domain, revoker, &revoked, Operation::TokenRevoked).await;
    Ok(())
}

/// Records a token's creation or revocation in the audit log of the environments it covers
/// (`*` for an admin of every environment), naming it (never its secret or hash). The token
/// change has happened by then: a failure to record it is logged, not returned.
async fn audit(domain: &Domain, by: &Principal, token: &TokenRecord, operation: Operation) {
    let environments = match (token.role, &token.environment, &token.environments) {
        (Role::Sdk, Some(environment), _) => vec![environment.clone()],
        (Role::Admin, _, Some(environments)) => environments.clone(),
        _ => vec!["*".to_owned()],
    };
    let details = serde_json::json!({
        "id": token.id,
        "name": token.name,
        "role": token.role.as_str(),
        "environment": token.environment,
        "environments": token.environments,
    });
    let attribution = Attribution {
        actor: by.actor.clone(),
        message: None,
        at: domain.now(),
    };
    let recorded = blocking(domain, move |store| {
        for environment in &environments {
            store.record_event(environment, None, operation.clone(), &details, &attribution)?;
        }
        Ok(())
    })
    .await;
    if let Err(error) = recorded {
        tracing::error!(token = %token.id, %error, "the token change is done but could not be recorded in the audit log");
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
            environments: None,
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
