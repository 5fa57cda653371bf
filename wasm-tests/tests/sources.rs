//! Sources of config: one behaviour suite run against every [`ConfigSource`] (the polled URL
//! against the mock CP; the Kong cluster source against the fake Kong control plane in both
//! mTLS modes; the Admin API pager against the fake Admin API), then what only the cluster protocol has: the handshake, pings, Kong's
//! version and plugin compatibility tables (`spec/02-integration/09-hybrid_mode/01-sync_spec.lua`),
//! certificate refusals, the ping timeout, the payload limit, and the export to SeaweedFS.

use fallback_companion::admin_api::{AdminApiArgs, AdminApiSource};
use fallback_companion::cluster::tls::MtlsMode;
use fallback_companion::cluster::{ClusterArgs, ClusterSettings, ClusterSource};
use fallback_companion::secret::Secret;
use fallback_companion::source::{ConfigSource, ControlPlane, Polled, Polling, SourceError};
use serde_json::{json, Value};
use std::time::Duration;
use wasm_tests::fake_admin_api::FakeAdminApi;
use wasm_tests::fake_kong_cp::{ClusterPki, FakeCpSettings, FakeKongCp, SyncStatus};
use wasm_tests::fixtures::document;
use wasm_tests::MockCp;

const WAIT: Duration = Duration::from_secs(10);

fn cluster_args(cp: &FakeKongCp, pair: &wasm_tests::fake_kong_cp::CertPair) -> ClusterArgs {
    ClusterArgs {
        cluster_control_plane: Some(cp.address()),
        cluster_mtls: match cp.pki().mode() {
            "shared" => MtlsMode::Shared,
            _ => MtlsMode::Pki,
        },
        cluster_cert: Some(pair.cert_pem.clone()),
        cluster_cert_key: Some(Secret::new(pair.key_pem.clone())),
        cluster_ca_cert: cp.pki().ca_pem().map(str::to_owned),
        cluster_server_name: Some("cp.cluster.test".into()),
        cluster_max_payload: 16 * 1024 * 1024,
        cluster_admin_url: None,
        cluster_admin_token: None,
        cluster_node_version: Some("3.10.0".into()),
        cluster_plugins: None,
    }
}

/// Settings tuned for tests: fast pings and reconnects.
fn fast(args: &ClusterArgs) -> ClusterSettings {
    let mut settings = args
        .settings("backup-node-1", "3.10.0.0")
        .expect("valid settings")
        .expect("a cluster is configured");
    settings.ping_interval = Duration::from_millis(200);
    settings.reconnect_initial = Duration::from_millis(100);
    settings.reconnect_max = Duration::from_millis(300);
    settings.connect_timeout = Duration::from_secs(3);
    settings
}

async fn cluster_cp(pki: ClusterPki) -> FakeKongCp {
    FakeKongCp::start(pki, FakeCpSettings::default()).await
}

fn cluster_source(cp: &FakeKongCp) -> ClusterSource {
    ClusterSource::new(fast(&cluster_args(cp, cp.pki().data_plane())))
}

/// A flat document (top-level lists, foreign keys as `{"id"}`), as every source can deliver
/// it: the Admin API lists entities this way. Three routes span two pages of the fake Admin API.
fn flat_document(marker: &str) -> Value {
    let service = "0a6c4f2e-3b1d-4c5e-8f70-9a8b7c6d5e4f";
    json!({
        "_format_version": "3.0",
        "services": [{"id": service, "name": "billing", "host": "billing.internal", "port": 8080, "protocol": "http", "tags": [marker]}],
        "routes": (1..=3).map(|i| json!({
            "id": format!("1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5{i}"),
            "name": format!("billing-{i}"),
            "paths": [format!("/billing/{i}")],
            "service": {"id": service},
        })).collect::<Vec<_>>(),
    })
}

/// The upstream a source reads from, driven the same way for every kind.
enum Upstream {
    Polled(MockCp),
    Cluster(FakeKongCp),
    AdminApi(FakeAdminApi),
}

impl Upstream {
    fn publish(&self, doc: &Value) {
        match self {
            Self::Polled(cp) => cp.set_document(doc),
            Self::Cluster(cp) => {
                cp.publish(doc.clone());
            }
            Self::AdminApi(api) => api.set_document(doc),
        }
    }

    fn source(&self) -> Box<dyn ConfigSource> {
        match self {
            Self::Polled(cp) => Box::new(Polling::new(
                ControlPlane::new(&cp.url(), Duration::from_secs(2)).unwrap(),
                Duration::from_millis(100),
            )),
            Self::Cluster(cp) => Box::new(cluster_source(cp)),
            Self::AdminApi(api) => Box::new(admin_source(&api.url(), None)),
        }
    }

    async fn stop(&mut self) {
        match self {
            Self::Polled(cp) => cp.stop().await,
            Self::Cluster(cp) => cp.stop(),
            Self::AdminApi(api) => api.stop(),
        }
    }

    async fn restart(&mut self) {
        match self {
            Self::Polled(cp) => cp.restart().await,
            Self::Cluster(cp) => cp.restart().await,
            Self::AdminApi(api) => api.restart().await,
        }
    }
}

/// The next document, skipping "unchanged"; panics on an error or a timeout.
async fn next_document(source: &mut dyn ConfigSource) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match source.next().await {
                Ok(Polled::Document(doc)) => return doc,
                Ok(Polled::NotModified) => {}
                Err(e) => panic!("{}: {e}", source.describe()),
            }
        }
    })
    .await
    .expect("a document in time")
}

/// What every source must do.
async fn behaviour_suite(mut upstream: Upstream) {
    let v1 = flat_document("v1");
    upstream.publish(&v1);
    let mut source = upstream.source();
    assert_eq!(next_document(source.as_mut()).await, v1);

    // Unchanged: no document for a while (the polled source says NotModified).
    let quiet = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match source.next().await {
                Ok(Polled::NotModified) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "nothing new was published: {quiet:?}");

    let v2 = flat_document("v2");
    upstream.publish(&v2);
    assert_eq!(next_document(source.as_mut()).await, v2);

    // The upstream goes away: the source says so, as an error naming it.
    upstream.stop().await;
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = source.next().await {
                return e;
            }
        }
    })
    .await
    .expect("an error once the upstream is gone");
    assert!(
        matches!(
            err,
            SourceError::Unreachable { .. } | SourceError::Refused { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&source.describe()), "{err}");

    // It comes back with a new document: the source recovers by itself.
    let v3 = flat_document("v3");
    upstream.publish(&v3);
    upstream.restart().await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Polled::Document(doc)) = source.next().await {
                return doc;
            }
        }
    })
    .await
    .expect("the source recovers");
    assert_eq!(got, v3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_polled_url() {
    behaviour_suite(Upstream::Polled(MockCp::start().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_kong_cluster_shared_mtls() {
    behaviour_suite(Upstream::Cluster(cluster_cp(ClusterPki::shared()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_kong_cluster_pki_mtls() {
    behaviour_suite(Upstream::Cluster(
        cluster_cp(ClusterPki::pki("cp.cluster.test")).await,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_admin_api_pager() {
    behaviour_suite(Upstream::AdminApi(FakeAdminApi::start(2).await)).await;
}

fn admin_source(url: &str, token: Option<&str>) -> AdminApiSource {
    AdminApiArgs {
        admin_api_url: Some(url.to_owned()),
        admin_api_token: token.map(Secret::new),
        konnect_control_plane_url: None,
        konnect_token: None,
    }
    .source(Duration::from_millis(100), Duration::from_secs(2))
    .unwrap()
    .expect("configured")
}

/// The dump pages with `size` and `next`, lists targets per upstream, skips endpoints the
/// Admin API does not have, and the document it assembles validates and routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_dump_pages_and_validates() {
    let api = FakeAdminApi::start(2).await;
    let mut doc = flat_document("v1");
    let upstream = "7c1e2d3f-4a5b-4c6d-8e7f-8091a2b3c4d5";
    doc["upstreams"] = json!([{"id": upstream, "name": "billing.internal"}]);
    doc["targets"] = json!((1..=3)
        .map(
            |i| json!({"id": format!("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6{i}"),
        "target": format!("10.0.0.{i}:8080"), "weight": 100, "upstream": {"id": upstream}})
        )
        .collect::<Vec<_>>());
    doc["consumers"] =
        json!([{"id": "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c", "username": "mobile"}]);
    doc["keyauth_credentials"] = json!([{"id": "6f5e4d3c-2b1a-4098-8f7e-6d5c4b3a2f1e", "key": "k-1",
        "consumer": {"id": "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c"}}]);
    api.set_document(&doc);
    api.require_token("rbac-token");

    // Without the token: refused, saying which setting to use.
    let err = admin_source(&api.url(), None).dump().await.unwrap_err();
    assert!(
        err.to_string().contains("FALLBACK_ADMIN_API_TOKEN"),
        "{err}"
    );

    let dumped = admin_source(&api.url(), Some("rbac-token"))
        .dump()
        .await
        .unwrap();
    assert_eq!(dumped, doc);
    let requests = api.requests();
    assert!(
        requests.contains(&"/routes?size=1000".to_owned()),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("/routes?offset=2")),
        "followed next: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("/upstreams/{upstream}/targets?offset=2"))),
        "{requests:?}"
    );
    let prepared = fallback_companion::exporter::prepare(&dumped).expect("the dump validates");
    assert!(prepared.warnings.is_empty(), "{:?}", prepared.warnings);

    // An endpoint the Admin API lacks (a plugin not installed) is skipped, not an error.
    api.remove_endpoint("/key-auths");
    let mut source = admin_source(&api.url(), Some("rbac-token"));
    let Ok(Polled::Document(without)) = source.next().await else {
        panic!("a dump without key-auths")
    };
    let mut expected = doc.clone();
    expected
        .as_object_mut()
        .unwrap()
        .remove("keyauth_credentials");
    assert_eq!(without, expected);
    // The same dump again is "unchanged".
    assert!(matches!(source.next().await, Ok(Polled::NotModified)));
}

/// Konnect: core-entities paged like the Admin API, behind a bearer token; an unchanged
/// expected-config-hash costs one request per poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn konnect_polls_the_expected_config_hash_and_dumps_only_on_change() {
    let cp_id = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
    let api = FakeAdminApi::start_konnect(2, cp_id, "kpat_test").await;
    let v1 = flat_document("v1");
    api.set_document(&v1);
    let args = |token: &str| AdminApiArgs {
        admin_api_url: None,
        admin_api_token: None,
        konnect_control_plane_url: Some(format!("{}/v2/control-planes/{cp_id}", api.url())),
        konnect_token: Some(Secret::new(token)),
    };
    let source = |token: &str| {
        args(token)
            .source(Duration::from_millis(50), Duration::from_secs(2))
            .unwrap()
            .unwrap()
    };
    let err = source("wrong").next().await.unwrap_err();
    assert!(err.to_string().contains("FALLBACK_KONNECT_TOKEN"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    let mut konnect = source("kpat_test");
    let Ok(Polled::Document(got)) = konnect.next().await else {
        panic!("a first dump")
    };
    assert_eq!(got, v1);
    let prefix = format!("/v2/control-planes/{cp_id}/core-entities");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with(&format!("{prefix}/routes?offset=2"))),
        "{:?}",
        api.requests()
    );

    let before = api.requests().len();
    assert!(matches!(konnect.next().await, Ok(Polled::NotModified)));
    let requests = api.requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "one request: {:?}",
        &requests[before..]
    );
    assert!(
        requests[before].ends_with("/expected-config-hash?"),
        "{:?}",
        &requests[before..]
    );

    let v2 = flat_document("v2");
    api.set_document(&v2);
    let Ok(Polled::Document(got)) = konnect.next().await else {
        panic!("a new dump")
    };
    assert_eq!(got, v2);

    // Without a token, start-up says which setting is missing.
    let mut no_token = args("x");
    no_token.konnect_token = None;
    let err = no_token
        .source(Duration::from_secs(1), Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(err.to_string().contains("FALLBACK_KONNECT_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_pings_are_what_kong_expects() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let mut source = cluster_source(&cp);
    // No config yet: the source connects and pings with 32 zeros.
    let _ = tokio::time::timeout(Duration::from_millis(700), source.next()).await;
    let record = cp.records().pop().expect("a connection");
    let query: Vec<(String, String)> = url::form_urlencoded::parse(record.query.as_bytes())
        .into_owned()
        .collect();
    let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["node_id", "node_hostname", "node_version"]);
    assert_eq!(query[0].1.len(), 36, "a UUID: {query:?}");
    assert_eq!(query[1].1, "backup-node-1");
    assert_eq!(query[2].1, "3.10.0");
    let info = record.basic_info.expect("basic_info");
    assert_eq!(info["type"], "basic_info");
    assert!(info["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == &json!({"name": "key-auth"})));
    assert!(
        !record.pings.is_empty(),
        "pinged at once, as Kong's data planes do"
    );
    assert!(record
        .pings
        .iter()
        .all(|p| p == b"00000000000000000000000000000000"));

    // A config: the next pings carry its hash, as Kong computes it.
    let hash = cp.publish(document("v1"));
    assert_eq!(next_document(&mut source).await, document("v1"));
    assert_eq!(source.current_hash(), Some(hash.as_str()));
    // The control plane answers the next ping without a push: the config held is confirmed
    // current (what the exporter renews the export time from).
    let confirmed = tokio::time::timeout(Duration::from_millis(500), source.next()).await;
    assert!(
        matches!(confirmed, Ok(Ok(Polled::NotModified))),
        "a pong confirms the config held: {confirmed:?}"
    );
    let record = cp.records().pop().unwrap();
    assert_eq!(record.pings.last().unwrap(), hash.as_bytes());
    assert_eq!(record.sync_status, SyncStatus::Normal);
    assert_eq!(record.closed_because, None);
}

/// Kong's `CP/DP #version check` cases, for the node version this node announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kongs_version_table() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    cp.publish(document("v1"));
    // CP 3.10.0. Allowed: older minor, older patch, newer patch, a suffix.
    for allowed in [
        "3.0.0",
        "3.10.0",
        "3.10.1000",
        "3.10.0-enterprise-version",
        "3.4.1.0",
    ] {
        let mut args = cluster_args(&cp, cp.pki().data_plane());
        args.cluster_node_version = Some(allowed.into());
        let mut source = ClusterSource::new(fast(&args));
        assert_eq!(
            next_document(&mut source).await,
            document("v1"),
            "{allowed}"
        );
    }
    // Blocked: another major, a newer minor. The refusal says what to change.
    for blocked in ["1.0.0", "3.1000.0"] {
        let mut args = cluster_args(&cp, cp.pki().data_plane());
        args.cluster_node_version = Some(blocked.into());
        let mut source = ClusterSource::new(fast(&args));
        let err = tokio::time::timeout(WAIT, source.next())
            .await
            .expect("an answer")
            .expect_err(blocked);
        let text = err.to_string();
        assert!(
            matches!(err, SourceError::Refused { .. }),
            "{blocked}: {text}"
        );
        assert!(
            text.contains(blocked) && text.contains("FALLBACK_CLUSTER_NODE_VERSION"),
            "{text}"
        );
        let record = cp.records().pop().unwrap();
        assert_eq!(
            record.sync_status,
            SyncStatus::KongVersionIncompatible,
            "{blocked}"
        );
    }
}

/// Kong's plugin cases: the config is withheld (nothing arrives) unless the plugins it uses
/// are announced with compatible versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kongs_plugin_table() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let mut config = document("v1");
    config["plugins"] = json!([{"name": "key-auth", "config": {}}]);
    cp.publish(config.clone());
    let cases: [(&str, Option<SyncStatus>); 7] = [
        // Allowed: same, older major.0.0 on the DP, newer patch, no version, superset.
        ("key-auth:3.10.0", None),
        ("key-auth:3.0.0", None),
        ("key-auth:3.10.1000", None),
        ("key-auth", None),
        ("banana:1.1.1,key-auth:3.10.0,pineapple:1.1.2", None),
        // Blocked: missing, another major.
        (
            "banana-plugin:1.0.0",
            Some(SyncStatus::PluginSetIncompatible),
        ),
        (
            "key-auth:1.0.0",
            Some(SyncStatus::PluginVersionIncompatible),
        ),
    ];
    for (plugins, blocked) in cases {
        let mut args = cluster_args(&cp, cp.pki().data_plane());
        args.cluster_plugins = Some(plugins.into());
        let mut source = ClusterSource::new(fast(&args));
        match blocked {
            None => assert_eq!(next_document(&mut source).await, config, "{plugins}"),
            Some(status) => {
                let got = tokio::time::timeout(Duration::from_secs(1), source.next()).await;
                assert!(
                    got.is_err(),
                    "{plugins}: the config is withheld, got {got:?}"
                );
                assert!(source.is_connected(), "{plugins}: withheld, not refused");
                assert_eq!(cp.records().pop().unwrap().sync_status, status, "{plugins}");
            }
        }
    }
    // A newer minor on the DP is blocked too.
    let mut args = cluster_args(&cp, cp.pki().data_plane());
    args.cluster_plugins = Some("key-auth:3.1000.0".into());
    let mut source = ClusterSource::new(fast(&args));
    assert!(tokio::time::timeout(Duration::from_secs(1), source.next())
        .await
        .is_err());
    assert_eq!(
        cp.records().pop().unwrap().sync_status,
        SyncStatus::PluginVersionIncompatible
    );
}

async fn refusal(source: &mut ClusterSource) -> String {
    let err = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("an answer")
        .expect_err("refused");
    assert!(matches!(err, SourceError::Refused { .. }), "{err}");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_refusals_say_what_to_change() {
    // shared: another certificate than the cluster's. The CP closes the connection (444).
    let cp = cluster_cp(ClusterPki::shared()).await;
    cp.publish(document("v1"));
    let ClusterPki::Shared(stranger) = ClusterPki::shared() else {
        unreachable!()
    };
    let mut source = ClusterSource::new(fast(&cluster_args(&cp, &stranger)));
    let text = refusal(&mut source).await;
    // Our side notices first: the CP's certificate is not the one configured.
    assert!(text.contains("KONG_CLUSTER_CERT"), "{text}");
    assert!(cp.records().is_empty());

    // pki: a data-plane certificate from another CA; the CP's TLS refuses it.
    let cp = cluster_cp(ClusterPki::pki("cp.cluster.test")).await;
    cp.publish(document("v1"));
    let other = ClusterPki::pki("cp.cluster.test");
    let mut source = ClusterSource::new(fast(&cluster_args(&cp, other.data_plane())));
    let text = refusal(&mut source).await;
    assert!(text.contains("cluster_ca_cert"), "{text}");

    // pki: the CP's certificate does not carry the server name expected.
    let mut args = cluster_args(&cp, cp.pki().data_plane());
    args.cluster_server_name = Some("other.cluster.test".into());
    let mut source = ClusterSource::new(fast(&args));
    let text = refusal(&mut source).await;
    assert!(text.contains("KONG_CLUSTER_SERVER_NAME"), "{text}");
    assert!(cp.records().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_data_plane_is_dropped_and_reconnects() {
    let settings = FakeCpSettings {
        ping_wait: Duration::from_millis(600),
        ..FakeCpSettings::default()
    };
    let cp = FakeKongCp::start(ClusterPki::shared(), settings).await;
    cp.publish(document("v1"));
    // Pinging every 200 ms keeps the connection for longer than the CP's wait.
    let mut source = cluster_source(&cp);
    next_document(&mut source).await;
    let _ = tokio::time::timeout(Duration::from_millis(1500), source.next()).await;
    assert_eq!(cp.records().len(), 1);
    assert_eq!(cp.records()[0].closed_because, None);

    // Pinging every 10 s does not: the CP drops it, and the source reconnects.
    let mut args = fast(&cluster_args(&cp, cp.pki().data_plane()));
    args.ping_interval = Duration::from_secs(10);
    let mut source = ClusterSource::new(args);
    next_document(&mut source).await;
    // The pong to the ping sent at once after the config confirms it; then nothing more.
    let err = tokio::time::timeout(WAIT, async {
        loop {
            match source.next().await {
                Ok(Polled::NotModified) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("dropped");
    assert!(err.is_err(), "{err:?}");
    let dropped = cp.records()[1].closed_because.clone();
    assert!(dropped.unwrap().contains("did not receive ping frame"));
    // After the reconnection the same config is "unchanged".
    let again = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("reconnected");
    assert!(matches!(again, Ok(Polled::NotModified)), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_payload_limit_are_refused_with_the_setting_to_raise() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let mut big = document("v1");
    big["services"][0]["tags"] = json!((0..2000)
        .map(|i| format!("tag-{i}-{}", "x".repeat(20)))
        .collect::<Vec<_>>());
    cp.publish(big);
    let mut args = cluster_args(&cp, cp.pki().data_plane());
    args.cluster_max_payload = 2048;
    let mut source = ClusterSource::new(fast(&args));
    let err = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("answer")
        .expect_err("too big");
    assert!(
        err.to_string().contains("KONG_CLUSTER_MAX_PAYLOAD"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_plugins_come_from_the_admin_api_when_it_answers() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let mut config = document("v1");
    config["plugins"] = json!([{"name": "my-custom", "config": {}}]);
    let mut settings = FakeCpSettings::default();
    settings.plugins.push(("my-custom".into(), "0.3.0".into()));
    let cp = {
        drop(cp);
        FakeKongCp::start(ClusterPki::shared(), settings).await
    };
    cp.publish(config.clone());
    let admin = MockCp::start().await;
    admin.set_document(
        &json!({"version": "3.10.0", "plugins": {"available_on_server": {
        "key-auth": {"version": "3.10.0", "priority": 1250},
        "my-custom": {"version": "0.3.0", "priority": 10}}}}),
    );
    let mut args = cluster_args(&cp, cp.pki().data_plane());
    // The configured version would be refused; the Admin API's is used instead.
    args.cluster_node_version = Some("3.1000.0".into());
    args.cluster_admin_url = Some(admin.url());
    let mut source = ClusterSource::new(fast(&args));
    assert_eq!(next_document(&mut source).await, config);
    let record = cp.records().pop().unwrap();
    assert_eq!(record.node_version, "3.10.0");
    assert!(record.basic_info.unwrap()["plugins"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "my-custom", "version": "0.3.0"})));
    assert_eq!(admin.requests()[0].path, "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_name_the_setting() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let pair = cp.pki().data_plane().clone();
    let check = |f: &dyn Fn(&mut ClusterArgs), needle: &str| {
        let mut args = cluster_args(&cp, &pair);
        f(&mut args);
        let err = args.settings("n", "0.1.0").unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    check(&|a| a.cluster_cert = None, "KONG_CLUSTER_CERT");
    check(&|a| a.cluster_cert_key = None, "KONG_CLUSTER_CERT_KEY");
    check(
        &|a| a.cluster_control_plane = Some("kong-cp".into()),
        "host:port",
    );
    check(
        &|a| a.cluster_node_version = None,
        "FALLBACK_CLUSTER_NODE_VERSION",
    );
    check(
        &|a| a.cluster_cert = Some("/nonexistent.pem".into()),
        "/nonexistent.pem",
    );
    check(
        &|a| {
            a.cluster_mtls = MtlsMode::Pki;
            a.cluster_ca_cert = None;
        },
        "KONG_CLUSTER_CA_CERT",
    );
    // The key is never shown.
    let mut args = cluster_args(&cp, &pair);
    args.cluster_cert_key = Some(Secret::new(
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    ));
    let err = args.settings("n", "3.4.1").unwrap_err().to_string();
    assert!(
        err.contains("KONG_CLUSTER_CERT_KEY") && !err.contains("c2VjcmV0"),
        "{err}"
    );
}

/// End to end with the real binary: the fake Kong CP pushes, the companion (export and signer
/// roles) exports to SeaweedFS and serves the live config on `GET /v1/config`; with the CP
/// gone the stored object stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_kong_cp_pushes_companion_exports_to_seaweedfs_and_serves_v1_config() {
    use fallback_core::digest::{canonical_json, Sha256Digest};
    use wasm_tests::http::request;
    use wasm_tests::{CompanionProcess, SeaweedFs};

    let seaweed = SeaweedFs::start().await;
    let mut cp = cluster_cp(ClusterPki::pki("localhost")).await;
    let v1 = document("v1");
    cp.publish(v1.clone());
    let ClusterPki::Pki { ca, data_plane, .. } = cp.pki().clone() else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let env = vec![
        (
            "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
            format!("s3://{}/kong", seaweed.bucket()),
        ),
        ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", "on".into()),
        ("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "0".into()),
        ("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", seaweed.writer().access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", seaweed.writer().secret_key.clone()),
        ("FALLBACK_CONFIG_VERSION", "3.10.0.0".into()),
        ("FALLBACK_NODE_ID", "backup-e2e".into()),
        ("FALLBACK_SIGNER_TOKENS", "filter-token".into()),
        (
            "KONG_CLUSTER_CONTROL_PLANE",
            format!("localhost:{}", cp.address().rsplit(':').next().unwrap()),
        ),
        ("KONG_CLUSTER_MTLS", "pki".into()),
        ("KONG_CLUSTER_CERT", write("dp.crt", &data_plane.cert_pem)),
        (
            "KONG_CLUSTER_CERT_KEY",
            write("dp.key", &data_plane.key_pem),
        ),
        ("KONG_CLUSTER_CA_CERT", write("ca.crt", &ca.cert_pem)),
    ];
    let mut companion = CompanionProcess::start(&env).await;
    let key = "kong/3.10.0.0/config.json";
    let stored = |expected: Value| {
        let seaweed = &seaweed;
        async move {
            let want = canonical_json(&expected);
            for _ in 0..200 {
                if seaweed.raw_object(key).await.as_deref() == Some(&want[..]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{key} never held {expected}");
        }
    };
    stored(v1.clone()).await;

    // The live config, with the signer's tokens, ETag and 304.
    let live = format!("{}/v1/config", companion.url());
    let auth = [("authorization", "Bearer filter-token")];
    let r = request("GET", &live, &[], "").await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request("GET", &live, &auth, "").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), v1);
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(
        etag,
        format!("\"{}\"", Sha256Digest::of(&canonical_json(&v1)).to_hex())
    );
    let r = request("GET", &live, &[auth[0], ("if-none-match", &etag)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 304);

    // A push: exported and served.
    let v2 = document("v2");
    cp.publish(v2.clone());
    stored(v2.clone()).await;
    let r = request("GET", &live, &[auth[0], ("if-none-match", &etag)], "")
        .await
        .unwrap();
    assert_eq!((r.status, r.json()), (200, v2.clone()));

    // The CP goes away: the companion keeps the last config, storage keeps the export.
    cp.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = request("GET", &live, &auth, "").await.unwrap();
    assert_eq!((r.status, r.json()), (200, v2.clone()));
    companion.stop().await;
    assert_eq!(seaweed.raw_object(key).await.unwrap(), canonical_json(&v2));
    let log = companion.log();
    assert!(log.contains("connected to the Kong control plane"), "{log}");
    assert!(
        !log.contains(&data_plane.key_pem[40..80]),
        "the key never shows in logs"
    );
}

/// `doctor`, the real binary: for the cluster source, whether it connects and whether the
/// control plane would send this companion its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_the_cluster_connects_and_sends_the_config() {
    let cp = cluster_cp(ClusterPki::shared()).await;
    let mut config = document("v1");
    config["plugins"] = json!([{"name": "key-auth", "config": {}}]);
    cp.publish(config);
    let dir = tempfile::tempdir().unwrap();
    let pair = cp.pki().data_plane().clone();
    let ClusterPki::Shared(stranger) = ClusterPki::shared() else {
        unreachable!()
    };
    let doctor = |extra: Vec<(&'static str, String)>| {
        let mut command = std::process::Command::new(wasm_tests::companion_binary());
        command
            .args(["doctor", "--cluster-wait", "2s"])
            .env_clear()
            .env(
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                format!("file://{}/store", dir.path().display()),
            )
            .env("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on")
            .env("FALLBACK_NODE_ID", "doctor-node")
            .env("FALLBACK_CLUSTER_NODE_VERSION", "3.10.0")
            .env("KONG_CLUSTER_CONTROL_PLANE", cp.address())
            .env("KONG_CLUSTER_CERT", &pair.cert_pem)
            .env("KONG_CLUSTER_CERT_KEY", &pair.key_pem);
        for (k, v) in extra {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        (output.status.code(), stdout)
    };
    let line = |report: &str, check: &str| -> String {
        report
            .lines()
            .find(|l| l[7..].starts_with(&format!("{check}:")))
            .unwrap_or_else(|| panic!("no {check} line in\n{report}"))
            .to_owned()
    };

    let (code, report) = doctor(vec![]);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        line(&report, "cluster connection").starts_with("[ ok ]"),
        "{report}"
    );
    let config_line = line(&report, "cluster config");
    assert!(
        config_line.starts_with("[ ok ]") && config_line.contains("1 plugins"),
        "{report}"
    );

    // Withheld: the config uses key-auth, which this node does not announce.
    let (code, report) = doctor(vec![("FALLBACK_CLUSTER_PLUGINS", "banana:1.0.0".into())]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "cluster connection").starts_with("[ ok ]"),
        "{report}"
    );
    let config_line = line(&report, "cluster config");
    assert!(
        config_line.starts_with("[FAIL]") && config_line.contains("FALLBACK_CLUSTER_PLUGINS"),
        "{report}"
    );

    // Refused: a newer minor version than the control plane's.
    let (code, report) = doctor(vec![("FALLBACK_CLUSTER_NODE_VERSION", "3.11.0".into())]);
    assert_eq!(code, Some(1), "{report}");
    let config_line = line(&report, "cluster config");
    assert!(
        config_line.starts_with("[FAIL]") && config_line.contains("3.11.0"),
        "{report}"
    );

    // Not connected: another certificate than the cluster's.
    let (code, report) = doctor(vec![
        ("KONG_CLUSTER_CERT", stranger.cert_pem.clone()),
        ("KONG_CLUSTER_CERT_KEY", stranger.key_pem.clone()),
    ]);
    assert_eq!(code, Some(1), "{report}");
    let connection = line(&report, "cluster connection");
    assert!(
        connection.starts_with("[FAIL]") && connection.contains("KONG_CLUSTER_CERT"),
        "{report}"
    );
    assert!(!report.contains(&stranger.key_pem[40..80]), "{report}");
}

/// The fake's own rules, with a hand-driven data plane: a ping whose payload is not the
/// 32-character hash ends the connection, and an upgrade without node_version gets 400, as
/// Kong's control plane does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_cp_enforces_the_32_byte_ping_and_the_upgrade_query() {
    use fallback_companion::cluster::protocol::basic_info_frame;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let cp = cluster_cp(ClusterPki::shared()).await;
    cp.publish(document("v1"));
    let settings = fast(&cluster_args(&cp, cp.pki().data_plane()));
    let connect = |query: &'static str| {
        let settings = settings.clone();
        let address = cp.address();
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("kong_clustering").unwrap();
            let tls = tokio_rustls::TlsConnector::from(settings.tls.clone())
                .connect(name, tcp)
                .await
                .unwrap();
            tokio_tungstenite::client_async(format!("wss://{address}/v1/outlet?{query}"), tls).await
        }
    };

    let refused = connect("node_id=x&node_hostname=h").await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused}");

    let (mut ws, _) = connect("node_id=x&node_hostname=h&node_version=3.10.0")
        .await
        .unwrap();
    ws.send(Message::Binary(basic_info_frame(&settings.node).into()))
        .await
        .unwrap();
    ws.send(Message::Ping(b"short".to_vec().into()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let closed = cp.records().pop().and_then(|r| r.closed_because);
        if let Some(why) = closed {
            assert!(why.contains("invalid hash: 'short'"), "{why}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
