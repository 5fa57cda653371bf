//! Google Cloud credentials for the GCS backend: a service-account key (the JSON of
//! `GCP_SERVICE_ACCOUNT`, or the file `GOOGLE_APPLICATION_CREDENTIALS` names) exchanged for
//! OAuth2 access tokens with a self-signed RS256 JWT, or — with neither — the metadata server
//! (GKE workload identity, GCE/Cloud Run service accounts). Tokens are cached and renewed
//! [`REFRESH_MARGIN`] before they expire.
//!
//! Signing (JWTs, V4 signed URLs) uses `ring`'s RSA, already in the tree through rustls. With
//! metadata-server credentials there is no private key here: blobs are signed by the IAM
//! Credentials `signBlob` API in the service account's name.

use crate::secret::Secret;
use crate::transport::{self, HttpClient};
use base64::Engine;
use bytes::Bytes;
use fallback_core::wire::percent_encode;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, OnceCell};

/// Tokens are renewed this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Read-write on objects; enough for uploads, metadata reads and deletes.
const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// `signBlob` needs the broad scope; metadata-server tokens carry the instance's scopes.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
const DEADLINE: Duration = Duration::from_secs(15);

/// Why credentials could not be had or used.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// Whether retrying later may help (network errors, 5xx).
    pub transient: bool,
    message: String,
}

impl AuthError {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self {
            transient: false,
            message: message.into(),
        }
    }
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            transient: true,
            message: message.into(),
        }
    }

    /// The store error for an operation on `key` that could not authenticate: retried later
    /// when transient, else bad credentials.
    pub(crate) fn into_store_error(self, key: &str) -> super::StoreError {
        let (key, detail) = (key.to_owned(), self.to_string());
        if self.transient {
            super::StoreError::Transient { key, detail }
        } else {
            super::StoreError::BadCredentials { key, detail }
        }
    }
}

/// A service-account key. `Debug` shows the account and key id, never the key.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key_pair: Arc<RsaKeyPair>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Parses a service-account key file (`"type": "service_account"`). `origin` names where the
    /// text came from, for messages; the messages never quote the text.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, AuthError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            AuthError::permanent(format!(
                "{origin} is not a service-account key file: invalid JSON at line {} column {} ({}); download a JSON key from IAM > Service accounts > Keys",
                e.line(),
                e.column(),
                classify_name(&e)
            ))
        })?;
        if let Some(kind) = file.kind.as_deref() {
            if kind != "service_account" {
                return Err(AuthError::permanent(format!(
                    "{origin} holds credentials of type {kind:?}; only \"service_account\" keys are supported (or unset it to use the metadata server)"
                )));
            }
        }
        let client_email = file
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or_else(|| AuthError::permanent(format!("{origin} has no client_email")))?;
        let pem = file
            .private_key
            .ok_or_else(|| AuthError::permanent(format!("{origin} has no private_key")))?;
        let key_pair = parse_rsa_pem(&pem)
            .map_err(|problem| AuthError::permanent(format!("{origin}: private_key {problem}")))?;
        Ok(Self {
            client_email,
            private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
            token_uri: file
                .token_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
            key_pair: Arc::new(key_pair),
        })
    }

    /// The service account's e-mail address.
    pub fn email(&self) -> &str {
        &self.client_email
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| AuthError::permanent("RSA signing failed"))?;
        Ok(signature)
    }

    /// The RS256 JWT asserting this account for the OAuth2 JWT-bearer grant.
    pub fn token_assertion(&self, now: SystemTime) -> Result<String, AuthError> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": STORAGE_SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn classify_name(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected field type",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

/// A PKCS#8 (`BEGIN PRIVATE KEY`, what Google issues) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM.
fn parse_rsa_pem(pem: &str) -> Result<RsaKeyPair, String> {
    let pkcs1 = pem.contains("BEGIN RSA PRIVATE KEY");
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "is not a PEM block".to_owned())?;
    let parsed = if pkcs1 {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    parsed.map_err(|e| format!("is not a usable RSA key ({e})"))
}

/// An access token and when it stops working.
#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: SystemTime,
}

/// Where the GCS backend's identity comes from.
pub struct GcpCredentials {
    kind: Kind,
    token: Mutex<Option<CachedToken>>,
    client: HttpClient,
}

enum Kind {
    ServiceAccount {
        key: ServiceAccountKey,
        origin: String,
    },
    MetadataServer {
        host: String,
        email: OnceCell<String>,
    },
}

impl fmt::Debug for GcpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::ServiceAccount { key, origin } => f
                .debug_struct("ServiceAccount")
                .field("origin", origin)
                .field("key", key)
                .finish(),
            Kind::MetadataServer { host, .. } => f
                .debug_struct("MetadataServer")
                .field("host", host)
                .finish(),
        }
    }
}

impl GcpCredentials {
    /// A service-account key; `origin` says where it came from (e.g. `GCP_SERVICE_ACCOUNT`).
    pub fn service_account(key: ServiceAccountKey, origin: &str) -> Self {
        Self::with_kind(Kind::ServiceAccount {
            key,
            origin: origin.to_owned(),
        })
    }

    /// The metadata server at `host` (`GCE_METADATA_HOST`, default `metadata.google.internal`).
    pub fn metadata_server(host: Option<&str>) -> Self {
        Self::with_kind(Kind::MetadataServer {
            host: host
                .filter(|h| !h.is_empty())
                .unwrap_or(DEFAULT_METADATA_HOST)
                .to_owned(),
            email: OnceCell::new(),
        })
    }

    fn with_kind(kind: Kind) -> Self {
        Self {
            kind,
            token: Mutex::new(None),
            client: transport::client(),
        }
    }

    /// The service-account key, when there is one (V4 signing is then local).
    pub fn key(&self) -> Option<&ServiceAccountKey> {
        match &self.kind {
            Kind::ServiceAccount { key, .. } => Some(key),
            Kind::MetadataServer { .. } => None,
        }
    }

    /// Where the identity comes from and which account it is.
    pub async fn describe(&self) -> Result<String, AuthError> {
        Ok(match &self.kind {
            Kind::ServiceAccount { key, origin } => format!(
                "service-account key from {origin}: {}{}",
                key.client_email,
                key.private_key_id
                    .as_deref()
                    .map(|k| format!(" (key id {k})"))
                    .unwrap_or_default()
            ),
            Kind::MetadataServer { host, .. } => {
                format!("metadata server {host}: {}", self.email().await?)
            }
        })
    }

    /// The service account's e-mail (the metadata server is asked once).
    pub async fn email(&self) -> Result<String, AuthError> {
        match &self.kind {
            Kind::ServiceAccount { key, .. } => Ok(key.client_email.clone()),
            Kind::MetadataServer { host, email } => email
                .get_or_try_init(|| async {
                    let body = self
                        .metadata_get(
                            host,
                            "/computeMetadata/v1/instance/service-accounts/default/email",
                        )
                        .await?;
                    Ok(String::from_utf8_lossy(&body).trim().to_owned())
                })
                .await
                .cloned(),
        }
    }

    /// A bearer token valid for at least [`REFRESH_MARGIN`].
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
            // A failed renewal keeps a token that still works: a token-endpoint hiccup must not
            // stop exports minutes before it matters.
            Err(e) => match cached.as_ref() {
                Some(t) if t.expires_at > now + Duration::from_secs(30) => Ok(t.token.clone()),
                _ => Err(e),
            },
        }
    }

    async fn fetch_token(&self, now: SystemTime) -> Result<CachedToken, AuthError> {
        let body = match &self.kind {
            Kind::ServiceAccount { key, origin } => {
                let assertion = key.token_assertion(now)?;
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
                );
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(&key.token_uri)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(form)))
                    .map_err(|e| {
                        AuthError::permanent(format!(
                            "{origin}: token_uri {:?} is not usable: {e}",
                            key.token_uri
                        ))
                    })?;
                let what = format!(
                    "the token endpoint {} for {}",
                    transport::redact_url(&key.token_uri),
                    key.client_email
                );
                let response = transport::send(&self.client, request, DEADLINE)
                    .await
                    .map_err(|e| AuthError::transient(format!("{what} is unreachable: {e}")))?;
                if !response.status().is_success() {
                    let said = oauth_error(response.body());
                    let message = format!(
                        "{what} refused the key: HTTP {} {said}; check that the key in {origin} is current (not deleted or disabled) and this host's clock is right",
                        response.status().as_u16()
                    );
                    return Err(if response.status().is_server_error() {
                        AuthError::transient(message)
                    } else {
                        AuthError::permanent(message)
                    });
                }
                response.into_body()
            }
            Kind::MetadataServer { host, .. } => {
                self.metadata_get(
                    host,
                    "/computeMetadata/v1/instance/service-accounts/default/token",
                )
                .await?
            }
        };
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            AuthError::transient(format!(
                "the token response is not what OAuth2 promises: {e}"
            ))
        })?;
        Ok(CachedToken {
            token: Secret::new(parsed.access_token),
            expires_at: now + Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
        })
    }

    async fn metadata_get(&self, host: &str, path: &str) -> Result<Bytes, AuthError> {
        let url = format!("http://{host}{path}");
        let request = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("metadata-flavor", "Google")
            .body(Full::new(Bytes::new()))
            .map_err(|e| AuthError::permanent(format!("metadata server URL {url}: {e}")))?;
        let response = transport::send(&self.client, request, DEADLINE)
            .await
            .map_err(|e| {
                AuthError::transient(format!(
                    "no GCS credentials: GCP_SERVICE_ACCOUNT and GOOGLE_APPLICATION_CREDENTIALS are not set and the metadata server {host} is unreachable ({e}); set one of them, or run on GCE/GKE/Cloud Run with a service account"
                ))
            })?;
        match response.status() {
            s if s.is_success() => Ok(response.into_body()),
            StatusCode::NOT_FOUND => Err(AuthError::permanent(format!(
                "the metadata server {host} has no service account for this workload (HTTP 404 for {path}); attach one (GKE: workload identity) or set GCP_SERVICE_ACCOUNT"
            ))),
            s => Err(AuthError::transient(format!(
                "the metadata server {host} answered HTTP {} for {path}",
                s.as_u16()
            ))),
        }
    }

    /// RSASSA-PKCS1-v1_5 SHA-256 signature of `blob` by the service account: locally with a
    /// key, else by the IAM Credentials `signBlob` API (needs `iam.serviceAccounts.signBlob`
    /// on the account itself, e.g. roles/iam.serviceAccountTokenCreator).
    pub async fn sign_blob(&self, blob: &[u8]) -> Result<Vec<u8>, AuthError> {
        if let Some(key) = self.key() {
            return key.sign(blob);
        }
        let email = self.email().await?;
        let url = format!(
            "{IAM_CREDENTIALS}/v1/projects/-/serviceAccounts/{}:signBlob",
            percent_encode(&email)
        );
        let payload = serde_json::json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(blob)
        });
        let token = self.access_token().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("authorization", format!("Bearer {}", token.expose()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload.to_string())))
            .map_err(|e| AuthError::permanent(format!("signBlob request: {e}")))?;
        let response = transport::send(&self.client, request, DEADLINE)
            .await
            .map_err(|e| AuthError::transient(format!("IAM Credentials is unreachable: {e}")))?;
        if !response.status().is_success() {
            let message = format!(
                "IAM Credentials signBlob for {email} failed: HTTP {} {}; grant the account roles/iam.serviceAccountTokenCreator on itself and enable the IAM Service Account Credentials API",
                response.status().as_u16(),
                google_error(response.body())
            );
            return Err(if response.status().is_server_error() {
                AuthError::transient(message)
            } else {
                AuthError::permanent(message)
            });
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Signed {
            signed_blob: String,
        }
        let signed: Signed = serde_json::from_slice(response.body())
            .map_err(|e| AuthError::transient(format!("signBlob answered unexpectedly: {e}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(signed.signed_blob)
            .map_err(|e| AuthError::transient(format!("signBlob answered unexpectedly: {e}")))
    }
}

/// `error: error_description` of an OAuth2 error body.
fn oauth_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => [e.error, e.error_description]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": "),
        Err(_) => String::new(),
    }
}

/// The `error.message` of a Google API error body.
pub fn google_error(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inactive test account of googleapis/conformance-tests (see
    /// `companion/tests/fixtures/gcs-v4-simple-get.json`).
    pub(crate) fn conformance_key() -> ServiceAccountKey {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/gcs-v4-simple-get.json"))
                .unwrap();
        ServiceAccountKey::from_json(&fixture["service_account"].to_string(), "fixture").unwrap()
    }

    #[test]
    fn a_key_shows_its_account_never_its_private_key() {
        let key = conformance_key();
        assert_eq!(
            key.email(),
            "test-iam-credentials@dummy-project-id.iam.gserviceaccount.com"
        );
        let creds = GcpCredentials::service_account(key, "GCP_SERVICE_ACCOUNT");
        let shown = format!("{creds:?}");
        assert!(shown.contains("test-iam-credentials@"), "{shown}");
        assert!(
            !shown.contains("MIIE") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn bad_key_files_are_named_without_quoting_them() {
        for (text, expect) in [
            ("{not json", "not a service-account key file"),
            (r#"{"type":"authorized_user"}"#, "authorized_user"),
            (
                r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n"}"#,
                "not a usable RSA key",
            ),
        ] {
            let err = ServiceAccountKey::from_json(text, "GCP_SERVICE_ACCOUNT").unwrap_err();
            let message = err.to_string();
            assert!(message.contains(expect), "{message}");
            assert!(message.contains("GCP_SERVICE_ACCOUNT"), "{message}");
            assert!(!message.contains("c2VjcmV0"), "{message}");
        }
    }

    #[test]
    fn the_token_assertion_is_an_rs256_jwt_for_the_token_endpoint() {
        let key = conformance_key();
        let at = UNIX_EPOCH + Duration::from_secs(1_549_011_600);
        let jwt = key.token_assertion(at).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap(),
            )
            .unwrap()
        };
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "ffffffffffffffffffffffffffffffffffffffff");
        let claims = decode(parts[1]);
        assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(claims["iat"], 1_549_011_600);
        assert_eq!(claims["exp"], 1_549_015_200);
        assert_eq!(claims["scope"], STORAGE_SCOPE);
        // The signature verifies with the key's public half.
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.key_pair.public().as_ref().to_vec(),
        );
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the JWT signature verifies");
    }
}
