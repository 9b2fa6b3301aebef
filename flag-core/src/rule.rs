//! The compiled form of a JsonLogic targeting rule, and its evaluation.
//!
//! `compile.rs` turns JSON into a [`Node`] tree once per document update; [`eval`] walks the tree
//! on every evaluation. Evaluation returns `Cow<Value>`: variable lookups and constants are
//! borrowed from the context and the tree, and booleans and numbers are built in place, so the
//! common rules (comparisons, string tests, set membership, `fractional`) never allocate.
//! Operators that build new strings or arrays (`cat`, `merge`, `map`...) do allocate.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::context::{EvaluationContext, FastHasher};
use crate::hash::{MurmurPrefix, bucket, murmur3_x86_32};
use crate::semver::{SemVerOp, Version};
use crate::value::{
    compare, format_f64, loose_eq, number_value, strict_eq, to_js_string, to_number, truthy,
};

/// A value produced while evaluating a rule.
pub(crate) type Val<'a> = Cow<'a, Value>;

/// One node of a compiled rule.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A constant (literals, and sub-trees folded at compile time).
    Const(Value),
    /// An array literal with at least one non-constant element.
    Array(Box<[Node]>),
    /// `{"var": "name"}`: one attribute, no default (the common case, looked up directly).
    Attribute(Box<str>),
    /// `{"var": "targetingKey"}`.
    TargetingKey,
    /// `starts_with` / `ends_with` against a constant string.
    Affix(Box<AffixNode>),
    Var(Box<VarNode>),
    Missing(Box<[Node]>),
    MissingSome(Box<[Node]>),
    If(Box<[Node]>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    /// `in` against a constant list of strings, precompiled into a hash set.
    InStringSet(Box<InSet>),
    /// `map`, `filter`, `all`, `none`, `some`: `[array, logic]`.
    Scoped(ScopedOp, Box<[Node; 2]>),
    /// `reduce`: `[array, logic, initial]`.
    Reduce(Box<[Node; 3]>),
    Fractional(Box<FractionalNode>),
    /// Every other operator: arguments are evaluated eagerly, then the operator applies.
    Op(Op, Box<[Node]>),
    /// A custom operator that can only fail (wrong arguments found at compile time).
    Fail,
}

/// `{"in": [needle, [constant strings...]]}`.
#[derive(Debug, Clone)]
pub(crate) struct InSet {
    pub(crate) needle: Node,
    pub(crate) set: HashSet<Box<str>, FastHasher>,
}

/// `{"starts_with": [text, "constant"]}` or `{"ends_with": [text, "constant"]}`.
#[derive(Debug, Clone)]
pub(crate) struct AffixNode {
    pub(crate) text: Node,
    pub(crate) affix: Box<str>,
    pub(crate) at_end: bool,
}

/// Eagerly evaluated operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Lt,
    Le,
    Gt,
    Ge,
    Not,
    NotNot,
    Mod,
    Div,
    Mul,
    Add,
    Sub,
    Max,
    Min,
    Merge,
    Cat,
    Substr,
    In,
    StartsWith,
    EndsWith,
    SemVer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScopedOp {
    Map,
    Filter,
    All,
    None,
    Some,
}

/// `{"var": path}` or `{"var": [path, default]}`.
#[derive(Debug, Clone)]
pub(crate) struct VarNode {
    pub(crate) path: VarPath,
    pub(crate) default: Option<Node>,
}

#[derive(Debug, Clone)]
pub(crate) enum VarPath {
    /// A path known at compile time, split on dots.
    Static(Box<[Box<str>]>),
    /// A path computed by a rule.
    Dynamic(Node),
}

/// `fractional`, split so that the common form (constant buckets) needs no allocation.
#[derive(Debug, Clone)]
pub(crate) struct FractionalNode {
    pub(crate) bucket_by: BucketBy,
    pub(crate) buckets: Buckets,
}

#[derive(Debug, Clone)]
pub(crate) enum BucketBy {
    /// Hash `flagKey ++ targetingKey`.
    FlagAndTargetingKey,
    /// Hash this constant string.
    Constant(Box<str>),
    /// The first argument is a rule: a string result is hashed, null falls back to
    /// `flagKey ++ targetingKey`, anything else is taken as the first bucket.
    Dynamic(Node),
}

#[derive(Debug, Clone)]
pub(crate) enum Buckets {
    /// All variant names and weights are constants: cumulative ends precomputed.
    Constant {
        variants: Box<[Value]>,
        ends: Box<[u32]>,
        total: u32,
    },
    /// Buckets computed by rules.
    Dynamic(Box<[Node]>),
}

/// The largest total weight flagd accepts (i32::MAX).
pub(crate) const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// What evaluation can see: the context, the flag being evaluated, and the time.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    pub(crate) ctx: &'a EvaluationContext,
    /// The flag key as a JSON string, so `$flagd.flagKey` can be returned by reference.
    pub(crate) flag_key: &'a Value,
    /// The murmur3 state after the flag key, for `fractional`.
    pub(crate) flag_key_hash: &'a MurmurPrefix,
    pub(crate) timestamp: Timestamp,
    /// Set when a custom operator (`starts_with`, `ends_with`, `sem_ver`, `fractional`) failed:
    /// wrong arguments, a non-string operand, an invalid version, nothing to bucket by, no
    /// weight. flagd then treats the whole targeting result as null (so the default variant),
    /// not the operator's null as a value a surrounding `if` could branch on; see the
    /// `@operator-errors` scenarios of flagd-testbed's `targeting.feature`.
    pub(crate) failed: std::cell::Cell<bool>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(
        ctx: &'a EvaluationContext,
        flag_key: &'a Value,
        flag_key_hash: &'a MurmurPrefix,
        timestamp: Timestamp,
    ) -> Env<'a> {
        Env {
            ctx,
            flag_key,
            flag_key_hash,
            timestamp,
            failed: std::cell::Cell::new(false),
        }
    }
}

/// A custom operator failed: it answers null, and the targeting result will be null.
fn fail<'a>(scope: Scope<'_>) -> Val<'a> {
    scope.failed();
    null()
}

/// The time of an evaluation, for `$flagd.timestamp`: a fixed time, or a clock that is read only
/// when a rule actually asks (most rules never do, and reading a clock costs more than
/// evaluating a static flag).
#[derive(Debug, Clone, Copy)]
pub enum Timestamp {
    /// This many unix seconds.
    At(i64),
    /// Call this for the unix seconds when needed.
    Clock(fn() -> i64),
}

impl Timestamp {
    /// The unix seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Timestamp::At(seconds) => seconds,
            Timestamp::Clock(clock) => clock(),
        }
    }
}

impl From<i64> for Timestamp {
    fn from(seconds: i64) -> Self {
        Timestamp::At(seconds)
    }
}

/// Where `var` looks: the evaluation context, or the current element inside `map` and friends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    env: &'a Env<'a>,
    data: Option<&'a Value>,
}

impl<'a> Scope<'a> {
    pub(crate) fn root(env: &'a Env<'a>) -> Self {
        Scope { env, data: None }
    }

    /// Records that a custom operator failed (see [`Env::failed`]).
    pub(crate) fn failed(self) {
        self.env.failed.set(true);
    }
}

/// Evaluates a rule.
pub(crate) fn eval<'a>(node: &'a Node, scope: Scope<'a>) -> Val<'a> {
    match node {
        Node::Const(value) => Cow::Borrowed(value),
        Node::Attribute(name) => match attribute(name, scope) {
            Some(value) => Cow::Borrowed(value),
            None => null(),
        },
        Node::TargetingKey => match targeting_key(scope) {
            Some(value) => Cow::Borrowed(value),
            None => null(),
        },
        Node::Affix(affix) => match eval_affix(affix, scope) {
            Some(b) => boolean(b),
            None => null(),
        },
        Node::Var(var) => eval_var(var, scope),
        Node::If(args) => {
            let mut pairs = args.chunks_exact(2);
            for pair in &mut pairs {
                if eval_bool(&pair[0], scope) {
                    return eval(&pair[1], scope);
                }
            }
            match pairs.remainder() {
                [otherwise] => eval(otherwise, scope),
                _ => Cow::Owned(Value::Null),
            }
        }
        Node::And(args) => {
            let mut last = Cow::Owned(Value::Null);
            for arg in args.iter() {
                last = eval(arg, scope);
                if !truthy(&last) {
                    return last;
                }
            }
            last
        }
        Node::Or(args) => {
            let mut last = Cow::Owned(Value::Null);
            for arg in args.iter() {
                last = eval(arg, scope);
                if truthy(&last) {
                    return last;
                }
            }
            last
        }
        Node::InStringSet(in_set) => boolean(in_string_set(in_set, scope)),
        Node::Fractional(fractional) => eval_fractional(fractional, scope),
        Node::Op(op, args) => eval_op(*op, args, scope),
        Node::Array(items) => Cow::Owned(Value::Array(
            items
                .iter()
                .map(|item| eval(item, scope).into_owned())
                .collect(),
        )),
        Node::Missing(args) => Cow::Owned(Value::Array(missing(args, scope))),
        Node::MissingSome(args) => eval_missing_some(args, scope),
        Node::Scoped(op, args) => eval_scoped(*op, args, scope),
        Node::Reduce(args) => eval_reduce(args, scope),
        Node::Fail => fail(scope),
    }
}

/// Evaluates a rule for its truthiness only: conditions of `if`, and the operands of `and`,
/// `or` and `!` under them. Never builds a value, so the common conditions cost no more than
/// the comparisons they make.
pub(crate) fn eval_bool(node: &Node, scope: Scope<'_>) -> bool {
    match node {
        Node::Const(value) => truthy(value),
        // truthy(and(...)) is "every operand truthy"; an empty `and` is null, so false.
        Node::And(args) => !args.is_empty() && args.iter().all(|arg| eval_bool(arg, scope)),
        Node::Or(args) => args.iter().any(|arg| eval_bool(arg, scope)),
        Node::InStringSet(in_set) => in_string_set(in_set, scope),
        Node::Affix(affix) => eval_affix(affix, scope) == Some(true),
        Node::Attribute(name) => attribute(name, scope).is_some_and(truthy),
        Node::Op(op, args) => match bool_op(*op, args, scope) {
            Some(b) => b,
            None => truthy(&eval_op(*op, args, scope)),
        },
        _ => truthy(&eval(node, scope)),
    }
}

fn attribute<'a>(name: &str, scope: Scope<'a>) -> Option<&'a Value> {
    match scope.data {
        None => scope.env.ctx.attribute(name),
        Some(data) => step(data, name),
    }
}

fn targeting_key<'a>(scope: Scope<'a>) -> Option<&'a Value> {
    match scope.data {
        None => scope.env.ctx.targeting_key_value(),
        Some(data) => step(data, crate::context::TARGETING_KEY),
    }
}

fn in_string_set(in_set: &InSet, scope: Scope<'_>) -> bool {
    match eval(&in_set.needle, scope).as_ref() {
        Value::String(s) => in_set.set.contains(s.as_str()),
        _ => false,
    }
}

/// `starts_with` / `ends_with` against a constant; `None` (null) when the text is not a string.
fn eval_affix(affix: &AffixNode, scope: Scope<'_>) -> Option<bool> {
    match eval(&affix.text, scope).as_ref() {
        Value::String(text) => Some(if affix.at_end {
            text.ends_with(affix.affix.as_ref())
        } else {
            text.starts_with(affix.affix.as_ref())
        }),
        _ => {
            scope.failed();
            None
        }
    }
}

/// The operators whose result is always a boolean, computed without building a value.
fn bool_op(op: Op, args: &[Node], scope: Scope<'_>) -> Option<bool> {
    Some(match op {
        Op::Eq => loose_eq(&arg(args, 0, scope), &arg(args, 1, scope)),
        Op::Ne => !loose_eq(&arg(args, 0, scope), &arg(args, 1, scope)),
        Op::StrictEq => strict_eq(&arg(args, 0, scope), &arg(args, 1, scope)),
        Op::StrictNe => !strict_eq(&arg(args, 0, scope), &arg(args, 1, scope)),
        Op::Lt | Op::Le => {
            let accept = |ordering: Option<Ordering>| match op {
                Op::Lt => ordering == Some(Ordering::Less),
                _ => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
            };
            let a = arg(args, 0, scope);
            let b = arg(args, 1, scope);
            let mut holds = accept(compare(&a, &b));
            if holds && args.len() >= 3 {
                // Between form: a < b < c.
                holds = accept(compare(&b, &arg(args, 2, scope)));
            }
            holds
        }
        Op::Gt => compare(&arg(args, 0, scope), &arg(args, 1, scope)) == Some(Ordering::Greater),
        Op::Ge => matches!(
            compare(&arg(args, 0, scope), &arg(args, 1, scope)),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Op::Not => !eval_bool(args.first()?, scope),
        Op::NotNot => args.first().is_some_and(|a| eval_bool(a, scope)),
        Op::In => {
            let needle = arg(args, 0, scope);
            match arg(args, 1, scope).as_ref() {
                Value::String(haystack) => haystack.contains(to_js_string(&needle).as_ref()),
                Value::Array(items) => items.iter().any(|item| strict_eq(item, &needle)),
                _ => false,
            }
        }
        _ => return None,
    })
}

fn null<'a>() -> Val<'a> {
    Cow::Owned(Value::Null)
}

fn boolean<'a>(b: bool) -> Val<'a> {
    Cow::Owned(Value::Bool(b))
}

fn number<'a>(f: f64) -> Val<'a> {
    Cow::Owned(number_value(f))
}

// ---------------------------------------------------------------------------------------------
// var and missing

fn eval_var<'a>(var: &'a VarNode, scope: Scope<'a>) -> Val<'a> {
    let found = match &var.path {
        VarPath::Static(segments) => lookup(scope, segments.iter().map(AsRef::as_ref)),
        VarPath::Dynamic(node) => {
            let path = eval(node, scope);
            let text = match path.as_ref() {
                Value::Null => Cow::Borrowed(""),
                other => to_js_string(other),
            };
            lookup_dotted(scope, &text).map(|v| Cow::Owned(v.into_owned()))
        }
    };
    match found {
        Some(value) => value,
        None => match &var.default {
            Some(default) => eval(default, scope),
            None => null(),
        },
    }
}

fn lookup_dotted<'a>(scope: Scope<'a>, path: &str) -> Option<Val<'a>> {
    if path.is_empty() {
        return lookup(scope, std::iter::empty());
    }
    lookup(scope, path.split('.'))
}

/// Resolves a dotted path; `None` when any step is missing.
fn lookup<'a, 's>(
    scope: Scope<'a>,
    mut segments: impl Iterator<Item = &'s str>,
) -> Option<Val<'a>> {
    let Some(first) = segments.next() else {
        // The empty path is the whole data.
        return Some(match scope.data {
            Some(data) => Cow::Borrowed(data),
            None => Cow::Owned(Value::Object(root_object(scope.env))),
        });
    };
    let start: Val<'a> = match scope.data {
        Some(data) => Cow::Borrowed(step(data, first)?),
        None => match first {
            // `$flagd` is always ours: a user-supplied `$flagd` attribute is never visible.
            "$flagd" => {
                return match segments.next() {
                    None => Some(Cow::Owned(flagd_object(scope.env))),
                    Some("flagKey") => segments
                        .next()
                        .is_none()
                        .then_some(Cow::Borrowed(scope.env.flag_key)),
                    Some("timestamp") => segments
                        .next()
                        .is_none()
                        .then(|| Cow::Owned(Value::from(scope.env.timestamp.seconds()))),
                    Some(_) => None,
                };
            }
            name => Cow::Borrowed(scope.env.ctx.get(name)?),
        },
    };
    match start {
        Cow::Borrowed(mut value) => {
            for segment in segments {
                value = step(value, segment)?;
            }
            Some(Cow::Borrowed(value))
        }
        Cow::Owned(value) => {
            let mut current = &value;
            for segment in segments {
                current = step(current, segment)?;
            }
            Some(Cow::Owned(current.clone()))
        }
    }
}

fn step<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    }
}

fn flagd_object(env: &Env<'_>) -> Value {
    let mut object = Map::new();
    object.insert("flagKey".to_owned(), env.flag_key.clone());
    object.insert("timestamp".to_owned(), Value::from(env.timestamp.seconds()));
    Value::Object(object)
}

fn root_object(env: &Env<'_>) -> Map<String, Value> {
    let mut object = env.ctx.to_json();
    object.insert("$flagd".to_owned(), flagd_object(env));
    object
}

/// The keys of `args` (or of the array that is the first argument) whose value is missing,
/// null or the empty string.
fn missing(args: &[Node], scope: Scope<'_>) -> Vec<Value> {
    let evaluated: Vec<Val<'_>> = args.iter().map(|arg| eval(arg, scope)).collect();
    let keys: Vec<&Value> = match evaluated.first().map(AsRef::as_ref) {
        Some(Value::Array(items)) => items.iter().collect(),
        _ => evaluated.iter().map(AsRef::as_ref).collect(),
    };
    keys.into_iter()
        .filter(|key| {
            let path = to_js_string(key);
            match lookup_dotted(scope, &path) {
                None => true,
                Some(value) => matches!(value.as_ref(), Value::Null) || value.as_ref() == "",
            }
        })
        .cloned()
        .collect()
}

fn eval_missing_some<'a>(args: &'a [Node], scope: Scope<'a>) -> Val<'a> {
    let need = args.first().map_or(0.0, |n| to_number(&eval(n, scope)));
    let keys = match args.get(1) {
        Some(node) => eval(node, scope),
        None => Cow::Owned(Value::Array(Vec::new())),
    };
    let key_count = keys.as_array().map_or(0, Vec::len);
    let missing = missing(std::slice::from_ref(&Node::Const(keys.into_owned())), scope);
    let found = key_count.saturating_sub(missing.len());
    if found as f64 >= need {
        Cow::Owned(Value::Array(Vec::new()))
    } else {
        Cow::Owned(Value::Array(missing))
    }
}

// ---------------------------------------------------------------------------------------------
// Eager operators

fn arg<'a>(args: &'a [Node], index: usize, scope: Scope<'a>) -> Val<'a> {
    match args.get(index) {
        Some(node) => eval(node, scope),
        None => null(),
    }
}

fn eval_op<'a>(op: Op, args: &'a [Node], scope: Scope<'a>) -> Val<'a> {
    if let Some(b) = bool_op(op, args, scope) {
        return boolean(b);
    }
    match op {
        Op::Eq
        | Op::Ne
        | Op::StrictEq
        | Op::StrictNe
        | Op::Lt
        | Op::Le
        | Op::Gt
        | Op::Ge
        | Op::NotNot
        | Op::In => unreachable_bool_op(),
        // `!` with no argument: !undefined is true.
        Op::Not => boolean(true),
        Op::Mod => number(to_number(&arg(args, 0, scope)) % to_number(&arg(args, 1, scope))),
        Op::Div => number(to_number(&arg(args, 0, scope)) / to_number(&arg(args, 1, scope))),
        Op::Sub => {
            let a = to_number(&arg(args, 0, scope));
            if args.len() < 2 {
                number(-a)
            } else {
                number(a - to_number(&arg(args, 1, scope)))
            }
        }
        Op::Add => number(args.iter().map(|a| parse_float(&eval(a, scope))).sum()),
        Op::Mul => {
            if args.is_empty() {
                return null();
            }
            number(args.iter().map(|a| parse_float(&eval(a, scope))).product())
        }
        Op::Max | Op::Min => {
            if args.is_empty() {
                return null();
            }
            let mut result = if op == Op::Max {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            };
            for a in args {
                let n = to_number(&eval(a, scope));
                if n.is_nan() {
                    return null();
                }
                result = if op == Op::Max {
                    result.max(n)
                } else {
                    result.min(n)
                };
            }
            number(result)
        }
        Op::Merge => {
            let mut merged = Vec::new();
            for a in args {
                match eval(a, scope).into_owned() {
                    Value::Array(items) => merged.extend(items),
                    other => merged.push(other),
                }
            }
            Cow::Owned(Value::Array(merged))
        }
        Op::Cat => {
            let mut text = String::new();
            for a in args {
                text.push_str(&to_js_string(&eval(a, scope)));
            }
            Cow::Owned(Value::String(text))
        }
        Op::Substr => substr(
            &arg(args, 0, scope),
            &arg(args, 1, scope),
            args.get(2).map(|n| eval(n, scope)),
        ),
        Op::StartsWith | Op::EndsWith => {
            if args.len() != 2 {
                return fail(scope);
            }
            let (a, b) = (arg(args, 0, scope), arg(args, 1, scope));
            match (a.as_ref(), b.as_ref()) {
                (Value::String(text), Value::String(affix)) => boolean(if op == Op::StartsWith {
                    text.starts_with(affix.as_str())
                } else {
                    text.ends_with(affix.as_str())
                }),
                _ => fail(scope),
            }
        }
        Op::SemVer => eval_sem_ver(args, scope),
    }
}

/// JavaScript `parseFloat`, which `+` and `*` use in JsonLogic's reference implementation:
/// the longest numeric prefix of the string form, NaN when there is none.
/// `bool_op` answers every boolean operator, so `eval_op` never reaches them; null keeps the
/// evaluator total without a panic should that ever change.
fn unreachable_bool_op<'a>() -> Val<'a> {
    debug_assert!(false, "boolean operators are answered by bool_op");
    null()
}

fn parse_float(value: &Value) -> f64 {
    if let Value::Number(n) = value {
        return n.as_f64().unwrap_or(f64::NAN);
    }
    if matches!(value, Value::Null | Value::Bool(_) | Value::Object(_)) {
        return f64::NAN;
    }
    let text = to_js_string(value);
    let trimmed = text.trim_start();
    let bytes = trimmed.as_bytes();
    let mut end = 0;
    let mut seen_digit = false;
    let mut seen_dot = false;
    let mut seen_exp = false;
    while end < bytes.len() {
        let b = bytes[end];
        match b {
            b'0'..=b'9' => seen_digit = true,
            b'+' | b'-' if end == 0 || matches!(bytes[end - 1], b'e' | b'E') => {}
            b'.' if !seen_dot && !seen_exp => seen_dot = true,
            b'e' | b'E' if seen_digit && !seen_exp => seen_exp = true,
            _ => break,
        }
        end += 1;
    }
    let mut candidate = &trimmed[..end];
    // Back off a dangling exponent or sign ("1e", "1e+").
    while !candidate.is_empty() && candidate.parse::<f64>().is_err() {
        candidate = &candidate[..candidate.len() - 1];
    }
    if candidate.is_empty() {
        if trimmed.starts_with("Infinity") || trimmed.starts_with("+Infinity") {
            return f64::INFINITY;
        }
        if trimmed.starts_with("-Infinity") {
            return f64::NEG_INFINITY;
        }
        return f64::NAN;
    }
    candidate.parse().unwrap_or(f64::NAN)
}

/// JavaScript `String.prototype.substr`, with JsonLogic's negative-length extension.
fn substr<'a>(source: &Value, start: &Value, length: Option<Val<'_>>) -> Val<'a> {
    let text = to_js_string(source);
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len() as i64;
    let start = to_number(start);
    let start = if start.is_nan() {
        0
    } else {
        start.trunc() as i64
    };
    let begin = if start < 0 {
        len.saturating_add(start).max(0)
    } else {
        start.min(len)
    };
    let end = match length.as_deref() {
        None | Some(Value::Null) => len,
        Some(length) => {
            let length = to_number(length);
            let length = if length.is_nan() {
                0
            } else {
                length.trunc() as i64
            };
            if length < 0 {
                len.saturating_add(length).max(begin)
            } else {
                begin.saturating_add(length).min(len)
            }
        }
    };
    let end = end.max(begin);
    Cow::Owned(Value::String(
        chars[begin as usize..end as usize].iter().collect(),
    ))
}

fn eval_sem_ver<'a>(args: &'a [Node], scope: Scope<'a>) -> Val<'a> {
    if args.len() != 3 {
        return fail(scope);
    }
    let (left, op, right) = (
        arg(args, 0, scope),
        arg(args, 1, scope),
        arg(args, 2, scope),
    );
    let (Some(left), Some(right)) = (version_text(&left), version_text(&right)) else {
        return fail(scope);
    };
    let Some(op) = op.as_str().and_then(SemVerOp::parse) else {
        return fail(scope);
    };
    match (Version::parse(&left), Version::parse(&right)) {
        (Some(l), Some(r)) => boolean(op.holds(&l, &r)),
        _ => fail(scope),
    }
}

/// A version operand as text: strings as they are, numbers (`1`, `1.2`) in their usual form.
fn version_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Cow::Owned(n.to_string())),
        Value::Number(n) => Some(Cow::Owned(format_f64(n.as_f64()?))),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Scoped operators

fn eval_scoped<'a>(op: ScopedOp, args: &'a [Node; 2], scope: Scope<'a>) -> Val<'a> {
    let array = eval(&args[0], scope);
    let Value::Array(items) = array.as_ref() else {
        return match op {
            ScopedOp::Map | ScopedOp::Filter => Cow::Owned(Value::Array(Vec::new())),
            ScopedOp::All | ScopedOp::Some => boolean(false),
            ScopedOp::None => boolean(true),
        };
    };
    let logic = &args[1];
    let test = |item: &Value| {
        truthy(&eval(
            logic,
            Scope {
                env: scope.env,
                data: Some(item),
            },
        ))
    };
    match op {
        ScopedOp::Map => Cow::Owned(Value::Array(
            items
                .iter()
                .map(|item| {
                    eval(
                        logic,
                        Scope {
                            env: scope.env,
                            data: Some(item),
                        },
                    )
                    .into_owned()
                })
                .collect(),
        )),
        ScopedOp::Filter => Cow::Owned(Value::Array(
            items.iter().filter(|item| test(item)).cloned().collect(),
        )),
        ScopedOp::All => boolean(!items.is_empty() && items.iter().all(test)),
        ScopedOp::Some => boolean(items.iter().any(test)),
        ScopedOp::None => boolean(!items.iter().any(test)),
    }
}

fn eval_reduce<'a>(args: &'a [Node; 3], scope: Scope<'a>) -> Val<'a> {
    let initial = eval(&args[2], scope);
    let array = eval(&args[0], scope);
    let Value::Array(items) = array.as_ref() else {
        return initial;
    };
    let mut accumulator = initial.into_owned();
    for item in items {
        let mut data = Map::new();
        data.insert("current".to_owned(), item.clone());
        data.insert("accumulator".to_owned(), accumulator);
        let data = Value::Object(data);
        accumulator = eval(
            &args[1],
            Scope {
                env: scope.env,
                data: Some(&data),
            },
        )
        .into_owned();
    }
    Cow::Owned(accumulator)
}

// ---------------------------------------------------------------------------------------------
// fractional

fn eval_fractional<'a>(node: &'a FractionalNode, scope: Scope<'a>) -> Val<'a> {
    // The first argument may turn out to be a bucket, in which case it joins the others.
    let mut extra_first_bucket: Option<Val<'a>> = None;
    let hash = match &node.bucket_by {
        BucketBy::FlagAndTargetingKey => flag_and_targeting_key_hash(scope.env),
        BucketBy::Constant(text) => Some(murmur3_x86_32(text.as_bytes(), 0)),
        BucketBy::Dynamic(rule) => {
            let first = eval(rule, scope);
            match first.as_ref() {
                Value::String(text) => Some(murmur3_x86_32(text.as_bytes(), 0)),
                Value::Null => flag_and_targeting_key_hash(scope.env),
                _ => {
                    extra_first_bucket = Some(first);
                    flag_and_targeting_key_hash(scope.env)
                }
            }
        }
    };
    match &node.buckets {
        // One bucket: it is the answer, with or without anything to bucket by (as flagd).
        Buckets::Constant {
            variants, total, ..
        } if extra_first_bucket.is_none() && variants.len() == 1 && *total > 0 => {
            Cow::Borrowed(&variants[0])
        }
        Buckets::Constant {
            variants,
            ends,
            total,
        } if extra_first_bucket.is_none() => {
            let Some(hash) = hash else {
                return fail(scope);
            };
            let point = bucket(hash, *total);
            // Buckets are few (usually two): a linear scan beats a binary search here.
            match ends.iter().position(|end| point < *end) {
                Some(index) => Cow::Borrowed(&variants[index]),
                None => fail(scope),
            }
        }
        Buckets::Constant { variants, ends, .. } => {
            // Rare: rebuild the buckets with the evaluated first argument in front.
            let mut buckets: Vec<(Value, u64)> = Vec::with_capacity(variants.len() + 1);
            if let Some(first) = extra_first_bucket {
                let Some(parsed) = parse_bucket(first.as_ref()) else {
                    return fail(scope);
                };
                buckets.push(parsed);
            }
            let mut previous = 0;
            for (variant, end) in variants.iter().zip(ends.iter()) {
                buckets.push((variant.clone(), u64::from(end - previous)));
                previous = *end;
            }
            pick_bucket(hash, buckets, scope)
        }
        Buckets::Dynamic(nodes) => {
            let mut buckets: Vec<(Value, u64)> = Vec::with_capacity(nodes.len() + 1);
            if let Some(first) = extra_first_bucket {
                let Some(parsed) = parse_bucket(first.as_ref()) else {
                    return fail(scope);
                };
                buckets.push(parsed);
            }
            for node in nodes.iter() {
                let Some(parsed) = parse_bucket(&eval(node, scope)) else {
                    return fail(scope);
                };
                buckets.push(parsed);
            }
            pick_bucket(hash, buckets, scope)
        }
    }
}

/// The hash for a non-dynamic bucketBy; `None` when there is nothing to hash.
pub(crate) fn fractional_hash(bucket_by: &BucketBy, scope: Scope<'_>) -> Option<u32> {
    match bucket_by {
        BucketBy::FlagAndTargetingKey => flag_and_targeting_key_hash(scope.env),
        BucketBy::Constant(text) => Some(murmur3_x86_32(text.as_bytes(), 0)),
        BucketBy::Dynamic(_) => None,
    }
}

/// The hash of `flagKey ++ targetingKey`; `None` when the targeting key is missing, empty or not
/// a string.
fn flag_and_targeting_key_hash(env: &Env<'_>) -> Option<u32> {
    let Some(Value::String(targeting_key)) = env.ctx.targeting_key_value() else {
        return None;
    };
    if targeting_key.is_empty() {
        return None;
    }
    Some(env.flag_key_hash.hash_with(targeting_key.as_bytes()))
}

/// One evaluated bucket `[variant, weight?]`; `None` when malformed.
pub(crate) fn parse_bucket(value: &Value) -> Option<(Value, u64)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let variant = match parts.first()? {
        v @ (Value::String(_) | Value::Bool(_) | Value::Number(_) | Value::Null) => v.clone(),
        _ => return None,
    };
    let weight = match parts.get(1) {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => weight_of(n.as_f64()?)?,
        Some(_) => return None,
    };
    if parts.len() > 2 {
        return None;
    }
    Some((variant, weight))
}

/// A weight: integral, at most i32::MAX; negative weights count as zero.
pub(crate) fn weight_of(weight: f64) -> Option<u64> {
    if weight != weight.trunc() || weight > MAX_TOTAL_WEIGHT as f64 {
        return None;
    }
    Some(if weight < 0.0 { 0 } else { weight as u64 })
}

fn pick_bucket<'a>(hash: Option<u32>, buckets: Vec<(Value, u64)>, scope: Scope<'_>) -> Val<'a> {
    let total: u64 = buckets.iter().map(|(_, w)| *w).sum();
    if total == 0 || total > MAX_TOTAL_WEIGHT {
        return fail(scope);
    }
    if let [(only, _)] = buckets.as_slice() {
        return Cow::Owned(only.clone());
    }
    let Some(hash) = hash else {
        return fail(scope);
    };
    // total <= i32::MAX, so it fits u32.
    let point = u64::from(bucket(hash, total as u32));
    let mut end = 0;
    for (variant, weight) in buckets {
        end += weight;
        if point < end {
            return Cow::Owned(variant);
        }
    }
    null()
}
