//! `--ingest`: files pushed as inline `file_arrived` events, through a bus, into ingest
//! workers, into the local WORM store. Reports files per minute from the first publish to
//! the last ack, segment PUTs per 1,000 files, and publish-to-durable latency (from each
//! event's `sent_at` to its ack, after its file's segment is durable), and checks that
//! every file is stored exactly once with its bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_store::ObjectStore;
use vera_store::counting::CountingStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_worker::WorkerSettings;
use vera_worker::ingest::{IngestSettings, IngestStats, IngestWorker, inline_event};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub files: u64,
    pub workers: usize,
    pub linger_millis: u64,
    pub seed: u64,
    /// `None`: the embedded bus; else `amqp://…` or `kafka://HOST:PORT`.
    pub bus: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub bus: String,
    pub files: u64,
    pub raw_bytes: u64,
    pub workers: usize,
    pub linger_ms: u64,
    pub publish_seconds: f64,
    pub wall_seconds: f64,
    pub files_per_minute: f64,
    pub segment_puts: u64,
    pub puts_per_1000_files: f64,
    pub final_segments: u64,
    pub staging_segments: u64,
    pub publish_to_durable_p50_ms: u64,
    pub publish_to_durable_p99_ms: u64,
    pub publish_to_durable_max_ms: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub dead_lettered: u64,
}

impl IngestReport {
    pub fn markdown_header() -> &'static str {
        "| bus | files | workers | linger | files/min | PUTs per 1,000 files | publish→durable p50 / p99 / max | lost | dup |\n|---|---:|---:|---:|---:|---:|---|---:|---:|"
    }

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {} ms | {:.0} | {:.2} | {:.1} s / {:.1} s / {:.1} s | {} | {} |",
            self.bus,
            self.files,
            self.workers,
            self.linger_ms,
            self.files_per_minute,
            self.puts_per_1000_files,
            self.publish_to_durable_p50_ms as f64 / 1e3,
            self.publish_to_durable_p99_ms as f64 / 1e3,
            self.publish_to_durable_max_ms as f64 / 1e3,
            self.lost,
            self.duplicated
        )
    }
}

async fn open_bus(options: &IngestOptions, work: &Path) -> anyhow::Result<(String, Arc<dyn Bus>)> {
    let run = format!("{:08x}", rand::random::<u32>());
    Ok(match options.bus.as_deref() {
        None => ("embedded".into(), Arc::new(vera_bus::sqlite::SqliteBus::open(work.join("bus.sqlite"), 5).await?)),
        Some(uri) if uri.starts_with("amqp") => {
            let settings = vera_bus_amqp::AmqpSettings {
                prefix: format!("vera-bench-{run}."),
                prefetch: 60_000,
                ..vera_bus_amqp::AmqpSettings::new(uri)
            };
            ("rabbitmq".into(), Arc::new(vera_bus_amqp::AmqpBus::connect(settings).await?))
        }
        Some(uri) if uri.starts_with("kafka://") => {
            let settings = vera_bus_kafka::KafkaSettings {
                prefix: format!("vera-bench-{run}."),
                group: format!("vera-bench-{run}"),
                partitions: 4,
                ..vera_bus_kafka::KafkaSettings::new(uri.trim_start_matches("kafka://"))
            };
            ("kafka".into(), Arc::new(vera_bus_kafka::KafkaBus::connect(settings).await?))
        }
        Some(other) => anyhow::bail!("--ingest-bus {other}: give amqp://… or kafka://HOST:PORT"),
    })
}

pub async fn run(options: &IngestOptions, work: &Path) -> anyhow::Result<IngestReport> {
    std::fs::create_dir_all(work)?;
    let (bus_name, bus) = open_bus(options, work).await?;
    bus.ensure_topics(&topics::ALL).await?;
    let counting = CountingStore::new(Arc::new(LocalStore::open(work.join("store"))?) as Arc<dyn ObjectStore>);
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = Arc::new(counting);
    let routing = RoutingTable::single(RoutingEpoch::v1(2)?);

    // The files: the demo mix, all created today (a live stream), uids unique.
    let mix = vera_source::corpus::CorpusSpec::default().mix;
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let today = vera_store::Clock::now(&vera_store::SystemClock);
    let mut expected: HashMap<String, [u8; 32]> = HashMap::with_capacity(options.files as usize);
    let mut raw_bytes = 0;
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(500);
    for id in 0..options.files {
        let (bytes, content_type) = vera_source::corpus::sample_file(&mut rng, &mix, id);
        let uid = format!("push-{id:09}");
        raw_bytes += bytes.len() as u64;
        expected.insert(uid.clone(), *blake3::hash(&bytes).as_bytes());
        batch.push((uid, content_type, bytes));
        if batch.len() == 500 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }

    let settings = Arc::new(WorkerSettings { retention: None, ..WorkerSettings::default() });
    let ingest = IngestSettings { linger: Duration::from_millis(options.linger_millis), ..IngestSettings::default() };
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for n in 0..options.workers {
        let worker = IngestWorker {
            worker_id: format!("bench-{n}"),
            bus: Arc::clone(&bus),
            shards: ShardStore::new(Arc::clone(&store)),
            landing: Arc::clone(&store),
            routing: routing.clone(),
            settings: Arc::clone(&settings),
            ingest: ingest.clone(),
        };
        let token = shutdown.clone();
        handles.push(tokio::spawn(async move { worker.run(token).await }));
    }
    let started = Instant::now();
    for batch in batches {
        let now = vera_store::Clock::now(&vera_store::SystemClock);
        let events = batch
            .into_iter()
            .map(|(uid, content_type, bytes)| inline_event(&uid, today, Some(content_type), &bytes, now))
            .collect();
        bus.publish(topics::INGEST, events).await?;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    // Done when every event is acked: the queue has been empty for a few polls.
    let mut quiet = 0;
    while quiet < 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let depth = bus.depth(topics::INGEST).await?;
        if depth.visible == 0 && depth.in_flight == 0 { quiet += 1 } else { quiet = 0 }
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let mut stats = IngestStats::default();
    for handle in handles {
        let worker = handle.await?;
        stats.dead_lettered += worker.dead_lettered;
        stats.publish_to_durable_ms.extend(worker.publish_to_durable_ms);
    }
    bus.close().await?;
    let puts = counts.snapshot().puts;

    // Every file once, with its bytes.
    let shards = ShardStore::new(Arc::clone(&store));
    let mut found: HashMap<String, u32> = HashMap::new();
    let (mut finals, mut staging) = (0, 0);
    for meta in store.list("e").await? {
        if !meta.key.ends_with(".vera") {
            continue;
        }
        if vera_protocol::routing::ShardAddr::from_staging_key(&meta.key).is_ok() {
            staging += 1
        } else {
            finals += 1
        }
        for file in shards.index(&meta.key).await?.files() {
            if expected.get(file.uid) != Some(&file.entry.content_hash) {
                anyhow::bail!("{} in {} has a hash that was not published", file.uid, meta.key);
            }
            *found.entry(file.uid.to_owned()).or_default() += 1;
        }
    }
    let lost = expected.keys().filter(|uid| !found.contains_key(*uid)).count() as u64;
    let duplicated = found.values().filter(|n| **n > 1).count() as u64;
    let mut latency = stats.publish_to_durable_ms;
    latency.sort_unstable();
    let percentile = |p: f64| {
        latency.get(((latency.len() as f64 * p) as usize).min(latency.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    Ok(IngestReport {
        bus: bus_name,
        files: options.files,
        raw_bytes,
        workers: options.workers,
        linger_ms: options.linger_millis,
        publish_seconds,
        wall_seconds,
        files_per_minute: options.files as f64 / wall_seconds * 60.0,
        segment_puts: puts,
        puts_per_1000_files: puts as f64 * 1000.0 / options.files.max(1) as f64,
        final_segments: finals,
        staging_segments: staging,
        publish_to_durable_p50_ms: percentile(0.50),
        publish_to_durable_p99_ms: percentile(0.99),
        publish_to_durable_max_ms: latency.last().copied().unwrap_or(0),
        lost,
        duplicated,
        dead_lettered: stats.dead_lettered,
    })
}
