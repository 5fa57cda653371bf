//! Headless Chromium driven over WebDriver (W3C), with raw HTTP calls through [`crate::http`].
//!
//! A dozen endpoints are all the browser tests need (new session, navigate, find, click,
//! type, read text, run a script, screenshot), so no WebDriver crate: `fantoccini` or
//! `thirtyfour` would bring their own HTTP/TLS stacks for what is here a page of JSON calls.

use crate::ports::free_port;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium flags of a quiet, isolated headless run.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
];

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A running `chromedriver` with one Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// The WebDriver id of an element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a headless Chromium session with a
    /// fresh profile. Panics, saying to run `make tools`, when either is not installed.
    pub async fn start() -> Self {
        let driver_bin = find_program(&["chromedriver"])
            .expect("chromedriver not found on PATH: run `make tools` (Debian: apt-get install chromium chromium-driver)");
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).expect(
            "chromium not found on PATH: run `make tools` (Debian: apt-get install chromium)",
        );
        let port = free_port();
        let driver = Command::new(driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while crate::http::get(&format!("{base}/status")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a Chromium profile dir");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(capabilities)).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`. Panics with WebDriver's error message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let response = crate::http::request_with_timeout(
            method,
            &url,
            &[("content-type", "application/json")],
            body,
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let value = response.json();
        assert!(
            response.status == 200,
            "WebDriver {method} {path} answered {}: {value}",
            response.status
        );
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// The first element matching the CSS `selector`, waiting up to 20 s for it to appear.
    pub async fn find(&self, selector: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .script(
                    "const e = document.querySelector(arguments[0]); return e !== null;",
                    json!([selector]),
                )
                .await;
            if found == Value::Bool(true) {
                let value = self
                    .call(
                        "POST",
                        &self.session_path("/element"),
                        Some(json!({"using": "css selector", "value": selector})),
                    )
                    .await;
                let id = value
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("no element id in {value}"));
                return Element(id.to_owned());
            }
            assert!(
                Instant::now() < deadline,
                "no element {selector} within 20 s; page text:\n{}",
                self.text_of_body().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rendered text of `selector` once it appears.
    pub async fn text(&self, selector: &str) -> String {
        let element = self.find(selector).await;
        let value = self
            .call(
                "GET",
                &self.session_path(&format!("/element/{}/text", element.0)),
                None,
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn text_of_body(&self) -> String {
        self.script(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        let element = self.find(selector).await;
        self.call(
            "POST",
            &self.session_path(&format!("/element/{}/click", element.0)),
            Some(json!({})),
        )
        .await;
    }

    /// Clears the field matching `selector` and types `text` into it, key by key.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector).await;
        self.call(
            "POST",
            &self.session_path(&format!("/element/{}/clear", element.0)),
            Some(json!({})),
        )
        .await;
        self.call(
            "POST",
            &self.session_path(&format!("/element/{}/value", element.0)),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The page's source as the browser holds it.
    pub async fn source(&self) -> String {
        self.call("GET", &self.session_path("/source"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Writes a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let value = self
            .call("GET", &self.session_path("/screenshot"), None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .expect("WebDriver screenshots are base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session stops Chromium; then the driver.
        let url = format!("{}{}", self.base, self.session_path(""));
        let handle = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = crate::http::request_with_timeout(
                        "DELETE",
                        &url,
                        &[],
                        Vec::new(),
                        Duration::from_secs(10),
                    )
                    .await;
                });
            }
        });
        let _ = handle.join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
