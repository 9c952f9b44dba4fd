//! The behaviour every `ObjectStore` backend must show. Each backend's tests call
//! [`run_all`] (the local directory here, S3 against a real server later), so the
//! pipeline can rely on these semantics whatever it runs on.
//!
//! Keys live under a fresh random prefix so the suite can run against a shared bucket.

use std::time::Duration;

use bytes::Bytes;
use vera_protocol::Timestamp;

use crate::{LockMode, ObjectStore, PutOptions, Retention, StoreError, StoreErrorKind};

/// Lets the suite move the store's clock, where the backend allows it. A real server's
/// clock cannot be moved: its `advance` sleeps, and its `retention_unit` is short.
pub trait TimeControl: Send + Sync {
    fn now(&self) -> Timestamp;
    fn advance(&self, by: Duration) -> impl std::future::Future<Output = ()> + Send;
    /// The retention period the suite locks objects for.
    fn retention_unit(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

fn later(now: Timestamp, by: Duration) -> Timestamp {
    Timestamp::from_micros(now.as_micros() + by.as_micros() as i64).unwrap_or(Timestamp::MAX)
}

fn expect_kind<T: std::fmt::Debug>(result: Result<T, StoreError>, kind: StoreErrorKind, what: &str) {
    match result {
        Err(error) if error.kind == kind => {}
        other => panic!("{what}: expected {kind:?}, got {other:?}"),
    }
}

/// Runs every check. `now` must be close to the store's own clock.
pub async fn run_all(store: &dyn ObjectStore, time: &impl TimeControl) {
    let prefix = format!("conformance-{:016x}", rand::random::<u64>());
    create_if_absent(store, &prefix).await;
    compare_and_swap(store, &prefix).await;
    reads(store, &prefix).await;
    reads_report_tag_counts(store, &prefix).await;
    list_by_prefix(store, &prefix).await;
    retention_and_legal_hold(store, &prefix, time).await;
    bad_keys(store).await;
    concurrent_creates_have_one_winner(store, &prefix).await;
    streamed_uploads_behave_like_puts(store, &prefix, time).await;
}

/// `put_source` with a body of `STREAMED_BYTES` (several multipart parts on a backend
/// configured with 5 MiB parts).
pub const STREAMED_BYTES: usize = 11 * 1024 * 1024 + 17;

pub async fn streamed_uploads_behave_like_puts(store: &dyn ObjectStore, prefix: &str, time: &impl TimeControl) {
    use std::sync::Arc;
    let key = format!("{prefix}/streamed/segment.vera");
    let body: Vec<u8> = (0..STREAMED_BYTES).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let body = Bytes::from(body);
    let retention = Retention { mode: LockMode::Compliance, retain_until: later(time.now(), time.retention_unit()) };
    let options = PutOptions::create().with_retention(retention).with_metadata("vera-object-blake3", "abc");
    store.put_source(&key, Arc::new(body.clone()), options.clone()).await.expect("streamed create");
    let got = store.get(&key).await.expect("get streamed object");
    assert!(got.body == body, "streamed body round-trips ({} bytes read)", got.body.len());
    assert_eq!(got.meta.metadata.get("vera-object-blake3").map(String::as_str), Some("abc"));
    assert_eq!(got.meta.retention.map(|r| r.mode), Some(LockMode::Compliance), "lock set on the streamed object");
    expect_kind(
        store.put_source(&key, Arc::new(Bytes::from(vec![7u8; STREAMED_BYTES])), options).await,
        StoreErrorKind::AlreadyExists,
        "a second streamed create of the same key",
    );
    expect_kind(store.delete(&key).await, StoreErrorKind::Locked, "delete of a locked streamed object");
    assert!(store.get(&key).await.expect("still there").body == body);
}

pub async fn create_if_absent(store: &dyn ObjectStore, prefix: &str) {
    let key = format!("{prefix}/create/a.bin");
    let first = store.put(&key, Bytes::from_static(b"first"), PutOptions::create()).await.expect("first create");
    expect_kind(
        store.put(&key, Bytes::from_static(b"second"), PutOptions::create()).await,
        StoreErrorKind::AlreadyExists,
        "second create",
    );
    let got = store.get(&key).await.expect("get");
    assert_eq!(&got.body[..], b"first", "create-if-absent must not overwrite");
    assert_eq!(got.meta.etag, first.etag);
    let with_metadata = format!("{prefix}/create/b.bin");
    store
        .put(&with_metadata, Bytes::new(), PutOptions::create().with_metadata("vera-footer", "abc"))
        .await
        .expect("empty object with metadata");
    let head = store.head(&with_metadata).await.expect("head");
    assert_eq!(head.len, 0);
    assert_eq!(head.metadata.get("vera-footer").map(String::as_str), Some("abc"));
    expect_kind(store.head(&format!("{prefix}/create/missing")).await, StoreErrorKind::NotFound, "head of missing key");
    expect_kind(store.get(&format!("{prefix}/create/missing")).await, StoreErrorKind::NotFound, "get of missing key");
}

pub async fn compare_and_swap(store: &dyn ObjectStore, prefix: &str) {
    let key = format!("{prefix}/cas/watermark.json");
    expect_kind(
        store.put(&key, Bytes::from_static(b"v0"), PutOptions::update("\"nope\"")).await,
        StoreErrorKind::Precondition,
        "update of missing key",
    );
    let v1 = store.put(&key, Bytes::from_static(b"v1"), PutOptions::create()).await.expect("create");
    let v2 = store
        .put(&key, Bytes::from_static(b"v2"), PutOptions::update(v1.etag.clone()))
        .await
        .expect("cas with current etag");
    assert_ne!(v1.etag, v2.etag, "etag must change with content");
    expect_kind(
        store.put(&key, Bytes::from_static(b"v3"), PutOptions::update(v1.etag)).await,
        StoreErrorKind::Precondition,
        "cas with stale etag",
    );
    assert_eq!(&store.get(&key).await.expect("get").body[..], b"v2");
    store.put(&key, Bytes::from_static(b"v4"), PutOptions::overwrite()).await.expect("overwrite of unlocked object");
    assert_eq!(&store.get(&key).await.expect("get").body[..], b"v4");
}

pub async fn reads(store: &dyn ObjectStore, prefix: &str) {
    let key = format!("{prefix}/read/data.bin");
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    store.put(&key, Bytes::from(body.clone()), PutOptions::create()).await.expect("put");
    assert_eq!(&store.get_range(&key, 100..200).await.expect("range")[..], &body[100..200]);
    assert_eq!(&store.get_range(&key, 9_990..10_000).await.expect("range at end")[..], &body[9_990..]);
    let (suffix, total) = store.get_suffix(&key, 64).await.expect("suffix");
    assert_eq!(total, 10_000);
    assert_eq!(&suffix[..], &body[10_000 - 64..]);
    let (whole, total) = store.get_suffix(&key, 1 << 20).await.expect("suffix longer than object");
    assert_eq!((whole.len(), total), (10_000, 10_000));
    assert!(store.get_range(&key, 9_000..10_001).await.is_err(), "range past the end must fail");
    assert_eq!(store.head(&key).await.expect("head").len, 10_000);
}

/// Ranged reads report the object's tag count as of the read (a store that reports
/// nothing must say `None`, never a wrong count), and `add_tag` keeps the other tags.
pub async fn reads_report_tag_counts(store: &dyn ObjectStore, prefix: &str) {
    let key = format!("{prefix}/tagged/data.bin");
    store.put(&key, Bytes::from_static(b"0123456789"), PutOptions::create()).await.expect("put");
    let (bytes, before) = store.get_range_tagged(&key, 2..5).await.expect("range");
    assert_eq!(&bytes[..], b"234");
    let (suffix, total, suffix_before) = store.get_suffix_tagged(&key, 3).await.expect("suffix");
    assert_eq!((&suffix[..], total), (&b"789"[..], 10));
    assert!(matches!(before, None | Some(0)), "untagged: {before:?}");
    assert_eq!(before, suffix_before);
    crate::shards::mark_has_sidecar(store, &key).await.expect("tag");
    crate::shards::add_tag(store, &key, ("vera-state", "superseded")).await.expect("second tag");
    crate::shards::mark_has_sidecar(store, &key).await.expect("tagging twice is a no-op");
    assert_eq!(store.tags(&key).await.expect("tags").len(), 2, "add_tag keeps the other tags");
    let (_, after) = store.get_range_tagged(&key, 0..1).await.expect("range");
    let (_, _, suffix_after) = store.get_suffix_tagged(&key, 1).await.expect("suffix");
    if before.is_some() {
        assert_eq!((after, suffix_after), (Some(2), Some(2)), "a store that counts tags counts them right");
    } else {
        assert_eq!((after, suffix_after), (None, None));
    }
}

pub async fn list_by_prefix(store: &dyn ObjectStore, prefix: &str) {
    for name in ["l/a/1", "l/a/2", "l/b/1", "l/ab"] {
        store.put(&format!("{prefix}/{name}"), Bytes::from_static(b"x"), PutOptions::create()).await.expect("put");
    }
    let keys = |metas: Vec<crate::ObjectMeta>| metas.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list(&format!("{prefix}/l/a/")).await.expect("list")),
        vec![format!("{prefix}/l/a/1"), format!("{prefix}/l/a/2")]
    );
    assert_eq!(
        keys(store.list(&format!("{prefix}/l/a")).await.expect("list")),
        vec![format!("{prefix}/l/a/1"), format!("{prefix}/l/a/2"), format!("{prefix}/l/ab")]
    );
    assert!(store.list(&format!("{prefix}/l/zzz/")).await.expect("empty list").is_empty());
}

pub async fn retention_and_legal_hold(store: &dyn ObjectStore, prefix: &str, time: &impl TimeControl) {
    let key = format!("{prefix}/lock/segment.vera");
    let unit = time.retention_unit();
    let until = later(time.now(), unit);
    let retention = Retention { mode: LockMode::Compliance, retain_until: until };
    store
        .put(&key, Bytes::from_static(b"sealed"), PutOptions::create().with_retention(retention))
        .await
        .expect("locked put");
    let head = store.head(&key).await.expect("head");
    assert_eq!(
        head.retention.map(|r| (r.mode, r.retain_until.as_micros() / 1_000_000)),
        Some((LockMode::Compliance, until.as_micros() / 1_000_000))
    );
    expect_kind(store.delete(&key).await, StoreErrorKind::Locked, "delete under retention");
    expect_kind(
        store.put(&key, Bytes::from_static(b"x"), PutOptions::overwrite()).await,
        StoreErrorKind::Locked,
        "overwrite under retention",
    );
    let shorter = Retention { mode: LockMode::Compliance, retain_until: later(time.now(), unit / 60) };
    expect_kind(store.set_retention(&key, shorter).await, StoreErrorKind::Locked, "shorten compliance retention");
    let longer = Retention { mode: LockMode::Compliance, retain_until: later(time.now(), unit * 2) };
    store.set_retention(&key, longer).await.expect("extend retention");
    assert_eq!(&store.get(&key).await.expect("still readable").body[..], b"sealed");

    // Tags change under the lock (the archive lifecycle rule filters on them); the
    // object's bytes do not.
    assert!(store.tags(&key).await.expect("tags").is_empty());
    let tags = std::collections::BTreeMap::from([("vera-state".to_owned(), "superseded".to_owned())]);
    store.set_tags(&key, &tags).await.expect("tag a locked object");
    assert_eq!(store.tags(&key).await.expect("tags"), tags);
    assert_eq!(&store.get(&key).await.expect("still readable").body[..], b"sealed");
    expect_kind(
        store.set_tags(&format!("{prefix}/lock/missing"), &tags).await,
        StoreErrorKind::NotFound,
        "tag a missing object",
    );

    let held = format!("{prefix}/lock/held.vera");
    store.put(&held, Bytes::from_static(b"held"), PutOptions::create()).await.expect("put");
    store.set_legal_hold(&held, true).await.expect("hold on");
    assert!(store.head(&held).await.expect("head").legal_hold);
    expect_kind(store.delete(&held).await, StoreErrorKind::Locked, "delete under legal hold");
    store.set_legal_hold(&held, false).await.expect("hold off");
    store.delete(&held).await.expect("delete once the hold is lifted");
    expect_kind(store.head(&held).await, StoreErrorKind::NotFound, "deleted object");

    // Expiry: once retention has passed, the object may go.
    time.advance(unit * 2 + Duration::from_secs(2)).await;
    store.delete(&key).await.expect("delete after retention expired");
}

pub async fn bad_keys(store: &dyn ObjectStore) {
    for key in ["", "/abs", "a//b", "a/../b", "trailing/", "ctrl\u{1}"] {
        expect_kind(store.put(key, Bytes::new(), PutOptions::create()).await, StoreErrorKind::InvalidInput, "bad key");
    }
}

pub async fn concurrent_creates_have_one_winner(store: &dyn ObjectStore, prefix: &str) {
    let key = format!("{prefix}/race/segment");
    let attempts = (0..8u8).map(|i| store.put(&key, Bytes::from(vec![i; 100]), PutOptions::create()));
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one concurrent create may win: {results:?}");
    for result in results.into_iter().filter_map(Result::err) {
        assert_eq!(result.kind, StoreErrorKind::AlreadyExists);
    }
}
