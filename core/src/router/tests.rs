use super::*;
use crate::document::ids::kong_id;
use serde_json::{json, Value};

pub(super) fn router(body: Value) -> Router {
    let mut map = body.as_object().cloned().expect("object");
    map.insert("_format_version".into(), json!("3.0"));
    let loaded = ConfigDocument::from_json(&Value::Object(map)).expect("valid document");
    Router::compile(&loaded.document)
}

pub(super) fn request<'a>(method: &'a str, authority: &'a str, path: &'a str) -> RequestView<'a> {
    RequestView {
        method,
        authority,
        path,
        scheme: "http",
        headers: &[],
        sni: None,
        port: None,
    }
}

pub(super) fn forward<'a>(router: &'a Router, req: RequestView<'a>) -> Forward<'a> {
    match router.route(&req) {
        RouteOutcome::Forward(f) => f,
        other => panic!("expected a forward for {req:?}, got {other:?}"),
    }
}

/// The name of the route `req` matches, or "-" for NoRoute.
fn matched(router: &Router, method: &str, authority: &str, path: &str) -> String {
    match router.route(&request(method, authority, path)) {
        RouteOutcome::Forward(f) => f.route_name.to_string(),
        RouteOutcome::NoRoute => "-".to_owned(),
        RouteOutcome::UriTooLong => "414".to_owned(),
        RouteOutcome::Unavailable { message, .. } => format!("503 {message}"),
        RouteOutcome::HttpsRequired(h) => format!("{} {}", h.status, h.route_name),
    }
}

/// One service per route, so each route's matchers are given as-is.
fn routes(routes: Value) -> Router {
    router(json!({"services": [{"name": "svc", "url": "http://backend:8080", "routes": routes}]}))
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
        {"paths": ["/c"], "tags": ["first"]},
        {"paths": ["/c"], "tags": ["second"]},
        {"name": "low", "paths": ["/d"], "regex_priority": 1,
         "id": "00000000-0000-4000-8000-000000000002"},
        {"name": "high", "paths": ["/d"], "regex_priority": 2,
         "id": "00000000-0000-4000-8000-000000000001"},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/a/b/c"), "long");
    assert_eq!(matched(&r, "GET", "x", "/a/c"), "short");
    // Routes without a name or id (Kong would draw random ids): document order.
    assert_eq!(matched(&r, "GET", "x", "/c"), "services[0].routes[2]");
    // Kong's get_priority counts regex_priority for regex paths only: "low" and "high" tie,
    // and the greater id wins.
    assert_eq!(matched(&r, "GET", "x", "/d"), "low");
}

#[test]
fn equal_priorities_go_to_the_greater_id_kong_generates_from_the_name() {
    // Kong 3.9.x: "first" gets 2ccad8ae-…, "second" 8b279206-… (UUIDv5 of the names).
    assert!(kong_id("routes", "second") > kong_id("routes", "first"));
    let r = routes(json!([
        {"name": "first", "paths": ["/c"]},
        {"name": "second", "paths": ["/c"]},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/c"), "second");
    let r = routes(json!([
        {"name": "second", "paths": ["/c"]},
        {"name": "first", "paths": ["/c"]},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/c"), "second");
}

#[test]
fn split_routes_break_ties_with_the_ids_kong_gives_each_path_group() {
    // transform.lua splits a route whose paths have different lengths: group 1 is "/ab",
    // group 2 "/x"; each competes with the id uuid_v5(7f145bf9-…, "<route id>#<group>").
    let a = "00000000-0000-4000-8000-00000000000a";
    let b = "00000000-0000-4000-8000-00000000000b";
    let (a1, a2) = (split_route_id(a, 1), split_route_id(a, 2));
    let r = routes(json!([
        {"name": "a", "id": a, "paths": ["/ab", "/x"]},
        {"name": "b", "id": b, "paths": ["/x"]},
    ]));
    // "/x" of route a competes as group 2 against route b: the greater of a2 and b wins,
    // not the greater of a and b.
    assert!(a2.as_str() > b && b > a);
    assert_eq!(matched(&r, "GET", "x", "/x"), "a");
    assert_ne!(a1, a2);
    // Without a split (one group), the route's own id competes.
    let r = routes(json!([
        {"name": "a", "id": a, "paths": ["/x", "/y"]},
        {"name": "b", "id": b, "paths": ["/x"]},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/x"), "b");
}

#[test]
fn one_wildcard_host_makes_the_whole_route_a_wildcard_route() {
    // Kong's get_priority: plain_host_only is a property of the route, not of the host that
    // matched.
    let r = routes(json!([
        {"name": "both", "hosts": ["*.a.com", "x.a.com"]},
        {"name": "plain", "hosts": ["x.a.com", "z.a.com"]},
    ]));
    assert_eq!(matched(&r, "GET", "x.a.com", "/"), "plain");
    assert_eq!(matched(&r, "GET", "y.a.com", "/"), "both");
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

fn upstream_path(service_path: Option<&str>, route_path: &str, strip: bool, req: &str) -> String {
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
        (f.upstream.as_ref(), f.host_header.as_ref()),
        ("backend:8080", "backend:8080")
    );
    let f = forward(&r, request("GET", "front.com", "/default"));
    assert_eq!(
        (f.upstream.as_ref(), f.host_header.as_ref()),
        ("backend:80", "backend")
    );
    let f = forward(&r, request("GET", "front.com", "/tls"));
    assert_eq!(
        (f.upstream.as_ref(), f.host_header.as_ref()),
        ("secure.example:443", "secure.example")
    );
    let f = forward(&r, request("GET", "Front.com:8000", "/keep"));
    assert_eq!(
        (f.upstream.as_ref(), f.host_header.as_ref()),
        ("secure.example:443", "Front.com:8000")
    );
    let f = forward(&r, request("GET", "front.com", "/v6"));
    assert_eq!(
        (f.upstream.as_ref(), f.host_header.as_ref()),
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
        .map(|_| forward(&r, request("GET", "a", "/")).upstream.to_string())
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
        .map(|_| {
            forward(&r, request("GET", "a", "/"))
                .host_header
                .to_string()
        })
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
    // Kong 3.9.x balancer/init.lua: "failure to get a peer from the ring-balancer", 503.
    for (path, service) in [("/pool", 0), ("/empty", 1)] {
        assert_eq!(
            r.route(&request("GET", "a", path)),
            RouteOutcome::Unavailable {
                route: service,
                service: Some(service),
                route_name: format!("services[{service}].routes[0]"),
                message: "failure to get a peer from the ring-balancer".into()
            }
        );
    }
}

/// Kong leaves the routes of a disabled service out of its router (runloop/handler.lua;
/// spec/02-integration/09-hybrid_mode/01-sync_spec.lua expects a 404 once the service is
/// disabled): another route may take the request.
#[test]
fn routes_of_a_disabled_service_do_not_exist() {
    let r = router(json!({"services": [
        {"name": "off", "url": "http://b", "enabled": false, "routes": [{"paths": ["/api"]}]},
        {"name": "on", "url": "http://c", "routes": [{"name": "root", "paths": ["/"]}]},
    ]}));
    assert_eq!(matched(&r, "GET", "a", "/api/x"), "root");
    let r = router(json!({"services": [
        {"name": "off", "url": "http://b", "enabled": false, "routes": [{"paths": ["/"]}]}
    ]}));
    assert_eq!(r.route(&request("GET", "a", "/")), RouteOutcome::NoRoute);
}

#[test]
fn route_without_service_is_unavailable() {
    let r = router(json!({"routes": [{"name": "lonely", "paths": ["/"]}]}));
    assert_eq!(
        r.route(&request("GET", "a", "/")),
        RouteOutcome::Unavailable {
            route: 0,
            service: None,
            route_name: "lonely".into(),
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

/// A request given as a URL, the way `fallback-companion match` takes it.
fn outcome<'a>(
    router: &'a Router,
    method: &'a str,
    url: &'a str,
    headers: &'a [(&'a str, &'a str)],
) -> RouteOutcome<'a> {
    let (scheme, rest) = url.split_once("://").expect("absolute URL");
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    router.route(&RequestView {
        method,
        authority,
        path: if path.is_empty() { "/" } else { path },
        scheme,
        headers,
        sni: (scheme == "https").then_some(authority.split(':').next().unwrap_or(authority)),
        port: None,
    })
}

fn describe(outcome: RouteOutcome) -> String {
    match outcome {
        RouteOutcome::Forward(f) => f.route_name.to_string(),
        RouteOutcome::NoRoute => "-".to_owned(),
        RouteOutcome::UriTooLong => "414".to_owned(),
        RouteOutcome::Unavailable { message, .. } => format!("503 {message}"),
        RouteOutcome::HttpsRequired(h) => match h.location {
            Some(location) => format!("{} {} {location}", h.status, h.route_name),
            None => format!("{} {}", h.status, h.route_name),
        },
    }
}

/// (method, URL, headers, expected: route name, "-" for 404, or "<status> <route> [location]").
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// One group of cases: a rule of Kong's documentation, the routes it is shown with, and
/// requests with the route they must reach ("-" for Kong's 404).
struct Rule {
    /// Where Kong documents it: "Proxy guide" is docs.konghq.com/gateway/3.x/how-kong-works/
    /// routing-traffic/ ("Proxying with Kong Gateway"); "Route object" the Admin API entity
    /// reference; `get_priority` the function of kong/router/compat.lua that
    /// `traditional_compatible` ranks routes with.
    doc: &'static str,
    routes: Value,
    cases: &'static [Case],
}

#[test]
fn kong_documented_router_rules() {
    let rules = [
        Rule {
            doc: "Proxy guide, Request host: any of the hosts matches; the Host header is \
                  compared case-insensitively, without its port",
            routes: json!([{"name": "h", "hosts": ["example.com", "foo-service.com"]}]),
            cases: &[
                ("GET", "http://example.com/", &[], "h"),
                ("GET", "http://foo-service.com/x", &[], "h"),
                ("GET", "http://EXAMPLE.com:8000/", &[], "h"),
                ("GET", "http://other.com/", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Using wildcard hostnames: one leading or trailing `*`, matching \
                  any number of labels (compat.lua: suffix `=^` / prefix `^=` operators)",
            routes: json!([
                {"name": "suffix", "hosts": ["*.example.com"]},
                {"name": "prefix", "hosts": ["example.*"]},
            ]),
            cases: &[
                ("GET", "http://a.example.com/", &[], "suffix"),
                ("GET", "http://a.b.example.com/", &[], "suffix"),
                ("GET", "http://example.org/", &[], "prefix"),
                ("GET", "http://example.co.uk/", &[], "prefix"),
                ("GET", "http://example.com/", &[], "prefix"),
                ("GET", "http://myexample.com/", &[], "-"),
            ],
        },
        Rule {
            doc: "Route object, hosts: a host may carry a port; it then matches that port only \
                  (compat.lua: `http.host == h && net.dst.port == p`)",
            // Both match example.com:8000 with equal priorities: the greater id wins.
            routes: json!([
                {"name": "with-port", "hosts": ["example.com:8000"],
                 "id": "00000000-0000-4000-8000-000000000002"},
                {"name": "any-port", "hosts": ["example.com"],
                 "id": "00000000-0000-4000-8000-000000000001"},
                {"name": "wild-port", "hosts": ["*.example.net:9000"]},
            ]),
            cases: &[
                ("GET", "http://example.com:8000/", &[], "with-port"),
                ("GET", "http://example.com/", &[], "any-port"),
                ("GET", "http://example.com:9000/", &[], "any-port"),
                ("GET", "http://a.example.net:9000/", &[], "wild-port"),
                ("GET", "http://a.example.net/", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Request path: each path is a prefix of the request path",
            routes: json!([{"name": "p", "paths": ["/service", "/hello/world"]}]),
            cases: &[
                ("GET", "http://a/service", &[], "p"),
                ("GET", "http://a/service/resource?x=1", &[], "p"),
                ("GET", "http://a/hello/world/resource", &[], "p"),
                ("GET", "http://a/servicex", &[], "p"),
                ("GET", "http://a/hello", &[], "-"),
                ("GET", "http://a/Service", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Using regex in paths: `~` marks a regex, anchored at the start of \
                  the path (compat.lua prepends `^`)",
            routes: json!([{"name": "re", "paths": ["~/users/\\d+/profile$"]}]),
            cases: &[
                ("GET", "http://a/users/123/profile", &[], "re"),
                ("GET", "http://a/users/abc/profile", &[], "-"),
                ("GET", "http://a/v1/users/1/profile", &[], "-"),
                ("GET", "http://a/users/1/profile/x", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Evaluation order: regex paths by regex_priority first, then \
                  plain paths, longest first (the guide's own four routes)",
            routes: json!([
                {"name": "status", "paths": ["~/status/\\d+"], "regex_priority": 0},
                {"name": "version-status", "paths": ["~/version/\\d+/status/\\d+"], "regex_priority": 6},
                {"name": "version", "paths": ["/version"]},
                {"name": "version-any", "paths": ["/version/any/"]},
            ]),
            cases: &[
                ("GET", "http://a/version/1/status/2", &[], "version-status"),
                ("GET", "http://a/status/5", &[], "status"),
                ("GET", "http://a/version/any/x", &[], "version-any"),
                ("GET", "http://a/version/x", &[], "version"),
            ],
        },
        Rule {
            doc: "get_priority: a regex path outranks a plain one whatever its length; \
                  regex_priority is ignored on plain paths",
            routes: json!([
                {"name": "long-plain", "paths": ["/a/b/c/d"], "regex_priority": 100},
                {"name": "short-regex", "paths": ["~/a"]},
                {"name": "other-plain", "paths": ["/x"], "regex_priority": -5},
                {"name": "other-plain-2", "paths": ["/x"], "regex_priority": 5},
            ]),
            cases: &[
                ("GET", "http://a/a/b/c/d", &[], "short-regex"),
                ("GET", "http://a/x", &[], "other-plain"),
            ],
        },
        Rule {
            doc: "Proxy guide, Request HTTP method: any of the methods, exactly",
            routes: json!([{"name": "m", "methods": ["GET", "HEAD"]}]),
            cases: &[
                ("GET", "http://a/", &[], "m"),
                ("HEAD", "http://a/", &[], "m"),
                ("POST", "http://a/", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Request headers: any listed value; names and values compared \
                  case-insensitively; a single `~*` value is a regex",
            routes: json!([
                {"name": "version", "headers": {"version": ["v1", "v2"]}},
                {"name": "custom", "headers": {"X-Custom": ["~*^abc\\d$"]}},
            ]),
            cases: &[
                ("GET", "http://a/", &[("version", "v1")], "version"),
                ("GET", "http://a/", &[("Version", "V2")], "version"),
                ("GET", "http://a/", &[("version", "v3")], "-"),
                (
                    "GET",
                    "http://a/",
                    &[("version", "v3"), ("version", "v1")],
                    "version",
                ),
                ("GET", "http://a/", &[("x-custom", "ABC1")], "custom"),
                ("GET", "http://a/", &[("x-custom", "abc12")], "-"),
                ("GET", "http://a/", &[], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Matching priorities: the route matching the most fields wins \
                  (the guide's hosts vs. hosts+methods example)",
            routes: json!([
                {"name": "host", "hosts": ["example.com"]},
                {"name": "host-post", "hosts": ["example.com"], "methods": ["POST"]},
                {"name": "path-only", "paths": ["/very/long/prefix"]},
            ]),
            cases: &[
                ("GET", "http://example.com/", &[], "host"),
                ("POST", "http://example.com/", &[], "host-post"),
                ("GET", "http://example.com/very/long/prefix", &[], "host"),
                ("GET", "http://other.com/very/long/prefix", &[], "path-only"),
            ],
        },
        Rule {
            doc: "get_priority: with as many fields, plain hosts before wildcard hosts, before \
                  path length",
            routes: json!([
                {"name": "wild", "hosts": ["*.example.com"], "paths": ["/api/v1"]},
                {"name": "plain", "hosts": ["api.example.com"], "paths": ["/"]},
            ]),
            cases: &[
                ("GET", "http://api.example.com/api/v1/x", &[], "plain"),
                ("GET", "http://www.example.com/api/v1/x", &[], "wild"),
            ],
        },
        Rule {
            doc: "get_priority: with as many fields, more headers first",
            routes: json!([
                {"name": "one", "headers": {"a": ["1"]}},
                {"name": "two", "headers": {"a": ["1"], "b": ["2"]}},
            ]),
            cases: &[
                ("GET", "http://x/", &[("a", "1"), ("b", "2")], "two"),
                ("GET", "http://x/", &[("a", "1")], "one"),
            ],
        },
        Rule {
            doc: "Route object, https_redirect_status_code: an https-only route answers plain \
                  HTTP with 426, or redirects with 301/302/307/308 to https://<host><uri>; \
                  protocols are not a matching condition",
            routes: json!([
                {"name": "secure", "protocols": ["https"], "paths": ["/s"]},
                {"name": "moved", "protocols": ["https"], "paths": ["/m"], "https_redirect_status_code": 301},
                {"name": "both", "protocols": ["http", "https"], "paths": ["/b"]},
            ]),
            cases: &[
                ("GET", "http://a.com/s", &[], "426 secure"),
                ("GET", "https://a.com/s", &[], "secure"),
                (
                    "GET",
                    "http://A.com:8000/m/x?q=1",
                    &[],
                    "301 moved https://a.com/m/x?q=1",
                ),
                ("GET", "http://a.com/b", &[], "both"),
                ("GET", "https://a.com/b", &[], "both"),
            ],
        },
        Rule {
            doc: "compat.lua get_expression: snis are checked on https only \
                  (`net.protocol != \"https\" || tls.sni == …`, trailing dot ignored) and count as \
                  a field in get_priority",
            routes: json!([
                {"name": "sni", "snis": ["secure.example.com."], "paths": ["/s"]},
                {"name": "plain", "paths": ["/s"]},
            ]),
            cases: &[
                ("GET", "https://secure.example.com/s", &[], "sni"),
                ("GET", "https://other.example.com/s", &[], "plain"),
                ("GET", "http://other.example.com/s", &[], "sni"),
            ],
        },
        Rule {
            doc: "compat.lua get_expression: a `~*` header regex is lowercased, as is the \
                  header value (`any(lower(http.headers.x)) ~ value:lower()`)",
            routes: json!([{"name": "upper", "headers": {"x-id": ["~*^ID-[0-9]+$"]}}]),
            cases: &[
                ("GET", "http://a/", &[("x-id", "ID-7")], "upper"),
                ("GET", "http://a/", &[("x-id", "id-7")], "upper"),
                ("GET", "http://a/", &[("x-id", "id-x")], "-"),
            ],
        },
        Rule {
            doc: "Proxy guide, Path normalization (RFC 3986): percent-decoded unreserved \
                  characters, dot segments removed, slashes merged, before matching",
            routes: json!([{"name": "n", "paths": ["/foo/bar"]}]),
            cases: &[
                ("GET", "http://a/foo/./bar", &[], "n"),
                ("GET", "http://a/foo/baz/../bar", &[], "n"),
                ("GET", "http://a//foo//bar", &[], "n"),
                ("GET", "http://a/%66oo/bar", &[], "n"),
                ("GET", "http://a/foo%2Fbar", &[], "-"),
                ("GET", "http://a/foo/../foo/bar/x", &[], "n"),
            ],
        },
    ];
    for rule in rules {
        let r = routes(rule.routes.clone());
        for (method, url, headers, expected) in rule.cases {
            assert_eq!(
                describe(outcome(&r, method, url, headers)),
                *expected,
                "{method} {url} {headers:?} — {}",
                rule.doc
            );
        }
    }
}

/// (doc, service, route, method, url, headers, upstream_url, Host)
type UpstreamCase = (
    &'static str,
    Value,
    Value,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

#[test]
fn kong_documented_upstream_requests() {
    let cases: Vec<UpstreamCase> = vec![
        (
            "Proxy guide, The strip_path property: the matched prefix is removed",
            json!({"url": "http://backend"}),
            json!({"paths": ["/service"], "strip_path": true}),
            "GET",
            "http://a.com/service/path/to/resource",
            "http://backend:80/path/to/resource",
            "backend",
        ),
        (
            "Proxy guide, The strip_path property: false keeps the request path",
            json!({"url": "http://backend:8080/base"}),
            json!({"paths": ["/service"], "strip_path": false}),
            "GET",
            "http://a.com/service/x?y=1",
            "http://backend:8080/base/service/x?y=1",
            "backend:8080",
        ),
        (
            "Proxy guide, Using regex in paths + strip_path: the whole regex match is removed",
            json!({"url": "http://backend/v"}),
            json!({"paths": ["~/version/\\d+/"], "strip_path": true}),
            "GET",
            "http://a.com/version/12/users?id=3",
            "http://backend:80/v/users?id=3",
            "backend",
        ),
        (
            "Proxy guide, The preserve_host property: the client's Host goes upstream",
            json!({"url": "https://backend:8443"}),
            json!({"hosts": ["service.com"], "preserve_host": true}),
            "GET",
            "http://service.com/x",
            "https://backend:8443/x",
            "service.com",
        ),
        (
            "Proxy guide, The preserve_host property: false sends the service's host",
            json!({"url": "https://backend:443"}),
            json!({"hosts": ["service.com"]}),
            "GET",
            "http://service.com/x",
            "https://backend:443/x",
            "backend",
        ),
        (
            "Service object: protocol/host/port/path fields instead of url",
            json!({"protocol": "http", "host": "api.internal", "port": 9000, "path": "/v2/"}),
            json!({"paths": ["/api"]}),
            "GET",
            "http://a.com/api/items/./1",
            "http://api.internal:9000/v2/items/1",
            "api.internal:9000",
        ),
        (
            "Proxy guide, Path normalization: the normalised path is the one proxied",
            json!({"url": "http://backend"}),
            json!({"paths": ["/a"], "strip_path": false}),
            "GET",
            "http://a.com/a//b/../c%7e?q=%2e",
            "http://backend:80/a/c~?q=%2e",
            "backend",
        ),
    ];
    for (doc, mut service, mut route, method, url, upstream_url, host) in cases {
        route["name"] = json!("r");
        service["name"] = json!("s");
        service["routes"] = json!([route]);
        let r = router(json!({ "services": [service] }));
        match outcome(&r, method, url, &[]) {
            RouteOutcome::Forward(f) => {
                assert_eq!(
                    (f.upstream_url().as_str(), f.host_header.as_ref()),
                    (upstream_url, host),
                    "{method} {url} — {doc}"
                );
            }
            other => panic!("{method} {url} — {doc}: expected a forward, got {other:?}"),
        }
    }
}

#[test]
fn unsupported_regexes_are_listed_and_never_match() {
    // Validation refuses these (see `regexes_the_filter_cannot_run_are_refused`); a document
    // built another way still compiles, without them.
    let loaded = ConfigDocument::from_json(&json!({
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": "http://backend:8080", "routes": [
            {"name": "lookaround", "paths": ["/a"]},
            {"name": "mixed", "paths": ["/b", "/plain"]},
            {"name": "backref", "paths": ["/c"]},
            {"name": "huge", "paths": ["/d"]},
        ]}]
    }))
    .unwrap();
    let mut doc = loaded.document;
    doc.routes[0].paths = vec!["~/users/(?=\\d)".into()];
    doc.routes[1].paths = vec!["~/re/(?!x)".into(), "/plain".into()];
    doc.routes[2].paths = vec!["~/(a)\\1".into()];
    doc.routes[3].paths = vec!["~/(.*a){100}$".into()];
    let r = Router::compile(&doc);
    assert_eq!(r.len(), 1);
    assert_eq!(matched(&r, "GET", "a", "/users/1"), "-");
    assert_eq!(matched(&r, "GET", "a", "/plain/1"), "mixed");
    let notes: Vec<usize> = r.unsupported().iter().map(|u| u.route).collect();
    assert_eq!(notes, [0, 1, 2, 3]);
    assert!(r.unsupported()[0].reason.contains("never matches"));
    assert!(r.unsupported()[3].reason.contains("MAX_REGEX_NFA_BYTES"));
}

#[test]
fn regexes_the_filter_cannot_run_are_refused() {
    let cases = [
        ("~/(unclosed", "found open group without closing ')'"),
        (
            "~/users/(?<=x)y",
            "the filter's regex engine has no look-around",
        ),
        ("~/(a)\\1", "backreferences are not supported"),
        (
            "~/(.*a){100}$",
            "more than 10240 bytes (MAX_REGEX_NFA_BYTES)",
        ),
    ];
    for (path, reason) in cases {
        let err = ConfigDocument::from_json(&json!({
            "_format_version": "3.0",
            "services": [{"name": "svc", "url": "http://b", "routes": [
                {"name": "ok", "paths": ["~/fine/\\d+$"]},
                {"name": "bad", "paths": ["/x", path]},
            ]}]
        }))
        .unwrap_err();
        assert_eq!(err.len(), 1, "{path}: {err}");
        let problem = &err.problems[0];
        assert_eq!(problem.path, "services[0].routes[1].paths[1]", "{path}");
        assert!(
            problem
                .message
                .starts_with(&format!("invalid regex {path:?}: ")),
            "{path}: {}",
            problem.message
        );
        assert!(
            problem.message.contains(reason),
            "{path}: {}",
            problem.message
        );
    }
    let err = ConfigDocument::from_json(&json!({
        "_format_version": "3.0",
        "routes": [{"headers": {"x-v": ["~*(unclosed"]}}]
    }))
    .unwrap_err();
    assert_eq!(err.problems[0].path, "routes[0].headers.x-v");
    assert!(err.problems[0]
        .message
        .starts_with("invalid regex \"~*(unclosed\""));
}

#[test]
fn paths_longer_than_the_limit_get_414_before_any_route_runs() {
    let r = routes(
        json!([{"name": "regex", "paths": ["~/(.*a){40}$"]}, {"name": "all", "paths": ["/"]}]),
    );
    let at_limit = format!("/{}", "a".repeat(MAX_REQUEST_PATH_BYTES - 1));
    assert_eq!(matched(&r, "GET", "a", &at_limit), "regex");
    let over = format!("{at_limit}a");
    assert_eq!(
        r.route(&request("GET", "a", &over)),
        RouteOutcome::UriTooLong
    );
    // The query string counts: the limit is on the request line's target.
    let with_query = format!("/?q={}", "x".repeat(MAX_REQUEST_PATH_BYTES));
    assert_eq!(
        r.route(&request("GET", "a", &with_query)),
        RouteOutcome::UriTooLong
    );
}

#[test]
fn named_captures_are_spelled_as_kong_does() {
    let r = routes(json!([{"name": "named", "paths": ["~/u/(?<id>\\d+)$"]}]));
    assert!(r.unsupported().is_empty(), "{:?}", r.unsupported());
    assert_eq!(matched(&r, "GET", "a", "/u/12"), "named");
}

#[test]
fn debug_names_and_headers() {
    let r = router(json!({
        "services": [{"id": "00000000-0000-0000-0000-000000000001", "name": "svc", "url": "http://b"}],
        "routes": [{"id": "00000000-0000-0000-0000-000000000002", "service": {"name": "svc"}, "paths": ["/"]}],
    }));
    let f = forward(&r, request("GET", "a", "/"));
    assert_eq!(
        f.debug.headers(),
        [
            ("Kong-Route-Id", "00000000-0000-0000-0000-000000000002"),
            ("Kong-Service-Id", "00000000-0000-0000-0000-000000000001"),
            ("Kong-Service-Name", "svc"),
        ]
    );
}

#[test]
fn upstream_host_header_field_names_the_host() {
    let r = router(json!({
        "services": [{"name": "s", "host": "pool", "routes": [{"paths": ["/"]}]}],
        "upstreams": [{"name": "pool", "host_header": "pool.internal", "targets": [{"target": "10.0.0.1:8001"}]}],
    }));
    let f = forward(&r, request("GET", "a", "/"));
    assert_eq!(&*f.upstream, "10.0.0.1:8001");
    assert_eq!(&*f.host_header, "pool.internal:8001");
}

#[test]
fn many_routes_index_agrees_with_priority() {
    // Hosts, wildcards and hostless routes interleaved: the index must still pick by rank.
    let mut list = Vec::new();
    for i in 0..200 {
        list.push(json!({"name": format!("h{i}"), "hosts": [format!("h{i}.com")], "paths": [format!("/p{i}")]}));
        list.push(
            json!({"name": format!("w{i}"), "hosts": [format!("*.w{i}.com")], "paths": ["/"]}),
        );
        list.push(json!({"name": format!("re{i}"), "paths": [format!("~/re{i}/\\d+$")]}));
    }
    list.push(json!({"name": "root", "paths": ["/"]}));
    let r = routes(Value::Array(list));
    assert_eq!(matched(&r, "GET", "h7.com", "/p7/x"), "h7");
    assert_eq!(matched(&r, "GET", "h7.com", "/p8/x"), "root");
    assert_eq!(matched(&r, "GET", "x.w9.com", "/p8/x"), "w9");
    assert_eq!(matched(&r, "GET", "h7.com", "/re150/42"), "re150");
    assert_eq!(matched(&r, "GET", "nowhere", "/re150/x"), "root");
}

#[test]
fn a_host_port_falls_back_to_the_listener_port() {
    // Kong's net.dst.port: the Host header's port, else the port the request arrived on.
    let r = routes(json!([{"name": "p8000", "hosts": ["example.com:8000"]}]));
    let on_8000 = RequestView {
        port: Some(8000),
        ..request("GET", "example.com", "/")
    };
    assert_eq!(forward(&r, on_8000).route_name, "p8000");
    let explicit = RequestView {
        port: Some(8000),
        ..request("GET", "example.com:9000", "/")
    };
    assert_eq!(r.route(&explicit), RouteOutcome::NoRoute);
    assert!(r.needs_port());
}

#[test]
fn the_listener_port_is_needed_only_when_a_route_host_names_a_port() {
    // Without a host port, the listener's port cannot change a match: the filter skips the
    // host call that reads it.
    let r = routes(json!([
        {"name": "plain", "hosts": ["example.com", "*.example.org"], "paths": ["/a"]},
        {"name": "any", "paths": ["/b"]},
    ]));
    assert!(!r.needs_port());
    for port in [None, Some(80), Some(8000)] {
        let view = RequestView {
            port,
            ..request("GET", "example.com", "/a")
        };
        assert_eq!(forward(&r, view).route_name, "plain");
    }
    let r = routes(json!([
        {"name": "plain", "hosts": ["example.com"]},
        {"name": "ported", "hosts": ["example.org:8443"]},
    ]));
    assert!(r.needs_port());
}

#[test]
fn equal_priorities_go_to_the_greater_route_id_as_in_kong_atc() {
    // atc-router: matchers in a BTreeMap<(priority, uuid)>, tried in reverse order.
    let r = routes(json!([
        {"name": "low-id", "id": "10000000-0000-4000-8000-000000000000", "paths": ["/a"]},
        {"name": "high-id", "id": "F0000000-0000-4000-8000-000000000000", "paths": ["/a"]},
        {"name": "no-id", "paths": ["/a"]},
        {"name": "no-id-longer", "paths": ["/a/b"]},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/a/x"), "high-id");
    assert_eq!(matched(&r, "GET", "x", "/a/b"), "no-id-longer");
}

#[test]
fn regex_literal_prefixes_index_regex_paths() {
    for (regex, literal) in [
        ("/users/\\d+$", "/users/"),
        ("/v1\\.0/x", "/v1.0/x"),
        ("/ab?c", "/a"),
        ("/ab+c", "/ab"),
        ("/a|/b", ""),
        ("/(a|b)/c", "/"),
        ("/[a|b]/c", "/"),
        ("(?i)/x", ""),
        ("/files/.*", "/files/"),
    ] {
        assert_eq!(super::literal_prefix(regex), literal, "{regex}");
    }
    // `^/a|/b` is Kong's pattern for `~/a|/b`: the second branch is not anchored.
    let r = routes(json!([{"name": "alt", "paths": ["~/a|/b"]}]));
    assert_eq!(matched(&r, "GET", "x", "/x/b"), "alt");
    let r = routes(json!([
        {"name": "ci", "paths": ["~(?i)/case"]},
        {"name": "digits", "paths": ["~/n/\\d+$"]},
    ]));
    assert_eq!(matched(&r, "GET", "x", "/CASE"), "ci");
    // ASCII digits only, as PCRE without UCP.
    assert_eq!(matched(&r, "GET", "x", "/n/\u{663}"), "-");
    assert_eq!(matched(&r, "GET", "x", "/n/42"), "digits");
}

#[test]
fn sni_and_listener_port_are_needed_only_by_routes_that_use_them() {
    let plain = routes(json!([
        {"name": "a", "hosts": ["a.example", "*.b.example"], "paths": ["/a"]},
        {"name": "b", "paths": ["/b"], "protocols": ["https"]}
    ]));
    assert!(!plain.needs_sni() && !plain.needs_port());
    // Without them, the request's SNI and listener port change nothing: the filter may skip
    // reading them.
    for (scheme, authority, path) in [
        ("http", "a.example", "/a/x"),
        ("https", "x.b.example", "/a"),
        ("https", "other", "/b"),
        ("http", "a.example:8443", "/a"),
    ] {
        let mut bare = request("GET", authority, path);
        bare.scheme = scheme;
        let full = RequestView {
            sni: Some("a.example"),
            port: Some(8443),
            ..bare
        };
        assert_eq!(
            plain.route(&bare),
            plain.route(&full),
            "{scheme} {authority}{path}"
        );
    }

    let sni = routes(json!([{"name": "s", "snis": ["a.example"], "protocols": ["https"]}]));
    assert!(sni.needs_sni() && !sni.needs_port());
    let port = routes(json!([{"name": "p", "hosts": ["a.example:8443"]}]));
    assert!(port.needs_port() && !port.needs_sni());
    let mut on_8443 = request("GET", "a.example", "/");
    assert_eq!(matched(&port, "GET", "a.example", "/"), "-");
    on_8443.port = Some(8443);
    assert_eq!(forward(&port, on_8443).route_name, "p");
}

/// Kong's traditional_compatible router ignores `path_handling: v1` (it only has
/// `get_upstream_uri_v0`) and Kong warns about it on load: row 17 of Kong's path-handling
/// fixture, whose v1 answer (/srvroureq) only the `traditional` router gives.
#[test]
fn path_handling_v1_is_joined_as_v0_with_kongs_deprecation_warning() {
    let value = json!({"_format_version": "3.0", "services": [{
        "name": "s", "host": "backend", "path": "/srv",
        "routes": [{"name": "r", "paths": ["/rou"], "strip_path": false, "path_handling": "v1"}]
    }]});
    let loaded = ConfigDocument::from_json(&value).expect("valid");
    assert_eq!(
        loaded.warnings,
        vec![crate::document::Problem::new(
            "services[0].routes[0].path_handling",
            "path_handling='v1' is deprecated and will not work under 'expressions' or \
             'traditional_compatible' router_flavor, please use path_handling='v0' instead \
             (deprecated after 3.0); Fallback routes as Kong's traditional_compatible router \
             does and joins the paths of this route as v0"
        )]
    );
    let r = Router::compile(&loaded.document);
    assert_eq!(
        forward(&r, request("GET", "a", "/roureq")).path,
        "/srv/roureq"
    );
}

#[test]
fn method_and_scheme_are_needed_only_by_routes_that_use_them() {
    let plain = routes(json!([
        {"name": "a", "hosts": ["a.example", "*.b.example"], "paths": ["/a"]},
        {"name": "b", "paths": ["/b"], "protocols": ["http", "https"]},
        {"name": "re", "paths": ["~/r/\\d+$"]}
    ]));
    assert!(!plain.needs_method() && !plain.needs_scheme());
    // Without them, the request's method and scheme change nothing: the filter may skip
    // reading them (it routes with "GET" and "http" instead).
    for (authority, path) in [
        ("a.example", "/a/x"),
        ("x.b.example", "/a"),
        ("other", "/b"),
        ("a.example:8443", "/a"),
        ("other", "/r/42"),
        ("other", "/none"),
    ] {
        let assumed = request("GET", authority, path);
        for (method, scheme) in [("POST", "https"), ("DELETE", "http"), ("GET", "https")] {
            let real = RequestView {
                method,
                scheme,
                ..assumed
            };
            assert_eq!(
                plain.route(&assumed),
                plain.route(&real),
                "{method} {scheme}://{authority}{path}"
            );
        }
    }

    let by_method = routes(json!([{"name": "m", "methods": ["POST"]}]));
    assert!(by_method.needs_method() && !by_method.needs_scheme());
    for (config, name) in [
        (
            json!([{"name": "h", "paths": ["/"], "protocols": ["https"]}]),
            "https only",
        ),
        (
            json!([{"name": "s", "snis": ["a.example"], "protocols": ["https"]}]),
            "snis",
        ),
        (
            json!([{"name": "p", "hosts": ["a.example:443"]}]),
            "a host with a port",
        ),
    ] {
        let r = routes(config);
        assert!(r.needs_scheme() && !r.needs_method(), "{name}");
    }
    // Why a host with a port needs the scheme: a Host without a port is on 443 only over
    // HTTPS.
    let port = routes(json!([{"name": "p", "hosts": ["a.example:443"]}]));
    let mut tls = request("GET", "a.example", "/");
    assert_eq!(matched(&port, "GET", "a.example", "/"), "-");
    tls.scheme = "https";
    assert_eq!(forward(&port, tls).route_name, "p");
}
