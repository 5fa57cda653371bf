//! Kong's plugins end to end in the real Envoy with two workers: each plugin's status, body and
//! headers as Kong documents them, what the upstream receives, rate limits counted across both
//! workers, an unsupported plugin failing closed, and `fallback-companion match` reporting the
//! same decisions.

use serde_json::{json, Value};
use std::time::Duration;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::stack::ImportStack;
use wasm_tests::{companion_match, Envoy};

const WAIT: Duration = Duration::from_secs(30);

const ALICE_ID: &str = "9f1c2e7a-0000-4000-8000-00000000c0a1";
const BOB_ID: &str = "9f1c2e7a-0000-4000-8000-00000000c0b0";
/// Kong's export of bob's basic-auth password "open sesame": `sha1("open sesame" .. BOB_ID)`.
const BOB_PASSWORD_HASH: &str = "5df614dbfcaf0a376f8f58c0d894213d139918f8";
/// `base64("bob:open sesame")`.
const BOB_BASIC: &str = "Basic Ym9iOm9wZW4gc2VzYW1l";
/// Requests allowed per hour and client on `/limited`.
const LIMIT: u64 = 6;

fn document(alpha: u16) -> Value {
    let route = |name: &str, plugins: Value| json!({"name": name, "paths": [format!("/{name}")], "plugins": plugins});
    json!({
        "_format_version": "3.0",
        "services": [{
            "name": "alpha",
            "url": format!("http://127.0.0.1:{alpha}"),
            "routes": [
                route("keyed", json!([
                    {"name": "key-auth", "config": {"hide_credentials": true}},
                    {"name": "acl", "config": {"allow": ["admins"]}}
                ])),
                route("basic", json!([{"name": "basic-auth"}])),
                route("denied-ip", json!([{"name": "ip-restriction", "config": {"deny": ["127.0.0.0/8", "::1"]}}])),
                route("allowed-ip", json!([{"name": "ip-restriction", "config": {"allow": ["127.0.0.1/32", "::1/128"]}}])),
                route("limited", json!([{"name": "rate-limiting", "config": {"hour": LIMIT, "limit_by": "ip"}}])),
                route("closed", json!([{"name": "request-termination", "config": {"status_code": 403, "message": "closed for maintenance"}}])),
                route("cors", json!([{"name": "cors", "config": {
                    "origins": ["https://app.example.com"], "methods": ["GET", "POST"],
                    "max_age": 600, "exposed_headers": ["X-Total"]}}])),
                route("transform", json!([
                    {"name": "request-transformer", "config": {
                        "remove": {"headers": ["x-secret"]},
                        "add": {"headers": ["x-added:yes"], "querystring": ["from:fallback"]}}},
                    {"name": "response-transformer", "config": {
                        "add": {"headers": ["x-served-by:fallback"]},
                        "remove": {"headers": ["content-type"]}}}
                ])),
                route("jwt", json!([{"name": "jwt"}])),
                route("metrics", json!([{"name": "prometheus"}, {"name": "http-log", "config": {"http_endpoint": "http://logs.internal/"}}])),
                route("cached", json!([{"name": "proxy-cache"}])),
                route("open", json!([])),
            ],
        }],
        "consumers": [
            {"username": "alice", "id": ALICE_ID,
             "keyauth_credentials": [{"key": "alice-key"}],
             "acls": [{"group": "admins"}]},
            {"username": "bob", "id": BOB_ID,
             "keyauth_credentials": [{"key": "bob-key"}],
             "basicauth_credentials": [{"username": "bob", "password": BOB_PASSWORD_HASH}],
             "acls": [{"group": "admins"}],
             // Consumer + route scope: only bob, only on /keyed.
             "plugins": [{"name": "request-termination", "route": "keyed",
                          "config": {"status_code": 451, "message": "not for bob"}}]},
            {"username": "carol", "keyauth_credentials": [{"key": "carol-key"}]}
        ],
        "plugins": [{"name": "correlation-id", "config": {"echo_downstream": true}}],
    })
}

async fn send(envoy: &Envoy, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("host", "api.example.com")];
    all.extend_from_slice(headers);
    request(
        method,
        &format!("{}{path}", envoy.listener_url()),
        &all,
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path} through Envoy: {e}"))
}

fn message(r: &HttpResponse) -> String {
    r.json()["message"].as_str().unwrap_or_default().to_owned()
}

/// What `fallback-companion match` answers for `GET path` on the document's host.
fn predict(config: &std::path::Path, path: &str, headers: &[(&str, &str)]) -> Value {
    companion_match(
        config,
        "GET",
        &format!("http://api.example.com{path}"),
        headers,
    )
}

async fn start() -> (ImportStack, Envoy, tempfile::TempDir) {
    let stack = ImportStack::start().await;
    let doc = document(stack.alpha.port());
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("kong.json"), doc.to_string()).expect("config written");
    stack.cp.set_document(&doc);
    let mut options = stack.envoy_options(2);
    options.filter_config["ignore_unsupported_plugins"] = json!(["proxy-cache"]);
    let envoy = Envoy::start(options).await;
    // Every worker applies the config on its own tick: several answers in a row, over as many
    // connections, spread over both workers.
    wait_until("both workers enforce the plugins", WAIT, || async {
        for _ in 0..8 {
            if send(&envoy, "GET", "/closed", &[]).await.status != 403 {
                return false;
            }
        }
        true
    })
    .await;
    (stack, envoy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_access_control() {
    let (_stack, envoy, dir) = start().await;

    let r = send(&envoy, "GET", "/keyed", &[]).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (401, "No API key found in request")
    );
    assert_eq!(r.header("www-authenticate"), Some("Key realm=\"kong\""));
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let r = send(&envoy, "GET", "/keyed", &[("apikey", "wrong")]).await;
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));

    let r = send(&envoy, "GET", "/keyed/x?apikey=alice-key&page=2", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json();
    assert_eq!(echoed["headers"]["x-consumer-username"], "alice");
    assert_eq!(echoed["headers"]["x-consumer-id"], ALICE_ID);
    assert_eq!(echoed["headers"]["x-consumer-groups"], "admins");
    assert_eq!(
        echoed["path"], "/x?page=2",
        "hide_credentials removes the key: {echoed}"
    );

    let r = send(&envoy, "GET", "/keyed", &[("apikey", "alice-key")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"].get("apikey"), None, "hide_credentials");

    // acl: carol is in no allowed group.
    let r = send(&envoy, "GET", "/keyed", &[("apikey", "carol-key")]).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (403, "You cannot consume this service")
    );
    // A consumer + route plugin applies to bob on this route only.
    let r = send(&envoy, "GET", "/keyed", &[("apikey", "bob-key")]).await;
    assert_eq!((r.status, message(&r).as_str()), (451, "not for bob"));

    // basic-auth against Kong's hashed password.
    let r = send(&envoy, "GET", "/basic", &[]).await;
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"kong\""));
    let r = send(
        &envoy,
        "GET",
        "/basic",
        &[("authorization", "Basic Ym9iOndyb25n")],
    )
    .await;
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));
    let r = send(&envoy, "GET", "/basic", &[("authorization", BOB_BASIC)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-consumer-username"], "bob");

    // ip-restriction: the tests' client is on loopback.
    let r = send(&envoy, "GET", "/denied-ip", &[]).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (403, "Your IP address is not allowed")
    );
    assert_eq!(send(&envoy, "GET", "/allowed-ip", &[]).await.status, 200);

    // match reports the same decisions.
    let config = dir.path().join("kong.json");
    let predicted = predict(&config, "/keyed", &[]);
    assert_eq!(predicted["response"]["status"], 401, "{predicted}");
    assert_eq!(
        predicted["response"]["body"]["message"],
        "No API key found in request"
    );
    let predicted = predict(&config, "/keyed", &[("apikey", "alice-key")]);
    assert!(predicted.get("response").is_none(), "{predicted}");
    assert_eq!(
        predicted["upstream_headers"]["x-consumer-username"],
        "alice"
    );
    let predicted = predict(&config, "/denied-ip", &[]);
    assert_eq!(predicted["response"]["status"], 403, "{predicted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_counted_across_both_workers() {
    let (_stack, envoy, _dir) = start().await;
    // Each request is a new connection: Envoy spreads them over its two workers, and the
    // counter they share must see all of them.
    for i in 1..=LIMIT {
        let r = send(&envoy, "GET", "/limited", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(
            r.header("x-ratelimit-limit-hour"),
            Some(&*LIMIT.to_string())
        );
        assert_eq!(
            r.header("x-ratelimit-remaining-hour"),
            Some(&*(LIMIT - i).to_string()),
            "request {i}"
        );
        assert_eq!(r.header("ratelimit-limit"), Some(&*LIMIT.to_string()));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some(&*(LIMIT - i).to_string())
        );
        assert!(r.header("ratelimit-reset").is_some());
    }
    for _ in 0..4 {
        let r = send(&envoy, "GET", "/limited", &[]).await;
        assert_eq!(
            (r.status, message(&r).as_str()),
            (429, "API rate limit exceeded")
        );
        assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("0"));
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=3600).contains(&retry), "{retry}");
    }
    // Other routes are not limited.
    assert_eq!(send(&envoy, "GET", "/open", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_cors_transformers_and_correlation_id() {
    let (_stack, envoy, dir) = start().await;

    let r = send(&envoy, "GET", "/closed", &[]).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (403, "closed for maintenance")
    );

    // CORS preflight, answered by the filter.
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-custom"),
    ];
    let r = send(&envoy, "OPTIONS", "/cors", &preflight).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-custom"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    // An actual request is proxied and its response gets the CORS headers.
    let r = send(
        &envoy,
        "GET",
        "/cors",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Total"));
    let r = send(&envoy, "GET", "/cors", &[("origin", "https://evil.test")]).await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Transformers.
    let r = send(&envoy, "GET", "/transform/a?x=1", &[("x-secret", "s")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("fallback"));
    assert_eq!(r.header("content-type"), None);
    let echoed: Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(echoed["path"], "/a?x=1&from=fallback");
    assert_eq!(echoed["headers"]["x-added"], "yes");
    assert_eq!(echoed["headers"].get("x-secret"), None);

    // correlation-id (global): upstream and downstream see the same id; a given one is kept.
    let r = send(&envoy, "GET", "/open", &[]).await;
    let id = r
        .header("kong-request-id")
        .expect("echoed downstream")
        .to_owned();
    assert_eq!(r.json()["headers"]["kong-request-id"], id.as_str());
    assert!(id.contains('#'), "uuid#counter: {id}");
    let r = send(&envoy, "GET", "/open", &[("kong-request-id", "given-id")]).await;
    assert_eq!(r.header("kong-request-id"), Some("given-id"));
    // Global plugins run on plugin answers too.
    let r = send(&envoy, "GET", "/closed", &[]).await;
    assert!(r.header("kong-request-id").is_some());

    // match: termination and preflight answers, upstream headers.
    let config = dir.path().join("kong.json");
    let predicted = predict(&config, "/closed", &[]);
    assert_eq!(predicted["response"]["status"], 403, "{predicted}");
    assert_eq!(
        predicted["response"]["body"]["message"],
        "closed for maintenance"
    );
    let predicted = predict(&config, "/transform", &[]);
    assert_eq!(
        predicted["upstream_headers"]["x-added"], "yes",
        "{predicted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_plugin_fails_closed_and_is_logged_once() {
    let (_stack, envoy, dir) = start().await;
    for _ in 0..4 {
        let r = send(&envoy, "GET", "/jwt", &[]).await;
        assert_eq!(r.status, 500);
        assert!(message(&r).contains("\"jwt\""), "{}", r.text());
    }
    // Listed in ignore_unsupported_plugins: served.
    assert_eq!(send(&envoy, "GET", "/cached", &[]).await.status, 200);
    // Observe-only plugins (metrics, logs) are skipped by default, and the requests served
    // without them counted.
    let skipped = "wasmcustom.fallback_observe_only_skipped";
    let before = envoy.stat(skipped).await.unwrap_or(0);
    for _ in 0..3 {
        assert_eq!(send(&envoy, "GET", "/metrics", &[]).await.status, 200);
    }
    assert_eq!(send(&envoy, "GET", "/open", &[]).await.status, 200);
    assert_eq!(envoy.stat(skipped).await, Some(before + 3));
    let predicted = predict(&dir.path().join("kong.json"), "/metrics", &[]);
    assert_eq!(
        predicted["skipped_plugins"],
        json!(["http-log", "prometheus"]),
        "{predicted}"
    );
    // Logged once per worker per generation (each of Envoy's 3 root contexts compiles it); the
    // log file is flushed every few seconds.
    let needle = "plugin \"jwt\" is not supported";
    wait_until("the log names the plugin", WAIT, || async {
        envoy.log_contains(needle)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = envoy.log();
    let lines = log.lines().filter(|l| l.contains(needle)).count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines:\n{}",
        envoy.log_tail(40)
    );

    let predicted = predict(&dir.path().join("kong.json"), "/jwt", &[]);
    assert_eq!(predicted["response"]["status"], 500, "{predicted}");
}
