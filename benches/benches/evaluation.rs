//! Flag evaluation: flag-core next to flagd-evaluation-engine and unleash-yggdrasil, in one run.
//!
//! Run: `cargo bench -p benches --bench evaluation`. Bench ids are `eval/<case>/<engine>`, so
//! criterion's report lines up the engines per case. The peers are used through their public
//! APIs as an application would, each given its best shot: flagd-evaluation-engine gets its
//! targeting strings prepared once (it compiles the rule on every call, which is its API);
//! Yggdrasil evaluates a pre-built context.

use std::collections::HashMap;
use std::hint::black_box;

use benches::{
    CASES, EMAIL, TARGETING_KEY, context_json, flagd_document, large_document, unleash_features,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet};
use serde_json::Value;

fn our_context() -> EvaluationContext {
    let Value::Object(object) = context_json() else {
        unreachable!("fixture is an object")
    };
    EvaluationContext::from_json(object)
}

/// flagd's Rust evaluator, driven the way an in-process provider drives it.
struct FlagdEngine {
    parsed: flagd_evaluation_engine::model::ParsingResult,
    targeting: HashMap<String, String>,
    operator: flagd_evaluation_engine::Operator,
}

impl FlagdEngine {
    fn new() -> Self {
        let parsed =
            flagd_evaluation_engine::FlagParser::parse_string(&flagd_document().to_string())
                .expect("fixture parses");
        let targeting = parsed
            .flags
            .iter()
            .map(|(k, f)| (k.clone(), f.get_targeting()))
            .collect();
        FlagdEngine {
            parsed,
            targeting,
            operator: flagd_evaluation_engine::Operator::new(),
        }
    }

    fn evaluate(&self, key: &str, ctx: &open_feature::EvaluationContext) -> Option<&Value> {
        let flag = self.parsed.flags.get(key)?;
        if flag.state != "ENABLED" {
            return None;
        }
        let targeting = self.targeting.get(key)?;
        if targeting == "{}" {
            return flag.variants.get(&flag.default_variant);
        }
        match self.operator.apply(key, targeting, ctx) {
            Ok(Some(variant)) => flag.variants.get(&variant),
            _ => flag.variants.get(&flag.default_variant),
        }
    }
}

fn evaluation(c: &mut Criterion) {
    let doc = FlagSet::from_value(&flagd_document()).expect("fixture is valid");
    let ours = CompiledFlagSet::compile(&doc).expect("fixture compiles");
    let ctx = our_context();

    let flagd = FlagdEngine::new();
    let flagd_ctx = open_feature::EvaluationContext::default()
        .with_targeting_key(TARGETING_KEY)
        .with_custom_field("email", EMAIL);

    let ygg = unleash_yggdrasil::EngineState::default();
    let features: unleash_types::client_features::ClientFeatures =
        serde_json::from_value(unleash_features()).expect("fixture is valid Unleash JSON");
    ygg.apply_client_features(features);
    let ygg_ctx = unleash_yggdrasil::Context {
        user_id: Some(TARGETING_KEY.into()),
        properties: Some(HashMap::from([("email".to_owned(), EMAIL.to_owned())])),
        ..unleash_yggdrasil::Context::default()
    };

    // Sanity: every engine agrees the flags exist and evaluate, so no engine is timed on an
    // early error path.
    for (_, key) in CASES {
        assert!(
            ours.resolve_bool(key, &ctx, false, 0).error.is_none(),
            "{key}"
        );
        assert!(flagd.evaluate(key, &flagd_ctx).is_some(), "{key}");
        assert!(
            ygg.list_known_toggles().iter().any(|t| t.name == key),
            "{key}"
        );
    }

    // The SDK over the same document, to show what its public API adds to flag-core.
    let sdk = flag_sdk::FlagClient::builder()
        .bootstrap_document(flagd_document())
        .build()
        .expect("fixture bootstraps");
    let sdk_context = flag_sdk::EvaluationContext::new(TARGETING_KEY).with("email", EMAIL);
    // The same with evaluation telemetry on, as a client with a server runs (an offline client
    // does not count): what counting adds per call (issue 19's target: at most 2 ns).
    let counted = flag_sdk::FlagClient::builder()
        .bootstrap_document(flagd_document())
        .usage_reporting(true)
        .build()
        .expect("fixture bootstraps");

    let mut group = c.benchmark_group("eval");
    for (case, key) in CASES {
        group.bench_function(format!("{case}/flag-sdk"), |b| {
            b.iter(|| black_box(sdk.bool_value(black_box(key), black_box(&sdk_context), false)));
        });
        // Through a handle (`FlagClient::flag`): the key looked up once per snapshot.
        let handle = sdk.flag(key);
        group.bench_function(format!("{case}/flag-sdk-handle"), |b| {
            b.iter(|| black_box(handle.bool_value(black_box(&sdk_context), false)));
        });
        group.bench_function(format!("{case}/flag-sdk-counted"), |b| {
            b.iter(|| {
                black_box(counted.bool_value(black_box(key), black_box(&sdk_context), false))
            });
        });
        let counted_handle = counted.flag(key);
        group.bench_function(format!("{case}/flag-sdk-handle-counted"), |b| {
            b.iter(|| black_box(counted_handle.bool_value(black_box(&sdk_context), false)));
        });
        group.bench_function(format!("{case}/flag-core"), |b| {
            b.iter(|| {
                black_box(ours.resolve_bool(black_box(key), black_box(&ctx), false, 1_700_000_000));
            });
        });
        group.bench_function(format!("{case}/flagd-evaluation-engine"), |b| {
            b.iter(|| black_box(flagd.evaluate(black_box(key), black_box(&flagd_ctx))))
        });
        group.bench_function(format!("{case}/unleash-yggdrasil"), |b| {
            b.iter(|| black_box(ygg.is_enabled(black_box(key), black_box(&ygg_ctx), &None)))
        });
    }
    group.finish();
}

fn bulk_and_compile(c: &mut Criterion) {
    let thousand =
        CompiledFlagSet::compile(&FlagSet::from_value(&large_document(1_000)).expect("valid"))
            .expect("compiles");
    let ctx = our_context().with("appVersion", "1.20.3");
    c.bench_function("bulk/1000_flags/flag-core", |b| {
        b.iter(|| {
            let mut on = 0usize;
            for (_, resolution) in thousand.evaluate_all(black_box(&ctx), 1_700_000_000) {
                on += usize::from(resolution.value == Some(&Value::Bool(true)));
            }
            black_box(on)
        })
    });

    let ten_thousand = large_document(10_000);
    let text = ten_thousand.to_string();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10000_flags_from_json_text/flag-core", |b| {
        b.iter(|| black_box(CompiledFlagSet::from_json_str(black_box(&text)).expect("valid")))
    });
    group.bench_function("10000_flags_from_value/flag-core", |b| {
        b.iter_batched(
            || ten_thousand.clone(),
            |doc| black_box(CompiledFlagSet::compile_json_lenient(&doc)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("10000_flags_from_json_text/flagd-evaluation-engine", |b| {
        b.iter(|| {
            black_box(
                flagd_evaluation_engine::FlagParser::parse_string(black_box(&text))
                    .expect("parses"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, evaluation, bulk_and_compile);
criterion_main!(benches);
