//! The success condition of a metric analysis guard (issue 18, groundwork): a small, safe
//! language over one measured value, parsed once when a ramp starts, never a general expression
//! evaluator.
//!
//! ```text
//! condition  := conjunction ("or" conjunction)*
//! conjunction:= negation ("and" negation)*
//! negation   := "not" negation | primary
//! primary    := "(" condition ")" | "isNaN(result)" | operand comparator operand
//! operand    := "result" | number          (number: 0.02, -1, 1e-3, 5)
//! comparator := "<" | "<=" | ">" | ">=" | "==" | "!="
//! ```
//!
//! Comparisons follow IEEE 754: any comparison with NaN is false except `!=`, so
//! `result < 0.02` fails on NaN; say `isNaN(result) or result < 0.02` to accept it. A condition
//! must mention `result` (a constant condition is a mistake). At most 64 nodes and 512
//! characters.

use std::fmt;

/// The longest condition accepted, in bytes.
const MAX_LEN: usize = 512;
/// The most nodes (comparisons, `isNaN`, `and`, `or`, `not`) in one condition.
const MAX_NODES: usize = 64;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Both hold.
    And(Box<Condition>, Box<Condition>),
    /// Either holds.
    Or(Box<Condition>, Box<Condition>),
    /// It does not hold.
    Not(Box<Condition>),
    /// The value is NaN.
    IsNaN,
    /// A comparison.
    Compare(Operand, Comparator, Operand),
}

/// A side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// The measured value.
    Result,
    /// A constant.
    Number(f64),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

/// Why a condition does not parse: what, and where (a 1-based column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ConditionError {
    /// 1-based character column of the problem.
    pub column: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl Condition {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        if text.len() > MAX_LEN {
            return Err(ConditionError {
                column: 1,
                message: format!("a condition is at most {MAX_LEN} characters"),
            });
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            nodes: 0,
            end: text.chars().count() + 1,
        };
        let condition = parser.disjunction()?;
        if let Some(token) = parser.peek() {
            return Err(ConditionError {
                column: token.column,
                message: format!("expected `and`, `or` or the end, found {}", token.kind),
            });
        }
        if !condition.mentions_result() {
            return Err(ConditionError {
                column: 1,
                message: "the condition never looks at `result`".to_owned(),
            });
        }
        Ok(condition)
    }

    /// Whether the condition holds for a measured `result`.
    pub fn holds(&self, result: f64) -> bool {
        match self {
            Condition::And(a, b) => a.holds(result) && b.holds(result),
            Condition::Or(a, b) => a.holds(result) || b.holds(result),
            Condition::Not(a) => !a.holds(result),
            Condition::IsNaN => result.is_nan(),
            Condition::Compare(left, comparator, right) => {
                let value = |operand: &Operand| match operand {
                    Operand::Result => result,
                    Operand::Number(number) => *number,
                };
                let (l, r) = (value(left), value(right));
                match comparator {
                    Comparator::Less => l < r,
                    Comparator::LessOrEqual => l <= r,
                    Comparator::Greater => l > r,
                    Comparator::GreaterOrEqual => l >= r,
                    Comparator::Equal => l == r,
                    Comparator::NotEqual => l != r,
                }
            }
        }
    }

    fn mentions_result(&self) -> bool {
        match self {
            Condition::And(a, b) | Condition::Or(a, b) => {
                a.mentions_result() || b.mentions_result()
            }
            Condition::Not(a) => a.mentions_result(),
            Condition::IsNaN => true,
            Condition::Compare(left, _, right) => {
                *left == Operand::Result || *right == Operand::Result
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Result,
    Number(f64),
    Comparator(Comparator),
    And,
    Or,
    Not,
    IsNaN,
    Open,
    Close,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Result => f.write_str("`result`"),
            Kind::Number(number) => write!(f, "the number {number}"),
            Kind::Comparator(_) => f.write_str("a comparison operator"),
            Kind::And => f.write_str("`and`"),
            Kind::Or => f.write_str("`or`"),
            Kind::Not => f.write_str("`not`"),
            Kind::IsNaN => f.write_str("`isNaN(result)`"),
            Kind::Open => f.write_str("`(`"),
            Kind::Close => f.write_str("`)`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let push = |tokens: &mut Vec<Token>, kind| tokens.push(Token { kind, column });
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        match (c, next) {
            ('<', Some('=')) | ('>', Some('=')) | ('=', Some('=')) | ('!', Some('=')) => {
                let comparator = match c {
                    '<' => Comparator::LessOrEqual,
                    '>' => Comparator::GreaterOrEqual,
                    '=' => Comparator::Equal,
                    _ => Comparator::NotEqual,
                };
                push(&mut tokens, Kind::Comparator(comparator));
                i += 2;
            }
            ('<', _) => {
                push(&mut tokens, Kind::Comparator(Comparator::Less));
                i += 1;
            }
            ('>', _) => {
                push(&mut tokens, Kind::Comparator(Comparator::Greater));
                i += 1;
            }
            ('(', _) => {
                push(&mut tokens, Kind::Open);
                i += 1;
            }
            (')', _) => {
                push(&mut tokens, Kind::Close);
                i += 1;
            }
            _ if c.is_ascii_digit() || c == '.' || c == '-' || c == '+' => {
                let start = i;
                i += 1;
                // Digits, a point, an exponent (`1e-3`): the only letters a number holds are
                // its exponent's.
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || matches!(chars[i], '.' | 'e' | 'E')
                        || (matches!(chars[i], '-' | '+') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let literal: String = chars[start..i].iter().collect();
                let number = literal
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| ConditionError {
                        column,
                        message: format!("{literal:?} is not a number (examples: 0.02, -1, 1e-3)"),
                    })?;
                push(&mut tokens, Kind::Number(number));
            }
            _ if c.is_alphabetic() => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let kind = match word.as_str() {
                    "result" => Kind::Result,
                    "and" => Kind::And,
                    "or" => Kind::Or,
                    "not" => Kind::Not,
                    "isNaN" => {
                        // Exactly `isNaN(result)`, spaces allowed inside.
                        let rest: String = chars[i..].iter().collect();
                        let compact: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
                        if !compact.starts_with("(result)") {
                            return Err(ConditionError {
                                column,
                                message: "isNaN takes exactly `result`: write isNaN(result)"
                                    .to_owned(),
                            });
                        }
                        // Skip to the closing parenthesis.
                        while i < chars.len() && chars[i] != ')' {
                            i += 1;
                        }
                        i += 1;
                        Kind::IsNaN
                    }
                    other => {
                        return Err(ConditionError {
                            column,
                            message: format!(
                                "unknown word {other:?}: a condition uses result, numbers, comparisons, and, or, not, isNaN(result)"
                            ),
                        });
                    }
                };
                push(&mut tokens, kind);
            }
            _ => {
                return Err(ConditionError {
                    column,
                    message: format!(
                        "unexpected {c:?} (comparisons are <, <=, >, >=, ==, !=; join them with and / or)"
                    ),
                });
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    nodes: usize,
    /// The column just past the text, for "unexpected end" errors.
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn node(&mut self, column: usize) -> Result<(), ConditionError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(ConditionError {
                column,
                message: format!("a condition has at most {MAX_NODES} parts"),
            });
        }
        Ok(())
    }

    fn disjunction(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.conjunction()?;
        while let Some(token) = self.peek().filter(|t| t.kind == Kind::Or).cloned() {
            self.at += 1;
            self.node(token.column)?;
            let right = self.conjunction()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.negation()?;
        while let Some(token) = self.peek().filter(|t| t.kind == Kind::And).cloned() {
            self.at += 1;
            self.node(token.column)?;
            let right = self.negation()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn negation(&mut self) -> Result<Condition, ConditionError> {
        if let Some(token) = self.peek().filter(|t| t.kind == Kind::Not).cloned() {
            self.at += 1;
            self.node(token.column)?;
            return Ok(Condition::Not(Box::new(self.negation()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Condition, ConditionError> {
        let Some(token) = self.next() else {
            return Err(self.unexpected_end("a comparison, isNaN(result) or `(`"));
        };
        self.node(token.column)?;
        match token.kind {
            Kind::Open => {
                let inner = self.disjunction()?;
                match self.next() {
                    Some(Token {
                        kind: Kind::Close, ..
                    }) => Ok(inner),
                    Some(other) => Err(ConditionError {
                        column: other.column,
                        message: format!("expected `)`, found {}", other.kind),
                    }),
                    None => Err(self.unexpected_end("`)`")),
                }
            }
            Kind::IsNaN => Ok(Condition::IsNaN),
            Kind::Result | Kind::Number(_) => {
                let left = operand(&token.kind);
                let comparator = match self.next() {
                    Some(Token {
                        kind: Kind::Comparator(comparator),
                        ..
                    }) => comparator,
                    Some(other) => {
                        return Err(ConditionError {
                            column: other.column,
                            message: format!(
                                "expected a comparison operator (<, <=, >, >=, ==, !=), found {}",
                                other.kind
                            ),
                        });
                    }
                    None => return Err(self.unexpected_end("a comparison operator")),
                };
                let right = match self.next() {
                    Some(Token {
                        kind: kind @ (Kind::Result | Kind::Number(_)),
                        ..
                    }) => operand(&kind),
                    Some(other) => {
                        return Err(ConditionError {
                            column: other.column,
                            message: format!("expected `result` or a number, found {}", other.kind),
                        });
                    }
                    None => return Err(self.unexpected_end("`result` or a number")),
                };
                Ok(Condition::Compare(left, comparator, right))
            }
            other => Err(ConditionError {
                column: token.column,
                message: format!("expected a comparison, isNaN(result) or `(`, found {other}"),
            }),
        }
    }

    fn unexpected_end(&self, expected: &str) -> ConditionError {
        ConditionError {
            column: self.end,
            message: format!("the condition ends where {expected} was expected"),
        }
    }
}

fn operand(kind: &Kind) -> Operand {
    match kind {
        Kind::Number(number) => Operand::Number(*number),
        _ => Operand::Result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_hold_as_written() {
        let cases: &[(&str, &[(f64, bool)])] = &[
            (
                "result < 0.02",
                &[(0.01, true), (0.02, false), (f64::NAN, false)],
            ),
            ("result <= 0.02", &[(0.02, true), (0.03, false)]),
            ("0.5 > result", &[(0.4, true), (0.6, false)]),
            (
                "result >= 1e-3 and result != 5",
                &[(0.001, true), (5.0, false), (0.0, false)],
            ),
            (
                "isNaN(result) or result < 0.02",
                &[(f64::NAN, true), (0.01, true), (0.5, false)],
            ),
            ("not (result == 0)", &[(0.0, false), (1.0, true)]),
            (
                "result > 1 or result < -1 and result != -5",
                &[(2.0, true), (-2.0, true), (-5.0, false), (0.0, false)],
            ),
            ("isNaN( result )", &[(f64::NAN, true), (1.0, false)]),
        ];
        for (text, expectations) in cases {
            let condition = Condition::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for (value, expected) in *expectations {
                assert_eq!(condition.holds(*value), *expected, "{text} with {value}");
            }
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let condition = Condition::parse("result > 1 or result < -1 and result != -5").unwrap();
        assert!(matches!(condition, Condition::Or(_, _)));
    }

    #[test]
    fn mistakes_are_named_with_their_column() {
        let cases = [
            ("", "ends where a comparison"),
            ("result", "ends where a comparison operator"),
            ("result <", "ends where `result` or a number"),
            ("result = 1", "unexpected '='"),
            ("result < 0.02 and", "ends where a comparison"),
            ("result < 0.02 foo", "unknown word \"foo\""),
            ("(result < 1", "ends where `)`"),
            ("result < 1)", "expected `and`, `or` or the end"),
            ("result < 1.2.3", "is not a number"),
            ("result < abc", "unknown word"),
            ("isNaN(x)", "isNaN takes exactly `result`"),
            ("1 < 2", "never looks at `result`"),
            ("result < 1e999", "is not a number"),
            ("result < 0.02; drop table", "unexpected ';'"),
        ];
        for (text, expected) in cases {
            let error = Condition::parse(text).unwrap_err();
            assert!(error.to_string().contains(expected), "{text:?}: {error}");
        }
        assert_eq!(Condition::parse("result = 1").unwrap_err().column, 8);
    }

    proptest::proptest! {
        /// Whatever is typed, the parser answers (a condition or an error), never panics.
        #[test]
        fn any_text_parses_or_is_refused(text in "[ -~é(){}<>=!]{0,60}") {
            let _ = Condition::parse(&text);
        }

        /// Printed conditions of random shape parse and agree with direct evaluation.
        #[test]
        fn comparisons_agree_with_rust(threshold in -1e6f64..1e6, value in -1e6f64..1e6) {
            let condition = Condition::parse(&format!("result < {threshold} or result >= {threshold} and isNaN(result)")).unwrap();
            proptest::prop_assert_eq!(condition.holds(value), value < threshold);
        }
    }

    #[test]
    fn size_is_bounded() {
        let long = vec!["result > 1"; 40].join(" or ");
        assert!(
            Condition::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        let huge = "result < 1 ".repeat(100);
        assert!(Condition::parse(&huge).is_err());
        let deep = format!("{}result < 1{}", "(".repeat(70), ")".repeat(70));
        assert!(Condition::parse(&deep).is_err());
    }
}
