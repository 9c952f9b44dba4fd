//! Frozen routing vectors. If this test fails, routing changed and every file already
//! stored would become unreachable: do not "fix" the vectors, fix the code (or add a new
//! routing epoch). The same table is printed in FORMAT.md §7.

use vera_protocol::Timestamp;
use vera_protocol::routing::{ShardAddr, locate_shard, uid_hash};

/// (uid, created_at, n_bits, first 8 bytes of the uid hash as LE u64, segment key for generation 0)
const GOLDEN: &[(&str, &str, u8, u64, &str)] = &[
    ("a", "2026-11-24T10:00:00Z", 0, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n00-0/g000000.vera"),
    ("a", "2026-11-24T10:00:00Z", 1, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n01-1/g000000.vera"),
    ("a", "2026-11-24T10:00:00Z", 4, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n04-b/g000000.vera"),
    ("a", "2026-11-24T10:00:00Z", 8, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n08-b2/g000000.vera"),
    ("a", "2026-11-24T10:00:00Z", 16, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n16-b2d5/g000000.vera"),
    ("a", "2026-11-24T10:00:00Z", 20, 0xb2d5bb4603a48d3c, "e1/d2026-11-24/n20-b2d5b/g000000.vera"),
    ("receipt-000000001", "2026-01-01T00:00:00Z", 4, 0x53421ca7f8c318b2, "e1/d2026-01-01/n04-5/g000000.vera"),
    ("receipt-000000002", "2026-01-01T00:00:00Z", 4, 0x0ce2fc71a33876f5, "e1/d2026-01-01/n04-0/g000000.vera"),
    ("receipt-000000003", "2026-01-01T23:59:59.999999Z", 4, 0xeba3500357cd5f1e, "e1/d2026-01-01/n04-e/g000000.vera"),
    ("receipt-000000004", "2026-01-02T00:00:00Z", 4, 0x6c6d4be0ecaed423, "e1/d2026-01-02/n04-6/g000000.vera"),
    (
        "550e8400-e29b-41d4-a716-446655440000",
        "2024-02-29T12:00:00Z",
        12,
        0x9bf0dd2e936a0b3e,
        "e1/d2024-02-29/n12-9bf/g000000.vera",
    ),
    (
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "2000-01-01T00:00:00Z",
        12,
        0x59e3c8503558a983,
        "e1/d2000-01-01/n12-59e/g000000.vera",
    ),
    (
        "DICOM.1.2.840.113619.2.55.3.604688119",
        "2015-06-30T23:59:60Z",
        10,
        0x5d39f3e45bb7bef4,
        "e1/d2015-06-30/n10-174/g000000.vera",
    ),
    ("cdr/2026/11/24/000001", "2026-11-24T13:14:15+02:00", 6, 0x2af7257105d9d868, "e1/d2026-11-24/n06-0a/g000000.vera"),
    ("cdr/2026/11/24/000002", "2026-11-24T13:14:15-10:00", 6, 0x5e503bb03865e8f1, "e1/d2026-11-24/n06-17/g000000.vera"),
    ("naïve-ünïcode-✓", "2026-11-24T10:00:00Z", 8, 0xe60bc34896c57c46, "e1/d2026-11-24/n08-e6/g000000.vera"),
    ("日本語のファイル", "2026-11-24T10:00:00Z", 8, 0xb5c42641f712bfe9, "e1/d2026-11-24/n08-b5/g000000.vera"),
    ("x", "1900-01-01T00:00:00Z", 3, 0xda7c6bfb9b951290, "e1/d1900-01-01/n03-6/g000000.vera"),
    ("x", "1969-12-31T23:59:59.999999Z", 3, 0xda7c6bfb9b951290, "e1/d1969-12-31/n03-6/g000000.vera"),
    ("x", "1970-01-01T00:00:00Z", 3, 0xda7c6bfb9b951290, "e1/d1970-01-01/n03-6/g000000.vera"),
    ("x", "9999-12-31T23:59:59.999999Z", 3, 0xda7c6bfb9b951290, "e1/d9999-12-31/n03-6/g000000.vera"),
    ("pdf-9f86d081884c7d65", "2038-01-19T03:14:08Z", 16, 0xcc072268a913a682, "e1/d2038-01-19/n16-cc07/g000000.vera"),
    ("scan_0001.tiff", "2026-03-29T01:30:00+01:00", 5, 0xa1b2063e027c7857, "e1/d2026-03-29/n05-14/g000000.vera"),
    ("scan_0002.tiff", "2026-10-25T02:30:00+02:00", 5, 0xa1b155f6e299c602, "e1/d2026-10-25/n05-14/g000000.vera"),
    ("0", "2026-11-24T10:00:00Z", 2, 0x86276de56522c46f, "e1/d2026-11-24/n02-2/g000000.vera"),
    ("1", "2026-11-24T10:00:00Z", 2, 0x6f99efb47003e037, "e1/d2026-11-24/n02-1/g000000.vera"),
    ("00", "2026-11-24T10:00:00Z", 2, 0x6b6d3acde2f0c95f, "e1/d2026-11-24/n02-1/g000000.vera"),
    ("uid with spaces", "2026-11-24T10:00:00Z", 7, 0x281d807613801a98, "e1/d2026-11-24/n07-14/g000000.vera"),
    ("z", "1999-12-31T23:59:59Z", 9, 0x81c67f6d19eadd17, "e1/d1999-12-31/n09-103/g000000.vera"),
    ("tenant-42/invoice-7", "2026-11-24T10:00:00Z", 11, 0xb4852074f3b16181, "e1/d2026-11-24/n11-5a4/g000000.vera"),
    ("tenant-43/invoice-7", "2026-11-24T10:00:00Z", 11, 0x4585e90d432c745c, "e1/d2026-11-24/n11-22c/g000000.vera"),
    ("L", "2026-11-24T10:00:00Z", 13, 0xe27d47813314b12c, "e1/d2026-11-24/n13-1c4f/g000000.vera"),
    (
        "account:NL91ABNA0417164300",
        "2030-05-05T05:05:05Z",
        14,
        0x6c35eec11529a118,
        "e1/d2030-05-05/n14-1b0d/g000000.vera",
    ),
    ("last-vector", "2026-11-24T10:00:00Z", 15, 0x894b144ca5360845, "e1/d2026-11-24/n15-44a5/g000000.vera"),
];

#[test]
fn golden_vectors_never_change() {
    assert!(GOLDEN.len() >= 32);
    for &(uid, created_at, n_bits, hash, key) in GOLDEN {
        let created_at = Timestamp::parse(created_at).unwrap();
        assert_eq!(uid_hash(uid), hash, "uid hash of {uid:?}");
        let addr = locate_shard(uid, created_at, n_bits).unwrap();
        assert_eq!(addr.segment_key(0), key, "address of {uid:?}");
        assert_eq!(ShardAddr::from_segment_key(key).unwrap(), (addr, 0));
    }
}

/// FORMAT.md §7: uid fingerprints (format 2's sort key), computed independently in Python.
const FINGERPRINTS: &[(&str, u64)] = &[
    ("a", 0x6cda58b6d2eff955),
    ("receipt-000000001", 0x3706f8704da25487),
    ("naïve-ünïcode-✓", 0x07d15b0399437b50),
    ("日本語のファイル", 0x703209b3d1c5d412),
    ("uid with spaces", 0x8308f67ebbfcbbbc),
];

#[test]
fn fingerprint_vectors_never_change() {
    for &(uid, fingerprint) in FINGERPRINTS {
        assert_eq!(vera_protocol::routing::uid_fingerprint(uid), fingerprint, "fingerprint of {uid:?}");
    }
}
