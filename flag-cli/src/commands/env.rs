//! `flagctl env`.

use reqwest::Method;
use serde_json::json;

use crate::Context;
use flag_protocol::source::{DriftPolicy, SourceSpec, SourceView, SyncState};

use crate::cli::{EnvCommand, SourceCommand};
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, command: EnvCommand) -> Result<u8> {
    let api = context.api().await?;
    match command {
        EnvCommand::List => {
            let answer = api.get("/api/v1/environments").await?;
            if context.output == Format::Json {
                output::json(&answer.body["environments"])?;
            } else {
                let rows: Vec<Vec<String>> = answer.body["environments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| vec![output::cell(&e["name"]), output::cell(&e["version"])])
                    .collect();
                output::table(&["NAME", "VERSION"], &rows)?;
            }
        }
        EnvCommand::Create { name } => {
            let answer = api
                .call(
                    Method::POST,
                    "/api/v1/environments",
                    Some(&json!({"name": name})),
                    &[],
                )
                .await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
            } else {
                outln!("created environment {name}")?;
            }
        }
        EnvCommand::Delete { name, force } => {
            let force: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
            let path = super::with_query(&super::environment_path(&name)?, force);
            api.call(Method::DELETE, &path, None, &[]).await?;
            if context.output == Format::Json {
                output::json(&json!({"deleted": name}))?;
            } else {
                outln!("deleted environment {name}")?;
            }
        }
        EnvCommand::Source(command) => return source(context, command).await,
    }
    Ok(exit::OK)
}

async fn source(context: &Context, command: SourceCommand) -> Result<u8> {
    let api = context.api().await?;
    match command {
        SourceCommand::Set(args) => {
            let drift = match args.drift.as_str() {
                "reject" => DriftPolicy::Reject,
                "report" => DriftPolicy::Report,
                _ => DriftPolicy::Revert,
            };
            let spec = SourceSpec {
                repository: args.repository,
                branch: args.branch,
                path: args.path,
                interval: args.interval,
                drift,
                credentials: args.credentials,
                webhook_secret: args.webhook_secret,
            };
            let body = serde_json::to_value(&spec).map_err(|e| CliError::input(e.to_string()))?;
            let path = format!("{}/source", super::environment_path(&args.env)?);
            let headers = super::message_header(args.message.as_ref());
            let answer = api.call(Method::PUT, &path, Some(&body), &headers).await?;
            if context.output == Format::Json {
                output::json(&answer.body)?;
            } else {
                outln!(
                    "bound environment {} to {} (branch {}, path {}, every {}, drift {}); the first sync has started: `flagctl env source show {}`",
                    args.env,
                    spec.repository,
                    spec.branch,
                    spec.path,
                    spec.interval,
                    spec.drift.as_str(),
                    args.env
                )?;
            }
            Ok(exit::OK)
        }
        SourceCommand::Show { env } => {
            let answer = api
                .get(&format!("{}/source", super::environment_path(&env)?))
                .await?;
            print_view(context, &answer.body)
        }
        SourceCommand::Sync { env } => {
            let answer = api
                .call(
                    Method::POST,
                    &format!("{}/source/sync", super::environment_path(&env)?),
                    None,
                    &[],
                )
                .await?;
            print_view(context, &answer.body)
        }
        SourceCommand::Unset { env } => {
            let path = format!("{}/source", super::environment_path(&env)?);
            api.call(Method::DELETE, &path, None, &[]).await?;
            if context.output == Format::Json {
                output::json(&json!({"unbound": env}))?;
            } else {
                outln!(
                    "unbound environment {env} from its Git source; its flags stay as they are"
                )?;
            }
            Ok(exit::OK)
        }
    }
}

/// Prints a source view; exit 1 when its last sync failed.
fn print_view(context: &Context, body: &serde_json::Value) -> Result<u8> {
    let view: SourceView = serde_json::from_value(body.clone())
        .map_err(|e| CliError::input(format!("the server's answer is not a source view: {e}")))?;
    let failed = view.status.state == SyncState::Failed;
    if context.output == Format::Json {
        output::json(body)?;
    } else {
        print_source(&view)?;
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}

/// The human form of a source view (also used by `flagctl status`).
pub fn print_source(view: &SourceView) -> Result<()> {
    let spec = &view.spec;
    outln!(
        "source:      {} (branch {}, path {})",
        spec.repository,
        spec.branch,
        spec.path
    )?;
    outln!(
        "policy:      drift {}, every {}",
        spec.drift.as_str(),
        spec.interval
    )?;
    let status = &view.status;
    let state = match status.state {
        SyncState::Pending => "pending (not synced yet)",
        SyncState::Synced => "synced",
        SyncState::Failed => "FAILED",
    };
    outln!("status:      {state}")?;
    if let Some(commit) = &status.commit {
        outln!(
            "commit:      {} {} ({}){}",
            commit.short_sha,
            commit.subject,
            commit.author,
            status
                .last_synced_at
                .map(|at| format!(", synced {}", output::time(at)))
                .unwrap_or_default()
        )?;
    }
    if let Some(error) = &status.error {
        outln!("error:       {}", error.message)?;
        for problem in &error.problems {
            outln!("  {}: {} [{}]", problem.path, problem.message, problem.code)?;
        }
    }
    if !status.reverted.is_empty() {
        outln!("reverted:    {} (drift)", status.reverted.join(", "))?;
    }
    if status.drift.is_empty() {
        outln!("drift:       none")?;
    } else {
        outln!("drift:       {} item(s)", status.drift.len())?;
        for drift in &status.drift {
            let kind = serde_json::to_value(drift.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            outln!(
                "  {} {}",
                drift.flag.as_deref().unwrap_or("(metadata/$evaluators)"),
                kind
            )?;
        }
    }
    Ok(())
}
