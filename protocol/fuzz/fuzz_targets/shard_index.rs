//! Structure-aware companion to `shard_reader`: random bytes rarely get past the footer
//! CRC and the BLAKE3 index checksum, so this target wraps fuzzer-chosen DATA, dictionary
//! and index-block bytes in a segment whose header, footer and checksums are all correct.
//! That drives the index parser and every structural check behind the checksums.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vera_protocol::merkle;
use vera_protocol::shard::layout::{Footer, Header, HEADER_LEN, INDEX_CODEC_RAW, INDEX_CODEC_ZSTD};
use vera_protocol::shard::{verify_segment, LookupIndex, ReadLimits, SegmentIndex, SuffixOpen};
use vera_protocol::locate_shard;
use vera_protocol::Timestamp;

fuzz_target!(|input: &[u8]| {
    // Input: data_len (u16 LE), dictionary_len (u8), flags (bit 0: zstd index, bit 1:
    // format version 1 instead of 2), then data || dictionary || index block.
    if input.len() < 4 {
        return;
    }
    let rest = &input[4..];
    let data_len = usize::from(u16::from_le_bytes([input[0], input[1]])) % (rest.len() + 1);
    let dictionary_len = usize::from(input[2]);
    let compress_index = input[3] & 1 == 1;
    let format_version = if input[3] & 2 == 2 { 1 } else { 2 };
    let (data, tail) = rest.split_at(data_len.min(rest.len()));
    let (dictionary, block) = tail.split_at(dictionary_len.min(tail.len()));
    let stored_block = if compress_index { zstd_frame(block) } else { block.to_vec() };

    let Ok(created_at) = Timestamp::from_micros(0) else { return };
    let Ok(addr) = locate_shard("fuzz", created_at, 0) else { return };
    let mut object = Header { format_version, addr, generation: 0 }.encode().to_vec();
    object.extend_from_slice(data);
    let index_region_offset = object.len() as u64;
    object.extend_from_slice(dictionary);
    object.extend_from_slice(&stored_block);
    let region = &object[index_region_offset as usize..];
    let footer = Footer {
        format_version,
        index_region_offset,
        index_region_len: region.len() as u64,
        dictionary_len: dictionary.len() as u32,
        index_codec: if compress_index { INDEX_CODEC_ZSTD } else { INDEX_CODEC_RAW },
        index_raw_len: block.len() as u64,
        entry_count: u64::from(block.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        data_len: (index_region_offset - HEADER_LEN as u64),
        index_checksum: *blake3::hash(region).as_bytes(),
        data_checksum: *blake3::hash(data).as_bytes(),
        merkle_root: plausible_merkle_root(block),
    };
    object.extend_from_slice(&footer.encode());
    let limits = ReadLimits { max_index_region_bytes: 1 << 20, max_index_raw_bytes: 1 << 22, max_file_bytes: 1 << 22 };
    if let Ok(SuffixOpen::Ready(index)) = SegmentIndex::open_suffix(&object, object.len() as u64, &limits) {
        let uids: Vec<String> = index.files().map(|file| file.uid.to_owned()).collect();
        for uid in &uids {
            let _ = index.read_file(&mut Cursor::new(&object), uid, &limits);
        }
        // The reader service's compact form, reading each record from its offset to the next.
        if let Some(lookup) = LookupIndex::from_index(&index) {
            for uid in &uids {
                for range in lookup.candidates(uid) {
                    if let Some(record) = object.get(range.start as usize..range.end as usize) {
                        let _ = lookup.decode(uid, record, &limits);
                    }
                }
            }
        }
    }
    let _ = verify_segment(&mut Cursor::new(&object), object.len() as u64, &limits);
});

/// The entries sit at the end of the block, 68 bytes each, hash at offset 36: compute the
/// root the reader will expect, so fuzzing reaches the decode path.
fn plausible_merkle_root(block: &[u8]) -> merkle::Hash {
    let count = block.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let table_len = count.saturating_mul(68);
    if table_len > block.len() {
        return merkle::root::<&[u8]>(&[]);
    }
    let table = &block[block.len() - table_len..];
    let leaves: Vec<merkle::Hash> = table
        .chunks_exact(68)
        .map(|entry| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&entry[36..68]);
            merkle::leaf_hash(&hash)
        })
        .collect();
    merkle::root_of_leaf_hashes(&leaves)
}

fn zstd_frame(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 1).unwrap_or_default()
}
