//! What the benchmarks share: the configs `make bench-proxy` loads into Envoy.

use serde_json::{json, Value};

/// The same config as `wasm_tests::bench::bench_document`.
pub fn document(routes: usize, plugins: bool) -> Value {
    let services: Vec<Value> = (0..routes)
        .map(|i| {
            let mut route = json!({"name": format!("r{i}"), "hosts": [format!("r{i}.bench.test")], "paths": ["/api"]});
            if plugins {
                route["plugins"] = json!([
                    {"name": "key-auth", "config": {"key_names": ["apikey"]}},
                    {"name": "rate-limiting", "config": {"hour": 1_000_000_000u64, "policy": "local"}},
                ]);
            }
            json!({"name": format!("s{i}"), "url": "http://127.0.0.1:8000/", "routes": [route]})
        })
        .collect();
    let mut doc = json!({"_format_version": "3.0", "services": services});
    if plugins {
        doc["consumers"] =
            json!([{"username": "bench", "keyauth_credentials": [{"key": "bench-key"}]}]);
    }
    doc
}
