//! The worker's claim loop.
//!
//! For each claimed `PackTask`: keep its visibility extended while working, pack it,
//! publish `ShardSealed` (events topic, keyed by shard address) and `AuditEvent(PACK)`
//! (audit topic), and only then ack. A transient failure nacks with a delay; a message
//! that can never succeed (malformed, wrong type, invalid task) is dead-lettered at once;
//! the bus dead-letters anything that keeps failing after `max_attempts`. Shutdown stops
//! claiming, lets the task in hand finish, then returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, Delivery, Outgoing, topics};
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message};
use vera_source::Source;
use vera_store::shards::ShardStore;
use vera_store::{Clock, SystemClock};

use crate::pack::{PackReport, pack_task};
use crate::settings::WorkerSettings;

/// What one worker did, for summaries and tests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerStats {
    pub tasks_done: u64,
    pub rows: u64,
    pub files_packed: u64,
    pub already_stored: u64,
    pub rejected: u64,
    pub segments_written: u64,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    /// Tasks this worker received on a second or later delivery (a previous holder
    /// failed, died, or let its visibility timeout pass).
    pub redelivered: u64,
    /// When the last segment was sealed, for throughput figures.
    #[serde(skip)]
    pub last_sealed_at: Option<Instant>,
}

impl WorkerStats {
    /// Adds another worker's figures to these (fleet totals).
    pub fn merge(&mut self, other: &WorkerStats) {
        self.tasks_done += other.tasks_done;
        self.rows += other.rows;
        self.files_packed += other.files_packed;
        self.already_stored += other.already_stored;
        self.rejected += other.rejected;
        self.segments_written += other.segments_written;
        self.bytes_in += other.bytes_in;
        self.bytes_stored += other.bytes_stored;
        self.dead_lettered += other.dead_lettered;
        self.retried += other.retried;
        self.redelivered += other.redelivered;
        self.last_sealed_at = self.last_sealed_at.max(other.last_sealed_at);
    }
}

/// How long to sleep when the queue is empty.
const IDLE_POLL: Duration = Duration::from_millis(50);

pub async fn run_worker(
    worker_id: &str,
    bus: Arc<dyn Bus>,
    source: Arc<dyn Source>,
    shards: ShardStore,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let clock = SystemClock;
    while !shutdown.is_cancelled() {
        let deliveries = match bus.claim(topics::PACK, 1, settings.visibility_timeout()).await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(worker = worker_id, error = %error, "claim failed; backing off");
                sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        if deliveries.is_empty() {
            sleep_or_shutdown(IDLE_POLL, &shutdown).await;
            continue;
        }
        for delivery in deliveries {
            handle(worker_id, &bus, source.as_ref(), &shards, &settings, &delivery, &clock, &mut stats).await;
        }
    }
    stats
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    worker_id: &str,
    bus_handle: &Arc<dyn Bus>,
    source: &dyn Source,
    shards: &ShardStore,
    settings: &WorkerSettings,
    delivery: &Delivery,
    clock: &dyn Clock,
    stats: &mut WorkerStats,
) {
    let bus = bus_handle.as_ref();
    let (task, sent_at) = match Envelope::decode(&delivery.payload) {
        Ok(Envelope { message: Message::PackTask(task), sent_at, .. }) => (task, sent_at),
        Ok(other) => {
            dead_letter(
                bus,
                delivery,
                &format!("pack topic carried a {:?} message", message_type(&other.message)),
                stats,
            )
            .await;
            return;
        }
        Err(error) => {
            dead_letter(bus, delivery, &format!("undecodable message: {error}"), stats).await;
            return;
        }
    };
    let span = tracing::info_span!("pack_task", task = %task.task_id, attempt = delivery.attempt);
    let _entered = span.enter();
    if delivery.attempt > 1 {
        stats.redelivered += 1;
    }
    tracing::info!(rows = task.slot.rows, "task claimed");
    let heartbeat = spawn_heartbeat(Arc::clone(bus_handle), delivery.clone(), settings.visibility_timeout());
    let started = Instant::now();
    let result = pack_task(&task, source, shards, settings).await;
    heartbeat.cancel();
    match result {
        Ok(report) => {
            if let Err(error) = publish_events(bus, worker_id, &report, clock).await {
                tracing::warn!(error = %error, "publishing events failed; the task will be retried");
                stats.retried += 1;
                crate::metrics::task("retried");
                let _ = bus.nack(delivery, Duration::from_secs(settings.retry_delay_seconds)).await;
                return;
            }
            match bus.ack(delivery).await {
                Ok(()) => {}
                // The work is durable and idempotent; a late ack only means a redelivery
                // that will find everything already stored.
                Err(error) => tracing::warn!(error = %error, "ack failed"),
            }
            // From the producer's publish to durable and acked: the worker's share of
            // the pack lag.
            let age_micros = clock.now().as_micros().saturating_sub(sent_at.as_micros()).max(0);
            crate::metrics::task_age(age_micros as f64 / 1e6);
            tracing::info!(
                files = report.packed_files,
                already_stored = report.already_stored,
                rejected = report.rejected.len(),
                segments = report.segments.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "task packed"
            );
            record(stats, &report);
        }
        Err(error) if error.is_permanent() => {
            dead_letter(bus, delivery, &format!("task can never succeed: {error}"), stats).await;
        }
        Err(error) => {
            tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "task failed; will retry");
            stats.retried += 1;
            crate::metrics::task("retried");
            let _ = bus.nack(delivery, Duration::from_secs(settings.retry_delay_seconds)).await;
        }
    }
}

fn record(stats: &mut WorkerStats, report: &PackReport) {
    let written: Vec<_> = report.segments.iter().filter(|s| s.written_now).collect();
    crate::metrics::task("packed");
    crate::metrics::packed(
        report.packed_files,
        report.rejected.len() as u64,
        written.len() as u64,
        report.bytes_in,
        written.iter().map(|s| s.object_bytes).sum(),
    );
    stats.tasks_done += 1;
    stats.rows += report.rows;
    stats.files_packed += report.packed_files;
    stats.already_stored += report.already_stored;
    stats.rejected += report.rejected.len() as u64;
    stats.bytes_in += report.bytes_in;
    for segment in report.segments.iter().filter(|s| s.written_now) {
        stats.segments_written += 1;
        stats.bytes_stored += segment.object_bytes;
        stats.last_sealed_at = Some(Instant::now());
    }
}

fn message_type(message: &Message) -> &'static str {
    message.type_name()
}

async fn dead_letter(bus: &dyn Bus, delivery: &Delivery, reason: &str, stats: &mut WorkerStats) {
    tracing::error!(message_id = %delivery.message_id, reason, "dead-lettering message");
    stats.dead_lettered += 1;
    crate::metrics::task("dead_lettered");
    if let Err(error) = bus.dead_letter(delivery, reason).await {
        tracing::warn!(error = %error, "dead-letter failed; the bus will retry and dead-letter after max_attempts");
    }
}

/// Extends the claim every third of the visibility timeout until cancelled, so a long
/// task is not redelivered to another worker while this one is still on it.
fn spawn_heartbeat(bus: Arc<dyn Bus>, delivery: Delivery, visibility: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let period = (visibility / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(error) = bus.extend(&delivery, visibility).await {
                tracing::warn!(error = %error, "could not extend the task's visibility");
                if error.kind == vera_bus::BusErrorKind::StaleReceipt {
                    return;
                }
            }
        }
    });
    token
}

/// Publishes a pack's `ShardSealed` events and its PACK audit anchors (one per segment).
pub async fn publish_events(
    bus: &dyn Bus,
    worker_id: &str,
    report: &PackReport,
    clock: &dyn Clock,
) -> Result<(), vera_bus::BusError> {
    let now = clock.now();
    let mut events = Vec::new();
    let mut audits = Vec::new();
    for segment in &report.segments {
        events.push(segment.sealed_event(&report.task_id, now));
        let mut details = BTreeMap::new();
        details.insert("task_id".to_owned(), report.task_id.clone());
        details.insert("files".to_owned(), segment.files.to_string());
        details.insert("object_blake3".to_owned(), vera_protocol::hex::encode(&segment.object_hash));
        details.insert("merkle_root".to_owned(), vera_protocol::hex::encode(&segment.merkle_root));
        if let Some(version) = &segment.version_id {
            details.insert("version_id".to_owned(), version.clone());
        }
        let audit = AuditEvent {
            action: AuditAction::Pack,
            outcome: AuditOutcome::Ok,
            at: now,
            actor: worker_id.to_owned(),
            request_id: Some(report.task_id.clone()),
            uid: None,
            segment_key: Some(segment.key.clone()),
            details,
        };
        let envelope = Envelope::new(format!("pack/{}", segment.key), now, Message::AuditEvent(audit));
        audits.push(Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) });
    }
    bus.publish(topics::EVENTS, events).await?;
    bus.publish(topics::AUDIT, audits).await?;
    Ok(())
}
