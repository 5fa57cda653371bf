//! `mock-cp`: the scriptable mock control plane ([`wasm_tests::MockCp`]) as a standalone
//! process, for the demo (`scripts/demo.sh`).
//!
//! ```text
//! mock-cp --file PATH [--port PORT] [--admin-api-shape]
//! ```
//!
//! Serves the bytes of `PATH` as they are, on every path of `http://127.0.0.1:PORT`, with an
//! ETag computed from the body (`If-None-Match` → 304). The file is checked every 200 ms and
//! served anew whenever its contents change, so editing it "changes the config on the CP". While
//! the file is missing or unreadable, requests get 503. With `--admin-api-shape`, the file's text
//! is wrapped as Kong's DB-less Admin API answers `GET /config`: `{"config": "<file text>"}`.
//!
//! Listens on 127.0.0.1 only. SIGINT/SIGTERM end it (default signal action: there is nothing to
//! flush or clean up).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use wasm_tests::demo_cli::{self, Flag};
use wasm_tests::sha256::sha256_hex;
use wasm_tests::MockCp;

const USAGE: &str = "\
usage: mock-cp --file PATH [--port PORT] [--admin-api-shape]

Serves the file's bytes as a control plane's config endpoint on http://127.0.0.1:PORT (any path),
with ETag / If-None-Match (304), re-reading the file whenever it changes (checked every 200 ms).
While the file is missing or unreadable, requests get 503.

options:
  --file PATH          the document to serve (required)
  --port PORT          the loopback port to listen on [default: a free port, printed at start]
  --admin-api-shape    serve {\"config\": \"<file text>\"}, as Kong's DB-less Admin API GET /config
  -h, --help           show this help";

/// Parsed command line.
#[derive(Debug)]
struct Options {
    file: PathBuf,
    port: Option<u16>,
    admin_api_shape: bool,
}

/// `Ok(None)` for `--help`; `Err(message)` for a bad command line.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut file = None;
    let mut port = None;
    let mut admin_api_shape = false;
    while let Some(arg) = args.next() {
        let flag = Flag::parse(arg);
        match flag.name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--file" => file = Some(PathBuf::from(flag.value(&mut args, "a path")?)),
            "--port" => {
                port = Some(demo_cli::port(&flag.value(&mut args, "a port number")?)?);
            }
            "--admin-api-shape" if !flag.has_inline_value() => admin_api_shape = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let file = file.ok_or("--file PATH is required")?;
    Ok(Some(Options {
        file,
        port,
        admin_api_shape,
    }))
}

/// What the mock serves for the file's `bytes`.
fn body_for(bytes: Vec<u8>, admin_api_shape: bool) -> Vec<u8> {
    if !admin_api_shape {
        return bytes;
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    serde_json::to_vec(&serde_json::json!({ "config": text }))
        .expect("a JSON object with one string serializes")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The file's state as last seen, so that every change is applied (and logged) once.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    Bytes(Vec<u8>),
    Unreadable(String),
}

/// A line for the log: stdout for what is served, stderr for a file that cannot be read.
enum Note {
    Serving(String),
    Unreadable(String),
}

impl Note {
    fn print(self) {
        match self {
            Note::Serving(line) => say(&line),
            Note::Unreadable(line) => eprintln!("{line}"),
        }
    }
}

/// Reads the file and updates what `cp` serves if it changed since `seen`; the note to log
/// when something changed.
fn refresh(cp: &MockCp, options: &Options, seen: &mut Seen) -> Option<Note> {
    let file = options.file.display();
    match std::fs::read(&options.file) {
        Ok(bytes) => {
            if matches!(seen, Seen::Bytes(old) if *old == bytes) {
                return None;
            }
            let body = body_for(bytes.clone(), options.admin_api_shape);
            let len = body.len();
            let sha = sha256_hex(&body);
            cp.set_raw_body(body, None);
            let etag = cp.current_etag().unwrap_or_default();
            *seen = Seen::Bytes(bytes);
            Some(Note::Serving(format!(
                "mock-cp: now serving sha256 {} ({len} bytes, ETag {etag})",
                &sha[..12]
            )))
        }
        Err(e) => {
            let reason = e.to_string();
            if matches!(seen, Seen::Unreadable(old) if *old == reason) {
                return None;
            }
            cp.clear_document();
            *seen = Seen::Unreadable(reason.clone());
            Some(Note::Unreadable(format!(
                "mock-cp: cannot read {file}: {reason}; answering 503 until it is readable"
            )))
        }
    }
}

async fn serve(options: Options) -> ExitCode {
    let cp = match options.port {
        Some(port) => MockCp::start_on(port).await,
        None => MockCp::start().await,
    };
    let port = cp.port();
    let mut seen = Seen::Nothing;
    // Load the document before announcing the URL, so that the first request already gets it.
    let first = refresh(&cp, &options, &mut seen);
    say(&format!(
        "mock-cp: serving {} on http://127.0.0.1:{port}/config{}",
        options.file.display(),
        if options.admin_api_shape {
            " (Admin API shape)"
        } else {
            ""
        }
    ));
    if let Some(note) = first {
        note.print();
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(note) = refresh(&cp, &options, &mut seen) {
            note.print();
        }
    }
}

fn main() -> ExitCode {
    demo_cli::run(
        "mock-cp",
        USAGE,
        parse_args(std::env::args().skip(1)),
        serve,
    )
}
