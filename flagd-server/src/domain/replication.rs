//! Several replicas on one PostgreSQL database: each follows the others' commits.
//!
//! The store's listener ([`crate::store::PostgresStore::listen`]) forwards the database's
//! notifications here. Each one names an environment and the version a commit produced; the hub
//! catches up from the change log, in order (`PublishingStore::catch_up`). Token changes reload
//! the token cache (and end the streams of revoked tokens). Every [`POLL_INTERVAL`], and whenever
//! the listener (re)connects, everything is compared with the database anyway: notifications
//! sent while a replica was not listening are never missed for long.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::{Domain, DomainError, blocking};
use crate::store::{Heartbeat, Notice};

/// How often a replica compares its hub and token cache with the database even when
/// notifications arrive: the safety net under `LISTEN`.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long the notification connection may go without proving alive before this replica says
/// it is not ready (it checks itself every 2 s; a hung connection blocks it).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);

/// How long one catch-up may take before this replica says it is not ready (a database query
/// that hangs must not silently stop the following).
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// Whether this replica follows the database's notifications, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Replication {
    following: AtomicBool,
    connected: AtomicBool,
    /// A catch-up with the database timed out, and none has succeeded since.
    stalled: AtomicBool,
    /// The notification connection has not proved alive for [`SILENCE_LIMIT`].
    silent: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Replication {
    /// `Err(why)` while this replica follows a database and has lost its notification
    /// connection (it would serve stale flags without noticing).
    pub fn check(&self) -> Result<(), String> {
        if !self.following.load(Ordering::Acquire) || self.healthy() {
            return Ok(());
        }
        if self.silent.load(Ordering::Acquire) && self.connected.load(Ordering::Acquire) {
            return Err(format!(
                "the notification connection has not answered for over {} s",
                SILENCE_LIMIT.as_secs()
            ));
        }
        if self.stalled.load(Ordering::Acquire) {
            return Err(format!(
                "the database did not answer a catch-up within {} s",
                CATCH_UP_LIMIT.as_secs()
            ));
        }
        let problem = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "not connected yet".to_owned());
        Err(format!(
            "not following the database's changes (reconnecting): {problem}"
        ))
    }

    /// `Some(connected)` when following a database.
    pub fn connected(&self) -> Option<bool> {
        self.following
            .load(Ordering::Acquire)
            .then(|| self.healthy())
    }

    fn healthy(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && !self.stalled.load(Ordering::Acquire)
            && !self.silent.load(Ordering::Acquire)
    }

    fn set(&self, connected: bool, problem: Option<String>) {
        self.connected.store(connected, Ordering::Release);
        *self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }
}

/// Follows `notices` until `stop` (or until the listener ends). `heartbeat` is the listening
/// connection's: when it goes silent for [`SILENCE_LIMIT`] the replica reports not ready until
/// it beats again.
pub async fn follow(
    domain: Domain,
    mut notices: UnboundedReceiver<Notice>,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) {
    domain.replication.following.store(true, Ordering::Release);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The watchdog runs on its own: a catch-up waiting on a hung query must not hold it up.
    tokio::spawn(watch_heartbeat(domain.clone(), heartbeat, stop.clone()));
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => return,
            notice = notices.recv() => notice,
            _ = poll.tick() => {
                let result = bounded(&domain, catch_up_everything(&domain)).await;
                if let Err(error) = result {
                    tracing::warn!(%error, "cannot compare with the database; will retry");
                }
                continue;
            }
        };
        let result = match notice {
            None => {
                domain
                    .replication
                    .set(false, Some("the notification listener stopped".into()));
                return;
            }
            Some(Notice::Connected) => {
                domain.replication.set(true, None);
                tracing::info!("following the database's changes");
                bounded(&domain, catch_up_everything(&domain)).await
            }
            Some(Notice::Disconnected(why)) => {
                domain.replication.set(false, Some(why));
                Ok(())
            }
            Some(Notice::Changed {
                environment,
                version,
            }) => {
                let known = domain.hub.snapshot(&environment).map(|s| s.version);
                if known.is_some_and(|known| known >= version) {
                    Ok(())
                } else {
                    bounded(&domain, catch_up(&domain, environment)).await
                }
            }
            Some(Notice::Tokens) => bounded(&domain, reload_tokens(&domain)).await,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot catch up with the database; the next poll retries");
        }
    }
}

/// Runs one catch-up for at most [`CATCH_UP_LIMIT`]. One that takes longer (a query hanging on
/// a dead connection) marks the replica not ready (`stalled`), and the following goes on (the
/// stuck query keeps only its blocking thread); the next catch-up that succeeds clears it.
/// Every second, whether the notification connection proved alive within [`SILENCE_LIMIT`]
/// (`silent` for `/readyz` and the metric; cleared when it beats again, and the next poll
/// catches up).
async fn watch_heartbeat(domain: Domain, heartbeat: Heartbeat, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let age = heartbeat.age();
        let silent = age > SILENCE_LIMIT;
        let was = domain.replication.silent.swap(silent, Ordering::AcqRel);
        if silent && !was {
            tracing::warn!(silent = ?age, "the PostgreSQL notification connection stopped answering");
        } else if was && !silent {
            tracing::info!("the PostgreSQL notification connection answers again");
        }
    }
}

async fn bounded(
    domain: &Domain,
    work: impl Future<Output = Result<(), DomainError>>,
) -> Result<(), DomainError> {
    let stalled = &domain.replication.stalled;
    match tokio::time::timeout(CATCH_UP_LIMIT, work).await {
        Ok(result) => {
            if result.is_ok() && stalled.swap(false, Ordering::AcqRel) {
                tracing::info!("the database answers catch-ups again");
            }
            result
        }
        Err(_) => {
            if !stalled.swap(true, Ordering::AcqRel) {
                tracing::warn!(limit = ?CATCH_UP_LIMIT, "a catch-up with the database did not finish in time");
            }
            Ok(())
        }
    }
}

async fn catch_up(domain: &Domain, environment: String) -> Result<(), DomainError> {
    let publisher = domain.publisher.clone();
    blocking(domain, move |_| Ok(publisher.catch_up(&environment)?))
        .await
        .map(|_| ())
}

/// Compares every environment's version and every token with the database, catching up where
/// they differ.
async fn catch_up_everything(domain: &Domain) -> Result<(), DomainError> {
    let publisher = domain.publisher.clone();
    let hub = domain.hub.clone();
    blocking(domain, move |store| {
        let stored = store.environments()?;
        let mut names: Vec<String> = stored
            .iter()
            .filter(|env| hub.snapshot(&env.name).map(|s| s.version) != Some(env.version))
            .map(|env| env.name.clone())
            .collect();
        // Environments this replica knows that the database no longer has.
        names.extend(
            hub.environments()
                .into_iter()
                .filter(|name| !stored.iter().any(|env| &env.name == name)),
        );
        for name in names {
            publisher.catch_up(&name)?;
        }
        Ok(())
    })
    .await?;
    reload_tokens(domain).await
}

async fn reload_tokens(domain: &Domain) -> Result<(), DomainError> {
    let tokens = blocking(domain, |store| Ok(store.tokens()?)).await?;
    for id in domain.tokens.replace(tokens) {
        domain.hub.revoke(&id);
    }
    Ok(())
}
