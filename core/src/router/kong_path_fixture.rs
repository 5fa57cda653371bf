//! Kong's own path-handling fixture, every case, as Kong's router spec runs it for
//! `traditional_compatible`.
//!
//! The table is Kong 3.9.x's `spec/fixtures/router_path_handling_tests.lua` (identical in 3.9.1
//! and 3.9.3), reproduced as data: `(service path, route path, strip_path values,
//! path_handling values, request path, expected upstream path)`. A row with several
//! `strip_path` or `path_handling` values stands for one case per combination (the fixture's
//! `expand`). `spec/01-unit/08-router_spec.lua` ("#slash handling") runs each expanded case
//! whose `path_handling` is `v0` against the `traditional_compatible` router (v1 cases only run
//! for the `traditional` flavour), twice:
//! - "plain": a route with the route path (or, when the row has none, matching on its host
//!   `localbin-<i>-<j>.com` only), the service's `path`, the request for the request path;
//! - "regex": for rows with a route path, the same route with the path turned into the regex
//!   `~/[0]?<route path without its leading slash>`.
//!
//! `spec/02-integration/05-proxy/02-router_spec.lua` runs the plain cases through a real Kong.
//! Both expect the same upstream path; so does this test, through [`Router::route`].

use super::tests::{forward, request, router as router_of};
use serde_json::json;

/// `strip_path` values of a row: one, or both.
const BOTH: &[bool] = &[false, true];
const OFF: &[bool] = &[false];
const ON: &[bool] = &[true];
/// `path_handling` values of a row.
const V0V1: &[&str] = &["v0", "v1"];
const V0: &[&str] = &["v0"];
const V1: &[&str] = &["v1"];

type Row = (
    &'static str,
    Option<&'static str>,
    &'static [bool],
    &'static [&'static str],
    &'static str,
    &'static str,
);

/// The fixture's rows, in its order (its comments number every few rows: 5, 11, 15...).
const ROWS: &[Row] = &[
    ("/", Some("/"), BOTH, V0V1, "/", "/"),
    ("/", Some("/"), BOTH, V0V1, "/route", "/route"),
    ("/", Some("/"), BOTH, V0V1, "/route/", "/route/"),
    ("/", Some("/"), BOTH, V0V1, "/routereq", "/routereq"),
    ("/", Some("/"), BOTH, V0V1, "/route/req", "/route/req"), // 5
    ("/", Some("/route"), OFF, V0V1, "/route", "/route"),
    ("/", Some("/route"), OFF, V0V1, "/route/", "/route/"),
    ("/", Some("/route"), OFF, V0V1, "/routereq", "/routereq"),
    ("/", Some("/route"), ON, V0V1, "/route", "/"),
    ("/", Some("/route"), ON, V0V1, "/route/", "/"),
    ("/", Some("/route"), ON, V0V1, "/routereq", "/req"), // 11
    ("/", Some("/route/"), OFF, V0V1, "/route/", "/route/"),
    ("/", Some("/route/"), OFF, V0V1, "/route/req", "/route/req"),
    ("/", Some("/route/"), ON, V0V1, "/route/", "/"),
    ("/", Some("/route/"), ON, V0V1, "/route/req", "/req"), // 15
    ("/srv", Some("/rou"), OFF, V0, "/roureq", "/srv/roureq"),
    ("/srv", Some("/rou"), OFF, V1, "/roureq", "/srvroureq"),
    ("/srv", Some("/rou"), ON, V0, "/roureq", "/srv/req"),
    ("/srv", Some("/rou"), ON, V1, "/roureq", "/srvreq"), // 19
    ("/srv/", Some("/rou"), OFF, V0V1, "/rou", "/srv/rou"),
    ("/srv/", Some("/rou"), ON, V0, "/rou", "/srv"),
    ("/srv/", Some("/rou"), ON, V1, "/rou", "/srv/"), // 22
    ("/service", Some("/"), BOTH, V0V1, "/", "/service"),
    ("/service", Some("/"), BOTH, V0, "/route", "/service/route"),
    ("/service", Some("/"), BOTH, V1, "/route", "/serviceroute"),
    (
        "/service",
        Some("/"),
        BOTH,
        V0,
        "/route/",
        "/service/route/",
    ),
    ("/service", Some("/"), BOTH, V1, "/route/", "/serviceroute/"), // 27
    (
        "/service",
        Some("/"),
        BOTH,
        V0,
        "/routereq",
        "/service/routereq",
    ),
    (
        "/service",
        Some("/"),
        BOTH,
        V1,
        "/routereq",
        "/serviceroutereq",
    ),
    (
        "/service",
        Some("/"),
        BOTH,
        V0,
        "/route/req",
        "/service/route/req",
    ),
    (
        "/service",
        Some("/"),
        BOTH,
        V1,
        "/route/req",
        "/serviceroute/req",
    ), // 31
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route",
        "/service/route",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route",
        "/serviceroute",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route/",
        "/service/route/",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route/",
        "/serviceroute/",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/routereq",
        "/service/routereq",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/routereq",
        "/serviceroutereq",
    ),
    ("/service", Some("/route"), ON, V0V1, "/route", "/service"),
    ("/service", Some("/route"), ON, V0V1, "/route/", "/service/"),
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/routereq",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/routereq",
        "/servicereq",
    ), // 41
    (
        "/service",
        Some("/route/"),
        OFF,
        V0,
        "/route/",
        "/service/route/",
    ),
    (
        "/service",
        Some("/route/"),
        OFF,
        V1,
        "/route/",
        "/serviceroute/",
    ),
    (
        "/service",
        Some("/route/"),
        OFF,
        V0,
        "/route/req",
        "/service/route/req",
    ),
    (
        "/service",
        Some("/route/"),
        OFF,
        V1,
        "/route/req",
        "/serviceroute/req",
    ),
    ("/service", Some("/route/"), ON, V0, "/route/", "/service/"),
    ("/service", Some("/route/"), ON, V1, "/route/", "/service"),
    (
        "/service",
        Some("/route/"),
        ON,
        V0,
        "/route/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route/"),
        ON,
        V1,
        "/route/req",
        "/servicereq",
    ), // 49
    (
        "/service/",
        Some("/"),
        BOTH,
        V0,
        "/route/",
        "/service/route/",
    ),
    (
        "/service/",
        Some("/"),
        BOTH,
        V1,
        "/route/",
        "/service/route/",
    ),
    ("/service/", Some("/"), BOTH, V0V1, "/", "/service/"),
    (
        "/service/",
        Some("/"),
        BOTH,
        V0V1,
        "/route",
        "/service/route",
    ),
    (
        "/service/",
        Some("/"),
        BOTH,
        V0V1,
        "/routereq",
        "/service/routereq",
    ),
    (
        "/service/",
        Some("/"),
        BOTH,
        V0V1,
        "/route/req",
        "/service/route/req",
    ), // 55
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route",
        "/service/route",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route/",
        "/service/route/",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/routereq",
        "/service/routereq",
    ),
    ("/service/", Some("/route"), ON, V0, "/route", "/service"),
    ("/service/", Some("/route"), ON, V1, "/route", "/service/"),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route/",
        "/service/",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/routereq",
        "/service/req",
    ), // 62
    (
        "/service/",
        Some("/route/"),
        OFF,
        V0V1,
        "/route/",
        "/service/route/",
    ),
    (
        "/service/",
        Some("/route/"),
        OFF,
        V0V1,
        "/route/req",
        "/service/route/req",
    ),
    (
        "/service/",
        Some("/route/"),
        ON,
        V0V1,
        "/route/",
        "/service/",
    ),
    (
        "/service/",
        Some("/route/"),
        ON,
        V0V1,
        "/route/req",
        "/service/req",
    ), // 66
    // The following cases match on host (not paths).
    ("/", None, BOTH, V0V1, "/", "/"),
    ("/", None, BOTH, V0V1, "/route", "/route"),
    ("/", None, BOTH, V0V1, "/route/", "/route/"), // 69
    ("/service", None, BOTH, V0V1, "/", "/service"),
    ("/service", None, BOTH, V0, "/route", "/service/route"),
    ("/service", None, BOTH, V1, "/route", "/serviceroute"),
    ("/service", None, BOTH, V0, "/route/", "/service/route/"),
    ("/service", None, BOTH, V1, "/route/", "/serviceroute/"), // 74
    ("/service/", None, BOTH, V0V1, "/", "/service/"),
    ("/service/", None, BOTH, V0V1, "/route", "/service/route"),
    ("/service/", None, BOTH, V0V1, "/route/", "/service/route/"), // 77
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route./req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route./req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route./req",
        "/service/req",
    ), // 80
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route%2E/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route%2E/req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route%2E/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route%2e/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route%2e/req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route%2e/req",
        "/service/req",
    ), // 86
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route../req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route../req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route../req",
        "/service/req",
    ), // 89
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route%2E%2E/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route%2E%2E/req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route%2E%2E/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V0,
        "/route%2e%2E/req",
        "/service/req",
    ),
    (
        "/service",
        Some("/route"),
        ON,
        V1,
        "/route%2e%2E/req",
        "/servicereq",
    ),
    (
        "/service/",
        Some("/route"),
        ON,
        V0V1,
        "/route%2e%2E/req",
        "/service/req",
    ), // 95
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route./req",
        "/service/route./req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route./req",
        "/serviceroute./req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route./req",
        "/service/route./req",
    ), // 98
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route%2E/req",
        "/service/route./req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route%2E/req",
        "/serviceroute./req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route%2E/req",
        "/service/route./req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route%2e/req",
        "/service/route./req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route%2e/req",
        "/serviceroute./req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route%2e/req",
        "/service/route./req",
    ), // 104
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route../req",
        "/service/route../req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route../req",
        "/serviceroute../req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route../req",
        "/service/route../req",
    ), // 107
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route%2E%2E/req",
        "/service/route../req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route%2E%2E/req",
        "/serviceroute../req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route%2E%2E/req",
        "/service/route../req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V0,
        "/route%2e%2E/req",
        "/service/route../req",
    ),
    (
        "/service",
        Some("/route"),
        OFF,
        V1,
        "/route%2e%2E/req",
        "/serviceroute../req",
    ),
    (
        "/service/",
        Some("/route"),
        OFF,
        V0V1,
        "/route%2e%2E/req",
        "/service/route../req",
    ), // 113
];

/// One expanded case: the fixture's `line:expand()`, strip_path first, then path_handling.
struct Case {
    /// `(<row>-<expansion>)` as Kong's test descriptions number them, both from 1.
    label: String,
    /// The host the plain route matches on (Kong's `localbin-<i>-<j>.com`).
    host: String,
    service_path: &'static str,
    route_path: Option<&'static str>,
    strip_path: bool,
    request_path: &'static str,
    expected: &'static str,
}

/// The `traditional_compatible` cases: expanded, `v0` only.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, &(service_path, route_path, strips, handlings, request_path, expected)) in
        ROWS.iter().enumerate()
    {
        let mut j = 0;
        for &strip_path in strips {
            for &handling in handlings {
                j += 1;
                if handling != "v0" {
                    continue;
                }
                out.push(Case {
                    label: format!("({}-{j})", i + 1),
                    host: format!("localbin-{}-{j}.com", i + 1),
                    service_path,
                    route_path,
                    strip_path,
                    request_path,
                    expected,
                });
            }
        }
    }
    out
}

fn upstream_path(case: &Case, route_paths: Option<Vec<String>>) -> String {
    let mut route = json!({
        "name": "r",
        "hosts": [case.host],
        "strip_path": case.strip_path,
        "path_handling": "v0",
    });
    if let Some(paths) = route_paths {
        route["paths"] = json!(paths);
    }
    let router = router_of(json!({"services": [{
        "name": "service-invalid",
        "protocol": "http",
        "host": "backend",
        "path": case.service_path,
        "routes": [route],
    }]}));
    forward(&router, request("GET", &case.host, case.request_path)).path
}

#[test]
fn the_fixture_expands_to_kongs_case_count() {
    // 113 rows; their v0 expansions are what traditional_compatible runs.
    assert_eq!(ROWS.len(), 113);
    let cases = cases();
    assert_eq!(cases.len(), 106);
    assert_eq!(cases.iter().filter(|c| c.route_path.is_some()).count(), 88);
}

#[test]
fn every_plain_case_of_kongs_path_handling_fixture() {
    let mut failures = Vec::new();
    for case in cases() {
        let paths = case.route_path.map(|p| vec![p.to_owned()]);
        let got = upstream_path(&case, paths);
        if got != case.expected {
            failures.push(format!(
                "{} plain, {} with {}, strip = {}, v0. req: {} → {got}, Kong: {}",
                case.label,
                case.service_path,
                case.route_path
                    .map_or_else(|| format!("host {}", case.host), |p| format!("uri {p}")),
                if case.strip_path { "on" } else { "off" },
                case.request_path,
                case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_regex_case_of_kongs_path_handling_fixture() {
    let mut failures = Vec::new();
    for case in cases() {
        let Some(route_path) = case.route_path else {
            continue;
        };
        let regex = format!("~/[0]?{}", &route_path[1..]);
        let got = upstream_path(&case, Some(vec![regex.clone()]));
        if got != case.expected {
            failures.push(format!(
                "{} regex, {} with {regex}, strip = {}, v0. req: {} → {got}, Kong: {}",
                case.label,
                case.service_path,
                if case.strip_path { "on" } else { "off" },
                case.request_path,
                case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
