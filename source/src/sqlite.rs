//! SQLite source through sqlx: the embedded default.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use vera_protocol::message::Slot;

use crate::{PayloadKind, RowPayload, Source, SourceError, SourceMapping, SourceRow};

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

    fn select_rows_sql(&self) -> String {
        let m = &self.mapping;
        let content_type = m.content_type_column.as_deref().map_or("NULL".to_owned(), |c| format!("\"{c}\""));
        format!(
            "SELECT \"{w}\" AS wm, CAST(\"{u}\" AS TEXT) AS uid, CAST(\"{c}\" AS TEXT) AS created_at, {content_type} AS content_type, \"{p}\" AS payload \
             FROM \"{t}\" WHERE \"{w}\" > ? AND \"{w}\" <= ? ORDER BY \"{w}\"",
            w = m.watermark_column,
            u = m.uid_column,
            c = m.created_at_column,
            p = m.payload_column,
            t = m.table
        )
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next_slot(&self, after: i64, max_rows: u64, max_bytes: u64) -> Result<Option<Slot>, SourceError> {
        let m = &self.mapping;
        let size = match m.payload {
            PayloadKind::Inline => format!("COALESCE(length(\"{}\"), 0)", m.payload_column),
            PayloadKind::Path { .. } => "0".to_owned(),
        };
        let sql = format!(
            "SELECT \"{w}\" AS wm, {size} AS size FROM \"{t}\" WHERE \"{w}\" > ? ORDER BY \"{w}\" LIMIT ?",
            w = m.watermark_column,
            t = m.table
        );
        let mut rows =
            sqlx::query(&sql).bind(after).bind(i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX)).fetch(&self.pool);
        let mut slot: Option<Slot> = None;
        while let Some(row) = rows.next().await {
            let row = row.map_err(SourceError::Query)?;
            let watermark: i64 = row.try_get("wm").map_err(SourceError::Query)?;
            let size = u64::try_from(row.try_get::<i64, _>("size").map_err(SourceError::Query)?).unwrap_or(0);
            match &mut slot {
                None => slot = Some(Slot { after, up_to: watermark, rows: 1, bytes: size }),
                Some(current) => {
                    if current.bytes.saturating_add(size) > max_bytes {
                        break;
                    }
                    current.up_to = watermark;
                    current.rows += 1;
                    current.bytes += size;
                }
            }
        }
        Ok(slot)
    }

    fn read_slot(&self, slot: Slot) -> BoxStream<'_, Result<SourceRow, SourceError>> {
        let sql = self.select_rows_sql();
        let base_dir = match &self.mapping.payload {
            PayloadKind::Path { base_dir } => Some(base_dir.clone()),
            PayloadKind::Inline => None,
        };
        let pool = self.pool.clone();
        // Rows stream straight from the cursor: memory holds one row at a time.
        async_stream::try_stream! {
            let mut rows = sqlx::query(&sql).bind(slot.after).bind(slot.up_to).fetch(&pool);
            while let Some(row) = rows.next().await {
                let row = row.map_err(SourceError::Query)?;
                yield convert_row(&row, base_dir.as_ref())?;
            }
        }
        .boxed()
    }
}

fn convert_row(
    row: &sqlx::sqlite::SqliteRow,
    base_dir: Option<&Option<std::path::PathBuf>>,
) -> Result<SourceRow, SourceError> {
    let payload = match base_dir {
        None => match row.try_get::<Option<Vec<u8>>, _>("payload").map_err(SourceError::Query)? {
            Some(bytes) => RowPayload::Inline(bytes),
            None => RowPayload::Null,
        },
        Some(base) => match row.try_get::<Option<String>, _>("payload").map_err(SourceError::Query)? {
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                RowPayload::Path(match base {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path,
                })
            }
            None => RowPayload::Null,
        },
    };
    Ok(SourceRow {
        watermark: row.try_get("wm").map_err(SourceError::Query)?,
        uid: row.try_get("uid").map_err(SourceError::Query)?,
        created_at: row.try_get("created_at").map_err(SourceError::Query)?,
        content_type: row.try_get("content_type").map_err(SourceError::Query)?,
        payload,
    })
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
