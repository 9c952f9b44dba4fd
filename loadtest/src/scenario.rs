//! `loadtest --scenario`: one arrival pattern through the real pipeline on the embedded
//! default (SQLite source, producer, embedded bus, pack workers, compactor, local WORM
//! store), and what the layout looks like once its time slices have closed.
//!
//! Rows are inserted into the source when they "arrive". A pattern spans simulated time
//! (a day of stream, ten years of backfill) that runs compressed: `speed` simulated
//! seconds pass per wall second, and `created_at` and the compactor's clock follow the
//! simulated time, while the producer, workers and pack lag run in wall time. Bulk
//! patterns insert everything first and drain. At the end one compaction pass runs as
//! if the allowed lateness had passed, then the figures are taken from the store.
//!
//! `--scenario-s3-endpoint` and `--scenario-amqp` run it on a real S3 server and
//! RabbitMQ instead.
//!
//! Pack lag is measured per file: from its row's insert to the first time a LIST (every
//! 200 ms) shows a segment holding it (staging or final), so durable and readable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, topics};
use vera_compact::{CompactSettings, Compactor};
use vera_producer::plan::{Histogram, PlanTargets};
use vera_producer::{ProducerSettings, RunMode, run_producer};
use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_source::corpus::{Kind, sample_file};
use vera_source::sqlite::SqliteSource;
use vera_source::{Source, SourceMapping};
use vera_store::counting::CountingStore;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ManualClock, ObjectStore};
use vera_worker::{WorkerSettings, run_worker};

use crate::layout::ColdCosts;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// 2026-01-01T00:00:00Z: simulated time starts here (sparse backfill: ten years earlier).
const SIM_START: i64 = 1_767_225_600;
/// Text-heavy files keep the runs short; the layout does not depend on the mix.
const MIX: &[(Kind, u32)] = &[(Kind::Receipt, 5), (Kind::CallRecord, 4), (Kind::Xml, 1)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// The demo's shape: 7 days migrated at once, 1 % of rows a day late.
    Bulk,
    /// A steady rate with a diurnal curve over a simulated day, in follow mode.
    Stream,
    /// Follow mode over 4 simulated days; 1 % of rows up to 48 h late, in batches.
    Late,
    /// Ten years, a few files a day and three dense months, migrated at once with the
    /// planner's routing table.
    Sparse,
    /// The stream with 10× the rate for 10 simulated minutes.
    Burst,
}

#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub pattern: Pattern,
    pub files: u64,
    /// Follow-mode patterns: mean rows per wall second.
    pub rate: f64,
    pub workers: usize,
    pub seed: u64,
    /// The producer's poll interval in follow mode: how long a short slot waits.
    pub linger_millis: u64,
    /// An S3 endpoint (a fresh bucket with Object Lock is made on it) instead of the
    /// local WORM store.
    pub s3_endpoint: Option<String>,
    /// A RabbitMQ URI (`amqp://…`) instead of the embedded bus.
    pub amqp_uri: Option<String>,
}

/// The store the scenario runs on: the local WORM directory, or a fresh bucket.
async fn open_store(options: &ScenarioOptions, work_dir: &Path) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let Some(endpoint) = &options.s3_endpoint else {
        return Ok(Arc::new(LocalStore::open(work_dir.join("store"))?));
    };
    let bucket = format!("vera-scn-{:08x}", rand::random::<u32>());
    let server = crate::server::S3Server::external(endpoint.clone());
    let store = server.store(&bucket, None);
    let setup = vera_store_s3::BucketSetup { default_retention: None, allow_without_object_lock: false };
    vera_store_s3::ensure_bucket(&store, setup).await.context("creating the scenario bucket")?;
    Ok(Arc::new(store))
}

/// The bus the scenario runs on: the embedded SQLite queue, or RabbitMQ.
async fn open_bus(options: &ScenarioOptions, work_dir: &Path) -> anyhow::Result<Arc<dyn Bus>> {
    let Some(uri) = &options.amqp_uri else {
        return Ok(Arc::new(SqliteBus::open(work_dir.join("bus.sqlite"), 5).await?));
    };
    let prefix = format!("vera-scn-{:08x}.", rand::random::<u32>());
    let settings = vera_bus_amqp::AmqpSettings { prefix, ..vera_bus_amqp::AmqpSettings::new(uri.clone()) };
    let bus: Arc<dyn Bus> = Arc::new(vera_bus_amqp::AmqpBus::connect(settings).await?);
    bus.ensure_topics(&topics::ALL).await?;
    Ok(bus)
}

/// One row: when it arrives and when it was created, both simulated seconds.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: i64,
    created: i64,
}

/// A pattern made concrete.
struct Shape {
    arrivals: Vec<Arrival>,
    /// Simulated seconds per wall second (follow mode), or `None` for a bulk migration.
    speed: Option<f64>,
}

/// Mean bytes of a file of [`MIX`], for the planner's byte target.
const MEAN_FILE_BYTES: u64 = 4096;

/// The routing table `vera plan` proposes for the pattern's `created_at` histogram, as an
/// operator would write it before the first run.
fn planned_routing(arrivals: &[Arrival]) -> anyhow::Result<RoutingTable> {
    let mut histogram = Histogram::default();
    for arrival in arrivals {
        histogram.add(Timestamp::from_micros(arrival.created * 1_000_000).ok(), MEAN_FILE_BYTES);
    }
    Ok(vera_producer::plan::propose(&histogram, &PlanTargets::default())?.table)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub pattern: Option<Pattern>,
    pub files: u64,
    pub simulated_hours: f64,
    pub wall_seconds: f64,
    pub routing: String,
    /// Final segments once the slices closed (and staging left, which should be 0).
    pub objects: u64,
    pub staging_left: u64,
    pub objects_per_million_files: f64,
    pub files_per_object: f64,
    /// Segment writes (staging and final, compaction included) and files per write.
    pub segment_puts: u64,
    pub files_per_segment_put: f64,
    /// Every PUT the store saw (watermark CAS, routing table and reports included).
    pub store_puts: u64,
    pub addresses: u64,
    pub segments_per_address_mean: f64,
    pub segments_per_address_max: u64,
    /// Files by the GETs a cold read costs, worked out from the final layout.
    pub cold_gets: BTreeMap<u64, u64>,
    pub cold_share_at_most_2: f64,
    pub pack_lag_p50_seconds: f64,
    pub pack_lag_p99_seconds: f64,
    pub pack_lag_max_seconds: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub compaction_files_merged: u64,
}

fn shape(options: &ScenarioOptions) -> Shape {
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let files = options.files.max(1) as i64;
    match options.pattern {
        Pattern::Bulk => {
            let arrivals = (0..files)
                .map(|i| {
                    let created = SIM_START + i * 7 * DAY / files;
                    let late = rng.gen_bool(0.01);
                    Arrival { at: 0, created: if late { created - DAY - rng.gen_range(0..HOUR) } else { created } }
                })
                .collect();
            Shape { arrivals, speed: None }
        }
        Pattern::Stream | Pattern::Burst => {
            let span = if options.pattern == Pattern::Stream { DAY } else { 6 * HOUR };
            let burst = (options.pattern == Pattern::Burst).then_some((3 * HOUR, 3 * HOUR + 600));
            let weight = |t: i64| {
                let diurnal = 1.0 - 0.6 * (t as f64 / DAY as f64 * std::f64::consts::TAU).cos();
                diurnal * if burst.is_some_and(|(from, to)| (from..to).contains(&t)) { 10.0 } else { 1.0 }
            };
            let arrivals = spread(&mut rng, files, span, weight);
            let wall_seconds = files as f64 / options.rate.max(1.0);
            Shape { arrivals, speed: Some(span as f64 / wall_seconds) }
        }
        Pattern::Late => {
            let span = 4 * DAY;
            let mut arrivals = spread(&mut rng, files, span, |_| 1.0);
            for arrival in &mut arrivals {
                if rng.gen_bool(0.01) {
                    // Up to 48 h late, in batches every 12 hours.
                    let delay = rng.gen_range(1..=4) * 12 * HOUR;
                    arrival.at = (arrival.created + delay).min(SIM_START + span + 2 * DAY);
                }
            }
            arrivals.sort_by_key(|a| (a.at, a.created));
            let wall_seconds = files as f64 / options.rate.max(1.0);
            Shape { arrivals, speed: Some((span + 2 * DAY) as f64 / wall_seconds) }
        }
        Pattern::Sparse => {
            let start = SIM_START - 10 * 365 * DAY;
            let dense = [3 * 365 + 40, 6 * 365 + 100, 8 * 365 + 200];
            // Spend the file budget: three dense months share 90 %, the rest 0-6 a day.
            let dense_per_day = ((files as f64 * 0.9) / 90.0).max(1.0) as i64;
            let mut arrivals = Vec::new();
            for day in 0..(10 * 365) {
                let count = if dense.iter().any(|d| (*d..d + 30).contains(&day)) {
                    dense_per_day
                } else {
                    rng.gen_range(0..=6)
                };
                for i in 0..count {
                    arrivals.push(Arrival { at: 0, created: start + day * DAY + i * DAY / count.max(1) });
                }
            }
            Shape { arrivals, speed: None }
        }
    }
}

/// `files` arrivals over `span` simulated seconds, at a rate proportional to `weight`;
/// each is visible up to 2 s after it was created.
fn spread(rng: &mut SmallRng, files: i64, span: i64, weight: impl Fn(i64) -> f64) -> Vec<Arrival> {
    let weights: Vec<f64> = (0..span).map(&weight).collect();
    let total: f64 = weights.iter().sum();
    let mut arrivals = Vec::with_capacity(files as usize);
    let mut cumulative = 0.0;
    for (second, w) in weights.iter().enumerate() {
        cumulative += w;
        // Exactly `files` in all: the running target ends at files.
        let target = if second + 1 == weights.len() { files } else { (cumulative / total * files as f64) as i64 };
        while (arrivals.len() as i64) < target {
            let created = SIM_START + second as i64;
            arrivals.push(Arrival { at: created + rng.gen_range(0..=2), created });
        }
    }
    arrivals.sort_by_key(|a| (a.at, a.created));
    arrivals
}

fn uid(id: usize) -> String {
    format!("s{id:09}")
}

fn id_of(uid: &str) -> Option<usize> {
    uid.strip_prefix('s')?.parse().ok()
}

fn timestamp(seconds: i64) -> anyhow::Result<Timestamp> {
    Ok(Timestamp::from_micros(seconds.saturating_mul(1_000_000))?)
}

async fn insert(
    connection: &mut sqlx::SqliteConnection,
    arrivals: &[(usize, Arrival)],
    seed: u64,
) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut transaction = connection.begin().await?;
    for (id, arrival) in arrivals {
        let mut rng = SmallRng::seed_from_u64(seed ^ (*id as u64));
        let (payload, content_type) = sample_file(&mut rng, MIX, *id as u64);
        sqlx::query("INSERT INTO files (id, uid, created_at, content_type, payload) VALUES (?, ?, ?, ?, ?)")
            .bind(*id as i64 + 1)
            .bind(uid(*id))
            .bind(timestamp(arrival.created)?.to_rfc3339())
            .bind(content_type)
            .bind(payload)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Runs one pattern in `work_dir` (which must be empty or absent).
pub async fn run(options: &ScenarioOptions, work_dir: &Path) -> anyhow::Result<ScenarioReport> {
    let shape = shape(options);
    let routing = planned_routing(&shape.arrivals)?;
    let files = shape.arrivals.len();
    std::fs::create_dir_all(work_dir)?;
    let source_path = work_dir.join("source.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&source_path).await?;
    let indexed: Vec<(usize, Arrival)> = shape.arrivals.iter().copied().enumerate().collect();
    if shape.speed.is_none() {
        insert(&mut connection, &indexed, options.seed).await?;
    }
    let source: Arc<dyn Source> = Arc::new(SqliteSource::open("scenario", &source_path, SourceMapping::demo()).await?);
    let counting = Arc::new(CountingStore::new(open_store(options, work_dir).await?));
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = counting;
    let bus = open_bus(options, work_dir).await?;
    let worker_settings = WorkerSettings { retention: None, ..WorkerSettings::default() };
    // The close delay has to cover the pipeline's own latency (the producer's linger,
    // packing), which runs in wall time: at `speed` simulated seconds per wall second,
    // 300 simulated seconds can be a few milliseconds.
    let pipeline_wall_seconds = options.linger_millis as f64 / 1000.0 + 4.0;
    let close_delay_seconds = shape.speed.map_or(300, |speed| ((speed * pipeline_wall_seconds) as u64).max(300));
    let compact_settings = CompactSettings { quiet_seconds: 0, close_delay_seconds, ..CompactSettings::default() };
    let (first, last) = shape
        .arrivals
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), a| (lo.min(a.created.min(a.at)), hi.max(a.created.max(a.at))));
    let sim_origin = if shape.speed.is_some() { SIM_START } else { last };
    let clock = Arc::new(ManualClock::new(timestamp(sim_origin)?));

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for index in 0..options.workers.max(1) {
        let (bus, source, shards, settings, token) = (
            Arc::clone(&bus),
            Arc::clone(&source),
            ShardStore::new(Arc::clone(&store)),
            worker_settings.clone(),
            shutdown.child_token(),
        );
        tasks.push(tokio::spawn(async move {
            run_worker(&format!("worker-{index}"), bus, source, shards, settings, token).await;
        }));
    }
    let producer_settings = ProducerSettings {
        max_rows_per_slot: 25_000,
        max_bytes_per_slot: 256 << 20,
        start_after: i64::MIN,
        poll_interval_millis: options.linger_millis,
        routing: routing.clone(),
    };
    let mode = if shape.speed.is_some() { RunMode::Follow } else { RunMode::Drain };
    let producer = tokio::spawn(run_producer(
        Arc::clone(&source),
        Arc::clone(&store),
        Arc::clone(&bus),
        producer_settings,
        mode,
        shutdown.child_token(),
    ));
    let compactor = Arc::new(Compactor::new(
        ShardStore::new(Arc::clone(&store)),
        routing.clone(),
        Arc::clone(&bus),
        Arc::clone(&clock) as Arc<dyn vera_store::Clock>,
        worker_settings.clone(),
        compact_settings.clone(),
    ));

    let started = Instant::now();
    let mut inserted_at: Vec<Option<f64>> = vec![if shape.speed.is_none() { Some(0.0) } else { None }; files];
    let mut durable_at: Vec<Option<f64>> = vec![None; files];
    let mut seen_keys: HashSet<String> = HashSet::new();
    let mut segment_puts = 0u64;
    let mut next_insert = 0usize;
    let mut last_compaction = Instant::now();
    let shards = ShardStore::new(Arc::clone(&store));
    let deadline = Duration::from_secs(3600);
    loop {
        let wall = started.elapsed().as_secs_f64();
        if let Some(speed) = shape.speed {
            let sim_now = SIM_START + (wall * speed) as i64;
            clock.set(timestamp(sim_now)?);
            let due = indexed[next_insert..].iter().take_while(|(_, a)| a.at <= sim_now).count();
            if due > 0 {
                insert(&mut connection, &indexed[next_insert..next_insert + due], options.seed).await?;
                let now = started.elapsed().as_secs_f64();
                for (id, _) in &indexed[next_insert..next_insert + due] {
                    inserted_at[*id] = Some(now);
                }
                next_insert += due;
            }
            if last_compaction.elapsed() >= Duration::from_secs(1) {
                compactor.run_once().await.context("compaction pass")?;
                last_compaction = Instant::now();
            }
        }
        // Which files are durable now.
        for meta in store.list("e").await? {
            if !meta.key.ends_with(".vera") || seen_keys.contains(&meta.key) {
                continue;
            }
            let index = match shards.index(&meta.key).await {
                Ok(index) => index,
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error.into()),
            };
            segment_puts += 1;
            seen_keys.insert(meta.key.clone());
            let now = started.elapsed().as_secs_f64();
            for file in index.files() {
                if let Some(id) = id_of(file.uid).filter(|id| *id < files) {
                    durable_at[id].get_or_insert(now);
                }
            }
            shards.forget(&meta.key);
        }
        let all_in = next_insert == files || shape.speed.is_none();
        let depth = bus.depth(topics::PACK).await?;
        if all_in && durable_at.iter().all(Option::is_some) && depth.visible == 0 && depth.in_flight == 0 {
            break;
        }
        if started.elapsed() > deadline {
            anyhow::bail!("the scenario did not finish within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    producer.await??;
    for task in tasks {
        task.await?;
    }

    // The slices close: one pass as if the allowed lateness had passed.
    let end = last.max(sim_origin)
        + (compact_settings.allowed_lateness_seconds + compact_settings.close_delay_seconds) as i64;
    clock.set(timestamp(end + HOUR)?);
    let before = compactor.run_once().await?;
    // A second pass deletes what the first made redundant in the same pass's listing.
    compactor.run_once().await?;
    segment_puts += before.segments_written.len() as u64;

    let (sizes, layout) = crate::space::vera(Arc::clone(&store)).await?;
    let costs = ColdCosts::of(
        &layout,
        vera_store::shards::DEFAULT_SUFFIX_BYTES,
        vera_store::shards::DEFAULT_LATER_SUFFIX_BYTES,
    );
    let mut copies: HashMap<usize, u64> = HashMap::new();
    let mut staging_left = 0u64;
    for meta in store.list("e").await? {
        if ShardAddr::from_staging_key(&meta.key).is_ok() {
            staging_left += 1;
        }
        if ShardAddr::from_segment_key(&meta.key).is_err() {
            continue;
        }
        for file in shards.index(&meta.key).await?.files() {
            if let Some(id) = id_of(file.uid) {
                *copies.entry(id).or_default() += 1;
            }
        }
    }
    let lost = (0..files).filter(|id| !copies.contains_key(id)).count() as u64;
    let duplicated = copies.values().filter(|n| **n > 1).count() as u64;
    let mut lags: Vec<f64> = inserted_at
        .iter()
        .zip(&durable_at)
        .filter_map(|(inserted, durable)| Some((durable.as_ref()? - inserted.as_ref()?).max(0.0)))
        .collect();
    lags.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| lags.get(((lags.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0.0);
    let final_objects: u64 = layout.iter().map(|a| a.generations.iter().flatten().count() as u64).sum();
    let at_most_2: u64 = costs.files_by_gets.iter().filter(|(gets, _)| **gets <= 2).map(|(_, n)| n).sum();
    Ok(ScenarioReport {
        pattern: Some(options.pattern),
        files: files as u64,
        simulated_hours: (last - first) as f64 / HOUR as f64,
        wall_seconds,
        routing: serde_json::to_string(&routing)?,
        objects: final_objects,
        staging_left,
        objects_per_million_files: final_objects as f64 * 1e6 / files as f64,
        files_per_object: files as f64 / final_objects.max(1) as f64,
        segment_puts,
        files_per_segment_put: files as f64 / segment_puts.max(1) as f64,
        store_puts: counts.snapshot().puts,
        addresses: sizes.addresses,
        segments_per_address_mean: final_objects as f64 / sizes.addresses.max(1) as f64,
        segments_per_address_max: sizes.max_segments_per_address,
        cold_share_at_most_2: at_most_2 as f64 / files as f64,
        cold_gets: costs.files_by_gets,
        pack_lag_p50_seconds: percentile(0.5),
        pack_lag_p99_seconds: percentile(0.99),
        pack_lag_max_seconds: lags.last().copied().unwrap_or(0.0),
        lost,
        duplicated,
        compaction_files_merged: before.files_merged,
    })
}

impl ScenarioReport {
    pub fn markdown_header() -> &'static str {
        "| pattern | files | objects per 1M files | files per object | files per segment PUT | segments per address mean / max | cold ≤ 2 GETs | cold GETs (files) | pack lag p50 / p99 | lost / duplicated |\n|---|---|---|---|---|---|---|---|---|---|"
    }

    pub fn markdown_row(&self) -> String {
        let gets: Vec<String> = self.cold_gets.iter().map(|(gets, files)| format!("{gets}: {files}")).collect();
        format!(
            "| {:?} | {} | {:.0} | {:.0} | {:.0} | {:.2} / {} | {:.3} % | {} | {:.1} s / {:.1} s | {} / {} |",
            self.pattern.map_or(Pattern::Bulk, |p| p),
            self.files,
            self.objects_per_million_files,
            self.files_per_object,
            self.files_per_segment_put,
            self.segments_per_address_mean,
            self.segments_per_address_max,
            self.cold_share_at_most_2 * 100.0,
            gets.join(", "),
            self.pack_lag_p50_seconds,
            self.pack_lag_p99_seconds,
            self.lost,
            self.duplicated,
        )
    }
}
