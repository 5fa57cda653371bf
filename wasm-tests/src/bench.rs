//! The pieces of `make bench-proxy` (`src/bin/bench-proxy.rs`): the Envoy bootstraps of each
//! variant, the generated configs, `wrk`'s report, Envoy's CPU time, and the machine it ran on.
//!
//! Every variant runs one Envoy (`--concurrency 1`) whose bootstrap carries, besides the proxy
//! listener, a `direct_response` listener that plays the upstream ([`UPSTREAM_STATS`]): it
//! answers 200 with [`UPSTREAM_MARK`]. Comparing that listener's 2xx counter with the requests
//! `wrk` counted proves that every answer came from the upstream, so a variant answering a fast
//! 404 or 503 can never look good.

use serde_json::{json, Value};
use std::path::Path;

/// The upstream listener's HCM `stat_prefix` (`http.bench_upstream.downstream_rq_2xx`).
pub const UPSTREAM_STATS: &str = "bench_upstream";
/// The proxy listener's `stat_prefix` in every variant (the project bootstrap's).
pub const PROXY_STATS: &str = "fallback";
/// The response header (name, value) the upstream listener adds to every answer.
pub const UPSTREAM_MARK: (&str, &str) = ("x-bench-upstream", "direct");
/// The API key of the consumer in the generated configs with plugins.
pub const API_KEY: &str = "bench-key";

/// How a variant's proxy listener reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOff {
    /// A `STATIC` cluster naming the upstream: no hand-off at all.
    Static,
    /// An `ORIGINAL_DST` cluster taking `host:port` from the `x-fallback-upstream` header
    /// (IP literals only). The route cannot remove the header (the cluster reads it after
    /// the route's header changes): an upstream `header_mutation` filter does.
    OriginalDst,
    /// `set_filter_state` copies `x-fallback-upstream` into
    /// `envoy.network.transport_socket.original_dst_address`, which an `ORIGINAL_DST` cluster
    /// connects to (IP literals only).
    FilterStateOriginalDst,
    /// `set_filter_state` copies `x-fallback-upstream` into `envoy.upstream.dynamic_host`,
    /// which the dynamic forward proxy resolves (the project bootstrap's hand-off for DNS names).
    FilterStateDfp,
    /// Per request: a request carrying `x-fallback-cluster: original_dst` (IP literals) takes
    /// a route to [`HandOff::OriginalDst`]'s cluster, any other the
    /// [`HandOff::FilterStateDfp`] path.
    Hybrid,
    /// As [`HandOff::Hybrid`], but the `ORIGINAL_DST` cluster reads the address from the filter
    /// state `set_filter_state` also writes ([`HandOff::FilterStateOriginalDst`]): the headers
    /// go away on the route, no upstream filter.
    HybridFilterState,
}

/// The `direct_response` listener that plays the upstream on `127.0.0.1:port`.
pub fn upstream_listener(port: u16) -> Value {
    json!({
        "name": UPSTREAM_STATS,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm(UPSTREAM_STATS, json!({
            "name": "upstream",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
            }]}],
            "response_headers_to_add": [
                {"header": {"key": UPSTREAM_MARK.0, "value": UPSTREAM_MARK.1}},
            ],
        }), vec![router()])]}],
    })
}

/// The project bootstrap template (`examples/envoy/bootstrap.yaml`) with the upstream listener
/// added as the first listener. Errors when the template's `listeners:` key is not found once.
pub fn with_upstream_listener(template: &str, port: u16) -> Result<String, String> {
    const KEY: &str = "\n  listeners:\n";
    if template.matches(KEY).count() != 1 {
        return Err(format!(
            "the bootstrap template must have exactly one `{}` line (under static_resources)",
            KEY.trim()
        ));
    }
    let listener = serde_json::to_string(&upstream_listener(port)).expect("JSON of a Value");
    // A JSON object is a YAML flow mapping: one list item, indented as the template's.
    Ok(template.replacen(KEY, &format!("{KEY}    - {listener}\n"), 1))
}

/// A bootstrap template (JSON, which is YAML) for the variants that do not use the project
/// bootstrap: the proxy listener on `${LISTENER_PORT}` with the wasm filter at `${WASM_PATH}`
/// (configured with `${FILTER_CONFIG}`) when `wasm` is true, routed by `hand_off` to the
/// upstream listener on `upstream_port`, which it also holds.
pub fn bench_bootstrap(wasm: bool, hand_off: HandOff, upstream_port: u16) -> String {
    let mut filters = Vec::new();
    let mut remove_on_route = true;
    if wasm {
        filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "root_id": "bench",
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": "${FILTER_CONFIG}",
                    },
                    "fail_open": false,
                    "vm_config": {
                        "vm_id": "bench",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": "${WASM_PATH}"}},
                    },
                },
            },
        }));
    }
    let mut clusters = Vec::new();
    let mut routes = Vec::new();
    if matches!(hand_off, HandOff::Hybrid | HandOff::HybridFilterState) {
        clusters.push(if hand_off == HandOff::Hybrid {
            original_dst_from_header("target_ip")
        } else {
            filters.push(set_filter_state(
                "envoy.network.transport_socket.original_dst_address",
            ));
            original_dst_from_filter_state("target_ip")
        });
        routes.push(json!({
            "match": {"prefix": "/", "headers": [
                {"name": "x-fallback-cluster", "string_match": {"exact": "original_dst"}},
            ]},
            "route": {"cluster": "target_ip", "timeout": "60s"},
            "request_headers_to_remove": if hand_off == HandOff::Hybrid {
                json!([])
            } else {
                json!(["x-fallback-upstream", "x-fallback-cluster"])
            },
        }));
    }
    let cluster = match hand_off {
        HandOff::Static => json!({
            "name": "target",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "target", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address":
                    {"address": "127.0.0.1", "port_value": upstream_port}}}},
            ]}]},
        }),
        HandOff::OriginalDst => {
            remove_on_route = false;
            original_dst_from_header("target")
        }
        HandOff::FilterStateOriginalDst => {
            filters.push(set_filter_state(
                "envoy.network.transport_socket.original_dst_address",
            ));
            original_dst_from_filter_state("target")
        }
        HandOff::FilterStateDfp | HandOff::Hybrid | HandOff::HybridFilterState => {
            filters.push(set_filter_state("envoy.upstream.dynamic_host"));
            filters.push(json!({
                "name": "envoy.filters.http.dynamic_forward_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                    "allow_dynamic_host_from_filter_state": true,
                    "dns_cache_config": dns_cache(),
                },
            }));
            json!({
                "name": "target",
                "connect_timeout": "5s",
                "lb_policy": "CLUSTER_PROVIDED",
                "cluster_type": {
                    "name": "envoy.clusters.dynamic_forward_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                        "dns_cache_config": dns_cache(),
                    },
                },
            })
        }
    };
    clusters.push(cluster);
    routes.push(json!({
        "match": {"prefix": "/"},
        "route": {"cluster": "target", "timeout": "60s"},
        "request_headers_to_remove": if remove_on_route {
            json!(["x-fallback-upstream", "x-fallback-cluster"])
        } else {
            json!([])
        },
    }));
    filters.push(router());
    let proxy = json!({
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": "${LISTENER_PORT}"}},
        "filter_chains": [{"filters": [hcm(PROXY_STATS, json!({
            "name": "proxy",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        }), filters)]}],
    });
    let bootstrap = json!({
        "admin": {"address": {"socket_address":
            {"address": "127.0.0.1", "port_value": "${ADMIN_PORT}"}}},
        "static_resources": {
            "listeners": [upstream_listener(upstream_port), proxy],
            "clusters": clusters,
        },
    });
    // Placeholders that stand for numbers or for a JSON string literal go in bare.
    let mut text = serde_json::to_string_pretty(&bootstrap).expect("JSON of a Value");
    for name in ["ADMIN_PORT", "LISTENER_PORT", "FILTER_CONFIG"] {
        text = text.replace(&format!("\"${{{name}}}\""), &format!("${{{name}}}"));
    }
    text
}

fn hcm(stat_prefix: &str, route_config: Value, http_filters: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": http_filters,
        },
    })
}

/// An `ORIGINAL_DST` cluster named `name` connecting to the `x-fallback-upstream` header's
/// `ip:port`; an upstream `header_mutation` filter removes the hand-off headers (the route
/// cannot: the cluster reads the header after the route's header changes).
fn original_dst_from_header(name: &str) -> Value {
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "original_dst_lb_config": {
            "use_http_header": true,
            "http_header_name": "x-fallback-upstream",
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    {
                        "name": "envoy.filters.http.header_mutation",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                            "mutations": {"request_mutations": [
                                {"remove": "x-fallback-upstream"},
                                {"remove": "x-fallback-cluster"},
                            ]},
                        },
                    },
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
                    },
                ],
            },
        },
    })
}

/// An `ORIGINAL_DST` cluster named `name` connecting to the filter state
/// `envoy.network.transport_socket.original_dst_address`.
fn original_dst_from_filter_state(name: &str) -> Value {
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
    })
}

/// Copies the `x-fallback-upstream` header into filter state `key`.
fn set_filter_state(key: &str) -> Value {
    json!({
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [{
                "object_key": key,
                "format_string": {"text_format_source":
                    {"inline_string": "%REQ(x-fallback-upstream)%"}},
            }],
        },
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

fn dns_cache() -> Value {
    json!({
        "name": "bench_dns_cache",
        "dns_lookup_family": "V4_ONLY",
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.getaddrinfo",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig"},
        },
    })
}

/// A Kong declarative config with `routes` routes, each with its own service on `upstream`
/// (`host:port`) and matching `Host: r<i>.bench.test` and path prefix `/api`; with `plugins`,
/// every route has `key-auth` and `rate-limiting` (policy `local`, a limit never reached) and
/// one consumer holds [`API_KEY`].
pub fn bench_document(routes: usize, plugins: bool, upstream: &str) -> Value {
    let services: Vec<Value> = (0..routes)
        .map(|i| {
            let mut route = json!({
                "name": format!("r{i}"),
                "hosts": [route_host(i)],
                "paths": ["/api"],
            });
            if plugins {
                route["plugins"] = json!([
                    {"name": "key-auth", "config": {"key_names": ["apikey"]}},
                    {"name": "rate-limiting",
                     "config": {"hour": 1_000_000_000u64, "policy": "local"}},
                ]);
            }
            json!({"name": format!("s{i}"), "url": format!("http://{upstream}/"), "routes": [route]})
        })
        .collect();
    let mut doc = json!({"_format_version": "3.0", "services": services});
    if plugins {
        doc["consumers"] =
            json!([{"username": "bench", "keyauth_credentials": [{"key": API_KEY}]}]);
    }
    doc
}

/// Header `(name, value)` pairs, in order.
pub type Headers = Vec<(String, String)>;

/// The headers `key-auth` and `rate-limiting` add in F1k and F10k to the benchmark's request
/// on its way upstream, and to its response, as the plugin engine decides them for that
/// request: `(upstream, response)`. The PK variant carries the same headers with the minimal
/// filter, which separates what carrying them costs Envoy (encoding them, and the upstream
/// listener parsing them) from what the filter itself costs.
pub fn plugin_headers() -> (Headers, Headers) {
    use fallback_core::plugins::{HeaderOp, PluginEngine, PluginOutcome, PluginRequest};
    use fallback_core::router::{RequestView, RouteOutcome, Router};
    let doc = bench_document(1, true, "127.0.0.1:9");
    let loaded = fallback_core::document::ConfigDocument::from_json(&doc)
        .expect("the generated config loads");
    let router = Router::compile(&loaded.document);
    let engine = PluginEngine::compile(&loaded.document, &Default::default());
    let host = route_host(0);
    let headers = [("host", host.as_str()), ("apikey", API_KEY)];
    let view = RequestView {
        method: "GET",
        authority: &host,
        path: "/api/items",
        scheme: "http",
        headers: &headers,
        sni: None,
        port: None,
    };
    let RouteOutcome::Forward(forward) = router.route(&view) else {
        panic!("the benchmark request matches route 0");
    };
    let request = PluginRequest {
        method: view.method,
        scheme: view.scheme,
        path: view.path,
        upstream_path: &forward.path,
        headers: &headers,
        client_ip: Some([127, 0, 0, 1].into()).into(),
        route: Some(forward.route),
        service: Some(forward.service),
        now_ms: 1_700_000_000_000,
        random: 0,
    };
    let PluginOutcome::Forward(changes) = engine.access(
        &request,
        &mut fallback_core::plugins::MemoryCounters::default(),
    ) else {
        panic!("the benchmark request is let through");
    };
    let pairs = |ops: &[HeaderOp<'_>]| -> Vec<(String, String)> {
        ops.iter()
            .filter_map(|op| match op {
                HeaderOp::Add(name, value) => Some((name.to_string(), value.to_string())),
                HeaderOp::Remove(_) => None,
            })
            .collect()
    };
    let response = changes
        .response
        .edits_without_headers()
        .expect("rate-limiting's headers need no response headers");
    (pairs(&changes.request_headers), pairs(&response))
}

/// The `Host` of route `i` in [`bench_document`].
pub fn route_host(i: usize) -> String {
    format!("r{i}.bench.test")
}

/// Revision `revision` (1, 2, ...) of `document` (a [`bench_document`]): its first route renamed
/// `r0-rev<revision>`, so the control plane serves a new config whose routing is unchanged.
pub fn bench_document_revision(document: &Value, revision: usize) -> Value {
    let mut next = document.clone();
    next["services"][0]["routes"][0]["name"] = json!(format!("r0-rev{revision}"));
    next
}

/// The sha256 the filter logs for `document` served by the control plane (that of its
/// canonical JSON).
pub fn served_sha256(document: &Value) -> String {
    use fallback_core::digest::{canonical_json, Sha256Digest};
    Sha256Digest::of(&canonical_json(document)).to_string()
}

/// What the filter logs, once per VM, when it applies a config (parses and compiles it).
pub const APPLIED: &str = "now serves config generation ";
/// What the filter logs when its fetch leader took a new control plane config (fetched,
/// validated and published it for every VM).
pub const FETCHED: &str = "serving the config from control plane ";

/// A line of the filter's about a config in Envoy's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    /// The Envoy thread id of the line (`[%t]`): the main thread or a worker.
    pub thread: String,
    /// The sha256 of the config.
    pub sha256: String,
    /// For an [`APPLIED`] line, how the generation was compiled: `S slices, W ms of work over T
    /// ms`.
    pub compiled: Option<String>,
}

/// The lines of `log` (Envoy's default log format, `[date time][thread][level][logger] ...`)
/// holding `needle` ([`APPLIED`], [`FETCHED`]) and a `sha256 <hex>`, in order.
pub fn config_lines(log: &str, needle: &str) -> Vec<ConfigLine> {
    log.lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            let sha256 = line.split("sha256 ").nth(1)?;
            let end = sha256
                .find(|c: char| !c.is_ascii_hexdigit())
                .unwrap_or(sha256.len());
            let compiled = line
                .split("compiled in ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .map(str::to_owned);
            Some(ConfigLine {
                thread: log_thread(line)?.to_owned(),
                sha256: sha256[..end].to_owned(),
                compiled,
            })
        })
        .collect()
}

/// The thread id of Envoy's main thread in `log` (the one that logs `starting main dispatch
/// loop`); every other thread that applies a config is a worker.
pub fn main_thread(log: &str) -> Option<&str> {
    log.lines()
        .find(|line| line.contains("starting main dispatch loop"))
        .and_then(log_thread)
}

fn log_thread(line: &str) -> Option<&str> {
    line.strip_prefix('[')?.split("][").nth(1)
}

/// What `wrk --latency` reported for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    /// Responses completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in µs.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// The slowest request, in µs (the `Max` column of the `Latency` line).
    pub max_us: f64,
    /// Responses with a status outside 2xx/3xx.
    pub non_2xx_3xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

/// Parses `wrk --latency`'s standard output.
pub fn parse_wrk(output: &str) -> Result<WrkReport, String> {
    let missing = |what: &str| format!("wrk's output has no {what}:\n{output}");
    let mut requests = None;
    let mut rps = None;
    let (mut p50, mut p99, mut max) = (None, None, None);
    let mut non = 0;
    let mut socket_errors = 0;
    for line in output.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => p50 = Some(duration_us(v)?),
            (Some("99%"), Some(v)) => p99 = Some(duration_us(v)?),
            // `Latency  <avg> <stdev> <max> <+/- stdev>` (not `Latency Distribution`).
            (Some("Latency"), Some(avg)) if avg != "Distribution" => {
                let v = words
                    .nth(1)
                    .ok_or_else(|| missing("Max on the Latency line"))?;
                max = Some(duration_us(v)?);
            }
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some(n), Some("requests")) => requests = n.parse().ok(),
            (Some("Non-2xx"), _) => {
                non = line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| missing("count after `Non-2xx or 3xx responses:`"))?;
            }
            (Some("Socket"), Some("errors:")) => {
                socket_errors = line
                    .split(',')
                    .filter_map(|part| part.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Ok(WrkReport {
        requests: requests.ok_or_else(|| missing("`N requests in` line"))?,
        rps: rps.ok_or_else(|| missing("`Requests/sec:` line"))?,
        p50_us: p50.ok_or_else(|| missing("50% latency (was --latency given?)"))?,
        p99_us: p99.ok_or_else(|| missing("99% latency (was --latency given?)"))?,
        max_us: max.ok_or_else(|| missing("`Latency` line with the maximum"))?,
        non_2xx_3xx: non,
        socket_errors,
    })
}

/// `wrk`'s durations: `812.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn duration_us(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("wrk duration {text:?} has no unit"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("wrk duration {text:?} is not a number with a unit"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => {
            return Err(format!(
                "wrk duration {text:?} has an unknown unit {unit:?}"
            ))
        }
    };
    Ok(value * scale)
}

/// User + system CPU time of process `pid` in clock ticks (`/proc/<pid>/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| format!("{path}: no utime/stime in {stat:?}"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value, when it cannot tell).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The machine a run happened on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
}

impl Machine {
    /// Reads it from `/proc`.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            load_average: load_average(Path::new("/proc/loadavg")),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `/proc/loadavg`'s first three numbers (zeros when unreadable).
pub fn load_average(path: &Path) -> [f64; 3] {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, word) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = word.parse().unwrap_or(0.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:8080/api
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.10ms    1.20ms  21.50ms   88.00%
    Req/Sec     5.25k   310.00     5.60k    80.00%
  Latency Distribution
     50%  812.00us
     75%    6.40ms
     90%    7.00ms
     99%    1.02s
  10483 requests in 2.00s, 1.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   5238.46
Transfer/sec:    819.80KB
";

    #[test]
    fn parses_wrk_latency_report() {
        let r = parse_wrk(WRK).expect("parses");
        assert_eq!(r.requests, 10483);
        assert_eq!(r.rps, 5238.46);
        assert_eq!(r.p50_us, 812.0);
        assert_eq!(r.p99_us, 1_020_000.0);
        assert_eq!(r.max_us, 21_500.0);
        assert_eq!(r.non_2xx_3xx, 7);
        assert_eq!(r.socket_errors, 3);
    }

    #[test]
    fn wrk_report_without_percentiles_is_an_error() {
        let without = WRK.replace("     99%    1.02s\n", "");
        assert!(parse_wrk(&without).unwrap_err().contains("99% latency"));
        let without_max = WRK.replace("    Latency     6.10ms    1.20ms  21.50ms   88.00%\n", "");
        assert!(parse_wrk(&without_max).unwrap_err().contains("maximum"));
        let cut = WRK.replace("6.10ms    1.20ms  21.50ms   88.00%", "6.10ms");
        assert!(parse_wrk(&cut)
            .unwrap_err()
            .contains("Max on the Latency line"));
        assert!(duration_us("12").is_err());
        assert!(duration_us("1.0x").is_err());
    }

    #[test]
    fn reads_cpu_ticks_after_a_command_with_spaces() {
        let stat = "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 150 27 0 0 20 0 5 0";
        assert_eq!(parse_cpu_ticks(stat), Some(177));
        assert_eq!(parse_cpu_ticks("4242 (envoy) S 1"), None);
    }

    #[test]
    fn reads_the_cpu_model() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
    }

    #[test]
    fn adds_the_upstream_listener_to_the_project_bootstrap() {
        let template = std::fs::read_to_string(crate::envoy::bootstrap_template())
            .expect("read the example bootstrap");
        let out = with_upstream_listener(&template, 4321).expect("one listeners key");
        assert!(out.contains(
            r#"    - {"address":{"socket_address":{"address":"127.0.0.1","port_value":4321}}"#
        ));
        assert!(with_upstream_listener("admin: {}\n", 1).is_err());
    }

    #[test]
    fn bench_bootstrap_leaves_only_bare_placeholders() {
        let text = bench_bootstrap(true, HandOff::OriginalDst, 9);
        assert!(text.contains("\"port_value\": ${LISTENER_PORT}"));
        assert!(text.contains("\"value\": ${FILTER_CONFIG}"));
        assert!(text.contains("\"filename\": \"${WASM_PATH}\""));
        assert!(text.contains("ORIGINAL_DST"));
        assert!(!bench_bootstrap(false, HandOff::Static, 9).contains("wasm"));
    }

    #[test]
    fn reads_the_configs_each_thread_applied_and_fetched() {
        let log = "\
[2026-11-30 17:33:59.482][32193][info][main] [source/server/server.cc:1098] starting main dispatch loop
[2026-11-30 17:33:59.829][32193][info][wasm] [context.cc:1151] wasm log fallback fallback: fallback: this worker now serves config generation 1 (control_plane config, revision 0, sha256 4443a4)
[2026-11-30 17:33:59.832][32267][info][wasm] [context.cc:1151] wasm log fallback fallback: fallback: this worker now serves config generation 12 (fallback config, revision 17, sha256 bb01; compiled in 9 slices, 20 ms of work over 61 ms)
[2026-11-30 17:33:59.900][32267][info][wasm] [context.cc:1151] wasm log fallback fallback: fallback: serving the config from control plane fallback_cp (sha256 4443a4)
";
        let line = |thread: &str, sha256: &str| ConfigLine {
            thread: thread.into(),
            sha256: sha256.into(),
            compiled: None,
        };
        assert_eq!(main_thread(log), Some("32193"));
        assert_eq!(main_thread("no dispatch loop yet"), None);
        let compiled = ConfigLine {
            compiled: Some("9 slices, 20 ms of work over 61 ms".into()),
            ..line("32267", "bb01")
        };
        assert_eq!(
            config_lines(log, APPLIED),
            vec![line("32193", "4443a4"), compiled]
        );
        assert_eq!(config_lines(log, FETCHED), vec![line("32267", "4443a4")]);
    }

    #[test]
    fn a_document_revision_is_a_new_config_with_the_same_routing() {
        let doc = bench_document(3, true, "127.0.0.1:9");
        let next = bench_document_revision(&doc, 2);
        assert_ne!(served_sha256(&doc), served_sha256(&next));
        assert_ne!(
            served_sha256(&bench_document_revision(&doc, 1)),
            served_sha256(&next)
        );
        assert_eq!(next["services"][0]["routes"][0]["name"], "r0-rev2");
        assert_eq!(next["services"][1], doc["services"][1]);
        let loaded =
            fallback_core::document::ConfigDocument::from_slice(next.to_string().as_bytes())
                .expect("the revision loads");
        assert_eq!(loaded.document.routes.len(), 3);
    }

    #[test]
    fn plugin_headers_are_the_consumer_and_rate_limit_headers() {
        let (upstream, response) = plugin_headers();
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
        };
        assert_eq!(
            names(&upstream),
            [
                "x-consumer-id",
                "x-consumer-username",
                "x-credential-identifier"
            ]
        );
        assert_eq!(
            names(&response),
            [
                "x-ratelimit-limit-hour",
                "x-ratelimit-remaining-hour",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset"
            ]
        );
        assert_eq!(upstream[1].1, "bench");
        assert_eq!(response[0].1, "1000000000");
    }

    #[test]
    fn bench_document_loads_with_every_route_and_plugin() {
        let doc = bench_document(3, true, "127.0.0.1:9");
        let loaded =
            fallback_core::document::ConfigDocument::from_slice(doc.to_string().as_bytes())
                .expect("the generated config loads");
        assert_eq!(loaded.document.routes.len(), 3);
        assert_eq!(loaded.document.plugins.len(), 6);
    }
}
