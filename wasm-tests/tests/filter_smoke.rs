//! Smoke tests of the filter inside the real Envoy (V8), configured from
//! `examples/envoy/bootstrap.yaml`: the `.wasm` loads and runs on the workers, a configuration
//! the filter rejects stops Envoy, and the VM shows up in Envoy's stats.

use wasm_tests::envoy::{parse_stat, EnvoyOptions};
use wasm_tests::http::get;
use wasm_tests::Envoy;

/// The counter of V8 VMs Envoy created (base VM, one per thread, ...).
const V8_CREATED: &str = "wasm.envoy.wasm.runtime.v8.created";
/// The gauge of V8 VMs alive.
const V8_ACTIVE: &str = "wasm.envoy.wasm.runtime.v8.active";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_without_a_config_yet_answers_503_json_on_every_worker() {
    // Nothing is reachable: no control plane, companion and storage ports closed.
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: 2,
        ..Default::default()
    })
    .await;

    // Several connections (the HTTP client does not pool), so both workers are likely to serve
    // one; every answer must come from the filter.
    for i in 0..8 {
        let url = format!("{}/anything/{i}", envoy.listener_url());
        let resp = get(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- envoy.log ---\n{}", envoy.log_tail(40)));
        assert_eq!(resp.status, 503, "body: {}", resp.text());
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "content-type {content_type:?}"
        );
        let body = resp.json();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("no configuration loaded yet"),
            "message {message:?} in {body}"
        );
    }
    assert!(
        !envoy.log_contains("[critical]"),
        "critical lines in the log:\n{}",
        envoy.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_stops_envoy_with_every_problem_logged() {
    // The filter's on_configure returns false; with `fail_open: false` (the bootstrap's
    // choice) Envoy 1.40 refuses the static listener and exits with status 1 at startup.
    let failure = match Envoy::try_start(EnvoyOptions {
        concurrency: 2,
        filter_config: serde_json::json!({"version": "3.4.1.0", "tick_ms": 10}),
        ..Default::default()
    })
    .await
    {
        Ok(envoy) => panic!(
            "Envoy started with a configuration the filter rejects; log:\n{}",
            envoy.log_tail(40)
        ),
        Err(failure) => failure,
    };
    let status = failure
        .exit_status
        .unwrap_or_else(|| panic!("Envoy did not exit by itself: {failure}"));
    assert_eq!(status.code(), Some(1), "{failure}");
    assert!(
        failure
            .log
            .contains("fallback: invalid plugin configuration")
            && failure.log.contains("companion: required")
            && failure.log.contains("tick_ms: must be at least 50"),
        "the filter's error line is missing: {failure}"
    );
    assert!(
        failure.log.contains("Failed to configure base Wasm plugin"),
        "Envoy's wasm error is missing: {failure}"
    );
    assert!(
        failure.stderr.contains("Unable to create Wasm plugin"),
        "Envoy's fatal error is missing from stderr: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_v8_vms() {
    let concurrency = 2;
    let envoy = Envoy::start(EnvoyOptions {
        concurrency,
        ..Default::default()
    })
    .await;
    let stats = envoy.stats().await;
    let created = parse_stat(&stats, V8_CREATED)
        .unwrap_or_else(|| panic!("{V8_CREATED} missing from /stats:\n{stats}"));
    let active = parse_stat(&stats, V8_ACTIVE)
        .unwrap_or_else(|| panic!("{V8_ACTIVE} missing from /stats:\n{stats}"));
    // Envoy 1.40 keeps a base VM, one for the main thread and one per worker
    // (`active` = concurrency + 2); `created` also counts a VM that did not stay.
    assert!(
        active > u64::from(concurrency),
        "{V8_ACTIVE} = {active}, expected one VM per worker plus main:\n{stats}"
    );
    assert!(created >= active, "{V8_CREATED} = {created} < {active}");
    assert_eq!(envoy.stat("wasm.vm_reload_failure").await, Some(0));
}
