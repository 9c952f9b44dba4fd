//! SQLite source through sqlx: the embedded default.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use vera_protocol::message::Slot;

use crate::sql::{self, Dialect};
use crate::{Source, SourceError, SourceMapping, SourceRow};

pub struct SqliteSource {
    name: String,
    pool: SqlitePool,
    mapping: SourceMapping,
}

impl SqliteSource {
    /// Opens an existing database read-only.
    pub async fn open(name: &str, path: impl AsRef<Path>, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        let url = format!("sqlite://{}", path.as_ref().display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| SourceError::Config(format!("invalid sqlite path: {e}")))?
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(SourceError::Query)?;
        Ok(SqliteSource { name: name.to_owned(), pool, mapping })
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next_slot(&self, after: i64, max_rows: u64, max_bytes: u64) -> Result<Option<Slot>, SourceError> {
        let sql = sql::next_slot_sql(Dialect::Sqlite, &self.mapping);
        let limit = i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX);
        let mut rows = sqlx::query(&sql).bind(after).bind(limit).fetch(&self.pool);
        let mut slot = None;
        while let Some(row) = rows.next().await {
            let row = row.map_err(SourceError::Query)?;
            let watermark: i64 = row.try_get("wm").map_err(SourceError::Query)?;
            let size = u64::try_from(row.try_get::<i64, _>("size").map_err(SourceError::Query)?).unwrap_or(0);
            if !sql::grow_slot(&mut slot, after, watermark, size, max_bytes) {
                break;
            }
        }
        Ok(slot)
    }

    fn read_slot(&self, slot: Slot) -> BoxStream<'_, Result<SourceRow, SourceError>> {
        let sql = sql::select_rows_sql(Dialect::Sqlite, &self.mapping);
        let base_dir = sql::path_base(&self.mapping);
        let pool = self.pool.clone();
        // Rows stream straight from the cursor: memory holds one row at a time.
        async_stream::try_stream! {
            let mut rows = sqlx::query(&sql).bind(slot.after).bind(slot.up_to).fetch(&pool);
            while let Some(row) = rows.next().await {
                let row = row.map_err(SourceError::Query)?;
                yield sql::convert_row(&row, base_dir.as_ref())?;
            }
        }
        .boxed()
    }
}

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
