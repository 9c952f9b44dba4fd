//! PostgreSQL source through sqlx. Same mapping and semantics as SQLite; `bytea`
//! payloads, any integer watermark, `created_at` as text or `timestamp[tz]` (converted to
//! RFC 3339, `timestamp` without zone taken as UTC).

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use vera_protocol::message::Slot;

use crate::sql::{self, Dialect};
use crate::{Source, SourceError, SourceMapping, SourceRow};

pub struct PostgresSource {
    name: String,
    pool: PgPool,
    mapping: SourceMapping,
}

impl PostgresSource {
    /// `url` like `postgres://user@host:5432/db` (credentials from the environment, never
    /// from config files).
    pub async fn connect(name: &str, url: &str, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(SourceError::Query)?;
        Ok(PostgresSource { name: name.to_owned(), pool, mapping })
    }
}

#[async_trait]
impl Source for PostgresSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next_slot(&self, after: i64, max_rows: u64, max_bytes: u64) -> Result<Option<Slot>, SourceError> {
        let sql = sql::next_slot_sql(Dialect::Postgres, &self.mapping);
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
        let sql = sql::select_rows_sql(Dialect::Postgres, &self.mapping);
        let base_dir = sql::path_base(&self.mapping);
        let pool = self.pool.clone();
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
