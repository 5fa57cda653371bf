//! The signer role: an HTTP/1.1 server that hands filters short-lived signed URLs of the
//! exported `config.json`, so that no proxy ever holds storage credentials.
//!
//! Routes (see `docs/signer.md`):
//! - `GET /v1/fallback-config?version=<v>` with `Authorization: Bearer <token>` →
//!   [`SignedConfig`] JSON, or `{"message": ...}` with 400/401/404/409/502/503/500;
//! - `GET /v1/objects/<key>?expires=&signature=` (only for `file://` storage): the object itself,
//!   behind an HMAC-signed expiring URL ([`UrlSigner`]);
//! - `GET /healthz`, `/readyz`, `/metrics` (OpenMetrics text, [`telemetry`]);
//! - `GET /ui/`: the status page and the config inspector ([`crate::admin`]).

use crate::admin::telemetry::{self, SignerEvent, SignerMetrics};
use crate::admin::{AdminAccess, AdminPages};
use crate::exporter::ExportStats;
use crate::secret::Secret;
use crate::storage::{ConfigStore, ObjectUrlError, StoreError, UrlSigner};
use bytes::Bytes;
use fallback_core::export::object_key;
use fallback_core::wire::{redact_signed_url, ErrorBody, SignedConfig, OBJECTS_PATH, SIGNER_PATH};
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Default `FALLBACK_SIGNED_URL_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The longest URL lifetime accepted (S3's limit for presigned URLs).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a storage probe result is trusted by `/readyz`.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(10);
/// Time allowed for one readiness probe.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// What the signer serves and how.
#[derive(Debug, Clone)]
pub struct SignerSettings {
    /// The storage prefix objects are stored under (`StorageUrl::prefix`).
    pub prefix: String,
    /// The version asked for when a request names none (`FALLBACK_CONFIG_VERSION`).
    pub default_version: String,
    /// The accepted bearer tokens.
    pub tokens: Arc<Tokens>,
    /// Lifetime of the URLs handed out.
    pub ttl: Duration,
    /// For `file://` storage: the signer of the companion's own object URLs; enables
    /// `/v1/objects/`.
    pub object_urls: Option<Arc<UrlSigner>>,
    /// The export role's counters, when it runs in the same process (for `/metrics`).
    pub export_stats: Option<Arc<ExportStats>>,
    /// How long a storage probe result is trusted by `/readyz`.
    pub readiness_interval: Duration,
    /// The signer's counters and recent requests (`/metrics`, the status page).
    pub metrics: Arc<SignerMetrics>,
    /// `FALLBACK_ADMIN_TOKEN`: required by `/ui/` when set, and when the listener is not on
    /// loopback.
    pub admin_token: Option<Secret>,
}

impl SignerSettings {
    /// Settings with the defaults for everything but what must be given.
    pub fn new(prefix: &str, default_version: &str, tokens: Arc<Tokens>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            default_version: default_version.to_owned(),
            tokens,
            ttl: DEFAULT_TTL,
            object_urls: None,
            export_stats: None,
            readiness_interval: DEFAULT_READINESS_INTERVAL,
            metrics: Arc::default(),
            admin_token: None,
        }
    }
}

/// The accepted bearer tokens: a fixed list (`FALLBACK_SIGNER_TOKENS`) and/or a file
/// (`FALLBACK_SIGNER_TOKENS_FILE`, one per line, `#` comments) that is read again whenever its
/// modification time or size changes, so tokens rotate without a restart.
///
/// Only sha256 digests of the tokens are kept; a presented token is hashed and compared with
/// every accepted digest in constant time, without stopping at the first match.
pub struct Tokens {
    fixed: Vec<AcceptedToken>,
    file: Option<TokenFile>,
}

/// One accepted token: its name (for logs and the status page) and its sha256.
#[derive(Clone)]
struct AcceptedToken {
    name: String,
    digest: [u8; 32],
}

/// `name:token`, or a plain token named `token-<first 8 hex digits of its sha256>` (a name
/// that identifies it among the others and reveals nothing usable of it).
fn accepted_token(entry: &str) -> AcceptedToken {
    let named = entry.split_once(':').filter(|(name, token)| {
        !name.is_empty()
            && !token.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    match named {
        Some((name, token)) => AcceptedToken {
            name: name.to_owned(),
            digest: digest(token),
        },
        None => {
            let digest = digest(entry);
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            AcceptedToken {
                name: format!("token-{hex}"),
                digest,
            }
        }
    }
}

struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenFileState>,
}

struct TokenFileState {
    stamp: Option<Stamp>,
    digests: Vec<AcceptedToken>,
    warned: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("fixed", &self.fixed.len())
            .field("file", &self.file.as_ref().map(|t| &t.path))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A file's modification time and size: when either changes, the file is read again.
type Stamp = (SystemTime, u64);

fn read_token_file(path: &Path) -> std::io::Result<(Stamp, Vec<AcceptedToken>)> {
    let meta = std::fs::metadata(path)?;
    let text = std::fs::read_to_string(path)?;
    let digests = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(accepted_token)
        .collect();
    Ok(((meta.modified()?, meta.len()), digests))
}

impl Tokens {
    /// Tokens from a comma-separated list and/or a file. Fails when the file cannot be read,
    /// or when no token is configured at all, saying how to set one.
    pub fn new(list: Option<&Secret>, file: Option<&Path>) -> anyhow::Result<Self> {
        let fixed: Vec<AcceptedToken> = list
            .map(|l| {
                l.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(accepted_token)
                    .collect()
            })
            .unwrap_or_default();
        let file = match file {
            Some(path) => {
                let (stamp, digests) = read_token_file(path).map_err(|e| {
                    anyhow::anyhow!(
                        "FALLBACK_SIGNER_TOKENS_FILE {}: cannot read it: {e}",
                        path.display()
                    )
                })?;
                Some(TokenFile {
                    path: path.to_owned(),
                    state: Mutex::new(TokenFileState {
                        stamp: Some(stamp),
                        digests,
                        warned: false,
                    }),
                })
            }
            None => None,
        };
        let tokens = Self { fixed, file };
        if tokens.count() == 0 {
            anyhow::bail!(
                "the signer role (KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on) needs at least one bearer token for the filters: set FALLBACK_SIGNER_TOKENS=<token>[,<token>...] or FALLBACK_SIGNER_TOKENS_FILE=<file with one token per line> (e.g. a token from `openssl rand -hex 32`)"
            );
        }
        Ok(tokens)
    }

    /// How many tokens are accepted right now.
    pub fn count(&self) -> usize {
        self.fixed.len()
            + self
                .file
                .as_ref()
                .map_or(0, |f| f.state.lock().map(|s| s.digests.len()).unwrap_or(0))
    }

    /// Re-reads the token file when it changed. A file that cannot be read keeps the tokens
    /// last read from it (with one warning), so a half-finished rotation locks nobody out.
    fn refresh(&self) {
        let Some(file) = &self.file else { return };
        let stamp = std::fs::metadata(&file.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok();
        let Ok(mut state) = file.state.lock() else {
            return;
        };
        if stamp.is_some() && stamp == state.stamp {
            return;
        }
        match read_token_file(&file.path) {
            Ok((stamp, digests)) => {
                info!(
                    file = %file.path.display(),
                    tokens = digests.len(),
                    "signer token file changed; tokens reloaded"
                );
                state.stamp = Some(stamp);
                state.digests = digests;
                state.warned = false;
            }
            Err(e) => {
                if !state.warned {
                    warn!(file = %file.path.display(), "cannot read the signer token file ({e}); keeping the tokens read before");
                    state.warned = true;
                }
                state.stamp = None;
            }
        }
    }

    /// Whether `presented` is one of the accepted tokens (constant time per comparison, and
    /// every accepted token is compared).
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The name of the accepted token `presented` is (`name:token` entries name themselves;
    /// plain tokens are `token-<8 hex digits of their sha256>`), or `None`. Every accepted
    /// token is compared, each in constant time; names are not secret.
    pub fn identify(&self, presented: &str) -> Option<String> {
        self.refresh();
        let presented = digest(presented);
        let mut found = None;
        let mut check = |accepted: &AcceptedToken| {
            if bool::from(accepted.digest.ct_eq(&presented)) && found.is_none() {
                found = Some(accepted.name.clone());
            }
        };
        self.fixed.iter().for_each(&mut check);
        if let Some(file) = &self.file {
            if let Ok(state) = file.state.lock() {
                state.digests.iter().for_each(&mut check);
            }
        }
        found
    }
}

/// The last storage probe.
#[derive(Debug, Clone)]
struct Probe {
    at: Instant,
    result: Result<(), String>,
}

struct Shared {
    settings: SignerSettings,
    store: Arc<dyn ConfigStore>,
    metrics: Arc<SignerMetrics>,
    admin: AdminPages,
    probe: tokio::sync::Mutex<Option<Probe>>,
    /// The configured key, or why there is none (a bad `FALLBACK_CONFIG_VERSION`).
    default_key: Result<String, String>,
}

type Body = Full<Bytes>;

/// Serves the signer API on `listener` until `shutdown` turns true.
pub async fn serve(
    settings: SignerSettings,
    store: Arc<dyn ConfigStore>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let default_key =
        object_key(&settings.prefix, &settings.default_version).map_err(|e| e.to_string());
    let local = listener.local_addr()?;
    let admin = AdminPages {
        store: store.clone(),
        key: default_key.clone(),
        export_stats: settings.export_stats.clone(),
        signer: Some(settings.metrics.clone()),
        access: AdminAccess::new(settings.admin_token.clone(), local),
    };
    let shared = Arc::new(Shared {
        metrics: settings.metrics.clone(),
        admin,
        settings,
        store,
        probe: tokio::sync::Mutex::new(None),
        default_key,
    });
    info!(
        listen = %local,
        storage = %shared.store.describe(),
        version = %shared.settings.default_version,
        url_ttl = ?shared.settings.ttl,
        objects = shared.settings.object_urls.as_ref().map(|s| s.base().to_owned()),
        "signer role started"
    );
    // The start-up probe, in the background: the server answers at once.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = probe(&shared, true).await;
        });
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("signer: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req, remote).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        debug!(%remote, "signer connection ended: {e}");
                    }
                });
            }
            _ = shutdown.changed() => {
                info!("signer role stopped");
                return Ok(());
            }
        }
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(
        status,
        &ErrorBody {
            message: message.into(),
        },
    )
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn method_not_allowed(method: &Method, path: &str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; use GET"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    r
}

async fn handle(shared: &Shared, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/ui" || path.starts_with("/ui/") {
        let ready = shared.probe.lock().await.as_ref().map(|p| p.result.is_ok());
        return shared.admin.handle(&req, ready).await;
    }
    let known = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics")
        || path == SIGNER_PATH
        || (path.starts_with(OBJECTS_PATH) && shared.settings.object_urls.is_some());
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such route {path}; the signer API is GET {SIGNER_PATH}?version=<v>"),
        );
    }
    if req.method() != Method::GET {
        let response = method_not_allowed(req.method(), &path);
        if path == SIGNER_PATH {
            shared.metrics.count_signer(response.status().as_u16());
        } else if path.starts_with(OBJECTS_PATH) {
            shared.metrics.count_object(response.status().as_u16());
        }
        return response;
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match probe(shared, false).await {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}"),
            ),
        },
        "/metrics" => {
            let ready = shared.probe.lock().await.as_ref().map(|p| p.result.is_ok());
            let body = telemetry::render(&telemetry::Sources {
                signer: Some(&shared.metrics),
                export: shared.settings.export_stats.as_deref(),
                storage_ready: Some(ready.unwrap_or(false)),
            });
            text(StatusCode::OK, telemetry::CONTENT_TYPE, body)
        }
        p if p == SIGNER_PATH => {
            let started = Instant::now();
            let (response, outcome) = sign(shared, &req).await;
            let status = response.status();
            shared.metrics.count_signer(status.as_u16());
            if outcome.timed {
                shared.metrics.signing.observe(started.elapsed());
            }
            if let (true, Some(revision)) = (status.is_success(), outcome.revision) {
                shared
                    .metrics
                    .served_revision
                    .fetch_max(revision, Ordering::Relaxed);
            }
            shared.metrics.recent.push(SignerEvent {
                at: SystemTime::now(),
                token: outcome.token.clone(),
                remote,
                status: status.as_u16(),
                revision: outcome.revision.filter(|_| status.is_success()),
            });
            let url = outcome.url.as_deref().map(redact_signed_url);
            if status.is_server_error() {
                warn!(status = status.as_u16(), version = outcome.version.as_deref(), remote = %remote, "signer request: {}", outcome.detail.unwrap_or_default());
            } else {
                info!(
                    status = status.as_u16(),
                    version = outcome.version.as_deref(),
                    remote = %remote,
                    revision = outcome.revision,
                    url,
                    "signer request{}",
                    outcome.detail.map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
            response
        }
        _ => {
            let response = serve_object(shared, &req).await;
            shared.metrics.count_object(response.status().as_u16());
            info!(status = response.status().as_u16(), remote = %remote, path = %path, "object request");
            response
        }
    }
}

/// What the log line of a signer request shows.
#[derive(Default)]
struct Outcome {
    version: Option<String>,
    revision: Option<u64>,
    url: Option<String>,
    detail: Option<String>,
    /// The accepted token's name (never the token).
    token: Option<String>,
    /// Whether the request got as far as storage (counted in the signing latency).
    timed: bool,
}

fn bearer_token(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &str, challenge: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static(challenge));
    r
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The status for a storage failure: 503 when worth retrying, 502 when the store refused.
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Transient { .. } => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::PreconditionFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        StoreError::PermissionDenied { .. }
        | StoreError::BadCredentials { .. }
        | StoreError::Rejected { .. } => StatusCode::BAD_GATEWAY,
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn sign(shared: &Shared, req: &Request<Incoming>) -> (Response<Body>, Outcome) {
    let mut outcome = Outcome::default();
    let Some(token) = bearer_token(req) else {
        outcome.detail = Some("no bearer token".into());
        return (
            unauthorized(
                "missing bearer token: send Authorization: Bearer <token> (one of FALLBACK_SIGNER_TOKENS / FALLBACK_SIGNER_TOKENS_FILE)",
                "Bearer realm=\"fallback-companion\"",
            ),
            outcome,
        );
    };
    outcome.token = shared.settings.tokens.identify(token);
    if outcome.token.is_none() {
        outcome.detail = Some("bearer token not accepted".into());
        return (
            unauthorized(
                "the bearer token is not accepted; use one of the companion's FALLBACK_SIGNER_TOKENS / FALLBACK_SIGNER_TOKENS_FILE",
                "Bearer realm=\"fallback-companion\", error=\"invalid_token\"",
            ),
            outcome,
        );
    }
    let version =
        query_param(req, "version").unwrap_or_else(|| shared.settings.default_version.clone());
    outcome.version = Some(version.clone());
    let key = if version == shared.settings.default_version {
        shared.default_key.clone()
    } else {
        object_key(&shared.settings.prefix, &version).map_err(|e| e.to_string())
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            outcome.detail = Some(e.clone());
            return (
                error(StatusCode::BAD_REQUEST, format!("bad version: {e}")),
                outcome,
            );
        }
    };
    outcome.timed = true;
    let object = format!("{}/{key}", shared.store.describe());
    let head = shared.store.head(&key).await;
    record_probe(
        shared,
        match &head {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    let stored = match head {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            let message = format!(
                "nothing exported for version {version} at {object}; check that an exporter (KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on) writes to the same storage with FALLBACK_CONFIG_VERSION={version}"
            );
            outcome.detail = Some("nothing exported".into());
            return (error(StatusCode::NOT_FOUND, message), outcome);
        }
        Err(e) => {
            let status = store_status(&e);
            let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                format!("storage cannot be reached: {e}; retry later")
            } else {
                format!("storage refused to read {object}: {e}")
            };
            outcome.detail = Some(message.clone());
            return (error(status, message), outcome);
        }
    };
    let Some(metadata) = stored.metadata else {
        let message = format!(
            "{object}: object has no sha256 metadata, so a filter could not verify it; re-export it with fallback-companion (`fallback-companion export` or the export role)"
        );
        outcome.detail = Some(message.clone());
        return (error(StatusCode::CONFLICT, message), outcome);
    };
    outcome.revision = Some(metadata.revision);
    // Whole seconds: S3's X-Amz-Date has no finer resolution, and expires_at must not promise
    // more than the URL grants.
    let now = UNIX_EPOCH + Duration::from_secs(unix_seconds(SystemTime::now()));
    let ttl = shared.settings.ttl;
    let url = match shared.store.presign_get(&key, ttl, now).await {
        Ok(u) => u,
        Err(e) => {
            let message = format!("cannot sign a URL for {object}: {e}");
            outcome.detail = Some(message.clone());
            return (error(StatusCode::INTERNAL_SERVER_ERROR, message), outcome);
        }
    };
    outcome.url = Some(url.clone());
    let body = SignedConfig {
        url,
        method: "GET".into(),
        expires_at: humantime::format_rfc3339_seconds(now + ttl.max(Duration::from_secs(1)))
            .to_string(),
        version,
        key,
        sha256: metadata.sha256.to_hex(),
        revision: metadata.revision,
        signature: metadata.signature,
    };
    let mut response = json_response(StatusCode::OK, &body);
    // The URL is a credential: no cache may keep it.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (response, outcome)
}

/// Decodes `%XX` escapes of a path; `None` for bad escapes or non-UTF-8 results.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn serve_object(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let Some(signer) = &shared.settings.object_urls else {
        return error(StatusCode::NOT_FOUND, "no such route");
    };
    let raw = &req.uri().path()[OBJECTS_PATH.len()..];
    let Some(key) = raw
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
        .map(|segments| segments.join("/"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the object path is not valid percent-encoded UTF-8",
        );
    };
    if let Err(e) = signer.verify(
        &key,
        query_param(req, "expires").as_deref(),
        query_param(req, "signature").as_deref(),
        SystemTime::now(),
    ) {
        return error(StatusCode::FORBIDDEN, e.to_string());
    }
    // Only keys this signer signed get here; still, never leave the store's root.
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return error(
            StatusCode::FORBIDDEN,
            ObjectUrlError::BadSignature.to_string(),
        );
    }
    match shared.store.get(&key).await {
        Ok(Some(object)) => {
            shared.metrics.object_bytes.inc_by(object.body.len() as u64);
            let mut response = Response::new(Full::new(object.body));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(meta) = &object.stored.metadata {
                if let Ok(v) = HeaderValue::from_str(&meta.sha256.to_hex()) {
                    headers.insert("x-fallback-sha256", v);
                }
                headers.insert("x-fallback-revision", HeaderValue::from(meta.revision));
            }
            response
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("{}/{key}: no such object", shared.store.describe()),
        ),
        Err(e) => error(store_status(&e), e.to_string()),
    }
}

async fn record_probe(shared: &Shared, result: Result<(), String>) {
    let mut last = shared.probe.lock().await;
    if let Err(reason) = &result {
        if last.as_ref().is_none_or(|p| p.result.is_ok()) {
            warn!("storage probe failed: {reason}");
        }
    }
    *last = Some(Probe {
        at: Instant::now(),
        result,
    });
}

/// The readiness verdict: the last probe when recent, else a fresh `head` of the configured key
/// (found and not found both count as reachable).
async fn probe(shared: &Shared, force: bool) -> Result<(), String> {
    let mut last = shared.probe.lock().await;
    if !force {
        if let Some(p) = last.as_ref() {
            if p.at.elapsed() < shared.settings.readiness_interval {
                return p.result.clone();
            }
        }
    }
    let result = match &shared.default_key {
        Err(e) => Err(e.clone()),
        Ok(key) => match tokio::time::timeout(PROBE_DEADLINE, shared.store.head(key)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "{}: no answer from storage within {PROBE_DEADLINE:?}",
                shared.store.describe()
            )),
        },
    };
    match (&result, last.as_ref().map(|p| p.result.is_ok())) {
        (Err(reason), Some(true) | None) => warn!("storage probe failed: {reason}"),
        (Ok(()), Some(false)) => info!("storage reachable again"),
        _ => {}
    }
    *last = Some(Probe {
        at: Instant::now(),
        result: result.clone(),
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_list_and_the_file_and_rotate_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# filters of cluster A\n  file-token-1  \n\n").unwrap();
        let tokens = Tokens::new(Some(&Secret::new(" a , b,")), Some(&path)).unwrap();
        assert_eq!(tokens.count(), 3);
        for ok in ["a", "b", "file-token-1"] {
            assert!(tokens.accepts(ok), "{ok}");
        }
        for bad in ["", "c", "# filters of cluster A", "a,b", "file-token-12"] {
            assert!(!tokens.accepts(bad), "{bad}");
        }
        // Rotation: a new file content (other size, other mtime) is picked up at once.
        std::fs::write(&path, "file-token-2-longer\n").unwrap();
        assert!(tokens.accepts("file-token-2-longer"));
        assert!(!tokens.accepts("file-token-1"));
        // A vanished file keeps the last tokens.
        std::fs::remove_file(&path).unwrap();
        assert!(tokens.accepts("file-token-2-longer"));
        assert!(!format!("{tokens:?}").contains("file-token"));
    }

    #[test]
    fn tokens_have_names_that_never_reveal_them() {
        let tokens = Tokens::new(
            Some(&Secret::new(
                "filters-a:s3cret-a, plain-token, :odd, bad name:x",
            )),
            None,
        )
        .unwrap();
        assert_eq!(tokens.identify("s3cret-a").as_deref(), Some("filters-a"));
        assert!(!tokens.accepts("filters-a:s3cret-a"));
        let plain = tokens.identify("plain-token").unwrap();
        assert!(plain.starts_with("token-") && plain.len() == 14, "{plain}");
        assert!(!plain.contains("plain"), "{plain}");
        // Not `name:token` shapes: the whole entry is the token.
        assert!(tokens.accepts(":odd"));
        assert!(tokens.accepts("bad name:x"));
        assert_eq!(tokens.identify("nope"), None);
    }

    #[test]
    fn no_token_at_all_is_a_start_up_error_saying_how_to_set_one() {
        let err = Tokens::new(Some(&Secret::new(" , ")), None).unwrap_err();
        assert!(err.to_string().contains("FALLBACK_SIGNER_TOKENS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(Tokens::new(None, Some(&path)).is_err());
        let err = Tokens::new(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn percent_decoding_of_object_paths() {
        assert_eq!(percent_decode("3.4%20x").as_deref(), Some("3.4 x"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
