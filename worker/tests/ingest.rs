//! The ingest worker on the embedded bus and the local store: inline, staged and S3
//! notification events, redelivery, every kind of bad input, expiry of landing objects,
//! and erased files that a replay must not bring back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::ingest::{FileArrived, FileContent};
use vera_protocol::message::{AuditAction, Envelope, Message};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, PutOptions};
use vera_worker::WorkerSettings;
use vera_worker::ingest::{CreatedAtFrom, IngestSettings, IngestStats, IngestWorker, file_event, inline_event};

struct Fixture {
    _dir: tempfile::TempDir,
    bus: Arc<dyn Bus>,
    store: Arc<dyn ObjectStore>,
    routing: RoutingTable,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let routing = RoutingTable::single(RoutingEpoch::v1(1).unwrap());
    Fixture { _dir: dir, bus, store, routing }
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        retention: None,
        visibility_timeout_seconds: 30,
        retry_delay_seconds: 0,
        ..WorkerSettings::default()
    }
}

fn ingest_settings() -> IngestSettings {
    IngestSettings { linger: Duration::from_millis(200), ..IngestSettings::default() }
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn now() -> Timestamp {
    vera_store::Clock::now(&vera_store::SystemClock)
}

fn body(n: usize) -> Vec<u8> {
    format!("{{\"receipt\":{n},\"lines\":[{}]}}", "1,".repeat(n % 50)).into_bytes()
}

fn created(n: usize) -> Timestamp {
    at(&format!("2026-11-{:02}T10:{:02}:00Z", 20 + n % 3, n % 60))
}

fn runner(f: &Fixture, ingest: IngestSettings, worker: WorkerSettings) -> IngestWorker {
    IngestWorker {
        worker_id: "ingest-test".into(),
        bus: Arc::clone(&f.bus),
        shards: ShardStore::new(Arc::clone(&f.store)),
        landing: Arc::clone(&f.store),
        routing: f.routing.clone(),
        settings: Arc::new(worker),
        ingest,
    }
}

/// Runs an ingest worker until the ingest topic has nothing visible or in flight.
async fn drain(f: &Fixture, ingest: IngestSettings, worker: WorkerSettings) -> IngestStats {
    let runner = runner(f, ingest, worker);
    let shutdown = CancellationToken::new();
    let (bus, token) = (Arc::clone(&f.bus), shutdown.clone());
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let depth = bus.depth(topics::INGEST).await.unwrap();
            if depth.visible == 0 && depth.in_flight == 0 {
                token.cancel();
                return;
            }
        }
    });
    let stats = tokio::time::timeout(Duration::from_secs(60), runner.run(shutdown)).await.expect("ingest drains");
    watcher.await.unwrap();
    stats
}

async fn publish(f: &Fixture, messages: Vec<Outgoing>) {
    f.bus.publish(topics::INGEST, messages).await.unwrap();
}

fn raw(payload: &[u8]) -> Outgoing {
    Outgoing { key: None, payload: Bytes::copy_from_slice(payload) }
}

async fn read(f: &Fixture, uid: &str, created_at: Timestamp) -> Vec<u8> {
    ShardStore::new(Arc::clone(&f.store)).read_file(&f.routing, uid, created_at).await.unwrap().bytes
}

async fn segments(f: &Fixture) -> Vec<String> {
    let mut keys: Vec<String> =
        f.store.list("e").await.unwrap().into_iter().map(|m| m.key).filter(|k| k.ends_with(".vera")).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn inline_events_are_stored_once_and_a_replay_changes_nothing() {
    let f = fixture().await;
    let n = 1200;
    let events: Vec<Outgoing> =
        (0..n).map(|i| inline_event(&format!("rcpt-{i:05}"), created(i), None, &body(i), now())).collect();
    publish(&f, events.clone()).await;
    let stats = drain(&f, ingest_settings(), settings()).await;
    assert_eq!(stats.events_acked, n as u64);
    assert_eq!(stats.files_stored, n as u64);
    assert_eq!(stats.dead_lettered, 0);
    let written = segments(&f).await;
    // Three days, two addresses each: a handful of segments for 1,200 files.
    assert!(written.len() <= 12, "{written:?}");
    assert_eq!(stats.segments_written, written.len() as u64);
    for i in (0..n).step_by(97) {
        assert_eq!(read(&f, &format!("rcpt-{i:05}"), created(i)).await, body(i));
    }
    assert_eq!(stats.publish_to_durable_ms.len(), n);

    // The whole topic again (a replay, or every event redelivered): no new segment.
    publish(&f, events).await;
    let again = drain(&f, ingest_settings(), settings()).await;
    assert_eq!(again.events_acked, n as u64);
    assert_eq!(again.files_stored, 0);
    assert_eq!(again.already_stored, n as u64);
    assert_eq!(segments(&f).await, written);
    let depth = f.bus.depth(topics::INGEST).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight, depth.dead), (0, 0, 0));
}

#[tokio::test]
async fn a_full_address_seals_a_final_generation_without_waiting() {
    let f = fixture().await;
    // 2,400 files of one day over two addresses: both pass 1,000 files.
    let events: Vec<Outgoing> = (0..2400)
        .map(|i| {
            inline_event(&format!("d-{i:05}"), at("2026-11-24T08:00:00Z"), Some("application/json"), &body(i), now())
        })
        .collect();
    publish(&f, events).await;
    let ingest = IngestSettings { linger: Duration::from_secs(3600), ..ingest_settings() };
    let worker = WorkerSettings { visibility_timeout_seconds: 7300, ..settings() };
    let runner = runner(&f, ingest, worker);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { runner.run(shutdown).await }
    });
    // Both addresses seal generation 0 once they pass 1,000 files, long before the
    // hour of linger.
    let finals = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let finals: Vec<String> = segments(&f).await.into_iter().filter(|k| k.ends_with("/g000000.vera")).collect();
            if finals.len() == 2 {
                return finals;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("full addresses seal without waiting for the linger");
    // Shutting down seals what is still held (to staging: under 1,000 files each).
    shutdown.cancel();
    let stats = running.await.unwrap();
    assert_eq!(stats.files_stored, 2400);
    assert_eq!(stats.events_acked, 2400);
    let written = segments(&f).await;
    assert!(written.iter().filter(|k| k.contains("/s")).count() <= 2, "{written:?}");
    assert!(finals.iter().all(|k| written.contains(k)));
}

fn envelope(file: FileArrived) -> Outgoing {
    file_event(file, now())
}

#[tokio::test]
async fn bad_events_are_dead_lettered_with_reasons_and_the_rest_flows() {
    let f = fixture().await;
    let good = |i: usize| inline_event(&format!("ok-{i}"), created(i), None, &body(i), now());
    f.store.put("landing/short.bin", Bytes::from_static(b"12345"), PutOptions::create()).await.unwrap();
    f.store.put("landing/changed.bin", Bytes::from_static(b"abcdef"), PutOptions::create()).await.unwrap();
    let staged = |key: &str, size: u64, blake3: Option<String>| FileArrived {
        uid: format!("staged-{key}").replace('/', "-"),
        created_at: at("2026-11-24T10:00:00Z"),
        content_type: None,
        blake3,
        sha256: None,
        content: FileContent::Staged { key: key.into(), size, etag: None },
    };
    let mut over = FileArrived::inline("big", at("2026-11-24T10:00:00Z"), None, &vec![7u8; 2048]);
    over.blake3 = None;
    let wrong_hash = {
        let mut file = FileArrived::inline("lying", at("2026-11-24T10:00:00Z"), None, b"real bytes");
        file.blake3 = Some(blake3::hash(b"other bytes").to_hex().to_string());
        file
    };
    let outside = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-24T10:00:00Z",
        "s3": {"bucket": {"name": "landing"}, "object": {"key": "elsewhere/x.pdf", "size": 5, "eTag": "x"}}}]});
    let bad_created_at = br#"{"v":1,"id":"bad-time","sent_at":"2026-11-24T10:00:00Z","type":"file_arrived","body":{"uid":"t","created_at":"last tuesday","form":"inline","data":"AAAA"}}"#;
    let bad_uid = br#"{"v":1,"id":"bad-uid","sent_at":"2026-11-24T10:00:00Z","type":"file_arrived","body":{"uid":"a\u0007b","created_at":"2026-11-24T10:00:00Z","form":"inline","data":"AAAA"}}"#;
    let no_uid = br#"{"v":1,"id":"no-uid","sent_at":"2026-11-24T10:00:00Z","type":"file_arrived","body":{"created_at":"2026-11-24T10:00:00Z","form":"inline","data":"AAAA"}}"#;
    let mut messages = vec![
        good(1),
        raw(b"this is not json"),
        raw(no_uid),
        envelope(over),
        raw(bad_created_at),
        raw(bad_uid),
        envelope(staged("landing/missing.bin", 5, None)),
        envelope(staged("landing/short.bin", 9, None)),
        envelope(staged("landing/changed.bin", 6, Some(blake3::hash(b"ABCDEF").to_hex().to_string()))),
        envelope(staged("archive/secret.key", 5, None)),
        envelope(wrong_hash),
        raw(outside.to_string().as_bytes()),
        good(2),
    ];
    // The same uid as good(1) with other bytes, after good(1) is stored.
    let duplicate = inline_event("ok-1", created(1), None, b"different content", now());
    publish(&f, std::mem::take(&mut messages)).await;
    let worker = WorkerSettings { max_file_bytes: 1024, ..settings() };
    let stats = drain(&f, ingest_settings(), worker.clone()).await;
    assert_eq!(stats.files_stored, 2);
    assert_eq!(stats.dead_lettered, 11);
    publish(&f, vec![duplicate]).await;
    let stats = drain(&f, ingest_settings(), worker).await;
    assert_eq!(stats.dead_lettered, 1);

    let reasons: Vec<String> =
        f.bus.dead_letters(topics::INGEST, 100).await.unwrap().into_iter().map(|d| d.reason).collect();
    assert_eq!(reasons.len(), 12, "{reasons:#?}");
    for expected in [
        "undecodable event: not an ingest event",
        "missing field `uid`",
        "over the limit of 1024",
        "last tuesday",
        "invalid field uid",
        "does not exist",
        "is 5 bytes, the event says 9",
        "BLAKE3 is",
        "outside the landing prefix",
        "different content",
    ] {
        assert!(reasons.iter().any(|r| r.contains(expected)), "no reason mentions {expected:?}: {reasons:#?}");
    }
    assert_eq!(reasons.iter().filter(|r| r.contains("outside the landing prefix")).count(), 2, "{reasons:#?}");
    assert_eq!(reasons.iter().filter(|r| r.contains("BLAKE3 is")).count(), 2, "{reasons:#?}");
    assert_eq!(read(&f, "ok-1", created(1)).await, body(1), "the first content stands");
}

#[tokio::test]
async fn staged_and_notified_objects_are_stored_verified_and_expired() {
    let f = fixture().await;
    let mut messages = Vec::new();
    for i in 0..20 {
        let key = format!("landing/staged/doc-{i}.pdf");
        f.store.put(&key, Bytes::from(body(i)), PutOptions::create()).await.unwrap();
        let meta = f.store.head(&key).await.unwrap();
        messages.push(envelope(FileArrived {
            uid: format!("doc-{i}"),
            created_at: created(i),
            content_type: Some("application/pdf".into()),
            blake3: None,
            sha256: Some(hex_sha256(&body(i))),
            content: FileContent::Staged { key, size: body(i).len() as u64, etag: Some(meta.etag) },
        }));
    }
    // Objects a landing bucket notifies: the uid and the day come from the key.
    for i in 0..10 {
        let key = format!("landing/scans/2026-11-2{}/scan%{i}.tif", i % 3);
        let stored_key = format!("landing/scans/2026-11-2{}/scan%{i}.tif", i % 3);
        f.store.put(&stored_key, Bytes::from(body(100 + i)), PutOptions::create()).await.unwrap();
        let encoded = key.replace('%', "%25");
        let event = serde_json::json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3",
            "eventTime": "2026-11-24T10:00:00.000Z", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "landing"}, "object": {"key": encoded, "size": body(100 + i).len()}}}]});
        messages.push(raw(event.to_string().as_bytes()));
    }
    messages.push(raw(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"landing"}"#));
    publish(&f, messages).await;
    let mut ingest = ingest_settings();
    ingest.expire_staged = true;
    ingest.landing.key_pattern = regex::Regex::new(r"scans/(?P<created_at>\d{4}-\d{2}-\d{2})/(?P<uid>[^/]+)").unwrap();
    ingest.landing.created_at = CreatedAtFrom::Key;
    let stats = drain(&f, ingest, settings()).await;
    assert_eq!(stats.dead_lettered, 0, "{:?}", f.bus.dead_letters(topics::INGEST, 10).await.unwrap());
    assert_eq!(stats.files_stored, 30);
    assert_eq!(stats.events_acked, 31);
    for i in 0..20 {
        assert_eq!(read(&f, &format!("doc-{i}"), created(i)).await, body(i));
    }
    for i in 0..10 {
        let day = at(&format!("2026-11-2{}T00:00:00Z", i % 3));
        assert_eq!(read(&f, &format!("scan%{i}.tif"), day).await, body(100 + i));
    }
    // Every landing object is gone, each with an EXPIRE audit event.
    let left: Vec<String> = f.store.list("landing/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert!(left.is_empty(), "{left:?}");
    // Audit events about one segment are ordered: claim them in turns.
    let mut expired = 0;
    loop {
        let audits = f.bus.claim(topics::AUDIT, 1000, Duration::from_secs(30)).await.unwrap();
        if audits.is_empty() {
            break;
        }
        for delivery in &audits {
            if matches!(Envelope::decode(&delivery.payload), Ok(Envelope { message: Message::AuditEvent(e), .. }) if e.action == AuditAction::Expire)
            {
                expired += 1;
            }
            f.bus.ack(delivery).await.unwrap();
        }
    }
    assert_eq!(expired, 30);
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    vera_protocol::hex::encode(&digest)
}

#[tokio::test]
async fn an_erased_file_is_not_stored_again_by_a_replay() {
    let f = fixture().await;
    let event = inline_event("subject-7", at("2026-11-24T10:00:00Z"), None, b"personal data", now());
    publish(&f, vec![event.clone()]).await;
    let stats = drain(&f, ingest_settings(), settings()).await;
    assert_eq!(stats.files_stored, 1);
    let lifecycle = vera_lifecycle::Lifecycle::new(
        ShardStore::new(Arc::clone(&f.store)),
        f.routing.clone(),
        Arc::clone(&f.bus),
        Arc::new(vera_store::SystemClock),
    );
    lifecycle
        .delete(&vera_lifecycle::DeleteRequest {
            uid: "subject-7".into(),
            created_at: at("2026-11-24T10:00:00Z"),
            reason: vera_protocol::sidecar::TombstoneReason::GdprErasure,
            request_id: "ticket-1".into(),
            operator: "dpo".into(),
        })
        .await
        .unwrap();
    // The staging copy goes the way a compaction takes it: merged without the erased
    // file, then deleted with its sidecar. Only the erasure marker is left.
    for key in segments(&f).await {
        f.store.delete(&format!("{key}.meta")).await.unwrap();
        f.store.delete(&key).await.unwrap();
    }
    let markers: Vec<String> =
        f.store.list("e").await.unwrap().into_iter().map(|m| m.key).filter(|k| k.ends_with(".erased")).collect();
    assert_eq!(markers.len(), 1);
    assert!(!markers[0].contains("subject-7"), "a marker names no uid in clear");
    publish(&f, vec![event]).await;
    let replay = drain(&f, ingest_settings(), settings()).await;
    assert_eq!(replay.erased, 1);
    assert_eq!(replay.files_stored, 0);
    assert_eq!(replay.events_acked, 1);
    assert!(segments(&f).await.is_empty(), "nothing was stored again");
}
