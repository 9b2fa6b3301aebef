//! GitOps: an environment bound to a Git source, and what its reconciler found.
//!
//! `PUT /api/v1/environments/{env}/source` takes a [`SourceSpec`]; `GET` answers a
//! [`SourceView`] (the spec, and the [`SyncStatus`] with the drift list); `POST …/source/sync`
//! reconciles now and answers the view after it. Described in `docs/GITOPS.md`.

use flag_core::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The header carrying a webhook's HMAC-SHA256 signature of the request body, as GitHub (and
/// Gitea, Forgejo) send it: `sha256=<64 hex digits>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The default branch.
pub const DEFAULT_BRANCH: &str = "main";
/// The default reconcile interval.
pub const DEFAULT_INTERVAL: &str = "30s";

/// What an environment is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// The repository: `https://…`, `ssh://…` (or `git@host:path`), `file://…` or a local path.
    pub repository: String,
    /// The branch whose head is the declared state.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// A flagd document in the repository, or a directory whose `*.json` flag-set files are
    /// merged in name order (a later file's flag or evaluator replaces an earlier one's).
    pub path: String,
    /// How often to reconcile (`30s`, `5m`; at least 1 s, at most 24 h).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// What to do about live changes that did not come from Git.
    #[serde(default)]
    pub drift: DriftPolicy,
    /// The name of a secret in the server's own configuration used to authenticate to the
    /// repository (the secret itself is never stored, returned or audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The name of a secret in the server's configuration that webhooks sign their body with
    /// (HMAC-SHA256, [`SIGNATURE_HEADER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

fn default_branch() -> String {
    DEFAULT_BRANCH.to_owned()
}

fn default_interval() -> String {
    DEFAULT_INTERVAL.to_owned()
}

/// The drift policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Live changes are reverted at the next reconcile (self-heal).
    #[default]
    Revert,
    /// Admin writes to the environment are refused (`409 managed_by_git`); ramps still run.
    Reject,
    /// Live changes are kept and listed.
    Report,
}

impl DriftPolicy {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Revert => "revert",
            DriftPolicy::Reject => "reject",
            DriftPolicy::Report => "report",
        }
    }
}

/// `GET /api/v1/environments/{env}/source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// The environment.
    pub environment: String,
    /// What it is bound to.
    pub spec: SourceSpec,
    /// What the reconciler last did and found.
    pub status: SyncStatus,
}

/// A sync's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// Bound, not synced yet.
    #[default]
    Pending,
    /// The last attempt succeeded: live state is the branch head's (drift aside).
    Synced,
    /// The last attempt failed (`error` says why); live state was left as it was.
    Failed,
}

/// The reconciler's view of one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The last attempt's outcome.
    pub state: SyncState,
    /// The last attempt (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<i64>,
    /// The last successful sync (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_at: Option<i64>,
    /// The commit last synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<SourceCommit>,
    /// The environment's version after the last successful sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SyncError>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub consecutive_failures: u64,
    /// Live state that differs from Git and was kept (policy `report`, a ramp's rollout), as of
    /// the last successful sync.
    #[serde(default)]
    pub drift: Vec<Drift>,
    /// The flags whose drift the last successful sync reverted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverted: Vec<String>,
}

/// A Git commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCommit {
    /// The full object id.
    pub sha: String,
    /// Its abbreviation (the audit actor is `git:<shortSha>`).
    pub short_sha: String,
    /// The first line of its message.
    pub subject: String,
    /// `Name <email>`.
    pub author: String,
    /// The committer time (unix seconds).
    pub committed_at: i64,
}

/// Why a sync failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncError {
    /// For people.
    pub message: String,
    /// Validation problems of the document, by JSON path in the (merged) document.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// One difference between live state and Git that was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// The flag; absent for the environment's metadata and `$evaluators`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// What differs.
    pub kind: DriftKind,
    /// Git's definition (absent when Git does not have the flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Value>,
    /// The live definition (absent when the flag was deleted live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
}

/// The kind of a [`Drift`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The live definition differs from Git's.
    Modified,
    /// A live flag Git does not have.
    Added,
    /// A flag Git has that was deleted live.
    Deleted,
    /// Metadata or `$evaluators` differ.
    Settings,
    /// Only the rollout differs, left by a ramp that has ended: reported until Git catches up.
    RolloutAfterRamp,
    /// A ramp is running and the flag's targeting cannot be compared apart from its rollout.
    RampInProgress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_takes_defaults_and_refuses_unknown_fields() {
        let spec: SourceSpec = serde_json::from_str(
            r#"{"repository": "https://git.example/flags.git", "path": "prod.json"}"#,
        )
        .unwrap();
        assert_eq!(spec.branch, "main");
        assert_eq!(spec.interval, "30s");
        assert_eq!(spec.drift, DriftPolicy::Revert);
        let error = serde_json::from_str::<SourceSpec>(
            r#"{"repository": "r", "path": "p", "secret": "x"}"#,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `secret`"),
            "{error}"
        );
    }
}
