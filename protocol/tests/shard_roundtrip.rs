//! Writer → reader round trips, determinism, and refusal of corrupt input.

use std::io::Cursor;

use proptest::prelude::*;
use vera_protocol::Timestamp;
use vera_protocol::compress::Codec;
use vera_protocol::routing::{ShardAddr, locate_shard};
use vera_protocol::shard::{
    FORMAT_VERSION, FileInput, LookupIndex, MIN_FORMAT_VERSION, ReadError, ReadLimits, SegmentIndex, SegmentSettings,
    SegmentWriter, SuffixOpen, WriteError, verify_segment,
};

const N_BITS: u8 = 0;

fn day() -> Timestamp {
    Timestamp::parse("2026-11-24T08:00:00Z").unwrap()
}

fn addr() -> ShardAddr {
    locate_shard("any", day(), N_BITS).unwrap()
}

#[derive(Debug, Clone)]
struct TestFile {
    uid: String,
    created_at: Timestamp,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

fn write(files: &[TestFile], settings: &SegmentSettings) -> Result<Vec<u8>, WriteError> {
    let mut writer = SegmentWriter::new(settings.clone(), Cursor::new(Vec::new()))?;
    for file in files {
        writer.add(FileInput {
            uid: &file.uid,
            created_at: file.created_at,
            content_type: file.content_type.as_deref(),
            bytes: &file.bytes,
        })?;
    }
    let mut out = Vec::new();
    let sealed = writer.finish(&mut out)?;
    assert_eq!(sealed.object_len, out.len() as u64);
    assert_eq!(sealed.object_hash, *blake3::hash(&out).as_bytes());
    Ok(out)
}

fn record(i: usize) -> Vec<u8> {
    format!(
        r#"{{"call_id":"C{i:09}","caller":"+3161234{:04}","callee":"+3162000{:04}","duration_s":{},"cell":"NL-AMS-{:03}","result":"ANSWERED"}}"#,
        i % 9973,
        (i * 31) % 9973,
        i % 3600,
        i % 211
    )
    .into_bytes()
}

fn mixed_files(count: usize) -> Vec<TestFile> {
    (0..count)
        .map(|i| {
            let bytes = match i % 4 {
                0 => record(i),
                1 => record(i).repeat(40),
                2 => {
                    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
                    png.extend((0..3000u32).map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8));
                    png
                }
                _ => (0..(i * 37) % 5000).map(|x| (x * x % 251) as u8).collect(),
            };
            TestFile {
                uid: format!("uid-{:05}", (i * 7919) % 100_003),
                created_at: day(),
                content_type: (i % 4 == 0).then(|| "application/json".to_owned()),
                bytes,
            }
        })
        .collect()
}

/// Settings for generation 0 of `addr()`, written in format `version`.
fn in_format(version: u16) -> SegmentSettings {
    SegmentSettings { format_version: version, ..SegmentSettings::new(addr(), 0) }
}

fn open(bytes: &[u8]) -> Result<SegmentIndex, ReadError> {
    SegmentIndex::open_from(&mut Cursor::new(bytes), bytes.len() as u64, 64 * 1024, &ReadLimits::default())
}

#[test]
fn every_file_reads_back_and_verifies_in_every_format_version() {
    for version in MIN_FORMAT_VERSION..=FORMAT_VERSION {
        every_file_reads_back_and_verifies(version);
    }
}

fn every_file_reads_back_and_verifies(version: u16) {
    let files = mixed_files(300);
    let settings = in_format(version);
    let bytes = write(&files, &settings).unwrap();
    let index = open(&bytes).unwrap();
    assert_eq!(index.format_version(), version);
    assert_eq!(index.len(), files.len());
    assert!(index.dictionary().is_some(), "75 small json records should train a dictionary");
    let codecs: std::collections::HashSet<Codec> = index.files().map(|f| f.entry.codec).collect();
    assert!(codecs.contains(&Codec::ZstdDict) && codecs.contains(&Codec::Zstd) && codecs.contains(&Codec::Raw));
    for file in &files {
        let read = index.read_file(&mut Cursor::new(&bytes), &file.uid, &ReadLimits::default()).unwrap();
        assert_eq!(read, file.bytes, "{}", file.uid);
        let found = index.find(&file.uid).unwrap();
        assert_eq!(found.entry.created_at_micros, file.created_at.as_micros());
        if let Some(content_type) = &file.content_type {
            assert_eq!(found.content_type, content_type);
        }
    }
    assert_eq!(index.find("png-or-not").map(|f| f.uid), None);
    assert!(matches!(
        index.read_file(&mut Cursor::new(&bytes), "missing", &ReadLimits::default()),
        Err(ReadError::NotFound { .. })
    ));
    let report = verify_segment(&mut Cursor::new(&bytes), bytes.len() as u64, &ReadLimits::default()).unwrap();
    assert_eq!(report.files, 300);
    assert_eq!(report.object_hash, *blake3::hash(&bytes).as_bytes());
    assert_eq!(report.header.addr, addr());
    assert_eq!(report.header.format_version, version);
}

#[test]
fn the_writer_refuses_format_versions_it_does_not_know() {
    for version in [0, FORMAT_VERSION + 1] {
        let settings = in_format(version);
        assert!(matches!(
            SegmentWriter::new(settings, Cursor::new(Vec::new())),
            Err(WriteError::FormatVersion(v)) if v == version
        ));
    }
}

#[test]
fn format_2_records_are_in_fingerprint_order_and_version_1_in_uid_order() {
    let files = mixed_files(100);
    for version in MIN_FORMAT_VERSION..=FORMAT_VERSION {
        let settings = in_format(version);
        let bytes = write(&files, &settings).unwrap();
        let index = open(&bytes).unwrap();
        let order: Vec<(u64, &str)> = index
            .files()
            .map(|f| (if version == 1 { 0 } else { vera_protocol::routing::uid_fingerprint(f.uid) }, f.uid))
            .collect();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "version {version}");
        let offsets: Vec<u64> = index.files().map(|f| f.entry.data_offset).collect();
        assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "records follow index order");
    }
}

/// The compact lookup a reader caches finds, fetches and checks every file from the
/// record alone, and keeps 8 bytes per file.
#[test]
fn the_lookup_index_reads_every_file_from_its_record_alone() {
    let files = mixed_files(300);
    let bytes = write(&files, &SegmentSettings::new(addr(), 0)).unwrap();
    let index = open(&bytes).unwrap();
    let lookup = LookupIndex::from_index(&index).expect("a format 2 segment has a compact lookup");
    assert_eq!(lookup.len(), 300);
    assert_eq!(lookup.lookup_bytes(), 300 * 8);
    assert_eq!(lookup.dictionary_bytes(), index.dictionary().map_or(0, <[u8]>::len));
    let limits = ReadLimits::default();
    for file in &files {
        let ranges: Vec<_> = lookup.candidates(&file.uid).collect();
        assert_eq!(ranges.len(), 1, "{}", file.uid);
        let full = index.find(&file.uid).unwrap();
        assert_eq!(ranges[0], full.record_range(), "the next offset bounds the record");
        let record = &bytes[ranges[0].start as usize..ranges[0].end as usize];
        let read = lookup.decode(&file.uid, record, &limits).unwrap().expect("the record is this uid's");
        assert_eq!(read.bytes, file.bytes);
        assert_eq!(read.content_hash, *blake3::hash(&file.bytes).as_bytes());
        assert_eq!(read.content_type, full.content_type);
        assert_eq!(read.created_at_micros, file.created_at.as_micros());
        // Another uid's fingerprint may (very rarely) lead here: the header tells.
        assert_eq!(lookup.decode("someone-else", record, &limits).unwrap(), None);
    }
    assert_eq!(lookup.candidates("missing").count(), 0);
    let old = write(&files, &in_format(1)).unwrap();
    assert!(LookupIndex::from_index(&open(&old).unwrap()).is_none(), "format 1 records do not name their uid");
}

const FORMAT_1_FIXTURE: &str = "tests/fixtures/format1-segment.vera";

/// A format 1 segment, committed when format 2 arrived, still opens, reads and verifies,
/// and today's writer still reproduces it byte for byte. (The file was checked to be
/// byte-identical to what the writer of commit f3ca1d0, before format 2, wrote for the
/// same files.) `VERA_WRITE_FIXTURES=1` only creates a missing file, never updates it.
#[test]
fn a_committed_format_1_segment_still_reads_and_is_reproduced() {
    // 120 small JSON records (they train a dictionary) and every fourth kind of
    // mixed_files among the first 12: raw, zstd and dictionary records.
    let mut files: Vec<TestFile> = mixed_files(12);
    files.extend((1000..1120).map(|i| TestFile {
        uid: format!("json-{i}"),
        created_at: day(),
        content_type: Some("application/json".to_owned()),
        bytes: record(i),
    }));
    let settings = in_format(1);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FORMAT_1_FIXTURE);
    if std::env::var_os("VERA_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, write(&files, &settings).unwrap()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let index = open(&bytes).unwrap();
    assert_eq!(index.format_version(), 1);
    assert_eq!(index.len(), files.len());
    assert!(index.dictionary().is_some());
    let codecs: std::collections::HashSet<Codec> = index.files().map(|f| f.entry.codec).collect();
    assert!(codecs.contains(&Codec::ZstdDict) && codecs.contains(&Codec::Zstd) && codecs.contains(&Codec::Raw));
    for file in &files {
        let read = index.read_file(&mut Cursor::new(&bytes), &file.uid, &ReadLimits::default()).unwrap();
        assert_eq!(read, file.bytes, "{}", file.uid);
    }
    let report = verify_segment(&mut Cursor::new(&bytes), bytes.len() as u64, &ReadLimits::default()).unwrap();
    assert_eq!(report.header.format_version, 1);
    assert!(write(&files, &settings).unwrap() == bytes, "the format 1 writer changed its output");
}

/// Two pairs of uids whose fingerprints share their top 32 bits (found by a birthday
/// search): one pair both in a segment, and one with only its first in it. The lookup
/// offers every candidate; the record headers tell which is whose.
#[test]
fn uids_that_share_the_lookup_fingerprint_are_told_apart_by_their_records() {
    use std::collections::HashMap;
    let mut seen: HashMap<u32, String> = HashMap::new();
    let mut pairs = Vec::new();
    for i in 0u64.. {
        let uid = format!("collide-{i}");
        let top = (vera_protocol::routing::uid_fingerprint(&uid) >> 32) as u32;
        if let Some(first) = seen.insert(top, uid.clone()) {
            pairs.push((first, uid));
            if pairs.len() == 2 {
                break;
            }
        }
    }
    let (both, one) = (&pairs[0], &pairs[1]);
    let file = |uid: &String| TestFile {
        uid: uid.clone(),
        created_at: day(),
        content_type: None,
        bytes: uid.as_bytes().repeat(9),
    };
    let files = vec![file(&both.0), file(&both.1), file(&one.0)];
    let bytes = write(&files, &SegmentSettings::new(addr(), 0)).unwrap();
    let lookup = LookupIndex::from_index(&open(&bytes).unwrap()).unwrap();
    let limits = ReadLimits::default();
    let read = |uid: &str| -> Vec<Option<Vec<u8>>> {
        lookup
            .candidates(uid)
            .map(|range| {
                let record = &bytes[range.start as usize..range.end as usize];
                lookup.decode(uid, record, &limits).unwrap().map(|found| found.bytes)
            })
            .collect()
    };
    for uid in [&both.0, &both.1] {
        let outcomes = read(uid);
        assert_eq!(outcomes.len(), 2, "both records of the pair are candidates");
        assert_eq!(outcomes.into_iter().flatten().collect::<Vec<_>>(), vec![file(uid).bytes], "exactly one is {uid}");
    }
    assert_eq!(read(&one.0), vec![Some(file(&one.0).bytes)]);
    assert_eq!(read(&one.1), vec![None], "an absent uid matches no record");
}

/// Any flipped byte in a record read through the compact lookup is an error, never
/// wrong bytes and never another file. (A flip a codec decodes identically, such as one
/// in a zstd frame header flag, gives the right bytes; full verification catches those
/// through `data_checksum`.)
#[test]
fn every_byte_flip_in_a_record_fails_the_lookup_read() {
    let files = mixed_files(24);
    let bytes = write(&files, &SegmentSettings::new(addr(), 0)).unwrap();
    let index = open(&bytes).unwrap();
    let lookup = LookupIndex::from_index(&index).unwrap();
    let limits = ReadLimits::default();
    let (mut flips, mut refused) = (0, 0);
    for file in &files {
        let range = lookup.candidates(&file.uid).next().unwrap();
        let record = &bytes[range.start as usize..range.end as usize];
        for position in 0..record.len() {
            let mut corrupt = record.to_vec();
            corrupt[position] ^= 0x20;
            flips += 1;
            match lookup.decode(&file.uid, &corrupt, &limits) {
                Err(_) => refused += 1,
                Ok(Some(read)) => {
                    assert_eq!(read.bytes, file.bytes, "{}: flip at {position} gave wrong bytes", file.uid)
                }
                Ok(None) => panic!("{}: flip at {position} made the record another uid's", file.uid),
            }
        }
        assert!(lookup.decode(&file.uid, &record[..record.len() - 1], &limits).is_err(), "short record");
    }
    assert!(refused * 100 >= flips * 99, "only {refused} of {flips} flips refused");
}

#[test]
fn sniffed_content_types() {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png.extend([0u8; 100]);
    let files = vec![
        TestFile { uid: "a".into(), created_at: day(), content_type: None, bytes: png },
        TestFile { uid: "b".into(), created_at: day(), content_type: None, bytes: b"plain".to_vec() },
    ];
    let bytes = write(&files, &SegmentSettings::new(addr(), 0)).unwrap();
    let index = open(&bytes).unwrap();
    assert_eq!(index.find("a").unwrap().content_type, "image/png");
    assert_eq!(index.find("b").unwrap().content_type, "application/octet-stream");
}

#[test]
fn same_set_in_any_order_is_byte_identical() {
    let files = mixed_files(200);
    let settings = SegmentSettings::new(addr(), 3);
    let forward = write(&files, &settings).unwrap();
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(write(&reversed, &settings).unwrap(), forward);
    let mut shuffled = files.clone();
    let mut state = 12345u64;
    for i in (1..shuffled.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        shuffled.swap(i, (state >> 33) as usize % (i + 1));
    }
    assert_eq!(write(&shuffled, &settings).unwrap(), forward);
    // A different generation is a different object.
    assert_ne!(write(&files, &SegmentSettings::new(addr(), 4)).unwrap(), forward);
}

#[test]
fn writer_rejects_bad_files_with_typed_errors() {
    let settings = SegmentSettings { max_file_bytes: 10, ..SegmentSettings::new(addr(), 0) };
    let mut writer = SegmentWriter::new(settings, Cursor::new(Vec::new())).unwrap();
    let input =
        |uid: &'static str, bytes: &'static [u8]| FileInput { uid, created_at: day(), content_type: None, bytes };
    assert!(matches!(writer.add(input("big", b"0123456789a")), Err(WriteError::TooLarge { len: 11, max: 10, .. })));
    assert!(matches!(writer.add(input("", b"x")), Err(WriteError::InvalidUid { .. })));
    let other_day = FileInput { created_at: Timestamp::parse("2026-11-25T00:00:00Z").unwrap(), ..input("x", b"x") };
    assert!(matches!(writer.add(other_day), Err(WriteError::WrongAddress { .. })));
    let bad_type = FileInput { content_type: Some("text/plain\n"), ..input("y", b"y") };
    assert!(matches!(writer.add(bad_type), Err(WriteError::BadContentType { .. })));
    writer.add(input("dup", b"1")).unwrap();
    writer.add(input("dup", b"2")).unwrap();
    assert!(matches!(writer.finish(Vec::new()), Err(WriteError::DuplicateUid { .. })));
    let empty = SegmentWriter::new(SegmentSettings::new(addr(), 0), Cursor::new(Vec::new())).unwrap();
    assert!(matches!(empty.finish(Vec::new()), Err(WriteError::Empty)));
}

#[test]
fn small_index_fits_one_suffix_read_large_one_asks_for_more() {
    let small = write(&mixed_files(200), &SegmentSettings::new(addr(), 0)).unwrap();
    let suffix = &small[small.len() - 64 * 1024..];
    assert!(matches!(
        SegmentIndex::open_suffix(suffix, small.len() as u64, &ReadLimits::default()).unwrap(),
        SuffixOpen::Ready(_)
    ));
    let big = write(&mixed_files(3000), &SegmentSettings::new(addr(), 0)).unwrap();
    let tiny_suffix = &big[big.len() - 4096..];
    match SegmentIndex::open_suffix(tiny_suffix, big.len() as u64, &ReadLimits::default()).unwrap() {
        SuffixOpen::NeedMore { start } => {
            let tail = &big[start as usize..];
            assert!(matches!(
                SegmentIndex::open_suffix(tail, big.len() as u64, &ReadLimits::default()).unwrap(),
                SuffixOpen::Ready(_)
            ));
        }
        SuffixOpen::Ready(_) => panic!("3000 entries cannot fit in 4 KiB"),
    }
}

#[test]
fn every_single_byte_flip_is_caught() {
    let files = mixed_files(24);
    for version in MIN_FORMAT_VERSION..=FORMAT_VERSION {
        let settings = in_format(version);
        let bytes = write(&files, &settings).unwrap();
        let limits = ReadLimits::default();
        for position in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[position] ^= 0x20;
            let outcome = verify_segment(&mut Cursor::new(&corrupt), corrupt.len() as u64, &limits);
            assert!(outcome.is_err(), "version {version}: flip at byte {position} of {} went unnoticed", bytes.len());
        }
    }
}

#[test]
fn truncation_is_caught_at_every_length() {
    let bytes = write(&mixed_files(12), &SegmentSettings::new(addr(), 0)).unwrap();
    for len in 0..bytes.len() {
        let truncated = &bytes[..len];
        assert!(open(truncated).is_err(), "truncated to {len} accepted");
        assert!(verify_segment(&mut Cursor::new(truncated), len as u64, &ReadLimits::default()).is_err());
    }
}

#[test]
fn limits_refuse_oversized_claims() {
    let bytes = write(&mixed_files(40), &SegmentSettings::new(addr(), 0)).unwrap();
    let tight = ReadLimits { max_index_region_bytes: 16, ..ReadLimits::default() };
    assert!(matches!(
        SegmentIndex::open_from(&mut Cursor::new(&bytes), bytes.len() as u64, 65536, &tight),
        Err(ReadError::TooLarge { what: "index region", .. })
    ));
    let index = open(&bytes).unwrap();
    let big_file = index.files().max_by_key(|f| f.entry.raw_len).unwrap().uid.to_owned();
    let tight_files = ReadLimits { max_file_bytes: 10, ..ReadLimits::default() };
    assert!(matches!(
        index.read_file(&mut Cursor::new(&bytes), &big_file, &tight_files),
        Err(ReadError::TooLarge { what: "file", .. })
    ));
}

fn arbitrary_file() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let sizes = prop_oneof![0usize..64, 64usize..4096, 4096usize..70_000, Just(2 * 1024 * 1024)];
    (sizes, 0u8..5, any::<u64>()).prop_map(|(len, kind, seed)| {
        let mut state = seed | 1;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let bytes: Vec<u8> = match kind {
            0 => (0..len).map(|_| noise()).collect(),
            1 => (0..len).map(|i| b"ACGT"[(i * 7 + i / 13) % 4]).collect(),
            2 => {
                let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xDB];
                jpeg.extend((0..len).map(|_| noise()));
                jpeg
            }
            3 => std::iter::repeat_n(b"<row><id>1</id><v>abc</v></row>\n".as_slice(), len / 32 + 1)
                .flatten()
                .copied()
                .take(len)
                .collect(),
            _ => vec![0u8; len],
        };
        let content_type = (kind == 3).then(|| "application/xml".to_owned());
        (bytes, content_type)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn writer_reader_round_trip(files in proptest::collection::vec(arbitrary_file(), 1..12), generation in 0u32..5) {
        let files: Vec<TestFile> = files
            .into_iter()
            .enumerate()
            .map(|(i, (bytes, content_type))| TestFile { uid: format!("p{i}"), created_at: day(), content_type, bytes })
            .collect();
        let settings = SegmentSettings::new(addr(), generation);
        let bytes = write(&files, &settings).unwrap();
        let index = open(&bytes).unwrap();
        for file in &files {
            let read = index.read_file(&mut Cursor::new(&bytes), &file.uid, &ReadLimits::default()).unwrap();
            prop_assert_eq!(&read, &file.bytes);
        }
        let mut reversed = files.clone();
        reversed.reverse();
        prop_assert_eq!(write(&reversed, &settings).unwrap(), bytes);
    }
}

#[test]
fn retain_gives_the_same_bytes_as_writing_only_the_kept_files() {
    let files = mixed_files(160);
    let settings = SegmentSettings::new(addr(), 0);
    let kept: Vec<TestFile> = files.iter().filter(|f| f.uid.ends_with(['1', '3', '5', '7'])).cloned().collect();
    let expected = write(&kept, &settings).unwrap();
    let mut writer = SegmentWriter::new(settings.clone(), Cursor::new(Vec::new())).unwrap();
    for file in &files {
        writer
            .add(FileInput {
                uid: &file.uid,
                created_at: file.created_at,
                content_type: file.content_type.as_deref(),
                bytes: &file.bytes,
            })
            .unwrap();
    }
    writer.retain(|uid| uid.ends_with(['1', '3', '5', '7']));
    let mut out = Vec::new();
    writer.finish(&mut out).unwrap();
    assert_eq!(out, expected);
}
