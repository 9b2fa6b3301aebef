//! Command-line and environment configuration. Every option has an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::units::{DurationError, parse_duration, parse_size};

/// The flag server: stores flags per environment (SQLite in --data-dir, or PostgreSQL with
/// --database-url for several replicas), serves the admin API, OFREP evaluation and the WebSocket
/// update stream, and applies ramps.
#[derive(Debug, Clone, Parser)]
#[command(name = "flagd-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the real address is printed as
    /// `listening on http://ADDR` (`https://` with --tls-cert).
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

    /// Store flags in this PostgreSQL database instead of SQLite in --data-dir, e.g.
    /// `postgres://flagd:secret@db:5432/flags` (`?options=-csearch_path%3Dschema` picks a schema).
    /// Several replicas may share one database: they follow each other's commits and elect one
    /// ramp scheduler. Migrations are applied at start. Prefer the environment variable: a
    /// password on the command line is visible to other users of the machine.
    #[arg(
        long,
        env = "FLAGD_DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

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

    /// Serve HTTPS (and WSS for the stream) with this certificate chain (PEM, leaf first).
    /// Needs --tls-key. The files are re-read when they change (see --tls-reload-interval) and
    /// on SIGHUP; a pair that does not load is logged and the current one kept.
    #[arg(
        long,
        env = "FLAGD_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "FLAGD_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by one of these CAs (PEM): mutual TLS.
    #[arg(
        long,
        env = "FLAGD_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS certificate and key are checked for a change (modification time or
    /// size), e.g. `10s`; at least 1 s. The client CA (--tls-client-ca) is read at start only.
    #[arg(long, env = "FLAGD_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// A CA certificate (PEM) to trust for https:// ramp guards, besides the public roots.
    #[arg(long, env = "FLAGD_GUARD_CA", value_name = "FILE")]
    pub guard_ca: Option<PathBuf>,

    /// A directory of named secrets for Git sources (`credentials`, `webhookSecret`): the file
    /// `DIR/<name>` holds the secret `<name>`, as Kubernetes mounts secrets. A variable
    /// `FLAGD_SECRET_<NAME>` (upper case, `-` and `.` as `_`) takes precedence.
    #[arg(long, env = "FLAGD_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Trust the OIDC ID tokens of these issuers (TOML or JSON; see docs/AUTH.md): CI workloads
    /// authenticate with the short-lived token their platform issues instead of a stored admin
    /// token. Each issuer lists rules mapping claims (repository, branch...) to admin access,
    /// optionally confined to environments. Read at start; a bad file stops the start.
    #[arg(long, env = "FLAGD_OIDC_CONFIG", value_name = "FILE")]
    pub oidc_config: Option<PathBuf>,

    /// How long hourly evaluation counts (OFREP, and what SDKs report) are kept, e.g. `90d`;
    /// at least 1h. They answer `GET …/flags/{key}/usage`, the listings' `lastEvaluated` and
    /// `flagctl stale`.
    #[arg(long, env = "FLAGD_USAGE_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub usage_retention: Duration,

    /// How many flags get `flagd_evaluations_total` series of their own (per environment, first
    /// evaluated first); evaluations of the others are counted as flag="other".
    #[arg(long, env = "FLAGD_METRICS_MAX_FLAGS", default_value_t = crate::metrics::DEFAULT_MAX_FLAG_SERIES)]
    pub metrics_max_flags: usize,

    /// A dashboard session (`/ui/`) ends after this long without a request (and 12 hours after
    /// sign-in in any case).
    #[arg(long, env = "FLAGD_UI_SESSION_IDLE", default_value = "30m", value_parser = parse_duration)]
    pub ui_session_idle: Duration,

    /// Mark the dashboard's session cookie `Secure` even though this server speaks plain HTTP:
    /// for a TLS-terminating proxy in front (which may also send `X-Forwarded-Proto: https`).
    /// Under `--tls-cert` it always is.
    #[arg(long, env = "FLAGD_UI_SECURE_COOKIE", value_parser = clap::builder::BoolishValueParser::new())]
    pub ui_secure_cookie: bool,

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
    /// Move to PostgreSQL: copy everything the SQLite store in a data directory holds (flags
    /// with their versions, the audit log, tokens, ramps) into a new, empty PostgreSQL database
    /// in one transaction, keeping versions and ids so SDKs resume without a snapshot. Stop the
    /// server first; then start the replicas with --database-url.
    Migrate(MigrateArgs),
}

/// `flagd-server migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The data directory of the SQLite server (holding `flags.db`).
    #[arg(long, value_name = "DIR")]
    pub from_sqlite: PathBuf,
    /// The PostgreSQL database to fill (it must be empty, or new).
    #[arg(long, value_name = "URL")]
    pub to: String,
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

#[cfg(test)]
mod tests {
    use super::*;

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
