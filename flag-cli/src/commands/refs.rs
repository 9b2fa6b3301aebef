//! `flagctl refs [PATH]`: where the environment's flags are used in a source tree.
//!
//! Walks the tree with the `ignore` crate (ripgrep's walker: `.gitignore`, `.ignore` and hidden
//! files respected) and finds every flag key **as a whole string literal** (`"key"`, `'key'` or
//! `` `key` ``) with one Aho-Corasick automaton over all keys, so `new-checkout` never matches
//! inside `new-checkout-v2`. Separately, the first string literal passed to an SDK getter
//! (`bool_value`, `getBooleanValue`, `get_boolean_value`, `BooleanValue(ctx, …)`, `.flag(…)`, and
//! any `--getter NAME`) that names no flag is reported as a likely typo, with the closest key.
//! Flag documents (JSON with `flags` and `defaultVariant`) are definitions, not references, and
//! are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use regex::Regex;
use serde::Serialize;

use crate::Context;
use crate::cli::RefsArgs;
use crate::error::{CliError, Result, exit};
use crate::output::{self, Format, outln};

/// Files larger than this are not read (generated bundles, data).
const MAX_FILE_BYTES: u64 = 8 << 20;
/// The getter names (any case; `_` optional) whose first string argument names a flag: the
/// OpenFeature SDKs' `get{Boolean,String,Integer,Double,Number,Object}{Value,Details}` (and
/// `_async`/`Async` forms), Go's `BooleanValue(ctx, "key", …)`, and this project's SDK
/// (`bool_value`, `string_details`, `client.flag("key")`).
const GETTERS: &str = r"(?:get_?)?(?:bool(?:ean)?|str(?:ing)?|int(?:eger)?|float|double|number|json|object)_?(?:value|details)(?:_?async)?";

/// One reference: a file (relative to the scanned root, `/`-separated) and a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    /// The file.
    pub path: String,
    /// The line.
    pub line: usize,
}

/// A literal passed to an SDK getter that names no flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unknown {
    /// The literal.
    pub key: String,
    /// Where.
    #[serde(flatten)]
    pub location: Location,
    /// The closest flag key, when one is close.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// What a scan found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Every flag with its references (none: a candidate for removal).
    pub flags: BTreeMap<String, Vec<Location>>,
    /// Flags with no reference left.
    pub unreferenced: Vec<String>,
    /// Getter literals that name no flag.
    pub unknown: Vec<Unknown>,
    /// Files read.
    pub files_scanned: usize,
    /// Flag documents skipped (definitions, not references).
    pub flag_documents_skipped: Vec<String>,
    /// Files larger than 8 MiB, not read.
    pub large_files_skipped: Vec<String>,
}

impl Report {
    /// Whether there is anything to act on.
    pub fn has_findings(&self) -> bool {
        !self.unreferenced.is_empty() || !self.unknown.is_empty()
    }
}

/// The matchers of one scan.
struct Matchers {
    keys: Vec<String>,
    literals: AhoCorasick,
    getters: Regex,
}

impl Matchers {
    fn new(keys: Vec<String>, extra_getters: &[String]) -> Result<Matchers> {
        // Pattern 3k+q is key k inside quote q.
        let patterns: Vec<String> = keys
            .iter()
            .flat_map(|key| ['"', '\'', '`'].map(|q| format!("{q}{key}{q}")))
            .collect();
        let literals = AhoCorasick::new(&patterns).map_err(|error| {
            CliError::input(format!("cannot search for the flag keys: {error}"))
        })?;
        let mut names = vec![GETTERS.to_owned(), r"\.flag".to_owned()];
        for name in extra_getters {
            if !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
                || name.is_empty()
            {
                return Err(CliError::usage(format!(
                    "--getter {name:?}: a function or method name (letters, digits, '_', '.')"
                )));
            }
            names.push(regex::escape(name));
        }
        // The name, `(`, an optional first argument that is an identifier (Go's ctx), then a
        // string literal.
        let pattern = format!(
            r#"(?i)(?:^|[^A-Za-z0-9_])(?:{})\s*\(\s*(?:[A-Za-z_][A-Za-z0-9_.]*\s*,\s*)?(?:"([^"\\\n]{{1,256}})"|'([^'\\\n]{{1,256}})'|`([^`\\\n]{{1,256}})`)"#,
            names.join("|")
        );
        let getters =
            Regex::new(&pattern).map_err(|error| CliError::usage(format!("--getter: {error}")))?;
        Ok(Matchers {
            keys,
            literals,
            getters,
        })
    }
}

/// Scans `root` for `keys`.
pub fn scan(
    root: &Path,
    keys: Vec<String>,
    exclude: &[String],
    extra_getters: &[String],
) -> Result<Report> {
    let matchers = Matchers::new(keys, extra_getters)?;
    let mut overrides = ignore::overrides::OverrideBuilder::new(root);
    for glob in exclude {
        overrides
            .add(&format!("!{glob}"))
            .map_err(|error| CliError::usage(format!("--exclude {glob:?}: {error}")))?;
    }
    let overrides = overrides
        .build()
        .map_err(|error| CliError::usage(format!("--exclude: {error}")))?;
    let mut report = Report::default();
    for key in &matchers.keys {
        report.flags.insert(key.clone(), Vec::new());
    }
    let known: BTreeSet<&str> = matchers.keys.iter().map(String::as_str).collect();
    let walker = ignore::WalkBuilder::new(root)
        .overrides(overrides)
        // A tree that is not a Git checkout (an unpacked archive, CI's source copy) still has
        // its .gitignore respected.
        .require_git(false)
        .build();
    for entry in walker {
        let entry = entry
            .map_err(|error| CliError::input(format!("cannot walk {}: {error}", root.display())))?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        if entry.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
            report.large_files_skipped.push(relative(root, path));
            continue;
        }
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        // Binary files (a NUL in the first 8 KiB, as Git decides) are not source.
        if bytes.iter().take(8192).any(|b| *b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let shown = relative(root, path);
        report.files_scanned += 1;
        if is_flag_document(&text) {
            report.flag_documents_skipped.push(shown);
            continue;
        }
        let lines = LineIndex::new(&text);
        for found in matchers.literals.find_iter(text.as_ref()) {
            let key = &matchers.keys[found.pattern().as_usize() / 3];
            if let Some(locations) = report.flags.get_mut(key) {
                locations.push(Location {
                    path: shown.clone(),
                    line: lines.line(found.start()),
                });
            }
        }
        for call in matchers.getters.captures_iter(&text) {
            let Some(literal) = call.get(1).or_else(|| call.get(2)).or_else(|| call.get(3)) else {
                continue;
            };
            if known.contains(literal.as_str()) {
                continue;
            }
            report.unknown.push(Unknown {
                key: literal.as_str().to_owned(),
                location: Location {
                    path: shown.clone(),
                    line: lines.line(literal.start()),
                },
                suggestion: closest(literal.as_str(), &matchers.keys),
            });
        }
    }
    for locations in report.flags.values_mut() {
        locations.sort();
        locations.dedup();
    }
    report.unreferenced = report
        .flags
        .iter()
        .filter(|(_, locations)| locations.is_empty())
        .map(|(key, _)| key.clone())
        .collect();
    report
        .unknown
        .sort_by(|a, b| a.location.cmp(&b.location).then(a.key.cmp(&b.key)));
    report.flag_documents_skipped.sort();
    Ok(report)
}

/// A path for people: relative to the root, `/`-separated.
fn relative(root: &Path, path: &Path) -> String {
    let inner = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = inner
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        path.display().to_string()
    } else {
        parts.join("/")
    }
}

/// Whether a file is a flagd document (a definition of the flags, not a use of them).
fn is_flag_document(text: &str) -> bool {
    text.contains("\"flags\"") && text.contains("\"defaultVariant\"")
}

/// The closest key by edit distance, when it is close (at most a third of the literal's length,
/// and at least one edit away).
fn closest(literal: &str, keys: &[String]) -> Option<String> {
    let limit = (literal.chars().count() / 3).max(1);
    keys.iter()
        .map(|key| (strsim::levenshtein(literal, key), key))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, key)| key.clone())
}

/// Byte offsets to 1-based line numbers.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

/// The keys: from `--file`, else the environment's flags on the server.
async fn keys(context: &Context, environment: &str, file: Option<&PathBuf>) -> Result<Vec<String>> {
    if let Some(path) = file {
        let document = super::read_json(path)?;
        let set: flag_core::FlagSet = serde_json::from_value(document).map_err(|error| {
            CliError::input(format!(
                "{} is not a flagd document: {error}",
                path.display()
            ))
        })?;
        if set.flags.is_empty() {
            return Err(CliError::input(format!(
                "{} has no flags: give a flagd document with a `flags` object",
                path.display()
            )));
        }
        return Ok(set.flags.keys().cloned().collect());
    }
    let api = context.api().await?;
    let answer = api
        .get(&format!("{}/flags", super::environment_path(environment)?))
        .await?;
    Ok(answer.body["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|flag| flag["key"].as_str().map(str::to_owned))
        .collect())
}

pub async fn run(context: &Context, args: &RefsArgs) -> Result<u8> {
    let root = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    if !root.is_dir() {
        return Err(CliError::input(format!(
            "{} is not a directory to scan",
            root.display()
        )));
    }
    let environment = args.environment.as_ref().unwrap_or(&context.environment);
    let keys = keys(context, environment, args.file.as_ref()).await?;
    let report = scan(&root, keys, &args.exclude, &args.getter)?;
    if report.files_scanned == 0 {
        return Err(CliError::input(format!(
            "no text file to scan under {} (after .gitignore and --exclude)",
            root.display()
        )));
    }
    let code = if report.has_findings() {
        exit::FINDINGS
    } else {
        exit::OK
    };
    if context.output == Format::Json {
        output::json(&serde_json::to_value(&report).map_err(|e| CliError::input(e.to_string()))?)?;
        return Ok(code);
    }
    let rows: Vec<Vec<String>> = report
        .flags
        .iter()
        .map(|(key, locations)| {
            let shown: Vec<String> = locations
                .iter()
                .take(3)
                .map(|l| format!("{}:{}", output::plain(&l.path), l.line))
                .collect();
            let more = locations.len().saturating_sub(3);
            vec![
                output::plain(key),
                locations.len().to_string(),
                if locations.is_empty() {
                    "none: a candidate for removal (`flagctl flag delete`)".to_owned()
                } else if more > 0 {
                    format!("{}, and {more} more", shown.join(", "))
                } else {
                    shown.join(", ")
                },
            ]
        })
        .collect();
    output::table(&["FLAG", "REFS", "WHERE"], &rows)?;
    if !report.unknown.is_empty() {
        outln!("\nstring literals passed to flag getters that name no flag (typos?):")?;
        for unknown in &report.unknown {
            outln!(
                "  {}:{}  {:?}{}",
                output::plain(&unknown.location.path),
                unknown.location.line,
                unknown.key,
                unknown
                    .suggestion
                    .as_ref()
                    .map(|s| format!("  did you mean {s:?}?"))
                    .unwrap_or_default()
            )?;
        }
    }
    outln!(
        "\n{} file(s) scanned{}; {} flag(s) without references, {} unknown key(s)",
        report.files_scanned,
        if report.flag_documents_skipped.is_empty() {
            String::new()
        } else {
            format!(
                " ({} flag document(s) skipped: {})",
                report.flag_documents_skipped.len(),
                report.flag_documents_skipped.join(", ")
            )
        },
        report.unreferenced.len(),
        report.unknown.len()
    )?;
    if !report.large_files_skipped.is_empty() {
        outln!(
            "not read (larger than 8 MiB): {}",
            report
                .large_files_skipped
                .iter()
                .map(|p| output::plain(p))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn keys(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn finds_whole_literals_respects_gitignore_and_reports_typos() {
        let dir = tree(&[
            (".gitignore", "target/\n"),
            (
                "src/main.rs",
                "fn main() {\n    let on = client.bool_value(\"new-checkout\", &ctx, false);\n    let v2 = \"new-checkout-v2\";\n    let typo = client.string_value(\"dark-mdoe\", &ctx, \"\");\n}\n",
            ),
            (
                "web/app.ts",
                "const x = await client.getBooleanValue('new-checkout', false);\nconst y = `dark-mode`;\n",
            ),
            (
                "go/main.go",
                "v, _ := client.BooleanValue(ctx, \"beta-banner\", false, ec)\n",
            ),
            ("target/gen.rs", "\"old-banner\"\n"),
            (
                "flags.json",
                "{\"flags\": {\"old-banner\": {\"defaultVariant\": \"on\"}}}",
            ),
            ("image.png", "\u{0}\"old-banner\""),
        ]);
        let report = scan(
            dir.path(),
            keys(&["new-checkout", "dark-mode", "old-banner"]),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            report.flags["new-checkout"],
            vec![
                Location {
                    path: "src/main.rs".into(),
                    line: 2
                },
                Location {
                    path: "web/app.ts".into(),
                    line: 1
                },
            ]
        );
        assert_eq!(
            report.flags["dark-mode"],
            vec![Location {
                path: "web/app.ts".into(),
                line: 2
            }]
        );
        assert_eq!(
            report.unreferenced,
            vec!["old-banner".to_owned()],
            "ignored, a flag document and a binary file are not references"
        );
        assert_eq!(report.flag_documents_skipped, vec!["flags.json".to_owned()]);
        let unknown: Vec<(&str, usize, Option<&str>)> = report
            .unknown
            .iter()
            .map(|u| (u.key.as_str(), u.location.line, u.suggestion.as_deref()))
            .collect();
        assert_eq!(
            unknown,
            vec![
                ("beta-banner", 1, None),
                ("dark-mdoe", 4, Some("dark-mode"))
            ]
        );
        assert!(report.has_findings());
    }

    #[test]
    fn excludes_and_extra_getters() {
        let dir = tree(&[
            ("vendor/lib.js", "isEnabled('nope')\n\"a\"\n"),
            (
                "src/app.js",
                "isEnabled('a')\nunleash.isEnabled('b-typo')\n",
            ),
        ]);
        let report = scan(
            dir.path(),
            keys(&["a"]),
            &["vendor/**".to_owned()],
            &["isEnabled".to_owned()],
        )
        .unwrap();
        assert_eq!(
            report.flags["a"],
            vec![Location {
                path: "src/app.js".into(),
                line: 1
            }]
        );
        assert_eq!(report.unknown.len(), 1);
        assert_eq!(report.unknown[0].key, "b-typo");
        assert!(scan(dir.path(), keys(&["a"]), &[], &["is(Enabled".to_owned()]).is_err());
        let clean = scan(dir.path(), keys(&["a"]), &["vendor/**".to_owned()], &[]).unwrap();
        assert!(!clean.has_findings());
    }
}
