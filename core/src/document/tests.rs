use super::*;
use serde_json::json;

fn load(value: Value) -> Loaded {
    match ConfigDocument::from_json(&value) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid document, got {errors}"),
    }
}

/// The problems of an invalid document, as `path: message` lines.
fn problems(value: Value) -> Vec<String> {
    match ConfigDocument::from_json(&value) {
        Ok(loaded) => panic!("expected problems, document loaded: {loaded:?}"),
        Err(errors) => errors.problems.iter().map(|p| p.to_string()).collect(),
    }
}

/// Asserts that `expected` is among the problems of `value`.
fn assert_problem(value: Value, expected: &str) {
    let found = problems(value);
    assert!(
        found.iter().any(|p| p == expected),
        "expected problem {expected:?}, got {found:#?}"
    );
}

fn doc(body: Value) -> Value {
    let mut map = body.as_object().cloned().unwrap_or_default();
    map.insert("_format_version".into(), json!("3.0"));
    Value::Object(map)
}

#[test]
fn nested_shape_is_flattened_with_parents() {
    let loaded = load(doc(json!({
        "services": [{
            "name": "billing", "host": "billing.internal",
            "routes": [{
                "name": "invoices", "paths": ["/invoices"],
                "plugins": [{"name": "rate-limiting", "config": {"minute": 5}}]
            }],
            "plugins": [{"name": "key-auth"}]
        }],
        "consumers": [{
            "username": "alice",
            "keyauth_credentials": [{"key": "secret-a"}],
            "acls": [{"group": "admins"}],
            "plugins": [{"name": "request-termination"}]
        }],
        "upstreams": [{"name": "billing.internal", "targets": [{"target": "10.0.0.1:9000"}]}]
    })));
    assert!(loaded.warnings.is_empty());
    let d = loaded.document;
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].service, Some(0));
    assert_eq!(d.routes[0].path, "services[0].routes[0]");
    assert_eq!(d.keyauth_credentials[0].consumer, 0);
    assert_eq!(
        d.keyauth_credentials[0].path,
        "consumers[0].keyauth_credentials[0]"
    );
    assert_eq!(d.acls[0].consumer, 0);
    assert_eq!(d.targets[0].upstream, 0);
    assert_eq!(
        (d.targets[0].host.as_str(), d.targets[0].port),
        ("10.0.0.1", 9000)
    );

    // Plugins: under services, then under routes, then under consumers.
    let scopes: Vec<_> = d
        .plugins
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.service,
                p.route,
                p.consumer,
                p.path.as_str(),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        vec![
            ("key-auth", Some(0), None, None, "services[0].plugins[0]"),
            (
                "rate-limiting",
                None,
                Some(0),
                None,
                "services[0].routes[0].plugins[0]"
            ),
            (
                "request-termination",
                None,
                None,
                Some(0),
                "consumers[0].plugins[0]"
            ),
        ]
    );
    assert_eq!(d.plugins[1].config.get("minute"), Some(&json!(5)));
    // Nested children are not "unknown fields" of their parent.
    assert!(d.services[0].extra.is_empty());
    assert!(d.consumers[0].extra.is_empty());
    assert!(d.upstreams[0].extra.is_empty());
}

#[test]
fn flat_shape_resolves_names() {
    let d = load(doc(json!({
        "services": [{"name": "a", "host": "a.internal"}, {"name": "billing", "host": "b.internal"}],
        "routes": [{"name": "r", "service": "billing", "paths": ["/"]}],
        "consumers": [{"username": "alice"}, {"custom_id": "c-7"}],
        "keyauth_credentials": [{"key": "k1", "consumer": "alice"}, {"key": "k2", "consumer": "c-7"}],
        "acls": [{"group": "g", "consumer": {"username": "alice"}}, {"group": "g", "consumer": {"custom_id": "c-7"}}],
        "upstreams": [{"name": "up"}],
        "targets": [{"target": "h", "upstream": "up"}],
        "plugins": [
            {"name": "cors", "route": "r"},
            {"name": "cors", "service": {"name": "billing"}},
            {"name": "cors", "consumer": "alice"},
            {"name": "cors"}
        ]
    })))
    .document;
    assert_eq!(d.routes[0].service, Some(1));
    assert_eq!(d.keyauth_credentials[0].consumer, 0);
    assert_eq!(d.keyauth_credentials[1].consumer, 1);
    assert_eq!((d.acls[0].consumer, d.acls[1].consumer), (0, 1));
    assert_eq!(d.targets[0].upstream, 0);
    assert_eq!(d.plugins[0].route, Some(0));
    assert_eq!(d.plugins[1].service, Some(1));
    assert_eq!(d.plugins[2].consumer, Some(0));
    assert_eq!(
        (
            d.plugins[3].service,
            d.plugins[3].route,
            d.plugins[3].consumer
        ),
        (None, None, None)
    );
}

#[test]
fn flat_shape_resolves_ids() {
    let sid = "5f4a2b0c-1111-4c2e-9d57-0123456789ab";
    let rid = "6f4a2b0c-2222-4c2e-9d57-0123456789ab";
    let cid = "7f4a2b0c-3333-4c2e-9d57-0123456789ab";
    let uid = "8f4a2b0c-4444-4c2e-9d57-0123456789ab";
    let d = load(doc(json!({
        "services": [{"id": sid, "host": "x"}],
        "routes": [{"id": rid, "service": {"id": sid}, "hosts": ["example.com"]}],
        "consumers": [{"id": cid, "username": "bob"}],
        "acls": [{"group": "g", "consumer": {"id": cid}}],
        "upstreams": [{"id": uid, "name": "up"}],
        "targets": [{"target": "h:1", "upstream": uid}],
        "plugins": [{"name": "acl", "route": rid, "consumer": cid, "service": sid}]
    })))
    .document;
    assert_eq!(d.routes[0].service, Some(0));
    assert_eq!(d.services[0].id.given_id(), Some(sid));
    assert_eq!(d.acls[0].consumer, 0);
    assert_eq!(d.targets[0].upstream, 0);
    assert_eq!(
        (
            d.plugins[0].service,
            d.plugins[0].route,
            d.plugins[0].consumer
        ),
        (Some(0), Some(0), Some(0))
    );
}

#[test]
fn mixed_shape_orders_top_level_first_and_cross_references() {
    let d = load(doc(json!({
        "services": [{"name": "s", "host": "x", "routes": [{"name": "nested", "paths": ["/n"]}]}],
        "routes": [{"name": "flat", "service": "s", "paths": ["/f"]}],
        // A top-level plugin may name a route that is nested in a service.
        "plugins": [{"name": "cors", "route": "nested"}],
        "consumers": [{"username": "u", "acls": [{"group": "nested"}]}],
        "acls": [{"group": "flat", "consumer": "u"}]
    })))
    .document;
    let routes: Vec<_> = d
        .routes
        .iter()
        .map(|r| (r.name.as_deref(), r.service))
        .collect();
    assert_eq!(
        routes,
        vec![(Some("flat"), Some(0)), (Some("nested"), Some(0))]
    );
    assert_eq!(d.plugins[0].route, Some(1));
    let groups: Vec<_> = d.acls.iter().map(|a| a.group.as_str()).collect();
    assert_eq!(groups, vec!["flat", "nested"]);
}

#[test]
fn nested_child_may_repeat_its_own_parent() {
    let d = load(doc(json!({
        "services": [{"name": "s", "host": "x", "routes": [{"service": "s", "paths": ["/"]}]}]
    })))
    .document;
    assert_eq!(d.routes[0].service, Some(0));
}

#[test]
fn nested_child_naming_another_parent_is_an_error() {
    assert_problem(
        doc(json!({"services": [
            {"name": "a", "host": "x", "routes": [{"service": "b", "paths": ["/"]}]},
            {"name": "b", "host": "y"}
        ]})),
        "services[0].routes[0].service: names service \"b\" but the entity is nested under the \
         service at services[0]; remove this field or move the entity to the top level",
    );
}

#[test]
fn defaults_are_filled_in() {
    let d = load(doc(json!({
        "services": [{"host": "x"}],
        "routes": [{"paths": ["/"]}],
        "plugins": [{"name": "cors"}],
        "upstreams": [{"name": "up", "targets": [{"target": "h"}]}]
    })))
    .document;
    let s = &d.services[0];
    assert_eq!((s.protocol, s.port, s.retries), (Protocol::Http, 80, 5));
    assert_eq!(
        (s.connect_timeout, s.write_timeout, s.read_timeout),
        (60_000, 60_000, 60_000)
    );
    assert!(s.enabled);
    assert_eq!(s.upstream_path, None);
    let r = &d.routes[0];
    assert_eq!(r.protocols, vec![Protocol::Http, Protocol::Https]);
    assert!(r.strip_path && !r.preserve_host && r.request_buffering && r.response_buffering);
    assert_eq!((r.regex_priority, r.https_redirect_status_code), (0, 426));
    assert_eq!(r.path_handling, PathHandling::V0);
    assert_eq!(r.service, None);
    let p = &d.plugins[0];
    assert!(p.enabled && p.config.is_empty());
    assert_eq!(p.protocols.len(), 4);
    let u = &d.upstreams[0];
    assert_eq!((u.algorithm, u.slots), (Algorithm::RoundRobin, 10_000));
    assert_eq!(
        (u.hash_on.as_str(), u.hash_fallback.as_str()),
        ("none", "none")
    );
    let t = &d.targets[0];
    assert_eq!((t.port, t.weight), (8000, 100));
}

#[test]
fn null_fields_count_as_absent() {
    let d = load(doc(json!({
        "services": [{"host": "x", "port": null, "path": null, "name": null, "tags": null}],
        "routes": [{"paths": ["/"], "service": null, "methods": null, "strip_path": null}]
    })))
    .document;
    assert_eq!(d.services[0].port, 80);
    assert!(d.routes[0].strip_path);
}

#[test]
fn url_shorthand_is_parsed() {
    let d = load(doc(json!({"services": [
        {"url": "https://api.example.com/v1"},
        {"url": "http://10.0.0.2:8080"},
        {"url": "grpcs://[::1]:9000"},
        {"url": "wss://ws.example.com"}
    ]})))
    .document;
    let parts: Vec<_> = d
        .services
        .iter()
        .map(|s| {
            (
                s.protocol,
                s.host.as_str(),
                s.port,
                s.upstream_path.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![
            (Protocol::Https, "api.example.com", 443, Some("/v1")),
            (Protocol::Http, "10.0.0.2", 8080, None),
            (Protocol::Grpcs, "::1", 9000, None),
            (Protocol::Wss, "ws.example.com", 443, None),
        ]
    );
    assert_eq!(
        d.services[0].url.as_deref(),
        Some("https://api.example.com/v1")
    );
}

#[test]
fn url_problems() {
    assert_problem(
        doc(json!({"services": [{"url": "http://a", "host": "b", "port": 1}]})),
        "services[0].url: conflicts with \"host\", \"port\"; give either url or protocol/host/port/path",
    );
    assert_problem(
        doc(json!({"services": [{"url": "ftp://a"}]})),
        "services[0].url: unknown protocol \"ftp\"; expected one of http, https, grpc, grpcs, tcp, tls, tls_passthrough, udp, ws, wss",
    );
    assert_problem(
        doc(json!({"services": [{"url": "http://a:99999"}]})),
        "services[0].url: port \"99999\" in \"a:99999\" must be a number between 0 and 65535",
    );
    assert_problem(
        doc(json!({"services": [{"url": "example.com"}]})),
        "services[0].url: \"example.com\" is not a URL like \"http://host:port/path\"",
    );
}

#[test]
fn service_problems() {
    let found = problems(doc(json!({"services": [
        {"name": "a"},
        {"host": "x", "path": "v1", "port": 70000, "protocol": "htp", "connect_timeout": 0, "retries": "3"},
        {"host": "x", "protocol": "tcp", "path": "/a"}
    ]})));
    assert_eq!(
        found,
        vec![
            "services[0].host: required (or give url)",
            "services[1].protocol: unknown protocol \"htp\"; expected one of http, https, grpc, grpcs, tcp, tls, tls_passthrough, udp, ws, wss",
            "services[1].port: must be between 0 and 65535, found 70000",
            "services[1].path: path must start with \"/\"",
            "services[1].retries: expected an integer, found a string",
            "services[1].connect_timeout: must be between 1 and 2147483646, found 0",
            "services[2].path: a path is only allowed with protocol http or https, not tcp",
        ]
    );
}

#[test]
fn duplicate_names_and_ids() {
    let found = problems(doc(json!({
        "services": [
            {"name": "billing", "host": "x", "id": "s1"},
            {"name": "other", "host": "x", "id": "s1"},
            {"name": "billing", "host": "x"}
        ],
        "consumers": [
            {"username": "u", "custom_id": "c"},
            {"username": "u", "custom_id": "c"}
        ],
        "keyauth_credentials": [
            {"key": "top-secret", "consumer": "u"},
            {"key": "top-secret", "consumer": "u"}
        ]
    })));
    assert_eq!(
        found,
        vec![
            "services[1].id: duplicate id \"s1\" (also services[0])",
            "services[2].name: duplicate name \"billing\" (also services[0])",
            "consumers[1].username: duplicate username \"u\" (also consumers[0])",
            "consumers[1].custom_id: duplicate custom_id \"c\" (also consumers[0])",
            "keyauth_credentials[1].key: duplicate key (also keyauth_credentials[0])",
        ]
    );
    // The secret key is never echoed.
    assert!(found.iter().all(|p| !p.contains("top-secret")));
}

#[test]
fn unresolved_references() {
    let found = problems(doc(json!({
        "services": [{"name": "a", "host": "x"}],
        "routes": [
            {"paths": ["/"], "service": "a"},
            {"paths": ["/"], "service": "a"},
            {"paths": ["/"], "service": "a"},
            {"paths": ["/"], "service": "billing"}
        ],
        "plugins": [{"name": "cors", "service": {"id": "nope"}, "consumer": {"username": "ghost"}}],
        "targets": [{"target": "h", "upstream": "missing"}],
        "acls": [{"group": "g"}]
    })));
    assert_eq!(
        found,
        vec![
            "routes[3].service: unknown service \"billing\"",
            "targets[0].upstream: unknown upstream \"missing\"",
            "acls[0].consumer: required: nest this entity under a consumer or name its consumer here",
            "plugins[0].service: unknown service with id \"nope\"",
            "plugins[0].consumer: unknown consumer with username \"ghost\"",
        ]
    );
}

#[test]
fn route_problems_with_exact_paths() {
    let found = problems(doc(json!({
        "services": [{"host": "x", "routes": [
            {"paths": ["/ok"]},
            {"paths": ["/ok", "api"], "methods": ["get"], "protocols": ["http", "smtp"]},
            {"protocols": ["http"]},
            {"paths": "/"},
            {"paths": ["/"], "https_redirect_status_code": 303, "path_handling": "v2", "headers": {"x-a": "b"}}
        ]}],
        "routes": [{"name": "nothing"}, {"protocols": ["tcp"]}, {"protocols": ["http", "tcp"], "paths": ["/"]}]
    })));
    assert_eq!(
        found,
        vec![
            "routes[0]: must set at least one of methods, hosts, headers, paths (or snis for https)",
            "routes[1]: must set at least one of sources, destinations, snis",
            "routes[2].protocols: cannot mix HTTP protocols (http, https, grpc, grpcs, ws, wss) with stream protocols (tcp, tls, tls_passthrough, udp) in one route",
            "services[0].routes[1].protocols[1]: unknown protocol \"smtp\"; expected one of http, https, grpc, grpcs, tcp, tls, tls_passthrough, udp, ws, wss",
            "services[0].routes[1].methods[0]: method \"get\" must be uppercase letters, e.g. \"GET\"",
            "services[0].routes[1].paths[1]: path must start with \"/\" or \"~\" (regex)",
            "services[0].routes[2]: must set at least one of methods, hosts, headers, paths",
            "services[0].routes[3].paths: expected an array of strings, found a string",
            "services[0].routes[3]: must set at least one of methods, hosts, headers, paths (or snis for https)",
            "services[0].routes[4].headers.x-a: expected an array of strings, found a string",
            "services[0].routes[4].path_handling: unknown path_handling \"v2\"; expected \"v0\" or \"v1\"",
            "services[0].routes[4].https_redirect_status_code: must be one of 426, 301, 302, 307, 308, found 303",
        ]
    );
}

#[test]
fn https_route_may_match_on_snis_only() {
    let d = load(doc(json!({"routes": [
        {"protocols": ["https"], "snis": ["example.com"]},
        {"protocols": ["tls_passthrough"], "snis": ["example.com"]},
        {"protocols": ["tcp"], "destinations": [{"port": 5432}], "sources": [{"ip": "10.0.0.0/8"}]},
        {"hosts": ["*.example.com"], "headers": {"x-version": ["1", "2"]}, "regex_priority": -3}
    ]})))
    .document;
    assert_eq!(d.routes[2].destinations[0].port, Some(5432));
    assert_eq!(d.routes[2].sources[0].ip.as_deref(), Some("10.0.0.0/8"));
    assert_eq!(d.routes[3].headers["x-version"], vec!["1", "2"]);
    assert_eq!(d.routes[3].regex_priority, -3);
}

#[test]
fn plugin_problems() {
    let found = problems(doc(json!({
        "services": [{"name": "s", "host": "x", "plugins": [{"name": "cors"}]}],
        "plugins": [
            {"name": "cors", "service": "s"},
            {"name": "cors"},
            {"name": "cors"},
            {"config": []},
            {"name": "a", "instance_name": "i"},
            {"name": "b", "instance_name": "i"}
        ]
    })));
    assert_eq!(
        found,
        vec![
            "plugins[2]: duplicate plugin \"cors\" for the same global scope (also plugins[1])",
            "plugins[3].name: required",
            "plugins[3].config: expected an object, found an array",
            "plugins[5].instance_name: duplicate instance_name \"i\" (also plugins[4])",
            "services[0].plugins[0]: duplicate plugin \"cors\" for the same service (also plugins[0])",
        ]
    );
}

#[test]
fn upstream_and_target_problems() {
    let found = problems(doc(json!({"upstreams": [
        {"name": "up", "algorithm": "random", "slots": 5, "targets": [
            {"target": "h:1", "weight": 70000},
            {"target": "h:1"},
            {"target": "h:x"},
            {}
        ]},
        {"name": "bad name/"}
    ]})));
    assert_eq!(
        found,
        vec![
            "upstreams[0].algorithm: unknown algorithm \"random\"; expected one of round-robin, consistent-hashing, least-connections, latency",
            "upstreams[0].slots: must be between 10 and 65536, found 5",
            "upstreams[1].name: \"bad name/\" is not a valid hostname or IP address (no scheme, port or path here)",
            "upstreams[0].targets[0].weight: must be between 0 and 65535, found 70000",
            "upstreams[0].targets[1].target: duplicate target \"h:1\" in the same upstream (also upstreams[0].targets[0])",
            "upstreams[0].targets[2].target: port \"x\" in \"h:x\" must be a number between 0 and 65535",
            "upstreams[0].targets[3].target: required",
        ]
    );
}

#[test]
fn consumer_needs_username_or_custom_id() {
    assert_problem(
        doc(json!({"consumers": [{"tags": ["x"]}]})),
        "consumers[0]: must set at least one of username, custom_id",
    );
}

#[test]
fn type_problems_name_expected_and_found() {
    let found = problems(doc(json!({
        "services": {"host": "x"},
        "routes": ["not an object"],
        "consumers": [{"username": 7}],
        "acls": [{"group": "g", "consumer": 3}]
    })));
    assert_eq!(
        found,
        vec![
            "services: expected an array, found an object",
            "routes[0]: expected an object, found a string",
            "consumers[0].username: expected a string, found a number",
            "acls[0].consumer: expected an id or name string, or an object like {\"id\": \"...\"}, found a number",
        ]
    );
}

#[test]
fn many_problems_are_reported_together() {
    let err = ConfigDocument::from_json(&json!({
        "_format_version": "4.0",
        "routes": [{"service": "billing", "paths": ["x"]}],
        "plugins": [{}]
    }))
    .expect_err("invalid");
    assert_eq!(err.len(), 4);
    assert!(!err.is_empty());
    let text = err.to_string();
    assert!(
        text.starts_with(
            "config is invalid (4 problems):\n  _format_version: unsupported format version \"4.0\""
        ),
        "{text}"
    );
    assert!(text.contains("\n  routes[0].service: unknown service \"billing\""));
    assert!(text.contains("\n  routes[0].paths[0]: path must start with \"/\" or \"~\" (regex)"));
    assert!(text.contains("\n  plugins[0].name: required"));
}

#[test]
fn format_version_is_required_and_checked() {
    assert_problem(
        json!({}),
        "_format_version: required; Kong 3.x reads \"3.0\", and \"1.1\" or \"2.1\" (route paths \
         migrated on load): add \"_format_version\": \"3.0\"",
    );
    assert_problem(
        json!({"_format_version": "4.0"}),
        "_format_version: unsupported format version \"4.0\"; Kong 3.x reads \"3.0\", and \"1.1\" \
         or \"2.1\" (route paths migrated on load)",
    );
    assert_problem(
        json!({"_format_version": "2.0"}),
        "_format_version: unsupported format version \"2.0\"; Kong 3.x reads \"3.0\", and \"1.1\" \
         or \"2.1\" (route paths migrated on load)",
    );
    assert_problem(
        json!({"_format_version": 3.0}),
        "_format_version: expected a string such as \"3.0\", found a decimal number",
    );
    for version in ["1.1", "2.1", "3.0"] {
        let d = load(json!({ "_format_version": version })).document;
        assert_eq!(d.format_version, version);
        assert!(d.services.is_empty());
    }
}

/// Kong 3.9.x `kong/db/declarative/migrations/route_path.lua`, as
/// `spec/01-unit/01-db/01-schema/11-declarative_config/04-on-the-fly-migration_spec.lua` checks
/// it: the same routes, top-level or nested in a service, in a 1.1, 2.1 and 3.0 file.
#[test]
fn older_format_versions_have_their_route_paths_migrated_as_kong_does() {
    for version in ["1.1", "2.1", "3.0"] {
        let top_level = json!({
            "_format_version": version,
            "services": [{"name": "foo", "host": "example.com", "protocol": "https"}],
            "routes": [{"name": "foo", "protocols": ["https"], "paths": ["/regex.+", "/prefix"],
                        "snis": ["example.com"], "service": "foo"}],
        });
        let nested = json!({
            "_format_version": version,
            "services": [{"name": "foo", "host": "example.com", "protocol": "https", "routes": [
                {"name": "foo", "protocols": ["https"], "paths": ["/regex.+", "/prefix"],
                 "snis": ["example.com"]}
            ]}],
        });
        for (shape, value) in [("top-level", top_level), ("nested", nested)] {
            let loaded = load(value);
            let paths = &loaded.document.routes[0].paths;
            if version == "3.0" {
                assert_eq!(paths, &["/regex.+", "/prefix"], "{version} {shape}");
                assert!(loaded.warnings.is_empty());
            } else {
                assert_eq!(paths, &["~/regex.+", "/prefix"], "{version} {shape}");
                let at = if shape == "nested" {
                    "services[0].routes[0].paths[0]"
                } else {
                    "routes[0].paths[0]"
                };
                assert_eq!(
                    loaded.warnings,
                    vec![Problem::new(
                        at,
                        format!(
                            "\"/regex.+\" read as \"~/regex.+\": Kong 3.x migrates the paths of \
                             _format_version \"{version}\" files on load (a path with characters \
                             outside [a-zA-Z0-9.-_~/%] was a regex, now marked with \"~\")"
                        )
                    )]
                );
            }
        }
    }
    // Plain paths are normalised; the route then matches what Kong's does.
    let loaded = load(json!({
        "_format_version": "1.1",
        "services": [{"name": "s", "host": "h", "routes": [{"paths": ["/a//b/%7Ec"]}]}],
    }));
    assert_eq!(loaded.document.routes[0].paths, ["/a/b/~c"]);
    assert!(loaded.warnings[0]
        .message
        .contains("plain paths are normalised"));
    // "validation should happens after migration" (the same spec file): a 2.x path that is
    // not a valid regex is refused once migrated.
    let found = problems(json!({
        "_format_version": "2.1",
        "services": [{"name": "bar", "host": "example.test", "routes": [
            {"name": "foo", "paths": ["/regex.+(", "/prefix"]}
        ]}],
    }));
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("services[0].routes[0].paths[0]: invalid regex \"~/regex.+(\"")),
        "{found:#?}"
    );
}

#[test]
fn unknown_fields_are_preserved() {
    let d = load(doc(json!({
        "services": [{"host": "x", "client_certificate": null, "tls_verify": true, "x-note": {"a": 1}}],
        "routes": [{"paths": ["/"], "expression": "http.path == \"/\""}],
        "upstreams": [{"name": "up", "healthchecks": {"active": {"type": "http"}}, "hash_on_header": "x-user"}],
        "plugins": [{"name": "cors", "ordering": {"before": {"access": ["acl"]}}}],
        "consumers": [{"username": "u", "consumer_group": "gold"}]
    })))
    .document;
    assert_eq!(d.services[0].extra.get("tls_verify"), Some(&json!(true)));
    assert_eq!(d.services[0].extra.get("x-note"), Some(&json!({"a": 1})));
    assert_eq!(
        d.services[0].extra.get("client_certificate"),
        Some(&Value::Null)
    );
    assert!(d.routes[0].extra.contains_key("expression"));
    assert!(d.upstreams[0].extra.contains_key("healthchecks"));
    assert_eq!(
        d.upstreams[0].extra.get("hash_on_header"),
        Some(&json!("x-user"))
    );
    assert!(d.plugins[0].extra.contains_key("ordering"));
    assert!(d.consumers[0].extra.contains_key("consumer_group"));
    assert!(!d.services[0].extra.contains_key("host"));
}

#[test]
fn unsupported_kinds_warn_and_underscore_keys_are_fine() {
    let loaded = load(json!({
        "_format_version": "3.0",
        "_transform": false,
        "_comment": "hi",
        "_workspace": "default",
        "_info": {"select_tags": []},
        "certificates": [{"cert": "..."}],
        "servces": []
    }));
    assert_eq!(
        loaded.warnings,
        vec![
            Problem::new(
                "certificates",
                "entity kind not supported by Fallback; ignored (these entities are not \
                 enforced while running on the fallback config)"
            ),
            Problem::new(
                "servces",
                "unknown entity kind; ignored (is the name misspelt?)"
            ),
        ]
    );
}

#[test]
fn top_level_must_be_an_object() {
    let err = ConfigDocument::from_json(&json!([1, 2])).expect_err("invalid");
    assert_eq!(
        err.problems,
        vec![Problem::new(
            "$",
            "expected a JSON object at the top level, found an array"
        )]
    );
    assert_eq!(
        err.to_string(),
        "config is invalid (1 problem):\n  $: expected a JSON object at the top level, found an array"
    );
}

#[test]
fn duplicate_keys_are_validation_errors_at_their_path() {
    // Last-one-wins would load zero routes without a word.
    let err = ConfigDocument::from_slice(
        br#"{"_format_version":"3.0","routes":[{"paths":["/"]}],"routes":[]}"#,
    )
    .expect_err("duplicate routes");
    assert_eq!(err.len(), 1);
    assert_eq!(err.problems[0].path, "$");
    assert!(
        err.problems[0]
            .message
            .starts_with("key \"routes\" appears twice"),
        "{}",
        err.problems[0].message
    );
    let err = ConfigDocument::from_slice(
        br#"{"_format_version":"3.0","services":[{"host":"a","routes":[{"paths":["/"],"strip_path":true,"strip_path":false}]}]}"#,
    )
    .expect_err("duplicate field");
    assert_eq!(err.problems[0].path, "services[0].routes[0]");
    assert!(err.problems[0].message.contains("\"strip_path\""));
}

#[test]
fn from_slice_refuses_oversized_and_overdeep_documents() {
    let deep = format!(
        "{{\"_format_version\":\"3.0\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = ConfigDocument::from_slice(deep.as_bytes()).expect_err("too deep");
    assert!(err.problems[0].path.starts_with("x[0][0]"), "{err}");
    assert!(
        err.problems[0].message.contains("deeper than 64 levels"),
        "{err}"
    );

    let big = vec![b' '; crate::limits::MAX_DOCUMENT_BYTES + 1];
    let err = ConfigDocument::from_slice(&big).expect_err("too large");
    assert_eq!(err.problems[0].path, "$");
    assert!(
        err.problems[0].message.starts_with(&format!(
            "the document is {} bytes, more than the {} bytes (MAX_DOCUMENT_BYTES)",
            big.len(),
            crate::limits::MAX_DOCUMENT_BYTES
        )),
        "{err}"
    );
}

#[test]
fn from_slice_reports_syntax_errors_with_position() {
    let err = ConfigDocument::from_slice(b"{\n  \"_format_version\": \"3.0\",\n  oops\n}")
        .expect_err("invalid");
    assert_eq!(err.len(), 1);
    assert_eq!(err.problems[0].path, "$");
    assert!(
        err.problems[0]
            .message
            .starts_with("not valid JSON (line 3, column 3): "),
        "{}",
        err.problems[0].message
    );
    let loaded =
        ConfigDocument::from_slice(br#"{"_format_version":"3.0","services":[{"host":"x"}]}"#)
            .expect("valid");
    assert_eq!(loaded.document.services.len(), 1);
}

#[test]
fn hostile_inputs_do_not_panic() {
    let inputs = [
        json!(null),
        json!("x"),
        json!({"_format_version": null}),
        json!({"_format_version": "3.0", "services": [{"url": "http://[::1"}, {"url": "http://é:ü/ä"}, {"url": "://"}, {"url": "http://"}]}),
        json!({"_format_version": "3.0", "targets": [{"target": "[::1]x", "upstream": {}}, {"target": ":", "upstream": {"id": 1}}]}),
        json!({"_format_version": "3.0", "routes": [{"sources": [{}, 1], "headers": {"": []}, "regex_priority": 1.5e300}]}),
        json!({"_format_version": "3.0", "plugins": [{"name": "x", "route": {"name": ""}, "consumer": ""}]}),
        json!({"_format_version": "3.0", "services": [{"host": "x", "port": 18446744073709551615u64}]}),
    ];
    for input in inputs {
        let result = ConfigDocument::from_json(&input);
        assert!(result.is_err(), "{input}: {result:?}");
    }
    for bytes in [&b""[..], b"\xff\xfe", b"[", b"{\"a\":"] {
        assert!(ConfigDocument::from_slice(bytes).is_err());
    }
}

#[test]
fn ids_need_only_be_non_empty() {
    load(doc(json!({"services": [{"id": "svc-1", "host": "x"}]})));
    assert_problem(
        doc(json!({"services": [{"id": "", "host": "x"}]})),
        "services[0].id: must not be empty",
    );
}

#[test]
fn basicauth_credentials_load_nested_and_flat_like_keyauth() {
    let loaded = load(doc(json!({
        "consumers": [
            {"username": "alice", "id": "c-1",
             "basicauth_credentials": [{"username": "alice", "password": "0123abcd"}]},
            {"username": "bob"}
        ],
        "basicauth_credentials": [{"username": "bob", "password": "s3cret", "consumer": "bob", "id": "b-1"}]
    })));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let d = loaded.document;
    assert_eq!(d.basicauth_credentials.len(), 2);
    assert_eq!(d.basicauth_credentials[0].username, "bob");
    assert_eq!(d.basicauth_credentials[0].consumer, 1);
    assert_eq!(d.basicauth_credentials[0].id.given_id(), Some("b-1"));
    assert_eq!(
        d.basicauth_credentials[1].path,
        "consumers[0].basicauth_credentials[0]"
    );
    assert_eq!(d.basicauth_credentials[1].consumer, 0);
    assert_eq!(d.basicauth_credentials[1].password, "0123abcd");
}

#[test]
fn basicauth_credentials_need_a_unique_username_and_a_consumer() {
    let found = problems(doc(json!({
        "consumers": [{"username": "alice"}],
        "basicauth_credentials": [
            {"username": "a", "password": "x", "consumer": "alice"},
            {"username": "a", "password": "hunter2", "consumer": "alice"},
            {"password": "y"}
        ]
    })));
    assert!(found.contains(
        &"basicauth_credentials[1].username: duplicate username \"a\" (also basicauth_credentials[0])"
            .to_owned()
    ));
    assert!(found
        .iter()
        .any(|p| p.starts_with("basicauth_credentials[2].consumer: required")));
    assert!(found
        .iter()
        .any(|p| p.starts_with("basicauth_credentials[2].username")));
    assert!(found.iter().all(|p| !p.contains("hunter2")));
}

/// Kong 3.9.x `generate_ids` (declarative_config.lua): the ids Kong gives entities without
/// one. The expected UUIDs are UUIDv5 of Kong's names for them, computed apart (Python's
/// `uuid.uuid5`); the consumer's is go-kong's published vector for "some.username".
#[test]
fn entities_without_ids_get_the_ones_kong_generates() {
    let d = load(doc(json!({
        "services": [{
            "name": "billing", "host": "billing.internal",
            "routes": [{
                "name": "invoices", "paths": ["/invoices"],
                "plugins": [{"name": "rate-limiting", "config": {"minute": 5}}]
            }],
            "plugins": [{"name": "key-auth"}]
        }],
        "consumers": [{
            "username": "some.username",
            "keyauth_credentials": [{"key": "secret-a"}],
            "basicauth_credentials": [{"username": "alice-basic", "password": "p"}],
            "acls": [{"group": "admins"}],
            "plugins": [{"name": "request-termination"}]
        }],
        "upstreams": [{"name": "billing.internal", "targets": [{"target": "10.0.0.1:9000"}]}],
        "targets": [{"upstream": "billing.internal", "target": "10.0.0.2"}],
        "plugins": [
            {"name": "cors"},
            {"name": "acl", "route": "invoices", "service": "billing", "config": {"allow": ["a"]}}
        ]
    })))
    .document;
    let plugin = |name: &str| &d.plugins.iter().find(|p| p.name == name).expect(name).id;
    let expected: [(&str, &EntityId, &str); 13] = [
        (
            "service",
            &d.services[0].id,
            "aa93ac78-2b4d-59d0-9897-62a161ae6928",
        ),
        (
            "route",
            &d.routes[0].id,
            "547be8f9-eaa0-5dbf-b884-2c9df761d0fe",
        ),
        (
            "consumer",
            &d.consumers[0].id,
            "782780c4-d345-5682-bdf6-722dccaf93e0",
        ),
        (
            "upstream",
            &d.upstreams[0].id,
            "e667294d-15f9-5a0c-826d-820b5d19bf6c",
        ),
        // targets:*:<upstream as written>:<target>; nested: the upstream's id.
        (
            "top-level target",
            &d.targets[0].id,
            "54b2a24b-2fb0-5aa0-aee7-9d2aa9a66d07",
        ),
        (
            "nested target",
            &d.targets[1].id,
            "d0d2f635-8b34-55aa-96d4-baf8eff2b02d",
        ),
        // plugins:*:<name>:<route>:<service>:<consumer>.
        (
            "global plugin",
            plugin("cors"),
            "48ee727e-8b90-5faa-bda1-a3c6bc3c9daa",
        ),
        (
            "plugin naming its scope",
            plugin("acl"),
            "8da96d15-3b13-5a32-b69b-5044eb0a8b17",
        ),
        (
            "service plugin",
            plugin("key-auth"),
            "b6bce088-61bd-5149-b5c9-7178770b80d5",
        ),
        (
            "route plugin",
            plugin("rate-limiting"),
            "830f49ab-3c50-5ed5-ac39-96fc5ed76fdd",
        ),
        (
            "consumer plugin",
            plugin("request-termination"),
            "e83b367b-9b76-5cca-b579-490dd6781439",
        ),
        (
            "basic-auth",
            &d.basicauth_credentials[0].id,
            "a979480a-0f9c-5e3d-ba73-aca9a8c03e39",
        ),
        ("acl", &d.acls[0].id, "dd8c6812-96c0-5200-af3c-92537f7458c6"),
    ];
    for (what, id, uuid) in expected {
        assert_eq!((id.source(), id.as_str()), (IdSource::Kong, uuid), "{what}");
    }
    // key-auth's cache key is its generated-if-absent key: Kong draws a random id.
    assert_eq!(d.keyauth_credentials[0].id.source(), IdSource::Local);
}

#[test]
fn where_kong_draws_random_ids_the_loader_gives_stable_local_ones() {
    let body = doc(json!({
        "services": [{"host": "anonymous.internal", "routes": [
            {"paths": ["/a"], "plugins": [{"name": "cors"}]}
        ]}],
        "consumers": [
            {"custom_id": "c-1", "acls": [{"group": "g"}]},
            {"id": "given-consumer", "username": "u", "keyauth_credentials": [{"key": "k"}]}
        ],
    }));
    let first = load(body.clone()).document;
    let again = load(body).document;
    let ids = |d: &ConfigDocument| {
        vec![
            d.services[0].id.clone(),
            d.routes[0].id.clone(),
            d.plugins[0].id.clone(),
            d.consumers[0].id.clone(),
            d.acls[0].id.clone(),
            d.keyauth_credentials[0].id.clone(),
        ]
    };
    for id in ids(&first) {
        // No name, no username, a parent without Kong's id, or an auto key.
        assert_eq!(id.source(), IdSource::Local, "{id}");
        assert_eq!(id.kong(), None);
        assert_eq!(id.as_str().len(), 36);
    }
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(first.consumers[1].id.given_id(), Some("given-consumer"));
}

#[test]
fn a_generated_id_equal_to_a_given_one_is_refused_as_kong_does() {
    // Kong's id for a service named "a" is given to another service.
    let taken = crate::document::ids::kong_id("services", "a");
    assert_problem(
        doc(json!({"services": [
            {"name": "a", "host": "h"},
            {"id": taken, "name": "b", "host": "h"},
        ]})),
        &format!(
            "services[0]: has no id, and the one Kong generates for it ({taken}) is the id of \
             services[1]; give this entity its own id"
        ),
    );
}
