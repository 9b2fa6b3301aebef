//! `flagctl ramp`: progressive rollouts run by the server.

use reqwest::Method;
use serde_json::{Value, json};

use crate::Context;
use crate::cli::{RampAnalyseArgs, RampCommand, RampStartArgs};
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

fn ramp_path(context: &Context, key: &str) -> Result<String> {
    Ok(format!(
        "{}/ramp",
        super::flag_path(&context.environment, key)?
    ))
}

pub async fn run(context: &Context, command: RampCommand) -> Result<u8> {
    let api = context.api().await?;
    let (view, verb) = match command {
        RampCommand::Analyse(args) => return analyse(context, &api, &args).await,
        RampCommand::Start(args) => (
            api.call(
                Method::POST,
                &ramp_path(context, &args.key)?,
                Some(&start_body(&args)?),
                &[],
            )
            .await?
            .body,
            "started",
        ),
        RampCommand::Status { key } => (api.get(&ramp_path(context, &key)?).await?.body, ""),
        RampCommand::Pause { key, message } => (
            control(&api, context, &key, "pause", message).await?,
            "paused",
        ),
        RampCommand::Resume { key, message } => (
            control(&api, context, &key, "resume", message).await?,
            "resumed",
        ),
        RampCommand::Abort { key, message } => (
            control(&api, context, &key, "abort", message).await?,
            "aborted",
        ),
        RampCommand::List => {
            let answer = api
                .get(&format!(
                    "{}/ramps",
                    super::environment_path(&context.environment)?
                ))
                .await?;
            if context.output == Format::Json {
                output::json(&answer.body["ramps"])?;
            } else {
                let rows: Vec<Vec<String>> = answer.body["ramps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            output::cell(&r["flag"]),
                            output::cell(&r["state"]),
                            format!(
                                "{}/{}",
                                r["currentStep"].as_u64().unwrap_or(0) + 1,
                                output::cell(&r["totalSteps"])
                            ),
                            percent(&r["currentPercentage"]),
                            r["nextAt"]
                                .as_i64()
                                .map_or_else(|| "-".to_owned(), output::time),
                        ]
                    })
                    .collect();
                output::table(&["FLAG", "STATE", "STEP", "ROLLOUT", "NEXT STEP AT"], &rows)?;
            }
            return Ok(exit::OK);
        }
    };
    if context.output == Format::Json {
        output::json(&view)?;
    } else {
        if !verb.is_empty() {
            outln!("{verb} the ramp of {}", output::cell(&view["flag"]))?;
        }
        show(&view)?;
    }
    Ok(exit::OK)
}

fn start_body(args: &RampStartArgs) -> Result<Value> {
    // JSON has no NaN or infinity: say so here rather than send a null.
    if let Some(bad) = args.steps.iter().find(|p| !p.is_finite()) {
        return Err(CliError::usage(format!(
            "--steps: {bad} is not a percentage between 0 and 100"
        )));
    }
    let mut body = json!({"steps": args.steps});
    if let Some(variant) = &args.variant {
        body["variant"] = json!(variant);
    }
    if let Some(others) = &args.others {
        body["otherVariant"] = json!(others);
    }
    match (&args.every, args.durations.is_empty()) {
        (Some(every), _) => body["interval"] = json!(every),
        (None, false) => body["durations"] = json!(args.durations),
        (None, true) if args.steps.len() > 1 => {
            return Err(CliError::usage(
                "say how long each step lasts: --every 30m (or --durations 1h,1h,2h)",
            ));
        }
        (None, true) => {}
    }
    let guards = guards(args)?;
    if !guards.is_empty() {
        body["guards"] = Value::Array(guards);
    }
    if let Some(message) = &args.message {
        body["message"] = json!(message);
    }
    Ok(body)
}

/// The guards of `ramp start`: the URL guard, the Prometheus guard, then the file's.
fn guards(args: &RampStartArgs) -> Result<Vec<Value>> {
    let mut guards = Vec::new();
    if let Some(url) = &args.guard_url {
        guards.push(json!({"kind": "url", "url": url, "failures": args.guard_failures, "timeout": args.guard_timeout}));
    }
    if let Some(address) = &args.prometheus {
        let mut guard = json!({"kind": "prometheus", "address": address, "query": args.query, "success": args.success});
        let optional = [
            ("count", args.count.map(|n| json!(n))),
            ("failureLimit", args.failure_limit.map(|n| json!(n))),
            ("inconclusive", args.inconclusive.map(|p| json!(p.as_str()))),
            (
                "interval",
                args.analysis_interval.as_ref().map(|d| json!(d)),
            ),
            ("timeout", args.analysis_timeout.as_ref().map(|d| json!(d))),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                guard[field] = value;
            }
        }
        guards.push(guard);
    }
    if let Some(path) = &args.guard_file {
        guards.extend(guard_file(path)?);
    }
    Ok(guards)
}

/// Reads `--guard-file`: JSON, or YAML (JSON is tried first, so its errors win for `.json`).
fn guard_file(path: &std::path::Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::input(format!("cannot read {}: {error}", path.display())))?;
    let json_named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let document: Value = match flag_core::json::from_str_unique(&text) {
        Ok(value) => value,
        Err(error) if json_named => {
            return Err(CliError::input(format!(
                "{} is not valid JSON: {error}",
                path.display()
            )));
        }
        // Through YAML's own value, which refuses duplicate keys (as JSON files are refused).
        Err(_) => serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
            .and_then(serde_yaml_ng::from_value::<Value>)
            .map_err(|error| {
                CliError::input(format!(
                    "{} is neither JSON nor YAML: {error}",
                    path.display()
                ))
            })?,
    };
    let list = match document {
        Value::Array(list) => list,
        Value::Object(mut object) => match object.remove("guards") {
            Some(Value::Array(list)) if object.is_empty() => list,
            _ => {
                return Err(CliError::input(format!(
                    "{}: expected a list of guards, or an object with only `guards` (a list)",
                    path.display()
                )));
            }
        },
        _ => {
            return Err(CliError::input(format!(
                "{}: expected a list of guards, or an object with `guards`",
                path.display()
            )));
        }
    };
    if let Some(index) = list.iter().position(|g| !g.is_object()) {
        return Err(CliError::input(format!(
            "{}: guards[{index}] is not an object",
            path.display()
        )));
    }
    Ok(list)
}

async fn control(
    api: &crate::client::Api,
    context: &Context,
    key: &str,
    action: &str,
    message: Option<String>,
) -> Result<Value> {
    let body = message.map(|m| json!({"message": m}));
    Ok(api
        .call(
            Method::POST,
            &format!("{}/{action}", ramp_path(context, key)?),
            body.as_ref(),
            &[],
        )
        .await?
        .body)
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |p| format!("{p}%"))
}

/// Status for people: the steps as a progress line, what is next, and the history.
fn show(view: &Value) -> Result<()> {
    let steps = view["steps"].as_array().cloned().unwrap_or_default();
    let current = view["currentStep"].as_u64().unwrap_or(0) as usize;
    let state = view["state"].as_str().unwrap_or("?");
    let progress: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let p = percent(step);
            match i.cmp(&current) {
                std::cmp::Ordering::Less => format!("{p} ✓"),
                std::cmp::Ordering::Equal if state != "aborted" => format!("[{p}]"),
                _ => p,
            }
        })
        .collect();
    outln!(
        "{} in {}: {state}, at {} (step {}/{})",
        output::cell(&view["flag"]),
        output::cell(&view["environment"]),
        percent(&view["currentPercentage"]),
        current + 1,
        steps.len()
    )?;
    outln!("  {}", progress.join(" → "))?;
    if let (Some(next), Some(at)) = (view["nextPercentage"].as_f64(), view["nextAt"].as_i64()) {
        outln!("  next: {next}% at {}", output::time(at))?;
    } else if state == "paused" {
        outln!(
            "  paused: `flagctl ramp resume {}` continues",
            output::cell(&view["flag"])
        )?;
    }
    let reason = view["abortReason"].as_str().map(output::plain);
    if let (Some(reason), "failed") = (&reason, state) {
        outln!("  failed: {reason} (the flag was left as it is)")?;
    } else if let Some(reason) = &reason {
        // `currentPercentage` of an aborted ramp is what it restored, null when it stopped
        // without touching the flag.
        match view["currentPercentage"].as_f64() {
            Some(restored) => outln!("  aborted: {reason} (rollout restored to {restored}%)")?,
            None => outln!("  aborted: {reason} (the flag was left as it is)")?,
        }
    }
    if let Some(guard) = view["guard"]["url"].as_str().map(output::plain) {
        outln!(
            "  guard: {guard} ({} consecutive failure(s) abort)",
            output::cell(&view["guard"]["failures"])
        )?;
    }
    for (index, guard) in view["analysis"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        analysis(index, guard, state == "active")?;
    }
    for event in view["history"].as_array().into_iter().flatten() {
        outln!(
            "  {}  {:<12} {:>7}  by {}{}",
            event["at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), output::time),
            output::cell(&event["event"]),
            event["percentage"]
                .as_f64()
                .map_or_else(String::new, |p| format!("{p}%")),
            output::cell(&event["actor"]),
            event["message"]
                .as_str()
                .map(|m| format!(": {}", output::plain(m)))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// How many of a guard's measurements `ramp status` shows (`-o json` has them all).
const SHOWN_MEASUREMENTS: usize = 5;

/// One analysis guard in `ramp status`: what it asks, where its current analysis is, and its
/// last measurements.
fn analysis(index: usize, guard: &Value, active: bool) -> Result<()> {
    outln!(
        "  analysis[{index}]: {} at {}",
        output::cell(&guard["query"]),
        output::cell(&guard["address"])
    )?;
    let limit = match guard["failureLimit"].as_u64() {
        Some(0) => "the first failure aborts".to_owned(),
        Some(limit) => format!("more than {limit} failures abort"),
        None => "-".to_owned(),
    };
    outln!(
        "    `{}` on each value; {} measurement(s) {} apart before each step; {limit}; inconclusive: {}",
        output::cell(&guard["success"]),
        output::cell(&guard["count"]),
        seconds(&guard["intervalSeconds"]),
        output::cell(&guard["inconclusive"])
    )?;
    let run = &guard["run"];
    if active {
        let next = run["nextAt"].as_i64().map_or_else(
            || "done".to_owned(),
            |at| format!("next at {}", output::time(at)),
        );
        outln!(
            "    before step {}: {}/{} taken, {} failed, {next}",
            run["step"].as_u64().unwrap_or(0) + 1,
            output::cell(&run["taken"]),
            output::cell(&guard["count"]),
            output::cell(&run["failures"])
        )?;
    }
    let measurements = guard["measurements"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let skip = measurements.len().saturating_sub(SHOWN_MEASUREMENTS);
    if skip > 0 {
        outln!("    ({skip} earlier measurement(s): -o json shows them)")?;
    }
    for measurement in &measurements[skip..] {
        let values: Vec<String> = measurement["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                v.as_f64()
                    .map_or_else(|| "NaN".to_owned(), |v| v.to_string())
            })
            .collect();
        outln!(
            "    {}  step {:<3} {:<12} {}{}",
            measurement["at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), output::time),
            measurement["step"].as_u64().unwrap_or(0) + 1,
            output::cell(&measurement["verdict"]),
            if values.is_empty() {
                "-".to_owned()
            } else {
                values.join(", ")
            },
            measurement["error"]
                .as_str()
                .map(|e| format!(" ({})", output::plain(e)))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// Seconds as people write them: 90s, 5m, 2h.
fn seconds(value: &Value) -> String {
    match value.as_i64() {
        Some(s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        Some(s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        Some(s) => format!("{s}s"),
        None => "-".to_owned(),
    }
}

/// `flagctl ramp analyse`: one measurement, run by the server.
async fn analyse(
    context: &Context,
    api: &crate::client::Api,
    args: &RampAnalyseArgs,
) -> Result<u8> {
    let mut body =
        json!({"prometheus": args.prometheus, "query": args.query, "success": args.success});
    if let Some(variant) = &args.variant {
        body["variant"] = json!(variant);
    }
    if let Some(timeout) = &args.timeout {
        body["timeout"] = json!(timeout);
    }
    let path = format!(
        "{}/analysis",
        super::flag_path(&context.environment, &args.key)?
    );
    let answer = api.call(Method::POST, &path, Some(&body), &[]).await?;
    let measured = &answer.body;
    if context.output == Format::Json {
        output::json(measured)?;
        return Ok(exit::OK);
    }
    let values: Vec<String> = measured["values"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            if v.is_null() {
                "NaN".to_owned()
            } else {
                v.to_string()
            }
        })
        .collect();
    outln!("query:   {}", output::cell(&measured["query"]))?;
    outln!(
        "values:  {}",
        if values.is_empty() {
            "(none)".to_owned()
        } else {
            values.join(", ")
        }
    )?;
    outln!(
        "verdict: {} (success when {})",
        output::cell(&measured["verdict"]),
        args.success
    )?;
    if let Some(error) = measured["error"].as_str() {
        outln!("why:     {}", output::plain(error))?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn guard_files_are_json_or_yaml_lists_or_objects_with_guards() {
        let yaml = "- kind: prometheus\n  address: http://p:9090\n  query: up\n  success: result == 1\n  count: 2\n- kind: url\n  url: http://app/health\n";
        let (_dir, path) = file("guards.yaml", yaml);
        let guards = guard_file(&path).unwrap();
        assert_eq!(
            guards,
            vec![
                json!({"kind": "prometheus", "address": "http://p:9090", "query": "up", "success": "result == 1", "count": 2}),
                json!({"kind": "url", "url": "http://app/health"}),
            ]
        );
        let (_dir, path) = file(
            "guards.json",
            r#"{"guards": [{"kind": "url", "url": "http://app/health"}]}"#,
        );
        assert_eq!(guard_file(&path).unwrap().len(), 1);
    }

    #[test]
    fn bad_guard_files_name_the_file_and_what_is_wrong() {
        let cases = [
            (
                "g.json",
                r#"[{"kind": "url", "kind": "url"}]"#,
                "not valid JSON",
            ),
            ("g.yaml", "guards: [1]", "guards[0] is not an object"),
            ("g.yaml", "guards: []\nextra: 1", "only `guards`"),
            ("g.yaml", "kind: url", "a list of guards"),
            ("g.yaml", "- [unclosed", "neither JSON nor YAML"),
            ("g.yaml", "- kind: url\n  url: a\n  url: b\n", "duplicate"),
        ];
        for (name, text, expected) in cases {
            let (_dir, path) = file(name, text);
            let error = guard_file(&path).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains(name),
                "{text}: {error}"
            );
        }
    }
}
