//! Sources of config documents behind one small trait, [`ConfigSource`]: the polled URL
//! ([`Polling`] over [`ControlPlane`]) and Kong's cluster protocol ([`crate::cluster`]); plus
//! the normalisation of what a control plane (or a file) holds to JSON.

mod yaml_depth;

use crate::transport::{self, HttpClient, SendError};
use bytes::Bytes;
use fallback_core::json::{self, StrictError};
use fallback_core::limits::{MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where documents come from. The export role drives one source through [`spawn`]; each
/// implementation keeps its own state (an `ETag`, a connection) between calls.
#[async_trait::async_trait]
pub trait ConfigSource: Send {
    /// What the source reads from, without credentials, for logs.
    fn describe(&self) -> String;

    /// Waits for the next event and returns it: a document (to be validated), "unchanged", or
    /// why no document came. It may wait as long as it needs (a poll interval, the next push);
    /// it runs in a task of its own, so it is never cancelled half-way except at shutdown.
    async fn next(&mut self) -> Result<Polled, SourceError>;
}

/// A [`ConfigSource`] running in its own task, its events queued for the consumer.
///
/// The queue is unbounded on purpose: a push source must keep answering its control plane
/// (Kong's pings) while the consumer is busy writing to storage, and documents arrive at the
/// control plane's pace, not faster.
pub struct SourceFeed {
    events: mpsc::UnboundedReceiver<Result<Polled, SourceError>>,
    task: JoinHandle<()>,
    describe: String,
}

/// Runs `source` in a task of its own until the returned feed is dropped.
pub fn spawn(mut source: Box<dyn ConfigSource>) -> SourceFeed {
    let (tx, events) = mpsc::unbounded_channel();
    let describe = source.describe();
    let task = tokio::spawn(async move {
        loop {
            let event = source.next().await;
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    SourceFeed {
        events,
        task,
        describe,
    }
}

impl SourceFeed {
    /// The next event; cancel-safe, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Option<Result<Polled, SourceError>> {
        self.events.recv().await
    }

    /// What the source reads from.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

impl Drop for SourceFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The polled source: [`ControlPlane::poll`] at once, then every `interval`.
pub struct Polling {
    control_plane: ControlPlane,
    interval: Duration,
    next_at: Option<tokio::time::Instant>,
}

impl Polling {
    /// Polls `control_plane` every `interval`, the first time at once.
    pub fn new(control_plane: ControlPlane, interval: Duration) -> Self {
        Self {
            control_plane,
            interval,
            next_at: None,
        }
    }
}

#[async_trait::async_trait]
impl ConfigSource for Polling {
    fn describe(&self) -> String {
        self.control_plane.shown_url().to_owned()
    }

    async fn next(&mut self) -> Result<Polled, SourceError> {
        if let Some(at) = self.next_at {
            tokio::time::sleep_until(at).await;
        }
        self.next_at = Some(tokio::time::Instant::now() + self.interval);
        self.control_plane.poll().await
    }
}

/// The export role's source settings, shared by `run` and `doctor`: exactly one of the polled
/// URL, the Kong cluster, or the Admin API (or Konnect).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// The control plane's config endpoint: plain declarative JSON/YAML, or Kong's DB-less
    /// Admin API `GET /config`.
    #[arg(long, env = "FALLBACK_CONTROL_PLANE_URL", value_name = "URL")]
    pub control_plane_url: Option<String>,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,

    #[command(flatten)]
    pub admin_api: crate::admin_api::AdminApiArgs,
}

impl SourceArgs {
    /// The source these settings name, `None` when none is set. `node` is this node's name and
    /// the storage's config version (the cluster source announces them).
    pub fn configured(
        &self,
        node: (&str, &str),
        poll_interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Option<Box<dyn ConfigSource>>> {
        let url = self.control_plane_url.as_deref().filter(|u| !u.is_empty());
        let cluster = self.cluster.settings(node.0, node.1)?;
        let admin = self.admin_api.source(poll_interval, timeout)?;
        let set = [url.is_some(), cluster.is_some(), admin.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            anyhow::bail!("more than one of FALLBACK_CONTROL_PLANE_URL, KONG_CLUSTER_CONTROL_PLANE and FALLBACK_ADMIN_API_URL (or FALLBACK_KONNECT_CONTROL_PLANE_URL) is set: the export role reads one source; unset the others");
        }
        Ok(match (url, cluster, admin) {
            (Some(url), _, _) => Some(Box::new(Polling::new(
                ControlPlane::new(url, timeout)?,
                poll_interval,
            ))),
            (_, Some(cluster), _) => Some(Box::new(crate::cluster::ClusterSource::new(cluster))),
            (_, _, Some(admin)) => Some(Box::new(admin)),
            _ => None,
        })
    }
}

/// What one poll of the control plane returned.
#[derive(Debug)]
pub enum Polled {
    /// `304 Not Modified`: the document is the one seen last.
    NotModified,
    /// A document, normalised to JSON (still to be validated).
    Document(Value),
}

/// Why a poll produced no document.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The control plane could not be reached or did not answer in time.
    #[error("control plane {url} unreachable: {detail}")]
    Unreachable {
        /// The URL polled, without credentials.
        url: String,
        /// What happened.
        detail: String,
    },
    /// It answered with an unexpected status.
    #[error("control plane {url} answered HTTP {status}{body}")]
    Status {
        /// The URL polled, without credentials.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body, for context.
        body: String,
    },
    /// The control plane accepted the connection but refuses to give this node its config.
    #[error("control plane {url} refused this node: {detail}")]
    Refused {
        /// The control plane, without credentials.
        url: String,
        /// Why, and what to change.
        detail: String,
    },
    /// The body is neither declarative JSON/YAML nor Kong's `{"config": "..."}` shape.
    #[error("control plane {url} sent a body that is not a declarative config: {detail}")]
    Malformed {
        /// The URL polled, without credentials.
        url: String,
        /// What is wrong.
        detail: String,
    },
}

/// Polls one control-plane URL, remembering the last `ETag` for `If-None-Match`.
pub struct ControlPlane {
    url: String,
    shown_url: String,
    client: HttpClient,
    etag: Option<String>,
    timeout: Duration,
}

impl ControlPlane {
    /// A source polling `url` (e.g. `http://kong-cp:8001/config`).
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            anyhow::anyhow!(
                "control plane URL {:?} is not a URL ({e}); use e.g. http://kong-cp:8001/config",
                transport::redact_url(url)
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!(
                "control plane URL {} must be http:// or https://",
                transport::redact_url(url)
            );
        }
        Ok(Self {
            url: url.to_owned(),
            shown_url: transport::redact_url(url),
            client: transport::client(),
            etag: None,
            timeout,
        })
    }

    /// The URL without credentials, for messages.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Fetches the document unless it is unchanged since the last poll.
    pub async fn poll(&mut self) -> Result<Polled, SourceError> {
        let mut builder = Request::get(&self.url)
            .header("accept", "application/json, application/yaml;q=0.9")
            .header(
                "user-agent",
                concat!("fallback-companion/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(tag) = &self.etag {
            builder = builder.header("if-none-match", tag.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.unreachable(e.to_string()))?;
        let response = transport::send(&self.client, request, self.timeout)
            .await
            .map_err(|e: SendError| self.unreachable(e.to_string()))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Polled::NotModified),
            StatusCode::OK => {
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Parsing megabytes is CPU work: off the runtime's workers, so that timers,
                // other tasks and a SIGTERM are not held up behind it.
                let body = response.into_body();
                let parsed = tokio::task::spawn_blocking(move || normalise(&body))
                    .await
                    .unwrap_or_else(|e| Err(format!("parsing stopped: {e}")));
                let value = parsed.map_err(|detail| SourceError::Malformed {
                    url: self.shown_url.clone(),
                    detail,
                })?;
                // Remembered only once the body was readable, so a garbled answer is fetched again.
                self.etag = etag;
                Ok(Polled::Document(value))
            }
            status => {
                let text = String::from_utf8_lossy(response.body());
                let snippet: String = text.chars().take(200).collect();
                Err(SourceError::Status {
                    url: self.shown_url.clone(),
                    status: status.as_u16(),
                    body: if snippet.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", snippet.trim())
                    },
                })
            }
        }
    }

    fn unreachable(&self, detail: String) -> SourceError {
        SourceError::Unreachable {
            url: self.shown_url.clone(),
            detail,
        }
    }
}

/// The largest control-plane answer or file read: four times [`MAX_DOCUMENT_BYTES`], since
/// YAML with comments and the Admin API's `{"config": "<escaped text>"}` are larger than the
/// canonical JSON they hold (which must fit [`MAX_DOCUMENT_BYTES`] to be exported).
pub const MAX_SOURCE_BYTES: usize = 4 * MAX_DOCUMENT_BYTES;

/// Turns what a control plane (or a file) holds into the declarative document as JSON.
///
/// Accepts declarative JSON, declarative YAML (decK files), and the DB-less Admin API's
/// `GET /config` answer `{"config": "<YAML or JSON text>"}`. A key repeated in one object,
/// nesting deeper than [`MAX_NESTING_DEPTH`], and input larger than [`MAX_SOURCE_BYTES`] are
/// errors; the work is linear in the input's size, but megabytes of it take a while: call it
/// off the async runtime's workers (`spawn_blocking`).
pub fn normalise(body: &[u8]) -> Result<Value, String> {
    if body.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_SOURCE_BYTES} bytes read from a control plane or a \
             file (4 x MAX_DOCUMENT_BYTES); a declarative config that large cannot be exported",
            body.len()
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8 text ({e})"))?;
    let value = parse_json_or_yaml(text)?;
    let admin_api_config = match &value {
        Value::Object(map) if !map.contains_key("_format_version") => match map.get("config") {
            Some(Value::String(inner)) => Some(inner.clone()),
            _ => None,
        },
        _ => None,
    };
    let value = match admin_api_config {
        Some(inner) => {
            parse_json_or_yaml(&inner).map_err(|e| format!("its \"config\" string: {e}"))?
        }
        None => value,
    };
    if !value.is_object() {
        return Err("expected an object with _format_version at the top".into());
    }
    Ok(value)
}

fn parse_json_or_yaml(text: &str) -> Result<Value, String> {
    match json::from_str(text) {
        Ok(v) => Ok(v),
        // Text that starts like JSON is JSON with a mistake: its JSON error is the useful one.
        Err(StrictError::Syntax(_)) if !text.trim_start().starts_with(['{', '[']) => {
            parse_yaml(text)
        }
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn parse_yaml(text: &str) -> Result<Value, String> {
    // Before serde_yaml_ng, which reads every event first: see yaml_depth.
    if let Err(at) = yaml_depth::check(text, MAX_NESTING_DEPTH) {
        return Err(format!(
            "invalid YAML: line {}, column {}: nested deeper than {MAX_NESTING_DEPTH} levels of \
             arrays and objects (MAX_NESTING_DEPTH); a declarative config is about 10 deep, so \
             this is not one: check what produced it",
            at.line, at.column
        ));
    }
    json::deserialize(serde_yaml_ng::Deserializer::from_str(text), |e| {
        StrictError::Syntax(e.to_string())
    })
    .map_err(|e| match e {
        StrictError::Syntax(e) => format!("neither JSON nor YAML: {e}"),
        e => format!("invalid YAML: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_export_role_reads_exactly_one_source() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let Command::Run(run) = Cli::parse_from(["c", "run", "--storage", "file:///tmp/x"]).command
        else {
            panic!("parsed another command")
        };
        let second = Duration::from_secs(1);
        let pick = |f: &dyn Fn(&mut SourceArgs)| {
            let mut args = run.source.clone();
            f(&mut args);
            args.configured(("n", "3.4.1"), second, second)
        };
        assert!(pick(&|_| {}).unwrap().is_none());
        let url = |a: &mut SourceArgs| a.control_plane_url = Some("http://cp:8001/config".into());
        let admin =
            |a: &mut SourceArgs| a.admin_api.admin_api_url = Some("http://kong-cp:8001".into());
        assert_eq!(
            pick(&url).unwrap().unwrap().describe(),
            "http://cp:8001/config"
        );
        assert_eq!(
            pick(&admin).unwrap().unwrap().describe(),
            "http://kong-cp:8001/"
        );
        let both = pick(&|a| {
            url(a);
            admin(a);
        })
        .err()
        .unwrap();
        assert!(both.to_string().contains("more than one"), "{both}");
    }

    #[test]
    fn plain_json_passes_through() {
        let v = normalise(br#"{"_format_version":"3.0","services":[]}"#).unwrap();
        assert_eq!(v, json!({"_format_version": "3.0", "services": []}));
    }

    #[test]
    fn admin_api_shape_with_yaml_inside_is_unwrapped() {
        let body = json!({"config": "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://u:8080\n"});
        let v = normalise(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            v,
            json!({"_format_version": "3.0", "services": [{"name": "s", "url": "http://u:8080"}]})
        );
    }

    #[test]
    fn admin_api_shape_with_json_inside_is_unwrapped() {
        let inner = json!({"_format_version": "3.0"}).to_string();
        let v = normalise(json!({"config": inner}).to_string().as_bytes()).unwrap();
        assert_eq!(v, json!({"_format_version": "3.0"}));
    }

    #[test]
    fn yaml_files_are_accepted() {
        let v = normalise(b"_format_version: \"3.0\"\nroutes: []\n").unwrap();
        assert_eq!(v, json!({"_format_version": "3.0", "routes": []}));
    }

    #[test]
    fn deeply_nested_yaml_is_refused_quickly_naming_the_limit() {
        // 200 KB nested 100,000 deep: serde_yaml_ng alone took 42 s to refuse this.
        let n = 100_000;
        let text = format!(
            "_format_version: \"3.0\"\nx: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        );
        let err = normalise(text.as_bytes()).unwrap_err();
        assert!(
            err.starts_with("invalid YAML: line 2, column 67: nested deeper than 64 levels"),
            "{err}"
        );
        assert!(err.contains("MAX_NESTING_DEPTH"), "{err}");
        // Block nesting too, and inside the Admin API's {"config": "..."} string.
        let mut block = String::from("_format_version: \"3.0\"\nx:\n");
        for depth in 0..70 {
            block.push_str(&" ".repeat(2 * depth));
            block.push_str("-\n");
        }
        let err = normalise(block.as_bytes()).unwrap_err();
        assert!(err.contains("nested deeper than 64 levels"), "{err}");
        let wrapped = json!({ "config": text }).to_string();
        let err = normalise(wrapped.as_bytes()).unwrap_err();
        assert!(
            err.starts_with("its \"config\" string: invalid YAML"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_in_json_and_yaml() {
        let err = normalise(br#"{"_format_version":"3.0","routes":[{"paths":["/"]}],"routes":[]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("invalid JSON: $: key \"routes\" appears twice"),
            "{err}"
        );
        let yaml = "_format_version: \"3.0\"\nservices:\n- name: s\n  host: a\n  host: b\n";
        let err = normalise(yaml.as_bytes()).unwrap_err();
        assert!(
            err.starts_with("invalid YAML: services[0]: key \"host\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn input_larger_than_the_limit_is_refused_unread() {
        let big = vec![b' '; MAX_SOURCE_BYTES + 1];
        let err = normalise(&big).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "{} bytes, more than the {MAX_SOURCE_BYTES}",
                big.len()
            )),
            "{err}"
        );
    }

    #[test]
    fn broken_json_names_the_json_error() {
        let err = normalise(b"{\"_format_version\": ").unwrap_err();
        assert!(err.starts_with("invalid JSON"), "{err}");
        let err = normalise(b"[1,2]").unwrap_err();
        assert!(err.contains("expected an object"), "{err}");
        let err = normalise(&[0xff, 0xfe]).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }
}
