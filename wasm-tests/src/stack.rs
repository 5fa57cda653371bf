//! The import path's cast for end-to-end tests: SeaweedFS, a mock control plane, the
//! companion's signer role (real binary, read-only identity), two echo upstreams, and the
//! filter configuration and Envoy options that wire Envoy to them. Optionally a [`FaultProxy`]
//! stands between SeaweedFS and its readers (the signer and Envoy's storage cluster).

use crate::envoy::EnvoyOptions;
use crate::fault_proxy::FaultProxy;
use crate::fixtures::s3_store;
use crate::{CompanionProcess, EchoServer, MockCp, SeaweedFs};
use bytes::Bytes;
use fallback_companion::exporter::{write_document, ExportSigning, WriteOutcome};
use fallback_companion::signing::SigningKey;
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::export::{object_key, ExportMetadata};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `<version>` every piece agrees on.
pub const VERSION: &str = "3.4.1.0";
/// The bearer token the filter presents to the signer.
pub const TOKEN: &str = "e2e-signer-token";

/// Everything the filter talks to.
pub struct ImportStack {
    /// S3 storage.
    pub seaweed: SeaweedFs,
    /// The control plane.
    pub cp: MockCp,
    /// The companion in the signer role (reader credentials).
    pub signer: CompanionProcess,
    /// Upstream "alpha".
    pub alpha: EchoServer,
    /// Upstream "beta".
    pub beta: EchoServer,
    /// The proxy every reader of storage goes through, when started with
    /// [`ImportStack::start_with_store_proxy`] (exports are written to SeaweedFS directly).
    pub store_proxy: Option<FaultProxy>,
}

/// A document routing `/<name>` prefixes (stripped) to `127.0.0.1:<port>`.
pub fn routing_document(routes: &[(&str, u16)]) -> Value {
    let services: Vec<Value> = routes
        .iter()
        .map(|(name, port)| {
            json!({
                "name": format!("{name}-service"),
                "url": format!("http://127.0.0.1:{port}"),
                "routes": [{"name": format!("{name}-route"), "paths": [format!("/{name}")]}],
            })
        })
        .collect();
    json!({"_format_version": "3.0", "services": services})
}

impl ImportStack {
    /// Starts storage, CP (with no document), the signer and two upstreams.
    pub async fn start() -> Self {
        Self::start_inner(false).await
    }

    /// Like [`ImportStack::start`], with a [`FaultProxy`] in front of SeaweedFS that the signer
    /// (its S3 endpoint, hence the signed URLs) and Envoy's `fallback_storage` cluster use.
    pub async fn start_with_store_proxy() -> Self {
        Self::start_inner(true).await
    }

    async fn start_inner(store_proxy: bool) -> Self {
        let seaweed = SeaweedFs::start().await;
        let store_proxy = if store_proxy {
            Some(FaultProxy::start(seaweed.endpoint().trim_start_matches("http://")).await)
        } else {
            None
        };
        let storage_endpoint = store_proxy
            .as_ref()
            .map_or_else(|| seaweed.endpoint(), FaultProxy::endpoint);
        let cp = MockCp::start().await;
        let signer = CompanionProcess::start(&[
            ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
            (
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                format!("s3://{}/kong", seaweed.bucket()),
            ),
            ("AWS_CONFIG_STORAGE_ENDPOINT", storage_endpoint),
            ("AWS_ACCESS_KEY_ID", seaweed.reader().access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", seaweed.reader().secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("FALLBACK_CONFIG_VERSION", VERSION.into()),
            ("FALLBACK_SIGNER_TOKENS", TOKEN.into()),
            ("FALLBACK_LOG", "info".into()),
        ])
        .await;
        Self {
            seaweed,
            cp,
            signer,
            alpha: EchoServer::start("alpha").await,
            beta: EchoServer::start("beta").await,
            store_proxy,
        }
    }

    /// The object key of the export.
    pub fn key(&self) -> String {
        object_key("kong", VERSION).expect("valid key")
    }

    /// Exports `document` as the companion's export role would (writer identity, next revision).
    pub async fn export(&self, document: &Value) -> u64 {
        self.export_signed(document, None).await
    }

    /// Like [`ImportStack::export`], with the `signature` and `key-id` metadata of
    /// `signing_key` when given (as an exporter with `FALLBACK_SIGNING_KEY_FILE` writes it).
    pub async fn export_signed(&self, document: &Value, signing_key: Option<&SigningKey>) -> u64 {
        self.export_as(VERSION, document, signing_key).await
    }

    /// Like [`ImportStack::export_signed`], as the export of `version`.
    pub async fn export_as(
        &self,
        version: &str,
        document: &Value,
        signing_key: Option<&SigningKey>,
    ) -> u64 {
        let body = Bytes::from(canonical_json(document));
        let revision = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let metadata = ExportMetadata {
            sha256: Sha256Digest::of(&body),
            revision,
            node_id: "e2e-exporter".into(),
            exported_at: "2026-11-26T10:00:00.000Z".into(),
            signature: None,
            key_id: None,
        };
        let signing = signing_key.map(|key| ExportSigning { key, version });
        let store = s3_store(&self.seaweed, self.seaweed.writer());
        let key = object_key("kong", version).expect("valid key");
        match write_document(store.as_ref(), &key, &body, &metadata, signing, None).await {
            Ok(WriteOutcome::Stored { .. } | WriteOutcome::Resigned { .. }) => revision,
            other => panic!("export failed: {other:?}"),
        }
    }

    /// The filter configuration wiring the three parties, with short intervals for tests.
    pub fn filter_config(&self) -> Value {
        filter_config(&self.cp, &self.signer)
    }

    /// Envoy options pointing its clusters at this stack.
    pub fn envoy_options(&self, concurrency: u32) -> EnvoyOptions {
        let storage_port: u16 = match &self.store_proxy {
            Some(proxy) => proxy.port(),
            None => self
                .seaweed
                .endpoint()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("SeaweedFS endpoint has a port"),
        };
        EnvoyOptions {
            concurrency,
            filter_config: self.filter_config(),
            cp: Some(("127.0.0.1".into(), self.cp.port())),
            companion: Some(("127.0.0.1".into(), self.signer.port())),
            storage: Some(("127.0.0.1".into(), storage_port)),
            ..EnvoyOptions::default()
        }
    }
}

/// The filter configuration wiring a control plane and a signer (the storage upstream is
/// `fallback_storage`), with short intervals for tests.
pub fn filter_config(cp: &MockCp, signer: &CompanionProcess) -> Value {
    json!({
        "version": VERSION,
        "control_plane": {
            "upstream": "fallback_cp",
            "authority": cp.authority(),
            "path": "/config",
            "timeout_ms": 1000,
        },
        "companion": {
            "upstream": "fallback_companion",
            "authority": format!("127.0.0.1:{}", signer.port()),
            "token": TOKEN,
            "timeout_ms": 1000,
        },
        "storage": {"upstream": "fallback_storage", "timeout_ms": 2000},
        "poll_interval_ms": 500,
        "fallback_refresh_interval_ms": 2000,
        "cp_failure_threshold": 2,
        "retry_initial_ms": 200,
        "retry_max_ms": 1000,
        "tick_ms": 100,
        "leader_lease_ms": 1000,
        "allow_debug_header": true,
    })
}
