//! The resolution table of DESIGN §3, row by row, through the public API.

use flag_core::{CompiledFlagSet, ErrorCode, EvaluationContext, FlagSet, Reason};
use serde_json::{Value, json};

fn flags() -> CompiledFlagSet {
    let doc = json!({
        "metadata": { "flagSetId": "checkout", "version": "7", "team": "set" },
        "flags": {
            "static-on": { "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on" },
            "disabled": {
                "state": "DISABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on",
                "targeting": { "if": [true, "on", "off"] }
            },
            "no-default": { "state": "ENABLED", "variants": { "on": true, "off": false } },
            "match": {
                "state": "ENABLED", "variants": { "red": "#f00", "blue": "#00f" }, "defaultVariant": "blue",
                "targeting": { "if": [{ "==": [{ "var": "color" }, "red"] }, "red", null] },
                "metadata": { "team": "flag", "owner": "payments" }
            },
            "null-no-default": {
                "state": "ENABLED", "variants": { "a": "A", "b": "B" },
                "targeting": { "if": [{ "var": "pick" }, "a", null] }
            },
            "bool-result": {
                "state": "ENABLED", "variants": { "true": 1, "false": 0 }, "defaultVariant": "false",
                "targeting": { "==": [{ "var": "tier" }, "gold"] }
            },
            "bool-result-no-variant": {
                "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
                "targeting": { "in": ["x", { "var": "tags" }] }
            },
            "dynamic-name": {
                "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
                "targeting": { "var": "choice" }
            },
            "ints": { "state": "ENABLED", "variants": { "one": 1.0, "half": 1.5 }, "defaultVariant": "one",
                "targeting": { "if": [{ "var": "half" }, "half", "one"] } },
            "object": { "state": "ENABLED", "variants": { "cfg": { "limit": 5 } }, "defaultVariant": "cfg" }
        }
    });
    let set = FlagSet::from_value(&doc).unwrap();
    CompiledFlagSet::compile(&set).unwrap()
}

fn ctx(attributes: Value) -> EvaluationContext {
    let Value::Object(map) = attributes else {
        panic!("context must be an object")
    };
    EvaluationContext::from_json(map)
}

/// One row: flag key, context, expected (value in the flag's type, variant, reason, error code).
#[track_caller]
fn check(
    key: &str,
    context: Value,
    value: Option<Value>,
    variant: Option<&str>,
    reason: Reason,
    error: Option<ErrorCode>,
) {
    let flags = flags();
    let resolution = flags.evaluate(key, &ctx(context.clone()), 0);
    assert_eq!(resolution.value.cloned(), value, "{key} {context}: value");
    assert_eq!(resolution.variant, variant, "{key} {context}: variant");
    assert_eq!(resolution.reason, reason, "{key} {context}: reason");
    assert_eq!(
        resolution.error.as_ref().map(|e| e.code),
        error,
        "{key} {context}: error {:?}",
        resolution.error
    );
}

#[test]
fn the_resolution_table() {
    use Reason::*;
    check(
        "nope",
        json!({}),
        None,
        None,
        Error,
        Some(ErrorCode::FlagNotFound),
    );
    check("disabled", json!({}), None, None, Disabled, None);
    check(
        "static-on",
        json!({}),
        Some(json!(true)),
        Some("on"),
        Static,
        None,
    );
    check("no-default", json!({}), None, None, Default, None);
    check(
        "match",
        json!({"color": "red"}),
        Some(json!("#f00")),
        Some("red"),
        TargetingMatch,
        None,
    );
    check(
        "match",
        json!({"color": "green"}),
        Some(json!("#00f")),
        Some("blue"),
        Default,
        None,
    );
    check("null-no-default", json!({}), None, None, Default, None);
    check(
        "bool-result",
        json!({"tier": "gold"}),
        Some(json!(1)),
        Some("true"),
        TargetingMatch,
        None,
    );
    check(
        "bool-result",
        json!({"tier": "tin"}),
        Some(json!(0)),
        Some("false"),
        TargetingMatch,
        None,
    );
    check(
        "bool-result-no-variant",
        json!({"tags": ["x"]}),
        None,
        None,
        Error,
        Some(ErrorCode::General),
    );
    check(
        "dynamic-name",
        json!({"choice": "on"}),
        Some(json!(true)),
        Some("on"),
        TargetingMatch,
        None,
    );
    check(
        "dynamic-name",
        json!({"choice": "onn"}),
        None,
        None,
        Error,
        Some(ErrorCode::General),
    );
    check(
        "dynamic-name",
        json!({"choice": 5}),
        None,
        None,
        Error,
        Some(ErrorCode::General),
    );
    check(
        "dynamic-name",
        json!({}),
        Some(json!(false)),
        Some("off"),
        Default,
        None,
    );
}

#[test]
fn typed_resolution_and_type_mismatch() {
    let flags = flags();
    let anyone = EvaluationContext::new("u");
    let ok = flags.resolve_bool("static-on", &anyone, false, 0);
    assert_eq!(
        (ok.value, ok.variant, ok.reason),
        (true, Some("on"), Reason::Static)
    );

    let mismatch = flags.resolve_string("static-on", &anyone, "dflt", 0);
    assert_eq!(
        (mismatch.value, mismatch.variant, mismatch.reason),
        ("dflt", None, Reason::Error)
    );
    assert_eq!(
        mismatch.error.map(|e| e.code),
        Some(ErrorCode::TypeMismatch)
    );

    // An integer request for 1.0 succeeds; for 1.5 it is a type mismatch.
    let one = flags.resolve_int("ints", &anyone, 7, 0);
    assert_eq!((one.value, one.error), (1, None));
    let half = flags.resolve_int("ints", &anyone.clone().with("half", true), 7, 0);
    assert_eq!(
        (half.value, half.error.map(|e| e.code)),
        (7, Some(ErrorCode::TypeMismatch))
    );
    let half_float = flags.resolve_float("ints", &anyone.clone().with("half", true), 0.0, 0);
    assert_eq!(half_float.value, 1.5);

    let default = json!({});
    let object = flags.resolve_object("object", &anyone, &default, 0);
    assert_eq!(object.value, &json!({"limit": 5}));
    let not_object = flags.resolve_object("match", &anyone, &default, 0);
    assert_eq!(
        not_object.error.map(|e| e.code),
        Some(ErrorCode::TypeMismatch)
    );

    let disabled = flags.resolve_bool("disabled", &anyone, false, 0);
    assert_eq!(
        (disabled.value, disabled.reason, disabled.error),
        (false, Reason::Disabled, None)
    );
    let missing = flags.resolve_bool("nope", &anyone, true, 0);
    assert_eq!(
        (missing.value, missing.error.map(|e| e.code)),
        (true, Some(ErrorCode::FlagNotFound))
    );
}

#[test]
fn flag_metadata_overrides_set_metadata_key_by_key() {
    let flags = flags();
    let resolution = flags.evaluate("match", &EvaluationContext::new("u"), 0);
    let metadata = serde_json::to_value(resolution.metadata).unwrap();
    assert_eq!(
        metadata,
        json!({"flagSetId": "checkout", "version": "7", "team": "flag", "owner": "payments"})
    );
}

#[test]
fn evaluation_sees_flag_key_and_timestamp() {
    let doc = json!({"flags": {"timed": {
        "state": "ENABLED", "variants": {"before": "b", "after": "a"}, "defaultVariant": "before",
        "targeting": {"if": [{"and": [
            {">=": [{"var": "$flagd.timestamp"}, 1000]},
            {"==": [{"var": "$flagd.flagKey"}, "timed"]}
        ]}, "after", "before"]}
    }}});
    let flags = CompiledFlagSet::compile(&FlagSet::from_value(&doc).unwrap()).unwrap();
    let ctx = EvaluationContext::new("u").with("$flagd", json!({"timestamp": 5000}));
    assert_eq!(flags.resolve_string("timed", &ctx, "", 999).value, "b");
    assert_eq!(flags.resolve_string("timed", &ctx, "", 1000).value, "a");
}

#[test]
fn lenient_compile_isolates_a_broken_flag() {
    let doc = json!({"flags": {
        "good": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
        "bad-rule": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"frobnicate": [1]}},
        "bad-shape": {"state": "SOMETIMES", "variants": {"on": true}}
    }});
    let (flags, problems) = CompiledFlagSet::compile_json_lenient(&doc);
    assert_eq!(problems.len(), 2, "{problems:?}");
    let anyone = EvaluationContext::new("u");
    assert!(flags.resolve_bool("good", &anyone, false, 0).value);
    for key in ["bad-rule", "bad-shape"] {
        let broken = flags.resolve_bool(key, &anyone, false, 0);
        assert_eq!(
            (broken.value, broken.reason),
            (false, Reason::Error),
            "{key}"
        );
        let error = broken.error.unwrap();
        assert_eq!(error.code, ErrorCode::ParseError, "{key}");
        assert!(
            error.message.contains(&format!("flags.{key}")),
            "{key}: {}",
            error.message
        );
    }
    // Strict mode rejects the same document whole.
    let err = FlagSet::from_value(&doc).unwrap_err();
    assert_eq!(err.problems.len(), 2);
}

#[test]
fn bulk_evaluation_is_in_key_order() {
    let flags = flags();
    let anyone = EvaluationContext::new("u");
    let keys: Vec<&str> = flags.evaluate_all(&anyone, 0).map(|(key, _)| key).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), flags.len());
}

#[test]
fn a_constant_result_that_names_no_variant_is_a_general_error() {
    // A warning (flagd loads it): strict mode rejects it, default and lenient modes keep the flag
    // and only the contexts that reach the bad result get GENERAL, as in flagd.
    let doc = json!({"flags": {
        "typo": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"var": "beta"}, "onn", "off"]}},
        "bucket-typo": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["onn", 1], ["off", 0]]}}
    }});
    assert!(FlagSet::from_value(&doc).is_err());
    let loaded = CompiledFlagSet::load(&doc).unwrap();
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    let (flags, problems) = CompiledFlagSet::compile_json_lenient(&doc);
    assert_eq!(problems.len(), 2, "{problems:?}");
    let beta = EvaluationContext::new("u").with("beta", true);
    for compiled in [&loaded.compiled, &flags] {
        for (key, ctx) in [("typo", &beta), ("bucket-typo", &beta)] {
            let resolution = compiled.evaluate(key, ctx, 0);
            assert_eq!(resolution.reason, Reason::Error, "{key}");
            let error = resolution.error.unwrap();
            assert_eq!(error.code, ErrorCode::General, "{key}: {}", error.message);
        }
        // A context that does not reach the bad branch is served normally.
        let other = compiled.resolve_bool("typo", &EvaluationContext::new("u"), true, 0);
        assert_eq!((other.value, other.reason), (false, Reason::TargetingMatch));
    }
}

#[test]
fn incremental_changes_evaluate_exactly_like_a_full_compile() {
    let base = json!({"$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}},
    "metadata": {"flagSetId": "s"},
    "flags": {
        "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
              "targeting": {"if": [{"$ref": "staff"}, "on", {"fractional": [["on", 30], ["off", 70]]}]}},
        "b": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x"},
        "c": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
    }});
    let (set, compiled) = CompiledFlagSet::from_value(&base).unwrap();
    let new_a: flag_core::Flag = serde_json::from_value(
        json!({"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "on", "targeting": {"if": [{"$ref": "staff"}, "off", null]}}),
    )
    .unwrap();
    let new_d: flag_core::Flag =
        serde_json::from_value(json!({"state": "ENABLED", "variants": {"n": 1, "m": 2},
        "defaultVariant": "m", "targeting": {"fractional": [["n", 1], ["m", 1]]}}))
        .unwrap();
    let (incremental, problems) = compiled.with_changes(&[("a", &new_a), ("d", &new_d)], &["c"]);
    assert!(problems.is_empty(), "{problems:?}");

    let mut changed = set;
    changed.flags.insert("a".into(), new_a);
    changed.flags.insert("d".into(), new_d);
    changed.flags.remove("c");
    let full = CompiledFlagSet::compile(&changed).unwrap();
    assert_eq!(
        incremental.keys().collect::<Vec<_>>(),
        full.keys().collect::<Vec<_>>()
    );
    for i in 0..300 {
        let email = if i % 3 == 0 {
            format!("u{i}@example.com")
        } else {
            format!("u{i}@other.org")
        };
        let ctx = EvaluationContext::new(format!("user-{i}")).with("email", email);
        for key in ["a", "b", "c", "d", "missing"] {
            assert_eq!(
                incremental.evaluate(key, &ctx, 0),
                full.evaluate(key, &ctx, 0),
                "{key} for user-{i}"
            );
        }
    }
}

#[test]
fn a_flag_ref_evaluates_as_its_key_does_and_outlives_its_set() {
    let compiled = flags();
    let ctx = EvaluationContext::new("user-1").with("color", "red");
    for key in compiled.keys().map(str::to_owned).collect::<Vec<_>>() {
        let flag = compiled.flag_ref(&key).unwrap();
        assert_eq!(flag.key(), key);
        let by_key = compiled.evaluate_at(&key, &ctx, flag_core::Timestamp::At(1));
        let by_ref = flag.evaluate_at(&ctx, flag_core::Timestamp::At(1));
        assert_eq!(
            (
                by_ref.value,
                by_ref.variant,
                by_ref.reason,
                by_ref.error.map(|e| e.code)
            ),
            (
                by_key.value,
                by_key.variant,
                by_key.reason,
                by_key.error.map(|e| e.code)
            ),
            "{key}"
        );
        let typed = flag.resolve_at(&ctx, "fallback", flag_core::Timestamp::At(1));
        let expected = compiled.resolve_at(&key, &ctx, "fallback", flag_core::Timestamp::At(1));
        assert_eq!(
            (typed.value, typed.reason),
            (expected.value, expected.reason),
            "{key}"
        );
    }
    assert!(compiled.flag_ref("nope").is_none());
    // The reference keeps its flag alive after the set is gone.
    let kept = compiled.flag_ref("match").unwrap();
    drop(compiled);
    assert_eq!(
        kept.evaluate_at(&ctx, flag_core::Timestamp::At(1)).variant,
        Some("red")
    );
}
