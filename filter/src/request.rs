//! Per request: route with the configuration in force, hand the upstream to the host, or answer.
//! What to read and write where comes from the host profile; this module only sequences it.

use crate::host::{self, HostSharedData};
use crate::Active;
use fallback_core::fetch::{LogLevel, Source};
use fallback_core::filter_config::FilterConfig;
use fallback_core::freshness;
use fallback_core::host::{HandOverNames, HostProfile, HostWrite, UpstreamTarget};
use fallback_core::plugins::{
    HeaderOp, LocalResponse, PluginOutcome, PluginRequest, ResponsePlan, UpstreamChanges,
};
use fallback_core::router::{Forward, RequestView, RouteOutcome};
use fallback_core::shared_data::SharedCounters;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

const NO_CONFIG: &str = r#"{"message":"no configuration loaded yet: the gateway has not received a config from the control plane or from storage; retry shortly"}"#;
const NO_ROUTE: &str = r#"{"message":"no Route matched with those values"}"#;
const HTTPS_REQUIRED: &str = r#"{"message":"Please use HTTPS protocol"}"#;
const HAND_OVER_FAILED: &str = r#"{"message":"An unexpected error occurred: the gateway's fallback filter could not hand the request to the proxy"}"#;

thread_local! {
    /// Hand-over targets whose refusal this worker has logged (once each: it repeats on every
    /// request until the proxy's configuration is fixed).
    static REFUSALS_LOGGED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// One request's filter: a snapshot of the configuration in force when it arrived.
pub struct RequestFilter {
    active: Option<Rc<Active>>,
    config: Rc<FilterConfig>,
    profile: &'static HostProfile,
    debug: Option<Vec<(&'static str, String)>>,
    /// What the plugins change in the response's headers.
    response_plan: Option<ResponsePlan>,
}

impl RequestFilter {
    /// A filter for one request.
    pub fn new(
        active: Option<Rc<Active>>,
        config: Rc<FilterConfig>,
        profile: &'static HostProfile,
    ) -> Self {
        Self {
            active,
            config,
            profile,
            debug: None,
            response_plan: None,
        }
    }
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let profile = self.profile;
        if let Some(health) = &self.config.health_path {
            // Answered here, never proxied: a readiness probe through the proxy port.
            let path = host::read(profile.path);
            let bare = path.as_deref().map(|p| p.split('?').next().unwrap_or(p));
            if bare == Some(health.as_str()) {
                let age = self.active.as_ref().map(|a| a.age.get());
                let (status, body) = freshness::readiness(age.as_ref(), self.config.stale_policy);
                host::send_json(u32::from(status), &body, &[("cache-control", "no-store")]);
                return Action::Pause;
            }
        }
        let Some(active) = self.active.clone() else {
            host::send_json(503, NO_CONFIG, &[]);
            return Action::Pause;
        };
        let age = active.age.get();
        if freshness::refuse_stale(&age, self.config.stale_policy) {
            let body = freshness::stale_body(&age, self.config.max_fallback_age_ms);
            host::send_json(503, &body, &[]);
            return Action::Pause;
        }
        let method = host::request_header(":method").unwrap_or_default();
        let authority = profile
            .host_headers
            .iter()
            .find_map(|name| host::request_header(name))
            .unwrap_or_default();
        let path = host::read(profile.path).unwrap_or_else(|| "/".into());
        let scheme = host::request_header(":scheme").unwrap_or_else(|| "http".into());
        // Reading every header costs an allocation per header: only when a route or a plugin
        // needs them.
        let owned = if active.router.needs_headers() || !active.plugins.is_empty() {
            host::request_headers()
        } else {
            Vec::new()
        };
        let headers: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // The TLS SNI (routes' `snis` only apply to HTTPS requests, so plain HTTP skips the
        // read) and the listener's port, which Kong compares a route host's port with when the
        // Host header names none.
        let sni = if scheme.eq_ignore_ascii_case("https") {
            host::property(&["connection", "requested_server_name"])
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .filter(|s| !s.is_empty())
        } else {
            None
        };
        let port =
            host::property(profile.listener_port).and_then(|raw| profile.listener_port(&raw));
        let view = RequestView {
            method: &method,
            authority: &authority,
            path: &path,
            scheme: &scheme,
            headers: &headers,
            sni: sni.as_deref(),
            port,
        };
        match active.router.route(&view) {
            RouteOutcome::Forward(forward) => {
                let changes = if active.plugins.is_empty() {
                    None
                } else {
                    match run_plugins(
                        profile, &active, &forward, &method, &path, &scheme, &headers,
                    ) {
                        PluginOutcome::Respond(answer) => {
                            send_local(&answer);
                            return Action::Pause;
                        }
                        PluginOutcome::Forward(changes) => Some(changes),
                    }
                };
                let target = UpstreamTarget {
                    upstream: &forward.upstream,
                    host_header: &forward.host_header,
                    path: changes
                        .as_ref()
                        .and_then(|c| c.path.as_deref())
                        .unwrap_or(&forward.path),
                };
                let names = HandOverNames {
                    upstream_header: &self.config.upstream_header,
                    upstream_variable: &self.config.upstream_variable,
                };
                for write in profile.hand_over(&target, &names) {
                    if let Err(status) = host::write(&write) {
                        log_refusal(profile, &write, status);
                        host::send_json(500, HAND_OVER_FAILED, &[]);
                        return Action::Pause;
                    }
                }
                if let Some(changes) = changes {
                    apply_upstream_changes(&changes);
                    self.response_plan = Some(changes.response).filter(|p| !p.is_empty());
                }
                if self.config.allow_debug_header
                    && host::request_header("kong-debug").as_deref() == Some("1")
                {
                    let source = match active.source {
                        Source::ControlPlane => "control_plane",
                        Source::Fallback => "fallback",
                    };
                    let mut debug: Vec<(&'static str, String)> = forward
                        .debug
                        .headers()
                        .into_iter()
                        .map(|(name, value)| (name, value.to_owned()))
                        .collect();
                    debug.push(("X-Fallback-Source", source.to_owned()));
                    debug.push(("X-Fallback-Revision", active.revision.to_string()));
                    self.debug = Some(debug);
                }
                Action::Continue
            }
            RouteOutcome::NoRoute => {
                host::send_json(404, NO_ROUTE, &[]);
                Action::Pause
            }
            RouteOutcome::HttpsRequired(required) => {
                match &required.location {
                    Some(location) => host::send_empty(
                        u32::from(required.status),
                        &[("location", location.as_str())],
                    ),
                    None => host::send_json(
                        u32::from(required.status),
                        HTTPS_REQUIRED,
                        profile.https_required_headers,
                    ),
                }
                Action::Pause
            }
            RouteOutcome::Unavailable { message, .. } => {
                let body = serde_json::json!({ "message": message }).to_string();
                host::send_json(503, &body, &[]);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(plan) = self.response_plan.take() {
            // One header at a time: replacing the whole map keeps `Content-Type` in
            // ngx_wasm_module.
            for op in plan.edits(&host::response_headers()) {
                match op {
                    HeaderOp::Remove(name) => host::remove_response_header(&name),
                    HeaderOp::Add(name, value) => host::add_response_header(&name, &value),
                }
            }
        }
        if let Some(debug) = self.debug.take() {
            for (name, value) in &debug {
                host::add_response_header(name, value);
            }
        }
        Action::Continue
    }
}

/// Logs, once per worker and target, that the host refused a hand-over write.
fn log_refusal(profile: &HostProfile, write: &HostWrite<'_>, status: u32) {
    let target = write.target();
    let first = REFUSALS_LOGGED.with(|logged| {
        let mut logged = logged.borrow_mut();
        let first = !logged.contains(&target);
        if first {
            logged.push(target.clone());
        }
        first
    });
    if first {
        crate::log(
            LogLevel::Error,
            &format!(
                "fallback: the proxy refused {target} (proxy-wasm status {status}), so requests \
                 answer 500: check that \"host\" ({}) names this proxy and that its \
                 configuration matches the example for it (nginx: declare the variable with \
                 `set $<upstream_variable> '';` and use it in proxy_pass; Kong: 3.6 or later). \
                 Logged once per worker.",
                profile.kind
            ),
        );
    }
}

/// Runs the plugins of the matched route for this request.
fn run_plugins(
    profile: &HostProfile,
    active: &Active,
    forward: &Forward,
    method: &str,
    path: &str,
    scheme: &str,
    headers: &[(&str, &str)],
) -> PluginOutcome {
    let random = (u128::from(crate::random_u64()) << 64) | u128::from(crate::random_u64());
    let request = PluginRequest {
        method,
        scheme,
        path,
        upstream_path: &forward.path,
        headers,
        client_ip: host::property(&["source", "address"]).and_then(|raw| profile.client_ip(&raw)),
        route: Some(forward.route),
        service: Some(forward.service),
        now_ms: host::now_ms(),
        random,
    };
    let mut kv = HostSharedData;
    let mut counters = SharedCounters::new(&mut kv);
    let outcome = active.plugins.access(&request, &mut counters);
    for key in &counters.contended {
        crate::log(
            LogLevel::Warn,
            &format!("fallback: rate-limiting counter {key} could not be written; refusing"),
        );
    }
    outcome
}

/// Answers with a plugin's response (401, 403, 429, a termination, a preflight...).
fn send_local(answer: &LocalResponse) {
    let headers: Vec<(&str, &str)> = answer
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    host::send_response(
        u32::from(answer.status),
        &headers,
        answer.body.as_deref().map(str::as_bytes),
    );
}

/// Applies the plugins' request header and method changes (their path went to the hand-over).
fn apply_upstream_changes(changes: &UpstreamChanges) {
    for op in &changes.request_headers {
        match op {
            HeaderOp::Remove(name) => host::set_request_header(name, None),
            HeaderOp::Add(name, value) => host::add_request_header(name, value),
        }
    }
    if let Some(method) = &changes.method {
        host::set_request_header(":method", Some(method));
    }
}
