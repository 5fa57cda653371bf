//! The corpus of real Kong configs (`wasm-tests/corpus/`, see its README): every case through
//! `fallback-companion match` (the real binary), and through the filter in the real Envoy;
//! both must make the decision Kong 3.9 makes.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasm_tests::envoy::EnvoyOptions;
use wasm_tests::fixtures::wait_until;
use wasm_tests::http::{request, HttpResponse};
use wasm_tests::{companion_match, EchoServer, Envoy, MockCp};

const WAIT: Duration = Duration::from_secs(30);

/// One config of the corpus and its cases.
struct Corpus {
    config: PathBuf,
    cases: Vec<Case>,
}

struct Case {
    why: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    expected: Expected,
}

/// Kong's decision for a request.
enum Expected {
    Forward {
        route: String,
        upstream_url: String,
        upstream_host: String,
        headers: Map<String, Value>,
        removed_headers: Vec<String>,
        skipped_plugins: Option<Value>,
    },
    Answer {
        status: u16,
        message: Option<String>,
        location: Option<String>,
        headers: Map<String, Value>,
    },
}

impl Case {
    fn label(&self) -> String {
        format!("{} {} ({})", self.method, self.url, self.why)
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn text(value: &Value, key: &str, file: &Path) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {key:?} must be a string in {value}", file.display()))
        .to_owned()
}

/// Every `<config>.cases.json`; every config in the folder has one.
fn corpus() -> Vec<Corpus> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus folder")
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    let configs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .filter(|p| !p.to_string_lossy().ends_with(".cases.json"))
        .collect();
    let mut out = Vec::new();
    for config in configs {
        let stem = config.file_stem().expect("a file name").to_string_lossy();
        let cases_file = corpus_dir().join(format!("{stem}.cases.json"));
        let raw: Value = serde_json::from_slice(
            &std::fs::read(&cases_file).unwrap_or_else(|e| panic!("{}: {e}", cases_file.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", cases_file.display()));
        assert_eq!(
            raw["config"].as_str(),
            config.file_name().and_then(|n| n.to_str()),
            "{}",
            cases_file.display()
        );
        let cases = raw["cases"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no cases", cases_file.display()))
            .iter()
            .map(|c| read_case(c, &cases_file))
            .collect::<Vec<_>>();
        assert!(!cases.is_empty(), "{}: no cases", cases_file.display());
        out.push(Corpus {
            config: config.clone(),
            cases,
        });
    }
    assert!(out.len() >= 6, "the corpus has {} configs", out.len());
    out
}

fn read_case(c: &Value, file: &Path) -> Case {
    let req = &c["request"];
    let headers = req["headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let expected = if let Some(f) = c.get("forward") {
        Expected::Forward {
            route: text(f, "route", file),
            upstream_url: text(f, "upstream_url", file),
            upstream_host: text(f, "upstream_host", file),
            headers: object(&f["headers"]),
            removed_headers: f["removed_headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            skipped_plugins: f.get("skipped_plugins").cloned(),
        }
    } else {
        let a = &c["answer"];
        Expected::Answer {
            status: a["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or_else(|| {
                    panic!("{}: a case needs forward or answer: {c}", file.display())
                }),
            message: a["message"].as_str().map(str::to_owned),
            location: a["location"].as_str().map(str::to_owned),
            headers: object(&a["headers"]),
        }
    };
    Case {
        why: text(c, "why", file),
        method: text(req, "method", file),
        url: text(req, "url", file),
        headers,
        expected,
    }
}

/// `expected` as a case writes it: a value, or `<uuid>` for an id Kong draws at random.
fn same(expected: &Value, actual: Option<&str>) -> bool {
    match (expected.as_str(), actual) {
        (Some("<uuid>"), Some(actual)) => is_uuid(actual),
        (Some(expected), Some(actual)) => expected == actual,
        _ => false,
    }
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Compares `match`'s answer with Kong's decision.
fn check_match(case: &Case, predicted: &Value) -> Result<(), String> {
    let mismatch = |what: &str| Err(format!("{what}: match answered {predicted}"));
    match &case.expected {
        Expected::Forward {
            route,
            upstream_url,
            upstream_host,
            headers,
            skipped_plugins,
            ..
        } => {
            if predicted.get("response").is_some() || predicted["route"] != json!(route) {
                return mismatch(&format!("Kong forwards on route {route}"));
            }
            if predicted["upstream_url"] != json!(upstream_url)
                || predicted["upstream_host"] != json!(upstream_host)
            {
                return mismatch(&format!(
                    "Kong sends it to {upstream_url} with Host {upstream_host}"
                ));
            }
            for (name, value) in headers {
                if !same(value, predicted["upstream_headers"][name].as_str()) {
                    return mismatch(&format!("Kong sets {name}: {value} upstream"));
                }
            }
            if let Some(skipped) = skipped_plugins {
                if predicted["skipped_plugins"] != *skipped {
                    return mismatch(&format!("plugins {skipped} only observe and are skipped"));
                }
            }
            Ok(())
        }
        Expected::Answer {
            status,
            message,
            location,
            ..
        } => {
            let (got_status, got_message) = match predicted.get("response") {
                Some(r) => (r["status"].as_u64(), r["body"]["message"].as_str()),
                None => (predicted["status"].as_u64(), predicted["message"].as_str()),
            };
            if got_status != Some(u64::from(*status)) {
                return mismatch(&format!("Kong answers {status}"));
            }
            // match prints a 404 without its message (it is always Kong's).
            if let (Some(message), Some(got)) = (message, got_message) {
                if got != message {
                    return mismatch(&format!("Kong answers {message:?}"));
                }
            }
            if location.is_some() && predicted["location"].as_str() != location.as_deref() {
                return mismatch(&format!("Kong redirects to {location:?}"));
            }
            Ok(())
        }
    }
}

/// The cases checked, and those whose answer differs from Kong's.
#[derive(Default)]
struct Findings {
    count: usize,
    failures: Vec<String>,
}

impl Findings {
    fn record(&mut self, corpus: &Corpus, case: &Case, outcome: Result<(), String>) {
        self.count += 1;
        if let Err(why) = outcome {
            self.failures.push(format!(
                "{}: {}: {why}",
                corpus.config.display(),
                case.label()
            ));
        }
    }

    /// Fails with every difference, then `context`.
    fn assert_none(self, context: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases differ from Kong:\n{}\n{context}",
            self.failures.len(),
            self.count,
            self.failures.join("\n")
        );
    }
}

#[test]
fn match_decides_every_case_as_kong() {
    let mut findings = Findings::default();
    for corpus in corpus() {
        for case in &corpus.cases {
            let predicted =
                companion_match(&corpus.config, &case.method, &case.url, &case.headers());
            findings.record(&corpus, case, check_match(case, &predicted));
        }
    }
    findings.assert_none("");
}

/// Sends a case through Envoy: the URL's authority becomes the Host header.
async fn send(envoy: &Envoy, case: &Case) -> Result<HttpResponse, String> {
    let rest = case.url.split_once("://").expect("absolute URL").1;
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    let mut headers = vec![("host", authority)];
    headers.extend(case.headers());
    request(
        &case.method,
        &format!("{}{path}", envoy.listener_url()),
        &headers,
        Vec::new(),
    )
    .await
}

/// Compares what Envoy and the echo upstream saw with Kong's decision.
fn check_envoy(case: &Case, response: &HttpResponse) -> Result<(), String> {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let mismatch = |what: &str| {
        Err(format!(
            "{what}: Envoy answered {} {:?} {}",
            response.status,
            response.headers,
            response.text()
        ))
    };
    match &case.expected {
        Expected::Forward {
            upstream_url,
            upstream_host,
            headers,
            removed_headers,
            ..
        } => {
            if response.status != 200 || body["upstream"] != "observer" {
                return mismatch("Kong forwards it");
            }
            let received = &body["headers"];
            let rest = upstream_url.split_once("://").expect("absolute URL").1;
            let at = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(at);
            if received["x-fallback-upstream"].as_str() != Some(authority)
                || body["path"].as_str() != Some(path)
                || received["host"].as_str() != Some(upstream_host)
            {
                return mismatch(&format!(
                    "Kong sends it to {authority} as {path} with Host {upstream_host}"
                ));
            }
            for (name, value) in headers {
                if !same(value, received[name].as_str()) {
                    return mismatch(&format!("Kong sets {name}: {value} upstream"));
                }
            }
            for name in removed_headers {
                if received.get(name).is_some() {
                    return mismatch(&format!("Kong removes {name}"));
                }
            }
            Ok(())
        }
        Expected::Answer {
            status,
            message,
            location,
            headers,
        } => {
            if response.status != *status || body["upstream"] == "observer" {
                return mismatch(&format!("Kong answers {status}"));
            }
            if let Some(message) = message {
                if body["message"].as_str() != Some(message) {
                    return mismatch(&format!("Kong answers {message:?}"));
                }
            }
            if location.is_some() && response.header("location") != location.as_deref() {
                return mismatch(&format!("Kong redirects to {location:?}"));
            }
            for (name, value) in headers {
                if !same(value, response.header(name)) {
                    return mismatch(&format!("Kong answers with {name}: {value}"));
                }
            }
            Ok(())
        }
    }
}

/// Filter configuration: the control plane only (the companion and storage never answer).
fn filter_config(cp: &MockCp) -> Value {
    json!({
        "version": "3.9.1.0",
        "control_plane": {"upstream": "fallback_cp", "authority": cp.authority(), "path": "/config", "timeout_ms": 1000},
        "companion": {"upstream": "fallback_companion", "authority": "companion", "token": "unused", "timeout_ms": 500},
        "storage": {"upstream": "fallback_storage"},
        "poll_interval_ms": 200,
        "cp_failure_threshold": 100,
        "tick_ms": 100,
        "leader_lease_ms": 1000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_decides_every_case_as_kong() {
    let cp = MockCp::start().await;
    let observer = EchoServer::start("observer").await;
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: 2,
        filter_config: filter_config(&cp),
        cp: Some(("127.0.0.1".into(), cp.port())),
        observer: Some(("127.0.0.1".into(), observer.port())),
        ..EnvoyOptions::default()
    })
    .await;

    let mut findings = Findings::default();
    for corpus in corpus() {
        let bytes = std::fs::read(&corpus.config).expect("the config");
        // The control plane serves JSON (the filter parses no YAML), as Kong's does.
        let document = fallback_companion::source::normalise(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", corpus.config.display()));
        let generation = envoy
            .stat("wasmcustom.fallback_generation")
            .await
            .unwrap_or(0);
        cp.set_document(&document);
        // The leader publishes the document; every worker applies it on its next tick: the
        // first case answered as Kong several times in a row, over as many connections.
        let first = &corpus.cases[0];
        wait_until(
            &format!("{} is in force", corpus.config.display()),
            WAIT,
            || async {
                if envoy
                    .stat("wasmcustom.fallback_generation")
                    .await
                    .unwrap_or(0)
                    <= generation
                {
                    return false;
                }
                for _ in 0..8 {
                    match send(&envoy, first).await {
                        Ok(r) if check_envoy(first, &r).is_ok() => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await;
        for case in &corpus.cases {
            let outcome = match send(&envoy, case).await {
                Ok(response) => check_envoy(case, &response),
                Err(e) => Err(format!("no answer: {e}")),
            };
            findings.record(&corpus, case, outcome);
        }
    }
    findings.assert_none(&format!("--- envoy.log ---\n{}", envoy.log_tail(30)));
}
