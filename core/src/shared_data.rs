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
pub struct SharedCounters<'k, K: SharedData + ?Sized> {
    kv: &'k mut K,
    /// Counter keys that could not be written: the caller logs them.
    pub contended: Vec<String>,
}

impl<'k, K: SharedData + ?Sized> SharedCounters<'k, K> {
    /// Counters kept in `kv`.
    pub fn new(kv: &'k mut K) -> Self {
        Self {
            kv,
            contended: Vec::new(),
        }
    }
}

fn counter_key(key: &str) -> String {
    format!("fallback.{key}")
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

impl<K: SharedData + ?Sized> Counters for SharedCounters<'_, K> {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        decode_count(self.kv.get(&counter_key(key)).0.as_deref(), window_start_ms)
    }

    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
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
            let next = count + 1;
            match self
                .kv
                .set(&key, format!("{window_start_ms} {next}").as_bytes(), cas)
            {
                Ok(()) => return Some(next),
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
            let mut counters = SharedCounters::new(&mut kv);
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
            SharedCounters::new(&mut kv).increment("rl", 0, 100);
            kv.race_next_write("fallback.rl", b"0 2");
            let got = SharedCounters::new(&mut kv).increment("rl", 0, 100);
            assert_eq!(got, Some(3), "{semantics:?}");
            assert_eq!(SharedCounters::new(&mut kv).usage("rl", 0), 3);
        }
    }

    #[test]
    fn a_host_refusal_is_reported_not_counted() {
        let mut kv = SimSharedData::new(CasSemantics::Strict);
        kv.refuse_writes(true);
        let mut counters = SharedCounters::new(&mut kv);
        assert_eq!(counters.increment("rl", 0, 10), None);
        assert_eq!(counters.contended, ["fallback.rl"]);
    }
}
