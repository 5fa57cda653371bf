//! A small simulated proxy host for native tests: shared data, one request, its response and
//! the dispatcher, each following one host's rules as Envoy 1.40 and ngx_wasm_module 0.6
//! implement them (read in their sources, and observed in a real nginx + ngx_wasm_module):
//!
//! - shared data: [`CasSemantics`] (a token of 0 writes unconditionally in Envoy, only an absent
//!   key in ngx_wasm_module);
//! - request reads: ngx_wasm_module's `:authority` is the server's `server_name:port`, its
//!   `:path` nginx's decoded `$uri`, its `destination.port` the PROXY protocol's (absent
//!   here), its properties strings; Envoy's `:authority` is the client's `Host`, its integer
//!   attributes 8-byte little-endian;
//! - request writes: ngx_wasm_module refuses `:authority` and `set_property` on an nginx
//!   variable that was not declared with `set`; Kong's `kong.service.target` needs
//!   `host:port` and also sets `$upstream_host`;
//! - where the proxy then sends the request: Envoy from the hand-over header and `:authority`;
//!   nginx as `examples/nginx/nginx.conf` says (`proxy_pass http://$<var>$uri$is_args$args`,
//!   `Host $http_host`); Kong as its nginx template says (`$upstream_uri`, `$upstream_host`);
//! - responses: ngx_wasm_module keeps `Content-Type` outside the header list that replacing the
//!   whole map clears, and turns a `Connection: upgrade` header into status 101;
//! - dispatch: ngx_wasm_module crashes the worker on a dispatch made from a dispatch's response
//!   callback; the simulation refuses it.

use super::{CasSemantics, HostKind, HostWrite};
use crate::shared_data::{SharedData, WriteRefused};
use std::collections::HashMap;

/// Shared data with one host's compare-and-swap rule.
#[derive(Debug)]
pub struct SimSharedData {
    semantics: CasSemantics,
    entries: HashMap<String, (Vec<u8>, u32)>,
    /// Another worker's write, applied just before the next write to that key.
    race: Option<(String, Vec<u8>)>,
    refuse: bool,
}

impl SimSharedData {
    /// An empty store with `semantics`.
    pub fn new(semantics: CasSemantics) -> Self {
        Self {
            semantics,
            entries: HashMap::new(),
            race: None,
            refuse: false,
        }
    }

    /// The store of `kind`.
    pub fn of(kind: HostKind) -> Self {
        Self::new(kind.profile().cas)
    }

    /// The rule it follows.
    pub fn semantics(&self) -> CasSemantics {
        self.semantics
    }

    /// Makes another worker write `value` under `key` between the next read and write of it.
    pub fn race_next_write(&mut self, key: &str, value: &[u8]) {
        self.race = Some((key.to_owned(), value.to_vec()));
    }

    /// Makes every write fail as a host refusal (e.g. a full zone).
    pub fn refuse_writes(&mut self, refuse: bool) {
        self.refuse = refuse;
    }

    fn token(&self, key: &str) -> u32 {
        self.entries.get(key).map_or(0, |(_, t)| *t)
    }

    fn store(&mut self, key: &str, value: &[u8]) {
        let token = self.token(key) + 1;
        self.entries.insert(key.to_owned(), (value.to_vec(), token));
    }
}

impl SharedData for SimSharedData {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.entries.get(key) {
            Some((value, token)) => (Some(value.clone()), *token),
            None => (None, 0),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), WriteRefused> {
        if self.refuse {
            return Err(WriteRefused::Host(10));
        }
        if let Some((race_key, race_value)) = self.race.take() {
            if race_key == key {
                self.store(&race_key, &race_value);
            } else {
                self.race = Some((race_key, race_value));
            }
        }
        let current = self.token(key);
        let allowed = match self.semantics {
            CasSemantics::ZeroIsUnconditional => cas == 0 || cas == current,
            CasSemantics::Strict => cas == current,
        };
        if !allowed {
            return Err(WriteRefused::CasMismatch);
        }
        self.store(key, value);
        Ok(())
    }
}

/// What a client sends.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// The `Host` header.
    pub host: &'a str,
    /// The request target as sent (undecoded), query included.
    pub target: &'a str,
    /// The client's address and port.
    pub client: (&'a str, u16),
    /// The port the proxy listens on.
    pub listener_port: u16,
}

/// The nginx `server_name` of the simulated server (what ngx_wasm_module's `:authority` holds).
pub const SERVER_NAME: &str = "localhost";

/// Where the proxy sends a request after the filter ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// `host:port` connected to.
    pub connect: String,
    /// The `Host` header sent.
    pub host: String,
    /// The request target sent.
    pub path: String,
}

/// One request inside one host, as the filter sees it.
#[derive(Debug)]
pub struct SimRequest {
    kind: HostKind,
    headers: Vec<(String, String)>,
    properties: HashMap<String, Vec<u8>>,
    /// Properties a filter may write (dotted paths).
    writable: Vec<String>,
    /// Envoy: the header `set_filter_state` copies into `envoy.upstream.dynamic_host`.
    upstream_header: String,
}

/// nginx's `$uri`: the path decoded (`%XX`), without the query.
fn nginx_uri(target: &str) -> String {
    let path = target.split('?').next().unwrap_or(target);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SimRequest {
    /// `client`'s request arriving in `kind`. `upstream_header` is Envoy's hand-over header;
    /// `declared_variable` the nginx variable the configuration declares with `set` (nginx).
    pub fn new(
        kind: HostKind,
        client: &ClientRequest<'_>,
        upstream_header: &str,
        declared_variable: Option<&str>,
    ) -> Self {
        let mut headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":scheme".to_owned(), "http".to_owned()),
        ];
        let mut properties = HashMap::new();
        let mut writable = Vec::new();
        let (ip, port) = client.client;
        match kind {
            HostKind::Envoy => {
                headers.push((":authority".into(), client.host.into()));
                headers.push((":path".into(), client.target.into()));
                properties.insert(
                    "destination.port".into(),
                    i64::from(client.listener_port).to_le_bytes().to_vec(),
                );
                let address = if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                };
                properties.insert("source.address".into(), address.into_bytes());
            }
            HostKind::Nginx | HostKind::Kong => {
                headers.push((
                    ":authority".into(),
                    format!("{SERVER_NAME}:{}", client.listener_port),
                ));
                let query = client
                    .target
                    .split_once('?')
                    .map_or(String::new(), |(_, q)| format!("?{q}"));
                headers.push((
                    ":path".into(),
                    format!("{}{query}", nginx_uri(client.target)),
                ));
                headers.push(("host".into(), client.host.into()));
                properties.insert("request.path".into(), client.target.as_bytes().to_vec());
                properties.insert(
                    "ngx.server_port".into(),
                    client.listener_port.to_string().into_bytes(),
                );
                properties.insert("source.address".into(), ip.as_bytes().to_vec());
                if let Some(var) = declared_variable {
                    writable.push(format!("ngx.{var}"));
                }
                if kind == HostKind::Kong {
                    // Declared by Kong's nginx template, handled by kong/runloop/wasm.lua.
                    for path in [
                        "ngx.upstream_host",
                        "ngx.upstream_uri",
                        "kong.service.target",
                    ] {
                        writable.push(path.to_owned());
                    }
                }
            }
        }
        Self {
            kind,
            headers,
            properties,
            writable,
            upstream_header: upstream_header.to_owned(),
        }
    }

    /// A request header as the host answers `get_http_request_header`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// A property as the host answers `get_property`.
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }

    /// One write of the filter; `Err` with the host's reaction when it refuses.
    pub fn write(&mut self, write: &HostWrite<'_>) -> Result<(), String> {
        match write {
            HostWrite::Header { name, value } => {
                if self.kind != HostKind::Envoy && name.eq_ignore_ascii_case(":authority") {
                    return Err("cannot set read-only \":authority\" header".into());
                }
                self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                self.headers.push(((*name).to_owned(), (*value).to_owned()));
                Ok(())
            }
            HostWrite::Property { path, value } => {
                let dotted = path.join(".");
                if !self.writable.contains(&dotted) {
                    // What the SDK's set_property turns into a panic: status 1 (NotFound).
                    return Err(format!("set_property {dotted}: not found (status 1)"));
                }
                if dotted == "kong.service.target" {
                    let (host, _port) = value
                        .rsplit_once(':')
                        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                        .ok_or_else(|| format!("kong.service.target {value:?}: not host:port"))?;
                    // kong.service.set_target also sets $upstream_host to the bare host.
                    self.properties
                        .insert("ngx.upstream_host".into(), host.as_bytes().to_vec());
                }
                self.properties.insert(dotted, value.as_bytes().to_vec());
                Ok(())
            }
        }
    }

    /// Where the proxy sends the request now.
    pub fn proxied(&self) -> Result<Proxied, String> {
        let text = |path: &str| {
            self.properties
                .get(path)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{path} is empty"))
        };
        let header = |name: &str| self.header(name).ok_or_else(|| format!("no {name} header"));
        match self.kind {
            HostKind::Envoy => Ok(Proxied {
                connect: header(&self.upstream_header)?,
                host: header(":authority")?,
                path: header(":path")?,
            }),
            HostKind::Nginx => {
                let var = self
                    .writable
                    .first()
                    .ok_or("no upstream variable declared")?;
                Ok(Proxied {
                    connect: text(var)?,
                    host: header("host")?,
                    path: header(":path")?,
                })
            }
            HostKind::Kong => Ok(Proxied {
                connect: text("kong.service.target")?,
                host: text("ngx.upstream_host")?,
                path: text("ngx.upstream_uri")?,
            }),
        }
    }
}

/// A response inside one host, as `on_http_response_headers` and local responses see it.
#[derive(Debug)]
pub struct SimResponse {
    kind: HostKind,
    /// The header list (ngx_wasm_module: `headers_out.headers`).
    list: Vec<(String, String)>,
    /// ngx_wasm_module: `headers_out.content_type`, shown in the map as a "shim" header.
    content_type: Option<String>,
    /// The status sent.
    pub status: u16,
}

impl SimResponse {
    /// An upstream response with these headers (`content-type` among them).
    pub fn new(kind: HostKind, status: u16, headers: &[(&str, &str)]) -> Self {
        let mut response = Self {
            kind,
            list: Vec::new(),
            content_type: None,
            status,
        };
        for (name, value) in headers {
            response.add(name, value);
        }
        response
    }

    /// A local response (`send_http_response`) with these headers.
    pub fn local(kind: HostKind, status: u16, headers: &[(&str, &str)]) -> Self {
        let mut response = Self::new(kind, status, &[]);
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("connection") {
                match kind {
                    // ngx_http_wasm_set_connection_header_handler.
                    HostKind::Nginx | HostKind::Kong
                        if value.to_ascii_lowercase().contains("upgrade") =>
                    {
                        response.status = 101;
                    }
                    // Hop-by-hop: Envoy's codec drops it.
                    _ => {}
                }
                continue;
            }
            response.add(name, value);
        }
        response
    }

    fn is_content_type(&self, name: &str) -> bool {
        self.kind != HostKind::Envoy && name.eq_ignore_ascii_case("content-type")
    }

    /// The whole map, as `get_http_response_headers` returns it.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut all = self.list.clone();
        if let Some(ct) = &self.content_type {
            all.push(("Content-Type".into(), ct.clone()));
        }
        all
    }

    /// `add_http_response_header`.
    pub fn add(&mut self, name: &str, value: &str) {
        if self.is_content_type(name) {
            self.content_type = Some(value.to_owned());
        } else {
            self.list.push((name.to_owned(), value.to_owned()));
        }
    }

    /// `remove_http_response_header`.
    pub fn remove(&mut self, name: &str) {
        if self.is_content_type(name) {
            self.content_type = None;
        } else {
            self.list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    }

    /// `set_http_response_headers`: ngx_wasm_module clears the list and sets each pair, so a
    /// `Content-Type` absent from `headers` stays.
    pub fn replace_all(&mut self, headers: &[(String, String)]) {
        self.list.clear();
        if self.kind == HostKind::Envoy {
            self.content_type = None;
        }
        for (name, value) in headers {
            self.add(name, value);
        }
    }
}

/// The host's dispatcher: knows whether it is inside a dispatch's response callback.
#[derive(Debug)]
pub struct SimDispatcher {
    kind: HostKind,
    /// Set while the filter's `on_http_call_response` runs.
    pub in_response_callback: bool,
    /// The header lists of the calls made.
    pub sent: Vec<Vec<(String, String)>>,
}

impl SimDispatcher {
    /// The dispatcher of `kind`.
    pub fn new(kind: HostKind) -> Self {
        Self {
            kind,
            in_response_callback: false,
            sent: Vec::new(),
        }
    }

    /// `dispatch_http_call`; `Err` when the host refuses (or, in ngx_wasm_module, would crash).
    pub fn dispatch(&mut self, headers: &[(&str, &str)]) -> Result<(), String> {
        if self.in_response_callback && !self.kind.profile().dispatch_in_response_callback {
            return Err(
                "dispatch from on_http_call_response: ngx_wasm_module 0.6 crashes the worker \
                 (ngx_alloc_chain_link(pool=0x0))"
                    .into(),
            );
        }
        for required in [":method", ":path", ":authority"] {
            if !headers.iter().any(|(n, _)| *n == required) {
                return Err(format!("dispatch without {required}"));
            }
        }
        self.sent.push(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Ok(())
    }
}
