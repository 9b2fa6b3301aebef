//! Evaluation telemetry: every evaluation is counted per (flag, variant, reason) and the counts
//! are reported to the server (the stream's `usage` message), which keeps them per hour for
//! `lastEvaluated`, `flagctl stale` and `GET …/usage` (the server's `docs/LIFECYCLE.md`).
//!
//! The evaluation path must stay fast and allocation-free, so counting is per thread: a small
//! open-addressing table in a thread-local, keyed by the flag key, the variant and the reason
//! (compared by content, so no pointer into a snapshot is kept). The first evaluation of a
//! (flag, variant, reason) on a thread copies its names once; after that an evaluation costs a
//! hash of the key and a few comparisons. Our own table rather than a `HashMap`: the lookup
//! borrows the key as `&str` and the variant as `Option<&str>` without building a tuple key.
//!
//! A thread moves its counts into the client's [`UsageSink`] when the sink asks (its epoch
//! moved: the reporter bumps it before each report, and the thread sees it on its next
//! evaluation), when the thread ends, and when `close()` runs on it. A thread that evaluates
//! nothing more keeps what it counted since the last report until it ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use flag_core::Reason;
use flag_protocol::stream::{UsageCount, UsageReport};

/// (flag, variant, reason) → evaluations.
type Counts = HashMap<(Box<str>, Option<Box<str>>, Reason), u64>;

/// A client's reported-to-be counts and the epoch threads watch.
#[derive(Debug)]
pub(crate) struct UsageSink {
    id: u64,
    enabled: AtomicBool,
    epoch: AtomicU64,
    pending: Mutex<Counts>,
}

impl UsageSink {
    pub(crate) fn new(id: u64, enabled: bool) -> UsageSink {
        UsageSink {
            id,
            enabled: AtomicBool::new(enabled),
            epoch: AtomicU64::new(0),
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Sums stay consistent whatever panicked while holding the lock.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Turns counting on or off.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether evaluations are counted.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Counts one evaluation on this thread.
    #[inline]
    pub(crate) fn record(self: &Arc<Self>, flag: &str, variant: Option<&str>, reason: Reason) {
        if !self.enabled() {
            return;
        }
        // During thread teardown the table is gone: the evaluation goes uncounted.
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                local.record(self, flag, variant, reason);
            }
        });
    }

    /// Asks every thread to hand over its counts on its next evaluation, moves this thread's
    /// now, and takes everything handed over so far as reports of at most `max_bytes` each
    /// (serialised), largest counts first within a report.
    pub(crate) fn take_reports(self: &Arc<Self>, max_bytes: usize) -> Vec<UsageReport> {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.publish_this_thread();
        let counts = std::mem::take(&mut *self.pending());
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
        let mut pending = self.pending();
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

    /// Moves this thread's counts for this client into the sink now.
    pub(crate) fn publish_this_thread(self: &Arc<Self>) {
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                local.publish(self.id);
            }
        });
    }

    fn absorb(&self, table: &mut Table) {
        let mut pending = self.pending();
        for slot in table.slots.iter_mut().filter(|s| s.count > 0) {
            let key = (slot.flag.clone(), slot.variant.clone(), slot.reason);
            let sum = pending.entry(key).or_insert(0);
            *sum = sum.saturating_add(slot.count);
            slot.count = 0;
        }
    }
}

fn reason_from_str(text: &str) -> Option<Reason> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local { tables: Vec::new() }) };
}

/// This thread's tables, one per client it evaluated with (usually one).
#[derive(Default)]
struct Local {
    tables: Vec<Table>,
}

impl Local {
    #[inline]
    fn record(&mut self, sink: &Arc<UsageSink>, flag: &str, variant: Option<&str>, reason: Reason) {
        let first = self.tables.first().is_some_and(|t| t.client == sink.id);
        let found = if first {
            Some(0)
        } else {
            self.tables.iter().position(|t| t.client == sink.id)
        };
        let table = match found {
            Some(0) => &mut self.tables[0],
            Some(index) => {
                // The client used last goes first.
                self.tables.swap(0, index);
                &mut self.tables[0]
            }
            None => {
                self.tables.insert(0, Table::new(sink));
                &mut self.tables[0]
            }
        };
        let epoch = sink.epoch.load(Ordering::Relaxed);
        if epoch != table.epoch {
            table.epoch = epoch;
            sink.absorb(table);
        }
        table.add(flag, variant, reason);
    }

    fn publish(&mut self, client: u64) {
        if let Some(table) = self.tables.iter_mut().find(|t| t.client == client)
            && let Some(sink) = table.sink.upgrade()
        {
            sink.absorb(table);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The thread ends: hand everything over.
        for table in &mut self.tables {
            if let Some(sink) = table.sink.upgrade() {
                sink.absorb(table);
            }
        }
    }
}

/// One client's counts on one thread.
struct Table {
    client: u64,
    sink: Weak<UsageSink>,
    epoch: u64,
    /// A power of two long; at most half full.
    slots: Vec<Slot>,
    used: usize,
    hasher: foldhash::fast::FixedState,
    /// The slot counted last, plus one (0: none): a loop evaluating one flag skips the hash.
    last: usize,
}

struct Slot {
    hash: u64,
    flag: Box<str>,
    variant: Option<Box<str>>,
    reason: Reason,
    count: u64,
}

impl Table {
    fn new(sink: &Arc<UsageSink>) -> Table {
        Table {
            client: sink.id,
            sink: Arc::downgrade(sink),
            epoch: sink.epoch.load(Ordering::Relaxed),
            slots: Vec::new(),
            used: 0,
            hasher: foldhash::fast::FixedState::default(),
            last: 0,
        }
    }

    #[inline]
    fn hash(&self, flag: &str, variant: Option<&str>, reason: Reason) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(flag.as_bytes());
        hasher.write_usize(variant.map_or(usize::MAX, str::len));
        hasher.write_u8(reason as u8);
        // 0 marks an empty slot.
        hasher.finish() | 1
    }

    #[inline]
    fn add(&mut self, flag: &str, variant: Option<&str>, reason: Reason) {
        if let Some(slot) = self.last.checked_sub(1).and_then(|i| self.slots.get_mut(i))
            && slot.reason == reason
            && *slot.flag == *flag
            && slot.variant.as_deref() == variant
        {
            slot.count = slot.count.wrapping_add(1);
            return;
        }
        self.add_hashed(flag, variant, reason);
    }

    fn add_hashed(&mut self, flag: &str, variant: Option<&str>, reason: Reason) {
        let hash = self.hash(flag, variant, reason);
        if !self.slots.is_empty() {
            let mask = self.slots.len() - 1;
            let mut index = (hash as usize) & mask;
            loop {
                let slot = &mut self.slots[index];
                if slot.hash == 0 {
                    break;
                }
                if slot.hash == hash
                    && slot.reason == reason
                    && *slot.flag == *flag
                    && slot.variant.as_deref() == variant
                {
                    slot.count = slot.count.wrapping_add(1);
                    self.last = index + 1;
                    return;
                }
                index = (index + 1) & mask;
            }
        }
        self.insert(hash, flag, variant, reason);
    }

    /// The first evaluation of a (flag, variant, reason) on this thread: copies the names.
    #[cold]
    fn insert(&mut self, hash: u64, flag: &str, variant: Option<&str>, reason: Reason) {
        if (self.used + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut index = (hash as usize) & mask;
        while self.slots[index].hash != 0 {
            index = (index + 1) & mask;
        }
        self.slots[index] = Slot {
            hash,
            flag: flag.into(),
            variant: variant.map(Into::into),
            reason,
            count: 1,
        };
        self.used += 1;
        self.last = index + 1;
    }

    fn grow(&mut self) {
        self.last = 0;
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, (0..size).map(|_| Slot::empty()).collect());
        let mask = size - 1;
        for slot in old.into_iter().filter(|s| s.hash != 0) {
            let mut index = (slot.hash as usize) & mask;
            while self.slots[index].hash != 0 {
                index = (index + 1) & mask;
            }
            self.slots[index] = slot;
        }
    }
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            hash: 0,
            flag: Box::default(),
            variant: None,
            reason: Reason::Default,
            count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(reports: &[UsageReport]) -> Vec<(String, Option<String>, u64)> {
        let mut all: Vec<_> = reports
            .iter()
            .flat_map(|r| r.counts.iter())
            .map(|c| (c.flag.clone(), c.variant.clone(), c.count))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn counts_from_every_thread_reach_the_sink_exactly() {
        let sink = Arc::new(UsageSink::new(9_001, true));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let sink = sink.clone();
                scope.spawn(move || {
                    for i in 0..1_000 {
                        let variant = if i % 4 == 0 { "on" } else { "off" };
                        sink.record("a", Some(variant), Reason::TargetingMatch);
                    }
                    sink.record("missing", None, Reason::Error);
                });
            }
        });
        for _ in 0..10 {
            sink.record("b", Some("on"), Reason::Static);
        }
        // An ended thread hands its table over from its thread-local destructor, which runs as
        // the OS thread exits, possibly just after `scope` returned: gather until all arrived.
        let expected = vec![
            ("a".to_owned(), Some("off".to_owned()), 3_000),
            ("a".to_owned(), Some("on".to_owned()), 1_000),
            ("b".to_owned(), Some("on".to_owned()), 10),
            ("missing".to_owned(), None, 4),
        ];
        let mut gathered: std::collections::BTreeMap<(String, Option<String>), u64> =
            std::collections::BTreeMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            for (flag, variant, count) in totals(&sink.take_reports(16 * 1024)) {
                *gathered.entry((flag, variant)).or_default() += count;
            }
            let seen: Vec<(String, Option<String>, u64)> = gathered
                .iter()
                .map(|((f, v), c)| (f.clone(), v.clone(), *c))
                .collect();
            if seen == expected || std::time::Instant::now() > deadline {
                assert_eq!(seen, expected);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(sink.take_reports(16 * 1024).is_empty(), "reported once");
    }

    #[test]
    fn reports_are_split_to_fit_and_restored_when_unsent() {
        let sink = Arc::new(UsageSink::new(9_002, true));
        let keys: Vec<String> = (0..500).map(|i| format!("flag-number-{i:04}")).collect();
        for key in &keys {
            sink.record(key, Some("on"), Reason::TargetingMatch);
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
        let off = Arc::new(UsageSink::new(9_003, false));
        off.record("a", Some("on"), Reason::Static);
        assert!(off.take_reports(1024).is_empty());
        let one = Arc::new(UsageSink::new(9_004, true));
        let two = Arc::new(UsageSink::new(9_005, true));
        one.record("a", Some("on"), Reason::Static);
        two.record("a", Some("on"), Reason::Static);
        two.record("a", Some("on"), Reason::Static);
        assert_eq!(
            totals(&one.take_reports(1024)),
            vec![("a".to_owned(), Some("on".to_owned()), 1)]
        );
        assert_eq!(
            totals(&two.take_reports(1024)),
            vec![("a".to_owned(), Some("on".to_owned()), 2)]
        );
    }
}
