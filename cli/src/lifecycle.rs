//! Lifecycle commands: `vera delete` (tombstones, one file or a list), `vera retain`,
//! `vera hold`, `vera lifecycle-tracker` and `vera repack`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use vera_lifecycle::{DeleteOutcome, DeleteRequest, HoldRequest, Lifecycle, LockOutcome, RetainRequest};
use vera_protocol::Timestamp;
use vera_protocol::sidecar::TombstoneReason;

use crate::common::StoreArgs;
use crate::trust::{AuthArgs, Gate, authorize};
use vera_audit::operator::Action;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Reason {
    /// GDPR Art. 17 erasure request.
    GdprErasure,
    /// Retention ran out and policy says delete.
    RetentionExpired,
    /// Ingested by mistake (wrong tenant, duplicate, test data).
    IngestError,
    /// Any other operator decision, explained in the ticket named by --request-id.
    OperatorRequest,
}

impl From<Reason> for TombstoneReason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::GdprErasure => TombstoneReason::GdprErasure,
            Reason::RetentionExpired => TombstoneReason::RetentionExpired,
            Reason::IngestError => TombstoneReason::IngestError,
            Reason::OperatorRequest => TombstoneReason::OperatorRequest,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The file's uid (or use --list).
    #[arg(required_unless_present = "list", requires = "created_at")]
    pub uid: Option<String>,
    /// The file's created_at (RFC 3339, or integer microseconds since the Unix epoch).
    #[arg(long)]
    pub created_at: Option<String>,
    /// A file of `UID CREATED_AT` lines (blank lines and lines starting with # skipped).
    #[arg(long, conflicts_with = "uid")]
    pub list: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gdpr-erasure")]
    pub reason: Reason,
    /// The ticket or request this erasure answers; recorded in the sidecar and the audit log.
    #[arg(long)]
    pub request_id: String,
    /// Who asks (an operator id, not a name with spaces); for unsigned requests. A signed
    /// request runs as its principal.
    #[arg(long, env = "VERA_OPERATOR")]
    pub operator: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub(crate) fn parse_list(text: &str) -> anyhow::Result<Vec<(String, Timestamp)>> {
    let mut files = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(uid), Some(created_at), None) = (fields.next(), fields.next(), fields.next()) else {
            anyhow::bail!("line {}: expected `UID CREATED_AT`, got {line:?}", number + 1);
        };
        let created_at = Timestamp::parse(created_at).with_context(|| format!("line {}", number + 1))?;
        files.push((uid.to_owned(), created_at));
    }
    Ok(files)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let files = match (&args.list, &args.uid, &args.created_at) {
        (Some(path), _, _) => {
            parse_list(&std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?)?
        }
        (None, Some(uid), Some(created_at)) => vec![(uid.clone(), Timestamp::parse(created_at)?)],
        _ => anyhow::bail!("name a file (UID --created-at TIME) or a --list"),
    };
    let (lifecycle, bus) = lifecycle(&args.store).await?;
    let listed: Vec<serde_json::Value> =
        files.iter().map(|(uid, at)| serde_json::json!([uid, at.to_rfc3339()])).collect();
    let reason = args.reason.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    let request_args =
        json_map([("files", listed.into()), ("reason", reason.into()), ("request_id", args.request_id.clone().into())]);
    let store = lifecycle.shards().store().clone();
    let gate = authorize(
        &args.auth,
        Action::Delete,
        request_args,
        args.operator.as_deref(),
        store.as_ref(),
        Some(bus.as_ref()),
    )
    .await?;
    let Gate::Run { operator, .. } = gate else { return Ok(ExitCode::SUCCESS) };
    let mut failed = 0;
    for (uid, created_at) in files {
        let request = DeleteRequest {
            uid: uid.clone(),
            created_at,
            reason: args.reason.into(),
            request_id: args.request_id.clone(),
            operator: operator.clone(),
        };
        match lifecycle.delete(&request).await {
            Ok(DeleteOutcome::Tombstoned { segment_key }) => println!("tombstoned {uid} in {segment_key}"),
            Ok(DeleteOutcome::AlreadyTombstoned { segment_key }) => {
                println!("already tombstoned {uid} in {segment_key}")
            }
            Err(error) => {
                failed += 1;
                eprintln!("error: {uid}: {:#}", anyhow::Error::from(error));
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn parse_threshold(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("the threshold is a share of a segment's bytes, above 0 and at most 1; got {value}"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct TrackerArgs {
    /// Share of a segment's stored bytes tombstoned that requests its repack.
    #[arg(long, env = "VERA_REPACK_THRESHOLD", default_value = "0.3", value_parser = parse_threshold)]
    pub threshold: f64,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs the lifecycle tracker until Ctrl-C; prints its figures as JSON when it stops.
pub async fn tracker(args: TrackerArgs) -> anyhow::Result<ExitCode> {
    let (lifecycle, bus) = lifecycle(&args.store).await?;
    let lifecycle = Arc::new(lifecycle);
    let shutdown = crate::run::ctrl_c_token();
    tracing::info!(threshold = args.threshold, "lifecycle tracker running");
    let stats = vera_lifecycle::tracker::run_tracker(lifecycle, Arc::clone(&bus), args.threshold, shutdown).await;
    crate::run::close_bus(bus.as_ref()).await;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(ExitCode::SUCCESS)
}

async fn lifecycle(store: &StoreArgs) -> anyhow::Result<(Lifecycle, Arc<dyn vera_bus::Bus>)> {
    let bus = store.bus(5).await?;
    let objects = store.object_store().await?;
    let routing = store.routing(objects.as_ref()).await?;
    let lifecycle = Lifecycle::new(store.shards(objects), routing, Arc::clone(&bus), Arc::new(vera_store::SystemClock));
    Ok((lifecycle, bus))
}

fn print_lock(uid: &str, outcome: &LockOutcome) {
    let until = outcome.segment_retain_until.map_or_else(|| "no retention".to_owned(), |t| t.to_rfc3339());
    println!(
        "{uid}: {} in {}; segment locked until {until}, legal hold {}",
        if outcome.changed { "recorded" } else { "already recorded" },
        outcome.segment_key,
        if outcome.segment_legal_hold { "on" } else { "off" }
    );
}

/// What every per-file lock request names: the file, the request and the operator.
#[derive(Debug, Clone, Args)]
pub struct FileRequestArgs {
    /// The file's uid.
    pub uid: String,
    /// The file's created_at (RFC 3339, or integer microseconds since the Unix epoch).
    #[arg(long)]
    pub created_at: String,
    /// The ticket, case or request behind this change; recorded in the sidecar and the
    /// audit log.
    #[arg(long)]
    pub request_id: String,
    /// Who asks (an operator id, not a name with spaces); for unsigned requests. A signed
    /// request runs as its principal.
    #[arg(long, env = "VERA_OPERATOR")]
    pub operator: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl FileRequestArgs {
    /// Passes the signed-request gate; `None` when the request was only emitted.
    async fn gate(
        &self,
        action: Action,
        extra: (&str, serde_json::Value),
        lifecycle: &Lifecycle,
        bus: &dyn vera_bus::Bus,
    ) -> anyhow::Result<Option<String>> {
        let request_args = json_map([
            ("uid", self.uid.clone().into()),
            ("created_at", Timestamp::parse(&self.created_at)?.to_rfc3339().into()),
            (extra.0, extra.1),
            ("request_id", self.request_id.clone().into()),
        ]);
        let store = lifecycle.shards().store().clone();
        match authorize(&self.auth, action, request_args, self.operator.as_deref(), store.as_ref(), Some(bus)).await? {
            Gate::Run { operator, .. } => Ok(Some(operator)),
            Gate::Emitted => Ok(None),
        }
    }
}

fn json_map<const N: usize>(pairs: [(&str, serde_json::Value); N]) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(key, value)| (key.to_owned(), value)).collect()
}

#[derive(Debug, Clone, Args)]
pub struct RetainArgs {
    /// Keep the file at least until this time (RFC 3339). Earlier than its current
    /// retention is refused: retention only ever grows.
    #[arg(long)]
    pub until: String,
    #[command(flatten)]
    pub file: FileRequestArgs,
}

/// Extends one file's retention: recorded in its segment's sidecar, and the segment's
/// Object Lock raised to cover it.
pub async fn retain(args: RetainArgs) -> anyhow::Result<()> {
    let (lifecycle, bus) = lifecycle(&args.file.store).await?;
    let until = Timestamp::parse(&args.until)?;
    let gate = args.file.gate(Action::Retain, ("until", until.to_rfc3339().into()), &lifecycle, bus.as_ref()).await?;
    let Some(operator) = gate else { return Ok(()) };
    let FileRequestArgs { uid, created_at, request_id, .. } = args.file;
    let request = RetainRequest {
        uid: uid.clone(),
        created_at: Timestamp::parse(&created_at)?,
        retain_until: Timestamp::parse(&args.until)?,
        request_id,
        operator,
    };
    print_lock(&uid, &lifecycle.retain(&request).await?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// Set the legal hold.
    #[arg(long, conflicts_with = "off", required_unless_present = "off")]
    pub on: bool,
    /// Clear the legal hold (the segment's own hold goes when no file in it is held).
    #[arg(long)]
    pub off: bool,
    #[command(flatten)]
    pub file: FileRequestArgs,
}

/// Sets or clears one file's legal hold.
pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let (lifecycle, bus) = lifecycle(&args.file.store).await?;
    let Some(operator) = args.file.gate(Action::Hold, ("hold", args.on.into()), &lifecycle, bus.as_ref()).await? else {
        return Ok(());
    };
    let FileRequestArgs { uid, created_at, request_id, .. } = args.file;
    let request =
        HoldRequest { uid: uid.clone(), created_at: Timestamp::parse(&created_at)?, on: args.on, request_id, operator };
    print_lock(&uid, &lifecycle.hold(&request).await?);
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct RepackArgs {
    /// Segment keys to repack now (e.g. e1/d2026-11-24/n04-a/g000000.vera).
    #[arg(conflicts_with = "from_bus")]
    pub segments: Vec<String>,
    /// Take the segments from RepackRequested messages on the `repack` topic instead,
    /// and stop when it is empty (the form a Kubernetes CronJob runs).
    #[arg(long)]
    pub from_bus: bool,
    /// With --from-bus: keep consuming until Ctrl-C instead of stopping when idle.
    #[arg(long, requires = "from_bus")]
    pub follow: bool,
    /// Recorded in the sidecars and the REPACK audit anchor of segments named here.
    #[arg(long, default_value = "operator-repack")]
    pub request_id: String,
    /// Do not tag superseded segments for the archive lifecycle rule.
    #[arg(long)]
    pub no_archive: bool,
    /// Signing for a forced repack of named segments (--from-bus runs what the tracker
    /// requested and needs none).
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Repacks segments: drops tombstoned files that are under neither retention nor hold
/// into a new segment and supersedes the old one. Resumes an interrupted repack.
pub async fn repack(args: RepackArgs) -> anyhow::Result<ExitCode> {
    let (lifecycle, bus) = lifecycle(&args.store).await?;
    let settings = vera_lifecycle::RepackSettings { archive: !args.no_archive, ..Default::default() };
    if args.from_bus {
        let shutdown = crate::run::ctrl_c_token();
        let stats = vera_lifecycle::repack::run_repacker(
            Arc::new(lifecycle),
            Arc::clone(&bus),
            settings,
            shutdown,
            !args.follow,
        )
        .await;
        crate::run::close_bus(bus.as_ref()).await;
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(if stats.dead_lettered == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if args.segments.is_empty() {
        anyhow::bail!("name the segments to repack, or use --from-bus");
    }
    let request_args =
        json_map([("segments", args.segments.clone().into()), ("request_id", args.request_id.clone().into())]);
    let store = lifecycle.shards().store().clone();
    let gate =
        authorize(&args.auth, Action::Repack, request_args, Some("operator"), store.as_ref(), Some(bus.as_ref()))
            .await?;
    if matches!(gate, Gate::Emitted) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for key in &args.segments {
        match lifecycle.repack(key, &args.request_id, &settings).await {
            Ok(report) => println!("{}", serde_json::to_string(&report)?),
            Err(error) => {
                failed += 1;
                eprintln!("error: {key}: {:#}", anyhow::Error::from(error));
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_lines_name_their_number() {
        let files = parse_list("# erasures\nf1 2026-11-20T10:00:00Z\n\n  f2   2026-11-21T00:00:00Z \n").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].0, "f2");
        assert!(parse_list("f1\n").unwrap_err().to_string().contains("line 1"));
        assert!(format!("{:#}", parse_list("ok 2026-11-20T10:00:00Z\nf2 yesterday\n").unwrap_err()).contains("line 2"));
        assert!(parse_list("a b c\n").unwrap_err().to_string().contains("UID CREATED_AT"));
    }

    #[test]
    fn thresholds_are_shares() {
        assert_eq!(parse_threshold("0.3"), Ok(0.3));
        assert_eq!(parse_threshold("1"), Ok(1.0));
        assert!(parse_threshold("0").unwrap_err().contains("above 0"));
        assert!(parse_threshold("30").unwrap_err().contains("at most 1"));
        assert!(parse_threshold("lots").unwrap_err().contains("not a number"));
    }
}
