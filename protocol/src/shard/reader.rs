//! Segment reader: open from a suffix, look up by uid, decode with a hash check.
//!
//! Everything read from the object is treated as hostile. The footer is checked (magic,
//! CRC-32C, version) before any of its lengths is used; lengths are compared with the
//! object length and with [`ReadLimits`] before anything is allocated; the index region is
//! checked against the footer's BLAKE3 before it is parsed; and the parsed index must be
//! strictly sorted, contiguous over DATA and consistent with the footer's Merkle root.
//! After that, a lookup is a binary search, and every decoded file is hashed and compared
//! with the index before it is returned.
//!
//! [`LookupIndex`] is the compact form a long-running reader caches for a format 2
//! segment: 8 bytes per file (the top half of the uid fingerprint and the record offset).
//! The record's own header then says whose record it is and how to decode it.

use std::io::{self, Read, Seek, SeekFrom};

use crate::compress::{self, Codec, DecodeError};
use crate::merkle::{self, Hash};
use crate::routing::uid_fingerprint;
use crate::shard::layout::{
    FOOTER_LEN, Footer, HEADER_LEN, Header, INDEX_CODEC_ZSTD, INDEX_ENTRY_LEN, IndexEntry, LayoutError, RecordHeader,
};

/// Bounds that keep a hostile segment from driving allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest index region (dictionary plus stored index block) accepted.
    pub max_index_region_bytes: u64,
    /// Largest uncompressed index block accepted.
    pub max_index_raw_bytes: u64,
    /// Largest decoded file accepted.
    pub max_file_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_index_region_bytes: 256 * 1024 * 1024,
            max_index_raw_bytes: 1024 * 1024 * 1024,
            max_file_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Why a segment or a file in it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("segment layout is invalid")]
    Layout(#[from] LayoutError),
    #[error("segment is corrupt: {reason}")]
    Corrupt { reason: &'static str },
    #[error("segment index checksum mismatch")]
    IndexChecksum,
    #[error("segment data region checksum mismatch")]
    DataChecksum,
    #[error("segment merkle root does not match its index")]
    MerkleRoot,
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge { what: &'static str, len: u64, limit: u64 },
    #[error("file {uid:?} is not in this segment")]
    NotFound { uid: String },
    #[error("file {uid:?} failed its content hash check")]
    HashMismatch { uid: String },
    #[error("file {uid:?} could not be decoded")]
    Decode { uid: String, source: DecodeError },
    #[error("record for {uid:?} is {actual} bytes, expected {expected}")]
    RecordLength { uid: String, expected: u64, actual: u64 },
    #[error("record for {uid:?} is corrupt: {reason}")]
    Record { uid: String, reason: &'static str },
    #[error("i/o failed while reading the segment")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// True when retrying cannot help: the bytes themselves are wrong.
    pub fn is_corruption(&self) -> bool {
        !matches!(self, ReadError::Io(_) | ReadError::NotFound { .. } | ReadError::TooLarge { .. })
    }
}

/// Result of opening from a suffix.
#[derive(Debug)]
pub enum SuffixOpen {
    /// The suffix held the footer and the whole index region.
    Ready(Box<SegmentIndex>),
    /// The index region starts before the suffix: fetch `start..object_len` and call
    /// [`SegmentIndex::open_suffix`] again with it.
    NeedMore { start: u64 },
}

/// A parsed, verified index: enough to locate and decode any file in the segment.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    footer: Footer,
    object_len: u64,
    dictionary: Option<Vec<u8>>,
    content_types: Vec<String>,
    uid_pool: String,
    entries: Vec<IndexEntry>,
    /// Format 2: [`uid_fingerprint`] of each entry's uid, in entry order (ascending). Empty for
    /// format 1.
    fingerprints: Vec<u64>,
}

/// A file as listed in the index.
#[derive(Debug, Clone, Copy)]
pub struct FileRef<'a> {
    pub uid: &'a str,
    pub content_type: &'a str,
    pub entry: &'a IndexEntry,
    /// The segment's format version, which decides the record framing.
    pub format_version: u16,
}

impl FileRef<'_> {
    /// Byte range of this file's DATA record within the object: what one range GET fetches.
    pub fn record_range(&self) -> std::ops::Range<u64> {
        self.entry.record_range(self.format_version)
    }
}

impl SegmentIndex {
    /// Heap and inline bytes this index keeps resident: what a cache holding it costs.
    pub fn resident_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.entries.capacity() * std::mem::size_of::<IndexEntry>()
            + self.fingerprints.capacity() * std::mem::size_of::<u64>()
            + self.uid_pool.capacity()
            + self.dictionary.as_ref().map_or(0, Vec::capacity)
            + self.content_types.iter().map(|t| t.capacity() + std::mem::size_of::<String>()).sum::<usize>()
    }

    /// Opens from the last `suffix.len()` bytes of an object of `object_len` bytes.
    pub fn open_suffix(suffix: &[u8], object_len: u64, limits: &ReadLimits) -> Result<SuffixOpen, ReadError> {
        let suffix_len = suffix.len() as u64;
        if suffix_len > object_len {
            return Err(ReadError::Corrupt { reason: "suffix longer than the object" });
        }
        if suffix.len() < FOOTER_LEN {
            return Err(LayoutError::Truncated { what: "footer", need: FOOTER_LEN, have: suffix.len() }.into());
        }
        let footer = Footer::decode(&suffix[suffix.len() - FOOTER_LEN..])?;
        if footer.object_len() != Some(object_len) {
            return Err(ReadError::Corrupt { reason: "footer lengths disagree with the object length" });
        }
        if footer.index_region_offset < HEADER_LEN as u64 {
            return Err(ReadError::Corrupt { reason: "index region overlaps the header" });
        }
        if footer.data_len != footer.index_region_offset - HEADER_LEN as u64 {
            return Err(ReadError::Corrupt { reason: "footer data_len disagrees with the index offset" });
        }
        if footer.index_region_len > limits.max_index_region_bytes {
            return Err(ReadError::TooLarge {
                what: "index region",
                len: footer.index_region_len,
                limit: limits.max_index_region_bytes,
            });
        }
        let suffix_start = object_len - suffix_len;
        if footer.index_region_offset < suffix_start {
            return Ok(SuffixOpen::NeedMore { start: footer.index_region_offset });
        }
        let region_start = (footer.index_region_offset - suffix_start) as usize;
        let region = &suffix[region_start..suffix.len() - FOOTER_LEN];
        Self::from_region(footer, object_len, region, limits).map(|index| SuffixOpen::Ready(Box::new(index)))
    }

    /// Reads footer and index from a seekable source, with one suffix read of
    /// `suffix_bytes` and, only if the index is larger, one more read.
    pub fn open_from<R: Read + Seek>(
        source: &mut R,
        object_len: u64,
        suffix_bytes: u64,
        limits: &ReadLimits,
    ) -> Result<SegmentIndex, ReadError> {
        let first = suffix_bytes.max(FOOTER_LEN as u64).min(object_len);
        let suffix = read_range(source, object_len - first, object_len)?;
        match Self::open_suffix(&suffix, object_len, limits)? {
            SuffixOpen::Ready(index) => Ok(*index),
            SuffixOpen::NeedMore { start } => {
                let tail = read_range(source, start, object_len)?;
                match Self::open_suffix(&tail, object_len, limits)? {
                    SuffixOpen::Ready(index) => Ok(*index),
                    SuffixOpen::NeedMore { .. } => {
                        Err(ReadError::Corrupt { reason: "index region moved between reads" })
                    }
                }
            }
        }
    }

    fn from_region(footer: Footer, object_len: u64, region: &[u8], limits: &ReadLimits) -> Result<Self, ReadError> {
        debug_assert_eq!(region.len() as u64, footer.index_region_len);
        if *blake3::hash(region).as_bytes() != footer.index_checksum {
            return Err(ReadError::IndexChecksum);
        }
        let dictionary_len = footer.dictionary_len as usize;
        if dictionary_len > region.len() {
            return Err(ReadError::Corrupt { reason: "dictionary longer than the index region" });
        }
        let (dictionary_bytes, stored_block) = region.split_at(dictionary_len);
        if footer.index_raw_len > limits.max_index_raw_bytes {
            return Err(ReadError::TooLarge {
                what: "index block",
                len: footer.index_raw_len,
                limit: limits.max_index_raw_bytes,
            });
        }
        let block = if footer.index_codec == INDEX_CODEC_ZSTD {
            compress::decode(Codec::Zstd, stored_block, footer.index_raw_len, None, limits.max_index_raw_bytes)
                .map_err(|_| ReadError::Corrupt { reason: "index block does not decompress" })?
        } else {
            if stored_block.len() as u64 != footer.index_raw_len {
                return Err(ReadError::Corrupt { reason: "raw index block length mismatch" });
            }
            stored_block.to_vec()
        };
        let parsed = parse_index_block(&block)?;
        let mut index = SegmentIndex {
            footer,
            object_len,
            dictionary: (!dictionary_bytes.is_empty()).then(|| dictionary_bytes.to_vec()),
            content_types: parsed.content_types,
            uid_pool: parsed.uid_pool,
            entries: parsed.entries,
            fingerprints: Vec::new(),
        };
        index.check_entries()?;
        Ok(index)
    }

    /// Structural checks on the parsed entries (see the module docs); records the
    /// fingerprints of a format 2 index.
    fn check_entries(&mut self) -> Result<(), ReadError> {
        if self.entries.len() as u64 != self.footer.entry_count {
            return Err(ReadError::Corrupt { reason: "entry count disagrees with the footer" });
        }
        if self.entries.is_empty() {
            return Err(ReadError::Corrupt { reason: "segment has no files" });
        }
        let version = self.footer.format_version;
        let mut fingerprints = Vec::with_capacity(if version == 1 { 0 } else { self.entries.len() });
        let mut expected_offset = HEADER_LEN as u64;
        let mut previous: Option<(u64, &str)> = None;
        for entry in &self.entries {
            let uid = self.uid_of(entry).ok_or(ReadError::Corrupt { reason: "uid out of pool bounds or not utf-8" })?;
            if crate::routing::validate_uid(uid).is_err() {
                return Err(ReadError::Corrupt { reason: "invalid uid in index" });
            }
            // Format 1 sorts by uid alone: a constant fingerprint reduces to that.
            let fingerprint = if version == 1 { 0 } else { uid_fingerprint(uid) };
            if previous.is_some_and(|previous| previous >= (fingerprint, uid)) {
                return Err(ReadError::Corrupt { reason: "index not strictly sorted" });
            }
            previous = Some((fingerprint, uid));
            if version != 1 {
                fingerprints.push(fingerprint);
            }
            if usize::from(entry.content_type) >= self.content_types.len() {
                return Err(ReadError::Corrupt { reason: "content type id out of range" });
            }
            if crate::timestamp::Timestamp::from_micros(entry.created_at_micros).is_err() {
                return Err(ReadError::Corrupt { reason: "created_at out of range" });
            }
            if entry.data_offset != expected_offset {
                return Err(ReadError::Corrupt { reason: "data records are not contiguous" });
            }
            if entry.codec == Codec::Raw && entry.stored_len != entry.raw_len {
                return Err(ReadError::Corrupt { reason: "raw record with stored_len != raw_len" });
            }
            if entry.codec == Codec::ZstdDict && self.dictionary.is_none() {
                return Err(ReadError::Corrupt { reason: "dictionary codec without a dictionary" });
            }
            expected_offset = entry
                .data_offset
                .checked_add(entry.record_len(version))
                .ok_or(ReadError::Corrupt { reason: "record offset overflow" })?;
        }
        if expected_offset != self.footer.index_region_offset {
            return Err(ReadError::Corrupt { reason: "data records do not end where the index begins" });
        }
        let leaves: Vec<Hash> = self.entries.iter().map(|entry| merkle::leaf_hash(&entry.content_hash)).collect();
        if merkle::root_of_leaf_hashes(&leaves) != self.footer.merkle_root {
            return Err(ReadError::MerkleRoot);
        }
        self.fingerprints = fingerprints;
        Ok(())
    }

    fn uid_of(&self, entry: &IndexEntry) -> Option<&str> {
        let start = entry.uid_offset as usize;
        let end = start.checked_add(usize::from(entry.uid_len))?;
        if !self.uid_pool.is_char_boundary(start) || !self.uid_pool.is_char_boundary(end) {
            return None;
        }
        self.uid_pool.get(start..end)
    }

    fn file_ref<'a>(&'a self, entry: &'a IndexEntry) -> FileRef<'a> {
        FileRef {
            // Both lookups were validated in check_entries.
            uid: self.uid_of(entry).unwrap_or_default(),
            content_type: self.content_types.get(usize::from(entry.content_type)).map_or("", String::as_str),
            entry,
            format_version: self.footer.format_version,
        }
    }

    pub fn format_version(&self) -> u16 {
        self.footer.format_version
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    pub fn object_len(&self) -> u64 {
        self.object_len
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn dictionary(&self) -> Option<&[u8]> {
        self.dictionary.as_deref()
    }

    /// All files in index (and DATA) order: by uid in format 1, by uid fingerprint and
    /// then uid in format 2.
    pub fn files(&self) -> impl Iterator<Item = FileRef<'_>> {
        self.entries.iter().map(|entry| self.file_ref(entry))
    }

    /// Binary search by uid (format 2: by fingerprint, then uid).
    pub fn find(&self, uid: &str) -> Option<FileRef<'_>> {
        let position = if self.footer.format_version == 1 {
            self.entries.binary_search_by(|entry| self.uid_of(entry).unwrap_or_default().cmp(uid)).ok()?
        } else {
            let fingerprint = uid_fingerprint(uid);
            let start = self.fingerprints.partition_point(|&f| f < fingerprint);
            let end = start + self.fingerprints[start..].partition_point(|&f| f == fingerprint);
            start + self.entries[start..end].iter().position(|entry| self.uid_of(entry) == Some(uid))?
        };
        Some(self.file_ref(&self.entries[position]))
    }

    /// Decodes a file from its DATA record (`file.record_range()` of the object) and
    /// checks the record's framing and the BLAKE3 of the result against the index.
    pub fn decode(&self, file: FileRef<'_>, record: &[u8], limits: &ReadLimits) -> Result<Vec<u8>, ReadError> {
        let entry = file.entry;
        let expected = entry.record_len(file.format_version);
        if record.len() as u64 != expected {
            return Err(ReadError::RecordLength { uid: file.uid.to_owned(), expected, actual: record.len() as u64 });
        }
        let stored = if file.format_version == 1 {
            let (stored, trailer) = record.split_at(entry.stored_len as usize);
            if trailer != entry.content_hash {
                return Err(ReadError::HashMismatch { uid: file.uid.to_owned() });
            }
            stored
        } else {
            let (header, header_len) = RecordHeader::decode(record)?;
            let agrees = header.uid == file.uid
                && header.codec == entry.codec
                && header.content_type == entry.content_type
                && header.created_at_micros == entry.created_at_micros
                && header.stored_len == entry.stored_len
                && header.raw_len == entry.raw_len
                && header.content_hash == entry.content_hash;
            if !agrees {
                return Err(ReadError::Record { uid: file.uid.to_owned(), reason: "header disagrees with the index" });
            }
            &record[header_len..]
        };
        decode_payload(
            file.uid,
            entry.codec,
            stored,
            entry.raw_len,
            &entry.content_hash,
            self.dictionary.as_deref(),
            limits,
        )
    }

    /// Looks up `uid` and reads and decodes its record from `source` with one ranged read.
    pub fn read_file<R: Read + Seek>(
        &self,
        source: &mut R,
        uid: &str,
        limits: &ReadLimits,
    ) -> Result<Vec<u8>, ReadError> {
        let file = self.find(uid).ok_or_else(|| ReadError::NotFound { uid: uid.to_owned() })?;
        let range = file.record_range();
        let record = read_range(source, range.start, range.end)?;
        self.decode(file, &record, limits)
    }
}

/// Decodes a stored payload with an output limit of `raw_len` and checks its BLAKE3.
fn decode_payload(
    uid: &str,
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
    content_hash: &Hash,
    dictionary: Option<&[u8]>,
    limits: &ReadLimits,
) -> Result<Vec<u8>, ReadError> {
    let decoded =
        compress::decode(codec, stored, u64::from(raw_len), dictionary, limits.max_file_bytes).map_err(|source| {
            match source {
                DecodeError::TooLarge { raw_len, limit } => ReadError::TooLarge { what: "file", len: raw_len, limit },
                other => ReadError::Decode { uid: uid.to_owned(), source: other },
            }
        })?;
    if blake3::hash(&decoded).as_bytes() != content_hash {
        return Err(ReadError::HashMismatch { uid: uid.to_owned() });
    }
    Ok(decoded)
}

/// The part of a format 2 segment's index a long-running reader keeps: for each file, the
/// top 32 bits of its uid fingerprint and the offset of its record (4 bytes each), in
/// DATA order, plus the per-segment content type table and dictionary. A record's length
/// is the distance to the next offset, and its header names its uid, so a read fetches
/// the record, checks the uid and decodes it; nothing else per file is needed. A uid that
/// is not in the segment shares 32 fingerprint bits with one that is with odds of about
/// n / 2^32 (n files): that costs one wasted GET, never a wrong answer.
#[derive(Debug, Clone)]
pub struct LookupIndex {
    fingerprints: Box<[u32]>,
    offsets: Box<[u32]>,
    data_end: u64,
    content_types: Box<[Box<str>]>,
    dictionary: Option<Box<[u8]>>,
}

/// A file decoded from a record found through a [`LookupIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookedUp {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub content_hash: Hash,
    pub created_at_micros: i64,
}

impl LookupIndex {
    /// The compact form of a verified index. `None` for a format 1 segment (its records
    /// do not say whose they are) and for one whose DATA reaches past 4 GiB.
    pub fn from_index(index: &SegmentIndex) -> Option<LookupIndex> {
        if index.format_version() == 1 {
            return None;
        }
        let data_end = index.footer.index_region_offset;
        u32::try_from(data_end).ok()?;
        Some(LookupIndex {
            fingerprints: index.fingerprints.iter().map(|&f| short_fingerprint(f)).collect(),
            // Every offset is below data_end, checked above.
            offsets: index.entries.iter().map(|entry| entry.data_offset as u32).collect(),
            data_end,
            content_types: index.content_types.iter().map(|t| t.as_str().into()).collect(),
            dictionary: index.dictionary.as_deref().map(Box::from),
        })
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Bytes per file: 8. Plus [`LookupIndex::segment_bytes`] per segment.
    pub fn lookup_bytes(&self) -> usize {
        self.fingerprints.len() * std::mem::size_of::<u32>() + self.offsets.len() * std::mem::size_of::<u32>()
    }

    /// Resident bytes that do not grow with the file count, except the dictionary.
    pub fn segment_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.content_types.iter().map(|t| t.len() + std::mem::size_of::<Box<str>>()).sum::<usize>()
    }

    pub fn dictionary_bytes(&self) -> usize {
        self.dictionary.as_ref().map_or(0, |d| d.len())
    }

    /// Everything this index keeps resident.
    pub fn resident_bytes(&self) -> usize {
        self.lookup_bytes() + self.segment_bytes() + self.dictionary_bytes()
    }

    /// Byte ranges of the records whose uid shares `uid`'s 32 fingerprint bits, in DATA
    /// order: almost always none or one.
    pub fn candidates(&self, uid: &str) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        let fingerprint = short_fingerprint(uid_fingerprint(uid));
        let start = self.fingerprints.partition_point(|&f| f < fingerprint);
        self.fingerprints[start..].iter().take_while(move |&&f| f == fingerprint).enumerate().map(move |(i, _)| {
            let position = start + i;
            let end = self.offsets.get(position + 1).map_or(self.data_end, |&next| u64::from(next));
            u64::from(self.offsets[position])..end
        })
    }

    /// Decodes a record fetched from one of [`LookupIndex::candidates`]. `Ok(None)` when
    /// the record belongs to another uid (a fingerprint collision); an error when the
    /// record is corrupt or fails its content hash.
    pub fn decode(&self, uid: &str, record: &[u8], limits: &ReadLimits) -> Result<Option<LookedUp>, ReadError> {
        let (header, header_len) = RecordHeader::decode(record)?;
        if header.uid != uid {
            return Ok(None);
        }
        if record.len() - header_len != header.stored_len as usize {
            let expected = (header_len + header.stored_len as usize) as u64;
            return Err(ReadError::RecordLength { uid: uid.to_owned(), expected, actual: record.len() as u64 });
        }
        let content_type = self
            .content_types
            .get(usize::from(header.content_type))
            .ok_or(ReadError::Record { uid: uid.to_owned(), reason: "content type id out of range" })?;
        if header.codec == Codec::Raw && header.stored_len != header.raw_len {
            return Err(ReadError::Record { uid: uid.to_owned(), reason: "raw record with stored_len != raw_len" });
        }
        let bytes = decode_payload(
            uid,
            header.codec,
            &record[header_len..],
            header.raw_len,
            &header.content_hash,
            self.dictionary.as_deref(),
            limits,
        )?;
        Ok(Some(LookedUp {
            bytes,
            content_type: content_type.to_string(),
            content_hash: header.content_hash,
            created_at_micros: header.created_at_micros,
        }))
    }
}

/// What a [`LookupIndex`] keeps of a fingerprint: its top 32 bits, which keep the order.
fn short_fingerprint(fingerprint: u64) -> u32 {
    (fingerprint >> 32) as u32
}

struct ParsedBlock {
    content_types: Vec<String>,
    uid_pool: String,
    entries: Vec<IndexEntry>,
}

/// A bounds-checked cursor over the index block.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], ReadError> {
        let end = self.position.checked_add(len).ok_or(ReadError::Corrupt { reason: "index length overflow" })?;
        let slice = self.bytes.get(self.position..end).ok_or(ReadError::Corrupt { reason: "index block truncated" })?;
        self.position = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ReadError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

fn parse_index_block(block: &[u8]) -> Result<ParsedBlock, ReadError> {
    let mut cursor = Cursor { bytes: block, position: 0 };
    let entry_count = cursor.u32()? as usize;
    let type_count = usize::from(cursor.u16()?);
    // Each content type takes at least 2 bytes, so this bound is checked by the input size.
    if type_count.saturating_mul(2) > block.len() {
        return Err(ReadError::Corrupt { reason: "content type count exceeds the index block" });
    }
    let mut content_types = Vec::with_capacity(type_count);
    for _ in 0..type_count {
        let len = usize::from(cursor.u8()?);
        let name = std::str::from_utf8(cursor.take(len)?)
            .map_err(|_| ReadError::Corrupt { reason: "content type is not utf-8" })?;
        if name.is_empty() || !name.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
            return Err(ReadError::Corrupt { reason: "content type is not printable ascii" });
        }
        content_types.push(name.to_owned());
    }
    let pool_len = cursor.u32()? as usize;
    let uid_pool = std::str::from_utf8(cursor.take(pool_len)?)
        .map_err(|_| ReadError::Corrupt { reason: "uid pool is not utf-8" })?
        .to_owned();
    let remaining = block.len() - cursor.position;
    if entry_count.checked_mul(INDEX_ENTRY_LEN) != Some(remaining) {
        return Err(ReadError::Corrupt { reason: "entry table size disagrees with entry count" });
    }
    let mut entries = Vec::with_capacity(entry_count);
    for _ in 0..entry_count {
        entries.push(IndexEntry::decode(cursor.take(INDEX_ENTRY_LEN)?)?);
    }
    Ok(ParsedBlock { content_types, uid_pool, entries })
}

fn read_range<R: Read + Seek>(source: &mut R, start: u64, end: u64) -> Result<Vec<u8>, ReadError> {
    debug_assert!(start <= end);
    source.seek(SeekFrom::Start(start))?;
    let mut buffer = Vec::new();
    source.take(end - start).read_to_end(&mut buffer)?;
    if buffer.len() as u64 != end - start {
        return Err(ReadError::Corrupt { reason: "object shorter than its footer says" });
    }
    Ok(buffer)
}

/// What a full verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub header: Header,
    pub files: u64,
    pub raw_bytes: u64,
    pub object_len: u64,
    /// BLAKE3 of the whole object.
    pub object_hash: Hash,
    pub merkle_root: Hash,
}

/// Re-reads a whole segment: header, footer, index, and every file with its hash, plus
/// the BLAKE3 of the entire object. Reads sequentially with memory bounded by the index
/// and the largest file.
pub fn verify_segment<R: Read + Seek>(
    source: &mut R,
    object_len: u64,
    limits: &ReadLimits,
) -> Result<VerifyReport, ReadError> {
    if object_len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(LayoutError::Truncated {
            what: "segment",
            need: HEADER_LEN + FOOTER_LEN,
            have: object_len as usize,
        }
        .into());
    }
    let index = SegmentIndex::open_from(source, object_len, 64 * 1024, limits)?;
    source.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::with_capacity(256 * 1024, source.by_ref().take(object_len));
    let mut object_hasher = blake3::Hasher::new();
    let mut header_bytes = [0u8; HEADER_LEN];
    reader.read_exact(&mut header_bytes)?;
    object_hasher.update(&header_bytes);
    let header = Header::decode(&header_bytes)?;
    if header.format_version != index.format_version() {
        return Err(ReadError::Corrupt { reason: "header and footer disagree on the format version" });
    }
    let mut raw_bytes = 0u64;
    let mut record = Vec::new();
    let mut data_hasher = blake3::Hasher::new();
    for file in index.files() {
        let record_len = file.entry.record_len(file.format_version);
        record.clear();
        (&mut reader).take(record_len).read_to_end(&mut record)?;
        if record.len() as u64 != record_len {
            return Err(ReadError::Corrupt { reason: "object shorter than its index says" });
        }
        object_hasher.update(&record);
        let stored = if file.format_version == 1 {
            &record[..file.entry.stored_len as usize]
        } else {
            &record[record.len() - file.entry.stored_len as usize..]
        };
        let stored_hash =
            if file.entry.codec == Codec::Raw { file.entry.content_hash } else { *blake3::hash(stored).as_bytes() };
        data_hasher.update(&stored_hash);
        let decoded = index.decode(file, &record, limits)?;
        raw_bytes += decoded.len() as u64;
    }
    if *data_hasher.finalize().as_bytes() != index.footer().data_checksum {
        return Err(ReadError::DataChecksum);
    }
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail)?;
    object_hasher.update(&tail);
    if tail.len() as u64 != index.footer().index_region_len + FOOTER_LEN as u64 {
        return Err(ReadError::Corrupt { reason: "object length changed during verification" });
    }
    Ok(VerifyReport {
        header,
        files: index.len() as u64,
        raw_bytes,
        object_len,
        object_hash: *object_hasher.finalize().as_bytes(),
        merkle_root: index.footer().merkle_root,
    })
}
