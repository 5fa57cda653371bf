//! Each profile against its host's rules, in the simulated host ([`super::sim`]). Where a test
//! also runs the Envoy profile in ngx_wasm_module's simulation, it shows the failure the issue
//! saw in a real nginx: the simulation is strict enough to catch it.

use super::sim::{ClientRequest, Proxied, SimDispatcher, SimRequest, SimResponse, SERVER_NAME};
use super::*;
use crate::fetch::{Action, FetchMachine, HttpResponse, LogLevel, Party};
use crate::filter_config::FilterConfig;
use crate::plugins::HeaderOp;
use serde_json::json;

const HEADER: &str = "x-fallback-upstream";
const VARIABLE: &str = "fallback_upstream";

fn names() -> HandOverNames<'static> {
    HandOverNames {
        upstream_header: HEADER,
        upstream_variable: VARIABLE,
    }
}

fn client() -> ClientRequest<'static> {
    ClientRequest {
        host: "api.example.com",
        target: "/shop/a%20b?x=1",
        client: ("10.1.2.3", 5555),
        listener_port: 8000,
    }
}

/// The client's request in `kind`, whose configuration declares the upstream variable.
fn request_in(kind: HostKind) -> SimRequest {
    SimRequest::new(kind, &client(), HEADER, Some(VARIABLE))
}

/// What the filter reads with `profile` in `request`: (Host, path, listener port, client IP).
fn reads(
    profile: &HostProfile,
    request: &SimRequest,
) -> (Option<String>, Option<String>, Option<u16>, Option<IpAddr>) {
    let host = profile
        .host_headers
        .iter()
        .find_map(|name| request.header(name));
    let path = match profile.path {
        ReadFrom::Header(name) => request.header(name),
        ReadFrom::Property(path) => request
            .property(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
    };
    let port = request
        .property(profile.listener_port)
        .and_then(|raw| profile.listener_port(&raw));
    let ip = request
        .property(&["source", "address"])
        .and_then(|raw| profile.client_ip(&raw));
    (host, path, port, ip)
}

#[test]
fn names_parse_and_envoy_is_the_default() {
    assert_eq!(HostKind::default(), HostKind::Envoy);
    for kind in HostKind::ALL {
        assert_eq!(HostKind::parse(kind.as_str()), Some(kind));
        assert_eq!(kind.profile().kind, kind);
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(HostKind::parse("Envoy"), None);
    assert_eq!(HostKind::parse("ngx"), None);
}

#[test]
fn each_profile_reads_the_clients_host_path_port_and_address_in_its_host() {
    let expected = (
        Some("api.example.com".to_owned()),
        Some("/shop/a%20b?x=1".to_owned()),
        Some(8000),
        Some("10.1.2.3".parse().unwrap()),
    );
    for kind in HostKind::ALL {
        let profile = kind.profile();
        assert_eq!(reads(profile, &request_in(kind)), expected, "{kind}");
    }
}

#[test]
fn envoys_reads_in_ngx_wasm_module_get_the_servers_name_and_a_decoded_path() {
    // What the issue saw: `:authority` is the server's own name:port (routing by hosts: 404),
    // `destination.port` is empty without the PROXY protocol, `:path` is already decoded.
    let request = SimRequest::new(HostKind::Nginx, &client(), HEADER, Some(VARIABLE));
    let (host, path, port, ip) = reads(&ENVOY, &request);
    assert_eq!(host.as_deref(), Some(&*format!("{SERVER_NAME}:8000")));
    assert_eq!(path.as_deref(), Some("/shop/a b?x=1"));
    assert_eq!(port, None);
    assert_eq!(
        ip,
        Some("10.1.2.3".parse().unwrap()),
        "a bare IP still parses"
    );
}

#[test]
fn each_profile_hands_the_upstream_over_in_its_host() {
    let target = UpstreamTarget {
        upstream: "users.internal:8080",
        host_header: "users.internal:8080",
        path: "/v1/a%20b?x=1",
    };
    for kind in HostKind::ALL {
        let profile = kind.profile();
        let mut request = request_in(kind);
        for write in profile.hand_over(&target, &names()) {
            request
                .write(&write)
                .unwrap_or_else(|e| panic!("{kind}: {} refused: {e}", write.target()));
        }
        assert_eq!(
            request.proxied(),
            Ok(Proxied {
                connect: "users.internal:8080".into(),
                host: "users.internal:8080".into(),
                path: "/v1/a%20b?x=1".into(),
            }),
            "{kind}"
        );
    }
}

#[test]
fn envoys_hand_over_is_refused_or_ignored_in_nginx() {
    let target = UpstreamTarget {
        upstream: "users.internal:8080",
        host_header: "users.internal",
        path: "/v1",
    };
    let mut request = SimRequest::new(HostKind::Nginx, &client(), HEADER, Some(VARIABLE));
    let outcomes: Vec<_> = ENVOY
        .hand_over(&target, &names())
        .iter()
        .map(|w| request.write(w))
        .collect();
    assert_eq!(
        outcomes[1],
        Err("cannot set read-only \":authority\" header".into())
    );
    assert_eq!(
        request.proxied(),
        Err("ngx.fallback_upstream is empty".into()),
        "nginx ignores the hand-over header"
    );
}

#[test]
fn an_undeclared_nginx_variable_is_a_refusal_not_a_panic() {
    let mut request = SimRequest::new(HostKind::Nginx, &client(), HEADER, None);
    let writes = NGINX.hand_over(
        &UpstreamTarget {
            upstream: "a:1",
            host_header: "a",
            path: "/",
        },
        &names(),
    );
    let refused = request.write(&writes[0]).unwrap_err();
    assert!(refused.contains("status 1"), "{refused}");
    assert_eq!(writes[0].target(), "property ngx.fallback_upstream");
}

#[test]
fn kong_gets_the_host_header_after_its_target() {
    // kong.service.set_target overwrites $upstream_host with the bare host: the Host Kong
    // would send (with a port) must be written after it.
    let writes = KONG.hand_over(
        &UpstreamTarget {
            upstream: "users.internal:8080",
            host_header: "users.internal:8080",
            path: "/v1",
        },
        &names(),
    );
    let order: Vec<String> = writes.iter().map(HostWrite::target).collect();
    assert_eq!(
        order,
        [
            "property kong.service.target",
            "property ngx.upstream_host",
            "property ngx.upstream_uri"
        ]
    );
    let mut request = SimRequest::new(HostKind::Kong, &client(), HEADER, None);
    for write in writes.iter().rev() {
        request.write(write).unwrap();
    }
    assert_eq!(
        request.proxied().unwrap().host,
        "users.internal",
        "wrong order loses the port"
    );
}

#[test]
fn listener_ports_decode_per_encoding_and_garbage_is_none() {
    assert_eq!(ENVOY.listener_port(&8000i64.to_le_bytes()), Some(8000));
    assert_eq!(ENVOY.listener_port(b"8000"), None);
    assert_eq!(ENVOY.listener_port(&70_000i64.to_le_bytes()), None);
    assert_eq!(NGINX.listener_port(b"8000"), Some(8000));
    for bad in [
        &b""[..],
        b"80a",
        b"-1",
        b"70000",
        b" 80",
        &8000i64.to_le_bytes(),
    ] {
        assert_eq!(NGINX.listener_port(bad), None, "{bad:?}");
    }
}

#[test]
fn client_addresses_parse_with_and_without_a_port() {
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(ENVOY.client_ip(b"10.0.0.1:443"), ip("10.0.0.1"));
    assert_eq!(ENVOY.client_ip(b"[2001:db8::1]:443"), ip("2001:db8::1"));
    assert_eq!(NGINX.client_ip(b"10.0.0.1"), ip("10.0.0.1"));
    // A bare IPv6 address ends in digits after a colon: it is not a port there.
    assert_eq!(NGINX.client_ip(b"::1"), ip("::1"));
    assert_eq!(NGINX.client_ip(b"2001:db8::1"), ip("2001:db8::1"));
    assert_eq!(ENVOY.client_ip(b"::1"), None, "Envoy always adds a port");
    for bad in [&b""[..], b"unix:/tmp/s", &[0xff, 0xfe]] {
        assert_eq!(NGINX.client_ip(bad), None);
        assert_eq!(ENVOY.client_ip(bad), None);
    }
}

#[test]
fn kongs_426_stays_426_in_every_host() {
    for kind in HostKind::ALL {
        let answer = SimResponse::local(kind, 426, kind.profile().https_required_headers);
        assert_eq!(answer.status, 426, "{kind}");
        assert!(answer
            .headers()
            .iter()
            .any(|(n, v)| n == "upgrade" && v == "TLS/1.2, HTTP/1.1"));
    }
    // Kong's own headers in ngx_wasm_module: the 426 becomes a 101.
    let answer = SimResponse::local(HostKind::Nginx, 426, ENVOY.https_required_headers);
    assert_eq!(answer.status, 101);
}

#[test]
fn response_edits_remove_content_type_in_every_host_and_replacing_the_map_does_not() {
    let upstream = [("Content-Type", "text/html"), ("X-Env", "dev")];
    for kind in HostKind::ALL {
        let mut response = SimResponse::new(kind, 200, &upstream);
        let before = response.headers();
        let mut after = before.clone();
        after.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        after.push(("x-added".into(), "1".into()));
        // What ResponsePlan::edits produces for that change (tested in plugins).
        for op in [
            HeaderOp::Remove("content-type".into()),
            HeaderOp::Add("x-added".into(), "1".into()),
        ] {
            match op {
                HeaderOp::Remove(name) => response.remove(&name),
                HeaderOp::Add(name, value) => response.add(&name, &value),
            }
        }
        let has_ct = |r: &SimResponse| {
            r.headers()
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        };
        assert!(!has_ct(&response), "{kind}");
        let mut replaced = SimResponse::new(kind, 200, &upstream);
        replaced.replace_all(&after);
        assert_eq!(has_ct(&replaced), kind != HostKind::Envoy, "{kind}");
    }
}

#[test]
fn dispatch_headers_carry_the_scheme_where_tls_needs_it() {
    let mut request = crate::fetch::HttpRequest {
        call: 1,
        party: Party::Storage,
        upstream: "s3.amazonaws.com:443".into(),
        method: "GET".into(),
        path: "/b/k?X-Amz-Signature=x".into(),
        authority: "s3.amazonaws.com".into(),
        headers: vec![("accept".into(), "*/*".into())],
        timeout_ms: 1,
        tls: true,
    };
    for kind in HostKind::ALL {
        let headers = kind.profile().dispatch_headers(&request);
        assert_eq!(
            &headers[..3],
            [
                (":method", "GET"),
                (":path", "/b/k?X-Amz-Signature=x"),
                (":authority", "s3.amazonaws.com")
            ]
        );
        assert_eq!(headers.last(), Some(&("accept", "*/*")));
        let scheme = headers.iter().find(|(n, _)| *n == ":scheme");
        assert_eq!(
            scheme.is_some(),
            kind != HostKind::Envoy,
            "{kind}: {headers:?}"
        );
    }
    request.tls = false;
    for kind in HostKind::ALL {
        assert!(kind
            .profile()
            .dispatch_headers(&request)
            .iter()
            .all(|(n, _)| *n != ":scheme"));
    }
}

#[test]
fn log_levels_map_one_to_one_and_never_to_trace() {
    assert_eq!(proxy_log_level(LogLevel::Debug), ProxyLogLevel::Debug);
    assert_eq!(proxy_log_level(LogLevel::Info), ProxyLogLevel::Info);
    assert_eq!(proxy_log_level(LogLevel::Warn), ProxyLogLevel::Warn);
    assert_eq!(proxy_log_level(LogLevel::Error), ProxyLogLevel::Error);
}

/// A filter config for `kind` with the three parties on loopback.
fn fetch_config(kind: HostKind) -> FilterConfig {
    let value = json!({
        "host": kind.as_str(),
        "version": "3.4.1.0",
        "control_plane": {"upstream": "127.0.0.1:8001", "authority": "cp", "timeout_ms": 1000},
        "companion": {"upstream": "127.0.0.1:8280", "authority": "companion", "token": "t"},
        "storage": {"upstream": "127.0.0.1:8333"},
    });
    FilterConfig::parse(value.to_string().as_bytes()).unwrap()
}

/// Runs the fetch machine's actions through `dispatcher` as the filter does; a refused
/// dispatch fails the test.
fn perform(
    profile: &HostProfile,
    dispatcher: &mut SimDispatcher,
    actions: &[Action],
) -> Vec<crate::fetch::HttpRequest> {
    let mut sent = Vec::new();
    for action in actions {
        if let Action::Dispatch(request) = action {
            dispatcher
                .dispatch(&profile.dispatch_headers(request))
                .unwrap_or_else(|e| panic!("{:?}: {e}", profile.kind));
            sent.push(request.clone());
        }
    }
    sent
}

#[test]
fn the_whole_import_runs_in_ngx_wasm_modules_dispatcher() {
    // Boot with the CP down, as the Done-when's fresh nginx: every dispatch comes from a tick.
    let document = crate::digest::canonical_json(&json!({"_format_version": "3.0"}));
    let sha = crate::digest::Sha256Digest::of(&document);
    let signed = json!({
        "url": "https://bucket.s3.amazonaws.com/kong/3.4.1.0/config.json?X-Amz-Signature=s",
        "method": "GET", "expires_at": "2030-01-01T00:00:00Z", "version": "3.4.1.0",
        "key": "kong/3.4.1.0/config.json", "sha256": sha.to_hex(), "revision": 4
    });
    for kind in [HostKind::Nginx, HostKind::Kong] {
        let profile = kind.profile();
        let mut dispatcher = SimDispatcher::new(kind);
        let mut machine = FetchMachine::new(&fetch_config(kind), 7);
        let mut now = 0;
        let mut answers = vec![
            HttpResponse::transport_failure(),
            HttpResponse::new(200, signed.to_string()),
            HttpResponse::new(200, document.clone()),
        ]
        .into_iter();
        let mut published = None;
        while published.is_none() && now < 10_000 {
            let sent = perform(profile, &mut dispatcher, &machine.on_tick(now));
            for request in sent {
                let answer = answers.next().expect("no more calls than answers");
                dispatcher.in_response_callback = true;
                let actions = machine.on_response(now + 10, request.call, answer);
                perform(profile, &mut dispatcher, &actions);
                dispatcher.in_response_callback = false;
                published = actions.iter().find_map(|a| match a {
                    Action::Publish(p) => Some(p.clone()),
                    _ => None,
                });
            }
            now += 500;
        }
        assert_eq!(published.map(|p| p.revision), Some(4), "{kind}");
        let storage = dispatcher.sent.last().unwrap();
        assert!(
            storage.contains(&(":scheme".into(), "https".into())),
            "{storage:?}"
        );
    }
}

#[test]
fn a_removal_followed_by_an_addition_of_the_same_header_is_one_replace() {
    let op = |name: &'static str, value: Option<&'static str>| match value {
        Some(v) => HeaderOp::Add(name.into(), v.into()),
        None => HeaderOp::Remove(name.into()),
    };
    let edits = [
        op("ratelimit-limit", None),
        op("ratelimit-limit", Some("5")),
        op("vary", Some("Origin")),
        op("x-gone", None),
        op("x-other", Some("1")),
        op("x-multi", None),
        op("x-multi", Some("a")),
        op("x-multi", Some("b")),
    ];
    let mut calls = Vec::new();
    response_calls(edits.iter().cloned(), |call| {
        calls.push(format!("{call:?}"))
    });
    let expected: Vec<String> = [
        ResponseCall::Replace("ratelimit-limit", "5"),
        ResponseCall::Add("vary", "Origin"),
        ResponseCall::Remove("x-gone"),
        ResponseCall::Add("x-other", "1"),
        ResponseCall::Replace("x-multi", "a"),
        ResponseCall::Add("x-multi", "b"),
    ]
    .iter()
    .map(|call| format!("{call:?}"))
    .collect();
    assert_eq!(calls, expected);
}
