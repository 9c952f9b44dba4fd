//! Random single-file reads through the reader service over HTTP, cold (every cache
//! emptied before each read, as after a restart) and warm, with the S3 GETs each cost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use vera_reader::Reader;
use vera_store::counting::{RequestCounts, RequestSnapshot};

use crate::ingest::StoredFile;
use crate::layout::ColdCosts;

#[derive(Debug, Clone, Serialize)]
pub struct ReadFigures {
    pub reads: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// S3 GETs per read, as counted at the reader's S3 client.
    pub gets_per_read: f64,
    /// How many reads cost each number of GETs (`{"1": 12, "2": 980, "3": 8}`): an
    /// average above a goal says how many reads missed it.
    pub reads_by_gets: BTreeMap<u64, u64>,
    /// GETs the server answered with a 5xx, per read. s3s-fs answers 500 to a suffix
    /// range longer than the object, where S3 returns the whole object; the S3 client
    /// then sends a HEAD and a range GET (loadtest/README.md).
    pub get_server_errors_per_read: f64,
    /// `reads_by_gets` without those refused GETs: what each read cost in GETs that
    /// returned data.
    pub reads_by_answered_gets: BTreeMap<u64, u64>,
    /// Of which GETs of `.vera.meta` sidecars (tombstone checks, answered 404 when a
    /// segment has none).
    pub sidecar_gets_per_read: f64,
    pub bytes_per_read: f64,
    /// Cold reads only: how many cost exactly the answered GETs that the segments'
    /// layout says they must (`crate::layout`). Every one, when the model and the reader
    /// agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_as_layout_predicts: Option<u64>,
}

/// One timed read and the S3 GETs it cost.
struct Sample {
    latency: Duration,
    gets: u64,
    /// Of `gets`, those the server answered with a 5xx.
    refused: u64,
}

impl Sample {
    fn new(latency: Duration, before: &RequestSnapshot, after: &RequestSnapshot) -> Self {
        Sample { latency, gets: after.gets - before.gets, refused: after.get_server_errors - before.get_server_errors }
    }
}

impl ReadFigures {
    /// Reads that took more than `limit` GETs, on the wire and counting only answered ones.
    pub fn reads_over(&self, limit: u64) -> (u64, u64) {
        let over = |by: &BTreeMap<u64, u64>| by.range(limit + 1..).map(|(_, count)| count).sum();
        (over(&self.reads_by_gets), over(&self.reads_by_answered_gets))
    }

    /// Percentiles of the samples' latencies, with the request figures per read.
    fn new(samples: &[Sample], sidecar_gets: u64, bytes: u64, as_predicted: Option<u64>) -> Self {
        let mut latencies: Vec<Duration> = samples.iter().map(|sample| sample.latency).collect();
        latencies.sort();
        let (mut reads_by_gets, mut reads_by_answered_gets) = (BTreeMap::new(), BTreeMap::new());
        for sample in samples {
            *reads_by_gets.entry(sample.gets).or_default() += 1;
            *reads_by_answered_gets.entry(sample.gets - sample.refused).or_default() += 1;
        }
        let reads = samples.len().max(1) as f64;
        let gets: u64 = samples.iter().map(|sample| sample.gets).sum();
        let refused: u64 = samples.iter().map(|sample| sample.refused).sum();
        ReadFigures {
            reads: latencies.len() as u64,
            p50_ms: percentile(&latencies, 50.0),
            p95_ms: percentile(&latencies, 95.0),
            p99_ms: percentile(&latencies, 99.0),
            max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            gets_per_read: gets as f64 / reads,
            reads_by_gets,
            get_server_errors_per_read: refused as f64 / reads,
            reads_by_answered_gets,
            sidecar_gets_per_read: sidecar_gets as f64 / reads,
            bytes_per_read: bytes as f64 / reads,
            reads_as_layout_predicts: as_predicted,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The reader service on a loopback port, and an HTTP client for it.
pub struct Service {
    pub reader: Arc<Reader>,
    base: String,
    client: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

impl Service {
    pub async fn start(reader: Arc<Reader>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let router = vera_reader::router(Arc::clone(&reader), None);
        let server = tokio::spawn(async move {
            if let Err(error) = vera_reader::serve(listener, router, std::future::pending()).await {
                tracing::error!(%error, "the reader service stopped");
            }
        });
        let client = reqwest::Client::builder().pool_max_idle_per_host(4).build()?;
        Ok(Service { reader, base, client, _server: server })
    }

    /// One GET; checks the status and that the body hashes to what was stored.
    async fn read(&self, file: &StoredFile) -> anyhow::Result<Duration> {
        let url = format!("{}/v1/files/{}?created_at={}", self.base, file.uid, file.created_at.to_rfc3339());
        let started = Instant::now();
        let response = self.client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        ensure!(*blake3::hash(&body).as_bytes() == file.content_hash, "GET {url} returned bytes that differ");
        Ok(elapsed)
    }

    /// Reads `sample` in order. With `cold`, empties the reader's caches before each read
    /// and counts the reads whose answered GETs are what `cold` says the layout costs.
    pub async fn measure(
        &self,
        sample: &[&StoredFile],
        cold: Option<&ColdCosts>,
        counts: &RequestCounts,
    ) -> anyhow::Result<ReadFigures> {
        let before = counts.snapshot();
        let sidecars_before = self.reader.sidecar_fetches();
        let mut samples = Vec::with_capacity(sample.len());
        let mut as_predicted = 0u64;
        for file in sample {
            if cold.is_some() {
                self.reader.forget_everything().await;
            }
            // Reads run one at a time, so the GETs between two snapshots are this read's.
            let read_before = counts.snapshot();
            let latency = self.read(file).await?;
            let read = Sample::new(latency, &read_before, &counts.snapshot());
            if let Some(costs) = cold {
                let predicted = costs.by_uid.get(&file.uid);
                if predicted == Some(&(read.gets - read.refused)) {
                    as_predicted += 1;
                } else {
                    tracing::warn!(uid = %file.uid, ?predicted, gets = read.gets, refused = read.refused, "a cold read cost other than its layout predicts");
                }
            }
            samples.push(read);
        }
        let after = counts.snapshot();
        Ok(ReadFigures::new(
            &samples,
            self.reader.sidecar_fetches() - sidecars_before,
            after.bytes_got - before.bytes_got,
            cold.map(|_| as_predicted),
        ))
    }

    /// Reads every sampled file once, untimed, so the next pass is warm.
    pub async fn warm_up(&self, sample: &[&StoredFile]) -> anyhow::Result<()> {
        for file in sample {
            self.read(file).await?;
        }
        Ok(())
    }
}

/// The floor under the reader: the same records fetched with a bare S3 range GET from the
/// same client library, indexes already in hand (GETs counted, bytes per read measured).
pub async fn direct_range_gets(
    shards: &vera_store::shards::ShardStore,
    routing: &vera_protocol::routing::RoutingTable,
    sample: &[&StoredFile],
    counts: &RequestCounts,
) -> anyhow::Result<ReadFigures> {
    let mut samples = Vec::with_capacity(sample.len());
    let mut bytes = 0u64;
    let sidecars = vera_store::shards::MemoSidecars::new(shards.store().as_ref());
    for file in sample {
        // The reader's own probe (past a missing generation 0, through any repack), before
        // the GETs are counted: only the range GET is measured.
        let located = shards.locate(routing, &file.uid, file.created_at, &sidecars).await?;
        let range = located
            .index
            .find(&file.uid)
            .map(|found| found.record_range())
            .ok_or_else(|| anyhow::anyhow!("{} is not in {}", file.uid, located.key))?;
        let key = located.key;
        let before = counts.snapshot();
        let started = Instant::now();
        shards.store().get_range(&key, range).await?;
        let latency = started.elapsed();
        let after = counts.snapshot();
        samples.push(Sample::new(latency, &before, &after));
        bytes += after.bytes_got - before.bytes_got;
    }
    Ok(ReadFigures::new(&samples, 0, bytes, None))
}
