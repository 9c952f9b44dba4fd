//! Worker idempotency and failure handling: packing a task twice, two workers on one
//! task at once, a flaky store, and poison messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::message::{Envelope, Message, PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_source::sqlite::SqliteSource;
use vera_source::{Source, SourceMapping};
use vera_store::ObjectStore;
use vera_store::flaky::FlakyStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_worker::settings::StagingSettings;
use vera_worker::{WorkerSettings, pack_task, run_worker};

const ROWS: i64 = 600;

fn payload(id: i64) -> Vec<u8> {
    if id % 3 == 0 {
        format!("{{\"id\":{id},\"kind\":\"receipt\",\"amount\":{}}}", id * 7).into_bytes()
    } else {
        (0..(id * 37 % 5000) as usize).map(|i| (i * i % 251) as u8).collect()
    }
}

fn created_at(id: i64) -> String {
    format!("2026-11-{:02}T10:00:00Z", 20 + id % 3)
}

async fn source(dir: &std::path::Path) -> Arc<dyn Source> {
    source_of(dir, ROWS, created_at).await
}

/// A demo source of rows 1..=`rows`, uid `u{id:05}`, created at `created_at(id)`.
async fn source_of(dir: &std::path::Path, rows: i64, created_at: fn(i64) -> String) -> Arc<dyn Source> {
    let path = dir.join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=rows {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, NULL, ?)")
            .bind(id)
            .bind(format!("u{id:05}"))
            .bind(created_at(id))
            .bind(payload(id))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    Arc::new(SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap())
}

fn task() -> PackTask {
    slot_task(0, ROWS)
}

/// The task for the slot of rows `after`+1..=`up_to`.
fn slot_task(after: i64, up_to: i64) -> PackTask {
    PackTask {
        task_id: format!("demo:{after}-{up_to}"),
        source: "demo".into(),
        slot: Slot::by_watermark(after, up_to, (up_to - after) as u64, 0),
        routing: routing(),
    }
}

fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(1).unwrap())
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        retention: None,
        visibility_timeout_seconds: 5,
        retry_delay_seconds: 0,
        // These tests are about generations; staging has its own (compact/tests).
        staging: StagingSettings { direct_min_files: 0, ..StagingSettings::default() },
        ..WorkerSettings::default()
    }
}

/// uid → number of segments holding it, plus all object bytes by key.
async fn inventory(store: &LocalStore) -> (HashMap<String, usize>, HashMap<String, Bytes>) {
    let shards = ShardStore::new(Arc::new(store.clone()));
    let (mut uids, mut objects) = (HashMap::new(), HashMap::new());
    for meta in store.list("e1/").await.unwrap() {
        for file in shards.index(&meta.key).await.unwrap().files() {
            *uids.entry(file.uid.to_owned()).or_default() += 1;
        }
        objects.insert(meta.key.clone(), store.get(&meta.key).await.unwrap().body);
    }
    (uids, objects)
}

async fn assert_every_row_reads_back(store: &LocalStore) {
    let shards = ShardStore::new(Arc::new(store.clone()));
    for id in 1..=ROWS {
        let read = shards
            .read_file(&routing(), &format!("u{id:05}"), Timestamp::parse(&created_at(id)).unwrap())
            .await
            .unwrap();
        assert_eq!(read.bytes, payload(id), "u{id:05}");
    }
}

#[tokio::test]
async fn packing_a_task_twice_writes_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let shards = ShardStore::new(Arc::new(store.clone()));
    let first = pack_task(&task(), source.as_ref(), &shards, &settings()).await.unwrap();
    assert_eq!(first.packed_files, ROWS as u64);
    assert_eq!(first.segments.len(), 6, "3 days x 2 buckets");
    let (uids, objects) = inventory(&store).await;
    let second =
        pack_task(&task(), source.as_ref(), &ShardStore::new(Arc::new(store.clone())), &settings()).await.unwrap();
    assert_eq!((second.packed_files, second.already_stored), (0, ROWS as u64));
    assert!(second.segments.iter().all(|s| !s.written_now));
    let (uids_after, objects_after) = inventory(&store).await;
    assert_eq!(uids_after, uids);
    assert_eq!(objects_after, objects, "a second run must leave the store byte-identical");
    assert!(uids.values().all(|&n| n == 1));
    assert_every_row_reads_back(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_the_same_task_at_once_store_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let (task, settings_a, settings_b) = (task(), settings(), settings());
    let (shards_a, shards_b) = (ShardStore::new(Arc::new(store.clone())), ShardStore::new(Arc::new(store.clone())));
    let (a, b) = tokio::join!(
        pack_task(&task, source.as_ref(), &shards_a, &settings_a),
        pack_task(&task, source.as_ref(), &shards_b, &settings_b),
    );
    // One of them may lose a race and ask for a retry; a retry must then converge.
    let retried = match (a, b) {
        (Ok(_), Ok(_)) => false,
        _ => {
            pack_task(&task, source.as_ref(), &ShardStore::new(Arc::new(store.clone())), &settings()).await.unwrap();
            true
        }
    };
    eprintln!("retried: {retried}");
    let (uids, _) = inventory(&store).await;
    assert_eq!(uids.len(), ROWS as usize);
    assert!(uids.values().all(|&n| n == 1), "a file stored twice");
    assert_every_row_reads_back(&store).await;
}

#[tokio::test]
async fn a_flaky_store_only_delays_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let seed: u64 = std::env::var("VERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("flaky worker seed: {seed}");
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 200, "never converged");
        let flaky: Arc<dyn ObjectStore> = Arc::new(FlakyStore::new(store.clone(), seed.wrapping_add(attempts), 0.1));
        if pack_task(&task(), source.as_ref(), &ShardStore::new(flaky), &settings()).await.is_ok() {
            break;
        }
    }
    let (uids, _) = inventory(&store).await;
    assert_eq!(uids.len(), ROWS as usize);
    assert!(uids.values().all(|&n| n == 1));
    assert_every_row_reads_back(&store).await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_good_ones_acked_with_events() {
    // The only test in this binary that runs the claim loop, so the counters below are
    // this test's own.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().unwrap();
    vera_worker::metrics::describe();
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 3).await.unwrap());
    let now = Timestamp::parse("2026-11-24T10:00:00Z").unwrap();
    let mut wrong_source = task();
    wrong_source.source = "other".into();
    wrong_source.task_id = "other:0-600".into();
    let messages = vec![
        Bytes::from_static(b"not json at all"),
        Bytes::from(Envelope::new("m-wrong", now, Message::PackTask(wrong_source)).encode()),
        Bytes::from(Envelope::new("m-good", now, Message::PackTask(task())).encode()),
    ];
    bus.publish(topics::PACK, messages.into_iter().map(|payload| Outgoing { key: None, payload }).collect())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_worker(
        "w-test",
        bus.clone() as Arc<dyn Bus>,
        source,
        ShardStore::new(Arc::new(store.clone())),
        settings(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depth = bus.depth(topics::PACK).await.unwrap();
        if depth.visible == 0 && depth.in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue never drained: {depth:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let stats = worker.await.unwrap();
    assert_eq!((stats.tasks_done, stats.dead_lettered), (1, 2));
    let dead = bus.dead_letters(topics::PACK, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| d.reason.contains("undecodable")));
    assert!(dead.iter().any(|d| d.reason.contains("never succeed")));
    // ShardSealed per segment on the events topic, keyed by address; PACK audit events.
    let events = bus.claim(topics::EVENTS, 100, Duration::from_secs(60)).await.unwrap();
    let audits = bus.claim(topics::AUDIT, 100, Duration::from_secs(60)).await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(audits.len(), 6);
    // The promised metrics are emitted, with the values that happened.
    vera_worker::metrics::sample_queue_depth(bus.as_ref(), &[topics::PACK]).await;
    let rendered = metrics.render();
    for line in [
        "vera_tasks_total{outcome=\"packed\"} 1",
        "vera_tasks_total{outcome=\"dead_lettered\"} 2",
        &format!("vera_files_packed_total {ROWS}"),
        "vera_segments_written_total 6",
        "vera_queue_depth{topic=\"pack\",state=\"dead\"} 2",
        "vera_queue_depth{topic=\"pack\",state=\"visible\"} 0",
    ] {
        assert!(rendered.lines().any(|l| l == line), "missing metric line {line:?} in:\n{rendered}");
    }
    for event in &events {
        let envelope = Envelope::decode(&event.payload).unwrap();
        let Message::ShardSealed(sealed) = envelope.message else { panic!("not ShardSealed") };
        assert_eq!(event.key.as_deref(), Some(sealed.addr.key_prefix().as_str()));
        assert!(store.head(&sealed.key).await.is_ok(), "event names a segment that exists");
    }
}

/// A store whose listings are empty: a worker using it believes every shard address is
/// fresh, as it would when another worker sealed generation 0 a moment after it looked.
struct BlindLister(LocalStore);

#[async_trait::async_trait]
impl ObjectStore for BlindLister {
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: vera_store::PutOptions,
    ) -> Result<vera_store::PutOutcome, vera_store::StoreError> {
        self.0.put(key, body, options).await
    }
    async fn get(&self, key: &str) -> Result<vera_store::GetOutcome, vera_store::StoreError> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, vera_store::StoreError> {
        self.0.get_range(key, range).await
    }
    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), vera_store::StoreError> {
        self.0.get_suffix(key, len).await
    }
    async fn head(&self, key: &str) -> Result<vera_store::ObjectMeta, vera_store::StoreError> {
        self.0.head(key).await
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<vera_store::ObjectMeta>, vera_store::StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, key: &str) -> Result<(), vera_store::StoreError> {
        self.0.delete(key).await
    }
    async fn set_retention(&self, key: &str, retention: vera_store::Retention) -> Result<(), vera_store::StoreError> {
        self.0.set_retention(key, retention).await
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), vera_store::StoreError> {
        self.0.set_legal_hold(key, on).await
    }
    async fn set_tags(
        &self,
        key: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), vera_store::StoreError> {
        self.0.set_tags(key, tags).await
    }
    async fn tags(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, vera_store::StoreError> {
        self.0.tags(key).await
    }
}

#[tokio::test]
async fn a_generation_taken_meanwhile_moves_the_segment_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let first = pack_task(&slot_task(0, 300), source.as_ref(), &ShardStore::new(Arc::new(store.clone())), &settings())
        .await
        .unwrap();
    assert!(first.segments.iter().all(|s| s.generation == 0));
    let blind = ShardStore::new(Arc::new(BlindLister(store.clone())));
    let second = pack_task(&slot_task(300, ROWS), source.as_ref(), &blind, &settings()).await.unwrap();
    assert_eq!(second.packed_files, 300);
    let shared: Vec<_> = second.segments.iter().filter(|s| first.segments.iter().any(|f| f.addr == s.addr)).collect();
    assert!(!shared.is_empty(), "the halves share shard addresses");
    for segment in &shared {
        assert_eq!(segment.generation, 1, "{} lost generation 0 and took 1", segment.key);
        let bytes = store.get(&segment.key).await.unwrap().body;
        assert_eq!(*blake3::hash(&bytes).as_bytes(), segment.object_hash, "the reported hash is the patched object's");
        let report = vera_protocol::shard::verify_segment(
            &mut std::io::Cursor::new(&bytes[..]),
            bytes.len() as u64,
            &vera_protocol::shard::ReadLimits::default(),
        )
        .expect("the patched segment verifies");
        assert_eq!((report.files, report.header.generation), (segment.files, 1));
    }
    let (uids, _) = inventory(&store).await;
    assert_eq!(uids.len(), ROWS as usize);
    assert!(uids.values().all(|&n| n == 1));
    assert_every_row_reads_back(&store).await;
}

/// Day 20 or 21 for row `id` of [`late_source`]: rows 1..=200 are day 20's own; rows
/// 201..=400 are day 21's, with every 20th one a late arrival of day 20 (10 rows, under a
/// tenth of their slot).
fn late_day(id: i64) -> u32 {
    if id <= 200 || id % 20 == 0 { 20 } else { 21 }
}

fn late_created_at(id: i64) -> String {
    format!("2026-11-{}T10:{:02}:00Z", late_day(id), id % 60)
}

async fn late_source(dir: &std::path::Path) -> Arc<dyn Source> {
    source_of(dir, 400, late_created_at).await
}

/// The race a late arrivals' segment used to win: the task holding a day's late arrivals
/// seals before the task holding that day's own rows. The late arrivals take generation 1
/// and leave generation 0 to the day's bulk, so a cold read of a bulk file probes one
/// segment, and one of a late arrival the missing generation 0 and its own.
#[tokio::test]
async fn late_arrivals_sealed_first_leave_generation_0_to_their_days_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let source = late_source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let shards = ShardStore::new(Arc::new(store.clone()));
    let next_day = pack_task(&slot_task(200, 400), source.as_ref(), &shards, &settings()).await.unwrap();
    let day_20 = |s: &&vera_worker::SealedInfo| s.key.contains("d2026-11-20");
    let late: Vec<_> = next_day.segments.iter().filter(day_20).collect();
    assert!(!late.is_empty() && late.iter().all(|s| s.generation == 1), "late arrivals take generation 1: {late:?}");
    assert!(next_day.segments.iter().filter(|s| !day_20(s)).all(|s| s.generation == 0), "day 21's own rows take 0");
    let own_day = pack_task(&slot_task(0, 200), source.as_ref(), &shards, &settings()).await.unwrap();
    assert_eq!(own_day.packed_files, 200);
    assert!(own_day.segments.iter().all(|s| s.generation == 0), "the day's own rows take the free generation 0");

    // Every file reads back; a cold read costs one probe for the bulk and two for a late one.
    let counting = vera_store::counting::CountingStore::new(store.clone());
    let counts = counting.counts();
    let counting: Arc<dyn ObjectStore> = Arc::new(counting);
    for id in 1..=400i64 {
        let cold = ShardStore::new(counting.clone());
        let before = counts.snapshot();
        let created_at = Timestamp::parse(&late_created_at(id)).unwrap();
        let read = cold.read_file(&routing(), &format!("u{id:05}"), created_at).await.unwrap();
        assert_eq!(read.bytes, payload(id), "u{id:05}");
        let gets = counts.snapshot().gets - before.gets;
        assert!(gets <= 2, "u{id:05} took {gets} GETs cold");
    }
    // Packing both again writes nothing.
    for (after, up_to) in [(0, 200), (200, 400)] {
        let again = pack_task(&slot_task(after, up_to), source.as_ref(), &shards, &settings()).await.unwrap();
        assert_eq!(again.packed_files, 0);
    }
}

/// Both slots, each delivered twice, all four at once: every file is stored once, and
/// generation 0 of day 20 holds that day's own rows and nothing else, whatever order the
/// four seal in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_delivered_twice_at_once_keep_generation_0_for_the_days_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let source = late_source(dir.path()).await;
    let store = LocalStore::open(dir.path().join("store")).unwrap();
    let (own, next) = (slot_task(0, 200), slot_task(200, 400));
    let shards: Vec<ShardStore> = (0..4).map(|_| ShardStore::new(Arc::new(store.clone()))).collect();
    let settings = settings();
    let results = tokio::join!(
        pack_task(&next, source.as_ref(), &shards[0], &settings),
        pack_task(&own, source.as_ref(), &shards[1], &settings),
        pack_task(&next, source.as_ref(), &shards[2], &settings),
        pack_task(&own, source.as_ref(), &shards[3], &settings),
    );
    // A delivery that lost a race asks for a retry; the retry must converge.
    for (result, task) in [(results.0, &next), (results.1, &own), (results.2, &next), (results.3, &own)] {
        if result.is_err() {
            pack_task(task, source.as_ref(), &ShardStore::new(Arc::new(store.clone())), &settings).await.unwrap();
        }
    }
    let (uids, _) = inventory(&store).await;
    assert_eq!(uids.len(), 400);
    assert!(uids.values().all(|&n| n == 1), "a file stored twice");
    let shards = ShardStore::new(Arc::new(store.clone()));
    for meta in store.list("e1/d2026-11-20/").await.unwrap() {
        let (_, generation) = vera_protocol::routing::ShardAddr::from_segment_key(&meta.key).unwrap();
        let index = shards.index(&meta.key).await.unwrap();
        let own_rows = index.files().filter(|f| f.uid[1..].parse::<i64>().unwrap() <= 200).count();
        match generation {
            0 => assert_eq!(own_rows, index.len(), "{} holds only the day's own rows", meta.key),
            _ => assert_eq!(own_rows, 0, "{} holds only late arrivals", meta.key),
        }
    }
    for id in 1..=400i64 {
        let created_at = Timestamp::parse(&late_created_at(id)).unwrap();
        assert_eq!(shards.read_file(&routing(), &format!("u{id:05}"), created_at).await.unwrap().bytes, payload(id));
    }
}
