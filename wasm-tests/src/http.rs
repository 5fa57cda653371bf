//! A minimal HTTP/1.1 client for tests (hyper 1 + hyper-util's legacy client), with a timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Default timeout of [`request`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body (status {}) is not JSON: {e}: {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request with [`DEFAULT_TIMEOUT`]. `Err` describes a transport failure
/// (connection refused, timeout...); any HTTP status is `Ok`.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse, String> {
    request_with_timeout(method, url, headers, body, DEFAULT_TIMEOUT).await
}

/// Every header of `headers` as (lower-case name, lossily decoded value), in order (a name
/// may repeat): the form tests compare and record headers in, on either side of a request.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// `GET url` with no extra headers; see [`request`].
pub async fn get(url: &str) -> Result<HttpResponse, String> {
    request("GET", url, &[], Bytes::new()).await
}

/// Like [`request`] with an explicit timeout covering connect, headers and body.
pub async fn request_with_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|e| format!("bad HTTP method {method:?}: {e}"))?;
    let mut builder = http::Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(Full::new(body.into()))
        .map_err(|e| format!("building request {method} {url}: {e}"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {e:?}"))?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{method} {url}: timed out after {timeout:?}"))?
}
