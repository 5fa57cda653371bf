//! The entity types of a [`ConfigDocument`](super::ConfigDocument).
//!
//! Every entity has `path` (where it appeared in the input), `id`, its typed Kong fields with
//! Kong's defaults filled in, and `extra`: every field this model does not know, kept verbatim
//! so that nothing a newer Kong (or a plugin) writes is lost.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A protocol a service speaks or a route/plugin accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `http`
    Http,
    /// `https`
    Https,
    /// `grpc`
    Grpc,
    /// `grpcs`
    Grpcs,
    /// `tcp`
    Tcp,
    /// `tls`
    Tls,
    /// `tls_passthrough`
    TlsPassthrough,
    /// `udp`
    Udp,
    /// `ws`
    Ws,
    /// `wss`
    Wss,
}

impl Protocol {
    /// Every protocol, in Kong's documentation order.
    pub const ALL: [Protocol; 10] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Grpc,
        Protocol::Grpcs,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::TlsPassthrough,
        Protocol::Udp,
        Protocol::Ws,
        Protocol::Wss,
    ];

    /// Kong's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::Grpcs => "grpcs",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::TlsPassthrough => "tls_passthrough",
            Protocol::Udp => "udp",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }

    /// Parses Kong's spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// True for protocols routed on HTTP attributes (methods, hosts, headers, paths).
    pub fn is_http_family(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Https
                | Protocol::Grpc
                | Protocol::Grpcs
                | Protocol::Ws
                | Protocol::Wss
        )
    }

    /// True for protocols carried over TLS, where a route may match on SNI.
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Protocol::Https
                | Protocol::Grpcs
                | Protocol::Wss
                | Protocol::Tls
                | Protocol::TlsPassthrough
        )
    }

    /// The port a service URL implies when it names none: 443 for TLS HTTP protocols, else 80.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Https | Protocol::Wss | Protocol::Grpcs => 443,
            _ => 80,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream's load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `round-robin` (Kong's default)
    RoundRobin,
    /// `consistent-hashing`
    ConsistentHashing,
    /// `least-connections`
    LeastConnections,
    /// `latency`
    Latency,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::ConsistentHashing,
        Algorithm::LeastConnections,
        Algorithm::Latency,
    ];

    /// Kong's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::ConsistentHashing => "consistent-hashing",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::Latency => "latency",
        }
    }

    /// Parses Kong's spelling.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// How a route joins its matched path with the service's path (Kong's `path_handling`).
///
/// Kong's `traditional_compatible` router joins every route's paths as `v0`; `v1` loads with
/// Kong's deprecation warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathHandling {
    /// `v0` (Kong's default)
    V0,
    /// `v1`
    V1,
}

impl PathHandling {
    /// Kong's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PathHandling::V0 => "v0",
            PathHandling::V1 => "v1",
        }
    }
}

/// Where an entity's [`EntityId`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdSource {
    /// The input's own `id`.
    Given,
    /// Generated from the entity's fields as Kong 3.x does on load: the id Kong gives it.
    Kong,
    /// Generated from the entity's place in the input where Kong would pick a random id on
    /// each load: stable across workers and reloads, but not Kong's.
    Local,
}

/// An entity's id: the input's, or the one the loader generated (see `ids.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityId {
    value: String,
    source: IdSource,
}

impl EntityId {
    /// The input's own id.
    pub fn given(value: impl Into<String>) -> EntityId {
        EntityId {
            value: value.into(),
            source: IdSource::Given,
        }
    }

    /// An id the loader generated.
    pub(super) fn generated(value: String, source: IdSource) -> EntityId {
        EntityId { value, source }
    }

    /// The id read from the input, or a placeholder the loader replaces before returning.
    pub(super) fn read(given: Option<String>) -> EntityId {
        match given {
            Some(value) => EntityId::given(value),
            None => EntityId::generated(String::new(), IdSource::Local),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Where it comes from.
    pub fn source(&self) -> IdSource {
        self.source
    }

    /// The id when the input gave it.
    pub fn given_id(&self) -> Option<&str> {
        (self.source == IdSource::Given).then_some(self.value.as_str())
    }

    /// The id when it is the one Kong has for this entity (given, or generated as Kong does).
    pub fn kong(&self) -> Option<&str> {
        (self.source != IdSource::Local).then_some(self.value.as_str())
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// A stream route's source or destination: an IP or CIDR, a port, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or CIDR block, as given.
    pub ip: Option<String>,
    /// Port.
    pub port: Option<u16>,
}

/// A Kong service: where matched traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Where this entity appeared in the input, e.g. `services[0]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `name`, if given.
    pub name: Option<String>,
    /// The `url` shorthand exactly as given; its parts are already in protocol/host/port/
    /// `upstream_path`.
    pub url: Option<String>,
    /// `protocol`; default `http`.
    pub protocol: Protocol,
    /// `host` (from `url` when given that way); a hostname or IP, IPv6 without brackets.
    pub host: String,
    /// `port`; default 80, or [`Protocol::default_port`] when it came from a `url` without a port.
    pub port: u16,
    /// Kong's `path` field (the path prefix sent upstream), renamed because `path` here is the
    /// entity's location in the input. Starts with `/` when set.
    pub upstream_path: Option<String>,
    /// `retries`; default 5.
    pub retries: u16,
    /// `connect_timeout` in milliseconds; default 60000.
    pub connect_timeout: u32,
    /// `write_timeout` in milliseconds; default 60000.
    pub write_timeout: u32,
    /// `read_timeout` in milliseconds; default 60000.
    pub read_timeout: u32,
    /// `enabled`; default true.
    pub enabled: bool,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim (nested `routes`/`plugins` excluded).
    pub extra: Map<String, Value>,
}

/// A Kong route: which requests match, and the service they go to.
///
/// Absent or `null` matcher lists are empty vectors: Kong treats both the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Where this entity appeared in the input, e.g. `services[0].routes[1]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `name`, if given.
    pub name: Option<String>,
    /// Index into [`ConfigDocument::services`](super::ConfigDocument::services); `None` for a
    /// route without a service (Kong answers such routes with 503).
    pub service: Option<usize>,
    /// `protocols`; default `[http, https]`.
    pub protocols: Vec<Protocol>,
    /// `methods`, uppercase.
    pub methods: Vec<String>,
    /// `hosts`, as given (may contain one `*` wildcard and a `:port`).
    pub hosts: Vec<String>,
    /// `paths`: prefixes starting with `/`, or regexes starting with `~`.
    pub paths: Vec<String>,
    /// `headers`: header name (as given) to accepted values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `snis`.
    pub snis: Vec<String>,
    /// `sources` (stream routes).
    pub sources: Vec<Endpoint>,
    /// `destinations` (stream routes).
    pub destinations: Vec<Endpoint>,
    /// `strip_path`; default true.
    pub strip_path: bool,
    /// `preserve_host`; default false.
    pub preserve_host: bool,
    /// `regex_priority`; default 0.
    pub regex_priority: i64,
    /// `path_handling`; default `v0`.
    pub path_handling: PathHandling,
    /// `https_redirect_status_code`; default 426; one of 426, 301, 302, 307, 308.
    pub https_redirect_status_code: u16,
    /// `request_buffering`; default true.
    pub request_buffering: bool,
    /// `response_buffering`; default true.
    pub response_buffering: bool,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim (nested `plugins` excluded).
    pub extra: Map<String, Value>,
}

/// A Kong consumer. At least one of `username` and `custom_id` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// Where this entity appeared in the input, e.g. `consumers[2]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `username`, unique in the document.
    pub username: Option<String>,
    /// `custom_id`, unique in the document.
    pub custom_id: Option<String>,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim (nested `plugins`, `keyauth_credentials`,
    /// `basicauth_credentials`, `acls` excluded).
    pub extra: Map<String, Value>,
}

/// A Kong plugin instance. Without service, route and consumer it applies globally.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// Where this entity appeared in the input, e.g. `routes[0].plugins[1]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `name`: the plugin's name, e.g. `key-auth`.
    pub name: String,
    /// `instance_name`, unique in the document when set.
    pub instance_name: Option<String>,
    /// `config`; default `{}`. Kept as JSON: each plugin's logic reads its own fields.
    pub config: Map<String, Value>,
    /// `enabled`; default true.
    pub enabled: bool,
    /// `protocols`; default `[grpc, grpcs, http, https]` as Kong.
    pub protocols: Vec<Protocol>,
    /// Index into `services`: set when nested under a service or given explicitly.
    pub service: Option<usize>,
    /// Index into `routes`: set when nested under a route or given explicitly.
    pub route: Option<usize>,
    /// Index into `consumers`: set when nested under a consumer or given explicitly.
    pub consumer: Option<usize>,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim (e.g. `consumer_group`, `ordering`).
    pub extra: Map<String, Value>,
}

/// A Kong upstream: a virtual hostname load-balanced over its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Where this entity appeared in the input, e.g. `upstreams[0]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `name`: the hostname services use to reach this upstream.
    pub name: String,
    /// `algorithm`; default round-robin.
    pub algorithm: Algorithm,
    /// `slots`; default 10000; 10..=65536.
    pub slots: u32,
    /// `hash_on`; default `none`.
    pub hash_on: String,
    /// `hash_fallback`; default `none`.
    pub hash_fallback: String,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim (e.g. `healthchecks`, `hash_on_header`);
    /// nested `targets` excluded.
    pub extra: Map<String, Value>,
}

/// A Kong target: one backend address of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Where this entity appeared in the input, e.g. `upstreams[0].targets[1]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `target` exactly as given: `host`, `host:port` or `[ipv6]:port`.
    pub target: String,
    /// The host part of `target`, IPv6 without brackets.
    pub host: String,
    /// The port part of `target`; default 8000 as Kong.
    pub port: u16,
    /// `weight`; default 100; 0..=65535 (0 disables the target).
    pub weight: u16,
    /// Index into `upstreams`; always set (a target without an upstream is an error).
    pub upstream: usize,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim.
    pub extra: Map<String, Value>,
}

/// A key-auth credential (`keyauth_credentials`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAuthCredential {
    /// Where this entity appeared in the input, e.g. `consumers[0].keyauth_credentials[0]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `key`: the API key, unique in the document. Never echoed in problem messages.
    pub key: String,
    /// Index into `consumers`; always set.
    pub consumer: usize,
    /// `ttl` in seconds, if given.
    pub ttl: Option<u32>,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim.
    pub extra: Map<String, Value>,
}

/// A basic-auth credential (`basicauth_credentials`).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuthCredential {
    /// Where this entity appeared in the input, e.g. `consumers[0].basicauth_credentials[0]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `username`, unique in the document.
    pub username: String,
    /// `password` as stored: Kong's exports hold `sha1(password .. consumer_id)` in lowercase
    /// hex; a hand-written file may hold the clear password (Kong hashes it when loading).
    /// Never echoed in problem messages.
    pub password: String,
    /// Index into `consumers`; always set.
    pub consumer: usize,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim.
    pub extra: Map<String, Value>,
}

/// A consumer's membership of an ACL group (`acls`).
#[derive(Debug, Clone, PartialEq)]
pub struct Acl {
    /// Where this entity appeared in the input, e.g. `consumers[0].acls[0]`.
    pub path: String,
    /// `id` as given, else generated as Kong does on load (see [`IdSource`]).
    pub id: EntityId,
    /// `group`.
    pub group: String,
    /// Index into `consumers`; always set.
    pub consumer: usize,
    /// `tags`; default empty.
    pub tags: Vec<String>,
    /// Every field not modelled above, verbatim.
    pub extra: Map<String, Value>,
}
