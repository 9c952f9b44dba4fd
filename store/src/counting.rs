//! `CountingStore`: counts requests by S3 request type, as the bill would.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{GetOutcome, ObjectMeta, ObjectStore, PutOptions, PutOutcome, Retention, StoreError};

/// Request counts, by the class S3 bills them in.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub heads: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    /// PutObjectRetention / PutObjectLegalHold.
    pub lock_updates: AtomicU64,
    pub bytes_put: AtomicU64,
    pub bytes_got: AtomicU64,
    /// GETs (counted in `gets`) that the server answered with a 5xx: counted where the
    /// responses are seen (the S3 client's interceptor), not by [`CountingStore`].
    pub get_server_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestSnapshot {
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub deletes: u64,
    pub lock_updates: u64,
    pub bytes_put: u64,
    pub bytes_got: u64,
    pub get_server_errors: u64,
}

impl RequestCounts {
    pub fn snapshot(&self) -> RequestSnapshot {
        RequestSnapshot {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            lock_updates: self.lock_updates.load(Ordering::Relaxed),
            bytes_put: self.bytes_put.load(Ordering::Relaxed),
            bytes_got: self.bytes_got.load(Ordering::Relaxed),
            get_server_errors: self.get_server_errors.load(Ordering::Relaxed),
        }
    }
}

/// Wraps any store; every call counts, successful or not (S3 bills failed requests too).
pub struct CountingStore<S> {
    inner: S,
    counts: Arc<RequestCounts>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        CountingStore { inner, counts: Arc::new(RequestCounts::default()) }
    }

    pub fn counts(&self) -> Arc<RequestCounts> {
        Arc::clone(&self.counts)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for CountingStore<S> {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        bump(&self.counts.puts, 1);
        bump(&self.counts.bytes_put, body.len() as u64);
        self.inner.put(key, body, options).await
    }

    /// Counted as one PUT: a multipart upload of a segment is one object written, which is
    /// what the per-file cost figures compare.
    async fn put_source(
        &self,
        key: &str,
        body: std::sync::Arc<dyn crate::upload::UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        bump(&self.counts.puts, 1);
        bump(&self.counts.bytes_put, body.len());
        self.inner.put_source(key, body, options).await
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        bump(&self.counts.gets, 1);
        let outcome = self.inner.get(key).await?;
        bump(&self.counts.bytes_got, outcome.body.len() as u64);
        Ok(outcome)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        bump(&self.counts.gets, 1);
        let bytes = self.inner.get_range(key, range).await?;
        bump(&self.counts.bytes_got, bytes.len() as u64);
        Ok(bytes)
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        bump(&self.counts.gets, 1);
        let (bytes, total) = self.inner.get_suffix(key, len).await?;
        bump(&self.counts.bytes_got, bytes.len() as u64);
        Ok((bytes, total))
    }

    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, crate::TagCount), StoreError> {
        bump(&self.counts.gets, 1);
        let (bytes, tags) = self.inner.get_range_tagged(key, range).await?;
        bump(&self.counts.bytes_got, bytes.len() as u64);
        Ok((bytes, tags))
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, crate::TagCount), StoreError> {
        bump(&self.counts.gets, 1);
        let (bytes, total, tags) = self.inner.get_suffix_tagged(key, len).await?;
        bump(&self.counts.bytes_got, bytes.len() as u64);
        Ok((bytes, total, tags))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        bump(&self.counts.heads, 1);
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        bump(&self.counts.lists, 1);
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        bump(&self.counts.deletes, 1);
        self.inner.delete(key).await
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        bump(&self.counts.lock_updates, 1);
        self.inner.set_retention(key, retention).await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        bump(&self.counts.lock_updates, 1);
        self.inner.set_legal_hold(key, on).await
    }

    async fn bypass_governance(&self, key: &str, bypass: crate::GovernanceBypass) -> Result<(), StoreError> {
        bump(&self.counts.lock_updates, 1);
        self.inner.bypass_governance(key, bypass).await
    }

    async fn set_tags(&self, key: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), StoreError> {
        bump(&self.counts.lock_updates, 1);
        self.inner.set_tags(key, tags).await
    }

    async fn tags(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        bump(&self.counts.gets, 1);
        self.inner.tags(key).await
    }
}
