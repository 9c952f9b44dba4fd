//! Fixed-size structures of the `.vera` format, encoded little-endian. FORMAT.md is the
//! normative description; every constant here appears there with the same value.

use crate::compress::Codec;
use crate::merkle::Hash;
use crate::routing::{ShardAddr, TimeGranularity};

/// `.vera` format version written by default. Version 2 stores records in uid
/// fingerprint order, each with a self-describing header, so that a reader can keep 12
/// bytes per file (fingerprint and offset) and still check every read.
pub const FORMAT_VERSION: u16 = 2;
/// Oldest format version this code reads and can still write (segments are kept for
/// decades; every version ever written stays readable).
pub const MIN_FORMAT_VERSION: u16 = 1;
/// First 8 bytes of every segment.
pub const HEADER_MAGIC: [u8; 8] = *b"VERA\x00SEG";
/// Last 8 bytes of every segment.
pub const FOOTER_MAGIC: [u8; 8] = *b"VERA\x00END";
pub const HEADER_LEN: usize = 64;
pub const FOOTER_LEN: usize = 160;
pub const INDEX_ENTRY_LEN: usize = 68;
/// Version 1: each payload in DATA is followed by the 32-byte BLAKE3 of the file's raw
/// content.
pub const TRAILER_LEN: usize = 32;
/// Version 2: fixed part of a record header, before the uid.
pub const RECORD_HEADER_FIXED_LEN: usize = 52;
/// Version 2: the CRC-32C after the uid that closes a record header.
pub const RECORD_HEADER_CRC_LEN: usize = 4;
/// Index block codec byte: stored as is.
pub const INDEX_CODEC_RAW: u8 = 0;
/// Index block codec byte: one zstd frame.
pub const INDEX_CODEC_ZSTD: u8 = 1;
/// Longest content type string in the content type table.
pub const MAX_CONTENT_TYPE_LEN: usize = 127;

/// Why a fixed structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("bad magic in {what}")]
    BadMagic { what: &'static str },
    #[error("{what} checksum mismatch")]
    Checksum { what: &'static str },
    #[error("unsupported format version {version} (this reader knows {MIN_FORMAT_VERSION}..={FORMAT_VERSION})")]
    UnsupportedVersion { version: u16 },
    #[error("{what} field {field} is invalid")]
    Invalid { what: &'static str, field: &'static str },
    #[error("{what} is truncated: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
}

/// Segment header: identifies the segment without the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format_version: u16,
    pub addr: ShardAddr,
    pub generation: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&HEADER_MAGIC);
        out[8..10].copy_from_slice(&self.format_version.to_le_bytes());
        out[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        out[12..14].copy_from_slice(&self.addr.epoch.to_le_bytes());
        out[14] = self.addr.granularity.code();
        out[15] = self.addr.n_bits;
        out[16..20].copy_from_slice(&self.addr.time_bucket.to_le_bytes());
        out[20..24].copy_from_slice(&self.addr.bucket.to_le_bytes());
        out[24..28].copy_from_slice(&self.generation.to_le_bytes());
        // 28..60 reserved, zero.
        let crc = crc32c::crc32c(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Header, LayoutError> {
        const WHAT: &str = "header";
        let bytes = bytes.get(..HEADER_LEN).ok_or(LayoutError::Truncated {
            what: WHAT,
            need: HEADER_LEN,
            have: bytes.len(),
        })?;
        if bytes[0..8] != HEADER_MAGIC {
            return Err(LayoutError::BadMagic { what: WHAT });
        }
        if crc32c::crc32c(&bytes[0..60]) != le_u32(bytes, 60) {
            return Err(LayoutError::Checksum { what: WHAT });
        }
        let format_version = checked_version(le_u16(bytes, 8))?;
        if usize::from(le_u16(bytes, 10)) != HEADER_LEN {
            return Err(LayoutError::Invalid { what: WHAT, field: "header_len" });
        }
        if bytes[28..60].iter().any(|&b| b != 0) {
            return Err(LayoutError::Invalid { what: WHAT, field: "reserved" });
        }
        let granularity =
            TimeGranularity::from_code(bytes[14]).ok_or(LayoutError::Invalid { what: WHAT, field: "granularity" })?;
        let addr = ShardAddr::new(le_u16(bytes, 12), granularity, le_i32(bytes, 16), bytes[15], le_u32(bytes, 20))
            .map_err(|_| LayoutError::Invalid { what: WHAT, field: "shard_addr" })?;
        Ok(Header { format_version, addr, generation: le_u32(bytes, 24) })
    }
}

/// Segment footer: the fixed-size tail a reader finds first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Equal to the header's.
    pub format_version: u16,
    pub index_region_offset: u64,
    pub index_region_len: u64,
    pub dictionary_len: u32,
    pub index_codec: u8,
    pub index_raw_len: u64,
    pub entry_count: u64,
    pub data_len: u64,
    pub index_checksum: Hash,
    /// BLAKE3 over the concatenated BLAKE3 digests of every stored payload, in index
    /// order (for a raw payload that digest is its content hash, so it costs nothing).
    /// Together with the per-record check (format 1: the trailer; format 2: the record
    /// header against the index) it covers every DATA byte.
    pub data_checksum: Hash,
    pub merkle_root: Hash,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0u8; FOOTER_LEN];
        out[0..8].copy_from_slice(&self.index_region_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.index_region_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.dictionary_len.to_le_bytes());
        out[20] = self.index_codec;
        // 21 reserved, zero.
        out[22..24].copy_from_slice(&self.format_version.to_le_bytes());
        out[24..32].copy_from_slice(&self.index_raw_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.entry_count.to_le_bytes());
        out[40..48].copy_from_slice(&self.data_len.to_le_bytes());
        out[48..80].copy_from_slice(&self.index_checksum);
        out[80..112].copy_from_slice(&self.data_checksum);
        out[112..144].copy_from_slice(&self.merkle_root);
        // 144..148 reserved, zero.
        let crc = crc32c::crc32c(&out[0..148]);
        out[148..152].copy_from_slice(&crc.to_le_bytes());
        out[152..160].copy_from_slice(&FOOTER_MAGIC);
        out
    }

    /// Decodes the last `FOOTER_LEN` bytes of a segment.
    pub fn decode(bytes: &[u8]) -> Result<Footer, LayoutError> {
        const WHAT: &str = "footer";
        if bytes.len() != FOOTER_LEN {
            return Err(LayoutError::Truncated { what: WHAT, need: FOOTER_LEN, have: bytes.len() });
        }
        if bytes[152..160] != FOOTER_MAGIC {
            return Err(LayoutError::BadMagic { what: WHAT });
        }
        if crc32c::crc32c(&bytes[0..148]) != le_u32(bytes, 148) {
            return Err(LayoutError::Checksum { what: WHAT });
        }
        let format_version = checked_version(le_u16(bytes, 22))?;
        if bytes[21] != 0 || bytes[144..148].iter().any(|&b| b != 0) {
            return Err(LayoutError::Invalid { what: WHAT, field: "reserved" });
        }
        let index_codec = bytes[20];
        if index_codec != INDEX_CODEC_RAW && index_codec != INDEX_CODEC_ZSTD {
            return Err(LayoutError::Invalid { what: WHAT, field: "index_codec" });
        }
        Ok(Footer {
            format_version,
            index_region_offset: le_u64(bytes, 0),
            index_region_len: le_u64(bytes, 8),
            dictionary_len: le_u32(bytes, 16),
            index_codec,
            index_raw_len: le_u64(bytes, 24),
            entry_count: le_u64(bytes, 32),
            data_len: le_u64(bytes, 40),
            index_checksum: hash_at(bytes, 48),
            data_checksum: hash_at(bytes, 80),
            merkle_root: hash_at(bytes, 112),
        })
    }

    /// Total object length implied by the footer, or `None` on overflow.
    pub fn object_len(&self) -> Option<u64> {
        self.index_region_offset.checked_add(self.index_region_len)?.checked_add(FOOTER_LEN as u64)
    }
}

/// One file in the index. `uid_offset`/`uid_len` point into the index's uid pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub uid_offset: u32,
    pub uid_len: u16,
    pub content_type: u16,
    pub codec: Codec,
    pub created_at_micros: i64,
    pub data_offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub content_hash: Hash,
}

impl IndexEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.uid_offset.to_le_bytes());
        out.extend_from_slice(&self.uid_len.to_le_bytes());
        out.extend_from_slice(&self.content_type.to_le_bytes());
        out.push(self.codec.as_byte());
        out.push(0); // flags, reserved
        out.extend_from_slice(&0u16.to_le_bytes()); // reserved
        out.extend_from_slice(&self.created_at_micros.to_le_bytes());
        out.extend_from_slice(&self.data_offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.content_hash);
    }

    pub fn decode(bytes: &[u8]) -> Result<IndexEntry, LayoutError> {
        const WHAT: &str = "index entry";
        if bytes.len() != INDEX_ENTRY_LEN {
            return Err(LayoutError::Truncated { what: WHAT, need: INDEX_ENTRY_LEN, have: bytes.len() });
        }
        let codec = Codec::from_byte(bytes[8]).ok_or(LayoutError::Invalid { what: WHAT, field: "codec" })?;
        if bytes[9] != 0 || le_u16(bytes, 10) != 0 {
            return Err(LayoutError::Invalid { what: WHAT, field: "reserved" });
        }
        Ok(IndexEntry {
            uid_offset: le_u32(bytes, 0),
            uid_len: le_u16(bytes, 4),
            content_type: le_u16(bytes, 6),
            codec,
            created_at_micros: le_i64(bytes, 12),
            data_offset: le_u64(bytes, 20),
            stored_len: le_u32(bytes, 28),
            raw_len: le_u32(bytes, 32),
            content_hash: hash_at(bytes, 36),
        })
    }

    /// Length of the DATA record: payload plus trailer (version 1), or record header plus
    /// payload (version 2).
    pub fn record_len(&self, format_version: u16) -> u64 {
        let framing = if format_version == 1 {
            TRAILER_LEN
        } else {
            RECORD_HEADER_FIXED_LEN + usize::from(self.uid_len) + RECORD_HEADER_CRC_LEN
        };
        u64::from(self.stored_len) + framing as u64
    }

    /// Byte range of the DATA record within the object.
    pub fn record_range(&self, format_version: u16) -> std::ops::Range<u64> {
        self.data_offset..self.data_offset + self.record_len(format_version)
    }
}

/// Version 2: the header that opens every DATA record, so that a record read alone says
/// whose it is and how to decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub codec: Codec,
    pub content_type: u16,
    pub created_at_micros: i64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub content_hash: Hash,
    pub uid: String,
}

impl RecordHeader {
    /// Encoded length: fixed part, uid, CRC.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_FIXED_LEN + self.uid.len() + RECORD_HEADER_CRC_LEN
    }

    /// Appends the encoded header. The uid must be 1..=255 bytes (checked by the writer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.codec.as_byte());
        out.push(self.uid.len() as u8);
        out.extend_from_slice(&self.content_type.to_le_bytes());
        out.extend_from_slice(&self.created_at_micros.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.content_hash);
        out.extend_from_slice(self.uid.as_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the header at the start of `record`; returns it with its encoded length.
    pub fn decode(record: &[u8]) -> Result<(RecordHeader, usize), LayoutError> {
        const WHAT: &str = "record header";
        let truncated = |need: usize| LayoutError::Truncated { what: WHAT, need, have: record.len() };
        if record.len() < RECORD_HEADER_FIXED_LEN {
            return Err(truncated(RECORD_HEADER_FIXED_LEN));
        }
        let uid_len = usize::from(record[1]);
        let len = RECORD_HEADER_FIXED_LEN + uid_len + RECORD_HEADER_CRC_LEN;
        if record.len() < len {
            return Err(truncated(len));
        }
        if crc32c::crc32c(&record[..len - RECORD_HEADER_CRC_LEN]) != le_u32(record, len - RECORD_HEADER_CRC_LEN) {
            return Err(LayoutError::Checksum { what: WHAT });
        }
        let codec = Codec::from_byte(record[0]).ok_or(LayoutError::Invalid { what: WHAT, field: "codec" })?;
        let uid = std::str::from_utf8(&record[RECORD_HEADER_FIXED_LEN..RECORD_HEADER_FIXED_LEN + uid_len])
            .ok()
            .filter(|uid| crate::routing::validate_uid(uid).is_ok())
            .ok_or(LayoutError::Invalid { what: WHAT, field: "uid" })?;
        let header = RecordHeader {
            codec,
            content_type: le_u16(record, 2),
            created_at_micros: le_i64(record, 4),
            stored_len: le_u32(record, 12),
            raw_len: le_u32(record, 16),
            content_hash: hash_at(record, 20),
            uid: uid.to_owned(),
        };
        Ok((header, len))
    }
}

fn checked_version(version: u16) -> Result<u16, LayoutError> {
    if (MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        Ok(version)
    } else {
        Err(LayoutError::UnsupportedVersion { version })
    }
}

// Callers pass slices whose length was checked above, so the indexing cannot fail.
fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn le_i32(bytes: &[u8], at: usize) -> i32 {
    le_u32(bytes, at) as i32
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

fn le_i64(bytes: &[u8], at: usize) -> i64 {
    le_u64(bytes, at) as i64
}

fn hash_at(bytes: &[u8], at: usize) -> Hash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[at..at + 32]);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::locate_shard;
    use crate::timestamp::Timestamp;

    #[test]
    fn header_round_trip_and_corruption() {
        let addr = locate_shard("u-1", Timestamp::parse("2026-11-24T10:00:00Z").unwrap(), 6).unwrap();
        let header = Header { format_version: FORMAT_VERSION, addr, generation: 3 };
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), header);
        let old = Header { format_version: 1, ..header };
        assert_eq!(Header::decode(&old.encode()).unwrap(), old);
        let future = Header { format_version: FORMAT_VERSION + 1, ..header };
        assert!(
            matches!(Header::decode(&future.encode()), Err(LayoutError::UnsupportedVersion { version }) if version == FORMAT_VERSION + 1)
        );
        for position in 0..HEADER_LEN {
            let mut corrupt = bytes;
            corrupt[position] ^= 0x40;
            assert!(Header::decode(&corrupt).is_err(), "flip at {position} accepted");
        }
        assert!(matches!(Header::decode(&bytes[..10]), Err(LayoutError::Truncated { .. })));
    }

    #[test]
    fn footer_round_trip_and_corruption() {
        let footer = Footer {
            format_version: FORMAT_VERSION,
            index_region_offset: 1000,
            index_region_len: 200,
            dictionary_len: 0,
            index_codec: INDEX_CODEC_ZSTD,
            index_raw_len: 400,
            entry_count: 3,
            data_len: 936,
            index_checksum: [7; 32],
            data_checksum: [8; 32],
            merkle_root: [9; 32],
        };
        let bytes = footer.encode();
        assert_eq!(Footer::decode(&bytes).unwrap(), footer);
        for position in 0..FOOTER_LEN {
            let mut corrupt = bytes;
            corrupt[position] ^= 0x01;
            assert!(Footer::decode(&corrupt).is_err(), "flip at {position} accepted");
        }
    }

    #[test]
    fn record_header_round_trip_and_corruption() {
        let header = RecordHeader {
            codec: Codec::ZstdDict,
            content_type: 3,
            created_at_micros: -5,
            stored_len: 10,
            raw_len: 20,
            content_hash: [0xAB; 32],
            uid: "ü-1".to_owned(),
        };
        let mut bytes = Vec::new();
        header.encode_into(&mut bytes);
        assert_eq!(bytes.len(), header.encoded_len());
        assert_eq!(bytes.len(), RECORD_HEADER_FIXED_LEN + "ü-1".len() + RECORD_HEADER_CRC_LEN);
        bytes.extend_from_slice(b"payload follows");
        assert_eq!(RecordHeader::decode(&bytes).unwrap(), (header.clone(), header.encoded_len()));
        for position in 0..header.encoded_len() {
            let mut corrupt = bytes.clone();
            corrupt[position] ^= 0x10;
            assert!(RecordHeader::decode(&corrupt).is_err(), "flip at {position} accepted");
        }
        for cut in 0..header.encoded_len() {
            assert!(matches!(RecordHeader::decode(&bytes[..cut]), Err(LayoutError::Truncated { .. })), "cut {cut}");
        }
    }
}
