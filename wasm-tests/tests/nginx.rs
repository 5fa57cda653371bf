//! The filter in a real nginx + ngx_wasm_module (2 workers), configured from
//! `examples/nginx/nginx.conf` with `"host": "nginx"`: the control plane's config served and
//! routed by host and path, a second generation applied by every worker, Kong's 426, a
//! response header removed, and a fresh nginx started with the control plane down importing
//! through the companion without a crash.
//!
//! Runs only when `NGINX_WASM_BIN` names an nginx built with ngx_wasm_module (see
//! `examples/nginx/README.md`); otherwise each test prints `SKIPPED ...` and passes.

use serde_json::{json, Value};
use std::time::Duration;
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::nginx::{self, Nginx};
use wasm_tests::stack::{routing_document, ImportStack};

const WAIT: Duration = Duration::from_secs(30);

/// The stack's filter configuration for nginx: parties as `host:port`.
fn nginx_config(stack: &ImportStack) -> Value {
    let mut config = stack.filter_config();
    let storage = stack
        .seaweed
        .endpoint()
        .trim_start_matches("http://")
        .to_owned();
    config["host"] = json!("nginx");
    config["control_plane"]["upstream"] = json!(format!("127.0.0.1:{}", stack.cp.port()));
    config["companion"]["upstream"] = json!(format!("127.0.0.1:{}", stack.signer.port()));
    config["storage"]["upstream"] = json!(storage);
    config
}

async fn get(nginx: &Nginx, path: &str, host: Option<&str>) -> Result<HttpResponse, String> {
    let mut headers = vec![("kong-debug", "1")];
    if let Some(host) = host {
        headers.push(("host", host));
    }
    request(
        "GET",
        &format!("{}{path}", nginx.listener_url()),
        &headers,
        Vec::new(),
    )
    .await
}

/// The upstream that answered, when the request was proxied.
async fn upstream_of(nginx: &Nginx, path: &str, host: Option<&str>) -> Option<String> {
    let r = get(nginx, path, host).await.ok()?;
    (r.status == 200).then(|| r.json()["upstream"].as_str().unwrap_or_default().to_owned())
}

/// Polls `check` until it holds; panics with nginx's error log after [`WAIT`].
async fn wait_for<F, Fut>(nginx: &Nginx, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}\n--- error.log ---\n{}",
            nginx.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both workers logged that they serve `generation`.
async fn wait_for_every_worker(nginx: &Nginx, generation: u64) {
    let needle = format!("now serves config generation {generation} ");
    wait_for(
        nginx,
        &format!("both workers serve generation {generation}"),
        || async { nginx.pids_logging(&needle).len() >= 2 },
    )
    .await;
}

fn assert_no_crash(nginx: &Nginx) {
    let crashes = nginx.crashes();
    assert!(
        crashes.is_empty(),
        "workers crashed: {crashes:#?}\n--- error.log ---\n{}",
        nginx.log_tail(80)
    );
}

/// Routes by host and by path to two upstreams, an HTTPS-only route, a route whose response
/// loses its Content-Type and a rate-limited one; with `listener`, a route whose host names
/// that port (matched by a `Host` without a port, through the listener's port).
fn routing(alpha: u16, beta: u16, swapped: bool, listener: Option<u16>) -> Value {
    let (a, b) = if swapped {
        (beta, alpha)
    } else {
        (alpha, beta)
    };
    let mut doc = json!({
        "_format_version": "3.0",
        "services": [
            {"name": "alpha-svc", "url": format!("http://127.0.0.1:{a}"), "routes": [
                {"name": "alpha-host", "hosts": ["alpha.example"], "paths": ["/api"]},
                {"name": "secure", "paths": ["/secure"], "protocols": ["https"]},
                {"name": "no-ctype", "paths": ["/no-ctype"]},
                {"name": "limited", "paths": ["/limited"]}
            ]},
            {"name": "beta-svc", "url": format!("http://127.0.0.1:{b}"), "routes": [
                {"name": "beta-host", "hosts": ["beta.example"], "paths": ["/api"]},
                {"name": "beta-path", "paths": ["/beta"]}
            ]}
        ],
        "plugins": [
            {"name": "response-transformer", "route": "no-ctype",
             "config": {"remove": {"headers": ["content-type"]}}},
            {"name": "rate-limiting", "route": "limited",
             "config": {"hour": 5, "policy": "local"}}
        ]
    });
    if let Some(port) = listener {
        doc["services"][1]["routes"]
            .as_array_mut()
            .expect("routes")
            .push(json!({"name": "by-port", "hosts": [format!("port.example:{port}")], "paths": ["/port"]}));
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_the_cp_config_by_host_and_path_and_every_worker_applies_the_next() {
    let Some(bin) = nginx::binary("nginx_serves_the_cp_config_by_host_and_path") else {
        return;
    };
    let stack = ImportStack::start().await;
    let (alpha, beta) = (stack.alpha.port(), stack.beta.port());
    stack.cp.set_document(&routing(alpha, beta, false, None));
    let nginx = Nginx::start(&bin, &nginx_config(&stack)).await;

    wait_for(&nginx, "the CP's routes are served", || async {
        upstream_of(&nginx, "/api/items", Some("alpha.example"))
            .await
            .as_deref()
            == Some("alpha")
    })
    .await;
    // By host: the same path goes where the client's Host says (not nginx's server name).
    let r = get(&nginx, "/api/items?page=2", Some("beta.example"))
        .await
        .unwrap();
    let echoed = r.json();
    assert_eq!(echoed["upstream"], "beta", "{echoed}");
    assert_eq!(
        echoed["path"], "/items?page=2",
        "strip_path keeps the query"
    );
    assert_eq!(
        echoed["headers"]["host"],
        format!("127.0.0.1:{beta}"),
        "the Host Kong would send"
    );
    assert_eq!(r.header("x-fallback-source"), Some("control_plane"));
    assert_eq!(r.header("kong-route-name"), Some("beta-host"));
    // By path, whatever the host.
    assert_eq!(
        upstream_of(&nginx, "/beta/x", Some("anything.example"))
            .await
            .as_deref(),
        Some("beta")
    );
    let r = get(&nginx, "/api/items", Some("gamma.example"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["message"], "no Route matched with those values");
    // A percent-encoded path reaches the upstream encoded, as the client sent it.
    let r = get(&nginx, "/beta/a%20b", None).await.unwrap();
    assert_eq!(r.json()["path"], "/a%20b");

    // Kong's 426 stays 426 (a Connection: Upgrade header would turn it into 101 here).
    let r = get(&nginx, "/secure", None).await.unwrap();
    assert_eq!(r.status, 426, "{:?}", r.headers);
    assert_eq!(r.json()["message"], "Please use HTTPS protocol");
    assert_eq!(r.header("upgrade"), Some("TLS/1.2, HTTP/1.1"));

    // response-transformer removes Content-Type (replacing the whole map would keep it).
    let r = get(&nginx, "/no-ctype", None).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), None, "{:?}", r.headers);

    // Rate limits count across both workers (fresh connections land on either): counters
    // are written read-then-compare-and-swap, created once.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&nginx, "/limited", None).await.unwrap().status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    // A second generation reaches both workers.
    wait_for_every_worker(&nginx, 1).await;
    stack
        .cp
        .set_document(&routing(alpha, beta, true, Some(nginx.listener_port())));
    wait_for(&nginx, "the second generation is served", || async {
        upstream_of(&nginx, "/api/items", Some("alpha.example"))
            .await
            .as_deref()
            == Some("beta")
    })
    .await;
    wait_for_every_worker(&nginx, 2).await;
    // A route host with a port matches a Host without one on that listener's port
    // (ngx.server_port: ngx_wasm_module's destination.port is the PROXY protocol's).
    assert_eq!(
        upstream_of(&nginx, "/port/x", Some("port.example"))
            .await
            .as_deref(),
        Some("alpha")
    );
    let r = get(&nginx, "/port/x", Some("port.example:1"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "another port");
    // Fresh connections land on either worker: every one of them routes by generation 2.
    for _ in 0..20 {
        assert_eq!(
            upstream_of(&nginx, "/api/items", Some("alpha.example"))
                .await
                .as_deref(),
            Some("beta")
        );
    }
    assert_eq!(
        nginx
            .pids_logging("this worker now leads config fetching")
            .len(),
        1,
        "one leader: {}",
        nginx.log_tail(40)
    );
    assert_no_crash(&nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_nginx_with_the_cp_down_imports_through_the_companion_without_a_crash() {
    let Some(bin) = nginx::binary("a_fresh_nginx_with_the_cp_down_imports") else {
        return;
    };
    let mut stack = ImportStack::start().await;
    let revision = stack
        .export(&routing_document(&[("shop", stack.alpha.port())]))
        .await;
    stack.cp.stop().await;

    let nginx = Nginx::start(&bin, &nginx_config(&stack)).await;
    wait_for(&nginx, "the exported route is served", || async {
        upstream_of(&nginx, "/shop/x", None).await.as_deref() == Some("alpha")
    })
    .await;
    let r = get(&nginx, "/shop/x", None).await.unwrap();
    assert_eq!(r.header("x-fallback-source"), Some("fallback"));
    assert_eq!(
        r.header("x-fallback-revision"),
        Some(revision.to_string().as_str())
    );
    wait_for_every_worker(&nginx, 1).await;
    assert!(
        nginx.log().contains("imported revision"),
        "{}",
        nginx.log_tail(40)
    );
    let log = nginx.log();
    assert!(
        !log.contains("X-Amz-Signature"),
        "signed URLs are not logged"
    );
    assert!(
        !log.contains(wasm_tests::stack::TOKEN),
        "the token is not logged"
    );
    assert_no_crash(&nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_filter_rejects_stops_every_worker() {
    let Some(bin) = nginx::binary("a_configuration_the_filter_rejects_stops_every_worker") else {
        return;
    };
    let config = json!({"host": "nginx", "version": "3.4.1.0", "companion": {}, "storage": {}});
    match Nginx::try_start(&bin, &config).await {
        Ok(_) => panic!("nginx served with a configuration the filter rejects"),
        Err((reason, log)) => {
            assert!(reason.contains("cannot be respawned"), "{reason}\n{log}");
            assert!(
                log.contains("fallback: invalid plugin configuration, the filter is not started")
                    && log.contains("companion.token: required"),
                "{log}"
            );
        }
    }
}
