//! Fixtures shared by the benchmarks, so every engine evaluates the same flags for the same users.
//!
//! The three cases of the evaluation benchmark:
//! - **A** `static`: a boolean flag with no targeting.
//! - **B** `split`: a 50/50 `fractional` on the targeting key.
//! - **C** `complex`: `if (email ends with @example.com AND targetingKey in a 100-entry list)
//!   then "on" else fractional 25/75`. The user matches the first test but not the list, so
//!   every part of the rule runs: the worst path.

use serde_json::{Value, json};

/// The evaluation cases: (case id, flag key).
pub const CASES: [(&str, &str); 3] = [
    ("A_static", "static"),
    ("B_fractional", "split"),
    ("C_if_in_fractional", "complex"),
];

/// The user every case evaluates for.
pub const TARGETING_KEY: &str = "user-4242";
/// That user's email (matches `ends_with`).
pub const EMAIL: &str = "ada@example.com";

/// The 100-entry allow list of case C.
pub fn allow_list() -> Vec<String> {
    (0..100).map(|i| format!("user-{i}")).collect()
}

/// The targeting rule of case C.
pub fn complex_rule() -> Value {
    json!({"if": [
        {"and": [
            {"ends_with": [{"var": "email"}, "@example.com"]},
            {"in": [{"var": "targetingKey"}, allow_list()]}
        ]},
        "on",
        {"fractional": [["on", 25], ["off", 75]]}
    ]})
}

/// The targeting rule of case B.
pub fn split_rule() -> Value {
    json!({"fractional": [["on", 50], ["off", 50]]})
}

/// The flagd document holding cases A, B and C.
pub fn flagd_document() -> Value {
    json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": split_rule()},
        "complex": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": complex_rule()}
    }})
}

/// The evaluation context as flat JSON (flagd / OFREP form).
pub fn context_json() -> Value {
    json!({"targetingKey": TARGETING_KEY, "email": EMAIL})
}

/// Unleash features equivalent to A, B and C: `default` strategy; `flexibleRollout` 50 % on
/// userId; a constrained `default` strategy (email ends with, userId in list) OR'd with a 25 %
/// `flexibleRollout`.
pub fn unleash_features() -> Value {
    json!({"version": 2, "features": [
        {"name": "static", "enabled": true, "strategies": [{"name": "default", "parameters": {}}]},
        {"name": "split", "enabled": true, "strategies": [{"name": "flexibleRollout",
            "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "split"}}]},
        {"name": "complex", "enabled": true, "strategies": [
            {"name": "default", "parameters": {}, "constraints": [
                {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"], "inverted": false, "caseInsensitive": false},
                {"contextName": "userId", "operator": "IN", "values": allow_list(), "inverted": false, "caseInsensitive": false}
            ]},
            {"name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "userId", "groupId": "complex"}}
        ]}
    ]})
}

/// A flag set of `n` flags cycling through the three shapes (for bulk evaluation and compile
/// time).
pub fn large_document(n: usize) -> Value {
    let mut flags = serde_json::Map::new();
    for i in 0..n {
        let targeting = match i % 3 {
            0 => json!({}),
            1 => json!({"fractional": [["on", i % 100], ["off", 100 - i % 100]]}),
            _ => json!({"if": [
                {"and": [
                    {"ends_with": [{"var": "email"}, format!("@tenant{i}.example.com")]},
                    {"in": [{"var": "targetingKey"}, (0..20).map(|u| format!("user-{i}-{u}")).collect::<Vec<_>>()]}
                ]},
                "on",
                {"sem_ver": [{"var": "appVersion"}, ">=", format!("1.{}.0", i % 50)]}
            ]}),
        };
        flags.insert(
            format!("flag-{i:05}"),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": targeting, "metadata": {"owner": format!("team-{}", i % 17)}}),
        );
    }
    json!({"$schema": "https://flagd.dev/schema/v0/flags.json", "metadata": {"flagSetId": "bench"}, "flags": flags})
}
