//! The lifecycle tracker: consumes tombstone events, works out how much of each affected
//! segment is tombstoned (stored bytes of tombstoned files over stored bytes of all its
//! files), and past the threshold (30 % by default) publishes `RepackRequested` on the
//! `repack` topic, keyed by shard address.
//!
//! It recomputes the share from the sidecar and the index each time rather than keeping
//! counts, so a redelivered event, a crash, or two trackers at once cannot count a
//! tombstone twice. A segment past the threshold is requested again on each later
//! tombstone; the request's envelope id is the segment key, so buses that deduplicate
//! (SQS FIFO) drop the repeats, and the repack worker must be idempotent anyway.
//! A message that can never be handled (malformed) is dead-lettered at once; a failing
//! one is retried by the bus until its attempts run out.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, Delivery, topics};
use vera_protocol::message::{Envelope, Message, RepackRequested, TombstoneRequested};
use vera_protocol::routing::ShardAddr;

use crate::{Lifecycle, LifecycleError};

/// Default share of a segment's stored bytes that triggers a repack.
pub const DEFAULT_THRESHOLD: f64 = 0.30;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrackerStats {
    pub tombstone_events: u64,
    pub repacks_requested: u64,
    pub other_events: u64,
    pub dead_lettered: u64,
    pub retried: u64,
}

impl Lifecycle {
    /// (stored bytes a repack would drop, all stored bytes) of a segment: tombstoned files
    /// under neither retention nor hold.
    pub async fn tombstoned_share(&self, segment_key: &str) -> Result<(u64, u64), LifecycleError> {
        let index = self.shards.index(segment_key).await?;
        let Some(sidecar) = crate::sidecar_of(self.shards.store().as_ref(), segment_key).await? else {
            return Ok((0, index.files().map(|file| u64::from(file.entry.stored_len)).sum()));
        };
        let now = self.clock.now();
        let (mut dead, mut total) = (0u64, 0u64);
        for file in index.files() {
            let stored = u64::from(file.entry.stored_len);
            total += stored;
            // Files under retention or hold stay whatever happens: they do not count.
            if sidecar.is_tombstoned(file.uid) && !sidecar.must_keep(file.uid, now) {
                dead += stored;
            }
        }
        Ok((dead, total))
    }

    /// Handles one tombstone event: the repack request it triggers, published, if any.
    pub async fn track(
        &self,
        event: &TombstoneRequested,
        threshold: f64,
    ) -> Result<Option<RepackRequested>, LifecycleError> {
        let located = self.locate(&event.uid, event.created_at).await?;
        if located.sidecar.as_ref().is_some_and(|sidecar| sidecar.superseded.is_some() || sidecar.repack.is_some()) {
            return Ok(None); // already repacked (or being repacked): the file is gone from it
        }
        let (addr, segment_key) = (located.addr, located.key);
        if ShardAddr::from_staging_key(&segment_key).is_ok() {
            // A staging segment is never repacked: the compactor leaves its tombstoned
            // files out of the merge and then deletes it (ADR 0005).
            return Ok(None);
        }
        let (tombstoned_bytes, total_bytes) = self.tombstoned_share(&segment_key).await?;
        if total_bytes == 0 || (tombstoned_bytes as f64) < threshold * total_bytes as f64 {
            return Ok(None);
        }
        let (_, generation, _) = ShardAddr::parse_any_segment_key(&segment_key)
            .map_err(|e| LifecycleError::InvalidRequest(e.to_string()))?;
        let now = self.clock.now();
        let request = RepackRequested {
            addr,
            generation,
            key: segment_key.clone(),
            tombstoned_bytes,
            total_bytes,
            threshold_ratio: threshold,
            requested_at: now,
        };
        self.publish(topics::REPACK, format!("repack/{segment_key}"), now, Message::RepackRequested(request.clone()))
            .await?;
        tracing::info!(segment = %segment_key, tombstoned_bytes, total_bytes, "repack requested");
        Ok(Some(request))
    }
}

/// Consumes the `events` topic until `shutdown`; see the module docs.
pub async fn run_tracker(
    lifecycle: Arc<Lifecycle>,
    bus: Arc<dyn Bus>,
    threshold: f64,
    shutdown: CancellationToken,
) -> TrackerStats {
    let mut stats = TrackerStats::default();
    while let Some(batch) = crate::next_batch(bus.as_ref(), topics::EVENTS, &shutdown, false).await {
        for delivery in batch {
            handle(&lifecycle, bus.as_ref(), &delivery, threshold, &mut stats).await;
        }
    }
    stats
}

async fn handle(lifecycle: &Lifecycle, bus: &dyn Bus, delivery: &Delivery, threshold: f64, stats: &mut TrackerStats) {
    let settled = match Envelope::decode(&delivery.payload) {
        Err(error) => {
            stats.dead_lettered += 1;
            tracing::error!(message_id = %delivery.message_id, %error, "malformed event: dead-lettered");
            bus.dead_letter(delivery, &format!("malformed event: {error}")).await
        }
        Ok(envelope) => match envelope.message {
            Message::TombstoneRequested(event) => {
                stats.tombstone_events += 1;
                match lifecycle.track(&event, threshold).await {
                    Ok(requested) => {
                        stats.repacks_requested += u64::from(requested.is_some());
                        bus.ack(delivery).await
                    }
                    Err(error @ (LifecycleError::UnknownFile { .. } | LifecycleError::InvalidRequest(_))) => {
                        stats.dead_lettered += 1;
                        bus.dead_letter(delivery, &error.to_string()).await
                    }
                    Err(error) => {
                        stats.retried += 1;
                        tracing::warn!(error = %error, "tracking a tombstone failed; the bus will retry it");
                        bus.nack(delivery, Duration::from_secs(1)).await
                    }
                }
            }
            _ => {
                stats.other_events += 1;
                bus.ack(delivery).await
            }
        },
    };
    if let Err(error) = settled {
        tracing::warn!(%error, message_id = %delivery.message_id, "settling an event failed; it will come back");
    }
}
