//! Cache invalidation from the bus: every reader replica subscribes to the `events` topic
//! (a fan-out, [`Bus::subscribe`]) and drops its cached sidecars for the address of each
//! `TombstoneRequested` (a tombstone was written) and `ShardSealed` (a segment was
//! written, e.g. by a repack that superseded an older one). Writers publish after the
//! sidecar change, so the next read sees it. The sidecar TTL stays the safety net for what
//! a subscription misses: after any break, every cached sidecar is dropped before the
//! subscription resumes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_protocol::message::{Envelope, Message};

use crate::Reader;

/// How long to wait before subscribing again after the subscription broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Applies one `events` payload to the reader's caches. Payloads that do not decode are
/// logged and skipped: they cannot name a segment.
async fn apply(reader: &Reader, payload: &[u8]) {
    let addr = match Envelope::decode(payload) {
        Ok(envelope) => match envelope.message {
            Message::TombstoneRequested(tombstone) => tombstone.addr,
            Message::ShardSealed(sealed) => sealed.addr,
            _ => return,
        },
        Err(error) => {
            tracing::warn!(%error, "undecodable message on the events topic; skipped");
            return;
        }
    };
    reader.invalidate_address(&addr).await;
    metrics::counter!("vera_reader_invalidations_total").increment(1);
}

/// Follows the `events` topic until `shutdown`. A bus that cannot fan out is reported
/// once and the task ends: the sidecar TTL alone bounds staleness then.
pub fn spawn(reader: Arc<Reader>, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !bus.fans_out() {
            tracing::warn!(
                "this bus cannot fan out events to readers: cached sidecars expire after the sidecar TTL only"
            );
            return;
        }
        let mut first = true;
        while !shutdown.is_cancelled() {
            let mut subscription = match bus.subscribe(topics::EVENTS).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to the events topic; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            if !first {
                // Events may have been missed while unsubscribed.
                reader.invalidate_all_sidecars().await;
            }
            first = false;
            reader.set_following_events(true);
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = shutdown.cancelled() => return,
                };
                match next {
                    Some(Ok(payload)) => apply(&reader, &payload).await,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the events subscription failed; subscribing again");
                        break;
                    }
                    None => {
                        tracing::warn!("the events subscription ended; subscribing again");
                        break;
                    }
                }
            }
            reader.set_following_events(false);
            tokio::select! {
                _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
