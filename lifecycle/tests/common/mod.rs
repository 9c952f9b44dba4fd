//! Shared by the lifecycle tests: a store packed by the real worker, a bus, a reader.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use vera_bus::Bus;
use vera_bus::sqlite::SqliteBus;
use vera_lifecycle::{DeleteRequest, Lifecycle};
use vera_protocol::Timestamp;
use vera_protocol::message::{Envelope, Message, PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_protocol::sidecar::TombstoneReason;
use vera_source::SourceMapping;
use vera_source::sqlite::SqliteSource;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, SystemClock};

pub const ROWS: i64 = 120;

pub fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(1).unwrap())
}

pub fn uid(id: i64) -> String {
    format!("f{id:04}")
}

pub fn created_at(id: i64) -> Timestamp {
    Timestamp::parse(&format!("2026-11-2{}T{:02}:00:00Z", id % 2 + 1, id % 24)).unwrap()
}

pub fn payload(id: i64) -> Vec<u8> {
    format!("secret payload of file {id}: {}", "x".repeat(id as usize)).into_bytes()
}

pub struct World {
    pub _dir: tempfile::TempDir,
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<SqliteBus>,
    pub lifecycle: Lifecycle,
}

pub async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    world_on(dir, store, None).await
}

/// Packs ROWS files into `store` with the real worker.
pub async fn world_on(
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    retention: Option<vera_worker::RetentionPolicy>,
) -> World {
    let path = dir.path().join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, 'text/plain', ?)")
            .bind(id)
            .bind(uid(id))
            .bind(created_at(id).to_rfc3339())
            .bind(payload(id))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap();
    let task = PackTask {
        task_id: "demo:0-120".into(),
        source: "demo".into(),
        slot: Slot::by_watermark(0, ROWS, ROWS as u64, 0),
        routing: routing(),
    };
    // Repack works on generations; staging segments are merged by the compactor instead.
    let staging = vera_worker::settings::StagingSettings { direct_min_files: 0, ..Default::default() };
    let settings = vera_worker::WorkerSettings { retention, staging, ..vera_worker::WorkerSettings::default() };
    vera_worker::pack_task(&task, &source, &ShardStore::new(Arc::clone(&store)), &settings).await.unwrap();
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 3).await.unwrap());
    let lifecycle = Lifecycle::new(ShardStore::new(Arc::clone(&store)), routing(), bus.clone(), Arc::new(SystemClock));
    World { _dir: dir, store, bus, lifecycle }
}

pub fn request(id: i64, request_id: &str) -> DeleteRequest {
    DeleteRequest {
        uid: uid(id),
        created_at: created_at(id),
        reason: TombstoneReason::GdprErasure,
        request_id: request_id.to_owned(),
        operator: "dpo.alice".to_owned(),
    }
}

/// Every message on `topic`, consumed (claimed and acked until a claim comes back
/// empty: keyed topics hand out one message per key at a time).
pub async fn messages(bus: &dyn Bus, topic: &str) -> Vec<(Option<String>, Message)> {
    let mut all = Vec::new();
    loop {
        let claimed = bus.claim(topic, 1000, Duration::from_secs(60)).await.unwrap();
        if claimed.is_empty() {
            return all;
        }
        for delivery in claimed {
            all.push((delivery.key.clone(), Envelope::decode(&delivery.payload).unwrap().message));
            bus.ack(&delivery).await.unwrap();
        }
    }
}

pub use vera_reader_probe::Probe;

pub mod vera_reader_probe {
    use std::sync::Arc;
    use std::time::Duration;

    use vera_store::ObjectStore;
    use vera_store::shards::ShardStore;

    use super::{created_at, routing, uid};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    pub struct Probe {
        app: axum::Router,
    }

    impl Probe {
        pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration) -> Self {
            let settings = vera_reader::ReaderSettings { sidecar_ttl: ttl, ..vera_reader::ReaderSettings::default() };
            let reader = vera_reader::Reader::new(ShardStore::new(store), routing(), None, settings);
            Probe { app: vera_reader::router(Arc::new(reader), None) }
        }

        pub async fn status(&self, id: i64) -> u16 {
            let uri = format!("/v1/files/{}?created_at={}", uid(id), created_at(id).to_rfc3339());
            let response = self.app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
            response.status().as_u16()
        }
    }
}

/// A new lifecycle over `store` on `world`'s bus (for stores that fail on purpose).
pub fn lifecycle_on(world: &World, store: Arc<dyn ObjectStore>) -> Lifecycle {
    Lifecycle::new(ShardStore::new(store), routing(), world.bus.clone(), Arc::new(SystemClock))
}

/// The files packed into the same segment as `uid(2)`, largest first.
pub fn same_segment_as_2() -> Vec<i64> {
    let addr = routing().locate(&uid(2), created_at(2)).unwrap();
    let mut same: Vec<i64> =
        (1..=ROWS).filter(|id| routing().locate(&uid(*id), created_at(*id)).unwrap() == addr).collect();
    same.sort_by_key(|id| std::cmp::Reverse(*id));
    same
}

/// A fresh bucket with Object Lock on the moto server (`VERA_TEST_S3_ENDPOINT`).
pub async fn s3_bucket(name: &str) -> vera_store_s3::S3Store {
    use vera_store_s3::{BucketSetup, S3Settings, S3Store, ensure_bucket};
    let endpoint = std::env::var("VERA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let bucket = format!("{name}-{:08x}", rand::random::<u32>());
    let settings = S3Settings { endpoint: Some(endpoint), force_path_style: true, ..S3Settings::new(&bucket) };
    let s3 = S3Store::with_static_credentials(&settings, "test", "test");
    ensure_bucket(&s3, BucketSetup { default_retention: None, allow_without_object_lock: false }).await.unwrap();
    s3
}

/// Segments locked COMPLIANCE for 30 days past their day.
pub fn thirty_days() -> Option<vera_worker::RetentionPolicy> {
    Some(vera_worker::RetentionPolicy { mode: vera_store::LockMode::Compliance, retain_days: 30 })
}
