//! Shared pieces of the end-to-end tests: documents, S3 settings for a [`SeaweedFs`] identity,
//! an in-process exporter, and bounded waiting.

use crate::{Credentials, SeaweedFs};
use fallback_companion::exporter::{self, ExportSettings, ExportStats, ExportedRevision};
use fallback_companion::secret::Secret;
use fallback_companion::source::{ConfigSource, ControlPlane, Polling};
use fallback_companion::storage::{ConfigStore, S3Settings, S3Store};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A valid declarative document; `marker` makes each one distinct.
pub fn document(marker: &str) -> Value {
    json!({
        "_format_version": "3.0",
        "services": [{
            "name": "billing",
            "url": "http://billing.internal:8080/v1",
            "routes": [{"name": "billing-api", "paths": ["/billing"], "tags": [marker]}],
        }],
        "consumers": [{"username": "mobile", "keyauth_credentials": [{"key": "k-1"}]}],
    })
}

/// A document that fails validation: its route names a service that does not exist.
pub fn invalid_document() -> Value {
    json!({
        "_format_version": "3.0",
        "routes": [{"name": "orphan", "paths": ["/x"], "service": "nowhere"}],
    })
}

/// S3 settings for one of the store's identities, path-style on its endpoint.
pub fn s3_settings(store: &SeaweedFs, identity: &Credentials) -> S3Settings {
    S3Settings {
        access_key_id: identity.access_key.clone(),
        secret_access_key: Secret::new(identity.secret_key.clone()),
        session_token: None,
        region: "us-east-1".into(),
        endpoint: Some(store.endpoint()),
        force_path_style: false,
        server_side_encryption: None,
    }
}

/// The companion's S3 backend for one identity.
pub fn s3_store(store: &SeaweedFs, identity: &Credentials) -> Arc<dyn ConfigStore> {
    Arc::new(
        S3Store::new(store.bucket().to_owned(), s3_settings(store, identity))
            .expect("S3 settings are valid"),
    )
}

/// How often [`RunningExporter::start`] polls the mock CP.
pub const FAST_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Export settings tuned for tests: fast polls, short delays and retries. The version is the
/// one `key` (`<prefix>/<version>/config.json`) names.
pub fn fast_settings(key: &str, node_id: &str) -> ExportSettings {
    let version = key.rsplit('/').nth(1).unwrap_or_default().to_owned();
    ExportSettings {
        key: key.to_owned(),
        node_id: node_id.to_owned(),
        export_delay: Duration::from_millis(300),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        signing_key: None,
        live: None,
        version,
        mirrors: Vec::new(),
        refresh: None,
    }
}

/// The companion's export loop running in this process.
pub struct RunningExporter {
    /// Its counters.
    pub stats: Arc<ExportStats>,
    /// The last export it completed.
    pub exported: watch::Receiver<Option<ExportedRevision>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningExporter {
    /// Starts the export loop polling `cp_url` every [`FAST_POLL_INTERVAL`] and writing to
    /// `store`.
    pub fn start(settings: ExportSettings, cp_url: &str, store: Arc<dyn ConfigStore>) -> Self {
        let control_plane =
            ControlPlane::new(cp_url, Duration::from_secs(2)).expect("mock CP URL is valid");
        let source = Box::new(Polling::new(control_plane, FAST_POLL_INTERVAL));
        Self::start_with_source(settings, source, store)
    }

    /// Starts the export loop reading `source` and writing to `store`.
    pub fn start_with_source(
        settings: ExportSettings,
        source: Box<dyn ConfigSource>,
        store: Arc<dyn ConfigStore>,
    ) -> Self {
        let stats = Arc::new(ExportStats::default());
        let (exported_tx, exported) = watch::channel(None);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(exporter::run(
            settings,
            source,
            store,
            stats.clone(),
            exported_tx,
            shutdown_rx,
        ));
        Self {
            stats,
            exported,
            shutdown,
            task: Some(task),
        }
    }

    /// One counter's current value.
    pub fn count(&self, counter: impl Fn(&ExportStats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Relaxed)
    }

    /// Stops the loop and waits for it.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for RunningExporter {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signer settings for tests: one bearer token, the given prefix and default version, a short
/// readiness interval so that `/readyz` follows the store quickly.
pub fn signer_settings(
    prefix: &str,
    version: &str,
    token: &str,
) -> fallback_companion::signer::SignerSettings {
    let tokens = fallback_companion::signer::Tokens::new(Some(&Secret::new(token)), None)
        .expect("a token is configured");
    let mut settings =
        fallback_companion::signer::SignerSettings::new(prefix, version, Arc::new(tokens));
    settings.readiness_interval = Duration::from_millis(200);
    settings
}

/// The companion's signer role running in this process on a free loopback port.
pub struct RunningSigner {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningSigner {
    /// A listener on a free loopback port and its base URL, for settings that must know the
    /// URL before the signer starts (file:// object URLs).
    pub async fn bind() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        (listener, url)
    }

    /// Starts the signer on `listener`.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        settings: fallback_companion::signer::SignerSettings,
        store: Arc<dyn ConfigStore>,
    ) -> Self {
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) =
                fallback_companion::signer::serve(settings, store, listener, shutdown_rx).await
            {
                eprintln!("signer failed: {e:#}");
            }
        });
        Self {
            url,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts the signer on a free loopback port.
    pub async fn start(
        settings: fallback_companion::signer::SignerSettings,
        store: Arc<dyn ConfigStore>,
    ) -> Self {
        let (listener, _) = Self::bind().await;
        Self::start_on(listener, settings, store)
    }

    /// Stops the signer and waits for it.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for RunningSigner {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
