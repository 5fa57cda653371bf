//! The companion's `/ui/` in a real browser (headless Chromium through chromedriver): the
//! status page shows the revision storage holds and the signer's requests by token name; the
//! inspector (fallback-core in WebAssembly) lists a broken config's problems with their paths
//! and answers a request typed in its form as `fallback-companion match` does. Screenshots of
//! both pages go to `target/ui-status.png` and `target/ui-inspector.png`.

use serde_json::{json, Value};
use std::process::Command;
use wasm_tests::companion_process::{companion_match, CompanionProcess};
use wasm_tests::tools::{companion_binary, target_dir};
use wasm_tests::webdriver::Browser;

const VERSION: &str = "3.4.1.0";
const REVISION: &str = "4242";
const TOKEN: &str = "s3cret-for-filters-a";

fn config() -> Value {
    json!({
        "_format_version": "3.0",
        "services": [{"name": "orders", "url": "http://orders.internal:8080/v2", "routes": [
            {"name": "orders-api", "paths": ["/orders"], "plugins": [{"name": "key-auth"}]}
        ]}, {"name": "health", "url": "http://health.internal:9000", "routes": [
            {"name": "health", "paths": ["/health"]}
        ]}],
        "consumers": [{"username": "shop", "keyauth_credentials": [{"key": "k-shop"}]}]
    })
}

/// `fallback-companion export --config-file` into `file://<dir>/kong`, at a known revision.
fn export(dir: &std::path::Path, config_file: &std::path::Path) -> String {
    let storage = format!("file://{}/kong", dir.display());
    let output = Command::new(companion_binary())
        .args(["export", "--config-file"])
        .arg(config_file)
        .args(["--revision", REVISION])
        .env("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", &storage)
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_NODE_ID", "ci-exporter")
        .output()
        .expect("fallback-companion export runs");
    assert!(
        output.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    storage
}

/// Stops the companion when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Scrolls the element with `id` to the top of the window, for the screenshot.
async fn scroll_to(browser: &Browser, id: &str) {
    browser
        .script(
            "document.getElementById(arguments[0]).scrollIntoView();",
            json!([id]),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_inspector_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("kong.json");
    std::fs::write(&config_file, config().to_string()).unwrap();
    let storage = export(dir.path(), &config_file);
    let companion = CompanionProcess::start(&[
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", storage),
        ("FALLBACK_CONFIG_VERSION", VERSION.into()),
        ("FALLBACK_SIGNER_TOKENS", format!("filters-a:{TOKEN}")),
    ])
    .await;
    let base = companion.url();
    // One filter request, so that the page has a signer request to show.
    let signed = wasm_tests::http::request(
        "GET",
        &format!("{base}/v1/fallback-config"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(signed.status, 200, "{}", signed.text());

    let browser = Browser::start().await;

    // The status page: server-rendered, the revision storage holds, the token's name only.
    browser.goto(&format!("{base}/ui/")).await;
    assert_eq!(browser.text("#stored-revision").await, REVISION);
    let signer = browser.text("#signer").await;
    assert!(signer.contains("filters-a"), "{signer}");
    assert!(signer.contains("200"), "{signer}");
    let stored = browser.text("#stored").await;
    assert!(stored.contains("ci-exporter"), "{stored}");
    assert!(stored.contains("matches the body"), "{stored}");
    assert!(
        !browser.source().await.contains(TOKEN),
        "the page shows a token"
    );
    browser
        .screenshot(&target_dir().join("ui-status.png"))
        .await;

    // The inspector loads the stored config and validates it in the browser.
    browser.goto(&format!("{base}/ui/inspector")).await;
    browser.find("body[data-ready=true]").await;
    assert!(
        browser.text("#verdict").await.starts_with("Valid"),
        "{}",
        browser.text("#validation").await
    );

    // A request typed in the form gets the answer of `fallback-companion match`: without a
    // key, key-auth answers; with one, the request goes upstream with the consumer's headers.
    browser
        .type_into("#match-url", "http://gw.example/orders/42?x=1")
        .await;
    browser.click("#match-button").await;
    assert!(
        browser.text("#match-response").await.starts_with("401"),
        "{}",
        browser.text("#match-result").await
    );
    browser.type_into("#match-headers", "apikey: k-shop").await;
    browser.click("#match-button").await;
    assert_eq!(browser.text("#match-route").await, "orders-api");
    assert_eq!(
        browser.text("#match-upstream").await,
        "http://orders.internal:8080/v2/42?x=1"
    );
    let in_browser: Value = serde_json::from_str(&browser.text("#match-json").await).unwrap();
    let cli = companion_match(
        &config_file,
        "GET",
        "http://gw.example/orders/42?x=1",
        &[("apikey", "k-shop")],
    );
    assert_eq!(in_browser, cli, "browser and CLI disagree");
    assert_eq!(
        in_browser["upstream_headers"]["x-consumer-username"],
        "shop"
    );
    scroll_to(&browser, "match-form").await;
    browser
        .screenshot(&target_dir().join("ui-inspector.png"))
        .await;

    // A pasted broken config: every problem with its path; the diff names what changed.
    let mut broken = config();
    broken["services"][1]["routes"][0]["paths"] = json!(["health"]);
    broken["services"][0]["url"] = json!("not a url");
    browser
        .script(
            "document.getElementById('config-input').value = arguments[0];",
            json!([broken.to_string()]),
        )
        .await;
    browser.click("#validate-button").await;
    let validation = browser.text("#validation").await;
    assert!(
        validation.starts_with("Invalid (2 problems)"),
        "{validation}"
    );
    assert!(validation.contains("services[0].url"), "{validation}");
    assert!(
        validation.contains("services[1].routes[0].paths[0]"),
        "{validation}"
    );
    scroll_to(&browser, "validation").await;
    browser
        .screenshot(&target_dir().join("ui-inspector-problems.png"))
        .await;

    let mut changed = config();
    changed["services"][1]["routes"][0]["paths"] = json!(["/health", "/healthz"]);
    changed["consumers"] = json!([]);
    browser
        .script(
            "document.getElementById('config-input').value = arguments[0];",
            json!([changed.to_string()]),
        )
        .await;
    browser.click("#diff-button").await;
    let diff = browser.text("#diff-table").await;
    assert!(diff.contains("routes health"), "{diff}");
    assert!(diff.contains("consumers shop"), "{diff}");
}

/// The export role alone serves the pages and the metrics on `FALLBACK_ADMIN_LISTEN`: the last
/// exports with their outcome, and the export metrics by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_role_alone_serves_its_status_on_the_admin_listener() {
    let cp = wasm_tests::mock_cp::MockCp::start().await;
    cp.set_document(&config());
    let dir = tempfile::tempdir().unwrap();
    let admin_port = wasm_tests::ports::free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    // Not CompanionProcess: it waits for the signer's listener, which this role does not open.
    let log = dir.path().join("companion.log");
    let child = Command::new(companion_binary())
        .arg("run")
        .env_clear()
        .env("NO_COLOR", "1")
        .env("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on")
        .env(
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("file://{}/kong", dir.path().display()),
        )
        .env("FALLBACK_CONFIG_VERSION", VERSION)
        .env("FALLBACK_CONTROL_PLANE_URL", cp.url())
        .env("FALLBACK_POLL_INTERVAL", "100ms")
        .env("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "0s")
        .env("FALLBACK_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .expect("start fallback-companion");
    let _stop = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let page = loop {
        if let Ok(page) = wasm_tests::http::get(&format!("{admin}/ui/")).await {
            if page.status == 200 && page.text().contains("outcome-stored") {
                break page.text();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stored export on {admin}/ui/ within 20 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(page.contains("roles: export"), "{page}");
    assert!(page.contains("id=\"stored-revision\""), "{page}");
    let metrics = wasm_tests::http::get(&format!("{admin}/metrics"))
        .await
        .unwrap()
        .text();
    for line in [
        "fallback_companion_exports_total{outcome=\"stored\"} 1",
        "fallback_companion_export_uploads_total 1",
        "fallback_companion_export_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(
        !metrics.contains("fallback_companion_last_export_timestamp_seconds 0\n"),
        "{metrics}"
    );
}
