//! The compactor: merges an address's staging segments into one final generation once
//! its time slice has closed, and deletes staging segments once they are redundant and
//! their short lock has expired. The design and its figures are in
//! `docs/adr/0005-staging-and-compaction.md`.
//!
//! One pass ([`Compactor::run_once`]) lists the segment keys of the store once, groups
//! the staging segments by address, and for each address:
//!
//! 1. reads every staging segment's index and sidecar;
//! 2. if the address is *due* ([`CompactSettings`]), reads the staging segments' files
//!    (decoded and hash-checked), leaves out tombstoned files and files a final
//!    generation already holds, and seals the rest as the next final generation with the
//!    worker's own sealing ([`vera_worker::pack::seal_address`]): deterministic bytes,
//!    create-if-absent, full retention;
//! 3. publishes `ShardSealed` and a `COMPACT` audit anchor naming every staging segment
//!    (key and object hash) and the new segment;
//! 4. re-reads the staging sidecars and applies any tombstone, hold or retention
//!    extension they gained meanwhile to the new segment's files, through
//!    [`vera_lifecycle::Lifecycle`] (which finds the final generation first);
//! 5. for each staging segment: redundant (every file in a final generation with the same
//!    hash, or tombstoned) and unlocked → deleted with its sidecar; not yet merged and its
//!    lock ending within [`RENEW_BEFORE_SECONDS`] → lock extended.
//!
//! A crash at any request repeats the pass: step 2 finds the files already stored and
//! writes nothing, or finds the identical segment at its generation and accepts it.

pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tempfile::SpooledTempFile;
use vera_bus::{Bus, Outgoing, topics};
use vera_lifecycle::retention::{HoldRequest, RetainRequest};
use vera_lifecycle::{DeleteRequest, Lifecycle, LifecycleError};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message};
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_protocol::shard::{FileInput, SegmentIndex, SegmentSettings, SegmentWriter, WriteError};
use vera_protocol::sidecar::Sidecar;
use vera_store::shards::{ShardError, ShardStore, StagingSegment, sidecar_of};
use vera_store::{Clock, Retention, StoreError, StoreErrorKind};
use vera_worker::pack::{PackError, Placement, SealTarget, SealedInfo, seal_address};
use vera_worker::settings::WorkerSettings;

/// A staging segment not merged yet whose lock ends sooner than this is extended.
pub const RENEW_BEFORE_SECONDS: i64 = 86_400;

/// The task id recorded in a compacted segment's metadata and events.
pub const COMPACT_TASK_ID: &str = "compact";

const MICROS_PER_SECOND: i64 = 1_000_000;

/// When an address's staging segments are merged (ADR 0005).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactSettings {
    /// Merge no sooner than this long after the address's time slice ends.
    pub close_delay_seconds: u64,
    /// ... and once the newest staging segment is this old (rows still flowing wait).
    pub quiet_seconds: u64,
    /// Late rows for an address that already has a final generation wait until its
    /// slice ended this long ago, so that they make one more generation, not one per
    /// batch; unless they already make a final generation's worth of files.
    pub allowed_lateness_seconds: u64,
}

impl Default for CompactSettings {
    fn default() -> Self {
        CompactSettings { close_delay_seconds: 300, quiet_seconds: 60, allowed_lateness_seconds: 48 * 3600 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("object store failed")]
    Store(#[from] StoreError),
    #[error("reading segments failed")]
    Shard(#[from] ShardError),
    #[error("sealing the merged segment failed")]
    Pack(#[from] PackError),
    #[error("building the merged segment failed")]
    Write(#[from] WriteError),
    #[error("carrying a lifecycle change over to the merged segment failed")]
    Lifecycle(#[from] LifecycleError),
    #[error("publishing failed")]
    Bus(#[from] vera_bus::BusError),
    #[error("staging segment {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("background work failed: {0}")]
    Join(String),
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Addresses holding staging segments when the pass listed them.
    pub addresses_with_staging: u64,
    /// Addresses whose staging segments were merged by this pass.
    pub addresses_merged: u64,
    /// Addresses not due yet (their slice is open, rows still flow, or lateness runs).
    pub addresses_waiting: u64,
    /// Files written into new final generations.
    pub files_merged: u64,
    /// New final generations, by key.
    pub segments_written: Vec<String>,
    /// Staging segments deleted (redundant and unlocked).
    pub staging_deleted: u64,
    /// Staging segments whose lock was extended because they are not merged yet.
    pub staging_extended: u64,
    /// Staging segments left after the pass.
    pub staging_left: u64,
    /// Age of the oldest staging segment left, in seconds.
    pub oldest_staging_seconds: Option<u64>,
    /// Files that could not be merged (a final generation holds the uid with other
    /// content), by uid; they stay in staging and `vera reconcile` reports them.
    pub conflicts: Vec<String>,
}

/// One staging segment, read.
struct Staged {
    meta: StagingSegment,
    index: Arc<SegmentIndex>,
    sidecar: Option<Sidecar>,
}

/// Merges staging segments; see the module docs.
pub struct Compactor {
    shards: ShardStore,
    lifecycle: Lifecycle,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    worker: Arc<WorkerSettings>,
    settings: CompactSettings,
    actor: String,
}

impl Compactor {
    pub fn new(
        shards: ShardStore,
        routing: RoutingTable,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        worker: WorkerSettings,
        settings: CompactSettings,
    ) -> Self {
        let lifecycle = Lifecycle::new(shards.clone(), routing, Arc::clone(&bus), Arc::clone(&clock));
        Compactor { shards, lifecycle, bus, clock, worker: Arc::new(worker), settings, actor: "compactor".into() }
    }

    /// The name the audit events give as actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// One pass over every address that holds staging segments.
    pub async fn run_once(&self) -> Result<CompactReport, CompactError> {
        let mut addresses: BTreeSet<ShardAddr> = BTreeSet::new();
        for meta in self.shards.store().list("e").await? {
            if let Ok((addr, _)) = ShardAddr::from_staging_key(&meta.key) {
                addresses.insert(addr);
            }
        }
        let mut report = CompactReport { addresses_with_staging: addresses.len() as u64, ..CompactReport::default() };
        for addr in addresses {
            self.compact_address(&addr, &mut report).await?;
        }
        crate::metrics::pass(&report);
        Ok(report)
    }

    /// Merges `addr`'s staging segments if due, then tidies them; adds to `report`.
    pub async fn compact_address(&self, addr: &ShardAddr, report: &mut CompactReport) -> Result<(), CompactError> {
        let now = self.clock.now();
        let layout = self.shards.layout(addr).await?;
        if layout.staging.is_empty() {
            return Ok(());
        }
        let staged = self.read_staged(layout.staging).await?;
        let staged_files: u64 = staged.iter().map(|s| s.index.len() as u64).sum();
        let generations = if self.is_due(addr, &staged, !layout.generations.is_empty(), staged_files, now) {
            self.merge(addr, &staged, report).await?;
            report.addresses_merged += 1;
            // The merge may have added a generation.
            self.shards.segments(addr).await?
        } else {
            report.addresses_waiting += 1;
            layout.generations
        };
        self.tidy(addr, &generations, &staged, now, report).await
    }

    async fn read_staged(&self, segments: Vec<StagingSegment>) -> Result<Vec<Staged>, CompactError> {
        let mut staged = Vec::with_capacity(segments.len());
        for meta in segments {
            let index = match self.shards.index(&meta.key).await {
                Ok(index) => index,
                // Deleted by a concurrent pass since the LIST.
                Err(ShardError::Store(error)) if error.kind == StoreErrorKind::NotFound => continue,
                Err(other) => return Err(other.into()),
            };
            let sidecar = sidecar_of(self.shards.store().as_ref(), &meta.key).await?;
            staged.push(Staged { meta, index, sidecar });
        }
        Ok(staged)
    }

    fn is_due(&self, addr: &ShardAddr, staged: &[Staged], has_final: bool, staged_files: u64, now: Timestamp) -> bool {
        let (_, slice_end) = addr.time_range();
        let after = |at: Timestamp, seconds: u64| {
            at.as_micros().saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(MICROS_PER_SECOND))
        };
        if now.as_micros() < after(slice_end, self.settings.close_delay_seconds) {
            return false;
        }
        // Write times come from the store's clock; 0 turns the check off (a simulated
        // clock, as the load test's, cannot be compared with them).
        let newest = staged.iter().filter_map(|s| s.meta.last_modified).max();
        let quiet = self.settings.quiet_seconds;
        if quiet > 0 && newest.is_some_and(|newest| now.as_micros() < after(newest, quiet)) {
            return false;
        }
        let staged_bytes: u64 = staged.iter().map(|s| s.meta.len).sum();
        let worth_a_generation = self.worker.staging.is_direct(staged_files, staged_bytes);
        let lateness_over = now.as_micros() >= after(slice_end, self.settings.allowed_lateness_seconds);
        !has_final || lateness_over || worth_a_generation
    }

    async fn merge(&self, addr: &ShardAddr, staged: &[Staged], report: &mut CompactReport) -> Result<(), CompactError> {
        // Bodies first (one GET each; staging segments are small), then the CPU work off
        // the executor.
        let mut bodies = Vec::with_capacity(staged.len());
        for segment in staged {
            bodies.push(self.shards.store().get(&segment.meta.key).await?.body);
        }
        let inputs: Vec<(Arc<SegmentIndex>, Option<Sidecar>, String, Bytes)> = staged
            .iter()
            .zip(bodies)
            .map(|(s, body)| (Arc::clone(&s.index), s.sidecar.clone(), s.meta.key.clone(), body))
            .collect();
        let worker = Arc::clone(&self.worker);
        let limits = *self.shards.limits();
        let addr_copy = *addr;
        let writer = tokio::task::spawn_blocking(move || build_writer(addr_copy, &inputs, &worker, &limits))
            .await
            .map_err(|e| CompactError::Join(e.to_string()))??;
        if writer.file_count() > 0 {
            self.seal(addr, staged, writer, report).await?;
        }
        self.carry_over(staged).await
    }

    /// Seals the merged files as the address's next generation and announces it.
    async fn seal(
        &self,
        addr: &ShardAddr,
        staged: &[Staged],
        writer: SegmentWriter<SpooledTempFile>,
        report: &mut CompactReport,
    ) -> Result<(), CompactError> {
        let retention: Option<Retention> = self.worker.retention.as_ref().map(|policy| policy.retention_for(addr));
        let target = SealTarget {
            task_id: COMPACT_TASK_ID,
            placement: Placement::Final { late: false },
            retention,
            look_in_staging: false,
        };
        let outcome = seal_address(target, *addr, writer, &self.shards, Arc::clone(&self.worker)).await?;
        report.conflicts.extend(outcome.rejected.iter().filter_map(|r| r.uid.clone()));
        for rejection in &outcome.rejected {
            tracing::error!(uid = ?rejection.uid, detail = %rejection.detail, "staged file conflicts with a final generation; left in staging");
        }
        report.files_merged += outcome.packed_files;
        let written: Vec<&SealedInfo> = outcome.segments.iter().filter(|s| s.written_now).collect();
        for segment in &written {
            report.segments_written.push(segment.key.clone());
        }
        // Events for every final segment that holds merged files, written now or by an
        // earlier attempt that died before publishing: a duplicate event is harmless.
        self.publish(staged, &outcome.segments).await
    }

    /// `ShardSealed` and a `COMPACT` audit anchor for each segment holding merged files.
    async fn publish(&self, staged: &[Staged], segments: &[SealedInfo]) -> Result<(), CompactError> {
        let now = self.clock.now();
        let sources: BTreeMap<String, String> = staged
            .iter()
            .map(|s| (format!("source:{}", s.meta.key), vera_protocol::hex::encode(&s.index.footer().merkle_root)))
            .collect();
        let mut events = Vec::new();
        let mut audits = Vec::new();
        for segment in segments.iter().filter(|s| ShardAddr::from_segment_key(&s.key).is_ok()) {
            events.push(segment.sealed_event(COMPACT_TASK_ID, now));
            let mut details = sources.clone();
            details.insert("new_segment".to_owned(), segment.key.clone());
            details.insert("object_blake3".to_owned(), vera_protocol::hex::encode(&segment.object_hash));
            details.insert("merkle_root".to_owned(), vera_protocol::hex::encode(&segment.merkle_root));
            details.insert("files".to_owned(), segment.files.to_string());
            let audit = AuditEvent {
                action: AuditAction::Compact,
                outcome: AuditOutcome::Ok,
                at: now,
                actor: self.actor.clone(),
                request_id: None,
                uid: None,
                segment_key: Some(segment.key.clone()),
                details,
            };
            let envelope = Envelope::new(format!("compact/{}", segment.key), now, Message::AuditEvent(audit));
            audits.push(Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) });
        }
        self.bus.publish(topics::EVENTS, events).await?;
        self.bus.publish(topics::AUDIT, audits).await?;
        Ok(())
    }

    /// Applies what the staging sidecars say now (tombstones, holds, retention
    /// extensions) to the files' final copies. A `vera delete` racing the merge wrote
    /// its tombstone to the staging segment; the merge, having written, reads it here.
    async fn carry_over(&self, staged: &[Staged]) -> Result<(), CompactError> {
        for segment in staged {
            let Some(sidecar) = sidecar_of(self.shards.store().as_ref(), &segment.meta.key).await? else { continue };
            let created_at =
                |uid: &str| segment.index.find(uid).map(|f| Timestamp::from_micros(f.entry.created_at_micros));
            for (uid, tombstone) in &sidecar.tombstones {
                let Some(Ok(created_at)) = created_at(uid) else { continue };
                let request = DeleteRequest {
                    uid: uid.clone(),
                    created_at,
                    reason: tombstone.reason,
                    request_id: tombstone.request_id.clone(),
                    operator: tombstone.operator.clone(),
                };
                match self.lifecycle.delete(&request).await {
                    // Left out of the merge: only the staging copy existed.
                    Ok(_) | Err(LifecycleError::UnknownFile { .. }) => {}
                    Err(other) => return Err(other.into()),
                }
            }
            for (uid, hold) in &sidecar.holds {
                let Some(Ok(created_at)) = created_at(uid) else { continue };
                let request = HoldRequest {
                    uid: uid.clone(),
                    created_at,
                    on: true,
                    request_id: hold.request_id.clone(),
                    operator: hold.operator.clone(),
                };
                self.lifecycle.hold(&request).await?;
            }
            let now = self.clock.now();
            for (uid, extension) in &sidecar.retention {
                let Some(Ok(created_at)) = created_at(uid) else { continue };
                if extension.retain_until <= now {
                    continue;
                }
                let request = RetainRequest {
                    uid: uid.clone(),
                    created_at,
                    retain_until: extension.retain_until,
                    request_id: extension.request_id.clone(),
                    operator: extension.operator.clone(),
                };
                self.lifecycle.retain(&request).await?;
            }
        }
        Ok(())
    }

    /// Deletes redundant, unlocked staging segments; extends the lock of those not
    /// merged yet when it is about to end.
    async fn tidy(
        &self,
        addr: &ShardAddr,
        generations: &[(u32, String)],
        staged: &[Staged],
        now: Timestamp,
        report: &mut CompactReport,
    ) -> Result<(), CompactError> {
        let mut finals = Vec::with_capacity(generations.len());
        for (_, key) in generations {
            finals.push(self.shards.index(key).await?);
        }
        let store = self.shards.store();
        for segment in staged {
            let tombstoned = |uid: &str| segment.sidecar.as_ref().is_some_and(|s| s.is_tombstoned(uid));
            let redundant = segment.index.files().all(|file| {
                tombstoned(file.uid)
                    || finals.iter().any(|index| {
                        index.find(file.uid).is_some_and(|found| found.entry.content_hash == file.entry.content_hash)
                    })
            });
            let age = segment.meta.last_modified.map(|written| {
                u64::try_from((now.as_micros() - written.as_micros()).max(0) / MICROS_PER_SECOND).unwrap_or(0)
            });
            let mut left = || {
                report.staging_left += 1;
                if let Some(age) = age {
                    report.oldest_staging_seconds = Some(report.oldest_staging_seconds.map_or(age, |o| o.max(age)));
                }
            };
            // The lock state costs a HEAD: only for a segment to delete, or one whose
            // lock may be about to end (its write time is not listed, or it is old).
            let retention_micros = i64::from(self.worker.staging.retention_days) * 86_400 * MICROS_PER_SECOND;
            let may_expire_soon = segment.meta.last_modified.is_none_or(|written| {
                written.as_micros().saturating_add(retention_micros - RENEW_BEFORE_SECONDS * MICROS_PER_SECOND)
                    <= now.as_micros()
            });
            if !redundant && (self.worker.retention.is_none() || !may_expire_soon) {
                left();
                continue;
            }
            let head = store.head(&segment.meta.key).await?;
            let locked_until = head.retention.map(|r| r.retain_until).filter(|until| *until > now);
            if redundant && locked_until.is_none() && !head.legal_hold {
                let sidecar_key = vera_protocol::routing::sidecar_key_of(&segment.meta.key);
                match store.delete(&sidecar_key).await {
                    Ok(()) => {}
                    Err(error) if error.kind == StoreErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
                store.delete(&segment.meta.key).await?;
                self.shards.forget(&segment.meta.key);
                report.staging_deleted += 1;
                continue;
            }
            left();
            let renew_at = now.as_micros().saturating_add(RENEW_BEFORE_SECONDS * MICROS_PER_SECOND);
            if !redundant
                && let (Some(until), Some(policy)) = (locked_until, self.worker.retention.as_ref())
                && until.as_micros() < renew_at
            {
                let extended = policy.staging_retention(addr, now, self.worker.staging.retention_days);
                if extended.retain_until > until {
                    store.set_retention(&segment.meta.key, extended).await?;
                    report.staging_extended += 1;
                }
            }
        }
        Ok(())
    }
}

/// The merged segment's writer: every live staged file once, decoded and checked.
fn build_writer(
    addr: ShardAddr,
    inputs: &[(Arc<SegmentIndex>, Option<Sidecar>, String, Bytes)],
    worker: &WorkerSettings,
    limits: &vera_protocol::shard::ReadLimits,
) -> Result<SegmentWriter<SpooledTempFile>, CompactError> {
    let settings = SegmentSettings {
        policy: worker.compression.clone(),
        max_file_bytes: worker.max_file_bytes,
        ..SegmentSettings::new(addr, 0)
    };
    let spill = match &worker.spill_dir {
        Some(dir) => SpooledTempFile::new_in(worker.spill_memory_bytes, dir),
        None => SpooledTempFile::new(worker.spill_memory_bytes),
    };
    let mut writer = SegmentWriter::new(settings, spill)?;
    let mut added: BTreeSet<String> = BTreeSet::new();
    for (index, sidecar, key, body) in inputs {
        let corrupt = |reason: String| CompactError::Corrupt { key: key.clone(), reason };
        for file in index.files() {
            if sidecar.as_ref().is_some_and(|s| s.is_tombstoned(file.uid)) || added.contains(file.uid) {
                continue;
            }
            let range = file.record_range();
            let record = usize::try_from(range.start)
                .ok()
                .zip(usize::try_from(range.end).ok())
                .and_then(|(start, end)| body.get(start..end))
                .ok_or_else(|| corrupt(format!("record of {} lies outside the object", file.uid)))?;
            let raw = index.decode(file, record, limits).map_err(|e| corrupt(e.to_string()))?;
            let created_at =
                Timestamp::from_micros(file.entry.created_at_micros).map_err(|e| corrupt(e.to_string()))?;
            writer.add(FileInput { uid: file.uid, created_at, content_type: Some(file.content_type), bytes: &raw })?;
            added.insert(file.uid.to_owned());
        }
    }
    Ok(writer)
}
