//! HTTP ingest end to end: PUT through the router, an ingest worker packs the events, GET
//! returns the bytes; plus every refusal with its status.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, topics};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_reader::ingest::HttpIngest;
use vera_reader::{Reader, ReaderSettings, router};
use vera_store::ObjectStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_worker::WorkerSettings;
use vera_worker::ingest::{IngestSettings, IngestWorker};

const AT: &str = "2026-11-24T10:00:00Z";

struct Setup {
    _dir: tempfile::TempDir,
    app: axum::Router,
    bus: Arc<dyn Bus>,
    store: Arc<dyn ObjectStore>,
    routing: RoutingTable,
}

async fn setup(max_message_bytes_hint: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let routing = RoutingTable::single(RoutingEpoch::v1(1).unwrap());
    let settings = ReaderSettings { sidecar_ttl: Duration::from_millis(1), ..ReaderSettings::default() };
    let reader =
        Reader::new(ShardStore::new(Arc::clone(&store)), routing.clone(), None, settings).with_ingest(HttpIngest {
            bus: Arc::clone(&bus),
            landing: Arc::clone(&store),
            landing_prefix: "landing/".into(),
            max_file_bytes: max_message_bytes_hint,
        });
    Setup { _dir: dir, app: router(Arc::new(reader), None), bus, store, routing }
}

async fn put(
    app: &axum::Router,
    uid: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::put(format!("/v1/files/{uid}?created_at={AT}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

async fn get(app: &axum::Router, uid: &str) -> (StatusCode, Vec<u8>) {
    let request = Request::get(format!("/v1/files/{uid}?created_at={AT}")).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    (status, axum::body::to_bytes(response.into_body(), 8 << 20).await.unwrap().to_vec())
}

async fn pack(s: &Setup) {
    let runner = IngestWorker {
        worker_id: "ingest-http".into(),
        bus: Arc::clone(&s.bus),
        shards: ShardStore::new(Arc::clone(&s.store)),
        landing: Arc::clone(&s.store),
        routing: s.routing.clone(),
        settings: Arc::new(WorkerSettings { retention: None, max_file_bytes: 4 << 20, ..WorkerSettings::default() }),
        ingest: IngestSettings { linger: Duration::from_millis(100), ..IngestSettings::default() },
    };
    let shutdown = CancellationToken::new();
    let (bus, token) = (Arc::clone(&s.bus), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let depth = bus.depth(topics::INGEST).await.unwrap();
            if depth.visible == 0 && depth.in_flight == 0 {
                token.cancel();
                return;
            }
        }
    });
    let stats = runner.run(shutdown).await;
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test]
async fn a_put_file_is_readable_after_the_ingest_worker_packs_it() {
    let s = setup(4 << 20).await;
    let small = b"%PDF-1.7 small receipt".to_vec();
    // Over the embedded bus's 1 MiB message limit once base64'd: staged in the landing store.
    let large: Vec<u8> = (0..1_200_000u32).map(|i| (i % 251) as u8).collect();
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5_of(&small));
    let (status, body) =
        put(&s.app, "rcpt-1", small.clone(), &[("content-type", "application/pdf".into()), ("content-md5", md5)]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "queued_inline");
    let (status, body) = put(&s.app, "scan-9", large.clone(), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "queued_staged");
    // Not packed yet: a read is a 404, not an error.
    assert_eq!(get(&s.app, "rcpt-1").await.0, StatusCode::NOT_FOUND);

    pack(&s).await;
    assert_eq!(get(&s.app, "rcpt-1").await, (StatusCode::OK, small.clone()));
    assert_eq!(get(&s.app, "scan-9").await, (StatusCode::OK, large));

    // Create-if-absent: the same bytes again are a 200 that publishes nothing, other bytes
    // a 409, and If-None-Match: * refuses any existing file.
    let (status, body) = put(&s.app, "rcpt-1", small.clone(), &[]).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("stored")));
    assert_eq!(put(&s.app, "rcpt-1", b"other".to_vec(), &[]).await.0, StatusCode::CONFLICT);
    assert_eq!(put(&s.app, "rcpt-1", small, &[("if-none-match", "*".into())]).await.0, StatusCode::PRECONDITION_FAILED);
    assert_eq!(s.bus.depth(topics::INGEST).await.unwrap().visible, 0);
}

fn md5_of(bytes: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(bytes).to_vec()
}

#[tokio::test]
async fn bad_uploads_get_their_own_status() {
    let s = setup(1024).await;
    let (status, body) = put(&s.app, "big", vec![0; 2048], &[]).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")));
    let (status, body) =
        put(&s.app, "md5", b"abc".to_vec(), &[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==".into())]).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_digest")));
    let wrong = blake3::hash(b"xyz").to_hex().to_string();
    let (status, body) = put(&s.app, "b3", b"abc".to_vec(), &[("x-vera-blake3", wrong)]).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_digest")));
    let request = Request::put("/v1/files/x?created_at=yesterday").body(Body::from("a")).unwrap();
    assert_eq!(s.app.clone().oneshot(request).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let request = Request::put("/v1/files/x").body(Body::from("a")).unwrap();
    assert_eq!(s.app.clone().oneshot(request).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let request = Request::put(format!("/v1/files/a%07b?created_at={AT}")).body(Body::from("a")).unwrap();
    assert_eq!(s.app.clone().oneshot(request).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.bus.depth(topics::INGEST).await.unwrap().visible, 0, "nothing bad reached the bus");

    // A reader without --ingest refuses uploads.
    let reader = Reader::new(ShardStore::new(Arc::clone(&s.store)), s.routing.clone(), None, ReaderSettings::default());
    let app = router(Arc::new(reader), None);
    let request = Request::put(format!("/v1/files/x?created_at={AT}")).body(Body::from("a")).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
}
