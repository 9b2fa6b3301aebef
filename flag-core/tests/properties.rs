//! Properties: fractional distribution, rollout monotonicity (stickiness), and robustness
//! against arbitrary JSON as targeting or context.

use std::collections::BTreeMap;

use flag_core::rollout::{RolloutVariants, current_rollout, set_rollout};
use flag_core::{CompiledFlagSet, EvaluationContext, Flag, FlagSet, evaluate_rule};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn compile(flags: Value) -> CompiledFlagSet {
    let set = FlagSet::from_value(&json!({ "flags": flags })).unwrap();
    CompiledFlagSet::compile(&set).unwrap()
}

fn boolean_flag() -> Flag {
    serde_json::from_value(json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})).unwrap()
}

/// Which of `keys` get "on" at `percentage`.
fn on_set(flag_key: &str, percentage: f64, keys: &[String]) -> Vec<bool> {
    let mut flag = boolean_flag();
    set_rollout(
        &mut flag,
        &BTreeMap::new(),
        percentage,
        &RolloutVariants::default(),
    )
    .unwrap();
    let flags = compile(json!({ flag_key: flag }));
    keys.iter()
        .map(|k| {
            flags
                .resolve_bool(flag_key, &EvaluationContext::new(k.clone()), false, 0)
                .value
        })
        .collect()
}

#[test]
fn ramp_is_monotonic_over_ten_thousand_users() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let steps = [0.0, 0.01, 1.0, 5.0, 10.0, 20.0, 25.0, 50.0, 99.99, 100.0];
    let mut previous = vec![false; keys.len()];
    for step in steps {
        let current = on_set("checkout", step, &keys);
        for (i, (was, is)) in previous.iter().zip(&current).enumerate() {
            assert!(
                !was || *is,
                "{} was on before {step}% but is off at {step}%",
                keys[i]
            );
        }
        let share = current.iter().filter(|on| **on).count() as f64 / keys.len() as f64 * 100.0;
        assert!(
            (share - step).abs() < 1.5,
            "{step}% rollout served {share}%"
        );
        previous = current;
    }
    assert!(previous.iter().all(|on| *on), "100% serves everyone");
}

#[test]
fn fifty_fifty_splits_a_hundred_thousand_keys_evenly() {
    let flags = compile(
        json!({"split": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
        "targeting": {"fractional": [["a", 50], ["b", 50]]}}}),
    );
    let n = 100_000;
    let a = (0..n)
        .filter(|i| {
            flags
                .resolve_string("split", &EvaluationContext::new(format!("key-{i}")), "", 0)
                .value
                == "a"
        })
        .count();
    // Binomial standard deviation at n = 100k, p = 0.5 is 158: allow five.
    assert!((a as i64 - 50_000).abs() < 800, "a got {a} of {n}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn fractional_distribution_is_within_tolerance(weights in proptest::collection::vec(1u32..100, 2..5)) {
        let buckets: Vec<Value> = weights.iter().enumerate().map(|(i, w)| json!([format!("v{i}"), w])).collect();
        let variants: Map<String, Value> = (0..weights.len()).map(|i| (format!("v{i}"), json!(i))).collect();
        let flags = compile(json!({"f": {"state": "ENABLED", "variants": variants, "defaultVariant": "v0",
            "targeting": {"fractional": buckets}}}));
        let n = 100_000usize;
        let mut counts = vec![0usize; weights.len()];
        for i in 0..n {
            let v = flags.resolve_int("f", &EvaluationContext::new(format!("k{i}")), -1, 0).value;
            counts[usize::try_from(v).unwrap()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (count, weight)) in counts.iter().zip(&weights).enumerate() {
            let p = f64::from(*weight) / f64::from(total);
            let expected = p * n as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            prop_assert!((*count as f64 - expected).abs() < 6.0 * sigma + 1.0,
                "bucket {i}: {count} of {n}, expected {expected:.0} ± {sigma:.0}");
        }
    }
}

proptest! {
    #[test]
    fn a_key_on_at_p_is_on_at_every_higher_q(key in "\\PC{0,24}", p in 0u32..=10_000, q in 0u32..=10_000) {
        let (low, high) = (p.min(q), p.max(q));
        let keys = [key];
        let on_low = on_set("flag-x", f64::from(low) / 100.0, &keys)[0];
        let on_high = on_set("flag-x", f64::from(high) / 100.0, &keys)[0];
        prop_assert!(!on_low || on_high, "on at {low} but off at {high}");
    }

    #[test]
    fn set_then_read_rollout_round_trips(hundredths in 0u32..=10_000) {
        let percentage = f64::from(hundredths) / 100.0;
        let mut flag = boolean_flag();
        set_rollout(&mut flag, &BTreeMap::new(), percentage, &RolloutVariants::default()).unwrap();
        prop_assert_eq!(current_rollout(&flag, &BTreeMap::new(), &RolloutVariants::default()).unwrap().percentage, percentage);
    }
}

/// Arbitrary JSON, biased towards operator-shaped objects so the evaluator is exercised.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z.$]{0,8}".prop_map(Value::String),
        Just(json!("targetingKey")),
        Just(json!("$flagd.flagKey")),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let operators = prop::sample::select(vec![
            "var",
            "missing",
            "missing_some",
            "if",
            "?:",
            "==",
            "===",
            "!=",
            "!==",
            ">",
            ">=",
            "<",
            "<=",
            "!",
            "!!",
            "and",
            "or",
            "%",
            "/",
            "*",
            "+",
            "-",
            "max",
            "min",
            "merge",
            "cat",
            "substr",
            "in",
            "map",
            "filter",
            "all",
            "none",
            "some",
            "reduce",
            "fractional",
            "sem_ver",
            "starts_with",
            "ends_with",
            "$ref",
        ]);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            (operators, proptest::collection::vec(inner.clone(), 0..4))
                .prop_map(|(op, args)| json!({ op: args })),
            proptest::collection::btree_map("[a-zA-Z$]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_rules_and_contexts_never_panic(rule in arbitrary_json(), context in arbitrary_json()) {
        let ctx = match context {
            Value::Object(map) => EvaluationContext::from_json(map),
            other => EvaluationContext::anonymous().with("targetingKey", other),
        };
        // Either a validation error or a value: never a panic.
        let _ = evaluate_rule(&rule, &ctx, "f", 0);
        // The same rule as a flag's targeting, through lenient and strict compilation.
        let doc = json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "targeting": rule}}});
        let (flags, _) = CompiledFlagSet::compile_json_lenient(&doc);
        let _ = flags.evaluate("f", &ctx, 0);
        let _ = FlagSet::from_value(&doc);
    }

    #[test]
    fn arbitrary_documents_never_panic(doc in arbitrary_json()) {
        let (flags, _) = CompiledFlagSet::compile_json_lenient(&doc);
        let ctx = EvaluationContext::new("u");
        for (_, resolution) in flags.evaluate_all(&ctx, 0) {
            let _ = resolution;
        }
        let _ = FlagSet::from_value(&doc);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    /// Any targeting, loaded as the server loads it (warnings accepted): never a panic, and the
    /// other flag of the document always evaluates exactly as it would alone. A document that
    /// loads strictly evaluates identically in default mode.
    #[test]
    fn a_broken_flag_never_takes_another_down(rule in arbitrary_json(), context in arbitrary_json()) {
        let ctx = match context {
            Value::Object(map) => EvaluationContext::from_json(map),
            other => EvaluationContext::new("u").with("x", other),
        };
        let good = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u"]}, "on", "off"]}});
        let doc = json!({"$evaluators": {"e": rule}, "flags": {
            "good": good,
            "any": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": rule}
        }});
        let alone = compile(json!({"good": good}));
        let expected = alone.resolve_bool("good", &ctx, false, 0);
        if let Ok(loaded) = CompiledFlagSet::load(&doc) {
            let got = loaded.compiled.resolve_bool("good", &ctx, false, 0);
            prop_assert_eq!((got.value, got.reason), (expected.value, expected.reason));
            let default_mode = loaded.compiled.evaluate("any", &ctx, 0);
            if let Ok((_, strict)) = CompiledFlagSet::from_value(&doc) {
                let strict = strict.evaluate("any", &ctx, 0);
                prop_assert_eq!(
                    (strict.value, strict.variant, strict.reason, strict.error.map(|e| e.code)),
                    (default_mode.value, default_mode.variant, default_mode.reason, default_mode.error.map(|e| e.code))
                );
            }
        }
        let (lenient, _) = CompiledFlagSet::compile_json_lenient(&doc);
        let got = lenient.resolve_bool("good", &ctx, false, 0);
        prop_assert_eq!((got.value, got.reason), (expected.value, expected.reason));
    }
}
