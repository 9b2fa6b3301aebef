//! Evaluation through the public SDK API allocates nothing on the common paths (static, rule
//! match, fractional): a counting global allocator with a per-thread counter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flag_sdk::{EvaluationContext, FlagClient};
use serde_json::{Value, json};

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

#[test]
fn sdk_evaluation_allocates_nothing_on_the_common_paths() {
    let allow_list: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let client = FlagClient::builder()
        .bootstrap_document(json!({"flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "split": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"fractional": [["on", 50], ["off", 50]]}},
            "complex": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"and": [{"ends_with": [{"var": "email"}, "@example.com"]},
                                              {"in": [{"var": "targetingKey"}, allow_list]}]},
                                     "on", {"fractional": [["on", 25], ["off", 75]]}]}},
            "limit": {"state": "ENABLED", "variants": {"low": 5, "high": 50}, "defaultVariant": "low",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "high", "low"]}},
            "color": {"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "red",
                "targeting": {"fractional": [["red", 1], ["blue", 1]]}}
        }}))
        // Evaluation telemetry on (an offline client does not count by default): counting
        // must not allocate either, once a (flag, variant, reason) has been seen on the thread.
        .usage_reporting(true)
        .build()
        .unwrap();
    let user = EvaluationContext::new("user-4242")
        .with("email", "ada@example.com")
        .with("plan", "pro");
    // The first load on a thread sets up arc-swap's per-thread state (once per thread).
    let _ = client.bool_value("static", &user, false);

    for key in ["static", "split", "complex"] {
        // The first evaluation of a (flag, variant, reason) on a thread records its names once.
        let _ = client.bool_value(key, &user, false);
        let count = allocations_during(|| {
            std::hint::black_box(client.bool_value(key, &user, false));
        });
        assert_eq!(count, 0, "bool_value({key:?}) allocated {count} times");
    }
    let _ = client.int_value("limit", &user, 0);
    let count = allocations_during(|| {
        std::hint::black_box(client.int_value("limit", &user, 0));
    });
    assert_eq!(count, 0, "int_value allocated {count} times");
    // Through handles: looked up once, then nothing allocated either.
    for key in ["static", "split", "complex"] {
        let handle = client.flag(key);
        let _ = handle.bool_value(&user, false);
        let count = allocations_during(|| {
            std::hint::black_box(handle.bool_value(&user, false));
        });
        assert_eq!(count, 0, "flag({key:?}).bool_value allocated {count} times");
    }
    let limit = client.flag("limit");
    let _ = limit.int_value(&user, 0);
    let count = allocations_during(|| {
        std::hint::black_box(limit.int_value(&user, 0));
    });
    assert_eq!(count, 0, "a handle's int_value allocated {count} times");
    // Strings are borrowed through `evaluate`.
    let mut length = 0;
    let _ = client.evaluate("color", &user, |r| r.variant.is_some());
    let count = allocations_during(|| {
        length = client.evaluate("color", &user, |r| {
            r.value.and_then(Value::as_str).map_or(0, str::len)
        });
    });
    assert_eq!((count, length), (0, 4), "evaluate allocated {count} times");
}

#[test]
fn the_counter_does_count() {
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert_eq!(count, 1);
}
