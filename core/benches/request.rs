//! `cargo bench -p fallback-core --bench request`: the filter's per-request decision, natively:
//! route + plugins for the configs `make bench-proxy` loads into Envoy (10 routes without
//! plugins; 1,000 and 10,000 routes with `key-auth` and `rate-limiting` (local) on every route),
//! with what it costs besides time: heap allocations per request and rate-limit counter
//! operations per request (each one a shared-data host call in the filter: `usage` is one
//! read, `increment` a read and a compare-and-swap write).
//!
//! A plain `main` (no criterion): one table. The request is the one `bench-proxy` sends
//! (`Host: r<n/2>.bench.test`, `GET /api/items`, the consumer's `apikey`).

mod common;

use common::document;
use fallback_core::document::ConfigDocument;
use fallback_core::plugins::{Counters, PluginEngine, PluginOutcome, PluginRequest};
use fallback_core::router::{RequestView, RouteOutcome, Router};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts heap allocations (the filter pays each one in wasm's allocator).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// In-memory counters with the filter's semantics, counting the operations.
#[derive(Default)]
struct MemoryCounters {
    windows: HashMap<String, (u64, u64)>,
    usage_calls: u64,
    increment_calls: u64,
}

impl Counters for MemoryCounters {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        self.usage_calls += 1;
        match self.windows.get(key) {
            Some(&(start, count)) if start == window_start_ms => count,
            _ => 0,
        }
    }

    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
        self.increment_calls += 1;
        let entry = self.windows.entry(key.to_owned()).or_insert((0, 0));
        if entry.0 != window_start_ms {
            *entry = (window_start_ms, 0);
        }
        (entry.1 < limit).then(|| {
            entry.1 += 1;
            entry.1
        })
    }
}

/// Requests timed one by one with cold caches.
const COLD_REQUESTS: u64 = 300;
/// Written between two cold requests: more than the machine's caches.
const COLD_EVICT_BYTES: usize = 64 << 20;

fn main() {
    const REQUESTS: u64 = 200_000;
    println!("per-request decision (native, release): route + plugins, {REQUESTS} requests");
    println!(
        "{:>6} {:>8} {:>10} {:>12} {:>10} {:>14} {:>12} {:>12}",
        "config",
        "plugins",
        "route (ns)",
        "+plugins(ns)",
        "cold (ns)",
        "allocs/request",
        "usage/req",
        "increment/req"
    );
    for (name, routes, plugins) in [
        ("F10", 10, false),
        ("F1k", 1_000, true),
        ("F10k", 10_000, true),
    ] {
        let loaded = ConfigDocument::from_json(&document(routes, plugins)).expect("valid config");
        let router = Router::compile(&loaded.document);
        let engine = PluginEngine::compile(&loaded.document, &Default::default());
        let host = format!("r{}.bench.test", routes / 2);
        let headers = [
            ("host", host.as_str()),
            ("apikey", "bench-key"),
            ("user-agent", "wrk"),
        ];
        let view = RequestView {
            method: "GET",
            authority: &host,
            path: "/api/items",
            scheme: "http",
            headers: &headers,
            sni: None,
            port: Some(8080),
        };
        let mut counters = MemoryCounters::default();
        let mut decide = |i: u64, with_plugins: bool| {
            let RouteOutcome::Forward(forward) = router.route(&view) else {
                panic!("{name}: the benchmark request must match a route");
            };
            if with_plugins {
                let request = PluginRequest {
                    method: view.method,
                    scheme: view.scheme,
                    path: view.path,
                    upstream_path: &forward.path,
                    headers: &headers,
                    client_ip: Some([127, 0, 0, 1].into()).into(),
                    route: Some(forward.route),
                    service: Some(forward.service),
                    now_ms: 1_700_000_000_000 + i / 1000,
                    random: u128::from(i),
                };
                let outcome = engine.access(&request, &mut counters);
                assert!(
                    matches!(outcome, PluginOutcome::Forward(_)),
                    "{name}: the plugins must let the request through: {outcome:?}"
                );
                std::hint::black_box(outcome);
            }
            std::hint::black_box(forward);
        };
        let mut run = |with_plugins: bool| {
            let allocations = ALLOCATIONS.load(Ordering::Relaxed);
            let started = Instant::now();
            for i in 0..REQUESTS {
                decide(i, with_plugins);
            }
            let ns = started.elapsed().as_nanos() as f64 / REQUESTS as f64;
            let allocs =
                (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / REQUESTS as f64;
            (ns, allocs)
        };
        let (route_ns, route_allocs) = run(false);
        let (total_ns, total_allocs) = if plugins && !engine.is_empty() {
            run(true)
        } else {
            (route_ns, route_allocs)
        };
        // The same decision with cold caches, as in a proxy where other connections' work runs
        // between two requests: every cache line of the config, the allocator and the stack is
        // evicted before each request (not timed).
        let mut thrash = vec![0u8; COLD_EVICT_BYTES];
        let mut cold_ns = 0.0;
        for i in 0..COLD_REQUESTS {
            for line in thrash.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            std::hint::black_box(&thrash);
            let started = Instant::now();
            decide(REQUESTS + i, plugins);
            cold_ns += started.elapsed().as_nanos() as f64;
        }
        cold_ns /= COLD_REQUESTS as f64;
        let per = |n: u64| n as f64 / REQUESTS as f64;
        println!(
            "{:>6} {:>8} {:>10.0} {:>12.0} {:>10.0} {:>14} {:>12.1} {:>12.1}",
            name,
            if plugins { "2/route" } else { "none" },
            route_ns,
            total_ns,
            cold_ns,
            format!("{route_allocs:.0} + {:.0}", total_allocs - route_allocs),
            per(counters.usage_calls),
            per(counters.increment_calls),
        );
    }
    println!("allocs/request: the router's + the plugins'; cold: route + plugins with every cache evicted before each request");
}
