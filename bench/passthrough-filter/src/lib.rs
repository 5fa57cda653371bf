//! The baseline of `make bench-proxy`: the least a routing wasm filter does per request.
//!
//! It reads `:path` and `:authority` (as any router must) and sets one request header: the
//! `host:port` the bootstrap hands to Envoy's upstream (`x-fallback-upstream`, as the Fallback
//! filter does). Its plugin configuration is that value, verbatim (e.g. `127.0.0.1:8080`);
//! surrounding quotes and whitespace are ignored. Comparing the Fallback filter with this one,
//! under the same bootstrap, isolates what the Fallback filter itself costs per request.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::rc::Rc;

/// The header the value goes into (the Fallback filter's default `upstream_header`).
const HEADER: &str = "x-fallback-upstream";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { upstream: Rc::from("") })
    });
}}

struct Root {
    upstream: Rc<str>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        self.upstream = Rc::from(text.trim().trim_matches('"'));
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            upstream: self.upstream.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    upstream: Rc<str>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let read = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        };
        // Read as a router would, so the baseline pays for the same two host calls.
        let path = read(":path");
        let authority = read(":authority");
        if path.is_some() && authority.is_some() {
            let _ =
                hostcalls::set_map_value(MapType::HttpRequestHeaders, HEADER, Some(&self.upstream));
        }
        Action::Continue
    }
}
