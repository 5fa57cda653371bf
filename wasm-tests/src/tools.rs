//! Where the real binaries are: project-local tools installed by `make tools`, and the companion
//! built by cargo. The user's `PATH` is never consulted, so a test always runs the pinned versions.

use std::path::{Path, PathBuf};

/// The workspace root: the parent of the `wasm-tests` crate directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("wasm-tests' CARGO_MANIFEST_DIR has a parent (the workspace root)")
        .to_path_buf()
}

/// The environment variable that overrides the path of tool `name`:
/// `FALLBACK_<NAME>_BIN`, upper-cased, with `-` and `.` turned into `_`
/// (e.g. `FALLBACK_FAKE_GCS_SERVER_BIN` for `fake-gcs-server`).
pub fn override_var(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("FALLBACK_{upper}_BIN")
}

/// Path of the project-local tool `name` (`envoy`, `weed`, `fake-gcs-server`).
///
/// `FALLBACK_<NAME>_BIN` wins when set; otherwise `<workspace root>/.tools/bin/<name>`.
/// Panics, telling to run `make tools`, when the file does not exist.
pub fn binary(name: &str) -> PathBuf {
    let var = override_var(name);
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} does not name an existing file (unset it to use .tools/bin/{name}, \
             installed by `make tools`)",
            path.display()
        );
        return path;
    }
    let path = workspace_root().join(".tools").join("bin").join(name);
    assert!(
        path.is_file(),
        "tool `{name}` not found at {}: run `make tools` (or set {var})",
        path.display()
    );
    path
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative paths are taken from the workspace
/// root), else `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Path of the companion binary: `FALLBACK_COMPANION_BIN`, else
/// `<target dir>/debug/fallback-companion`. Panics when it does not exist.
pub fn companion_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FALLBACK_COMPANION_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FALLBACK_COMPANION_BIN={} does not name an existing file",
            path.display()
        );
        return path;
    }
    let path = target_dir().join("debug").join("fallback-companion");
    assert!(
        path.is_file(),
        "companion binary not found at {}: run `cargo build -p fallback-companion` (make test does)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_var_names() {
        assert_eq!(override_var("weed"), "FALLBACK_WEED_BIN");
        assert_eq!(override_var("envoy"), "FALLBACK_ENVOY_BIN");
        assert_eq!(
            override_var("fake-gcs-server"),
            "FALLBACK_FAKE_GCS_SERVER_BIN"
        );
    }
}
