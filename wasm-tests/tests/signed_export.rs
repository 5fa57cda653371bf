//! Export signatures end to end in the real Envoy: a filter configured with `public_key`
//! imports an export signed by the matching key, and refuses (stays 503, counts a verify
//! failure, logs why) an unsigned export and one signed by another key. An exporter restarted
//! with a key signs the document it finds stored unsigned.

use fallback_companion::signing::SigningKey;
use std::time::Duration;
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fixtures::{fast_settings, s3_store, wait_until, RunningExporter};
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack};
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
    refused(None, "carries no signature but public_key is configured").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_signed_by_another_key_is_refused() {
    let other = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
    refused(
        Some(&other),
        "signature does not verify with the configured public_key",
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
    let signature = stored.stored.metadata.unwrap().signature.unwrap();
    assert!(key.verifies(&stored.body, &signature));

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
