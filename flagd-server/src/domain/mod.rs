//! The domain layer: what the server does, apart from how it is asked (HTTP lives in `api/`).
//!
//! Layers, each importing only the ones before it:
//!
//! ```text
//! store  <-  domain (flags, ramp, tokens, access, oidc, hub, replication)  <-  http (api/, error.rs, state.rs)  <-  lib.rs
//! ```
//!
//! Domain code returns [`DomainError`] (what went wrong, in its own terms); the HTTP layer turns
//! it into an `ApiError` with a status and a wire code, and logs internal errors where they
//! become responses.

pub mod access;
pub mod analysis;
pub mod condition;
pub mod flags;
pub mod gitops;
pub mod hub;
pub mod oidc;
pub mod ramp;
pub mod replication;
pub mod sessions;
pub mod tokens;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flag_core::ValidationError;

use crate::metrics::Metrics;
use crate::store::{Attribution, Environment, FlagChange, FlagStore, StoreError};

/// The current time in unix seconds. Injected so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            })
    })
}

/// Everything domain operations need: the store (publishing to the hub), the hub, the token
/// cache, the clock and the ramp coordination. Cheap to clone.
#[derive(Clone)]
pub struct Domain(Arc<DomainState>);

impl std::ops::Deref for Domain {
    type Target = DomainState;

    fn deref(&self) -> &DomainState {
        &self.0
    }
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// What [`Domain`] shares.
pub struct DomainState {
    /// Flag storage, publishing every commit to `hub` (blocking; use [`blocking`]).
    pub store: Arc<dyn FlagStore>,
    /// The same store, as the publisher that can also catch the hub up on other replicas'
    /// commits.
    pub publisher: Arc<hub::PublishingStore>,
    /// Whether this replica runs the ramp scheduler (set once at start; unset = always).
    pub leadership: std::sync::OnceLock<crate::store::Leadership>,
    /// Following other replicas' commits (PostgreSQL), for `/readyz`.
    pub replication: replication::Replication,
    /// Active tokens, for authentication without touching the store.
    pub tokens: tokens::TokenCache,
    /// The time.
    pub clock: Clock,
    /// Live snapshots, patches, the version broadcast and stream clients.
    pub hub: Arc<hub::Hub>,
    /// Serialises ramp state changes (API calls and the scheduler).
    pub ramps: ramp::RampLock,
    /// The ramps whose guard is being checked.
    pub guard_checks: ramp::GuardChecks,
    /// Whether the ramp scheduler runs (for `/readyz`).
    pub scheduler: ramp::SchedulerHealth,
    /// Whether writes refuse warnings by default (`--strict`; `?strict=` overrides per request).
    pub strict_writes: AtomicBool,
    /// This server's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// CAs trusted for `https://` ramp guards besides the public roots (`--guard-ca`), set once
    /// at start.
    pub guard_ca: std::sync::OnceLock<Vec<reqwest::Certificate>>,
    /// Git sources (GitOps): repository cache, secrets, per-environment sync locks, metrics.
    pub gitops: gitops::GitOps,
    /// Trusted OIDC issuers (`--oidc-config`), set once at start; unset = none trusted.
    pub oidc: std::sync::OnceLock<oidc::Oidc>,
    /// Evaluation counts not yet written, and their retention.
    pub usage: usage::Usage,
}

impl Domain {
    /// The domain over a store, with a fresh hub loaded from it (blocking: reads every
    /// environment).
    pub fn new(
        store: Arc<dyn FlagStore>,
        tokens: tokens::TokenCache,
        clock: Clock,
    ) -> Result<Domain, StoreError> {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(hub::Hub::new(metrics.clone()));
        let publisher = Arc::new(hub::PublishingStore::new(store, hub.clone())?);
        let store: Arc<dyn FlagStore> = publisher.clone();
        Ok(Domain(Arc::new(DomainState {
            store,
            publisher,
            leadership: std::sync::OnceLock::new(),
            replication: replication::Replication::default(),
            tokens,
            clock,
            hub,
            ramps: ramp::RampLock::default(),
            guard_checks: ramp::GuardChecks::default(),
            scheduler: ramp::SchedulerHealth::default(),
            strict_writes: AtomicBool::new(false),
            metrics,
            guard_ca: std::sync::OnceLock::new(),
            gitops: gitops::GitOps::default(),
            oidc: std::sync::OnceLock::new(),
            usage: usage::Usage::default(),
        })))
    }

    /// The current time (unix seconds).
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The extra CAs for `https://` guards.
    pub fn guard_roots(&self) -> &[reqwest::Certificate] {
        self.guard_ca.get().map_or(&[], Vec::as_slice)
    }

    /// Whether this replica runs the ramp scheduler now.
    pub fn is_leader(&self) -> bool {
        self.leadership
            .get()
            .is_none_or(crate::store::Leadership::is_leader)
    }

    /// Whether writes refuse warnings unless a request says otherwise.
    pub fn strict_by_default(&self) -> bool {
        self.strict_writes.load(Ordering::Relaxed)
    }
}

/// Runs store work on the blocking pool (SQLite never runs on an async worker).
pub async fn blocking<T, F>(domain: &Domain, work: F) -> Result<T, DomainError>
where
    T: Send + 'static,
    F: FnOnce(&dyn FlagStore) -> Result<T, DomainError> + Send + 'static,
{
    blocking_as(domain, work).await
}

/// [`blocking`] for work that answers in another error type a `DomainError` converts into (the
/// HTTP layer's `ApiError`). Callers name the type through their own wrapper, which keeps the
/// closures' `?` unambiguous.
pub async fn blocking_as<T, E, F>(domain: &Domain, work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<DomainError> + Send + 'static,
    F: FnOnce(&dyn FlagStore) -> Result<T, E> + Send + 'static,
{
    let store = domain.store.clone();
    tokio::task::spawn_blocking(move || work(store.as_ref()))
        .await
        .map_err(|error| E::from(DomainError::internal(error)))?
}

/// Deletes a flag (refused unless it is at `expected_version`, when given), then closes its
/// open ramp, if any.
pub async fn delete_flag(
    domain: &Domain,
    environment: &str,
    key: &str,
    expected_version: Option<i64>,
    by: Attribution,
) -> Result<(), DomainError> {
    let (env, flag) = (environment.to_owned(), key.to_owned());
    blocking(domain, move |store| {
        flags::environment_or_not_found(store, &env)?;
        gitops::check_writable(store, &env)?;
        let change = FlagChange::Delete {
            key: flag,
            expected_version,
        };
        store.commit(&env, &[change], None, &by)?;
        Ok(())
    })
    .await?;
    ramp::close_deleted(domain, environment, Some(key)).await;
    Ok(())
}

/// Creates an environment (its name checked first; a scoped admin creates only environments in
/// its scope).
pub async fn create_environment(
    domain: &Domain,
    principal: &access::Principal,
    name: &str,
    by: Attribution,
) -> Result<Environment, DomainError> {
    flags::check_environment_name(name)?;
    principal.check_environment(name)?;
    let name = name.to_owned();
    blocking(domain, move |store| {
        Ok(store.create_environment(&name, &by)?)
    })
    .await
}

/// Deletes an environment (refused while it has flags, unless `force`), its sdk tokens from the
/// cache, and closes its open ramps. The emptiness check and the deletion are one store
/// transaction: a flag created in between cannot be deleted without `force`.
pub async fn delete_environment(
    domain: &Domain,
    name: &str,
    force: bool,
    by: Attribution,
) -> Result<(), DomainError> {
    let environment = name.to_owned();
    blocking(domain, move |store| {
        gitops::check_writable(store, &environment)?;
        Ok(store.delete_environment(&environment, force, &by)?)
    })
    .await?;
    domain.tokens.remove_environment(name);
    domain.gitops.discard(name);
    ramp::close_deleted(domain, name, None).await;
    Ok(())
}

/// Why a request was refused, in domain terms (the HTTP layer picks the status and wire code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The request is malformed (a bad name, a bad value).
    BadRequest,
    /// What it names does not exist.
    NotFound,
    /// It conflicts with the current state.
    Conflict,
    /// The version it expected is not the current one.
    PreconditionFailed,
    /// A rollout percentage outside 0–100 or finer than 0.01.
    InvalidPercentage,
    /// The rolled-out variant is unknown or ambiguous.
    RolloutVariants,
    /// Targeting a rollout cannot edit safely.
    TargetingTooComplex,
    /// Another rollout that cannot be applied.
    Rollout,
    /// A flag definition over the size limit.
    FlagTooLarge,
    /// A value outside its range.
    OutOfRange,
    /// The environment is managed by Git with the `reject` drift policy.
    ManagedByGit,
    /// The credential is missing, malformed, expired or not trusted (401).
    Unauthorized,
    /// The credential is valid but does not grant this (403).
    Forbidden,
    /// Something the request depends on (an OIDC issuer's keys) cannot be reached now (503).
    Unavailable,
}

/// A domain failure.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The store failed or refused (its own error says which).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A flag or document fails validation; every problem is listed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request is refused.
    #[error("{message}")]
    Rejected {
        /// Why.
        kind: Rejection,
        /// For people.
        message: String,
        /// The request field at fault.
        field: Option<String>,
    },
    /// A bug or an impossible state: logged where it becomes a response, answered generically.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    /// A refusal.
    pub fn rejected(kind: Rejection, message: impl Into<String>) -> DomainError {
        DomainError::Rejected {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// [`Rejection::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::BadRequest, message)
    }

    /// [`Rejection::NotFound`].
    pub fn not_found(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::NotFound, message)
    }

    /// [`Rejection::Conflict`].
    pub fn conflict(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::Conflict, message)
    }

    /// [`Rejection::Unauthorized`].
    pub fn unauthorized(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::Unauthorized, message)
    }

    /// [`Rejection::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::Forbidden, message)
    }

    /// [`Rejection::PreconditionFailed`].
    pub fn precondition_failed(message: impl Into<String>) -> DomainError {
        DomainError::rejected(Rejection::PreconditionFailed, message)
    }

    /// A validation failure.
    pub fn invalid(error: ValidationError) -> DomainError {
        DomainError::Invalid(error)
    }

    /// A bug or an impossible state (not logged here: where it becomes a response).
    pub fn internal(error: impl std::fmt::Display) -> DomainError {
        DomainError::Internal(error.to_string())
    }

    /// Names the request field at fault.
    #[must_use]
    pub fn at(self, path: impl Into<String>) -> DomainError {
        match self {
            DomainError::Rejected { kind, message, .. } => DomainError::Rejected {
                kind,
                message,
                field: Some(path.into()),
            },
            other => other,
        }
    }
}
