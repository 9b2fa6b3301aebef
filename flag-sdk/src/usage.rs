//! Evaluation telemetry: every evaluation is counted per (flag, variant, reason) and the counts
//! are reported to the server (the stream's `usage` message), which keeps them per hour for
//! `lastEvaluated`, `flagctl stale` and `GET …/usage` (the server's `docs/LIFECYCLE.md`).
//!
//! The evaluation path must stay fast and allocation-free, so nothing on it is shared between
//! threads. Each thread (for the key getters) and each [`FlagHandle`](crate::FlagHandle) owns
//! [`Counters`]: one [`Counter`] per (flag, variant, reason) it has served, written only by its
//! owner with a plain load and store (no locked instruction, no cache line shared with other
//! writers). The reporter reads every counter and reports what it gained since the last read,
//! so counts never wait for their thread to do anything; counters of an owner that goes away
//! (a thread ends, a handle is dropped) are folded into the sink as it goes.
//!
//! Finding the counter: a served variant's name is a `&str` into the compiled flag, so while
//! that flag is kept alive its address names (flag, variant) exactly. A small direct-mapped
//! cache keyed by that address and the reason gives the counter with one comparison; on a miss
//! (first use, another snapshot, an error without a variant) a table keyed by content finds or
//! creates it. Our own tables rather than `HashMap`s: the lookups borrow the names without
//! building a key, and the address cache is a handful of integer comparisons.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use flag_core::Reason;
use flag_protocol::stream::{UsageCount, UsageReport};

/// (flag, variant, reason) → evaluations.
type Counts = HashMap<(Box<str>, Option<Box<str>>, Reason), u64>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Sums stay consistent whatever panicked while holding the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client's counts on their way to the server.
#[derive(Debug)]
pub(crate) struct UsageSink {
    id: u64,
    enabled: AtomicBool,
    /// Every owner's counters; an entry dies with its owner.
    blocks: Mutex<Registry>,
    /// Counts read from the counters (or folded in by owners that went away), not yet reported.
    pending: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Registry {
    blocks: Vec<Weak<Block>>,
    /// Dead entries are pruned when the list doubles past this.
    live_after_prune: usize,
}

impl UsageSink {
    pub(crate) fn new(id: u64, enabled: bool) -> UsageSink {
        UsageSink {
            id,
            enabled: AtomicBool::new(enabled),
            blocks: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    /// Turns counting on or off.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether evaluations are counted.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Counts one evaluation by a key getter on this thread. `owner` is the snapshot the
    /// evaluation ran on: `variant`, when given, borrows from it (`None` when it is not kept
    /// alive by the caller, e.g. an owned copy of the name).
    #[inline]
    pub(crate) fn record<T: Any + Send + Sync>(
        self: &Arc<Self>,
        owner: Option<&Arc<T>>,
        flag: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        if !self.enabled() {
            return;
        }
        // During thread teardown the table is gone: the evaluation goes uncounted.
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                local.record(self, owner, flag, variant, reason);
            }
        });
    }

    /// Registers an owner's counters.
    fn block(self: &Arc<Self>) -> Arc<Block> {
        let block = Arc::new(Block {
            sink: Arc::downgrade(self),
            counters: Mutex::default(),
        });
        let mut registry = lock(&self.blocks);
        if registry.blocks.len() >= (registry.live_after_prune * 2).max(64) {
            registry.blocks.retain(|b| b.strong_count() > 0);
            registry.live_after_prune = registry.blocks.len();
        }
        registry.blocks.push(Arc::downgrade(&block));
        block
    }

    /// Reads every counter and takes everything counted since the last call as reports of at
    /// most `max_bytes` each (serialised).
    pub(crate) fn take_reports(&self, max_bytes: usize) -> Vec<UsageReport> {
        let live: Vec<Arc<Block>> = {
            let mut registry = lock(&self.blocks);
            registry.blocks.retain(|b| b.strong_count() > 0);
            registry.live_after_prune = registry.blocks.len();
            registry.blocks.iter().filter_map(Weak::upgrade).collect()
        };
        for block in &live {
            block.drain_into(self);
        }
        // Dropped before `pending` is locked below: a block whose owner went away meanwhile
        // folds itself in as it drops.
        drop(live);
        let counts = std::mem::take(&mut *lock(&self.pending));
        let mut entries: Vec<UsageCount> = counts
            .into_iter()
            .map(|((flag, variant, reason), count)| UsageCount {
                flag: flag.into(),
                variant: variant.map(Into::into),
                reason: Some(reason.as_str().to_owned()),
                count,
            })
            .collect();
        entries.sort_by(|a, b| {
            (&a.flag, &a.variant, &a.reason).cmp(&(&b.flag, &b.variant, &b.reason))
        });
        let mut reports = Vec::new();
        let mut current = UsageReport::default();
        let mut size = 0;
        for entry in entries {
            // `{"flag":…,"variant":…,"reason":…,"count":…}` and some room for escapes.
            let entry_size =
                entry.flag.len() * 2 + entry.variant.as_ref().map_or(0, |v| v.len() * 2) + 80;
            if size + entry_size > max_bytes && !current.counts.is_empty() {
                reports.push(std::mem::take(&mut current));
                size = 0;
            }
            size += entry_size;
            current.counts.push(entry);
        }
        if !current.counts.is_empty() {
            reports.push(current);
        }
        reports
    }

    /// Puts back counts of reports that could not be sent.
    pub(crate) fn restore(&self, reports: Vec<UsageReport>) {
        let mut pending = lock(&self.pending);
        for entry in reports.into_iter().flat_map(|r| r.counts) {
            let reason = entry
                .reason
                .as_deref()
                .and_then(reason_from_str)
                .unwrap_or(Reason::Error);
            let key = (
                entry.flag.into_boxed_str(),
                entry.variant.map(String::into_boxed_str),
                reason,
            );
            let sum = pending.entry(key).or_insert(0);
            *sum = sum.saturating_add(entry.count);
        }
    }
}

fn reason_from_str(text: &str) -> Option<Reason> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// One (flag, variant, reason) of one owner.
#[derive(Debug)]
struct Counter {
    flag: Box<str>,
    variant: Option<Box<str>>,
    reason: Reason,
    /// Evaluations; written only by the owner.
    count: AtomicU64,
    /// How much of `count` is in the sink; written only under the block's lock.
    reported: AtomicU64,
}

impl Counter {
    /// Adds one. Only the owner writes `count`, so a load and a store suffice (a `fetch_add`
    /// would be a locked instruction on the evaluation path).
    #[inline]
    fn bump(&self) {
        let count = self.count.load(Ordering::Relaxed);
        self.count.store(count.wrapping_add(1), Ordering::Relaxed);
    }
}

/// The counters of one owner, as the reporter sees them.
#[derive(Debug)]
struct Block {
    sink: Weak<UsageSink>,
    counters: Mutex<Vec<Arc<Counter>>>,
}

impl Block {
    /// Moves what the counters gained since the last read into the sink's pending counts.
    fn drain_into(&self, sink: &UsageSink) {
        let counters = lock(&self.counters);
        let mut pending = lock(&sink.pending);
        for counter in counters.iter() {
            let count = counter.count.load(Ordering::Relaxed);
            let gained = count.wrapping_sub(counter.reported.load(Ordering::Relaxed));
            if gained == 0 {
                continue;
            }
            counter.reported.store(count, Ordering::Relaxed);
            let key = (
                counter.flag.clone(),
                counter.variant.clone(),
                counter.reason,
            );
            let sum = pending.entry(key).or_insert(0);
            *sum = sum.saturating_add(gained);
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The owner went away (its thread ended, its handle was dropped): fold its counts in.
        if let Some(sink) = self.sink.upgrade() {
            self.drain_into(&sink);
        }
    }
}

thread_local! {
    static LOCAL: std::cell::RefCell<Local> =
        const { std::cell::RefCell::new(Local { tables: Vec::new() }) };
}

/// This thread's counters for the key getters, one set per client it evaluated with (usually
/// one).
struct Local {
    tables: Vec<ThreadCounters>,
}

struct ThreadCounters {
    client: u64,
    /// The snapshot the address cache's names point into, kept alive while cached.
    owner: Option<Arc<dyn Any + Send + Sync>>,
    counters: Counters,
}

impl Local {
    #[inline]
    fn record<T: Any + Send + Sync>(
        &mut self,
        sink: &Arc<UsageSink>,
        owner: Option<&Arc<T>>,
        flag: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        let table = match self.tables.first_mut() {
            Some(table) if table.client == sink.id => table,
            _ => self.table(sink),
        };
        let by_address = match (owner, &table.owner) {
            (Some(owner), Some(cached))
                if std::ptr::addr_eq(Arc::as_ptr(owner), Arc::as_ptr(cached)) =>
            {
                true
            }
            (Some(owner), _) => {
                table.counters.forget_addresses();
                let owner: Arc<dyn Any + Send + Sync> = owner.clone();
                table.owner = Some(owner);
                true
            }
            (None, _) => false,
        };
        // An empty name has no address of its own (every `""` may share one), and an error
        // has no name: both are found by content, with the key.
        let by_address = by_address && variant.is_some_and(|v| !v.is_empty());
        table.counters.add(by_address, flag, variant, reason);
    }

    /// The client's table, moved first (the client used last goes first).
    #[cold]
    fn table(&mut self, sink: &Arc<UsageSink>) -> &mut ThreadCounters {
        match self.tables.iter().position(|t| t.client == sink.id) {
            Some(index) => self.tables.swap(0, index),
            None => self.tables.insert(
                0,
                ThreadCounters {
                    client: sink.id,
                    owner: None,
                    counters: Counters::new(sink, 64),
                },
            ),
        }
        &mut self.tables[0]
    }
}

/// A flag handle's counters: the variants of its one flag, by address while it holds the
/// compiled flag they came from.
#[derive(Debug)]
pub(crate) struct HandleUsage {
    sink: Arc<UsageSink>,
    /// Whether the client counts (set when it was built, before any handle existed).
    enabled: bool,
    /// Created on the first count.
    counters: Option<Counters>,
    /// The compiled flag the address cache's names point into.
    owner: Option<flag_core::FlagRef>,
}

impl HandleUsage {
    pub(crate) fn new(sink: Arc<UsageSink>) -> HandleUsage {
        HandleUsage {
            enabled: sink.enabled(),
            sink,
            counters: None,
            owner: None,
        }
    }

    /// Counts one evaluation of the handle's flag `key`. `flag` is the compiled flag that
    /// served it when `variant` borrows from it.
    #[inline]
    pub(crate) fn record(
        &mut self,
        flag: Option<&flag_core::FlagRef>,
        key: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        if !self.enabled {
            return;
        }
        let counters = match &mut self.counters {
            Some(counters) => counters,
            None => self.counters.insert(Counters::new(&self.sink, 8)),
        };
        let by_address = match (flag, &self.owner) {
            (Some(flag), Some(owner)) if flag.same(owner) => true,
            (Some(flag), _) => {
                counters.forget_addresses();
                self.owner = Some(flag.clone());
                true
            }
            // Errors (no flag) are all one key for a handle: the address of no name is 0.
            (None, _) => variant.is_none(),
        };
        counters.add(by_address, key, variant, reason);
    }
}

impl Clone for HandleUsage {
    /// A clone counts on its own (counters have one writer).
    fn clone(&self) -> HandleUsage {
        HandleUsage::new(self.sink.clone())
    }
}

/// One owner's counters: a table by content and a cache by address in front of it.
struct Counters {
    block: Arc<Block>,
    table: Table,
    /// Direct-mapped: (variant address, length, reason) → counter; a power of two long.
    cache: Box<[Cached]>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cached {
    address: usize,
    length: usize,
    reason: Option<Reason>,
    counter: Option<Arc<Counter>>,
}

impl Counters {
    fn new(sink: &Arc<UsageSink>, cache_size: usize) -> Counters {
        Counters {
            block: sink.block(),
            table: Table::default(),
            cache: (0..cache_size.next_power_of_two())
                .map(|_| Cached::default())
                .collect(),
        }
    }

    /// The names the cache points to may go away: forget their addresses.
    #[cold]
    fn forget_addresses(&mut self) {
        self.cache.fill_with(Cached::default);
    }

    /// Counts one evaluation. With `by_address`, `variant`'s address (0 for none) identifies
    /// (flag, variant) for as long as the caller keeps what it points into alive.
    #[inline]
    fn add(&mut self, by_address: bool, flag: &str, variant: Option<&str>, reason: Reason) {
        if !by_address {
            let index = self.table.position(&self.block, flag, variant, reason);
            if let Some(counter) = self.table.at(index) {
                counter.bump();
            }
            return;
        }
        let (address, length) = variant.map_or((0, 0), |v| (v.as_ptr() as usize, v.len()));
        // Names are at least byte-aligned heap strings: mix the address's higher bits in.
        let slot = ((address >> 3) ^ (address >> 9) ^ reason as usize) & (self.cache.len() - 1);
        let cached = &self.cache[slot];
        if let Some(counter) = &cached.counter
            && cached.address == address
            && cached.length == length
            && cached.reason == Some(reason)
        {
            counter.bump();
            return;
        }
        self.miss(slot, address, length, flag, variant, reason);
    }

    /// Not in the address cache: counts by content and caches the counter's address.
    #[cold]
    fn miss(
        &mut self,
        slot: usize,
        address: usize,
        length: usize,
        flag: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        let index = self.table.position(&self.block, flag, variant, reason);
        let Some(counter) = self.table.at(index) else {
            return;
        };
        counter.bump();
        self.cache[slot] = Cached {
            address,
            length,
            reason: Some(reason),
            counter: Some(counter.clone()),
        };
    }
}

/// Counters by content: open addressing, a power of two long, at most half full.
#[derive(Default)]
struct Table {
    slots: Vec<Option<(u64, Arc<Counter>)>>,
    used: usize,
    hasher: foldhash::fast::FixedState,
}

impl Table {
    fn hash(&self, flag: &str, variant: Option<&str>, reason: Reason) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(flag.as_bytes());
        hasher.write_usize(variant.map_or(usize::MAX, str::len));
        if let Some(variant) = variant {
            hasher.write(variant.as_bytes());
        }
        hasher.write_u8(reason as u8);
        hasher.finish()
    }

    /// The slot of (flag, variant, reason)'s counter, created (and registered) the first time.
    fn position(
        &mut self,
        block: &Block,
        flag: &str,
        variant: Option<&str>,
        reason: Reason,
    ) -> usize {
        let hash = self.hash(flag, variant, reason);
        if (self.used + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut index = (hash as usize) & mask;
        while let Some((h, counter)) = &self.slots[index] {
            if *h == hash
                && counter.reason == reason
                && *counter.flag == *flag
                && counter.variant.as_deref() == variant
            {
                return index;
            }
            index = (index + 1) & mask;
        }
        self.insert(index, hash, block, flag, variant, reason);
        index
    }

    /// The counter in slot `index`.
    fn at(&self, index: usize) -> Option<&Arc<Counter>> {
        self.slots.get(index)?.as_ref().map(|(_, counter)| counter)
    }

    /// The first evaluation of a (flag, variant, reason) by this owner: copies the names.
    #[cold]
    fn insert(
        &mut self,
        index: usize,
        hash: u64,
        block: &Block,
        flag: &str,
        variant: Option<&str>,
        reason: Reason,
    ) {
        let counter = Arc::new(Counter {
            flag: flag.into(),
            variant: variant.map(Into::into),
            reason,
            count: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        });
        lock(&block.counters).push(counter.clone());
        self.used += 1;
        self.slots[index] = Some((hash, counter));
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, (0..size).map(|_| None).collect());
        let mask = size - 1;
        for (hash, counter) in old.into_iter().flatten() {
            let mut index = (hash as usize) & mask;
            while self.slots[index].is_some() {
                index = (index + 1) & mask;
            }
            self.slots[index] = Some((hash, counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(reports: &[UsageReport]) -> Vec<(String, Option<String>, String, u64)> {
        let mut all: Vec<_> = reports
            .iter()
            .flat_map(|r| r.counts.iter())
            .map(|c| {
                (
                    c.flag.clone(),
                    c.variant.clone(),
                    c.reason.clone().unwrap_or_default(),
                    c.count,
                )
            })
            .collect();
        all.sort();
        all
    }

    fn row(
        flag: &str,
        variant: Option<&str>,
        reason: &str,
        count: u64,
    ) -> (String, Option<String>, String, u64) {
        (
            flag.to_owned(),
            variant.map(str::to_owned),
            reason.to_owned(),
            count,
        )
    }

    /// A stand-in snapshot: names borrowed from it.
    fn names(text: &str) -> Arc<String> {
        Arc::new(text.to_owned())
    }

    #[test]
    fn counts_from_every_thread_reach_the_sink_exactly_and_once() {
        let sink = Arc::new(UsageSink::new(9_001, true));
        let snapshot = names("onoff");
        let (on, off) = (&snapshot[0..2], &snapshot[2..5]);
        let (started, counted) = (std::sync::Barrier::new(5), std::sync::Barrier::new(5));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..1_000 {
                        let variant = if i % 4 == 0 { on } else { off };
                        sink.record(Some(&snapshot), "a", Some(variant), Reason::TargetingMatch);
                    }
                    sink.record::<String>(None, "missing", None, Reason::Error);
                    started.wait();
                    // Read while the thread is still alive: nothing waits for it.
                    counted.wait();
                    sink.record(Some(&snapshot), "a", Some(on), Reason::TargetingMatch);
                });
            }
            started.wait();
            assert_eq!(
                totals(&sink.take_reports(16 * 1024)),
                vec![
                    row("a", Some("off"), "TARGETING_MATCH", 3_000),
                    row("a", Some("on"), "TARGETING_MATCH", 1_000),
                    row("missing", None, "ERROR", 4),
                ]
            );
            counted.wait();
        });
        // What the threads counted after the first read, whether read from their counters or
        // folded in as the threads ended.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut later = 0;
        while later < 4 && std::time::Instant::now() < deadline {
            later += totals(&sink.take_reports(16 * 1024))
                .iter()
                .map(|r| r.3)
                .sum::<u64>();
        }
        assert_eq!(later, 4);
        assert!(sink.take_reports(16 * 1024).is_empty(), "reported once");
    }

    #[test]
    fn names_are_told_apart_by_content_across_snapshots_and_for_empty_names() {
        let sink = Arc::new(UsageSink::new(9_002, true));
        let first = names("onoff");
        for _ in 0..3 {
            sink.record(
                Some(&first),
                "a",
                Some(&first[0..2]),
                Reason::TargetingMatch,
            );
            sink.record(
                Some(&first),
                "a",
                Some(&first[2..5]),
                Reason::TargetingMatch,
            );
            sink.record(Some(&first), "a", Some(&first[0..2]), Reason::Default);
        }
        // A new snapshot: the same names at other addresses, and a name at an address the old
        // one used for something else cannot occur while the old one is kept.
        let second = names("offon");
        sink.record(
            Some(&second),
            "a",
            Some(&second[3..5]),
            Reason::TargetingMatch,
        );
        sink.record(
            Some(&second),
            "a",
            Some(&second[0..3]),
            Reason::TargetingMatch,
        );
        // Empty names of two flags may share an address: they are counted by content.
        sink.record(Some(&second), "x", Some(""), Reason::Static);
        sink.record(Some(&second), "y", Some(""), Reason::Static);
        sink.record(Some(&second), "y", Some(""), Reason::Static);
        // Without a snapshot (an owned copy of the name), by content too.
        sink.record::<String>(None, "a", Some("on"), Reason::TargetingMatch);
        assert_eq!(
            totals(&sink.take_reports(16 * 1024)),
            vec![
                row("a", Some("off"), "TARGETING_MATCH", 4),
                row("a", Some("on"), "DEFAULT", 3),
                row("a", Some("on"), "TARGETING_MATCH", 5),
                row("x", Some(""), "STATIC", 1),
                row("y", Some(""), "STATIC", 2),
            ]
        );
    }

    #[test]
    fn a_handle_counts_its_flag_across_versions_and_its_counts_outlive_it() {
        let sink = Arc::new(UsageSink::new(9_003, true));
        let compile = |default: &str| {
            let document = serde_json::json!({"flags": {"f": {"state": "ENABLED",
                "variants": {"on": true, "off": false}, "defaultVariant": default}}});
            flag_core::CompiledFlagSet::compile_json_lenient(&document).0
        };
        let mut handle = HandleUsage::new(sink.clone());
        let mut clone = handle.clone();
        let context = flag_core::EvaluationContext::default();
        for default in ["on", "off", "on"] {
            let set = compile(default);
            let flag = set.flag_ref("f");
            for _ in 0..10 {
                let resolution = flag
                    .as_ref()
                    .map(|f| f.evaluate_at(&context, flag_core::Timestamp::At(0)));
                let variant = resolution.as_ref().and_then(|r| r.variant);
                handle.record(flag.as_ref(), "f", variant, Reason::Static);
            }
        }
        handle.record(None, "f", None, Reason::Error);
        clone.record(None, "f", Some("on"), Reason::Static);
        assert_eq!(
            totals(&sink.take_reports(1024)),
            vec![
                row("f", None, "ERROR", 1),
                row("f", Some("off"), "STATIC", 10),
                row("f", Some("on"), "STATIC", 21),
            ]
        );
        handle.record(None, "f", None, Reason::Error);
        drop(handle);
        drop(clone);
        assert_eq!(
            totals(&sink.take_reports(1024)),
            vec![row("f", None, "ERROR", 1)]
        );
    }

    #[test]
    fn reports_are_split_to_fit_and_restored_when_unsent() {
        let sink = Arc::new(UsageSink::new(9_004, true));
        let keys: Vec<String> = (0..500).map(|i| format!("flag-number-{i:04}")).collect();
        for key in &keys {
            sink.record::<String>(None, key, Some("on"), Reason::TargetingMatch);
        }
        let reports = sink.take_reports(4 * 1024);
        assert!(reports.len() > 1);
        for report in &reports {
            let size = serde_json::to_vec(&flag_protocol::ClientMessage::Usage(report.clone()))
                .unwrap()
                .len();
            assert!(size <= 4 * 1024, "{size} bytes");
        }
        sink.restore(reports);
        let again = sink.take_reports(1 << 20);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].counts.len(), 500);
        assert_eq!(
            again[0].counts[0].reason.as_deref(),
            Some("TARGETING_MATCH")
        );
    }

    #[test]
    fn a_disabled_sink_counts_nothing_and_clients_do_not_mix() {
        let off = Arc::new(UsageSink::new(9_005, false));
        off.record::<String>(None, "a", Some("on"), Reason::Static);
        assert!(off.take_reports(1024).is_empty());
        let one = Arc::new(UsageSink::new(9_006, true));
        let two = Arc::new(UsageSink::new(9_007, true));
        let snapshot = names("on");
        one.record(Some(&snapshot), "a", Some(&snapshot[..]), Reason::Static);
        two.record(Some(&snapshot), "a", Some(&snapshot[..]), Reason::Static);
        two.record(Some(&snapshot), "a", Some(&snapshot[..]), Reason::Static);
        one.record(Some(&snapshot), "a", Some(&snapshot[..]), Reason::Static);
        assert_eq!(
            totals(&one.take_reports(1024)),
            vec![row("a", Some("on"), "STATIC", 2)]
        );
        assert_eq!(
            totals(&two.take_reports(1024)),
            vec![row("a", Some("on"), "STATIC", 2)]
        );
    }
}
