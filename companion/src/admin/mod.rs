//! The operator's pages: `/ui/` (the status of this companion and of the stored config,
//! server-rendered, no JavaScript needed) and `/ui/inspector` (the stored config validated,
//! requests matched and configs compared in the browser by `fallback-web`, the same
//! `fallback-core` code the filter runs, embedded in this binary at build time).
//!
//! Served on the signer's listener, or on `FALLBACK_ADMIN_LISTEN` ([`serve`]) when only the
//! export role runs. On a loopback address the pages are open unless `FALLBACK_ADMIN_TOKEN` is
//! set; on any other address they need that token (`Authorization: Bearer <token>`, or HTTP
//! Basic with the token as password, which browsers prompt for).

mod page;
pub mod telemetry;

use crate::exporter::ExportStats;
use crate::secret::Secret;
use crate::storage::ConfigStore;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use telemetry::SignerMetrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

type Body = Full<Bytes>;

/// The inspector's wasm-bindgen glue and module, as `make web` built them (empty when the
/// companion was built without them: see `build.rs`).
const WEB_JS: &[u8] = include_bytes!(env!("FALLBACK_WEB_JS"));
const WEB_WASM: &[u8] = include_bytes!(env!("FALLBACK_WEB_WASM"));
const INSPECTOR_HTML: &str = include_str!("assets/inspector.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Whether this binary carries the inspector's module.
pub fn inspector_built() -> bool {
    env!("FALLBACK_WEB_BUILT") == "1" && !WEB_WASM.is_empty()
}

/// Who may open the pages.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    token: Option<[u8; 32]>,
    listen: SocketAddr,
}

impl AdminAccess {
    /// Access for pages served on `listen`, with `FALLBACK_ADMIN_TOKEN` when set.
    pub fn new(token: Option<Secret>, listen: SocketAddr) -> Self {
        let token = token
            .filter(|t| !t.expose().is_empty())
            .map(|t| Sha256::digest(t.expose().as_bytes()).into());
        Self { token, listen }
    }

    /// `None` when the request may see the pages, else the answer to give.
    fn refuse<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let Some(expected) = &self.token else {
            if self.listen.ip().is_loopback() {
                return None;
            }
            return Some(plain(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin pages are reachable from other hosts on {} and FALLBACK_ADMIN_TOKEN is not set; set FALLBACK_ADMIN_TOKEN (or listen on 127.0.0.1) to open them",
                    self.listen
                ),
            ));
        };
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_token);
        let accepted = presented.is_some_and(|t| {
            let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            bool::from(digest.ct_eq(expected))
        });
        if accepted {
            return None;
        }
        let mut r = plain(
            StatusCode::UNAUTHORIZED,
            "the admin pages need FALLBACK_ADMIN_TOKEN: as `Authorization: Bearer <token>`, or as the password when the browser asks".into(),
        );
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"fallback-companion admin\", charset=\"UTF-8\""),
        );
        Some(r)
    }
}

/// The token of `Bearer <token>`, or the password of `Basic base64(user:password)`.
fn presented_token(header: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, value) = header.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_owned()).filter(|t| !t.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

/// What the pages show and where they read it.
#[derive(Debug)]
pub struct AdminPages {
    /// The storage the config is exported to.
    pub store: Arc<dyn ConfigStore>,
    /// The configured object key, or why there is none.
    pub key: Result<String, String>,
    /// The export role's counters and recent exports, when it runs in this process.
    pub export_stats: Option<Arc<ExportStats>>,
    /// The signer role's counters and recent requests, when it runs in this process.
    pub signer: Option<Arc<SignerMetrics>>,
    /// Who may see them.
    pub access: AdminAccess,
}

fn plain(status: StatusCode, message: String) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(message + "\n"),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The pages show live state and the stored config: nothing to cache.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl AdminPages {
    /// Answers a request for `/ui` or `/ui/...`. `storage_ready` is the signer's last probe.
    pub async fn handle<B>(&self, req: &Request<B>, storage_ready: Option<bool>) -> Response<Body> {
        if let Some(refused) = self.access.refuse(req) {
            return refused;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} is not allowed on the admin pages; use GET",
                    req.method()
                ),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let static_text = |content_type, body: &'static str| {
            respond(
                StatusCode::OK,
                content_type,
                Bytes::from_static(body.as_bytes()),
            )
        };
        match req.uri().path() {
            "/ui" => {
                let mut r = plain(StatusCode::MOVED_PERMANENTLY, "see /ui/".into());
                r.headers_mut()
                    .insert(LOCATION, HeaderValue::from_static("/ui/"));
                r
            }
            "/ui/" => {
                let html = page::status(self, storage_ready).await;
                respond(StatusCode::OK, "text/html; charset=utf-8", Bytes::from(html))
            }
            "/ui/inspector" => static_text("text/html; charset=utf-8", INSPECTOR_HTML),
            "/ui/app.js" => static_text("text/javascript; charset=utf-8", APP_JS),
            "/ui/style.css" => static_text("text/css; charset=utf-8", STYLE_CSS),
            "/ui/fallback_web.js" | "/ui/fallback_web_bg.wasm" if !inspector_built() => plain(
                StatusCode::NOT_FOUND,
                "this companion was built without the inspector; build it with `make build` (or `make web` before cargo build)".into(),
            ),
            "/ui/fallback_web.js" => respond(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                Bytes::from_static(WEB_JS),
            ),
            "/ui/fallback_web_bg.wasm" => {
                respond(StatusCode::OK, "application/wasm", Bytes::from_static(WEB_WASM))
            }
            "/ui/config.json" => self.stored_config().await,
            other => plain(
                StatusCode::NOT_FOUND,
                format!("no admin page {other}; see /ui/ and /ui/inspector"),
            ),
        }
    }

    /// The stored config's bytes, as the filters would fetch them.
    async fn stored_config(&self) -> Response<Body> {
        let key = match &self.key {
            Ok(k) => k,
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.clone()),
        };
        match tokio::time::timeout(Duration::from_secs(10), self.store.get(key)).await {
            Ok(Ok(Some(object))) => respond(StatusCode::OK, "application/json", object.body),
            Ok(Ok(None)) => plain(
                StatusCode::NOT_FOUND,
                format!("nothing stored at {}/{key} yet", self.store.describe()),
            ),
            Ok(Err(e)) => plain(StatusCode::BAD_GATEWAY, e.to_string()),
            Err(_) => plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{}: no answer from storage within 10 s",
                    self.store.describe()
                ),
            ),
        }
    }
}

/// Serves the admin pages, `/metrics` and `/healthz` on their own listener
/// (`FALLBACK_ADMIN_LISTEN`) until `shutdown` turns true.
pub async fn serve(
    pages: AdminPages,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pages = Arc::new(pages);
    info!(listen = %listener.local_addr()?, "admin pages at /ui/");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("admin: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let pages = pages.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let pages = pages.clone();
                        async move { Ok::<_, Infallible>(route(&pages, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        debug!(%remote, "admin connection ended: {e}");
                    }
                });
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

async fn route<B>(pages: &AdminPages, req: Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => plain(StatusCode::OK, "ok".into()),
        "/metrics" => {
            let body = telemetry::render(&telemetry::Sources {
                signer: pages.signer.as_deref(),
                export: pages.export_stats.as_deref(),
                storage_ready: None,
                object_downloads: None,
            });
            respond(StatusCode::OK, telemetry::CONTENT_TYPE, Bytes::from(body))
        }
        p if p == "/ui" || p.starts_with("/ui/") => pages.handle(&req, None).await,
        "/" => {
            let mut r = plain(StatusCode::FOUND, "see /ui/".into());
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/ui/"));
            r
        }
        other => plain(
            StatusCode::NOT_FOUND,
            format!("no such route {other}; the admin listener serves /ui/, /metrics and /healthz"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/ui/");
        if let Some(a) = auth {
            builder = builder.header(AUTHORIZATION, a);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn loopback_is_open_other_addresses_need_the_token() {
        let loopback = AdminAccess::new(None, "127.0.0.1:8280".parse().unwrap());
        assert!(loopback.refuse(&request(None)).is_none());
        let open = AdminAccess::new(None, "0.0.0.0:8280".parse().unwrap());
        let refused = open.refuse(&request(None)).unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let guarded = AdminAccess::new(Some(Secret::new("t0ken")), "0.0.0.0:8280".parse().unwrap());
        assert_eq!(
            guarded.refuse(&request(None)).unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            guarded
                .refuse(&request(Some("Bearer nope")))
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert!(guarded.refuse(&request(Some("Bearer t0ken"))).is_none());
        // Basic, as a browser sends it: base64("admin:t0ken").
        assert!(guarded
            .refuse(&request(Some("Basic YWRtaW46dDBrZW4=")))
            .is_none());
        // A token set on loopback is required too.
        let local = AdminAccess::new(Some(Secret::new("t0ken")), "127.0.0.1:1".parse().unwrap());
        assert!(local.refuse(&request(None)).is_some());
    }
}
