//! `make bench`: router compile time and match latency for generated route sets, and the
//! filter's `.wasm` size. A plain `main` (no criterion): one table, numbers a reader can check.
//!
//! The route mix, per 100 routes: 10 regex paths, 5 wildcard hosts, 15 hostless routes, the
//! rest on exact hosts (one host per 10 routes, some with a port); a third set `methods`, a
//! tenth `headers`. Requests are drawn from the routes themselves (so most match, at every
//! priority level) plus 10% that match nothing.

use fallback_core::document::ConfigDocument;
use fallback_core::limits::MAX_REQUEST_PATH_BYTES;
use fallback_core::router::{RequestView, RouteOutcome, Router};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Request {
    method: &'static str,
    authority: String,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    regex: bool,
}

fn generate(count: usize, rng: &mut Rng) -> (Value, Vec<Request>) {
    let mut routes = Vec::with_capacity(count);
    let mut requests = Vec::new();
    let hosts = (count / 10).max(1);
    for i in 0..count {
        let kind = i % 100;
        let host_no = rng.below(hosts);
        let svc = i % 50;
        let mut route = json!({"name": format!("r{i}"), "service": format!("svc{svc}")});
        let (authority, path) = if kind < 10 {
            route["paths"] = json!([format!("~/api{i}/items/\\d+/detail$")]);
            route["regex_priority"] = json!(rng.below(5));
            route["hosts"] = json!([format!("host{host_no}.example.com")]);
            (
                format!("host{host_no}.example.com"),
                format!("/api{i}/items/{}/detail", rng.below(1000)),
            )
        } else if kind < 15 {
            route["hosts"] = json!([format!("*.tenant{i}.example.net")]);
            route["paths"] = json!([format!("/w{i}")]);
            (format!("a.tenant{i}.example.net"), format!("/w{i}/x"))
        } else if kind < 30 {
            route["paths"] = json!([format!("/public/{i}/v{}", i % 3)]);
            (
                "anything.test".to_owned(),
                format!("/public/{i}/v{}/x/y", i % 3),
            )
        } else {
            let host = if kind % 7 == 0 {
                format!("host{host_no}.example.com:8443")
            } else {
                format!("host{host_no}.example.com")
            };
            route["hosts"] = json!([host]);
            route["paths"] = json!([format!("/svc{i}/v{}", 1 + i % 2)]);
            (
                host,
                format!("/svc{i}/v{}/res/{}", 1 + i % 2, rng.below(100)),
            )
        };
        let method = if i % 3 == 0 {
            route["methods"] = json!(["GET", "POST"]);
            "POST"
        } else {
            "GET"
        };
        let mut headers = Vec::new();
        if i % 10 == 5 {
            route["headers"] = json!({"x-tenant": ["blue", "green"]});
            headers.push(("x-tenant", "green"));
        }
        routes.push(route);
        requests.push(Request {
            method,
            authority,
            path,
            headers,
            regex: kind < 10,
        });
    }
    for i in 0..count / 10 {
        requests.push(Request {
            method: "GET",
            authority: format!("miss{i}.example.org"),
            path: format!("/nothing/{i}"),
            headers: Vec::new(),
            regex: false,
        });
    }
    let services: Vec<Value> = (0..50)
        .map(|s| json!({"name": format!("svc{s}"), "url": format!("http://backend{s}.internal:8080/base")}))
        .collect();
    let doc = json!({"_format_version": "3.0", "services": services, "routes": routes});
    (doc, requests)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let wasm = "target/wasm32-wasip1/release/fallback_filter.wasm";
    let wasm = std::fs::metadata(wasm)
        .or_else(|_| std::fs::metadata(format!("../{wasm}")))
        .map(|m| format!("{} bytes", m.len()))
        .unwrap_or_else(|_| "not built (make wasm)".to_owned());
    println!("router benchmark (native, release); filter .wasm: {wasm}");
    println!(
        "{:>7} {:>13} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "routes", "load (ms)", "compile (ms)", "p50 (µs)", "p99 (µs)", "mean (µs)", "matched"
    );
    for count in [100, 1_000, 10_000] {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ count as u64);
        let (doc, requests) = generate(count, &mut rng);
        let started = Instant::now();
        let loaded = ConfigDocument::from_json(&doc).expect("generated document is valid");
        let load = started.elapsed();
        // Best of 3: compile once per revision, but measure without cold-cache noise.
        let mut compile = Duration::MAX;
        let mut router = None;
        for _ in 0..3 {
            let started = Instant::now();
            let compiled = Router::compile(&loaded.document);
            compile = compile.min(started.elapsed());
            router = Some(compiled);
        }
        let router = router.expect("compiled");
        assert!(
            router.unsupported().is_empty(),
            "{:?}",
            router.unsupported()
        );

        let header_views: Vec<Vec<(&str, &str)>> =
            requests.iter().map(|r| r.headers.clone()).collect();
        let rounds = (200_000 / requests.len()).max(2);
        let mut samples = Vec::with_capacity(rounds * requests.len());
        let mut regex_samples = Vec::new();
        let mut matched = 0usize;
        for round in 0..rounds {
            for (request, headers) in requests.iter().zip(&header_views) {
                let view = RequestView {
                    method: request.method,
                    authority: &request.authority,
                    path: &request.path,
                    scheme: "http",
                    headers,
                    sni: None,
                    port: None,
                };
                let started = Instant::now();
                let outcome = router.route(&view);
                let took = started.elapsed();
                samples.push(took);
                if request.regex {
                    regex_samples.push(took);
                }
                if round == 0 && matches!(outcome, RouteOutcome::Forward(_)) {
                    matched += 1;
                }
                std::hint::black_box(outcome);
            }
        }
        samples.sort_unstable();
        regex_samples.sort_unstable();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{:>7} {:>13.1} {:>12.1} {:>10.2} {:>10.2} {:>10.2} {:>7.0}%",
            count,
            load.as_secs_f64() * 1e3,
            compile.as_secs_f64() * 1e3,
            us(percentile(&samples, 0.5)),
            us(percentile(&samples, 0.99)),
            us(mean),
            100.0 * matched as f64 / requests.len() as f64,
        );
        println!(
            "{:>7} {:>13} {:>12} {:>10.2} {:>10.2}   (requests matching a regex route only)",
            "",
            "",
            "",
            us(percentile(&regex_samples, 0.5)),
            us(percentile(&regex_samples, 0.99)),
        );
    }
    worst_case_regex();
}

/// The most a route regex can cost one request: the largest `(.*a){n}` that validation admits
/// (`MAX_REGEX_NFA_BYTES`) on the longest path the router matches (`MAX_REQUEST_PATH_BYTES`),
/// every NFA state alive at every byte; and the 414 answer to a longer path.
fn worst_case_regex() {
    let admitted = (1..200)
        .take_while(|n| fallback_core::router::path_regex(&format!("/(.*a){{{n}}}$")).is_ok())
        .last()
        .expect("(.*a){1} is admitted");
    let doc = json!({
        "_format_version": "3.0",
        "services": [{"name": "s", "host": "b", "routes": [
            {"name": "worst", "paths": [format!("~/(.*a){{{admitted}}}$")]}
        ]}]
    });
    let loaded = ConfigDocument::from_json(&doc).expect("admitted regex loads");
    let router = Router::compile(&loaded.document);
    let path = format!("/{}", "a".repeat(MAX_REQUEST_PATH_BYTES - 1));
    let too_long = format!("{path}a");
    let time = |path: &str| {
        let view = RequestView {
            method: "GET",
            authority: "h",
            path,
            scheme: "http",
            headers: &[],
            sni: None,
            port: None,
        };
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            std::hint::black_box(router.route(&view));
            best = best.min(started.elapsed());
        }
        best
    };
    println!(
        "worst admitted regex ~/(.*a){{{admitted}}}$ on a {MAX_REQUEST_PATH_BYTES}-byte path: {:.2} ms; \
         one byte longer (414): {:.2} µs",
        time(&path).as_secs_f64() * 1e3,
        time(&too_long).as_secs_f64() * 1e6,
    );
}
