//! The signer role end to end: filters ask the companion for a short-lived signed URL and
//! fetch `config.json` with it, holding no storage credentials.
//!
//! - S3: a real SeaweedFS checks the presigned SigV4 URLs; the signer uses the *reader*
//!   identity, the export is written with the *writer* one.
//! - `file://`: the companion serves the object itself behind HMAC-signed URLs.
//! - The real binary: `fallback-companion run` with environment variables.

use bytes::Bytes;
use fallback_companion::exporter::{write_document, WriteOutcome};
use fallback_companion::secret::Secret;
use fallback_companion::storage::{ConfigStore, FileStore, UrlSigner};
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::export::{object_key, ExportMetadata};
use fallback_core::wire::SignedConfig;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasm_tests::fixtures::{document, s3_store, signer_settings, wait_until, RunningSigner};
use wasm_tests::http::{self, HttpResponse};
use wasm_tests::{companion_binary, free_port, SeaweedFs};

const TOKEN: &str = "filter-token-6f1d2c";
const VERSION: &str = "3.4.1.0";
const WAIT: Duration = Duration::from_secs(30);

fn key() -> String {
    object_key("kong", VERSION).unwrap()
}

/// Exports `marker`'s document under `key` and returns its bytes and metadata.
async fn export(store: &dyn ConfigStore, key: &str, marker: &str) -> (Bytes, ExportMetadata) {
    let body = Bytes::from(canonical_json(&document(marker)));
    let metadata = ExportMetadata {
        sha256: Sha256Digest::of(&body),
        revision: 1_700_000_000_000 + marker.len() as u64,
        node_id: "exporter-1".into(),
        exported_at: "2026-11-26T10:00:00.000Z".into(),
        signature: None,
        key_id: None,
    };
    let outcome = write_document(store, key, &body, &metadata, None, None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Stored { .. }),
        "{outcome:?}"
    );
    (body, metadata)
}

async fn ask(signer: &RunningSigner, query: &str, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    http::request(
        "GET",
        &format!("{}/v1/fallback-config{query}", signer.url),
        &headers,
        Bytes::new(),
    )
    .await
    .unwrap()
}

fn signed(response: &HttpResponse) -> SignedConfig {
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

fn message(response: &HttpResponse) -> String {
    response.json()["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {}", response.text()))
        .to_owned()
}

/// `url` with its object key replaced by `other_key`, the query (signature) kept.
fn with_key(url: &str, key: &str, other_key: &str) -> String {
    assert!(url.contains(key), "{url} names {key}");
    url.replacen(key, other_key, 1)
}

async fn get_status(url: &str) -> u16 {
    http::get(url).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_signer_hands_out_urls_that_seaweedfs_accepts_for_that_object_only() {
    let seaweed = SeaweedFs::start().await;
    let writer = s3_store(&seaweed, seaweed.writer());
    let signer = RunningSigner::start(
        signer_settings("kong", VERSION, TOKEN),
        s3_store(&seaweed, seaweed.reader()),
    )
    .await;

    // No token, a wrong token: 401 with a Bearer challenge, the tried token never echoed.
    let r = ask(&signer, "", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = ask(&signer, "", Some("guessed-token-123")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert!(!r.text().contains("guessed-token-123"), "{}", r.text());

    // Nothing exported yet.
    let r = ask(&signer, "", Some(TOKEN)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let m = message(&r);
    assert!(m.contains("nothing exported for version 3.4.1.0"), "{m}");
    assert!(m.contains("kong/3.4.1.0/config.json"), "{m}");

    // Export with the writer; the signer (reader) hands out a URL to exactly those bytes.
    let (body, metadata) = export(writer.as_ref(), &key(), "v1").await;
    let before = SystemTime::now();
    let config = signed(&ask(&signer, "?version=3.4.1.0", Some(TOKEN)).await);
    assert_eq!(config.method, "GET");
    assert_eq!(config.version, VERSION);
    assert_eq!(config.key, key());
    assert_eq!(config.sha256, metadata.sha256.to_hex());
    assert_eq!(config.revision, metadata.revision);
    assert_eq!(config.signature, None);
    assert!(config.url.contains("X-Amz-Signature="), "{}", config.url);
    let expires = humantime::parse_rfc3339(&config.expires_at).unwrap();
    let lifetime = expires.duration_since(before).unwrap_or_default();
    assert!(
        lifetime > Duration::from_secs(290) && lifetime <= Duration::from_secs(300),
        "default lifetime is 5 minutes: {lifetime:?}"
    );
    let fetched = http::get(&config.url).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.body, body.to_vec(), "exactly the stored bytes");

    // The same signature on another (existing) object: refused by the store itself.
    let other = object_key("kong", "9.9.9").unwrap();
    export(writer.as_ref(), &other, "other").await;
    let r = http::get(&with_key(&config.url, &key(), &other))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    // The other version is asked for by name.
    let config2 = signed(&ask(&signer, "?version=9.9.9", Some(TOKEN)).await);
    assert_eq!(config2.key, other);
    assert_eq!(get_status(&config2.url).await, 200);

    // A version that cannot name an object.
    let r = ask(&signer, "?version=..", Some(TOKEN)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("version"), "{}", r.text());

    // Health, readiness, metrics, unknown paths and methods.
    assert_eq!(
        http::get(&format!("{}/healthz", signer.url))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http::get(&format!("{}/readyz", signer.url))
            .await
            .unwrap()
            .status,
        200
    );
    let r = http::get(&format!("{}/nope", signer.url)).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(!message(&r).is_empty());
    let r = http::request(
        "POST",
        &format!("{}/v1/fallback-config", signer.url),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET"));
    let metrics = http::get(&format!("{}/metrics", signer.url))
        .await
        .unwrap()
        .text();
    for line in [
        "fallback_companion_signer_requests_total{code=\"401\"} 2",
        "fallback_companion_signer_requests_total{code=\"404\"} 1",
        "fallback_companion_signer_requests_total{code=\"200\"} 2",
        "fallback_companion_signer_requests_total{code=\"400\"} 1",
        "fallback_companion_signer_requests_total{code=\"405\"} 1",
        "fallback_companion_signing_duration_seconds_count 3",
        "fallback_companion_info{version=\"",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_urls_expire_with_their_ttl() {
    let seaweed = SeaweedFs::start().await;
    export(s3_store(&seaweed, seaweed.writer()).as_ref(), &key(), "v1").await;
    let mut settings = signer_settings("kong", VERSION, TOKEN);
    settings.ttl = Duration::from_secs(1);
    let signer = RunningSigner::start(settings, s3_store(&seaweed, seaweed.reader())).await;

    // A fresh URL works (its 1 s may straddle a second boundary: ask again if it did).
    let mut last = None;
    for _ in 0..5 {
        let config = signed(&ask(&signer, "", Some(TOKEN)).await);
        let status = get_status(&config.url).await;
        last = Some(config);
        if status == 200 {
            break;
        }
    }
    let config = last.unwrap();
    assert!(
        config.url.contains("X-Amz-Expires=1&") || config.url.contains("X-Amz-Expires=1"),
        "{}",
        config.url
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let r = http::get(&config.url).await.unwrap();
    assert_eq!(r.status, 403, "expired URL: {}", r.text());
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_down_is_503_and_not_ready_until_it_returns() {
    let mut seaweed = SeaweedFs::start().await;
    export(s3_store(&seaweed, seaweed.writer()).as_ref(), &key(), "v1").await;
    let signer = RunningSigner::start(
        signer_settings("kong", VERSION, TOKEN),
        s3_store(&seaweed, seaweed.reader()),
    )
    .await;
    let readyz = format!("{}/readyz", signer.url);
    wait_until("ready", WAIT, || async { get_status(&readyz).await == 200 }).await;
    signed(&ask(&signer, "", Some(TOKEN)).await);

    seaweed.stop().await;
    let r = ask(&signer, "", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        message(&r).contains("storage cannot be reached"),
        "{}",
        r.text()
    );
    let r = http::get(&readyz).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(message(&r).starts_with("not ready:"), "{}", r.text());
    assert_eq!(
        http::get(&format!("{}/healthz", signer.url))
            .await
            .unwrap()
            .status,
        200,
        "alive while storage is down"
    );

    seaweed.restart().await;
    wait_until("ready again", WAIT, || async {
        get_status(&readyz).await == 200
    })
    .await;
    wait_until("signing again", WAIT, || async {
        ask(&signer, "", Some(TOKEN)).await.status == 200
    })
    .await;
    let config = signed(&ask(&signer, "", Some(TOKEN)).await);
    assert_eq!(get_status(&config.url).await, 200);
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_is_served_by_the_companion_behind_signed_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, base) = RunningSigner::bind().await;
    let url_signer = Arc::new(UrlSigner::new(&base, Secret::new("replicas-share-this")));
    let store: Arc<dyn ConfigStore> =
        Arc::new(FileStore::new(dir.path().to_owned()).with_url_signer(url_signer.clone()));
    let mut settings = signer_settings("", VERSION, TOKEN);
    settings.object_urls = Some(url_signer.clone());
    let signer = RunningSigner::start_on(listener, settings, store.clone());
    let key = object_key("", VERSION).unwrap();

    let r = ask(&signer, "", Some("nope")).await;
    assert_eq!(r.status, 401);
    assert!(!r.text().contains("nope\""), "{}", r.text());
    let r = ask(&signer, "", Some(TOKEN)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(message(&r).contains("nothing exported for version 3.4.1.0"));

    let (body, metadata) = export(store.as_ref(), &key, "v1").await;
    let config = signed(&ask(&signer, "", Some(TOKEN)).await);
    assert_eq!(config.sha256, metadata.sha256.to_hex());
    assert_eq!(config.revision, metadata.revision);
    assert!(
        config
            .url
            .starts_with(&format!("{base}/v1/objects/3.4.1.0/config.json?expires=")),
        "{}",
        config.url
    );
    // No bearer token: the signature is the credential.
    let fetched = http::get(&config.url).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.body, body.to_vec());
    assert_eq!(fetched.header("content-type"), Some("application/json"));
    assert_eq!(
        fetched.header("x-fallback-sha256"),
        Some(metadata.sha256.to_hex().as_str())
    );
    assert_eq!(
        fetched.header("x-fallback-revision"),
        Some(metadata.revision.to_string().as_str())
    );

    // A tampered signature; the same signature on another existing object.
    let (head, signature) = config.url.split_once("signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let tampered = format!("{head}signature={flipped}{}", &signature[1..]);
    let r = http::get(&tampered).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        message(&r).contains("signature does not match"),
        "{}",
        r.text()
    );
    let other = object_key("", "9.9.9").unwrap();
    export(store.as_ref(), &other, "other").await;
    let r = http::get(&with_key(&config.url, &key, &other))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        message(&r).contains("signature does not match"),
        "{}",
        r.text()
    );
    let r = http::get(&format!("{base}/v1/objects/{key}"))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "no signature at all: {}", r.text());

    // Expired: a URL signed for one second ago is told apart from a bad signature.
    let past = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let r = http::get(&url_signer.url(&key, past)).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(message(&r).contains("expired"), "{}", r.text());

    // An object another exporter wrote (Kong Enterprise: the bare config, no metadata): the
    // signer vouches for the sha256 of the bytes it reads, with revision 0 and no signature.
    let foreign = dir.path().join("kong-wrote-this/config.json");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    let kong_body = b"{\"_format_version\": \"3.0\", \"_transform\": false}";
    std::fs::write(&foreign, kong_body).unwrap();
    let r = ask(&signer, "?version=kong-wrote-this", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["sha256"], Sha256Digest::of(kong_body).to_hex());
    assert_eq!(answer["revision"], 0);
    assert!(
        answer.get("signature").is_none_or(|s| s.is_null()),
        "{answer}"
    );
    assert_eq!(
        http::get(answer["url"].as_str().unwrap())
            .await
            .unwrap()
            .body,
        kong_body
    );

    let metrics = http::get(&format!("{}/metrics", signer.url))
        .await
        .unwrap()
        .text();
    assert!(
        // The exported object's and Kong's.
        metrics.contains("fallback_companion_object_requests_total{code=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fallback_companion_object_requests_total{code=\"403\"} 4"),
        "{metrics}"
    );
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_expire_with_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, base) = RunningSigner::bind().await;
    let url_signer = Arc::new(UrlSigner::with_random_key(&base));
    let store: Arc<dyn ConfigStore> =
        Arc::new(FileStore::new(dir.path().to_owned()).with_url_signer(url_signer.clone()));
    let mut settings = signer_settings("", VERSION, TOKEN);
    settings.object_urls = Some(url_signer);
    settings.ttl = Duration::from_secs(1);
    let signer = RunningSigner::start_on(listener, settings, store.clone());
    export(store.as_ref(), &object_key("", VERSION).unwrap(), "v1").await;
    let config = signed(&ask(&signer, "", Some(TOKEN)).await);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = http::get(&config.url).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(message(&r).contains("expired at"), "{}", r.text());
    signer.stop().await;
}

/// Sends SIGTERM to the child and waits for it to exit.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the companion did not stop within 10 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_the_signer_role_from_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("store");
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("companion.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env = |cmd: &mut Command| {
        cmd.env_clear()
            .env(
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                format!("file://{}", storage.display()),
            )
            .env("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on")
            .env("FALLBACK_CONFIG_VERSION", VERSION)
            .env("FALLBACK_LISTEN", format!("127.0.0.1:{port}"));
    };

    // Without any token the role refuses to start, saying how to set one.
    let mut cmd = Command::new(companion_binary());
    env(&mut cmd);
    let out = cmd.arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FALLBACK_SIGNER_TOKENS"), "{stderr}");

    std::fs::write(&tokens, format!("# rotated by the ops team\n{TOKEN}\n")).unwrap();
    let mut cmd = Command::new(companion_binary());
    env(&mut cmd);
    let mut child = cmd
        .env("FALLBACK_SIGNER_TOKENS_FILE", &tokens)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let healthz = format!("{base}/healthz");
    wait_until("the companion answers /healthz", WAIT, || async {
        http::get(&healthz).await.map(|r| r.status) == Ok(200)
    })
    .await;
    let signer_url = format!("{base}/v1/fallback-config");
    let ask = |token: &'static str| {
        let url = signer_url.clone();
        async move {
            let auth = format!("Bearer {token}");
            http::request(
                "GET",
                &url,
                &[("authorization", auth.as_str())],
                Bytes::new(),
            )
            .await
            .unwrap()
        }
    };
    let r = ask(TOKEN).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Export with the one-shot command, then fetch through the companion.
    let doc = dir.path().join("kong.json");
    std::fs::write(&doc, serde_json::to_vec(&document("bin")).unwrap()).unwrap();
    let out = Command::new(companion_binary())
        .args(["export", "--storage"])
        .arg(format!("file://{}", storage.display()))
        .args(["--config-version", VERSION, "--config-file"])
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = signed(&ask(TOKEN).await);
    assert!(
        config.url.starts_with(&format!("{base}/v1/objects/")),
        "{}",
        config.url
    );
    let fetched = http::get(&config.url).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.body, canonical_json(&document("bin")));

    // A wrong token is refused and shows nowhere; the token file rotates without a restart.
    assert_eq!(ask("wrong-token-4242").await.status, 401);
    std::fs::write(&tokens, "rotated-token-99\n").unwrap();
    assert_eq!(ask("rotated-token-99").await.status, 200);
    assert_eq!(ask(TOKEN).await.status, 401, "the old token is gone");

    let status = terminate(&mut child);
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("signer request"), "{logged}");
    assert!(logged.contains("status=200"), "{logged}");
    for secret in ["wrong-token-4242", TOKEN, "rotated-token-99", "signature="] {
        assert!(!logged.contains(secret), "{secret} in the log:\n{logged}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_signer_roles_run_together_in_one_process() {
    let seaweed = SeaweedFs::start().await;
    let cp = wasm_tests::MockCp::start().await;
    cp.set_document(&document("both"));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(companion_binary())
        .env_clear()
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", seaweed.bucket()),
        )
        .env("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on")
        .env("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on")
        .env("FALLBACK_CONTROL_PLANE_URL", format!("{}/config", cp.url()))
        .env("FALLBACK_POLL_INTERVAL", "200ms")
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FALLBACK_SIGNER_TOKENS", format!("other-token,{TOKEN}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint())
        .env("AWS_ACCESS_KEY_ID", &seaweed.writer().access_key)
        .env("AWS_SECRET_ACCESS_KEY", &seaweed.writer().secret_key)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let signer_url = format!("{base}/v1/fallback-config");
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str())];
    let ask = || http::request("GET", &signer_url, &headers, Bytes::new());
    wait_until("the exported document is signed for", WAIT, || async {
        ask().await.map(|r| r.status) == Ok(200)
    })
    .await;
    let config = signed(&ask().await.unwrap());
    let fetched = http::get(&config.url).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.body, canonical_json(&document("both")));
    let metrics = http::get(&format!("{base}/metrics")).await.unwrap().text();
    assert!(
        metrics.contains("fallback_companion_export_uploads_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fallback_companion_signer_requests_total{code=\"200\"}"),
        "{metrics}"
    );
    let status = terminate(&mut child);
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(status.success(), "{status:?}\n{logged}");
    assert!(logged.contains("export role stopped"), "{logged}");
    assert!(logged.contains("signer role stopped"), "{logged}");
    assert!(!logged.contains("X-Amz-Signature"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_the_read_is_502_naming_the_permission() {
    let seaweed = SeaweedFs::start().await;
    // The reader identity may read only its own bucket.
    let mut settings = wasm_tests::fixtures::s3_settings(&seaweed, seaweed.reader());
    settings.force_path_style = true;
    let store: Arc<dyn ConfigStore> = Arc::new(
        fallback_companion::storage::S3Store::new("not-granted".into(), settings).unwrap(),
    );
    let signer = RunningSigner::start(signer_settings("kong", VERSION, TOKEN), store).await;
    let r = ask(&signer, "", Some(TOKEN)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(message(&r).contains("s3:GetObject"), "{}", r.text());
    let r = http::get(&format!("{}/readyz", signer.url)).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    signer.stop().await;
}

/// `fallback-companion run` in the signer role on `file://<store>`, on `port`, with `extra`
/// environment; its log goes to `log`.
fn spawn_file_signer(
    store: &std::path::Path,
    port: u16,
    log: &std::path::Path,
    extra: &[(&str, &str)],
) -> std::process::Child {
    Command::new(companion_binary())
        .env_clear()
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("file://{}", store.display()),
        )
        .env("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on")
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FALLBACK_SIGNER_TOKENS", TOKEN)
        .envs(extra.iter().copied())
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// `size` bytes (not a document: the object route serves bytes) and their metadata.
fn large_object(size: usize, revision: u64) -> (Bytes, ExportMetadata) {
    let body = Bytes::from(
        (0..size)
            .map(|i| b"0123456789abcdef"[(i + revision as usize) % 16])
            .collect::<Vec<u8>>(),
    );
    let metadata = ExportMetadata {
        sha256: Sha256Digest::of(&body),
        revision,
        node_id: "exporter-1".into(),
        exported_at: "2026-11-26T10:00:00.000Z".into(),
        signature: None,
        key_id: None,
    };
    (body, metadata)
}

/// Stores `size` bytes in the `file://` store at `store` as earlier versions of the exporter
/// left them (the body, its metadata in `config.json.meta.json` beside it).
fn export_bytes_in_plain_files(store: &std::path::Path, size: usize) {
    let (body, metadata) = large_object(size, 1);
    let object = store.join(object_key("", VERSION).unwrap());
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, &body).unwrap();
    let pairs: std::collections::BTreeMap<&str, String> = metadata.to_pairs().into_iter().collect();
    std::fs::write(
        object.with_file_name("config.json.meta.json"),
        serde_json::to_vec(&pairs).unwrap(),
    )
    .unwrap();
}

/// Exports `size` bytes into the `file://` store at `store`, as the export role would, and
/// returns them.
async fn export_bytes(store: &std::path::Path, size: usize, revision: u64) -> Bytes {
    let (body, metadata) = large_object(size, revision);
    let files = FileStore::new(store.to_owned());
    let outcome = write_document(
        &files,
        &object_key("", VERSION).unwrap(),
        &body,
        &metadata,
        None,
        None,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Stored { .. }),
        "{outcome:?}"
    );
    body
}

/// The peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kib * 1024
}

async fn wait_for_health(base: &str) {
    let healthz = format!("{base}/healthz");
    wait_until("the companion answers /healthz", WAIT, || async {
        http::get(&healthz).await.map(|r| r.status) == Ok(200)
    })
    .await;
}

/// Issue 9, defect 2: every signer request and `/readyz` read and hashed the whole object;
/// 20 abandoned calls against a 200 MB `file://` object took the companion to 2.8 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_against_a_large_file_object_cost_no_memory() {
    const OBJECT: usize = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // As an earlier exporter left it first, then as this one writes it.
    export_bytes_in_plain_files(&store, OBJECT);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("companion.log");
    let mut child = spawn_file_signer(&store, port, &log, &[]);
    wait_for_health(&base).await;
    assert_eq!(get_status(&format!("{base}/readyz")).await, 200);
    let before = peak_memory(child.id());
    abandon_requests(port).await;
    let after_plain_files = peak_memory(child.id());
    export_bytes(&store, OBJECT, 2).await;
    abandon_requests(port).await;
    let after_generation = peak_memory(child.id());
    let _ = child.kill();
    let _ = child.wait();
    for (layout, peak) in [
        ("plain files", after_plain_files),
        ("a generation", after_generation),
    ] {
        let grown = peak.saturating_sub(before);
        assert!(
            grown < (OBJECT as u64) / 2,
            "{layout}: peak memory grew by {} MiB for a {} MiB object nobody downloaded",
            grown >> 20,
            OBJECT >> 20
        );
    }
}

/// 20 signer requests (each reads the object's metadata) and 20 `/readyz`, each caller leaving
/// right after asking; then a signer request that waits for its answer, and time for whatever
/// the others started to run.
async fn abandon_requests(port: u16) {
    let signer_request = format!(
        "GET /v1/fallback-config HTTP/1.1\r\nhost: c\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let readyz_request = "GET /readyz HTTP/1.1\r\nhost: c\r\n\r\n".to_owned();
    for request in [signer_request, readyz_request] {
        for _ in 0..20 {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(stream);
        }
    }
    let r = ask_bin(&format!("http://127.0.0.1:{port}"), TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn ask_bin(base: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http::request(
        "GET",
        &format!("{base}/v1/fallback-config"),
        &[("authorization", auth.as_str())],
        Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_download_in_flight_finish_refuses_new_connections_then_exits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const OBJECT: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let body = export_bytes(&store, OBJECT, 1).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("companion.log");
    let mut child = spawn_file_signer(&store, port, &log, &[("FALLBACK_SHUTDOWN_GRACE", "20s")]);
    wait_for_health(&base).await;
    let config = signed(&ask_bin(&base, TOKEN).await);
    let path = config.url.strip_prefix(&base).unwrap().to_owned();

    // A slow client: asks for the object and reads 64 KiB of it.
    let mut download = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    download
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = vec![0; 64 * 1024];
    download.read_exact(&mut raw).await.unwrap();

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let signalled = std::time::Instant::now();
    wait_until("new connections are refused", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running while a download is in flight"
    );
    download.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..split])
    );
    assert!(raw[split + 4..] == body[..], "the whole object arrived");

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "not stopped within FALLBACK_SHUTDOWN_GRACE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{logged}");
    assert!(
        logged.contains("finishing the requests in flight"),
        "{logged}"
    );
    assert!(logged.contains("signer role stopped"), "{logged}");
}
