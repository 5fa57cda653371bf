//! The proxy's shared data (a process-wide key/value store with compare-and-swap), as the
//! filter's workers use it: read a key with its token, then write with that token.
//!
//! Hosts disagree on what a token of 0 means ([`crate::host::CasSemantics`]): Envoy writes
//! unconditionally, ngx_wasm_module writes only when the key is absent. Writing with the token
//! just read is correct on both, so every write here does exactly that and retries from a fresh
//! read when another worker wrote in between. [`SharedCounters`] keeps Kong's rate-limiting
//! counters this way; [`crate::publication`] publishes configs and holds the leader lease this
//! way.

use crate::plugins::Counters;

/// How many times a write re-reads after losing a race before giving up: a worker loses at
/// most once per concurrent writer, so this is never reached in practice.
pub const MAX_ROUNDS: usize = 16;

/// A shared key/value store with compare-and-swap, as a proxy host offers it.
pub trait SharedData {
    /// The value under `key` and its CAS token; `(None, 0)` when the key is absent.
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32);

    /// Writes `value` under `key` when `cas` is the key's current token (an absent key's being
    /// 0). `Err` when another worker wrote first, or the host refused.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), WriteRefused>;
}

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    /// The key changed since it was read (another worker wrote it).
    #[error("another worker wrote the key first (compare-and-swap mismatch)")]
    CasMismatch,
    /// The host refused the write for another reason; the number is its proxy-wasm status.
    #[error("the host refused the write (proxy-wasm status {0})")]
    Host(u32),
}

/// Replaces the value of `key` with `next(current)`, read-then-compare-and-swap, retrying when
/// another worker wrote in between. `next` returning `None` leaves the key alone (and ends with
/// `Ok(None)`). The value written is returned.
pub fn update<K: SharedData + ?Sized>(
    kv: &mut K,
    key: &str,
    mut next: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, WriteRefused> {
    let mut last = WriteRefused::CasMismatch;
    for _ in 0..MAX_ROUNDS {
        let (current, cas) = kv.get(key);
        let Some(value) = next(current.as_deref()) else {
            return Ok(None);
        };
        match kv.set(key, &value, cas) {
            Ok(()) => return Ok(Some(value)),
            Err(WriteRefused::CasMismatch) => last = WriteRefused::CasMismatch,
            Err(refused) => return Err(refused),
        }
    }
    Err(last)
}

/// Kong's rate-limiting counters ([`Counters`]) in shared data, so every worker counts the same
/// requests. Each key (`fallback.<counter key>`) holds `<window start ms> <count>`: a new
/// window overwrites the old one in place, so keys do not pile up (shared data has no expiry).
///
/// **Leases.** A shared-data read and compare-and-swap write for every request cost a worker
/// two host calls (about 7 µs of Envoy's CPU per request, `make bench-proxy`). So a worker
/// counts a block of units at once and hands them out from its own [`Leases`]: with a large
/// part of the limit left, one round trip per [`MAX_LEASE`] requests. Never more than the limit
/// is admitted (a lease is counted in shared data before any of it is used). The block is at
/// most 1/[`LEASE_DIVISOR`] of what is left, so with fewer than 2 × [`LEASE_DIVISOR`] units
/// left every request counts one unit with its own round trip, exactly as without leases:
/// small limits, and the last units of any limit, are exact. The price is in the rate-limit headers of a proxy with
/// several workers: a worker reports the count as of its lease, so `X-RateLimit-Remaining-*`
/// may be up to `workers × MAX_LEASE` lower than an exact count while much of the limit is
/// left (units leased by a worker that gets no more requests in the window are never used).
pub struct SharedCounters<'k, 'l, K: SharedData + ?Sized> {
    kv: &'k mut K,
    leases: &'l mut Leases,
    /// Counter keys that could not be written: the caller logs them.
    pub contended: Vec<String>,
}

/// The most units one lease holds.
pub const MAX_LEASE: u64 = 32;
/// A lease holds at most this fraction (1/n) of the units left in the window.
pub const LEASE_DIVISOR: u64 = 64;
/// Leases a worker keeps at once (one per counter key in use); past it, spent ones go first.
const MAX_LEASES: usize = 4096;

/// One worker's leased rate-limit units, by rate-limit key (the shared-data key without its
/// `fallback.` prefix); keep one per worker for its lifetime.
#[derive(Debug, Default)]
pub struct Leases {
    table: std::collections::HashMap<String, Lease>,
}

/// Units `next..end` of a window's count belong to this worker.
#[derive(Debug, Clone, Copy)]
struct Lease {
    window_start_ms: u64,
    next: u64,
    end: u64,
}

impl Leases {
    /// The lease of `key` in this window with a unit left.
    fn live(&mut self, key: &str, window_start_ms: u64) -> Option<&mut Lease> {
        self.table
            .get_mut(key)
            .filter(|l| l.window_start_ms == window_start_ms && l.next < l.end)
    }

    fn insert(&mut self, key: String, lease: Lease) {
        if self.table.len() >= MAX_LEASES && !self.table.contains_key(&key) {
            self.table.retain(|_, l| l.next < l.end);
            if self.table.len() >= MAX_LEASES {
                self.table.clear();
            }
        }
        self.table.insert(key, lease);
    }
}

/// How many units to lease when `count` of `limit` are counted.
fn lease_size(limit: u64, count: u64) -> u64 {
    (limit.saturating_sub(count) / LEASE_DIVISOR).clamp(1, MAX_LEASE)
}

impl<'k, 'l, K: SharedData + ?Sized> SharedCounters<'k, 'l, K> {
    /// Counters kept in `kv`, with this worker's `leases`.
    pub fn new(kv: &'k mut K, leases: &'l mut Leases) -> Self {
        Self {
            kv,
            leases,
            contended: Vec::new(),
        }
    }
}

fn counter_key(key: &str) -> String {
    let mut full = String::with_capacity("fallback.".len() + key.len());
    full.push_str("fallback.");
    full.push_str(key);
    full
}

fn decode_count(value: Option<&[u8]>, window_start_ms: u64) -> u64 {
    let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return 0;
    };
    match text.split_once(' ') {
        Some((start, count)) if start.parse() == Ok(window_start_ms) => count.parse().unwrap_or(0),
        _ => 0,
    }
}

impl<K: SharedData + ?Sized> Counters for SharedCounters<'_, '_, K> {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        // Leases are found by the rate-limit key itself: no copy of it per request.
        if let Some(lease) = self.leases.live(key, window_start_ms) {
            // Units left in this worker's lease: the count as of it, not yet spent.
            return lease.next;
        }
        decode_count(self.kv.get(&counter_key(key)).0.as_deref(), window_start_ms)
    }

    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
        if let Some(lease) = self.leases.live(key, window_start_ms) {
            lease.next += 1;
            return Some(lease.next);
        }
        let lease_key = key;
        let key = counter_key(key);
        for _ in 0..MAX_ROUNDS {
            let (value, cas) = self.kv.get(&key);
            if value.is_none() {
                // Create the key empty first, then count with a real token like any other
                // write. ngx_wasm_module creates it once (a token of 0 only writes an absent
                // key); in Envoy a token of 0 writes unconditionally, so two workers creating
                // the same key at the same instant may lose a count in that first window.
                let _ = self.kv.set(&key, b"0 0", 0);
                continue;
            }
            let count = decode_count(value.as_deref(), window_start_ms);
            if count >= limit {
                return None;
            }
            let end = count + lease_size(limit, count);
            match self
                .kv
                .set(&key, format!("{window_start_ms} {end}").as_bytes(), cas)
            {
                Ok(()) => {
                    let next = count + 1;
                    if next < end {
                        let lease = Lease {
                            window_start_ms,
                            next,
                            end,
                        };
                        self.leases.insert(lease_key.to_owned(), lease);
                    }
                    return Some(next);
                }
                Err(WriteRefused::CasMismatch) => continue,
                Err(WriteRefused::Host(_)) => break,
            }
        }
        self.contended.push(key);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sim::SimSharedData;
    use crate::host::CasSemantics;

    fn both() -> [SimSharedData; 2] {
        [
            SimSharedData::new(CasSemantics::ZeroIsUnconditional),
            SimSharedData::new(CasSemantics::Strict),
        ]
    }

    #[test]
    fn update_writes_with_the_token_read_on_every_host() {
        for mut kv in both() {
            for n in 1..=3u8 {
                let written = update(&mut kv, "k", |_| Some(vec![n])).unwrap();
                assert_eq!(written, Some(vec![n]), "{:?}", kv.semantics());
                assert_eq!(kv.get("k").0, Some(vec![n]));
            }
            assert_eq!(update(&mut kv, "k", |_| None), Ok(None));
            assert_eq!(kv.get("k").0, Some(vec![3]));
        }
    }

    #[test]
    fn update_retries_when_another_worker_wrote_in_between() {
        let plus_one = |current: Option<&[u8]>| {
            let n: u8 = std::str::from_utf8(current?).ok()?.parse().ok()?;
            Some(format!("{}", n + 1).into_bytes())
        };
        for mut kv in both() {
            kv.set("k", b"1", 0).unwrap();
            assert_eq!(update(&mut kv, "k", plus_one), Ok(Some(b"2".to_vec())));
            // Another worker writes between this worker's read and its write.
            kv.race_next_write("k", b"5");
            assert_eq!(
                update(&mut kv, "k", plus_one),
                Ok(Some(b"6".to_vec())),
                "re-read after the race"
            );
        }
    }

    #[test]
    fn a_token_of_zero_never_overwrites_on_the_strict_host() {
        let mut strict = SimSharedData::new(CasSemantics::Strict);
        strict.set("k", b"a", 0).unwrap();
        assert_eq!(strict.set("k", b"b", 0), Err(WriteRefused::CasMismatch));
        let mut envoy = SimSharedData::new(CasSemantics::ZeroIsUnconditional);
        envoy.set("k", b"a", 0).unwrap();
        assert_eq!(envoy.set("k", b"b", 0), Ok(()));
    }

    #[test]
    fn counters_count_up_to_the_limit_on_every_host() {
        for mut kv in both() {
            let semantics = kv.semantics();
            let mut leases = Leases::default();
            let mut counters = SharedCounters::new(&mut kv, &mut leases);
            assert_eq!(counters.usage("rl", 1000), 0);
            assert_eq!(counters.increment("rl", 1000, 3), Some(1), "{semantics:?}");
            assert_eq!(counters.increment("rl", 1000, 3), Some(2));
            assert_eq!(counters.increment("rl", 1000, 3), Some(3));
            assert_eq!(counters.increment("rl", 1000, 3), None, "limit reached");
            assert_eq!(counters.usage("rl", 1000), 3);
            // A new window starts from zero, in place.
            assert_eq!(counters.usage("rl", 2000), 0);
            assert_eq!(counters.increment("rl", 2000, 3), Some(1));
            assert!(counters.contended.is_empty());
            assert_eq!(kv.get("fallback.rl").0.as_deref(), Some(&b"2000 1"[..]));
        }
    }

    #[test]
    fn two_workers_count_every_request_between_them_on_every_host() {
        for mut kv in both() {
            let semantics = kv.semantics();
            // Worker A reads, then worker B counts, then A writes with its stale token: A must
            // re-read instead of overwriting B's count.
            SharedCounters::new(&mut kv, &mut Leases::default()).increment("rl", 0, 100);
            kv.race_next_write("fallback.rl", b"0 2");
            let got = SharedCounters::new(&mut kv, &mut Leases::default()).increment("rl", 0, 100);
            assert_eq!(got, Some(3), "{semantics:?}");
            assert_eq!(
                SharedCounters::new(&mut kv, &mut Leases::default()).usage("rl", 0),
                3
            );
        }
    }

    #[test]
    fn a_host_refusal_is_reported_not_counted() {
        let mut kv = SimSharedData::new(CasSemantics::Strict);
        kv.refuse_writes(true);
        let mut leases = Leases::default();
        let mut counters = SharedCounters::new(&mut kv, &mut leases);
        assert_eq!(counters.increment("rl", 0, 10), None);
        assert_eq!(counters.contended, ["fallback.rl"]);
    }

    /// Counts host calls, to check how many a request costs.
    struct Counting<'a> {
        kv: &'a mut SimSharedData,
        calls: u64,
    }

    impl SharedData for Counting<'_> {
        fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
            self.calls += 1;
            self.kv.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), WriteRefused> {
            self.calls += 1;
            self.kv.set(key, value, cas)
        }
    }

    #[test]
    fn with_much_of_the_limit_left_a_worker_pays_a_round_trip_per_lease_not_per_request() {
        for mut kv in both() {
            let mut leases = Leases::default();
            let mut host = Counting {
                kv: &mut kv,
                calls: 0,
            };
            for n in 1..=(10 * MAX_LEASE) {
                let got = SharedCounters::new(&mut host, &mut leases).increment("rl", 0, 1_000_000);
                assert_eq!(got, Some(n), "one worker counts every request exactly");
            }
            // Ten leases: a read and a write each, plus the key's creation (a read and a write).
            assert_eq!(host.calls, 10 * 2 + 2);
        }
    }

    #[test]
    fn workers_with_leases_never_admit_more_than_the_limit_and_the_last_units_are_exact() {
        for limit in [1, 5, 127, 128, 1000, 5000] {
            for mut kv in both() {
                let semantics = kv.semantics();
                let mut workers: Vec<Leases> = (0..4).map(|_| Leases::default()).collect();
                let mut admitted = 0;
                // Requests spread unevenly over four workers, well past the limit.
                for i in 0..(limit * 3) {
                    let w = [0, 1, 0, 2, 3, 0, 1][i as usize % 7];
                    let mut counters = SharedCounters::new(&mut kv, &mut workers[w]);
                    if let Some(count) = counters.increment("rl", 0, limit) {
                        assert!(count <= limit, "{semantics:?} limit {limit}: count {count}");
                        admitted += 1;
                    }
                }
                assert!(admitted <= limit, "{semantics:?} limit {limit}: {admitted}");
                // Every worker keeps getting requests, so no leased unit is left unused.
                assert_eq!(admitted, limit, "{semantics:?} limit {limit}");
            }
        }
    }

    #[test]
    fn below_twice_the_divisor_left_every_request_counts_in_shared_data() {
        // What another worker reads is exact near the limit: no unit is held back.
        for mut kv in both() {
            let mut a = Leases::default();
            let limit = 2 * LEASE_DIVISOR - 1;
            for n in 1..=limit {
                SharedCounters::new(&mut kv, &mut a).increment("rl", 0, limit);
                let mut b = Leases::default();
                assert_eq!(SharedCounters::new(&mut kv, &mut b).usage("rl", 0), n);
            }
        }
    }

    #[test]
    fn a_new_window_drops_the_old_lease() {
        let mut kv = SimSharedData::new(CasSemantics::ZeroIsUnconditional);
        let mut leases = Leases::default();
        let mut counters = SharedCounters::new(&mut kv, &mut leases);
        assert_eq!(counters.increment("rl", 0, 1_000_000), Some(1));
        assert_eq!(
            counters.increment("rl", 0, 1_000_000),
            Some(2),
            "from the lease"
        );
        assert_eq!(
            counters.increment("rl", 60_000, 1_000_000),
            Some(1),
            "new window"
        );
        assert_eq!(counters.usage("rl", 60_000), 1);
        assert_eq!(
            kv.get("fallback.rl").0.as_deref(),
            Some(&format!("60000 {MAX_LEASE}").into_bytes()[..])
        );
    }

    #[test]
    fn a_worker_keeps_a_bounded_number_of_leases() {
        let mut kv = SimSharedData::new(CasSemantics::ZeroIsUnconditional);
        let mut leases = Leases::default();
        for i in 0..(MAX_LEASES + 10) {
            SharedCounters::new(&mut kv, &mut leases).increment(&format!("k{i}"), 0, 1_000_000);
            assert!(leases.table.len() <= MAX_LEASES);
        }
    }
}
