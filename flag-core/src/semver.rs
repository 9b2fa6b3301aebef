//! Semantic versions as flagd's `sem_ver` operator reads them.
//!
//! flagd (Go) prefixes a missing `v` and then uses `golang.org/x/mod/semver`, which accepts
//! `v1` and `v1.2` as shorthands for `v1.0.0` and `v1.2.0`, orders pre-releases before the
//! release and ignores build metadata. This module implements that grammar directly rather than
//! through the `semver` crate, which rejects partial versions and the `v` prefix.

use std::cmp::Ordering;

/// A parsed version. Numeric parts are kept as digit strings so arbitrarily large components
/// compare correctly without overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    prerelease: Option<&'a str>,
}

/// The `sem_ver` comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^`: same major version.
    Caret,
    /// `~`: same major and minor version.
    Tilde,
}

impl SemVerOp {
    pub(crate) fn parse(op: &str) -> Option<SemVerOp> {
        Some(match op {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "^" => SemVerOp::Caret,
            "~" => SemVerOp::Tilde,
            _ => return None,
        })
    }

    pub(crate) fn holds(self, left: &Version<'_>, right: &Version<'_>) -> bool {
        let ordering = left.cmp(right);
        match self {
            SemVerOp::Eq => ordering == Ordering::Equal,
            SemVerOp::Ne => ordering != Ordering::Equal,
            SemVerOp::Lt => ordering == Ordering::Less,
            SemVerOp::Le => ordering != Ordering::Greater,
            SemVerOp::Gt => ordering == Ordering::Greater,
            SemVerOp::Ge => ordering != Ordering::Less,
            SemVerOp::Caret => cmp_numeric(left.major, right.major) == Ordering::Equal,
            SemVerOp::Tilde => {
                cmp_numeric(left.major, right.major) == Ordering::Equal
                    && cmp_numeric(left.minor, right.minor) == Ordering::Equal
            }
        }
    }
}

/// The valid operator spellings, for error messages.
pub(crate) const SEMVER_OPS: &str = "=, !=, <, <=, >, >=, ^, ~";

impl<'a> Version<'a> {
    /// Parses `[v|V]MAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]]`.
    pub(crate) fn parse(text: &'a str) -> Option<Version<'a>> {
        let text = text
            .strip_prefix('v')
            .or_else(|| text.strip_prefix('V'))
            .unwrap_or(text);
        let (core, build) = match text.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (text, None),
        };
        let (core, prerelease) = match core.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (core, None),
        };
        let mut parts = core.split('.');
        let major = numeric(parts.next()?)?;
        let minor = parts.next().map(numeric);
        let patch = parts.next().map(numeric);
        if parts.next().is_some() {
            return None;
        }
        let (minor, patch) = match (minor, patch) {
            (None, None) => ("0", "0"),
            (Some(minor), None) => (minor?, "0"),
            (Some(minor), Some(patch)) => (minor?, patch?),
            (None, Some(_)) => return None,
        };
        // Shorthand versions may not carry a pre-release or build (as in x/mod/semver).
        let is_full = core.matches('.').count() == 2;
        if (prerelease.is_some() || build.is_some()) && !is_full {
            return None;
        }
        if let Some(pre) = prerelease
            && !pre.split('.').all(valid_prerelease_identifier)
        {
            return None;
        }
        if let Some(build) = build
            && !build.split('.').all(valid_build_identifier)
        {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            prerelease,
        })
    }
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_numeric(self.major, other.major)
            .then_with(|| cmp_numeric(self.minor, other.minor))
            .then_with(|| cmp_numeric(self.patch, other.patch))
            .then_with(|| match (self.prerelease, other.prerelease) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => cmp_prerelease(a, b),
            })
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn numeric(part: &str) -> Option<&str> {
    let valid = !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'));
    valid.then_some(part)
}

fn valid_prerelease_identifier(id: &str) -> bool {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return false;
    }
    // A numeric identifier may not have leading zeros.
    !(id.bytes().all(|b| b.is_ascii_digit()) && id.len() > 1 && id.starts_with('0'))
}

fn valid_build_identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Compares digit strings without leading zeros by value.
fn cmp_numeric(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let x_num = x.bytes().all(|c| c.is_ascii_digit());
                let y_num = y.bytes().all(|c| c.is_ascii_digit());
                let ordering = match (x_num, y_num) {
                    (true, true) => cmp_numeric(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(left: &str, op: &str, right: &str, expected: bool) {
        let l = Version::parse(left).unwrap_or_else(|| panic!("{left} should parse"));
        let r = Version::parse(right).unwrap_or_else(|| panic!("{right} should parse"));
        let op = SemVerOp::parse(op).unwrap();
        assert_eq!(op.holds(&l, &r), expected, "{left} {op:?} {right}");
    }

    #[test]
    fn comparisons() {
        check("1.0.0", "=", "1.0.0", true);
        check("v1.0.0", "=", "1.0.0", true);
        check("V1.0.0", "=", "1", true);
        check("1.2", "=", "1.2.0", true);
        check("1.0.0+build.5", "=", "1.0.0+other", true);
        check("1.0.0-alpha", "<", "1.0.0", true);
        check("1.0.0-alpha", "<", "1.0.0-alpha.1", true);
        check("1.0.0-alpha.1", "<", "1.0.0-alpha.beta", true);
        check("1.0.0-beta.2", "<", "1.0.0-beta.11", true);
        check("1.0.0-rc.1", "<", "1.0.0", true);
        check("2.0.0", ">", "1.99.99", true);
        check("10.0.0", ">", "9.0.0", true);
        check("1.2.3", ">=", "1.2.3", true);
        check("1.2.3", "<=", "1.2.2", false);
        check("1.2.3", "!=", "1.2.4", true);
        check("1.5.0", "^", "1.0.0", true);
        check("2.0.0", "^", "1.0.0", false);
        check("1.2.9", "~", "1.2.0", true);
        check("1.3.0", "~", "1.2.0", false);
        check(
            "99999999999999999999.0.0",
            ">",
            "9999999999999999999.0.0",
            true,
        );
    }

    #[test]
    fn invalid_versions() {
        for text in [
            "", "a.b.c", "1.2.3.4", "01.2.3", "1.02.3", "1.2-pre", "1.2.3-", "1.2.3-01", "1..2",
            "1.2.3+", "vv1",
        ] {
            assert!(Version::parse(text).is_none(), "{text:?} should be invalid");
        }
    }
}
