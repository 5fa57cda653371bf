//! Where exports go: one small trait, one module per backend.
//!
//! Every backend passes the same behaviour suite (`wasm-tests/tests/storage_suite.rs`), so the
//! exporter and the signer never need to know which one they talk to.

pub mod aws_credentials;
pub mod azure;
pub mod azure_auth;
pub mod file;
pub mod gcp_auth;
pub mod gcs;
pub mod s3;

pub use azure::{AzureSettings, AzureStore};
pub use file::{FileStore, ObjectUrlError, UrlSigner};
pub use gcs::{GcsSettings, GcsStore};
pub use s3::{S3Store, ServerSideEncryption};

use crate::secret::Secret;
use crate::transport::{self, HttpClient, SendError};
use async_trait::async_trait;
use bytes::Bytes;
use fallback_core::export::{ExportMetadata, KeyError, PrefixStyle, StoredObject};
use http_body_util::Full;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The longest lifetime S3 and GCS accept for a signed URL (both: 7 days).
pub const MAX_SIGNED_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a signed URL cannot have this lifetime on `store` ("S3", "GCS"), if it cannot.
pub fn signed_url_lifetime_problem(expires_in: Duration, store: &str) -> Option<String> {
    (expires_in.is_zero() || expires_in > MAX_SIGNED_URL_TTL)
        .then(|| format!("lifetime {expires_in:?} is outside {store}'s 1 s to 7 days"))
}

/// A write's precondition, the store-side half of the compare-and-swap in
/// [`fallback_core::export::plan_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Only if nothing is stored under the key (`If-None-Match: *`).
    Absent,
    /// Only if the stored object still has this tag (`If-Match`).
    Matches(String),
}

/// Why a storage operation failed. Messages name the object and what to do; they never carry
/// credentials or signatures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's precondition did not hold: someone else wrote first.
    #[error("{key}: another writer changed the object first (precondition failed)")]
    PreconditionFailed {
        /// The object key.
        key: String,
    },
    /// The credentials lack a permission.
    #[error("{key}: permission denied: the credentials in use lack {permission} on {resource} ({detail}); grant it or use credentials that have it")]
    PermissionDenied {
        /// The object key.
        key: String,
        /// The permission, in the store's own terms (e.g. `s3:PutObject`).
        permission: &'static str,
        /// What it applies to (e.g. `bucket/key`).
        resource: String,
        /// What the store said.
        detail: String,
    },
    /// The store refused the credentials themselves or the request's signature.
    #[error("{key}: the store rejected the credentials: {detail}")]
    BadCredentials {
        /// The object key.
        key: String,
        /// What the store said and what to check.
        detail: String,
    },
    /// A failure worth retrying: network error, timeout, 5xx, throttling.
    #[error("{key}: storage temporarily unavailable: {detail}")]
    Transient {
        /// The object key.
        key: String,
        /// What happened.
        detail: String,
    },
    /// Any other refusal; retrying the same request will not help.
    #[error("{key}: the store refused the request: {detail}")]
    Rejected {
        /// The object key.
        key: String,
        /// What the store said.
        detail: String,
    },
}

impl StoreError {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

/// An object read back, with what is known of it.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The bytes.
    pub body: Bytes,
    /// Tag and metadata.
    pub stored: StoredObject,
}

/// An object opened to be served: what is known of it, and exactly those bytes.
#[derive(Debug)]
pub struct OpenedObject {
    /// Tag and metadata.
    pub stored: StoredObject,
    /// The body's length in bytes.
    pub size: u64,
    /// The body.
    pub body: ObjectBody,
}

/// The bytes of an [`OpenedObject`].
#[derive(Debug)]
pub enum ObjectBody {
    /// Already in memory.
    Bytes(Bytes),
    /// An open file, read while it is sent (`file://`).
    File(std::fs::File),
}

/// The operations Fallback needs from an object store.
#[async_trait]
pub trait ConfigStore: Send + Sync + fmt::Debug {
    /// A URL-like description for messages (never with credentials).
    fn describe(&self) -> String;

    /// The tag and metadata of `key`, or `None` when nothing is stored there.
    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError>;

    /// The object under `key`, or `None`.
    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError>;

    /// The object under `key`, opened to be served, or `None`. The default reads it whole
    /// with [`ConfigStore::get`]; `file://` hands out the open file, read while it is sent.
    async fn open(&self, key: &str) -> Result<Option<OpenedObject>, StoreError> {
        Ok(self.get(key).await?.map(|object| OpenedObject {
            size: object.body.len() as u64,
            stored: object.stored,
            body: ObjectBody::Bytes(object.body),
        }))
    }

    /// Writes `body` under `key` with `metadata`, only if `precondition` holds. Returns the new tag.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &ExportMetadata,
        precondition: Precondition,
    ) -> Result<String, StoreError>;

    /// A URL granting a plain `GET` of exactly `key` until `now + expires_in`, to hand to a
    /// filter that holds no credentials. S3: a SigV4 presigned URL; GCS: a V4 signed URL;
    /// Azure: a read-only SAS of the one blob;
    /// `file://`: a URL of the companion's own object route, HMAC-signed (see
    /// [`file::UrlSigner`]).
    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError>;

    /// Removes `key` (nothing stored is not an error); `doctor` cleans its probe object with it.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Where the credentials in use come from, resolving them if that needs a request (a token
    /// endpoint, STS, a metadata server). Never shows a secret.
    async fn credential_source(&self) -> Result<String, StoreError> {
        Ok("none needed".into())
    }

    /// The store's clock, read from the `Date` of a cheap request, or `None` for a local store.
    async fn store_time(&self) -> Result<Option<SystemTime>, StoreError> {
        Ok(None)
    }
}

/// How long one request to an HTTP object store may take, answer included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Sends one request to an HTTP object store (S3, GCS), reporting its failures alike for every
/// such backend: a request that cannot be built is refused, and a store that does not answer is
/// a transient failure naming `endpoint` (for messages: never with credentials), because that
/// is what the operator checks first.
pub(crate) async fn send_to_store(
    client: &HttpClient,
    builder: http::request::Builder,
    body: Bytes,
    key: &str,
    endpoint: impl FnOnce() -> String,
) -> Result<http::Response<Bytes>, StoreError> {
    let request = builder
        .body(Full::new(body))
        .map_err(|e| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("cannot build the request: {e}"),
        })?;
    transport::send(client, request, REQUEST_DEADLINE)
        .await
        .map_err(|e| StoreError::Transient {
            key: key.to_owned(),
            detail: match e {
                SendError::Network(_) | SendError::Timeout(_) => {
                    format!("{} unreachable: {e}", endpoint())
                }
                SendError::TooLarge => e.to_string(),
            },
        })
}

/// The `Host` header for a URL's host and port (`None`: the URL has no host). The port is
/// named only when the URL names it, as HTTP clients send it: signatures cover this header,
/// so the signed value must be the one that goes on the wire.
pub(crate) fn host_header(host: Option<&str>, port: Option<u16>) -> Option<String> {
    let host = host?;
    Some(match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Parses an HTTP `Date` (IMF-fixdate, `Thu, 26 Nov 2026 10:24:17 GMT`).
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe as u64 * 365 + yoe as u64 / 4 - yoe as u64 / 100 + doy;
    let days = era * 146_097 + doe as i64 - 719_468;
    let secs = days * 86_400 + (*h * 3600 + *m * 60 + *s) as i64;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A parsed `KONG_CLUSTER_FALLBACK_CONFIG_STORAGE` value.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `s3://bucket/prefix`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// `gcs://bucket/prefix`.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// The start of object names, byte for byte as written after `bucket/` (GCS names
        /// may begin with `/` or hold `//`).
        prefix: String,
    },
    /// `azure://container/prefix`: Azure Blob Storage.
    Azure {
        /// Container name.
        container: String,
        /// Blob name prefix.
        prefix: String,
    },
    /// `file:///dir/prefix`: the embedded default; objects are files below `dir`.
    File {
        /// Root directory; the prefix is part of it.
        root: PathBuf,
    },
}

/// A storage URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("storage URL {url:?} {problem}; expected s3://bucket/prefix, gcs://bucket/prefix, azure://container/prefix or file:///absolute/dir")]
pub struct StorageUrlError {
    url: String,
    problem: String,
}

impl StorageUrl {
    /// Parses `s3://bucket/prefix`, `gcs://bucket/prefix` (also `gs://`),
    /// `azure://container/prefix` or `file:///dir`.
    pub fn parse(text: &str) -> Result<Self, StorageUrlError> {
        let fail = |problem: &str| StorageUrlError {
            url: text.to_owned(),
            problem: problem.to_owned(),
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| fail("has no scheme"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "s3" | "gcs" | "gs" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(fail("names no bucket"));
                }
                if !bucket.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
                }) {
                    return Err(fail(
                        "has a bucket name with characters buckets cannot have",
                    ));
                }
                let bucket = bucket.to_owned();
                Ok(if scheme.eq_ignore_ascii_case("s3") {
                    StorageUrl::S3 {
                        bucket,
                        prefix: prefix.trim_matches('/').to_owned(),
                    }
                } else {
                    StorageUrl::Gcs {
                        bucket,
                        prefix: prefix.to_owned(),
                    }
                })
            }
            "azure" => {
                let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if !azure_container_name(container) {
                    return Err(fail(
                        "names no valid container (3 to 63 lowercase letters, digits and single hyphens)",
                    ));
                }
                Ok(StorageUrl::Azure {
                    container: container.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(fail(
                        "is not an absolute path (use three slashes: file:///dir)",
                    ));
                }
                if rest.split('/').any(|s| s == "..") {
                    return Err(fail("contains \"..\""));
                }
                Ok(StorageUrl::File {
                    root: PathBuf::from(rest),
                })
            }
            _ => Err(fail("has an unsupported scheme")),
        }
    }

    /// The key prefix objects are stored under (empty for `file://`, whose root holds it).
    pub fn prefix(&self) -> &str {
        match self {
            StorageUrl::S3 { prefix, .. }
            | StorageUrl::Gcs { prefix, .. }
            | StorageUrl::Azure { prefix, .. } => prefix,
            StorageUrl::File { .. } => "",
        }
    }

    /// How [`StorageUrl::prefix`] starts object names: byte for byte on GCS, by segments on
    /// S3 (empty segments dropped, as Fallback always did there).
    pub fn prefix_style(&self) -> PrefixStyle {
        match self {
            StorageUrl::Gcs { .. } => PrefixStyle::Verbatim,
            StorageUrl::S3 { .. } | StorageUrl::Azure { .. } | StorageUrl::File { .. } => {
                PrefixStyle::Segments
            }
        }
    }

    /// The object `name` below this URL's prefix.
    pub fn key_of(&self, name: &str) -> Result<String, KeyError> {
        fallback_core::export::prefixed_key(self.prefix_style(), self.prefix(), name)
    }

    /// `<prefix>/<version>/config.json` for this URL.
    pub fn config_key(&self, version: &str) -> Result<String, KeyError> {
        fallback_core::export::object_key_in(self.prefix_style(), self.prefix(), version)
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StorageUrl::Gcs { bucket, prefix } => write!(f, "gcs://{bucket}/{prefix}"),
            StorageUrl::Azure { container, prefix } => write!(f, "azure://{container}/{prefix}"),
            StorageUrl::File { root } => write!(f, "file://{}", root.display()),
        }
    }
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageUrl({self})")
    }
}

/// Credentials and addressing for S3 and S3-compatible stores.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`; empty: credentials come from AWS's default chain (environment,
    /// profile files, web identity, ECS, IMDSv2), refreshed before they expire.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<Secret>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: String,
    /// `AWS_CONFIG_STORAGE_ENDPOINT`: an S3-compatible endpoint, addressed path-style.
    pub endpoint: Option<String>,
    /// Addresses buckets as `endpoint/bucket/key` even on AWS.
    pub force_path_style: bool,
    /// `KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG`: server-side encryption of uploads.
    pub server_side_encryption: Option<ServerSideEncryption>,
}

/// Settings of every backend that needs some; each is used only for its own scheme.
#[derive(Clone, Debug, Default)]
pub struct BackendSettings {
    /// For `s3://`.
    pub s3: Option<S3Settings>,
    /// For `gcs://`.
    pub gcs: Option<GcsSettings>,
    /// For `azure://`.
    pub azure: Option<AzureSettings>,
}

/// Opens the store a URL names.
pub fn open(url: &StorageUrl, settings: BackendSettings) -> anyhow::Result<Box<dyn ConfigStore>> {
    open_with_url_signer(url, settings, None)
}

/// Opens the store a URL names; a `file://` store hands out URLs signed by `url_signer`
/// (the companion's own object route).
pub fn open_with_url_signer(
    url: &StorageUrl,
    settings: BackendSettings,
    url_signer: Option<std::sync::Arc<UrlSigner>>,
) -> anyhow::Result<Box<dyn ConfigStore>> {
    Ok(match url {
        StorageUrl::File { root } => {
            let store = file::FileStore::new(root.clone());
            Box::new(match url_signer {
                Some(signer) => store.with_url_signer(signer),
                None => store,
            })
        }
        StorageUrl::S3 { bucket, .. } => {
            let s3 = settings
                .s3
                .ok_or_else(|| anyhow::anyhow!("{url}: S3 storage needs a region (AWS_REGION)"))?;
            Box::new(s3::S3Store::new(bucket.clone(), s3)?)
        }
        StorageUrl::Gcs { bucket, .. } => {
            let gcs = settings.gcs.unwrap_or_default();
            Box::new(gcs::GcsStore::new(bucket.clone(), gcs)?)
        }
        StorageUrl::Azure { container, .. } => Box::new(azure::AzureStore::new(
            container.clone(),
            settings.azure.unwrap_or_default(),
        )?),
    })
}

/// Azure's container name rule: 3 to 63 characters, lowercase letters, digits and hyphens,
/// starting and ending with a letter or digit, no two hyphens in a row.
fn azure_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes() {
        assert_eq!(
            StorageUrl::parse("s3://my-bucket/kong/backup/").unwrap(),
            StorageUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "kong/backup".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("s3://b").unwrap(),
            StorageUrl::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("gcs://b/p").unwrap(),
            StorageUrl::Gcs {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
        let azure = StorageUrl::parse("azure://kong-backup/dp/fallback/").unwrap();
        assert_eq!(
            azure,
            StorageUrl::Azure {
                container: "kong-backup".into(),
                prefix: "dp/fallback".into()
            }
        );
        assert_eq!(azure.prefix(), "dp/fallback");
        assert_eq!(azure.to_string(), "azure://kong-backup/dp/fallback");
        assert_eq!(
            StorageUrl::parse("gs://b//p//q/").unwrap(),
            StorageUrl::Gcs {
                bucket: "b".into(),
                prefix: "/p//q/".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("file:///var/lib/fallback").unwrap(),
            StorageUrl::File {
                root: "/var/lib/fallback".into()
            }
        );
    }

    #[test]
    fn gcs_keeps_object_names_byte_for_byte_and_s3_keeps_its_segments() {
        let key = |url: &str| StorageUrl::parse(url).unwrap().config_key("3.4").unwrap();
        assert_eq!(key("gcs://b/kong"), "kong/3.4/config.json");
        assert_eq!(key("gcs://b/kong/"), "kong/3.4/config.json");
        assert_eq!(key("gcs://b"), "3.4/config.json");
        assert_eq!(key("gcs://b//kong"), "/kong/3.4/config.json");
        assert_eq!(key("gcs://b/a//b"), "a//b/3.4/config.json");
        assert_eq!(key("s3://b//a//b/"), "a/b/3.4/config.json");
        assert_eq!(key("file:///var/lib/x"), "3.4/config.json");
        let url = StorageUrl::parse("gcs://b//kong").unwrap();
        assert_eq!(url.to_string(), "gcs://b//kong");
        assert_eq!(
            url.key_of(".fallback-doctor/n.json").unwrap(),
            "/kong/.fallback-doctor/n.json"
        );
    }

    #[test]
    fn reads_http_dates() {
        assert_eq!(
            parse_http_date("Thu, 26 Nov 2026 10:24:17 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_688_657))
        );
        assert_eq!(
            parse_http_date("Fri, 24 May 2013 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600))
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn rejects_what_cannot_be_a_store_with_the_url_in_the_message() {
        for bad in [
            "bucket/prefix",
            "s3:///p",
            "s3://Bad_Bucket!/p",
            "file://relative",
            "ftp://x/y",
            "file:///a/../b",
            "azure://",
            "azure://ab/p",
            "azure://Upper/p",
            "azure://a--b/p",
        ] {
            let err = StorageUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("expected s3://"), "{err}");
        }
    }
}
