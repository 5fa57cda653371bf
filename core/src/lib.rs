//! `fallback-core`: everything the filter and the companion must agree on, with no I/O.
//!
//! - [`document`]: Kong's declarative configuration (`_format_version` "3.0"), nested or flat,
//!   loaded into one model and validated with every problem reported at its path.
//! - [`inspect`]: what `match`, `export` and the in-browser inspector ask of a config:
//!   validation with warnings, and where a request goes (router and plugins).
//! - [`config_diff`]: routes, services, plugins and consumers added, removed or changed.
//! - [`digest`]: canonical JSON bytes and their sha256, the identity of an exported document.
//! - [`export`]: the metadata stored beside every export and the decision of whether a write may
//!   replace what the store holds.
//! - [`signature`]: Ed25519 signatures over exports: key and signature parsing, verification.
//! - [`backoff`]: exponential backoff with jitter, shared by every retry loop.
//! - [`filter_config`]: the filter's plugin configuration, parsed and checked.
//! - [`json`]: strict reading of documents from outside (duplicate keys and excessive depth
//!   refused, with their path).
//! - [`limits`]: the sizes every party enforces alike (document, nesting depth, request path,
//!   route regex).
//! - [`fetch`]: the filter's sans-IO fetch state machine (control plane, companion, storage).
//! - [`host`]: what differs between proxy hosts (Envoy, nginx with ngx_wasm_module, Kong), as
//!   data and pure functions.
//! - [`shared_data`]: the proxy's shared key/value store, written read-then-compare-and-swap;
//!   rate-limiting counters kept in it.
//! - [`publication`]: the leader lease and published-config record in the proxy's shared data.
//! - [`generation`]: a published config compiled on a worker a slice at a time, and the
//!   previous one freed the same way; when a worker runs a slice.
//! - [`pace`]: long work written as `async fn`s with steps, run at once or in slices.
//! - [`router`]: the per-request routing decision.
//! - [`plugins`]: the per-request decision of Kong's plugins (authentication, access control,
//!   rate limiting, transformations).
//! - [`wire`]: the companion signer API types, shared by the filter and the companion.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config_diff;
pub mod digest;
pub mod document;
pub mod export;
pub mod fetch;
pub mod filter_config;
pub mod freshness;
pub mod generation;
pub mod host;
pub mod inspect;
pub mod json;
pub mod limits;
pub mod pace;
pub mod plugins;
pub mod publication;
pub mod router;
pub mod shared_data;
pub mod signature;
pub mod wire;

/// A map whose keys come from the config (hosts, path prefixes, plugin scopes, credentials) and
/// that requests look up. foldhash instead of std's SipHash: a request hashes its host, its
/// plugin scopes and its API key, and SipHash's rounds were a tenth of the instructions and
/// two dozen of the code lines a request's decision touches (`make footprint`). Only for keys
/// an operator writes: a map that requests insert into (rate-limit counters keyed by client
/// address or header) keeps SipHash's flooding resistance.
pub(crate) type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod properties;
