//! Table and column mapping, shared by every SQL source.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::SourceError;

/// How the payload column is to be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum PayloadKind {
    /// The column holds the file's bytes (BLOB / bytea).
    Inline,
    /// The column holds a path to the file; relative paths resolve against `base_dir`.
    Path { base_dir: Option<PathBuf> },
}

/// How a source shows that no row can still become visible at or before a scan position,
/// so that the producer never moves its watermark past a row that commits later
/// (see `docs/adr/0004-visibility-horizon.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Visibility {
    /// Scan by the watermark column alone, trusting rows to become visible in watermark
    /// order. True of SQLite (one writer at a time) and of a table nobody writes to while
    /// VERA reads it; false of a live PostgreSQL or MySQL table, where a transaction that
    /// took a smaller id can commit after one that took a larger id.
    WatermarkOrder,
    /// PostgreSQL: `column` is an `xid8` holding the inserting transaction's id
    /// (`DEFAULT pg_current_xact_id()`). Rows are scanned in `(column, watermark)` order,
    /// and only below `pg_snapshot_xmin(pg_current_snapshot())`: every transaction that
    /// is still running, or will ever start, has an id at or above it.
    TransactionId { column: String },
    /// MySQL/MariaDB: `column` is a `TIMESTAMP(6)` set at insert
    /// (`DEFAULT CURRENT_TIMESTAMP(6)`, the inserting statement's start). Rows are scanned
    /// in `(column, watermark)` order, only below the server's clock less
    /// `settle_millis`, and with a locking read that waits for every transaction still
    /// open on a row of the range. Complete as long as an INSERT reaches InnoDB within
    /// `settle_millis` of its statement's start.
    InsertTime { column: String, settle_millis: u64 },
}

impl Visibility {
    /// The horizon column, for a source scanned by one.
    pub fn column(&self) -> Option<&str> {
        match self {
            Visibility::WatermarkOrder => None,
            Visibility::TransactionId { column } | Visibility::InsertTime { column, .. } => Some(column),
        }
    }
}

/// Which table and columns hold the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceMapping {
    pub table: String,
    pub uid_column: String,
    pub created_at_column: String,
    pub payload_column: String,
    pub payload: PayloadKind,
    #[serde(default)]
    pub content_type_column: Option<String>,
    pub watermark_column: String,
    /// How rows are known to be visible; the scan order follows from it.
    #[serde(default = "watermark_order")]
    pub visibility: Visibility,
}

fn watermark_order() -> Visibility {
    Visibility::WatermarkOrder
}

impl SourceMapping {
    /// The mapping the demo corpus uses.
    pub fn demo() -> Self {
        SourceMapping {
            table: "files".into(),
            uid_column: "uid".into(),
            created_at_column: "created_at".into(),
            payload_column: "payload".into(),
            payload: PayloadKind::Inline,
            content_type_column: Some("content_type".into()),
            watermark_column: "id".into(),
            visibility: Visibility::WatermarkOrder,
        }
    }

    /// Identifiers are spliced into SQL, so they are restricted to plain names.
    pub fn validate(&self) -> Result<(), SourceError> {
        let mut names = vec![
            ("table", &self.table),
            ("uid_column", &self.uid_column),
            ("created_at_column", &self.created_at_column),
            ("payload_column", &self.payload_column),
            ("watermark_column", &self.watermark_column),
        ];
        if let Some(column) = &self.content_type_column {
            names.push(("content_type_column", column));
        }
        let visibility_column = self.visibility.column().map(str::to_owned);
        if let Some(column) = &visibility_column {
            names.push(("visibility column", column));
            if *column == self.watermark_column {
                return Err(SourceError::Config(format!(
                    "the visibility column {column:?} must not be the watermark column"
                )));
            }
        }
        for (field, name) in names {
            let valid = !name.is_empty()
                && name.len() <= 63
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(SourceError::Config(format!("{field} {name:?} must match [A-Za-z_][A-Za-z0-9_]{{0,62}}")));
            }
        }
        Ok(())
    }
}
