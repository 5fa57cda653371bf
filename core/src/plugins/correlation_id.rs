//! `correlation-id`: a unique id per request in a header, to the upstream and optionally back.
//!
//! Kong 3.x: `header_name` ("Kong-Request-ID"), `generator` (`uuid#counter`; `uuid`,
//! `tracker`), `echo_downstream` (false). A request that already has the header keeps it.
//! `uuid#counter` is a per-worker UUID and a per-worker counter, as Kong's; `tracker` (built from
//! nginx variables in Kong) is generated as a `uuid` here.

use super::conf::Conf;
use super::{Exchange, PluginEngine, Step};

#[derive(Debug)]
pub(super) struct CorrelationId {
    header_name: String,
    counter: bool,
    echo_downstream: bool,
}

impl CorrelationId {
    pub(super) fn new(c: &Conf<'_>) -> Result<CorrelationId, String> {
        let counter = match c.string("generator")?.as_deref() {
            None | Some("uuid#counter") => true,
            Some("uuid") | Some("tracker") => false,
            Some(other) => return Err(format!("config.generator {other:?} is unknown")),
        };
        Ok(CorrelationId {
            header_name: c
                .string("header_name")?
                .unwrap_or_else(|| "Kong-Request-ID".to_owned()),
            counter,
            echo_downstream: c.boolean("echo_downstream", false)?,
        })
    }

    pub(super) fn access(&self, engine: &PluginEngine, ex: &mut Exchange) -> Step {
        let id = match ex.header(&self.header_name).filter(|v| !v.is_empty()) {
            Some(existing) => existing.to_owned(),
            None => {
                let id = if self.counter {
                    let n = engine.counter.get() + 1;
                    engine.counter.set(n);
                    let mut uuid = engine.worker_uuid.borrow_mut();
                    let base = uuid.get_or_insert_with(|| uuid_v4(ex.random));
                    format!("{base}#{n}")
                } else {
                    uuid_v4(ex.random)
                };
                ex.set_header(self.header_name.clone(), id.clone());
                id
            }
        };
        if self.echo_downstream {
            ex.response.set(self.header_name.clone(), id);
        }
        Ok(())
    }
}

/// A random (version 4) UUID from 128 random bits.
pub(super) fn uuid_v4(random: u128) -> String {
    let mut b = random.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
