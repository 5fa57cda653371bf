//! `fallback-companion`: the native half of Fallback.
//!
//! - **export role**: polls the control plane, validates every new document with
//!   `fallback-core`, and writes it to object storage as `<prefix>/<version>/config.json`.
//! - **signer role**: serves filters short-lived signed URLs of the exported object
//!   ([`signer::serve`]), and for `file://` storage the object itself behind such URLs.
//! - **offline tools**: `export --config-file` for CI pipelines.

pub mod cli;
pub mod exporter;
pub mod secret;
pub mod signer;
pub mod source;
pub mod storage;
pub mod transport;
