//! What crosses the wire between the filter and the companion's signer role.

use serde::{Deserialize, Serialize};

/// Path of the signer API: `GET /v1/fallback-config?version=<v>` with `Authorization: Bearer`.
pub const SIGNER_PATH: &str = "/v1/fallback-config";

/// Path prefix under which the companion itself serves objects of `file://` storage, behind
/// HMAC-signed expiring URLs: `GET /v1/objects/<key>?expires=<unix s>&signature=<hex>`.
pub const OBJECTS_PATH: &str = "/v1/objects/";

/// The signer's `200` answer: where to fetch `config.json` and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedConfig {
    /// A URL granting `GET` of exactly this object until `expires_at`. Its query carries a
    /// signature: never log it whole (see [`redact_signed_url`]).
    pub url: String,
    /// Always `GET`.
    pub method: String,
    /// RFC 3339 UTC time after which the URL no longer works.
    pub expires_at: String,
    /// The `<version>` asked for.
    pub version: String,
    /// The object key, `<prefix>/<version>/config.json`.
    pub key: String,
    /// Hex sha256 the body must have (from the object's metadata).
    pub sha256: String,
    /// The export's revision (from the object's metadata).
    pub revision: u64,
    /// Optional Ed25519 signature (base64) over the export's manifest
    /// ([`crate::signature::ExportManifest`]), when the exporter signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The id of the key that made `signature` (the `key-id` metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the export was written (the `exported-at` metadata, RFC 3339), part of the signed
    /// manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_at: Option<String>,
    /// Every store holding this revision, primary first (mirrors after it), `url` among them;
    /// the filter tries them in order. Empty from a signer without mirrors: `url` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<SignedUrl>,
}

/// One place a signed export can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUrl {
    /// A URL granting `GET` of the object until `expires_at`: never log it whole.
    pub url: String,
    /// Always `GET`.
    pub method: String,
    /// RFC 3339 UTC time after which the URL no longer works.
    pub expires_at: String,
}

/// The body of every error answer, Kong-style: `{"message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub message: String,
}

/// `url` without its query string, for logs: a presigned URL's query holds its signature.
pub fn redact_signed_url(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Percent-encodes everything but RFC 3986 unreserved characters. One encoding serves every
/// URL Fallback builds or signs (path segments, query names and values): signatures over a URL
/// (SigV4, GCS V4, the companion's object URLs) only match when both sides encode alike.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 (`+/`), padded or not; `None` for anything else (whitespace included),
/// including non-zero bits after the last full byte.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let unpadded = match bytes {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        _ => bytes,
    };
    if bytes.len() != unpadded.len() && !bytes.len().is_multiple_of(4) {
        return None;
    }
    if unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in unpadded {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_config_round_trips_and_omits_a_missing_signature() {
        let c = SignedConfig {
            url: "http://s3:8333/b/k?X-Amz-Signature=abc".into(),
            method: "GET".into(),
            expires_at: "2026-11-26T10:05:00Z".into(),
            version: "3.4.1.0".into(),
            key: "kong/3.4.1.0/config.json".into(),
            sha256: "00".repeat(32),
            revision: 7,
            signature: None,
            key_id: None,
            exported_at: None,
            urls: Vec::new(),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("signature\":"), "{text}");
        assert_eq!(serde_json::from_str::<SignedConfig>(&text).unwrap(), c);
    }

    #[test]
    fn redaction_drops_the_query() {
        assert_eq!(
            redact_signed_url("http://h/k?X-Amz-Signature=abc"),
            "http://h/k"
        );
        assert_eq!(redact_signed_url("http://h/k"), "http://h/k");
    }
}
