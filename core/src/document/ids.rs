//! Ids for entities the input gives none, as Kong 3.x generates them on load.
//!
//! Kong 3.9.x (`kong/db/schema/others/declarative_config.lua`, `generate_ids`, run by
//! `flatten` before defaults are filled in) gives an entity without an `id` the UUIDv5 of a
//! name derived from its fields, in a namespace per entity kind: the namespace is the UUIDv5
//! of the kind's schema name (`"services"`, `"plugins"`...) in
//! `fd02801f-0957-4a15-a55a-c8d9606f30b5` (`uuid_generators._entities`). The name
//! (`get_key_for_uuid_gen`) is:
//! - for kinds with a `cache_key` (plugins, targets, basic-auth credentials, ACLs): `build_cache_key`,
//!   `<kind>:<ws>:<value>:<value>...` over the cache-key fields, `<ws>` being the entity's
//!   `ws_id` or `*` (what files have); a field given as a string is used as written (a name
//!   stays a name), an absent one is the parent's id when the entity is nested under that
//!   parent kind, `""` when optional; a field given as an object or `null` adds nothing. No id
//!   when a required field or the parent's id is missing, or when a cache-key field is
//!   generated (`auto`: key-auth's `key`);
//! - for the others (services, routes, consumers, upstreams): the unique `endpoint_key` (`name`,
//!   `username`) as written; none without it.
//!
//! Where Kong generates no id it picks a random one on every load, which no file-based
//! process can reproduce. Fallback gives those entities a stable UUIDv5 of its own instead (of
//! the entity's place in the input, in a namespace Kong does not use), so that every worker
//! and every reload agree: [`IdSource::Local`].

use super::entities::{EntityId, IdSource};
use super::fields::Sink;
use super::load::{Raw, RawDocument};
use super::refs::Claims;
use super::ConfigDocument;
use crate::pace::{drop_all, Pace};
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

/// Kong's `uuid_generators._entities` namespace.
const KONG_ENTITIES: [u8; 16] = parse_uuid("fd02801f-0957-4a15-a55a-c8d9606f30b5");

/// Fallback's own namespace for the ids Kong would draw at random (never one of Kong's).
const FALLBACK_LOCAL: [u8; 16] = parse_uuid("52c4c196-a43b-49b8-bde5-a42d3194d58f");

/// RFC 4122 §4.3 name-based UUID, version 5 (SHA-1).
pub(super) fn uuid_v5(namespace: &[u8; 16], name: &str) -> [u8; 16] {
    let digest = Sha1::new()
        .chain_update(namespace)
        .chain_update(name.as_bytes())
        .finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x50;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// The canonical lowercase text form, `8-4-4-4-12` hex digits.
pub(super) fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, group) in [
        &uuid[..4],
        &uuid[4..6],
        &uuid[6..8],
        &uuid[8..10],
        &uuid[10..],
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        crate::digest::push_hex(&mut out, group);
    }
    out
}

/// Parses a UUID constant at compile time (panics, i.e. fails the build, on a bad one).
const fn parse_uuid(text: &str) -> [u8; 16] {
    let bytes = text.as_bytes();
    let mut out = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'-' {
            i += 1;
            continue;
        }
        let hi = hex(bytes[i]);
        let lo = hex(bytes[i + 1]);
        out[n] = hi * 16 + lo;
        n += 1;
        i += 2;
    }
    assert!(n == 16, "a UUID has 16 bytes");
    out
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// Kong's `generate_uuid(schema.name, key)` (what `fill` computes, for tests).
#[cfg(test)]
pub(crate) fn kong_id(kind: &str, key: &str) -> String {
    id_in(&KONG_ENTITIES, kind, key)
}

/// The UUIDv5 of `name` in the namespace of `kind` under `root`.
fn id_in(root: &[u8; 16], kind: &str, name: &str) -> String {
    format_uuid(&uuid_v5(&uuid_v5(root, kind), name))
}

/// The id Kong's `traditional_compatible` router gives group `group` (from 1) of a route it
/// splits by path kind and length (Kong 3.9.x `kong/router/transform.lua`,
/// `split_routes_and_services_by_path`: `uuid_generator(original_route_id .. "#" .. index)`).
pub(crate) fn split_route_id(route_id: &str, group: usize) -> String {
    const SPLIT_ROUTES: [u8; 16] = parse_uuid("7f145bf9-0dce-4f91-98eb-debbce4b9f6b");
    format_uuid(&uuid_v5(&SPLIT_ROUTES, &format!("{route_id}#{group}")))
}

/// One field of a cache key.
struct KeyField {
    name: &'static str,
    required: bool,
    /// The parent kind this field names, when the entity is nested under one of that kind:
    /// then an absent field stands for the parent's id.
    nested_parent: Option<Option<String>>,
}

impl KeyField {
    fn new(name: &'static str, required: bool) -> KeyField {
        KeyField {
            name,
            required,
            nested_parent: None,
        }
    }

    fn nested(self, nested_parent: Option<Option<String>>) -> KeyField {
        KeyField {
            nested_parent,
            ..self
        }
    }
}

/// `build_cache_key`: `None` where Kong builds no key (and so generates no id).
fn cache_key(kind: &str, map: &Map<String, Value>, fields: &[KeyField]) -> Option<String> {
    let ws = match map.get("ws_id") {
        Some(Value::String(ws)) => ws.as_str(),
        _ => "*",
    };
    let mut key = format!("{kind}:{ws}");
    for field in fields {
        match map.get(field.name) {
            Some(Value::String(value)) => {
                key.push(':');
                key.push_str(value);
            }
            // cjson and lyaml turn `null` into `ngx.null`: neither a string nor nil, so
            // Kong's loop adds nothing for it, nor for an object.
            Some(_) => {}
            None => match &field.nested_parent {
                Some(Some(parent_id)) => {
                    key.push(':');
                    key.push_str(parent_id);
                }
                Some(None) => return None,
                None if field.required => return None,
                None => key.push(':'),
            },
        }
    }
    Some(key)
}

/// The endpoint key Kong hashes for kinds without a cache key: the field as written.
fn endpoint_key<'m>(map: &'m Map<String, Value>, field: &str) -> Option<&'m str> {
    map.get(field).and_then(Value::as_str)
}

/// Gives `id` its generated value unless the input gave one: Kong's from `key`, else a local
/// one from the entity's `path`.
fn fill(id: &mut EntityId, kind: &str, path: &str, key: Option<String>) {
    if id.source() == IdSource::Given {
        return;
    }
    let (root, name, source) = match &key {
        Some(key) => (&KONG_ENTITIES, key.as_str(), IdSource::Kong),
        None => (&FALLBACK_LOCAL, path, IdSource::Local),
    };
    *id = EntityId::generated(id_in(root, kind, name), source);
}

/// Parents' ids as Kong knows them (none for a parent whose id Kong draws at random).
async fn kong_ids(ids: &[(&str, &EntityId)], pace: &Pace<'_>) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(ids.len());
    for (_, id) in ids {
        pace.step().await;
        out.push(id.kong().map(str::to_owned));
    }
    out
}

/// Nested under a parent of the kind: its Kong id, or `Some(None)` when Kong has none.
fn parent_id(nested_in: Option<usize>, ids: &[Option<String>]) -> Option<Option<String>> {
    nested_in.map(|i| ids.get(i).cloned().flatten())
}

/// Gives every entity without an id its id; reports generated ids that clash with an id the
/// input gives another entity of the same kind (Kong refuses those files too).
pub(super) async fn assign(
    raw: &RawDocument<'_>,
    doc: &mut ConfigDocument,
    sink: &mut Sink,
    pace: &Pace<'_>,
) {
    let endpoint = |raws: &[Raw<'_>], field: &str, i: usize| {
        endpoint_key(raws[i].map, field).map(str::to_owned)
    };
    for (i, s) in doc.services.iter_mut().enumerate() {
        pace.step().await;
        fill(
            &mut s.id,
            "services",
            &s.path,
            endpoint(&raw.services, "name", i),
        );
    }
    for (i, r) in doc.routes.iter_mut().enumerate() {
        pace.step().await;
        fill(
            &mut r.id,
            "routes",
            &r.path,
            endpoint(&raw.routes, "name", i),
        );
    }
    for (i, c) in doc.consumers.iter_mut().enumerate() {
        pace.step().await;
        let key = endpoint(&raw.consumers, "username", i);
        fill(&mut c.id, "consumers", &c.path, key);
    }
    for (i, u) in doc.upstreams.iter_mut().enumerate() {
        pace.step().await;
        fill(
            &mut u.id,
            "upstreams",
            &u.path,
            endpoint(&raw.upstreams, "name", i),
        );
    }

    let services: Vec<(&str, &EntityId)> = doc
        .services
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let routes: Vec<(&str, &EntityId)> = doc
        .routes
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let consumers: Vec<(&str, &EntityId)> = doc
        .consumers
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let upstreams: Vec<(&str, &EntityId)> = doc
        .upstreams
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    for kind in [&services, &routes, &consumers, &upstreams] {
        check_clashes(kind, sink, pace).await;
    }
    let (services, routes, consumers, upstreams) = (
        kong_ids(&services, pace).await,
        kong_ids(&routes, pace).await,
        kong_ids(&consumers, pace).await,
        kong_ids(&upstreams, pace).await,
    );

    for (t, r) in doc.targets.iter_mut().zip(&raw.targets) {
        pace.step().await;
        let fields = [
            KeyField::new("upstream", true).nested(parent_id(r.parent.upstream(), &upstreams)),
            KeyField::new("target", true),
        ];
        fill(
            &mut t.id,
            "targets",
            &t.path,
            cache_key("targets", r.map, &fields),
        );
    }
    for (p, r) in doc.plugins.iter_mut().zip(&raw.plugins) {
        pace.step().await;
        let fields = [
            KeyField::new("name", true),
            KeyField::new("route", false).nested(parent_id(r.parent.route(), &routes)),
            KeyField::new("service", false).nested(parent_id(r.parent.service(), &services)),
            KeyField::new("consumer", false).nested(parent_id(r.parent.consumer(), &consumers)),
        ];
        fill(
            &mut p.id,
            "plugins",
            &p.path,
            cache_key("plugins", r.map, &fields),
        );
    }
    // key-auth's cache key is its `key`, which Kong can generate (`auto`): no id from it.
    for k in &mut doc.keyauth_credentials {
        pace.step().await;
        fill(&mut k.id, "keyauth_credentials", &k.path, None);
    }
    for (c, r) in doc
        .basicauth_credentials
        .iter_mut()
        .zip(&raw.basicauth_credentials)
    {
        let fields = [KeyField::new("username", true)];
        pace.step().await;
        let key = cache_key("basicauth_credentials", r.map, &fields);
        fill(&mut c.id, "basicauth_credentials", &c.path, key);
    }
    for (a, r) in doc.acls.iter_mut().zip(&raw.acls) {
        pace.step().await;
        let fields = [
            KeyField::new("consumer", true).nested(parent_id(r.parent.consumer(), &consumers)),
            KeyField::new("group", true),
        ];
        fill(
            &mut a.id,
            "acls",
            &a.path,
            cache_key("acls", r.map, &fields),
        );
    }

    let targets: Vec<(&str, &EntityId)> = doc
        .targets
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let plugins: Vec<(&str, &EntityId)> = doc
        .plugins
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let basicauth: Vec<(&str, &EntityId)> = doc
        .basicauth_credentials
        .iter()
        .map(|e| (e.path.as_str(), &e.id))
        .collect();
    let acls: Vec<(&str, &EntityId)> = doc.acls.iter().map(|e| (e.path.as_str(), &e.id)).collect();
    for kind in [&targets, &plugins, &basicauth, &acls] {
        check_clashes(kind, sink, pace).await;
    }
}

/// A generated id equal to an id the input gives another entity of the kind. (Two generated
/// ids are equal only when their keys are: that duplicate, a name or a scope, is reported
/// where it is read.)
async fn check_clashes(entities: &[(&str, &EntityId)], sink: &mut Sink, pace: &Pace<'_>) {
    // The loader's own claims map (refs.rs): one more BTreeMap type would cost the filter
    // tens of KB of .wasm.
    let mut given = Claims::new();
    for (i, (path, id)) in entities.iter().enumerate() {
        pace.step().await;
        if let Some(id) = id.given_id() {
            given.insert(id.to_owned(), (i, (*path).to_owned()));
        }
    }
    for (path, id) in entities {
        pace.step().await;
        if id.source() != IdSource::Kong {
            continue;
        }
        if let Some((_, other)) = given.get(id.as_str()) {
            sink.error(
                *path,
                format!(
                    "has no id, and the one Kong generates for it ({}) is the id of {other}; \
                     give this entity its own id",
                    id.as_str()
                ),
            );
        }
    }
    drop_all(given, pace).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v5_matches_published_vectors() {
        // lua-resty-jit-uuid's documentation of factory_v5 (the library Kong uses).
        let ns = parse_uuid("e6ebd542-06ae-11e6-8e82-bba81706b27d");
        assert_eq!(
            format_uuid(&uuid_v5(&ns, "hello")),
            "4850816f-1658-5890-8bfd-1ed14251f1f0"
        );
        assert_eq!(
            format_uuid(&uuid_v5(&ns, "foobar")),
            "c9be99fc-326b-5066-bdba-dcd31a6d01ab"
        );
        // RFC 4122's DNS namespace, as Python's uuid.uuid5(NAMESPACE_DNS, "python.org").
        let dns = parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8");
        assert_eq!(
            format_uuid(&uuid_v5(&dns, "python.org")),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
    }

    #[test]
    fn kong_ids_match_published_ones() {
        // Kong/go-kong kong/ids_test.go (FillID, "to match Kong's behavior"): a service and a
        // route named "some.service.name", a consumer "some.username", no workspace.
        assert_eq!(
            kong_id("services", "some.service.name"),
            "d9bee1f8-db6e-5a37-9281-fd4aca16dc00"
        );
        assert_eq!(
            kong_id("routes", "some.service.name"),
            "7f0753cd-bff2-5f74-85b0-e8e2057d9500"
        );
        assert_eq!(
            kong_id("consumers", "some.username"),
            "782780c4-d345-5682-bdf6-722dccaf93e0"
        );
        // Kong 3.9.x spec/02-integration/04-admin_api/15-off_spec.lua ("correctly handles
        // duplicate upstream target errors"): a service and route whose ids are the ones
        // generated from their names, as the Kubernetes Ingress Controller writes them.
        assert_eq!(
            kong_id("services", "httproute.default.httproute-testing.0"),
            "4e3cb785-a8d0-5866-aa05-117f7c64f24d"
        );
        assert_eq!(
            kong_id("routes", "httproute.default.httproute-testing.0.0"),
            "073fc413-1c03-50b4-8f44-43367c13daba"
        );
    }
}
