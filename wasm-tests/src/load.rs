//! A bounded request loop on loopback: a few concurrent clients send requests through the
//! proxy until told to stop, a request count is reached, or time runs out (whichever comes
//! first), and every answer is checked to be the expected `200` from the expected upstream with
//! the expected path, not merely any `200`.
//!
//! The answers come from [`crate::EchoServer`]s, which describe what they received.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::watch;

/// How many failures a report quotes (it counts them all).
pub const QUOTED_FAILURES: usize = 20;

/// One kind of request, and the only answer that counts as served.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Path sent to the proxy, without a query (each request adds `?n=<sequence number>`).
    pub path: String,
    /// The name of the echo upstream that must answer.
    pub upstream: String,
    /// The path that upstream must receive (the query is appended to it).
    pub upstream_path: String,
}

/// Bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Concurrent clients, each with its own keep-alive connection.
    pub clients: usize,
    /// At most this many requests in all.
    pub max_requests: u64,
    /// At most this long.
    pub max_duration: Duration,
    /// A request not answered within this counts as failed.
    pub request_timeout: Duration,
}

/// What a run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests not answered as expected (transport error, timeout, status, upstream or path).
    pub failed: u64,
    /// Correct answers per config source, from the filter's `X-Fallback-Source` debug header
    /// (`control_plane`, `fallback`; `none` when absent).
    pub served_by: BTreeMap<String, u64>,
    /// Per config source, the first and the last correct answer under it: milliseconds into
    /// the run at which those requests were sent.
    pub served_between: BTreeMap<String, (u64, u64)>,
    /// Median latency of all requests, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Slowest request, milliseconds.
    pub max_ms: f64,
    /// How long the run took, milliseconds.
    pub duration_ms: u64,
    /// The first [`QUOTED_FAILURES`] failures: milliseconds into the run and what was wrong.
    pub failures: Vec<(u64, String)>,
}

impl LoadReport {
    /// Correct answers served under the config from `source`.
    pub fn served_by(&self, source: &str) -> u64 {
        self.served_by.get(source).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct ClientTally {
    sent: u64,
    failed: u64,
    served_by: BTreeMap<String, u64>,
    served_between: BTreeMap<String, (u64, u64)>,
    latencies_us: Vec<u64>,
    failures: Vec<(u64, String)>,
}

/// Sends requests to `base_url` (`http://127.0.0.1:PORT`), cycling through `probes`, with the
/// `Kong-Debug: 1` header, until `stop` turns true or a limit is reached.
pub async fn run_load(
    base_url: &str,
    probes: &[Probe],
    limits: LoadLimits,
    stop: watch::Receiver<bool>,
) -> LoadReport {
    assert!(!probes.is_empty(), "run_load needs at least one probe");
    let started = Instant::now();
    let deadline = started + limits.max_duration;
    let sequence = Arc::new(AtomicU64::new(0));
    let probes: Arc<[Probe]> = probes.into();
    let clients: Vec<_> = (0..limits.clients.max(1))
        .map(|_| {
            let base_url = base_url.to_owned();
            let probes = probes.clone();
            let sequence = sequence.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                client_loop(
                    &base_url, &probes, limits, deadline, started, &sequence, stop,
                )
                .await
            })
        })
        .collect();
    let mut report = LoadReport::default();
    let mut latencies = Vec::new();
    for client in clients {
        let tally = client.await.expect("a load client panicked");
        report.sent += tally.sent;
        report.failed += tally.failed;
        for (source, n) in tally.served_by {
            *report.served_by.entry(source).or_default() += n;
        }
        for (source, (first, last)) in tally.served_between {
            let window = report.served_between.entry(source).or_insert((first, last));
            *window = (window.0.min(first), window.1.max(last));
        }
        latencies.extend(tally.latencies_us);
        report.failures.extend(tally.failures);
    }
    report.failures.sort();
    report.failures.truncate(QUOTED_FAILURES);
    report.duration_ms = started.elapsed().as_millis() as u64;
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1] as f64 / 1000.0
    };
    report.p50_ms = percentile(0.50);
    report.p99_ms = percentile(0.99);
    report.max_ms = percentile(1.0);
    report
}

async fn client_loop(
    base_url: &str,
    probes: &[Probe],
    limits: LoadLimits,
    deadline: Instant,
    started: Instant,
    sequence: &AtomicU64,
    stop: watch::Receiver<bool>,
) -> ClientTally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http();
    let mut tally = ClientTally::default();
    loop {
        if *stop.borrow() || Instant::now() >= deadline {
            break;
        }
        let n = sequence.fetch_add(1, Ordering::Relaxed);
        if n >= limits.max_requests {
            break;
        }
        let probe = &probes[(n % probes.len() as u64) as usize];
        let sent_at = Instant::now();
        let outcome =
            tokio::time::timeout(limits.request_timeout, send(&client, base_url, probe, n))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", limits.request_timeout)));
        tally
            .latencies_us
            .push(sent_at.elapsed().as_micros() as u64);
        tally.sent += 1;
        let at = sent_at.duration_since(started).as_millis() as u64;
        match outcome {
            Ok(source) => {
                let window = tally
                    .served_between
                    .entry(source.clone())
                    .or_insert((at, at));
                window.1 = at;
                *tally.served_by.entry(source).or_default() += 1;
            }
            Err(why) => {
                tally.failed += 1;
                if tally.failures.len() < QUOTED_FAILURES {
                    tally.failures.push((at, format!("{}: {why}", probe.path)));
                }
            }
        }
    }
    tally
}

/// One request; `Ok` with the config source when the answer is the expected one.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    base_url: &str,
    probe: &Probe,
    n: u64,
) -> Result<String, String> {
    let request = http::Request::get(format!("{base_url}{}?n={n}", probe.path))
        .header("kong-debug", "1")
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("transport: {e:?}"))?;
    let status = response.status().as_u16();
    let source = response
        .headers()
        .get("x-fallback-source")
        .map_or("none".to_owned(), |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        });
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if status != 200 {
        return Err(format!("status {status}: {}", text()));
    }
    let echoed: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| format!("200 that is not the echo upstream's JSON: {}", text()))?;
    let want_path = format!("{}?n={n}", probe.upstream_path);
    if echoed["upstream"] != probe.upstream.as_str() || echoed["path"] != want_path.as_str() {
        return Err(format!(
            "200 from {} with path {}, expected {} with {want_path}",
            echoed["upstream"], echoed["path"], probe.upstream
        ));
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoServer;

    fn limits(max_requests: u64) -> LoadLimits {
        LoadLimits {
            clients: 3,
            max_requests,
            max_duration: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn counts_only_the_expected_answers_and_stops_at_the_count() {
        let alpha = EchoServer::start("alpha").await;
        let (_stop, stop_rx) = watch::channel(false);
        let base = format!("http://127.0.0.1:{}", alpha.port());
        let right = Probe {
            path: "/a".into(),
            upstream: "alpha".into(),
            upstream_path: "/a".into(),
        };
        let wrong_upstream = Probe {
            upstream: "beta".into(),
            ..right.clone()
        };
        let wrong_path = Probe {
            upstream_path: "/b".into(),
            ..right.clone()
        };
        let report = run_load(
            &base,
            &[right, wrong_upstream, wrong_path],
            limits(30),
            stop_rx,
        )
        .await;
        assert_eq!(report.sent, 30);
        assert_eq!(report.failed, 20, "{report:?}");
        assert_eq!(report.served_by("none"), 10);
        assert_eq!(alpha.hits(), 30);
        assert!(report
            .failures
            .iter()
            .any(|(_, f)| f.contains("expected beta")));
        assert!(report
            .failures
            .iter()
            .any(|(_, f)| f.contains("with /b?n=")));
    }

    #[tokio::test]
    async fn a_closed_port_fails_every_request_and_stop_ends_the_run() {
        let closed = crate::ports::free_port();
        let (stop, stop_rx) = watch::channel(false);
        let probe = Probe {
            path: "/a".into(),
            upstream: "alpha".into(),
            upstream_path: "/a".into(),
        };
        let run = tokio::spawn(async move {
            run_load(
                &format!("http://127.0.0.1:{closed}"),
                &[probe],
                limits(u64::MAX),
                stop_rx,
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(true).unwrap();
        let report = run.await.unwrap();
        assert!(report.sent > 0);
        assert_eq!(report.failed, report.sent);
        assert!(report.duration_ms < 5_000, "stopped, not timed out");
    }
}
