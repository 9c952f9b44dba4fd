//! `vera`: the command line for the embedded deployment. Thin: parse, build, run.

mod bus;
mod common;
mod compact;
mod demo;
mod ingest;
mod inspect;
mod lifecycle;
mod rebuild;
mod reconcile;
mod routing;
mod run;
mod trust;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "vera", version, about = "VERA packs billions of small files into immutable .vera shards", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a corpus, pack it with the producer and N workers into the local WORM
    /// store, read every file back and check it. No servers needed.
    Demo(demo::DemoArgs),
    /// Generate a realistic mixed corpus into a SQLite database.
    Generate(run::GenerateArgs),
    /// Run the watermark producer: publish one PackTask per slot of source rows.
    Producer(run::ProducerArgs),
    /// Run a pack worker: claim PackTasks and write segments. With --ingest, an ingest
    /// worker: claim files pushed on the `ingest` topic and write segments.
    Worker(run::WorkerCommandArgs),
    /// Create the S3 bucket with Object Lock, or check an existing one (needs `--features s3`).
    SetupBucket(run::SetupBucketArgs),
    /// Create the bus's queues or topics (pack, events, audit) and their dead-letter
    /// queues. Safe to run again; workers and producers never create them.
    SetupBus(run::SetupBusArgs),
    /// Show queue depths and dead letters of the bus.
    BusStatus(run::SetupBusArgs),
    /// Kafka only: move the worker group back to an offset or a time, to process the pack
    /// topic again (disaster recovery). Stop the workers first.
    Replay(run::ReplayArgs),
    /// Read the archive back from the object store alone (disaster recovery): every
    /// segment's index (every hash with --deep), sidecars, erasure markers and audit
    /// anchors; write the reader's view with --manifest. Non-zero exit if anything is
    /// corrupt (or, with --require-anchors, unanchored).
    Rebuild(rebuild::RebuildArgs),
    /// Serve files over HTTP: GET/HEAD /v1/files/{uid}?created_at=…, /metrics, /healthz,
    /// /readyz, /openapi.yaml. Stateless; run as many as you like.
    Serve(run::ServeArgs),
    /// Erase files (GDPR Art. 17 and friends): tombstone them in their segments'
    /// sidecars, publish the tombstone events and DELETE audit events. The reader and
    /// `vera get` answer "gone" from then on; repack removes the bytes later. Idempotent.
    Delete(lifecycle::DeleteArgs),
    /// Run the lifecycle tracker: consume tombstone events, request a repack (on the
    /// `repack` topic) of every segment whose tombstoned share passes --threshold.
    LifecycleTracker(lifecycle::TrackerArgs),
    /// Merge staging segments (small writes) into one final generation per address once
    /// its time slice has closed; delete them when redundant and unlocked (ADR 0005).
    Compact(compact::CompactArgs),
    /// Extend one file's retention (never shorten it): recorded in the sidecar, and the
    /// segment's Object Lock raised to the longest retention of any file in it.
    Retain(lifecycle::RetainArgs),
    /// Set (--on) or clear (--off) one file's legal hold; the segment's Object Lock legal
    /// hold stays on while any file in it is held.
    Hold(lifecycle::HoldArgs),
    /// Repack segments: rewrite their live files into a new segment without the erased
    /// ones, anchor it in the audit log, supersede and archive the old segment. Name
    /// segments, or take them from the `repack` topic with --from-bus (CronJob form).
    Repack(lifecycle::RepackArgs),
    /// The tamper-evident audit log: `write` (the audit writer), `verify`, `verifier-key`.
    #[command(subcommand)]
    Audit(trust::AuditCommand),
    /// Signed operator requests: `sign` a request file with an SSH key.
    #[command(subcommand)]
    Request(trust::RequestCommand),
    /// Two-person break-glass under GOVERNANCE retention: delete an object or shorten its
    /// retention, with two signed requests by two operators holding the break-glass role.
    /// COMPLIANCE retention and legal holds are never bypassed.
    BreakGlass(trust::BreakGlassArgs),
    /// Export files for auditors (by --list or --from/--to) with integrity_proof.json.
    Export(trust::ExportArgs),
    /// Check an export offline: `vera proof verify DIR --verifier-keys FILE`.
    #[command(subcommand)]
    Proof(trust::ProofCommand),
    /// Prove a source range complete: count its rows in the source, stored, rejected
    /// (with reasons), missing and pending; exit non-zero if any is missing. --attest
    /// signs the statement and records it in the audit log.
    Reconcile(reconcile::ReconcileArgs),
    /// The store's routing table, which every role reads at start: `show`, `init`,
    /// `add-epoch` (for files created from a future time on).
    #[command(subcommand)]
    Routing(routing::RoutingCommand),
    /// Propose a routing table from the source's created_at histogram (granularity and
    /// hash bits per year, for segments of at least --min-files-per-segment files and at
    /// most --max-segment-mib); print the expected segments and PUTs; --apply writes it.
    Plan(routing::PlanArgs),
    /// Read one file by uid and created_at (two calls at most: index, then range).
    Get(inspect::GetArgs),
    /// Re-read every segment and check every hash.
    Verify(inspect::InspectArgs),
    /// Figures on the store: segments, files, compression, segments per address.
    Stats(inspect::InspectArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match command {
        Command::Demo(args) => {
            common::init_tracing("warn");
            let json = args.json;
            let summary = demo::run(args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", summary.one_line());
            }
            Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Generate(args) => {
            common::init_tracing("info");
            run::generate(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Producer(args) => {
            common::init_tracing("info");
            run::producer(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            common::init_tracing("info");
            run::worker(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SetupBus(args) => {
            common::init_tracing("info");
            run::setup_bus(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BusStatus(args) => {
            common::init_tracing("warn");
            run::bus_status(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            common::init_tracing("info");
            run::replay(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild(args) => {
            common::init_tracing("warn");
            rebuild::rebuild(args).await
        }
        Command::Serve(args) => {
            common::init_tracing("info");
            run::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SetupBucket(args) => {
            common::init_tracing("info");
            run::setup_bucket(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete(args) => {
            common::init_tracing("warn");
            lifecycle::delete(args).await
        }
        Command::Compact(args) => {
            common::init_tracing("info");
            compact::compact(args).await
        }
        Command::LifecycleTracker(args) => {
            common::init_tracing("info");
            lifecycle::tracker(args).await
        }
        Command::Retain(args) => {
            common::init_tracing("warn");
            lifecycle::retain(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hold(args) => {
            common::init_tracing("warn");
            lifecycle::hold(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Repack(args) => {
            common::init_tracing("info");
            lifecycle::repack(args).await
        }
        Command::Audit(command) => {
            common::init_tracing("info");
            trust::audit(command).await
        }
        Command::Request(command) => {
            common::init_tracing("warn");
            trust::request(command)
        }
        Command::BreakGlass(args) => {
            common::init_tracing("warn");
            trust::break_glass(args).await
        }
        Command::Export(args) => {
            common::init_tracing("warn");
            trust::export_command(args).await
        }
        Command::Proof(command) => {
            common::init_tracing("warn");
            trust::proof(command)
        }
        Command::Reconcile(args) => {
            common::init_tracing("warn");
            reconcile::run(args).await
        }
        Command::Plan(args) => {
            common::init_tracing("warn");
            routing::plan(args).await
        }
        Command::Routing(command) => {
            common::init_tracing("warn");
            routing::run(command).await
        }
        Command::Get(args) => {
            common::init_tracing("warn");
            inspect::get(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            common::init_tracing("warn");
            let json = args.json;
            let report = inspect::verify(args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} of {} segments verified, {} files, {:.1} MB; {} failures",
                    report.segments_ok,
                    report.segments,
                    report.files,
                    report.raw_bytes as f64 / 1e6,
                    report.failures.len()
                );
                for failure in &report.failures {
                    println!("  FAILED {failure}");
                }
            }
            Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Stats(args) => {
            common::init_tracing("warn");
            let json = args.json;
            let report = inspect::stats(args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
