//! flagctl: the command-line client of the flag server.

// Results go through `output::line`, which handles a closed stdout; `println!` panics there.
#![warn(clippy::print_stdout)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cli;
mod client;
mod commands;
mod config;
mod error;
mod oidc;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::client::Api;
use crate::error::{CliError, Kind, Result};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::from(error::exit::ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        // The reader has what it wanted (`| head -1`): ending quietly is what pipelines expect.
        Err(error) if error.kind == Kind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            error.exit_code()
        }
    }
}

/// What a command needs: the API (when it talks to the server), the environment and the format.
pub struct Context {
    pub environment: String,
    pub output: output::Format,
    /// Warnings fail like errors (`--strict`).
    pub strict: bool,
    server: Option<String>,
    /// --token / FLAGCTL_TOKEN: wins over everything.
    token: Option<String>,
    /// An OIDC ID token source (FLAGCTL_OIDC_AUDIENCE / FLAGCTL_OIDC_TOKEN_FILE), used when no
    /// token was given; obtained once, on first use.
    oidc: Option<oidc::Source>,
    id_token: tokio::sync::OnceCell<String>,
    /// The token `flagctl login` saved.
    saved_token: Option<String>,
    tls: client::TlsFiles,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Context")
            .field("environment", &self.environment)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The API client, or an error saying how to configure it. With a comma-separated list of
    /// servers (replicas), requests go to the first.
    pub async fn api(&self) -> Result<Api> {
        let mut apis = self.apis().await?;
        Ok(apis.remove(0))
    }

    /// The credential: --token / FLAGCTL_TOKEN, else an OIDC ID token (when configured), else
    /// the token `flagctl login` saved.
    async fn credential(&self) -> Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        if let Some(source) = &self.oidc {
            return self
                .id_token
                .get_or_try_init(|| source.id_token())
                .await
                .cloned();
        }
        self.saved_token.clone().ok_or_else(|| {
            CliError::config("no token configured").hint(
                "pass --token, set FLAGCTL_TOKEN, run `flagctl login --server URL --token TOKEN`, or in CI set FLAGCTL_OIDC_AUDIENCE",
            )
        })
    }

    /// One API client per server of a comma-separated `--server` list (at least one): `watch`
    /// fails over between them.
    pub async fn apis(&self) -> Result<Vec<Api>> {
        let servers = self.server.as_deref().ok_or_else(|| {
            CliError::config("no server configured")
                .hint("pass --server, set FLAGCTL_SERVER, or run `flagctl login --server URL --token TOKEN`")
        })?;
        let token = self.credential().await?;
        let token = token.as_str();
        let apis = servers
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(|server| Api::new(server, token, self.strict, &self.tls))
            .collect::<Result<Vec<Api>>>()?;
        if apis.is_empty() {
            return Err(CliError::config("no server configured")
                .hint("pass --server, set FLAGCTL_SERVER, or run `flagctl login --server URL --token TOKEN`"));
        }
        Ok(apis)
    }
}

async fn run(cli: Cli) -> Result<u8> {
    if let Command::Login = &cli.command {
        let tls = client::TlsFiles {
            ca_cert: cli.global.ca_cert,
            client_cert: cli.global.client_cert,
            client_key: cli.global.client_key,
        };
        return commands::login::run(
            cli.global.server.as_deref(),
            cli.global.token.as_deref(),
            &tls,
        )
        .await;
    }
    let file = config::load()?;
    let context = Context {
        environment: cli
            .global
            .environment
            .or(file.environment)
            .unwrap_or_else(|| "default".to_owned()),
        output: cli.global.output,
        strict: cli.global.strict,
        server: cli.global.server.or(file.server),
        token: cli.global.token,
        oidc: oidc::Source::from_env(),
        id_token: tokio::sync::OnceCell::new(),
        saved_token: file.token,
        tls: client::TlsFiles {
            ca_cert: cli.global.ca_cert.or(file.ca_cert),
            // A certificate and its key come as a pair, from the command line or from the file.
            client_cert: cli.global.client_cert.clone().or(file.client_cert.clone()),
            client_key: if cli.global.client_cert.is_some() {
                cli.global.client_key
            } else {
                file.client_key
            },
        },
    };
    match cli.command {
        Command::Login => Ok(error::exit::OK),
        Command::Env(command) => commands::env::run(&context, command).await,
        Command::Flag(command) => commands::flag::run(&context, command).await,
        Command::Export => commands::code::export(&context).await,
        Command::Validate(args) => commands::validate::run(&context, &args),
        Command::Diff(args) => commands::code::diff(&context, &args).await,
        Command::Apply(args) => commands::code::apply(&context, &args).await,
        Command::Promote(args) => commands::promote::run(&context, &args).await,
        Command::Eval(args) => commands::eval::run(&context, &args).await,
        Command::Watch => commands::watch::run(&context).await,
        Command::Status => commands::status::run(&context).await,
        Command::Token(command) => commands::token::run(&context, command).await,
        Command::Auth(command) => commands::auth::run(&context, command).await,
        Command::Ramp(command) => commands::ramp::run(&context, command).await,
        Command::Refs(args) => commands::refs::run(&context, &args).await,
        Command::Stale(args) => commands::stale::run(&context, &args).await,
    }
}
