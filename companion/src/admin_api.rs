//! The Admin API source: for Kong control planes with a database, whose `GET /config` answers
//! 400 and whose cluster key cannot be handed out. It pages through every entity kind as
//! `deck gateway dump` does (`size` and `next`), assembles one declarative document, and polls
//! again every interval; a dump equal to the last one is "unchanged".
//!
//! The same pager reads a Konnect control plane: its `core-entities` API lists entities as
//! the Admin API does (`data`, `next`, `offset`), behind a personal or system access token, and
//! `GET .../expected-config-hash` first tells whether anything changed, so an unchanged config
//! costs one request per poll.

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

    /// A Konnect control plane, e.g. https://us.api.konghq.com/v2/control-planes/<id>: its
    /// core-entities are dumped when its expected-config-hash changes.
    #[arg(long, env = "FALLBACK_KONNECT_CONTROL_PLANE_URL", value_name = "URL")]
    pub konnect_control_plane_url: Option<String>,

    /// Konnect personal or system access token, sent as a bearer token.
    #[arg(long, env = "FALLBACK_KONNECT_TOKEN", hide_env_values = true)]
    pub konnect_token: Option<Secret>,
}

/// How requests authenticate.
enum Auth {
    None,
    /// `Kong-Admin-Token`.
    AdminToken(Secret),
    /// `Authorization: Bearer` (Konnect).
    Bearer(Secret),
}

/// The Admin API pager.
pub struct AdminApiSource {
    base: String,
    origin: String,
    shown: String,
    auth: Auth,
    /// Konnect's `expected-config-hash`, checked before each dump.
    hash_url: Option<String>,
    last_hash: Option<String>,
    client: HttpClient,
    timeout: Duration,
    interval: Duration,
    next_at: Option<tokio::time::Instant>,
    last: Option<[u8; 32]>,
}

impl AdminApiArgs {
    /// Whether an Admin API or a Konnect control plane is configured.
    pub fn is_set(&self) -> bool {
        [&self.admin_api_url, &self.konnect_control_plane_url]
            .iter()
            .any(|u| u.as_deref().is_some_and(|u| !u.is_empty()))
    }

    /// The source, or `None` when neither an Admin API nor a Konnect control plane is
    /// configured.
    pub fn source(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Option<AdminApiSource>> {
        let admin = self.admin_api_url.as_deref().filter(|u| !u.is_empty());
        let konnect = self
            .konnect_control_plane_url
            .as_deref()
            .filter(|u| !u.is_empty());
        let (url, setting, konnect) = match (admin, konnect) {
            (Some(_), Some(_)) => anyhow::bail!("both FALLBACK_ADMIN_API_URL and FALLBACK_KONNECT_CONTROL_PLANE_URL are set; the export role reads one source"),
            (Some(url), None) => (url, "FALLBACK_ADMIN_API_URL", false),
            (None, Some(url)) => (url, "FALLBACK_KONNECT_CONTROL_PLANE_URL", true),
            (None, None) => return Ok(None),
        };
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        let Some(parsed) = parsed else {
            anyhow::bail!(
                "{setting} {:?} is not an http(s) URL without a query; use e.g. {}",
                transport::redact_url(url),
                if konnect {
                    "https://us.api.konghq.com/v2/control-planes/<id>"
                } else {
                    "http://kong-cp:8001"
                }
            );
        };
        let url = url.trim_end_matches('/');
        let (base, hash_url, auth) = if konnect {
            let token = self.konnect_token.clone().filter(|t| !t.expose().is_empty()).ok_or_else(|| {
                anyhow::anyhow!("FALLBACK_KONNECT_CONTROL_PLANE_URL needs FALLBACK_KONNECT_TOKEN, a Konnect personal or system access token that may read the control plane")
            })?;
            (
                format!("{url}/core-entities"),
                Some(format!("{url}/expected-config-hash")),
                Auth::Bearer(token),
            )
        } else {
            let auth = match self
                .admin_api_token
                .clone()
                .filter(|t| !t.expose().is_empty())
            {
                Some(token) => Auth::AdminToken(token),
                None => Auth::None,
            };
            (url.to_owned(), None, auth)
        };
        Ok(Some(AdminApiSource {
            shown: transport::redact_url(&base),
            base,
            origin: parsed.origin().ascii_serialization(),
            auth,
            hash_url,
            last_hash: None,
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
        match &self.auth {
            Auth::None => {}
            Auth::AdminToken(token) => request = request.header("kong-admin-token", token.expose()),
            Auth::Bearer(token) => {
                request = request.header("authorization", format!("Bearer {}", token.expose()))
            }
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
                        body: match self.auth {
                            Auth::Bearer(_) => ": Konnect refused the request; FALLBACK_KONNECT_TOKEN must be a valid access token that may read this control plane",
                            _ => ": the Admin API refused the request; set FALLBACK_ADMIN_API_TOKEN to an RBAC token that may read every entity",
                        }
                        .into(),
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
                // Kong's and Konnect's `next` is an absolute path with the offset.
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

    /// Konnect's `expected_hash`.
    async fn expected_hash(&self, url: &str) -> Result<String, SourceError> {
        let path = "/expected-config-hash";
        let (status, body) = self.get(url, path).await?;
        if status != 200 {
            return Err(SourceError::Status {
                url: transport::redact_url(url),
                status,
                body: if matches!(status, 401 | 403) {
                    ": FALLBACK_KONNECT_TOKEN must be a valid access token that may read this control plane".into()
                } else {
                    String::new()
                },
            });
        }
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("expected_hash")?.as_str().map(str::to_owned))
            .ok_or_else(|| SourceError::Malformed {
                url: transport::redact_url(url),
                detail: "no \"expected_hash\" in the answer".into(),
            })
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
        let expected_hash = match &self.hash_url {
            Some(url) => Some(self.expected_hash(url).await?),
            None => None,
        };
        if expected_hash.is_some() && expected_hash == self.last_hash && self.last.is_some() {
            return Ok(Polled::NotModified);
        }
        let document = self.dump().await?;
        self.last_hash = expected_hash;
        let digest: [u8; 32] = Sha256::digest(document.to_string().as_bytes()).into();
        if self.last == Some(digest) {
            return Ok(Polled::NotModified);
        }
        self.last = Some(digest);
        Ok(Polled::Document(document))
    }
}
