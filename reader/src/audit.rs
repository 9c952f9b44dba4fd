//! READ audit events, batched onto the bus so a busy reader sends one publish per batch,
//! not one per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::message::{AuditEvent, Envelope, Message};

/// Events waiting for the bus. A reader whose bus is down queues this many, then counts
/// what it has to drop in `vera_reader_audit_dropped_total` and logs it.
pub const QUEUE_LIMIT: usize = 100_000;
const BATCH: usize = 256;

#[derive(Clone)]
pub struct AuditSender {
    sender: mpsc::Sender<AuditEvent>,
}

impl AuditSender {
    pub fn send(&self, event: AuditEvent) {
        if self.sender.try_send(event).is_err() {
            metrics::counter!("vera_reader_audit_dropped_total").increment(1);
            tracing::error!("audit queue full: a READ event was dropped; is the bus reachable?");
        }
    }
}

/// Starts the batcher; it publishes every `interval` or every full batch, and drains what
/// is queued when `shutdown` fires.
pub fn spawn(
    bus: Arc<dyn Bus>,
    interval: Duration,
    shutdown: CancellationToken,
) -> (AuditSender, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::channel::<AuditEvent>(QUEUE_LIMIT);
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let stop = tokio::select! {
                received = receiver.recv_many(&mut batch, BATCH) => received == 0,
                _ = tokio::time::sleep(interval) => false,
                _ = shutdown.cancelled() => true,
            };
            if stop {
                while let Ok(event) = receiver.try_recv() {
                    batch.push(event);
                }
            }
            if !batch.is_empty() {
                publish(bus.as_ref(), &mut batch).await;
            }
            if stop {
                return;
            }
        }
    });
    (AuditSender { sender }, task)
}

async fn publish(bus: &dyn Bus, batch: &mut Vec<AuditEvent>) {
    let messages: Vec<Outgoing> = batch
        .iter()
        .map(|event| {
            let id = format!("read/{}/{:016x}", event.uid.as_deref().unwrap_or("-"), rand::random::<u64>());
            let envelope = Envelope::new(id, event.at, Message::AuditEvent(event.clone()));
            Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) }
        })
        .collect();
    for attempt in 0..5u32 {
        match bus.publish(topics::AUDIT, messages.clone()).await {
            Ok(()) => {
                metrics::counter!("vera_reader_audit_published_total").increment(batch.len() as u64);
                batch.clear();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "publishing READ audit events failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    // Kept for the next round: nothing is dropped while the queue has room.
    tracing::error!(events = batch.len(), "READ audit events not yet published; will retry");
}
