//! Command line: every setting has a flag and an environment variable (Kong's names where Kong
//! has one, so existing compose files carry over).

use crate::exporter::{self, ExportSettings, ExportStats, WriteOutcome};
use crate::secret::Secret;
use crate::signer::{self, Tokens};
use crate::signing::SigningKey;
use crate::source;
use crate::storage::{
    self, AzureSettings, BackendSettings, ConfigStore, GcsSettings, S3Settings,
    ServerSideEncryption, StorageUrl, UrlSigner,
};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use fallback_core::backoff::Backoff;
use fallback_core::export::ExportMetadata;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Keeps Kong and proxy-wasm data planes serving when their control plane is down.
#[derive(Debug, Parser)]
#[command(name = "fallback-companion", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `debug,hyper=info`.
    #[arg(long, env = "FALLBACK_LOG", default_value = "info", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The companion's commands.
// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the roles switched on: export (KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on) and/or signer
    /// (KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on); both may run in one process.
    Run(RunArgs),
    /// Validate a declarative config file and export it once (for CI pipelines).
    ///
    /// Exit codes: 0 stored (or storage already holds these bytes), 1 storage failure,
    /// 2 the file is unreadable or invalid, 3 storage holds a newer revision.
    Export(ExportArgs),
    /// Print a signed GET URL of one object (like `aws s3 presign`, `gsutil signurl`), with the
    /// credentials of the same environment as `run`.
    Presign(crate::presign::PresignArgs),
    /// Check storage URL, credentials, reachability, clock skew, permissions and the current
    /// config.json with the environment of `run`; one line per check, exit code 1 on a failure.
    Doctor(crate::doctor::DoctorArgs),
    /// Print, as one JSON object, where the filter would send a request under a config file:
    /// route, service, upstream URL and Host (or the 404/426/503 it would answer).
    Match(crate::match_cmd::MatchArgs),
    /// Write a new Ed25519 signing key (PKCS#8 PEM) to --out and print its public key (base64)
    /// for the filter's `public_key`.
    Keygen(KeygenArgs),
}

/// The variables a mirror may set for itself as `FALLBACK_MIRROR_<n>_<VARIABLE>`, `<n>` its
/// place in `FALLBACK_MIRROR_STORAGES` from 1 (e.g. `FALLBACK_MIRROR_1_AWS_ACCESS_KEY_ID`).
pub const MIRROR_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_CONFIG_STORAGE_ENDPOINT",
    "GCP_SERVICE_ACCOUNT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_BLOB_ENDPOINT",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// The Azure variables that are credentials: a mirror giving any of them takes none of the
/// primary's.
const AZURE_CREDENTIAL_VARIABLES: [&str; 6] = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_KEY",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// Where exports live and with which credentials.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Storage URL: s3://bucket/prefix, gcs://bucket/prefix (the prefix kept byte for byte, as
    /// GCS object names are: gcs://b//kong stores /kong/...), azure://container/prefix, or
    /// file:///dir for the embedded local store.
    #[arg(
        long = "storage",
        env = "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
        value_name = "URL"
    )]
    pub storage: String,

    /// Mirror storage URLs, comma-separated (any mix of s3://, gcs://, azure://, file://): the
    /// export role writes every export to the primary storage and then to each mirror; the
    /// signer hands out a signed URL for every store holding the current revision, primary
    /// first. Mirrors use the same credential variables as the primary, unless mirror <n> (from
    /// 1) sets its own as FALLBACK_MIRROR_<n>_<VARIABLE> (docs/storage.md#mirrors).
    #[arg(
        long = "mirror-storage",
        env = "FALLBACK_MIRROR_STORAGES",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub mirror_storages: Vec<String>,

    /// The `<version>` in `<prefix>/<version>/config.json`; exporter and importers must agree
    /// (Kong uses its full version, e.g. 3.4.1.0).
    #[arg(long, env = "FALLBACK_CONFIG_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub config_version: String,

    /// This node's name in the export metadata [default: the host name].
    #[arg(long, env = "FALLBACK_NODE_ID")]
    pub node_id: Option<String>,

    /// S3 access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub aws_access_key_id: Option<String>,

    /// S3 secret access key (prefer the environment variable: flags show in process lists).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<Secret>,

    /// S3 session token, for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub aws_session_token: Option<Secret>,

    /// S3 region [env: AWS_REGION, then AWS_DEFAULT_REGION].
    #[arg(long)]
    pub aws_region: Option<String>,

    /// S3-compatible endpoint (MinIO, SeaweedFS…), e.g. http://minio:9000; buckets are then
    /// addressed path-style.
    #[arg(long, env = "AWS_CONFIG_STORAGE_ENDPOINT", value_name = "URL")]
    pub aws_endpoint: Option<String>,

    /// Address buckets path-style even on AWS.
    #[arg(long, env = "FALLBACK_S3_FORCE_PATH_STYLE", value_parser = parse_on_off, action = clap::ArgAction::Set, default_value = "off", value_name = "on|off")]
    pub s3_force_path_style: bool,

    /// Server-side encryption of S3 uploads, as Kong's cluster_fallback_export_s3_config:
    /// e.g. {"ServerSideEncryption":"aws:kms","SSEKMSKeyId":"arn:aws:kms:..."}.
    #[arg(long, env = "KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG", value_parser = parse_s3_config, value_name = "JSON")]
    pub s3_config: Option<ServerSideEncryption>,

    /// GCS: the service-account key JSON itself (prefer the environment variable).
    #[arg(
        long,
        env = "GCP_SERVICE_ACCOUNT",
        hide_env_values = true,
        value_name = "JSON"
    )]
    pub gcp_service_account: Option<Secret>,

    /// GCS: path of a service-account key file [used when GCP_SERVICE_ACCOUNT is not set;
    /// with neither, the metadata server].
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS", value_name = "FILE")]
    pub google_application_credentials: Option<PathBuf>,

    /// GCS: an emulator's host:port or URL (fake-gcs-server); requests then go there
    /// unauthenticated.
    #[arg(long, env = "STORAGE_EMULATOR_HOST", value_name = "HOST:PORT")]
    pub storage_emulator_host: Option<String>,

    /// GCS: the metadata server's host, when not metadata.google.internal.
    #[arg(long, env = "GCE_METADATA_HOST", value_name = "HOST[:PORT]")]
    pub gce_metadata_host: Option<String>,

    /// Azure: a storage connection string (AccountName, AccountKey, optional BlobEndpoint, or
    /// UseDevelopmentStorage=true); wins over the other Azure settings.
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "TEXT"
    )]
    pub azure_storage_connection_string: Option<Secret>,

    /// Azure: the storage account name.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT", value_name = "NAME")]
    pub azure_storage_account: Option<String>,

    /// Azure: the account key (Shared Key) [without it: an Entra ID identity: service
    /// principal, workload identity or managed identity].
    #[arg(
        long,
        env = "AZURE_STORAGE_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub azure_storage_key: Option<Secret>,

    /// Azure: the blob service endpoint, for Azurite, sovereign clouds or private endpoints
    /// [default: https://<account>.blob.core.windows.net].
    #[arg(long, env = "AZURE_STORAGE_BLOB_ENDPOINT", value_name = "URL")]
    pub azure_storage_blob_endpoint: Option<String>,

    /// Azure: the Entra ID tenant of a service principal or workload identity.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "ID")]
    pub azure_tenant_id: Option<String>,

    /// Azure: the client id of a service principal, workload identity or user-assigned
    /// managed identity.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "ID")]
    pub azure_client_id: Option<String>,

    /// Azure: a service principal's client secret.
    #[arg(
        long,
        env = "AZURE_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub azure_client_secret: Option<Secret>,

    /// Azure: the federated token file of workload identity (AKS sets it).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub azure_federated_token_file: Option<PathBuf>,

    /// Azure: the Entra ID authority [default: https://login.microsoftonline.com].
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub azure_authority_host: Option<String>,

    /// Azure: the instance metadata service's host, when not 169.254.169.254.
    #[arg(
        long,
        env = "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        value_name = "HOST[:PORT]"
    )]
    pub azure_imds_host: Option<String>,
}

fn parse_s3_config(text: &str) -> Result<ServerSideEncryption, String> {
    ServerSideEncryption::parse(text)
        .map_err(|problem| format!("KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG {problem}"))
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Export role: poll the control plane and export every new valid config.
    #[arg(long = "export", env = "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", value_parser = parse_on_off, action = clap::ArgAction::Set, default_value = "off", value_name = "on|off")]
    pub export: bool,

    /// Signer role: serve filters short-lived signed URLs of the exported config
    /// (GET /v1/fallback-config); give it read-only storage credentials.
    #[arg(long = "import", env = "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", value_parser = parse_on_off, action = clap::ArgAction::Set, default_value = "off", value_name = "on|off")]
    pub import: bool,

    /// Address the signer role listens on (HTTP/1.1). In a container use 0.0.0.0:8280, or the
    /// filters outside it cannot connect.
    #[arg(
        long,
        env = "FALLBACK_LISTEN",
        default_value = "127.0.0.1:8280",
        value_name = "ADDR:PORT"
    )]
    pub listen: std::net::SocketAddr,

    /// Where the admin pages (/ui/), /metrics and /healthz are served when the signer role is
    /// off [default: 127.0.0.1:8281]; with the signer role on, /ui/ is on its listener and this
    /// adds a second one.
    #[arg(long, env = "FALLBACK_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// Token the admin pages (/ui/) require: always when set, and they refuse everyone without
    /// it when their listener is not on loopback. Browsers ask for it as a password.
    #[arg(long, env = "FALLBACK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Bearer tokens filters must present, comma-separated (prefer the environment variable:
    /// flags show in process lists). `name:token` gives a token the name logs and the status
    /// page show.
    #[arg(
        long,
        env = "FALLBACK_SIGNER_TOKENS",
        hide_env_values = true,
        value_name = "TOKEN,..."
    )]
    pub signer_tokens: Option<Secret>,

    /// File of bearer tokens, one per line (`token` or `name:token`), `#` comments; re-read
    /// when it changes, so tokens rotate without a restart.
    #[arg(long, env = "FALLBACK_SIGNER_TOKENS_FILE", value_name = "FILE")]
    pub signer_tokens_file: Option<PathBuf>,

    /// Lifetime of the signed URLs handed out (at most 7 days, S3's limit).
    #[arg(long, env = "FALLBACK_SIGNED_URL_TTL", default_value = "5m", value_parser = parse_duration)]
    pub signed_url_ttl: Duration,

    /// file:// storage only: the base URL filters reach this companion at, for the object URLs
    /// it signs [default: http://<--listen>].
    #[arg(long, env = "FALLBACK_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// file:// storage only: HMAC key of the object URLs; give every replica the same one so
    /// they accept each other's URLs [default: 32 random bytes per process].
    #[arg(long, env = "FALLBACK_URL_SIGNING_KEY", hide_env_values = true)]
    pub url_signing_key: Option<Secret>,

    #[command(flatten)]
    pub source: source::SourceArgs,

    /// How often the control plane is polled (with If-None-Match).
    #[arg(long, env = "FALLBACK_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// At most one export per this interval, the newest document winning (as Kong's
    /// cluster_fallback_export_delay; plain numbers are seconds).
    #[arg(long, env = "KONG_CLUSTER_FALLBACK_EXPORT_DELAY", default_value = "60", value_parser = parse_duration)]
    pub export_delay: Duration,

    /// While the control plane keeps serving the stored config, write it again with a new
    /// export time (and signature) once its export is this old, so that filters'
    /// max_fallback_age_ms counts from when it was last known current: keep it well below
    /// that budget. 0 turns it off.
    #[arg(long, env = "FALLBACK_EXPORT_REFRESH", default_value = "1h", value_parser = parse_duration)]
    pub export_refresh: Duration,

    /// Time allowed for one control-plane request.
    #[arg(long, env = "FALLBACK_CONTROL_PLANE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub control_plane_timeout: Duration,

    /// First delay before retrying a failed export; doubles with jitter up to --retry-max.
    #[arg(long, env = "FALLBACK_RETRY_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial: Duration,

    /// Longest delay between export retries.
    #[arg(long, env = "FALLBACK_RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// On SIGTERM/SIGINT: how long requests in flight (and the export role's last attempt)
    /// may take before the companion exits anyway; new connections are refused at once. Keep
    /// it below the orchestrator's own grace period (Kubernetes: 30 s).
    #[arg(long, env = "FALLBACK_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Export role: Ed25519 private key signing every export (PKCS#8 PEM as `openssl genpkey
    /// -algorithm ed25519` writes, or the 32-byte seed in base64); filters with the matching
    /// `public_key` require the signature.
    #[arg(long, env = "FALLBACK_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
}

/// `export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// The declarative config to export (JSON or YAML).
    #[arg(long, value_name = "FILE")]
    pub config_file: PathBuf,

    /// The revision to store [default: now, in Unix milliseconds]; a lower revision never
    /// replaces a higher one.
    #[arg(long)]
    pub revision: Option<u64>,

    /// Attempts for transient storage failures before giving up.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,

    /// Ed25519 private key signing the export (PKCS#8 PEM or base64 32-byte seed).
    #[arg(long, env = "FALLBACK_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
}

/// `keygen` options.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the new private key (PKCS#8 PEM, mode 0600); an existing file is not
    /// replaced.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `on`/`off` as Kong writes booleans, plus the usual spellings.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" | "" => Ok(false),
        other => Err(format!("{other:?} is not on or off")),
    }
}

/// `60` (seconds, as Kong's settings), or `500ms`, `5s`, `2m`…
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 60, 500ms, 5s, 2m"))
}

impl StorageArgs {
    /// The parsed storage URL.
    pub fn url(&self) -> anyhow::Result<StorageUrl> {
        Ok(StorageUrl::parse(&self.storage)?)
    }

    /// The object key for the configured version.
    pub fn key(&self, url: &StorageUrl) -> anyhow::Result<String> {
        Ok(url.config_key(&self.config_version)?)
    }

    /// S3 settings, checked at start-up so that a missing region or key fails now, not at the
    /// first export. Without AWS_ACCESS_KEY_ID the access key id is left empty: the store then
    /// uses AWS's default credential chain.
    pub fn s3_settings(&self, url: &StorageUrl) -> anyhow::Result<Option<S3Settings>> {
        if !matches!(url, StorageUrl::S3 { .. }) {
            return Ok(None);
        }
        let region = self
            .aws_region
            .clone()
            .or_else(|| non_empty_env("AWS_REGION"))
            .or_else(|| non_empty_env("AWS_DEFAULT_REGION"))
            .with_context(|| format!("{url}: no S3 region: set AWS_REGION (or AWS_DEFAULT_REGION), e.g. us-east-1; S3-compatible stores accept any region they are configured with"))?;
        let access_key_id = self
            .aws_access_key_id
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_default();
        let secret_access_key = self
            .aws_secret_access_key
            .clone()
            .filter(|s| !s.expose().is_empty());
        let secret_access_key = match (access_key_id.is_empty(), secret_access_key) {
            (true, _) => Secret::new(""),
            (false, Some(secret)) => secret,
            (false, None) => {
                bail!("{url}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
        };
        Ok(Some(S3Settings {
            access_key_id,
            secret_access_key,
            session_token: self
                .aws_session_token
                .clone()
                .filter(|s| !s.expose().is_empty()),
            region,
            endpoint: self.aws_endpoint.clone().filter(|s| !s.is_empty()),
            force_path_style: self.s3_force_path_style,
            server_side_encryption: self.s3_config.clone(),
        }))
    }

    /// The settings of the backend the URL names.
    pub fn backend_settings(&self, url: &StorageUrl) -> anyhow::Result<BackendSettings> {
        Ok(BackendSettings {
            s3: self.s3_settings(url)?,
            gcs: matches!(url, StorageUrl::Gcs { .. }).then(|| GcsSettings {
                service_account_json: self.gcp_service_account.clone(),
                credentials_file: self.google_application_credentials.clone(),
                emulator_host: self.storage_emulator_host.clone(),
                metadata_host: self.gce_metadata_host.clone(),
            }),
            azure: matches!(url, StorageUrl::Azure { .. }).then(|| AzureSettings {
                connection_string: self.azure_storage_connection_string.clone(),
                account: self.azure_storage_account.clone(),
                account_key: self.azure_storage_key.clone(),
                blob_endpoint: self.azure_storage_blob_endpoint.clone(),
                tenant_id: self.azure_tenant_id.clone(),
                client_id: self.azure_client_id.clone(),
                client_secret: self.azure_client_secret.clone(),
                federated_token_file: self.azure_federated_token_file.clone(),
                authority_host: self.azure_authority_host.clone(),
                imds_host: self.azure_imds_host.clone(),
            }),
        })
    }

    /// Opens the configured store.
    pub fn open(&self) -> anyhow::Result<(StorageUrl, String, Arc<dyn ConfigStore>)> {
        let url = self.url()?;
        let key = self.key(&url)?;
        let store: Arc<dyn ConfigStore> =
            Arc::from(storage::open(&url, self.backend_settings(&url)?)?);
        Ok((url, key, store))
    }

    /// The mirror stores (`FALLBACK_MIRROR_STORAGES`), opened with the usual credential
    /// variables; `file://` mirrors hand out URLs signed by `url_signer`.
    pub fn open_mirrors(
        &self,
        url_signer: Option<Arc<crate::storage::UrlSigner>>,
    ) -> anyhow::Result<Vec<(StorageUrl, Arc<dyn ConfigStore>)>> {
        let mut mirrors = Vec::new();
        for (i, text) in self
            .mirror_storages
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .enumerate()
        {
            let url = StorageUrl::parse(text)
                .with_context(|| format!("FALLBACK_MIRROR_STORAGES entry {}", i + 1))?;
            let own = self.mirror_args(i + 1, |name| std::env::var(name).ok());
            let store = storage::open_with_url_signer(
                &url,
                own.backend_settings(&url)?,
                url_signer.clone(),
            )
            .with_context(|| format!("mirror {url}"))?;
            mirrors.push((url, Arc::from(store)));
        }
        Ok(mirrors)
    }

    /// The settings mirror `n` (from 1) is opened with: these, with its own credentials where
    /// `FALLBACK_MIRROR_<n>_<VARIABLE>` sets them (see [`MIRROR_VARIABLES`]). A mirror giving
    /// its own AWS access key, its own GCS credentials, or any Azure credential (connection
    /// string, account key, tenant, client, secret, federated token file) takes none of the
    /// primary's for that backend (no session token, key file or secret carried over from
    /// another account).
    pub fn mirror_args(&self, n: usize, lookup: impl Fn(&str) -> Option<String>) -> StorageArgs {
        let var =
            |name: &str| lookup(&format!("FALLBACK_MIRROR_{n}_{name}")).filter(|v| !v.is_empty());
        let mut args = self.clone();
        if let Some(id) = var("AWS_ACCESS_KEY_ID") {
            args.aws_access_key_id = Some(id);
            args.aws_secret_access_key = None;
            args.aws_session_token = None;
        }
        if let Some(secret) = var("AWS_SECRET_ACCESS_KEY") {
            args.aws_secret_access_key = Some(Secret::new(secret));
        }
        if let Some(token) = var("AWS_SESSION_TOKEN") {
            args.aws_session_token = Some(Secret::new(token));
        }
        if let Some(region) = var("AWS_REGION") {
            args.aws_region = Some(region);
        }
        if let Some(endpoint) = var("AWS_CONFIG_STORAGE_ENDPOINT") {
            args.aws_endpoint = Some(endpoint);
        }
        let gcp_json = var("GCP_SERVICE_ACCOUNT");
        let gcp_file = var("GOOGLE_APPLICATION_CREDENTIALS");
        if gcp_json.is_some() || gcp_file.is_some() {
            args.gcp_service_account = gcp_json.map(Secret::new);
            args.google_application_credentials = gcp_file.map(PathBuf::from);
        }
        if let Some(host) = var("STORAGE_EMULATOR_HOST") {
            args.storage_emulator_host = Some(host);
        }
        if AZURE_CREDENTIAL_VARIABLES
            .iter()
            .any(|name| var(name).is_some())
        {
            args.azure_storage_connection_string =
                var("AZURE_STORAGE_CONNECTION_STRING").map(Secret::new);
            args.azure_storage_key = var("AZURE_STORAGE_KEY").map(Secret::new);
            args.azure_tenant_id = var("AZURE_TENANT_ID");
            args.azure_client_id = var("AZURE_CLIENT_ID");
            args.azure_client_secret = var("AZURE_CLIENT_SECRET").map(Secret::new);
            args.azure_federated_token_file = var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from);
        }
        if let Some(account) = var("AZURE_STORAGE_ACCOUNT") {
            args.azure_storage_account = Some(account);
        }
        if let Some(endpoint) = var("AZURE_STORAGE_BLOB_ENDPOINT") {
            args.azure_storage_blob_endpoint = Some(endpoint);
        }
        args
    }

    /// `--node-id`, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .or_else(|| non_empty_env("HOSTNAME"))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown-node".into())
        })
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},aws_sigv4=warn,hyper_util=warn",
        cli.log
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain `key=value` text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Export(args) => export(args).await,
            Command::Presign(args) => crate::presign::presign(args).await,
            Command::Doctor(args) => crate::doctor::doctor(args).await,
            Command::Match(args) => Ok(crate::match_cmd::run(&args)),
            Command::Keygen(args) => keygen(&args),
        }
    });
    // Blocking storage work still running (a read of a slow disk) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.export && !args.import {
        bail!("no role switched on: set KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on (or --export on) and/or KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on (or --import on)");
    }
    let source = if args.export {
        Some(args.source.configured(
            (&args.storage.node_id(), &args.storage.config_version),
            args.poll_interval,
            args.control_plane_timeout,
        )?
        .context("the export role needs a source of config: set FALLBACK_CONTROL_PLANE_URL (a config URL, e.g. http://kong-cp:8001/config on a DB-less node), KONG_CLUSTER_CONTROL_PLANE (a Kong control plane's cluster address, e.g. kong-cp:8005, with KONG_CLUSTER_CERT and KONG_CLUSTER_CERT_KEY) FALLBACK_ADMIN_API_URL (a Kong Admin API to dump, e.g. http://kong-cp:8001) or FALLBACK_KONNECT_CONTROL_PLANE_URL (a Konnect control plane, with FALLBACK_KONNECT_TOKEN)")?)
    } else {
        None
    };
    let url = args.storage.url()?;
    let key = args.storage.key(&url)?;
    let signing_key = match (&args.signing_key_file, args.export) {
        (Some(path), true) => Some(SigningKey::load(path)?),
        (Some(_), false) => {
            warn!("FALLBACK_SIGNING_KEY_FILE is set but the export role is off: nothing is signed");
            None
        }
        (None, _) => None,
    };
    // Everything the signer needs is checked before anything starts.
    let signer = if args.import {
        Some(signer_setup(&args, &url)?)
    } else {
        None
    };
    let store: Arc<dyn ConfigStore> = Arc::from(storage::open_with_url_signer(
        &url,
        args.storage.backend_settings(&url)?,
        signer.as_ref().and_then(|s| s.0.object_urls.clone()),
    )?);
    let mirrors = args
        .storage
        .open_mirrors(signer.as_ref().and_then(|s| s.0.object_urls.clone()))?;
    for (mirror, _) in &mirrors {
        info!(mirror = %mirror, "mirror storage");
    }
    let stats = Arc::new(ExportStats::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // With both roles in one process, filters can poll the live config: GET /v1/config.
    let (live_tx, live_rx) = watch::channel(None);

    let exporter = match source {
        Some(source) => {
            let settings = ExportSettings {
                key,
                node_id: args.storage.node_id(),
                export_delay: args.export_delay,
                retry_initial: args.retry_initial,
                retry_max: args.retry_max,
                signing_key,
                live: args.import.then(|| live_tx.clone()),
                version: args.storage.config_version.clone(),
                refresh: (!args.export_refresh.is_zero()).then_some(args.export_refresh),
                mirrors: mirrors
                    .iter()
                    .map(|(url, store)| {
                        Ok(exporter::ExportMirror {
                            key: args.storage.key(url)?,
                            store: store.clone(),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            match &settings.signing_key {
                Some(k) => info!(
                    public_key = %k.public_key_base64(),
                    key_id = %k.key_id(),
                    "exports are signed (Ed25519, over a manifest naming this key id)"
                ),
                None => info!("exports are not signed (no FALLBACK_SIGNING_KEY_FILE)"),
            }
            let (exported_tx, _exported_rx) = watch::channel(None);
            Some(tokio::spawn(exporter::run(
                settings,
                source,
                store.clone(),
                stats.clone(),
                exported_tx,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let export_stats = args.export.then(|| stats.clone());
    let signer_metrics = signer.as_ref().map(|s| s.0.metrics.clone());
    let admin_task = match admin_listener(&args)? {
        Some(listener) => {
            let pages = crate::admin::AdminPages {
                store: store.clone(),
                key: Ok(args.storage.key(&url)?),
                export_stats: export_stats.clone(),
                signer: signer_metrics,
                access: crate::admin::AdminAccess::new(
                    args.admin_token.clone(),
                    listener.local_addr()?,
                ),
            };
            let listener = tokio::net::TcpListener::from_std(listener)?;
            Some(tokio::spawn(crate::admin::serve(
                pages,
                listener,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let mut signer_task = match signer {
        Some((mut settings, listener)) => {
            if args.export {
                settings.export_stats = export_stats;
                settings.live_config = Some(live_rx.clone());
            }
            settings.admin_token = args.admin_token.clone();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let mut settings = settings;
            settings.mirrors = mirrors
                .iter()
                .map(|(url, store)| signer::MirrorStore {
                    store: store.clone(),
                    prefix: url.prefix().to_owned(),
                    prefix_style: url.prefix_style(),
                })
                .collect();
            Some(tokio::spawn(signer::serve(
                settings,
                store.clone(),
                listener,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let signer_failed = async {
        match signer_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => info!("signal received, stopping"),
        result = signer_failed => {
            failure = Some(match result {
                Ok(Ok(())) => anyhow::anyhow!("the signer role stopped unexpectedly"),
                Ok(Err(e)) => e.context("the signer role failed"),
                Err(e) => anyhow::anyhow!("the signer task failed: {e}"),
            });
            signer_task = None;
        }
    }
    let _ = shutdown_tx.send(true);
    // The signer drains within the grace period itself; the export role's last attempt gets
    // the same bound, and a margin covers the signer closing what is left.
    let stopping = async {
        if let Some(task) = signer_task {
            let _ = task.await;
        }
        match exporter {
            Some(exporter) => exporter.await.context("export task failed"),
            None => Ok(()),
        }
    };
    match tokio::time::timeout(args.shutdown_grace + Duration::from_secs(1), stopping).await {
        Ok(stopped) => stopped?,
        Err(_) => warn!(
            grace = ?args.shutdown_grace,
            "still stopping after FALLBACK_SHUTDOWN_GRACE: exiting anyway"
        ),
    }
    if let Some(admin) = admin_task {
        let _ = admin.await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The admin pages' own listener: `FALLBACK_ADMIN_LISTEN`, or 127.0.0.1:8281 when only the
/// export role runs (the signer's listener serves them otherwise).
fn admin_listener(args: &RunArgs) -> anyhow::Result<Option<std::net::TcpListener>> {
    let listener = match (args.admin_listen, args.import) {
        (Some(addr), _) => std::net::TcpListener::bind(addr).with_context(|| {
            format!("the admin pages cannot listen on {addr} (FALLBACK_ADMIN_LISTEN)")
        })?,
        (None, false) => match std::net::TcpListener::bind(DEFAULT_ADMIN_LISTEN) {
            Ok(l) => l,
            // Several exporters on one host: the first serves the pages, the others go on.
            Err(e) => {
                warn!("no admin pages: cannot listen on {DEFAULT_ADMIN_LISTEN} ({e}); set FALLBACK_ADMIN_LISTEN to another address");
                return Ok(None);
            }
        },
        (None, true) => return Ok(None),
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback()
        && args
            .admin_token
            .as_ref()
            .is_none_or(|t| t.expose().is_empty())
    {
        warn!("the admin pages listen on {addr} without FALLBACK_ADMIN_TOKEN: they refuse every request until it is set");
    }
    Ok(Some(listener))
}

/// Where the admin pages listen when only the export role runs and FALLBACK_ADMIN_LISTEN is
/// not set.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8281";

/// The signer's settings and bound listener, or a start-up error saying what to fix.
fn signer_setup(
    args: &RunArgs,
    url: &StorageUrl,
) -> anyhow::Result<(signer::SignerSettings, std::net::TcpListener)> {
    if args.signed_url_ttl.is_zero() || args.signed_url_ttl > signer::MAX_TTL {
        bail!(
            "FALLBACK_SIGNED_URL_TTL {:?} is out of range: use 1s to 7d (S3 refuses presigned URLs valid longer than 7 days)",
            args.signed_url_ttl
        );
    }
    let tokens = Tokens::new(
        args.signer_tokens.as_ref(),
        args.signer_tokens_file.as_deref(),
    )?;
    let object_urls = match url {
        StorageUrl::File { .. } => {
            let base = match args.public_url.as_deref().filter(|u| !u.is_empty()) {
                Some(base) => {
                    let parsed = url::Url::parse(base).with_context(|| {
                        format!("FALLBACK_PUBLIC_URL {base:?} is not a URL; use e.g. http://companion:8280")
                    })?;
                    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                        bail!("FALLBACK_PUBLIC_URL {base:?} must be an http:// or https:// URL without a query");
                    }
                    base.to_owned()
                }
                None => {
                    if args.listen.ip().is_unspecified() {
                        warn!("FALLBACK_PUBLIC_URL is not set and the signer listens on {}: object URLs will name http://{}, which filters cannot reach; set FALLBACK_PUBLIC_URL", args.listen, args.listen);
                    }
                    format!("http://{}", args.listen)
                }
            };
            Some(Arc::new(match &args.url_signing_key {
                Some(key) if !key.expose().is_empty() => UrlSigner::new(&base, key.clone()),
                _ => UrlSigner::with_random_key(&base),
            }))
        }
        _ => None,
    };
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "the signer role cannot listen on {} (FALLBACK_LISTEN)",
            args.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let mut settings =
        signer::SignerSettings::new(url.prefix(), &args.storage.config_version, Arc::new(tokens));
    settings.ttl = args.signed_url_ttl;
    settings.object_urls = object_urls;
    settings.shutdown_grace = args.shutdown_grace;
    settings.prefix_style = url.prefix_style();
    Ok((settings, listener))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `keygen`: a new private key to `--out` (never replacing a file), its public key on stdout.
fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let pem = SigningKey::generate_pem()?;
    let public = SigningKey::parse(&pem)?.public_key_base64();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote the private key to {} (FALLBACK_SIGNING_KEY_FILE); the filter's public_key:",
        args.out.display()
    );
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let file = args.config_file.display().to_string();
    let bytes = match std::fs::read(&args.config_file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {file}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let value = match source::normalise(&bytes) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {file}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let prepared = match exporter::prepare(&value) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("error: {file}: nothing exported. {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &prepared.warnings {
        eprintln!("warning: {file}: {w}");
    }
    let signing_key = match &args.signing_key_file {
        Some(path) => match SigningKey::load(path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let (_, key, store) = args.storage.open()?;
    let metadata = ExportMetadata {
        sha256: prepared.sha256,
        revision: args.revision.unwrap_or_else(exporter::unix_ms),
        node_id: args.storage.node_id(),
        exported_at: exporter::rfc3339_now(),
        signature: None,
        key_id: None,
    };
    let signing = signing_key.as_ref().map(|key| exporter::ExportSigning {
        key,
        version: &args.storage.config_version,
    });
    let object = format!("{}/{key}", store.describe());
    let outcome = exporter::export_once(
        store.as_ref(),
        &key,
        &prepared,
        &metadata,
        signing,
        args.attempts.max(1),
        Backoff::new(500, 8_000),
    )
    .await;
    match outcome {
        Ok(WriteOutcome::Stored { .. }) => {
            println!(
                "stored {object} (revision {}, sha256 {}, {} bytes)",
                metadata.revision,
                metadata.sha256,
                prepared.body.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(WriteOutcome::Resigned { revision, .. }) => {
            println!(
                "{object} held this document without this signature; signed it (revision {revision}, sha256 {})",
                metadata.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(WriteOutcome::Refreshed { revision, .. }) => {
            println!(
                "{object} held this document; its export time is renewed (revision {revision}, sha256 {})",
                metadata.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(WriteOutcome::AlreadyStored) => {
            println!(
                "{object} already holds this document (sha256 {}); nothing written",
                metadata.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(WriteOutcome::Superseded { stored_revision }) => {
            eprintln!(
                "error: {object} holds revision {stored_revision}, newer than {}; nothing written (pass a higher --revision to replace it)",
                metadata.revision
            );
            Ok(ExitCode::from(3))
        }
        Err(e) => {
            eprintln!("error: export to {object} failed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn on_off_and_durations_parse_like_kong() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn roles_take_on_off_from_flags_and_environment() {
        let cli = Cli::try_parse_from([
            "fallback-companion",
            "run",
            "--storage",
            "file:///tmp/x",
            "--export",
            "on",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed another command")
        };
        assert!(args.export && !args.import);
        let err = Cli::try_parse_from([
            "fallback-companion",
            "run",
            "--storage",
            "file:///tmp/x",
            "--export",
            "sometimes",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("is not on or off"), "{err}");
    }

    #[test]
    fn a_mirror_takes_its_own_credentials_from_its_numbered_variables() {
        let cli = Cli::try_parse_from([
            "fallback-companion",
            "run",
            "--storage",
            "s3://primary/kong",
            "--mirror-storage",
            "s3://mirror-a/kong,gcs://mirror-b/kong",
            "--aws-access-key-id",
            "PRIMARY",
            "--aws-secret-access-key",
            "primary-secret",
            "--aws-session-token",
            "primary-token",
            "--aws-region",
            "us-east-1",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed another command")
        };
        let storage = &args.storage;
        assert_eq!(
            storage.mirror_storages,
            ["s3://mirror-a/kong", "gcs://mirror-b/kong"]
        );
        let env = |name: &str| match name {
            "FALLBACK_MIRROR_1_AWS_ACCESS_KEY_ID" => Some("MIRROR".to_owned()),
            "FALLBACK_MIRROR_1_AWS_SECRET_ACCESS_KEY" => Some("mirror-secret".to_owned()),
            "FALLBACK_MIRROR_1_AWS_REGION" => Some("eu-west-1".to_owned()),
            "FALLBACK_MIRROR_2_GOOGLE_APPLICATION_CREDENTIALS" => Some("/k.json".to_owned()),
            "FALLBACK_MIRROR_4_AZURE_STORAGE_ACCOUNT" => Some("mirroraccount".to_owned()),
            "FALLBACK_MIRROR_4_AZURE_STORAGE_KEY" => Some("bWlycm9y".to_owned()),
            _ => None,
        };
        let first = storage.mirror_args(1, env);
        assert_eq!(first.aws_access_key_id.as_deref(), Some("MIRROR"));
        assert_eq!(
            first.aws_secret_access_key.as_ref().map(Secret::expose),
            Some("mirror-secret")
        );
        assert!(first.aws_session_token.is_none(), "not the primary's token");
        assert_eq!(first.aws_region.as_deref(), Some("eu-west-1"));
        let second = storage.mirror_args(2, env);
        assert_eq!(
            second.aws_access_key_id.as_deref(),
            Some("PRIMARY"),
            "the usual ones"
        );
        assert_eq!(
            second.google_application_credentials,
            Some(PathBuf::from("/k.json"))
        );
        let primary_azure = StorageArgs {
            azure_storage_account: Some("primaryaccount".into()),
            azure_client_id: Some("primary-identity".into()),
            azure_client_secret: Some(Secret::new("primary-secret")),
            ..storage.clone()
        };
        let fourth = primary_azure.mirror_args(4, env);
        assert_eq!(
            fourth.azure_storage_account.as_deref(),
            Some("mirroraccount")
        );
        assert_eq!(
            fourth.azure_storage_key.as_ref().map(Secret::expose),
            Some("bWlycm9y")
        );
        assert!(
            fourth.azure_client_id.is_none() && fourth.azure_client_secret.is_none(),
            "none of the primary's Azure credentials"
        );
        let second = primary_azure.mirror_args(2, env);
        assert_eq!(
            second.azure_client_secret.as_ref().map(Secret::expose),
            Some("primary-secret"),
            "a mirror naming no Azure credential uses the primary's"
        );
        // Every variable named in MIRROR_VARIABLES is read.
        for name in MIRROR_VARIABLES {
            let seen = std::cell::RefCell::new(Vec::new());
            storage.mirror_args(3, |n| {
                seen.borrow_mut().push(n.to_owned());
                None
            });
            assert!(
                seen.borrow().contains(&format!("FALLBACK_MIRROR_3_{name}")),
                "{name}"
            );
        }
    }

    /// Runs the one-shot export of a small config to `file://<dir>/store`, with the extra flags.
    async fn export_to_file_store(dir: &std::path::Path, extra: &[&str]) -> FetchedExport {
        let config = dir.join("kong.json");
        std::fs::write(
            &config,
            r#"{"_format_version":"3.0","services":[{"name":"s","host":"h"}]}"#,
        )
        .unwrap();
        let storage = format!("file://{}/store", dir.display());
        let mut argv = vec![
            "fallback-companion",
            "export",
            "--storage",
            &storage,
            "--config-file",
            config.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        let Command::Export(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("parsed another command")
        };
        let (_, key, store) = args.storage.open().unwrap();
        let version = args.storage.config_version.clone();
        let code = export(args).await.unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let fetched = store.get(&key).await.unwrap().expect("stored");
        let metadata = fetched.stored.metadata.expect("our metadata");
        FetchedExport {
            body: fetched.body.to_vec(),
            signature: metadata.signature.clone(),
            metadata,
            version,
        }
    }

    struct FetchedExport {
        body: Vec<u8>,
        signature: Option<String>,
        metadata: ExportMetadata,
        version: String,
    }

    impl FetchedExport {
        /// Whether `key` signed this export's manifest.
        fn signed_by(&self, key: &SigningKey) -> bool {
            self.metadata.is_signed_by(&self.version, &key.public_key())
        }
    }

    /// A new signing key written to `dir/name`: the file's path and the key.
    fn new_key_file(dir: &std::path::Path, name: &str) -> (String, SigningKey) {
        let path = dir.join(name);
        std::fs::write(&path, SigningKey::generate_pem().unwrap()).unwrap();
        let key = SigningKey::load(&path).unwrap();
        (path.to_str().unwrap().to_owned(), key)
    }

    #[tokio::test]
    async fn one_shot_export_is_signed_only_with_a_signing_key() {
        let unsigned_dir = tempfile::tempdir().unwrap();
        let unsigned = export_to_file_store(unsigned_dir.path(), &[]).await;
        assert_eq!(unsigned.signature, None);

        let dir = tempfile::tempdir().unwrap();
        let (key_file, key) = new_key_file(dir.path(), "signing.pem");
        let signed = export_to_file_store(dir.path(), &["--signing-key-file", &key_file]).await;
        assert!(signed.signature.is_some());
        assert_eq!(signed.metadata.key_id, Some(key.key_id()));
        assert!(signed.signed_by(&key));
        let other = SigningKey::parse(&SigningKey::generate_pem().unwrap()).unwrap();
        assert!(!signed.signed_by(&other));
    }

    #[tokio::test]
    async fn exporting_the_stored_document_again_with_a_key_signs_it() {
        let dir = tempfile::tempdir().unwrap();
        let unsigned = export_to_file_store(dir.path(), &[]).await;
        assert_eq!(unsigned.signature, None);
        let (key_file, key) = new_key_file(dir.path(), "signing.pem");
        let signed = export_to_file_store(dir.path(), &["--signing-key-file", &key_file]).await;
        assert_eq!(signed.body, unsigned.body, "the same document");
        assert!(
            signed.signed_by(&key),
            "the stored copy is signed now, not left unsigned as already stored"
        );
        // Exporting it again with the same key writes nothing: the stored manifest verifies.
        let same = export_to_file_store(dir.path(), &["--signing-key-file", &key_file]).await;
        assert_eq!(same.metadata, signed.metadata);

        // Key rotation: the next key's exporter signs it again.
        let (rotated_file, rotated) = new_key_file(dir.path(), "rotated.pem");
        let again = export_to_file_store(dir.path(), &["--signing-key-file", &rotated_file]).await;
        assert!(again.signed_by(&rotated));
        assert!(!again.signed_by(&key));
        assert!(again.metadata.revision >= signed.metadata.revision);
    }

    #[tokio::test]
    async fn one_shot_export_with_a_bad_key_file_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("bad.pem");
        std::fs::write(&key_file, "not a key").unwrap();
        let config = dir.path().join("kong.json");
        std::fs::write(&config, r#"{"_format_version":"3.0"}"#).unwrap();
        let storage = format!("file://{}/store", dir.path().display());
        let cli = Cli::try_parse_from([
            "fallback-companion",
            "export",
            "--storage",
            &storage,
            "--config-file",
            config.to_str().unwrap(),
            "--signing-key-file",
            key_file.to_str().unwrap(),
        ])
        .unwrap();
        let Command::Export(args) = cli.command else {
            panic!("parsed another command")
        };
        let (_, key, store) = args.storage.open().unwrap();
        assert_eq!(export(args).await.unwrap(), ExitCode::from(2));
        assert!(store.get(&key).await.unwrap().is_none());
    }

    #[test]
    fn keygen_writes_a_loadable_key_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k.pem");
        let args = KeygenArgs { out: out.clone() };
        assert_eq!(keygen(&args).unwrap(), ExitCode::SUCCESS);
        let key = SigningKey::load(&out).unwrap();
        assert!(key.verifies(b"x", &key.sign(b"x")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        assert!(keygen(&args).is_err(), "an existing key is not replaced");
        assert_eq!(
            SigningKey::load(&out).unwrap().public_key_base64(),
            key.public_key_base64()
        );
    }

    #[test]
    fn debug_output_of_settings_shows_no_secret() {
        let cli = Cli::try_parse_from([
            "fallback-companion",
            "export",
            "--storage",
            "s3://b/p",
            "--config-file",
            "x.json",
            "--aws-access-key-id",
            "AKID",
            "--aws-secret-access-key",
            "sup3rs3cret",
            "--aws-session-token",
            "t0ken-value",
            "--aws-region",
            "us-east-1",
        ])
        .unwrap();
        let Command::Export(args) = &cli.command else {
            panic!("parsed another command")
        };
        let s3 = args
            .storage
            .s3_settings(&args.storage.url().unwrap())
            .unwrap()
            .unwrap();
        let shown = format!("{cli:?} {s3:?}");
        assert!(
            !shown.contains("sup3rs3cret") && !shown.contains("t0ken-value"),
            "{shown}"
        );
    }
}
