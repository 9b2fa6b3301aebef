//! The last-known-good cache file: the latest flags, written atomically after each change and
//! read at start when the server cannot be reached.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::FlagState;

/// Bumped when the file layout changes; other versions are ignored.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    /// The server the flags came from: a cache from another server is not used.
    server: Option<String>,
    environment: Option<String>,
    version: Option<i64>,
    document: Value,
}

/// Reads the cache; `None` (with a warning) when it is missing, corrupt or from another server.
pub(crate) fn load(path: &Path, server: Option<&str>) -> Option<FlagState> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the flag cache; ignoring it");
            return None;
        }
    };
    let cache: CacheFile = match serde_json::from_str(&text) {
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
    tracing::info!(path = %path.display(), version = ?cache.version, "serving cached flags until the server is reached");
    Some(FlagState::new(
        cache.version,
        cache.environment,
        cache.document,
    ))
}

/// Writes the cache atomically: a temporary file, fsync, rename.
pub(crate) fn store(path: &Path, server: &str, state: &FlagState) -> std::io::Result<()> {
    let cache = CacheFile {
        format: FORMAT,
        server: Some(server.to_owned()),
        environment: state.environment.clone(),
        version: state.version,
        document: state.document.clone(),
    };
    let bytes = serde_json::to_vec(&cache).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
