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
