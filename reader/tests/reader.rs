//! The reader service over a real packed store: bytes, headers, ranges, and every error
//! case with its own status, through the axum router.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;
use vera_protocol::Timestamp;
use vera_protocol::message::{PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_protocol::sidecar::{Sidecar, Tombstone, TombstoneReason};
use vera_reader::{Reader, ReaderSettings, router};
use vera_source::SourceMapping;
use vera_source::sqlite::SqliteSource;
use vera_store::flaky::FlakyStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, PutOptions};

const ROWS: i64 = 200;

fn payload(id: i64) -> Vec<u8> {
    format!("{{\"receipt\":{id},\"items\":[{}]}}", "1,".repeat(id as usize % 50 + 1)).into_bytes()
}

fn created_at(id: i64) -> String {
    format!("2026-11-2{}T{:02}:00:00Z", id % 3 + 1, id % 24)
}

fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(1).unwrap())
}

/// A store holding ROWS files packed by the real worker.
async fn packed_store(dir: &std::path::Path) -> LocalStore {
    let path = dir.join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, 'application/json', ?)")
            .bind(id)
            .bind(format!("r{id:04}"))
            .bind(created_at(id))
            .bind(payload(id))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap();
    let store = LocalStore::open(dir.join("store")).unwrap();
    let task = PackTask {
        task_id: "demo:0-200".into(),
        source: "demo".into(),
        slot: Slot::by_watermark(0, ROWS, ROWS as u64, 0),
        routing: routing(),
    };
    // Generations only: the read path through staging segments is tested in compact/tests.
    let staging = vera_worker::settings::StagingSettings { direct_min_files: 0, ..Default::default() };
    let settings = vera_worker::WorkerSettings { retention: None, staging, ..vera_worker::WorkerSettings::default() };
    vera_worker::pack_task(&task, &source, &ShardStore::new(Arc::new(store.clone())), &settings).await.unwrap();
    store
}

fn service(store: Arc<dyn ObjectStore>, ttl: Duration) -> (Arc<Reader>, axum::Router) {
    let settings = ReaderSettings { sidecar_ttl: ttl, ..ReaderSettings::default() };
    let reader = Arc::new(Reader::new(ShardStore::new(store), routing(), None, settings));
    (reader.clone(), router(reader, None))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
    (parts.status, parts.headers, bytes)
}

fn url(id: i64) -> String {
    format!("/v1/files/r{id:04}?created_at={}", created_at(id))
}

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("errors are JSON");
    assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()), "errors explain themselves: {value}");
    value["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn files_come_back_with_type_etag_ranges_and_conditional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let (_, app) = service(Arc::new(store), Duration::from_secs(5));
    for id in [1, 77, ROWS] {
        let (status, headers, body) = call(&app, "GET", &url(id), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, payload(id));
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let etag = format!("\"{}\"", blake3::hash(&payload(id)).to_hex());
        assert_eq!(headers[header::ETAG], etag.as_str(), "the ETag is the content hash");

        let (status, headers, body) = call(&app, "HEAD", &url(id), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(headers[header::CONTENT_LENGTH], payload(id).len().to_string().as_str());

        let (status, headers, body) = call(&app, "GET", &url(id), &[("range", "bytes=2-9")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, payload(id)[2..=9]);
        assert_eq!(headers[header::CONTENT_RANGE], format!("bytes 2-9/{}", payload(id).len()).as_str());
        let (status, _, body) = call(&app, "GET", &url(id), &[("range", "bytes=-5")]).await;
        assert_eq!((status, body.as_slice()), (StatusCode::PARTIAL_CONTENT, &payload(id)[payload(id).len() - 5..]));
        let (status, _, body) = call(&app, "GET", &url(id), &[("range", "bytes=100000-")]).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(error_code(&body), "range_not_satisfiable");

        let (status, _, body) = call(&app, "GET", &url(id), &[("if-none-match", &etag)]).await;
        assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    }
}

#[tokio::test]
async fn bad_requests_each_get_their_own_status_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let (_, app) = service(Arc::new(store), Duration::from_secs(5));
    let cases = [
        ("/v1/files/bad%01uid?created_at=2026-11-21T00:00:00Z", StatusCode::BAD_REQUEST, "malformed_uid"),
        ("/v1/files/r0001", StatusCode::BAD_REQUEST, "bad_created_at"),
        ("/v1/files/r0001?created_at=yesterday", StatusCode::BAD_REQUEST, "bad_created_at"),
        ("/v1/files/r0001?created_at=2026-11-25T09:00:00Z", StatusCode::NOT_FOUND, "not_found"),
        ("/v1/files/nobody?created_at=2026-11-21T00:00:00Z", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (uri, status, code) in cases {
        let (got, _, body) = call(&app, "GET", uri, &[]).await;
        assert_eq!((got, error_code(&body).as_str()), (status, code), "{uri}");
    }
    let (status, _, _) = call(&app, "GET", &url(1), &[]).await;
    assert_eq!(status, StatusCode::OK, "the service stays up after bad requests");
}

fn tombstone(request_id: &str) -> Tombstone {
    Tombstone {
        at: Timestamp::parse("2026-11-25T10:00:00Z").unwrap(),
        reason: TombstoneReason::GdprErasure,
        request_id: request_id.into(),
        operator: "op-1".into(),
    }
}

/// Tombstones `uid` in `key`'s sidecar as a writer must: the segment is tagged before its
/// first sidecar exists.
async fn write_tombstone(store: &LocalStore, key: &str, uid: &str, request_id: &str) {
    vera_store::shards::mark_has_sidecar(store, key).await.unwrap();
    let sidecar_key = vera_protocol::routing::sidecar_key_of(key);
    let (mut sidecar, options) = match store.get(&sidecar_key).await {
        Ok(got) => (Sidecar::decode(&got.body).unwrap(), PutOptions::update(got.meta.etag)),
        Err(_) => {
            let hash = blake3::hash(&store.get(key).await.unwrap().body);
            (Sidecar::new(key.to_owned(), *hash.as_bytes()), PutOptions::create())
        }
    };
    sidecar.tombstone(uid, tombstone(request_id)).unwrap();
    store.put(&sidecar_key, bytes::Bytes::from(sidecar.encode()), options).await.unwrap();
}

#[tokio::test]
async fn a_tombstone_answers_410_at_once_for_a_new_sidecar_else_after_the_ttl_or_on_invalidation() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let (reader, app) = service(Arc::new(store.clone()), Duration::from_secs(30));
    let (status, _, _) = call(&app, "GET", &url(5), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reader.sidecar_fetches(), 0, "an untagged segment has no sidecar to read");

    let addr = routing().locate("r0005", Timestamp::parse(&created_at(5)).unwrap()).unwrap();
    let key = addr.segment_key(0);
    let mut others = (1..=ROWS).filter(|id| {
        *id != 5 && routing().locate(&format!("r{id:04}"), Timestamp::parse(&created_at(*id)).unwrap()).unwrap() == addr
    });
    let second = others.next().unwrap();

    // The segment's first sidecar: the data GET reports the new tag, so the very next
    // read checks the sidecar and answers 410, with no TTL to wait out.
    write_tombstone(&store, &key, "r0005", "req-1").await;
    let (status, _, body) = call(&app, "GET", &url(5), &[]).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::GONE, "gone"));
    let (status, _, _) = call(&app, "GET", &url(second), &[]).await;
    assert_eq!(status, StatusCode::OK, "only the erased file is gone");

    // A later tombstone in a segment whose sidecar is cached waits for the TTL or an
    // invalidation (a bus event).
    write_tombstone(&store, &key, &format!("r{second:04}"), "req-2").await;
    let (status, _, _) = call(&app, "GET", &url(second), &[]).await;
    assert_eq!(status, StatusCode::OK, "the cached sidecar is trusted for its TTL");
    reader.invalidate(&key).await;
    let (status, _, body) = call(&app, "GET", &url(second), &[]).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::GONE, "gone"));

    let (_, app) = service(Arc::new(store.clone()), Duration::from_millis(300));
    for id in [5, second] {
        let (status, _, _) = call(&app, "GET", &url(id), &[]).await;
        assert_eq!(status, StatusCode::GONE, "a fresh reader sees both tombstones");
    }
    let third = others.next().unwrap();
    let (status, _, _) = call(&app, "GET", &url(third), &[]).await;
    assert_eq!(status, StatusCode::OK);
    write_tombstone(&store, &key, &format!("r{third:04}"), "req-3").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, _) = call(&app, "GET", &url(third), &[]).await;
    assert_eq!(status, StatusCode::GONE, "the cached sidecar is read again once its TTL lapses");
    for id in others.take(3) {
        let (status, _, _) = call(&app, "GET", &url(id), &[]).await;
        assert_eq!(status, StatusCode::OK, "only the erased files are gone");
    }
}

#[tokio::test]
async fn corrupt_bytes_are_refused_with_a_500_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let addr = routing().locate("r0042", Timestamp::parse(&created_at(42)).unwrap()).unwrap();
    let key = addr.segment_key(0);
    let index = ShardStore::new(Arc::new(store.clone())).index(&key).await.unwrap();
    let range = index.find("r0042").unwrap().record_range();
    let mut bytes = store.get(&key).await.unwrap().body.to_vec();
    bytes[range.start as usize + 3] ^= 0x40;
    let corrupt = LocalStore::open(dir.path().join("corrupt")).unwrap();
    corrupt.put(&key, bytes::Bytes::from(bytes), PutOptions::create()).await.unwrap();
    let (_, app) = service(Arc::new(corrupt), Duration::from_secs(5));
    let (status, _, body) = call(&app, "GET", &url(42), &[]).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_segment"));
}

#[tokio::test]
async fn storage_down_is_a_503_with_retry_after_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let down = FlakyStore::new(store, 7, 1.0);
    let (_, app) = service(Arc::new(down), Duration::from_secs(5));
    let (status, headers, body) = call(&app, "GET", &url(3), &[]).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"));
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let (status, _, _) = call(&app, "GET", "/readyz", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = call(&app, "GET", "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK, "alive while the store is down");
}

#[tokio::test]
async fn the_openapi_description_names_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (_, app) = service(Arc::new(LocalStore::open(dir.path()).unwrap()), Duration::from_secs(5));
    let (status, _, body) = call(&app, "GET", "/openapi.yaml", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for path in ["/v1/files/{uid}:", "/healthz:", "/readyz:", "/metrics:", "head:", "get:", "put:"] {
        assert!(text.contains(path), "{path} is described");
    }
}

#[tokio::test]
async fn warm_reads_cost_one_get_and_the_index_cache_keeps_to_its_budget() {
    use vera_store::counting::CountingStore;
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let counting = CountingStore::new(store.clone());
    let counts = counting.counts();
    let shards = ShardStore::new(Arc::new(counting));
    let reader = Arc::new(Reader::new(shards.clone(), routing(), None, ReaderSettings::default()));
    let app = router(reader, None);
    for id in 1..=ROWS {
        assert_eq!(call(&app, "GET", &url(id), &[]).await.0, StatusCode::OK);
    }
    let cold = counts.snapshot();
    for id in 1..=ROWS {
        assert_eq!(call(&app, "GET", &url(id), &[]).await.0, StatusCode::OK);
    }
    let warm = counts.snapshot();
    assert_eq!(warm.gets - cold.gets, ROWS as u64, "one GET per warm read");
    let stats = shards.cache_stats();
    assert_eq!(stats.files, ROWS as u64, "every file's index is cached");
    eprintln!(
        "index cache: {} bytes for {} files = {:.1} B/file",
        stats.bytes,
        stats.files,
        stats.bytes as f64 / stats.files as f64
    );

    // A budget smaller than the indexes: the cache stays within it, and reads still work
    // (evicted indexes are read again from the store).
    let budget = stats.bytes / 3;
    let small = ShardStore::new(Arc::new(store)).with_cache_budget(budget);
    let reader = Arc::new(Reader::new(small.clone(), routing(), None, ReaderSettings::default()));
    let app = router(reader, None);
    for id in (1..=ROWS).chain(1..=ROWS) {
        assert_eq!(call(&app, "GET", &url(id), &[]).await.0, StatusCode::OK);
    }
    let kept = small.cache_stats();
    assert!(kept.bytes <= budget, "{kept:?} within {budget}");
    assert!(kept.segments >= 1);
}

/// An index region larger than the suffix costs a second GET once; the store learns the
/// size, and later cold reads fetch footer and index in one suffix GET.
#[tokio::test]
async fn the_suffix_length_learns_from_indexes_that_did_not_fit() {
    use vera_store::counting::CountingStore;
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let segments: Vec<String> =
        store.list("").await.unwrap().into_iter().map(|m| m.key).filter(|k| k.ends_with(".vera")).collect();
    assert!(segments.len() >= 2, "{segments:?}");
    let counting = CountingStore::new(store);
    let counts = counting.counts();
    let shards = ShardStore::new(Arc::new(counting)).with_suffix_bytes(256);
    assert_eq!(shards.suffix_hint(), 256);
    for key in &segments {
        shards.index(key).await.unwrap();
    }
    let first = counts.snapshot().gets;
    assert!(first > segments.len() as u64, "some index outgrew 256 bytes: {first} GETs");
    assert!(shards.suffix_hint() > 256, "learned {}", shards.suffix_hint());
    shards.forget_all();
    for key in &segments {
        shards.index(key).await.unwrap();
    }
    assert_eq!(counts.snapshot().gets - first, segments.len() as u64, "one suffix GET per cold index now");
    // Indexes loaded right after emptying the cache stay cached, all of them.
    let stats = shards.cache_stats();
    assert_eq!(stats.segments, segments.len() as u64, "{stats:?}");
    assert_eq!(stats.files, ROWS as u64);
}

/// Any uid VERA packs can be read back: 1 to 255 bytes of UTF-8 without control
/// characters, spaces and non-ASCII included (percent-encoded in the path).
#[tokio::test]
async fn uids_with_spaces_and_unicode_are_not_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let reader = Arc::new(Reader::new(ShardStore::new(Arc::new(store)), routing(), None, ReaderSettings::default()));
    let app = router(reader, None);
    for path in
        ["/v1/files/a%20b?created_at=2026-11-21T00:00:00Z", "/v1/files/caf%C3%A9?created_at=2026-11-21T00:00:00Z"]
    {
        let (status, _, body) = call(&app, "GET", path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: a valid uid that is not stored");
        assert!(String::from_utf8_lossy(&body).contains("not_found"));
    }
}

#[tokio::test]
async fn a_tombstone_event_on_the_bus_drops_the_cached_sidecar_before_its_ttl() {
    use futures::StreamExt;
    use vera_bus::Bus;
    use vera_protocol::message::{Envelope, Message, TombstoneRequested};
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let bus: Arc<dyn Bus> =
        Arc::new(vera_bus::sqlite::SqliteBus::open(dir.path().join("bus.sqlite"), 3).await.unwrap());
    bus.ensure_topics(&vera_bus::topics::ALL).await.unwrap();
    // A TTL far longer than the test: only the event can make the reader read the sidecar again.
    let (reader, app) = service(Arc::new(store.clone()), Duration::from_secs(3600));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let follower = vera_reader::events::spawn(reader.clone(), bus.clone(), shutdown.clone());

    let addr = routing().locate("r0005", Timestamp::parse(&created_at(5)).unwrap()).unwrap();
    let key = addr.segment_key(0);
    let second = (1..=ROWS)
        .find(|id| {
            *id != 5
                && routing().locate(&format!("r{id:04}"), Timestamp::parse(&created_at(*id)).unwrap()).unwrap() == addr
        })
        .unwrap();
    write_tombstone(&store, &key, "r0005", "req-1").await;
    let (status, _, _) = call(&app, "GET", &url(5), &[]).await;
    assert_eq!(status, StatusCode::GONE);
    let (status, _, _) = call(&app, "GET", &url(second), &[]).await;
    assert_eq!(status, StatusCode::OK, "read with the sidecar now cached for an hour");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !reader.following_events() {
        assert!(tokio::time::Instant::now() < deadline, "the reader subscribes to events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second subscriber shows the event was fanned out, and the tracker's consumers
    // still get it from the queue.
    let mut witness = bus.subscribe(vera_bus::topics::EVENTS).await.unwrap();
    write_tombstone(&store, &key, &format!("r{second:04}"), "req-2").await;
    let (status, _, _) = call(&app, "GET", &url(second), &[]).await;
    assert_eq!(status, StatusCode::OK, "without an event the cached sidecar still answers");
    let at = Timestamp::parse("2026-11-25T10:00:00Z").unwrap();
    let event = Message::TombstoneRequested(TombstoneRequested {
        request_id: "req-2".into(),
        uid: format!("r{second:04}"),
        created_at: Timestamp::parse(&created_at(second)).unwrap(),
        addr,
        reason: TombstoneReason::GdprErasure,
        operator: "op-1".into(),
        requested_at: at,
    });
    let envelope = Envelope::new("tombstone/req-2", at, event);
    let payload = bytes::Bytes::from(envelope.encode());
    bus.publish(vera_bus::topics::EVENTS, vec![vera_bus::Outgoing { key: envelope.ordering_key(), payload }])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), witness.next()).await.unwrap().unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = call(&app, "GET", &url(second), &[]).await;
        if status == StatusCode::GONE {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the event made the reader read the sidecar again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claimed = bus.claim(vera_bus::topics::EVENTS, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1, "the queue's consumers still get the event once");
    shutdown.cancel();
    follower.await.unwrap();
}

/// A uid that is not there costs no GET once its address's missing next generation is
/// remembered, which happens only while the reader follows events; the address's event
/// (`ShardSealed` for a new generation) makes the reader look again, so the file written
/// there is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_uid_costs_no_get_again_while_events_are_followed_and_a_new_generation_is_seen() {
    use vera_protocol::shard::{FileInput, SegmentSettings, SegmentWriter};
    use vera_store::counting::CountingStore;
    let dir = tempfile::tempdir().unwrap();
    let store = packed_store(dir.path()).await;
    let counting = CountingStore::new(store.clone());
    let counts = counting.counts();
    let bus: Arc<dyn vera_bus::Bus> =
        Arc::new(vera_bus::sqlite::SqliteBus::open(dir.path().join("bus.sqlite"), 3).await.unwrap());
    bus.ensure_topics(&vera_bus::topics::ALL).await.unwrap();
    let (reader, app) = service(Arc::new(counting), Duration::from_secs(3600));

    // A uid routed to r0005's address, which has a generation 0 but not this uid.
    let at = Timestamp::parse(&created_at(5)).unwrap();
    let addr = routing().locate("r0005", at).unwrap();
    let late = (0..).map(|i| format!("late-{i}")).find(|uid| routing().locate(uid, at).unwrap() == addr).unwrap();
    let late_url = format!("/v1/files/{late}?created_at={}", created_at(5));
    let gets_of = |app: axum::Router, url: String| {
        let counts = counts.clone();
        async move {
            let before = counts.snapshot().gets;
            let (status, _, _) = call(&app, "GET", &url, &[]).await;
            (status, counts.snapshot().gets - before)
        }
    };

    // Not following events: every read of the unknown uid asks the store again.
    assert_eq!(gets_of(app.clone(), late_url.clone()).await.0, StatusCode::NOT_FOUND);
    let (status, gets) = gets_of(app.clone(), late_url.clone()).await;
    assert_eq!((status, gets), (StatusCode::NOT_FOUND, 1), "the missing generation 1 is asked for again");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let follower = vera_reader::events::spawn(reader.clone(), bus.clone(), shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !reader.following_events() {
        assert!(tokio::time::Instant::now() < deadline, "the reader subscribes to events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gets_of(app.clone(), late_url.clone()).await.0, StatusCode::NOT_FOUND);
    let (status, gets) = gets_of(app.clone(), late_url.clone()).await;
    assert_eq!((status, gets), (StatusCode::NOT_FOUND, 0), "remembered missing while events are followed");

    // A worker writes generation 1 with the uid; its ShardSealed event reaches the reader
    // as `invalidate_address` (what `events::apply` calls for it).
    let settings = SegmentSettings::new(addr, 1);
    let mut writer = SegmentWriter::new(settings, std::io::Cursor::new(Vec::new())).unwrap();
    writer
        .add(FileInput { uid: &late, created_at: at, content_type: Some("text/plain"), bytes: b"arrived late" })
        .unwrap();
    let mut segment = Vec::new();
    writer.finish(&mut segment).unwrap();
    store.put(&addr.segment_key(1), bytes::Bytes::from(segment), PutOptions::create()).await.unwrap();
    let (status, _) = gets_of(app.clone(), late_url.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "until the event, the remembered absence answers");
    reader.invalidate_address(&addr).await;
    let (status, _, body) = call(&app, "GET", &late_url, &[]).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"arrived late"[..]));

    // A break in the subscription forgets every remembered absence.
    reader.shards().cache_absence(false);
    let missing = format!("/v1/files/nowhere-1?created_at={}", created_at(5));
    let (status, gets) = gets_of(app.clone(), missing.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(gets >= 1, "asked the store: {gets}");
    let (_, again) = gets_of(app.clone(), missing).await;
    assert!(again >= 1, "not remembered while not following: {again}");
    shutdown.cancel();
    follower.await.unwrap();
}
