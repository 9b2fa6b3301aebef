//! Evaluation telemetry (issue 19): how often each flag's variants are evaluated.
//!
//! The server counts its own OFREP evaluations; SDKs that evaluate locally report their counts
//! over the stream (`usage` messages) or `POST /api/v1/usage`. Counts gather here, per
//! environment, flag, variant and hour, and [`flush`] adds them to the store (every
//! [`FLUSH_EVERY`] under [`run_flusher`], and once more at shutdown): a failed write puts them
//! back, so nothing is lost while the store is away. Stored hours are kept for the retention
//! (`--usage-retention`, default 90 days). Each count also feeds `flagd_evaluations_total`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Domain, DomainError, blocking};
use crate::store::{UsageRecord, hour_of};

/// How often counts are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// The default retention of stored counts.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// The most one report may add for one flag and variant (a larger number is clamped: stored
/// sums stay far from overflowing).
pub const MAX_REPORTED_COUNT: u64 = 1 << 40;

/// (environment, flag, variant, hour).
type Key = (String, String, String, i64);

/// Counts not yet written, and the retention.
#[derive(Debug)]
pub struct Usage {
    pending: Mutex<HashMap<Key, (i64, i64)>>,
    retention: AtomicI64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            pending: Mutex::default(),
            retention: AtomicI64::new(DEFAULT_RETENTION.as_secs() as i64),
        }
    }
}

impl Usage {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (i64, i64)>> {
        // Sums stay consistent whatever panicked while holding the lock.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets how long stored counts are kept.
    pub fn set_retention(&self, retention: Duration) {
        let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        self.retention.store(seconds.max(3600), Ordering::Relaxed);
    }

    /// How long stored counts are kept, in seconds.
    pub fn retention_seconds(&self) -> i64 {
        self.retention.load(Ordering::Relaxed)
    }

    fn add(&self, environment: &str, flag: &str, variant: &str, count: i64, at: i64) {
        let key = (
            environment.to_owned(),
            flag.to_owned(),
            variant.to_owned(),
            hour_of(at),
        );
        let mut pending = self.pending();
        let entry = pending.entry(key).or_insert((0, at));
        entry.0 = entry.0.saturating_add(count);
        entry.1 = entry.1.max(at);
    }

    /// Takes every pending count.
    fn take(&self) -> Vec<UsageRecord> {
        std::mem::take(&mut *self.pending())
            .into_iter()
            .map(
                |((environment, flag, variant, hour), (count, last_at))| UsageRecord {
                    environment,
                    flag,
                    variant,
                    hour,
                    count,
                    last_at,
                },
            )
            .collect()
    }

    /// Puts back counts a failed write took.
    fn restore(&self, rows: Vec<UsageRecord>) {
        for row in rows {
            self.add(
                &row.environment,
                &row.flag,
                &row.variant,
                row.count,
                row.last_at,
            );
        }
    }
}

/// Counts `count` evaluations of `flag` in `environment` that served `variant` (`None`: no
/// variant, an error or the caller's default), at the domain's time.
pub fn count(domain: &Domain, environment: &str, flag: &str, variant: Option<&str>, count: u64) {
    if count == 0 {
        return;
    }
    let count = count.min(MAX_REPORTED_COUNT);
    let variant = variant.unwrap_or("");
    domain
        .metrics
        .evaluations(environment, flag, variant, count);
    // At most 2^40: fits.
    domain
        .usage
        .add(environment, flag, variant, count as i64, domain.now());
}

/// Writes the pending counts to the store; on failure they are kept for the next flush.
pub async fn flush(domain: &Domain) -> Result<usize, DomainError> {
    let rows = domain.usage.take();
    if rows.is_empty() {
        return Ok(0);
    }
    let written = rows.len();
    let batch = rows.clone();
    match blocking(domain, move |store| Ok(store.add_usage(&batch)?)).await {
        Ok(()) => Ok(written),
        Err(error) => {
            domain.usage.restore(rows);
            Err(error)
        }
    }
}

/// Deletes stored hours older than the retention; returns how many rows went.
pub async fn prune(domain: &Domain) -> Result<u64, DomainError> {
    let before = domain
        .now()
        .saturating_sub(domain.usage.retention_seconds());
    blocking(domain, move |store| Ok(store.prune_usage(before)?)).await
}

/// Flushes every [`FLUSH_EVERY`] and prunes every hour, until `stop`. The last flush is the
/// caller's, after the stream sessions closed (their SDKs report on close).
pub async fn run_flusher(domain: Domain, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(FLUSH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = i64::MIN;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = flush(&domain).await {
            tracing::warn!(%error, "cannot write evaluation counts; keeping them for the next try");
        }
        let now = domain.now();
        if now.saturating_sub(last_prune) >= 3600 {
            last_prune = now;
            match prune(&domain).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "pruned evaluation counts past their retention"),
                Err(error) => tracing::warn!(%error, "cannot prune evaluation counts"),
            }
        }
    }
}

/// One flag and variant's count in a usage report (a stream `usage` message or
/// `POST /api/v1/usage`): [`flag_protocol::stream::UsageCount`] on the wire.
/// Only flags the environment has, and variants those flags have, are counted (a report cannot
/// grow the store or the metrics with names of its own choosing); returns how many entries
/// were counted.
pub fn report(
    domain: &Domain,
    environment: &str,
    counts: &[flag_protocol::stream::UsageCount],
) -> usize {
    let Some(snapshot) = domain.hub.snapshot(environment) else {
        return 0;
    };
    let mut counted = 0;
    for entry in counts {
        let Some(flag) = snapshot.document.flags.get(&entry.flag) else {
            continue;
        };
        if entry.count == 0
            || entry
                .variant
                .as_ref()
                .is_some_and(|variant| !flag.variants.contains_key(variant))
        {
            continue;
        }
        counted += 1;
        count(
            domain,
            environment,
            &entry.flag,
            entry.variant.as_deref(),
            entry.count,
        );
    }
    counted
}

/// `GET …/flags/{key}/usage`: counts per hour and variant since `since`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagUsage {
    /// The environment.
    pub environment: String,
    /// The flag.
    pub flag: String,
    /// The start of the first hour included (unix seconds).
    pub since: i64,
    /// Evaluations in all the hours.
    pub total: i64,
    /// The last evaluation counted (unix seconds), if any within the retention.
    pub last_evaluated: Option<i64>,
    /// Counts per variant in all the hours.
    pub variants: std::collections::BTreeMap<String, i64>,
    /// Counts per hour and variant, oldest first (`variant` empty: no variant was served).
    pub hours: Vec<HourCount>,
}

/// One hour's count of one variant.
#[derive(Debug, Serialize, Deserialize)]
pub struct HourCount {
    /// The hour (unix seconds).
    pub hour: i64,
    /// The variant.
    pub variant: String,
    /// Evaluations.
    pub count: i64,
}

/// A flag's usage since `since` (unix seconds), written counts and pending ones together.
pub async fn of_flag(
    domain: &Domain,
    environment: &str,
    flag: &str,
    since: i64,
) -> Result<FlagUsage, DomainError> {
    // What is pending is written first, so the answer includes the last seconds.
    if let Err(error) = flush(domain).await {
        tracing::warn!(%error, "cannot write evaluation counts before a usage query");
    }
    let (env, key) = (environment.to_owned(), flag.to_owned());
    let (since, rows) = blocking(domain, move |store| {
        super::flags::environment_or_not_found(store, &env)?;
        let stored = store.flag(&env, &key)?.ok_or_else(|| {
            DomainError::not_found(format!(
                "flag {key:?} does not exist in environment {env:?}"
            ))
        })?;
        // A flag deleted and created again under the key starts afresh.
        let since = since.max(hour_of(stored.created_at));
        Ok((since, store.usage(&env, &key, since)?))
    })
    .await?;
    let mut variants = std::collections::BTreeMap::new();
    let mut total: i64 = 0;
    let mut last = None;
    let hours = rows
        .into_iter()
        .map(|row| {
            total = total.saturating_add(row.count);
            let sum = variants.entry(row.variant.clone()).or_insert(0_i64);
            *sum = sum.saturating_add(row.count);
            last = last.max(Some(row.last_at));
            HourCount {
                hour: row.hour,
                variant: row.variant,
                count: row.count,
            }
        })
        .collect();
    Ok(FlagUsage {
        environment: environment.to_owned(),
        flag: flag.to_owned(),
        since: hour_of(since),
        total,
        last_evaluated: last,
        variants,
        hours,
    })
}

/// Every evaluated flag of an environment: its last evaluation and its count over the last
/// 24 hours (for listings).
pub async fn summary(
    domain: &Domain,
    environment: &str,
) -> Result<HashMap<String, crate::store::UsageSummary>, DomainError> {
    if let Err(error) = flush(domain).await {
        tracing::warn!(%error, "cannot write evaluation counts before a listing");
    }
    let env = environment.to_owned();
    let recent = domain.now().saturating_sub(24 * 3600);
    let rows = blocking(domain, move |store| Ok(store.usage_summary(&env, recent)?)).await?;
    Ok(rows.into_iter().map(|s| (s.flag.clone(), s)).collect())
}

#[cfg(test)]
mod tests;
