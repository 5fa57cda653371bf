//! `rate-limiting` with the `local` policy: counters per window, shared by every worker of the
//! proxy through [`Counters`].
//!
//! Kong 3.x: limits `second`, `minute`, `hour`, `day`, `month`, `year` (at least one);
//! `limit_by` `consumer` (default; the client IP when no consumer), `credential`, `ip`,
//! `service`, `header` (`header_name`), `path` (`path`); `hide_client_headers` (false);
//! `error_code` (429), `error_message` ("API rate limit exceeded"). Windows are aligned on the
//! UTC calendar. Every answer carries `X-RateLimit-Limit-<Period>`,
//! `X-RateLimit-Remaining-<Period>` and `RateLimit-Limit` / `RateLimit-Remaining` /
//! `RateLimit-Reset` (the most constraining period); a refusal adds `Retry-After`. Counters
//! are keyed by the plugin's own scope (its route and service), the identifier and the period,
//! as Kong's local policy. `cluster` and `redis` policies are refused (they need a store the
//! filter cannot reach); a config exported with them fails closed.

use super::conf::Conf;
use super::text::Text;
use super::{Counters, Exchange, Exit, PluginEngine, ResponseStep, Step};
use crate::document::Plugin;
use std::borrow::Cow;
use std::collections::HashMap;

/// Kong's periods: config field and counter key, length in seconds.
const PERIODS: [(&str, u64); 6] = [
    ("second", 1),
    ("minute", 60),
    ("hour", 3600),
    ("day", 86_400),
    ("month", 2_592_000),
    ("year", 31_536_000),
];

/// `X-RateLimit-Limit-<Period>` and `X-RateLimit-Remaining-<Period>`, per entry of
/// [`PERIODS`] (written out: these go on every response).
const HEADER_NAMES: [(&str, &str); 6] = [
    ("X-RateLimit-Limit-Second", "X-RateLimit-Remaining-Second"),
    ("X-RateLimit-Limit-Minute", "X-RateLimit-Remaining-Minute"),
    ("X-RateLimit-Limit-Hour", "X-RateLimit-Remaining-Hour"),
    ("X-RateLimit-Limit-Day", "X-RateLimit-Remaining-Day"),
    ("X-RateLimit-Limit-Month", "X-RateLimit-Remaining-Month"),
    ("X-RateLimit-Limit-Year", "X-RateLimit-Remaining-Year"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header(String),
    Path(String),
}

#[derive(Debug)]
pub(super) struct RateLimiting {
    /// (index into PERIODS, limit), in PERIODS order.
    limits: Vec<(usize, u64)>,
    limit_by: LimitBy,
    hide_client_headers: bool,
    error_code: u16,
    error_message: String,
    /// `ratelimit:<route id>:<service id>:`: every counter key starts with it (the plugin's
    /// scope), then the identifier, `:` and the period.
    key_prefix: String,
}

impl RateLimiting {
    pub(super) fn new(
        c: &Conf<'_>,
        plugin: &Plugin,
        route_keys: &[String],
        service_keys: &[String],
        _notes: &mut Vec<String>,
    ) -> Result<RateLimiting, String> {
        let mut limits = Vec::new();
        for (i, (name, _)) in PERIODS.iter().enumerate() {
            if let Some(n) = c.number(name)? {
                if n <= 0.0 {
                    return Err(format!("config.{name} must be greater than 0"));
                }
                limits.push((i, n.floor() as u64));
            }
        }
        if limits.is_empty() {
            return Err(
                "at least one of config.second, minute, hour, day, month, year must be set".into(),
            );
        }
        match c.string("policy")?.as_deref() {
            None | Some("local") => {}
            Some(other) => {
                return Err(format!(
                    "config.policy {other:?} is not supported (only \"local\", counted across \
                     the proxy's workers)"
                ))
            }
        }
        let limit_by = match c.string("limit_by")?.as_deref() {
            None | Some("consumer") => LimitBy::Consumer,
            Some("credential") => LimitBy::Credential,
            Some("ip") => LimitBy::Ip,
            Some("service") => LimitBy::Service,
            Some("header") => LimitBy::Header(
                c.string("header_name")?
                    .ok_or("config.header_name is required with limit_by \"header\"")?,
            ),
            Some("path") => LimitBy::Path(
                c.string("path")?
                    .ok_or("config.path is required with limit_by \"path\"")?,
            ),
            Some(other) => return Err(format!("config.limit_by {other:?} is not supported")),
        };
        let error_code = match c.number("error_code")? {
            None => 429,
            Some(s) if (100.0..=599.0).contains(&s) => s as u16,
            Some(s) => return Err(format!("config.error_code {s} is not an HTTP status")),
        };
        let key = |keys: &[String], i: Option<usize>| {
            i.and_then(|i| keys.get(i).cloned()).unwrap_or_default()
        };
        Ok(RateLimiting {
            limits,
            limit_by,
            hide_client_headers: c.boolean("hide_client_headers", false)?,
            error_code,
            error_message: c
                .string("error_message")?
                .unwrap_or_else(|| "API rate limit exceeded".to_owned()),
            key_prefix: format!(
                "ratelimit:{}:{}:",
                key(route_keys, plugin.route),
                key(service_keys, plugin.service)
            ),
        })
    }

    fn identifier<'a>(&'a self, engine: &'a PluginEngine, ex: &Exchange<'a>) -> Cow<'a, str> {
        let ip = || Cow::Owned(ex.client_ip().map(|ip| ip.to_string()).unwrap_or_default());
        let consumer = || {
            ex.identity
                .consumer
                .and_then(|i| engine.consumer(i))
                .map(|c| c.id.as_str())
        };
        let found = match &self.limit_by {
            LimitBy::Consumer => consumer().or(ex.identity.credential),
            LimitBy::Credential => ex.identity.credential,
            LimitBy::Ip => None,
            LimitBy::Service => ex
                .service
                .and_then(|i| engine.service_keys.get(i))
                .map(String::as_str),
            LimitBy::Header(name) => {
                return ex
                    .header(name)
                    .map_or_else(ip, |value| Cow::Owned(value.to_owned()))
            }
            LimitBy::Path(path) => Some(path.as_str()).filter(|p| *p == ex.client_path),
        };
        found.map_or_else(ip, Cow::Borrowed)
    }

    pub(super) fn access<'a>(
        &'a self,
        engine: &'a PluginEngine,
        ex: &mut Exchange<'a>,
        counters: &mut dyn Counters,
    ) -> Step {
        let identifier = self.identifier(engine, ex);
        let now_s = ex.now_ms / 1000;
        let limits = &self.limits[..self.limits.len().min(PERIODS.len())];
        // One key, its period rewritten for each limit: this runs on every request, and the
        // less code and memory it touches the less the proxy pays (docs/filter.md).
        let mut key = String::with_capacity(self.key_prefix.len() + identifier.len() + 8);
        key.push_str(&self.key_prefix);
        key.push_str(&identifier);
        key.push(':');
        let stem = key.len();
        let window = |key: &mut String, period: usize| {
            key.truncate(stem);
            key.push_str(PERIODS[period].0);
            window_start(now_s, period) * 1000
        };
        // Kong reads every period's usage, refuses when one is spent, else counts the request.
        // With one period the increment alone decides (it refuses at the limit and counts
        // nothing then): one counter round trip per request instead of two.
        let mut usage = [0; PERIODS.len()];
        let mut stop = None;
        if limits.len() > 1 {
            for (i, &(period, limit)) in limits.iter().enumerate() {
                let start = window(&mut key, period);
                usage[i] = counters.usage(&key, start);
                if usage[i] >= limit && stop.is_none() {
                    stop = Some(i);
                }
            }
        }
        if stop.is_none() {
            for (i, &(period, limit)) in limits.iter().enumerate() {
                let start = window(&mut key, period);
                match counters.increment(&key, start, limit) {
                    Some(count) => usage[i] = count.saturating_sub(1),
                    None => {
                        // Another worker spent the last unit since we read it.
                        usage[i] = limit;
                        stop = Some(i);
                        break;
                    }
                }
            }
        }

        // Two headers per period and three for the tightest, as the response plan's steps.
        let steps_before = ex.response.steps.len();
        if !self.hide_client_headers {
            ex.response.steps.reserve(limits.len() * 2 + 3);
        }
        let mut best: Option<(u64, u64, u64)> = None; // (remaining, window, limit)
        let mut reset = 1;
        for (i, &(period, limit)) in limits.iter().enumerate() {
            let mut remaining = limit.saturating_sub(usage[i]);
            if stop.is_none() || stop == Some(i) {
                remaining = remaining.saturating_sub(1);
            }
            let length = PERIODS[period].1;
            if best.is_none_or(|(r, w, _)| remaining < r || (remaining == r && length > w)) {
                best = Some((remaining, length, limit));
                let elapsed = ex.now_ms.saturating_sub(window_start(now_s, period) * 1000) / 1000;
                reset = length.saturating_sub(elapsed).max(1);
            }
            if !self.hide_client_headers {
                let (limit_name, remaining_name) = HEADER_NAMES[period];
                ex.response.set(limit_name, Text::number(limit));
                ex.response.set(remaining_name, Text::number(remaining));
            }
        }
        if let (Some((remaining, _, limit)), false) = (best, self.hide_client_headers) {
            ex.response.set("RateLimit-Limit", Text::number(limit));
            ex.response
                .set("RateLimit-Remaining", Text::number(remaining));
            ex.response.set("RateLimit-Reset", Text::number(reset));
        }
        match stop {
            None => Ok(()),
            Some(_) => Err(self.refusal(ex, steps_before, reset)),
        }
    }

    /// The answer to a request over a limit: Kong's error with the rate-limit headers this
    /// request was given (`ex`'s response steps from `steps_before`) and `Retry-After`.
    #[cold]
    #[inline(never)]
    fn refusal(&self, ex: &Exchange<'_>, steps_before: usize, reset: u64) -> Exit {
        let mut exit = Exit::error(self.error_code, &self.error_message);
        exit.headers
            .extend(
                ex.response.steps[steps_before..]
                    .iter()
                    .filter_map(|step| match step {
                        ResponseStep::Set(name, value) => {
                            Some((name.to_string(), value.to_string()))
                        }
                        _ => None,
                    }),
            );
        exit.with_header("Retry-After", reset.to_string())
    }
}

/// The start (Unix seconds) of the UTC calendar window of `PERIODS[period]` holding `now_s`.
fn window_start(now_s: u64, period: usize) -> u64 {
    match period {
        // second, minute, hour, day: fixed lengths.
        0..=3 => now_s - now_s % PERIODS[period].1,
        _ => calendar_window_start(now_s, period),
    }
}

/// [`window_start`] of a month or a year, which the calendar decides.
#[cold]
fn calendar_window_start(now_s: u64, period: usize) -> u64 {
    let days = now_s / 86_400;
    let (year, month, _) = civil_from_days(days as i64);
    let first = if PERIODS[period].0 == "month" {
        month
    } else {
        1
    };
    days_from_civil(year, first, 1) as u64 * 86_400
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Counters in one process's memory: tests, and `fallback-companion match` (which never
/// counts anything twice).
#[derive(Debug, Default, Clone)]
pub struct MemoryCounters {
    counts: HashMap<String, (u64, u64)>,
}

impl Counters for MemoryCounters {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        match self.counts.get(key) {
            Some((start, count)) if *start == window_start_ms => *count,
            _ => 0,
        }
    }

    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
        let entry = self
            .counts
            .entry(key.to_owned())
            .or_insert((window_start_ms, 0));
        if entry.0 != window_start_ms {
            *entry = (window_start_ms, 0);
        }
        if entry.1 >= limit {
            return None;
        }
        entry.1 += 1;
        Some(entry.1)
    }
}

#[cfg(test)]
mod calendar_tests {
    use super::*;

    #[test]
    fn windows_align_on_the_utc_calendar() {
        // 2024-02-29T13:45:30Z
        let now = 1_709_214_330;
        assert_eq!(window_start(now, 0), now);
        assert_eq!(window_start(now, 1), now - 30);
        assert_eq!(window_start(now, 2), now - 45 * 60 - 30);
        assert_eq!(window_start(now, 3), 1_709_164_800); // 2024-02-29T00:00:00Z
        assert_eq!(window_start(now, 4), 1_706_745_600); // 2024-02-01
        assert_eq!(window_start(now, 5), 1_704_067_200); // 2024-01-01
    }
}
