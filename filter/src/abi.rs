//! The proxy-wasm host functions the filter calls, declared here so that no host answer can
//! panic. The SDK's `hostcalls` panic on any status they do not expect (`set_property` on
//! anything but `Ok`: an undeclared nginx variable is status 1, "unexpected status: 1", a trap,
//! a 500 for every request); here every status comes back as an `Err` for the caller to log.
//!
//! Only `dispatch_http_call` stays with the SDK: the SDK must register the call's token to route
//! its answer to the root context, and it already turns the statuses hosts use for a refused
//! call (bad argument, internal failure) into errors.
//!
//! Every function is a direct translation of one ABI 0.2.1 import; values the host allocates
//! come back through the SDK's `proxy_on_memory_allocate` and are taken over as `Vec<u8>`.

use std::ops::Range;
use std::ptr::{null, null_mut};

/// A proxy-wasm status other than `Ok` (1: not found, 2: bad argument, 8: CAS mismatch, ...).
pub type Status = u32;

/// `NotFound`: the key, header or property does not exist.
pub const NOT_FOUND: Status = 1;
/// `CasMismatch`: shared data changed since it was read.
pub const CAS_MISMATCH: Status = 8;

/// Header map types of the ABI.
#[derive(Debug, Clone, Copy)]
pub enum Map {
    /// The request's headers.
    Request = 0,
    /// The response's headers.
    Response = 2,
    /// A dispatched call's response headers.
    CallResponse = 6,
}

/// A header map's pairs, as bytes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Buffer types of the ABI.
#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    /// A dispatched call's response body.
    CallResponseBody = 4,
    /// The plugin configuration.
    PluginConfiguration = 7,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

fn check(status: u32) -> Result<(), Status> {
    if status == 0 {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes over bytes the host allocated with `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` is null or points to `size` bytes the host allocated through the SDK's allocator.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: allocated by proxy_on_memory_allocate as a Vec<u8> of capacity `size`.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// Reads a value the host returns through `(data, size)` out-pointers; not found is `None`.
fn read_out(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    match call(&mut data, &mut size) {
        // SAFETY: on success the host filled both out-pointers.
        0 => Ok(unsafe { take(data, size) }),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

/// `proxy_log`.
pub fn log(level: u32, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live str.
    check(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// The host clock, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, Status> {
    let mut time = 0;
    // SAFETY: a valid out-pointer.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut time) })?;
    Ok(time)
}

/// `proxy_set_tick_period_milliseconds`.
pub fn set_tick_period(ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// The bytes of a buffer, up to `max`.
pub fn buffer(kind: Buffer, max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: valid out-pointers.
    read_out(|data, size| unsafe { proxy_get_buffer_bytes(kind as u32, 0, max, data, size) })
}

/// Every pair of a header map, in order.
pub fn header_map(map: Map) -> Result<Pairs, Status> {
    Ok(header_map_bytes(map)?.map_or_else(Vec::new, |b| deserialize_map(&b)))
}

/// A header map as the host serialized it (`None`: the host has none).
pub fn header_map_bytes(map: Map) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: valid out-pointers.
    read_out(|data, size| unsafe { proxy_get_header_map_pairs(map as u32, data, size) })
}

/// One header of a map; `None` when absent.
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointer and length of a live str, valid out-pointers.
    read_out(|data, size| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
    })
}

/// `proxy_replace_header_map_value` and `proxy_add_header_map_value` take the same arguments.
type MapWrite = unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32;

fn write_header(call: MapWrite, map: Map, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live strs.
    check(unsafe {
        call(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replaces every value of a header with `value`.
pub fn replace_header(map: Map, name: &str, value: &str) -> Result<(), Status> {
    write_header(proxy_replace_header_map_value, map, name, value)
}

/// Removes every value of a header.
pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live str.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Adds one value of a header.
pub fn add_header(map: Map, name: &str, value: &str) -> Result<(), Status> {
    write_header(proxy_add_header_map_value, map, name, value)
}

/// A property; `None` when the host has no value.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = serialize_path(path);
    // SAFETY: pointer and length of a live buffer, valid out-pointers.
    read_out(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

/// Sets a property.
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = serialize_path(path);
    // SAFETY: pointers and lengths of live buffers.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token (`(None, 0)` when absent).
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: pointer and length of a live str, valid out-pointers.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        // SAFETY: on success the host filled the out-pointers.
        0 => Ok((unsafe { take(data, size) }, cas)),
        NOT_FOUND => Ok((None, 0)),
        status => Err(status),
    }
}

/// Writes a shared-data value if `cas` matches (see `fallback_core::shared_data`).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live buffers.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Answers the request from the filter.
pub fn send_response(
    status: u32,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(), Status> {
    let headers = serialize_map(headers);
    let (body_ptr, body_len) = body.map_or((null(), 0), |b| (b.as_ptr(), b.len()));
    // SAFETY: pointers and lengths of live buffers (or null and 0).
    check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body_ptr,
            body_len,
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Defines (or finds) a metric; `kind` 0 counter, 1 gauge.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointer and length of a live str, a valid out-pointer.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds to a counter.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, offset) })
}

/// Sets a gauge.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

/// A property path as the ABI wants it: the segments joined by NUL.
fn serialize_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// A header map as the ABI wants it: the pair count, each pair's sizes, then each name and
/// value NUL-terminated (all sizes little-endian `u32`).
pub fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// The pairs of a serialized header map; a truncated or garbled map yields the pairs read
/// before the damage (the SDK would panic on it).
pub(crate) fn deserialize_map(bytes: &[u8]) -> Pairs {
    map_fields(bytes)
        .into_iter()
        .map(|(name, value)| (bytes[name].to_vec(), bytes[value].to_vec()))
        .collect()
}

/// Where each name and value of a serialized map lies in `bytes` (ABI 0.2.1: a `u32` count,
/// a `u32` length pair per entry, then each name and value followed by a NUL). A garbled map
/// yields the entries read before the damage, never a panic.
pub(crate) fn map_fields(bytes: &[u8]) -> Vec<(Range<usize>, Range<usize>)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    let mut fields = Vec::with_capacity(count.min(bytes.len() / 10));
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
            break;
        };
        let mut field = |len: usize| -> Option<Range<usize>> {
            let end = p.checked_add(len)?;
            bytes.get(p..end)?;
            let range = p..end;
            p = end.checked_add(1)?;
            Some(range)
        };
        let (Some(name), Some(value)) = (field(name_len), field(value_len)) else {
            break;
        };
        fields.push((name, value));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let pairs = [(":status", "200"), ("x-a", ""), ("set-cookie", "a=b; c")];
        let decoded = deserialize_map(&serialize_map(&pairs));
        let expected: Pairs = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(decoded, expected);
        assert!(deserialize_map(&serialize_map(&[])).is_empty());
        assert!(deserialize_map(&[]).is_empty());
    }

    #[test]
    fn a_garbled_map_never_panics() {
        let good = serialize_map(&[("a", "1"), ("bb", "22")]);
        for cut in 0..good.len() {
            let pairs = deserialize_map(&good[..cut]);
            assert!(pairs.len() <= 2);
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        deserialize_map(&huge);
        let mut long_name = good;
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(deserialize_map(&long_name).is_empty());
    }

    #[test]
    fn property_paths_join_with_nul() {
        assert_eq!(serialize_path(&["ngx", "server_port"]), b"ngx\0server_port");
        assert_eq!(
            serialize_path(&["kong", "service", "target"]),
            b"kong\0service\0target"
        );
    }
}
