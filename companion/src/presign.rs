//! `fallback-companion presign <s3://bucket/key | gcs://bucket/key | azure://container/blob |
//! file:///path>`: prints a
//! signed GET URL, like `aws s3 presign` and `gsutil signurl`, with the credentials and settings
//! of the same environment variables as `run`.

use crate::cli::{parse_duration, StorageArgs};
use crate::storage::{self, StorageUrl, UrlSigner};
use anyhow::{bail, Context};
use clap::{Args, FromArgMatches};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `presign` options.
#[derive(Debug, Args)]
pub struct PresignArgs {
    /// The object: s3://bucket/key, gcs://bucket/key, azure://container/blob (a read-only SAS),
    /// or file:///path (a file below the
    /// file:// store of KONG_CLUSTER_FALLBACK_CONFIG_STORAGE, served by the signer role at
    /// FALLBACK_PUBLIC_URL with FALLBACK_URL_SIGNING_KEY).
    #[arg(value_name = "URL")]
    pub object: String,

    /// Lifetime of the URL (plain numbers are seconds; at most 7 days).
    #[arg(long, default_value = "3600", value_parser = parse_duration, value_name = "SECONDS")]
    pub expires_in: Duration,

    /// Signing time, for reproducible output [default: now].
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
}

/// Runs `presign`.
pub async fn presign(args: PresignArgs) -> anyhow::Result<ExitCode> {
    let at = match args.at.as_deref() {
        Some(text) => humantime::parse_rfc3339_weak(text).with_context(|| {
            format!("--at {text:?} is not an RFC 3339 time; use e.g. 2019-02-01T09:00:00Z")
        })?,
        None => SystemTime::now(),
    };
    if args.expires_in.is_zero() || args.expires_in > Duration::from_secs(7 * 24 * 3600) {
        bail!("--expires-in must be between 1 second and 7 days");
    }
    let target = StorageUrl::parse(&args.object)?;
    let url = match &target {
        StorageUrl::S3 { bucket, prefix } | StorageUrl::Gcs { bucket, prefix } => {
            if prefix.is_empty() {
                bail!("{} names a bucket, not an object; add the key", args.object);
            }
            let scheme = if matches!(target, StorageUrl::S3 { .. }) {
                "s3"
            } else {
                "gcs"
            };
            let settings = environment_settings(&format!("{scheme}://{bucket}"))?;
            let bucket_url = settings.url()?;
            let store = storage::open(&bucket_url, settings.backend_settings(&bucket_url)?)?;
            store.presign_get(prefix, args.expires_in, at).await?
        }
        StorageUrl::Azure { container, prefix } => {
            if prefix.is_empty() {
                bail!(
                    "{} names a container, not a blob; add the blob name",
                    args.object
                );
            }
            let settings = environment_settings(&format!("azure://{container}"))?;
            let container_url = settings.url()?;
            let store = storage::open(&container_url, settings.backend_settings(&container_url)?)?;
            store.presign_get(prefix, args.expires_in, at).await?
        }
        StorageUrl::File { root: path } => file_url(path, args.expires_in, at).await?,
    };
    println!("{url}");
    Ok(ExitCode::SUCCESS)
}

/// The storage settings `run` would read from the environment, for `storage`.
fn environment_settings(storage: &str) -> anyhow::Result<StorageArgs> {
    let command = StorageArgs::augment_args(clap::Command::new("presign"));
    let matches = command
        .try_get_matches_from(["presign", "--storage", storage])
        .map_err(|e| anyhow::anyhow!("{}", e.kind()))?;
    Ok(StorageArgs::from_arg_matches(&matches)?)
}

async fn file_url(
    path: &std::path::Path,
    expires_in: Duration,
    at: SystemTime,
) -> anyhow::Result<String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let root = match env("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE").map(|s| StorageUrl::parse(&s)) {
        Some(Ok(StorageUrl::File { root })) => root,
        _ => bail!("file:// URLs are served by the signer role of a companion: set KONG_CLUSTER_FALLBACK_CONFIG_STORAGE to its file:///dir"),
    };
    let key = path
        .strip_prefix(&root)
        .ok()
        .and_then(|k| k.to_str())
        .filter(|k| !k.is_empty())
        .with_context(|| {
            format!(
                "{} is not below the store {}",
                path.display(),
                root.display()
            )
        })?;
    let base = env("FALLBACK_PUBLIC_URL").context(
        "file:// URLs need FALLBACK_PUBLIC_URL, the base URL filters reach the signer at",
    )?;
    let key_secret = env("FALLBACK_URL_SIGNING_KEY").context(
        "file:// URLs need FALLBACK_URL_SIGNING_KEY, the signer role's HMAC key (a random per-process key could not be checked)",
    )?;
    let signer = UrlSigner::new(&base, crate::secret::Secret::new(key_secret));
    let store = storage::FileStore::new(root).with_url_signer(Arc::new(signer));
    Ok(crate::storage::ConfigStore::presign_get(&store, key, expires_in, at).await?)
}
