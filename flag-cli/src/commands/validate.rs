//! `flagctl validate -f FILE`: check a flagd file as the server would, for CI.
//!
//! Errors are what flagd itself refuses; warnings are what flagd loads and handles at evaluation
//! time (see docs/COMPATIBILITY.md). `--strict` makes warnings fail too.

use std::path::Path;

use serde_json::{Value, json};

use super::read_json;
use crate::Context;
use crate::cli::ValidateArgs;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

/// Which warnings `check` prints on stderr.
#[derive(Debug, Clone, Copy)]
pub enum Show<'a> {
    /// None (the server's answer will list them).
    Nothing,
    /// Those of one flag (and of the `$evaluators` it may use).
    Flag(&'a str),
}

/// Loads a document as the server would: `Err` on errors (or, when `strict`, on warnings too),
/// listing every problem with its path and code; prints the warnings `show` asks for otherwise.
pub fn check(
    path: &Path,
    document: &Value,
    strict: bool,
    show: Show<'_>,
) -> Result<flag_core::Loaded> {
    let refused = |problems: Vec<flag_core::Problem>, what: &str| {
        let mut cli = CliError::input(format!(
            "{} is not a valid flagd file: {} {what}",
            path.display(),
            problems.len()
        ));
        cli.details = problems.iter().map(detail).collect();
        cli
    };
    let loaded = flag_core::CompiledFlagSet::load(document)
        .map_err(|error| refused(error.problems, "error(s)"))?;
    if strict && !loaded.warnings.is_empty() {
        return Err(refused(loaded.warnings, "warning(s), and --strict is on")
            .hint("each warned flag evaluates as flagd would; drop --strict to accept them"));
    }
    if let Show::Flag(key) = show {
        let own = |path: &str| {
            path.starts_with(&format!("flags.{key}."))
                || path == format!("flags.{key}")
                || path.starts_with(&format!("flags[{}]", json!(key)))
                || path.starts_with("$evaluators")
        };
        for warning in loaded.warnings.iter().filter(|w| own(&w.path)) {
            eprintln!("{}", output::problem(warning));
        }
    }
    Ok(loaded)
}

/// A problem as a detail line: `PATH: MESSAGE [code]` (or `[code, warning]`).
fn detail(problem: &flag_core::Problem) -> String {
    let kind = if problem.is_warning() {
        format!("{}, warning", problem.code)
    } else {
        problem.code.to_string()
    };
    format!("{problem} [{kind}]")
}

pub fn run(context: &Context, args: &ValidateArgs) -> Result<u8> {
    let document = read_json(&args.file)?;
    // Count the flags as written, so a file with errors still says how many it holds.
    let flags = match &document["flags"] {
        Value::Object(flags) => flags.len(),
        Value::Array(flags) => flags.len(),
        _ => 0,
    };
    let (errors, warnings) = match flag_core::CompiledFlagSet::load(&document) {
        Ok(loaded) => (Vec::new(), loaded.warnings),
        Err(error) => (error.problems, Vec::new()),
    };
    let valid = errors.is_empty() && (warnings.is_empty() || !context.strict);
    if context.output == Format::Json {
        output::json(&json!({
            "file": args.file.display().to_string(),
            "valid": valid,
            "strict": context.strict,
            "flags": flags,
            "errors": errors,
            "warnings": warnings,
        }))?;
    } else {
        for problem in errors.iter().chain(&warnings) {
            outln!("{}", output::problem(problem))?;
        }
        let verdict = if valid { "valid" } else { "not valid" };
        outln!(
            "{}: {verdict} ({flags} flag(s), {} error(s), {} warning(s){})",
            args.file.display(),
            errors.len(),
            warnings.len(),
            if context.strict { ", strict" } else { "" }
        )?;
    }
    Ok(if valid { exit::OK } else { exit::ERROR })
}
