//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

use std::path::Path;

/// uid, created_at and payload of the rows `sql` selects from a generated SQLite corpus,
/// NULL as `None`.
fn query(path: &Path, sql: &str) -> Vec<NullableRow> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::{ConnectOptions, Row};
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true).connect().await.unwrap();
        sqlx::query(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.get("uid"), row.get("created_at"), row.get("payload")))
            .collect()
    })
}

/// A row of a corpus without bad rows.
fn good(row: NullableRow) -> (String, String, Vec<u8>) {
    (row.0.expect("uid"), row.1.expect("created_at"), row.2.expect("payload"))
}

/// uid, created_at and payload of the first row of a generated SQLite corpus.
pub fn first_row(path: &Path) -> (String, String, Vec<u8>) {
    good(query(path, "SELECT uid, created_at, payload FROM files ORDER BY id LIMIT 1").remove(0))
}

/// Every row of a generated corpus without bad rows (`--bad-rows-per-kind 0`), in id order.
pub fn all_rows(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    nullable_rows(path).into_iter().map(good).collect()
}

/// A source row as stored, bad rows included: uid, created_at and payload may be NULL.
pub type NullableRow = (Option<String>, Option<String>, Option<Vec<u8>>);

/// Every row of a generated corpus, bad ones included, in id order.
pub fn nullable_rows(path: &Path) -> Vec<NullableRow> {
    query(path, "SELECT uid, created_at, payload FROM files ORDER BY id")
}
