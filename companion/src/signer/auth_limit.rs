//! Failed bearer-token attempts, limited per client address.
//!
//! Each address may fail [`AuthLimit::burst`] times in a row; one more failure is allowed per
//! [`AuthLimit::refill_every`] after that. An address over its allowance is answered `429` with
//! `Retry-After`, whatever token it presents, so that the answer tells a guesser nothing, with
//! one exception that keeps successful clients unaffected: a token this address already used
//! successfully (and that is still accepted) goes through. So a filter sharing its address with
//! a misbehaving client keeps working, and a guesser learns nothing while limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failed attempts an address may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimit {
    /// Failures allowed in a row before the address is limited.
    pub burst: u32,
    /// One more failure is allowed per this interval.
    pub refill_every: Duration,
}

impl Default for AuthLimit {
    /// 10 failures, then one per 6 s (10 a minute).
    fn default() -> Self {
        Self {
            burst: 10,
            refill_every: Duration::from_secs(6),
        }
    }
}

/// Addresses remembered at most; beyond, the idle and then the oldest are forgotten.
const MAX_CLIENTS: usize = 4096;
/// Tokens remembered per address as having succeeded from it.
const PROVEN_PER_CLIENT: usize = 4;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The token is accepted: serve the request.
    Pass,
    /// The token is missing or not accepted: `401`. `now_limited` when this failure used the
    /// address's last allowance.
    Failed {
        /// Whether the address is limited from now on.
        now_limited: bool,
    },
    /// The address is over its allowance: `429`, retry after this long.
    Limited {
        /// Until one more attempt is allowed.
        retry_after: Duration,
    },
}

struct Client {
    /// Failures still allowed (fractional while refilling).
    allowance: f64,
    updated: Instant,
    /// sha256 digests of tokens that succeeded from this address, most recent first.
    proven: Vec<[u8; 32]>,
}

/// The per-address state behind [`AuthVerdict`].
pub struct AuthLimiter {
    limit: AuthLimit,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

impl std::fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl AuthLimiter {
    /// A limiter allowing `limit`.
    pub fn new(limit: AuthLimit) -> Self {
        Self {
            limit,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Decides on a request from `address` presenting the token with digest `token` (`None`:
    /// no token), which the signer does (`accepted`) or does not accept, at `now`.
    pub fn decide(
        &self,
        address: IpAddr,
        token: Option<[u8; 32]>,
        accepted: bool,
        now: Instant,
    ) -> AuthVerdict {
        let Ok(mut clients) = self.clients.lock() else {
            // A poisoned map only loses the limit, never a client's access.
            return if accepted {
                AuthVerdict::Pass
            } else {
                AuthVerdict::Failed { now_limited: false }
            };
        };
        if !clients.contains_key(&address) && clients.len() >= MAX_CLIENTS {
            self.forget_some(&mut clients, now);
        }
        let burst = f64::from(self.limit.burst);
        let client = clients.entry(address).or_insert(Client {
            allowance: burst,
            updated: now,
            proven: Vec::new(),
        });
        client.allowance = self.refilled(client, now);
        client.updated = now;
        let proven = |client: &Client| token.is_some_and(|t| client.proven.contains(&t));
        if client.allowance < 1.0 {
            if accepted && proven(client) {
                return AuthVerdict::Pass;
            }
            let missing = 1.0 - client.allowance;
            return AuthVerdict::Limited {
                retry_after: Duration::from_secs_f64(
                    (missing * self.limit.refill_every.as_secs_f64()).ceil(),
                )
                .max(Duration::from_secs(1)),
            };
        }
        if accepted {
            if let Some(token) = token {
                client.proven.retain(|t| *t != token);
                client.proven.insert(0, token);
                client.proven.truncate(PROVEN_PER_CLIENT);
            }
            return AuthVerdict::Pass;
        }
        client.allowance -= 1.0;
        AuthVerdict::Failed {
            now_limited: client.allowance < 1.0,
        }
    }

    fn refilled(&self, client: &Client, now: Instant) -> f64 {
        let every = self.limit.refill_every.as_secs_f64();
        let earned = if every > 0.0 {
            now.saturating_duration_since(client.updated).as_secs_f64() / every
        } else {
            f64::INFINITY
        };
        (client.allowance + earned).min(f64::from(self.limit.burst))
    }

    /// Makes room: forgets addresses whose allowance is whole again (and that have no proven
    /// token), then, if the map is still full, the one seen longest ago.
    fn forget_some(&self, clients: &mut HashMap<IpAddr, Client>, now: Instant) {
        let burst = f64::from(self.limit.burst);
        clients.retain(|_, c| !c.proven.is_empty() || self.refilled(c, now) < burst);
        if clients.len() >= MAX_CLIENTS {
            if let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, c)| c.updated)
                .map(|(address, _)| *address)
            {
                clients.remove(&oldest);
            }
        }
    }

    /// How many addresses are remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const GOOD: [u8; 32] = [1; 32];
    const GUESS: [u8; 32] = [2; 32];

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    fn limiter() -> AuthLimiter {
        AuthLimiter::new(AuthLimit {
            burst: 3,
            refill_every: Duration::from_secs(10),
        })
    }

    #[test]
    fn failures_beyond_the_burst_are_limited_until_the_allowance_refills() {
        let l = limiter();
        let t0 = Instant::now();
        let attacker = ip(1);
        assert_eq!(
            l.decide(attacker, Some(GUESS), false, t0),
            AuthVerdict::Failed { now_limited: false }
        );
        assert_eq!(
            l.decide(attacker, None, false, t0),
            AuthVerdict::Failed { now_limited: false }
        );
        assert_eq!(
            l.decide(attacker, Some(GUESS), false, t0),
            AuthVerdict::Failed { now_limited: true }
        );
        for _ in 0..5 {
            assert_eq!(
                l.decide(attacker, Some(GUESS), false, t0 + Duration::from_secs(1)),
                AuthVerdict::Limited {
                    retry_after: Duration::from_secs(9)
                }
            );
        }
        // A valid token never used from this address gets the same answer: nothing learnt.
        assert!(matches!(
            l.decide(attacker, Some(GOOD), true, t0 + Duration::from_secs(1)),
            AuthVerdict::Limited { .. }
        ));
        // Refused attempts while limited cost nothing more: one refill allows one attempt.
        assert_eq!(
            l.decide(attacker, Some(GUESS), false, t0 + Duration::from_secs(10)),
            AuthVerdict::Failed { now_limited: true }
        );
        assert!(matches!(
            l.decide(attacker, Some(GUESS), false, t0 + Duration::from_secs(11)),
            AuthVerdict::Limited { .. }
        ));
        // Other addresses are not affected.
        assert_eq!(
            l.decide(ip(2), Some(GUESS), false, t0),
            AuthVerdict::Failed { now_limited: false }
        );
    }

    #[test]
    fn successful_tokens_are_unaffected_even_from_a_limited_address() {
        let l = limiter();
        let t0 = Instant::now();
        let shared = ip(3);
        // A filter succeeds; then another client behind the same address fails repeatedly.
        assert_eq!(l.decide(shared, Some(GOOD), true, t0), AuthVerdict::Pass);
        for _ in 0..3 {
            l.decide(shared, Some(GUESS), false, t0);
        }
        assert!(matches!(
            l.decide(shared, Some(GUESS), false, t0),
            AuthVerdict::Limited { .. }
        ));
        assert_eq!(l.decide(shared, Some(GOOD), true, t0), AuthVerdict::Pass);
        // A proven token that is no longer accepted (rotated out) is limited like any other.
        assert!(matches!(
            l.decide(shared, Some(GOOD), false, t0),
            AuthVerdict::Limited { .. }
        ));
        // Successes never use up the allowance.
        let busy = ip(4);
        for _ in 0..100 {
            assert_eq!(l.decide(busy, Some(GOOD), true, t0), AuthVerdict::Pass);
        }
        assert_eq!(
            l.decide(busy, Some(GUESS), false, t0),
            AuthVerdict::Failed { now_limited: false }
        );
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_addresses() {
        let l = limiter();
        let t0 = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 500) {
            let address = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n) + 1));
            l.decide(address, Some(GUESS), false, t0);
        }
        assert!(l.remembered() <= MAX_CLIENTS, "{}", l.remembered());
    }
}
