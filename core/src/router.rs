//! The per-request routing decision: which route a request matches, and where it goes.
//!
//! [`Router::compile`] turns a [`ConfigDocument`] into a [`Router`] once per config revision;
//! [`Router::route`] then answers each request with a [`RouteOutcome`]: forward it (to which
//! `host:port`, with which `:path` and `Host`), redirect it to HTTPS, or answer it with Kong's
//! 404 or 503.
//!
//! The semantics are Kong 3.x's `traditional_compatible` router (`kong/router/compat.lua` and
//! `atc.lua`) for HTTP requests:
//! - A route matches when every field it sets matches: `methods` (exact), `hosts`
//!   (case-insensitive; exact, or one leading `*` / trailing `*` wildcard matching any depth;
//!   a host with `:port` only matches that port, the request's port defaulting to the scheme's),
//!   `headers` (names case-insensitive; any listed value, compared case-insensitively, or one
//!   `~*` regex matched against the lowercased value), `paths` (prefixes, or `~` regexes anchored at the start). `protocols` do not
//!   take part in matching: an `https`-only route matched over plain HTTP answers with its
//!   `https_redirect_status_code` (426 by default), as Kong's runloop does.
//! - The request path is normalised first (RFC 3986: percent-escapes decoded except reserved
//!   characters, dot segments removed, slashes merged), as Kong does before matching and
//!   proxying.
//! - Every path of a route competes on its own (Kong splits routes by path kind and length).
//!   Priority, highest first, as Kong's `get_priority`: the number of fields set (methods,
//!   hosts, headers, snis, paths); hosts all plain (no wildcard); the number of headers; regex
//!   path; `regex_priority` (regex paths only); prefix length. Equal priorities: the greater
//!   id first, as Kong's ATC router: the route's id (given, or generated from its name as Kong
//!   does), or for a route Kong splits (paths of several lengths, or regexes and prefixes) the
//!   id Kong gives each group; routes whose id Kong would draw at random (no id, no name)
//!   after those, in document order.
//! - The upstream request: the service's `host:port`, or a target of the upstream the service
//!   host names (smooth weighted round-robin); the path joined as Kong's `path_handling: v0`
//!   (the only one `traditional_compatible` uses), the query string kept; `Host` is the target
//!   (with its port unless it is the protocol's default), the upstream's `host_header`, or the
//!   request's own when the route has `preserve_host`.
//!
//! Scale: routes are indexed by host (exact names in a hash map, wildcards by their suffix or
//! prefix at each dot of the request host) and, within a host, by path prefix (a hash map per
//! prefix length present). A regex path is indexed under its literal prefix (`~/users/\d+`
//! under `/users/`), so a request only ever runs the few regexes whose literal prefix its path
//! starts with, never the whole list. Matching gathers the candidates from a handful of hash
//! lookups and checks them in priority order; a regex runs only when its candidate is the best
//! one left. Regexes use `regex-lite` (compiled once per revision): like PCRE's default, `\d`
//! and `\w` are ASCII.
//!
//! `snis` are checked on HTTPS requests only (compat.lua: `net.protocol != "https" ||
//! tls.sni == …`), against [`RequestView::sni`]. A host's port is compared with the `Host`
//! header's port, else the port the request arrived on ([`RequestView::port`]), else the
//! scheme's default.
//!
//! Not supported, on purpose: regexes `regex-lite` cannot compile (PCRE look-around,
//! back-references, possessive quantifiers, Unicode classes) or that compile to more than
//! [`MAX_REGEX_NFA_BYTES`]. Document validation refuses them ([`check_path`],
//! [`check_header_values`]), as Kong refuses regexes PCRE cannot compile; should one reach
//! [`Router::compile`] anyway, its path never matches and [`Router::unsupported`] lists it.
//!
//! Cost per request: a `:path` longer than [`MAX_REQUEST_PATH_BYTES`] is answered 414 before
//! anything else; a regex's search time is its compiled size times the path's length, both
//! bounded.

pub(crate) mod path;

use crate::document::ids::split_route_id;
use crate::document::{ConfigDocument, Protocol};
use crate::limits::{MAX_REGEX_NFA_BYTES, MAX_REQUEST_PATH_BYTES};
use crate::pace::{drop_all, run_to_end, sort_by, Pace};
use crate::ConfigMap;
use regex_lite::Regex;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Kong's 503 message when the matched route has no service.
pub const NO_SERVICE_MESSAGE: &str = "no Service found with those values";

/// Kong's 503 message when the upstream a service names has no target to send to (Kong 3.9.x
/// `kong/runloop/balancer/init.lua`: "No peers are available" from the ring-balancer).
pub const NO_PEER_MESSAGE: &str = "failure to get a peer from the ring-balancer";

/// Kong's 404 message when no route matches.
pub const NO_ROUTE_MESSAGE: &str = "no Route matched with those values";

/// Kong's 426 message when an `https`-only route is requested over plain HTTP.
pub const HTTPS_REQUIRED_MESSAGE: &str = "Please use HTTPS protocol";

/// Kong's 414 message (its error handler's wording) for a request path that is too long.
pub const URI_TOO_LONG_MESSAGE: &str = "URI too long";

/// What the router needs to know about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// `:method`, e.g. `GET`.
    pub method: &'a str,
    /// `Host` / `:authority`; may carry a `:port`.
    pub authority: &'a str,
    /// `:path`, query string included.
    pub path: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Request headers as `(name, value)`, names in any case; a header may repeat. Only read
    /// when some route matches on headers ([`Router::needs_headers`]).
    pub headers: &'a [(&'a str, &'a str)],
    /// The TLS SNI of an HTTPS request; a route with `snis` never matches an HTTPS request
    /// without one.
    pub sni: Option<&'a str>,
    /// The port the request arrived on (Kong's `server_port`), for a `Host` without a port;
    /// `None`: the scheme's default.
    pub port: Option<u16>,
}

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome<'a> {
    /// Send the request upstream.
    Forward(Forward<'a>),
    /// No route matched: answer 404 with [`NO_ROUTE_MESSAGE`].
    NoRoute,
    /// An `https`-only route matched a plain-HTTP request (Kong's `https_redirect_status_code`).
    HttpsRequired(HttpsRequired),
    /// The `:path` is longer than [`MAX_REQUEST_PATH_BYTES`]: answer 414 with
    /// [`URI_TOO_LONG_MESSAGE`], before any route is tried (as nginx, and so Kong, refuse a
    /// request line longer than 8 KiB).
    UriTooLong,
    /// A route matched but the request cannot be served: answer 503 with `message`. Kong
    /// answers so after the plugins' access phase (`Kong.access` for a route without a
    /// service, the runloop's `access.after` for the balancer), so the plugins of `route` run
    /// first and may answer instead (a 401 of `key-auth`).
    Unavailable {
        /// Index of the matched route in [`ConfigDocument::routes`].
        route: usize,
        /// Index of its service, when it has one.
        service: Option<usize>,
        /// The matched route's name, else its id, else its path in the input.
        route_name: String,
        /// The `message` of the `{"message": ...}` body.
        message: String,
    },
}

/// The answer to a plain-HTTP request that matched an `https`-only route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsRequired {
    /// 426 (body `{"message": HTTPS_REQUIRED_MESSAGE}`, headers `Connection: Upgrade`,
    /// `Upgrade: TLS/1.2, HTTP/1.1`), or 301/302/307/308 with `location` and no body.
    pub status: u16,
    /// `https://<host without port><original path and query>` for redirects, else `None`.
    pub location: Option<String>,
    /// The matched route's name, else its id, else its path in the input.
    pub route_name: String,
}

/// Where a matched request goes: borrowed from the router and the request (routing touches no
/// reference count and copies only what it builds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward<'a> {
    /// Index of the matched route in [`ConfigDocument::routes`].
    pub route: usize,
    /// Index of its service in [`ConfigDocument::services`].
    pub service: usize,
    /// The route's name, else its id, else its path in the input (e.g. `routes[3]`).
    pub route_name: &'a str,
    /// The service's name, else its id, else its path in the input.
    pub service_name: &'a str,
    /// The service's protocol (`http` or `https`), the scheme of the upstream request.
    pub scheme: &'static str,
    /// `host:port` to connect to (IPv6 in brackets): the router's own for a service without
    /// an upstream, built for a balanced one.
    pub upstream: Cow<'a, str>,
    /// The `:path` to send upstream, query string kept.
    pub path: String,
    /// The `Host` to send upstream: the upstream's host (with its port unless it is the
    /// service protocol's default), or the request's authority when the route preserves it.
    pub host_header: Cow<'a, str>,
    /// What Kong's debug header (`Kong-Debug: 1`) reveals (built once per route).
    pub debug: &'a KongDebug,
}

impl Forward<'_> {
    /// `scheme://host:port/path?query`, the upstream request as a URL.
    pub fn upstream_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.upstream, self.path)
    }
}

/// The ids and names Kong reveals with `allow_debug_header` and `Kong-Debug: 1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KongDebug {
    /// The route's `id`.
    pub route_id: Option<String>,
    /// The route's `name`.
    pub route_name: Option<String>,
    /// The service's `id`.
    pub service_id: Option<String>,
    /// The service's `name`.
    pub service_name: Option<String>,
}

impl KongDebug {
    /// The response headers Kong adds, for the fields that are set.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        [
            ("Kong-Route-Id", &self.route_id),
            ("Kong-Route-Name", &self.route_name),
            ("Kong-Service-Id", &self.service_id),
            ("Kong-Service-Name", &self.service_name),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }
}

/// A route, or part of one, this router cannot enforce (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Index of the route in [`ConfigDocument::routes`].
    pub route: usize,
    /// Where the route appeared in the input, e.g. `services[0].routes[1]`.
    pub path: String,
    /// What is not supported and its effect.
    pub reason: String,
}

/// The routes of one config revision, compiled for matching.
///
/// [`Router::route`] takes `&self`: the round-robin state of upstreams lives in [`Cell`]s, so a
/// `Router` is not `Sync` (each proxy-wasm worker is single-threaded and owns its own).
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Every (route, path) pair, sorted by priority: the index is the rank, lower wins.
    candidates: Vec<Candidate>,
    exact_hosts: ConfigMap<String, PathIndex>,
    /// `*.example.com` under `.example.com`.
    suffix_hosts: ConfigMap<String, PathIndex>,
    /// `example.*` under `example.`.
    prefix_hosts: ConfigMap<String, PathIndex>,
    /// Routes without hosts.
    any_host: PathIndex,
    services: Vec<CompiledService>,
    balancers: Vec<Balancer>,
    unsupported: Vec<Unsupported>,
    needs_headers: bool,
    needs_sni: bool,
    needs_port: bool,
    needs_method: bool,
    needs_scheme: bool,
    /// The candidate ranks of the request being routed, kept between requests so that
    /// routing does not allocate for them.
    scratch: RefCell<Vec<u32>>,
}

#[derive(Debug)]
struct CompiledRoute {
    index: usize,
    name: Box<str>,
    /// Its ids and names for Kong's debug header.
    debug: Box<KongDebug>,
    service: Option<usize>,
    /// `protocols` lists `https` but not `http`.
    https_only: bool,
    redirect_status: u16,
    methods: Vec<String>,
    hosts: Vec<HostMatcher>,
    /// Without a trailing dot, as compat.lua's `sni_val_transform`.
    snis: Vec<String>,
    headers: Vec<HeaderMatcher>,
    strip_path: bool,
    preserve_host: bool,
}

#[derive(Debug)]
struct Candidate {
    route: usize,
    path: PathMatcher,
}

#[derive(Debug)]
enum PathMatcher {
    Any,
    Prefix(String),
    /// Kong's `^` + the regex, and the literal text every match starts with (its key in the
    /// path index).
    Regex {
        regex: Regex,
        literal: String,
    },
}

/// Candidates of one host key, indexed by path.
#[derive(Debug, Default)]
struct PathIndex {
    /// Ranks of candidates without paths.
    pathless: Vec<u32>,
    /// Plain prefix, or a regex's literal prefix → ranks.
    prefixes: ConfigMap<String, Vec<u32>>,
    /// Distinct prefix lengths in `prefixes`, ascending.
    lengths: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` kept as `.example.com`.
    Suffix(String),
    /// `example.*` kept as `example.`.
    Prefix(String),
}

#[derive(Debug)]
struct HostMatcher {
    pattern: HostPattern,
    port: Option<u16>,
}

#[derive(Debug)]
struct HeaderMatcher {
    /// Lowercase.
    name: String,
    values: HeaderValues,
}

#[derive(Debug)]
enum HeaderValues {
    /// Lowercase; any one matches.
    Any(Vec<String>),
    /// Matched against the lowercased value, as Kong does.
    Regex(Regex),
}

#[derive(Debug)]
struct CompiledService {
    name: Box<str>,
    scheme: &'static str,
    /// Kong's `path`, `/` when unset.
    base_path: String,
    default_port: u16,
    destination: Destination,
}

#[derive(Debug)]
enum Destination {
    /// The service's own host and port, with what every request to it sends, worked out once:
    /// the `host:port` to connect to and the `Host` header (unless the route preserves it).
    Direct {
        authority: Box<str>,
        host_header: Box<str>,
    },
    Balanced(usize),
}

/// Smooth weighted round-robin over an upstream's targets with weight > 0.
#[derive(Debug)]
struct Balancer {
    host_header: Option<String>,
    targets: Vec<(String, u16, i64)>,
    current: Vec<Cell<i64>>,
    total: i64,
}

impl Balancer {
    fn pick(&self) -> Option<(&str, u16)> {
        let mut best: Option<usize> = None;
        for (i, (_, _, weight)) in self.targets.iter().enumerate() {
            let cell = &self.current[i];
            cell.set(cell.get() + weight);
            if best.is_none_or(|b| cell.get() > self.current[b].get()) {
                best = Some(i);
            }
        }
        let chosen = best?;
        let cell = &self.current[chosen];
        cell.set(cell.get() - self.total);
        let (host, port, _) = &self.targets[chosen];
        Some((host, *port))
    }
}

/// Kong's `get_priority` as a tuple: higher wins, compared field by field.
type Priority = (u8, bool, usize, bool, i64, usize);

/// A candidate and what orders it before compiling the index.
struct Ranked {
    priority: Priority,
    /// The id Kong breaks ties with (the route's, or its split group's), lowercase.
    tie: Option<String>,
    /// Document order of the route, then of the path within it.
    index: usize,
    order: usize,
    candidate: Candidate,
}

/// transform.lua `group_by_regex_or_length`: each path's group, numbered from 1 in order of
/// first appearance; every regex is in one group, prefixes by length.
fn path_groups(paths: &[String]) -> Vec<usize> {
    let mut keys: Vec<Option<usize>> = Vec::new();
    paths
        .iter()
        .map(|p| {
            let key = (!p.starts_with('~')).then_some(p.len());
            match keys.iter().position(|k| *k == key) {
                Some(i) => i + 1,
                None => {
                    keys.push(key);
                    keys.len()
                }
            }
        })
        .collect()
}

impl Router {
    /// Compiles every HTTP route of `doc`.
    pub fn compile(doc: &ConfigDocument) -> Router {
        run_to_end(Self::compile_paced(doc, &Pace::unbounded()))
    }

    /// [`Router::compile`], yielding to `pace` once per upstream, target, service, route and
    /// candidate (see [`crate::pace`]).
    pub async fn compile_paced(doc: &ConfigDocument, pace: &Pace<'_>) -> Router {
        // Each upstream's weighted targets, in document order.
        let mut weighted: Vec<Vec<(String, u16, i64)>> = vec![Vec::new(); doc.upstreams.len()];
        for t in doc.targets.iter().filter(|t| t.weight > 0) {
            pace.step().await;
            if let Some(targets) = weighted.get_mut(t.upstream) {
                targets.push((t.host.clone(), t.port, i64::from(t.weight)));
            }
        }
        let mut balancers: Vec<Balancer> = Vec::with_capacity(doc.upstreams.len());
        let mut upstream_by_name: HashMap<String, usize> = HashMap::new();
        for (u, (upstream, targets)) in doc.upstreams.iter().zip(weighted).enumerate() {
            pace.step().await;
            balancers.push(Balancer {
                host_header: upstream
                    .extra
                    .get("host_header")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                current: targets.iter().map(|_| Cell::new(0)).collect(),
                total: targets.iter().map(|t| t.2).sum(),
                targets,
            });
            upstream_by_name.insert(upstream.name.to_ascii_lowercase(), u);
        }

        let mut services = Vec::with_capacity(doc.services.len());
        for s in &doc.services {
            pace.step().await;
            services.push(CompiledService {
                name: display_name(s.name.as_deref(), s.id.given_id(), &s.path).into(),
                scheme: s.protocol.as_str(),
                base_path: s.upstream_path.clone().unwrap_or_else(|| "/".to_owned()),
                default_port: s.protocol.default_port(),
                destination: match upstream_by_name.get(&s.host.to_ascii_lowercase()) {
                    Some(&u) => Destination::Balanced(u),
                    None => Destination::Direct {
                        authority: authority(&s.host, s.port).into(),
                        host_header: host_header(&s.host, s.port, s.protocol.default_port()).into(),
                    },
                },
            });
        }

        let mut router = Router {
            routes: Vec::new(),
            candidates: Vec::new(),
            exact_hosts: ConfigMap::default(),
            suffix_hosts: ConfigMap::default(),
            prefix_hosts: ConfigMap::default(),
            any_host: PathIndex::default(),
            services,
            balancers,
            unsupported: Vec::new(),
            needs_headers: false,
            needs_sni: false,
            needs_port: false,
            needs_method: false,
            needs_scheme: false,
            scratch: RefCell::new(Vec::new()),
        };

        let mut ranked: Vec<Ranked> = Vec::new();
        for (index, route) in doc.routes.iter().enumerate() {
            pace.step().await;
            let http = route.protocols.contains(&Protocol::Http);
            let https = route.protocols.contains(&Protocol::Https);
            if !http && !https {
                continue;
            }
            // Kong builds its router without the routes of disabled services
            // (runloop/handler.lua: "routes where the services.enabled == false are not put in
            // router"): their requests go to another route, or get the 404.
            if route.service.is_some_and(|s| !doc.services[s].enabled) {
                continue;
            }
            let mut unsupported = |reason: String| {
                router.unsupported.push(Unsupported {
                    route: index,
                    path: route.path.clone(),
                    reason,
                })
            };
            let mut headers = Vec::new();
            let mut bad_header = None;
            for (name, values) in &route.headers {
                let values = match values.as_slice() {
                    // Kong lowercases the pattern too (compat.lua: `value:lower()`).
                    [one] if one.starts_with("~*") => match header_regex(&one[2..]) {
                        Ok(re) => HeaderValues::Regex(re),
                        Err(e) => {
                            bad_header = Some(format!(
                                "header {name} regex {one:?} is not supported ({e}): the route \
                                 never matches"
                            ));
                            break;
                        }
                    },
                    _ => HeaderValues::Any(values.iter().map(|v| v.to_lowercase()).collect()),
                };
                headers.push(HeaderMatcher {
                    name: name.to_ascii_lowercase(),
                    values,
                });
            }
            if let Some(reason) = bad_header {
                unsupported(reason);
                continue;
            }
            // transform.lua `split_routes_and_services_by_path`: a route whose paths fall in
            // several groups (all regexes; prefixes of one length) competes as one route per
            // group, each with an id of its own.
            let groups = path_groups(&route.paths);
            let split = groups.iter().max().is_some_and(|&g| g > 1);
            let mut paths = Vec::new();
            for (p, &group) in route.paths.iter().zip(&groups) {
                let matcher = match p.strip_prefix('~') {
                    // compat.lua: "^" .. regex, with `(?<name>` spelled `(?P<name>`.
                    Some(re) => match path_regex(re) {
                        Ok(regex) => PathMatcher::Regex {
                            regex,
                            literal: literal_prefix(re),
                        },
                        Err(e) => {
                            unsupported(format!(
                                "regex path {p:?} is not supported ({e}): this path never matches"
                            ));
                            continue;
                        }
                    },
                    None => PathMatcher::Prefix(p.clone()),
                };
                paths.push((split.then_some(group), matcher));
            }
            if !route.paths.is_empty() && paths.is_empty() {
                continue;
            }
            router.needs_headers |= !headers.is_empty();

            let hosts: Vec<HostMatcher> = route.hosts.iter().map(|h| host_matcher(h)).collect();
            router.needs_sni |= !route.snis.is_empty();
            router.needs_port |= hosts.iter().any(|h| h.port.is_some());
            router.needs_method |= !route.methods.is_empty();
            // The scheme decides HTTPS-only routes, SNI matching, and the port of a Host
            // without one (80 or 443), which only a route host with a port compares.
            router.needs_scheme |= (https && !http) || router.needs_sni || router.needs_port;
            let match_weight = [
                !route.methods.is_empty(),
                !route.hosts.is_empty(),
                !route.headers.is_empty(),
                !route.snis.is_empty(),
                !route.paths.is_empty(),
            ]
            .into_iter()
            .filter(|set| *set)
            .count() as u8;
            let plain_host_only = !hosts.is_empty()
                && hosts
                    .iter()
                    .all(|h| matches!(h.pattern, HostPattern::Exact(_)));
            let slot = router.routes.len();
            router.routes.push(CompiledRoute {
                index,
                name: display_name(route.name.as_deref(), route.id.given_id(), &route.path).into(),
                debug: Box::new(KongDebug {
                    route_id: Some(route.id.to_string()),
                    route_name: route.name.clone(),
                    service_id: route.service.map(|s| doc.services[s].id.to_string()),
                    service_name: route.service.and_then(|s| doc.services[s].name.clone()),
                }),
                service: route.service,
                https_only: https && !http,
                redirect_status: route.https_redirect_status_code,
                methods: route.methods.clone(),
                hosts,
                snis: route
                    .snis
                    .iter()
                    .map(|s| match s.strip_suffix('.') {
                        Some(t) if !t.is_empty() => t.to_owned(),
                        _ => s.clone(),
                    })
                    .collect(),
                headers,
                strip_path: route.strip_path,
                preserve_host: route.preserve_host,
            });
            if paths.is_empty() {
                paths.push((None, PathMatcher::Any));
            }
            for (order, (group, path)) in paths.into_iter().enumerate() {
                let (regex, length) = match &path {
                    PathMatcher::Any => (false, 0),
                    PathMatcher::Prefix(p) => (false, p.len()),
                    PathMatcher::Regex { .. } => (true, 0),
                };
                let priority = (
                    match_weight,
                    plain_host_only,
                    route.headers.len(),
                    regex,
                    if regex { route.regex_priority } else { 0 },
                    length,
                );
                // Equal priorities: Kong's ATC router keeps matchers in a BTreeMap keyed by
                // (priority, uuid) and tries them in reverse, so the greater id wins
                // (canonical UUIDs order as their lowercase text). A route whose id Kong would
                // draw at random has none here: such routes follow, in document order.
                let tie = route.id.kong().map(|id| match group {
                    Some(group) => split_route_id(id, group),
                    None => id.to_ascii_lowercase(),
                });
                ranked.push(Ranked {
                    priority,
                    tie,
                    index,
                    order,
                    candidate: Candidate { route: slot, path },
                });
            }
        }
        let by_rank = |a: &Ranked, b: &Ranked| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| match (&a.tie, &b.tie) {
                    (Some(x), Some(y)) => y.cmp(x),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then(a.index.cmp(&b.index))
                .then(a.order.cmp(&b.order))
        };
        let ranked = sort_by(ranked, by_rank, pace).await;

        for (rank, Ranked { candidate, .. }) in ranked.into_iter().enumerate() {
            pace.step().await;
            let rank = rank as u32;
            let route = &router.routes[candidate.route];
            if route.hosts.is_empty() {
                router.any_host.add(&candidate.path, rank);
            }
            // One entry per distinct host key (a host may be listed with several ports).
            let mut seen: Vec<&HostPattern> = Vec::new();
            for key in route.hosts.iter().map(|h| &h.pattern) {
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let index = match key {
                    HostPattern::Exact(h) => router.exact_hosts.entry(h.clone()).or_default(),
                    HostPattern::Suffix(h) => router.suffix_hosts.entry(h.clone()).or_default(),
                    HostPattern::Prefix(h) => router.prefix_hosts.entry(h.clone()).or_default(),
                };
                index.add(&candidate.path, rank);
            }
            router.candidates.push(candidate);
        }
        for index in router
            .exact_hosts
            .values_mut()
            .chain(router.suffix_hosts.values_mut())
            .chain(router.prefix_hosts.values_mut())
            .chain(std::iter::once(&mut router.any_host))
        {
            pace.step().await;
            index.finish();
        }
        router
    }

    /// Frees the router a step at a time (see [`crate::pace`]): its routes, candidates and host
    /// indices, one each.
    pub async fn dismantle(self, pace: &Pace<'_>) {
        let Router {
            routes,
            candidates,
            exact_hosts,
            suffix_hosts,
            prefix_hosts,
            any_host,
            services,
            balancers,
            unsupported,
            ..
        } = self;
        drop_all(routes, pace).await;
        drop_all(candidates, pace).await;
        drop_all(exact_hosts, pace).await;
        drop_all(suffix_hosts, pace).await;
        drop_all(prefix_hosts, pace).await;
        drop_all(any_host.prefixes, pace).await;
        drop_all(services, pace).await;
        drop_all(balancers, pace).await;
        drop_all(unsupported, pace).await;
    }

    /// How many routes can match (HTTP routes, minus those that never match in this build).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route can match.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// True when some route matches on headers: only then does [`RequestView::headers`] need
    /// to carry the request's headers.
    pub fn needs_headers(&self) -> bool {
        self.needs_headers
    }

    /// True when some route has `snis`: only then does [`RequestView::sni`] need to carry the
    /// TLS SNI (the filter reads it from the host, one call per request).
    pub fn needs_sni(&self) -> bool {
        self.needs_sni
    }

    /// True when some route host names a port: only then does [`RequestView::port`] (the
    /// listener's port, for a `Host` without one) take part in matching.
    pub fn needs_port(&self) -> bool {
        self.needs_port
    }

    /// True when some route has `methods`: otherwise [`RequestView::method`] takes no part in
    /// routing, and the filter need not read it (a host call per request).
    pub fn needs_method(&self) -> bool {
        self.needs_method
    }

    /// True when [`RequestView::scheme`] can change the outcome: some route is HTTPS-only, has
    /// `snis`, or names a port in a host (the default port depends on the scheme). Otherwise
    /// the filter need not read it.
    pub fn needs_scheme(&self) -> bool {
        self.needs_scheme
    }

    /// Routes, or parts of routes, this build cannot enforce; worth a warning in the log.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    /// Decides where `request` goes. Advances the round-robin of the chosen upstream.
    pub fn route<'a>(&'a self, request: &RequestView<'a>) -> RouteOutcome<'a> {
        // Before any work that grows with the path: normalising it, and regexes whose cost is
        // their size times its length.
        if request.path.len() > MAX_REQUEST_PATH_BYTES {
            return RouteOutcome::UriTooLong;
        }
        let https = request.scheme.eq_ignore_ascii_case("https");
        let (req_host, req_port) = split_authority(request.authority);
        let req_host: Cow<'_, str> = if req_host.bytes().any(|b| b.is_ascii_uppercase()) {
            req_host.to_ascii_lowercase().into()
        } else {
            req_host.into()
        };
        let req_port = req_port
            .or(request.port)
            .unwrap_or(if https { 443 } else { 80 });
        let (raw_path, query) = match request.path.bytes().position(|b| b == b'?') {
            // `?` is ASCII: a char boundary.
            Some(at) => request.path.split_at(at),
            None => (request.path, ""),
        };
        let path = path::normalize(raw_path);

        // Taken, not borrowed, so that a panic in between cannot poison later requests.
        let mut ranks = std::mem::take(&mut *self.scratch.borrow_mut());
        ranks.clear();
        self.gather(&req_host, &path, &mut ranks);
        ranks.sort_unstable();
        ranks.dedup();

        let mut winner = None;
        for &rank in &ranks {
            let candidate = &self.candidates[rank as usize];
            let route = &self.routes[candidate.route];
            if !route.matches(request, &req_host, req_port) {
                continue;
            }
            let matched_len = match &candidate.path {
                // atc.lua `set_upstream_uri`: without a matched path the prefix is "/", so the
                // postfix of `/` is empty and `/service` stays `/service`.
                PathMatcher::Any => 1,
                PathMatcher::Prefix(p) => p.len(),
                // atc.lua strips as many characters as the regex matched (`#matched_path`),
                // from the start: the same as the match's end unless a top-level `|` left a
                // branch unanchored.
                PathMatcher::Regex { regex, .. } => match regex.find(&path) {
                    Some(m) => m.as_str().len(),
                    None => continue,
                },
            };
            winner = Some((route, matched_len));
            break;
        }
        *self.scratch.borrow_mut() = ranks;
        let Some((route, matched_len)) = winner else {
            return RouteOutcome::NoRoute;
        };

        if route.https_only && !https {
            let location = (route.redirect_status != 426)
                .then(|| format!("https://{req_host}{}", request.path));
            return RouteOutcome::HttpsRequired(HttpsRequired {
                status: route.redirect_status,
                location,
                route_name: route.name.to_string(),
            });
        }

        let Some(service_index) = route.service else {
            return RouteOutcome::Unavailable {
                route: route.index,
                service: None,
                route_name: route.name.to_string(),
                message: NO_SERVICE_MESSAGE.to_owned(),
            };
        };
        let service = &self.services[service_index];
        let (upstream, service_host_header) = match &service.destination {
            Destination::Direct {
                authority,
                host_header,
            } => (Cow::Borrowed(&**authority), Cow::Borrowed(&**host_header)),
            Destination::Balanced(u) => {
                let balancer = &self.balancers[*u];
                match balancer.pick() {
                    Some((host, port)) => {
                        let name = balancer.host_header.as_deref().unwrap_or(host);
                        (
                            Cow::Owned(authority(host, port)),
                            Cow::Owned(host_header(name, port, service.default_port)),
                        )
                    }
                    None => {
                        return RouteOutcome::Unavailable {
                            route: route.index,
                            service: Some(service_index),
                            route_name: route.name.to_string(),
                            message: NO_PEER_MESSAGE.to_owned(),
                        }
                    }
                }
            }
        };

        let postfix = if route.strip_path {
            path::sanitize_postfix(path.get(matched_len..).unwrap_or(""))
        } else {
            ""
        };
        let joined = path::join_v0(&service.base_path, route.strip_path, postfix, &path);
        let mut upstream_path = match path::escape(&joined) {
            Cow::Owned(escaped) => escaped,
            Cow::Borrowed(_) => joined,
        };
        upstream_path.push_str(query);

        let host_header = if route.preserve_host {
            Cow::Borrowed(request.authority)
        } else {
            service_host_header
        };

        RouteOutcome::Forward(Forward {
            route: route.index,
            service: service_index,
            route_name: &route.name,
            service_name: &service.name,
            scheme: service.scheme,
            upstream,
            path: upstream_path,
            host_header,
            debug: &route.debug,
        })
    }

    /// Collects the ranks of every candidate whose host key and path could match.
    fn gather(&self, host: &str, path: &str, ranks: &mut Vec<u32>) {
        if let Some(index) = self.exact_hosts.get(host) {
            index.gather(path, ranks);
        }
        if !self.suffix_hosts.is_empty() {
            for (at, _) in host.match_indices('.') {
                if let Some(index) = self.suffix_hosts.get(&host[at..]) {
                    index.gather(path, ranks);
                }
            }
        }
        if !self.prefix_hosts.is_empty() {
            for (at, _) in host.match_indices('.') {
                if let Some(index) = self.prefix_hosts.get(&host[..=at]) {
                    index.gather(path, ranks);
                }
            }
        }
        self.any_host.gather(path, ranks);
    }
}

impl PathIndex {
    fn add(&mut self, path: &PathMatcher, rank: u32) {
        match path {
            PathMatcher::Any => self.pathless.push(rank),
            PathMatcher::Prefix(p) => self.prefixes.entry(p.clone()).or_default().push(rank),
            PathMatcher::Regex { literal, .. } => {
                self.prefixes.entry(literal.clone()).or_default().push(rank)
            }
        }
    }

    fn finish(&mut self) {
        let mut lengths: Vec<usize> = self.prefixes.keys().map(|p| p.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        self.lengths = lengths;
    }

    fn gather(&self, path: &str, ranks: &mut Vec<u32>) {
        ranks.extend_from_slice(&self.pathless);
        for &len in &self.lengths {
            if len > path.len() {
                break;
            }
            if let Some(found) = path.get(..len).and_then(|p| self.prefixes.get(p)) {
                ranks.extend_from_slice(found);
            }
        }
    }
}

impl CompiledRoute {
    /// Everything but the path, which the index already checked.
    fn matches(&self, request: &RequestView<'_>, host: &str, port: u16) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == request.method) {
            return false;
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.matches(host, port)) {
            return false;
        }
        if !self.snis.is_empty() && request.scheme.eq_ignore_ascii_case("https") {
            let sni = request.sni.map(|s| s.strip_suffix('.').unwrap_or(s));
            if !sni.is_some_and(|sni| self.snis.iter().any(|s| s == sni)) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(request.headers))
    }
}

impl HostMatcher {
    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.pattern {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            HostPattern::Prefix(prefix) => host.len() > prefix.len() && host.starts_with(prefix),
        }
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &[(&str, &str)]) -> bool {
        headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(&self.name))
            .any(|(_, value)| match &self.values {
                HeaderValues::Any(values) => values.iter().any(|v| v.eq_ignore_ascii_case(value)),
                // Kong's compat router: `any(lower(http.headers.<name>)) ~ "<regex>"`.
                HeaderValues::Regex(re) => re.is_match(&value.to_lowercase()),
            })
    }
}

fn host_matcher(host: &str) -> HostMatcher {
    let (name, port) = split_authority(host);
    let name = name.to_ascii_lowercase();
    let pattern = if let Some(rest) = name.strip_prefix('*') {
        HostPattern::Suffix(rest.to_owned())
    } else if let Some(rest) = name.strip_suffix('*') {
        HostPattern::Prefix(rest.to_owned())
    } else {
        HostPattern::Exact(name)
    };
    HostMatcher { pattern, port }
}

/// Splits `host[:port]` or `[ipv6][:port]`; the host comes back without brackets. A suffix
/// that is not a valid port stays part of the host.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(parse_port);
            return (host, port);
        }
        return (authority, None);
    }
    // Byte searches (`:` is ASCII): this runs on every request.
    match authority.bytes().rposition(|b| b == b':') {
        Some(at) if !authority.as_bytes()[..at].contains(&b':') => {
            match parse_port(&authority[at + 1..]) {
                Some(port) => (&authority[..at], Some(port)),
                None => (authority, None),
            }
        }
        _ => (authority, None),
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// IPv6 hosts in brackets, for `host:port` and `Host`.
/// `host:port` to connect to.
fn authority(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket(host))
}

/// The `Host` Kong sends upstream for `name` on `port`: the port only when it is not the
/// service protocol's default.
fn host_header(name: &str, port: u16, default_port: u16) -> String {
    if port == default_port {
        bracket(name).into_owned()
    } else {
        format!("{}:{port}", bracket(name))
    }
}

fn bracket(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

fn display_name(name: Option<&str>, id: Option<&str>, path: &str) -> String {
    name.or(id).unwrap_or(path).to_owned()
}

/// The text every match of Kong's `^<regex>` starts with: the regex up to its first
/// metacharacter (escaped punctuation counts as literal). A top-level `|` means no common
/// prefix; a quantifier takes back the character it applies to.
fn literal_prefix(regex: &str) -> String {
    if has_top_level_alternation(regex) {
        return String::new();
    }
    let mut literal = String::new();
    let mut chars = regex.chars().peekable();
    while let Some(c) = chars.next() {
        let next = match c {
            '\\' => match chars.peek() {
                Some(&e) if e.is_ascii_punctuation() => {
                    chars.next();
                    e
                }
                _ => break,
            },
            '.' | '^' | '$' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '+' | '*' | '?' => break,
            c => c,
        };
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        literal.push(next);
    }
    literal
}

fn has_top_level_alternation(regex: &str) -> bool {
    let (mut depth, mut in_class, mut escaped) = (0usize, false, false);
    for c in regex.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth = depth.saturating_sub(1),
            '|' if !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// Compiles a route's regex path (the text after `~`) as Kong's `traditional_compatible`
/// router does: anchored at the start (compat.lua: `"^" .. regex`), `(?<name>` spelled
/// `(?P<name>`, and no larger than [`MAX_REGEX_NFA_BYTES`].
pub fn path_regex(regex: &str) -> Result<Regex, String> {
    bounded_regex(&format!("^{}", regex.replace("?<", "?P<")))
}

/// Compiles a route's `~*` header value regex (the text after `~*`), lowercased as Kong does
/// (compat.lua: `value:lower()`), no larger than [`MAX_REGEX_NFA_BYTES`].
pub fn header_regex(regex: &str) -> Result<Regex, String> {
    bounded_regex(&regex.to_lowercase())
}

/// Why a route path (`/prefix` or `~regex`) cannot be used, if it cannot: the document's
/// validation refuses such a path, as Kong does.
pub fn check_path(path: &str) -> Result<(), String> {
    match path.strip_prefix('~') {
        Some(regex) => path_regex(regex).map(drop).map_err(|why| {
            format!("invalid regex {path:?}: {why}; fix it or write the path as a prefix")
        }),
        None => Ok(()),
    }
}

/// Why a route's header values cannot be used, if they cannot: a single `~*` value is a
/// regex and must compile.
pub fn check_header_values(values: &[String]) -> Result<(), String> {
    match values {
        [one] if one.starts_with("~*") => header_regex(&one[2..]).map(drop).map_err(|why| {
            format!("invalid regex {one:?}: {why}; fix it or list the values to accept")
        }),
        _ => Ok(()),
    }
}

fn bounded_regex(pattern: &str) -> Result<Regex, String> {
    regex_lite::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_NFA_BYTES)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("exceeded size limit") {
                format!(
                    "it compiles to more than {MAX_REGEX_NFA_BYTES} bytes (MAX_REGEX_NFA_BYTES), \
                     which would make every request it is tried on slow: use fewer or smaller \
                     counted repetitions such as {{1,1000}}"
                )
            } else {
                // regex-lite's message ends with the line saying what is wrong; it does not
                // support look-around, back-references, possessive quantifiers or Unicode
                // classes, which PCRE (Kong's engine) has.
                let reason = text.lines().last().unwrap_or(&text).trim();
                format!("{reason} (the filter's regex engine has no look-around, back-references, possessive quantifiers or Unicode classes)")
            }
        })
}

#[cfg(test)]
mod kong_path_fixture;
#[cfg(test)]
mod tests;
