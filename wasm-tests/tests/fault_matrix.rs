//! The fault matrix: while a few clients send requests through the real Envoy running the
//! filter, each case breaks one thing — the control plane dies, flaps, answers 500, answers
//! slower than its timeout; the store answers 503 or too slowly; the companion dies and
//! returns — waits until the filter has seen the fault, keeps it a little longer, lifts it, and
//! keeps the requests flowing through the recovery. Every case starts with a config in force,
//! so the target is 0 failed requests in every case; a case whose fault the filter never saw
//! fails too (it would have tested nothing).
//!
//! One line per case on stderr (`--nocapture` shows it); the table goes to
//! `target/fault-matrix.md` and `target/fault-matrix.json`, Envoy's log (the filter's lines
//! included) to `target/fault-matrix-envoy.log`. `docs/faults.md` holds a real run's
//! table and how to re-run it.

use serde::Serialize;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wasm_tests::envoy::parse_stat;
use wasm_tests::fault_proxy::{Fault, FaultProxy, Scope};
use wasm_tests::load::{run_load, LoadLimits, LoadReport, Probe};
use wasm_tests::stack::{routing_document, ImportStack};
use wasm_tests::tools::target_dir;
use wasm_tests::{Envoy, Mode};

/// Requests flow this long before the fault.
const LEAD: Duration = Duration::from_millis(500);
/// The longest wait for the filter to see a fault (or to reach a case's starting state).
const REACT: Duration = Duration::from_secs(15);
/// The fault stays this long after the filter saw it.
const HOLD: Duration = Duration::from_secs(1);
/// Requests keep flowing this long after the fault is lifted: the recovery happens under load.
const TAIL: Duration = Duration::from_millis(1500);
/// Every worker applies a new config generation at its own next tick (100 ms here): once the
/// shared gauge shows the starting source, the other worker may still serve the previous
/// config for up to a tick. A case starts after this.
const SETTLE: Duration = Duration::from_millis(300);
/// A case with fewer requests than this says nothing about requests during the fault.
const MIN_SENT: u64 = 50;

/// The request loop of each case: bounded by count and time; the case stops it earlier.
const LIMITS: LoadLimits = LoadLimits {
    clients: 4,
    max_requests: 50_000,
    max_duration: Duration::from_secs(40),
    request_timeout: Duration::from_secs(5),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    CpDies,
    CpFlaps,
    Cp500,
    CpSlow,
    Store503,
    StoreObject503,
    StoreSlow,
    StoreObjectSlow,
    CompanionDies,
    AllDown,
}

/// Where a case starts: which config is in force when the fault comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Start {
    /// The CP answers; its config is in force.
    ControlPlane,
    /// The CP is down; the config imported from storage is in force, refreshed every 2 s.
    Fallback,
}

impl Case {
    const ALL: [Case; 10] = [
        Case::CpDies,
        Case::CpFlaps,
        Case::Cp500,
        Case::CpSlow,
        Case::Store503,
        Case::StoreObject503,
        Case::StoreSlow,
        Case::StoreObjectSlow,
        Case::CompanionDies,
        Case::AllDown,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::CpDies => "cp-dies",
            Case::CpFlaps => "cp-flaps",
            Case::Cp500 => "cp-500",
            Case::CpSlow => "cp-slow",
            Case::Store503 => "store-503",
            Case::StoreObject503 => "store-object-503",
            Case::StoreSlow => "store-slow",
            Case::StoreObjectSlow => "store-object-slow",
            Case::CompanionDies => "companion-dies",
            Case::AllDown => "all-down",
        }
    }

    fn fault(self) -> &'static str {
        match self {
            Case::CpDies => "the CP stops (connections refused), returns after the filter switched",
            Case::CpFlaps => "the CP stops and restarts every 600 ms (350 ms down)",
            Case::Cp500 => "the CP answers every poll with 500",
            Case::CpSlow => "the CP answers after 3 s (the filter's CP timeout is 1 s)",
            Case::Store503 => "the store answers every request with 503 (the signer's HEADs too)",
            Case::StoreObject503 => "the store answers the object GETs with 503 (HEADs pass)",
            Case::StoreSlow => {
                "the store answers every request after 3 s (the signer's HEADs too; companion \
                 timeout 1 s)"
            }
            Case::StoreObjectSlow => {
                "the store answers the object GETs after 3 s (storage timeout 2 s)"
            }
            Case::CompanionDies => "the companion is killed (SIGKILL), restarted on its port",
            Case::AllDown => {
                "store 503 and companion killed, then the CP stops: no fallback can be imported"
            }
        }
    }

    /// What the filter's log must say about the fault: the operator reading it is pointed at
    /// the party that failed, with what it did.
    fn diagnosis(self) -> &'static str {
        match self {
            Case::CpDies | Case::CpFlaps | Case::CpSlow | Case::AllDown => {
                "control plane fallback_cp: no answer (connection failed or no response within \
                 1000 ms)"
            }
            Case::Cp500 => "control plane fallback_cp: HTTP 500: mock CP failure",
            Case::Store503 => "companion fallback_companion cannot reach storage (HTTP 503: ",
            Case::StoreObject503 => "storage answered HTTP 503 for http://127.0.0.1:",
            Case::StoreSlow | Case::CompanionDies => "companion fallback_companion unreachable",
            Case::StoreObjectSlow => "storage fallback_storage unreachable fetching",
        }
    }

    fn start(self) -> Start {
        match self {
            Case::CpDies | Case::CpFlaps | Case::Cp500 | Case::CpSlow | Case::AllDown => {
                Start::ControlPlane
            }
            Case::Store503
            | Case::StoreObject503
            | Case::StoreSlow
            | Case::StoreObjectSlow
            | Case::CompanionDies => Start::Fallback,
        }
    }
}

/// The filter's fetch counters (`wasmcustom.fallback_fetch_{success,failure}_<stage>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FetchCounts {
    cp_failed: u64,
    companion_failed: u64,
    storage_failed: u64,
    cp_ok: u64,
    storage_ok: u64,
}

impl FetchCounts {
    fn since(self, before: FetchCounts) -> FetchCounts {
        FetchCounts {
            cp_failed: self.cp_failed.saturating_sub(before.cp_failed),
            companion_failed: self
                .companion_failed
                .saturating_sub(before.companion_failed),
            storage_failed: self.storage_failed.saturating_sub(before.storage_failed),
            cp_ok: self.cp_ok.saturating_sub(before.cp_ok),
            storage_ok: self.storage_ok.saturating_sub(before.storage_ok),
        }
    }

    fn failures(self) -> FetchFailures {
        FetchFailures {
            control_plane: self.cp_failed,
            companion: self.companion_failed,
            storage: self.storage_failed,
        }
    }
}

/// Fetch failures per stage, for the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct FetchFailures {
    control_plane: u64,
    companion: u64,
    storage: u64,
}

/// What the filter reports: its fetch counters and the source of the config in force
/// (`fallback_source`: 1 control plane, 2 fallback).
async fn filter_view(envoy: &Envoy) -> (FetchCounts, Option<u64>) {
    let stats = envoy.stats().await;
    let counter = |name: &str| parse_stat(&stats, &format!("wasmcustom.fallback_fetch_{name}"));
    (
        FetchCounts {
            cp_failed: counter("failure_control_plane").unwrap_or(0),
            companion_failed: counter("failure_companion").unwrap_or(0),
            storage_failed: counter("failure_storage").unwrap_or(0),
            cp_ok: counter("success_control_plane").unwrap_or(0),
            storage_ok: counter("success_storage").unwrap_or(0),
        },
        parse_stat(&stats, "wasmcustom.fallback_source"),
    )
}

/// Polls the filter's view until `done(counts since before, source)` holds, within [`REACT`].
async fn until_filter(
    envoy: &Envoy,
    before: FetchCounts,
    what: &str,
    done: impl Fn(FetchCounts, Option<u64>) -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let (counts, source) = filter_view(envoy).await;
        if done(counts.since(before), source) {
            return Ok(());
        }
        if started.elapsed() > REACT {
            return Err(format!(
                "within {REACT:?}, the filter never {what} (fetch counts since then: {:?}, \
                 source gauge {source:?})",
                counts.since(before)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until an import failed at the companion.
async fn companion_failed(envoy: &Envoy, before: FetchCounts) -> Result<(), String> {
    until_filter(
        envoy,
        before,
        "had an import fail at the companion",
        |f, _| f.companion_failed >= 1,
    )
    .await
}

fn store_proxy(stack: &ImportStack) -> &FaultProxy {
    stack
        .store_proxy
        .as_ref()
        .expect("the stack was started with a store proxy")
}

/// Puts the stack in `start`: every party healthy, except the CP when starting on fallback.
async fn reach_start(stack: &mut ImportStack, envoy: &Envoy, start: Start) -> Result<(), String> {
    store_proxy(stack).clear_fault();
    stack.cp.set_mode(Mode::Normal);
    let before = filter_view(envoy).await.0;
    let reached = match start {
        Start::ControlPlane => {
            if !stack.cp.is_running() {
                stack.cp.restart().await;
            }
            until_filter(envoy, before, "served the CP's config", |_, source| {
                source == Some(1)
            })
            .await
        }
        Start::Fallback => {
            stack.cp.stop().await;
            until_filter(envoy, before, "served the fallback config", |_, source| {
                source == Some(2)
            })
            .await
        }
    };
    tokio::time::sleep(SETTLE).await;
    reached
}

/// Injects the case's fault, waits until the filter has seen it, and holds it for [`HOLD`].
async fn inject(
    case: Case,
    stack: &mut ImportStack,
    envoy: &Envoy,
    before: FetchCounts,
) -> Result<(), String> {
    let seen = match case {
        Case::CpDies => {
            stack.cp.stop().await;
            until_filter(envoy, before, "switched to the fallback config", |_, s| {
                s == Some(2)
            })
            .await
        }
        Case::CpFlaps => {
            // 600 ms against the 500 ms poll interval: the polls drift across the down phases.
            let started = Instant::now();
            let mut cycles = 0;
            loop {
                stack.cp.stop().await;
                tokio::time::sleep(Duration::from_millis(350)).await;
                stack.cp.restart().await;
                tokio::time::sleep(Duration::from_millis(250)).await;
                cycles += 1;
                let failed = filter_view(envoy).await.0.since(before).cp_failed;
                if cycles >= 6 && failed >= 2 {
                    break Ok(());
                }
                if started.elapsed() > REACT {
                    break Err(format!(
                        "{cycles} flaps in {REACT:?} made {failed} failed polls (expected 2 or more)"
                    ));
                }
            }
        }
        Case::Cp500 | Case::CpSlow => {
            stack.cp.set_mode(if case == Case::Cp500 {
                Mode::Fail500
            } else {
                Mode::Slow(Duration::from_secs(3))
            });
            until_filter(envoy, before, "switched to the fallback config", |f, s| {
                f.cp_failed >= 2 && s == Some(2)
            })
            .await
        }
        Case::Store503 | Case::StoreSlow | Case::StoreObject503 | Case::StoreObjectSlow => {
            let fault = if matches!(case, Case::Store503 | Case::StoreObject503) {
                Fault::Status(503)
            } else {
                Fault::Delay(Duration::from_secs(3))
            };
            if matches!(case, Case::Store503 | Case::StoreSlow) {
                // The signer's HEAD fails first: the companion answers 503 or too late.
                store_proxy(stack).set_fault(fault, Scope::Every);
                companion_failed(envoy, before).await
            } else {
                store_proxy(stack).set_fault(fault, Scope::Method("GET"));
                until_filter(envoy, before, "had an object fetch fail", |f, _| {
                    f.storage_failed >= 1
                })
                .await
            }
        }
        Case::CompanionDies => {
            stack.signer.stop().await;
            companion_failed(envoy, before).await
        }
        Case::AllDown => {
            store_proxy(stack).set_fault(Fault::Status(503), Scope::Every);
            stack.signer.stop().await;
            stack.cp.stop().await;
            until_filter(
                envoy,
                before,
                "gave up on the CP and failed to import",
                |f, _| f.cp_failed >= 2 && f.companion_failed >= 1,
            )
            .await
        }
    };
    if seen.is_ok() {
        tokio::time::sleep(HOLD).await;
    }
    seen
}

/// Lifts the case's fault and waits until the filter has recovered from it: back on the CP's
/// config for the cases that started there, a successful import for those on fallback (the CP
/// stays down). Returns how long the recovery took.
async fn lift(case: Case, stack: &mut ImportStack, envoy: &Envoy) -> Result<Duration, String> {
    let lifted = Instant::now();
    let before = filter_view(envoy).await.0;
    let cp_back = |f: FetchCounts, s: Option<u64>| f.cp_ok >= 1 && s == Some(1);
    match case {
        Case::CpDies | Case::CpFlaps | Case::Cp500 | Case::CpSlow => {
            stack.cp.set_mode(Mode::Normal);
            if !stack.cp.is_running() {
                stack.cp.restart().await;
            }
            until_filter(envoy, before, "served the CP's config again", cp_back).await?;
        }
        Case::Store503 | Case::StoreObject503 | Case::StoreSlow | Case::StoreObjectSlow => {
            store_proxy(stack).clear_fault();
            until_filter(envoy, before, "imported from storage again", |f, _| {
                f.storage_ok >= 1
            })
            .await?;
        }
        Case::CompanionDies => {
            stack.signer.restart().await;
            until_filter(envoy, before, "imported from storage again", |f, _| {
                f.storage_ok >= 1
            })
            .await?;
        }
        Case::AllDown => {
            // The CP first: a fallback import must not sneak in while the CP is still down.
            stack.cp.restart().await;
            until_filter(envoy, before, "served the CP's config again", cp_back).await?;
            store_proxy(stack).clear_fault();
            stack.signer.restart().await;
        }
    }
    Ok(lifted.elapsed())
}

/// One row of the table.
#[derive(Debug, Serialize)]
struct Row {
    case: &'static str,
    fault: &'static str,
    start: Start,
    sent: u64,
    failed: u64,
    served_by_control_plane: u64,
    served_by_fallback: u64,
    /// Per config source, when the first and last requests answered under it were sent
    /// (milliseconds into the case).
    served_between: std::collections::BTreeMap<String, (u64, u64)>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    duration_ms: u64,
    /// From lifting the fault to the filter's recovery (see [`lift`]).
    recovery_ms: Option<u64>,
    filter_fetch_failures: FetchFailures,
    /// Why this case fails, when it does (beyond `failed`).
    problems: Vec<String>,
    /// The first failed requests: milliseconds into the case and what was wrong.
    failures: Vec<(u64, String)>,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "fault-matrix: {:<17} sent {:>6}  failed {:>3}  duration {:>5.1} s  (recovered in \
             {}; CP config {}, fallback {}; p99 {:.1} ms, max {:.1} ms; filter fetch failures: \
             CP {}, companion {}, storage {}){}",
            self.case,
            self.sent,
            self.failed,
            self.duration_ms as f64 / 1000.0,
            recovery(self.recovery_ms),
            self.served_by_control_plane,
            self.served_by_fallback,
            self.p99_ms,
            self.max_ms,
            self.filter_fetch_failures.control_plane,
            self.filter_fetch_failures.companion,
            self.filter_fetch_failures.storage,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("  PROBLEMS: {}", self.problems.join("; "))
            }
        )
    }
}

fn recovery(ms: Option<u64>) -> String {
    ms.map_or("never".to_owned(), |ms| {
        format!("{:.1} s", ms as f64 / 1000.0)
    })
}

/// The table, under a line saying what ran: `filter` is the filter configuration in force.
fn markdown(rows: &[Row], envoy_concurrency: u32, filter: &serde_json::Value) -> String {
    let ms = |value: &serde_json::Value| value.as_u64().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Envoy 1.40 with {envoy_concurrency} workers, {} clients with keep-alive, loopback; CP \
         poll {} ms, CP timeout {} ms, {} CP failures to fall back, fallback refresh {} ms, \
         companion timeout {} ms, storage timeout {} ms, retries {}–{} ms.\n",
        LIMITS.clients,
        ms(&filter["poll_interval_ms"]),
        ms(&filter["control_plane"]["timeout_ms"]),
        ms(&filter["cp_failure_threshold"]),
        ms(&filter["fallback_refresh_interval_ms"]),
        ms(&filter["companion"]["timeout_ms"]),
        ms(&filter["storage"]["timeout_ms"]),
        ms(&filter["retry_initial_ms"]),
        ms(&filter["retry_max_ms"]),
    );
    out.push_str(
        "| case | fault while requests flow | config in force before | sent | failed | \
         answered under CP / fallback config | latency p50 / p99 / max (ms) | duration (s) | \
         recovered after the fault was lifted | filter fetch failures CP / companion / storage |\n",
    );
    out.push_str("|---|---|---|---:|---:|---|---|---:|---:|---|\n");
    for r in rows {
        let start = match r.start {
            Start::ControlPlane => "control plane",
            Start::Fallback => "fallback (CP down)",
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {start} | {} | {} | {} / {} | {:.1} / {:.1} / {:.0} | {:.1} | {} | {} / {} / {} |",
            r.case,
            r.fault,
            r.sent,
            r.failed,
            r.served_by_control_plane,
            r.served_by_fallback,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.duration_ms as f64 / 1000.0,
            recovery(r.recovery_ms),
            r.filter_fetch_failures.control_plane,
            r.filter_fetch_failures.companion,
            r.filter_fetch_failures.storage,
        );
    }
    out
}

/// Runs `script` while the request loop runs, then lets requests flow for [`TAIL`] more.
async fn under_load<T, F: Future<Output = T>>(
    base_url: &str,
    probes: &[Probe],
    script: F,
) -> (LoadReport, T) {
    let (stop, stop_rx) = watch::channel(false);
    let load = {
        let base_url = base_url.to_owned();
        let probes = probes.to_vec();
        tokio::spawn(async move { run_load(&base_url, &probes, LIMITS, stop_rx).await })
    };
    tokio::time::sleep(LEAD).await;
    let outcome = script.await;
    tokio::time::sleep(TAIL).await;
    let _ = stop.send(true);
    let report = load.await.expect("the request loop panicked");
    (report, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_under_any_fault_once_a_config_is_in_force() {
    let mut stack = ImportStack::start_with_store_proxy().await;
    let document = routing_document(&[("shop", stack.alpha.port()), ("cart", stack.beta.port())]);
    stack.cp.set_document(&document);
    stack.export(&document).await;
    let concurrency = 2;
    let envoy = Envoy::start(stack.envoy_options(concurrency)).await;
    let probes = [
        Probe {
            path: "/shop/items".into(),
            upstream: "alpha".into(),
            upstream_path: "/items".into(),
        },
        Probe {
            path: "/cart/checkout".into(),
            upstream: "beta".into(),
            upstream_path: "/checkout".into(),
        },
    ];

    let mut rows = Vec::new();
    for case in Case::ALL {
        let mut problems = Vec::new();
        if let Err(e) = reach_start(&mut stack, &envoy, case.start()).await {
            problems.push(format!("could not reach the starting state: {e}"));
        }
        let before = filter_view(&envoy).await.0;
        let log_before = envoy.log().len();
        let (report, (seen, recovered)) = under_load(&envoy.listener_url(), &probes, async {
            let seen = inject(case, &mut stack, &envoy, before).await;
            (seen, lift(case, &mut stack, &envoy).await)
        })
        .await;
        let fetch_failures = filter_view(&envoy).await.0.since(before).failures();
        if let Err(e) = seen {
            problems.push(format!("the fault was not seen: {e}"));
        }
        if let Err(e) = &recovered {
            problems.push(format!("no recovery: {e}"));
        }
        let log = envoy.log();
        if !log
            .get(log_before..)
            .unwrap_or("")
            .contains(case.diagnosis())
        {
            problems.push(format!(
                "the filter's log never said {:?} during the case",
                case.diagnosis()
            ));
        }
        if report.sent < MIN_SENT {
            problems.push(format!(
                "only {} requests during the case (at least {MIN_SENT} expected)",
                report.sent
            ));
        }
        if case == Case::AllDown && report.served_by("fallback") > 0 {
            problems.push(format!(
                "{} requests were answered under a fallback config that could not be imported",
                report.served_by("fallback")
            ));
        }
        let row = Row {
            case: case.name(),
            fault: case.fault(),
            start: case.start(),
            sent: report.sent,
            failed: report.failed,
            served_by_control_plane: report.served_by("control_plane"),
            served_by_fallback: report.served_by("fallback"),
            served_between: report.served_between,
            p50_ms: report.p50_ms,
            p99_ms: report.p99_ms,
            max_ms: report.max_ms,
            duration_ms: report.duration_ms,
            recovery_ms: recovered.ok().map(|d| d.as_millis() as u64),
            filter_fetch_failures: fetch_failures,
            problems,
            failures: report.failures,
        };
        eprintln!("{}", row.line());
        for (at, failure) in &row.failures {
            eprintln!("    at {at} ms: {failure}");
        }
        rows.push(row);
    }

    let table = markdown(&rows, concurrency, &stack.filter_config());
    let dir = target_dir();
    std::fs::create_dir_all(&dir).expect("create the target dir");
    std::fs::write(dir.join("fault-matrix.md"), &table).expect("write fault-matrix.md");
    std::fs::write(
        dir.join("fault-matrix.json"),
        serde_json::to_vec_pretty(&rows).expect("serialize the rows"),
    )
    .expect("write fault-matrix.json");
    std::fs::write(dir.join("fault-matrix-envoy.log"), envoy.log())
        .expect("write fault-matrix-envoy.log");
    eprintln!("{table}");

    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.failed > 0 || !r.problems.is_empty())
        .map(Row::line)
        .collect();
    assert!(
        bad.is_empty(),
        "cases with failed requests or problems:\n{}\n--- envoy.log (tail) ---\n{}",
        bad.join("\n"),
        envoy.log_tail(60)
    );
}
