//! One measurement of a metric analysis guard against Prometheus: the query with its
//! `{{flag}}`, `{{environment}}` and `{{variant}}` placeholders filled, run through Prometheus's
//! instant query API (`GET /api/v1/query`,
//! <https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries>), and judged by a
//! success [`Condition`](super::condition::Condition): a scalar, or every sample of an instant
//! vector, must satisfy it; an empty vector, or an answer that cannot be judged, is
//! inconclusive. Ramps (`ramp.rs`) schedule the measurements; `analyse` runs one on request.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DomainError;
use super::condition::Condition;

/// What a measurement concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every value satisfies the condition.
    Success,
    /// Some value does not.
    Failure,
    /// Nothing to judge: an empty result, an error, an unreachable Prometheus.
    Inconclusive,
}

impl Verdict {
    /// Its name, as serialised (and as the `result` label of `flagd_ramp_analysis_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Failure => "failure",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One measurement, as recorded with the ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// When it was taken (unix seconds).
    pub at: i64,
    /// The query as sent (placeholders filled).
    pub query: String,
    /// The values measured (one per sample; a scalar is one), failing ones first, at most
    /// [`MAX_VALUES`]. NaN and infinities are recorded as `null`.
    pub values: Vec<Option<f64>>,
    /// How many samples the answer had, when more than `values` keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// The conclusion.
    pub verdict: Verdict,
    /// Why it is inconclusive, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether Prometheus answered the query (an empty result is an answer; a refused query, an
    /// unreachable server or an unreadable body is not). Not recorded.
    #[serde(skip)]
    pub answered: bool,
}

impl Measurement {
    /// The value that decided: the first that failed the condition, else the first (`None`
    /// when there is none, or it is NaN).
    pub fn deciding_value(&self, success: &Condition) -> Option<f64> {
        let values = self.values.iter();
        let failing = values
            .clone()
            .find(|v| !v.is_some_and(|v| success.holds(v)));
        failing.or_else(|| self.values.first()).copied().flatten()
    }
}

/// The values a query template may use.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{{flag}}`: the flag key.
    pub flag: &'a str,
    /// `{{environment}}`: the environment.
    pub environment: &'a str,
    /// `{{variant}}`: the variant being ramped.
    pub variant: &'a str,
}

/// The largest Prometheus answer read.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most characters of an error kept (Prometheus's own messages can be long).
const MAX_ERROR_CHARS: usize = 500;
/// The most sample values kept per measurement (failing ones first); all are judged.
pub const MAX_VALUES: usize = 100;
/// The placeholders a query may use.
pub const PLACEHOLDERS: [&str; 3] = ["{{flag}}", "{{environment}}", "{{variant}}"];

/// Fills `{{flag}}`, `{{environment}}` and `{{variant}}`, escaped for a PromQL string literal
/// (`\`, `"`, `'`, and newlines and tabs as `\n`, `\r`, `\t`), so a value cannot end the label
/// matcher it sits in.
pub fn fill(template: &str, values: Placeholders<'_>) -> String {
    let escape = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                other => out.push(other),
            }
        }
        out
    };
    template
        .replace("{{flag}}", &escape(values.flag))
        .replace("{{environment}}", &escape(values.environment))
        .replace("{{variant}}", &escape(values.variant))
}

/// Runs `query` against the Prometheus at `address` and judges the answer with `success`.
pub async fn measure(
    client: &reqwest::Client,
    address: &str,
    query: &str,
    success: &Condition,
    timeout: Duration,
    at: i64,
) -> Measurement {
    let inconclusive = |error: String| Measurement {
        at,
        query: query.to_owned(),
        values: Vec::new(),
        samples: None,
        verdict: Verdict::Inconclusive,
        // Credentials in the address never reach what is stored or shown.
        error: Some(crate::outbound::excerpt(
            &crate::outbound::redacted(&error),
            MAX_ERROR_CHARS,
        )),
        answered: false,
    };
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let answer = match tokio::time::timeout(timeout, fetch(client, &url, query, timeout)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return inconclusive(error),
        Err(_) => {
            return inconclusive(format!(
                "Prometheus did not answer within {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    let values = match sample_values(&answer) {
        Ok(values) => values,
        Err(error) => return inconclusive(error),
    };
    if values.is_empty() {
        return Measurement {
            answered: true,
            ..inconclusive("the query returned no samples".to_owned())
        };
    }
    let (mut failing, passing): (Vec<f64>, Vec<f64>) =
        values.iter().partition(|value| !success.holds(**value));
    let verdict = if failing.is_empty() {
        Verdict::Success
    } else {
        Verdict::Failure
    };
    let samples = values.len();
    failing.extend(passing);
    failing.truncate(MAX_VALUES);
    Measurement {
        at,
        query: query.to_owned(),
        values: failing
            .iter()
            .map(|v| v.is_finite().then_some(*v))
            .collect(),
        samples: (samples > MAX_VALUES).then_some(samples),
        verdict,
        error: None,
        answered: true,
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let response = client
        .get(url)
        .query(&[
            ("query", query),
            ("timeout", &format!("{}ms", timeout.as_millis())),
        ])
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::outbound::chain(&e.without_url())))?;
    let status = response.status();
    let body = crate::outbound::read_capped(response, url, MAX_ANSWER_BYTES).await?;
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("Prometheus answered HTTP {status} with a body that is not JSON"))?;
    // Errors come as {"status": "error", "errorType", "error"} (with 400, 422 or 503).
    if answer.get("status").and_then(Value::as_str) != Some("success") {
        let kind = answer
            .get("errorType")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(format!(
            "Prometheus refused the query ({kind}, HTTP {status}): {error}"
        ));
    }
    Ok(answer)
}

/// The values of a successful answer: a scalar's one value, or each sample of an instant vector.
/// Prometheus writes sample values as strings (`"0.5"`, `"NaN"`, `"+Inf"`).
fn sample_values(answer: &Value) -> Result<Vec<f64>, String> {
    let data = &answer["data"];
    let value_of = |pair: &Value| -> Result<f64, String> {
        let text = pair
            .get(1)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a sample is not [time, \"value\"]: {pair}"))?;
        match text {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            other => other
                .parse::<f64>()
                .map_err(|_| format!("a sample value is not a number: {other:?}")),
        }
    };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(vec![value_of(&data["result"])?]),
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| "a vector answer without a result list".to_owned())?
            .iter()
            .map(|sample| value_of(&sample["value"]))
            .collect(),
        Some(other) => Err(format!(
            "the query returns a {other}; write one that returns a scalar or an instant vector"
        )),
        None => Err("the answer has no resultType".to_owned()),
    }
}

/// What `POST …/flags/{key}/analysis` asks: one measurement now, to try a query before a ramp
/// relies on it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRequest {
    /// Prometheus's base URL, e.g. `http://prometheus:9090`.
    pub prometheus: String,
    /// The PromQL query; may use `{{flag}}`, `{{environment}}`, `{{variant}}`.
    pub query: String,
    /// The success condition, e.g. `result < 0.02`.
    pub success: String,
    /// What `{{variant}}` stands for.
    #[serde(default)]
    pub variant: Option<String>,
    /// How long Prometheus may take (default `10s`, 1 ms to 60 s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The longest query a guard may store.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// The longest a measurement may take.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// A measurement's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks Prometheus's base URL (`field` names it in the error).
pub fn check_address(text: &str, field: &str) -> Result<(), DomainError> {
    url::Url::parse(text)
        .ok()
        .filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.has_host()
                && url.query().is_none()
                && url.fragment().is_none()
        })
        .map(drop)
        .ok_or_else(|| {
            DomainError::bad_request(format!(
                "{field} must be Prometheus's http(s) base URL (a path prefix is fine; no query or fragment) such as http://prometheus:9090, got {:?}",
                crate::outbound::redacted(text)
            ))
            .at(field.to_owned())
        })
}

/// Checks a query template: not empty, at most [`MAX_QUERY_BYTES`], no placeholder but
/// [`PLACEHOLDERS`] (a misspelt one would be sent as it is).
pub fn check_query(text: &str, field: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() {
        return Err(DomainError::bad_request(format!("{field} is empty")).at(field.to_owned()));
    }
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start..];
        let end = after.find("}}").map_or(after.len(), |end| end + 2);
        let placeholder = &after[..end];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(DomainError::bad_request(format!(
                "{field} has the placeholder {placeholder:?}; the query may use {}",
                PLACEHOLDERS.join(", ")
            ))
            .at(field.to_owned()));
        }
        rest = &after[end..];
    }
    if text.len() > MAX_QUERY_BYTES {
        return Err(DomainError::rejected(
            super::Rejection::OutOfRange,
            format!("{field} is {} bytes; at most {MAX_QUERY_BYTES}", text.len()),
        )
        .at(field.to_owned()));
    }
    Ok(())
}

/// Parses a success condition, the error naming `field` and the column.
pub fn check_success(text: &str, field: &str) -> Result<Condition, DomainError> {
    Condition::parse(text)
        .map_err(|error| DomainError::bad_request(format!("{field}: {error}")).at(field.to_owned()))
}

/// Parses a measurement timeout (1 ms to 60 s; [`DEFAULT_TIMEOUT`] when absent).
pub fn check_timeout(text: Option<&str>, field: &str) -> Result<Duration, DomainError> {
    let Some(text) = text else {
        return Ok(DEFAULT_TIMEOUT);
    };
    crate::units::parse_duration(text)
        .ok()
        .filter(|d| *d >= Duration::from_millis(1) && *d <= MAX_TIMEOUT)
        .ok_or_else(|| {
            DomainError::rejected(
                super::Rejection::OutOfRange,
                format!("{field} must be a duration from 1ms to 60s, got {text:?}"),
            )
            .at(field.to_owned())
        })
}

/// The client measurements use. As ramp guards: no redirects (the server must not become a way
/// to reach other internal services), the public roots plus `--guard-ca`.
pub fn client(domain: &super::Domain) -> Result<reqwest::Client, DomainError> {
    let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for root in domain.guard_roots() {
        client = client.add_root_certificate(root.clone());
    }
    client.build().map_err(DomainError::internal)
}

/// Runs one measurement for a flag of an environment (both must exist), checking the request
/// field by field first.
pub async fn analyse(
    domain: &super::Domain,
    environment: &str,
    key: &str,
    request: AnalysisRequest,
) -> Result<Measurement, DomainError> {
    check_address(&request.prometheus, "prometheus")?;
    check_query(&request.query, "query")?;
    let success = check_success(&request.success, "success")?;
    let timeout = check_timeout(request.timeout.as_deref(), "timeout")?;
    let (env, flag, requested) = (
        environment.to_owned(),
        key.to_owned(),
        request.variant.clone(),
    );
    // `{{variant}}` is the named variant (it must exist), else a boolean flag's `true` one, as
    // for ramps.
    let variant = super::blocking(domain, move |store| {
        super::flags::environment_or_not_found(store, &env)?;
        let stored = store
            .flag(&env, &flag)?
            .ok_or_else(|| DomainError::not_found(format!("flag {flag:?} not found in {env:?}")))?;
        Ok(flag_core::rollout::rolled_out_variant(
            &stored.flag,
            requested.as_deref(),
        ))
    })
    .await?;
    let variant = match variant {
        Ok(variant) => variant,
        Err(_) if !request.query.contains("{{variant}}") => String::new(),
        Err(error) => {
            return Err(DomainError::bad_request(format!(
                "the query uses {{{{variant}}}}: {error} (flagctl ramp analyse --variant)"
            ))
            .at("variant"));
        }
    };
    let query = fill(
        &request.query,
        Placeholders {
            flag: key,
            environment,
            variant: &variant,
        },
    );
    Ok(measure(
        &client(domain)?,
        &request.prometheus,
        &query,
        &success,
        timeout,
        domain.now(),
    )
    .await)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    /// A fake Prometheus on port 0: answers each query with the next scripted answer, and keeps
    /// the queries it was sent.
    async fn prometheus(answers: Vec<(u16, Value)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let router = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(
                move |query: axum::extract::Query<std::collections::HashMap<String, String>>| {
                    seen.lock().unwrap().push(query.0["query"].clone());
                    let (status, body) = answers.lock().unwrap().next().unwrap();
                    async move {
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            axum::Json(body),
                        )
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (address, queries)
    }

    fn vector(values: &[&str]) -> Value {
        json!({"status": "success", "data": {"resultType": "vector", "result":
            values.iter().enumerate().map(|(i, v)| json!({"metric": {"i": i.to_string()}, "value": [1.7e9, v]})).collect::<Vec<_>>()}})
    }

    #[tokio::test]
    async fn samples_are_judged_each_and_empty_or_failed_answers_are_inconclusive() {
        let (address, queries) = prometheus(vec![
            (200, vector(&["0.01", "0.015"])),
            (200, vector(&["0.01", "0.5"])),
            (200, vector(&[])),
            (200, json!({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "0.001"]}})),
            (200, vector(&["NaN"])),
            (400, json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"})),
            (200, json!({"status": "success", "data": {"resultType": "matrix", "result": []}})),
        ])
        .await;
        let client = reqwest::Client::new();
        let success = Condition::parse("result < 0.02").unwrap();
        let mut verdicts = Vec::new();
        for _ in 0..7 {
            let m = measure(
                &client,
                &address,
                "errors",
                &success,
                Duration::from_secs(5),
                42,
            )
            .await;
            verdicts.push((m.verdict, m.values.clone(), m.error.clone()));
        }
        assert_eq!(verdicts[0].0, Verdict::Success);
        assert_eq!(verdicts[0].1, vec![Some(0.01), Some(0.015)]);
        assert_eq!(verdicts[1].0, Verdict::Failure);
        assert_eq!(verdicts[2].0, Verdict::Inconclusive);
        assert!(verdicts[2].2.as_deref().unwrap().contains("no samples"));
        assert_eq!(verdicts[3].0, Verdict::Success);
        // NaN fails `result < 0.02` (IEEE 754) and is recorded as null.
        assert_eq!(
            (verdicts[4].0, verdicts[4].1.clone()),
            (Verdict::Failure, vec![None])
        );
        assert_eq!(verdicts[5].0, Verdict::Inconclusive);
        assert!(
            verdicts[5]
                .2
                .as_deref()
                .unwrap()
                .contains("parse error at char 5")
        );
        assert!(verdicts[6].2.as_deref().unwrap().contains("matrix"));
        assert_eq!(queries.lock().unwrap().len(), 7);
    }

    #[tokio::test]
    async fn an_unreachable_or_slow_prometheus_is_inconclusive() {
        let client = reqwest::Client::new();
        let success = Condition::parse("result < 1").unwrap();
        let m = measure(
            &client,
            "http://127.0.0.1:9",
            "up",
            &success,
            Duration::from_secs(2),
            1,
        )
        .await;
        assert_eq!(m.verdict, Verdict::Inconclusive);
        assert!(m.error.unwrap().contains("127.0.0.1:9"));
        // A listener that never answers: the timeout decides.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let m = measure(
            &client,
            &address,
            "up",
            &success,
            Duration::from_millis(200),
            1,
        )
        .await;
        assert_eq!(m.verdict, Verdict::Inconclusive);
        assert!(m.error.unwrap().contains("did not answer"), "timeout");
        drop(listener);
    }

    #[test]
    fn placeholders_are_filled_and_cannot_break_out_of_a_label_matcher() {
        let query = fill(
            r#"sum(rate(errors{flag="{{flag}}",env="{{environment}}",variant="{{variant}}"}[5m]))"#,
            Placeholders {
                flag: "new-checkout",
                environment: "production",
                variant: r#"on"} or vector(0) #\"#,
            },
        );
        assert_eq!(
            query,
            r#"sum(rate(errors{flag="new-checkout",env="production",variant="on\"} or vector(0) #\\"}[5m]))"#
        );
        let newline = fill(
            "x{f=\"{{flag}}\"}",
            Placeholders {
                flag: "nl\nx\r\t'",
                environment: "",
                variant: "",
            },
        );
        assert_eq!(newline, r#"x{f="nl\nx\r\t\'"}"#);
    }
}
