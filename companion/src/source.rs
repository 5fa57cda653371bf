//! The control plane as a source of documents: conditional polling and normalisation to JSON.

use crate::transport::{self, HttpClient, SendError};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::time::Duration;

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
                let value =
                    normalise(response.body()).map_err(|detail| SourceError::Malformed {
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

/// Turns what a control plane (or a file) holds into the declarative document as JSON.
///
/// Accepts declarative JSON, declarative YAML (decK files), and the DB-less Admin API's
/// `GET /config` answer `{"config": "<YAML or JSON text>"}`. The browser inspector reads
/// pasted configs with the same function ([`fallback_core::inspect::normalise`]).
pub fn normalise(body: &[u8]) -> Result<Value, String> {
    fallback_core::inspect::normalise(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn broken_json_names_the_json_error() {
        let err = normalise(b"{\"_format_version\": ").unwrap_err();
        assert!(err.starts_with("invalid JSON"), "{err}");
        let err = normalise(b"[1,2]").unwrap_err();
        assert!(err.contains("expected an object"), "{err}");
        let err = normalise(&[0xff, 0xfe]).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }
}
