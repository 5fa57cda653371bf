//! Exponential backoff with jitter.
//!
//! The randomness is an input, not something this module draws, so every delay is reproducible
//! in a unit test and the same code runs in the filter (no OS entropy) and the companion.

/// Delays that double from `initial_ms` up to `max_ms`, each one drawn from the upper half of
/// its step ("equal jitter"): never shorter than half the step, so retries do not bunch near zero,
/// and spread enough that a fleet restarted together does not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial_ms` and capped at `max_ms` (both at least 1 ms).
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        let initial_ms = initial_ms.max(1);
        Self {
            initial_ms,
            max_ms: max_ms.max(initial_ms),
            attempt: 0,
        }
    }

    /// The delay before the next retry; `entropy` is any random `u64`.
    pub fn next_delay_ms(&mut self, entropy: u64) -> u64 {
        let step = self
            .initial_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + entropy % (step - half + 1)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(100, 1_000);
        let steps = [100, 200, 400, 800, 1_000, 1_000];
        for step in steps {
            let d = b.clone().next_delay_ms(0);
            assert_eq!(d, step / 2, "lowest draw is half the step");
            let d = b.next_delay_ms(u64::MAX);
            assert!(
                d >= step / 2 && d <= step,
                "{d} outside [{}, {step}]",
                step / 2
            );
        }
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn reset_starts_from_the_initial_delay() {
        let mut b = Backoff::new(50, 10_000);
        for _ in 0..5 {
            b.next_delay_ms(7);
        }
        b.reset();
        assert!(b.next_delay_ms(u64::MAX) <= 50);
    }

    #[test]
    fn never_overflows_after_many_attempts() {
        let mut b = Backoff::new(1, u64::MAX);
        for _ in 0..200 {
            b.next_delay_ms(u64::MAX);
        }
    }

    #[test]
    fn different_entropy_spreads_the_delays() {
        let draws: std::collections::BTreeSet<u64> = (0..50u64)
            .map(|e| Backoff::new(1_000, 1_000).next_delay_ms(e * 7919))
            .collect();
        assert!(draws.len() > 10);
    }
}
