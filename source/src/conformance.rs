//! The behaviour every `Source` backend must show. A backend's test creates the table
//! [`FIXTURE_DDL_NOTE`] describes, inserts [`FIXTURE`], opens a source over it with
//! [`SourceMapping::demo`] and calls [`run_all`].

use futures::TryStreamExt;

use vera_protocol::message::ScanPosition;

use crate::{RowPayload, Source, SourceMapping};

/// Table `files (id, uid, created_at, content_type, payload)` with an integer `id`
/// watermark, text columns and a binary payload.
pub const FIXTURE_DDL_NOTE: &str =
    "files(id integer primary key, uid text, created_at text, content_type text, payload blob)";

/// `(id, uid, created_at, content_type, payload)` of one fixture row.
pub type FixtureRow = (i64, Option<&'static str>, Option<&'static str>, Option<&'static str>, Option<&'static [u8]>);

/// The fixture rows, bad ones included.
pub const FIXTURE: &[FixtureRow] = &[
    (1, Some("a"), Some("2026-11-24T10:00:00Z"), Some("text/plain"), Some(b"hi")),
    (2, Some("b"), Some("not a date"), None, Some(b"\x00")),
    (3, Some("c"), Some("1795514400000000"), Some("application/json"), None),
    (5, Some("d"), Some("2026-11-24T10:00:00Z"), None, Some(&[0u8; 1000])),
    (9, None, Some("2026-11-24T10:00:00Z"), None, Some(b"\x01")),
];

pub fn mapping() -> SourceMapping {
    SourceMapping::demo()
}

pub async fn run_all(source: &dyn Source) {
    slots_respect_row_and_byte_limits(source).await;
    rows_stream_raw_in_watermark_order(source).await;
}

pub async fn slots_respect_row_and_byte_limits(source: &dyn Source) {
    let slot = source.next_slot(ScanPosition::watermark(0), 2, u64::MAX).await.expect("plan").expect("rows exist");
    assert_eq!((slot.after, slot.up_to, slot.rows), (0, 2, 2));
    let by_bytes = source.next_slot(ScanPosition::watermark(2), 100, 10).await.expect("plan").expect("rows exist");
    assert_eq!((by_bytes.up_to, by_bytes.rows), (3, 1), "the 1000-byte row does not fit 10 bytes");
    let oversized = source.next_slot(ScanPosition::watermark(3), 100, 10).await.expect("plan").expect("rows exist");
    assert_eq!((oversized.up_to, oversized.rows), (5, 1), "a slot always takes at least one row");
    assert_eq!(source.next_slot(ScanPosition::watermark(9), 100, 100).await.expect("plan"), None);
}

pub async fn rows_stream_raw_in_watermark_order(source: &dyn Source) {
    let slot = source.next_slot(ScanPosition::watermark(0), 100, u64::MAX).await.expect("plan").expect("rows exist");
    let rows: Vec<_> = source.read_slot(slot).try_collect().await.expect("read");
    assert_eq!(rows.iter().map(|r| r.watermark).collect::<Vec<_>>(), vec![1, 2, 3, 5, 9]);
    assert_eq!(rows[0].payload, RowPayload::Inline(b"hi".to_vec()));
    assert_eq!(rows[0].content_type.as_deref(), Some("text/plain"));
    assert_eq!(rows[1].created_at.as_deref(), Some("not a date"));
    assert_eq!(rows[2].payload, RowPayload::Null);
    assert_eq!(rows[3].payload, RowPayload::Inline(vec![0u8; 1000]));
    assert_eq!(rows[4].uid, None);
}
