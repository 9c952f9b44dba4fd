//! The SQLite source plans slots by rows and bytes and streams raw rows, bad ones included.
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

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
    };
    let source = SqliteSource::open("docs", &path, mapping.clone()).await.unwrap();
    let slot = source.next_slot(0, 10, 10).await.unwrap().unwrap();
    let rows: Vec<_> = source.read_slot(slot).try_collect().await.unwrap();
    assert_eq!(rows[0].payload, RowPayload::Path(dir.path().join("sub/x.pdf")));
    let hostile = SourceMapping { table: "docs; DROP TABLE docs".into(), ..mapping };
    assert!(SqliteSource::open("docs", &path, hostile).await.is_err());
}
