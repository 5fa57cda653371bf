//! The baseline of `make bench-proxy`: the least a routing wasm filter does per request.
//!
//! It reads `:path` and `:authority` (as any router must) and sets the request headers its
//! plugin configuration names, a JSON object of names and values, e.g.
//! `{"x-fallback-upstream": "127.0.0.1:8080"}`: the `host:port` the bootstrap hands to Envoy's
//! upstream, as the Fallback filter does. A name written `response:<name>` is set on the
//! response instead (the benchmark's PK variant carries the headers Kong's plugins add); one
//! written `add:<name>` is added to the request (`proxy_add_header_map_value`) rather than set.
//! Two names make it read what the Fallback filter reads when plugins apply (the PF variant,
//! the Fallback filter's host calls with none of its work): `read:map` reads the whole request
//! header map in one call instead of the two headers, and `read:clock` reads the clock.
//! Comparing the Fallback filter with this one, under the same bootstrap, isolates what the
//! Fallback filter itself costs per request.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::collections::BTreeMap;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { plan: Rc::default() })
    });
}}

/// What to read and write per request.
#[derive(Default)]
struct Plan {
    /// Read the whole request header map (one call) instead of `:path` and `:authority`.
    read_map: bool,
    /// Read the clock.
    read_clock: bool,
    /// Request headers to set, in order.
    set: Vec<(String, String)>,
    /// Request headers to add, in order.
    add: Vec<(String, String)>,
    /// Response headers to set, in order.
    response: Vec<(String, String)>,
}

impl Plan {
    fn parse(config: BTreeMap<String, String>) -> Plan {
        let mut plan = Plan::default();
        for (name, value) in config {
            if let Some(name) = name.strip_prefix("response:") {
                plan.response.push((name.to_owned(), value));
            } else if let Some(name) = name.strip_prefix("add:") {
                plan.add.push((name.to_owned(), value));
            } else if name == "read:map" {
                plan.read_map = true;
            } else if name == "read:clock" {
                plan.read_clock = true;
            } else {
                plan.set.push((name, value));
            }
        }
        plan
    }
}

struct Root {
    plan: Rc<Plan>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match serde_json::from_slice::<BTreeMap<String, String>>(&raw) {
            Ok(config) => {
                self.plan = Rc::new(Plan::parse(config));
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
            plan: self.plan.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    plan: Rc<Plan>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let plan = &self.plan;
        // Read as a router would, so the baseline pays for the same host calls.
        let routable = if plan.read_map {
            let map = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
            let has = |name: &str| map.iter().any(|(n, _)| n == name);
            has(":path") && has(":authority")
        } else {
            let read = |name| {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten()
            };
            read(":path").is_some() && read(":authority").is_some()
        };
        if plan.read_clock {
            let _ = hostcalls::get_current_time();
        }
        if routable {
            for (name, value) in &plan.set {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            for (name, value) in &plan.add {
                let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in &self.plan.response {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
        Action::Continue
    }
}
