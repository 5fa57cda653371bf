//! `gcs://bucket/prefix`: Google Cloud Storage through its JSON API.
//!
//! - Tag = the object's `generation`; writes are multipart uploads with `ifGenerationMatch`
//!   (`0` = only if absent), body and metadata in one request, so no reader sees one without
//!   the other.
//! - Metadata is the object's custom metadata (`x-goog-meta-*` in the XML API).
//! - Uploads carry the body's CRC32C in the object resource, which GCS checks: a body corrupted
//!   on the way is refused (`400`), never stored.
//! - Object names are kept byte for byte (a name may begin with `/` or hold `//`): whole and
//!   percent-encoded in JSON API paths, in the upload's resource, and by segment in signed URLs.
//! - Signed GET URLs are V4 (`GOOG4-RSA-SHA256`), signed with the service-account key, or by IAM
//!   Credentials `signBlob` with metadata-server credentials.
//! - `STORAGE_EMULATOR_HOST` sends everything to an emulator, unauthenticated, as Google's
//!   client libraries do; URLs are then signed only when a key is configured.

use super::gcp_auth::{self, GcpCredentials, ServiceAccountKey};
use super::{ConfigStore, FetchedObject, Precondition, StoreError};
use crate::secret::Secret;
use crate::transport::{self, HttpClient};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::{ExportMetadata, StoredObject};
use fallback_core::wire::percent_encode;
use http::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";
/// The longest lifetime GCS accepts for a V4 signed URL.
pub const MAX_SIGNED_URL_TTL: Duration = super::MAX_SIGNED_URL_TTL;

/// Where GCS credentials come from and where requests go.
#[derive(Clone, Debug, Default)]
pub struct GcsSettings {
    /// `GCP_SERVICE_ACCOUNT`: the service-account key JSON itself (Kong's variable).
    pub service_account_json: Option<Secret>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: path of a service-account key file.
    pub credentials_file: Option<PathBuf>,
    /// `STORAGE_EMULATOR_HOST`: `host:port` or a URL of an emulator (fake-gcs-server).
    pub emulator_host: Option<String>,
    /// `GCE_METADATA_HOST`: the metadata server, when not `metadata.google.internal`.
    pub metadata_host: Option<String>,
}

impl GcsSettings {
    /// The credentials these settings name: the key JSON, else the key file, else (outside an
    /// emulator) the metadata server. `None` with an emulator and no key.
    pub fn credentials(&self) -> anyhow::Result<Option<GcpCredentials>> {
        if let Some(json) = self
            .service_account_json
            .as_ref()
            .filter(|j| !j.expose().trim().is_empty())
        {
            let key = ServiceAccountKey::from_json(json.expose(), "GCP_SERVICE_ACCOUNT")?;
            return Ok(Some(GcpCredentials::service_account(
                key,
                "GCP_SERVICE_ACCOUNT",
            )));
        }
        if let Some(path) = self
            .credentials_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let origin = format!("GOOGLE_APPLICATION_CREDENTIALS file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {origin}: {e}"))?;
            let key = ServiceAccountKey::from_json(&text, &origin)?;
            return Ok(Some(GcpCredentials::service_account(key, &origin)));
        }
        if self.emulator_endpoint().is_some() {
            return Ok(None);
        }
        Ok(Some(GcpCredentials::metadata_server(
            self.metadata_host.as_deref(),
        )))
    }

    /// The emulator's base URL (`http://` added when the value has no scheme, as Google's
    /// libraries do).
    pub fn emulator_endpoint(&self) -> Option<String> {
        let host = self.emulator_host.as_deref()?.trim();
        if host.is_empty() {
            return None;
        }
        let base = if host.contains("://") {
            host.to_owned()
        } else {
            format!("http://{host}")
        };
        Some(base.trim_end_matches('/').to_owned())
    }
}

/// A GCS bucket.
pub struct GcsStore {
    bucket: String,
    endpoint: String,
    emulator: bool,
    credentials: Option<Arc<GcpCredentials>>,
    client: HttpClient,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("emulator", &self.emulator)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// The object resource fields Fallback reads.
#[derive(serde::Deserialize)]
struct ObjectResource {
    generation: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl GcsStore {
    /// A store for `bucket`.
    pub fn new(bucket: String, settings: GcsSettings) -> anyhow::Result<Self> {
        let emulator = settings.emulator_endpoint();
        if let Some(e) = &emulator {
            let parsed = url::Url::parse(e).map_err(|err| {
                anyhow::anyhow!("STORAGE_EMULATOR_HOST {e:?} is not host:port or a URL ({err})")
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                anyhow::bail!("STORAGE_EMULATOR_HOST {e:?} must be host:port or an http(s) URL");
            }
        }
        Ok(Self {
            bucket,
            endpoint: emulator
                .clone()
                .unwrap_or_else(|| GOOGLE_ENDPOINT.to_owned()),
            emulator: emulator.is_some(),
            credentials: settings.credentials()?.map(Arc::new),
            client: transport::client(),
        })
    }

    fn object_api_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            percent_encode(&self.bucket),
            percent_encode(key)
        )
    }

    async fn exchange(
        &self,
        method: Method,
        key: &str,
        url: &str,
        headers: Vec<(&str, String)>,
        body: Bytes,
    ) -> Result<Response<Bytes>, StoreError> {
        let mut builder = Request::builder().method(method).uri(url);
        // Emulators take no credentials, like Google's libraries with STORAGE_EMULATOR_HOST.
        if let (false, Some(creds)) = (self.emulator, &self.credentials) {
            let token = creds
                .access_token()
                .await
                .map_err(|e| e.into_store_error(key))?;
            builder = builder.header("authorization", format!("Bearer {}", token.expose()));
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        super::send_to_store(&self.client, builder, body, key, || self.endpoint.clone()).await
    }

    fn stored_object(
        &self,
        key: &str,
        resource: &ObjectResource,
    ) -> Result<StoredObject, StoreError> {
        let metadata =
            ExportMetadata::from_lookup(|name| resource.metadata.get(name).map(String::as_str))
                .map_err(|e| StoreError::Rejected {
                    key: key.to_owned(),
                    detail: format!("gs://{}/{key}: {e}", self.bucket),
                })?;
        Ok(StoredObject {
            etag: resource.generation.clone(),
            metadata,
        })
    }

    fn parse_resource(&self, key: &str, body: &[u8]) -> Result<ObjectResource, StoreError> {
        serde_json::from_slice(body).map_err(|e| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("the object resource is not what the JSON API promises: {e}"),
        })
    }

    /// Turns a non-success answer into the error an operator can act on.
    fn failure(
        &self,
        key: &str,
        permission: &'static str,
        response: &Response<Bytes>,
    ) -> StoreError {
        let status = response.status();
        let message = gcp_auth::google_error(response.body());
        let said = if message.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {message}", status.as_u16())
        };
        let key_owned = key.to_owned();
        match status {
            StatusCode::PRECONDITION_FAILED => StoreError::PreconditionFailed { key: key_owned },
            StatusCode::UNAUTHORIZED => StoreError::BadCredentials {
                key: key_owned,
                detail: format!("{said}; check GCP_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS or the workload's service account"),
            },
            StatusCode::FORBIDDEN => StoreError::PermissionDenied {
                key: key_owned,
                permission,
                resource: format!("gs://{}/{key}", self.bucket),
                detail: said,
            },
            StatusCode::NOT_FOUND => StoreError::Rejected {
                key: key_owned,
                detail: format!("{said}; bucket {:?} does not exist: create it or fix KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", self.bucket),
            },
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                StoreError::Transient { key: key_owned, detail: said }
            }
            _ => StoreError::Rejected { key: key_owned, detail: said },
        }
    }

    /// Whether a 404 is about the object (`None`), not the bucket.
    fn object_missing(response: &Response<Bytes>) -> bool {
        !gcp_auth::google_error(response.body())
            .to_ascii_lowercase()
            .contains("bucket")
    }

    /// A V4 signed `GET` URL for `key`, valid `expires_in` from `now`.
    pub async fn signed_url(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let fail = |detail: String| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("cannot sign a GET URL: {detail}"),
        };
        if let Some(problem) = super::signed_url_lifetime_problem(expires_in, "GCS") {
            return Err(fail(problem));
        }
        let Some(creds) = &self.credentials else {
            // Only reachable with STORAGE_EMULATOR_HOST: emulators check no signature, and
            // without a key there is nothing to sign with.
            return Ok(format!(
                "{}/{}/{}",
                self.endpoint,
                self.bucket,
                encode_path(key)
            ));
        };
        let email = creds.email().await.map_err(|e| e.into_store_error(key))?;
        let endpoint = url::Url::parse(&self.endpoint).map_err(|e| fail(e.to_string()))?;
        let host = super::host_header(endpoint.host_str(), endpoint.port())
            .ok_or_else(|| fail("the endpoint has no host".into()))?;
        let unsigned = V4Request {
            scheme: endpoint.scheme(),
            host: &host,
            bucket: &self.bucket,
            key,
            email: &email,
            at: now,
            expires_in,
        };
        let (url, string_to_sign) = unsigned.prepare();
        let signature = creds
            .sign_blob(string_to_sign.as_bytes())
            .await
            .map_err(|e| e.into_store_error(key))?;
        Ok(format!("{url}&X-Goog-Signature={}", hex(&signature)))
    }
}

/// A V4 signed-URL request (`GET`, only `host` signed, `UNSIGNED-PAYLOAD`).
struct V4Request<'a> {
    scheme: &'a str,
    host: &'a str,
    bucket: &'a str,
    key: &'a str,
    email: &'a str,
    at: SystemTime,
    expires_in: Duration,
}

impl V4Request<'_> {
    /// The URL without its signature, and the string to sign.
    fn prepare(&self) -> (String, String) {
        let (date, timestamp) = utc_stamps(self.at);
        let scope = format!("{date}/auto/storage/goog4_request");
        let path = format!("/{}/{}", self.bucket, encode_path(self.key));
        // Already in sorted order, as the canonical request requires.
        let query = [
            ("X-Goog-Algorithm", "GOOG4-RSA-SHA256".to_owned()),
            ("X-Goog-Credential", format!("{}/{scope}", self.email)),
            ("X-Goog-Date", timestamp.clone()),
            ("X-Goog-Expires", self.expires_in.as_secs().to_string()),
            ("X-Goog-SignedHeaders", "host".to_owned()),
        ]
        .iter()
        .map(|(n, v)| format!("{}={}", percent_encode(n), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let canonical_request = format!(
            "GET\n{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
            self.host
        );
        let string_to_sign = format!(
            "GOOG4-RSA-SHA256\n{timestamp}\n{scope}\n{}",
            Sha256Digest::of(canonical_request.as_bytes()).to_hex()
        );
        (
            format!("{}://{}{path}?{query}", self.scheme, self.host),
            string_to_sign,
        )
    }
}

/// The CRC32C (Castagnoli) of `body` as GCS's JSON API writes it: standard base64 of the four
/// bytes, big-endian.
pub fn crc32c_base64(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(body).to_be_bytes())
}

/// The `multipart/related` upload of `body` under the name `key` (byte for byte): its content
/// type and bytes. The object resource carries the custom metadata and the CRC32C GCS checks
/// the body against.
fn multipart_upload(key: &str, body: &[u8], metadata: &ExportMetadata) -> (String, Vec<u8>) {
    let custom: BTreeMap<&str, String> = metadata.to_pairs().into_iter().collect();
    let resource = serde_json::json!({
        "name": key,
        "contentType": "application/json",
        "metadata": custom,
        "crc32c": crc32c_base64(body),
    });
    // The body would have to hold its own sha256 to hold the boundary.
    let boundary = format!("fallback-{}", Sha256Digest::of(body).to_hex());
    let mut multipart = Vec::with_capacity(body.len() + 512);
    multipart.extend_from_slice(
        format!(
            "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n--{boundary}\r\ncontent-type: application/json\r\n\r\n"
        )
        .as_bytes(),
    );
    multipart.extend_from_slice(body);
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; boundary={boundary}"), multipart)
}

/// Each `/`-separated segment percent-encoded, the slashes kept.
fn encode_path(key: &str) -> String {
    key.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of `at`, in UTC.
fn utc_stamps(at: SystemTime) -> (String, String) {
    let text = humantime::format_rfc3339_seconds(at).to_string(); // 2019-02-01T09:00:00Z
    let compact: String = text.chars().filter(|c| *c != '-' && *c != ':').collect();
    (compact[..8].to_owned(), compact)
}

#[async_trait]
impl ConfigStore for GcsStore {
    fn describe(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let response = self
            .exchange(
                Method::GET,
                key,
                &self.object_api_url(key),
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match response.status() {
            s if s.is_success() => {
                let resource = self.parse_resource(key, response.body())?;
                Ok(Some(self.stored_object(key, &resource)?))
            }
            StatusCode::NOT_FOUND if Self::object_missing(&response) => Ok(None),
            _ => Err(self.failure(key, "storage.objects.get", &response)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError> {
        // Metadata first, then the body of exactly that generation, so the two always belong
        // together; a replacement in between shows as a 404 and is read again.
        for _ in 0..3 {
            let Some(stored) = self.head(key).await? else {
                return Ok(None);
            };
            let url = format!(
                "{}?alt=media&generation={}",
                self.object_api_url(key),
                percent_encode(&stored.etag)
            );
            let response = self
                .exchange(Method::GET, key, &url, Vec::new(), Bytes::new())
                .await?;
            match response.status() {
                s if s.is_success() => {
                    return Ok(Some(FetchedObject {
                        body: response.into_body(),
                        stored,
                    }))
                }
                StatusCode::NOT_FOUND => continue,
                _ => return Err(self.failure(key, "storage.objects.get", &response)),
            }
        }
        Err(StoreError::Transient {
            key: key.to_owned(),
            detail: "the object kept changing while it was read".into(),
        })
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &ExportMetadata,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let generation = match &precondition {
            Precondition::Absent => "0".to_owned(),
            // A GCS tag is a generation number; any other tag cannot be the stored one.
            Precondition::Matches(tag)
                if !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit()) =>
            {
                tag.clone()
            }
            Precondition::Matches(_) => {
                return Err(StoreError::PreconditionFailed {
                    key: key.to_owned(),
                })
            }
        };
        let (content_type, multipart) = multipart_upload(key, &body, metadata);
        // Multipart, not media: fake-gcs-server ignores ifGenerationMatch on media uploads,
        // and one request carries body, metadata and checksum together.
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart&ifGenerationMatch={generation}",
            self.endpoint,
            percent_encode(&self.bucket)
        );
        let headers = vec![
            ("content-type", content_type),
            ("content-length", multipart.len().to_string()),
        ];
        let response = self
            .exchange(Method::POST, key, &url, headers, Bytes::from(multipart))
            .await?;
        if response.status().is_success() {
            Ok(self.parse_resource(key, response.body())?.generation)
        } else {
            Err(self.failure(
                key,
                if precondition == Precondition::Absent {
                    "storage.objects.create"
                } else {
                    "storage.objects.create and storage.objects.delete (to replace)"
                },
                &response,
            ))
        }
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        self.signed_url(key, expires_in, now).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let response = self
            .exchange(
                Method::DELETE,
                key,
                &self.object_api_url(key),
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND if Self::object_missing(&response) => Ok(()),
            _ => Err(self.failure(key, "storage.objects.delete", &response)),
        }
    }

    async fn credential_source(&self) -> Result<String, StoreError> {
        let described = match &self.credentials {
            Some(c) => {
                let who = c.describe().await.map_err(|e| e.into_store_error(""))?;
                if self.emulator {
                    format!("{who}, used for signing only (STORAGE_EMULATOR_HOST: requests unauthenticated)")
                } else {
                    // Proves the credentials work: a token is only issued for a valid key.
                    c.access_token().await.map_err(|e| e.into_store_error(""))?;
                    format!("{who}, access token obtained")
                }
            }
            None => {
                "none: STORAGE_EMULATOR_HOST is set, requests unauthenticated and URLs unsigned"
                    .into()
            }
        };
        Ok(described)
    }

    async fn store_time(&self) -> Result<Option<SystemTime>, StoreError> {
        let url = format!(
            "{}/storage/v1/b/{}",
            self.endpoint,
            percent_encode(&self.bucket)
        );
        let response = self
            .exchange(Method::GET, "", &url, Vec::new(), Bytes::new())
            .await?;
        Ok(response
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .and_then(super::parse_http_date))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/gcs-v4-simple-get.json")).unwrap()
    }

    /// Google's conformance case "Simple GET", to the last hex digit of the RSA signature.
    #[tokio::test]
    async fn signs_the_conformance_simple_get_exactly() {
        let f = fixture();
        let store = GcsStore::new(
            f["bucket"].as_str().unwrap().into(),
            GcsSettings {
                service_account_json: Some(Secret::new(f["service_account"].to_string())),
                ..GcsSettings::default()
            },
        )
        .unwrap();
        let at = humantime::parse_rfc3339(f["timestamp"].as_str().unwrap()).unwrap();
        let url = store
            .signed_url(f["object"].as_str().unwrap(), Duration::from_secs(10), at)
            .await
            .unwrap();
        assert_eq!(url, f["expectedUrl"].as_str().unwrap());
    }

    #[test]
    fn emulator_host_takes_host_port_or_url() {
        let s = |h: &str| GcsSettings {
            emulator_host: Some(h.into()),
            ..GcsSettings::default()
        };
        assert_eq!(
            s("127.0.0.1:4443").emulator_endpoint().as_deref(),
            Some("http://127.0.0.1:4443")
        );
        assert_eq!(
            s("https://gcs.local/").emulator_endpoint().as_deref(),
            Some("https://gcs.local")
        );
        assert_eq!(s(" ").emulator_endpoint(), None);
    }

    #[test]
    fn object_names_are_encoded_whole_in_the_api_and_by_segment_in_urls() {
        let store = GcsStore::new(
            "b".into(),
            GcsSettings {
                emulator_host: Some("127.0.0.1:1".into()),
                ..GcsSettings::default()
            },
        )
        .unwrap();
        assert_eq!(
            store.object_api_url("p/3.4 x/config.json"),
            "http://127.0.0.1:1/storage/v1/b/b/o/p%2F3.4%20x%2Fconfig.json"
        );
        assert_eq!(
            store.object_api_url("/p//x"),
            "http://127.0.0.1:1/storage/v1/b/b/o/%2Fp%2F%2Fx"
        );
        assert_eq!(encode_path("p/a&b/c"), "p/a%26b/c");
        assert_eq!(encode_path("/p//c"), "/p//c");
    }

    #[test]
    fn uploads_carry_the_crc32c_gcs_checks_and_the_name_byte_for_byte() {
        // RFC 3720's check value: CRC32C("123456789") = 0xE3069283.
        assert_eq!(crc32c_base64(b"123456789"), "4waSgw==");
        let body = br#"{"_format_version":"3.0"}"#;
        let metadata = ExportMetadata {
            sha256: Sha256Digest::of(body),
            revision: 3,
            node_id: "n".into(),
            exported_at: "2026-11-26T10:00:00.000Z".into(),
            signature: None,
            key_id: None,
        };
        let (content_type, bytes) = multipart_upload("//kong//3.4/config.json", body, &metadata);
        let boundary = content_type
            .strip_prefix("multipart/related; boundary=")
            .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 4, "{text}");
        let resource_json = parts[1].split("\r\n\r\n").nth(1).unwrap().trim_end();
        let resource: serde_json::Value = serde_json::from_str(resource_json).unwrap();
        assert_eq!(resource["name"], "//kong//3.4/config.json");
        assert_eq!(resource["crc32c"], crc32c_base64(body));
        assert_eq!(resource["metadata"]["revision"], "3");
        assert_eq!(
            parts[2].split_once("\r\n\r\n").unwrap().1,
            format!("{}\r\n", std::str::from_utf8(body).unwrap())
        );
    }

    #[test]
    fn debug_output_shows_no_key() {
        let f = fixture();
        let settings = GcsSettings {
            service_account_json: Some(Secret::new(f["service_account"].to_string())),
            ..GcsSettings::default()
        };
        let store = GcsStore::new("b".into(), settings.clone()).unwrap();
        let shown = format!("{store:?} {settings:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("MIIE"),
            "{shown}"
        );
    }
}
