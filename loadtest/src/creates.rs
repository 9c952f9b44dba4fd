//! `OneCreateAtATime`: makes create-if-absent atomic for the writers in this process.
//!
//! s3s-fs checks `If-None-Match: *` and then writes, without holding anything in between.
//! A multipart upload's completion spends tens of milliseconds assembling its parts after
//! the check, so a small PUT of the same key that lands in that window is overwritten,
//! and both writers are told they won. On 2026-11-26 this lost the 103 late arrivals of
//! one day in the full run: a worker sealed them as a small generation 0 just before
//! another worker's 46 MB generation 0 of the same address completed. AWS S3 and moto
//! decide the condition atomically, and VERA relies on that. The load test's writers all
//! run in this process, so it serializes creates of one key here. That is the guarantee
//! the server should give, and it does not change what is measured: a create that loses
//! is still sent and still refused by the server.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use vera_store::{
    GetOutcome, GovernanceBypass, ObjectMeta, ObjectStore, PutMode, PutOptions, PutOutcome, Retention, StoreError,
    TagCount,
};

pub struct OneCreateAtATime<S> {
    inner: S,
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<S> OneCreateAtATime<S> {
    pub fn new(inner: S) -> Self {
        OneCreateAtATime { inner, keys: Mutex::new(HashMap::new()) }
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(keys.entry(key.to_owned()).or_default())
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for OneCreateAtATime<S> {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        if options.mode != PutMode::Create {
            return self.inner.put(key, body, options).await;
        }
        let lock = self.lock_for(key);
        let _held = lock.lock().await;
        self.inner.put(key, body, options).await
    }

    async fn put_source(
        &self,
        key: &str,
        body: Arc<dyn vera_store::upload::UploadSource>,
        options: PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        if options.mode != PutMode::Create {
            return self.inner.put_source(key, body, options).await;
        }
        let lock = self.lock_for(key);
        let _held = lock.lock().await;
        self.inner.put_source(key, body, options).await
    }

    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        self.inner.get_suffix(key, len).await
    }

    async fn get_range_tagged(&self, key: &str, range: Range<u64>) -> Result<(Bytes, TagCount), StoreError> {
        self.inner.get_range_tagged(key, range).await
    }

    async fn get_suffix_tagged(&self, key: &str, len: u64) -> Result<(Bytes, u64, TagCount), StoreError> {
        self.inner.get_suffix_tagged(key, len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn bypass_governance(&self, key: &str, bypass: GovernanceBypass) -> Result<(), StoreError> {
        self.inner.bypass_governance(key, bypass).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        self.inner.set_retention(key, retention).await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        self.inner.set_legal_hold(key, on).await
    }

    async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.inner.set_tags(key, tags).await
    }

    async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.inner.tags(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose create is a check, a pause, then a write: the s3s-fs race.
    struct CheckThenWrite {
        local: vera_store::local::LocalStore,
        in_flight: AtomicUsize,
        overlapped: AtomicUsize,
    }

    #[async_trait]
    impl ObjectStore for CheckThenWrite {
        async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
            if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let outcome = self.local.put(key, body, options).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
        async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
            self.local.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
            self.local.get_range(key, range).await
        }
        async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
            self.local.get_suffix(key, len).await
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.local.head(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.local.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.local.delete(key).await
        }
        async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
            self.local.set_retention(key, retention).await
        }
        async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
            self.local.set_legal_hold(key, on).await
        }
        async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
            self.local.set_tags(key, tags).await
        }
        async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
            self.local.tags(key).await
        }
    }

    #[tokio::test]
    async fn creates_of_one_key_never_overlap_and_other_keys_do() {
        let dir = tempfile::tempdir().unwrap();
        let inner = CheckThenWrite {
            local: vera_store::local::LocalStore::open(dir.path()).unwrap(),
            in_flight: AtomicUsize::new(0),
            overlapped: AtomicUsize::new(0),
        };
        let store = Arc::new(OneCreateAtATime::new(inner));
        let same: Vec<_> = (0..4)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.put("g0", Bytes::from(vec![i; 8]), PutOptions::create()).await })
            })
            .collect();
        let mut won = 0;
        for task in same {
            won += usize::from(task.await.unwrap().is_ok());
        }
        assert_eq!(won, 1, "exactly one create of a key wins");
        assert_eq!(store.inner.overlapped.load(Ordering::SeqCst), 0, "creates of one key were serialized");
        let other: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|key| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.put(key, Bytes::from_static(b"x"), PutOptions::create()).await })
            })
            .collect();
        for task in other {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.inner.overlapped.load(Ordering::SeqCst), 1, "creates of different keys still overlap");
    }
}
