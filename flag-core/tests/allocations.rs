//! Evaluation allocates nothing on the common paths: proven with a counting global allocator.
//!
//! The counter is per thread, so tests running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flag_core::{CompiledFlagSet, EvaluationContext, FlagSet, Reason};
use serde_json::json;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; we only count.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn flags() -> CompiledFlagSet {
    let allow_list: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let doc = json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}},
        "complex": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [
                {"and": [
                    {"ends_with": [{"var": "email"}, "@example.com"]},
                    {"in": [{"var": "targetingKey"}, allow_list]}
                ]},
                "on",
                {"fractional": [["on", 2500], ["off", 7500]]}
            ]}},
        "semver": {"state": "ENABLED", "variants": {"new": "n", "old": "o"}, "defaultVariant": "old",
            "targeting": {"if": [{"sem_ver": [{"var": "app.version"}, ">=", "2.1.0"]}, "new", "old"]}}
    }});
    CompiledFlagSet::compile(&FlagSet::from_value(&doc).unwrap()).unwrap()
}

#[test]
fn common_evaluations_allocate_nothing() {
    let flags = flags();
    let insider = EvaluationContext::new("user-42")
        .with("email", "ada@example.com")
        .with("app", json!({"version": "2.3.0"}));
    let outsider = EvaluationContext::new("someone-else").with("email", "bob@elsewhere.org");
    let bool_cases: [(&str, &EvaluationContext, Reason); 4] = [
        ("static", &insider, Reason::Static),
        ("split", &insider, Reason::TargetingMatch),
        ("complex", &insider, Reason::TargetingMatch),
        ("complex", &outsider, Reason::TargetingMatch),
    ];
    for (key, ctx, expected) in bool_cases {
        let mut reason = None;
        let count = allocations_during(|| {
            reason = Some(flags.resolve_bool(key, ctx, false, 1_700_000_000).reason);
        });
        assert_eq!(reason, Some(expected), "{key}");
        assert_eq!(count, 0, "evaluating {key:?} allocated {count} times");
    }
    for (ctx, expected) in [(&insider, "n"), (&outsider, "o")] {
        let mut value = "";
        let count = allocations_during(|| value = flags.resolve_string("semver", ctx, "", 0).value);
        assert_eq!(value, expected);
        assert_eq!(count, 0, "evaluating \"semver\" allocated {count} times");
    }
}

#[test]
fn the_counter_does_count() {
    // Guards against a test that passes because nothing is measured.
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert_eq!(count, 1);
}
