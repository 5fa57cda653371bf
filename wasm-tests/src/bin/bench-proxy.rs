//! `bench-proxy` (`make bench-proxy`): what the filter costs per request in Envoy, side by side
//! with no wasm and with a minimal wasm filter, in one run.
//!
//! ```text
//! bench-proxy [--duration SECS] [--rounds N] [--connections N] [--only N,P,...] [--out PATH]
//! ```
//!
//! Each variant runs its own Envoy 1.40 (`--concurrency 1`) holding a `direct_response`
//! listener as the upstream; `wrk -t1` loads each in turn, round after round (variants
//! alternate, so a burst of load from elsewhere does not hit one variant only), and the best
//! round (lowest Envoy CPU per request) is reported. Envoy's CPU time is `utime + stime` of
//! `/proc/<pid>/stat` over the run, divided by the requests `wrk` completed. A run counts only
//! when every answer was a 200 from the upstream: the proxy listener answered nothing but 2xx,
//! and the upstream listener served at least as many requests as the proxy completed.
//! See `wasm_tests::bench` for the bootstraps and configs.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::Command;
use wasm_tests::bench::{
    bench_bootstrap, bench_document, clock_ticks_per_second, cpu_ticks, parse_wrk, route_host,
    with_upstream_listener, HandOff, Machine, WrkReport, API_KEY, PROXY_STATS, UPSTREAM_MARK,
    UPSTREAM_STATS,
};
use wasm_tests::demo_cli::{self, Flag};
use wasm_tests::envoy::{bootstrap_template, default_wasm_path, parse_stat, EnvoyOptions};
use wasm_tests::http::request_with_timeout;
use wasm_tests::tools::target_dir;
use wasm_tests::{free_port, Envoy, MockCp};

const USAGE: &str = "\
usage: bench-proxy [--duration SECS] [--rounds N] [--connections N] [--only N,P,...]
                   [--compare-wasm PATH[,PATH...]] [--out PATH]

Runs Envoy (--concurrency 1) in each variant and loads it with wrk; prints rps, p50, p99 and
Envoy's CPU time per request, with the ratio to P (the minimal wasm filter), and writes them as
JSON. Needs `make tools` (Envoy, wrk) and both wasm filters built (`make wasm`).

variants:
  N      no wasm, static cluster
  P      minimal wasm filter (bench/passthrough-filter), static cluster
  PD     minimal filter, the project bootstrap's hand-off (examples/envoy/bootstrap.yaml)
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
  --out PATH         the JSON report [default: <target dir>/bench-proxy.json]
  -h, --help         show this help";

/// How a variant is built.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// A bootstrap of `wasm_tests::bench`, with or without the minimal filter.
    Bench { wasm: bool, hand_off: HandOff },
    /// The project bootstrap with the minimal filter.
    ProjectMinimal,
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
        setup: Setup::ProjectMinimal,
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
    out: std::path::PathBuf,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        duration: 8,
        rounds: 2,
        connections: 32,
        only: None,
        compare_wasm: Vec::new(),
        out: target_dir().join("bench-proxy.json"),
    };
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
            "--out" => options.out = flag.value(&mut args, "a path")?.into(),
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
    /// Keeps the Fallback filter's control plane alive.
    _cp: Option<MockCp>,
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

async fn start(variant: &'static Variant) -> Result<Running, String> {
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
        Setup::ProjectMinimal => {
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
            mock.set_document(&bench_document(routes, plugins, &upstream));
            options.bootstrap = Some(project()?);
            options.wasm = Some(wasm.map_or_else(default_wasm_path, std::path::Path::to_path_buf));
            options.cp = Some(("127.0.0.1".into(), mock.port()));
            options.filter_config["control_plane"] = json!({
                "upstream": "fallback_cp",
                "authority": mock.authority(),
                "path": "/config",
            });
            // Routes are looked up by host: load the one in the middle of the index.
            host = route_host(routes / 2);
            if plugins {
                headers.push(("apikey", API_KEY.to_owned()));
            }
            cp = Some(mock);
        }
    }
    let envoy = Envoy::try_start(options)
        .await
        .map_err(|failure| format!("{}: Envoy did not start: {failure}", variant.name))?;
    let running = Running {
        variant,
        envoy,
        _cp: cp,
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

/// One measured run; `Err` when an answer was not a 200 from the upstream.
async fn measure(running: &mut Running, options: &Options, ticks: u64) -> Result<Round, String> {
    let pid = running.envoy.pid().ok_or("Envoy is not running any more")?;
    let before = counters(&running.envoy).await;
    let cpu_before = cpu_ticks(pid)?;
    let report = wrk(running, options.duration, options.connections).await?;
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

async fn run(options: Options) -> Result<bool, String> {
    let wrk_bin = wasm_tests::tools::workspace_root().join(".tools/bin/wrk");
    if std::env::var_os("FALLBACK_WRK_BIN").is_none() && !wrk_bin.is_file() {
        return Err(format!(
            "{} not found: run `make tools` (it installs Debian's wrk)",
            wrk_bin.display()
        ));
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
    let machine = Machine::read();
    println!(
        "bench-proxy: {} CPUs ({}), load average {:?}; Envoy --concurrency 1, wrk -t1 -c{}, {} s x {} rounds",
        machine.nproc, machine.cpu_model, machine.load_average, options.connections,
        options.duration, options.rounds
    );
    let mut running = Vec::new();
    let mut not_started = Vec::new();
    for variant in selected {
        eprintln!(
            "bench-proxy: starting {} ({})",
            variant.name, variant.description
        );
        match start(variant).await {
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
    for round in 1..=options.rounds {
        for r in running.iter_mut().filter(|r| r.failure.is_none()) {
            match measure(r, &options, ticks).await {
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

    println!();
    println!(
        "| variant | what | rps | p50 | p99 | Envoy CPU per request | vs P |\n|---|---|---|---|---|---|---|"
    );
    let mut report = Vec::new();
    for r in &running {
        let best = best(&r.rounds);
        let ratio = best.zip(baseline).map(|(m, p)| m.cpu_us_per_request / p);
        match (&r.failure, best) {
            (None, Some(m)) => println!(
                "| {} | {} | {:.0} | {} | {} | {:.0} µs | {} |",
                r.variant.name,
                r.variant.description,
                m.rps,
                latency(m.p50_us),
                latency(m.p99_us),
                m.cpu_us_per_request,
                ratio.map_or("–".into(), |x| format!("{x:.2}")),
            ),
            (failure, _) => println!(
                "| {} | {} | FAILED: {} | | | | |",
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
            "rounds": r.rounds,
        }));
    }
    for v in &not_started {
        println!(
            "| {} | {} | FAILED: did not start (see above) | | | | |",
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
    let json = json!({
        "machine": machine,
        "load_average_after": load_after,
        "settings": {
            "envoy_concurrency": 1,
            "wrk_threads": 1,
            "connections": options.connections,
            "duration_s": options.duration,
            "rounds": options.rounds,
        },
        "variants": Value::Array(report),
    });
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json).expect("JSON of a Value");
    std::fs::write(&options.out, text)
        .map_err(|e| format!("write {}: {e}", options.out.display()))?;
    println!("written to {}", options.out.display());
    Ok(not_started.is_empty() && running.iter().all(|r| r.failure.is_none()))
}

fn latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
