//! Packing one `PackTask`.
//!
//! 1. Stream the slot's rows; validate each (rejections are collected, never fatal);
//!    route it with the task's routing table; hash and compress batches of files on the
//!    rayon pool (off the async executor); add them to one streaming `SegmentWriter` per
//!    shard address, spilling payloads to unnamed temp files.
//! 2. Per address, look at the segments already stored there. A file already stored
//!    with the same content hash is left out (an earlier attempt of this task, or a
//!    re-ingested duplicate, stored it); the same uid with *different* content is
//!    rejected as a duplicate. Retrying a task therefore writes nothing twice.
//! 3. Seal what is left as the next generation and write it create-if-absent with Object
//!    Lock retention. If another worker claimed that generation first, check whether it
//!    stored exactly our files (a concurrent delivery of the same task: success) or
//!    something else (take the next generation). Late arrivals never take generation 0:
//!    it stays free for the task that holds their time slice's own rows, even when that
//!    task seals after this one, so a cold read of the slice's bulk probes one segment. A
//!    segment is late when its slice is older than the slot's newest, holds at most a
//!    tenth of the slot's rows, and its records fit in the suffix a reader fetches of a
//!    later generation (so the missing generation 0 and that one suffix are a late
//!    arrival's whole cold read). Anything else (a slice's own rows cut by a slot limit, a
//!    backfill) takes generation 0 when it is free.
//!
//! A task's files at one address that are too few for a final generation
//! ([`crate::settings::StagingSettings`]) go instead to a staging segment, named by its own
//! object hash and locked for a short time; `vera compact` ([`crate::compact`]) merges an
//! address's staging segments into one final generation once its time slice has closed
//! (ADR 0005). Step 2 looks in staging segments too.
//!
//! A crash anywhere leaves either nothing or complete, verified, immutable segments, and
//! the redelivered task converges on the same result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;
use serde::Serialize;
use tempfile::SpooledTempFile;
use vera_protocol::Timestamp;
use vera_protocol::merkle::Hash;
use vera_protocol::message::PackTask;
use vera_protocol::routing::{STAGING_GENERATION, ShardAddr};
use vera_protocol::shard::{FileInput, HEADER_LEN, Header, PreparedFile, SegmentSettings, SegmentWriter, WriteError};
use vera_source::{Source, SourceError};
use vera_store::shards::{ShardError, ShardStore};
use vera_store::upload::{FileSource, UploadSource};
use vera_store::{Clock, ObjectStore, PutOptions, Retention, StoreError, StoreErrorKind};

use crate::rows::{RejectReason, Rejection, ValidRow, validate_row};
use crate::settings::WorkerSettings;

pub use vera_store::shards::META_OBJECT_HASH;
/// Object metadata key holding the task that wrote the segment.
pub const META_TASK: &str = "vera-task";
/// A late segment holds at most this many record bytes: what a reader's suffix of a later
/// generation holds whole.
const LATE_SEGMENT_MAX_BYTES: u64 = vera_store::shards::DEFAULT_LATER_SUFFIX_BYTES;
/// A late segment's time slice holds at most 1/this of its slot's rows.
const LATE_SLICE_SHARE: u64 = 10;
/// How many generations a task may skip past concurrent writers before giving up.
const MAX_GENERATION_ATTEMPTS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("task is invalid: {0}")]
    InvalidTask(String),
    #[error("source failed")]
    Source(#[from] SourceError),
    #[error("object store failed")]
    Store(#[from] StoreError),
    #[error("reading stored segments failed")]
    Shard(#[from] ShardError),
    #[error("building a segment failed")]
    Write(#[from] WriteError),
    #[error("spill i/o failed")]
    Io(#[from] std::io::Error),
    #[error("concurrent writers overlap at {prefix}; the task will be retried")]
    Conflict { prefix: String },
    #[error("background work failed: {0}")]
    Join(String),
}

impl PackError {
    /// True when retrying the same task can never succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            PackError::InvalidTask(_) => true,
            PackError::Store(error) => matches!(error.kind, StoreErrorKind::Config | StoreErrorKind::InvalidInput),
            _ => false,
        }
    }
}

/// Where a sealed group of files goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The next final generation; `late` keeps it out of generation 0.
    Final { late: bool },
    /// A staging segment, merged later by the compactor.
    Staging,
}

/// A segment holding files of this task, for the `ShardSealed` event and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SealedInfo {
    pub addr: ShardAddr,
    pub generation: u32,
    pub key: String,
    pub version_id: Option<String>,
    pub object_hash: Hash,
    pub merkle_root: Hash,
    pub files: u64,
    pub raw_bytes: u64,
    pub object_bytes: u64,
    pub retain_until: Option<Timestamp>,
    /// False when an earlier attempt (or a concurrent one) wrote it.
    pub written_now: bool,
}

impl SealedInfo {
    /// The `ShardSealed` event announcing this segment, keyed by its address.
    pub fn sealed_event(&self, task_id: &str, now: Timestamp) -> vera_bus::Outgoing {
        let sealed = vera_protocol::message::ShardSealed {
            task_id: task_id.to_owned(),
            addr: self.addr,
            generation: self.generation,
            key: self.key.clone(),
            version_id: self.version_id.clone(),
            object_hash: self.object_hash,
            merkle_root: self.merkle_root,
            files: self.files,
            raw_bytes: self.raw_bytes,
            object_bytes: self.object_bytes,
            retain_until: self.retain_until,
            sealed_at: now,
        };
        let message = vera_protocol::message::Message::ShardSealed(sealed);
        let envelope = vera_protocol::message::Envelope::new(format!("sealed/{}", self.key), now, message);
        vera_bus::Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PackReport {
    pub task_id: String,
    pub rows: u64,
    /// Files written in segments by this attempt.
    pub packed_files: u64,
    /// Files found already stored with identical content.
    pub already_stored: u64,
    pub bytes_in: u64,
    pub rejected: Vec<Rejection>,
    pub segments: Vec<SealedInfo>,
}

/// The wall clock, for a staging segment's lock (never for its bytes).
fn wall_clock_now() -> Timestamp {
    vera_store::SystemClock.now()
}

/// Accumulated state while streaming a slot; moved to and from the blocking pool.
struct SlotState {
    writers: HashMap<ShardAddr, SegmentWriter<SpooledTempFile>>,
    /// Routed rows by time slice (epoch, bucket): a small share of an older slice than
    /// the newest is late arrivals.
    slice_rows: HashMap<(u16, i32), u64>,
    seen: HashSet<String>,
    rejected: Vec<Rejection>,
    rows: u64,
    bytes_in: u64,
}

/// Packs one task. Safe to run twice, concurrently or after a crash.
pub async fn pack_task(
    task: &PackTask,
    source: &dyn Source,
    shards: &ShardStore,
    settings: &WorkerSettings,
) -> Result<PackReport, PackError> {
    if task.source != source.name() {
        return Err(PackError::InvalidTask(format!(
            "task is for source {:?}, worker reads {:?}",
            task.source,
            source.name()
        )));
    }
    task.routing.validate().map_err(|e| PackError::InvalidTask(e.to_string()))?;
    let settings = Arc::new(settings.clone());
    let task_arc = Arc::new(task.clone());
    let state = SlotState {
        writers: HashMap::new(),
        slice_rows: HashMap::new(),
        seen: HashSet::new(),
        rejected: Vec::new(),
        rows: 0,
        bytes_in: 0,
    };
    let mut rows = source.read_slot(task.slot);
    let mut batch = Vec::with_capacity(settings.batch_rows);
    // One batch is hashed and compressed on the blocking pool while the next one is read
    // from the source, so source I/O and CPU work overlap.
    let mut in_flight: Option<tokio::task::JoinHandle<Result<SlotState, PackError>>> = None;
    let mut idle_state = Some(state);
    loop {
        let next = rows.try_next().await?;
        let done = next.is_none();
        if let Some(row) = next {
            batch.push(row);
        }
        if batch.len() >= settings.batch_rows || (done && !batch.is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(settings.batch_rows));
            let current = match (in_flight.take(), idle_state.take()) {
                (Some(handle), _) => handle.await.map_err(|e| PackError::Join(e.to_string()))??,
                (None, Some(state)) => state,
                (None, None) => return Err(PackError::Join("slot state lost".into())),
            };
            let (settings, task) = (Arc::clone(&settings), Arc::clone(&task_arc));
            in_flight = Some(tokio::task::spawn_blocking(move || add_batch(current, full, &task, &settings)));
        }
        if done {
            break;
        }
    }
    let state = match (in_flight.take(), idle_state.take()) {
        (Some(handle), _) => handle.await.map_err(|e| PackError::Join(e.to_string()))??,
        (None, Some(state)) => state,
        (None, None) => return Err(PackError::Join("slot state lost".into())),
    };
    drop(rows);

    let mut report = PackReport {
        task_id: task.task_id.clone(),
        rows: state.rows,
        bytes_in: state.bytes_in,
        ..PackReport::default()
    };
    let mut rejected = state.rejected;
    let mut writers: Vec<(ShardAddr, SegmentWriter<SpooledTempFile>)> = state.writers.into_iter().collect();
    // Newest time slice first: the slot's own rows are most of its bytes.
    writers.sort_by_key(|(addr, _)| (std::cmp::Reverse((addr.epoch, addr.time_bucket)), *addr));
    let late_slices = late_slices(&state.slice_rows);
    let now = wall_clock_now();
    let outcomes: Vec<Result<AddressOutcome, PackError>> = futures::stream::iter(writers)
        .map(|(addr, writer)| {
            let placement = if settings.staging.is_direct(writer.file_count() as u64, writer.spilled_bytes()) {
                let late = late_slices.contains(&(addr.epoch, addr.time_bucket))
                    && writer.spilled_bytes() <= LATE_SEGMENT_MAX_BYTES;
                Placement::Final { late }
            } else {
                Placement::Staging
            };
            let retention = settings.retention.as_ref().map(|policy| match placement {
                Placement::Final { .. } => policy.retention_for(&addr),
                Placement::Staging => policy.staging_retention(&addr, now, settings.staging.retention_days),
            });
            let target = SealTarget { task_id: &task.task_id, placement, retention, look_in_staging: true };
            seal_address(target, addr, writer, shards, Arc::clone(&settings))
        })
        .buffer_unordered(settings.put_concurrency)
        .collect()
        .await;
    for outcome in outcomes {
        let outcome = outcome?;
        report.packed_files += outcome.packed_files;
        report.already_stored += outcome.already_stored;
        rejected.extend(outcome.rejected);
        report.segments.extend(outcome.segments);
    }
    rejected.sort_by(|a, b| (a.watermark, &a.uid).cmp(&(b.watermark, &b.uid)));
    report.segments.sort_by(|a, b| a.key.cmp(&b.key));
    if !rejected.is_empty() {
        write_rejects_report(shards.store().as_ref(), &task.task_id, &rejected).await?;
    }
    report.rejected = rejected;
    Ok(report)
}

fn add_batch(
    mut state: SlotState,
    batch: Vec<vera_source::SourceRow>,
    task: &PackTask,
    settings: &WorkerSettings,
) -> Result<SlotState, PackError> {
    let mut routed: Vec<(ValidRow, ShardAddr)> = Vec::with_capacity(batch.len());
    for row in batch {
        state.rows += 1;
        match validate_row(row, settings.max_file_bytes, &mut state.seen) {
            Ok(valid) => match task.routing.locate(&valid.uid, valid.created_at) {
                Ok(addr) => {
                    state.bytes_in += valid.bytes.len() as u64;
                    routed.push((valid, addr));
                }
                Err(error) => {
                    state.rejected.push(Rejection {
                        watermark: valid.watermark,
                        uid: Some(valid.uid),
                        reason: RejectReason::UnroutableUid,
                        detail: error.to_string(),
                    });
                }
            },
            Err(rejection) => {
                tracing::warn!(watermark = rejection.watermark, uid = ?rejection.uid, reason = ?rejection.reason, detail = %rejection.detail, "row rejected");
                state.rejected.push(rejection);
            }
        }
    }
    for (_, addr) in &routed {
        *state.slice_rows.entry((addr.epoch, addr.time_bucket)).or_default() += 1;
    }
    let segment_settings = |addr: ShardAddr| SegmentSettings {
        policy: settings.compression.clone(),
        max_file_bytes: settings.max_file_bytes,
        ..SegmentSettings::new(addr, 0)
    };
    let prepared: Vec<(ShardAddr, Result<PreparedFile, WriteError>)> = routed
        .into_par_iter()
        .map(|(row, addr)| {
            let settings = segment_settings(addr);
            // A malformed content type in the source must not lose the file: sniff instead.
            let content_type = row.content_type.filter(|c| vera_protocol::shard::writer::valid_content_type(c));
            let input = FileInput {
                uid: &row.uid,
                created_at: row.created_at,
                content_type: content_type.as_deref(),
                bytes: &[],
            };
            let result = PreparedFile::prepare_owned(&settings, input, row.bytes);
            (addr, result)
        })
        .collect();
    for (addr, result) in prepared {
        let file = result?;
        let writer = match state.writers.entry(addr) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // In memory up to the threshold, then a temp file: most segments never
                // touch the disk twice, and a huge one still cannot exhaust memory.
                let spill = match &settings.spill_dir {
                    Some(dir) => SpooledTempFile::new_in(settings.spill_memory_bytes, dir),
                    None => SpooledTempFile::new(settings.spill_memory_bytes),
                };
                entry.insert(SegmentWriter::new(segment_settings(addr), spill)?)
            }
        };
        writer.add_prepared(file)?;
    }
    Ok(state)
}

pub struct AddressOutcome {
    pub packed_files: u64,
    pub already_stored: u64,
    pub rejected: Vec<Rejection>,
    pub segments: Vec<SealedInfo>,
}

/// Leaves out files already stored under `addr` (in its final generations, and with
/// `look_in_staging` in its staging segments too) and files erased there (rejected as
/// [`RejectReason::Erased`]); returns the final generations and the
/// keys that hold the files left out.
async fn drop_stored_files(
    addr: &ShardAddr,
    writer: &mut SegmentWriter<SpooledTempFile>,
    shards: &ShardStore,
    look_in_staging: bool,
    rejected: &mut Vec<Rejection>,
) -> Result<(Vec<(u32, String)>, BTreeMap<String, u64>), PackError> {
    let layout = shards.layout(addr).await?;
    let existing = layout.generations;
    let staging: Vec<String> =
        if look_in_staging { layout.staging.into_iter().map(|s| s.key).collect() } else { Vec::new() };
    let mut holders: BTreeMap<String, u64> = BTreeMap::new();
    let mut drop: HashSet<String> = HashSet::new();
    for key in existing.iter().map(|(_, key)| key).chain(staging.iter()) {
        let index = shards.index(key).await?;
        for (uid, hash) in writer.pending_files() {
            let Some(found) = index.find(uid) else { continue };
            if found.entry.content_hash == *hash {
                *holders.entry(key.clone()).or_default() += 1;
            } else {
                rejected.push(Rejection {
                    watermark: 0,
                    uid: Some(uid.to_owned()),
                    reason: RejectReason::DuplicateUid,
                    detail: format!("uid already stored in {key} with different content"),
                });
            }
            drop.insert(uid.to_owned());
        }
    }
    if !layout.erased.is_empty() {
        for (uid, _) in writer.pending_files() {
            if !drop.contains(uid) && layout.erased.contains(&vera_protocol::routing::erasure_id(uid)) {
                rejected.push(Rejection {
                    watermark: 0,
                    uid: Some(uid.to_owned()),
                    reason: RejectReason::Erased,
                    detail: "uid was erased at this address; an erasure marker stands".into(),
                });
                drop.insert(uid.to_owned());
            }
        }
    }
    if !drop.is_empty() {
        writer.retain(|uid| !drop.contains(uid));
    }
    Ok((existing, holders))
}

/// The time slices whose rows in a slot are late arrivals: older than the slot's newest
/// slice, and at most a [`LATE_SLICE_SHARE`]th of its rows.
fn late_slices(slice_rows: &HashMap<(u16, i32), u64>) -> HashSet<(u16, i32)> {
    let total: u64 = slice_rows.values().sum();
    let Some(newest) = slice_rows.keys().max() else { return HashSet::new() };
    slice_rows
        .iter()
        .filter(|(slice, rows)| *slice < newest && **rows * LATE_SLICE_SHARE <= total)
        .map(|(slice, _)| *slice)
        .collect()
}

/// The generation a new segment at an address first tries: after every stored one, but
/// generation 0 for a slot's own rows whenever it is free, and never for late arrivals.
fn first_generation(existing: &[(u32, String)], late: bool) -> u32 {
    if !late && !existing.iter().any(|(generation, _)| *generation == 0) {
        return 0;
    }
    existing.iter().map(|(generation, _)| generation + 1).max().unwrap_or(1)
}

/// Where and how [`seal_address`] writes.
pub struct SealTarget<'a> {
    /// Recorded in the segment's metadata ([`META_TASK`]).
    pub task_id: &'a str,
    pub placement: Placement,
    pub retention: Option<Retention>,
    /// Whether files already in staging segments count as stored (a pack task), or not
    /// (the compactor, which is moving them out of there).
    pub look_in_staging: bool,
}

/// Seals the files of one address that are not stored yet, where `target` says (see the
/// module docs).
pub async fn seal_address(
    target: SealTarget<'_>,
    addr: ShardAddr,
    mut writer: SegmentWriter<SpooledTempFile>,
    shards: &ShardStore,
    settings: Arc<WorkerSettings>,
) -> Result<AddressOutcome, PackError> {
    let mut rejected = Vec::new();
    let (existing, holders) =
        drop_stored_files(&addr, &mut writer, shards, target.look_in_staging, &mut rejected).await?;
    let already_stored: u64 = holders.values().sum();
    let mut segments = Vec::new();
    for key in holders.keys() {
        segments.push(describe_existing(shards, key).await?);
    }
    if writer.file_count() == 0 {
        return Ok(AddressOutcome { packed_files: 0, already_stored, rejected, segments });
    }
    let our_files: HashMap<String, Hash> = writer.pending_files().map(|(uid, hash)| (uid.to_owned(), *hash)).collect();
    let mut generation = match target.placement {
        Placement::Final { late } => first_generation(&existing, late),
        Placement::Staging => STAGING_GENERATION,
    };
    writer.set_generation(generation);
    // The sealed segment goes to an unnamed temp file and streams from there (a multipart
    // upload on S3), so a worker holds one upload part in memory, not a whole segment.
    let spill_dir = settings.spill_dir.clone();
    let (sealed, file) = tokio::task::spawn_blocking(move || -> Result<_, PackError> {
        let mut file = match &spill_dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        let sealed = writer.finish(&mut sink)?;
        std::io::Write::flush(&mut sink)?;
        drop(sink);
        file.sync_data()?;
        Ok((sealed, file))
    })
    .await
    .map_err(|e| PackError::Join(e.to_string()))??;
    let retention = target.retention;
    let body = Arc::new(FileSource::new(file)?);
    let object_bytes = body.len();
    let mut object_hash = sealed.object_hash;
    for _ in 0..MAX_GENERATION_ATTEMPTS {
        let key = match target.placement {
            Placement::Final { .. } => addr.segment_key(generation),
            Placement::Staging => addr.staging_segment_key(&object_hash),
        };
        let mut options = PutOptions::create()
            .with_metadata(META_OBJECT_HASH, vera_protocol::hex::encode(&object_hash))
            .with_metadata(META_TASK, target.task_id.to_owned());
        options.retention = retention;
        match shards.store().put_source(&key, body.clone(), options).await {
            Ok(outcome) => {
                tracing::info!(key = %key, files = sealed.files, bytes = object_bytes, "segment sealed");
                segments.push(SealedInfo {
                    addr,
                    generation,
                    key,
                    version_id: outcome.version_id,
                    object_hash,
                    merkle_root: sealed.footer.merkle_root,
                    files: sealed.files,
                    raw_bytes: sealed.raw_bytes,
                    object_bytes,
                    retain_until: retention.map(|r: Retention| r.retain_until),
                    written_now: true,
                });
                return Ok(AddressOutcome { packed_files: sealed.files, already_stored, rejected, segments });
            }
            Err(error) if error.kind == StoreErrorKind::AlreadyExists => {
                // Someone took this generation. Is it our content (a concurrent delivery)?
                let index = shards.index(&key).await?;
                let ours = our_files
                    .iter()
                    .filter(|(uid, hash)| index.find(uid).is_some_and(|f| f.entry.content_hash == **hash))
                    .count();
                if ours == our_files.len() && index.len() == our_files.len() {
                    segments.push(describe_existing(shards, &key).await?);
                    return Ok(AddressOutcome {
                        packed_files: 0,
                        already_stored: already_stored + ours as u64,
                        rejected,
                        segments,
                    });
                }
                if ours > 0 || target.placement == Placement::Staging {
                    // A staging key is named by its content: another content there is a
                    // hash-prefix collision, which a retry cannot resolve either.
                    return Err(PackError::Conflict { prefix: addr.key_prefix() });
                }
                // Each generation in turn: a concurrent delivery of this task may hold our
                // files in the next one.
                generation += 1;
                // Only the header names the generation: patch it in place and rehash.
                let header = Header { generation, ..sealed.header }.encode();
                let patched = body.clone();
                object_hash = tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
                    std::os::unix::fs::FileExt::write_all_at(patched.file(), &header[..HEADER_LEN], 0)?;
                    Ok(*patched.blake3()?.as_bytes())
                })
                .await
                .map_err(|e| PackError::Join(e.to_string()))??;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(PackError::Conflict { prefix: addr.key_prefix() })
}

/// Describes a segment already in the store (for re-emitting its `ShardSealed`): a final
/// generation or a staging segment.
pub async fn describe_existing(shards: &ShardStore, key: &str) -> Result<SealedInfo, PackError> {
    let (addr, generation) = match ShardAddr::from_segment_key(key) {
        Ok(found) => found,
        Err(_) => ShardAddr::from_staging_key(key)
            .map(|(addr, _)| (addr, STAGING_GENERATION))
            .map_err(|e| PackError::InvalidTask(e.to_string()))?,
    };
    let meta = shards.store().head(key).await?;
    let index = shards.index(key).await?;
    let object_hash = meta
        .metadata
        .get(META_OBJECT_HASH)
        .and_then(|hex| vera_protocol::hex::decode(hex))
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, key, "segment has no object hash metadata"))?;
    Ok(SealedInfo {
        addr,
        generation,
        key: key.to_owned(),
        version_id: meta.version_id,
        object_hash,
        merkle_root: index.footer().merkle_root,
        files: index.len() as u64,
        raw_bytes: index.files().map(|f| u64::from(f.entry.raw_len)).sum(),
        object_bytes: meta.len,
        retain_until: meta.retention.map(|r| r.retain_until),
        written_now: false,
    })
}

/// Key of a task's rejects report.
pub fn rejects_report_key(task_id: &str) -> String {
    vera_store::reports::rejects_report_key(task_id)
}

async fn write_rejects_report(store: &dyn ObjectStore, task_id: &str, rejected: &[Rejection]) -> Result<(), PackError> {
    #[derive(Serialize)]
    struct Report<'a> {
        task_id: &'a str,
        rejected: &'a [Rejection],
    }
    let body = serde_json::to_vec(&Report { task_id, rejected }).map_err(|e| PackError::Join(e.to_string()))?;
    match store.put(&rejects_report_key(task_id), Bytes::from(body), PutOptions::create()).await {
        Ok(_) => Ok(()),
        // The same task wrote the same report before.
        Err(error) if error.kind == StoreErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::{first_generation, late_slices};

    #[test]
    fn a_small_share_of_an_older_slice_is_late_and_nothing_of_the_newest() {
        let slots = HashMap::from([((1, 20), 30), ((1, 21), 900), ((1, 19), 70), ((0, 30), 5)]);
        // 1,005 rows: day 20 (30) and day 19 (70) are at most a tenth; epoch 0 is older still.
        assert_eq!(late_slices(&slots), HashSet::from([(1, 20), (1, 19), (0, 30)]));
        // Interleaved days (a backfill): none is late.
        let interleaved = HashMap::from([((1, 20), 100), ((1, 21), 100), ((1, 22), 100)]);
        assert!(late_slices(&interleaved).is_empty());
        // The newest slice is never late, however few its rows.
        let tail = HashMap::from([((1, 20), 990), ((1, 21), 10)]);
        assert!(late_slices(&tail).is_empty());
        assert!(late_slices(&HashMap::new()).is_empty());
    }

    fn stored(generations: &[u32]) -> Vec<(u32, String)> {
        generations.iter().map(|g| (*g, format!("g{g:06}.vera"))).collect()
    }

    #[test]
    fn late_arrivals_leave_generation_0_to_their_slices_own_rows() {
        assert_eq!(first_generation(&stored(&[]), false), 0);
        assert_eq!(first_generation(&stored(&[]), true), 1, "late, nothing stored: generation 1");
        assert_eq!(first_generation(&stored(&[1]), false), 0, "the slice's rows after its late arrivals");
        assert_eq!(first_generation(&stored(&[1]), true), 2);
        assert_eq!(first_generation(&stored(&[0]), true), 1);
        assert_eq!(first_generation(&stored(&[0]), false), 1, "a slice's second slot");
        assert_eq!(first_generation(&stored(&[0, 1, 2]), false), 3);
        assert_eq!(first_generation(&stored(&[1, 2]), true), 3);
    }
}
