//! A fault-injecting HTTP/1.1 proxy on loopback, put in front of a server (SeaweedFS in the
//! fault matrix) to make it answer an error status or answer slowly on demand.
//!
//! It forwards each request verbatim to its upstream — method, path and query, headers with
//! `Host` unchanged (so SigV4 signatures made for the proxy's address still verify), body —
//! and the answer back, unless a [`Fault`] applies to the request's method.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ports::free_port;
use crate::serve::spawn_server;

/// What the proxy does to the requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward them.
    None,
    /// Answer this status with an S3-style XML error body, without forwarding.
    Status(u16),
    /// Wait this long, then forward (a store slower than its clients' timeouts).
    Delay(Duration),
}

/// Which requests a [`Fault`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request.
    Every,
    /// Requests with this method only (e.g. `"GET"`: object reads, not the signer's `HEAD`s).
    Method(&'static str),
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounts {
    /// Requests forwarded (delayed ones included).
    pub forwarded: u64,
    /// Requests answered with a fault status instead.
    pub refused: u64,
    /// Requests delayed before being forwarded.
    pub delayed: u64,
    /// Requests whose upstream could not be reached (answered 502).
    pub upstream_errors: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    refused: AtomicU64,
    delayed: AtomicU64,
    upstream_errors: AtomicU64,
}

struct Shared {
    upstream: String,
    fault: Mutex<(Fault, Scope)>,
    counters: Counters,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A running fault proxy; dropping it stops it.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding from a free 127.0.0.1 port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("fault proxy: cannot listen on 127.0.0.1:{port}: {e}"));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            fault: Mutex::new((Fault::None, Scope::Every)),
            counters: Counters::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let state = shared.clone();
        let task = spawn_server("fault proxy", listener, move |req| {
            handle(state.clone(), req)
        });
        Self { port, shared, task }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the endpoint clients use instead of the upstream's.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, applies `fault` to the requests in `scope` (and forwards the others).
    pub fn set_fault(&self, fault: Fault, scope: Scope) {
        *self.shared.fault.lock().expect("fault proxy lock poisoned") = (fault, scope);
    }

    /// Forwards everything again.
    pub fn clear_fault(&self) {
        self.set_fault(Fault::None, Scope::Every);
    }

    /// What it has done so far.
    pub fn counts(&self) -> ProxyCounts {
        let c = &self.shared.counters;
        ProxyCounts {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            upstream_errors: c.upstream_errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (fault, scope) = *shared.fault.lock().expect("fault proxy lock poisoned");
    let applies = match scope {
        Scope::Every => true,
        Scope::Method(method) => req.method().as_str().eq_ignore_ascii_case(method),
    };
    let counters = &shared.counters;
    match fault {
        Fault::Status(status) if applies => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(error_response(status, "InjectedFault"));
        }
        Fault::Delay(delay) if applies => {
            counters.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let forwarded = async {
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the request body: {e}"))?
            .to_bytes();
        parts.uri = format!("http://{}{path}", shared.upstream)
            .parse()
            .map_err(|e| format!("upstream URI: {e}"))?;
        // `Host` stays as the client sent it: the client signed it.
        let response = shared
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| format!("upstream {}: {e:?}", shared.upstream))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the upstream body: {e}"))?
            .to_bytes();
        Ok::<_, String>(Response::from_parts(parts, Full::new(body)))
    };
    match forwarded.await {
        Ok(response) => {
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            Ok(response)
        }
        Err(e) => {
            eprintln!("[harness] fault proxy: {e}");
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            Ok(error_response(502, "BadGateway"))
        }
    }
}

/// An S3-style error answer.
fn error_response(status: u16, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>fault injected by the test harness</Message></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("build {status} response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoServer;
    use crate::http::request;

    #[tokio::test]
    async fn forwards_verbatim_and_injects_status_and_delay_by_method() {
        let echo = EchoServer::start("store").await;
        let proxy = FaultProxy::start(&format!("127.0.0.1:{}", echo.port())).await;
        let url = format!("{}/bucket/key?X-Amz-Signature=abc", proxy.endpoint());

        let r = request("GET", &url, &[("host", "signed.example:9")], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let echoed = r.json();
        assert_eq!(echoed["upstream"], "store");
        assert_eq!(echoed["path"], "/bucket/key?X-Amz-Signature=abc");
        assert_eq!(
            echoed["headers"]["host"], "signed.example:9",
            "Host is kept"
        );

        proxy.set_fault(Fault::Status(503), Scope::Method("GET"));
        let r = request("GET", &url, &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 503);
        assert!(r.text().contains("<Code>InjectedFault</Code>"));
        let r = request("HEAD", &url, &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 200, "HEAD is out of the fault's scope");

        proxy.set_fault(Fault::Delay(Duration::from_millis(300)), Scope::Every);
        let started = std::time::Instant::now();
        let r = request("GET", &url, &[], Vec::new()).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));

        proxy.clear_fault();
        assert_eq!(
            proxy.counts(),
            ProxyCounts {
                forwarded: 3,
                refused: 1,
                delayed: 1,
                upstream_errors: 0
            }
        );
        assert_eq!(echo.hits(), 3);
    }
}
