//! `flagctl eval`: evaluate a flag on the server (OFREP) or locally from a flagd file.

use reqwest::Method;
use serde_json::{Value, json};

use super::read_json;
use crate::Context;
use crate::cli::EvalArgs;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format};

pub async fn run(context: &Context, args: &EvalArgs) -> Result<u8> {
    let Value::Object(context_json) = serde_json::from_str::<Value>(&args.context)
        .map_err(|error| CliError::input(format!("--context is not valid JSON: {error}")))?
    else {
        return Err(CliError::input(
            "--context must be a JSON object, e.g. '{\"targetingKey\":\"u1\"}'",
        ));
    };
    let result = match &args.file {
        Some(path) => local(path, &args.key, context_json)?,
        None => remote(context, &args.key, context_json).await?,
    };
    if context.output == Format::Json {
        output::json(&result);
    } else {
        println!(
            "{}: {}",
            args.key,
            output::cell(result.get("value").unwrap_or(&Value::Null))
        );
        println!("  variant  {}", output::cell(&result["variant"]));
        println!("  reason   {}", output::cell(&result["reason"]));
        if !result["errorCode"].is_null() {
            println!(
                "  error    {}: {}",
                output::cell(&result["errorCode"]),
                output::cell(&result["errorMessage"])
            );
        }
    }
    // A result with an error code (FLAG_NOT_FOUND, TYPE_MISMATCH...) is printed, and exits 1 so a
    // CI check of a flag file fails.
    Ok(if result["errorCode"].is_null() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// With flag-core, against a file: the same code the server and the SDK run.
fn local(
    path: &std::path::Path,
    key: &str,
    context_json: serde_json::Map<String, Value>,
) -> Result<Value> {
    let document = read_json(path)?;
    let (_, compiled) = flag_core::CompiledFlagSet::from_value(&document).map_err(|error| {
        let mut cli = CliError::from(error);
        cli.message = format!(
            "{} is not a valid flagd file: {}",
            path.display(),
            cli.message
        );
        cli
    })?;
    let ctx = flag_core::EvaluationContext::from_json(context_json);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let resolution = compiled.evaluate(key, &ctx, now);
    Ok(json!({
        "key": key,
        "value": resolution.value,
        "variant": resolution.variant,
        "reason": resolution.reason.as_str(),
        "errorCode": resolution.error.as_ref().map(|e| e.code.as_str()),
        "errorMessage": resolution.error.as_ref().map(|e| e.message.to_string()),
    }))
}

/// On the server, through OFREP.
async fn remote(
    context: &Context,
    key: &str,
    context_json: serde_json::Map<String, Value>,
) -> Result<Value> {
    let api = context.api()?;
    let path = format!(
        "/ofrep/v1/evaluate/flags/{key}?environment={}",
        context.environment
    );
    let (status, answer) = api
        .call_raw(Method::POST, &path, Some(&json!({"context": context_json})))
        .await?;
    // OFREP reports evaluation errors (404 FLAG_NOT_FOUND, 400 GENERAL...) as results, with a
    // body of its own; anything else (401, 403, 5xx) is an error of the request.
    if !status.is_success() && answer.get("errorCode").is_none() {
        return Err(crate::client::server_error(status, &answer));
    }
    let field = |name: &str| answer.get(name).cloned().unwrap_or(Value::Null);
    let reason = if answer.get("errorCode").is_some() {
        json!("ERROR")
    } else {
        field("reason")
    };
    Ok(json!({
        "key": key,
        "value": field("value"),
        "variant": field("variant"),
        "reason": reason,
        "errorCode": field("errorCode"),
        "errorMessage": field("errorDetails"),
    }))
}
