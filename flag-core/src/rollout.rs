//! Reading and setting a flag's percentage rollout.
//!
//! A rollout is the share of users reaching the targeting's *fallthrough* who get one variant,
//! the **rolled-out variant**. That variant is found by value, never by bucket position: for a
//! boolean flag it is the variant whose value is `true`; for other flags the caller names it.
//! The fallthrough is the whole rule when it is empty, a variant name or a `fractional`, or the
//! final `else` of an `if` chain (so targeting rules still win); a `$ref` on the way is inlined
//! into the flag, so editing one flag's rollout never changes another flag sharing the evaluator.
//!
//! # Stickiness
//!
//! `fractional` maps each user to a point of the bucket space `[0, total)` (`hash * total >> 32`)
//! and walks the buckets in order, so every bucket owns one interval. The rolled-out variant's
//! users form an arc of that space with one fixed end (the *anchor*); a new percentage only moves
//! the other end. So raising the percentage only adds users, lowering it only removes users, and
//! the users at a given percentage are always the same ones, whatever happened in between
//! (1 → 50 → 100 → 50 % gives the same users at both 50 %). The arc's orientation is read from
//! the buckets' order:
//! - the variant's bucket is last (and not first): the anchor is the end of the space and the
//!   arc grows backwards, taking users from the bucket before it (`[["off", 70], ["on", 30]]`);
//! - otherwise the anchor is the start of its bucket and the arc grows forwards, taking users
//!   from the buckets after it; past the end of the space it continues from the start, as a
//!   second bucket of the same variant at the front (`[["on", 10], ["a", 20], ["on", 70]]`).
//!
//! Buckets are never reordered and never dropped when they empty (a zero-weight bucket keeps its
//! place, which is what keeps the orientation), and weights are rescaled exactly (to the least
//! common multiple of the old total and 10,000) so no boundary moves. With three or more
//! variants, users outside the rolled-out variant stay outside it, but which of the other
//! variants they get can change when the percentage goes down again.
//!
//! # 0 % and 100 %
//!
//! A `fractional` fails for a context with nothing to bucket by (no targeting key), and flagd
//! then serves the default variant. At 100 % the rule becomes
//! `{"if": [{"var": "targetingKey"}, {"fractional": …}, "on"]}`, so such contexts get the
//! rolled-out variant too without the `fractional` ever being evaluated for them; at 0 %, when the
//! default variant is the rolled-out one, the other variant is the `else`. Plain JsonLogic, so
//! flagd evaluates it the same way, and the bucket list is kept for the way back down.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::Flag;
use crate::rule::{MAX_TOTAL_WEIGHT, weight_of};

/// Percentages are set in 0.01 % steps: weights out of this.
pub const ROLLOUT_TOTAL_WEIGHT: u64 = 10_000;

/// How deep `$ref`s may be followed on the way to the fallthrough (flagd allows none nested).
const MAX_REF_DEPTH: usize = 8;

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
    /// The rolled-out variant is unknown or ambiguous.
    #[error("{0}")]
    Variants(String),
    /// The variant named for the users outside the rollout is unknown or is the rolled-out one.
    #[error("{0}")]
    Others(String),
    /// The targeting cannot be edited without risking a change in meaning.
    #[error("targeting is too complex to edit safely ({0}); edit the targeting rule directly")]
    TooComplex(String),
}

/// An exact share of users: `weight` out of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The rolled-out variant's weight.
    pub weight: u64,
    /// The weight of all buckets (more than 0).
    pub total: u64,
}

impl Share {
    /// Everyone.
    pub const ALL: Share = Share {
        weight: ROLLOUT_TOTAL_WEIGHT,
        total: ROLLOUT_TOTAL_WEIGHT,
    };

    /// A percentage from 0 to 100 in 0.01 steps.
    pub fn from_percentage(percentage: f64) -> Result<Share, RolloutError> {
        if !percentage.is_finite() || !(0.0..=100.0).contains(&percentage) {
            return Err(RolloutError::OutOfRange(percentage));
        }
        let scaled = percentage * 100.0;
        let hundredths = scaled.round();
        if (scaled - hundredths).abs() > 1e-6 {
            return Err(RolloutError::TooFine(percentage));
        }
        // 0 <= hundredths <= 10,000, checked above.
        Ok(Share {
            weight: hundredths as u64,
            total: ROLLOUT_TOTAL_WEIGHT,
        })
    }

    /// The share in percent, rounded to 0.01.
    pub fn percentage(self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        // Both fit f64 exactly (total <= i32::MAX).
        (self.weight as f64 * 10_000.0 / self.total as f64).round() / 100.0
    }

    fn is_none(self) -> bool {
        self.weight == 0
    }

    fn is_all(self) -> bool {
        self.weight == self.total
    }
}

/// Which variant to roll out, and which one other users get when a bucket list is made anew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutVariants {
    /// The rolled-out variant. Default: a boolean flag's `true` variant.
    pub variant: Option<String>,
    /// What users outside the rollout get when the flag has no bucket list yet and nothing else
    /// says (default: what the fallthrough serves now, else a boolean flag's `false` variant).
    pub others: Option<String>,
}

impl RolloutVariants {
    /// Rolls out `variant`.
    pub fn of(variant: impl Into<String>) -> RolloutVariants {
        RolloutVariants {
            variant: Some(variant.into()),
            others: None,
        }
    }
}

/// A flag's current rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The share of users reaching the fallthrough who get `variant`, in percent (rounded to
    /// 0.01).
    pub percentage: f64,
    /// The exact share (restoring it restores exactly these users).
    pub share: Share,
    /// The rolled-out variant.
    pub variant: String,
}

/// The rolled-out variant: `requested` if given (it must exist), else a boolean flag's only
/// `true` variant.
pub fn rolled_out_variant(flag: &Flag, requested: Option<&str>) -> Result<String, RolloutError> {
    if let Some(name) = requested {
        if !flag.variants.contains_key(name) {
            return Err(RolloutError::Variants(format!(
                "the flag has no variant {name:?} (variants: {})",
                variant_list(flag)
            )));
        }
        return Ok(name.to_owned());
    }
    let on: Vec<&String> = flag
        .variants
        .iter()
        .filter(|(_, value)| value.as_bool() == Some(true))
        .map(|(name, _)| name)
        .collect();
    match on.as_slice() {
        [only] => Ok((*only).clone()),
        [] if flag.variants.values().all(Value::is_boolean) => Err(RolloutError::Variants(
            "the flag has no variant whose value is true: name the variant to roll out".to_owned(),
        )),
        [] => Err(RolloutError::Variants(format!(
            "the flag's variants are not booleans: name the variant to roll out (one of: {})",
            variant_list(flag)
        ))),
        several => Err(RolloutError::Variants(format!(
            "several variants are true ({}): name the variant to roll out",
            several
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn variant_list(flag: &Flag) -> String {
    flag.variants
        .keys()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The flag's current rollout of `variants.variant` (or the boolean default).
pub fn current_rollout(
    flag: &Flag,
    evaluators: &BTreeMap<String, Value>,
    variants: &RolloutVariants,
) -> Result<Rollout, RolloutError> {
    let variant = rolled_out_variant(flag, variants.variant.as_deref())?;
    let mut targeting = root_of(flag);
    let slot = classify(locate(&mut targeting, evaluators)?)?;
    let share = match slot {
        Slot::Served(served) => {
            let all =
                served.as_deref().or(flag.default_variant.as_deref()) == Some(variant.as_str());
            Share {
                weight: if all { ROLLOUT_TOTAL_WEIGHT } else { 0 },
                total: ROLLOUT_TOTAL_WEIGHT,
            }
        }
        Slot::Buckets(layout, fallback) => {
            let share = layout.share_of(&variant)?;
            check_fallback(fallback.as_deref(), share, &variant)?;
            share
        }
    };
    Ok(Rollout {
        percentage: share.percentage(),
        share,
        variant,
    })
}

/// Sets the flag's rollout to `percentage` (0 to 100, in 0.01 steps).
pub fn set_rollout(
    flag: &mut Flag,
    evaluators: &BTreeMap<String, Value>,
    percentage: f64,
    variants: &RolloutVariants,
) -> Result<(), RolloutError> {
    set_rollout_share(
        flag,
        evaluators,
        Share::from_percentage(percentage)?,
        variants,
    )
}

/// Sets the flag's rollout to an exact share (used to restore one read by [`current_rollout`]).
/// Changes nothing when it fails.
pub fn set_rollout_share(
    flag: &mut Flag,
    evaluators: &BTreeMap<String, Value>,
    share: Share,
    variants: &RolloutVariants,
) -> Result<(), RolloutError> {
    if share.total == 0 || share.total > MAX_TOTAL_WEIGHT || share.weight > share.total {
        return Err(RolloutError::TooComplex(format!(
            "a share of {} out of {} is not a valid rollout",
            share.weight, share.total
        )));
    }
    let variant = rolled_out_variant(flag, variants.variant.as_deref())?;
    let mut targeting = root_of(flag);
    let slot = locate(&mut targeting, evaluators)?;
    let layout = match classify(slot)? {
        Slot::Served(served) => {
            let served = served.or_else(|| flag.default_variant.clone());
            let serving_variant = served.as_deref() == Some(variant.as_str());
            if (serving_variant && share.is_all()) || (!serving_variant && share.is_none()) {
                // Already exact for everyone: nothing to write.
                return Ok(());
            }
            // An explicitly named variant for the others wins over what they are served now.
            let others = match (&variants.others, served.filter(|s| *s != variant)) {
                (Some(_), _) | (None, None) => other_variant(flag, &variant, variants)?,
                (None, Some(served)) => served,
            };
            let total = scale_total(ROLLOUT_TOTAL_WEIGHT, share.total)?;
            let mut layout = Layout {
                bucket_by: None,
                buckets: vec![
                    Bucket {
                        name: variant.clone(),
                        weight: if serving_variant { total } else { 0 },
                    },
                    Bucket {
                        name: others,
                        weight: if serving_variant { 0 } else { total },
                    },
                ],
            };
            layout.resize(&variant, share, || other_variant(flag, &variant, variants))?;
            layout
        }
        Slot::Buckets(mut layout, fallback) => {
            check_fallback(fallback.as_deref(), layout.share_of(&variant)?, &variant)?;
            if let Some(name) = &variants.others {
                check_others(flag, &variant, name)?;
                if !layout.buckets.iter().any(|b| &b.name == name) {
                    return Err(RolloutError::Others(format!(
                        "the flag already has a bucket list ({}); users outside the rollout keep the buckets they have, so {name:?} cannot be given to them: name one of those or leave otherVariant out",
                        layout
                            .buckets
                            .iter()
                            .map(|b| format!("{:?}", b.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            layout.resize(&variant, share, || other_variant(flag, &variant, variants))?;
            layout
        }
    };
    let default_is_variant = flag.default_variant.as_deref() == Some(variant.as_str());
    let fallback = if share.is_none() && default_is_variant {
        Some(other_variant(flag, &variant, variants).or_else(|_| layout.first_other(&variant))?)
    } else if share.is_all() && !default_is_variant {
        Some(variant)
    } else {
        None
    };
    *locate(&mut targeting, evaluators)? = layout.to_rule(fallback);
    flag.targeting = Some(targeting);
    Ok(())
}

/// The targeting as one value: `Null` when there is none.
fn root_of(flag: &Flag) -> Value {
    flag.effective_targeting().cloned().unwrap_or(Value::Null)
}

/// The variant users outside the rollout get when a bucket must be made for them.
fn other_variant(
    flag: &Flag,
    variant: &str,
    variants: &RolloutVariants,
) -> Result<String, RolloutError> {
    if let Some(name) = &variants.others {
        check_others(flag, variant, name)?;
        return Ok(name.clone());
    }
    let rolled_out_value = flag.variants.get(variant);
    if let Some(Value::Bool(on)) = rolled_out_value {
        let opposite = flag
            .variants
            .iter()
            .filter(|(_, value)| value.as_bool() == Some(!on))
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>();
        if let [only] = opposite.as_slice() {
            return Ok(only.clone());
        }
    }
    match &flag.default_variant {
        Some(default) if default != variant => Ok(default.clone()),
        _ => Err(RolloutError::Others(format!(
            "name the variant users outside the rollout of {variant:?} get (variants: {})",
            variant_list(flag)
        ))),
    }
}

/// The variant named for the users outside the rollout must exist and not be the rolled-out one.
fn check_others(flag: &Flag, variant: &str, name: &str) -> Result<(), RolloutError> {
    if name == variant || !flag.variants.contains_key(name) {
        return Err(RolloutError::Others(format!(
            "{name:?} cannot be the variant users outside the rollout of {variant:?} get (variants: {})",
            variant_list(flag)
        )));
    }
    Ok(())
}

/// An `or` fallback (what contexts without a targeting key get) is only one this module would
/// write: the rolled-out variant at 100 %, another variant at 0 %. Any other fallback serves
/// those contexts something a percentage cannot describe, so editing it could move them.
fn check_fallback(fallback: Option<&str>, share: Share, variant: &str) -> Result<(), RolloutError> {
    let consistent = match fallback {
        None => true,
        Some(name) if name == variant => share.is_all(),
        Some(_) => share.is_none(),
    };
    if consistent {
        Ok(())
    } else {
        Err(RolloutError::TooComplex(format!(
            "the fallthrough's \"or\" serves {:?} to contexts without a targeting key, which a percentage cannot describe",
            fallback.unwrap_or_default()
        )))
    }
}

/// Walks to the fallthrough, inlining `$ref`s and giving an `if` chain without an `else` an
/// explicit `null` one (the same meaning: the default variant).
fn locate<'a>(
    mut node: &'a mut Value,
    evaluators: &BTreeMap<String, Value>,
) -> Result<&'a mut Value, RolloutError> {
    let mut refs = 0;
    loop {
        if let Some(name) = single_key(node, "$ref").map(|r| r.as_str().map(str::to_owned)) {
            let name = name.ok_or_else(|| {
                RolloutError::TooComplex("the fallthrough is a $ref that is not a name".to_owned())
            })?;
            refs += 1;
            let evaluator = evaluators.get(&name).filter(|_| refs <= MAX_REF_DEPTH);
            let Some(evaluator) = evaluator else {
                return Err(RolloutError::TooComplex(format!(
                    "the fallthrough is {{\"$ref\": {name:?}}}, which names no evaluator"
                )));
            };
            *node = evaluator.clone();
            continue;
        }
        if keyless_guard(node).is_some() {
            return Ok(node);
        }
        let is_chain = node.as_object().is_some_and(|object| {
            object.len() == 1
                && object
                    .get("if")
                    .or_else(|| object.get("?:"))
                    .is_some_and(Value::is_array)
        });
        if !is_chain {
            return Ok(node);
        }
        let Some(Value::Array(args)) = node.as_object_mut().and_then(|o| o.values_mut().next())
        else {
            return Err(RolloutError::TooComplex(
                "an if without arguments".to_owned(),
            ));
        };
        if args.len() % 2 == 0 {
            args.push(Value::Null);
        }
        node = match args.last_mut() {
            Some(last) => last,
            None => return Err(RolloutError::TooComplex("an empty if".to_owned())),
        };
    }
}

/// The form written at 0 and 100 %: `{"if": [{"var": "targetingKey"}, {"fractional": args},
/// "fallback"]}`, as the `fractional`'s arguments and the fallback.
fn keyless_guard(node: &Value) -> Option<(&Value, &str)> {
    let Some(Value::Array(args)) = single_key(node, "if") else {
        return None;
    };
    let [condition, fractional, Value::String(fallback)] = args.as_slice() else {
        return None;
    };
    let key = single_key(condition, "var")?;
    let names_key = key.as_str() == Some(crate::TARGETING_KEY)
        || key.as_array().is_some_and(|a| {
            a.len() == 1 && a.first().and_then(Value::as_str) == Some(crate::TARGETING_KEY)
        });
    let inner = single_key(fractional, "fractional")?;
    names_key.then_some((inner, fallback.as_str()))
}

/// `object[key]` when `node` is an object with that one key.
fn single_key<'a>(node: &'a Value, key: &str) -> Option<&'a Value> {
    node.as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.get(key))
}

/// What the fallthrough is.
enum Slot {
    /// A constant: a variant name, or null (the default variant).
    Served(Option<String>),
    /// A `fractional` with constant buckets, and the fallback of our `or` wrapper, if any.
    Buckets(Layout, Option<String>),
}

fn classify(node: &Value) -> Result<Slot, RolloutError> {
    match node {
        Value::Null => Ok(Slot::Served(None)),
        Value::String(name) => Ok(Slot::Served(Some(name.clone()))),
        Value::Object(_) => {
            if let Some(args) = single_key(node, "fractional") {
                return Layout::parse(args).map(|layout| Slot::Buckets(layout, None));
            }
            if let Some((inner, fallback)) = keyless_guard(node) {
                return Layout::parse(inner)
                    .map(|layout| Slot::Buckets(layout, Some(fallback.to_owned())));
            }
            let op = node
                .as_object()
                .and_then(|o| o.keys().next())
                .map_or("", String::as_str);
            Err(RolloutError::TooComplex(format!(
                "the fallthrough is a {op:?} rule, not a variant or a fractional"
            )))
        }
        other => Err(RolloutError::TooComplex(format!(
            "the fallthrough is {other}"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Bucket {
    name: String,
    weight: u64,
}

/// A `fractional` with constant buckets.
#[derive(Debug, Clone)]
struct Layout {
    bucket_by: Option<Value>,
    buckets: Vec<Bucket>,
}

/// How the rolled-out variant's arc lies in the bucket list (see the module docs).
enum Orientation {
    /// Its one bucket is last: the anchor is the end, the arc grows backwards.
    Backward { main: usize },
    /// The anchor is the start of `main`; the arc grows forwards, and past the end continues
    /// in `head`, the first bucket.
    Forward { main: usize, head: Option<usize> },
}

impl Layout {
    fn parse(args: &Value) -> Result<Layout, RolloutError> {
        let Value::Array(items) = args else {
            return Err(RolloutError::TooComplex(
                "the fractional's arguments are not an array".to_owned(),
            ));
        };
        let (bucket_by, buckets) = match items.first() {
            Some(Value::Array(_)) => (None, items.as_slice()),
            Some(first) => (Some(first.clone()), &items[1..]),
            None => return Err(RolloutError::TooComplex("an empty fractional".to_owned())),
        };
        // A bucketBy is kept as it is: it must be one whose value is the text hashed (a string,
        // null, `var` or `cat`), not a rule that could evaluate to something else (an array
        // would be read as one more bucket).
        let plain_bucket_by = match &bucket_by {
            None | Some(Value::Null | Value::String(_)) => true,
            Some(rule) => single_key(rule, "var").is_some() || single_key(rule, "cat").is_some(),
        };
        if !plain_bucket_by {
            return Err(RolloutError::TooComplex(
                "the fractional's bucketBy is a computed rule; use a var or cat".to_owned(),
            ));
        }
        let buckets = buckets
            .iter()
            .map(|bucket| {
                let parts = bucket.as_array()?;
                let name = parts.first()?.as_str()?.to_owned();
                let weight = match parts.get(1) {
                    None | Some(Value::Null) => 1,
                    Some(weight) => weight_of(weight.as_f64()?)?,
                };
                (parts.len() <= 2).then_some(Bucket { name, weight })
            })
            .collect::<Option<Vec<Bucket>>>()
            .ok_or_else(|| {
                RolloutError::TooComplex(
                    "the fractional's buckets are computed by rules, not constant".to_owned(),
                )
            })?;
        let layout = Layout { bucket_by, buckets };
        let total = layout.total();
        if total == 0 || total > MAX_TOTAL_WEIGHT {
            return Err(RolloutError::TooComplex(format!(
                "the fractional's weights add up to {total}, so it serves no bucket"
            )));
        }
        Ok(layout)
    }

    fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.weight).sum()
    }

    fn share_of(&self, variant: &str) -> Result<Share, RolloutError> {
        let weight = self
            .buckets
            .iter()
            .filter(|b| b.name == variant)
            .map(|b| b.weight)
            .sum();
        Ok(Share {
            weight,
            total: self.total(),
        })
    }

    fn first_other(&self, variant: &str) -> Result<String, RolloutError> {
        self.buckets
            .iter()
            .find(|b| b.name != variant)
            .map(|b| b.name.clone())
            .ok_or_else(|| {
                RolloutError::Others(format!(
                    "name the variant users outside the rollout of {variant:?} get"
                ))
            })
    }

    /// Rescales every weight by `factor` (exact: no boundary moves).
    fn scale(&mut self, factor: u64) {
        for bucket in &mut self.buckets {
            bucket.weight *= factor;
        }
    }

    /// Merges touching buckets of `variant` and drops its empty extra buckets: neither moves a
    /// user.
    fn tidy(&mut self, variant: &str) {
        self.buckets.dedup_by(|next, previous| {
            let same = next.name == variant && previous.name == variant;
            if same {
                previous.weight += next.weight;
            }
            same
        });
        let of_variant = self.buckets.iter().filter(|b| b.name == variant).count();
        let positive = self
            .buckets
            .iter()
            .filter(|b| b.name == variant && b.weight > 0)
            .count();
        if of_variant > 1 {
            if positive > 0 {
                self.buckets.retain(|b| b.name != variant || b.weight > 0);
            } else {
                // Keep only the last empty one: it says where the arc starts.
                let last = self.buckets.iter().rposition(|b| b.name == variant);
                let mut index = 0;
                self.buckets.retain(|b| {
                    let keep = b.name != variant || Some(index) == last;
                    index += 1;
                    keep
                });
            }
        }
    }

    fn orientation(&self, variant: &str) -> Result<Orientation, RolloutError> {
        let at: Vec<usize> = (0..self.buckets.len())
            .filter(|&i| self.buckets[i].name == variant)
            .collect();
        let last = self.buckets.len() - 1;
        match at.as_slice() {
            [main] if *main == last && *main > 0 => Ok(Orientation::Backward { main: *main }),
            [main] => Ok(Orientation::Forward {
                main: *main,
                head: None,
            }),
            [0, main] if self.buckets[main + 1..].iter().all(|b| b.weight == 0) => {
                Ok(Orientation::Forward {
                    main: *main,
                    head: Some(0),
                })
            }
            _ => Err(RolloutError::TooComplex(format!(
                "variant {variant:?} holds {} separate ranges of the bucket space, so no percentage change can keep every user sticky",
                at.len()
            ))),
        }
    }

    /// Gives `variant` exactly `share` of the users, moving only the arc's free end.
    fn resize(
        &mut self,
        variant: &str,
        share: Share,
        others: impl Fn() -> Result<String, RolloutError>,
    ) -> Result<(), RolloutError> {
        let total = scale_total(self.total(), share.total)?;
        self.scale(total / self.total());
        let target = share.weight * (total / share.total);
        if !self.buckets.iter().any(|b| b.name == variant) {
            // A new variant starts empty at the end: it grows backwards from there.
            self.buckets.push(Bucket {
                name: variant.to_owned(),
                weight: 0,
            });
        }
        self.tidy(variant);
        let current: u64 = self
            .buckets
            .iter()
            .filter(|b| b.name == variant)
            .map(|b| b.weight)
            .sum();
        match self.orientation(variant)? {
            Orientation::Backward { main } => {
                if target >= current {
                    let mut needed = target - current;
                    for index in (0..main).rev() {
                        needed -= self.take(index, main, needed);
                    }
                } else {
                    self.buckets[main].weight -= current - target;
                    self.buckets[main - 1].weight += current - target;
                }
            }
            Orientation::Forward { mut main, head } => {
                if target >= current {
                    let mut needed = target - current;
                    for index in main + 1..self.buckets.len() {
                        needed -= self.take(index, main, needed);
                    }
                    if needed > 0 {
                        let head = match head {
                            Some(head) => head,
                            None => {
                                self.buckets.insert(
                                    0,
                                    Bucket {
                                        name: variant.to_owned(),
                                        weight: 0,
                                    },
                                );
                                main += 1;
                                0
                            }
                        };
                        for index in head + 1..main {
                            needed -= self.take(index, head, needed);
                        }
                    }
                } else {
                    let mut excess = current - target;
                    if let Some(index) = head {
                        let given = excess.min(self.buckets[index].weight);
                        self.buckets[index].weight -= given;
                        self.buckets[index + 1].weight += given;
                        excess -= given;
                        if self.buckets[index].weight == 0 {
                            self.buckets.remove(index);
                            main -= 1;
                        }
                    }
                    if excess > 0 {
                        if main + 1 == self.buckets.len() {
                            self.buckets.push(Bucket {
                                name: others()?,
                                weight: 0,
                            });
                        }
                        self.buckets[main].weight -= excess;
                        self.buckets[main + 1].weight += excess;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves up to `wanted` weight from bucket `from` to bucket `to`; returns how much moved.
    fn take(&mut self, from: usize, to: usize, wanted: u64) -> u64 {
        let moved = wanted.min(self.buckets[from].weight);
        self.buckets[from].weight -= moved;
        self.buckets[to].weight += moved;
        moved
    }

    fn to_rule(&self, fallback: Option<String>) -> Value {
        let mut args = Vec::with_capacity(self.buckets.len() + 1);
        args.extend(self.bucket_by.clone());
        args.extend(self.buckets.iter().map(|b| json!([b.name, b.weight])));
        let fractional = json!({ "fractional": args });
        match fallback {
            Some(variant) => {
                json!({ "if": [{ "var": crate::TARGETING_KEY }, fractional, variant] })
            }
            None => fractional,
        }
    }
}

/// The least common multiple of the current total and the share's: weights in it express both
/// the current boundaries and the new share exactly.
fn scale_total(current: u64, share_total: u64) -> Result<u64, RolloutError> {
    let gcd = {
        let (mut a, mut b) = (current, share_total);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (current / gcd.max(1))
        .checked_mul(share_total)
        .filter(|total| *total <= MAX_TOTAL_WEIGHT)
        .ok_or_else(|| {
            RolloutError::TooComplex(format!(
                "the fractional's weights add up to {current}, which cannot express this share exactly; rewrite them out of {ROLLOUT_TOTAL_WEIGHT}"
            ))
        })
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

    fn none() -> BTreeMap<String, Value> {
        BTreeMap::new()
    }

    fn set(f: &mut Flag, percentage: f64) {
        set_rollout(f, &none(), percentage, &RolloutVariants::default()).unwrap();
    }

    fn read(f: &Flag) -> f64 {
        current_rollout(f, &none(), &RolloutVariants::default())
            .unwrap()
            .percentage
    }

    #[test]
    fn sets_a_rollout_on_an_empty_targeting() {
        let mut f = flag(json!({}));
        set(&mut f, 12.5);
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 1250], ["off", 8750]]}))
        );
        assert_eq!(read(&f), 12.5);
    }

    #[test]
    fn off_first_buckets_are_read_and_raised_by_the_on_variant() {
        let mut f = flag(json!({"fractional": [["off", 75], ["on", 25]]}));
        assert_eq!(read(&f), 25.0);
        set(&mut f, 30.0);
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["off", 7000], ["on", 3000]]}))
        );
        assert_eq!(read(&f), 30.0);
    }

    #[test]
    fn replaces_only_the_fallthrough_of_an_if_chain() {
        let rule = json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]});
        let mut f = flag(rule);
        set(&mut f, 25.0);
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on",
                {"fractional": [["on", 2500], ["off", 7500]]}]})
            )
        );
        set(&mut f, 50.0);
        assert_eq!(read(&f), 50.0);
    }

    #[test]
    fn appends_an_else_to_a_chain_without_one() {
        let mut f = flag(json!({"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]}));
        set(&mut f, 1.0);
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
        assert_eq!(read(&f), 50.0);
        set(&mut f, 5.0);
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [{"var": "org"}, ["on", 500], ["off", 9500]]}))
        );
    }

    #[test]
    fn hundred_percent_covers_contexts_without_a_key_and_going_back_keeps_the_buckets() {
        let mut f = flag(json!({"fractional": [["off", 75], ["on", 25]]}));
        set(&mut f, 100.0);
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"var": "targetingKey"}, {"fractional": [["off", 0], ["on", 10000]]}, "on"]})
            )
        );
        assert_eq!(read(&f), 100.0);
        set(&mut f, 25.0);
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["off", 7500], ["on", 2500]]}))
        );
    }

    #[test]
    fn zero_percent_falls_back_to_the_other_variant_when_the_default_is_rolled_out() {
        let mut f = flag(json!({"fractional": [["on", 1], ["off", 1]]}));
        f.default_variant = Some("on".to_owned());
        set(&mut f, 0.0);
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"var": "targetingKey"}, {"fractional": [["on", 0], ["off", 10000]]}, "off"]})
            )
        );
    }

    #[test]
    fn a_middle_bucket_wraps_around_and_comes_back_to_the_same_layout() {
        let mut f: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": {"a": "a", "b": "b", "c": "c"}, "defaultVariant": "a",
            "targeting": {"fractional": [["a", 30], ["b", 30], ["c", 40]]}
        }))
        .unwrap();
        let b = RolloutVariants::of("b");
        set_rollout(&mut f, &none(), 80.0, &b).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["b", 1000], ["a", 2000], ["b", 7000], ["c", 0]]}))
        );
        set_rollout(&mut f, &none(), 50.0, &b).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["a", 3000], ["b", 5000], ["c", 2000]]}))
        );
    }

    #[test]
    fn a_ref_is_inlined_into_the_flag() {
        let evaluators = BTreeMap::from([(
            "split".to_owned(),
            json!({"fractional": [["off", 1], ["on", 1]]}),
        )]);
        let mut f = flag(json!({"if": [{"var": "beta"}, "on", {"$ref": "split"}]}));
        let rollout = current_rollout(&f, &evaluators, &RolloutVariants::default()).unwrap();
        assert_eq!(rollout.percentage, 50.0);
        set_rollout(&mut f, &evaluators, 60.0, &RolloutVariants::default()).unwrap();
        assert_eq!(
            f.targeting,
            Some(
                json!({"if": [{"var": "beta"}, "on", {"fractional": [["off", 4000], ["on", 6000]]}]})
            )
        );
    }

    #[test]
    fn totals_that_are_not_divisors_of_ten_thousand_are_rescaled_exactly() {
        let mut f = flag(json!({"fractional": [["on", 1], ["off", 2]]}));
        let rollout = current_rollout(&f, &none(), &RolloutVariants::default()).unwrap();
        assert_eq!(
            rollout.share,
            Share {
                weight: 1,
                total: 3
            }
        );
        set(&mut f, 50.0);
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 15000], ["off", 15000]]}))
        );
        set_rollout_share(&mut f, &none(), rollout.share, &RolloutVariants::default()).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 10000], ["off", 20000]]}))
        );
    }

    #[test]
    fn reads_constant_fallthroughs() {
        assert_eq!(read(&flag(json!({}))), 0.0);
        assert_eq!(read(&flag(json!({"if": [true, "off", "on"]}))), 100.0);
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let cases = [
            json!({"and": [true, "on"]}),
            json!({"fractional": [["on", 1], ["off", 1], ["on", 1], ["off", 1]]}),
            json!({"fractional": [[{"var": "x"}, 1], ["off", 1]]}),
            json!({"if": [true, "on", {"in": ["a", "abc"]}]}),
            json!({"$ref": "missing"}),
        ];
        for rule in cases {
            let mut f = flag(rule.clone());
            let err = set_rollout(&mut f, &none(), 10.0, &RolloutVariants::default()).unwrap_err();
            assert!(matches!(err, RolloutError::TooComplex(_)), "{rule}: {err}");
            assert_eq!(f.targeting, Some(rule), "a refused edit changes nothing");
        }
    }

    #[test]
    fn a_hand_written_fallback_or_a_computed_bucket_by_is_refused() {
        for rule in [
            // Keyless contexts get "on" while only half the others do: no percentage says that.
            json!({"if": [{"var": "targetingKey"}, {"fractional": [["on", 50], ["off", 50]]}, "on"]}),
            json!({"if": [{"var": "targetingKey"}, {"fractional": [["on", 0], ["off", 10]]}, "on"]}),
            json!({"fractional": [{"merge": [["on", 50]]}, ["on", 0], ["off", 50]]}),
        ] {
            let mut f = flag(rule.clone());
            let err = set_rollout(&mut f, &none(), 60.0, &RolloutVariants::default()).unwrap_err();
            assert!(matches!(err, RolloutError::TooComplex(_)), "{rule}: {err}");
            assert!(current_rollout(&f, &none(), &RolloutVariants::default()).is_err());
            assert_eq!(f.targeting, Some(rule));
        }
        // Ours is read back.
        let mut f = flag(
            json!({"if": [{"var": "targetingKey"}, {"fractional": [["on", 10000], ["off", 0]]}, "on"]}),
        );
        assert_eq!(read(&f), 100.0);
        set(&mut f, 20.0);
        assert_eq!(read(&f), 20.0);
    }

    #[test]
    fn the_variant_for_the_others_is_honoured_and_checked() {
        let mut f: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false, "x": false}, "defaultVariant": "off"
        }))
        .unwrap();
        let to = |others: &str| RolloutVariants {
            variant: Some("on".into()),
            others: Some(others.into()),
        };
        for bad in ["nope", "on"] {
            let err = set_rollout(&mut f, &none(), 10.0, &to(bad)).unwrap_err();
            assert!(matches!(err, RolloutError::Others(_)), "{bad}: {err}");
        }
        set_rollout(&mut f, &none(), 10.0, &to("x")).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 1000], ["x", 9000]]}))
        );
        // With a bucket list, the others keep their buckets: only a variant in it may be named.
        set_rollout(&mut f, &none(), 20.0, &to("x")).unwrap();
        let err = set_rollout(&mut f, &none(), 30.0, &to("off")).unwrap_err();
        assert!(matches!(err, RolloutError::Others(_)), "{err}");
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["on", 2000], ["x", 8000]]}))
        );
    }

    #[test]
    fn rejects_bad_percentages() {
        let mut f = flag(json!({}));
        let mut check = |p: f64| set_rollout(&mut f, &none(), p, &RolloutVariants::default());
        assert_eq!(check(100.5), Err(RolloutError::OutOfRange(100.5)));
        assert_eq!(check(-1.0), Err(RolloutError::OutOfRange(-1.0)));
        assert!(matches!(check(f64::NAN), Err(RolloutError::OutOfRange(_))));
        assert_eq!(check(0.001), Err(RolloutError::TooFine(0.001)));
        assert_eq!(check(1e-300), Ok(()), "1e-300 is 0.00 %");
        assert_eq!(f.targeting, Some(json!({})));
    }

    #[test]
    fn the_rolled_out_variant_is_found_by_value_or_named() {
        let mut f: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": { "blue": "b", "red": "r" }, "defaultVariant": "red"
        }))
        .unwrap();
        assert!(matches!(
            set_rollout(&mut f, &none(), 10.0, &RolloutVariants::default()),
            Err(RolloutError::Variants(_))
        ));
        set_rollout(&mut f, &none(), 10.0, &RolloutVariants::of("blue")).unwrap();
        assert_eq!(
            f.targeting,
            Some(json!({"fractional": [["blue", 1000], ["red", 9000]]}))
        );
        assert!(matches!(
            set_rollout(&mut f, &none(), 10.0, &RolloutVariants::of("green")),
            Err(RolloutError::Variants(_))
        ));
        let ambiguous: Flag = serde_json::from_value(json!({
            "state": "ENABLED", "variants": { "on": true, "yes": true, "off": false }, "defaultVariant": "off"
        }))
        .unwrap();
        assert!(matches!(
            rolled_out_variant(&ambiguous, None),
            Err(RolloutError::Variants(_))
        ));
    }
}
