//! How one worker tells the others: the leader lease and the published-config record, both kept
//! in the proxy's shared data (a process-wide key/value store with compare-and-swap).
//!
//! Every worker (and Envoy's main thread) runs its own root context. One of them holds a lease
//! and runs the fetch state machine; it publishes each new document under [`CONFIG_KEY`] and a
//! small header under [`HEADER_KEY`]. Every worker polls only the small header on each tick and
//! reads, parses and compiles the document once per new generation.
//!
//! Every write is read-then-compare-and-swap ([`crate::shared_data`]), which is correct on every
//! host: in ngx_wasm_module a write with a token of 0 never replaces an existing key, so a
//! second generation written that way would never reach the workers.

use crate::digest::Sha256Digest;
use crate::fetch::{PublishedConfig, Source};
use crate::shared_data::{update, SharedData, WriteRefused};
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

/// One worker's part in the leader lease. Leadership starts when the worker's claim is still
/// in place one tick after it was written: where a token of 0 writes unconditionally (Envoy),
/// two workers creating the absent key at once both "succeed", and the later one wins.
#[derive(Debug, Clone)]
pub struct Election {
    me: u64,
    /// Whether this worker's claim was written on the previous tick.
    claimed: bool,
}

impl Election {
    /// A worker identified by `me` (random, different in every worker).
    pub fn new(me: u64) -> Self {
        Self { me, claimed: false }
    }

    /// Claims or renews the lease at `now_ms`; true while this worker leads.
    pub fn tick<K: SharedData + ?Sized>(&mut self, kv: &mut K, now_ms: u64, lease_ms: u64) -> bool {
        let (current, cas) = kv.get(LEASE_KEY);
        let holds_now = current
            .as_deref()
            .and_then(Lease::decode)
            .is_some_and(|l| l.holder == self.me && l.expires_ms > now_ms);
        let claim = claim_lease(current.as_deref(), self.me, now_ms, lease_ms);
        let wrote = claim.is_some_and(|value| kv.set(LEASE_KEY, &value, cas).is_ok());
        let leading = wrote && holds_now && self.claimed;
        self.claimed = wrote;
        leading
    }
}

/// Writes `published` for every worker: the document, then the header that announces it with
/// the next generation. Returns that generation.
pub fn publish<K: SharedData + ?Sized>(
    kv: &mut K,
    published: &PublishedConfig,
) -> Result<u64, WriteRefused> {
    update(kv, CONFIG_KEY, |_| Some(published.document.to_vec()))?;
    let mut generation = 0;
    update(kv, HEADER_KEY, |current| {
        generation = current
            .and_then(PublicationHeader::decode)
            .map_or(1, |h| h.generation + 1);
        Some(
            PublicationHeader {
                generation,
                source: published.source,
                revision: published.revision,
                sha256: published.sha256,
                exported_at_ms: published.exported_at_ms,
            }
            .encode(),
        )
    })?;
    Ok(generation)
}

/// The header of what is published, if anything.
pub fn published_header<K: SharedData + ?Sized>(kv: &mut K) -> Option<PublicationHeader> {
    PublicationHeader::decode(&kv.get(HEADER_KEY).0?)
}

/// What is published, if anything and if its document matches its header.
pub fn read_published<K: SharedData + ?Sized>(kv: &mut K) -> Option<(u64, PublishedConfig)> {
    let header = published_header(kv)?;
    let published = header.attach(&kv.get(CONFIG_KEY).0?)?;
    Some((header.generation, published))
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
    /// The fallback config's export time (Unix ms), when known.
    pub exported_at_ms: Option<u64>,
}

impl PublicationHeader {
    /// `generation source revision sha256`, then ` exported_at_ms` when known, space-separated.
    pub fn encode(&self) -> Vec<u8> {
        let source = match self.source {
            Source::ControlPlane => "control_plane",
            Source::Fallback => "fallback",
        };
        let mut text = format!(
            "{} {source} {} {}",
            self.generation, self.revision, self.sha256
        );
        if let Some(at) = self.exported_at_ms {
            text.push_str(&format!(" {at}"));
        }
        text.into_bytes()
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
        let exported_at_ms = match parts.next() {
            None => None,
            Some(at) => Some(at.parse().ok()?),
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            generation,
            source,
            revision,
            sha256,
            exported_at_ms,
        })
    }

    /// The published config these bytes make, when they are the ones this header describes.
    pub fn attach(&self, document: &[u8]) -> Option<PublishedConfig> {
        (Sha256Digest::of(document) == self.sha256).then(|| PublishedConfig {
            source: self.source,
            revision: self.revision,
            sha256: self.sha256,
            exported_at_ms: self.exported_at_ms,
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
            exported_at_ms: None,
        };
        assert_eq!(PublicationHeader::decode(&h.encode()), Some(h.clone()));
        let dated = PublicationHeader {
            exported_at_ms: Some(1_795_687_200_000),
            ..h.clone()
        };
        assert_eq!(
            PublicationHeader::decode(&dated.encode()),
            Some(dated.clone())
        );
        let mut junk_time = dated.encode();
        junk_time.extend_from_slice(b"x");
        let mut extra = dated.encode();
        extra.extend_from_slice(b" 1");
        for bad in [
            &b""[..],
            b"1 cp 0 00",
            b"x fallback 1 00",
            &[0xff, 0xfe],
            &junk_time,
            &extra,
        ] {
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
            exported_at_ms: None,
        };
        let p = h.attach(b"doc").expect("matching bytes");
        assert_eq!(&p.document[..], b"doc");
        assert_eq!(h.attach(b"newer doc"), None);
    }

    use crate::host::sim::SimSharedData;
    use crate::host::{CasSemantics, HostKind};

    fn config(n: u8) -> PublishedConfig {
        let document = format!("{{\"n\":{n}}}").into_bytes();
        PublishedConfig {
            source: Source::ControlPlane,
            revision: 0,
            sha256: Sha256Digest::of(&document),
            exported_at_ms: None,
            document: document.into(),
        }
    }

    #[test]
    fn every_generation_is_published_on_every_host() {
        for kind in HostKind::ALL {
            let mut kv = SimSharedData::of(kind);
            for n in 1..=3 {
                assert_eq!(publish(&mut kv, &config(n)), Ok(u64::from(n)), "{kind}");
                let (generation, read) = read_published(&mut kv).expect("published");
                assert_eq!(generation, u64::from(n));
                assert_eq!(read, config(n));
            }
        }
    }

    #[test]
    fn a_blind_write_never_replaces_a_key_on_the_strict_host() {
        // Why publication reads first: the way it used to write (token 0) works once in
        // ngx_wasm_module and never again.
        let mut kv = SimSharedData::new(CasSemantics::Strict);
        publish(&mut kv, &config(1)).unwrap();
        let header = PublicationHeader {
            generation: 2,
            source: Source::ControlPlane,
            revision: 0,
            sha256: config(2).sha256,
            exported_at_ms: None,
        };
        assert!(kv.set(HEADER_KEY, &header.encode(), 0).is_err());
        assert_eq!(published_header(&mut kv).unwrap().generation, 1);
    }

    #[test]
    fn publication_survives_a_racing_writer() {
        for kind in HostKind::ALL {
            let mut kv = SimSharedData::of(kind);
            publish(&mut kv, &config(1)).unwrap();
            kv.race_next_write(CONFIG_KEY, b"another leader's bytes");
            assert_eq!(publish(&mut kv, &config(2)), Ok(2), "{kind}");
            assert_eq!(read_published(&mut kv).unwrap().1, config(2));
        }
    }

    #[test]
    fn a_refused_publication_is_an_error_and_keeps_the_previous_one() {
        let mut kv = SimSharedData::of(HostKind::Nginx);
        publish(&mut kv, &config(1)).unwrap();
        kv.refuse_writes(true);
        assert!(publish(&mut kv, &config(2)).is_err());
        kv.refuse_writes(false);
        assert_eq!(read_published(&mut kv).unwrap().1, config(1));
    }

    #[test]
    fn exactly_one_worker_leads_on_every_host() {
        for kind in HostKind::ALL {
            let mut kv = SimSharedData::of(kind);
            let mut workers = [Election::new(1), Election::new(2), Election::new(3)];
            let mut leaders = Vec::new();
            for now in [0, 100, 200, 300] {
                leaders = workers
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, w)| w.tick(&mut kv, now, 1_000).then_some(i))
                    .collect::<Vec<_>>();
            }
            assert_eq!(leaders.len(), 1, "{kind}: {leaders:?}");
            // The leader stops ticking: another takes over once its lease expired.
            let gone = leaders[0];
            let mut next = Vec::new();
            for now in [1_300, 1_400, 1_500] {
                next = workers
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .filter_map(|(i, w)| w.tick(&mut kv, now, 1_000).then_some(i))
                    .collect();
            }
            assert_eq!(next.len(), 1, "{kind}: {next:?}");
        }
    }
}
