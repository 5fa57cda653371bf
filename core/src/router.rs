//! The per-request routing decision: which route a request matches, and where it goes.
//!
//! [`Router::compile`] turns a [`ConfigDocument`] into a [`Router`] once per config revision;
//! [`Router::route`] then answers each request with a [`RouteOutcome`]: forward it (to which
//! `host:port`, with which `:path` and `Host`), or answer it with Kong's 404 or 503.
//!
//! This is a minimal subset of Kong's `traditional_compatible` router:
//! - A route matches when every field it sets matches: `methods` (exact, case-sensitive),
//!   `hosts` (case-insensitive; one leading `*.` or trailing `.*` wildcard; a route host with a
//!   `:port` only matches that port, the request's port defaulting to the scheme's), `paths`
//!   (plain prefix), and its `protocols` include the request's scheme.
//! - Among matches: more fields set (hosts, methods, paths) first, then plain hosts before
//!   wildcard hosts, then the longer matching path prefix, then higher `regex_priority`, then
//!   document order.
//! - The upstream path joins the service `path` with the request path (stripped of the matched
//!   prefix when `strip_path`) exactly as Kong's `path_handling: v0`, which is what
//!   `traditional_compatible` uses whatever the route's `path_handling` says.
//!
//! Not supported in this build, on purpose (a later router replaces this one):
//! - Regex paths (`~...`) never match; a route whose paths are all regexes never matches.
//! - Routes that set `headers` or `snis` never match: the request view carries neither, and
//!   ignoring the condition would route traffic Kong would not.
//!
//! Both are listed by [`Router::unsupported`] so the caller can log them.
//! The request path is matched as given: no percent-decoding or dot-segment normalisation.

use crate::document::{ConfigDocument, Protocol};
use std::cell::Cell;
use std::collections::HashMap;

/// Kong's 503 message when the matched route has no service.
pub const NO_SERVICE_MESSAGE: &str = "no Service found with those values";

/// Kong's 404 message when no route matches.
pub const NO_ROUTE_MESSAGE: &str = "no Route matched with those values";

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
}

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Send the request upstream.
    Forward(Forward),
    /// No route matched: answer 404 with [`NO_ROUTE_MESSAGE`].
    NoRoute,
    /// A route matched but the request cannot be served: answer 503 with `message`.
    Unavailable {
        /// The `message` of the `{"message": ...}` body.
        message: String,
    },
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Index of the matched route in [`ConfigDocument::routes`].
    pub route: usize,
    /// Index of its service in [`ConfigDocument::services`].
    pub service: usize,
    /// The route's name, else its id, else its path in the input (e.g. `routes[3]`).
    pub route_name: String,
    /// The service's name, else its id, else its path in the input.
    pub service_name: String,
    /// `host:port` to connect to (IPv6 in brackets).
    pub upstream: String,
    /// The `:path` to send upstream, query string kept.
    pub path: String,
    /// The `Host` to send upstream: the upstream's host (with its port unless it is the
    /// service protocol's default), or the request's authority when the route preserves it.
    pub host_header: String,
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
    /// Lowercased plain host (no port) → indices into `routes` of routes listing it.
    by_host: HashMap<String, Vec<usize>>,
    /// Indices into `routes` of routes without hosts or with a wildcard host.
    others: Vec<usize>,
    services: Vec<CompiledService>,
    balancers: Vec<Balancer>,
    unsupported: Vec<Unsupported>,
}

#[derive(Debug)]
struct CompiledRoute {
    index: usize,
    name: String,
    service: Option<usize>,
    http: bool,
    https: bool,
    methods: Vec<String>,
    hosts: Vec<HostMatcher>,
    /// Plain prefixes only; empty when the route sets no paths.
    paths: Vec<String>,
    /// How many of hosts, methods, paths the route sets.
    fields: u8,
    strip_path: bool,
    preserve_host: bool,
    regex_priority: i64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostRank {
    None,
    Wildcard,
    Plain,
}

#[derive(Debug)]
struct CompiledService {
    name: String,
    enabled: bool,
    /// Kong's `path`, `/` when unset.
    base_path: String,
    default_port: u16,
    destination: Destination,
}

#[derive(Debug)]
enum Destination {
    Direct { host: String, port: u16 },
    Balanced(usize),
}

/// Smooth weighted round-robin over an upstream's targets with weight > 0.
#[derive(Debug)]
struct Balancer {
    name: String,
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

impl Router {
    /// Compiles every HTTP route of `doc`.
    pub fn compile(doc: &ConfigDocument) -> Router {
        let balancers: Vec<Balancer> = doc
            .upstreams
            .iter()
            .enumerate()
            .map(|(u, upstream)| {
                let targets: Vec<(String, u16, i64)> = doc
                    .targets
                    .iter()
                    .filter(|t| t.upstream == u && t.weight > 0)
                    .map(|t| (t.host.clone(), t.port, i64::from(t.weight)))
                    .collect();
                Balancer {
                    name: upstream.name.clone(),
                    current: targets.iter().map(|_| Cell::new(0)).collect(),
                    total: targets.iter().map(|t| t.2).sum(),
                    targets,
                }
            })
            .collect();

        let services = doc
            .services
            .iter()
            .map(|s| CompiledService {
                name: display_name(s.name.as_deref(), s.id.as_deref(), &s.path),
                enabled: s.enabled,
                base_path: s.upstream_path.clone().unwrap_or_else(|| "/".to_owned()),
                default_port: s.protocol.default_port(),
                destination: match doc
                    .upstreams
                    .iter()
                    .position(|u| u.name.eq_ignore_ascii_case(&s.host))
                {
                    Some(u) => Destination::Balanced(u),
                    None => Destination::Direct {
                        host: s.host.clone(),
                        port: s.port,
                    },
                },
            })
            .collect();

        let mut router = Router {
            routes: Vec::new(),
            by_host: HashMap::new(),
            others: Vec::new(),
            services,
            balancers,
            unsupported: Vec::new(),
        };

        for (index, route) in doc.routes.iter().enumerate() {
            let http = route.protocols.contains(&Protocol::Http);
            let https = route.protocols.contains(&Protocol::Https);
            if !http && !https {
                continue;
            }
            let mut unsupported = |reason: String| {
                router.unsupported.push(Unsupported {
                    route: index,
                    path: route.path.clone(),
                    reason,
                })
            };
            if !route.headers.is_empty() {
                unsupported("matching on headers is not supported: the route never matches".into());
                continue;
            }
            if !route.snis.is_empty() {
                unsupported("matching on snis is not supported: the route never matches".into());
                continue;
            }
            let (regexes, paths): (Vec<&String>, Vec<&String>) =
                route.paths.iter().partition(|p| p.starts_with('~'));
            if !regexes.is_empty() {
                let effect = if paths.is_empty() {
                    "the route never matches"
                } else {
                    "only its plain paths match"
                };
                unsupported(format!(
                    "regex paths are not supported ({}): {effect}",
                    regexes
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if paths.is_empty() {
                    continue;
                }
            }
            let hosts: Vec<HostMatcher> = route.hosts.iter().map(|h| host_matcher(h)).collect();
            let fields = [
                !route.hosts.is_empty(),
                !route.methods.is_empty(),
                !route.paths.is_empty(),
            ]
            .into_iter()
            .filter(|set| *set)
            .count() as u8;

            let slot = router.routes.len();
            let mut in_others = hosts.is_empty();
            for host in &hosts {
                match &host.pattern {
                    HostPattern::Exact(name) => {
                        let list = router.by_host.entry(name.clone()).or_default();
                        if list.last() != Some(&slot) {
                            list.push(slot);
                        }
                    }
                    _ => in_others = true,
                }
            }
            if in_others {
                router.others.push(slot);
            }
            router.routes.push(CompiledRoute {
                index,
                name: display_name(route.name.as_deref(), route.id.as_deref(), &route.path),
                service: route.service,
                http,
                https,
                methods: route.methods.clone(),
                hosts,
                paths: paths.into_iter().cloned().collect(),
                fields,
                strip_path: route.strip_path,
                preserve_host: route.preserve_host,
                regex_priority: route.regex_priority,
            });
        }
        router
    }

    /// How many routes can match (HTTP routes, minus those never matching in this build).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route can match.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes, or parts of routes, this build cannot enforce; worth a warning in the log.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    /// Decides where `request` goes. Advances the round-robin of the chosen upstream.
    pub fn route(&self, request: &RequestView<'_>) -> RouteOutcome {
        let https = request.scheme.eq_ignore_ascii_case("https");
        let (req_host, req_port) = split_authority(request.authority);
        let req_host = req_host.to_ascii_lowercase();
        let req_port = req_port.unwrap_or(if https { 443 } else { 80 });
        let (path, query) = match request.path.find('?') {
            Some(at) => request.path.split_at(at),
            None => (request.path, ""),
        };

        let candidates = self
            .by_host
            .get(&req_host)
            .into_iter()
            .flatten()
            .chain(&self.others);
        let mut best: Option<(Priority, &CompiledRoute, usize)> = None;
        for &slot in candidates {
            let route = &self.routes[slot];
            let Some((priority, prefix_len)) =
                route.matches(request, https, &req_host, req_port, path)
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _, _)| priority > *b) {
                best = Some((priority, route, prefix_len));
            }
        }
        let Some((_, route, prefix_len)) = best else {
            return RouteOutcome::NoRoute;
        };

        let Some(service_index) = route.service else {
            return RouteOutcome::Unavailable {
                message: NO_SERVICE_MESSAGE.to_owned(),
            };
        };
        let service = &self.services[service_index];
        if !service.enabled {
            return RouteOutcome::Unavailable {
                message: format!("service {} is disabled", service.name),
            };
        }
        let (host, port) = match &service.destination {
            Destination::Direct { host, port } => (host.as_str(), *port),
            Destination::Balanced(u) => {
                let balancer = &self.balancers[*u];
                match balancer.pick() {
                    Some(target) => target,
                    None => {
                        return RouteOutcome::Unavailable {
                            message: format!(
                                "no healthy upstream targets for upstream {}",
                                balancer.name
                            ),
                        }
                    }
                }
            }
        };

        let postfix = if route.strip_path {
            sanitize_postfix(&path[prefix_len..])
        } else {
            ""
        };
        let mut upstream_path = join_path_v0(&service.base_path, route.strip_path, postfix, path);
        upstream_path.push_str(query);

        let host_header = if route.preserve_host {
            request.authority.to_owned()
        } else if port == service.default_port {
            bracket(host).into_owned()
        } else {
            format!("{}:{port}", bracket(host))
        };

        RouteOutcome::Forward(Forward {
            route: route.index,
            service: service_index,
            route_name: route.name.clone(),
            service_name: service.name.clone(),
            upstream: format!("{}:{port}", bracket(host)),
            path: upstream_path,
            host_header,
        })
    }
}

/// Higher is better; compared field by field.
type Priority = (u8, HostRank, usize, i64, std::cmp::Reverse<usize>);

impl CompiledRoute {
    /// The route's priority for this request and the length of the matched path prefix, or
    /// `None` when it does not match.
    fn matches(
        &self,
        request: &RequestView<'_>,
        https: bool,
        host: &str,
        port: u16,
        path: &str,
    ) -> Option<(Priority, usize)> {
        if !(if https { self.https } else { self.http }) {
            return None;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == request.method) {
            return None;
        }
        let host_rank = if self.hosts.is_empty() {
            HostRank::None
        } else {
            self.hosts.iter().filter_map(|h| h.rank(host, port)).max()?
        };
        let prefix_len = if self.paths.is_empty() {
            0
        } else {
            self.paths
                .iter()
                .filter(|p| path.starts_with(p.as_str()))
                .map(|p| p.len())
                .max()?
        };
        Some((
            (
                self.fields,
                host_rank,
                prefix_len,
                self.regex_priority,
                std::cmp::Reverse(self.index),
            ),
            prefix_len,
        ))
    }
}

impl HostMatcher {
    fn rank(&self, host: &str, port: u16) -> Option<HostRank> {
        if self.port.is_some_and(|p| p != port) {
            return None;
        }
        match &self.pattern {
            HostPattern::Exact(name) => (name == host).then_some(HostRank::Plain),
            HostPattern::Suffix(suffix) => {
                (host.len() > suffix.len() && host.ends_with(suffix)).then_some(HostRank::Wildcard)
            }
            HostPattern::Prefix(prefix) => (host.len() > prefix.len() && host.starts_with(prefix))
                .then_some(HostRank::Wildcard),
        }
    }
}

fn host_matcher(host: &str) -> HostMatcher {
    let (name, port) = split_authority(host);
    let name = name.to_ascii_lowercase();
    let pattern = if let Some(rest) = name.strip_prefix("*.") {
        HostPattern::Suffix(format!(".{rest}"))
    } else if let Some(rest) = name.strip_suffix(".*") {
        HostPattern::Prefix(format!("{rest}."))
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
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match parse_port(port) {
            Some(port) => (host, Some(port)),
            None => (authority, None),
        },
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
fn bracket(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

fn display_name(name: Option<&str>, id: Option<&str>, path: &str) -> String {
    name.or(id).unwrap_or(path).to_owned()
}

/// Kong's `sanitize_uri_postfix`: a remaining path starting with `.`/`..` segments loses them.
fn sanitize_postfix(postfix: &str) -> &str {
    match postfix {
        "." | ".." => "",
        _ => postfix
            .strip_prefix("./")
            .or_else(|| postfix.strip_prefix("../"))
            .unwrap_or(postfix),
    }
}

/// Kong's `get_upstream_uri_v0`: joins the service path `base` with the request path
/// (`postfix` is what remains after the matched prefix when stripping; `request` is the full
/// request path without its query).
fn join_path_v0(base: &str, strip_path: bool, postfix: &str, request: &str) -> String {
    let request_ends_with_slash = request.ends_with('/');
    if let Some(trimmed) = base.strip_suffix('/') {
        if !strip_path {
            // The request path without its leading slash, after the base's own.
            return format!("{base}{}", request.strip_prefix('/').unwrap_or(request));
        }
        if postfix.is_empty() {
            if base == "/" {
                "/".to_owned()
            } else if request_ends_with_slash {
                base.to_owned()
            } else {
                trimmed.to_owned()
            }
        } else if postfix.starts_with('/') {
            format!("{trimmed}{postfix}")
        } else {
            format!("{base}{postfix}")
        }
    } else if !strip_path {
        if request == "/" {
            base.to_owned()
        } else {
            format!("{base}{request}")
        }
    } else if postfix.is_empty() {
        if request.len() > 1 && request_ends_with_slash {
            format!("{base}/")
        } else {
            base.to_owned()
        }
    } else if postfix.starts_with('/') {
        format!("{base}{postfix}")
    } else {
        format!("{base}/{postfix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn router(body: Value) -> Router {
        let mut map = body.as_object().cloned().expect("object");
        map.insert("_format_version".into(), json!("3.0"));
        let loaded = ConfigDocument::from_json(&Value::Object(map)).expect("valid document");
        Router::compile(&loaded.document)
    }

    fn request<'a>(method: &'a str, authority: &'a str, path: &'a str) -> RequestView<'a> {
        RequestView {
            method,
            authority,
            path,
            scheme: "http",
        }
    }

    fn forward(router: &Router, req: RequestView<'_>) -> Forward {
        match router.route(&req) {
            RouteOutcome::Forward(f) => f,
            other => panic!("expected a forward for {req:?}, got {other:?}"),
        }
    }

    /// The name of the route `req` matches, or "-" for NoRoute.
    fn matched(router: &Router, method: &str, authority: &str, path: &str) -> String {
        match router.route(&request(method, authority, path)) {
            RouteOutcome::Forward(f) => f.route_name,
            RouteOutcome::NoRoute => "-".to_owned(),
            RouteOutcome::Unavailable { message } => format!("503 {message}"),
        }
    }

    /// One service per route, so each route's matchers are given as-is.
    fn routes(routes: Value) -> Router {
        router(
            json!({"services": [{"name": "svc", "url": "http://backend:8080", "routes": routes}]}),
        )
    }

    #[test]
    fn methods_match_exactly() {
        let r = routes(json!([{"name": "get", "methods": ["GET", "HEAD"]}]));
        assert_eq!(matched(&r, "GET", "a", "/"), "get");
        assert_eq!(matched(&r, "HEAD", "a", "/x"), "get");
        assert_eq!(matched(&r, "POST", "a", "/"), "-");
        assert_eq!(matched(&r, "get", "a", "/"), "-");
    }

    #[test]
    fn hosts_are_case_insensitive_and_ignore_the_request_port() {
        let r = routes(json!([{"name": "h", "hosts": ["Example.com"]}]));
        assert_eq!(matched(&r, "GET", "example.com", "/"), "h");
        assert_eq!(matched(&r, "GET", "EXAMPLE.COM:8000", "/"), "h");
        assert_eq!(matched(&r, "GET", "other.com", "/"), "-");
        assert_eq!(matched(&r, "GET", "a.example.com", "/"), "-");
    }

    #[test]
    fn a_route_host_with_a_port_needs_that_port() {
        let r = routes(json!([
            {"name": "p8000", "hosts": ["example.com:8000"]},
            {"name": "p80", "hosts": ["plain.com:80"]},
        ]));
        assert_eq!(matched(&r, "GET", "example.com:8000", "/"), "p8000");
        assert_eq!(matched(&r, "GET", "example.com:8001", "/"), "-");
        assert_eq!(matched(&r, "GET", "example.com", "/"), "-");
        // Without a port the request's port is the scheme's default.
        assert_eq!(matched(&r, "GET", "plain.com", "/"), "p80");
        assert_eq!(matched(&r, "GET", "plain.com:80", "/"), "p80");
        let https = RequestView {
            scheme: "https",
            ..request("GET", "plain.com", "/")
        };
        assert_eq!(r.route(&https), RouteOutcome::NoRoute);
    }

    #[test]
    fn wildcard_hosts() {
        let r = routes(json!([
            {"name": "leading", "hosts": ["*.example.com"]},
            {"name": "trailing", "hosts": ["example.*"]},
            {"name": "ported", "hosts": ["*.ported.com:9000"]},
        ]));
        assert_eq!(matched(&r, "GET", "a.example.com", "/"), "leading");
        assert_eq!(matched(&r, "GET", "a.b.EXAMPLE.com:1", "/"), "leading");
        assert_eq!(matched(&r, "GET", "example.com", "/"), "trailing");
        assert_eq!(matched(&r, "GET", "example.org", "/"), "trailing");
        assert_eq!(matched(&r, "GET", ".example.com", "/"), "-");
        assert_eq!(matched(&r, "GET", "notexample.com", "/"), "-");
        assert_eq!(matched(&r, "GET", "x.ported.com:9000", "/"), "ported");
        assert_eq!(matched(&r, "GET", "x.ported.com", "/"), "-");
    }

    #[test]
    fn ipv6_authorities() {
        let r = routes(json!([{"name": "v6", "hosts": ["[::1]"]}]));
        assert_eq!(matched(&r, "GET", "[::1]:8000", "/"), "v6");
        assert_eq!(matched(&r, "GET", "[::1]", "/"), "v6");
        assert_eq!(matched(&r, "GET", "[::2]", "/"), "-");
    }

    #[test]
    fn paths_are_plain_prefixes() {
        let r = routes(json!([{"name": "p", "paths": ["/api", "/v2/"]}]));
        assert_eq!(matched(&r, "GET", "a", "/api"), "p");
        assert_eq!(matched(&r, "GET", "a", "/api/x?q=1"), "p");
        assert_eq!(matched(&r, "GET", "a", "/apix"), "p");
        assert_eq!(matched(&r, "GET", "a", "/v2/x"), "p");
        assert_eq!(matched(&r, "GET", "a", "/v2"), "-");
        assert_eq!(matched(&r, "GET", "a", "/other"), "-");
        // The query string is not part of the path.
        assert_eq!(matched(&r, "GET", "a", "/x?/api"), "-");
    }

    #[test]
    fn every_set_field_must_match() {
        let r = routes(json!([
            {"name": "all", "hosts": ["a.com"], "methods": ["POST"], "paths": ["/x"]},
        ]));
        assert_eq!(matched(&r, "POST", "a.com", "/x/1"), "all");
        assert_eq!(matched(&r, "GET", "a.com", "/x/1"), "-");
        assert_eq!(matched(&r, "POST", "b.com", "/x/1"), "-");
        assert_eq!(matched(&r, "POST", "a.com", "/y"), "-");
    }

    #[test]
    fn regex_paths_headers_and_snis_are_unsupported() {
        let r = routes(json!([
            {"name": "regex", "paths": ["~/users/\\d+$"]},
            {"name": "mixed", "paths": ["~/re/\\d+$", "/plain"]},
            {"name": "headers", "headers": {"x-version": ["1"]}},
            {"name": "snis", "protocols": ["https"], "snis": ["a.com"]},
        ]));
        assert_eq!(r.len(), 1);
        assert_eq!(matched(&r, "GET", "a", "/users/1"), "-");
        assert_eq!(matched(&r, "GET", "a", "/re/1"), "-");
        assert_eq!(matched(&r, "GET", "a", "/plain/1"), "mixed");
        let notes: Vec<(usize, &str)> = r
            .unsupported()
            .iter()
            .map(|u| (u.route, u.path.as_str()))
            .collect();
        assert_eq!(
            notes,
            [
                (0, "services[0].routes[0]"),
                (1, "services[0].routes[1]"),
                (2, "services[0].routes[2]"),
                (3, "services[0].routes[3]"),
            ]
        );
        assert!(r.unsupported()[0].reason.contains("never matches"));
        assert!(r.unsupported()[1].reason.contains("only its plain paths"));
    }

    #[test]
    fn https_only_route_does_not_answer_http() {
        let r = routes(json!([{"name": "secure", "protocols": ["https"], "paths": ["/"]}]));
        assert_eq!(matched(&r, "GET", "a", "/"), "-");
        let https = RequestView {
            scheme: "https",
            ..request("GET", "a", "/")
        };
        assert_eq!(forward(&r, https).route_name, "secure");
    }

    #[test]
    fn non_http_routes_are_not_compiled() {
        let r = router(json!({"services": [{"url": "tcp://db:5432", "routes": [
            {"protocols": ["tcp"], "destinations": [{"port": 5432}]}
        ]}]}));
        assert!(r.is_empty());
        assert!(r.unsupported().is_empty());
        assert_eq!(r.route(&request("GET", "a", "/")), RouteOutcome::NoRoute);
    }

    #[test]
    fn more_fields_win() {
        let r = routes(json!([
            {"name": "path", "paths": ["/api/long/prefix"]},
            {"name": "host+path", "hosts": ["a.com"], "paths": ["/api"]},
            {"name": "host+method+path", "hosts": ["*.com"], "methods": ["GET"], "paths": ["/"]},
        ]));
        assert_eq!(
            matched(&r, "GET", "a.com", "/api/long/prefix"),
            "host+method+path"
        );
        assert_eq!(
            matched(&r, "POST", "a.com", "/api/long/prefix"),
            "host+path"
        );
        assert_eq!(matched(&r, "POST", "b.com", "/api/long/prefix"), "path");
    }

    #[test]
    fn plain_hosts_beat_wildcards_before_path_length() {
        let r = routes(json!([
            {"name": "wild", "hosts": ["*.example.com"], "paths": ["/api/v1"]},
            {"name": "plain", "hosts": ["api.example.com"], "paths": ["/"]},
        ]));
        assert_eq!(matched(&r, "GET", "api.example.com", "/api/v1/x"), "plain");
        assert_eq!(matched(&r, "GET", "www.example.com", "/api/v1/x"), "wild");
    }

    #[test]
    fn longer_prefix_then_regex_priority_then_document_order() {
        let r = routes(json!([
            {"name": "short", "paths": ["/a"], "regex_priority": 10},
            {"name": "long", "paths": ["/a/b"]},
            {"name": "first", "paths": ["/c"]},
            {"name": "second", "paths": ["/c"]},
            {"name": "low", "paths": ["/d"], "regex_priority": 1},
            {"name": "high", "paths": ["/d"], "regex_priority": 2},
        ]));
        assert_eq!(matched(&r, "GET", "x", "/a/b/c"), "long");
        assert_eq!(matched(&r, "GET", "x", "/a/c"), "short");
        assert_eq!(matched(&r, "GET", "x", "/c"), "first");
        assert_eq!(matched(&r, "GET", "x", "/d"), "high");
    }

    #[test]
    fn a_route_listing_several_hosts_uses_its_best_match() {
        let r = routes(json!([
            {"name": "both", "hosts": ["*.a.com", "x.a.com"]},
            {"name": "wild", "hosts": ["*.a.com"], "regex_priority": 5},
        ]));
        assert_eq!(matched(&r, "GET", "x.a.com", "/"), "both");
        assert_eq!(matched(&r, "GET", "y.a.com", "/"), "wild");
    }

    #[test]
    fn names_fall_back_to_id_then_path() {
        let r = router(json!({
            "services": [{"id": "svc-id", "url": "http://b"}],
            "routes": [
                {"id": "route-id", "service": {"id": "svc-id"}, "paths": ["/id"]},
                {"service": {"id": "svc-id"}, "paths": ["/anon"]},
            ]
        }));
        let f = forward(&r, request("GET", "a", "/id"));
        assert_eq!((f.route, f.service), (0, 0));
        assert_eq!(f.route_name, "route-id");
        assert_eq!(f.service_name, "svc-id");
        assert_eq!(
            forward(&r, request("GET", "a", "/anon")).route_name,
            "routes[1]"
        );
    }

    fn upstream_path(
        service_path: Option<&str>,
        route_path: &str,
        strip: bool,
        req: &str,
    ) -> String {
        let mut service = json!({"name": "s", "host": "backend", "routes": [
            {"paths": [route_path], "strip_path": strip}
        ]});
        if let Some(p) = service_path {
            service["path"] = json!(p);
        }
        let r = router(json!({ "services": [service] }));
        forward(&r, request("GET", "a", req)).path
    }

    #[test]
    fn kong_doc_path_examples() {
        // Kong's proxy guide, path_handling v0 (the only one traditional_compatible uses).
        assert_eq!(
            upstream_path(Some("/s"), "/fv0", false, "/fv0req"),
            "/s/fv0req"
        );
        assert_eq!(upstream_path(Some("/s"), "/tv0", true, "/tv0req"), "/s/req");
        assert_eq!(
            upstream_path(Some("/s"), "/fv0/", false, "/fv0/req"),
            "/s/fv0/req"
        );
        assert_eq!(
            upstream_path(Some("/s"), "/tv0/", true, "/tv0/req"),
            "/s/req"
        );
    }

    #[test]
    fn service_path_joining() {
        assert_eq!(upstream_path(Some("/v1"), "/api", true, "/api/x"), "/v1/x");
        assert_eq!(upstream_path(Some("/v1"), "/api", true, "/api"), "/v1");
        assert_eq!(upstream_path(Some("/v1"), "/api", true, "/api/"), "/v1/");
        assert_eq!(upstream_path(Some("/v1/"), "/api", true, "/api/"), "/v1/");
        assert_eq!(upstream_path(Some("/v1/"), "/api/", true, "/api/"), "/v1/");
        assert_eq!(upstream_path(Some("/v1/"), "/api", true, "/api"), "/v1");
        assert_eq!(upstream_path(Some("/v1/"), "/api", true, "/api/x"), "/v1/x");
        assert_eq!(
            upstream_path(Some("/v1/"), "/api/", true, "/api/x"),
            "/v1/x"
        );
        assert_eq!(
            upstream_path(Some("/v1/"), "/api", false, "/api/x"),
            "/v1/api/x"
        );
        assert_eq!(upstream_path(Some("/v1"), "/", false, "/"), "/v1");
        assert_eq!(upstream_path(None, "/api", true, "/api"), "/");
        assert_eq!(upstream_path(None, "/api", true, "/api/x"), "/x");
        assert_eq!(upstream_path(None, "/api", true, "/apix"), "/x");
        assert_eq!(upstream_path(None, "/api", false, "/api/x"), "/api/x");
        assert_eq!(upstream_path(None, "/", true, "/"), "/");
        assert_eq!(upstream_path(None, "/api/", true, "/api/./x"), "/x");
    }

    #[test]
    fn query_string_is_kept() {
        assert_eq!(
            upstream_path(Some("/v1"), "/api", true, "/api/x?a=1&b=/api"),
            "/v1/x?a=1&b=/api"
        );
        assert_eq!(upstream_path(None, "/api", true, "/api?a=1"), "/?a=1");
        assert_eq!(upstream_path(None, "/api", false, "/api?"), "/api?");
    }

    #[test]
    fn upstream_address_and_host_header() {
        let r = router(json!({"services": [
            {"name": "plain", "url": "http://backend:8080", "routes": [{"paths": ["/plain"]}]},
            {"name": "default", "url": "http://backend", "routes": [{"paths": ["/default"]}]},
            {"name": "tls", "url": "https://secure.example", "routes": [
                {"paths": ["/tls"]},
                {"paths": ["/keep"], "preserve_host": true},
            ]},
            {"name": "v6", "url": "http://[::1]:9000", "routes": [{"paths": ["/v6"]}]},
        ]}));
        let f = forward(&r, request("GET", "front.com:8000", "/plain"));
        assert_eq!(
            (f.upstream.as_str(), f.host_header.as_str()),
            ("backend:8080", "backend:8080")
        );
        let f = forward(&r, request("GET", "front.com", "/default"));
        assert_eq!(
            (f.upstream.as_str(), f.host_header.as_str()),
            ("backend:80", "backend")
        );
        let f = forward(&r, request("GET", "front.com", "/tls"));
        assert_eq!(
            (f.upstream.as_str(), f.host_header.as_str()),
            ("secure.example:443", "secure.example")
        );
        let f = forward(&r, request("GET", "Front.com:8000", "/keep"));
        assert_eq!(
            (f.upstream.as_str(), f.host_header.as_str()),
            ("secure.example:443", "Front.com:8000")
        );
        let f = forward(&r, request("GET", "front.com", "/v6"));
        assert_eq!(
            (f.upstream.as_str(), f.host_header.as_str()),
            ("[::1]:9000", "[::1]:9000")
        );
    }

    #[test]
    fn weighted_round_robin_over_targets() {
        let r = router(json!({
            "services": [{"name": "s", "host": "pool", "routes": [{"paths": ["/"]}]}],
            "upstreams": [{"name": "pool", "targets": [
                {"target": "10.0.0.1:8001", "weight": 100},
                {"target": "10.0.0.2:8002", "weight": 50},
                {"target": "10.0.0.3:8003", "weight": 0},
            ]}],
        }));
        let picks: Vec<String> = (0..300)
            .map(|_| forward(&r, request("GET", "a", "/")).upstream)
            .collect();
        let count = |t: &str| picks.iter().filter(|p| *p == t).count();
        assert_eq!(count("10.0.0.1:8001"), 200);
        assert_eq!(count("10.0.0.2:8002"), 100);
        assert_eq!(count("10.0.0.3:8003"), 0);
        // Smooth: the heavier target never runs more than twice in a row.
        assert_eq!(
            &picks[..3],
            ["10.0.0.1:8001", "10.0.0.2:8002", "10.0.0.1:8001"]
        );
        // The cycle starts over; the Host header names the chosen target.
        let next: Vec<String> = (0..2)
            .map(|_| forward(&r, request("GET", "a", "/")).host_header)
            .collect();
        assert_eq!(next, ["10.0.0.1:8001", "10.0.0.2:8002"]);
    }

    #[test]
    fn upstream_without_usable_targets_is_unavailable() {
        let r = router(json!({
            "services": [
                {"name": "s", "host": "pool", "routes": [{"paths": ["/pool"]}]},
                {"name": "e", "host": "empty", "routes": [{"paths": ["/empty"]}]},
            ],
            "upstreams": [
                {"name": "pool", "targets": [{"target": "10.0.0.1", "weight": 0}]},
                {"name": "empty"},
            ],
        }));
        for (path, name) in [("/pool", "pool"), ("/empty", "empty")] {
            assert_eq!(
                r.route(&request("GET", "a", path)),
                RouteOutcome::Unavailable {
                    message: format!("no healthy upstream targets for upstream {name}")
                }
            );
        }
    }

    #[test]
    fn disabled_service_is_unavailable() {
        let r = router(json!({"services": [
            {"name": "off", "url": "http://b", "enabled": false, "routes": [{"paths": ["/"]}]}
        ]}));
        assert_eq!(
            r.route(&request("GET", "a", "/")),
            RouteOutcome::Unavailable {
                message: "service off is disabled".into()
            }
        );
    }

    #[test]
    fn route_without_service_is_unavailable() {
        let r = router(json!({"routes": [{"name": "lonely", "paths": ["/"]}]}));
        assert_eq!(
            r.route(&request("GET", "a", "/")),
            RouteOutcome::Unavailable {
                message: NO_SERVICE_MESSAGE.into()
            }
        );
    }

    #[test]
    fn no_route() {
        let empty = router(json!({}));
        assert!(empty.is_empty());
        assert_eq!(
            empty.route(&request("GET", "a", "/")),
            RouteOutcome::NoRoute
        );
        let r = routes(json!([{"hosts": ["a.com"]}]));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.route(&request("GET", "b.com", "/")),
            RouteOutcome::NoRoute
        );
    }

    #[test]
    fn hosts_index_and_hostless_routes_combine() {
        let r = routes(json!([
            {"name": "anyhost", "paths": ["/"]},
            {"name": "a", "hosts": ["a.com"]},
            {"name": "a2", "hosts": ["a.com", "b.com"], "paths": ["/x"]},
        ]));
        assert_eq!(matched(&r, "GET", "a.com", "/"), "a");
        assert_eq!(matched(&r, "GET", "a.com", "/x"), "a2");
        assert_eq!(matched(&r, "GET", "b.com", "/x"), "a2");
        assert_eq!(matched(&r, "GET", "b.com", "/y"), "anyhost");
        assert_eq!(matched(&r, "GET", "c.com", "/x"), "anyhost");
    }
}
