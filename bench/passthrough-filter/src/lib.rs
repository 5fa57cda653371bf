//! The baseline of `make bench-proxy`: the least a routing wasm filter does per request.
//!
//! It reads `:path` and `:authority` (as any router must) and sets the request headers its
//! plugin configuration names, a JSON object of names and values, e.g.
//! `{"x-fallback-upstream": "127.0.0.1:8080"}`: the `host:port` the bootstrap hands to Envoy's
//! upstream, as the Fallback filter does. A name written `response:<name>` is set on the
//! response instead (the benchmark's PK variant carries the headers Kong's plugins add). Comparing the Fallback filter with this one, under the
//! same bootstrap, isolates what the Fallback filter itself costs per request.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::collections::BTreeMap;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { headers: Rc::default() })
    });
}}

/// The headers to set, in order: on the request, and (`response:` names) on the response.
type Headers = Rc<(Vec<(String, String)>, Vec<(String, String)>)>;

struct Root {
    headers: Headers,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match serde_json::from_slice::<BTreeMap<String, String>>(&raw) {
            Ok(headers) => {
                let (response, request): (Vec<_>, Vec<_>) = headers
                    .into_iter()
                    .partition(|(name, _)| name.starts_with("response:"));
                let response = response
                    .into_iter()
                    .map(|(name, value)| (name["response:".len()..].to_owned(), value))
                    .collect();
                self.headers = Rc::new((request, response));
                true
            }
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("passthrough: the configuration must be a JSON object of header names and values: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            headers: self.headers.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    headers: Headers,
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
            for (name, value) in self.headers.0.iter() {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in self.headers.1.iter() {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
        Action::Continue
    }
}
