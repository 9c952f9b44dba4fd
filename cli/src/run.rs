//! Long-running roles and the corpus generator as subcommands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_producer::{ProducerSettings, RunMode, run_producer};
use vera_source::Source;
use vera_store::ObjectStore;

use crate::common::{SourceArgs, StoreArgs, WorkerArgs};
use crate::generate::CorpusSpec;

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
    let summary = crate::generate::generate(&args.db, &spec, &progress).await?;
    progress.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    #[arg(long, default_value_t = 25_000)]
    pub slot_rows: u64,
    #[arg(long, default_value_t = 1 << 30)]
    pub slot_bytes: u64,
    /// Exit once the source has no more rows instead of polling for new ones.
    #[arg(long)]
    pub drain: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn ctrl_c_token() -> CancellationToken {
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
    let store: Arc<dyn ObjectStore> = Arc::new(args.store.local_store()?);
    let bus: Arc<dyn Bus> = args.store.bus(5).await?;
    let settings = ProducerSettings {
        max_rows_per_slot: args.slot_rows,
        max_bytes_per_slot: args.slot_bytes,
        start_after: i64::MIN,
        poll_interval_millis: 1000,
        routing: args.store.routing()?,
    };
    let mode = if args.drain { RunMode::Drain } else { RunMode::Follow };
    let report = run_producer(source as Arc<dyn Source>, store, bus, settings, mode, ctrl_c_token()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct WorkerCommandArgs {
    /// Worker name in logs and audit events.
    #[arg(long, default_value = "worker")]
    pub id: String,
    /// Exit after the pack queue has been empty (nothing visible or in flight) this long.
    #[arg(long)]
    pub exit_when_idle_ms: Option<u64>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub async fn worker(args: WorkerCommandArgs) -> anyhow::Result<()> {
    let source = args.source.open(None).await?;
    let store: Arc<dyn ObjectStore> = Arc::new(args.store.local_store()?);
    let bus = args.store.bus(args.worker.max_attempts).await?;
    let shutdown = ctrl_c_token();
    if let Some(idle_ms) = args.exit_when_idle_ms {
        let (bus, token) = (Arc::clone(&bus), shutdown.clone());
        tokio::spawn(async move {
            let mut idle_since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match bus.depth(topics::PACK).await {
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
    let stats = vera_worker::run_worker(
        &args.id,
        bus as Arc<dyn Bus>,
        source as Arc<dyn Source>,
        args.store.shards(store),
        args.worker.settings()?,
        shutdown,
    )
    .await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
