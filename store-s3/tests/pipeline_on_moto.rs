//! The embedded pipeline's worker, unchanged, packing into S3 (moto) with Object Lock,
//! then every file read back through the two-call read path; a second delivery of the
//! same task writes nothing.

use std::sync::Arc;

use vera_protocol::Timestamp;
use vera_protocol::message::{PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_source::SourceMapping;
use vera_source::sqlite::{SqliteSource, create_demo_database};
use vera_store::shards::ShardStore;
use vera_store::{LockMode, ObjectStore, StoreErrorKind};
use vera_store_s3::{BucketSetup, S3Settings, S3Store, ensure_bucket};
use vera_worker::{RetentionPolicy, WorkerSettings, pack_task};

const ROWS: i64 = 400;

fn payload(id: i64) -> Vec<u8> {
    format!("{{\"receipt\":{id},\"amount\":{},\"currency\":\"EUR\"}}", id * 13)
        .repeat((id % 7 + 1) as usize)
        .into_bytes()
}

fn created_at(id: i64) -> String {
    format!("2026-11-{:02}T08:00:00Z", 22 + id % 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_packs_into_s3_with_object_lock_and_every_file_reads_back() {
    let endpoint = std::env::var("VERA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let bucket = format!("vera-pipeline-{:08x}", rand::random::<u32>());
    let s3 = S3Store::with_static_credentials(
        &S3Settings { endpoint: Some(endpoint), force_path_style: true, ..S3Settings::new(&bucket) },
        "test",
        "test",
    );
    ensure_bucket(&s3, BucketSetup { default_retention: None, allow_without_object_lock: false }).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.sqlite");
    let mut connection = create_demo_database(&path).await.unwrap();
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, 'application/json', ?)")
            .bind(id)
            .bind(format!("r{id:05}"))
            .bind(created_at(id))
            .bind(payload(id))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap();
    let routing = RoutingTable::single(RoutingEpoch::v1(1).unwrap());
    let task = PackTask {
        task_id: format!("demo:0-{ROWS}"),
        source: "demo".into(),
        slot: Slot::by_watermark(0, ROWS, ROWS as u64, 0),
        routing: routing.clone(),
    };
    let settings = WorkerSettings {
        // Retention runs from the end of each segment's day; 30 days keeps these locked now.
        retention: Some(RetentionPolicy { mode: LockMode::Compliance, retain_days: 30 }),
        ..WorkerSettings::default()
    };
    let store: Arc<dyn ObjectStore> = Arc::new(s3.clone());
    let report = pack_task(&task, &source, &ShardStore::new(Arc::clone(&store)), &settings).await.unwrap();
    assert_eq!(report.packed_files, ROWS as u64);
    assert_eq!(report.segments.len(), 4, "2 days x 2 buckets");
    for segment in &report.segments {
        assert!(segment.version_id.is_some(), "version ids are recorded for the audit trail");
        let head = store.head(&segment.key).await.unwrap();
        assert_eq!(head.retention.map(|r| r.mode), Some(LockMode::Compliance));
        assert_eq!(store.delete(&segment.key).await.unwrap_err().kind, StoreErrorKind::Locked);
    }

    let shards = ShardStore::new(Arc::clone(&store));
    for id in 1..=ROWS {
        let read =
            shards.read_file(&routing, &format!("r{id:05}"), Timestamp::parse(&created_at(id)).unwrap()).await.unwrap();
        assert_eq!(read.bytes, payload(id));
        assert_eq!(read.content_type, "application/json");
    }

    let again = pack_task(&task, &source, &ShardStore::new(Arc::clone(&store)), &settings).await.unwrap();
    assert_eq!((again.packed_files, again.already_stored), (0, ROWS as u64));
    assert!(again.segments.iter().all(|s| !s.written_now));
}
