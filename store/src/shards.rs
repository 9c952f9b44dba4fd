//! Segments on an object store: discovery, index loading and the two-call read path.
//!
//! Segments under an address are named by generation (`g000000.vera`, `g000001.vera`,
//! …), so a reader probes generation 0 first, then 1, and stops at the first missing key
//! from generation 1 on — no LIST. Generation 0 may be missing while later ones exist: a
//! worker never gives a slot's late arrivals generation 0, which stays free for the task
//! that holds their time slice's own rows, so a probe goes on past it. An index costs
//! one suffix GET (two if it outgrew the suffix) and is cached; a file then costs one
//! range GET, unless the suffix a cold read just fetched already holds its record
//! ([`Tail`]). Later generations get a longer suffix
//! ([`DEFAULT_LATER_SUFFIX_BYTES`]): they are usually small, so it is usually all of
//! them. The segment's sidecar (from a [`Sidecars`] source: the store, or a reader's
//! short-lived cache) says whether the file is tombstoned and whether a repack superseded
//! the segment ([`ShardStore::locate`]); a segment that every GET reports untagged has no
//! sidecar ([`SIDECAR_TAG`]), so its reads skip it.
//!
//! Two caches hold indexes. [`ShardStore::index`] keeps whole indexes, for callers that
//! list or compare files (workers, repack, exports). The read path
//! ([`ShardStore::read_file_with`]) keeps a [`ReadIndex`]: for a format 2 segment only the
//! [`LookupIndex`], 8 bytes per file, whose records name their own uid.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingTable, ShardAddr, sidecar_key_of};
use vera_protocol::shard::{LookupIndex, ReadError, ReadLimits, SegmentIndex, SuffixOpen};
use vera_protocol::sidecar::Sidecar;

use crate::{ObjectStore, StoreError, StoreErrorKind};

/// Object metadata key holding a segment's BLAKE3 (hex), set by the worker that wrote it:
/// a HEAD tells a segment's hash without reading it.
pub const META_OBJECT_HASH: &str = "vera-object-blake3";

/// Default suffix read: footer plus, usually, the whole index region.
pub const DEFAULT_SUFFIX_BYTES: u64 = 256 * 1024;

/// Default suffix read of a later generation (1, 2, …). Later generations hold late
/// arrivals and are usually small, so a larger suffix is usually the whole segment: its
/// index and every record in one GET, where a cold read has already spent one GET on
/// generation 0. On S3 a suffix longer than the object returns the whole object.
pub const DEFAULT_LATER_SUFFIX_BYTES: u64 = 1024 * 1024;

/// The object tag a writer sets on a segment before it creates the segment's first
/// `.vera.meta` sidecar (FORMAT.md §5, "The sidecar tag"). A read that reports the segment untagged
/// therefore proves it has no sidecar, so no tombstone and no repack: the read path
/// skips the sidecar GET. Other tags (the archive tag) only make the read check the sidecar.
pub const SIDECAR_TAG: (&str, &str) = ("vera-sidecar", "1");

/// Segments whose last reported tag count the store remembers.
const TAG_COUNT_CAPACITY: u64 = 100_000;

/// Default memory budget of the index cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// What the index caches (whole indexes and the read path's) hold right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub segments: u64,
    pub files: u64,
    /// Everything the cached indexes keep resident, cache keys included.
    pub bytes: u64,
    /// The part of `bytes` that is zstd dictionaries (per segment, used to decode, not to
    /// look up).
    pub dictionary_bytes: u64,
    /// Index lookups answered from the cache, and those that read the store, since start.
    pub hits: u64,
    pub misses: u64,
}

/// How many repacks a read follows from a packed segment to the one holding the file now.
pub const MAX_REPACK_HOPS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("file {uid:?} was deleted (tombstoned in {key})")]
    Gone { uid: String, key: String },
    #[error("the sidecar of {key} is unreadable")]
    Sidecar { key: String, source: vera_protocol::sidecar::SidecarError },
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

/// Where the sidecars on a read path come from: the store itself ([`StoreSidecars`]), or
/// a reader's cache whose entries live a few seconds.
#[async_trait::async_trait]
pub trait Sidecars: Send + Sync {
    async fn sidecar(&self, segment_key: &str) -> Result<Option<Arc<Sidecar>>, ShardError>;

    /// Drops anything remembered about this segment's sidecar: the read path saw the
    /// segment gain tags, so a sidecar it had none of may exist now.
    async fn forget(&self, segment_key: &str) {
        let _ = segment_key;
    }
}

/// Sidecars read from the store on every call (one GET; 404 means none).
pub struct StoreSidecars<'a>(pub &'a dyn ObjectStore);

#[async_trait::async_trait]
impl Sidecars for StoreSidecars<'_> {
    async fn sidecar(&self, segment_key: &str) -> Result<Option<Arc<Sidecar>>, ShardError> {
        Ok(sidecar_of(self.0, segment_key).await?.map(Arc::new))
    }
}

/// Sidecars read from the store once per segment and kept for the value's lifetime: for
/// batch jobs (read-back checks) that read many files of the same segments at one moment.
pub struct MemoSidecars<'a> {
    store: &'a dyn ObjectStore,
    seen: moka::sync::Cache<String, Option<Arc<Sidecar>>>,
}

impl<'a> MemoSidecars<'a> {
    pub fn new(store: &'a dyn ObjectStore) -> Self {
        MemoSidecars { store, seen: moka::sync::Cache::new(100_000) }
    }
}

#[async_trait::async_trait]
impl Sidecars for MemoSidecars<'_> {
    async fn sidecar(&self, segment_key: &str) -> Result<Option<Arc<Sidecar>>, ShardError> {
        if let Some(found) = self.seen.get(segment_key) {
            return Ok(found);
        }
        let found = sidecar_of(self.store, segment_key).await?.map(Arc::new);
        self.seen.insert(segment_key.to_owned(), found.clone());
        Ok(found)
    }

    async fn forget(&self, segment_key: &str) {
        self.seen.invalidate(segment_key);
    }
}

/// Adds one tag to an object, keeping its others; does nothing if it is there already.
pub async fn add_tag(store: &dyn ObjectStore, key: &str, (name, value): (&str, &str)) -> Result<(), StoreError> {
    let mut tags = store.tags(key).await?;
    if tags.get(name).map(String::as_str) == Some(value) {
        return Ok(());
    }
    tags.insert(name.to_owned(), value.to_owned());
    store.set_tags(key, &tags).await
}

/// Marks a segment as having a sidecar ([`SIDECAR_TAG`]). Every writer calls it before it
/// creates a segment's first sidecar, so a reader that sees the segment untagged may
/// skip the sidecar. A store without object tagging fails here, loudly, rather than
/// leaving readers blind to the tombstones about to be written.
pub async fn mark_has_sidecar(store: &dyn ObjectStore, segment_key: &str) -> Result<(), StoreError> {
    add_tag(store, segment_key, SIDECAR_TAG).await
}

/// A segment's sidecar, if it has one.
pub async fn sidecar_of(store: &dyn ObjectStore, segment_key: &str) -> Result<Option<Sidecar>, ShardError> {
    match store.get(&sidecar_key_of(segment_key)).await {
        Ok(got) => Sidecar::decode(&got.body)
            .map(Some)
            .map_err(|source| ShardError::Sidecar { key: segment_key.to_owned(), source }),
        Err(error) if error.kind == StoreErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The segment that holds a file now: the packed segment it was found in, or the end of
/// the chain of repacks that replaced it.
#[derive(Debug, Clone)]
pub struct Located {
    pub addr: ShardAddr,
    pub key: String,
    pub index: Arc<SegmentIndex>,
    /// That segment's sidecar, if it has one.
    pub sidecar: Option<Arc<Sidecar>>,
}

impl Located {
    pub fn is_tombstoned(&self, uid: &str) -> bool {
        self.sidecar.as_ref().is_some_and(|sidecar| sidecar.is_tombstoned(uid))
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

/// What the read path caches per segment: for a format 2 segment the compact
/// [`LookupIndex`] (8 bytes per file), for a format 1 segment, whose records do not name
/// their uid, the whole index.
#[derive(Debug, Clone)]
pub enum ReadIndex {
    Lookup(Arc<LookupIndex>),
    Full(Arc<SegmentIndex>),
}

impl ReadIndex {
    fn of(index: Arc<SegmentIndex>) -> ReadIndex {
        match LookupIndex::from_index(&index) {
            Some(lookup) => ReadIndex::Lookup(Arc::new(lookup)),
            None => ReadIndex::Full(index),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ReadIndex::Lookup(lookup) => lookup.len(),
            ReadIndex::Full(index) => index.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resident bytes, and how many of them are the zstd dictionary.
    pub fn resident_bytes(&self) -> (usize, usize) {
        match self {
            ReadIndex::Lookup(lookup) => (lookup.resident_bytes(), lookup.dictionary_bytes()),
            ReadIndex::Full(index) => full_resident_bytes(index),
        }
    }
}

fn full_resident_bytes(index: &SegmentIndex) -> (usize, usize) {
    (index.resident_bytes(), index.dictionary().map_or(0, <[u8]>::len))
}

/// The end of a segment that a cold index read fetched anyway (its suffix GET), kept for
/// the rest of that one read: a record lying inside it is served from these bytes instead
/// of a second GET. A small segment (a day's late arrivals, typically) is wholly inside
/// its suffix, so a cold read of it costs that one GET. The bytes are checked like any
/// fetched record (header CRC-32C, content hash), and they are as fresh as a GET made at
/// that moment, tags included.
#[derive(Debug, Clone)]
struct Tail {
    key: String,
    start: u64,
    bytes: bytes::Bytes,
    tags: crate::TagCount,
}

impl Tail {
    /// The bytes of `range` of segment `key`, with the tag count that GET reported, if
    /// this tail holds all of them.
    fn record(&self, key: &str, range: &Range<u64>) -> Option<(bytes::Bytes, crate::TagCount)> {
        if key != self.key || range.start < self.start || range.end < range.start {
            return None;
        }
        let start = usize::try_from(range.start - self.start).ok()?;
        let end = usize::try_from(range.end - self.start).ok()?;
        (end <= self.bytes.len()).then(|| (self.bytes.slice(start..end), self.tags))
    }
}

/// A cached form of a segment's index that the probe, the repack walk and the read go
/// through: the whole index, or the read path's [`ReadIndex`].
trait SegmentLookup: Clone + Send + Sync + Sized {
    /// The cached index, or the index read from the store with the [`Tail`] that read
    /// fetched.
    fn fetch<'a>(
        shards: &'a ShardStore,
        key: &'a str,
    ) -> impl Future<Output = Result<(Self, Option<Tail>), ShardError>> + Send + 'a;

    /// Byte ranges of the records that may be `uid`'s (almost always none or one). Empty
    /// when the segment does not hold `uid`; for a compact lookup, not empty also when
    /// another uid shares its fingerprint bits (odds near n / 2^32).
    fn records(&self, uid: &str) -> Vec<Range<u64>>;

    /// Decodes and checks a fetched record: `None` when it is another uid's.
    fn decode(&self, key: &str, uid: &str, record: &[u8], limits: &ReadLimits) -> Result<Option<FileRead>, ShardError>;
}

impl SegmentLookup for Arc<SegmentIndex> {
    fn fetch<'a>(
        shards: &'a ShardStore,
        key: &'a str,
    ) -> impl Future<Output = Result<(Self, Option<Tail>), ShardError>> + Send + 'a {
        shards.index_and_tail(key)
    }

    fn records(&self, uid: &str) -> Vec<Range<u64>> {
        self.find(uid).map(|file| file.record_range()).into_iter().collect()
    }

    fn decode(&self, key: &str, uid: &str, record: &[u8], limits: &ReadLimits) -> Result<Option<FileRead>, ShardError> {
        let Some(file) = self.find(uid) else { return Ok(None) };
        let segment_error = |source| ShardError::Segment { key: key.to_owned(), source };
        let bytes = self.as_ref().decode(file, record, limits).map_err(segment_error)?;
        Ok(Some(FileRead {
            bytes,
            content_type: file.content_type.to_owned(),
            key: key.to_owned(),
            content_hash: file.entry.content_hash,
        }))
    }
}

impl SegmentLookup for ReadIndex {
    fn fetch<'a>(
        shards: &'a ShardStore,
        key: &'a str,
    ) -> impl Future<Output = Result<(Self, Option<Tail>), ShardError>> + Send + 'a {
        shards.read_index_and_tail(key)
    }

    fn records(&self, uid: &str) -> Vec<Range<u64>> {
        match self {
            ReadIndex::Lookup(lookup) => lookup.candidates(uid).collect(),
            ReadIndex::Full(index) => index.records(uid),
        }
    }

    fn decode(&self, key: &str, uid: &str, record: &[u8], limits: &ReadLimits) -> Result<Option<FileRead>, ShardError> {
        match self {
            ReadIndex::Lookup(lookup) => {
                let found = lookup
                    .decode(uid, record, limits)
                    .map_err(|source| ShardError::Segment { key: key.to_owned(), source })?;
                Ok(found.map(|found| FileRead {
                    bytes: found.bytes,
                    content_type: found.content_type,
                    key: key.to_owned(),
                    content_hash: found.content_hash,
                }))
            }
            ReadIndex::Full(index) => index.decode(key, uid, record, limits),
        }
    }
}

/// Reads segments from a store, caching parsed indexes by key. Segments are immutable, so
/// a cached index never goes stale; only its absence can (a new generation appears).
#[derive(Clone)]
pub struct ShardStore {
    store: Arc<dyn ObjectStore>,
    suffix_bytes: u64,
    /// Suffix of a cold read of generation 1 or later ([`DEFAULT_LATER_SUFFIX_BYTES`]).
    later_suffix_bytes: u64,
    /// Learned suffix length: grows to fit the largest index region seen, so that once one
    /// segment needed a second GET, the next cold reads fetch footer and index in one.
    suffix_hint: Arc<std::sync::atomic::AtomicU64>,
    limits: ReadLimits,
    /// Whole indexes, for [`ShardStore::index`] and [`ShardStore::locate`].
    indexes: moka::sync::Cache<String, Arc<SegmentIndex>>,
    /// The read path's compact indexes.
    read_indexes: moka::sync::Cache<String, ReadIndex>,
    lookups: Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Tag counts the store reported for segments on their latest reads. Zero means no
    /// sidecar (see [`SIDECAR_TAG`]); absent means unknown.
    tag_counts: moka::sync::Cache<String, u32>,
    /// By address (key prefix), what a probe found missing, trusted only while
    /// [`ShardStore::cache_absence`] is on (a reader that follows the `ShardSealed` events
    /// that drop it), so that a read of a uid that is not there stops without a GET.
    absent: moka::sync::Cache<String, Missing>,
    /// Addresses whose generation 0 a probe found missing, remembered whether or not
    /// events are followed, and with no TTL: a probe there looks in the later generations
    /// first and goes back to generation 0 for a uid they do not list (see
    /// [`ShardStore::probe`]), which drops the entry once generation 0 exists. Staleness
    /// costs GETs, never a wrong answer.
    zero_missing: moka::sync::Cache<String, ()>,
    absence: Arc<Absence>,
}

/// Whether missing segment keys are remembered, and how many times they were forgotten (a
/// probe remembers a 404 only if nothing was forgotten while it was being answered).
#[derive(Default)]
struct Absence {
    on: std::sync::atomic::AtomicBool,
    forgotten: std::sync::atomic::AtomicU64,
}

/// What probes found missing under one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Missing {
    /// Generation 0 is missing (its address has only late arrivals so far).
    zero: bool,
    /// The first missing generation from 1 on, where a probe stops, once one found it.
    end: Option<u32>,
}

/// What [`ShardStore::layout`] finds under an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressLayout {
    /// Final generations, by generation.
    pub generations: Vec<(u32, String)>,
    /// Staging segments not merged (or not deleted) yet, newest first.
    pub staging: Vec<StagingSegment>,
    /// Erasure ids ([`vera_protocol::routing::erasure_id`]) of the uids erased here.
    pub erased: std::collections::HashSet<String>,
}

/// A staging segment as a LIST reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingSegment {
    pub key: String,
    pub last_modified: Option<Timestamp>,
    pub len: u64,
}

/// One generation's answer to a probe.
enum Probe<T> {
    Found((String, T, Option<Tail>)),
    NotListed,
    Missing,
}

/// Addresses whose missing generation is remembered, at most.
const ABSENT_CAPACITY: u64 = 100_000;

/// How long a missing segment key is trusted unless [`ShardStore::with_absence_ttl`]
/// says otherwise (the reader sets its sidecar TTL).
const DEFAULT_ABSENCE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

fn absent_cache(ttl: std::time::Duration) -> moka::sync::Cache<String, Missing> {
    moka::sync::Cache::builder().max_capacity(ABSENT_CAPACITY).time_to_live(ttl).build()
}

/// The learned suffix never grows past this (a corrupt footer cannot make every later
/// read fetch megabytes).
pub const MAX_SUFFIX_HINT_BYTES: u64 = 4 * 1024 * 1024;

fn index_cache<V: Clone + Send + Sync + 'static>(
    budget_bytes: u64,
    weight: fn(&V) -> usize,
) -> moka::sync::Cache<String, V> {
    moka::sync::Cache::builder()
        .max_capacity(budget_bytes)
        .weigher(move |key: &String, value: &V| u32::try_from(weight(value) + key.len()).unwrap_or(u32::MAX))
        .build()
}

fn full_weight(index: &Arc<SegmentIndex>) -> usize {
    index.resident_bytes()
}

fn read_weight(index: &ReadIndex) -> usize {
    index.resident_bytes().0
}

impl ShardStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ShardStore {
            store,
            suffix_bytes: DEFAULT_SUFFIX_BYTES,
            later_suffix_bytes: DEFAULT_LATER_SUFFIX_BYTES,
            suffix_hint: Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_SUFFIX_BYTES)),
            limits: ReadLimits::default(),
            indexes: index_cache(DEFAULT_CACHE_BYTES, full_weight),
            read_indexes: index_cache(DEFAULT_CACHE_BYTES, read_weight),
            lookups: Arc::default(),
            tag_counts: moka::sync::Cache::new(TAG_COUNT_CAPACITY),
            absent: absent_cache(DEFAULT_ABSENCE_TTL),
            zero_missing: moka::sync::Cache::new(ABSENT_CAPACITY),
            absence: Arc::default(),
        }
    }

    /// How long a missing segment key is trusted, at most, while absence caching is on.
    pub fn with_absence_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.absent = absent_cache(ttl);
        self
    }

    /// Remembers (on) or stops remembering (off, forgetting all) that segment keys are
    /// missing. Only a caller that hears of every new segment (`ShardSealed` events) and
    /// calls [`ShardStore::forget_absent_under`] for it may turn this on: otherwise a new
    /// generation would stay unseen until the TTL.
    pub fn cache_absence(&self, on: bool) {
        self.absence.on.store(on, Ordering::SeqCst);
        if !on {
            self.forget_all_absent();
        }
    }

    /// Forgets that a generation under `addr` was missing: a new one was written.
    pub fn forget_absent_under(&self, addr: &ShardAddr) {
        self.absence.forgotten.fetch_add(1, Ordering::SeqCst);
        self.absent.invalidate(&addr.key_prefix());
        self.zero_missing.invalidate(&addr.key_prefix());
    }

    /// Forgets every missing segment key.
    pub fn forget_all_absent(&self) {
        self.absence.forgotten.fetch_add(1, Ordering::SeqCst);
        self.absent.invalidate_all();
        self.zero_missing.invalidate_all();
    }

    /// Bounds each index cache (whole indexes, and the read path's) to `budget_bytes` of
    /// resident indexes; the least useful are evicted and read again when needed.
    pub fn with_cache_budget(mut self, budget_bytes: u64) -> Self {
        self.indexes = index_cache(budget_bytes, full_weight);
        self.read_indexes = index_cache(budget_bytes, read_weight);
        self
    }

    /// Segments, files and bytes the index caches hold.
    pub fn cache_stats(&self) -> CacheStats {
        self.indexes.run_pending_tasks();
        self.read_indexes.run_pending_tasks();
        let (mut segments, mut files, mut bytes, mut dictionary_bytes) = (0, 0, 0, 0);
        let full = self.indexes.iter().map(|(key, index)| (key.len(), index.len(), full_resident_bytes(&index)));
        let read = self.read_indexes.iter().map(|(key, index)| (key.len(), index.len(), index.resident_bytes()));
        for (key_len, len, (resident, dictionary)) in full.chain(read) {
            segments += 1;
            files += len as u64;
            bytes += (key_len + resident) as u64;
            dictionary_bytes += dictionary as u64;
        }
        let [hits, misses] = self.lookups.as_ref();
        let (hits, misses) = (hits.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
        CacheStats { segments, files, bytes, dictionary_bytes, hits, misses }
    }

    pub fn with_suffix_bytes(mut self, suffix_bytes: u64) -> Self {
        self.suffix_bytes = suffix_bytes.max(256);
        self.suffix_hint = Arc::new(std::sync::atomic::AtomicU64::new(self.suffix_bytes));
        self
    }

    /// The suffix a cold read of a later generation (1, 2, …) asks for; never less than
    /// the suffix of generation 0.
    pub fn with_later_suffix_bytes(mut self, later_suffix_bytes: u64) -> Self {
        self.later_suffix_bytes = later_suffix_bytes.max(256);
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn limits(&self) -> &ReadLimits {
        &self.limits
    }

    /// The suffix length the next cold index read of a generation 0 (or repacked)
    /// segment will ask for.
    pub fn suffix_hint(&self) -> u64 {
        self.suffix_hint.load(Ordering::Relaxed).max(self.suffix_bytes)
    }

    /// The suffix length a cold index read of `key` asks for: the learned hint, and for a
    /// later generation at least [`ShardStore::with_later_suffix_bytes`].
    fn suffix_len(&self, key: &str) -> u64 {
        match ShardAddr::from_segment_key(key) {
            Ok((_, generation)) if generation > 0 => self.suffix_hint().max(self.later_suffix_bytes),
            // Staging segments are small: usually one suffix holds all of one.
            Err(_) if ShardAddr::from_staging_key(key).is_ok() => self.suffix_hint().max(self.later_suffix_bytes),
            _ => self.suffix_hint(),
        }
    }

    /// Existing final segments under an address, by generation (one LIST).
    pub async fn segments(&self, addr: &ShardAddr) -> Result<Vec<(u32, String)>, ShardError> {
        Ok(self.layout(addr).await?.generations)
    }

    /// An address's final generations, staging segments and erasure markers (one LIST).
    pub async fn layout(&self, addr: &ShardAddr) -> Result<AddressLayout, ShardError> {
        let mut layout = AddressLayout::default();
        for meta in self.store.list(&addr.key_prefix()).await? {
            if let Ok((found, generation)) = ShardAddr::from_segment_key(&meta.key) {
                if found == *addr {
                    layout.generations.push((generation, meta.key));
                }
            } else if let Ok((found, _)) = ShardAddr::from_staging_key(&meta.key)
                && found == *addr
            {
                layout.staging.push(StagingSegment { key: meta.key, last_modified: meta.last_modified, len: meta.len });
            } else if let Some(id) = addr.erasure_id_of(&meta.key) {
                layout.erased.insert(id.to_owned());
            }
        }
        layout.generations.sort();
        // Newest first: a read of a fresh file finds it in the first one it opens.
        layout.staging.sort_by(|a, b| b.last_modified.cmp(&a.last_modified).then_with(|| a.key.cmp(&b.key)));
        Ok(layout)
    }

    /// The parsed, verified index of a segment: from the cache, or with one suffix GET
    /// (plus one range GET if the index outgrew the suffix).
    pub async fn index(&self, key: &str) -> Result<Arc<SegmentIndex>, ShardError> {
        Ok(self.index_and_tail(key).await?.0)
    }

    /// [`ShardStore::index`], with the [`Tail`] when the index was read from the store.
    async fn index_and_tail(&self, key: &str) -> Result<(Arc<SegmentIndex>, Option<Tail>), ShardError> {
        if let Some(index) = self.indexes.get(key) {
            self.lookups[0].fetch_add(1, Ordering::Relaxed);
            return Ok((index, None));
        }
        let (index, tail) = self.load(key).await?;
        let index = Arc::new(index);
        self.indexes.insert(key.to_owned(), Arc::clone(&index));
        Ok((index, Some(tail)))
    }

    /// The read path's index of a segment: from its cache, made from a cached whole
    /// index, or read like [`ShardStore::index`] and kept only in its compact form.
    pub async fn read_index(&self, key: &str) -> Result<ReadIndex, ShardError> {
        Ok(self.read_index_and_tail(key).await?.0)
    }

    /// [`ShardStore::read_index`], with the [`Tail`] when the index was read from the store.
    async fn read_index_and_tail(&self, key: &str) -> Result<(ReadIndex, Option<Tail>), ShardError> {
        if let Some(index) = self.read_indexes.get(key) {
            self.lookups[0].fetch_add(1, Ordering::Relaxed);
            return Ok((index, None));
        }
        let (index, tail) = match self.indexes.get(key) {
            Some(index) => {
                self.lookups[0].fetch_add(1, Ordering::Relaxed);
                (ReadIndex::of(index), None)
            }
            None => {
                let (index, tail) = self.load(key).await?;
                (ReadIndex::of(Arc::new(index)), Some(tail))
            }
        };
        self.read_indexes.insert(key.to_owned(), index.clone());
        Ok((index, tail))
    }

    /// Reads and verifies a segment's index from the store (a cache miss), with the bytes
    /// that read fetched.
    async fn load(&self, key: &str) -> Result<(SegmentIndex, Tail), ShardError> {
        self.lookups[1].fetch_add(1, Ordering::Relaxed);
        let suffix_len = self.suffix_len(key);
        let (suffix, object_len, tags) = self.store.get_suffix_tagged(key, suffix_len).await?;
        self.note_tags(key, tags);
        let segment_error = |source| ShardError::Segment { key: key.to_owned(), source };
        let tail = |start: u64, bytes| Tail { key: key.to_owned(), start, bytes, tags };
        match SegmentIndex::open_suffix(&suffix, object_len, &self.limits).map_err(segment_error)? {
            SuffixOpen::Ready(index) => {
                let start = object_len.saturating_sub(suffix.len() as u64);
                Ok((*index, tail(start, suffix)))
            }
            SuffixOpen::NeedMore { start } => {
                // A quarter more than this index region, so similar segments fit next time.
                let needed = object_len.saturating_sub(start);
                let learned = (needed + needed / 4).min(MAX_SUFFIX_HINT_BYTES);
                self.suffix_hint.fetch_max(learned, Ordering::Relaxed);
                let region = self.store.get_range(key, start..object_len).await?;
                match SegmentIndex::open_suffix(&region, object_len, &self.limits).map_err(segment_error)? {
                    SuffixOpen::Ready(index) => Ok((*index, tail(start, region))),
                    SuffixOpen::NeedMore { .. } => Err(ShardError::Segment {
                        key: key.to_owned(),
                        source: ReadError::Corrupt { reason: "index region moved between reads" },
                    }),
                }
            }
        }
    }

    /// Forgets a cached index (after a repack or in tests).
    pub fn forget(&self, key: &str) {
        self.indexes.invalidate(key);
        self.read_indexes.invalidate(key);
    }

    /// Empties the index caches and the remembered tag counts, as a restart would
    /// (cold-read measurements).
    pub fn forget_all(&self) {
        self.indexes.invalidate_all();
        self.indexes.run_pending_tasks();
        self.read_indexes.invalidate_all();
        self.read_indexes.run_pending_tasks();
        self.tag_counts.invalidate_all();
        self.tag_counts.run_pending_tasks();
        self.forget_all_absent();
    }

    /// Remembers what a read reported about a segment's tags (a warm read reports what is
    /// already remembered, so nothing is written then).
    fn note_tags(&self, key: &str, tags: crate::TagCount) {
        match tags {
            Some(count) if self.tag_counts.get(key) != Some(count) => self.tag_counts.insert(key.to_owned(), count),
            Some(_) => {}
            None => self.tag_counts.invalidate(key),
        }
    }

    /// True when the latest read of this segment reported it untagged: it has no sidecar.
    fn known_untagged(&self, key: &str) -> bool {
        self.tag_counts.get(key) == Some(0)
    }

    /// Finds the segment holding `uid` now: probes generations 0, 1, … of its address
    /// (stopping at the first missing one after generation 0), then follows `superseded`
    /// links in the sidecars through any repacks. A file a repack dropped ends the walk at
    /// the segment whose sidecar tombstoned it.
    pub async fn locate(
        &self,
        routing: &RoutingTable,
        uid: &str,
        created_at: Timestamp,
        sidecars: &dyn Sidecars,
    ) -> Result<Located, ShardError> {
        let addr = address(routing, uid, created_at)?;
        let (key, index, _) = self.probe::<Arc<SegmentIndex>>(&addr, uid).await?;
        let (key, index, sidecar) = self.follow(key, index, uid, sidecars).await?;
        Ok(Located { addr, key, index, sidecar })
    }

    /// The packed segment of `addr` whose index lists (or may list) `uid`: generation 0,
    /// 1, … until the first missing one from generation 1 on (generation 0 may be missing:
    /// see the module docs); with the [`Tail`] if its index was not cached.
    ///
    /// Where generation 0 was found missing lately, the probe starts at generation 1: a
    /// uid is stored once per address, so one that a later generation lists is not in a
    /// generation 0 written since, and a warm read of a late arrival costs no GET for the
    /// missing key. A uid the later generations do not list sends the probe back to
    /// generation 0, unless its absence is trusted ([`ShardStore::cache_absence`]).
    async fn probe<T: SegmentLookup>(
        &self,
        addr: &ShardAddr,
        uid: &str,
    ) -> Result<(String, T, Option<Tail>), ShardError> {
        match self.probe_generations::<T>(addr, uid).await {
            Err(ShardError::NotFound { .. }) => self.probe_staging::<T>(addr, uid).await,
            other => other,
        }
    }

    /// A uid no final generation lists may still be in a staging segment that the
    /// compactor has not merged yet (ADR 0005): one LIST, then their indexes, newest
    /// first. A merged file is always found in its final generation first.
    async fn probe_staging<T: SegmentLookup>(
        &self,
        addr: &ShardAddr,
        uid: &str,
    ) -> Result<(String, T, Option<Tail>), ShardError> {
        for staged in self.layout(addr).await?.staging {
            let (index, tail) = match T::fetch(self, &staged.key).await {
                Ok(found) => found,
                // Deleted by the compactor since the LIST: its files are in a generation.
                Err(ShardError::Store(error)) if error.kind == StoreErrorKind::NotFound => continue,
                Err(other) => return Err(other),
            };
            if !index.records(uid).is_empty() {
                return Ok((staged.key, index, tail));
            }
        }
        Err(not_found(uid, addr))
    }

    /// [`ShardStore::probe`] over the final generations only.
    async fn probe_generations<T: SegmentLookup>(
        &self,
        addr: &ShardAddr,
        uid: &str,
    ) -> Result<(String, T, Option<Tail>), ShardError> {
        let prefix = addr.key_prefix();
        let caching = self.absence.on.load(Ordering::SeqCst);
        let known = if caching { self.absent.get(&prefix) } else { None };
        let zero_trusted_missing = known.is_some_and(|known| known.zero);
        let zero_skipped = zero_trusted_missing || self.zero_missing.contains_key(&prefix);
        let mut generation = u32::from(zero_skipped);
        let mut zero_missing = zero_trusted_missing;
        loop {
            let found = if known.and_then(|known| known.end) == Some(generation) {
                Probe::Missing
            } else {
                self.probe_one::<T>(addr, generation, uid, &mut zero_missing).await?
            };
            match found {
                Probe::Found(found) => return Ok(found),
                Probe::NotListed => {}
                Probe::Missing if generation == 0 => {}
                Probe::Missing if zero_skipped && !zero_trusted_missing => {
                    // Generation 0 may have been written since it was found missing.
                    return match self.probe_one::<T>(addr, 0, uid, &mut zero_missing).await? {
                        Probe::Found(found) => Ok(found),
                        Probe::NotListed | Probe::Missing => Err(not_found(uid, addr)),
                    };
                }
                Probe::Missing => return Err(not_found(uid, addr)),
            }
            generation = generation.checked_add(1).ok_or_else(|| not_found(uid, addr))?;
        }
    }

    /// One generation of a probe: its index lists `uid`, does not, or the segment is
    /// missing (remembered as [`ShardStore::probe`] describes; `zero_missing` is set when
    /// generation 0 is).
    async fn probe_one<T: SegmentLookup>(
        &self,
        addr: &ShardAddr,
        generation: u32,
        uid: &str,
        zero_missing: &mut bool,
    ) -> Result<Probe<T>, ShardError> {
        let key = addr.segment_key(generation);
        let caching = self.absence.on.load(Ordering::SeqCst);
        let forgotten = self.absence.forgotten.load(Ordering::SeqCst);
        match T::fetch(self, &key).await {
            Ok((index, tail)) => {
                if generation == 0 {
                    self.zero_missing.invalidate(&addr.key_prefix());
                }
                Ok(if index.records(uid).is_empty() { Probe::NotListed } else { Probe::Found((key, index, tail)) })
            }
            Err(ShardError::Store(error)) if error.kind == StoreErrorKind::NotFound => {
                *zero_missing |= generation == 0;
                // Not if a new segment was announced while this GET was answered.
                if self.absence.forgotten.load(Ordering::SeqCst) == forgotten {
                    let prefix = addr.key_prefix();
                    if generation == 0 {
                        self.zero_missing.insert(prefix.clone(), ());
                    }
                    if caching {
                        // A missing generation 0 keeps the end an earlier probe found.
                        let end = match generation {
                            0 => self.absent.get(&prefix).and_then(|known| known.end),
                            _ => Some(generation),
                        };
                        self.absent.insert(prefix, Missing { zero: *zero_missing, end });
                    }
                }
                Ok(Probe::Missing)
            }
            Err(other) => Err(other),
        }
    }

    /// From the packed segment holding `uid`, through the sidecars' `superseded` links,
    /// to the segment that holds it now (or that tombstoned it), with its sidecar.
    async fn follow<T: SegmentLookup>(
        &self,
        mut key: String,
        mut index: T,
        uid: &str,
        sidecars: &dyn Sidecars,
    ) -> Result<(String, T, Option<Arc<Sidecar>>), ShardError> {
        let broken = |key: &str, reason: &'static str| ShardError::Segment {
            key: key.to_owned(),
            source: ReadError::Corrupt { reason },
        };
        for _ in 0..MAX_REPACK_HOPS {
            let sidecar = sidecars.sidecar(&key).await?;
            let Some(next) = sidecar.as_ref().and_then(|sidecar| sidecar.superseded.as_ref()) else {
                return Ok((key, index, sidecar));
            };
            let tombstoned = sidecar.as_ref().is_some_and(|sidecar| sidecar.is_tombstoned(uid));
            let next_index = match &next.segment_key {
                Some(next_key) => Some((next_key.clone(), T::fetch(self, next_key).await?.0)),
                None => None,
            };
            match next_index {
                Some((next_key, next_index)) if !next_index.records(uid).is_empty() => {
                    (key, index) = (next_key, next_index)
                }
                // Dropped by the repack: it was tombstoned here.
                _ if tombstoned => return Ok((key, index, sidecar)),
                _ => return Err(broken(&key, "a repack lost a live file (superseding segment lacks it)")),
            }
        }
        Err(broken(&key, "too many repacks in a row"))
    }

    /// Locates, fetches, decodes and verifies one file, refusing a tombstoned one with
    /// [`ShardError::Gone`]. Sidecars are read from the store.
    pub async fn read_file(
        &self,
        routing: &RoutingTable,
        uid: &str,
        created_at: Timestamp,
    ) -> Result<FileRead, ShardError> {
        self.read_file_with(routing, uid, created_at, &StoreSidecars(self.store.as_ref())).await
    }

    /// [`ShardStore::read_file`] with sidecars from `sidecars` (a reader's cache).
    ///
    /// The walk goes through the read path's compact indexes. When the latest read of the
    /// segment reported no tags, the segment has no sidecar ([`SIDECAR_TAG`]), so the read
    /// is the data GET alone; that GET reports the tags again, and if the segment gained
    /// any, the sidecar is read (fresh) before the bytes are returned. A cold read is thus
    /// the index suffix GET plus the data GET, or the suffix GET alone when the record
    /// lies inside the suffix ([`Tail`]). In the rare case that a compact index sent
    /// the read to another uid's record, the whole indexes settle it.
    pub async fn read_file_with(
        &self,
        routing: &RoutingTable,
        uid: &str,
        created_at: Timestamp,
        sidecars: &dyn Sidecars,
    ) -> Result<FileRead, ShardError> {
        let addr = address(routing, uid, created_at)?;
        if let Some(file) = self.read_via::<ReadIndex>(&addr, uid, sidecars).await? {
            return Ok(file);
        }
        self.read_via::<Arc<SegmentIndex>>(&addr, uid, sidecars).await?.ok_or_else(|| not_found(uid, &addr))
    }

    /// A record's bytes and the tags reported with them: from the tail a cold index read
    /// just fetched when it holds them, else one range GET.
    async fn record(
        &self,
        key: &str,
        range: Range<u64>,
        tail: Option<&Tail>,
    ) -> Result<(bytes::Bytes, crate::TagCount), StoreError> {
        match tail.and_then(|tail| tail.record(key, &range)) {
            Some(found) => Ok(found),
            None => self.store.get_range_tagged(key, range).await,
        }
    }

    /// The read walk over one kind of index; `None` when the records it was sent to all
    /// belong to other uids.
    async fn read_via<T: SegmentLookup>(
        &self,
        addr: &ShardAddr,
        uid: &str,
        sidecars: &dyn Sidecars,
    ) -> Result<Option<FileRead>, ShardError> {
        let (key, index, tail) = self.probe::<T>(addr, uid).await?;
        let tail = tail.as_ref();
        // A record fetched before the sidecar was consulted, kept for when the sidecar
        // sends the read nowhere else.
        let mut fetched: Option<(Range<u64>, bytes::Bytes)> = None;
        if self.known_untagged(&key) {
            for range in index.records(uid) {
                match self.record(&key, range.clone(), tail).await {
                    Ok((record, tags)) => {
                        self.note_tags(&key, tags);
                        if tags != Some(0) {
                            // Tagged since: a sidecar may have appeared; read it fresh below.
                            sidecars.forget(&key).await;
                            fetched = Some((range, record));
                            break;
                        }
                        if let Some(file) = index.decode(&key, uid, &record, &self.limits)? {
                            return Ok(Some(file));
                        }
                    }
                    Err(error) => {
                        self.tag_counts.invalidate(&key);
                        // An archived (superseded) segment refuses reads: the sidecar path
                        // below follows the repack instead. Anything else is the answer.
                        if matches!(error.kind, StoreErrorKind::Transient | StoreErrorKind::NotFound) {
                            return Err(error.into());
                        }
                        break;
                    }
                }
            }
            if fetched.is_none() && self.known_untagged(&key) {
                // Untagged, and every candidate record is another uid's.
                return Ok(None);
            }
        }
        let original = key.clone();
        let (key, index, sidecar) = self.follow(key, index, uid, sidecars).await?;
        if sidecar.as_ref().is_some_and(|sidecar| sidecar.is_tombstoned(uid)) {
            return Err(ShardError::Gone { uid: uid.to_owned(), key });
        }
        for range in index.records(uid) {
            let record = match fetched.take() {
                Some((fetched_range, record)) if key == original && fetched_range == range => record,
                _ => {
                    let (record, tags) = self.record(&key, range, tail).await?;
                    self.note_tags(&key, tags);
                    record
                }
            };
            if let Some(file) = index.decode(&key, uid, &record, &self.limits)? {
                return Ok(Some(file));
            }
        }
        Ok(None)
    }
}

fn address(routing: &RoutingTable, uid: &str, created_at: Timestamp) -> Result<ShardAddr, ShardError> {
    routing.locate(uid, created_at).map_err(|source| ShardError::Routing { uid: uid.to_owned(), source })
}

fn not_found(uid: &str, addr: &ShardAddr) -> ShardError {
    ShardError::NotFound { uid: uid.to_owned(), prefix: addr.key_prefix() }
}
