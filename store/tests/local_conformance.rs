//! The local WORM directory passes the shared ObjectStore conformance suite, plus the
//! properties only a local store can show (crash leftovers, sharing across handles).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vera_protocol::Timestamp;
use vera_store::conformance::{self, TimeControl};
use vera_store::local::LocalStore;
use vera_store::{Clock, ManualClock, ObjectStore, PutOptions, StoreErrorKind};

struct Manual(Arc<ManualClock>);

impl TimeControl for Manual {
    fn now(&self) -> Timestamp {
        self.0.now()
    }

    async fn advance(&self, by: Duration) {
        let next = Timestamp::from_micros(self.0.now().as_micros() + by.as_micros() as i64).unwrap();
        self.0.set(next);
    }
}

fn store() -> (tempfile::TempDir, LocalStore, Manual) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::parse("2026-11-24T10:00:00Z").unwrap()));
    let store = LocalStore::with_clock(dir.path(), clock.clone()).unwrap();
    (dir, store, Manual(clock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_passes_conformance() {
    let (_dir, store, time) = store();
    conformance::run_all(&store, &time).await;
}

#[tokio::test]
async fn two_handles_on_one_directory_see_one_store() {
    let (dir, first, _time) = store();
    let second = LocalStore::open(dir.path()).unwrap();
    first.put("shared/key", Bytes::from_static(b"one"), PutOptions::create()).await.unwrap();
    let error = second.put("shared/key", Bytes::from_static(b"two"), PutOptions::create()).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::AlreadyExists);
}

#[tokio::test]
async fn leftover_temp_files_and_stale_locks_do_not_leak_into_the_store() {
    let (dir, store, _time) = store();
    // A writer killed mid-write leaves a temp file; a writer killed after writing the lock
    // state but before linking the object leaves a lock for a missing object.
    std::fs::write(dir.path().join("tmp/123.456"), b"partial").unwrap();
    std::fs::create_dir_all(dir.path().join("locks/x")).unwrap();
    std::fs::write(
        dir.path().join("locks/x/seg.lock.json"),
        br#"{"retention":{"mode":"COMPLIANCE","retain_until":"2099-01-01T00:00:00.000000Z"},"legal_hold":false}"#,
    )
    .unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(store.head("x/seg").await.unwrap_err().kind, StoreErrorKind::NotFound);
    // The next create replaces the stale lock with its own.
    store.put("x/seg", Bytes::from_static(b"s"), PutOptions::create()).await.unwrap();
    assert_eq!(store.head("x/seg").await.unwrap().retention, None);
    store.delete("x/seg").await.unwrap();
}

#[tokio::test]
async fn corrupt_object_files_are_reported_not_panicked_on() {
    let (dir, store, _time) = store();
    store.put("c/obj", Bytes::from_static(b"body"), PutOptions::create()).await.unwrap();
    std::fs::write(dir.path().join("objects/c/obj"), b"garbage").unwrap();
    assert_eq!(store.get("c/obj").await.unwrap_err().kind, StoreErrorKind::Corrupt);
    std::fs::write(dir.path().join("objects/c/obj"), b"VERALOBJ\xff\xff\xff\xff").unwrap();
    assert_eq!(store.head("c/obj").await.unwrap_err().kind, StoreErrorKind::Corrupt);
}
