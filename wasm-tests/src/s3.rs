//! A tiny SigV4-signing S3 client (path-style), for tests that talk to SeaweedFS directly.
//!
//! Signs with AWS Signature Version 4 (`AWS4-HMAC-SHA256`, service `s3`), the payload hash
//! being the real sha256 of the body. Enough for PUT/GET/HEAD/DELETE of objects and
//! ListObjectsV2; not a general S3 SDK.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::http::{request, HttpResponse};
use crate::sha256::{hex, hmac_sha256, sha256_hex};

/// An S3 access key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

/// An S3 client bound to one endpoint and one identity.
#[derive(Debug, Clone)]
pub struct S3Client {
    endpoint: String,
    credentials: Credentials,
    region: String,
}

/// Percent-encodes per SigV4 (RFC 3986 unreserved characters kept); `/` kept when `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `(YYYYMMDD'T'HHMMSS'Z', YYYYMMDD)` for `time` in UTC.
pub fn amz_dates(time: SystemTime) -> (String, String) {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    (stamp, date)
}

impl S3Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:8333`) signing as `credentials` in
    /// region `us-east-1`.
    pub fn new(endpoint: &str, credentials: Credentials) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            region: "us-east-1".to_string(),
        }
    }

    /// The same client signing for another region.
    pub fn with_region(mut self, region: &str) -> Self {
        self.region = region.to_string();
        self
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends a signed request for `/<bucket>/<key>` (key may be empty for bucket-level calls).
    /// `query` pairs are unencoded; `headers` are added and signed (names any case).
    pub async fn send(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<HttpResponse, String> {
        let body: Bytes = body.into();
        let path = if key.is_empty() {
            format!("/{}", uri_encode(bucket, false))
        } else {
            format!(
                "/{}/{}",
                uri_encode(bucket, false),
                uri_encode(key.trim_start_matches('/'), true)
            )
        };
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let (stamp, date) = amz_dates(SystemTime::now());
        let payload_hash = sha256_hex(&body);

        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        all.push(("host".into(), host));
        all.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        all.push(("x-amz-date".into(), stamp.clone()));
        all.sort();
        let canonical_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = all
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request = format!(
            "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let k_date = hmac_sha256(
            format!("AWS4{}", self.credentials.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac_sha256(&k_date, self.region.as_bytes());
        let k_service = hmac_sha256(&k_region, b"s3");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.credentials.access_key
        );
        all.push(("authorization".into(), authorization));

        let url = if canonical_query.is_empty() {
            format!("{}{path}", self.endpoint)
        } else {
            format!("{}{path}?{canonical_query}", self.endpoint)
        };
        let header_refs: Vec<(&str, &str)> =
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        request(method, &url, &header_refs, body).await
    }

    /// `PUT /<bucket>/<key>` with `body` and extra (signed) `headers`.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, String> {
        self.send("PUT", bucket, key, &[], headers, body).await
    }

    /// `GET /<bucket>/<key>`.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<HttpResponse, String> {
        self.send("GET", bucket, key, &[], &[], Bytes::new()).await
    }

    /// `HEAD /<bucket>/<key>`.
    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<HttpResponse, String> {
        self.send("HEAD", bucket, key, &[], &[], Bytes::new()).await
    }

    /// `DELETE /<bucket>/<key>`.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<HttpResponse, String> {
        self.send("DELETE", bucket, key, &[], &[], Bytes::new())
            .await
    }

    /// `HEAD /<bucket>` (200 when the bucket exists and this identity may see it).
    pub async fn head_bucket(&self, bucket: &str) -> Result<HttpResponse, String> {
        self.send("HEAD", bucket, "", &[], &[], Bytes::new()).await
    }

    /// ListObjectsV2 of `bucket` under `prefix` (first page, up to 1000 keys): the keys, or the
    /// failed response's status and body.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let resp = self
            .send(
                "GET",
                bucket,
                "",
                &[("list-type", "2"), ("prefix", prefix)],
                &[],
                Bytes::new(),
            )
            .await?;
        if resp.status != 200 {
            return Err(format!(
                "ListObjectsV2 {bucket}/{prefix}: status {}: {}",
                resp.status,
                resp.text()
            ));
        }
        let text = resp.text();
        Ok(text
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(xml_unescape)
            .collect())
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        assert_eq!(
            amz_dates(t),
            ("20150830T123600Z".to_string(), "20150830".to_string())
        );
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(amz_dates(t).1, "20000229");
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
