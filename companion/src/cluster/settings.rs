//! The cluster source's settings: Kong's own names where Kong has them (`KONG_CLUSTER_*`, so a
//! data plane's environment carries over), parsed and checked before anything starts.

use super::protocol::{self, NodeInfo, PluginInfo, DEFAULT_MAX_PAYLOAD, SHARED_SERVER_NAME};
use super::tls::{self, MtlsMode};
use crate::secret::Secret;
use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Kong cluster source options (the companion as a data plane of a Kong control plane).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The control plane's cluster address, host:port (its cluster_listen, 8005 by default):
    /// the companion joins the cluster as a data plane and exports every config pushed to it.
    #[arg(long, env = "KONG_CLUSTER_CONTROL_PLANE", value_name = "HOST:PORT")]
    pub cluster_control_plane: Option<String>,

    /// How the cluster connection is authenticated: shared (one cluster certificate on every
    /// node) or pki (certificates signed by KONG_CLUSTER_CA_CERT).
    #[arg(long, env = "KONG_CLUSTER_MTLS", value_enum, default_value = "shared")]
    pub cluster_mtls: MtlsMode,

    /// The cluster certificate (shared) or this node's certificate (pki): a PEM file, or the
    /// PEM itself.
    #[arg(long, env = "KONG_CLUSTER_CERT", value_name = "FILE|PEM")]
    pub cluster_cert: Option<String>,

    /// Its private key: a PEM file, or the PEM itself (prefer the environment variable).
    #[arg(
        long,
        env = "KONG_CLUSTER_CERT_KEY",
        hide_env_values = true,
        value_name = "FILE|PEM"
    )]
    pub cluster_cert_key: Option<Secret>,

    /// pki: the CA that signed the control plane's certificate (PEM file or PEM).
    #[arg(long, env = "KONG_CLUSTER_CA_CERT", value_name = "FILE|PEM")]
    pub cluster_ca_cert: Option<String>,

    /// pki: the name the control plane's certificate must carry [default: the host of
    /// KONG_CLUSTER_CONTROL_PLANE]; shared mode always sends kong_clustering.
    #[arg(long, env = "KONG_CLUSTER_SERVER_NAME", value_name = "NAME")]
    pub cluster_server_name: Option<String>,

    /// The largest WebSocket message accepted from the control plane, in bytes (Kong's
    /// cluster_max_payload; keep it at least the control plane's).
    #[arg(long, env = "KONG_CLUSTER_MAX_PAYLOAD", default_value_t = DEFAULT_MAX_PAYLOAD, value_name = "BYTES")]
    pub cluster_max_payload: usize,

    /// The control plane's Admin API (e.g. http://kong-cp:8001): before each connection the
    /// companion reads GET / for the version and plugin list to announce, so the control plane
    /// neither refuses it nor withholds or trims the config.
    #[arg(long, env = "FALLBACK_CLUSTER_ADMIN_URL", value_name = "URL")]
    pub cluster_admin_url: Option<String>,

    /// Sent as Kong-Admin-Token to the Admin API (Kong Enterprise RBAC).
    #[arg(long, env = "FALLBACK_CLUSTER_ADMIN_TOKEN", hide_env_values = true)]
    pub cluster_admin_token: Option<Secret>,

    /// The Kong version announced as node_version when the Admin API is not set or not
    /// reachable [default: FALLBACK_CONFIG_VERSION]; use the control plane's version.
    #[arg(long, env = "FALLBACK_CLUSTER_NODE_VERSION", value_name = "VERSION")]
    pub cluster_node_version: Option<String>,

    /// The plugins announced in basic_info when the Admin API is not set or not reachable:
    /// name or name:version, comma-separated [default: Kong's bundled plugins, without
    /// versions]. Custom plugins the config uses must be listed, or Kong withholds the config.
    #[arg(
        long,
        env = "FALLBACK_CLUSTER_PLUGINS",
        value_name = "NAME[:VERSION],..."
    )]
    pub cluster_plugins: Option<String>,
}

/// Where the Admin API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Its base URL.
    pub url: String,
    /// The `Kong-Admin-Token`, if any.
    pub token: Option<Secret>,
}

/// The cluster source's checked settings.
#[derive(Clone)]
pub struct ClusterSettings {
    /// The control plane's host.
    pub host: String,
    /// Its cluster port.
    pub port: u16,
    /// The mTLS mode.
    pub mode: MtlsMode,
    /// The TLS client configuration (client certificate, server verification).
    pub tls: Arc<rustls::ClientConfig>,
    /// The SNI and, in pki mode, the name verified.
    pub server_name: String,
    /// The largest message accepted.
    pub max_payload: usize,
    /// The Admin API to learn version and plugins from.
    pub admin: Option<AdminApi>,
    /// What this node announces when the Admin API does not answer.
    pub node: NodeInfo,
    /// Whether the plugin list was configured (it shapes the advice when a config is withheld).
    pub plugins_configured: bool,
    /// How often this node pings (Kong: 30 s).
    pub ping_interval: Duration,
    /// How long without any frame before the connection is given up (Kong: 45 s).
    pub ping_wait: Duration,
    /// Time allowed to connect (TCP, TLS, WebSocket upgrade) and for the Admin API.
    pub connect_timeout: Duration,
    /// First delay before reconnecting; doubles with jitter up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnections.
    pub reconnect_max: Duration,
    /// How long a connection may stay up without a config before the companion says why.
    pub withheld_after: Duration,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("control_plane", &format!("{}:{}", self.host, self.port))
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A stable UUID for this node, from its name: Kong keys its data-plane list by UUID, and the
/// same companion should show up as the same node after a restart.
pub fn node_uuid(node_name: &str) -> String {
    let d = Sha256::digest(node_name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `name[:version],...`.
pub fn parse_plugins(text: &str) -> anyhow::Result<Vec<PluginInfo>> {
    let mut plugins = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, version) = match item.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_owned())),
            None => (item, None),
        };
        if name.is_empty() {
            bail!("FALLBACK_CLUSTER_PLUGINS: {item:?} has no plugin name; use e.g. key-auth:3.4.1,my-plugin");
        }
        if let Some(v) = &version {
            if protocol::major_minor(v).is_none() {
                bail!("FALLBACK_CLUSTER_PLUGINS: {item:?}: {v:?} is not a version like 3.4.1");
            }
        }
        plugins.push(PluginInfo {
            name: name.to_owned(),
            version,
        });
    }
    Ok(plugins)
}

impl ClusterArgs {
    /// The checked settings, or `None` when no cluster control plane is configured.
    /// `node_name` is this node's name (`FALLBACK_NODE_ID`); `default_version` is
    /// `FALLBACK_CONFIG_VERSION`.
    pub fn settings(
        &self,
        node_name: &str,
        default_version: &str,
    ) -> anyhow::Result<Option<ClusterSettings>> {
        let Some(address) = self
            .cluster_control_plane
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        else {
            return Ok(None);
        };
        let address = address.strip_prefix("wss://").unwrap_or(address);
        let address = address.trim_end_matches('/');
        let parsed = url::Url::parse(&format!("wss://{address}")).ok();
        let (host, port) = match parsed.as_ref().and_then(|u| Some((u.host_str()?.to_owned(), u.port()?))) {
            Some((host, port)) if parsed.as_ref().is_some_and(|u| u.path() == "/" || u.path().is_empty()) => (host, port),
            _ => bail!("KONG_CLUSTER_CONTROL_PLANE {address:?} is not host:port; use the control plane's cluster_listen address, e.g. kong-cp:8005"),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let cert = self.cluster_cert.as_deref().filter(|c| !c.is_empty()).context(
            "KONG_CLUSTER_CONTROL_PLANE is set but KONG_CLUSTER_CERT is not: set it to the cluster certificate (shared mode) or this node's certificate (pki mode)",
        )?;
        let key = self.cluster_cert_key.as_ref().filter(|k| !k.expose().is_empty()).context(
            "KONG_CLUSTER_CONTROL_PLANE is set but KONG_CLUSTER_CERT_KEY is not: set it to the certificate's private key",
        )?;
        let chain = tls::load_certs("KONG_CLUSTER_CERT", cert)?;
        let key = tls::load_key("KONG_CLUSTER_CERT_KEY", key.expose())?;
        let ca = match self.cluster_ca_cert.as_deref().filter(|c| !c.is_empty()) {
            Some(ca) => Some(tls::load_certs("KONG_CLUSTER_CA_CERT", ca)?),
            None => None,
        };
        let tls = tls::client_config(self.cluster_mtls, chain, key, ca.as_deref())?;
        let server_name = match self.cluster_mtls {
            MtlsMode::Shared => SHARED_SERVER_NAME.to_owned(),
            MtlsMode::Pki => self
                .cluster_server_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| host.clone()),
        };
        rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|_| {
            anyhow::anyhow!("KONG_CLUSTER_SERVER_NAME {server_name:?} is not a host name")
        })?;
        let admin = match self.cluster_admin_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => {
                let parsed = url::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                if parsed.is_none() {
                    bail!("FALLBACK_CLUSTER_ADMIN_URL {:?} is not an http(s) URL; use e.g. http://kong-cp:8001", crate::transport::redact_url(url));
                }
                Some(AdminApi {
                    url: url.trim_end_matches('/').to_owned(),
                    token: self
                        .cluster_admin_token
                        .clone()
                        .filter(|t| !t.expose().is_empty()),
                })
            }
            None => None,
        };
        let version = self
            .cluster_node_version
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_version.to_owned());
        if protocol::major_minor(&version).is_none_or(|(major, _)| major == 0) && admin.is_none() {
            bail!("the Kong cluster source announces a Kong version, and {version:?} is not one: set FALLBACK_CLUSTER_NODE_VERSION to the control plane's version (e.g. 3.4.1), or FALLBACK_CLUSTER_ADMIN_URL so the companion reads it from the control plane");
        }
        let (plugins, plugins_configured) = match self
            .cluster_plugins
            .as_deref()
            .filter(|p| !p.trim().is_empty())
        {
            Some(list) => (parse_plugins(list)?, true),
            None => (
                protocol::BUNDLED_PLUGINS
                    .iter()
                    .map(|name| PluginInfo {
                        name: (*name).to_owned(),
                        version: None,
                    })
                    .collect(),
                false,
            ),
        };
        Ok(Some(ClusterSettings {
            host,
            port,
            mode: self.cluster_mtls,
            tls: Arc::new(tls),
            server_name,
            max_payload: self.cluster_max_payload.max(1024),
            admin,
            node: NodeInfo {
                id: node_uuid(node_name),
                hostname: node_name.to_owned(),
                version,
                plugins,
            },
            plugins_configured,
            ping_interval: protocol::PING_INTERVAL,
            ping_wait: protocol::PING_WAIT,
            connect_timeout: Duration::from_secs(5),
            reconnect_initial: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(60),
            withheld_after: Duration::from_secs(15),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_uuids() {
        let id = node_uuid("backup-1");
        assert_eq!(id, node_uuid("backup-1"));
        assert_ne!(id, node_uuid("backup-2"));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn plugin_lists_parse_with_and_without_versions() {
        assert_eq!(
            parse_plugins("key-auth:3.4.1, my-plugin").unwrap(),
            vec![
                PluginInfo {
                    name: "key-auth".into(),
                    version: Some("3.4.1".into())
                },
                PluginInfo {
                    name: "my-plugin".into(),
                    version: None
                },
            ]
        );
        assert!(parse_plugins("key-auth:latest")
            .unwrap_err()
            .to_string()
            .contains("latest"));
        assert!(parse_plugins(":3.4.1").is_err());
    }
}
