//! From raw source rows to files, or to a typed, reported rejection.
//!
//! A bad row never fails its slot: it is rejected with a reason, logged, written to the
//! task's rejects report, and counted, and the rest of the slot packs.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;
use vera_protocol::routing::validate_uid;
use vera_source::{RowPayload, SourceRow};

/// Why a row was not packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    MissingUid,
    InvalidUid,
    UnparseableCreatedAt,
    NullPayload,
    MissingFile,
    UnreadableFile,
    TooLarge,
    DuplicateUid,
    UnroutableUid,
    /// Erased by `vera delete` earlier: never stored again (an erasure marker stands).
    Erased,
}

/// One rejected row, as written to the rejects report. Holds no payload and no personal
/// data beyond the uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub watermark: i64,
    pub uid: Option<String>,
    pub reason: RejectReason,
    pub detail: String,
}

/// A row that passed validation, with its bytes loaded.
#[derive(Debug, Clone)]
pub struct ValidRow {
    pub watermark: i64,
    pub uid: String,
    pub created_at: Timestamp,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Validates one row and loads its payload. Blocking (reads files): call from a blocking
/// context. `seen` holds the uids already accepted in this slot.
pub fn validate_row(row: SourceRow, max_file_bytes: u64, seen: &mut HashSet<String>) -> Result<ValidRow, Rejection> {
    let SourceRow { watermark, uid, created_at, content_type, payload, .. } = row;
    let reject = |uid: Option<String>, reason, detail: String| Rejection { watermark, uid, reason, detail };
    let Some(uid) = uid else {
        return Err(reject(None, RejectReason::MissingUid, "uid is NULL".into()));
    };
    if let Err(error) = validate_uid(&uid) {
        let shown = uid.chars().take(64).collect();
        return Err(reject(Some(shown), RejectReason::InvalidUid, error.to_string()));
    }
    let created_at = match created_at.as_deref().map(Timestamp::parse) {
        Some(Ok(created_at)) => created_at,
        Some(Err(error)) => return Err(reject(Some(uid), RejectReason::UnparseableCreatedAt, error.to_string())),
        None => return Err(reject(Some(uid), RejectReason::UnparseableCreatedAt, "created_at is NULL".into())),
    };
    let bytes = match payload {
        RowPayload::Null => return Err(reject(Some(uid), RejectReason::NullPayload, "payload is NULL".into())),
        RowPayload::Inline(bytes) => {
            if bytes.len() as u64 > max_file_bytes {
                let detail = format!("{} bytes, limit {max_file_bytes}", bytes.len());
                return Err(reject(Some(uid), RejectReason::TooLarge, detail));
            }
            bytes
        }
        RowPayload::Path(path) => {
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(reject(Some(uid), RejectReason::MissingFile, "payload path does not exist".into()));
                }
                Err(error) => return Err(reject(Some(uid), RejectReason::UnreadableFile, error.kind().to_string())),
            };
            if !metadata.is_file() {
                return Err(reject(Some(uid), RejectReason::MissingFile, "payload path is not a regular file".into()));
            }
            if metadata.len() > max_file_bytes {
                let detail = format!("{} bytes, limit {max_file_bytes}", metadata.len());
                return Err(reject(Some(uid), RejectReason::TooLarge, detail));
            }
            match std::fs::read(&path) {
                Ok(bytes) if bytes.len() as u64 <= max_file_bytes => bytes,
                Ok(bytes) => {
                    let detail = format!("{} bytes, limit {max_file_bytes}", bytes.len());
                    return Err(reject(Some(uid), RejectReason::TooLarge, detail));
                }
                Err(error) => return Err(reject(Some(uid), RejectReason::UnreadableFile, error.kind().to_string())),
            }
        }
    };
    if !seen.insert(uid.clone()) {
        return Err(reject(Some(uid), RejectReason::DuplicateUid, "uid appears earlier in the same slot".into()));
    }
    Ok(ValidRow { watermark, uid, created_at, content_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uid: Option<&str>, created_at: Option<&str>, payload: RowPayload) -> SourceRow {
        SourceRow {
            watermark: 7,
            horizon: None,
            uid: uid.map(str::to_owned),
            created_at: created_at.map(str::to_owned),
            content_type: None,
            payload,
        }
    }

    #[test]
    fn every_bad_row_gets_its_reason() {
        let mut seen = HashSet::new();
        let ok = "2026-11-24T10:00:00Z";
        let inline = || RowPayload::Inline(b"x".to_vec());
        let cases = [
            (row(None, Some(ok), inline()), RejectReason::MissingUid),
            (row(Some(""), Some(ok), inline()), RejectReason::InvalidUid),
            (row(Some("a"), Some("yesterday"), inline()), RejectReason::UnparseableCreatedAt),
            (row(Some("a"), None, inline()), RejectReason::UnparseableCreatedAt),
            (row(Some("a"), Some(ok), RowPayload::Null), RejectReason::NullPayload),
            (row(Some("a"), Some(ok), RowPayload::Path("/nonexistent/vera/x".into())), RejectReason::MissingFile),
            (row(Some("a"), Some(ok), RowPayload::Inline(vec![0; 11])), RejectReason::TooLarge),
        ];
        for (input, reason) in cases {
            let rejection = validate_row(input, 10, &mut seen).unwrap_err();
            assert_eq!(rejection.reason, reason);
            assert_eq!(rejection.watermark, 7);
        }
        assert!(seen.is_empty(), "rejected rows must not claim their uid");
        assert!(validate_row(row(Some("a"), Some(ok), inline()), 10, &mut seen).is_ok());
        let duplicate = validate_row(row(Some("a"), Some(ok), inline()), 10, &mut seen).unwrap_err();
        assert_eq!(duplicate.reason, RejectReason::DuplicateUid);
    }

    #[test]
    fn files_on_disk_are_size_checked_before_reading() {
        let dir = std::env::temp_dir().join(format!("vera-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.bin");
        std::fs::write(&big, vec![1u8; 100]).unwrap();
        let mut seen = HashSet::new();
        let rejection =
            validate_row(row(Some("b"), Some("2026-11-24T10:00:00Z"), RowPayload::Path(big.clone())), 50, &mut seen)
                .unwrap_err();
        assert_eq!(rejection.reason, RejectReason::TooLarge);
        let accepted =
            validate_row(row(Some("b"), Some("2026-11-24T10:00:00Z"), RowPayload::Path(big)), 100, &mut seen).unwrap();
        assert_eq!(accepted.bytes.len(), 100);
        let _ = std::fs::remove_dir_all(dir);
    }
}
