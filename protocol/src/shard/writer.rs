//! Streaming, deterministic segment writer.
//!
//! Files arrive in any order. Each one is hashed and compressed as it arrives
//! ([`PreparedFile::prepare`], pure and safe to run on many threads), and its stored bytes
//! go to a *spill* (any `Read + Write + Seek`: a temp file for big segments, a `Cursor`
//! for small ones). Only the index entries stay in memory. At [`SegmentWriter::finish`]
//! the entries are sorted (format 2: by uid fingerprint, then uid; format 1: by uid) and
//! the payloads are copied from the spill to the sink in that order, so the output depends only on the *set* of files and the settings, never
//! on arrival order. The sink only needs `Write`, so it can be a file or a multipart
//! upload.
//!
//! Small compressible files are held back raw (also in the spill) until the end, when a
//! zstd dictionary may be trained on a deterministic sample of them: the candidates with
//! the smallest content hashes that fit the sample budget.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::compress::{self, Codec, CompressionPolicy, DictionaryCompressor, PolicyError, Prepared};
use crate::merkle::{self, Hash};
use crate::routing::{self, RoutingEpoch, RoutingError, ShardAddr};
use crate::shard::layout::{
    FOOTER_LEN, FORMAT_VERSION, Footer, HEADER_LEN, Header, INDEX_CODEC_RAW, INDEX_CODEC_ZSTD, INDEX_ENTRY_LEN,
    IndexEntry, MAX_CONTENT_TYPE_LEN, MIN_FORMAT_VERSION, RecordHeader,
};
use crate::timestamp::Timestamp;

/// Content type recorded when the caller gives none and sniffing finds nothing.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// zstd level for the index block. Part of the format's determinism: never change it
/// within a format version.
const INDEX_ZSTD_LEVEL: i32 = 3;

/// What makes a segment: its address, generation and the policy. Same settings plus same
/// files give the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSettings {
    pub addr: ShardAddr,
    pub generation: u32,
    pub policy: CompressionPolicy,
    /// Files larger than this are refused (the format's own ceiling is `u32::MAX`).
    pub max_file_bytes: u64,
    /// `.vera` format version to write: [`FORMAT_VERSION`] unless an old reader must
    /// read the result.
    pub format_version: u16,
}

impl SegmentSettings {
    pub fn new(addr: ShardAddr, generation: u32) -> Self {
        SegmentSettings {
            addr,
            generation,
            policy: CompressionPolicy::default(),
            max_file_bytes: 256 * 1024 * 1024,
            format_version: FORMAT_VERSION,
        }
    }
}

/// One file to pack.
#[derive(Debug, Clone, Copy)]
pub struct FileInput<'a> {
    pub uid: &'a str,
    pub created_at: Timestamp,
    /// MIME type from the source; sniffed from magic bytes when `None`.
    pub content_type: Option<&'a str>,
    pub bytes: &'a [u8],
}

/// Why a file or a segment could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("file {uid:?} has an invalid uid")]
    InvalidUid { uid: String, source: RoutingError },
    #[error("file {uid:?} is {len} bytes, over the limit of {max}")]
    TooLarge { uid: String, len: u64, max: u64 },
    #[error("file {uid:?} has an invalid content type (printable ASCII, 1..={MAX_CONTENT_TYPE_LEN} bytes)")]
    BadContentType { uid: String },
    #[error("file {uid:?} routes to {actual}, not to this segment's address {expected}")]
    WrongAddress { uid: String, expected: ShardAddr, actual: ShardAddr },
    #[error("uid {uid:?} appears more than once in the segment")]
    DuplicateUid { uid: String },
    #[error("a segment needs at least one file")]
    Empty,
    #[error("segment limit exceeded: {what}")]
    LimitExceeded { what: &'static str },
    #[error("invalid compression policy")]
    Policy(#[from] PolicyError),
    #[error("max_file_bytes {0} exceeds the format ceiling of u32::MAX")]
    MaxFileBytes(u64),
    #[error("cannot write format version {0} (this writer knows {MIN_FORMAT_VERSION}..={FORMAT_VERSION})")]
    FormatVersion(u16),
    #[error("spill or sink i/o failed")]
    Io(#[from] io::Error),
}

/// A file after hashing and the order-independent part of compression.
#[derive(Debug, Clone)]
pub struct PreparedFile {
    uid: String,
    created_at: Timestamp,
    content_type: String,
    raw_len: u32,
    content_hash: Hash,
    prepared: Prepared,
}

impl PreparedFile {
    /// Validates, hashes and compresses one file. Pure CPU work with no shared state,
    /// so callers may run it on a thread pool and feed the results to one writer.
    pub fn prepare(settings: &SegmentSettings, input: FileInput<'_>) -> Result<PreparedFile, WriteError> {
        Self::prepare_cow(settings, input, std::borrow::Cow::Borrowed(input.bytes))
    }

    /// [`PreparedFile::prepare`] taking ownership of the bytes, which saves a copy of
    /// every file stored raw. `input.bytes` is ignored; `bytes` is the content.
    pub fn prepare_owned(
        settings: &SegmentSettings,
        input: FileInput<'_>,
        bytes: Vec<u8>,
    ) -> Result<PreparedFile, WriteError> {
        Self::prepare_cow(settings, input, std::borrow::Cow::Owned(bytes))
    }

    fn prepare_cow(
        settings: &SegmentSettings,
        input: FileInput<'_>,
        bytes: std::borrow::Cow<'_, [u8]>,
    ) -> Result<PreparedFile, WriteError> {
        let input = FileInput { bytes: &bytes, ..input };
        routing::validate_uid(input.uid)
            .map_err(|source| WriteError::InvalidUid { uid: truncate(input.uid), source })?;
        let len = input.bytes.len() as u64;
        if len > settings.max_file_bytes {
            return Err(WriteError::TooLarge { uid: input.uid.to_owned(), len, max: settings.max_file_bytes });
        }
        let raw_len = u32::try_from(len).map_err(|_| WriteError::TooLarge {
            uid: input.uid.to_owned(),
            len,
            max: u64::from(u32::MAX),
        })?;
        let epoch = RoutingEpoch {
            id: settings.addr.epoch,
            granularity: settings.addr.granularity,
            n_bits: settings.addr.n_bits,
        };
        let actual = epoch
            .locate(input.uid, input.created_at)
            .map_err(|source| WriteError::InvalidUid { uid: truncate(input.uid), source })?;
        if actual != settings.addr {
            return Err(WriteError::WrongAddress { uid: input.uid.to_owned(), expected: settings.addr, actual });
        }
        let content_type = match input.content_type {
            Some(given) => given.to_owned(),
            None => compress::sniff_mime(input.bytes).unwrap_or(DEFAULT_CONTENT_TYPE).to_owned(),
        };
        if !valid_content_type(&content_type) {
            return Err(WriteError::BadContentType { uid: input.uid.to_owned() });
        }
        Ok(PreparedFile {
            uid: input.uid.to_owned(),
            created_at: input.created_at,
            content_type,
            raw_len,
            content_hash: *blake3::hash(input.bytes).as_bytes(),
            prepared: compress::prepare_owned(&settings.policy, bytes.into_owned()),
        })
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// BLAKE3 of the file's bytes.
    pub fn content_hash(&self) -> &Hash {
        &self.content_hash
    }

    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }
}

/// True for 1..=127 bytes of printable ASCII, the content types the index can hold.
pub fn valid_content_type(content_type: &str) -> bool {
    !content_type.is_empty()
        && content_type.len() <= MAX_CONTENT_TYPE_LEN
        && content_type.bytes().all(|b| (0x21..=0x7E).contains(&b) || b == b' ')
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

/// What the writer keeps per file until `finish`: no payload bytes.
struct PendingFile {
    uid: Box<str>,
    /// [`routing::uid_fingerprint`] of the uid: the format 2 sort key.
    fingerprint: u64,
    created_at: Timestamp,
    content_type: u16,
    raw_len: u32,
    content_hash: Hash,
    spill_offset: u64,
    spill_len: u32,
    /// `None` for a dictionary candidate, which is compressed at `finish`.
    codec: Option<Codec>,
}

/// Facts about a finished segment, for the `ShardSealed` message and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub header: Header,
    pub footer: Footer,
    /// Total object length in bytes.
    pub object_len: u64,
    /// BLAKE3 of the whole object as written.
    pub object_hash: Hash,
    pub files: u64,
    pub raw_bytes: u64,
    pub stored_payload_bytes: u64,
    pub dictionary_files: u64,
}

/// Builds one segment. See the module docs for the memory and determinism contract.
pub struct SegmentWriter<S> {
    settings: SegmentSettings,
    spill: S,
    spill_len: u64,
    pending: Vec<PendingFile>,
    content_types: Vec<String>,
    content_type_ids: HashMap<String, u16>,
}

impl<S: Read + Write + Seek> SegmentWriter<S> {
    /// `spill` must be empty; the writer owns it until `finish`.
    pub fn new(settings: SegmentSettings, spill: S) -> Result<Self, WriteError> {
        settings.policy.validate()?;
        if settings.max_file_bytes > u64::from(u32::MAX) {
            return Err(WriteError::MaxFileBytes(settings.max_file_bytes));
        }
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&settings.format_version) {
            return Err(WriteError::FormatVersion(settings.format_version));
        }
        Ok(SegmentWriter {
            settings,
            spill,
            spill_len: 0,
            pending: Vec::new(),
            content_types: Vec::new(),
            content_type_ids: HashMap::new(),
        })
    }

    pub fn settings(&self) -> &SegmentSettings {
        &self.settings
    }

    pub fn file_count(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held in the spill so far (a proxy for the segment's final size).
    pub fn spilled_bytes(&self) -> u64 {
        self.spill_len
    }

    /// Prepares and adds one file.
    pub fn add(&mut self, input: FileInput<'_>) -> Result<(), WriteError> {
        let prepared = PreparedFile::prepare(&self.settings, input)?;
        self.add_prepared(prepared)
    }

    /// Adds a file prepared with *these* settings (possibly on another thread).
    pub fn add_prepared(&mut self, file: PreparedFile) -> Result<(), WriteError> {
        if self.pending.len() >= u32::MAX as usize {
            return Err(WriteError::LimitExceeded { what: "files per segment" });
        }
        let content_type = self.intern_content_type(file.content_type)?;
        let (codec, bytes) = match file.prepared {
            Prepared::Final { codec, stored } => (Some(codec), stored),
            Prepared::DictionaryCandidate { raw } => (None, raw),
        };
        let spill_offset = self.spill_len;
        self.spill.seek(SeekFrom::Start(spill_offset))?;
        self.spill.write_all(&bytes)?;
        // Stored bytes never exceed raw bytes, which fit in u32 (checked in prepare).
        let spill_len = u32::try_from(bytes.len()).map_err(|_| WriteError::LimitExceeded { what: "file size" })?;
        self.spill_len += u64::from(spill_len);
        let fingerprint = if self.settings.format_version == 1 { 0 } else { routing::uid_fingerprint(&file.uid) };
        self.pending.push(PendingFile {
            fingerprint,
            uid: file.uid.into_boxed_str(),
            created_at: file.created_at,
            content_type,
            raw_len: file.raw_len,
            content_hash: file.content_hash,
            spill_offset,
            spill_len,
            codec,
        });
        Ok(())
    }

    fn intern_content_type(&mut self, content_type: String) -> Result<u16, WriteError> {
        if let Some(&id) = self.content_type_ids.get(&content_type) {
            return Ok(id);
        }
        let id = u16::try_from(self.content_types.len())
            .map_err(|_| WriteError::LimitExceeded { what: "distinct content types per segment" })?;
        self.content_types.push(content_type.clone());
        self.content_type_ids.insert(content_type, id);
        Ok(id)
    }

    /// Sets the generation written into the header at `finish`. Nothing before `finish`
    /// depends on it, so a caller may pick the generation after adding the files.
    pub fn set_generation(&mut self, generation: u32) {
        self.settings.generation = generation;
    }

    /// The files added so far: uid and content hash, in arrival order.
    pub fn pending_files(&self) -> impl Iterator<Item = (&str, &Hash)> {
        self.pending.iter().map(|file| (&*file.uid, &file.content_hash))
    }

    /// Drops every pending file whose uid fails `keep`. The result is exactly what a
    /// writer given only the kept files would produce. Workers use it to leave out files
    /// an earlier attempt already stored.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.pending.retain(|file| keep(&file.uid));
    }

    /// Sorts, compresses the held-back files, and writes the whole segment to `sink`.
    pub fn finish<W: Write>(mut self, sink: W) -> Result<SealedSegment, WriteError> {
        if self.pending.is_empty() {
            return Err(WriteError::Empty);
        }
        // Format 1 leaves every fingerprint 0, so this is a sort by uid there.
        self.pending.sort_unstable_by(|a, b| (a.fingerprint, &a.uid).cmp(&(b.fingerprint, &b.uid)));
        if let Some(pair) = self.pending.windows(2).find(|pair| pair[0].uid == pair[1].uid) {
            return Err(WriteError::DuplicateUid { uid: pair[0].uid.to_string() });
        }
        let policy = self.settings.policy.clone();
        let dictionary = self.train_dictionary(&policy)?;
        let mut dictionary_compressor = match &dictionary {
            Some(bytes) => Some(DictionaryCompressor::new(&policy, bytes)?),
            None => None,
        };

        // Deterministic content type table: sorted by name.
        let mut sorted_types: Vec<(usize, &String)> = self.content_types.iter().enumerate().collect();
        sorted_types.sort_by(|a, b| a.1.cmp(b.1));
        let mut remap = vec![0u16; self.content_types.len()];
        for (new_id, (old_id, _)) in sorted_types.iter().enumerate() {
            // Fewer than 2^16 types, checked when interning.
            remap[*old_id] = new_id as u16;
        }

        let mut out = HashingWriter::new(sink);
        let format_version = self.settings.format_version;
        let header = Header { format_version, addr: self.settings.addr, generation: self.settings.generation };
        out.write_all(&header.encode())?;

        let mut entries = Vec::with_capacity(self.pending.len());
        let mut uid_pool = Vec::new();
        let mut buffer = Vec::new();
        let mut record_header = Vec::new();
        let mut data_hasher = blake3::Hasher::new();
        let (mut raw_bytes, mut stored_payload_bytes, mut dictionary_files) = (0u64, 0u64, 0u64);
        for file in &self.pending {
            buffer.resize(file.spill_len as usize, 0);
            self.spill.seek(SeekFrom::Start(file.spill_offset))?;
            self.spill.read_exact(&mut buffer)?;
            let (codec, stored): (Codec, std::borrow::Cow<'_, [u8]>) = match file.codec {
                Some(codec) => (codec, std::borrow::Cow::Borrowed(&buffer)),
                None => {
                    let (codec, stored) = compress::finish_candidate(&policy, dictionary_compressor.as_mut(), &buffer);
                    (codec, std::borrow::Cow::Owned(stored))
                }
            };
            if codec == Codec::ZstdDict {
                dictionary_files += 1;
            }
            let stored_len =
                u32::try_from(stored.len()).map_err(|_| WriteError::LimitExceeded { what: "file size" })?;
            let content_type = remap[usize::from(file.content_type)];
            let data_offset = out.position();
            if format_version == 1 {
                out.write_all(&stored)?;
                out.write_all(&file.content_hash)?;
            } else {
                record_header.clear();
                RecordHeader {
                    codec,
                    content_type,
                    created_at_micros: file.created_at.as_micros(),
                    stored_len,
                    raw_len: file.raw_len,
                    content_hash: file.content_hash,
                    uid: file.uid.to_string(),
                }
                .encode_into(&mut record_header);
                out.write_all(&record_header)?;
                out.write_all(&stored)?;
            }
            // Raw payloads are the content itself: their hash is already known.
            let stored_hash = if codec == Codec::Raw { file.content_hash } else { *blake3::hash(&stored).as_bytes() };
            data_hasher.update(&stored_hash);
            let uid_offset =
                u32::try_from(uid_pool.len()).map_err(|_| WriteError::LimitExceeded { what: "uid pool bytes" })?;
            uid_pool.extend_from_slice(file.uid.as_bytes());
            entries.push(IndexEntry {
                uid_offset,
                // uids are at most 255 bytes (validated in prepare).
                uid_len: file.uid.len() as u16,
                content_type,
                codec,
                created_at_micros: file.created_at.as_micros(),
                data_offset,
                stored_len,
                raw_len: file.raw_len,
                content_hash: file.content_hash,
            });
            raw_bytes += u64::from(file.raw_len);
            stored_payload_bytes += u64::from(stored_len);
        }
        let index_region_offset = out.position();
        let data_len = index_region_offset - HEADER_LEN as u64;

        let index_block = encode_index_block(&entries, &sorted_types, &uid_pool)?;
        let compressed = zstd::bulk::compress(&index_block, INDEX_ZSTD_LEVEL)?;
        let (index_codec, stored_index) = if compressed.len() < index_block.len() {
            (INDEX_CODEC_ZSTD, compressed)
        } else {
            (INDEX_CODEC_RAW, index_block.clone())
        };
        let dictionary_bytes = dictionary.unwrap_or_default();
        let mut region_hasher = blake3::Hasher::new();
        region_hasher.update(&dictionary_bytes);
        region_hasher.update(&stored_index);
        out.write_all(&dictionary_bytes)?;
        out.write_all(&stored_index)?;

        let leaves: Vec<Hash> = entries.iter().map(|entry| merkle::leaf_hash(&entry.content_hash)).collect();
        let footer = Footer {
            format_version,
            index_region_offset,
            index_region_len: (dictionary_bytes.len() + stored_index.len()) as u64,
            dictionary_len: u32::try_from(dictionary_bytes.len())
                .map_err(|_| WriteError::LimitExceeded { what: "dictionary bytes" })?,
            index_codec,
            index_raw_len: index_block.len() as u64,
            entry_count: entries.len() as u64,
            data_len,
            index_checksum: *region_hasher.finalize().as_bytes(),
            data_checksum: *data_hasher.finalize().as_bytes(),
            merkle_root: merkle::root_of_leaf_hashes(&leaves),
        };
        out.write_all(&footer.encode())?;
        out.flush()?;
        let object_len = out.position();
        debug_assert_eq!(Some(object_len), footer.object_len());
        debug_assert_eq!(FOOTER_LEN as u64, object_len - index_region_offset - footer.index_region_len);
        Ok(SealedSegment {
            header,
            footer,
            object_len,
            object_hash: out.finalize(),
            files: entries.len() as u64,
            raw_bytes,
            stored_payload_bytes,
            dictionary_files,
        })
    }

    /// Trains on the candidates with the smallest content hashes that fit the sample
    /// budget, read back from the spill in ascending hash order: the same set of files
    /// always yields the same samples, whatever order they arrived in.
    fn train_dictionary(&mut self, policy: &CompressionPolicy) -> Result<Option<Vec<u8>>, WriteError> {
        let mut candidates: Vec<&PendingFile> = self.pending.iter().filter(|file| file.codec.is_none()).collect();
        if candidates.len() < policy.dictionary.min_files {
            return Ok(None);
        }
        candidates.sort_by_key(|file| file.content_hash);
        candidates.dedup_by(|a, b| a.content_hash == b.content_hash);
        let budget = policy.dictionary.sample_budget_bytes;
        let mut chosen = Vec::new();
        let mut used = 0usize;
        for candidate in candidates {
            let len = candidate.spill_len as usize;
            if used + len > budget {
                break;
            }
            used += len;
            chosen.push((candidate.spill_offset, len));
        }
        let mut samples = Vec::with_capacity(chosen.len());
        for (offset, len) in chosen {
            let mut sample = vec![0u8; len];
            self.spill.seek(SeekFrom::Start(offset))?;
            self.spill.read_exact(&mut sample)?;
            samples.push(sample);
        }
        let sample_refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        Ok(compress::train_dictionary(policy, &sample_refs))
    }
}

/// Index block, uncompressed: counts, content type table, uid pool, fixed entries.
fn encode_index_block(
    entries: &[IndexEntry],
    content_types: &[(usize, &String)],
    uid_pool: &[u8],
) -> Result<Vec<u8>, WriteError> {
    let mut block = Vec::with_capacity(16 + uid_pool.len() + entries.len() * INDEX_ENTRY_LEN);
    let entry_count = u32::try_from(entries.len()).map_err(|_| WriteError::LimitExceeded { what: "files" })?;
    block.extend_from_slice(&entry_count.to_le_bytes());
    let type_count =
        u16::try_from(content_types.len()).map_err(|_| WriteError::LimitExceeded { what: "content types" })?;
    block.extend_from_slice(&type_count.to_le_bytes());
    for (_, name) in content_types {
        // At most MAX_CONTENT_TYPE_LEN (127) bytes, checked in prepare.
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
    }
    let pool_len = u32::try_from(uid_pool.len()).map_err(|_| WriteError::LimitExceeded { what: "uid pool" })?;
    block.extend_from_slice(&pool_len.to_le_bytes());
    block.extend_from_slice(uid_pool);
    for entry in entries {
        entry.encode_into(&mut block);
    }
    Ok(block)
}

/// Counts and hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    position: u64,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, position: 0, hasher: blake3::Hasher::new() }
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finalize(&self) -> Hash {
        *self.hasher.finalize().as_bytes()
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
