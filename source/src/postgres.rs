//! PostgreSQL source through sqlx. Same mapping and semantics as SQLite; `bytea`
//! payloads, any integer watermark, `created_at` as text or `timestamp[tz]` (converted to
//! RFC 3339, `timestamp` without zone taken as UTC).

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::sql::{self, Dialect};
use crate::{SourceError, SourceMapping};

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

sql::impl_sql_source!(PostgresSource, Dialect::Postgres);
