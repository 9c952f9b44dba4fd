//! Against s3s-fs (`VERA_TEST_S3S_ENDPOINT`, default `http://127.0.0.1:8014`;
//! `scripts/services` starts it), a server that accepts `CreateBucket` with the Object
//! Lock flag and ignores it: `ensure_bucket` must notice instead of trusting the 200.

use vera_store::StoreErrorKind;
use vera_store_s3::{BucketSetup, BucketState, S3Settings, S3Store, ensure_bucket};

fn s3(bucket: &str) -> S3Store {
    s3_with(bucket, false)
}

fn s3_with(bucket: &str, suffix_fallback: bool) -> S3Store {
    let endpoint = std::env::var("VERA_TEST_S3S_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8014".into());
    S3Store::with_static_credentials(
        &S3Settings { endpoint: Some(endpoint), force_path_style: true, suffix_fallback, ..S3Settings::new(bucket) },
        "test",
        "test",
    )
}

#[tokio::test]
async fn a_server_that_ignores_the_object_lock_flag_is_caught() {
    let bucket = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: false };
    let error = ensure_bucket(&s3(&bucket), setup).await.expect_err("no Object Lock on s3s-fs");
    assert_eq!(error.kind, StoreErrorKind::Config);
    assert!(error.to_string().contains("did not enable Object Lock"), "{error}");
    // Running setup again finds the bucket and still refuses it.
    let error = ensure_bucket(&s3(&bucket), setup).await.expect_err("still no Object Lock");
    assert!(error.to_string().contains("without Object Lock"), "{error}");

    let other = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let allowed = BucketSetup { default_retention: None, allow_without_object_lock: true };
    assert_eq!(ensure_bucket(&s3(&other), allowed).await.unwrap(), BucketState::CreatedWithoutObjectLockAllowed);
}

/// s3s-fs answers 500 to a suffix range longer than the object; with `suffix_fallback` the
/// read still returns the whole object and its length, and a long object still gets
/// exactly its suffix.
#[tokio::test]
async fn suffix_reads_of_short_objects_fall_back_to_head_and_range() {
    use vera_store::{ObjectStore, PutOptions};
    let bucket = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: true };
    let counts = std::sync::Arc::new(vera_store::counting::RequestCounts::default());
    let store = s3_with(&bucket, true).with_request_counts(counts.clone());
    ensure_bucket(&store, setup).await.unwrap();
    let short: Vec<u8> = (0..100u8).collect();
    store.put("short", short.clone().into(), PutOptions::create()).await.unwrap();
    let before = counts.snapshot();
    let (body, len) = store.get_suffix("short", 64 * 1024).await.unwrap();
    assert_eq!((body.as_ref(), len), (short.as_slice(), 100));
    // What that cost on the wire: the refused suffix GET (counted, and counted as a server
    // error), the HEAD, and the range GET. S3 would have answered the first GET.
    let after = counts.snapshot();
    assert_eq!(
        (after.gets - before.gets, after.get_server_errors - before.get_server_errors, after.heads - before.heads),
        (2, 1, 1)
    );
    let long: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.put("long", long.clone().into(), PutOptions::create()).await.unwrap();
    let before = counts.snapshot();
    let (body, len) = store.get_suffix("long", 1000).await.unwrap();
    assert_eq!((body.as_ref(), len), (&long[99_000..], 100_000));
    let after = counts.snapshot();
    assert_eq!((after.gets - before.gets, after.get_server_errors - before.get_server_errors), (1, 0));
    let error = store.get_suffix("missing", 1000).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::NotFound);
}

/// Readers skip the sidecar of a segment whose GETs report no tags, so a server must
/// never report 0 tags for a segment a writer tagged. Either the tag cannot be written
/// (then the tombstone is never written either: the writer fails, loudly), or reads
/// report it.
#[tokio::test]
async fn a_server_either_refuses_the_sidecar_tag_or_reports_it_on_reads() {
    use vera_store::{ObjectStore, PutOptions};
    let bucket = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: true };
    let store = s3(&bucket);
    ensure_bucket(&store, setup).await.unwrap();
    store.put("segment.vera", bytes::Bytes::from_static(b"0123456789"), PutOptions::create()).await.unwrap();
    match vera_store::shards::mark_has_sidecar(&store, "segment.vera").await {
        Err(error) => assert_eq!(error.kind, StoreErrorKind::Config, "refused as unsupported: {error}"),
        Ok(()) => {
            let (_, tags) = store.get_range_tagged("segment.vera", 0..4).await.unwrap();
            assert_eq!(tags, Some(1), "a server that stores the tag must report it on GET");
        }
    }
}

/// Requests and the bytes of object data are counted on the wire, by billing class.
#[tokio::test]
async fn requests_and_bytes_are_counted_on_the_wire() {
    use vera_store::{ObjectStore, PutOptions};
    let bucket = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: true };
    let counts = std::sync::Arc::new(vera_store::counting::RequestCounts::default());
    let store = s3(&bucket).with_request_counts(counts.clone());
    ensure_bucket(&store, setup).await.unwrap();
    let before = counts.snapshot();
    store.put("data", bytes::Bytes::from(vec![7u8; 1000]), PutOptions::create()).await.unwrap();
    assert_eq!(store.get_range("data", 100..350).await.unwrap().len(), 250);
    let (tail, len) = store.get_suffix("data", 64).await.unwrap();
    assert_eq!((tail.len(), len), (64, 1000));
    store.head("data").await.unwrap();
    let after = counts.snapshot();
    assert_eq!((after.puts - before.puts, after.gets - before.gets, after.heads - before.heads), (1, 2, 1));
    assert_eq!(after.bytes_put - before.bytes_put, 1000);
    assert_eq!(after.bytes_got - before.bytes_got, 250 + 64, "object bytes received; a HEAD carries none");
}

/// s3s-fs refuses a create-if-absent over an existing object, for a single PUT and for a
/// multipart upload whose completion carries `If-None-Match: *`, when the two do not
/// overlap. (When they do, it may let both win: loadtest/src/creates.rs.)
#[tokio::test]
async fn sequential_creates_over_an_existing_key_are_refused() {
    use std::sync::Arc;
    use vera_store::{ObjectStore, PutOptions};
    let bucket = format!("vera-s3s-{:08x}", rand::random::<u32>());
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: true };
    let store = S3Store::with_static_credentials(
        &S3Settings {
            endpoint: Some(std::env::var("VERA_TEST_S3S_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8014".into())),
            force_path_style: true,
            multipart_threshold: 5 * 1024 * 1024,
            part_size: 5 * 1024 * 1024,
            ..S3Settings::new(&bucket)
        },
        "test",
        "test",
    );
    ensure_bucket(&store, setup).await.unwrap();
    store.put("k", bytes::Bytes::from_static(b"first"), PutOptions::create()).await.unwrap();
    let single = store.put("k", bytes::Bytes::from_static(b"second"), PutOptions::create()).await;
    let big = bytes::Bytes::from(vec![9u8; 11 * 1024 * 1024]);
    let multipart = store.put_source("k", Arc::new(big), PutOptions::create()).await;
    assert_eq!(single.map(|_| ()).unwrap_err().kind, StoreErrorKind::AlreadyExists, "single PUT");
    assert_eq!(multipart.map(|_| ()).unwrap_err().kind, StoreErrorKind::AlreadyExists, "multipart upload");
    assert_eq!(&store.get("k").await.unwrap().body[..], b"first", "the first object is untouched");
}
