//! Output: tables for people, JSON for scripts, readable JSON diffs, and times.
//!
//! Results go to stdout through [`line`] (or [`outln!`]), never `println!`: see [`line`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write as _};

use jiff::fmt::temporal::DateTimePrinter;
use serde_json::Value;
use unicode_width::UnicodeWidthStr as _;

use crate::error::{CliError, Kind, Result};

/// `-o` / `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts (stable field names).
    Json,
}

/// Writes one line of results to stdout.
///
/// `println!` panics when the reader goes away first (`flagctl export | head -1`). Here a broken
/// pipe becomes a [`Kind::BrokenPipe`] error, which `main` turns into a quiet exit 0, as ripgrep
/// does: whoever closed the pipe has read all they wanted. Any other write error (a full disk)
/// is a failure, reported like any other.
pub fn line(text: impl fmt::Display) -> Result<()> {
    writeln!(io::stdout().lock(), "{text}").map_err(|error| {
        if error.kind() == io::ErrorKind::BrokenPipe {
            CliError::new(Kind::BrokenPipe, "stdout was closed")
        } else {
            CliError::new(Kind::Output, format!("cannot write to stdout: {error}"))
        }
    })
}

/// `println!` through [`line`]: `outln!("deleted {key}")?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints JSON, pretty.
pub fn json(value: &Value) -> Result<()> {
    line(serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
}

/// Prints a table with a header row; columns padded to their widest cell, as a terminal shows
/// it (a CJK character or an emoji takes two columns).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    for text in table_lines(header, rows) {
        line(text)?;
    }
    Ok(())
}

/// The lines of [`table`]: cells joined by two spaces, every column but the last padded.
///
/// Widths are display widths, not `char` counts: `format!("{cell:<width$}")` would pad by
/// `char`s, so the padding is added by hand.
fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.width());
        }
    }
    std::iter::once(&header)
        .chain(rows)
        .map(|cells| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    if i + 1 == cells.len() {
                        cell.clone()
                    } else {
                        format!("{cell}{}", " ".repeat(width.saturating_sub(cell.width())))
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// A JSON scalar for a table cell (control characters escaped, see [`plain`]).
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => plain(s),
        other => other.to_string(),
    }
}

/// Text from the server (or from a peer it quotes, such as Prometheus) fit for a terminal:
/// control characters are escaped (`\n`, `\u{1b}`), so no answer can move the cursor, retitle
/// the terminal or fake a line of output.
pub fn plain(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ`: RFC 3339 in UTC, with the space RFC 3339 allows
/// for readability in place of the `T`.
pub fn time(seconds: i64) -> String {
    /// Whole seconds have no fraction, so none is printed.
    const PRINTER: DateTimePrinter = DateTimePrinter::new().separator(b' ');
    match jiff::Timestamp::from_second(seconds) {
        Ok(timestamp) => PRINTER.timestamp_to_string(&timestamp),
        // Outside jiff's range (about the years -9999 to 9999), where no server writes: the
        // number, as `date -d @N` reads it.
        Err(_) => format!("@{seconds}"),
    }
}

/// Flattens JSON into `path = value` leaves: objects by key; an array is one leaf, so a changed
/// bucket list reads as the whole list before and after.
fn leaves(value: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(child, path, out);
            }
        }
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

/// A readable diff of two JSON documents: one `path: before → after` line per changed leaf
/// (`+ path: value` added, `- path: value` removed).
///
/// Kept by hand rather than taken from a JSON-diff crate: those produce JSON Patch operations or
/// trees (arrays element by element), which would have to be rendered back into these lines,
/// and this is small and covered by `diffs_are_per_leaf` and the CLI snapshots.
pub fn diff(before: &Value, after: &Value) -> Vec<String> {
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    leaves(before, String::new(), &mut old);
    leaves(after, String::new(), &mut new);
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let label = if key.is_empty() {
            "(value)"
        } else {
            key.as_str()
        };
        match (old.get(key), new.get(key)) {
            (Some(a), Some(b)) if a != b => lines.push(format!("~ {label}: {a} → {b}")),
            (Some(_), Some(_)) => {}
            (Some(a), None) if !a.is_null() => lines.push(format!("- {label}: {a}")),
            (None, Some(b)) if !b.is_null() => lines.push(format!("+ {label}: {b}")),
            _ => {}
        }
    }
    lines
}

/// One problem as a line: `warning: PATH: MESSAGE [code]`.
pub fn problem(problem: &flag_core::Problem) -> String {
    let severity = if problem.is_warning() {
        "warning"
    } else {
        "error"
    };
    let (path, message, code) = (&problem.path, &problem.message, problem.code);
    if path.is_empty() {
        format!("{severity}: {message} [{code}]")
    } else {
        format!("{severity}: {path}: {message} [{code}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(time(-1), "1969-12-31 23:59:59Z");
        assert_eq!(time(4_102_444_800), "2100-01-01 00:00:00Z");
        assert_eq!(time(i64::MAX), format!("@{}", i64::MAX));
    }

    /// A CJK character and an emoji take two terminal columns each (`char` counting gave them
    /// one, so the columns after them drifted).
    #[test]
    fn table_columns_line_up_by_display_width() {
        let rows = [
            vec![
                "dark-mode".to_owned(),
                "ENABLED".to_owned(),
                "web".to_owned(),
            ],
            vec![
                "新しい決済".to_owned(),
                "DISABLED".to_owned(),
                "チーム".to_owned(),
            ],
            vec!["🚀-launch".to_owned(), "ENABLED".to_owned(), "-".to_owned()],
            vec!["café".to_owned(), "ENABLED".to_owned(), "ops".to_owned()],
        ];
        assert_eq!(
            table_lines(&["KEY", "STATE", "OWNER"], &rows),
            [
                "KEY         STATE     OWNER",
                "dark-mode   ENABLED   web",
                "新しい決済  DISABLED  チーム",
                "🚀-launch   ENABLED   -",
                "café        ENABLED   ops",
            ]
        );
    }

    #[test]
    fn diffs_are_per_leaf() {
        let before = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "targeting": {"fractional": [["on", 1000], ["off", 9000]]}});
        let after = json!({"state": "DISABLED", "variants": {"on": true, "off": false}, "metadata": {"owner": "web"}, "targeting": {"fractional": [["on", 2500], ["off", 7500]]}});
        assert_eq!(
            diff(&before, &after),
            [
                "+ metadata.owner: \"web\"",
                "~ state: \"ENABLED\" → \"DISABLED\"",
                "~ targeting.fractional: [[\"on\",1000],[\"off\",9000]] → [[\"on\",2500],[\"off\",7500]]",
            ]
        );
        assert_eq!(diff(&Value::Null, &json!({"a": 1})), ["+ a: 1"]);
    }
}
