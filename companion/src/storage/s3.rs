//! `s3://bucket/prefix`: Amazon S3 and S3-compatible stores (MinIO, SeaweedFS, Ceph…), every
//! request signed with SigV4 by `aws-sigv4`.
//!
//! With `AWS_CONFIG_STORAGE_ENDPOINT` set, buckets are addressed path-style on that endpoint, as
//! S3-compatible stores expect; otherwise virtual-hosted-style on `s3.<region>.amazonaws.com`.

use super::aws_credentials::AwsCredentials;
use super::{ConfigStore, FetchedObject, Precondition, S3Settings, StoreError};
use crate::secret::Secret;
use crate::transport::{self, HttpClient};
use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningParams, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::{ExportMetadata, StoredObject};
use fallback_core::wire::percent_encode;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use std::fmt;
use std::time::{Duration, SystemTime};

const META_PREFIX: &str = "x-amz-meta-";
/// The longest lifetime S3 accepts for a presigned URL.
pub const MAX_PRESIGN_TTL: Duration = super::MAX_SIGNED_URL_TTL;

/// An S3 bucket.
pub struct S3Store {
    bucket: String,
    settings: S3Settings,
    credentials: AwsCredentials,
    base: BaseUrl,
    client: HttpClient,
}

/// How object URLs are formed.
#[derive(Debug, Clone)]
enum BaseUrl {
    /// `<endpoint>/<bucket>/<key>`
    PathStyle(String),
    /// `https://<bucket>.s3.<region>.amazonaws.com/<key>`
    VirtualHosted(String),
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("base", &self.base)
            .field("settings", &self.settings)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl S3Store {
    /// A store for `bucket` with the given credentials and addressing.
    pub fn new(bucket: String, settings: S3Settings) -> anyhow::Result<Self> {
        let base = match &settings.endpoint {
            Some(endpoint) => {
                let parsed = url::Url::parse(endpoint).map_err(|e| {
                    anyhow::anyhow!(
                        "AWS_CONFIG_STORAGE_ENDPOINT {endpoint:?} is not a URL ({e}); use e.g. http://minio:9000"
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    anyhow::bail!(
                        "AWS_CONFIG_STORAGE_ENDPOINT {endpoint:?} must be an http:// or https:// URL with a host"
                    );
                }
                BaseUrl::PathStyle(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
            }
            // Dots in a bucket name break the TLS wildcard certificate of virtual-hosted style.
            None if settings.force_path_style || bucket.contains('.') => {
                BaseUrl::PathStyle(format!("{}/{bucket}", aws_endpoint(&settings.region)))
            }
            // us-east-1 uses AWS's global endpoint `s3.amazonaws.com`, its own default for that
            // region (and the host of AWS's documented presigning example).
            None if settings.region == "us-east-1" => {
                BaseUrl::VirtualHosted(format!("https://{bucket}.s3.amazonaws.com"))
            }
            None => BaseUrl::VirtualHosted(format!(
                "https://{bucket}.s3.{}.amazonaws.com",
                settings.region
            )),
        };
        let credentials = if settings.access_key_id.is_empty() {
            AwsCredentials::default_chain(&settings.region)
        } else {
            AwsCredentials::fixed(
                &settings.access_key_id,
                settings.secret_access_key.expose(),
                settings.session_token.as_ref().map(Secret::expose),
            )
        };
        Ok(Self {
            bucket,
            settings,
            credentials,
            base,
            client: transport::client(),
        })
    }

    /// The URL of `key`, each path segment percent-encoded as S3 expects.
    pub fn object_url(&self, key: &str) -> String {
        let base = match &self.base {
            BaseUrl::PathStyle(b) | BaseUrl::VirtualHosted(b) => b,
        };
        let mut url = base.clone();
        for segment in key.split('/') {
            url.push('/');
            url.push_str(&percent_encode(segment));
        }
        url
    }

    fn resource(&self, key: &str) -> String {
        format!("{}/{key}", self.bucket)
    }

    /// Credentials valid for a while yet, or the error saying where none were found.
    async fn credentials(&self, key: &str) -> Result<Credentials, StoreError> {
        self.credentials
            .current()
            .await
            .map_err(|e| StoreError::BadCredentials {
                key: key.to_owned(),
                detail: e.to_string(),
            })
    }

    /// Signs and sends one request; `payload` is the body (empty for HEAD/GET). Returns the
    /// response and what it was signed with (for messages).
    async fn exchange(
        &self,
        method: Method,
        key: &str,
        headers: Vec<(String, String)>,
        payload: Bytes,
    ) -> Result<(Response<Bytes>, SignedWith), StoreError> {
        let url = self.object_url(key);
        self.exchange_url(method, key, &url, headers, payload).await
    }

    async fn exchange_url(
        &self,
        method: Method,
        key: &str,
        url: &str,
        mut headers: Vec<(String, String)>,
        payload: Bytes,
    ) -> Result<(Response<Bytes>, SignedWith), StoreError> {
        let credentials = self.credentials(key).await?;
        let uri: http::Uri = url.parse().map_err(|e| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("cannot form a request URL: {e}"),
        })?;
        let host = match super::host_header(uri.host(), uri.port_u16()) {
            Some(host) => host,
            None => unreachable_host(key)?,
        };
        headers.push(("host".into(), host));
        let payload_hash = Sha256Digest::of(&payload).to_hex();
        let signing_headers = self
            .sign(&credentials, method.as_str(), url, &headers, &payload_hash)
            .map_err(|detail| StoreError::Rejected {
                key: key.to_owned(),
                detail,
            })?;

        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers.iter().chain(signing_headers.iter()) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = super::send_to_store(&self.client, builder, payload, key, || {
            self.endpoint_for_messages()
        })
        .await?;
        let signed_with = SignedWith {
            access_key_id: credentials.access_key_id().to_owned(),
            session_token: credentials.session_token().is_some(),
        };
        Ok((response, signed_with))
    }

    /// SigV4 parameters for this store's region at `time`, with the settings every S3
    /// signature needs; `adjust` sets what differs between signed requests and presigned URLs
    /// (where the signature goes, how long it lasts, the payload checksum).
    fn signing_params<'a>(
        &'a self,
        identity: &'a Identity,
        time: SystemTime,
        adjust: impl FnOnce(&mut SigningSettings),
    ) -> Result<SigningParams<'a>, String> {
        let mut settings = SigningSettings::default();
        // S3 signs the path as sent: no double encoding, no dot-segment normalisation.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        adjust(&mut settings);
        Ok(v4::SigningParams::builder()
            .identity(identity)
            .region(&self.settings.region)
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into())
    }

    /// The SigV4 headers for a request (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
    /// and `x-amz-security-token` with a session token).
    fn sign(
        &self,
        credentials: &Credentials,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        payload_hash: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let identity: Identity = credentials.clone().into();
        let params = self
            .signing_params(&identity, SystemTime::now(), |settings| {
                settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            })
            .map_err(|e| format!("cannot sign the request: {e}"))?;
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Precomputed(payload_hash.to_owned()),
        )
        .map_err(|e| format!("cannot sign the request: {e}"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into_parts();
        let (signed_headers, _) = instructions.into_parts();
        Ok(signed_headers
            .into_iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned()))
            .collect())
    }

    /// A presigned `GET` URL for `key` (SigV4 in the query string, `UNSIGNED-PAYLOAD`, only
    /// `host` signed), valid for `expires_in` from `now`. Anyone holding it can read that one
    /// object, with this store's credentials, until it expires.
    pub async fn presign(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let credentials = self.credentials(key).await?;
        self.presign_with(&credentials, key, expires_in, now)
    }

    fn presign_with(
        &self,
        credentials: &Credentials,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let fail = |detail: String| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("cannot presign a GET URL: {detail}"),
        };
        if let Some(problem) = super::signed_url_lifetime_problem(expires_in, "S3") {
            return Err(fail(problem));
        }
        let url = self.object_url(key);
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
        let host = super::host_header(uri.host(), uri.port_u16())
            .ok_or_else(|| fail("the storage URL has no host".into()))?;
        let identity: Identity = credentials.clone().into();
        let params = self
            .signing_params(&identity, now, |settings| {
                settings.signature_location = SignatureLocation::QueryParams;
                settings.expires_in = Some(expires_in);
                settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
            })
            .map_err(fail)?;
        let headers = [("host", host.as_str())];
        let signable = SignableRequest::new(
            "GET",
            &url,
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| fail(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| fail(e.to_string()))?
            .into_parts();
        let (_, query) = instructions.into_parts();
        let mut signed = url;
        for (i, (name, value)) in query.iter().enumerate() {
            signed.push(if i == 0 { '?' } else { '&' });
            signed.push_str(&percent_encode(name));
            signed.push('=');
            signed.push_str(&percent_encode(value));
        }
        Ok(signed)
    }

    fn secret_hint(&self) -> &'static str {
        match self.credentials {
            AwsCredentials::Static(_) => "check AWS_SECRET_ACCESS_KEY",
            AwsCredentials::Chain(_) => {
                "check the credentials the AWS default chain found (profile, web identity, instance role)"
            }
        }
    }

    fn endpoint_for_messages(&self) -> String {
        match &self.settings.endpoint {
            Some(e) => transport::redact_url(e),
            None => format!("S3 in {}", self.settings.region),
        }
    }

    fn stored_object(&self, key: &str, headers: &HeaderMap) -> Result<StoredObject, StoreError> {
        let etag = header(headers, "etag").unwrap_or_default().to_owned();
        let metadata =
            ExportMetadata::from_lookup(|name| header(headers, &format!("{META_PREFIX}{name}")))
                .map_err(|e| StoreError::Rejected {
                    key: key.to_owned(),
                    detail: format!("s3://{}: {e}", self.resource(key)),
                })?;
        Ok(StoredObject { etag, metadata })
    }

    /// Turns a non-success answer into the error an operator can act on.
    fn failure(
        &self,
        key: &str,
        operation: Operation,
        response: &Response<Bytes>,
        signed_with: &SignedWith,
    ) -> StoreError {
        let access_key_id = signed_with.access_key_id.as_str();
        // S3-compatible stores whose identities are static keys (SeaweedFS's s3.json, MinIO
        // without STS) refuse any request carrying a session token: say so, or the operator
        // hunts for a missing permission or a wrong key.
        let token_hint = if signed_with.session_token && self.settings.endpoint.is_some() {
            format!(
                "; the request carried the session token of temporary credentials{}: a store with only static identities refuses those, give it keys it issued (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
                match self.credentials {
                    AwsCredentials::Static(_) => " (AWS_SESSION_TOKEN)",
                    AwsCredentials::Chain(_) => " found by the AWS default chain",
                }
            )
        } else {
            String::new()
        };
        let secret_hint = self.secret_hint();
        let status = response.status();
        let body = String::from_utf8_lossy(response.body());
        let code = xml_field(&body, "Code").unwrap_or_default();
        let message = xml_field(&body, "Message").unwrap_or_default();
        let said = if code.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else if message.is_empty() {
            format!("HTTP {} {code}", status.as_u16())
        } else {
            format!("HTTP {} {code}: {message}", status.as_u16())
        };
        let key_owned = key.to_owned();
        match (status, code.as_str()) {
            (StatusCode::PRECONDITION_FAILED, _) | (StatusCode::CONFLICT, "ConditionalRequestConflict") => {
                StoreError::PreconditionFailed { key: key_owned }
            }
            (_, "SignatureDoesNotMatch") => StoreError::BadCredentials {
                key: key_owned,
                detail: format!(
                    "{said}; the secret access key does not match access key {access_key_id}: {secret_hint}"
                ),
            },
            (_, "InvalidAccessKeyId") => StoreError::BadCredentials {
                key: key_owned,
                detail: format!(
                    "{said}; the store knows no access key {access_key_id}: check AWS_ACCESS_KEY_ID (or the credentials of the AWS default chain){token_hint}"
                ),
            },
            (_, "RequestTimeTooSkewed") => StoreError::BadCredentials {
                key: key_owned,
                detail: format!("{said}; this host's clock differs too much from the store's: fix the clock (NTP)"),
            },
            (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => StoreError::BadCredentials {
                key: key_owned,
                detail: format!("{said}; the session token of access key {access_key_id} is not valid: renew AWS_SESSION_TOKEN (or the credentials of the AWS default chain)"),
            },
            (StatusCode::FORBIDDEN, _) => StoreError::PermissionDenied {
                key: key_owned,
                permission: operation.permission(),
                resource: format!("arn:aws:s3:::{}", self.resource(key)),
                detail: format!(
                    "{said} for access key {access_key_id}{}{token_hint}",
                    if operation == Operation::Head {
                        "; S3 also answers 403 for a missing object when s3:ListBucket is not granted"
                    } else {
                        ""
                    }
                ),
            },
            (_, "NoSuchBucket") => StoreError::Rejected {
                key: key_owned,
                detail: format!("{said}; bucket {:?} does not exist: create it or fix KONG_CLUSTER_FALLBACK_CONFIG_STORAGE", self.bucket),
            },
            (StatusCode::MOVED_PERMANENTLY | StatusCode::TEMPORARY_REDIRECT, _) => StoreError::Rejected {
                key: key_owned,
                detail: format!(
                    "{said}; the bucket is in region {}, not {}: set AWS_REGION",
                    header(response.headers(), "x-amz-bucket-region").unwrap_or("(unknown)"),
                    self.settings.region
                ),
            },
            (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || code == "SlowDown" => {
                StoreError::Transient { key: key_owned, detail: said }
            }
            _ => StoreError::Rejected { key: key_owned, detail: said },
        }
    }
}

/// What a request was signed with, for error messages (never the secret nor the token).
#[derive(Debug, Clone)]
struct SignedWith {
    access_key_id: String,
    session_token: bool,
}

/// Server-side encryption (and storage class) of every upload, as Kong's
/// `cluster_fallback_export_s3_config` offers: the JSON names of S3's `PutObject` parameters,
/// e.g. `{"ServerSideEncryption":"aws:kms","SSEKMSKeyId":"arn:aws:kms:..."}`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSideEncryption {
    headers: Vec<(String, String)>,
}

impl fmt::Debug for ServerSideEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The KMS encryption context may hold values an operator considers private.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ServerSideEncryption")
            .field("headers", &names)
            .finish()
    }
}

impl ServerSideEncryption {
    /// Parses the JSON object; unknown names and wrong types are refused with what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        const ACCEPTED: &str = "ServerSideEncryption (AES256, aws:kms, aws:kms:dsse), SSEKMSKeyId, SSEKMSEncryptionContext, BucketKeyEnabled, StorageClass";
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("is not JSON ({e}); expected an object such as {{\"ServerSideEncryption\":\"aws:kms\",\"SSEKMSKeyId\":\"...\"}}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| "is not a JSON object".to_owned())?;
        let mut headers = Vec::new();
        for (name, value) in object {
            let header = match name.as_str() {
                "ServerSideEncryption" => "x-amz-server-side-encryption",
                "SSEKMSKeyId" => "x-amz-server-side-encryption-aws-kms-key-id",
                "SSEKMSEncryptionContext" => "x-amz-server-side-encryption-context",
                "BucketKeyEnabled" => "x-amz-server-side-encryption-bucket-key-enabled",
                "StorageClass" => "x-amz-storage-class",
                other => {
                    return Err(format!(
                        "names {other:?}, which is not supported; use {ACCEPTED}"
                    ))
                }
            };
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) if name == "BucketKeyEnabled" => b.to_string(),
                _ => return Err(format!("{name} must be a string")),
            };
            if name == "ServerSideEncryption"
                && !matches!(text.as_str(), "AES256" | "aws:kms" | "aws:kms:dsse")
            {
                return Err(format!(
                    "ServerSideEncryption {text:?} is not one of AES256, aws:kms, aws:kms:dsse"
                ));
            }
            if http::HeaderValue::from_str(&text).is_err() {
                return Err(format!(
                    "{name} holds characters an HTTP header cannot carry"
                ));
            }
            headers.push((header.to_owned(), text));
        }
        if headers.iter().any(|(n, _)| n.contains("kms"))
            && !headers
                .iter()
                .any(|(n, v)| n == "x-amz-server-side-encryption" && v.starts_with("aws:kms"))
        {
            return Err("SSEKMSKeyId, SSEKMSEncryptionContext and BucketKeyEnabled need \"ServerSideEncryption\":\"aws:kms\"".into());
        }
        Ok(Self { headers })
    }

    /// The request headers of an upload.
    pub fn headers(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.headers.iter().cloned()
    }
}

/// AWS's S3 endpoint for `region`: the global `s3.amazonaws.com` for us-east-1, its default.
fn aws_endpoint(region: &str) -> String {
    if region == "us-east-1" {
        "https://s3.amazonaws.com".to_owned()
    } else {
        format!("https://s3.{region}.amazonaws.com")
    }
}

fn unreachable_host<T>(key: &str) -> Result<T, StoreError> {
    Err(StoreError::Rejected {
        key: key.to_owned(),
        detail: "the storage URL has no host".into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Head,
    Get,
    Put,
    Delete,
}

impl Operation {
    fn permission(self) -> &'static str {
        match self {
            Operation::Head | Operation::Get => "s3:GetObject",
            Operation::Put => "s3:PutObject",
            Operation::Delete => "s3:DeleteObject",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The text of the first `<name>` element, enough for S3's flat error documents.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_owned())
}

#[async_trait]
impl ConfigStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let (response, signed_with) = self
            .exchange(Method::HEAD, key, Vec::new(), Bytes::new())
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Some(self.stored_object(key, response.headers())?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(key, Operation::Head, &response, &signed_with)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError> {
        let (response, signed_with) = self
            .exchange(Method::GET, key, Vec::new(), Bytes::new())
            .await?;
        match response.status() {
            s if s.is_success() => {
                let stored = self.stored_object(key, response.headers())?;
                Ok(Some(FetchedObject {
                    body: response.into_body(),
                    stored,
                }))
            }
            StatusCode::NOT_FOUND if !response.body().windows(12).any(|w| w == b"NoSuchBucket") => {
                Ok(None)
            }
            _ => Err(self.failure(key, Operation::Get, &response, &signed_with)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &ExportMetadata,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(metadata.sha256.0);
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("content-length".to_owned(), body.len().to_string()),
            // The store recomputes this and refuses a body that was corrupted on the way.
            ("x-amz-checksum-sha256".to_owned(), checksum),
        ];
        for (name, value) in metadata.to_pairs() {
            headers.push((format!("{META_PREFIX}{name}"), value));
        }
        headers.push(match precondition {
            Precondition::Absent => ("if-none-match".to_owned(), "*".to_owned()),
            Precondition::Matches(tag) => ("if-match".to_owned(), tag),
        });
        if let Some(sse) = &self.settings.server_side_encryption {
            headers.extend(sse.headers());
        }
        let (response, signed_with) = self.exchange(Method::PUT, key, headers, body).await?;
        if response.status().is_success() {
            Ok(header(response.headers(), "etag")
                .unwrap_or_default()
                .to_owned())
        } else {
            Err(self.failure(key, Operation::Put, &response, &signed_with))
        }
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        self.presign(key, expires_in, now).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (response, signed_with) = self
            .exchange(Method::DELETE, key, Vec::new(), Bytes::new())
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.failure(key, Operation::Delete, &response, &signed_with)),
        }
    }

    async fn credential_source(&self) -> Result<String, StoreError> {
        self.credentials
            .describe_source()
            .await
            .map_err(|e| StoreError::BadCredentials {
                key: String::new(),
                detail: e.to_string(),
            })
    }

    async fn store_time(&self) -> Result<Option<SystemTime>, StoreError> {
        // A signed HEAD of the bucket: any answer, even a refusal, carries the store's clock.
        let url = self.object_url("");
        let url = url.trim_end_matches('/').to_owned();
        let (response, _) = self
            .exchange_url(Method::HEAD, "", &url, Vec::new(), Bytes::new())
            .await?;
        Ok(header(response.headers(), "date").and_then(super::parse_http_date))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn settings(endpoint: Option<&str>) -> S3Settings {
        S3Settings {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
            region: "eu-west-1".into(),
            endpoint: endpoint.map(str::to_owned),
            force_path_style: false,
            server_side_encryption: None,
        }
    }

    #[test]
    fn addresses_custom_endpoints_path_style_and_aws_virtual_hosted() {
        let s = S3Store::new("b".into(), settings(Some("http://127.0.0.1:8333/"))).unwrap();
        assert_eq!(
            s.object_url("p/3.4 x/config.json"),
            "http://127.0.0.1:8333/b/p/3.4%20x/config.json"
        );
        let s = S3Store::new("b".into(), settings(None)).unwrap();
        assert_eq!(s.object_url("k"), "https://b.s3.eu-west-1.amazonaws.com/k");
        let s = S3Store::new("my.bucket".into(), settings(None)).unwrap();
        assert_eq!(
            s.object_url("k"),
            "https://s3.eu-west-1.amazonaws.com/my.bucket/k"
        );
    }

    /// AWS's documented example of a presigned URL ("Authenticating Requests: Using Query
    /// Parameters", Signature Version 4), reproduced to the last hex digit.
    #[tokio::test]
    async fn presigns_exactly_as_aws_documents() {
        let s = S3Store::new(
            "examplebucket".into(),
            S3Settings {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                session_token: None,
                region: "us-east-1".into(),
                endpoint: None,
                force_path_style: false,
                server_side_encryption: None,
            },
        )
        .unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 20130524T000000Z
        let url = s
            .presign("test.txt", Duration::from_secs(86_400), at)
            .await
            .unwrap();
        assert!(
            url.starts_with("https://examplebucket.s3.amazonaws.com/test.txt?"),
            "{url}"
        );
        let query: std::collections::BTreeMap<String, String> = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            query["X-Amz-Credential"],
            "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
        );
        assert_eq!(query["X-Amz-Date"], "20130524T000000Z");
        assert_eq!(query["X-Amz-Expires"], "86400");
        assert_eq!(query["X-Amz-SignedHeaders"], "host");
        assert_eq!(
            query["X-Amz-Signature"],
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        assert!(
            url.contains(
                "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            ),
            "the credential is percent-encoded in the URL: {url}"
        );
        assert!(!url.contains("wJalr"));
    }

    #[tokio::test]
    async fn presigned_urls_keep_path_style_endpoints_and_refuse_long_lifetimes() {
        let s = S3Store::new("b".into(), settings(Some("http://127.0.0.1:8333"))).unwrap();
        let url = s
            .presign(
                "p/3.4.1.0/config.json",
                Duration::from_secs(300),
                SystemTime::now(),
            )
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8333/b/p/3.4.1.0/config.json?X-Amz-"),
            "{url}"
        );
        let err = s
            .presign(
                "k",
                MAX_PRESIGN_TTL + Duration::from_secs(1),
                SystemTime::now(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("7 days"), "{err}");
    }

    #[test]
    fn rejects_an_endpoint_that_is_not_an_http_url() {
        let err = S3Store::new("b".into(), settings(Some("minio:9000"))).unwrap_err();
        assert!(
            err.to_string().contains("AWS_CONFIG_STORAGE_ENDPOINT"),
            "{err}"
        );
    }

    /// The SigV4 headers of a bodiless `method` request to `k`, signed with the example key
    /// (and `session_token`, if any).
    fn sign_empty_request(
        s: &S3Store,
        method: &str,
        session_token: Option<&str>,
    ) -> Vec<(String, String)> {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token.map(str::to_owned),
            None,
            "test",
        );
        s.sign(
            &creds,
            method,
            "http://127.0.0.1:8333/b/k",
            &[("host".into(), "127.0.0.1:8333".into())],
            &Sha256Digest::of(b"").to_hex(),
        )
        .unwrap()
    }

    fn authorization(headers: &[(String, String)]) -> &str {
        &headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1
    }

    #[test]
    fn signature_headers_are_present_and_the_secret_is_not() {
        let s = S3Store::new("b".into(), settings(Some("http://127.0.0.1:8333"))).unwrap();
        let headers = sign_empty_request(&s, "PUT", None);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"authorization"), "{names:?}");
        assert!(names.contains(&"x-amz-date"), "{names:?}");
        assert!(names.contains(&"x-amz-content-sha256"), "{names:?}");
        let auth = authorization(&headers);
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
        assert!(!format!("{s:?} {headers:?}").contains("wJalr"));
    }

    #[test]
    fn session_tokens_are_signed_and_sent() {
        let mut with_token = settings(Some("http://127.0.0.1:8333"));
        with_token.session_token = Some(Secret::new("FQoGZXIvYXdzEXAMPLETOKEN"));
        let s = S3Store::new("b".into(), with_token).unwrap();
        let headers = sign_empty_request(&s, "GET", Some("FQoGZXIvYXdzEXAMPLETOKEN"));
        let token = headers.iter().find(|(n, _)| n == "x-amz-security-token");
        assert_eq!(
            token.map(|(_, v)| v.as_str()),
            Some("FQoGZXIvYXdzEXAMPLETOKEN")
        );
        let auth = authorization(&headers);
        assert!(
            auth.contains("x-amz-security-token"),
            "the token is covered by the signature: {auth}"
        );
        assert!(!format!("{s:?}").contains("EXAMPLETOKEN"));
    }

    #[test]
    fn server_side_encryption_takes_kongs_s3_config_names() {
        let sse = ServerSideEncryption::parse(
            r#"{"ServerSideEncryption":"aws:kms","SSEKMSKeyId":"arn:aws:kms:eu-west-1:1:key/k","BucketKeyEnabled":true}"#,
        )
        .unwrap();
        let headers: Vec<(String, String)> = sse.headers().collect();
        assert!(headers.contains(&("x-amz-server-side-encryption".into(), "aws:kms".into())));
        assert!(headers.contains(&(
            "x-amz-server-side-encryption-aws-kms-key-id".into(),
            "arn:aws:kms:eu-west-1:1:key/k".into()
        )));
        assert!(headers.contains(&(
            "x-amz-server-side-encryption-bucket-key-enabled".into(),
            "true".into()
        )));
        for (bad, says) in [
            (r#"{"ServerSideEncryption":"rot13"}"#, "not one of"),
            (r#"{"Acl":"public-read"}"#, "not supported"),
            (r#"{"SSEKMSKeyId":"k"}"#, "need"),
            ("aws:kms", "not JSON"),
        ] {
            let err = ServerSideEncryption::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empty_access_key_means_the_default_chain() {
        let mut chain = settings(None);
        chain.access_key_id.clear();
        let s = S3Store::new("b".into(), chain).unwrap();
        assert!(matches!(s.credentials, AwsCredentials::Chain(_)));
        let s = S3Store::new("b".into(), settings(None)).unwrap();
        assert!(matches!(s.credentials, AwsCredentials::Static(_)));
    }

    #[test]
    fn a_refused_session_token_is_named_on_s3_compatible_stores_only() {
        let forbidden = Response::builder()
            .status(403)
            .body(Bytes::from_static(
                b"<Error><Code>InvalidAccessKeyId</Code></Error>",
            ))
            .unwrap();
        let with_token = SignedWith {
            access_key_id: "AKID".into(),
            session_token: true,
        };
        let compatible = S3Store::new("b".into(), settings(Some("http://127.0.0.1:8333"))).unwrap();
        let said = compatible
            .failure("k", Operation::Put, &forbidden, &with_token)
            .to_string();
        assert!(
            said.contains("session token") && said.contains("static identities"),
            "{said}"
        );
        let aws = S3Store::new("b".into(), settings(None)).unwrap();
        let said = aws
            .failure("k", Operation::Put, &forbidden, &with_token)
            .to_string();
        assert!(!said.contains("static identities"), "{said}");
        let without = SignedWith {
            access_key_id: "AKID".into(),
            session_token: false,
        };
        let said = compatible
            .failure("k", Operation::Put, &forbidden, &without)
            .to_string();
        assert!(!said.contains("static identities"), "{said}");
    }

    #[test]
    fn reads_s3_error_documents() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_field(body, "Message").as_deref(), Some("Access Denied"));
        assert_eq!(xml_field(body, "Resource"), None);
    }
}
