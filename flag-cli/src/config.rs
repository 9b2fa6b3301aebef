//! Where the server and token come from: flags, then `FLAGCTL_*` variables (both via clap),
//! then the config file written by `flagctl login`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// The config file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub token: Option<String>,
    pub environment: Option<String>,
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
    let io = |error: std::io::Error| {
        CliError::config(format!("cannot write {}: {error}", path.display()))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let text = toml::to_string(config)
        .map_err(|error| CliError::config(format!("cannot encode the config: {error}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write as _;
    let mut file = options.open(&path).map_err(io)?;
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(path)
}
