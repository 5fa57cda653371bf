//! The whole filter's request path for `make footprint`, natively: the filter crate and the
//! proxy-wasm SDK linked into this program, which plays Envoy's part of the ABI (0.2.1) in
//! plain Rust. `core/examples/footprint.rs` counts the decision alone (route + plugins); this
//! counts everything the proxy's calls into the module run: the SDK's dispatch, the request
//! context, reading the header map, the hand-over, the plugins' header changes, the response
//! headers and the frees; and how many heap allocations and host calls (by name) one request
//! makes.
//!
//! `footprint ROUTES PLUGINS`: the config `make bench-proxy` loads, fetched from a "control
//! plane" through the filter's own leader election and slicing, then `bench-proxy`'s request
//! (its headers as Envoy hands them over) a few times to warm up, and once more with
//! callgrind's instrumentation on. Work inside this program's host functions is not counted
//! (callgrind's collection is switched off around them): what V8 and Envoy do for a host call
//! is not the filter's footprint, and `make bench-proxy`'s PF measures it in the real Envoy.
//!
//! This is not a proxy-wasm host to test behaviour with: it answers only what the benchmark's
//! path asks, and the filter's tests run in the real Envoy (`wasm-tests`).

#[path = "../../core/benches/common/mod.rs"]
mod common;
#[path = "../../core/benches/common/footprint.rs"]
#[allow(dead_code)]
mod footprint;

use footprint::{client_request, START_INSTRUMENTATION, STOP_INSTRUMENTATION, TOGGLE_COLLECT};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

extern "C" {
    /// The module's entry point, from `proxy_wasm::main!`.
    fn _initialize();
    fn proxy_on_memory_allocate(size: usize) -> *mut u8;
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_http_call_response(
        context_id: u32,
        token: u32,
        headers: usize,
        body_size: usize,
        trailers: usize,
    );
    fn proxy_on_request_headers(context_id: u32, headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_headers(context_id: u32, headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const CAS_MISMATCH: u32 = 8;
const ROOT: u32 = 1;

/// The system allocator, counting the module's allocations during the measured request.
struct Counting;

/// True while the measured request is served.
static MEASURING: AtomicBool = AtomicBool::new(false);
/// True inside a host function (the allocator call back into the module excepted).
static IN_HOST: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn count_allocation() {
    if MEASURING.load(Ordering::Relaxed) && !IN_HOST.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to `System` unchanged; counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count_allocation();
        System.realloc(ptr, layout, size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Switches what is counted (callgrind's events, allocations) between the module and the host.
fn switch(in_host: bool) {
    client_request(TOGGLE_COLLECT);
    IN_HOST.store(in_host, Ordering::Relaxed);
}

/// Envoy's side of the ABI, as far as the benchmark's path needs it.
#[derive(Default)]
struct Host {
    now_ns: u64,
    plugin_configuration: Vec<u8>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    properties: HashMap<String, Vec<u8>>,
    call_headers: Vec<(String, String)>,
    call_body: Vec<u8>,
    /// Dispatched calls not answered yet: token and upstream.
    calls: Vec<(u32, String)>,
    next_token: u32,
    next_metric: u32,
    local_response: Option<u32>,
    /// Host calls since the last reset, by name.
    counted: BTreeMap<&'static str, u32>,
    logs: Vec<String>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Runs one host call's work uncounted (callgrind's collection off, unless nested).
fn host<T>(name: &'static str, work: impl FnOnce(&mut Host) -> T) -> T {
    switch(true);
    let out = HOST.with(|h| {
        let mut h = h.borrow_mut();
        *h.counted.entry(name).or_default() += 1;
        work(&mut h)
    });
    switch(false);
    out
}

/// Hands `bytes` to the module as the ABI does, in memory the module allocates; only inside
/// [`host`] (collection off).
///
/// # Safety
/// `data` and `size` point at writable values (the module's own, as in the ABI).
unsafe fn give(bytes: &[u8], data: *mut *mut u8, size: *mut usize) -> u32 {
    // The module's allocator, counted: the module runs it for every value a host returns.
    switch(false);
    let at = proxy_on_memory_allocate(bytes.len());
    switch(true);
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
    *data = at;
    *size = bytes.len();
    OK
}

/// [`give`] for a value that was found, `NotFound` otherwise.
///
/// # Safety
/// As [`give`].
unsafe fn give_found(value: Option<&[u8]>, data: *mut *mut u8, size: *mut usize) -> u32 {
    match value {
        Some(bytes) => give(bytes, data, size),
        None => NOT_FOUND,
    }
}

/// # Safety
/// `at` points at `len` readable bytes.
unsafe fn text(at: *const u8, len: usize) -> String {
    String::from_utf8_lossy(std::slice::from_raw_parts(at, len)).into_owned()
}

fn map(h: &mut Host, kind: u32) -> Option<&mut Vec<(String, String)>> {
    match kind {
        0 => Some(&mut h.request),
        2 => Some(&mut h.response),
        6 => Some(&mut h.call_headers),
        _ => None,
    }
}

#[no_mangle]
extern "C" fn proxy_log(_level: u32, message: *const u8, size: usize) -> u32 {
    host("proxy_log", |h| h.logs.push(unsafe { text(message, size) }));
    OK
}

#[no_mangle]
extern "C" fn proxy_get_log_level(level: *mut u32) -> u32 {
    host("proxy_get_log_level", |_| unsafe { *level = 2 });
    OK
}

#[no_mangle]
extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32 {
    host("proxy_get_current_time_nanoseconds", |h| unsafe {
        *time = h.now_ns
    });
    OK
}

#[no_mangle]
extern "C" fn proxy_set_tick_period_milliseconds(_period: u32) -> u32 {
    host("proxy_set_tick_period_milliseconds", |_| OK)
}

#[no_mangle]
extern "C" fn proxy_set_effective_context(_context: u32) -> u32 {
    host("proxy_set_effective_context", |_| OK)
}

#[no_mangle]
extern "C" fn proxy_get_buffer_bytes(
    kind: u32,
    start: usize,
    max: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    host("proxy_get_buffer_bytes", |h| {
        let bytes = match kind {
            4 => &h.call_body,
            7 => &h.plugin_configuration,
            _ => return NOT_FOUND,
        };
        let end = start.saturating_add(max).min(bytes.len());
        unsafe { give(bytes.get(start..end).unwrap_or_default(), data, size) }
    })
}

#[no_mangle]
extern "C" fn proxy_get_header_map_pairs(kind: u32, data: *mut *mut u8, size: *mut usize) -> u32 {
    host("proxy_get_header_map_pairs", |h| match map(h, kind) {
        Some(map) => {
            let pairs: Vec<(&str, &str)> =
                map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            unsafe { give(&fallback_filter::serialize_map(&pairs), data, size) }
        }
        None => BAD_ARGUMENT,
    })
}

#[no_mangle]
extern "C" fn proxy_get_header_map_value(
    kind: u32,
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    host("proxy_get_header_map_value", |h| {
        let key = unsafe { text(key, key_size) };
        let value = map(h, kind).and_then(|map| {
            map.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v.clone())
        });
        unsafe { give_found(value.as_deref().map(str::as_bytes), data, size) }
    })
}

/// Envoy's `setCopy` (`replace`: every value of the header goes first) or `addCopy`.
fn write_header(
    kind: u32,
    key: (*const u8, usize),
    value: (*const u8, usize),
    replace: bool,
) -> u32 {
    let name = if replace {
        "proxy_replace_header_map_value"
    } else {
        "proxy_add_header_map_value"
    };
    host(name, |h| {
        let (key, value) = unsafe { (text(key.0, key.1), text(value.0, value.1)) };
        let Some(map) = map(h, kind) else {
            return BAD_ARGUMENT;
        };
        if replace {
            map.retain(|(n, _)| !n.eq_ignore_ascii_case(&key));
        }
        map.push((key.to_ascii_lowercase(), value));
        OK
    })
}

#[no_mangle]
extern "C" fn proxy_replace_header_map_value(
    kind: u32,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    write_header(kind, (key, key_size), (value, value_size), true)
}

#[no_mangle]
extern "C" fn proxy_add_header_map_value(
    kind: u32,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    write_header(kind, (key, key_size), (value, value_size), false)
}

#[no_mangle]
extern "C" fn proxy_remove_header_map_value(kind: u32, key: *const u8, key_size: usize) -> u32 {
    host("proxy_remove_header_map_value", |h| {
        let key = unsafe { text(key, key_size) };
        let Some(map) = map(h, kind) else {
            return BAD_ARGUMENT;
        };
        map.retain(|(n, _)| !n.eq_ignore_ascii_case(&key));
        OK
    })
}

/// A property path as the ABI sends it: segments each ended by a NUL.
fn property_key(path: *const u8, size: usize) -> String {
    unsafe { text(path, size) }
        .trim_end_matches('\0')
        .replace('\0', ".")
}

#[no_mangle]
extern "C" fn proxy_get_property(
    path: *const u8,
    path_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    host("proxy_get_property", |h| {
        let value = h.properties.get(&property_key(path, path_size));
        unsafe { give_found(value.map(Vec::as_slice), data, size) }
    })
}

#[no_mangle]
extern "C" fn proxy_set_property(
    path: *const u8,
    path_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    host("proxy_set_property", |h| {
        let value = unsafe { std::slice::from_raw_parts(value, value_size) }.to_vec();
        h.properties.insert(property_key(path, path_size), value);
        OK
    })
}

#[no_mangle]
extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
    cas: *mut u32,
) -> u32 {
    host("proxy_get_shared_data", |h| {
        match h.shared.get(&unsafe { text(key, key_size) }) {
            Some((value, token)) => unsafe {
                *cas = *token;
                give(value, data, size)
            },
            None => NOT_FOUND,
        }
    })
}

/// Envoy's rule: a token of 0 writes unconditionally, any other must be the current one.
#[no_mangle]
extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
    cas: u32,
) -> u32 {
    host("proxy_set_shared_data", |h| {
        let key = unsafe { text(key, key_size) };
        let value = unsafe { std::slice::from_raw_parts(value, value_size) }.to_vec();
        let current = h.shared.get(&key).map_or(0, |(_, token)| *token);
        if cas != 0 && cas != current {
            return CAS_MISMATCH;
        }
        h.shared.insert(key, (value, current + 1));
        OK
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
extern "C" fn proxy_send_local_response(
    status: u32,
    _details: *const u8,
    _details_size: usize,
    _body: *const u8,
    _body_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _grpc_status: i32,
) -> u32 {
    host("proxy_send_local_response", |h| {
        h.local_response = Some(status);
        OK
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
extern "C" fn proxy_http_call(
    upstream: *const u8,
    upstream_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _body: *const u8,
    _body_size: usize,
    _trailers: *const u8,
    _trailers_size: usize,
    _timeout: u32,
    token: *mut u32,
) -> u32 {
    host("proxy_http_call", |h| {
        h.next_token += 1;
        let upstream = unsafe { text(upstream, upstream_size) };
        h.calls.push((h.next_token, upstream));
        unsafe { *token = h.next_token };
        OK
    })
}

#[no_mangle]
extern "C" fn proxy_define_metric(_kind: u32, _name: *const u8, _size: usize, id: *mut u32) -> u32 {
    host("proxy_define_metric", |h| {
        h.next_metric += 1;
        unsafe { *id = h.next_metric };
        OK
    })
}

#[no_mangle]
extern "C" fn proxy_increment_metric(_id: u32, _offset: i64) -> u32 {
    host("proxy_increment_metric", |_| OK)
}

#[no_mangle]
extern "C" fn proxy_record_metric(_id: u32, _value: u64) -> u32 {
    host("proxy_record_metric", |_| OK)
}

/// The SDK's other imports: the benchmark's path never calls them.
macro_rules! never_called {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        extern "C" fn $name($(_: $ty),*) -> u32 {
            panic!(concat!("footprint: the filter called ", stringify!($name)));
        }
    )*};
}

never_called! {
    proxy_set_header_map_pairs(a: u32, b: *const u8, c: usize);
    proxy_set_buffer_bytes(a: u32, b: usize, c: usize, d: *const u8, e: usize);
    proxy_register_shared_queue(a: *const u8, b: usize, c: *mut u32);
    proxy_resolve_shared_queue(a: *const u8, b: usize, c: *const u8, d: usize, e: *mut u32);
    proxy_dequeue_shared_queue(a: u32, b: *mut *mut u8, c: *mut usize);
    proxy_enqueue_shared_queue(a: u32, b: *const u8, c: usize);
    proxy_continue_stream(a: u32);
    proxy_close_stream(a: u32);
    proxy_grpc_call(a: *const u8, b: usize, c: *const u8, d: usize, e: *const u8, f: usize, g: *const u8, h: usize, i: *const u8, j: usize, k: u32, l: *mut u32);
    proxy_grpc_stream(a: *const u8, b: usize, c: *const u8, d: usize, e: *const u8, f: usize, g: *const u8, h: usize, i: *mut u32);
    proxy_grpc_send(a: u32, b: *const u8, c: usize, d: u32);
    proxy_grpc_cancel(a: u32);
    proxy_grpc_close(a: u32);
    proxy_get_status(a: *mut u32, b: *mut *mut u8, c: *mut usize);
    proxy_call_foreign_function(a: *const u8, b: usize, c: *const u8, d: usize, e: *mut *mut u8, f: *mut usize);
    proxy_done();
    proxy_get_metric(a: u32, b: *mut u64);
    proxy_continue_request();
    proxy_continue_response();
    proxy_clear_route_cache();
}

fn with_host<T>(work: impl FnOnce(&mut Host) -> T) -> T {
    HOST.with(|h| work(&mut h.borrow_mut()))
}

/// Puts `make bench-proxy`'s request, as Envoy hands it to the filter, and its upstream's
/// response in the host, uncounted.
fn prepare(authority: &str, plugins: bool) {
    let mut headers = vec![
        (":authority", authority),
        (":path", "/api/items"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5c8a2f0e-4c1b-4d6b-9a53-1f2e3d4c5b6a"),
    ];
    if plugins {
        headers.insert(4, ("apikey", "bench-key"));
    }
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    };
    with_host(|h| {
        h.request = owned(&headers);
        h.response = owned(&[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("content-length", "2"),
            ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("server", "envoy"),
            ("x-envoy-upstream-service-time", "0"),
        ]);
        h.local_response = None;
        h.counted.clear();
        h.now_ns += 1_000_000;
    });
}

/// The proxy's calls into the module for one request; `Err` with the status of a local
/// response.
fn serve(context: u32) -> Result<(), u32> {
    // SAFETY: the module's exports, called in the order Envoy calls them for a request.
    unsafe {
        proxy_on_context_create(context, ROOT);
        let count = HOST.with(|h| h.borrow().request.len());
        proxy_on_request_headers(context, count, true);
        let local = HOST.with(|h| h.borrow().local_response);
        if local.is_none() {
            let count = HOST.with(|h| h.borrow().response.len());
            proxy_on_response_headers(context, count, true);
        }
        proxy_on_log(context);
        proxy_on_done(context);
        proxy_on_delete(context);
        local.map_or(Ok(()), Err)
    }
}

/// One request, uncounted setup included.
fn request(context: u32, authority: &str, plugins: bool) -> Result<(), u32> {
    prepare(authority, plugins);
    serve(context)
}

fn main() {
    let (routes, plugins) = footprint::args();
    let document = serde_json::to_vec(&common::document(routes, plugins)).unwrap();
    let configuration = serde_json::json!({
        "version": "0.0.0",
        "companion": {"upstream": "fallback_companion", "authority": "companion", "token": "unused"},
        "storage": {"upstream": "fallback_storage"},
        "control_plane": {"upstream": "fallback_cp", "authority": "cp", "path": "/config"},
    });
    with_host(|h| {
        h.now_ns = 1_700_000_000_000_000_000;
        h.plugin_configuration = serde_json::to_vec(&configuration).unwrap();
        // Envoy's listener port, 8-byte little-endian, for routes that compare it.
        h.properties.insert(
            "destination.port".to_owned(),
            8080u64.to_le_bytes().to_vec(),
        );
    });
    let size = with_host(|h| h.plugin_configuration.len());
    unsafe {
        _initialize();
        proxy_on_context_create(ROOT, 0);
        assert!(proxy_on_vm_start(ROOT, 0), "the filter refused to start");
        assert!(
            proxy_on_configure(ROOT, size),
            "the filter refused its configuration"
        );
    }

    // Ticks (10 ms apart) answer the control plane's calls with the document until the
    // benchmark's request is forwarded.
    let authority = format!("r{}.bench.test", routes / 2);
    let mut context = ROOT + 1;
    let mut forwarded = false;
    for _ in 0..20_000 {
        with_host(|h| h.now_ns += 10_000_000);
        unsafe { proxy_on_tick(ROOT) };
        let calls = with_host(|h| std::mem::take(&mut h.calls));
        for (token, upstream) in calls {
            let answer = (upstream == "fallback_cp").then(|| document.clone());
            let (headers, body) = with_host(|h| {
                let status = if answer.is_some() { "200" } else { "503" };
                h.call_headers = vec![
                    (":status".to_owned(), status.to_owned()),
                    ("etag".to_owned(), "\"bench\"".to_owned()),
                ];
                h.call_body = answer.unwrap_or_default();
                (h.call_headers.len(), h.call_body.len())
            });
            unsafe { proxy_on_http_call_response(ROOT, token, headers, body, 0) };
        }
        context += 1;
        if request(context, &authority, plugins).is_ok() {
            forwarded = true;
            break;
        }
    }
    if !forwarded {
        let logs = with_host(|h| h.logs.join("\n"));
        eprintln!("footprint: the filter never forwarded the benchmark's request:\n{logs}");
        std::process::exit(1);
    }
    // The warm-up: lazily built state (the router's scratch space, leases, the SDK's maps).
    for _ in 0..64 {
        context += 1;
        request(context, &authority, plugins).expect("the warm-up request is forwarded");
    }
    context += 1;
    prepare(&authority, plugins);
    client_request(START_INSTRUMENTATION);
    MEASURING.store(true, Ordering::Relaxed);
    let served = serve(context);
    MEASURING.store(false, Ordering::Relaxed);
    client_request(STOP_INSTRUMENTATION);
    served.expect("the measured request is forwarded");
    let calls = with_host(|h| std::mem::take(&mut h.counted));
    let total: u32 = calls.values().sum();
    let list: Vec<String> = calls.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    println!(
        "{allocations} allocations; host calls: {total} ({})",
        list.join(", ")
    );
}
