//! Dashboard sessions: an admin token exchanged for a session id (the browser keeps only the id,
//! in an `HttpOnly` cookie) and a CSRF token every write must repeat.
//!
//! A session remembers which token signed it in (by the token's hash), not what the token was
//! allowed then: every request resolves the token again, so revoking the token or narrowing it
//! ends or narrows its sessions at once. Sessions end on sign-out, after `idle` without a
//! request, and `absolute` after sign-in. They are kept in memory: a restart signs everyone out,
//! and with several replicas a browser must stick to one (see docs/DASHBOARD.md).

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use super::access::Principal;
use super::tokens::{TokenCache, hash_secret};
use crate::store::Role;

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Seconds without a request after which a session ends.
    pub idle: i64,
    /// Seconds after sign-in after which a session ends, however busy.
    pub absolute: i64,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle: 30 * 60,
            absolute: 12 * 60 * 60,
        }
    }
}

/// At most this many sessions; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    token_hash: [u8; 32],
    csrf: String,
    signed_in_at: i64,
    last_seen: i64,
}

/// A new session: the cookie's value and the CSRF token the page must send on writes.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session id (the cookie's value).
    pub id: String,
    /// The CSRF token.
    pub csrf: String,
    /// Who signed in.
    pub principal: Principal,
}

/// Why a session could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Unknown, signed out, expired, or its token was revoked.
    #[error("no session (signed out, idle for {0}, or its token was revoked): sign in again")]
    Expired(String),
    /// The credential given at sign-in is not an admin token.
    #[error("{0}")]
    NotAdmin(String),
    /// A write without the session's CSRF token.
    #[error(
        "missing or wrong CSRF token: a dashboard write must send the session's X-CSRF-Token header"
    )]
    Csrf,
}

/// Every live session, by the SHA-256 of its id.
#[derive(Debug, Default)]
pub struct Sessions {
    policy: Mutex<SessionPolicy>,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// No sessions, with this policy.
    pub fn new(policy: SessionPolicy) -> Sessions {
        Sessions {
            policy: Mutex::new(policy),
            by_hash: Mutex::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> SessionPolicy {
        *self
            .policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets how long an unused session lives (at start; at least a second).
    pub fn set_idle(&self, idle: std::time::Duration) {
        let seconds = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX).max(1);
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .idle = seconds;
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn idle_text(&self) -> String {
        humantime::format_duration(std::time::Duration::from_secs(
            u64::try_from(self.policy().idle).unwrap_or(0),
        ))
        .to_string()
    }

    /// Signs an admin token in. Sdk tokens and unknown secrets are refused.
    pub fn sign_in(
        &self,
        tokens: &TokenCache,
        secret: &str,
        now: i64,
    ) -> Result<NewSession, SessionError> {
        let Some(token) = tokens.authenticate(secret.trim()) else {
            return Err(SessionError::NotAdmin(
                "invalid or revoked token: sign in with an admin token".to_owned(),
            ));
        };
        if token.role != Role::Admin {
            return Err(SessionError::NotAdmin(format!(
                "token {:?} is an sdk token; the dashboard needs an admin token",
                token.name
            )));
        }
        let id = random_hex();
        let csrf = random_hex();
        let session = Session {
            token_hash: token.hash,
            csrf: csrf.clone(),
            signed_in_at: now,
            last_seen: now,
        };
        let mut sessions = self.sessions();
        self.prune(&mut sessions, now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(hash, _)| *hash)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(hash_secret(&id), session);
        Ok(NewSession {
            id,
            csrf,
            principal: Principal::from_token(token),
        })
    }

    fn prune(&self, sessions: &mut HashMap<[u8; 32], Session>, now: i64) {
        let policy = self.policy();
        sessions.retain(|_, s| live(policy, s, now));
    }

    /// The principal of session `id` now, checking `csrf` when the request writes; the session
    /// counts as used.
    pub fn authenticate(
        &self,
        tokens: &TokenCache,
        id: &str,
        csrf: Option<&str>,
        writes: bool,
        now: i64,
    ) -> Result<(Principal, String), SessionError> {
        let hash = hash_secret(id);
        let mut sessions = self.sessions();
        let expired = || SessionError::Expired(self.idle_text());
        let session = sessions.get_mut(&hash).ok_or_else(expired)?;
        if !live(self.policy(), session, now) {
            sessions.remove(&hash);
            return Err(expired());
        }
        let Some(token) = tokens.by_hash(&session.token_hash) else {
            // Revoked since sign-in.
            sessions.remove(&hash);
            return Err(expired());
        };
        if writes {
            let given = csrf.unwrap_or_default().as_bytes();
            if !bool::from(given.ct_eq(session.csrf.as_bytes())) {
                return Err(SessionError::Csrf);
            }
        }
        session.last_seen = now;
        Ok((Principal::from_token(token), session.csrf.clone()))
    }

    /// The principal of session `id`, without counting as a use (the event stream: following
    /// it must not keep an idle session alive).
    pub fn peek(&self, tokens: &TokenCache, id: &str, now: i64) -> Result<Principal, SessionError> {
        let sessions = self.sessions();
        sessions
            .get(&hash_secret(id))
            .filter(|s| live(self.policy(), s, now))
            .and_then(|s| tokens.by_hash(&s.token_hash))
            .map(Principal::from_token)
            .ok_or_else(|| SessionError::Expired(self.idle_text()))
    }

    /// Ends session `id` (sign-out); `false` if there was none.
    pub fn sign_out(&self, id: &str) -> bool {
        self.sessions().remove(&hash_secret(id)).is_some()
    }

    /// How many sessions are live.
    pub fn len(&self, now: i64) -> usize {
        let mut sessions = self.sessions();
        self.prune(&mut sessions, now);
        sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self, now: i64) -> bool {
        self.len(now) == 0
    }
}

fn live(policy: SessionPolicy, session: &Session, now: i64) -> bool {
    now.saturating_sub(session.last_seen) < policy.idle
        && now.saturating_sub(session.signed_in_at) < policy.absolute
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tokens::generate_secret;
    use crate::store::TokenRecord;

    fn token(role: Role, secret: &str, id: &str) -> TokenRecord {
        TokenRecord {
            id: id.to_owned(),
            name: format!("{id}-name"),
            role,
            environment: (role == Role::Sdk).then(|| "default".to_owned()),
            environments: None,
            hash: hash_secret(secret),
            created_at: 0,
            revoked_at: None,
        }
    }

    #[test]
    fn a_session_lives_while_used_ends_when_idle_and_needs_csrf_to_write() {
        let tokens = TokenCache::default();
        let admin = generate_secret(Role::Admin);
        let sdk = generate_secret(Role::Sdk);
        tokens.insert(token(Role::Admin, &admin, "tok_admin"));
        tokens.insert(token(Role::Sdk, &sdk, "tok_sdk"));
        let sessions = Sessions::new(SessionPolicy {
            idle: 600,
            absolute: 3_600,
        });
        assert!(matches!(
            sessions.sign_in(&tokens, &sdk, 0),
            Err(SessionError::NotAdmin(m)) if m.contains("sdk token")
        ));
        assert!(sessions.sign_in(&tokens, "nope", 0).is_err());
        let new = sessions.sign_in(&tokens, &admin, 0).unwrap();
        assert_ne!(new.id, new.csrf);
        // Reads need no CSRF token; writes need the right one.
        let (who, csrf) = sessions
            .authenticate(&tokens, &new.id, None, false, 100)
            .unwrap();
        assert_eq!(
            (who.actor.as_str(), csrf.as_str()),
            ("tok_admin-name", new.csrf.as_str())
        );
        assert_eq!(
            sessions
                .authenticate(&tokens, &new.id, None, true, 100)
                .unwrap_err(),
            SessionError::Csrf
        );
        assert_eq!(
            sessions
                .authenticate(&tokens, &new.id, Some("0000"), true, 100)
                .unwrap_err(),
            SessionError::Csrf
        );
        assert!(
            sessions
                .authenticate(&tokens, &new.id, Some(&new.csrf), true, 650)
                .is_ok()
        );
        // 600 s idle after the last use (650) ends it.
        assert!(matches!(
            sessions.authenticate(&tokens, &new.id, None, false, 1_250),
            Err(e @ SessionError::Expired(_)) if e.to_string().contains("idle for 10m")
        ));
        assert!(sessions.is_empty(1_250));
    }

    #[test]
    fn sign_out_revocation_and_the_absolute_limit_end_sessions() {
        let tokens = TokenCache::default();
        let admin = generate_secret(Role::Admin);
        tokens.insert(token(Role::Admin, &admin, "tok_admin"));
        let sessions = Sessions::new(SessionPolicy {
            idle: 600,
            absolute: 1_000,
        });
        let one = sessions.sign_in(&tokens, &admin, 0).unwrap();
        assert!(sessions.sign_out(&one.id));
        assert!(
            sessions
                .authenticate(&tokens, &one.id, None, false, 1)
                .is_err()
        );
        assert!(!sessions.sign_out(&one.id));

        let busy = sessions.sign_in(&tokens, &admin, 0).unwrap();
        for now in (100..1_000).step_by(100) {
            assert!(
                sessions
                    .authenticate(&tokens, &busy.id, None, false, now)
                    .is_ok()
            );
        }
        assert!(
            sessions
                .authenticate(&tokens, &busy.id, None, false, 1_000)
                .is_err()
        );

        let revoked = sessions.sign_in(&tokens, &admin, 2_000).unwrap();
        tokens.remove("tok_admin");
        assert!(
            sessions
                .authenticate(&tokens, &revoked.id, None, false, 2_001)
                .is_err()
        );
    }
}
