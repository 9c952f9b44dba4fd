//! The audit writer: consumes `AuditEvent`s from the bus's `audit` topic and appends
//! them to its own log, one segment per claimed batch, then signs a checkpoint, then
//! acks. A crash anywhere leaves either nothing (the batch is redelivered) or a durable
//! segment whose events come back as redeliveries and are dropped by the dedupe window.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, Delivery, topics};
use vera_protocol::message::{Envelope, Message};

use crate::AuditError;
use crate::log::AuditLog;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Events claimed, and so written, per segment at most.
    pub batch: usize,
    /// How long a claimed batch stays invisible to other writers.
    pub visibility: Duration,
    /// Delay before a batch whose segment could not be written is retried.
    pub retry_delay: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings { batch: 500, visibility: Duration::from_secs(120), retry_delay: Duration::from_secs(2) }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    pub segments: u64,
    pub appended: u64,
    pub duplicates: u64,
    pub checkpoints: u64,
    pub dead_lettered: u64,
    pub retried_batches: u64,
}

/// Runs until `shutdown`, or with `until_idle` until the topic is empty.
pub async fn run_audit_writer(
    log: &AuditLog,
    bus: &dyn Bus,
    settings: &WriterSettings,
    shutdown: &CancellationToken,
    until_idle: bool,
) -> Result<WriterStats, AuditError> {
    let mut stats = WriterStats::default();
    while !shutdown.is_cancelled() {
        let claimed = match bus.claim(topics::AUDIT, settings.batch.max(1), settings.visibility).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "claiming audit events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            if until_idle {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let mut events = Vec::with_capacity(claimed.len());
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(claimed.len());
        for delivery in claimed {
            match Envelope::decode(&delivery.payload) {
                Ok(envelope) if matches!(envelope.message, Message::AuditEvent(_)) => {
                    events.push(envelope);
                    deliveries.push(delivery);
                }
                Ok(_) => dead_letter(bus, &delivery, "not an audit_event", &mut stats).await,
                Err(error) => dead_letter(bus, &delivery, &error.to_string(), &mut stats).await,
            }
        }
        if events.is_empty() {
            continue;
        }
        let appended = match log.append(&events).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%error, events = events.len(), "audit segment not written; the batch will be retried");
                stats.retried_batches += 1;
                for delivery in &deliveries {
                    if let Err(error) = bus.nack(delivery, settings.retry_delay).await {
                        tracing::warn!(%error, "nack failed; the event reappears after its visibility timeout");
                    }
                }
                continue;
            }
        };
        if appended.segment_key.is_some() {
            stats.segments += 1;
        }
        stats.appended += appended.appended;
        stats.duplicates += appended.duplicates;
        match log.checkpoint().await {
            Ok(Some(_)) => stats.checkpoints += 1,
            Ok(None) => {}
            // The entries are durable; the next batch, or the next start, checkpoints them.
            Err(error) => tracing::warn!(%error, "checkpoint not written; retried with the next batch"),
        }
        metrics::counter!("vera_audit_entries_total").increment(appended.appended);
        for (delivery, result) in deliveries.iter().zip(bus.ack_batch(&deliveries).await) {
            if let Err(error) = result {
                // Durable already: a redelivery is dropped as a duplicate.
                tracing::warn!(%error, message = %delivery.message_id, "ack failed after the segment was written");
            }
        }
    }
    // Whatever was appended is signed before exiting.
    if log.checkpoint().await?.is_some() {
        stats.checkpoints += 1;
    }
    Ok(stats)
}

async fn dead_letter(bus: &dyn Bus, delivery: &Delivery, reason: &str, stats: &mut WriterStats) {
    tracing::error!(message = %delivery.message_id, reason, "audit topic message can never be logged; dead-lettering");
    stats.dead_lettered += 1;
    if let Err(error) = bus.dead_letter(delivery, reason).await {
        tracing::warn!(%error, "dead-lettering failed; the bus's attempt limit will catch it");
    }
}
