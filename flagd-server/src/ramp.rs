//! Progressive rollouts ("ramps"): raise one flag's rollout through steps at intervals,
//! optionally guarded by a health URL.
//!
//! Every step goes through `service::rollout`, the code path of the rollout endpoint, so it is an
//! ordinary change: validated, audited (actor `ramp`), versioned and streamed. The scheduler is
//! `tick`: it applies what is due at `state.clock()`. The server calls it every second; tests
//! call it with a clock of their own and never sleep.

use std::time::Duration;

use flag_core::rollout::current_rollout;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::service::{self, blocking};
use crate::state::AppState;
use crate::store::{Attribution, RampQuery, RampRecord};

/// The actor recorded for steps the scheduler applies.
pub const ACTOR: &str = "ramp";
/// The most steps a ramp may have.
const MAX_STEPS: usize = 50;
/// After a failed guard check that does not yet abort, retry after at most this long.
const GUARD_RETRY_SECONDS: i64 = 30;

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
}

impl RampState {
    fn as_str(self) -> &'static str {
        match self {
            RampState::Active => "active",
            RampState::Paused => "paused",
            RampState::Completed => "completed",
            RampState::Aborted => "aborted",
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
    pub environment: String,
    pub flag: String,
    /// Percentages, strictly increasing.
    pub steps: Vec<f64>,
    /// Seconds from step `i` to step `i + 1`.
    pub durations: Vec<i64>,
    pub guard: Option<Guard>,
    pub state: RampState,
    /// Index of the last applied step.
    pub current_step: usize,
    /// The rollout before the ramp, restored by `abort`.
    pub previous_percentage: f64,
    /// When the next step is due (active ramps).
    pub next_at: Option<i64>,
    pub started_at: i64,
    pub started_by: String,
    pub guard_failures: u32,
    pub abort_reason: Option<String>,
    pub history: Vec<RampEvent>,
}

impl Ramp {
    fn record(&self, now: i64) -> Result<RampRecord, ApiError> {
        Ok(RampRecord {
            id: self.id,
            environment: self.environment.clone(),
            flag: self.flag.clone(),
            state: self.state.as_str().to_owned(),
            next_at: self.next_at,
            updated_at: now,
            definition: serde_json::to_value(self).map_err(ApiError::internal)?,
        })
    }

    fn from_record(record: RampRecord) -> Result<Ramp, ApiError> {
        let mut ramp: Ramp =
            serde_json::from_value(record.definition).map_err(ApiError::internal)?;
        ramp.id = record.id;
        Ok(ramp)
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
        // An aborted ramp restored the rollout from before it: that is where the flag is now.
        view["currentPercentage"] = match self.state {
            RampState::Aborted => json!(self.previous_percentage),
            _ => json!(self.steps.get(self.current_step)),
        };
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
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    durations: Option<Vec<String>>,
    #[serde(default)]
    guard: Option<GuardRequest>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRequest {
    url: String,
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    timeout: Option<String>,
}

fn seconds(text: &str, field: &str) -> Result<i64, ApiError> {
    let duration = crate::config::parse_duration(text)
        .map_err(|message| ApiError::bad_request(message).at(field.to_owned()))?;
    let seconds = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
    if seconds < 1 {
        return Err(
            ApiError::bad_request(format!("{field} must be at least 1s")).at(field.to_owned()),
        );
    }
    Ok(seconds)
}

/// A checked start request.
struct Plan {
    steps: Vec<f64>,
    durations: Vec<i64>,
    guard: Option<Guard>,
}

/// Checks a start request.
fn validate(request: &StartRequest) -> Result<Plan, ApiError> {
    let steps = request.steps.clone();
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(
            ApiError::bad_request(format!("a ramp needs 1 to {MAX_STEPS} steps")).at("steps"),
        );
    }
    for (index, step) in steps.iter().enumerate() {
        let scaled = step * 100.0;
        if !step.is_finite()
            || *step <= 0.0
            || *step > 100.0
            || (scaled - scaled.round()).abs() > 1e-6
        {
            return Err(ApiError::bad_request(format!(
                "step {step} must be above 0 and at most 100, in steps of 0.01"
            ))
            .at(format!("steps[{index}]")));
        }
        if index > 0 && *step <= steps[index - 1] {
            return Err(ApiError::bad_request(
                "steps must be strictly increasing (a ramp only ever adds users)",
            )
            .at(format!("steps[{index}]")));
        }
    }
    let durations = match (&request.interval, &request.durations) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give interval or durations, not both",
            ));
        }
        (Some(interval), None) => vec![seconds(interval, "interval")?; steps.len() - 1],
        (None, Some(durations)) => {
            if durations.len() != steps.len() - 1 {
                return Err(ApiError::bad_request(format!(
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
            return Err(ApiError::bad_request(
                "give the time between steps: interval (e.g. \"30m\") or durations",
            )
            .at("interval"));
        }
    };
    let guard = match &request.guard {
        None => None,
        Some(guard) => {
            if !guard.url.starts_with("http://") {
                return Err(ApiError::bad_request(
                    "the guard URL must be http:// (this build has no TLS client): point it at your own health or metrics endpoint",
                )
                .at("guard.url"));
            }
            let timeout = match &guard.timeout {
                Some(text) => crate::config::parse_duration(text)
                    .map_err(|m| ApiError::bad_request(m).at("guard.timeout"))?,
                None => Duration::from_secs(5),
            };
            Some(Guard {
                url: guard.url.clone(),
                failures: guard.failures.unwrap_or(1).max(1),
                timeout_ms: u64::try_from(timeout.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            })
        }
    };
    Ok(Plan {
        steps,
        durations,
        guard,
    })
}

/// Runs the guard check: `Err` carries what failed (the status, or the error).
async fn check_guard(guard: &Guard) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(guard.timeout_ms))
        .build()
        .map_err(|error| error.to_string())?;
    match client.get(&guard.url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => {
            let status = response.status();
            let body: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Err(format!(
                "{} answered {status}{}",
                guard.url,
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                }
            ))
        }
        Err(error) => {
            let mut cause: &dyn std::error::Error = &error;
            while let Some(source) = cause.source() {
                cause = source;
            }
            Err(format!("{} failed: {cause}", guard.url))
        }
    }
}

fn by(actor: &str, message: String, at: i64) -> Attribution {
    Attribution {
        actor: actor.to_owned(),
        message: Some(message),
        at,
    }
}

async fn query(state: &AppState, query: RampQuery) -> Result<Vec<Ramp>, ApiError> {
    let records = blocking(state, move |store| Ok(store.ramps(&query)?)).await?;
    records.into_iter().map(Ramp::from_record).collect()
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
    state: &AppState,
    environment: &str,
    flag: &str,
) -> Result<Option<Ramp>, ApiError> {
    Ok(query(state, of_flag(environment, flag, true))
        .await?
        .into_iter()
        .next())
}

/// The latest ramp of a flag, open or finished.
pub async fn latest(
    state: &AppState,
    environment: &str,
    flag: &str,
) -> Result<Option<Ramp>, ApiError> {
    Ok(query(state, of_flag(environment, flag, false))
        .await?
        .into_iter()
        .next())
}

/// Every ramp of an environment, newest first (finished ones too).
pub async fn list(state: &AppState, environment: &str) -> Result<Vec<Ramp>, ApiError> {
    query(
        state,
        RampQuery {
            environment: Some(environment.to_owned()),
            ..RampQuery::default()
        },
    )
    .await
}

async fn save(state: &AppState, ramp: &mut Ramp, now: i64) -> Result<(), ApiError> {
    let record = ramp.record(now)?;
    let id = blocking(state, move |store| Ok(store.save_ramp(&record)?)).await?;
    ramp.id = Some(id);
    Ok(())
}

/// Sets the flag's rollout through the rollout endpoint's code path.
async fn set_percentage(
    state: &AppState,
    ramp: &Ramp,
    percentage: f64,
    attribution: Attribution,
) -> Result<(), ApiError> {
    let (environment, flag) = (ramp.environment.clone(), ramp.flag.clone());
    blocking(state, move |store| {
        service::rollout(
            store,
            &environment,
            &flag,
            percentage,
            None,
            None,
            &attribution,
        )
        .map(|_| ())
    })
    .await
}

/// Starts a ramp: the first step is applied at once.
pub async fn start(
    state: &AppState,
    environment: &str,
    flag: &str,
    request: StartRequest,
    actor: &str,
) -> Result<Ramp, ApiError> {
    let Plan {
        steps,
        durations,
        guard,
    } = validate(&request)?;
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    if let Some(open) = open_ramp(state, environment, flag).await? {
        return Err(ApiError::conflict(format!(
            "flag {flag:?} already has a {} ramp (step {} of {}); abort it first",
            open.state.as_str(),
            open.current_step + 1,
            open.steps.len()
        )));
    }
    let (env, key) = (environment.to_owned(), flag.to_owned());
    let current = blocking(state, move |store| {
        service::environment_or_404(store, &env)?;
        store.flag(&env, &key)?.ok_or_else(|| {
            ApiError::not_found(format!(
                "flag {key:?} does not exist in environment {env:?}"
            ))
        })
    })
    .await?;
    let previous = current_rollout(&current.flag, None)
        .map_err(|error| ApiError::unprocessable("rollout", error.to_string()))?
        .percentage;
    if let Some(guard) = &guard
        && let Err(failure) = check_guard(guard).await
    {
        return Err(ApiError::conflict(format!(
            "the guard is unhealthy, so the ramp did not start: {failure}"
        ))
        .at("guard.url"));
    }
    let mut ramp = Ramp {
        id: None,
        environment: environment.to_owned(),
        flag: flag.to_owned(),
        steps,
        durations,
        guard,
        state: RampState::Active,
        current_step: 0,
        previous_percentage: previous,
        next_at: None,
        started_at: now,
        started_by: actor.to_owned(),
        guard_failures: 0,
        abort_reason: None,
        history: Vec::new(),
    };
    let first = ramp.steps[0];
    let note = request
        .message
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    set_percentage(
        state,
        &ramp,
        first,
        by(
            ACTOR,
            format!(
                "ramp started by {actor}{note}; step 1/{} → {first}%",
                ramp.steps.len()
            ),
            now,
        ),
    )
    .await?;
    ramp.event(
        now,
        "started",
        Some(first),
        actor,
        Some(format!("from {previous}%{note}")),
    );
    if ramp.steps.len() == 1 {
        ramp.state = RampState::Completed;
        ramp.event(now, "completed", Some(first), ACTOR, None);
    } else {
        ramp.next_at = Some(now + ramp.durations[0]);
    }
    save(state, &mut ramp, now).await?;
    Ok(ramp)
}

/// What `pause`, `resume` and `abort` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

/// Pauses, resumes or aborts a flag's open ramp.
pub async fn control(
    state: &AppState,
    environment: &str,
    flag: &str,
    control: Control,
    actor: &str,
    message: Option<String>,
) -> Result<Ramp, ApiError> {
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    let mut ramp = open_ramp(state, environment, flag).await?.ok_or_else(|| {
        ApiError::not_found(format!("flag {flag:?} has no active or paused ramp"))
    })?;
    match (control, ramp.state) {
        (Control::Pause, RampState::Active) => {
            ramp.state = RampState::Paused;
            ramp.next_at = None;
            ramp.event(now, "paused", None, actor, message);
        }
        (Control::Resume, RampState::Paused) => {
            ramp.state = RampState::Active;
            // The interval restarts from now.
            ramp.next_at = Some(now + ramp.durations[ramp.current_step]);
            ramp.event(now, "resumed", None, actor, message);
        }
        (Control::Abort, _) => {
            let reason = message.unwrap_or_else(|| "aborted".to_owned());
            abort(state, &mut ramp, now, actor, &reason).await?;
        }
        (Control::Pause, _) => {
            return Err(ApiError::conflict(format!(
                "the ramp of {flag:?} is already paused"
            )));
        }
        (Control::Resume, _) => {
            return Err(ApiError::conflict(format!(
                "the ramp of {flag:?} is not paused"
            )));
        }
    }
    save(state, &mut ramp, now).await?;
    Ok(ramp)
}

/// Restores the pre-ramp percentage and marks the ramp aborted (not saved).
async fn abort(
    state: &AppState,
    ramp: &mut Ramp,
    now: i64,
    actor: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let previous = ramp.previous_percentage;
    let restored = set_percentage(
        state,
        ramp,
        previous,
        by(
            actor,
            format!("ramp aborted: {reason}; restored to {previous}%"),
            now,
        ),
    )
    .await;
    ramp.state = RampState::Aborted;
    ramp.next_at = None;
    ramp.abort_reason = Some(reason.to_owned());
    let note = match &restored {
        Ok(()) => format!("{reason}; restored to {previous}%"),
        Err(error) => format!("{reason}; could not restore {previous}%: {error:?}"),
    };
    ramp.event(
        now,
        "aborted",
        restored.is_ok().then_some(previous),
        actor,
        Some(note),
    );
    Ok(())
}

/// Applies every step due at `state.clock()`; returns how many ramps moved. A step that fell due
/// while the server was down is applied once, jumping to the step due now.
pub async fn tick(state: &AppState) -> usize {
    let _lock = state.ramps.lock().await;
    let now = (state.clock)();
    let query = RampQuery {
        due_at: Some(now),
        open_only: true,
        ..RampQuery::default()
    };
    let due = match blocking(state, move |store| Ok(store.ramps(&query)?)).await {
        Ok(due) => due,
        Err(error) => {
            tracing::error!(?error, "cannot read due ramps");
            return 0;
        }
    };
    let mut moved = 0;
    for record in due {
        let mut ramp = match Ramp::from_record(record) {
            Ok(ramp) => ramp,
            Err(error) => {
                tracing::error!(?error, "cannot read a ramp");
                continue;
            }
        };
        if let Err(error) = advance(state, &mut ramp, now).await {
            tracing::error!(flag = ramp.flag, ?error, "ramp step failed");
        }
        if let Err(error) = save(state, &mut ramp, now).await {
            tracing::error!(flag = ramp.flag, ?error, "cannot save a ramp");
        }
        moved += 1;
    }
    moved
}

async fn advance(state: &AppState, ramp: &mut Ramp, now: i64) -> Result<(), ApiError> {
    let Some(mut due_at) = ramp.next_at else {
        return Ok(());
    };
    if let Some(guard) = ramp.guard.clone() {
        match check_guard(&guard).await {
            Ok(()) => ramp.guard_failures = 0,
            Err(failure) => {
                ramp.guard_failures += 1;
                ramp.event(now, "guard_failed", None, ACTOR, Some(failure.clone()));
                if ramp.guard_failures >= guard.failures {
                    let reason = format!(
                        "guard failed {} time(s) in a row: {failure}",
                        ramp.guard_failures
                    );
                    return abort(state, ramp, now, ACTOR, &reason).await;
                }
                let retry = ramp.durations[ramp.current_step].min(GUARD_RETRY_SECONDS);
                ramp.next_at = Some(now + retry);
                return Ok(());
            }
        }
    }
    // Jump to the step due now: after downtime, skip the steps whose time has passed.
    let last = ramp.steps.len() - 1;
    let mut step = ramp.current_step + 1;
    while step < last && due_at + ramp.durations[step] <= now {
        due_at += ramp.durations[step];
        step += 1;
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
            " (caught up after downtime; skipped {})",
            skipped.join(", ")
        ));
    }
    if let Err(error) =
        set_percentage(state, ramp, percentage, by(ACTOR, message.clone(), now)).await
    {
        // The flag was deleted or edited beyond what a rollout can change: stop safely.
        let reason = format!("could not apply step {}: {error:?}", step + 1);
        return abort(state, ramp, now, ACTOR, &reason).await;
    }
    ramp.current_step = step;
    ramp.event(now, "step", Some(percentage), ACTOR, Some(message));
    if step == last {
        ramp.state = RampState::Completed;
        ramp.next_at = None;
        ramp.event(now, "completed", Some(percentage), ACTOR, None);
    } else {
        ramp.next_at = Some(due_at + ramp.durations[step]);
    }
    Ok(())
}
