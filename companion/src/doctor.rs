//! `fallback-companion doctor`: with the environment of `run`, checks what the roles need and
//! reports one line per check. Exit code 1 when a needed check fails.
//!
//! Lines are `[ ok ] check: detail`, `[FAIL] check: detail`, or `[ -- ] check: detail` for a
//! check that does not apply. Details come from the stores' own errors, which never carry a
//! secret.

use crate::cli::{parse_on_off, StorageArgs};
use crate::storage::{self, ConfigStore, Precondition, StorageUrl};
use bytes::Bytes;
use clap::Args;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::ExportMetadata;
use fallback_core::signature::PublicKey;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Clock skew above this fails: stores refuse requests signed 15 minutes off, and signed URLs
/// handed to filters lose lifetime to it.
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// `doctor` options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Check what the export role needs (write permission).
    #[arg(long = "export", env = "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", value_parser = parse_on_off, action = clap::ArgAction::Set, default_value = "off", value_name = "on|off")]
    pub export: bool,

    /// Check what the signer role needs (read permission, a config to hand out, signed URLs).
    #[arg(long = "import", env = "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT", value_parser = parse_on_off, action = clap::ArgAction::Set, default_value = "off", value_name = "on|off")]
    pub import: bool,

    /// A public key the filters trust (base64 or PEM, as in the filter's `public_keys`); the
    /// stored export's signature is checked against it. Repeat for several keys (in the
    /// environment: comma-separated).
    #[arg(
        long = "public-key",
        env = "FALLBACK_PUBLIC_KEYS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub public_keys: Vec<String>,
    /// The export role's source, as `run` reads it.
    #[command(flatten)]
    pub source: crate::source::SourceArgs,

    /// How long the cluster check waits for the control plane's config.
    #[arg(long, default_value = "20s", value_parser = crate::cli::parse_duration)]
    pub cluster_wait: Duration,
}

/// The export role's source: does it connect, and would it hand this companion a config?
async fn source_checks(report: &mut Report, args: &DoctorArgs, export_on: bool) {
    let sources = &args.source;
    let cluster = match sources
        .cluster
        .settings(&args.storage.node_id(), &args.storage.config_version)
    {
        Ok(c) => c,
        Err(e) => return report.fail("source", format!("{e:#}")),
    };
    let others = sources
        .control_plane_url
        .as_deref()
        .is_some_and(|u| !u.is_empty())
        || sources.admin_api.is_set();
    if let (Some(settings), false) = (cluster, others) {
        let mut source = crate::cluster::ClusterSource::new(settings);
        match source.connect_once().await {
            Ok(text) => report.pass("cluster connection", text),
            Err(e) => {
                report.fail("cluster connection", e.to_string());
                return report.skip("cluster config", "not connected");
            }
        }
        return match source.first_config(args.cluster_wait).await {
            Ok(text) => report.pass("cluster config", text),
            Err(text) => report.fail("cluster config", text),
        };
    }
    let source = sources.configured(
        (&args.storage.node_id(), &args.storage.config_version),
        Duration::ZERO,
        Duration::from_secs(10),
    );
    match source {
        Err(e) => report.fail("source", format!("{e:#}")),
        Ok(None) if export_on => report.fail("source", "no source for the export role: set FALLBACK_CONTROL_PLANE_URL, KONG_CLUSTER_CONTROL_PLANE, FALLBACK_ADMIN_API_URL or FALLBACK_KONNECT_CONTROL_PLANE_URL"),
        Ok(None) => report.skip("source", "no FALLBACK_CONTROL_PLANE_URL, KONG_CLUSTER_CONTROL_PLANE, FALLBACK_ADMIN_API_URL nor FALLBACK_KONNECT_CONTROL_PLANE_URL"),
        Ok(Some(mut source)) => match source.next().await {
            Ok(_) => report.pass("source", format!("{} answered with a config", source.describe())),
            Err(e) => report.fail("source", e.to_string()),
        },
    }
}

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn pass(&mut self, check: &str, detail: impl AsRef<str>) {
        println!("[ ok ] {check}: {}", detail.as_ref());
    }
    fn fail(&mut self, check: &str, detail: impl AsRef<str>) {
        self.failed = true;
        println!("[FAIL] {check}: {}", detail.as_ref());
    }
    fn skip(&mut self, check: &str, detail: impl AsRef<str>) {
        println!("[ -- ] {check}: {}", detail.as_ref());
    }
}

/// Runs every check and prints the report.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    let (export, import) = if args.export || args.import {
        (args.export, args.import)
    } else {
        (true, true)
    };
    let url = match args.storage.url() {
        Ok(u) => {
            report.pass("storage URL", u.to_string());
            u
        }
        Err(e) => {
            report.fail("storage URL", e.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    report.skip(
        "roles",
        match (args.export, args.import) {
            (false, false) => "none switched on: checking for both export and signer".to_owned(),
            (e, i) => format!(
                "export {}, signer {}",
                if e { "on" } else { "off" },
                if i { "on" } else { "off" }
            ),
        },
    );
    let key = match args.storage.key(&url) {
        Ok(k) => k,
        Err(e) => {
            report.fail("config version", e.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let store = match args
        .storage
        .backend_settings(&url)
        .and_then(|settings| storage::open(&url, settings))
    {
        Ok(s) => s,
        Err(e) => {
            report.fail("storage settings", format!("{e:#}"));
            return Ok(ExitCode::from(1));
        }
    };
    match store.credential_source().await {
        Ok(source) => report.pass("credentials", source),
        Err(e) => report.fail("credentials", e.to_string()),
    }

    // Reachability and clock in one request: any answer, even a refusal, carries a Date.
    match store.store_time().await {
        Ok(Some(store_time)) => {
            report.pass("store reachable", store.describe());
            let now = SystemTime::now();
            let (skew, sign) = match store_time.duration_since(now) {
                Ok(ahead) => (ahead, "ahead of"),
                Err(e) => (e.duration(), "behind"),
            };
            let text = format!(
                "the store's clock is {}s {sign} this host's (1 s resolution)",
                skew.as_secs()
            );
            if skew > MAX_SKEW {
                report.fail(
                    "clock skew",
                    format!("{text}; stores refuse signatures 15 minutes off: fix the clock (NTP)"),
                );
            } else {
                report.pass("clock skew", text);
            }
        }
        Ok(None) => {
            report.pass("store reachable", store.describe());
            report.skip("clock skew", "a local store has no clock of its own");
        }
        Err(e) => {
            report.fail("store reachable", e.to_string());
            report.skip("clock skew", "the store did not answer");
        }
    }

    let stored = match store.head(&key).await {
        Ok(stored) => {
            report.pass(
                "read permission",
                format!(
                    "read the metadata of {key} ({})",
                    if stored.is_some() {
                        "present"
                    } else {
                        "not there yet"
                    }
                ),
            );
            Some(stored)
        }
        Err(e) => {
            report.fail("read permission", e.to_string());
            None
        }
    };

    if export {
        write_probe(&mut report, store.as_ref(), &url, &args.storage.node_id()).await;
        source_checks(&mut report, &args, args.export).await;
    } else {
        report.skip("write permission", "export role off");
    }

    match stored {
        Some(Some(object)) => match object.metadata {
            Some(meta) => {
                report.pass("config.json", describe_export(&key, &meta));
                let (verdict, detail) =
                    signature_check(&meta, &args.storage.config_version, &args.public_keys);
                match verdict {
                    Verdict::Pass => report.pass("signature", detail),
                    Verdict::Fail => report.fail("signature", detail),
                    Verdict::Skip => report.skip("signature", detail),
                }
                if import {
                    signed_url_check(&mut report, store.as_ref(), &url, &key, &meta).await;
                }
            }
            None => report.pass(
                "config.json",
                format!("{key} has no Fallback metadata (written by another exporter, e.g. Kong Enterprise's backup node): the signer hands it out with the sha256 of its bytes, revision 0, unsigned"),
            ),
        },
        Some(None) => {
            let text = format!(
                "nothing exported yet for version {} ({key})",
                args.storage.config_version
            );
            if import {
                report.fail("config.json", format!("{text}: the signer has nothing to hand out; run the export role or `fallback-companion export`"));
            } else {
                report.skip("config.json", text);
            }
        }
        None => report.skip("config.json", "could not be read"),
    }
    Ok(if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn write_probe(report: &mut Report, store: &dyn ConfigStore, url: &StorageUrl, node: &str) {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let name = format!(".fallback-doctor/{node}-{millis}.json");
    let probe = match url.key_of(&name) {
        Ok(probe) => probe,
        Err(e) => return report.fail("write permission", e.to_string()),
    };
    let body = Bytes::from_static(
        b"{\"_format_version\":\"3.0\",\"_comment\":\"fallback-companion doctor probe\"}",
    );
    let meta = ExportMetadata {
        sha256: Sha256Digest::of(&body),
        revision: 0,
        node_id: node.to_owned(),
        exported_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        signature: None,
        key_id: None,
    };
    match store.put(&probe, body, &meta, Precondition::Absent).await {
        Ok(_) => match store.delete(&probe).await {
            Ok(()) => report.pass(
                "write permission",
                format!("created and deleted the probe object {probe}"),
            ),
            Err(e) => report.pass(
                "write permission",
                format!("created the probe object {probe}, but could not delete it ({e}); remove it by hand"),
            ),
        },
        Err(e) => report.fail("write permission", e.to_string()),
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// Whether the stored export is signed, by which key id, and whether each of `public_keys`
/// (as given on the command line) verifies it.
fn signature_check(
    meta: &ExportMetadata,
    version: &str,
    public_keys: &[String],
) -> (Verdict, String) {
    let signed = match (&meta.signature, &meta.key_id) {
        (None, _) => "not signed (no signature metadata)".to_owned(),
        (Some(_), None) => {
            "signed without a key-id (a body signature from before signed manifests): filters \
             with public_keys refuse it; the exporter of this release signs it again"
                .to_owned()
        }
        (Some(_), Some(id)) => format!("signed by key id {id}"),
    };
    if public_keys.is_empty() {
        let verdict = if meta.signature.is_some() {
            Verdict::Pass
        } else {
            Verdict::Skip
        };
        return (
            verdict,
            format!("{signed}; give --public-key to check it against the key filters trust"),
        );
    }
    let mut verdict = Verdict::Fail;
    let mut found = Vec::new();
    for (i, text) in public_keys.iter().enumerate() {
        match PublicKey::parse(text) {
            Err(e) => found.push(format!("--public-key #{}: {e}", i + 1)),
            Ok(key) if meta.is_signed_by(version, &key) => {
                verdict = Verdict::Pass;
                found.push(format!("key {} verifies it", key.key_id()));
            }
            Ok(key) => found.push(format!("key {} does not verify it", key.key_id())),
        }
    }
    (verdict, format!("{signed}; {}", found.join("; ")))
}

fn describe_export(key: &str, meta: &ExportMetadata) -> String {
    let age = humantime::parse_rfc3339_weak(&meta.exported_at)
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .map(|d| {
            format!(
                ", {} ago",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_default();
    format!(
        "{key}: revision {}, sha256 {}, exported {}{age} by {}",
        meta.revision, meta.sha256, meta.exported_at, meta.node_id
    )
}

/// The URL a filter would get, fetched with no credentials, its body checked against sha256.
async fn signed_url_check(
    report: &mut Report,
    store: &dyn ConfigStore,
    url: &StorageUrl,
    key: &str,
    meta: &ExportMetadata,
) {
    if matches!(url, StorageUrl::File { .. }) {
        report.skip(
            "signed URL",
            "file:// objects are served by the signer role itself",
        );
        return;
    }
    let signed = match store
        .presign_get(key, Duration::from_secs(60), SystemTime::now())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            report.fail("signed URL", e.to_string());
            return;
        }
    };
    let shown = crate::transport::redact_url(&signed);
    let request = match http::Request::get(&signed).body(http_body_util::Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => {
            report.fail("signed URL", format!("{shown}: {e}"));
            return;
        }
    };
    let client = crate::transport::client();
    match crate::transport::send(&client, request, Duration::from_secs(15)).await {
        Ok(response) if response.status().is_success() => {
            if Sha256Digest::of(response.body()) == meta.sha256 {
                report.pass(
                    "signed URL",
                    format!("GET {shown} without credentials returned the object, sha256 matches"),
                );
            } else {
                report.fail(
                    "signed URL",
                    format!("GET {shown} returned a body whose sha256 differs from the metadata"),
                );
            }
        }
        Ok(response) => report.fail(
            "signed URL",
            format!(
                "GET {shown} without credentials answered HTTP {}; filters would be refused",
                response.status().as_u16()
            ),
        ),
        Err(e) => report.fail("signed URL", format!("GET {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;
    use base64::Engine;

    fn key(seed: u8) -> SigningKey {
        SigningKey::parse(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
    }

    fn export(signed_by: Option<&SigningKey>) -> ExportMetadata {
        let mut meta = ExportMetadata {
            sha256: Sha256Digest::of(b"{}"),
            revision: 7,
            node_id: "n".into(),
            exported_at: "2026-11-30T10:00:00.000Z".into(),
            signature: None,
            key_id: None,
        };
        if let Some(k) = signed_by {
            k.sign_export(&mut meta, "3.4.1.0").unwrap();
        }
        meta
    }

    #[test]
    fn the_signature_check_names_the_key_id_and_which_keys_verify() {
        let (a, b) = (key(1), key(2));
        let signed = export(Some(&a));
        let (verdict, detail) = signature_check(&signed, "3.4.1.0", &[]);
        assert_eq!(verdict, Verdict::Pass);
        assert!(
            detail.contains(&format!("signed by key id {}", a.key_id())),
            "{detail}"
        );

        let keys = [b.public_key_base64(), a.public_key_base64()];
        let (verdict, detail) = signature_check(&signed, "3.4.1.0", &keys);
        assert_eq!(verdict, Verdict::Pass, "{detail}");
        assert!(detail.contains(&format!("key {} does not verify it", b.key_id())));
        assert!(detail.contains(&format!("key {} verifies it", a.key_id())));

        let (verdict, detail) = signature_check(&signed, "3.4.1.0", &keys[..1]);
        assert_eq!(verdict, Verdict::Fail, "{detail}");
        // Checked as the export of another version, the manifest differs.
        let (verdict, _) = signature_check(&signed, "3.5.0.0", &keys);
        assert_eq!(verdict, Verdict::Fail);

        let (verdict, detail) = signature_check(&export(None), "3.4.1.0", &keys);
        assert_eq!(verdict, Verdict::Fail);
        assert!(detail.starts_with("not signed"), "{detail}");
        let (verdict, _) = signature_check(&export(None), "3.4.1.0", &[]);
        assert_eq!(verdict, Verdict::Skip);
        let (verdict, detail) = signature_check(&signed, "3.4.1.0", &["nope".to_owned()]);
        assert_eq!(verdict, Verdict::Fail);
        assert!(detail.contains("--public-key #1: "), "{detail}");
    }
}
