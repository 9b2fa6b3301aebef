//! `CompiledFlagSet::uniform_variant`: which flags serve one variant to every context.

use flag_core::CompiledFlagSet;
use serde_json::json;

#[test]
fn flags_that_serve_one_variant_to_everyone_are_found() {
    let set = CompiledFlagSet::load(&json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "disabled": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "full": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {"fractional": [["on", 100], ["off", 0]]}},
        "half": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}},
        "same-branches": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", null]}},
        "rule": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {"if": [{"var": "beta"}, "on", "off"]}},
        "hundred": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"var": "targetingKey"}, {"fractional": [["off", 0], ["on", 10000]]}, "on"]}},
        "unguarded": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["off", 0], ["on", 10000]]}},
        "computed": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {"var": "variant"}}
    }}))
    .unwrap()
    .compiled;
    assert_eq!(set.uniform_variant("static"), Some("on"));
    assert_eq!(
        set.uniform_variant("disabled"),
        None,
        "serves the caller's default"
    );
    assert_eq!(
        set.uniform_variant("full"),
        Some("on"),
        "100 %, keyless contexts get the default, also on"
    );
    assert_eq!(set.uniform_variant("half"), None);
    assert_eq!(set.uniform_variant("same-branches"), Some("on"));
    assert_eq!(set.uniform_variant("rule"), None);
    assert_eq!(set.uniform_variant("computed"), None);
    assert_eq!(
        set.uniform_variant("hundred"),
        Some("on"),
        "the rollout endpoint's 100 %"
    );
    assert_eq!(
        set.uniform_variant("unguarded"),
        None,
        "keyless contexts get the default, off"
    );
    assert_eq!(set.uniform_variant("missing"), None);
}
