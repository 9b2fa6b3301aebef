//! The `flagd-server` binary: configuration, logging, signals. Everything else is the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use flagd_server::config::{Command, Config, LogFormat};
use flagd_server::{AdminAccess, Server, ServerOptions};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(&config);
    if let Some(Command::AdminToken(args)) = &config.command {
        let now = (flagd_server::state::system_clock())();
        return match flagd_server::recover_admin_token(
            &config.data_dir,
            config.database_url.as_deref(),
            &args.name,
            now,
        ) {
            Ok(secret) => {
                // The one place a secret is printed: the operator asked for it, on a terminal.
                println!("{secret}");
                eprintln!(
                    "created admin token {:?} in {} (recorded in the audit log); restart a running server to use it",
                    args.name,
                    config.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("flagd-server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Migrate(args)) = &config.command {
        let now = (flagd_server::state::system_clock())();
        return match flagd_server::migrate_to_postgres(&args.from_sqlite, &args.to, now) {
            Ok(report) => {
                eprintln!(
                    "copied {} environment(s), {} flag(s), {} audit record(s), {} token(s), {} ramp(s) and {} Git source(s) from {} to {}",
                    report.environments,
                    report.flags,
                    report.changes,
                    report.tokens,
                    report.ramps,
                    report.sources,
                    args.from_sqlite.display(),
                    flagd_server::store::redacted_url(&args.to)
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("flagd-server: {:#}", anyhow::Error::from(error));
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flagd-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flagd-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|error| {
        eprintln!(
            "flagd-server: ignoring bad --log filter {:?}: {error}",
            config.log
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let server = Server::open(
        ServerOptions::from(&config),
        flagd_server::state::system_clock(),
    )
    .await
    .context("cannot start")?;
    // Scripts and tests read this exact line for the real address (port 0 is allowed).
    let scheme = server.scheme();
    println!("listening on {scheme}://{address}");
    println!("dashboard at {scheme}://{address}/ui/ (sign in with an admin token)");
    #[cfg(unix)]
    if let Some(tls) = server.tls().cloned() {
        // SIGHUP re-reads the certificate and key now (they are also checked periodically).
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangups) => {
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: re-reading the TLS certificate and key");
                        tls.reload_now();
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
        }
    }
    if let Some(tls) = &config.tls_cert {
        tracing::info!(
            cert = %tls.display(),
            client_certificates = if config.tls_client_ca.is_some() { "required" } else { "not asked for" },
            "serving HTTPS and WSS"
        );
    }
    // With a private CA, curl needs it too (and a client certificate under mTLS).
    let curl_tls = match (&config.tls_cert, &config.tls_client_ca) {
        (None, _) => "",
        (Some(_), None) => "--cacert <your CA> ",
        (Some(_), Some(_)) => "--cacert <your CA> --cert <client.crt> --key <client.key> ",
    };
    match server.admin_access() {
        AdminAccess::Created(path) => tracing::info!(
            "created the first admin token in {} (mode 0600; it is never logged). Authenticate with: \
             curl {curl_tls}-H \"Authorization: Bearer $(cat {})\" {scheme}://{address}/api/v1/environments",
            path.display(),
            path.display()
        ),
        AdminAccess::Existing(Some(path)) => tracing::info!(
            "admin token: see {} (created on first start). Authenticate with: Authorization: Bearer <token>",
            path.display()
        ),
        AdminAccess::Existing(None) => {
            tracing::info!("authenticate with an admin token: Authorization: Bearer <token>")
        }
    }
    server.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
