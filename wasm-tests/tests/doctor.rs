//! `fallback-companion doctor`, the real binary, against a real SeaweedFS with its writer
//! identity, its read-only identity and a wrong secret.

use bytes::Bytes;
use fallback_companion::exporter::{write_document, ExportSigning};
use fallback_companion::signing::SigningKey;
use fallback_companion::storage::Precondition;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::ExportMetadata;
use wasm_tests::fixtures::s3_store;
use wasm_tests::{companion_binary, Credentials, SeaweedFs};

const VERSION: &str = "3.4.1.0";

/// Runs doctor with only the given environment; returns (exit code, stdout).
async fn doctor(
    seaweed: &SeaweedFs,
    identity: &Credentials,
    roles: &[(&str, &str)],
) -> (i32, String) {
    let home = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(companion_binary());
    command
        .arg("doctor")
        .env_clear()
        .env("HOME", home.path())
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", seaweed.bucket()),
        )
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_NODE_ID", "doctor-test")
        .env("AWS_ACCESS_KEY_ID", &identity.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &identity.secret_key)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint());
    for (name, value) in roles {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "--- doctor {roles:?} ---\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l[7..].starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no {check} line in\n{report}"))
}

async fn export_a_config(seaweed: &SeaweedFs) {
    let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
    let meta = ExportMetadata {
        sha256: Sha256Digest::of(&body),
        revision: 77,
        node_id: "exporter-1".into(),
        exported_at: "2026-11-26T10:00:00.000Z".into(),
        signature: None,
        key_id: None,
    };
    s3_store(seaweed, seaweed.writer())
        .put(
            &format!("kong/{VERSION}/config.json"),
            body,
            &meta,
            Precondition::Absent,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_with_good_credentials_and_fails_read_only_and_wrong_ones() {
    let seaweed = SeaweedFs::start().await;
    let cp = wasm_tests::MockCp::start().await;
    cp.set_document(&wasm_tests::fixtures::document("v1"));
    let cp_url = cp.url();

    // Exporter with the writer identity, nothing exported yet: all needed checks pass.
    let (code, report) = doctor(
        &seaweed,
        seaweed.writer(),
        &[
            ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on"),
            ("FALLBACK_CONTROL_PLANE_URL", &cp_url),
        ],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert!(line(&report, "source").starts_with("[ ok ]"), "{report}");
    assert!(
        line(&report, "credentials").starts_with("[ ok ]"),
        "{report}"
    );
    assert!(line(&report, "credentials").contains(&seaweed.writer().access_key));
    assert!(line(&report, "store reachable").starts_with("[ ok ]"));
    assert!(line(&report, "clock skew").starts_with("[ ok ]"));
    assert!(
        line(&report, "write permission")
            .contains("created and deleted the probe object kong/.fallback-doctor/"),
        "{report}"
    );
    assert!(
        line(&report, "config.json").starts_with("[ -- ]"),
        "{report}"
    );

    export_a_config(&seaweed).await;

    // Signer with the read-only identity: reads, sees the config, and its signed URL works.
    let (code, report) = doctor(
        &seaweed,
        seaweed.reader(),
        &[("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on")],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert!(line(&report, "read permission").starts_with("[ ok ]"));
    assert!(line(&report, "write permission").starts_with("[ -- ]"));
    let config = line(&report, "config.json");
    assert!(
        config.contains("revision 77") && config.contains("exporter-1"),
        "{config}"
    );
    assert!(
        line(&report, "signed URL").starts_with("[ ok ]"),
        "{report}"
    );

    // The same read-only identity as an exporter: the write probe fails and says why.
    let (code, report) = doctor(
        &seaweed,
        seaweed.reader(),
        &[("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on")],
    )
    .await;
    assert_eq!(code, 1, "{report}");
    let write = line(&report, "write permission");
    assert!(
        write.starts_with("[FAIL]") && write.contains("s3:PutObject"),
        "{write}"
    );

    // A wrong secret: the store is reachable, but the credentials are refused.
    let wrong = Credentials {
        access_key: seaweed.writer().access_key.clone(),
        secret_key: "definitely-not-the-secret".into(),
    };
    let (code, report) = doctor(&seaweed, &wrong, &[]).await;
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "store reachable").starts_with("[ ok ]"),
        "{report}"
    );
    // A HEAD's 403 has no body, so the read check cannot say more than "denied"; the write
    // probe's error document names the bad secret.
    assert!(
        line(&report, "read permission").starts_with("[FAIL]"),
        "{report}"
    );
    let write = line(&report, "write permission");
    assert!(
        write.starts_with("[FAIL]") && write.contains("AWS_SECRET_ACCESS_KEY"),
        "{write}"
    );
    for secret in [
        "definitely-not-the-secret",
        &seaweed.writer().secret_key,
        &seaweed.reader().secret_key,
    ] {
        assert!(!report.contains(secret), "a secret in\n{report}");
    }
}

/// Done-when of issue 12: doctor names the key id of a signed export and says whether the
/// filters' public keys verify it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_key_id_of_a_signed_export_and_checks_public_keys() {
    let seaweed = SeaweedFs::start().await;
    let key = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
    let other = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
    let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
    let meta = ExportMetadata {
        sha256: Sha256Digest::of(&body),
        revision: 78,
        node_id: "exporter-1".into(),
        exported_at: "2026-11-26T10:00:00.000Z".into(),
        signature: None,
        key_id: None,
    };
    let signing = ExportSigning {
        key: &key,
        version: VERSION,
    };
    let store = s3_store(&seaweed, seaweed.writer());
    write_document(
        store.as_ref(),
        &format!("kong/{VERSION}/config.json"),
        &body,
        &meta,
        Some(signing),
        None,
    )
    .await
    .unwrap();

    let import = ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on");
    let (_, report) = doctor(&seaweed, seaweed.reader(), &[import]).await;
    let signature = line(&report, "signature");
    assert!(signature.starts_with("[ ok ]"), "{report}");
    assert!(
        signature.contains(&format!("signed by key id {}", key.key_id())),
        "{report}"
    );

    let trusted = format!("{},{}", other.public_key_base64(), key.public_key_base64());
    let (code, report) = doctor(
        &seaweed,
        seaweed.reader(),
        &[import, ("FALLBACK_PUBLIC_KEYS", &trusted)],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    let signature = line(&report, "signature");
    assert!(
        signature.contains(&format!("key {} verifies it", key.key_id())),
        "{report}"
    );
    assert!(signature.contains(&format!("key {} does not verify it", other.key_id())));

    let untrusted = other.public_key_base64();
    let (code, report) = doctor(
        &seaweed,
        seaweed.reader(),
        &[import, ("FALLBACK_PUBLIC_KEYS", &untrusted)],
    )
    .await;
    assert_eq!(code, 1, "{report}");
    assert!(line(&report, "signature").starts_with("[FAIL]"), "{report}");
}
