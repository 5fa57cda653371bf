//! Per request: route with the configuration in force, hand the upstream to the host, or answer.

use crate::host;
use crate::Active;
use fallback_core::fetch::Source;
use fallback_core::filter_config::FilterConfig;
use fallback_core::router::{RequestView, RouteOutcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

const NO_CONFIG: &str = r#"{"message":"no configuration loaded yet: the gateway has not received a config from the control plane or from storage; retry shortly"}"#;
const NO_ROUTE: &str = r#"{"message":"no Route matched with those values"}"#;

/// One request's filter: a snapshot of the configuration in force when it arrived.
pub struct RequestFilter {
    active: Option<Rc<Active>>,
    config: Rc<FilterConfig>,
    debug: Option<Vec<(&'static str, String)>>,
}

impl RequestFilter {
    /// A filter for one request.
    pub fn new(active: Option<Rc<Active>>, config: Rc<FilterConfig>) -> Self {
        Self {
            active,
            config,
            debug: None,
        }
    }
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(active) = self.active.clone() else {
            host::send_json(503, NO_CONFIG, &[]);
            return Action::Pause;
        };
        let method = host::request_header(":method").unwrap_or_default();
        let authority = host::request_header(":authority").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_else(|| "/".into());
        let scheme = host::request_header(":scheme").unwrap_or_else(|| "http".into());
        let view = RequestView {
            method: &method,
            authority: &authority,
            path: &path,
            scheme: &scheme,
        };
        match active.router.route(&view) {
            RouteOutcome::Forward(forward) => {
                host::set_request_header(&self.config.upstream_header, Some(&forward.upstream));
                host::set_request_header(":path", Some(&forward.path));
                if self.config.allow_debug_header
                    && host::request_header("kong-debug").as_deref() == Some("1")
                {
                    let source = match active.source {
                        Source::ControlPlane => "control_plane",
                        Source::Fallback => "fallback",
                    };
                    self.debug = Some(vec![
                        ("kong-route-name", forward.route_name),
                        ("kong-service-name", forward.service_name),
                        ("x-fallback-source", source.to_owned()),
                        ("x-fallback-revision", active.revision.to_string()),
                    ]);
                }
                Action::Continue
            }
            RouteOutcome::NoRoute => {
                host::send_json(404, NO_ROUTE, &[]);
                Action::Pause
            }
            RouteOutcome::Unavailable { message } => {
                let body = serde_json::json!({ "message": message }).to_string();
                host::send_json(503, &body, &[]);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(debug) = self.debug.take() {
            for (name, value) in &debug {
                host::add_response_header(name, value);
            }
        }
        Action::Continue
    }
}
