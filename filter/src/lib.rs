//! Fallback's proxy-wasm HTTP filter: thin host glue over `fallback-core`.
//!
//! - Each worker's root context ([`Worker`]) takes part in a leader lease in shared data; the
//!   leader drives `fallback_core::fetch::FetchMachine` (control plane, companion, storage) from
//!   `on_tick` and publishes each new document in shared data.
//! - Every worker reads the published document once per generation, compiles a router in
//!   slices between requests ([`apply`]), and hands it to its HTTP contexts
//!   ([`request::RequestFilter`]), with the config's plugins compiled next to it; rate-limiting counters live in shared data
//!   (`fallback_core::shared_data`).
//! - What differs between proxy hosts is decided by `fallback_core::host::HostProfile`, picked
//!   once from the configuration's `"host"`; [`host`] only performs calls, through [`abi`].

mod abi;
mod apply;
mod host;
mod request;

/// The ABI's header map encoding, for `make footprint`'s stand-in host
/// (`examples/footprint.rs`), which hands the module maps the way a proxy does.
#[doc(hidden)]
pub use abi::serialize_map;

use fallback_core::fetch::{Action, CallId, FetchMachine, HttpResponse, LogLevel, Source, Stage};
use fallback_core::filter_config::FilterConfig;
use fallback_core::freshness::{self, ConfigAge};
use fallback_core::generation::Slicer;
use fallback_core::host::{proxy_log_level, HostProfile};
use fallback_core::pace::Sliced;
use fallback_core::plugins::PluginEngine;
use fallback_core::publication::{publish, read_published, Election};
use fallback_core::router::Router;
use host::{HostSharedData, Metric};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel as SdkLevel, MetricType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(SdkLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Worker::new()) });
}}

/// The configuration in force on this worker.
pub struct Active {
    router: Router,
    plugins: PluginEngine,
    source: Source,
    revision: u64,
    /// Its export time (Unix ms), for a fallback config that carries one.
    exported_at_ms: Option<u64>,
    /// Its age against the staleness budget, refreshed every tick.
    age: Cell<ConfigAge>,
}

impl Active {
    /// Its age at `now_ms`, held against `config`'s budget.
    fn assess(&self, config: &FilterConfig, now_ms: u64) -> ConfigAge {
        freshness::assess(
            self.source,
            self.revision,
            self.exported_at_ms,
            now_ms,
            config.max_fallback_age_ms,
        )
    }
}

/// What HTTP contexts read: the configuration in force, replaced whole on each new generation.
type Shared = Rc<RefCell<Option<Rc<Active>>>>;

struct Metrics {
    source: Metric,
    revision: Metric,
    generation: Metric,
    config_age: Metric,
    success: [Metric; 7],
    failure: [Metric; 7],
    /// Requests served without the observe-only plugins that apply to them.
    observe_only_skipped: Metric,
}

const STAGES: [(&str, Stage); 7] = [
    ("control_plane", Stage::ControlPlane),
    ("companion", Stage::Companion),
    ("storage", Stage::Storage),
    ("verify", Stage::Verify),
    ("validate", Stage::Validate),
    ("revision", Stage::Revision),
    ("age", Stage::Age),
];

impl Metrics {
    fn define() -> Self {
        let counter = |outcome: &str, stage: &str| {
            Metric::define(
                MetricType::Counter,
                &format!("fallback_fetch_{outcome}_{stage}"),
            )
        };
        Self {
            source: Metric::define(MetricType::Gauge, "fallback_source"),
            revision: Metric::define(MetricType::Gauge, "fallback_revision"),
            generation: Metric::define(MetricType::Gauge, "fallback_generation"),
            config_age: Metric::define(MetricType::Gauge, "fallback_config_age_seconds"),
            success: STAGES.map(|(name, _)| counter("success", name)),
            failure: STAGES.map(|(name, _)| counter("failure", name)),
            observe_only_skipped: Metric::define(
                MetricType::Counter,
                "fallback_observe_only_skipped",
            ),
        }
    }

    fn count(&self, stage: Stage, success: bool) {
        if let Some(i) = STAGES.iter().position(|(_, s)| *s == stage) {
            if success {
                self.success[i].add(1);
            } else {
                self.failure[i].add(1);
            }
        }
    }
}

/// Logs `message` at `level`, as every host takes it.
pub(crate) fn log(level: LogLevel, message: &str) {
    host::log(proxy_log_level(level), message);
}

/// One worker's root context.
struct Worker {
    config: Option<Rc<FilterConfig>>,
    /// This host's semantics, from the configuration's `"host"`.
    profile: &'static HostProfile,
    /// The fetch state machine, present while this worker holds the lease and the machine is
    /// not busy with a response ([`Worker::responding`]).
    machine: Option<FetchMachine>,
    /// The machine, handling a response in slices (it hashes, parses and validates the
    /// document; [`apply`]).
    responding: RefCell<Option<apply::Responding>>,
    /// The machine back from a response handled between requests, until the next callback
    /// that can take it back.
    returned: RefCell<Option<FetchMachine>>,
    /// Responses that arrived while the machine was busy, in order.
    queued: RefCell<std::collections::VecDeque<(CallId, HttpResponse)>>,
    /// Actions of a response handled between requests that need the machine (dispatches:
    /// the machine asks for none from a response, so this stays empty).
    deferred: RefCell<Vec<Action>>,
    /// This worker's part in the leader lease.
    election: Election,
    calls: HashMap<u32, CallId>,
    generation_applied: Cell<Option<u64>>,
    active: Shared,
    metrics: Option<Metrics>,
    /// The published generation being compiled, a slice at a time ([`apply`]).
    building: RefCell<Option<apply::Building>>,
    /// Generations replaced, kept until no request holds them, then freed a slice at a time.
    retired: RefCell<Vec<Rc<Active>>>,
    freeing: RefCell<Option<Sliced<()>>>,
    /// When the current slice of config work ends (host clock, ns).
    deadline_ns: Rc<Cell<u64>>,
    slicer: RefCell<Slicer>,
    /// Config work waits (set after each slice: requests read it without a clock call).
    pending: Cell<bool>,
    /// Whether the tick runs at `BUSY_TICK_MS` for that work.
    busy_tick: Cell<bool>,
}

impl Worker {
    fn new() -> Self {
        Self {
            config: None,
            profile: fallback_core::host::HostKind::default().profile(),
            machine: None,
            responding: RefCell::new(None),
            returned: RefCell::new(None),
            queued: RefCell::new(std::collections::VecDeque::new()),
            deferred: RefCell::new(Vec::new()),
            election: Election::new(random_u64()),
            calls: HashMap::new(),
            generation_applied: Cell::new(None),
            active: Rc::new(RefCell::new(None)),
            metrics: None,
            building: RefCell::new(None),
            retired: RefCell::new(Vec::new()),
            freeing: RefCell::new(None),
            deadline_ns: Rc::new(Cell::new(0)),
            slicer: RefCell::new(Slicer::default()),
            pending: Cell::new(false),
            busy_tick: Cell::new(false),
        }
    }

    /// Takes part in the lease; starts or stops the state machine as leadership changes.
    fn lead_or_follow(&mut self, config: &FilterConfig, now: u64) {
        let leading = self
            .election
            .tick(&mut HostSharedData, now, config.leader_lease_ms);
        let has_machine = self.machine.is_some()
            || self.responding.borrow().is_some()
            || self.returned.borrow().is_some();
        match (leading, has_machine) {
            (true, false) => {
                let mut machine = FetchMachine::new(config, random_u64());
                let published = read_published(&mut HostSharedData).map(|(_, p)| p);
                machine.adopt(published.as_ref());
                log(
                    LogLevel::Info,
                    "fallback: this worker now leads config fetching",
                );
                self.machine = Some(machine);
            }
            (false, true) => {
                log(
                    LogLevel::Info,
                    "fallback: another worker leads config fetching now",
                );
                self.machine = None;
                *self.responding.borrow_mut() = None;
                *self.returned.borrow_mut() = None;
                self.queued.borrow_mut().clear();
                self.deferred.borrow_mut().clear();
                self.calls.clear();
            }
            _ => {}
        }
    }

    /// Carries out the machine's actions; a dispatch the host refuses is fed back as a failure.
    /// The machine asks for calls from ticks only, so no dispatch is ever made from a response
    /// callback (ngx_wasm_module crashes on one).
    fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Dispatch(req) => {
                    let headers = self.profile.dispatch_headers(&req);
                    let timeout = Duration::from_millis(req.timeout_ms);
                    match host::dispatch(&req.upstream, headers, timeout) {
                        Ok(token) => {
                            self.calls.insert(token, req.call);
                        }
                        Err(status) => {
                            log(
                                LogLevel::Warn,
                                &format!(
                                    "fallback: the host refused a call to upstream {:?} ({status:?}): check that the cluster exists (Envoy) or that it is a reachable host:port (nginx, Kong)",
                                    req.upstream
                                ),
                            );
                            if let Some(machine) = self.machine.as_mut() {
                                let failed = HttpResponse {
                                    status: None,
                                    headers: Vec::new(),
                                    body: Vec::new(),
                                };
                                queue.extend(machine.on_response(host::now_ms(), req.call, failed));
                            }
                        }
                    }
                }
                other => self.perform_shared(other),
            }
        }
    }

    /// Carries out an action that needs no machine (all but dispatches, which are deferred to
    /// the next tick).
    fn perform_shared(&self, action: Action) {
        match action {
            Action::Dispatch(_) => self.deferred.borrow_mut().push(action),
            Action::Publish(published) => {
                if let Err(why) = publish(&mut HostSharedData, &published) {
                    log(
                            LogLevel::Error,
                            &format!(
                                "fallback: could not publish the config (sha256 {}) in shared data: {why}; check the shared memory zone (nginx: shm_kv *)",
                                published.sha256
                            ),
                        );
                }
            }
            Action::Log { level, message } => log(level, &message),
            Action::Count { stage, success } => {
                if let Some(m) = &self.metrics {
                    m.count(stage, success);
                }
            }
        }
    }
}

impl Worker {
    /// Re-assesses the age of the config in force (what fail-closed and readiness read) and
    /// updates the age gauge.
    fn refresh_age(&self, config: &FilterConfig, now_ms: u64) {
        let active = self.active.borrow();
        let Some(active) = active.as_ref() else {
            return;
        };
        let age = active.assess(config, now_ms);
        active.age.set(age);
        if let Some(m) = &self.metrics {
            m.config_age.set(age.age_ms.unwrap_or(0) / 1000);
        }
    }
}

/// 64 random bits from the host (WASI `random_get` behind std's hasher keys).
pub(crate) fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(host::now_ms());
    hasher.finish()
}

impl Context for Worker {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            host::call_response_headers()
        };
        // Envoy reports a transport failure as a response without headers; Kong's
        // ngx_wasm_module as one without `:status` (and a `:dispatch_status`).
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok());
        let body = if status.is_some() {
            host::call_response_body(body_size)
        } else {
            Vec::new()
        };
        let response = HttpResponse {
            status,
            headers,
            body,
        };
        self.respond(call, response);
    }
}

impl RootContext for Worker {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = host::plugin_configuration();
        match FilterConfig::parse(&raw) {
            Ok(config) => {
                host::set_tick_period(Duration::from_millis(config.tick_ms));
                self.profile = config.host.profile();
                self.metrics = Some(Metrics::define());
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "fallback: invalid plugin configuration, the filter is not started: {e}"
                    ),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let now = host::now_ms();
        self.reclaim_machine();
        self.lead_or_follow(&config, now);
        if let Some(machine) = self.machine.as_mut() {
            let actions = machine.on_tick(now);
            self.perform(actions);
        }
        self.work_on_tick();
        self.reclaim_machine();
        self.refresh_age(&config, now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        // Until this worker has a config, every request looks for one: right after the leader
        // publishes the first config, a worker must not answer 503 until its own next tick.
        self.work_between_requests();
        Some(Box::new(request::RequestFilter::new(
            self.active.borrow().clone(),
            config,
            self.profile,
            self.metrics.as_ref().map(|m| m.observe_only_skipped),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
