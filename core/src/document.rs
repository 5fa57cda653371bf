//! Kong 3.x declarative configuration, loaded into one flat model and validated.
//!
//! `_format_version` is one of those Kong 3.x accepts: `"3.0"`, or `"1.1"` and `"2.1"` (Kong
//! 2.x files), whose route paths are migrated on load as Kong does ([`migrate`]).
//!
//! Kong accepts the same configuration in several shapes: children nested under their parent
//! (`services[].routes[]`, `consumers[].acls[]`...), or listed at the top level and pointing at
//! their parent by id or by name, or any mix of both. [`ConfigDocument`] erases that difference:
//! every entity lands in one top-level list per kind, and every reference to a parent becomes an
//! index into the parent's list. Each entity remembers where it appeared in the input
//! (`path`, e.g. `services[0].routes[1]`) so that later checks can point at the user's own text.
//!
//! Loading never stops at the first mistake: a document that was hand-edited during an outage
//! should come back with the whole list of what is wrong, each problem at the exact path of the
//! offending field.
//!
//! Choices that differ from Kong, on purpose:
//! - Ids only need to be non-empty strings; Kong requires UUIDs. Every exporter (Kong, decK)
//!   writes UUIDs anyway, and refusing a fallback document over an id's spelling would leave a
//!   data plane with no configuration at all.
//! - An entity without an id gets the one Kong generates for it on load (a UUIDv5 of its name
//!   or cache key); where Kong would draw a random one (e.g. key-auth credentials), a stable
//!   UUIDv5 of its place in the input instead ([`IdSource`]). References resolve by the ids the
//!   input gives, and by names.
//! - Kong's defaults are filled in while loading (e.g. a route without `strip_path` gets `true`),
//!   so later code never has to know them; each field's doc comment names its default.
//! - Entity kinds Fallback does not enforce (certificates, vaults, other credentials...) are
//!   skipped with a warning rather than rejected, so a full Kong export still loads.

mod address;
mod entities;
mod fields;
pub(crate) mod ids;
mod load;
mod migrate;
mod read;
mod refs;
#[cfg(test)]
mod tests;

pub use entities::{
    Acl, Algorithm, BasicAuthCredential, Consumer, Endpoint, EntityId, IdSource, KeyAuthCredential,
    PathHandling, Plugin, Protocol, Route, Service, Target, Upstream,
};

use crate::limits::MAX_DOCUMENT_BYTES;
use crate::pace::{drop_all, run_to_end, Pace};
use serde_json::Value;
use std::fmt;

/// A validated declarative config: every entity flattened into top-level lists, with parent
/// references resolved to indices into those lists.
///
/// Order within a list: entities listed at the top level first, in input order, then nested
/// ones in the order of their parents (for plugins: under services, then under routes, then
/// under consumers).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDocument {
    /// `_format_version` as given: `"3.0"`, or `"1.1"` / `"2.1"`, whose route paths were
    /// migrated on load as Kong 3.x does (each change is a warning).
    pub format_version: String,
    /// Every service.
    pub services: Vec<Service>,
    /// Every route, top-level and nested under services.
    pub routes: Vec<Route>,
    /// Every consumer.
    pub consumers: Vec<Consumer>,
    /// Every plugin, top-level and nested under services, routes and consumers.
    pub plugins: Vec<Plugin>,
    /// Every upstream.
    pub upstreams: Vec<Upstream>,
    /// Every target, top-level and nested under upstreams.
    pub targets: Vec<Target>,
    /// Every key-auth credential, top-level and nested under consumers.
    pub keyauth_credentials: Vec<KeyAuthCredential>,
    /// Every basic-auth credential, top-level and nested under consumers.
    pub basicauth_credentials: Vec<BasicAuthCredential>,
    /// Every ACL group membership, top-level and nested under consumers.
    pub acls: Vec<Acl>,
}

impl ConfigDocument {
    /// Loads and validates a parsed JSON document.
    ///
    /// `Err` holds every problem found, not just the first. `Ok` may still carry warnings
    /// (e.g. entity kinds Fallback ignores) that are worth logging.
    pub fn from_json(value: &Value) -> Result<Loaded, ValidationErrors> {
        run_to_end(Self::from_json_paced(value, &Pace::unbounded()))
    }

    /// [`ConfigDocument::from_json`], yielding to `pace` once per entity (see [`crate::pace`]).
    pub async fn from_json_paced(
        value: &Value,
        pace: &Pace<'_>,
    ) -> Result<Loaded, ValidationErrors> {
        load::load(value, pace).await
    }

    /// Parses and validates a JSON document from bytes.
    ///
    /// A JSON syntax error becomes a single problem at path `$` whose message gives the line
    /// and column; a key repeated in one object, or nesting deeper than
    /// [`MAX_NESTING_DEPTH`](crate::limits::MAX_NESTING_DEPTH), a problem at its path; a
    /// document larger than [`MAX_DOCUMENT_BYTES`] is refused before it is parsed.
    pub fn from_slice(bytes: &[u8]) -> Result<Loaded, ValidationErrors> {
        run_to_end(Self::from_slice_paced(bytes, &Pace::unbounded()))
    }

    /// [`ConfigDocument::from_slice`], yielding to `pace` (see [`crate::pace`]) while parsing
    /// (once per element of the top-level arrays, [`crate::json::from_slice_paced`]), once per
    /// entity while loading, and while freeing the parsed JSON.
    pub async fn from_slice_paced(
        bytes: &[u8],
        pace: &Pace<'_>,
    ) -> Result<Loaded, ValidationErrors> {
        if let Some(problem) = size_problem(bytes.len()) {
            return Err(ValidationErrors {
                problems: vec![problem],
            });
        }
        let value = match crate::json::from_slice_paced(bytes, pace).await {
            Ok(value) => value,
            Err(err) => {
                return Err(ValidationErrors {
                    problems: vec![Problem::new(err.path(), err.message())],
                })
            }
        };
        let loaded = load::load(&value, pace).await;
        crate::json::drop_paced(value, pace).await;
        loaded
    }

    /// Frees the document a step at a time (see [`crate::pace`]), one entity each.
    pub async fn dismantle(self, pace: &Pace<'_>) {
        drop_all(self.services, pace).await;
        drop_all(self.routes, pace).await;
        drop_all(self.consumers, pace).await;
        drop_all(self.plugins, pace).await;
        drop_all(self.upstreams, pace).await;
        drop_all(self.targets, pace).await;
        drop_all(self.keyauth_credentials, pace).await;
        drop_all(self.basicauth_credentials, pace).await;
        drop_all(self.acls, pace).await;
    }
}

/// The problem with a document of `len` bytes, if it is larger than [`MAX_DOCUMENT_BYTES`].
pub fn size_problem(len: usize) -> Option<Problem> {
    (len > MAX_DOCUMENT_BYTES).then(|| {
        Problem::new(
            "$",
            format!(
                "the document is {len} bytes, more than the {MAX_DOCUMENT_BYTES} bytes \
                 (MAX_DOCUMENT_BYTES) Fallback accepts: split the gateway's configuration, or \
                 remove what it does not need"
            ),
        )
    })
}

/// The result of a successful load: the document, and problems that did not prevent loading.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated document.
    pub document: ConfigDocument,
    /// Things the user should know about but that do not make the document unusable, such as
    /// entity kinds Fallback ignores.
    pub warnings: Vec<Problem>,
}

/// One thing wrong with (or worth noting about) the input, at the path where it was found.
///
/// Paths use the input's own shape: `services[0].routes[1].paths[0]`, `routes[3].service`,
/// `$` for the document as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the input: `$` for the whole document, otherwise a dotted path with indices.
    pub path: String,
    /// What is wrong, worded for the person who wrote the file.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem that makes a document unusable, in the order they were found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_report(.problems))]
pub struct ValidationErrors {
    /// The problems; never empty when returned by a loader.
    pub problems: Vec<Problem>,
}

impl ValidationErrors {
    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// True when there are no problems (never the case for an error returned by a loader).
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

fn render_report(problems: &[Problem]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut out = format!("config is invalid ({} {noun}):", problems.len());
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
