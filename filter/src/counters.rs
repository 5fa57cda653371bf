//! Rate-limiting counters in the proxy's shared data, so every worker counts the same
//! requests. Each key holds `<window start ms> <count>`: a new window overwrites the old one in
//! place, so keys do not pile up (shared data has no expiry). Increments are compare-and-swap
//! writes, retried when another worker wrote in between.

use crate::host;
use fallback_core::plugins::Counters;

/// How many times an increment re-reads after losing a race before counting the request as
/// refused: a worker loses at most once per concurrent writer, so this is never reached in
/// practice.
const MAX_ROUNDS: usize = 16;

/// [`Counters`] over proxy-wasm shared data.
pub struct SharedCounters;

fn key_of(key: &str) -> String {
    format!("fallback.{key}")
}

fn decode(value: Option<&[u8]>, window_start_ms: u64) -> u64 {
    let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return 0;
    };
    match text.split_once(' ') {
        Some((start, count)) if start.parse() == Ok(window_start_ms) => count.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Counters for SharedCounters {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        decode(host::shared_get(&key_of(key)).0.as_deref(), window_start_ms)
    }

    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
        let key = key_of(key);
        for _ in 0..MAX_ROUNDS {
            let (value, cas) = host::shared_get(&key);
            if cas.is_none() {
                // A write without CAS always succeeds: two workers creating the key at once would
                // both count "1". Create it empty first, then count with CAS like any other.
                host::shared_set(&key, b"0 0", None);
                continue;
            }
            let count = decode(value.as_deref(), window_start_ms);
            if count >= limit {
                return None;
            }
            let next = count + 1;
            if host::shared_set(&key, format!("{window_start_ms} {next}").as_bytes(), cas) {
                return Some(next);
            }
        }
        host::log(
            proxy_wasm::types::LogLevel::Warn,
            &format!("fallback: rate-limiting counter {key} is too contended; refusing"),
        );
        None
    }
}
