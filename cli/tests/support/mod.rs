//! Helpers shared by the CLI integration tests.

use std::path::Path;

/// uid, created_at and payload of the first row of a generated SQLite corpus.
pub fn first_row(path: &Path) -> (String, String, Vec<u8>) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::{ConnectOptions, Row};
        let mut connection =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true).connect().await.unwrap();
        let row = sqlx::query("SELECT uid, created_at, payload FROM files ORDER BY id LIMIT 1")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        (row.get("uid"), row.get("created_at"), row.get("payload"))
    })
}
