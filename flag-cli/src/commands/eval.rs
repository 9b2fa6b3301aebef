//! `flagctl eval`: evaluate a flag on the server (OFREP) or locally from a flagd file.

use flag_protocol::{OfrepEvaluation, OfrepFailure, OfrepRequest};
use reqwest::Method;
use serde_json::{Value, json};

use super::read_json;
use crate::Context;
use crate::cli::EvalArgs;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

pub async fn run(context: &Context, args: &EvalArgs) -> Result<u8> {
    let Value::Object(context_json) = serde_json::from_str::<Value>(&args.context)
        .map_err(|error| CliError::input(format!("--context is not valid JSON: {error}")))?
    else {
        return Err(CliError::input(
            "--context must be a JSON object, e.g. '{\"targetingKey\":\"u1\"}'",
        ));
    };
    let result = match &args.file {
        Some(path) => local(context, path, &args.key, context_json)?,
        None => remote(context, &args.key, context_json).await?,
    };
    if context.output == Format::Json {
        output::json(&json!(result))?;
    } else {
        let cell = |value: Option<&str>| value.unwrap_or("-").to_owned();
        outln!(
            "{}: {}",
            args.key,
            output::cell(result.value.as_ref().unwrap_or(&Value::Null))
        )?;
        outln!("  variant  {}", cell(result.variant.as_deref()))?;
        match &result.error_code {
            Some(code) => outln!(
                "  error    {code}: {}",
                cell(result.error_details.as_deref())
            )?,
            None => outln!("  reason   {}", cell(result.reason.as_deref()))?,
        }
        if let Some(metadata) = result.metadata.as_ref().filter(|m| !m.is_empty()) {
            outln!("  metadata {}", json!(metadata))?;
        }
    }
    // A result with an error code (FLAG_NOT_FOUND, TYPE_MISMATCH...) is printed, and exits 1 so a
    // CI check of a flag file fails.
    Ok(if result.is_error() {
        exit::ERROR
    } else {
        exit::OK
    })
}

/// With flag-core, against a file: the same code the server and the SDK run, loading the file
/// as the server would (warnings on stderr; `--strict` refuses them).
fn local(
    context: &Context,
    path: &std::path::Path,
    key: &str,
    context_json: serde_json::Map<String, Value>,
) -> Result<OfrepEvaluation> {
    let document = read_json(path)?;
    let loaded = super::validate::check(
        path,
        &document,
        context.strict,
        super::validate::Show::Flag(key),
    )?;
    let ctx = flag_core::EvaluationContext::from_json(context_json);
    let now = jiff::Timestamp::now().as_second();
    let resolution = loaded.compiled.evaluate(key, &ctx, now);
    Ok(OfrepEvaluation::from_resolution(key, &resolution))
}

/// On the server, through OFREP.
async fn remote(
    context: &Context,
    key: &str,
    context_json: serde_json::Map<String, Value>,
) -> Result<OfrepEvaluation> {
    let api = context.api().await?;
    let path = super::with_query(
        &format!("/ofrep/v1/evaluate/flags/{}", super::flag_segment(key)?),
        &[("environment", &context.environment)],
    );
    let (status, answer) = api
        .call_raw(
            Method::POST,
            &path,
            Some(&json!(OfrepRequest {
                context: context_json
            })),
        )
        .await?;
    // OFREP reports evaluation errors (404 FLAG_NOT_FOUND, 400 GENERAL...) as results, with a
    // body of its own; a malformed request as an `OfrepFailure`; anything else (401, 403, 5xx)
    // is an error of the request, in our error shape.
    if let Ok(evaluation) = serde_json::from_value::<OfrepEvaluation>(answer.clone()) {
        return Ok(evaluation);
    }
    if let Ok(failure) = serde_json::from_value::<OfrepFailure>(answer.clone()) {
        return Err(CliError::input(format!(
            "the server refused the context ({}): {}",
            failure.error_code, failure.error_details
        )));
    }
    if !status.is_success() {
        return Err(crate::client::server_error(status, &answer));
    }
    Err(CliError::new(
        crate::error::Kind::Server,
        "the server's OFREP answer does not decode as an evaluation",
    ))
}
