//! Where the server and token come from: flags, then `FLAGCTL_*` variables (both via clap),
//! then the config file written by `flagctl login`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// The config file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub token: Option<String>,
    pub environment: Option<String>,
    /// A private CA to trust for the server (`--ca-cert`), as an absolute path.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate and its key for mutual TLS (`--client-cert`, `--client-key`),
    /// as absolute paths.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/flagctl/config.toml`, else `~/.config/flagctl/config.toml`.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("flagctl").join("config.toml"))
}

pub fn load() -> Result<ConfigFile> {
    let Some(path) = path() else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|error| CliError::config(format!("cannot read {}: {error}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(error) => Err(CliError::config(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// Writes the config file, readable only by its owner (it holds a token).
pub fn save(config: &ConfigFile) -> Result<PathBuf> {
    let path = path().ok_or_else(|| {
        CliError::config("cannot find a config directory: set XDG_CONFIG_HOME or HOME")
    })?;
    let text = toml::to_string(config)
        .map_err(|error| CliError::config(format!("cannot encode the config: {error}")))?;
    write_private(&path, text.as_bytes())
        .map_err(|error| CliError::config(format!("cannot write {}: {error}", path.display())))?;
    Ok(path)
}

/// Replaces `path` atomically with a file of mode 0600 holding `contents`: a reader (or a crash)
/// sees the old file or the new one, never a half-written token, and the token is never in a
/// file others can read, not even for a moment.
///
/// The temporary file is created 0600 in the same directory (a rename cannot cross file
/// systems), synced, renamed over `path`, and then the directory is synced so the rename itself
/// survives a power cut.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".config.toml.");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let mut file = builder.tempfile_in(directory)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    #[cfg(unix)]
    std::fs::File::open(directory)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn the_config_is_replaced_whole_and_private() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("flagctl").join("config.toml");
        write_private(&path, b"token = \"first\"\n").expect("the first write");
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("token = \"first\"\n")
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&path), 0o600);
            // A file someone made readable by others is replaced by a private one.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        write_private(&path, b"token = \"second\"\n").expect("the second write");
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("token = \"second\"\n")
        );
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("a parent"))
            .expect("the directory")
            .filter_map(|entry| entry.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["config.toml"]);
    }
}
