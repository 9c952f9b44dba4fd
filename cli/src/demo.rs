//! `vera demo`: the whole embedded pipeline on one machine, no servers.
//!
//! Generates a corpus into SQLite, runs the producer and N workers over the embedded bus
//! into the local WORM store, runs one compaction pass as if the allowed lateness had
//! passed (the corpus's slices are all in the past; ADR 0005), reads every file back
//! through the two-call read path and checks it against the source, then prints a
//! one-line summary (or JSON).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_producer::{ProducerSettings, RunMode, run_producer};
use vera_store::ObjectStore;
use vera_worker::rows::validate_row;
use vera_worker::{WorkerStats, run_worker};

use crate::common::{SourceArgs, StoreArgs, WorkerArgs};
use vera_source::corpus::{CorpusSpec, generate};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Files to generate.
    #[arg(long, default_value_t = 100_000)]
    pub files: u64,
    /// Days the corpus's created_at spreads over.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Pack workers sharing the bus.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Rows per producer slot (one PackTask each).
    #[arg(long, default_value_t = 25_000)]
    pub slot_rows: u64,
    /// Inline payload bytes per slot.
    #[arg(long, default_value_t = 1 << 30)]
    pub slot_bytes: u64,
    /// Corpus random seed.
    #[arg(long, default_value_t = 20_261_124)]
    pub seed: u64,
    /// Print a JSON object instead of the one-line summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub files: u64,
    pub rows: u64,
    pub rejected: u64,
    pub segments: u64,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    pub elapsed_seconds: f64,
    pub files_per_minute: f64,
    pub input_mb_per_second: f64,
    pub verified: u64,
    pub mismatched: u64,
    pub missing: u64,
    pub store_puts: u64,
    pub store_gets_during_read_back: u64,
    pub files_per_put: f64,
    pub generate_seconds: f64,
    pub read_back_seconds: f64,
    pub workers: usize,
    pub dead_lettered: u64,
    /// The compaction pass run after packing (ADR 0005).
    pub compaction: vera_compact::CompactReport,
}

fn bar(len: u64, message: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

pub async fn run(args: DemoArgs) -> anyhow::Result<DemoSummary> {
    if args.store.s3_bucket.is_some() {
        anyhow::bail!(
            "the demo runs on the embedded local store; use `vera producer` and `vera worker` with --s3-bucket"
        );
    }
    let data_dir = &args.store.data_dir;
    std::fs::create_dir_all(data_dir)?;
    // A demo run starts from nothing: old store, bus and corpus are removed.
    for stale in [args.store.store_dir(), data_dir.join("source.sqlite")] {
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale)?;
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("bus.sqlite{suffix}")));
    }
    let source_path = data_dir.join("source.sqlite");

    let generation_started = Instant::now();
    let spec = CorpusSpec { files: args.files, days: args.days, seed: args.seed, ..CorpusSpec::default() };
    let progress = bar(args.files, "generating", args.json);
    let corpus = generate(&source_path, &spec, &|| progress.inc(1)).await?;
    progress.finish_and_clear();
    let generate_seconds = generation_started.elapsed().as_secs_f64();
    tracing::info!(rows = corpus.rows, bytes = corpus.payload_bytes, seconds = generate_seconds, "corpus generated");

    let source_args = SourceArgs {
        source_db: Some(source_path.clone()),
        source_url: None,
        source_name: "demo".into(),
        table: "files".into(),
        uid_column: "uid".into(),
        created_at_column: "created_at".into(),
        payload_column: "payload".into(),
        payload_paths_under: None,
        content_type_column: "content_type".into(),
        watermark_column: "id".into(),
        visibility: crate::common::VisibilityChoice::Auto,
        visibility_column: None,
        settle_ms: 0,
    };
    let source = source_args.open(None).await?;
    let store = args.store.counting_store()?;
    let counts = store.counts();
    let store_dyn: Arc<dyn ObjectStore> = store.clone();
    let bus = args.store.bus(args.worker.max_attempts).await?;
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    let routing = match args.store.n_bits {
        Some(_) => args.store.routing_or_init(store_dyn.as_ref()).await?,
        // Without --n-bits the demo routes as `vera plan` proposes for its corpus.
        None => {
            let histogram = crate::routing::source_histogram(source.as_ref(), &|| {}).await?;
            let plan = vera_producer::plan::propose(&histogram, &vera_producer::plan::PlanTargets::default())?;
            tracing::info!(
                epochs = plan.epochs.len(),
                segments = plan.expected_segments,
                "routing by the planner's table"
            );
            let now = vera_store::Clock::now(&vera_store::SystemClock);
            match vera_store::routing_table::init(store_dyn.as_ref(), &plan.table, now, None).await {
                Ok(stored) => stored.table,
                // A bucket that holds a table already routes by it.
                Err(vera_store::routing_table::RoutingTableError::Different { .. }) => {
                    args.store.routing(store_dyn.as_ref()).await?
                }
                Err(other) => return Err(other.into()),
            }
        }
    };
    let worker_settings = args.worker.settings()?;

    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    for index in 0..args.workers.max(1) {
        let (bus, source, shards, settings, token) = (
            Arc::clone(&bus_dyn),
            Arc::clone(&source),
            args.store.shards(Arc::clone(&store_dyn)),
            worker_settings.clone(),
            shutdown.child_token(),
        );
        workers.push(tokio::spawn(async move {
            run_worker(&format!("worker-{index}"), bus, source, shards, settings, token).await
        }));
    }
    let producer_settings = ProducerSettings {
        max_rows_per_slot: args.slot_rows,
        max_bytes_per_slot: args.slot_bytes,
        start_after: i64::MIN,
        poll_interval_millis: 500,
        routing: routing.clone(),
    };
    let producer = tokio::spawn(run_producer(
        Arc::clone(&source),
        Arc::clone(&store_dyn),
        Arc::clone(&bus_dyn),
        producer_settings,
        RunMode::Drain,
        shutdown.child_token(),
    ));
    let expected_slots = args.files.div_ceil(args.slot_rows.max(1));
    let progress = bar(expected_slots, "packing", args.json);
    let producer_report = loop {
        let depth = bus.depth(topics::PACK).await?;
        let published = expected_slots.saturating_sub(depth.visible + depth.in_flight);
        progress.set_position(published.min(expected_slots));
        if producer.is_finished() && depth.visible == 0 && depth.in_flight == 0 {
            break producer.await??;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress.finish_and_clear();
    shutdown.cancel();
    let mut stats = WorkerStats::default();
    for worker in workers {
        stats.merge(&worker.await?);
    }
    let pack_started = producer_report.first_read_at.unwrap_or_else(Instant::now);
    let elapsed = stats.last_sealed_at.map_or(Duration::ZERO, |end| end.saturating_duration_since(pack_started));
    let store_puts = counts.snapshot().puts;

    // Every slice of the corpus is in the past; a pass as if the allowed lateness had
    // passed merges what went to staging (late rows), as a running `vera compact` would.
    let compact_settings = vera_compact::CompactSettings::default();
    let wait = compact_settings.allowed_lateness_seconds + compact_settings.quiet_seconds;
    let later = vera_store::Clock::now(&vera_store::SystemClock).as_micros().saturating_add(wait as i64 * 1_000_000);
    let clock = vera_store::ManualClock::new(vera_protocol::Timestamp::from_micros(later)?);
    let compaction = vera_compact::Compactor::new(
        args.store.shards(Arc::clone(&store_dyn)),
        routing.clone(),
        Arc::clone(&bus_dyn),
        Arc::new(clock),
        worker_settings.clone(),
        compact_settings,
    )
    .run_once()
    .await?;

    // Read every file back through the read path and compare with the source.
    let read_started = Instant::now();
    let gets_before = counts.snapshot().gets;
    let shards = args.store.shards(Arc::clone(&store_dyn));
    let progress = bar(corpus.rows, "reading back", args.json);
    let everything = vera_protocol::message::Slot::by_watermark(i64::MIN, i64::MAX, 0, 0);
    let mut seen = HashSet::new();
    let max_file_bytes = worker_settings.max_file_bytes;
    let expected = source.read_slot(everything).try_filter_map(|row| {
        let valid = validate_row(row, max_file_bytes, &mut seen).ok();
        async move { Ok(valid) }
    });
    // Tombstones and repacks are checked once per segment, not once per file.
    let sidecars = vera_store::shards::MemoSidecars::new(shards.store().as_ref());
    let outcomes: Vec<Result<ReadOutcome, anyhow::Error>> = expected
        .map(|row| {
            let (shards, routing, progress, sidecars) = (&shards, &routing, &progress, &sidecars);
            async move {
                let row = row?;
                progress.inc(1);
                let expected_hash = blake3::hash(&row.bytes);
                Ok(match shards.read_file_with(routing, &row.uid, row.created_at, sidecars).await {
                    // read_file has already checked the bytes against their stored hash.
                    Ok(read) if read.content_hash == *expected_hash.as_bytes() => ReadOutcome::Verified,
                    Ok(_) => ReadOutcome::Mismatched,
                    Err(error) if error.is_not_found() => ReadOutcome::Missing,
                    Err(error) => {
                        tracing::error!(uid = %row.uid, error = %error, "read back failed");
                        ReadOutcome::Mismatched
                    }
                })
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    progress.finish_and_clear();
    let (mut verified, mut mismatched, mut missing) = (0u64, 0u64, 0u64);
    for outcome in outcomes {
        match outcome? {
            ReadOutcome::Verified => verified += 1,
            ReadOutcome::Mismatched => mismatched += 1,
            ReadOutcome::Missing => missing += 1,
        }
    }
    let elapsed_seconds = elapsed.as_secs_f64();
    let per_second = |value: u64| if elapsed_seconds > 0.0 { value as f64 / elapsed_seconds } else { 0.0 };
    Ok(DemoSummary {
        files: stats.files_packed,
        rows: stats.rows,
        rejected: stats.rejected,
        segments: stats.segments_written,
        bytes_in: stats.bytes_in,
        bytes_stored: stats.bytes_stored,
        elapsed_seconds,
        files_per_minute: per_second(stats.files_packed) * 60.0,
        input_mb_per_second: per_second(stats.bytes_in) / 1e6,
        verified,
        mismatched,
        missing,
        store_puts,
        store_gets_during_read_back: counts.snapshot().gets - gets_before,
        files_per_put: if store_puts > 0 { stats.files_packed as f64 / store_puts as f64 } else { 0.0 },
        generate_seconds,
        read_back_seconds: read_started.elapsed().as_secs_f64(),
        workers: args.workers,
        dead_lettered: stats.dead_lettered,
        compaction,
    })
}

enum ReadOutcome {
    Verified,
    Mismatched,
    Missing,
}

impl DemoSummary {
    pub fn one_line(&self) -> String {
        format!(
            "packed {} files ({:.1} MB) into {} segments in {:.1}s: {:.0} files/min, {:.0} MB/s in, {:.2}x smaller, {} store PUTs ({:.0} files/PUT); compaction merged {} staged files into {} segments; read back and verified {}/{} files; {} rows rejected",
            self.files,
            self.bytes_in as f64 / 1e6,
            self.segments,
            self.elapsed_seconds,
            self.files_per_minute,
            self.input_mb_per_second,
            if self.bytes_stored > 0 { self.bytes_in as f64 / self.bytes_stored as f64 } else { 0.0 },
            self.store_puts,
            self.files_per_put,
            self.compaction.files_merged,
            self.compaction.segments_written.len(),
            self.verified,
            self.files,
            self.rejected
        )
    }

    /// True when every packed file came back intact and nothing is missing.
    pub fn ok(&self) -> bool {
        self.mismatched == 0 && self.missing == 0 && self.verified == self.files && self.dead_lettered == 0
    }
}
