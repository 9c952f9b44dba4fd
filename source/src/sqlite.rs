//! SQLite source through sqlx: the embedded default.
//!
//! SQLite has one writer at a time: a transaction takes the write lock before it
//! inserts, and a row's id is assigned under that lock, so rows become visible in id
//! order and the watermark scan is complete without a horizon. Two caveats, in the
//! README's configuration notes: with a plain `INTEGER PRIMARY KEY` SQLite reuses the id
//! of a deleted last row (declare `AUTOINCREMENT` if rows are ever deleted), and ids
//! given explicitly by the application must still only grow.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::sql::{self, Dialect};
use crate::{SourceError, SourceMapping};

pub struct SqliteSource {
    name: String,
    pool: SqlitePool,
    mapping: SourceMapping,
}

impl SqliteSource {
    /// Opens an existing database read-only.
    pub async fn open(name: &str, path: impl AsRef<Path>, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        if mapping.visibility != crate::Visibility::WatermarkOrder {
            // One writer at a time: a row id is taken inside the write transaction that
            // commits it, so ids become visible in order and no horizon is needed.
            return Err(SourceError::Config(
                "SQLite has a single writer and is scanned in watermark order; it takes no visibility column".into(),
            ));
        }
        let url = format!("sqlite://{}", path.as_ref().display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| SourceError::Config(format!("invalid sqlite path: {e}")))?
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(SourceError::Query)?;
        let source = SqliteSource { name: name.to_owned(), pool, mapping };
        source.probe_columns().await?;
        Ok(source)
    }
}

sql::impl_sql_source!(SqliteSource, Dialect::Sqlite);

/// The table [`SourceMapping::demo`] reads: the demo corpus and the tests use it.
pub const DEMO_TABLE_DDL: &str =
    "CREATE TABLE files (id INTEGER PRIMARY KEY, uid TEXT, created_at TEXT, content_type TEXT, payload BLOB)";

/// Creates a SQLite database at `path` holding an empty demo table, and returns a
/// connection to fill it with.
pub async fn create_demo_database(path: &Path) -> Result<sqlx::SqliteConnection, SourceError> {
    use sqlx::ConnectOptions;
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .connect()
        .await
        .map_err(SourceError::Query)?;
    sqlx::raw_sql(DEMO_TABLE_DDL).execute(&mut connection).await.map_err(SourceError::Query)?;
    Ok(connection)
}
