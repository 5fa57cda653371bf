//! The Kong cluster source: the companion joins a Kong hybrid cluster as a data plane (full
//! sync over `/v1/outlet`, as Kong 3.4–3.10 control planes accept it) and hands every config
//! the control plane pushes to the export role, as Kong Enterprise's backup node does.
//!
//! - [`protocol`]: the frames and what a refusal means (no I/O);
//! - [`config_hash`]: Kong's `config_hash`, checked on every push and echoed in pings;
//! - [`settings`]: `KONG_CLUSTER_*` and the companion's own settings;
//! - [`tls`]: `shared` and `pki` mutual TLS.

pub mod config_hash;
pub mod protocol;
pub mod settings;
pub mod tls;

use crate::source::{ConfigSource, Polled, SourceError};
use crate::transport::{self, HttpClient};
use bytes::Bytes;
use fallback_core::backoff::Backoff;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use protocol::{ControlPlaneInfo, NodeInfo};
pub use settings::{ClusterArgs, ClusterSettings};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// A closed connection counts as a refusal of `basic_info` when it comes this soon after it,
/// before any config.
const EARLY_CLOSE: Duration = Duration::from_secs(10);

struct Connection {
    socket: Socket,
    node: NodeInfo,
    control_plane_version: Option<String>,
    connected_at: Instant,
    last_seen: Instant,
    next_ping: Instant,
    got_config: bool,
    /// Whether the control plane answered anything yet (a pong, a config): Kong refuses a
    /// version before reading any ping.
    answered: bool,
    warned_withheld: bool,
}

/// The companion as a data plane of a Kong control plane.
pub struct ClusterSource {
    settings: ClusterSettings,
    shown: String,
    http: HttpClient,
    connection: Option<Connection>,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    /// The `config_hash` of the last config received: pings carry it.
    current_hash: Option<String>,
}

impl ClusterSource {
    /// A source for these settings; it connects on the first [`ConfigSource::next`].
    pub fn new(settings: ClusterSettings) -> Self {
        Self {
            shown: format!("wss://{}:{}/v1/outlet", settings.host, settings.port),
            backoff: Backoff::new(
                settings.reconnect_initial.as_millis() as u64,
                settings.reconnect_max.as_millis() as u64,
            ),
            settings,
            http: transport::client(),
            connection: None,
            reconnect_at: None,
            current_hash: None,
        }
    }

    /// The config hash this node reports (the last one received), if any.
    pub fn current_hash(&self) -> Option<&str> {
        self.current_hash.as_deref()
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// For `doctor`: connects now (TLS, WebSocket upgrade, `basic_info`) and says how.
    pub async fn connect_once(&mut self) -> Result<String, SourceError> {
        let conn = self.connect().await?;
        let text = format!(
            "{} accepted this node ({:?} mTLS, node_version {}{}, {} plugins announced)",
            self.shown,
            self.settings.mode,
            conn.node.version,
            if conn.control_plane_version.is_some() {
                " from the Admin API"
            } else {
                ""
            },
            conn.node.plugins.len()
        );
        self.connection = Some(conn);
        Ok(text)
    }

    /// For `doctor`: whether the control plane sends this node its config within `wait`.
    pub async fn first_config(&mut self, wait: Duration) -> Result<String, String> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(Ok(Polled::Document(config))) => {
                let count = |kind: &str| {
                    config
                        .get(kind)
                        .and_then(|v| v.as_array())
                        .map_or(0, Vec::len)
                };
                Ok(format!(
                    "the control plane sent its config (config_hash {}, {} services, {} routes, {} plugins)",
                    self.current_hash.as_deref().unwrap_or_default(),
                    count("services"),
                    count("routes"),
                    count("plugins")
                ))
            }
            Ok(Ok(Polled::NotModified)) => Ok("the control plane sent the config held".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(protocol::explain_withheld(
                wait,
                self.settings.plugins_configured,
            )),
        }
    }

    fn unreachable(&self, detail: impl Into<String>) -> SourceError {
        SourceError::Unreachable {
            url: self.shown.clone(),
            detail: detail.into(),
        }
    }

    fn refused(&self, detail: impl Into<String>) -> SourceError {
        SourceError::Refused {
            url: self.shown.clone(),
            detail: detail.into(),
        }
    }

    /// The version and plugins to announce: the control plane's own when its Admin API
    /// answers, else the configured ones.
    async fn node_info(&self) -> (NodeInfo, Option<String>) {
        let mut node = self.settings.node.clone();
        let Some(admin) = &self.settings.admin else {
            return (node, None);
        };
        match self.admin_root(admin).await {
            Ok(info) => {
                debug!(version = %info.version, plugins = info.plugins.len(), "read the control plane's version and plugins from its Admin API");
                node.version = info.version.clone();
                if !info.plugins.is_empty() {
                    node.plugins = info.plugins;
                }
                (node, Some(info.version))
            }
            Err(e) => {
                warn!(version = %node.version, "cannot read the control plane's Admin API ({e}); announcing the configured version and plugins (FALLBACK_CLUSTER_NODE_VERSION, FALLBACK_CLUSTER_PLUGINS)");
                (node, None)
            }
        }
    }

    async fn admin_root(&self, admin: &settings::AdminApi) -> Result<ControlPlaneInfo, String> {
        let mut request =
            http::Request::get(format!("{}/", admin.url)).header("accept", "application/json");
        if let Some(token) = &admin.token {
            request = request.header("kong-admin-token", token.expose());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let shown = transport::redact_url(&admin.url);
        let response = transport::send(&self.http, request, self.settings.connect_timeout)
            .await
            .map_err(|e| format!("{shown}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "{shown} answered HTTP {}{}",
                response.status().as_u16(),
                if response.status().as_u16() == 401 {
                    " (set FALLBACK_CLUSTER_ADMIN_TOKEN)"
                } else {
                    ""
                }
            ));
        }
        protocol::parse_admin_root(response.body()).map_err(|e| format!("{shown} GET /: {e}"))
    }

    /// TCP, TLS, the WebSocket upgrade, then `basic_info`.
    async fn connect(&self) -> Result<Connection, SourceError> {
        let (node, control_plane_version) = self.node_info().await;
        let deadline = self.settings.connect_timeout;
        let address = (self.settings.host.as_str(), self.settings.port);
        let tcp = tokio::time::timeout(deadline, TcpStream::connect(address))
            .await
            .map_err(|_| self.unreachable(format!("no TCP connection within {deadline:?}")))?
            .map_err(|e| self.unreachable(format!("TCP: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let server_name =
            rustls::pki_types::ServerName::try_from(self.settings.server_name.clone())
                .map_err(|_| self.refused("KONG_CLUSTER_SERVER_NAME is not a host name"))?;
        let tls = tokio::time::timeout(
            deadline,
            TlsConnector::from(self.settings.tls.clone()).connect(server_name, tcp),
        )
        .await
        .map_err(|_| self.unreachable(format!("no TLS handshake within {deadline:?}")))?
        .map_err(|e| self.tls_failure(&e))?;
        let url = format!(
            "wss://{}:{}{}",
            self.settings.host,
            self.settings.port,
            protocol::outlet_path(&node)
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.settings.max_payload))
            .max_frame_size(Some(self.settings.max_payload));
        let upgrade = tokio_tungstenite::client_async_with_config(url, tls, Some(config));
        let (mut socket, _) = tokio::time::timeout(deadline, upgrade)
            .await
            .map_err(|_| self.unreachable(format!("no WebSocket upgrade within {deadline:?}")))?
            .map_err(|e| self.upgrade_failure(e))?;
        socket
            .send(Message::Binary(protocol::basic_info_frame(&node).into()))
            .await
            .map_err(|e| self.unreachable(format!("sending basic_info: {e}")))?;
        let now = Instant::now();
        info!(control_plane = %self.shown, node_id = %node.id, node_version = %node.version, plugins = node.plugins.len(), "connected to the Kong control plane as a data plane");
        Ok(Connection {
            socket,
            node,
            control_plane_version,
            connected_at: now,
            last_seen: now,
            next_ping: now,
            got_config: false,
            answered: false,
            warned_withheld: false,
        })
    }

    fn tls_failure(&self, e: &std::io::Error) -> SourceError {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(alert)) => self.refused(format!(
                "the TLS handshake failed with the control plane's alert {alert:?}: it refuses this node's certificate ({})",
                self.certificate_advice()
            )),
            Some(rustls::Error::InvalidCertificate(reason)) => self.refused(format!(
                "this node refuses the control plane's certificate ({reason:?}): KONG_CLUSTER_CA_CERT must be the CA that signed it and {:?} a name in it (KONG_CLUSTER_SERVER_NAME)",
                self.settings.server_name
            )),
            Some(rustls::Error::General(reason)) => self.refused(reason.clone()),
            _ => self.unreachable(format!("TLS: {}", transport::error_chain(e))),
        }
    }

    fn certificate_advice(&self) -> &'static str {
        match self.settings.mode {
            tls::MtlsMode::Shared => "KONG_CLUSTER_MTLS=shared: KONG_CLUSTER_CERT must be the control plane's cluster_cert",
            tls::MtlsMode::Pki => "KONG_CLUSTER_MTLS=pki: KONG_CLUSTER_CERT must be signed by the control plane's cluster_ca_cert",
        }
    }

    fn upgrade_failure(&self, e: tungstenite::Error) -> SourceError {
        match e {
            tungstenite::Error::Http(response) => {
                let status = response.status().as_u16();
                self.refused(protocol::explain_upgrade_failure(
                    &format!("the WebSocket upgrade was answered HTTP {status}"),
                    Some(status),
                ))
            }
            tungstenite::Error::Io(io) => match self.tls_failure(&io) {
                refused @ SourceError::Refused { .. } => refused,
                _ => self.refused(protocol::explain_upgrade_failure(
                    &format!("the connection closed during the WebSocket upgrade ({io})"),
                    None,
                )),
            },
            tungstenite::Error::Protocol(p) => self.refused(protocol::explain_upgrade_failure(
                &format!("the connection closed during the WebSocket upgrade ({p})"),
                None,
            )),
            other => self.unreachable(format!("WebSocket upgrade: {other}")),
        }
    }

    /// Reads frames and pings until a config arrives or the connection ends.
    async fn drive(&mut self) -> Result<Polled, SourceError> {
        let settings = &self.settings;
        let Some(conn) = self.connection.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        loop {
            let withheld_at = (!conn.got_config && !conn.warned_withheld)
                .then_some(conn.connected_at + settings.withheld_after);
            let dead_at = conn.last_seen + settings.ping_wait;
            tokio::select! {
                _ = tokio::time::sleep_until(conn.next_ping) => {
                    let payload = protocol::ping_payload(self.current_hash.as_deref());
                    if let Err(e) = conn.socket.send(Message::Ping(payload.into())).await {
                        return Err(SourceError::Unreachable { url: self.shown.clone(), detail: format!("sending a ping: {e}") });
                    }
                    conn.next_ping = Instant::now() + settings.ping_interval;
                }
                _ = tokio::time::sleep_until(dead_at) => {
                    return Err(SourceError::Unreachable { url: self.shown.clone(), detail: format!("no pong nor any frame from the control plane within {:?}", settings.ping_wait) });
                }
                _ = sleep_opt(withheld_at) => {
                    conn.warned_withheld = true;
                    warn!(control_plane = %self.shown, "{}", protocol::explain_withheld(settings.withheld_after, settings.plugins_configured));
                }
                frame = conn.socket.next() => {
                    let early = !conn.answered && conn.connected_at.elapsed() < EARLY_CLOSE;
                    let closed = |detail: String| {
                        if early {
                            SourceError::Refused { url: self.shown.clone(), detail: protocol::explain_early_close(&conn.node.version, conn.control_plane_version.as_deref()) }
                        } else {
                            SourceError::Unreachable { url: self.shown.clone(), detail }
                        }
                    };
                    let message = match frame {
                        None => return Err(closed("the control plane closed the connection".into())),
                        Some(Err(tungstenite::Error::Capacity(e))) => {
                            return Err(SourceError::Unreachable { url: self.shown.clone(), detail: format!("{e}: the control plane sent more than KONG_CLUSTER_MAX_PAYLOAD ({} bytes) in one message; raise it to the control plane's cluster_max_payload", settings.max_payload) });
                        }
                        Some(Err(e)) => return Err(closed(format!("connection lost: {e}"))),
                        Some(Ok(message)) => message,
                    };
                    conn.last_seen = Instant::now();
                    conn.answered |= matches!(message, Message::Pong(_) | Message::Binary(_));
                    match message {
                        Message::Binary(data) => match protocol::decode_frame(&data) {
                            Ok(Some(reconfigure)) => {
                                conn.got_config = true;
                                self.backoff.reset();
                                let computed = config_hash::config_hash(&reconfigure.config_table);
                                if computed != reconfigure.config_hash {
                                    warn!(sent = %reconfigure.config_hash, computed = %computed, "the control plane's config_hash does not match the config as Kong computes it; exported anyway (Kong's data planes do not check it)");
                                }
                                // Kong's data planes ping at once after a new config.
                                conn.next_ping = Instant::now();
                                if self.current_hash.as_deref() == Some(reconfigure.config_hash.as_str()) {
                                    return Ok(Polled::NotModified);
                                }
                                info!(config_hash = %reconfigure.config_hash, "the control plane pushed a config");
                                self.current_hash = Some(reconfigure.config_hash);
                                return Ok(Polled::Document(reconfigure.config_table));
                            }
                            Ok(None) => debug!("ignored a binary frame that is not a reconfigure"),
                            Err(e) => return Err(SourceError::Malformed { url: self.shown.clone(), detail: e.to_string() }),
                        },
                        Message::Close(frame) => {
                            let reason = frame.map(|f| format!(" ({} {})", u16::from(f.code), f.reason)).unwrap_or_default();
                            return Err(closed(format!("the control plane closed the connection{reason}")));
                        }
                        // A pong answers our ping, which carries the hash of the config held:
                        // a control plane holding another one pushes it. So a pong with no push
                        // confirms the config held is current (the exporter renews its export
                        // time from such confirmations).
                        Message::Pong(_) if conn.got_config => return Ok(Polled::NotModified),
                        Message::Pong(_) | Message::Ping(_) => {}
                        Message::Text(_) | Message::Frame(_) => debug!("ignored a text frame from the control plane"),
                    }
                }
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl ConfigSource for ClusterSource {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn next(&mut self) -> Result<Polled, SourceError> {
        if self.connection.is_none() {
            if let Some(at) = self.reconnect_at.take() {
                tokio::time::sleep_until(at).await;
            }
            match self.connect().await {
                Ok(conn) => self.connection = Some(conn),
                Err(e) => {
                    self.schedule_reconnect();
                    return Err(e);
                }
            }
        }
        let result = self.drive().await;
        match &result {
            // A garbled push does not end the connection: the next one may be fine.
            Ok(_) | Err(SourceError::Malformed { .. }) => {}
            Err(_) => {
                if let Some(mut conn) = self.connection.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), conn.socket.close(None)).await;
                }
                self.schedule_reconnect();
            }
        }
        result
    }
}

impl ClusterSource {
    fn schedule_reconnect(&mut self) {
        let delay = Duration::from_millis(self.backoff.next_delay_ms(rand::random()));
        debug!(?delay, "reconnecting to the control plane after a delay");
        self.reconnect_at = Some(Instant::now() + delay);
    }
}
