//! The domain operations behind the admin API: validate with flag-core, then commit through the
//! store. Everything here runs on tokio's blocking pool (`blocking`), never on async workers.

use std::collections::BTreeMap;

use flag_core::rollout::{RolloutError, RolloutVariants, Share, set_rollout_share};
use flag_core::{CompiledFlagSet, Flag, FlagSet, Problem, ValidationError};
use serde::Serialize;
use serde_json::{Map, Value, json};

pub use super::blocking;
use super::{DomainError, Rejection};
use crate::store::{
    Attribution, Environment, EnvironmentSettings, FlagChange, FlagStore, RampRecord, StoreError,
    StoredFlag,
};

/// How often a read-modify-write without `If-Match` retries after losing a race.
const RETRIES: usize = 3;

/// The longest environment name.
const MAX_ENVIRONMENT_NAME_LEN: usize = 128;

/// Environment names keep to a plain alphabet: they appear in URLs, metrics labels, logs and
/// file names, and unlike flag keys they are ours, not flagd's.
pub fn check_environment_name(name: &str) -> Result<(), DomainError> {
    let plain = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > MAX_ENVIRONMENT_NAME_LEN || !plain {
        return Err(DomainError::bad_request(format!(
            "invalid environment name {name:?}: use 1 to {MAX_ENVIRONMENT_NAME_LEN} letters, digits, '-', '_' and '.', starting with a letter or digit"
        ))
        .at("name"));
    }
    Ok(())
}

/// How a write treats warnings (what flagd loads and handles at evaluation time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMode {
    /// Refuse any write with a warning (`DomainError::Invalid`), as well as errors.
    pub strict: bool,
}

impl WriteMode {
    /// `Err(Invalid)` listing the warnings in strict mode; the warnings otherwise.
    fn check(self, warnings: Vec<Problem>) -> Result<Vec<Problem>, DomainError> {
        if self.strict && !warnings.is_empty() {
            return Err(DomainError::invalid(ValidationError { problems: warnings }));
        }
        Ok(warnings)
    }
}

pub(crate) fn environment_or_not_found(
    store: &dyn FlagStore,
    name: &str,
) -> Result<Environment, DomainError> {
    store
        .environment(name)?
        .ok_or_else(|| DomainError::not_found(format!("environment {name:?} does not exist")))
}

/// The largest flag definition accepted, serialized: every copy of it (snapshot, patch ring,
/// stream messages, audit record, SDK caches) multiplies its size.
pub const MAX_FLAG_BYTES: usize = 1 << 20;

/// Refuses a definition larger than `MAX_FLAG_BYTES` (`Rejection::FlagTooLarge`).
fn check_flag_size(key: &str, definition: &Value) -> Result<(), DomainError> {
    /// Counts serialized bytes without keeping them (a refused definition can be megabytes).
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let size = serde_json::to_writer(&mut counter, definition).map_or(usize::MAX, |()| counter.0);
    if size > MAX_FLAG_BYTES {
        return Err(DomainError::rejected(Rejection::FlagTooLarge,
            format!(
                "flag {key:?} is {size} bytes as JSON, more than the {} KiB a flag may have; move large lists into fewer, shorter rules",
                MAX_FLAG_BYTES >> 10
            ),
        )
        .at(format!("flags.{key}")));
    }
    Ok(())
}

/// Validates one flag definition (raw JSON from a request) against its environment's
/// `$evaluators` and metadata: errors refuse it; returns the typed flag and its warnings (only
/// the flag's own: an evaluator's are reported when the evaluators are written).
pub fn validate_flag(
    environment: &Environment,
    key: &str,
    definition: &Value,
    mode: WriteMode,
) -> Result<(Flag, Vec<Problem>), DomainError> {
    check_flag_size(key, definition)?;
    let document = json!({
        "metadata": environment.metadata,
        "$evaluators": environment.evaluators,
        "flags": { key: definition },
    });
    let mut loaded = CompiledFlagSet::load(&document).map_err(DomainError::invalid)?;
    let warnings = loaded
        .warnings
        .into_iter()
        .filter(|p| p.path.starts_with("flags"))
        .collect();
    let warnings = mode.check(warnings)?;
    let flag = loaded
        .set
        .flags
        .remove(key)
        .ok_or_else(|| DomainError::internal(format!("validated flag {key:?} vanished")))?;
    Ok((flag, warnings))
}

/// A flag as written, with the warnings the write produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The flag as stored.
    pub stored: StoredFlag,
    /// What flagd would warn about (empty in strict mode: warnings refuse the write there).
    pub warnings: Vec<Problem>,
}

/// Creates or replaces a flag. Returns the written flag and whether it was created.
pub fn put_flag(
    store: &dyn FlagStore,
    environment: &str,
    key: &str,
    definition: &Value,
    if_match: Option<i64>,
    mode: WriteMode,
    by: &Attribution,
) -> Result<(Written, bool), DomainError> {
    let env = environment_or_not_found(store, environment)?;
    super::gitops::check_writable(store, environment)?;
    let (flag, warnings) = validate_flag(&env, key, definition, mode)?;
    let created_at = store.flag(environment, key)?.map(|f| f.created_at);
    let change = FlagChange::Upsert {
        key: key.to_owned(),
        flag: flag.clone(),
        expected_version: if_match,
    };
    let commit = store.commit(environment, &[change], None, by)?;
    let created = commit
        .changes
        .iter()
        .any(|c| c.operation == crate::store::Operation::Create);
    // What this write stored, not a re-read (another writer may already have replaced it: its
    // version would be this response's ETag, and an If-Match on it would overwrite unseen).
    let stored = written(
        environment,
        key,
        flag,
        &commit,
        by,
        created_at.filter(|_| !created),
    );
    Ok((Written { stored, warnings }, created))
}

/// The flag as a commit stored it.
fn written(
    environment: &str,
    key: &str,
    flag: Flag,
    commit: &crate::store::Commit,
    by: &Attribution,
    created_at: Option<i64>,
) -> StoredFlag {
    StoredFlag {
        environment: environment.to_owned(),
        key: key.to_owned(),
        flag,
        version: commit.version,
        created_at: created_at.unwrap_or(by.at),
        updated_at: by.at,
        updated_by: by.actor.clone(),
    }
}

/// Read, transform, validate, commit: the shape of PATCH and of the rollout endpoint. Without
/// `If-Match`, a write that loses a race to another writer is retried on the new state; with it,
/// the race is reported (a version conflict), as the client asked.
pub fn modify_flag(
    store: &dyn FlagStore,
    environment: &str,
    key: &str,
    if_match: Option<i64>,
    mode: WriteMode,
    by: &Attribution,
    transform: impl Fn(&Environment, &mut Value) -> Result<(), DomainError>,
) -> Result<Written, DomainError> {
    super::gitops::check_writable(store, environment)?;
    modify_flag_fenced(store, environment, key, if_match, mode, by, None, transform)
}

/// [`modify_flag`], the write fenced by a ramp (`FlagStore::commit_fenced`): the ramp is saved
/// with it, compare-and-set on its revision, and also when the flag does not change.
#[allow(clippy::too_many_arguments)]
fn modify_flag_fenced(
    store: &dyn FlagStore,
    environment: &str,
    key: &str,
    if_match: Option<i64>,
    mode: WriteMode,
    by: &Attribution,
    fence: Option<&RampRecord>,
    transform: impl Fn(&Environment, &mut Value) -> Result<(), DomainError>,
) -> Result<Written, DomainError> {
    for _ in 0..RETRIES {
        let env = environment_or_not_found(store, environment)?;
        let current = store.flag(environment, key)?.ok_or_else(|| {
            DomainError::not_found(format!(
                "flag {key:?} does not exist in environment {environment:?}"
            ))
        })?;
        if let Some(expected) = if_match
            && expected != current.version
        {
            return Err(StoreError::VersionConflict {
                key: key.to_owned(),
                expected,
                actual: current.version,
            }
            .into());
        }
        let mut definition = serde_json::to_value(&current.flag).map_err(DomainError::internal)?;
        transform(&env, &mut definition)?;
        let (flag, warnings) = validate_flag(&env, key, &definition, mode)?;
        if flag == current.flag {
            // Nothing changes: no new version, no audit record, no stream patch.
            if let Some(ramp) = fence {
                store.save_ramp(ramp)?;
            }
            return Ok(Written {
                stored: current,
                warnings,
            });
        }
        let change = FlagChange::Upsert {
            key: key.to_owned(),
            flag: flag.clone(),
            expected_version: Some(current.version),
        };
        let committed = match fence {
            Some(ramp) => store.commit_fenced(environment, &[change], by, ramp),
            None => store.commit(environment, &[change], None, by),
        };
        match committed {
            Ok(commit) => {
                let stored = written(
                    environment,
                    key,
                    flag,
                    &commit,
                    by,
                    Some(current.created_at),
                );
                return Ok(Written { stored, warnings });
            }
            Err(StoreError::VersionConflict { .. }) if if_match.is_none() => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(DomainError::conflict(format!(
        "flag {key:?} kept changing while this edit was applied; try again"
    )))
}

/// JSON Merge Patch (RFC 7396).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(object) = target {
        for (name, value) in patch {
            if value.is_null() {
                object.remove(name);
            } else {
                merge_patch(object.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A rollout to set: `share` of the users reaching the fallthrough get `variants.variant`.
#[derive(Debug, Clone)]
pub struct RolloutChange {
    /// The share.
    pub share: Share,
    /// The rolled-out variant (and who gets what when a bucket list is made).
    pub variants: RolloutVariants,
}

/// Sets a flag's rollout through flag-core's rollout editing (see `flag_core::rollout`).
pub fn rollout(
    store: &dyn FlagStore,
    environment: &str,
    key: &str,
    change: &RolloutChange,
    if_match: Option<i64>,
    mode: WriteMode,
    by: &Attribution,
) -> Result<Written, DomainError> {
    super::gitops::check_writable(store, environment)?;
    modify_flag_fenced(
        store,
        environment,
        key,
        if_match,
        mode,
        by,
        None,
        |env, definition| rollout_transform(env, definition, change),
    )
}

/// [`rollout`] for a ramp: the write and the ramp's save are one transaction (see
/// `FlagStore::commit_fenced`), or, without `fence`, a plain rollout write.
pub fn rollout_fenced(
    store: &dyn FlagStore,
    environment: &str,
    key: &str,
    change: &RolloutChange,
    mode: WriteMode,
    by: &Attribution,
    fence: Option<&RampRecord>,
) -> Result<Written, DomainError> {
    modify_flag_fenced(
        store,
        environment,
        key,
        None,
        mode,
        by,
        fence,
        |env, definition| rollout_transform(env, definition, change),
    )
}

/// Sets a flag definition's rollout share.
fn rollout_transform(
    env: &Environment,
    definition: &mut Value,
    change: &RolloutChange,
) -> Result<(), DomainError> {
    let mut flag: Flag =
        serde_json::from_value(definition.clone()).map_err(DomainError::internal)?;
    set_rollout_share(&mut flag, &env.evaluators, change.share, &change.variants)
        .map_err(rollout_error)?;
    *definition = serde_json::to_value(&flag).map_err(DomainError::internal)?;
    Ok(())
}

/// A rollout that cannot be read or set, as a rejection naming the field at fault.
pub fn rollout_error(error: RolloutError) -> DomainError {
    match error {
        RolloutError::OutOfRange(_) | RolloutError::TooFine(_) => {
            DomainError::rejected(Rejection::InvalidPercentage, error.to_string()).at("percentage")
        }
        RolloutError::Variants(_) => {
            DomainError::rejected(Rejection::RolloutVariants, error.to_string()).at("variant")
        }
        RolloutError::Others(_) => {
            DomainError::rejected(Rejection::RolloutVariants, error.to_string()).at("otherVariant")
        }
        RolloutError::TooComplex(_) => {
            DomainError::rejected(Rejection::TargetingTooComplex, error.to_string()).at("targeting")
        }
        _ => DomainError::rejected(Rejection::Rollout, error.to_string()),
    }
}

/// The environment as one flagd document, and its version.
pub fn document(store: &dyn FlagStore, environment: &str) -> Result<(FlagSet, i64), DomainError> {
    let env = environment_or_not_found(store, environment)?;
    let flags = store.flags(environment)?;
    Ok((super::hub::document_of(&env, flags), env.version))
}

/// What a declarative apply did (or, in a dry run, would do) to one flag.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// The flag key.
    pub key: String,
    /// `create`, `update`, `delete` or `unchanged`.
    pub action: &'static str,
    /// The definition before (absent when created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The definition after (absent when deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// The answer to `PUT .../document`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Flags missing from the document were (or would be) deleted.
    pub prune: bool,
    /// The environment's version after the apply (unchanged for a dry run or a no-op).
    pub version: i64,
    /// Whether anything changed (or would change).
    pub changed: bool,
    /// `$evaluators` or metadata differ from the stored ones.
    pub settings_changed: bool,
    /// Counts by action.
    pub summary: BTreeMap<&'static str, usize>,
    /// Every flag of the document, and every stored flag it deletes, in key order.
    pub changes: Vec<PlannedChange>,
    /// Stored flags the document does not mention and that stay because `prune` is off.
    pub kept: Vec<String>,
    /// What flagd would warn about, in the document and in the environment it produces (a kept
    /// flag may reference an evaluator the document removes). Empty in strict mode.
    pub warnings: Vec<Problem>,
}

/// Applies a whole flagd document to an environment: validate everything, then create, update
/// and (with `prune`) delete in one transaction, or only report with `dry_run`.
pub fn apply_document(
    store: &dyn FlagStore,
    environment: &str,
    document: &Value,
    dry_run: bool,
    prune: bool,
    mode: WriteMode,
    by: &Attribution,
) -> Result<ApplyReport, DomainError> {
    if !dry_run {
        super::gitops::check_writable(store, environment)?;
    }
    apply_document_as(store, environment, document, dry_run, prune, mode, by, None)
}

/// What the Git reconciler applies: a whole document with `prune`, never a dry run, not subject
/// to the `reject` drift policy, and refused (`PreconditionFailed`) unless the environment is
/// still at `at_version` (the version the reconciler compared it with).
pub fn apply_document_at(
    store: &dyn FlagStore,
    environment: &str,
    document: &Value,
    prune: bool,
    mode: WriteMode,
    by: &Attribution,
    at_version: Option<i64>,
) -> Result<ApplyReport, DomainError> {
    apply_document_as(
        store,
        environment,
        document,
        false,
        prune,
        mode,
        by,
        at_version,
    )
}

#[allow(clippy::too_many_arguments)]
fn apply_document_as(
    store: &dyn FlagStore,
    environment: &str,
    document: &Value,
    dry_run: bool,
    prune: bool,
    mode: WriteMode,
    by: &Attribution,
    at_version: Option<i64>,
) -> Result<ApplyReport, DomainError> {
    let env = environment_or_not_found(store, environment)?;
    if let Some(expected) = at_version
        && expected != env.version
    {
        return Err(DomainError::precondition_failed(format!(
            "environment {environment:?} changed while it was being compared (version {expected} is now {}); nothing was written",
            env.version
        )));
    }
    let loaded = CompiledFlagSet::load(document).map_err(DomainError::invalid)?;
    for (key, flag) in &loaded.set.flags {
        check_flag_size(
            key,
            &serde_json::to_value(flag).map_err(DomainError::internal)?,
        )?;
    }
    let (desired, mut warnings) = (loaded.set, loaded.warnings);
    let current: BTreeMap<String, StoredFlag> = store
        .flags(environment)?
        .into_iter()
        .map(|f| (f.key.clone(), f))
        .collect();

    let mut planned = Vec::new();
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    let mut result = FlagSet {
        schema: None,
        metadata: desired.metadata.clone(),
        evaluators: desired.evaluators.clone(),
        flags: BTreeMap::new(),
    };
    for (key, flag) in &desired.flags {
        let existing = current.get(key);
        let action = match existing {
            None => "create",
            Some(stored) if stored.flag == *flag => "unchanged",
            Some(_) => "update",
        };
        if action != "unchanged" {
            changes.push(FlagChange::Upsert {
                key: key.clone(),
                flag: flag.clone(),
                expected_version: Some(existing.map_or(0, |s| s.version)),
            });
        }
        planned.push(PlannedChange {
            key: key.clone(),
            action,
            before: existing.map(|s| serde_json::to_value(&s.flag).unwrap_or(Value::Null)),
            after: Some(serde_json::to_value(flag).unwrap_or(Value::Null)),
        });
        result.flags.insert(key.clone(), flag.clone());
    }
    for (key, stored) in &current {
        if desired.flags.contains_key(key) {
            continue;
        }
        if prune {
            changes.push(FlagChange::Delete {
                key: key.clone(),
                expected_version: Some(stored.version),
            });
            planned.push(PlannedChange {
                key: key.clone(),
                action: "delete",
                before: Some(serde_json::to_value(&stored.flag).unwrap_or(Value::Null)),
                after: None,
            });
        } else {
            kept.push(key.clone());
            result.flags.insert(key.clone(), stored.flag.clone());
        }
    }
    planned.sort_by(|a, b| a.key.cmp(&b.key));

    // The environment that would result is checked as a whole: a kept flag may reference an
    // evaluator the document removes (a warning: that flag would evaluate to PARSE_ERROR).
    let (_, result_warnings) =
        CompiledFlagSet::compile_with_warnings(&result).map_err(DomainError::invalid)?;
    for warning in result_warnings {
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
    }
    let warnings = mode.check(warnings)?;

    let settings_changed = desired.metadata != env.metadata || desired.evaluators != env.evaluators;
    let changed = settings_changed || !changes.is_empty();
    let mut summary = BTreeMap::new();
    for change in &planned {
        *summary.entry(change.action).or_insert(0) += 1;
    }
    let mut version = env.version;
    if changed && !dry_run {
        let settings = settings_changed.then(|| EnvironmentSettings {
            metadata: desired.metadata.clone(),
            evaluators: desired.evaluators.clone(),
        });
        let commit = store.commit(environment, &changes, settings.as_ref(), by).map_err(|error| match error {
            StoreError::VersionConflict { key, .. } => DomainError::precondition_failed(format!(
                "flag {key:?} changed while the document was being applied; nothing was written, apply again"
            )),
            other => other.into(),
        })?;
        version = commit.version;
    }
    Ok(ApplyReport {
        dry_run,
        prune,
        version,
        changed,
        settings_changed,
        summary,
        changes: planned,
        kept,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!({"a": [1]}), json!({"a": [2]}), json!({"a": [2]})),
            (json!(["a"]), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }
}
