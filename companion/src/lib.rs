//! `fallback-companion`: the native half of Fallback.
//!
//! - **export role**: reads a [`source::ConfigSource`] (a polled URL, or a Kong control plane
//!   through its cluster protocol, [`cluster`]), validates every new document with
//!   `fallback-core`, and writes it to object storage as `<prefix>/<version>/config.json`.
//! - **signer role**: serves filters short-lived signed URLs of the exported object
//!   ([`signer::serve`]), and for `file://` storage the object itself behind such URLs.
//! - **signing**: with `FALLBACK_SIGNING_KEY_FILE`, every export carries an Ed25519 signature
//!   ([`signing`]) that filters configured with the public key require.
//! - **offline tools**: `export --config-file` for CI pipelines, `keygen` for a signing key, `presign` for a signed URL of
//!   one object, `doctor` to check a deployment's storage settings, `match` to see where a
//!   request would go under a config.

pub mod admin_api;
pub mod cli;
pub mod cluster;
pub mod doctor;
pub mod exporter;
pub mod live;
pub mod match_cmd;
pub mod presign;
pub mod secret;
pub mod signer;
pub mod signing;
pub mod source;
pub mod storage;
pub mod transport;

#[cfg(test)]
mod signer_properties;
