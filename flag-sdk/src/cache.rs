//! The last-known-good cache file: the latest flags from the server, written after each change
//! by one writer thread (so writes land in order: a later version is never overwritten by an
//! earlier one), and read at start when the server cannot be reached.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use flag_protocol::Document;
use serde::{Deserialize, Serialize};

use crate::state::{Persist, Snapshot};

/// Bumped when the file layout changes; other versions are ignored. 2: the origin is the stream
/// URL (server and requested environment) and a token fingerprint, not the server URL alone.
const FORMAT: u32 = 2;

/// Where cached flags came from. A cache is used only by a client of the same origin: the same
/// server and requested environment (the stream URL says both) and the same token (an sdk token
/// names its environment). Otherwise a client could serve, and resume with `since` from, another
/// environment's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    stream: String,
    /// A 64-bit fingerprint of the token (std's SipHash): tells tokens apart, reveals nothing
    /// useful about a 256-bit secret. If a Rust release changes the hash, old caches are simply
    /// not used once.
    token: String,
}

impl Origin {
    pub(crate) fn new(stream: &url::Url, token: &str) -> Origin {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        token.hash(&mut hasher);
        Origin {
            stream: stream.to_string(),
            token: format!("{:016x}", hasher.finish()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile<D> {
    format: u32,
    origin: Option<Origin>,
    environment: Option<String>,
    version: Option<i64>,
    /// The digest of the commit at `version` (absent in caches written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    document: D,
}

/// Reads the cache; `None` (with a warning) when it is missing, corrupt or of another origin
/// (`origin` is `None` for an offline client, which takes any cache).
pub(crate) fn load(path: &Path, origin: Option<&Origin>) -> Option<Snapshot> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the flag cache; ignoring it");
            return None;
        }
    };
    let cache: CacheFile<serde_json::Value> = match serde_json::from_str(&text) {
        Ok(cache) => cache,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the flag cache is corrupt; ignoring it");
            return None;
        }
    };
    if cache.format != FORMAT {
        tracing::warn!(path = %path.display(), format = cache.format, "the flag cache has another format; ignoring it");
        return None;
    }
    if let Some(expected) = origin
        && cache.origin.as_ref() != Some(expected)
    {
        tracing::warn!(path = %path.display(), cached = ?cache.origin.map(|o| o.stream), expected = %expected.stream, "the flag cache is from another server, environment or token; ignoring it");
        return None;
    }
    let document = match Document::from_value(cache.document) {
        Ok(document) => document,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the flag cache holds no flagd document; ignoring it");
            return None;
        }
    };
    tracing::info!(path = %path.display(), version = ?cache.version, "serving cached flags until the server is reached");
    let mut snapshot = Snapshot::compile(cache.version, cache.environment, document);
    snapshot.digest = cache.digest;
    Some(snapshot)
}

/// Writes `snapshot` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename over the old file, fsync of the directory (so the rename itself survives a
/// crash).
fn store(path: &Path, origin: &Origin, snapshot: &Snapshot) -> std::io::Result<()> {
    let cache = CacheFile {
        format: FORMAT,
        origin: Some(origin.clone()),
        environment: snapshot.environment.clone(),
        version: snapshot.version,
        digest: snapshot.digest.clone(),
        document: &snapshot.document,
    };
    let bytes = serde_json::to_vec(&cache).map_err(std::io::Error::other)?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(directory)?;
    file.write_all(&bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    sync_directory(directory)
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> std::io::Result<()> {
    // Directories cannot be opened for fsync elsewhere; the rename is as durable as it gets.
    Ok(())
}

/// The one writer of a cache file: a thread that writes the newest snapshot it has been given,
/// skipping ones superseded while it was writing. It ends when the client's shared state (and
/// with it this writer) is dropped.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    sender: mpsc::Sender<Job>,
}

/// What the writer thread is asked to do.
enum Job {
    Write(Arc<Snapshot>),
    /// Answer once everything sent before is on disk.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl CacheWriter {
    pub(crate) fn start(path: PathBuf, origin: Origin) -> CacheWriter {
        let (sender, receiver) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("flag-sdk-cache".to_owned())
            .spawn(move || {
                let mut pending: Option<Arc<Snapshot>> = None;
                let mut waiting = Vec::new();
                while let Ok(job) = receiver.recv() {
                    let mut next = Some(job);
                    // Take everything queued: only the newest snapshot matters.
                    while let Some(job) = next.take().or_else(|| receiver.try_recv().ok()) {
                        match job {
                            Job::Write(snapshot) => pending = Some(snapshot),
                            Job::Flush(done) => waiting.push(done),
                        }
                    }
                    if let Some(snapshot) = pending.take()
                        && let Err(error) = store(&path, &origin, &snapshot)
                    {
                        tracing::warn!(path = %path.display(), %error, "cannot write the flag cache");
                    }
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
            });
        if let Err(error) = spawned {
            // The receiver is gone with the closure: sends fail quietly and nothing is cached.
            tracing::warn!(%error, "cannot start the flag cache writer; flags will not be cached");
        }
        CacheWriter { sender }
    }
}

impl Persist for CacheWriter {
    fn persist(&self, snapshot: Arc<Snapshot>) {
        let _ = self.sender.send(Job::Write(snapshot));
    }

    fn flush(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.sender.send(Job::Flush(done)).ok()?;
        Some(flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(version: i64) -> Arc<Snapshot> {
        let document = Document::from_value(json!({"flags": {"f": {
            "state": "ENABLED", "variants": {"v": version}, "defaultVariant": "v"}}}))
        .unwrap();
        Arc::new(Snapshot::compile(Some(version), Some("e".into()), document))
    }

    #[test]
    fn the_writer_leaves_the_newest_version_and_no_temporary_files() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("flags.json");
        let stream = url::Url::parse("ws://s/api/v1/stream").unwrap();
        let origin = Origin::new(&stream, "token");
        let writer = CacheWriter::start(path.clone(), origin.clone());
        for version in 1..=50 {
            writer.persist(snapshot(version));
        }
        // Dropping the writer closes the channel; the thread finishes what it has.
        drop(writer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(loaded) = load(&path, Some(&origin))
                && loaded.version == Some(50)
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never reached version 50"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let files: Vec<_> = std::fs::read_dir(directory.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "temporary files left: {files:?}");
        // Another server's, environment's or token's cache is not used; offline, any is.
        let other = url::Url::parse("ws://s/api/v1/stream?environment=prod").unwrap();
        assert!(load(&path, Some(&Origin::new(&other, "token"))).is_none());
        assert!(load(&path, Some(&Origin::new(&stream, "another token"))).is_none());
        assert!(load(&path, None).is_some());
    }
}
