//! The import path end to end in the real Envoy: control plane up, down, back; import through
//! the companion's signed URL from SeaweedFS; tampering; a companion outage; one fetch per
//! interval across Envoy's workers.

use serde_json::Value;
use std::time::{Duration, Instant};
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack};
use wasm_tests::Envoy;

const WAIT: Duration = Duration::from_secs(30);

async fn get(envoy: &Envoy, path: &str) -> Result<HttpResponse, String> {
    request(
        "GET",
        &format!("{}{path}", envoy.listener_url()),
        &[("kong-debug", "1")],
        Vec::new(),
    )
    .await
}

/// The upstream that answered, when the request was proxied.
async fn upstream_of(envoy: &Envoy, path: &str) -> Option<String> {
    let r = get(envoy, path).await.ok()?;
    (r.status == 200).then(|| r.json()["upstream"].as_str().unwrap_or_default().to_owned())
}

async fn source_gauge(envoy: &Envoy) -> Option<u64> {
    envoy.stat("wasmcustom.fallback_source").await
}

/// Waits until the config in force comes from `source` (1 control plane, 2 fallback).
async fn wait_for_source(envoy: &Envoy, source: u64, what: &str) {
    wait_until(what, WAIT, || async {
        source_gauge(envoy).await == Some(source)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_up_traffic_follows_it_and_changes_apply_within_a_poll() {
    let stack = ImportStack::start().await;
    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.alpha.port())]));
    let envoy = Envoy::start(stack.envoy_options(2)).await;

    wait_until("the CP's route is served", WAIT, || async {
        upstream_of(&envoy, "/shop/items").await.as_deref() == Some("alpha")
    })
    .await;
    let r = get(&envoy, "/shop/items?page=2").await.unwrap();
    let echoed = r.json();
    assert_eq!(
        echoed["path"], "/items?page=2",
        "strip_path keeps the query: {echoed}"
    );
    assert_eq!(r.header("kong-route-name"), Some("shop-route"));
    assert_eq!(r.header("x-fallback-source"), Some("control_plane"));
    assert_eq!(
        echoed["headers"].get("x-fallback-upstream"),
        None,
        "the hand-over header does not leak upstream"
    );

    let r = get(&envoy, "/nowhere").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "no Route matched with those values");

    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.beta.port())]));
    let changed = Instant::now();
    wait_until("the CP's change is served", WAIT, || async {
        upstream_of(&envoy, "/shop/items").await.as_deref() == Some("beta")
    })
    .await;
    eprintln!(
        "control-plane change served {:?} after it was made (poll interval 500 ms)",
        changed.elapsed()
    );
    assert_eq!(source_gauge(&envoy).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_never_reachable_envoy_serves_the_exported_config() {
    let mut stack = ImportStack::start().await;
    let revision = stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    stack.cp.stop().await;

    let started = Instant::now();
    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_until("the exported route is served", WAIT, || async {
        upstream_of(&envoy, "/shop/x").await.as_deref() == Some("alpha")
    })
    .await;
    eprintln!(
        "first proxied 200 {:?} after Envoy was started with the control plane down",
        started.elapsed()
    );
    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(r.header("x-fallback-source"), Some("fallback"));
    assert_eq!(
        r.header("x-fallback-revision"),
        Some(revision.to_string().as_str())
    );
    assert_eq!(source_gauge(&envoy).await, Some(2));
    assert_eq!(
        envoy.stat("wasmcustom.fallback_revision").await,
        Some(revision)
    );
    assert!(
        envoy
            .stat("wasmcustom.fallback_fetch_success_storage")
            .await
            >= Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_stops_mid_traffic_no_request_fails_then_it_returns_newer() {
    let mut stack = ImportStack::start().await;
    let doc = routing_document(&[("shop", stack.alpha.port())]);
    stack.cp.set_document(&doc);
    stack.export(&doc).await;
    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_until("served from the CP", WAIT, || async {
        upstream_of(&envoy, "/shop/a").await.as_deref() == Some("alpha")
            && source_gauge(&envoy).await == Some(1)
    })
    .await;

    // Steady traffic while the CP goes away and the filter switches to storage.
    let mut failures = Vec::new();
    let mut sent = 0;
    let deadline = Instant::now() + WAIT;
    let mut stopped_at = None;
    while Instant::now() < deadline {
        match get(&envoy, "/shop/a").await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
            Err(e) => failures.push(e),
        }
        sent += 1;
        if sent == 10 {
            stack.cp.stop().await;
            stopped_at = Some(Instant::now());
        }
        if stopped_at.is_some() && source_gauge(&envoy).await == Some(2) && sent > 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        source_gauge(&envoy).await,
        Some(2),
        "switched to the fallback config"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    eprintln!(
        "{sent} requests, none failed; fallback active {:?} after the CP stopped",
        stopped_at.map(|t| t.elapsed())
    );

    // The CP returns with a newer config: the filter goes back to it.
    stack
        .cp
        .set_document(&routing_document(&[("shop", stack.beta.port())]));
    stack.cp.restart().await;
    wait_until("the CP's newer config is served", WAIT, || async {
        upstream_of(&envoy, "/shop/a").await.as_deref() == Some("beta")
    })
    .await;
    assert_eq!(source_gauge(&envoy).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_altered_behind_the_metadata_is_rejected_without_leaking_the_signature() {
    let mut stack = ImportStack::start().await;
    stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    let forged = serde_json::to_vec(&routing_document(&[("shop", stack.beta.port())])).unwrap();
    stack.seaweed.corrupt_object(&stack.key(), forged).await;
    stack.cp.stop().await;

    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_until("the filter reports the digest mismatch", WAIT, || async {
        envoy.stat("wasmcustom.fallback_fetch_failure_verify").await >= Some(1)
    })
    .await;
    let r = get(&envoy, "/shop/x").await.unwrap();
    assert_eq!(
        r.status,
        503,
        "no config rather than a forged one: {}",
        r.text()
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("no configuration"));
    assert_eq!(stack.beta.hits(), 0, "nothing reached the forged upstream");
    wait_until("the log says why", WAIT, || async {
        envoy.log_contains("but its export says")
    })
    .await;
    let log = envoy.log();
    assert!(
        !log.contains("X-Amz-Signature"),
        "the signed URL's signature is never logged"
    );
    assert!(
        !log.contains(wasm_tests::stack::TOKEN),
        "the token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companion_down_then_up_the_filter_retries_and_imports() {
    let mut stack = ImportStack::start().await;
    stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    stack.cp.stop().await;
    stack.signer.stop().await;

    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_until("the filter has tried the companion twice", WAIT, || async {
        envoy
            .stat("wasmcustom.fallback_fetch_failure_companion")
            .await
            >= Some(2)
    })
    .await;
    assert_eq!(get(&envoy, "/shop/x").await.unwrap().status, 503);

    stack.signer.restart().await;
    wait_until("imported once the companion is back", WAIT, || async {
        upstream_of(&envoy, "/shop/x").await.as_deref() == Some("alpha")
    })
    .await;
}

fn signer_requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fallback_companion_signer_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_make_one_signing_request_per_interval() {
    let mut stack = ImportStack::start().await;
    stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    stack.cp.stop().await;
    let mut options: EnvoyOptions = stack.envoy_options(4);
    options.filter_config["fallback_refresh_interval_ms"] = Value::from(1000);
    let envoy = Envoy::start(options).await;
    wait_until("imported", WAIT, || async {
        upstream_of(&envoy, "/shop/x").await.as_deref() == Some("alpha")
    })
    .await;

    let metrics_url = format!("{}/metrics", stack.signer.url());
    let before = signer_requests(
        &request("GET", &metrics_url, &[], Vec::new())
            .await
            .unwrap()
            .text(),
    );
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let after = signer_requests(
        &request("GET", &metrics_url, &[], Vec::new())
            .await
            .unwrap()
            .text(),
    );
    let made = after - before;
    eprintln!("{made} signing requests in {window:?} with a 1 s refresh interval and 4 workers");
    // One leader: about 5 (one per interval). Every worker fetching would make about 20+.
    assert!(
        (3..=7).contains(&made),
        "expected about 5 signing requests, got {made}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_answering_500_or_too_slowly_counts_as_down() {
    let stack = ImportStack::start().await;
    let doc = routing_document(&[("shop", stack.alpha.port())]);
    stack.export(&doc).await;
    stack.cp.set_document(&doc);
    stack.cp.set_mode(wasm_tests::Mode::Fail500);
    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_for_source(&envoy, 2, "a CP answering 500 sends the filter to storage").await;
    assert_eq!(
        upstream_of(&envoy, "/shop/x").await.as_deref(),
        Some("alpha")
    );

    stack.cp.set_mode(wasm_tests::Mode::Normal);
    wait_for_source(&envoy, 1, "the CP answering again brings the filter back").await;

    // Slower than the filter's 1 s timeout: as good as down.
    stack
        .cp
        .set_mode(wasm_tests::Mode::Slow(Duration::from_secs(3)));
    wait_for_source(
        &envoy,
        2,
        "a CP slower than the timeout sends the filter to storage",
    )
    .await;
    assert_eq!(
        upstream_of(&envoy, "/shop/x").await.as_deref(),
        Some("alpha")
    );
}
