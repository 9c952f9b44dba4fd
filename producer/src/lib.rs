//! The watermark producer.
//!
//! The producer's only state is a small watermark object in the store, changed by
//! compare-and-swap. It records the last scan position whose slot is published
//! (`committed`) and, while a slot is being published, that slot (`pending`). The source
//! plans slots only below its visibility horizon, so no row can still commit at or
//! before a committed position (see `docs/adr/0004-visibility-horizon.md`). One round:
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

pub mod metrics;
pub mod plan;
pub mod reconcile;
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
    #[error(
        "the watermark object {key} was written for a source {written} a horizon column, and this source is scanned {now}; \
         its positions cannot be carried over: move the object aside and set where scanning starts"
    )]
    ScanOrderChanged { key: String, written: &'static str, now: &'static str },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerReport {
    pub slots_published: u64,
    pub rows_planned: u64,
    pub bytes_planned: u64,
    /// CAS attempts lost to another producer.
    pub cas_conflicts: u64,
    pub final_watermark: i64,
    /// The horizon part of the final position, for a source scanned by a horizon column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_horizon: Option<i64>,
    #[serde(skip)]
    pub first_read_at: Option<Instant>,
}

/// `source:start-end`, positions as [`ScanPosition`] prints them (`horizon.watermark`
/// for a source scanned by a horizon column, the bare watermark otherwise).
pub fn task_id(source: &str, slot: &Slot) -> String {
    format!("{source}:{}-{}", slot.start(), slot.end())
}

/// Refuses a watermark object whose positions belong to the other scan order. A horizon
/// source's object starts with no horizon (nothing published yet), which is not a change.
fn check_scan_order(
    state: &WatermarkState,
    key: &str,
    has_horizon: bool,
    start_after: i64,
) -> Result<(), ProducerError> {
    let written_with_horizon =
        state.committed_horizon.is_some() || state.pending.is_some_and(|slot| slot.horizon.is_some());
    let nothing_published = state.committed_horizon.is_none() && state.committed == start_after;
    if written_with_horizon == has_horizon || (has_horizon && nothing_published) {
        return Ok(());
    }
    Err(ProducerError::ScanOrderChanged {
        key: key.to_owned(),
        written: if written_with_horizon { "with" } else { "without" },
        now: if has_horizon { "by one" } else { "by its watermark alone" },
    })
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
    let mut lag = metrics::LagTracker::default();
    let mut sampled_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let (mut state, etag) = watermarks.load_or_create(settings.start_after).await?;
        // At most once a second: one indexed query for the newest row.
        if sampled_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            let now = Instant::now();
            sampled_at = Some(now);
            let newest = source.newest_position().await?;
            if let Some(newest) = newest {
                lag.saw(newest, now);
            }
            metrics::positions(newest, state.position(), lag.unplanned_age(state.position(), now));
        }
        check_scan_order(&state, watermarks.key(), source.has_horizon(), settings.start_after)?;
        report.final_watermark = state.committed;
        report.final_horizon = state.committed_horizon;
        if let Some(slot) = state.pending {
            publish(bus.as_ref(), source.name(), &slot, &settings.routing, clock.now()).await?;
            state.commit(&slot);
            match watermarks.save(&state, &etag).await? {
                Some(_) => {
                    report.slots_published += 1;
                    report.rows_planned += slot.rows;
                    report.bytes_planned += slot.bytes;
                    report.final_watermark = slot.up_to;
                    report.final_horizon = state.committed_horizon;
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
                state.position(),
                settings.max_rows_per_slot,
                settings.max_bytes_per_slot,
                &settings.routing,
            )
            .await?;
        let Some(slot) = next else {
            // Visible rows the horizon holds back (an open transaction may still commit
            // rows before them) are waited for, even when draining.
            let held_back = mode == RunMode::Drain && source.has_rows_after(state.position()).await?;
            match mode {
                RunMode::Drain if !held_back => break,
                RunMode::Drain | RunMode::Follow => {
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

/// Publishes a one-row pack task for each missing row `vera reconcile` found (a row that
/// appeared behind the committed position: an explicit old id, a restored table). The
/// worker packs it like any late arrival. Returns the tasks published.
pub async fn republish(
    bus: &dyn Bus,
    source: &str,
    routing: &RoutingTable,
    rows: &[reconcile::MissingRow],
) -> Result<u64, ProducerError> {
    let now = SystemClock.now();
    let mut published = 0;
    for row in rows {
        let Some(after) = row.watermark.checked_sub(1) else { continue };
        let slot = Slot {
            after,
            up_to: row.watermark,
            rows: 1,
            bytes: 0,
            horizon: row
                .horizon
                .map(|horizon| vera_protocol::message::HorizonBounds { after: Some(horizon), up_to: horizon }),
        };
        publish(bus, source, &slot, routing, now).await?;
        published += 1;
    }
    Ok(published)
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
    tracing::info!(after = %slot.start(), up_to = %slot.end(), rows = slot.rows, "publishing slot");
    bus.publish(topics::PACK, vec![Outgoing { key: None, payload: Bytes::from(envelope.encode()) }]).await?;
    Ok(())
}
