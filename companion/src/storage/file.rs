//! `file:///dir`: the embedded default. Objects are files below `dir`; every write is a new
//! *generation* holding body and metadata together, committed by one atomic `rename`, so that
//! a reader sees the old pair or the new pair, never a mix, wherever the writer stops (a full
//! disk, a crash, SIGKILL), as S3 and GCS give it.
//!
//! The object `<key>` = `<dir>/<name>` (e.g. `3.4.1.0/config.json`) is laid out as:
//!
//! ```text
//! <dir>/<name>                                    symlink → .<name>.generations/<generation>/<name>
//! <dir>/.<name>.generations/<generation>/<name>            the body
//! <dir>/.<name>.generations/<generation>/<name>.meta.json  its metadata, a JSON object of strings
//! <dir>/.<name>.lock                              writers lock it exclusively, readers shared
//! ```
//!
//! A write fills a new generation directory (fsynced), points a new symlink at it and renames
//! that symlink over `<dir>/<name>`: the one step that makes the new pair visible. Before it,
//! readers see the old pair; after it, the new one. Old generations and leftovers of
//! interrupted writes are removed after the commit and ignored by readers until then. The
//! generation's name is the object's tag, so a read never needs the body: `HEAD` reads the
//! symlink and the small metadata file only.
//!
//! `<dir>/<name>` as a plain file is read too: the layout before generations (the metadata in
//! `<dir>/<name>.meta.json` beside it) or a file another tool wrote. The next write replaces
//! it with a generation in the same single rename and then removes the old metadata file.
//!
//! The lock makes the conditional write an atomic compare-and-swap between processes on the
//! same host, as `If-Match` does in S3; readers hold it (shared) only while they resolve the
//! generation and open its files, so a slow download never holds up a write.
//!
//! Filters cannot read these files: the companion serves them itself at
//! `<public URL>/v1/objects/<key>?expires=<unix s>&signature=<hex>`, the signature being
//! HMAC-SHA256 over `"GET\n<key>\n<expires>"` ([`UrlSigner`]).

use super::{ConfigStore, FetchedObject, ObjectBody, OpenedObject, Precondition, StoreError};
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
use tracing::warn;

#[cfg(unix)]
use std::os::unix::fs::symlink;
#[cfg(windows)]
use std::os::windows::fs::symlink_file as symlink;

/// Objects stored as files below a root directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    url_signer: Option<Arc<UrlSigner>>,
    #[cfg(test)]
    seams: seams::Seams,
}

impl FileStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            url_signer: None,
            #[cfg(test)]
            seams: seams::Seams::default(),
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

    /// Where the object for `key` is visible (the symlink to its current generation).
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    #[cfg(test)]
    pub(crate) fn seams(&self) -> &seams::Seams {
        &self.seams
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce(Paths) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let paths = Paths::new(&self.root, key)?;
        #[cfg(test)]
        let paths = Paths {
            seams: self.seams.clone(),
            ..paths
        };
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || work(paths))
            .await
            .map_err(|e| StoreError::Transient {
                key,
                detail: format!("storage task failed: {e}"),
            })?
    }
}

/// Every path that belongs to one object.
struct Paths {
    key: String,
    /// `<dir>/<name>`: the symlink to the current generation (or a plain file).
    object: PathBuf,
    /// `<dir>`.
    dir: PathBuf,
    /// `<name>`.
    name: String,
    /// `<dir>/.<name>.generations`.
    generations: PathBuf,
    /// `<dir>/<name>.meta.json`: the metadata of a plain file (the layout before generations).
    plain_meta: PathBuf,
    /// `<dir>/.<name>.lock`.
    lock: PathBuf,
    #[cfg(test)]
    seams: seams::Seams,
}

/// What `<dir>/<name>` holds.
enum Current {
    /// A committed generation: its body and metadata.
    Generation {
        name: String,
        body: PathBuf,
        meta: PathBuf,
    },
    /// A plain file (or a symlink this store did not make), metadata beside it.
    Plain,
}

/// The metadata file's name for a body named `name`.
fn meta_name(name: &str) -> String {
    format!("{name}.meta.json")
}

/// A new generation's name: unique across writers and time, ordered by time for humans.
fn new_generation() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{millis}-{:016x}", rand::random::<u64>())
}

fn is_generation_name(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn generation_tag(generation: &str) -> String {
    format!("\"{generation}\"")
}

impl Paths {
    fn new(root: &Path, key: &str) -> Result<Self, StoreError> {
        // Keys come from validated versions and signed URLs; still, never leave the root.
        let segments: Vec<&str> = key.split('/').collect();
        if segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            return Err(StoreError::Rejected {
                key: key.to_owned(),
                detail: "a file:// object key has no empty, \".\" or \"..\" segments".into(),
            });
        }
        let object = root.join(key);
        let dir = object.parent().unwrap_or(root).to_owned();
        let name = segments[segments.len() - 1].to_owned();
        Ok(Self {
            key: key.to_owned(),
            generations: dir.join(format!(".{name}.generations")),
            plain_meta: dir.join(meta_name(&name)),
            // Hidden, like the generations, so that a listing of the store shows the object.
            lock: dir.join(format!(".{name}.lock")),
            object,
            dir,
            name,
            #[cfg(test)]
            seams: seams::Seams::default(),
        })
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

    fn rejected(&self, detail: String) -> StoreError {
        StoreError::Rejected {
            key: self.key.clone(),
            detail,
        }
    }

    /// One filesystem step that changes the store. Tests make the chosen step fail (a full
    /// disk) or stop the write right before it (a killed process).
    fn step<T>(&self, what: &str, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        #[cfg(test)]
        self.seams.before_step(what)?;
        #[cfg(not(test))]
        let _ = what;
        op()
    }

    /// Opens (creating if needed) the per-object lock file. `None` when the object's directory
    /// does not exist, i.e. nothing was ever stored, and the caller only reads.
    fn open_lock(&self, create_dirs: bool) -> Result<Option<File>, StoreError> {
        if !self.dir.exists() {
            if !create_dirs {
                return Ok(None);
            }
            fs::create_dir_all(&self.dir)
                .map_err(|e| self.io_error("create directory", &self.dir, e))?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map(Some)
            .map_err(|e| self.io_error("open lock file", &self.lock, e))
    }

    /// The lock, taken shared, or `None` when nothing was ever stored.
    fn lock_shared(&self) -> Result<Option<File>, StoreError> {
        let Some(lock) = self.open_lock(false)? else {
            return Ok(None);
        };
        lock.lock_shared()
            .map_err(|e| self.io_error("lock", &self.lock, e))?;
        Ok(Some(lock))
    }

    /// The lock, taken exclusively, creating the object's directory for a write.
    fn lock_exclusive(&self, create_dirs: bool) -> Result<Option<File>, StoreError> {
        let Some(lock) = self.open_lock(create_dirs)? else {
            return Ok(None);
        };
        lock.lock()
            .map_err(|e| self.io_error("lock", &self.lock, e))?;
        Ok(Some(lock))
    }

    /// The symlink target naming `generation`, relative so that the store can move.
    fn link_target(&self, generation: &str) -> PathBuf {
        Path::new(&format!(".{}.generations", self.name))
            .join(generation)
            .join(&self.name)
    }

    /// The generation a symlink target names, if it is one this store made.
    fn generation_of(&self, target: &Path) -> Option<String> {
        let target = target.to_str()?;
        let rest = target.strip_prefix(&format!(".{}.generations/", self.name))?;
        let (generation, file) = rest.split_once('/')?;
        (file == self.name && is_generation_name(generation)).then(|| generation.to_owned())
    }

    /// What `<dir>/<name>` holds; `None` when nothing. Called with the lock held.
    fn current(&self) -> Result<Option<Current>, StoreError> {
        let found = match fs::symlink_metadata(&self.object) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("read", &self.object, e)),
        };
        if found.is_dir() {
            return Err(self.rejected(format!(
                "{} is a directory, not an object; move it away",
                self.object.display()
            )));
        }
        if !found.file_type().is_symlink() {
            return Ok(Some(Current::Plain));
        }
        let target =
            fs::read_link(&self.object).map_err(|e| self.io_error("read", &self.object, e))?;
        Ok(Some(match self.generation_of(&target) {
            Some(generation) => {
                let dir = self.generations.join(&generation);
                Current::Generation {
                    body: dir.join(&self.name),
                    meta: dir.join(meta_name(&self.name)),
                    name: generation,
                }
            }
            None => Current::Plain,
        }))
    }

    /// Tag, metadata and the path of the body they describe; called with the lock held. Never
    /// reads the body.
    fn read_stored(&self) -> Result<Option<(StoredObject, PathBuf)>, StoreError> {
        match self.current()? {
            None => Ok(None),
            Some(Current::Generation { name, body, meta }) => {
                let bytes = match fs::read(&meta) {
                    Ok(bytes) => bytes,
                    // Writes never commit a generation without its metadata: someone removed
                    // it by hand. Nothing usable is stored; the next export replaces the link.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        warn!(object = %self.object.display(), generation = %name, "the object's current generation has no metadata file (removed by hand?): treated as nothing stored until the next export");
                        return Ok(None);
                    }
                    Err(e) => return Err(self.io_error("read", &meta, e)),
                };
                let metadata = self.parse_metadata(&bytes, &meta)?;
                Ok(Some((
                    StoredObject {
                        etag: generation_tag(&name),
                        metadata,
                    },
                    body,
                )))
            }
            Some(Current::Plain) => {
                let body = match fs::metadata(&self.object) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(self.io_error("read", &self.object, e)),
                };
                let sidecar = match fs::read(&self.plain_meta) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(self.io_error("read", &self.plain_meta, e)),
                };
                let metadata = if sidecar.is_empty() {
                    None
                } else {
                    self.parse_metadata(&sidecar, &self.plain_meta)?
                };
                Ok(Some((
                    StoredObject {
                        etag: plain_tag(&body, &sidecar),
                        metadata,
                    },
                    self.object.clone(),
                )))
            }
        }
    }

    fn parse_metadata(
        &self,
        bytes: &[u8],
        path: &Path,
    ) -> Result<Option<ExportMetadata>, StoreError> {
        let pairs: BTreeMap<String, String> = serde_json::from_slice(bytes).map_err(|e| {
            self.rejected(format!(
                "metadata file {} is not a JSON object of strings ({e}); export again to replace it",
                path.display()
            ))
        })?;
        ExportMetadata::from_lookup(|name| pairs.get(name).map(String::as_str))
            .map_err(|e| self.rejected(format!("{}: {e}", path.display())))
    }

    /// Opens the body a read resolved to; called with the lock held.
    fn open_body(&self, body: &Path) -> Result<File, StoreError> {
        #[cfg(test)]
        self.seams.body_opened();
        File::open(body).map_err(|e| self.io_error("read", body, e))
    }

    /// Writes `body` and `metadata` as a new generation and commits it; called with the lock
    /// held exclusively. Returns the new tag.
    fn write(&self, body: &[u8], metadata: &[u8]) -> Result<String, StoreError> {
        let generation = new_generation();
        let dir = self.generations.join(&generation);
        let link = self.dir.join(format!(".{}.link-{generation}", self.name));
        let prepared = (|| {
            self.step("create the generation directory", || {
                fs::create_dir_all(&dir)
            })?;
            self.step("write the body", || {
                write_synced(&dir.join(&self.name), body)
            })?;
            self.step("write the metadata", || {
                write_synced(&dir.join(meta_name(&self.name)), metadata)
            })?;
            self.step("sync the generation", || sync_dir(&dir))?;
            self.step("sync the generations", || sync_dir(&self.generations))?;
            self.step("link the generation", || {
                symlink(self.link_target(&generation), &link)
            })?;
            // The commit: the one step after which readers see the new pair.
            self.step("commit", || fs::rename(&link, &self.object))
        })();
        if let Err(e) = prepared {
            let _ = fs::remove_file(&link);
            let _ = fs::remove_dir_all(&dir);
            return Err(self.io_error("write", &self.object, e));
        }
        // Committed. What follows only makes the rename durable and reclaims space; a failure
        // there leaves the new pair in place and is tidied by the next write.
        if let Err(e) = self.step("sync the object's directory", || sync_dir(&self.dir)) {
            warn!(object = %self.object.display(), "written, but the directory could not be synced: {e}");
        }
        self.collect_garbage(Some(&generation));
        Ok(generation_tag(&generation))
    }

    /// Removes what no reader can reach any more: generations other than `keep`, the metadata
    /// of the plain layout once a generation replaced it, and leftovers of interrupted writes.
    /// Called with the lock held exclusively.
    fn collect_garbage(&self, keep: Option<&str>) {
        let mut doomed: Vec<PathBuf> = Vec::new();
        if keep.is_some() && fs::symlink_metadata(&self.plain_meta).is_ok() {
            doomed.push(self.plain_meta.clone());
        }
        if let Ok(entries) = fs::read_dir(&self.generations) {
            doomed.extend(
                entries
                    .flatten()
                    .filter(|e| keep.is_none_or(|keep| e.file_name() != keep))
                    .map(|e| e.path()),
            );
        }
        // Interrupted writes: symlinks not yet renamed, and the plain layout's temporary files
        // (`<name>.tmp-<pid>`).
        let link = format!(".{}.link-", self.name);
        let plain_tmp = [
            format!("{}.tmp-", self.name),
            format!("{}.tmp-", meta_name(&self.name)),
        ];
        let is_leftover = |file: &str| {
            file.strip_prefix(link.as_str())
                .is_some_and(is_generation_name)
                || plain_tmp.iter().any(|prefix| {
                    file.strip_prefix(prefix.as_str()).is_some_and(|pid| {
                        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
                    })
                })
        };
        if let Ok(entries) = fs::read_dir(&self.dir) {
            doomed.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(is_leftover))
                    .map(|e| e.path()),
            );
        }
        for path in doomed {
            let removed = self.step("remove what is unreachable", || match fs::symlink_metadata(
                &path,
            ) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            });
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), "cannot remove an unreachable file of the store: {e}")
                }
            }
        }
        if keep.is_none() {
            let _ = fs::remove_dir(&self.generations);
        }
    }
}

/// The plain layout's tag, from what changes whenever the file or its metadata changes (its
/// inode, size and times, the metadata's bytes), so that the body is never read for it.
fn plain_tag(body: &fs::Metadata, sidecar: &[u8]) -> String {
    let mut identity = format!("plain\n{}\n", body.len());
    if let Ok(modified) = body.modified() {
        if let Ok(since) = modified.duration_since(UNIX_EPOCH) {
            identity.push_str(&format!("{}\n", since.as_nanos()));
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        identity.push_str(&format!(
            "{}:{}:{}.{}\n",
            body.dev(),
            body.ino(),
            body.ctime(),
            body.ctime_nsec()
        ));
    }
    let mut bytes = identity.into_bytes();
    bytes.extend_from_slice(sidecar);
    format!("\"plain-{}\"", &Sha256Digest::of(&bytes).to_hex()[..32])
}

/// Creates `path` with `bytes`, flushed to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes a directory's entries (new files, renames) to the disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[async_trait]
impl ConfigStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn head(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.blocking(key, |p| {
            let Some(_lock) = p.lock_shared()? else {
                return Ok(None);
            };
            Ok(p.read_stored()?.map(|(stored, _)| stored))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<FetchedObject>, StoreError> {
        self.blocking(key, |p| {
            let Some(_lock) = p.lock_shared()? else {
                return Ok(None);
            };
            let Some((stored, body)) = p.read_stored()? else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut p.open_body(&body)?, &mut bytes)
                .map_err(|e| p.io_error("read", &body, e))?;
            Ok(Some(FetchedObject {
                body: Bytes::from(bytes),
                stored,
            }))
        })
        .await
    }

    /// The body stays open after the lock is released: a generation removed by a later write
    /// is still read whole, and the download holds up no write.
    async fn open(&self, key: &str) -> Result<Option<OpenedObject>, StoreError> {
        self.blocking(key, |p| {
            let Some(_lock) = p.lock_shared()? else {
                return Ok(None);
            };
            let Some((stored, body)) = p.read_stored()? else {
                return Ok(None);
            };
            let file = p.open_body(&body)?;
            let size = file
                .metadata()
                .map_err(|e| p.io_error("read", &body, e))?
                .len();
            Ok(Some(OpenedObject {
                stored,
                size,
                body: ObjectBody::File(file),
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
        let meta_bytes = serde_json::to_vec_pretty(&sidecar).unwrap_or_default();
        self.blocking(key, move |p| {
            let _lock = p
                .lock_exclusive(true)?
                .ok_or_else(|| StoreError::Transient {
                    key: p.key.clone(),
                    detail: "object directory vanished".into(),
                })?;
            let current = p.read_stored()?.map(|(stored, _)| stored);
            let holds = match (&precondition, &current) {
                (Precondition::Absent, None) => true,
                (Precondition::Matches(tag), Some(c)) => *tag == c.etag,
                _ => false,
            };
            if !holds {
                return Err(StoreError::PreconditionFailed { key: p.key.clone() });
            }
            p.write(&body, &meta_bytes)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.blocking(key, |p| {
            let Some(_lock) = p.lock_exclusive(false)? else {
                return Ok(());
            };
            // Removing the visible name is the delete; the rest is tidying. The lock file
            // stays: another process may be waiting on it.
            match fs::remove_file(&p.object) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(p.io_error("remove", &p.object, e)),
            }
            match fs::remove_file(&p.plain_meta) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(p.io_error("remove", &p.plain_meta, e)),
            }
            p.collect_garbage(None);
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

/// Test seams: fail or interrupt a chosen filesystem step of a write, count body opens.
#[cfg(test)]
pub(crate) mod seams {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// How the chosen step goes wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fault {
        /// The step fails as on a full disk (ENOSPC); the writer sees the error and tidies up.
        DiskFull,
        /// The writer dies right before the step: a panic in its blocking task, so that no
        /// code of the write runs after it (the lock goes, as the kernel drops a dead
        /// process's locks).
        Killed,
    }

    #[derive(Debug, Default)]
    struct Inner {
        steps: AtomicUsize,
        fault: Mutex<Option<(usize, Fault)>>,
        body_opens: AtomicUsize,
    }

    /// Shared by the clones of one store.
    #[derive(Debug, Clone, Default)]
    pub struct Seams(Arc<Inner>);

    impl Seams {
        /// From now on, count steps from 1 and let step `step` go wrong with `fault`.
        pub fn fail_at(&self, step: usize, fault: Fault) {
            *self.0.fault.lock().unwrap() = Some((step, fault));
            self.0.steps.store(0, Ordering::SeqCst);
        }

        /// Steps taken so far.
        pub fn steps(&self) -> usize {
            self.0.steps.load(Ordering::SeqCst)
        }

        /// Bodies opened so far.
        pub fn body_opens(&self) -> usize {
            self.0.body_opens.load(Ordering::SeqCst)
        }

        pub(super) fn before_step(&self, what: &str) -> io::Result<()> {
            let step = self.0.steps.fetch_add(1, Ordering::SeqCst) + 1;
            let fault = *self.0.fault.lock().unwrap();
            match fault {
                Some((at, Fault::DiskFull)) if at == step => Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("injected: no space left on device at step {step} ({what})"),
                )),
                Some((at, Fault::Killed)) if at == step => {
                    panic!("injected: the writer dies before step {step} ({what})")
                }
                _ => Ok(()),
            }
        }

        pub(super) fn body_opened(&self) {
            self.0.body_opens.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seams::Fault;
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

    const KEY: &str = "3.4.1.0/config.json";

    fn meta(body: &[u8], revision: u64) -> ExportMetadata {
        ExportMetadata {
            sha256: Sha256Digest::of(body),
            revision,
            node_id: "node-a".into(),
            exported_at: "2026-11-26T10:00:00.000Z".into(),
            signature: None,
            key_id: None,
        }
    }

    /// What a reader sees: body and metadata from one `get`, after checking that `head`
    /// agrees.
    async fn seen(store: &FileStore) -> Option<(Bytes, Option<ExportMetadata>)> {
        let head = store.head(KEY).await.unwrap();
        let got = store.get(KEY).await.unwrap();
        assert_eq!(head.as_ref(), got.as_ref().map(|g| &g.stored));
        got.map(|g| (g.body, g.stored.metadata))
    }

    fn pair(body: &'static [u8], revision: u64) -> (Bytes, Option<ExportMetadata>) {
        (Bytes::from_static(body), Some(meta(body, revision)))
    }

    /// The store's root is `<dir>/store`.
    fn store_in(dir: &Path) -> FileStore {
        FileStore::new(dir.join("store"))
    }

    /// How the object was stored before the write under test.
    #[derive(Debug, Clone, Copy)]
    enum Before {
        /// As earlier versions stored it: the body, `config.json.meta.json` beside it, and a
        /// temporary file a crashed write of theirs left.
        PlainFiles,
        /// A generation this store wrote.
        Generation,
    }

    /// A store holding `v1` (revision 1) laid out as `before`, and its tag.
    async fn holding_v1(before: Before) -> (tempfile::TempDir, FileStore, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let (body, metadata) = pair(b"v1", 1);
        match before {
            Before::PlainFiles => {
                let object = store.path_of(KEY);
                fs::create_dir_all(object.parent().unwrap()).unwrap();
                fs::write(&object, &body).unwrap();
                let sidecar: BTreeMap<&str, String> =
                    metadata.unwrap().to_pairs().into_iter().collect();
                fs::write(
                    object.with_file_name("config.json.meta.json"),
                    serde_json::to_vec_pretty(&sidecar).unwrap(),
                )
                .unwrap();
                fs::write(object.with_file_name("config.json.tmp-4242"), b"v0.5").unwrap();
            }
            Before::Generation => {
                store
                    .put(KEY, body, &metadata.unwrap(), Precondition::Absent)
                    .await
                    .unwrap();
            }
        }
        let tag = store.head(KEY).await.unwrap().unwrap().etag;
        (dir, store, tag)
    }

    /// Everything below the object's directory, as `name` or `name -> target`.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                let shown = path.strip_prefix(dir).unwrap().display().to_string();
                let kind = entry.file_type().unwrap();
                if kind.is_symlink() {
                    names.push(format!(
                        "{shown} -> {}",
                        fs::read_link(&path).unwrap().display()
                    ));
                } else if kind.is_dir() {
                    stack.push(path);
                } else {
                    names.push(shown);
                }
            }
        }
        names.sort();
        names
    }

    /// Only the lock, the visible symlink and the current generation's two files are left.
    fn assert_tidy(store: &FileStore) {
        let dir = store.path_of(KEY).parent().unwrap().to_owned();
        let names = listing(&dir);
        assert_eq!(names.len(), 4, "{names:#?}");
        assert!(
            names.contains(&".config.json.lock".to_owned()),
            "{names:#?}"
        );
        let link = names
            .iter()
            .find(|n| n.starts_with("config.json -> .config.json.generations/"))
            .unwrap_or_else(|| panic!("no symlink to a generation in {names:#?}"));
        let generation = link.split('/').nth(1).unwrap();
        for file in ["config.json", "config.json.meta.json"] {
            let expected = format!(".config.json.generations/{generation}/{file}");
            assert!(names.contains(&expected), "{expected} missing: {names:#?}");
        }
    }

    /// Wherever a write stops (a full disk at any step, or the writer killed before any step),
    /// a reader sees the old body with the old metadata or the new body with the new
    /// metadata, never a mix; the next write goes through and leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_interrupted_at_any_step_leaves_the_old_pair_or_the_new_one() {
        let old = pair(b"v1", 1);
        let new = pair(b"v2", 2);
        for before in [Before::PlainFiles, Before::Generation] {
            let steps = {
                let (_dir, store, tag) = holding_v1(before).await;
                store.seams().fail_at(usize::MAX, Fault::DiskFull);
                let (body, metadata) = new.clone();
                store
                    .put(KEY, body, &metadata.unwrap(), Precondition::Matches(tag))
                    .await
                    .unwrap();
                store.seams().steps()
            };
            assert!(steps >= 8, "{before:?}: {steps} steps");
            for step in 1..=steps {
                for fault in [Fault::DiskFull, Fault::Killed] {
                    let (dir, store, tag) = holding_v1(before).await;
                    store.seams().fail_at(step, fault);
                    let (body, metadata) = new.clone();
                    let result = store
                        .put(KEY, body, &metadata.unwrap(), Precondition::Matches(tag))
                        .await;
                    let reader = store_in(dir.path());
                    let now = seen(&reader).await.expect("an object is stored");
                    let case = format!("{before:?}, {fault:?} at step {step}/{steps}");
                    assert!(now == old || now == new, "{case}: a mix {now:?}");
                    match (&result, fault) {
                        (Ok(_), _) => assert_eq!(now, new, "{case}"),
                        (Err(e), Fault::DiskFull) => {
                            assert_eq!(now, old, "{case}: {e}");
                            assert!(e.is_transient(), "{case}: {e}");
                        }
                        (Err(_), Fault::Killed) => {}
                    }
                    let tag = reader.head(KEY).await.unwrap().unwrap().etag;
                    let (body, metadata) = pair(b"v3", 3);
                    reader
                        .put(KEY, body, &metadata.unwrap(), Precondition::Matches(tag))
                        .await
                        .unwrap_or_else(|e| panic!("{case}: the next write fails: {e}"));
                    assert_eq!(seen(&reader).await, Some(pair(b"v3", 3)), "{case}");
                    assert_tidy(&reader);
                }
            }
        }
    }

    #[tokio::test]
    async fn the_layout_before_generations_is_read_and_replaced_by_the_next_write() {
        let (_dir, store, tag) = holding_v1(Before::PlainFiles).await;
        assert_eq!(seen(&store).await, Some(pair(b"v1", 1)));
        assert!(tag.starts_with("\"plain-"), "{tag}");
        let (body, metadata) = pair(b"v2", 2);
        let new_tag = store
            .put(
                KEY,
                body,
                &metadata.unwrap(),
                Precondition::Matches(tag.clone()),
            )
            .await
            .unwrap();
        assert_ne!(new_tag, tag);
        assert_eq!(seen(&store).await, Some(pair(b"v2", 2)));
        assert_tidy(&store);
        // The visible path still reads as the body, for humans and their tools.
        assert_eq!(fs::read(store.path_of(KEY)).unwrap(), b"v2");

        // A plain file without metadata (another tool wrote it) is an object without ours.
        let foreign = store.path_of("kong-wrote-this/config.json");
        fs::create_dir_all(foreign.parent().unwrap()).unwrap();
        fs::write(&foreign, b"{}").unwrap();
        let head = store
            .head("kong-wrote-this/config.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.metadata, None);
    }

    #[tokio::test]
    async fn a_plain_files_tag_changes_with_the_file_or_its_metadata() {
        let (_dir, store, tag) = holding_v1(Before::PlainFiles).await;
        let object = store.path_of(KEY);
        // Rewritten in place with bytes of the same length: the tag must not survive it.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&object, b"v9").unwrap();
        let changed = store.head(KEY).await.unwrap().unwrap().etag;
        assert_ne!(changed, tag);
        fs::write(object.with_file_name("config.json.meta.json"), b"{}").unwrap();
        assert_ne!(store.head(KEY).await.unwrap().unwrap().etag, changed);
    }

    #[tokio::test]
    async fn leftovers_of_interrupted_writes_are_ignored_then_removed() {
        let (_dir, store, tag) = holding_v1(Before::Generation).await;
        let dir = store.path_of(KEY).parent().unwrap().to_owned();
        // A generation half written, a link never renamed, the old layout's temporary files.
        let half = dir.join(".config.json.generations/1-deadbeef");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("config.json"), b"half").unwrap();
        symlink(
            ".config.json.generations/1-deadbeef/config.json",
            dir.join(".config.json.link-1-deadbeef"),
        )
        .unwrap();
        fs::write(dir.join("config.json.meta.json.tmp-77"), b"{").unwrap();
        // Not leftovers of this object: kept.
        fs::write(dir.join("config.json.tmp-notapid"), b"x").unwrap();
        fs::write(dir.join("other.json"), b"x").unwrap();
        assert_eq!(seen(&store).await, Some(pair(b"v1", 1)));
        assert_eq!(store.head(KEY).await.unwrap().unwrap().etag, tag);

        let (body, metadata) = pair(b"v2", 2);
        store
            .put(KEY, body, &metadata.unwrap(), Precondition::Matches(tag))
            .await
            .unwrap();
        fs::remove_file(dir.join("config.json.tmp-notapid")).expect("kept");
        fs::remove_file(dir.join("other.json")).expect("kept");
        assert_tidy(&store);
    }

    #[tokio::test]
    async fn a_generation_removed_by_hand_reads_as_nothing_and_the_next_write_heals_it() {
        let (_dir, store, _) = holding_v1(Before::Generation).await;
        let dir = store.path_of(KEY).parent().unwrap().to_owned();
        fs::remove_dir_all(dir.join(".config.json.generations")).unwrap();
        assert_eq!(seen(&store).await, None);
        let (body, metadata) = pair(b"v2", 2);
        store
            .put(KEY, body, &metadata.unwrap(), Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(seen(&store).await, Some(pair(b"v2", 2)));
        assert_tidy(&store);
    }

    #[tokio::test]
    async fn reading_the_metadata_never_opens_the_body() {
        let (_dir, store, _) = holding_v1(Before::Generation).await;
        for _ in 0..5 {
            assert!(store.head(KEY).await.unwrap().is_some());
        }
        assert_eq!(store.seams().body_opens(), 0);
        store.get(KEY).await.unwrap().unwrap();
        assert_eq!(store.seams().body_opens(), 1);
        let (_dir, plain, _) = holding_v1(Before::PlainFiles).await;
        plain.head(KEY).await.unwrap().unwrap();
        assert_eq!(plain.seams().body_opens(), 0);
    }

    #[tokio::test]
    async fn an_opened_object_is_read_whole_while_writes_replace_it() {
        let (_dir, store, tag) = holding_v1(Before::Generation).await;
        let opened = store.open(KEY).await.unwrap().unwrap();
        assert_eq!(opened.size, 2);
        assert_eq!(opened.stored.metadata, pair(b"v1", 1).1);
        let (body, metadata) = pair(b"v2", 2);
        store
            .put(KEY, body, &metadata.unwrap(), Precondition::Matches(tag))
            .await
            .expect("a write is not held up by an open download");
        assert_tidy(&store);
        let ObjectBody::File(mut file) = opened.body else {
            panic!("file:// hands out the open file")
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes).unwrap();
        assert_eq!(
            bytes, b"v1",
            "the generation it opened, though no longer stored"
        );
    }

    #[tokio::test]
    async fn deleting_removes_every_file_but_the_lock() {
        let (_dir, store, _) = holding_v1(Before::PlainFiles).await;
        store.delete(KEY).await.unwrap();
        assert_eq!(seen(&store).await, None);
        let (_dir, store, _) = holding_v1(Before::Generation).await;
        store.delete(KEY).await.unwrap();
        assert_eq!(seen(&store).await, None);
        let dir = store.path_of(KEY).parent().unwrap().to_owned();
        assert_eq!(listing(&dir), vec![".config.json.lock".to_owned()]);
        store.delete(KEY).await.expect("deleting nothing is fine");
    }

    #[tokio::test]
    async fn keys_that_would_leave_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        for bad in [
            "../x/config.json",
            "/etc/config.json",
            "a//config.json",
            "a/./config.json",
            "",
        ] {
            let err = store.head(bad).await.unwrap_err();
            assert!(matches!(err, StoreError::Rejected { .. }), "{bad}: {err}");
        }
    }
}
