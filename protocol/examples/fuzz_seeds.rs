//! Writes seed corpora for the cargo-fuzz targets: real segments (with and without a
//! dictionary), sidecars and every message type, so fuzzing starts from valid structure.
//!
//! `cargo run -p vera-protocol --example fuzz_seeds -- protocol/fuzz/corpus`

use std::io::Cursor;
use std::path::PathBuf;

use vera_protocol::Timestamp;
use vera_protocol::routing::locate_shard;
use vera_protocol::shard::{FileInput, SegmentSettings, SegmentWriter};
use vera_protocol::sidecar::{LegalHold, Sidecar, Tombstone, TombstoneReason};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "protocol/fuzz/corpus".into()));
    let day = Timestamp::parse("2026-11-24T00:00:00Z")?;
    let addr = locate_shard("seed", day, 0)?;
    let shard_dir = root.join("shard_reader");
    std::fs::create_dir_all(&shard_dir)?;
    for (name, count) in [("tiny", 1usize), ("small", 5), ("dictionary", 80)] {
        let mut writer = SegmentWriter::new(SegmentSettings::new(addr, 0), Cursor::new(Vec::new()))?;
        for i in 0..count {
            let body =
                format!("{{\"id\":{i},\"name\":\"record {i}\",\"ok\":true,\"pad\":\"{}\"}}", "ab".repeat(i % 50));
            writer.add(FileInput {
                uid: &format!("u{i}"),
                created_at: day,
                content_type: None,
                bytes: body.as_bytes(),
            })?;
        }
        let mut out = Vec::new();
        let sealed = writer.finish(&mut out)?;
        std::fs::write(shard_dir.join(name), &out)?;
        // The structure-aware target takes data || dictionary || raw index block.
        let footer = sealed.footer;
        let data = &out[64..footer.index_region_offset as usize];
        let region_end = (footer.index_region_offset + footer.index_region_len) as usize;
        let dictionary_end = footer.index_region_offset as usize + footer.dictionary_len as usize;
        let dictionary = &out[footer.index_region_offset as usize..dictionary_end];
        let stored_block = &out[dictionary_end..region_end];
        let block = if footer.index_codec == 1 {
            zstd::bulk::decompress(stored_block, footer.index_raw_len as usize)?
        } else {
            stored_block.to_vec()
        };
        if let (Ok(data_len), Ok(dictionary_len)) = (u16::try_from(data.len()), u8::try_from(dictionary.len())) {
            let mut seed = data_len.to_le_bytes().to_vec();
            seed.extend_from_slice(&[dictionary_len, 1]);
            seed.extend_from_slice(data);
            seed.extend_from_slice(dictionary);
            seed.extend_from_slice(&block);
            std::fs::create_dir_all(root.join("shard_index"))?;
            std::fs::write(root.join("shard_index").join(name), seed)?;
        }
    }
    let sidecar_dir = root.join("sidecar");
    std::fs::create_dir_all(&sidecar_dir)?;
    let mut sidecar = Sidecar::new(addr.segment_key(0), [7; 32]);
    let tombstone =
        Tombstone { at: day, reason: TombstoneReason::GdprErasure, request_id: "r1".into(), operator: "op".into() };
    sidecar.tombstone("u1", tombstone)?;
    sidecar.set_hold("u2", LegalHold { set_at: day, request_id: "r2".into(), operator: "op".into() })?;
    std::fs::write(sidecar_dir.join("sidecar"), sidecar.encode())?;
    let envelope_dir = root.join("envelope");
    std::fs::create_dir_all(&envelope_dir)?;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envelope_v1");
    for entry in std::fs::read_dir(fixtures)? {
        let entry = entry?;
        std::fs::copy(entry.path(), envelope_dir.join(entry.file_name()))?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
