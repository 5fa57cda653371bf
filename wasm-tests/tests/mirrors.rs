//! Mirrors end to end: the export role writes every export to the primary storage and to each
//! mirror (`FALLBACK_MIRROR_STORAGES`); the signer lists a signed URL for every store holding the
//! current revision, primary first; with the primary copy deleted, the filter in the real Envoy
//! imports from the mirror.

use bytes::Bytes;
use fallback_companion::exporter::ExportMirror;
use fallback_core::export::object_key;
use fallback_core::wire::SignedConfig;
use std::time::Duration;
use wasm_tests::fixtures::{fast_settings, s3_store, wait_until, RunningExporter};
use wasm_tests::http::{self, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack, TOKEN, VERSION};
use wasm_tests::{CompanionProcess, Envoy};

const WAIT: Duration = Duration::from_secs(30);

async fn ask(signer: &CompanionProcess) -> HttpResponse {
    let auth = format!("Bearer {TOKEN}");
    http::request(
        "GET",
        &format!("{}/v1/fallback-config?version={VERSION}", signer.url()),
        &[("authorization", auth.as_str())],
        Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_copy_deleted_the_filter_imports_from_the_mirror() {
    let mut stack = ImportStack::start().await;
    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.alpha.port())]));
    let primary = s3_store(&stack.seaweed, stack.seaweed.writer());
    let mirror_key = object_key("mirror", VERSION).unwrap();
    let mut settings = fast_settings(&stack.key(), "exporter");
    settings.mirrors = vec![ExportMirror {
        key: mirror_key.clone(),
        store: primary.clone(),
    }];
    let exporter = RunningExporter::start(
        settings,
        &format!("{}/config", stack.cp.url()),
        primary.clone(),
    );
    wait_until("the export reaches the mirror", WAIT, || async {
        primary.head(&mirror_key).await.ok().flatten().is_some()
    })
    .await;
    exporter.stop().await;
    let in_primary = primary.head(&stack.key()).await.unwrap().unwrap();
    let in_mirror = primary.head(&mirror_key).await.unwrap().unwrap();
    assert_eq!(in_primary.metadata, in_mirror.metadata, "the same export");

    // A signer with the mirror: both stores listed, primary first.
    let signer = CompanionProcess::start(&[
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        (
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", stack.seaweed.bucket()),
        ),
        (
            "FALLBACK_MIRROR_STORAGES",
            format!("s3://{}/mirror", stack.seaweed.bucket()),
        ),
        ("AWS_CONFIG_STORAGE_ENDPOINT", stack.seaweed.endpoint()),
        (
            "AWS_ACCESS_KEY_ID",
            stack.seaweed.reader().access_key.clone(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            stack.seaweed.reader().secret_key.clone(),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_SIGNER_TOKENS", TOKEN.into()),
        ("FALLBACK_LOG", "info".into()),
    ])
    .await;
    let r = ask(&signer).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let both: SignedConfig = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(both.urls.len(), 2, "{both:?}");
    assert!(both.urls[0].url.contains("/kong/"), "primary first");
    assert!(both.urls[1].url.contains("/mirror/"));
    assert_eq!(both.url, both.urls[0].url);

    // The primary copy is gone: only the mirror is handed out, and the filter imports from it.
    primary.delete(&stack.key()).await.unwrap();
    let r = ask(&signer).await;
    let mirror_only: SignedConfig = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(mirror_only.urls.len(), 1, "{mirror_only:?}");
    assert!(mirror_only.url.contains("/mirror/"));
    assert_eq!(mirror_only.revision, both.revision);

    stack.cp.stop().await;
    let mut options = stack.envoy_options(2);
    options.companion = Some(("127.0.0.1".into(), signer.port()));
    options.filter_config["companion"]["authority"] = format!("127.0.0.1:{}", signer.port()).into();
    options.filter_config["control_plane"] = serde_json::Value::Null;
    let envoy = Envoy::start(options).await;
    wait_until("the mirror's copy is served", WAIT, || async {
        http::get(&format!("{}/shop/x", envoy.listener_url()))
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["upstream"] == "alpha")
    })
    .await;
}

/// An Azure mirror with its own account key (`FALLBACK_MIRROR_1_AZURE_*`), the primary a
/// `file://` store with no Azure credential at all: the companion binary's export role writes
/// the export to Azurite, which checks the Shared Key signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_mirror_with_its_own_credentials_gets_every_export() {
    use fallback_companion::storage::azure::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
    let azurite = wasm_tests::azurite::Azurite::start().await;
    let cp = wasm_tests::MockCp::start().await;
    cp.set_document(&routing_document(&[("shop", 9)]));
    let primary = tempfile::tempdir().unwrap();
    let companion = CompanionProcess::start(&[
        ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on".into()),
        (
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("file://{}", primary.path().display()),
        ),
        (
            "FALLBACK_MIRROR_STORAGES",
            format!("azure://{}/mirror", azurite.container()),
        ),
        (
            "FALLBACK_MIRROR_1_AZURE_STORAGE_ACCOUNT",
            DEV_ACCOUNT.into(),
        ),
        (
            "FALLBACK_MIRROR_1_AZURE_STORAGE_KEY",
            DEV_ACCOUNT_KEY.into(),
        ),
        (
            "FALLBACK_MIRROR_1_AZURE_STORAGE_BLOB_ENDPOINT",
            azurite.endpoint(),
        ),
        ("FALLBACK_CONTROL_PLANE_URL", format!("{}/config", cp.url())),
        ("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "100ms".into()),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_LOG", "info".into()),
    ])
    .await;
    let mirror_key = object_key("mirror", VERSION).unwrap();
    wait_until("the export reaches the Azure mirror", WAIT, || async {
        azurite.raw_blob(&mirror_key).await.is_some()
    })
    .await;
    let blob = azurite.raw_blob(&mirror_key).await.unwrap();
    let sha = blob
        .header("x-ms-meta-sha256")
        .expect("the export's metadata on the blob")
        .to_owned();
    assert_eq!(
        sha,
        fallback_core::digest::Sha256Digest::of(&blob.body).to_hex()
    );
    drop(companion);
}
