//! `flagctl flag`: create, inspect, toggle, target, roll out, delete, history.
//!
//! Every write reads the flag's version first and sends it as `If-Match`, so an edit made by
//! someone else in between is reported (exit 1, with a hint), never overwritten.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{if_match, message_header, read_json};
use crate::Context;
use crate::cli::{CreateArgs, FlagCommand, FlagKind, Message, TargetArgs};
use crate::client::Api;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

fn flag_path(context: &Context, key: &str) -> Result<String> {
    super::flag_path(&context.environment, key)
}

/// The flag's view and its version.
async fn read(api: &Api, context: &Context, key: &str) -> Result<(Value, i64)> {
    let answer = api.get(&flag_path(context, key)?).await?;
    let version = answer.body["version"]
        .as_i64()
        .or(answer.version)
        .unwrap_or(0);
    Ok((answer.body, version))
}

/// Prints the result of a write: a line for people, the flag view for scripts. Warnings go to
/// stderr either way.
fn written(context: &Context, what: &str, view: &Value) -> Result<()> {
    super::print_warnings(view);
    if context.output == Format::Json {
        output::json(view)
    } else {
        outln!(
            "{what} {} (version {})",
            output::cell(&view["key"]),
            output::cell(&view["version"])
        )
    }
}

pub async fn run(context: &Context, command: FlagCommand) -> Result<u8> {
    let api = context.api().await?;
    match command {
        FlagCommand::List => list(&api, context).await?,
        FlagCommand::Get { key } => {
            let (view, _) = read(&api, context, &key).await?;
            if context.output == Format::Json {
                output::json(&view)?;
            } else {
                outln!(
                    "# {} in {}: version {}, {} flag, updated {} by {}",
                    key,
                    context.environment,
                    output::cell(&view["version"]),
                    output::cell(&view["type"]),
                    view["updatedAt"]
                        .as_i64()
                        .map_or_else(|| "-".to_owned(), output::time),
                    output::cell(&view["updatedBy"])
                )?;
                output::json(&view["flag"])?;
            }
        }
        FlagCommand::Create(args) => create(&api, context, &args).await?,
        FlagCommand::Enable { key, message } => {
            patch(
                &api,
                context,
                &key,
                json!({"state": "ENABLED"}),
                &message,
                "enabled",
            )
            .await?;
        }
        FlagCommand::Disable { key, message } => {
            patch(
                &api,
                context,
                &key,
                json!({"state": "DISABLED"}),
                &message,
                "disabled",
            )
            .await?;
        }
        FlagCommand::Default {
            key,
            variant,
            message,
        } => {
            patch(
                &api,
                context,
                &key,
                json!({"defaultVariant": variant}),
                &message,
                "set the default of",
            )
            .await?;
        }
        FlagCommand::Rollout {
            key,
            percentage,
            variant,
            others,
            message,
        } => {
            // JSON has no NaN or infinity: say so here rather than send a null.
            if !percentage.is_finite() {
                return Err(CliError::usage(format!(
                    "the percentage must be a number from 0 to 100, got {percentage}"
                )));
            }
            let version = expected_version(&api, context, &key, &message).await?;
            let mut headers = message_header(message.message.as_ref());
            headers.push(if_match(version));
            let mut body = json!({"percentage": percentage});
            if let Some(variant) = &variant {
                body["variant"] = json!(variant);
            }
            if let Some(others) = &others {
                body["otherVariant"] = json!(others);
            }
            let answer = api
                .call(
                    Method::POST,
                    &format!("{}/rollout", flag_path(context, &key)?),
                    Some(&body),
                    &headers,
                )
                .await?;
            let what = variant.map_or_else(String::new, |v| format!("{v:?} "));
            written(
                context,
                &format!("rolled {what}out to {percentage}%:"),
                &answer.body,
            )?;
        }
        FlagCommand::Target(args) => target(&api, context, &args).await?,
        FlagCommand::Delete { key, message } => {
            let version = expected_version(&api, context, &key, &message).await?;
            let mut headers = message_header(message.message.as_ref());
            headers.push(if_match(version));
            api.call(Method::DELETE, &flag_path(context, &key)?, None, &headers)
                .await?;
            if context.output == Format::Json {
                output::json(&json!({"deleted": key, "environment": context.environment}))?;
            } else {
                outln!("deleted {key}")?;
            }
        }
        FlagCommand::History { key, limit } => history(&api, context, &key, limit).await?,
    }
    Ok(exit::OK)
}

async fn list(api: &Api, context: &Context) -> Result<()> {
    let answer = api
        .get(&format!(
            "{}/flags",
            super::environment_path(&context.environment)?
        ))
        .await?;
    if context.output == Format::Json {
        output::json(&answer.body["flags"])?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer.body["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                output::cell(&f["key"]),
                output::cell(&f["state"]),
                output::cell(&f["type"]),
                output::cell(&f["defaultVariant"]),
                f["rolloutPercentage"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |p| format!("{p}%")),
                output::cell(&f["version"]),
                format!(
                    "{} by {}",
                    f["updatedAt"]
                        .as_i64()
                        .map_or_else(|| "-".to_owned(), output::time),
                    output::cell(&f["updatedBy"])
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "KEY", "STATE", "TYPE", "DEFAULT", "ROLLOUT", "VERSION", "UPDATED",
        ],
        &rows,
    )?;
    Ok(())
}

/// Parses one `--variant name=value` for the flag's type.
fn variant(kind: FlagKind, text: &str) -> Result<(String, Value)> {
    let (name, raw) = text
        .split_once('=')
        .ok_or_else(|| CliError::usage(format!("--variant {text:?} must be NAME=VALUE")))?;
    let bad =
        |expected: &str| CliError::usage(format!("--variant {name}: {raw:?} is not {expected}"));
    let value = match kind {
        FlagKind::Bool => Value::Bool(raw.parse().map_err(|_| bad("true or false"))?),
        FlagKind::String => Value::String(raw.to_owned()),
        FlagKind::Number => {
            let number: Value = serde_json::from_str(raw).map_err(|_| bad("a number"))?;
            if !number.is_number() {
                return Err(bad("a number"));
            }
            number
        }
        FlagKind::Json => {
            let object: Value = serde_json::from_str(raw).map_err(|_| bad("a JSON object"))?;
            if !object.is_object() {
                return Err(bad("a JSON object"));
            }
            object
        }
    };
    Ok((name.to_owned(), value))
}

async fn create(api: &Api, context: &Context, args: &CreateArgs) -> Result<()> {
    let mut variants = Map::new();
    let mut first = None;
    for text in &args.variants {
        let (name, value) = variant(args.kind, text)?;
        first.get_or_insert_with(|| name.clone());
        if variants.insert(name.clone(), value).is_some() {
            return Err(CliError::usage(format!("--variant {name} is given twice")));
        }
    }
    if variants.is_empty() {
        if args.kind != FlagKind::Bool {
            return Err(CliError::usage(
                "a non-boolean flag needs variants: --variant NAME=VALUE (repeat for each)",
            ));
        }
        variants.insert("on".to_owned(), json!(true));
        variants.insert("off".to_owned(), json!(false));
    }
    let default = args.default.clone().or_else(|| {
        if args.kind == FlagKind::Bool && variants.contains_key("off") {
            Some("off".to_owned())
        } else {
            first.clone()
        }
    });
    let mut flag = json!({
        "state": if args.disabled { "DISABLED" } else { "ENABLED" },
        "variants": variants,
        "defaultVariant": default,
    });
    if let Some(description) = &args.description {
        flag["description"] = json!(description);
    }
    let mut headers = message_header(args.message.as_ref());
    // Version 0 means "must not exist yet": never overwrite a flag by creating it.
    headers.push(if_match(0));
    let answer = api
        .call(
            Method::PUT,
            &flag_path(context, &args.key)?,
            Some(&flag),
            &headers,
        )
        .await
        .map_err(|error| {
            // `If-Match: "0"` fails only when the flag exists.
            if error.server_code == Some(flag_protocol::ErrorCode::PreconditionFailed) {
                CliError::input(format!(
                    "flag {} already exists in {}",
                    args.key, context.environment
                ))
                .hint("change it with `flagctl flag enable|disable|default|target|rollout`")
            } else {
                error
            }
        })?;
    written(context, "created", &answer.body)?;
    Ok(())
}

/// The version a write expects: `--if-match`, else the one read now.
async fn expected_version(
    api: &Api,
    context: &Context,
    key: &str,
    message: &Message,
) -> Result<i64> {
    match message.if_match {
        Some(version) => Ok(version),
        None => Ok(read(api, context, key).await?.1),
    }
}

async fn patch(
    api: &Api,
    context: &Context,
    key: &str,
    change: Value,
    message: &Message,
    what: &str,
) -> Result<()> {
    let version = expected_version(api, context, key, message).await?;
    let mut headers = message_header(message.message.as_ref());
    headers.push(if_match(version));
    let answer = api
        .call(
            Method::PATCH,
            &flag_path(context, key)?,
            Some(&change),
            &headers,
        )
        .await?;
    written(context, what, &answer.body)?;
    Ok(())
}

async fn target(api: &Api, context: &Context, args: &TargetArgs) -> Result<()> {
    let rule = match (&args.file, &args.json) {
        (Some(path), _) => read_json(path)?,
        (None, Some(text)) => serde_json::from_str(text)
            .map_err(|error| CliError::input(format!("--json is not valid JSON: {error}")))?,
        (None, None) => return Err(CliError::usage("give the rule with --file or --json")),
    };
    // A merge patch would merge the new rule into the old one: replace the whole flag instead.
    let (view, current) = read(api, context, &args.key).await?;
    let version = args.message.if_match.unwrap_or(current);
    let mut flag = view["flag"].clone();
    if rule.as_object().is_some_and(Map::is_empty) {
        if let Some(object) = flag.as_object_mut() {
            object.remove("targeting");
        }
    } else {
        flag["targeting"] = rule;
    }
    let mut headers = message_header(args.message.message.as_ref());
    headers.push(if_match(version));
    let answer = api
        .call(
            Method::PUT,
            &flag_path(context, &args.key)?,
            Some(&flag),
            &headers,
        )
        .await?;
    written(context, "set the targeting of", &answer.body)?;
    Ok(())
}

async fn history(api: &Api, context: &Context, key: &str, limit: usize) -> Result<()> {
    let answer = api
        .get(&super::with_query(
            "/api/v1/audit",
            &[
                ("environment", &context.environment),
                ("flag", key),
                ("limit", &limit.clamp(1, 1000).to_string()),
            ],
        ))
        .await?;
    let changes = answer.body["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if context.output == Format::Json {
        output::json(&Value::Array(changes))?;
        return Ok(());
    }
    if changes.is_empty() {
        outln!("no history for {key} in {}", context.environment)?;
    }
    for change in &changes {
        outln!(
            "{}  v{}  {:<7} by {}{}",
            change["at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), output::time),
            output::cell(&change["version"]),
            output::cell(&change["operation"]),
            output::cell(&change["actor"]),
            change["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )?;
        for line in output::diff(&change["before"], &change["after"]) {
            outln!("    {line}")?;
        }
    }
    Ok(())
}
