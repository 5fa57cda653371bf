//! Kong routing end to end: for each request, `fallback-companion match` (the real binary)
//! predicts the upstream, path and Host; the real Envoy with the filter must deliver exactly
//! there (the echo upstreams report what they received), or answer the predicted status.

use serde_json::{json, Value};
use std::time::Duration;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::stack::ImportStack;
use wasm_tests::{companion_match, Envoy};

const WAIT: Duration = Duration::from_secs(30);

/// One service per upstream shape the router knows, on the stack's two echo upstreams.
fn document(alpha: u16, beta: u16) -> Value {
    json!({
        "_format_version": "3.0",
        "services": [
            {
                "id": "7a1c8d0e-0000-4000-8000-000000000001",
                "name": "users",
                "url": format!("http://127.0.0.1:{alpha}/v1"),
                "routes": [
                    {"id": "7a1c8d0e-0000-4000-8000-0000000000a1", "name": "users-api",
                     "hosts": ["api.example.com"], "paths": ["/users"]},
                ],
            },
            {
                "name": "users-v2",
                "protocol": "http", "host": "127.0.0.1", "port": beta, "path": "/v2/",
            },
            {
                "name": "legacy",
                "url": format!("http://127.0.0.1:{beta}/base"),
                "routes": [{"name": "legacy-orders", "paths": ["~/legacy/\\d+/orders"],
                            "strip_path": false, "preserve_host": true, "regex_priority": 5}],
            },
            {
                "name": "tenants",
                "host": "tenant-pool",
                "routes": [{"name": "tenant-posts", "hosts": ["*.tenants.example.org"],
                            "methods": ["POST"], "paths": ["/api"], "strip_path": true}],
            },
            {
                "name": "admin",
                "url": format!("http://127.0.0.1:{alpha}"),
                "routes": [{"name": "admin-https-only", "paths": ["/admin"],
                            "protocols": ["https"]}],
            },
            {
                // A DNS name: Envoy resolves it (the dynamic forward proxy), where IP literals
                // go straight to an ORIGINAL_DST cluster.
                "name": "named",
                "url": format!("http://localhost:{beta}/named"),
                "routes": [{"name": "named-route", "paths": ["/by-name"]}],
            },
        ],
        "routes": [
            // More fields (a header) than users-api: wins when the header is there.
            {"name": "users-v2", "hosts": ["api.example.com"], "paths": ["/users"],
             "headers": {"x-version": ["v2"]}, "service": {"name": "users-v2"}},
        ],
        "upstreams": [{"name": "tenant-pool", "targets": [
            {"target": format!("127.0.0.1:{alpha}"), "weight": 10},
        ]}],
    })
}

/// (method, URL, headers, the route `match` must name: a check of the prediction itself).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Value,
);

/// Sends `method url` through Envoy: the URL's authority becomes the Host header.
async fn send(envoy: &Envoy, method: &str, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let rest = url.split_once("://").expect("absolute URL").1;
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    let mut all = vec![("host", authority), ("kong-debug", "1")];
    all.extend_from_slice(headers);
    request(
        method,
        &format!("{}{path}", envoy.listener_url()),
        &all,
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {url} through Envoy: {e}"))
}

/// Every worker applies a new config on its own tick: wait until several requests in a row
/// (spread over the workers) are served.
async fn wait_for_config(envoy: &Envoy) {
    wait_until("every worker serves the config", WAIT, || async {
        for _ in 0..8 {
            let r = send(envoy, "GET", "http://api.example.com/users", &[]).await;
            if r.status != 200 {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delivers_where_match_predicts() {
    let stack = ImportStack::start().await;
    let (alpha, beta) = (stack.alpha.port(), stack.beta.port());
    let doc = document(alpha, beta);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("kong.json");
    std::fs::write(&config, doc.to_string()).expect("config written");
    stack.cp.set_document(&doc);
    let envoy = Envoy::start(stack.envoy_options(2)).await;
    wait_for_config(&envoy).await;

    let upstream_name = |port: u16| if port == alpha { "alpha" } else { "beta" };
    let cases: &[Case] = &[
        (
            "GET",
            "http://api.example.com/users/42?expand=orders&x=%2F",
            &[],
            json!("users-api"),
        ),
        (
            "GET",
            "http://API.example.com:80/users//7/./profile",
            &[],
            json!("users-api"),
        ),
        (
            "PUT",
            "http://api.example.com/users/42",
            &[("X-Version", "v2")],
            json!("users-v2"),
        ),
        (
            "GET",
            "http://shop.example.net:8000/legacy/17/orders?page=2",
            &[],
            json!("legacy-orders"),
        ),
        (
            "POST",
            "http://eu.tenants.example.org/api/posts",
            &[],
            json!("tenant-posts"),
        ),
        (
            "GET",
            "http://eu.tenants.example.org/api/posts",
            &[],
            Value::Null,
        ),
        (
            "GET",
            "http://api.example.com/admin",
            &[],
            json!("admin-https-only"),
        ),
        (
            "GET",
            "http://api.example.com/by-name/x?y=1",
            &[],
            json!("named-route"),
        ),
        ("GET", "http://nowhere.test/else", &[], Value::Null),
    ];
    for (method, url, headers, route) in cases {
        let predicted = companion_match(&config, method, url, headers);
        assert_eq!(predicted["route"], *route, "{method} {url}: {predicted}");
        let response = send(&envoy, method, url, headers).await;
        let Some(upstream_url) = predicted["upstream_url"].as_str() else {
            assert_eq!(
                Some(u64::from(response.status)),
                predicted["status"].as_u64(),
                "{method} {url}: Envoy answered {} ({}), match predicted {predicted}",
                response.status,
                response.text()
            );
            continue;
        };
        assert_eq!(response.status, 200, "{method} {url}: {}", response.text());
        let echoed = response.json();
        let (authority, path) = upstream_url
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(a, p)| (a, format!("/{p}")))
            .expect("http upstream URL");
        let port: u16 = authority
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("upstream URL has a port");
        assert_eq!(
            (
                echoed["upstream"].as_str(),
                echoed["path"].as_str(),
                echoed["headers"]["host"].as_str()
            ),
            (
                Some(upstream_name(port)),
                Some(path.as_str()),
                predicted["upstream_host"].as_str()
            ),
            "{method} {url}: match predicted {predicted}, the upstream got {echoed}"
        );
        assert_eq!(
            echoed["headers"].get(wasm_tests::envoy::UPSTREAM_HEADER),
            None,
            "{method} {url}: the hand-off header must not reach the upstream: {echoed}"
        );
        eprintln!(
            "{method} {url} -> {upstream_url} Host {}",
            predicted["upstream_host"]
        );
    }
    // IP literals go straight to the ORIGINAL_DST cluster; only the name is resolved.
    let stat = |cluster: &str| format!("cluster.{cluster}.upstream_rq_total");
    let direct = envoy
        .stat(&stat("fallback_original_dst"))
        .await
        .unwrap_or(0);
    let resolved = envoy
        .stat(&stat("dynamic_forward_proxy_cluster"))
        .await
        .unwrap_or(0);
    assert!(
        direct >= 8 && resolved == 1,
        "requests through ORIGINAL_DST: {direct}, through the dynamic forward proxy: {resolved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_debug_header_and_https_answers() {
    let stack = ImportStack::start().await;
    let mut doc = document(stack.alpha.port(), stack.beta.port());
    doc["services"][4]["routes"]
        .as_array_mut()
        .expect("routes")
        .push(
            json!({"name": "moved", "paths": ["/moved"], "protocols": ["https"],
                     "https_redirect_status_code": 308}),
        );
    stack.cp.set_document(&doc);
    let envoy = Envoy::start(stack.envoy_options(1)).await;
    wait_for_config(&envoy).await;

    let r = send(&envoy, "GET", "http://api.example.com/users/1", &[]).await;
    assert_eq!(
        r.header("kong-route-id"),
        Some("7a1c8d0e-0000-4000-8000-0000000000a1")
    );
    assert_eq!(r.header("kong-route-name"), Some("users-api"));
    assert_eq!(
        r.header("kong-service-id"),
        Some("7a1c8d0e-0000-4000-8000-000000000001")
    );
    assert_eq!(r.header("kong-service-name"), Some("users"));
    // Without Kong-Debug: 1, nothing is revealed.
    let plain = request(
        "GET",
        &format!("{}/users/1", envoy.listener_url()),
        &[("host", "api.example.com")],
        Vec::new(),
    )
    .await
    .expect("request through Envoy");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("kong-route-name"), None);

    // A route host with a port matches a Host without one through the listener's port (Kong's
    // server_port), which the filter reads from Envoy's `destination.port`.
    let port = envoy.listener_port();
    doc["services"][0]["routes"]
        .as_array_mut()
        .expect("routes")
        .push(json!({"name": "by-listener-port", "hosts": [format!("listener.example:{port}")]}));
    stack.cp.set_document(&doc);
    wait_until(
        "the route on the listener's port is served",
        WAIT,
        || async {
            for _ in 0..4 {
                let r = send(&envoy, "GET", "http://listener.example/x", &[]).await;
                if r.header("kong-route-name") != Some("by-listener-port") {
                    return false;
                }
            }
            true
        },
    )
    .await;

    let r = send(&envoy, "GET", "http://api.example.com/admin/x", &[]).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.json()["message"], "Please use HTTPS protocol");
    // The filter also sends Kong's `Connection: Upgrade` and `Upgrade: TLS/1.2, HTTP/1.1`;
    // Envoy drops these hop-by-hop headers from a local reply (docs/filter.md, Routing).
    let r = send(
        &envoy,
        "GET",
        "http://Shop.example.com:8000/moved/a?b=1",
        &[],
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.com/moved/a?b=1")
    );
}
