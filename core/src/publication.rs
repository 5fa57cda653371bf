//! How one worker tells the others: the leader lease and the published-config record, both kept
//! in the proxy's shared data (a process-wide key/value store with compare-and-swap).
//!
//! Every worker (and Envoy's main thread) runs its own root context. One of them holds a lease
//! and runs the fetch state machine; it publishes each new document under [`CONFIG_KEY`] and a
//! small header under [`HEADER_KEY`]. Every worker polls only the small header on each tick and
//! reads, parses and compiles the document once per new generation.

use crate::digest::Sha256Digest;
use crate::fetch::{PublishedConfig, Source};
use std::sync::Arc;

/// Shared-data key of the leader lease.
pub const LEASE_KEY: &str = "fallback.leader";
/// Shared-data key of the published document's bytes.
pub const CONFIG_KEY: &str = "fallback.config";
/// Shared-data key of the published document's header.
pub const HEADER_KEY: &str = "fallback.config.header";

/// Who leads until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The holder's random worker id.
    pub holder: u64,
    /// Unix ms after which anyone may take the lease.
    pub expires_ms: u64,
}

impl Lease {
    /// `holder:expires_ms`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.holder, self.expires_ms).into_bytes()
    }

    /// The lease in `bytes`, `None` when garbled (then anyone may take it).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (holder, expires) = text.split_once(':')?;
        Some(Self {
            holder: holder.parse().ok()?,
            expires_ms: expires.parse().ok()?,
        })
    }
}

/// What a worker should write to the lease key (with the CAS it read), or `None` when another
/// worker holds a live lease. Writing it and succeeding makes (or keeps) this worker the leader;
/// a CAS mismatch means another worker won the race.
pub fn claim_lease(current: Option<&[u8]>, me: u64, now_ms: u64, lease_ms: u64) -> Option<Vec<u8>> {
    let live_other = current
        .and_then(Lease::decode)
        .is_some_and(|l| l.holder != me && l.expires_ms > now_ms);
    if live_other {
        return None;
    }
    Some(
        Lease {
            holder: me,
            expires_ms: now_ms.saturating_add(lease_ms),
        }
        .encode(),
    )
}

/// The small record every worker polls: which document is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationHeader {
    /// Increases with every publication; workers re-read the document when it changes.
    pub generation: u64,
    /// Where the document came from.
    pub source: Source,
    /// Its storage revision (0 for control-plane documents).
    pub revision: u64,
    /// sha256 of the document bytes, checked by readers: the two keys are not written atomically.
    pub sha256: Sha256Digest,
}

impl PublicationHeader {
    /// `generation source revision sha256`, space-separated.
    pub fn encode(&self) -> Vec<u8> {
        let source = match self.source {
            Source::ControlPlane => "control_plane",
            Source::Fallback => "fallback",
        };
        format!(
            "{} {source} {} {}",
            self.generation, self.revision, self.sha256
        )
        .into_bytes()
    }

    /// The header in `bytes`, `None` when garbled.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let generation = parts.next()?.parse().ok()?;
        let source = match parts.next()? {
            "control_plane" => Source::ControlPlane,
            "fallback" => Source::Fallback,
            _ => return None,
        };
        let revision = parts.next()?.parse().ok()?;
        let sha256 = Sha256Digest::from_hex(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            generation,
            source,
            revision,
            sha256,
        })
    }

    /// The published config these bytes make, when they are the ones this header describes.
    pub fn attach(&self, document: &[u8]) -> Option<PublishedConfig> {
        (Sha256Digest::of(document) == self.sha256).then(|| PublishedConfig {
            source: self.source,
            revision: self.revision,
            sha256: self.sha256,
            document: Arc::from(document),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_taken_when_free_expired_garbled_or_own() {
        assert!(claim_lease(None, 1, 100, 50).is_some());
        let other = Lease {
            holder: 2,
            expires_ms: 120,
        }
        .encode();
        assert_eq!(
            claim_lease(Some(&other), 1, 100, 50),
            None,
            "live lease of another"
        );
        assert!(
            claim_lease(Some(&other), 1, 120, 50).is_some(),
            "expired at 120"
        );
        assert!(claim_lease(Some(b"garbage"), 1, 100, 50).is_some());
        let mine = Lease {
            holder: 1,
            expires_ms: 120,
        }
        .encode();
        let renewed = claim_lease(Some(&mine), 1, 100, 50).unwrap();
        assert_eq!(
            Lease::decode(&renewed),
            Some(Lease {
                holder: 1,
                expires_ms: 150
            })
        );
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = PublicationHeader {
            generation: 3,
            source: Source::Fallback,
            revision: 1_795_687_670_015,
            sha256: Sha256Digest::of(b"doc"),
        };
        assert_eq!(PublicationHeader::decode(&h.encode()), Some(h.clone()));
        for bad in [&b""[..], b"1 cp 0 00", b"x fallback 1 00", &[0xff, 0xfe]] {
            assert_eq!(PublicationHeader::decode(bad), None);
        }
        let mut extra = h.encode();
        extra.extend_from_slice(b" more");
        assert_eq!(PublicationHeader::decode(&extra), None);
    }

    #[test]
    fn a_document_attaches_only_to_its_own_header() {
        let h = PublicationHeader {
            generation: 1,
            source: Source::ControlPlane,
            revision: 0,
            sha256: Sha256Digest::of(b"doc"),
        };
        let p = h.attach(b"doc").expect("matching bytes");
        assert_eq!(&p.document[..], b"doc");
        assert_eq!(h.attach(b"newer doc"), None);
    }
}
