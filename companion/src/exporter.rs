//! The export role: every new valid document from the control plane ends up in storage.

use crate::signing::SigningKey;
use crate::source::{ControlPlane, Polled};
use crate::storage::{ConfigStore, Precondition, StoreError};
use bytes::Bytes;
use fallback_core::backoff::Backoff;
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::document::{ConfigDocument, Problem, ValidationErrors};
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
    /// Non-fatal findings: entity kinds Fallback ignores, and enabled plugins the filter does
    /// not implement (it refuses the requests they apply to with 500 unless told to ignore
    /// them).
    pub warnings: Vec<Problem>,
}

/// Validates `value` and renders the canonical bytes to store. Invalid documents never get
/// this far: the caller keeps whatever it had.
pub fn prepare(value: &Value) -> Result<PreparedDocument, ValidationErrors> {
    let loaded = ConfigDocument::from_json(value)?;
    let body = canonical_json(value);
    let mut warnings = loaded.warnings;
    warnings.extend(fallback_core::plugins::unsupported_warnings(
        &loaded.document,
    ));
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
/// to sign them ([`WritePlan::Resign`]). With `signing`, the metadata written is signed once
/// its revision is settled (a re-signed export keeps the higher stored revision).
pub async fn write_document(
    store: &dyn ConfigStore,
    key: &str,
    body: &Bytes,
    metadata: &ExportMetadata,
    signing: Option<ExportSigning<'_>>,
) -> Result<WriteOutcome, StoreError> {
    let public_key = signing.map(|s| s.key.public_key());
    let signed_by = signing
        .zip(public_key.as_ref())
        .map(|(s, public_key)| SignedBy {
            public_key,
            version: s.version,
        });
    for _ in 0..MAX_CAS_ROUNDS {
        let stored = store.head(key).await?;
        let (precondition, resigned) = match plan_write(stored.as_ref(), metadata, signed_by) {
            WritePlan::AlreadyStored => return Ok(WriteOutcome::AlreadyStored),
            WritePlan::Superseded { stored_revision } => {
                return Ok(WriteOutcome::Superseded { stored_revision })
            }
            WritePlan::Create => (Precondition::Absent, None),
            WritePlan::Replace { if_match } => (Precondition::Matches(if_match), None),
            WritePlan::Resign { if_match, revision } => {
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
    /// How often the control plane is polled.
    pub poll_interval: Duration,
    /// At most one upload per this interval (Kong's `cluster_fallback_export_delay`).
    pub export_delay: Duration,
    /// First retry delay after a failed upload.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Signs every export (the `signature` and `key-id` metadata) when set.
    pub signing_key: Option<SigningKey>,
    /// The `<version>` exported (part of the signed manifest).
    pub version: String,
    /// Mirror stores, written after the primary with the same conditional-write rules.
    pub mirrors: Vec<ExportMirror>,
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
}

/// Runs the export loop until `shutdown` turns true: poll, validate, pace, write, retry.
pub async fn run(
    settings: ExportSettings,
    mut source: ControlPlane,
    store: Arc<dyn ConfigStore>,
    stats: Arc<ExportStats>,
    exported: watch::Sender<Option<ExportedRevision>>,
    mut shutdown: watch::Receiver<bool>,
) {
    info!(
        control_plane = source.shown_url(),
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
    };
    let mut poll_failures_in_a_row = 0u32;
    let mut next_poll = tokio::time::Instant::now();

    loop {
        let export_sleep = state
            .pacer
            .due_at()
            .map(|at| Duration::from_millis(at.saturating_sub(unix_ms())));
        tokio::select! {
            _ = tokio::time::sleep_until(next_poll) => {
                next_poll = tokio::time::Instant::now() + state.settings.poll_interval;
                match source.poll().await {
                    Ok(Polled::NotModified) => {
                        state.stats.not_modified.fetch_add(1, Ordering::Relaxed);
                        poll_failures_in_a_row = 0;
                    }
                    Ok(Polled::Document(value)) => {
                        state.stats.documents_received.fetch_add(1, Ordering::Relaxed);
                        poll_failures_in_a_row = 0;
                        state.offer(&value);
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
            _ = shutdown.changed() => {
                if let Some((sha256, candidate)) = state.pacer.pending() {
                    // The export delay only spaces uploads out; it must not lose the newest
                    // document when the exporter is stopped.
                    info!("shutting down: one last attempt to export the waiting document");
                    let candidate = candidate.clone();
                    state.attempt(sha256, candidate).await;
                }
                info!("export role stopped");
                return;
            }
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
            match write_document(mirror.store.as_ref(), &mirror.key, body, metadata, signing).await
            {
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

    fn offer(&mut self, value: &Value) {
        let prepared = match prepare(value) {
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
        let candidate = Candidate {
            revision: self.revisions.next(unix_ms()),
            body: prepared.body,
        };
        match self.pacer.offer(prepared.sha256, candidate) {
            Offer::Unchanged => {
                self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                debug!(sha256 = %prepared.sha256, "document unchanged since the last export");
            }
            Offer::AlreadyPending => {}
            Offer::Queued { replaced } => {
                let due_in_ms = self.pacer.due_at().map(|d| d.saturating_sub(unix_ms()));
                info!(sha256 = %prepared.sha256, replaced_waiting = replaced, due_in_ms, "new valid document queued for export");
            }
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
        let written = write_document(
            self.store.as_ref(),
            key,
            &candidate.body,
            &metadata,
            signing,
        )
        .await;
        // Mirrors get what the primary holds now (a re-signed export keeps its higher
        // revision); a mirror that fails fails the attempt, retried like any failed upload.
        let written = match written {
            Ok(outcome) => {
                let revision = match &outcome {
                    WriteOutcome::Resigned { revision, .. } => *revision,
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
        match written {
            Ok(WriteOutcome::Stored { .. }) => {
                self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                info!(object = %format!("{}/{key}", self.store.describe()), revision = candidate.revision, %sha256, bytes = candidate.body.len(), "exported");
                self.exported.send_replace(stored);
            }
            Ok(WriteOutcome::Resigned { revision, .. }) => {
                self.stats.uploads.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                info!(object = %format!("{}/{key}", self.store.describe()), revision, %sha256, "storage held this document without this exporter's signature; signed it");
                self.exported
                    .send_replace(Some(ExportedRevision { sha256, revision }));
            }
            Ok(WriteOutcome::AlreadyStored) => {
                self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.stored(sha256, unix_ms());
                info!(%sha256, "storage already holds this document; nothing written");
                self.exported.send_replace(stored);
            }
            Ok(WriteOutcome::Superseded { stored_revision }) => {
                self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.pacer.superseded(sha256, unix_ms());
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
        match write_document(store, key, &prepared.body, metadata, signing).await {
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
}
