//! One request's decision (route + plugins) for `make footprint`, which runs it under valgrind
//! to count what it costs without timing it: instructions, and the distinct cache lines and
//! pages of code and data it touches. In a proxy the filter's request path runs with caches
//! that the proxy's own work evicted since the last request, so those lines and pages are paid
//! again on every request; unlike times on a shared machine, these counts are exact and
//! repeatable.
//!
//! `footprint ROUTES PLUGINS`: the config `make bench-proxy` loads (ROUTES routes, `key-auth` +
//! `rate-limiting` on each when PLUGINS is 1) and its request, decided once to warm up and once
//! more with callgrind's instrumentation on (`--instr-atstart=no`): its simulated caches start
//! empty then, so with caches larger than one request needs, each distinct line the request
//! touches is one miss. Outside valgrind the client requests do nothing.

#[path = "../benches/common/mod.rs"]
mod common;
#[path = "../benches/common/footprint.rs"]
#[allow(dead_code)]
mod footprint;

use fallback_core::document::ConfigDocument;
use fallback_core::plugins::{MemoryCounters, PluginEngine, PluginOutcome, PluginRequest};
use fallback_core::router::{RequestView, RouteOutcome, Router};
use footprint::{client_request, START_INSTRUMENTATION, STOP_INSTRUMENTATION};

/// What the filter decides for one request (named in callgrind's `--toggle-collect`).
#[inline(never)]
fn decide(
    router: &Router,
    engine: &PluginEngine,
    counters: &mut MemoryCounters,
    now_ms: u64,
    headers: &[(&str, &str)],
) -> bool {
    let view = RequestView {
        method: "GET",
        authority: headers[0].1,
        path: "/api/items",
        scheme: "http",
        headers,
        sni: None,
        port: Some(8080),
    };
    let RouteOutcome::Forward(forward) = router.route(&view) else {
        return false;
    };
    if engine.is_empty() {
        return std::hint::black_box(forward).route > 0;
    }
    let request = PluginRequest {
        method: view.method,
        scheme: view.scheme,
        path: view.path,
        upstream_path: &forward.path,
        headers,
        client_ip: Some([127, 0, 0, 1].into()).into(),
        route: Some(forward.route),
        service: Some(forward.service),
        now_ms,
        random: 0,
    };
    let outcome = engine.access(&request, counters);
    matches!(std::hint::black_box(outcome), PluginOutcome::Forward(_))
}

fn main() {
    let (routes, plugins) = footprint::args();
    let loaded = ConfigDocument::from_json(&common::document(routes, plugins))
        .expect("the benchmark config is valid");
    let router = Router::compile(&loaded.document);
    let engine = PluginEngine::compile(&loaded.document, &Default::default());
    let host = format!("r{}.bench.test", routes / 2);
    // As Envoy gives them to the filter for `bench-proxy`'s request.
    let headers = [
        (":authority", host.as_str()),
        (":path", "/api/items"),
        (":method", "GET"),
        (":scheme", "http"),
        ("apikey", "bench-key"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5c8a2f0e-4c1b-4d6b-9a53-1f2e3d4c5b6a"),
    ];
    let mut counters = MemoryCounters::default();
    let now_ms = 1_700_000_000_000;
    // The warm-up: lazily built state (the router's scratch space, the counter) is not what
    // a request in a running proxy pays.
    let warm = decide(&router, &engine, &mut counters, now_ms, &headers);
    client_request(START_INSTRUMENTATION);
    let measured = decide(&router, &engine, &mut counters, now_ms + 1, &headers);
    client_request(STOP_INSTRUMENTATION);
    assert!(warm && measured, "the benchmark request must be forwarded");
}
