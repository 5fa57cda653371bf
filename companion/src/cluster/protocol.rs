//! The data plane's side of Kong's full-sync cluster protocol (`/v1/outlet`, Kong 3.4–3.10),
//! as plain functions: the outlet URL, the `basic_info` frame, `reconfigure` frames, the ping
//! payload, and what a refusal means. No I/O: [`super::ClusterSource`] does the talking.

use super::config_hash::EMPTY_CONFIG_HASH;
use flate2::read::GzDecoder;
use serde::Serialize;
use serde_json::Value;
use std::io::Read;

/// Kong's data planes ping every 30 s (`CLUSTERING_PING_INTERVAL`).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Either side gives up after 1.5 ping intervals without a frame (`PING_WAIT`).
pub const PING_WAIT: std::time::Duration = std::time::Duration::from_secs(45);
/// Kong's default `cluster_max_payload`: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The largest decompressed `reconfigure` accepted (gzip compresses configs ~10-20×).
pub const MAX_INFLATED: usize = 256 * 1024 * 1024;
/// The SNI data planes send in `shared` mode.
pub const SHARED_SERVER_NAME: &str = "kong_clustering";

/// Kong's bundled plugins (`kong/constants.lua`, 3.10): the default `basic_info` list, without
/// versions, so a control plane never withholds a config for a bundled plugin (Kong skips the
/// version comparison when the data plane names no version).
pub const BUNDLED_PLUGINS: &[&str] = &[
    "jwt",
    "acl",
    "correlation-id",
    "cors",
    "oauth2",
    "tcp-log",
    "udp-log",
    "file-log",
    "http-log",
    "key-auth",
    "hmac-auth",
    "basic-auth",
    "ip-restriction",
    "request-transformer",
    "response-transformer",
    "request-size-limiting",
    "rate-limiting",
    "response-ratelimiting",
    "syslog",
    "loggly",
    "datadog",
    "ldap-auth",
    "statsd",
    "bot-detection",
    "aws-lambda",
    "request-termination",
    "prometheus",
    "proxy-cache",
    "session",
    "acme",
    "grpc-gateway",
    "grpc-web",
    "pre-function",
    "post-function",
    "azure-functions",
    "zipkin",
    "opentelemetry",
    "ai-proxy",
    "ai-prompt-decorator",
    "ai-prompt-template",
    "ai-prompt-guard",
    "ai-request-transformer",
    "ai-response-transformer",
    "standard-webhooks",
    "redirect",
];

/// One entry of `basic_info.plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// Its version; without one the control plane compares names only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What this node tells the control plane about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node_id`: a UUID (the control plane keys its data-plane list by it).
    pub id: String,
    /// `node_hostname`.
    pub hostname: String,
    /// `node_version`: Kong's version string; the control plane refuses another major version
    /// or a newer minor version than its own.
    pub version: String,
    /// `basic_info.plugins`.
    pub plugins: Vec<PluginInfo>,
}

/// `/v1/outlet?node_id=&node_hostname=&node_version=`.
pub fn outlet_path(node: &NodeInfo) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("node_id", &node.id)
        .append_pair("node_hostname", &node.hostname)
        .append_pair("node_version", &node.version)
        .finish();
    format!("/v1/outlet?{query}")
}

/// The first frame (binary): `{"type":"basic_info","plugins":[...]}`.
pub fn basic_info_frame(node: &NodeInfo) -> Vec<u8> {
    #[derive(Serialize)]
    struct BasicInfo<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        plugins: &'a [PluginInfo],
    }
    serde_json::to_vec(&BasicInfo {
        kind: "basic_info",
        plugins: &node.plugins,
    })
    .expect("basic_info serialises")
}

/// The payload of a ping: the 32-character hash of the config in force, or 32 zeros.
pub fn ping_payload(config_hash: Option<&str>) -> Vec<u8> {
    match config_hash {
        Some(h) if h.len() == 32 => h.as_bytes().to_vec(),
        _ => EMPTY_CONFIG_HASH.as_bytes().to_vec(),
    }
}

/// A `reconfigure` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconfigure {
    /// `config_table`: the declarative config as the control plane exported it.
    pub config_table: Value,
    /// `config_hash`: Kong's MD5 of it (see [`super::config_hash`]).
    pub config_hash: String,
}

/// Why a binary frame is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not gzip, or corrupt.
    #[error("a binary frame from the control plane is not gzip data: {0}")]
    NotGzip(String),
    /// Inflates past [`MAX_INFLATED`].
    #[error("a binary frame from the control plane inflates past {MAX_INFLATED} bytes")]
    TooLarge,
    /// Not the JSON Kong sends.
    #[error("a reconfigure frame from the control plane is not the JSON Kong sends: {0}")]
    NotJson(String),
}

/// Decodes a binary frame: gzip, then JSON. `Ok(None)` for message types other than
/// `reconfigure`, which Kong's data planes ignore too.
pub fn decode_frame(frame: &[u8]) -> Result<Option<Reconfigure>, FrameError> {
    let mut inflated = Vec::new();
    GzDecoder::new(frame)
        .take(MAX_INFLATED as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| FrameError::NotGzip(e.to_string()))?;
    if inflated.len() > MAX_INFLATED {
        return Err(FrameError::TooLarge);
    }
    let mut message: Value =
        serde_json::from_slice(&inflated).map_err(|e| FrameError::NotJson(e.to_string()))?;
    if message.get("type").and_then(Value::as_str) != Some("reconfigure") {
        return Ok(None);
    }
    let config_table = match message.get_mut("config_table").map(Value::take) {
        Some(table @ Value::Object(_)) => table,
        _ => return Err(FrameError::NotJson("no config_table object".into())),
    };
    let config_hash = match message.get("config_hash").and_then(Value::as_str) {
        Some(h) if h.len() == 32 => h.to_owned(),
        _ => return Err(FrameError::NotJson("no 32-character config_hash".into())),
    };
    Ok(Some(Reconfigure {
        config_table,
        config_hash,
    }))
}

/// The control plane's version and plugins, from its Admin API `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneInfo {
    /// `version`, e.g. `3.4.1` or `3.4.3.12` (Enterprise).
    pub version: String,
    /// `plugins.available_on_server`, with versions when the CP gives them (Kong 3.x).
    pub plugins: Vec<PluginInfo>,
}

/// Reads the Admin API's `GET /` answer.
pub fn parse_admin_root(body: &[u8]) -> Result<ControlPlaneInfo, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let version = value
        .get("version")
        .and_then(Value::as_str)
        .ok_or("no \"version\" in the answer: is this Kong's Admin API?")?
        .to_owned();
    let available = value
        .pointer("/plugins/available_on_server")
        .and_then(Value::as_object)
        .ok_or("no \"plugins.available_on_server\" in the answer")?;
    let mut plugins: Vec<PluginInfo> = available
        .iter()
        .map(|(name, detail)| PluginInfo {
            name: name.clone(),
            // Kong 3.x: {"version": "3.4.1", "priority": 1000}; Kong 2.x: true.
            version: detail
                .get("version")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .collect();
    plugins.sort_by_key(|p| p.name.to_lowercase());
    Ok(ControlPlaneInfo { version, plugins })
}

/// `major.minor` of a Kong version (`^(%d+)%.(%d+)%.%d+`, as Kong reads them).
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((major, minor))
}

/// What a control plane closing the connection right after `basic_info` means, and what to
/// change. `control_plane_version` is known when the Admin API answered.
pub fn explain_early_close(node_version: &str, control_plane_version: Option<&str>) -> String {
    let cp = match control_plane_version {
        Some(v) => format!("the control plane runs {v}"),
        None => "the control plane's version is unknown here".to_owned(),
    };
    format!(
        "it closed the connection right after basic_info, before sending any config: Kong does this when the data plane's version is incompatible (node_version {node_version}; {cp}; Kong accepts the same major version with a minor version not newer than its own). Set FALLBACK_CLUSTER_NODE_VERSION to the control plane's version, or FALLBACK_CLUSTER_ADMIN_URL so the companion learns it"
    )
}

/// What a connection that stays up without any config means, and what to change.
pub fn explain_withheld(waited: std::time::Duration, configured_plugins: bool) -> String {
    let fix = if configured_plugins {
        "list every plugin the config uses, with the control plane's versions, in FALLBACK_CLUSTER_PLUGINS (name:version,...)"
    } else {
        "set FALLBACK_CLUSTER_ADMIN_URL so the companion announces the control plane's own plugin list, or list the custom plugins in FALLBACK_CLUSTER_PLUGINS (name:version,...)"
    };
    format!(
        "connected for {}s but the control plane sent no config: Kong withholds it when a plugin the config uses is missing from basic_info or has another major (or a newer minor) version (its log says \"unable to send updated configuration to data plane\"); {fix}",
        waited.as_secs()
    )
}

/// What a refused WebSocket upgrade means, and what to change.
pub fn explain_upgrade_failure(detail: &str, status: Option<u16>) -> String {
    match status {
        Some(404) => format!("{detail}: no /v1/outlet there: KONG_CLUSTER_CONTROL_PLANE must name the control plane's cluster_listen address (port 8005 by default), not its Admin API or proxy"),
        Some(400) => format!("{detail}: the control plane found node_id or node_version missing"),
        Some(_) => detail.to_owned(),
        None => format!("{detail}: a Kong control plane closes the connection like this when it refuses the client certificate (shared mode: KONG_CLUSTER_CERT must be its cluster_cert; pki mode: signed by its cluster_ca_cert)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use serde_json::json;
    use std::io::Write;

    fn node() -> NodeInfo {
        NodeInfo {
            id: "1d6b6d8c-6b6c-4f6f-9d4e-2a1b3c4d5e6f".into(),
            hostname: "backup node".into(),
            version: "3.4.1".into(),
            plugins: vec![
                PluginInfo {
                    name: "key-auth".into(),
                    version: Some("3.4.1".into()),
                },
                PluginInfo {
                    name: "acl".into(),
                    version: None,
                },
            ],
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn outlet_path_and_basic_info_as_kong_data_planes_send_them() {
        assert_eq!(
            outlet_path(&node()),
            "/v1/outlet?node_id=1d6b6d8c-6b6c-4f6f-9d4e-2a1b3c4d5e6f&node_hostname=backup+node&node_version=3.4.1"
        );
        let info: Value = serde_json::from_slice(&basic_info_frame(&node())).unwrap();
        assert_eq!(
            info,
            json!({"type": "basic_info", "plugins": [
                {"name": "key-auth", "version": "3.4.1"}, {"name": "acl"}]})
        );
    }

    #[test]
    fn pings_carry_the_hash_or_32_zeros() {
        assert_eq!(ping_payload(None), b"00000000000000000000000000000000");
        let hash = "675ff4b6b1c8cefa5198284110786ad0";
        assert_eq!(ping_payload(Some(hash)), hash.as_bytes());
        assert_eq!(ping_payload(Some("short")).len(), 32);
    }

    #[test]
    fn reconfigure_frames_are_gzip_json() {
        let msg = json!({"type": "reconfigure", "timestamp": 1.5,
            "config_table": {"_format_version": "3.0"},
            "config_hash": "2da3c26e4dbd6dd6ea3ab60a3dd7fb3e", "hashes": {}});
        let got = decode_frame(&gzip(msg.to_string().as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(got.config_table, json!({"_format_version": "3.0"}));
        assert_eq!(got.config_hash, "2da3c26e4dbd6dd6ea3ab60a3dd7fb3e");
        // Other message types are ignored, as Kong's data planes ignore them.
        let other = json!({"type": "something-new"}).to_string();
        assert_eq!(decode_frame(&gzip(other.as_bytes())).unwrap(), None);
        assert!(matches!(
            decode_frame(msg.to_string().as_bytes()),
            Err(FrameError::NotGzip(_))
        ));
        assert!(matches!(
            decode_frame(&gzip(b"{")),
            Err(FrameError::NotJson(_))
        ));
        let no_hash = json!({"type": "reconfigure", "config_table": {}}).to_string();
        assert!(matches!(
            decode_frame(&gzip(no_hash.as_bytes())),
            Err(FrameError::NotJson(_))
        ));
    }

    #[test]
    fn admin_root_of_kong_3_and_2() {
        let kong3 = json!({"version": "3.4.1", "plugins": {"available_on_server": {
            "key-auth": {"version": "3.4.1", "priority": 1250}, "ACL": {"version": "3.4.1", "priority": 950}},
            "enabled_in_cluster": []}});
        let info = parse_admin_root(kong3.to_string().as_bytes()).unwrap();
        assert_eq!(info.version, "3.4.1");
        assert_eq!(
            info.plugins,
            vec![
                PluginInfo {
                    name: "ACL".into(),
                    version: Some("3.4.1".into())
                },
                PluginInfo {
                    name: "key-auth".into(),
                    version: Some("3.4.1".into())
                },
            ]
        );
        let kong2 = json!({"version": "2.8.1", "plugins": {"available_on_server": {"acl": true}}});
        let info = parse_admin_root(kong2.to_string().as_bytes()).unwrap();
        assert_eq!(
            info.plugins,
            vec![PluginInfo {
                name: "acl".into(),
                version: None
            }]
        );
        assert!(parse_admin_root(b"{}").unwrap_err().contains("version"));
    }

    #[test]
    fn refusals_name_what_to_change() {
        let wrong_port = explain_upgrade_failure("answered HTTP 404", Some(404));
        assert!(
            wrong_port.contains("cluster_listen") && wrong_port.contains("8005"),
            "{wrong_port}"
        );
        let closed = explain_upgrade_failure("closed", None);
        assert!(
            closed.contains("KONG_CLUSTER_CERT") && closed.contains("cluster_ca_cert"),
            "{closed}"
        );
        let version = explain_early_close("3.11.0", Some("3.10.0"));
        assert!(
            version.contains("3.11.0") && version.contains("runs 3.10.0"),
            "{version}"
        );
        assert!(
            version.contains("FALLBACK_CLUSTER_NODE_VERSION"),
            "{version}"
        );
        let withheld = explain_withheld(std::time::Duration::from_secs(15), false);
        assert!(
            withheld.contains("15s") && withheld.contains("FALLBACK_CLUSTER_ADMIN_URL"),
            "{withheld}"
        );
        assert!(
            explain_withheld(std::time::Duration::ZERO, true).contains("FALLBACK_CLUSTER_PLUGINS")
        );
    }

    #[test]
    fn versions_are_read_as_kong_reads_them() {
        assert_eq!(major_minor("3.4.1"), Some((3, 4)));
        assert_eq!(major_minor("3.10.0.2"), Some((3, 10)));
        assert_eq!(major_minor("3.4.1-enterprise-edition"), Some((3, 4)));
        assert_eq!(major_minor("3.4"), None);
        assert_eq!(major_minor("0.1.0"), Some((0, 1)));
    }
}
