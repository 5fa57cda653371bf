//! The limits every party enforces alike, so that what one side accepts the other can use.
//!
//! Each limit bounds the work one input can cause: a document the exporter stores must be one
//! every filter can import, a request path one a route regex can run over quickly, a nesting
//! depth one every parser handles in linear time. `docs/filter.md` and `docs/storage.md` explain
//! the numbers; the measurements behind them are in `make bench` and the end-to-end tests.

/// Largest declarative document, in bytes of the stored (canonical JSON) body or of the body
/// a control plane serves, that Fallback accepts.
///
/// The exporter refuses to store a larger document (storage keeps the last one), the filter
/// refuses to import one, and the Envoy bootstrap's clusters that the filter calls accept
/// bodies up to this size. 16 MiB is Kong's own `cluster_max_payload` default (the largest
/// config a Kong control plane sends its data planes). Measured with Envoy 1.40 (2 workers, a
/// busy 2-core machine, `wasm-tests/tests/limits.rs`): a 16 MiB document of about 69,000
/// routes (each with hosts, methods, a prefix and a regex path; a plugin on one in ten) is
/// imported and served 17 s after Envoy starts (8 MiB: 12 s, 4 MiB: 7 s). A worker does not
/// tick while it compiles, so `leader_lease_ms` must exceed that time (the default 5 s does
/// at this size; 1 s does not).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Deepest nesting of arrays and objects accepted in a document (JSON or YAML), counting the
/// top-level object as 1.
///
/// A Kong document is about 10 levels deep at most (`services[].routes[].plugins[].config`
/// and a plugin's own structure). Bounding depth keeps every parser linear: a YAML parser
/// spends time proportional to the depth on every token of a deeply nested flow collection
/// (`[[[[...`), so 100,000 levels in 200 KB cost tens of seconds.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Longest request `:path` (query string included), in bytes, that the router matches;
/// longer requests are answered `414` with `{"message":"URI too long"}` before any route or
/// regex runs.
///
/// 8 KiB is what Kong answers the same way: nginx's default `large_client_header_buffers 4 8k`
/// refuses a longer request line with 414, and Kong's error handler words it as here. With
/// [`MAX_REGEX_NFA_BYTES`] it bounds the cost of one route regex on one request.
pub const MAX_REQUEST_PATH_BYTES: usize = 8 * 1024;

/// Largest compiled size (`regex-lite`'s measure of its NFA, in bytes) of a route's regex
/// (paths and `~*` header values).
///
/// The engine's search time is proportional to the compiled size times the length of the
/// text searched, with no catastrophic backtracking; bounding both bounds the time a regex
/// can take per request. 10 KiB admits the regexes real configs use (a UUID segment is about
/// 2 KiB, `[a-zA-Z0-9._~-]{1,64}` about 9 KiB) and refuses `(.*a){100}` (425 ms per 50 KB
/// request in Envoy before these limits). The worst regex it admits, `(.*a){54}`, keeps every
/// state alive at every byte: `make bench` measures it on an 8 KiB path (about 40 ms on a
/// busy test machine, natively); typical route regexes take microseconds.
pub const MAX_REGEX_NFA_BYTES: usize = 10 * 1024;

/// The largest response body the proxy hands the filter from its calls (control plane,
/// companion, storage): twice [`MAX_DOCUMENT_BYTES`], so that a document that is too large
/// still arrives and is refused as too large, by size, rather than vanishing as a failed call.
///
/// Envoy drops a larger body and reports the call as failed, exactly like a connection
/// failure (its runtime key `http.async_response_buffer_limit`, 32 MiB by default);
/// `examples/envoy/bootstrap.yaml` sets that key to this value, and the end-to-end tests
/// check that they agree.
pub const PROXY_RESPONSE_BUFFER_BYTES: usize = 2 * MAX_DOCUMENT_BYTES;
