//! The identity of an exported document: its canonical JSON bytes and their sha256.
//!
//! Two exporters that receive the same configuration, with keys in any order or with any
//! whitespace, produce the same bytes and so the same digest. That is what lets the exporter skip
//! an unchanged document and lets the filter verify what it fetched.

use crate::pace::Pace;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// Serialises `value` as compact JSON with object keys sorted by their UTF-8 bytes.
///
/// Sorting is done here rather than relying on `serde_json`'s map type, whose order changes
/// when any crate in the build enables its `preserve_order` feature.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out);
    out
}

/// [`canonical_json`], yielding to `pace` (see [`crate::pace`]) after each element of the
/// top-level object's arrays: a 10,000-route document takes longer to write than a slice.
pub async fn canonical_json_paced(value: &Value, pace: &Pace<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let Value::Object(map) = value else {
        write_canonical(value, &mut out);
        return out;
    };
    out.push(b'{');
    for (i, (key, item)) in sorted(map).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(key, &mut out);
        out.push(b':');
        let Value::Array(items) = item else {
            write_canonical(item, &mut out);
            continue;
        };
        out.push(b'[');
        for (j, element) in items.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_canonical(element, &mut out);
            pace.step().await;
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// `map`'s entries, keys sorted by their UTF-8 bytes.
fn sorted(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    entries
}

fn write_key(key: &str, out: &mut Vec<u8>) {
    // Serialising a string into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, key).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in sorted(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_key(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail: no I/O, no maps with non-string keys.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A sha256 digest, shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// [`Sha256Digest::of`], yielding to `pace` between pieces of 16 KiB (see
    /// [`crate::pace`]): a published document of a few MB takes longer to hash than a slice.
    pub async fn of_paced(bytes: &[u8], pace: &Pace<'_>) -> Self {
        let mut hasher = Sha256::new();
        for piece in bytes.chunks(16 * 1024) {
            hasher.update(piece);
            pace.checkpoint().await;
        }
        Self(hasher.finalize().into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        push_hex(&mut s, &self.0);
        s
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Self(out))
    }
}

/// Appends `bytes` as lowercase hex digits, two per byte.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// The value of one hex digit, either case.
pub(crate) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_at_every_depth_and_drops_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null} }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a),
            br#"{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1}"#.to_vec()
        );
    }

    #[test]
    fn same_document_in_any_key_order_has_the_same_digest() {
        let a = json!({"_format_version": "3.0", "services": [{"name": "s", "host": "h"}]});
        let b: Value = serde_json::from_str(
            r#"{"services":[{"host":"h","name":"s"}],"_format_version":"3.0"}"#,
        )
        .unwrap();
        assert_eq!(
            Sha256Digest::of(&canonical_json(&a)),
            Sha256Digest::of(&canonical_json(&b))
        );
    }

    #[test]
    fn escapes_strings_as_json() {
        let v = json!({"k\"ey": "line\nbreak \u{1F600}"});
        let bytes = canonical_json(&v);
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn digest_of_empty_input_matches_the_published_value() {
        assert_eq!(
            Sha256Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Sha256Digest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(Sha256Digest::from_hex("abc"), None);
        assert_eq!(Sha256Digest::from_hex(&"g".repeat(64)), None);
    }
}
