//! The filter's fetch state machine, sans I/O: events in (a tick, a call's response, the clock),
//! actions out (dispatch this call, publish this document, log, count).
//!
//! One machine runs in the leader worker's root context. It polls the control plane (CP) and,
//! when the CP is unusable, imports the fallback config: a signed URL from the companion, then the
//! object from storage, verified (sha256, and the Ed25519 signature over its manifest when
//! `public_keys` are configured) and validated before it is published. It never unpublishes: a
//! failure anywhere keeps the last good config in place, and it never goes back to a storage
//! revision lower than the highest it verified since it started (rollback protection). Control
//! plane documents come straight from the CP and carry no signature: `public_keys` does not
//! apply to them.
//!
//! Modes ([`Mode`]):
//! - `Starting` → `ControlPlane`: the CP serves a valid document.
//! - `Starting` → `Fallback`: the CP fails once (there is nothing to serve yet).
//! - `ControlPlane` → `Fallback`: `cp_failure_threshold` failures in a row.
//! - `Fallback` → `ControlPlane`: the CP serves a valid document again.
//! - No CP configured: `Fallback` from the start.
//!
//! The import itself is a second, smaller state machine: idle until due, then asking
//! the companion, then fetching the object; a failure at any step schedules a retry with
//! backoff and jitter. Calls carry a [`CallId`]; at most one call per party is in flight, and a
//! call the host never answers counts as failed once its timeout plus a grace second has passed.
//!
//! Calls are only ever asked for from [`FetchMachine::on_tick`], never from
//! [`FetchMachine::on_response`]: a dispatch made inside a dispatch's response callback crashes
//! ngx_wasm_module's workers. What an answer makes due (the storage call after the companion's
//! signed URL, the import after a control plane failure) starts at the next tick.

mod signed_url;
#[cfg(test)]
mod tests;

use crate::backoff::Backoff;
use crate::digest::{canonical_json_paced, Sha256Digest};
use crate::document::{ConfigDocument, Problem, ValidationErrors};
use crate::filter_config::{CompanionConfig, FilterConfig};
use crate::json;
use crate::limits::{MAX_DOCUMENT_BYTES, PROXY_RESPONSE_BUFFER_BYTES};
use crate::pace::{run_to_end, Pace};
use crate::signature::{verify_manifest, ExportManifest, PublicKey, Signature};
use crate::wire::{percent_encode, redact_signed_url, ErrorBody, SignedConfig};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Identifies one dispatched call; the glue maps the host's token to it.
pub type CallId = u64;

/// How long past its own timeout a call may stay unanswered before the machine gives up on it.
pub const LOST_CALL_GRACE_MS: u64 = 1_000;

/// Longest excerpt of a peer's error message quoted in a log line.
const QUOTE_MAX: usize = 200;

/// Who a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// The control plane's config endpoint.
    ControlPlane,
    /// The companion's signer API.
    Companion,
    /// The object storage, through a signed URL.
    Storage,
}

impl Party {
    /// A stable lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Party::ControlPlane => "control_plane",
            Party::Companion => "companion",
            Party::Storage => "storage",
        }
    }
}

/// A call for the host to dispatch. `method`, `path` and `authority` become the `:method`,
/// `:path` and `:authority` pseudo-headers; `headers` holds only regular headers.
///
/// If the host refuses to dispatch it, report that through [`FetchMachine::on_response`] with
/// [`HttpResponse::transport_failure`] so the machine does not wait for the lost-call timeout.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The id the response must be reported with.
    pub call: CallId,
    /// Who the call goes to.
    pub party: Party,
    /// Envoy cluster name, or `host:port` in Kong's ngx_wasm_module.
    pub upstream: String,
    /// `:method`.
    pub method: String,
    /// `:path`, with the query. For storage it holds a signature: see the `Debug` impl.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// Regular headers (lowercase names). May hold `authorization`: see the `Debug` impl.
    pub headers: Vec<(String, String)>,
    /// How long the host should wait for the answer.
    pub timeout_ms: u64,
    /// Whether the call must use TLS (a signed `https://` URL). Envoy's cluster decides;
    /// ngx_wasm_module needs `:scheme: https` (see [`crate::host::HostProfile::dispatch_headers`]).
    pub tls: bool,
}

/// Redacts the bearer token and a signed URL's query, so `{:?}` of an action is safe to log.
impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                if name.eq_ignore_ascii_case("authorization") {
                    (name.as_str(), "<redacted>")
                } else {
                    (name.as_str(), value.as_str())
                }
            })
            .collect();
        let path = match self.party {
            Party::Storage => redact_signed_url(&self.path),
            _ => &self.path,
        };
        f.debug_struct("HttpRequest")
            .field("call", &self.call)
            .field("party", &self.party)
            .field("upstream", &self.upstream)
            .field("method", &self.method)
            .field("path", &path)
            .field("authority", &self.authority)
            .field("headers", &headers)
            .field("timeout_ms", &self.timeout_ms)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What came back for a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// The HTTP status; `None` for a transport failure or timeout (Envoy: zero headers, or a
    /// reply of its own, which [`FetchMachine::on_response`] recognises; Kong: a
    /// `:dispatch_status` other than success).
    pub status: Option<u16>,
    /// Response headers as received (names in any case).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a status and a body, no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status: Some(status),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The call failed below HTTP: no connection, reset, timeout, or the host refused it.
    pub fn transport_failure() -> Self {
        HttpResponse::default()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where a published document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Polled from the control plane.
    ControlPlane,
    /// Imported from storage (the fallback config).
    Fallback,
}

impl Source {
    /// A stable lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ControlPlane => "control_plane",
            Source::Fallback => "fallback",
        }
    }
}

/// A validated document for every worker to enforce.
#[derive(Clone, PartialEq, Eq)]
pub struct PublishedConfig {
    /// Where it came from.
    pub source: Source,
    /// The export's revision in storage; 0 for control plane documents.
    pub revision: u64,
    /// sha256 of `document`.
    pub sha256: Sha256Digest,
    /// When a fallback config was exported (Unix ms, from its `exported-at`), when known: its
    /// age counts from there ([`crate::freshness`]). `None` for control plane documents.
    pub exported_at_ms: Option<u64>,
    /// The bytes exactly as validated: `ConfigDocument::from_slice(document)` succeeds. Control
    /// plane documents are stored as canonical JSON (see [`crate::digest`]), like exports, so the
    /// same config has the same sha256 from either source.
    pub document: Arc<[u8]>,
}

/// Shows the document's size, not its bytes.
impl fmt::Debug for PublishedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishedConfig")
            .field("source", &self.source)
            .field("revision", &self.revision)
            .field("sha256", &self.sha256)
            .field("exported_at_ms", &self.exported_at_ms)
            .field("document_bytes", &self.document.len())
            .finish()
    }
}

/// A step that succeeded or failed, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A control plane poll (an HTTP answer counts as success; what it held is `Validate`).
    ControlPlane,
    /// A signed URL from the companion.
    Companion,
    /// The object from storage.
    Storage,
    /// The object's sha256 against the signer's, and its signature when a public key is set.
    Verify,
    /// A document's validation, from either source.
    Validate,
    /// The export's revision against the highest verified since start: a failure is an older
    /// export refused (rollback protection).
    Revision,
    /// The fallback config in force against `max_fallback_age_ms`: a failure is counted with
    /// each "stale" log line, once per [`crate::freshness::STALE_LOG_EVERY_MS`].
    Age,
}

impl Stage {
    /// A stable lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ControlPlane => "control_plane",
            Stage::Companion => "companion",
            Stage::Storage => "storage",
            Stage::Verify => "verify",
            Stage::Validate => "validate",
            Stage::Revision => "revision",
            Stage::Age => "age",
        }
    }
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Routine detail.
    Debug,
    /// Something an operator may want to know (a new config, a mode change).
    Info,
    /// Something is wrong but the filter copes (a failed poll, a retried import).
    Warn,
    /// Something is wrong and needs a person (no config at all).
    Error,
}

/// What the host glue must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Dispatch this call; report its answer with [`FetchMachine::on_response`].
    Dispatch(HttpRequest),
    /// Make this document the one every worker enforces.
    Publish(PublishedConfig),
    /// Log this line. It never contains the companion token or a signed URL's query.
    Log {
        /// How loud.
        level: LogLevel,
        /// What happened and what to do.
        message: String,
    },
    /// Count one outcome of a stage.
    Count {
        /// Which stage.
        stage: Stage,
        /// Whether it succeeded.
        success: bool,
    },
}

/// What the machine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A control plane is configured and has not answered yet; nothing is published.
    Starting,
    /// The control plane answers: its config is what is published (or about to be).
    ControlPlane,
    /// The control plane is unusable (or none is configured): importing from storage.
    Fallback,
}

impl Mode {
    /// A stable lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Starting => "starting",
            Mode::ControlPlane => "control_plane",
            Mode::Fallback => "fallback",
        }
    }
}

/// A call waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    call: CallId,
    /// When the call counts as lost: its timeout plus [`LOST_CALL_GRACE_MS`].
    deadline_ms: u64,
}

/// The control plane poller's state.
#[derive(Debug)]
struct Poller {
    next_poll_ms: u64,
    in_flight: Option<InFlight>,
    /// Whether the call in flight carries `If-None-Match` (a 304 only means something then).
    conditional: bool,
    /// ETag of the last document accepted from the CP.
    etag: Option<String>,
    failures: u32,
    /// sha256 of the last rejected body, so the same broken document is described once.
    last_rejected: Option<Sha256Digest>,
}

/// The import's state: asking the companion, then fetching the object.
#[derive(Debug)]
enum ImportState {
    /// Nothing in flight; the next import starts at `due_ms` (`None`: not scheduled).
    Idle { due_ms: Option<u64> },
    /// Waiting for the companion's signed URL.
    AskingCompanion { call: InFlight },
    /// The companion answered: the object is fetched at the next tick.
    Signed(SignedObject),
    /// Waiting for the object.
    FetchingObject {
        call: InFlight,
        object: ObjectRef,
        /// The mirrors still to try, in order, should this fetch fail.
        rest: Vec<Location>,
    },
}

/// What the companion said the object is.
#[derive(Debug)]
struct ObjectRef {
    /// The `<version>` the export is stored under (part of its signed manifest).
    version: String,
    key: String,
    revision: u64,
    sha256: Sha256Digest,
    /// The export's Ed25519 signature (base64), as the companion handed it on.
    signature: Option<String>,
    /// The id of the key that made `signature`.
    key_id: Option<String>,
    /// The `exported-at` metadata.
    exported_at: Option<String>,
    /// The URL without its query, for logs.
    redacted_url: String,
}

/// The fetch state machine. See the module documentation.
pub struct FetchMachine {
    config: FilterConfig,
    mode: Mode,
    current: Option<PublishedConfig>,
    poller: Option<Poller>,
    import: ImportState,
    backoff: Backoff,
    rng: SplitMix64,
    next_call: CallId,
    /// The latest clock reading, to notice the clock going backwards.
    last_now_ms: Option<u64>,
    /// The highest storage revision verified since start: a lower one is never imported.
    highest_revision: u64,
    /// When the "stale config" line was last logged, while the config in force is stale.
    stale_logged_ms: Option<u64>,
    /// Which version the import asks the companion for: 0 is `version`, then
    /// `accept_versions` in order. Every import round starts from 0.
    version_choice: usize,
    /// Which companion the import asks: 0 is `companion`, then `backup_companions` in order.
    /// Every import round starts from 0.
    companion_choice: usize,
}

impl fmt::Debug for FetchMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchMachine")
            .field("mode", &self.mode)
            .field("current", &self.current)
            .field("poller", &self.poller)
            .field("import", &self.import)
            .finish_non_exhaustive()
    }
}

impl FetchMachine {
    /// A machine for `config`; `entropy_seed` feeds the retry jitter (use the host's randomness
    /// or clock, different in every process, so a fleet does not retry in lockstep).
    pub fn new(config: &FilterConfig, entropy_seed: u64) -> Self {
        let poller = config.control_plane.as_ref().map(|_| Poller {
            next_poll_ms: 0,
            in_flight: None,
            conditional: false,
            etag: None,
            failures: 0,
            last_rejected: None,
        });
        let (mode, due_ms) = if poller.is_some() {
            (Mode::Starting, None)
        } else {
            (Mode::Fallback, Some(0))
        };
        FetchMachine {
            config: config.clone(),
            mode,
            current: None,
            poller,
            import: ImportState::Idle { due_ms },
            backoff: Backoff::new(config.retry_initial_ms, config.retry_max_ms),
            rng: SplitMix64(entropy_seed),
            next_call: 1,
            last_now_ms: None,
            highest_revision: 0,
            stale_logged_ms: None,
            version_choice: 0,
            companion_choice: 0,
        }
    }

    /// A worker that becomes leader adopts what is already published so it does not start from
    /// "nothing": the mode follows the document's source, the CP is polled (unconditionally) at
    /// the next tick, and a fallback document is re-checked against storage at the next tick.
    /// Calls already in flight stay tracked.
    pub fn adopt(&mut self, current: Option<&PublishedConfig>) {
        self.current = current.cloned();
        if let Some(c) = current.filter(|c| c.source == Source::Fallback) {
            // Another worker verified it: what it refused to go back from holds here too.
            self.highest_revision = self.highest_revision.max(c.revision);
        }
        if let Some(poller) = &mut self.poller {
            poller.etag = None;
            poller.failures = 0;
            poller.last_rejected = None;
            poller.next_poll_ms = 0;
            self.mode = match current.map(|c| c.source) {
                None => Mode::Starting,
                Some(Source::ControlPlane) => Mode::ControlPlane,
                Some(Source::Fallback) => Mode::Fallback,
            };
        }
        if let ImportState::Idle { due_ms } = &mut self.import {
            *due_ms = (self.mode == Mode::Fallback).then_some(0);
        }
    }

    /// The host's periodic tick.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.observe_clock(now_ms);
        self.give_up_lost_calls(now_ms, &mut out);
        self.start_due_calls(now_ms, &mut out);
        self.watch_age(now_ms, &mut out);
        out
    }

    /// Past `max_fallback_age_ms`, says so once per [`crate::freshness::STALE_LOG_EVERY_MS`]
    /// and counts it; quiet again once a fresher config is in force.
    fn watch_age(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Some(current) = &self.current else {
            return;
        };
        let max = self.config.max_fallback_age_ms;
        let age = crate::freshness::assess(
            current.source,
            current.revision,
            current.exported_at_ms,
            now_ms,
            max,
        );
        if !age.stale {
            self.stale_logged_ms = None;
            return;
        }
        let due = self
            .stale_logged_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= crate::freshness::STALE_LOG_EVERY_MS);
        if !due {
            return;
        }
        self.stale_logged_ms = Some(now_ms);
        out.push(count(Stage::Age, false));
        let policy = match self.config.stale_policy {
            crate::freshness::StalePolicy::Serve => "still serving it (stale_policy serve)",
            crate::freshness::StalePolicy::FailClosed => {
                "requests are answered 503 (stale_policy fail_closed)"
            }
        };
        log(
            out,
            LogLevel::Warn,
            format!(
                "the fallback config in force (revision {}) is {} s old, past \
                 max_fallback_age_ms ({} s): {policy}; check the exporter and the control plane",
                current.revision,
                age.age_ms.unwrap_or(0) / 1000,
                max.unwrap_or(0) / 1000
            ),
        );
    }

    /// The answer to a call. Answers to unknown or abandoned calls are ignored. A reply Envoy
    /// made up because the peer did not answer ([`PROXY_NO_ANSWER_REPLIES`]) counts as the
    /// transport failure it is. Never asks for a dispatch: what the answer makes due starts at
    /// the next [`FetchMachine::on_tick`].
    pub fn on_response(
        &mut self,
        now_ms: u64,
        call: CallId,
        response: HttpResponse,
    ) -> Vec<Action> {
        run_to_end(self.on_response_paced(now_ms, call, response, &Pace::unbounded()))
    }

    /// [`FetchMachine::on_response`], yielding to `pace` (see [`crate::pace`]) while it hashes,
    /// parses and validates a document and frees what validating it built: the leader may be a
    /// worker that serves requests (nginx, Kong), and a 10,000-route document takes longer to
    /// validate than a slice.
    pub async fn on_response_paced(
        &mut self,
        now_ms: u64,
        call: CallId,
        response: HttpResponse,
        pace: &Pace<'_>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let response = peer_answer(response);
        self.observe_clock(now_ms);
        let poll = self
            .poller
            .as_ref()
            .and_then(|p| p.in_flight)
            .filter(|f| f.call == call);
        if poll.is_some() {
            self.on_cp_response(now_ms, response, &mut out, pace).await;
        } else {
            match &self.import {
                ImportState::AskingCompanion { call: f } if f.call == call => {
                    self.on_companion_response(now_ms, response, &mut out);
                }
                ImportState::FetchingObject { call: f, .. } if f.call == call => {
                    self.on_storage_response(now_ms, response, &mut out, pace)
                        .await;
                }
                _ => log(
                    &mut out,
                    LogLevel::Debug,
                    format!("ignoring the answer to call {call}: no such call in flight"),
                ),
            }
        }
        self.give_up_lost_calls(now_ms, &mut out);
        out
    }

    /// What the machine is doing.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The document published last (or adopted), if any.
    pub fn current(&self) -> Option<&PublishedConfig> {
        self.current.as_ref()
    }

    /// Consecutive control plane failures so far (0 without a control plane).
    pub fn consecutive_cp_failures(&self) -> u32 {
        self.poller.as_ref().map_or(0, |p| p.failures)
    }

    /// A wall clock that jumps back would otherwise postpone every schedule by the jump: shift
    /// every absolute time back with it.
    fn observe_clock(&mut self, now_ms: u64) {
        if let Some(last) = self.last_now_ms {
            if now_ms < last {
                let back = last - now_ms;
                let shift = |t: &mut u64| *t = t.saturating_sub(back);
                if let Some(p) = &mut self.poller {
                    shift(&mut p.next_poll_ms);
                    if let Some(f) = &mut p.in_flight {
                        shift(&mut f.deadline_ms);
                    }
                }
                match &mut self.import {
                    ImportState::Idle { due_ms } => {
                        if let Some(t) = due_ms {
                            shift(t);
                        }
                    }
                    ImportState::AskingCompanion { call }
                    | ImportState::FetchingObject { call, .. } => shift(&mut call.deadline_ms),
                    ImportState::Signed(_) => {}
                }
            }
        }
        self.last_now_ms = Some(now_ms);
    }

    /// Gives up on calls past their deadline.
    fn give_up_lost_calls(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let lost_poll = self
            .poller
            .as_ref()
            .and_then(|p| p.in_flight)
            .filter(|f| now_ms >= f.deadline_ms);
        if lost_poll.is_some() {
            // No body: nothing to pace.
            run_to_end(self.on_cp_response(now_ms, lost_call_response(), out, &Pace::unbounded()));
        }
        match &self.import {
            ImportState::AskingCompanion { call } if now_ms >= call.deadline_ms => {
                self.on_companion_response(now_ms, lost_call_response(), out);
            }
            ImportState::FetchingObject { call, .. } if now_ms >= call.deadline_ms => {
                run_to_end(self.on_storage_response(
                    now_ms,
                    lost_call_response(),
                    out,
                    &Pace::unbounded(),
                ));
            }
            _ => {}
        }
    }

    /// Starts the calls that are due: only ever from a tick.
    fn start_due_calls(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let poll_due = self
            .poller
            .as_ref()
            .is_some_and(|p| p.in_flight.is_none() && now_ms >= p.next_poll_ms);
        if poll_due {
            self.poll_cp(now_ms, out);
        }
        let import_due =
            matches!(self.import, ImportState::Idle { due_ms: Some(t) } if now_ms >= t);
        if import_due && self.mode != Mode::ControlPlane {
            self.ask_companion(now_ms, out);
        }
        if matches!(self.import, ImportState::Signed(_)) {
            let state = std::mem::replace(&mut self.import, ImportState::Idle { due_ms: None });
            if let ImportState::Signed(signed) = state {
                self.fetch_object(now_ms, signed, out);
            }
        }
    }

    fn new_call(&mut self, now_ms: u64, timeout_ms: u64) -> InFlight {
        let call = self.next_call;
        self.next_call = self.next_call.wrapping_add(1);
        InFlight {
            call,
            deadline_ms: now_ms
                .saturating_add(timeout_ms)
                .saturating_add(LOST_CALL_GRACE_MS),
        }
    }

    // ---- control plane ----

    fn poll_cp(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Some(cp) = self.config.control_plane.clone() else {
            return;
        };
        let flight = self.new_call(now_ms, cp.timeout_ms);
        let serving_cp = self.mode == Mode::ControlPlane;
        let Some(poller) = &mut self.poller else {
            return;
        };
        let mut headers = vec![("accept".to_owned(), "application/json".to_owned())];
        if let Some(token) = &cp.token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        // Off the CP's document, a 304 would not say which document to serve: ask for it whole.
        let etag = poller.etag.as_ref().filter(|_| serving_cp);
        if let Some(etag) = etag {
            headers.push(("if-none-match".to_owned(), etag.clone()));
        }
        poller.conditional = etag.is_some();
        poller.in_flight = Some(flight);
        poller.next_poll_ms = now_ms.saturating_add(self.config.poll_interval_ms);
        out.push(Action::Dispatch(HttpRequest {
            call: flight.call,
            party: Party::ControlPlane,
            upstream: cp.upstream,
            method: "GET".to_owned(),
            path: cp.path,
            authority: cp.authority,
            headers,
            timeout_ms: cp.timeout_ms,
            tls: false,
        }));
    }

    async fn on_cp_response(
        &mut self,
        now_ms: u64,
        response: HttpResponse,
        out: &mut Vec<Action>,
        pace: &Pace<'_>,
    ) {
        let Some(poller) = &mut self.poller else {
            return;
        };
        poller.in_flight = None;
        let conditional = poller.conditional;
        let upstream = self.cp_upstream();
        match response.status {
            Some(200) => {
                out.push(count(Stage::ControlPlane, true));
                self.on_cp_document(now_ms, &response, out, pace).await;
            }
            Some(304) if conditional && self.mode == Mode::ControlPlane => {
                out.push(count(Stage::ControlPlane, true));
                log(
                    out,
                    LogLevel::Debug,
                    format!("control plane {upstream}: config unchanged (304)"),
                );
                self.cp_succeeded();
            }
            Some(304) => {
                out.push(count(Stage::ControlPlane, false));
                self.cp_failed(
                    now_ms,
                    "answered 304 Not Modified to a request without If-None-Match".to_owned(),
                    out,
                );
            }
            status => {
                out.push(count(Stage::ControlPlane, false));
                let why = self.cp_status_problem(status, &response);
                self.cp_failed(now_ms, why, out);
            }
        }
    }

    fn cp_upstream(&self) -> String {
        self.config
            .control_plane
            .as_ref()
            .map_or_else(String::new, |cp| cp.upstream.clone())
    }

    fn cp_status_problem(&self, status: Option<u16>, response: &HttpResponse) -> String {
        let Some(cp) = &self.config.control_plane else {
            return String::new();
        };
        let detail = peer_message(&response.body);
        match status {
            None => format!(
                "no answer (connection failed or no response within {} ms)",
                cp.timeout_ms
            ),
            Some(s @ (401 | 403)) => format!(
                "HTTP {s}{detail}: the control plane refused the request; check its access rules"
            ),
            Some(404) => format!(
                "HTTP 404{detail}: no config endpoint at {}; check control_plane.path",
                cp.path
            ),
            Some(s) => format!("HTTP {s}{detail}"),
        }
    }

    async fn on_cp_document(
        &mut self,
        now_ms: u64,
        response: &HttpResponse,
        out: &mut Vec<Action>,
        pace: &Pace<'_>,
    ) {
        let upstream = self.cp_upstream();
        let body_sha = Sha256Digest::of_paced(&response.body, pace).await;
        let already_described = self
            .poller
            .as_ref()
            .is_some_and(|p| p.last_rejected == Some(body_sha));
        let checked =
            match decode_cp_body(&response.body, response.header("content-type"), pace).await {
                Ok(value) => match ConfigDocument::from_json_paced(&value, pace).await {
                    Ok(loaded) => Ok((value, loaded)),
                    Err(errors) => {
                        json::drop_paced(value, pace).await;
                        Err(invalid_document(&errors))
                    }
                },
                Err(why) => Err(why),
            };
        let (value, loaded) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                out.push(count(Stage::Validate, false));
                if let Some(p) = &mut self.poller {
                    p.last_rejected = Some(body_sha);
                }
                let why = if already_described {
                    format!(
                        "still serves the same unusable config (body sha256 {body_sha}), \
                         described above"
                    )
                } else {
                    format!("served an unusable config: {why}")
                };
                self.cp_failed(now_ms, why, out);
                return;
            }
        };
        out.push(count(Stage::Validate, true));
        let document = canonical_json_paced(&value, pace).await;
        let sha256 = Sha256Digest::of_paced(&document, pace).await;
        json::drop_paced(value, pace).await;
        let published = PublishedConfig {
            source: Source::ControlPlane,
            revision: 0,
            sha256,
            exported_at_ms: None,
            document: document.into(),
        };
        if let Some(poller) = &mut self.poller {
            poller.last_rejected = None;
            poller.etag = response
                .header("etag")
                .filter(|e| usable_etag(e))
                .map(str::to_owned);
        }
        let was = self.mode;
        let sha = published.sha256;
        let published = self.publish(published, &loaded.warnings, out) == Publication::New;
        loaded.document.dismantle(pace).await;
        let message = match (published, was) {
            (true, Mode::Fallback) => Some(format!(
                "control plane {upstream} is back: serving its config (sha256 {sha}) instead of \
                 the fallback config"
            )),
            (true, _) => Some(format!(
                "serving the config from control plane {upstream} (sha256 {sha})"
            )),
            (false, Mode::Fallback) => Some(format!(
                "control plane {upstream} is back with the config already served (sha256 {sha}): \
                 leaving the fallback mode"
            )),
            (false, _) => None,
        };
        if let Some(message) = message {
            log(out, LogLevel::Info, message);
        }
        self.cp_succeeded();
    }

    fn cp_succeeded(&mut self) {
        if let Some(p) = &mut self.poller {
            p.failures = 0;
        }
        if self.mode != Mode::ControlPlane {
            self.mode = Mode::ControlPlane;
            self.backoff.reset();
        }
        match &mut self.import {
            ImportState::Idle { due_ms } => *due_ms = None,
            ImportState::Signed(_) => self.import = ImportState::Idle { due_ms: None },
            ImportState::AskingCompanion { .. } | ImportState::FetchingObject { .. } => {}
        }
    }

    fn cp_failed(&mut self, now_ms: u64, why: String, out: &mut Vec<Action>) {
        let threshold = self.config.cp_failure_threshold.max(1);
        let upstream = self.cp_upstream();
        let Some(poller) = &mut self.poller else {
            return;
        };
        poller.failures = poller.failures.saturating_add(1);
        let failures = poller.failures;
        if self.mode == Mode::Fallback {
            log(
                out,
                LogLevel::Debug,
                format!(
                    "control plane {upstream} still unusable ({failures} failures in a row): {why}"
                ),
            );
        } else if self.current.is_none() {
            log(
                out,
                LogLevel::Warn,
                format!(
                    "control plane {upstream}: {why}; no config yet: importing the fallback \
                     config from storage"
                ),
            );
            self.fall_back(now_ms);
        } else if failures >= threshold {
            log(
                out,
                LogLevel::Warn,
                format!(
                    "control plane {upstream} unreachable ({failures} failures in a row, last: \
                     {why}): switching to the fallback config from storage"
                ),
            );
            self.fall_back(now_ms);
        } else {
            log(
                out,
                LogLevel::Warn,
                format!(
                    "control plane {upstream}: {why} (failure {failures} of {threshold} before \
                     falling back to storage; still serving the current config)"
                ),
            );
        }
    }

    fn fall_back(&mut self, now_ms: u64) {
        self.mode = Mode::Fallback;
        if let Some(p) = &mut self.poller {
            p.etag = None;
        }
        if let ImportState::Idle { due_ms } = &mut self.import {
            *due_ms = Some(now_ms);
        }
    }

    // ---- import ----

    /// The version the import asks for now.
    fn asked_version(&self) -> &String {
        nth_choice(
            &self.config.version,
            &self.config.accept_versions,
            self.version_choice,
        )
    }

    /// The companion the import asks now.
    fn asked_companion(&self) -> &CompanionConfig {
        nth_choice(
            &self.config.companion,
            &self.config.backup_companions,
            self.companion_choice,
        )
    }

    fn ask_companion(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let companion = self.asked_companion().clone();
        let version = self.asked_version().to_owned();
        let flight = self.new_call(now_ms, companion.timeout_ms);
        let separator = if companion.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let path = format!(
            "{}{separator}version={}",
            companion.path,
            percent_encode(&version)
        );
        log(
            out,
            LogLevel::Debug,
            format!(
                "asking companion {} for a signed URL of the config for version {version}",
                companion.upstream
            ),
        );
        self.import = ImportState::AskingCompanion { call: flight };
        out.push(Action::Dispatch(HttpRequest {
            call: flight.call,
            party: Party::Companion,
            upstream: companion.upstream,
            method: "GET".to_owned(),
            path,
            authority: companion.authority,
            headers: vec![
                (
                    "authorization".to_owned(),
                    format!("Bearer {}", companion.token),
                ),
                ("accept".to_owned(), "application/json".to_owned()),
            ],
            timeout_ms: companion.timeout_ms,
            tls: false,
        }));
    }

    /// An import answer that arrives after the CP came back is of no use.
    fn import_abandoned(&mut self, out: &mut Vec<Action>) -> bool {
        if self.mode != Mode::ControlPlane {
            return false;
        }
        self.import = ImportState::Idle { due_ms: None };
        self.restart_version_choice();
        log(
            out,
            LogLevel::Debug,
            "dropping the import's answer: the control plane is back".to_owned(),
        );
        true
    }

    fn on_companion_response(
        &mut self,
        now_ms: u64,
        response: HttpResponse,
        out: &mut Vec<Action>,
    ) {
        if self.import_abandoned(out) {
            return;
        }
        let asked = self.asked_version().to_owned();
        if response.status == Some(404) && self.version_choice < self.config.accept_versions.len() {
            // Version skew: no export for this version yet; the next accepted one, at once.
            self.version_choice += 1;
            log(
                out,
                LogLevel::Info,
                format!(
                    "no export for version {asked} (companion: HTTP 404); trying version {} \
                     from accept_versions",
                    self.asked_version()
                ),
            );
            self.import = ImportState::Idle {
                due_ms: Some(now_ms),
            };
            return;
        }
        let companion = self.asked_companion();
        let detail = peer_message(&response.body);
        let why = match response.status {
            Some(200) => match read_signed_config(&response.body) {
                Ok(signed) if signed.object.version != asked => format!(
                    "companion {} answered with an export of version {} when asked for {asked}",
                    companion.upstream,
                    quote(&signed.object.version)
                ),
                Ok(signed) => {
                    out.push(count(Stage::Companion, true));
                    self.import = ImportState::Signed(signed);
                    return;
                }
                Err(why) => format!(
                    "companion {} answered 200 but {why}; check that the companion and the filter \
                     are the same release",
                    companion.upstream
                ),
            },
            None => format!(
                "companion {} unreachable (connection failed or no answer within {} ms); check \
                 that it runs with the signer role",
                companion.upstream, companion.timeout_ms
            ),
            Some(s @ (401 | 403)) => format!(
                "companion {} rejected the token (HTTP {s}{detail}); set companion.token to the \
                 signer's token",
                companion.upstream
            ),
            Some(404) if self.config.accept_versions.is_empty() => format!(
                "nothing exported for version {asked} (companion: HTTP 404{detail}); check that \
                 an exporter runs with the same version"
            ),
            Some(404) => format!(
                "nothing exported for version {} nor any of accept_versions ({}) (companion: \
                 HTTP 404{detail}); check that an exporter runs with one of them",
                self.config.version,
                self.config.accept_versions.join(", ")
            ),
            Some(503) => format!(
                "companion {} cannot reach storage (HTTP 503{detail})",
                companion.upstream
            ),
            Some(s) => format!("companion {} answered HTTP {s}{detail}", companion.upstream),
        };
        out.push(count(Stage::Companion, false));
        if self.companion_choice < self.config.backup_companions.len() {
            self.companion_choice += 1;
            self.version_choice = 0;
            let next = self.asked_companion().upstream.clone();
            log(
                out,
                LogLevel::Warn,
                format!("{why}; trying the next companion, {next}"),
            );
            self.import = ImportState::Idle {
                due_ms: Some(now_ms),
            };
            return;
        }
        self.import_failed(now_ms, why, out);
    }

    /// The import round ended (imported or failed): the next one asks the first companion for
    /// `version` first.
    fn restart_version_choice(&mut self) {
        self.version_choice = 0;
        self.companion_choice = 0;
    }

    fn fetch_object(&mut self, now_ms: u64, signed: SignedObject, out: &mut Vec<Action>) {
        let SignedObject {
            mut object,
            mut locations,
        } = signed;
        if locations.is_empty() {
            return;
        }
        let Location {
            authority,
            path,
            tls,
            redacted_url,
        } = locations.remove(0);
        object.redacted_url = redacted_url;
        let storage = self.config.storage.clone();
        let flight = self.new_call(now_ms, storage.timeout_ms);
        log(
            out,
            LogLevel::Debug,
            format!(
                "fetching {} (revision {}) from storage {}",
                object.redacted_url, object.revision, storage.upstream
            ),
        );
        self.import = ImportState::FetchingObject {
            call: flight,
            object,
            rest: locations,
        };
        out.push(Action::Dispatch(HttpRequest {
            call: flight.call,
            party: Party::Storage,
            upstream: storage.upstream,
            method: "GET".to_owned(),
            path,
            authority,
            headers: Vec::new(),
            timeout_ms: storage.timeout_ms,
            tls,
        }));
    }

    async fn on_storage_response(
        &mut self,
        now_ms: u64,
        response: HttpResponse,
        out: &mut Vec<Action>,
        pace: &Pace<'_>,
    ) {
        if self.import_abandoned(out) {
            return;
        }
        let state = std::mem::replace(&mut self.import, ImportState::Idle { due_ms: None });
        let ImportState::FetchingObject { object, rest, .. } = state else {
            return;
        };
        let storage = &self.config.storage;
        let detail = peer_message(&response.body);
        let url = &object.redacted_url;
        let why = match response.status {
            Some(200) if response.body.len() > MAX_DOCUMENT_BYTES => {
                // Not "unreachable": the store answered, with more than any exporter writes.
                out.push(count(Stage::Storage, true));
                out.push(count(Stage::Validate, false));
                let why = format!(
                    "object {} ({url}, revision {}) is too large: {} bytes, more than the {} \
                     bytes (MAX_DOCUMENT_BYTES) the filter imports; not using it (Fallback's \
                     exporter refuses such documents: another tool wrote it)",
                    object.key,
                    object.revision,
                    response.body.len(),
                    MAX_DOCUMENT_BYTES
                );
                self.import_failed(now_ms, why, out);
                return;
            }
            Some(200) => {
                out.push(count(Stage::Storage, true));
                self.on_object(now_ms, object, rest, response.body, out, pace)
                    .await;
                return;
            }
            None => format!(
                "storage {} unreachable fetching {url} (connection failed, no answer within {} \
                 ms, or a body larger than the proxy hands the filter: Envoy's runtime \
                 http.async_response_buffer_limit, set to {} bytes in examples/envoy/bootstrap.yaml)",
                storage.upstream,
                storage.timeout_ms,
                PROXY_RESPONSE_BUFFER_BYTES
            ),
            Some(403) => format!(
                "storage refused the signed URL for {url} (HTTP 403{detail}): it may have expired \
                 (check clocks) or the signer's credentials cannot read it"
            ),
            Some(404) => format!(
                "storage has no object {} (HTTP 404{detail}) although the companion signed it",
                object.key
            ),
            Some(s) => format!("storage answered HTTP {s}{detail} for {url}"),
        };
        out.push(count(Stage::Storage, false));
        self.try_next_location(now_ms, object, rest, why, out);
    }

    /// After a fetch that failed at one store: the next mirror at the next tick, or the
    /// import's failure when none is left.
    fn try_next_location(
        &mut self,
        now_ms: u64,
        object: ObjectRef,
        rest: Vec<Location>,
        why: String,
        out: &mut Vec<Action>,
    ) {
        let Some(next) = rest.first() else {
            self.import_failed(now_ms, why, out);
            return;
        };
        log(
            out,
            LogLevel::Warn,
            format!(
                "{why}; trying the next store holding it: {}",
                next.redacted_url
            ),
        );
        self.import = ImportState::Signed(SignedObject {
            object,
            locations: rest,
        });
    }

    async fn on_object(
        &mut self,
        now_ms: u64,
        object: ObjectRef,
        rest: Vec<Location>,
        body: Vec<u8>,
        out: &mut Vec<Action>,
        pace: &Pace<'_>,
    ) {
        let actual = Sha256Digest::of_paced(&body, pace).await;
        if actual != object.sha256 {
            out.push(count(Stage::Verify, false));
            let why = format!(
                "object {} ({}) has sha256 {actual} but its export says {}: not using it (a \
                 corrupted or concurrently replaced object)",
                object.key, object.redacted_url, object.sha256
            );
            self.try_next_location(now_ms, object, rest, why, out);
            return;
        }
        let object = &object;
        let signed_by = if self.config.public_keys.is_empty() {
            None
        } else {
            match check_signature(&self.config.public_keys, object) {
                Ok(key_id) => Some(key_id),
                Err(why) => {
                    out.push(count(Stage::Verify, false));
                    self.import_failed(now_ms, why, out);
                    return;
                }
            }
        };
        out.push(count(Stage::Verify, true));
        if object.revision < self.highest_revision {
            out.push(count(Stage::Revision, false));
            let why = format!(
                "object {} holds revision {}, lower than revision {} already verified since this \
                 filter started: refusing to go back (an old export restored or replayed; \
                 export the current config again to move storage forward)",
                object.key, object.revision, self.highest_revision
            );
            self.import_failed(now_ms, why, out);
            return;
        }
        out.push(count(Stage::Revision, true));
        // The config in force, still in storage (every refresh finds it so): validated when it
        // was first imported.
        let in_force = self.current.as_ref().is_some_and(|c| {
            c.source == Source::Fallback && c.revision == object.revision && c.sha256 == actual
        });
        let loaded = if in_force {
            None
        } else {
            match ConfigDocument::from_slice_paced(&body, pace).await {
                Ok(loaded) => Some(loaded),
                Err(errors) => {
                    out.push(count(Stage::Validate, false));
                    let why = format!(
                        "object {} (revision {}) is not a usable config: {}",
                        object.key,
                        object.revision,
                        invalid_document(&errors)
                    );
                    self.import_failed(now_ms, why, out);
                    return;
                }
            }
        };
        out.push(count(Stage::Validate, true));
        self.highest_revision = object.revision;
        let skew = if self.version_choice > 0 {
            format!(
                " in place of version {} (accept_versions)",
                self.config.version
            )
        } else {
            String::new()
        };
        self.restart_version_choice();
        self.backoff.reset();
        if self.mode == Mode::Starting {
            self.mode = Mode::Fallback;
        }
        let refresh = self.config.fallback_refresh_interval_ms;
        self.import = ImportState::Idle {
            due_ms: Some(now_ms.saturating_add(refresh)),
        };
        let published = PublishedConfig {
            source: Source::Fallback,
            revision: object.revision,
            sha256: actual,
            exported_at_ms: object
                .exported_at
                .as_deref()
                .and_then(crate::freshness::parse_rfc3339_ms),
            document: body.into(),
        };
        let warnings = loaded.as_ref().map_or(&[][..], |l| &l.warnings[..]);
        let publication = self.publish(published, warnings, out);
        if let Some(loaded) = loaded {
            loaded.document.dismantle(pace).await;
        }
        match publication {
            Publication::Renewed => {
                let exported_at = object.exported_at.as_deref().unwrap_or_default();
                log(
                    out,
                    LogLevel::Info,
                    format!(
                        "storage still holds revision {} (sha256 {actual}), exported again at \
                         {exported_at}: its exporter still saw it current; the config's age \
                         counts from then",
                        object.revision
                    ),
                );
            }
            Publication::New => {
                let signed =
                    signed_by.map_or_else(String::new, |id| format!(", signed by key {id}"));
                log(
                    out,
                    LogLevel::Info,
                    format!(
                        "imported revision {} (sha256 {actual}, version {}{skew}{signed}) from \
                     storage: serving the fallback config; next check in {refresh} ms",
                        object.revision, object.version
                    ),
                );
            }
            Publication::Unchanged => {
                log(
                    out,
                    LogLevel::Debug,
                    format!(
                        "storage still holds revision {} (sha256 {actual}): nothing new",
                        object.revision
                    ),
                );
            }
        }
    }

    fn import_failed(&mut self, now_ms: u64, why: String, out: &mut Vec<Action>) {
        self.restart_version_choice();
        let delay = self.backoff.next_delay_ms(self.rng.next());
        self.import = ImportState::Idle {
            due_ms: Some(now_ms.saturating_add(delay)),
        };
        let serving = match &self.current {
            Some(c) => format!(
                "still serving the {} config (sha256 {})",
                source_phrase(c.source),
                c.sha256
            ),
            None => "no config yet: requests get 503 until one is imported".to_owned(),
        };
        let level = if self.current.is_some() {
            LogLevel::Warn
        } else {
            LogLevel::Error
        };
        log(
            out,
            level,
            format!(
                "fallback import failed: {why}; {serving}; retrying in {delay} ms (attempt {})",
                self.backoff.attempts()
            ),
        );
    }

    /// Publishes `candidate` unless the same document from the same source (and revision) is
    /// already published. The same export with a newer export time (its exporter confirmed it
    /// current later: `FALLBACK_EXPORT_REFRESH`) is published again, so that every worker's
    /// staleness budget counts from the new time.
    fn publish(
        &mut self,
        candidate: PublishedConfig,
        warnings: &[Problem],
        out: &mut Vec<Action>,
    ) -> Publication {
        if let Some(current) = &mut self.current {
            if current.source == candidate.source
                && current.revision == candidate.revision
                && current.sha256 == candidate.sha256
            {
                let renewed = candidate
                    .exported_at_ms
                    .is_some_and(|new| current.exported_at_ms.is_none_or(|old| new > old));
                if !renewed {
                    return Publication::Unchanged;
                }
                current.exported_at_ms = candidate.exported_at_ms;
                out.push(Action::Publish(candidate));
                return Publication::Renewed;
            }
        }
        if !warnings.is_empty() {
            let mut message = format!(
                "the {} config (sha256 {}) loaded with {} warning(s):",
                source_phrase(candidate.source),
                candidate.sha256,
                warnings.len()
            );
            for warning in warnings {
                message.push_str("\n  ");
                message.push_str(&warning.to_string());
            }
            log(out, LogLevel::Warn, message);
        }
        self.current = Some(candidate.clone());
        out.push(Action::Publish(candidate));
        Publication::New
    }
}

/// What [`FetchMachine::publish`] did with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publication {
    /// A new config, published.
    New,
    /// The config in force, with a newer export time: published again.
    Renewed,
    /// The config in force: nothing published.
    Unchanged,
}

/// Choice `n` of `first` then `rest` (0 is `first`; past the end, `first` again).
fn nth_choice<'a, T>(first: &'a T, rest: &'a [T], n: usize) -> &'a T {
    n.checked_sub(1).and_then(|i| rest.get(i)).unwrap_or(first)
}

fn source_phrase(source: Source) -> &'static str {
    match source {
        Source::ControlPlane => "control plane",
        Source::Fallback => "fallback",
    }
}

fn log(out: &mut Vec<Action>, level: LogLevel, message: String) {
    out.push(Action::Log { level, message });
}

fn count(stage: Stage, success: bool) -> Action {
    Action::Count { stage, success }
}

fn lost_call_response() -> HttpResponse {
    HttpResponse::transport_failure()
}

/// The answers Envoy makes up itself when a call got no answer from its peer (its router's
/// local replies), as status and the start of the body: the connection failed or was reset,
/// the call's timeout passed, the cluster has no endpoint. Envoy hands them to the filter as
/// ordinary responses, so without this a dead companion would read as "the companion cannot
/// reach storage (HTTP 503)" and a slow one as "answered HTTP 504". An Envoy between the filter
/// and its peer answers the same for the same reasons.
pub const PROXY_NO_ANSWER_REPLIES: [(u16, &str); 3] = [
    (
        503,
        "upstream connect error or disconnect/reset before headers",
    ),
    (503, "no healthy upstream"),
    (504, "upstream request timeout"),
];

/// `response`, or a transport failure when it is one of [`PROXY_NO_ANSWER_REPLIES`].
fn peer_answer(response: HttpResponse) -> HttpResponse {
    let made_up = PROXY_NO_ANSWER_REPLIES.iter().any(|(status, start)| {
        response.status == Some(*status) && response.body.starts_with(start.as_bytes())
    });
    if made_up {
        HttpResponse::transport_failure()
    } else {
        response
    }
}

fn invalid_document(errors: &ValidationErrors) -> String {
    format!("{errors}\nkeeping the last good config")
}

/// An ETag worth sending back: printable ASCII of a sane length (it is network input).
fn usable_etag(etag: &str) -> bool {
    !etag.is_empty() && etag.len() <= 256 && etag.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The declarative JSON in a CP's `200` body: the document itself, or Kong Admin API's
/// `{"config": "<JSON text>"}`.
async fn decode_cp_body(
    body: &[u8],
    content_type: Option<&str>,
    pace: &Pace<'_>,
) -> Result<Value, String> {
    const YAML: &str = "the filter reads JSON only (YAML is not supported): point \
                        control_plane.path at an endpoint that serves the declarative config as JSON";
    if content_type.is_some_and(|t| t.to_ascii_lowercase().contains("yaml")) {
        return Err(format!("the answer is YAML ({YAML})"));
    }
    if let Some(problem) = crate::document::size_problem(body.len()) {
        return Err(format!("the answer is too large: {}", problem.message));
    }
    let value = match json::from_slice_paced(body, pace).await {
        Ok(value) => value,
        Err(json::StrictError::Syntax(_)) if looks_like_yaml(body) => {
            return Err(format!("the answer looks like YAML; {YAML}"))
        }
        Err(json::StrictError::Syntax(err)) => {
            return Err(format!("the answer is {err} ({} bytes)", body.len()))
        }
        Err(err) => return Err(format!("the answer is unusable: {err}")),
    };
    let wrapped = value
        .as_object()
        .filter(|map| !map.contains_key("_format_version"))
        .and_then(|map| map.get("config"));
    match wrapped {
        None => Ok(value),
        Some(Value::Object(_)) => Ok(wrapped.cloned().unwrap_or(Value::Null)),
        Some(Value::String(text)) => match json::from_str(text) {
            Ok(inner) => Ok(inner),
            Err(json::StrictError::Syntax(_)) if looks_like_yaml(text.as_bytes()) => Err(format!(
                "its Kong Admin API answer {{\"config\": ...}} holds YAML; {YAML}"
            )),
            Err(json::StrictError::Syntax(err)) => Err(format!(
                "its Kong Admin API answer {{\"config\": ...}} does not hold JSON: {err}"
            )),
            Err(err) => Err(format!(
                "its Kong Admin API answer {{\"config\": ...}} is unusable: {err}"
            )),
        },
        Some(_) => {
            Err("its {\"config\": ...} answer holds neither a JSON object nor JSON text".to_owned())
        }
    }
}

/// YAML documents start with `---`, a `%` directive, a comment, or a `key:` line; JSON with
/// `{` or `[`.
fn looks_like_yaml(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with('{') || text.starts_with('[') {
        return false;
    }
    let first_line = text.lines().next().unwrap_or("");
    text.starts_with("---")
        || text.starts_with('%')
        || text.starts_with('#')
        || first_line.contains(": ")
        || first_line.ends_with(':')
}

/// One store's signed URL, split for the storage call.
struct Location {
    authority: String,
    /// Holds the signature: never shown.
    path: String,
    /// `https://`.
    tls: bool,
    /// The URL without its query, for logs.
    redacted_url: String,
}

/// Shows the redacted URL, never the signed path.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.redacted_url)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What the companion handed out: the object and where to fetch it, in order.
#[derive(Debug)]
struct SignedObject {
    object: ObjectRef,
    /// Never empty when built by [`read_signed_config`].
    locations: Vec<Location>,
}

/// `url` split into a [`Location`].
fn locate(url: &str) -> Result<Location, String> {
    let redacted_url = redact_signed_url(url).to_owned();
    let (authority, path, tls) = signed_url::split(url).ok_or_else(|| {
        format!(
            "its URL {} is not an http(s)://host/path URL",
            quote(&redacted_url)
        )
    })?;
    Ok(Location {
        authority: authority.to_owned(),
        path,
        tls,
        redacted_url,
    })
}

/// A companion `200` body, checked and split into the storage call's `:authority` and `:path`.
fn read_signed_config(body: &[u8]) -> Result<SignedObject, String> {
    let signed: SignedConfig = serde_json::from_slice(body).map_err(|err| {
        format!(
            "its body is not a signed config ({})",
            quote(&err.to_string())
        )
    })?;
    if !signed.method.eq_ignore_ascii_case("GET") {
        return Err(format!(
            "the signed URL is for {}, not GET",
            quote(&signed.method)
        ));
    }
    let sha256 = Sha256Digest::from_hex(&signed.sha256)
        .ok_or_else(|| format!("its sha256 {} is not 64 hex digits", quote(&signed.sha256)))?;
    let mut locations = Vec::new();
    if signed.urls.is_empty() {
        locations.push(locate(&signed.url)?);
    }
    for entry in &signed.urls {
        if !entry.method.eq_ignore_ascii_case("GET") {
            return Err(format!(
                "a signed URL in urls is for {}, not GET",
                quote(&entry.method)
            ));
        }
        locations.push(locate(&entry.url)?);
    }
    let redacted_url = locations[0].redacted_url.clone();
    Ok(SignedObject {
        locations,
        object: ObjectRef {
            version: signed.version,
            key: signed.key,
            revision: signed.revision,
            sha256,
            signature: signed.signature,
            key_id: signed.key_id,
            exported_at: signed.exported_at,
            redacted_url,
        },
    })
}

/// The id of the configured key whose signature over `object`'s manifest verifies, or why
/// none does. The body itself is covered by the manifest's sha256, checked before this.
fn check_signature(keys: &[PublicKey], object: &ObjectRef) -> Result<String, String> {
    let what = format!("object {} (revision {})", object.key, object.revision);
    let Some(text) = &object.signature else {
        return Err(format!(
            "{what} carries no signature but public_keys is configured: not using it (set \
             FALLBACK_SIGNING_KEY_FILE on the exporter, or remove public_keys)"
        ));
    };
    let signature = Signature::parse(text)
        .map_err(|why| format!("{what} has an unusable signature ({why}): not using it"))?;
    let Some(key_id) = &object.key_id else {
        return Err(format!(
            "{what} carries a signature without a key-id (an exporter older than signed \
             manifests wrote it): not using it; run the exporter of this release, which signs \
             the stored export again"
        ));
    };
    if !keys.iter().any(|k| k.key_id() == *key_id) {
        let ids: Vec<String> = keys.iter().map(PublicKey::key_id).collect();
        return Err(format!(
            "{what} carries a signature by key id {}, which is none of the configured \
             public_keys ({}): \
             not using it (during a key rotation, add the new key to public_keys before the \
             exporter switches to it)",
            quote(key_id),
            ids.join(", ")
        ));
    }
    let manifest = ExportManifest {
        version: &object.version,
        revision: object.revision,
        sha256: object.sha256,
        exported_at: object.exported_at.as_deref().unwrap_or(""),
        key_id,
    };
    verify_manifest(keys, &manifest, &signature)
        .map(PublicKey::key_id)
        .map_err(|_| {
            format!(
                "{what}'s signature does not verify with the configured public key {}: not \
                 using it (its revision, version, sha256 or export time differ from what was \
                 signed: altered or replayed after signing)",
                quote(key_id)
            )
        })
}

/// `": <message>"` from a peer's `{"message": ...}` error body, or nothing.
fn peer_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.message.trim().is_empty() => format!(": {}", quote(e.message.trim())),
        _ => String::new(),
    }
}

/// Network text made safe for one log line: control characters replaced, length bounded.
fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(QUOTE_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(QUOTE_MAX).is_some() {
        out.push('…');
    }
    out
}

/// SplitMix64: tiny, fast, and plenty for spreading retry times.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
