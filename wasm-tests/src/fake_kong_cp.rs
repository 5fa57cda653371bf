//! A fake Kong control plane speaking the full-sync cluster protocol (`/v1/outlet`) as Kong's
//! own control plane does, so the companion's cluster source is tested without Kong (which
//! cannot run here).
//!
//! It follows Kong 3.10's `kong/clustering/` (`control_plane.lua` `handle_cp_websocket`,
//! `utils.lua` `connect_dp`, `tls.lua` `validate_client_cert`, `compat/init.lua`), whose
//! data-plane handshake is the same in 3.4:
//! - TLS with the cluster certificate; `shared`: any client certificate is accepted by TLS
//!   (`ssl_verify_client optional_no_ca`) and then must equal the cluster certificate, or the
//!   connection is closed without an answer (`ngx.exit(444)`); `pki`: TLS itself requires a
//!   client certificate signed by the cluster CA (`ssl_verify_client on`);
//! - the WebSocket upgrade on `/v1/outlet` needs `node_id` and `node_version` (else 400);
//! - the first frame must be a binary `basic_info` with a `plugins` table, else close;
//! - an incompatible `node_version` (another major, or a newer minor) gets a close frame;
//! - the config is sent gzip-compressed as `reconfigure` unless a plugin it configures is
//!   missing from `basic_info` or has another major (or a newer minor) version;
//! - every frame from the data plane must be a ping carrying 32 bytes; the control plane
//!   answers pongs and drops a data plane silent for `ping_wait` (Kong: 45 s).
//!
//! `config_hash` is computed with the companion's implementation of Kong's
//! `calculate_config_hash`, which is checked against Kong's own vectors in its unit tests.

use crate::ports::free_port;
use fallback_companion::cluster::config_hash::config_hash;
use flate2::write::GzEncoder;
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl CertPair {
    fn der(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        (
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("test cert PEM"),
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key PEM"),
        )
    }
}

/// The cluster's certificates, generated for the test.
#[derive(Debug, Clone)]
pub enum ClusterPki {
    /// `cluster_mtls = shared`: one certificate (CN `kong_clustering`, no SAN, as
    /// `kong hybrid gen_cert` makes it) on both sides.
    Shared(CertPair),
    /// `cluster_mtls = pki`: a CA, the control plane's certificate for a server name, and a
    /// data plane's certificate, both signed by the CA.
    Pki {
        /// The CA.
        ca: CertPair,
        /// The control plane's certificate.
        control_plane: CertPair,
        /// A data plane's certificate.
        data_plane: CertPair,
    },
}

fn self_signed_cluster_cert() -> CertPair {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kong_clustering");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl ClusterPki {
    /// A new shared cluster certificate.
    pub fn shared() -> Self {
        Self::Shared(self_signed_cluster_cert())
    }

    /// A new CA with a control-plane certificate for `server_name` and a data-plane one.
    pub fn pki(server_name: &str) -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test cluster CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let ca_pem = ca_cert.pem();
        let ca_key_pem = issuer.key().serialize_pem();
        let leaf = |names: Vec<String>, cn: &str| {
            let mut params = rcgen::CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("signed");
            CertPair {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        };
        Self::Pki {
            control_plane: leaf(vec![server_name.to_owned()], server_name),
            data_plane: leaf(Vec::new(), "fallback-backup-node"),
            ca: CertPair {
                cert_pem: ca_pem,
                key_pem: ca_key_pem,
            },
        }
    }

    /// What a data plane presents: the cluster certificate, or its own.
    pub fn data_plane(&self) -> &CertPair {
        match self {
            Self::Shared(pair) => pair,
            Self::Pki { data_plane, .. } => data_plane,
        }
    }

    /// `KONG_CLUSTER_MTLS`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Shared(_) => "shared",
            Self::Pki { .. } => "pki",
        }
    }

    /// The CA certificate (pki).
    pub fn ca_pem(&self) -> Option<&str> {
        match self {
            Self::Shared(_) => None,
            Self::Pki { ca, .. } => Some(&ca.cert_pem),
        }
    }

    fn server_config(&self) -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let (builder, own) = match self {
            Self::Shared(pair) => (
                builder.with_client_cert_verifier(Arc::new(AnyClientCertificate { provider })),
                pair,
            ),
            Self::Pki {
                ca, control_plane, ..
            } => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der().0).expect("CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                (builder.with_client_cert_verifier(verifier), control_plane)
            }
        };
        let (cert, key) = own.der();
        builder
            .with_single_cert(vec![cert], key)
            .expect("server certificate")
    }
}

/// nginx's `ssl_verify_client optional_no_ca`: asks for a certificate and leaves the check to
/// the application (Kong compares it with the cluster certificate).
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Kong's `CLUSTERING_SYNC_STATUS` for a data plane, as the fake records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// Connected, nothing decided yet.
    Unknown,
    /// The config is sent.
    Normal,
    /// `KONG_VERSION_INCOMPATIBLE`: refused at the handshake.
    KongVersionIncompatible,
    /// `PLUGIN_SET_INCOMPATIBLE`: a configured plugin is missing on the data plane.
    PluginSetIncompatible,
    /// `PLUGIN_VERSION_INCOMPATIBLE`: a configured plugin's version is incompatible.
    PluginVersionIncompatible,
}

/// One data-plane connection as the fake saw it.
#[derive(Debug, Clone)]
pub struct DataPlaneRecord {
    /// The upgrade's query string.
    pub query: String,
    /// `node_version` from it.
    pub node_version: String,
    /// The `basic_info` message, once received.
    pub basic_info: Option<Value>,
    /// Kong's sync status for it.
    pub sync_status: SyncStatus,
    /// Payloads of the pings received, in order.
    pub pings: Vec<Vec<u8>>,
    /// `reconfigure` messages sent.
    pub configs_sent: u32,
    /// Why the control plane ended the connection, if it did.
    pub closed_because: Option<String>,
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeCpSettings {
    /// The control plane's Kong version.
    pub version: String,
    /// Its plugins (name, version), as `kong.db.plugins:get_handlers()` lists them.
    pub plugins: Vec<(String, String)>,
    /// Silence allowed from a data plane before dropping it (Kong: 45 s).
    pub ping_wait: Duration,
}

impl Default for FakeCpSettings {
    fn default() -> Self {
        let version = "3.10.0".to_owned();
        let plugins = [
            "key-auth",
            "acl",
            "rate-limiting",
            "cors",
            "request-termination",
        ]
        .iter()
        .map(|n| ((*n).to_owned(), version.clone()))
        .collect();
        Self {
            version,
            plugins,
            ping_wait: Duration::from_secs(45),
        }
    }
}

struct Shared {
    settings: FakeCpSettings,
    pki: ClusterPki,
    records: Mutex<Vec<DataPlaneRecord>>,
    config: watch::Sender<Option<Value>>,
}

/// The fake control plane. See the module docs.
pub struct FakeKongCp {
    port: u16,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl FakeKongCp {
    /// Starts on a free loopback port with no config.
    pub async fn start(pki: ClusterPki, settings: FakeCpSettings) -> Self {
        let (config, _) = watch::channel(None);
        let mut cp = Self {
            port: free_port(),
            shared: Arc::new(Shared {
                settings,
                pki,
                records: Mutex::new(Vec::new()),
                config,
            }),
            server: None,
        };
        cp.listen().await;
        cp
    }

    /// `127.0.0.1:PORT`, for `KONG_CLUSTER_CONTROL_PLANE`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The certificates.
    pub fn pki(&self) -> &ClusterPki {
        &self.shared.pki
    }

    /// The connections seen so far.
    pub fn records(&self) -> Vec<DataPlaneRecord> {
        self.shared.records.lock().expect("records").clone()
    }

    /// Makes `config` the control plane's config and pushes it to every connected data plane
    /// (as Kong does after a change); returns its `config_hash`.
    pub fn publish(&self, config: Value) -> String {
        let hash = config_hash(&config);
        self.shared.config.send_replace(Some(config));
        hash
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.listen().await;
    }

    async fn listen(&mut self) {
        let shared = self.shared.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(shared.pki.server_config()));
        let listener = crate::serve::bind_loopback("FakeKongCp", self.port).await;
        self.server = Some(crate::serve::spawn_stream_server(listener, move |stream| {
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve(shared, tls).await;
                }
            }
        }));
    }
}

impl Drop for FakeKongCp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `extract_major_minor`: `^(%d+)%.(%d+)%.%d+`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    parts
        .next()?
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some((major, minor))
}

/// `check_kong_version_compatibility(cp_version, dp_version)`.
pub fn check_kong_version_compatibility(cp: &str, dp: &str) -> Result<(), String> {
    let (major_cp, minor_cp) = major_minor(cp).ok_or("control plane version unreadable")?;
    let Some((major_dp, minor_dp)) = major_minor(dp) else {
        return Err(format!("data plane version is incompatible with control plane version {cp} ({major_cp}.x.y are accepted)"));
    };
    if major_cp != major_dp {
        return Err(format!("data plane version {dp} is incompatible with control plane version {cp} ({major_cp}.x.y are accepted)"));
    }
    if minor_cp < minor_dp {
        return Err(format!(
            "data plane version {dp} is incompatible with older control plane version {cp}"
        ));
    }
    Ok(())
}

/// `check_configuration_compatibility`: every plugin the config uses must be on the data
/// plane, and when both sides name versions, with the same major and a minor not newer than
/// the control plane's.
pub fn check_configuration_compatibility(
    cp_plugins: &[(String, String)],
    config: &Value,
    dp_plugins: &Value,
) -> Result<(), (SyncStatus, String)> {
    let configured: Vec<&str> = config
        .get("plugins")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(|p| p.get("name")?.as_str()).collect())
        .unwrap_or_default();
    let dp: Vec<(&str, Option<&str>)> = dp_plugins
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|p| {
                    Some((
                        p.get("name")?.as_str()?,
                        p.get("version").and_then(Value::as_str),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, cp_version) in cp_plugins {
        if !configured.contains(&name.as_str()) {
            continue;
        }
        let Some((_, dp_version)) = dp.iter().find(|(n, _)| n == name) else {
            return Err((
                SyncStatus::PluginSetIncompatible,
                format!("configured {name} plugin {cp_version} is missing from data plane"),
            ));
        };
        if let (Some((cp_major, cp_minor)), Some((dp_major, dp_minor))) =
            (major_minor(cp_version), dp_version.and_then(major_minor))
        {
            if cp_major != dp_major || cp_minor < dp_minor {
                return Err((
                    SyncStatus::PluginVersionIncompatible,
                    format!("configured data plane {name} plugin version {} is different to control plane plugin version {cp_version}", dp_version.unwrap_or_default()),
                ));
            }
        }
    }
    Ok(())
}

fn reconfigure_payload(config: &Value) -> Vec<u8> {
    let message = json!({
        "type": "reconfigure",
        "timestamp": 1_790_000_000.123,
        "config_table": config,
        "config_hash": config_hash(config),
        "hashes": {},
    });
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(message.to_string().as_bytes()).expect("gzip");
    gz.finish().expect("gzip")
}

async fn serve(shared: Arc<Shared>, tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    // shared mode: the client certificate must be the cluster certificate, else 444 (close).
    if let ClusterPki::Shared(pair) = &shared.pki {
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        if presented.as_ref().map(|c| c.as_ref()) != Some(pair.der().0.as_ref()) {
            return;
        }
    }
    let query = Arc::new(Mutex::new(None::<String>));
    let seen = query.clone();
    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let reject = |status: u16| {
            let mut r = ErrorResponse::new(None);
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            r
        };
        if req.uri().path() != "/v1/outlet" {
            return Err(reject(404));
        }
        let q = req.uri().query().unwrap_or_default().to_owned();
        let has = |name: &str| {
            url_pairs(&q)
                .iter()
                .any(|(k, v)| k == name && !v.is_empty())
        };
        if !has("node_id") || !has("node_version") {
            return Err(reject(400));
        }
        *seen.lock().expect("query") = Some(q);
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(16 * 1024 * 1024));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(config)).await
    else {
        return;
    };
    let query = query.lock().expect("query").clone().unwrap_or_default();
    let node_version = url_pairs(&query)
        .into_iter()
        .find(|(k, _)| k == "node_version")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let index = {
        let mut records = shared.records.lock().expect("records");
        records.push(DataPlaneRecord {
            query,
            node_version: node_version.clone(),
            basic_info: None,
            sync_status: SyncStatus::Unknown,
            pings: Vec::new(),
            configs_sent: 0,
            closed_because: None,
        });
        records.len() - 1
    };
    let update = |f: &dyn Fn(&mut DataPlaneRecord)| {
        f(&mut shared.records.lock().expect("records")[index]);
    };
    let close = |why: String| update(&move |r| r.closed_because = Some(why.clone()));

    // basic_info first.
    let basic_info = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Binary(data)))) => serde_json::from_slice::<Value>(&data).ok(),
        _ => None,
    };
    let basic_info = match basic_info {
        Some(info)
            if info["type"] == "basic_info"
                && (info["plugins"].is_array() || info["plugins"].is_object()) =>
        {
            info
        }
        _ => {
            close("failed to receive basic_info".into());
            let _ = ws.close(None).await;
            return;
        }
    };
    update(&|r| r.basic_info = Some(basic_info.clone()));
    if let Err(e) = check_kong_version_compatibility(&shared.settings.version, &node_version) {
        update(&|r| r.sync_status = SyncStatus::KongVersionIncompatible);
        close(e);
        let _ = ws.close(None).await;
        return;
    }
    let dp_plugins = basic_info["plugins"].clone();
    let mut configs = shared.config.subscribe();
    configs.mark_changed();
    let mut last_seen = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = configs.changed() => {
                if changed.is_err() { return; }
                let Some(config) = configs.borrow_and_update().clone() else { continue };
                match check_configuration_compatibility(&shared.settings.plugins, &config, &dp_plugins) {
                    Ok(()) => {
                        update(&|r| { r.sync_status = SyncStatus::Normal; r.configs_sent += 1; });
                        if ws.send(Message::Binary(reconfigure_payload(&config).into())).await.is_err() {
                            return;
                        }
                    }
                    Err((status, _why)) => update(&|r| r.sync_status = status),
                }
            }
            _ = tokio::time::sleep_until(last_seen + shared.settings.ping_wait) => {
                close(format!("did not receive ping frame from data plane within {} seconds", shared.settings.ping_wait.as_secs_f64()));
                return;
            }
            frame = ws.next() => {
                let data = match frame {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(Message::Ping(data))) => data,
                    Some(Ok(other)) => {
                        let data = other.into_data();
                        if data.len() != 32 {
                            close(format!("received a ping frame from the data plane with an invalid hash: '{}'", String::from_utf8_lossy(&data)));
                        } else {
                            close("invalid websocket frame received from data plane".into());
                        }
                        return;
                    }
                };
                if data.len() != 32 {
                    close(format!("received a ping frame from the data plane with an invalid hash: '{}'", String::from_utf8_lossy(&data)));
                    return;
                }
                last_seen = tokio::time::Instant::now();
                let payload = data.to_vec();
                update(&|r| r.pings.push(payload.clone()));
                // tungstenite queues the pong and sends it with the next write or read.
                if ws.flush().await.is_err() { return; }
            }
        }
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
