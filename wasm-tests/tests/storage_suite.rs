//! One behaviour suite, run against every storage backend: `file://`, S3 (real SeaweedFS with
//! real SigV4 checks), GCS (fake-gcs-server) and Azure Blob (Azurite, which checks Shared Key
//! signatures and SAS tokens). Then what only S3 can show: permissions, bad
//! credentials, a store that is down, and the upload's checksum and metadata as the store itself
//! holds them; and for GCS the metadata and generations as the emulator holds them.
//!
//! fake-gcs-server checks no credentials, so nothing about permissions or credentials can be
//! shown with it (those are S3-only tests here; GCS signing is proved by Google's vectors in
//! `companion/tests/presign.rs`). Every precondition assertion of the suite runs for GCS: the
//! emulator ignores `ifGenerationMatch` on media uploads, but honours it on the multipart
//! uploads the companion sends (both `0`, create-only, and a stale generation give 412).

use bytes::Bytes;
use fallback_companion::exporter::{write_document, WriteOutcome};
use fallback_companion::storage::{
    AzureStore, ConfigStore, FileStore, GcsSettings, GcsStore, Precondition, StoreError,
};
use fallback_core::digest::Sha256Digest;
use fallback_core::export::ExportMetadata;
use std::sync::Arc;
use wasm_tests::azurite::Azurite;
use wasm_tests::fake_gcs::FakeGcs;
use wasm_tests::fixtures::s3_store;
use wasm_tests::{Credentials, SeaweedFs};

fn metadata(body: &[u8], revision: u64, node: &str) -> ExportMetadata {
    ExportMetadata {
        sha256: Sha256Digest::of(body),
        revision,
        node_id: node.into(),
        exported_at: "2026-11-26T10:00:00.000Z".into(),
        signature: None,
        key_id: None,
    }
}

/// What every backend must do.
async fn behaviour_suite(store: Arc<dyn ConfigStore>) {
    let key = "suite/3.4.1.0/config.json";

    // Nothing stored yet.
    assert!(store.head(key).await.unwrap().is_none());
    assert!(store.get(key).await.unwrap().is_none());

    // Create-only write, then read back body and metadata.
    let v1 = Bytes::from_static(br#"{"_format_version":"3.0","n":1}"#);
    let m1 = metadata(&v1, 100, "node-a");
    let tag1 = store
        .put(key, v1.clone(), &m1, Precondition::Absent)
        .await
        .unwrap();
    let head = store
        .head(key)
        .await
        .unwrap()
        .expect("stored object is visible");
    assert_eq!(head.metadata.as_ref(), Some(&m1));
    let got = store
        .get(key)
        .await
        .unwrap()
        .expect("stored object is readable");
    assert_eq!(got.body, v1);
    assert_eq!(got.stored.metadata.as_ref(), Some(&m1));
    assert!(!tag1.is_empty());

    // Create-only fails once something is there; If-Match fails on a stale tag.
    let v2 = Bytes::from_static(br#"{"_format_version":"3.0","n":2}"#);
    let m2 = metadata(&v2, 200, "node-b");
    let err = store
        .put(key, v2.clone(), &m2, Precondition::Absent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    let err = store
        .put(
            key,
            v2.clone(),
            &m2,
            Precondition::Matches("\"not-the-tag\"".into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    assert_eq!(
        store.get(key).await.unwrap().unwrap().body,
        v1,
        "failed writes change nothing"
    );

    // If-Match with the current tag replaces, and the tag changes.
    let tag2 = store
        .put(
            key,
            v2.clone(),
            &m2,
            Precondition::Matches(head.etag.clone()),
        )
        .await
        .unwrap();
    assert_ne!(tag2, tag1);
    let got = store.get(key).await.unwrap().unwrap();
    assert_eq!(got.body, v2);
    assert_eq!(got.stored.metadata, Some(m2.clone()));
    let err = store
        .put(key, v1.clone(), &m1, Precondition::Matches(head.etag))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "old tag no longer matches"
    );

    // The exporter's compare-and-swap on top of it.
    assert_eq!(
        write_document(
            store.as_ref(),
            key,
            &v1,
            &metadata(&v1, 150, "node-a"),
            None,
            None
        )
        .await
        .unwrap(),
        WriteOutcome::Superseded {
            stored_revision: 200
        },
        "an older revision never replaces a newer one"
    );
    assert_eq!(
        write_document(
            store.as_ref(),
            key,
            &v2,
            &metadata(&v2, 300, "node-c"),
            None,
            None
        )
        .await
        .unwrap(),
        WriteOutcome::AlreadyStored
    );
    // The same bytes, offered two hours after they were stored while refreshing every hour:
    // written again with the new export time, at the stored revision.
    let later = ExportMetadata {
        exported_at: "2026-11-26T12:00:00.000Z".into(),
        ..metadata(&v2, 310, "node-c")
    };
    let hour = Some(std::time::Duration::from_secs(3600));
    assert!(matches!(
        write_document(store.as_ref(), key, &v2, &later, None, hour)
            .await
            .unwrap(),
        WriteOutcome::Refreshed { revision: 200, .. }
    ));
    let refreshed = store.head(key).await.unwrap().unwrap().metadata.unwrap();
    assert_eq!(
        (
            refreshed.revision,
            refreshed.exported_at.as_str(),
            refreshed.sha256
        ),
        (200, "2026-11-26T12:00:00.000Z", m2.sha256)
    );
    assert_eq!(store.get(key).await.unwrap().unwrap().body, v2);
    assert_eq!(
        write_document(store.as_ref(), key, &v2, &later, None, hour)
            .await
            .unwrap(),
        WriteOutcome::AlreadyStored,
        "refreshed already"
    );

    let v3 = Bytes::from_static(br#"{"_format_version":"3.0","n":3}"#);
    assert!(matches!(
        write_document(
            store.as_ref(),
            key,
            &v3,
            &metadata(&v3, 300, "node-c"),
            None,
            None
        )
        .await
        .unwrap(),
        WriteOutcome::Stored { .. }
    ));
    assert_eq!(store.get(key).await.unwrap().unwrap().body, v3);

    // Many writers at once, revisions in random order: the highest always ends up stored.
    let race_key = "suite/race/config.json";
    let mut writers = tokio::task::JoinSet::new();
    let revisions = [7u64, 3, 12, 1, 9, 12_000, 5, 11, 2, 8];
    for revision in revisions {
        let store = store.clone();
        writers.spawn(async move {
            let body = Bytes::from(format!(r#"{{"_format_version":"3.0","rev":{revision}}}"#));
            let meta = metadata(&body, revision, &format!("racer-{revision}"));
            write_document(store.as_ref(), race_key, &body, &meta, None, None).await
        });
    }
    while let Some(result) = writers.join_next().await {
        result
            .expect("writer task")
            .expect("every racer finishes without an error");
    }
    let winner = store
        .head(race_key)
        .await
        .unwrap()
        .unwrap()
        .metadata
        .unwrap();
    assert_eq!(winner.revision, 12_000);
    assert_eq!(
        store.get(race_key).await.unwrap().unwrap().body,
        Bytes::from(r#"{"_format_version":"3.0","rev":12000}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    behaviour_suite(Arc::new(FileStore::new(dir.path().join("prefix")))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_passes_the_suite_against_seaweedfs() {
    let seaweed = SeaweedFs::start().await;
    behaviour_suite(s3_store(&seaweed, seaweed.writer())).await;
}

fn gcs_store(gcs: &FakeGcs) -> Arc<dyn ConfigStore> {
    Arc::new(
        GcsStore::new(
            gcs.bucket().to_owned(),
            GcsSettings {
                emulator_host: Some(gcs.endpoint()),
                ..GcsSettings::default()
            },
        )
        .expect("emulator settings are valid"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_backend_passes_the_suite_against_fake_gcs_server() {
    let gcs = FakeGcs::start().await;
    behaviour_suite(gcs_store(&gcs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_upload_carries_metadata_and_generation_as_the_emulator_sees_them() {
    let gcs = FakeGcs::start().await;
    let store = gcs_store(&gcs);
    let key = "kong/3.4.1.0/config.json";
    let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
    let meta = metadata(&body, 42, "node-x");
    let tag = store
        .put(key, body.clone(), &meta, Precondition::Absent)
        .await
        .unwrap();
    let raw = gcs
        .raw_resource(key)
        .await
        .expect("object visible in the emulator");
    assert_eq!(raw["generation"].as_str(), Some(tag.as_str()), "{raw}");
    assert_eq!(raw["contentType"], "application/json");
    assert_eq!(raw["metadata"]["sha256"], Sha256Digest::of(&body).to_hex());
    assert_eq!(raw["metadata"]["revision"], "42");
    assert_eq!(raw["metadata"]["node-id"], "node-x");
    assert_eq!(raw["metadata"]["exported-at"], "2026-11-26T10:00:00.000Z");

    // The URL handed to filters reads the object (unsigned: the emulator has no key to check).
    let url = store
        .presign_get(
            key,
            std::time::Duration::from_secs(60),
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();
    let got = wasm_tests::http::get(&url).await.unwrap();
    assert_eq!(got.status, 200, "{url}");
    assert_eq!(got.body, body);

    store.delete(key).await.unwrap();
    assert!(store.head(key).await.unwrap().is_none());
    store.delete(key).await.expect("deleting nothing is fine");
}

/// GCS object names are kept byte for byte: names that begin with `/` or hold `//` are objects
/// of their own, written, listed, read and handed out as themselves; every upload carries the
/// CRC32C GCS checks, in the form the store itself computes. (The emulator's memory backend,
/// which keeps names apart as GCS does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_object_names_are_kept_byte_for_byte_and_uploads_carry_their_crc32c() {
    let gcs = FakeGcs::start_in_memory().await;
    let store = gcs_store(&gcs);
    let names = [
        "kong/3.4.1.0/config.json",
        "/kong/3.4.1.0/config.json",
        "kong//3.4.1.0/config.json",
        "//kong/3.4.1.0/config.json",
    ];
    let body_of = |i: usize| Bytes::from(format!(r#"{{"_format_version":"3.0","n":{i}}}"#));
    for (i, name) in names.iter().enumerate() {
        let body = body_of(i);
        store
            .put(
                name,
                body.clone(),
                &metadata(&body, 1, "n"),
                Precondition::Absent,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let listing = wasm_tests::http::get(&format!(
        "{}/storage/v1/b/{}/o",
        gcs.endpoint(),
        gcs.bucket()
    ))
    .await
    .unwrap()
    .json();
    let mut stored: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    stored.sort_unstable();
    let mut expected = names.to_vec();
    expected.sort_unstable();
    assert_eq!(stored, expected, "four objects, named as written");
    for (i, name) in names.iter().enumerate() {
        let body = body_of(i);
        let head = store.head(name).await.unwrap().expect(name);
        assert_eq!(
            head.metadata.unwrap().sha256,
            Sha256Digest::of(&body),
            "{name}"
        );
        assert_eq!(store.get(name).await.unwrap().unwrap().body, body, "{name}");
        let url = store
            .presign_get(
                name,
                std::time::Duration::from_secs(60),
                std::time::SystemTime::now(),
            )
            .await
            .unwrap();
        let got = wasm_tests::http::get(&url).await.unwrap();
        assert_eq!(
            (got.status, got.body),
            (200, body.to_vec()),
            "{name}: {url}"
        );
        let raw = gcs.raw_resource(name).await.expect(name);
        assert_eq!(
            raw["crc32c"].as_str(),
            Some(fallback_companion::storage::gcs::crc32c_base64(&body).as_str()),
            "{name}: the store's own CRC32C of the body is the one the upload carried"
        );
    }
    store.delete(names[1]).await.unwrap();
    assert!(store.head(names[1]).await.unwrap().is_none());
    assert!(
        store.head(names[0]).await.unwrap().is_some(),
        "deleting /kong/... leaves kong/... alone"
    );
}

/// The storage URL's prefix reaches GCS byte for byte: `gcs://bucket//kong` exports to the
/// object `/kong/<version>/config.json` (as Kong's own exporter names it), not `kong/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gcs_prefix_beginning_with_a_slash_names_the_objects_as_written() {
    let gcs = FakeGcs::start_in_memory().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kong.json");
    std::fs::write(
        &config,
        r#"{"_format_version":"3.0","services":[{"name":"s","host":"h"}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(wasm_tests::companion_binary())
        .env_clear()
        .env("STORAGE_EMULATOR_HOST", gcs.endpoint())
        .args(["export", "--config-version", "3.4.1.0", "--storage"])
        .arg(format!("gcs://{}//kong", gcs.bucket()))
        .arg("--config-file")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = format!("gs://{}//kong/3.4.1.0/config.json", gcs.bucket());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&stored),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(gcs
        .raw_resource("/kong/3.4.1.0/config.json")
        .await
        .is_some());
    assert!(gcs.raw_resource("kong/3.4.1.0/config.json").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_emulator_down_is_transient() {
    let mut gcs = FakeGcs::start().await;
    let store = gcs_store(&gcs);
    gcs.stop().await;
    let err = store.head("k").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_carries_checksum_and_metadata_as_the_store_sees_them() {
    let seaweed = SeaweedFs::start().await;
    let store = s3_store(&seaweed, seaweed.writer());
    let key = "kong/3.4.1.0/config.json";
    let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
    let meta = metadata(&body, 42, "node-x");
    store
        .put(key, body.clone(), &meta, Precondition::Absent)
        .await
        .unwrap();

    // Read behind the companion's back, through the filer.
    assert_eq!(seaweed.raw_object(key).await.as_deref(), Some(&body[..]));
    let raw = seaweed
        .raw_metadata(key)
        .await
        .expect("metadata readable via the filer");
    let find = |name: &str| {
        raw.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} missing from {raw:?}"))
    };
    assert_eq!(find("x-amz-meta-sha256"), Sha256Digest::of(&body).to_hex());
    assert_eq!(find("x-amz-meta-revision"), "42");
    assert_eq!(find("x-amz-meta-node-id"), "node-x");
    assert_eq!(find("x-amz-meta-exported-at"), "2026-11-26T10:00:00.000Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_read_only_identity_is_told_which_permission_it_lacks() {
    let seaweed = SeaweedFs::start().await;
    let key = "kong/1/config.json";
    let body = Bytes::from_static(b"{}");
    s3_store(&seaweed, seaweed.writer())
        .put(
            key,
            body.clone(),
            &metadata(&body, 1, "w"),
            Precondition::Absent,
        )
        .await
        .unwrap();

    let reader = s3_store(&seaweed, seaweed.reader());
    assert_eq!(
        reader.get(key).await.unwrap().unwrap().body,
        body,
        "the reader can read"
    );
    let err = reader
        .put(
            key,
            body.clone(),
            &metadata(&body, 2, "r"),
            Precondition::Absent,
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::PermissionDenied {
            permission,
            resource,
            ..
        } => {
            assert_eq!(*permission, "s3:PutObject");
            assert!(
                resource.ends_with(&format!("{}/{key}", seaweed.bucket())),
                "{resource}"
            );
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("permission denied") && text.contains("s3:PutObject"),
        "{text}"
    );
    assert!(
        !text.contains(&seaweed.reader().secret_key),
        "no secret in {text}"
    );
    assert!(
        !err.is_transient(),
        "a permission problem is not retried as if it were an outage"
    );
}

/// The error of a small create-only write that is expected to fail.
async fn failed_put(store: Arc<dyn ConfigStore>) -> StoreError {
    let body = Bytes::from_static(b"{}");
    store
        .put(
            "k",
            body.clone(),
            &metadata(&body, 1, "n"),
            Precondition::Absent,
        )
        .await
        .expect_err("the write must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_and_unknown_key_are_named_without_leaking_the_secret() {
    let seaweed = SeaweedFs::start().await;
    let wrong_secret = Credentials {
        access_key: seaweed.writer().access_key.clone(),
        secret_key: "definitely-not-the-secret".into(),
    };
    let err = failed_put(s3_store(&seaweed, &wrong_secret)).await;
    let text = err.to_string();
    assert!(matches!(err, StoreError::BadCredentials { .. }), "{text}");
    assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
    assert!(!text.contains("definitely-not-the-secret"), "{text}");

    let unknown = Credentials {
        access_key: "AKIDUNKNOWN".into(),
        secret_key: "x".into(),
    };
    let err = failed_put(s3_store(&seaweed, &unknown)).await;
    assert!(matches!(err, StoreError::BadCredentials { .. }), "{err}");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_down_is_transient_and_missing_bucket_is_not() {
    let mut seaweed = SeaweedFs::start().await;
    let store = s3_store(&seaweed, seaweed.writer());
    seaweed.stop().await;
    let err = store.head("k").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    seaweed.restart().await;

    let missing = fallback_companion::storage::S3Store::new(
        "no-such-bucket".into(),
        wasm_tests::fixtures::s3_settings(&seaweed, seaweed.writer()),
    )
    .unwrap();
    // SeaweedFS creates buckets on an admin's first PUT, so the missing bucket shows on a read.
    let err = missing.get("k").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

fn azure_store(azurite: &Azurite) -> Arc<dyn ConfigStore> {
    Arc::new(
        AzureStore::new(azurite.container().to_owned(), azurite.settings())
            .expect("Azurite settings are valid"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend_passes_the_suite_against_azurite() {
    let azurite = Azurite::start().await;
    behaviour_suite(azure_store(&azurite)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_upload_carries_checksum_and_metadata_and_its_sas_reads_but_never_writes() {
    let azurite = Azurite::start().await;
    let store = azure_store(&azurite);
    let key = "kong/3.4.1.0/config.json";
    let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
    let mut meta = metadata(&body, 42, "node-x");
    meta.signature = Some("c2lnbmF0dXJl".into());
    let tag = store
        .put(key, body.clone(), &meta, Precondition::Absent)
        .await
        .unwrap();

    // As Azurite holds it, behind the companion's back.
    let raw = azurite
        .raw_blob(key)
        .await
        .expect("blob visible in Azurite");
    assert_eq!(raw.body, body);
    assert_eq!(raw.header("etag"), Some(tag.as_str()));
    assert_eq!(raw.header("content-type"), Some("application/json"));
    use base64::Engine;
    use md5::Digest;
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
    assert_eq!(
        raw.header("content-md5"),
        Some(md5.as_str()),
        "the checksum Azure verified is stored with the blob"
    );
    assert_eq!(
        raw.header("x-ms-meta-sha256"),
        Some(Sha256Digest::of(&body).to_hex().as_str())
    );
    assert_eq!(raw.header("x-ms-meta-revision"), Some("42"));
    assert_eq!(raw.header("x-ms-meta-node_id"), Some("node-x"));
    assert_eq!(
        raw.header("x-ms-meta-exported_at"),
        Some("2026-11-26T10:00:00.000Z")
    );
    assert_eq!(raw.header("x-ms-meta-signature"), Some("c2lnbmF0dXJl"));

    // The SAS handed to filters reads exactly that blob, Azurite checking its signature.
    let url = store
        .presign_get(
            key,
            std::time::Duration::from_secs(60),
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();
    assert!(url.contains("sp=r&") && url.contains("sr=b&"), "{url}");
    let got = wasm_tests::http::get(&url).await.unwrap();
    assert_eq!(got.status, 200, "{url}: {}", got.text());
    assert_eq!(got.body, body);

    // …and nothing else: no write, no delete, no other blob, no tampered signature.
    let put = wasm_tests::http::request(
        "PUT",
        &url,
        &[("x-ms-blob-type", "BlockBlob")],
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(
        put.status,
        403,
        "a read-only SAS must not write: {}",
        put.text()
    );
    let delete = wasm_tests::http::request("DELETE", &url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(delete.status, 403, "{}", delete.text());
    let other = wasm_tests::http::get(&url.replace("config.json?", "other.json?"))
        .await
        .unwrap();
    assert_eq!(
        other.status,
        403,
        "the SAS names one blob: {}",
        other.text()
    );
    assert_eq!(
        azurite.raw_blob(key).await.unwrap().body,
        body,
        "refused writes changed nothing"
    );

    // An expired SAS is refused.
    let old = store
        .presign_get(
            key,
            std::time::Duration::from_secs(60),
            std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(wasm_tests::http::get(&old).await.unwrap().status, 403);

    store.delete(key).await.unwrap();
    assert!(store.head(key).await.unwrap().is_none());
    store.delete(key).await.expect("deleting nothing is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_wrong_key_is_named_without_leaking_it_and_a_missing_container_is_not_transient() {
    let azurite = Azurite::start().await;
    // A well-formed key that is not the account's.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let store: Arc<dyn ConfigStore> = Arc::new(
        AzureStore::new(
            azurite.container().to_owned(),
            azurite.settings_with_key(wrong),
        )
        .unwrap(),
    );
    let err = failed_put(store.clone()).await;
    let text = err.to_string();
    assert!(matches!(err, StoreError::BadCredentials { .. }), "{text}");
    assert!(text.contains("AZURE_STORAGE_KEY"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!err.is_transient(), "{text}");
    let err = store.head("k").await.unwrap_err();
    assert!(matches!(err, StoreError::BadCredentials { .. }), "{err}");

    let missing: Arc<dyn ConfigStore> =
        Arc::new(AzureStore::new("no-such-container".into(), azurite.settings()).unwrap());
    let err = missing.get("k").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("no-such-container"), "{err}");
    let err = failed_put(missing).await;
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_emulator_down_is_transient() {
    let mut azurite = Azurite::start().await;
    let store = azure_store(&azurite);
    azurite.stop().await;
    let err = store.head("k").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}
