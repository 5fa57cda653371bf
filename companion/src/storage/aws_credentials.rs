//! AWS credentials for the S3 backend: static keys given to the companion, or AWS's default
//! credential chain (environment, shared config/credentials files with `AWS_PROFILE`, web
//! identity for EKS IRSA, ECS container credentials, IMDSv2) resolved by `aws-config` and cached
//! here until shortly before they expire.
//!
//! `aws-config` is used without its default features: its default HTTPS client brings `aws-lc-rs`
//! (a C/CMake build) and SSO support. Instead its credential providers get a hyper 1 + rustls
//! client on `ring` (`aws-smithy-http-client` with `rustls-ring`), the same TLS stack the rest of
//! the companion already uses.

use aws_config::provider_config::ProviderConfig;
use aws_config::Region;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::fmt;
use std::time::{Duration, SystemTime};
use tokio::sync::{Mutex, OnceCell};

/// Credentials are renewed this long before they expire, so that a request signed with them (or
/// a presigned URL handed to a filter) never carries credentials about to lapse.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Where an S3 store's credentials come from.
pub enum AwsCredentials {
    /// Keys given to the companion (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, flags).
    Static(Credentials),
    /// AWS's default credential chain, cached and refreshed before expiry.
    Chain(CredentialChain),
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Credentials`' own Debug redacts the secret and omits the session token.
            AwsCredentials::Static(c) => f.debug_tuple("Static").field(c).finish(),
            AwsCredentials::Chain(c) => f
                .debug_struct("Chain")
                .field("region", &c.region)
                .finish_non_exhaustive(),
        }
    }
}

/// Why no credentials could be had.
#[derive(Debug, thiserror::Error)]
#[error("no AWS credentials: {0}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or run where ECS or EC2 instance credentials are available")]
pub struct NoCredentials(String);

/// The default chain, built on first use (building it reads files and the environment).
pub struct CredentialChain {
    region: String,
    provider: OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
    cached: Mutex<Option<Credentials>>,
}

impl AwsCredentials {
    /// Static keys.
    pub fn fixed(access_key_id: &str, secret: &str, session_token: Option<&str>) -> Self {
        AwsCredentials::Static(Credentials::new(
            access_key_id,
            secret,
            session_token.map(str::to_owned),
            None,
            "static keys (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
        ))
    }

    /// AWS's default chain for `region` (web identity and profiles need it for STS).
    pub fn default_chain(region: &str) -> Self {
        AwsCredentials::Chain(CredentialChain {
            region: region.to_owned(),
            provider: OnceCell::new(),
            cached: Mutex::new(None),
        })
    }

    /// Credentials valid for at least [`REFRESH_MARGIN`] (or without expiry).
    pub async fn current(&self) -> Result<Credentials, NoCredentials> {
        match self {
            AwsCredentials::Static(c) => Ok(c.clone()),
            AwsCredentials::Chain(chain) => chain.current(SystemTime::now()).await,
        }
    }

    /// Which source the credentials came from, e.g. `Environment`, `ProfileFile`,
    /// `WebIdentityToken`, `EcsContainer`, `IMDSv2`, and the access key id (never the secret).
    pub async fn describe_source(&self) -> Result<String, NoCredentials> {
        let credentials = self.current().await?;
        let source = match self {
            AwsCredentials::Static(_) => {
                "static keys (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)".to_owned()
            }
            AwsCredentials::Chain(_) => format!(
                "AWS default chain, provider {}",
                provider_name(&credentials).unwrap_or_else(|| "(unnamed)".into())
            ),
        };
        let expiry = match credentials.expiry() {
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) => format!(", expire in {}s", left.as_secs()),
                Err(_) => ", expired".to_owned(),
            },
            None => String::new(),
        };
        Ok(format!(
            "{source}: access key {}{}{expiry}",
            credentials.access_key_id(),
            if credentials.session_token().is_some() {
                " with a session token"
            } else {
                ""
            }
        ))
    }
}

/// `Credentials` keeps the name of the provider that produced it private; its `Debug` output
/// (which redacts the secret) is the one place it shows.
fn provider_name(credentials: &Credentials) -> Option<String> {
    let shown = format!("{credentials:?}");
    let start = shown.find("provider_name: \"")? + "provider_name: \"".len();
    let end = shown[start..].find('"')? + start;
    Some(shown[start..end].to_owned())
}

impl CredentialChain {
    async fn current(&self, now: SystemTime) -> Result<Credentials, NoCredentials> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if still_fresh(c, now) {
                return Ok(c.clone());
            }
        }
        let provider = self
            .provider
            .get_or_init(|| async {
                let http_client = aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https();
                let config = ProviderConfig::default()
                    .with_http_client(http_client)
                    .with_region(Some(Region::new(self.region.clone())));
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(self.region.clone()))
                    .configure(config)
                    .build()
                    .await
            })
            .await;
        match provider.provide_credentials().await {
            Ok(fresh) => {
                let fresh = without_empty_token(fresh);
                *cached = Some(fresh.clone());
                Ok(fresh)
            }
            // A refresh that fails while the old credentials still work keeps them: an STS or
            // IMDS hiccup must not stop exports minutes before it matters.
            Err(e) => match cached.as_ref() {
                Some(c) if c.expiry().is_none_or(|at| at > now) => Ok(c.clone()),
                _ => Err(NoCredentials(crate::transport::error_chain(&e))),
            },
        }
    }
}

/// `aws-config` requires the `Token` field of ECS, IMDS and STS answers but takes `""`: that
/// is no session token, and must not be sent (nor reported) as one.
fn without_empty_token(credentials: Credentials) -> Credentials {
    if credentials.session_token() != Some("") {
        return credentials;
    }
    let mut builder = Credentials::builder()
        .access_key_id(credentials.access_key_id())
        .secret_access_key(credentials.secret_access_key())
        .provider_name(static_provider_name(&credentials));
    if let Some(at) = credentials.expiry() {
        builder = builder.expiry(at);
    }
    builder.build()
}

/// The provider name again, for a rebuilt `Credentials` (which wants a `&'static str`).
fn static_provider_name(credentials: &Credentials) -> &'static str {
    const KNOWN: &[&str] = &[
        "Environment",
        "ProfileFile",
        "WebIdentityToken",
        "EcsContainer",
        "IMDSv2",
        "CredentialProcess",
        "SSO",
        "Login",
    ];
    let name = provider_name(credentials);
    KNOWN
        .iter()
        .find(|known| name.as_deref() == Some(**known))
        .copied()
        .unwrap_or("DefaultChain")
}

fn still_fresh(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry()
        .is_none_or(|at| at > now + REFRESH_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_renewed_before_they_expire() {
        let now = SystemTime::now();
        let expiring = |secs| {
            Credentials::new(
                "AKID",
                "secret",
                None,
                Some(now + Duration::from_secs(secs)),
                "test",
            )
        };
        assert!(still_fresh(&expiring(3600), now));
        assert!(!still_fresh(&expiring(60), now), "inside the margin");
        assert!(still_fresh(
            &Credentials::new("AKID", "secret", None, None, "test"),
            now
        ));
    }

    #[tokio::test]
    async fn static_keys_describe_their_source_without_the_secret() {
        let creds = AwsCredentials::fixed("AKIDEXAMPLE", "wJalrSECRET", Some("T0KEN"));
        let described = creds.describe_source().await.unwrap();
        assert!(described.contains("AKIDEXAMPLE"), "{described}");
        assert!(described.contains("session token"), "{described}");
        let shown = format!("{described} {creds:?}");
        assert!(
            !shown.contains("wJalrSECRET") && !shown.contains("T0KEN"),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_session_token_is_no_session_token() {
        let at = SystemTime::now() + Duration::from_secs(600);
        let c = without_empty_token(Credentials::new(
            "AKID",
            "s3cret",
            Some(String::new()),
            Some(at),
            "EcsContainer",
        ));
        assert_eq!(c.session_token(), None);
        assert_eq!(c.expiry(), Some(at));
        assert_eq!(c.secret_access_key(), "s3cret");
        assert_eq!(provider_name(&c).as_deref(), Some("EcsContainer"));
        let kept = without_empty_token(Credentials::new(
            "AKID",
            "s3cret",
            Some("T".into()),
            None,
            "IMDSv2",
        ));
        assert_eq!(kept.session_token(), Some("T"));
    }

    #[test]
    fn the_provider_name_is_read_from_redacted_debug_output() {
        let c = Credentials::new("AKID", "s3cret", None, None, "Environment");
        assert_eq!(provider_name(&c).as_deref(), Some("Environment"));
    }
}
