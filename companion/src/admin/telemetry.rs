//! The companion's Prometheus metrics, encoded by `prometheus-client` (OpenMetrics text), and
//! the recent events the status page lists.
//!
//! Live values sit where they are counted (the signer's [`SignerMetrics`], the exporter's
//! [`ExportStats`]); [`render`] assembles one registry from them for each scrape.

use crate::exporter::ExportStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many signer requests and exports the status page keeps.
const RECENT: usize = 50;

/// A latency histogram in seconds, 1 ms to about 33 s.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 16)))
    }
}

impl Latency {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// The newest `RECENT` events of one kind, oldest first.
#[derive(Debug)]
pub struct Recent<T>(Mutex<VecDeque<T>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self(Mutex::new(VecDeque::with_capacity(RECENT)))
    }
}

impl<T: Clone> Recent<T> {
    /// Adds an event, forgetting the oldest beyond the limit.
    pub fn push(&self, event: T) {
        if let Ok(mut events) = self.0.lock() {
            if events.len() == RECENT {
                events.pop_front();
            }
            events.push_back(event);
        }
    }

    /// The events, newest first.
    pub fn newest_first(&self) -> Vec<T> {
        self.0
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// One answered `GET /v1/fallback-config`, as the status page shows it.
#[derive(Debug, Clone)]
pub struct SignerEvent {
    /// When it was answered.
    pub at: SystemTime,
    /// The accepted token's name (never the token), `None` when no token was accepted.
    pub token: Option<String>,
    /// The client's address.
    pub remote: std::net::SocketAddr,
    /// The answer's status code.
    pub status: u16,
    /// The revision handed out, on success.
    pub revision: Option<u64>,
}

/// One export attempt of this process.
#[derive(Debug, Clone)]
pub struct ExportEvent {
    /// When it ended.
    pub at: SystemTime,
    /// The revision it tried to store.
    pub revision: u64,
    /// `stored`, `resigned`, `unchanged`, `superseded` or `failed`.
    pub outcome: &'static str,
    /// How long the attempt took.
    pub duration: Duration,
    /// What went wrong, for `failed`; the newer revision, for `superseded`.
    pub detail: Option<String>,
}

type CodeLabels = Vec<(&'static str, String)>;

/// The signer role's counters.
#[derive(Debug, Default)]
pub struct SignerMetrics {
    /// `/v1/fallback-config` answers by status code.
    pub signer_requests: Family<CodeLabels, Counter>,
    /// `/v1/objects/` answers by status code.
    pub object_requests: Family<CodeLabels, Counter>,
    /// Time to answer authorised signer requests (storage `HEAD` plus signing).
    pub signing: Latency,
    /// Bytes of objects served under `/v1/objects/`.
    pub object_bytes: Counter,
    /// Signer requests refused 401.
    pub auth_failures: Counter,
    /// Signer requests refused 429 (too many failed tokens from their address).
    pub rate_limited: Counter,
    /// The revision the last successful signer request handed out.
    pub served_revision: std::sync::atomic::AtomicU64,
    /// The last signer requests.
    pub recent: Recent<SignerEvent>,
}

impl SignerMetrics {
    /// Counts one signer answer.
    pub fn count_signer(&self, status: u16) {
        self.signer_requests
            .get_or_create(&vec![("code", status.to_string())])
            .inc();
    }

    /// Counts one object answer.
    pub fn count_object(&self, status: u16) {
        self.object_requests
            .get_or_create(&vec![("code", status.to_string())])
            .inc();
    }
}

/// What a scrape of `/metrics` reports.
pub struct Sources<'a> {
    /// The signer role's counters, when it runs.
    pub signer: Option<&'a SignerMetrics>,
    /// The export role's counters, when it runs.
    pub export: Option<&'a ExportStats>,
    /// The last storage probe (signer role).
    pub storage_ready: Option<bool>,
    /// Object downloads in progress and their limit (signer role, `file://`).
    pub object_downloads: Option<(usize, usize)>,
}

/// The metrics in the OpenMetrics text format. Names are those of `docs/signer.md`; help
/// texts have no final period (the encoder adds one).
pub fn render(sources: &Sources<'_>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "fallback_companion",
        "The companion's build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let mut stored_revision = 0;
    if let Some(m) = sources.signer {
        registry.register(
            "fallback_companion_signer_requests",
            "Requests to /v1/fallback-config, by status code",
            m.signer_requests.clone(),
        );
        registry.register(
            "fallback_companion_object_requests",
            "Requests to /v1/objects/ (file:// storage), by status code",
            m.object_requests.clone(),
        );
        registry.register(
            "fallback_companion_object_bytes_served",
            "Bytes of objects served under /v1/objects/ (file:// storage)",
            m.object_bytes.clone(),
        );
        registry.register(
            "fallback_companion_signing_duration_seconds",
            "Time to answer authorised signer requests (storage HEAD and signing)",
            m.signing.0.clone(),
        );
        registry.register(
            "fallback_companion_signer_auth_failures",
            "Signer requests refused 401: bearer token missing or not accepted",
            m.auth_failures.clone(),
        );
        registry.register(
            "fallback_companion_signer_rate_limited",
            "Signer requests refused 429: too many failed bearer tokens from their address",
            m.rate_limited.clone(),
        );
        stored_revision = m.served_revision.load(Ordering::Relaxed);
    }
    if let Some((in_progress, limit)) = sources.object_downloads {
        registry.register(
            "fallback_companion_object_downloads_in_progress",
            format!("Object downloads (/v1/objects/) being sent, at most {limit}"),
            ConstGauge::new(in_progress as i64),
        );
    }
    if let Some(ready) = sources.storage_ready {
        registry.register(
            "fallback_companion_storage_ready",
            "Whether the last storage probe succeeded",
            ConstGauge::new(i64::from(ready)),
        );
    }
    if let Some(stats) = sources.export {
        let counters = [
            (
                "documents_received",
                "Control-plane polls that returned a document",
                &stats.documents_received,
            ),
            (
                "not_modified",
                "Control-plane polls answered 304",
                &stats.not_modified,
            ),
            (
                "poll_failures",
                "Control-plane polls that failed",
                &stats.poll_failures,
            ),
            (
                "invalid_documents",
                "Documents that failed validation (not exported)",
                &stats.invalid_documents,
            ),
            ("uploads", "Objects written to storage", &stats.uploads),
            (
                "unchanged",
                "Valid documents storage already held",
                &stats.unchanged,
            ),
            (
                "superseded",
                "Writes skipped because storage held a newer revision",
                &stats.superseded,
            ),
            (
                "upload_failures",
                "Failed write attempts (each retried)",
                &stats.upload_failures,
            ),
        ];
        for (name, help, value) in counters {
            registry.register(
                format!("fallback_companion_export_{name}"),
                help,
                ConstCounter::new(value.load(Ordering::Relaxed)),
            );
        }
        let outcomes: Family<CodeLabels, Counter> = Family::default();
        for (outcome, value) in [
            ("stored", &stats.uploads),
            ("unchanged", &stats.unchanged),
            ("superseded", &stats.superseded),
            ("failed", &stats.upload_failures),
            ("invalid", &stats.invalid_documents),
        ] {
            outcomes
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(value.load(Ordering::Relaxed));
        }
        registry.register(
            "fallback_companion_exports",
            "Export attempts and refused documents, by outcome (stored, unchanged, superseded, failed, invalid)",
            outcomes,
        );
        registry.register(
            "fallback_companion_export_duration_seconds",
            "Time of each export attempt (read, plan, conditional write)",
            stats.export_latency.0.clone(),
        );
        registry.register(
            "fallback_companion_control_plane_poll_duration_seconds",
            "Time of each control-plane poll, failed ones included",
            stats.poll_latency.0.clone(),
        );
        registry.register(
            "fallback_companion_last_export_timestamp_seconds",
            "Unix time of the last export that left storage holding this exporter's document (0: none yet)",
            ConstGauge::new(stats.last_export_unix.load(Ordering::Relaxed) as i64),
        );
        stored_revision = stored_revision.max(stats.stored_revision.load(Ordering::Relaxed));
    }
    registry.register(
        "fallback_companion_stored_revision",
        "The revision storage was last seen holding, by an export or a signer request (0: none yet)",
        ConstGauge::new(stored_revision as i64),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_documented_names() {
        let signer = SignerMetrics::default();
        signer.count_signer(200);
        signer.count_signer(200);
        signer.count_object(403);
        signer.signing.observe(Duration::from_millis(3));
        signer.served_revision.store(7, Ordering::Relaxed);
        let export = ExportStats::default();
        export.uploads.fetch_add(1, Ordering::Relaxed);
        export.poll_latency.observe(Duration::from_millis(2));
        let text = render(&Sources {
            signer: Some(&signer),
            export: Some(&export),
            storage_ready: Some(true),
            object_downloads: Some((2, 32)),
        });
        for line in [
            "fallback_companion_info{version=\"",
            "fallback_companion_signer_requests_total{code=\"200\"} 2",
            "fallback_companion_object_requests_total{code=\"403\"} 1",
            "fallback_companion_signing_duration_seconds_count 1",
            "fallback_companion_storage_ready 1",
            "fallback_companion_export_uploads_total 1",
            "fallback_companion_exports_total{outcome=\"stored\"} 1",
            "fallback_companion_exports_total{outcome=\"failed\"} 0",
            "fallback_companion_control_plane_poll_duration_seconds_count 1",
            "fallback_companion_stored_revision 7",
            "fallback_companion_object_bytes_served_total 0",
            "fallback_companion_signer_auth_failures_total 0",
            "fallback_companion_object_downloads_in_progress 2",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(".."),
            "a help text ends in two periods:\n{text}"
        );
    }

    #[test]
    fn recent_events_are_bounded_and_newest_first() {
        let recent = Recent::default();
        for i in 0..RECENT + 5 {
            recent.push(i);
        }
        let events = recent.newest_first();
        assert_eq!(events.len(), RECENT);
        assert_eq!(events[0], RECENT + 4);
        assert_eq!(events[RECENT - 1], 5);
    }
}
