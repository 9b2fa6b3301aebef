//! datalogic-rs (with its `flagd` operators) on the fixtures of `benches`.
//!
//! Run: `cargo bench -p bench-datalogic`. datalogic is a JsonLogic engine, not a flag engine, so
//! there is no case A (no rule to run); B and C compile the rule once and evaluate against a
//! parse-once context, resetting one arena per evaluation (its fastest documented path), then
//! map the returned name to the variant value as a flag engine must. flag-core and the SDK's flag
//! handle run in this same binary so the ratios come from one process.

use std::collections::HashMap;
use std::hint::black_box;

use benches::{complex_rule, context_json, flagd_document, split_rule};
use bumpalo::Bump;
use criterion::{Criterion, criterion_group, criterion_main};
use datalogic_rs::{Engine, ParsedData};
use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet};
use serde_json::{Value, json};

fn evaluation(c: &mut Criterion) {
    let doc = FlagSet::from_value(&flagd_document()).expect("fixture is valid");
    let ours = CompiledFlagSet::compile(&doc).expect("fixture compiles");
    let Value::Object(object) = context_json() else {
        unreachable!("fixture is an object")
    };
    let ctx = EvaluationContext::from_json(object);

    let sdk = flag_sdk::FlagClient::builder()
        .bootstrap_document(flagd_document())
        .build()
        .expect("fixture bootstraps");
    let sdk_context =
        flag_sdk::EvaluationContext::new(benches::TARGETING_KEY).with("email", benches::EMAIL);

    let engine = Engine::builder().build();
    let variants: HashMap<&str, Value> =
        HashMap::from([("on", json!(true)), ("off", json!(false))]);
    let mut group = c.benchmark_group("eval");
    for (case, key, rule) in [
        ("B_fractional", "split", split_rule()),
        ("C_if_in_fractional", "complex", complex_rule()),
    ] {
        let compiled = engine
            .compile(rule.to_string().as_str())
            .expect("rule compiles");
        let mut data = context_json();
        data["$flagd"] = json!({"flagKey": key, "timestamp": 1_700_000_000});
        let parsed = ParsedData::from_json(&data.to_string()).expect("context parses");
        {
            let arena = Bump::new();
            let result = engine
                .evaluate(&compiled, &parsed, &arena)
                .expect("evaluates");
            assert!(
                result.as_str().is_some(),
                "{case}: datalogic returned a variant name"
            );
        }
        let mut arena = Bump::new();
        group.bench_function(format!("{case}/datalogic-rs"), |b| {
            b.iter(|| {
                arena.reset();
                let result = engine
                    .evaluate(&compiled, black_box(&parsed), &arena)
                    .expect("evaluates");
                black_box(result.as_str().and_then(|name| variants.get(name)).cloned());
            });
        });
        group.bench_function(format!("{case}/flag-core"), |b| {
            b.iter(|| {
                black_box(ours.resolve_bool(black_box(key), black_box(&ctx), false, 1_700_000_000));
            });
        });
        // The SDK's flag handle (issue 21 compares it with the fastest peer in one run).
        let handle = sdk.flag(key);
        group.bench_function(format!("{case}/flag-sdk-handle"), |b| {
            b.iter(|| black_box(handle.bool_value(black_box(&sdk_context), false)));
        });
    }
    group.finish();
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
