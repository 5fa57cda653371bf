//! The latest valid config the export role holds, served to filters as `GET /v1/config` by the
//! signer role, so a filter's `control_plane` can point at the companion when the real control
//! plane speaks only Kong's cluster protocol. Storage stays the fallback when the companion
//! (or the control plane behind it) is gone.

use bytes::Bytes;
use fallback_core::digest::Sha256Digest;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use http::{Response, StatusCode};
use tokio::sync::watch;

/// The route.
pub const LIVE_CONFIG_PATH: &str = "/v1/config";

/// A document that validated, in the bytes exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Canonical JSON.
    pub body: Bytes,
    /// Its sha256, also the `ETag`.
    pub sha256: Sha256Digest,
}

/// Where the export role publishes each valid document and the signer reads it.
pub type LiveConfigSender = watch::Sender<Option<LiveConfig>>;
/// The reading side.
pub type LiveConfigReceiver = watch::Receiver<Option<LiveConfig>>;

/// The answer to an authorised `GET /v1/config`: 200 with the document and its `ETag`, 304
/// when `If-None-Match` names it, 503 while no valid config has arrived.
pub fn respond(live: &LiveConfigReceiver, if_none_match: Option<&str>) -> Response<Bytes> {
    let current = live.borrow().clone();
    let Some(config) = current else {
        let body = serde_json::json!({"message": "no valid config received from the control plane yet; filters keep importing from storage"});
        let mut r = Response::new(Bytes::from(body.to_string()));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return r;
    };
    let etag = format!("\"{}\"", config.sha256.to_hex());
    let matches = if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    });
    let mut r = if matches {
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(config.body.clone());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(ETAG, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_config_with_its_etag_and_304_when_unchanged() {
        let (tx, rx) = watch::channel(None);
        assert_eq!(respond(&rx, None).status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = Bytes::from_static(br#"{"_format_version":"3.0"}"#);
        let sha256 = Sha256Digest::of(&body);
        tx.send_replace(Some(LiveConfig { body, sha256 }));
        let r = respond(&rx, None);
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()[ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", sha256.to_hex()));
        assert_eq!(respond(&rx, Some(&etag)).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            respond(&rx, Some(&format!("W/{etag}"))).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(respond(&rx, Some("\"other\"")).status(), StatusCode::OK);
    }
}
