//! The producer resumes after a crash with no gap and no duplicate slot, survives a
//! flaky store, and two producers racing on one watermark do not corrupt it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, topics};
use vera_producer::{ProducerSettings, RunMode, WatermarkStore, run_producer};
use vera_protocol::message::{Envelope, Message, PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_source::sqlite::SqliteSource;
use vera_source::{Source, SourceMapping};
use vera_store::flaky::FlakyStore;
use vera_store::local::LocalStore;
use vera_store::{ObjectStore, PutOptions};

const ROWS: i64 = 1000;

async fn source(dir: &std::path::Path) -> Arc<dyn Source> {
    let path = dir.join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO files VALUES (?, ?, '2026-11-24T10:00:00Z', NULL, ?)")
            .bind(id * 3) // gaps in the watermark are normal
            .bind(format!("u{id}"))
            .bind(vec![b'x'; 100])
            .execute(&mut connection)
            .await
            .unwrap();
    }
    Arc::new(SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap())
}

fn settings() -> ProducerSettings {
    ProducerSettings {
        max_rows_per_slot: 64,
        max_bytes_per_slot: 1 << 30,
        start_after: 0,
        poll_interval_millis: 10,
        routing: RoutingTable::single(RoutingEpoch::v1(2).unwrap()),
    }
}

/// Every task on the pack topic, decoded.
async fn published_tasks(bus: &dyn Bus) -> Vec<PackTask> {
    let mut tasks = Vec::new();
    loop {
        let batch = bus.claim(topics::PACK, 100, Duration::from_secs(600)).await.unwrap();
        if batch.is_empty() {
            return tasks;
        }
        for delivery in batch {
            match Envelope::decode(&delivery.payload).unwrap().message {
                Message::PackTask(task) => tasks.push(task),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
}

/// Distinct slots must tile (0, max] exactly: no gap, no overlap. Re-publishing the very
/// same slot (same task id) is allowed: workers are idempotent.
fn assert_tiles(tasks: &[PackTask]) {
    let mut slots: Vec<Slot> = tasks.iter().map(|t| t.slot).collect();
    slots.sort_by_key(|s| (s.after, s.up_to));
    slots.dedup();
    let mut expected_after = 0;
    for slot in &slots {
        assert_eq!(slot.after, expected_after, "gap or overlap at {slot:?} in {slots:?}");
        assert!(slot.up_to > slot.after);
        expected_after = slot.up_to;
    }
    assert_eq!(expected_after, ROWS * 3, "slots must reach the last row");
    let rows: u64 = slots.iter().map(|s| s.rows).sum();
    assert_eq!(rows, ROWS as u64);
    for task in tasks {
        assert_eq!(task.task_id, vera_producer::task_id("demo", &task.slot));
    }
}

#[tokio::test]
async fn drains_in_slots_that_tile_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let report = run_producer(
        source(dir.path()).await,
        store,
        bus.clone(),
        settings(),
        RunMode::Drain,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.slots_published, 16);
    assert_eq!(report.final_watermark, ROWS * 3);
    let tasks = published_tasks(bus.as_ref()).await;
    assert_eq!(tasks.len(), 16, "no slot published twice without a crash");
    assert_tiles(&tasks);
}

#[tokio::test]
async fn resumes_a_pending_slot_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    // A producer died after claiming slot (0, 30] but before publishing it.
    let watermarks = WatermarkStore::new(Arc::clone(&store), "demo");
    let (mut state, etag) = watermarks.load_or_create(0).await.unwrap();
    state.pending = Some(Slot::by_watermark(0, 30, 10, 1000));
    watermarks.save(&state, &etag).await.unwrap().unwrap();
    run_producer(source(dir.path()).await, store, bus.clone(), settings(), RunMode::Drain, CancellationToken::new())
        .await
        .unwrap();
    let tasks = published_tasks(bus.as_ref()).await;
    assert_eq!(tasks[0].slot, Slot::by_watermark(0, 30, 10, 1000), "the pending slot goes first, unchanged");
    assert_tiles(&tasks);
}

#[tokio::test]
async fn flaky_store_faults_never_skip_or_overlap_slots() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path().join("store")).unwrap();
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let source = source(dir.path()).await;
    let seed: u64 = std::env::var("VERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("flaky producer seed: {seed}");
    // Every run dies at the first injected fault (like a crash); the next run resumes.
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 500, "producer never finished");
        let flaky: Arc<dyn ObjectStore> = Arc::new(FlakyStore::new(local.clone(), seed.wrapping_add(runs), 0.15));
        let outcome =
            run_producer(Arc::clone(&source), flaky, bus.clone(), settings(), RunMode::Drain, CancellationToken::new())
                .await;
        if outcome.is_ok() {
            break;
        }
    }
    eprintln!("finished after {runs} runs");
    assert_tiles(&published_tasks(bus.as_ref()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_racing_do_not_corrupt_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let source = source(dir.path()).await;
    let first = tokio::spawn(run_producer(
        Arc::clone(&source),
        Arc::clone(&store),
        bus.clone(),
        settings(),
        RunMode::Drain,
        CancellationToken::new(),
    ));
    let second = tokio::spawn(run_producer(
        Arc::clone(&source),
        Arc::clone(&store),
        bus.clone(),
        settings(),
        RunMode::Drain,
        CancellationToken::new(),
    ));
    let (first, second) = (first.await.unwrap().unwrap(), second.await.unwrap().unwrap());
    eprintln!("cas conflicts: {} + {}", first.cas_conflicts, second.cas_conflicts);
    assert_tiles(&published_tasks(bus.as_ref()).await);
    let watermarks = WatermarkStore::new(Arc::clone(&store), "demo");
    let (state, _) = watermarks.load_or_create(0).await.unwrap();
    assert_eq!((state.committed, state.pending), (ROWS * 3, None));
}

#[tokio::test]
async fn a_corrupt_watermark_object_is_an_error_not_a_restart_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    store
        .put("control/watermarks/demo.json", Bytes::from_static(b"{\"committed\":"), PutOptions::create())
        .await
        .unwrap();
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 5).await.unwrap());
    let outcome = run_producer(
        source(dir.path()).await,
        store,
        bus.clone(),
        settings(),
        RunMode::Drain,
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(outcome, Err(vera_producer::ProducerError::Watermark(_))));
    assert!(published_tasks(bus.as_ref()).await.is_empty());
}
