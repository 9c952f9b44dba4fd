//! PostgreSQL source through sqlx. Same mapping and semantics as SQLite; `bytea`
//! payloads, any integer watermark, `created_at` as text or `timestamp[tz]` (converted to
//! RFC 3339, `timestamp` without zone taken as UTC).
//!
//! A live table is scanned by its inserting transaction's id ([`Visibility::TransactionId`]):
//! `connect` checks that the column is an `xid8` filled by `pg_current_xact_id()` and
//! leads an index, and refuses the table otherwise.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::sql::{self, Dialect};
use crate::{SourceError, SourceMapping, Visibility};

pub struct PostgresSource {
    name: String,
    pool: PgPool,
    mapping: SourceMapping,
}

impl PostgresSource {
    /// `url` like `postgres://user@host:5432/db` (credentials from the environment, never
    /// from config files). Fails, naming what is missing, if the table cannot be scanned
    /// as its mapping says.
    pub async fn connect(name: &str, url: &str, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        if matches!(mapping.visibility, Visibility::InsertTime { .. }) {
            return Err(SourceError::Config(
                "PostgreSQL sources use the transaction-id visibility, not insert-time".into(),
            ));
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(SourceError::Query)?;
        let source = PostgresSource { name: name.to_owned(), pool, mapping };
        source.check_table().await?;
        Ok(source)
    }

    async fn check_table(&self) -> Result<(), SourceError> {
        // The visibility column first, so that a missing one is named with its fix.
        if let Visibility::TransactionId { column } = &self.mapping.visibility {
            self.check_transaction_id(column).await?;
        }
        self.probe_columns().await
    }

    async fn check_transaction_id(&self, column: &str) -> Result<(), SourceError> {
        let table = &self.mapping.table;
        let unprepared = |reason: String| SourceError::Unprepared { table: table.clone(), reason };
        let found: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
        )
        .bind(table)
        .bind(column)
        .fetch_optional(&self.pool)
        .await
        .map_err(SourceError::Query)?;
        let add_it = format!(
            "add it with `ALTER TABLE {table} ADD COLUMN {column} xid8 NOT NULL DEFAULT pg_current_xact_id()` \
             and `CREATE INDEX ON {table} ({column}, {watermark})`",
            watermark = self.mapping.watermark_column
        );
        let Some((column_type, default)) = found else {
            return Err(unprepared(format!("it has no column {column:?} holding the inserting transaction; {add_it}")));
        };
        if column_type != "xid8" {
            return Err(unprepared(format!("column {column:?} is {column_type}, not xid8; {add_it}")));
        }
        if !default.as_deref().is_some_and(|default| default.contains("pg_current_xact_id()")) {
            return Err(unprepared(format!(
                "column {column:?} must default to pg_current_xact_id() so every row records its transaction"
            )));
        }
        let indexed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&self.pool)
        .await
        .map_err(SourceError::Query)?;
        if !indexed {
            return Err(unprepared(format!(
                "no index starts with {column:?}, so every slot would scan the table; \
                 `CREATE INDEX ON {table} ({column}, {watermark})`",
                watermark = self.mapping.watermark_column
            )));
        }
        Ok(())
    }
}

sql::impl_sql_source!(PostgresSource, Dialect::Postgres);
