//! flagd-server: stores flags per environment in SQLite and serves the admin API.
//!
//! `Server::open` opens the store and bootstraps the first admin token; `Server::serve` runs
//! the API on a listener until a shutdown future completes, then drains in-flight requests for
//! a bounded time. Tests bind `127.0.0.1:0` and pass their own shutdown future.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod git;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod units;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::domain::tokens::{TokenCache, generate_id, generate_secret, hash_secret};
use crate::state::{AppState, Clock};
use crate::store::{FlagStore, PostgresStore, Role, SqliteStore, StoreError, TokenRecord};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "flags.db";
/// The bootstrap admin token file inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The shortest `FLAGD_ADMIN_TOKEN` accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory could not be used.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// The runtime failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// The TLS certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// What the server needs to know (the binary fills it from `config::Config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Directory for the database and the admin-token file.
    pub data_dir: PathBuf,
    /// A PostgreSQL connection string: store there (several replicas may share it) instead of
    /// SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Admin token to create on first start instead of a random one.
    pub admin_token: Option<String>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// How long in-flight requests get after shutdown is signalled.
    pub shutdown_timeout: Duration,
    /// Writes refuse warnings by default.
    pub strict: bool,
    /// How long a client may take to send headers (and stay idle before a request).
    pub header_timeout: Duration,
    /// How long a request may take, its body included.
    pub request_timeout: Duration,
    /// HTTPS and WSS instead of plain HTTP.
    pub tls: Option<tls::TlsOptions>,
    /// A CA (PEM) trusted for `https://` ramp guards besides the public roots.
    pub guard_ca: Option<PathBuf>,
    /// Where Git sources' named secrets are read from, besides `FLAGD_SECRET_<NAME>`.
    pub secrets_dir: Option<PathBuf>,
    /// The OIDC trust policies (`--oidc-config`): ID tokens of these issuers authenticate.
    pub oidc_config: Option<PathBuf>,
    /// How long hourly evaluation counts are kept.
    pub usage_retention: Duration,
    /// How many flags get `flagd_evaluations_total` series of their own.
    pub metrics_max_flags: usize,
    /// How long an unused dashboard session lives.
    pub ui_session_idle: Duration,
    /// Whether the session cookie is `Secure` without TLS here (a TLS proxy in front).
    pub ui_secure_cookie: bool,
}

impl ServerOptions {
    /// The binary's defaults (`flagd-server --help`) with `data_dir`; embedders and tests change
    /// the fields they care about with `..ServerOptions::new(dir)`.
    pub fn new(data_dir: PathBuf) -> ServerOptions {
        ServerOptions {
            data_dir,
            database_url: None,
            admin_token: None,
            body_limit: 8 << 20,
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            strict: false,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls: None,
            guard_ca: None,
            secrets_dir: None,
            oidc_config: None,
            usage_retention: domain::usage::DEFAULT_RETENTION,
            metrics_max_flags: metrics::DEFAULT_MAX_FLAG_SERIES,
            ui_session_idle: Duration::from_secs(30 * 60),
            ui_secure_cookie: false,
        }
    }
}

impl From<&config::Config> for ServerOptions {
    fn from(config: &config::Config) -> Self {
        ServerOptions {
            data_dir: config.data_dir.clone(),
            database_url: config.database_url.clone(),
            admin_token: config.admin_token.clone(),
            body_limit: config.body_limit,
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
            strict: config.strict,
            header_timeout: config.header_timeout,
            request_timeout: config.request_timeout,
            tls: match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => Some(tls::TlsOptions {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                    reload_interval: config.tls_reload_interval,
                }),
                _ => None,
            },
            guard_ca: config.guard_ca.clone(),
            secrets_dir: config.secrets_dir.clone(),
            oidc_config: config.oidc_config.clone(),
            usage_retention: config.usage_retention,
            metrics_max_flags: config.metrics_max_flags,
            ui_session_idle: config.ui_session_idle,
            ui_secure_cookie: config.ui_secure_cookie,
        }
    }
}

/// How the operator can authenticate, as found or set up at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAccess {
    /// A new admin token was created and written to this file.
    Created(PathBuf),
    /// Tokens already existed; this file holds the bootstrap token, if it is still there.
    Existing(Option<PathBuf>),
}

/// An opened server, ready to serve.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    options: ServerOptions,
    access: AdminAccess,
    tls: Option<tls::Tls>,
}

impl Server {
    /// Opens (creating if needed) the data directory and the store, and bootstraps the admin
    /// token on an empty store.
    pub async fn open(options: ServerOptions, clock: Clock) -> Result<Server, StartError> {
        // TLS material and the guard CA first: a bad file stops the start before anything is
        // created in the data directory.
        let tls = options.tls.clone().map(tls::Tls::load).transpose()?;
        let guard_roots = options.guard_ca.as_deref().map(guard_roots).transpose()?;
        let oidc = options
            .oidc_config
            .as_deref()
            .map(domain::oidc::Oidc::load)
            .transpose()
            .map_err(|error| StartError::Config(format!("--oidc-config {error}")))?;
        let opened = options.clone();
        let start_clock = clock.clone();
        let (state, access, postgres) = tokio::task::spawn_blocking(move || {
            let (store, access, postgres) = open_blocking(&opened, &start_clock)?;
            let tokens = TokenCache::default();
            tokens.load(store.tokens()?);
            let state = AppState::new(store, tokens, start_clock)?;
            state
                .strict_writes
                .store(opened.strict, std::sync::atomic::Ordering::Relaxed);
            state.set_request_timeout(opened.request_timeout);
            state.usage.set_retention(opened.usage_retention);
            state.ui.sessions.set_idle(opened.ui_session_idle);
            state.ui.secure_cookies.store(
                opened.tls.is_some() || opened.ui_secure_cookie,
                std::sync::atomic::Ordering::Relaxed,
            );
            state
                .metrics
                .set_evaluation_flag_limit(opened.metrics_max_flags);
            Ok::<_, StartError>((state, access, postgres))
        })
        .await
        .map_err(|error| StartError::Config(format!("start-up task failed: {error}")))??;
        if let Some(roots) = guard_roots {
            let _ = state.guard_ca.set(roots);
        }
        if let Some(oidc) = oidc {
            tracing::info!(issuers = ?oidc.issuer_names(), "trusting OIDC ID tokens");
            let _ = state.oidc.set(oidc);
        }
        // Git sources fetch into the data directory; HTTPS remotes use rustls with ring (gix's
        // reqwest is built without a provider of its own).
        let _ = rustls::crypto::ring::default_provider().install_default();
        state
            .gitops
            .configure(options.data_dir.join("git"), options.secrets_dir.clone());
        if let Some(postgres) = postgres {
            // Replicas: follow the others' commits, and take part in the leader election for
            // the ramp scheduler. Both run on threads of their own with dedicated connections.
            let (notices, received) = tokio::sync::mpsc::unbounded_channel();
            let thread = |error: std::io::Error| StartError::Serve(error);
            let heartbeat = postgres.listen(notices).map_err(thread)?;
            let leadership = postgres.elect().map_err(thread)?;
            let _ = state.leadership.set(leadership);
            tokio::spawn(domain::replication::follow(
                state.domain.clone(),
                received,
                heartbeat,
                state.shutdown.clone(),
            ));
        }
        Ok(Server {
            state,
            options,
            access,
            tls,
        })
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The TLS reloader, when serving TLS: `reload_now` re-reads the files (the binary calls it
    /// on SIGHUP).
    pub fn tls(&self) -> Option<&tls::Tls> {
        self.tls.as_ref()
    }

    /// How the operator authenticates.
    pub fn admin_access(&self) -> &AdminAccess {
        &self.access
    }

    /// The shared state (for in-process tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The router.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone(), self.options.body_limit)
    }

    /// Serves until `shutdown` completes, then gives in-flight requests `shutdown_timeout`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let router = self.router();
        let connections =
            listener::Connections::new(self.options.max_connections, self.state.metrics.clone());
        let stopping = self.state.shutdown.clone();
        let signal = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(
                "shutdown requested: finishing in-flight requests, saying goodbye to streams"
            );
            signal.cancel();
        });
        // The ramp scheduler: once a second, apply the steps that are due (restarted on failure).
        let scheduler = tokio::spawn(domain::ramp::run_scheduler(
            self.state.domain.clone(),
            stopping.clone(),
            domain::ramp::SchedulerSettings::default(),
        ));
        // OIDC: fetch the trusted issuers' keys now, so a wrong issuer shows before a pipeline
        // needs it.
        let domain = self.state.domain.clone();
        tokio::spawn(async move {
            if let Some(oidc) = domain.oidc.get() {
                oidc.prefetch(domain.now()).await;
            }
        });
        // Evaluation counts: written every 10 s, pruned hourly; the last flush is below.
        tokio::spawn(domain::usage::run_flusher(
            self.state.domain.clone(),
            stopping.clone(),
        ));
        // GitOps: reconcile bound environments at start and every interval (on the leader).
        tokio::spawn(domain::gitops::run_reconciler(
            self.state.domain.clone(),
            stopping.clone(),
        ));
        // Our own accept loop rather than axum::serve: it sets hyper's header-read timeout
        // (which also closes connections idle between requests), bounds sockets that never send
        // a byte, and admits connections through `Connections`, which evicts sockets that have
        // sent no request at the cap.
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.options.header_timeout)
            // A client that sends its request and then shuts down its write side still gets
            // the answer.
            .half_close(true);
        let header_timeout = self.options.header_timeout;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(stopping.clone()));
        }
        let acceptor = self.tls.as_ref().map(|tls| tls.acceptor().clone());
        loop {
            let mut connection = tokio::select! {
                () = stopping.cancelled() => break,
                connection = listener::accept(&listener, &connections) => connection,
            };
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let router = router.clone();
            let stopping = stopping.clone();
            let metrics = self.state.metrics.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let first = tokio::select! {
                    first = connection.first_byte(header_timeout) => first,
                    () = stopping.cancelled() => return,
                };
                match first {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => {
                        metrics.connection_closed("header_timeout");
                        return;
                    }
                }
                let marker = connection.request_marker();
                let tower = hyper_util::service::TowerToHyperService::new(router);
                let service = hyper::service::service_fn(move |request| {
                    marker.requested();
                    hyper::service::Service::call(&tower, request)
                });
                let result = match acceptor {
                    None => {
                        let serving = builder
                            .serve_connection_with_upgrades(
                                hyper_util::rt::TokioIo::new(connection),
                                service,
                            )
                            .into_owned();
                        watcher.watch(serving).await
                    }
                    Some(acceptor) => {
                        // The handshake shares the header timeout: a client that stalls in it
                        // holds a connection like one that stalls in its headers.
                        let stream =
                            match tokio::time::timeout(header_timeout, acceptor.accept(connection))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    metrics.connection_closed("header_timeout");
                                    return;
                                }
                            };
                        let serving = builder
                            .serve_connection_with_upgrades(
                                hyper_util::rt::TokioIo::new(stream),
                                service,
                            )
                            .into_owned();
                        watcher.watch(serving).await
                    }
                };
                if let Err(error) = result {
                    let timed_out = error
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if timed_out {
                        metrics.connection_closed("header_timeout");
                    }
                    tracing::debug!(%error, "connection closed");
                }
            });
        }
        // One deadline for the whole drain: requests, the scheduler and stream goodbyes share
        // `--shutdown-timeout` rather than each getting it in turn.
        let drain_limit = self.options.shutdown_timeout;
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(drain_limit)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        if tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain_limit,
                "in-flight requests did not finish in time; closing them"
            );
        }
        let _ = tokio::time::timeout_at(deadline, scheduler).await;
        // Stream sessions were told to say goodbye when `stopping` fired.
        self.state.sessions.close();
        if tokio::time::timeout_at(deadline, self.state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some stream sessions did not close in time");
        }
        // Counts of the last seconds, including what SDKs reported as their streams closed.
        match tokio::time::timeout_at(deadline, domain::usage::flush(&self.state.domain)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot write the last evaluation counts"),
            Err(_) => tracing::warn!("the last evaluation counts were not written in time"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The CAs of `--guard-ca`.
fn guard_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, StartError> {
    let pem = std::fs::read(path).map_err(|source| StartError::Io {
        what: "cannot read the guard CA",
        path: path.to_owned(),
        source,
    })?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
        StartError::Config(format!(
            "--guard-ca {}: not a PEM certificate: {error}",
            path.display()
        ))
    })?;
    if roots.is_empty() {
        return Err(StartError::Config(format!(
            "--guard-ca {}: no CERTIFICATE in it",
            path.display()
        )));
    }
    Ok(roots)
}

/// The store the options name (PostgreSQL, or SQLite in the data directory), the admin access,
/// and the PostgreSQL store again when it is one (for replication).
type Opened = (Arc<dyn FlagStore>, AdminAccess, Option<Arc<PostgresStore>>);

fn open_blocking(options: &ServerOptions, clock: &Clock) -> Result<Opened, StartError> {
    let Some(url) = &options.database_url else {
        let (store, access) = open_sqlite(options, clock)?;
        return Ok((Arc::new(store), access, None));
    };
    let store = Arc::new(open_postgres(url, clock())?);
    tracing::info!(
        database = %store::redacted_url(url),
        schema = store.schema(),
        "storing flags in PostgreSQL; replicas on the same database stay in step"
    );
    // The data directory only receives the bootstrap admin-token file, when this replica is the
    // one that bootstraps an empty database (created then, not before).
    let access = bootstrap_admin(
        store.as_ref(),
        &options.data_dir,
        options.admin_token.as_deref(),
        clock(),
    )?;
    Ok((store.clone(), access, Some(store)))
}

/// Connects to PostgreSQL, naming the server (never the password) when it fails.
pub fn open_postgres(url: &str, now: i64) -> Result<PostgresStore, StartError> {
    PostgresStore::connect(url, now).map_err(|error| {
        StartError::Config(format!(
            "cannot use the PostgreSQL database {}: {error}",
            store::redacted_url(url)
        ))
    })
}

fn open_sqlite(
    options: &ServerOptions,
    clock: &Clock,
) -> Result<(SqliteStore, AdminAccess), StartError> {
    let new_dir = !options.data_dir.exists();
    std::fs::create_dir_all(&options.data_dir).map_err(|source| StartError::Io {
        what: "cannot create the data directory",
        path: options.data_dir.clone(),
        source,
    })?;
    let database = options.data_dir.join(DATABASE_FILE);
    let new_database = !database.exists();
    let store = SqliteStore::open(&database, clock())?;
    // The store holds token hashes and the audit log: only its owner may read it. What we
    // create is made private; what exists already is left as the operator set it, with a warning.
    if new_dir {
        restrict(&options.data_dir, 0o700)?;
    }
    if new_database {
        // SQLite gives its -wal and -shm files the database file's mode.
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", database.display()));
            if file.exists() {
                restrict(&file, 0o600)?;
            }
        }
    }
    warn_if_readable(&options.data_dir);
    warn_if_readable(&database);
    let access = bootstrap_admin(
        &store,
        &options.data_dir,
        options.admin_token.as_deref(),
        clock(),
    )?;
    Ok((store, access))
}

/// On an empty store, creates the first admin token (or takes the operator's) and writes it to
/// `<data-dir>/admin-token`, readable only by this user. The token itself is never logged.
fn bootstrap_admin(
    store: &dyn FlagStore,
    data_dir: &Path,
    provided: Option<&str>,
    now: i64,
) -> Result<AdminAccess, StartError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let tokens = store.tokens()?;
    if !tokens.is_empty() {
        if let Some(provided) = provided
            && !tokens
                .iter()
                .any(|t| t.revoked_at.is_none() && t.hash == hash_secret(provided))
        {
            tracing::warn!(
                "FLAGD_ADMIN_TOKEN is ignored: the store already has tokens (it only seeds an empty store)"
            );
        }
        return Ok(AdminAccess::Existing(path.exists().then_some(path)));
    }
    let secret = match provided {
        Some(token) if token.trim().len() < MIN_ADMIN_TOKEN_LEN => {
            return Err(StartError::Config(format!(
                "FLAGD_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters"
            )));
        }
        Some(token) => token.trim().to_owned(),
        None => generate_secret(Role::Admin),
    };
    // The file first: if we crash before the token is stored, the next start simply makes a
    // new one; the other order could leave a stored token nobody can read.
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::Io {
        what: "cannot create the data directory",
        path: data_dir.to_owned(),
        source,
    })?;
    write_private_file(&path, &secret)?;
    let record = TokenRecord {
        environments: None,
        id: generate_id(),
        name: "bootstrap-admin".to_owned(),
        role: Role::Admin,
        environment: None,
        hash: hash_secret(&secret),
        created_at: now,
        revoked_at: None,
    };
    // Stored only if the store still has no token: replicas starting together on an empty
    // database bootstrap once between them.
    if !store.insert_first_token(&record)? {
        // Another replica bootstrapped first (with the same FLAGD_ADMIN_TOKEN, if one was
        // given): its admin-token file holds the token, this one would mislead.
        let _ = std::fs::remove_file(&path);
        return Ok(AdminAccess::Existing(None));
    }
    Ok(AdminAccess::Created(path))
}

/// Offline recovery (`flagd-server admin-token`): mints an admin token in the store of
/// `data_dir`, records it in the audit log (operation `admin_token_created`, environment `*`),
/// and returns the secret. The store must exist.
pub fn recover_admin_token(
    data_dir: &Path,
    database_url: Option<&str>,
    name: &str,
    now: i64,
) -> Result<String, StartError> {
    let database = data_dir.join(DATABASE_FILE);
    if database_url.is_none() && !database.exists() {
        return Err(StartError::Config(format!(
            "no store at {}: start the server once, or pass the right --data-dir (or --database-url)",
            database.display()
        )));
    }
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(StartError::Config(
            "the token name must be 1 to 100 printable characters".to_owned(),
        ));
    }
    let store: Box<dyn FlagStore> = match database_url {
        Some(url) => Box::new(open_postgres(url, now)?),
        None => Box::new(SqliteStore::open(&database, now)?),
    };
    let secret = generate_secret(Role::Admin);
    let record = TokenRecord {
        environments: None,
        id: generate_id(),
        name: name.to_owned(),
        role: Role::Admin,
        environment: None,
        hash: hash_secret(&secret),
        created_at: now,
        revoked_at: None,
    };
    store.insert_token(&record)?;
    store.record_event(
        "*",
        None,
        store::Operation::AdminTokenCreated,
        &serde_json::json!({"id": record.id, "name": record.name, "how": "flagd-server admin-token"}),
        &store::Attribution {
            actor: "flagd-server admin-token".to_owned(),
            message: Some(format!("recovery admin token {:?} created offline", record.name)),
            at: now,
        },
    )?;
    Ok(secret)
}

/// What `flagd-server migrate` copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Environments.
    pub environments: usize,
    /// Flags.
    pub flags: usize,
    /// Change records (the audit log).
    pub changes: usize,
    /// Tokens.
    pub tokens: usize,
    /// Ramps.
    pub ramps: usize,
    /// Git source bindings.
    pub sources: usize,
}

/// `flagd-server migrate --from-sqlite DIR --to URL`: copies everything the SQLite store in
/// `data_dir` holds (flags with their versions, the audit log, tokens, ramps) into a fresh
/// PostgreSQL store, in one transaction. Stop the SQLite server first.
pub fn migrate_to_postgres(
    data_dir: &Path,
    url: &str,
    now: i64,
) -> Result<MigrationReport, StartError> {
    let database = data_dir.join(DATABASE_FILE);
    if !database.exists() {
        return Err(StartError::Config(format!(
            "no SQLite store at {}: pass the data directory of the server you are moving",
            database.display()
        )));
    }
    let source = SqliteStore::open(&database, now)?;
    let target = open_postgres(url, now)?;
    let mut data = store::Import {
        environments: source.environments()?,
        ..store::Import::default()
    };
    for environment in &data.environments {
        data.flags.extend(source.flags(&environment.name)?);
    }
    data.changes = source.changes(&store::AuditQuery {
        limit: usize::MAX,
        ..store::AuditQuery::default()
    })?;
    data.changes.reverse();
    data.tokens = source.tokens()?;
    data.ramps = source.ramps(&store::RampQuery::default())?;
    for binding in source.sources()? {
        let baseline = source.source_baseline(&binding.environment)?;
        data.sources.push((binding, baseline));
    }
    target.import(&data)?;
    Ok(MigrationReport {
        environments: data.environments.len(),
        flags: data.flags.len(),
        changes: data.changes.len(),
        tokens: data.tokens.len(),
        ramps: data.ramps.len(),
        sources: data.sources.len(),
    })
}

/// Sets a path's permission bits (Unix; elsewhere a no-op).
fn restrict(path: &Path, mode: u32) -> Result<(), StartError> {
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(
        |source| StartError::Io {
            what: "cannot restrict the permissions of",
            path: path.to_owned(),
            source,
        },
    )?;
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Warns when others than the owner may read or enter `path`.
fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the data directory holds token hashes and the audit log, but others can read it; restrict it (chmod 700 for the directory, 600 for its files)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes a file readable only by its owner, atomically and durably: a temporary file in the
/// same directory (`tempfile` creates it 0600), fsync, rename over `path`, fsync of the directory.
fn write_private_file(path: &Path, contents: &str) -> Result<(), StartError> {
    let io = |what: &'static str| {
        move |source| StartError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(directory).map_err(io("cannot write"))?;
    file.write_all(format!("{contents}\n").as_bytes())
        .map_err(io("cannot write"))?;
    file.as_file().sync_all().map_err(io("cannot sync"))?;
    file.persist(path)
        .map_err(|error| error.error)
        .map_err(io("cannot write"))?;
    #[cfg(unix)]
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io("cannot sync"))?;
    Ok(())
}
