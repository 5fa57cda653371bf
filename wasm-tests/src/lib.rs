//! Test harness for Fallback's end-to-end tests.
//!
//! Starts the real components on loopback, each test with its own ports and temp dirs so tests
//! can run in parallel threads:
//!
//! - [`SeaweedFs`]: `weed mini` (S3 with real SigV4 checks), a writer and a reader identity and
//!   a bucket; stop/restart; filer access behind S3's back ([`SeaweedFs::raw_object`],
//!   [`SeaweedFs::corrupt_object`]).
//! - [`azurite::Azurite`]: the Azure Storage emulator's blob service, one container, the
//!   development account's keys checked.
//! - [`MockCp`]: a scriptable control plane serving the config document with ETags.
//! - [`fault_proxy`]: a loopback proxy in front of a server that answers errors or slowly on
//!   demand; [`load`]: a bounded request loop that checks every answer.
//! - [`nginx::Nginx`]: a real nginx + ngx_wasm_module (when `NGINX_WASM_BIN` names one) running
//!   the filter from `examples/nginx/nginx.conf`.
//! - [`S3Client`]: a minimal SigV4 S3 client; [`http`]: a minimal HTTP client.
//! - [`tools`]: paths of the pinned binaries (`make tools`) and of the companion.
//! - [`ports`]: free loopback ports, never handed out twice in one process.
//! - [`process_log`]: the external processes' log files, opened and shown alike.
//! - [`demo_cli`]: the command-line conventions of the demo binaries in `src/bin`.
//!
//! There is no logging dependency: harness diagnostics go to stderr (`eprintln!`, shown by
//! cargo test for failing tests), and each external process logs to a file in its own dir.

pub mod azurite;
pub mod bench;
pub mod companion_process;
pub mod demo_cli;
pub mod echo;
pub mod envoy;
pub mod fake_admin_api;
pub mod fake_gcs;
pub mod fake_kong_cp;
pub mod fault_proxy;
pub mod fixtures;
pub mod http;
pub mod load;
pub mod mock_cp;
pub mod nginx;
pub mod ports;
pub mod process_log;
pub mod s3;
pub mod seaweed;
pub mod serve;
pub mod sha256;
pub mod stack;
pub mod tools;

pub use companion_process::{companion_match, CompanionProcess};
pub use echo::EchoServer;
pub use envoy::Envoy;
pub use http::HttpResponse;
pub use mock_cp::{etag_of, MockCp, Mode, RecordedRequest};
pub use ports::{free_port, free_port_with_offset};
pub use s3::{Credentials, S3Client};
pub use seaweed::{SeaweedFs, SeaweedPorts, DEFAULT_BUCKET};
pub use tools::{binary, companion_binary, workspace_root};
