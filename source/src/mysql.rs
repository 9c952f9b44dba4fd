//! MySQL and MariaDB source through sqlx. Same mapping and semantics as SQLite; `BLOB`
//! payloads, any integer watermark, `created_at` as text or `DATETIME`/`TIMESTAMP` (taken
//! as UTC; run the server and sessions in UTC).

use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::sql::{self, Dialect};
use crate::{SourceError, SourceMapping};

pub struct MySqlSource {
    name: String,
    pool: MySqlPool,
    mapping: SourceMapping,
}

impl MySqlSource {
    /// `url` like `mysql://user@host:3306/db` (credentials from the environment, never
    /// from config files).
    pub async fn connect(name: &str, url: &str, mapping: SourceMapping) -> Result<Self, SourceError> {
        mapping.validate()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(SourceError::Query)?;
        Ok(MySqlSource { name: name.to_owned(), pool, mapping })
    }
}

sql::impl_sql_source!(MySqlSource, Dialect::MySql);
