//! A real fake-gcs-server on loopback (GCS JSON API emulator, filesystem backend), one process
//! per test, its own port and temp dir, one bucket.
//!
//! It checks no credentials at all and ignores `ifGenerationMatch` on media uploads, but honours
//! it on multipart uploads (which the companion uses): signing is proved by Google's published
//! vectors, the request flow and the preconditions by this server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::http::request_with_timeout;
use crate::ports::free_port;
use crate::process_log::{append_output, last_lines};
use crate::tools::binary;

/// How long [`FakeGcs::start`] waits for the server and the bucket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running fake-gcs-server. Dropping it kills the process and deletes its directory.
pub struct FakeGcs {
    dir: tempfile::TempDir,
    port: u16,
    bucket: String,
    /// The memory backend instead of the filesystem one.
    in_memory: bool,
    child: Option<Child>,
}

impl FakeGcs {
    /// Starts fake-gcs-server with bucket `"fallback"`; returns once the bucket exists.
    pub async fn start() -> Self {
        Self::start_with_bucket(crate::DEFAULT_BUCKET).await
    }

    /// Like [`FakeGcs::start`] with another bucket name.
    pub async fn start_with_bucket(bucket: &str) -> Self {
        Self::start_with(bucket, false).await
    }

    /// Like [`FakeGcs::start`] with the memory backend, which keeps object names byte for byte
    /// as GCS does (the filesystem backend files `/a`, `a` and `a//b`, `a/b` in one place).
    /// Its objects go with the process.
    pub async fn start_in_memory() -> Self {
        Self::start_with(crate::DEFAULT_BUCKET, true).await
    }

    async fn start_with(bucket: &str, in_memory: bool) -> Self {
        let mut last_error = String::new();
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new()
                .prefix("fake-gcs-")
                .tempdir()
                .expect("create a temp dir for fake-gcs-server");
            let mut gcs = Self {
                dir,
                port: free_port(),
                bucket: bucket.to_owned(),
                in_memory,
                child: None,
            };
            gcs.spawn();
            match gcs.wait_ready().await {
                Ok(()) => return gcs,
                Err(e) => {
                    let log = gcs.log_tail(30);
                    gcs.kill().await;
                    last_error =
                        format!("{e}\n--- tail of {} ---\n{log}", gcs.log_path().display());
                    if log.contains("address already in use") && attempt < 3 {
                        continue;
                    }
                    break;
                }
            }
        }
        panic!("fake-gcs-server did not become ready: {last_error}");
    }

    fn spawn(&mut self) {
        let (log, log_err) = append_output(&self.log_path(), "fake-gcs-server log file");
        let bin = binary("fake-gcs-server");
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

    /// The argument list used for this instance (DESIGN.md's recipe).
    pub fn args(&self) -> Vec<String> {
        let p = self.port;
        vec![
            "-scheme".into(),
            "http".into(),
            "-host".into(),
            "127.0.0.1".into(),
            "-port".into(),
            p.to_string(),
            "-backend".into(),
            if self.in_memory {
                "memory"
            } else {
                "filesystem"
            }
            .into(),
            "-filesystem-root".into(),
            self.dir.path().join("data").display().to_string(),
            "-external-url".into(),
            format!("http://127.0.0.1:{p}"),
            "-public-host".into(),
            format!("127.0.0.1:{p}"),
            "-log-level".into(),
            "warn".into(),
        ]
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let body = Bytes::from(serde_json::json!({"name": self.bucket}).to_string());
        let create = format!("{}/storage/v1/b", self.endpoint());
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("fake-gcs-server exited early with {status}"));
                }
            }
            match request_with_timeout(
                "POST",
                &create,
                &[("content-type", "application/json")],
                body.clone(),
                Duration::from_secs(2),
            )
            .await
            {
                // 409: it exists already (a retry after a slow first answer).
                Ok(r) if r.status == 200 || r.status == 409 => return Ok(()),
                Ok(r) => last = format!("create bucket: status {}: {}", r.status, r.text()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("bucket {} never created: {last}", self.bucket));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills the process; the data directory and port are kept.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    /// `http://127.0.0.1:<port>`, the value for `STORAGE_EMULATOR_HOST`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object resource as the server holds it (JSON API), behind the companion's back.
    pub async fn raw_resource(&self, key: &str) -> Option<serde_json::Value> {
        let encoded: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!(
            "{}/storage/v1/b/{}/o/{encoded}",
            self.endpoint(),
            self.bucket
        );
        let r = crate::http::get(&url).await.ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// This instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("fake-gcs-server.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(
            &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
            lines,
        )
    }
}
