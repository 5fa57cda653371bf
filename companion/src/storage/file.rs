//! `file:///dir`: the embedded default. Objects are plain files below `dir`; the metadata sits
//! beside each one in `<name>.meta.json`. A lock file per object makes the conditional write an
//! atomic compare-and-swap between processes on the same host, as `If-Match` does in S3.
//!
//! Filters cannot read these files: the companion serves them itself at
//! `<public URL>/v1/objects/<key>?expires=<unix s>&signature=<hex>`, the signature being
//! HMAC-SHA256 over `"GET\n<key>\n<expires>"` ([`UrlSigner`]).

use super::{ConfigStore, FetchedObject, Precondition, StoreError};
use crate::secret::Secret;
use async_trait::async_trait;
use bytes::Bytes;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::{ExportMetadata, StoredObject};
use fallback_core::wire::{percent_encode, OBJECTS_PATH};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Objects stored as files below a root directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    url_signer: Option<Arc<UrlSigner>>,
}

impl FileStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            url_signer: None,
        }
    }

    /// The same store, handing out URLs of the companion's object route signed by `signer`.
    pub fn with_url_signer(mut self, signer: Arc<UrlSigner>) -> Self {
        self.url_signer = Some(signer);
        self
    }

    /// The URL signer, when one is configured.
    pub fn url_signer(&self) -> Option<&Arc<UrlSigner>> {
        self.url_signer.as_ref()
    }

    /// Where the object for `key` lives.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce(Paths) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let paths = Paths::new(&self.root, key);
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || work(paths))
            .await
            .map_err(|e| StoreError::Transient {
                key,
                detail: format!("storage task failed: {e}"),
            })?
    }
}

struct Paths {
    key: String,
    body: PathBuf,
    meta: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(root: &Path, key: &str) -> Self {
        let body = root.join(key);
        let with_suffix = |suffix: &str| {
            let mut name = body.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            body.with_file_name(name)
        };
        // Hidden, so that a listing of the store shows the object and its metadata only.
        let lock = body.with_file_name(format!(
            ".{}.lock",
            body.file_name().unwrap_or_default().to_string_lossy()
        ));
        Self {
            key: key.to_owned(),
            meta: with_suffix(".meta.json"),
            lock,
            body,
        }
    }

    fn io_error(&self, action: &str, path: &Path, err: io::Error) -> StoreError {
        let detail = format!("{action} {}: {err}", path.display());
        match err.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::PermissionDenied {
                    key: self.key.clone(),
                    permission: if action.starts_with("read") {
                        "read"
                    } else {
                        "write"
                    },
                    resource: path.display().to_string(),
                    detail,
                }
            }
            _ => StoreError::Transient {
                key: self.key.clone(),
                detail,
            },
        }
    }

    /// Opens (creating if needed) the per-object lock file. `None` when the object's directory
    /// does not exist, i.e. nothing was ever stored, and the caller only reads.
    fn open_lock(&self, create_dirs: bool) -> Result<Option<File>, StoreError> {
        if let Some(dir) = self.lock.parent() {
            if !dir.exists() {
                if !create_dirs {
                    return Ok(None);
                }
                fs::create_dir_all(dir).map_err(|e| self.io_error("create directory", dir, e))?;
            }
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map(Some)
            .map_err(|e| self.io_error("open lock file", &self.lock, e))
    }

    /// Tag and metadata; called with the lock held.
    fn read_stored(&self) -> Result<Option<StoredObject>, StoreError> {
        let body = match fs::read(&self.body) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("read", &self.body, e)),
        };
        let sidecar: BTreeMap<String, String> = match fs::read(&self.meta) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Rejected {
                key: self.key.clone(),
                detail: format!(
                    "metadata file {} is not a JSON object of strings ({e}); delete it to let the next export rewrite it",
                    self.meta.display()
                ),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(self.io_error("read", &self.meta, e)),
        };
        let metadata = ExportMetadata::from_lookup(|name| sidecar.get(name).map(String::as_str))
            .map_err(|e| StoreError::Rejected {
                key: self.key.clone(),
                detail: format!("{}: {e}", self.meta.display()),
            })?;
        Ok(Some(StoredObject {
            // The tag covers body and metadata, so any change to either fails an If-Match.
            etag: etag_of(&body, &sidecar),
            metadata,
        }))
    }
}

fn etag_of(body: &[u8], sidecar: &BTreeMap<String, String>) -> String {
    let mut bytes = body.to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&serde_json::to_vec(sidecar).unwrap_or_default());
    format!("\"{}\"", &Sha256Digest::of(&bytes).to_hex()[..32])
}

fn write_atomically(paths: &Paths, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = target.with_file_name(tmp_name);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, target)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        paths.io_error("write", target, e)
    })
}

#[async_trait]
impl ConfigStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.blocking(key, |p| {
            let Some(lock) = p.open_lock(false)? else {
                return Ok(None);
            };
            lock.lock_shared()
                .map_err(|e| p.io_error("lock", &p.lock, e))?;
            p.read_stored()
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError> {
        self.blocking(key, |p| {
            let Some(lock) = p.open_lock(false)? else {
                return Ok(None);
            };
            lock.lock_shared()
                .map_err(|e| p.io_error("lock", &p.lock, e))?;
            let Some(stored) = p.read_stored()? else {
                return Ok(None);
            };
            let body = fs::read(&p.body).map_err(|e| p.io_error("read", &p.body, e))?;
            Ok(Some(FetchedObject {
                body: Bytes::from(body),
                stored,
            }))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &ExportMetadata,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        let sidecar: BTreeMap<String, String> = metadata
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.blocking(key, move |p| {
            let lock = p.open_lock(true)?.ok_or_else(|| StoreError::Transient {
                key: p.key.clone(),
                detail: "object directory vanished".into(),
            })?;
            lock.lock().map_err(|e| p.io_error("lock", &p.lock, e))?;
            let current = p.read_stored()?;
            let holds = match (&precondition, &current) {
                (Precondition::Absent, None) => true,
                (Precondition::Matches(tag), Some(c)) => *tag == c.etag,
                _ => false,
            };
            if !holds {
                return Err(StoreError::PreconditionFailed { key: p.key.clone() });
            }
            write_atomically(&p, &p.body, &body)?;
            let meta_bytes = serde_json::to_vec_pretty(&sidecar).unwrap_or_default();
            write_atomically(&p, &p.meta, &meta_bytes)?;
            Ok(etag_of(&body, &sidecar))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.blocking(key, |p| {
            let Some(lock) = p.open_lock(false)? else {
                return Ok(());
            };
            lock.lock().map_err(|e| p.io_error("lock", &p.lock, e))?;
            // The lock file stays: another process may be waiting on it.
            for path in [&p.body, &p.meta] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(p.io_error("remove", path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let signer = self.url_signer.as_ref().ok_or_else(|| StoreError::Rejected {
            key: key.to_owned(),
            detail: "file:// objects are served by the companion's signer role only; no URL signer is configured".into(),
        })?;
        let expires = unix_seconds(now).saturating_add(expires_in.as_secs().max(1));
        Ok(signer.url(key, expires))
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs and checks the URLs of the companion's own object route (`file://` storage):
/// `<base>/v1/objects/<key>?expires=<unix s>&signature=<hex HMAC-SHA256 over "GET\n<key>\n<expires>">`.
///
/// Replicas that share `FALLBACK_URL_SIGNING_KEY` accept each other's URLs; without it every
/// process draws a random key and only accepts its own.
pub struct UrlSigner {
    base: String,
    key: Secret,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base", &self.base)
            .field("key", &"***")
            .finish()
    }
}

/// Why an object URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectUrlError {
    /// `expires` or `signature` missing or malformed.
    #[error("the object URL lacks a valid expires/signature query; ask the signer (/v1/fallback-config) for a fresh URL")]
    Malformed,
    /// The signature does not match this key and expiry.
    #[error("the object URL's signature does not match; ask the signer (/v1/fallback-config) for a fresh URL")]
    BadSignature,
    /// The signature is right but the URL has expired.
    #[error("the object URL expired at {expired_at} (unix {expires}); ask the signer (/v1/fallback-config) for a fresh URL")]
    Expired {
        /// Unix seconds.
        expires: u64,
        /// RFC 3339.
        expired_at: String,
    },
}

impl UrlSigner {
    /// A signer issuing URLs under `base` (e.g. `http://companion:8280`) with `key`.
    pub fn new(base: &str, key: Secret) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key,
        }
    }

    /// A signer with 32 random bytes as key (URLs valid in this process only).
    pub fn with_random_key(base: &str) -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::new(base, Secret::new(hex))
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn mac(&self, key: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        mac
    }

    /// The hex signature for `key` until `expires` (unix seconds).
    pub fn signature(&self, key: &str, expires: u64) -> String {
        self.mac(key, expires)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The signed URL of `key`, each path segment percent-encoded.
    pub fn url(&self, key: &str, expires: u64) -> String {
        let mut url = format!("{}{}", self.base, OBJECTS_PATH.trim_end_matches('/'));
        for segment in key.split('/') {
            url.push('/');
            url.push_str(&percent_encode(segment));
        }
        format!(
            "{url}?expires={expires}&signature={}",
            self.signature(key, expires)
        )
    }

    /// Checks `expires`/`signature` (raw query values) for `key` at `now`. The signature is
    /// compared in constant time, before the expiry, so that a forged URL learns nothing.
    pub fn verify(
        &self,
        key: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now: SystemTime,
    ) -> Result<(), ObjectUrlError> {
        let expires: u64 = expires
            .and_then(|e| e.parse().ok())
            .ok_or(ObjectUrlError::Malformed)?;
        let signature = signature
            .and_then(decode_hex)
            .ok_or(ObjectUrlError::Malformed)?;
        // `verify_slice` compares in constant time (the `subtle` crate underneath).
        self.mac(key, expires)
            .verify_slice(&signature)
            .map_err(|_| ObjectUrlError::BadSignature)?;
        if unix_seconds(now) >= expires {
            return Err(ObjectUrlError::Expired {
                expires,
                expired_at: humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_secs(expires),
                )
                .to_string(),
            });
        }
        Ok(())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new("http://companion:8280/", Secret::new("shared-key"))
    }

    #[test]
    fn signed_urls_verify_for_their_key_until_they_expire() {
        let s = signer();
        let url = s.url("3.4 x/config.json", 2_000_000_000);
        assert!(
            url.starts_with("http://companion:8280/v1/objects/3.4%20x/config.json?expires=2000000000&signature="),
            "{url}"
        );
        let sig = s.signature("3.4 x/config.json", 2_000_000_000);
        let before = UNIX_EPOCH + Duration::from_secs(1_999_999_000);
        assert_eq!(
            s.verify("3.4 x/config.json", Some("2000000000"), Some(&sig), before),
            Ok(())
        );
        // Another key, another expiry, a tampered signature: refused as bad signatures.
        assert_eq!(
            s.verify("other/config.json", Some("2000000000"), Some(&sig), before),
            Err(ObjectUrlError::BadSignature)
        );
        assert_eq!(
            s.verify("3.4 x/config.json", Some("2000000001"), Some(&sig), before),
            Err(ObjectUrlError::BadSignature)
        );
        let mut tampered = sig.clone().into_bytes();
        tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            s.verify(
                "3.4 x/config.json",
                Some("2000000000"),
                Some(&tampered),
                before
            ),
            Err(ObjectUrlError::BadSignature)
        );
        assert_eq!(
            s.verify("3.4 x/config.json", Some("2000000000"), None, before),
            Err(ObjectUrlError::Malformed)
        );
        let after = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let err = s
            .verify("3.4 x/config.json", Some("2000000000"), Some(&sig), after)
            .unwrap_err();
        assert!(
            err.to_string().contains("expired at 2033-05-18T03:33:20Z"),
            "{err}"
        );
        // Another key never verifies; the key never shows in Debug.
        let other = UrlSigner::new("http://companion:8280", Secret::new("other"));
        assert_eq!(
            other.verify("3.4 x/config.json", Some("2000000000"), Some(&sig), before),
            Err(ObjectUrlError::BadSignature)
        );
        assert!(!format!("{s:?}").contains("shared-key"));
    }

    #[tokio::test]
    async fn presign_get_needs_a_signer() {
        let store = FileStore::new("/tmp/nowhere".into());
        assert!(store
            .presign_get("k/config.json", Duration::from_secs(60), SystemTime::now())
            .await
            .is_err());
        let store = store.with_url_signer(Arc::new(signer()));
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let url = store
            .presign_get("k/config.json", Duration::from_secs(60), now)
            .await
            .unwrap();
        assert!(url.contains("?expires=1060&signature="), "{url}");
    }
}
