//! The validation catalogue: every rule, with the JSON path and message it reports.

use flag_core::{FlagSet, MAX_RULE_DEPTH};
use serde_json::{Value, json};

/// Validates `doc` strictly and checks it fails with exactly these `(path, message fragment)`s.
#[track_caller]
fn check(doc: Value, expected: &[(&str, &str)]) {
    let err = FlagSet::from_value(&doc).expect_err("document should be invalid");
    let actual: Vec<(String, String)> = err
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    assert_eq!(actual.len(), expected.len(), "problems: {actual:#?}");
    for ((path, message), (want_path, want_fragment)) in actual.iter().zip(expected) {
        assert_eq!(path, want_path, "problems: {actual:#?}");
        assert!(
            message.contains(want_fragment),
            "{path}: {message:?} should contain {want_fragment:?}"
        );
    }
}

fn flag(extra: Value) -> Value {
    let mut base = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        base.extend(extra);
    }
    base
}

fn doc_with(key: &str, flag: Value) -> Value {
    json!({ "flags": { key: flag } })
}

#[test]
fn default_variant_must_be_a_variant() {
    check(
        doc_with("new-checkout", flag(json!({"defaultVariant": "of"}))),
        &[(
            "flags.new-checkout.defaultVariant",
            "\"of\" is not a variant (expected one of: off, on)",
        )],
    );
}

#[test]
fn variants_are_checked() {
    check(
        doc_with("f", flag(json!({"variants": {}, "defaultVariant": null}))),
        &[("flags.f.variants", "at least one variant")],
    );
    check(
        doc_with(
            "f",
            flag(json!({"variants": {"on": true, "blue": "b"}, "defaultVariant": "on"})),
        ),
        &[("flags.f.variants", "variants mix types")],
    );
    check(
        doc_with(
            "f",
            flag(json!({"variants": {"list": [1, 2]}, "defaultVariant": null})),
        ),
        &[(
            "flags.f.variants.list",
            "found an array (wrap an array in an object)",
        )],
    );
    check(
        doc_with(
            "f",
            flag(json!({"variants": {"nothing": null}, "defaultVariant": null})),
        ),
        &[("flags.f.variants.nothing", "found null")],
    );
}

#[test]
fn structural_errors_name_the_field() {
    check(
        doc_with("f", flag(json!({"state": "ON"}))),
        &[("flags.f.state", "unknown variant `ON`")],
    );
    check(
        doc_with("f", json!({"variants": {"on": true}})),
        &[("flags.f", "missing field `state`")],
    );
    check(
        doc_with("f", flag(json!({"varaints": {}}))),
        &[("flags.f.varaints", "unknown field \"varaints\" is ignored")],
    );
    check(
        doc_with("f", flag(json!({"metadata": {"owner": ["a"]}}))),
        &[("flags.f.metadata.owner", "string, number or boolean")],
    );
    check(
        json!({"flags": {}, "metadata": {"x": {}}}),
        &[("metadata.x", "string, number or boolean")],
    );
    check(
        json!({"flag": {}}),
        &[("flag", "unknown field \"flag\" is ignored")],
    );
    check(json!([1]), &[("", "must be a JSON object")]);
    check(
        json!({"flags": 5}),
        &[("flags", "must be an object of flags")],
    );
    check(
        json!({"flags": [{"state": "ENABLED"}]}),
        &[("flags[0]", "needs a string \"key\"")],
    );
}

#[test]
fn flag_keys_are_any_non_empty_string_up_to_the_cap() {
    for key in [
        "checkout/v2",
        "new checkout",
        "über-flag",
        "team:checkout",
        "-x",
        "a.b",
    ] {
        assert!(
            FlagSet::from_value(&doc_with(key, flag(json!({})))).is_ok(),
            "{key}"
        );
    }
    check(
        doc_with("", flag(json!({}))),
        &[(r#"flags[""]"#, "may not be empty")],
    );
    check(
        doc_with(&"k".repeat(257), flag(json!({}))),
        &[(&format!("flags.{}", "k".repeat(257)), "at most 256 bytes")],
    );
}

#[test]
fn unknown_operators_are_reported_with_a_hint() {
    check(
        doc_with(
            "f",
            flag(
                json!({"targeting": {"if": [{"ends_wth": [{"var": "email"}, "@x"]}, "on", "off"]}}),
            ),
        ),
        &[(
            "flags.f.targeting.if[0].ends_wth",
            "unknown operator \"ends_wth\" (did you mean \"ends_with\"?)",
        )],
    );
}

#[test]
fn custom_operator_arity() {
    let rule = |op: &str, args: Value| {
        doc_with(
            "f",
            flag(json!({"targeting": {"if": [{ op: args }, "on", "off"]}})),
        )
    };
    check(
        rule("starts_with", json!([{"var": "a"}])),
        &[("flags.f.targeting.if[0].starts_with", "exactly 2 arguments")],
    );
    check(
        rule("ends_with", json!(["a", "b", "c"])),
        &[("flags.f.targeting.if[0].ends_with", "exactly 2 arguments")],
    );
    check(
        rule("sem_ver", json!([{"var": "v"}, ">="])),
        &[("flags.f.targeting.if[0].sem_ver", "exactly 3 arguments")],
    );
    check(
        rule("sem_ver", json!([{"var": "v"}, "=>", "1.0.0"])),
        &[(
            "flags.f.targeting.if[0].sem_ver[1]",
            "not a sem_ver operator",
        )],
    );
    check(
        rule("sem_ver", json!([{"var": "v"}, ">=", "1.x"])),
        &[(
            "flags.f.targeting.if[0].sem_ver[2]",
            "not a semantic version",
        )],
    );
    check(
        doc_with("f", flag(json!({"targeting": {"fractional": []}}))),
        &[("flags.f.targeting.fractional", "at least one bucket")],
    );
}

#[test]
fn fractional_buckets_are_checked() {
    let rule = |args: Value| doc_with("f", flag(json!({"targeting": {"fractional": args}})));
    check(
        rule(json!([["on", 1.5], ["off", 1]])),
        &[("flags.f.targeting.fractional[0]", "whole number")],
    );
    check(
        rule(json!([["on", "50"], ["off", 1]])),
        &[("flags.f.targeting.fractional[0]", "must be a number")],
    );
    check(
        rule(json!([["on", 2147483647], ["off", 1]])),
        &[("flags.f.targeting.fractional", "add up to 2147483648")],
    );
    check(
        rule(json!([["on", 1], ["off", 1, 2]])),
        &[("flags.f.targeting.fractional[1]", "found 3 elements")],
    );
    check(
        rule(json!([["on", 1], 5])),
        &[("flags.f.targeting.fractional[1]", "must be an array")],
    );
    check(
        rule(json!([["on", 1], ["onn", 1]])),
        &[(
            "flags.f.targeting.fractional[1][0]",
            "\"onn\", which is not a variant",
        )],
    );
}

#[test]
fn targeting_results_must_name_variants() {
    check(
        doc_with(
            "f",
            flag(json!({"targeting": {"if": [{"var": "beta"}, "onn", "off"]}})),
        ),
        &[(
            "flags.f.targeting.if[1]",
            "\"onn\", which is not a variant (expected one of: off, on)",
        )],
    );
    check(
        doc_with(
            "f",
            flag(json!({"targeting": {"if": [{"var": "x"}, true, "off"]}})),
        ),
        &[("flags.f.targeting.if[1]", "no variant named \"true\"")],
    );
}

#[test]
fn refs_resolve_and_do_not_nest() {
    let targeting = json!({"if": [{"$ref": "internal"}, "on", "off"]});
    check(
        json!({"flags": {"f": flag(json!({"targeting": targeting}))}}),
        &[(
            "flags.f.targeting.if[0].$ref",
            "\"internal\" does not name an evaluator in $evaluators (none are defined)",
        )],
    );
    check(
        json!({"$evaluators": {"a": {"$ref": "b"}, "b": true}, "flags": {}}),
        &[("$evaluators.a.$ref", "may not reference another evaluator")],
    );
    check(
        json!({"$evaluators": {"broken": {"nope": []}}, "flags": {"f": flag(json!({"targeting": {"if": [{"$ref": "broken"}, "on", "off"]}}))}}),
        &[
            ("$evaluators.broken.nope", "unknown operator"),
            ("flags.f.targeting.if[0].$ref", "evaluator that has errors"),
        ],
    );
    // A constant result reached through $ref must name a variant too.
    check(
        json!({"$evaluators": {"pick": "onn"}, "flags": {"f": flag(json!({"targeting": {"$ref": "pick"}}))}}),
        &[(
            "flags.f.targeting",
            "\"onn\" (through $ref), which is not a variant",
        )],
    );
    // A valid reference compiles.
    let ok = json!({"$evaluators": {"internal": {"ends_with": [{"var": "email"}, "@example.com"]}},
        "flags": {"f": flag(json!({"targeting": {"if": [{"$ref": "internal"}, "on", "off"]}}))}});
    FlagSet::from_value(&ok).unwrap();
}

#[test]
fn nesting_is_limited() {
    let mut rule = json!({"var": "x"});
    for _ in 0..=MAX_RULE_DEPTH {
        rule = json!({"!": [rule]});
    }
    let doc = doc_with("f", flag(json!({"targeting": {"if": [rule, "on", "off"]}})));
    let err = FlagSet::from_value(&doc).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.problems[0]
            .message
            .contains("nested more than 64 levels"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let doc = json!({"flags": {
        "a": flag(json!({"defaultVariant": "x"})),
        "b": flag(json!({"targeting": {"nope": 1}})),
        "c": {"state": "ENABLED"}
    }});
    let err = FlagSet::from_value(&doc).unwrap_err();
    assert_eq!(err.problems.len(), 3, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("invalid flag definition (3 problems):"),
        "{text}"
    );
}

#[test]
fn invalid_json_is_a_problem_not_a_panic() {
    let err = FlagSet::from_json_str("{\"flags\": ").unwrap_err();
    assert!(
        err.problems[0].message.starts_with("not valid JSON"),
        "{err}"
    );
}

#[test]
fn numbers_that_cannot_be_kept_exactly_are_refused() {
    check(
        doc_with(
            "f",
            json!({"state": "ENABLED", "variants": {"big": 9_007_199_254_740_992_u64, "ok": 1}, "defaultVariant": "ok"}),
        ),
        &[("flags.f.variants.big", "outside the safe integer range")],
    );
    let thirty_digits: Value =
        serde_json::from_str(r#"{"flags": {"f": {"state": "ENABLED", "variants": {"big": 123456789012345678901234567890, "ok": 1}}}}"#)
            .unwrap();
    check(
        thirty_digits,
        &[("flags.f.variants.big", "outside the safe integer range")],
    );
    // The boundary itself and fractions are fine.
    assert!(
        FlagSet::from_value(&doc_with(
            "f",
            json!({"state": "ENABLED", "variants": {"max": 9_007_199_254_740_991_u64, "half": 0.5}, "defaultVariant": "max"})
        ))
        .is_ok()
    );
}

#[test]
fn variant_values_nest_at_most_the_limit() {
    let mut deep = json!(1);
    for _ in 0..=flag_core::MAX_VALUE_DEPTH {
        deep = json!({ "x": deep });
    }
    check(
        doc_with(
            "f",
            json!({"state": "ENABLED", "variants": {"deep": deep}, "defaultVariant": null}),
        ),
        &[("flags.f.variants.deep", "nested more than 32 levels")],
    );
    let mut ok = json!(1);
    for _ in 0..flag_core::MAX_VALUE_DEPTH {
        ok = json!({ "x": ok });
    }
    assert!(
        FlagSet::from_value(&doc_with(
            "f",
            json!({"state": "ENABLED", "variants": {"ok": ok}, "defaultVariant": null})
        ))
        .is_ok()
    );
}
