//! `flagctl promote KEY --from A --to B`: copy a flag's definition between environments.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use reqwest::Method;
use serde_json::{Value, json};

use super::message_header;
use crate::Context;
use crate::cli::PromoteArgs;
use crate::error::{CliError, Kind, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, args: &PromoteArgs) -> Result<u8> {
    if args.from == args.to {
        return Err(CliError::usage("--from and --to name the same environment"));
    }
    let api = context.api().await?;
    let source = api.get(&super::flag_path(&args.from, &args.key)?).await?;
    // The target environment must exist (its own 404), so that a 404 for the flag below means
    // only "the flag is new there".
    let environments = api.get("/api/v1/environments").await?;
    let exists = environments.body["environments"]
        .as_array()
        .is_some_and(|list| list.iter().any(|e| e["name"] == args.to.as_str()));
    if !exists {
        return Err(CliError::new(
            Kind::Server,
            format!("environment {:?} does not exist", args.to),
        )
        .hint("`flagctl env list` shows the environments"));
    }
    let target_path = super::flag_path(&args.to, &args.key)?;
    let (current, version) = match api.get(&target_path).await {
        Ok(answer) => (
            answer.body["flag"].clone(),
            answer.body["version"].as_i64().unwrap_or(0),
        ),
        Err(error) if error.server_code == Some(flag_protocol::ErrorCode::NotFound) => {
            (Value::Null, 0)
        }
        Err(error) => return Err(error),
    };
    // A stale --if-match fails before anything is shown or asked, even when the two
    // environments already agree: the caller's picture of the target is out of date either way.
    // The write below sends the version as If-Match, so a change made after this read is
    // refused by the server.
    if let Some(expected) = args
        .message
        .if_match
        .filter(|expected| *expected != version)
    {
        return Err(stale(args, version, expected));
    }
    let flag = source.body["flag"].clone();
    let changes = output::diff(&current, &flag);
    if changes.is_empty() {
        if context.output == Format::Json {
            output::json(
                &json!({"key": args.key, "from": args.from, "to": args.to, "changed": false}),
            )?;
        } else {
            outln!(
                "{} is already the same in {} and {}",
                args.key,
                args.from,
                args.to
            )?;
        }
        return Ok(exit::OK);
    }
    if context.output != Format::Json {
        outln!("{} {} → {}:", args.key, args.from, args.to)?;
        for line in &changes {
            outln!("    {line}")?;
        }
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "promote changes another environment: confirm with --yes (stdin is not a terminal, so it cannot ask)",
            ));
        }
        eprint!("apply this to {}? [y/N] ", args.to);
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing changed");
            return Ok(exit::ERROR);
        }
    }
    let message = args.message.message.clone().unwrap_or_else(|| {
        format!(
            "promoted from {} (version {})",
            args.from, source.body["version"]
        )
    });
    let mut headers = message_header(Some(&message));
    headers.push(super::if_match(version));
    let answer = api
        .call(Method::PUT, &target_path, Some(&flag), &headers)
        .await?;
    if context.output == Format::Json {
        output::json(&answer.body)?;
    } else {
        outln!(
            "promoted {} to {} (version {})",
            args.key,
            args.to,
            output::cell(&answer.body["version"])
        )?;
    }
    Ok(exit::OK)
}

/// `--if-match EXPECTED` named another version than the target's `actual` (0: no such flag).
fn stale(args: &PromoteArgs, actual: i64, expected: i64) -> CliError {
    let (key, to) = (&args.key, &args.to);
    let state = match (actual, expected) {
        (0, _) => format!(
            "flag {key:?} does not exist in {to}, but --if-match expected version {expected}"
        ),
        (_, 0) => format!(
            "flag {key:?} already exists in {to} (version {actual}), but --if-match 0 expected none"
        ),
        _ => format!("flag {key:?} is at version {actual} in {to}, not {expected} (--if-match)"),
    };
    CliError::input(format!("{state}: it changed since you read it")).hint(format!(
        "look at `flagctl -e {to} flag get {key}`, then run the command again"
    ))
}
