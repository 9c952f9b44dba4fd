//! The read path over segments of both format versions: compact lookups for format 2,
//! whole indexes for format 1, GETs per read, and the rare uid whose fingerprint bits
//! lead to another uid's record.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingEpoch, RoutingTable, ShardAddr, uid_fingerprint};
use vera_protocol::shard::{FileInput, SegmentSettings, SegmentWriter};
use vera_store::counting::CountingStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, PutOptions};

fn day() -> Timestamp {
    Timestamp::parse("2026-11-24T08:00:00Z").unwrap()
}

/// One address for every uid: n_bits 0.
fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(0).unwrap())
}

fn addr() -> ShardAddr {
    routing().locate("any", day()).unwrap()
}

fn content(uid: &str) -> Vec<u8> {
    format!("{{\"uid\":\"{uid}\",\"body\":\"{}\"}}", uid.repeat(7)).into_bytes()
}

async fn put_segment(store: &dyn ObjectStore, generation: u32, format_version: u16, uids: &[String]) {
    let settings = SegmentSettings { format_version, ..SegmentSettings::new(addr(), generation) };
    let mut writer = SegmentWriter::new(settings, Cursor::new(Vec::new())).unwrap();
    for uid in uids {
        let bytes = content(uid);
        writer
            .add(FileInput { uid, created_at: day(), content_type: Some("application/json"), bytes: &bytes })
            .unwrap();
    }
    let mut out = Vec::new();
    writer.finish(&mut out).unwrap();
    store.put(&addr().segment_key(generation), Bytes::from(out), PutOptions::create()).await.unwrap();
}

/// Two uids whose fingerprints share their top 32 bits: what a compact lookup keeps.
fn colliding_pair() -> (String, String) {
    let mut seen: HashMap<u32, String> = HashMap::new();
    (0u64..)
        .find_map(|i| {
            let uid = format!("pair-{i}");
            seen.insert((uid_fingerprint(&uid) >> 32) as u32, uid.clone()).map(|first| (first, uid))
        })
        .unwrap()
}

#[tokio::test]
async fn both_format_versions_read_through_one_address_and_warm_reads_cost_one_get() {
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
    let counts = store.counts();
    let old: Vec<String> = (0..300).map(|i| format!("old-{i:04}")).collect();
    let new: Vec<String> = (0..300).map(|i| format!("new-{i:04}")).collect();
    put_segment(&store, 0, 1, &old).await;
    put_segment(&store, 1, 2, &new).await;
    let shards = ShardStore::new(Arc::new(store));
    for uid in old.iter().chain(&new) {
        let read = shards.read_file(&routing(), uid, day()).await.unwrap();
        assert_eq!(read.bytes, content(uid), "{uid}");
        assert_eq!(read.content_type, "application/json");
        assert_eq!(read.content_hash, *blake3::hash(&content(uid)).as_bytes());
    }
    let stats = shards.cache_stats();
    assert_eq!((stats.segments, stats.files), (2, 600), "one read index per segment, nothing else cached");
    // Format 1 keeps its whole index (about 100 bytes a file); format 2 keeps 8 bytes a
    // file plus a few hundred per segment. Dictionaries (used to decode) aside.
    let old_only = ShardStore::new(shards.store().clone());
    old_only.read_file(&routing(), &old[0], day()).await.unwrap();
    let lookup = |stats: vera_store::shards::CacheStats| stats.bytes - stats.dictionary_bytes;
    let format_1_bytes = lookup(old_only.cache_stats());
    let format_2_bytes = lookup(stats) - format_1_bytes;
    assert!(format_2_bytes <= 300 * 8 + 512, "format 2 read index holds {format_2_bytes} bytes for 300 files");
    assert!(format_1_bytes > 300 * 40, "format 1 keeps the whole index: {format_1_bytes} bytes");

    let before = counts.snapshot();
    for uid in old.iter().chain(&new).step_by(7) {
        shards.read_file(&routing(), uid, day()).await.unwrap();
    }
    let after = counts.snapshot();
    let reads = old.iter().chain(&new).step_by(7).count() as u64;
    // A warm read: the record GET; the sidecar is read from the store (read_file has no
    // sidecar cache) only for segments whose tags say they have one, and these have none.
    assert_eq!(after.gets - before.gets, reads, "one GET per warm read");
    assert_eq!(after.lists, before.lists, "no LIST on the read path");
}

/// A uid whose fingerprint bits match another uid's record in an earlier generation is
/// still found in its own: the record header tells the compact lookup it was wrong, and
/// the whole indexes settle it.
#[tokio::test]
async fn a_uid_sharing_fingerprint_bits_with_an_earlier_generation_is_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let (first, second) = colliding_pair();
    put_segment(&store, 0, 2, &[first.clone(), "other-a".to_owned()]).await;
    put_segment(&store, 1, 2, &[second.clone(), "other-b".to_owned()]).await;
    let shards = ShardStore::new(Arc::new(store));
    for uid in [&second, &first, &second, "other-a", "other-b"] {
        let read = shards.read_file(&routing(), uid, day()).await.unwrap();
        assert_eq!(read.bytes, content(uid), "{uid}");
        assert_eq!(read.key, addr().segment_key(if uid == first || uid == "other-a" { 0 } else { 1 }));
    }
    let missing = shards.read_file(&routing(), "nobody", day()).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
}
