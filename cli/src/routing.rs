//! `vera routing`: the routing table every role reads from the store.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome};
use vera_protocol::routing::{RoutingEpoch, TimeGranularity};
use vera_store::{Clock, SystemClock};

use crate::common::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum RoutingCommand {
    /// Print the store's routing table (the latest version) as JSON.
    Show(ShowArgs),
    /// Write the store's first routing table from --n-bits (daily buckets), once:
    /// create-if-absent, so of two racing writers exactly one wins. Running it again with
    /// the same table is fine; a different one is refused.
    Init(ShowArgs),
    /// Add a routing epoch for files created from --from on: a new version of the table,
    /// written create-if-absent and recorded as a ROUTING audit event. --from must lie in
    /// the future, so every file already created keeps its address.
    AddEpoch(AddEpochArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct AddEpochArgs {
    /// The first `created_at` (RFC 3339) the epoch routes; after now and after the last
    /// epoch's start.
    #[arg(long)]
    pub from: String,
    /// Time buckets of the new epoch: hour, day or month.
    #[arg(long, value_parser = parse_granularity)]
    pub granularity: TimeGranularity,
    /// Hash bits of the new epoch: 2^n addresses per time bucket.
    #[arg(long = "epoch-n-bits")]
    pub epoch_n_bits: u8,
    /// Who adds the epoch, for an unsigned request's audit event (signed ones take the
    /// principal).
    #[arg(long, env = "VERA_OPERATOR")]
    pub operator: Option<String>,
    #[command(flatten)]
    pub auth: crate::trust::AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_granularity(text: &str) -> Result<TimeGranularity, String> {
    match text {
        "hour" => Ok(TimeGranularity::Hour),
        "day" => Ok(TimeGranularity::Day),
        "month" => Ok(TimeGranularity::Month),
        "year" => Ok(TimeGranularity::Year),
        other => Err(format!("unknown granularity {other:?} (hour, day, month, year)")),
    }
}

pub async fn run(command: RoutingCommand) -> anyhow::Result<ExitCode> {
    match command {
        RoutingCommand::Show(args) => {
            let store = args.store.object_store().await?;
            let table = args.store.routing(store.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&table)?);
        }
        RoutingCommand::Init(args) => {
            let store = args.store.object_store().await?;
            let table = args.store.routing_or_init(store.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&table)?);
        }
        RoutingCommand::AddEpoch(args) => {
            let from = Timestamp::parse(&args.from).context("--from is not RFC 3339")?;
            // The id is assigned from the table; 1 here only passes the parameter checks.
            let epoch = RoutingEpoch::new(1, args.granularity, args.epoch_n_bits)?;
            let store = args.store.object_store().await?;
            let bus = args.store.bus(5).await?;
            // Where allowed signers are configured, only a signed request by a principal
            // with the `router` role adds an epoch.
            let mut request_args = serde_json::Map::new();
            request_args.insert("from".into(), from.to_rfc3339().into());
            request_args.insert("granularity".into(), format!("{:?}", args.granularity).to_lowercase().into());
            request_args.insert("epoch_n_bits".into(), args.epoch_n_bits.into());
            let gate = crate::trust::authorize(
                &args.auth,
                vera_audit::operator::Action::Routing,
                request_args,
                args.operator.as_deref(),
                store.as_ref(),
                Some(bus.as_ref()),
            )
            .await?;
            let crate::trust::Gate::Run { operator, .. } = gate else { return Ok(ExitCode::SUCCESS) };
            let now = SystemClock.now();
            let stored = vera_store::routing_table::add_epoch(store.as_ref(), from, epoch, now, None).await?;
            let added = stored.table.epochs.last().context("the new table has no epochs")?;
            let details = BTreeMap::from([
                ("version".to_owned(), stored.version.to_string()),
                ("epoch".to_owned(), added.epoch.id.to_string()),
                ("effective_from".to_owned(), added.effective_from.to_string()),
                ("n_bits".to_owned(), added.epoch.n_bits.to_string()),
                ("granularity".to_owned(), format!("{:?}", added.epoch.granularity).to_lowercase()),
            ]);
            let event = AuditEvent {
                action: AuditAction::Routing,
                outcome: AuditOutcome::Ok,
                at: now,
                actor: operator,
                request_id: None,
                uid: None,
                segment_key: Some(vera_store::routing_table::routing_key(stored.version)),
                details,
            };
            crate::trust::publish_audit(bus.as_ref(), format!("routing/v{}", stored.version), now, event)
                .await
                .context("the epoch was added but its ROUTING audit event was not published")?;
            crate::run::close_bus(bus.as_ref()).await;
            println!("{}", serde_json::to_string_pretty(&stored.table)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The median time bucket should hold at least this many files: the planner takes the
    /// finest granularity (hour, day, month, year) where it does.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_files_per_segment: u64,
    /// A segment should hold at most this many MiB; hash bits are added until the largest
    /// bucket's segments do, and until their index fits the reader's cold-read suffix.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_segment_mib: u64,
    /// Write the proposed table as the store's first routing table (refused if the store
    /// already holds a different one: epochs can then only be added for the future, with
    /// `vera routing add-epoch`).
    #[arg(long)]
    pub apply: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: crate::common::SourceArgs,
}

/// The source's `created_at` histogram (files and bytes per hour); `on_row` is called
/// once per row read.
pub async fn source_histogram(
    source: &dyn vera_source::Source,
    on_row: &(dyn Fn() + Sync),
) -> anyhow::Result<vera_producer::plan::Histogram> {
    use futures::StreamExt;
    let mut histogram = vera_producer::plan::Histogram::default();
    let mut rows = source.scan_sizes();
    while let Some(row) = rows.next().await {
        let (created_at, bytes) = row?;
        histogram.add(created_at.as_deref().and_then(|text| Timestamp::parse(text).ok()), bytes);
        on_row();
    }
    Ok(histogram)
}

/// `vera plan`: read the source's `created_at` histogram and propose a routing table.
pub async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let source = args.source.open(None).await?;
    let progress = indicatif::ProgressBar::new_spinner()
        .with_style(indicatif::ProgressStyle::with_template("{spinner} {human_pos} rows read ({per_sec})")?);
    let histogram = source_histogram(source.as_ref(), &|| progress.inc(1)).await?;
    progress.finish_and_clear();
    let targets = vera_producer::plan::PlanTargets {
        min_files_per_segment: args.min_files_per_segment,
        max_segment_bytes: args.max_segment_mib.saturating_mul(1 << 20),
        ..vera_producer::plan::PlanTargets::default()
    };
    let plan = vera_producer::plan::propose(&histogram, &targets)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        println!(
            "{} files ({} without a readable created_at): {} segments expected, {:.0} files per segment, {} PUTs",
            plan.files, plan.undated, plan.expected_segments, plan.files_per_segment, plan.expected_puts
        );
        for epoch in &plan.epochs {
            println!(
                "  from {}: {:?} buckets, {} bits; {} files in {} buckets, {} segments",
                epoch.effective_from,
                epoch.granularity,
                epoch.n_bits,
                epoch.files,
                epoch.buckets,
                epoch.expected_segments
            );
        }
    }
    if args.apply {
        let store = args.store.object_store().await?;
        vera_store::routing_table::init(store.as_ref(), &plan.table, SystemClock.now(), None).await?;
        eprintln!("wrote the routing table ({})", vera_store::routing_table::routing_key(1));
    }
    Ok(ExitCode::SUCCESS)
}
