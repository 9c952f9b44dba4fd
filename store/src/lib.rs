//! The object store seam.
//!
//! S3 is VERA's only source of truth, so everything VERA needs from storage is one small
//! trait, [`ObjectStore`]: create-if-absent, compare-and-swap, range and suffix reads,
//! list, head, and Object Lock retention and legal hold. Backends live side by side:
//!
//! * [`local::LocalStore`] — a directory with the same WORM semantics as S3 Object Lock,
//!   for the embedded pipeline and tests;
//! * S3 (aws-sdk-s3) arrives with the real-backends work.
//!
//! Every backend runs [`conformance::run_all`]. Wrappers add behaviour without touching
//! backends: [`counting::CountingStore`] counts requests by type (the figures users pay
//! for), [`flaky::FlakyStore`] injects seeded failures.

pub mod clock;
pub mod cold_cost;
pub mod conformance;
pub mod counting;
pub mod error;
pub mod flaky;
pub mod local;
pub mod reports;
pub mod routing_table;
pub mod shards;
pub mod types;
pub mod upload;

use std::collections::BTreeMap;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{StoreError, StoreErrorKind};
/// How many tags an object had, as a read reported it; `None` when the store cannot tell.
pub type TagCount = Option<u32>;

pub use types::{GetOutcome, LockMode, ObjectMeta, PutMode, PutOptions, PutOutcome, Retention};

/// The storage operations VERA relies on. Keys are `/`-separated UTF-8 paths without
/// `..` segments, leading `/` or empty segments.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes a whole object. `options.mode` decides what may already be there.
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError>;

    /// Writes a whole object from a body that may be too large to hold in memory, with
    /// the same semantics as [`ObjectStore::put`]. S3 streams it as a multipart upload
    /// whose completion carries the create-if-absent condition; the default reads the
    /// body into memory and calls `put`.
    async fn put_source(
        &self,
        key: &str,
        body: std::sync::Arc<dyn upload::UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let bytes = upload::read_all(key, body).await?;
        self.put(key, bytes, options).await
    }

    /// Reads a whole object with its metadata.
    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError>;

    /// Reads `range` (end exclusive) of an object. A range past the end is an error.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Reads the last `len` bytes (fewer if the object is shorter) and returns them with
    /// the object's total length: one request, like `Range: bytes=-len`.
    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError>;

    /// [`ObjectStore::get_range`], also returning how many tags the object had when the
    /// response was made (S3's `x-amz-tagging-count`, absent meaning none), in the same
    /// request. `None`: this store does not report it, so nothing may be concluded.
    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, TagCount), StoreError> {
        Ok((self.get_range(key, range).await?, None))
    }

    /// [`ObjectStore::get_suffix`] with the tag count, as [`ObjectStore::get_range_tagged`].
    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, TagCount), StoreError> {
        let (bytes, total) = self.get_suffix(key, len).await?;
        Ok((bytes, total, None))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// All objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Deletes an object; refused with `Locked` under retention or legal hold.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Sets or extends retention. COMPLIANCE retention can never be shortened or removed.
    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError>;

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError>;

    /// Replaces the object's tags (S3 object tagging). Tags are not data: setting them
    /// is allowed under Object Lock, and bucket lifecycle rules can filter on them.
    async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError>;

    /// The object's tags.
    async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError>;

    /// Break-glass: deletes the object, or shortens its retention, past GOVERNANCE
    /// retention (S3's `x-amz-bypass-governance-retention`). Still refused with `Locked`
    /// under COMPLIANCE retention or a legal hold. Only the two-person break-glass flow
    /// (`vera break-glass`) calls this. Stores without the notion refuse with `Config`.
    async fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        let _ = bypass;
        Err(StoreError::new(StoreErrorKind::Config, key, "this store cannot bypass GOVERNANCE retention"))
    }
}

/// What no GOVERNANCE bypass may do, checked by every backend before it acts: override a
/// legal hold or COMPLIANCE retention that has not expired, or set anything but
/// GOVERNANCE retention.
pub fn check_bypassable(
    key: &str,
    bypass: &GovernanceBypass,
    legal_hold: bool,
    retention: Option<Retention>,
    now: vera_protocol::Timestamp,
) -> Result<(), StoreError> {
    if let GovernanceBypass::Shorten(new) = bypass
        && new.mode != LockMode::Governance
    {
        return Err(StoreError::new(StoreErrorKind::InvalidInput, key, "break-glass sets GOVERNANCE retention only"));
    }
    if legal_hold {
        return Err(StoreError::new(StoreErrorKind::Locked, key, "under legal hold: release it first"));
    }
    if let Some(retention) = retention
        && retention.mode == LockMode::Compliance
        && retention.retain_until > now
    {
        return Err(StoreError::new(StoreErrorKind::Locked, key, "COMPLIANCE retention cannot be bypassed"));
    }
    Ok(())
}

/// What a break-glass request does to an object under GOVERNANCE retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GovernanceBypass {
    Delete,
    /// Set this (shorter) GOVERNANCE retention.
    Shorten(Retention),
}

/// Checks a key against the rules in [`ObjectStore`]'s docs.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = || StoreError::new(StoreErrorKind::InvalidInput, key, "invalid object key");
    if key.is_empty() || key.len() > 1024 || key.starts_with('/') || key.ends_with('/') {
        return Err(bad());
    }
    if key.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(bad());
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad());
    }
    Ok(())
}

/// A shared store is a store: wrappers such as `CountingStore` can sit on top of a store
/// chosen at run time.
#[async_trait]
impl ObjectStore for std::sync::Arc<dyn ObjectStore> {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        (**self).put(key, body, options).await
    }

    async fn put_source(
        &self,
        key: &str,
        body: std::sync::Arc<dyn upload::UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        (**self).put_source(key, body, options).await
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        (**self).get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        (**self).get_range(key, range).await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        (**self).get_suffix(key, len).await
    }

    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, TagCount), StoreError> {
        (**self).get_range_tagged(key, range).await
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, TagCount), StoreError> {
        (**self).get_suffix_tagged(key, len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        (**self).head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        (**self).list(prefix).await
    }

    async fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        (**self).bypass_governance(key, bypass).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key).await
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        (**self).set_retention(key, retention).await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        (**self).set_legal_hold(key, on).await
    }

    async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        (**self).set_tags(key, tags).await
    }

    async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        (**self).tags(key).await
    }
}
