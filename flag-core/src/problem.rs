//! Validation problems: what is wrong, where (as a JSON path), how serious, and a stable code.

use std::fmt;

/// How serious a problem is. The line between the two is what flagd itself does: see
/// `docs/COMPATIBILITY.md`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// flagd will not load such a document: it is refused whole and nothing is stored.
    #[default]
    Error,
    /// flagd loads the document and deals with this at evaluation time; so do we, exactly as
    /// flagd does. Strict mode turns warnings into errors.
    Warning,
}

/// A stable, machine-readable name for a kind of problem.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemCode {
    /// Not JSON at all (error).
    InvalidJson,
    /// A value of the wrong JSON type where the format fixes one: the document, `flags`, a
    /// flag, `$evaluators`, `$schema` (error).
    WrongType,
    /// A flag field flagd does not accept: `state` other than `ENABLED`/`DISABLED`, a missing
    /// `state` or `variants`, `defaultVariant` of the wrong type (error).
    InvalidField,
    /// An empty flag key, or one longer than the limit (error).
    InvalidFlagKey,
    /// The same flag key twice (error).
    DuplicateKey,
    /// A flag without variants (error).
    NoVariants,
    /// A variant value that is not a boolean, string, number or object, or an empty variant
    /// name (error).
    InvalidVariant,
    /// Variants of different types in one flag (error).
    MixedVariants,
    /// `defaultVariant` names no variant (error).
    UnknownDefaultVariant,
    /// A metadata value that is not a string, number or boolean (error).
    InvalidMetadata,
    /// A rule nested deeper than [`crate::MAX_RULE_DEPTH`] (error: a safety limit of ours).
    TooDeep,
    /// A field flagd ignores; it is not kept (warning).
    UnknownField,
    /// An operator JsonLogic and flagd do not define: the flag evaluates to `PARSE_ERROR`
    /// (warning).
    UnknownOperator,
    /// A `$ref` to no evaluator, to an evaluator with errors, or inside an evaluator: the flag
    /// evaluates to `PARSE_ERROR` (warning).
    UnresolvedRef,
    /// A rule that is not a JsonLogic expression (an object with several keys, a `var` path of
    /// the wrong type): the flag evaluates to `PARSE_ERROR` (warning).
    InvalidRule,
    /// An operator with the wrong number of arguments: it evaluates to null (warning).
    Arity,
    /// A constant `sem_ver` operator or version that is not valid: it evaluates to null
    /// (warning).
    InvalidSemver,
    /// A `fractional` bucket or weight flagd cannot use: the `fractional` evaluates to null
    /// (warning).
    Weights,
    /// A constant targeting result that names no variant: `GENERAL` error for the contexts
    /// that reach it (warning).
    NotAVariant,
    /// Anything else (and, when read back from a server, a code this build does not know).
    #[default]
    #[serde(other)]
    Invalid,
}

impl ProblemCode {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidJson => "invalid_json",
            ProblemCode::WrongType => "wrong_type",
            ProblemCode::InvalidField => "invalid_field",
            ProblemCode::InvalidFlagKey => "invalid_flag_key",
            ProblemCode::DuplicateKey => "duplicate_key",
            ProblemCode::NoVariants => "no_variants",
            ProblemCode::InvalidVariant => "invalid_variant",
            ProblemCode::MixedVariants => "mixed_variants",
            ProblemCode::UnknownDefaultVariant => "unknown_default_variant",
            ProblemCode::InvalidMetadata => "invalid_metadata",
            ProblemCode::TooDeep => "too_deep",
            ProblemCode::UnknownField => "unknown_field",
            ProblemCode::UnknownOperator => "unknown_operator",
            ProblemCode::UnresolvedRef => "unresolved_ref",
            ProblemCode::InvalidRule => "invalid_rule",
            ProblemCode::Arity => "arity",
            ProblemCode::InvalidSemver => "invalid_semver",
            ProblemCode::Weights => "weights",
            ProblemCode::NotAVariant => "not_a_variant",
            ProblemCode::Invalid => "invalid",
        }
    }

    /// Whether a warning of this kind makes the flag's targeting fail as a whole
    /// (`PARSE_ERROR`), as flagd's evaluator does when it meets it.
    pub fn breaks_targeting(self) -> bool {
        matches!(
            self,
            ProblemCode::UnknownOperator | ProblemCode::UnresolvedRef | ProblemCode::InvalidRule
        )
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a flag-set document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Where, as a JSON path such as `flags.new-checkout.defaultVariant` (empty for the root).
    pub path: String,
    /// What kind of problem, for programs.
    #[serde(default)]
    pub code: ProblemCode,
    /// Error (refused) or warning (loaded, handled at evaluation as flagd does).
    #[serde(default)]
    pub severity: Severity,
    /// What is wrong, in plain words.
    pub message: String,
}

impl Problem {
    /// An error at the document root.
    pub(crate) fn root(code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            path: String::new(),
            code,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// Whether this is a warning.
    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A document (or flag) that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// All problems, in document order. Never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid flag definition: {one}"),
            many => {
                write!(f, "invalid flag definition ({} problems):", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// Builds JSON paths while walking a document, without reallocating at every step.
#[derive(Debug, Default, Clone)]
pub(crate) struct JsonPath {
    text: String,
}

impl JsonPath {
    pub(crate) fn new(root: &str) -> Self {
        JsonPath {
            text: root.to_owned(),
        }
    }

    /// Appends `.key` (or `["key"]` when the key would make the dotted form ambiguous) and
    /// returns the length to truncate back to.
    pub(crate) fn push_key(&mut self, key: &str) -> usize {
        let mark = self.text.len();
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'$'));
        if plain {
            if !self.text.is_empty() {
                self.text.push('.');
            }
            self.text.push_str(key);
        } else {
            // serde_json's Display of a string is a quoted, escaped JSON string.
            self.text.push('[');
            self.text
                .push_str(&serde_json::Value::from(key).to_string());
            self.text.push(']');
        }
        mark
    }

    /// Appends `[index]` and returns the length to truncate back to.
    pub(crate) fn push_index(&mut self, index: usize) -> usize {
        let mark = self.text.len();
        self.text.push('[');
        self.text.push_str(&index.to_string());
        self.text.push(']');
        mark
    }

    pub(crate) fn truncate(&mut self, mark: usize) {
        self.text.truncate(mark);
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// An error here.
    pub(crate) fn error(&self, code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            path: self.text.clone(),
            code,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// A warning here.
    pub(crate) fn warning(&self, code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            path: self.text.clone(),
            code,
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_would_be_ambiguous() {
        let mut path = JsonPath::new("flags");
        let mark = path.push_key("new-checkout");
        assert_eq!(path.as_str(), "flags.new-checkout");
        path.truncate(mark);
        path.push_key("a.b");
        assert_eq!(path.as_str(), r#"flags["a.b"]"#);
        let mut path = JsonPath::default();
        path.push_key("flags");
        path.push_index(2);
        assert_eq!(path.as_str(), "flags[2]");
    }

    #[test]
    fn error_lists_every_problem() {
        let err = ValidationError {
            problems: vec![
                JsonPath::new("flags.a").error(ProblemCode::Invalid, "x"),
                JsonPath::new("flags.b").warning(ProblemCode::Arity, "y"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid flag definition (2 problems):\n  - flags.a: x\n  - flags.b: y"
        );
    }
}
