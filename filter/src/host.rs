//! Host calls, and nothing else: every decision about what to call lives in
//! `fallback_core::host::HostProfile`. Each function performs one call through [`crate::abi`]
//! and turns a refusal into a defined outcome (`None`, `false`, an `Err` to log), never a panic.

use crate::abi::{self, Buffer, Map, CAS_MISMATCH};
use fallback_core::host::{HostWrite, ProxyLogLevel, ReadFrom};
use fallback_core::shared_data::{SharedData, WriteRefused};
use proxy_wasm::types::MetricType;
use std::ops::Range;
use std::time::Duration;

/// Unix time in ms from the host clock (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Unix time in ns from the host clock (0 if the host cannot tell; ngx_wasm_module's has
/// millisecond resolution).
pub fn now_ns() -> u64 {
    abi::now_nanos().unwrap_or(0)
}

/// Logs `message`; a failed log call has nowhere better to go.
pub fn log(level: ProxyLogLevel, message: &str) {
    let _ = abi::log(level as u32, message);
}

/// Asks for `on_tick` every `period`.
pub fn set_tick_period(period: Duration) {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    let _ = abi::set_tick_period(ms);
}

/// The plugin configuration (empty when the host has none).
pub fn plugin_configuration() -> Vec<u8> {
    abi::buffer(Buffer::PluginConfiguration, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The proxy's shared data.
pub struct HostSharedData;

impl SharedData for HostSharedData {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
        abi::shared_get(key).unwrap_or((None, 0))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), WriteRefused> {
        abi::shared_set(key, value, cas).map_err(|status| match status {
            CAS_MISMATCH => WriteRefused::CasMismatch,
            other => WriteRefused::Host(other),
        })
    }
}

/// Starts an HTTP call (through the SDK, which routes its answer to the root context); the
/// token identifies its response.
pub fn dispatch(
    upstream: &str,
    headers: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<u32, proxy_wasm::types::Status> {
    proxy_wasm::hostcalls::dispatch_http_call(upstream, headers, None, vec![], timeout)
}

/// Bytes from the host as text: valid UTF-8 (nearly always) keeps its buffer, anything else
/// is decoded lossily.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

fn lossy(pairs: abi::Pairs) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(name, value)| (text(name), text(value)))
        .collect()
}

/// The current HTTP call response's headers, decoded lossily.
pub fn call_response_headers() -> Vec<(String, String)> {
    lossy(abi::header_map(Map::CallResponse).unwrap_or_default())
}

/// The current HTTP call response's body.
pub fn call_response_body(size: usize) -> Vec<u8> {
    abi::buffer(Buffer::CallResponseBody, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// One request header, decoded lossily.
pub fn request_header(name: &str) -> Option<String> {
    abi::header(Map::Request, name).ok().flatten().map(text)
}

/// Every request header (a header may repeat); empty when the host refuses.
pub fn request_headers() -> HeaderBlock {
    HeaderBlock::new(
        abi::header_map_bytes(Map::Request)
            .ok()
            .flatten()
            .unwrap_or_default(),
    )
}

/// A header map read in one host call, kept as the host's bytes: names and values are borrowed
/// from it (one allocation besides the host's bytes, not two per header), checked to be UTF-8
/// once. A map with text that is not UTF-8 is decoded lossily into a copy instead.
pub struct HeaderBlock {
    bytes: Vec<u8>,
    /// Where each name and value is in `bytes`; all valid UTF-8 unless `repaired` is set.
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// Every pair, decoded lossily, when some text was not UTF-8.
    repaired: Option<Vec<(String, String)>>,
}

impl HeaderBlock {
    fn new(bytes: Vec<u8>) -> Self {
        let fields = abi::map_fields(&bytes);
        // One check of the text from the first name to the last value (the NULs between are
        // UTF-8 too), then every name and value starting and ending on a character boundary:
        // each is then UTF-8 itself. One check, not one per name and value (a tenth of the
        // request path's instructions).
        let first = fields.first().map_or(0, |(name, _)| name.start);
        let last = fields.last().map_or(0, |(_, value)| value.end);
        let valid = bytes
            .get(first..last)
            .and_then(|text| std::str::from_utf8(text).ok())
            .is_some_and(|text| {
                let boundary = |at: usize| text.is_char_boundary(at - first);
                fields.iter().all(|(n, v)| {
                    boundary(n.start) && boundary(n.end) && boundary(v.start) && boundary(v.end)
                })
            });
        let repaired = (!valid).then(|| {
            let lossy =
                |range: &Range<usize>| String::from_utf8_lossy(&bytes[range.clone()]).into_owned();
            fields.iter().map(|(n, v)| (lossy(n), lossy(v))).collect()
        });
        Self {
            bytes,
            fields,
            repaired,
        }
    }

    /// Every `(name, value)`, in the host's order: the one list a request reads them from.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        match &self.repaired {
            Some(pairs) => pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            None => self
                .fields
                .iter()
                .map(|(name, value)| {
                    // SAFETY: `new` checked that every name and value is valid UTF-8 (else
                    // `repaired` is set), and `bytes` has not changed since.
                    unsafe {
                        (
                            std::str::from_utf8_unchecked(&self.bytes[name.clone()]),
                            std::str::from_utf8_unchecked(&self.bytes[value.clone()]),
                        )
                    }
                })
                .collect(),
        }
    }
}

/// A host property (e.g. `["connection", "requested_server_name"]`), `None` when unset.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    abi::property(path).ok().flatten()
}

/// A request value read where the host profile says, decoded lossily.
pub fn read(from: ReadFrom) -> Option<String> {
    match from {
        ReadFrom::Header(name) => request_header(name),
        ReadFrom::Property(path) => property(path).map(text),
    }
}

/// Performs one hand-over write; `Err` carries the host's status.
pub fn write(write: &HostWrite<'_>) -> Result<(), u32> {
    match write {
        HostWrite::Header { name, value } => abi::replace_header(Map::Request, name, value),
        HostWrite::Property { path, value } => abi::set_property(path, value.as_bytes()),
    }
}

/// Sets (or with `None` removes) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = match value {
        Some(value) => abi::replace_header(Map::Request, name, value),
        None => abi::remove_header(Map::Request, name),
    };
}

/// Adds a request header value (keeps the others).
pub fn add_request_header(name: &str, value: &str) {
    let _ = abi::add_header(Map::Request, name, value);
}

/// Every response header, decoded lossily.
pub fn response_headers() -> Vec<(String, String)> {
    lossy(abi::header_map(Map::Response).unwrap_or_default())
}

/// Adds a response header.
pub fn add_response_header(name: &str, value: &str) {
    let _ = abi::add_header(Map::Response, name, value);
}

/// Replaces every value of a response header with one (adds it when absent).
pub fn replace_response_header(name: &str, value: &str) {
    let _ = abi::replace_header(Map::Response, name, value);
}

/// Removes every value of a response header.
pub fn remove_response_header(name: &str) {
    let _ = abi::remove_header(Map::Response, name);
}

/// Answers the request from the filter with these headers and body (`None`: no body).
pub fn send_response(status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) {
    let _ = abi::send_response(status, headers, body);
}

/// Answers the request from the filter with no body (e.g. a redirect).
pub fn send_empty(status: u32, headers: &[(&str, &str)]) {
    send_response(status, headers, None);
}

/// Answers the request from the filter with a JSON body.
pub fn send_json(status: u32, body: &str, extra_headers: &[(&str, &str)]) {
    let mut headers = vec![("content-type", "application/json; charset=utf-8")];
    headers.extend_from_slice(extra_headers);
    send_response(status, &headers, Some(body.as_bytes()));
}

/// A metric handle; `None` when the host refused to define it (then it is silently skipped).
#[derive(Clone, Copy, Debug)]
pub struct Metric(Option<u32>);

impl Metric {
    /// Defines (or finds) a metric by name.
    pub fn define(kind: MetricType, name: &str) -> Self {
        Self(abi::define_metric(kind as u32, name).ok())
    }

    /// Adds `delta` to a counter.
    pub fn add(self, delta: i64) {
        if let Some(id) = self.0 {
            let _ = abi::increment_metric(id, delta);
        }
    }

    /// Sets a gauge.
    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = abi::record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_block_borrows_valid_text_and_repairs_the_rest() {
        let valid = [(":path", "/a"), ("ApiKey", "k1"), ("x-bin", "v")];
        let block = HeaderBlock::new(abi::serialize_map(&valid));
        assert!(block.repaired.is_none());
        assert_eq!(block.pairs(), valid);
        let mut bytes = abi::serialize_map(&valid);
        // Make the last value invalid UTF-8 (0xff), as a client may send.
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let block = HeaderBlock::new(bytes);
        assert_eq!(
            block.pairs(),
            [(":path", "/a"), ("ApiKey", "k1"), ("x-bin", "\u{fffd}")]
        );
    }

    #[test]
    fn a_field_cutting_a_character_is_repaired_though_the_whole_text_is_utf8() {
        // Lengths that end the name inside "é" (0xc3 0xa9); the byte skipped as the name's
        // NUL is the character's second byte. The text as a whole is valid UTF-8.
        let mut bytes = [1u32, 2, 1]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect::<Vec<_>>();
        bytes.extend(b"a\xc3\xa9x\0");
        let block = HeaderBlock::new(bytes);
        assert!(block.repaired.is_some());
        assert_eq!(block.pairs(), [("a\u{fffd}", "x")]);
    }

    #[test]
    fn a_garbled_or_empty_block_is_empty_not_a_panic() {
        let good = abi::serialize_map(&[("a", "1"), ("bb", "22")]);
        for cut in 0..good.len() {
            let block = HeaderBlock::new(good[..cut].to_vec());
            assert!(block.pairs().len() <= 2);
        }
        assert!(HeaderBlock::new(Vec::new()).pairs().is_empty());
    }
}
