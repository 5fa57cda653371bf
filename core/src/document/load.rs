//! From a JSON value to a [`ConfigDocument`]: collect every entity from wherever Kong allows it
//! to appear, read its fields, then resolve references and check document-wide uniqueness.
//!
//! Entities are collected first so that flattened indices are known before any reference is
//! resolved: a top-level plugin may name a route that is nested in a service.

use super::fields::{type_error, Fields, Sink};
use super::read;
use super::refs::{link, Index, Keys};
use super::{ids, migrate};
use super::{ConfigDocument, Loaded, Problem, ValidationErrors};
use crate::pace::{drop_all, Pace};
use serde_json::{Map, Value};

const KINDS: [&str; 9] = [
    "services",
    "routes",
    "consumers",
    "plugins",
    "upstreams",
    "targets",
    "keyauth_credentials",
    "basicauth_credentials",
    "acls",
];

/// Kong entity kinds that may legitimately appear in an export but that Fallback does not
/// enforce; anything else unknown is more likely a typo, and the warning says so.
const KONG_KINDS_NOT_SUPPORTED: &[&str] = &[
    "certificates",
    "ca_certificates",
    "snis",
    "vaults",
    "jwt_secrets",
    "hmacauth_credentials",
    "oauth2_credentials",
    "mtls_auth_credentials",
    "consumer_groups",
    "consumer_group_consumers",
    "consumer_group_plugins",
    "keys",
    "key_sets",
    "parameters",
    "filter_chains",
    "partials",
    "licenses",
    "workspaces",
    "degraphql_routes",
    "graphql_ratelimiting_cost_decorations",
    "rbac_users",
    "rbac_roles",
    "event_hooks",
];

/// Loads `root`, yielding to `pace` once per entity.
pub(super) async fn load(root: &Value, pace: &Pace<'_>) -> Result<Loaded, ValidationErrors> {
    let Some(root) = root.as_object() else {
        return Err(ValidationErrors {
            problems: vec![Problem::new(
                "$",
                type_error("a JSON object at the top level", root),
            )],
        });
    };
    let mut sink = Sink::default();
    let format_version = check_format_version(root, &mut sink);
    // Kong 3.x migrates older files' route paths before anything else reads them.
    let migrated;
    let root = if matches!(format_version.as_str(), "1.1" | "2.1") {
        migrated = migrate::route_paths(root, &format_version, &mut sink);
        &migrated
    } else {
        root
    };
    warn_unsupported_kinds(root, &mut sink);

    let raw = collect(root, &mut sink, pace).await;
    let document = build(&raw, format_version, &mut sink, pace).await;
    raw.dismantle(pace).await;

    if sink.errors.is_empty() {
        Ok(Loaded {
            document,
            warnings: sink.warnings,
        })
    } else {
        Err(ValidationErrors {
            problems: sink.errors,
        })
    }
}

/// Kong 3.x's `_format_version`: one of "1.1", "2.1" and "3.0"
/// (`kong/db/schema/others/declarative_config.lua`, `one_of = {"1.1", "2.1", "3.0"}`).
fn check_format_version(root: &Map<String, Value>, sink: &mut Sink) -> String {
    const PATH: &str = "_format_version";
    const ACCEPTED: &str =
        "Kong 3.x reads \"3.0\", and \"1.1\" or \"2.1\" (route paths migrated on load)";
    let Some(value) = root.get(PATH).filter(|v| !v.is_null()) else {
        sink.error(
            PATH,
            format!("required; {ACCEPTED}: add \"_format_version\": \"3.0\""),
        );
        return String::new();
    };
    let Some(version) = value.as_str() else {
        sink.error(PATH, type_error("a string such as \"3.0\"", value));
        return String::new();
    };
    if !matches!(version, "1.1" | "2.1" | "3.0") {
        sink.error(
            PATH,
            format!("unsupported format version {version:?}; {ACCEPTED}"),
        );
    }
    version.to_owned()
}

fn warn_unsupported_kinds(root: &Map<String, Value>, sink: &mut Sink) {
    for key in root.keys() {
        if key.starts_with('_') || KINDS.contains(&key.as_str()) {
            continue;
        }
        if KONG_KINDS_NOT_SUPPORTED.contains(&key.as_str()) {
            sink.warn(
                key.as_str(),
                "entity kind not supported by Fallback; ignored (these entities are not enforced \
                 while running on the fallback config)",
            );
        } else {
            sink.warn(
                key.as_str(),
                "unknown entity kind; ignored (is the name misspelt?)",
            );
        }
    }
}

/// Which entity an entity was nested under, by index into the parent kind's flattened list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parent {
    None,
    Service(usize),
    Route(usize),
    Consumer(usize),
    Upstream(usize),
}

impl Parent {
    /// The service this entity is nested under.
    pub(super) fn service(self) -> Option<usize> {
        match self {
            Parent::Service(i) => Some(i),
            _ => None,
        }
    }

    /// The route this entity is nested under.
    pub(super) fn route(self) -> Option<usize> {
        match self {
            Parent::Route(i) => Some(i),
            _ => None,
        }
    }

    /// The consumer this entity is nested under.
    pub(super) fn consumer(self) -> Option<usize> {
        match self {
            Parent::Consumer(i) => Some(i),
            _ => None,
        }
    }

    /// The upstream this entity is nested under.
    pub(super) fn upstream(self) -> Option<usize> {
        match self {
            Parent::Upstream(i) => Some(i),
            _ => None,
        }
    }
}

/// An entity's JSON object before its fields are read.
pub(super) struct Raw<'a> {
    pub(super) path: String,
    pub(super) map: &'a Map<String, Value>,
    pub(super) parent: Parent,
}

impl Raw<'_> {
    pub(super) fn fields(&self) -> Fields<'_> {
        Fields {
            path: &self.path,
            map: self.map,
        }
    }
}

impl RawDocument<'_> {
    /// Frees the entities' paths a step at a time.
    async fn dismantle(self, pace: &Pace<'_>) {
        for kind in [
            self.services,
            self.routes,
            self.consumers,
            self.plugins,
            self.upstreams,
            self.targets,
            self.keyauth_credentials,
            self.basicauth_credentials,
            self.acls,
        ] {
            drop_all(kind, pace).await;
        }
    }
}

/// Every entity object of the input, per kind, in final (flattened) order.
#[derive(Default)]
pub(super) struct RawDocument<'a> {
    pub(super) services: Vec<Raw<'a>>,
    pub(super) routes: Vec<Raw<'a>>,
    pub(super) consumers: Vec<Raw<'a>>,
    pub(super) plugins: Vec<Raw<'a>>,
    pub(super) upstreams: Vec<Raw<'a>>,
    pub(super) targets: Vec<Raw<'a>>,
    pub(super) keyauth_credentials: Vec<Raw<'a>>,
    pub(super) basicauth_credentials: Vec<Raw<'a>>,
    pub(super) acls: Vec<Raw<'a>>,
}

/// Appends the objects of the array `value` (absent or `null`: nothing) found at `path`.
async fn entries<'a>(
    value: Option<&'a Value>,
    path: &str,
    parent: Parent,
    sink: &mut Sink,
    out: &mut Vec<Raw<'a>>,
    pace: &Pace<'_>,
) {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(items) = value.as_array() else {
        sink.error(path, type_error("an array", value));
        return;
    };
    for (i, item) in items.iter().enumerate() {
        pace.step().await;
        let item_path = format!("{path}[{i}]");
        match item.as_object() {
            Some(map) => out.push(Raw {
                path: item_path,
                map,
                parent,
            }),
            None => sink.error(item_path, type_error("an object", item)),
        }
    }
}

/// Appends the children listed under `key` of each parent.
async fn nested<'a>(
    parents: &[Raw<'a>],
    key: &str,
    parent: fn(usize) -> Parent,
    sink: &mut Sink,
    out: &mut Vec<Raw<'a>>,
    pace: &Pace<'_>,
) {
    for (i, p) in parents.iter().enumerate() {
        // Most parents have none of the kind: the step is for the lookup.
        pace.step().await;
        let Some(children) = p.map.get(key) else {
            continue;
        };
        let path = format!("{}.{key}", p.path);
        entries(Some(children), &path, parent(i), sink, out, pace).await;
    }
}

async fn collect<'a>(
    root: &'a Map<String, Value>,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> RawDocument<'a> {
    let mut raw = RawDocument::default();
    let top = |kind: &str| root.get(kind);
    entries(
        top("services"),
        "services",
        Parent::None,
        sink,
        &mut raw.services,
        pace,
    )
    .await;
    entries(
        top("routes"),
        "routes",
        Parent::None,
        sink,
        &mut raw.routes,
        pace,
    )
    .await;
    nested(
        &raw.services,
        "routes",
        Parent::Service,
        sink,
        &mut raw.routes,
        pace,
    )
    .await;
    entries(
        top("consumers"),
        "consumers",
        Parent::None,
        sink,
        &mut raw.consumers,
        pace,
    )
    .await;
    entries(
        top("upstreams"),
        "upstreams",
        Parent::None,
        sink,
        &mut raw.upstreams,
        pace,
    )
    .await;
    entries(
        top("targets"),
        "targets",
        Parent::None,
        sink,
        &mut raw.targets,
        pace,
    )
    .await;
    nested(
        &raw.upstreams,
        "targets",
        Parent::Upstream,
        sink,
        &mut raw.targets,
        pace,
    )
    .await;
    entries(
        top("keyauth_credentials"),
        "keyauth_credentials",
        Parent::None,
        sink,
        &mut raw.keyauth_credentials,
        pace,
    )
    .await;
    nested(
        &raw.consumers,
        "keyauth_credentials",
        Parent::Consumer,
        sink,
        &mut raw.keyauth_credentials,
        pace,
    )
    .await;
    entries(
        top("basicauth_credentials"),
        "basicauth_credentials",
        Parent::None,
        sink,
        &mut raw.basicauth_credentials,
        pace,
    )
    .await;
    nested(
        &raw.consumers,
        "basicauth_credentials",
        Parent::Consumer,
        sink,
        &mut raw.basicauth_credentials,
        pace,
    )
    .await;
    entries(top("acls"), "acls", Parent::None, sink, &mut raw.acls, pace).await;
    nested(
        &raw.consumers,
        "acls",
        Parent::Consumer,
        sink,
        &mut raw.acls,
        pace,
    )
    .await;
    entries(
        top("plugins"),
        "plugins",
        Parent::None,
        sink,
        &mut raw.plugins,
        pace,
    )
    .await;
    nested(
        &raw.services,
        "plugins",
        Parent::Service,
        sink,
        &mut raw.plugins,
        pace,
    )
    .await;
    nested(
        &raw.routes,
        "plugins",
        Parent::Route,
        sink,
        &mut raw.plugins,
        pace,
    )
    .await;
    nested(
        &raw.consumers,
        "plugins",
        Parent::Consumer,
        sink,
        &mut raw.plugins,
        pace,
    )
    .await;
    raw
}

/// Reads each of `raws` with `read`, a step each.
async fn read_each<T>(
    raws: &[Raw<'_>],
    read: fn(&Raw<'_>, &mut Sink) -> T,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(raws.len());
    for r in raws {
        pace.step().await;
        out.push(read(r, sink));
    }
    out
}

async fn build(
    raw: &RawDocument<'_>,
    format_version: String,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> ConfigDocument {
    let services = read_each(&raw.services, read::service, sink, pace).await;
    let service_index = Index::new(
        "service",
        "name",
        services.iter().map(|s| Keys {
            path: &s.path,
            id: s.id.given_id(),
            name: s.name.as_deref(),
            custom_id: None,
        }),
        sink,
        pace,
    )
    .await;

    let mut routes = Vec::with_capacity(raw.routes.len());
    for r in &raw.routes {
        pace.step().await;
        let (mut route, service_ref) = read::route(r, sink);
        route.service = link(
            service_ref.as_ref(),
            r.parent.service(),
            &service_index,
            sink,
        );
        routes.push(route);
    }
    let route_index = Index::new(
        "route",
        "name",
        routes.iter().map(|r| Keys {
            path: &r.path,
            id: r.id.given_id(),
            name: r.name.as_deref(),
            custom_id: None,
        }),
        sink,
        pace,
    )
    .await;

    let consumers = read_each(&raw.consumers, read::consumer, sink, pace).await;
    let consumer_index = Index::new(
        "consumer",
        "username",
        consumers.iter().map(|c| Keys {
            path: &c.path,
            id: c.id.given_id(),
            name: c.username.as_deref(),
            custom_id: c.custom_id.as_deref(),
        }),
        sink,
        pace,
    )
    .await;

    let upstreams = read_each(&raw.upstreams, read::upstream, sink, pace).await;
    let upstream_index = Index::new(
        "upstream",
        "name",
        upstreams.iter().map(|u| Keys {
            path: &u.path,
            id: u.id.given_id(),
            name: Some(u.name.as_str()).filter(|n| !n.is_empty()),
            custom_id: None,
        }),
        sink,
        pace,
    )
    .await;

    let targets = read::targets(&raw.targets, &upstream_index, sink, pace).await;
    let keyauth_credentials =
        read::keyauth_credentials(&raw.keyauth_credentials, &consumer_index, sink, pace).await;
    let basicauth_credentials =
        read::basicauth_credentials(&raw.basicauth_credentials, &consumer_index, sink, pace).await;
    let acls = read::acls(&raw.acls, &consumer_index, sink, pace).await;
    let plugins = read::plugins(
        &raw.plugins,
        &service_index,
        &route_index,
        &consumer_index,
        sink,
        pace,
    )
    .await;

    let mut document = ConfigDocument {
        format_version,
        services,
        routes,
        consumers,
        plugins,
        upstreams,
        targets,
        keyauth_credentials,
        basicauth_credentials,
        acls,
    };
    ids::assign(raw, &mut document, sink, pace).await;
    for index in [service_index, route_index, consumer_index, upstream_index] {
        index.dismantle(pace).await;
    }
    document
}
