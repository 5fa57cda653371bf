//! `bench-proxy` (`make bench-proxy`): what the filter costs per request in Envoy, side by side
//! with no wasm and with a minimal wasm filter, in one run.
//!
//! ```text
//! bench-proxy [--duration SECS] [--rounds N] [--connections N] [--only N,P,...] [--out PATH]
//! bench-proxy --apply [--apply-every SECS] [--duration SECS] [--rounds N] [--out PATH]
//! ```
//!
//! Each variant runs its own Envoy 1.40 (`--concurrency 1`) holding a `direct_response`
//! listener as the upstream; `wrk -t1` loads each in turn, round after round (variants
//! alternate, so a burst of load from elsewhere does not hit one variant only; each round of a
//! variant gets a fresh Envoy and the order turns every round, unless `--same-process`), and
//! the best round (lowest Envoy CPU per request) is reported, with the median over rounds of
//! each round's ratio to P's. Envoy's CPU time is `utime + stime` of
//! `/proc/<pid>/stat` over the run, divided by the requests `wrk` completed. A run counts only
//! when every answer was a 200 from the upstream: the proxy listener answered nothing but 2xx,
//! and the upstream listener served at least as many requests as the proxy completed.
//! See `wasm_tests::bench` for the bootstraps and configs.
//!
//! `--apply` measures F10k alone, alternating a steady run with a run during which the control
//! plane serves a new 10,000-route config every few seconds; each new config must show up in
//! Envoy's log as applied by the worker thread during the run, or the run fails.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::Command;
use wasm_tests::bench::{
    bench_bootstrap, bench_document, bench_document_revision, clock_ticks_per_second, config_lines,
    cpu_ticks, main_thread, parse_wrk, route_host, served_sha256, with_upstream_listener,
    ConfigLine, HandOff, Machine, WrkReport, API_KEY, APPLIED, FETCHED, PROXY_STATS, UPSTREAM_MARK,
    UPSTREAM_STATS,
};
use wasm_tests::demo_cli::{self, Flag};
use wasm_tests::envoy::{bootstrap_template, default_wasm_path, parse_stat, EnvoyOptions};
use wasm_tests::http::request_with_timeout;
use wasm_tests::tools::target_dir;
use wasm_tests::{etag_of, free_port, Envoy, MockCp};

const USAGE: &str = "\
usage: bench-proxy [--duration SECS] [--rounds N] [--connections N] [--only N,P,...]
                   [--compare-wasm PATH[,PATH...]] [--same-process] [--out PATH]
       bench-proxy --apply [--apply-every SECS] [--duration SECS] [--rounds N]
                   [--connections N] [--out PATH]

Runs Envoy (--concurrency 1) in each variant and loads it with wrk; prints rps, p50, p99 and
Envoy's CPU time per request, with the ratio to P (the minimal wasm filter), and writes them as
JSON. Needs `make tools` (Envoy, wrk) and both wasm filters built (`make wasm`).

variants:
  N      no wasm, static cluster
  P      minimal wasm filter (bench/passthrough-filter), static cluster
  PD     minimal filter, the project bootstrap's hand-off (examples/envoy/bootstrap.yaml)
  PK     as PD, also adding the 3 upstream and 5 response headers F1k's key-auth and
         rate-limiting add: what carrying those headers costs Envoy, without the filter
  PF     the minimal filter making F1k's host calls and no more (the request header map,
         the clock, the 3 hand-over writes, 3 upstream adds, 5 response sets) for F1k's
         request: what any proxy-wasm filter with Kong's semantics pays Envoy, the floor
  PS     minimal filter, set_filter_state + dynamic forward proxy
  PO     minimal filter, ORIGINAL_DST cluster from the x-fallback-upstream header
  PT     minimal filter, set_filter_state + ORIGINAL_DST cluster (original_dst_address)
  PH     minimal filter, x-fallback-cluster: original_dst routes to PO's cluster, else as PS
  PX     as PH, the ORIGINAL_DST cluster reading PT's filter state instead of the header
  F10    the Fallback filter, 10 routes, no plugins (project bootstrap)
  F1k    the Fallback filter, 1,000 routes, key-auth + rate-limiting (local) on every route
  F10k   the Fallback filter, 10,000 routes, key-auth + rate-limiting (local) on every route

options:
  --duration SECS    length of each measured wrk run [default: 8]
  --rounds N         measured runs per variant, alternating between variants [default: 2]
  --connections N    wrk connections [default: 32]
  --only LIST        comma-separated variants to run [default: all]
  --compare-wasm PATHS  also run each selected F variant with each of these builds of the
                     filter (comma-separated), named with a trailing `~` (F1k~; F1k~1, F1k~2
                     for several): builds side by side in one run
  --same-process     measure every round of a variant in the Envoy started for the first,
                     in the same order every round (faster, but one process's luck, its
                     heap layout and hash seeds, weighs on all its rounds: identical builds
                     have read 15 µs apart that way). By default each round of each variant
                     gets a fresh Envoy, warmed up for 2 s, and the order of the variants
                     turns by one every round
  --apply            measure F10k while new configs are applied (below)
  --apply-every SECS with --apply: seconds between new configs [default: 2]
  --out PATH         the JSON report [default: <target dir>/bench-proxy.json, with --apply
                     <target dir>/bench-proxy-apply.json]
  -h, --help         show this help

--apply: latency while a 10,000-route config is applied on the loaded proxy. Runs F10k alone
(the filter polling the control plane every 500 ms) and alternates, in every round, a steady
run (config unchanged) with an apply run, during which the control plane serves a new revision
of the config (one route renamed) from 1 s in, every --apply-every SECS, until 3 s
before the end. A run fails unless Envoy's log shows the worker applying every revision served
during it (and none during a steady run). Prints both runs of each round with the max latency
and the ratio of their p99s.";

/// How a variant is built.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// A bootstrap of `wasm_tests::bench`, with or without the minimal filter.
    Bench { wasm: bool, hand_off: HandOff },
    /// The project bootstrap with the minimal filter; with `plugin_headers`, it also carries
    /// the headers F1k's plugins add (`wasm_tests::bench::plugin_headers`); with `filter_calls`,
    /// it makes the Fallback filter's host calls for F1k's request (PF).
    ProjectMinimal {
        plugin_headers: bool,
        filter_calls: bool,
    },
    /// The project bootstrap with the Fallback filter and a generated config; `wasm` is
    /// another build of the filter than `make wasm`'s (`--compare-wasm`).
    ProjectFilter {
        routes: usize,
        plugins: bool,
        wasm: Option<&'static std::path::Path>,
    },
}

struct Variant {
    name: &'static str,
    description: &'static str,
    setup: Setup,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "N",
        description: "no wasm, static cluster",
        setup: Setup::Bench {
            wasm: false,
            hand_off: HandOff::Static,
        },
    },
    Variant {
        name: "P",
        description: "minimal wasm filter, static cluster",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::Static,
        },
    },
    Variant {
        name: "PD",
        description: "minimal filter, the bootstrap's hand-off",
        setup: Setup::ProjectMinimal {
            plugin_headers: false,
            filter_calls: false,
        },
    },
    Variant {
        name: "PK",
        description: "as PD, adding the 8 headers F1k's plugins add",
        setup: Setup::ProjectMinimal {
            plugin_headers: true,
            filter_calls: false,
        },
    },
    Variant {
        name: "PF",
        description: "minimal filter making F1k's host calls, no work",
        setup: Setup::ProjectMinimal {
            plugin_headers: true,
            filter_calls: true,
        },
    },
    Variant {
        name: "PS",
        description: "minimal filter, set_filter_state + DFP",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::FilterStateDfp,
        },
    },
    Variant {
        name: "PO",
        description: "minimal filter, ORIGINAL_DST from header",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::OriginalDst,
        },
    },
    Variant {
        name: "PT",
        description: "minimal filter, set_filter_state + ORIGINAL_DST",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::FilterStateOriginalDst,
        },
    },
    Variant {
        name: "PH",
        description: "minimal filter, ORIGINAL_DST for IPs, else DFP",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::Hybrid,
        },
    },
    Variant {
        name: "PX",
        description: "minimal filter, as PH with ORIGINAL_DST from filter state",
        setup: Setup::Bench {
            wasm: true,
            hand_off: HandOff::HybridFilterState,
        },
    },
    Variant {
        name: "F10",
        description: "filter, 10 routes",
        setup: Setup::ProjectFilter {
            routes: 10,
            plugins: false,
            wasm: None,
        },
    },
    Variant {
        name: "F1k",
        description: "filter, 1,000 routes + key-auth + rate-limiting",
        setup: Setup::ProjectFilter {
            routes: 1_000,
            plugins: true,
            wasm: None,
        },
    },
    Variant {
        name: "F10k",
        description: "filter, 10,000 routes + key-auth + rate-limiting",
        setup: Setup::ProjectFilter {
            routes: 10_000,
            plugins: true,
            wasm: None,
        },
    },
];

#[derive(Debug)]
struct Options {
    duration: u64,
    rounds: usize,
    connections: u32,
    only: Option<Vec<String>>,
    compare_wasm: Vec<std::path::PathBuf>,
    /// `None`: the default of the mode.
    out: Option<std::path::PathBuf>,
    /// `--apply`: seconds between new configs.
    apply_every: Option<u64>,
    /// `--same-process`: no fresh Envoy per round, no turning order.
    same_process: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        duration: 8,
        rounds: 2,
        connections: 32,
        only: None,
        compare_wasm: Vec::new(),
        out: None,
        apply_every: None,
        same_process: false,
    };
    let mut apply = false;
    let positive = |flag: &str, text: String| -> Result<u64, String> {
        text.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} {text:?} is not a positive whole number"))
    };
    while let Some(arg) = args.next() {
        let flag = Flag::parse(arg);
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--duration" => {
                options.duration = positive("--duration", flag.value(&mut args, "seconds")?)?
            }
            "--rounds" => {
                options.rounds = positive("--rounds", flag.value(&mut args, "a count")?)? as usize
            }
            "--connections" => {
                options.connections =
                    positive("--connections", flag.value(&mut args, "a count")?)? as u32
            }
            "--only" => {
                let list = flag.value(&mut args, "variant names")?;
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(unknown) = names
                    .iter()
                    .find(|n| !VARIANTS.iter().any(|v| v.name == n.as_str()))
                {
                    return Err(format!(
                        "--only: unknown variant {unknown:?} (known: {})",
                        VARIANTS
                            .iter()
                            .map(|v| v.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                options.only = Some(names);
            }
            "--out" => options.out = Some(flag.value(&mut args, "a path")?.into()),
            "--apply" => apply = true,
            "--same-process" => options.same_process = true,
            "--apply-every" => {
                options.apply_every = Some(positive(
                    "--apply-every",
                    flag.value(&mut args, "seconds")?,
                )?)
            }
            "--compare-wasm" => {
                for path in flag.value(&mut args, "a .wasm path")?.split(',') {
                    let path = std::path::PathBuf::from(path);
                    if !path.is_file() {
                        return Err(format!(
                            "--compare-wasm: {} is not a file (give built filters, e.g. copies \
                             of target/wasm32-wasip1/release/fallback_filter.wasm)",
                            path.display()
                        ));
                    }
                    options.compare_wasm.push(path);
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if apply {
        if options.only.is_some() || !options.compare_wasm.is_empty() || options.same_process {
            return Err(
                "--apply runs F10k alone in one process: drop --only, --compare-wasm and \
                 --same-process"
                    .into(),
            );
        }
        if options.duration < 4 {
            return Err(format!(
                "--apply needs --duration 4 or more (got {}): new configs are served from 1 s \
                 into the run until 3 s before its end, the time to apply the last one",
                options.duration
            ));
        }
        options.apply_every.get_or_insert(2);
    } else if options.apply_every.is_some() {
        return Err("--apply-every goes with --apply".into());
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    demo_cli::run(
        "bench-proxy",
        USAGE,
        parse_args(std::env::args().skip(1)),
        |options| async move {
            match run(options).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(message) => {
                    eprintln!("bench-proxy: {message}");
                    ExitCode::from(1)
                }
            }
        },
    )
}

/// A running variant.
struct Running {
    variant: &'static Variant,
    envoy: Envoy,
    /// The Fallback filter's control plane, and the config it serves at the start.
    cp: Option<(MockCp, Value)>,
    host: String,
    headers: Vec<(&'static str, String)>,
    rounds: Vec<Round>,
    failure: Option<String>,
}

/// One measured wrk run.
#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    cpu_us_per_request: f64,
    socket_errors: u64,
    load_average: [f64; 3],
}

fn minimal_wasm() -> Result<std::path::PathBuf, String> {
    let path = target_dir()
        .join("wasm32-wasip1")
        .join("release")
        .join("bench_passthrough_filter.wasm");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist: run `make wasm` (it builds bench/passthrough-filter too)",
            path.display()
        ))
    }
}

/// Replaces `r`'s Envoy (and control plane) with a fresh one, warmed up: a round of its own
/// process, so no process's luck weighs on every round of a variant.
async fn restart(r: &mut Running, connections: u32) -> Result<(), String> {
    // The old process goes first: one Envoy under test at a time.
    r.envoy.stop().await;
    let fresh = start(r.variant, None).await?;
    r.envoy = fresh.envoy;
    r.cp = fresh.cp;
    wrk(r, 2, connections).await.map(|_| ())
}

/// Starts `variant`; `poll_interval_ms` overrides the filter's control plane poll interval.
async fn start(
    variant: &'static Variant,
    poll_interval_ms: Option<u64>,
) -> Result<Running, String> {
    let upstream_port = free_port();
    let upstream = format!("127.0.0.1:{upstream_port}");
    let project = || -> Result<String, String> {
        let path = bootstrap_template();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        with_upstream_listener(&text, upstream_port).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut minimal_config = json!({ "x-fallback-upstream": upstream });
    let mut options = EnvoyOptions {
        concurrency: 1,
        ..EnvoyOptions::default()
    };
    let mut cp = None;
    let mut host = "bench.test".to_owned();
    let mut headers = Vec::new();
    match variant.setup {
        Setup::Bench { wasm, hand_off } => {
            if matches!(hand_off, HandOff::Hybrid | HandOff::HybridFilterState) {
                minimal_config["x-fallback-cluster"] = json!("original_dst");
            }
            options.bootstrap = Some(bench_bootstrap(wasm, hand_off, upstream_port));
            options.filter_config = minimal_config;
            options.wasm = Some(minimal_wasm()?);
        }
        Setup::ProjectMinimal {
            plugin_headers,
            filter_calls,
        } => {
            if filter_calls {
                // As the Fallback filter hands F1k's request over: Kong's `Host` for the
                // service (its url's host:port) and the path with the route's `/api` stripped.
                minimal_config[":authority"] = json!(upstream);
                minimal_config[":path"] = json!("/items");
                minimal_config["read:map"] = json!("1");
                minimal_config["read:clock"] = json!("1");
                headers.push(("apikey", API_KEY.to_owned()));
            }
            if plugin_headers {
                let (upstream, response) = wasm_tests::bench::plugin_headers();
                // The Fallback filter adds the plugins' upstream headers (none was sent).
                let prefix = if filter_calls { "add:" } else { "" };
                for (name, value) in upstream {
                    minimal_config[format!("{prefix}{name}")] = json!(value);
                }
                for (name, value) in response {
                    minimal_config[format!("response:{name}")] = json!(value);
                }
            }
            options.bootstrap = Some(project()?);
            options.filter_config = minimal_config;
            options.wasm = Some(minimal_wasm()?);
        }
        Setup::ProjectFilter {
            routes,
            plugins,
            wasm,
        } => {
            let mock = MockCp::start().await;
            let document = bench_document(routes, plugins, &upstream);
            mock.set_document(&document);
            options.bootstrap = Some(project()?);
            options.wasm = Some(wasm.map_or_else(default_wasm_path, std::path::Path::to_path_buf));
            options.cp = Some(("127.0.0.1".into(), mock.port()));
            options.filter_config["control_plane"] = json!({
                "upstream": "fallback_cp",
                "authority": mock.authority(),
                "path": "/config",
            });
            if let Some(ms) = poll_interval_ms {
                options.filter_config["poll_interval_ms"] = json!(ms);
            }
            // Routes are looked up by host: load the one in the middle of the index.
            host = route_host(routes / 2);
            if plugins {
                headers.push(("apikey", API_KEY.to_owned()));
            }
            cp = Some((mock, document));
        }
    }
    let envoy = Envoy::try_start(options)
        .await
        .map_err(|failure| format!("{}: Envoy did not start: {failure}", variant.name))?;
    let running = Running {
        variant,
        envoy,
        cp,
        host,
        headers,
        rounds: Vec::new(),
        failure: None,
    };
    // Served by the upstream: the config is loaded and the hand-off works.
    let url = format!("{}/api/items", running.envoy.listener_url());
    let mut sent = vec![("host", running.host.clone())];
    sent.extend(running.headers.iter().map(|(n, v)| (*n, v.clone())));
    let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let last = match request_with_timeout(
            "GET",
            &url,
            &sent,
            bytes::Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(r) if r.status == 200 && r.header(UPSTREAM_MARK.0) == Some(UPSTREAM_MARK.1) => break,
            Ok(r) => format!("status {}: {}", r.status, r.text()),
            Err(e) => e,
        };
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{}: no 200 from the upstream after 300 s; last answer: {last}\n--- envoy.log ---\n{}",
                variant.name,
                running.envoy.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(running)
}

/// The counters that prove where the answers came from.
struct Counters {
    completed: u64,
    proxy_2xx: u64,
    upstream_2xx: u64,
}

async fn counters(envoy: &Envoy) -> Counters {
    let stats = envoy.stats().await;
    let stat = |name: String| parse_stat(&stats, &name).unwrap_or(0);
    Counters {
        completed: stat(format!("http.{PROXY_STATS}.downstream_rq_completed")),
        proxy_2xx: stat(format!("http.{PROXY_STATS}.downstream_rq_2xx")),
        upstream_2xx: stat(format!("http.{UPSTREAM_STATS}.downstream_rq_2xx")),
    }
}

async fn wrk(running: &Running, seconds: u64, connections: u32) -> Result<WrkReport, String> {
    let bin = wasm_tests::binary("wrk");
    let mut cmd = Command::new(&bin);
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency")
        .args(["-H", &format!("Host: {}", running.host)]);
    for (name, value) in &running.headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    cmd.arg(format!("{}/api/items", running.envoy.listener_url()));
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk exited with {}: {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&stdout)
}

/// One measured run, with `during` running alongside `wrk`; `Err` when an answer was not a 200
/// from the upstream.
async fn measure(
    running: &Running,
    options: &Options,
    ticks: u64,
    during: impl std::future::Future<Output = ()>,
) -> Result<Round, String> {
    let pid = running.envoy.pid().ok_or("Envoy is not running any more")?;
    let before = counters(&running.envoy).await;
    let cpu_before = cpu_ticks(pid)?;
    let (report, ()) = tokio::join!(wrk(running, options.duration, options.connections), during);
    let report = report?;
    let cpu_after = cpu_ticks(pid)?;
    let after = counters(&running.envoy).await;
    let completed = after.completed - before.completed;
    let proxy_2xx = after.proxy_2xx - before.proxy_2xx;
    let upstream_2xx = after.upstream_2xx - before.upstream_2xx;
    if report.requests == 0 {
        return Err("wrk completed no request".into());
    }
    if report.non_2xx_3xx > 0 || proxy_2xx != completed {
        return Err(format!(
            "{} of {completed} answers were not 2xx (wrk counted {} outside 2xx/3xx)",
            completed - proxy_2xx,
            report.non_2xx_3xx
        ));
    }
    if upstream_2xx < completed || completed < report.requests {
        return Err(format!(
            "the upstream served {upstream_2xx} requests, the proxy completed {completed}, wrk \
             counted {}: some answers did not come from the upstream",
            report.requests
        ));
    }
    let cpu_s = (cpu_after - cpu_before) as f64 / ticks as f64;
    Ok(Round {
        requests: report.requests,
        rps: report.rps,
        p50_us: report.p50_us,
        p99_us: report.p99_us,
        max_us: report.max_us,
        cpu_us_per_request: cpu_s * 1e6 / report.requests as f64,
        socket_errors: report.socket_errors,
        load_average: Machine::read().load_average,
    })
}

fn best(rounds: &[Round]) -> Option<&Round> {
    rounds
        .iter()
        .min_by(|a, b| a.cpu_us_per_request.total_cmp(&b.cpu_us_per_request))
}

/// Errors when wrk is not installed.
fn check_wrk() -> Result<(), String> {
    let wrk_bin = wasm_tests::tools::workspace_root().join(".tools/bin/wrk");
    if std::env::var_os("FALLBACK_WRK_BIN").is_none() && !wrk_bin.is_file() {
        return Err(format!(
            "{} not found: run `make tools` (it installs Debian's wrk)",
            wrk_bin.display()
        ));
    }
    Ok(())
}

/// Reads the machine and says what runs on it.
fn announce(options: &Options) -> Machine {
    let machine = Machine::read();
    println!(
        "bench-proxy: {} CPUs ({}), load average {:?}; Envoy --concurrency 1, wrk -t1 -c{}, {} s x {} rounds",
        machine.nproc, machine.cpu_model, machine.load_average, options.connections,
        options.duration, options.rounds
    );
    machine
}

/// The settings of a run, for the JSON report.
fn settings(options: &Options) -> Value {
    json!({
        "envoy_concurrency": 1,
        "wrk_threads": 1,
        "connections": options.connections,
        "duration_s": options.duration,
        "rounds": options.rounds,
        "fresh_process_per_round": !options.same_process,
    })
}

/// Writes `report` to `path` as pretty JSON.
fn write_report(path: &std::path::Path, report: &Value) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(report).expect("JSON of a Value");
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

async fn run(options: Options) -> Result<bool, String> {
    check_wrk()?;
    if options.apply_every.is_some() {
        return run_apply(options).await;
    }
    let mut selected: Vec<&'static Variant> = VARIANTS
        .iter()
        .filter(|v| {
            options
                .only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == v.name))
        })
        .collect();
    if !options.compare_wasm.is_empty() {
        // Each filter variant again with each other build, alternating with it in every round.
        let builds: Vec<(String, &'static std::path::Path)> = options
            .compare_wasm
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let suffix = if options.compare_wasm.len() == 1 {
                    "~".to_owned()
                } else {
                    format!("~{}", i + 1)
                };
                (suffix, &*Box::leak(path.clone().into_boxed_path()))
            })
            .collect();
        selected = selected
            .into_iter()
            .flat_map(|v| {
                let twins: Vec<&'static Variant> = match v.setup {
                    Setup::ProjectFilter {
                        routes, plugins, ..
                    } => builds
                        .iter()
                        .map(|(suffix, path)| {
                            &*Box::leak(Box::new(Variant {
                                name: Box::leak(format!("{}{suffix}", v.name).into_boxed_str()),
                                description: Box::leak(
                                    format!("{} ({})", v.description, path.display())
                                        .into_boxed_str(),
                                ),
                                setup: Setup::ProjectFilter {
                                    routes,
                                    plugins,
                                    wasm: Some(path),
                                },
                            }))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                std::iter::once(v).chain(twins)
            })
            .collect();
    }
    let ticks = clock_ticks_per_second();
    let machine = announce(&options);
    let mut running = Vec::new();
    let mut not_started = Vec::new();
    for variant in selected {
        eprintln!(
            "bench-proxy: starting {} ({})",
            variant.name, variant.description
        );
        match start(variant, None).await {
            Ok(r) => running.push(r),
            Err(e) => {
                eprintln!("bench-proxy: {e}");
                not_started.push(variant);
            }
        }
    }
    for r in &running {
        eprintln!("bench-proxy: warming up {}", r.variant.name);
        wrk(r, 2, options.connections).await?;
    }
    let count = running.len();
    for round in 1..=options.rounds {
        // The order turns by one each round, so no variant always follows the same one.
        let order: Vec<usize> = if options.same_process {
            (0..count).collect()
        } else {
            (0..count).map(|k| (k + round - 1) % count).collect()
        };
        for i in order {
            let r = &mut running[i];
            if r.failure.is_some() {
                continue;
            }
            if round > 1 && !options.same_process {
                if let Err(e) = restart(r, options.connections).await {
                    eprintln!("bench-proxy: {} FAILED: {e}", r.variant.name);
                    r.failure = Some(e);
                    continue;
                }
            }
            match measure(r, &options, ticks, std::future::ready(())).await {
                Ok(m) => {
                    eprintln!(
                        "bench-proxy: round {round} {:<5} {:>8.0} rps  {:>6.1} µs CPU/request  load {:?}",
                        r.variant.name, m.rps, m.cpu_us_per_request, m.load_average
                    );
                    r.rounds.push(m);
                }
                Err(e) => {
                    eprintln!("bench-proxy: {} FAILED: {e}", r.variant.name);
                    r.failure = Some(e);
                }
            }
        }
    }
    let load_after = Machine::read().load_average;
    let baseline = running
        .iter()
        .find(|r| r.variant.name == "P")
        .and_then(|r| best(&r.rounds))
        .map(|m| m.cpu_us_per_request);
    let p_rounds = running
        .iter()
        .find(|r| r.variant.name == "P" && r.failure.is_none())
        .map(|r| r.rounds.as_slice());

    println!();
    println!(
        "| variant | what | rps | p50 | p99 | Envoy CPU per request | vs P | vs P, median of rounds |\n|---|---|---|---|---|---|---|---|"
    );
    let mut report = Vec::new();
    for r in &running {
        let best = best(&r.rounds);
        let ratio = best.zip(baseline).map(|(m, p)| m.cpu_us_per_request / p);
        let paired = p_rounds.and_then(|p| median_paired_ratio(&r.rounds, p));
        match (&r.failure, best) {
            (None, Some(m)) => println!(
                "| {} | {} | {:.0} | {} | {} | {:.0} µs | {} | {} |",
                r.variant.name,
                r.variant.description,
                m.rps,
                latency(m.p50_us),
                latency(m.p99_us),
                m.cpu_us_per_request,
                ratio.map_or("–".into(), |x| format!("{x:.2}")),
                paired.map_or("–".into(), |x| format!("{x:.2}")),
            ),
            (failure, _) => println!(
                "| {} | {} | FAILED: {} | | | | | |",
                r.variant.name,
                r.variant.description,
                failure.as_deref().unwrap_or("no round")
            ),
        }
        report.push(json!({
            "variant": r.variant.name,
            "description": r.variant.description,
            "failure": r.failure,
            "best": best,
            "ratio_to_p": ratio,
            "median_paired_ratio_to_p": paired,
            "rounds": r.rounds,
        }));
    }
    for v in &not_started {
        println!(
            "| {} | {} | FAILED: did not start (see above) | | | | | |",
            v.name, v.description
        );
        report.push(
            json!({"variant": v.name, "description": v.description, "failure": "did not start"}),
        );
    }
    println!(
        "\nbest of {} rounds (the round with the least Envoy CPU per request); load average at the end {:?}",
        options.rounds, load_after
    );
    println!(
        "vs P, median of rounds: the median over rounds of the variant's CPU per request divided by \
         P's in the same round (runs next to each other in time), steadier than best-of on a \
         shared machine"
    );
    let json = json!({
        "machine": machine,
        "load_average_after": load_after,
        "settings": settings(&options),
        "variants": Value::Array(report),
    });
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-proxy.json"));
    write_report(&out, &json)?;
    Ok(not_started.is_empty() && running.iter().all(|r| r.failure.is_none()))
}

/// The median over rounds of `rounds[i]`'s CPU per request divided by `p[i]`'s: each round of
/// a variant next to P's in time, so a burst of load from elsewhere weighs on both. `None`
/// without a round of both.
fn median_paired_ratio(rounds: &[Round], p: &[Round]) -> Option<f64> {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .zip(p)
        .filter(|(_, p)| p.cpu_us_per_request > 0.0)
        .map(|(r, p)| r.cpu_us_per_request / p.cpu_us_per_request)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    Some(if ratios.len() % 2 == 1 {
        ratios[mid]
    } else {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    })
}

/// `--apply`: the filter's control plane poll interval, so a new config is fetched within the run.
const APPLY_POLL_INTERVAL_MS: u64 = 500;
/// `--apply`: new configs are served from this far into a run...
const APPLY_FIRST: Duration = Duration::from_secs(1);
/// ...until this long before its end, the time to apply the last one.
const APPLY_MARGIN: Duration = Duration::from_secs(3);

/// One run of `--apply`.
#[derive(Debug, serde::Serialize)]
struct ApplyRun {
    round: usize,
    /// `steady` or `apply`.
    run: &'static str,
    measured: Option<Round>,
    /// New configs the control plane served during the run.
    configs_served: usize,
    /// Those the worker thread applied during the run (in a steady run: any config applied).
    configs_applied: usize,
    /// Those the worker also fetched, validated and published, as the fetch leader.
    configs_fetched_by_worker: usize,
    /// Those the main thread's VM fetched, validated and published, as the fetch leader.
    configs_fetched_by_main: usize,
    /// How the worker compiled each config it applied (`S slices, W ms of work over T ms`).
    worker_compiled: Vec<String>,
    failure: Option<String>,
}

/// A new config to serve: its body, ETag, and the sha256 the filter logs when it applies it.
struct Revision {
    body: bytes::Bytes,
    etag: String,
    sha256: String,
}

fn revision(document: &Value) -> Revision {
    let body = bytes::Bytes::from(serde_json::to_vec(document).expect("JSON of a Value"));
    Revision {
        etag: etag_of(&body),
        body,
        sha256: served_sha256(document),
    }
}

/// The lines with `needle` ([`APPLIED`], [`FETCHED`]) in `log` from byte `from`, split into
/// (worker threads', main thread's).
fn lines_since(
    log: &str,
    from: usize,
    main_thread: &str,
    needle: &str,
) -> (Vec<ConfigLine>, Vec<ConfigLine>) {
    config_lines(log.get(from..).unwrap_or_default(), needle)
        .into_iter()
        .partition(|line| line.thread != main_thread)
}

/// `--apply`: see the usage.
async fn run_apply(options: Options) -> Result<bool, String> {
    let every = Duration::from_secs(options.apply_every.expect("--apply"));
    let variant = VARIANTS
        .iter()
        .find(|v| v.name == "F10k")
        .expect("F10k is a variant");
    let ticks = clock_ticks_per_second();
    let machine = announce(&options);
    eprintln!(
        "bench-proxy: starting {} ({}), polling the control plane every {APPLY_POLL_INTERVAL_MS} ms",
        variant.name, variant.description
    );
    let running = start(variant, Some(APPLY_POLL_INTERVAL_MS)).await?;
    let (cp, document) = running.cp.as_ref().expect("F10k has a control plane");
    // The same bytes, pre-serialised like every revision, so the mock does no work during runs.
    let first = revision(document);
    cp.set_raw_body(first.body, Some(&first.etag));
    let log = running.envoy.log();
    let main = main_thread(&log)
        .ok_or_else(|| {
            format!(
                "Envoy's log has no `starting main dispatch loop` line to tell the main thread \
                 from the worker:\n{}",
                running.envoy.log_tail(20)
            )
        })?
        .to_owned();
    let run_length = Duration::from_secs(options.duration);
    let schedule: Vec<Duration> = (0u32..)
        .map(|i| APPLY_FIRST + every * i)
        .take_while(|at| *at + APPLY_MARGIN <= run_length)
        .collect();
    eprintln!("bench-proxy: warming up {}", variant.name);
    wrk(&running, 2, options.connections).await?;

    let mut runs: Vec<ApplyRun> = Vec::new();
    let mut next_revision = 1;
    'rounds: for round in 1..=options.rounds {
        for applying in [false, true] {
            let revisions: Vec<Revision> = if applying {
                let from = next_revision;
                next_revision += schedule.len();
                (from..next_revision)
                    .map(|k| revision(&bench_document_revision(document, k)))
                    .collect()
            } else {
                Vec::new()
            };
            let serve = async {
                let started = tokio::time::Instant::now();
                for (at, r) in schedule.iter().zip(&revisions) {
                    tokio::time::sleep_until(started + *at).await;
                    cp.set_raw_body(r.body.clone(), Some(&r.etag));
                }
            };
            let log_from = running.envoy.log().len();
            let measured = measure(&running, &options, ticks, serve).await;
            // Envoy flushes its log every 100 ms.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let log = running.envoy.log();
            let (applied, _) = lines_since(&log, log_from, &main, APPLIED);
            let (fetched, fetched_by_main) = lines_since(&log, log_from, &main, FETCHED);
            let served_in = |lines: &[ConfigLine]| {
                revisions
                    .iter()
                    .filter(|r| lines.iter().any(|l| l.sha256 == r.sha256))
                    .count()
            };
            let applied_served = served_in(&applied);
            let failure = match &measured {
                Err(e) => Some(e.clone()),
                Ok(_) if applying && applied_served < revisions.len() => Some(format!(
                    "the worker applied {applied_served} of the {} configs served during the \
                     run (check Envoy's log)",
                    revisions.len()
                )),
                Ok(_) if !applying && !applied.is_empty() => Some(format!(
                    "the worker applied {} config(s) during a steady run",
                    applied.len()
                )),
                Ok(_) => None,
            };
            let run = ApplyRun {
                round,
                run: if applying { "apply" } else { "steady" },
                measured: measured.ok(),
                configs_served: revisions.len(),
                configs_applied: if applying {
                    applied_served
                } else {
                    applied.len()
                },
                configs_fetched_by_worker: served_in(&fetched),
                configs_fetched_by_main: served_in(&fetched_by_main),
                worker_compiled: applied.iter().filter_map(|l| l.compiled.clone()).collect(),
                failure,
            };
            match (&run.failure, &run.measured) {
                (None, Some(m)) => eprintln!(
                    "bench-proxy: round {round} {:<6} {:>8.0} rps  p99 {}  max {}  {:>6.1} µs CPU/request  {} of {} configs applied by the worker, fetched by worker/main {}/{}  load {:?}",
                    run.run, m.rps, latency(m.p99_us), latency(m.max_us), m.cpu_us_per_request,
                    run.configs_applied, run.configs_served, run.configs_fetched_by_worker,
                    run.configs_fetched_by_main, m.load_average
                ),
                (failure, _) => eprintln!(
                    "bench-proxy: round {round} {} FAILED: {}\n--- envoy.log ---\n{}",
                    run.run,
                    failure.as_deref().unwrap_or("not measured"),
                    running.envoy.log_tail(40)
                ),
            }
            if !run.worker_compiled.is_empty() {
                eprintln!(
                    "bench-proxy: round {round} the worker compiled each config in: {}",
                    run.worker_compiled.join("; ")
                );
            }
            let failed = run.failure.is_some();
            runs.push(run);
            if failed {
                break 'rounds;
            }
        }
    }
    let load_after = Machine::read().load_average;

    println!();
    println!(
        "| round | run | rps | p50 | p99 | max | Envoy CPU per request | configs applied by the worker | fetched by worker / main thread |\n|---|---|---|---|---|---|---|---|---|"
    );
    let what = |r: &ApplyRun| {
        if r.run == "apply" {
            format!("a new 10,000-route config every {} s", every.as_secs())
        } else {
            "steady (config unchanged)".to_owned()
        }
    };
    for r in &runs {
        match (&r.failure, &r.measured) {
            (None, Some(m)) => println!(
                "| {} | {} | {:.0} | {} | {} | {} | {:.0} µs | {} of {} | {} / {} |",
                r.round,
                what(r),
                m.rps,
                latency(m.p50_us),
                latency(m.p99_us),
                latency(m.max_us),
                m.cpu_us_per_request,
                r.configs_applied,
                r.configs_served,
                r.configs_fetched_by_worker,
                r.configs_fetched_by_main,
            ),
            (failure, _) => println!(
                "| {} | {} | FAILED: {} | | | | | {} of {} | {} / {} |",
                r.round,
                what(r),
                failure.as_deref().unwrap_or("not measured"),
                r.configs_applied,
                r.configs_served,
                r.configs_fetched_by_worker,
                r.configs_fetched_by_main,
            ),
        }
    }
    // Each round's apply run against its own steady run.
    let ratios: Vec<(usize, f64)> = runs
        .chunks(2)
        .filter_map(|pair| match pair {
            [steady, apply] if steady.failure.is_none() && apply.failure.is_none() => {
                let (s, a) = (steady.measured.as_ref()?, apply.measured.as_ref()?);
                Some((steady.round, a.p99_us / s.p99_us))
            }
            _ => None,
        })
        .collect();
    let worst = ratios.iter().map(|(_, r)| *r).reduce(f64::max);
    println!(
        "\np99 while applying / steady p99: {}{}",
        ratios
            .iter()
            .map(|(round, r)| format!("round {round} {r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        worst.map_or(" (no complete round)".into(), |w| format!(
            "; worst {w:.2} (target: below 3)"
        )),
    );
    println!(
        "wrk is closed-loop ({} connections): while the worker runs a slice of config work \
         (compiling the new generation, freeing the old one) it serves nothing, and the \
         requests in flight wait for the slice (the max column shows the longest wait); wrk's \
         percentiles add, for each slow request, the requests its connection would have sent \
         meanwhile at its average pace (coordinated-omission correction), so p99 is what \
         clients arriving at that rate would see.",
        options.connections
    );
    println!("load average at the end {load_after:?}");
    let json = json!({
        "machine": machine,
        "load_average_after": load_after,
        "settings": settings(&options),
        "apply": {
            "variant": variant.name,
            "description": variant.description,
            "poll_interval_ms": APPLY_POLL_INTERVAL_MS,
            "every_s": every.as_secs(),
            "runs": runs,
            "p99_ratio_per_round": ratios.iter().map(|(_, r)| r).collect::<Vec<_>>(),
            "worst_p99_ratio": worst,
        },
    });
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-proxy-apply.json"));
    write_report(&out, &json)?;
    Ok(runs.iter().all(|r| r.failure.is_none()) && runs.len() == 2 * options.rounds)
}

fn latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(cpu_us_per_request: f64) -> Round {
        Round {
            requests: 1,
            rps: 1.0,
            p50_us: 1.0,
            p99_us: 1.0,
            max_us: 1.0,
            cpu_us_per_request,
            socket_errors: 0,
            load_average: [0.0; 3],
        }
    }

    #[test]
    fn the_paired_ratio_is_the_median_of_each_rounds_ratio_to_p() {
        let p = [round(100.0), round(200.0), round(50.0)];
        // Per round: 1.2, 1.1, 1.6: a round slowed for both variants keeps its ratio.
        let f = [round(120.0), round(220.0), round(80.0)];
        assert_eq!(median_paired_ratio(&f, &p), Some(1.2));
        // An even count: the mean of the middle two.
        assert_eq!(median_paired_ratio(&f[..2], &p[..2]), Some(1.15));
        // Rounds P does not have are left out; no round of P: no ratio.
        assert_eq!(median_paired_ratio(&f, &p[..1]), Some(1.2));
        assert_eq!(median_paired_ratio(&f, &[]), None);
    }
}
