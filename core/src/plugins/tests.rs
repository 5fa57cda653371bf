//! Each plugin against Kong's documented behaviour, and Kong's scoping and ordering rules.

use super::basic_auth::{encode_base64, kong_hash};
use super::*;
use serde_json::{json, Value};

fn engine(body: Value) -> PluginEngine {
    engine_ignoring(body, &[])
}

fn engine_ignoring(body: Value, ignore: &[&str]) -> PluginEngine {
    let policy = PluginPolicy {
        ignore: ignore.iter().map(|s| s.to_string()).collect(),
        refuse_observe_only: false,
    };
    engine_with(body, &policy)
}

fn engine_with(body: Value, policy: &PluginPolicy) -> PluginEngine {
    let mut map = body.as_object().cloned().unwrap_or_default();
    map.insert("_format_version".into(), json!("3.0"));
    map.entry("services").or_insert(json!([
        {"name": "svc", "id": "s-1", "host": "upstream.internal", "routes": [
            {"name": "r1", "id": "r-1", "paths": ["/one"]},
            {"name": "r2", "id": "r-2", "paths": ["/two"]}
        ]},
        {"name": "other", "id": "s-2", "host": "other.internal", "routes": [
            {"name": "r3", "id": "r-3", "paths": ["/three"]}
        ]}
    ]));
    let loaded = ConfigDocument::from_json(&Value::Object(map)).expect("valid document");
    PluginEngine::compile(&loaded.document, policy)
}

/// A request builder: route r1 of service svc unless told otherwise.
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    ip: &'static str,
    route: usize,
    service: usize,
    now_ms: u64,
    /// How many times the last run read the client's address (read lazily, as the filter
    /// does: a host call).
    ip_reads: std::cell::Cell<u32>,
}

fn req(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.to_owned(),
        headers: Vec::new(),
        ip: "10.0.0.7",
        route: 0,
        service: 0,
        ip_reads: std::cell::Cell::new(0),
        now_ms: 1_700_000_000_000,
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    fn method(mut self, method: &'static str) -> Req {
        self.method = method;
        self
    }
    fn ip(mut self, ip: &'static str) -> Req {
        self.ip = ip;
        self
    }
    fn route(mut self, route: usize, service: usize) -> Req {
        self.route = route;
        self.service = service;
        self
    }
    fn at(mut self, now_ms: u64) -> Req {
        self.now_ms = now_ms;
        self
    }
    fn run(&self, e: &PluginEngine) -> PluginOutcome<'static> {
        self.run_with(e, &mut MemoryCounters::default())
    }
    fn run_with(&self, e: &PluginEngine, counters: &mut dyn Counters) -> PluginOutcome<'static> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let ip: Option<IpAddr> = self.ip.parse().ok();
        self.ip_reads.set(0);
        let read_ip = || {
            self.ip_reads.set(self.ip_reads.get() + 1);
            ip
        };
        let request = PluginRequest {
            method: self.method,
            scheme: "http",
            path: self.path.split('?').next().unwrap(),
            upstream_path: &self.path,
            headers: &headers,
            client_ip: ClientIp::Lazy(&read_ip),
            route: Some(self.route),
            service: Some(self.service),
            now_ms: self.now_ms,
            random: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        };
        let outcome = e.access(&request, counters).into_owned();
        assert!(
            self.ip_reads.get() <= 1,
            "the client's address is read once at most"
        );
        outcome
    }
}

fn respond(outcome: PluginOutcome) -> LocalResponse {
    match outcome {
        PluginOutcome::Respond(r) => r,
        other => panic!("expected a local response, got {other:?}"),
    }
}

fn forward(outcome: PluginOutcome) -> UpstreamChanges {
    match outcome {
        PluginOutcome::Forward(f) => f,
        other => panic!("expected the request to be forwarded, got {other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn message(r: &LocalResponse) -> String {
    let body: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    body["message"].as_str().unwrap().to_owned()
}

fn upstream(f: &UpstreamChanges, name: &str) -> Option<String> {
    f.upstream_headers()
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_string())
}

fn response_headers(plan: &ResponsePlan, start: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = start
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    plan.apply(&mut headers);
    headers
}

fn consumers() -> Value {
    json!([
        {"username": "alice", "id": "c-alice", "custom_id": "A1",
         "keyauth_credentials": [{"key": "alice-key", "id": "k-alice"}],
         "acls": [{"group": "admins"}, {"group": "staff"}]},
        {"username": "bob", "id": "c-bob",
         "keyauth_credentials": [{"key": "bob-key", "id": "k-bob"}],
         "acls": [{"group": "guests"}]},
        {"username": "anon", "id": "c-anon"}
    ])
}

// ---- key-auth ----

/// A file without ids (Kong's `kong config init` template, decK files): Kong generates the
/// consumer's id on load (UUIDv5 of its username; go-kong's published vector for
/// "some.username"), so `X-Consumer-ID` carries it; the credential's id Kong draws at random,
/// so here it is a stable UUID of its own, never the credential's place in the file.
#[test]
fn key_auth_headers_carry_the_ids_kong_generates() {
    let body = json!({
        "consumers": [{"username": "some.username",
                       "keyauth_credentials": [{"key": "the-key"}]}],
        "plugins": [{"name": "key-auth"}]
    });
    let credential = |e: &PluginEngine| {
        let f = forward(req("/one").header("apikey", "the-key").run(e));
        assert_eq!(
            upstream(&f, "x-consumer-id").as_deref(),
            Some("782780c4-d345-5682-bdf6-722dccaf93e0")
        );
        upstream(&f, "x-credential-identifier").expect("a credential id")
    };
    let id = credential(&engine(body.clone()));
    assert_eq!(id.len(), 36, "{id}");
    assert!(!id.contains("keyauth_credentials"), "{id}");
    // Every worker, every reload: the same id.
    assert_eq!(credential(&engine(body)), id);
}

#[test]
fn key_auth_kong_documented_answers() {
    let e = engine(json!({"consumers": consumers(), "plugins": [{"name": "key-auth"}]}));
    let r = respond(req("/one").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (401, "No API key found in request")
    );
    assert_eq!(
        header(&r.headers, "WWW-Authenticate"),
        Some("Key realm=\"kong\"")
    );
    assert_eq!(header(&r.headers, "Content-Type"), Some(JSON_CONTENT_TYPE));
    assert_eq!(r.plugin, "key-auth");

    let r = respond(req("/one").header("apikey", "nope").run(&e));
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));

    let r = respond(req("/one?apikey=a&apikey=b").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (401, "Duplicate API key found")
    );

    let f = forward(req("/one").header("ApiKey", "alice-key").run(&e));
    assert_eq!(
        upstream(&f, "x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(upstream(&f, "x-consumer-id").as_deref(), Some("c-alice"));
    assert_eq!(upstream(&f, "x-consumer-custom-id").as_deref(), Some("A1"));
    assert_eq!(
        upstream(&f, "x-credential-identifier").as_deref(),
        Some("k-alice")
    );
    // The key stays upstream unless hide_credentials.
    assert!(f.path.is_none());
    assert!(f
        .request_headers
        .iter()
        .all(|op| !matches!(op, HeaderOp::Remove(n) if n == "apikey")));

    let f = forward(req("/one?x=1&apikey=bob-key&y=2").run(&e));
    assert_eq!(upstream(&f, "x-consumer-username").as_deref(), Some("bob"));
}

#[test]
fn key_auth_key_names_locations_and_hide_credentials() {
    let e = engine(
        json!({"consumers": consumers(), "plugins": [{"name": "key-auth", "config": {
            "key_names": ["x-api-key", "token"], "key_in_query": false, "hide_credentials": true,
            "realm": "api"
        }}]}),
    );
    let r = respond(req("/one?token=alice-key").run(&e));
    assert_eq!(message(&r), "No API key found in request");
    assert_eq!(
        header(&r.headers, "WWW-Authenticate"),
        Some("Key realm=\"api\"")
    );

    let f = forward(req("/one?q=1").header("Token", "alice-key").run(&e));
    assert!(f
        .request_headers
        .contains(&HeaderOp::Remove("token".into())));
    assert_eq!(
        upstream(&f, "x-consumer-username").as_deref(),
        Some("alice")
    );

    let e = engine(
        json!({"consumers": consumers(), "plugins": [{"name": "key-auth", "config": {
            "key_in_header": false, "hide_credentials": true
        }}]}),
    );
    assert_eq!(
        respond(req("/one").header("apikey", "alice-key").run(&e)).status,
        401
    );
    let f = forward(req("/one?a=1&apikey=alice-key&b=%20x").run(&e));
    assert_eq!(f.path.as_deref(), Some("/one?a=1&b=%20x"));
    let f = forward(req("/one?apikey=alice-key").run(&e));
    assert_eq!(f.path.as_deref(), Some("/one"));
}

#[test]
fn key_auth_anonymous_and_preflight() {
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth", "config": {"anonymous": "anon", "run_on_preflight": false}}
    ]}));
    let f = forward(req("/one").run(&e));
    assert_eq!(upstream(&f, "x-consumer-username").as_deref(), Some("anon"));
    assert_eq!(
        upstream(&f, "x-anonymous-consumer").as_deref(),
        Some("true")
    );
    let f = forward(req("/one").header("apikey", "wrong").run(&e));
    assert_eq!(upstream(&f, "x-consumer-id").as_deref(), Some("c-anon"));
    // A client cannot smuggle its own identity headers through.
    let f = forward(req("/one").header("x-consumer-username", "root").run(&e));
    assert_eq!(upstream(&f, "x-consumer-username").as_deref(), Some("anon"));
    // run_on_preflight: false lets OPTIONS through untouched.
    let f = forward(req("/one").method("OPTIONS").run(&e));
    assert!(f.request_headers.is_empty());

    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth", "config": {"anonymous": "no-such-consumer"}}
    ]}));
    let r = respond(req("/one").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (500, "An unexpected error occurred")
    );
}

// ---- basic-auth ----

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        encode_base64(format!("{user}:{password}").as_bytes())
    )
}

#[test]
fn basic_auth_checks_kong_hashed_and_clear_passwords() {
    let hashed = kong_hash("c-alice", "open sesame");
    let e = engine(json!({
        "consumers": [
            {"username": "alice", "id": "c-alice",
             "basicauth_credentials": [{"username": "alice", "password": hashed, "id": "b-1"}]},
            {"username": "bob", "basicauth_credentials": [{"username": "bob", "password": "hunter2"}]}
        ],
        "plugins": [{"name": "basic-auth", "config": {"hide_credentials": true}}]
    }));
    let r = respond(req("/one").run(&e));
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));
    assert_eq!(
        header(&r.headers, "WWW-Authenticate"),
        Some("Basic realm=\"kong\"")
    );

    let r = respond(
        req("/one")
            .header("Authorization", &basic("alice", "wrong"))
            .run(&e),
    );
    // Kong 3.9.x: one message for every failure.
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));
    assert_eq!(
        header(&r.headers, "WWW-Authenticate"),
        Some("Basic realm=\"kong\"")
    );
    // The stored hash itself is not a password.
    let r = respond(
        req("/one")
            .header("Authorization", &basic("alice", &hashed))
            .run(&e),
    );
    assert_eq!(r.status, 401);
    let r = respond(req("/one").header("Authorization", "Bearer xyz").run(&e));
    assert_eq!(r.status, 401);

    let f = forward(
        req("/one")
            .header("Authorization", &basic("alice", "open sesame"))
            .run(&e),
    );
    assert_eq!(
        upstream(&f, "x-consumer-username").as_deref(),
        Some("alice")
    );
    // basic-auth's set_consumer: the credential's username, not its id ("b-1").
    assert_eq!(
        upstream(&f, "x-credential-identifier").as_deref(),
        Some("alice")
    );
    assert_eq!(upstream(&f, "x-credential-username"), None);
    assert!(f
        .request_headers
        .contains(&HeaderOp::Remove("authorization".into())));

    let f = forward(
        req("/one")
            .header("Proxy-Authorization", &basic("bob", "hunter2"))
            .run(&e),
    );
    assert_eq!(upstream(&f, "x-consumer-username").as_deref(), Some("bob"));
}

#[test]
fn kong_hash_is_sha1_of_password_then_consumer_id() {
    // sha1("passwordc-1"), computed independently (`printf 'passwordc-1' | sha1sum`).
    assert_eq!(
        kong_hash("c-1", "password"),
        "f53351e6a0ce3b378639d5a63c7997675bc6548d"
    );
}

#[test]
fn two_auth_plugins_with_anonymous_are_a_logical_or() {
    let e = engine(json!({
        "consumers": [
            {"username": "alice", "id": "c-alice", "keyauth_credentials": [{"key": "k"}],
             "basicauth_credentials": [{"username": "al", "password": "pw"}]},
            {"username": "anon", "id": "c-anon"}
        ],
        "plugins": [
            {"name": "key-auth", "config": {"anonymous": "c-anon"}},
            {"name": "basic-auth", "config": {"anonymous": "c-anon"}},
            {"name": "acl", "config": {"deny": ["nobody"]}}
        ]
    }));
    let f = forward(
        req("/one")
            .header("Authorization", &basic("al", "pw"))
            .run(&e),
    );
    assert_eq!(
        upstream(&f, "x-consumer-username").as_deref(),
        Some("alice")
    );
    let f = forward(req("/one").header("apikey", "k").run(&e));
    assert_eq!(
        upstream(&f, "x-consumer-username").as_deref(),
        Some("alice")
    );
    let f = forward(req("/one").run(&e));
    assert_eq!(upstream(&f, "x-consumer-username").as_deref(), Some("anon"));
}

// ---- acl ----

#[test]
fn acl_allow_and_deny_by_groups() {
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth"},
        {"name": "acl", "config": {"allow": ["admins"]}}
    ]}));
    let f = forward(req("/one").header("apikey", "alice-key").run(&e));
    assert_eq!(
        upstream(&f, "x-consumer-groups").as_deref(),
        Some("admins, staff")
    );
    let r = respond(req("/one").header("apikey", "bob-key").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (403, "You cannot consume this service")
    );
    assert_eq!(r.plugin, "acl");

    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth"},
        {"name": "acl", "config": {"deny": ["guests"], "hide_groups_header": true}}
    ]}));
    let f = forward(req("/one").header("apikey", "alice-key").run(&e));
    assert_eq!(upstream(&f, "x-consumer-groups"), None);
    assert_eq!(
        respond(req("/one").header("apikey", "bob-key").run(&e)).status,
        403
    );

    // Without an authentication plugin there is no consumer: 401.
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "acl", "config": {"allow": ["admins"]}}
    ]}));
    let r = respond(req("/one").run(&e));
    assert_eq!((r.status, message(&r).as_str()), (401, "Unauthorized"));
}

// ---- the client's address, read only when needed ----

#[test]
fn the_clients_address_is_read_only_by_the_plugins_that_need_it() {
    let e = engine(json!({
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k-alice"}]}],
        "plugins": [
            {"name": "key-auth", "route": "r1", "config": {}},
            {"name": "rate-limiting", "route": "r1", "config": {"minute": 100}},
            {"name": "rate-limiting", "route": "r2", "config": {"minute": 100, "limit_by": "ip"}},
            {"name": "ip-restriction", "route": "r3", "config": {"allow": ["10.0.0.0/8"]}},
        ]
    }));
    // key-auth identified the consumer: rate-limiting counts by consumer, no address needed.
    let r = req("/one").header("apikey", "k-alice");
    forward(r.run(&e));
    assert_eq!(r.ip_reads.get(), 0);
    // No consumer: limit_by consumer falls back to the address (Kong), read once.
    let r = req("/one");
    respond(r.run(&e));
    assert_eq!(
        r.ip_reads.get(),
        0,
        "refused by key-auth before rate-limiting runs"
    );
    let r = req("/two").route(1, 0);
    forward(r.run(&e));
    assert_eq!(r.ip_reads.get(), 1);
    let r = req("/three").route(2, 1);
    forward(r.run(&e));
    assert_eq!(r.ip_reads.get(), 1);
}

// ---- ip-restriction ----

#[test]
fn ip_restriction_v4_v6_cidrs_deny_first() {
    let e = engine(json!({"plugins": [{"name": "ip-restriction", "config": {
        "allow": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.1"],
        "deny": ["10.0.0.66"]
    }}]}));
    assert!(matches!(
        req("/one").ip("10.1.2.3").run(&e),
        PluginOutcome::Forward(_)
    ));
    assert!(matches!(
        req("/one").ip("192.168.1.1").run(&e),
        PluginOutcome::Forward(_)
    ));
    assert!(matches!(
        req("/one").ip("2001:db8::1").run(&e),
        PluginOutcome::Forward(_)
    ));
    assert!(matches!(
        req("/one").ip("::ffff:10.9.9.9").run(&e),
        PluginOutcome::Forward(_)
    ));
    let r = respond(req("/one").ip("10.0.0.66").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (403, "Your IP address is not allowed")
    );
    assert_eq!(respond(req("/one").ip("192.168.1.2").run(&e)).status, 403);
    assert_eq!(respond(req("/one").ip("2001:db9::1").run(&e)).status, 403);

    let e = engine(json!({"plugins": [{"name": "ip-restriction", "config": {
        "deny": ["0.0.0.0/0"], "status": 401, "message": "go away"
    }}]}));
    let r = respond(req("/one").run(&e));
    assert_eq!((r.status, message(&r).as_str()), (401, "go away"));
    assert!(matches!(
        req("/one").ip("::1").run(&e),
        PluginOutcome::Forward(_)
    ));
}

// ---- rate-limiting ----

#[test]
fn rate_limiting_counts_and_answers_429_with_headers() {
    let e = engine(
        json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 3, "hour": 10}}]}),
    );
    let mut counters = MemoryCounters::default();
    let start = 1_700_000_080_000; // 40 s into a minute
    for i in 0..3u64 {
        let f = forward(req("/one").at(start + i).run_with(&e, &mut counters));
        let h = response_headers(&f.response, &[]);
        assert_eq!(header(&h, "X-RateLimit-Limit-Minute"), Some("3"));
        assert_eq!(
            header(&h, "X-RateLimit-Remaining-Minute"),
            Some(&*(2 - i).to_string())
        );
        assert_eq!(header(&h, "X-RateLimit-Limit-Hour"), Some("10"));
        assert_eq!(
            header(&h, "X-RateLimit-Remaining-Hour"),
            Some(&*(9 - i).to_string())
        );
        assert_eq!(header(&h, "RateLimit-Limit"), Some("3"));
        assert_eq!(
            header(&h, "RateLimit-Remaining"),
            Some(&*(2 - i).to_string())
        );
        assert_eq!(header(&h, "RateLimit-Reset"), Some("20"));
    }
    let r = respond(req("/one").at(start + 5).run_with(&e, &mut counters));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (429, "API rate limit exceeded")
    );
    assert_eq!(header(&r.headers, "Retry-After"), Some("20"));
    assert_eq!(
        header(&r.headers, "X-RateLimit-Remaining-Minute"),
        Some("0")
    );
    assert_eq!(header(&r.headers, "RateLimit-Remaining"), Some("0"));
    // A refused request is not counted: the hour still shows 3 used.
    assert_eq!(header(&r.headers, "X-RateLimit-Remaining-Hour"), Some("7"));
    // Another client has its own counter (limit_by consumer falls back to the IP).
    assert!(matches!(
        req("/one")
            .ip("10.0.0.8")
            .at(start)
            .run_with(&e, &mut counters),
        PluginOutcome::Forward(_)
    ));
    // The next minute starts afresh.
    let f = forward(req("/one").at(start + 20_000).run_with(&e, &mut counters));
    let h = response_headers(&f.response, &[]);
    assert_eq!(header(&h, "X-RateLimit-Remaining-Minute"), Some("2"));
    assert_eq!(header(&h, "X-RateLimit-Remaining-Hour"), Some("6"));
}

#[test]
fn rate_limiting_limit_by_and_options() {
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth"},
        {"name": "rate-limiting", "config": {"second": 1, "hide_client_headers": true,
            "error_code": 503, "error_message": "slow down"}}
    ]}));
    let mut counters = MemoryCounters::default();
    let f = forward(
        req("/one")
            .header("apikey", "alice-key")
            .run_with(&e, &mut counters),
    );
    assert!(response_headers(&f.response, &[]).is_empty());
    // Same IP, other consumer: counted apart.
    forward(
        req("/one")
            .header("apikey", "bob-key")
            .run_with(&e, &mut counters),
    );
    let r = respond(
        req("/one")
            .header("apikey", "alice-key")
            .run_with(&e, &mut counters),
    );
    assert_eq!((r.status, message(&r).as_str()), (503, "slow down"));
    assert_eq!(header(&r.headers, "X-RateLimit-Limit-Second"), None);
    assert_eq!(header(&r.headers, "Retry-After"), Some("1"));

    let e = engine(json!({"plugins": [{"name": "rate-limiting", "config": {
        "minute": 1, "limit_by": "header", "header_name": "x-tenant"}}]}));
    let mut counters = MemoryCounters::default();
    forward(
        req("/one")
            .header("X-Tenant", "a")
            .run_with(&e, &mut counters),
    );
    forward(
        req("/one")
            .header("X-Tenant", "b")
            .run_with(&e, &mut counters),
    );
    assert_eq!(
        respond(
            req("/one")
                .header("x-tenant", "a")
                .ip("1.1.1.1")
                .run_with(&e, &mut counters)
        )
        .status,
        429
    );

    // A global plugin counts every route together (Kong keys by the plugin's own scope).
    let e = engine(
        json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 1, "limit_by": "ip"}}]}),
    );
    let mut counters = MemoryCounters::default();
    forward(req("/one").run_with(&e, &mut counters));
    assert_eq!(
        respond(req("/three").route(2, 1).run_with(&e, &mut counters)).status,
        429
    );

    // limit_by path: only the configured path has its own counter.
    let e = engine(json!({"plugins": [{"name": "rate-limiting", "config": {
        "minute": 1, "limit_by": "path", "path": "/one"}}]}));
    let mut counters = MemoryCounters::default();
    forward(req("/one").run_with(&e, &mut counters));
    forward(req("/two").route(1, 0).run_with(&e, &mut counters));
    assert_eq!(respond(req("/one").run_with(&e, &mut counters)).status, 429);
}

#[test]
fn rate_limiting_refuses_what_it_cannot_enforce() {
    for config in [
        json!({}),
        json!({"minute": 5, "policy": "redis"}),
        json!({"minute": 0}),
        json!({"minute": "5"}),
        json!({"minute": 5, "limit_by": "header"}),
    ] {
        let e = engine(json!({"plugins": [{"name": "rate-limiting", "config": config}]}));
        let r = respond(req("/one").run(&e));
        assert_eq!(r.status, 500, "{config}");
        assert!(message(&r).contains("rate-limiting"), "{}", message(&r));
        assert_eq!(e.unsupported().len(), 1);
        assert!(!e.unsupported()[0].ignored);
    }
}

/// Counters that lose every race: another worker always took the last unit.
struct RacingCounters;

impl Counters for RacingCounters {
    fn usage(&mut self, _: &str, _: u64) -> u64 {
        0
    }
    fn increment(&mut self, _: &str, _: u64, _: u64) -> Option<u64> {
        None
    }
}

#[test]
fn rate_limiting_a_lost_race_is_a_refusal() {
    let e = engine(json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 5}}]}));
    let r = respond(req("/one").run_with(&e, &mut RacingCounters));
    assert_eq!(r.status, 429);
    assert_eq!(
        header(&r.headers, "X-RateLimit-Remaining-Minute"),
        Some("0")
    );
}

/// Memory counters that count the calls made to them (each one a shared-data round trip in
/// the filter).
#[derive(Default)]
struct CountedCounters {
    inner: MemoryCounters,
    usage_calls: usize,
    increment_calls: usize,
}

impl Counters for CountedCounters {
    fn usage(&mut self, key: &str, window_start_ms: u64) -> u64 {
        self.usage_calls += 1;
        self.inner.usage(key, window_start_ms)
    }
    fn increment(&mut self, key: &str, window_start_ms: u64, limit: u64) -> Option<u64> {
        self.increment_calls += 1;
        self.inner.increment(key, window_start_ms, limit)
    }
}

#[test]
fn rate_limiting_one_period_costs_one_counter_operation_per_request() {
    let e = engine(json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 2}}]}));
    let mut counters = CountedCounters::default();
    for remaining in ["1", "0"] {
        let f = forward(req("/one").run_with(&e, &mut counters));
        let h = response_headers(&f.response, &[]);
        assert_eq!(header(&h, "X-RateLimit-Remaining-Minute"), Some(remaining));
        assert_eq!(header(&h, "RateLimit-Remaining"), Some(remaining));
    }
    let r = respond(req("/one").run_with(&e, &mut counters));
    assert_eq!(r.status, 429);
    assert_eq!(
        header(&r.headers, "X-RateLimit-Remaining-Minute"),
        Some("0")
    );
    assert_eq!((counters.usage_calls, counters.increment_calls), (0, 3));

    // Two periods: Kong reads both before counting in either.
    let e =
        engine(json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 2, "hour": 5}}]}));
    let mut counters = CountedCounters::default();
    forward(req("/one").run_with(&e, &mut counters));
    assert_eq!((counters.usage_calls, counters.increment_calls), (2, 2));
}

// ---- request-termination ----

#[test]
fn request_termination_defaults_message_body_and_trigger() {
    let e = engine(json!({"plugins": [{"name": "request-termination"}]}));
    let r = respond(req("/one").run(&e));
    assert_eq!(
        (r.status, message(&r).as_str()),
        (503, "The upstream server is currently unavailable")
    );
    let e = engine(
        json!({"plugins": [{"name": "request-termination", "config": {
        "status_code": 403, "message": "So long"}}]}),
    );
    let r = respond(req("/one").run(&e));
    assert_eq!((r.status, message(&r).as_str()), (403, "So long"));

    let e = engine(
        json!({"plugins": [{"name": "request-termination", "config": {
        "status_code": 418, "body": "<h1>teapot</h1>", "content_type": "text/html"}}]}),
    );
    let r = respond(req("/one").run(&e));
    assert_eq!(r.status, 418);
    assert_eq!(r.body.as_deref(), Some("<h1>teapot</h1>"));
    assert_eq!(header(&r.headers, "Content-Type"), Some("text/html"));

    let e = engine(
        json!({"plugins": [{"name": "request-termination", "config": {
        "trigger": "X-Stop"}}]}),
    );
    assert!(matches!(req("/one").run(&e), PluginOutcome::Forward(_)));
    assert_eq!(
        respond(req("/one").header("x-stop", "1").run(&e)).status,
        503
    );
    assert_eq!(respond(req("/one?X-Stop").run(&e)).status, 503);
}

// ---- cors ----

#[test]
fn cors_preflight_is_answered_with_kong_headers() {
    let e = engine(json!({"plugins": [{"name": "cors", "config": {
        "origins": ["https://app.example.com", "https://.*\\.example\\.org"],
        "methods": ["GET", "POST"], "max_age": 3600, "credentials": true,
        "exposed_headers": ["X-Total"]
    }}]}));
    let r = respond(
        req("/one")
            .method("OPTIONS")
            .header("Origin", "https://app.example.com")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "X-Custom")
            .run(&e),
    );
    assert_eq!((r.status, r.body.as_deref()), (200, None));
    assert_eq!(r.plugin, "cors");
    let h = &r.headers;
    assert_eq!(
        header(h, "Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(h, "Access-Control-Allow-Methods"), Some("GET,POST"));
    assert_eq!(header(h, "Access-Control-Allow-Headers"), Some("X-Custom"));
    assert_eq!(header(h, "Access-Control-Max-Age"), Some("3600"));
    assert_eq!(header(h, "Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(header(h, "Vary"), Some("Origin"));

    // A regex origin; an actual request gets the origin and exposed headers on its response.
    let f = forward(
        req("/one")
            .header("Origin", "https://x.example.org")
            .run(&e),
    );
    let h = response_headers(&f.response, &[("Access-Control-Allow-Origin", "*")]);
    assert_eq!(
        header(&h, "Access-Control-Allow-Origin"),
        Some("https://x.example.org")
    );
    assert_eq!(header(&h, "Access-Control-Expose-Headers"), Some("X-Total"));
    // An origin not listed gets no Allow-Origin, even if the upstream sent one.
    let f = forward(req("/one").header("Origin", "https://evil.test").run(&e));
    let h = response_headers(&f.response, &[("Access-Control-Allow-Origin", "*")]);
    assert_eq!(header(&h, "Access-Control-Allow-Origin"), None);
}

#[test]
fn cors_defaults_allow_any_origin_and_preflight_continue_forwards() {
    let e = engine(json!({"plugins": [{"name": "cors"}]}));
    let r = respond(
        req("/one")
            .method("OPTIONS")
            .header("Origin", "https://a.test")
            .header("Access-Control-Request-Method", "GET")
            .run(&e),
    );
    assert_eq!(header(&r.headers, "Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(
        header(&r.headers, "Access-Control-Allow-Methods"),
        Some("GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT")
    );
    // An OPTIONS without Access-Control-Request-Method is not a preflight.
    assert!(matches!(
        req("/one")
            .method("OPTIONS")
            .header("Origin", "https://a.test")
            .run(&e),
        PluginOutcome::Forward(_)
    ));
    let e = engine(json!({"plugins": [{"name": "cors", "config": {"preflight_continue": true}}]}));
    let f = forward(
        req("/one")
            .method("OPTIONS")
            .header("Origin", "https://a.test")
            .header("Access-Control-Request-Method", "GET")
            .run(&e),
    );
    assert!(f.response.is_empty());
}

#[test]
fn cors_headers_are_on_answers_of_later_plugins() {
    // cors (2000) runs before key-auth (1250): its headers are on the 401.
    let e = engine(json!({"plugins": [{"name": "cors"}, {"name": "key-auth"}]}));
    let r = respond(req("/one").header("Origin", "https://a.test").run(&e));
    assert_eq!(r.status, 401);
    assert_eq!(header(&r.headers, "Access-Control-Allow-Origin"), Some("*"));
}

// ---- request-transformer ----

#[test]
fn request_transformer_in_kong_order() {
    let e = engine(
        json!({"plugins": [{"name": "request-transformer", "config": {
            "http_method": "post",
            "remove": {"headers": ["x-drop"], "querystring": ["debug"]},
            "rename": {"headers": ["x-old:x-new"], "querystring": ["q:query"]},
            "replace": {"headers": ["x-env:prod", "x-absent:no"], "querystring": ["page:1"], "uri": "/v2/items"},
            "add": {"headers": ["x-added:yes", "x-env:ignored"], "querystring": ["added:a b"]},
            "append": {"headers": ["x-multi:1", "x-multi:2"], "querystring": ["tag:t"]}
        }}]}),
    );
    let f = forward(
        req("/one?debug=1&q=cats&page=7")
            .header("X-Drop", "1")
            .header("X-Old", "o")
            .header("X-Env", "dev")
            .run(&e),
    );
    assert_eq!(f.method.as_deref(), Some("POST"));
    assert_eq!(
        f.path.as_deref(),
        Some("/v2/items?query=cats&page=1&added=a%20b&tag=t")
    );
    let ops = &f.request_headers;
    assert!(ops.contains(&HeaderOp::Remove("x-drop".into())));
    assert!(ops.contains(&HeaderOp::Remove("x-old".into())));
    assert_eq!(upstream(&f, "x-new").as_deref(), Some("o"));
    assert_eq!(upstream(&f, "x-env").as_deref(), Some("prod"));
    assert_eq!(upstream(&f, "x-absent"), None);
    assert_eq!(upstream(&f, "x-added").as_deref(), Some("yes"));
    let multi: Vec<_> = f
        .upstream_headers()
        .into_iter()
        .filter(|(n, _)| *n == "x-multi")
        .collect();
    assert_eq!(multi, vec![("x-multi", "1"), ("x-multi", "2")]);
}

#[test]
fn request_transformer_templates_fail_closed_and_bodies_are_noted() {
    let e = engine(
        json!({"plugins": [{"name": "request-transformer", "config": {
        "add": {"headers": ["x-id:$(headers.x_user)"]}}}]}),
    );
    assert_eq!(respond(req("/one").run(&e)).status, 500);
    let e = engine(
        json!({"plugins": [{"name": "request-transformer", "config": {
        "add": {"body": ["a:b"], "headers": ["x-a:1"]}}}]}),
    );
    assert!(matches!(req("/one").run(&e), PluginOutcome::Forward(_)));
    assert_eq!(e.unsupported().len(), 1);
    assert!(e.unsupported()[0].ignored);
}

// ---- response-transformer ----

#[test]
fn response_transformer_judges_presence_on_the_upstream_headers() {
    let e = engine(
        json!({"plugins": [{"name": "response-transformer", "config": {
            "remove": {"headers": ["server"]},
            "rename": {"headers": ["x-old:x-new"]},
            "replace": {"headers": ["x-env:prod", "x-missing:no"]},
            "add": {"headers": ["x-added:1", "x-env:ignored"]},
            "append": {"headers": ["x-multi:a"]}
        }}]}),
    );
    let f = forward(req("/one").run(&e));
    let h = response_headers(
        &f.response,
        &[
            ("Server", "nginx"),
            ("X-Old", "o"),
            ("X-Env", "dev"),
            ("X-Multi", "z"),
        ],
    );
    assert_eq!(header(&h, "server"), None);
    assert_eq!(header(&h, "x-old"), None);
    assert_eq!(header(&h, "x-new"), Some("o"));
    assert_eq!(header(&h, "x-env"), Some("prod"));
    assert_eq!(header(&h, "x-missing"), None);
    assert_eq!(header(&h, "x-added"), Some("1"));
    let multi: Vec<_> = h
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-multi"))
        .collect();
    assert_eq!(multi.len(), 2);
}

#[test]
fn response_changes_are_edits_of_the_changed_headers_only() {
    let e = engine(
        json!({"plugins": [{"name": "response-transformer", "config": {
            "remove": {"headers": ["content-type"]},
            "replace": {"headers": ["x-env:prod"]},
            "add": {"headers": ["x-added:1"]}
        }}]}),
    );
    let f = forward(req("/one").run(&e));
    let before: Vec<(String, String)> = [
        (":status", "200"),
        ("Content-Type", "text/html"),
        ("X-Env", "dev"),
        ("Content-Length", "5"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        f.response.edits(&before),
        [
            HeaderOp::Remove("content-type".into()),
            HeaderOp::Remove("x-env".into()),
            HeaderOp::Add("x-env".into(), "prod".into()),
            HeaderOp::Add("x-added".into(), "1".into()),
        ]
    );
    assert!(ResponsePlan::default().edits(&before).is_empty());
}

// ---- correlation-id ----

#[test]
fn correlation_id_generates_keeps_and_echoes() {
    let e = engine(
        json!({"plugins": [{"name": "correlation-id", "config": {"echo_downstream": true}}]}),
    );
    let f1 = forward(req("/one").run(&e));
    let f2 = forward(req("/one").run(&e));
    let id1 = upstream(&f1, "kong-request-id").unwrap();
    let id2 = upstream(&f2, "kong-request-id").unwrap();
    assert!(id1.ends_with("#1") && id2.ends_with("#2"), "{id1} {id2}");
    assert_eq!(id1.split('#').next(), id2.split('#').next());
    assert_eq!(id1.len(), 36 + 2);
    let h = response_headers(&f1.response, &[]);
    assert_eq!(header(&h, "Kong-Request-ID"), Some(id1.as_str()));

    let f = forward(req("/one").header("Kong-Request-ID", "given").run(&e));
    assert_eq!(upstream(&f, "kong-request-id"), None);
    assert_eq!(
        header(&response_headers(&f.response, &[]), "Kong-Request-ID"),
        Some("given")
    );

    let e = engine(json!({"plugins": [{"name": "correlation-id", "config": {
        "generator": "uuid", "header_name": "X-Request-Id"}}]}));
    let f = forward(req("/one").run(&e));
    let id = upstream(&f, "x-request-id").unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(f.response.is_empty());
}

// ---- scoping, precedence and order ----

#[test]
fn the_most_specific_instance_wins() {
    let e = engine(json!({
        "consumers": consumers(),
        "plugins": [
            {"name": "key-auth"},
            {"name": "request-termination", "config": {"status_code": 410, "message": "global"}},
            {"name": "request-termination", "service": "svc", "config": {"status_code": 411, "message": "service"}},
            {"name": "request-termination", "route": "r1", "config": {"status_code": 412, "message": "route"}},
            {"name": "request-termination", "route": "r1", "service": "svc", "config": {"status_code": 413, "message": "route+service"}},
            {"name": "request-termination", "consumer": "bob", "config": {"status_code": 414, "message": "consumer"}},
            {"name": "request-termination", "consumer": "bob", "service": "svc", "config": {"status_code": 415, "message": "consumer+service"}},
            {"name": "request-termination", "consumer": "bob", "route": "r2", "config": {"status_code": 416, "message": "consumer+route"}}
        ]
    }));
    let status = |r: Req| respond(r.run(&e)).status;
    let alice = |r: Req| r.header("apikey", "alice-key");
    let bob = |r: Req| r.header("apikey", "bob-key");
    assert_eq!(status(alice(req("/one"))), 413);
    assert_eq!(status(alice(req("/two").route(1, 0))), 411);
    assert_eq!(status(alice(req("/three").route(2, 1))), 410);
    assert_eq!(status(bob(req("/one"))), 415);
    assert_eq!(status(bob(req("/two").route(1, 0))), 416);
    assert_eq!(status(bob(req("/three").route(2, 1))), 414);
}

#[test]
fn disabled_instances_do_not_exist() {
    let e = engine(json!({"plugins": [
        {"name": "request-termination", "config": {"status_code": 410}},
        {"name": "request-termination", "route": "r1", "enabled": false},
        {"name": "key-auth", "service": "other", "enabled": false}
    ]}));
    assert_eq!(respond(req("/one").run(&e)).status, 410);
    assert_eq!(respond(req("/three").route(2, 1).run(&e)).status, 410);
}

#[test]
fn plugins_run_in_kong_priority_order() {
    // request-termination (2) after ip-restriction (990) and key-auth (1250), whatever the
    // document order.
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "request-termination", "config": {"status_code": 418}},
        {"name": "ip-restriction", "config": {"deny": ["10.0.0.66"]}},
        {"name": "key-auth"}
    ]}));
    assert_eq!(
        respond(req("/one").ip("10.0.0.66").run(&e)).plugin,
        "key-auth"
    );
    let r = respond(
        req("/one")
            .ip("10.0.0.66")
            .header("apikey", "bob-key")
            .run(&e),
    );
    assert_eq!(r.plugin, "ip-restriction");
    assert_eq!(
        respond(req("/one").header("apikey", "bob-key").run(&e)).status,
        418
    );
}

#[test]
fn plugin_protocols_limit_where_it_runs() {
    let e = engine(json!({"plugins": [
        {"name": "request-termination", "protocols": ["https"]}
    ]}));
    assert!(matches!(req("/one").run(&e), PluginOutcome::Forward(_)));
}

// ---- fail closed ----

#[test]
fn an_unsupported_plugin_fails_closed_where_it_applies() {
    let e = engine(json!({"plugins": [
        {"name": "jwt", "route": "r1"},
        {"name": "oauth2", "enabled": false}
    ]}));
    let r = respond(req("/one").run(&e));
    assert_eq!(r.status, 500);
    assert!(message(&r).contains("\"jwt\""), "{}", message(&r));
    assert!(matches!(
        req("/two").route(1, 0).run(&e),
        PluginOutcome::Forward(_)
    ));
    assert_eq!(e.unsupported().len(), 1);
    assert_eq!(e.unsupported()[0].name, "jwt");
    assert_eq!(e.unsupported()[0].path, "plugins[0]");
}

#[test]
fn an_unsupported_consumer_plugin_fails_once_the_consumer_is_known() {
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth"},
        {"name": "proxy-cache", "consumer": "bob"}
    ]}));
    assert!(matches!(
        req("/one").header("apikey", "alice-key").run(&e),
        PluginOutcome::Forward(_)
    ));
    assert_eq!(
        respond(req("/one").header("apikey", "bob-key").run(&e)).status,
        500
    );
}

#[test]
fn listed_unsupported_plugins_are_ignored() {
    let e = engine_ignoring(json!({"plugins": [{"name": "jwt"}]}), &["jwt"]);
    assert!(matches!(req("/one").run(&e), PluginOutcome::Forward(_)));
    assert!(e.unsupported()[0].ignored);
    assert!(e.unsupported()[0].reason.contains("ignored"));
}

/// The plugins that only observe (metrics, logs, traces) are skipped: the request goes
/// through, the outcome names them (the filter counts such requests), and the engine lists
/// them with a warning. Every plugin that decides or changes traffic still fails closed.
#[test]
fn observe_only_plugins_are_skipped_and_named_per_request() {
    let mut plugins: Vec<Value> = OBSERVE_ONLY
        .iter()
        .map(|name| json!({"name": name, "route": "r1"}))
        .collect();
    plugins.push(json!({"name": "key-auth", "route": "r2"}));
    plugins.push(json!({"name": "prometheus", "route": "r2"}));
    plugins.push(json!({"name": "jwt", "route": "r3"}));
    plugins.push(json!({"name": "http-log", "route": "r3"}));
    let e = engine(json!({"consumers": consumers(), "plugins": plugins}));

    let f = forward(req("/one").run(&e));
    let mut all = OBSERVE_ONLY.to_vec();
    all.sort_unstable();
    assert_eq!(f.skipped, all);
    assert!(f.request_headers.is_empty());
    // An answer from another plugin names them too: Kong would have logged it.
    let r = respond(req("/two").route(1, 0).run(&e));
    assert_eq!((r.status, r.skipped.clone()), (401, vec!["prometheus"]));
    let f = forward(
        req("/two")
            .route(1, 0)
            .header("apikey", "alice-key")
            .run(&e),
    );
    assert_eq!(f.skipped, ["prometheus"]);
    // A plugin that decides traffic still refuses the request.
    let r = respond(req("/three").route(2, 1).run(&e));
    assert_eq!((r.status, r.skipped.clone()), (500, vec!["http-log"]));

    let skipped: Vec<&UnsupportedPlugin> =
        e.unsupported().iter().filter(|u| u.name != "jwt").collect();
    assert_eq!(skipped.len(), OBSERVE_ONLY.len() + 2);
    for u in skipped {
        assert!(u.ignored, "{u:?}");
        assert!(u.reason.contains("only observes traffic"), "{u:?}");
    }
}

#[test]
fn observe_only_plugins_can_be_refused_like_any_unsupported_plugin() {
    let policy = PluginPolicy {
        ignore: Vec::new(),
        refuse_observe_only: true,
    };
    let e = engine_with(json!({"plugins": [{"name": "prometheus"}]}), &policy);
    let r = respond(req("/one").run(&e));
    assert_eq!(r.status, 500);
    assert!(message(&r).contains("\"prometheus\""), "{}", message(&r));
    assert!(!e.unsupported()[0].ignored);
    // Listed in `ignore`, it is let through without a count.
    let policy = PluginPolicy {
        ignore: vec!["prometheus".into()],
        refuse_observe_only: true,
    };
    let e = engine_with(json!({"plugins": [{"name": "prometheus"}]}), &policy);
    assert!(forward(req("/one").run(&e)).skipped.is_empty());
}

#[test]
fn validation_warnings_name_each_unsupported_plugin() {
    let mut map = json!({"_format_version": "3.0", "plugins": [
        {"name": "jwt"}, {"name": "key-auth"}, {"name": "rate-limiting", "config": {"policy": "redis", "minute": 1}}
    ]});
    map["services"] = json!([]);
    let doc = ConfigDocument::from_json(&map).unwrap().document;
    let warnings = unsupported_warnings(&doc);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0].path, "plugins[0]");
    assert!(warnings[0].message.contains("not supported"));
    assert_eq!(warnings[1].path, "plugins[2].config");
    assert!(warnings[1].message.contains("redis"));
}

#[test]
fn no_plugins_no_changes() {
    let e = engine(json!({}));
    assert!(e.is_empty());
    let f = forward(req("/one?a=1").header("x", "y").run(&e));
    assert_eq!(f, UpstreamChanges::default());
}

#[test]
fn base64_round_trips() {
    for text in ["", "a", "ab", "abc", "user:pa:ss", "ünïcode:✓"] {
        let encoded = encode_base64(text.as_bytes());
        assert_eq!(
            basic_auth::decode_base64(&encoded).as_deref(),
            Some(text.as_bytes())
        );
    }
    assert_eq!(basic_auth::decode_base64("!!"), None);
}

#[test]
fn configs_as_kong_exports_them_with_every_default_spelt_out() {
    // What `kong config db_export` / a CP's `/config` writes: every field, nulls included.
    let e = engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth", "config": {"anonymous": null, "hide_credentials": false,
            "key_in_body": false, "key_in_header": true, "key_in_query": true,
            "key_names": ["apikey"], "run_on_preflight": true, "realm": null}},
        {"name": "acl", "config": {"allow": ["admins"], "deny": null,
            "hide_groups_header": false, "include_consumer_groups": false,
            "always_use_authenticated_groups": false}},
        {"name": "rate-limiting", "config": {"day": null, "error_code": 429,
            "error_message": "API rate limit exceeded", "fault_tolerant": true,
            "header_name": null, "hide_client_headers": false, "hour": null,
            "limit_by": "consumer", "minute": 100, "month": null, "path": null,
            "policy": "local", "redis": {"host": null, "port": 6379}, "second": null,
            "sync_rate": -1, "year": null}},
        {"name": "ip-restriction", "config": {"allow": null, "deny": ["192.0.2.0/24"],
            "message": null, "status": null}},
        {"name": "cors", "config": {"credentials": false, "exposed_headers": null,
            "headers": null, "max_age": null, "methods": ["GET", "HEAD", "PUT", "PATCH",
            "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"], "origins": null,
            "preflight_continue": false, "private_network": false}},
        {"name": "correlation-id", "config": {"echo_downstream": false,
            "generator": "uuid#counter", "header_name": "Kong-Request-ID"}},
        {"name": "request-transformer", "config": {"http_method": null,
            "add": {"body": [], "headers": [], "querystring": []},
            "append": {"body": [], "headers": [], "querystring": []},
            "remove": {"body": [], "headers": [], "querystring": []},
            "rename": {"body": [], "headers": [], "querystring": []},
            "replace": {"body": [], "headers": [], "querystring": [], "uri": null}}},
        {"name": "response-transformer", "config": {
            "add": {"headers": [], "json": [], "json_types": []},
            "append": {"headers": [], "json": [], "json_types": []},
            "remove": {"headers": [], "json": []},
            "rename": {"headers": [], "json": []},
            "replace": {"headers": [], "json": [], "json_types": []}}},
        {"name": "request-termination", "route": "r2", "config": {"body": null,
            "content_type": null, "echo": false, "message": null, "status_code": 503,
            "trigger": null}}
    ]}));
    assert!(e.unsupported().is_empty(), "{:?}", e.unsupported());
    let f = forward(req("/one").header("apikey", "alice-key").run(&e));
    assert_eq!(
        upstream(&f, "x-consumer-groups").as_deref(),
        Some("admins, staff")
    );
    assert_eq!(
        respond(
            req("/two")
                .route(1, 0)
                .header("apikey", "alice-key")
                .run(&e)
        )
        .status,
        503
    );
}

/// `ops` made one by one, as a host does: `Remove` every value (any case), `Add` one.
fn perform(headers: &[(String, String)], ops: &[HeaderOp]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    for op in ops {
        match op {
            HeaderOp::Remove(name) => out.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            HeaderOp::Add(name, value) => out.push((name.to_string(), value.to_string())),
        }
    }
    out
}

/// Each header's values, in order, by lowercased name.
fn by_name(headers: &[(String, String)]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut map = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in headers {
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    map
}

#[test]
fn edits_without_headers_change_what_the_plan_changes_and_no_more() {
    let plans = [
        json!({"plugins": [{"name": "rate-limiting", "config": {"minute": 3, "hour": 10}}]}),
        json!({"plugins": [{"name": "cors", "config": {"origins": ["https://a.example"],
            "credentials": true, "max_age": 60}}]}),
        json!({"plugins": [{"name": "correlation-id", "config": {"echo_downstream": true}}]}),
        json!({"plugins": [
            {"name": "correlation-id", "config": {"echo_downstream": true}},
            {"name": "rate-limiting", "config": {"second": 5}}
        ]}),
    ];
    // The upstream's own values of those headers, repeated, in other cases, must all go.
    let responses: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![
            (":status".into(), "200".into()),
            ("Content-Type".into(), "text/html".into()),
        ],
        vec![
            ("x-ratelimit-limit-minute".into(), "upstream".into()),
            ("X-RateLimit-Limit-Minute".into(), "again".into()),
            ("Access-Control-Allow-Origin".into(), "*".into()),
            ("Vary".into(), "Accept".into()),
            ("Kong-Request-ID".into(), "upstream-id".into()),
            ("Content-Type".into(), "text/html".into()),
        ],
    ];
    for body in plans {
        let e = engine(body.clone());
        let f = forward(req("/one").header("Origin", "https://a.example").run(&e));
        assert!(!f.response.is_empty(), "{body}");
        let ops = f.response.edits_without_headers().expect("no transform");
        for before in &responses {
            let mut expected = before.clone();
            f.response.apply(&mut expected);
            assert_eq!(
                by_name(&perform(before, &ops)),
                by_name(&expected),
                "{body} on {before:?}"
            );
            assert_eq!(
                by_name(&perform(before, &f.response.edits(before))),
                by_name(&expected)
            );
        }
    }
    // response-transformer's transforms need the headers.
    let e = engine(
        json!({"plugins": [{"name": "response-transformer", "config": {
        "rename": {"headers": ["x-a:x-b"]}}}]}),
    );
    let f = forward(req("/one").run(&e));
    assert_eq!(f.response.edits_without_headers(), None);
}

#[test]
fn a_plans_calls_are_the_calls_for_its_edits() {
    // Every plan of up to four steps over two headers: `calls` straight from the steps makes
    // exactly the host calls `response_calls` makes for the plan's edits.
    let alphabet = [
        ResponseStep::Set("a".into(), "1".into()),
        ResponseStep::Set("b".into(), "2".into()),
        ResponseStep::Add("a".into(), "3".into()),
        ResponseStep::Add("b".into(), "4".into()),
        ResponseStep::Remove("a".into()),
        ResponseStep::Remove("b".into()),
    ];
    let mut level = vec![ResponsePlan::default()];
    let mut plans = level.clone();
    for _ in 0..4 {
        level = level
            .iter()
            .flat_map(|plan| {
                alphabet.iter().map(move |step| {
                    let mut plan = plan.clone();
                    plan.steps.push(step.clone());
                    plan
                })
            })
            .collect();
        plans.extend(level.iter().cloned());
    }
    assert!(plans.len() > 1_500);
    for plan in &plans {
        let mut direct = Vec::new();
        assert!(plan.calls(|call| direct.push(format!("{call:?}"))));
        let mut via_edits = Vec::new();
        let edits = plan.edits_without_headers().expect("no transform");
        crate::host::response_calls(edits.into_iter(), |call| {
            via_edits.push(format!("{call:?}"))
        });
        assert_eq!(direct, via_edits, "{plan:?}");
    }
    let e = engine(
        json!({"plugins": [{"name": "response-transformer", "config": {
        "rename": {"headers": ["x-a:x-b"]}}}]}),
    );
    let f = forward(req("/one").run(&e));
    assert!(!f
        .response
        .calls(|call| panic!("no call for a transform: {call:?}")));
}

#[test]
fn header_diff_names_only_what_changed() {
    let before = [
        (":path", "/x"),
        ("X-Keep", "1"),
        ("ApiKey", "secret"),
        ("x-multi", "a"),
        ("X-Multi", "b"),
    ];
    let after: Vec<(Cow<'_, str>, Cow<'_, str>)> = [
        ("x-keep", "1"),
        ("x-multi", "a"),
        ("x-multi", "c"),
        ("x-consumer-id", "c-1"),
    ]
    .iter()
    .map(|&(n, v)| (n.into(), v.into()))
    .collect();
    assert_eq!(
        diff_headers(&before, &after),
        vec![
            HeaderOp::Remove("apikey".into()),
            HeaderOp::Remove("x-multi".into()),
            HeaderOp::Add("x-multi".into(), "a".into()),
            HeaderOp::Add("x-multi".into(), "c".into()),
            HeaderOp::Add("x-consumer-id".into(), "c-1".into()),
        ]
    );
    let same: Vec<(Cow<'_, str>, Cow<'_, str>)> = vec![("x-keep".into(), "1".into())];
    assert!(diff_headers(&[("X-Keep", "1"), (":authority", "a")], &same).is_empty());
}

#[test]
fn random_bits_are_needed_only_by_correlation_id() {
    assert!(!engine(json!({"consumers": consumers(), "plugins": [
        {"name": "key-auth"}, {"name": "rate-limiting", "config": {"minute": 5}}
    ]}))
    .needs_random());
    assert!(engine(json!({"plugins": [{"name": "correlation-id", "route": "r1"}]})).needs_random());
}
