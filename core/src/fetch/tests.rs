//! Every transition of the fetch machine, driven natively through a tiny harness.

use super::*;
use crate::digest::canonical_json;
use serde_json::json;

const TOKEN: &str = "companion-s3cr3t";
const SIGNATURE: &str = "X-Amz-Signature=deadbeefSIG";
const VERSION: &str = "3.4.1.0";

// ---- fixtures ----

fn config_json(with_cp: bool) -> Value {
    let mut c = json!({
        "version": VERSION,
        "companion": {"upstream": "fallback_companion", "authority": "companion:8280", "token": TOKEN, "timeout_ms": 2000},
        "storage": {"upstream": "fallback_storage", "timeout_ms": 5000},
        "poll_interval_ms": 5000,
        "fallback_refresh_interval_ms": 30000,
        "cp_failure_threshold": 3,
        "retry_initial_ms": 1000,
        "retry_max_ms": 30000
    });
    if with_cp {
        c["control_plane"] =
            json!({"upstream": "fallback_cp", "authority": "cp.internal:8001", "timeout_ms": 2000});
    }
    c
}

fn config(value: &Value) -> FilterConfig {
    FilterConfig::parse(value.to_string().as_bytes()).expect("test config is valid")
}

/// A valid declarative document, distinct for every `n`, as canonical bytes.
fn doc(n: u32) -> Vec<u8> {
    canonical_json(&json!({
        "_format_version": "3.0",
        "services": [{"name": format!("svc-{n}"), "host": "backend.internal", "port": 8080}]
    }))
}

fn invalid_doc() -> Vec<u8> {
    br#"{"_format_version":"3.0","routes":[{"name":"r","service":"missing","paths":["/x"]}]}"#
        .to_vec()
}

fn signed_body(object: &[u8], revision: u64) -> Vec<u8> {
    signed_body_claiming(Sha256Digest::of(object), revision)
}

fn signed_body_claiming(sha: Sha256Digest, revision: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "url": format!("http://127.0.0.1:8333/bucket/kong/{VERSION}/config.json?{SIGNATURE}&X-Amz-Expires=300"),
        "method": "GET",
        "expires_at": "2026-11-26T10:05:00Z",
        "version": VERSION,
        "key": format!("kong/{VERSION}/config.json"),
        "sha256": sha.to_hex(),
        "revision": revision
    }))
    .unwrap()
}

fn ok(body: &[u8]) -> HttpResponse {
    HttpResponse::new(200, body.to_vec())
}

fn ok_with_etag(body: &[u8], etag: &str) -> HttpResponse {
    let mut r = ok(body);
    r.headers.push(("ETag".into(), etag.into()));
    r
}

fn status(code: u16) -> HttpResponse {
    HttpResponse::new(code, br#"{"message":"from the peer"}"#.to_vec())
}

fn down() -> HttpResponse {
    HttpResponse::transport_failure()
}

// ---- the driver ----

/// Drives a machine and remembers the calls it has in flight (with when they were sent).
struct Driver {
    m: FetchMachine,
    now: u64,
    pending: Vec<(HttpRequest, u64)>,
    /// Times the machine yielded while handling answers: every answer is handled in slices
    /// that end at each question of the pace, as a filter under load would (the sync
    /// `on_response` is the same code, run at once).
    yields: u64,
}

impl Driver {
    fn new(with_cp: bool) -> Self {
        Self::with_config(config(&config_json(with_cp)))
    }

    fn with_config(c: FilterConfig) -> Self {
        Driver {
            m: FetchMachine::new(&c, 42),
            now: 0,
            pending: Vec::new(),
            yields: 0,
        }
    }

    /// Records new calls, asserting that none goes to a party that already has one in flight.
    fn track(&mut self, actions: Vec<Action>) -> Vec<Action> {
        for request in dispatches(&actions) {
            assert!(
                self.pending.iter().all(|(p, _)| p.party != request.party),
                "second {:?} call while one is in flight: {actions:#?}",
                request.party
            );
            self.pending.push((request, self.now));
        }
        actions
    }

    fn tick(&mut self, at: u64) -> Vec<Action> {
        self.now = at;
        // Calls past their deadline are given up by the machine during this tick.
        self.pending
            .retain(|(r, sent)| at < sent + r.timeout_ms + LOST_CALL_GRACE_MS);
        let actions = self.m.on_tick(at);
        self.track(actions)
    }

    /// Answers the call in flight to `party`, at the driver's clock, then ticks at the same
    /// time, as the host's next tick would: the answer itself never asks for a call (a
    /// dispatch from a response callback crashes ngx_wasm_module), what it made due starts
    /// at the tick. Returns the actions of both.
    fn answer(&mut self, party: Party, response: HttpResponse) -> Vec<Action> {
        let index = self
            .pending
            .iter()
            .position(|(r, _)| r.party == party)
            .unwrap_or_else(|| panic!("no {party:?} call in flight: {:?}", self.pending));
        let (request, _) = self.pending.remove(index);
        let due = || true;
        let pace = crate::pace::Pace::new(&due);
        let mut actions = crate::pace::run_to_end(self.m.on_response_paced(
            self.now,
            request.call,
            response,
            &pace,
        ));
        self.yields += pace.yields();
        assert_no_dispatch_in_response(&actions);
        actions.extend(self.m.on_tick(self.now));
        self.track(actions)
    }

    fn in_flight(&self, party: Party) -> Option<&HttpRequest> {
        self.pending
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.party == party)
    }

    /// Boots with the CP serving `doc(1)` under ETag "v1".
    fn serving_cp() -> Self {
        let mut d = Driver::new(true);
        d.tick(0);
        let a = d.answer(Party::ControlPlane, ok_with_etag(&doc(1), "\"v1\""));
        assert!(published(&a).is_some());
        d
    }

    /// The due time of the next import, when idle.
    fn import_due(&self) -> Option<u64> {
        match self.m.import {
            ImportState::Idle { due_ms } => due_ms,
            _ => None,
        }
    }
}

/// What an answer may never do: ask for a call (see the module documentation).
fn assert_no_dispatch_in_response(actions: &[Action]) {
    assert!(
        dispatches(actions).is_empty(),
        "a dispatch asked for from a response callback: {actions:#?}"
    );
}

fn dispatches(actions: &[Action]) -> Vec<HttpRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn dispatch_to(actions: &[Action], party: Party) -> Option<HttpRequest> {
    let found: Vec<_> = dispatches(actions)
        .into_iter()
        .filter(|r| r.party == party)
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.into_iter().next()
}

fn published(actions: &[Action]) -> Option<PublishedConfig> {
    let found: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.into_iter().next()
}

fn logs(actions: &[Action]) -> Vec<(LogLevel, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { level, message } => Some((*level, message.clone())),
            _ => None,
        })
        .collect()
}

fn has_log(actions: &[Action], level: LogLevel, needle: &str) -> bool {
    logs(actions)
        .iter()
        .any(|(l, m)| *l == level && m.contains(needle))
}

fn counts(actions: &[Action]) -> Vec<(Stage, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Count { stage, success } => Some((*stage, *success)),
            _ => None,
        })
        .collect()
}

fn header<'r>(r: &'r HttpRequest, name: &str) -> Option<&'r str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// No action may leak the token or a signed URL's signature, in its text or its `Debug`.
fn assert_no_secrets(actions: &[Action]) {
    for (_, message) in logs(actions) {
        assert!(!message.contains(TOKEN), "{message}");
        assert!(!message.contains("deadbeefSIG"), "{message}");
    }
    let debug = format!("{actions:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(!debug.contains("deadbeefSIG"), "{debug}");
}

// ---- control plane ----

#[test]
fn first_tick_polls_the_cp_and_a_valid_200_is_published() {
    let mut d = Driver::new(true);
    assert_eq!(d.m.mode(), Mode::Starting);
    let a = d.tick(0);
    let poll = dispatch_to(&a, Party::ControlPlane).expect("CP poll at the first tick");
    assert_eq!(dispatches(&a).len(), 1, "no import while the CP is untried");
    assert_eq!(poll.upstream, "fallback_cp");
    assert_eq!(poll.method, "GET");
    assert_eq!(poll.path, "/config");
    assert_eq!(poll.authority, "cp.internal:8001");
    assert_eq!(poll.timeout_ms, 2000);
    assert_eq!(header(&poll, "accept"), Some("application/json"));
    assert_eq!(header(&poll, "if-none-match"), None);
    assert_eq!(header(&poll, "authorization"), None, "no token configured");

    let a = d.answer(Party::ControlPlane, ok_with_etag(&doc(1), "\"v1\""));
    let p = published(&a).expect("published");
    assert_eq!(p.source, Source::ControlPlane);
    assert_eq!(p.revision, 0);
    assert_eq!(&*p.document, &doc(1)[..]);
    assert_eq!(p.sha256, Sha256Digest::of(&doc(1)));
    assert!(ConfigDocument::from_slice(&p.document).is_ok());
    assert_eq!(
        counts(&a),
        [(Stage::ControlPlane, true), (Stage::Validate, true)]
    );
    assert!(has_log(
        &a,
        LogLevel::Info,
        "serving the config from control plane fallback_cp"
    ));
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    assert_eq!(d.m.current(), Some(&p));
}

/// The companion's `GET /v1/config` as the control plane: its bearer token goes with every poll
/// and shows nowhere else.
#[test]
fn a_control_plane_token_is_sent_as_bearer_and_never_shown() {
    let mut value = config_json(true);
    value["control_plane"]["token"] = json!(TOKEN);
    value["control_plane"]["path"] = json!("/v1/config");
    let mut d = Driver::with_config(config(&value));
    let a = d.tick(0);
    let poll = dispatch_to(&a, Party::ControlPlane).expect("CP poll");
    assert_eq!(poll.path, "/v1/config");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(header(&poll, "authorization"), Some(bearer.as_str()));
    assert_no_secrets(&a);
    let a = d.answer(Party::ControlPlane, status(401));
    assert_no_secrets(&a);
    assert!(!format!("{:?}", config(&value)).contains(TOKEN));
}

#[test]
fn cp_polls_every_interval_with_the_etag_and_a_304_changes_nothing() {
    let mut d = Driver::serving_cp();
    assert!(dispatches(&d.tick(4_999)).is_empty());
    let a = d.tick(5_000);
    let poll = dispatch_to(&a, Party::ControlPlane).unwrap();
    assert_eq!(header(&poll, "if-none-match"), Some("\"v1\""));
    let a = d.answer(Party::ControlPlane, HttpResponse::new(304, Vec::new()));
    assert_eq!(published(&a), None);
    assert_eq!(counts(&a), [(Stage::ControlPlane, true)]);
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    assert_eq!(d.m.current().unwrap().sha256, Sha256Digest::of(&doc(1)));
    assert!(dispatch_to(&d.tick(10_000), Party::ControlPlane).is_some());
}

#[test]
fn the_same_cp_document_in_another_spelling_is_not_published_again() {
    let mut d = Driver::serving_cp();
    d.tick(5_000);
    let respelled =
        br#"{ "services": [ {"port": 8080, "host": "backend.internal", "name": "svc-1"} ],
                          "_format_version": "3.0" }"#;
    let a = d.answer(Party::ControlPlane, ok_with_etag(respelled, "\"v1b\""));
    assert_eq!(published(&a), None);
    d.tick(10_000);
    let poll = d.in_flight(Party::ControlPlane).unwrap();
    assert_eq!(header(poll, "if-none-match"), Some("\"v1b\""));
    let a = d.answer(Party::ControlPlane, ok(&doc(2)));
    assert_eq!(published(&a).unwrap().sha256, Sha256Digest::of(&doc(2)));
}

#[test]
fn cp_failures_below_the_threshold_only_warn() {
    let mut d = Driver::serving_cp();
    for (i, failure) in [status(503), down()].into_iter().enumerate() {
        d.tick(5_000 * (i as u64 + 1));
        let a = d.answer(Party::ControlPlane, failure);
        assert!(dispatches(&a).is_empty(), "{a:#?}");
        assert_eq!(published(&a), None);
        assert_eq!(counts(&a), [(Stage::ControlPlane, false)]);
        assert!(has_log(
            &a,
            LogLevel::Warn,
            &format!("failure {} of 3 before falling back", i + 1)
        ));
        assert_eq!(d.m.mode(), Mode::ControlPlane);
    }
    assert_eq!(d.m.consecutive_cp_failures(), 2);
    // A success resets the count.
    d.tick(15_000);
    d.answer(Party::ControlPlane, HttpResponse::new(304, Vec::new()));
    assert_eq!(d.m.consecutive_cp_failures(), 0);
}

#[test]
fn a_large_control_plane_document_is_handled_in_slices() {
    let services: Vec<Value> = (0..200)
        .map(|i| {
            json!({"name": format!("s{i}"), "url": "http://backend.internal:8080/",
            "routes": [{"name": format!("r{i}"), "paths": [format!("/r{i}")]}]})
        })
        .collect();
    let large = canonical_json(&json!({"_format_version": "3.0", "services": services}));
    let mut d = Driver::new(true);
    d.tick(0);
    let a = d.answer(Party::ControlPlane, ok(&large));
    assert_eq!(
        published(&a).map(|p| p.sha256),
        Some(Sha256Digest::of(&large))
    );
    // 200 services and routes read, then freed, a step each.
    assert!(
        d.yields > 2 * 200 / u64::from(crate::pace::CHECK_EVERY),
        "{} yields",
        d.yields
    );
}

#[test]
fn the_whole_story_cp_fallback_refresh_and_back() {
    let mut d = Driver::serving_cp();
    let cp_doc = d.m.current().unwrap().clone();

    // Two failures: nothing happens. The third: the import starts at once.
    for at in [5_000, 10_000] {
        d.tick(at);
        assert!(dispatches(&d.answer(Party::ControlPlane, status(502))).is_empty());
    }
    d.tick(15_000);
    let a = d.answer(Party::ControlPlane, down());
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "control plane fallback_cp unreachable (3 failures in a row"
    ));
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "switching to the fallback config from storage"
    ));
    assert_eq!(d.m.mode(), Mode::Fallback);
    assert_eq!(d.m.current(), Some(&cp_doc), "never unpublished");
    let ask = dispatch_to(&a, Party::Companion).expect("import starts at the threshold");
    assert_eq!(ask.upstream, "fallback_companion");
    assert_eq!(ask.method, "GET");
    assert_eq!(ask.path, "/v1/fallback-config?version=3.4.1.0");
    assert_eq!(ask.authority, "companion:8280");
    assert_eq!(
        header(&ask, "authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_no_secrets(&a);

    // Companion 200 → storage call to the signed URL's host, path and query.
    let a = d.answer(Party::Companion, ok(&signed_body(&doc(7), 1795)));
    assert_eq!(counts(&a), [(Stage::Companion, true)]);
    let get = dispatch_to(&a, Party::Storage).unwrap();
    assert_eq!(get.upstream, "fallback_storage");
    assert_eq!(get.method, "GET");
    assert_eq!(get.authority, "127.0.0.1:8333");
    assert_eq!(
        get.path,
        format!("/bucket/kong/{VERSION}/config.json?{SIGNATURE}&X-Amz-Expires=300")
    );
    assert_eq!(get.timeout_ms, 5000);
    assert_no_secrets(&a);

    // Storage 200, verified and valid → published as the fallback config.
    let a = d.answer(Party::Storage, ok(&doc(7)));
    assert_eq!(
        counts(&a),
        [
            (Stage::Storage, true),
            (Stage::Verify, true),
            (Stage::Revision, true),
            (Stage::Validate, true)
        ]
    );
    let p = published(&a).unwrap();
    assert_eq!((p.source, p.revision), (Source::Fallback, 1795));
    assert_eq!(&*p.document, &doc(7)[..]);
    assert!(has_log(
        &a,
        LogLevel::Info,
        "imported revision 1795 (sha256 "
    ));
    assert_eq!(d.m.mode(), Mode::Fallback);

    // While on fallback the CP is polled unconditionally, and its failures stay quiet.
    let a = d.tick(20_000);
    let poll = dispatch_to(&a, Party::ControlPlane).unwrap();
    assert_eq!(header(&poll, "if-none-match"), None);
    assert!(dispatch_to(&a, Party::Companion).is_none());
    let a = d.answer(Party::ControlPlane, down());
    assert!(logs(&a).iter().all(|(l, _)| *l == LogLevel::Debug));
    assert!(dispatches(&a).is_empty());

    // The refresh: due 30 s after the import; finds a newer revision.
    let import_done_at = 15_000;
    let mut at = 25_000;
    while at < import_done_at + 30_000 {
        let a = d.tick(at);
        assert!(
            dispatch_to(&a, Party::Companion).is_none(),
            "refresh too early at {at}"
        );
        if d.in_flight(Party::ControlPlane).is_some() {
            d.answer(Party::ControlPlane, down());
        }
        at += 5_000;
    }
    let a = d.tick(import_done_at + 30_000);
    assert!(dispatch_to(&a, Party::Companion).is_some(), "{a:#?}");
    d.answer(Party::ControlPlane, down());
    d.answer(Party::Companion, ok(&signed_body(&doc(8), 1796)));
    let a = d.answer(Party::Storage, ok(&doc(8)));
    let p = published(&a).unwrap();
    assert_eq!((p.source, p.revision), (Source::Fallback, 1796));

    // The CP comes back: its document is published, the import stops.
    let a = d.tick(50_000);
    assert!(dispatch_to(&a, Party::ControlPlane).is_some());
    let a = d.answer(Party::ControlPlane, ok_with_etag(&doc(9), "\"v9\""));
    let p = published(&a).unwrap();
    assert_eq!(p.source, Source::ControlPlane);
    assert_eq!(&*p.document, &doc(9)[..]);
    assert!(has_log(
        &a,
        LogLevel::Info,
        "control plane fallback_cp is back"
    ));
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    assert_eq!(d.import_due(), None);
    for at in (55_000..200_000).step_by(5_000) {
        let a = d.tick(at);
        assert!(dispatch_to(&a, Party::Companion).is_none());
        let poll = d.in_flight(Party::ControlPlane).unwrap();
        assert_eq!(header(poll, "if-none-match"), Some("\"v9\""));
        d.answer(Party::ControlPlane, HttpResponse::new(304, Vec::new()));
    }
}

#[test]
fn boot_with_the_cp_down_imports_after_the_first_failure() {
    let mut d = Driver::new(true);
    d.tick(0);
    let a = d.answer(Party::ControlPlane, down());
    assert!(dispatch_to(&a, Party::Companion).is_some());
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "no config yet: importing the fallback config"
    ));
    assert_eq!(d.m.mode(), Mode::Fallback);
    d.answer(Party::Companion, ok(&signed_body(&doc(3), 5)));
    let a = d.answer(Party::Storage, ok(&doc(3)));
    assert_eq!(published(&a).unwrap().source, Source::Fallback);
    // The CP answering with the same document republishes it as the CP's.
    d.tick(5_000);
    let a = d.answer(Party::ControlPlane, ok(&doc(3)));
    let p = published(&a).unwrap();
    assert_eq!(
        (p.source, p.sha256),
        (Source::ControlPlane, Sha256Digest::of(&doc(3)))
    );
    assert_eq!(d.m.mode(), Mode::ControlPlane);
}

#[test]
fn a_cp_back_with_the_document_already_served_leaves_fallback_without_publishing() {
    let mut d = Driver::serving_cp();
    for at in [5_000, 10_000, 15_000] {
        d.tick(at);
        d.answer(Party::ControlPlane, status(500));
    }
    assert_eq!(d.m.mode(), Mode::Fallback);
    d.answer(Party::Companion, status(404));
    d.tick(20_000);
    let a = d.answer(Party::ControlPlane, ok(&doc(1)));
    assert_eq!(published(&a), None);
    assert!(has_log(
        &a,
        LogLevel::Info,
        "is back with the config already served"
    ));
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    assert_eq!(d.import_due(), None, "the retry is cancelled");
}

#[test]
fn an_unconditional_304_while_on_fallback_is_a_failure() {
    let mut d = Driver::new(true);
    d.tick(0);
    d.answer(Party::ControlPlane, down());
    d.tick(5_000);
    let a = d.answer(Party::ControlPlane, HttpResponse::new(304, Vec::new()));
    assert_eq!(counts(&a), [(Stage::ControlPlane, false)]);
    assert_eq!(d.m.mode(), Mode::Fallback);
}

#[test]
fn an_import_answer_after_the_cp_came_back_is_dropped() {
    let mut d = Driver::new(true);
    d.tick(0);
    d.answer(Party::ControlPlane, down());
    d.answer(Party::Companion, ok(&signed_body(&doc(3), 5)));
    d.tick(5_000);
    d.answer(Party::ControlPlane, ok(&doc(1)));
    let a = d.answer(Party::Storage, ok(&doc(3)));
    assert_eq!(published(&a), None);
    assert_eq!(d.m.current().unwrap().source, Source::ControlPlane);
    assert!(dispatches(&d.tick(6_000)).is_empty());
}

// ---- what the CP serves ----

#[test]
fn an_invalid_cp_document_is_not_published_and_counts_as_a_failure() {
    let mut d = Driver::serving_cp();
    d.tick(5_000);
    let a = d.answer(Party::ControlPlane, ok(&invalid_doc()));
    assert_eq!(published(&a), None);
    assert_eq!(
        counts(&a),
        [(Stage::ControlPlane, true), (Stage::Validate, false)]
    );
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "served an unusable config: config is invalid (1 problem)"
    ));
    assert!(has_log(&a, LogLevel::Warn, "routes[0].service"));
    assert!(has_log(&a, LogLevel::Warn, "keeping the last good config"));
    assert_eq!(d.m.current().unwrap().sha256, Sha256Digest::of(&doc(1)));
    assert_eq!(d.m.consecutive_cp_failures(), 1);

    // The same broken document again: described in one line.
    d.tick(10_000);
    let poll = d.in_flight(Party::ControlPlane).unwrap();
    assert_eq!(
        header(poll, "if-none-match"),
        Some("\"v1\""),
        "the last good ETag"
    );
    let a = d.answer(Party::ControlPlane, ok(&invalid_doc()));
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "still serves the same unusable config"
    ));
    assert!(!has_log(&a, LogLevel::Warn, "routes[0].service"));
}

#[test]
fn kong_admin_api_shape_is_unwrapped() {
    let mut d = Driver::new(true);
    d.tick(0);
    let text = String::from_utf8(doc(4)).unwrap();
    let body = serde_json::to_vec(&json!({ "config": text })).unwrap();
    let a = d.answer(Party::ControlPlane, ok(&body));
    let p = published(&a).unwrap();
    assert_eq!(&*p.document, &doc(4)[..]);
    assert!(ConfigDocument::from_slice(&p.document).is_ok());

    // The same shape holding an object is accepted too.
    d.tick(5_000);
    let inner: Value = serde_json::from_slice(&doc(5)).unwrap();
    let body = serde_json::to_vec(&json!({ "config": inner })).unwrap();
    let p = published(&d.answer(Party::ControlPlane, ok(&body))).unwrap();
    assert_eq!(&*p.document, &doc(5)[..]);
}

#[test]
fn duplicate_keys_in_a_cp_answer_are_refused_with_their_path() {
    let inner = r#"{"_format_version":"3.0","routes":[{"paths":["/"]}],"routes":[]}"#;
    let admin = serde_json::to_vec(&json!({ "config": inner })).unwrap();
    for body in [inner.as_bytes().to_vec(), admin] {
        let mut d = Driver::new(true);
        d.tick(0);
        let a = d.answer(Party::ControlPlane, ok(&body));
        assert_eq!(published(&a), None);
        assert!(
            has_log(&a, LogLevel::Warn, "$: key \"routes\" appears twice"),
            "{:#?}",
            logs(&a)
        );
    }
}

#[test]
fn yaml_gets_a_clear_error() {
    let yaml_admin = serde_json::to_vec(&json!({
        "config": "_format_version: \"3.0\"\nservices:\n- name: s\n  host: h\n"
    }))
    .unwrap();
    let mut yaml_header = ok(&doc(1));
    yaml_header
        .headers
        .push(("Content-Type".into(), "application/x-yaml".into()));
    for response in [
        ok(b"_format_version: \"3.0\"\nservices: []\n"),
        ok(b"---\n_format_version: '3.0'\n"),
        ok(&yaml_admin),
        yaml_header,
    ] {
        let mut d = Driver::new(true);
        d.tick(0);
        let a = d.answer(Party::ControlPlane, response);
        assert_eq!(published(&a), None);
        assert!(
            has_log(&a, LogLevel::Warn, "YAML is not supported"),
            "{:#?}",
            logs(&a)
        );
        assert_eq!(d.m.mode(), Mode::Fallback, "no config yet: import");
    }
}

#[test]
fn cp_status_errors_say_what_to_check() {
    let mut d = Driver::serving_cp();
    d.tick(5_000);
    let a = d.answer(Party::ControlPlane, status(404));
    assert!(has_log(&a, LogLevel::Warn, "check control_plane.path"));
    assert!(has_log(&a, LogLevel::Warn, "from the peer"));
    d.tick(10_000);
    let a = d.answer(Party::ControlPlane, status(401));
    assert!(has_log(&a, LogLevel::Warn, "HTTP 401"));
}

// ---- import failures ----

#[test]
fn a_sha_mismatch_is_not_published_and_is_retried_after_a_backoff() {
    let mut d = Driver::serving_cp();
    for at in [5_000, 10_000, 15_000] {
        d.tick(at);
        d.answer(Party::ControlPlane, down());
    }
    d.answer(Party::Companion, ok(&signed_body(&doc(7), 3)));
    let a = d.answer(Party::Storage, ok(&doc(8)));
    assert_eq!(published(&a), None);
    assert_eq!(counts(&a), [(Stage::Storage, true), (Stage::Verify, false)]);
    assert!(has_log(&a, LogLevel::Warn, "but its export says"));
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "http://127.0.0.1:8333/bucket/kong/3.4.1.0/config.json)"
    ));
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "still serving the control plane config"
    ));
    assert_no_secrets(&a);
    assert_eq!(d.m.current().unwrap().sha256, Sha256Digest::of(&doc(1)));

    let due = d.import_due().unwrap();
    assert!(
        (15_500..=16_000).contains(&due),
        "first retry within [0.5 s, 1 s]: {due}"
    );
    assert!(dispatch_to(&d.tick(due - 1), Party::Companion).is_none());
    assert!(dispatch_to(&d.tick(due), Party::Companion).is_some());
}

#[test]
fn an_invalid_document_from_storage_is_not_published() {
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body(&invalid_doc(), 9)));
    let a = d.answer(Party::Storage, ok(&invalid_doc()));
    assert_eq!(published(&a), None);
    assert_eq!(
        counts(&a),
        [
            (Stage::Storage, true),
            (Stage::Verify, true),
            (Stage::Revision, true),
            (Stage::Validate, false)
        ]
    );
    assert!(has_log(
        &a,
        LogLevel::Error,
        "(revision 9) is not a usable config"
    ));
    assert!(has_log(&a, LogLevel::Error, "routes[0].service"));
    assert!(has_log(
        &a,
        LogLevel::Error,
        "no config yet: requests get 503"
    ));
    assert_eq!(d.m.current(), None);
    assert!(d.import_due().is_some());
}

#[test]
fn companion_failures_back_off_with_jitter_within_bounds() {
    let failures = [
        status(401),
        status(404),
        status(500),
        down(),
        status(503),
        status(401),
        down(),
        ok(b"not json"),
    ];
    let mut d = Driver::new(false);
    d.tick(0);
    let mut delays = Vec::new();
    for (n, failure) in failures.into_iter().enumerate() {
        let now = d.now;
        let a = d.answer(Party::Companion, failure);
        assert_eq!(counts(&a), [(Stage::Companion, false)]);
        assert_no_secrets(&a);
        let due = d.import_due().expect("a retry is scheduled");
        let delay = due - now;
        let step = (1_000u64 << n).min(30_000);
        assert!(
            (step / 2..=step).contains(&delay),
            "attempt {n}: {delay} outside [{}, {step}]",
            step / 2
        );
        delays.push(delay);
        assert!(dispatch_to(&d.tick(due - 1), Party::Companion).is_none());
        assert!(dispatch_to(&d.tick(due), Party::Companion).is_some());
    }
    assert!(delays.windows(2).take(4).all(|w| w[1] > w[0] / 2));

    // A success resets the backoff.
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    d.answer(Party::Storage, ok(&doc(1)));
    let due = d.import_due().unwrap();
    d.tick(due);
    let now = d.now;
    d.answer(Party::Companion, status(500));
    assert!(d.import_due().unwrap() - now <= 1_000);
}

#[test]
fn companion_errors_say_what_to_do() {
    let cases: [(HttpResponse, &str); 6] = [
        (status(401), "rejected the token (HTTP 401: from the peer); set companion.token"),
        (status(404), "nothing exported for version 3.4.1.0"),
        (status(503), "cannot reach storage (HTTP 503"),
        (down(), "companion fallback_companion unreachable"),
        (ok(b"{}"), "answered 200 but its body is not a signed config"),
        (
            ok(br#"{"url":"ftp://x/y?sig=deadbeefSIG","method":"GET","expires_at":"","version":"","key":"k","sha256":"0000000000000000000000000000000000000000000000000000000000000000","revision":1}"#),
            "its URL ftp://x/y is not an http(s)://host/path URL",
        ),
    ];
    for (response, expected) in cases {
        let mut d = Driver::new(false);
        d.tick(0);
        let a = d.answer(Party::Companion, response);
        assert!(
            has_log(&a, LogLevel::Error, expected),
            "{expected:?} in {:#?}",
            logs(&a)
        );
        assert_no_secrets(&a);
    }
}

#[test]
fn storage_errors_say_what_to_do() {
    let cases: [(HttpResponse, &str); 3] = [
        (status(403), "storage refused the signed URL for http://127.0.0.1:8333/bucket/kong/3.4.1.0/config.json (HTTP 403"),
        (status(404), "storage has no object kong/3.4.1.0/config.json"),
        (down(), "storage fallback_storage unreachable"),
    ];
    for (response, expected) in cases {
        let mut d = Driver::new(false);
        d.tick(0);
        d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
        let a = d.answer(Party::Storage, response);
        assert_eq!(counts(&a), [(Stage::Storage, false)]);
        assert!(has_log(&a, LogLevel::Error, expected), "{:#?}", logs(&a));
        assert_no_secrets(&a);
        assert!(d.import_due().is_some());
    }
}

#[test]
fn an_object_too_large_to_import_is_logged_as_too_large_not_unreachable() {
    let big = vec![b' '; crate::limits::MAX_DOCUMENT_BYTES + 1];
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body(&big, 1)));
    let a = d.answer(Party::Storage, ok(&big));
    assert_eq!(
        counts(&a),
        [(Stage::Storage, true), (Stage::Validate, false)]
    );
    let expected = format!(
        "object kong/3.4.1.0/config.json (http://127.0.0.1:8333/bucket/kong/3.4.1.0/config.json, \
         revision 1) is too large: {} bytes, more than the {} bytes (MAX_DOCUMENT_BYTES)",
        big.len(),
        crate::limits::MAX_DOCUMENT_BYTES
    );
    assert!(has_log(&a, LogLevel::Error, &expected), "{:#?}", logs(&a));
    assert!(!has_log(&a, LogLevel::Error, "unreachable"));
    assert!(d.import_due().is_some(), "retried later");

    // A failed call may be a body larger than the proxy buffers: the log says where to look.
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let a = d.answer(Party::Storage, down());
    assert!(
        has_log(&a, LogLevel::Error, "http.async_response_buffer_limit"),
        "{:#?}",
        logs(&a)
    );
}

/// What Envoy hands the filter when the peer did not answer: its own local reply.
fn envoy_reply(code: u16, body: &str) -> HttpResponse {
    let mut r = HttpResponse::new(code, body.as_bytes().to_vec());
    r.headers = vec![
        (":status".into(), code.to_string()),
        ("content-type".into(), "text/plain".into()),
    ];
    r
}

fn envoy_connect_failure() -> HttpResponse {
    envoy_reply(
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: remote \
         connection failure, transport failure reason: delayed connect error: Connection refused",
    )
}

fn envoy_timeout() -> HttpResponse {
    envoy_reply(504, "upstream request timeout")
}

#[test]
fn envoy_replies_for_a_peer_that_did_not_answer_read_as_unreachable_not_as_its_answer() {
    // The companion is down: not "the companion cannot reach storage".
    for response in [
        envoy_connect_failure(),
        envoy_timeout(),
        envoy_reply(503, "no healthy upstream"),
    ] {
        let mut d = Driver::new(false);
        d.tick(0);
        let a = d.answer(Party::Companion, response);
        assert_eq!(counts(&a), [(Stage::Companion, false)]);
        assert!(
            has_log(
                &a,
                LogLevel::Error,
                "companion fallback_companion unreachable"
            ),
            "{:#?}",
            logs(&a)
        );
        assert!(
            !has_log(&a, LogLevel::Error, "cannot reach storage"),
            "{:#?}",
            logs(&a)
        );
    }

    // The store does not answer in time: not "storage answered HTTP 504".
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let a = d.answer(Party::Storage, envoy_timeout());
    assert_eq!(counts(&a), [(Stage::Storage, false)]);
    assert!(
        has_log(&a, LogLevel::Error, "storage fallback_storage unreachable"),
        "{:#?}",
        logs(&a)
    );

    // The CP is down: its failures say so.
    let mut d = Driver::serving_cp();
    d.tick(5_000);
    let a = d.answer(Party::ControlPlane, envoy_connect_failure());
    assert!(
        has_log(&a, LogLevel::Warn, "control plane fallback_cp: no answer"),
        "{:#?}",
        logs(&a)
    );

    // The peer's own 503 and 504 are still the peer's.
    let mut d = Driver::new(false);
    d.tick(0);
    let a = d.answer(Party::Companion, status(503));
    assert!(has_log(
        &a,
        LogLevel::Error,
        "cannot reach storage (HTTP 503: from the peer)"
    ));
    let mut d = Driver::serving_cp();
    d.tick(5_000);
    let a = d.answer(
        Party::ControlPlane,
        envoy_reply(504, "the gateway timed out"),
    );
    assert!(has_log(&a, LogLevel::Warn, "HTTP 504"), "{:#?}", logs(&a));
}

// ---- export signatures ----

/// The key pair of `seed`: its public key as the filter config spells it, and a signer.
fn key_pair(seed: u8) -> (String, ed25519_compact::KeyPair) {
    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
    (crate::signature::encode_base64(&pair.pk[..]), pair)
}

fn key_id(pair: &ed25519_compact::KeyPair) -> String {
    PublicKey::from_bytes(*pair.pk).unwrap().key_id()
}

const EXPORTED_AT: &str = "2026-11-26T10:00:00.000Z";

/// `pair`'s signature over the manifest of `object` at `revision` for `version`.
fn sign_manifest(
    pair: &ed25519_compact::KeyPair,
    version: &str,
    object: &[u8],
    revision: u64,
) -> String {
    let id = key_id(pair);
    let manifest = ExportManifest {
        version,
        revision,
        sha256: Sha256Digest::of(object),
        exported_at: EXPORTED_AT,
        key_id: &id,
    };
    crate::signature::encode_base64(&pair.sk.sign(manifest.to_bytes().unwrap(), None)[..])
}

/// A companion answer for `object` at `revision`, with `fields` set on top.
fn signed_body_with(object: &[u8], revision: u64, fields: Value) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&signed_body(object, revision)).unwrap();
    for (name, field) in fields.as_object().unwrap() {
        value[name] = field.clone();
    }
    serde_json::to_vec(&value).unwrap()
}

/// A companion answer for `object` at `revision`, signed as the exporter signs it.
fn signed_export(pair: &ed25519_compact::KeyPair, object: &[u8], revision: u64) -> Vec<u8> {
    signed_body_with(
        object,
        revision,
        json!({
            "signature": sign_manifest(pair, VERSION, object, revision),
            "key_id": key_id(pair),
            "exported_at": EXPORTED_AT,
        }),
    )
}

/// A machine that requires signatures by one of `seeds`' keys.
fn requiring_signatures_by(seeds: &[u8], with_cp: bool) -> Driver {
    let mut c = config_json(with_cp);
    c["public_keys"] = seeds.iter().map(|s| json!(key_pair(*s).0)).collect();
    Driver::with_config(config(&c))
}

/// A machine that requires signatures by `seed`'s key, given as the `public_key` alias.
fn requiring_signatures(seed: u8, with_cp: bool) -> Driver {
    let mut c = config_json(with_cp);
    c["public_key"] = json!(key_pair(seed).0);
    Driver::with_config(config(&c))
}

#[test]
fn an_export_signed_by_any_configured_key_is_imported() {
    for signer in [1, 2] {
        let (_, pair) = key_pair(signer);
        let mut d = requiring_signatures_by(&[1, 2], false);
        d.tick(0);
        d.answer(Party::Companion, ok(&signed_export(&pair, &doc(1), 4)));
        let a = d.answer(Party::Storage, ok(&doc(1)));
        assert_eq!(published(&a).unwrap().revision, 4);
        assert_eq!(
            counts(&a),
            [
                (Stage::Storage, true),
                (Stage::Verify, true),
                (Stage::Revision, true),
                (Stage::Validate, true)
            ]
        );
        let signed_by = format!("signed by key {}", key_id(&pair));
        assert!(has_log(&a, LogLevel::Info, &signed_by), "{:#?}", logs(&a));
    }
}

#[test]
fn with_public_keys_unsigned_foreign_garbled_altered_and_replayed_exports_are_refused() {
    let (_, mine) = key_pair(1);
    let (_, theirs) = key_pair(2);
    let good = |fields: Value| signed_body_with(&doc(1), 1, fields);
    // A companion answer for `object` at `revision` with `signature`, claiming my key.
    let claiming_mine = |object: &[u8], revision: u64, signature: String| {
        signed_body_with(
            object,
            revision,
            json!({"signature": signature, "key_id": key_id(&mine), "exported_at": EXPORTED_AT}),
        )
    };
    let cases: Vec<(Vec<u8>, Vec<u8>, String)> = vec![
        (
            signed_body(&doc(1), 1),
            doc(1),
            "carries no signature but public_keys is configured".into(),
        ),
        (
            signed_export(&theirs, &doc(1), 1),
            doc(1),
            format!(
                "carries a signature by key id {}, which is none of the configured public_keys \
                 ({})",
                key_id(&theirs),
                key_id(&mine)
            ),
        ),
        // Another key's signature claiming to be ours.
        (
            claiming_mine(&doc(1), 1, sign_manifest(&theirs, VERSION, &doc(1), 1)),
            doc(1),
            "signature does not verify with the configured public key".into(),
        ),
        (
            good(json!({"signature": "not//base64!", "key_id": key_id(&mine)})),
            doc(1),
            "has an unusable signature (the signature is not standard base64)".into(),
        ),
        (
            good(json!({"signature": crate::signature::encode_base64(&[7; 12])})),
            doc(1),
            "has an unusable signature (an Ed25519 signature is 64 bytes, got 12 bytes)".into(),
        ),
        // A body signature from before manifests: no key id.
        (
            good(json!({"signature": sign_manifest(&mine, VERSION, &doc(1), 1)})),
            doc(1),
            "carries a signature without a key-id".into(),
        ),
        // Storage and the companion's sha256 agree on doc(2), but the signature is doc(1)'s.
        (
            claiming_mine(&doc(2), 1, sign_manifest(&mine, VERSION, &doc(1), 1)),
            doc(2),
            "signature does not verify".into(),
        ),
        // An old export replayed under a new revision: the revision is signed.
        (
            claiming_mine(&doc(1), 9, sign_manifest(&mine, VERSION, &doc(1), 1)),
            doc(1),
            "altered or replayed after signing".into(),
        ),
        // Another version's export, or another export time, under a valid signature.
        (
            claiming_mine(&doc(1), 1, sign_manifest(&mine, "3.3.0.0", &doc(1), 1)),
            doc(1),
            "signature does not verify".into(),
        ),
        (
            good(json!({
                "signature": sign_manifest(&mine, VERSION, &doc(1), 1),
                "key_id": key_id(&mine), "exported_at": "2027-01-01T00:00:00.000Z",
            })),
            doc(1),
            "signature does not verify".into(),
        ),
    ];
    for (companion, object, needle) in cases {
        let mut d = requiring_signatures(1, false);
        d.tick(0);
        d.answer(Party::Companion, ok(&companion));
        let a = d.answer(Party::Storage, ok(&object));
        assert_eq!(published(&a), None, "{needle}");
        assert_eq!(
            counts(&a),
            [(Stage::Storage, true), (Stage::Verify, false)],
            "{needle}"
        );
        assert!(
            has_log(&a, LogLevel::Error, &needle),
            "{needle}: {:#?}",
            logs(&a)
        );
        assert!(has_log(
            &a,
            LogLevel::Error,
            "no config yet: requests get 503"
        ));
        assert_no_secrets(&a);
        assert_eq!(d.m.current(), None);
        let due = d.import_due().expect("retried");
        assert!((500..=1_000).contains(&due), "backoff: {due}");
    }
}

#[test]
fn a_lower_revision_than_one_verified_since_start_is_never_imported() {
    let (_, pair) = key_pair(1);
    let mut d = requiring_signatures(1, false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_export(&pair, &doc(2), 5)));
    assert!(published(&d.answer(Party::Storage, ok(&doc(2)))).is_some());
    // Storage restored from an old backup: revision 3, validly signed, other bytes.
    d.tick(30_000);
    d.answer(Party::Companion, ok(&signed_export(&pair, &doc(1), 3)));
    let a = d.answer(Party::Storage, ok(&doc(1)));
    assert_eq!(published(&a), None);
    assert_eq!(
        counts(&a),
        [
            (Stage::Storage, true),
            (Stage::Verify, true),
            (Stage::Revision, false)
        ]
    );
    assert!(
        has_log(
            &a,
            LogLevel::Warn,
            "holds revision 3, lower than revision 5 already verified since this filter started"
        ),
        "{:#?}",
        logs(&a)
    );
    assert_eq!(d.m.current().unwrap().revision, 5);
    // A newer export is imported again.
    let due = d.import_due().unwrap();
    d.tick(due);
    d.answer(Party::Companion, ok(&signed_export(&pair, &doc(3), 6)));
    assert_eq!(
        published(&d.answer(Party::Storage, ok(&doc(3))))
            .unwrap()
            .revision,
        6
    );
}

#[test]
fn rollback_protection_holds_without_signatures_and_across_leaders() {
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 7)));
    let first = published(&d.answer(Party::Storage, ok(&doc(1)))).unwrap();
    // A new leader adopts what is published, and with it the revision floor.
    let mut next = Driver::new(false);
    next.m.adopt(Some(&first));
    next.tick(0);
    next.answer(Party::Companion, ok(&signed_body(&doc(2), 6)));
    let a = next.answer(Party::Storage, ok(&doc(2)));
    assert_eq!(published(&a), None);
    assert!(counts(&a).contains(&(Stage::Revision, false)));
}

#[test]
fn a_refused_signature_keeps_the_last_good_fallback_config() {
    let (_, mine) = key_pair(1);
    let (_, theirs) = key_pair(2);
    let mut d = requiring_signatures(1, false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_export(&mine, &doc(1), 1)));
    assert!(published(&d.answer(Party::Storage, ok(&doc(1)))).is_some());
    d.tick(30_000);
    d.answer(Party::Companion, ok(&signed_export(&theirs, &doc(2), 2)));
    let a = d.answer(Party::Storage, ok(&doc(2)));
    assert_eq!(published(&a), None);
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "still serving the fallback config"
    ));
    assert_eq!(d.m.current().unwrap().revision, 1);
}

#[test]
fn without_a_public_key_signatures_are_not_checked() {
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(
        Party::Companion,
        ok(&signed_body_with(
            &doc(1),
            1,
            json!({"signature": "garbage"}),
        )),
    );
    let a = d.answer(Party::Storage, ok(&doc(1)));
    assert!(published(&a).is_some());
}

#[test]
fn control_plane_documents_need_no_signature() {
    let mut d = requiring_signatures(1, true);
    d.tick(0);
    let a = d.answer(Party::ControlPlane, ok(&doc(1)));
    assert_eq!(published(&a).unwrap().source, Source::ControlPlane);
}

// ---- no control plane ----

#[test]
fn without_a_cp_the_import_runs_at_the_first_tick_and_every_refresh() {
    let mut d = Driver::new(false);
    assert_eq!(d.m.mode(), Mode::Fallback);
    let a = d.tick(100);
    assert_eq!(dispatches(&a).len(), 1);
    assert!(dispatch_to(&a, Party::Companion).is_some());
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let p = published(&d.answer(Party::Storage, ok(&doc(1)))).unwrap();
    assert_eq!((p.source, p.revision), (Source::Fallback, 1));
    assert_eq!(d.import_due(), Some(30_100));
    assert!(dispatches(&d.tick(30_099)).is_empty());

    // Same revision: nothing published.
    assert!(dispatch_to(&d.tick(30_100), Party::Companion).is_some());
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let a = d.answer(Party::Storage, ok(&doc(1)));
    assert_eq!(published(&a), None);
    assert!(has_log(
        &a,
        LogLevel::Debug,
        "storage still holds revision 1"
    ));

    // Newer revision: published.
    d.tick(60_100);
    d.answer(Party::Companion, ok(&signed_body(&doc(2), 2)));
    let p = published(&d.answer(Party::Storage, ok(&doc(2)))).unwrap();
    assert_eq!(p.revision, 2);
}

#[test]
fn the_version_is_percent_encoded_and_a_query_in_the_path_is_kept() {
    let mut c = config_json(false);
    c["version"] = json!("3.4.1.0+ent&x=1");
    c["companion"]["path"] = json!("/signer?tenant=a");
    let mut d = Driver::with_config(config(&c));
    let ask = dispatch_to(&d.tick(0), Party::Companion).unwrap();
    assert_eq!(ask.path, "/signer?tenant=a&version=3.4.1.0%2Bent%26x%3D1");
}

// ---- calls ----

#[test]
fn lost_calls_time_out_and_late_answers_are_ignored() {
    let mut d = Driver::new(true);
    let poll = dispatch_to(&d.tick(0), Party::ControlPlane).unwrap();
    // Deadline: timeout 2000 + grace 1000.
    assert!(dispatches(&d.tick(2_999)).is_empty());
    let a = d.tick(3_000);
    assert_eq!(counts(&a), [(Stage::ControlPlane, false)]);
    let ask = dispatch_to(&a, Party::Companion).expect("no config: import");

    let a = d.m.on_response(3_001, poll.call, ok(&doc(1)));
    assert_eq!(published(&a), None);
    assert!(dispatches(&a).is_empty());
    assert!(has_log(&a, LogLevel::Debug, "no such call in flight"));

    // The companion call is lost too: counted, retried after a backoff.
    let a = d.tick(3_000 + 3_000);
    assert_eq!(counts(&a), [(Stage::Companion, false)]);
    assert!(d.import_due().is_some());
    let a =
        d.m.on_response(6_001, ask.call, ok(&signed_body(&doc(1), 1)));
    assert!(dispatches(&a).is_empty());

    // And a lost storage call.
    let due = d.import_due().unwrap();
    d.pending.clear();
    let a = d.tick(due);
    dispatch_to(&a, Party::Companion).unwrap();
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let a = d.tick(due + 5_000 + 1_000);
    assert!(counts(&a).contains(&(Stage::Storage, false)), "{a:#?}");
}

#[test]
fn a_call_the_host_refused_fails_at_once() {
    let mut d = Driver::new(false);
    d.tick(0);
    let a = d.answer(Party::Companion, HttpResponse::transport_failure());
    assert_eq!(counts(&a), [(Stage::Companion, false)]);
}

#[test]
fn unknown_call_ids_are_ignored() {
    let mut d = Driver::serving_cp();
    let a = d.m.on_response(1, 999, ok(&doc(5)));
    assert_eq!(published(&a), None);
    assert!(dispatches(&a).is_empty());
    assert_eq!(d.m.current().unwrap().sha256, Sha256Digest::of(&doc(1)));
}

#[test]
fn never_more_than_one_call_in_flight_per_party() {
    // Random events: ticks and answers (good, bad, lost) in any order. The driver asserts the
    // invariant on every dispatch; here we also check that companion and storage never overlap.
    for seed in 0..200u64 {
        let mut rng = SplitMix64(seed);
        let with_cp = seed % 3 != 0;
        let mut d = Driver::new(with_cp);
        d.m = FetchMachine::new(&config(&config_json(with_cp)), seed);
        let mut now = 0;
        let mut sent: Vec<(HttpRequest, u64)> = Vec::new();
        for _ in 0..300 {
            now += rng.next() % 4_000;
            let pick = rng.next() % 4;
            let actions = if pick == 0 || sent.is_empty() {
                d.m.on_tick(now)
            } else {
                let (request, _) = sent.remove((rng.next() % sent.len() as u64) as usize);
                let response = match (request.party, rng.next() % 4) {
                    (_, 0) => down(),
                    (Party::ControlPlane, 1) => ok(&doc((rng.next() % 3) as u32)),
                    (Party::Companion, 1) => ok(&signed_body(&doc(2), rng.next() % 3)),
                    (Party::Storage, 1) => ok(&doc(2)),
                    (_, 2) => status(500),
                    _ => ok(b"\x00garbage"),
                };
                let actions = d.m.on_response(now, request.call, response);
                assert_no_dispatch_in_response(&actions);
                actions
            };
            // Forget calls the machine gave up on (their deadline has passed).
            sent.retain(|(r, at)| now < at + r.timeout_ms + LOST_CALL_GRACE_MS);
            for request in dispatches(&actions) {
                assert!(
                    sent.iter().all(|(r, _)| r.party != request.party),
                    "seed {seed}: two {:?} calls in flight",
                    request.party
                );
                if request.party != Party::ControlPlane {
                    assert!(
                        sent.iter().all(|(r, _)| r.party == Party::ControlPlane),
                        "seed {seed}: companion and storage calls overlap"
                    );
                }
                sent.push((request, now));
            }
            assert_no_secrets(&actions);
            if let Some(p) = published(&actions) {
                assert!(ConfigDocument::from_slice(&p.document).is_ok());
            }
        }
    }
}

// ---- mirrors ----

/// A companion answer for `object` listing the primary store, then a mirror.
fn signed_body_with_mirror(object: &[u8], revision: u64) -> Vec<u8> {
    let url = |host: &str| {
        json!({
            "url": format!("http://{host}/bucket/kong/{VERSION}/config.json?{SIGNATURE}"),
            "method": "GET",
            "expires_at": "2026-11-26T10:05:00Z",
        })
    };
    signed_body_with(
        object,
        revision,
        json!({"urls": [url("primary:8333"), url("mirror:9000")]}),
    )
}

#[test]
fn a_failing_store_hands_over_to_the_next_mirror_holding_the_export() {
    for primary_answer in [
        HttpResponse::new(404, Vec::new()),
        HttpResponse::transport_failure(),
        ok(&doc(9)), // another body than the export's sha256: a corrupted copy
    ] {
        let mut d = Driver::new(false);
        d.tick(0);
        let a = d.answer(Party::Companion, ok(&signed_body_with_mirror(&doc(1), 4)));
        assert_eq!(
            dispatch_to(&a, Party::Storage).unwrap().authority,
            "primary:8333"
        );
        let a = d.answer(Party::Storage, primary_answer.clone());
        assert_eq!(published(&a), None);
        assert!(
            has_log(
                &a,
                LogLevel::Warn,
                "trying the next store holding it: http://mirror:9000/bucket/kong/"
            ),
            "{:#?}",
            logs(&a)
        );
        assert_no_secrets(&a);
        let mirror = dispatch_to(&a, Party::Storage).expect("the mirror, at the same tick");
        assert_eq!(mirror.authority, "mirror:9000");
        let a = d.answer(Party::Storage, ok(&doc(1)));
        assert_eq!(published(&a).unwrap().revision, 4, "{primary_answer:?}");
    }
}

#[test]
fn when_every_store_fails_the_import_fails_once_and_retries_from_the_primary() {
    let mut d = Driver::new(false);
    d.tick(0);
    d.answer(Party::Companion, ok(&signed_body_with_mirror(&doc(1), 4)));
    d.answer(Party::Storage, HttpResponse::new(404, Vec::new()));
    let a = d.answer(Party::Storage, HttpResponse::new(404, Vec::new()));
    assert!(has_log(
        &a,
        LogLevel::Error,
        "fallback import failed: storage has no object"
    ));
    let due = d.import_due().expect("retried");
    let a = d.tick(due);
    assert!(dispatch_to(&a, Party::Companion).is_some());
}

#[test]
fn a_signed_url_list_with_a_non_get_entry_is_refused() {
    let mut d = Driver::new(false);
    d.tick(0);
    let body = signed_body_with(
        &doc(1),
        1,
        json!({"urls": [{"url": "http://h/k", "method": "PUT", "expires_at": "x"}]}),
    );
    let a = d.answer(Party::Companion, ok(&body));
    assert!(has_log(
        &a,
        LogLevel::Error,
        "a signed URL in urls is for PUT, not GET"
    ));
}

#[test]
fn a_failing_companion_hands_over_to_the_next_one_listed() {
    let mut c = config_json(false);
    let first = c["companion"].clone();
    let mut second = first.clone();
    second["upstream"] = json!("companion_b");
    c["companion"] = json!([first, second]);
    let mut d = Driver::with_config(config(&c));
    let a = d.tick(0);
    assert_eq!(
        dispatch_to(&a, Party::Companion).unwrap().upstream,
        "fallback_companion"
    );
    let a = d.answer(Party::Companion, HttpResponse::transport_failure());
    assert!(
        has_log(&a, LogLevel::Warn, "trying the next companion, companion_b"),
        "{:#?}",
        logs(&a)
    );
    assert_eq!(counts(&a), [(Stage::Companion, false)]);
    assert_eq!(
        dispatch_to(&a, Party::Companion).unwrap().upstream,
        "companion_b"
    );
    d.answer(Party::Companion, ok(&signed_body(&doc(1), 2)));
    assert!(published(&d.answer(Party::Storage, ok(&doc(1)))).is_some());
    // The next round starts from the first companion again; both failing is one import failure.
    let due = d.import_due().unwrap();
    let a = d.tick(due);
    assert_eq!(
        dispatch_to(&a, Party::Companion).unwrap().upstream,
        "fallback_companion"
    );
    d.answer(Party::Companion, HttpResponse::new(500, Vec::new()));
    let a = d.answer(Party::Companion, HttpResponse::new(500, Vec::new()));
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "fallback import failed: companion companion_b answered HTTP 500"
    ));
    assert!(dispatch_to(&a, Party::Companion).is_none(), "backoff");
}

// ---- version skew ----

/// A companion answer for `object` exported under `version`.
fn signed_body_of_version(object: &[u8], revision: u64, version: &str) -> Vec<u8> {
    signed_body_with(object, revision, json!({"version": version}))
}

#[test]
fn without_an_export_for_version_the_accepted_versions_are_tried_in_order_and_logged() {
    let mut c = config_json(false);
    c["accept_versions"] = json!(["3.4.0.0", "3.3.0.0"]);
    let mut d = Driver::with_config(config(&c));
    let asked = |a: &[Action]| {
        dispatch_to(a, Party::Companion)
            .map(|r| r.path.rsplit("version=").next().unwrap().to_owned())
    };
    assert_eq!(asked(&d.tick(0)).as_deref(), Some(VERSION));
    let a = d.answer(Party::Companion, HttpResponse::new(404, Vec::new()));
    assert!(
        has_log(
            &a,
            LogLevel::Info,
            "no export for version 3.4.1.0 (companion: HTTP 404); trying version 3.4.0.0"
        ),
        "{:#?}",
        logs(&a)
    );
    assert_eq!(counts(&a), [], "a skew step is not a failure");
    // Asked at once, at the same tick.
    assert_eq!(asked(&a).as_deref(), Some("3.4.0.0"));
    let a = d.answer(Party::Companion, HttpResponse::new(404, Vec::new()));
    assert_eq!(asked(&a).as_deref(), Some("3.3.0.0"));
    d.answer(
        Party::Companion,
        ok(&signed_body_of_version(&doc(1), 3, "3.3.0.0")),
    );
    let a = d.answer(Party::Storage, ok(&doc(1)));
    assert_eq!(published(&a).unwrap().revision, 3);
    assert!(
        has_log(
            &a,
            LogLevel::Info,
            "version 3.3.0.0 in place of version 3.4.1.0 (accept_versions)"
        ),
        "{:#?}",
        logs(&a)
    );
    // The next round asks for the release's own version first again.
    let due = d.import_due().unwrap();
    assert_eq!(asked(&d.tick(due)).as_deref(), Some(VERSION));
    // All of them missing: one failure, retried with backoff from the top.
    d.answer(Party::Companion, HttpResponse::new(404, Vec::new()));
    d.answer(Party::Companion, HttpResponse::new(404, Vec::new()));
    let a = d.answer(Party::Companion, HttpResponse::new(404, Vec::new()));
    assert_eq!(counts(&a), [(Stage::Companion, false)]);
    assert!(has_log(
        &a,
        LogLevel::Warn,
        "nothing exported for version 3.4.1.0 nor any of accept_versions (3.4.0.0, 3.3.0.0)"
    ));
}

#[test]
fn an_answer_for_another_version_than_asked_is_refused() {
    let mut d = Driver::new(false);
    d.tick(0);
    let a = d.answer(
        Party::Companion,
        ok(&signed_body_of_version(&doc(1), 3, "3.3.0.0")),
    );
    assert_eq!(counts(&a), [(Stage::Companion, false)]);
    assert!(has_log(
        &a,
        LogLevel::Error,
        "answered with an export of version 3.3.0.0 when asked for 3.4.1.0"
    ));
}

// ---- staleness budget ----

#[test]
fn past_the_budget_the_leader_logs_and_counts_once_a_minute_until_a_fresher_import() {
    let (_, pair) = key_pair(1);
    let mut c = config_json(false);
    c["max_fallback_age_ms"] = json!(60_000);
    let mut d = Driver::with_config(config(&c));
    let exported = crate::freshness::parse_rfc3339_ms(EXPORTED_AT).unwrap();
    d.tick(exported);
    d.answer(Party::Companion, ok(&signed_export(&pair, &doc(1), 1)));
    let p = published(&d.answer(Party::Storage, ok(&doc(1)))).unwrap();
    assert_eq!(p.exported_at_ms, Some(exported));
    let stale_lines = |a: &[Action]| {
        logs(a)
            .iter()
            .filter(|(_, m)| m.contains("past max_fallback_age_ms (60 s): still serving it"))
            .count()
    };
    assert_eq!(stale_lines(&d.tick(exported + 60_000)), 0, "within budget");
    let a = d.tick(exported + 61_000);
    assert_eq!(stale_lines(&a), 1, "{:#?}", logs(&a));
    assert!(has_log(&a, LogLevel::Warn, "(revision 1) is 61 s old"));
    assert!(counts(&a).contains(&(Stage::Age, false)));
    assert_eq!(stale_lines(&d.tick(exported + 120_000)), 0, "once a minute");
    assert_eq!(stale_lines(&d.tick(exported + 121_000)), 1);
}

#[test]
fn the_same_export_with_a_renewed_export_time_is_published_again_and_its_age_counts_from_then() {
    let mut c = config_json(false);
    c["max_fallback_age_ms"] = json!(60_000);
    let mut d = Driver::with_config(config(&c));
    let at = |text: &str| crate::freshness::parse_rfc3339_ms(text).unwrap();
    let first = "2026-11-26T10:00:00.000Z";
    let renewed = "2026-11-26T11:00:00.000Z";
    let answer =
        |exported_at: &str| signed_body_with(&doc(1), 7, json!({"exported_at": exported_at}));
    d.tick(at(first));
    d.answer(Party::Companion, ok(&answer(first)));
    let p = published(&d.answer(Party::Storage, ok(&doc(1)))).expect("imported");
    assert_eq!(p.exported_at_ms, Some(at(first)));
    // An hour later the budget is spent...
    let later = at(renewed) + 1_000;
    let a = d.tick(later);
    assert!(
        counts(&a).contains(&(Stage::Age, false)),
        "stale before the renewal"
    );
    // ...and the next check finds the same revision exported again: published again with the
    // new time, and no longer stale.
    assert!(
        dispatch_to(&a, Party::Companion).is_some(),
        "a fallback check is due"
    );
    d.answer(Party::Companion, ok(&answer(renewed)));
    let a = d.answer(Party::Storage, ok(&doc(1)));
    let p = published(&a).expect("published again");
    assert_eq!((p.revision, p.exported_at_ms), (7, Some(at(renewed))));
    assert_eq!(d.m.current().unwrap().exported_at_ms, Some(at(renewed)));
    assert!(
        has_log(
            &a,
            LogLevel::Info,
            "exported again at 2026-11-26T11:00:00.000Z"
        ),
        "{:#?}",
        logs(&a)
    );
    assert!(!counts(&d.tick(later + 1_000)).contains(&(Stage::Age, false)));
    // The same time again, or an older one: nothing new.
    for exported_at in [renewed, first] {
        let a = d.tick(later + 40_000);
        if dispatch_to(&a, Party::Companion).is_some() {
            d.answer(Party::Companion, ok(&answer(exported_at)));
            assert_eq!(published(&d.answer(Party::Storage, ok(&doc(1)))), None);
        }
    }
}

// ---- adopt ----

#[test]
fn adopting_a_fallback_config_keeps_serving_it_and_rechecks_storage() {
    let mut d = Driver::new(true);
    let adopted = PublishedConfig {
        source: Source::Fallback,
        revision: 12,
        sha256: Sha256Digest::of(&doc(6)),
        exported_at_ms: None,
        document: doc(6).into(),
    };
    d.m.adopt(Some(&adopted));
    assert_eq!(d.m.mode(), Mode::Fallback);
    assert_eq!(d.m.current(), Some(&adopted));
    let a = d.tick(0);
    let poll = dispatch_to(&a, Party::ControlPlane).unwrap();
    assert_eq!(header(&poll, "if-none-match"), None);
    assert!(dispatch_to(&a, Party::Companion).is_some());
    // CP still down: quiet; same revision in storage: not published again.
    assert!(dispatches(&d.answer(Party::ControlPlane, down())).is_empty());
    d.answer(Party::Companion, ok(&signed_body(&doc(6), 12)));
    let a = d.answer(Party::Storage, ok(&doc(6)));
    assert_eq!(published(&a), None);
}

#[test]
fn adopting_a_cp_config_applies_the_threshold_before_falling_back() {
    let mut d = Driver::new(true);
    let adopted = PublishedConfig {
        source: Source::ControlPlane,
        revision: 0,
        sha256: Sha256Digest::of(&doc(6)),
        exported_at_ms: None,
        document: doc(6).into(),
    };
    d.m.adopt(Some(&adopted));
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    d.tick(0);
    let a = d.answer(Party::ControlPlane, down());
    assert!(
        dispatches(&a).is_empty(),
        "a config is held: threshold applies"
    );
    assert!(has_log(&a, LogLevel::Warn, "failure 1 of 3"));
    // The CP answering the same document does not republish it.
    d.tick(5_000);
    assert_eq!(published(&d.answer(Party::ControlPlane, ok(&doc(6)))), None);

    d.m.adopt(None);
    assert_eq!(d.m.mode(), Mode::Starting);
    assert_eq!(d.m.current(), None);
    let a = d.tick(5_001);
    assert!(
        dispatch_to(&a, Party::ControlPlane).is_some(),
        "polls at once"
    );
    assert!(dispatch_to(&d.answer(Party::ControlPlane, down()), Party::Companion).is_some());
}

// ---- robustness ----

#[test]
fn garbage_bodies_and_headers_never_panic_or_publish() {
    let mut rng = SplitMix64(7);
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"config\": 5}".to_vec(),
        b"{\"config\": \"\"}".to_vec(),
        b"{\"config\": \"{\\\"config\\\": 1}\"}".to_vec(),
        b"\xef\xbb\xbf{".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        "[".repeat(10_000).into_bytes(),
        br#"{"url":"http://h/k","method":"PUT","expires_at":"","version":"","key":"","sha256":"00","revision":1}"#.to_vec(),
        br#"{"url":"http://h/k","method":"GET","expires_at":"","version":"","key":"","sha256":"zz","revision":-1}"#.to_vec(),
        br#"{"message": "\u0000\u001b[31m evil \n newline"}"#.to_vec(),
    ];
    for _ in 0..50 {
        let len = (rng.next() % 300) as usize;
        bodies.push((0..len).map(|_| rng.next() as u8).collect());
    }
    let headers = vec![
        ("etag".to_owned(), "\"a\r\nb\"".to_owned()),
        ("content-type".to_owned(), "\u{0}".to_owned()),
        (String::new(), String::new()),
        ("ETAG".to_owned(), "x".repeat(10_000)),
    ];
    for body in &bodies {
        for code in [Some(200), Some(304), Some(0), Some(999), None] {
            let response = HttpResponse {
                status: code,
                headers: headers.clone(),
                body: body.clone(),
            };
            for with_cp in [true, false] {
                let mut d = Driver::new(with_cp);
                let a = d.tick(0);
                let first = dispatches(&a)[0].clone();
                let a = d.m.on_response(1, first.call, response.clone());
                assert_eq!(published(&a), None);
                // Then the same garbage to every call that follows.
                for request in dispatches(&a) {
                    let a = d.m.on_response(2, request.call, response.clone());
                    assert_eq!(published(&a), None);
                    for request in dispatches(&a) {
                        let a = d.m.on_response(3, request.call, response.clone());
                        assert_eq!(published(&a), None);
                    }
                }
                for (_, message) in logs(&a) {
                    assert!(!message.contains('\u{1b}'), "{message:?}");
                }
            }
        }
    }
}

#[test]
fn a_bad_etag_is_not_sent_back() {
    let mut d = Driver::new(true);
    d.tick(0);
    d.answer(Party::ControlPlane, ok_with_etag(&doc(1), "\"a\r\nb\""));
    d.tick(5_000);
    assert_eq!(
        header(d.in_flight(Party::ControlPlane).unwrap(), "if-none-match"),
        None
    );
}

#[test]
fn debug_output_hides_the_token_the_signature_and_the_document() {
    let mut d = Driver::new(false);
    let a = d.tick(0);
    let storage = d.answer(Party::Companion, ok(&signed_body(&doc(1), 1)));
    let published = d.answer(Party::Storage, ok(&doc(1)));
    for actions in [&a, &storage, &published] {
        assert_no_secrets(actions);
    }
    let debug = format!("{published:?} {:?}", d.m);
    assert!(debug.contains("document_bytes"), "{debug}");
    assert!(!debug.contains("svc-1"), "{debug}");
    assert!(format!("{a:?}").contains("<redacted>"));
}

#[test]
fn a_clock_going_backwards_does_not_stall_the_poller() {
    let mut d = Driver::serving_cp();
    d.tick(1_000_000);
    d.answer(Party::ControlPlane, HttpResponse::new(304, Vec::new()));
    // The wall clock jumps back to 10 ms: the next poll is still one interval away.
    assert!(dispatches(&d.tick(10)).is_empty());
    assert!(dispatches(&d.tick(5_009)).is_empty());
    assert!(dispatch_to(&d.tick(5_010), Party::ControlPlane).is_some());
}

#[test]
fn labels_are_stable() {
    assert_eq!(Stage::Verify.as_str(), "verify");
    assert_eq!(Mode::Fallback.as_str(), "fallback");
    assert_eq!(Source::ControlPlane.as_str(), "control_plane");
    assert_eq!(Party::Storage.as_str(), "storage");
}

#[test]
fn percent_encoding_and_quoting() {
    assert_eq!(percent_encode("3.4.1.0"), "3.4.1.0");
    assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
    assert_eq!(quote("a\nb"), "a b");
    assert_eq!(quote(&"x".repeat(300)).chars().count(), QUOTE_MAX + 1);
}

// ---- dispatch timing ----

#[test]
fn an_answer_never_dispatches_the_next_call_the_next_tick_does() {
    // Boot with the CP down: the failure makes the import due, the companion's answer makes
    // the storage call due; each starts at the following tick, not inside the answer.
    let mut d = Driver::new(true);
    let poll = dispatch_to(&d.m.on_tick(0), Party::ControlPlane).unwrap();
    let a = d.m.on_response(10, poll.call, down());
    assert_no_dispatch_in_response(&a);
    assert!(has_log(&a, LogLevel::Warn, "importing the fallback config"));
    let ask = dispatch_to(&d.m.on_tick(500), Party::Companion).expect("import at the next tick");
    let a = d.m.on_response(600, ask.call, ok(&signed_body(&doc(3), 9)));
    assert_no_dispatch_in_response(&a);
    assert_eq!(counts(&a), [(Stage::Companion, true)]);
    let a = d.m.on_tick(1_000);
    let get = dispatch_to(&a, Party::Storage).expect("storage call at the next tick");
    assert!(!get.tls, "http:// URL");
    assert!(dispatch_to(&a, Party::Companion).is_none());
    let a = d.m.on_response(1_100, get.call, ok(&doc(3)));
    assert_no_dispatch_in_response(&a);
    assert_eq!(published(&a).unwrap().revision, 9);
}

#[test]
fn a_refused_dispatch_reported_from_a_tick_is_retried_at_a_later_tick() {
    // The glue reports a dispatch the host refused as a transport failure, from the tick that
    // asked for it: the retry waits for its backoff and a tick.
    let mut d = Driver::new(false);
    let ask = dispatch_to(&d.m.on_tick(0), Party::Companion).unwrap();
    let a =
        d.m.on_response(0, ask.call, HttpResponse::transport_failure());
    assert_no_dispatch_in_response(&a);
    let due = d.import_due().expect("retry scheduled");
    assert!(due > 0);
    assert!(dispatches(&d.m.on_tick(due - 1)).is_empty());
    assert!(dispatch_to(&d.m.on_tick(due), Party::Companion).is_some());
}

#[test]
fn a_signed_url_waiting_for_its_tick_is_dropped_when_the_cp_comes_back() {
    let mut c = config_json(true);
    c["companion"]["timeout_ms"] = json!(10_000);
    let mut d = Driver::with_config(config(&c));
    let poll = dispatch_to(&d.m.on_tick(0), Party::ControlPlane).unwrap();
    d.m.on_response(0, poll.call, down());
    let ask = dispatch_to(&d.m.on_tick(100), Party::Companion).unwrap();
    // The next poll is in flight when the companion answers...
    let poll = dispatch_to(&d.m.on_tick(5_000), Party::ControlPlane).unwrap();
    let a =
        d.m.on_response(5_100, ask.call, ok(&signed_body(&doc(7), 7)));
    assert_no_dispatch_in_response(&a);
    // ...and the CP answers before the tick that would fetch the object.
    let a = d.m.on_response(5_200, poll.call, ok(&doc(1)));
    assert_no_dispatch_in_response(&a);
    assert_eq!(d.m.mode(), Mode::ControlPlane);
    assert!(
        dispatches(&d.m.on_tick(5_300)).is_empty(),
        "storage call dropped"
    );
}

#[test]
fn an_https_signed_url_asks_for_tls() {
    let mut d = Driver::new(false);
    d.tick(0);
    let mut body: Value = serde_json::from_slice(&signed_body(&doc(1), 1)).unwrap();
    body["url"] = json!(format!(
        "https://bucket.s3.amazonaws.com/kong/{VERSION}/config.json?{SIGNATURE}"
    ));
    let a = d.answer(Party::Companion, ok(&serde_json::to_vec(&body).unwrap()));
    let get = dispatch_to(&a, Party::Storage).unwrap();
    assert!(get.tls);
    assert_eq!(get.authority, "bucket.s3.amazonaws.com");
    assert_no_secrets(&a);
}
