//! Rollouts from any starting document: the rolled-out variant is found by value, raising the
//! percentage only adds users, lowering it only removes users, the users at a percentage are
//! always the same ones, 0 % and 100 % are exact for everyone, and the listed percentage is the
//! measured one.

use std::collections::{BTreeMap, HashMap};

use flag_core::rollout::{RolloutVariants, current_rollout, set_rollout};
use flag_core::{CompiledFlagSet, EvaluationContext, Flag, FlagSet};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEY: &str = "rollout-flag";

/// Which of `contexts` get `variant`.
fn served(
    flag: &Flag,
    evaluators: &BTreeMap<String, Value>,
    variant: &str,
    contexts: &[EvaluationContext],
) -> Vec<bool> {
    let document = json!({ "$evaluators": evaluators, "flags": { KEY: flag } });
    let set = FlagSet::from_value(&document).expect("the edited document is valid");
    let flags = CompiledFlagSet::compile(&set).expect("the edited document compiles");
    contexts
        .iter()
        .map(|ctx| flags.evaluate(KEY, ctx, 0).variant == Some(variant))
        .collect()
}

fn share(on: &[bool]) -> f64 {
    on.iter().filter(|x| **x).count() as f64 * 100.0 / on.len() as f64
}

fn users(n: usize) -> Vec<EvaluationContext> {
    (0..n)
        .map(|i| EvaluationContext::new(format!("user-{i}")).with("org", format!("org-{i}")))
        .collect()
}

/// The bug that started it: `[off 75, on 25]` is 25 % on, and 30 % means 30 %.
#[test]
fn off_first_buckets_roll_out_the_true_variant() {
    let mut flag: Flag = serde_json::from_value(json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"fractional": [["off", 75], ["on", 25]]}
    }))
    .unwrap();
    let none = BTreeMap::new();
    let variants = RolloutVariants::default();
    assert_eq!(
        current_rollout(&flag, &none, &variants).unwrap().percentage,
        25.0
    );
    let contexts = users(100_000);
    let before = served(&flag, &none, "on", &contexts);
    set_rollout(&mut flag, &none, 30.0, &variants).unwrap();
    let after = served(&flag, &none, "on", &contexts);
    assert!((share(&after) - 30.0).abs() < 1.0, "{}", share(&after));
    assert!(
        before.iter().zip(&after).all(|(was, is)| !was || *is),
        "every user on at 25 % is on at 30 %"
    );
    assert_eq!(
        current_rollout(&flag, &none, &variants).unwrap().percentage,
        30.0
    );
}

#[test]
fn zero_and_hundred_percent_are_exact_without_a_targeting_key() {
    let none = BTreeMap::new();
    let anonymous = [EvaluationContext::anonymous()];
    for default in ["on", "off"] {
        let mut flag: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default,
            "targeting": {"fractional": [["off", 1], ["on", 1]]}
        }))
        .unwrap();
        set_rollout(&mut flag, &none, 100.0, &RolloutVariants::default()).unwrap();
        assert_eq!(served(&flag, &none, "on", &anonymous), [true], "{default}");
        set_rollout(&mut flag, &none, 0.0, &RolloutVariants::default()).unwrap();
        assert_eq!(served(&flag, &none, "on", &anonymous), [false], "{default}");
    }
}

/// A starting document: the variants, where the rollout lives and its buckets.
#[derive(Debug, Clone)]
struct Start {
    boolean: bool,
    rolled_out: usize,
    default: usize,
    buckets: Vec<(usize, u32)>,
    bucket_by: bool,
    placement: u8,
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

impl Start {
    fn names(&self) -> &'static [&'static str] {
        if self.boolean { &["on", "off"] } else { &NAMES }
    }

    fn build(&self) -> (Flag, BTreeMap<String, Value>, String) {
        let names = self.names();
        let variants: serde_json::Map<String, Value> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    if self.boolean {
                        json!(*n == "on")
                    } else {
                        json!(n)
                    },
                )
            })
            .collect();
        let mut args: Vec<Value> = Vec::new();
        if self.bucket_by {
            args.push(json!({"var": "org"}));
        }
        args.extend(self.buckets.iter().map(|(i, w)| json!([names[*i], w])));
        let fractional = json!({ "fractional": args });
        let mut evaluators = BTreeMap::new();
        let targeting = match self.placement {
            0 => fractional,
            1 => json!({"if": [{"==": [{"var": "tier"}, "gold"]}, names[0], fractional]}),
            _ => {
                evaluators.insert("split".to_owned(), fractional);
                json!({"if": [{"==": [{"var": "tier"}, "gold"]}, names[0], {"$ref": "split"}]})
            }
        };
        let flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": variants,
            "defaultVariant": names[self.default], "targeting": targeting
        }))
        .unwrap();
        (flag, evaluators, names[self.rolled_out].to_owned())
    }
}

fn start() -> impl Strategy<Value = Start> {
    (any::<bool>(), 0usize..4, 0usize..4, any::<bool>(), 0u8..3).prop_flat_map(
        |(boolean, rolled_out, default, bucket_by, placement)| {
            let count = if boolean { 2 } else { 4 };
            // Distinct variants in a random order, each with a weight (zero included).
            let order = Just((0..count).collect::<Vec<usize>>()).prop_shuffle();
            (
                order,
                proptest::collection::vec(0u32..200, count),
                1..=count,
            )
                .prop_map(move |(order, weights, used)| Start {
                    boolean,
                    rolled_out: if boolean { 0 } else { rolled_out % count },
                    default: default % count,
                    buckets: order
                        .into_iter()
                        .zip(weights)
                        .take(used.max(2))
                        .map(|(i, w)| (i, w + 1))
                        .collect(),
                    bucket_by,
                    placement,
                })
        },
    )
}

fn hundredths() -> impl Strategy<Value = u32> {
    // Repeated values matter: the users at a percentage must be the same ones every time.
    prop_oneof![
        Just(0u32),
        Just(10_000),
        proptest::sample::select(vec![100u32, 500, 2_500, 5_000]),
        0u32..=10_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rollouts_from_any_document_stay_sticky(start in start(), steps in proptest::collection::vec(hundredths(), 1..10)) {
        let (mut flag, evaluators, variant) = start.build();
        let variants = if start.boolean { RolloutVariants::default() } else { RolloutVariants::of(variant.clone()) };
        let contexts = users(2_000);
        let first = current_rollout(&flag, &evaluators, &variants).unwrap();
        let mut previous = (first.percentage, served(&flag, &evaluators, &variant, &contexts));
        let mut seen: HashMap<u32, Vec<bool>> = HashMap::new();
        for step in steps {
            let percentage = f64::from(step) / 100.0;
            set_rollout(&mut flag, &evaluators, percentage, &variants).unwrap();
            let now = served(&flag, &evaluators, &variant, &contexts);
            prop_assert_eq!(current_rollout(&flag, &evaluators, &variants).unwrap().percentage, percentage);
            if percentage >= previous.0 {
                prop_assert!(previous.1.iter().zip(&now).all(|(was, is)| !was || *is),
                    "a user left while the rollout rose from {}% to {}%: {:?}", previous.0, percentage, flag.targeting);
            }
            if percentage <= previous.0 {
                prop_assert!(previous.1.iter().zip(&now).all(|(was, is)| *was || !is),
                    "a user joined while the rollout fell from {}% to {}%", previous.0, percentage);
            }
            if let Some(before) = seen.get(&step) {
                prop_assert!(before == &now, "{}% served other users than before: {:?}", percentage, flag.targeting);
            }
            // Binomial tolerance on 2,000 users: six standard deviations, plus the 0.01 % step.
            let p = percentage / 100.0;
            let sigma = (p * (1.0 - p) / contexts.len() as f64).sqrt() * 100.0;
            prop_assert!((share(&now) - percentage).abs() <= 6.0 * sigma + 0.05,
                "{}% measured as {}%", percentage, share(&now));
            let anonymous = served(&flag, &evaluators, &variant, &[EvaluationContext::anonymous()])[0];
            if step == 0 { prop_assert!(!anonymous, "0% served a context without a key"); }
            if step == 10_000 { prop_assert!(anonymous, "100% missed a context without a key"); }
            seen.insert(step, now.clone());
            previous = (percentage, now);
        }
    }
}
