//! The two ways of storing the corpus: VERA (producer, bus, pack workers) and the naive
//! baseline (one PutObject per file), at the same number of PUTs in flight.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_producer::{ProducerSettings, RunMode, run_producer};
use vera_protocol::Timestamp;
use vera_protocol::message::Slot;
use vera_protocol::routing::RoutingTable;
use vera_source::Source;
use vera_store::counting::{RequestCounts, RequestSnapshot};
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, PutOptions};
use vera_worker::rows::validate_row;
use vera_worker::{WorkerSettings, WorkerStats, run_worker};

use crate::cpu::{CpuMeter, CpuUse};

/// What one way of storing achieved, with its requests as counted at the client.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub files: u64,
    pub seconds: f64,
    pub files_per_minute: f64,
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub objects: u64,
    pub bytes_sent: u64,
    /// PUTs in flight at most.
    pub concurrency: usize,
    /// CPU time of the client (this process) and the S3 server during the ingest.
    pub cpu: CpuUse,
    /// VERA only: staged files the compaction pass after the ingest merged, and the
    /// segments it wrote (their PUTs are in `puts`; ADR 0005).
    pub compaction_files_merged: u64,
    pub compaction_segments: u64,
}

impl IngestResult {
    fn new(
        files: u64,
        elapsed: Duration,
        requests: RequestSnapshot,
        objects: u64,
        concurrency: usize,
        cpu: CpuUse,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        IngestResult {
            files,
            seconds,
            files_per_minute: if seconds > 0.0 { files as f64 * 60.0 / seconds } else { 0.0 },
            puts: requests.puts,
            gets: requests.gets,
            heads: requests.heads,
            lists: requests.lists,
            objects,
            bytes_sent: requests.bytes_put,
            concurrency,
            cpu,
            compaction_files_merged: 0,
            compaction_segments: 0,
        }
    }
}

/// A corpus file as the naive path stored it: what the read test asks for and expects.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub uid: String,
    pub created_at: Timestamp,
    pub content_hash: [u8; 32],
}

/// Every valid row of the source, in watermark order, with its payload.
pub fn valid_rows(
    source: &dyn Source,
    max_file_bytes: u64,
) -> impl futures::Stream<Item = anyhow::Result<vera_worker::rows::ValidRow>> + '_ {
    let everything = Slot::by_watermark(i64::MIN, i64::MAX, 0, 0);
    let mut seen = HashSet::new();
    source.read_slot(everything).map_err(anyhow::Error::from).try_filter_map(move |row| {
        let valid = validate_row(row, max_file_bytes, &mut seen).ok();
        async move { Ok(valid) }
    })
}

/// How VERA's side runs: routing, worker count and settings, slot size.
pub struct Pipeline {
    pub routing: RoutingTable,
    pub workers: usize,
    pub settings: WorkerSettings,
    pub slot_rows: u64,
}

/// Packs the source through VERA: the producer cuts slots onto the embedded bus, `workers`
/// pack workers (each with `settings.put_concurrency` segment PUTs in flight) write
/// segments. Timed from the start until every slot is packed.
pub async fn vera(
    source: Arc<dyn Source>,
    store: Arc<dyn ObjectStore>,
    counts: &RequestCounts,
    bus: Arc<dyn Bus>,
    pipeline: Pipeline,
    cpu: &CpuMeter,
) -> anyhow::Result<(IngestResult, WorkerStats)> {
    let Pipeline { routing, workers, settings, slot_rows } = pipeline;
    let concurrency = workers * settings.put_concurrency;
    let started = Instant::now();
    let cpu_mark = cpu.mark();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for index in 0..workers {
        let (bus, source, shards, settings, token) = (
            Arc::clone(&bus),
            Arc::clone(&source),
            ShardStore::new(Arc::clone(&store)),
            settings.clone(),
            shutdown.child_token(),
        );
        handles.push(tokio::spawn(async move {
            run_worker(&format!("loadtest-worker-{index}"), bus, source, shards, settings, token).await
        }));
    }
    let producer = tokio::spawn(run_producer(
        Arc::clone(&source),
        Arc::clone(&store),
        Arc::clone(&bus),
        ProducerSettings {
            max_rows_per_slot: slot_rows,
            max_bytes_per_slot: 1 << 30,
            start_after: i64::MIN,
            poll_interval_millis: 200,
            routing,
        },
        RunMode::Drain,
        shutdown.child_token(),
    ));
    loop {
        let depth = bus.depth(topics::PACK).await?;
        if depth.dead > 0 {
            shutdown.cancel();
            anyhow::bail!("{} pack tasks were dead-lettered; the log above says why", depth.dead);
        }
        if producer.is_finished() && depth.visible == 0 && depth.in_flight == 0 {
            producer.await?.context("the producer failed")?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (elapsed, cpu_end) = (started.elapsed(), cpu.mark());
    shutdown.cancel();
    let mut stats = WorkerStats::default();
    for handle in handles {
        stats.merge(&handle.await?);
    }
    anyhow::ensure!(stats.dead_lettered == 0, "{} pack tasks were dead-lettered", stats.dead_lettered);
    // The bucket starts empty, so a file counted as already stored was stored by an earlier
    // attempt of a task that failed transiently and was retried (`stats.retried`).
    let files = stats.files_packed + stats.already_stored;
    let cpu = cpu.between(cpu_mark, cpu_end, elapsed, files);
    let result = IngestResult::new(files, elapsed, counts.snapshot(), stats.segments_written, concurrency, cpu);
    Ok((result, stats))
}

/// Stores every valid row as its own object (`files/<uid>`, create-if-absent, content type
/// in the metadata), `concurrency` PUTs in flight. Returns what it stored, for the reads.
pub async fn naive(
    source: &dyn Source,
    store: Arc<dyn ObjectStore>,
    counts: &RequestCounts,
    concurrency: usize,
    max_file_bytes: u64,
    cpu: &CpuMeter,
) -> anyhow::Result<(IngestResult, Vec<StoredFile>)> {
    let started = Instant::now();
    let cpu_mark = cpu.mark();
    let stored: Vec<StoredFile> = valid_rows(source, max_file_bytes)
        .map(|row| {
            let store = Arc::clone(&store);
            async move {
                let row = row?;
                let mut options = PutOptions::create();
                let content_type = row.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
                options.metadata = BTreeMap::from([("content-type".to_owned(), content_type)]);
                let content_hash = *blake3::hash(&row.bytes).as_bytes();
                store
                    .put(&format!("files/{}", row.uid), Bytes::from(row.bytes), options)
                    .await
                    .with_context(|| format!("naive PUT of {}", row.uid))?;
                anyhow::Ok(StoredFile { uid: row.uid, created_at: row.created_at, content_hash })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let (elapsed, files) = (started.elapsed(), stored.len() as u64);
    let cpu = cpu.since(cpu_mark, elapsed, files);
    let result = IngestResult::new(files, elapsed, counts.snapshot(), files, concurrency, cpu);
    Ok((result, stored))
}
