//! Prometheus metrics, rendered as text at `/metrics`.
//!
//! Hand-rolled rather than a metrics crate: a few families, a fixed bucket layout, and `dashmap`
//! (already in the stack) for the label sets. Each server (its `Domain`) has its own [`Metrics`]
//! registry, so servers in one process (tests, embedders) never mix their numbers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Propagation (commit to acknowledgement) bucket bounds, in seconds.
const PROPAGATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Cumulative counts per bucket, then +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations in microseconds (integer so it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &[f64; 12], elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[bounds.len()].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64; 12]) {
        let separator = if labels.is_empty() { "" } else { "," };
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.buckets[bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// One server's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(String, String, u16), AtomicU64>,
    latency: DashMap<String, Histogram>,
    flag_writes: DashMap<String, AtomicU64>,
    store_errors: AtomicU64,
    scheduler_restarts: AtomicU64,
    connections_closed: DashMap<&'static str, AtomicU64>,
    invalid_ramps: AtomicU64,
    connected_clients: DashMap<String, std::sync::atomic::AtomicI64>,
    propagation: Histogram,
    analysis: DashMap<&'static str, AtomicU64>,
    /// The last value measured by each ramp's analysis guard, as `f64` bits, by (environment,
    /// flag, guard index).
    analysis_values: DashMap<(String, String, usize), AtomicU64>,
    /// Evaluations by (environment, flag or `other`, variant).
    evaluations: DashMap<(String, String, String), AtomicU64>,
    /// The flags (per environment) that have a series of their own.
    evaluation_flags: dashmap::DashSet<(String, String)>,
    /// How many flags may have series of their own (`--metrics-max-flags`).
    evaluation_flag_limit: FlagLimit,
}

/// `--metrics-max-flags`, [`DEFAULT_MAX_FLAG_SERIES`] until set.
struct FlagLimit(std::sync::atomic::AtomicUsize);

impl Default for FlagLimit {
    fn default() -> Self {
        FlagLimit(std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_FLAG_SERIES))
    }
}

/// The default of `--metrics-max-flags`.
pub const DEFAULT_MAX_FLAG_SERIES: usize = 1_000;

/// The `flag` label of evaluations of flags beyond `--metrics-max-flags`.
pub const OTHER_FLAGS: &str = "other";

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts a request by method, route template and status, and its latency.
    pub fn request(&self, method: &str, route: &str, status: u16, started: Instant) {
        let elapsed = started.elapsed();
        self.requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        self.latency
            .entry(route.to_owned())
            .or_default()
            .observe(&BUCKETS, elapsed);
    }

    /// Counts committed flag writes (one per changed flag).
    pub fn flag_writes(&self, environment: &str, count: usize) {
        self.flag_writes
            .entry(environment.to_owned())
            .or_default()
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Adds `delta` to an environment's connected stream clients.
    pub fn connected_clients(&self, environment: &str, delta: i64) {
        self.connected_clients
            .entry(environment.to_owned())
            .or_default()
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Records how long a change took from commit to a client's acknowledgement.
    pub fn propagation(&self, elapsed: std::time::Duration) {
        self.propagation.observe(&PROPAGATION_BUCKETS, elapsed);
    }

    /// Counts a store failure.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection the server closed for `reason` (`evicted`, `header_timeout`,
    /// `request_timeout`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .entry(reason)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a ramp scheduler failure (an error or a panic) after which it is restarted.
    pub fn ramp_scheduler_restart(&self) {
        self.scheduler_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stored ramp that was unreadable or invalid and was marked failed.
    pub fn invalid_ramp(&self) {
        self.invalid_ramps.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many flags may have `flagd_evaluations_total` series of their own; the others
    /// share `flag="other"`.
    pub fn set_evaluation_flag_limit(&self, limit: usize) {
        self.evaluation_flag_limit.0.store(limit, Ordering::Relaxed);
    }

    /// Counts `count` evaluations of a flag's variant (empty: none served). Flags beyond the
    /// limit (first come, first served) are counted as `other`.
    pub fn evaluations(&self, environment: &str, flag: &str, variant: &str, count: u64) {
        let key = (environment.to_owned(), flag.to_owned());
        let own = self.evaluation_flags.contains(&key)
            || (self.evaluation_flags.len() < self.evaluation_flag_limit.0.load(Ordering::Relaxed)
                && self.evaluation_flags.insert(key));
        let (flag, variant) = if own {
            (flag.to_owned(), variant.to_owned())
        } else {
            // Folded flags fold their variants too: the cap bounds the series.
            (OTHER_FLAGS.to_owned(), String::new())
        };
        self.evaluations
            .entry((environment.to_owned(), flag, variant))
            .or_default()
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Counts a ramp guard's measurement by `result` (`success`, `failure`, `inconclusive`) and
    /// keeps the value that decided it, if any, as the guard's last value.
    pub fn ramp_analysis(
        &self,
        result: &'static str,
        environment: &str,
        flag: &str,
        guard: usize,
        value: Option<f64>,
    ) {
        self.analysis
            .entry(result)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        if let Some(value) = value {
            self.analysis_values
                .entry((environment.to_owned(), flag.to_owned(), guard))
                .or_default()
                .store(value.to_bits(), Ordering::Relaxed);
        }
    }
}

/// A sample value in the text exposition format (`NaN`, `+Inf`, `-Inf` spelled as Prometheus
/// reads them).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

/// Escapes a label value for the text exposition format.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP flagd_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE flagd_http_requests_total counter\n");
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((method, route, status), count) in rows {
            let _ = writeln!(
                out,
                "flagd_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                label(&method),
                label(&route)
            );
        }
        out.push_str("# HELP flagd_http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE flagd_http_request_duration_seconds histogram\n");
        let mut routes: Vec<String> = self.latency.iter().map(|e| e.key().clone()).collect();
        routes.sort();
        for route in routes {
            let Some(histogram) = self.latency.get(&route) else {
                continue;
            };
            let labels = format!("route=\"{}\"", label(&route));
            histogram.render(
                &mut out,
                "flagd_http_request_duration_seconds",
                &labels,
                &BUCKETS,
            );
        }
        out.push_str("# HELP flagd_flag_writes_total Committed flag writes by environment.\n");
        out.push_str("# TYPE flagd_flag_writes_total counter\n");
        let mut writes: Vec<_> = self
            .flag_writes
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        writes.sort();
        for (environment, count) in writes {
            let _ = writeln!(
                out,
                "flagd_flag_writes_total{{environment=\"{}\"}} {count}",
                label(&environment)
            );
        }
        let counters = [
            (
                "flagd_store_errors_total",
                "Store operations that failed.",
                &self.store_errors,
            ),
            (
                "flagd_ramp_scheduler_restarts_total",
                "Times the ramp scheduler failed (an error or a panic) and was restarted.",
                &self.scheduler_restarts,
            ),
            (
                "flagd_ramps_invalid_total",
                "Stored ramps that could not be read or were invalid, and were marked failed.",
                &self.invalid_ramps,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        out.push_str("# HELP flagd_connections_closed_total Connections the server closed, by reason (evicted: idle or slow at the connection limit; header_timeout; request_timeout).\n");
        out.push_str("# TYPE flagd_connections_closed_total counter\n");
        let mut closed: Vec<_> = self
            .connections_closed
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        closed.sort();
        for (reason, count) in closed {
            let _ = writeln!(
                out,
                "flagd_connections_closed_total{{reason=\"{reason}\"}} {count}"
            );
        }
        out.push_str("# HELP flagd_stream_clients Connected stream clients by environment.\n");
        out.push_str("# TYPE flagd_stream_clients gauge\n");
        let mut clients: Vec<_> = self
            .connected_clients
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        clients.sort();
        for (environment, count) in clients {
            let _ = writeln!(
                out,
                "flagd_stream_clients{{environment=\"{}\"}} {count}",
                label(&environment)
            );
        }
        out.push_str("# HELP flagd_evaluations_total Flag evaluations (OFREP on this server, and those SDKs reported) by environment, flag and variant (empty: none served); flags beyond --metrics-max-flags are counted as flag=\"other\".\n");
        out.push_str("# TYPE flagd_evaluations_total counter\n");
        let mut evaluations: Vec<_> = self
            .evaluations
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        evaluations.sort();
        for ((environment, flag, variant), count) in evaluations {
            let _ = writeln!(
                out,
                "flagd_evaluations_total{{environment=\"{}\",flag=\"{}\",variant=\"{}\"}} {count}",
                label(&environment),
                label(&flag),
                label(&variant)
            );
        }
        out.push_str("# HELP flagd_ramp_analysis_total Measurements taken by ramps' Prometheus analysis guards, by result (success, failure, inconclusive).\n");
        out.push_str("# TYPE flagd_ramp_analysis_total counter\n");
        for result in ["success", "failure", "inconclusive"] {
            let count = self
                .analysis
                .get(result)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "flagd_ramp_analysis_total{{result=\"{result}\"}} {count}"
            );
        }
        out.push_str("# HELP flagd_ramp_analysis_value The last value a ramp's analysis guard measured (the first failing sample, else the first), by environment, flag and guard index.\n");
        out.push_str("# TYPE flagd_ramp_analysis_value gauge\n");
        let mut values: Vec<_> = self
            .analysis_values
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    f64::from_bits(e.value().load(Ordering::Relaxed)),
                )
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        for ((environment, flag, guard), value) in values {
            let _ = writeln!(
                out,
                "flagd_ramp_analysis_value{{environment=\"{}\",flag=\"{}\",guard=\"{guard}\"}} {}",
                label(&environment),
                label(&flag),
                number(value)
            );
        }
        out.push_str("# HELP flagd_stream_propagation_seconds Time from commit to a stream client's acknowledgement.\n");
        out.push_str("# TYPE flagd_stream_propagation_seconds histogram\n");
        self.propagation.render(
            &mut out,
            "flagd_stream_propagation_seconds",
            "",
            &PROPAGATION_BUCKETS,
        );
        out
    }
}

/// Appends the replica's role: `flagd_ramp_scheduler_leader` (1 on the replica that runs the ramp
/// scheduler; always 1 on a single server) and, with PostgreSQL, `flagd_replication_connected`
/// (1 while following the database's change notifications).
pub fn render_replica(out: &mut String, leader: bool, following: Option<bool>) {
    out.push_str(
        "# HELP flagd_ramp_scheduler_leader 1 on the replica that runs the ramp scheduler.\n",
    );
    out.push_str("# TYPE flagd_ramp_scheduler_leader gauge\n");
    let _ = writeln!(out, "flagd_ramp_scheduler_leader {}", u8::from(leader));
    if let Some(connected) = following {
        out.push_str("# HELP flagd_replication_connected 1 while this replica follows the database's change notifications.\n");
        out.push_str("# TYPE flagd_replication_connected gauge\n");
        let _ = writeln!(out, "flagd_replication_connected {}", u8::from(connected));
    }
}

/// The GitOps figures per bound environment this replica has synced: the last successful sync
/// time, failed syncs, and the drift the last sync listed.
pub fn render_gitops(out: &mut String, sources: &[(String, crate::domain::gitops::SourceStats)]) {
    if sources.is_empty() {
        return;
    }
    out.push_str("# HELP flagd_gitops_last_sync_timestamp_seconds When the environment last synced from Git successfully (unix seconds).\n");
    out.push_str("# TYPE flagd_gitops_last_sync_timestamp_seconds gauge\n");
    for (environment, stats) in sources {
        if let Some(at) = stats.last_success {
            let _ = writeln!(
                out,
                "flagd_gitops_last_sync_timestamp_seconds{{environment=\"{}\"}} {at}",
                label(environment)
            );
        }
    }
    out.push_str("# HELP flagd_gitops_sync_failures_total Git syncs that failed (fetch, invalid document, apply).\n");
    out.push_str("# TYPE flagd_gitops_sync_failures_total counter\n");
    for (environment, stats) in sources {
        let _ = writeln!(
            out,
            "flagd_gitops_sync_failures_total{{environment=\"{}\"}} {}",
            label(environment),
            stats.failures
        );
    }
    out.push_str("# HELP flagd_gitops_drift Live differences from Git kept by the last sync (policy report, ramps).\n");
    out.push_str("# TYPE flagd_gitops_drift gauge\n");
    for (environment, stats) in sources {
        let _ = writeln!(
            out,
            "flagd_gitops_drift{{environment=\"{}\"}} {}",
            label(environment),
            stats.drift
        );
    }
}
