//! The Kong cluster path end to end, with the real Envoy and the built filter: the fake Kong
//! control plane pushes; the backup-node companion (export and signer roles) exports to
//! SeaweedFS and serves the live config on `GET /v1/config`; Envoy's filter polls that as its
//! control plane. Then the control plane and that companion stop, and a fresh Envoy imports
//! the export from storage through a signer-only companion.

use std::time::Duration;
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fake_kong_cp::{ClusterPki, FakeCpSettings, FakeKongCp};
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::request;
use wasm_tests::stack::routing_document;
use wasm_tests::{CompanionProcess, EchoServer, Envoy, SeaweedFs};

const WAIT: Duration = Duration::from_secs(30);
const VERSION: &str = "3.10.0.0";
const TOKEN: &str = "cluster-e2e-token";

fn storage_env(seaweed: &SeaweedFs, writer: bool) -> Vec<(&'static str, String)> {
    let identity = if writer {
        seaweed.writer()
    } else {
        seaweed.reader()
    };
    vec![
        (
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", seaweed.bucket()),
        ),
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        ("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint()),
        ("AWS_ACCESS_KEY_ID", identity.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", identity.secret_key.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_SIGNER_TOKENS", TOKEN.into()),
    ]
}

fn envoy_options(seaweed: &SeaweedFs, backup: u16, signer: u16) -> EnvoyOptions {
    let storage_port: u16 = seaweed
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    EnvoyOptions {
        concurrency: 2,
        filter_config: serde_json::json!({
            "version": VERSION,
            // The backup node's live config stands in for the CP's (Kong's CP has no HTTP
            // config endpoint in hybrid mode).
            "control_plane": {
                "upstream": "fallback_cp",
                "authority": format!("127.0.0.1:{backup}"),
                "path": "/v1/config",
                "token": TOKEN,
                "timeout_ms": 1000,
            },
            "companion": {
                "upstream": "fallback_companion",
                "authority": format!("127.0.0.1:{signer}"),
                "token": TOKEN,
                "timeout_ms": 1000,
            },
            "storage": {"upstream": "fallback_storage", "timeout_ms": 2000},
            "poll_interval_ms": 300,
            "fallback_refresh_interval_ms": 2000,
            "cp_failure_threshold": 2,
            "retry_initial_ms": 200,
            "retry_max_ms": 1000,
            "tick_ms": 100,
            "leader_lease_ms": 1000,
            "allow_debug_header": true,
        }),
        cp: Some(("127.0.0.1".into(), backup)),
        companion: Some(("127.0.0.1".into(), signer)),
        storage: Some(("127.0.0.1".into(), storage_port)),
        ..EnvoyOptions::default()
    }
}

async fn upstream_of(envoy: &Envoy, path: &str) -> Option<String> {
    let r = request(
        "GET",
        &format!("{}{path}", envoy.listener_url()),
        &[("kong-debug", "1")],
        Vec::new(),
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.json()["upstream"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_cp_to_backup_node_to_envoy_and_storage_after_the_outage() {
    let seaweed = SeaweedFs::start().await;
    let alpha = EchoServer::start("alpha").await;
    let beta = EchoServer::start("beta").await;
    let mut cp = FakeKongCp::start(ClusterPki::shared(), FakeCpSettings::default()).await;
    cp.publish(routing_document(&[("shop", alpha.port())]));
    let pair = cp.pki().data_plane().clone();

    let mut backup_env = storage_env(&seaweed, true);
    backup_env.extend([
        ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "0".into()),
        ("KONG_CLUSTER_CONTROL_PLANE", cp.address()),
        ("KONG_CLUSTER_CERT", pair.cert_pem.clone()),
        ("KONG_CLUSTER_CERT_KEY", pair.key_pem.clone()),
        ("FALLBACK_CLUSTER_NODE_VERSION", "3.10.0".into()),
        ("FALLBACK_NODE_ID", "backup-node".into()),
    ]);
    let mut backup = CompanionProcess::start(&backup_env).await;
    let signer = CompanionProcess::start(&storage_env(&seaweed, false)).await;

    // Envoy follows the CP through the backup node's /v1/config.
    let mut envoy = Envoy::start(envoy_options(&seaweed, backup.port(), signer.port())).await;
    wait_until(
        "the CP's route is served through /v1/config",
        WAIT,
        || async { upstream_of(&envoy, "/shop/items").await.as_deref() == Some("alpha") },
    )
    .await;
    assert_eq!(
        envoy.stat("wasmcustom.fallback_source").await,
        Some(1),
        "from the control plane"
    );

    // A push reaches Envoy within a poll.
    cp.publish(routing_document(&[("shop", beta.port())]));
    wait_until("the pushed route is served", WAIT, || async {
        upstream_of(&envoy, "/shop/items").await.as_deref() == Some("beta")
    })
    .await;
    // ... and is in storage.
    let key = format!("kong/{VERSION}/config.json");
    wait_until("the push is exported", WAIT, || async {
        seaweed.raw_object(&key).await.is_some_and(|body| {
            String::from_utf8_lossy(&body).contains(&format!("127.0.0.1:{}", beta.port()))
        })
    })
    .await;

    // The CP and the backup node go away; a fresh Envoy imports the export from storage.
    cp.stop();
    backup.stop().await;
    envoy.stop().await;
    let fresh = Envoy::start(envoy_options(&seaweed, backup.port(), signer.port())).await;
    wait_until(
        "a fresh Envoy serves the export from storage",
        WAIT,
        || async { upstream_of(&fresh, "/shop/items").await.as_deref() == Some("beta") },
    )
    .await;
    assert_eq!(
        fresh.stat("wasmcustom.fallback_source").await,
        Some(2),
        "from the fallback"
    );
}

/// Interop: an object as Kong Enterprise's backup node writes it (the bare config, its own
/// JSON spelling, no Fallback metadata) is imported by a fresh Envoy whose control plane is
/// unreachable, through a signer-only companion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_envoy_imports_an_export_written_by_kong_enterprise() {
    let seaweed = SeaweedFs::start().await;
    let alpha = EchoServer::start("alpha").await;
    let config = routing_document(&[("shop", alpha.port())]);
    let mut table = config.clone();
    table["_transform"] = serde_json::json!(false);
    let kong_body = serde_json::to_vec_pretty(&table).unwrap();
    let key = format!("kong/{VERSION}/config.json");
    let put = seaweed
        .writer_client()
        .put_object(
            seaweed.bucket(),
            &key,
            kong_body,
            &[("content-type", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());

    let signer = CompanionProcess::start(&storage_env(&seaweed, false)).await;
    // No control plane listens on the backup node's port.
    let dead = wasm_tests::free_port();
    let envoy = Envoy::start(envoy_options(&seaweed, dead, signer.port())).await;
    wait_until("Kong's export is served", WAIT, || async {
        upstream_of(&envoy, "/shop/items").await.as_deref() == Some("alpha")
    })
    .await;
    assert_eq!(
        envoy.stat("wasmcustom.fallback_source").await,
        Some(2),
        "from the fallback"
    );
}
