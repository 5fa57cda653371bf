//! What an export is and when one may be written.
//!
//! The companion owns the I/O; the decisions live here so they are tested natively: where the
//! object goes ([`object_key`]), what is stored beside it ([`ExportMetadata`]), whether a write may
//! replace what the store holds ([`plan_write`]), and when the next upload is due ([`ExportPacer`]).

use crate::digest::Sha256Digest;
use crate::signature::{verify_manifest, ExportManifest, PublicKey, Signature};
use std::fmt;

/// Name of the object inside `<prefix>/<version>/`, the same as Kong Enterprise uses.
pub const OBJECT_NAME: &str = "config.json";

/// Metadata names, stored as `x-amz-meta-<name>` in S3 and `x-goog-meta-<name>` in GCS.
pub mod meta {
    /// Hex sha256 of the object's bytes.
    pub const SHA256: &str = "sha256";
    /// The export's revision, a decimal `u64`.
    pub const REVISION: &str = "revision";
    /// Which exporter wrote the object.
    pub const NODE_ID: &str = "node-id";
    /// RFC 3339 time of the export.
    pub const EXPORTED_AT: &str = "exported-at";
    /// Optional Ed25519 signature (base64) over the export's manifest
    /// ([`crate::signature::ExportManifest`]).
    pub const SIGNATURE: &str = "signature";
    /// The signing key's id ([`crate::signature::PublicKey::key_id`]), beside `signature`.
    pub const KEY_ID: &str = "key-id";
}

/// Why a version string or prefix cannot name an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The version is empty.
    #[error("config version is empty: set FALLBACK_CONFIG_VERSION (e.g. 3.4.1.0)")]
    EmptyVersion,
    /// The version contains a character that would change the object's path.
    #[error("config version {0:?} must not contain '/', '\\', whitespace or be \".\"/\"..\": use a plain version string such as 3.4.1.0")]
    BadVersion(String),
    /// A prefix segment is `.` or `..`.
    #[error("storage prefix {0:?} must not contain \".\" or \"..\" segments")]
    BadPrefix(String),
    /// A prefix kept byte for byte holds a control character.
    #[error("storage prefix {0:?} must not contain control characters: GCS object names cannot hold them")]
    PrefixControl(String),
}

/// How a storage URL's prefix starts the names of the objects below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefixStyle {
    /// By segments, empty ones dropped: `/a//b/` puts objects under `a/b/` (S3 and `file://`,
    /// as Fallback always did).
    #[default]
    Segments,
    /// Byte for byte (GCS, where `a//b/x` and `/a/x` are object names of their own): the
    /// prefix as written, then one `/` unless it already ends with one. `a//b` puts objects
    /// under `a//b/`, `/kong` under `/kong/`, `kong/` under `kong/`.
    Verbatim,
}

/// `name` below `prefix`, the prefix read in `style`.
pub fn prefixed_key(style: PrefixStyle, prefix: &str, name: &str) -> Result<String, KeyError> {
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(KeyError::BadPrefix(prefix.to_owned()));
    }
    let mut key = String::with_capacity(prefix.len() + name.len() + 1);
    match style {
        PrefixStyle::Segments => {
            for segment in prefix.split('/').filter(|s| !s.is_empty()) {
                key.push_str(segment);
                key.push('/');
            }
        }
        PrefixStyle::Verbatim => {
            if prefix.chars().any(char::is_control) {
                return Err(KeyError::PrefixControl(prefix.to_owned()));
            }
            key.push_str(prefix);
            if !prefix.is_empty() && !prefix.ends_with('/') {
                key.push('/');
            }
        }
    }
    key.push_str(name);
    Ok(key)
}

/// `<prefix>/<version>/config.json`, with empty prefix segments dropped.
pub fn object_key(prefix: &str, version: &str) -> Result<String, KeyError> {
    object_key_in(PrefixStyle::Segments, prefix, version)
}

/// `<prefix>/<version>/config.json`, the prefix read in `style`.
pub fn object_key_in(style: PrefixStyle, prefix: &str, version: &str) -> Result<String, KeyError> {
    if version.is_empty() {
        return Err(KeyError::EmptyVersion);
    }
    if version == "."
        || version == ".."
        || version
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_whitespace() || c.is_control())
    {
        return Err(KeyError::BadVersion(version.to_owned()));
    }
    prefixed_key(style, prefix, &format!("{version}/{OBJECT_NAME}"))
}

/// What the exporter stores beside every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMetadata {
    /// sha256 of the object's bytes.
    pub sha256: Sha256Digest,
    /// Orders exports: a write never replaces a higher revision. See [`RevisionClock`].
    pub revision: u64,
    /// The exporter that wrote it.
    pub node_id: String,
    /// When it was written (RFC 3339).
    pub exported_at: String,
    /// Optional signature over the export's manifest ([`ExportMetadata::manifest`]).
    pub signature: Option<String>,
    /// The id of the key that made `signature`.
    pub key_id: Option<String>,
}

/// Metadata that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object metadata {name:?} is {problem}")]
pub struct MetadataError {
    /// The metadata name.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ExportMetadata {
    /// The metadata as `(name, value)` pairs, in a fixed order.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            (meta::SHA256, self.sha256.to_hex()),
            (meta::REVISION, self.revision.to_string()),
            (meta::NODE_ID, self.node_id.clone()),
            (meta::EXPORTED_AT, self.exported_at.clone()),
        ];
        if let Some(sig) = &self.signature {
            pairs.push((meta::SIGNATURE, sig.clone()));
        }
        if let Some(id) = &self.key_id {
            pairs.push((meta::KEY_ID, id.clone()));
        }
        pairs
    }

    /// What a signature by the key `key_id` over this export of `version` covers.
    pub fn manifest<'a>(&'a self, version: &'a str, key_id: &'a str) -> ExportManifest<'a> {
        ExportManifest {
            version,
            revision: self.revision,
            sha256: self.sha256,
            exported_at: &self.exported_at,
            key_id,
        }
    }

    /// Whether the stored `signature` is `key`'s over this export's manifest for `version`.
    pub fn is_signed_by(&self, version: &str, key: &PublicKey) -> bool {
        let (Some(text), Some(key_id)) = (&self.signature, &self.key_id) else {
            return false;
        };
        let Ok(signature) = Signature::parse(text) else {
            return false;
        };
        verify_manifest(
            std::slice::from_ref(key),
            &self.manifest(version, key_id),
            &signature,
        )
        .is_ok()
    }

    /// Reads metadata back; `lookup` returns the value stored under a name, if any.
    /// `Ok(None)` when the object carries none of ours (e.g. Kong itself exported it).
    pub fn from_lookup<'a>(
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Self>, MetadataError> {
        let Some(sha) = lookup(meta::SHA256) else {
            return Ok(None);
        };
        let sha256 = Sha256Digest::from_hex(sha.trim()).ok_or(MetadataError {
            name: meta::SHA256,
            problem: "not 64 hex digits",
        })?;
        let revision = match lookup(meta::REVISION) {
            Some(r) => r.trim().parse().map_err(|_| MetadataError {
                name: meta::REVISION,
                problem: "not a decimal number",
            })?,
            None => 0,
        };
        Ok(Some(Self {
            sha256,
            revision,
            node_id: lookup(meta::NODE_ID).unwrap_or_default().to_owned(),
            exported_at: lookup(meta::EXPORTED_AT).unwrap_or_default().to_owned(),
            signature: lookup(meta::SIGNATURE).map(str::to_owned),
            key_id: lookup(meta::KEY_ID).map(|id| id.trim().to_owned()),
        }))
    }
}

/// What the store holds under a key: its version tag and our metadata, when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The store's version tag (S3/HTTP ETag, GCS generation), used as a write precondition.
    pub etag: String,
    /// Our metadata; `None` for an object some other tool wrote.
    pub metadata: Option<ExportMetadata>,
}

/// How to write a candidate given what the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritePlan {
    /// The store already holds these exact bytes: nothing to write.
    AlreadyStored,
    /// The store holds a newer revision: writing would go back in time.
    Superseded {
        /// The revision in the store.
        stored_revision: u64,
    },
    /// Nothing is stored: create only if still nothing is (`If-None-Match: *`).
    Create,
    /// Replace exactly the object that was read (`If-Match: <etag>`).
    Replace {
        /// The tag of the object that was read.
        if_match: String,
    },
    /// The store holds these exact bytes, but not under the candidate's signature (unsigned,
    /// or signed by another key): write the same bytes again with the candidate's metadata,
    /// at `revision`, replacing exactly the object that was read (`If-Match: <etag>`).
    Resign {
        /// The tag of the object that was read.
        if_match: String,
        /// The revision to write: the candidate's, or the stored one when that is higher, so
        /// that re-signing never moves the stored revision back.
        revision: u64,
    },
    /// The store holds these exact bytes, signed as they should be, but exported longer ago
    /// than the refresh interval while the control plane still serves them: write the same
    /// bytes again with the candidate's export time (re-signed), at the stored `revision`,
    /// replacing exactly the object that was read. A filter's staleness budget
    /// (`max_fallback_age_ms`) counts from the export time, and the stored copy is current.
    Refresh {
        /// The tag of the object that was read.
        if_match: String,
        /// The stored revision: the same export, confirmed again.
        revision: u64,
    },
}

/// The key an exporter signs with and the version it exports: what [`plan_write`] needs to
/// tell whether the stored copy already carries this exporter's signature.
#[derive(Debug, Clone, Copy)]
pub struct SignedBy<'a> {
    /// The exporter's public key.
    pub public_key: &'a PublicKey,
    /// The `<version>` the object is stored under (it is part of the signed manifest).
    pub version: &'a str,
}

/// Decides whether `candidate` may be written over `stored`; `signer` is the key the candidate
/// will be signed with once its revision is settled (`None`: an unsigned export).
///
/// Paired with a conditional write this is a compare-and-swap: if another exporter writes
/// between our read and our write, the precondition fails and the caller reads and plans again,
/// so an older revision can never land on top of a newer one.
///
/// The same bytes are not written again, unless the exporter signs and the stored copy does
/// not carry a valid signature of its key over its manifest ([`WritePlan::Resign`]): turning
/// signing on, rotating the key, or moving from body signatures to manifest signatures must
/// sign the document already stored, or filters requiring the signature refuse it until the
/// control plane's config changes. An unsigned exporter keeps a stored signature: removing it
/// would only make filters refuse the export. With `refresh_after_ms`, the same bytes stored longer than that before the candidate's
/// `exported_at` (or without a readable export time) are written again: [`WritePlan::Refresh`].
pub fn plan_write(
    stored: Option<&StoredObject>,
    candidate: &ExportMetadata,
    signer: Option<SignedBy<'_>>,
    refresh_after_ms: Option<u64>,
) -> WritePlan {
    let Some(stored) = stored else {
        return WritePlan::Create;
    };
    match &stored.metadata {
        Some(m) if m.sha256 == candidate.sha256 => match signer {
            Some(signer) if !m.is_signed_by(signer.version, signer.public_key) => {
                WritePlan::Resign {
                    if_match: stored.etag.clone(),
                    revision: m.revision.max(candidate.revision),
                }
            }
            _ if refresh_after_ms.is_some_and(|after| due_for_refresh(m, candidate, after)) => {
                WritePlan::Refresh {
                    if_match: stored.etag.clone(),
                    revision: m.revision,
                }
            }
            _ => WritePlan::AlreadyStored,
        },
        Some(m) if m.revision >= candidate.revision => WritePlan::Superseded {
            stored_revision: m.revision,
        },
        _ => WritePlan::Replace {
            if_match: stored.etag.clone(),
        },
    }
}

/// True when `stored` was exported at least `after_ms` before `candidate` (or has no readable
/// export time, as an export from an older release).
fn due_for_refresh(stored: &ExportMetadata, candidate: &ExportMetadata, after_ms: u64) -> bool {
    let parse = crate::freshness::parse_rfc3339_ms;
    match (parse(&stored.exported_at), parse(&candidate.exported_at)) {
        (Some(then), Some(now)) => now.saturating_sub(then) >= after_ms,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

/// Which stores (primary first, then mirrors) hold the current export: the bytes (sha256) of
/// the highest revision any of them holds, the first such store's on a tie. A store holding
/// those bytes under another revision (written before a re-signing) still serves them: the
/// answer's metadata, and so its signed manifest, comes from the highest one. Returns their
/// indexes in order; empty when none holds an export of ours. A mirror behind (other bytes, or
/// missing the object) is left out, so a filter is never sent to it.
pub fn current_holders(stored: &[Option<&ExportMetadata>]) -> Vec<usize> {
    let Some(best) =
        stored
            .iter()
            .flatten()
            .copied()
            .reduce(|best, m| if m.revision > best.revision { m } else { best })
    else {
        return Vec::new();
    };
    stored
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_some_and(|m| m.sha256 == best.sha256))
        .map(|(i, _)| i)
        .collect()
}

/// Hands out revisions: the wall-clock time in milliseconds at which a document was first seen,
/// never less than one more than the last revision handed out.
///
/// Documents observed later get higher revisions, so when two exporters race, the one holding
/// the document the control plane served later wins. Across nodes this relies on clocks kept
/// in step (NTP), as every object store's own conditional-write timing does.
#[derive(Debug, Clone, Default)]
pub struct RevisionClock {
    last: u64,
}

impl RevisionClock {
    /// The next revision, given the current Unix time in milliseconds.
    pub fn next(&mut self, now_unix_ms: u64) -> u64 {
        self.last = now_unix_ms.max(self.last.saturating_add(1));
        self.last
    }
}

/// Paces uploads: the first as soon as there is something to export, then at most one per
/// `min_interval_ms`; while an upload waits, a newer document replaces the waiting one; a
/// document whose digest is already stored is dropped.
#[derive(Debug, Clone)]
pub struct ExportPacer<T> {
    min_interval_ms: u64,
    last_export_ms: Option<u64>,
    retry_at_ms: Option<u64>,
    stored: Option<Sha256Digest>,
    pending: Option<(Sha256Digest, T)>,
}

/// What [`ExportPacer::offer`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is already stored: nothing to do.
    Unchanged,
    /// It is the one already waiting.
    AlreadyPending,
    /// It now waits for upload, replacing an older waiting one if there was one.
    Queued {
        /// Whether it replaced a document that had not been uploaded yet.
        replaced: bool,
    },
}

impl<T> ExportPacer<T> {
    /// A pacer allowing one upload per `min_interval_ms`.
    pub fn new(min_interval_ms: u64) -> Self {
        Self {
            min_interval_ms,
            last_export_ms: None,
            retry_at_ms: None,
            stored: None,
            pending: None,
        }
    }

    /// Offers a valid document with its digest.
    pub fn offer(&mut self, sha256: Sha256Digest, document: T) -> Offer {
        if let Some((pending, _)) = &self.pending {
            if *pending == sha256 {
                return Offer::AlreadyPending;
            }
        } else if self.stored == Some(sha256) {
            return Offer::Unchanged;
        }
        let replaced = self.pending.is_some();
        if self.stored == Some(sha256) {
            // The control plane went back to what is stored: the waiting document is stale.
            self.pending = None;
            self.retry_at_ms = None;
            return Offer::Unchanged;
        }
        self.pending = Some((sha256, document));
        Offer::Queued { replaced }
    }

    /// When the next upload is due (Unix ms), or `None` when nothing waits.
    pub fn due_at(&self) -> Option<u64> {
        self.pending.as_ref()?;
        if let Some(retry) = self.retry_at_ms {
            return Some(retry);
        }
        Some(match self.last_export_ms {
            None => 0,
            Some(last) => last.saturating_add(self.min_interval_ms),
        })
    }

    /// The document to upload now, if one is due at `now_ms`. It stays pending until
    /// [`Self::stored`], [`Self::superseded`] or [`Self::failed`] reports the outcome.
    pub fn due(&self, now_ms: u64) -> Option<(Sha256Digest, &T)> {
        match self.due_at() {
            Some(at) if at <= now_ms => self.pending(),
            _ => None,
        }
    }

    /// The upload of `sha256` finished at `now_ms`: that digest is what the store holds.
    pub fn stored(&mut self, sha256: Sha256Digest, now_ms: u64) {
        self.stored = Some(sha256);
        self.last_export_ms = Some(now_ms);
        self.retry_at_ms = None;
        if matches!(&self.pending, Some((p, _)) if *p == sha256) {
            self.pending = None;
        }
    }

    /// The store holds a newer revision than `sha256`'s: drop it without writing.
    pub fn superseded(&mut self, sha256: Sha256Digest, now_ms: u64) {
        self.last_export_ms = Some(now_ms);
        self.retry_at_ms = None;
        if matches!(&self.pending, Some((p, _)) if *p == sha256) {
            self.pending = None;
        }
    }

    /// The upload failed: retry no earlier than `retry_at_ms` (a newer offer keeps that time).
    pub fn failed(&mut self, retry_at_ms: u64) {
        self.retry_at_ms = Some(retry_at_ms);
    }

    /// The control plane still serves `sha256`, the stored document: when nothing waits and the
    /// last export is `every_ms` old or more, queue `document()` again so that its export time
    /// is refreshed ([`WritePlan::Refresh`]). Returns whether it was queued (`document` is
    /// only called then).
    pub fn refresh(
        &mut self,
        sha256: Sha256Digest,
        document: impl FnOnce() -> T,
        now_ms: u64,
        every_ms: u64,
    ) -> bool {
        let due = self.pending.is_none()
            && self.stored == Some(sha256)
            && self
                .last_export_ms
                .is_some_and(|last| now_ms.saturating_sub(last) >= every_ms);
        if due {
            self.pending = Some((sha256, document()));
        }
        due
    }

    /// The document waiting for upload, due or not (e.g. to flush it at shutdown).
    pub fn pending(&self) -> Option<(Sha256Digest, &T)> {
        self.pending.as_ref().map(|(sha, doc)| (*sha, doc))
    }

    /// The digest last known to be stored.
    pub fn stored_digest(&self) -> Option<Sha256Digest> {
        self.stored
    }
}

impl fmt::Display for WritePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WritePlan::AlreadyStored => f.write_str("already stored"),
            WritePlan::Superseded { stored_revision } => {
                write!(f, "superseded by stored revision {stored_revision}")
            }
            WritePlan::Create => f.write_str("create"),
            WritePlan::Replace { .. } => f.write_str("replace"),
            WritePlan::Resign { revision, .. } => {
                write!(f, "re-sign the stored bytes at revision {revision}")
            }
            WritePlan::Refresh { revision, .. } => {
                write!(f, "refresh the export time of stored revision {revision}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(body: &[u8], revision: u64) -> ExportMetadata {
        ExportMetadata {
            sha256: Sha256Digest::of(body),
            revision,
            node_id: "node-a".into(),
            exported_at: "2026-11-26T10:00:00Z".into(),
            signature: None,
            key_id: None,
        }
    }

    #[test]
    fn key_is_prefix_version_config_json() {
        assert_eq!(
            object_key("kong", "3.4.1.0").unwrap(),
            "kong/3.4.1.0/config.json"
        );
        assert_eq!(object_key("/a//b/", "1").unwrap(), "a/b/1/config.json");
        assert_eq!(object_key("", "1").unwrap(), "1/config.json");
    }

    #[test]
    fn verbatim_prefixes_keep_every_byte_but_add_one_separator() {
        let key = |prefix| object_key_in(PrefixStyle::Verbatim, prefix, "3.4").unwrap();
        assert_eq!(key(""), "3.4/config.json");
        assert_eq!(key("kong"), "kong/3.4/config.json");
        assert_eq!(key("kong/"), "kong/3.4/config.json");
        assert_eq!(key("/kong"), "/kong/3.4/config.json");
        assert_eq!(key("/"), "/3.4/config.json");
        assert_eq!(key("a//b"), "a//b/3.4/config.json");
        assert_eq!(key("a//b//"), "a//b//3.4/config.json");
        assert_eq!(
            object_key_in(PrefixStyle::Verbatim, "a/../b", "1"),
            Err(KeyError::BadPrefix("a/../b".into()))
        );
        assert!(matches!(
            object_key_in(PrefixStyle::Verbatim, "a\nb", "1"),
            Err(KeyError::PrefixControl(_))
        ));
        assert!(matches!(
            object_key_in(PrefixStyle::Verbatim, "p", "a/b"),
            Err(KeyError::BadVersion(_))
        ));
        assert_eq!(
            prefixed_key(PrefixStyle::Verbatim, "//x", ".probe/n.json").unwrap(),
            "//x/.probe/n.json"
        );
        assert_eq!(
            prefixed_key(PrefixStyle::Segments, "//x", ".probe/n.json").unwrap(),
            "x/.probe/n.json"
        );
    }

    #[test]
    fn key_rejects_versions_and_prefixes_that_escape() {
        assert_eq!(object_key("p", ""), Err(KeyError::EmptyVersion));
        for bad in ["a/b", "..", ".", "a b", "a\\b"] {
            assert!(
                matches!(object_key("p", bad), Err(KeyError::BadVersion(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            object_key("a/../b", "1"),
            Err(KeyError::BadPrefix(_))
        ));
    }

    #[test]
    fn metadata_round_trips_through_pairs() {
        let mut m = metadata(b"x", 42);
        m.signature = Some("c2ln".into());
        let pairs = m.to_pairs();
        let back = ExportMetadata::from_lookup(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(back, Some(m));
    }

    #[test]
    fn metadata_absent_means_foreign_object_and_garbage_is_an_error() {
        assert_eq!(ExportMetadata::from_lookup(|_| None), Ok(None));
        let err = ExportMetadata::from_lookup(|n| (n == meta::SHA256).then_some("zz")).unwrap_err();
        assert_eq!(err.name, meta::SHA256);
        let sha = Sha256Digest::of(b"").to_hex();
        let err = ExportMetadata::from_lookup(|n| match n {
            meta::SHA256 => Some(sha.as_str()),
            meta::REVISION => Some("soon"),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.name, meta::REVISION);
    }

    #[test]
    fn plan_creates_when_empty_and_skips_identical_bytes() {
        let c = metadata(b"new", 10);
        assert_eq!(plan_write(None, &c, None, None), WritePlan::Create);
        let stored = StoredObject {
            etag: "\"e\"".into(),
            metadata: Some(metadata(b"new", 3)),
        };
        assert_eq!(
            plan_write(Some(&stored), &c, None, None),
            WritePlan::AlreadyStored
        );
    }

    #[test]
    fn plan_never_goes_back_in_revision() {
        let stored = StoredObject {
            etag: "\"e\"".into(),
            metadata: Some(metadata(b"newer", 20)),
        };
        assert_eq!(
            plan_write(Some(&stored), &metadata(b"older", 10), None, None),
            WritePlan::Superseded {
                stored_revision: 20
            }
        );
        assert_eq!(
            plan_write(Some(&stored), &metadata(b"same-rev", 20), None, None),
            WritePlan::Superseded {
                stored_revision: 20
            }
        );
        assert_eq!(
            plan_write(Some(&stored), &metadata(b"newest", 21), None, None),
            WritePlan::Replace {
                if_match: "\"e\"".into()
            }
        );
    }

    /// A key pair from a seed.
    fn key_pair(seed: u8) -> (ed25519_compact::KeyPair, PublicKey) {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        let public = PublicKey::from_bytes(*pair.pk).unwrap();
        (pair, public)
    }

    /// `body` at `revision`, its manifest signed by the key from `seed` (none: unsigned).
    fn signed(body: &[u8], revision: u64, seed: Option<u8>) -> ExportMetadata {
        let mut m = metadata(body, revision);
        if let Some(seed) = seed {
            let (pair, public) = key_pair(seed);
            let key_id = public.key_id();
            let bytes = m.manifest("3.4.1.0", &key_id).to_bytes().unwrap();
            m.signature = Some(crate::signature::encode_base64(
                &pair.sk.sign(bytes, None)[..],
            ));
            m.key_id = Some(key_id);
        }
        m
    }

    /// What the store holds: `metadata` under the tag `"e"`.
    fn stored(metadata: ExportMetadata) -> StoredObject {
        StoredObject {
            etag: "\"e\"".into(),
            metadata: Some(metadata),
        }
    }

    /// Signing with `key`, for version 3.4.1.0.
    fn signing_with(key: &PublicKey) -> Option<SignedBy<'_>> {
        Some(SignedBy {
            public_key: key,
            version: "3.4.1.0",
        })
    }

    #[test]
    fn plan_signs_the_stored_bytes_unless_they_carry_this_keys_manifest_signature() {
        let (_, key_a) = key_pair(1);
        let by_a = signing_with(&key_a);
        let candidate = metadata(b"doc", 9);
        // Signing turned on: the stored copy is unsigned.
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 5, None))),
                &candidate,
                by_a,
                None
            ),
            WritePlan::Resign {
                if_match: "\"e\"".into(),
                revision: 9
            }
        );
        // Key rotated: the stored signature is another key's; the stored revision is higher
        // (another exporter saw the same bytes later) and is kept.
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 20, Some(2)))),
                &candidate,
                by_a,
                None
            ),
            WritePlan::Resign {
                if_match: "\"e\"".into(),
                revision: 20
            }
        );
        // A stored signature that is not even base64, one without key-id (a body signature
        // from before manifests), or one for another version, is rewritten too.
        let mut garbled = signed(b"doc", 5, Some(1));
        garbled.signature = Some("not base64!".into());
        let mut no_key_id = signed(b"doc", 5, Some(1));
        no_key_id.key_id = None;
        let other_version = Some(SignedBy {
            public_key: &key_a,
            version: "3.5.0.0",
        });
        for (stored_meta, signer) in [
            (garbled, by_a),
            (no_key_id, by_a),
            (signed(b"doc", 5, Some(1)), other_version),
        ] {
            assert!(matches!(
                plan_write(Some(&stored(stored_meta)), &candidate, signer, None),
                WritePlan::Resign { .. }
            ));
        }
        // A stored revision swapped under a valid signature does not verify: re-signed.
        let mut swapped = signed(b"doc", 5, Some(1));
        swapped.revision = 6;
        assert!(matches!(
            plan_write(Some(&stored(swapped)), &candidate, by_a, None),
            WritePlan::Resign { .. }
        ));
        // Already signed by this key (at whatever revision and time): nothing to write.
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 5, Some(1)))),
                &candidate,
                by_a,
                None
            ),
            WritePlan::AlreadyStored
        );
        // An exporter without a key leaves a stored signature alone.
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 5, Some(2)))),
                &candidate,
                None,
                None
            ),
            WritePlan::AlreadyStored
        );
        // Other bytes follow the revision rules whatever the signatures.
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"other", 50, None))),
                &candidate,
                by_a,
                None
            ),
            WritePlan::Superseded {
                stored_revision: 50
            }
        );
    }

    #[test]
    fn key_id_metadata_round_trips() {
        let m = signed(b"doc", 5, Some(1));
        let pairs = m.to_pairs();
        let back = ExportMetadata::from_lookup(|n| {
            pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
        })
        .unwrap()
        .unwrap();
        assert_eq!(back, m);
        assert!(back.is_signed_by("3.4.1.0", &key_pair(1).1));
        assert!(!back.is_signed_by("3.4.1.0", &key_pair(2).1));
    }

    #[test]
    fn the_current_holders_are_the_stores_with_the_highest_revision_in_order() {
        let (a5, b7, b7_again, c7) = (
            metadata(b"a", 5),
            metadata(b"b", 7),
            metadata(b"b", 7),
            metadata(b"c", 7),
        );
        assert_eq!(
            current_holders(&[Some(&a5), None, Some(&b7), Some(&b7_again)]),
            [2, 3]
        );
        assert_eq!(
            current_holders(&[Some(&b7), Some(&a5), Some(&b7_again)]),
            [0, 2]
        );
        // Same revision, other bytes (should not happen): the first such store's bytes win.
        assert_eq!(current_holders(&[Some(&b7), Some(&c7)]), [0]);
        // The same bytes under an older revision are served too.
        let b3 = metadata(b"b", 3);
        assert_eq!(current_holders(&[Some(&b3), Some(&a5), Some(&b7)]), [0, 2]);
        assert!(current_holders(&[None, None]).is_empty());
    }

    #[test]
    fn plan_replaces_foreign_objects_conditionally() {
        let stored = StoredObject {
            etag: "g1".into(),
            metadata: None,
        };
        assert_eq!(
            plan_write(Some(&stored), &metadata(b"x", 1), None, None),
            WritePlan::Replace {
                if_match: "g1".into()
            }
        );
    }

    #[test]
    fn revisions_follow_the_clock_and_never_repeat() {
        let mut clock = RevisionClock::default();
        assert_eq!(clock.next(1_000), 1_000);
        assert_eq!(clock.next(1_000), 1_001);
        assert_eq!(
            clock.next(900),
            1_002,
            "a clock step backwards still moves forward"
        );
        assert_eq!(clock.next(5_000), 5_000);
    }

    fn sha(s: &str) -> Sha256Digest {
        Sha256Digest::of(s.as_bytes())
    }

    #[test]
    fn pacer_exports_at_once_then_at_most_once_per_interval() {
        let mut p = ExportPacer::new(60_000);
        assert_eq!(p.due_at(), None);
        assert_eq!(p.offer(sha("a"), "a"), Offer::Queued { replaced: false });
        assert_eq!(p.due(5).map(|(_, d)| *d), Some("a"));
        p.stored(sha("a"), 5);
        assert_eq!(p.due_at(), None);

        assert_eq!(p.offer(sha("b"), "b"), Offer::Queued { replaced: false });
        assert_eq!(p.due_at(), Some(60_005));
        assert!(p.due(60_004).is_none());
        assert_eq!(p.offer(sha("c"), "c"), Offer::Queued { replaced: true });
        assert_eq!(p.due(60_005).map(|(_, d)| *d), Some("c"), "newest wins");
    }

    #[test]
    fn pacer_drops_unchanged_and_duplicate_offers() {
        let mut p = ExportPacer::new(1_000);
        p.offer(sha("a"), ());
        p.stored(sha("a"), 0);
        assert_eq!(p.offer(sha("a"), ()), Offer::Unchanged);
        assert_eq!(p.offer(sha("b"), ()), Offer::Queued { replaced: false });
        assert_eq!(p.offer(sha("b"), ()), Offer::AlreadyPending);
        assert_eq!(
            p.offer(sha("a"), ()),
            Offer::Unchanged,
            "back to what is stored"
        );
        assert_eq!(p.due_at(), None);
    }

    #[test]
    fn pacer_retries_failed_uploads_at_the_given_time_and_keeps_the_newest() {
        let mut p = ExportPacer::new(10_000);
        p.offer(sha("a"), "a");
        assert!(p.due(0).is_some());
        p.failed(400);
        assert!(p.due(399).is_none());
        p.offer(sha("b"), "b");
        assert_eq!(p.due(400).map(|(_, d)| *d), Some("b"));
        p.stored(sha("b"), 450);
        assert_eq!(p.stored_digest(), Some(sha("b")));
        assert_eq!(p.due_at(), None);
    }

    #[test]
    fn the_same_bytes_exported_longer_ago_than_the_refresh_interval_are_refreshed() {
        let hour = 3_600_000;
        let stored_at = |at: &str| StoredObject {
            etag: "\"e\"".into(),
            metadata: Some(ExportMetadata {
                exported_at: at.into(),
                ..metadata(b"doc", 20)
            }),
        };
        let candidate = ExportMetadata {
            exported_at: "2026-11-26T12:00:00.000Z".into(),
            ..metadata(b"doc", 31)
        };
        let refresh = |stored: &StoredObject, after: Option<u64>| {
            plan_write(Some(stored), &candidate, None, after)
        };
        let old = stored_at("2026-11-26T10:00:00.000Z");
        assert_eq!(
            refresh(&old, Some(hour)),
            WritePlan::Refresh {
                if_match: "\"e\"".into(),
                revision: 20
            },
            "two hours old: refreshed at the stored revision"
        );
        assert_eq!(
            refresh(&stored_at("2026-11-26T11:30:00.000Z"), Some(hour)),
            WritePlan::AlreadyStored,
            "half an hour old"
        );
        assert_eq!(
            refresh(&old, None),
            WritePlan::AlreadyStored,
            "no refresh set"
        );
        assert_eq!(
            plan_write(Some(&old), &candidate, None, None),
            WritePlan::AlreadyStored
        );
        assert!(
            matches!(
                refresh(&stored_at(""), Some(hour)),
                WritePlan::Refresh { .. }
            ),
            "an export without an export time (an older release's) gets one"
        );
        // Other bytes are a new export, as without refreshing.
        let newer = ExportMetadata {
            exported_at: candidate.exported_at.clone(),
            ..metadata(b"other", 31)
        };
        assert_eq!(
            plan_write(Some(&old), &newer, None, Some(hour)),
            WritePlan::Replace {
                if_match: "\"e\"".into()
            }
        );
    }

    #[test]
    fn a_signer_that_must_re_sign_re_signs_rather_than_refreshes() {
        let (_, key_a) = key_pair(1);
        let by_a = signing_with(&key_a);
        let candidate = ExportMetadata {
            exported_at: "2026-11-26T12:00:00.000Z".into(),
            ..metadata(b"doc", 31)
        };
        let hour = Some(3_600_000);
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 20, None))),
                &candidate,
                by_a,
                hour
            ),
            WritePlan::Resign {
                if_match: "\"e\"".into(),
                revision: 31
            },
            "unsigned: signed (with a new export time too)"
        );
        assert_eq!(
            plan_write(
                Some(&stored(signed(b"doc", 20, Some(1)))),
                &candidate,
                by_a,
                hour
            ),
            WritePlan::Refresh {
                if_match: "\"e\"".into(),
                revision: 20
            },
            "signed by this key two hours before: refreshed"
        );
    }

    #[test]
    fn the_pacer_queues_the_stored_document_again_once_the_refresh_interval_has_passed() {
        let mut p = ExportPacer::new(1_000);
        assert!(!p.refresh(sha("a"), || "a", 0, 5_000), "nothing stored yet");
        p.offer(sha("a"), "a");
        p.stored(sha("a"), 100);
        assert!(!p.refresh(sha("a"), || "a", 4_000, 5_000), "too early");
        assert!(
            !p.refresh(sha("b"), || "b", 9_000, 5_000),
            "not the stored document"
        );
        assert!(p.refresh(sha("a"), || "a", 5_100, 5_000));
        assert_eq!(p.due(5_100).map(|(s, d)| (s, *d)), Some((sha("a"), "a")));
        assert!(
            !p.refresh(sha("a"), || "a", 5_200, 5_000),
            "already waiting"
        );
        p.stored(sha("a"), 5_300);
        assert_eq!(p.due_at(), None);
        // A new document waiting is not displaced by a refresh.
        p.offer(sha("b"), "b");
        assert!(!p.refresh(sha("a"), || "a", 99_999, 5_000));
        assert_eq!(p.pending().map(|(s, _)| s), Some(sha("b")));
    }

    #[test]
    fn pacer_forgets_a_superseded_document() {
        let mut p = ExportPacer::new(10_000);
        p.offer(sha("old"), ());
        p.superseded(sha("old"), 7);
        assert_eq!(p.due_at(), None);
        p.offer(sha("new"), ());
        assert_eq!(p.due_at(), Some(10_007));
    }

    #[test]
    fn outcome_for_a_replaced_document_keeps_the_newer_one_pending() {
        let mut p = ExportPacer::new(0);
        p.offer(sha("a"), ());
        p.offer(sha("b"), ());
        p.stored(sha("a"), 1);
        assert_eq!(p.due(1).map(|(s, _)| s), Some(sha("b")));
    }
}
