//! Reading each entity kind's fields: types, ranges, enum values, Kong's defaults, and the
//! uniqueness rules that belong to one kind only (keys, targets per upstream, plugin scopes).

use super::address::{check_host, parse_url, protocol_named, split_host_port};
use super::entities::{
    Acl, Algorithm, BasicAuthCredential, Consumer, Endpoint, EntityId, KeyAuthCredential,
    PathHandling, Plugin, Protocol, Route, Service, Target, Upstream,
};
use super::fields::{strings_at, type_error, Fields, Sink};
use super::load::Raw;
use super::refs::{claim, link, reference, required_link, unique_ids, Claims, Index, Reference};
use crate::pace::{drop_all, Pace};
use std::collections::BTreeMap;

const TIMEOUT_MAX: i64 = 2_147_483_646;
/// Kong 3.9.x's deprecation of `path_handling: v1` under `traditional_compatible`
/// (`kong/db/schema/entities/routes.lua` `PATH_V1_DEPRECATION_MSG`, raised with
/// `{ after = "3.0" }`), and what it means here.
const PATH_HANDLING_V1_DEPRECATION: &str = "path_handling='v1' is deprecated and will not work \
     under 'expressions' or 'traditional_compatible' router_flavor, please use \
     path_handling='v0' instead (deprecated after 3.0); Fallback routes as Kong's \
     traditional_compatible router does and joins the paths of this route as v0";
const HTTPS_REDIRECT_CODES: [i64; 5] = [426, 301, 302, 307, 308];
const HASH_ON: [&str; 8] = [
    "none",
    "consumer",
    "ip",
    "header",
    "cookie",
    "path",
    "query_arg",
    "uri_capture",
];
const PLUGIN_DEFAULT_PROTOCOLS: [Protocol; 4] = [
    Protocol::Grpc,
    Protocol::Grpcs,
    Protocol::Http,
    Protocol::Https,
];

fn entity_id(f: Fields<'_>, sink: &mut Sink) -> EntityId {
    EntityId::read(f.text("id", sink))
}

fn tags(f: Fields<'_>, sink: &mut Sink) -> Vec<String> {
    f.strings("tags", sink)
}

/// Reads a protocol list; absent means `default`.
fn protocols(f: Fields<'_>, default: &[Protocol], sink: &mut Sink) -> Vec<Protocol> {
    let Some(value) = f.get("protocols") else {
        return default.to_vec();
    };
    let path = f.at("protocols");
    let Some(items) = value.as_array() else {
        sink.error(path, type_error("an array of strings", value));
        return default.to_vec();
    };
    if items.is_empty() {
        sink.error(path.as_str(), "must not be empty");
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(name) => match protocol_named(name) {
                Ok(p) => out.push(p),
                Err(message) => sink.error(format!("{path}[{i}]"), message),
            },
            None => sink.error(format!("{path}[{i}]"), type_error("a string", item)),
        }
    }
    out
}

const SERVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "url",
    "protocol",
    "host",
    "port",
    "path",
    "retries",
    "connect_timeout",
    "write_timeout",
    "read_timeout",
    "enabled",
    "tags",
    "routes",
    "plugins",
];

pub(super) fn service(raw: &Raw<'_>, sink: &mut Sink) -> Service {
    let f = raw.fields();
    let id = entity_id(f, sink);
    let name = f.text("name", sink);
    let url = f.string("url", sink);
    let mut protocol = f.string("protocol", sink).and_then(|name| {
        protocol_named(&name)
            .map_err(|message| sink.error(f.at("protocol"), message))
            .ok()
    });
    let mut host = f.string("host", sink);
    if let Some(h) = &host {
        if let Err(message) = check_host(h) {
            sink.error(f.at("host"), message);
        }
    }
    let mut port = f.integer("port", 0, 65535, sink).map(|p| p as u16);
    let mut upstream_path = f.string("path", sink);
    let mut path_field = f.at("path");

    if let Some(url) = &url {
        let conflicts: Vec<String> = ["protocol", "host", "port", "path"]
            .into_iter()
            .filter(|key| f.get(key).is_some())
            .map(|key| format!("{key:?}"))
            .collect();
        if !conflicts.is_empty() {
            sink.error(
                f.at("url"),
                format!(
                    "conflicts with {}; give either url or protocol/host/port/path",
                    conflicts.join(", ")
                ),
            );
        }
        match parse_url(url) {
            Ok(parts) if conflicts.is_empty() => {
                protocol = Some(parts.protocol);
                host = Some(parts.host);
                port = Some(parts.port.unwrap_or(parts.protocol.default_port()));
                upstream_path = parts.path;
                path_field = f.at("url");
            }
            Ok(_) => {}
            Err(message) => sink.error(f.at("url"), message),
        }
    } else if f.get("host").is_none() {
        sink.error(f.at("host"), "required (or give url)");
    }

    let protocol = protocol.unwrap_or(Protocol::Http);
    if let Some(p) = &upstream_path {
        if !p.starts_with('/') {
            sink.error(path_field.as_str(), "path must start with \"/\"");
        }
        if !matches!(protocol, Protocol::Http | Protocol::Https) {
            sink.error(
                path_field,
                format!("a path is only allowed with protocol http or https, not {protocol}"),
            );
        }
    }

    let timeout = |key: &str, sink: &mut Sink| {
        f.integer(key, 1, TIMEOUT_MAX, sink)
            .map_or(60_000, |t| t as u32)
    };
    Service {
        path: raw.path.clone(),
        id,
        name,
        url,
        protocol,
        host: host.unwrap_or_default(),
        port: port.unwrap_or(80),
        upstream_path,
        retries: f.integer("retries", 0, 32767, sink).map_or(5, |r| r as u16),
        connect_timeout: timeout("connect_timeout", sink),
        write_timeout: timeout("write_timeout", sink),
        read_timeout: timeout("read_timeout", sink),
        enabled: f.boolean("enabled", sink).unwrap_or(true),
        tags: tags(f, sink),
        extra: f.extra(SERVICE_FIELDS),
    }
}

const ROUTE_FIELDS: &[&str] = &[
    "id",
    "name",
    "service",
    "protocols",
    "methods",
    "hosts",
    "paths",
    "headers",
    "snis",
    "sources",
    "destinations",
    "strip_path",
    "preserve_host",
    "regex_priority",
    "path_handling",
    "https_redirect_status_code",
    "request_buffering",
    "response_buffering",
    "tags",
    "plugins",
];

pub(super) fn route(raw: &Raw<'_>, sink: &mut Sink) -> (Route, Option<Reference>) {
    let f = raw.fields();
    let id = entity_id(f, sink);
    let name = f.text("name", sink);
    let service_ref = reference(f, "service", false, sink);
    let protocols = protocols(f, &[Protocol::Http, Protocol::Https], sink);

    let methods = f.strings("methods", sink);
    for (i, method) in methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            sink.error(
                format!("{}[{i}]", f.at("methods")),
                format!("method {method:?} must be uppercase letters, e.g. \"GET\""),
            );
        }
    }
    let hosts = non_empty_strings(f, "hosts", sink);
    let paths = f.strings("paths", sink);
    for (i, p) in paths.iter().enumerate() {
        if !p.starts_with('/') && !p.starts_with('~') {
            sink.error(
                format!("{}[{i}]", f.at("paths")),
                "path must start with \"/\" or \"~\" (regex)",
            );
        } else if let Err(why) = crate::router::check_path(p) {
            sink.error(format!("{}[{i}]", f.at("paths")), why);
        }
    }
    let headers = headers(f, sink);
    let snis = non_empty_strings(f, "snis", sink);
    let sources = endpoints(f, "sources", sink);
    let destinations = endpoints(f, "destinations", sink);

    check_route_matchers(
        f,
        &protocols,
        &RouteMatchers {
            http: !(methods.is_empty()
                && hosts.is_empty()
                && headers.is_empty()
                && paths.is_empty()),
            snis: !snis.is_empty(),
            stream: !(sources.is_empty() && destinations.is_empty()),
        },
        sink,
    );

    let path_handling = match f.string("path_handling", sink).as_deref() {
        None | Some("v0") => PathHandling::V0,
        Some("v1") => {
            sink.warn(f.at("path_handling"), PATH_HANDLING_V1_DEPRECATION);
            PathHandling::V1
        }
        Some(other) => {
            sink.error(
                f.at("path_handling"),
                format!("unknown path_handling {other:?}; expected \"v0\" or \"v1\""),
            );
            PathHandling::V0
        }
    };
    let https_redirect_status_code = match f.integer("https_redirect_status_code", 0, 999, sink) {
        None => 426,
        Some(code) if HTTPS_REDIRECT_CODES.contains(&code) => code as u16,
        Some(code) => {
            sink.error(
                f.at("https_redirect_status_code"),
                format!("must be one of 426, 301, 302, 307, 308, found {code}"),
            );
            426
        }
    };

    let route = Route {
        path: raw.path.clone(),
        id,
        name,
        service: None,
        protocols,
        methods,
        hosts,
        paths,
        headers,
        snis,
        sources,
        destinations,
        strip_path: f.boolean("strip_path", sink).unwrap_or(true),
        preserve_host: f.boolean("preserve_host", sink).unwrap_or(false),
        regex_priority: f
            .integer("regex_priority", i64::MIN, i64::MAX, sink)
            .unwrap_or(0),
        path_handling,
        https_redirect_status_code,
        request_buffering: f.boolean("request_buffering", sink).unwrap_or(true),
        response_buffering: f.boolean("response_buffering", sink).unwrap_or(true),
        tags: tags(f, sink),
        extra: f.extra(ROUTE_FIELDS),
    };
    (route, service_ref)
}

/// Which kinds of matcher a route sets.
struct RouteMatchers {
    http: bool,
    snis: bool,
    stream: bool,
}

/// Kong's rule: a route must be able to match something with the protocols it accepts.
fn check_route_matchers(
    f: Fields<'_>,
    protocols: &[Protocol],
    set: &RouteMatchers,
    sink: &mut Sink,
) {
    if protocols.is_empty() {
        // Already reported at `protocols`; nothing could match anyway.
        return;
    }
    let http = protocols.iter().any(|p| p.is_http_family());
    let stream = protocols.iter().any(|p| !p.is_http_family());
    if http && stream {
        sink.error(
            f.at("protocols"),
            "cannot mix HTTP protocols (http, https, grpc, grpcs, ws, wss) with stream protocols \
             (tcp, tls, tls_passthrough, udp) in one route",
        );
        return;
    }
    if http {
        let tls = protocols.iter().any(|p| p.is_tls());
        if tls && !(set.http || set.snis) {
            sink.error(
                f.path,
                "must set at least one of methods, hosts, headers, paths (or snis for https)",
            );
        } else if !tls && !set.http {
            sink.error(
                f.path,
                "must set at least one of methods, hosts, headers, paths",
            );
        }
    } else if protocols.contains(&Protocol::TlsPassthrough) && !set.snis {
        sink.error(f.path, "must set snis (protocol tls_passthrough)");
    } else if !(set.stream || set.snis) {
        sink.error(
            f.path,
            "must set at least one of sources, destinations, snis",
        );
    }
}

fn non_empty_strings(f: Fields<'_>, key: &str, sink: &mut Sink) -> Vec<String> {
    let values = f.strings(key, sink);
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            sink.error(format!("{}[{i}]", f.at(key)), "must not be empty");
        }
    }
    values
}

fn headers(f: Fields<'_>, sink: &mut Sink) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Some(map) = f.object("headers", sink) else {
        return out;
    };
    for (name, values) in map {
        let path = format!("{}.{name}", f.at("headers"));
        if name.is_empty() {
            sink.error(path, "header name must not be empty");
            continue;
        }
        let values = strings_at(values, &path, sink);
        if let Err(why) = crate::router::check_header_values(&values) {
            sink.error(path, why);
        }
        out.insert(name.clone(), values);
    }
    out
}

fn endpoints(f: Fields<'_>, key: &str, sink: &mut Sink) -> Vec<Endpoint> {
    let Some(value) = f.get(key) else {
        return Vec::new();
    };
    let path = f.at(key);
    let Some(items) = value.as_array() else {
        sink.error(
            path,
            type_error("an array of {\"ip\", \"port\"} objects", value),
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(map) = item.as_object() else {
            sink.error(item_path, type_error("an object", item));
            continue;
        };
        let e = Fields {
            path: &item_path,
            map,
        };
        let endpoint = Endpoint {
            ip: e.text("ip", sink),
            port: e.integer("port", 0, 65535, sink).map(|p| p as u16),
        };
        if e.get("ip").is_none() && e.get("port").is_none() {
            sink.error(item_path.as_str(), "must set ip, port or both");
        }
        out.push(endpoint);
    }
    out
}

const CONSUMER_FIELDS: &[&str] = &[
    "id",
    "username",
    "custom_id",
    "tags",
    "plugins",
    "keyauth_credentials",
    "basicauth_credentials",
    "acls",
];

pub(super) fn consumer(raw: &Raw<'_>, sink: &mut Sink) -> Consumer {
    let f = raw.fields();
    let id = entity_id(f, sink);
    let username = f.text("username", sink);
    let custom_id = f.text("custom_id", sink);
    if f.get("username").is_none() && f.get("custom_id").is_none() {
        sink.error(
            raw.path.as_str(),
            "must set at least one of username, custom_id",
        );
    }
    Consumer {
        path: raw.path.clone(),
        id,
        username,
        custom_id,
        tags: tags(f, sink),
        extra: f.extra(CONSUMER_FIELDS),
    }
}

const UPSTREAM_FIELDS: &[&str] = &[
    "id",
    "name",
    "algorithm",
    "slots",
    "hash_on",
    "hash_fallback",
    "tags",
    "targets",
];

pub(super) fn upstream(raw: &Raw<'_>, sink: &mut Sink) -> Upstream {
    let f = raw.fields();
    let id = entity_id(f, sink);
    let name = f.required_text("name", sink);
    if !name.is_empty() {
        if let Err(message) = check_host(&name) {
            sink.error(f.at("name"), message);
        }
    }
    let algorithm = match f.string("algorithm", sink) {
        None => Algorithm::RoundRobin,
        Some(text) => Algorithm::from_name(&text).unwrap_or_else(|| {
            let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
            sink.error(
                f.at("algorithm"),
                format!(
                    "unknown algorithm {text:?}; expected one of {}",
                    all.join(", ")
                ),
            );
            Algorithm::RoundRobin
        }),
    };
    let hash = |key: &str, sink: &mut Sink| match f.string(key, sink) {
        None => "none".to_owned(),
        Some(text) => {
            if !HASH_ON.contains(&text.as_str()) {
                sink.error(
                    f.at(key),
                    format!(
                        "unknown value {text:?}; expected one of {}",
                        HASH_ON.join(", ")
                    ),
                );
            }
            text
        }
    };
    Upstream {
        path: raw.path.clone(),
        id,
        name,
        algorithm,
        slots: f
            .integer("slots", 10, 65536, sink)
            .map_or(10_000, |s| s as u32),
        hash_on: hash("hash_on", sink),
        hash_fallback: hash("hash_fallback", sink),
        tags: tags(f, sink),
        extra: f.extra(UPSTREAM_FIELDS),
    }
}

const TARGET_FIELDS: &[&str] = &["id", "target", "weight", "upstream", "tags"];

pub(super) async fn targets(
    raws: &[Raw<'_>],
    upstreams: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::with_capacity(raws.len());
    // Kong keys a target by (upstream, target): the same address twice in one upstream clashes.
    let mut claims = Claims::new();
    for raw in raws {
        pace.step().await;
        let f = raw.fields();
        let id = entity_id(f, sink);
        let upstream_ref = reference(f, "upstream", false, sink);
        let nested_in = raw.parent.upstream();
        let upstream = required_link(
            f,
            "upstream",
            upstream_ref.as_ref(),
            nested_in,
            upstreams,
            sink,
        );
        let target = f.required_text("target", sink);
        let (host, port) = if target.is_empty() {
            (String::new(), 8000)
        } else {
            match split_host_port(&target) {
                Ok((host, port)) => (host, port.unwrap_or(8000)),
                Err(message) => {
                    sink.error(f.at("target"), message);
                    (String::new(), 8000)
                }
            }
        };
        if let (Some(upstream), false) = (upstream, host.is_empty()) {
            claim(
                &mut claims,
                &format!("{upstream}\n{host}\n{port}"),
                out.len(),
                &raw.path,
                f.at("target"),
                format!("target {target:?} in the same upstream"),
                sink,
            );
        }
        out.push(Target {
            path: raw.path.clone(),
            id,
            target,
            host,
            port,
            weight: f
                .integer("weight", 0, 65535, sink)
                .map_or(100, |w| w as u16),
            // 0 stands in for an unresolved upstream: that problem is recorded, so this
            // document is never returned.
            upstream: upstream.unwrap_or(0),
            tags: tags(f, sink),
            extra: f.extra(TARGET_FIELDS),
        });
    }
    unique_ids(
        out.iter().map(|t| (t.path.as_str(), t.id.given_id())),
        sink,
        pace,
    )
    .await;
    drop_all(claims, pace).await;
    out
}

/// One entity owned by a consumer, with the parts every such kind reads the same way.
struct ConsumerOwned<'r> {
    raw: &'r Raw<'r>,
    f: Fields<'r>,
    id: EntityId,
    /// `None` when the consumer is missing or unresolved: that problem is recorded, so the
    /// document is never returned.
    consumer: Option<usize>,
    /// The index the entity will have in its kind's list (what `claim` records).
    index: usize,
}

/// Reads the entities owned by a consumer (key-auth and basic-auth credentials, ACL groups):
/// their id, their consumer (referenced, or the consumer they are nested in) and the
/// uniqueness of their ids are read alike for each kind, so that a fix to one is a fix to all.
/// `read` reads the kind's own fields, given one `Claims` set for the kind's own uniqueness
/// rule (keys, usernames, groups per consumer).
async fn consumer_owned<T>(
    raws: &[Raw<'_>],
    consumers: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
    mut read: impl FnMut(ConsumerOwned<'_>, &mut Claims, &mut Sink) -> T,
    path_and_id: fn(&T) -> (&str, Option<&str>),
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(raws.len());
    let mut claims = Claims::new();
    for raw in raws {
        pace.step().await;
        let f = raw.fields();
        let id = entity_id(f, sink);
        let consumer_ref = reference(f, "consumer", true, sink);
        let consumer = required_link(
            f,
            "consumer",
            consumer_ref.as_ref(),
            raw.parent.consumer(),
            consumers,
            sink,
        );
        let owned = ConsumerOwned {
            raw,
            f,
            id,
            consumer,
            index: out.len(),
        };
        out.push(read(owned, &mut claims, sink));
    }
    unique_ids(out.iter().map(path_and_id), sink, pace).await;
    drop_all(claims, pace).await;
    out
}

const KEYAUTH_FIELDS: &[&str] = &["id", "key", "consumer", "ttl", "tags"];

pub(super) async fn keyauth_credentials(
    raws: &[Raw<'_>],
    consumers: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<KeyAuthCredential> {
    consumer_owned(
        raws,
        consumers,
        sink,
        pace,
        |owned, keys, sink| {
            let f = owned.f;
            let key = f.required_text("key", sink);
            if !key.is_empty() {
                // The key is a secret: the message names the other credential, never the key.
                claim(
                    keys,
                    &key,
                    owned.index,
                    &owned.raw.path,
                    f.at("key"),
                    "key".to_owned(),
                    sink,
                );
            }
            KeyAuthCredential {
                path: owned.raw.path.clone(),
                id: owned.id,
                key,
                consumer: owned.consumer.unwrap_or(0),
                ttl: f.integer("ttl", 0, 100_000_000, sink).map(|t| t as u32),
                tags: tags(f, sink),
                extra: f.extra(KEYAUTH_FIELDS),
            }
        },
        |k| (k.path.as_str(), k.id.given_id()),
    )
    .await
}

const BASICAUTH_FIELDS: &[&str] = &["id", "username", "password", "consumer", "tags"];

pub(super) async fn basicauth_credentials(
    raws: &[Raw<'_>],
    consumers: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<BasicAuthCredential> {
    consumer_owned(
        raws,
        consumers,
        sink,
        pace,
        |owned, usernames, sink| {
            let f = owned.f;
            let username = f.required_text("username", sink);
            if !username.is_empty() {
                claim(
                    usernames,
                    &username,
                    owned.index,
                    &owned.raw.path,
                    f.at("username"),
                    format!("username {username:?}"),
                    sink,
                );
            }
            // Kong allows an empty password; only the type is checked (and never the value
            // shown).
            let password = f.string("password", sink).unwrap_or_default();
            BasicAuthCredential {
                path: owned.raw.path.clone(),
                id: owned.id,
                username,
                password,
                consumer: owned.consumer.unwrap_or(0),
                tags: tags(f, sink),
                extra: f.extra(BASICAUTH_FIELDS),
            }
        },
        |c| (c.path.as_str(), c.id.given_id()),
    )
    .await
}

const ACL_FIELDS: &[&str] = &["id", "group", "consumer", "tags"];

pub(super) async fn acls(
    raws: &[Raw<'_>],
    consumers: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<Acl> {
    consumer_owned(
        raws,
        consumers,
        sink,
        pace,
        |owned, memberships, sink| {
            let f = owned.f;
            let group = f.required_text("group", sink);
            if let (Some(consumer), false) = (owned.consumer, group.is_empty()) {
                claim(
                    memberships,
                    &format!("{consumer}\n{group}"),
                    owned.index,
                    &owned.raw.path,
                    f.at("group"),
                    format!("group {group:?} for the same consumer"),
                    sink,
                );
            }
            Acl {
                path: owned.raw.path.clone(),
                id: owned.id,
                group,
                consumer: owned.consumer.unwrap_or(0),
                tags: tags(f, sink),
                extra: f.extra(ACL_FIELDS),
            }
        },
        |a| (a.path.as_str(), a.id.given_id()),
    )
    .await
}

const PLUGIN_FIELDS: &[&str] = &[
    "id",
    "name",
    "instance_name",
    "config",
    "enabled",
    "protocols",
    "service",
    "route",
    "consumer",
    "tags",
];

pub(super) async fn plugins(
    raws: &[Raw<'_>],
    services: &Index,
    routes: &Index,
    consumers: &Index,
    sink: &mut Sink,
    pace: &Pace<'_>,
) -> Vec<Plugin> {
    let mut out: Vec<Plugin> = Vec::with_capacity(raws.len());
    let mut scopes = Claims::new();
    let mut instance_names = Claims::new();
    for raw in raws {
        pace.step().await;
        let f = raw.fields();
        let id = entity_id(f, sink);
        let service_ref = reference(f, "service", false, sink);
        let route_ref = reference(f, "route", false, sink);
        let consumer_ref = reference(f, "consumer", true, sink);
        let service = link(service_ref.as_ref(), raw.parent.service(), services, sink);
        let route = link(route_ref.as_ref(), raw.parent.route(), routes, sink);
        let consumer = link(
            consumer_ref.as_ref(),
            raw.parent.consumer(),
            consumers,
            sink,
        );
        let name = f.required_text("name", sink);
        // A reference that did not resolve reads as "no scope"; comparing it would report a
        // second, misleading duplicate on top of the unknown-reference problem.
        let resolved = (service_ref.is_none() || service.is_some())
            && (route_ref.is_none() || route.is_some())
            && (consumer_ref.is_none() || consumer.is_some());
        if resolved && !name.is_empty() {
            let scope = format!("{name}\n{service:?}\n{route:?}\n{consumer:?}");
            claim(
                &mut scopes,
                &scope,
                out.len(),
                &raw.path,
                raw.path.clone(),
                format!(
                    "plugin {name:?} for the same {}",
                    scope_words(service, route, consumer)
                ),
                sink,
            );
        }
        let instance_name = f.text("instance_name", sink);
        if let Some(instance) = &instance_name {
            claim(
                &mut instance_names,
                instance,
                out.len(),
                &raw.path,
                f.at("instance_name"),
                format!("instance_name {instance:?}"),
                sink,
            );
        }
        out.push(Plugin {
            path: raw.path.clone(),
            id,
            name,
            instance_name,
            config: f.object("config", sink).cloned().unwrap_or_default(),
            enabled: f.boolean("enabled", sink).unwrap_or(true),
            protocols: protocols(f, &PLUGIN_DEFAULT_PROTOCOLS, sink),
            service,
            route,
            consumer,
            tags: tags(f, sink),
            extra: f.extra(PLUGIN_FIELDS),
        });
    }
    unique_ids(
        out.iter().map(|p| (p.path.as_str(), p.id.given_id())),
        sink,
        pace,
    )
    .await;
    drop_all(scopes, pace).await;
    drop_all(instance_names, pace).await;
    out
}

/// Names a plugin's scope in a duplicate message: "service and route", or "global scope".
fn scope_words(service: Option<usize>, route: Option<usize>, consumer: Option<usize>) -> String {
    let parts: Vec<&str> = [
        (service, "service"),
        (route, "route"),
        (consumer, "consumer"),
    ]
    .into_iter()
    .filter_map(|(set, word)| set.map(|_| word))
    .collect();
    if parts.is_empty() {
        "global scope".to_owned()
    } else {
        parts.join(" and ")
    }
}
