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
        writer.finish(&mut out)?;
        std::fs::write(shard_dir.join(name), out)?;
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
