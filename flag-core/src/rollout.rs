//! Reading and setting a flag's percentage rollout.
//!
//! A rollout written here is always `{"fractional": [["on", w], ["off", 10000 - w]]}`: the "on"
//! bucket first and weights out of 10,000 (0.01 % steps). Because `fractional` maps a hash to
//! `hash * total >> 32` and walks buckets in order, "on" holds exactly the users whose hash is
//! below a threshold proportional to `w`; raising the percentage only raises the threshold, so a
//! user who is in at 10 % is still in at 20 %.
//!
//! The rollout replaces the *fallthrough* of the targeting: the whole rule when it is empty or a
//! top-level `fractional`, or the final `else` of an `if` chain (so targeting rules still win).
//! Anything else is refused rather than guessed at.

use serde_json::{Value, json};

use crate::model::Flag;

/// Rollout weights add up to this: 0.01 % steps.
pub const ROLLOUT_TOTAL_WEIGHT: u32 = 10_000;

/// Why a rollout could not be read or set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The percentage is outside 0..=100 or not a number.
    #[error("rollout percentage must be between 0 and 100, got {0}")]
    OutOfRange(f64),
    /// The percentage has more precision than 0.01 %.
    #[error("rollout percentage {0} is finer than the 0.01 % steps a rollout can express")]
    TooFine(f64),
    /// The flag lacks a variant the rollout needs.
    #[error("{0}")]
    Variants(String),
    /// The targeting cannot be edited without risking a change in meaning.
    #[error("targeting is too complex to edit safely ({0}); edit the targeting rule directly")]
    TooComplex(String),
}

/// Which variant is "on" (rolled out) and which is "off".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutVariants {
    /// The variant users in the rollout get.
    pub on: String,
    /// The variant everyone else gets.
    pub off: String,
}

/// A flag's current rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The share of users reaching the fallthrough who get `variants.on`, in percent.
    pub percentage: f64,
    /// The two variants.
    pub variants: RolloutVariants,
}

/// Where in the targeting the rollout lives.
enum Slot<'a> {
    /// Nothing there yet (no targeting, or an `if` chain without an `else`).
    Empty,
    /// A constant variant name (or null, the default variant).
    Constant(&'a Value),
    /// A `fractional` rule.
    Fractional(&'a [Value]),
}

fn find_slot(rule: Option<&Value>) -> Result<Slot<'_>, RolloutError> {
    let Some(rule) = rule else {
        return Ok(Slot::Empty);
    };
    match rule {
        Value::String(_) | Value::Null => Ok(Slot::Constant(rule)),
        Value::Object(object) if object.len() == 1 => {
            if let Some(Value::Array(args)) = object.get("fractional") {
                return Ok(Slot::Fractional(args));
            }
            if let Some(Value::Array(args)) = object.get("if").or_else(|| object.get("?:")) {
                if args.len() % 2 == 0 {
                    return Ok(Slot::Empty);
                }
                return find_slot(args.last());
            }
            let op = object.keys().next().map(String::as_str).unwrap_or_default();
            Err(RolloutError::TooComplex(format!(
                "the fallthrough is a {op:?} rule, not a variant or a fractional"
            )))
        }
        other => Err(RolloutError::TooComplex(format!(
            "the fallthrough is {other}"
        ))),
    }
}

/// A two-bucket fractional: an optional bucketBy and `[(name, weight); 2]`.
type TwoBuckets<'a> = (Option<&'a Value>, [(&'a str, u64); 2]);

/// Reads a two-bucket fractional.
fn parse_two_buckets(args: &[Value]) -> Result<TwoBuckets<'_>, RolloutError> {
    let (bucket_by, buckets) = match args.first() {
        Some(Value::Array(_)) => (None, args),
        Some(first) => (Some(first), &args[1..]),
        None => return Err(RolloutError::TooComplex("empty fractional".to_owned())),
    };
    fn parse(bucket: &Value) -> Option<(&str, u64)> {
        let parts = bucket.as_array()?;
        let name = parts.first()?.as_str()?;
        let weight = match parts.get(1) {
            None => 1,
            Some(w) => w.as_u64()?,
        };
        (parts.len() <= 2).then_some((name, weight))
    }
    match buckets {
        [a, b] => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok((bucket_by, [a, b])),
            _ => Err(RolloutError::TooComplex(
                "the fractional's buckets are computed by rules".to_owned(),
            )),
        },
        _ => Err(RolloutError::TooComplex(format!(
            "the fractional has {} buckets, not 2",
            buckets.len()
        ))),
    }
}

/// The variants a boolean flag rolls out: the one whose value is `true` is "on".
fn boolean_variants(flag: &Flag) -> Result<RolloutVariants, RolloutError> {
    let find = |wanted: bool| {
        flag.variants
            .iter()
            .find(|(_, v)| v.as_bool() == Some(wanted))
            .map(|(k, _)| k.clone())
    };
    match (find(true), find(false)) {
        (Some(on), Some(off)) => Ok(RolloutVariants { on, off }),
        _ => Err(RolloutError::Variants(
            "a rollout needs an \"on\" and an \"off\" variant: this flag has no true and false variants, so name them".to_owned(),
        )),
    }
}

/// The flag's current rollout: the share of users reaching the fallthrough who get "on".
///
/// `variants` names "on" and "off" for non-boolean flags; otherwise they come from an existing
/// two-bucket rollout or, for boolean flags, from the `true` and `false` variants.
pub fn current_rollout(
    flag: &Flag,
    variants: Option<&RolloutVariants>,
) -> Result<Rollout, RolloutError> {
    let slot = find_slot(flag.effective_targeting())?;
    if let Slot::Fractional(args) = slot {
        let (_, [(on, on_weight), (off, off_weight)]) = parse_two_buckets(args)?;
        let total = on_weight + off_weight;
        let percentage = if total == 0 {
            0.0
        } else {
            (on_weight as f64 * 100.0 / total as f64 * 100.0).round() / 100.0
        };
        let variants = variants.cloned().unwrap_or(RolloutVariants {
            on: on.to_owned(),
            off: off.to_owned(),
        });
        return Ok(Rollout {
            percentage,
            variants,
        });
    }
    let variants = match variants {
        Some(v) => v.clone(),
        None => boolean_variants(flag)?,
    };
    let served = match slot {
        Slot::Constant(Value::String(name)) => Some(name.as_str()),
        _ => flag.default_variant.as_deref(),
    };
    let percentage = if served == Some(variants.on.as_str()) {
        100.0
    } else {
        0.0
    };
    Ok(Rollout {
        percentage,
        variants,
    })
}

/// Sets the flag's rollout to `percentage` (0 to 100, in 0.01 steps), editing the targeting's
/// fallthrough in place.
pub fn set_rollout(
    flag: &mut Flag,
    percentage: f64,
    variants: Option<&RolloutVariants>,
) -> Result<(), RolloutError> {
    if !percentage.is_finite() || !(0.0..=100.0).contains(&percentage) {
        return Err(RolloutError::OutOfRange(percentage));
    }
    let scaled = percentage * 100.0;
    if (scaled - scaled.round()).abs() > 1e-6 {
        return Err(RolloutError::TooFine(percentage));
    }
    let on_weight = scaled.round() as u32;
    let (bucket_by, existing) = match find_slot(flag.effective_targeting())? {
        Slot::Fractional(args) => {
            let (bucket_by, [(on, _), (off, _)]) = parse_two_buckets(args)?;
            (
                bucket_by.cloned(),
                Some(RolloutVariants {
                    on: on.to_owned(),
                    off: off.to_owned(),
                }),
            )
        }
        Slot::Empty | Slot::Constant(_) => (None, None),
    };
    let variants = match (variants, existing) {
        (Some(v), _) => v.clone(),
        (None, Some(v)) => v,
        (None, None) => boolean_variants(flag)?,
    };
    for name in [&variants.on, &variants.off] {
        if !flag.variants.contains_key(name) {
            return Err(RolloutError::Variants(format!(
                "the flag has no variant {name:?}"
            )));
        }
    }
    let mut args = Vec::with_capacity(3);
    args.extend(bucket_by);
    args.push(json!([variants.on, on_weight]));
    args.push(json!([variants.off, ROLLOUT_TOTAL_WEIGHT - on_weight]));
    let rollout = json!({ "fractional": args });
    replace_slot(&mut flag.targeting, rollout);
    Ok(())
}

/// Puts `rollout` where [`find_slot`] found the fallthrough (which it checked is editable).
fn replace_slot(targeting: &mut Option<Value>, rollout: Value) {
    let is_chain = |rule: &Value| {
        rule.as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("if").or_else(|| o.get("?:")))
            .is_some_and(Value::is_array)
    };
    match targeting {
        Some(rule) if is_chain(rule) => {
            let mut current = rule;
            loop {
                let Some(Value::Array(args)) =
                    current.as_object_mut().and_then(|o| o.values_mut().next())
                else {
                    return;
                };
                if args.len() % 2 == 0 {
                    args.push(rollout);
                    return;
                }
                let Some(last) = args.last_mut() else { return };
                if is_chain(last) {
                    current = last;
                } else {
                    *last = rollout;
                    return;
                }
            }
        }
        _ => *targeting = Some(rollout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(targeting: Value) -> Flag {
        serde_json::from_value(json!({
            "state": "ENABLED",
            "variants": { "on": true, "off": false },
            "defaultVariant": "off",
            "targeting": targeting
        }))
        .unwrap()
    }

    #[test]
    fn sets_a_rollout_on_an_empty_targeting() {
        let mut f = flag(json!({}));
        set_rollout(&mut f, 12.5, None).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 1250], ["off", 8750]]}))
        );
        assert_eq!(current_rollout(&f, None).unwrap().percentage, 12.5);
    }

    #[test]
    fn replaces_only_the_fallthrough_of_an_if_chain() {
        let rule = json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]});
        let mut f = flag(rule);
        set_rollout(&mut f, 25.0, None).unwrap();
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on",
                {"fractional": [["on", 2500], ["off", 7500]]}]})
            )
        );
        set_rollout(&mut f, 50.0, None).unwrap();
        assert_eq!(current_rollout(&f, None).unwrap().percentage, 50.0);
    }

    #[test]
    fn appends_an_else_to_a_chain_without_one() {
        let mut f = flag(json!({"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]}));
        set_rollout(&mut f, 1.0, None).unwrap();
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"==": [{"var": "plan"}, "pro"]}, "on", {"fractional": [["on", 100], ["off", 9900]]}]})
            )
        );
    }

    #[test]
    fn keeps_a_bucket_by_expression() {
        let mut f = flag(json!({"fractional": [{"var": "org"}, ["on", 1], ["off", 1]]}));
        assert_eq!(current_rollout(&f, None).unwrap().percentage, 50.0);
        set_rollout(&mut f, 5.0, None).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [{"var": "org"}, ["on", 500], ["off", 9500]]}))
        );
    }

    #[test]
    fn reads_constant_fallthroughs() {
        assert_eq!(
            current_rollout(&flag(json!({})), None).unwrap().percentage,
            0.0
        );
        assert_eq!(
            current_rollout(&flag(json!({"if": [true, "off", "on"]})), None)
                .unwrap()
                .percentage,
            100.0
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let cases = [
            json!({"and": [true, "on"]}),
            json!({"fractional": [["a", 1], ["b", 1], ["c", 1]]}),
            json!({"if": [true, "on", {"in": ["a", "abc"]}]}),
        ];
        for rule in cases {
            let mut f = flag(rule.clone());
            let err = set_rollout(&mut f, 10.0, None).unwrap_err();
            assert!(matches!(err, RolloutError::TooComplex(_)), "{rule}: {err}");
            assert_eq!(f.targeting, Some(rule), "a refused edit changes nothing");
        }
    }

    #[test]
    fn rejects_bad_percentages() {
        let mut f = flag(json!({}));
        assert_eq!(
            set_rollout(&mut f, 100.5, None),
            Err(RolloutError::OutOfRange(100.5))
        );
        assert_eq!(
            set_rollout(&mut f, -1.0, None),
            Err(RolloutError::OutOfRange(-1.0))
        );
        assert!(matches!(
            set_rollout(&mut f, f64::NAN, None),
            Err(RolloutError::OutOfRange(_))
        ));
        assert_eq!(
            set_rollout(&mut f, 0.001, None),
            Err(RolloutError::TooFine(0.001))
        );
        assert_eq!(f.targeting, Some(json!({})));
    }

    #[test]
    fn non_boolean_flags_need_named_variants() {
        let mut f: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": { "blue": "b", "red": "r" }, "defaultVariant": "red"
        }))
        .unwrap();
        assert!(matches!(
            set_rollout(&mut f, 10.0, None),
            Err(RolloutError::Variants(_))
        ));
        let variants = RolloutVariants {
            on: "blue".into(),
            off: "red".into(),
        };
        set_rollout(&mut f, 10.0, Some(&variants)).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["blue", 1000], ["red", 9000]]}))
        );
        let unknown = RolloutVariants {
            on: "green".into(),
            off: "red".into(),
        };
        assert!(matches!(
            set_rollout(&mut f, 10.0, Some(&unknown)),
            Err(RolloutError::Variants(_))
        ));
    }
}
