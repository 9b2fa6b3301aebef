//! Flags as code: `flagctl export`, `diff`, `apply`.

use reqwest::Method;
use serde_json::Value;

use super::{message_header, read_json};
use crate::Context;
use crate::cli::{ApplyArgs, DiffArgs};
use crate::error::{Result, exit};
use crate::output::{self, Format, outln};

fn document_path(context: &Context) -> Result<String> {
    Ok(format!(
        "{}/document",
        super::environment_path(&context.environment)?
    ))
}

pub async fn export(context: &Context) -> Result<u8> {
    let answer = context.api().await?.get(&document_path(context)?).await?;
    output::json(&answer.body)?;
    Ok(exit::OK)
}

/// Reads a flagd file and checks it locally first, so a broken file fails fast with every
/// problem and its path, without a round trip. Warnings are left to the server's answer (they
/// are printed from it), except with `--strict`, where they fail here too.
fn read_document(context: &Context, path: &std::path::Path) -> Result<Value> {
    let document = read_json(path)?;
    super::validate::check(
        path,
        &document,
        context.strict,
        super::validate::Show::Nothing,
    )?;
    Ok(document)
}

/// Prints an apply report: one line per changed flag and its readable diff.
fn report(context: &Context, report: &Value, verb_past: &str) -> Result<()> {
    if context.output == Format::Json {
        return output::json(report);
    }
    for change in report["changes"].as_array().into_iter().flatten() {
        let (mark, action) = match change["action"].as_str() {
            Some("create") => ("+", "create"),
            Some("update") => ("~", "update"),
            Some("delete") => ("-", "delete"),
            _ => continue,
        };
        outln!("{mark} {} ({action})", output::cell(&change["key"]))?;
        let before = change.get("before").cloned().unwrap_or(Value::Null);
        let after = change.get("after").cloned().unwrap_or(Value::Null);
        if action == "update" {
            for line in output::diff(&before, &after) {
                outln!("    {line}")?;
            }
        }
    }
    if report["settingsChanged"] == Value::Bool(true) {
        outln!("~ $evaluators / metadata")?;
    }
    let summary = &report["summary"];
    let count = |name: &str| summary[name].as_u64().unwrap_or(0);
    let kept = report["kept"].as_array().map_or(0, Vec::len);
    outln!(
        "{verb_past}: {} created, {} updated, {} deleted, {} unchanged{}",
        count("create"),
        count("update"),
        count("delete"),
        count("unchanged"),
        if kept > 0 {
            format!(", {kept} on the server but not in the file (kept; --prune deletes them)")
        } else {
            String::new()
        }
    )
}

pub async fn diff(context: &Context, args: &DiffArgs) -> Result<u8> {
    let document = read_document(context, &args.file)?;
    let path = super::with_query(
        &document_path(context)?,
        &[("dry_run", "true"), ("prune", &args.prune.to_string())],
    );
    let answer = context
        .api()
        .await?
        .call(Method::PUT, &path, Some(&document), &[])
        .await?;
    super::print_warnings(&answer.body);
    report(context, &answer.body, "would be")?;
    Ok(if answer.body["changed"] == Value::Bool(true) {
        exit::DIFFERENCES
    } else {
        exit::OK
    })
}

pub async fn apply(context: &Context, args: &ApplyArgs) -> Result<u8> {
    let document = read_document(context, &args.file)?;
    let path = super::with_query(
        &document_path(context)?,
        &[
            ("dry_run", &args.dry_run.to_string()),
            ("prune", &args.prune.to_string()),
        ],
    );
    let headers = message_header(args.message.as_ref());
    let answer = context
        .api()
        .await?
        .call(Method::PUT, &path, Some(&document), &headers)
        .await?;
    super::print_warnings(&answer.body);
    report(
        context,
        &answer.body,
        if args.dry_run {
            "dry run, would be"
        } else {
            "applied"
        },
    )?;
    Ok(exit::OK)
}
