//! The export role: every new valid document from the control plane ends up in storage.

use crate::admin::telemetry::{ExportEvent, Latency, Recent};
use crate::signing::SigningKey;
use crate::source::{self, ConfigSource, Polled};
use crate::storage::{ConfigStore, Precondition, StoreError};
use bytes::Bytes;
use fallback_core::backoff::Backoff;
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::document::{Problem, ValidationErrors};
use fallback_core::export::{
    plan_write, ExportMetadata, ExportPacer, Offer, RevisionClock, SignedBy, WritePlan,
};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// A document that validated, in the bytes that will be stored.
#[derive(Debug, Clone)]
pub struct PreparedDocument {
    /// Canonical JSON bytes.
    pub body: Bytes,
    /// Their sha256.
    pub sha256: Sha256Digest,
    /// Non-fatal findings: entity kinds Fallback ignores, migrated paths, deprecations, and
    /// enabled plugins the filter does not implement (it skips observe-only ones and refuses
    /// the requests the others apply to with 500 unless told to ignore them).
    pub warnings: Vec<Problem>,
}

/// Validates `value` and renders the canonical bytes to store. Invalid documents never get
/// this far: the caller keeps whatever it had.
///
/// A document whose canonical JSON is larger than
/// [`MAX_DOCUMENT_BYTES`](fallback_core::limits::MAX_DOCUMENT_BYTES) is refused: no filter
/// would import it.
pub fn prepare(value: &Value) -> Result<PreparedDocument, ValidationErrors> {
    let warnings = fallback_core::inspect::check(value)?.warnings;
    let body = canonical_json(value);
    if let Some(problem) = fallback_core::document::size_problem(body.len()) {
        return Err(ValidationErrors {
            problems: vec![problem],
        });
    }
    Ok(PreparedDocument {
        sha256: Sha256Digest::of(&body),
        body: Bytes::from(body),
        warnings,
    })
}

/// What a write achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The object was written; its new tag.
    Stored {
        /// The store's tag for the new object.
        etag: String,
    },
    /// The store already held these bytes, unsigned or signed by another key; they were
    /// written again with this exporter's signature.
    Resigned {
        /// The store's tag for the rewritten object.
        etag: String,
        /// The revision written (never lower than the one it replaced).
        revision: u64,
    },
    /// The store already held these bytes, exported longer ago than the refresh interval; they
    /// were written again with a new export time (and signature), at the stored revision.
    Refreshed {
        /// The store's tag for the rewritten object.
        etag: String,
        /// The stored revision, kept.
        revision: u64,
    },
    /// The store already held these bytes (with this exporter's signature, if it signs).
    AlreadyStored,
    /// The store holds a newer revision; nothing was written.
    Superseded {
        /// The revision found in the store.
        stored_revision: u64,
    },
}

/// How many times a write re-reads after losing a race before giving up for this round.
const MAX_CAS_ROUNDS: usize = 8;

/// The key an export is signed with, and the version it is the export of (both are part of
/// the signed manifest).
#[derive(Debug, Clone, Copy)]
pub struct ExportSigning<'a> {
    /// The exporter's key.
    pub key: &'a SigningKey,
    /// The `<version>` of `<prefix>/<version>/config.json`.
    pub version: &'a str,
}

/// Writes `body` under `key` unless that would replace a newer revision: read, plan, write
/// with a precondition, and on a lost race read again. The same bytes are written again only
/// to sign them ([`WritePlan::Resign`]) or, with `refresh_after`, to renew an export time older
/// than that ([`WritePlan::Refresh`]). With `signing`, the metadata written is signed once its
/// revision is settled (a re-signed export keeps the higher stored revision).
pub async fn write_document(
    store: &dyn ConfigStore,
    key: &str,
    body: &Bytes,
    metadata: &ExportMetadata,
    signing: Option<ExportSigning<'_>>,
    refresh_after: Option<Duration>,
) -> Result<WriteOutcome, StoreError> {
    let refresh_after_ms = refresh_after.map(|d| d.as_millis() as u64);
    let public_key = signing.map(|s| s.key.public_key());
    let signed_by = signing
        .zip(public_key.as_ref())
        .map(|(s, public_key)| SignedBy {
            public_key,
            version: s.version,
        });
    for _ in 0..MAX_CAS_ROUNDS {
        let stored = store.head(key).await?;
        let plan = plan_write(stored.as_ref(), metadata, signed_by, refresh_after_ms);
        let refreshed = matches!(plan, WritePlan::Refresh { .. });
        let (precondition, resigned) = match plan {
            WritePlan::AlreadyStored => return Ok(WriteOutcome::AlreadyStored),
            WritePlan::Superseded { stored_revision } => {
                return Ok(WriteOutcome::Superseded { stored_revision })
            }
            WritePlan::Create => (Precondition::Absent, None),
            WritePlan::Replace { if_match } => (Precondition::Matches(if_match), None),
            WritePlan::Resign { if_match, revision }
            | WritePlan::Refresh { if_match, revision } => {
                (Precondition::Matches(if_match), Some(revision))
            }
        };
        let mut written = ExportMetadata {
            revision: resigned.unwrap_or(metadata.revision),
            ..metadata.clone()
        };
        if let Some(signing) = signing {
            signing
                .key
                .sign_export(&mut written, signing.version)
                .map_err(|e| StoreError::Rejected {
                    key: key.to_owned(),
                    detail: format!("{e:#}"),
                })?;
        }
        match store.put(key, body.clone(), &written, precondition).await {
            Ok(etag) => {
                return Ok(match resigned {
                    Some(revision) if refreshed => WriteOutcome::Refreshed { etag, revision },
                    Some(revision) => WriteOutcome::Resigned { etag, revision },
                    None => WriteOutcome::Stored { etag },
                })
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                debug!(key, "another exporter wrote first; reading again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Transient {
        key: key.to_owned(),
        detail: format!("lost the write race {MAX_CAS_ROUNDS} times in a row; will retry"),
    })
}

/// Counters an operator (and the tests) can read while the exporter runs.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Polls of the control plane that returned a document.
    pub documents_received: AtomicU64,
    /// Polls answered `304 Not Modified`.
    pub not_modified: AtomicU64,
    /// Polls that failed (unreachable, bad status, unreadable body).
    pub poll_failures: AtomicU64,
    /// Documents that failed validation and were not exported.
    pub invalid_documents: AtomicU64,
    /// Objects written.
    pub uploads: AtomicU64,
    /// Valid documents not uploaded because the store already held their bytes.
    pub unchanged: AtomicU64,
    /// Writes skipped because the store held a newer revision.
    pub superseded: AtomicU64,
    /// Failed write attempts (each is retried).
    pub upload_failures: AtomicU64,
    /// Time of each control-plane poll, failed ones included.
    pub poll_latency: Latency,
    /// Time of each export attempt.
    pub export_latency: Latency,
    /// Unix seconds of the last attempt that left storage holding this exporter's document.
    pub last_export_unix: AtomicU64,
    /// The revision storage was last seen holding (0: none yet).
    pub stored_revision: AtomicU64,
    /// The last export attempts, for the status page.
    pub recent: Recent<ExportEvent>,
}

/// The last successful export, published for status readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedRevision {
    /// sha256 of the stored bytes.
    pub sha256: Sha256Digest,
    /// Its revision.
    pub revision: u64,
}

/// Settings of the export loop.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The object key, `<prefix>/<version>/config.json`.
    pub key: String,
    /// This exporter's name in the object's metadata.
    pub node_id: String,
    /// At most one upload per this interval (Kong's `cluster_fallback_export_delay`).
    pub export_delay: Duration,
    /// First retry delay after a failed upload.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Signs every export (the `signature` and `key-id` metadata) when set.
    pub signing_key: Option<SigningKey>,
    /// Where every valid document is published at once (before the export delay), for
    /// `GET /v1/config`.
    pub live: Option<crate::live::LiveConfigSender>,
    /// The `<version>` exported (part of the signed manifest).
    pub version: String,
    /// Mirror stores, written after the primary with the same conditional-write rules.
    pub mirrors: Vec<ExportMirror>,
    /// While the control plane keeps serving the stored document, write it again with a new
    /// export time once its export is this old (`None`: never), so that filters' staleness
    /// budget (`max_fallback_age_ms`) counts from when the config was last known current.
    pub refresh: Option<Duration>,
}

/// A mirror store and the key the export goes to there.
#[derive(Debug, Clone)]
pub struct ExportMirror {
    /// The object key in this store.
    pub key: String,
    /// The store.
    pub store: Arc<dyn ConfigStore>,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A document waiting for upload, with the revision it got when first seen.
#[derive(Debug, Clone)]
struct Candidate {
    body: Bytes,
    revision: u64,
}

/// The export loop's state between events.
struct ExportLoop {
    settings: ExportSettings,
    store: Arc<dyn ConfigStore>,
    pacer: ExportPacer<Candidate>,
    revisions: RevisionClock,
    backoff: Backoff,
    stats: Arc<ExportStats>,
    exported: watch::Sender<Option<ExportedRevision>>,
    /// The document storage holds, as last written or confirmed by this exporter: what a
    /// refresh writes again.
    stored: Option<(Sha256Digest, Bytes)>,
}

/// Runs the export loop until `shutdown` turns true: poll, validate, pace, write, retry.
pub async fn run(
    settings: ExportSettings,
    source: Box<dyn ConfigSource>,
    store: Arc<dyn ConfigStore>,
    stats: Arc<ExportStats>,
    exported: watch::Sender<Option<ExportedRevision>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut source = source::spawn(source);
    info!(
        control_plane = source.describe(),
        storage = %store.describe(),
        key = %settings.key,
        "export role started"
    );
    let mut state = ExportLoop {
        pacer: ExportPacer::new(settings.export_delay.as_millis() as u64),
        revisions: RevisionClock::default(),
        backoff: Backoff::new(
            settings.retry_initial.as_millis() as u64,
            settings.retry_max.as_millis() as u64,
        ),
        settings,
        store,
        stats,
        exported,
        stored: None,
    };
    let mut poll_failures_in_a_row = 0u32;
    let mut source_ended = false;

    loop {
        let export_sleep = state
            .pacer
            .due_at()
            .map(|at| Duration::from_millis(at.saturating_sub(unix_ms())));
        tokio::select! {
            event = source.recv(), if !source_ended => {
                let Some(event) = event else {
                    // Only a panic in the source ends it; what is waiting still gets exported.
                    error!("the config source stopped; no new config will be exported");
                    source_ended = true;
                    continue;
                };
                if let Some(took) = event.request_duration {
                    state.stats.poll_latency.observe(took);
                }
                match event.polled {
                    Ok(Polled::NotModified) => {
                        state.stats.not_modified.fetch_add(1, Ordering::Relaxed);
                        poll_failures_in_a_row = 0;
                        state.confirmed();
                    }
                    Ok(Polled::Document(value)) => {
                        state.stats.documents_received.fetch_add(1, Ordering::Relaxed);
                        poll_failures_in_a_row = 0;
                        let prepared = tokio::select! {
                            prepared = tokio::task::spawn_blocking(move || prepare(&value)) => prepared,
                            _ = shutdown.changed() => return state.shut_down().await,
                        };
                        match prepared {
                            Ok(prepared) => state.offer(prepared),
                            Err(e) => error!("validating the control plane's document stopped: {e}"),
                        }
                    }
                    Err(e) => {
                        state.stats.poll_failures.fetch_add(1, Ordering::Relaxed);
                        poll_failures_in_a_row += 1;
                        // The first failure and then every 10th: an outage must not flood the log.
                        if poll_failures_in_a_row == 1 || poll_failures_in_a_row.is_multiple_of(10) {
                            warn!(failures_in_a_row = poll_failures_in_a_row, "{e}; the last exported config stays in storage");
                        }
                    }
                }
            }
            _ = sleep_opt(export_sleep) => {
                if let Some((sha256, candidate)) = state.pacer.due(unix_ms()) {
                    let candidate = candidate.clone();
                    state.attempt(sha256, candidate).await;
                }
            }
            _ = shutdown.changed() => return state.shut_down().await,
        }
    }
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

impl ExportLoop {
    async fn shut_down(&mut self) {
        if let Some((sha256, candidate)) = self.pacer.pending() {
            // The export delay only spaces uploads out; it must not lose the newest
            // document when the exporter is stopped.
            info!("shutting down: one last attempt to export the waiting document");
            let candidate = candidate.clone();
            self.attempt(sha256, candidate).await;
        }
        info!("export role stopped");
    }

    /// Writes the export to every mirror; the first failure is returned (the others are
    /// still tried). Superseded or already stored mirrors are fine.
    async fn write_mirrors(
        &self,
        body: &Bytes,
        metadata: &ExportMetadata,
        signing: Option<ExportSigning<'_>>,
    ) -> Result<(), StoreError> {
        let mut first_error = None;
        for mirror in &self.settings.mirrors {
            let written = write_document(
                mirror.store.as_ref(),
                &mirror.key,
                body,
                metadata,
                signing,
                self.settings.refresh,
            )
            .await;
            match written {
                Ok(outcome) => {
                    debug!(mirror = %mirror.store.describe(), ?outcome, "mirror written")
                }
                Err(e) => {
                    warn!(mirror = %mirror.store.describe(), "mirror export failed: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn offer(&mut self, prepared: Result<PreparedDocument, ValidationErrors>) {
        let prepared = match prepared {
            Ok(p) => p,
            Err(errors) => {
                self.stats.invalid_documents.fetch_add(1, Ordering::Relaxed);
                error!("control plane sent an invalid document; it is NOT exported and storage keeps the last good one. {errors}");
                return;
            }
        };
        for w in &prepared.warnings {
            warn!("config {w}");
        }
        if let Some(live) = &self.settings.live {
            live.send_replace(Some(crate::live::LiveConfig {
                body: prepared.body.clone(),
                sha256: prepared.sha256,
            }));
        }
        let candidate = Candidate {
            revision: self.revisions.next(unix_ms()),
            body: prepared.body,
        };
        match self.pacer.offer(prepared.sha256, candidate) {
            Offer::Unchanged => {
                self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                debug!(sha256 = %prepared.sha256, "document unchanged since the last export");
                self.confirmed();
            }
            Offer::AlreadyPending => {}
            Offer::Queued { replaced } => {
                let due_in_ms = self.pacer.due_at().map(|d| d.saturating_sub(unix_ms()));
                info!(sha256 = %prepared.sha256, replaced_waiting = replaced, due_in_ms, "new valid document queued for export");
            }
        }
    }

    /// The control plane still serves the stored document: queue it again when its export is
    /// older than the refresh interval.
    fn confirmed(&mut self) {
        let (Some(every), Some((sha256, body))) = (self.settings.refresh, &self.stored) else {
            return;
        };
        let revisions = &mut self.revisions;
        let candidate = || Candidate {
            revision: revisions.next(unix_ms()),
            body: body.clone(),
        };
        let every_ms = every.as_millis() as u64;
        if self.pacer.refresh(*sha256, candidate, unix_ms(), every_ms) {
            debug!(sha256 = %sha256, "the control plane still serves the stored document; refreshing its export time");
        }
    }

    async fn attempt(&mut self, sha256: Sha256Digest, candidate: Candidate) {
        let metadata = ExportMetadata {
            sha256,
            revision: candidate.revision,
            node_id: self.settings.node_id.clone(),
            exported_at: rfc3339_now(),
            signature: None,
            key_id: None,
        };
        let signing = self.settings.signing_key.as_ref().map(|key| ExportSigning {
            key,
            version: &self.settings.version,
        });
        let key = &self.settings.key;
        let stored = Some(ExportedRevision {
            sha256,
            revision: candidate.revision,
        });
        let started = std::time::Instant::now();
        let written = write_document(
            self.store.as_ref(),
            key,
            &candidate.body,
            &metadata,
            signing,
            self.settings.refresh,
        )
        .await;
        // Mirrors get what the primary holds now (a re-signed export keeps its higher
        // revision); a mirror that fails fails the attempt, retried like any failed upload.
        let written = match written {
            Ok(outcome) => {
                let revision = match &outcome {
                    WriteOutcome::Resigned { revision, .. }
                    | WriteOutcome::Refreshed { revision, .. } => *revision,
                    _ => metadata.revision,
                };
                let mirrored = ExportMetadata {
                    revision,
                    ..metadata.clone()
                };
                self.write_mirrors(&candidate.body, &mirrored, signing)
                    .await
                    .map(|()| outcome)
            }
            Err(e) => Err(e),
        };
        self.record(candidate.revision, started.elapsed(), &written);
        match written {
            Ok(WriteOutcome::Stored { .. }) => {
                self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                self.stored = Some((sha256, candidate.body.clone()));
                info!(object = %format!("{}/{key}", self.store.describe()), revision = candidate.revision, %sha256, bytes = candidate.body.len(), "exported");
                self.exported.send_replace(stored);
            }
            Ok(WriteOutcome::Resigned { revision, .. }) => {
                self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                self.stored = Some((sha256, candidate.body.clone()));
                info!(object = %format!("{}/{key}", self.store.describe()), revision, %sha256, "storage held this document without this exporter's signature; signed it");
                self.exported
                    .send_replace(Some(ExportedRevision { sha256, revision }));
            }
            Ok(WriteOutcome::Refreshed { revision, .. }) => {
                self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                self.stored = Some((sha256, candidate.body.clone()));
                info!(object = %format!("{}/{key}", self.store.describe()), revision, %sha256, exported_at = %metadata.exported_at, "the control plane still serves the stored document; its export time is renewed");
                self.exported
                    .send_replace(Some(ExportedRevision { sha256, revision }));
            }
            Ok(WriteOutcome::AlreadyStored) => {
                self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                self.stored = Some((sha256, candidate.body.clone()));
                info!(%sha256, "storage already holds this document; nothing written");
                self.exported.send_replace(stored);
            }
            Ok(WriteOutcome::Superseded { stored_revision }) => {
                self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.superseded(sha256, unix_ms());
                self.stored = None;
                warn!(%sha256, revision = candidate.revision, stored_revision, "storage holds a newer revision from another exporter; this older document is not written");
            }
            Err(e) => {
                self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                let delay = self.backoff.next_delay_ms(rand::random());
                self.pacer.failed(unix_ms() + delay);
                if e.is_transient() {
                    warn!(retry_in_ms = delay, "export failed: {e}");
                } else {
                    error!(retry_in_ms = delay, "export failed: {e}");
                }
            }
        }
    }
}

impl ExportLoop {
    /// Feeds the status page and the metrics with one attempt's result.
    fn record(&self, revision: u64, duration: Duration, result: &Result<WriteOutcome, StoreError>) {
        let stats = &self.stats;
        stats.export_latency.observe(duration);
        let (outcome, detail) = match result {
            Ok(WriteOutcome::Stored { .. }) => ("stored", None),
            Ok(WriteOutcome::Resigned { revision, .. }) => {
                stats
                    .stored_revision
                    .fetch_max(*revision, Ordering::Relaxed);
                ("resigned", None)
            }
            Ok(WriteOutcome::Refreshed { revision, .. }) => {
                stats
                    .stored_revision
                    .fetch_max(*revision, Ordering::Relaxed);
                ("refreshed", None)
            }
            Ok(WriteOutcome::AlreadyStored) => ("unchanged", None),
            Ok(WriteOutcome::Superseded { stored_revision }) => {
                stats
                    .stored_revision
                    .fetch_max(*stored_revision, Ordering::Relaxed);
                (
                    "superseded",
                    Some(format!("storage holds revision {stored_revision}")),
                )
            }
            Err(e) => ("failed", Some(e.to_string())),
        };
        if outcome == "stored" {
            stats.stored_revision.fetch_max(revision, Ordering::Relaxed);
        }
        if matches!(outcome, "stored" | "resigned" | "refreshed" | "unchanged") {
            stats
                .last_export_unix
                .store(unix_ms() / 1000, Ordering::Relaxed);
        }
        stats.recent.push(ExportEvent {
            at: SystemTime::now(),
            revision,
            outcome,
            duration,
            detail,
        });
    }
}

/// Exports one document once, retrying transient failures up to `attempts` times. The one-shot
/// path for CI pipelines (`fallback-companion export --config-file`).
pub async fn export_once(
    store: &dyn ConfigStore,
    key: &str,
    prepared: &PreparedDocument,
    metadata: &ExportMetadata,
    signing: Option<ExportSigning<'_>>,
    attempts: u32,
    mut backoff: Backoff,
) -> Result<WriteOutcome, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match write_document(store, key, &prepared.body, metadata, signing, None).await {
            Err(e) if e.is_transient() && tries < attempts => {
                let delay = backoff.next_delay_ms(rand::random());
                warn!(attempt = tries, retry_in_ms = delay, "{e}");
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod prepare_tests {
    use super::prepare;
    use serde_json::json;

    #[test]
    fn documents_larger_than_the_filters_limit_are_refused() {
        use fallback_core::limits::MAX_DOCUMENT_BYTES;
        let document = |filler: usize| {
            json!({
                "_format_version": "3.0",
                "services": [{"name": "s", "host": "h", "tags": ["x".repeat(filler)]}]
            })
        };
        let fits = prepare(&document(MAX_DOCUMENT_BYTES - 200)).unwrap();
        assert!(fits.body.len() <= MAX_DOCUMENT_BYTES);
        let err = prepare(&document(MAX_DOCUMENT_BYTES)).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err.problems[0].message.contains(&format!(
                "more than the {MAX_DOCUMENT_BYTES} bytes (MAX_DOCUMENT_BYTES)"
            )),
            "{err}"
        );
    }

    #[test]
    fn validation_warns_about_plugins_the_filter_refuses() {
        let prepared = prepare(&json!({
            "_format_version": "3.0",
            "services": [{"name": "s", "host": "h", "routes": [{"paths": ["/"],
                "plugins": [{"name": "jwt"}]}]}],
            "plugins": [{"name": "key-auth"}, {"name": "zipkin", "enabled": false}]
        }))
        .unwrap();
        let warnings: Vec<String> = prepared.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .starts_with("services[0].routes[0].plugins[0]: plugin \"jwt\" is not supported"),
            "{warnings:?}"
        );
    }

    /// `export` accepts every `_format_version` Kong 3.x accepts, and says what Kong's load
    /// does to an older file; the stored bytes are the file's own.
    #[test]
    fn every_format_version_kong_3_accepts_is_exported() {
        for version in ["1.1", "2.1", "3.0"] {
            let value = json!({
                "_format_version": version,
                "services": [{"name": "s", "host": "h", "routes": [{"paths": ["/users/\\d+"]}]}],
                "plugins": [{"name": "prometheus"}]
            });
            let prepared = prepare(&value).unwrap_or_else(|e| panic!("{version}: {e}"));
            let warnings: Vec<String> = prepared.warnings.iter().map(|w| w.to_string()).collect();
            let migrated = warnings
                .iter()
                .any(|w| w.contains("read as \"~/users/\\\\d+\""));
            assert_eq!(migrated, version != "3.0", "{version}: {warnings:?}");
            assert!(
                warnings.iter().any(|w| w.contains("only observes traffic")),
                "{warnings:?}"
            );
            assert_eq!(
                prepared.body.as_ref(),
                fallback_core::digest::canonical_json(&value).as_slice()
            );
        }
    }
}

#[cfg(test)]
mod shutdown_tests {
    use super::*;
    use crate::storage::file::FileStore;

    /// A control plane that accepts connections and never answers: the poll in flight must not
    /// hold up a shutdown until its own deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_does_not_wait_for_a_poll_in_flight() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/config", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let settings = ExportSettings {
            key: "3.4.1.0/config.json".into(),
            node_id: "test".into(),
            export_delay: Duration::from_millis(50),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(100),
            signing_key: None,
            live: None,
            version: "3.4.1.0".into(),
            mirrors: Vec::new(),
            refresh: None,
        };
        let control_plane =
            crate::source::ControlPlane::new(&url, Duration::from_secs(120)).unwrap();
        let source = Box::new(crate::source::Polling::new(
            control_plane,
            Duration::from_millis(50),
        ));
        let (exported, _) = watch::channel(None);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            settings,
            source,
            Arc::new(FileStore::new(dir.path().to_owned())),
            Arc::new(ExportStats::default()),
            exported,
            stopped,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(true).unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(20), task).await;
        held.abort();
        assert!(
            finished.is_ok(),
            "the exporter waited for the poll's 120 s deadline"
        );
    }
}
