//! Microsoft Entra ID (Azure AD) credentials for the Azure Blob backend, found as Azure's own
//! SDKs find them (`DefaultAzureCredential`, minus the developer tools):
//!
//! 1. a service principal with a secret: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//!    `AZURE_CLIENT_SECRET` (OAuth2 client credentials);
//! 2. workload identity (AKS): `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!    `AZURE_FEDERATED_TOKEN_FILE`, whose token is re-read at every exchange (the kubelet
//!    rotates it);
//! 3. managed identity through the instance metadata service (IMDS), user-assigned when
//!    `AZURE_CLIENT_ID` is set.
//!
//! The token endpoint is `AZURE_AUTHORITY_HOST` (default `https://login.microsoftonline.com`,
//! other values for sovereign clouds). Tokens are cached and renewed
//! [`REFRESH_MARGIN`](super::gcp_auth::REFRESH_MARGIN) before they expire, as GCS tokens are; a
//! failed renewal keeps a token that still works.

use crate::secret::Secret;
use crate::transport::{self, HttpClient};
use bytes::Bytes;
use fallback_core::wire::percent_encode;
use http::{Method, Request};
use http_body_util::Full;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

pub use super::gcp_auth::AuthError;
use super::gcp_auth::REFRESH_MARGIN;

/// The OAuth2 scope of Azure Storage data-plane tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Entra ID's public-cloud authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The instance metadata service's address.
pub const DEFAULT_IMDS_HOST: &str = "169.254.169.254";
const DEADLINE: Duration = Duration::from_secs(15);

/// How the identity proves itself.
#[derive(Clone)]
pub enum EntraIdentity {
    /// A service principal's client secret.
    ClientSecret {
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_CLIENT_SECRET`.
        secret: Secret,
    },
    /// A federated token (AKS workload identity) exchanged as a client assertion.
    WorkloadIdentity {
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: PathBuf,
    },
    /// The VM's or pod's managed identity, through IMDS.
    ManagedIdentity {
        /// `AZURE_CLIENT_ID` of a user-assigned identity; `None`: the system-assigned one.
        client_id: Option<String>,
        /// IMDS host (`AZURE_POD_IDENTITY_AUTHORITY_HOST`, default 169.254.169.254).
        host: String,
    },
}

impl fmt::Debug for EntraIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl EntraIdentity {
    /// Which identity, from where; never the secret or the federated token.
    pub fn describe(&self) -> String {
        match self {
            EntraIdentity::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => format!(
                "service principal {client_id} of tenant {tenant_id} (AZURE_CLIENT_SECRET)"
            ),
            EntraIdentity::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => format!(
                "workload identity {client_id} of tenant {tenant_id} (AZURE_FEDERATED_TOKEN_FILE {})",
                token_file.display()
            ),
            EntraIdentity::ManagedIdentity { client_id, host } => match client_id {
                Some(id) => format!("user-assigned managed identity {id} (IMDS {host})"),
                None => format!("system-assigned managed identity (IMDS {host})"),
            },
        }
    }
}

#[derive(Clone)]
pub(crate) struct CachedToken {
    token: Secret,
    expires_at: SystemTime,
}

/// An Entra ID identity and its cached storage token.
pub struct EntraCredentials {
    identity: EntraIdentity,
    authority_host: String,
    token: Mutex<Option<CachedToken>>,
    client: HttpClient,
}

impl fmt::Debug for EntraCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraCredentials")
            .field("identity", &self.identity)
            .field("authority_host", &self.authority_host)
            .finish_non_exhaustive()
    }
}

impl EntraCredentials {
    /// `identity`, with tokens from `authority_host` (`None`: the public cloud's).
    pub fn new(identity: EntraIdentity, authority_host: Option<&str>) -> Self {
        Self {
            identity,
            authority_host: authority_host
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .unwrap_or(DEFAULT_AUTHORITY_HOST)
                .trim_end_matches('/')
                .to_owned(),
            token: Mutex::new(None),
            client: transport::client(),
        }
    }

    /// Which identity this is.
    pub fn describe(&self) -> String {
        self.identity.describe()
    }

    /// A bearer token for Azure Storage valid for at least the refresh margin.
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        let now = SystemTime::now();
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if t.expires_at > now + REFRESH_MARGIN {
                return Ok(t.token.clone());
            }
        }
        match self.fetch_token(now).await {
            Ok(fresh) => {
                *cached = Some(fresh.clone());
                Ok(fresh.token)
            }
            Err(e) => match cached.as_ref() {
                Some(t) if t.expires_at > now + Duration::from_secs(30) => Ok(t.token.clone()),
                _ => Err(e),
            },
        }
    }

    /// The token request for this identity (method, URL, headers, form body).
    fn token_request(&self) -> Result<Request<Full<Bytes>>, AuthError> {
        let form = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| format!("{n}={}", percent_encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        };
        let post = |tenant: &str, body: String| {
            Request::builder()
                .method(Method::POST)
                .uri(format!(
                    "{}/{}/oauth2/v2.0/token",
                    self.authority_host,
                    percent_encode(tenant)
                ))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))
        };
        let built = match &self.identity {
            EntraIdentity::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => post(
                tenant_id,
                form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret.expose()),
                    ("scope", STORAGE_SCOPE),
                ]),
            ),
            EntraIdentity::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    AuthError::permanent(format!(
                        "cannot read AZURE_FEDERATED_TOKEN_FILE {}: {e}; check the pod's workload-identity projection",
                        token_file.display()
                    ))
                })?;
                post(
                    tenant_id,
                    form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                        ("scope", STORAGE_SCOPE),
                    ]),
                )
            }
            EntraIdentity::ManagedIdentity { client_id, host } => {
                let mut url = format!(
                    "http://{host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    percent_encode("https://storage.azure.com/")
                );
                if let Some(id) = client_id {
                    url.push_str(&format!("&client_id={}", percent_encode(id)));
                }
                Request::builder()
                    .method(Method::GET)
                    .uri(url)
                    .header("metadata", "true")
                    .body(Full::new(Bytes::new()))
            }
        };
        built.map_err(|e| {
            AuthError::permanent(format!(
                "the token request for {} cannot be built: {e}; check AZURE_AUTHORITY_HOST and AZURE_TENANT_ID",
                self.describe()
            ))
        })
    }

    async fn fetch_token(&self, now: SystemTime) -> Result<CachedToken, AuthError> {
        let request = self.token_request()?;
        let endpoint = transport::redact_url(&request.uri().to_string());
        let who = self.describe();
        let response = transport::send(&self.client, request, DEADLINE)
            .await
            .map_err(|e| {
                AuthError::transient(format!(
                    "no Azure token for {who}: {endpoint} is unreachable ({e}); set AZURE_STORAGE_KEY or a connection string, or check the identity's setup"
                ))
            })?;
        if !response.status().is_success() {
            let said = match oauth_error(response.body()) {
                e if e.is_empty() => format!("HTTP {}", response.status().as_u16()),
                e => format!("HTTP {} {e}", response.status().as_u16()),
            };
            let hint = match self.identity {
                EntraIdentity::ManagedIdentity { .. } => "no managed identity is assigned to this host (or this is not an Azure host): assign one, or set AZURE_STORAGE_KEY, AZURE_STORAGE_CONNECTION_STRING or a service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)",
                _ => "check the identity's tenant, client id and secret (or federated credential), and that it exists",
            };
            let message = format!("{endpoint} refused a token for {who}: {said}; {hint}");
            return Err(if response.status().is_server_error() {
                AuthError::transient(message)
            } else {
                AuthError::permanent(message)
            });
        }
        parse_token(response.body(), now)
    }
}

/// Reads a token response: Entra's v2 endpoint sends `expires_in` as a number, IMDS as a
/// string.
pub(crate) fn parse_token(body: &[u8], now: SystemTime) -> Result<CachedToken, AuthError> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        access_token: String,
        expires_in: Option<serde_json::Value>,
    }
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        AuthError::transient(format!(
            "the token response is not what OAuth2 promises: {e}"
        ))
    })?;
    let lifetime = match parsed.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(3600);
    Ok(CachedToken {
        token: Secret::new(parsed.access_token),
        expires_at: now + Duration::from_secs(lifetime),
    })
}

/// `error: error_description` of an OAuth2 error body (first line of the description: Entra
/// appends trace and correlation ids).
fn oauth_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => [
            e.error,
            e.error_description
                .map(|d| d.lines().next().unwrap_or_default().to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": "),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(request: Request<Full<Bytes>>) -> String {
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn client_secret_is_a_client_credentials_grant_for_the_storage_scope() {
        let creds = EntraCredentials::new(
            EntraIdentity::ClientSecret {
                tenant_id: "tenant-1".into(),
                client_id: "app-1".into(),
                secret: Secret::new("s3cr3t+/="),
            },
            Some("https://login.microsoftonline.us/"),
        );
        let request = creds.token_request().unwrap();
        assert_eq!(
            request.uri().to_string(),
            "https://login.microsoftonline.us/tenant-1/oauth2/v2.0/token"
        );
        let body = body_of(request).await;
        assert_eq!(
            body,
            "grant_type=client_credentials&client_id=app-1&client_secret=s3cr3t%2B%2F%3D&scope=https%3A%2F%2Fstorage.azure.com%2F.default"
        );
        assert!(!format!("{creds:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn workload_identity_sends_the_file_token_as_assertion_and_rereads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJfirst\n").unwrap();
        let creds = EntraCredentials::new(
            EntraIdentity::WorkloadIdentity {
                tenant_id: "t".into(),
                client_id: "c".into(),
                token_file: file.clone(),
            },
            None,
        );
        let body = body_of(creds.token_request().unwrap()).await;
        assert!(body.contains("client_assertion=eyJfirst&"), "{body}");
        assert!(body.contains("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"), "{body}");
        std::fs::write(&file, "eyJrotated").unwrap();
        let body = body_of(creds.token_request().unwrap()).await;
        assert!(body.contains("client_assertion=eyJrotated&"), "{body}");
        std::fs::remove_file(&file).unwrap();
        let err = creds.token_request().unwrap_err().to_string();
        assert!(err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
    }

    #[test]
    fn managed_identity_asks_imds_with_the_metadata_header() {
        let creds = EntraCredentials::new(
            EntraIdentity::ManagedIdentity {
                client_id: Some("uami".into()),
                host: DEFAULT_IMDS_HOST.into(),
            },
            None,
        );
        let request = creds.token_request().unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().to_string(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com%2F&client_id=uami"
        );
        assert_eq!(request.headers()["metadata"], "true");
    }

    #[test]
    fn token_lifetimes_come_as_numbers_or_strings() {
        let now = SystemTime::UNIX_EPOCH;
        let t = parse_token(br#"{"access_token":"a","expires_in":3599}"#, now).unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(3599));
        let t = parse_token(br#"{"access_token":"a","expires_in":"86399"}"#, now).unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(86399));
        assert!(parse_token(b"<html>", now).is_err());
    }

    #[test]
    fn oauth_errors_keep_the_first_line_only() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#),
            "invalid_client: AADSTS7000215: Invalid client secret provided."
        );
    }
}
