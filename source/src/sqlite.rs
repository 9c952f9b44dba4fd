//! SQLite source through sqlx: the embedded default.

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
