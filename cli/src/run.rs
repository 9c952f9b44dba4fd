//! Long-running roles and the corpus generator as subcommands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_producer::{ProducerSettings, RunMode, run_producer};
use vera_store::ObjectStore;

use crate::common::{SourceArgs, StoreArgs, WorkerArgs};
use vera_source::corpus::CorpusSpec;

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Database to create (replaced if it exists).
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub files: u64,
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    #[arg(long, default_value_t = 20_261_124)]
    pub seed: u64,
    /// Bad rows of each kind (NULL payload, bad created_at, oversized, duplicate uid).
    #[arg(long, default_value_t = 5)]
    pub bad_rows_per_kind: u64,
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let spec = CorpusSpec {
        files: args.files,
        days: args.days,
        seed: args.seed,
        bad_rows_per_kind: args.bad_rows_per_kind,
        ..CorpusSpec::default()
    };
    let progress = indicatif::ProgressBar::new(args.files);
    let summary = vera_source::corpus::generate(&args.db, &spec, &|| progress.inc(1)).await?;
    progress.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    /// Rows per slot at most. A slot is one pack task, and its worker writes one segment
    /// per shard address the slot's rows route to, so larger slots mean fewer, larger
    /// segments (and fewer PUTs); a file arriving in a later slot than its day's first
    /// lands in a later generation of that address.
    #[arg(long, default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub slot_rows: u64,
    /// Payload bytes per slot at most (the slot closes at whichever limit comes first).
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub slot_bytes: u64,
    /// Exit once the source has no more rows instead of polling for new ones.
    #[arg(long)]
    pub drain: bool,
    /// In follow mode, how long the producer waits before looking for new rows once it
    /// has caught up: the longest a new row waits for its slot, and so the part of the
    /// pack lag that is the producer's. A longer linger makes fewer, fuller slots, and
    /// fewer small staging writes (docs/adr/0005-staging-and-compaction.md).
    #[arg(long, env = "VERA_LINGER_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub linger_ms: u64,
    /// Serve Prometheus metrics (the source's newest and the committed watermark, and
    /// `vera_producer_unplanned_age_seconds`) at http://ADDR/metrics, e.g. 127.0.0.1:9897.
    #[arg(long, env = "VERA_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn ctrl_c_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down: finishing the task in hand");
            trigger.cancel();
        }
    });
    token
}

pub async fn producer(args: ProducerArgs) -> anyhow::Result<()> {
    let source = args.source.open(None).await?;
    let store: Arc<dyn ObjectStore> = args.store.object_store().await?;
    let bus: Arc<dyn Bus> = args.store.bus(5).await?;
    if let Some(listen) = args.metrics_listen {
        serve_metrics(listen)?;
        vera_producer::metrics::describe();
    }
    // The first producer on a store writes its routing table, if setup did not.
    let routing = args.store.routing_or_init(store.as_ref()).await?;
    let settings = ProducerSettings {
        max_rows_per_slot: args.slot_rows,
        max_bytes_per_slot: args.slot_bytes,
        start_after: i64::MIN,
        poll_interval_millis: args.linger_ms,
        routing,
    };
    let mode = if args.drain { RunMode::Drain } else { RunMode::Follow };
    let report = run_producer(source, store, bus, settings, mode, ctrl_c_token()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct WorkerCommandArgs {
    /// Worker name in logs and audit events.
    #[arg(long, default_value = "worker")]
    pub id: String,
    /// Exit after the pack queue (the ingest queue, with --ingest) has been empty
    /// (nothing visible or in flight) this long.
    #[arg(long)]
    pub exit_when_idle_ms: Option<u64>,
    /// Serve Prometheus metrics (including `vera_queue_depth` for autoscaling) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9898.
    #[arg(long, env = "VERA_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub ingest: crate::ingest::IngestArgs,
}

/// Serves this process's Prometheus metrics at http://LISTEN/metrics.
pub fn serve_metrics(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(vera_worker::metrics::TASK_AGE.into()),
            vera_worker::metrics::TASK_AGE_BUCKETS,
        )
        .map_err(|e| anyhow::anyhow!("bad histogram buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
    tracing::info!(%listen, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// Leaves the bus cleanly before the process exits: a Kafka consumer leaves its group,
/// so the partitions pass on at once instead of after the session timeout.
pub async fn close_bus(bus: &dyn Bus) {
    if let Err(error) = bus.close().await {
        tracing::warn!(%error, "closing the bus failed; its claims return after their timeouts");
    }
}

pub async fn worker(args: WorkerCommandArgs) -> anyhow::Result<()> {
    if args.ingest.ingest {
        return crate::ingest::run(args).await;
    }
    let source = args.source.open(None).await?;
    let store: Arc<dyn ObjectStore> = args.store.object_store().await?;
    let bus: Arc<dyn Bus> = args.store.bus(args.worker.max_attempts).await?;
    let shutdown = start_worker_services(&args, &bus, topics::PACK)?;
    let stats = vera_worker::run_worker(
        &args.id,
        Arc::clone(&bus),
        source,
        args.store.shards(store),
        args.worker.settings()?,
        shutdown,
    )
    .await;
    close_bus(bus.as_ref()).await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

/// A worker's shutdown token (Ctrl-C, or `--exit-when-idle-ms` once `topic` has nothing
/// visible or in flight), with its metrics served if asked.
pub fn start_worker_services(
    args: &WorkerCommandArgs,
    bus: &Arc<dyn Bus>,
    topic: &'static str,
) -> anyhow::Result<CancellationToken> {
    let shutdown = ctrl_c_token();
    if let Some(listen) = args.metrics_listen {
        serve_metrics(listen)?;
        vera_worker::metrics::describe();
        tokio::spawn(vera_worker::metrics::report_queue_depth(
            Arc::clone(bus),
            topics::ALL.to_vec(),
            Duration::from_secs(5),
            shutdown.clone(),
        ));
    }
    if let Some(idle_ms) = args.exit_when_idle_ms {
        let (bus, token) = (Arc::clone(bus), shutdown.clone());
        tokio::spawn(async move {
            let mut idle_since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match bus.depth(topic).await {
                    Ok(depth) if depth.visible == 0 && depth.in_flight == 0 => {
                        if idle_since.elapsed() >= Duration::from_millis(idle_ms) {
                            token.cancel();
                            return;
                        }
                    }
                    _ => idle_since = tokio::time::Instant::now(),
                }
            }
        });
    }
    Ok(shutdown)
}

#[derive(Debug, Clone, Args)]
pub struct SetupBucketArgs {
    /// Bucket default retention in days for objects written without their own; 0 keeps
    /// Object Lock on with no default (VERA sets retention per segment, and mutable
    /// objects such as the watermark must not be locked).
    #[arg(long, default_value_t = 0)]
    pub default_retention_days: i32,
    /// Mode of the bucket default retention.
    #[arg(long, default_value = "compliance", value_parser = crate::common::parse_lock_mode)]
    pub lock_mode: vera_store::LockMode,
    /// Accept an existing bucket without Object Lock. Shards then have no WORM protection:
    /// only for throwaway data.
    #[arg(long)]
    pub allow_without_object_lock: bool,
    /// Storage class that segments superseded by a repack move to, by a bucket lifecycle
    /// rule filtered on their `vera-state=superseded` tag: GLACIER_IR, STANDARD_IA,
    /// ONEZONE_IA or INTELLIGENT_TIERING. Readers still read a superseded segment's
    /// footer and index on a cold cache, so classes that need a restore (GLACIER,
    /// DEEP_ARCHIVE) are refused. `none` installs no rule. The rule only transitions:
    /// archived segments stay under their Object Lock, and nothing is ever expired by it.
    #[arg(long, default_value = "GLACIER_IR")]
    pub archive_storage_class: String,
    /// Days after tagging before the transition.
    #[arg(long, default_value_t = 1)]
    pub archive_after_days: i32,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Creates the bucket with Object Lock, or checks that an existing one has it.
#[cfg(feature = "s3")]
pub async fn setup_bucket(args: SetupBucketArgs) -> anyhow::Result<()> {
    let bucket = args.store.s3_bucket.clone().ok_or_else(|| anyhow::anyhow!("--s3-bucket is required"))?;
    let store = args.store.s3_client(&bucket).await?;
    let setup = vera_store_s3::BucketSetup {
        default_retention: (args.default_retention_days > 0).then_some((args.lock_mode, args.default_retention_days)),
        allow_without_object_lock: args.allow_without_object_lock,
    };
    let state = vera_store_s3::ensure_bucket(&store, setup).await?;
    println!("bucket {bucket}: {state:?}");
    if !args.archive_storage_class.eq_ignore_ascii_case("none") {
        let tag = vera_lifecycle::repack::ARCHIVE_TAG;
        vera_store_s3::ensure_archive_rule(&store, tag, &args.archive_storage_class, args.archive_after_days).await?;
        println!(
            "archive rule {}: objects tagged {}={} move to {} after {} days",
            vera_store_s3::ARCHIVE_RULE_ID,
            tag.0,
            tag.1,
            args.archive_storage_class,
            args.archive_after_days
        );
    }
    let routing = args.store.routing_or_init(&store).await?;
    println!("routing table: {}", serde_json::to_string(&routing)?);
    Ok(())
}

#[cfg(not(feature = "s3"))]
pub async fn setup_bucket(_args: SetupBucketArgs) -> anyhow::Result<()> {
    anyhow::bail!("this vera was built without S3 support; rebuild with `cargo build -p vera --features s3`")
}

#[derive(Debug, Clone, Args)]
pub struct SetupBusArgs {
    /// Deliveries before a message is dead-lettered. On SQS and RabbitMQ this is set on
    /// the queue itself, so workers must use the same value.
    #[arg(long, env = "VERA_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn setup_bus(args: SetupBusArgs) -> anyhow::Result<()> {
    let bus = args.store.bus(args.max_attempts).await?;
    bus.ensure_topics(&topics::ALL).await?;
    println!(
        "bus ready: topics {} with dead-letter queues, max_attempts {}",
        topics::ALL.join(", "),
        args.max_attempts
    );
    Ok(())
}

pub async fn bus_status(args: SetupBusArgs) -> anyhow::Result<()> {
    let bus = args.store.bus(args.max_attempts).await?;
    let mut report = serde_json::Map::new();
    for topic in topics::ALL {
        let depth = bus.depth(topic).await?;
        let dead: Vec<serde_json::Value> = bus
            .dead_letters(topic, 20)
            .await?
            .into_iter()
            .map(|d| serde_json::json!({"message_id": d.message_id, "attempts": d.attempts, "reason": d.reason}))
            .collect();
        report.insert(topic.to_owned(), serde_json::json!({"depth": depth, "dead_letters": dead}));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Topic whose consumer group is rewound.
    #[arg(long, default_value = topics::PACK)]
    pub topic: String,
    /// Offset to restart every partition from (0: the beginning).
    #[arg(long, conflicts_with = "from_time", required_unless_present = "from_time")]
    pub from_offset: Option<i64>,
    /// Restart from the first message at or after this time (RFC 3339, e.g. 2026-11-25T00:00:00Z).
    #[arg(long)]
    pub from_time: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[cfg(feature = "kafka")]
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use vera_bus_kafka::{KafkaBus, ReplayFrom};
    let url = args.store.bus.as_deref().unwrap_or("");
    let crate::bus::BusUrl::Kafka { brokers, params } = crate::bus::BusUrl::parse(url)
        .map_err(|_| anyhow::anyhow!("replay needs a Kafka bus: --bus kafka://HOST:PORT"))?
    else {
        anyhow::bail!("replay needs a Kafka bus (--bus kafka://HOST:PORT); other buses delete acknowledged messages");
    };
    let from = match (args.from_offset, &args.from_time) {
        (Some(offset), _) if offset >= 0 => ReplayFrom::Offset(offset),
        (Some(offset), _) => anyhow::bail!("--from-offset {offset}: offsets start at 0"),
        (None, Some(time)) => {
            let parsed = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .map_err(|e| anyhow::anyhow!("--from-time {time}: not an RFC 3339 time ({e})"))?;
            ReplayFrom::TimeMillis(i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)?)
        }
        (None, None) => anyhow::bail!("give --from-offset or --from-time"),
    };
    let bus = KafkaBus::connect(crate::bus::kafka_settings(brokers, &params, 5)?).await?;
    let offsets = bus.replay(&args.topic, from).await?;
    println!("{}", serde_json::json!({"topic": args.topic, "partitions": offsets}));
    Ok(())
}

#[cfg(not(feature = "kafka"))]
pub async fn replay(_args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("this vera was built without Kafka support; rebuild with `cargo build -p vera --features kafka`")
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VERA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Seconds a segment's cached sidecar (its tombstones) is trusted before it is read
    /// again. A segment's first tombstone shows at once (the read sees the segment's new
    /// tag); later ones show when the bus's `events` reach this reader, and at the
    /// latest after this long, which is the safety net for missed events. While events
    /// are followed, an address's missing next generation is remembered as long at most,
    /// so repeated reads of a uid that is not there cost no S3 request.
    #[arg(long, env = "VERA_SIDECAR_TTL_SECONDS", default_value_t = 5)]
    pub sidecar_ttl_seconds: u64,
    /// Do not publish READ audit events (for local inspection only).
    #[arg(long)]
    pub no_audit: bool,
    /// Do not subscribe to the bus's `events` topic to drop cached sidecars on tombstones
    /// and repacks; they then expire after --sidecar-ttl-seconds only.
    #[arg(long)]
    pub no_events: bool,
    /// Memory budget of the index cache, in MiB. A format 2 segment costs about 8 bytes
    /// per file plus its zstd dictionary (up to 110 KiB); the least recently useful
    /// segments are dropped and read again (one suffix GET) when needed.
    #[arg(long, env = "VERA_INDEX_CACHE_MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub index_cache_mib: u64,
    /// Bytes of a segment's end, in KiB, that a cold read fetches to get its footer and
    /// index (one GET). A record inside them is served from them, so a cold read of a
    /// segment no larger than this (a day's late arrivals, say) costs that one GET and no
    /// data GET. Larger values trade transfer for requests on cold reads; an index that
    /// does not fit costs one more GET, after which the reader asks for more.
    #[arg(long, env = "VERA_SUFFIX_KIB", default_value_t = vera_store::shards::DEFAULT_SUFFIX_BYTES / 1024, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub suffix_kib: u64,
    /// The same for a later generation (1, 2, …) of an address, which holds late arrivals
    /// and is usually small: a suffix this long is usually the whole segment, so a late
    /// arrival costs generation 0's suffix and this one GET, with no data GET. Never less
    /// than --suffix-kib. `vera stats` reports the largest later generation.
    #[arg(long, env = "VERA_LATER_SUFFIX_KIB", default_value_t = vera_store::shards::DEFAULT_LATER_SUFFIX_BYTES / 1024, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub later_suffix_kib: u64,
    /// Take uploads: `PUT /v1/files/{uid}?created_at=…` answers 201 once the file is
    /// durable on the bus's `ingest` topic (inline, or staged under --landing-prefix when
    /// larger than a bus message), for ingest workers (`vera worker --ingest`) to pack.
    /// Off by default: a reader only reads.
    #[arg(long, env = "VERA_SERVE_INGEST")]
    pub ingest: bool,
    /// Where uploads too large for one bus message are staged; the ingest workers'
    /// --landing-prefix.
    #[arg(long, env = "VERA_LANDING_PREFIX", default_value = "landing/")]
    pub landing_prefix: String,
    /// Largest upload accepted (413 above); the ingest workers' --max-file-bytes.
    #[arg(long, env = "VERA_MAX_FILE_BYTES", default_value_t = 512 * 1024)]
    pub max_file_bytes: u64,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let objects = args.store.object_store().await?;
    // Read before the counting starts: the request figures are the reads'.
    let routing = args.store.routing(objects.as_ref()).await?;
    let counting = vera_store::counting::CountingStore::new(objects);
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = Arc::new(counting);
    let shutdown = ctrl_c_token();
    let bus = if args.no_audit && args.no_events && !args.ingest { None } else { Some(args.store.bus(5).await?) };
    let (audit, audit_task) = match &bus {
        Some(bus) if !args.no_audit => {
            let (sender, task) = vera_reader::audit::spawn(bus.clone(), Duration::from_secs(1), shutdown.clone());
            (Some(sender), Some(task))
        }
        _ => (None, None),
    };
    let settings = vera_reader::ReaderSettings {
        sidecar_ttl: Duration::from_secs(args.sidecar_ttl_seconds),
        ..vera_reader::ReaderSettings::default()
    };
    let mut reader = vera_reader::Reader::new(
        args.store
            .shards(store)
            .with_cache_budget(args.index_cache_mib * 1024 * 1024)
            .with_suffix_bytes(args.suffix_kib * 1024)
            .with_later_suffix_bytes(args.later_suffix_kib * 1024),
        routing,
        audit,
        settings,
    )
    .with_store_counts(counts);
    if let (Some(bus), true) = (&bus, args.ingest) {
        reader = reader.with_ingest(vera_reader::ingest::HttpIngest {
            bus: Arc::clone(bus),
            landing: args.store.object_store().await?,
            landing_prefix: args.landing_prefix.clone(),
            max_file_bytes: args.max_file_bytes,
        });
    }
    let reader = Arc::new(reader);
    let events_task = match bus {
        Some(bus) if !args.no_events => Some(vera_reader::events::spawn(reader.clone(), bus, shutdown.clone())),
        _ => None,
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving files");
    let token = shutdown.clone();
    vera_reader::serve(listener, vera_reader::router(reader, Some(metrics)), async move { token.cancelled().await })
        .await?;
    shutdown.cancel();
    if let Some(task) = audit_task {
        let _ = task.await;
    }
    if let Some(task) = events_task {
        let _ = task.await;
    }
    Ok(())
}
