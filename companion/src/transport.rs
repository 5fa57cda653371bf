//! The one HTTP client the companion uses: HTTP/1.1 over plain TCP or TLS (webpki roots),
//! with a deadline on every exchange and a cap on response bodies.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The largest response body read into memory: config documents are megabytes at most.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A client for `http://` and `https://` URLs.
pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// Why an exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer within the deadline.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS failure, TLS failure…
    #[error("{0}")]
    Network(String),
    /// The body was larger than [`MAX_BODY_BYTES`].
    #[error("response body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// Sends `request` and reads the whole response, all within `deadline`.
pub async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    deadline: Duration,
) -> Result<Response<Bytes>, SendError> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| SendError::Network(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    SendError::TooLarge
                } else {
                    SendError::Network(format!("reading the response body: {e}"))
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| SendError::Timeout(deadline))?
}

/// `err: cause: cause`, because hyper's top-level message alone ("client error (Connect)") does
/// not tell an operator what to fix.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `url` with any userinfo and query removed, for messages (both may carry secrets).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<unparseable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_credentials_and_query() {
        let r = redact_url("https://user:hunter2@cp.example:8001/config?token=abc");
        assert_eq!(r, "https://cp.example:8001/config");
    }
}
