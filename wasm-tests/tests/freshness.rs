//! The staleness budget and the readiness path in the real Envoy: `health_path` is answered by
//! the filter itself (503 before any config, 200 with source, revision and age after the import,
//! never proxied); a fallback config older than `max_fallback_age_ms` is served and reported
//! under `stale_policy: "serve"`, and refused with 503 under `"fail_closed"`.

use std::time::Duration;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{self, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack};
use wasm_tests::Envoy;

const WAIT: Duration = Duration::from_secs(30);
const READY: &str = "/.fallback/ready";

async fn get(envoy: &Envoy, path: &str) -> Result<HttpResponse, String> {
    http::get(&format!("{}{path}", envoy.listener_url())).await
}

/// Envoy on `stack` with the CP down and `settings` added to the filter configuration.
async fn envoy_on_storage(stack: &mut ImportStack, settings: serde_json::Value) -> Envoy {
    stack.cp.stop().await;
    let mut options = stack.envoy_options(2);
    for (name, value) in settings.as_object().unwrap() {
        options.filter_config[name] = value.clone();
    }
    Envoy::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_path_is_503_before_the_import_and_200_after_never_proxied() {
    let mut stack = ImportStack::start().await;
    let envoy = envoy_on_storage(&mut stack, serde_json::json!({"health_path": READY})).await;
    // Nothing exported yet: not ready.
    wait_until("the filter tried an import", WAIT, || async {
        envoy
            .stat("wasmcustom.fallback_fetch_failure_companion")
            .await
            >= Some(1)
    })
    .await;
    let r = get(&envoy, READY).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["ready"], false);

    let revision = stack
        .export(&routing_document(&[("", stack.alpha.port())]))
        .await;
    wait_until("ready after the import", WAIT, || async {
        get(&envoy, READY).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = get(&envoy, READY).await.unwrap();
    let body = r.json();
    assert_eq!(body["source"], "fallback");
    assert_eq!(body["revision"], revision);
    assert!(body["age_seconds"].is_u64(), "{body}");
    // A route for `/` exists, yet the readiness path never reaches the upstream.
    assert_eq!(stack.alpha.hits(), 0);
    assert_eq!(get(&envoy, "/other").await.unwrap().status, 200);
    assert_eq!(stack.alpha.hits(), 1);
}

/// A stack holding an export of `/shop` with `exported-at` 2026-11-26T10:00:00Z (what the
/// stack writes: days old by any clock running these tests, so past a one-hour budget), and
/// Envoy on it with `settings` and the readiness path.
async fn exported_days_ago(mut settings: serde_json::Value) -> (ImportStack, Envoy) {
    let mut stack = ImportStack::start().await;
    stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    settings["health_path"] = READY.into();
    let envoy = envoy_on_storage(&mut stack, settings).await;
    (stack, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_config_is_served_and_reported_under_serve() {
    let (_stack, envoy) =
        exported_days_ago(serde_json::json!({"max_fallback_age_ms": 3_600_000})).await;
    wait_until("the stale config is served", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    wait_until("the staleness is counted", WAIT, || async {
        envoy.stat("wasmcustom.fallback_fetch_failure_age").await >= Some(1)
    })
    .await;
    wait_until("and logged", WAIT, || async {
        envoy.log_contains("past max_fallback_age_ms (3600 s): still serving it")
    })
    .await;
    let age = envoy.stat("wasmcustom.fallback_config_age_seconds").await;
    assert!(age > Some(3_600), "age gauge: {age:?}");
    let r = get(&envoy, READY).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stale"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_config_is_refused_with_503_under_fail_closed() {
    let (stack, envoy) = exported_days_ago(serde_json::json!({
        "max_fallback_age_ms": 3_600_000,
        "stale_policy": "fail_closed",
    }))
    .await;
    wait_until("the import happened", WAIT, || async {
        envoy
            .stat("wasmcustom.fallback_fetch_success_validate")
            .await
            >= Some(1)
    })
    .await;
    wait_until("requests are refused as stale", WAIT, || async {
        get(&envoy, "/shop/x").await.is_ok_and(|r| {
            r.status == 503 && r.text().contains("past its staleness budget of 3600 s")
        })
    })
    .await;
    assert_eq!(
        stack.alpha.hits(),
        0,
        "nothing served from the stale config"
    );
    assert_eq!(get(&envoy, READY).await.unwrap().status, 503);
    wait_until("the log says so", WAIT, || async {
        envoy.log_contains("requests are answered 503 (stale_policy fail_closed)")
    })
    .await;
}

/// The data plane cannot reach the control plane, but the export role still can and finds the
/// same config there: it renews the stored export's time (`FALLBACK_EXPORT_REFRESH`), the
/// filter's next storage check takes the new time, and the config it had refused as stale is
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_its_exporter_confirms_current_is_no_longer_stale() {
    let (stack, envoy) = exported_days_ago(serde_json::json!({
        "max_fallback_age_ms": 3_600_000,
        "stale_policy": "fail_closed",
    }))
    .await;
    wait_until("requests are refused as stale", WAIT, || async {
        get(&envoy, "/shop/x")
            .await
            .is_ok_and(|r| r.status == 503 && r.text().contains("staleness budget"))
    })
    .await;
    // The control plane the export role reaches serves the same config.
    let cp = wasm_tests::MockCp::start().await;
    cp.set_document(&routing_document(&[("shop", stack.alpha.port())]));
    let mut settings = wasm_tests::fixtures::fast_settings(&stack.key(), "exporter");
    settings.refresh = Some(Duration::from_secs(1));
    let exporter = wasm_tests::fixtures::RunningExporter::start(
        settings,
        &format!("{}/config", cp.url()),
        wasm_tests::fixtures::s3_store(&stack.seaweed, stack.seaweed.writer()),
    );
    wait_until("the renewed config is served", WAIT, || async {
        get(&envoy, "/shop/x")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["upstream"] == "alpha")
    })
    .await;
    assert!(
        exporter.count(|s| &s.uploads) >= 1,
        "the export role wrote the same export again"
    );
    assert_eq!(get(&envoy, READY).await.unwrap().status, 200);
    wait_until("the filter says why", WAIT, || async {
        envoy.log_contains("exported again at")
    })
    .await;
    exporter.stop().await;
}
