//! A large config applied in the real Envoy (V8) while requests flow: the worker compiles the
//! new generation in slices between requests (`fallback_core::generation`), serves the previous
//! one meanwhile, and switches to the new one at once, with no error answer in between.

use serde_json::Value;
use std::time::{Duration, Instant};
use wasm_tests::bench::{config_lines, main_thread, served_sha256, APPLIED};
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::get;
use wasm_tests::stack::{routing_document, ImportStack};
use wasm_tests::Envoy;

/// Enough routes that compiling takes many 2 ms slices in V8 (about 60 ms of work).
const FILLER_ROUTES: usize = 4_000;
const WAIT: Duration = Duration::from_secs(60);

/// `/<named>` to `port`, and [`FILLER_ROUTES`] more prefixes named `<filler>-<i>`.
fn document(named: &str, port: u16, filler: &str, filler_port: u16) -> Value {
    let names: Vec<String> = (0..FILLER_ROUTES)
        .map(|i| format!("{filler}-{i}"))
        .collect();
    let mut routes: Vec<(&str, u16)> = vec![(named, port)];
    routes.extend(names.iter().map(|n| (n.as_str(), filler_port)));
    routing_document(&routes)
}

/// The status `path` gets through Envoy.
async fn status(envoy: &Envoy, path: &str) -> u16 {
    let url = format!("{}{path}", envoy.listener_url());
    get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- envoy.log ---\n{}", envoy.log_tail(30)))
        .status
}

/// The number of slices the worker (not the main thread) reports for the config `sha256`.
fn worker_slices(log: &str, sha256: &str) -> Option<u32> {
    let main = main_thread(log)?.to_owned();
    let applied = config_lines(log, APPLIED);
    let worker = applied
        .iter()
        .position(|l| l.sha256 == sha256 && l.thread != main)?;
    let line = log.lines().filter(|l| l.contains(APPLIED)).nth(worker)?;
    let slices = line.split("compiled in ").nth(1)?;
    slices.split(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_config_is_compiled_in_slices_while_the_previous_one_serves() {
    let stack = ImportStack::start().await;
    let (alpha, beta) = (stack.alpha.port(), stack.beta.port());
    let first = document("old", alpha, "a", beta);
    let second = document("new", beta, "b", alpha);
    stack.cp.set_document(&first);
    // One worker: the switch it makes is the one every request sees.
    let envoy = Envoy::start(stack.envoy_options(1)).await;
    wait_until("the worker serves the first config", WAIT, || async {
        status(&envoy, "/old").await == 200
    })
    .await;

    stack.cp.set_document(&second);
    let started = Instant::now();
    let mut before = 0;
    loop {
        // Until the switch: the first config answers (/old 200, /new 404 from the filter);
        // from it on, the second. Never both, never neither, never an error.
        let (old, new) = (status(&envoy, "/old").await, status(&envoy, "/new").await);
        match (old, new) {
            (200, 404) => before += 1,
            (404, 200) => break,
            // The switch fell between the two requests.
            (200, 200) => break,
            other => panic!(
                "(/old, /new) answered {other:?} while the second config was applied\n--- envoy.log ---\n{}",
                envoy.log_tail(30)
            ),
        }
        assert!(
            started.elapsed() < WAIT,
            "the second config was not applied within {WAIT:?}\n--- envoy.log ---\n{}",
            envoy.log_tail(30)
        );
    }
    // Once switched, it stays switched.
    for _ in 0..20 {
        assert_eq!(
            (status(&envoy, "/old").await, status(&envoy, "/new").await),
            (404, 200)
        );
    }
    assert!(
        before > 0,
        "no request was served while the second config was compiled"
    );

    let sha256 = served_sha256(&second);
    // Envoy flushes its log every 100 ms.
    wait_until("the worker's line for the second config", WAIT, || async {
        worker_slices(&envoy.log(), &sha256).is_some()
    })
    .await;
    let log = envoy.log();
    let slices = worker_slices(&log, &sha256)
        .unwrap_or_else(|| panic!("no worker line for {sha256}:\n{}", envoy.log_tail(30)));
    assert!(
        slices > 1,
        "the worker compiled {FILLER_ROUTES} routes in {slices} slice(s)"
    );
    assert!(
        !log.contains("[critical]"),
        "critical lines in the log:\n{}",
        envoy.log_tail(40)
    );
}
