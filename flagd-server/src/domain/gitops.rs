//! GitOps: environments reconciled from Git.
//!
//! An environment bound to a source (`bind`) is reconciled (`sync`) at start, every `interval`
//! (by the replica that runs the ramp scheduler, `run_reconciler`) and on demand (the sync
//! endpoint, a webhook): fetch the branch (`crate::git`, on the blocking pool under a deadline),
//! validate the document at its head (errors fail the sync and change nothing), compare it with
//! live state, and apply what must change as **one** commit attributed to `git:<short sha>`.
//!
//! What differs is sorted per flag (`plan`):
//! - Git changed it since the last synced commit (the *baseline*, stored with the source):
//!   applied, whatever the policy.
//! - Git did not change it, live state did: **drift**. `revert` applies Git's definition (the
//!   audit message says "drift reverted"); `reject` refuses admin writes in the first place
//!   (`check_writable`, `409 managed_by_git`) and reverts what still slips through; `report`
//!   keeps it and lists it in the status.
//! - A flag with an open ramp: the rollout belongs to the ramp, so Git's definition is compared
//!   and applied with the live rollout share. Once the ramp has ended, a rollout that differs
//!   from Git only by that share is reported, not reverted, until Git catches up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flag_core::rollout::{RolloutVariants, current_rollout, set_rollout_share};
use flag_core::{CompiledFlagSet, Flag, FlagSet};
use flag_protocol::source::{
    Drift, DriftKind, DriftPolicy, SourceCommit, SourceSpec, SourceView, SyncError, SyncState,
    SyncStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::flags::{self, WriteMode};
use super::{Domain, DomainError, Rejection, blocking};
use crate::git::{self, Credentials, GitError, Head};
use crate::store::{Attribution, FlagStore, Operation, RampQuery, SourceRecord, StoredFlag};

/// The longest a fetch may take before the sync fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// The shortest and longest reconcile intervals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The environment variable prefix of a named secret (`FLAGD_SECRET_<NAME>`).
pub const SECRET_VARIABLE_PREFIX: &str = "FLAGD_SECRET_";

/// The GitOps side of the domain: where repositories are cached, where secrets come from, one
/// lock per environment (syncs of one environment never overlap on this replica) and what the
/// metrics report.
#[derive(Debug, Default)]
pub struct GitOps {
    cache_dir: OnceLock<PathBuf>,
    secrets_dir: OnceLock<PathBuf>,
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stats: Mutex<BTreeMap<String, SourceStats>>,
}

/// What `/metrics` reports per environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceStats {
    /// The last successful sync (unix seconds), if any.
    pub last_success: Option<i64>,
    /// Failed syncs since the server started.
    pub failures: u64,
    /// Drift items listed by the last successful sync.
    pub drift: usize,
}

impl GitOps {
    /// Sets where repositories are fetched to (`<data-dir>/git`) and where named secrets are
    /// read from besides `FLAGD_SECRET_<NAME>` variables (`--secrets-dir`). Once, at start.
    pub fn configure(&self, cache_dir: PathBuf, secrets_dir: Option<PathBuf>) {
        let _ = self.cache_dir.set(cache_dir);
        if let Some(dir) = secrets_dir {
            let _ = self.secrets_dir.set(dir);
        }
    }

    fn lock(&self, environment: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(environment.to_owned()).or_default().clone()
    }

    /// The per-environment figures for `/metrics`, by environment.
    pub fn stats(&self) -> Vec<(String, SourceStats)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn record(&self, environment: &str, update: impl FnOnce(&mut SourceStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        update(stats.entry(environment.to_owned()).or_default());
    }

    /// Forgets an environment that was unbound or deleted: its metrics series, and its
    /// repository cache unless a sync is using it (a cache: the next bind fetches again).
    pub fn discard(&self, environment: &str) {
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.remove(environment);
        }
        let lock = self.lock(environment);
        let Ok(_idle) = lock.try_lock() else { return };
        let Some(base) = self.cache_dir.get() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `<environment>-<12 hex digits>`, exactly: never another environment's.
            let ours = name
                .strip_prefix(environment)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| {
                    hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())
                });
            if ours && let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(environment, %error, "cannot remove a Git source's cache");
            }
        }
    }

    /// Where an environment's repository is fetched to (one bare repository per environment and
    /// URL, so two sources never share a fetch).
    fn cache_for(&self, environment: &str, repository: &str) -> PathBuf {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(repository.as_bytes());
        let base = self
            .cache_dir
            .get()
            .cloned()
            .unwrap_or_else(|| std::env::temp_dir().join("flagd-git"));
        base.join(format!("{environment}-{}", hex::encode(&digest[..6])))
    }

    /// Reads a named secret: `FLAGD_SECRET_<NAME>` (upper case, `-` and `.` as `_`), else the
    /// file `<secrets-dir>/<name>` (as Kubernetes mounts secrets). Trailing newlines are dropped.
    pub fn secret(&self, name: &str) -> Result<String, String> {
        let variable = secret_variable(name);
        // An empty secret would let anyone sign a webhook: refused like a missing one.
        let non_empty = |value: String, from: &str| {
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                Err(format!("the secret {name:?} ({from}) is empty"))
            } else {
                Ok(value)
            }
        };
        if let Ok(value) = std::env::var(&variable) {
            return non_empty(value, &variable);
        }
        if let Some(dir) = self.secrets_dir.get() {
            let path = dir.join(name);
            if let Ok(value) = std::fs::read_to_string(&path) {
                return non_empty(value, &path.display().to_string());
            }
            return Err(format!(
                "the secret {name:?} is not configured: set {variable} or create {}",
                path.display()
            ));
        }
        Err(format!(
            "the secret {name:?} is not configured: set {variable} in the server's environment (or start it with --secrets-dir)"
        ))
    }

    fn credentials(&self, spec: &SourceSpec) -> Result<Credentials, String> {
        let Some(name) = &spec.credentials else {
            return Ok(Credentials::None);
        };
        let secret = self.secret(name)?;
        if git::is_ssh(&spec.repository) {
            // A key file path, or the key itself (written next to the cache, owner-only).
            if Path::new(&secret).is_file() {
                return Ok(Credentials::SshKey(PathBuf::from(secret)));
            }
            let path = self.cache_for("ssh-keys", name).with_extension("key");
            write_private(&path, &secret).map_err(|e| format!("cannot write the ssh key: {e}"))?;
            return Ok(Credentials::SshKey(path));
        }
        Ok(match secret.split_once(':') {
            Some((username, password)) => Credentials::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            },
            None => Credentials::Basic {
                username: "x-access-token".to_owned(),
                password: secret,
            },
        })
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    if !contents.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// The variable a named secret is read from.
pub fn secret_variable(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{SECRET_VARIABLE_PREFIX}{upper}")
}

/// What the reconciler keeps in the stored status beside the public part: the flags whose
/// rollout a ramp owns (with the ramp's variants) after the ramp has ended, until Git catches up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredStatus {
    #[serde(flatten)]
    status: SyncStatus,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ramp_held: BTreeMap<String, HeldVariants>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldVariants {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    other_variant: Option<String>,
}

impl HeldVariants {
    fn rollout(&self) -> RolloutVariants {
        RolloutVariants {
            variant: self.variant.clone(),
            others: self.other_variant.clone(),
        }
    }
}

fn stored_status(value: &Value) -> StoredStatus {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Checks a spec as written to `PUT …/source`; returns the interval.
pub fn check_spec(gitops: &GitOps, spec: &SourceSpec) -> Result<Duration, DomainError> {
    for (field, value) in [
        ("repository", &spec.repository),
        ("branch", &spec.branch),
        ("path", &spec.path),
        ("interval", &spec.interval),
    ] {
        if value.trim() != value.as_str() || value.chars().any(char::is_control) {
            return Err(DomainError::bad_request(format!(
                "{field} {value:?} must not start or end with spaces, nor hold control characters"
            ))
            .at(field));
        }
    }
    let repository = spec.repository.as_str();
    if repository.is_empty() {
        return Err(DomainError::bad_request("repository must not be empty").at("repository"));
    }
    let scheme_ok = ["https://", "http://", "ssh://", "file://", "git://"]
        .iter()
        .any(|s| repository.starts_with(s))
        || !repository.contains("://");
    if !scheme_ok || gix::url::parse(repository.as_bytes()).is_err() {
        return Err(DomainError::bad_request(format!(
            "repository {repository:?} is not a Git URL: use https://…, ssh://… (or user@host:path), file://… or a local path"
        ))
        .at("repository"));
    }
    // Secrets belong in `credentials`: a URL is shown by the API, the audit log and messages.
    let http = repository.starts_with("https://") || repository.starts_with("http://");
    let parsed = url::Url::parse(repository)
        .ok()
        .filter(|_| repository.contains("://"));
    let scp_password = !repository.contains("://")
        && repository
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':') && !user.contains('/'));
    let secret_in_url = parsed
        .as_ref()
        .is_some_and(|u| u.password().is_some() || (http && !u.username().is_empty()))
        || scp_password;
    if secret_in_url {
        return Err(DomainError::bad_request(
            "repository must not carry a user name or password (the API, the audit log and messages show it): name a secret in \"credentials\" instead",
        )
        .at("repository"));
    }
    if spec.credentials.is_some() && repository.starts_with("http://") {
        return Err(DomainError::bad_request(
            "credentials are never sent over plain http://: use https://",
        )
        .at("credentials"));
    }
    if let Some(path) = git::local_path(repository)
        && !Path::new(path).is_absolute()
    {
        return Err(DomainError::bad_request(format!(
            "the local repository {path:?} must be an absolute path: it is read on the server, not where the request comes from"
        ))
        .at("repository"));
    }
    let branch_ok = !spec.branch.is_empty()
        && !spec.branch.starts_with(['-', '/'])
        && !spec.branch.ends_with(['/', '.'])
        && !spec.branch.contains("..")
        && !spec.branch.contains("//")
        && !spec.branch.ends_with(".lock")
        && spec
            .branch
            .chars()
            .all(|c| !c.is_control() && !" ~^:?*[\\".contains(c));
    let branch_ok = branch_ok
        && !spec.branch.starts_with("refs/")
        && gix::refs::FullName::try_from(format!("refs/heads/{}", spec.branch)).is_ok()
        && !spec.branch.contains("@{")
        && spec.branch != "@"
        && !spec
            .branch
            .split('/')
            .any(|part| part.starts_with('.') || part.ends_with(".lock"));
    if !branch_ok {
        return Err(DomainError::bad_request(format!(
            "{:?} is not a valid branch name",
            spec.branch
        ))
        .at("branch"));
    }
    let path_ok = !spec.path.starts_with('/')
        && !spec.path.split('/').any(|part| part == "..")
        && !spec.path.contains('\\');
    if spec.path.is_empty() || !path_ok {
        return Err(DomainError::bad_request(format!(
            "path {:?} must name a file or directory inside the repository (relative, no \"..\"); use \".\" for its root",
            spec.path
        ))
        .at("path"));
    }
    let interval = crate::units::parse_duration(&spec.interval)
        .map_err(|e| DomainError::bad_request(format!("interval: {e}")).at("interval"))?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(DomainError::rejected(
            Rejection::OutOfRange,
            format!("interval {:?} must be between 1s and 24h", spec.interval),
        )
        .at("interval"));
    }
    for (field, name) in [
        ("credentials", &spec.credentials),
        ("webhookSecret", &spec.webhook_secret),
    ] {
        let Some(name) = name else { continue };
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !plain {
            return Err(DomainError::bad_request(format!(
                "{field} names a secret in the server's configuration: 1 to 64 letters, digits, '-', '_' and '.'"
            ))
            .at(field));
        }
        gitops
            .secret(name)
            .map_err(|message| DomainError::bad_request(message).at(field))?;
    }
    Ok(interval)
}

fn interval_of(spec: &SourceSpec) -> Duration {
    crate::units::parse_duration(&spec.interval)
        .unwrap_or(Duration::from_secs(30))
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn spec_of(record: &SourceRecord) -> Result<SourceSpec, DomainError> {
    serde_json::from_value(record.spec.clone()).map_err(|e| {
        DomainError::internal(format!(
            "the stored Git source of {:?} does not decode: {e}",
            record.environment
        ))
    })
}

fn view_of(record: &SourceRecord) -> Result<SourceView, DomainError> {
    Ok(SourceView {
        environment: record.environment.clone(),
        spec: spec_of(record)?,
        status: stored_status(&record.status).status,
    })
}

/// Refuses an admin write to an environment bound with the `reject` policy
/// (`Rejection::ManagedByGit`). Ramps do not call it: their rollout is theirs.
pub fn check_writable(store: &dyn FlagStore, environment: &str) -> Result<(), DomainError> {
    let Some(record) = store.source(environment)? else {
        return Ok(());
    };
    let spec = spec_of(&record)?;
    if spec.drift == DriftPolicy::Reject {
        return Err(DomainError::rejected(
            Rejection::ManagedByGit,
            format!(
                "environment {environment:?} is managed by Git ({} branch {}, path {}) with drift policy \"reject\": change it there, or unbind it first (flagctl env source unset {environment})",
                spec.repository, spec.branch, spec.path
            ),
        ));
    }
    Ok(())
}

/// `GET …/source`.
pub async fn show(domain: &Domain, environment: &str) -> Result<SourceView, DomainError> {
    view_of(&bound(domain, environment).await?)
}

/// The environment's binding: 404 for an unknown environment or one not bound.
async fn bound(domain: &Domain, environment: &str) -> Result<SourceRecord, DomainError> {
    let env = environment.to_owned();
    blocking(domain, move |store| {
        flags::environment_or_not_found(store, &env)?;
        Ok(store.source(&env)?)
    })
    .await?
    .ok_or_else(|| no_source(environment))
}

fn no_source(environment: &str) -> DomainError {
    DomainError::not_found(format!(
        "environment {environment:?} is not bound to a Git source"
    ))
}

/// `PUT …/source`: binds (or rebinds) the environment, audits it (never a secret), and starts
/// the first sync in the background. Returns the view and whether it was newly bound.
pub async fn bind(
    domain: &Domain,
    environment: &str,
    spec: SourceSpec,
    by: Attribution,
) -> Result<(SourceView, bool), DomainError> {
    check_spec(&domain.gitops, &spec)?;
    let env = environment.to_owned();
    let spec_json = to_json(&spec);
    let location = (
        spec.repository.clone(),
        spec.branch.clone(),
        spec.path.clone(),
    );
    let (record, created) = blocking(domain, move |store| {
        flags::environment_or_not_found(store, &env)?;
        let existing = store.source(&env)?;
        let old_baseline = match &existing {
            Some(_) => store.source_baseline(&env)?,
            None => None,
        };
        let status = to_json(&StoredStatus::default());
        let generation = store.bind_source(&env, &spec_json, &status)?;
        // Rebinding to the same repository, branch and path (a new interval, policy or secret)
        // keeps what the reconciler knows: above all the baseline, without which the next sync
        // could not tell drift from a change in Git and Git would win everywhere.
        if let Some(old) = &existing
            && spec_of(old).is_ok_and(|old| (old.repository, old.branch, old.path) == location)
        {
            store.save_source_status(&env, generation, &old.status, old_baseline.as_ref())?;
        }
        let existed = existing.is_some();
        store.record_event(&env, None, Operation::SourceBound, &spec_json, &by)?;
        let record = store
            .source(&env)?
            .ok_or_else(|| DomainError::internal("a bound source vanished"))?;
        Ok((record, !existed))
    })
    .await?;
    let (domain2, env) = (domain.clone(), environment.to_owned());
    tokio::spawn(async move {
        if let Err(error) = sync(&domain2, &env).await {
            tracing::warn!(environment = %env, %error, "first sync of a Git source failed");
        }
    });
    Ok((view_of(&record)?, created))
}

/// `DELETE …/source`: unbinds (live state stays as it is).
pub async fn unbind(
    domain: &Domain,
    environment: &str,
    by: Attribution,
) -> Result<(), DomainError> {
    let env = environment.to_owned();
    blocking(domain, move |store| {
        flags::environment_or_not_found(store, &env)?;
        let Some(record) = store.source(&env)? else {
            return Err(no_source(&env));
        };
        store.unbind_source(&env)?;
        store.record_event(&env, None, Operation::SourceUnbound, &record.spec, &by)?;
        Ok(())
    })
    .await?;
    domain.gitops.discard(environment);
    Ok(())
}

/// Reconciles one environment now (waiting for a sync in progress on this replica to end
/// first). A failed sync is not an error: the returned status says it failed and why.
pub async fn sync(domain: &Domain, environment: &str) -> Result<SourceView, DomainError> {
    let lock = domain.gitops.lock(environment);
    let _held = lock.lock().await;
    let record = bound(domain, environment).await?;
    let spec = spec_of(&record)?;
    let mut stored = stored_status(&record.status);
    let previous_success = stored.status.last_synced_at;
    let now = domain.now();
    stored.status.last_attempt_at = Some(now);

    let head = fetch(domain, environment, &spec).await;
    let (generation, mode) = (
        record.generation,
        WriteMode {
            strict: domain.strict_by_default(),
        },
    );
    let outcome = match head {
        Err(message) => Err(Some(SyncError {
            message,
            problems: Vec::new(),
        })),
        Ok(head) => {
            let (env, spec2, held) = (
                environment.to_owned(),
                spec.clone(),
                stored.ramp_held.clone(),
            );
            let new_commit =
                stored.status.commit.as_ref().map(|c| &c.sha) != Some(&head.commit.sha);
            blocking(domain, move |store| {
                let baseline = store.source_baseline(&env)?;
                // A new baseline is stored only for a new commit (or when there is none): it is
                // the whole document, and most syncs find the commit they already applied.
                let want_baseline = baseline.is_none() || new_commit;
                let baseline: Option<FlagSet> =
                    baseline.and_then(|b| serde_json::from_value(b).ok());
                for _ in 0..RACE_RETRIES {
                    match reconcile(
                        store,
                        &env,
                        &spec2,
                        &head,
                        baseline.as_ref(),
                        held.clone(),
                        previous_success,
                        now,
                        generation,
                        mode,
                        want_baseline,
                    ) {
                        Ok(done) => return Ok(Ok(done)),
                        Err(Failure::Sync(error)) => return Ok(Err(Some(error))),
                        Err(Failure::Raced) => continue,
                        Err(Failure::Superseded) => return Ok(Err(None)),
                    }
                }
                Ok(Err(Some(SyncError {
                    message: format!(
                        "live flags kept changing while commit {} was compared ({RACE_RETRIES} tries); the next sync tries again",
                        head.commit.short_sha
                    ),
                    problems: Vec::new(),
                })))
            })
            .await?
        }
    };
    let mut baseline = None;
    let mut deleted = Vec::new();
    match outcome {
        Err(None) => {
            // Unbound, rebound or deleted meanwhile: nothing was written; show what is there.
            return show(domain, environment).await;
        }
        Ok(done) => {
            baseline = done.baseline;
            stored.status.state = SyncState::Synced;
            stored.status.last_synced_at = Some(now);
            stored.status.commit = Some(done.commit);
            stored.status.version = Some(done.version);
            stored.status.error = None;
            stored.status.consecutive_failures = 0;
            stored.status.drift = done.drift;
            stored.status.reverted = done.reverted;
            stored.ramp_held = done.held;
            deleted = done.deleted;
        }
        Err(Some(error)) => {
            tracing::warn!(environment, error = %error.message, "Git sync failed");
            stored.status.state = SyncState::Failed;
            stored.status.error = Some(error);
            stored.status.consecutive_failures =
                stored.status.consecutive_failures.saturating_add(1);
        }
    }
    for key in &deleted {
        super::ramp::close_deleted(domain, environment, Some(key)).await;
    }
    let (env, generation, status) = (environment.to_owned(), record.generation, to_json(&stored));
    let saved = blocking(domain, move |store| {
        Ok(store.save_source_status(&env, generation, &status, baseline.as_ref())?)
    })
    .await?;
    if !saved {
        // Rebound or unbound meanwhile: show what is stored now.
        return show(domain, environment).await;
    }
    let drift = stored.status.drift.len();
    domain
        .gitops
        .record(environment, |stats| match stored.status.state {
            SyncState::Failed => stats.failures = stats.failures.saturating_add(1),
            _ => {
                stats.last_success = Some(now);
                stats.drift = drift;
            }
        });
    Ok(SourceView {
        environment: environment.to_owned(),
        spec,
        status: stored.status,
    })
}

async fn fetch(domain: &Domain, environment: &str, spec: &SourceSpec) -> Result<Head, String> {
    let credentials = domain.gitops.credentials(spec)?;
    let cache = domain.gitops.cache_for(environment, &spec.repository);
    let interrupt = Arc::new(AtomicBool::new(false));
    let (flag, spec) = (interrupt.clone(), spec.clone());
    let work = tokio::task::spawn_blocking(move || {
        git::fetch_head(
            &cache,
            &spec.repository,
            &spec.branch,
            &spec.path,
            &credentials,
            &flag,
        )
    });
    match tokio::time::timeout(FETCH_TIMEOUT, work).await {
        Ok(Ok(result)) => result.map_err(|error: GitError| error.to_string()),
        Ok(Err(panic)) => Err(format!("the fetch failed unexpectedly: {panic}")),
        Err(_) => {
            interrupt.store(true, Ordering::Relaxed);
            Err(format!(
                "fetching took longer than {} s and was abandoned",
                FETCH_TIMEOUT.as_secs()
            ))
        }
    }
}

/// A successful reconcile.
struct Reconciled {
    commit: SourceCommit,
    version: i64,
    drift: Vec<Drift>,
    reverted: Vec<String>,
    held: BTreeMap<String, HeldVariants>,
    baseline: Option<Value>,
    deleted: Vec<String>,
}

/// Why a reconcile did not apply.
enum Failure {
    /// The sync failed (stored in the status).
    Sync(SyncError),
    /// Live state moved while it was compared: compare again.
    Raced,
    /// The environment was unbound, rebound or deleted meanwhile: this sync must not write.
    Superseded,
}

impl From<SyncError> for Failure {
    fn from(error: SyncError) -> Failure {
        Failure::Sync(error)
    }
}

/// How often a reconcile that raced a live write starts over before the sync gives up (the next
/// interval tries again).
const RACE_RETRIES: usize = 3;

/// What to do with one flag.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Live already matches.
    InSync,
    /// Write Git's definition: Git changed it.
    FromGit(Option<Flag>),
    /// Write Git's definition over drift.
    Revert(Option<Flag>),
    /// Keep the live definition; list it.
    Keep(DriftKind),
}

/// Compares the head's document with live state and applies the result (blocking).
#[allow(clippy::too_many_arguments)]
fn reconcile(
    store: &dyn FlagStore,
    environment: &str,
    spec: &SourceSpec,
    head: &Head,
    baseline: Option<&FlagSet>,
    mut held: BTreeMap<String, HeldVariants>,
    previous_success: Option<i64>,
    now: i64,
    generation: i64,
    mode: WriteMode,
    want_baseline: bool,
) -> Result<Reconciled, Failure> {
    let failed = |message: String| SyncError {
        message,
        problems: Vec::new(),
    };
    let short = &head.commit.short_sha;
    // 1. The document must be valid on its own (warnings are allowed, as for any write, unless
    // the server refuses them with --strict). A document without `flags` is refused: applied,
    // it would delete every flag (a path naming some other JSON file, say).
    // The commit this environment was last synced to, whose document (the baseline) was
    // validated then: compared as it is, without validating it again.
    let already_validated = if want_baseline { None } else { baseline };
    if already_validated.is_none() && head.document.get("flags").is_none() {
        return Err(Failure::Sync(failed(format!(
            "the document at {} in commit {short} has no \"flags\": it is not a flagd flag set; live state was left as it was",
            spec.path
        ))));
    }
    let git = match already_validated.map_or_else(
        || CompiledFlagSet::load(&head.document).map(|loaded| (loaded.set, loaded.warnings)),
        |baseline| Ok((baseline.clone(), Vec::new())),
    ) {
        Ok((_, warnings)) if mode.strict && !warnings.is_empty() => {
            return Err(Failure::Sync(SyncError {
                message: format!(
                    "the document at {} in commit {short} has {} warning(s) and the server refuses warnings (--strict); live state was left as it was",
                    spec.path,
                    warnings.len()
                ),
                problems: warnings,
            }));
        }
        Ok((set, _)) => set,
        Err(invalid) => {
            let files: BTreeSet<&str> = invalid
                .problems
                .iter()
                .filter_map(|p| {
                    let key = p.path.strip_prefix("flags.")?.split('.').next()?;
                    head.origins
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, file)| file.as_str())
                })
                .collect();
            let files = if files.is_empty() {
                spec.path.clone()
            } else {
                files.into_iter().collect::<Vec<_>>().join(", ")
            };
            return Err(Failure::Sync(SyncError {
                message: format!(
                    "the document at {files} in commit {short} is invalid ({} problem(s)); live state was left as it was",
                    invalid.problems.len()
                ),
                problems: invalid.problems,
            }));
        }
    };
    let env = store
        .environment(environment)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed(format!("environment {environment:?} no longer exists")))?;
    let live: BTreeMap<String, StoredFlag> = store
        .flags(environment)
        .map_err(|e| failed(e.to_string()))?
        .into_iter()
        .map(|f| (f.key.clone(), f))
        .collect();

    // 2. Ramps: an open ramp owns its flag's rollout; one that ended since the last attempt
    // hands it back only once Git agrees (held).
    let ramps = store
        .ramps(&RampQuery {
            environment: Some(environment.to_owned()),
            ..RampQuery::default()
        })
        .map_err(|e| failed(e.to_string()))?;
    let mut open: BTreeMap<String, HeldVariants> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for ramp in ramps {
        // Newest first: only each flag's latest ramp counts.
        if !seen.insert(ramp.flag.clone()) {
            continue;
        }
        let variants = HeldVariants {
            variant: ramp
                .definition
                .get("variant")
                .and_then(Value::as_str)
                .map(str::to_owned),
            other_variant: ramp
                .definition
                .get("otherVariant")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        match ramp.state.as_str() {
            "active" | "paused" => {
                held.insert(ramp.flag.clone(), variants.clone());
                open.insert(ramp.flag, variants);
            }
            // Ended since the last successful sync (a failed one in between does not count);
            // before the first sync, Git wins over every old ramp.
            "completed" | "aborted" if previous_success.is_some_and(|t| ramp.updated_at >= t) => {
                held.entry(ramp.flag).or_insert(variants);
            }
            _ => {}
        }
    }

    // 3. Each flag.
    let keys: BTreeSet<&String> = git.flags.keys().chain(live.keys()).collect();
    let mut result: BTreeMap<String, Flag> = BTreeMap::new();
    let mut drift = Vec::new();
    let mut reverted = Vec::new();
    let mut from_git = false;
    for key in keys {
        let g = git.flags.get(key);
        let l = live.get(key).map(|s| &s.flag);
        let git_changed = baseline.as_ref().is_none_or(|b| b.flags.get(key) != g);
        let ramp_variants = open.get(key).or_else(|| held.get(key));
        let is_open = open.contains_key(key);
        // Git's definition with the live rollout share, when a ramp owns the rollout.
        let desired: Option<Flag> = match (g, l, ramp_variants) {
            (Some(g), Some(l), Some(variants)) => {
                with_live_share(g, &git.evaluators, l, &env.evaluators, &variants.rollout())
            }
            (g, _, _) => g.cloned(),
        };
        let normalization_failed =
            ramp_variants.is_some() && g.is_some() && l.is_some() && desired.is_none();
        let outcome = if normalization_failed {
            if is_open {
                Outcome::Keep(DriftKind::RampInProgress)
            } else {
                held.remove(key);
                if git_changed {
                    Outcome::FromGit(g.cloned())
                } else {
                    drift_outcome(spec.drift, g.cloned(), l.is_some(), g.is_some())
                }
            }
        } else if desired.as_ref() == l {
            if !is_open && held.contains_key(key) {
                if g == l {
                    held.remove(key);
                    Outcome::InSync
                } else {
                    Outcome::Keep(DriftKind::RolloutAfterRamp)
                }
            } else {
                Outcome::InSync
            }
        } else if git_changed {
            Outcome::FromGit(desired)
        } else {
            drift_outcome(spec.drift, desired, l.is_some(), g.is_some())
        };
        if !is_open && matches!(outcome, Outcome::FromGit(_) | Outcome::Revert(_)) {
            // Git's definition is written: nothing of the ended ramp is left to hold.
            held.remove(key);
        }
        let keep = |result: &mut BTreeMap<String, Flag>| {
            if let Some(l) = l {
                result.insert(key.clone(), l.clone());
            }
        };
        match outcome {
            Outcome::InSync => keep(&mut result),
            Outcome::FromGit(flag) => {
                from_git = true;
                if let Some(flag) = flag {
                    result.insert(key.clone(), flag);
                }
            }
            Outcome::Revert(flag) => {
                reverted.push(key.clone());
                if let Some(flag) = flag {
                    result.insert(key.clone(), flag);
                }
            }
            Outcome::Keep(kind) => {
                keep(&mut result);
                drift.push(Drift {
                    flag: Some(key.clone()),
                    kind,
                    git: g.map(to_json),
                    live: l.map(to_json),
                });
            }
        }
    }
    // Flags held for a ramp that no longer exist anywhere are forgotten.
    held.retain(|key, _| live.contains_key(key) || git.flags.contains_key(key));

    // 4. Environment settings (metadata and `$evaluators`).
    let git_settings = (&git.metadata, &git.evaluators);
    let live_settings = (&env.metadata, &env.evaluators);
    let (metadata, evaluators) = if git_settings == live_settings {
        (git.metadata.clone(), git.evaluators.clone())
    } else {
        let changed = baseline
            .as_ref()
            .is_none_or(|b| (&b.metadata, &b.evaluators) != git_settings);
        if changed || spec.drift != DriftPolicy::Report {
            if changed {
                from_git = true;
            } else {
                reverted.push("$evaluators/metadata".to_owned());
            }
            (git.metadata.clone(), git.evaluators.clone())
        } else {
            drift.push(Drift {
                flag: None,
                kind: DriftKind::Settings,
                git: Some(
                    serde_json::json!({"metadata": git.metadata, "$evaluators": git.evaluators}),
                ),
                live: Some(
                    serde_json::json!({"metadata": env.metadata, "$evaluators": env.evaluators}),
                ),
            });
            (env.metadata.clone(), env.evaluators.clone())
        }
    };

    // 5. One commit.
    let document = FlagSet {
        schema: None,
        metadata,
        evaluators,
        flags: result,
    };
    let deleted: Vec<String> = live
        .keys()
        .filter(|k| !document.flags.contains_key(*k))
        .cloned()
        .collect();
    let mut message = Vec::new();
    if from_git {
        message.push(format!("{} ({})", head.commit.subject, head.commit.author));
    }
    if !reverted.is_empty() {
        message.push(format!("drift reverted: {}", reverted.join(", ")));
    }
    let by = Attribution {
        actor: format!("git:{short}"),
        message: Some(message.join("; ")).filter(|m| !m.is_empty()),
        at: now,
    };
    // Unbound, rebound or the environment deleted (and perhaps re-created) since this sync read
    // its source: it must not write.
    let current = store
        .source(environment)
        .map_err(|e| failed(e.to_string()))?;
    if current.is_none_or(|record| record.generation != generation) {
        return Err(Failure::Superseded);
    }
    // Nothing to write (the common case: the commit already applied, no drift): no commit, and
    // no second validation of the whole document.
    let unchanged = document.metadata == env.metadata
        && document.evaluators == env.evaluators
        && document.flags.len() == live.len()
        && document
            .flags
            .iter()
            .all(|(key, flag)| live.get(key).is_some_and(|l| l.flag == *flag));
    if unchanged {
        return Ok(Reconciled {
            commit: head.commit.clone(),
            version: env.version,
            drift,
            reverted,
            held,
            baseline: want_baseline.then(|| to_json(&git)),
            deleted,
        });
    }
    let report = flags::apply_document_at(
        store,
        environment,
        &to_json(&document),
        true,
        mode,
        &by,
        Some(env.version),
    )
    .map_err(|error| match error {
        DomainError::Invalid(invalid) => Failure::Sync(SyncError {
            message: format!(
                "the environment the commit {short} would produce is invalid; live state was left as it was"
            ),
            problems: invalid.problems,
        }),
        DomainError::Rejected {
            kind: Rejection::PreconditionFailed,
            ..
        }
        | DomainError::Store(crate::store::StoreError::VersionConflict { .. }) => Failure::Raced,
        other => Failure::Sync(failed(format!("applying commit {short} failed: {other}"))),
    })?;
    Ok(Reconciled {
        commit: head.commit.clone(),
        version: report.version,
        drift,
        reverted,
        held,
        baseline: want_baseline.then(|| to_json(&git)),
        deleted,
    })
}

fn drift_outcome(policy: DriftPolicy, desired: Option<Flag>, live: bool, git: bool) -> Outcome {
    match policy {
        DriftPolicy::Revert | DriftPolicy::Reject => Outcome::Revert(desired),
        DriftPolicy::Report => Outcome::Keep(match (git, live) {
            (false, true) => DriftKind::Added,
            (true, false) => DriftKind::Deleted,
            _ => DriftKind::Modified,
        }),
    }
}

/// Git's flag with the live flag's rollout share (`None` when either cannot be read or set as a
/// rollout).
fn with_live_share(
    git: &Flag,
    git_evaluators: &BTreeMap<String, Value>,
    live: &Flag,
    live_evaluators: &BTreeMap<String, Value>,
    variants: &RolloutVariants,
) -> Option<Flag> {
    let share = current_rollout(live, live_evaluators, variants).ok()?.share;
    let mut flag = git.clone();
    set_rollout_share(&mut flag, git_evaluators, share, variants).ok()?;
    Some(flag)
}

/// Runs due syncs every second on the replica that runs the ramp scheduler: each source at
/// start (the first time this process sees it) and then every `interval` after its last
/// attempt. Each sync runs as its own task, so a slow fetch never delays another environment.
pub async fn run_reconciler(domain: Domain, stop: CancellationToken) {
    let mut started: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !domain.is_leader() {
            continue;
        }
        let sources = match blocking(&domain, |store| Ok(store.sources()?)).await {
            Ok(sources) => sources,
            Err(error) => {
                tracing::warn!(%error, "cannot list Git sources");
                continue;
            }
        };
        let now = domain.now();
        for record in sources {
            let Ok(spec) = spec_of(&record) else { continue };
            let status = stored_status(&record.status).status;
            let first = started.insert((record.environment.clone(), record.generation));
            let interval = i64::try_from(interval_of(&spec).as_secs()).unwrap_or(i64::MAX);
            let due = first
                || status
                    .last_attempt_at
                    .is_none_or(|at| now >= at.saturating_add(interval));
            if !due {
                continue;
            }
            let lock = domain.gitops.lock(&record.environment);
            if lock.try_lock().is_err() {
                continue; // a sync is running
            }
            let (domain, env) = (domain.clone(), record.environment.clone());
            tokio::spawn(async move {
                if let Err(error) = sync(&domain, &env).await {
                    tracing::warn!(environment = %env, %error, "Git sync could not run");
                }
            });
        }
    }
}

/// Checks a webhook's `sha256=<hex>` signature of `body` with `secret` (constant time).
pub fn signature_matches(secret: &str, body: &[u8], header: &str) -> bool {
    use hmac::Mac as _;
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The webhook secret of an environment's source, if it has one (for the sync endpoint).
pub async fn webhook_secret(
    domain: &Domain,
    environment: &str,
) -> Result<Option<String>, DomainError> {
    let env = environment.to_owned();
    let record = blocking(domain, move |store| Ok(store.source(&env)?)).await?;
    let Some(record) = record else {
        return Ok(None);
    };
    let spec = spec_of(&record)?;
    match spec.webhook_secret {
        Some(name) => domain
            .gitops
            .secret(&name)
            .map(Some)
            .map_err(DomainError::internal),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FlagChange, RampRecord, SqliteStore};
    use serde_json::json;

    const ENV: &str = "default";

    fn head(document: Value) -> Head {
        Head {
            commit: SourceCommit {
                sha: "0123456789abcdef0123456789abcdef01234567".into(),
                short_sha: "0123456".into(),
                subject: "flags".into(),
                author: "Ann <ann@example.com>".into(),
                committed_at: 1,
            },
            document,
            origins: Vec::new(),
        }
    }

    fn boolean(default: &str) -> Value {
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
    }

    fn spec(drift: DriftPolicy) -> SourceSpec {
        SourceSpec {
            repository: "file:///r".into(),
            branch: "main".into(),
            path: "p.json".into(),
            interval: "30s".into(),
            drift,
            credentials: None,
            webhook_secret: None,
        }
    }

    /// A store with flag `x` live (as given), bound to a source; returns the generation.
    fn store_with(flag: Value) -> (SqliteStore, i64) {
        let store = SqliteStore::in_memory(1).unwrap();
        let by = Attribution {
            actor: "someone".into(),
            message: None,
            at: 1,
        };
        let change = FlagChange::Upsert {
            key: "x".into(),
            flag: serde_json::from_value(flag).unwrap(),
            expected_version: None,
        };
        store.commit(ENV, &[change], None, &by).unwrap();
        let generation = store
            .bind_source(ENV, &to_json(&spec(DriftPolicy::Revert)), &json!({}))
            .unwrap();
        (store, generation)
    }

    fn run(
        store: &SqliteStore,
        document: Value,
        previous_success: Option<i64>,
        generation: i64,
        strict: bool,
    ) -> Result<Reconciled, Failure> {
        reconcile(
            store,
            ENV,
            &spec(DriftPolicy::Revert),
            &head(document),
            None,
            BTreeMap::new(),
            previous_success,
            100,
            generation,
            WriteMode { strict },
            true,
        )
    }

    fn live(store: &SqliteStore) -> Flag {
        store.flag(ENV, "x").unwrap().unwrap().flag
    }

    #[test]
    fn a_sync_for_an_older_binding_writes_nothing() {
        let (store, generation) = store_with(boolean("off"));
        // Rebound (or unbound) while the sync fetched.
        store
            .bind_source(ENV, &to_json(&spec(DriftPolicy::Report)), &json!({}))
            .unwrap();
        let outcome = run(&store, json!({"flags": {}}), None, generation, false);
        assert!(matches!(outcome, Err(Failure::Superseded)));
        store.unbind_source(ENV).unwrap();
        let outcome = run(&store, json!({"flags": {}}), None, generation + 1, false);
        assert!(matches!(outcome, Err(Failure::Superseded)));
        assert_eq!(store.flags(ENV).unwrap().len(), 1, "nothing was deleted");
    }

    #[test]
    fn a_document_that_is_not_a_flag_set_deletes_nothing() {
        let (store, generation) = store_with(boolean("off"));
        let Err(Failure::Sync(error)) = run(&store, json!({"name": "x"}), None, generation, false)
        else {
            panic!("a document without flags must fail the sync");
        };
        assert!(
            error.message.contains("has no \"flags\""),
            "{}",
            error.message
        );
        assert_eq!(store.flags(ENV).unwrap().len(), 1);
    }

    #[test]
    fn strict_servers_refuse_documents_with_warnings() {
        let (store, generation) = store_with(boolean("off"));
        let warned = json!({"flags": {"x": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "targeting": {"no_such_operator": [1]}}}});
        let Err(Failure::Sync(error)) = run(&store, warned.clone(), None, generation, true) else {
            panic!("--strict must refuse warnings");
        };
        assert!(!error.problems.is_empty());
        assert_eq!(live(&store).targeting, None);
        assert!(run(&store, warned, None, generation, false).is_ok());
    }

    /// A ramp that ended before the source's first sync is not held: Git wins. One that ended
    /// after the last successful sync is held (reported), even when a sync failed in between.
    #[test]
    fn only_ramps_ended_since_the_last_successful_sync_are_held() {
        let mut ramped: Flag = serde_json::from_value(boolean("off")).unwrap();
        flag_core::rollout::set_rollout(
            &mut ramped,
            &BTreeMap::new(),
            100.0,
            &RolloutVariants::default(),
        )
        .unwrap();
        let git = json!({"flags": {"x": boolean("off")}});
        let ramp = |store: &SqliteStore, ended_at: i64| {
            store
                .save_ramp(&RampRecord {
                    id: None,
                    environment: ENV.into(),
                    flag: "x".into(),
                    state: "completed".into(),
                    next_at: None,
                    updated_at: ended_at,
                    revision: 0,
                    definition: json!({}),
                })
                .unwrap();
        };

        let (store, generation) = store_with(to_json(&ramped));
        ramp(&store, 50);
        let done = run(&store, git.clone(), None, generation, false)
            .ok()
            .unwrap();
        assert!(done.drift.is_empty() && done.held.is_empty());
        assert_eq!(live(&store).targeting, None, "Git won");

        let (store, generation) = store_with(to_json(&ramped));
        ramp(&store, 50);
        // Last success at 40, then (say) a failed attempt at 60: the ramp ended at 50 is held.
        let done = run(&store, git, Some(40), generation, false).ok().unwrap();
        assert_eq!(done.drift.len(), 1);
        assert_eq!(done.drift[0].kind, DriftKind::RolloutAfterRamp);
        assert!(done.held.contains_key("x"));
        assert_eq!(live(&store), ramped, "the ramp's rollout stays");
    }

    #[test]
    fn empty_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        std::fs::write(dir.path().join("hook"), "s3cret\n").unwrap();
        let gitops = GitOps::default();
        gitops.configure(dir.path().join("git"), Some(dir.path().to_owned()));
        assert_eq!(gitops.secret("hook").unwrap(), "s3cret");
        assert!(gitops.secret("empty").unwrap_err().contains("is empty"));
        assert!(
            gitops
                .secret("missing")
                .unwrap_err()
                .contains("FLAGD_SECRET_MISSING")
        );
    }

    #[test]
    fn signatures_are_checked_as_the_git_hosts_make_them() {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{\"ref\":\"refs/heads/main\"}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_matches(
            "s3cret",
            b"{\"ref\":\"refs/heads/main\"}",
            &good
        ));
        assert!(!signature_matches(
            "other",
            b"{\"ref\":\"refs/heads/main\"}",
            &good
        ));
        assert!(!signature_matches("s3cret", b"{}", &good));
        assert!(!signature_matches("s3cret", b"{}", "sha1=abc"));
        assert!(!signature_matches("s3cret", b"{}", "sha256=zz"));
        assert!(!signature_matches("s3cret", b"{}", ""));
    }

    #[test]
    fn secrets_are_named_by_variables() {
        assert_eq!(
            secret_variable("gh-token.prod"),
            "FLAGD_SECRET_GH_TOKEN_PROD"
        );
        assert!(git::is_ssh("git@github.com:acme/flags.git"));
        assert!(git::is_ssh("ssh://git@github.com/acme/flags.git"));
        assert!(!git::is_ssh("https://github.com/acme/flags.git"));
        assert!(!git::is_ssh("/srv/flags"));
        assert_eq!(git::local_path("file:///srv/flags"), Some("/srv/flags"));
        assert_eq!(git::local_path("/srv/flags"), Some("/srv/flags"));
        assert_eq!(git::local_path("git@host:flags.git"), None);
    }
}
