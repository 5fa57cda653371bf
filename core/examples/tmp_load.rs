use fallback_core::document::ConfigDocument;
use serde_json::json;
fn main() {
    let services: Vec<_> = (0..10_000).map(|i| json!({"name": format!("s{i}"), "url": "http://127.0.0.1:8000/", "routes": [{"name": format!("r{i}"), "hosts": [format!("r{i}.bench.test")], "paths": ["/api"], "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}},{"name": "rate-limiting", "config": {"hour": 1_000_000_000u64, "policy": "local"}}]}]})).collect();
    let doc = json!({"_format_version": "3.0", "services": services, "consumers": [{"username": "bench", "keyauth_credentials": [{"key": "bench-key"}]}]});
    let bytes = serde_json::to_vec(&doc).unwrap();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let loaded = ConfigDocument::from_slice(&bytes).unwrap();
        eprintln!("from_slice {:?}", t.elapsed());
        std::hint::black_box(loaded);
    }
}
