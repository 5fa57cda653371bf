//! Property and fuzz-style tests of every parser in core that reads bytes from outside: the
//! document loader, strict JSON, the filter configuration, control-plane and companion
//! answers, export metadata, signatures and keys, request headers through the plugins.
//!
//! Properties: nothing panics on any input; errors name a path; what round-trips does
//! (canonical JSON). Cases are few by default so `make test` stays quick; `make fuzz` runs
//! the same tests with `PROPTEST_CASES=20000`. The router's path normalisation has its own
//! properties beside it (`router/path.rs`).

use crate::digest::canonical_json;
use crate::document::ConfigDocument;
use crate::export::ExportMetadata;
use crate::fetch::{Action, FetchMachine, HttpResponse, Party};
use crate::filter_config::FilterConfig;
use crate::json;
use crate::plugins::{PluginEngine, PluginRequest};
use crate::router::{RequestView, RouteOutcome, Router};
use crate::signature::{PublicKey, Signature};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

/// 64 cases unless `PROPTEST_CASES` says otherwise (as `make fuzz` does).
pub(crate) fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Kong-shaped documents: the right keys with values of any shape, so the loader's every
/// branch sees wrong types, missing references and odd strings.
fn kong_like() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec![
        "name",
        "id",
        "host",
        "url",
        "paths",
        "hosts",
        "methods",
        "headers",
        "service",
        "routes",
        "plugins",
        "config",
        "consumer",
        "route",
        "protocols",
        "port",
        "strip_path",
        "regex_priority",
        "upstream",
        "target",
        "weight",
        "key",
        "username",
        "group",
        "enabled",
        "tags",
        "snis",
    ]);
    let field_value = prop_oneof![
        3 => any_json(),
        1 => prop::collection::vec("(~|/)[a-z()\\[\\]{}.*+?\\\\|^$0-9]{0,10}", 0..3)
            .prop_map(|v| json!(v)),
        1 => "[a-z0-9-]{1,6}".prop_map(Value::String),
    ];
    let entity = prop::collection::btree_map(names, field_value, 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    let kinds = prop::sample::select(vec![
        "services",
        "routes",
        "consumers",
        "plugins",
        "upstreams",
        "targets",
        "keyauth_credentials",
        "basicauth_credentials",
        "acls",
        "certificates",
        "oops",
    ]);
    prop::collection::btree_map(kinds, prop::collection::vec(entity, 0..4), 0..6).prop_map(|m| {
        let mut root: Map<String, Value> = m
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        root.insert("_format_version".into(), json!("3.0"));
        Value::Object(root)
    })
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn problems_have_paths(errors: &crate::document::ValidationErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    for p in &errors.problems {
        prop_assert!(!p.path.is_empty(), "problem without a path: {p:?}");
        prop_assert!(!p.message.is_empty(), "problem without a message: {p:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn strict_json_never_panics_and_errors_name_a_path(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = json::from_slice(&bytes) {
            prop_assert!(!e.path().is_empty());
            prop_assert!(!e.message().is_empty());
        }
    }

    #[test]
    fn strict_json_reads_what_serde_json_reads_and_canonical_json_round_trips(value in any_json()) {
        let text = serde_json::to_vec(&value).unwrap();
        let reference: Value = serde_json::from_slice(&text).unwrap();
        prop_assert_eq!(json::from_slice(&text).unwrap(), reference);
        // serde_json (without its float_roundtrip feature) may read a float's last digit
        // differently from how it wrote it, so the exact round trip is for floatless values.
        let due = || true;
        let pace = crate::pace::Pace::new(&due);
        let wrapped = serde_json::json!({"b": [value.clone(), value.clone()], "a": value.clone(), "c": []});
        prop_assert_eq!(
            crate::pace::run_to_end(crate::digest::canonical_json_paced(&wrapped, &pace)),
            canonical_json(&wrapped)
        );
        prop_assert_eq!(
            crate::pace::run_to_end(crate::digest::canonical_json_paced(&value, &pace)),
            canonical_json(&value)
        );
        if !has_float(&value) {
            let canonical = canonical_json(&value);
            let back = json::from_slice(&canonical).unwrap();
            prop_assert_eq!(&back, &value);
            prop_assert_eq!(canonical_json(&back), canonical);
        }
    }

    #[test]
    fn parsing_in_pieces_reads_exactly_what_parsing_at_once_reads(
        value in any_json(),
        entries in prop::collection::vec(("[a-c]{1,2}", any_json()), 0..6),
        spaced in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec!["", ",", "]", "}", "\"", "[", "{", " ", "x", "\\"]),
    ) {
        // A top-level object whose members are arrays and other values (keys may repeat),
        // then the same text with one byte sequence inserted anywhere: parsing in pieces must
        // agree with parsing at once on the value, or on the error, path and position.
        let mut text = String::from("{");
        for (i, (key, v)) in entries.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let member = if i % 2 == 0 { json!([v, value, [v]]) } else { v.clone() };
            let rendered = if spaced {
                serde_json::to_string_pretty(&member).unwrap()
            } else {
                member.to_string()
            };
            text.push_str(&format!("{key:?}:{rendered}"));
        }
        text.push('}');
        let at = cut.index(text.len() + 1);
        let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let damaged = format!("{}{insert}{}", &text[..at], &text[at..]);
        for candidate in [text, damaged] {
            let at_once = json::from_slice(candidate.as_bytes());
            let due = || true;
            let pace = crate::pace::Pace::new(&due);
            let in_pieces = crate::pace::run_to_end(json::from_slice_paced(candidate.as_bytes(), &pace));
            prop_assert_eq!(in_pieces, at_once, "{}", candidate);
        }
    }

    #[test]
    fn a_repeated_key_is_always_refused_where_it_is(
        value in any_json(),
        key in "[a-z]{1,6}",
        depth in 0usize..4,
    ) {
        // {"a":{"a":...{"<key>":1,"<key>":<value>}}}: the path is the chain of "a"s.
        let mut text = format!("{{{k:?}:1,{k:?}:{v}}}", k = key, v = value);
        for _ in 0..depth {
            text = format!("{{\"a\":{text}}}");
        }
        let err = json::from_slice(text.as_bytes()).unwrap_err();
        let path = vec!["a"; depth].join(".");
        prop_assert_eq!(err, json::StrictError::DuplicateKey { path, key });
    }

    #[test]
    fn the_document_loader_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(errors) = ConfigDocument::from_slice(&bytes) {
            problems_have_paths(&errors)?;
        }
    }

    #[test]
    fn the_document_loader_never_panics_on_kong_shaped_documents(doc in kong_like()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        match ConfigDocument::from_slice(&bytes) {
            Ok(loaded) => {
                // What loads compiles and routes anything without panicking.
                let router = Router::compile(&loaded.document);
                let plugins = PluginEngine::compile(&loaded.document, &Default::default());
                for path in ["/", "/a/../b", "/%2e%2e/x?y=1", ""] {
                    let view = RequestView { method: "GET", authority: "h:1", path, scheme: "http", headers: &[], sni: None, port: None };
                    if let RouteOutcome::Forward(f) = router.route(&view) {
                        let _ = plugins.access(&plugin_request(&f, path, &[]), &mut crate::plugins::MemoryCounters::default());
                    }
                }
            }
            Err(errors) => problems_have_paths(&errors)?,
        }
    }

    #[test]
    fn the_filter_configuration_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = FilterConfig::parse(&bytes) {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(e.problems.iter().all(|p| !p.path.is_empty()));
        }
    }

    #[test]
    fn the_filter_configuration_reports_every_wrong_field_at_its_path(
        fields in prop::collection::btree_map(
            prop::sample::select(vec!["version", "control_plane", "companion", "storage", "poll_interval_ms", "tick_ms", "leader_lease_ms", "public_key", "ignore_unsupported_plugins", "upstream_header", "typo"]),
            any_json(),
            0..8,
        )
    ) {
        let doc: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Err(e) = FilterConfig::parse(&serde_json::to_vec(&doc).unwrap()) {
            prop_assert!(e.problems.iter().all(|p| !p.path.is_empty()));
        }
    }

    #[test]
    fn control_plane_and_companion_answers_never_panic_the_fetch_machine(
        cp_body in prop::collection::vec(any::<u8>(), 0..256),
        companion_body in prop::collection::vec(any::<u8>(), 0..256),
        storage_body in prop::collection::vec(any::<u8>(), 0..256),
        content_type in ".{0,20}",
        status in prop::sample::select(vec![200u16, 304, 401, 404, 500, 503]),
    ) {
        let config = FilterConfig::parse(br#"{"version":"3.4.1.0","control_plane":{"upstream":"cp","authority":"cp"},"companion":{"upstream":"c","authority":"c","token":"t"},"storage":{"upstream":"s"}}"#).unwrap();
        let mut machine = FetchMachine::new(&config, 7);
        let mut now = 0;
        for body in [cp_body, companion_body, storage_body] {
            now += 60_000;
            let actions = machine.on_tick(now);
            for action in actions {
                if let Action::Dispatch(req) = action {
                    let response = HttpResponse {
                        status: Some(if req.party == Party::ControlPlane { status } else { 200 }),
                        headers: vec![("content-type".into(), content_type.clone()), ("etag".into(), content_type.clone())],
                        body: body.clone(),
                    };
                    let _ = machine.on_response(now, req.call, response);
                }
            }
        }
    }

    #[test]
    fn export_metadata_never_panics_and_reads_back_what_it_wrote(
        sha in ".{0,70}",
        revision in ".{0,24}",
        node in ".{0,16}",
        sig in proptest::option::of(".{0,90}"),
        good in any::<[u8; 32]>(),
        rev in any::<u64>(),
    ) {
        let lookup = |name: &str| match name {
            "sha256" => Some(sha.as_str()),
            "revision" => Some(revision.as_str()),
            "node-id" => Some(node.as_str()),
            "signature" => sig.as_deref(),
            _ => None,
        };
        let _ = ExportMetadata::from_lookup(lookup);
        let written = ExportMetadata {
            sha256: crate::digest::Sha256Digest::of(&good),
            revision: rev,
            node_id: node.clone(),
            exported_at: "2026-01-01T00:00:00.000Z".into(),
            key_id: sig.as_ref().map(|_| "0123456789abcdef".to_owned()),
            signature: sig.clone(),
        };
        let pairs = written.to_pairs();
        let read = ExportMetadata::from_lookup(|name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()));
        prop_assert_eq!(read, Ok(Some(written)));
    }

    #[test]
    fn keys_and_signatures_never_panic(text in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = PublicKey::parse(&text);
        let _ = Signature::parse(&text);
        let _ = crate::wire::decode_base64(&text);
        let encoded = crate::signature::encode_base64(&bytes);
        prop_assert_eq!(crate::wire::decode_base64(&encoded), Some(bytes));
    }

    #[test]
    fn header_values_never_panic_the_plugins(
        headers in prop::collection::vec((
            prop::sample::select(vec!["authorization", "apikey", "origin", "access-control-request-method", "x-limit", "kong-request-id", "host", "x-other"]),
            ".{0,60}",
        ), 0..6),
        method in prop::sample::select(vec!["GET", "OPTIONS", "POST"]),
        path in "/[a-z?=&%/.]{0,20}",
    ) {
        let (router, plugins) = plugin_fixture();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let view = RequestView { method, authority: "h", path: &path, scheme: "http", headers: &pairs, sni: None, port: None };
        if let RouteOutcome::Forward(f) = router.route(&view) {
            let mut request = plugin_request(&f, &path, &pairs);
            request.method = method;
            let _ = plugins.access(&request, &mut crate::plugins::MemoryCounters::default());
        }
    }
}

fn plugin_request<'a>(
    forward: &'a crate::router::Forward,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
) -> PluginRequest<'a> {
    PluginRequest {
        method: "GET",
        scheme: "http",
        path,
        upstream_path: &forward.path,
        headers,
        client_ip: "10.0.0.1".parse().ok().into(),
        route: Some(forward.route),
        service: Some(forward.service),
        now_ms: 1_700_000_000_000,
        random: 42,
    }
}

/// A router and the plugins that read request headers, all on one route.
fn plugin_fixture() -> (Router, PluginEngine) {
    let loaded = ConfigDocument::from_json(&json!({
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "http://b", "routes": [{"name": "r", "paths": ["/"]}]}],
        "consumers": [{"username": "u", "keyauth_credentials": [{"key": "k"}],
                       "basicauth_credentials": [{"username": "u", "password": "p"}],
                       "acls": [{"group": "g"}]}],
        "plugins": [
            {"name": "cors", "config": {"origins": ["https://a\\.example", "http://b.example"]}},
            {"name": "correlation-id", "config": {"echo_downstream": true}},
            {"name": "rate-limiting", "config": {"minute": 5, "limit_by": "header", "header_name": "x-limit"}},
            {"name": "request-transformer", "config": {"rename": {"headers": ["x-other:x-renamed"]}, "add": {"querystring": ["a:b"]}}},
            {"name": "key-auth", "config": {"anonymous": "u"}},
            {"name": "basic-auth", "config": {"anonymous": "u"}},
            {"name": "acl", "config": {"allow": ["g"]}}
        ]
    }))
    .expect("the fixture is valid");
    let router = Router::compile(&loaded.document);
    let plugins = PluginEngine::compile(&loaded.document, &Default::default());
    assert!(
        plugins.unsupported().is_empty(),
        "{:?}",
        plugins.unsupported()
    );
    (router, plugins)
}
