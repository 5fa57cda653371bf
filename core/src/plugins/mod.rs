//! Kong's plugins, enforced per request: the decision, with no I/O.
//!
//! [`PluginEngine::compile`] reads the plugins, consumers and credentials of a
//! [`ConfigDocument`] once per config revision. [`PluginEngine::access`] then runs, for one
//! request the router forwards, every plugin that applies, in Kong's order, and answers either
//! with a [`LocalResponse`] (401, 403, 429, a termination, a CORS preflight...) or with the
//! [`UpstreamChanges`] to make before proxying and the [`ResponsePlan`] to apply to the
//! response's headers.
//!
//! Kong's rules, as `kong/runloop/plugins_iterator.lua`:
//! - **Order**: plugins run by descending priority (`correlation-id` 100001, `cors` 2000,
//!   `key-auth` 1250, `basic-auth` 1100, `ip-restriction` 990, `acl` 950, `rate-limiting` 910,
//!   `request-transformer` 801, `response-transformer` 800, `request-termination` 2); response
//!   headers are changed in the same order.
//! - **Scope**: for each plugin name the most specific enabled instance wins: consumer + route +
//!   service, consumer + route, consumer + service, route + service, consumer, route, service,
//!   global. The consumer is the one identified by the authentication plugins that ran before
//!   (so `acl` and `rate-limiting` see it); authentication plugins, `acl` and `cors` are never
//!   consumer-scoped, as in Kong.
//! - `enabled: false` instances do not exist for the request (a less specific one applies).
//! - An instance whose `protocols` do not include the request's scheme does not run.
//! - When a plugin answers, the plugins that ran before it still change the answer's headers
//!   (Kong runs their `header_filter`), the others do not run.
//!
//! **Fail closed**: an enabled plugin Fallback does not implement (or an implemented one whose
//! `config` it cannot read) makes every request it applies to answer 500 with a message naming
//! it, unless its name is listed in the filter's `ignore_unsupported_plugins`.
//! [`unsupported_plugins`] lists them for the companion's validation and the filter's log.
//!
//! **Observe-only plugins** ([`OBSERVE_ONLY`]: metrics, logging, tracing) change nothing a
//! client sees, so they are skipped rather than refused (unless
//! [`PluginPolicy::refuse_observe_only`]): listed with a warning, and named per request in
//! the outcome's `skipped` so the filter can count the requests served without them.

mod acl;
mod basic_auth;
mod conf;
mod correlation_id;
mod cors;
mod ip_restriction;
mod key_auth;
mod rate_limiting;
mod request_headers;
mod request_termination;
mod request_transformer;
mod response_transformer;
#[cfg(test)]
mod tests;
mod text;

use crate::document::{ConfigDocument, Plugin, Problem, Protocol};
use crate::host::ResponseCall;
use crate::pace::{drop_all, run_to_end, Pace};
use crate::ConfigMap;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::IpAddr;
use text::Text;

pub use rate_limiting::MemoryCounters;

/// Kong's `kong.response.exit` `Content-Type` for its `{"message": ...}` bodies.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Every plugin the engine implements, with Kong's priority.
pub const SUPPORTED: [(&str, u32); 10] = [
    ("correlation-id", 100_001),
    ("cors", 2000),
    ("key-auth", 1250),
    ("basic-auth", 1100),
    ("ip-restriction", 990),
    ("acl", 950),
    ("rate-limiting", 910),
    ("request-transformer", 801),
    ("response-transformer", 800),
    ("request-termination", 2),
];

/// Kong plugins that only observe traffic: metrics (`prometheus`, `statsd`, `datadog`),
/// tracing (`zipkin`, `opentelemetry`) and logging (`file-log`, `http-log`, `tcp-log`,
/// `udp-log`, `syslog`, `loggly`). None of them changes a request or a response (they run in
/// Kong's `log` phase, or only add their own trace headers upstream), so skipping them changes
/// nothing a client sees; every other plugin decides or changes traffic and fails closed.
pub const OBSERVE_ONLY: [&str; 11] = [
    "prometheus",
    "statsd",
    "datadog",
    "zipkin",
    "opentelemetry",
    "file-log",
    "http-log",
    "tcp-log",
    "udp-log",
    "syslog",
    "loggly",
];

/// How the engine treats the plugins it does not implement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginPolicy {
    /// Names of unsupported plugins to let requests through without (the filter's
    /// `ignore_unsupported_plugins`).
    pub ignore: Vec<String>,
    /// Refuse the requests observe-only plugins apply to, as any unsupported plugin, instead
    /// of skipping them (the filter's `refuse_observe_only_plugins`).
    pub refuse_observe_only: bool,
}

/// Names the plugins that may be scoped to a consumer (Kong's `no_consumer` is false).
fn consumer_scoped(name: &str) -> bool {
    !matches!(name, "key-auth" | "basic-auth" | "acl" | "cors")
}

/// Rate-limiting counters shared by every worker of a proxy.
///
/// A counter belongs to one window: `window_start_ms` changes when the period rolls over, and
/// a counter from an older window counts as 0. Implementations: the filter's, over proxy-wasm
/// shared data with compare-and-swap; [`MemoryCounters`] for tests and `match`.
pub trait Counters {
    /// How many requests `key` counted in the window starting at `window_start_ms`.
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64;
    /// Counts one more request unless `key` already counted `limit` in this window; returns
    /// the new count, or `None` when the limit was reached (possibly by another worker since
    /// [`Counters::usage`]), in which case nothing is counted, as Kong does not count
    /// rejected requests.
    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64>;
}

/// What the plugins need to know about a request the router forwards.
#[derive(Debug, Clone, Copy)]
pub struct PluginRequest<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `http` or `https`: plugins run only for the protocols they list.
    pub scheme: &'a str,
    /// The client's path, without the query string (`limit_by: path`).
    pub path: &'a str,
    /// The upstream `:path` the router chose, query string included: the one transformers and
    /// `hide_credentials` change.
    pub upstream_path: &'a str,
    /// The client's request headers (names in any case; pseudo-headers are ignored).
    pub headers: &'a [(&'a str, &'a str)],
    /// The client's address (Kong's `kong.client.get_forwarded_ip()` without trusted IPs),
    /// read only if a plugin asks for it.
    pub client_ip: ClientIp<'a>,
    /// The matched route, an index into [`ConfigDocument::routes`].
    pub route: Option<usize>,
    /// Its service, an index into [`ConfigDocument::services`].
    pub service: Option<usize>,
    /// Unix time in milliseconds.
    pub now_ms: u64,
    /// Fresh random bits from the host (correlation ids); any value when
    /// [`PluginEngine::needs_random`] is false.
    pub random: u128,
}

/// The client's address for [`PluginRequest::client_ip`]: known, or read on first use (in the
/// filter a host call, which most requests do not need: `ip-restriction`, and `rate-limiting`
/// by IP or without an identified consumer, read it).
#[derive(Clone, Copy)]
pub enum ClientIp<'a> {
    /// Known up front (`None`: unknown).
    Known(Option<IpAddr>),
    /// Read on first use, at most once per request.
    Lazy(&'a dyn Fn() -> Option<IpAddr>),
}

impl Default for ClientIp<'_> {
    fn default() -> Self {
        ClientIp::Known(None)
    }
}

impl From<Option<IpAddr>> for ClientIp<'_> {
    fn from(ip: Option<IpAddr>) -> Self {
        ClientIp::Known(ip)
    }
}

impl fmt::Debug for ClientIp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientIp::Known(ip) => f.debug_tuple("Known").field(ip).finish(),
            ClientIp::Lazy(_) => f.write_str("Lazy"),
        }
    }
}

/// The plugins' decision for one request; it borrows from the engine and the request
/// rather than copying their text (`'a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginOutcome<'a> {
    /// A plugin answers the request itself.
    Respond(LocalResponse),
    /// Proxy the request with these changes.
    Forward(UpstreamChanges<'a>),
}

/// An answer from a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The status code.
    pub status: u16,
    /// Response headers, the plugins' own included (names in Kong's spelling).
    pub headers: Vec<(String, String)>,
    /// The body, `None` for none (a preflight).
    pub body: Option<String>,
    /// The plugin that answered.
    pub plugin: &'static str,
    /// Observe-only plugins that apply to the request and were not run ([`OBSERVE_ONLY`]).
    pub skipped: Vec<&'static str>,
}

/// A header change, applied in order. Names and values are borrowed where they can be (from
/// the request, the config, or Kong's header names): it runs on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    /// Remove every value of the header.
    Remove(Cow<'a, str>),
    /// Add one value.
    Add(Cow<'a, str>, Cow<'a, str>),
}

impl PluginOutcome<'_> {
    /// The same decision, owning its text (to keep it past the request and the engine).
    pub fn into_owned(self) -> PluginOutcome<'static> {
        match self {
            PluginOutcome::Respond(answer) => PluginOutcome::Respond(answer),
            PluginOutcome::Forward(changes) => PluginOutcome::Forward(UpstreamChanges {
                request_headers: changes
                    .request_headers
                    .into_iter()
                    .map(HeaderOp::into_owned)
                    .collect(),
                path: changes.path,
                method: changes.method,
                response: changes.response,
                skipped: changes.skipped,
            }),
        }
    }
}

impl HeaderOp<'_> {
    /// The same change, owning its text.
    pub fn into_owned(self) -> HeaderOp<'static> {
        match self {
            HeaderOp::Remove(name) => HeaderOp::Remove(Cow::Owned(name.into_owned())),
            HeaderOp::Add(name, value) => HeaderOp::Add(
                Cow::Owned(name.into_owned()),
                Cow::Owned(value.into_owned()),
            ),
        }
    }
}

/// What to change before proxying, and what to do to the response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamChanges<'a> {
    /// Request header changes (the difference between the client's headers and the plugins'
    /// result).
    pub request_headers: Vec<HeaderOp<'a>>,
    /// The new upstream `:path` (query included), when a plugin changed it.
    pub path: Option<String>,
    /// The new `:method`, when a plugin changed it.
    pub method: Option<String>,
    /// Response header changes.
    pub response: ResponsePlan,
    /// Observe-only plugins that apply to the request and were not run ([`OBSERVE_ONLY`]).
    pub skipped: Vec<&'static str>,
}

impl UpstreamChanges<'_> {
    /// The headers the plugins set or add upstream, `(name, value)` in order.
    pub fn upstream_headers(&self) -> Vec<(&str, &str)> {
        self.request_headers
            .iter()
            .filter_map(|op| match op {
                HeaderOp::Add(name, value) => Some((&**name, &**value)),
                HeaderOp::Remove(_) => None,
            })
            .collect()
    }
}

/// Response header changes, in Kong's `header_filter` order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponsePlan {
    steps: Vec<ResponseStep>,
}

/// Names are Kong's spelling, borrowed when they are Kong's own (rate-limiting's, CORS's).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResponseStep {
    Set(Cow<'static, str>, Text),
    Add(Cow<'static, str>, Text),
    Remove(Cow<'static, str>),
    Transform(response_transformer::HeaderTransform),
}

impl ResponsePlan {
    /// True when the response is left alone.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Applies the changes to a response's headers (names compared case-insensitively).
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        for step in &self.steps {
            match step {
                ResponseStep::Set(name, value) => {
                    set_header(headers, name.to_string(), value.to_string())
                }
                ResponseStep::Add(name, value) => {
                    headers.push((name.to_string(), value.to_string()))
                }
                ResponseStep::Remove(name) => remove_header(headers, name),
                ResponseStep::Transform(t) => t.apply(headers),
            }
        }
    }

    /// The changes [`ResponsePlan::apply`] makes to `headers`, as one operation per changed
    /// header (names lowercased): `Remove` every value, then `Add` each new one. Made one by
    /// one, they work on every host; replacing the whole map does not remove `Content-Type`
    /// in ngx_wasm_module, which keeps it outside the map.
    pub fn edits(&self, headers: &[(String, String)]) -> Vec<HeaderOp<'static>> {
        let before: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let mut after = before.clone();
        self.apply(&mut after);
        for (name, _) in &mut after {
            name.make_ascii_lowercase();
        }
        let before: Vec<(&str, &str)> = before
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let after: Vec<(Cow<'_, str>, Cow<'_, str>)> = after
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
            .collect();
        diff_headers(&before, &after)
            .into_iter()
            .map(HeaderOp::into_owned)
            .collect()
    }

    /// The same changes as [`ResponsePlan::edits`], worked out without the response's headers,
    /// or `None` when a step needs them (response-transformer's header transforms). A header
    /// the plan sets becomes `Remove` then `Add` (removing an absent header changes nothing),
    /// an added one `Add`, a removed one `Remove`, in the plan's order: the same values per
    /// header as [`ResponsePlan::apply`]. Names keep Kong's spelling (every host compares
    /// header names case-insensitively, as HTTP does) and everything is borrowed from the plan:
    /// this runs on every response. Reading the whole response header map costs the filter a
    /// host call and a copy of every header; a plan that only sets, adds or removes named
    /// headers (rate-limiting's, CORS's, correlation-id's) needs neither.
    pub fn edits_without_headers(&self) -> Option<Vec<HeaderOp<'_>>> {
        let mut ops = Vec::with_capacity(self.steps.len() * 2);
        for step in &self.steps {
            match step {
                ResponseStep::Set(n, value) => {
                    ops.push(HeaderOp::Remove(Cow::Borrowed(n)));
                    ops.push(HeaderOp::Add(Cow::Borrowed(n), Cow::Borrowed(value)));
                }
                ResponseStep::Add(n, value) => {
                    ops.push(HeaderOp::Add(Cow::Borrowed(n), Cow::Borrowed(value)))
                }
                ResponseStep::Remove(n) => ops.push(HeaderOp::Remove(Cow::Borrowed(n))),
                ResponseStep::Transform(_) => return None,
            }
        }
        Some(ops)
    }

    /// The host calls for [`ResponsePlan::edits_without_headers`], each handed to `call` in
    /// order, as [`crate::host::response_calls`] makes them (a header set is one replace, and
    /// so is a removal directly followed by an addition of the same header); false, and no
    /// call, when a step needs the response's headers. Straight from the plan's steps, nothing
    /// built: this runs on every response a plugin changes.
    pub fn calls(&self, mut call: impl FnMut(ResponseCall<'_>)) -> bool {
        if self
            .steps
            .iter()
            .any(|step| matches!(step, ResponseStep::Transform(_)))
        {
            return false;
        }
        let mut steps = self.steps.iter().peekable();
        while let Some(step) = steps.next() {
            match step {
                ResponseStep::Set(name, value) => call(ResponseCall::Replace(name, value)),
                ResponseStep::Add(name, value) => call(ResponseCall::Add(name, value)),
                ResponseStep::Remove(name) => match steps.peek() {
                    Some(ResponseStep::Add(next, value)) if next == name => {
                        call(ResponseCall::Replace(name, value));
                        steps.next();
                    }
                    _ => call(ResponseCall::Remove(name)),
                },
                // Ruled out above.
                ResponseStep::Transform(_) => {}
            }
        }
        true
    }

    fn set(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Text>) {
        self.steps
            .push(ResponseStep::Set(name.into(), value.into()));
    }

    fn add(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Text>) {
        self.steps
            .push(ResponseStep::Add(name.into(), value.into()));
    }

    fn remove(&mut self, name: impl Into<Cow<'static, str>>) {
        self.steps.push(ResponseStep::Remove(name.into()));
    }
}

/// An enabled plugin the engine will not enforce as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedPlugin {
    /// The plugin's name.
    pub name: String,
    /// Where it appeared in the input.
    pub path: String,
    /// Why: not implemented, or what in its `config` cannot be read.
    pub reason: String,
    /// True when the filter lets requests through anyway (`ignore_unsupported_plugins`).
    pub ignored: bool,
}

/// The enabled plugins of `doc` that fail closed, or are skipped or ignored under `policy`,
/// for validation warnings and logs. Features of a supported plugin that are not applied (e.g.
/// response-transformer's JSON body changes) are listed too, with `ignored: true`.
pub fn unsupported_plugins(doc: &ConfigDocument, policy: &PluginPolicy) -> Vec<UnsupportedPlugin> {
    PluginEngine::compile(doc, policy).unsupported
}

/// The same list as validation problems (`plugins[2]: plugin "jwt" is not supported ...`),
/// under the filter's default policy.
pub fn unsupported_warnings(doc: &ConfigDocument) -> Vec<Problem> {
    unsupported_plugins(doc, &PluginPolicy::default())
        .into_iter()
        .map(|u| Problem::new(u.path, u.reason))
        .collect()
}

/// A consumer as the plugins see it.
#[derive(Debug, Clone)]
struct ConsumerInfo {
    /// Its id (generated as Kong does when the input gives none): `X-Consumer-ID`, and its
    /// identity in counters and logs.
    id: String,
    username: Option<String>,
    custom_id: Option<String>,
    groups: Vec<String>,
}

/// Who the authentication plugins identified.
#[derive(Debug, Clone, Default)]
struct Identity<'a> {
    consumer: Option<usize>,
    /// The credential's id (or its path in the input): `None` for the anonymous consumer.
    credential: Option<&'a str>,
}

/// One plugin instance, compiled.
#[derive(Debug)]
enum Compiled {
    CorrelationId(correlation_id::CorrelationId),
    Cors(cors::Cors),
    KeyAuth(key_auth::KeyAuth),
    BasicAuth(basic_auth::BasicAuth),
    IpRestriction(ip_restriction::IpRestriction),
    Acl(acl::Acl),
    RateLimiting(rate_limiting::RateLimiting),
    RequestTransformer(request_transformer::RequestTransformer),
    ResponseTransformer(response_transformer::ResponseTransformer),
    RequestTermination(request_termination::RequestTermination),
    /// Fails closed with this message.
    Refuse(String),
    /// An observe-only plugin, not run.
    Skip,
}

#[derive(Debug)]
struct Instance {
    /// The protocols it runs for, one bit each ([`protocol_bit`]): in place, as the request
    /// path reads it for every plugin.
    protocols: u16,
    compiled: Compiled,
}

/// `protocol`'s bit in [`Instance::protocols`].
fn protocol_bit(protocol: Protocol) -> u16 {
    1 << protocol as u16
}

type Scope = (Option<usize>, Option<usize>, Option<usize>);

/// Every enabled instance of one plugin name.
#[derive(Debug)]
struct Chain {
    name: String,
    /// For an observe-only plugin that is skipped, its name in [`OBSERVE_ONLY`].
    skipped: Option<&'static str>,
    priority: u32,
    consumer_scoped: bool,
    instances: Vec<Instance>,
    /// Where each scope's instance is in `instances`.
    scopes: ConfigMap<Scope, usize>,
    /// Bit [`shape`] of every scope in `instances`: a lookup whose shape no instance has is
    /// skipped (most configs use one or two shapes, and each lookup hashes).
    shapes: u8,
}

/// Which of route, service, consumer a scope sets, as a bit of [`Chain::shapes`].
fn shape(scope: &Scope) -> u8 {
    1 << (u8::from(scope.0.is_some())
        | u8::from(scope.1.is_some()) << 1
        | u8::from(scope.2.is_some()) << 2)
}

impl Chain {
    /// True when an instance is scoped to a consumer: then the consumer, once known, can
    /// change which instance applies, and [`Chain::resolve`] decides.
    fn by_consumer(&self) -> bool {
        // The shapes of scopes with a consumer are bits 4 to 7.
        self.consumer_scoped && self.shapes & 0xf0 != 0
    }

    /// The instance that applies to a request of this route, service and consumer.
    fn resolve(
        &self,
        route: Option<usize>,
        service: Option<usize>,
        consumer: Option<usize>,
    ) -> Option<&Instance> {
        self.resolve_index(route, service, consumer)
            .map(|i| &self.instances[i])
    }

    /// [`Chain::resolve`], as an index into `instances`.
    fn resolve_index(
        &self,
        route: Option<usize>,
        service: Option<usize>,
        consumer: Option<usize>,
    ) -> Option<usize> {
        let consumer = consumer.filter(|_| self.consumer_scoped);
        let combos: [(bool, Scope); 8] = [
            (
                route.is_some() && service.is_some() && consumer.is_some(),
                (route, service, consumer),
            ),
            (
                route.is_some() && consumer.is_some(),
                (route, None, consumer),
            ),
            (
                service.is_some() && consumer.is_some(),
                (None, service, consumer),
            ),
            (route.is_some() && service.is_some(), (route, service, None)),
            (consumer.is_some(), (None, None, consumer)),
            (route.is_some(), (route, None, None)),
            (service.is_some(), (None, service, None)),
            (true, (None, None, None)),
        ];
        combos
            .iter()
            .filter(|(possible, scope)| *possible && self.shapes & shape(scope) != 0)
            .find_map(|(_, scope)| self.scopes.get(scope).copied())
    }
}

/// A route's share of [`PluginEngine::plan`]: for each plugin name, the instance that applies
/// to the route's requests without a consumer (route and service, route, service or global).
#[derive(Debug, Clone, Copy)]
struct RoutePlan {
    service: Option<usize>,
    start: u32,
    end: u32,
}

/// The plugins of one config revision, compiled for enforcement.
///
/// Holds per-worker state in [`Cell`]s (the correlation-id counter): not `Sync`, one per worker.
#[derive(Debug)]
pub struct PluginEngine {
    chains: Vec<Chain>,
    consumers: Vec<ConsumerInfo>,
    /// API key → (consumer, credential identity).
    keys: ConfigMap<String, (usize, String)>,
    /// basic-auth username → credential.
    basic: ConfigMap<String, basic_auth::Credential>,
    route_keys: Vec<String>,
    service_keys: Vec<String>,
    /// Per route: its service and the range of `plan` holding the instances that apply to its
    /// requests before a consumer is known.
    route_plans: Vec<RoutePlan>,
    /// (chain, instance) pairs, each route's in chain order: found per request without
    /// hashing a scope for each plugin name.
    plan: Vec<(u32, u32)>,
    /// Some plugin is observe-only and skipped: requests look for those that apply.
    skips: bool,
    /// Some plugin fails closed: once the consumer is known, requests look again for one
    /// scoped to it.
    refuses: bool,
    unsupported: Vec<UnsupportedPlugin>,
    counter: Cell<u64>,
    worker_uuid: RefCell<Option<String>>,
}

impl PluginEngine {
    /// Compiles the enabled plugins of `doc`; `policy` says which unsupported plugins do not
    /// fail closed.
    pub fn compile(doc: &ConfigDocument, policy: &PluginPolicy) -> PluginEngine {
        run_to_end(Self::compile_paced(doc, policy, &Pace::unbounded()))
    }

    /// [`PluginEngine::compile`], yielding to `pace` once per consumer, credential, ACL group,
    /// route, service and plugin (see [`crate::pace`]).
    pub async fn compile_paced(
        doc: &ConfigDocument,
        policy: &PluginPolicy,
        pace: &Pace<'_>,
    ) -> PluginEngine {
        let mut groups: Vec<Vec<String>> = vec![Vec::new(); doc.consumers.len()];
        for acl in &doc.acls {
            pace.step().await;
            if let Some(g) = groups.get_mut(acl.consumer) {
                g.push(acl.group.clone());
            }
        }
        let mut consumers: Vec<ConsumerInfo> = Vec::with_capacity(doc.consumers.len());
        for (c, groups) in doc.consumers.iter().zip(groups) {
            pace.step().await;
            consumers.push(ConsumerInfo {
                id: c.id.to_string(),
                username: c.username.clone(),
                custom_id: c.custom_id.clone(),
                groups,
            });
        }
        let mut keys =
            ConfigMap::with_capacity_and_hasher(doc.keyauth_credentials.len(), Default::default());
        for k in &doc.keyauth_credentials {
            pace.step().await;
            keys.insert(k.key.clone(), (k.consumer, k.id.to_string()));
        }
        let mut basic = ConfigMap::with_capacity_and_hasher(
            doc.basicauth_credentials.len(),
            Default::default(),
        );
        for c in &doc.basicauth_credentials {
            pace.step().await;
            let consumer_id = doc
                .consumers
                .get(c.consumer)
                .map_or_else(String::new, |consumer| consumer.id.to_string());
            basic.insert(
                c.username.clone(),
                basic_auth::Credential::new(c, consumer_id),
            );
        }
        let mut route_keys = Vec::with_capacity(doc.routes.len());
        for r in &doc.routes {
            pace.step().await;
            route_keys.push(r.id.to_string());
        }
        let mut service_keys = Vec::with_capacity(doc.services.len());
        for s in &doc.services {
            pace.step().await;
            service_keys.push(s.id.to_string());
        }
        let mut engine = PluginEngine {
            chains: Vec::new(),
            consumers,
            keys,
            basic,
            route_keys,
            service_keys,
            route_plans: Vec::new(),
            plan: Vec::new(),
            skips: false,
            refuses: false,
            unsupported: Vec::new(),
            counter: Cell::new(0),
            worker_uuid: RefCell::new(None),
        };
        for plugin in doc.plugins.iter().filter(|p| p.enabled) {
            pace.step().await;
            engine.add(doc, plugin, policy);
        }
        engine
            .chains
            .sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
        engine.skips = engine.chains.iter().any(|c| c.skipped.is_some());
        engine.refuses = engine.chains.iter().any(|c| c.priority == u32::MAX);
        if !engine.chains.is_empty() {
            engine.route_plans.reserve_exact(doc.routes.len());
            for route in 0..doc.routes.len() {
                pace.step().await;
                engine.plan_route(route, doc.routes[route].service);
            }
        }
        engine
    }

    /// Resolves, once per config revision, which instance of each plugin applies to `route`'s
    /// requests while no consumer is known (see [`RoutePlan`]).
    fn plan_route(&mut self, route: usize, service: Option<usize>) {
        let start = self.plan.len();
        for (c, chain) in self.chains.iter().enumerate() {
            if let Some(i) = chain.resolve_index(Some(route), service, None) {
                self.plan.push((c as u32, i as u32));
            }
        }
        self.route_plans.push(RoutePlan {
            service,
            start: start as u32,
            end: self.plan.len() as u32,
        });
    }

    /// The instances planned for `req`'s route, when it is the route's own service.
    fn planned(&self, req: &PluginRequest<'_>) -> Option<&[(u32, u32)]> {
        let plan = self.route_plans.get(req.route?)?;
        (plan.service == req.service).then(|| &self.plan[plan.start as usize..plan.end as usize])
    }

    /// Frees the engine a step at a time (see [`crate::pace`]): each plugin instance, consumer
    /// and credential, one each.
    pub async fn dismantle(self, pace: &Pace<'_>) {
        let PluginEngine {
            chains,
            consumers,
            keys,
            basic,
            route_keys,
            service_keys,
            route_plans,
            plan,
            unsupported,
            ..
        } = self;
        for chain in chains {
            drop_all(chain.instances, pace).await;
            drop_all(chain.scopes, pace).await;
        }
        drop_all(consumers, pace).await;
        drop_all(keys, pace).await;
        drop_all(basic, pace).await;
        drop_all(route_keys, pace).await;
        drop_all(service_keys, pace).await;
        drop_all(route_plans, pace).await;
        drop_all(plan, pace).await;
        drop_all(unsupported, pace).await;
    }

    fn add(&mut self, doc: &ConfigDocument, plugin: &Plugin, policy: &PluginPolicy) {
        let name = plugin.name.as_str();
        let ignored = policy.ignore.iter().any(|i| i == name);
        let priority = SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, p)| *p);
        let observer = OBSERVE_ONLY.iter().find(|n| **n == name).copied();
        let compiled = match (priority, observer) {
            (None, Some(_)) if !ignored && !policy.refuse_observe_only => {
                self.unsupported.push(UnsupportedPlugin {
                    name: name.to_owned(),
                    path: plugin.path.clone(),
                    reason: format!(
                        "plugin {name:?} only observes traffic (metrics, logs or traces) and is \
                         not run by the Fallback filter: requests go through without it, \
                         counted in fallback_observe_only_skipped (set the filter's \
                         refuse_observe_only_plugins to refuse them instead)"
                    ),
                    ignored: true,
                });
                Compiled::Skip
            }
            (None, _) => {
                self.unsupported.push(UnsupportedPlugin {
                    name: name.to_owned(),
                    path: plugin.path.clone(),
                    reason: if ignored {
                        format!(
                            "plugin {name:?} is not supported by the Fallback filter; ignored \
                             (ignore_unsupported_plugins)"
                        )
                    } else {
                        format!(
                            "plugin {name:?} is not supported by the Fallback filter: requests \
                             it applies to are refused with 500 (or list it in the filter's \
                             ignore_unsupported_plugins)"
                        )
                    },
                    ignored,
                });
                if ignored {
                    return;
                }
                Compiled::Refuse(format!(
                    "plugin {name:?} is enabled for this request but not supported by the \
                     gateway's fallback filter"
                ))
            }
            (Some(_), _) => match self.compile_one(doc, plugin) {
                Ok((compiled, notes)) => {
                    for note in notes {
                        self.unsupported.push(UnsupportedPlugin {
                            name: name.to_owned(),
                            path: plugin.path.clone(),
                            reason: note,
                            ignored: true,
                        });
                    }
                    compiled
                }
                Err(reason) => {
                    self.unsupported.push(UnsupportedPlugin {
                        name: name.to_owned(),
                        path: format!("{}.config", plugin.path),
                        reason: format!(
                            "plugin {name:?}: {reason}; requests it applies to are refused \
                             with 500"
                        ),
                        ignored: false,
                    });
                    Compiled::Refuse(format!(
                        "plugin {name:?} is enabled for this request but its configuration \
                         cannot be enforced by the gateway's fallback filter"
                    ))
                }
            },
        };
        let scope = (plugin.route, plugin.service, plugin.consumer);
        let index = match self.chains.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                let skipped = matches!(compiled, Compiled::Skip)
                    .then_some(observer)
                    .flatten();
                self.chains.push(Chain {
                    name: name.to_owned(),
                    skipped,
                    // Unsupported plugins are checked before any plugin runs; skipped ones
                    // are only looked up.
                    priority: match (priority, skipped) {
                        (Some(p), _) => p,
                        (None, Some(_)) => 0,
                        (None, None) => u32::MAX,
                    },
                    consumer_scoped: consumer_scoped(name),
                    instances: Vec::new(),
                    scopes: ConfigMap::default(),
                    shapes: 0,
                });
                self.chains.len() - 1
            }
        };
        let chain = &mut self.chains[index];
        chain.shapes |= shape(&scope);
        let instance = Instance {
            protocols: plugin
                .protocols
                .iter()
                .fold(0, |bits, p| bits | protocol_bit(*p)),
            compiled,
        };
        match chain.scopes.get(&scope) {
            // A later instance for the same scope replaces the earlier one.
            Some(&i) => chain.instances[i] = instance,
            None => {
                chain.scopes.insert(scope, chain.instances.len());
                chain.instances.push(instance);
            }
        }
    }

    fn compile_one(
        &self,
        doc: &ConfigDocument,
        plugin: &Plugin,
    ) -> Result<(Compiled, Vec<String>), String> {
        let c = conf::Conf::new(&plugin.config);
        let mut notes = Vec::new();
        let compiled = match plugin.name.as_str() {
            "correlation-id" => Compiled::CorrelationId(correlation_id::CorrelationId::new(&c)?),
            "cors" => Compiled::Cors(cors::Cors::new(&c)?),
            "key-auth" => Compiled::KeyAuth(key_auth::KeyAuth::new(&c, doc)?),
            "basic-auth" => Compiled::BasicAuth(basic_auth::BasicAuth::new(&c, doc)?),
            "ip-restriction" => Compiled::IpRestriction(ip_restriction::IpRestriction::new(&c)?),
            "acl" => Compiled::Acl(acl::Acl::new(&c)?),
            "rate-limiting" => Compiled::RateLimiting(rate_limiting::RateLimiting::new(
                &c,
                plugin,
                &self.route_keys,
                &self.service_keys,
                &mut notes,
            )?),
            "request-transformer" => Compiled::RequestTransformer(
                request_transformer::RequestTransformer::new(&c, &mut notes)?,
            ),
            "response-transformer" => Compiled::ResponseTransformer(
                response_transformer::ResponseTransformer::new(&c, &mut notes)?,
            ),
            "request-termination" => Compiled::RequestTermination(
                request_termination::RequestTermination::new(&c, &mut notes)?,
            ),
            other => return Err(format!("no implementation for {other:?}")),
        };
        Ok((compiled, notes))
    }

    /// True when no plugin applies anywhere: the filter can skip reading headers for it.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// True when some plugin uses [`PluginRequest::random`] (`correlation-id`): otherwise the
    /// caller need not draw random bits for each request.
    pub fn needs_random(&self) -> bool {
        self.chains.iter().any(|c| c.name == "correlation-id")
    }

    /// The enabled plugins this engine refuses (or ignores), to log once per revision.
    pub fn unsupported(&self) -> &[UnsupportedPlugin] {
        &self.unsupported
    }

    /// Runs the plugins for one forwarded request.
    pub fn access<'a>(
        &'a self,
        req: &PluginRequest<'a>,
        counters: &mut dyn Counters,
    ) -> PluginOutcome<'a> {
        let mut ex = Exchange::new(req);
        let protocol = Protocol::from_name(req.scheme).unwrap_or(Protocol::Http);
        let mut consumer_checked = None;
        let plan = self.planned(req);
        let mut planned = plan.unwrap_or_default().iter().peekable();
        for (c, chain) in self.chains.iter().enumerate() {
            let in_plan = planned.next_if(|(of, _)| *of as usize == c);
            // An unsupported consumer-scoped plugin is found once the consumer is known.
            if ex.identity.consumer != consumer_checked {
                consumer_checked = ex.identity.consumer;
                self.note_skipped(req, protocol, &mut ex);
                if let Some(refusal) = self.refusal(req, ex.identity.consumer, &mut ex) {
                    return refusal;
                }
            }
            let instance =
                if plan.is_some() && !(chain.by_consumer() && ex.identity.consumer.is_some()) {
                    // The consumer cannot change which instance applies: planned per route.
                    in_plan.map(|&(_, i)| &chain.instances[i as usize])
                } else {
                    chain.resolve(req.route, req.service, ex.identity.consumer)
                };
            let Some(instance) = instance else {
                continue;
            };
            if instance.protocols & protocol_bit(protocol) == 0 {
                continue;
            }
            let step = match &instance.compiled {
                Compiled::CorrelationId(p) => p.access(self, &mut ex),
                Compiled::Cors(p) => p.access(&mut ex),
                Compiled::KeyAuth(p) => p.access(self, &mut ex),
                Compiled::BasicAuth(p) => p.access(self, &mut ex),
                Compiled::IpRestriction(p) => p.access(&mut ex),
                Compiled::Acl(p) => p.access(self, &mut ex),
                Compiled::RateLimiting(p) => p.access(self, &mut ex, counters),
                Compiled::RequestTransformer(p) => p.access(&mut ex),
                Compiled::ResponseTransformer(p) => p.access(&mut ex),
                Compiled::RequestTermination(p) => p.access(&mut ex),
                Compiled::Refuse(message) => Err(Exit::error(500, message)),
                Compiled::Skip => Ok(()),
            };
            if let Err(exit) = step {
                self.note_skipped(req, protocol, &mut ex);
                return ex.respond(exit, &chain.name);
            }
        }
        self.note_skipped(req, protocol, &mut ex);
        if ex.identity.consumer != consumer_checked {
            if let Some(refusal) = self.refusal(req, ex.identity.consumer, &mut ex) {
                return refusal;
            }
        }
        PluginOutcome::Forward(ex.finish(req))
    }

    /// Records the observe-only plugins that apply to this request (with the consumer known
    /// so far), whether it is forwarded or answered: Kong would log both.
    fn note_skipped(&self, req: &PluginRequest<'_>, protocol: Protocol, ex: &mut Exchange<'_>) {
        if !self.skips {
            return;
        }
        ex.skipped = self
            .chains
            .iter()
            .filter_map(|chain| {
                let name = chain.skipped?;
                let instance = chain.resolve(req.route, req.service, ex.identity.consumer)?;
                (instance.protocols & protocol_bit(protocol) != 0).then_some(name)
            })
            .collect();
    }

    /// The 500 of an unsupported plugin that applies to this request, if any.
    fn refusal<'a>(
        &self,
        req: &PluginRequest<'_>,
        consumer: Option<usize>,
        ex: &mut Exchange<'a>,
    ) -> Option<PluginOutcome<'a>> {
        if !self.refuses {
            return None;
        }
        self.chains
            .iter()
            .filter(|c| c.priority == u32::MAX)
            .find_map(|chain| {
                let instance = chain.resolve(req.route, req.service, consumer)?;
                match &instance.compiled {
                    Compiled::Refuse(message) => Some((chain.name.clone(), message.clone())),
                    _ => None,
                }
            })
            .map(|(name, message)| {
                let exit = Exit::error(500, &message);
                let stolen = std::mem::take(ex);
                stolen.respond_owned(exit, name)
            })
    }

    fn consumer(&self, index: usize) -> Option<&ConsumerInfo> {
        self.consumers.get(index)
    }

    /// Finds the `anonymous` consumer by id or username, as Kong 3.x accepts both.
    fn find_consumer(&self, reference: &str) -> Option<usize> {
        self.consumers
            .iter()
            .position(|c| c.id == reference)
            .or_else(|| {
                self.consumers
                    .iter()
                    .position(|c| c.username.as_deref() == Some(reference))
            })
    }
}

/// A plugin's answer: Kong's `kong.response.exit` / `kong.response.error`.
#[derive(Debug, Clone)]
struct Exit {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl Exit {
    /// `{"message": message}` as JSON.
    fn error(status: u16, message: &str) -> Exit {
        Exit {
            status,
            headers: vec![("Content-Type".to_owned(), JSON_CONTENT_TYPE.to_owned())],
            body: Some(serde_json::json!({ "message": message }).to_string()),
        }
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Exit {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

type Step = Result<(), Exit>;

/// One request in flight through the plugins. Text is borrowed from the request and the
/// engine (`'a`) until a plugin changes it: this runs on every request.
#[derive(Debug, Default)]
struct Exchange<'a> {
    method: Cow<'a, str>,
    /// Upstream request headers as they stand.
    headers: request_headers::RequestHeaders<'a>,
    query: request_transformer::Query,
    upstream_path: Cow<'a, str>,
    path_changed: bool,
    method_changed: bool,
    client_path: &'a str,
    client_ip: ClientIp<'a>,
    /// [`Exchange::client_ip`] once read.
    client_ip_read: Cell<Option<Option<IpAddr>>>,
    now_ms: u64,
    random: u128,
    service: Option<usize>,
    identity: Identity<'a>,
    response: ResponsePlan,
    /// Observe-only plugins that apply and were not run.
    skipped: Vec<&'static str>,
}

/// `name` lowercase, copied only when it is not already (HTTP/2 and Envoy give lowercase names).
fn lowercase(name: Cow<'_, str>) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        name
    }
}

impl<'a> Exchange<'a> {
    /// The client's address, read on first use.
    fn client_ip(&self) -> Option<IpAddr> {
        match self.client_ip {
            ClientIp::Known(ip) => ip,
            ClientIp::Lazy(read) => match self.client_ip_read.get() {
                Some(ip) => ip,
                None => {
                    let ip = read();
                    self.client_ip_read.set(Some(ip));
                    ip
                }
            },
        }
    }

    fn new(req: &PluginRequest<'a>) -> Exchange<'a> {
        let (path, query) = crate::router::path::split_query(req.upstream_path);
        Exchange {
            method: Cow::Borrowed(req.method),
            headers: request_headers::RequestHeaders::new(req.headers),
            query: request_transformer::Query::parse(query),
            upstream_path: Cow::Borrowed(path),
            path_changed: false,
            method_changed: false,
            client_path: crate::router::path::split_query(req.path).0,
            client_ip: req.client_ip,
            client_ip_read: Cell::new(None),
            now_ms: req.now_ms,
            random: req.random,
            service: req.service,
            identity: Identity::default(),
            response: ResponsePlan::default(),
            skipped: Vec::new(),
        }
    }

    /// The first value of a request header (as the client sent it, after earlier plugins).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Replaces every value of a header with `value`; borrowed text stays borrowed.
    fn set_header(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        self.headers.set(name.into(), value.into());
    }

    fn clear_header(&mut self, name: &str) {
        self.headers.remove(name);
    }

    fn respond(&mut self, exit: Exit, plugin: &str) -> PluginOutcome<'a> {
        let stolen = std::mem::take(self);
        stolen.respond_owned(exit, plugin.to_owned())
    }

    fn respond_owned(self, exit: Exit, plugin: String) -> PluginOutcome<'a> {
        let mut headers = exit.headers;
        self.response.apply(&mut headers);
        PluginOutcome::Respond(LocalResponse {
            status: exit.status,
            headers,
            body: exit.body,
            plugin: SUPPORTED
                .iter()
                .find(|(n, _)| *n == plugin)
                .map_or("unsupported", |(n, _)| n),
            skipped: self.skipped,
        })
    }

    fn finish(self, req: &PluginRequest<'a>) -> UpstreamChanges<'a> {
        let path = if self.path_changed || self.query.changed() {
            let rebuilt = match self.query.render() {
                Some(q) => format!("{}?{q}", self.upstream_path),
                None => self.upstream_path.into_owned(),
            };
            Some(rebuilt).filter(|p| p != req.upstream_path)
        } else {
            None
        };
        UpstreamChanges {
            request_headers: self.headers.changes(),
            path,
            method: Some(self.method.into_owned()).filter(|_| self.method_changed),
            response: self.response,
            skipped: self.skipped,
        }
    }
}

/// The changes that turn the client's headers `before` (pseudo-headers ignored, names in any
/// case) into `after` (names lowercase): for each header whose values differ, remove it, then
/// add its new values. Borrows its text: it runs on every request.
fn diff_headers<'a>(
    before: &[(&'a str, &'a str)],
    after: &[(Cow<'a, str>, Cow<'a, str>)],
) -> Vec<HeaderOp<'a>> {
    // Pseudo-headers (`:status`, `:path`) are the host's, on both sides: never edited.
    let before = || before.iter().filter(|(n, _)| !n.starts_with(':'));
    let names = before()
        .map(|&(n, _)| Cow::Borrowed(n))
        .chain(after.iter().map(|(n, _)| n.clone()))
        .filter(|n| !n.starts_with(':'));
    let mut ops = Vec::new();
    for (i, name) in names.clone().enumerate() {
        // Each name once, at its first appearance (a few headers: quadratic is cheapest).
        if names.clone().take(i).any(|n| n.eq_ignore_ascii_case(&name)) {
            continue;
        }
        let same = |n: &str| n.eq_ignore_ascii_case(&name);
        let old = before().filter(|(n, _)| same(n)).map(|(_, v)| *v);
        let new = after.iter().filter(|(n, _)| same(n)).map(|(_, v)| v);
        if old.clone().eq(new.clone().map(|v| &**v)) {
            continue;
        }
        // Only a changed header is named in the result (lowercase, a copy if it was not).
        let name = lowercase(name.clone());
        if old.clone().next().is_some() {
            ops.push(HeaderOp::Remove(name.clone()));
        }
        ops.extend(new.map(|v| HeaderOp::Add(name.clone(), v.clone())));
    }
    ops
}

/// Replaces every value of `name` with one `value` (at the first one's position).
fn set_header<N, V>(headers: &mut Vec<(N, V)>, name: N, value: V)
where
    N: AsRef<str>,
{
    match headers
        .iter()
        .position(|(n, _)| n.as_ref().eq_ignore_ascii_case(name.as_ref()))
    {
        Some(first) => {
            headers[first].1 = value;
            let mut i = 0;
            headers.retain(|(n, _)| {
                let keep = i <= first || !n.as_ref().eq_ignore_ascii_case(name.as_ref());
                i += 1;
                keep
            });
        }
        None => headers.push((name, value)),
    }
}

fn remove_header<N: AsRef<str>, V>(headers: &mut Vec<(N, V)>, name: &str) {
    headers.retain(|(n, _)| !n.as_ref().eq_ignore_ascii_case(name));
}
/// Kong's `set_consumer` of its authentication plugins: the upstream `X-Consumer-*`,
/// `X-Credential-Identifier` and `X-Anonymous-Consumer` headers, and the identity later
/// plugins see.
fn authenticate<'a>(
    engine: &'a PluginEngine,
    ex: &mut Exchange<'a>,
    consumer: usize,
    credential: Option<&'a str>,
) {
    let info = engine.consumer(consumer);
    let fields = [
        ("x-consumer-id", info.map(|c| c.id.as_str())),
        (
            "x-consumer-custom-id",
            info.and_then(|c| c.custom_id.as_deref()),
        ),
        (
            "x-consumer-username",
            info.and_then(|c| c.username.as_deref()),
        ),
        ("x-credential-identifier", credential),
    ];
    for (name, value) in fields {
        match value {
            Some(v) => ex.set_header(name, v),
            None => ex.clear_header(name),
        }
    }
    if credential.is_some() {
        ex.clear_header("x-anonymous-consumer");
    } else {
        ex.set_header("x-anonymous-consumer", "true");
    }
    ex.identity = Identity {
        consumer: Some(consumer),
        credential,
    };
}

/// An authentication plugin's failure, or its `anonymous` consumer (Kong's logical OR between
/// authentication plugins).
fn fail_or_anonymous<'a>(
    engine: &'a PluginEngine,
    ex: &mut Exchange<'a>,
    anonymous: Option<&str>,
    failure: Exit,
) -> Step {
    let Some(reference) = anonymous else {
        return Err(failure);
    };
    match engine.find_consumer(reference) {
        Some(consumer) => {
            authenticate(engine, ex, consumer, None);
            Ok(())
        }
        None => Err(Exit::error(500, "An unexpected error occurred")),
    }
}

/// Kong's default `message` for `kong.response.error(status)` without one.
fn default_message(status: u16) -> String {
    let text = match status {
        400 => "Bad request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not found",
        405 => "Method not allowed",
        408 => "Request timeout",
        409 => "Conflict",
        411 => "Length required",
        412 => "Precondition failed",
        413 => "Payload too large",
        414 => "URI too long",
        415 => "Unsupported media type",
        429 => "Too many requests",
        500 => "An unexpected error occurred",
        502 => "An invalid response was received from the upstream server",
        503 => "The upstream server is currently unavailable",
        504 => "The upstream server is timing out",
        other => return format!("The upstream server responded with {other}"),
    };
    text.to_owned()
}
