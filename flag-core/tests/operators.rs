//! Data-driven tests of every JsonLogic operator and flagd custom operator, through the public
//! `evaluate_rule` entry point. Each row is `rule, data, expected result`.

use flag_core::{EvaluationContext, evaluate_rule};
use serde_json::{Value, json};

fn context(data: &Value) -> EvaluationContext {
    match data {
        Value::Object(object) => EvaluationContext::from_json(object.clone()),
        _ => EvaluationContext::anonymous(),
    }
}

#[track_caller]
fn check(rule: Value, data: Value, expected: Value) {
    let actual = evaluate_rule(&rule, &context(&data), "my-flag", 1_700_000_000)
        .unwrap_or_else(|err| panic!("{rule} should compile: {err}"));
    assert_eq!(actual, expected, "rule {rule} with data {data}");
}

#[track_caller]
fn check_table(rows: &[(Value, Value, Value)]) {
    for (rule, data, expected) in rows {
        check(rule.clone(), data.clone(), expected.clone());
    }
}

#[test]
fn var() {
    check_table(&[
        (json!({"var": "a"}), json!({"a": 1}), json!(1)),
        (json!({"var": ["a"]}), json!({"a": 1}), json!(1)),
        (
            json!({"var": "a.b.c"}),
            json!({"a": {"b": {"c": "deep"}}}),
            json!("deep"),
        ),
        (
            json!({"var": "list.1"}),
            json!({"list": ["x", "y"]}),
            json!("y"),
        ),
        (json!({"var": "missing"}), json!({"a": 1}), json!(null)),
        (
            json!({"var": ["missing", "fallback"]}),
            json!({}),
            json!("fallback"),
        ),
        (
            json!({"var": ["a", "fallback"]}),
            json!({"a": null}),
            json!(null),
        ),
        (json!({"var": "a.b"}), json!({"a": 5}), json!(null)),
        (
            json!({"var": "targetingKey"}),
            json!({"targetingKey": "u1"}),
            json!("u1"),
        ),
        (
            json!({"var": "$flagd.flagKey"}),
            json!({}),
            json!("my-flag"),
        ),
        (
            json!({"var": "$flagd.timestamp"}),
            json!({}),
            json!(1_700_000_000),
        ),
        // A user-supplied $flagd is overwritten by ours.
        (
            json!({"var": "$flagd.flagKey"}),
            json!({"$flagd": {"flagKey": "spoofed"}}),
            json!("my-flag"),
        ),
        (
            json!({"var": {"cat": ["a", "b"]}}),
            json!({"ab": 7}),
            json!(7),
        ),
        (
            json!({"var": ""}),
            json!({"x": 1}),
            json!({"x": 1, "$flagd": {"flagKey": "my-flag", "timestamp": 1_700_000_000}}),
        ),
    ]);
}

#[test]
fn missing_and_missing_some() {
    check_table(&[
        (
            json!({"missing": ["a", "b"]}),
            json!({"a": 1}),
            json!(["b"]),
        ),
        (
            json!({"missing": ["a", "b"]}),
            json!({"a": "", "b": null}),
            json!(["a", "b"]),
        ),
        (
            json!({"missing": [["a", "c"]]}),
            json!({"c": 1}),
            json!(["a"]),
        ),
        (
            json!({"missing": {"merge": ["a", ["b"]]}}),
            json!({}),
            json!(["a", "b"]),
        ),
        (
            json!({"missing_some": [1, ["a", "b"]]}),
            json!({"b": 1}),
            json!([]),
        ),
        (
            json!({"missing_some": [2, ["a", "b", "c"]]}),
            json!({"b": 1}),
            json!(["a", "c"]),
        ),
    ]);
}

#[test]
fn if_and_ternary() {
    check_table(&[
        (json!({"if": [true, "yes", "no"]}), json!({}), json!("yes")),
        (json!({"if": [false, "yes", "no"]}), json!({}), json!("no")),
        (
            json!({"if": [false, "a", false, "b", "c"]}),
            json!({}),
            json!("c"),
        ),
        (
            json!({"if": [false, "a", true, "b", "c"]}),
            json!({}),
            json!("b"),
        ),
        (json!({"if": [false, "a"]}), json!({}), json!(null)),
        (json!({"if": []}), json!({}), json!(null)),
        (json!({"if": ["only"]}), json!({}), json!("only")),
        (json!({"if": [[], "a", "b"]}), json!({}), json!("b")),
        (json!({"if": ["0", "a", "b"]}), json!({}), json!("a")),
        (
            json!({"?:": [{"var": "x"}, "a", "b"]}),
            json!({"x": 1}),
            json!("a"),
        ),
    ]);
}

#[test]
fn equality() {
    check_table(&[
        (json!({"==": [1, 1]}), json!({}), json!(true)),
        (json!({"==": [1, "1"]}), json!({}), json!(true)),
        (json!({"==": [0, false]}), json!({}), json!(true)),
        (json!({"==": [null, 0]}), json!({}), json!(false)),
        (
            json!({"==": [{"var": "n"}, "42"]}),
            json!({"n": 42}),
            json!(true),
        ),
        (json!({"===": [1, "1"]}), json!({}), json!(false)),
        (json!({"===": [1, 1.0]}), json!({}), json!(true)),
        (json!({"!=": [1, "1"]}), json!({}), json!(false)),
        (json!({"!=": ["a", "b"]}), json!({}), json!(true)),
        (json!({"!==": [1, "1"]}), json!({}), json!(true)),
    ]);
}

#[test]
fn comparisons_and_between() {
    check_table(&[
        (json!({">": [2, 1]}), json!({}), json!(true)),
        (json!({">": ["10", 9]}), json!({}), json!(true)),
        (json!({">": ["10", "9"]}), json!({}), json!(false)),
        (json!({">=": [1, 1]}), json!({}), json!(true)),
        (json!({"<": [1, 2]}), json!({}), json!(true)),
        (json!({"<": ["a", 1]}), json!({}), json!(false)),
        (json!({"<=": [2, 2]}), json!({}), json!(true)),
        (json!({"<": [1, 2, 3]}), json!({}), json!(true)),
        (json!({"<": [1, 1, 3]}), json!({}), json!(false)),
        (json!({"<": [1, 4, 3]}), json!({}), json!(false)),
        (json!({"<=": [1, 1, 3]}), json!({}), json!(true)),
        (
            json!({"<=": [1, {"var": "age"}, 65]}),
            json!({"age": 65}),
            json!(true),
        ),
        (
            json!({"<": [1, {"var": "age"}, 65]}),
            json!({"age": 65}),
            json!(false),
        ),
        (
            json!({">": [{"var": "missing"}, -1]}),
            json!({}),
            json!(true),
        ),
    ]);
}

#[test]
fn logic() {
    check_table(&[
        (json!({"!": [true]}), json!({}), json!(false)),
        (json!({"!": true}), json!({}), json!(false)),
        (json!({"!": [[]]}), json!({}), json!(true)),
        (json!({"!!": ["0"]}), json!({}), json!(true)),
        (json!({"!!": [0]}), json!({}), json!(false)),
        // and/or return the deciding operand, not a boolean.
        (json!({"and": [1, "a", 0, "b"]}), json!({}), json!(0)),
        (json!({"and": [1, "a"]}), json!({}), json!("a")),
        (json!({"or": [0, "", "x", "y"]}), json!({}), json!("x")),
        (json!({"or": [0, false]}), json!({}), json!(false)),
        (json!({"and": []}), json!({}), json!(null)),
        // Short-circuit: the unknown-var branch is never needed.
        (
            json!({"or": [true, {"var": "x.y.z"}]}),
            json!({}),
            json!(true),
        ),
    ]);
}

#[test]
fn arithmetic() {
    check_table(&[
        (json!({"+": [1, 2]}), json!({}), json!(3)),
        (json!({"+": [1, "2.5"]}), json!({}), json!(3.5)),
        (json!({"+": ["3"]}), json!({}), json!(3)),
        (json!({"+": []}), json!({}), json!(0)),
        (json!({"-": [5, 2]}), json!({}), json!(3)),
        (json!({"-": [2]}), json!({}), json!(-2)),
        (json!({"*": [2, "3"]}), json!({}), json!(6)),
        (json!({"/": [7, 2]}), json!({}), json!(3.5)),
        (json!({"/": [1, 0]}), json!({}), json!(null)),
        (json!({"%": [7, 3]}), json!({}), json!(1)),
        (json!({"%": [-7, 3]}), json!({}), json!(-1)),
        (json!({"max": [1, 3, 2]}), json!({}), json!(3)),
        (json!({"min": [1, "0", 2]}), json!({}), json!(0)),
        (json!({"max": []}), json!({}), json!(null)),
        (json!({"+": ["abc", 1]}), json!({}), json!(null)),
        (
            json!({"*": [{"var": "price"}, {"var": "qty"}]}),
            json!({"price": 2.5, "qty": 4}),
            json!(10),
        ),
    ]);
}

#[test]
fn strings_and_arrays() {
    check_table(&[
        (
            json!({"cat": ["a", 1, null, true]}),
            json!({}),
            json!("a1nulltrue"),
        ),
        (json!({"cat": ["v", 1.5]}), json!({}), json!("v1.5")),
        (
            json!({"substr": ["jsonlogic", 4]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", -5]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", 1, 3]}),
            json!({}),
            json!("son"),
        ),
        (
            json!({"substr": ["jsonlogic", 4, -2]}),
            json!({}),
            json!("log"),
        ),
        (json!({"substr": ["héllo", 1, 2]}), json!({}), json!("él")),
        (
            json!({"substr": ["abc", -9_223_372_036_854_775_807_i64, 9_223_372_036_854_775_807_i64]}),
            json!({}),
            json!("abc"),
        ),
        (
            json!({"substr": ["abc", 1, -9_223_372_036_854_775_807_i64]}),
            json!({}),
            json!(""),
        ),
        (
            json!({"merge": [[1, 2], 3, [[4]]]}),
            json!({}),
            json!([1, 2, 3, [4]]),
        ),
        (
            json!({"in": ["Spring", "Springfield"]}),
            json!({}),
            json!(true),
        ),
        (json!({"in": ["x", "Springfield"]}), json!({}), json!(false)),
        (json!({"in": ["b", ["a", "b"]]}), json!({}), json!(true)),
        (json!({"in": [1, ["1", 2]]}), json!({}), json!(false)),
        (json!({"in": ["a", null]}), json!({}), json!(false)),
        (
            json!({"in": [{"var": "k"}, ["x", "y"]]}),
            json!({"k": "y"}),
            json!(true),
        ),
    ]);
}

#[test]
fn in_against_a_large_constant_list_uses_the_same_semantics() {
    let list: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let rule = json!({"in": [{"var": "targetingKey"}, list]});
    check(
        rule.clone(),
        json!({"targetingKey": "user-42"}),
        json!(true),
    );
    check(
        rule.clone(),
        json!({"targetingKey": "user-420"}),
        json!(false),
    );
    check(rule.clone(), json!({"targetingKey": 42}), json!(false));
    check(rule, json!({}), json!(false));
}

#[test]
fn scoped_operators() {
    check_table(&[
        (
            json!({"map": [[1, 2, 3], {"*": [{"var": ""}, 2]}]}),
            json!({}),
            json!([2, 4, 6]),
        ),
        (
            json!({"map": [{"var": "xs"}, {"+": [{"var": ""}, 1]}]}),
            json!({"xs": [1, 2]}),
            json!([2, 3]),
        ),
        (
            json!({"map": [{"var": "none"}, {"var": ""}]}),
            json!({}),
            json!([]),
        ),
        (
            json!({"filter": [[1, 2, 3, 4], {"%": [{"var": ""}, 2]}]}),
            json!({}),
            json!([1, 3]),
        ),
        (
            json!({"all": [[1, 2], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"all": [[], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(false),
        ),
        (
            json!({"some": [[-1, 2], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"none": [[-1, -2], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]}),
            json!({}),
            json!(16),
        ),
        (
            json!({"some": [{"var": "roles"}, {"==": [{"var": "name"}, "admin"]}]}),
            json!({"roles": [{"name": "dev"}, {"name": "admin"}]}),
            json!(true),
        ),
    ]);
}

#[test]
fn starts_with_and_ends_with() {
    check_table(&[
        (
            json!({"starts_with": [{"var": "email"}, "admin"]}),
            json!({"email": "admin@x.io"}),
            json!(true),
        ),
        (
            json!({"starts_with": [{"var": "email"}, "Admin"]}),
            json!({"email": "admin@x.io"}),
            json!(false),
        ),
        (
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
            json!({"email": "a@example.com"}),
            json!(true),
        ),
        (
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
            json!({"email": "a@example.org"}),
            json!(false),
        ),
        // Non-strings (after evaluation) give null, never an error.
        (
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
            json!({}),
            json!(null),
        ),
        (json!({"starts_with": [5, "5"]}), json!({}), json!(null)),
    ]);
}

#[test]
fn sem_ver() {
    check_table(&[
        (
            json!({"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}),
            json!({"v": "1.10.0"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "<", "1.2.0"]}),
            json!({"v": "v1.1.9"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "=", "1.2"]}),
            json!({"v": "1.2.0+build"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "<", "1.0.0"]}),
            json!({"v": "1.0.0-rc.1"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "^", "2.0.0"]}),
            json!({"v": "2.9.1"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "~", "2.1.0"]}),
            json!({"v": "2.2.0"}),
            json!(false),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, ">", 1]}),
            json!({"v": 1.5}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, ">", "1.0.0"]}),
            json!({"v": "not-a-version"}),
            json!(null),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, ">", "1.0.0"]}),
            json!({}),
            json!(null),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}),
            json!({"v": "2.0.0", "op": "=>"}),
            json!(null),
        ),
    ]);
}

#[test]
fn fractional_picks_the_bucket_flagd_picks() {
    // Hashes from flagd's tests: "ejOoVL" hashes to 0 and "ceQdGm" to u32::MAX, so with a
    // constant bucketBy they land in the first and the last bucket whatever the weights.
    check_table(&[
        (
            json!({"fractional": ["ejOoVL", ["a", 1], ["b", 99]]}),
            json!({}),
            json!("a"),
        ),
        (
            json!({"fractional": ["ceQdGm", ["a", 99], ["b", 1]]}),
            json!({}),
            json!("b"),
        ),
        // "SI7p-" hashes to 2^31 - 1: just below the middle.
        (
            json!({"fractional": ["SI7p-", ["a", 50], ["b", 50]]}),
            json!({}),
            json!("a"),
        ),
        (
            json!({"fractional": ["6LvT0", ["a", 50], ["b", 50]]}),
            json!({}),
            json!("b"),
        ),
        // A default weight of 1.
        (
            json!({"fractional": ["6LvT0", ["a"], ["b"]]}),
            json!({}),
            json!("b"),
        ),
        // Variant names computed by rules.
        (
            json!({"fractional": ["ejOoVL", [{"cat": ["o", "n"]}, 1], ["off", 1]]}),
            json!({}),
            json!("on"),
        ),
        // Bucket by an attribute.
        (
            json!({"fractional": [{"var": "org"}, ["a", 1], ["b", 1]]}),
            json!({"org": "ejOoVL"}),
            json!("a"),
        ),
        // A bucketBy rule evaluating to null falls back to flagKey + targetingKey.
        (
            json!({"fractional": [{"var": "org"}, ["a", 1], ["b", 0]]}),
            json!({"targetingKey": "u"}),
            json!("a"),
        ),
    ]);
}

#[test]
fn fractional_gives_null_when_it_cannot_bucket() {
    check_table(&[
        // No targeting key and no bucketBy.
        (
            json!({"fractional": [["a", 1], ["b", 1]]}),
            json!({}),
            json!(null),
        ),
        (
            json!({"fractional": [["a", 1], ["b", 1]]}),
            json!({"targetingKey": ""}),
            json!(null),
        ),
        (
            json!({"fractional": [["a", 1], ["b", 1]]}),
            json!({"targetingKey": 7}),
            json!(null),
        ),
        // Total weight zero.
        (
            json!({"fractional": ["x", ["a", 0], ["b", 0]]}),
            json!({}),
            json!(null),
        ),
        // Negative weights count as zero.
        (
            json!({"fractional": ["ejOoVL", ["a", -5], ["b", 1]]}),
            json!({}),
            json!("b"),
        ),
        // A computed weight that is not a whole number.
        (
            json!({"fractional": ["x", ["a", {"var": "w"}], ["b", 1]]}),
            json!({"w": 0.5}),
            json!(null),
        ),
        (
            json!({"fractional": ["x", ["a", {"var": "w"}], ["b", 1]]}),
            json!({"w": "1"}),
            json!(null),
        ),
    ]);
}

#[test]
fn fractional_hashes_flag_key_and_targeting_key_concatenated() {
    // With flag key "my-flag", the hashed string is "my-flag" + targetingKey; check against the
    // same string passed as an explicit bucketBy.
    for user in ["alice", "bob", "u-1", "0123456789abcdef", "ü"] {
        let implicit = evaluate_rule(
            &json!({"fractional": [["a", 1], ["b", 1], ["c", 1]]}),
            &EvaluationContext::new(user),
            "my-flag",
            0,
        )
        .unwrap();
        let explicit = evaluate_rule(
            &json!({"fractional": [format!("my-flag{user}"), ["a", 1], ["b", 1], ["c", 1]]}),
            &EvaluationContext::anonymous(),
            "ignored",
            0,
        )
        .unwrap();
        assert_eq!(implicit, explicit, "user {user}");
    }
}
