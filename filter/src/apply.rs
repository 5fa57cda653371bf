//! This worker's config generations: each newly published document compiled a slice at a time
//! between requests, put in force when done, and the previous generation freed the same way
//! once no request holds it (see `fallback_core::generation`, which decides the slices).
//!
//! A worker without any config compiles the first one at once: it has nothing to serve
//! meanwhile.
//!
//! The fetch leader's machine handles a response the same way: hashing, parsing and validating
//! a document it fetched (`FetchMachine::on_response_paced`) runs in slices, and the machine
//! is back for ticks once it is done. On nginx and Kong the leader is a worker that serves.

use crate::host::now_ns;
use crate::{host, log, Active, Worker};
use fallback_core::document::ValidationErrors;
use fallback_core::fetch::{Action, CallId, FetchMachine, HttpResponse, LogLevel, Source};
use fallback_core::freshness;
use fallback_core::generation::{self, Compiled, BUSY_TICK_MS};
use fallback_core::pace::{Pace, Sliced};
use fallback_core::publication::{published_header, PublicationHeader, CONFIG_KEY};
use fallback_core::shared_data::SharedData;
use host::HostSharedData;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// A published generation being compiled.
pub(crate) struct Building {
    header: PublicationHeader,
    /// When compiling started, the slices run so far and the time spent in them (ns), for the
    /// log line that puts the generation in force.
    started_ns: u64,
    slices: u32,
    busy_ns: u64,
    /// `None` when the bytes read are not the header's (a newer header follows).
    work: Sliced<Option<Result<Compiled, ValidationErrors>>>,
}

/// The fetch machine handling a response; it gives back the machine and the response's
/// actions.
pub(crate) type Responding = Sliced<(FetchMachine, Vec<Action>)>;

impl Worker {
    /// A pace whose slice ends at this worker's deadline.
    fn due(&self) -> impl Fn() -> bool + 'static {
        let deadline = self.deadline_ns.clone();
        move || now_ns() >= deadline.get()
    }

    /// Starts compiling the published generation when it is new and nothing is being compiled.
    fn look_for_generation(&self) {
        if self.building.borrow().is_some() {
            return;
        }
        let Some(header) = published_header(&mut HostSharedData) else {
            return;
        };
        if self.generation_applied.get() == Some(header.generation) {
            return;
        }
        let (document, _) = HostSharedData.get(CONFIG_KEY);
        let Some(document) = document else {
            return;
        };
        let policy = self
            .config
            .as_ref()
            .map(|c| c.plugin_policy())
            .unwrap_or_default();
        let sha256 = header.sha256;
        let due = self.due();
        let work = Sliced::new(async move {
            let pace = Pace::new(&due);
            generation::compile_published(&document, &sha256, &policy, &pace).await
        });
        *self.building.borrow_mut() = Some(Building {
            header,
            started_ns: now_ns(),
            slices: 0,
            busy_ns: 0,
            work,
        });
    }

    /// A response to one of the fetch machine's calls: handled in slices, starting now; queued
    /// while the machine is busy with another.
    pub(crate) fn respond(&mut self, call: CallId, response: HttpResponse) {
        self.reclaim_machine();
        if self.responding.borrow().is_some() {
            self.queued.borrow_mut().push_back((call, response));
            return;
        }
        let Some(machine) = self.machine.take() else {
            return;
        };
        self.start_response(machine, call, response);
        let budget = self.slicer.borrow().slice_at(now_ns());
        self.work(budget);
        self.reclaim_machine();
    }

    /// The machine starts on a response, in slices.
    fn start_response(&self, mut machine: FetchMachine, call: CallId, response: HttpResponse) {
        let due = self.due();
        let now = host::now_ms();
        *self.responding.borrow_mut() = Some(Sliced::new(async move {
            let pace = Pace::new(&due);
            let actions = machine.on_response_paced(now, call, response, &pace).await;
            (machine, actions)
        }));
    }

    /// Runs the machine's response for the slice; when done, carries out its actions and
    /// starts on the next queued response, if any.
    fn run_machine(&self) {
        let done = self
            .responding
            .borrow_mut()
            .as_mut()
            .and_then(|work| work.resume());
        let Some((machine, actions)) = done else {
            return;
        };
        *self.responding.borrow_mut() = None;
        for action in actions {
            self.perform_shared(action);
        }
        let next = self.queued.borrow_mut().pop_front();
        match next {
            Some((call, response)) => self.start_response(machine, call, response),
            None => *self.returned.borrow_mut() = Some(machine),
        }
    }

    /// Takes the machine back after a response handled between requests, with the actions
    /// that had to wait for it.
    pub(crate) fn reclaim_machine(&mut self) {
        if let Some(machine) = self.returned.borrow_mut().take() {
            self.machine = Some(machine);
        }
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        if !deferred.is_empty() {
            self.perform(deferred);
        }
    }

    /// Whether compiling or freeing work waits (a retired generation still held by a request
    /// in flight does not count until it is let go).
    fn work_pending(&self) -> bool {
        self.responding.borrow().is_some()
            || self.building.borrow().is_some()
            || self.freeing.borrow().is_some()
            || self
                .retired
                .borrow()
                .iter()
                .any(|a| Rc::strong_count(a) == 1)
    }

    /// Runs this worker's config work for up to `budget_ns` (`u64::MAX`: to its end): the fetch
    /// machine's response first (its document is what every worker waits for), then the
    /// generation being compiled, then the freeing of retired ones.
    pub(crate) fn work(&self, budget_ns: u64) {
        let start = now_ns();
        self.deadline_ns.set(start.saturating_add(budget_ns));
        if self.responding.borrow().is_some() {
            self.run_machine();
            if budget_ns != u64::MAX {
                self.slicer.borrow_mut().ended(now_ns());
                self.pending.set(self.work_pending());
                return;
            }
        }
        self.look_for_generation();
        loop {
            let built = {
                let mut building = self.building.borrow_mut();
                let Some(b) = building.as_mut() else {
                    break;
                };
                let slice_start = now_ns();
                let result = b.work.resume();
                b.slices += 1;
                b.busy_ns += now_ns().saturating_sub(slice_start);
                result
            };
            let Some(result) = built else {
                break; // the slice is used up
            };
            let Some(done) = self.building.borrow_mut().take() else {
                break;
            };
            let settled = self.install(&done, result);
            if budget_ns != u64::MAX || !settled {
                break;
            }
            // Run to the end: a newer generation may have been published meanwhile.
            self.look_for_generation();
        }
        if self.building.borrow().is_none() {
            self.free_retired();
        }
        self.slicer.borrow_mut().ended(now_ns());
        self.pending.set(self.work_pending());
    }

    /// Frees retired generations that no request holds, within the slice.
    fn free_retired(&self) {
        loop {
            if self.freeing.borrow().is_none() {
                let free = {
                    let mut retired = self.retired.borrow_mut();
                    let Some(i) = retired.iter().position(|a| Rc::strong_count(a) == 1) else {
                        return;
                    };
                    retired.swap_remove(i)
                };
                let Ok(active) = Rc::try_unwrap(free) else {
                    return;
                };
                let due = self.due();
                *self.freeing.borrow_mut() = Some(Sliced::new(async move {
                    let pace = Pace::new(&due);
                    generation::dismantle(active.router, active.plugins, &pace).await;
                }));
            }
            let done = self
                .freeing
                .borrow_mut()
                .as_mut()
                .is_some_and(|f| f.resume().is_some());
            if !done {
                return;
            }
            *self.freeing.borrow_mut() = None;
        }
    }

    /// From a tick: a slice of the config work, if any; then the tick period that suits it.
    pub(crate) fn work_on_tick(&self) {
        let budget = self.slicer.borrow_mut().tick(now_ns());
        self.work(budget);
        if !self.profile.tick_period_changeable {
            return;
        }
        let Some(config) = &self.config else {
            return;
        };
        let busy = self.pending.get();
        if busy != self.busy_tick.get() {
            self.busy_tick.set(busy);
            let ms = if busy { BUSY_TICK_MS } else { config.tick_ms };
            host::set_tick_period(Duration::from_millis(ms));
        }
    }

    /// From a new request: with no config yet, the published one compiled at once; with work
    /// pending, a slice when one is due.
    pub(crate) fn work_between_requests(&self) {
        self.slicer.borrow_mut().request();
        if self.active.borrow().is_none() {
            self.work(u64::MAX);
        } else if self.pending.get() {
            let due = self.slicer.borrow().between_requests(now_ns());
            if let Some(budget) = due {
                self.work(budget);
            }
        }
    }

    /// Puts a compiled generation in force, or logs why it is not; false when the bytes read
    /// were not the header's (they are read again at the next look).
    fn install(
        &self,
        built: &Building,
        result: Option<Result<Compiled, ValidationErrors>>,
    ) -> bool {
        let header = &built.header;
        let Some(result) = result else {
            return false;
        };
        match result {
            Ok(compiled) => {
                for skipped in compiled.router.unsupported() {
                    log(
                        LogLevel::Warn,
                        &format!("fallback: {}: {}", skipped.path, skipped.reason),
                    );
                }
                for warning in &compiled.warnings {
                    log(LogLevel::Warn, &format!("fallback: {warning}"));
                }
                // Once per generation: the requests these plugins apply to answer 500 (or run
                // without them, when listed in ignore_unsupported_plugins).
                for plugin in compiled.plugins.unsupported() {
                    let level = if plugin.ignored {
                        LogLevel::Warn
                    } else {
                        LogLevel::Error
                    };
                    log(
                        level,
                        &format!("fallback: {}: {}", plugin.path, plugin.reason),
                    );
                }
                let mut active = Active {
                    router: compiled.router,
                    plugins: compiled.plugins,
                    source: header.source,
                    revision: header.revision,
                    exported_at_ms: header.exported_at_ms,
                    age: Cell::new(freshness::assess(
                        header.source,
                        header.revision,
                        None,
                        0,
                        None,
                    )),
                };
                if let Some(config) = &self.config {
                    active.age = Cell::new(active.assess(config, host::now_ms()));
                }
                let previous = self.active.borrow_mut().replace(Rc::new(active));
                if let Some(previous) = previous {
                    self.retired.borrow_mut().push(previous);
                }
                if let Some(m) = &self.metrics {
                    m.source.set(match header.source {
                        Source::ControlPlane => 1,
                        Source::Fallback => 2,
                    });
                    m.revision.set(header.revision);
                    m.generation.set(header.generation);
                }
                // One line per worker and generation: in nginx the line's pid tells which
                // worker applied it.
                let ms = |ns: u64| ns / 1_000_000;
                log(
                    LogLevel::Info,
                    &format!(
                        "fallback: this worker now serves config generation {} ({} config, revision {}, sha256 {}; compiled in {} slice{}, {} ms of work over {} ms)",
                        header.generation,
                        header.source.as_str(),
                        header.revision,
                        header.sha256,
                        built.slices,
                        if built.slices == 1 { "" } else { "s" },
                        ms(built.busy_ns),
                        ms(now_ns().saturating_sub(built.started_ns)),
                    ),
                );
            }
            Err(errors) => log(
                LogLevel::Error,
                &format!("fallback: published config generation {} does not load here; keeping the previous one. {errors}", header.generation),
            ),
        }
        self.generation_applied.set(Some(header.generation));
        true
    }
}
