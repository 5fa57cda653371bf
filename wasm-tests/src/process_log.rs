//! The output of the external processes the harness starts (Envoy, SeaweedFS,
//! fake-gcs-server): opened and shown the same way for each, so that a failing test reads every
//! process's log alike.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;

/// `path` opened for appending, as a process's stdout and stderr: appending keeps what earlier
/// runs of a restarted process wrote. `what` names the log in the panic message.
pub fn append_output(path: &Path, what: &str) -> (Stdio, Stdio) {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {what}: {e}"));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("clone {what} handle: {e}"));
    (Stdio::from(out), Stdio::from(err))
}

/// The last `lines` lines of `text` (all of it when shorter).
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
