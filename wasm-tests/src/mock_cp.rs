//! A scriptable mock control plane: serves the current config document on any path, with
//! ETags and `If-None-Match`, failure modes, and stop/restart on the same port.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::ports::free_port;
use crate::serve::spawn_server;
use crate::sha256::sha256_hex;

/// How the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve the document (200 / 304), or 503 when none is set.
    Normal,
    /// Answer every request with 500.
    Fail500,
    /// Wait this long, then answer as [`Mode::Normal`].
    Slow(Duration),
    /// Answer every request with this status and a small JSON body.
    Status(u16),
}

/// One request the mock received, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string, when present.
    pub query: Option<String>,
    /// The `If-None-Match` header, when present.
    pub if_none_match: Option<String>,
    /// Status answered.
    pub status: u16,
    /// All request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug)]
enum Content {
    None,
    Document(serde_json::Value),
    Raw { body: Bytes, etag: String },
}

#[derive(Debug)]
struct State {
    content: Content,
    admin_shape: bool,
    mode: Mode,
    requests: Vec<RecordedRequest>,
}

/// The ETag the mock uses for `body`: `"<first 16 hex digits of sha256(body)>"` (quotes included).
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", &sha256_hex(body)[..16])
}

impl State {
    /// The body and ETag currently served, if any.
    fn current(&self) -> Option<(Bytes, String)> {
        match &self.content {
            Content::None => None,
            Content::Raw { body, etag } => Some((body.clone(), etag.clone())),
            Content::Document(doc) => {
                let body = if self.admin_shape {
                    let inner = serde_json::to_string(doc).expect("serialize document");
                    serde_json::to_vec(&serde_json::json!({ "config": inner }))
                        .expect("serialize admin API shape")
                } else {
                    serde_json::to_vec(doc).expect("serialize document")
                };
                let etag = etag_of(&body);
                Some((Bytes::from(body), etag))
            }
        }
    }
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    let want = bare(etag);
    if_none_match
        .split(',')
        .any(|candidate| candidate.trim() == "*" || bare(candidate) == want)
}

/// The mock control plane. See the module docs.
pub struct MockCp {
    port: u16,
    state: Arc<Mutex<State>>,
    server: Option<JoinHandle<()>>,
}

impl MockCp {
    /// Starts serving on a free 127.0.0.1 port, with no document (requests get 503).
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts serving on `127.0.0.1:port`, with no document (requests get 503).
    pub async fn start_on(port: u16) -> Self {
        let mut cp = Self {
            port,
            state: Arc::new(Mutex::new(State {
                content: Content::None,
                admin_shape: false,
                mode: Mode::Normal,
                requests: Vec::new(),
            })),
            server: None,
        };
        cp.listen().await;
        cp
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("MockCp state lock poisoned")
    }

    async fn listen(&mut self) {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
        let mut attempt = 0;
        let listener = loop {
            let socket = TcpSocket::new_v4().expect("create MockCp socket");
            socket
                .set_reuseaddr(true)
                .expect("set SO_REUSEADDR on MockCp socket");
            match socket.bind(addr).and_then(|()| socket.listen(128)) {
                Ok(listener) => break listener,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    if attempt == 1 {
                        eprintln!("[harness] MockCp bind {addr}: {e}; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("MockCp: cannot listen on {addr}: {e}"),
            }
        };
        let state = self.state.clone();
        // Aborting the server drops every open connection too: a stopped CP really is gone.
        self.server = Some(spawn_server("MockCp", listener, move |req| {
            handle(state.clone(), req)
        }));
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across stop/restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. for an Envoy cluster or a Kong `host:port` upstream.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves `doc` as JSON from now on (clears any raw body), with ETag [`etag_of`] the body.
    pub fn set_document(&self, doc: &serde_json::Value) {
        self.lock().content = Content::Document(doc.clone());
    }

    /// Wraps the document in Kong's DB-less Admin API shape, `{"config": "<document JSON>"}`
    /// (when `on`), or serves it bare (default).
    pub fn set_admin_api_shape(&self, on: bool) {
        self.lock().admin_shape = on;
    }

    /// Serves `body` verbatim (e.g. an invalid document) with `etag` (quoted if given bare);
    /// `None` computes [`etag_of`] the body. Replaces any document.
    pub fn set_raw_body(&self, body: impl Into<Bytes>, etag: Option<&str>) {
        let body: Bytes = body.into();
        let etag = match etag {
            Some(e) if e.starts_with('"') || e.starts_with("W/") => e.to_string(),
            Some(e) => format!("\"{e}\""),
            None => etag_of(&body),
        };
        self.lock().content = Content::Raw { body, etag };
    }

    /// Forgets the document: requests get 503 again.
    pub fn clear_document(&self) {
        self.lock().content = Content::None;
    }

    /// The ETag currently served (quotes included), if any.
    pub fn current_etag(&self) -> Option<String> {
        self.lock().current().map(|(_, etag)| etag)
    }

    /// The exact body currently served with 200, if any.
    pub fn current_body(&self) -> Option<Bytes> {
        self.lock().current().map(|(body, _)| body)
    }

    /// Sets how requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Stops listening and drops every open connection: connections are refused until
    /// [`MockCp::restart`]. Document, mode and recorded requests are kept.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port (stopping first if running).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }
}

impl Drop for MockCp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = crate::http::header_pairs(req.headers());
    let if_none_match = req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mode = state.lock().expect("MockCp state lock poisoned").mode;
    if let Mode::Slow(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    let response = {
        let st = state.lock().expect("MockCp state lock poisoned");
        match mode {
            Mode::Fail500 => json_response(500, r#"{"message":"mock CP failure"}"#),
            Mode::Status(code) => json_response(code, r#"{"message":"mock CP status"}"#),
            Mode::Normal | Mode::Slow(_) => match st.current() {
                None => json_response(503, r#"{"message":"no configuration yet"}"#),
                Some((body, etag)) => {
                    if if_none_match
                        .as_deref()
                        .is_some_and(|inm| etag_matches(inm, &etag))
                    {
                        Response::builder()
                            .status(304)
                            .header("etag", etag)
                            .body(Full::new(Bytes::new()))
                            .expect("build 304 response")
                    } else {
                        Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .header("etag", etag)
                            .body(Full::new(body))
                            .expect("build 200 response")
                    }
                }
            },
        }
    };
    let recorded = RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        if_none_match,
        status: response.status().as_u16(),
        headers,
    };
    state
        .lock()
        .expect("MockCp state lock poisoned")
        .requests
        .push(recorded);
    Ok(response)
}

fn json_response(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|e| panic!("build {status} response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }
}
