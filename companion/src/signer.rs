//! The signer role: an HTTP/1.1 server that hands filters short-lived signed URLs of the
//! exported `config.json`, so that no proxy ever holds storage credentials.
//!
//! Routes (see `docs/signer.md`):
//! - `GET /v1/fallback-config?version=<v>` with `Authorization: Bearer <token>` →
//!   [`SignedConfig`] JSON, or `{"message": ...}` with 400/401/404/502/503/500;
//! - `GET /v1/objects/<key>?expires=&signature=` (only for `file://` storage): the object itself,
//!   behind an HMAC-signed expiring URL ([`UrlSigner`]);
//! - `GET /healthz`, `/readyz`, `/metrics` (OpenMetrics text, [`telemetry`]);
//! - `GET /ui/`: the status page and the config inspector ([`crate::admin`]).
//!
//! Under abuse: `HEAD` metadata only, never the body, per signer request; `/readyz` answers
//! from the last storage probe, at most one probe running at a time; object downloads are
//! streamed, at most [`SignerSettings::object_concurrency`] at once, and stop when the client
//! leaves; failed bearer tokens are limited per client address ([`auth_limit`]); on shutdown the
//! listener closes at once and requests in flight get [`SignerSettings::shutdown_grace`].

pub mod auth_limit;

use crate::admin::telemetry::{self, SignerEvent, SignerMetrics};
use crate::admin::{AdminAccess, AdminPages};
use crate::exporter::ExportStats;
use crate::secret::Secret;
use crate::storage::{ConfigStore, ObjectBody, ObjectUrlError, StoreError, UrlSigner};
use auth_limit::{AuthLimit, AuthLimiter, AuthVerdict};
use bytes::Bytes;
use fallback_core::export::{current_holders, object_key_in, ExportMetadata, PrefixStyle};
use fallback_core::wire::{
    redact_signed_url, ErrorBody, SignedConfig, SignedUrl, OBJECTS_PATH, SIGNER_PATH,
};
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Default `FALLBACK_SIGNED_URL_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The longest URL lifetime accepted (S3's limit for presigned URLs).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a storage probe result is trusted by `/readyz`.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(10);
/// Time allowed for one readiness probe.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Default `FALLBACK_SHUTDOWN_GRACE`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Object downloads served at once by default.
pub const DEFAULT_OBJECT_CONCURRENCY: usize = 32;
/// Bytes read from a file per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// What the signer serves and how.
#[derive(Debug, Clone)]
pub struct SignerSettings {
    /// The storage prefix objects are stored under (`StorageUrl::prefix`).
    pub prefix: String,
    /// How the prefix starts object names (`StorageUrl::prefix_style`: byte for byte on GCS).
    pub prefix_style: PrefixStyle,
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
    /// The export role's latest valid config, when it runs in the same process: enables
    /// `GET /v1/config` ([`crate::live`]).
    pub live_config: Option<crate::live::LiveConfigReceiver>,
    /// The signer's counters and recent requests (`/metrics`, the status page).
    pub metrics: Arc<SignerMetrics>,
    /// `FALLBACK_ADMIN_TOKEN`: required by `/ui/` when set, and when the listener is not on
    /// loopback.
    pub admin_token: Option<Secret>,
    /// On shutdown, how long requests in flight may take to finish before their connections
    /// are closed (`FALLBACK_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// Object downloads (`/v1/objects/`) served at once; more are answered `503` with
    /// `Retry-After`.
    pub object_concurrency: usize,
    /// Failed bearer-token attempts allowed per client address.
    pub auth_limit: AuthLimit,
    /// Mirror stores (`FALLBACK_MIRROR_STORAGES`), in order: their signed URLs follow the
    /// primary's in `urls` when they hold the current revision.
    pub mirrors: Vec<MirrorStore>,
}

/// A mirror store and where its exports live.
#[derive(Debug, Clone)]
pub struct MirrorStore {
    /// The store.
    pub store: Arc<dyn ConfigStore>,
    /// Its storage URL's prefix.
    pub prefix: String,
    /// How that prefix starts object names.
    pub prefix_style: PrefixStyle,
}

impl SignerSettings {
    /// Settings with the defaults for everything but what must be given.
    pub fn new(prefix: &str, default_version: &str, tokens: Arc<Tokens>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            prefix_style: PrefixStyle::default(),
            default_version: default_version.to_owned(),
            tokens,
            ttl: DEFAULT_TTL,
            object_urls: None,
            export_stats: None,
            readiness_interval: DEFAULT_READINESS_INTERVAL,
            live_config: None,
            metrics: Arc::default(),
            admin_token: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            object_concurrency: DEFAULT_OBJECT_CONCURRENCY,
            auth_limit: AuthLimit::default(),
            mirrors: Vec::new(),
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
        self.identify_digest(&digest(presented)).is_some()
    }

    /// The name of the accepted token `presented` is (`name:token` entries name themselves;
    /// plain tokens are `token-<8 hex digits of their sha256>`), or `None`. Every accepted
    /// token is compared, each in constant time; names are not secret.
    pub fn identify(&self, presented: &str) -> Option<String> {
        self.identify_digest(&digest(presented))
    }

    /// [`Tokens::identify`] for a token's sha256 digest.
    fn identify_digest(&self, presented: &[u8; 32]) -> Option<String> {
        self.refresh();
        let mut found = None;
        let mut check = |accepted: &AcceptedToken| {
            if bool::from(accepted.digest.ct_eq(presented)) && found.is_none() {
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

/// The last storage probe, shared by `/readyz`, `/metrics` and signer requests.
struct Readiness {
    last: watch::Sender<Option<Probe>>,
    /// Whether a probe is running: at most one at a time, however many ask.
    probing: AtomicBool,
}

struct Shared {
    settings: SignerSettings,
    store: Arc<dyn ConfigStore>,
    metrics: Arc<SignerMetrics>,
    admin: AdminPages,
    readiness: Readiness,
    auth: AuthLimiter,
    /// One permit per object download in progress.
    object_slots: Arc<Semaphore>,
    /// The configured key, or why there is none (a bad `FALLBACK_CONFIG_VERSION`).
    default_key: Result<String, String>,
    /// The sha256 of the last object read for lack of our metadata, by key and store tag, so
    /// such an object is read once per version, not once per request.
    foreign_digest: Mutex<Option<(String, String, fallback_core::digest::Sha256Digest)>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A file sent in chunks as the client takes them, holding its download slot until it ends or
/// is dropped (the client left): nothing is read that nobody waits for.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    _slot: OwnedSemaphorePermit,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0; want];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len();
                if read == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object file ended before its size",
                    ))));
                }
                chunk.truncate(read);
                self.remaining -= read as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Serves the signer API on `listener` until `shutdown` turns true; then stops accepting
/// connections at once, lets the requests in flight finish for up to
/// [`SignerSettings::shutdown_grace`], and closes whatever is left.
pub async fn serve(
    settings: SignerSettings,
    store: Arc<dyn ConfigStore>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let default_key = object_key_in(
        settings.prefix_style,
        &settings.prefix,
        &settings.default_version,
    )
    .map_err(|e| e.to_string());
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
        readiness: Readiness {
            last: watch::Sender::new(None),
            probing: AtomicBool::new(false),
        },
        auth: AuthLimiter::new(settings.auth_limit),
        object_slots: Arc::new(Semaphore::new(settings.object_concurrency.max(1))),
        settings,
        store,
        default_key,
        foreign_digest: Mutex::new(None),
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
    start_probe(&shared);
    let mut connections = JoinSet::new();
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
                let mut stopping = shutdown.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req, remote).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        _ = stopped(&mut stopping) => {
                            // Finish the request in flight, take no other.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        debug!(%remote, "signer connection ended: {e}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    // New connections are refused from here on.
    drop(listener);
    let grace = shared.settings.shutdown_grace;
    if !connections.is_empty() {
        info!(connections = connections.len(), grace = ?grace, "signer role stopping: finishing the requests in flight");
    }
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            grace = ?grace,
            "requests still in flight after the shutdown grace period (FALLBACK_SHUTDOWN_GRACE): closing their connections"
        );
        connections.shutdown().await;
    }
    info!("signer role stopped");
    Ok(())
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(full(bytes));
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
    let mut response = Response::new(full(body));
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

/// `status` with `{"message": ...}` and `Retry-After: <retry_after, whole seconds>`.
fn retry_later(status: StatusCode, message: String, retry_after: Duration) -> Response<Body> {
    let mut r = error(status, message);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    r
}

async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/ui" || path.starts_with("/ui/") {
        let ready = last_probe_ok(shared);
        let response = shared.admin.handle(&req, ready).await;
        return response.map(|body| body.map_err(|never| match never {}).boxed());
    }
    let known = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics")
        || path == SIGNER_PATH
        || (path == crate::live::LIVE_CONFIG_PATH && shared.settings.live_config.is_some())
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
        "/readyz" => match readiness(shared).await {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}"),
            ),
        },
        "/metrics" => {
            let in_progress = shared
                .settings
                .object_concurrency
                .max(1)
                .saturating_sub(shared.object_slots.available_permits());
            let body = telemetry::render(&telemetry::Sources {
                signer: Some(&shared.metrics),
                export: shared.settings.export_stats.as_deref(),
                storage_ready: Some(last_probe_ok(shared).unwrap_or(false)),
                object_downloads: Some((in_progress, shared.settings.object_concurrency)),
            });
            text(StatusCode::OK, telemetry::CONTENT_TYPE, body)
        }
        p if p == crate::live::LIVE_CONFIG_PATH => {
            let response = serve_live_config(shared, &req, remote);
            info!(status = response.status().as_u16(), remote = %remote, "live config request");
            response
        }
        p if p == SIGNER_PATH => {
            let started = Instant::now();
            let (response, outcome) = sign(shared, &req, remote).await;
            let status = response.status();
            shared.metrics.count_signer(status.as_u16());
            if status == StatusCode::TOO_MANY_REQUESTS {
                // Limited clients are many requests and no news: one line each would flood.
                debug!(remote = %remote, "signer request refused: too many failed bearer tokens");
                return response;
            }
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
                    token = outcome.token.as_deref(),
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

/// `GET /v1/config`, behind the same bearer tokens (and failed-attempt limit) as the signer API.
fn serve_live_config(
    shared: &Shared,
    req: &Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let Some(live) = &shared.settings.live_config else {
        return error(StatusCode::NOT_FOUND, "no such route");
    };
    if let Some(refused) = authorise(shared, req, remote, &mut Outcome::default()) {
        return refused;
    }
    let if_none_match = req
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    crate::live::respond(live, if_none_match).map(full)
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
    bearer_from(req.headers().get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer <token>` value (`pub(crate)` for the property tests).
pub(crate) fn bearer_from(value: &str) -> Option<&str> {
    let value = value.trim();
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
    query_value(req.uri().query().unwrap_or_default(), name)
}

/// The first value of `name` in a query string (`pub(crate)` for the property tests).
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
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

/// Checks the request's bearer token, within the failed-attempt limit of its address: `None`
/// when it may be served, else the answer (401, or 429 with `Retry-After`).
fn authorise(
    shared: &Shared,
    req: &Request<Incoming>,
    remote: SocketAddr,
    outcome: &mut Outcome,
) -> Option<Response<Body>> {
    let token = bearer_token(req).map(digest);
    outcome.token = token.and_then(|t| shared.settings.tokens.identify_digest(&t));
    let accepted = outcome.token.is_some();
    match shared
        .auth
        .decide(remote.ip(), token, accepted, Instant::now())
    {
        AuthVerdict::Pass => None,
        AuthVerdict::Limited { retry_after } => {
            shared.metrics.rate_limited.inc();
            outcome.detail = Some("too many failed bearer tokens".into());
            Some(retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed bearer-token attempts from {}; retry after {} s with one of the companion's FALLBACK_SIGNER_TOKENS / FALLBACK_SIGNER_TOKENS_FILE",
                    remote.ip(),
                    retry_after.as_secs().max(1)
                ),
                retry_after,
            ))
        }
        AuthVerdict::Failed { now_limited } => {
            shared.metrics.auth_failures.inc();
            if now_limited {
                warn!(remote = %remote.ip(), "failed bearer-token attempts from this address exceed the limit; it is answered 429 until its allowance refills");
            }
            Some(if token.is_none() {
                outcome.detail = Some("no bearer token".into());
                unauthorized(
                    "missing bearer token: send Authorization: Bearer <token> (one of FALLBACK_SIGNER_TOKENS / FALLBACK_SIGNER_TOKENS_FILE)",
                    "Bearer realm=\"fallback-companion\"",
                )
            } else {
                outcome.detail = Some("bearer token not accepted".into());
                unauthorized(
                    "the bearer token is not accepted; use one of the companion's FALLBACK_SIGNER_TOKENS / FALLBACK_SIGNER_TOKENS_FILE",
                    "Bearer realm=\"fallback-companion\", error=\"invalid_token\"",
                )
            })
        }
    }
}

async fn sign(
    shared: &Shared,
    req: &Request<Incoming>,
    remote: SocketAddr,
) -> (Response<Body>, Outcome) {
    let mut outcome = Outcome::default();
    if let Some(refused) = authorise(shared, req, remote, &mut outcome) {
        return (refused, outcome);
    }
    let version =
        query_param(req, "version").unwrap_or_else(|| shared.settings.default_version.clone());
    outcome.version = Some(version.clone());
    let key = if version == shared.settings.default_version {
        shared.default_key.clone()
    } else {
        object_key_in(
            shared.settings.prefix_style,
            &shared.settings.prefix,
            &version,
        )
        .map_err(|e| e.to_string())
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
    if !shared.settings.mirrors.is_empty() {
        return sign_with_mirrors(shared, version, key, outcome).await;
    }
    let object = format!("{}/{key}", shared.store.describe());
    let head = shared.store.head(&key).await;
    record_probe(
        shared,
        match &head {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    );
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
    let metadata = match stored.metadata {
        Some(metadata) => metadata,
        // Written by another exporter (Kong Enterprise's backup node stores the bare config):
        // the sha256 the filter verifies is taken from the object itself, read now.
        None => match foreign_export(shared, &key, &stored.etag, &object).await {
            Ok(metadata) => metadata,
            Err((status, message)) => {
                outcome.detail = Some(message.clone());
                return (error(status, message), outcome);
            }
        },
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
    let expires_at = expires_at(now, ttl);
    let body = signed_config(url, expires_at, Vec::new(), version, key, metadata);
    (signed_response(&body), outcome)
}

fn expires_at(now: SystemTime, ttl: Duration) -> String {
    humantime::format_rfc3339_seconds(now + ttl.max(Duration::from_secs(1))).to_string()
}

fn signed_config(
    url: String,
    expires_at: String,
    urls: Vec<SignedUrl>,
    version: String,
    key: String,
    metadata: ExportMetadata,
) -> SignedConfig {
    SignedConfig {
        url,
        method: "GET".into(),
        expires_at,
        version,
        key,
        sha256: metadata.sha256.to_hex(),
        revision: metadata.revision,
        signature: metadata.signature,
        key_id: metadata.key_id,
        exported_at: Some(metadata.exported_at),
        urls,
    }
}

fn signed_response(body: &SignedConfig) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, body);
    // The URL is a credential: no cache may keep it.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// With mirrors: every store is read (`HEAD`), and the answer lists a signed URL for each store
/// holding the current revision, primary first ([`current_holders`]); `url` is the first of
/// them. A store that cannot be read is left out and logged.
async fn sign_with_mirrors(
    shared: &Shared,
    version: String,
    key: String,
    mut outcome: Outcome,
) -> (Response<Body>, Outcome) {
    let mut stores: Vec<(Arc<dyn ConfigStore>, String)> = vec![(shared.store.clone(), key)];
    for mirror in &shared.settings.mirrors {
        match object_key_in(mirror.prefix_style, &mirror.prefix, &version) {
            Ok(k) => stores.push((mirror.store.clone(), k)),
            Err(e) => warn!(mirror = %mirror.store.describe(), "mirror skipped: {e}"),
        }
    }
    let mut heads = Vec::with_capacity(stores.len());
    let mut unreachable = Vec::new();
    for (i, (store, key)) in stores.iter().enumerate() {
        let head = store.head(key).await;
        if i == 0 {
            record_probe(
                shared,
                match &head {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
        match head {
            Ok(found) => heads.push(found.and_then(|o| o.metadata)),
            Err(e) => {
                warn!(store = %store.describe(), "cannot read {key}: {e}");
                unreachable.push(format!("{}: {e}", store.describe()));
                heads.push(None);
            }
        }
    }
    let holders = current_holders(&heads.iter().map(Option::as_ref).collect::<Vec<_>>());
    // The answer's metadata (and so the signed manifest) is the highest revision's.
    let best = holders
        .iter()
        .copied()
        .max_by_key(|&i| heads[i].as_ref().map(|m| m.revision));
    let Some(best) = best else {
        let (status, message) = if unreachable.len() == stores.len() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no store can be reached: {}; retry later",
                    unreachable.join("; ")
                ),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                format!(
                    "nothing exported for version {version} in the primary store or any mirror; \
                     check that an exporter writes with FALLBACK_CONFIG_VERSION={version}"
                ),
            )
        };
        outcome.detail = Some(message.clone());
        return (error(status, message), outcome);
    };
    let now = UNIX_EPOCH + Duration::from_secs(unix_seconds(SystemTime::now()));
    let ttl = shared.settings.ttl;
    let expires = expires_at(now, ttl);
    let mut urls = Vec::new();
    for &i in &holders {
        let (store, key) = &stores[i];
        match store.presign_get(key, ttl, now).await {
            Ok(url) => urls.push(SignedUrl {
                url,
                method: "GET".into(),
                expires_at: expires.clone(),
            }),
            Err(e) => warn!(store = %store.describe(), "cannot sign a URL for {key}: {e}"),
        }
    }
    let Some(url) = urls.first().map(|u| u.url.clone()) else {
        let message = "cannot sign a URL in any store holding the export".to_owned();
        outcome.detail = Some(message.clone());
        return (error(StatusCode::INTERNAL_SERVER_ERROR, message), outcome);
    };
    let Some(metadata) = heads.swap_remove(best) else {
        return (
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store holding the export lost its metadata",
            ),
            outcome,
        );
    };
    outcome.revision = Some(metadata.revision);
    outcome.url = Some(url.clone());
    let key = stores[best].1.clone();
    let body = signed_config(url, expires, urls, version, key, metadata);
    (signed_response(&body), outcome)
}

/// What the signer vouches for in an object without Fallback's metadata: the sha256 of its
/// bytes as storage holds them now, revision 0, no signature (so filters with a `public_key`
/// refuse it).
async fn foreign_export(
    shared: &Shared,
    key: &str,
    etag: &str,
    object: &str,
) -> Result<fallback_core::export::ExportMetadata, (StatusCode, String)> {
    let metadata = |sha256| fallback_core::export::ExportMetadata {
        sha256,
        revision: 0,
        node_id: String::new(),
        exported_at: String::new(),
        signature: None,
        key_id: None,
    };
    let cached = shared.foreign_digest.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(k, e, _)| k == key && e == etag && !etag.is_empty())
            .map(|(_, _, digest)| *digest)
    });
    if let Some(digest) = cached {
        return Ok(metadata(digest));
    }
    match shared.store.get(key).await {
        Ok(Some(fetched)) => {
            let digest = fallback_core::digest::Sha256Digest::of(&fetched.body);
            if let Ok(mut cache) = shared.foreign_digest.lock() {
                *cache = Some((key.to_owned(), fetched.stored.etag.clone(), digest));
            }
            Ok(metadata(digest))
        }
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            format!("{object} disappeared while it was being read; retry"),
        )),
        Err(e) => Err((
            store_status(&e),
            format!("storage refused to read {object}: {e}"),
        )),
    }
}

/// Decodes `%XX` escapes of a path; `None` for bad escapes or non-UTF-8 results
/// (`pub(crate)` for the property tests).
pub(crate) fn percent_decode(text: &str) -> Option<String> {
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
    // At most `object_concurrency` downloads at once; the slot goes with the body, so it is
    // free again as soon as the download ends or the client leaves.
    let Ok(slot) = shared.object_slots.clone().try_acquire_owned() else {
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} object downloads are in progress, the most this companion serves at once; retry shortly",
                shared.settings.object_concurrency
            ),
            Duration::from_secs(1),
        );
    };
    match shared.store.open(&key).await {
        Ok(Some(object)) => {
            let size = object.size;
            // Counted when the answer starts: a client that leaves early got fewer.
            shared.metrics.object_bytes.inc_by(size);
            let body = match object.body {
                ObjectBody::Bytes(bytes) => full(bytes),
                ObjectBody::File(file) => BodyExt::boxed(FileBody {
                    file: tokio::fs::File::from_std(file),
                    remaining: size,
                    _slot: slot,
                }),
            };
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
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

/// Whether the last storage probe succeeded; `None` before the first.
fn last_probe_ok(shared: &Shared) -> Option<bool> {
    shared
        .readiness
        .last
        .borrow()
        .as_ref()
        .map(|p| p.result.is_ok())
}

/// Records a storage probe's result (a signer request's `HEAD` counts as one), logging changes.
fn record_probe(shared: &Shared, result: Result<(), String>) {
    let was_ok = shared
        .readiness
        .last
        .borrow()
        .as_ref()
        .map(|p| p.result.is_ok());
    match (&result, was_ok) {
        (Err(reason), Some(true) | None) => warn!("storage probe failed: {reason}"),
        (Ok(()), Some(false)) => info!("storage reachable again"),
        _ => {}
    }
    shared.readiness.last.send_replace(Some(Probe {
        at: Instant::now(),
        result,
    }));
}

/// Starts a probe (a `HEAD` of the configured key; found and not found both count as
/// reachable) in the background, unless one is running. It runs to its end whether or not
/// anyone still waits for it, and only one ever runs: callers who leave cost nothing.
fn start_probe(shared: &Arc<Shared>) {
    if shared.readiness.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
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
        record_probe(&shared, result);
        shared.readiness.probing.store(false, Ordering::Release);
    });
}

/// The readiness verdict: the last probe when recent, else the result of a fresh one.
async fn readiness(shared: &Arc<Shared>) -> Result<(), String> {
    let interval = shared.settings.readiness_interval;
    let fresh = move |last: &Option<Probe>| {
        last.as_ref()
            .filter(|p| p.at.elapsed() < interval)
            .map(|p| p.result.clone())
    };
    let mut last = shared.readiness.last.subscribe();
    if let Some(result) = fresh(&last.borrow_and_update()) {
        return result;
    }
    let asked = Instant::now();
    start_probe(shared);
    let waited = tokio::time::timeout(
        PROBE_DEADLINE + Duration::from_secs(1),
        last.wait_for(|p| p.as_ref().is_some_and(|p| p.at >= asked)),
    )
    .await;
    match waited {
        Ok(Ok(probe)) => probe.as_ref().map_or(Ok(()), |p| p.result.clone()),
        _ => Err(format!(
            "{}: no answer from storage within {PROBE_DEADLINE:?}",
            shared.store.describe()
        )),
    }
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

    use crate::storage::{FileStore, Precondition};
    use fallback_core::digest::Sha256Digest;
    use fallback_core::export::ExportMetadata;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const TOKEN: &str = "unit-test-token";
    const KEY: &str = "1/config.json";

    /// A signer on a loopback port serving a `file://` store.
    struct Running {
        addr: SocketAddr,
        store: FileStore,
        url_signer: Arc<UrlSigner>,
        shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn start(configure: impl FnOnce(&mut SignerSettings)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url_signer = Arc::new(UrlSigner::new(
            &format!("http://{addr}"),
            Secret::new("url-key"),
        ));
        let store = FileStore::new(dir.path().join("store")).with_url_signer(url_signer.clone());
        let tokens = Tokens::new(Some(&Secret::new(TOKEN)), None).unwrap();
        let mut settings = SignerSettings::new("", "1", Arc::new(tokens));
        settings.object_urls = Some(url_signer.clone());
        configure(&mut settings);
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(serve(settings, Arc::new(store.clone()), listener, stop));
        Running {
            addr,
            store,
            url_signer,
            shutdown,
            task,
            _dir: dir,
        }
    }

    impl Running {
        /// Stores `size` bytes under the signer's key.
        async fn export(&self, size: usize) -> Vec<u8> {
            let body: Vec<u8> = (0..size).map(|i| b"0123456789abcdef"[i % 16]).collect();
            let metadata = ExportMetadata {
                sha256: Sha256Digest::of(&body),
                revision: 7,
                node_id: "n".into(),
                exported_at: "2026-11-26T10:00:00.000Z".into(),
                signature: None,
                key_id: None,
            };
            self.store
                .put(
                    KEY,
                    Bytes::from(body.clone()),
                    &metadata,
                    Precondition::Absent,
                )
                .await
                .unwrap();
            body
        }

        /// The path and query of a valid object URL.
        fn object_path(&self) -> String {
            let url = self
                .url_signer
                .url(KEY, unix_seconds(SystemTime::now()) + 300);
            url.split_once(&self.addr.to_string()).unwrap().1.to_owned()
        }

        /// Sends `GET path` on a new connection and returns it unread.
        async fn send(&self, path: &str, token: Option<&str>) -> TcpStream {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            let auth = token
                .map(|t| format!("authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: signer\r\n{auth}connection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            stream
        }

        async fn get(&self, path: &str, token: Option<&str>) -> Answer {
            let mut stream = self.send(path, token).await;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            Answer::parse(&raw)
        }

        async fn metrics(&self) -> String {
            String::from_utf8(self.get("/metrics", None).await.body).unwrap()
        }
    }

    /// A response read whole.
    struct Answer {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    impl Answer {
        fn parse(raw: &[u8]) -> Self {
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            Answer {
                status: head[9..12].parse().unwrap(),
                body: raw[split + 4..].to_vec(),
                head,
            }
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.head
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_and_signing_read_metadata_only_however_many_callers_leave() {
        let signer = start(|s| s.readiness_interval = Duration::ZERO).await;
        signer.export(4 << 20).await;
        // Callers who send /readyz and leave at once, then callers who wait for the answer.
        let mut abandoned = Vec::new();
        for _ in 0..50 {
            abandoned.push(signer.send("/readyz", None).await);
        }
        drop(abandoned);
        for _ in 0..10 {
            let answer = signer.get("/readyz", None).await;
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
        }
        for _ in 0..10 {
            let answer = signer.get(SIGNER_PATH, Some(TOKEN)).await;
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
        }
        assert_eq!(
            signer.store.seams().body_opens(),
            0,
            "the body is read by object downloads only"
        );
        let download = signer.get(&signer.object_path(), None).await;
        assert_eq!(download.status, 200);
        assert_eq!(signer.store.seams().body_opens(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_tokens_are_limited_per_address_and_good_tokens_are_not() {
        let signer = start(|s| {
            s.auth_limit = AuthLimit {
                burst: 3,
                refill_every: Duration::from_secs(60),
            }
        })
        .await;
        // The filter's token works (nothing exported yet: 404, not 401).
        assert_eq!(signer.get(SIGNER_PATH, Some(TOKEN)).await.status, 404);
        for _ in 0..3 {
            assert_eq!(signer.get(SIGNER_PATH, Some("guess")).await.status, 401);
        }
        for token in [Some("guess"), None, Some("another-guess")] {
            let answer = signer.get(SIGNER_PATH, token).await;
            assert_eq!(answer.status, 429, "{token:?}");
            let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            let message = String::from_utf8_lossy(&answer.body).into_owned();
            assert!(
                message.contains("too many failed bearer-token attempts"),
                "{message}"
            );
        }
        assert_eq!(
            signer.get(SIGNER_PATH, Some(TOKEN)).await.status,
            404,
            "a token that succeeded from this address is not limited"
        );
        let metrics = signer.metrics().await;
        for line in [
            "fallback_companion_signer_auth_failures_total 3",
            "fallback_companion_signer_rate_limited_total 3",
            "fallback_companion_signer_requests_total{code=\"429\"} 3",
            "fallback_companion_signer_requests_total{code=\"401\"} 3",
        ] {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
    }

    /// Polls the object-downloads gauge until it shows `expected`.
    async fn downloads_in_progress(signer: &Running, expected: u32) {
        let line = format!("fallback_companion_object_downloads_in_progress {expected}\n");
        for _ in 0..100 {
            if signer.metrics().await.contains(&line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never {line}{}", signer.metrics().await);
    }

    /// Larger than what loopback socket buffers absorb, so an unread download stays open.
    const LARGE: usize = 32 << 20;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn object_downloads_are_bounded_and_free_their_slot_when_the_client_leaves() {
        let signer = start(|s| s.object_concurrency = 1).await;
        let body = signer.export(LARGE).await;
        let mut stalled = signer.send(&signer.object_path(), None).await;
        let mut first = [0; 1024];
        stalled.read_exact(&mut first).await.unwrap();
        downloads_in_progress(&signer, 1).await;
        let busy = signer.get(&signer.object_path(), None).await;
        assert_eq!(busy.status, 503, "{}", String::from_utf8_lossy(&busy.body));
        assert_eq!(busy.header("retry-after"), Some("1"));
        drop(stalled);
        downloads_in_progress(&signer, 0).await;
        let whole = signer.get(&signer.object_path(), None).await;
        assert_eq!(whole.status, 200);
        assert_eq!(
            whole.header("content-length"),
            Some(LARGE.to_string().as_str())
        );
        assert!(whole.body == body, "the stored bytes, whole");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_a_download_in_flight_and_refuses_new_connections() {
        let signer = start(|s| s.shutdown_grace = Duration::from_secs(20)).await;
        let body = signer.export(LARGE).await;
        let mut download = signer.send(&signer.object_path(), None).await;
        let mut raw = vec![0; 64 * 1024];
        download.read_exact(&mut raw).await.unwrap();
        signer.shutdown.send(true).unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(signer.addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "new connections are refused once stopping");
        // The slow client now reads the rest: all of it arrives.
        download.read_to_end(&mut raw).await.unwrap();
        let answer = Answer::parse(&raw);
        assert_eq!(answer.status, 200);
        assert!(
            answer.body == body,
            "the whole object, {} bytes",
            answer.body.len()
        );
        let stopped = tokio::time::timeout(Duration::from_secs(5), signer.task)
            .await
            .expect("the signer stops once its last request is done");
        stopped.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_keeps_to_the_grace_period_whatever_a_client_does() {
        let grace = Duration::from_secs(1);
        let signer = start(|s| s.shutdown_grace = grace).await;
        signer.export(LARGE).await;
        let mut stalled = signer.send(&signer.object_path(), None).await;
        let mut first = [0; 1024];
        stalled.read_exact(&mut first).await.unwrap();
        let asked = Instant::now();
        signer.shutdown.send(true).unwrap();
        let stopped = tokio::time::timeout(grace + Duration::from_secs(5), signer.task)
            .await
            .expect("the signer stops after the grace period");
        stopped.unwrap().unwrap();
        assert!(
            asked.elapsed() >= grace,
            "the download in flight had its grace period"
        );
        drop(stalled);
    }
}
