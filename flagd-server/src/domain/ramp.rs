//! Progressive rollouts ("ramps"): raise one flag's rollout through steps at intervals,
//! optionally guarded by a health URL and by Prometheus analysis guards.
//!
//! Every step goes through `flags::rollout`, the code path of the rollout endpoint, so it is an
//! ordinary change: validated, audited (actor `ramp`), versioned and streamed. The scheduler is
//! `tick`: it applies what is due at `state.clock()`. The server runs it every second under
//! `run_scheduler`, which restarts it after an error or a panic; tests call `tick` with a clock of
//! their own and never sleep.
//!
//! The ramp lock serialises state changes (API calls and the scheduler) but is never held across
//! network I/O: guard checks run before it is taken, and what they found is applied to the ramp
//! as it is once the lock is held, so `abort` never waits for a slow guard.
//!
//! A Prometheus analysis guard (`analysis`, issue 18; measurements in `analysis.rs`) judges each
//! step before it is applied: `count` measurements `interval` apart, the last ones before the
//! step is due (the first no sooner than `interval` after the previous step), each recorded with
//! the ramp. More than `failureLimit` failures abort the ramp and restore the rollout from before
//! it; an inconclusive measurement pauses, aborts or is let through (`inconclusive`). A step waits
//! for its analysis to finish, so a ramp with analysis never skips a step after downtime.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use flag_core::rollout::{RolloutVariants, Share, current_rollout};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::analysis::{self, Measurement, Verdict};
use super::condition::Condition;
use super::flags;
use super::{Domain, DomainError, Rejection, blocking};
use crate::outbound::redacted;
use crate::store::{Attribution, RampQuery, RampRecord, StoreError};
use crate::units::DurationError;

/// The actor recorded for steps the scheduler applies.
pub const ACTOR: &str = "ramp";
/// The most steps a ramp may have.
const MAX_STEPS: usize = 50;
/// After a failed guard check that does not yet abort, retry after at most this long.
const GUARD_RETRY_SECONDS: i64 = 30;
/// The longest time between two steps: pause a ramp to hold a step longer.
pub const MAX_STEP_SECONDS: i64 = 366 * 24 * 3600;
/// The longest a guard check may take.
pub const MAX_GUARD_TIMEOUT: Duration = Duration::from_secs(60);
/// The most consecutive guard failures a ramp may tolerate before it aborts.
const MAX_GUARD_FAILURES: u32 = 1_000;
/// The most guards a ramp may have (all kinds).
const MAX_GUARDS: usize = 10;
/// The most measurements an analysis guard may take before one step.
const MAX_ANALYSIS_COUNT: u32 = 100;
/// The longest time between two measurements of an analysis guard.
const MAX_ANALYSIS_INTERVAL: i64 = 24 * 3600;
/// The measurements kept per analysis guard (older ones are dropped and counted).
const MAX_EVIDENCE: usize = 200;

/// Serialises ramp state changes (API calls and the scheduler).
pub type RampLock = Mutex<()>;

/// A ramp's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RampState {
    /// Steps are being applied.
    Active,
    /// Waiting for `resume`.
    Paused,
    /// The last step was applied.
    Completed,
    /// Stopped; the rollout was restored to its value before the ramp.
    Aborted,
    /// Its stored state was unreadable or invalid: the scheduler stopped it without touching
    /// the flag (see `abortReason`).
    Failed,
}

impl RampState {
    fn as_str(self) -> &'static str {
        match self {
            RampState::Active => "active",
            RampState::Paused => "paused",
            RampState::Completed => "completed",
            RampState::Aborted => "aborted",
            RampState::Failed => "failed",
        }
    }
}

/// A health check run before each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Guard {
    /// Fetched with GET by the server; any 2xx is healthy.
    pub url: String,
    /// Consecutive failures that abort the ramp.
    pub failures: u32,
    /// How long one check may take.
    pub timeout_ms: u64,
}

/// What an inconclusive measurement (no samples, Prometheus unreachable or refusing the query)
/// does to a ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InconclusivePolicy {
    /// Pause the ramp: someone looks, then resumes (the analysis starts again) or aborts.
    #[default]
    Pause,
    /// Abort the ramp and restore the rollout from before it.
    Abort,
    /// Count it as taken, not as a failure.
    Continue,
}

/// A Prometheus analysis guard: `count` measurements before each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGuard {
    /// Prometheus's base URL.
    pub address: String,
    /// The PromQL template (`{{flag}}`, `{{environment}}`, `{{variant}}`).
    pub query: String,
    /// What `{{variant}}` stands for: the variant the ramp rolls out.
    pub variant: String,
    /// The success condition (`condition.rs`), parsed again on every read.
    pub success: String,
    /// Seconds between two measurements.
    pub interval_seconds: i64,
    /// Measurements before each step.
    pub count: u32,
    /// Failures tolerated among them (more abort the ramp).
    pub failure_limit: u32,
    /// What an inconclusive measurement does.
    pub inconclusive: InconclusivePolicy,
    /// How long one measurement may take.
    pub timeout_ms: u64,
    /// The analysis of the next step.
    #[serde(default)]
    pub run: AnalysisRun,
    /// Every measurement taken, oldest first (at most `MAX_EVIDENCE`).
    #[serde(default)]
    pub measurements: Vec<Evidence>,
    /// Measurements dropped from the front of `measurements` to keep it bounded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub measurements_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The analysis an analysis guard runs before one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    /// The step it judges (index into `steps`).
    pub step: usize,
    /// Measurements taken.
    pub taken: u32,
    /// Of which failed.
    pub failures: u32,
    /// When the next measurement is due (unix seconds); `None` once `count` were taken.
    pub next_at: Option<i64>,
}

/// A measurement, with the step it judged (step 0: the check before the ramp started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The step it was taken before (index into `steps`).
    pub step: usize,
    /// The measurement.
    #[serde(flatten)]
    pub measurement: Measurement,
}

impl PrometheusGuard {
    /// Schedules the analysis of `step`, the ramp's next step, due at `due`, from `from` (the
    /// previous step or a resume): the measurements end at `due`, the first no sooner than one
    /// interval after `from`.
    fn schedule(&mut self, step: usize, from: i64, due: i64) {
        let span = self
            .interval_seconds
            .saturating_mul(i64::from(self.count.saturating_sub(1)));
        let first = from
            .saturating_add(self.interval_seconds)
            .max(due.saturating_sub(span));
        self.run = AnalysisRun {
            step,
            taken: 0,
            failures: 0,
            next_at: Some(first),
        };
    }

    fn keep(&mut self, evidence: Evidence) {
        self.measurements.push(evidence);
        if self.measurements.len() > MAX_EVIDENCE {
            let excess = self.measurements.len() - MAX_EVIDENCE;
            self.measurements.drain(..excess);
            self.measurements_dropped = self.measurements_dropped.saturating_add(excess as u64);
        }
    }

    /// The invariants `validate` keeps, for stored ramps.
    fn check(&self) -> Result<(), String> {
        if !(1..=MAX_ANALYSIS_COUNT).contains(&self.count) || self.failure_limit >= self.count {
            return Err("its count or failure limit is out of range".to_owned());
        }
        if !(1..=MAX_ANALYSIS_INTERVAL).contains(&self.interval_seconds)
            || self.timeout_ms == 0
            || u128::from(self.timeout_ms) > analysis::MAX_TIMEOUT.as_millis()
        {
            return Err("its interval or timeout is out of range".to_owned());
        }
        Condition::parse(&self.success)
            .map_err(|error| format!("its success condition: {error}"))?;
        analysis::check_address(&self.address, "address").map_err(|e| e.to_string())?;
        analysis::check_query(&self.query, "query").map_err(|e| e.to_string())
    }

    /// Takes one measurement now, for `flag` of `environment`.
    async fn measure(
        &self,
        environment: &str,
        flag: &str,
        client: &reqwest::Client,
        at: i64,
    ) -> Measurement {
        let placeholders = analysis::Placeholders {
            flag,
            environment,
            variant: &self.variant,
        };
        let query = analysis::fill(&self.query, placeholders);
        let condition = match Condition::parse(&self.success) {
            Ok(condition) => condition,
            // Checked on every read; kept total all the same.
            Err(error) => {
                return Measurement {
                    at,
                    query,
                    values: Vec::new(),
                    samples: None,
                    verdict: Verdict::Inconclusive,
                    error: Some(format!("the success condition does not parse: {error}")),
                    answered: false,
                };
            }
        };
        analysis::measure(
            client,
            &self.address,
            &query,
            &condition,
            Duration::from_millis(self.timeout_ms),
            at,
        )
        .await
    }
}

/// Values for people: `0.013, NaN`.
fn shown_values(values: &[Option<f64>]) -> String {
    if values.is_empty() {
        return "no samples".to_owned();
    }
    values
        .iter()
        .map(|v| v.map_or_else(|| "NaN".to_owned(), |v| v.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Something that happened to a ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RampEvent {
    /// Unix seconds.
    pub at: i64,
    /// `started`, `step`, `paused`, `resumed`, `guard_failed`, `aborted`, `completed`.
    pub event: String,
    /// The rollout percentage it set, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// Who (a token's name, or `ramp`).
    pub actor: String,
    /// Why, or what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ramp {
    /// The store's id (not part of the stored definition).
    #[serde(skip)]
    pub id: Option<i64>,
    /// The stored revision it was read at (compare-and-set on save; not part of the definition).
    #[serde(skip)]
    pub revision: i64,
    /// The environment.
    pub environment: String,
    /// The flag whose rollout it raises.
    pub flag: String,
    /// The rolled-out variant, when named (default: a boolean flag's `true` variant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// What users outside the rollout get, when the flag had no bucket list (see the rollout
    /// endpoint's `otherVariant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_variant: Option<String>,
    /// Percentages, strictly increasing.
    pub steps: Vec<f64>,
    /// Seconds from step `i` to step `i + 1`.
    pub durations: Vec<i64>,
    /// The health check before each step, if any.
    pub guard: Option<Guard>,
    /// The Prometheus analysis guards, each judging every step before it is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<PrometheusGuard>,
    /// Active, paused, completed, aborted or failed.
    pub state: RampState,
    /// Index of the last applied step.
    pub current_step: usize,
    /// The rollout before the ramp, restored by `abort`.
    pub previous_percentage: f64,
    /// The exact share before the ramp (restored exactly; absent in ramps stored by older
    /// versions, which restore `previous_percentage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_share: Option<Share>,
    /// When the next step is due (active ramps).
    pub next_at: Option<i64>,
    /// When it started (unix seconds).
    pub started_at: i64,
    /// Who started it.
    pub started_by: String,
    /// Consecutive failed guard checks (the guard's budget aborts the ramp).
    pub guard_failures: u32,
    /// Why it was aborted or failed.
    pub abort_reason: Option<String>,
    /// Every step, pause, resume and abort, oldest first.
    pub history: Vec<RampEvent>,
    /// A stored definition that could not be read, kept for whoever investigates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_definition: Option<Value>,
    /// When the ramped flag was created: a flag deleted and created again under the same key is
    /// another flag, which this ramp must not touch (absent in ramps stored by older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_created_at: Option<i64>,
}

impl Ramp {
    fn record(&self, now: i64) -> Result<RampRecord, DomainError> {
        Ok(RampRecord {
            id: self.id,
            environment: self.environment.clone(),
            flag: self.flag.clone(),
            state: self.state.as_str().to_owned(),
            next_at: self.wake_at(),
            updated_at: now,
            revision: self.revision,
            definition: serde_json::to_value(self).map_err(DomainError::internal)?,
        })
    }

    /// Reads a stored ramp. One that does not decode or breaks an invariant comes back
    /// `Failed`, with the reason, so one bad row never hides the others.
    fn from_record(record: RampRecord) -> Ramp {
        let checked = serde_json::from_value::<Ramp>(record.definition.clone())
            .map_err(|error| format!("it does not decode: {error}"))
            .and_then(|ramp| ramp.check(&record).map(|()| ramp));
        match checked {
            Ok(mut ramp) => {
                ramp.id = record.id;
                ramp.revision = record.revision;
                ramp
            }
            Err(problem) => Ramp {
                id: record.id,
                revision: record.revision,
                environment: record.environment,
                flag: record.flag,
                variant: None,
                other_variant: None,
                steps: Vec::new(),
                durations: Vec::new(),
                guard: None,
                analysis: Vec::new(),
                state: RampState::Failed,
                current_step: 0,
                previous_percentage: 0.0,
                previous_share: None,
                next_at: None,
                started_at: record.updated_at,
                started_by: String::new(),
                guard_failures: 0,
                abort_reason: Some(format!("the stored ramp is invalid: {problem}")),
                history: Vec::new(),
                invalid_definition: Some(record.definition),
                flag_created_at: None,
            },
        }
    }

    /// The invariants `validate` and the state machine keep; checked again on every read,
    /// because the store may hold what an older version, a bug or a hand edit left.
    fn check(&self, record: &RampRecord) -> Result<(), String> {
        if self.environment != record.environment || self.flag != record.flag {
            return Err("its definition names another flag than its row".to_owned());
        }
        if record.state != self.state.as_str() {
            return Err(format!(
                "its row says {:?} but its definition {:?}",
                record.state,
                self.state.as_str()
            ));
        }
        if self.state == RampState::Failed {
            // What failed is kept as it was found; nothing runs it.
            return Ok(());
        }
        check_steps(&self.steps).map_err(|(message, path)| format!("{path}: {message}"))?;
        if self.durations.len() + 1 != self.steps.len() {
            return Err(format!(
                "{} steps but {} durations",
                self.steps.len(),
                self.durations.len()
            ));
        }
        if let Some(index) = self
            .durations
            .iter()
            .position(|d| !(1..=MAX_STEP_SECONDS).contains(d))
        {
            return Err(format!("durations[{index}] is out of range"));
        }
        if self.current_step >= self.steps.len() {
            return Err(format!("current step {} does not exist", self.current_step));
        }
        if let Some(guard) = &self.guard
            && (guard.failures == 0
                || guard.failures > MAX_GUARD_FAILURES
                || guard.timeout_ms == 0
                || u128::from(guard.timeout_ms) > MAX_GUARD_TIMEOUT.as_millis())
        {
            return Err("its guard is out of range".to_owned());
        }
        if self.analysis.len() > MAX_GUARDS {
            return Err("it has too many guards".to_owned());
        }
        for (index, guard) in self.analysis.iter().enumerate() {
            guard
                .check()
                .map_err(|problem| format!("analysis[{index}]: {problem}"))?;
        }
        if !(0.0..=100.0).contains(&self.previous_percentage) {
            return Err("its previous percentage is out of range".to_owned());
        }
        let open = matches!(self.state, RampState::Active | RampState::Paused);
        if open && self.current_step + 1 >= self.steps.len() {
            return Err("it is open but has no step left".to_owned());
        }
        if (self.state == RampState::Active) != self.next_at.is_some() {
            return Err("only an active ramp has a next step time".to_owned());
        }
        Ok(())
    }

    /// When the scheduler should next look at it: the next measurement while the next step's
    /// analysis runs (the step cannot be applied before it ends), else the next step.
    fn wake_at(&self) -> Option<i64> {
        let next = self.next_at?;
        let measuring = self.analysis.iter().filter_map(|g| g.run.next_at).min();
        Some(measuring.unwrap_or(next))
    }

    /// Schedules every analysis guard's measurements for the next step (an active ramp).
    fn schedule_analysis(&mut self, from: i64) {
        let (step, due) = (self.current_step + 1, self.next_at.unwrap_or(from));
        for guard in &mut self.analysis {
            guard.schedule(step, from, due);
        }
    }

    /// Whether every analysis guard has taken its measurements for the next step.
    fn analysed(&self) -> bool {
        self.analysis.iter().all(|g| g.run.next_at.is_none())
    }

    fn variants(&self) -> RolloutVariants {
        RolloutVariants {
            variant: self.variant.clone(),
            others: self.other_variant.clone(),
        }
    }

    fn event(
        &mut self,
        at: i64,
        event: &str,
        percentage: Option<f64>,
        actor: &str,
        message: Option<String>,
    ) {
        self.history.push(RampEvent {
            at,
            event: event.to_owned(),
            percentage,
            actor: actor.to_owned(),
            message,
        });
    }

    /// The API's view: the stored fields plus what people ask for.
    pub fn view(&self) -> Value {
        let mut view = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(guard) = &self.guard {
            view["guard"]["url"] = json!(redacted(&guard.url));
        }
        for (index, guard) in self.analysis.iter().enumerate() {
            let shown = &mut view["analysis"][index];
            shown["kind"] = json!("prometheus");
            shown["address"] = json!(redacted(&guard.address));
            if self.state != RampState::Active {
                shown["run"]["nextAt"] = Value::Null;
            }
        }
        // An aborted ramp that restored the rollout from before it says so in its `aborted`
        // event: that is where the flag is now. One that stopped and left the flag as someone
        // else set it (or could not restore it) does not know: null.
        view["currentPercentage"] = match self.state {
            RampState::Aborted => json!(
                self.history
                    .iter()
                    .rev()
                    .find(|e| e.event == "aborted")
                    .and_then(|e| e.percentage)
            ),
            _ => json!(self.steps.get(self.current_step)),
        };
        // A step waits for its analysis: when that ends after the step's time, say so.
        if self.state == RampState::Active
            && let Some(next) = self.next_at
        {
            let analysed = self
                .analysis
                .iter()
                .filter_map(|g| {
                    let left = g.count.saturating_sub(g.run.taken.saturating_add(1));
                    g.run.next_at.map(|at| {
                        at.saturating_add(g.interval_seconds.saturating_mul(i64::from(left)))
                    })
                })
                .max();
            view["nextAt"] = json!(analysed.map_or(next, |end| end.max(next)));
        }
        view["totalSteps"] = json!(self.steps.len());
        view["nextPercentage"] = match self.state {
            RampState::Active | RampState::Paused => json!(self.steps.get(self.current_step + 1)),
            _ => Value::Null,
        };
        view
    }
}

/// `POST .../ramp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartRequest {
    steps: Vec<f64>,
    /// The variant to roll out (default: a boolean flag's `true` variant).
    #[serde(default)]
    variant: Option<String>,
    /// What users outside the rollout get when the flag has no bucket list yet.
    #[serde(default)]
    other_variant: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    durations: Option<Vec<String>>,
    /// One guard (`kind`: `url`, the default, or `prometheus`).
    #[serde(default)]
    guard: Option<Value>,
    /// Several guards; all must pass.
    #[serde(default)]
    guards: Option<Vec<Value>>,
    #[serde(default)]
    message: Option<String>,
}

/// A ramp start request's URL guard: the health URL, checked before each step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardRequest {
    /// `url` (or absent).
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    url: String,
    /// Wider than the stored `u32` so an out-of-range number is `OutOfRange` naming the field.
    #[serde(default)]
    failures: Option<i64>,
    #[serde(default)]
    timeout: Option<String>,
}

/// A ramp start request's Prometheus analysis guard.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusGuardRequest {
    /// `prometheus`.
    #[serde(rename = "kind")]
    _kind: String,
    address: String,
    query: String,
    success: String,
    #[serde(default)]
    interval: Option<String>,
    /// Wider than the stored `u32` so an out-of-range number is `OutOfRange` naming the field.
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    failure_limit: Option<i64>,
    #[serde(default)]
    inconclusive: Option<InconclusivePolicy>,
    #[serde(default)]
    timeout: Option<String>,
}

/// A value outside its range (`Rejection::OutOfRange`), naming the field.
fn out_of_range(message: impl Into<String>, field: impl Into<String>) -> DomainError {
    DomainError::rejected(Rejection::OutOfRange, message).at(field)
}

/// Parses the time between two steps: 1 s to `MAX_STEP_SECONDS`.
fn seconds(text: &str, field: &str) -> Result<i64, DomainError> {
    let duration = match crate::units::parse_duration(text) {
        Ok(duration) => Some(duration),
        Err(DurationError::TooLarge(_)) => None,
        Err(error) => return Err(DomainError::bad_request(error.to_string()).at(field.to_owned())),
    };
    match duration.map(|d| i64::try_from(d.as_secs())) {
        Some(Ok(seconds)) if (1..=MAX_STEP_SECONDS).contains(&seconds) => Ok(seconds),
        _ => Err(out_of_range(
            format!(
                "{field} {text:?} must be between 1s and {}d; pause the ramp to hold a step longer",
                MAX_STEP_SECONDS / 86_400
            ),
            field,
        )),
    }
}

/// Checks a ramp's steps: 1 to `MAX_STEPS` percentages above 0 and at most 100, in 0.01 steps,
/// strictly increasing. `Err` is a message and the field.
fn check_steps(steps: &[f64]) -> Result<(), (String, String)> {
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err((
            format!("a ramp needs 1 to {MAX_STEPS} steps, found {}", steps.len()),
            "steps".to_owned(),
        ));
    }
    let mut previous = 0;
    for (index, step) in steps.iter().enumerate() {
        let share = Share::from_percentage(*step).ok().filter(|s| s.weight > 0);
        let Some(share) = share else {
            return Err((
                format!("step {step:?} must be at least 0.01 and at most 100, in steps of 0.01"),
                format!("steps[{index}]"),
            ));
        };
        if share.weight <= previous {
            return Err((
                "steps must be strictly increasing (a ramp only ever adds users)".to_owned(),
                format!("steps[{index}]"),
            ));
        }
        previous = share.weight;
    }
    Ok(())
}

/// A checked start request.
struct Plan {
    steps: Vec<f64>,
    durations: Vec<i64>,
    guard: Option<Guard>,
    /// Analysis guards, with their field in the request (`variant` is filled in at start).
    analysis: Vec<(String, PrometheusGuard)>,
}

/// Checks a start request: shape errors are `BadRequest`, values out of range `OutOfRange`.
fn validate(request: &StartRequest) -> Result<Plan, DomainError> {
    let steps = request.steps.clone();
    check_steps(&steps).map_err(|(message, field)| out_of_range(message, field))?;
    let durations = match (&request.interval, &request.durations) {
        (Some(_), Some(_)) => {
            return Err(DomainError::bad_request(
                "give interval or durations, not both",
            ));
        }
        (Some(interval), None) => vec![seconds(interval, "interval")?; steps.len() - 1],
        (None, Some(durations)) => {
            if durations.len() != steps.len() - 1 {
                return Err(DomainError::bad_request(format!(
                    "durations has {} entries; {} steps need {} (the time from each step to the next)",
                    durations.len(),
                    steps.len(),
                    steps.len() - 1
                ))
                .at("durations"));
            }
            durations
                .iter()
                .enumerate()
                .map(|(i, d)| seconds(d, &format!("durations[{i}]")))
                .collect::<Result<_, _>>()?
        }
        (None, None) if steps.len() == 1 => Vec::new(),
        (None, None) => {
            return Err(DomainError::bad_request(
                "give the time between steps: interval (e.g. \"30m\") or durations",
            )
            .at("interval"));
        }
    };
    let mut guard = None;
    let mut analysis = Vec::new();
    for (field, value) in guard_requests(request)? {
        if !value.is_object() {
            return Err(DomainError::bad_request(format!(
                "{field} must be an object such as {{\"kind\": \"prometheus\", \"address\": …}}"
            ))
            .at(field));
        }
        let kind = match value.get("kind") {
            None if value.get("address").is_some() || value.get("query").is_some() => {
                return Err(DomainError::bad_request(
                    "a guard without kind is a url guard: add \"kind\": \"prometheus\" for metric analysis",
                )
                .at(format!("{field}.kind")));
            }
            None => "url",
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => {
                return Err(
                    DomainError::bad_request("kind must be \"url\" or \"prometheus\"")
                        .at(format!("{field}.kind")),
                );
            }
        };
        match kind {
            "url" if guard.is_some() => {
                return Err(DomainError::bad_request(
                    "a ramp takes one url guard: put the checks behind one health URL, or use prometheus guards",
                )
                .at(field));
            }
            "url" => {
                let request: GuardRequest = parse_guard(value, &field)?;
                guard = Some(url_guard(&request, &field)?);
            }
            "prometheus" => {
                let request: PrometheusGuardRequest = parse_guard(value, &field)?;
                let checked = prometheus_guard(&request, &field)?;
                analysis.push((field, checked));
            }
            other => {
                return Err(DomainError::bad_request(format!(
                    "unknown guard kind {other:?}: use \"url\" (a health URL) or \"prometheus\" (metric analysis)"
                ))
                .at(format!("{field}.kind")));
            }
        }
    }
    Ok(Plan {
        steps,
        durations,
        guard,
        analysis,
    })
}

/// A start request's guards with their fields: `guard`, or `guards[i]`.
fn guard_requests(request: &StartRequest) -> Result<Vec<(String, Value)>, DomainError> {
    match (&request.guard, &request.guards) {
        (Some(_), Some(_)) => Err(DomainError::bad_request(
            "give guard (one) or guards (a list), not both",
        )
        .at("guards")),
        (Some(guard), None) => Ok(vec![("guard".to_owned(), guard.clone())]),
        (None, Some(guards)) if guards.len() > MAX_GUARDS => Err(out_of_range(
            format!(
                "a ramp may have at most {MAX_GUARDS} guards, found {}",
                guards.len()
            ),
            "guards",
        )),
        (None, Some(guards)) => Ok(guards
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("guards[{i}]"), g.clone()))
            .collect()),
        (None, None) => Ok(Vec::new()),
    }
}

/// Decodes a guard, a wrong field named by its path (`guards[1].count`).
fn parse_guard<T: serde::de::DeserializeOwned>(
    value: Value,
    field: &str,
) -> Result<T, DomainError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.path().to_string();
        let path = if inner == "." {
            field.to_owned()
        } else {
            format!("{field}.{inner}")
        };
        DomainError::bad_request(format!("{path}: {}", error.inner())).at(path)
    })
}

/// Checks a URL guard.
fn url_guard(guard: &GuardRequest, field: &str) -> Result<Guard, DomainError> {
    if !(guard.url.starts_with("http://") || guard.url.starts_with("https://")) {
        return Err(DomainError::bad_request(
                    "the guard URL must be http:// or https://: point it at your own health or metrics endpoint",
                )
                .at(format!("{field}.url")));
    }
    let parsed = reqwest::Url::parse(&guard.url);
    if !parsed.is_ok_and(|url| url.host_str().is_some_and(|host| !host.is_empty())) {
        return Err(DomainError::bad_request(format!(
            "the guard URL {:?} is not a URL with a host, e.g. http://127.0.0.1:9090/health",
            guard.url
        ))
        .at(format!("{field}.url")));
    }
    let timeout = match guard.timeout.as_deref().map(crate::units::parse_duration) {
        None => Duration::from_secs(5),
        Some(Ok(timeout)) => timeout,
        Some(Err(DurationError::TooLarge(_))) => Duration::MAX,
        Some(Err(error)) => {
            return Err(DomainError::bad_request(error.to_string()).at(format!("{field}.timeout")));
        }
    };
    if timeout < Duration::from_millis(1) || timeout > MAX_GUARD_TIMEOUT {
        return Err(out_of_range(
            format!(
                "{field}.timeout must be between 1ms and {}s",
                MAX_GUARD_TIMEOUT.as_secs()
            ),
            format!("{field}.timeout"),
        ));
    }
    let failures = guard.failures.unwrap_or(1);
    let Some(failures) = u32::try_from(failures)
        .ok()
        .filter(|f| (1..=MAX_GUARD_FAILURES).contains(f))
    else {
        return Err(out_of_range(
            format!("{field}.failures must be between 1 and {MAX_GUARD_FAILURES}"),
            format!("{field}.failures"),
        ));
    };
    Ok(Guard {
        url: guard.url.clone(),
        failures,
        // At most 60,000 (checked above).
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Checks a Prometheus analysis guard (its `variant` is filled in at start).
fn prometheus_guard(
    guard: &PrometheusGuardRequest,
    field: &str,
) -> Result<PrometheusGuard, DomainError> {
    analysis::check_address(&guard.address, &format!("{field}.address"))?;
    analysis::check_query(&guard.query, &format!("{field}.query"))?;
    analysis::check_success(&guard.success, &format!("{field}.success"))?;
    let timeout = analysis::check_timeout(guard.timeout.as_deref(), &format!("{field}.timeout"))?;
    let interval_field = format!("{field}.interval");
    let interval_seconds = match &guard.interval {
        None => 60,
        Some(text) => match crate::units::parse_duration(text) {
            Err(DurationError::TooLarge(_)) => i64::MAX,
            Err(error) => {
                return Err(DomainError::bad_request(error.to_string()).at(interval_field));
            }
            Ok(duration) => i64::try_from(duration.as_secs())
                .ok()
                .filter(|_| duration.subsec_nanos() == 0)
                .unwrap_or(0),
        },
    };
    if !(1..=MAX_ANALYSIS_INTERVAL).contains(&interval_seconds) {
        return Err(out_of_range(
            format!(
                "{interval_field} must be whole seconds from 1s to 24h, got {:?}",
                guard.interval.as_deref().unwrap_or_default()
            ),
            interval_field,
        ));
    }
    let count = guard.count.unwrap_or(3);
    let Some(count) = u32::try_from(count)
        .ok()
        .filter(|c| (1..=MAX_ANALYSIS_COUNT).contains(c))
    else {
        return Err(out_of_range(
            format!("{field}.count must be between 1 and {MAX_ANALYSIS_COUNT}"),
            format!("{field}.count"),
        ));
    };
    let limit = guard.failure_limit.unwrap_or(0);
    let Some(failure_limit) = u32::try_from(limit).ok().filter(|l| *l < count) else {
        return Err(out_of_range(
            format!(
                "{field}.failureLimit must be between 0 and count - 1 ({}): more failures than that abort the ramp, so a limit of count or more could never abort",
                count - 1
            ),
            format!("{field}.failureLimit"),
        ));
    };
    Ok(PrometheusGuard {
        address: guard.address.clone(),
        // Surrounding whitespace means nothing to PromQL (and YAML's `>` leaves a newline).
        query: guard.query.trim().to_owned(),
        variant: String::new(),
        success: guard.success.clone(),
        interval_seconds,
        count,
        failure_limit,
        inconclusive: guard.inconclusive.unwrap_or_default(),
        // At most 60,000 (checked above).
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        run: AnalysisRun::default(),
        measurements: Vec::new(),
        measurements_dropped: 0,
    })
}

/// `now + seconds`, or `OutOfRange` when the sum does not fit (only a clock gone wrong can do that).
fn later(now: i64, seconds: i64) -> Result<i64, DomainError> {
    now.checked_add(seconds)
        .ok_or_else(|| out_of_range("the next step's time is out of range", "interval"))
}

/// Runs the guard check: `Err` carries what failed (the status, or the error).
async fn check_guard(guard: &Guard, roots: &[reqwest::Certificate]) -> Result<(), String> {
    // Redirects are not followed: a guard must not become a way to reach other internal
    // services through this server, nor to return their answers.
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_millis(guard.timeout_ms))
        .redirect(reqwest::redirect::Policy::none());
    // https:// guards trust the public roots and `--guard-ca`.
    for root in roots {
        client = client.add_root_certificate(root.clone());
    }
    let client = client.build().map_err(|error| error.to_string())?;
    let shown = redacted(&guard.url);
    match client.get(&guard.url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) if response.status().is_redirection() => Err(format!(
            "{shown} answered {} (redirects are not followed: point the guard at the final URL)",
            response.status()
        )),
        Ok(mut response) => {
            let status = response.status();
            // Only a short excerpt is read, kept and shown, whatever the body's size.
            let mut bytes = Vec::new();
            while bytes.len() < GUARD_EXCERPT_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            bytes.truncate(GUARD_EXCERPT_BYTES);
            let excerpt: String = String::from_utf8_lossy(&bytes)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect::<String>()
                .trim()
                .to_owned();
            Err(format!(
                "{shown} answered {status}{}",
                if excerpt.is_empty() {
                    String::new()
                } else {
                    format!(": {excerpt}")
                }
            ))
        }
        Err(error) => {
            // reqwest's own message is terse; the root cause says what happened.
            let cause =
                std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                    .last()
                    .map_or_else(|| error.to_string(), ToString::to_string);
            Err(format!("{shown} failed: {}", redacted(&cause)))
        }
    }
}

/// How much of an unhealthy guard's answer is read and kept.
const GUARD_EXCERPT_BYTES: usize = 512;

fn by(actor: &str, message: String, at: i64) -> Attribution {
    Attribution {
        actor: actor.to_owned(),
        message: Some(message),
        at,
    }
}

async fn query(state: &Domain, query: RampQuery) -> Result<Vec<Ramp>, DomainError> {
    let records = blocking(state, move |store| Ok(store.ramps(&query)?)).await?;
    Ok(records.into_iter().map(Ramp::from_record).collect())
}

fn of_flag(environment: &str, flag: &str, open_only: bool) -> RampQuery {
    RampQuery {
        environment: Some(environment.to_owned()),
        flag: Some(flag.to_owned()),
        open_only,
        due_at: None,
    }
}

/// The open (active or paused) ramp of a flag.
pub async fn open_ramp(
    state: &Domain,
    environment: &str,
    flag: &str,
) -> Result<Option<Ramp>, DomainError> {
    Ok(query(state, of_flag(environment, flag, true))
        .await?
        .into_iter()
        .find(|ramp| matches!(ramp.state, RampState::Active | RampState::Paused)))
}

/// The latest ramp of a flag, open or finished.
pub async fn latest(
    state: &Domain,
    environment: &str,
    flag: &str,
) -> Result<Option<Ramp>, DomainError> {
    Ok(query(state, of_flag(environment, flag, false))
        .await?
        .into_iter()
        .next())
}

/// Every ramp of an environment, newest first (finished ones too).
pub async fn list(state: &Domain, environment: &str) -> Result<Vec<Ramp>, DomainError> {
    let env = environment.to_owned();
    blocking(state, move |store| {
        flags::environment_or_not_found(store, &env).map(drop)
    })
    .await?;
    query(
        state,
        RampQuery {
            environment: Some(environment.to_owned()),
            ..RampQuery::default()
        },
    )
    .await
}

/// Saves a ramp if nobody else saved it since it was read (compare-and-set on its revision;
/// `StoreError::RampConflict` otherwise: another replica's scheduler or an API call on another
/// replica got there first).
async fn save(state: &Domain, ramp: &mut Ramp, now: i64) -> Result<(), DomainError> {
    let record = ramp.record(now)?;
    let id = blocking(state, move |store| Ok(store.save_ramp(&record)?)).await?;
    ramp.revision = if ramp.id.is_some() {
        ramp.revision + 1
    } else {
        0
    };
    ramp.id = Some(id);
    Ok(())
}

/// Sets the flag's rollout through the rollout endpoint's code path. `Fence::Save` (a stored
/// ramp, as it will be after this change) makes the flag write and the ramp's save one
/// transaction with a compare-and-set on the ramp's revision: both land, or nothing does
/// (`RampConflict`); the ramp is then saved even when the flag already had the share.
async fn set_share(
    state: &Domain,
    ramp: &mut Ramp,
    share: Share,
    attribution: Attribution,
    fence: Fence,
    now: i64,
) -> Result<(), DomainError> {
    let (environment, flag) = (ramp.environment.clone(), ramp.flag.clone());
    let change = flags::RolloutChange {
        share,
        variants: ramp.variants(),
    };
    let created_at = ramp.flag_created_at;
    let record = match fence {
        Fence::Save => Some(ramp.record(now)?),
        Fence::None => None,
    };
    let saved = record.is_some();
    blocking(state, move |store| {
        // The key may now name another flag (deleted and created again): leave that one alone.
        if let (Some(expected), Some(current)) = (created_at, store.flag(&environment, &flag)?)
            && current.created_at != expected
        {
            return Err(DomainError::conflict(format!(
                "flag {flag:?} was deleted and created again since the ramp started; the ramp does not apply to the new flag"
            )));
        }
        // Ramp steps only move the rollout: the flag's warnings (if any) were accepted when it
        // was written.
        flags::rollout_fenced(
            store,
            &environment,
            &flag,
            &change,
            flags::WriteMode::default(),
            &attribution,
            record.as_ref(),
        )
        .map(|_| ())
    })
    .await?;
    if saved {
        ramp.revision += 1;
    }
    Ok(())
}

/// Whether [`set_share`] saves the ramp in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// Save the (stored) ramp with the flag write, compare-and-set on its revision.
    Save,
    /// Only write the flag (a ramp not stored yet).
    None,
}

/// A step's share (steps were checked when the ramp was started or read).
fn step_share(percentage: f64) -> Result<Share, DomainError> {
    Share::from_percentage(percentage).map_err(flags::rollout_error)
}

/// Starts a ramp: the first step is applied at once. The guard is checked before the ramp lock
/// is taken.
pub async fn start(
    state: &Domain,
    environment: &str,
    flag: &str,
    request: StartRequest,
    actor: &str,
) -> Result<Ramp, DomainError> {
    let Plan {
        steps,
        durations,
        guard,
        analysis,
    } = validate(&request)?;
    if let Some(guard) = &guard
        && let Err(failure) = check_guard(guard, state.guard_roots()).await
    {
        return Err(DomainError::conflict(format!(
            "the guard is unhealthy, so the ramp did not start: {failure}"
        ))
        .at(if request.guards.is_some() {
            "guards"
        } else {
            "guard.url"
        }));
    }
    let analysis = preflight(state, environment, flag, &request, analysis).await?;
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    if let Some(open) = open_ramp(state, environment, flag).await? {
        return Err(DomainError::conflict(format!(
            "flag {flag:?} already has a {} ramp (step {} of {}); abort it first",
            open.state.as_str(),
            open.current_step + 1,
            open.steps.len()
        )));
    }
    let (env, key) = (environment.to_owned(), flag.to_owned());
    let (environment_record, current) = blocking(state, move |store| {
        let environment = flags::environment_or_not_found(store, &env)?;
        let flag = store.flag(&env, &key)?.ok_or_else(|| {
            DomainError::not_found(format!(
                "flag {key:?} does not exist in environment {env:?}"
            ))
        })?;
        Ok((environment, flag))
    })
    .await?;
    let variants = RolloutVariants {
        variant: request.variant.clone(),
        others: request.other_variant.clone(),
    };
    let previous = current_rollout(&current.flag, &environment_record.evaluators, &variants)
        .map_err(flags::rollout_error)?;
    // A ramp only adds users: its first step may not be below where the flag is now.
    let first = step_share(steps[0])?;
    if u128::from(first.weight) * u128::from(previous.share.total)
        < u128::from(previous.share.weight) * u128::from(first.total)
    {
        // The lowest step that keeps everyone: the current share rounded up to 0.01 %.
        let lowest = (u128::from(previous.share.weight) * 10_000)
            .div_ceil(u128::from(previous.share.total.max(1)));
        return Err(out_of_range(
            format!(
                "the flag is rolled out to {}% now, so a ramp starting at {}% would remove users; start at {}% or above (or lower the rollout first)",
                previous.percentage,
                steps[0],
                lowest as f64 / 100.0
            ),
            "steps[0]",
        ));
    }
    let mut ramp = Ramp {
        id: None,
        revision: 0,
        environment: environment.to_owned(),
        flag: flag.to_owned(),
        variant: request.variant,
        other_variant: request.other_variant,
        steps,
        durations,
        guard,
        analysis,
        state: RampState::Active,
        current_step: 0,
        previous_percentage: previous.percentage,
        previous_share: Some(previous.share),
        next_at: None,
        started_at: now,
        started_by: actor.to_owned(),
        guard_failures: 0,
        abort_reason: None,
        history: Vec::new(),
        invalid_definition: None,
        flag_created_at: Some(current.created_at),
    };
    let first = ramp.steps[0];
    let note = request
        .message
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let first_share = step_share(first)?;
    let started = by(
        ACTOR,
        format!(
            "ramp started by {actor}{note}; step 1/{} → {first}%",
            ramp.steps.len()
        ),
        now,
    );
    set_share(state, &mut ramp, first_share, started, Fence::None, now).await?;
    ramp.event(
        now,
        "started",
        Some(first),
        actor,
        Some(format!("from {}%{note}", previous.percentage)),
    );
    if ramp.steps.len() == 1 {
        ramp.state = RampState::Completed;
        ramp.event(now, "completed", Some(first), ACTOR, None);
    } else {
        ramp.next_at = Some(later(now, ramp.durations[0])?);
        ramp.schedule_analysis(now);
    }
    save(state, &mut ramp, now).await?;
    Ok(ramp)
}

/// Before a ramp with analysis guards starts: fills in what `{{variant}}` stands for and takes
/// one measurement per guard (concurrently, without the ramp lock), recorded as evidence of step
/// 0. A guard failing now, or a Prometheus that cannot be asked (unreachable, refusing the
/// query), refuses the start; no samples is fine (a variant at 0 % often has none yet).
async fn preflight(
    state: &Domain,
    environment: &str,
    flag: &str,
    request: &StartRequest,
    analysis: Vec<(String, PrometheusGuard)>,
) -> Result<Vec<PrometheusGuard>, DomainError> {
    if analysis.is_empty() {
        return Ok(Vec::new());
    }
    let (env, key, requested) = (
        environment.to_owned(),
        flag.to_owned(),
        request.variant.clone(),
    );
    let variant = blocking(state, move |store| {
        flags::environment_or_not_found(store, &env)?;
        let current = store.flag(&env, &key)?.ok_or_else(|| {
            DomainError::not_found(format!(
                "flag {key:?} does not exist in environment {env:?}"
            ))
        })?;
        flag_core::rollout::rolled_out_variant(&current.flag, requested.as_deref())
            .map_err(flags::rollout_error)
    })
    .await?;
    let client = analysis::client(state)?;
    let now = (state.clock)();
    let mut guards = Vec::with_capacity(analysis.len());
    for (field, mut guard) in analysis {
        guard.variant.clone_from(&variant);
        guards.push((field, guard));
    }
    let measured = futures_util::future::join_all(
        guards
            .iter()
            .map(|(_, guard)| guard.measure(environment, flag, &client, now)),
    )
    .await;
    let mut checked = Vec::with_capacity(guards.len());
    for ((field, mut guard), measurement) in guards.into_iter().zip(measured) {
        if !measurement.answered {
            let error = measurement.error.unwrap_or_default();
            // Prometheus refusing the query is the query's fault; anything else the address's.
            let at = if error.starts_with("Prometheus refused the query") {
                "query"
            } else {
                "address"
            };
            return Err(DomainError::conflict(format!(
                "{field} cannot be measured, so the ramp did not start: {error} (try it with `flagctl ramp analyse`)"
            ))
            .at(format!("{field}.{at}")));
        }
        if measurement.verdict == Verdict::Failure {
            return Err(DomainError::conflict(format!(
                "{field} fails now, so the ramp did not start: `{}` returned {} and the success condition is `{}`",
                measurement.query,
                shown_values(&measurement.values),
                guard.success
            ))
            .at(format!("{field}.success")));
        }
        guard.keep(Evidence {
            step: 0,
            measurement,
        });
        checked.push(guard);
    }
    Ok(checked)
}

/// What `pause`, `resume` and `abort` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Hold the current step until resumed.
    Pause,
    /// Continue a paused ramp (the next step is due one interval from now).
    Resume,
    /// Stop and restore the rollout from before the ramp.
    Abort,
}

/// Pauses, resumes or aborts a flag's open ramp. Never waits for a guard check.
pub async fn control(
    state: &Domain,
    environment: &str,
    flag: &str,
    control: Control,
    actor: &str,
    message: Option<String>,
) -> Result<Ramp, DomainError> {
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    let mut ramp = open_ramp(state, environment, flag).await?.ok_or_else(|| {
        DomainError::not_found(format!("flag {flag:?} has no active or paused ramp"))
    })?;
    match (control, ramp.state) {
        (Control::Pause, RampState::Active) => {
            ramp.state = RampState::Paused;
            ramp.next_at = None;
            ramp.event(now, "paused", None, actor, message);
        }
        (Control::Resume, RampState::Paused) => {
            if let Some(changed) = changed_outside(state, &ramp, ramp.current_step).await? {
                return Err(DomainError::conflict(format!(
                    "{changed}; resuming would move users the ramp did not place. Abort the ramp (or set the rollout back) first"
                )));
            }
            // The interval restarts from now, and so does the next step's analysis.
            ramp.next_at = Some(later(now, ramp.durations[ramp.current_step])?);
            ramp.schedule_analysis(now);
            ramp.state = RampState::Active;
            ramp.event(now, "resumed", None, actor, message);
        }
        (Control::Abort, _) => {
            let reason = message.unwrap_or_else(|| "aborted".to_owned());
            if abort(state, &mut ramp, now, actor, &reason).await? {
                return Ok(ramp);
            }
        }
        (Control::Pause, _) => {
            return Err(DomainError::conflict(format!(
                "the ramp of {flag:?} is already paused"
            )));
        }
        (Control::Resume, _) => {
            return Err(DomainError::conflict(format!(
                "the ramp of {flag:?} is not paused"
            )));
        }
    }
    save(state, &mut ramp, now).await?;
    Ok(ramp)
}

/// Whether the flag's rollout is no longer at step `step` of the ramp: `Some(what happened)`.
async fn changed_outside(
    state: &Domain,
    ramp: &Ramp,
    step: usize,
) -> Result<Option<String>, DomainError> {
    let (environment, flag) = (ramp.environment.clone(), ramp.flag.clone());
    let variants = ramp.variants();
    let expected = step_share(ramp.steps[step])?;
    let percentage = ramp.steps[step];
    blocking(state, move |store| {
        let Some(current) = store.flag(&environment, &flag)? else {
            return Ok(Some(format!("flag {flag:?} no longer exists")));
        };
        let evaluators = flags::environment_or_not_found(store, &environment)?.evaluators;
        Ok(match current_rollout(&current.flag, &evaluators, &variants) {
            Ok(now) if u128::from(now.share.weight) * u128::from(expected.total)
                == u128::from(expected.weight) * u128::from(now.share.total) =>
            {
                None
            }
            Ok(now) => Some(format!(
                "the rollout was changed outside the ramp to {}% (the ramp is at {percentage}%)",
                now.percentage
            )),
            Err(error) => Some(format!(
                "the targeting was changed outside the ramp ({error})"
            )),
        })
    })
    .await
}

/// Marks the ramp aborted without touching the flag (not saved): for a flag someone else has
/// taken over, deleted or re-created.
fn stop(ramp: &mut Ramp, now: i64, reason: &str) {
    ramp.state = RampState::Aborted;
    ramp.next_at = None;
    ramp.abort_reason = Some(reason.to_owned());
    ramp.event(now, "aborted", None, ACTOR, Some(reason.to_owned()));
}

/// Closes the open ramps of a deleted flag (or of every flag of a deleted environment), leaving
/// whatever has the key now alone.
pub async fn close_deleted(state: &Domain, environment: &str, flag: Option<&str>) {
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    let query = RampQuery {
        environment: Some(environment.to_owned()),
        flag: flag.map(str::to_owned),
        open_only: true,
        due_at: None,
    };
    let open = match self::query(state, query).await {
        Ok(open) => open,
        Err(error) => {
            tracing::error!(environment, %error, "cannot close the ramps of a deleted flag");
            return;
        }
    };
    for mut ramp in open
        .into_iter()
        .filter(|r| matches!(r.state, RampState::Active | RampState::Paused))
    {
        let reason = match flag {
            Some(_) => "the flag was deleted",
            None => "the environment was deleted",
        };
        stop(&mut ramp, now, reason);
        if let Err(error) = save(state, &mut ramp, now).await {
            tracing::error!(flag = ramp.flag, %error, "cannot close a ramp");
        }
    }
}

/// Restores the pre-ramp rollout and marks the ramp aborted. Returns whether the ramp was saved
/// (with the restore, in one transaction); when the restore cannot be made (the flag was deleted
/// or changed beyond what a rollout can set) the ramp is marked aborted, not saved, and the
/// event says so. `RampConflict` when someone else saved the ramp since it was read: nothing
/// changed.
async fn abort(
    state: &Domain,
    ramp: &mut Ramp,
    now: i64,
    actor: &str,
    reason: &str,
) -> Result<bool, DomainError> {
    let previous = ramp.previous_percentage;
    let mut aborted = ramp.clone();
    aborted.state = RampState::Aborted;
    aborted.next_at = None;
    aborted.abort_reason = Some(reason.to_owned());
    let mut restored = aborted.clone();
    restored.event(
        now,
        "aborted",
        Some(previous),
        actor,
        Some(format!("{reason}; restored to {previous}%")),
    );
    let share = match ramp.previous_share {
        Some(share) => Ok(share),
        None => step_share(previous),
    };
    let message = format!("ramp aborted: {reason}; restored to {previous}%");
    let result = match share {
        Ok(share) => {
            set_share(
                state,
                &mut restored,
                share,
                by(actor, message, now),
                Fence::Save,
                now,
            )
            .await
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            *ramp = restored;
            Ok(true)
        }
        Err(error @ DomainError::Store(StoreError::RampConflict { .. })) => Err(error),
        Err(error) => {
            aborted.event(
                now,
                "aborted",
                None,
                actor,
                Some(format!("{reason}; could not restore {previous}%: {error}")),
            );
            *ramp = aborted;
            Ok(false)
        }
    }
}

/// Applies every step due at `state.clock()`; returns how many ramps moved. A step that fell due
/// while the server was down is applied once, jumping to the step due now.
///
/// Ramps without a guard are applied first. Each guarded ramp is then checked on its own,
/// concurrently and without the ramp lock, and applies its result as soon as it has it, so a
/// slow guard delays only its own ramp; a ramp whose check is still running (from an earlier
/// tick) is skipped. Under the lock every ramp is read again and moved only if it is still
/// active and due (one paused or aborted meanwhile is left alone). A stored ramp that is invalid
/// is marked `failed` and the others go on. `Err` only when the due ramps cannot be read.
pub async fn tick(state: &Domain) -> Result<usize, DomainError> {
    let now = (state.clock)();
    let due = query(
        state,
        RampQuery {
            due_at: Some(now),
            open_only: true,
            ..RampQuery::default()
        },
    )
    .await?;
    let (guarded, plain): (Vec<Ramp>, Vec<Ramp>) = due.into_iter().partition(|ramp| {
        ramp.state == RampState::Active && (ramp.guard.is_some() || !ramp.analysis.is_empty())
    });
    let mut moved = 0;
    for ramp in plain {
        moved += apply_due(state, ramp, None).await;
    }
    let checks = guarded.into_iter().filter_map(|ramp| {
        let claim = state.guard_checks.claim(ramp.id?)?;
        Some(async move {
            let _claim = claim;
            let checks = run_checks(state, &ramp, now).await;
            apply_due(state, ramp, Some(checks)).await
        })
    });
    moved += futures_util::future::join_all(checks)
        .await
        .into_iter()
        .sum::<usize>();
    Ok(moved)
}

/// What a due ramp's guards found, outside the ramp lock.
#[derive(Debug, Default)]
struct Checks {
    /// The URL guard's result, when the step is due and it was checked.
    url: Option<Result<(), String>>,
    /// The analysis guards' measurements that were due, by guard index.
    measurements: Vec<(usize, Measurement)>,
}

/// Takes the measurements due at `now` (concurrently), and checks the URL guard when the step is
/// due and its analysis ends with them.
async fn run_checks(state: &Domain, ramp: &Ramp, now: i64) -> Checks {
    let due: Vec<usize> = (0..ramp.analysis.len())
        .filter(|&i| ramp.analysis[i].run.next_at.is_some_and(|at| at <= now))
        .collect();
    let measurements = match analysis::client(state) {
        Ok(client) => {
            let client = &client;
            futures_util::future::join_all(due.iter().map(|&i| async move {
                let guard = &ramp.analysis[i];
                (
                    i,
                    guard
                        .measure(&ramp.environment, &ramp.flag, client, now)
                        .await,
                )
            }))
            .await
        }
        Err(error) => due
            .iter()
            .map(|&i| {
                let measurement = Measurement {
                    at: now,
                    query: ramp.analysis[i].query.clone(),
                    values: Vec::new(),
                    samples: None,
                    verdict: Verdict::Inconclusive,
                    error: Some(format!("no HTTP client: {error}")),
                    answered: false,
                };
                (i, measurement)
            })
            .collect(),
    };
    let step_due = ramp.next_at.is_some_and(|at| at <= now);
    let analysed = ramp.analysis.iter().enumerate().all(|(i, guard)| {
        guard.run.next_at.is_none()
            || (due.contains(&i) && guard.run.taken.saturating_add(1) >= guard.count)
    });
    let url = match &ramp.guard {
        Some(guard) if step_due && analysed => Some(check_guard(guard, state.guard_roots()).await),
        _ => None,
    };
    Checks { url, measurements }
}

/// Under the ramp lock: moves a due ramp, as it is now, with what its guards found (1 if it
/// moved or recorded measurements).
async fn apply_due(state: &Domain, checked: Ramp, checks: Option<Checks>) -> usize {
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    if checked.state == RampState::Failed {
        fail(state, checked, now).await;
        return 0;
    }
    // Read it again: it may have been paused, aborted or resumed while its guard was checked.
    let current = match open_ramp(state, &checked.environment, &checked.flag).await {
        Ok(current) => current,
        Err(error) => {
            tracing::error!(flag = checked.flag, %error, "cannot read a ramp");
            return 0;
        }
    };
    let Some(mut ramp) = current.filter(|r| {
        r.id == checked.id
            && r.revision == checked.revision
            && r.state == RampState::Active
            && r.next_at == checked.next_at
            && r.current_step == checked.current_step
    }) else {
        return 0;
    };
    // With several replicas two schedulers may briefly both believe they lead: whatever a step
    // writes lands with a compare-and-set on the ramp's revision (`Fence::Save`), so the one
    // that read an outdated ramp changes nothing.
    let saved = match advance(state, &mut ramp, now, checks.unwrap_or_default()).await {
        Ok(saved) => saved,
        Err(DomainError::Store(StoreError::RampConflict { .. })) => {
            tracing::info!(
                flag = ramp.flag,
                "the ramp was changed elsewhere meanwhile (another replica); leaving it"
            );
            return 0;
        }
        Err(error) => {
            tracing::error!(flag = ramp.flag, %error, "ramp step failed");
            false
        }
    };
    if !saved {
        match save(state, &mut ramp, now).await {
            Ok(()) => {}
            Err(DomainError::Store(StoreError::RampConflict { .. })) => {
                tracing::info!(
                    flag = ramp.flag,
                    "the ramp was changed elsewhere meanwhile; leaving it"
                );
                return 0;
            }
            Err(error) => tracing::error!(flag = ramp.flag, %error, "cannot save a ramp"),
        }
    }
    1
}

/// The ramps whose guard is being checked, so overlapping ticks never check one twice.
#[derive(Debug, Default)]
pub struct GuardChecks(std::sync::Mutex<std::collections::HashSet<i64>>);

/// A ramp's claim on its guard check; released when dropped.
#[derive(Debug)]
struct GuardClaim<'a> {
    checks: &'a GuardChecks,
    id: i64,
}

impl GuardChecks {
    fn ids(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        // The set stays consistent whatever panicked while holding it (insert and remove only).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims ramp `id`, unless its check is already running.
    fn claim(&self, id: i64) -> Option<GuardClaim<'_>> {
        // `then`, not `then_some`: a claim built eagerly and dropped would release the check
        // that is running (and relock the set while it is locked).
        let claimed = self.ids().insert(id);
        claimed.then(|| GuardClaim { checks: self, id })
    }
}

impl Drop for GuardClaim<'_> {
    fn drop(&mut self) {
        self.checks.ids().remove(&self.id);
    }
}

/// Marks an invalid stored ramp `failed` (the flag is left as it is).
async fn fail(state: &Domain, mut ramp: Ramp, now: i64) {
    let reason = ramp.abort_reason.clone().unwrap_or_default();
    tracing::error!(
        environment = ramp.environment,
        flag = ramp.flag,
        reason,
        "stored ramp is invalid; marked failed"
    );
    state.metrics.invalid_ramp();
    let (environment, flag) = (ramp.environment.clone(), ramp.flag.clone());
    let details = json!({"ramp": ramp.id, "reason": reason, "definition": ramp.invalid_definition});
    let audited = by(ACTOR, format!("ramp marked failed: {reason}"), now);
    if let Err(error) = blocking(state, move |store| {
        Ok(store.record_event(
            &environment,
            Some(&flag),
            crate::store::Operation::RampFailed,
            &details,
            &audited,
        )?)
    })
    .await
    {
        tracing::error!(%error, "cannot record a failed ramp in the audit log");
    }
    ramp.event(now, "failed", None, ACTOR, Some(reason));
    if let Err(error) = save(state, &mut ramp, now).await {
        tracing::error!(flag = ramp.flag, %error, "cannot mark a ramp failed");
    }
}

/// Moves a due ramp: a guard failure (retry or abort), a stop when the rollout was changed
/// outside the ramp, or the next step. Returns whether the ramp was saved (a step, or an abort
/// that restored the rollout: saved with the flag write, in one transaction); otherwise the
/// caller saves it. `RampConflict` when the ramp was saved elsewhere since it was read.
async fn advance(
    state: &Domain,
    ramp: &mut Ramp,
    now: i64,
    checks: Checks,
) -> Result<bool, DomainError> {
    let Some(mut due_at) = ramp.next_at else {
        return Ok(false);
    };
    match judge(state, ramp, now, checks.measurements) {
        Judgement::Go => {}
        Judgement::Abort(reason) => return abort(state, ramp, now, ACTOR, &reason).await,
        Judgement::Pause(reason) => {
            ramp.state = RampState::Paused;
            ramp.next_at = None;
            ramp.event(now, "paused", None, ACTOR, Some(reason));
            return Ok(false);
        }
    }
    // Not due yet, or its analysis still runs: the measurements are saved, the step waits. A
    // guarded step whose URL guard was not checked (the clock moved on since) waits a tick.
    if due_at > now || !ramp.analysed() || (ramp.guard.is_some() && checks.url.is_none()) {
        return Ok(false);
    }
    if let (Some(guard), Some(result)) = (ramp.guard.clone(), checks.url) {
        match result {
            Ok(()) => ramp.guard_failures = 0,
            Err(failure) => {
                ramp.guard_failures = ramp.guard_failures.saturating_add(1);
                ramp.event(now, "guard_failed", None, ACTOR, Some(failure.clone()));
                if ramp.guard_failures >= guard.failures {
                    let reason = format!(
                        "guard failed {} time(s) in a row: {failure}",
                        ramp.guard_failures
                    );
                    return abort(state, ramp, now, ACTOR, &reason).await;
                }
                let retry = ramp.durations[ramp.current_step].min(GUARD_RETRY_SECONDS);
                ramp.next_at = Some(later(now, retry)?);
                return Ok(false);
            }
        }
    }
    // Someone changed the rollout outside the ramp (a PATCH, a document apply): the next step
    // could take users away. Stop, and leave the flag as they set it.
    match changed_outside(state, ramp, ramp.current_step).await {
        Ok(None) => {}
        Ok(Some(changed)) => {
            stop(
                ramp,
                now,
                &format!("{changed}; the ramp stopped and left the flag as it is"),
            );
            return Ok(false);
        }
        Err(error) => {
            let reason = format!("could not read the flag: {error}");
            return abort(state, ramp, now, ACTOR, &reason).await;
        }
    }
    // Jump to the step due now: after downtime, skip the steps whose time has passed. Not with
    // analysis: each step is judged before it is applied, and the next is due one duration after
    // it was (an analysis that ran late delays what follows).
    let last = ramp.steps.len() - 1;
    let mut step = ramp.current_step + 1;
    if !ramp.analysis.is_empty() {
        due_at = due_at.max(
            ramp.analysis
                .iter()
                .filter_map(|g| g.measurements.last())
                .map(|e| e.measurement.at)
                .max()
                .unwrap_or(due_at),
        );
    }
    while step < last && ramp.analysis.is_empty() {
        match due_at.checked_add(ramp.durations[step]) {
            Some(next) if next <= now => {
                due_at = next;
                step += 1;
            }
            _ => break,
        }
    }
    let skipped: Vec<String> = ramp.steps[ramp.current_step + 1..step]
        .iter()
        .map(|p| format!("{p}%"))
        .collect();
    let percentage = ramp.steps[step];
    let mut message = format!(
        "ramp step {}/{} → {percentage}%",
        step + 1,
        ramp.steps.len()
    );
    if !skipped.is_empty() {
        message.push_str(&format!(
            " (caught up; skipped {}: due while no scheduler ran)",
            skipped.join(", ")
        ));
    }
    // The ramp as it is after the step, saved with the flag write in one transaction.
    let mut next = ramp.clone();
    next.current_step = step;
    next.event(now, "step", Some(percentage), ACTOR, Some(message.clone()));
    if step == last {
        next.state = RampState::Completed;
        next.next_at = None;
        next.event(now, "completed", Some(percentage), ACTOR, None);
    } else {
        next.next_at = Some(later(due_at, ramp.durations[step])?);
        next.schedule_analysis(now);
    }
    let applied = match step_share(percentage) {
        Ok(share) => {
            set_share(
                state,
                &mut next,
                share,
                by(ACTOR, message, now),
                Fence::Save,
                now,
            )
            .await
        }
        Err(error) => Err(error),
    };
    match applied {
        Ok(()) => {
            *ramp = next;
            Ok(true)
        }
        Err(error @ DomainError::Store(StoreError::RampConflict { .. })) => Err(error),
        Err(error) => {
            // The flag was deleted or edited beyond what a rollout can change: stop safely.
            let reason = format!("could not apply step {}: {error}", step + 1);
            abort(state, ramp, now, ACTOR, &reason).await
        }
    }
}

/// What a ramp's new measurements decide.
#[derive(Debug)]
enum Judgement {
    /// Nothing stops it.
    Go,
    /// An inconclusive measurement with the `pause` policy.
    Pause(String),
    /// Too many failures, or an inconclusive measurement with the `abort` policy.
    Abort(String),
}

impl Judgement {
    /// Adds an abort reason: every guard that aborts is named.
    fn abort(self, reason: String) -> Judgement {
        match self {
            Judgement::Abort(earlier) => Judgement::Abort(format!("{earlier}; and {reason}")),
            _ => Judgement::Abort(reason),
        }
    }
}

/// Records the measurements with their guards (evidence, run counts, metrics) and decides.
fn judge(
    state: &Domain,
    ramp: &mut Ramp,
    now: i64,
    measurements: Vec<(usize, Measurement)>,
) -> Judgement {
    let mut judgement = Judgement::Go;
    let (environment, flag) = (ramp.environment.clone(), ramp.flag.clone());
    let target = ramp.current_step + 1;
    for (index, measurement) in measurements {
        let Some(guard) = ramp.analysis.get_mut(index) else {
            continue;
        };
        let value = Condition::parse(&guard.success)
            .ok()
            .and_then(|c| measurement.deciding_value(&c));
        state.metrics.ramp_analysis(
            measurement.verdict.as_str(),
            &environment,
            &flag,
            index,
            value,
        );
        let run = &mut guard.run;
        run.taken = run.taken.saturating_add(1);
        let verdict = measurement.verdict;
        if verdict == Verdict::Failure {
            run.failures = run.failures.saturating_add(1);
        }
        run.next_at = (run.taken < guard.count).then(|| now.saturating_add(guard.interval_seconds));
        let inconclusive = (verdict == Verdict::Inconclusive).then(|| {
            format!(
                "analysis[{index}] was inconclusive before step {} (`{}`: {})",
                target + 1,
                measurement.query,
                measurement.error.as_deref().unwrap_or("no samples")
            )
        });
        guard.keep(Evidence {
            step: target,
            measurement,
        });
        if guard.run.failures > guard.failure_limit {
            let failing: Vec<String> = guard
                .measurements
                .iter()
                .filter(|e| e.step == target && e.measurement.verdict == Verdict::Failure)
                .map(|e| shown_values(&e.measurement.values))
                .collect();
            let query = guard
                .measurements
                .last()
                .map_or_else(|| guard.query.clone(), |e| e.measurement.query.clone());
            let reason = format!(
                "analysis[{index}] failed {} of the {} measurement(s) taken so far (count {}) before step {}, more than its failureLimit {}: `{query}` returned {} where `{}` must hold",
                guard.run.failures,
                guard.run.taken,
                guard.count,
                target + 1,
                guard.failure_limit,
                failing.join("; "),
                guard.success
            );
            judgement = judgement.abort(reason);
            continue;
        }
        match (inconclusive, guard.inconclusive) {
            (Some(reason), InconclusivePolicy::Abort) => {
                judgement = judgement.abort(format!("{reason}; its policy is to abort"));
            }
            (Some(reason), InconclusivePolicy::Pause)
                if !matches!(judgement, Judgement::Abort(_)) =>
            {
                judgement = Judgement::Pause(format!(
                    "{reason}; its policy is to pause: resume to measure again, or abort"
                ));
            }
            _ => {}
        }
    }
    judgement
}

/// Whether the scheduler is running, for `/readyz`.
#[derive(Debug, Default)]
pub struct SchedulerHealth(AtomicU8);

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const RESTARTING: u8 = 2;

impl SchedulerHealth {
    /// `Err` with why when the scheduler was started and is not running now. A state that never
    /// started one (a router under test) is not reported.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.0.load(Ordering::Acquire) {
            RESTARTING => Err("the ramp scheduler failed and is restarting"),
            _ => Ok(()),
        }
    }

    fn set(&self, value: u8) {
        self.0.store(value, Ordering::Release);
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    /// How often `tick` runs.
    pub tick: Duration,
    /// How long to wait before restarting a scheduler that failed.
    pub restart_after: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            tick: Duration::from_secs(1),
            restart_after: Duration::from_secs(1),
        }
    }
}

/// Runs the scheduler until `stop`, supervised: when `tick` fails or panics, the failure is
/// logged and counted (`flagd_ramp_scheduler_restarts_total`), `/readyz` reports it, and the
/// scheduler starts again after `settings.restart_after`.
pub async fn run_scheduler(state: Domain, stop: CancellationToken, settings: SchedulerSettings) {
    loop {
        state.scheduler.set(RUNNING);
        let worker = tokio::spawn(schedule(state.clone(), stop.clone(), settings.tick));
        let outcome = tokio::select! {
            outcome = worker => outcome,
            () = stop.cancelled() => break,
        };
        match outcome {
            Ok(Ok(())) => break,
            Ok(Err(error)) => tracing::error!(%error, "ramp scheduler failed; restarting it"),
            Err(panic) => tracing::error!(%panic, "ramp scheduler panicked; restarting it"),
        }
        state.scheduler.set(RESTARTING);
        state.metrics.ramp_scheduler_restart();
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(settings.restart_after) => {}
        }
    }
    state.scheduler.set(NOT_STARTED);
}

async fn schedule(
    state: Domain,
    stop: CancellationToken,
    every: Duration,
) -> Result<(), DomainError> {
    // Each tick runs as a task of its own, so a tick waiting on a slow guard never holds up the
    // next one (which skips that ramp: its check is claimed). A failed or panicked tick ends the
    // loop, and the supervisor restarts it.
    const MAX_RUNNING_TICKS: usize = 8;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                // With several replicas, only the leader applies steps (and a step is claimed
                // by compare-and-set, should two briefly both lead).
                if running.len() < MAX_RUNNING_TICKS && state.is_leader() {
                    let state = state.clone();
                    running.spawn(async move { tick(&state).await });
                }
            }
            Some(done) = running.join_next() => match done {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error),
                Err(panic) => {
                    return Err(DomainError::internal(format!("a ramp tick panicked: {panic}")));
                }
            },
        }
    }
}
