//! A real SeaweedFS (`weed mini`) on loopback: S3 API with real SigV4 checks, one process per
//! test, its own temp dir and its own ports.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::http::{request, request_with_timeout, HttpResponse};
use crate::ports::free_port;
use crate::process_log::{append_output, last_lines};
use crate::s3::{Credentials, S3Client};
use crate::tools::binary;

/// How long [`SeaweedFs::start`] / [`SeaweedFs::restart`] wait for S3 and the bucket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every port one `weed mini` opens (all on 127.0.0.1, all chosen by the harness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeaweedPorts {
    /// Master HTTP.
    pub master: u16,
    /// Master gRPC.
    pub master_grpc: u16,
    /// Volume server HTTP.
    pub volume: u16,
    /// Volume server gRPC.
    pub volume_grpc: u16,
    /// Filer HTTP (unauthenticated API over the whole namespace; buckets live in `/buckets`).
    pub filer: u16,
    /// Filer gRPC.
    pub filer_grpc: u16,
    /// S3 API.
    pub s3: u16,
    /// S3 gRPC.
    pub s3_grpc: u16,
    /// Admin server HTTP (the admin UI is disabled, but `weed mini` 4.48 still listens).
    pub admin: u16,
    /// Admin server gRPC.
    pub admin_grpc: u16,
}

impl SeaweedPorts {
    fn allocate() -> Self {
        Self {
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            s3: free_port(),
            s3_grpc: free_port(),
            admin: free_port(),
            admin_grpc: free_port(),
        }
    }
}

/// A running (or stopped) `weed mini` with two S3 identities and one bucket.
///
/// - `writer`: actions `Admin`, `Read`, `List`, `Write`.
/// - `reader`: `Read:<bucket>`, `List:<bucket>`.
///
/// Dropping it kills the process and deletes its directory.
pub struct SeaweedFs {
    dir: tempfile::TempDir,
    ports: SeaweedPorts,
    bucket: String,
    writer: Credentials,
    reader: Credentials,
    child: Option<Child>,
}

/// The bucket [`SeaweedFs::start`] creates.
pub const DEFAULT_BUCKET: &str = "fallback";

fn random_token(prefix: &str, len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::from(prefix);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz";
    while out.len() < len {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let mut v = h.finish();
        for _ in 0..8 {
            out.push(ALPHABET[(v % ALPHABET.len() as u64) as usize] as char);
            v /= ALPHABET.len() as u64;
        }
    }
    out.truncate(len);
    out
}

impl SeaweedFs {
    /// Starts `weed mini` with bucket [`DEFAULT_BUCKET`] (`"fallback"`); returns once S3
    /// answers, the bucket is visible through a signed S3 `HEAD`, and writes are possible.
    pub async fn start() -> Self {
        Self::start_with_bucket(DEFAULT_BUCKET).await
    }

    /// Like [`SeaweedFs::start`] with another bucket name.
    pub async fn start_with_bucket(bucket: &str) -> Self {
        let mut last_error = String::new();
        for attempt in 1..=3 {
            let mut fs = Self::spawn_new(bucket);
            match fs.wait_ready(READY_TIMEOUT).await {
                Ok(()) => return fs,
                Err(e) => {
                    let log = fs.log_tail(40);
                    fs.kill().await;
                    let port_clash = log.contains("address already in use");
                    last_error = format!("{e}\n--- tail of {} ---\n{log}", fs.log_path().display());
                    if port_clash && attempt < 3 {
                        eprintln!(
                            "[harness] weed mini attempt {attempt}: a port was taken, retrying with fresh ports"
                        );
                        continue;
                    }
                    break;
                }
            }
        }
        panic!("SeaweedFS did not become ready: {last_error}");
    }

    fn spawn_new(bucket: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("weed-")
            .tempdir()
            .expect("create a temp dir for SeaweedFS");
        let writer = Credentials {
            access_key: random_token("WRITER", 20),
            secret_key: random_token("", 40),
        };
        let reader = Credentials {
            access_key: random_token("READER", 20),
            secret_key: random_token("", 40),
        };
        let s3_config = serde_json::json!({
            "identities": [
                {
                    "name": "writer",
                    "credentials": [{"accessKey": writer.access_key, "secretKey": writer.secret_key}],
                    "actions": ["Admin", "Read", "List", "Write"]
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": reader.access_key, "secretKey": reader.secret_key}],
                    "actions": [format!("Read:{bucket}"), format!("List:{bucket}")]
                }
            ]
        });
        std::fs::write(
            dir.path().join("s3.json"),
            serde_json::to_vec_pretty(&s3_config).expect("serialize s3.json"),
        )
        .expect("write SeaweedFS s3.json");
        std::fs::create_dir_all(dir.path().join("data")).expect("create SeaweedFS data dir");
        let mut fs = Self {
            dir,
            ports: SeaweedPorts::allocate(),
            bucket: bucket.to_string(),
            writer,
            reader,
            child: None,
        };
        fs.spawn();
        fs
    }

    /// The full `weed` argument list used for this instance.
    pub fn args(&self) -> Vec<String> {
        let p = &self.ports;
        let d = self.dir.path();
        vec![
            "mini".into(),
            format!("-dir={}", d.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", d.join("s3.json").display()),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-admin.port={}", p.admin),
            format!("-admin.port.grpc={}", p.admin_grpc),
            format!("-filer.localSocket={}", d.join("filer.sock").display()),
            format!("-s3.localSocket={}", d.join("s3.sock").display()),
            format!("-bucket={}", self.bucket),
        ]
    }

    fn spawn(&mut self) {
        let (log, log_err) = append_output(&self.log_path(), "SeaweedFS log file");
        let weed = binary("weed");
        let child = Command::new(&weed)
            .args(self.args())
            .current_dir(self.dir.path())
            .env_remove("S3_BUCKET")
            .env_remove("S3_TABLE_BUCKET")
            .env_remove("S3_EXTERNAL_URL")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} mini: {e}", weed.display()));
        self.child = Some(child);
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill().await {
                eprintln!("[harness] killing weed: {e}");
            }
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        // 1. S3 answers HTTP at all.
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("weed exited early with {status}"));
                }
            }
            match request_with_timeout(
                "GET",
                &self.endpoint(),
                &[],
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            {
                Ok(_) => break,
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("S3 port never answered: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // 2. The bucket is visible through a signed S3 request.
        let writer = self.writer_client();
        loop {
            match writer.head_bucket(&self.bucket).await {
                Ok(r) if r.status == 200 => break,
                Ok(r) => last = format!("HEAD bucket: status {}", r.status),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("bucket {} never appeared: {last}", self.bucket));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // 3. Writes work (volume server registered): write and delete a probe file outside
        //    /buckets, through the filer, so the bucket stays empty.
        let probe = format!("{}/harness-probe/ready", self.filer_url());
        loop {
            match request("PUT", &probe, &[], Bytes::from_static(b"ok")).await {
                Ok(r) if (200..300).contains(&r.status) => {
                    let _ = request("DELETE", &probe, &[], Bytes::new()).await;
                    return Ok(());
                }
                Ok(r) => last = format!("filer probe PUT: status {}: {}", r.status, r.text()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("writes never succeeded: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process (SIGKILL, like a crash); the data directory and ports are kept.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    /// Starts the process again on the same ports and directory (stopping it first if it
    /// runs); returns once S3 answers and the bucket is visible again. Panics with the log tail
    /// on timeout.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn();
        if let Err(e) = self.wait_ready(READY_TIMEOUT).await {
            panic!(
                "SeaweedFS did not come back after restart: {e}\n--- tail of {} ---\n{}",
                self.log_path().display(),
                self.log_tail(40)
            );
        }
    }

    /// Whether the process was started and has not been stopped (or has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// S3 endpoint, `http://127.0.0.1:PORT` (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// Filer HTTP base URL, `http://127.0.0.1:PORT` (no auth; the bucket is `/buckets/<name>/`).
    pub fn filer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.filer)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The writer identity (Admin, Read, List, Write).
    pub fn writer(&self) -> &Credentials {
        &self.writer
    }

    /// The reader identity (Read and List on the bucket only).
    pub fn reader(&self) -> &Credentials {
        &self.reader
    }

    /// A SigV4 S3 client signing as the writer.
    pub fn writer_client(&self) -> S3Client {
        S3Client::new(&self.endpoint(), self.writer.clone())
    }

    /// A SigV4 S3 client signing as the reader.
    pub fn reader_client(&self) -> S3Client {
        S3Client::new(&self.endpoint(), self.reader.clone())
    }

    /// All ports of this instance.
    pub fn ports(&self) -> SeaweedPorts {
        self.ports
    }

    /// The instance's directory (holds `s3.json`, `weed.log` and `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of weed's combined stdout/stderr log (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// The last `lines` lines of weed's log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(
            &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
            lines,
        )
    }

    fn filer_object_url(&self, key: &str) -> String {
        format!(
            "{}/buckets/{}/{}",
            self.filer_url(),
            crate::s3::uri_encode(&self.bucket, false),
            crate::s3::uri_encode(key.trim_start_matches('/'), true)
        )
    }

    async fn filer_get(&self, key: &str) -> Option<HttpResponse> {
        let url = self.filer_object_url(key);
        let resp = request("GET", &url, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("filer GET {url}: {e}"));
        match resp.status {
            200 => Some(resp),
            404 => None,
            s => panic!("filer GET {url}: unexpected status {s}: {}", resp.text()),
        }
    }

    /// The object's bytes read through the filer, bypassing S3 auth; `None` when absent.
    pub async fn raw_object(&self, key: &str) -> Option<Vec<u8>> {
        self.filer_get(key).await.map(|r| r.body)
    }

    /// The object's S3 user metadata as the filer reports it (`x-amz-meta-*` headers, names
    /// lower-cased with the prefix kept, e.g. `("x-amz-meta-sha256", "…")`); `None` when absent.
    pub async fn raw_metadata(&self, key: &str) -> Option<Vec<(String, String)>> {
        self.filer_get(key).await.map(|r| {
            r.headers
                .into_iter()
                .filter(|(k, _)| k.starts_with("x-amz-meta-"))
                .collect()
        })
    }

    /// Object keys in the bucket under `prefix` (S3 ListObjectsV2 as the writer).
    pub async fn list_keys(&self, prefix: &str) -> Vec<String> {
        self.writer_client()
            .list_keys(&self.bucket, prefix)
            .await
            .unwrap_or_else(|e| panic!("listing {}/{prefix}: {e}", self.bucket))
    }

    /// Replaces the object's bytes with `new_body` while keeping its S3 user metadata (so the
    /// stored sha256/signature no longer match the body): a tampered object.
    ///
    /// The filer's own write API drops `x-amz-meta-*` headers, so this re-PUTs through S3 as
    /// the writer, copying the current `x-amz-meta-*` and `Content-Type`, without any checksum
    /// header. Panics if the object does not exist or the PUT fails.
    pub async fn corrupt_object(&self, key: &str, new_body: impl Into<Bytes>) {
        let current = self
            .filer_get(key)
            .await
            .unwrap_or_else(|| panic!("corrupt_object: {}/{key} does not exist", self.bucket));
        let keep: Vec<(String, String)> = current
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-amz-meta-") || k == "content-type")
            .cloned()
            .collect();
        let refs: Vec<(&str, &str)> = keep.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let resp = self
            .writer_client()
            .put_object(&self.bucket, key, new_body, &refs)
            .await
            .unwrap_or_else(|e| panic!("corrupt_object: PUT {key}: {e}"));
        assert_eq!(
            resp.status,
            200,
            "corrupt_object: PUT {key} failed: {}",
            resp.text()
        );
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL now, then reap it (briefly blocking) so no zombie outlives the test.
            let _ = child.start_kill();
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // weed puts its gRPC unix sockets in the temp dir, named after the gRPC ports; remove ours.
        let p = self.ports;
        for (service, port) in [
            ("master", p.master_grpc),
            ("volume", p.volume_grpc),
            ("filer", p.filer_grpc),
            ("s3", p.s3_grpc),
            ("admin", p.admin_grpc),
        ] {
            let _ = std::fs::remove_file(
                std::env::temp_dir().join(format!("seaweedfs-{service}-grpc-{port}.sock")),
            );
        }
    }
}
