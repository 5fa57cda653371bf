//! `azure://container/prefix`: Azure Blob Storage through its REST API.
//!
//! - Tag = the blob's `ETag`; writes are one `Put Blob` (block blob) with `If-None-Match: *`
//!   (only if absent) or `If-Match: <etag>`, body and metadata together, and a `Content-MD5` the
//!   service checks against the bytes it received.
//! - Metadata is `x-ms-meta-*`. Azure requires metadata names to be C# identifiers, so the
//!   hyphens of the names S3 and GCS carry become underscores: `sha256`, `revision`, `node_id`,
//!   `exported_at`, `signature` (reads accept the hyphenated spelling too).
//! - Requests are signed with Shared Key (the account key, from `AZURE_STORAGE_KEY` or a
//!   connection string), or carry an Entra ID bearer token ([`super::azure_auth`]).
//! - Signed GET URLs are SAS tokens limited to reading exactly one blob (`sp=r`, `sr=b`): a
//!   service SAS signed with the account key, or a user delegation SAS signed with a key the
//!   service issues to the Entra identity (`Get User Delegation Key`).
//! - `AZURE_STORAGE_BLOB_ENDPOINT` (or a connection string's `BlobEndpoint`) sends everything
//!   to another endpoint: Azurite, sovereign clouds, private endpoints.

use super::azure_auth::{EntraCredentials, EntraIdentity, DEFAULT_IMDS_HOST};
use super::{ConfigStore, FetchedObject, Precondition, StoreError};
use crate::secret::Secret;
use crate::transport::{self, HttpClient};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use fallback_core::export::{ExportMetadata, StoredObject};
use fallback_core::wire::percent_encode;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// The REST API version of every request and SAS (`x-ms-version`, `sv`).
pub const API_VERSION: &str = "2021-12-02";
/// Azurite's well-known development account (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The development account's well-known key (public, documented by Microsoft).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const META_PREFIX: &str = "x-ms-meta-";
const READ: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read";
const WRITE: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write";
const DELETE: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete";
const DELEGATION_KEY: &str =
    "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action";

/// Where Azure credentials come from and where requests go, as Azure's SDKs and CLI read them.
#[derive(Clone, Debug, Default)]
pub struct AzureSettings {
    /// `AZURE_STORAGE_CONNECTION_STRING`.
    pub connection_string: Option<Secret>,
    /// `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    /// `AZURE_STORAGE_KEY`: the account key (Shared Key), base64.
    pub account_key: Option<Secret>,
    /// `AZURE_STORAGE_BLOB_ENDPOINT`: the blob service URL (Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub blob_endpoint: Option<String>,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_CLIENT_SECRET`.
    pub client_secret: Option<Secret>,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
    /// `AZURE_AUTHORITY_HOST`.
    pub authority_host: Option<String>,
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`: the IMDS host, when not 169.254.169.254.
    pub imds_host: Option<String>,
}

/// How requests are authorized.
enum Auth {
    /// The account key (base64, checked at start-up); `origin` names where it came from.
    SharedKey { key: Secret, origin: &'static str },
    /// An Entra ID identity.
    Entra(Arc<EntraCredentials>),
}

/// An account, its blob endpoint and the credentials, resolved from [`AzureSettings`].
struct Resolved {
    account: String,
    endpoint: String,
    auth: Auth,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `Name=value;Name=value` of a connection string; names case-insensitive, values may hold `=`.
fn connection_string_fields(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.split_once('=')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .ok_or_else(|| {
                    // Only the field's name could be safe to show; show none of it.
                    anyhow::anyhow!("AZURE_STORAGE_CONNECTION_STRING has a field without '=': expected Name=value pairs separated by ';'")
                })
        })
        .collect()
}

impl AzureSettings {
    fn resolve(&self) -> anyhow::Result<Resolved> {
        let explicit_endpoint = non_empty(&self.blob_endpoint).map(str::to_owned);
        if let Some(cs) = self
            .connection_string
            .as_ref()
            .filter(|c| !c.expose().trim().is_empty())
        {
            let fields = connection_string_fields(cs.expose())?;
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .filter(|v| !v.is_empty())
            };
            if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                let proxy = get("developmentstorageproxyuri").unwrap_or("http://127.0.0.1:10000");
                return Ok(Resolved {
                    account: DEV_ACCOUNT.into(),
                    endpoint: explicit_endpoint.unwrap_or_else(|| {
                        format!("{}/{DEV_ACCOUNT}", proxy.trim_end_matches('/'))
                    }),
                    auth: Auth::SharedKey {
                        key: Secret::new(DEV_ACCOUNT_KEY),
                        origin: "AZURE_STORAGE_CONNECTION_STRING (development storage)",
                    },
                });
            }
            let account = get("accountname").map(str::to_owned);
            let endpoint = explicit_endpoint
                .or_else(|| get("blobendpoint").map(str::to_owned))
                .or_else(|| {
                    account.as_ref().map(|a| {
                        format!(
                            "{}://{a}.blob.{}",
                            get("defaultendpointsprotocol").unwrap_or("https"),
                            get("endpointsuffix").unwrap_or("core.windows.net")
                        )
                    })
                })
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "AZURE_STORAGE_CONNECTION_STRING has neither AccountName nor BlobEndpoint"
                    )
                })?;
            let account = match account {
                Some(a) => a,
                None => account_from_endpoint(&endpoint)?,
            };
            if get("sharedaccesssignature").is_some() && get("accountkey").is_none() {
                anyhow::bail!("AZURE_STORAGE_CONNECTION_STRING carries a SharedAccessSignature: the companion signs URLs for filters and needs the account key (AccountKey) or an Entra ID identity instead");
            }
            let key = get("accountkey").ok_or_else(|| {
                anyhow::anyhow!("AZURE_STORAGE_CONNECTION_STRING has no AccountKey; add it, or use AZURE_STORAGE_ACCOUNT with an Entra ID identity")
            })?;
            check_key(key, "the AccountKey of AZURE_STORAGE_CONNECTION_STRING")?;
            return Ok(Resolved {
                account,
                endpoint,
                auth: Auth::SharedKey {
                    key: Secret::new(key),
                    origin: "AZURE_STORAGE_CONNECTION_STRING",
                },
            });
        }
        let account = match (non_empty(&self.account), &explicit_endpoint) {
            (Some(a), _) => a.to_owned(),
            (None, Some(e)) => account_from_endpoint(e)?,
            (None, None) => anyhow::bail!(
                "Azure storage needs an account: set AZURE_STORAGE_ACCOUNT (with AZURE_STORAGE_KEY or an Entra ID identity) or AZURE_STORAGE_CONNECTION_STRING"
            ),
        };
        let endpoint =
            explicit_endpoint.unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        if let Some(key) = self
            .account_key
            .as_ref()
            .filter(|k| !k.expose().trim().is_empty())
        {
            check_key(key.expose().trim(), "AZURE_STORAGE_KEY")?;
            return Ok(Resolved {
                account,
                endpoint,
                auth: Auth::SharedKey {
                    key: Secret::new(key.expose().trim()),
                    origin: "AZURE_STORAGE_KEY",
                },
            });
        }
        let tenant = non_empty(&self.tenant_id);
        let client = non_empty(&self.client_id);
        let secret = self
            .client_secret
            .as_ref()
            .filter(|s| !s.expose().is_empty());
        let token_file = self
            .federated_token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let identity = match (tenant, client, secret, token_file) {
            (Some(t), Some(c), Some(s), _) => EntraIdentity::ClientSecret {
                tenant_id: t.into(),
                client_id: c.into(),
                secret: s.clone(),
            },
            (Some(t), Some(c), None, Some(f)) => EntraIdentity::WorkloadIdentity {
                tenant_id: t.into(),
                client_id: c.into(),
                token_file: f.clone(),
            },
            (None, _, Some(_), _) | (_, None, Some(_), _) => anyhow::bail!(
                "AZURE_CLIENT_SECRET is set but AZURE_TENANT_ID or AZURE_CLIENT_ID is not; a service principal needs all three"
            ),
            (None, _, None, Some(_)) | (_, None, None, Some(_)) => anyhow::bail!(
                "AZURE_FEDERATED_TOKEN_FILE is set but AZURE_TENANT_ID or AZURE_CLIENT_ID is not; workload identity needs all three"
            ),
            _ => EntraIdentity::ManagedIdentity {
                client_id: client.map(str::to_owned),
                host: non_empty(&self.imds_host)
                    .map(|h| {
                        h.trim_start_matches("http://")
                            .trim_end_matches('/')
                            .to_owned()
                    })
                    .unwrap_or_else(|| DEFAULT_IMDS_HOST.into()),
            },
        };
        Ok(Resolved {
            account,
            endpoint,
            auth: Auth::Entra(Arc::new(EntraCredentials::new(
                identity,
                non_empty(&self.authority_host),
            ))),
        })
    }
}

/// `acct` of `https://acct.blob.core.windows.net`.
fn account_from_endpoint(endpoint: &str) -> anyhow::Result<String> {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            let (first, rest) = host.split_once('.')?;
            rest.starts_with("blob.").then(|| first.to_owned())
        })
        .ok_or_else(|| {
            anyhow::anyhow!("cannot tell the storage account from the blob endpoint {endpoint:?}; set AZURE_STORAGE_ACCOUNT")
        })
}

/// Checks an account key is base64 of something, naming `what` and never quoting it.
fn check_key(key: &str, what: &str) -> anyhow::Result<()> {
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => anyhow::bail!(
            "{what} is not base64; copy key1 or key2 from the storage account's Access keys"
        ),
    }
}

/// A user delegation key as `Get User Delegation Key` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationKey {
    /// `skoid`.
    pub object_id: String,
    /// `sktid`.
    pub tenant_id: String,
    /// `skt`.
    pub start: String,
    /// `ske`.
    pub expiry: String,
    /// `sks`.
    pub service: String,
    /// `skv`.
    pub version: String,
    /// The key itself, base64.
    pub value: Secret,
}

/// An Azure Blob container.
pub struct AzureStore {
    container: String,
    account: String,
    endpoint: String,
    /// Scheme, host and port of the endpoint.
    origin: String,
    /// The endpoint's own path (Azurite: `/devstoreaccount1`), without trailing `/`.
    base_path: String,
    auth: Auth,
    delegation_key: Mutex<Option<(DelegationKey, SystemTime)>>,
    client: HttpClient,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureStore")
            .field("container", &self.container)
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth_description())
            .finish()
    }
}

impl AzureStore {
    /// A store for `container`.
    pub fn new(container: String, settings: AzureSettings) -> anyhow::Result<Self> {
        let resolved = settings.resolve()?;
        let endpoint = resolved.endpoint.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&endpoint).map_err(|e| {
            anyhow::anyhow!("Azure blob endpoint {endpoint:?} is not a URL ({e}); set AZURE_STORAGE_BLOB_ENDPOINT to e.g. https://account.blob.core.windows.net")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            anyhow::bail!("Azure blob endpoint {endpoint:?} must be an http(s) URL");
        }
        let host = super::host_header(parsed.host_str(), parsed.port())
            .ok_or_else(|| anyhow::anyhow!("Azure blob endpoint {endpoint:?} has no host"))?;
        Ok(Self {
            container,
            account: resolved.account,
            origin: format!("{}://{host}", parsed.scheme()),
            base_path: parsed.path().trim_end_matches('/').to_owned(),
            endpoint,
            auth: resolved.auth,
            delegation_key: Mutex::new(None),
            client: transport::client(),
        })
    }

    fn auth_description(&self) -> String {
        match &self.auth {
            Auth::SharedKey { origin, .. } => {
                format!("Shared Key of account {} from {origin}", self.account)
            }
            Auth::Entra(c) => c.describe(),
        }
    }

    /// The request path of `key` (percent-encoded by segment), or of the container (`None`).
    fn path(&self, key: Option<&str>) -> String {
        let mut path = format!("{}/{}", self.base_path, self.container);
        if let Some(key) = key {
            path.push('/');
            path.push_str(&encode_path(key));
        }
        path
    }

    /// Signs and sends one request to `path` with `query` (names and values unencoded).
    async fn exchange(
        &self,
        method: Method,
        key: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: Vec<(&str, String)>,
        body: Bytes,
    ) -> Result<Response<Bytes>, StoreError> {
        let mut headers: Vec<(String, String)> = headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        headers.push(("x-ms-date".into(), http_date(SystemTime::now())));
        headers.push(("x-ms-version".into(), API_VERSION.to_owned()));
        if !body.is_empty() {
            headers.push(("content-length".into(), body.len().to_string()));
        }
        let authorization = match &self.auth {
            Auth::SharedKey {
                key: account_key, ..
            } => {
                let string_to_sign = shared_key_string_to_sign(
                    method.as_str(),
                    &headers,
                    &self.account,
                    path,
                    query,
                );
                format!(
                    "SharedKey {}:{}",
                    self.account,
                    hmac_base64(account_key, &string_to_sign)
                )
            }
            Auth::Entra(creds) => {
                let token = creds
                    .access_token()
                    .await
                    .map_err(|e| e.into_store_error(key))?;
                format!("Bearer {}", token.expose())
            }
        };
        let mut url = format!("{}{path}", self.origin);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&encode_query(query));
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", authorization);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        super::send_to_store(&self.client, builder, body, key, || self.endpoint.clone()).await
    }

    fn stored_object(&self, key: &str, headers: &HeaderMap) -> Result<StoredObject, StoreError> {
        let etag = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let metadata = ExportMetadata::from_lookup(|name| {
            let underscored = format!("{META_PREFIX}{}", name.replace('-', "_"));
            headers
                .get(underscored.as_str())
                .or_else(|| headers.get(format!("{META_PREFIX}{name}").as_str()))
                .and_then(|v| v.to_str().ok())
        })
        .map_err(|e| StoreError::Rejected {
            key: key.to_owned(),
            detail: format!("{}: {e}", self.describe_key(key)),
        })?;
        Ok(StoredObject { etag, metadata })
    }

    fn describe_key(&self, key: &str) -> String {
        format!("azure://{}/{key}", self.container)
    }

    /// Turns a non-success answer into the error an operator can act on.
    fn failure(
        &self,
        key: &str,
        permission: &'static str,
        response: &Response<Bytes>,
    ) -> StoreError {
        let status = response.status();
        let (code, message) = azure_error(response);
        let said = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {}", status.as_u16()),
            (false, true) => format!("HTTP {} {code}", status.as_u16()),
            (false, false) => format!("HTTP {} {code}: {message}", status.as_u16()),
        };
        let key_owned = key.to_owned();
        // Azure says AuthenticationFailed for a bad signature; Azurite says AuthorizationFailure
        // with the same message. Both mean the key, not a missing permission.
        let authentication = code == "AuthenticationFailed"
            || message.starts_with("Server failed to authenticate the request");
        match (status, code.as_str()) {
            // A lease is held by someone else: retrying the compare-and-swap cannot help.
            (StatusCode::PRECONDITION_FAILED, c) if c.starts_with("Lease") => {
                StoreError::Rejected {
                    key: key_owned,
                    detail: format!(
                        "{said}; the blob is leased: break the lease (az storage blob lease break) or stop the tool holding it"
                    ),
                }
            }
            (StatusCode::PRECONDITION_FAILED, _)
            | (StatusCode::CONFLICT, "BlobAlreadyExists") => {
                StoreError::PreconditionFailed { key: key_owned }
            }
            (StatusCode::FORBIDDEN, _) | (StatusCode::UNAUTHORIZED, _)
                if authentication || status == StatusCode::UNAUTHORIZED =>
            {
                StoreError::BadCredentials {
                    key: key_owned,
                    detail: format!(
                        "{said}; {}",
                        match &self.auth {
                            Auth::SharedKey { origin, .. } => format!(
                                "check the account key in {origin} (key1 or key2 of account {}, not rotated) and this host's clock",
                                self.account
                            ),
                            Auth::Entra(_) =>
                                "check the Entra ID identity (tenant, client id, secret or federated credential)"
                                    .to_owned(),
                        }
                    ),
                }
            }
            (StatusCode::FORBIDDEN, _) => StoreError::PermissionDenied {
                key: key_owned,
                permission,
                resource: self.describe_key(key),
                detail: said,
            },
            (StatusCode::NOT_FOUND, "ContainerNotFound") => StoreError::Rejected {
                key: key_owned,
                detail: format!(
                    "{said}; container {:?} does not exist in account {}: create it or fix KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                    self.container, self.account
                ),
            },
            (s, _)
                if s.is_server_error()
                    || s == StatusCode::TOO_MANY_REQUESTS
                    || s == StatusCode::REQUEST_TIMEOUT =>
            {
                StoreError::Transient {
                    key: key_owned,
                    detail: said,
                }
            }
            _ => StoreError::Rejected {
                key: key_owned,
                detail: said,
            },
        }
    }

    /// A SAS URL granting `GET` of `key` alone until `now + expires_in`.
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
        if let Some(problem) = super::signed_url_lifetime_problem(expires_in, "Azure") {
            return Err(fail(problem));
        }
        let sas = BlobSas {
            account: &self.account,
            container: &self.container,
            blob: key,
            expiry: rfc3339(now + expires_in),
        };
        let query = match &self.auth {
            Auth::SharedKey {
                key: account_key, ..
            } => sas.service_sas(account_key),
            Auth::Entra(_) => {
                let delegation = self.delegation_key(key, now + expires_in).await?;
                sas.user_delegation_sas(&delegation)
            }
        };
        Ok(format!(
            "{}{}?{}",
            self.origin,
            self.path(Some(key)),
            encode_query(
                &query
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect::<Vec<_>>()
            )
        ))
    }

    /// A user delegation key valid at least until `until`, cached while it is.
    async fn delegation_key(
        &self,
        key: &str,
        until: SystemTime,
    ) -> Result<DelegationKey, StoreError> {
        let mut cached = self.delegation_key.lock().await;
        if let Some((k, expires)) = cached.as_ref() {
            if *expires >= until {
                return Ok(k.clone());
            }
        }
        let now = SystemTime::now();
        // The longest a delegation key may live: 7 days from now; a minute less for skew.
        let expires = now + super::MAX_SIGNED_URL_TTL - Duration::from_secs(60);
        if until > expires {
            return Err(StoreError::Rejected {
                key: key.to_owned(),
                detail:
                    "cannot sign a GET URL: a user delegation SAS cannot outlive 7 days from now"
                        .into(),
            });
        }
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><KeyInfo><Start>{}</Start><Expiry>{}</Expiry></KeyInfo>",
            rfc3339(now - Duration::from_secs(60)),
            rfc3339(expires)
        );
        let response = self
            .exchange(
                Method::POST,
                key,
                &format!("{}/", self.base_path),
                &[("comp", "userdelegationkey"), ("restype", "service")],
                vec![("content-type", "application/xml".to_owned())],
                Bytes::from(body),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.failure(key, DELEGATION_KEY, &response));
        }
        let text = String::from_utf8_lossy(response.body());
        let field = |name: &str| xml_field(&text, name).unwrap_or_default();
        let delegation = DelegationKey {
            object_id: field("SignedOid"),
            tenant_id: field("SignedTid"),
            start: field("SignedStart"),
            expiry: field("SignedExpiry"),
            service: field("SignedService"),
            version: field("SignedVersion"),
            value: Secret::new(field("Value")),
        };
        let usable = base64::engine::general_purpose::STANDARD
            .decode(delegation.value.expose())
            .is_ok_and(|k| !k.is_empty());
        if !usable || delegation.object_id.is_empty() {
            return Err(StoreError::Transient {
                key: key.to_owned(),
                detail: "Get User Delegation Key answered without a usable key".into(),
            });
        }
        *cached = Some((delegation.clone(), expires));
        Ok(delegation)
    }
}

/// A read-only SAS on one blob.
struct BlobSas<'a> {
    account: &'a str,
    container: &'a str,
    blob: &'a str,
    /// `se`, `YYYY-MM-DDTHH:MM:SSZ`.
    expiry: String,
}

impl BlobSas<'_> {
    fn canonical_resource(&self) -> String {
        format!("/blob/{}/{}/{}", self.account, self.container, self.blob)
    }

    /// The string to sign of a service SAS (version 2020-12-06 and later), as "Create a
    /// service SAS" lays it out: permissions, start, expiry, resource, identifier, IP,
    /// protocol, version, resource type, snapshot time, encryption scope, and the five
    /// response-header overrides. Only `sp=r`, `se`, `sv`, `sr=b` are set.
    fn service_string_to_sign(&self) -> String {
        [
            "r",
            "",
            &self.expiry,
            &self.canonical_resource(),
            "",
            "",
            "",
            API_VERSION,
            "b",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n")
    }

    /// The string to sign of a user delegation SAS (version 2020-12-06 and later), as "Create
    /// a user delegation SAS" lays it out.
    fn user_delegation_string_to_sign(&self, key: &DelegationKey) -> String {
        [
            "r",
            "",
            &self.expiry,
            &self.canonical_resource(),
            &key.object_id,
            &key.tenant_id,
            &key.start,
            &key.expiry,
            &key.service,
            &key.version,
            "",
            "",
            "",
            "",
            "",
            API_VERSION,
            "b",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n")
    }

    fn service_sas(&self, account_key: &Secret) -> Vec<(&'static str, String)> {
        vec![
            ("sv", API_VERSION.to_owned()),
            ("sr", "b".into()),
            ("sp", "r".into()),
            ("se", self.expiry.clone()),
            (
                "sig",
                hmac_base64(account_key, &self.service_string_to_sign()),
            ),
        ]
    }

    fn user_delegation_sas(&self, key: &DelegationKey) -> Vec<(&'static str, String)> {
        vec![
            ("sv", API_VERSION.to_owned()),
            ("sr", "b".into()),
            ("sp", "r".into()),
            ("se", self.expiry.clone()),
            ("skoid", key.object_id.clone()),
            ("sktid", key.tenant_id.clone()),
            ("skt", key.start.clone()),
            ("ske", key.expiry.clone()),
            ("sks", key.service.clone()),
            ("skv", key.version.clone()),
            (
                "sig",
                hmac_base64(&key.value, &self.user_delegation_string_to_sign(key)),
            ),
        ]
    }
}

/// The Shared Key string to sign of a Blob service request (version 2015-02-21 and later), as
/// "Authorize with Shared Key" lays it out: the verb, eleven standard headers (Content-Length
/// empty when zero), the `x-ms-*` headers sorted, and the canonicalized resource
/// (`/account/path`, then each query parameter as `\nname:value`, sorted).
pub fn shared_key_string_to_sign(
    method: &str,
    headers: &[(String, String)],
    account: &str,
    path: &str,
    query: &[(&str, &str)],
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or_default()
    };
    let content_length = match header("content-length") {
        "0" => "",
        other => other,
    };
    let mut out = format!(
        "{method}\n{}\n{}\n{content_length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        header("content-encoding"),
        header("content-language"),
        header("content-md5"),
        header("content-type"),
        header("date"),
        header("if-modified-since"),
        header("if-match"),
        header("if-none-match"),
        header("if-unmodified-since"),
        header("range"),
    );
    let mut ms: Vec<(String, &str)> = headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    ms.sort();
    for (name, value) in ms {
        out.push_str(&format!("{name}:{value}\n"));
    }
    out.push_str(&format!("/{account}{path}"));
    // One line per parameter name, its values sorted and comma-separated.
    let mut params: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (name, value) in query {
        params
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    for (name, mut values) in params {
        values.sort_unstable();
        out.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    out
}

/// `at` as an HTTP date (`Sun, 11 Oct 2009 21:49:13 GMT`), the form of `x-ms-date`.
pub fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// Base64 of HMAC-SHA256 keyed with the base64-decoded `key`.
fn hmac_base64(key: &Secret, message: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.expose())
        .unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Each `/`-separated segment percent-encoded, the slashes kept.
fn encode_path(key: &str) -> String {
    key.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn encode_query(query: &[(&str, &str)]) -> String {
    query
        .iter()
        .map(|(n, v)| format!("{}={}", percent_encode(n), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The text of `<name>…</name>` in a small XML document.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim().to_owned())
}

/// The error code (`x-ms-error-code`, else `<Code>`) and the first line of `<Message>`.
fn azure_error(response: &Response<Bytes>) -> (String, String) {
    let body = String::from_utf8_lossy(response.body());
    let code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| xml_field(&body, "Code"))
        .unwrap_or_default();
    let message = xml_field(&body, "Message")
        .map(|m| m.lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    (code, message)
}

fn is_blob_missing(response: &Response<Bytes>) -> bool {
    response.status() == StatusCode::NOT_FOUND && azure_error(response).0 != "ContainerNotFound"
}

#[async_trait]
impl ConfigStore for AzureStore {
    fn describe(&self) -> String {
        format!("{}/{}", self.endpoint, self.container)
    }

    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let response = self
            .exchange(
                Method::HEAD,
                key,
                &self.path(Some(key)),
                &[],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Some(self.stored_object(key, response.headers())?)),
            _ if is_blob_missing(&response) => Ok(None),
            // A HEAD answer has no body to say why; a GET's error body does.
            _ if response.headers().get("x-ms-error-code").is_none()
                || response.status() == StatusCode::FORBIDDEN =>
            {
                let failure = self.failure(key, READ, &response);
                match self.get(key).await {
                    Err(e) => Err(e),
                    Ok(_) => Err(failure),
                }
            }
            _ => Err(self.failure(key, READ, &response)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError> {
        // One Get Blob answers body, ETag and metadata of the same version together.
        let response = self
            .exchange(
                Method::GET,
                key,
                &self.path(Some(key)),
                &[],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match response.status() {
            s if s.is_success() => {
                let stored = self.stored_object(key, response.headers())?;
                Ok(Some(FetchedObject {
                    body: response.into_body(),
                    stored,
                }))
            }
            _ if is_blob_missing(&response) => Ok(None),
            _ => Err(self.failure(key, READ, &response)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &ExportMetadata,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        use md5::Digest;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let mut headers = vec![
            ("x-ms-blob-type", "BlockBlob".to_owned()),
            ("content-type", "application/json".to_owned()),
            ("content-md5", md5),
        ];
        headers.push(match &precondition {
            Precondition::Absent => ("if-none-match", "*".to_owned()),
            Precondition::Matches(tag) => ("if-match", tag.clone()),
        });
        let names: Vec<(String, String)> = metadata
            .to_pairs()
            .into_iter()
            .map(|(name, value)| (format!("{META_PREFIX}{}", name.replace('-', "_")), value))
            .collect();
        headers.extend(names.iter().map(|(n, v)| (n.as_str(), v.clone())));
        let response = self
            .exchange(Method::PUT, key, &self.path(Some(key)), &[], headers, body)
            .await?;
        if response.status().is_success() {
            Ok(response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned())
        } else {
            Err(self.failure(key, WRITE, &response))
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
                &self.path(Some(key)),
                &[],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            _ if is_blob_missing(&response) => Ok(()),
            _ => Err(self.failure(key, DELETE, &response)),
        }
    }

    async fn credential_source(&self) -> Result<String, StoreError> {
        Ok(match &self.auth {
            Auth::SharedKey { .. } => self.auth_description(),
            Auth::Entra(creds) => {
                creds
                    .access_token()
                    .await
                    .map_err(|e| e.into_store_error(""))?;
                format!("{}, access token obtained", creds.describe())
            }
        })
    }

    async fn store_time(&self) -> Result<Option<SystemTime>, StoreError> {
        let response = self
            .exchange(
                Method::GET,
                "",
                &self.path(None),
                &[("restype", "container")],
                Vec::new(),
                Bytes::new(),
            )
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

    /// "Authorize with Shared Key", Blob service: the string to sign of its Get Container
    /// Metadata example (`GET /mycontainer?restype=container&comp=metadata&timeout=20`, account
    /// `myaccount` addressed path-style), field by field as the page lays it out.
    #[test]
    fn shared_key_reproduces_the_documented_blob_example() {
        let headers = vec![
            ("x-ms-version".to_owned(), "2009-09-19".to_owned()),
            (
                "x-ms-date".to_owned(),
                "Sun, 11 Oct 2009 21:49:13 GMT".to_owned(),
            ),
        ];
        let sts = shared_key_string_to_sign(
            "GET",
            &headers,
            "myaccount",
            "/myaccount/mycontainer",
            &[
                ("restype", "container"),
                ("comp", "metadata"),
                ("timeout", "20"),
            ],
        );
        let expected = [
            "GET", // verb
            "",    // Content-Encoding
            "",    // Content-Language
            "",    // Content-Length (empty string when zero)
            "",    // Content-MD5
            "",    // Content-Type
            "",    // Date
            "",    // If-Modified-Since
            "",    // If-Match
            "",    // If-None-Match
            "",    // If-Unmodified-Since
            "",    // Range
            "x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT",
            "x-ms-version:2009-09-19",
            "/myaccount/myaccount/mycontainer",
            "comp:metadata",
            "restype:container",
            "timeout:20",
        ]
        .join("\n");
        assert_eq!(sts, expected);
    }

    /// The page's List Blobs canonicalized resource: repeated parameters become one line,
    /// values sorted and comma-separated.
    #[test]
    fn shared_key_merges_repeated_query_parameters_as_documented() {
        let sts = shared_key_string_to_sign(
            "GET",
            &[],
            "myaccount",
            "/mycontainer",
            &[
                ("restype", "container"),
                ("comp", "list"),
                ("include", "snapshots"),
                ("include", "metadata"),
                ("include", "uncommittedblobs"),
            ],
        );
        assert!(
            sts.ends_with("/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"),
            "{sts}"
        );
    }

    #[test]
    fn shared_key_signs_the_put_blob_headers_in_their_places() {
        let headers = vec![
            ("content-length".to_owned(), "11".to_owned()),
            (
                "content-md5".to_owned(),
                "XrY7u+Ae7tCTyyK7j1rNww==".to_owned(),
            ),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("if-none-match".to_owned(), "*".to_owned()),
            ("x-ms-meta-node_id".to_owned(), "n".to_owned()),
            ("x-ms-blob-type".to_owned(), "BlockBlob".to_owned()),
        ];
        let sts = shared_key_string_to_sign("PUT", &headers, "a", "/c/b", &[]);
        assert_eq!(
            sts,
            "PUT\n\n\n11\nXrY7u+Ae7tCTyyK7j1rNww==\napplication/json\n\n\n\n*\n\n\nx-ms-blob-type:BlockBlob\nx-ms-meta-node_id:n\n/a/c/b"
        );
        let zero = vec![("content-length".to_owned(), "0".to_owned())];
        assert!(shared_key_string_to_sign("PUT", &zero, "a", "/c", &[]).starts_with("PUT\n\n\n\n"));
    }

    fn sas() -> BlobSas<'static> {
        BlobSas {
            account: "myaccount",
            container: "pictures",
            blob: "kong/3.4.1.0/config.json",
            expiry: "2026-11-30T12:00:00Z".into(),
        }
    }

    /// "Create a service SAS", version 2020-12-06 and later: permissions, start, expiry,
    /// canonicalized resource (`/blob/account/container/blob`), identifier, IP, protocol,
    /// version, resource, snapshot time, encryption scope, rscc, rscd, rsce, rscl, rsct.
    #[test]
    fn service_sas_string_to_sign_follows_the_documented_layout() {
        let expected = [
            "r",
            "",
            "2026-11-30T12:00:00Z",
            "/blob/myaccount/pictures/kong/3.4.1.0/config.json",
            "",
            "",
            "",
            "2021-12-02",
            "b",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n");
        assert_eq!(sas().service_string_to_sign(), expected);
    }

    /// "Create a user delegation SAS", version 2020-12-06 and later.
    #[test]
    fn user_delegation_sas_string_to_sign_follows_the_documented_layout() {
        let key = DelegationKey {
            object_id: "oid".into(),
            tenant_id: "tid".into(),
            start: "2026-11-30T00:00:00Z".into(),
            expiry: "2026-12-07T00:00:00Z".into(),
            service: "b".into(),
            version: "2021-12-02".into(),
            value: Secret::new(DEV_ACCOUNT_KEY),
        };
        let expected = [
            "r",
            "",
            "2026-11-30T12:00:00Z",
            "/blob/myaccount/pictures/kong/3.4.1.0/config.json",
            "oid",
            "tid",
            "2026-11-30T00:00:00Z",
            "2026-12-07T00:00:00Z",
            "b",
            "2021-12-02",
            "", // signedAuthorizedUserObjectId
            "", // signedUnauthorizedUserObjectId
            "", // signedCorrelationId
            "", // signedIP
            "", // signedProtocol
            "2021-12-02",
            "b",
            "", // signedSnapshotTime
            "", // signedEncryptionScope
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n");
        assert_eq!(sas().user_delegation_string_to_sign(&key), expected);
        let params = sas().user_delegation_sas(&key);
        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["sv", "sr", "sp", "se", "skoid", "sktid", "skt", "ske", "sks", "skv", "sig"]
        );
        assert_eq!(
            params.last().unwrap().1,
            hmac_base64(&key.value, &expected),
            "signed with the delegation key"
        );
    }

    #[test]
    fn hmac_is_keyed_with_the_decoded_key() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = Secret::new(base64::engine::general_purpose::STANDARD.encode("Jefe"));
        let mac = hmac_base64(&key, "what do ya want for nothing?");
        let hex: String = base64::engine::general_purpose::STANDARD
            .decode(mac)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn connection_strings_resolve_like_the_sdks() {
        let resolve = |cs: &str| {
            AzureSettings {
                connection_string: Some(Secret::new(cs)),
                ..AzureSettings::default()
            }
            .resolve()
        };
        let r = resolve(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEV_ACCOUNT_KEY};EndpointSuffix=core.chinacloudapi.cn"
        ))
        .unwrap();
        assert_eq!(r.account, "acct");
        assert_eq!(r.endpoint, "https://acct.blob.core.chinacloudapi.cn");
        let r = resolve("UseDevelopmentStorage=true").unwrap();
        assert_eq!(r.account, DEV_ACCOUNT);
        assert_eq!(r.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        let r = resolve(&format!(
            "AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:9/devstoreaccount1");

        for (cs, expect) in [
            ("AccountName=a;AccountKey=not*base64", "not base64"),
            ("AccountName=a", "no AccountKey"),
            (
                "AccountName=a;SharedAccessSignature=sv=x&sig=y",
                "SharedAccessSignature",
            ),
            ("garbage", "without '='"),
        ] {
            let err = match resolve(cs) {
                Ok(_) => panic!("{cs} resolved"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(expect), "{err}");
            assert!(
                !err.contains("not*base64") && !err.contains("sig=y"),
                "{err}"
            );
        }
    }

    #[test]
    fn entra_identities_are_chosen_like_default_azure_credential() {
        let base = AzureSettings {
            account: Some("acct".into()),
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..AzureSettings::default()
        };
        let describe = |s: AzureSettings| match s.resolve().unwrap().auth {
            Auth::Entra(c) => c.describe(),
            Auth::SharedKey { origin, .. } => origin.to_owned(),
        };
        assert!(describe(AzureSettings {
            client_secret: Some(Secret::new("x")),
            ..base.clone()
        })
        .starts_with("service principal c"));
        assert!(describe(AzureSettings {
            federated_token_file: Some("/var/run/token".into()),
            ..base.clone()
        })
        .starts_with("workload identity c"));
        assert_eq!(
            describe(base.clone()),
            "user-assigned managed identity c (IMDS 169.254.169.254)"
        );
        assert_eq!(
            describe(AzureSettings {
                account_key: Some(Secret::new(DEV_ACCOUNT_KEY)),
                ..base.clone()
            }),
            "AZURE_STORAGE_KEY",
            "an account key wins over Entra ID, as the CLI's --account-key"
        );
        let err = AzureSettings {
            account: Some("acct".into()),
            client_secret: Some(Secret::new("x")),
            ..AzureSettings::default()
        }
        .resolve()
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("AZURE_TENANT_ID"), "{err}");
        let err = AzureSettings::default()
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("AZURE_STORAGE_ACCOUNT"), "{err}");
        // The account comes from a public endpoint's host when not named.
        let r = AzureSettings {
            blob_endpoint: Some("https://acct2.blob.core.usgovcloudapi.net".into()),
            account_key: Some(Secret::new(DEV_ACCOUNT_KEY)),
            ..AzureSettings::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(r.account, "acct2");
    }

    #[tokio::test]
    async fn signed_urls_read_one_blob_and_show_no_key() {
        let store = AzureStore::new(
            "pictures".into(),
            AzureSettings {
                account: Some(DEV_ACCOUNT.into()),
                account_key: Some(Secret::new(DEV_ACCOUNT_KEY)),
                blob_endpoint: Some("http://127.0.0.1:10000/devstoreaccount1/".into()),
                ..AzureSettings::default()
            },
        )
        .unwrap();
        let at = humantime::parse_rfc3339("2026-11-30T11:00:00Z").unwrap();
        let url = store
            .signed_url("kong/3.4 x/config.json", Duration::from_secs(3600), at)
            .await
            .unwrap();
        let expected_sig = hmac_base64(
            &Secret::new(DEV_ACCOUNT_KEY),
            &BlobSas {
                account: DEV_ACCOUNT,
                container: "pictures",
                blob: "kong/3.4 x/config.json",
                expiry: "2026-11-30T12:00:00Z".into(),
            }
            .service_string_to_sign(),
        );
        assert_eq!(
            url,
            format!(
                "http://127.0.0.1:10000/devstoreaccount1/pictures/kong/3.4%20x/config.json?sv=2021-12-02&sr=b&sp=r&se=2026-11-30T12%3A00%3A00Z&sig={}",
                percent_encode(&expected_sig)
            )
        );
        assert!(store
            .signed_url("k", Duration::from_secs(8 * 24 * 3600), at)
            .await
            .is_err());
        let shown = format!("{store:?}");
        assert!(!shown.contains(DEV_ACCOUNT_KEY), "{shown}");
        assert!(
            shown.contains("Shared Key of account devstoreaccount1"),
            "{shown}"
        );
    }

    #[test]
    fn a_leased_blob_is_not_a_lost_race() {
        let store = AzureStore::new(
            "c".into(),
            AzureSettings {
                connection_string: Some(Secret::new("UseDevelopmentStorage=true")),
                ..AzureSettings::default()
            },
        )
        .unwrap();
        let answer = |code: &str| {
            Response::builder()
                .status(412)
                .header("x-ms-error-code", code)
                .body(Bytes::new())
                .unwrap()
        };
        assert!(matches!(
            store.failure("k", WRITE, &answer("ConditionNotMet")),
            StoreError::PreconditionFailed { .. }
        ));
        let err = store.failure("k", WRITE, &answer("LeaseIdMissing"));
        assert!(
            matches!(err, StoreError::Rejected { .. }) && err.to_string().contains("leased"),
            "{err}"
        );
        let denied = Response::builder()
            .status(403)
            .header("x-ms-error-code", "AuthorizationPermissionMismatch")
            .body(Bytes::new())
            .unwrap();
        match store.failure("k", WRITE, &denied) {
            StoreError::PermissionDenied {
                permission,
                resource,
                ..
            } => {
                assert_eq!(permission, WRITE);
                assert_eq!(resource, "azure://c/k");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_bodies_give_code_and_first_message_line() {
        let response = Response::builder()
            .status(403)
            .body(Bytes::from_static(b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.\nRequestId:1\nTime:2</Message></Error>"))
            .unwrap();
        assert_eq!(
            azure_error(&response),
            (
                "AuthorizationPermissionMismatch".to_owned(),
                "This request is not authorized to perform this operation using this permission."
                    .to_owned()
            )
        );
    }

    /// A loopback stand-in for Entra ID's token endpoint and the blob service's
    /// `Get User Delegation Key`: records every request line and authorization header.
    struct MockEntra {
        endpoint: String,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl MockEntra {
        async fn start(token_lifetime: u64) -> Self {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = seen.clone();
            tokio::spawn(async move {
                let mut issued = 0;
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then as much body as content-length says.
                    let head = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break String::new();
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            while buf.len() < end + 4 + len {
                                let n = socket.read(&mut chunk).await.unwrap_or(0);
                                if n == 0 {
                                    break;
                                }
                                buf.extend_from_slice(&chunk[..n]);
                            }
                            break head;
                        }
                    };
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let auth = head
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                        .unwrap_or("authorization: -")
                        .to_owned();
                    log.lock().unwrap().push(format!("{line} | {auth}"));
                    let body = if line.contains("/oauth2/v2.0/token") {
                        issued += 1;
                        format!(
                            "{{\"token_type\":\"Bearer\",\"access_token\":\"tok-{issued}\",\"expires_in\":{token_lifetime}}}"
                        )
                    } else {
                        format!(
                            "<?xml version=\"1.0\" encoding=\"utf-8\"?><UserDelegationKey><SignedOid>oid-1</SignedOid><SignedTid>tid-1</SignedTid><SignedStart>2026-11-30T00:00:00Z</SignedStart><SignedExpiry>2026-12-07T00:00:00Z</SignedExpiry><SignedService>b</SignedService><SignedVersion>{API_VERSION}</SignedVersion><Value>{DEV_ACCOUNT_KEY}</Value></UserDelegationKey>"
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            });
            Self { endpoint, seen }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn entra_settings(mock: &MockEntra) -> AzureSettings {
        AzureSettings {
            account: Some("acct".into()),
            blob_endpoint: Some(format!("{}/acct", mock.endpoint)),
            tenant_id: Some("tenant-1".into()),
            client_id: Some("app-1".into()),
            client_secret: Some(Secret::new("app-secret")),
            authority_host: Some(mock.endpoint.clone()),
            ..AzureSettings::default()
        }
    }

    #[tokio::test]
    async fn an_entra_signer_hands_out_user_delegation_sas_with_a_cached_key() {
        let mock = MockEntra::start(3600).await;
        let store = AzureStore::new("pictures".into(), entra_settings(&mock)).unwrap();
        let now = SystemTime::now();
        let first = store
            .signed_url("kong/1/config.json", Duration::from_secs(300), now)
            .await
            .unwrap();
        let second = store
            .signed_url("kong/1/config.json", Duration::from_secs(300), now)
            .await
            .unwrap();
        assert_eq!(first, second);
        let seen = mock.seen();
        assert_eq!(seen.len(), 2, "one token, one delegation key: {seen:?}");
        assert!(
            seen[0].starts_with("POST /tenant-1/oauth2/v2.0/token "),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("POST /acct/?comp=userdelegationkey&restype=service ")
                && seen[1].ends_with("Bearer tok-1"),
            "{seen:?}"
        );
        let sas = BlobSas {
            account: "acct",
            container: "pictures",
            blob: "kong/1/config.json",
            expiry: rfc3339(now + Duration::from_secs(300)),
        };
        let key = DelegationKey {
            object_id: "oid-1".into(),
            tenant_id: "tid-1".into(),
            start: "2026-11-30T00:00:00Z".into(),
            expiry: "2026-12-07T00:00:00Z".into(),
            service: "b".into(),
            version: API_VERSION.into(),
            value: Secret::new(DEV_ACCOUNT_KEY),
        };
        let expected: Vec<String> = sas
            .user_delegation_sas(&key)
            .iter()
            .map(|(n, v)| format!("{n}={}", percent_encode(v)))
            .collect();
        assert_eq!(
            first,
            format!(
                "{}/acct/pictures/kong/1/config.json?{}",
                mock.endpoint,
                expected.join("&")
            )
        );
        assert!(first.contains("skoid=oid-1&sktid=tid-1&"), "{first}");
        let shown = format!("{store:?}");
        assert!(
            shown.contains("service principal app-1") && !shown.contains("app-secret"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn tokens_are_renewed_before_they_expire_and_reused_until_then() {
        let long = MockEntra::start(3600).await;
        let store = AzureStore::new("c".into(), entra_settings(&long)).unwrap();
        let Auth::Entra(creds) = &store.auth else {
            panic!("an Entra identity")
        };
        assert_eq!(creds.access_token().await.unwrap().expose(), "tok-1");
        assert_eq!(creds.access_token().await.unwrap().expose(), "tok-1");
        assert_eq!(long.seen().len(), 1);

        // A token expiring within the refresh margin is renewed at its next use.
        let short = MockEntra::start(120).await;
        let store = AzureStore::new("c".into(), entra_settings(&short)).unwrap();
        let Auth::Entra(creds) = &store.auth else {
            panic!("an Entra identity")
        };
        assert_eq!(creds.access_token().await.unwrap().expose(), "tok-1");
        assert_eq!(creds.access_token().await.unwrap().expose(), "tok-2");
        assert_eq!(short.seen().len(), 2);
        assert_eq!(
            store.credential_source().await.unwrap(),
            "service principal app-1 of tenant tenant-1 (AZURE_CLIENT_SECRET), access token obtained"
        );
    }
}
