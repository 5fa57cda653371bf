//! An upstream for end-to-end tests: answers every request with JSON describing what it
//! received (its own name, method, path, headers), so a test can see where Envoy sent it and
//! with which path and Host.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ports::free_port;

/// A running echo upstream on 127.0.0.1.
pub struct EchoServer {
    name: String,
    port: u16,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts an upstream that calls itself `name` in its answers, on a free port.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, free_port()).await
    }

    /// Starts an upstream that calls itself `name` in its answers, on `127.0.0.1:port`.
    /// Panics when the port cannot be bound.
    pub async fn start_on(name: &str, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("echo server {name}: cannot listen on {port}: {e}"));
        let hits = Arc::new(AtomicU64::new(0));
        let server_name = name.to_owned();
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = server_name.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_owned(),
                                    json!(String::from_utf8_lossy(v.as_bytes())),
                                )
                            })
                            .collect();
                        let body = json!({
                            "upstream": name,
                            "method": req.method().as_str(),
                            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                            "headers": headers,
                        });
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .expect("static response parts are valid"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            name: name.to_owned(),
            port,
            hits,
            task,
        }
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
