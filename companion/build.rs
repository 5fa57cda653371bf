//! Embeds the browser inspector (`fallback-web` bound by `wasm-bindgen`) into the companion.
//!
//! `make web` (part of `make build`) writes `fallback_web.js` and `fallback_web_bg.wasm` to
//! `target/web-pkg/` (or `FALLBACK_WEB_PKG`). This script never runs cargo or wasm-bindgen
//! itself, so `cargo build`, `cargo clippy` and `cargo test` work from a fresh clone: without
//! those files the companion is built with empty stand-ins and its `/ui/inspector` says to run
//! `make web`. `make build` sets `FALLBACK_WEB_REQUIRED=1`, which turns missing files into a
//! build error, so a release never ships without the inspector.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=FALLBACK_WEB_PKG");
    println!("cargo:rerun-if-env-changed=FALLBACK_WEB_REQUIRED");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let pkg = std::env::var_os("FALLBACK_WEB_PKG")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/web-pkg"));
    // Watched as a directory, so that `make web` writing into it rebuilds the companion; it is
    // created when missing because cargo would otherwise rerun this script on every build.
    let _ = std::fs::create_dir_all(&pkg);
    println!("cargo:rerun-if-changed={}", pkg.display());
    let js = pkg.join("fallback_web.js");
    let wasm = pkg.join("fallback_web_bg.wasm");
    let built = js.is_file() && wasm.is_file();
    let required = std::env::var("FALLBACK_WEB_REQUIRED").is_ok_and(|v| v == "1");
    if !built && required {
        panic!(
            "FALLBACK_WEB_REQUIRED=1 but the inspector is not built: {} and {} are missing; run `make web` (it builds fallback-web for wasm32-unknown-unknown and runs wasm-bindgen)",
            js.display(),
            wasm.display()
        );
    }
    let (js, wasm) = if built {
        (js, wasm)
    } else {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
        let (js, wasm) = (out.join("missing.js"), out.join("missing.wasm"));
        std::fs::write(&js, b"").expect("OUT_DIR is writable");
        std::fs::write(&wasm, b"").expect("OUT_DIR is writable");
        (js, wasm)
    };
    println!("cargo:rustc-env=FALLBACK_WEB_JS={}", js.display());
    println!("cargo:rustc-env=FALLBACK_WEB_WASM={}", wasm.display());
    println!("cargo:rustc-env=FALLBACK_WEB_BUILT={}", u8::from(built));
}
