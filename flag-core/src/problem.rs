//! Validation problems: what is wrong and where, as a JSON path.

use std::fmt;

/// One problem found in a flag-set document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Where, as a JSON path such as `flags.new-checkout.defaultVariant` (empty for the root).
    pub path: String,
    /// What is wrong, in plain words.
    pub message: String,
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

    pub(crate) fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            path: self.text.clone(),
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
                Problem {
                    path: "flags.a".into(),
                    message: "x".into(),
                },
                Problem {
                    path: "flags.b".into(),
                    message: "y".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid flag definition (2 problems):\n  - flags.a: x\n  - flags.b: y"
        );
    }
}
