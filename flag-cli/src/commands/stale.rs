//! `flagctl stale`: flags that have done their job, from the server's evaluation telemetry and
//! flag history (the listing's `createdAt`, `updatedAt`, `lastEvaluated`, `uniformVariant`,
//! `state`). A flag younger than `--days` is never stale.

use serde::Serialize;
use serde_json::Value;

use crate::Context;
use crate::cli::StaleArgs;
use crate::error::{Result, exit};
use crate::output::{self, Format};

/// What makes a flag stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Never evaluated since it was created.
    NeverEvaluated,
    /// Evaluated once, but not for the period.
    NotEvaluated,
    /// Serves one variant to everyone, unchanged for the period.
    Uniform,
    /// Disabled, unchanged for the period.
    Disabled,
}

/// One stale flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The flag key.
    pub key: String,
    /// Why.
    pub finding: Kind,
    /// Since when (unix seconds): creation, last evaluation or last change.
    pub since: i64,
    /// What to do.
    pub suggestion: String,
}

/// The stale flags of a listing (`GET …/flags`) at `now`, for a period of `days`.
pub fn findings(flags: &[Value], now: i64, days: u32) -> Vec<Finding> {
    let cutoff = now.saturating_sub(i64::from(days).saturating_mul(86_400));
    let mut found = Vec::new();
    for flag in flags {
        let Some(key) = flag["key"].as_str() else {
            continue;
        };
        let created = flag["createdAt"].as_i64().unwrap_or(now);
        let updated = flag["updatedAt"].as_i64().unwrap_or(now);
        if created > cutoff {
            continue;
        }
        let finding = |finding: Kind, since: i64, suggestion: String| Finding {
            key: key.to_owned(),
            finding,
            since,
            suggestion,
        };
        if flag["state"] == "DISABLED" && updated <= cutoff {
            found.push(finding(
                Kind::Disabled,
                updated,
                format!(
                    "disabled since {}: remove the code path it guards, then `flagctl flag delete {key}`",
                    output::time(updated)
                ),
            ));
        } else if let Some(variant) = flag["uniformVariant"].as_str()
            && updated <= cutoff
        {
            found.push(finding(
                Kind::Uniform,
                updated,
                format!(
                    "serves {variant:?} to everyone, unchanged since {}: make that the code's only path, then delete the flag",
                    output::time(updated)
                ),
            ));
        }
        match flag["lastEvaluated"].as_i64() {
            None => found.push(finding(
                Kind::NeverEvaluated,
                created,
                format!(
                    "never evaluated since it was created on {}: wire it up, or delete it (`flagctl refs` shows where it is named)",
                    output::time(created)
                ),
            )),
            Some(last) if last <= cutoff => found.push(finding(
                Kind::NotEvaluated,
                last,
                format!(
                    "last evaluated on {}: no code uses it any more; check with `flagctl refs`, then delete it",
                    output::time(last)
                ),
            )),
            Some(_) => {}
        }
    }
    found
}

pub async fn run(context: &Context, args: &StaleArgs) -> Result<u8> {
    let environment = args.environment.as_ref().unwrap_or(&context.environment);
    let api = context.api().await?;
    let answer = api
        .get(&format!("{}/flags", super::environment_path(environment)?))
        .await?;
    let flags = answer.body["flags"].as_array().cloned().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let found = findings(&flags, now, args.days);
    let code = if found.is_empty() {
        exit::OK
    } else {
        exit::FINDINGS
    };
    if context.output == Format::Json {
        let body =
            serde_json::json!({"environment": environment, "days": args.days, "stale": found});
        output::json(&body)?;
        return Ok(code);
    }
    if found.is_empty() {
        output::line(format_args!(
            "no stale flags in {environment} (period: {} days, {} flags)",
            args.days,
            flags.len()
        ))?;
        return Ok(code);
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            let kind = serde_json::to_value(f.finding)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            vec![output::plain(&f.key), kind, output::plain(&f.suggestion)]
        })
        .collect();
    output::table(&["FLAG", "FINDING", "SUGGESTION"], &rows)?;
    Ok(code)
}

/// Checks `--days`.
pub fn parse_days(text: &str) -> std::result::Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|d| *d <= 3650)
        .ok_or_else(|| format!("{text:?} is not a number of days from 0 to 3650"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn flag(key: &str, extra: Value) -> Value {
        let mut flag = json!({"key": key, "state": "ENABLED", "createdAt": NOW - 100 * DAY,
            "updatedAt": NOW - 100 * DAY, "lastEvaluated": NOW - DAY, "uniformVariant": null});
        for (field, value) in extra.as_object().unwrap() {
            flag[field] = value.clone();
        }
        flag
    }

    #[test]
    fn each_kind_of_staleness_is_found_with_its_date() {
        let flags = [
            flag("busy", json!({})),
            flag(
                "new",
                json!({"createdAt": NOW - DAY, "lastEvaluated": null}),
            ),
            flag("never", json!({"lastEvaluated": null})),
            flag("forgotten", json!({"lastEvaluated": NOW - 40 * DAY})),
            flag("rolled-out", json!({"uniformVariant": "on"})),
            flag(
                "just-rolled-out",
                json!({"uniformVariant": "on", "updatedAt": NOW - 2 * DAY}),
            ),
            flag(
                "off",
                json!({"state": "DISABLED", "updatedAt": NOW - 31 * DAY}),
            ),
        ];
        let found: Vec<(String, Kind, i64)> = findings(&flags, NOW, 30)
            .into_iter()
            .map(|f| (f.key, f.finding, f.since))
            .collect();
        assert_eq!(
            found,
            vec![
                ("never".to_owned(), Kind::NeverEvaluated, NOW - 100 * DAY),
                ("forgotten".to_owned(), Kind::NotEvaluated, NOW - 40 * DAY),
                ("rolled-out".to_owned(), Kind::Uniform, NOW - 100 * DAY),
                ("off".to_owned(), Kind::Disabled, NOW - 31 * DAY),
            ]
        );
        assert!(
            findings(&flags, NOW, 200).is_empty(),
            "every flag is younger than 200 days"
        );
        assert!(
            parse_days("3651").is_err() && parse_days("-1").is_err() && parse_days("x").is_err()
        );
    }
}
