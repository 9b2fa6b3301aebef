use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use flag_protocol::stream::UsageCount;

use super::*;
use crate::domain::tokens::TokenCache;
use crate::store::{Attribution, FlagChange, SqliteStore};

/// A whole hour.
const T0: i64 = 500_000 * 3600;

fn domain() -> (Domain, Arc<AtomicI64>) {
    let clock = Arc::new(AtomicI64::new(T0));
    let now = clock.clone();
    let store = Arc::new(SqliteStore::in_memory(T0).unwrap());
    let flag = |key: &str| {
        FlagChange::Upsert {
        key: key.to_owned(),
        flag: serde_json::from_value(serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})).unwrap(),
        expected_version: None,
    }
    };
    let by = Attribution {
        actor: "test".into(),
        message: None,
        at: T0,
    };
    crate::store::FlagStore::commit(
        &*store,
        "default",
        &[flag("a"), flag("b"), flag("c")],
        None,
        &by,
    )
    .unwrap();
    let domain = Domain::new(
        store,
        TokenCache::default(),
        Arc::new(move || now.load(Ordering::SeqCst)),
    )
    .unwrap();
    (domain, clock)
}

fn entry(flag: &str, variant: Option<&str>, count: u64) -> UsageCount {
    UsageCount {
        flag: flag.to_owned(),
        variant: variant.map(str::to_owned),
        reason: None,
        count,
    }
}

#[tokio::test]
async fn counts_add_up_per_hour_and_variant_and_only_for_existing_flags() {
    let (domain, clock) = domain();
    clock.store(T0 + 10, Ordering::SeqCst);
    let counted = report(
        &domain,
        "default",
        &[
            entry("a", Some("on"), 3),
            entry("a", None, 1),
            entry("zzz", Some("on"), 9),
        ],
    );
    assert_eq!(
        counted, 2,
        "a key the environment does not have is not counted"
    );
    count(&domain, "default", "a", Some("on"), 2);
    clock.store(T0 + 3600 + 5, Ordering::SeqCst);
    count(&domain, "default", "a", Some("off"), 4);
    assert_eq!(
        flush(&domain).await.unwrap(),
        3,
        "three (flag, variant, hour) rows"
    );
    assert_eq!(
        flush(&domain).await.unwrap(),
        0,
        "nothing pending after a flush"
    );
    let usage = of_flag(&domain, "default", "a", T0).await.unwrap();
    assert_eq!(usage.total, 10);
    assert_eq!(usage.last_evaluated, Some(T0 + 3605));
    assert_eq!(
        usage.variants,
        [
            ("".to_owned(), 1),
            ("off".to_owned(), 4),
            ("on".to_owned(), 5)
        ]
        .into_iter()
        .collect()
    );
    let hours: Vec<(i64, &str, i64)> = usage
        .hours
        .iter()
        .map(|h| (h.hour, h.variant.as_str(), h.count))
        .collect();
    assert_eq!(
        hours,
        vec![(T0, "", 1), (T0, "on", 5), (T0 + 3600, "off", 4)]
    );
    // Since the second hour only.
    assert_eq!(
        of_flag(&domain, "default", "a", T0 + 3700)
            .await
            .unwrap()
            .total,
        4
    );
    // The listing's summary: last evaluation and the last 24 hours.
    clock.store(T0 + 30 * 3600, Ordering::SeqCst);
    count(&domain, "default", "b", Some("on"), 1);
    let summary = summary(&domain, "default").await.unwrap();
    assert_eq!(summary["a"].recent, 0, "a's hours are more than 24 h old");
    assert_eq!(summary["a"].last_at, T0 + 3605);
    assert_eq!(
        summary["b"].recent, 1,
        "pending counts are flushed before a summary"
    );
    assert!(!summary.contains_key("c"), "never evaluated");
}

#[tokio::test]
async fn hours_past_the_retention_are_pruned() {
    let (domain, clock) = domain();
    domain.usage.set_retention(Duration::from_secs(48 * 3600));
    count(&domain, "default", "a", Some("on"), 1);
    clock.store(T0 + 24 * 3600, Ordering::SeqCst);
    count(&domain, "default", "b", Some("on"), 1);
    flush(&domain).await.unwrap();
    clock.store(T0 + 49 * 3600 - 1, Ordering::SeqCst);
    assert_eq!(
        prune(&domain).await.unwrap(),
        0,
        "a's hour ended 48 h ago only now"
    );
    clock.store(T0 + 49 * 3600, Ordering::SeqCst);
    assert_eq!(prune(&domain).await.unwrap(), 1);
    assert_eq!(of_flag(&domain, "default", "a", 0).await.unwrap().total, 0);
    assert_eq!(of_flag(&domain, "default", "b", 0).await.unwrap().total, 1);
}

#[tokio::test]
async fn huge_reported_counts_are_clamped() {
    let (domain, _clock) = domain();
    report(&domain, "default", &[entry("a", Some("on"), u64::MAX)]);
    report(&domain, "default", &[entry("a", Some("on"), u64::MAX)]);
    flush(&domain).await.unwrap();
    let usage = of_flag(&domain, "default", "a", 0).await.unwrap();
    assert_eq!(usage.total, 2 * (1_i64 << 40));
}

#[test]
fn flags_beyond_the_metrics_cap_are_counted_as_other() {
    let metrics = crate::metrics::Metrics::default();
    metrics.set_evaluation_flag_limit(2);
    for flag in ["a", "b", "c", "d", "a"] {
        metrics.evaluations("default", flag, "on", 1);
    }
    let text = metrics.render();
    assert!(
        text.contains(r#"flagd_evaluations_total{environment="default",flag="a",variant="on"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"flagd_evaluations_total{environment="default",flag="b",variant="on"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"flagd_evaluations_total{environment="default",flag="other",variant=""} 2"#
        ),
        "{text}"
    );
    assert!(!text.contains(r#"flag="c""#), "{text}");
}
