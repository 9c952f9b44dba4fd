//! The SQLite source plans slots by rows and bytes and streams raw rows, bad ones included.
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use vera_protocol::message::ScanPosition;

use futures::TryStreamExt;
use vera_source::sqlite::SqliteSource;
use vera_source::{PayloadKind, RowPayload, Source, SourceMapping, conformance};

async fn fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for (id, uid, created_at, content_type, payload) in conformance::FIXTURE {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, ?, ?)")
            .bind(id)
            .bind(uid)
            .bind(created_at)
            .bind(content_type)
            .bind(payload.map(<[u8]>::to_vec))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    path
}

#[tokio::test]
async fn sqlite_source_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteSource::open("demo", fixture(dir.path()).await, conformance::mapping()).await.unwrap();
    conformance::run_all(&source).await;
}

#[tokio::test]
async fn path_payloads_resolve_against_base_dir_and_bad_identifiers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    let mut connection = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
    sqlx::raw_sql("CREATE TABLE docs (seq INTEGER PRIMARY KEY, id TEXT, ts TEXT, loc TEXT); INSERT INTO docs VALUES (1, 'x', '2026-01-01T00:00:00Z', 'sub/x.pdf');")
        .execute(&mut connection)
        .await
        .unwrap();
    let mapping = SourceMapping {
        table: "docs".into(),
        uid_column: "id".into(),
        created_at_column: "ts".into(),
        payload_column: "loc".into(),
        payload: PayloadKind::Path { base_dir: Some(dir.path().to_path_buf()) },
        content_type_column: None,
        watermark_column: "seq".into(),
        visibility: vera_source::Visibility::WatermarkOrder,
    };
    let source = SqliteSource::open("docs", &path, mapping.clone()).await.unwrap();
    let slot = source.next_slot(ScanPosition::watermark(0), 10, 10).await.unwrap().unwrap();
    let rows: Vec<_> = source.read_slot(slot).try_collect().await.unwrap();
    assert_eq!(rows[0].payload, RowPayload::Path(dir.path().join("sub/x.pdf")));
    let hostile = SourceMapping { table: "docs; DROP TABLE docs".into(), ..mapping };
    assert!(SqliteSource::open("docs", &path, hostile).await.is_err());
}

/// `day1` rows on 2026-11-01 (watermarks from 1), then `day2` rows on 2026-11-02, except
/// row `late`, which arrives late: it was created on 2026-11-01.
async fn two_days(dir: &std::path::Path, day1: i64, day2: i64, late: Option<i64>) -> SqliteSource {
    let path = dir.join(format!("days-{day1}-{day2}-{late:?}.sqlite"));
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=day1 + day2 {
        let day = if id <= day1 || Some(id) == late { 1 } else { 2 };
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, 'text/plain', ?)")
            .bind(id)
            .bind(format!("u{id}"))
            .bind(format!("2026-11-0{day}T{:02}:00:00Z", id % 24))
            .bind(b"0123456789".to_vec())
            .execute(&mut connection)
            .await
            .unwrap();
    }
    SqliteSource::open("days", &path, SourceMapping::demo()).await.unwrap()
}

#[tokio::test]
async fn aligned_slots_end_on_day_boundaries_when_a_limit_cuts_inside_a_day() {
    use vera_protocol::routing::{RoutingEpoch, RoutingTable};
    let routing = RoutingTable::single(RoutingEpoch::v1(2).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let source = two_days(dir.path(), 10, 10, None).await;
    let cut = |slot: Option<vera_protocol::message::Slot>| slot.map(|s| (s.after, s.up_to, s.rows, s.bytes));

    // 15 rows would take 5 of day 2: the slot ends with day 1 instead.
    assert_eq!(
        cut(source.next_slot(ScanPosition::watermark(0), 15, u64::MAX).await.unwrap()),
        Some((0, 15, 15, 150)),
        "unaligned"
    );
    assert_eq!(
        cut(source.next_slot_aligned(ScanPosition::watermark(0), 15, u64::MAX, &routing).await.unwrap()),
        Some((0, 10, 10, 100))
    );
    // The tail is not cut by a limit: nothing to align.
    assert_eq!(
        cut(source.next_slot_aligned(ScanPosition::watermark(10), 15, u64::MAX, &routing).await.unwrap()),
        Some((10, 20, 10, 100))
    );
    // A limit that already falls on the boundary keeps the slot whole.
    assert_eq!(
        cut(source.next_slot_aligned(ScanPosition::watermark(0), 10, u64::MAX, &routing).await.unwrap()),
        Some((0, 10, 10, 100))
    );
    // The byte limit aligns the same way (12 rows fit in 125 bytes).
    assert_eq!(
        cut(source.next_slot_aligned(ScanPosition::watermark(0), 100, 125, &routing).await.unwrap()),
        Some((0, 10, 10, 100))
    );
    // Cutting back would keep less than half the slot: it stays as the limit cut it.
    let early = two_days(dir.path(), 3, 17, None).await;
    assert_eq!(
        cut(early.next_slot_aligned(ScanPosition::watermark(0), 15, u64::MAX, &routing).await.unwrap()),
        Some((0, 15, 15, 150))
    );
    // A late row of day 1 among day 2's rows is no boundary: the cut stays where day 2 began.
    let late = two_days(dir.path(), 10, 10, Some(13)).await;
    assert_eq!(
        cut(late.next_slot_aligned(ScanPosition::watermark(0), 15, u64::MAX, &routing).await.unwrap()),
        Some((0, 10, 10, 100))
    );
    // Inside one day there is no boundary to cut at.
    assert_eq!(
        cut(early.next_slot_aligned(ScanPosition::watermark(3), 5, u64::MAX, &routing).await.unwrap()),
        Some((3, 8, 5, 50))
    );
}
