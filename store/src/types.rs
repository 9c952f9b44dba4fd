//! Request and response values shared by every backend.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;

/// S3 Object Lock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    /// Nobody can shorten or remove the lock, not even the root account.
    Compliance,
    /// Privileged users may bypass the lock; VERA gates that behind two operators.
    Governance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub retain_until: Timestamp,
}

/// What a put may find at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Only if nothing is there (`If-None-Match: *`).
    Create,
    /// Only if the current object has this ETag (`If-Match`).
    Update { etag: String },
    /// Unconditionally (still refused by Object Lock).
    Overwrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    pub mode: PutMode,
    pub retention: Option<Retention>,
    pub legal_hold: bool,
    /// User metadata (`x-amz-meta-*`): short ASCII keys and values.
    pub metadata: BTreeMap<String, String>,
}

impl PutOptions {
    pub fn create() -> Self {
        PutOptions { mode: PutMode::Create, retention: None, legal_hold: false, metadata: BTreeMap::new() }
    }

    pub fn update(etag: impl Into<String>) -> Self {
        PutOptions { mode: PutMode::Update { etag: etag.into() }, ..Self::create() }
    }

    pub fn overwrite() -> Self {
        PutOptions { mode: PutMode::Overwrite, ..Self::create() }
    }

    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub etag: String,
    pub version_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub len: u64,
    pub etag: String,
    pub version_id: Option<String>,
    pub retention: Option<Retention>,
    pub legal_hold: bool,
    pub metadata: BTreeMap<String, String>,
    /// When the object was written, where the backend says (S3 LIST and HEAD do).
    #[serde(default)]
    pub last_modified: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct GetOutcome {
    pub body: Bytes,
    pub meta: ObjectMeta,
}
