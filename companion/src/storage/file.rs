//! `file:///dir`: the embedded default. Objects are plain files below `dir`; the metadata sits
//! beside each one in `<name>.meta.json`. A lock file per object makes the conditional write an
//! atomic compare-and-swap between processes on the same host, as `If-Match` does in S3.

use super::{ConfigStore, FetchedObject, Precondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use fallback_core::digest::Sha256Digest;
use fallback_core::export::{ExportMetadata, StoredObject};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Objects stored as files below a root directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
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
}
