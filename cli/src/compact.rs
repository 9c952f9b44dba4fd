//! `vera compact`: merges staging segments into final generations once their time slice
//! has closed (docs/adr/0005-staging-and-compaction.md). One pass, or one every
//! `--every-seconds` until Ctrl-C; a Kubernetes CronJob runs single passes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use vera_compact::{CompactSettings, Compactor};

use crate::common::{StoreArgs, WorkerArgs};

#[derive(Debug, Clone, Args)]
pub struct CompactArgs {
    /// Run a pass every this many seconds until Ctrl-C, instead of one pass.
    #[arg(long, env = "VERA_COMPACT_EVERY_SECONDS")]
    pub every_seconds: Option<u64>,
    /// Merge an address no sooner than this long after its time slice ends.
    #[arg(long, env = "VERA_COMPACT_CLOSE_DELAY_SECONDS", default_value_t = CompactSettings::default().close_delay_seconds)]
    pub close_delay_seconds: u64,
    /// ... and only once its newest staging segment is this old.
    #[arg(long, env = "VERA_COMPACT_QUIET_SECONDS", default_value_t = CompactSettings::default().quiet_seconds)]
    pub quiet_seconds: u64,
    /// Late rows at an address that already has a final generation wait until its slice
    /// ended this long ago, so that they make one more generation, not one per batch.
    #[arg(long, env = "VERA_COMPACT_ALLOWED_LATENESS_SECONDS", default_value_t = CompactSettings::default().allowed_lateness_seconds)]
    pub allowed_lateness_seconds: u64,
    /// Serve Prometheus metrics (vera_compact_*) at http://ADDR/metrics.
    #[arg(long, env = "VERA_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The workers' settings: compression and retention of the merged segments.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl CompactArgs {
    fn settings(&self) -> CompactSettings {
        CompactSettings {
            close_delay_seconds: self.close_delay_seconds,
            quiet_seconds: self.quiet_seconds,
            allowed_lateness_seconds: self.allowed_lateness_seconds,
        }
    }
}

pub async fn compact(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let objects = args.store.object_store().await?;
    let routing = args.store.routing(objects.as_ref()).await?;
    let bus = args.store.bus(args.worker.max_attempts).await?;
    if let Some(listen) = args.metrics_listen {
        crate::run::serve_metrics(listen)?;
        vera_compact::metrics::describe();
    }
    let compactor = Compactor::new(
        args.store.shards(objects),
        routing,
        Arc::clone(&bus),
        Arc::new(vera_store::SystemClock),
        args.worker.settings()?,
        args.settings(),
    );
    let Some(every) = args.every_seconds else {
        let result = compactor.run_once().await;
        crate::run::close_bus(bus.as_ref()).await;
        println!("{}", serde_json::to_string_pretty(&result?)?);
        return Ok(ExitCode::SUCCESS);
    };
    let shutdown = crate::run::ctrl_c_token();
    loop {
        match compactor.run_once().await {
            Ok(report) => println!("{}", serde_json::to_string(&report)?),
            // A failed pass is repeated by the next one; nothing is half-done.
            Err(error) => tracing::error!(error = %anyhow::Error::from(error), "compaction pass failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
        }
    }
    crate::run::close_bus(bus.as_ref()).await;
    Ok(ExitCode::SUCCESS)
}
