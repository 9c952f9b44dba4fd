//! The read path over segments of both format versions: compact lookups for format 2,
//! whole indexes for format 1, GETs per read, and the rare uid whose fingerprint bits
//! lead to another uid's record.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingEpoch, RoutingTable, ShardAddr, uid_fingerprint};
use vera_protocol::shard::{FORMAT_VERSION, FileInput, SegmentSettings, SegmentWriter};
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
    put_files(store, generation, format_version, uids, content, Some("application/json")).await;
}

/// Packs `uids` (each with `bytes(uid)`) into generation `generation` of [`addr`] and
/// stores it; returns the segment's length.
async fn put_files(
    store: &dyn ObjectStore,
    generation: u32,
    format_version: u16,
    uids: &[String],
    bytes: fn(&str) -> Vec<u8>,
    content_type: Option<&str>,
) -> u64 {
    let settings = SegmentSettings { format_version, ..SegmentSettings::new(addr(), generation) };
    let mut writer = SegmentWriter::new(settings, Cursor::new(Vec::new())).unwrap();
    for uid in uids {
        let bytes = bytes(uid);
        writer.add(FileInput { uid, created_at: day(), content_type, bytes: &bytes }).unwrap();
    }
    let mut out = Vec::new();
    writer.finish(&mut out).unwrap();
    let len = out.len() as u64;
    store.put(&addr().segment_key(generation), Bytes::from(out), PutOptions::create()).await.unwrap();
    len
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

/// 4 KiB that zstd cannot shrink, so that a segment of them outgrows the suffix.
fn bulky(uid: &str) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    blake3::Hasher::new().update(uid.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A cold read takes its record from the suffix GET that fetched the index whenever the
/// suffix holds the record: one GET for a file near a segment's end (or in a small
/// segment), two for the rest; a late arrival in a small later generation costs the
/// earlier generation's suffix plus its own, not a third GET.
#[tokio::test]
async fn a_cold_read_takes_its_record_from_the_suffix_when_the_suffix_holds_it() {
    use vera_store::shards::DEFAULT_SUFFIX_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
    let counts = store.counts();
    let day_files: Vec<String> = (0..160).map(|i| format!("day-{i:03}")).collect();
    let late: Vec<String> = (0..3).map(|i| format!("late-{i}")).collect();
    let object_len = put_files(&store, 0, FORMAT_VERSION, &day_files, bulky, None).await;
    assert!(object_len > 2 * DEFAULT_SUFFIX_BYTES, "segment of {object_len} bytes outgrows the suffix");
    put_segment(&store, 1, 2, &late).await;
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let ranges: HashMap<String, std::ops::Range<u64>> = {
        let index = ShardStore::new(store.clone()).index(&addr().segment_key(0)).await.unwrap();
        index.files().map(|file| (file.uid.to_owned(), file.record_range())).collect()
    };
    let suffix_start = object_len - DEFAULT_SUFFIX_BYTES;
    let (mut one, mut two) = (0, 0);
    for uid in &day_files {
        let cold = ShardStore::new(store.clone());
        let before = counts.snapshot();
        let read = cold.read_file(&routing(), uid, day()).await.unwrap();
        assert_eq!(read.bytes, bulky(uid), "{uid}");
        let gets = counts.snapshot().gets - before.gets;
        let expected = if ranges[uid].start >= suffix_start { 1 } else { 2 };
        assert_eq!(gets, expected, "{uid} at {:?}, suffix from {suffix_start}", ranges[uid]);
        if gets == 1 { one += 1 } else { two += 1 }
    }
    assert!(one > 0 && two > 0, "both cases were exercised: {one} in the suffix, {two} outside");

    let shards = ShardStore::new(store.clone());
    for uid in &late {
        let before = counts.snapshot();
        let read = shards.read_file(&routing(), uid, day()).await.unwrap();
        assert_eq!(read.bytes, content(uid), "{uid}");
        assert_eq!(read.key, addr().segment_key(1));
        let gets = counts.snapshot().gets - before.gets;
        // The first late read is cold: both suffixes. The others find both indexes cached.
        let expected = if uid == &late[0] { 2 } else { 1 };
        assert_eq!(gets, expected, "{uid}");
    }
}

/// A later generation is read with the larger later-generation suffix: a late arrival
/// costs generation 0's suffix plus one GET of its own generation whenever that suffix
/// holds its record, which for a later generation no larger than the suffix is always.
/// With the later suffix set no larger than generation 0's, the same reads cost three.
#[tokio::test]
async fn a_late_arrival_costs_two_gets_cold_when_the_later_suffix_holds_its_record() {
    use vera_store::shards::{DEFAULT_LATER_SUFFIX_BYTES, DEFAULT_SUFFIX_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
    let counts = store.counts();
    put_segment(&store, 0, FORMAT_VERSION, &["day-0".to_owned(), "day-1".to_owned()]).await;
    // Generation 1: about 600 KiB, between the two suffixes. Generation 2: about 1.6 MiB,
    // larger than both.
    let gen1: Vec<String> = (0..150).map(|i| format!("late-{i:03}")).collect();
    let gen2: Vec<String> = (0..400).map(|i| format!("later-{i:03}")).collect();
    let gen1_len = put_files(&store, 1, FORMAT_VERSION, &gen1, bulky, None).await;
    let gen2_len = put_files(&store, 2, FORMAT_VERSION, &gen2, bulky, None).await;
    assert!(DEFAULT_SUFFIX_BYTES < gen1_len && gen1_len < DEFAULT_LATER_SUFFIX_BYTES, "{gen1_len}");
    assert!(gen2_len > DEFAULT_LATER_SUFFIX_BYTES, "{gen2_len}");
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let mut ranges: HashMap<String, (u64, std::ops::Range<u64>)> = HashMap::new();
    for (generation, len) in [(1, gen1_len), (2, gen2_len)] {
        let index = ShardStore::new(store.clone()).index(&addr().segment_key(generation)).await.unwrap();
        ranges.extend(index.files().map(|file| (file.uid.to_owned(), (len, file.record_range()))));
    }
    // The layout model `vera stats` and the load test use, from the same segments.
    let mut shapes = Vec::new();
    let mut uids_in_order = Vec::new();
    for generation in 0..3 {
        let index = ShardStore::new(store.clone()).index(&addr().segment_key(generation)).await.unwrap();
        shapes.push(Some(vera_store::cold_cost::SegmentShape::of(&index)));
        uids_in_order.push(index.files().map(|file| file.uid.to_owned()).collect::<Vec<_>>());
    }
    for later_suffix in [DEFAULT_LATER_SUFFIX_BYTES, DEFAULT_SUFFIX_BYTES] {
        let modelled: HashMap<&String, u64> = uids_in_order
            .iter()
            .flatten()
            .zip(
                vera_store::cold_cost::cold_read_gets(&shapes, DEFAULT_SUFFIX_BYTES, later_suffix)
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let mut by_gets: HashMap<(u32, u64), usize> = HashMap::new();
        for uid in gen1.iter().chain(&gen2).step_by(5) {
            let cold = ShardStore::new(store.clone()).with_later_suffix_bytes(later_suffix);
            let before = counts.snapshot();
            let read = cold.read_file(&routing(), uid, day()).await.unwrap();
            assert_eq!(read.bytes, bulky(uid), "{uid}");
            let gets = counts.snapshot().gets - before.gets;
            let generation = if uid.starts_with("late-") { 1 } else { 2 };
            let (len, range) = &ranges[uid];
            // Every generation before the file's costs its suffix; its own suffix holds
            // the record or one range GET follows.
            let in_suffix = range.start >= len.saturating_sub(later_suffix);
            let expected = u64::from(generation) + 1 + u64::from(!in_suffix);
            assert_eq!(gets, expected, "{uid} in generation {generation}, later suffix {later_suffix}");
            assert_eq!(gets, modelled[uid], "the layout model, for {uid} with later suffix {later_suffix}");
            *by_gets.entry((generation, gets)).or_default() += 1;
        }
        if later_suffix == DEFAULT_LATER_SUFFIX_BYTES {
            assert_eq!(by_gets[&(1, 2)], 30, "every generation 1 read took two GETs: {by_gets:?}");
            assert!(by_gets.contains_key(&(2, 3)) && by_gets.contains_key(&(2, 4)), "{by_gets:?}");
        } else {
            assert!(by_gets.contains_key(&(1, 3)), "a smaller later suffix misses records: {by_gets:?}");
        }
    }
}

/// Bytes served from the suffix are checked like fetched ones: a record damaged inside a
/// small segment is refused on a cold read, never returned.
#[tokio::test]
async fn a_damaged_record_inside_the_suffix_is_refused_on_a_cold_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let uids: Vec<String> = (0..5).map(|i| format!("small-{i}")).collect();
    put_segment(&store, 0, 2, &uids).await;
    let key = addr().segment_key(0);
    let index = ShardStore::new(Arc::new(LocalStore::open(dir.path()).unwrap())).index(&key).await.unwrap();
    let victim = index.files().next().unwrap();
    let (uid, range) = (victim.uid.to_owned(), victim.record_range());
    let mut bytes = store.get(&key).await.unwrap().body.to_vec();
    // The last payload byte of the record: past its header, so only the content hash
    // (or the decoder) can notice.
    bytes[range.end as usize - 1] ^= 0x40;
    let damaged = tempfile::tempdir().unwrap();
    let copy = LocalStore::open(damaged.path()).unwrap();
    copy.put(&key, Bytes::from(bytes), PutOptions::create()).await.unwrap();
    let shards = ShardStore::new(Arc::new(copy));
    let error = shards.read_file(&routing(), &uid, day()).await.unwrap_err();
    assert!(
        matches!(&error, vera_store::shards::ShardError::Segment { source, .. } if source.is_corruption()),
        "{error:?}"
    );
    for other in uids.iter().filter(|other| **other != uid) {
        assert_eq!(shards.read_file(&routing(), other, day()).await.unwrap().bytes, content(other));
    }
}

/// Late arrivals written before their time slice's own rows sit in generation 1 with
/// generation 0 missing: a cold read goes past the missing key (one GET) to generation 1's
/// suffix (one more), a uid that is not there costs those two GETs and no more, and the
/// generation 0 written afterwards is read like any other.
#[tokio::test]
async fn a_missing_generation_0_is_probed_past_and_costs_one_get() {
    use vera_store::shards::{DEFAULT_LATER_SUFFIX_BYTES, DEFAULT_SUFFIX_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
    let counts = store.counts();
    let late: Vec<String> = (0..40).map(|i| format!("late-{i:03}")).collect();
    put_segment(&store, 1, FORMAT_VERSION, &late).await;
    let store: Arc<dyn ObjectStore> = Arc::new(store);

    let mut shapes = vec![None];
    let index = ShardStore::new(store.clone()).index(&addr().segment_key(1)).await.unwrap();
    shapes.push(Some(vera_store::cold_cost::SegmentShape::of(&index)));
    let modelled = vera_store::cold_cost::cold_read_gets(&shapes, DEFAULT_SUFFIX_BYTES, DEFAULT_LATER_SUFFIX_BYTES);
    assert_eq!(modelled[1], vec![2; late.len()], "the model: the missing key, then the suffix holding the record");
    for uid in late.iter().step_by(3) {
        let cold = ShardStore::new(store.clone());
        let before = counts.snapshot();
        let read = cold.read_file(&routing(), uid, day()).await.unwrap();
        assert_eq!(read.bytes, content(uid), "{uid}");
        assert_eq!(counts.snapshot().gets - before.gets, 2, "cold read of {uid}");
    }

    // Without events (absence not trusted), a warm read of a late arrival skips the
    // generation 0 found missing: the uid is in generation 1, so it is not in a generation
    // 0 written since. A uid generation 1 does not list looks at generation 0 again.
    let untrusted = ShardStore::new(store.clone());
    untrusted.read_file(&routing(), &late[0], day()).await.unwrap();
    let before = counts.snapshot();
    for uid in late.iter().skip(1).step_by(4) {
        assert_eq!(untrusted.read_file(&routing(), uid, day()).await.unwrap().bytes, content(uid));
    }
    let warm_reads = late.iter().skip(1).step_by(4).count() as u64;
    assert_eq!(counts.snapshot().gets - before.gets, warm_reads, "one GET per warm read of a late arrival");
    let before = counts.snapshot();
    assert!(untrusted.read_file(&routing(), "nowhere", day()).await.unwrap_err().is_not_found());
    assert_eq!(counts.snapshot().gets - before.gets, 2, "generation 2 (missing), then generation 0 again (missing)");

    // A uid that is not there: generation 0 and generation 2 are missing, generation 1
    // does not list it.
    let shards = ShardStore::new(store.clone());
    shards.cache_absence(true);
    let before = counts.snapshot();
    let missing = shards.read_file(&routing(), "nowhere", day()).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    assert_eq!(counts.snapshot().gets - before.gets, 3, "generation 0 (missing), 1, 2 (missing)");
    // Remembered: neither missing key is asked for again, and generation 1 is cached.
    let before = counts.snapshot();
    assert!(shards.read_file(&routing(), "nowhere-either", day()).await.unwrap_err().is_not_found());
    assert_eq!(counts.snapshot().gets - before.gets, 0, "a remembered absence costs no GET");
    let read = shards.read_file(&routing(), &late[0], day()).await.unwrap();
    assert_eq!(read.bytes, content(&late[0]));
    assert_eq!(counts.snapshot().gets - before.gets, 1, "a warm read of generation 1 skips the missing generation 0");

    // The slice's own rows arrive as generation 0; the event that announces it makes the
    // reader look again.
    let bulk: Vec<String> = (0..40).map(|i| format!("bulk-{i:03}")).collect();
    put_segment(store.as_ref(), 0, FORMAT_VERSION, &bulk).await;
    shards.forget_absent_under(&addr());
    let read = shards.read_file(&routing(), &bulk[7], day()).await.unwrap();
    assert_eq!(read.bytes, content(&bulk[7]));
    let read = shards.read_file(&routing(), &late[5], day()).await.unwrap();
    assert_eq!(read.bytes, content(&late[5]), "generation 1 is still found after generation 0");
    // The reader without events sees generation 0 at once, with nothing forgotten.
    let read = untrusted.read_file(&routing(), &bulk[3], day()).await.unwrap();
    assert_eq!(read.bytes, content(&bulk[3]));
    let before = counts.snapshot();
    untrusted.read_file(&routing(), &bulk[4], day()).await.unwrap();
    assert_eq!(counts.snapshot().gets - before.gets, 1, "and probes it first again once it exists");
}
