//! The PostgreSQL and MariaDB sources pass the same conformance suite as SQLite, against
//! the real servers on loopback (`./scripts/services` starts them). Endpoints come from
//! `VERA_TEST_POSTGRES_URL` and `VERA_TEST_MYSQL_URL`, with loopback defaults.

use sqlx::Connection;
use vera_protocol::message::ScanPosition;
use vera_source::conformance::{self, FIXTURE};
use vera_source::mysql::MySqlSource;
use vera_source::postgres::PostgresSource;
use vera_source::{Source, SourceMapping};

fn postgres_url() -> String {
    std::env::var("VERA_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("VERA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn table_name() -> String {
    format!("vera_files_{:08x}", rand::random::<u32>())
}

fn mapping(table: &str) -> SourceMapping {
    SourceMapping { table: table.to_owned(), ..conformance::mapping() }
}

#[tokio::test]
async fn postgres_source_passes_conformance() {
    let table = table_name();
    let mut connection =
        sqlx::PgConnection::connect(&postgres_url()).await.expect("PostgreSQL on loopback (./scripts/services)");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload BYTEA)"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    for (id, uid, created_at, content_type, payload) in FIXTURE {
        sqlx::query(&format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, $5)"))
            .bind(id)
            .bind(uid)
            .bind(created_at)
            .bind(content_type)
            .bind(payload.map(<[u8]>::to_vec))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = PostgresSource::connect("pg", &postgres_url(), mapping(&table)).await.unwrap();
    conformance::run_all(&source).await;
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
}

#[tokio::test]
async fn postgres_timestamptz_and_serial_columns_work() {
    let table = table_name();
    let mut connection = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (seq SERIAL PRIMARY KEY, uid TEXT, created_at TIMESTAMPTZ, content_type TEXT, payload BYTEA);
         INSERT INTO {table} (uid, created_at, payload) VALUES ('a', '2026-11-24 11:00:00+01', 'x'), ('b', '2026-11-24 10:00:00.25+00', 'y');"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    let source = PostgresSource::connect(
        "pg",
        &postgres_url(),
        SourceMapping { watermark_column: "seq".into(), ..mapping(&table) },
    )
    .await
    .unwrap();
    let slot = source.next_slot(ScanPosition::watermark(0), 10, 1000).await.unwrap().unwrap();
    let rows: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(source.read_slot(slot)).await.unwrap();
    let parsed: Vec<_> =
        rows.iter().map(|r| vera_protocol::Timestamp::parse(r.created_at.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(parsed[0], vera_protocol::Timestamp::parse("2026-11-24T10:00:00Z").unwrap());
    assert_eq!(parsed[1], vera_protocol::Timestamp::parse("2026-11-24T10:00:00.25Z").unwrap());
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
}

#[tokio::test]
async fn mysql_source_passes_conformance() {
    let table = table_name();
    let mut connection =
        sqlx::MySqlConnection::connect(&mysql_url()).await.expect("MariaDB on loopback (./scripts/services)");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid VARCHAR(255), created_at VARCHAR(64), content_type VARCHAR(127), payload LONGBLOB)"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    for (id, uid, created_at, content_type, payload) in FIXTURE {
        sqlx::query(&format!("INSERT INTO {table} VALUES (?, ?, ?, ?, ?)"))
            .bind(id)
            .bind(uid)
            .bind(created_at)
            .bind(content_type)
            .bind(payload.map(<[u8]>::to_vec))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = MySqlSource::connect("my", &mysql_url(), mapping(&table)).await.unwrap();
    conformance::run_all(&source).await;
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
}

#[tokio::test]
async fn mysql_datetime_columns_are_read_as_utc() {
    let table = table_name();
    let mut connection = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, uid VARCHAR(64), created_at DATETIME(6), content_type VARCHAR(64), payload LONGBLOB);
         INSERT INTO {table} (uid, created_at, payload) VALUES ('a', '2026-11-24 10:00:00.5', 'x');"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    let source = MySqlSource::connect("my", &mysql_url(), mapping(&table)).await.unwrap();
    let slot = source.next_slot(ScanPosition::watermark(0), 10, 1000).await.unwrap().unwrap();
    let rows: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(source.read_slot(slot)).await.unwrap();
    let created_at = vera_protocol::Timestamp::parse(rows[0].created_at.as_deref().unwrap()).unwrap();
    assert_eq!(created_at, vera_protocol::Timestamp::parse("2026-11-24T10:00:00.5Z").unwrap());
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
}

/// What `connect` says of a table that cannot be scanned safely: each missing piece by
/// name, never a silent fallback to the watermark-order scan.
async fn refusal<F: std::future::Future<Output = Result<T, vera_source::SourceError>>, T>(connect: F) -> String {
    match connect.await {
        Err(error @ vera_source::SourceError::Unprepared { .. }) => error.to_string(),
        Err(other) => panic!("expected an unprepared-table error, got {other:?}"),
        Ok(_) => panic!("an unprepared table was accepted"),
    }
}

#[tokio::test]
async fn postgres_tables_without_a_transaction_id_column_and_index_are_refused() {
    let mut connection = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    let visibility = vera_source::Visibility::TransactionId { column: "vera_xid".into() };
    let cases = [
        ("", "has no column \"vera_xid\""),
        (", vera_xid BIGINT", "is bigint, not xid8"),
        (", vera_xid xid8", "must default to pg_current_xact_id()"),
        (", vera_xid xid8 NOT NULL DEFAULT pg_current_xact_id()", "no index starts with \"vera_xid\""),
    ];
    for (column, expected) in cases {
        let table = table_name();
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload BYTEA{column})"
        ))
        .execute(&mut connection)
        .await
        .unwrap();
        let mapping = SourceMapping { visibility: visibility.clone(), ..mapping(&table) };
        let message = refusal(PostgresSource::connect("pg", &postgres_url(), mapping)).await;
        assert!(message.contains(expected), "{column:?}: {message}");
        sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
    }
    let table = table_name();
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload BYTEA, \
         vera_xid xid8 NOT NULL DEFAULT pg_current_xact_id()); CREATE INDEX ON {table} (vera_xid, id)"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    let mapping = SourceMapping { visibility, ..mapping(&table) };
    assert!(PostgresSource::connect("pg", &postgres_url(), mapping.clone()).await.is_ok(), "a prepared table");
    let missing = SourceMapping { uid_column: "no_such_column".into(), ..mapping };
    let message = refusal(PostgresSource::connect("pg", &postgres_url(), missing)).await;
    assert!(message.contains("mapped columns cannot be read"), "{message}");
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
}

#[tokio::test]
async fn mysql_tables_without_an_insert_time_column_and_index_are_refused() {
    let mut connection = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
    let visibility = vera_source::Visibility::InsertTime { column: "vera_inserted_at".into(), settle_millis: 1000 };
    let base =
        "id BIGINT PRIMARY KEY, uid VARCHAR(64), created_at VARCHAR(64), content_type VARCHAR(64), payload LONGBLOB";
    let cases = [
        ("", "", "has no column \"vera_inserted_at\""),
        (", vera_inserted_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6)", "", "not TIMESTAMP(6)"),
        (
            ", vera_inserted_at TIMESTAMP(6) NOT NULL DEFAULT '2026-01-01 00:00:00'",
            "",
            "must default to CURRENT_TIMESTAMP(6)",
        ),
        (", vera_inserted_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)", "", "no index starts with"),
        (
            ", vera_inserted_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), INDEX (vera_inserted_at, id)",
            " ENGINE=MyISAM",
            "not InnoDB",
        ),
    ];
    for (column, engine, expected) in cases {
        let table = table_name();
        sqlx::raw_sql(&format!("CREATE TABLE {table} ({base}{column}){engine}"))
            .execute(&mut connection)
            .await
            .unwrap();
        let mapping = SourceMapping { visibility: visibility.clone(), ..mapping(&table) };
        let message = refusal(MySqlSource::connect("my", &mysql_url(), mapping)).await;
        assert!(message.contains(expected), "{column:?}{engine}: {message}");
        sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&mut connection).await.unwrap();
    }
}
