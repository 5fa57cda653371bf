//! Host calls that cannot panic. The SDK's trait helpers `unwrap()` host results (and decode
//! header values as UTF-8 with `unwrap()`); in a gateway a failed host call must become a logged
//! error and a defined outcome, so the filter calls these instead.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// Unix time in ms from the host clock (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Logs `message`; a failed log call has nowhere better to go.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Value and CAS token of a shared-data key.
pub fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes a shared-data key; `cas` makes it conditional. `false` on a CAS mismatch or error.
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

/// Starts an HTTP call; the token identifies its response.
pub fn dispatch(
    upstream: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(upstream, headers.to_vec(), None, vec![], timeout)
}

/// The current HTTP call response's headers, values decoded lossily.
pub fn call_response_headers() -> Vec<(String, String)> {
    hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

/// The current HTTP call response's body.
pub fn call_response_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// One request header, decoded lossily.
pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Every header of `map`, values decoded lossily so that a value that is not UTF-8 is kept
/// rather than dropped; empty when the host refuses.
fn header_map(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .map(|pairs| {
            pairs
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every request header, decoded lossily (a header may repeat).
pub fn request_headers() -> Vec<(String, String)> {
    header_map(MapType::HttpRequestHeaders)
}

/// Answers the request from the filter with no body (e.g. a redirect).
pub fn send_empty(status: u32, headers: &[(&str, &str)]) {
    send_response(status, headers, None);
}

/// A host property (e.g. `["connection", "requested_server_name"]`), `None` when unset.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Sets (or with `None` removes) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Adds a response header.
pub fn add_response_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
}

/// Answers the request from the filter with a JSON body.
pub fn send_json(status: u32, body: &str, extra_headers: &[(&str, &str)]) {
    let mut headers = vec![("content-type", "application/json; charset=utf-8")];
    headers.extend_from_slice(extra_headers);
    // The SDK returns Ok or panics on an unexpected status; Envoy only answers Ok for a stream
    // in its request phase, which is the only place this is called from.
    let _ = hostcalls::send_http_response(status, headers, Some(body.as_bytes()));
}

/// A metric handle; `None` when the host refused to define it (then it is silently skipped).
#[derive(Clone, Copy, Debug)]
pub struct Metric(Option<u32>);

impl Metric {
    /// Defines (or finds) a metric by name.
    pub fn define(kind: MetricType, name: &str) -> Self {
        Self(hostcalls::define_metric(kind, name).ok())
    }

    /// Adds `delta` to a counter.
    pub fn add(self, delta: i64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    /// Sets a gauge.
    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// Adds a request header value (keeps the others).
pub fn add_request_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Answers the request from the filter with these headers and body (`None`: no body).
pub fn send_response(status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) {
    let _ = hostcalls::send_http_response(status, headers.to_vec(), body);
}

/// Every response header, decoded lossily.
pub fn response_headers() -> Vec<(String, String)> {
    header_map(MapType::HttpResponseHeaders)
}

/// Replaces every response header.
pub fn set_response_headers(headers: &[(String, String)]) {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let _ = hostcalls::set_map(MapType::HttpResponseHeaders, pairs);
}
