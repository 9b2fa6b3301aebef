//! Command-line and environment configuration. Every option has an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The flag server: stores flags per environment in SQLite, serves the admin API, and (later)
/// OFREP evaluation and a WebSocket update stream.
#[derive(Debug, Clone, Parser)]
#[command(name = "flagd-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the real address is printed as
    /// `listening on http://ADDR`.
    #[arg(long, env = "FLAGD_LISTEN", default_value = "127.0.0.1:8016")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database (`flags.db`) and the bootstrap `admin-token` file.
    /// Created if missing.
    #[arg(
        long,
        env = "FLAGD_DATA_DIR",
        default_value = "./flagd-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Admin token to create on first start, instead of a random one. Prefer the environment
    /// variable: command-line arguments are visible to other users of the machine.
    #[arg(long, env = "FLAGD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log format.
    #[arg(long, env = "FLAGD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `flagd_server=debug`).
    #[arg(long, env = "FLAGD_LOG", default_value = "info")]
    pub log: String,

    /// Largest accepted request body, e.g. `8MiB`, `512KiB`, `1000000` (bytes). Larger bodies
    /// get 413.
    #[arg(long, env = "FLAGD_BODY_LIMIT", default_value = "8MiB", value_parser = parse_size)]
    pub body_limit: usize,

    /// Most simultaneous client connections. When full, a new connection evicts the oldest one
    /// that has not sent a complete request yet (idle or slow); if every connection has, it
    /// waits to be accepted.
    #[arg(long, env = "FLAGD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Threads serving requests (default: one per CPU core). Lower it to leave cores to other
    /// processes on the same machine.
    #[arg(long, env = "FLAGD_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// How long a client may take to send a request's headers, and how long an idle
    /// connection (before its first request, or between two) stays open, e.g. `10s`.
    #[arg(long, env = "FLAGD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a request (reading its body included) may take before it is answered 408 and its
    /// connection closed, e.g. `30s`. Stream sessions are not requests and are not limited.
    #[arg(long, env = "FLAGD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Refuse every write that has warnings (what flagd loads but handles at evaluation time,
    /// such as an unknown operator), not only errors. A request can override it with
    /// `?strict=false` (or turn it on with `?strict=true`).
    #[arg(long, env = "FLAGD_STRICT", value_parser = clap::builder::BoolishValueParser::new())]
    pub strict: bool,

    /// On SIGINT/SIGTERM, how long the whole drain may take (in-flight requests finishing,
    /// stream clients receiving their goodbye), e.g. `10s`, `500ms`.
    #[arg(long, env = "FLAGD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Run a maintenance command instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Offline recovery: mint a new admin token in the data directory's store (for instance when
    /// every admin token was revoked or lost), record it in the audit log, and print it once.
    /// A running server picks it up when restarted.
    AdminToken(AdminTokenArgs),
}

/// `flagd-server admin-token`.
#[derive(Debug, Clone, Args)]
pub struct AdminTokenArgs {
    /// The new token's name (shown in listings and as the actor in the audit log).
    #[arg(long, default_value = "recovery-admin")]
    pub name: String,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Parses `8MiB`, `512KiB`, `10MB`, `1000` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 8MiB, 512KiB, 1000)"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("{0:?} is not a duration (examples: 10s, 500ms, 2m, 1h30m)")]
    Invalid(String),
    /// A duration, but too large to represent.
    #[error("{0:?} is too large a duration")]
    TooLarge(String),
}

/// Parses a duration with `humantime` (`10s`, `500ms`, `2m`, `1h30m`, `7d`); a bare number is
/// seconds. Overflowing values are an error, never a wrapped number.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError::TooLarge(text.to_owned()));
    }
    humantime::parse_duration(text).map_err(|error| match error {
        humantime::DurationError::NumberOverflow => DurationError::TooLarge(text.to_owned()),
        _ => DurationError::Invalid(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("soon").is_err());
        // Used to wrap around to 44 s.
        assert!(matches!(
            parse_duration("307445734561825861m"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn defaults_are_sane() {
        let config = Config::try_parse_from(["flagd-server"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8016");
        assert_eq!(config.body_limit, 8 << 20);
        // `ServerOptions::new` states the same defaults for embedders and tests.
        assert_eq!(
            crate::ServerOptions::from(&config),
            crate::ServerOptions::new(PathBuf::from("./flagd-data"))
        );
    }
}
