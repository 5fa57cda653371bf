//! Azure Blob Storage end to end against a real Azurite, with the real companion binary and the
//! real Envoy: `export` with a connection string stores the blob and its metadata, `doctor`
//! and `presign` cover `azure://`, and Envoy started with its control plane down serves the
//! config it fetched through the signer's SAS URL. No log line carries the account key or a
//! SAS signature.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use wasm_tests::azurite::Azurite;
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::request;
use wasm_tests::stack::{filter_config, routing_document, TOKEN, VERSION};
use wasm_tests::{companion_binary, CompanionProcess, EchoServer, Envoy, MockCp};

use fallback_companion::storage::azure::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};

const WAIT: Duration = Duration::from_secs(30);

fn connection_string(azurite: &Azurite) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={};",
        azurite.endpoint()
    )
}

/// Runs the companion binary with only `env` (and a HOME); returns (exit code, stdout, stderr).
async fn companion(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(companion_binary());
    command
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_NODE_ID", "azure-e2e")
        .env("FALLBACK_LOG", "debug");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("--- companion {args:?} ---\n{stdout}{stderr}");
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(DEV_ACCOUNT_KEY), "account key in:\n{text}");
    assert!(!text.contains("sig="), "SAS signature in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_with_a_connection_string_then_envoy_imports_through_the_signers_sas() {
    let azurite = Azurite::start().await;
    let alpha = EchoServer::start("alpha").await;
    let mut cp = MockCp::start().await;

    // The one-shot export, as a CI pipeline runs it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    let document = routing_document(&[("shop", alpha.port())]);
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let storage = format!("azure://{}/kong", azurite.container());
    let (code, _, stderr) = companion(
        &[
            "export",
            "--config-file",
            file.to_str().unwrap(),
            "--revision",
            "4242",
        ],
        &[
            ("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage.clone()),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                connection_string(&azurite),
            ),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_no_secret(&stderr);
    let key = format!("kong/{VERSION}/config.json");
    let raw = azurite
        .raw_blob(&key)
        .await
        .expect("the export is in Azurite");
    let stored: Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(stored["services"][0]["name"], "shop-service");
    assert_eq!(raw.header("x-ms-meta-revision"), Some("4242"));
    assert_eq!(raw.header("x-ms-meta-node_id"), Some("azure-e2e"));
    assert_eq!(
        raw.header("x-ms-meta-sha256").map(str::len),
        Some(64),
        "{:?}",
        raw.headers
    );
    assert!(raw.header("x-ms-meta-exported_at").is_some());

    // The signer role with an account name and key, as on a data-plane host.
    let signer = CompanionProcess::start(&[
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage),
        ("AZURE_STORAGE_ACCOUNT", DEV_ACCOUNT.into()),
        ("AZURE_STORAGE_KEY", DEV_ACCOUNT_KEY.into()),
        ("AZURE_STORAGE_BLOB_ENDPOINT", azurite.endpoint()),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_SIGNER_TOKENS", TOKEN.into()),
        ("FALLBACK_LOG", "debug".into()),
    ])
    .await;

    // Envoy starts while the control plane is down and serves what Azure holds.
    cp.stop().await;
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: 2,
        filter_config: filter_config(&cp, &signer),
        cp: Some(("127.0.0.1".into(), cp.port())),
        companion: Some(("127.0.0.1".into(), signer.port())),
        storage: Some(("127.0.0.1".into(), azurite.port())),
        ..EnvoyOptions::default()
    })
    .await;
    wait_until("the exported route is served from Azure", WAIT, || async {
        match request(
            "GET",
            &format!("{}/shop/x", envoy.listener_url()),
            &[("kong-debug", "1")],
            Vec::new(),
        )
        .await
        {
            Ok(r) => r.status == 200 && r.json()["upstream"] == "alpha",
            Err(_) => false,
        }
    })
    .await;
    let r = request(
        "GET",
        &format!("{}/shop/x", envoy.listener_url()),
        &[("kong-debug", "1")],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.header("x-fallback-source"), Some("fallback"));
    assert_eq!(r.header("x-fallback-revision"), Some("4242"));
    assert_eq!(envoy.stat("wasmcustom.fallback_revision").await, Some(4242));
    assert_no_secret(&signer.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_presign_cover_azure() {
    let azurite = Azurite::start().await;
    let env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            (
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                format!("azure://{}/kong", azurite.container()),
            ),
            ("AZURE_STORAGE_ACCOUNT", DEV_ACCOUNT.to_owned()),
            ("AZURE_STORAGE_BLOB_ENDPOINT", azurite.endpoint()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    std::fs::write(&file, br#"{"_format_version":"3.0"}"#).unwrap();
    let (code, _, stderr) = companion(
        &["export", "--config-file", file.to_str().unwrap()],
        &env(&[("AZURE_STORAGE_KEY", DEV_ACCOUNT_KEY.into())]),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");

    let (code, report, stderr) = companion(
        &["doctor"],
        &env(&[("AZURE_STORAGE_KEY", DEV_ACCOUNT_KEY.into())]),
    )
    .await;
    assert_eq!(code, 0, "{report}{stderr}");
    for check in [
        "credentials",
        "store reachable",
        "clock skew",
        "read permission",
        "write permission",
        "config.json",
        "signed URL",
    ] {
        assert!(
            report.contains(&format!("[ ok ] {check}:")),
            "{check} not ok in\n{report}"
        );
    }
    assert!(
        report.contains("Shared Key of account devstoreaccount1"),
        "{report}"
    );
    assert_no_secret(&format!("{report}{stderr}"));

    // A wrong key: doctor names the key, not a permission, and shows no key.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let (code, report, stderr) = companion(
        &["doctor", "--import", "on"],
        &env(&[("AZURE_STORAGE_KEY", wrong.into())]),
    )
    .await;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("[FAIL] read permission") && report.contains("AZURE_STORAGE_KEY"),
        "{report}"
    );
    assert!(!format!("{report}{stderr}").contains(wrong));

    // presign --at is reproducible, and the URL reads the blob (Azurite checks the signature).
    let object = format!("azure://{}/kong/{VERSION}/config.json", azurite.container());
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let args = ["presign", &object, "--expires-in", "600", "--at", &at];
    let key_env = env(&[("AZURE_STORAGE_KEY", DEV_ACCOUNT_KEY.into())]);
    let (code, first, stderr) = companion(&args, &key_env).await;
    assert_eq!(code, 0, "{stderr}");
    let (_, second, _) = companion(&args, &key_env).await;
    assert_eq!(first, second, "same --at, same URL");
    let url = first.trim();
    assert!(
        url.starts_with(&format!(
            "{}/{}/kong/",
            azurite.endpoint(),
            azurite.container()
        )),
        "{url}"
    );
    let got = wasm_tests::http::get(url).await.unwrap();
    assert_eq!(got.status, 200, "{url}: {}", got.text());
    assert_eq!(got.body, br#"{"_format_version":"3.0"}"#.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_companion_exports_what_the_cp_serves_to_azure_and_envoy_imports_it() {
    let azurite = Azurite::start().await;
    let beta = EchoServer::start("beta").await;
    let mut cp = MockCp::start().await;
    let document = routing_document(&[("api", beta.port())]);
    cp.set_document(&document);

    // Both roles in one process, as a backup node that also signs for its data planes.
    let companion = CompanionProcess::start(&[
        ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        (
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("azure://{}/kong", azurite.container()),
        ),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string(&azurite),
        ),
        ("FALLBACK_CONTROL_PLANE_URL", format!("{}/config", cp.url())),
        ("FALLBACK_POLL_INTERVAL", "200ms".into()),
        ("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "200ms".into()),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_SIGNER_TOKENS", TOKEN.into()),
        ("FALLBACK_NODE_ID", "backup-node".into()),
        ("FALLBACK_LOG", "debug".into()),
    ])
    .await;
    let key = format!("kong/{VERSION}/config.json");
    wait_until("the CP's document is in Azure", WAIT, || async {
        azurite
            .raw_blob(&key)
            .await
            .is_some_and(|raw| raw.header("x-ms-meta-node_id") == Some("backup-node"))
    })
    .await;

    cp.stop().await;
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: 1,
        filter_config: filter_config(&cp, &companion),
        cp: Some(("127.0.0.1".into(), cp.port())),
        companion: Some(("127.0.0.1".into(), companion.port())),
        storage: Some(("127.0.0.1".into(), azurite.port())),
        ..EnvoyOptions::default()
    })
    .await;
    wait_until("the exported route is served from Azure", WAIT, || async {
        match request(
            "GET",
            &format!("{}/api/x", envoy.listener_url()),
            &[("kong-debug", "1")],
            Vec::new(),
        )
        .await
        {
            Ok(r) => {
                r.status == 200
                    && r.json()["upstream"] == "beta"
                    && r.header("x-fallback-source") == Some("fallback")
            }
            Err(_) => false,
        }
    })
    .await;
    let log = companion.log();
    assert!(log.contains("exported"), "the log says what it did:\n{log}");
    assert_no_secret(&log);
}
