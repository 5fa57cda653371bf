//! Export signatures end to end in the real Envoy: a filter configured with `public_key`
//! imports an export signed by the matching key, and refuses (stays 503, counts a verify
//! failure, logs why) an unsigned export and one signed by another key. An exporter restarted
//! with a key signs the document it finds stored unsigned. A key rotation (filters trust both
//! keys, the exporter switches, the old key goes) serves every request; an older export put
//! back in storage, or an old signature replayed under a new revision, is refused.

use fallback_companion::signing::SigningKey;
use fallback_companion::storage::Precondition;
use fallback_core::export::ExportMetadata;
use std::time::Duration;
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fixtures::{fast_settings, s3_store, wait_until, RunningExporter};
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack, VERSION};
use wasm_tests::Envoy;

const WAIT: Duration = Duration::from_secs(30);

/// RFC 8032 TEST 1's key, as `openssl genpkey -algorithm ed25519` writes it.
const EXPORTER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
/// Its public half, as `openssl pkey -pubout` prints it.
const EXPORTER_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

async fn get(envoy: &Envoy, path: &str) -> Result<HttpResponse, String> {
    request(
        "GET",
        &format!("{}{path}", envoy.listener_url()),
        &[("kong-debug", "1")],
        Vec::new(),
    )
    .await
}

/// Envoy on `stack` with the CP down and the filter requiring the exporter's signature.
async fn envoy_requiring_signatures(stack: &mut ImportStack) -> Envoy {
    stack.cp.stop().await;
    let mut options = stack.envoy_options(2);
    options.filter_config["public_key"] = EXPORTER_PUBLIC_PEM.into();
    Envoy::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_signed_export_is_imported() {
    let mut stack = ImportStack::start().await;
    let key = SigningKey::parse(EXPORTER_KEY).unwrap();
    let revision = stack
        .export_signed(
            &routing_document(&[("shop", stack.alpha.port())]),
            Some(&key),
        )
        .await;
    let envoy = envoy_requiring_signatures(&mut stack).await;
    wait_until("the signed export is served", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(r.json()["upstream"], "alpha");
    assert_eq!(r.header("x-fallback-source"), Some("fallback"));
    assert_eq!(
        r.header("x-fallback-revision"),
        Some(revision.to_string().as_str())
    );
    assert_eq!(
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await,
        Some(0)
    );
}

/// Exports with `signing_key` (or unsigned), starts Envoy, and checks it refuses the export.
async fn refused(signing_key: Option<&SigningKey>, why: &str) {
    let mut stack = ImportStack::start().await;
    stack
        .export_signed(
            &routing_document(&[("shop", stack.beta.port())]),
            signing_key,
        )
        .await;
    let envoy = envoy_requiring_signatures(&mut stack).await;
    wait_until("the filter reports the verify failure", WAIT, || async {
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await >= Some(1)
    })
    .await;
    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(
        r.status,
        503,
        "no config rather than an unsigned one: {}",
        r.text()
    );
    assert_eq!(
        stack.beta.hits(),
        0,
        "nothing reached the export's upstream"
    );
    wait_until("the log says why", WAIT, || async {
        envoy.log_contains(why)
    })
    .await;
    assert!(envoy.log_contains("signature"));
    assert!(
        envoy
            .stat("wasmcustom.fallback_fetch_success_storage")
            .await
            >= Some(1),
        "the object was fetched, then refused"
    );
    // Still refused on the retries.
    wait_until("a retry is refused too", WAIT, || async {
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await >= Some(2)
    })
    .await;
    assert_eq!(get(&envoy, "/shop/x").await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_export_is_refused() {
    refused(None, "carries no signature but public_keys is configured").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_signed_by_another_key_is_refused() {
    let other = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
    refused(
        Some(&other),
        &format!(
            "carries a signature by key id {}, which is none of the configured public_keys",
            other.key_id()
        ),
    )
    .await;
}

/// Issue 9, defect 3: turning signing on never signed the document already stored (the "same
/// sha256, nothing to write" shortcut ignored the signature), so filters with `public_key`
/// refused every import until the control plane's config changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_restarted_with_a_key_signs_the_stored_document_and_filters_import_it() {
    let mut stack = ImportStack::start().await;
    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.alpha.port())]));
    let cp_url = format!("{}/config", stack.cp.url());
    let store = s3_store(&stack.seaweed, stack.seaweed.writer());
    let stored_signature = || async {
        store
            .head(&stack.key())
            .await
            .ok()
            .flatten()
            .and_then(|o| o.metadata)
            .map(|m| m.signature)
    };

    // Exported unsigned first.
    let unsigned = RunningExporter::start(
        fast_settings(&stack.key(), "exporter"),
        &cp_url,
        store.clone(),
    );
    wait_until("the unsigned export is stored", WAIT, || async {
        stored_signature().await.is_some()
    })
    .await;
    unsigned.stop().await;
    assert_eq!(stored_signature().await, Some(None), "stored unsigned");

    // The same exporter, restarted with a key; the control plane serves the same document.
    let key = SigningKey::parse(EXPORTER_KEY).unwrap();
    let mut settings = fast_settings(&stack.key(), "exporter");
    settings.signing_key = Some(key.clone());
    let signing = RunningExporter::start(settings, &cp_url, store.clone());
    wait_until("the stored document is signed", WAIT, || async {
        matches!(stored_signature().await, Some(Some(_)))
    })
    .await;
    signing.stop().await;
    let stored = store.get(&stack.key()).await.unwrap().unwrap();
    assert!(stored
        .stored
        .metadata
        .unwrap()
        .is_signed_by(VERSION, &key.public_key()));

    let envoy = envoy_requiring_signatures(&mut stack).await;
    wait_until("the signed export is served", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(r.json()["upstream"], "alpha");
    assert_eq!(r.header("x-fallback-source"), Some("fallback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_public_key_stops_the_filter_at_configure_time() {
    let mut options = EnvoyOptions {
        concurrency: 1,
        ..Default::default()
    };
    options.filter_config["public_key"] = "not-a-key".into();
    let failure = match Envoy::try_start(options).await {
        Ok(envoy) => panic!(
            "Envoy started with a public_key the filter cannot use; log:\n{}",
            envoy.log_tail(40)
        ),
        Err(failure) => failure,
    };
    assert!(
        failure
            .log
            .contains("fallback: invalid plugin configuration")
            && failure
                .log
                .contains("public_key: the public key is not standard base64"),
        "the filter's error line is missing: {failure}"
    );
}

/// The rotation the docs describe, with traffic all along: (1) filters trust the old and the new
/// key, (2) the exporter switches to the new key and signs the stored export again, (3) a filter
/// trusting only the new key imports it. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_under_traffic_fails_no_request() {
    let stack = ImportStack::start().await;
    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.alpha.port())]));
    let cp_url = format!("{}/config", stack.cp.url());
    let store = s3_store(&stack.seaweed, stack.seaweed.writer());
    let old = SigningKey::parse(EXPORTER_KEY).unwrap();
    let new = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
    let stored_key_id = || async {
        store
            .head(&stack.key())
            .await
            .ok()
            .flatten()
            .and_then(|o| o.metadata)
            .and_then(|m| m.key_id)
    };

    let mut settings = fast_settings(&stack.key(), "exporter");
    settings.signing_key = Some(old.clone());
    let exporter = RunningExporter::start(settings, &cp_url, store.clone());
    wait_until("the old key's export is stored", WAIT, || async {
        stored_key_id().await == Some(old.key_id())
    })
    .await;
    exporter.stop().await;

    // Step 1: the filter trusts both keys (it runs on storage alone here).
    let filter_on_storage = |keys: Vec<String>| {
        let mut options = stack.envoy_options(2);
        options.filter_config["control_plane"] = serde_json::Value::Null;
        options.filter_config["public_keys"] = keys.into();
        options
    };
    let envoy = Envoy::start(filter_on_storage(vec![
        old.public_key_base64(),
        new.public_key_base64(),
    ]))
    .await;
    wait_until("the old key's export is served", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let first_revision: u64 = get(&envoy, "/shop/x")
        .await
        .unwrap()
        .header("x-fallback-revision")
        .unwrap()
        .parse()
        .unwrap();

    let traffic = {
        let url = format!("{}/shop/x", envoy.listener_url());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut served, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match request("GET", &url, &[], Vec::new()).await {
                        Ok(r) if r.status == 200 => served += 1,
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (served, failed)
            }
        });
        (stop, task)
    };

    // Step 2: the exporter switches keys; the stored export is signed again, at a higher
    // revision, and the filter imports it.
    let mut settings = fast_settings(&stack.key(), "exporter");
    settings.signing_key = Some(new.clone());
    let exporter = RunningExporter::start(settings, &cp_url, store.clone());
    wait_until("the new key's signature is stored", WAIT, || async {
        stored_key_id().await == Some(new.key_id())
    })
    .await;
    exporter.stop().await;
    let signed_by_new = format!("signed by key {}", new.key_id());
    wait_until("the filter imports the re-signed export", WAIT, || async {
        envoy.log_contains(&signed_by_new)
    })
    .await;
    let revision = || async {
        get(&envoy, "/shop/x")
            .await
            .ok()
            .and_then(|r| r.header("x-fallback-revision")?.parse::<u64>().ok())
    };
    wait_until(
        "the re-signed export's revision is served",
        WAIT,
        || async { revision().await.is_some_and(|r| r > first_revision) },
    )
    .await;

    traffic.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = traffic.1.await.unwrap();
    assert!(
        failed.is_empty(),
        "failed requests during the rotation: {failed:?}"
    );
    assert!(served > 10, "only {served} requests made it");
    assert_eq!(
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await,
        Some(0)
    );

    // Step 3: the old key removed from the filters: the export still imports.
    let only_new = Envoy::start(filter_on_storage(vec![new.public_key_base64()])).await;
    wait_until(
        "a filter trusting only the new key serves",
        WAIT,
        || async {
            get(&only_new, "/shop/x")
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
}

/// Rollback protection: once a filter verified a revision, an older export put back in storage
/// (validly signed) is refused and counted; an old signature replayed under a new revision does
/// not verify. The newer config keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_export_restored_or_replayed_is_refused() {
    let mut stack = ImportStack::start().await;
    let key = SigningKey::parse(EXPORTER_KEY).unwrap();
    let store = s3_store(&stack.seaweed, stack.seaweed.writer());
    stack
        .export_signed(
            &routing_document(&[("shop", stack.beta.port())]),
            Some(&key),
        )
        .await;
    let old = store.get(&stack.key()).await.unwrap().unwrap();
    let old_meta = old.stored.metadata.clone().unwrap();
    stack
        .export_signed(
            &routing_document(&[("shop", stack.alpha.port())]),
            Some(&key),
        )
        .await;
    let envoy = envoy_requiring_signatures(&mut stack).await;
    wait_until("the newer export is served", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| r.status == 200)
    })
    .await;

    // An old backup restored over it, metadata and all.
    let put_back = |meta: ExportMetadata| {
        let store = store.clone();
        let key = stack.key();
        let body = old.body.clone();
        async move {
            let etag = store.head(&key).await.unwrap().unwrap().etag;
            store
                .put(&key, body, &meta, Precondition::Matches(etag))
                .await
                .unwrap();
        }
    };
    put_back(old_meta.clone()).await;
    wait_until("the filter refuses to go back", WAIT, || async {
        envoy
            .stat("wasmcustom.fallback_fetch_failure_revision")
            .await
            >= Some(1)
    })
    .await;
    wait_until("the log says why", WAIT, || async {
        envoy.log_contains("already verified since this filter started: refusing to go back")
    })
    .await;

    // The same old export replayed under a revision above the current one.
    let replayed = ExportMetadata {
        revision: old_meta.revision + 1_000_000,
        ..old_meta
    };
    put_back(replayed).await;
    wait_until("the replay fails verification", WAIT, || async {
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await >= Some(1)
    })
    .await;
    wait_until("the log says why", WAIT, || async {
        envoy.log_contains("altered or replayed after signing")
    })
    .await;

    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "alpha", "still the newer config");
    assert_eq!(stack.beta.hits(), 0);
}
