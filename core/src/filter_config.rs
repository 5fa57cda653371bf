//! The filter's plugin configuration: which upstream answers for each party (control plane,
//! companion, storage), how often to poll, when to fall back.
//!
//! Parsing never stops at the first mistake: every problem comes back at its JSON path
//! (`companion.token: required`), an unknown key gets a "did you mean" when it is close to a known
//! one, and the companion token's value never appears in an error or in `Debug` output.

use crate::document::Problem;
use crate::freshness::StalePolicy;
use crate::host::HostKind;
use crate::signature::PublicKey;
use crate::wire::SIGNER_PATH;
use serde_json::{Map, Value};
use std::fmt;

/// `control_plane.path` when not given.
pub const DEFAULT_CP_PATH: &str = "/config";
/// Every `timeout_ms` but storage's, when not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// `storage.timeout_ms` when not given.
pub const DEFAULT_STORAGE_TIMEOUT_MS: u64 = 5_000;
/// `poll_interval_ms` when not given.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 5_000;
/// `fallback_refresh_interval_ms` when not given.
pub const DEFAULT_FALLBACK_REFRESH_INTERVAL_MS: u64 = 30_000;
/// `cp_failure_threshold` when not given.
pub const DEFAULT_CP_FAILURE_THRESHOLD: u32 = 3;
/// `retry_initial_ms` when not given.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 1_000;
/// `retry_max_ms` when not given.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// `tick_ms` when not given.
pub const DEFAULT_TICK_MS: u64 = 500;
/// The shortest `tick_ms` accepted: a faster tick only burns CPU in every worker.
pub const MIN_TICK_MS: u64 = 50;
/// `leader_lease_ms` when not given.
pub const DEFAULT_LEADER_LEASE_MS: u64 = 5_000;
/// `upstream_header` when not given.
pub const DEFAULT_UPSTREAM_HEADER: &str = "x-fallback-upstream";
/// `upstream_variable` when not given.
pub const DEFAULT_UPSTREAM_VARIABLE: &str = "fallback_upstream";

/// The filter's configuration, parsed and checked. Build it with [`FilterConfig::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// The proxy the filter runs in (`"host"`): how it reads the request and hands the
    /// upstream over ([`crate::host::HostProfile`]). Default: Envoy.
    pub host: HostKind,
    /// The `<version>` of `<prefix>/<version>/config.json` to import (Kong: its node version).
    pub version: String,
    /// Where to poll the live configuration; `None`: the filter runs on storage only.
    pub control_plane: Option<ControlPlaneConfig>,
    /// The companion's signer role, which hands out signed storage URLs.
    pub companion: CompanionConfig,
    /// Further signers, tried in order when `companion` fails (`companion` given as a list:
    /// its first entry is `companion`, the rest are these).
    pub backup_companions: Vec<CompanionConfig>,
    /// The object storage the signed URLs point at.
    pub storage: StorageConfig,
    /// How often the control plane is polled, also while on the fallback config.
    pub poll_interval_ms: u64,
    /// While on the fallback config, how often storage is checked for a newer export.
    pub fallback_refresh_interval_ms: u64,
    /// Consecutive control plane failures before falling back (at least 1). With no config at
    /// all yet, the first failure already falls back.
    pub cp_failure_threshold: u32,
    /// First delay before retrying a failed import.
    pub retry_initial_ms: u64,
    /// Longest delay between import retries.
    pub retry_max_ms: u64,
    /// The host tick period (at least [`MIN_TICK_MS`]).
    pub tick_ms: u64,
    /// How long a worker's fetch leadership lasts without renewal (more than two ticks).
    pub leader_lease_ms: u64,
    /// Envoy: the request header through which the chosen upstream is handed to the host.
    pub upstream_header: String,
    /// nginx: the variable (declared with `set`, used by `proxy_pass`) that receives the
    /// chosen upstream, without `$`.
    pub upstream_variable: String,
    /// Whether a request may ask for routing details through a debug header.
    pub allow_debug_header: bool,
    /// Kong plugins the filter does not implement that may be ignored instead of refusing the
    /// requests they apply to with 500 (e.g. `["prometheus", "zipkin"]`). Default: none.
    pub ignore_unsupported_plugins: Vec<String>,
    /// Refuse the requests observe-only plugins (metrics, logs, traces:
    /// [`crate::plugins::OBSERVE_ONLY`]) apply to, instead of skipping those plugins. Default:
    /// false.
    pub refuse_observe_only_plugins: bool,
    /// When not empty, an export is imported only with a valid Ed25519 signature over its
    /// manifest by one of these keys (see [`crate::signature`]); control plane documents are not
    /// signed and not checked. From `public_keys` (a list) and `public_key` (one key, kept as
    /// an alias), in that order, without duplicates.
    pub public_keys: Vec<PublicKey>,
    /// Versions whose export may be imported, in order, when the signer has none for
    /// `version` (a data plane one release ahead starting from the previous release's export).
    pub accept_versions: Vec<String>,
    /// The staleness budget of a fallback config, from its export time; `None`: no budget.
    pub max_fallback_age_ms: Option<u64>,
    /// What to do with a fallback config past `max_fallback_age_ms` (default: serve it).
    pub stale_policy: StalePolicy,
    /// A request path the filter answers itself with its readiness ([`crate::freshness`]),
    /// never proxied; `None`: no such path.
    pub health_path: Option<String>,
}

/// The control plane's config endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPlaneConfig {
    /// Envoy cluster name, or `host:port` in Kong's ngx_wasm_module.
    pub upstream: String,
    /// `:authority` sent.
    pub authority: String,
    /// `:path` of the config endpoint (default [`DEFAULT_CP_PATH`]).
    pub path: String,
    /// How long the host waits for an answer.
    pub timeout_ms: u64,
    /// Sent as `Authorization: Bearer <token>` when set: the companion's `GET /v1/config`
    /// wants one. Never logged: `Debug` shows it redacted.
    pub token: Option<String>,
}

impl fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("upstream", &self.upstream)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("timeout_ms", &self.timeout_ms)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The companion's signer endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct CompanionConfig {
    /// Envoy cluster name, or `host:port` in Kong's ngx_wasm_module.
    pub upstream: String,
    /// `:authority` sent.
    pub authority: String,
    /// `:path` of the signer API (default [`SIGNER_PATH`]); `?version=` is appended.
    pub path: String,
    /// Sent as `Authorization: Bearer <token>`. Never logged: `Debug` shows it redacted.
    pub token: String,
    /// How long the host waits for an answer.
    pub timeout_ms: u64,
}

impl fmt::Debug for CompanionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompanionConfig")
            .field("upstream", &self.upstream)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The object storage; `:authority` and `:path` come from each signed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Envoy cluster name, or `host:port` in Kong's ngx_wasm_module.
    pub upstream: String,
    /// How long the host waits for the object.
    pub timeout_ms: u64,
}

/// Everything wrong with a filter configuration, each problem at its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_report(.problems))]
pub struct FilterConfigError {
    /// The problems, never empty.
    pub problems: Vec<Problem>,
}

fn render_report(problems: &[Problem]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut out = format!(
        "filter configuration is invalid ({} {noun}):",
        problems.len()
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

const TOP_KEYS: &[&str] = &[
    "version",
    "host",
    "control_plane",
    "companion",
    "storage",
    "poll_interval_ms",
    "fallback_refresh_interval_ms",
    "cp_failure_threshold",
    "retry_initial_ms",
    "retry_max_ms",
    "tick_ms",
    "leader_lease_ms",
    "upstream_header",
    "upstream_variable",
    "allow_debug_header",
    "ignore_unsupported_plugins",
    "refuse_observe_only_plugins",
    "public_key",
    "public_keys",
    "max_fallback_age_ms",
    "stale_policy",
    "health_path",
    "accept_versions",
];
const CP_KEYS: &[&str] = &["upstream", "authority", "path", "timeout_ms", "token"];
const COMPANION_KEYS: &[&str] = &["upstream", "authority", "path", "token", "timeout_ms"];
const STORAGE_KEYS: &[&str] = &["upstream", "timeout_ms"];

impl FilterConfig {
    /// How the filter's plugin engine treats the plugins it does not implement.
    pub fn plugin_policy(&self) -> crate::plugins::PluginPolicy {
        crate::plugins::PluginPolicy {
            ignore: self.ignore_unsupported_plugins.clone(),
            refuse_observe_only: self.refuse_observe_only_plugins,
        }
    }

    /// Parses and checks the plugin configuration JSON; `Err` lists every problem found.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, FilterConfigError> {
        let mut r = Reader::default();
        let config = r.config(bytes);
        match config {
            Some(config) if r.problems.is_empty() => Ok(config),
            _ => Err(FilterConfigError {
                problems: r.problems,
            }),
        }
    }
}

/// Collects problems while reading; each reader method returns a usable value even after a
/// problem (a default), so reading carries on and reports everything.
#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn config(&mut self, bytes: &[u8]) -> Option<FilterConfig> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            self.problem(
                "$",
                "the filter configuration is empty: give the plugin a JSON object with at least \
                 \"version\", \"companion\" and \"storage\"",
            );
            return None;
        }
        let root = match crate::json::from_slice(bytes) {
            Ok(root) => root,
            Err(crate::json::StrictError::Syntax(err)) => {
                self.problem(
                    "$",
                    format!("{err}: the filter configuration must be a JSON object"),
                );
                return None;
            }
            Err(err) => {
                self.problem(err.path(), err.message());
                return None;
            }
        };
        let Some(root) = root.as_object() else {
            self.problem(
                "$",
                format!("expected a JSON object, got {}", kind_of(&root)),
            );
            return None;
        };
        self.unknown_keys(root, "", TOP_KEYS);

        let host = match self.string(root, "", "host") {
            None => HostKind::default(),
            Some(name) => HostKind::parse(&name).unwrap_or_else(|| {
                let names: Vec<&str> = HostKind::ALL.iter().map(|k| k.as_str()).collect();
                self.problem(
                    "host",
                    format!(
                        "unknown host {name:?}: use one of {} (the proxy this filter runs in)",
                        names.join(", ")
                    ),
                );
                HostKind::default()
            }),
        };
        let version = self.required_string(root, "", "version");
        if let Some(v) = &version {
            if crate::export::object_key("", v).is_err() {
                self.problem(
                    "version",
                    format!(
                        "{v:?} cannot name an object: use a plain version string such as \
                         \"3.4.1.0\" (no '/', '\\', whitespace, \".\" or \"..\")"
                    ),
                );
            }
        }
        let control_plane = match root.get("control_plane") {
            None | Some(Value::Null) => None,
            Some(value) => self.control_plane(value),
        };
        let mut backup_companions = Vec::new();
        let companion = match root.get("companion") {
            None | Some(Value::Null) => {
                self.problem(
                    "companion",
                    "required: the companion's signer endpoint (upstream, authority, token)",
                );
                None
            }
            Some(Value::Array(items)) if items.is_empty() => {
                self.problem(
                    "companion",
                    "must list at least one companion signer endpoint",
                );
                None
            }
            Some(Value::Array(items)) => {
                let mut all: Vec<Option<CompanionConfig>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.companion(item, &format!("companion[{i}]")))
                    .collect();
                let first = all.remove(0);
                backup_companions = all.into_iter().flatten().collect();
                first
            }
            Some(value) => self.companion(value, "companion"),
        };
        let storage = match root.get("storage") {
            None | Some(Value::Null) => {
                self.problem(
                    "storage",
                    "required: the storage upstream the signed URLs point at",
                );
                None
            }
            Some(value) => self.storage(value),
        };

        let poll_interval_ms =
            self.positive_ms(root, "", "poll_interval_ms", DEFAULT_POLL_INTERVAL_MS);
        let fallback_refresh_interval_ms = self.positive_ms(
            root,
            "",
            "fallback_refresh_interval_ms",
            DEFAULT_FALLBACK_REFRESH_INTERVAL_MS,
        );
        let threshold = self.integer(root, "", "cp_failure_threshold");
        let cp_failure_threshold = match threshold {
            None => DEFAULT_CP_FAILURE_THRESHOLD,
            Some(0) => {
                self.problem("cp_failure_threshold", "must be at least 1, got 0");
                DEFAULT_CP_FAILURE_THRESHOLD
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    self.problem(
                        "cp_failure_threshold",
                        format!("must be at most {}, got {n}", u32::MAX),
                    );
                    DEFAULT_CP_FAILURE_THRESHOLD
                }
            },
        };
        let retry_initial_ms =
            self.positive_ms(root, "", "retry_initial_ms", DEFAULT_RETRY_INITIAL_MS);
        let retry_max_ms = self.positive_ms(root, "", "retry_max_ms", DEFAULT_RETRY_MAX_MS);
        if retry_max_ms < retry_initial_ms {
            self.problem(
                "retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({retry_initial_ms}), got {retry_max_ms}"
                ),
            );
        }
        let tick_ms = match self.integer(root, "", "tick_ms") {
            None => DEFAULT_TICK_MS,
            Some(n) if n < MIN_TICK_MS => {
                self.problem(
                    "tick_ms",
                    format!("must be at least {MIN_TICK_MS}, got {n}"),
                );
                DEFAULT_TICK_MS
            }
            Some(n) => n,
        };
        let leader_lease_ms =
            self.positive_ms(root, "", "leader_lease_ms", DEFAULT_LEADER_LEASE_MS);
        if leader_lease_ms <= tick_ms.saturating_mul(2) {
            self.problem(
                "leader_lease_ms",
                format!(
                    "must be more than twice tick_ms ({tick_ms}), so a live leader renews its \
                     lease in time; got {leader_lease_ms}"
                ),
            );
        }
        let upstream_header = match self.string(root, "", "upstream_header") {
            None => DEFAULT_UPSTREAM_HEADER.to_owned(),
            Some(name) => {
                if let Some(why) = header_name_problem(&name) {
                    self.problem("upstream_header", why);
                }
                name
            }
        };
        let upstream_variable = match self.string(root, "", "upstream_variable") {
            None => DEFAULT_UPSTREAM_VARIABLE.to_owned(),
            Some(name) => {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    self.problem(
                        "upstream_variable",
                        format!(
                            "{name:?} is not an nginx variable name: letters, digits and '_' \
                             only, without the '$'"
                        ),
                    );
                }
                name
            }
        };
        let allow_debug_header = self.flag(root, "allow_debug_header");
        let ignore_unsupported_plugins = self.plugin_names(root, "ignore_unsupported_plugins");
        let refuse_observe_only_plugins = self.flag(root, "refuse_observe_only_plugins");
        let mut public_keys = Vec::new();
        match root.get("public_keys") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(key) = self.public_key(item, &format!("public_keys[{i}]")) {
                        if !public_keys.contains(&key) {
                            public_keys.push(key);
                        }
                    }
                }
            }
            Some(other) => self.problem(
                "public_keys",
                format!(
                    "expected an array of public keys (base64 or PEM), got {}",
                    kind_of(other)
                ),
            ),
        }
        if let Some(value) = root.get("public_key").filter(|v| !v.is_null()) {
            if let Some(key) = self.public_key(value, "public_key") {
                if !public_keys.contains(&key) {
                    public_keys.push(key);
                }
            }
        }

        let max_fallback_age_ms = match root.get("max_fallback_age_ms") {
            None | Some(Value::Null) => None,
            Some(_) => Some(self.positive_ms(root, "", "max_fallback_age_ms", 0)),
        };
        let stale_policy = match self.string(root, "", "stale_policy") {
            None => StalePolicy::default(),
            Some(text) => StalePolicy::parse(&text).unwrap_or_else(|| {
                self.problem(
                    "stale_policy",
                    format!("unknown policy {text:?}: use \"serve\" or \"fail_closed\""),
                );
                StalePolicy::default()
            }),
        };
        if stale_policy == StalePolicy::FailClosed && max_fallback_age_ms.is_none() {
            self.problem(
                "stale_policy",
                "\"fail_closed\" needs max_fallback_age_ms: the budget past which a fallback \
                 config is refused",
            );
        }
        let accept_versions = self.accept_versions(root, version.as_deref());
        let health_path = self.string(root, "", "health_path");
        if let Some(path) = &health_path {
            if !path.starts_with('/') || path.bytes().any(|b| !b.is_ascii_graphic() || b == b'?') {
                self.problem(
                    "health_path",
                    format!(
                        "{path:?} is not a request path: give one starting with '/', without a \
                         query or spaces (e.g. \"/.fallback/ready\")"
                    ),
                );
            }
        }

        Some(FilterConfig {
            host,
            version: version?,
            control_plane,
            companion: companion?,
            backup_companions,
            storage: storage?,
            poll_interval_ms,
            fallback_refresh_interval_ms,
            cp_failure_threshold,
            retry_initial_ms,
            retry_max_ms,
            tick_ms,
            leader_lease_ms,
            upstream_header,
            upstream_variable,
            allow_debug_header,
            ignore_unsupported_plugins,
            refuse_observe_only_plugins,
            public_keys,
            max_fallback_age_ms,
            stale_policy,
            health_path,
            accept_versions,
        })
    }

    /// `true` or `false`; absent means false.
    fn flag(&mut self, map: &Map<String, Value>, key: &str) -> bool {
        match map.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected true or false, got {}", kind_of(other)),
                );
                false
            }
        }
    }

    /// `accept_versions`: plain version strings, without `version` itself or duplicates.
    fn accept_versions(&mut self, root: &Map<String, Value>, version: Option<&str>) -> Vec<String> {
        let items = match root.get("accept_versions") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    "accept_versions",
                    format!("expected an array of versions, got {}", kind_of(other)),
                );
                return Vec::new();
            }
        };
        let mut versions: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("accept_versions[{i}]");
            match item.as_str() {
                Some(v) if crate::export::object_key("", v).is_err() => self.problem(
                    path,
                    format!("{v:?} cannot name an object: use a plain version string such as \"3.4.1.0\""),
                ),
                Some(v) if Some(v) == version || versions.iter().any(|known| known == v) => {}
                Some(v) => versions.push(v.to_owned()),
                None => self.problem(path, format!("expected a version string, got {}", kind_of(item))),
            }
        }
        versions
    }

    /// One Ed25519 public key at `path`.
    fn public_key(&mut self, value: &Value, path: &str) -> Option<PublicKey> {
        match value {
            Value::String(text) => match PublicKey::parse(text) {
                Ok(key) => Some(key),
                Err(why) => {
                    self.problem(
                        path,
                        format!(
                            "{why}: give the exporter's Ed25519 public key as base64 of its 32 \
                             bytes or as the PEM block `openssl pkey -pubout` prints"
                        ),
                    );
                    None
                }
            },
            other => {
                self.problem(
                    path,
                    format!("expected a string (base64 or PEM), got {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// A list of plugin names; a plugin the filter implements cannot be ignored.
    fn plugin_names(&mut self, map: &Map<String, Value>, key: &str) -> Vec<String> {
        let items = match map.get(key) {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected an array of plugin names, got {}", kind_of(other)),
                );
                return Vec::new();
            }
        };
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(name)
                    if crate::plugins::SUPPORTED
                        .iter()
                        .any(|(supported, _)| *supported == name) =>
                {
                    self.problem(
                        format!("{key}[{i}]"),
                        format!("{name:?} is enforced by the filter and cannot be ignored"),
                    );
                }
                Some("") => self.problem(format!("{key}[{i}]"), "must not be empty"),
                Some(name) => names.push(name.to_owned()),
                None => self.problem(
                    format!("{key}[{i}]"),
                    format!("expected a plugin name, got {}", kind_of(item)),
                ),
            }
        }
        names
    }

    fn control_plane(&mut self, value: &Value) -> Option<ControlPlaneConfig> {
        let map = self.object(value, "control_plane")?;
        self.unknown_keys(map, "control_plane", CP_KEYS);
        let upstream = self.upstream(map, "control_plane");
        let authority = self.authority(map, "control_plane");
        let path = self.path(map, "control_plane", DEFAULT_CP_PATH);
        let timeout_ms = self.positive_ms(map, "control_plane", "timeout_ms", DEFAULT_TIMEOUT_MS);
        let token = match map.get("token") {
            None | Some(Value::Null) => Some(None),
            Some(_) => self.token(map, "control_plane").map(Some),
        };
        Some(ControlPlaneConfig {
            upstream: upstream?,
            authority: authority?,
            path,
            timeout_ms,
            token: token?,
        })
    }

    /// `<section>.token`: a bearer token. Its value is never part of a message, not even when
    /// it has the wrong type.
    fn token(&mut self, map: &Map<String, Value>, section: &str) -> Option<String> {
        let field = format!("{section}.token");
        match map.get("token") {
            None | Some(Value::Null) => {
                self.problem(
                    &field,
                    "required: the bearer token the companion's signer role accepts",
                );
                None
            }
            Some(Value::String(token)) if token.is_empty() => {
                self.problem(&field, "must not be empty");
                None
            }
            Some(Value::String(token)) => {
                if token.bytes().any(|b| !b.is_ascii_graphic()) {
                    self.problem(
                        &field,
                        "must be printable ASCII without spaces (it is sent in an HTTP header); \
                         value not shown",
                    );
                    None
                } else {
                    Some(token.clone())
                }
            }
            Some(other) => {
                self.problem(&field, format!("expected a string, got {}", kind_of(other)));
                None
            }
        }
    }

    fn companion(&mut self, value: &Value, at: &str) -> Option<CompanionConfig> {
        let map = self.object(value, at)?;
        self.unknown_keys(map, at, COMPANION_KEYS);
        let upstream = self.upstream(map, at);
        let authority = self.authority(map, at);
        let path = self.path(map, at, SIGNER_PATH);
        let token = self.token(map, at);
        let timeout_ms = self.positive_ms(map, at, "timeout_ms", DEFAULT_TIMEOUT_MS);
        Some(CompanionConfig {
            upstream: upstream?,
            authority: authority?,
            path,
            token: token?,
            timeout_ms,
        })
    }

    fn storage(&mut self, value: &Value) -> Option<StorageConfig> {
        let map = self.object(value, "storage")?;
        self.unknown_keys(map, "storage", STORAGE_KEYS);
        let upstream = self.upstream(map, "storage");
        let timeout_ms = self.positive_ms(map, "storage", "timeout_ms", DEFAULT_STORAGE_TIMEOUT_MS);
        Some(StorageConfig {
            upstream: upstream?,
            timeout_ms,
        })
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value.as_object() {
            Some(map) => Some(map),
            None => {
                self.problem(
                    path,
                    format!("expected a JSON object, got {}", kind_of(value)),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, map: &Map<String, Value>, parent: &str, known: &[&str]) {
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let path = if parent.is_empty() {
                "$".to_owned()
            } else {
                parent.to_owned()
            };
            let message = match closest(key, known) {
                Some(near) => format!("unknown field {key:?} (did you mean {near:?}?)"),
                None => format!("unknown field {key:?} (known: {})", known.join(", ")),
            };
            self.problem(path, message);
        }
    }

    fn string(&mut self, map: &Map<String, Value>, parent: &str, key: &str) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    join(parent, key),
                    format!("expected a string, got {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn required_string(
        &mut self,
        map: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Option<String> {
        let present = matches!(map.get(key), Some(v) if !v.is_null());
        let value = self.string(map, parent, key);
        match value {
            Some(s) if s.trim().is_empty() => {
                self.problem(join(parent, key), "must not be empty");
                None
            }
            Some(s) => Some(s),
            None => {
                if !present {
                    self.problem(join(parent, key), "required");
                }
                None
            }
        }
    }

    fn upstream(&mut self, map: &Map<String, Value>, parent: &str) -> Option<String> {
        let value = self.required_string(map, parent, "upstream")?;
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                join(parent, "upstream"),
                format!(
                    "{value:?} must not contain whitespace: give an Envoy cluster name \
                     (or host:port in Kong)"
                ),
            );
            return None;
        }
        Some(value)
    }

    fn authority(&mut self, map: &Map<String, Value>, parent: &str) -> Option<String> {
        let value = self.required_string(map, parent, "authority")?;
        if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
        {
            self.problem(
                join(parent, "authority"),
                format!("{value:?} is not a host[:port] (no scheme, path or spaces)"),
            );
            return None;
        }
        Some(value)
    }

    fn path(&mut self, map: &Map<String, Value>, parent: &str, default: &str) -> String {
        match self.string(map, parent, "path") {
            None => default.to_owned(),
            Some(p) if !p.starts_with('/') => {
                self.problem(join(parent, "path"), format!("{p:?} must start with '/'"));
                default.to_owned()
            }
            Some(p) if p.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                self.problem(
                    join(parent, "path"),
                    format!("{p:?} must not contain whitespace"),
                );
                default.to_owned()
            }
            Some(p) => p,
        }
    }

    fn integer(&mut self, map: &Map<String, Value>, parent: &str, key: &str) -> Option<u64> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => Some(n),
                None => {
                    self.problem(
                        join(parent, key),
                        format!("expected a whole number of at least 0, got {n}"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    join(parent, key),
                    format!("expected a whole number, got {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn positive_ms(
        &mut self,
        map: &Map<String, Value>,
        parent: &str,
        key: &str,
        default: u64,
    ) -> u64 {
        match self.integer(map, parent, key) {
            None => default,
            Some(0) => {
                self.problem(join(parent, key), "must be greater than 0, got 0");
                default
            }
            Some(n) => n,
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why `name` cannot be the upstream header, if it cannot.
fn header_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(is_tchar) {
        return Some(format!(
            "{name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!(
            "{name:?} must be lowercase (HTTP/2 header names are): use {:?}",
            name.to_ascii_lowercase()
        ));
    }
    None
}

/// The known key closest to `key`, when it is close enough to be a likely typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            row[j + 1] = substitution.min(previous[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut previous, &mut row);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "s3cr3t-t0ken";

    fn minimal() -> Value {
        json!({
            "version": "3.4.1.0",
            "companion": {"upstream": "fallback_companion", "authority": "companion:8280", "token": TOKEN},
            "storage": {"upstream": "fallback_storage"}
        })
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base.as_object_mut().unwrap().insert(key.into(), value);
        base
    }

    fn parse(value: &Value) -> Result<FilterConfig, FilterConfigError> {
        FilterConfig::parse(value.to_string().as_bytes())
    }

    fn problems(value: &Value) -> Vec<String> {
        match parse(value) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn assert_problem(value: &Value, expected: &str) {
        let found = problems(value);
        assert!(
            found.iter().any(|p| p == expected),
            "expected {expected:?} in {found:#?}"
        );
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.version, "3.4.1.0");
        assert_eq!(c.control_plane, None);
        assert_eq!(c.companion.path, SIGNER_PATH);
        assert_eq!(c.companion.timeout_ms, 2_000);
        assert_eq!(c.storage.timeout_ms, 5_000);
        assert_eq!(c.poll_interval_ms, 5_000);
        assert_eq!(c.fallback_refresh_interval_ms, 30_000);
        assert_eq!(c.cp_failure_threshold, 3);
        assert_eq!((c.retry_initial_ms, c.retry_max_ms), (1_000, 30_000));
        assert_eq!((c.tick_ms, c.leader_lease_ms), (500, 5_000));
        assert_eq!(c.upstream_header, "x-fallback-upstream");
        assert_eq!(c.host, HostKind::Envoy);
        assert_eq!(c.upstream_variable, "fallback_upstream");
        assert!(!c.allow_debug_header);
        assert!(c.ignore_unsupported_plugins.is_empty());
        assert!(!c.refuse_observe_only_plugins);
        assert_eq!(c.plugin_policy(), crate::plugins::PluginPolicy::default());
        assert!(c.public_keys.is_empty());
    }

    #[test]
    fn full_config_is_read() {
        let value = json!({
            "version": "3.4.1.0",
            "control_plane": {"upstream": "fallback_cp", "authority": "cp.internal:8001", "path": "/v2/config", "timeout_ms": 1500},
            "companion": {"upstream": "127.0.0.1:8280", "authority": "companion:8280", "path": "/signer", "token": TOKEN, "timeout_ms": 900},
            "storage": {"upstream": "fallback_storage", "timeout_ms": 7000},
            "poll_interval_ms": 1000,
            "fallback_refresh_interval_ms": 10000,
            "cp_failure_threshold": 1,
            "retry_initial_ms": 200, "retry_max_ms": 2000,
            "tick_ms": 50,
            "leader_lease_ms": 101,
            "upstream_header": "x-up",
            "allow_debug_header": true,
            "ignore_unsupported_plugins": ["jwt"],
            "refuse_observe_only_plugins": true
        });
        let c = parse(&value).unwrap();
        assert_eq!(
            c.control_plane,
            Some(ControlPlaneConfig {
                upstream: "fallback_cp".into(),
                authority: "cp.internal:8001".into(),
                path: "/v2/config".into(),
                timeout_ms: 1500,
                token: None,
            })
        );
        assert_eq!(c.companion.upstream, "127.0.0.1:8280");
        assert_eq!(c.companion.path, "/signer");
        assert_eq!(c.companion.token, TOKEN);
        assert_eq!(c.companion.timeout_ms, 900);
        assert_eq!(c.storage.timeout_ms, 7000);
        assert_eq!(c.cp_failure_threshold, 1);
        assert_eq!(c.tick_ms, 50);
        assert_eq!(c.leader_lease_ms, 101);
        assert_eq!(c.upstream_header, "x-up");
        assert!(c.allow_debug_header);
        assert_eq!(
            c.plugin_policy(),
            crate::plugins::PluginPolicy {
                ignore: vec!["jwt".into()],
                refuse_observe_only: true
            }
        );
    }

    #[test]
    fn control_plane_token_is_optional_and_checked_like_the_companions() {
        let mut value = minimal();
        value["control_plane"] =
            json!({"upstream": "c", "authority": "companion:8280", "token": TOKEN});
        let cp = parse(&value).unwrap().control_plane.unwrap();
        assert_eq!(cp.token.as_deref(), Some(TOKEN));
        assert!(!format!("{cp:?}").contains(TOKEN));
        value["control_plane"]["token"] = json!("has space");
        let errors = parse(&value).unwrap_err().to_string();
        assert!(
            errors.contains("control_plane.token: must be printable ASCII"),
            "{errors}"
        );
        assert!(!errors.contains("has space"), "{errors}");
        value["control_plane"]["token"] = json!("");
        assert!(parse(&value)
            .unwrap_err()
            .to_string()
            .contains("control_plane.token: must not be empty"));
    }

    #[test]
    fn control_plane_path_defaults_to_config() {
        let value = with(
            minimal(),
            "control_plane",
            json!({"upstream": "cp", "authority": "cp:8001"}),
        );
        let cp = parse(&value).unwrap().control_plane.unwrap();
        assert_eq!(cp.path, "/config");
        assert_eq!(cp.timeout_ms, 2_000);
    }

    #[test]
    fn every_problem_is_reported_at_its_path() {
        let value = json!({
            "companion": {"upstream": "c", "authority": "c:1"},
            "storage": {"upstream": "s", "timeout_ms": 0},
            "tick_ms": 10,
            "cp_failure_threshold": 0,
            "poll_interval_ms": "5000",
            "pol_interval_ms": 5000,
            "upstream_header": "X-Fallback-Upstream",
            "control_plane": {"upstream": "cp", "authority": "http://cp:8001/", "path": "config", "timout_ms": 5}
        });
        let found = problems(&value);
        for expected in [
            "version: required",
            "companion.token: required: the bearer token the companion's signer role accepts",
            "storage.timeout_ms: must be greater than 0, got 0",
            "tick_ms: must be at least 50, got 10",
            "cp_failure_threshold: must be at least 1, got 0",
            "poll_interval_ms: expected a whole number, got a string",
            "$: unknown field \"pol_interval_ms\" (did you mean \"poll_interval_ms\"?)",
            "upstream_header: \"X-Fallback-Upstream\" must be lowercase (HTTP/2 header names are): use \"x-fallback-upstream\"",
            "control_plane.authority: \"http://cp:8001/\" is not a host[:port] (no scheme, path or spaces)",
            "control_plane.path: \"config\" must start with '/'",
            "control_plane: unknown field \"timout_ms\" (did you mean \"timeout_ms\"?)",
        ] {
            assert!(
                found.iter().any(|p| p == expected),
                "expected {expected:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), 11, "{found:#?}");
    }

    #[test]
    fn required_sections_are_reported() {
        let found = problems(&json!({"version": "1"}));
        assert!(found.iter().any(|p| p.starts_with("companion: required")));
        assert!(found.iter().any(|p| p.starts_with("storage: required")));
        assert_problem(
            &json!({"version": "1", "companion": {"token": "t"}, "storage": {}}),
            "companion.upstream: required",
        );
        assert_problem(
            &json!({"version": "1", "companion": {"token": "t"}, "storage": {}}),
            "companion.authority: required",
        );
        assert_problem(
            &json!({"version": "1", "companion": {"token": "t"}, "storage": {}}),
            "storage.upstream: required",
        );
        assert_problem(
            &with(minimal(), "storage", json!([])),
            "storage: expected a JSON object, got an array",
        );
    }

    #[test]
    fn unknown_field_far_from_any_lists_the_known_ones() {
        let found = problems(&with(minimal(), "zzz", json!(1)));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("$: unknown field \"zzz\" (known: version, "),
            "{found:?}"
        );
    }

    #[test]
    fn lease_must_outlast_two_ticks_and_retry_bounds_are_ordered() {
        let value = with(
            with(minimal(), "tick_ms", json!(500)),
            "leader_lease_ms",
            json!(1000),
        );
        assert_problem(
            &value,
            "leader_lease_ms: must be more than twice tick_ms (500), so a live leader renews its lease in time; got 1000",
        );
        let value = with(
            with(minimal(), "retry_initial_ms", json!(5000)),
            "retry_max_ms",
            json!(100),
        );
        assert_problem(
            &value,
            "retry_max_ms: must be at least retry_initial_ms (5000), got 100",
        );
        assert_problem(
            &with(minimal(), "retry_initial_ms", json!(-1)),
            "retry_initial_ms: expected a whole number of at least 0, got -1",
        );
        assert_problem(
            &with(minimal(), "fallback_refresh_interval_ms", json!(1.5)),
            "fallback_refresh_interval_ms: expected a whole number of at least 0, got 1.5",
        );
    }

    #[test]
    fn ignore_unsupported_plugins_lists_names_the_filter_does_not_implement() {
        let c = parse(&with(
            minimal(),
            "ignore_unsupported_plugins",
            json!(["prometheus", "zipkin"]),
        ))
        .unwrap();
        assert_eq!(c.ignore_unsupported_plugins, vec!["prometheus", "zipkin"]);
        assert_problem(
            &with(minimal(), "ignore_unsupported_plugins", json!(["key-auth"])),
            "ignore_unsupported_plugins[0]: \"key-auth\" is enforced by the filter and cannot be ignored",
        );
        assert_problem(
            &with(minimal(), "ignore_unsupported_plugins", json!("jwt")),
            "ignore_unsupported_plugins: expected an array of plugin names, got a string",
        );
    }

    #[test]
    fn public_key_is_read_from_base64_or_pem_and_a_bad_one_is_a_problem() {
        // RFC 8032 TEST 1's public key, as `openssl pkey -pubout` prints it and as raw base64.
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";
        let raw = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let from_pem = parse(&with(minimal(), "public_key", json!(pem))).unwrap();
        let from_raw = parse(&with(minimal(), "public_key", json!(raw))).unwrap();
        assert_eq!(from_pem.public_keys, from_raw.public_keys);
        assert_eq!(from_raw.public_keys.len(), 1);
        assert_eq!(from_raw.public_keys[0].to_base64(), raw);
        assert_eq!(
            parse(&with(minimal(), "public_key", json!(null)))
                .unwrap()
                .public_keys,
            Vec::new()
        );
        for bad in ["", "not-a-key", "AAAA", "-----BEGIN PUBLIC KEY-----\nMCow"] {
            let found = problems(&with(minimal(), "public_key", json!(bad)));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].starts_with("public_key: "), "{found:?}");
            assert!(found[0].contains("openssl pkey -pubout"), "{found:?}");
        }
        assert_problem(
            &with(minimal(), "public_key", json!(32)),
            "public_key: expected a string (base64 or PEM), got a number",
        );
    }

    #[test]
    fn public_keys_is_a_list_and_public_key_joins_it_without_duplicates() {
        let a = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        // RFC 8032 TEST 2's public key.
        let b = "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=";
        let both = with(minimal(), "public_keys", json!([a, b]));
        let keys = parse(&both).unwrap().public_keys;
        assert_eq!(
            keys.iter().map(PublicKey::to_base64).collect::<Vec<_>>(),
            [a, b]
        );
        let plus_alias = with(
            with(minimal(), "public_keys", json!([b])),
            "public_key",
            json!(a),
        );
        assert_eq!(parse(&plus_alias).unwrap().public_keys.len(), 2);
        let same_twice = with(
            with(minimal(), "public_keys", json!([a, a])),
            "public_key",
            json!(a),
        );
        assert_eq!(parse(&same_twice).unwrap().public_keys.len(), 1);
        let found = problems(&with(minimal(), "public_keys", json!([a, "nope", 3])));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("public_keys[1]: "), "{found:?}");
        assert_eq!(
            found[1],
            "public_keys[2]: expected a string (base64 or PEM), got a number"
        );
        assert_problem(
            &with(minimal(), "public_keys", json!(a)),
            "public_keys: expected an array of public keys (base64 or PEM), got a string",
        );
    }

    #[test]
    fn staleness_budget_policy_and_health_path_are_read_and_checked() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(
            (c.max_fallback_age_ms, c.stale_policy, c.health_path),
            (None, StalePolicy::Serve, None)
        );
        let mut v = with(minimal(), "max_fallback_age_ms", json!(3_600_000));
        v = with(v, "stale_policy", json!("fail_closed"));
        v = with(v, "health_path", json!("/.fallback/ready"));
        let c = parse(&v).unwrap();
        assert_eq!(c.max_fallback_age_ms, Some(3_600_000));
        assert_eq!(c.stale_policy, StalePolicy::FailClosed);
        assert_eq!(c.health_path.as_deref(), Some("/.fallback/ready"));
        assert_problem(
            &with(minimal(), "stale_policy", json!("fail_closed")),
            "stale_policy: \"fail_closed\" needs max_fallback_age_ms: the budget past which a \
             fallback config is refused",
        );
        assert_problem(
            &with(minimal(), "stale_policy", json!("drop")),
            "stale_policy: unknown policy \"drop\": use \"serve\" or \"fail_closed\"",
        );
        assert_problem(
            &with(minimal(), "max_fallback_age_ms", json!(0)),
            "max_fallback_age_ms: must be greater than 0, got 0",
        );
        for bad in ["ready", "/a b", "/ready?x=1", ""] {
            let found = problems(&with(minimal(), "health_path", json!(bad)));
            assert!(found[0].starts_with("health_path: "), "{bad}: {found:?}");
        }
    }

    #[test]
    fn accept_versions_is_a_list_of_plain_versions_without_the_version_itself() {
        let c = parse(&with(
            minimal(),
            "accept_versions",
            json!(["3.3.0.0", "3.3.0.0", c_version(), "3.2.0.0"]),
        ))
        .unwrap();
        assert_eq!(c.accept_versions, ["3.3.0.0", "3.2.0.0"]);
        assert!(parse(&minimal()).unwrap().accept_versions.is_empty());
        let found = problems(&with(minimal(), "accept_versions", json!(["a/b", 3])));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("accept_versions[0]: \"a/b\" cannot name an object"));
        assert_eq!(
            found[1],
            "accept_versions[1]: expected a version string, got a number"
        );
        assert_problem(
            &with(minimal(), "accept_versions", json!("3.3.0.0")),
            "accept_versions: expected an array of versions, got a string",
        );
    }

    fn c_version() -> String {
        minimal()["version"].as_str().unwrap().to_owned()
    }

    #[test]
    fn companion_may_be_a_list_tried_in_order() {
        let one = minimal()["companion"].clone();
        let mut two = one.clone();
        two["upstream"] = json!("companion_b");
        let c = parse(&with(minimal(), "companion", json!([one, two]))).unwrap();
        assert_eq!(c.companion.upstream, one["upstream"].as_str().unwrap());
        assert_eq!(c.backup_companions.len(), 1);
        assert_eq!(c.backup_companions[0].upstream, "companion_b");
        let mut bad = two.clone();
        bad["token"] = json!("");
        assert_problem(
            &with(minimal(), "companion", json!([one, bad])),
            "companion[1].token: must not be empty",
        );
        assert_problem(
            &with(minimal(), "companion", json!([])),
            "companion: must list at least one companion signer endpoint",
        );
    }

    #[test]
    fn bad_versions_and_header_names_are_rejected() {
        for bad in ["3.4/1", "..", "a b"] {
            let found = problems(&with(minimal(), "version", json!(bad)));
            assert!(found[0].starts_with("version: "), "{found:?}");
        }
        assert_problem(
            &with(minimal(), "version", json!("")),
            "version: must not be empty",
        );
        assert_problem(
            &with(minimal(), "upstream_header", json!("x up")),
            "upstream_header: \"x up\" is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)",
        );
        assert_problem(
            &with(minimal(), "upstream_header", json!(":authority")),
            "upstream_header: \":authority\" is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)",
        );
        assert_problem(
            &with(minimal(), "allow_debug_header", json!("yes")),
            "allow_debug_header: expected true or false, got a string",
        );
    }

    #[test]
    fn the_host_and_its_upstream_variable_are_read_and_checked() {
        for kind in HostKind::ALL {
            let c = parse(&with(minimal(), "host", json!(kind.as_str()))).unwrap();
            assert_eq!(c.host, kind);
        }
        let c = parse(&with(minimal(), "upstream_variable", json!("my_up_1"))).unwrap();
        assert_eq!(c.upstream_variable, "my_up_1");
        assert_problem(
            &with(minimal(), "host", json!("haproxy")),
            "host: unknown host \"haproxy\": use one of envoy, nginx, kong (the proxy this filter runs in)",
        );
        assert_problem(
            &with(minimal(), "host", json!(1)),
            "host: expected a string, got a number",
        );
        for bad in ["$up", "up-stream", ""] {
            assert_problem(
                &with(minimal(), "upstream_variable", json!(bad)),
                &format!(
                    "upstream_variable: {bad:?} is not an nginx variable name: letters, digits \
                     and '_' only, without the '$'"
                ),
            );
        }
    }

    #[test]
    fn the_token_never_appears_in_errors_or_debug() {
        let c = parse(&minimal()).unwrap();
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("<redacted>"));

        let secret = "bad token\nwith-newline";
        let mut value = minimal();
        value["companion"]["token"] = json!(secret);
        value["tick_ms"] = json!(1);
        let err = parse(&value).unwrap_err().to_string();
        assert!(!err.contains("bad token"), "{err}");
        assert!(
            err.contains("companion.token: must be printable ASCII"),
            "{err}"
        );

        value["companion"]["token"] = json!(12345);
        let err = parse(&value).unwrap_err().to_string();
        assert!(!err.contains("12345"), "{err}");
        assert!(
            err.contains("companion.token: expected a string, got a number"),
            "{err}"
        );
    }

    #[test]
    fn garbage_input_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"   ",
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe",
            b"{\"version\": {\"a\": 1}}",
            b"\"text\"",
        ] {
            let err = FilterConfig::parse(bytes).unwrap_err();
            assert!(!err.problems.is_empty());
        }
        let err = FilterConfig::parse(b"").unwrap_err().to_string();
        assert!(err.contains("the filter configuration is empty"), "{err}");
        let err = FilterConfig::parse(b"{").unwrap_err().to_string();
        assert!(
            err.contains("$: not valid JSON (line 1, column 1)"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let text = r#"{"version":"3.4","companion":{"upstream":"c","authority":"c","token":"a","token":"b"},"storage":{"upstream":"s"}}"#;
        let err = FilterConfig::parse(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("companion: key \"token\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn null_means_absent() {
        let value = with(
            with(minimal(), "control_plane", Value::Null),
            "tick_ms",
            Value::Null,
        );
        let c = parse(&value).unwrap();
        assert_eq!(c.control_plane, None);
        assert_eq!(c.tick_ms, DEFAULT_TICK_MS);
    }

    #[test]
    fn report_counts_problems() {
        let err = parse(&json!({})).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "filter configuration is invalid ({} problems):",
                err.problems.len()
            )),
            "{text}"
        );
    }
}
