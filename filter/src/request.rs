//! Per request: route with the configuration in force, hand the upstream to the host, or answer.
//! What to read and write where comes from the host profile; this module only sequences it.

use crate::host::{self, HostSharedData, Metric};
use crate::Active;
use fallback_core::fetch::{LogLevel, Source};
use fallback_core::filter_config::FilterConfig;
use fallback_core::freshness;
use fallback_core::host::{
    response_calls, HandOverNames, HostProfile, HostWrite, ReadFrom, ResponseCall, UpstreamTarget,
};
use fallback_core::plugins::{
    ClientIp, HeaderOp, LocalResponse, PluginOutcome, PluginRequest, ResponsePlan, UpstreamChanges,
};
use fallback_core::router::{Forward, HttpsRequired, RequestView, RouteOutcome};
use fallback_core::shared_data::{Leases, SharedCounters};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

const NO_CONFIG: &str = r#"{"message":"no configuration loaded yet: the gateway has not received a config from the control plane or from storage; retry shortly"}"#;
const NO_ROUTE: &str = r#"{"message":"no Route matched with those values"}"#;
const HTTPS_REQUIRED: &str = r#"{"message":"Please use HTTPS protocol"}"#;
const URI_TOO_LONG: &str = r#"{"message":"URI too long"}"#;
const HAND_OVER_FAILED: &str = r#"{"message":"An unexpected error occurred: the gateway's fallback filter could not hand the request to the proxy"}"#;

thread_local! {
    /// Hand-over targets whose refusal this worker has logged (once each: it repeats on every
    /// request until the proxy's configuration is fixed).
    static REFUSALS_LOGGED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };

    /// This worker's leased rate-limiting units (`SharedCounters`): most requests count
    /// without a shared-data round trip.
    static LEASES: RefCell<Leases> = RefCell::new(Leases::default());
}

/// One request's filter: a snapshot of the configuration in force when it arrived.
pub struct RequestFilter {
    active: Option<Rc<Active>>,
    config: Rc<FilterConfig>,
    profile: &'static HostProfile,
    debug: Option<Vec<(&'static str, String)>>,
    /// What the plugins change in the response's headers.
    response_plan: Option<ResponsePlan>,
    /// Counts requests served without the observe-only plugins that apply to them.
    observe_only_skipped: Option<Metric>,
}

impl RequestFilter {
    /// A filter for one request.
    pub fn new(
        active: Option<Rc<Active>>,
        config: Rc<FilterConfig>,
        profile: &'static HostProfile,
        observe_only_skipped: Option<Metric>,
    ) -> Self {
        Self {
            active,
            config,
            profile,
            debug: None,
            response_plan: None,
            observe_only_skipped,
        }
    }

    /// Runs the plugins of the matched route for this request, and counts the request when
    /// observe-only plugins that apply to it were skipped. `target` is the route, its service
    /// and the upstream path (the request's own when nothing is proxied); `client_ip` reads the
    /// client's address, for the plugins that ask.
    fn plugins<'a>(
        &self,
        active: &'a Active,
        target: (Option<usize>, Option<usize>, &'a str),
        view: &RequestView<'a>,
        client_ip: &'a dyn Fn() -> Option<std::net::IpAddr>,
    ) -> PluginOutcome<'a> {
        let (route, service, upstream_path) = target;
        // Two host calls (the clock) each: only for the plugins that use them.
        let random = if active.plugins.needs_random() {
            (u128::from(crate::random_u64()) << 64) | u128::from(crate::random_u64())
        } else {
            0
        };
        let request = PluginRequest {
            method: view.method,
            scheme: view.scheme,
            path: view.path,
            upstream_path,
            headers: view.headers,
            client_ip: ClientIp::Lazy(client_ip),
            route,
            service,
            now_ms: host::now_ms(),
            random,
        };
        let (outcome, contended) = LEASES.with(|leases| {
            let mut leases = leases.borrow_mut();
            let mut kv = HostSharedData;
            let mut counters = SharedCounters::new(&mut kv, &mut leases);
            let outcome = active.plugins.access(&request, &mut counters);
            (outcome, counters.contended)
        });
        for key in &contended {
            crate::log(
                LogLevel::Warn,
                &format!("fallback: rate-limiting counter {key} could not be written; refusing"),
            );
        }
        let skipped = match &outcome {
            PluginOutcome::Respond(answer) => &answer.skipped,
            PluginOutcome::Forward(changes) => &changes.skipped,
        };
        if let (false, Some(metric)) = (skipped.is_empty(), self.observe_only_skipped) {
            metric.add(1);
        }
        outcome
    }

    /// Answers a readiness probe through the proxy port (never proxied); false for any other
    /// path. Out of line, as every answer but a forward: the request path stays compact.
    #[cold]
    #[inline(never)]
    fn answered_health(&self) -> bool {
        let Some(health) = &self.config.health_path else {
            return false;
        };
        let path = host::read(self.profile.path);
        let bare = path.as_deref().map(|p| p.split('?').next().unwrap_or(p));
        if bare != Some(health.as_str()) {
            return false;
        }
        let age = self.active.as_ref().map(|a| a.age.get());
        let (status, body) = freshness::readiness(age.as_ref(), self.config.stale_policy);
        host::send_json(u32::from(status), &body, &[("cache-control", "no-store")]);
        true
    }

    /// A route without a service, or a balancer without a healthy target: 503, after the
    /// route's plugins (Kong answers after the access phase: a plugin's answer, such as a 401,
    /// comes first, and those that ran set their response headers on the 503).
    #[cold]
    #[inline(never)]
    fn unavailable<'a>(
        &self,
        active: &'a Active,
        (route, service): (usize, Option<usize>),
        message: &str,
        view: &RequestView<'a>,
        read_client_ip: &'a dyn Fn() -> Option<std::net::IpAddr>,
    ) -> Action {
        let mut response = vec![(
            "content-type".to_owned(),
            fallback_core::plugins::JSON_CONTENT_TYPE.to_owned(),
        )];
        if !active.plugins.is_empty() {
            let target = (Some(route), service, view.path);
            match self.plugins(active, target, view, read_client_ip) {
                PluginOutcome::Respond(answer) => return send_local(&answer),
                PluginOutcome::Forward(changes) => changes.response.apply(&mut response),
            }
        }
        let body = serde_json::json!({ "message": message }).to_string();
        let response: Vec<(&str, &str)> = response
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        host::send_response(503, &response, Some(body.as_bytes()));
        Action::Pause
    }
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let profile = self.profile;
        if self.config.health_path.is_some() && self.answered_health() {
            return Action::Pause;
        }
        let Some(active) = self.active.clone() else {
            return answer_json(503, NO_CONFIG);
        };
        let age = active.age.get();
        if freshness::refuse_stale(&age, self.config.stale_policy) {
            let body = freshness::stale_body(&age, self.config.max_fallback_age_ms);
            return answer_json(503, &body);
        }
        // Reading every header costs a copy of each: only when a route or a plugin needs them.
        // Then the single headers below come from that copy rather than from one host call
        // each (every host's map carries the pseudo-headers too).
        let block = (active.router.needs_headers() || !active.plugins.is_empty())
            .then(host::request_headers);
        let headers: Vec<(&str, &str)> = block
            .as_ref()
            .map(host::HeaderBlock::pairs)
            .unwrap_or_default();
        let header = |name: &str| -> Option<Cow<'_, str>> {
            match &block {
                Some(_) => headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|&(_, v)| Cow::Borrowed(v)),
                None => host::request_header(name).map(Cow::Owned),
            }
        };
        // Without the header map, :method and :scheme are each a host call: read only when a
        // route can tell them apart (plugins read the map, so they always see both).
        let method = if block.is_some() || active.router.needs_method() {
            header(":method").unwrap_or_default()
        } else {
            Cow::Borrowed("GET")
        };
        let authority = profile
            .host_headers
            .iter()
            .find_map(|name| header(name))
            .unwrap_or_default();
        let path = match profile.path {
            ReadFrom::Header(name) => header(name),
            from => host::read(from).map(Cow::Owned),
        }
        .unwrap_or(Cow::Borrowed("/"));
        let scheme = if block.is_some() || active.router.needs_scheme() {
            header(":scheme").unwrap_or(Cow::Borrowed("http"))
        } else {
            Cow::Borrowed("http")
        };
        // The TLS SNI (routes' `snis` only apply to HTTPS requests, so plain HTTP skips the
        // read) and the listener's port, which Kong compares a route host's port with when the
        // Host header names none. Each is a host call: read only when some route uses it.
        let sni = (active.router.needs_sni() && scheme.eq_ignore_ascii_case("https"))
            .then(|| host::property(&["connection", "requested_server_name"]))
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|s| !s.is_empty());
        let port = active
            .router
            .needs_port()
            .then(|| host::property(profile.listener_port))
            .flatten()
            .and_then(|raw| profile.listener_port(&raw));
        let view = RequestView {
            method: &method,
            authority: &authority,
            path: &path,
            scheme: &scheme,
            headers: &headers,
            sni: sni.as_deref(),
            port,
        };
        // One host call, made only if a plugin asks (`ip-restriction`, `rate-limiting` by IP).
        let read_client_ip =
            || host::property(&["source", "address"]).and_then(|raw| profile.client_ip(&raw));
        match active.router.route(&view) {
            RouteOutcome::Forward(forward) => {
                let changes = if active.plugins.is_empty() {
                    None
                } else {
                    let target = (Some(forward.route), Some(forward.service), &*forward.path);
                    match self.plugins(&active, target, &view, &read_client_ip) {
                        PluginOutcome::Respond(answer) => return send_local(&answer),
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
                        return hand_over_refused(profile, &write, status);
                    }
                }
                if let Some(changes) = changes {
                    apply_upstream_changes(&changes);
                    self.response_plan = Some(changes.response).filter(|p| !p.is_empty());
                }
                if self.config.allow_debug_header {
                    self.debug = debug_headers(&active, &forward);
                }
                Action::Continue
            }
            RouteOutcome::NoRoute => answer_json(404, NO_ROUTE),
            RouteOutcome::UriTooLong => answer_json(414, URI_TOO_LONG),
            RouteOutcome::HttpsRequired(required) => https_required(profile, &required),
            RouteOutcome::Unavailable {
                route,
                service,
                message,
                ..
            } => self.unavailable(&active, (route, service), &message, &view, &read_client_ip),
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(plan) = self.response_plan.take() {
            // One header at a time: replacing the whole map keeps `Content-Type` in
            // ngx_wasm_module. The whole map is read only for a plan that needs it.
            let mut apply = |call: ResponseCall<'_>| match call {
                ResponseCall::Replace(name, value) => host::replace_response_header(name, value),
                ResponseCall::Remove(name) => host::remove_response_header(name),
                ResponseCall::Add(name, value) => host::add_response_header(name, value),
            };
            if !plan.calls(&mut apply) {
                let edits = plan.edits(&host::response_headers());
                response_calls(edits.into_iter(), apply);
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

/// Answers with a JSON body (`{"message": ...}`) and pauses the request: every answer the
/// filter makes itself, out of the request path's line.
#[cold]
#[inline(never)]
fn answer_json(status: u32, body: &str) -> Action {
    host::send_json(status, body, &[]);
    Action::Pause
}

/// A plain-HTTP request on an `https`-only route: Kong's redirect, or its 426.
#[cold]
#[inline(never)]
fn https_required(profile: &HostProfile, required: &HttpsRequired) -> Action {
    let status = u32::from(required.status);
    match &required.location {
        Some(location) => host::send_empty(status, &[("location", location.as_str())]),
        None => host::send_json(status, HTTPS_REQUIRED, profile.https_required_headers),
    }
    Action::Pause
}

/// The host refused a hand-over write: logged once per target, and the request answers 500.
#[cold]
#[inline(never)]
fn hand_over_refused(profile: &HostProfile, write: &HostWrite<'_>, status: u32) -> Action {
    log_refusal(profile, write, status);
    host::send_json(500, HAND_OVER_FAILED, &[]);
    Action::Pause
}

/// Kong's debug headers (`allow_debug_header` and a request with `Kong-Debug: 1`): the
/// route's and service's ids and names, and where the config in force came from.
#[cold]
#[inline(never)]
fn debug_headers(active: &Active, forward: &Forward<'_>) -> Option<Vec<(&'static str, String)>> {
    if host::request_header("kong-debug").as_deref() != Some("1") {
        return None;
    }
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
    Some(debug)
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

/// Answers with a plugin's response (401, 403, 429, a termination, a preflight...) and pauses
/// the request.
#[cold]
#[inline(never)]
fn send_local(answer: &LocalResponse) -> Action {
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
    Action::Pause
}

/// Applies the plugins' request header and method changes (their path went to the hand-over).
fn apply_upstream_changes(changes: &UpstreamChanges<'_>) {
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
