//! Version skew in the real Envoy: a filter one release ahead (its `version` has no export yet)
//! starts from the previous release's export listed in `accept_versions`, signed for that
//! version, logs the choice, and moves to its own version's export once there is one.

use fallback_companion::signing::SigningKey;
use std::time::Duration;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{self, HttpResponse};
use wasm_tests::stack::{routing_document, ImportStack, VERSION};
use wasm_tests::Envoy;

const WAIT: Duration = Duration::from_secs(30);
const PREVIOUS: &str = "3.4.0.0";
/// RFC 8032 TEST 1's seed.
const SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";

async fn get(envoy: &Envoy, path: &str) -> Result<HttpResponse, String> {
    http::get(&format!("{}{path}", envoy.listener_url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_one_release_ahead_starts_from_the_previous_releases_export() {
    let mut stack = ImportStack::start().await;
    let key = SigningKey::parse(SEED).unwrap();
    stack
        .export_as(
            PREVIOUS,
            &routing_document(&[("shop", stack.alpha.port())]),
            Some(&key),
        )
        .await;
    stack.cp.stop().await;
    let mut options = stack.envoy_options(2);
    options.filter_config["accept_versions"] = serde_json::json!(["3.3.0.0", PREVIOUS]);
    options.filter_config["public_keys"] = serde_json::json!([key.public_key_base64()]);
    let envoy = Envoy::start(options).await;
    wait_until("the previous release's export is served", WAIT, || async {
        get(&envoy, "/shop/x")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["upstream"] == "alpha")
    })
    .await;
    for step in [
        format!("no export for version {VERSION} (companion: HTTP 404); trying version 3.3.0.0"),
        "no export for version 3.3.0.0 (companion: HTTP 404); trying version 3.4.0.0".to_owned(),
    ] {
        wait_until("every step is logged", WAIT, || async {
            envoy.log_contains(&step)
        })
        .await;
    }
    wait_until("the choice is logged", WAIT, || async {
        envoy.log_contains(&format!(
            "version {PREVIOUS} in place of version {VERSION} (accept_versions)"
        ))
    })
    .await;

    // This release's own export appears: the next refresh prefers it.
    stack
        .export_as(
            VERSION,
            &routing_document(&[("shop", stack.beta.port())]),
            Some(&key),
        )
        .await;
    wait_until("the filter moves to its own version", WAIT, || async {
        get(&envoy, "/shop/x")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["upstream"] == "beta")
    })
    .await;
}
