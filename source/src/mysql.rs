//! MySQL and MariaDB source through sqlx. Same mapping and semantics as SQLite; `BLOB`
//! payloads, any integer watermark, `created_at` as text or `DATETIME`/`TIMESTAMP` (taken
//! as UTC; sqlx sets each session's time zone to UTC).
//!
//! A live table is scanned by its insert time ([`Visibility::InsertTime`]): slots are
//! planned only below the server's clock less a settle window, with a locking read that
//! waits for any transaction still open on a row of the range. `connect` checks that the
//! column is a `TIMESTAMP(6)` defaulting to `CURRENT_TIMESTAMP(6)` that leads an index,
//! and that the table is InnoDB, and refuses the table otherwise.

use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::sql::{self, Dialect};
use crate::{SourceError, SourceMapping, Visibility};

/// How long a planning query waits for an open transaction before it polls again.
const LOCK_WAIT: &str = "SET SESSION innodb_lock_wait_timeout = 2";

pub struct MySqlSource {
    name: String,
    pool: MySqlPool,
    mapping: SourceMapping,
}

impl MySqlSource {
    /// `url` like `mysql://user@host:3306/db` (credentials from the environment, never
    /// from config files). Fails, naming what is missing, if the table cannot be scanned
    /// as its mapping says.
    pub async fn connect(name: &str, url: &str, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        if matches!(mapping.visibility, Visibility::TransactionId { .. }) {
            return Err(SourceError::Config(
                "MySQL and MariaDB sources use the insert-time visibility, not transaction-id".into(),
            ));
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|connection, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // READ COMMITTED: the planning query's locking read takes no gap
                    // locks, so it never blocks inserts. A short lock wait: an open
                    // transaction makes the producer poll again, not stall.
                    connection.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    connection.execute(LOCK_WAIT).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(SourceError::Query)?;
        let source = MySqlSource { name: name.to_owned(), pool, mapping };
        source.check_table().await?;
        Ok(source)
    }

    async fn check_table(&self) -> Result<(), SourceError> {
        // The visibility column first, so that a missing one is named with its fix.
        if let Visibility::InsertTime { column, .. } = &self.mapping.visibility {
            self.check_insert_time(column).await?;
        }
        self.probe_columns().await
    }

    async fn check_insert_time(&self, column: &str) -> Result<(), SourceError> {
        let table = &self.mapping.table;
        let unprepared = |reason: String| SourceError::Unprepared { table: table.clone(), reason };
        let engine: Option<String> = sqlx::query_scalar(
            "SELECT CAST(ENGINE AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .map_err(SourceError::Query)?
        .flatten();
        if !engine.as_deref().is_some_and(|engine| engine.eq_ignore_ascii_case("InnoDB")) {
            return Err(unprepared(format!(
                "the table's engine is {}, not InnoDB: only InnoDB transactions are tracked",
                engine.as_deref().unwrap_or("unknown")
            )));
        }
        let found: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT CAST(DATA_TYPE AS CHAR), CAST(DATETIME_PRECISION AS SIGNED), CAST(COLUMN_DEFAULT AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
        )
        .bind(table)
        .bind(column)
        .fetch_optional(&self.pool)
        .await
        .map_err(SourceError::Query)?;
        let add_it = format!(
            "add it with `ALTER TABLE {table} ADD COLUMN {column} TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             ADD INDEX ({column}, {watermark})`",
            watermark = self.mapping.watermark_column
        );
        let Some((data_type, precision, default)) = found else {
            return Err(unprepared(format!("it has no column {column:?} holding the insert time; {add_it}")));
        };
        if !data_type.eq_ignore_ascii_case("timestamp") || precision != Some(6) {
            // DATETIME would hold the inserting session's local time; TIMESTAMP is UTC.
            return Err(unprepared(format!(
                "column {column:?} is {data_type}({}), not TIMESTAMP(6); {add_it}",
                precision.unwrap_or(0)
            )));
        }
        if !default.as_deref().is_some_and(|default| default.to_ascii_lowercase().starts_with("current_timestamp(6)")) {
            return Err(unprepared(format!("column {column:?} must default to CURRENT_TIMESTAMP(6)")));
        }
        let indexed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&self.pool)
        .await
        .map_err(SourceError::Query)?;
        if indexed == 0 {
            return Err(unprepared(format!(
                "no index starts with {column:?}, so every slot would scan the table; \
                 `ALTER TABLE {table} ADD INDEX ({column}, {watermark})`",
                watermark = self.mapping.watermark_column
            )));
        }
        Ok(())
    }
}

sql::impl_sql_source!(MySqlSource, Dialect::MySql);
