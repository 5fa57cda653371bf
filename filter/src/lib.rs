//! Fallback's proxy-wasm HTTP filter.
//!
//! This build is the skeleton the import path grows from: it loads in Envoy (and any
//! proxy-wasm host), checks that its plugin configuration is a JSON object, and answers every
//! request with Kong's "no configuration yet" 503 until the fetch state machine lands.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FallbackRoot) });
}}

/// The JSON body of the 503 sent while no configuration is loaded.
const NO_CONFIG_BODY: &str = r#"{"message":"no configuration loaded yet: the fallback filter has not received a config from the control plane or storage"}"#;

struct FallbackRoot;

impl Context for FallbackRoot {}

impl RootContext for FallbackRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(raw) = self.get_plugin_configuration() else {
            proxy_wasm::hostcalls::log(
                LogLevel::Info,
                "fallback: started with an empty configuration",
            )
            .ok();
            return true;
        };
        match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(_)) => true,
            Ok(_) => {
                log_error("fallback: plugin configuration must be a JSON object");
                false
            }
            Err(e) => {
                log_error(&format!("fallback: plugin configuration is not JSON: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FallbackRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FallbackRequest;

impl Context for FallbackRequest {}

impl HttpContext for FallbackRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.send_http_response(
            503,
            vec![("content-type", "application/json; charset=utf-8")],
            Some(NO_CONFIG_BODY.as_bytes()),
        );
        Action::Pause
    }
}

fn log_error(message: &str) {
    // A failed log call has nowhere better to go; it must not become a panic.
    proxy_wasm::hostcalls::log(LogLevel::Error, message).ok();
}
