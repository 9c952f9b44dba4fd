//! `loadtest`: VERA side by side with the naive way (one S3 object per file) on a loopback
//! S3 server, and random reads through the reader service. See `loadtest/README.md`.

mod cpu;
mod creates;
mod ingest;
mod ingest_bench;
mod layout;
mod reads;
mod report;
mod scenario;
mod server;
mod space;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use vera_bus::Bus;
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_source::corpus::{self, CorpusSpec, Kind};
use vera_store::ObjectStore;
use vera_store::counting::RequestCounts;
use vera_store::shards::ShardStore;
use vera_store_s3::{BucketSetup, ensure_bucket};

use crate::report::{Report, RunInfo};
use crate::server::S3Server;

/// Measures VERA against one-object-per-file on a loopback S3 server.
///
/// Generates a corpus (by default the demo's mix), stores it twice, through VERA
/// (producer → embedded bus → pack workers → segments) and naively (one create-if-absent
/// PutObject per file) with the same number of PUTs in flight, then reads random files
/// through the reader service over HTTP, cold (caches emptied before every read) and warm.
/// S3 requests are counted at each client, by type. Prints a Markdown table; `--out`
/// writes the figures as JSON.
///
/// The S3 server is s3s-fs, started by the load test on a free port over a fresh
/// directory (install it once with `scripts/s3s-fs`), or any server given by --endpoint.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Args {
    /// A smaller run (20,000 files, fewer reads) that finishes in under 5 minutes on a
    /// 2-core machine. Without it: 100,000 files.
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Files in the corpus (default: 20,000 with --quick, else 100,000).
    #[arg(long)]
    files: Option<u64>,
    /// Kinds of file and their weights, e.g. `receipt=22,cdr=14,xml=8,csv=8,log=8,pdf=14,jpeg=14,png=6,gzip=3,zip=3`
    /// (the default, as the demo). Kinds: receipt, cdr, xml, csv, log (text-heavy), pdf,
    /// jpeg, png, gzip, zip.
    #[arg(long, value_parser = corpus::parse_mix)]
    mix: Option<Vec<(Kind, u32)>>,
    /// Days the corpus's created_at spreads over (as the demo). Segments are per address
    /// and day, so fewer days for the same files means fuller segments.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Corpus random seed.
    #[arg(long, default_value_t = 20_261_124)]
    seed: u64,
    /// VERA pack workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Segment PUTs each worker keeps in flight. The naive path gets workers × this many
    /// PUTs in flight, so both have the same client concurrency.
    #[arg(long, default_value_t = 4)]
    put_concurrency: usize,
    /// Rows per producer slot (one pack task each).
    #[arg(long, default_value_t = 25_000)]
    slot_rows: u64,
    /// KiB of a segment's end the reader fetches on a cold read (as `vera serve
    /// --suffix-kib`): footer, index, and the record too when it lies inside.
    #[arg(long, default_value_t = vera_store::shards::DEFAULT_SUFFIX_BYTES / 1024, value_parser = clap::value_parser!(u64).range(1..=4096))]
    suffix_kib: u64,
    /// KiB a cold read fetches of a later generation (as `vera serve --later-suffix-kib`);
    /// never less than --suffix-kib.
    #[arg(long, default_value_t = vera_store::shards::DEFAULT_LATER_SUFFIX_BYTES / 1024, value_parser = clap::value_parser!(u64).range(1..=4096))]
    later_suffix_kib: u64,
    /// Cold reads (default: 300 with --quick, else 1,000).
    #[arg(long)]
    cold_reads: Option<usize>,
    /// Warm reads (default: 2,000 with --quick, else 10,000).
    #[arg(long)]
    warm_reads: Option<usize>,
    /// Use this S3 endpoint instead of starting s3s-fs (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Buckets are created on it.
    #[arg(long)]
    endpoint: Option<String>,
    /// The s3s-fs binary (default: on PATH or in ~/.cargo/bin).
    #[arg(long)]
    s3s_fs: Option<PathBuf>,
    /// Directory for the corpus, the bus, spill files and s3s-fs's data (default: a fresh
    /// temporary directory, removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Instead of the side-by-side test, run arrival patterns through the real pipeline
    /// on the embedded default (SQLite source and bus, local WORM store, compactor) and
    /// report the layout once their time slices have closed: objects per million files,
    /// files per PUT, segments per address, every file's cold-read GETs, pack lag, and
    /// lost or duplicated files. Repeat the flag for several; `--files` sets the size
    /// (default: 20,000 with --quick, else 100,000).
    #[arg(long, value_enum)]
    scenario: Vec<scenario::Pattern>,
    /// Scenario rows per wall second in follow-mode patterns (stream, late, burst).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Scenario producer poll interval in follow mode, milliseconds: how long a short
    /// slot waits.
    #[arg(long, default_value_t = 1000)]
    linger_ms: u64,
    /// Run the scenarios on this S3 endpoint (a fresh bucket with Object Lock each;
    /// credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead of the local
    /// WORM store, e.g. moto at http://127.0.0.1:5055.
    #[arg(long)]
    scenario_s3_endpoint: Option<String>,
    /// Run the scenarios on RabbitMQ (`amqp://guest:guest@127.0.0.1:5672/%2f`) instead of
    /// the embedded bus.
    #[arg(long)]
    scenario_amqp: Option<String>,
    /// Instead of the side-by-side test, push `--files` files of the demo mix as inline
    /// `file_arrived` events through a bus into `--workers` ingest workers and the local
    /// WORM store: files per minute, segment PUTs per 1,000 files, publish-to-durable
    /// latency, lost and duplicated files.
    #[arg(long)]
    ingest: bool,
    /// The bus for --ingest: `amqp://…` (RabbitMQ) or `kafka://HOST:PORT`; the embedded
    /// bus when unset.
    #[arg(long)]
    ingest_bus: Option<String>,
    /// The ingest workers' linger for --ingest, milliseconds (VERA's default: 5,000).
    #[arg(long, default_value_t = 5000)]
    ingest_linger_ms: u64,
}

/// `--ingest`: one run, a Markdown row, JSON with `--out`.
async fn run_ingest(args: &Args, work: &std::path::Path, files: u64) -> anyhow::Result<()> {
    let options = ingest_bench::IngestOptions {
        files,
        workers: args.workers,
        linger_millis: args.ingest_linger_ms,
        seed: args.seed,
        bus: args.ingest_bus.clone(),
    };
    tracing::info!(files, bus = ?options.bus, "ingest benchmark starts");
    let report = ingest_bench::run(&options, &work.join("ingest")).await?;
    let markdown = format!("{}\n{}\n", ingest_bench::IngestReport::markdown_header(), report.markdown_row());
    print!("{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)?;
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    anyhow::ensure!(report.lost == 0 && report.duplicated == 0, "files lost or duplicated");
    Ok(())
}

/// `--scenario`: each pattern in its own directory, a Markdown table, JSON with `--out`.
async fn run_scenarios(args: &Args, work: &std::path::Path, files: u64) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for (number, pattern) in args.scenario.iter().enumerate() {
        let options = scenario::ScenarioOptions {
            pattern: *pattern,
            files,
            rate: args.rate,
            workers: args.workers,
            seed: args.seed,
            linger_millis: args.linger_ms,
            s3_endpoint: args.scenario_s3_endpoint.clone(),
            amqp_uri: args.scenario_amqp.clone(),
        };
        tracing::info!(?pattern, files, "scenario starts");
        let report = scenario::run(&options, &work.join(format!("scenario-{number}"))).await?;
        tracing::info!(?pattern, seconds = report.wall_seconds, "scenario done");
        reports.push(report);
    }
    let mut markdown = format!("{}\n", scenario::ScenarioReport::markdown_header());
    for report in &reports {
        markdown.push_str(&report.markdown_row());
        markdown.push('\n');
    }
    print!("{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)?;
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)?;
    }
    let failed: Vec<_> = reports.iter().filter(|r| r.lost > 0 || r.duplicated > 0).collect();
    anyhow::ensure!(failed.is_empty(), "files lost or duplicated in {} scenario(s)", failed.len());
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,loadtest=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Args::parse()).await {
        eprintln!("loadtest failed: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let run_started = Instant::now();
    let temp = tempfile::tempdir()?;
    let work = args.work_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let files = args.files.unwrap_or(if args.quick { 20_000 } else { 100_000 });
    if !args.scenario.is_empty() {
        return run_scenarios(&args, &work, files).await;
    }
    if args.ingest {
        return run_ingest(&args, &work, files).await;
    }
    let cold_reads = args.cold_reads.unwrap_or(if args.quick { 300 } else { 1_000 });
    let warm_reads = args.warm_reads.unwrap_or(if args.quick { 2_000 } else { 10_000 });
    anyhow::ensure!(
        files > 0 && args.workers > 0 && args.put_concurrency > 0,
        "files, workers and put-concurrency must be above 0"
    );

    let server = match &args.endpoint {
        Some(endpoint) => S3Server::external(endpoint.clone()),
        None => S3Server::start(args.s3s_fs.as_deref(), &work.join(format!("s3-{}", std::process::id()))).await?,
    };
    tracing::info!(server = %server.description, "S3 server ready");
    let cpu = cpu::CpuMeter::new(server.pid());

    // The corpus.
    let generation_started = Instant::now();
    let mix = args.mix.clone().unwrap_or_else(|| corpus::DEFAULT_MIX.to_vec());
    let spec = CorpusSpec {
        files,
        days: args.days,
        seed: args.seed,
        bad_rows_per_kind: 0,
        mix: mix.clone(),
        ..CorpusSpec::default()
    };
    let corpus_path = work.join("corpus.sqlite");
    let summary = corpus::generate(&corpus_path, &spec, &|| {}).await?;
    let generate_seconds = generation_started.elapsed().as_secs_f64();
    tracing::info!(
        files = summary.good_rows,
        bytes = summary.payload_bytes,
        seconds = generate_seconds,
        "corpus generated"
    );
    let source: Arc<dyn vera_source::Source> = Arc::new(
        vera_source::sqlite::SqliteSource::open("loadtest", &corpus_path, vera_source::SourceMapping::demo()).await?,
    );

    // Buckets: a fresh pair per run.
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (vera_bucket, naive_bucket) = (format!("vera-lt-{run_id}"), format!("naive-lt-{run_id}"));
    let setup = BucketSetup { default_retention: None, allow_without_object_lock: true };
    ensure_bucket(&server.store(&vera_bucket, None), setup).await.context("creating the VERA bucket")?;
    ensure_bucket(&server.store(&naive_bucket, None), setup).await.context("creating the naive bucket")?;

    let worker_settings = vera_worker::WorkerSettings {
        put_concurrency: args.put_concurrency,
        spill_dir: Some(work.clone()),
        // s3s-fs has no Object Lock (and answers PutObjectRetention with 501): segments go
        // up without retention here. Against a locking server, drop this line.
        retention: None,
        ..vera_worker::WorkerSettings::default()
    };
    let max_file_bytes = worker_settings.max_file_bytes;
    let routing = RoutingTable::single(RoutingEpoch::v1(2)?);
    let bus: Arc<dyn Bus> = Arc::new(vera_bus::sqlite::SqliteBus::open(work.join("bus.sqlite"), 5).await?);

    // Ingest, VERA first, then naive.
    let vera_counts = Arc::new(RequestCounts::default());
    // s3s-fs does not decide create-if-absent atomically; see creates.rs.
    let vera_store: Arc<dyn ObjectStore> =
        Arc::new(creates::OneCreateAtATime::new(server.store(&vera_bucket, Some(Arc::clone(&vera_counts)))));
    tracing::info!(workers = args.workers, put_concurrency = args.put_concurrency, "ingesting through VERA");
    let (mut vera, stats) = ingest::vera(
        Arc::clone(&source),
        Arc::clone(&vera_store),
        &vera_counts,
        Arc::clone(&bus),
        ingest::Pipeline {
            routing: routing.clone(),
            workers: args.workers,
            settings: worker_settings,
            slot_rows: args.slot_rows,
        },
        &cpu,
    )
    .await?;
    tracing::info!(
        files = vera.files,
        seconds = vera.seconds,
        puts = vera.puts,
        tasks_retried = stats.retried,
        "VERA ingest done"
    );
    // Small groups went to staging; merge them as `vera compact` would once the corpus's
    // slices have closed (they are all in the past: a clock past the allowed lateness).
    let puts_before = vera_counts.snapshot().puts;
    let compaction = vera_compact::Compactor::new(
        ShardStore::new(Arc::clone(&vera_store)),
        routing.clone(),
        Arc::clone(&bus),
        Arc::new(vera_store::ManualClock::new(vera_protocol::Timestamp::MAX)),
        vera_worker::WorkerSettings { retention: None, ..vera_worker::WorkerSettings::default() },
        vera_compact::CompactSettings::default(),
    )
    .run_once()
    .await
    .context("compacting the staged groups")?;
    vera.puts += vera_counts.snapshot().puts - puts_before;
    vera.compaction_files_merged = compaction.files_merged;
    vera.compaction_segments = compaction.segments_written.len() as u64;
    let naive_counts = Arc::new(RequestCounts::default());
    let naive_store: Arc<dyn ObjectStore> = Arc::new(server.store(&naive_bucket, Some(Arc::clone(&naive_counts))));
    let concurrency = args.workers * args.put_concurrency;
    tracing::info!(concurrency, "ingesting naively, one object per file");
    let (naive, stored) =
        ingest::naive(source.as_ref(), naive_store, &naive_counts, concurrency, max_file_bytes, &cpu).await?;
    tracing::info!(files = naive.files, seconds = naive.seconds, puts = naive.puts, "naive ingest done");
    anyhow::ensure!(
        vera.files == naive.files,
        "VERA packed {} files but the naive path stored {}: the two runs disagree",
        vera.files,
        naive.files
    );

    // Space, listed with uncounted clients.
    tracing::info!("measuring bytes stored and tar | zstd -3");
    let (vera_sizes, layout) = space::vera(Arc::new(server.store(&vera_bucket, None))).await?;
    let later_suffix_kib = args.later_suffix_kib.max(args.suffix_kib);
    let cold_costs = layout::ColdCosts::of(&layout, args.suffix_kib * 1024, later_suffix_kib * 1024);
    // The segments in the bucket, which include any a retried task's first attempt wrote.
    vera.objects = vera_sizes.segments;
    // What the workers reported packing must be what the segments hold: a store that let
    // one create overwrite another (loadtest/src/creates.rs) shows here, by name.
    anyhow::ensure!(
        vera_sizes.files == naive.files,
        "files lost: the segments' indexes list {} files but {} were packed (and the naive path stored {})",
        vera_sizes.files,
        vera.files,
        naive.files
    );
    // Not listed: s3s-fs hashes every object again to answer a LIST, minutes for 100,000
    // objects. The PUT bodies counted on the wire are the objects' sizes.
    let naive_bytes = naive.bytes_sent;
    let tar_zstd = space::tar_zstd(source.as_ref(), max_file_bytes).await?;

    // Reads through the reader service.
    let read_counts = Arc::new(RequestCounts::default());
    let read_store: Arc<dyn ObjectStore> = Arc::new(server.store(&vera_bucket, Some(Arc::clone(&read_counts))));
    let audit_shutdown = tokio_util::sync::CancellationToken::new();
    let (audit, audit_task) =
        vera_reader::audit::spawn(Arc::clone(&bus), Duration::from_secs(1), audit_shutdown.clone());
    let reader = Arc::new(vera_reader::Reader::new(
        ShardStore::new(read_store)
            .with_suffix_bytes(args.suffix_kib * 1024)
            .with_later_suffix_bytes(args.later_suffix_kib * 1024),
        routing.clone(),
        Some(audit),
        vera_reader::ReaderSettings::default(),
    ));
    let service = reads::Service::start(Arc::clone(&reader)).await?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(args.seed ^ 0x5EED);
    let cold_sample: Vec<&ingest::StoredFile> = stored.choose_multiple(&mut rng, cold_reads).collect();
    let warm_sample: Vec<&ingest::StoredFile> = stored.choose_multiple(&mut rng, warm_reads).collect();
    tracing::info!(reads = cold_sample.len(), "cold reads");
    let cold = service.measure(&cold_sample, Some(&cold_costs), &read_counts).await?;
    tracing::info!(reads = warm_sample.len(), "warm reads");
    reader.forget_everything().await;
    service.warm_up(&warm_sample).await?;
    let mut warm_order = warm_sample.clone();
    warm_order.shuffle(&mut rng);
    let warm = service.measure(&warm_order, None, &read_counts).await?;
    let direct = reads::direct_range_gets(reader.shards(), &routing, &warm_order, &read_counts).await?;

    // Reader memory: every segment's read index (what the reader caches) loaded.
    reader.forget_everything().await;
    for object in reader.shards().store().list("").await? {
        if object.key.ends_with(".vera") {
            reader.shards().read_index(&object.key).await?;
        }
    }
    let cache = reader.shards().cache_stats();
    // Every segment's read index must have stayed in the cache, or the memory figure
    // below would cover only part of the corpus.
    anyhow::ensure!(
        cache.files == naive.files,
        "the reader's index cache holds {} files' lookups, not all {}: the memory figure would be partial",
        cache.files,
        naive.files
    );
    audit_shutdown.cancel();
    let _ = audit_task.await;

    let report = Report::build(RunInfo {
        quick: args.quick,
        server: server.description.clone(),
        mix,
        corpus: summary,
        generate_seconds,
        vera,
        tasks_retried: stats.retried,
        naive,
        vera_sizes,
        naive_bytes,
        tar_zstd,
        suffix_kib: args.suffix_kib,
        later_suffix_kib,
        cold,
        cold_costs_by_layout: cold_costs.files_by_gets,
        warm,
        direct,
        cache,
        seconds: run_started.elapsed().as_secs_f64(),
    });
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
