//! Reading a flag document from a Git repository (GitOps sources, `domain/gitops.rs`).
//!
//! Library: gitoxide (`gix`). It is pure Rust, so the server still builds with the Rust
//! toolchain alone: no libgit2, no OpenSSL (`git2` would need both, or vendored C builds of
//! them). HTTPS goes through gix's reqwest transport on rustls with the ring provider the server
//! installs at start; `ssh://` runs the system's `ssh`, and `file://` and local paths run
//! `git upload-pack`, as Git itself does (so those two need the `ssh` and `git` programs).
//!
//! Each source fetches into a bare repository of its own under the server's data directory,
//! with one refspec (`+refs/heads/<branch>:refs/flagd/source`), so a fetch after the first
//! transfers only what is new. Everything here is blocking: the domain runs it on the blocking
//! pool, under a deadline.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use serde_json::{Map, Value};

use flag_protocol::source::SourceCommit;

/// The local ref a source's branch is fetched into.
const SOURCE_REF: &str = "refs/flagd/source";

/// A Git failure, in words (gix's errors are flattened into the message: the reconciler stores
/// and shows them, it never matches on them).
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Fetching failed (unreachable, refused credentials, no such branch).
    #[error("fetching {repository} failed: {message}")]
    Fetch {
        /// The repository (credentials never appear in it).
        repository: String,
        /// What went wrong.
        message: String,
    },
    /// The branch head has nothing at the path, or something that is not a JSON document.
    #[error("{0}")]
    Content(String),
    /// The local repository could not be used.
    #[error("the local copy of the repository failed: {0}")]
    Local(String),
}

fn local(error: impl std::fmt::Display) -> GitError {
    GitError::Local(error.to_string())
}

/// How to authenticate to a repository.
#[derive(Clone, Default)]
pub enum Credentials {
    /// None (public repositories, local paths, ssh with the server's own keys).
    #[default]
    None,
    /// HTTPS: a user name and a password or access token.
    Basic {
        /// The user name (`x-access-token` when the secret is a bare token).
        username: String,
        /// The password or token.
        password: String,
    },
    /// SSH: the path of a private key file.
    SshKey(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.write_str(match self {
            Credentials::None => "Credentials::None",
            Credentials::Basic { .. } => "Credentials::Basic(***)",
            Credentials::SshKey(_) => "Credentials::SshKey(***)",
        })
    }
}

/// A fetched branch head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The commit.
    pub commit: SourceCommit,
    /// The document at the source's path, merged when it is a directory; and, for each flag, the
    /// file that defined it (for error messages).
    pub document: Value,
    /// The file each flag came from.
    pub origins: Vec<(String, String)>,
}

/// Fetches `branch` of `repository` into the bare repository at `cache` (created when
/// missing) and reads the document at `path` in its head commit. `interrupt` aborts a transfer
/// in progress (set it when the caller's deadline passes).
pub fn fetch_head(
    cache: &Path,
    repository: &str,
    branch: &str,
    path: &str,
    credentials: &Credentials,
    interrupt: &AtomicBool,
) -> Result<Head, GitError> {
    let repo = open_or_init(cache)?;
    let repo = fetch(repo, repository, branch, credentials, interrupt)?;
    let mut reference = repo.find_reference(SOURCE_REF).map_err(local)?;
    let commit = reference.peel_to_commit().map_err(local)?;
    let info = commit_info(&commit)?;
    let tree = commit.tree().map_err(local)?;
    let (document, origins) = read_document(&repo, &tree, path)?;
    Ok(Head {
        commit: info,
        document,
        origins,
    })
}

fn open_or_init(cache: &Path) -> Result<gix::Repository, GitError> {
    if cache.join("HEAD").exists() {
        return gix::open(cache).map_err(local);
    }
    std::fs::create_dir_all(cache).map_err(local)?;
    gix::init_bare(cache).map_err(local)
}

fn fetch(
    mut repo: gix::Repository,
    repository: &str,
    branch: &str,
    credentials: &Credentials,
    interrupt: &AtomicBool,
) -> Result<gix::Repository, GitError> {
    let failed = |error: &dyn std::error::Error| GitError::Fetch {
        repository: repository.to_owned(),
        message: crate::outbound::chain(error),
    };
    // A local repository that is not there: say so plainly (gix's message is about verifying a
    // git directory).
    if let Some(path) = local_path(repository)
        && !Path::new(path).exists()
    {
        return Err(GitError::Fetch {
            repository: repository.to_owned(),
            message: format!(
                "there is no directory {path} on the server (a local repository is read from the server's own file system)"
            ),
        });
    }
    if let Credentials::SshKey(key) = credentials {
        let command = format!(
            "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes",
            key.display()
        );
        let mut config = repo.config_snapshot_mut();
        config
            .set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())
            .map_err(local)?;
        config.commit().map_err(local)?;
    }
    {
        let remote = repo
            .remote_at(repository)
            .map_err(|e| failed(&e))?
            .with_refspecs(
                [format!("+refs/heads/{branch}:{SOURCE_REF}").as_str()],
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| failed(&e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| failed(&e))?;
        let basic = match credentials {
            Credentials::Basic { username, password } => Some((username.clone(), password.clone())),
            _ => None,
        };
        // Our credentials, or none: never the server user's credential helpers or a prompt.
        let connection = connection.with_credentials(move |action| match (&action, &basic) {
            (gix::credentials::helper::Action::Get(_), Some((username, password))) => {
                Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: username.clone(),
                        password: password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: gix::credentials::helper::NextAction::from(
                        gix::credentials::protocol::Context::default(),
                    ),
                }))
            }
            _ => Ok(None),
        });
        // gix says "none of the refspecs matched" for a branch the remote does not have.
        let no_branch = |error: &dyn std::error::Error| {
            let text = crate::outbound::chain(error);
            if text.contains("refspec") && text.contains("matched") {
                GitError::Fetch {
                    repository: repository.to_owned(),
                    message: format!("the repository has no branch {branch:?}"),
                }
            } else {
                failed(error)
            }
        };
        let outcome = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| no_branch(&e))?
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| no_branch(&e))?;
        let found = outcome.ref_map.mappings.iter().any(|mapping| {
            mapping
                .remote
                .as_name()
                .is_some_and(|name| name == format!("refs/heads/{branch}").as_bytes())
        });
        if !found {
            return Err(GitError::Fetch {
                repository: repository.to_owned(),
                message: format!("the repository has no branch {branch:?}"),
            });
        }
    }
    Ok(repo)
}

/// Whether a repository is reached over SSH: `ssh://…`, or the scp-like `user@host:path`.
pub fn is_ssh(repository: &str) -> bool {
    repository.starts_with("ssh://")
        || (!repository.contains("://")
            && repository
                .split_once(':')
                .is_some_and(|(host, _)| host.contains('@') && !host.contains('/')))
}

/// The directory of a repository on the server's own file system (`file://…` or a plain path).
pub fn local_path(repository: &str) -> Option<&str> {
    repository
        .strip_prefix("file://")
        .or((!repository.contains("://") && !is_ssh(repository)).then_some(repository))
}

fn commit_info(commit: &gix::Commit<'_>) -> Result<SourceCommit, GitError> {
    let sha = commit.id().to_string();
    let short_sha = sha.chars().take(7).collect();
    let message = commit.message().map_err(local)?;
    let subject = message.summary().to_str_lossy().into_owned();
    let author = commit.author().map_err(local)?;
    let author = format!(
        "{} <{}>",
        author.name.to_str_lossy(),
        author.email.to_str_lossy()
    );
    let committed_at = commit.time().map_err(local)?.seconds;
    Ok(SourceCommit {
        sha,
        short_sha,
        subject,
        author,
        committed_at,
    })
}

/// Reads the document at `path` of `tree`: one JSON file, or a directory whose `*.json` files
/// are merged in name order.
fn read_document(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    path: &str,
) -> Result<(Value, Vec<(String, String)>), GitError> {
    let trimmed = path.trim_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    let entry = if trimmed.is_empty() || trimmed == "." {
        None
    } else {
        Some(
            tree.lookup_entry_by_path(trimmed)
                .map_err(local)?
                .ok_or_else(|| {
                    GitError::Content(format!("the branch head has no file or directory {path:?}"))
                })?,
        )
    };
    let files: Vec<(String, gix::ObjectId)> = match entry {
        Some(entry) if entry.mode().is_blob() => vec![(trimmed.to_owned(), entry.object_id())],
        Some(entry) if entry.mode().is_tree() => json_files(repo, entry.object_id(), trimmed)?,
        None => json_files(repo, tree.id, "")?,
        Some(_) => {
            return Err(GitError::Content(format!(
                "{path:?} is neither a file nor a directory"
            )));
        }
    };
    if files.is_empty() {
        return Err(GitError::Content(format!(
            "the directory {path:?} has no *.json file"
        )));
    }
    let mut parsed = Vec::with_capacity(files.len());
    for (name, id) in files {
        let blob = repo.find_blob(id).map_err(local)?;
        let text = std::str::from_utf8(&blob.data)
            .map_err(|_| GitError::Content(format!("{name} is not UTF-8 text")))?;
        let value: Value = flag_core::json::from_str_unique(text)
            .map_err(|error| GitError::Content(format!("{name} is not valid JSON: {error}")))?;
        parsed.push((name, value));
    }
    if parsed.len() == 1 {
        let (name, document) = parsed.remove(0);
        let origins = flag_keys(&document)
            .into_iter()
            .map(|key| (key, name.clone()))
            .collect();
        return Ok((document, origins));
    }
    merge(parsed)
}

/// The `*.json` blobs directly in a tree, by name.
fn json_files(
    repo: &gix::Repository,
    tree: gix::ObjectId,
    prefix: &str,
) -> Result<Vec<(String, gix::ObjectId)>, GitError> {
    let tree = repo.find_tree(tree).map_err(local)?;
    let decoded = tree.decode().map_err(local)?;
    let mut files: Vec<(String, gix::ObjectId)> = decoded
        .entries
        .iter()
        .filter(|entry| entry.mode.is_blob() && entry.filename.ends_with(b".json"))
        .map(|entry| {
            let name = entry.filename.to_str_lossy();
            let name = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            (name, entry.oid.to_owned())
        })
        .collect();
    files.sort();
    Ok(files)
}

fn flag_keys(document: &Value) -> Vec<String> {
    match document.get("flags") {
        Some(Value::Object(flags)) => flags.keys().cloned().collect(),
        Some(Value::Array(flags)) => flags
            .iter()
            .filter_map(|f| f.get("key").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Merges flag-set documents in order: flags, `$evaluators` and metadata entries of a later file
/// replace an earlier one's (as flagd merges its sources).
fn merge(files: Vec<(String, Value)>) -> Result<(Value, Vec<(String, String)>), GitError> {
    let mut flags = Map::new();
    let mut evaluators = Map::new();
    let mut metadata = Map::new();
    let mut origins: Vec<(String, String)> = Vec::new();
    for (name, document) in files {
        let Value::Object(mut document) = document else {
            return Err(GitError::Content(format!(
                "{name} is not a flagd document (a JSON object)"
            )));
        };
        // A file of the directory that is not a flag set (a typo such as "flagz", another
        // tool's JSON) would silently drop its flags: refused, naming it.
        if let Some(key) = document
            .keys()
            .find(|key| !["$schema", "metadata", "$evaluators", "flags"].contains(&key.as_str()))
        {
            return Err(GitError::Content(format!(
                "{name} has the field {key:?}, which a flagd flag set does not have (expected \"flags\", \"$evaluators\", \"metadata\", \"$schema\")"
            )));
        }
        if !document.contains_key("flags") {
            return Err(GitError::Content(format!(
                "{name} has no \"flags\": it is not a flagd flag set"
            )));
        }
        match document.remove("flags") {
            Some(Value::Object(entries)) => {
                for (key, flag) in entries {
                    origins.retain(|(k, _)| *k != key);
                    origins.push((key.clone(), name.clone()));
                    flags.insert(key, flag);
                }
            }
            Some(Value::Array(entries)) => {
                for mut flag in entries {
                    let key = flag
                        .as_object_mut()
                        .and_then(|f| f.remove("key"))
                        .and_then(|k| k.as_str().map(str::to_owned))
                        .ok_or_else(|| {
                            GitError::Content(format!("{name}: a flag in the array has no \"key\""))
                        })?;
                    origins.retain(|(k, _)| *k != key);
                    origins.push((key.clone(), name.clone()));
                    flags.insert(key, flag);
                }
            }
            None => {}
            Some(_) => {
                return Err(GitError::Content(format!(
                    "{name}: \"flags\" must be an object or an array"
                )));
            }
        }
        for (field, target) in [
            ("$evaluators", &mut evaluators),
            ("metadata", &mut metadata),
        ] {
            match document.remove(field) {
                Some(Value::Object(entries)) => target.extend(entries),
                None => {}
                Some(_) => {
                    return Err(GitError::Content(format!(
                        "{name}: {field:?} must be an object"
                    )));
                }
            }
        }
    }
    let mut merged = Map::new();
    if !metadata.is_empty() {
        merged.insert("metadata".to_owned(), Value::Object(metadata));
    }
    if !evaluators.is_empty() {
        merged.insert("$evaluators".to_owned(), Value::Object(evaluators));
    }
    merged.insert("flags".to_owned(), Value::Object(flags));
    Ok((Value::Object(merged), origins))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_files_replace_earlier_ones_and_array_forms_merge() {
        let (merged, origins) = merge(vec![
            (
                "a.json".into(),
                json!({"flags": {"x": {"v": 1}, "y": {"v": 1}}, "$evaluators": {"e": 1}}),
            ),
            (
                "b.json".into(),
                json!({"flags": [{"key": "y", "v": 2}], "metadata": {"team": "t"}}),
            ),
        ])
        .unwrap();
        assert_eq!(
            merged,
            json!({"flags": {"x": {"v": 1}, "y": {"v": 2}}, "$evaluators": {"e": 1},
                   "metadata": {"team": "t"}})
        );
        assert!(origins.contains(&("y".to_owned(), "b.json".to_owned())));
        assert!(origins.contains(&("x".to_owned(), "a.json".to_owned())));
        let error = merge(vec![("c.json".into(), json!([1]))]).unwrap_err();
        assert!(error.to_string().contains("c.json"), "{error}");
    }
}
