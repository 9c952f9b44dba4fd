//! `vera delete`: tombstones, one file or a list.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use vera_lifecycle::{DeleteOutcome, DeleteRequest, Lifecycle};
use vera_protocol::Timestamp;
use vera_protocol::sidecar::TombstoneReason;

use crate::common::StoreArgs;

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
    /// Who asks (an operator id, not a name with spaces).
    #[arg(long, env = "VERA_OPERATOR")]
    pub operator: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_list(text: &str) -> anyhow::Result<Vec<(String, Timestamp)>> {
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
    let store = args.store.object_store().await?;
    let lifecycle = Lifecycle::new(
        args.store.shards(store),
        args.store.routing()?,
        args.store.bus(5).await?,
        Arc::new(vera_store::SystemClock),
    );
    let mut failed = 0;
    for (uid, created_at) in files {
        let request = DeleteRequest {
            uid: uid.clone(),
            created_at,
            reason: args.reason.into(),
            request_id: args.request_id.clone(),
            operator: args.operator.clone(),
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
    let store = args.store.object_store().await?;
    let bus = args.store.bus(5).await?;
    let lifecycle = Arc::new(Lifecycle::new(
        args.store.shards(store),
        args.store.routing()?,
        Arc::clone(&bus),
        Arc::new(vera_store::SystemClock),
    ));
    let shutdown = crate::run::ctrl_c_token();
    tracing::info!(threshold = args.threshold, "lifecycle tracker running");
    let stats = vera_lifecycle::tracker::run_tracker(lifecycle, bus, args.threshold, shutdown).await;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(ExitCode::SUCCESS)
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
