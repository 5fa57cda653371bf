//! What differs between the proxy hosts the filter runs in, in one place: Envoy, stock nginx
//! with ngx_wasm_module, and Kong Gateway's filter chains (ngx_wasm_module inside Kong).
//!
//! A [`HostProfile`] is plain data plus pure functions: which header carries the client's
//! `Host`, where the request path and the listener port are read and how they are encoded,
//! whether `source.address` carries a port, how the chosen upstream is handed over (headers or
//! properties to write), which pseudo-headers a dispatch needs, which headers Kong's 426 answer
//! may carry. The filter picks the profile once from its configuration (`"host"`) and only
//! performs what the profile says; no other code asks which host it runs in.
//!
//! Some differences need no branch at all, because one behaviour is correct on every host:
//! - Shared data is always written read-then-compare-and-swap with the token just read
//!   ([`crate::shared_data`]): correct where a token of 0 means "unconditional" (Envoy) and
//!   where it means "only if absent" (ngx_wasm_module). [`CasSemantics`] records each host's
//!   rule for the tests and the documentation.
//! - The fetch machine never asks for a dispatch from a response callback
//!   ([`crate::fetch`]): ngx_wasm_module crashes when one is made there, Envoy would allow it.
//! - Response headers are changed one by one ([`crate::plugins::ResponsePlan::edits`]), never by
//!   replacing the whole map: ngx_wasm_module keeps `Content-Type` and other built-in headers
//!   outside the map it replaces.

use crate::fetch::HttpRequest;
use crate::plugins::HeaderOp;
use std::fmt;
use std::net::IpAddr;

/// The proxy the filter runs in, as named in the filter configuration's `"host"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HostKind {
    /// Envoy (V8): clusters, the dynamic forward proxy, `set_filter_state`.
    #[default]
    Envoy,
    /// Stock nginx with ngx_wasm_module: `proxy_pass` through an nginx variable.
    Nginx,
    /// Kong Gateway 3.6+ filter chains (ngx_wasm_module inside Kong): Kong's own properties.
    Kong,
}

impl HostKind {
    /// Every host, in documentation order.
    pub const ALL: [HostKind; 3] = [HostKind::Envoy, HostKind::Nginx, HostKind::Kong];

    /// The name used in the filter configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Envoy => "envoy",
            HostKind::Nginx => "nginx",
            HostKind::Kong => "kong",
        }
    }

    /// The host named `name` (exactly as [`HostKind::as_str`] spells it).
    pub fn parse(name: &str) -> Option<HostKind> {
        HostKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// This host's profile.
    pub fn profile(self) -> &'static HostProfile {
        match self {
            HostKind::Envoy => &ENVOY,
            HostKind::Nginx => &NGINX,
            HostKind::Kong => &KONG,
        }
    }
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a compare-and-swap token of 0 means when writing shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasSemantics {
    /// Envoy: 0 writes unconditionally; any other token must equal the key's current one.
    ZeroIsUnconditional,
    /// ngx_wasm_module: the token must equal the key's current one, an absent key's being 0
    /// (so 0 creates a key only if it is absent, and never overwrites one).
    Strict,
}

/// How a property holding a port is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEncoding {
    /// Envoy's integer attributes: 8 bytes, little-endian `i64`.
    LittleEndianI64,
    /// ngx_wasm_module: every property is a string, here decimal digits.
    DecimalText,
}

/// Where a request value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// A request header (or pseudo-header).
    Header(&'static str),
    /// A host property, by path.
    Property(&'static [&'static str]),
}

/// How the chosen upstream reaches the host's proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// Envoy: `host:port` in the configured `upstream_header` (copied into
    /// `envoy.upstream.dynamic_host` by `set_filter_state`, used by the dynamic forward proxy),
    /// `Host` in `:authority`, the path in `:path`.
    EnvoyHeaders,
    /// nginx: `host:port` in the nginx variable `upstream_variable` (declared with `set`, used
    /// by `proxy_pass http://$<var>$uri$is_args$args`), `Host` in the `host` header (sent with
    /// `proxy_set_header Host $http_host`), the path in `:path` (nginx's `$uri` and `$args`).
    NginxVariable,
    /// Kong: `kong.service.target` (`host:port`), `ngx.upstream_host` (the `Host` Kong sends) and
    /// `ngx.upstream_uri` (the path Kong's `proxy_pass` uses), as `kong/runloop/wasm.lua` and
    /// Kong's nginx template define them. Read in Kong's source, not run: Kong resolves the
    /// catch-all route's service address before the filter runs (ngx_wasm_module's access
    /// handler comes after Kong's), and its first connection goes to that address with the
    /// port of `kong.service.target` (see `docs/hosts.md`).
    KongProperties,
}

/// One write that hands something to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostWrite<'a> {
    /// Replace a request header (or pseudo-header).
    Header {
        /// The header's name.
        name: &'a str,
        /// Its new value.
        value: &'a str,
    },
    /// Set a host property.
    Property {
        /// The property's path, e.g. `["ngx", "fallback_upstream"]`.
        path: Vec<&'a str>,
        /// Its new value.
        value: &'a str,
    },
}

impl HostWrite<'_> {
    /// `header :authority` or `property ngx.fallback_upstream`, for messages.
    pub fn target(&self) -> String {
        match self {
            HostWrite::Header { name, .. } => format!("header {name}"),
            HostWrite::Property { path, .. } => format!("property {}", path.join(".")),
        }
    }
}

/// Where one request goes, as the router and the plugins decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTarget<'a> {
    /// `host:port` to connect to.
    pub upstream: &'a str,
    /// The `Host` to send.
    pub host_header: &'a str,
    /// The `:path` to send, query included.
    pub path: &'a str,
}

/// The names the operator chose for the hand-over (from the filter configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOverNames<'a> {
    /// Envoy: the request header `set_filter_state` reads.
    pub upstream_header: &'a str,
    /// nginx: the variable `proxy_pass` uses (without `$`).
    pub upstream_variable: &'a str,
}

/// Log levels of the proxy-wasm ABI (`proxy_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyLogLevel {
    /// 0.
    Trace = 0,
    /// 1.
    Debug = 1,
    /// 2.
    Info = 2,
    /// 3.
    Warn = 3,
    /// 4.
    Error = 4,
    /// 5.
    Critical = 5,
}

/// A proxy host's semantics, as data. See the module documentation.
#[derive(Debug, PartialEq, Eq)]
pub struct HostProfile {
    /// Which host this is.
    pub kind: HostKind,
    /// What a CAS token of 0 means.
    pub cas: CasSemantics,
    /// Whether the host accepts a dispatch made from inside a dispatch's response callback.
    /// The filter never makes one (see [`crate::fetch`]); recorded for the tests and docs.
    pub dispatch_in_response_callback: bool,
    /// Whether the host lets a filter write `:authority` (ngx_wasm_module refuses: it is
    /// read-only there, and reads as the server's own `name:port`).
    pub authority_writable: bool,
    /// Headers holding the client's `Host`, in the order tried: ngx_wasm_module answers
    /// `:authority` with the server's own `server_name:port`, the client's is in `host`;
    /// Envoy turns `Host` into `:authority` and has no `host` header.
    pub host_headers: &'static [&'static str],
    /// Where the client's request path (with its query) is read, as the client sent it:
    /// ngx_wasm_module's `:path` is nginx's decoded `$uri` (`%20` already a space), its
    /// `request.path` property is `$request_uri`, undecoded.
    pub path: ReadFrom,
    /// The property holding the port the request arrived on (Kong's `server_port`):
    /// ngx_wasm_module's `destination.port` is the PROXY protocol's port, empty without it.
    pub listener_port: &'static [&'static str],
    /// How [`HostProfile::listener_port`] is encoded.
    pub listener_port_encoding: PortEncoding,
    /// Whether `source.address` is `ip:port` (Envoy) or the bare IP (`$remote_addr`).
    pub source_address_has_port: bool,
    /// How the upstream is handed over.
    pub hand_over: HandOver,
    /// Whether a dispatch to an `https://` URL needs `:scheme: https` to use TLS
    /// (ngx_wasm_module); in Envoy the cluster's transport socket decides.
    pub scheme_on_tls_dispatch: bool,
    /// Extra headers of Kong's 426 `Please use HTTPS protocol` answer. Kong sends
    /// `Connection: Upgrade` and `Upgrade: TLS/1.2, HTTP/1.1`; ngx_wasm_module turns a
    /// `Connection: upgrade` response header into status 101, so there it is left out.
    pub https_required_headers: &'static [(&'static str, &'static str)],
    /// Whether the filter may change its tick period after setting it: Envoy takes a new
    /// period at any time; ngx_wasm_module traps ("tick_period already set"). A worker with a
    /// new config to compile ticks faster where it can (see [`crate::generation`]).
    pub tick_period_changeable: bool,
}

const UPGRADE: (&str, &str) = ("upgrade", "TLS/1.2, HTTP/1.1");

/// Envoy 1.40 (V8).
pub static ENVOY: HostProfile = HostProfile {
    kind: HostKind::Envoy,
    cas: CasSemantics::ZeroIsUnconditional,
    dispatch_in_response_callback: true,
    authority_writable: true,
    host_headers: &[":authority"],
    path: ReadFrom::Header(":path"),
    listener_port: &["destination", "port"],
    listener_port_encoding: PortEncoding::LittleEndianI64,
    source_address_has_port: true,
    hand_over: HandOver::EnvoyHeaders,
    scheme_on_tls_dispatch: false,
    https_required_headers: &[("connection", "Upgrade"), UPGRADE],
    tick_period_changeable: true,
};

/// nginx 1.27 with ngx_wasm_module 0.6.
pub static NGINX: HostProfile = NGINX_BASE;

/// Kong Gateway 3.6–3.9 (ngx_wasm_module inside Kong's nginx; its property setters came in 3.6).
pub static KONG: HostProfile = HostProfile {
    kind: HostKind::Kong,
    hand_over: HandOver::KongProperties,
    ..NGINX_BASE
};

/// What Kong shares with stock nginx: everything ngx_wasm_module decides.
const NGINX_BASE: HostProfile = HostProfile {
    kind: HostKind::Nginx,
    cas: CasSemantics::Strict,
    dispatch_in_response_callback: false,
    authority_writable: false,
    host_headers: &["host", ":authority"],
    path: ReadFrom::Property(&["request", "path"]),
    listener_port: &["ngx", "server_port"],
    listener_port_encoding: PortEncoding::DecimalText,
    source_address_has_port: false,
    hand_over: HandOver::NginxVariable,
    scheme_on_tls_dispatch: true,
    https_required_headers: &[UPGRADE],
    tick_period_changeable: false,
};

impl HostProfile {
    /// The listener port in a [`HostProfile::listener_port`] property value; `None` when it is
    /// missing or garbled (the router then uses the scheme's default).
    pub fn listener_port(&self, raw: &[u8]) -> Option<u16> {
        match self.listener_port_encoding {
            PortEncoding::LittleEndianI64 => <[u8; 8]>::try_from(raw)
                .ok()
                .and_then(|b| u16::try_from(i64::from_le_bytes(b)).ok()),
            PortEncoding::DecimalText => std::str::from_utf8(raw)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse().ok()),
        }
    }

    /// The client's IP in a `source.address` value (IPv6 in brackets when a port follows).
    pub fn client_ip(&self, raw: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(raw).ok()?.trim();
        let host = if self.source_address_has_port {
            match text.rsplit_once(':') {
                Some((host, port))
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    host
                }
                _ => text,
            }
        } else {
            text
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse()
            .ok()
    }

    /// The writes that send this request to `target`, in order (three on every host; an array,
    /// not a `Vec`: this runs on every request).
    pub fn hand_over<'a>(
        &self,
        target: &UpstreamTarget<'a>,
        names: &HandOverNames<'a>,
    ) -> [HostWrite<'a>; 3] {
        let header = |name: &'a str, value: &'a str| HostWrite::Header { name, value };
        let property = |path: Vec<&'a str>, value: &'a str| HostWrite::Property { path, value };
        match self.hand_over {
            HandOver::EnvoyHeaders => [
                header(names.upstream_header, target.upstream),
                header(":authority", target.host_header),
                header(":path", target.path),
            ],
            HandOver::NginxVariable => [
                property(vec!["ngx", names.upstream_variable], target.upstream),
                header("host", target.host_header),
                header(":path", target.path),
            ],
            // Kong's set_target also sets $upstream_host to the bare host: ngx.upstream_host
            // comes after it, with the Host Kong would send.
            HandOver::KongProperties => [
                property(vec!["kong", "service", "target"], target.upstream),
                property(vec!["ngx", "upstream_host"], target.host_header),
                property(vec!["ngx", "upstream_uri"], target.path),
            ],
        }
    }

    /// The headers of a dispatch: the pseudo-headers the host needs, then the call's own.
    pub fn dispatch_headers<'r>(&self, request: &'r HttpRequest) -> Vec<(&'r str, &'r str)> {
        let mut headers = vec![
            (":method", request.method.as_str()),
            (":path", request.path.as_str()),
            (":authority", request.authority.as_str()),
        ];
        if request.tls && self.scheme_on_tls_dispatch {
            headers.push((":scheme", "https"));
        }
        headers.extend(
            request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        headers
    }
}

/// One host call changing a response header.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseCall<'a> {
    /// Every value of the header replaced by one (`proxy_replace_header_map_value`).
    Replace(&'a str, &'a str),
    /// Every value removed.
    Remove(&'a str),
    /// One value added.
    Add(&'a str, &'a str),
}

/// The host calls for `edits`, each handed to `call` as it is worked out (nothing collected:
/// this runs on every response): a `Remove` directly followed by an `Add` of the same header is
/// one replace (every host replaces every value: Envoy's `setCopy`, ngx_wasm_module's
/// `HEADERS_SET`), so setting a header costs one call, not two.
pub fn response_calls<'a>(
    edits: impl Iterator<Item = HeaderOp<'a>>,
    mut call: impl FnMut(ResponseCall<'_>),
) {
    let mut ops = edits.peekable();
    while let Some(op) = ops.next() {
        match &op {
            HeaderOp::Remove(name) => match ops.peek() {
                Some(HeaderOp::Add(next, value)) if next == name => {
                    call(ResponseCall::Replace(name, value));
                    ops.next();
                }
                _ => call(ResponseCall::Remove(name)),
            },
            HeaderOp::Add(name, value) => call(ResponseCall::Add(name, value)),
        }
    }
}

/// The proxy-wasm level a filter log line is written at. Every host takes these the same way
/// (ngx_wasm_module writes trace and debug as nginx's `debug`, so nginx's `error_log` needs
/// `info` to show the filter's transitions), so this is not part of a profile. The filter never
/// asks the host for its level: `proxy_get_log_level` traps in ngx_wasm_module.
pub fn proxy_log_level(level: crate::fetch::LogLevel) -> ProxyLogLevel {
    use crate::fetch::LogLevel;
    match level {
        LogLevel::Debug => ProxyLogLevel::Debug,
        LogLevel::Info => ProxyLogLevel::Info,
        LogLevel::Warn => ProxyLogLevel::Warn,
        LogLevel::Error => ProxyLogLevel::Error,
    }
}

#[cfg(test)]
pub(crate) mod sim;

#[cfg(test)]
mod tests;
