//! Segments on an object store: discovery, index loading and the two-call read path.
//!
//! Segments under an address are named by generation (`g000000.vera`, `g000001.vera`,
//! …), so a reader probes generation 0 first, then 1, and stops at the first missing key
//! — no LIST. An index costs one suffix GET (two if it outgrew the suffix) and is cached;
//! a file then costs one range GET.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_protocol::shard::{ReadError, ReadLimits, SegmentIndex, SuffixOpen};

use crate::{ObjectStore, StoreError, StoreErrorKind};

/// Object metadata key holding a segment's BLAKE3 (hex), set by the worker that wrote it:
/// a HEAD tells a segment's hash without reading it.
pub const META_OBJECT_HASH: &str = "vera-object-blake3";

/// Default suffix read: footer plus, usually, the whole index region.
pub const DEFAULT_SUFFIX_BYTES: u64 = 64 * 1024;

/// Default memory budget of the index cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// What the index cache holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub segments: u64,
    pub files: u64,
    /// Sum of the cached indexes' `resident_bytes`.
    pub bytes: u64,
    /// Index lookups answered from the cache, and those that read the store, since start.
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("object store request failed")]
    Store(#[from] StoreError),
    #[error("segment {key} is unreadable")]
    Segment { key: String, source: ReadError },
    #[error("file {uid:?} not found under {prefix}")]
    NotFound { uid: String, prefix: String },
    #[error("cannot route file {uid:?}")]
    Routing { uid: String, source: vera_protocol::RoutingError },
}

impl ShardError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShardError::NotFound { .. })
    }
}

/// A file read back through the two-call path.
#[derive(Debug, Clone)]
pub struct FileRead {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub key: String,
    pub content_hash: [u8; 32],
}

/// Reads segments from a store, caching parsed indexes by key. Segments are immutable, so
/// a cached index never goes stale; only its absence can (a new generation appears).
#[derive(Clone)]
pub struct ShardStore {
    store: Arc<dyn ObjectStore>,
    suffix_bytes: u64,
    /// Learned suffix length: grows to fit the largest index region seen, so that once one
    /// segment needed a second GET, the next cold reads fetch footer and index in one.
    suffix_hint: Arc<std::sync::atomic::AtomicU64>,
    limits: ReadLimits,
    indexes: moka::sync::Cache<String, Arc<SegmentIndex>>,
    lookups: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

/// The learned suffix never grows past this (a corrupt footer cannot make every later
/// read fetch megabytes).
pub const MAX_SUFFIX_HINT_BYTES: u64 = 4 * 1024 * 1024;

fn index_cache(budget_bytes: u64) -> moka::sync::Cache<String, Arc<SegmentIndex>> {
    moka::sync::Cache::builder()
        .max_capacity(budget_bytes)
        .weigher(|key: &String, index: &Arc<SegmentIndex>| {
            u32::try_from(index.resident_bytes() + key.len()).unwrap_or(u32::MAX)
        })
        .build()
}

impl ShardStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ShardStore {
            store,
            suffix_bytes: DEFAULT_SUFFIX_BYTES,
            suffix_hint: Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_SUFFIX_BYTES)),
            limits: ReadLimits::default(),
            indexes: index_cache(DEFAULT_CACHE_BYTES),
            lookups: Arc::default(),
        }
    }

    /// Bounds the index cache to `budget_bytes` of resident indexes; the least useful are
    /// evicted and read again from the store when needed.
    pub fn with_cache_budget(mut self, budget_bytes: u64) -> Self {
        self.indexes = index_cache(budget_bytes);
        self
    }

    /// Segments, files and bytes the index cache holds.
    pub fn cache_stats(&self) -> CacheStats {
        self.indexes.run_pending_tasks();
        let (mut segments, mut files, mut bytes) = (0, 0, 0);
        for (_, index) in self.indexes.iter() {
            segments += 1;
            files += index.len() as u64;
            bytes += index.resident_bytes() as u64;
        }
        let [hits, misses] = self.lookups.as_ref();
        let (hits, misses) = (hits.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
        CacheStats { segments, files, bytes, hits, misses }
    }

    pub fn with_suffix_bytes(mut self, suffix_bytes: u64) -> Self {
        self.suffix_bytes = suffix_bytes.max(256);
        self.suffix_hint = Arc::new(std::sync::atomic::AtomicU64::new(self.suffix_bytes));
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn limits(&self) -> &ReadLimits {
        &self.limits
    }

    /// The suffix length the next cold index read will ask for.
    pub fn suffix_hint(&self) -> u64 {
        self.suffix_hint.load(Ordering::Relaxed).max(self.suffix_bytes)
    }

    /// Existing segments under an address, by generation (one LIST).
    pub async fn segments(&self, addr: &ShardAddr) -> Result<Vec<(u32, String)>, ShardError> {
        let mut segments: Vec<(u32, String)> = self
            .store
            .list(&addr.key_prefix())
            .await?
            .into_iter()
            .filter_map(|meta| match ShardAddr::from_segment_key(&meta.key) {
                Ok((found, generation)) if found == *addr => Some((generation, meta.key)),
                _ => None,
            })
            .collect();
        segments.sort();
        Ok(segments)
    }

    /// The parsed, verified index of a segment: from the cache, or with one suffix GET
    /// (plus one range GET if the index outgrew the suffix).
    pub async fn index(&self, key: &str) -> Result<Arc<SegmentIndex>, ShardError> {
        if let Some(index) = self.cached(key) {
            self.lookups[0].fetch_add(1, Ordering::Relaxed);
            return Ok(index);
        }
        self.lookups[1].fetch_add(1, Ordering::Relaxed);
        let suffix_len = self.suffix_hint.load(Ordering::Relaxed).max(self.suffix_bytes);
        let (suffix, object_len) = self.store.get_suffix(key, suffix_len).await?;
        let segment_error = |source| ShardError::Segment { key: key.to_owned(), source };
        let index = match SegmentIndex::open_suffix(&suffix, object_len, &self.limits).map_err(segment_error)? {
            SuffixOpen::Ready(index) => *index,
            SuffixOpen::NeedMore { start } => {
                // A quarter more than this index region, so similar segments fit next time.
                let needed = object_len.saturating_sub(start);
                let learned = (needed + needed / 4).min(MAX_SUFFIX_HINT_BYTES);
                self.suffix_hint.fetch_max(learned, Ordering::Relaxed);
                let tail = self.store.get_range(key, start..object_len).await?;
                match SegmentIndex::open_suffix(&tail, object_len, &self.limits).map_err(segment_error)? {
                    SuffixOpen::Ready(index) => *index,
                    SuffixOpen::NeedMore { .. } => {
                        return Err(ShardError::Segment {
                            key: key.to_owned(),
                            source: ReadError::Corrupt { reason: "index region moved between reads" },
                        });
                    }
                }
            }
        };
        let index = Arc::new(index);
        self.indexes.insert(key.to_owned(), Arc::clone(&index));
        Ok(index)
    }

    fn cached(&self, key: &str) -> Option<Arc<SegmentIndex>> {
        self.indexes.get(key)
    }

    /// Forgets a cached index (after a repack or in tests).
    pub fn forget(&self, key: &str) {
        self.indexes.invalidate(key);
    }

    /// Empties the index cache, as a restart would (cold-read measurements).
    pub fn forget_all(&self) {
        self.indexes.invalidate_all();
        self.indexes.run_pending_tasks();
    }

    /// Locates, fetches, decodes and verifies one file.
    pub async fn read_file(
        &self,
        routing: &RoutingTable,
        uid: &str,
        created_at: Timestamp,
    ) -> Result<FileRead, ShardError> {
        let addr =
            routing.locate(uid, created_at).map_err(|source| ShardError::Routing { uid: uid.to_owned(), source })?;
        let mut generation = 0u32;
        loop {
            let key = addr.segment_key(generation);
            let index = match self.index(&key).await {
                Ok(index) => index,
                Err(ShardError::Store(error)) if error.kind == StoreErrorKind::NotFound => {
                    return Err(ShardError::NotFound { uid: uid.to_owned(), prefix: addr.key_prefix() });
                }
                Err(other) => return Err(other),
            };
            if let Some(file) = index.find(uid) {
                let range = file.entry.record_range();
                let record = self.store.get_range(&key, range).await?;
                let bytes = index
                    .decode(file, &record, &self.limits)
                    .map_err(|source| ShardError::Segment { key: key.clone(), source })?;
                return Ok(FileRead {
                    bytes,
                    content_type: file.content_type.to_owned(),
                    key,
                    content_hash: file.entry.content_hash,
                });
            }
            generation = generation
                .checked_add(1)
                .ok_or_else(|| ShardError::NotFound { uid: uid.to_owned(), prefix: addr.key_prefix() })?;
        }
    }
}
