//! The export role end to end: a mock control plane, the companion's export loop, and a real
//! SeaweedFS with a writer and a read-only identity. The one-shot `export` runs as the real binary.

use fallback_companion::signing::SigningKey;
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::export::object_key;
use fallback_core::signature::{verify_manifest, ExportManifest, PublicKey, Signature};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use wasm_tests::fixtures::{
    document, fast_settings, invalid_document, s3_store, wait_until, RunningExporter,
};
use wasm_tests::{companion_binary, MockCp, SeaweedFs};

const WAIT: Duration = Duration::from_secs(20);

const VERSION: &str = "3.4.1.0";

fn key() -> String {
    object_key("kong", VERSION).unwrap()
}

fn header<'a>(meta: &'a [(String, String)], name: &str) -> &'a str {
    meta.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{name} missing from {meta:?}"))
}

/// The sha256 metadata of the stored object, read through the filer (not through our code).
async fn stored_sha(seaweed: &SeaweedFs) -> Option<String> {
    let meta = seaweed.raw_metadata(&key()).await?;
    Some(header(&meta, "x-amz-meta-sha256").to_owned())
}

/// The exporter's signing key in these tests.
fn test_signing_key() -> SigningKey {
    SigningKey::parse("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=").expect("a seed")
}

/// An exporter signing with [`test_signing_key`] (and refreshing every `refresh`), once it has
/// stored the control plane's document.
async fn start_signed(
    seaweed: &SeaweedFs,
    cp: &MockCp,
    refresh: Option<Duration>,
) -> RunningExporter {
    let mut settings = fast_settings(&key(), "exporter-1");
    settings.signing_key = Some(test_signing_key());
    settings.refresh = refresh;
    let exporter = RunningExporter::start(
        settings,
        &format!("{}/config", cp.url()),
        s3_store(seaweed, seaweed.writer()),
    );
    wait_until("the document is stored", WAIT, || async {
        stored_sha(seaweed).await.is_some()
    })
    .await;
    exporter
}

/// The stored object's manifest, rebuilt from its raw metadata, and its signature, checked as
/// the filter checks them with the public key an operator would configure.
fn verified_manifest<'m>(
    meta: &'m [(String, String)],
    body: &[u8],
    signing_key: &SigningKey,
) -> (ExportManifest<'m>, Signature, PublicKey) {
    let signature = Signature::parse(header(meta, "x-amz-meta-signature")).unwrap();
    let public_key = PublicKey::parse(&signing_key.public_key_base64()).unwrap();
    let key_id = header(meta, "x-amz-meta-key-id");
    assert_eq!(key_id, public_key.key_id());
    let manifest = ExportManifest {
        version: VERSION,
        revision: header(meta, "x-amz-meta-revision").parse().unwrap(),
        sha256: Sha256Digest::of(body),
        exported_at: header(meta, "x-amz-meta-exported-at"),
        key_id,
    };
    let keys = [public_key];
    assert_eq!(
        verify_manifest(&keys, &manifest, &signature),
        Ok(&public_key)
    );
    (manifest, signature, public_key)
}

fn sha_of(value: &serde_json::Value) -> String {
    Sha256Digest::of(&canonical_json(value)).to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_the_control_planes_document_with_its_metadata() {
    let seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    // Kong's DB-less Admin API shape, `{"config": "<text>"}`: the exporter unwraps it.
    cp.set_admin_api_shape(true);
    let doc = document("v1");
    cp.set_document(&doc);

    let exporter = RunningExporter::start(
        fast_settings(&key(), "exporter-1"),
        &format!("{}/config", cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("the document is stored", WAIT, || async {
        stored_sha(&seaweed).await.is_some()
    })
    .await;

    let body = seaweed.raw_object(&key()).await.unwrap();
    assert_eq!(
        body,
        canonical_json(&doc),
        "the stored bytes are the canonical JSON"
    );
    let meta = seaweed.raw_metadata(&key()).await.unwrap();
    assert_eq!(
        header(&meta, "x-amz-meta-sha256"),
        Sha256Digest::of(&body).to_hex()
    );
    assert_eq!(header(&meta, "x-amz-meta-node-id"), "exporter-1");
    let revision: u64 = header(&meta, "x-amz-meta-revision").parse().unwrap();
    let exported = exporter
        .exported
        .borrow()
        .clone()
        .expect("export published");
    assert_eq!(exported.revision, revision);
    let at = humantime::parse_rfc3339(header(&meta, "x-amz-meta-exported-at")).unwrap();
    let age = std::time::SystemTime::now().duration_since(at).unwrap();
    assert!(
        age < Duration::from_secs(60),
        "exported-at is the export's time, {age:?} ago"
    );
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_signing_key_every_export_carries_a_signature_the_filter_accepts() {
    let seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    cp.set_document(&document("signed"));
    let signing_key = test_signing_key();
    let exporter = start_signed(&seaweed, &cp, None).await;
    exporter.stop().await;

    let body = seaweed.raw_object(&key()).await.unwrap();
    let meta = seaweed.raw_metadata(&key()).await.unwrap();
    let (manifest, signature, public_key) = verified_manifest(&meta, &body, &signing_key);
    let keys = [public_key];
    let replayed = ExportManifest {
        revision: manifest.revision + 1,
        ..manifest.clone()
    };
    assert!(verify_manifest(&keys, &replayed, &signature).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_documents_are_never_uploaded_and_never_replace_a_good_one() {
    let seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    cp.set_document(&invalid_document());
    let exporter = RunningExporter::start(
        fast_settings(&key(), "n"),
        &format!("{}/config", cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("the invalid document is rejected", WAIT, || async {
        exporter.count(|s| &s.invalid_documents) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_sha(&seaweed).await,
        None,
        "nothing stored for an invalid document"
    );
    assert_eq!(exporter.count(|s| &s.uploads), 0);

    let good = document("good");
    cp.set_document(&good);
    wait_until("the good document is stored", WAIT, || async {
        stored_sha(&seaweed).await == Some(sha_of(&good))
    })
    .await;

    cp.set_document(&invalid_document());
    wait_until("the second invalid document is rejected", WAIT, || async {
        exporter.count(|s| &s.invalid_documents) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        stored_sha(&seaweed).await,
        Some(sha_of(&good)),
        "the good one stays"
    );
    assert_eq!(exporter.count(|s| &s.uploads), 1);
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_with_etags_and_does_not_reupload_an_unchanged_document() {
    let seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    let doc = document("same");
    cp.set_document(&doc);
    let exporter = RunningExporter::start(
        fast_settings(&key(), "n"),
        &format!("{}/config", cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("stored", WAIT, || async {
        exporter.count(|s| &s.uploads) == 1
    })
    .await;
    wait_until("a few conditional polls", WAIT, || async {
        exporter.count(|s| &s.not_modified) >= 3
    })
    .await;
    let etag = cp.current_etag().unwrap();
    let requests = cp.requests();
    assert_eq!(
        requests[0].if_none_match, None,
        "the first poll is unconditional"
    );
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.if_none_match.as_deref() == Some(etag.as_str()) && r.status == 304),
        "later polls carry If-None-Match and get 304: {requests:?}"
    );

    // Same document, re-serialised differently (other key order and spacing, new ETag):
    // downloaded again but not uploaded again.
    let pretty = serde_json::to_vec_pretty(&json!({
        "consumers": doc["consumers"], "services": doc["services"], "_format_version": "3.0"
    }))
    .unwrap();
    cp.set_raw_body(pretty, Some("\"other-etag\""));
    wait_until("the re-serialised document is seen", WAIT, || async {
        exporter.count(|s| &s.unchanged) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        exporter.count(|s| &s.uploads),
        1,
        "no second upload of the same document"
    );
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_for_a_while_ends_with_the_newest_document() {
    let mut seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    cp.set_document(&document("v1"));
    let exporter = RunningExporter::start(
        fast_settings(&key(), "n"),
        &format!("{}/config", cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("v1 stored", WAIT, || async {
        stored_sha(&seaweed).await == Some(sha_of(&document("v1")))
    })
    .await;

    seaweed.stop().await;
    for marker in ["v2", "v3", "v4"] {
        cp.set_document(&document(marker));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_until("uploads fail while the store is down", WAIT, || async {
        exporter.count(|s| &s.upload_failures) >= 2
    })
    .await;
    seaweed.restart().await;

    wait_until("the newest document (v4) is stored", WAIT, || async {
        stored_sha(&seaweed).await == Some(sha_of(&document("v4")))
    })
    .await;
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exporters_racing_never_leave_the_older_revision_in_place() {
    // Exporter A holds an older document than exporter B (its CP served it earlier). Both wait
    // on a store that is down, then retry at the same moment when it comes back.
    let mut seaweed = SeaweedFs::start().await;
    seaweed.stop().await;
    let old_cp = MockCp::start().await;
    old_cp.set_document(&document("old"));
    let a = RunningExporter::start(
        fast_settings(&key(), "exporter-a"),
        &format!("{}/config", old_cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("A has tried", WAIT, || async {
        a.count(|s| &s.upload_failures) >= 1
    })
    .await;

    let new_cp = MockCp::start().await;
    new_cp.set_document(&document("new"));
    let b = RunningExporter::start(
        fast_settings(&key(), "exporter-b"),
        &format!("{}/config", new_cp.url()),
        s3_store(&seaweed, seaweed.writer()),
    );
    wait_until("B has tried", WAIT, || async {
        b.count(|s| &s.upload_failures) >= 1
    })
    .await;
    seaweed.restart().await;

    wait_until("both exporters are done", WAIT, || async {
        let a_done = a.count(|s| &s.uploads) + a.count(|s| &s.superseded) >= 1;
        let b_done = b.count(|s| &s.uploads) >= 1;
        a_done && b_done
    })
    .await;
    // Let any late retry of A happen before checking.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(stored_sha(&seaweed).await, Some(sha_of(&document("new"))));
    let meta = seaweed.raw_metadata(&key()).await.unwrap();
    assert_eq!(header(&meta, "x-amz-meta-node-id"), "exporter-b");
    a.stop().await;
    b.stop().await;
}

fn companion_export(
    seaweed: &SeaweedFs,
    identity: &wasm_tests::Credentials,
    file: &std::path::Path,
) -> std::process::Output {
    Command::new(companion_binary())
        .arg("export")
        .arg("--config-file")
        .arg(file)
        .env_clear()
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", seaweed.bucket()),
        )
        .env("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint())
        .env("AWS_ACCESS_KEY_ID", &identity.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &identity.secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("FALLBACK_CONFIG_VERSION", "3.4.1.0")
        .env("FALLBACK_NODE_ID", "ci-pipeline")
        .output()
        .expect("run fallback-companion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_export_binary_stores_with_writer_and_names_the_permission_with_reader() {
    let seaweed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    let doc = document("ci");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let out = companion_export(&seaweed, seaweed.reader(), &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "read-only credentials fail: {stderr}"
    );
    assert!(
        stderr.contains("permission denied") && stderr.contains("s3:PutObject"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&seaweed.reader().secret_key),
        "no secret in: {stderr}"
    );
    assert_eq!(stored_sha(&seaweed).await, None);

    let out = companion_export(&seaweed, seaweed.writer(), &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stored s3://") && stdout.contains("kong/3.4.1.0/config.json"),
        "{stdout}"
    );
    assert_eq!(stored_sha(&seaweed).await, Some(sha_of(&doc)));
    let meta = seaweed.raw_metadata(&key()).await.unwrap();
    assert_eq!(header(&meta, "x-amz-meta-node-id"), "ci-pipeline");

    let out = companion_export(&seaweed, seaweed.writer(), &file);
    assert_eq!(
        out.status.code(),
        Some(0),
        "exporting the same file again is fine"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already holds"));

    std::fs::write(&file, serde_json::to_vec(&invalid_document()).unwrap()).unwrap();
    let out = companion_export(&seaweed, seaweed.writer(), &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].service") && stderr.contains("nowhere"),
        "{stderr}"
    );
    assert_eq!(
        stored_sha(&seaweed).await,
        Some(sha_of(&doc)),
        "an invalid file replaces nothing"
    );
}

#[test]
fn s3_without_a_region_fails_at_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    std::fs::write(&file, serde_json::to_vec(&document("r")).unwrap()).unwrap();
    let out = Command::new(companion_binary())
        .args(["export", "--config-file"])
        .arg(&file)
        .env_clear()
        .env("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", "s3://bucket/kong")
        .env("AWS_ACCESS_KEY_ID", "AKID")
        .env("AWS_SECRET_ACCESS_KEY", "secret-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("AWS_REGION") && stderr.contains("AWS_DEFAULT_REGION"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-value"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_config_gets_a_new_signed_export_time_every_refresh_interval() {
    let seaweed = SeaweedFs::start().await;
    let cp = MockCp::start().await;
    cp.set_document(&document("steady"));
    let signing_key = test_signing_key();
    let exporter = start_signed(&seaweed, &cp, Some(Duration::from_secs(1))).await;
    let first = seaweed.raw_metadata(&key()).await.unwrap();
    let first_at = header(&first, "x-amz-meta-exported-at").to_owned();
    // The control plane keeps answering 304: the same config, still current.
    wait_until("the export time is refreshed", WAIT, || async {
        let meta = seaweed.raw_metadata(&key()).await.unwrap();
        header(&meta, "x-amz-meta-exported-at") != first_at
    })
    .await;
    assert!(exporter.count(|s| &s.not_modified) >= 1);
    exporter.stop().await;

    let meta = seaweed.raw_metadata(&key()).await.unwrap();
    let body = seaweed.raw_object(&key()).await.unwrap();
    assert_eq!(
        header(&meta, "x-amz-meta-revision"),
        header(&first, "x-amz-meta-revision"),
        "the same export, confirmed again: same revision"
    );
    assert_eq!(
        header(&meta, "x-amz-meta-sha256"),
        header(&first, "x-amz-meta-sha256")
    );
    let parse = fallback_core::freshness::parse_rfc3339_ms;
    let (then, now) = (
        parse(&first_at).unwrap(),
        parse(header(&meta, "x-amz-meta-exported-at")).unwrap(),
    );
    assert!(now >= then + 1000, "{first_at} -> {now}");
    // Signed over the new export time: the filter's check accepts it.
    verified_manifest(&meta, &body, &signing_key);
}
