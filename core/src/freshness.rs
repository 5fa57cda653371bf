//! How old the config in force is, whether that is past the staleness budget, and what the
//! readiness path answers: pure functions of the published config's export time and the clock.
//!
//! The age of a fallback config counts from its export time (the `exported-at` metadata); a
//! control plane config is live and has age 0. Past `max_fallback_age_ms` the config is stale:
//! the leader logs it once per [`STALE_LOG_EVERY_MS`] ([`crate::fetch::FetchMachine`]), and with
//! [`StalePolicy::FailClosed`] requests are answered 503 instead of being served by it.

use crate::fetch::Source;

/// How often the leader repeats the "config is stale" line while it stays stale.
pub const STALE_LOG_EVERY_MS: u64 = 60_000;

/// What a filter does with a fallback config older than `max_fallback_age_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StalePolicy {
    /// Keep serving it (logged and counted): availability first. The default.
    #[default]
    Serve,
    /// Answer every request 503 instead of serving it.
    FailClosed,
}

impl StalePolicy {
    /// `"serve"` or `"fail_closed"`, as the filter configuration spells them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "serve" => Some(StalePolicy::Serve),
            "fail_closed" => Some(StalePolicy::FailClosed),
            _ => None,
        }
    }
}

/// The config in force as readiness and the staleness budget see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAge {
    /// Where it came from.
    pub source: Source,
    /// Its storage revision (0 for control plane configs).
    pub revision: u64,
    /// Its age in ms: from its export time for a fallback config (`None` when unknown), 0 for a
    /// control plane config.
    pub age_ms: Option<u64>,
    /// Whether it is older than the budget.
    pub stale: bool,
}

/// The age of a config from `source` exported at `exported_at_ms` (Unix ms), at `now_ms`, held
/// against `max_age_ms`. A clock behind the export time reads as age 0.
pub fn assess(
    source: Source,
    revision: u64,
    exported_at_ms: Option<u64>,
    now_ms: u64,
    max_age_ms: Option<u64>,
) -> ConfigAge {
    let age_ms = match source {
        Source::ControlPlane => Some(0),
        Source::Fallback => exported_at_ms.map(|at| now_ms.saturating_sub(at)),
    };
    // A fallback config of unknown age (exported by an older release) is not called stale:
    // nothing says it is old.
    let stale = matches!((age_ms, max_age_ms), (Some(age), Some(max)) if age > max);
    ConfigAge {
        source,
        revision,
        age_ms,
        stale,
    }
}

/// Whether a request must be refused rather than served by a config of `age`.
pub fn refuse_stale(age: &ConfigAge, policy: StalePolicy) -> bool {
    age.stale && policy == StalePolicy::FailClosed
}

/// The 503 body for a request refused under [`StalePolicy::FailClosed`]. Written by hand (only
/// numbers vary): serializing a `serde_json::Value` would add its encoder to the filter.
pub fn stale_body(age: &ConfigAge, max_age_ms: Option<u64>) -> String {
    format!(
        "{{\"message\":\"the gateway's fallback config (revision {}) is {} s old, past its \
         staleness budget of {} s (stale_policy fail_closed): refusing to serve it until a newer \
         export or the control plane is reached\"}}",
        age.revision,
        age.age_ms.unwrap_or(0) / 1000,
        max_age_ms.unwrap_or(0) / 1000
    )
}

/// The readiness path's answer: 200 with `{source, revision, age_seconds}` when a verified config
/// is in force and may be served, 503 with the reason otherwise.
pub fn readiness(age: Option<&ConfigAge>, policy: StalePolicy) -> (u16, String) {
    let Some(age) = age else {
        return (
            503,
            r#"{"ready":false,"message":"no configuration loaded yet"}"#.to_owned(),
        );
    };
    let refused = refuse_stale(age, policy);
    let age_seconds = age
        .age_ms
        .map_or_else(|| "null".to_owned(), |ms| (ms / 1000).to_string());
    // By hand, as in `stale_body`: every value is a number, a boolean or a fixed name.
    let body = format!(
        r#"{{"ready":{},"source":"{}","revision":{},"age_seconds":{age_seconds},"stale":{}}}"#,
        !refused,
        age.source.as_str(),
        age.revision,
        age.stale
    );
    (if refused { 503 } else { 200 }, body)
}

/// Unix ms of an RFC 3339 UTC-or-offset time (`2026-11-26T10:00:00.000Z`,
/// `2026-11-26T10:00:00+01:00`); `None` for anything else. Only what exporters write needs to
/// parse; the result is only used for ages.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let fraction = &text.trim()[start..i.min(start + 3)];
        millis = format!("{fraction:0<3}").parse().ok()?;
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1_000 + millis).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_ms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T10:00:00.000Z"),
            Some(1_795_687_200_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T10:00:00.5Z"),
            Some(1_795_687_200_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T11:00:00.123456+01:00"),
            Some(1_795_687_200_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T10:00:00",
            "2026-13-26T10:00:00Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00Zjunk",
            "2026-11-26T1a:00:00Z",
            "1960-01-01T00:00:00Z",
            "2026-11-26T10:00:00+0100",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn fallback_configs_age_from_their_export_and_go_stale_past_the_budget() {
        let fresh = assess(Source::Fallback, 7, Some(1_000), 61_000, Some(60_000));
        assert_eq!((fresh.age_ms, fresh.stale), (Some(60_000), false));
        let stale = assess(Source::Fallback, 7, Some(1_000), 61_001, Some(60_000));
        assert!(stale.stale);
        assert!(!refuse_stale(&stale, StalePolicy::Serve));
        assert!(refuse_stale(&stale, StalePolicy::FailClosed));
        // No budget, unknown age, a live control plane config, a clock behind: never stale.
        assert!(!assess(Source::Fallback, 7, Some(0), u64::MAX, None).stale);
        assert!(!assess(Source::Fallback, 7, None, 10, Some(1)).stale);
        let cp = assess(Source::ControlPlane, 0, None, 10, Some(1));
        assert_eq!((cp.age_ms, cp.stale), (Some(0), false));
        assert_eq!(
            assess(Source::Fallback, 7, Some(5_000), 1_000, Some(1)).age_ms,
            Some(0)
        );
    }

    #[test]
    fn readiness_is_200_with_a_config_that_may_be_served_and_503_otherwise() {
        let (status, body) = readiness(None, StalePolicy::Serve);
        assert_eq!(status, 503);
        assert!(body.contains("no configuration loaded yet"));
        let fresh = assess(Source::Fallback, 7, Some(1_000), 3_500, Some(60_000));
        let (status, body) = readiness(Some(&fresh), StalePolicy::FailClosed);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["source"], "fallback");
        assert_eq!(v["revision"], 7);
        assert_eq!(v["age_seconds"], 2);
        let stale = assess(Source::Fallback, 7, Some(0), 120_000, Some(60_000));
        assert_eq!(readiness(Some(&stale), StalePolicy::Serve).0, 200);
        assert_eq!(readiness(Some(&stale), StalePolicy::FailClosed).0, 503);
        let v: serde_json::Value =
            serde_json::from_str(&readiness(Some(&stale), StalePolicy::FailClosed).1).unwrap();
        assert_eq!(
            (v["ready"].as_bool(), v["stale"].as_bool()),
            (Some(false), Some(true))
        );
        let unknown = assess(Source::Fallback, 7, None, 10, Some(1));
        let v: serde_json::Value =
            serde_json::from_str(&readiness(Some(&unknown), StalePolicy::Serve).1).unwrap();
        assert!(v["age_seconds"].is_null());
        let body = stale_body(&stale, Some(60_000));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("is 120 s old, past its staleness budget of 60 s"),
            "{body}"
        );
    }

    #[test]
    fn policies_parse() {
        assert_eq!(StalePolicy::parse("serve"), Some(StalePolicy::Serve));
        assert_eq!(
            StalePolicy::parse("fail_closed"),
            Some(StalePolicy::FailClosed)
        );
        assert_eq!(StalePolicy::parse("FAIL"), None);
    }
}
