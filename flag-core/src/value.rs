//! JsonLogic's view of JSON values: truthiness, JavaScript-style coercion, loose equality and
//! ordering.
//!
//! JsonLogic is defined by its JavaScript reference implementation, so these helpers follow the
//! ECMAScript abstract operations (`ToNumber`, `ToString`, `==`, `<`) closely enough for every
//! value JSON can hold.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

/// JsonLogic truthiness: `[]` is falsy, everything else follows JavaScript (`"0"` is truthy).
pub(crate) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

/// ECMAScript `ToNumber`. Objects and non-numeric strings give NaN.
pub(crate) fn to_number(value: &Value) -> f64 {
    match value {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => string_to_number(s),
        // An array converts through its string form: [] -> "" -> 0, [5] -> "5" -> 5.
        Value::Array(_) => string_to_number(&to_js_string(value)),
        Value::Object(_) => f64::NAN,
    }
}

/// ECMAScript `StringToNumber` for the forms JSON documents use (decimal, exponent, hex).
fn string_to_number(text: &str) -> f64 {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return 0.0;
    }
    if let Some(hex) = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        return u64::from_str_radix(hex, 16).map_or(f64::NAN, |n| n as f64);
    }
    match trimmed {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    // Rust also accepts "inf", "nan" and "infinity", which JavaScript does not.
    let body = trimmed.trim_start_matches(['+', '-']);
    if body.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return f64::NAN;
    }
    trimmed.parse::<f64>().unwrap_or(f64::NAN)
}

/// ECMAScript `ToString`, as `cat` and string comparisons see values.
pub(crate) fn to_js_string(value: &Value) -> Cow<'_, str> {
    match value {
        Value::Null => Cow::Borrowed("null"),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) => Cow::Owned(format_number(n)),
        Value::String(s) => Cow::Borrowed(s),
        Value::Array(items) => {
            // Array.prototype.join: null elements become empty strings.
            let parts: Vec<Cow<'_, str>> = items
                .iter()
                .map(|item| match item {
                    Value::Null => Cow::Borrowed(""),
                    other => to_js_string(other),
                })
                .collect();
            Cow::Owned(parts.join(","))
        }
        Value::Object(_) => Cow::Borrowed("[object Object]"),
    }
}

/// Formats a number as JavaScript does for the common cases: integral values without `.0`.
pub(crate) fn format_number(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    format_f64(n.as_f64().unwrap_or(f64::NAN))
}

pub(crate) fn format_f64(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if f == f.trunc() && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

/// A JSON number from an arithmetic result: integral values become integers (so `1 + 1`
/// serialises as `2`, not `2.0`); NaN and infinities, which JSON cannot hold, become null.
pub(crate) fn number_value(f: f64) -> Value {
    if f == f.trunc() && f.abs() < 9_007_199_254_740_992.0 {
        // Exactly representable integer: i64 keeps it exact and prints it without ".0".
        return Value::Number(Number::from(f as i64));
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Primitive form of a value for the abstract equality and relational algorithms: arrays and
/// objects become their string form, everything else stays as it is.
enum Primitive<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
}

fn to_primitive(value: &Value) -> Primitive<'_> {
    match value {
        Value::Null => Primitive::Null,
        Value::Bool(b) => Primitive::Bool(*b),
        Value::Number(n) => Primitive::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Primitive::String(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => Primitive::String(to_js_string(value)),
    }
}

fn primitive_number(p: &Primitive<'_>) -> f64 {
    match p {
        Primitive::Null => 0.0,
        Primitive::Bool(b) => f64::from(u8::from(*b)),
        Primitive::Number(n) => *n,
        Primitive::String(s) => string_to_number(s),
    }
}

/// JavaScript `==` (abstract equality).
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        // Two arrays or two objects are equal only when they are the same object, which two
        // JSON values never are.
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => false,
        _ => {
            let (pa, pb) = (to_primitive(a), to_primitive(b));
            match (&pa, &pb) {
                (Primitive::String(x), Primitive::String(y)) => x == y,
                _ => primitive_number(&pa) == primitive_number(&pb),
            }
        }
    }
}

/// JavaScript `===` (strict equality); arrays and objects are never strictly equal.
pub(crate) fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// JavaScript's relational comparison (`<`, `>`...): strings compare as strings when both are
/// strings, otherwise both sides become numbers. `None` means "not comparable" (NaN involved),
/// for which every relational operator is false.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Value::Number(x), Value::Number(y)) = (a, b) {
        return x.as_f64()?.partial_cmp(&y.as_f64()?);
    }
    let (pa, pb) = (to_primitive(a), to_primitive(b));
    match (&pa, &pb) {
        (Primitive::String(x), Primitive::String(y)) => Some(x.as_ref().cmp(y.as_ref())),
        _ => primitive_number(&pa).partial_cmp(&primitive_number(&pb)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truthiness_follows_json_logic() {
        let cases = [
            (json!(null), false),
            (json!(0), false),
            (json!(0.0), false),
            (json!(""), false),
            (json!([]), false),
            (json!(false), false),
            (json!("0"), true),
            (json!([0]), true),
            (json!({}), true),
            (json!(-1), true),
            (json!("false"), true),
        ];
        for (value, expected) in cases {
            assert_eq!(truthy(&value), expected, "truthy({value})");
        }
    }

    #[test]
    fn to_number_follows_javascript() {
        let cases = [
            (json!("12"), 12.0),
            (json!(" 1.5 "), 1.5),
            (json!(""), 0.0),
            (json!(null), 0.0),
            (json!(true), 1.0),
            (json!("0x10"), 16.0),
            (json!([7]), 7.0),
            (json!([]), 0.0),
            (json!("1e3"), 1000.0),
        ];
        for (value, expected) in cases {
            assert_eq!(to_number(&value), expected, "to_number({value})");
        }
        for value in [
            json!("abc"),
            json!("inf"),
            json!("nan"),
            json!({}),
            json!([1, 2]),
        ] {
            assert!(
                to_number(&value).is_nan(),
                "to_number({value}) should be NaN"
            );
        }
    }

    #[test]
    fn loose_equality_table() {
        let cases = [
            (json!(1), json!("1"), true),
            (json!(0), json!(""), true),
            (json!(0), json!(false), true),
            (json!(1), json!(true), true),
            (json!("1"), json!(true), true),
            (json!(null), json!(0), false),
            (json!(null), json!(null), true),
            (json!("a"), json!("a"), true),
            (json!([1]), json!(1), true),
            (json!([1, 2]), json!("1,2"), true),
            (json!([]), json!([]), false),
            (json!("abc"), json!(0), false),
            (json!(1.0), json!(1), true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(loose_eq(&a, &b), expected, "{a} == {b}");
            assert_eq!(loose_eq(&b, &a), expected, "{b} == {a}");
        }
    }

    #[test]
    fn strict_equality_table() {
        assert!(strict_eq(&json!(1), &json!(1.0)));
        assert!(!strict_eq(&json!(1), &json!("1")));
        assert!(!strict_eq(&json!([]), &json!([])));
        assert!(strict_eq(&json!(null), &json!(null)));
    }

    #[test]
    fn comparison_table() {
        use Ordering::*;
        let cases = [
            (json!(1), json!(2), Some(Less)),
            (json!("10"), json!(9), Some(Greater)),
            (json!("10"), json!("9"), Some(Less)),
            (json!(null), json!(0), Some(Equal)),
            (json!("a"), json!(1), None),
            (json!(true), json!(0), Some(Greater)),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare(&a, &b), expected, "compare({a}, {b})");
        }
    }

    #[test]
    fn number_values_are_integers_when_integral() {
        assert_eq!(number_value(2.0), json!(2));
        assert_eq!(number_value(2.5), json!(2.5));
        assert_eq!(number_value(f64::NAN), Value::Null);
        assert_eq!(to_js_string(&json!(1.0)), "1");
        assert_eq!(to_js_string(&json!([1, null, "a"])), "1,,a");
    }
}
