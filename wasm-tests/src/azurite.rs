//! A real Azurite (Microsoft's Azure Storage emulator, blob service only) on loopback, one
//! process per test, its own port and temp dir, one container.
//!
//! Azurite checks Shared Key signatures and SAS tokens with its well-known development account
//! (`devstoreaccount1`), so wrong keys, read-only SAS URLs and the companion's signing are all
//! checked by the emulator itself. Requests are path-style:
//! `http://127.0.0.1:<port>/devstoreaccount1/<container>/<blob>`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use fallback_companion::secret::Secret;
use fallback_companion::storage::azure::{
    http_date, shared_key_string_to_sign, API_VERSION, DEV_ACCOUNT, DEV_ACCOUNT_KEY,
};
use fallback_companion::storage::AzureSettings;
use hmac::{Hmac, Mac};
use tokio::process::{Child, Command};

use crate::http::{request_with_timeout, HttpResponse};
use crate::ports::free_port;
use crate::process_log::{append_output, last_lines};
use crate::tools::binary;

/// How long [`Azurite::start`] waits for the server and the container.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Azurite blob service. Dropping it kills the process and deletes its directory.
pub struct Azurite {
    dir: tempfile::TempDir,
    port: u16,
    container: String,
    child: Option<Child>,
}

impl Azurite {
    /// Starts Azurite with container `"fallback"`; returns once the container exists.
    pub async fn start() -> Self {
        let mut last_error = String::new();
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new()
                .prefix("azurite-")
                .tempdir()
                .expect("create a temp dir for Azurite");
            let mut azurite = Self {
                dir,
                port: free_port(),
                container: crate::DEFAULT_BUCKET.to_owned(),
                child: None,
            };
            azurite.spawn();
            match azurite.wait_ready().await {
                Ok(()) => return azurite,
                Err(e) => {
                    let log = azurite.log_tail(30);
                    azurite.kill().await;
                    last_error = format!(
                        "{e}\n--- tail of {} ---\n{log}",
                        azurite.log_path().display()
                    );
                    if log.contains("EADDRINUSE") && attempt < 3 {
                        continue;
                    }
                    break;
                }
            }
        }
        panic!("Azurite did not become ready: {last_error}");
    }

    fn spawn(&mut self) {
        let (log, log_err) = append_output(&self.log_path(), "Azurite log file");
        let bin = binary("azurite-blob");
        let child = Command::new(&bin)
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// The argument list used for this instance.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            self.port.to_string(),
            "--location".into(),
            self.dir.path().join("data").display().to_string(),
            "--skipApiVersionCheck".into(),
            "--disableTelemetry".into(),
            // Path-style only: the first path segment is the account, whatever the host says.
            "--disableProductStyleUrl".into(),
        ]
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("Azurite exited early with {status}"));
                }
            }
            let path = format!("/{DEV_ACCOUNT}/{}", self.container);
            match self
                .signed("PUT", &path, &[("restype", "container")], Vec::new())
                .await
            {
                // 409: it exists already (a retry after a slow first answer).
                Ok(r) if r.status == 201 || r.status == 409 => return Ok(()),
                Ok(r) => last = format!("create container: status {}: {}", r.status, r.text()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {} never created: {last}",
                    self.container
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A request signed with the development account's key, behind the companion's back.
    async fn signed(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: Vec<(String, String)>,
    ) -> Result<HttpResponse, String> {
        let mut headers = extra;
        headers.push(("x-ms-date".into(), http_date(SystemTime::now())));
        headers.push(("x-ms-version".into(), API_VERSION.into()));
        let string_to_sign = shared_key_string_to_sign(method, &headers, DEV_ACCOUNT, path, query);
        let key = base64::engine::general_purpose::STANDARD
            .decode(DEV_ACCOUNT_KEY)
            .expect("the development key is base64");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(string_to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        headers.push((
            "authorization".into(),
            format!("SharedKey {DEV_ACCOUNT}:{signature}"),
        ));
        let query_text: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let url = if query.is_empty() {
            format!("http://127.0.0.1:{}{path}", self.port)
        } else {
            format!(
                "http://127.0.0.1:{}{path}?{}",
                self.port,
                query_text.join("&")
            )
        };
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        request_with_timeout(
            method,
            &url,
            &borrowed,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
    }

    /// The blob as Azurite holds it (body and headers, metadata included), behind the
    /// companion's back; `None` when it does not exist.
    pub async fn raw_blob(&self, key: &str) -> Option<HttpResponse> {
        let path = format!("/{DEV_ACCOUNT}/{}/{key}", self.container);
        let r = self.signed("GET", &path, &[], Vec::new()).await.ok()?;
        (r.status == 200).then_some(r)
    }

    /// Kills the process; the data directory and port are kept.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`, the value for `AZURE_STORAGE_BLOB_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.port)
    }

    /// The port Azurite listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container created at start.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The companion's settings for this instance with `key` as the account key.
    pub fn settings_with_key(&self, key: &str) -> AzureSettings {
        AzureSettings {
            account: Some(DEV_ACCOUNT.into()),
            account_key: Some(Secret::new(key)),
            blob_endpoint: Some(self.endpoint()),
            ..AzureSettings::default()
        }
    }

    /// The companion's settings for this instance with the development account's key.
    pub fn settings(&self) -> AzureSettings {
        self.settings_with_key(DEV_ACCOUNT_KEY)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("azurite.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(
            &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
            lines,
        )
    }
}
