//! The flagd conformance table (`data/conformance/`), evaluated by flag-core directly. The same
//! rows run against the real server over OFREP (`flagd-server/tests/live.rs`) and through
//! `flagctl eval --file` (`tests/tests/e2e.rs`): all three must agree row for row.

use flag_core::{CompiledFlagSet, EvaluationContext, ProblemCode};
use flag_protocol::OfrepEvaluation;
use serde_json::{Value, json};

const FLAGS: &str = include_str!("data/conformance/flags.json");
const CASES: &str = include_str!("data/conformance/cases.json");

#[test]
fn every_row_evaluates_as_flagd_does() {
    let document: Value = serde_json::from_str(FLAGS).unwrap();
    let loaded = CompiledFlagSet::load(&document).expect("a document flagd loads, we load");
    let cases: Value = serde_json::from_str(CASES).unwrap();
    let rows = cases["rows"].as_array().unwrap();
    assert!(rows.len() >= 60, "the table has {} rows", rows.len());
    let mut failures = Vec::new();
    for row in rows {
        let key = row["flag"].as_str().unwrap();
        let ctx = EvaluationContext::from_json(row["context"].as_object().cloned().unwrap());
        let resolution = loaded.compiled.evaluate(key, &ctx, 1_800_000_000);
        let answer = OfrepEvaluation::from_resolution(key, &resolution);
        let mut expected = row["expect"].as_object().cloned().unwrap();
        expected.insert("key".to_owned(), json!(key));
        let expected: OfrepEvaluation = serde_json::from_value(Value::Object(expected)).unwrap();
        if let Some(problem) = answer.difference(&expected) {
            failures.push(format!("{key} {}: {problem}", row["context"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The document mixes valid and broken flags: it loads, each broken flag is reported once as a
/// warning with its code, and the valid flags have none.
#[test]
fn the_broken_flags_are_warnings_with_their_codes() {
    let document: Value = serde_json::from_str(FLAGS).unwrap();
    let loaded = CompiledFlagSet::load(&document).unwrap();
    let warned = |flag: &str, code: ProblemCode| {
        loaded.warnings.iter().any(|w| {
            w.code == code
                && (w.path.starts_with(&format!("flags.{flag}."))
                    || w.path.starts_with(&format!("flags[{}]", json!(flag))))
        })
    };
    let expected = [
        ("error-targeting-flag", ProblemCode::UnknownOperator),
        ("unknown-operator-flag", ProblemCode::UnknownOperator),
        ("disabled-broken-flag", ProblemCode::UnknownOperator),
        ("missing-variant-targeting-flag", ProblemCode::NotAVariant),
        ("unreached-missing-variant-flag", ProblemCode::NotAVariant),
        (
            "ref-to-nonexistent-evaluator-flag",
            ProblemCode::UnresolvedRef,
        ),
        ("starts-ends-flag", ProblemCode::NotAVariant),
        ("starts-with-wrong-args-flag", ProblemCode::Arity),
        ("ends-with-wrong-args-flag", ProblemCode::Arity),
        ("semver-wrong-args-flag", ProblemCode::Arity),
        ("semver-invalid-operator-flag", ProblemCode::InvalidSemver),
        (
            "equal-greater-lesser-version-flag",
            ProblemCode::InvalidSemver,
        ),
        ("fractional-zero-weights-flag", ProblemCode::Weights),
    ];
    for (flag, code) in expected {
        assert!(
            warned(flag, code),
            "{flag}: no {code} warning in {:#?}",
            loaded.warnings
        );
    }
    for warning in &loaded.warnings {
        assert!(
            expected.iter().any(|(flag, _)| warning.path.contains(flag)),
            "unexpected warning {warning}"
        );
    }
    // Strict mode refuses the same document, naming every warning.
    let strict = CompiledFlagSet::load(&document)
        .unwrap()
        .strict()
        .unwrap_err();
    assert_eq!(strict.problems.len(), loaded.warnings.len());
}
