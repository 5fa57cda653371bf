//! The real Envoy (`.tools/bin/envoy`, 1.40 with V8) running the built filter, configured from
//! the project's own example bootstrap (`examples/envoy/bootstrap.yaml`) so that file is tested
//! on every run.
//!
//! Each instance gets its own temp dir (rendered bootstrap, `envoy.log`, `stderr.log`), its own
//! loopback ports and its own `--base-id`, and runs with `--disable-hot-restart` (no shared
//! memory segment in `/dev/shm`, no hot-restart domain sockets), so tests can start many
//! Envoys in parallel.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::http::request_with_timeout;
use crate::ports::free_port;
use crate::process_log::{append_output, last_lines};
use crate::tools::{binary, target_dir, workspace_root};

/// How long [`Envoy::start`] waits for admin `/ready` and the listener (V8 compiling the wasm
/// takes well under a second on a warm machine, but much longer under a loaded CI runner).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The request header through which the filter hands `host:port` to Envoy (an `ORIGINAL_DST`
/// cluster for IP literals, `set_filter_state` + the dynamic forward proxy for names; removed
/// before the request leaves).
pub const UPSTREAM_HEADER: &str = "x-fallback-upstream";

/// What to run Envoy with. Unset upstreams point at a closed loopback port, so the clusters
/// `fallback_cp`, `fallback_companion` and `fallback_storage` always exist.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// The filter's plugin configuration (the default: valid, with every party unreachable).
    pub filter_config: serde_json::Value,
    /// Control plane `(host, port)` behind cluster `fallback_cp`.
    pub cp: Option<(String, u16)>,
    /// Companion `(host, port)` behind cluster `fallback_companion`.
    pub companion: Option<(String, u16)>,
    /// Storage endpoint `(host, port)` behind cluster `fallback_storage`.
    pub storage: Option<(String, u16)>,
    /// The `.wasm` to load; `None` means [`default_wasm_path`] (panics if it is not built).
    pub wasm: Option<PathBuf>,
    /// Extra Envoy command-line arguments, appended last
    /// (e.g. `["--component-log-level", "wasm:debug"]`).
    pub extra_args: Vec<String>,
    /// The bootstrap template to render instead of [`bootstrap_template`]'s file (same
    /// placeholders; e.g. the benchmark's variants). `None`: the project's example.
    pub bootstrap: Option<String>,
    /// Send every proxied request to this one `(host, port)` instead of the dynamic forward
    /// proxy, with the filter's [`UPSTREAM_HEADER`] left on: the filter's whole decision (the
    /// `host:port` it chose, `:authority`, `:path`, plugin headers) reaches an echo upstream
    /// even for upstream hosts that do not resolve here (real configs name real hosts).
    pub observer: Option<(String, u16)>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            concurrency: 2,
            // The smallest valid configuration: storage only, every party unreachable.
            filter_config: serde_json::json!({
                "version": "0.0.0",
                "companion": {"upstream": "fallback_companion", "authority": "companion", "token": "unused"},
                "storage": {"upstream": "fallback_storage"},
            }),
            cp: None,
            companion: None,
            storage: None,
            wasm: None,
            extra_args: Vec::new(),
            bootstrap: None,
            observer: None,
        }
    }
}

/// Why [`Envoy::try_start`] gave up.
#[derive(Debug)]
pub struct StartFailure {
    /// Envoy's exit status when it exited by itself (e.g. a rejected configuration); `None`
    /// when it was still running at the deadline (it has been killed since).
    pub exit_status: Option<ExitStatus>,
    /// What went wrong, in a sentence.
    pub reason: String,
    /// The whole `--log-path` log.
    pub log: String,
    /// Everything Envoy wrote to stdout/stderr (startup errors that are not logged go here).
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = last_lines(&self.log, 40);
        write!(
            f,
            "{} (exit status: {:?})\n--- stderr ---\n{}\n--- envoy.log (tail) ---\n{}",
            self.reason, self.exit_status, self.stderr, tail
        )
    }
}

/// [`EnvoyOptions::observer`]: the bootstrap with its route sent to a static cluster at
/// `host:port` and the hand-off header kept. Panics when the bootstrap no longer has the lines
/// this rewrites.
fn route_to_observer(bootstrap: &str, host: &str, port: u16) -> String {
    const ROUTE: &str = "cluster: dynamic_forward_proxy_cluster\n";
    const STRIP: &str = "request_headers_to_remove: [\"x-fallback-upstream\"]\n";
    // IP-literal upstreams take the ORIGINAL_DST route, whose cluster removes the header.
    const IP_ROUTE: &str = "cluster: fallback_original_dst\n";
    assert_eq!(
        bootstrap.matches(IP_ROUTE).count(),
        1,
        "the bootstrap's IP-literal route cluster"
    );
    assert_eq!(
        bootstrap.matches(ROUTE).count(),
        1,
        "the bootstrap's route cluster"
    );
    assert_eq!(
        bootstrap.matches(STRIP).count(),
        1,
        "the bootstrap's header removal"
    );
    let mut out = bootstrap
        .replace(ROUTE, "cluster: fallback_observer\n")
        .replace(IP_ROUTE, "cluster: fallback_observer\n")
        .replace(STRIP, "request_headers_to_add: []\n");
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "    - name: fallback_observer\n      type: STATIC\n      connect_timeout: 2s\n      \
         load_assignment:\n        cluster_name: fallback_observer\n        endpoints:\n          \
         - lb_endpoints:\n              - endpoint:\n                  address:\n                    \
         socket_address: {{ address: {host}, port_value: {port} }}\n"
    ));
    out
}

/// The filter built by `make wasm`:
/// `<target dir>/wasm32-wasip1/release/fallback_filter.wasm`. Panics when it does not exist.
pub fn default_wasm_path() -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip1")
        .join("release")
        .join("fallback_filter.wasm");
    assert!(
        path.is_file(),
        "filter not built: {} does not exist: run `make wasm` \
         (cargo build -p fallback-filter --target wasm32-wasip1 --release)",
        path.display()
    );
    path
}

/// Path of the bootstrap template, `examples/envoy/bootstrap.yaml`.
pub fn bootstrap_template() -> PathBuf {
    workspace_root()
        .join("examples")
        .join("envoy")
        .join("bootstrap.yaml")
}

/// Substitutes `${NAME}` placeholders in `template`; panics when a `${` is left over
/// (a placeholder the harness does not know about).
pub fn render_bootstrap(template: &str, vars: &[(&str, String)]) -> String {
    render_template(&bootstrap_template(), template, vars)
}

/// Substitutes `${NAME}` placeholders in `template` (read from `path`, named in the panic);
/// panics when a `${` is left over (a placeholder the harness does not know about).
pub fn render_template(path: &Path, template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let end = rest.find('}').map_or(rest.len().min(40), |i| i + 1);
        panic!(
            "template {} has an unknown placeholder {}",
            path.display(),
            &rest[..end]
        );
    }
    out
}

/// A `--base-id` no other instance of this process uses, and unlikely to collide with another
/// test process (derived from the pid).
fn unique_base_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
    (std::process::id() % 100_000) * 1000 + n
}

/// A running Envoy with the Fallback filter. Dropping it kills the process, reaps it and
/// deletes its directory.
pub struct Envoy {
    dir: tempfile::TempDir,
    admin_port: u16,
    listener_port: u16,
    base_id: u32,
    child: Option<Child>,
}

impl Envoy {
    /// Starts Envoy and returns once admin `/ready` answers 200 and the listener accepts
    /// connections. Panics (with the log tail) when Envoy exits or is not ready within
    /// [`READY_TIMEOUT`].
    pub async fn start(options: EnvoyOptions) -> Envoy {
        match Self::try_start(options).await {
            Ok(envoy) => envoy,
            Err(failure) => panic!("Envoy did not start: {failure}"),
        }
    }

    /// Like [`Envoy::start`], but a start failure (Envoy exits, or is not ready in time) is an
    /// `Err` carrying the exit status and the logs. A port taken by another process between
    /// allocation and bind is retried with fresh ports.
    pub async fn try_start(options: EnvoyOptions) -> Result<Envoy, StartFailure> {
        let wasm = options.wasm.clone().unwrap_or_else(default_wasm_path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut envoy = Self::spawn(&options, &wasm);
            match envoy.wait_ready(READY_TIMEOUT).await {
                Ok(()) => return Ok(envoy),
                Err((reason, exit_status)) => {
                    envoy.kill().await;
                    let log = std::fs::read_to_string(envoy.log_path()).unwrap_or_default();
                    let stderr = envoy.stderr();
                    let clash = log.to_ascii_lowercase().contains("address already in use")
                        || stderr
                            .to_ascii_lowercase()
                            .contains("address already in use");
                    if clash && attempt < 3 {
                        eprintln!(
                            "[harness] envoy attempt {attempt}: a port was taken, retrying with fresh ports"
                        );
                        continue;
                    }
                    return Err(StartFailure {
                        exit_status,
                        reason,
                        log,
                        stderr,
                    });
                }
            }
        }
    }

    fn spawn(options: &EnvoyOptions, wasm: &Path) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("envoy-")
            .tempdir()
            .expect("create a temp dir for Envoy");
        let admin_port = free_port();
        let listener_port = free_port();
        // Unset upstreams: a port that was free and that nobody in this process will bind.
        let closed = || ("127.0.0.1".to_string(), free_port());
        let (cp_host, cp_port) = options.cp.clone().unwrap_or_else(closed);
        let (companion_host, companion_port) = options.companion.clone().unwrap_or_else(closed);
        let (storage_host, storage_port) = options.storage.clone().unwrap_or_else(closed);
        let filter_config = serde_json::to_string(&options.filter_config)
            .expect("serialize the filter configuration");
        let vars = [
            ("ADMIN_PORT", admin_port.to_string()),
            ("LISTENER_PORT", listener_port.to_string()),
            ("WASM_PATH", wasm.display().to_string()),
            // A JSON string literal is a valid YAML double-quoted scalar.
            (
                "FILTER_CONFIG",
                serde_json::to_string(&filter_config).expect("quote the filter configuration"),
            ),
            ("CP_HOST", cp_host),
            ("CP_PORT", cp_port.to_string()),
            ("COMPANION_HOST", companion_host),
            ("COMPANION_PORT", companion_port.to_string()),
            ("STORAGE_HOST", storage_host),
            ("STORAGE_PORT", storage_port.to_string()),
        ];
        let template = options.bootstrap.clone().unwrap_or_else(|| {
            std::fs::read_to_string(bootstrap_template()).unwrap_or_else(|e| {
                panic!("read {}: {e}", bootstrap_template().display());
            })
        });
        let mut rendered = render_bootstrap(&template, &vars);
        if let Some((host, port)) = &options.observer {
            rendered = route_to_observer(&rendered, host, *port);
        }
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, rendered).expect("write the rendered Envoy bootstrap");

        let mut envoy = Envoy {
            dir,
            admin_port,
            listener_port,
            base_id: unique_base_id(),
            child: None,
        };
        let (out, err) = append_output(&envoy.stderr_path(), "Envoy's stderr log");
        let bin = binary("envoy");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--log-level", "info"])
            .args(["--base-id", &envoy.base_id.to_string()])
            .arg("--disable-hot-restart")
            // Envoy writes its log file every 10 s by default; tests read it while it runs.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--log-path")
            .arg(envoy.log_path())
            .args(&options.extra_args)
            .current_dir(envoy.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        envoy.child = Some(child);
        envoy
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), (String, Option<ExitStatus>)> {
        let deadline = Instant::now() + timeout;
        let ready_url = format!("{}/ready", self.admin_url());
        let mut last = String::from("not tried yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err((
                        format!("envoy exited during startup with {status}"),
                        Some(status),
                    ));
                }
            }
            let admin_ready = match request_with_timeout(
                "GET",
                &ready_url,
                &[],
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("admin /ready: status {}: {}", r.status, r.text().trim());
                    false
                }
                Err(e) => {
                    last = format!("admin /ready: {e}");
                    false
                }
            };
            if admin_ready {
                match tokio::net::TcpStream::connect(("127.0.0.1", self.listener_port)).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("listener 127.0.0.1:{}: {e}", self.listener_port),
                }
            }
            if Instant::now() > deadline {
                return Err((format!("not ready after {timeout:?}; last: {last}"), None));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill() sends SIGKILL and waits, so the process is reaped.
            if let Err(e) = child.kill().await {
                eprintln!("[harness] killing envoy: {e}");
            }
        }
    }

    /// Kills Envoy (SIGKILL) and reaps it. The directory (logs) stays until drop.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    /// Whether the process runs (was started, not stopped, has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The HTTP listener, `http://127.0.0.1:PORT`.
    pub fn listener_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener_port)
    }

    /// The admin interface, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The listener's port.
    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The process id, while it runs (e.g. to read its CPU time from `/proc/<pid>/stat`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The `--base-id` this instance runs with.
    pub fn base_id(&self) -> u32 {
        self.base_id
    }

    /// The instance's directory (`bootstrap.yaml`, `envoy.log`, `stderr.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The rendered bootstrap Envoy runs with.
    pub fn bootstrap_path(&self) -> PathBuf {
        self.dir.path().join("bootstrap.yaml")
    }

    /// Envoy's log (`--log-path`); the filter's `proxy_log` lines land here too, as
    /// `[wasm] ... wasm log fallback fallback: <message>`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// What Envoy wrote to stdout/stderr (normally nothing: logs go to [`Envoy::log_path`]).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// Whether the log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Admin `/stats` (text format, one `name: value` per line). Panics when admin does not
    /// answer 200.
    pub async fn stats(&self) -> String {
        let url = format!("{}/stats", self.admin_url());
        match request_with_timeout("GET", &url, &[], Bytes::new(), Duration::from_secs(10)).await {
            Ok(r) if r.status == 200 => r.text(),
            Ok(r) => panic!("GET {url}: status {}: {}", r.status, r.text()),
            Err(e) => panic!("GET {url}: {e}\n--- envoy.log ---\n{}", self.log_tail(40)),
        }
    }

    /// The value of counter or gauge `name` in [`Envoy::stats`] (e.g.
    /// `wasm.envoy.wasm.runtime.v8.created`), `None` when absent.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats().await, name)
    }
}

/// `name: value` from admin `/stats` text output.
pub fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (k, v) = line.split_once(": ")?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it so no zombie outlives the test (SIGKILL makes this quick).
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder_of_the_example() {
        let template = std::fs::read_to_string(bootstrap_template()).expect("read template");
        let vars = [
            ("ADMIN_PORT", "1".to_string()),
            ("LISTENER_PORT", "2".to_string()),
            ("WASM_PATH", "/x.wasm".to_string()),
            ("FILTER_CONFIG", "\"{}\"".to_string()),
            ("CP_HOST", "127.0.0.1".to_string()),
            ("CP_PORT", "3".to_string()),
            ("COMPANION_HOST", "127.0.0.1".to_string()),
            ("COMPANION_PORT", "4".to_string()),
            ("STORAGE_HOST", "127.0.0.1".to_string()),
            ("STORAGE_PORT", "5".to_string()),
        ];
        let out = render_bootstrap(&template, &vars);
        assert!(out.contains("filename: /x.wasm"));
        assert!(out.contains(UPSTREAM_HEADER));
    }

    /// The bootstrap's choice of cluster, decided by the regex of its first route on the
    /// hand-off header, for each shape of upstream the router hands over.
    #[test]
    fn ip_literal_upstreams_take_the_original_dst_route_and_names_the_dfp() {
        let template = std::fs::read_to_string(bootstrap_template()).expect("read template");
        let line = template
            .lines()
            .find(|l| l.trim_start().starts_with("regex: '"))
            .expect("the bootstrap's route regex");
        let pattern = line
            .trim()
            .trim_start_matches("regex: '")
            .trim_end_matches('\'');
        // Envoy's string_match regex must match the whole value.
        let re = regex_lite::Regex::new(&format!("^(?:{pattern})$")).expect("regex compiles");
        let doc = serde_json::json!({"_format_version": "3.0", "services": [
            {"name": "v4", "url": "http://10.0.0.7:8080", "routes": [{"paths": ["/v4"]}]},
            {"name": "v6", "url": "http://[fd00::7]:8080", "routes": [{"paths": ["/v6"]}]},
            {"name": "name", "url": "http://users.internal:8080", "routes": [{"paths": ["/name"]}]},
            {"name": "ip-like", "url": "http://1.2.3.4.nip.io", "routes": [{"paths": ["/nip"]}]},
            {"name": "local", "url": "http://localhost:9000", "routes": [{"paths": ["/local"]}]},
        ]});
        let loaded = fallback_core::document::ConfigDocument::from_json(&doc).expect("valid");
        let router = fallback_core::router::Router::compile(&loaded.document);
        for (path, ip_literal) in [
            ("/v4", true),
            ("/v6", true),
            ("/name", false),
            ("/nip", false),
            ("/local", false),
        ] {
            let view = fallback_core::router::RequestView {
                method: "GET",
                authority: "gateway",
                path,
                scheme: "http",
                headers: &[],
                sni: None,
                port: None,
            };
            let fallback_core::router::RouteOutcome::Forward(forward) = router.route(&view) else {
                panic!("{path} must be forwarded");
            };
            assert_eq!(
                re.is_match(&forward.upstream),
                ip_literal,
                "{}",
                forward.upstream
            );
            // What the ORIGINAL_DST cluster parses: an IP address and a port.
            assert_eq!(
                forward.upstream.parse::<std::net::SocketAddr>().is_ok(),
                ip_literal,
                "{}",
                forward.upstream
            );
        }
    }

    #[test]
    #[should_panic(expected = "unknown placeholder ${NOPE}")]
    fn unknown_placeholder_panics() {
        render_bootstrap("a: ${NOPE}", &[]);
    }

    #[test]
    fn parses_stats() {
        let s = "a.b: 3\nwasm.envoy.wasm.runtime.v8.created: 5\nx: text";
        assert_eq!(parse_stat(s, "wasm.envoy.wasm.runtime.v8.created"), Some(5));
        assert_eq!(parse_stat(s, "a"), None);
        assert_eq!(parse_stat(s, "x"), None);
    }
}
