//! The Admin API source: for Kong control planes with a database, whose `GET /config` answers
//! 400 and whose cluster key cannot be handed out. It pages through every entity kind as
//! `deck gateway dump` does (`size` and `next`), assembles one declarative document, and polls
//! again every interval; a dump equal to the last one is "unchanged".

use crate::secret::Secret;
use crate::source::{ConfigSource, Polled, SourceError};
use crate::transport::{self, HttpClient};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The declarative key and Admin API path of every kind dumped, in the order written. Kinds
/// whose endpoint answers 404 (a plugin that is not installed) are skipped.
pub const ENTITY_ENDPOINTS: &[(&str, &str)] = &[
    ("services", "/services"),
    ("routes", "/routes"),
    ("consumers", "/consumers"),
    ("plugins", "/plugins"),
    ("upstreams", "/upstreams"),
    ("certificates", "/certificates"),
    ("snis", "/snis"),
    ("ca_certificates", "/ca_certificates"),
    ("keyauth_credentials", "/key-auths"),
    ("basicauth_credentials", "/basic-auths"),
    ("acls", "/acls"),
    ("jwt_secrets", "/jwts"),
    ("hmacauth_credentials", "/hmac-auths"),
    ("oauth2_credentials", "/oauth2"),
    ("vaults", "/vaults"),
];

/// Kong's largest page.
pub const PAGE_SIZE: usize = 1000;
/// A dump stops following `next` after this many pages of one kind (a loop guard).
const MAX_PAGES: usize = 10_000;

/// Admin API source options.
#[derive(Debug, Clone, Args)]
pub struct AdminApiArgs {
    /// A Kong Admin API (e.g. http://kong-cp:8001) to dump like `deck gateway dump`, for
    /// control planes with a database; polled every FALLBACK_POLL_INTERVAL.
    #[arg(long, env = "FALLBACK_ADMIN_API_URL", value_name = "URL")]
    pub admin_api_url: Option<String>,

    /// Sent as Kong-Admin-Token (Kong Enterprise RBAC).
    #[arg(long, env = "FALLBACK_ADMIN_API_TOKEN", hide_env_values = true)]
    pub admin_api_token: Option<Secret>,
}

/// The Admin API pager.
pub struct AdminApiSource {
    base: String,
    origin: String,
    shown: String,
    token: Option<Secret>,
    client: HttpClient,
    timeout: Duration,
    interval: Duration,
    next_at: Option<tokio::time::Instant>,
    last: Option<[u8; 32]>,
}

impl AdminApiArgs {
    /// The source, or `None` when no Admin API is configured.
    pub fn source(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Option<AdminApiSource>> {
        let Some(url) = self.admin_api_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        let Some(parsed) = parsed else {
            anyhow::bail!(
                "FALLBACK_ADMIN_API_URL {:?} is not an http(s) URL without a query; use e.g. http://kong-cp:8001",
                transport::redact_url(url)
            );
        };
        Ok(Some(AdminApiSource {
            base: url.trim_end_matches('/').to_owned(),
            origin: parsed.origin().ascii_serialization(),
            shown: transport::redact_url(url),
            token: self
                .admin_api_token
                .clone()
                .filter(|t| !t.expose().is_empty()),
            client: transport::client(),
            timeout,
            interval,
            next_at: None,
            last: None,
        }))
    }
}

impl AdminApiSource {
    fn error(&self, path: &str, detail: impl Into<String>) -> SourceError {
        SourceError::Unreachable {
            url: format!("{}{path}", self.shown.trim_end_matches('/')),
            detail: detail.into(),
        }
    }

    async fn get(&self, url: &str, path: &str) -> Result<(u16, Bytes), SourceError> {
        let mut request = http::Request::get(url).header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("kong-admin-token", token.expose());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.error(path, e.to_string()))?;
        let response = transport::send(&self.client, request, self.timeout)
            .await
            .map_err(|e| self.error(path, e.to_string()))?;
        Ok((response.status().as_u16(), response.into_body()))
    }

    /// Every entity of one endpoint, following `next`; `None` when the endpoint is absent.
    async fn list(&self, path: &str) -> Result<Option<Vec<Value>>, SourceError> {
        let mut url = format!("{}{path}?size={PAGE_SIZE}", self.base);
        let mut items = Vec::new();
        for page in 0..MAX_PAGES {
            let (status, body) = self.get(&url, path).await?;
            match status {
                200 => {}
                404 if page == 0 => return Ok(None),
                401 | 403 => {
                    return Err(SourceError::Status {
                        url: format!("{}{path}", self.shown.trim_end_matches('/')),
                        status,
                        body: ": the Admin API refused the request; set FALLBACK_ADMIN_API_TOKEN to an RBAC token that may read every entity".into(),
                    })
                }
                _ => {
                    return Err(SourceError::Status {
                        url: format!("{}{path}", self.shown.trim_end_matches('/')),
                        status,
                        body: String::new(),
                    })
                }
            }
            let page: Value =
                serde_json::from_slice(&body).map_err(|e| SourceError::Malformed {
                    url: format!("{}{path}", self.shown.trim_end_matches('/')),
                    detail: format!("not JSON ({e})"),
                })?;
            let Some(data) = page.get("data").and_then(Value::as_array) else {
                return Err(SourceError::Malformed {
                    url: format!("{}{path}", self.shown.trim_end_matches('/')),
                    detail: "no \"data\" list: is this Kong's Admin API?".into(),
                });
            };
            items.extend(data.iter().cloned());
            match page.get("next").and_then(Value::as_str) {
                // Kong's `next` is an absolute path with the offset.
                Some(next) if next.starts_with('/') => url = format!("{}{next}", self.origin),
                Some(next) if next.starts_with("http") => url = next.to_owned(),
                _ => return Ok(Some(items)),
            }
        }
        Err(self.error(
            path,
            format!("more than {MAX_PAGES} pages; is `next` looping?"),
        ))
    }

    /// One dump: every kind, targets per upstream, as one declarative document.
    pub async fn dump(&self) -> Result<Value, SourceError> {
        let mut document = Map::new();
        document.insert("_format_version".into(), Value::from("3.0"));
        for (kind, path) in ENTITY_ENDPOINTS {
            let Some(items) = self.list(path).await? else {
                continue;
            };
            if *kind == "upstreams" {
                let mut targets = Vec::new();
                for upstream in &items {
                    let Some(id) = upstream.get("id").and_then(Value::as_str) else {
                        continue;
                    };
                    if let Some(found) = self.list(&format!("/upstreams/{id}/targets")).await? {
                        targets.extend(found);
                    }
                }
                if !targets.is_empty() {
                    document.insert("targets".into(), Value::Array(targets));
                }
            }
            if !items.is_empty() {
                document.insert((*kind).into(), Value::Array(items));
            }
        }
        Ok(Value::Object(document))
    }
}

#[async_trait::async_trait]
impl ConfigSource for AdminApiSource {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn next(&mut self) -> Result<Polled, SourceError> {
        if let Some(at) = self.next_at {
            tokio::time::sleep_until(at).await;
        }
        self.next_at = Some(tokio::time::Instant::now() + self.interval);
        let document = self.dump().await?;
        let digest: [u8; 32] = Sha256::digest(document.to_string().as_bytes()).into();
        if self.last == Some(digest) {
            return Ok(Polled::NotModified);
        }
        self.last = Some(digest);
        Ok(Polled::Document(document))
    }
}
