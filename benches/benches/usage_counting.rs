//! What evaluation telemetry adds to an SDK evaluation, measured paired and interleaved.
//!
//! Run: `cargo bench -p benches --bench usage_counting`. The cost being measured (issue 19's
//! target: at most 2 ns per call) is smaller than the run-to-run noise of a shared machine, so
//! criterion's separate benchmarks (`evaluation`'s `flag-sdk-counted` rows) cannot resolve it.
//! This bench runs the same evaluation through a client that counts and one that does not, in
//! alternating short batches, many rounds, and reports per variant the fastest batch (what the
//! code costs when nothing interferes) and the median, and the difference of the fastest.

use std::hint::black_box;
use std::time::Instant;

use benches::{CASES, EMAIL, TARGETING_KEY, flagd_document};
use flag_sdk::{EvaluationContext, FlagClient};

const ROUNDS: usize = 300;
const BATCH: u32 = 20_000;

fn client(counting: bool) -> FlagClient {
    FlagClient::builder()
        .bootstrap_document(flagd_document())
        .usage_reporting(counting)
        .build()
        .expect("fixture bootstraps")
}

/// Nanoseconds per call of the fastest and the median batch.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[0], samples[samples.len() / 2])
}

fn time(mut call: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        call();
    }
    start.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let plain = client(false);
    let counted = client(true);
    let context = EvaluationContext::new(TARGETING_KEY).with("email", EMAIL);
    println!(
        "usage counting: {ROUNDS} rounds of {BATCH} calls per variant, interleaved; ns per call"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "case / getter", "off min", "on min", "off med", "on med", "added"
    );
    for (case, key) in CASES {
        if filter.as_deref().is_some_and(|f| !case.contains(f)) {
            continue;
        }
        let (plain_handle, counted_handle) = (plain.flag(key), counted.flag(key));
        let mut rows: [(&str, Vec<f64>, Vec<f64>); 2] = [
            ("key", Vec::new(), Vec::new()),
            ("handle", Vec::new(), Vec::new()),
        ];
        for _ in 0..ROUNDS {
            rows[0].1.push(time(|| {
                black_box(plain.bool_value(black_box(key), black_box(&context), false));
            }));
            rows[0].2.push(time(|| {
                black_box(counted.bool_value(black_box(key), black_box(&context), false));
            }));
            rows[1].1.push(time(|| {
                black_box(plain_handle.bool_value(black_box(&context), false));
            }));
            rows[1].2.push(time(|| {
                black_box(counted_handle.bool_value(black_box(&context), false));
            }));
        }
        for (getter, off, on) in rows {
            let (off_min, off_median) = summary(off);
            let (on_min, on_median) = summary(on);
            println!(
                "{:<22} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>+8.2}",
                format!("{case} / {getter}"),
                off_min,
                on_min,
                off_median,
                on_median,
                on_min - off_min
            );
        }
    }
}
