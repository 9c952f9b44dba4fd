//! FORMAT.md is precise enough to write a reader from: `tools/vera_read.py` is such a
//! reader, written in Python from the spec alone. It must read every segment the Rust
//! writer produces (raw, zstd, zstd with dictionary, lz4), check every checksum, hash and
//! Merkle root, and agree with the Rust side on what is there.
//!
//! Needs `VERA_PYTHON`, an interpreter with blake3, crc32c, lz4 and zstandard; the
//! README's test command (`./scripts/test`) sets it up with `scripts/python-env`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("VERA_PYTHON").unwrap_or_else(|_| {
        panic!("VERA_PYTHON is not set: run ./scripts/test, or export VERA_PYTHON=$(./scripts/python-env)")
    })
}

fn reader() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/vera_read.py")
}

fn demo(data_dir: &Path, compression: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vera"))
        .args(["demo", "--files", "3000", "--days", "2", "--slot-rows", "1000", "--json", "--compression", compression])
        .args(["--data-dir", &data_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn python_read(store: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(python()).arg(reader()).arg(store).output().unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(out.status.success(), "python reader failed: {lines:?} {}", String::from_utf8_lossy(&out.stderr));
    lines
}

#[test]
fn an_independent_python_reader_agrees_with_the_rust_writer() {
    for compression in ["ratio", "speed"] {
        let dir = tempfile::tempdir().unwrap();
        let summary = demo(dir.path(), compression);
        let segments = python_read(&dir.path().join("store/objects"));
        // Every segment the workers wrote (staging ones stay, locked, after the demo's
        // compaction pass) and every generation that pass wrote.
        let merged = summary["compaction"]["segments_written"].as_array().unwrap().len() as u64;
        assert_eq!(segments.len() as u64, summary["segments"].as_u64().unwrap() + merged, "{compression}");
        let current = u64::from(vera_protocol::shard::FORMAT_VERSION);
        assert!(segments.iter().all(|s| s["format_version"].as_u64() == Some(current)), "{compression}");
        let staging = u64::from(vera_protocol::routing::STAGING_GENERATION);
        let (generations, staged): (Vec<_>, Vec<_>) =
            segments.iter().partition(|s| s["generation"].as_u64() != Some(staging));
        assert!(!staged.is_empty(), "1,000-row slots over 2 days stage their late rows: {compression}");
        // After the pass every file is in exactly one generation.
        let files: u64 = generations.iter().map(|s| s["files"].as_u64().unwrap()).sum();
        assert_eq!(files, summary["files"].as_u64().unwrap(), "{compression}");
        let raw: u64 = generations.iter().map(|s| s["raw_bytes"].as_u64().unwrap()).sum();
        assert_eq!(raw, summary["bytes_in"].as_u64().unwrap(), "{compression}");
    }
}

/// The format 1 segment kept in the protocol's fixtures reads in Python too.
#[test]
fn the_python_reader_reads_format_1() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/fixtures/format1-segment.vera");
    let segments = python_read(&fixture);
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0]["format_version"], 1);
    assert_eq!(segments[0]["files"], 132);
}

#[test]
fn the_python_reader_rejects_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path(), "ratio");
    let segment = walk(&dir.path().join("store/objects"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "vera"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let copy = dir.path().join("flipped.vera");
    std::fs::write(&copy, bytes).unwrap();
    let out = Command::new(python()).arg(reader()).arg(&copy).output().unwrap();
    assert!(!out.status.success(), "a corrupt segment must be refused: {}", String::from_utf8_lossy(&out.stdout));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
