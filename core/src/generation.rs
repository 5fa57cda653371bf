//! A published config compiled on one worker, a slice at a time, and the previous one freed
//! the same way: what a worker does between requests when the config changes.
//!
//! A worker serves nothing while it compiles. Compiling a 10,000-route config in one piece takes
//! a few hundred milliseconds in a wasm VM (parsing, loading and validating, the router, the
//! plugins, freeing the parsed JSON and, later, the previous generation), and every request in
//! flight would wait for all of it. [`compile`] and [`dismantle`] do that work in steps (see
//! [`crate::pace`]); [`Slicer`] decides when a worker runs a slice and for how long.
//!
//! What is not cut into steps: the host's copy of the document out of shared data, and a text
//! the parse in pieces cannot vouch for (a syntax error, say), parsed whole.

use crate::digest::Sha256Digest;
use crate::document::{ConfigDocument, Problem, ValidationErrors};
use crate::pace::Pace;
use crate::plugins::{PluginEngine, PluginPolicy};
use crate::router::Router;

/// A slice while the worker serves traffic: short enough that a request arriving as it starts
/// waits little longer than a request usually takes.
pub const SLICE_NS: u64 = 1_000_000;
/// A slice while the worker is idle: the work ends sooner, and nobody waits.
pub const IDLE_SLICE_NS: u64 = 50_000_000;
/// A worker that has seen no request for this long is idle.
pub const IDLE_AFTER_NS: u64 = 1_000_000_000;
/// The least time between the end of one slice and the start of the next, so the worker
/// serves between slices (about 30% of its time goes to the work meanwhile).
pub const SLICE_GAP_NS: u64 = 2_500_000;
/// The tick period (ms) while work is pending, on hosts that let the filter change it.
pub const BUSY_TICK_MS: u64 = 5;

/// A document compiled for serving.
pub struct Compiled {
    /// The routes.
    pub router: Router,
    /// The plugins.
    pub plugins: PluginEngine,
    /// What loading found worth saying that did not stop it.
    pub warnings: Vec<Problem>,
}

/// Loads `document`, compiles its router and plugins, and frees what only compiling needed,
/// yielding to `pace` throughout.
pub async fn compile(
    document: &[u8],
    policy: &PluginPolicy,
    pace: &Pace<'_>,
) -> Result<Compiled, ValidationErrors> {
    let loaded = ConfigDocument::from_slice_paced(document, pace).await?;
    let router = Router::compile_paced(&loaded.document, pace).await;
    let plugins = PluginEngine::compile_paced(&loaded.document, policy, pace).await;
    loaded.document.dismantle(pace).await;
    Ok(Compiled {
        router,
        plugins,
        warnings: loaded.warnings,
    })
}

/// [`compile`] for a document read from shared data: `None` when its sha256 is not the one
/// its header announced (the two keys are not written together, and a newer header follows).
pub async fn compile_published(
    document: &[u8],
    sha256: &Sha256Digest,
    policy: &PluginPolicy,
    pace: &Pace<'_>,
) -> Option<Result<Compiled, ValidationErrors>> {
    if Sha256Digest::of_paced(document, pace).await != *sha256 {
        return None;
    }
    Some(compile(document, policy, pace).await)
}

/// Frees a generation no request uses any more, yielding to `pace`.
pub async fn dismantle(router: Router, plugins: PluginEngine, pace: &Pace<'_>) {
    router.dismantle(pace).await;
    plugins.dismantle(pace).await;
}

/// When a worker with work pending (a generation to compile or to free) runs a slice of it,
/// and for how long. Ticks always run one; a request runs one when the last ended at least
/// [`SLICE_GAP_NS`] ago, for hosts whose tick cannot be made faster (ngx_wasm_module sets it
/// once), and so that a busy worker does not wait for its next tick.
#[derive(Debug, Default)]
pub struct Slicer {
    /// Requests since the last tick (a count only: no clock read per request).
    requests: u32,
    /// When a tick last saw requests since the one before.
    busy_at_ns: u64,
    /// When the last slice ended.
    ended_at_ns: u64,
}

impl Slicer {
    /// A request arrived.
    pub fn request(&mut self) {
        self.requests = self.requests.saturating_add(1);
    }

    /// A tick at `now_ns`: the length of the slice to run now (if work is pending).
    pub fn tick(&mut self, now_ns: u64) -> u64 {
        if self.requests > 0 || self.busy_at_ns == 0 {
            self.busy_at_ns = now_ns;
        }
        self.requests = 0;
        if now_ns.saturating_sub(self.busy_at_ns) >= IDLE_AFTER_NS {
            IDLE_SLICE_NS
        } else {
            SLICE_NS
        }
    }

    /// A request at `now_ns` with work pending: the length of the slice to run now, if one is
    /// due.
    pub fn between_requests(&self, now_ns: u64) -> Option<u64> {
        (now_ns.saturating_sub(self.ended_at_ns) >= SLICE_GAP_NS).then_some(SLICE_NS)
    }

    /// The slice to run at `now_ns` outside a tick (when the fetch leader's answer arrives): a
    /// tick's length, without counting as a tick.
    pub fn slice_at(&self, now_ns: u64) -> u64 {
        let idle = self.requests == 0
            && self.busy_at_ns != 0
            && now_ns.saturating_sub(self.busy_at_ns) >= IDLE_AFTER_NS;
        if idle {
            IDLE_SLICE_NS
        } else {
            SLICE_NS
        }
    }

    /// A slice ended at `now_ns`.
    pub fn ended(&mut self, now_ns: u64) {
        self.ended_at_ns = now_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pace::{run_to_end, Sliced};
    use crate::router::{RequestView, RouteOutcome};
    use serde_json::json;
    use std::cell::Cell;
    use std::rc::Rc;

    fn document(routes: usize) -> Vec<u8> {
        let services: Vec<_> = (0..routes)
            .map(|i| {
                json!({"name": format!("s{i}"), "url": format!("http://u{i}.test:8000/base"),
                    "routes": [{"name": format!("r{i}"), "hosts": [format!("r{i}.test")],
                        "paths": ["/api"],
                        "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}}]}]})
            })
            .collect();
        serde_json::to_vec(&json!({
            "_format_version": "3.0",
            "services": services,
            "upstreams": [{"name": "u1.test", "targets": [{"target": "10.0.0.1:9000"}]}],
            "consumers": [{"username": "c", "keyauth_credentials": [{"key": "k1"}]}],
        }))
        .unwrap()
    }

    /// Where `host`/api goes: the service's authority and path.
    fn route(router: &Router, host: &str) -> Option<(String, String)> {
        let request = RequestView {
            method: "GET",
            authority: host,
            path: "/api/x",
            scheme: "http",
            headers: &[],
            sni: None,
            port: None,
        };
        match router.route(&request) {
            RouteOutcome::Forward(f) => Some((f.upstream.to_string(), f.path.to_string())),
            _ => None,
        }
    }

    fn compile_at_once(bytes: &[u8]) -> Compiled {
        run_to_end(compile(bytes, &PluginPolicy::default(), &Pace::unbounded()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `compile` in slices that end after every question, counting them.
    fn compile_sliced(bytes: Vec<u8>) -> (Result<Compiled, ValidationErrors>, u32) {
        let mut work = Sliced::new(async move {
            let due = || true;
            let pace = Pace::new(&due);
            compile(&bytes, &PluginPolicy::default(), &pace).await
        });
        let mut slices = 1;
        loop {
            match work.resume() {
                Some(result) => return (result, slices),
                None => slices += 1,
            }
        }
    }

    #[test]
    fn compiled_in_slices_routes_as_compiled_at_once() {
        let bytes = document(300);
        let at_once = compile_at_once(&bytes);
        let (sliced, slices) = compile_sliced(bytes);
        let sliced = sliced.unwrap_or_else(|e| panic!("{e}"));
        // 300 services, routes and plugins are read, compiled and freed a step each.
        assert!(
            slices > 3 * 300 / crate::pace::CHECK_EVERY,
            "only {slices} slices"
        );
        for i in [0, 1, 150, 299] {
            let host = format!("r{i}.test");
            assert_eq!(route(&sliced.router, &host), route(&at_once.router, &host));
            assert!(route(&sliced.router, &host).is_some(), "{host} routes");
        }
        assert_eq!(
            route(&sliced.router, "r1.test"),
            Some(("10.0.0.1:9000".to_owned(), "/base/x".to_owned())),
            "a service naming an upstream is balanced over its targets"
        );
        assert_eq!(sliced.router.len(), at_once.router.len());
        assert_eq!(
            sliced.plugins.unsupported().len(),
            at_once.plugins.unsupported().len()
        );
    }

    #[test]
    fn a_bad_document_is_refused_in_slices_too() {
        let mut doc: serde_json::Value = serde_json::from_slice(&document(50)).unwrap();
        doc["services"][40]["routes"][0]["paths"] = json!(["no-slash"]);
        let (result, slices) = compile_sliced(serde_json::to_vec(&doc).unwrap());
        let errors = result.err().expect("refused");
        assert!(slices > 1);
        assert!(
            errors
                .to_string()
                .contains("services[40].routes[0].paths[0]"),
            "{errors}"
        );
        let (result, _) = compile_sliced(b"{\"_format_version\": ".to_vec());
        assert!(result.is_err());
    }

    #[test]
    fn dismantle_frees_in_slices() {
        let bytes = document(300);
        let compiled = compile_at_once(&bytes);
        let asked = Rc::new(Cell::new(0u32));
        let counter = asked.clone();
        let mut work = Sliced::new(async move {
            let due = move || {
                counter.set(counter.get() + 1);
                true
            };
            let pace = Pace::new(&due);
            dismantle(compiled.router, compiled.plugins, &pace).await;
        });
        let mut slices = 1;
        while work.resume().is_none() {
            slices += 1;
        }
        // 300 routes, candidates, host indices, services, plugin instances and route keys.
        assert!(slices > 5 * 300 / crate::pace::CHECK_EVERY, "{slices}");
        assert_eq!(
            asked.get(),
            slices - 1,
            "a slice ends each time the pace is asked"
        );
    }

    #[test]
    fn slices_are_short_while_serving_and_long_when_idle() {
        let ms = 1_000_000;
        let mut slicer = Slicer::default();
        assert_eq!(slicer.tick(1_000 * ms), SLICE_NS, "not idle at start");
        assert_eq!(slicer.tick(1_500 * ms), SLICE_NS);
        assert_eq!(
            slicer.tick(2_000 * ms),
            IDLE_SLICE_NS,
            "1 s without a request"
        );
        slicer.request();
        assert_eq!(
            slicer.tick(2_005 * ms),
            SLICE_NS,
            "a request since the last tick"
        );
        assert_eq!(slicer.tick(2_010 * ms), SLICE_NS, "busy 5 ms ago");
        assert_eq!(slicer.tick(3_004 * ms), SLICE_NS);
        assert_eq!(slicer.tick(3_005 * ms), IDLE_SLICE_NS);
        assert_eq!(slicer.slice_at(3_006 * ms), IDLE_SLICE_NS);
        slicer.request();
        assert_eq!(
            slicer.slice_at(3_007 * ms),
            SLICE_NS,
            "a request since the last tick"
        );
        assert_eq!(
            Slicer::default().slice_at(5_000 * ms),
            SLICE_NS,
            "never ticked"
        );
    }

    #[test]
    fn requests_run_a_slice_only_after_the_gap() {
        let ms = 1_000_000;
        let mut slicer = Slicer::default();
        slicer.ended(100 * ms);
        assert_eq!(slicer.between_requests(100 * ms + SLICE_GAP_NS - 1), None);
        assert_eq!(
            slicer.between_requests(100 * ms + SLICE_GAP_NS),
            Some(SLICE_NS)
        );
        slicer.ended(107 * ms);
        assert_eq!(slicer.between_requests(107 * ms + SLICE_GAP_NS - 1), None);
    }
}
