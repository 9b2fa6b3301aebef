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
    if let Some(url) = &args.guard_url {
        body["guard"] =
            json!({"url": url, "failures": args.guard_failures, "timeout": args.guard_timeout});
    }
    if let Some(message) = &args.message {
        body["message"] = json!(message);
    }
    Ok(body)
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
    if let (Some(reason), "failed") = (view["abortReason"].as_str(), state) {
        outln!("  failed: {reason} (the flag was left as it is)")?;
    } else if let Some(reason) = view["abortReason"].as_str() {
        outln!(
            "  aborted: {reason} (rollout restored to {})",
            percent(&view["previousPercentage"])
        )?;
    }
    if let Some(guard) = view["guard"]["url"].as_str() {
        outln!(
            "  guard: {guard} ({} consecutive failure(s) abort)",
            output::cell(&view["guard"]["failures"])
        )?;
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
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
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
        outln!("why:     {error}")?;
    }
    Ok(exit::OK)
}
