//! The document size limit end to end in the real Envoy: a document just under
//! `MAX_DOCUMENT_BYTES` imports through the bootstrap's clusters, one over it is logged as too
//! large (not as an unreachable store) and the config in force stays; the bootstrap's Envoy
//! buffer limit is the one the filter's messages name.

use fallback_core::digest::canonical_json;
use fallback_core::limits::{MAX_DOCUMENT_BYTES, PROXY_RESPONSE_BUFFER_BYTES};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wasm_tests::envoy::bootstrap_template;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::request;
use wasm_tests::stack::{routing_document, ImportStack};
use wasm_tests::Envoy;

const WAIT: Duration = Duration::from_secs(90);

/// `routing_document` for `/shop` → `port`, plus as many realistic services (a route with
/// hosts, methods and a regex path, one plugin in ten) as fit, padded with a service tag to
/// exactly `size` bytes of canonical JSON.
fn document_of_size(port: u16, size: usize) -> Value {
    let filler = |i: usize| {
        let mut service = json!({
            "name": format!("service-{i:06}"),
            "url": format!("http://backend-{}.internal:8080/v1", i % 97),
            "routes": [{
                "name": format!("route-{i:06}"),
                "hosts": [format!("tenant{i}.example.com")],
                "methods": ["GET", "POST"],
                "paths": [format!("/api/{i}"), format!("~/api/{i}/items/\\d+$")],
                "strip_path": false,
            }],
        });
        if i.is_multiple_of(10) {
            service["plugins"] = json!([{"name": "rate-limiting", "config": {"minute": 100}}]);
        }
        service
    };
    let build = |count: usize, tags: Vec<String>| {
        let mut doc = routing_document(&[("shop", port)]);
        let services = doc["services"].as_array_mut().unwrap();
        services[0]["tags"] = json!(tags);
        services.extend((0..count).map(filler));
        doc
    };
    let base = canonical_json(&build(0, Vec::new())).len();
    let each = canonical_json(&build(100, Vec::new())).len() - base;
    // Later services have longer numbers than the first hundred: start a little under.
    let mut count = (size - base) * 100 / each * 95 / 100;
    let mut filled = canonical_json(&build(count, Vec::new())).len();
    while filled + 2 > size {
        count -= count / 50 + 1;
        filled = canonical_json(&build(count, Vec::new())).len();
    }
    let mut remaining = size - filled;
    // Each tag costs its text, two quotes and a comma (the first no comma).
    let mut tags = Vec::new();
    while remaining > 0 {
        let overhead = if tags.is_empty() { 2 } else { 3 };
        let text = (remaining - overhead).min(1 << 20);
        tags.push("x".repeat(text));
        remaining -= text + overhead;
    }
    let doc = build(count, tags);
    assert_eq!(canonical_json(&doc).len(), size);
    doc
}

async fn upstream_of(envoy: &Envoy, path: &str) -> Option<String> {
    let r = request(
        "GET",
        &format!("{}{path}", envoy.listener_url()),
        &[],
        Vec::new(),
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.json()["upstream"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn the_bootstrap_lets_bodies_up_to_the_filters_buffer_limit_through() {
    let template = std::fs::read_to_string(bootstrap_template()).unwrap();
    let line = format!("http.async_response_buffer_limit: {PROXY_RESPONSE_BUFFER_BYTES}");
    assert!(
        template.contains(&line),
        "examples/envoy/bootstrap.yaml must set `{line}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_just_under_the_limit_imports_and_one_over_is_logged_as_too_large() {
    let mut stack = ImportStack::start().await;
    stack.cp.stop().await;
    let size = MAX_DOCUMENT_BYTES - 64;
    let under = document_of_size(stack.alpha.port(), size);
    stack.export(&under).await;

    let mut options = stack.envoy_options(2);
    // 16 MiB from storage on a loaded test machine: more than the 2 s the other tests give.
    options.filter_config["storage"]["timeout_ms"] = json!(30_000);
    // The default lease: a worker compiling ~70,000 routes does not tick for seconds, and with
    // the 1 s lease of the other tests leadership would change hands on every compile.
    options.filter_config["leader_lease_ms"] = json!(5_000);
    let started = Instant::now();
    let envoy = Envoy::start(options).await;
    while upstream_of(&envoy, "/shop/x").await.as_deref() != Some("alpha") {
        assert!(
            started.elapsed() < WAIT,
            "the document just under the limit was not served within {WAIT:?}:\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "a {} byte document ({} routes) imported and served {:?} after Envoy started",
        size,
        under["services"].as_array().map_or(0, Vec::len),
        started.elapsed()
    );

    // Written past the exporter (which refuses it), as another tool could.
    let over = document_of_size(stack.beta.port(), MAX_DOCUMENT_BYTES + 64);
    stack.export(&over).await;
    let expected = format!(
        "is too large: {} bytes, more than the {MAX_DOCUMENT_BYTES} bytes (MAX_DOCUMENT_BYTES)",
        MAX_DOCUMENT_BYTES + 64
    );
    wait_until(
        "the filter logs the document as too large",
        WAIT,
        || async { envoy.log_contains(&expected) },
    )
    .await;
    assert!(
        !envoy.log_contains("unreachable fetching"),
        "a document that arrived is not an unreachable store:\n{}",
        envoy.log_tail(40)
    );
    assert_eq!(
        upstream_of(&envoy, "/shop/x").await.as_deref(),
        Some("alpha"),
        "the config in force stays"
    );
}
