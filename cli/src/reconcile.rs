//! `vera reconcile`: prove that every source row of a range is archived or rejected,
//! and with `--attest`, sign that statement and record it in the audit log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use vera_producer::reconcile::{ReconcileRange, ReconcileReport, ReconcileSettings, reconcile};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome};
use vera_store::{Clock, SystemClock};

use crate::common::{SourceArgs, StoreArgs};
use crate::trust::{SignerArgs, publish_audit};

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Rows with a watermark above this (default: from the first row).
    #[arg(long, allow_hyphen_values = true)]
    pub from_watermark: Option<i64>,
    /// Rows with a watermark at or below this (default: to the last row).
    #[arg(long, allow_hyphen_values = true)]
    pub to_watermark: Option<i64>,
    /// Only rows created at or after this time (RFC 3339); also counts stored files of
    /// the range that no source row matches. The source is still read by watermark, so
    /// narrow it with --from-watermark/--to-watermark on a large table.
    #[arg(long, requires = "created_to")]
    pub created_from: Option<String>,
    /// ...and before this time.
    #[arg(long, requires = "created_from")]
    pub created_to: Option<String>,
    /// Write a signed attestation of a complete range to FILE (refused if anything is
    /// missing) and publish a RECONCILE audit event carrying its hash. Check it with
    /// `vera proof verify-attestation FILE`.
    #[arg(long, value_name = "FILE")]
    pub attest: Option<PathBuf>,
    /// Who runs the reconcile, for the audit event.
    #[arg(long, env = "VERA_OPERATOR", default_value = "reconcile")]
    pub operator: String,
    /// Publish a one-row pack task for each missing row listed (at most 100 a run), so
    /// that workers pack rows that appeared behind the producer's watermark; run
    /// reconcile again once they are done.
    #[arg(long, conflicts_with = "attest")]
    pub republish: bool,
    /// Addresses whose file lists are held in memory at once.
    #[arg(long, default_value_t = 256)]
    pub cached_addresses: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub signer: SignerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let created = match (&args.created_from, &args.created_to) {
        (Some(from), Some(to)) => Some((
            Timestamp::parse(from).context("--created-from is not RFC 3339")?,
            Timestamp::parse(to).context("--created-to is not RFC 3339")?,
        )),
        _ => None,
    };
    let range = ReconcileRange {
        watermarks: (args.from_watermark.unwrap_or(i64::MIN), args.to_watermark.unwrap_or(i64::MAX)),
        created,
    };
    // Fail before the scan, not after it, if the attestation cannot be signed.
    let signer = match &args.attest {
        Some(_) => Some(args.signer.open().await.context("--attest needs a signing key")?),
        None => None,
    };
    let source = args.source.open(None).await?;
    let store = args.store.object_store().await?;
    let routing = args.store.routing(store.as_ref()).await?;
    let progress = indicatif::ProgressBar::new_spinner()
        .with_style(indicatif::ProgressStyle::with_template("{spinner} {human_pos} rows read ({per_sec})")?);
    let settings = ReconcileSettings { cached_addresses: args.cached_addresses };
    let report = reconcile(source.as_ref(), store, &routing, &range, &settings, &|| progress.inc(1)).await?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", to_text(&report));
    }
    if args.republish && !report.missing_rows.is_empty() {
        let bus = args.store.bus(5).await?;
        let published = vera_producer::republish(bus.as_ref(), source.name(), &routing, &report.missing_rows).await?;
        crate::run::close_bus(bus.as_ref()).await;
        eprintln!(
            "published {published} one-row pack task(s) for the missing rows listed; reconcile again once workers are done"
        );
    }
    if !report.complete() {
        eprintln!(
            "error: {} row(s) missing and {} stored twice in this range{}",
            report.missing,
            report.stored_twice,
            if args.attest.is_some() { "; no attestation written" } else { "" }
        );
        return Ok(ExitCode::FAILURE);
    }
    if let (Some(path), Some((signer, verifier_keys))) = (&args.attest, signer) {
        attest(&args, path, signer.as_ref(), &verifier_keys, &report).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The statement an attestation signs: the report, and the sentence it proves.
fn statement(report: &ReconcileReport) -> anyhow::Result<serde_json::Value> {
    let range = match (report.created_from, report.created_to) {
        (Some(from), Some(to)) => {
            format!("created in [{from}, {to}) with watermarks in ({}, {}]", report.watermark_from, report.watermark_to)
        }
        _ => format!("with watermarks in ({}, {}]", report.watermark_from, report.watermark_to),
    };
    let reasons: Vec<String> = report.rejected_by_reason.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
    let mut summary = format!(
        "all {} rows of source {} {range} that the producer had planned are archived or rejected: {} archived, {} rejected",
        report.in_source - report.pending,
        report.source,
        report.stored,
        report.rejected,
    );
    if !reasons.is_empty() {
        summary.push_str(&format!(" ({})", reasons.join(", ")));
    }
    if report.pending > 0 {
        summary.push_str(&format!("; {} later rows not yet planned", report.pending));
    }
    let mut value = serde_json::to_value(report)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("summary".into(), summary.into());
    }
    Ok(value)
}

async fn attest(
    args: &ReconcileArgs,
    path: &std::path::Path,
    signer: &dyn vera_audit::note::NoteSigner,
    verifier_keys: &[String],
    report: &ReconcileReport,
) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let attestation = vera_audit::attest::attest("reconcile", &statement(report)?, now, signer).await?;
    std::fs::write(path, serde_json::to_vec_pretty(&attestation)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Check what was written against the signer's own keys before announcing it.
    let verifiers = vera_audit::note::Verifiers::parse(&verifier_keys.join("\n"))?;
    let verified = vera_audit::attest::verify_attestation(&serde_json::to_vec(&attestation)?, &verifiers)?;
    let details = BTreeMap::from([
        ("statement_sha256".to_owned(), verified.statement_sha256.clone()),
        ("source".to_owned(), report.source.clone()),
        ("watermark_from".to_owned(), report.watermark_from.to_string()),
        ("watermark_to".to_owned(), report.watermark_to.to_string()),
        ("in_source".to_owned(), report.in_source.to_string()),
        ("stored".to_owned(), report.stored.to_string()),
        ("rejected".to_owned(), report.rejected.to_string()),
        ("missing".to_owned(), report.missing.to_string()),
        ("pending".to_owned(), report.pending.to_string()),
    ]);
    let event = AuditEvent {
        action: AuditAction::Reconcile,
        outcome: AuditOutcome::Ok,
        at: now,
        actor: args.operator.clone(),
        request_id: None,
        uid: None,
        segment_key: None,
        details,
    };
    let bus = args.store.bus(5).await?;
    let id = format!("reconcile/{}", &verified.statement_sha256.replace(['/', '+', '='], "_"));
    publish_audit(bus.as_ref(), id, now, event)
        .await
        .context("the attestation was written but its RECONCILE audit event was not published")?;
    crate::run::close_bus(bus.as_ref()).await;
    eprintln!("wrote {} (statement sha256 {})", path.display(), verified.statement_sha256);
    Ok(())
}

fn to_text(report: &ReconcileReport) -> String {
    let mut text = format!(
        "source {}: {} rows in range; {} stored ({} erased since), {} rejected, {} missing, {} pending",
        report.source, report.in_source, report.stored, report.erased, report.rejected, report.missing, report.pending
    );
    if let Some(extra) = report.extra {
        text.push_str(&format!(", {extra} extra"));
    }
    text.push('\n');
    for (reason, count) in &report.rejected_by_reason {
        text.push_str(&format!("  rejected {reason}: {count}\n"));
    }
    if report.stored_twice > 0 {
        text.push_str(&format!("  stored twice: {}\n", report.stored_twice));
    }
    if report.duplicate_watermarks > 0 {
        text.push_str(&format!("  rows sharing a watermark value: {}\n", report.duplicate_watermarks));
    }
    if report.undated > 0 {
        text.push_str(&format!("  rows without a readable created_at, left out: {}\n", report.undated));
    }
    for row in &report.missing_rows {
        text.push_str(&format!(
            "  MISSING watermark {} uid {} created_at {}\n",
            row.watermark,
            row.uid.as_deref().unwrap_or("NULL"),
            row.created_at.as_deref().unwrap_or("NULL")
        ));
    }
    text
}
