//! `LocalStore`: a directory with S3 Object Lock semantics, for single-machine use.
//!
//! Layout under the root:
//!
//! * `objects/<key>` — `"VERALOBJ"`, a u32 LE header length, a JSON header (ETag, user
//!   metadata) and the body. Header and body are one file so they change atomically.
//! * `locks/<key>.lock.json` — Object Lock state: retention and legal hold. Written
//!   *before* an object with retention is linked into place, so a crash never leaves a
//!   locked object without its lock.
//! * `mutex/<blake3(key)>` — one file per key, `flock`ed for the duration of every
//!   mutation, so several processes can share the store (the flock dies with a
//!   `kill -9`ed process).
//! * `tmp/` — staging for atomic writes.
//!
//! Create-if-absent is a `link(2)` of a fully written, fsynced temp file: it either
//! creates the key or fails, atomically, even without the mutex. Compare-and-swap
//! (`Update`) and overwrites rename a temp file over the object under the key's mutex.
//! Deletes and overwrites are refused with `Locked` while retention has not expired or a
//! legal hold is set, and COMPLIANCE retention can never be shortened.
//!
//! Limitation: a key cannot be both an object and a "directory" (`a` and `a/b`), which S3
//! allows; VERA's key scheme never needs that.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;

use crate::clock::{Clock, SystemClock};
use crate::error::{StoreError, StoreErrorKind};
use crate::types::{GetOutcome, LockMode, ObjectMeta, PutMode, PutOptions, PutOutcome, Retention};
use crate::{GovernanceBypass, ObjectStore, validate_key};

const OBJECT_MAGIC: &[u8; 8] = b"VERALOBJ";
const MAX_HEADER_LEN: u32 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectHeader {
    etag: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockState {
    retention: Option<Retention>,
    legal_hold: bool,
    /// Object tags; kept with the lock state because both change without the data.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    tags: std::collections::BTreeMap<String, String>,
}

/// See the module docs.
#[derive(Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").field("root", &self.root).finish()
    }
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::with_clock(root, Arc::new(SystemClock))
    }

    pub fn with_clock(root: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        for dir in ["objects", "locks", "mutex", "tmp"] {
            fs::create_dir_all(root.join(dir)).map_err(|e| StoreError::io(&root.display().to_string(), e))?;
        }
        Ok(LocalStore { root: Arc::new(root), clock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn blocking<T, F>(&self, key: &str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Inner) -> Result<T, StoreError> + Send + 'static,
    {
        validate_key(key)?;
        let inner = Inner { root: Arc::clone(&self.root), clock: Arc::clone(&self.clock) };
        let key_owned = key.to_owned();
        tokio::task::spawn_blocking(move || work(inner))
            .await
            .map_err(|e| StoreError::new(StoreErrorKind::Other, &key_owned, "store task panicked").with_source(e))?
    }
}

/// The synchronous implementation, run on the blocking pool.
struct Inner {
    root: Arc<PathBuf>,
    clock: Arc<dyn Clock>,
}

impl Inner {
    fn object_path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock.json"))
    }

    /// Takes the key's cross-process mutex; released when the file is dropped.
    fn mutex(&self, key: &str) -> Result<File, StoreError> {
        let path = self.root.join("mutex").join(blake3::hash(key.as_bytes()).to_hex().as_str());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(key, e))?;
        file.lock().map_err(|e| StoreError::io(key, e))?;
        Ok(file)
    }

    fn temp_file(&self, key: &str) -> Result<(PathBuf, File), StoreError> {
        let name = format!("{}.{}", std::process::id(), rand::random::<u64>());
        let path = self.root.join("tmp").join(name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| StoreError::io(key, e))?;
        Ok((path, file))
    }

    fn write_object_temp(
        &self,
        key: &str,
        body: &[u8],
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<(PathBuf, String), StoreError> {
        let etag = format!("\"{}\"", &blake3::hash(body).to_hex()[..32]);
        let header = ObjectHeader { etag: etag.clone(), metadata: metadata.clone() };
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| StoreError::new(StoreErrorKind::Other, key, "header encoding failed").with_source(e))?;
        let (path, mut file) = self.temp_file(key)?;
        let write = |file: &mut File| -> std::io::Result<()> {
            file.write_all(OBJECT_MAGIC)?;
            file.write_all(&(header_json.len() as u32).to_le_bytes())?;
            file.write_all(&header_json)?;
            file.write_all(body)?;
            file.sync_all()
        };
        if let Err(error) = write(&mut file) {
            let _ = fs::remove_file(&path);
            return Err(StoreError::io(key, error));
        }
        Ok((path, etag))
    }

    fn read_header(&self, key: &str, file: &mut File) -> Result<(ObjectHeader, u64), StoreError> {
        let corrupt = |message: &str| StoreError::new(StoreErrorKind::Corrupt, key, message.to_owned());
        let mut prefix = [0u8; 12];
        file.read_exact(&mut prefix).map_err(|_| corrupt("object file truncated"))?;
        if &prefix[..8] != OBJECT_MAGIC {
            return Err(corrupt("object file has a bad magic"));
        }
        let header_len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        if header_len > MAX_HEADER_LEN {
            return Err(corrupt("object header too large"));
        }
        let mut header_json = vec![0u8; header_len as usize];
        file.read_exact(&mut header_json).map_err(|_| corrupt("object header truncated"))?;
        let header: ObjectHeader =
            serde_json::from_slice(&header_json).map_err(|_| corrupt("object header is not valid"))?;
        Ok((header, 12 + u64::from(header_len)))
    }

    /// Opens an object: file positioned at the body, header, body offset and body length.
    fn open_object(&self, key: &str) -> Result<(File, ObjectHeader, u64, u64), StoreError> {
        let mut file = File::open(self.object_path(key)).map_err(|e| StoreError::io(key, e))?;
        let (header, body_offset) = self.read_header(key, &mut file)?;
        let total = file.metadata().map_err(|e| StoreError::io(key, e))?.len();
        let body_len = total
            .checked_sub(body_offset)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, key, "object shorter than its header"))?;
        Ok((file, header, body_offset, body_len))
    }

    fn lock_state(&self, key: &str) -> Result<LockState, StoreError> {
        match fs::read(self.lock_path(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, key, "lock state is not valid").with_source(e)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(LockState::default()),
            Err(error) => Err(StoreError::io(key, error)),
        }
    }

    fn write_lock_state(&self, key: &str, state: &LockState) -> Result<(), StoreError> {
        let path = self.lock_path(key);
        if *state == LockState::default() {
            return match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(key, error)),
                _ => Ok(()),
            };
        }
        let bytes = serde_json::to_vec(state)
            .map_err(|e| StoreError::new(StoreErrorKind::Other, key, "lock encoding failed").with_source(e))?;
        let (temp, mut file) = self.temp_file(key)?;
        file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(|e| StoreError::io(key, e))?;
        self.ensure_parent(key, &path)?;
        fs::rename(&temp, &path).map_err(|e| StoreError::io(key, e))?;
        sync_parent(&path);
        Ok(())
    }

    fn ensure_parent(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::io(key, e))?;
        }
        Ok(())
    }

    /// Refuses the change if Object Lock protects the current object.
    fn check_unlocked(&self, key: &str, state: &LockState) -> Result<(), StoreError> {
        if state.legal_hold {
            return Err(StoreError::new(StoreErrorKind::Locked, key, "object is under legal hold"));
        }
        if let Some(retention) = state.retention
            && retention.retain_until > self.clock.now()
        {
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                key,
                format!("object is under {:?} retention until {}", retention.mode, retention.retain_until),
            ));
        }
        Ok(())
    }

    fn meta(&self, key: &str, file: &File, header: ObjectHeader, body_len: u64, state: LockState) -> ObjectMeta {
        let last_modified = file
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|since| Timestamp::from_micros(i64::try_from(since.as_micros()).ok()?).ok());
        ObjectMeta {
            last_modified,
            key: key.to_owned(),
            len: body_len,
            etag: header.etag,
            version_id: None,
            retention: state.retention,
            legal_hold: state.legal_hold,
            metadata: header.metadata,
        }
    }

    fn put(&self, key: &str, body: &[u8], options: &PutOptions) -> Result<PutOutcome, StoreError> {
        let _mutex = self.mutex(key)?;
        let path = self.object_path(key);
        let exists = path.exists();
        match (&options.mode, exists) {
            (PutMode::Create, true) => {
                return Err(StoreError::new(StoreErrorKind::AlreadyExists, key, "object already exists"));
            }
            (PutMode::Update { .. }, false) => {
                return Err(StoreError::new(StoreErrorKind::Precondition, key, "object to update does not exist"));
            }
            (PutMode::Update { etag }, true) => {
                let (_, header, _, _) = self.open_object(key)?;
                if &header.etag != etag {
                    return Err(StoreError::new(StoreErrorKind::Precondition, key, "etag does not match"));
                }
                self.check_unlocked(key, &self.lock_state(key)?)?;
            }
            (PutMode::Overwrite, true) => self.check_unlocked(key, &self.lock_state(key)?)?,
            (PutMode::Create | PutMode::Overwrite, false) => {}
        }
        let (temp, etag) = self.write_object_temp(key, body, &options.metadata)?;
        let state =
            LockState { retention: options.retention, legal_hold: options.legal_hold, tags: Default::default() };
        // Lock state first: a crash after this line leaves a lock on a missing object
        // (harmless, replaced by the next create), never an object without its lock.
        self.write_lock_state(key, &state)?;
        self.ensure_parent(key, &path)?;
        let placed = if exists { fs::rename(&temp, &path) } else { fs::hard_link(&temp, &path) };
        let _ = fs::remove_file(&temp);
        match placed {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::new(StoreErrorKind::AlreadyExists, key, "object already exists"));
            }
            Err(error) => return Err(StoreError::io(key, error)),
        }
        sync_parent(&path);
        Ok(PutOutcome { etag, version_id: None })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let _mutex = self.mutex(key)?;
        let path = self.object_path(key);
        if !path.exists() {
            return Ok(()); // S3 semantics: deleting a missing key succeeds.
        }
        self.check_unlocked(key, &self.lock_state(key)?)?;
        fs::remove_file(&path).map_err(|e| StoreError::io(key, e))?;
        sync_parent(&path);
        self.write_lock_state(key, &LockState::default())
    }

    fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        let _mutex = self.mutex(key)?;
        if !self.object_path(key).exists() {
            return Err(StoreError::new(StoreErrorKind::NotFound, key, "no such object"));
        }
        let mut state = self.lock_state(key)?;
        if let Some(current) = state.retention
            && current.retain_until > self.clock.now()
        {
            if current.mode == LockMode::Compliance && retention.mode == LockMode::Governance {
                return Err(StoreError::new(StoreErrorKind::Locked, key, "cannot weaken COMPLIANCE retention"));
            }
            if retention.retain_until < current.retain_until {
                return Err(StoreError::new(
                    StoreErrorKind::Locked,
                    key,
                    format!("cannot shorten retention from {} to {}", current.retain_until, retention.retain_until),
                ));
            }
        }
        state.retention = Some(retention);
        self.write_lock_state(key, &state)
    }

    fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        let _mutex = self.mutex(key)?;
        let path = self.object_path(key);
        if !path.exists() {
            return Err(StoreError::new(StoreErrorKind::NotFound, key, "no such object"));
        }
        let mut state = self.lock_state(key)?;
        crate::check_bypassable(key, &bypass, state.legal_hold, state.retention, self.clock.now())?;
        match bypass {
            GovernanceBypass::Delete => {
                fs::remove_file(&path).map_err(|e| StoreError::io(key, e))?;
                sync_parent(&path);
                self.write_lock_state(key, &LockState::default())
            }
            GovernanceBypass::Shorten(retention) => {
                state.retention = Some(retention);
                self.write_lock_state(key, &state)
            }
        }
    }

    fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        let _mutex = self.mutex(key)?;
        if !self.object_path(key).exists() {
            return Err(StoreError::new(StoreErrorKind::NotFound, key, "no such object"));
        }
        let mut state = self.lock_state(key)?;
        state.legal_hold = on;
        self.write_lock_state(key, &state)
    }

    fn set_tags(&self, key: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), StoreError> {
        let _mutex = self.mutex(key)?;
        if !self.object_path(key).exists() {
            return Err(StoreError::new(StoreErrorKind::NotFound, key, "no such object"));
        }
        validate_tags(key, tags)?;
        let mut state = self.lock_state(key)?;
        state.tags = tags.clone();
        self.write_lock_state(key, &state)
    }

    /// Tags on the object, read after its bytes (so at least as new as they are).
    fn tag_count(&self, key: &str) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.lock_state(key)?.tags.len()).unwrap_or(u32::MAX))
    }

    fn tags(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        if !self.object_path(key).exists() {
            return Err(StoreError::new(StoreErrorKind::NotFound, key, "no such object"));
        }
        Ok(self.lock_state(key)?.tags)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let objects = self.root.join("objects");
        // Walk only the deepest directory the prefix fully names.
        let start_dir = match prefix.rfind('/') {
            Some(slash) => objects.join(&prefix[..slash]),
            None => objects.clone(),
        };
        let mut keys = Vec::new();
        let mut stack = vec![start_dir];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(StoreError::io(prefix, error)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io(prefix, e))?;
                let path = entry.path();
                let Ok(relative) = path.strip_prefix(&objects) else { continue };
                let Some(key) = relative.to_str().map(|k| k.replace(std::path::MAIN_SEPARATOR, "/")) else { continue };
                let file_type = entry.file_type().map_err(|e| StoreError::io(prefix, e))?;
                if file_type.is_dir() {
                    stack.push(path);
                } else if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        let mut metas = Vec::with_capacity(keys.len());
        for key in keys {
            match self.head(&key) {
                Ok(meta) => metas.push(meta),
                Err(error) if error.is(StoreErrorKind::NotFound) => {} // deleted meanwhile
                Err(error) => return Err(error),
            }
        }
        Ok(metas)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let (file, header, _, body_len) = self.open_object(key)?;
        let state = self.lock_state(key)?;
        Ok(self.meta(key, &file, header, body_len, state))
    }

    fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        let (mut file, header, _, body_len) = self.open_object(key)?;
        let mut body = Vec::with_capacity(body_len as usize);
        file.read_to_end(&mut body).map_err(|e| StoreError::io(key, e))?;
        if body.len() as u64 != body_len {
            return Err(StoreError::new(StoreErrorKind::Transient, key, "object changed while reading"));
        }
        let state = self.lock_state(key)?;
        Ok(GetOutcome { body: Bytes::from(body), meta: self.meta(key, &file, header, body_len, state) })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (mut file, _, body_offset, body_len) = self.open_object(key)?;
        if range.start > range.end || range.end > body_len {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                key,
                format!("range {}..{} outside object of {body_len} bytes", range.start, range.end),
            ));
        }
        read_at(key, &mut file, body_offset + range.start, range.end - range.start)
    }

    fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        let (mut file, _, body_offset, body_len) = self.open_object(key)?;
        let take = len.min(body_len);
        let bytes = read_at(key, &mut file, body_offset + body_len - take, take)?;
        Ok((bytes, body_len))
    }
}

fn read_at(key: &str, file: &mut File, offset: u64, len: u64) -> Result<Bytes, StoreError> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| StoreError::io(key, e))?;
    let mut buffer = vec![0u8; len as usize];
    file.read_exact(&mut buffer).map_err(|e| StoreError::io(key, e))?;
    Ok(Bytes::from(buffer))
}

/// fsync the directory so a rename or link survives power loss. Best effort: some
/// filesystems refuse to open directories for sync.
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.put(&key_owned, &body, &options)).await
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.get(&key_owned)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.get_range(&key_owned, range)).await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.get_suffix(&key_owned, len)).await
    }

    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, crate::TagCount), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| {
            let bytes = inner.get_range(&key_owned, range)?;
            Ok((bytes, Some(inner.tag_count(&key_owned)?)))
        })
        .await
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, crate::TagCount), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| {
            let (bytes, total) = inner.get_suffix(&key_owned, len)?;
            Ok((bytes, total, Some(inner.tag_count(&key_owned)?)))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.head(&key_owned)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix_owned = prefix.to_owned();
        let inner = Inner { root: Arc::clone(&self.root), clock: Arc::clone(&self.clock) };
        tokio::task::spawn_blocking(move || inner.list(&prefix_owned))
            .await
            .map_err(|e| StoreError::new(StoreErrorKind::Other, prefix, "store task panicked").with_source(e))?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.delete(&key_owned)).await
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.set_retention(&key_owned, retention)).await
    }

    async fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.bypass_governance(&key_owned, bypass)).await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.set_legal_hold(&key_owned, on)).await
    }

    async fn set_tags(&self, key: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), StoreError> {
        let (key_owned, tags) = (key.to_owned(), tags.clone());
        self.blocking(key, move |inner| inner.set_tags(&key_owned, &tags)).await
    }

    async fn tags(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let key_owned = key.to_owned();
        self.blocking(key, move |inner| inner.tags(&key_owned)).await
    }
}

/// S3's limits on object tags: at most 10, keys 1..=128 and values 0..=256 characters.
fn validate_tags(key: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), StoreError> {
    let ok = tags.len() <= 10
        && tags.iter().all(|(k, v)| !k.is_empty() && k.chars().count() <= 128 && v.chars().count() <= 256);
    if ok { Ok(()) } else { Err(StoreError::new(StoreErrorKind::InvalidInput, key, "invalid object tags")) }
}
