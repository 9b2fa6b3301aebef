//! Golden bucketing vectors: the stability contract of percentage rollouts.
//!
//! `data/bucketing.tsv` lists `flagKey`, `targetingKey`, the murmur3 hash of their
//! concatenation and the bucket for totals 2, 3, 100 and 10,000. It was generated with the
//! reference `murmur3` crate (set `FLAG_CORE_WRITE_GOLDEN=1` to regenerate, which should never
//! change a row). If this test fails, users would move between variants: that is a breaking
//! change, never a refactoring.

use std::fmt::Write as _;
use std::path::PathBuf;

use flag_core::hash::{bucket, murmur3_x86_32_concat};
use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet};
use serde_json::json;

const TOTALS: [u32; 4] = [2, 3, 100, 10_000];

fn data_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bucketing.tsv")
}

struct Row {
    flag_key: String,
    targeting_key: String,
    hash: u32,
    buckets: [u32; 4],
}

fn read_rows() -> Vec<Row> {
    let text = std::fs::read_to_string(data_file()).expect("golden file is checked in");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 7, "malformed golden row {line:?}");
            let num = |i: usize| {
                cols[i]
                    .parse::<u32>()
                    .unwrap_or_else(|_| panic!("bad number in {line:?}"))
            };
            Row {
                flag_key: cols[0].to_owned(),
                targeting_key: cols[1].to_owned(),
                hash: num(2),
                buckets: [num(3), num(4), num(5), num(6)],
            }
        })
        .collect()
}

/// Deterministic, varied targeting keys: ids, emails, uuids, unicode.
fn generated_keys() -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = ["ejOoVL", "bY9fO-", "SI7p-", "6LvT0", "ceQdGm"]
        .iter()
        .map(|k| (String::new(), (*k).to_owned()))
        .collect();
    let flag_keys = [
        "new-checkout",
        "a",
        "ramp-flag-with-a-much-longer-name",
        "dark.mode_v2",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 16
    };
    for i in 0..400 {
        let flag_key = flag_keys[i % flag_keys.len()];
        let targeting_key = match i % 5 {
            0 => format!("user-{i}"),
            1 => format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                next() as u32,
                next() as u16,
                next() % 0x1000,
                next() as u16,
                next() % 0x1_0000_0000_0000
            ),
            2 => format!("person{}@example.com", next() % 100_000),
            3 => ["ünïcødé", "用户", "😀", "ñ", "z"][i % 5].repeat(1 + i % 3),
            _ => (next() % 1_000_000_000).to_string(),
        };
        rows.push((flag_key.to_owned(), targeting_key));
    }
    rows
}

fn reference_hash(flag_key: &str, targeting_key: &str) -> u32 {
    let joined = format!("{flag_key}{targeting_key}");
    murmur3::murmur3_32(&mut std::io::Cursor::new(joined.as_bytes()), 0).expect("in-memory read")
}

#[test]
fn golden_vectors_hold() {
    if std::env::var_os("FLAG_CORE_WRITE_GOLDEN").is_some() {
        let mut out = String::from(
            "# flagKey\ttargetingKey\tmurmur3_x86_32(flagKey+targetingKey)\tbucket/2\tbucket/3\tbucket/100\tbucket/10000\n",
        );
        for (flag_key, targeting_key) in generated_keys() {
            let hash = reference_hash(&flag_key, &targeting_key);
            let b = TOTALS.map(|t| ((u64::from(hash) * u64::from(t)) >> 32) as u32);
            writeln!(
                out,
                "{flag_key}\t{targeting_key}\t{hash}\t{}\t{}\t{}\t{}",
                b[0], b[1], b[2], b[3]
            )
            .unwrap();
        }
        std::fs::write(data_file(), out).unwrap();
    }
    let rows = read_rows();
    assert!(rows.len() >= 400, "golden file has {} rows", rows.len());
    for row in &rows {
        let label = format!("{:?}+{:?}", row.flag_key, row.targeting_key);
        assert_eq!(
            murmur3_x86_32_concat(row.flag_key.as_bytes(), row.targeting_key.as_bytes()),
            row.hash,
            "{label}"
        );
        for (total, expected) in TOTALS.iter().zip(row.buckets) {
            assert_eq!(bucket(row.hash, *total), expected, "{label} total {total}");
        }
    }
}

#[test]
fn golden_vectors_hold_through_flag_evaluation() {
    // Flags whose buckets are all weight 1, so the variant served *is* the bucket index, and a
    // 25 % rollout out of 10,000.
    let variants = |n: u32| {
        (0..n)
            .map(|i| (format!("v{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
    };
    let buckets = |n: u32| {
        (0..n)
            .map(|i| json!([format!("v{i}"), 1]))
            .collect::<Vec<_>>()
    };
    let rows = read_rows();
    let mut flag_keys: Vec<&str> = rows
        .iter()
        .map(|r| r.flag_key.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    flag_keys.sort_unstable();
    flag_keys.dedup();
    let mut flags = serde_json::Map::new();
    for key in &flag_keys {
        for n in [2, 3, 100] {
            let mut args = vec![json!({"cat": [key, {"var": "targetingKey"}]})];
            args.extend(buckets(n));
            flags.insert(
                format!("{key}.{n}"),
                json!({"state": "ENABLED", "variants": variants(n), "defaultVariant": "v0",
                       "targeting": {"fractional": args}}),
            );
        }
        flags.insert(
            (*key).to_owned(),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                   "targeting": {"fractional": [["on", 2500], ["off", 7500]]}}),
        );
    }
    let set = FlagSet::from_value(&json!({"flags": flags})).unwrap();
    let compiled = CompiledFlagSet::compile(&set).unwrap();
    for row in rows.iter().filter(|r| !r.flag_key.is_empty()) {
        let ctx = EvaluationContext::new(row.targeting_key.clone());
        for (n, expected) in [
            (2, row.buckets[0]),
            (3, row.buckets[1]),
            (100, row.buckets[2]),
        ] {
            let got = compiled.resolve_int(&format!("{}.{n}", row.flag_key), &ctx, -1, 0);
            assert_eq!(
                got.value,
                i64::from(expected),
                "{}+{} over {n}",
                row.flag_key,
                row.targeting_key
            );
        }
        let on = compiled.resolve_bool(&row.flag_key, &ctx, false, 0).value;
        assert_eq!(
            on,
            row.buckets[3] < 2500,
            "{}+{} at 25%",
            row.flag_key,
            row.targeting_key
        );
    }
}
