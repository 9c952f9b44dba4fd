//! The watermark producer.
//!
//! The producer's only state is a small watermark object in the store, changed by
//! compare-and-swap. It records the last watermark whose slot is published (`committed`)
//! and, while a slot is being published, that slot (`pending`). One round:
//!
//! 1. Read the watermark object (create it if absent).
//! 2. If a slot is pending (a previous round, perhaps by a process that died, got that
//!    far): publish its `PackTask` again — same slot, same task id, so a duplicate is
//!    harmless — then CAS `committed = pending.up_to, pending = none`.
//! 3. Otherwise plan the next slot from the source and CAS it in as `pending`, then go
//!    to 2.
//!
//! The slot is claimed (step 3) *before* it is published and released only *after*, so
//! a crash at any line neither skips a slot nor publishes two different slots over the
//! same rows. Two producers started by mistake race on the CAS; the loser re-reads,
//! finds the winner's state, and backs off with jitter. Neither can corrupt the object.

pub mod watermark;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, BusError, Outgoing, topics};
use vera_protocol::message::{Envelope, Message, PackTask, Slot};
use vera_protocol::routing::RoutingTable;
use vera_source::{Source, SourceError};
use vera_store::{Clock, ObjectStore, StoreError, SystemClock};

pub use watermark::{WatermarkState, WatermarkStore};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerSettings {
    pub max_rows_per_slot: u64,
    pub max_bytes_per_slot: u64,
    /// Where scanning starts when no watermark object exists yet (exclusive).
    pub start_after: i64,
    /// How long to wait for new rows when caught up (follow mode).
    pub poll_interval_millis: u64,
    pub routing: RoutingTable,
}

impl ProducerSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rows_per_slot == 0 || self.max_bytes_per_slot == 0 {
            return Err("max_rows_per_slot and max_bytes_per_slot must be at least 1".into());
        }
        self.routing.validate().map_err(|e| e.to_string())
    }
}

/// Stop when the source has no more rows, or keep polling for new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Drain,
    Follow,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("source failed")]
    Source(#[from] SourceError),
    #[error("watermark store failed")]
    Store(#[from] StoreError),
    #[error("publishing failed")]
    Bus(#[from] BusError),
    #[error("watermark object is invalid: {0}")]
    Watermark(String),
    #[error("settings are invalid: {0}")]
    Settings(String),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerReport {
    pub slots_published: u64,
    pub rows_planned: u64,
    pub bytes_planned: u64,
    /// CAS attempts lost to another producer.
    pub cas_conflicts: u64,
    pub final_watermark: i64,
    #[serde(skip)]
    pub first_read_at: Option<Instant>,
}

pub fn task_id(source: &str, slot: &Slot) -> String {
    format!("{source}:{}-{}", slot.after, slot.up_to)
}

pub async fn run_producer(
    source: Arc<dyn Source>,
    store: Arc<dyn ObjectStore>,
    bus: Arc<dyn Bus>,
    settings: ProducerSettings,
    mode: RunMode,
    shutdown: CancellationToken,
) -> Result<ProducerReport, ProducerError> {
    settings.validate().map_err(ProducerError::Settings)?;
    let watermarks = WatermarkStore::new(store, source.name());
    let clock = SystemClock;
    let mut report = ProducerReport::default();
    while !shutdown.is_cancelled() {
        let (mut state, etag) = watermarks.load_or_create(settings.start_after).await?;
        report.final_watermark = state.committed;
        if let Some(slot) = state.pending {
            publish(bus.as_ref(), source.name(), &slot, &settings.routing, clock.now()).await?;
            state.committed = slot.up_to;
            state.pending = None;
            match watermarks.save(&state, &etag).await? {
                Some(_) => {
                    report.slots_published += 1;
                    report.rows_planned += slot.rows;
                    report.bytes_planned += slot.bytes;
                    report.final_watermark = slot.up_to;
                }
                None => lost_race(&mut report).await,
            }
            continue;
        }
        if report.first_read_at.is_none() {
            report.first_read_at = Some(Instant::now());
        }
        // Slots end on time-slice boundaries where they can, so each address of a day is
        // one segment and reads find their file in generation 0.
        let next = source
            .next_slot_aligned(
                state.committed,
                settings.max_rows_per_slot,
                settings.max_bytes_per_slot,
                &settings.routing,
            )
            .await?;
        let Some(slot) = next else {
            match mode {
                RunMode::Drain => break,
                RunMode::Follow => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(settings.poll_interval_millis)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
        };
        state.pending = Some(slot);
        if watermarks.save(&state, &etag).await?.is_none() {
            lost_race(&mut report).await;
        }
    }
    Ok(report)
}

async fn lost_race(report: &mut ProducerReport) {
    report.cas_conflicts += 1;
    let jitter = rand::random::<u64>() % 200;
    tracing::warn!("another producer updated the watermark; backing off");
    tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
}

async fn publish(
    bus: &dyn Bus,
    source: &str,
    slot: &Slot,
    routing: &RoutingTable,
    now: vera_protocol::Timestamp,
) -> Result<(), ProducerError> {
    let task =
        PackTask { task_id: task_id(source, slot), source: source.to_owned(), slot: *slot, routing: routing.clone() };
    let envelope = Envelope::new(format!("pack/{}", task.task_id), now, Message::PackTask(task));
    tracing::info!(after = slot.after, up_to = slot.up_to, rows = slot.rows, "publishing slot");
    bus.publish(topics::PACK, vec![Outgoing { key: None, payload: Bytes::from(envelope.encode()) }]).await?;
    Ok(())
}
