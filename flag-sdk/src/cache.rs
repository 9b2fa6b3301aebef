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

/// Bumped when the file layout changes; other versions are ignored.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CacheFile<D> {
    format: u32,
    /// The server the flags came from: a cache from another server is not used.
    server: Option<String>,
    environment: Option<String>,
    version: Option<i64>,
    document: D,
}

/// Reads the cache; `None` (with a warning) when it is missing, corrupt or from another server.
pub(crate) fn load(path: &Path, server: Option<&str>) -> Option<Snapshot> {
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
    if let (Some(expected), Some(cached)) = (server, cache.server.as_deref())
        && expected != cached
    {
        tracing::warn!(path = %path.display(), cached, expected, "the flag cache is from another server; ignoring it");
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
    Some(Snapshot::compile(
        cache.version,
        cache.environment,
        document,
    ))
}

/// Writes `snapshot` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename over the old file, fsync of the directory (so the rename itself survives a
/// crash).
fn store(path: &Path, server: &str, snapshot: &Snapshot) -> std::io::Result<()> {
    let cache = CacheFile {
        format: FORMAT,
        server: Some(server.to_owned()),
        environment: snapshot.environment.clone(),
        version: snapshot.version,
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
    sender: mpsc::Sender<Arc<Snapshot>>,
}

impl CacheWriter {
    pub(crate) fn start(path: PathBuf, server: String) -> CacheWriter {
        let (sender, receiver) = mpsc::channel::<Arc<Snapshot>>();
        let spawned = std::thread::Builder::new()
            .name("flag-sdk-cache".to_owned())
            .spawn(move || {
                while let Ok(mut snapshot) = receiver.recv() {
                    // Only the newest matters.
                    while let Ok(newer) = receiver.try_recv() {
                        snapshot = newer;
                    }
                    if let Err(error) = store(&path, &server, &snapshot) {
                        tracing::warn!(path = %path.display(), %error, "cannot write the flag cache");
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
        let _ = self.sender.send(snapshot);
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
        let writer = CacheWriter::start(path.clone(), "http://s".into());
        for version in 1..=50 {
            writer.persist(snapshot(version));
        }
        // Dropping the writer closes the channel; the thread finishes what it has.
        drop(writer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(loaded) = load(&path, Some("http://s"))
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
        // Another server's cache is not used.
        assert!(load(&path, Some("http://other")).is_none());
    }
}
