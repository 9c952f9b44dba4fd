//! `FlakyStore`: seeded fault injection. A failing run prints its seed and replays.
//!
//! Faults come in two flavours, both reported as `Transient`: the request fails before
//! reaching the store, or (for puts) it *reaches the store and then the reply is lost* —
//! the case that makes idempotency necessary.

use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{GetOutcome, ObjectMeta, ObjectStore, PutOptions, PutOutcome, Retention, StoreError, StoreErrorKind};

pub struct FlakyStore<S> {
    inner: S,
    rng: Mutex<StdRng>,
    failure_probability: f64,
}

impl<S> FlakyStore<S> {
    pub fn new(inner: S, seed: u64, failure_probability: f64) -> Self {
        FlakyStore { inner, rng: Mutex::new(StdRng::seed_from_u64(seed)), failure_probability }
    }

    fn roll(&self) -> bool {
        match self.rng.lock() {
            Ok(mut rng) => rng.gen_bool(self.failure_probability.clamp(0.0, 1.0)),
            Err(_) => false,
        }
    }

    fn fault(key: &str, what: &str) -> StoreError {
        StoreError::new(StoreErrorKind::Transient, key, format!("injected fault: {what}"))
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FlakyStore<S> {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "put failed before reaching the store"));
        }
        let outcome = self.inner.put(key, body, options).await?;
        if self.roll() {
            return Err(Self::fault(key, "put applied but the reply was lost"));
        }
        Ok(outcome)
    }

    async fn put_source(
        &self,
        key: &str,
        body: std::sync::Arc<dyn crate::upload::UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "upload failed before reaching the store"));
        }
        let outcome = self.inner.put_source(key, body, options).await?;
        if self.roll() {
            return Err(Self::fault(key, "upload applied but the reply was lost"));
        }
        Ok(outcome)
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "get"));
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "get_range"));
        }
        self.inner.get_range(key, range).await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "get_suffix"));
        }
        self.inner.get_suffix(key, len).await
    }

    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, crate::TagCount), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "get_range"));
        }
        self.inner.get_range_tagged(key, range).await
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, crate::TagCount), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "get_suffix"));
        }
        self.inner.get_suffix_tagged(key, len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "head"));
        }
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if self.roll() {
            return Err(Self::fault(prefix, "list"));
        }
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "delete"));
        }
        self.inner.delete(key).await
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "set_retention"));
        }
        self.inner.set_retention(key, retention).await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "set_legal_hold"));
        }
        self.inner.set_legal_hold(key, on).await
    }

    async fn bypass_governance(&self, key: &str, bypass: crate::GovernanceBypass) -> Result<(), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "bypass_governance"));
        }
        self.inner.bypass_governance(key, bypass).await
    }

    async fn set_tags(&self, key: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "set_tags"));
        }
        self.inner.set_tags(key, tags).await
    }

    async fn tags(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        if self.roll() {
            return Err(Self::fault(key, "tags"));
        }
        self.inner.tags(key).await
    }
}
