//! A real nginx + ngx_wasm_module running the built filter, configured from the project's own
//! example (`examples/nginx/nginx.conf`), for the end-to-end tests of the nginx host profile.
//!
//! Such an nginx is not part of the toolchain (`make tools` installs none): it is built by hand
//! from nginx's and ngx_wasm_module's public sources, outside the repository, and named by
//! `NGINX_WASM_BIN`. Without it the tests say so and pass as skipped ([`binary`]).
//!
//! Each instance gets its own temp dir (rendered `nginx.conf`, `error.log`, `nginx.pid`,
//! temp files) and its own loopback port. Stopping sends SIGTERM to the master, which stops its
//! workers; a SIGKILL would leave the workers running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::envoy::{default_wasm_path, render_template};
use crate::http::request_with_timeout;
use crate::ports::free_port;
use crate::process_log::{append_output, last_lines};
use crate::tools::workspace_root;

/// The variable naming the nginx + ngx_wasm_module binary.
pub const BIN_VAR: &str = "NGINX_WASM_BIN";

/// How long [`Nginx::start`] waits for an answer (each worker compiles the module first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What the master logs when a worker failed to start (e.g. the filter rejected its
/// configuration): nginx keeps running without workers, answering nothing.
pub const FATAL_WORKER_EXIT: &str = "cannot be respawned";

/// The nginx binary named by `NGINX_WASM_BIN`, or `None` after printing why `test` is skipped.
pub fn binary(test: &str) -> Option<PathBuf> {
    match std::env::var_os(BIN_VAR) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{BIN_VAR}={} is not a file: point it at an nginx built with ngx_wasm_module",
                path.display()
            );
            Some(path)
        }
        _ => {
            // Straight to stderr, past the test harness's capture, so the skip shows in a
            // plain `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {BIN_VAR} is not set (an nginx built with ngx_wasm_module; \
                 see examples/nginx/README.md)"
            );
            None
        }
    }
}

/// Path of the template, `examples/nginx/nginx.conf`.
pub fn config_template() -> PathBuf {
    workspace_root()
        .join("examples")
        .join("nginx")
        .join("nginx.conf")
}

/// The filter configuration as `${FILTER_CONFIG}` takes it: compact JSON, to be put between
/// single quotes. Panics when it holds a single quote or a backslash (nginx reads `\"`, `\\`,
/// `\n`... inside quotes as escapes).
pub fn filter_config_text(config: &serde_json::Value) -> String {
    let text = serde_json::to_string(config).expect("serialize the filter configuration");
    assert!(
        !text.contains('\'') && !text.contains('\\'),
        "the filter configuration cannot go between single quotes in nginx.conf: {text}"
    );
    text
}

/// Renders the template for these values.
pub fn render(listener_port: u16, wasm: &Path, filter_config: &str, run_dir: &Path) -> String {
    let template = std::fs::read_to_string(config_template())
        .unwrap_or_else(|e| panic!("read {}: {e}", config_template().display()));
    let vars = [
        ("LISTENER_PORT", listener_port.to_string()),
        ("WASM_PATH", wasm.display().to_string()),
        ("FILTER_CONFIG", filter_config.to_owned()),
        ("RUN_DIR", run_dir.display().to_string()),
    ];
    render_template(&config_template(), &template, &vars)
}

/// A running nginx with the Fallback filter. Dropping it stops nginx and deletes its directory.
pub struct Nginx {
    dir: tempfile::TempDir,
    listener_port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Renders the template with `filter_config` and starts `bin`; returns once a request gets
    /// an HTTP answer. Panics (with the error log) when nginx or its workers exit, or it is not
    /// ready in time.
    pub async fn start(bin: &Path, filter_config: &serde_json::Value) -> Nginx {
        match Self::try_start(bin, filter_config).await {
            Ok(nginx) => nginx,
            Err((reason, log)) => panic!("nginx did not start: {reason}\n--- error.log ---\n{log}"),
        }
    }

    /// Like [`Nginx::start`]; `Err((reason, error log))` when nginx exits or is not ready.
    pub async fn try_start(
        bin: &Path,
        filter_config: &serde_json::Value,
    ) -> Result<Nginx, (String, String)> {
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir()
            .expect("create a temp dir for nginx");
        let listener_port = free_port();
        let text = filter_config_text(filter_config);
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            render(listener_port, &default_wasm_path(), &text, dir.path()),
        )
        .expect("write the rendered nginx.conf");
        let mut nginx = Nginx {
            dir,
            listener_port,
            child: None,
        };
        let (out, err) = append_output(&nginx.dir.path().join("stderr.log"), "nginx's stderr");
        let pid = nginx.dir.path().join("nginx.pid");
        let child = Command::new(bin)
            .arg("-p")
            .arg(nginx.dir.path())
            .arg("-e")
            .arg(nginx.error_log_path())
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("pid {};", pid.display()))
            .current_dir(nginx.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        nginx.child = Some(child);
        match nginx.wait_ready(READY_TIMEOUT).await {
            Ok(()) => Ok(nginx),
            Err(reason) => {
                nginx.stop().await;
                Err((reason, nginx.log_tail(60)))
            }
        }
    }

    /// Ready when a request gets an HTTP answer: each worker compiles the module (seconds with
    /// wasmtime) before it serves, while the master already holds the listening socket.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/", self.listener_url());
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("nginx exited during start-up with {status}"));
            }
            if self.log().contains(FATAL_WORKER_EXIT) {
                return Err("its workers exited and cannot be respawned".into());
            }
            let probe =
                request_with_timeout("GET", &url, &[], Bytes::new(), Duration::from_secs(2)).await;
            if probe.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no HTTP answer after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops nginx (SIGTERM to the master, which stops the workers) and reaps it; SIGKILL
    /// after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Whether the master process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// The HTTP listener, `http://127.0.0.1:PORT`.
    pub fn listener_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener_port)
    }

    /// The listener's port.
    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nginx's error log, where the filter's lines land as `[wasm] ... fallback: <message>`.
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The whole error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the error log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// The pids of the processes whose error-log lines contain `needle` (nginx writes
    /// `... [level] <pid>#<tid>: ...`).
    pub fn pids_logging(&self, needle: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .log()
            .lines()
            .filter(|line| line.contains(needle))
            .filter_map(log_line_pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Error-log lines saying a worker died (a crash: `exited on signal`).
    pub fn crashes(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("exited on signal"))
            .map(str::to_owned)
            .collect()
    }
}

/// The pid in an nginx error-log line (`2025/01/01 00:00:00 [info] 1234#1234: ...`).
pub fn log_line_pid(line: &str) -> Option<u32> {
    let (_, rest) = line.split_once("] ")?;
    rest.split_once('#')?.0.parse().ok()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    _ => return,
                }
            }
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder_of_the_example() {
        let out = render(
            8080,
            Path::new("/x.wasm"),
            r#"{"host":"nginx"}"#,
            Path::new("/run/fb"),
        );
        assert!(out.contains("listen 127.0.0.1:8080;"));
        assert!(out.contains("module fallback /x.wasm;"));
        assert!(out.contains(r#"proxy_wasm fallback '{"host":"nginx"}';"#));
        assert!(out.contains("error_log /run/fb/error.log info;"));
        assert!(out.contains("worker_processes 2;"));
        assert!(out.contains("shm_kv * "));
        assert!(out.contains("proxy_pass http://$fallback_upstream$uri$is_args$args;"));
    }

    #[test]
    #[should_panic(expected = "cannot go between single quotes")]
    fn a_config_with_a_backslash_is_refused() {
        filter_config_text(&serde_json::json!({"public_key": "-----BEGIN\nKEY"}));
    }

    #[test]
    fn reads_the_pid_of_a_log_line() {
        let line = "2025/11/30 16:00:00 [info] 4242#4242: [wasm] fallback: ok";
        assert_eq!(log_line_pid(line), Some(4242));
        assert_eq!(log_line_pid("garbage"), None);
    }
}
