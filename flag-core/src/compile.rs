//! Validation and compilation: a flag-set document becomes a [`CompiledFlagSet`].
//!
//! Validation *is* compilation: the compiler walks every rule once, reports each problem with its
//! JSON path, and produces the evaluation plan. Strict mode (server writes) rejects a document
//! with any problem; lenient mode (SDK reads) isolates a broken flag so it evaluates to an error
//! while every other flag keeps working.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::EvaluationContext;
use crate::context::FastHasher;
use crate::hash::MurmurPrefix;
use crate::model::{Flag, FlagSet, FlagType, Metadata, json_type_name};
use crate::problem::{JsonPath, Problem, ProblemCode, Severity, ValidationError};
use crate::resolve::{CompiledFlag, CompiledFlagSet};
use crate::rule::{
    AffixNode, BucketBy, Buckets, Env, FractionalNode, InSet, MAX_TOTAL_WEIGHT, Node, Op, Scope,
    ScopedOp, Timestamp, VarNode, VarPath, eval, weight_of,
};
use crate::semver::{SEMVER_OPS, SemVerOp, Version};

/// Compiled `$evaluators` by name; `None` for one that failed to compile.
pub(crate) type Evaluators = HashMap<String, Option<Node>, FastHasher>;

/// The deepest nesting of objects and arrays a targeting rule may have. Deeper rules are
/// rejected at write time, which also bounds the evaluator's recursion.
pub const MAX_RULE_DEPTH: usize = 64;

/// The longest flag key accepted (flagd accepts any non-empty key; the cap keeps URLs, logs and
/// metrics labels sane).
pub const MAX_FLAG_KEY_LEN: usize = 256;

/// A `in` against a constant list of strings at least this long is compiled into a hash set.
const IN_SET_THRESHOLD: usize = 8;

/// Every operator name the compiler knows, for "did you mean" hints.
const OPERATORS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    ">",
    ">=",
    "<",
    "<=",
    "!",
    "!!",
    "and",
    "or",
    "%",
    "/",
    "*",
    "+",
    "-",
    "max",
    "min",
    "merge",
    "cat",
    "substr",
    "in",
    "map",
    "filter",
    "all",
    "none",
    "some",
    "reduce",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "$ref",
];

/// How strictly a document is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Errors refuse the whole document; warnings are reported and handled at evaluation as
    /// flagd does (server writes, `flagctl apply`; turn warnings into errors with
    /// [`Loaded::strict`]).
    Strict,
    /// Nothing is refused: a flag with an error is isolated and evaluates to `PARSE_ERROR`
    /// (SDK, documents received from the server).
    Lenient,
}

/// A document that loaded: what to store, what to evaluate, and what flagd would warn about.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The typed document (to store, export, stream).
    pub set: FlagSet,
    /// Its compiled form (to evaluate).
    pub compiled: CompiledFlagSet,
    /// Warnings: each affected flag evaluates exactly as flagd would (see [`ProblemCode`]).
    pub warnings: Vec<Problem>,
}

impl Loaded {
    /// Strict mode: any warning refuses the document too.
    pub fn strict(self) -> Result<Loaded, ValidationError> {
        if self.warnings.is_empty() {
            Ok(self)
        } else {
            Err(ValidationError {
                problems: self.warnings,
            })
        }
    }
}

/// flagd's load policy: any error refuses the document (all errors reported); otherwise the
/// warnings.
fn errors_refuse(problems: Vec<Problem>) -> Result<Vec<Problem>, ValidationError> {
    let (warnings, errors): (Vec<Problem>, Vec<Problem>) =
        problems.into_iter().partition(Problem::is_warning);
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(ValidationError { problems: errors })
    }
}

impl FlagSet {
    /// Parses and validates a document strictly: every problem is reported, with its path.
    pub fn from_json_str(text: &str) -> Result<FlagSet, ValidationError> {
        CompiledFlagSet::from_json_str(text).map(|(set, _)| set)
    }

    /// Validates a JSON value strictly and returns the typed document.
    pub fn from_value(value: &Value) -> Result<FlagSet, ValidationError> {
        CompiledFlagSet::from_value(value).map(|(set, _)| set)
    }

    /// Validates an already-typed document strictly.
    pub fn validate(&self) -> Result<(), ValidationError> {
        CompiledFlagSet::compile(self).map(|_| ())
    }
}

impl CompiledFlagSet {
    /// Loads a document as flagd does: errors (what flagd refuses) fail the whole document;
    /// warnings (what flagd loads and handles at evaluation time) are returned, and each
    /// affected flag evaluates as flagd would.
    pub fn load(value: &Value) -> Result<Loaded, ValidationError> {
        let (set, compiled, problems) = load_all(value);
        let warnings = errors_refuse(problems)?;
        Ok(Loaded {
            set,
            compiled,
            warnings,
        })
    }

    /// [`load`](Self::load) for JSON text.
    pub fn load_str(text: &str) -> Result<Loaded, ValidationError> {
        CompiledFlagSet::load(&parse_json(text)?)
    }

    /// Parses, validates and compiles a JSON document strictly (warnings are errors too, and
    /// all are reported), in one pass: the typed document (to store or serve) and its compiled
    /// form (to evaluate).
    pub fn from_json_str(text: &str) -> Result<(FlagSet, CompiledFlagSet), ValidationError> {
        CompiledFlagSet::from_value(&parse_json(text)?)
    }

    /// [`from_json_str`](Self::from_json_str) for a parsed JSON value.
    pub fn from_value(value: &Value) -> Result<(FlagSet, CompiledFlagSet), ValidationError> {
        let (set, compiled, problems) = load_all(value);
        if problems.is_empty() {
            Ok((set, compiled))
        } else {
            Err(ValidationError { problems })
        }
    }

    /// Compiles a typed document strictly: any problem, warnings included, is an error.
    pub fn compile(set: &FlagSet) -> Result<CompiledFlagSet, ValidationError> {
        let (compiled, problems) = compile_parsed(set, &BTreeMap::new(), Mode::Strict);
        if problems.is_empty() {
            Ok(compiled)
        } else {
            Err(ValidationError { problems })
        }
    }

    /// Compiles a typed document as [`load`](Self::load) does: `Err` with the errors, or the
    /// compiled set and its warnings.
    pub fn compile_with_warnings(
        set: &FlagSet,
    ) -> Result<(CompiledFlagSet, Vec<Problem>), ValidationError> {
        let (compiled, problems) = compile_parsed(set, &BTreeMap::new(), Mode::Strict);
        Ok((compiled, errors_refuse(problems)?))
    }

    /// Compiles a typed document leniently: broken flags evaluate to an error result.
    pub fn compile_lenient(set: &FlagSet) -> (CompiledFlagSet, Vec<Problem>) {
        compile_parsed(set, &BTreeMap::new(), Mode::Lenient)
    }

    /// [`compile_lenient`](Self::compile_lenient) over a document's parts: for a caller that
    /// keeps its flags in another container (the server's `Arc`'d flags), so they are not
    /// copied into a [`FlagSet`] first. Flags must come in key order for the same result.
    pub fn compile_lenient_parts<'a>(
        metadata: &Metadata,
        evaluators: &BTreeMap<String, Value>,
        flags: impl ExactSizeIterator<Item = (&'a str, &'a Flag)>,
    ) -> (CompiledFlagSet, Vec<Problem>) {
        compile_parts(metadata, evaluators, flags, &BTreeMap::new(), Mode::Lenient)
    }

    /// Compiles any JSON document leniently, as a client receiving flags must: a flag whose
    /// definition is malformed is kept as an error result rather than failing the document.
    pub fn compile_json_lenient(value: &Value) -> (CompiledFlagSet, Vec<Problem>) {
        let parsed = parse_document(value);
        let (compiled, mut problems) = compile_parsed(&parsed.set, &parsed.broken, Mode::Lenient);
        let mut all = parsed.problems;
        all.append(&mut problems);
        (compiled, all)
    }
}

fn parse_json(text: &str) -> Result<Value, ValidationError> {
    serde_json::from_str(text).map_err(|err| ValidationError {
        problems: vec![Problem::root(
            ProblemCode::InvalidJson,
            format!("not valid JSON: {err}"),
        )],
    })
}

/// Parses and compiles a document, collecting every problem of either severity.
fn load_all(value: &Value) -> (FlagSet, CompiledFlagSet, Vec<Problem>) {
    let parsed = parse_document(value);
    let mut problems = parsed.problems;
    let (compiled, compile_problems) = compile_parsed(&parsed.set, &parsed.broken, Mode::Strict);
    problems.extend(compile_problems);
    (parsed.set, compiled, problems)
}

/// A document split into what parsed and what did not.
struct ParsedDocument {
    set: FlagSet,
    /// Flags whose definition did not even deserialize, with the first problem found.
    broken: BTreeMap<String, String>,
    problems: Vec<Problem>,
}

/// Deserializes a document part by part so one malformed flag does not hide the others.
fn parse_document(value: &Value) -> ParsedDocument {
    let mut doc = ParsedDocument {
        set: FlagSet::default(),
        broken: BTreeMap::new(),
        problems: Vec::new(),
    };
    let Value::Object(root) = value else {
        doc.problems.push(Problem::root(
            ProblemCode::WrongType,
            format!(
                "a flag set must be a JSON object, found {}",
                json_type_name(value)
            ),
        ));
        return doc;
    };
    for (name, member) in root {
        let mut path = JsonPath::default();
        path.push_key(name);
        match name.as_str() {
            "$schema" => match member {
                Value::String(s) => doc.set.schema = Some(s.clone()),
                other => doc.problems.push(path.error(
                    ProblemCode::WrongType,
                    format!("must be a string, found {}", json_type_name(other)),
                )),
            },
            "metadata" => match deserialize_at::<Metadata>(member, &path, ProblemCode::InvalidMetadata) {
                Ok(metadata) => doc.set.metadata = metadata,
                Err(problem) => doc.problems.push(problem),
            },
            "$evaluators" => match member {
                Value::Object(evaluators) => {
                    doc.set.evaluators = evaluators
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                }
                other => doc.problems.push(path.error(
                    ProblemCode::WrongType,
                    format!("must be an object, found {}", json_type_name(other)),
                )),
            },
            "flags" => parse_flags(member, &mut path, &mut doc),
            other => doc.problems.push(path.warning(
                ProblemCode::UnknownField,
                format!(
                    "unknown field {other:?} is ignored and not kept (flag sets have $schema, metadata, $evaluators and flags)"
                ),
            )),
        }
    }
    doc
}

fn parse_flags(value: &Value, path: &mut JsonPath, doc: &mut ParsedDocument) {
    let parse_one = |key: &str, flag: &Value, path: &mut JsonPath, doc: &mut ParsedDocument| {
        let mark = path.push_key(key);
        if doc.set.flags.contains_key(key) || doc.broken.contains_key(key) {
            doc.problems
                .push(path.error(ProblemCode::DuplicateKey, "flag key appears twice"));
        } else {
            if let Value::Object(members) = flag {
                for name in members
                    .keys()
                    .filter(|name| !FLAG_FIELDS.contains(&name.as_str()))
                {
                    let mark = path.push_key(name);
                    doc.problems.push(path.warning(
                        ProblemCode::UnknownField,
                        format!(
                            "unknown field {name:?} is ignored and not kept (a flag has {})",
                            FLAG_FIELDS.join(", ")
                        ),
                    ));
                    path.truncate(mark);
                }
            }
            match deserialize_at::<Flag>(flag, path, ProblemCode::InvalidField) {
                Ok(flag) => {
                    doc.set.flags.insert(key.to_owned(), flag);
                }
                Err(problem) => {
                    doc.broken.insert(key.to_owned(), problem.to_string());
                    doc.problems.push(problem);
                }
            }
        }
        path.truncate(mark);
    };
    match value {
        Value::Object(flags) => {
            for (key, flag) in flags {
                parse_one(key, flag, path, doc);
            }
        }
        Value::Array(flags) => {
            for (index, flag) in flags.iter().enumerate() {
                let key = flag.get("key").and_then(Value::as_str);
                match (key, flag) {
                    (Some(key), Value::Object(members)) => {
                        let mut rest = members.clone();
                        rest.remove("key");
                        parse_one(key, &Value::Object(rest), path, doc);
                    }
                    _ => {
                        let mark = path.push_index(index);
                        doc.problems.push(path.error(
                            ProblemCode::InvalidFlagKey,
                            "a flag in the array form needs a string \"key\"",
                        ));
                        path.truncate(mark);
                    }
                }
            }
        }
        other => doc.problems.push(path.error(
            ProblemCode::WrongType,
            format!(
                "must be an object of flags by key (or an array of flags), found {}",
                json_type_name(other)
            ),
        )),
    }
}

/// Deserializes with serde, reporting the failing field's full path.
fn deserialize_at<T: for<'de> Deserialize<'de>>(
    value: &Value,
    path: &JsonPath,
    code: ProblemCode,
) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let mut full = path.clone();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    full.push_index(*index);
                }
                serde_path_to_error::Segment::Map { key }
                | serde_path_to_error::Segment::Enum { variant: key } => {
                    full.push_key(key);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = err.into_inner().to_string();
        // A metadata value of the wrong type is a metadata problem wherever it is.
        let code = if message.starts_with("metadata values") {
            ProblemCode::InvalidMetadata
        } else {
            code
        };
        full.error(code, message)
    })
}

/// Compiles every flag; in strict mode also checks flag keys.
fn compile_parsed(
    set: &FlagSet,
    broken: &BTreeMap<String, String>,
    mode: Mode,
) -> (CompiledFlagSet, Vec<Problem>) {
    compile_parts(
        &set.metadata,
        &set.evaluators,
        set.flags.iter().map(|(key, flag)| (key.as_str(), flag)),
        broken,
        mode,
    )
}

/// Compiles a document given as its parts (the flags from any container).
fn compile_parts<'a>(
    metadata: &Metadata,
    shared: &BTreeMap<String, Value>,
    set_flags: impl ExactSizeIterator<Item = (&'a str, &'a Flag)>,
    broken: &BTreeMap<String, String>,
    mode: Mode,
) -> (CompiledFlagSet, Vec<Problem>) {
    let mut problems = Vec::new();

    // Evaluators are compiled once; a flag that references a broken one is broken too.
    let mut evaluators = Evaluators::default();
    for (name, rule) in shared {
        let mut compiler = Compiler::new(JsonPath::new("$evaluators"), None);
        let mark = compiler.path.push_key(name);
        compiler.inside_evaluator = true;
        let node = compiler.compile(rule, 0);
        compiler.path.truncate(mark);
        // Problems that evaluate to null keep the evaluator usable, as in flagd.
        let ok = !compiler.problems.iter().any(breaks_targeting);
        problems.append(&mut compiler.problems);
        evaluators.insert(name.clone(), ok.then_some(node));
    }

    let mut flags = Vec::with_capacity(set_flags.len() + broken.len());
    for (key, flag) in set_flags {
        flags.push(Arc::new(compile_one(
            key,
            flag,
            metadata,
            &evaluators,
            mode,
            &mut problems,
        )));
    }
    for (key, message) in broken {
        flags.push(Arc::new(CompiledFlag::broken(
            key,
            message.clone(),
            metadata.clone(),
        )));
    }
    (
        CompiledFlagSet::new(flags, metadata.clone(), Arc::new(evaluators)),
        problems,
    )
}

/// Whether a problem makes a flag's targeting unusable: an error, or a warning flagd meets as a
/// failure of the whole rule.
fn breaks_targeting(problem: &Problem) -> bool {
    problem.severity == Severity::Error || problem.code.breaks_targeting()
}

/// Compiles one flag. A flag with errors becomes a broken flag (lenient mode keeps it, as
/// `PARSE_ERROR`); a flag whose targeting flagd could not run evaluates to `PARSE_ERROR` unless
/// disabled; other warnings evaluate as flagd does. Every problem is reported.
fn compile_one(
    key: &str,
    flag: &Flag,
    metadata: &Metadata,
    evaluators: &Evaluators,
    mode: Mode,
    problems: &mut Vec<Problem>,
) -> CompiledFlag {
    let mut path = JsonPath::new("flags");
    path.push_key(key);
    let mut flag_problems = Vec::new();
    if mode == Mode::Strict
        && let Err(message) = check_flag_key(key)
    {
        flag_problems.push(path.error(ProblemCode::InvalidFlagKey, message));
    }
    let compiled = compile_flag(key, flag, metadata, evaluators, path, &mut flag_problems);
    let summary = |problems: &mut dyn Iterator<Item = &Problem>| {
        problems
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let compiled = if flag_problems.iter().any(|p| p.severity == Severity::Error) {
        let message = summary(&mut flag_problems.iter());
        CompiledFlag::broken(key, message, merged_metadata(metadata, &flag.metadata))
    } else if flag_problems.iter().any(breaks_targeting) {
        let message = summary(&mut flag_problems.iter().filter(|p| breaks_targeting(p)));
        compiled.with_targeting_error(message)
    } else {
        compiled
    };
    problems.append(&mut flag_problems);
    compiled
}

impl CompiledFlagSet {
    /// This set with some flags replaced, added or removed, compiling only those (leniently,
    /// against this set's `$evaluators` and metadata) and sharing every other compiled flag.
    /// A change of `$evaluators` or metadata needs a full compile instead.
    pub fn with_changes(
        &self,
        upserts: &[(&str, &Flag)],
        deletes: &[&str],
    ) -> (CompiledFlagSet, Vec<Problem>) {
        let (current, metadata, evaluators) = self.parts();
        let replaced: std::collections::HashSet<&str, FastHasher> = upserts
            .iter()
            .map(|(key, _)| *key)
            .chain(deletes.iter().copied())
            .collect();
        let mut flags: Vec<Arc<CompiledFlag>> = current
            .iter()
            .filter(|flag| !replaced.contains(flag.key()))
            .cloned()
            .collect();
        let mut problems = Vec::new();
        for (key, flag) in upserts {
            flags.push(Arc::new(compile_one(
                key,
                flag,
                metadata,
                evaluators,
                Mode::Lenient,
                &mut problems,
            )));
        }
        (
            CompiledFlagSet::new(flags, metadata.clone(), evaluators.clone()),
            problems,
        )
    }
}

/// The fields of a flag (flagd's, and our `description`).
const FLAG_FIELDS: &[&str] = &[
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "metadata",
    "description",
];

/// A flag key: any non-empty string, as in flagd's schema, up to [`MAX_FLAG_KEY_LEN`] bytes.
/// Keys are percent-encoded wherever they appear in a URL.
pub fn check_flag_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a flag key may not be empty".to_owned());
    }
    if key.len() > MAX_FLAG_KEY_LEN {
        return Err(format!(
            "a flag key may be at most {MAX_FLAG_KEY_LEN} bytes long, this one is {}",
            key.len()
        ));
    }
    if key == "." || key == ".." {
        // URL libraries resolve these dot segments (RFC 3986 §5.2.4) even percent-encoded, so
        // no OFREP client could address the flag.
        return Err(format!(
            "the flag key {key:?} is a URL dot segment, which no client could address"
        ));
    }
    Ok(())
}

fn merged_metadata(set: &Metadata, flag: &Metadata) -> Metadata {
    let mut merged = set.clone();
    merged.extend(flag.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

fn compile_flag(
    key: &str,
    flag: &Flag,
    set_metadata: &Metadata,
    evaluators: &Evaluators,
    mut path: JsonPath,
    problems: &mut Vec<Problem>,
) -> CompiledFlag {
    let flag_type = check_variants(flag, &mut path, problems);
    let default_variant = match &flag.default_variant {
        None => None,
        Some(name) => {
            let index = flag.variants.keys().position(|k| k == name);
            if index.is_none() {
                let mark = path.push_key("defaultVariant");
                problems.push(path.error(
                    ProblemCode::UnknownDefaultVariant,
                    format!(
                        "{name:?} is not a variant (expected one of: {})",
                        variant_list(flag)
                    ),
                ));
                path.truncate(mark);
            }
            index
        }
    };
    let targeting = flag.effective_targeting().map(|rule| {
        let mark = path.push_key("targeting");
        let mut compiler = Compiler::new(path.clone(), Some(evaluators));
        let node = compiler.compile(rule, 0);
        if !compiler.problems.iter().any(breaks_targeting) {
            check_results(rule, flag, &mut compiler.path, &mut compiler.problems);
        }
        problems.append(&mut compiler.problems);
        path.truncate(mark);
        node
    });
    let compiled = CompiledFlag::new(
        key,
        flag,
        flag_type,
        default_variant,
        targeting,
        merged_metadata(set_metadata, &flag.metadata),
    );
    let uses_ref = flag.effective_targeting().is_some_and(contains_ref);
    let reported = |p: &Problem| breaks_targeting(p) || p.code == ProblemCode::NotAVariant;
    if uses_ref && !problems.iter().any(reported) {
        // Results the JSON check could not see (reached through `$ref`).
        let mark = path.push_key("targeting");
        for value in compiled.invalid_results() {
            problems.push(path.warning(ProblemCode::NotAVariant, format!(
                "targeting can return {value} (through $ref), which is not a variant (expected one of: {})",
                variant_list(flag)
            )));
        }
        path.truncate(mark);
    }
    compiled
}

/// The deepest nesting of objects and arrays a variant value may have: the envelopes around it
/// (document, stream message, audit record, OFREP bulk answer) add about ten levels, and JSON
/// readers commonly stop at 128.
pub const MAX_VALUE_DEPTH: usize = 32;

/// How deeply a value nests objects and arrays (a scalar is 0), without recursing on the stack.
fn depth_of(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(object) => Box::new(object.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// The largest integer every JSON reader (JavaScript's included) keeps exactly: 2^53 − 1. flagd's
/// schema refuses variant numbers beyond it.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Whether a number survives every JSON reader unchanged: an integer within ±(2^53 − 1), or a
/// fraction (a 30-digit integer has already lost digits when it arrives as a float).
fn exactly_representable(n: &serde_json::Number) -> bool {
    if let Some(i) = n.as_i64() {
        return i.unsigned_abs() <= MAX_SAFE_INTEGER;
    }
    if let Some(u) = n.as_u64() {
        return u <= MAX_SAFE_INTEGER;
    }
    n.as_f64()
        .is_some_and(|f| f.fract() != 0.0 || f.abs() <= MAX_SAFE_INTEGER as f64)
}

/// Whether a rule uses `$ref` anywhere.
fn contains_ref(rule: &Value) -> bool {
    match rule {
        Value::Object(object) => object
            .iter()
            .any(|(key, value)| key == "$ref" || contains_ref(value)),
        Value::Array(items) => items.iter().any(contains_ref),
        _ => false,
    }
}

fn variant_list(flag: &Flag) -> String {
    flag.variants
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that a flag has variants of one allowed type, and returns that type.
fn check_variants(
    flag: &Flag,
    path: &mut JsonPath,
    problems: &mut Vec<Problem>,
) -> Option<FlagType> {
    let mark = path.push_key("variants");
    if flag.variants.is_empty() {
        problems.push(path.error(ProblemCode::NoVariants, "a flag needs at least one variant"));
    }
    let mut first: Option<(&str, FlagType)> = None;
    let mut mixed = false;
    for (name, value) in &flag.variants {
        if name.is_empty() {
            problems.push(path.error(
                ProblemCode::InvalidVariant,
                "a variant name may not be empty",
            ));
        }
        if depth_of(value) > MAX_VALUE_DEPTH {
            let inner = path.push_key(name);
            problems.push(path.error(
                ProblemCode::InvalidVariant,
                format!(
                    "the value is nested more than {MAX_VALUE_DEPTH} levels deep; every envelope it travels in (export, stream, audit, OFREP) must stay readable"
                ),
            ));
            path.truncate(inner);
        }
        if let Value::Number(n) = value
            && !exactly_representable(n)
        {
            let inner = path.push_key(name);
            problems.push(path.error(
                ProblemCode::InvalidVariant,
                format!(
                    "{n} is outside the safe integer range (±{MAX_SAFE_INTEGER}), so it cannot be kept exactly; use a string"
                ),
            ));
            path.truncate(inner);
        }
        let Some(ty) = FlagType::of(value) else {
            let inner = path.push_key(name);
            let hint = if value.is_array() {
                " (wrap an array in an object)"
            } else {
                ""
            };
            problems.push(path.error(
                ProblemCode::InvalidVariant,
                format!(
                    "a variant value must be a boolean, string, number or object, found {}{hint}",
                    json_type_name(value)
                ),
            ));
            path.truncate(inner);
            continue;
        };
        match first {
            None => first = Some((name, ty)),
            Some((first_name, first_ty)) if first_ty != ty && !mixed => {
                mixed = true;
                problems.push(path.error(ProblemCode::MixedVariants, format!(
                    "variants mix types ({first_name:?} is {first_ty}, {name:?} is {ty}); all variants of a flag must have one type"
                )));
            }
            Some(_) => {}
        }
    }
    path.truncate(mark);
    if mixed { None } else { first.map(|(_, ty)| ty) }
}

/// Reports constant results that cannot name a variant: a typo in `"if": [..., "onn", "off"]`
/// would otherwise only show up as an error for the users who reach that branch.
fn check_results(rule: &Value, flag: &Flag, path: &mut JsonPath, problems: &mut Vec<Problem>) {
    let is_variant = |name: &str| flag.variants.contains_key(name);
    match rule {
        Value::String(name) if !is_variant(name) => problems.push(path.warning(
            ProblemCode::NotAVariant,
            format!(
                "targeting can return {name:?}, which is not a variant (expected one of: {})",
                variant_list(flag)
            ),
        )),
        Value::Bool(b) if !is_variant(if *b { "true" } else { "false" }) => {
            problems.push(path.warning(
                ProblemCode::NotAVariant,
                format!("targeting can return {b}, but the flag has no variant named \"{b}\""),
            ));
        }
        Value::Number(n) if !is_variant(&crate::resolve::number_name(n)) => {
            problems.push(path.warning(
                ProblemCode::NotAVariant,
                format!(
                    "targeting can return the number {n}, which names no variant (expected one of: {})",
                    variant_list(flag)
                ),
            ));
        }
        Value::Object(object) if object.len() == 1 => {
            let Some((op, args)) = object.iter().next() else {
                return;
            };
            let mark = path.push_key(op);
            match (op.as_str(), args) {
                ("if" | "?:", Value::Array(args)) => {
                    for (index, branch) in args.iter().enumerate() {
                        let is_result = index % 2 == 1 || index == args.len() - 1;
                        if is_result {
                            let inner = path.push_index(index);
                            check_results(branch, flag, path, problems);
                            path.truncate(inner);
                        }
                    }
                }
                ("fractional", Value::Array(args)) => {
                    for (index, bucket) in args.iter().enumerate() {
                        if let Some(name @ (Value::String(_) | Value::Bool(_))) =
                            bucket.as_array().and_then(|b| b.first())
                        {
                            let inner = path.push_index(index);
                            let name_mark = path.push_index(0);
                            check_results(name, flag, path, problems);
                            path.truncate(name_mark);
                            path.truncate(inner);
                        }
                    }
                }
                _ => {}
            }
            path.truncate(mark);
        }
        _ => {}
    }
}

/// Compiles one JsonLogic rule, collecting problems instead of stopping at the first.
struct Compiler<'e> {
    path: JsonPath,
    problems: Vec<Problem>,
    /// `None` while compiling an evaluator itself (evaluators may not reference evaluators).
    evaluators: Option<&'e Evaluators>,
    inside_evaluator: bool,
}

impl<'e> Compiler<'e> {
    fn new(path: JsonPath, evaluators: Option<&'e Evaluators>) -> Self {
        Compiler {
            path,
            problems: Vec::new(),
            evaluators,
            inside_evaluator: false,
        }
    }

    /// Records a warning here; the rule in question evaluates to null.
    fn warn(&mut self, code: ProblemCode, message: impl Into<String>) -> Node {
        self.problems.push(self.path.warning(code, message));
        Node::Const(Value::Null)
    }

    /// Records a warning here; the custom operator in question fails when evaluated (so the
    /// whole targeting result is null, as in flagd).
    fn warn_failing(&mut self, code: ProblemCode, message: impl Into<String>) -> Node {
        self.problems.push(self.path.warning(code, message));
        Node::Fail
    }

    fn compile(&mut self, value: &Value, depth: usize) -> Node {
        if depth > MAX_RULE_DEPTH {
            self.problems.push(self.path.error(
                ProblemCode::TooDeep,
                format!("rule is nested more than {MAX_RULE_DEPTH} levels deep"),
            ));
            return Node::Const(Value::Null);
        }
        match value {
            Value::Array(items) => {
                let nodes: Vec<Node> = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        let mark = self.path.push_index(index);
                        let node = self.compile(item, depth + 1);
                        self.path.truncate(mark);
                        node
                    })
                    .collect();
                match all_const(&nodes) {
                    Some(values) => Node::Const(Value::Array(values)),
                    None => Node::Array(nodes.into_boxed_slice()),
                }
            }
            Value::Object(object) => {
                if object.is_empty() {
                    // JsonLogic treats an empty object as data.
                    return Node::Const(value.clone());
                }
                let mut entries = object.iter();
                let (Some((op, args)), None) = (entries.next(), entries.next()) else {
                    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    return self.warn(
                        ProblemCode::InvalidRule,
                        format!(
                            "a rule object must have exactly one operator, found {} keys ({})",
                            keys.len(),
                            keys.join(", ")
                        ),
                    );
                };
                let mark = self.path.push_key(op);
                let node = self.compile_operator(op, args, depth);
                self.path.truncate(mark);
                node
            }
            scalar => Node::Const(scalar.clone()),
        }
    }

    /// Compiles each argument; a non-array argument is a single argument (JsonLogic's sugar).
    fn compile_args(&mut self, args: &Value, depth: usize) -> Vec<Node> {
        match args {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let mark = self.path.push_index(index);
                    let node = self.compile(item, depth + 1);
                    self.path.truncate(mark);
                    node
                })
                .collect(),
            single => vec![self.compile(single, depth + 1)],
        }
    }

    fn arg_count(args: &Value) -> usize {
        match args {
            Value::Array(items) => items.len(),
            _ => 1,
        }
    }

    fn compile_operator(&mut self, op: &str, args: &Value, depth: usize) -> Node {
        let simple = |op: Op| Some(op);
        let eager = match op {
            "==" => simple(Op::Eq),
            "===" => simple(Op::StrictEq),
            "!=" => simple(Op::Ne),
            "!==" => simple(Op::StrictNe),
            "<" => simple(Op::Lt),
            "<=" => simple(Op::Le),
            ">" => simple(Op::Gt),
            ">=" => simple(Op::Ge),
            "!" => simple(Op::Not),
            "!!" => simple(Op::NotNot),
            "%" => simple(Op::Mod),
            "/" => simple(Op::Div),
            "*" => simple(Op::Mul),
            "+" => simple(Op::Add),
            "-" => simple(Op::Sub),
            "max" => simple(Op::Max),
            "min" => simple(Op::Min),
            "merge" => simple(Op::Merge),
            "cat" => simple(Op::Cat),
            "substr" => simple(Op::Substr),
            "in" => simple(Op::In),
            "starts_with" => simple(Op::StartsWith),
            "ends_with" => simple(Op::EndsWith),
            "sem_ver" => simple(Op::SemVer),
            _ => None,
        };
        if let Some(op) = eager {
            return self.compile_eager(op, args, depth);
        }
        match op {
            "var" => self.compile_var(args, depth),
            "missing" => Node::Missing(self.compile_args(args, depth).into_boxed_slice()),
            "missing_some" => {
                if Self::arg_count(args) != 2 {
                    return self.warn(
                        ProblemCode::Arity,
                        "missing_some takes 2 arguments: [minimum, [keys...]]",
                    );
                }
                Node::MissingSome(self.compile_args(args, depth).into_boxed_slice())
            }
            "if" | "?:" => {
                let nodes = self.compile_args(args, depth);
                // Fold a constant condition chain down to the branch it picks.
                if let [Node::Const(condition), then, otherwise] = nodes.as_slice() {
                    let truthy = crate::value::truthy(condition);
                    return if truthy {
                        then.clone()
                    } else {
                        otherwise.clone()
                    };
                }
                Node::If(nodes.into_boxed_slice())
            }
            "and" => Node::And(self.compile_args(args, depth).into_boxed_slice()),
            "or" => Node::Or(self.compile_args(args, depth).into_boxed_slice()),
            "map" | "filter" | "all" | "none" | "some" => {
                let scoped = match op {
                    "map" => ScopedOp::Map,
                    "filter" => ScopedOp::Filter,
                    "all" => ScopedOp::All,
                    "none" => ScopedOp::None,
                    _ => ScopedOp::Some,
                };
                if Self::arg_count(args) != 2 {
                    return self.warn(
                        ProblemCode::Arity,
                        format!("{op} takes 2 arguments: [array, rule]"),
                    );
                }
                let mut nodes = self.compile_args(args, depth).into_iter();
                let (Some(array), Some(logic)) = (nodes.next(), nodes.next()) else {
                    return self.warn(
                        ProblemCode::Arity,
                        format!("{op} takes 2 arguments: [array, rule]"),
                    );
                };
                Node::Scoped(scoped, Box::new([array, logic]))
            }
            "reduce" => {
                let count = Self::arg_count(args);
                if !(2..=3).contains(&count) {
                    return self.warn(
                        ProblemCode::Arity,
                        "reduce takes 2 or 3 arguments: [array, rule, initial]",
                    );
                }
                let mut nodes = self.compile_args(args, depth).into_iter();
                let (Some(array), Some(logic)) = (nodes.next(), nodes.next()) else {
                    return self.warn(
                        ProblemCode::Arity,
                        "reduce takes 2 or 3 arguments: [array, rule, initial]",
                    );
                };
                let initial = nodes.next().unwrap_or(Node::Const(Value::Null));
                Node::Reduce(Box::new([array, logic, initial]))
            }
            "fractional" => self.compile_fractional(args, depth),
            "$ref" => self.compile_ref(args),
            unknown => {
                let hint = closest_operator(unknown)
                    .map(|near| format!(" (did you mean {near:?}?)"))
                    .unwrap_or_default();
                self.warn(
                    ProblemCode::UnknownOperator,
                    format!("unknown operator {unknown:?}{hint}"),
                )
            }
        }
    }

    fn compile_eager(&mut self, op: Op, args: &Value, depth: usize) -> Node {
        let count = Self::arg_count(args);
        let arity_problem = match op {
            Op::StartsWith | Op::EndsWith if count != 2 => {
                Some("takes exactly 2 arguments: [text, affix]".to_owned())
            }
            Op::SemVer if count != 3 => Some(format!(
                "takes exactly 3 arguments: [version, operator, version] (operators: {SEMVER_OPS})"
            )),
            Op::Lt | Op::Le if !(2..=3).contains(&count) => {
                Some("takes 2 arguments, or 3 for the between form".to_owned())
            }
            Op::Eq
            | Op::StrictEq
            | Op::Ne
            | Op::StrictNe
            | Op::Gt
            | Op::Ge
            | Op::Mod
            | Op::Div
            | Op::In
                if count != 2 =>
            {
                Some("takes exactly 2 arguments".to_owned())
            }
            Op::Substr if !(2..=3).contains(&count) => {
                Some("takes 2 or 3 arguments: [text, start, length]".to_owned())
            }
            _ => None,
        };
        if let Some(message) = arity_problem {
            self.warn(
                ProblemCode::Arity,
                format!("{} {message}, found {count}", op_name(op)),
            );
            // flagd's custom operators fail at evaluation (nulling the whole targeting);
            // JsonLogic's own operators evaluate to null here (a documented difference).
            return if matches!(op, Op::StartsWith | Op::EndsWith | Op::SemVer) {
                Node::Fail
            } else {
                Node::Const(Value::Null)
            };
        }
        let nodes = self.compile_args(args, depth);
        if op == Op::SemVer {
            self.check_sem_ver_constants(&nodes);
        }
        if let (Op::StartsWith | Op::EndsWith, [text, Node::Const(Value::String(affix))]) =
            (op, nodes.as_slice())
            && !matches!(text, Node::Const(_))
        {
            return Node::Affix(Box::new(AffixNode {
                text: text.clone(),
                affix: affix.as_str().into(),
                at_end: op == Op::EndsWith,
            }));
        }
        if op == Op::In
            && let [needle, Node::Const(Value::Array(items))] = nodes.as_slice()
            && items.len() >= IN_SET_THRESHOLD
            && items.iter().all(Value::is_string)
        {
            let set = items
                .iter()
                .filter_map(Value::as_str)
                .map(Box::from)
                .collect();
            return Node::InStringSet(Box::new(InSet {
                needle: needle.clone(),
                set,
            }));
        }
        let node = Node::Op(op, nodes.into_boxed_slice());
        fold_constant(node)
    }

    fn check_sem_ver_constants(&mut self, nodes: &[Node]) {
        for (index, node) in nodes.iter().enumerate() {
            let Node::Const(value) = node else { continue };
            let mark = self.path.push_index(index);
            match (index, value) {
                (1, Value::String(op)) if SemVerOp::parse(op).is_none() => {
                    self.warn(
                        ProblemCode::InvalidSemver,
                        format!("{op:?} is not a sem_ver operator (expected one of: {SEMVER_OPS})"),
                    );
                }
                (1, other) if !other.is_string() => {
                    self.warn(
                        ProblemCode::InvalidSemver,
                        format!(
                            "the sem_ver operator must be a string, found {}",
                            json_type_name(other)
                        ),
                    );
                }
                (0 | 2, Value::String(text)) if Version::parse(text).is_none() => {
                    self.warn(
                        ProblemCode::InvalidSemver,
                        format!("{text:?} is not a semantic version"),
                    );
                }
                _ => {}
            }
            self.path.truncate(mark);
        }
    }

    fn compile_var(&mut self, args: &Value, depth: usize) -> Node {
        let (path_arg, default) = match args {
            Value::Array(items) => match items.as_slice() {
                [] => (&Value::Null, None),
                [path] => (path, None),
                [path, default] => (path, Some(default)),
                _ => {
                    return self.warn(
                        ProblemCode::Arity,
                        format!(
                            "var takes 1 or 2 arguments: [path, default], found {}",
                            items.len()
                        ),
                    );
                }
            },
            single => (single, None),
        };
        let path = match path_arg {
            Value::Null => VarPath::Static(Box::new([])),
            Value::String(text) if text.is_empty() => VarPath::Static(Box::new([])),
            Value::String(text) => VarPath::Static(text.split('.').map(Box::from).collect()),
            Value::Number(n) => VarPath::Static(Box::new([Box::from(n.to_string())])),
            Value::Object(_) => VarPath::Dynamic(self.compile(path_arg, depth + 1)),
            other => {
                return self.warn(
                    ProblemCode::InvalidRule,
                    format!(
                        "a var path must be a string or number, found {}",
                        json_type_name(other)
                    ),
                );
            }
        };
        let default = default.map(|value| self.compile(value, depth + 1));
        if let (VarPath::Static(segments), None) = (&path, &default)
            && let [name] = segments.as_ref()
        {
            match name.as_ref() {
                crate::TARGETING_KEY => return Node::TargetingKey,
                "$flagd" => {}
                _ => return Node::Attribute(name.clone()),
            }
        }
        Node::Var(Box::new(VarNode { path, default }))
    }

    fn compile_fractional(&mut self, args: &Value, depth: usize) -> Node {
        let Value::Array(items) = args else {
            return self.warn_failing(
                ProblemCode::Weights,
                "fractional takes an array: [bucketBy?, [variant, weight], ...]",
            );
        };
        if items.is_empty() {
            return self.warn_failing(
                ProblemCode::Arity,
                "fractional needs at least one bucket [variant, weight]",
            );
        }
        let nodes = self.compile_args(args, depth);
        let mut buckets: &[Node] = &nodes;
        let bucket_by = match (&items[0], &nodes[0]) {
            (Value::String(text), _) => {
                buckets = &nodes[1..];
                BucketBy::Constant(text.as_str().into())
            }
            (Value::Null, _) => {
                buckets = &nodes[1..];
                BucketBy::FlagAndTargetingKey
            }
            (Value::Array(_), _) => BucketBy::FlagAndTargetingKey,
            (Value::Object(_), node) => {
                buckets = &nodes[1..];
                BucketBy::Dynamic(node.clone())
            }
            (other, _) => {
                let mark = self.path.push_index(0);
                self.warn(
                    ProblemCode::Weights,
                    format!(
                        "the first fractional argument must be a bucketBy string or rule, or a bucket, found {}",
                        json_type_name(other)
                    ),
                );
                self.path.truncate(mark);
                return Node::Fail;
            }
        };
        let offset = nodes.len() - buckets.len();
        if buckets.is_empty() {
            return self.warn_failing(
                ProblemCode::Arity,
                "fractional needs at least one bucket [variant, weight]",
            );
        }
        // Check constant buckets now, so a bad weight is reported at write time.
        let mut constant: Vec<(Value, u64)> = Vec::new();
        let mut all_constant = true;
        let mut usable = true;
        for (index, node) in buckets.iter().enumerate() {
            let mark = self.path.push_index(index + offset);
            match (&items[index + offset], node) {
                (Value::Array(_), Node::Const(value)) => match check_bucket(value) {
                    Ok(bucket) => constant.push(bucket),
                    Err(message) => {
                        usable = false;
                        self.warn(ProblemCode::Weights, message);
                    }
                },
                (Value::Array(_), _) => all_constant = false,
                (Value::Object(_), _) => all_constant = false,
                (other, _) => {
                    usable = false;
                    self.warn(
                        ProblemCode::Weights,
                        format!(
                            "a bucket must be an array [variant, weight], found {}",
                            json_type_name(other)
                        ),
                    );
                }
            }
            self.path.truncate(mark);
        }
        if !usable {
            return Node::Fail;
        }
        let total: u64 = constant.iter().map(|(_, w)| w).sum();
        if all_constant && total == 0 {
            return self.warn_failing(
                ProblemCode::Weights,
                "fractional weights add up to 0, so no bucket can be chosen (it always fails)",
            );
        }
        if total > MAX_TOTAL_WEIGHT {
            return self.warn_failing(
                ProblemCode::Weights,
                format!(
                    "fractional weights add up to {total}, more than the maximum {MAX_TOTAL_WEIGHT}"
                ),
            );
        }
        let buckets = if all_constant {
            let mut end = 0u32;
            let mut ends = Vec::with_capacity(constant.len());
            let mut variants = Vec::with_capacity(constant.len());
            for (variant, weight) in constant {
                // total <= i32::MAX was checked above, so every running end fits u32.
                end += weight as u32;
                ends.push(end);
                variants.push(variant);
            }
            Buckets::Constant {
                variants: variants.into(),
                ends: ends.into(),
                total: end,
            }
        } else {
            Buckets::Dynamic(buckets.to_vec().into_boxed_slice())
        };
        Node::Fractional(Box::new(FractionalNode { bucket_by, buckets }))
    }

    fn compile_ref(&mut self, args: &Value) -> Node {
        let Value::String(name) = args else {
            return self.warn(
                ProblemCode::UnresolvedRef,
                format!(
                    "$ref takes the name of an evaluator, found {}",
                    json_type_name(args)
                ),
            );
        };
        if self.inside_evaluator {
            return self.warn(
                ProblemCode::UnresolvedRef,
                format!("an evaluator may not reference another evaluator ($ref {name:?})"),
            );
        }
        let Some(evaluators) = self.evaluators else {
            return self.warn(ProblemCode::UnresolvedRef, "$ref is not allowed here");
        };
        match evaluators.get(name.as_str()) {
            Some(Some(node)) => node.clone(),
            Some(None) => self.warn(
                ProblemCode::UnresolvedRef,
                format!("$ref {name:?} refers to an evaluator that has errors"),
            ),
            None => {
                let mut known: Vec<&str> = evaluators.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none are defined".to_owned()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                self.warn(
                    ProblemCode::UnresolvedRef,
                    format!("$ref {name:?} does not name an evaluator in $evaluators ({known})"),
                )
            }
        }
    }
}

fn check_bucket(value: &Value) -> Result<(Value, u64), String> {
    let Value::Array(parts) = value else {
        return Err("a bucket must be an array [variant, weight]".to_owned());
    };
    match parts.as_slice() {
        [] => Err("a bucket needs a variant: [variant, weight]".to_owned()),
        [_, _, _, ..] => Err(format!(
            "a bucket is [variant] or [variant, weight], found {} elements",
            parts.len()
        )),
        [variant, rest @ ..] => {
            if !matches!(variant, Value::String(_) | Value::Bool(_) | Value::Null) {
                return Err(format!(
                    "a bucket's variant must be a variant name, found {}",
                    json_type_name(variant)
                ));
            }
            let weight = match rest.first() {
                None | Some(Value::Null) => 1,
                Some(Value::Number(n)) => {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    weight_of(f).ok_or_else(|| {
                        format!("a bucket weight must be a whole number no larger than {MAX_TOTAL_WEIGHT}, found {n}")
                    })?
                }
                Some(other) => {
                    return Err(format!(
                        "a bucket weight must be a number, found {}",
                        json_type_name(other)
                    ));
                }
            };
            Ok((variant.clone(), weight))
        }
    }
}

fn all_const(nodes: &[Node]) -> Option<Vec<Value>> {
    nodes
        .iter()
        .map(|node| match node {
            Node::Const(value) => Some(value.clone()),
            _ => None,
        })
        .collect()
}

/// Evaluates an operator whose arguments are all constants once, at compile time.
fn fold_constant(node: Node) -> Node {
    let Node::Op(_, args) = &node else {
        return node;
    };
    if !args.iter().all(|arg| matches!(arg, Node::Const(_))) {
        return node;
    }
    // Eager operators read no context, so an empty one serves.
    let ctx = EvaluationContext::anonymous();
    let flag_key = Value::Null;
    let flag_key_hash = MurmurPrefix::new(&[]);
    let env = Env::new(&ctx, &flag_key, &flag_key_hash, Timestamp::At(0));
    let value = eval(&node, Scope::root(&env)).into_owned();
    if env.failed.get() {
        // A custom operator that fails must fail when evaluated (its failure nulls the whole
        // targeting), not become a null constant.
        return Node::Fail;
    }
    Node::Const(value)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "==",
        Op::StrictEq => "===",
        Op::Ne => "!=",
        Op::StrictNe => "!==",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Not => "!",
        Op::NotNot => "!!",
        Op::Mod => "%",
        Op::Div => "/",
        Op::Mul => "*",
        Op::Add => "+",
        Op::Sub => "-",
        Op::Max => "max",
        Op::Min => "min",
        Op::Merge => "merge",
        Op::Cat => "cat",
        Op::Substr => "substr",
        Op::In => "in",
        Op::StartsWith => "starts_with",
        Op::EndsWith => "ends_with",
        Op::SemVer => "sem_ver",
    }
}

/// The known operator closest to a misspelt one, if any is close.
fn closest_operator(unknown: &str) -> Option<&'static str> {
    OPERATORS
        .iter()
        .map(|op| (edit_distance(unknown, op), *op))
        .filter(|(distance, op)| *distance <= 2 && *distance < op.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, op)| op)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Compiles and evaluates one JsonLogic rule against a context, with `$flagd.flagKey` set to
/// `flag_key`. For tools and tests; flags are compiled once through [`CompiledFlagSet`].
pub fn evaluate_rule(
    rule: &Value,
    ctx: &EvaluationContext,
    flag_key: &str,
    timestamp: i64,
) -> Result<Value, ValidationError> {
    let evaluators = Evaluators::default();
    let mut compiler = Compiler::new(JsonPath::default(), Some(&evaluators));
    let node = compiler.compile(rule, 0);
    if compiler.problems.iter().any(breaks_targeting) {
        return Err(ValidationError {
            problems: compiler.problems,
        });
    }
    let flag_key_hash = MurmurPrefix::new(flag_key.as_bytes());
    let flag_key = Value::String(flag_key.to_owned());
    let env = Env::new(ctx, &flag_key, &flag_key_hash, Timestamp::At(timestamp));
    let value = eval(&node, Scope::root(&env)).into_owned();
    // A custom operator failed: the result is null, as flagd answers for targeting.
    Ok(if env.failed.get() { Value::Null } else { value })
}
