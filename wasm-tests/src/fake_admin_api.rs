//! A fake Kong Admin API serving a declarative document's entities the way Kong's Admin API
//! lists them: `GET /<entity>?size=` answers `{"data": [...], "next": "/<entity>?offset=..."}`
//! (`next` null on the last page), targets under `/upstreams/{id}/targets`, 404 for an entity
//! it does not know (a plugin that is not installed), 401 without the RBAC token when one is
//! set. Pages are capped (Kong's cap is 1,000) so a small document spans several pages.
//!
//! In Konnect mode ([`FakeAdminApi::start_konnect`]) the same lists sit under
//! `/v2/control-planes/{id}/core-entities`, behind `Authorization: Bearer`, with
//! `GET /v2/control-planes/{id}/expected-config-hash` answering `{"expected_hash": ...}` (the
//! shapes of Konnect's published OpenAPI and Go SDK: `data`, `next`, `offset`; `expected_hash`,
//! `created_at`, `updated_at`).

use crate::ports::free_port;
use bytes::Bytes;
use fallback_companion::admin_api::ENTITY_ENDPOINTS;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

struct State {
    /// Konnect mode: the control plane's path prefix.
    konnect: Option<String>,
    document: Value,
    page_cap: usize,
    token: Option<String>,
    missing: Vec<String>,
    requests: Vec<String>,
}

/// The fake Admin API.
pub struct FakeAdminApi {
    port: u16,
    state: Arc<Mutex<State>>,
    server: Option<JoinHandle<()>>,
}

impl FakeAdminApi {
    /// Starts on a free port, with an empty document and pages of at most `page_cap`.
    pub async fn start(page_cap: usize) -> Self {
        Self::start_mode(page_cap, None).await
    }

    /// Starts as Konnect's API for control plane `id`, requiring the bearer `token`.
    pub async fn start_konnect(page_cap: usize, id: &str, token: &str) -> Self {
        let api = Self::start_mode(page_cap, Some(format!("/v2/control-planes/{id}"))).await;
        api.require_token(token);
        api
    }

    async fn start_mode(page_cap: usize, konnect: Option<String>) -> Self {
        let mut api = Self {
            port: free_port(),
            state: Arc::new(Mutex::new(State {
                konnect,
                document: json!({}),
                page_cap,
                token: None,
                missing: Vec::new(),
                requests: Vec::new(),
            })),
            server: None,
        };
        api.listen().await;
        api
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serves the entities of `document` (flat: top-level lists, foreign keys as `{"id"}`).
    pub fn set_document(&self, document: &Value) {
        self.state.lock().expect("state").document = document.clone();
    }

    /// Requires `Kong-Admin-Token: token`.
    pub fn require_token(&self, token: &str) {
        self.state.lock().expect("state").token = Some(token.to_owned());
    }

    /// Answers 404 on `path`, as Kong does for a plugin's endpoint when the plugin is not
    /// installed.
    pub fn remove_endpoint(&self, path: &str) {
        self.state
            .lock()
            .expect("state")
            .missing
            .push(path.to_owned());
    }

    /// The paths and queries requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.listen().await;
    }

    async fn listen(&mut self) {
        let state = self.state.clone();
        let listener = crate::serve::bind_loopback("FakeAdminApi", self.port).await;
        self.server = Some(crate::serve::spawn_server(
            "FakeAdminApi",
            listener,
            move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            },
        ));
    }
}

impl Drop for FakeAdminApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn respond(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r
}

fn answer(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut state = state.lock().expect("state");
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    state.requests.push(format!("{path}?{query}"));
    if let Some(token) = &state.token {
        let (header, expected) = match state.konnect {
            Some(_) => ("authorization", format!("Bearer {token}")),
            None => ("kong-admin-token", token.clone()),
        };
        let presented = req.headers().get(header).and_then(|v| v.to_str().ok());
        if presented != Some(expected.as_str()) {
            return respond(
                401,
                json!({"message": "Invalid credentials. Token or User credentials required"}),
            );
        }
    }
    let path = match &state.konnect {
        None => path,
        Some(prefix) => {
            if path == format!("{prefix}/expected-config-hash") {
                let hash = fallback_companion::cluster::config_hash::config_hash(&state.document);
                return respond(
                    200,
                    json!({"expected_hash": hash, "created_at": 1, "updated_at": 2}),
                );
            }
            match path.strip_prefix(&format!("{prefix}/core-entities")) {
                Some(rest) => rest.to_owned(),
                None => return respond(404, json!({"message": "Not found"})),
            }
        }
    };
    if state.missing.contains(&path) {
        return respond(404, json!({"message": "Not found"}));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (kind, upstream) = match path
        .strip_prefix("/upstreams/")
        .and_then(|r| r.strip_suffix("/targets"))
    {
        Some(id) => ("targets", Some(id.to_owned())),
        None => match ENTITY_ENDPOINTS.iter().find(|(_, p)| *p == path) {
            Some((kind, _)) => (*kind, None),
            None => return respond(404, json!({"message": "Not found"})),
        },
    };
    let all: Vec<Value> = state.document[kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|item| match &upstream {
            Some(id) => item["upstream"]["id"].as_str() == Some(id),
            None => true,
        })
        .collect();
    let size = param("size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
        .min(state.page_cap)
        .max(1);
    let offset: usize = param("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(offset).take(size).cloned().collect();
    let listed = match &state.konnect {
        Some(prefix) => format!("{prefix}/core-entities{path}"),
        None => path.clone(),
    };
    let next = (offset + size < all.len())
        .then(|| format!("{listed}?offset={}&size={size}", offset + size));
    respond(
        200,
        json!({"data": page, "next": next, "offset": next.as_ref().map(|_| (offset + size).to_string())}),
    )
}
