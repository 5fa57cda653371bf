//! The real `fallback-companion` binary as a test process: `run` with the environment a test
//! gives it, listening on a free loopback port, with stop and restart on the same port.
//! Also `match`, the prediction the routing and plugin tests check Envoy against.

use crate::ports::free_port;
use crate::tools::companion_binary;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `fallback-companion run`.
pub struct CompanionProcess {
    port: u16,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl CompanionProcess {
    /// Starts `fallback-companion run` with `env` (plus `FALLBACK_LISTEN` on a free port, or
    /// `FALLBACK_ADMIN_LISTEN` for the export role alone) and waits until `/healthz` answers.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut companion = Self {
            port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            dir: tempfile::tempdir().expect("temp dir for the companion"),
            child: None,
        };
        companion.spawn().await;
        companion
    }

    async fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("companion log file");
        // The export role alone serves /healthz on the admin listener, not the signer's.
        let signer = self
            .env
            .iter()
            .any(|(k, v)| k == "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT" && v == "on");
        let listen = if signer {
            "FALLBACK_LISTEN"
        } else {
            "FALLBACK_ADMIN_LISTEN"
        };
        let child = Command::new(companion_binary())
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env(listen, format!("127.0.0.1:{}", self.port))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start fallback-companion");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = crate::http::get(&format!("{}/healthz", self.url())).await {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("fallback-companion exited with {status}:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "fallback-companion did not answer /healthz in 20 s:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its log goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("companion.log")
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops it (SIGKILL: as abrupt as a crash).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same environment.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

impl Drop for CompanionProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `fallback-companion match` answers for `method url` with `headers` under the document
/// `config`: the tests compare it with what the filter in Envoy does, so that the two stay one
/// decision.
pub fn companion_match(
    config: &Path,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut command = Command::new(companion_binary());
    command.args([
        "match",
        "--config",
        &config.display().to_string(),
        "--method",
        method,
        "--url",
        url,
    ]);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let output = command.output().expect("fallback-companion runs");
    assert!(
        output.status.success(),
        "match {method} {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "match printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
