//! Reconciliation: proof that every source row of a range is archived or reported.
//!
//! `reconcile` streams the identities of a range's rows from the source (no payloads)
//! and puts each in exactly one class:
//!
//! * **pending**: past the producer's committed position, so not planned yet;
//! * **rejected**: a worker's rejects report names its watermark, with a reason;
//! * **stored**: its uid is in the index of a segment under the address it routes to
//!   (**erased** counts those of them tombstoned since);
//! * **missing**: none of these. Anything here is a completeness failure.
//!
//! For a `created_at` range it also counts **extra** files: stored in the range's
//! addresses with a `created_at` in the range, but matched by no source row.
//!
//! Memory is bounded whatever the range: rows stream from a cursor, and the uid sets of
//! at most [`ReconcileSettings::cached_addresses`] addresses are held at once (an
//! address evicted and met again is read again). Rejects reports are read whole; they
//! hold a line per rejected row, a small share of any source.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;
use vera_protocol::message::ScanPosition;
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_source::{RowKey, Source, SourceError};
use vera_store::shards::{ShardError, ShardStore, sidecar_of};
use vera_store::{ObjectStore, StoreError};

use crate::WatermarkStore;

/// At most this many missing rows are listed by name in a report.
const MISSING_LISTED: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRange {
    /// Watermarks `from < watermark <= to`.
    pub watermarks: (i64, i64),
    /// With it, only rows created in `[from, to)` count, and extra files are counted.
    pub created: Option<(Timestamp, Timestamp)>,
}

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Addresses whose uid sets are held at once.
    pub cached_addresses: usize,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings { cached_addresses: 256 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the source failed")]
    Source(#[from] SourceError),
    #[error("reading the store failed")]
    Store(#[from] StoreError),
    #[error("reading a segment failed")]
    Shard(#[from] ShardError),
    #[error("the rejects report {key} is not valid JSON of a rejects report")]
    BadRejectsReport { key: String, source: serde_json::Error },
    #[error("the producer's watermark object is unreadable")]
    Watermark(#[from] crate::ProducerError),
    #[error("the range is invalid: {0}")]
    Range(String),
}

/// One row reported missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRow {
    pub watermark: i64,
    /// The horizon part of its position, for a source scanned by a horizon column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<i64>,
    pub uid: Option<String>,
    pub created_at: Option<String>,
}

/// What `vera reconcile` prints, and what an attestation signs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub source: String,
    /// Watermarks `(from, to]`.
    pub watermark_from: i64,
    pub watermark_to: i64,
    /// `created_at` in `[from, to)`, when the range was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_to: Option<Timestamp>,
    /// The producer's committed position when the reconcile ran.
    pub committed: Option<ScanPosition>,
    /// Rows of the range in the source (pending ones included).
    pub in_source: u64,
    pub stored: u64,
    /// Of the stored rows, those erased (tombstoned) since.
    pub erased: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub missing: u64,
    /// Past the producer's committed position: not planned yet, so not yet expected.
    pub pending: u64,
    /// Stored files of a `created_at` range matched by no source row (`None` for a
    /// watermark range: its addresses also hold other ranges' files).
    pub extra: Option<u64>,
    /// Uids stored in more than one segment generation of their address.
    pub stored_twice: u64,
    /// Under a `created_at` range: rows left out because their `created_at` is NULL or
    /// unreadable (each is a rejection of its own, under a watermark range).
    pub undated: u64,
    /// Rows sharing their watermark value with another row.
    pub duplicate_watermarks: u64,
    /// The first missing rows, by watermark.
    pub missing_rows: Vec<MissingRow>,
}

impl ReconcileReport {
    /// Complete: nothing missing and nothing stored twice.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.stored_twice == 0
    }
}

/// Reads every rejects report of `source`: watermark → reason.
pub async fn read_rejections(store: &dyn ObjectStore, source: &str) -> Result<HashMap<i64, String>, ReconcileError> {
    #[derive(Deserialize)]
    struct Report {
        task_id: String,
        rejected: Vec<Rejected>,
    }
    #[derive(Deserialize)]
    struct Rejected {
        watermark: i64,
        reason: String,
    }
    let mut rejections = HashMap::new();
    let task_prefix = format!("{source}:");
    // Only this source's reports (and those of sources whose name continues it, which
    // the task id below tells apart).
    let key_prefix = vera_store::reports::rejects_report_key(&task_prefix);
    let key_prefix = key_prefix.strip_suffix(".json").unwrap_or(&key_prefix);
    for meta in store.list(key_prefix).await? {
        let body = store.get(&meta.key).await?.body;
        let report: Report = serde_json::from_slice(&body)
            .map_err(|source| ReconcileError::BadRejectsReport { key: meta.key.clone(), source })?;
        if !report.task_id.starts_with(&task_prefix) {
            continue;
        }
        for rejected in report.rejected {
            rejections.insert(rejected.watermark, rejected.reason);
        }
    }
    Ok(rejections)
}

/// The files stored under one address.
struct AddressFiles {
    /// uid → `created_at` in microseconds.
    files: HashMap<String, i64>,
    tombstoned: HashSet<String>,
}

/// Reads the uid sets of addresses, holding a bounded number.
struct AddressCache<'a> {
    shards: &'a ShardStore,
    capacity: usize,
    loaded: HashMap<ShardAddr, AddressFiles>,
    order: VecDeque<ShardAddr>,
    /// Addresses read at least once: their duplicates are counted once.
    seen: HashSet<ShardAddr>,
    stored_twice: u64,
}

impl<'a> AddressCache<'a> {
    async fn get(&mut self, addr: &ShardAddr) -> Result<&AddressFiles, ReconcileError> {
        if !self.loaded.contains_key(addr) {
            let files = self.read(addr).await?;
            if self.loaded.len() >= self.capacity
                && let Some(oldest) = self.order.pop_front()
            {
                self.loaded.remove(&oldest);
            }
            self.order.push_back(*addr);
            self.loaded.insert(*addr, files);
        }
        Ok(&self.loaded[addr])
    }

    async fn read(&mut self, addr: &ShardAddr) -> Result<AddressFiles, ReconcileError> {
        let mut files = HashMap::new();
        let mut tombstoned = HashSet::new();
        let mut twice = 0;
        let layout = self.shards.layout(addr).await?;
        // Staging segments last: a staged copy of a file a generation already holds is
        // the same file waiting for its staging segment's deletion, not a second one.
        let finals = layout.generations.into_iter().map(|(_, key)| (key, true));
        let staged = layout.staging.into_iter().map(|staging| (staging.key, false));
        for (key, is_final) in finals.chain(staged) {
            let index = self.shards.index(&key).await?;
            let sidecar = sidecar_of(self.shards.store().as_ref(), &key).await?;
            for file in index.files() {
                if !is_final && files.contains_key(file.uid) {
                    continue;
                }
                if files.insert(file.uid.to_owned(), file.entry.created_at_micros).is_some() {
                    twice += 1;
                }
                if sidecar.as_ref().is_some_and(|sidecar| sidecar.is_tombstoned(file.uid)) {
                    tombstoned.insert(file.uid.to_owned());
                }
            }
        }
        // The shard store keeps what it read; this cache is the bounded copy.
        self.shards.forget_all();
        if self.seen.insert(*addr) {
            self.stored_twice += twice;
        }
        Ok(AddressFiles { files, tombstoned })
    }
}

/// Reconciles `range` of `source` against the store. `progress` is called once per
/// source row read.
pub async fn reconcile(
    source: &dyn Source,
    store: Arc<dyn ObjectStore>,
    routing: &RoutingTable,
    range: &ReconcileRange,
    settings: &ReconcileSettings,
    progress: &(dyn Fn() + Sync),
) -> Result<ReconcileReport, ReconcileError> {
    let (from, to) = range.watermarks;
    if to <= from {
        return Err(ReconcileError::Range(format!("the watermark range ({from}, {to}] is empty")));
    }
    if let Some((created_from, created_to)) = range.created
        && created_to <= created_from
    {
        return Err(ReconcileError::Range("the created_at range ends before it starts".into()));
    }
    let committed = WatermarkStore::new(Arc::clone(&store), source.name()).peek().await?.map(|state| {
        // A slot claimed but not yet published is not committed.
        state.position()
    });
    let rejections = read_rejections(store.as_ref(), source.name()).await?;
    let shards = ShardStore::new(Arc::clone(&store));
    let mut cache = AddressCache {
        shards: &shards,
        capacity: settings.cached_addresses.max(1),
        loaded: HashMap::new(),
        order: VecDeque::new(),
        seen: HashSet::new(),
        stored_twice: 0,
    };
    let mut report = ReconcileReport {
        source: source.name().to_owned(),
        watermark_from: from,
        watermark_to: to,
        created_from: range.created.map(|(start, _)| start),
        created_to: range.created.map(|(_, end)| end),
        committed,
        extra: range.created.map(|_| 0),
        ..ReconcileReport::default()
    };
    // Stored files of the range matched by a source row, per address, for `extra`.
    let mut matched: HashMap<ShardAddr, HashSet<String>> = HashMap::new();
    let mut previous_watermark = None;
    let mut rows = source.scan_keys(from, to);
    while let Some(row) = rows.next().await {
        let row = row?;
        progress();
        if previous_watermark == Some(row.position.watermark) {
            report.duplicate_watermarks += 1;
        }
        previous_watermark = Some(row.position.watermark);
        let created_at = row.created_at.as_deref().and_then(|text| Timestamp::parse(text).ok());
        if let Some((created_from, created_to)) = range.created {
            match created_at {
                None => {
                    report.undated += 1;
                    continue;
                }
                Some(at) if at < created_from || at >= created_to => continue,
                Some(_) => {}
            }
        }
        report.in_source += 1;
        if committed.is_none_or(|committed| row.position > committed) {
            report.pending += 1;
            continue;
        }
        if let Some(reason) = rejections.get(&row.position.watermark) {
            report.rejected += 1;
            *report.rejected_by_reason.entry(reason.clone()).or_default() += 1;
            continue;
        }
        let addr = match (&row.uid, created_at) {
            (Some(uid), Some(at)) => routing.locate(uid, at).ok(),
            _ => None,
        };
        let found = match (addr, &row.uid) {
            (Some(addr), Some(uid)) => {
                let files = cache.get(&addr).await?;
                let found = files.files.contains_key(uid);
                if found && files.tombstoned.contains(uid) {
                    report.erased += 1;
                }
                if found && range.created.is_some() {
                    matched.entry(addr).or_default().insert(uid.clone());
                }
                found
            }
            _ => false,
        };
        if found {
            report.stored += 1;
        } else {
            report.missing += 1;
            if report.missing_rows.len() < MISSING_LISTED {
                let RowKey { position, uid, created_at } = row;
                report.missing_rows.push(MissingRow {
                    watermark: position.watermark,
                    horizon: position.horizon,
                    uid,
                    created_at,
                });
            }
        }
    }
    drop(rows);
    if let Some((created_from, created_to)) = range.created {
        let mut extra = 0;
        for addr in addresses_between(routing, created_from, created_to)? {
            let none = HashSet::new();
            let matched_here = matched.get(&addr).unwrap_or(&none);
            let files = cache.get(&addr).await?;
            let (from_micros, to_micros) = (created_from.as_micros(), created_to.as_micros());
            extra += files
                .files
                .iter()
                .filter(|(uid, at)| (from_micros..to_micros).contains(*at) && !matched_here.contains(*uid))
                .count() as u64;
        }
        report.extra = Some(extra);
    }
    report.stored_twice = cache.stored_twice;
    Ok(report)
}

/// Every address whose time bucket overlaps `[from, to)`, under every epoch in force.
fn addresses_between(routing: &RoutingTable, from: Timestamp, to: Timestamp) -> Result<Vec<ShardAddr>, ReconcileError> {
    const MAX_ADDRESSES: usize = 1 << 22;
    let bad = |error: vera_protocol::RoutingError| ReconcileError::Range(error.to_string());
    let mut addresses = Vec::new();
    let mut at = from;
    while at < to {
        let epoch = routing.epoch_for(at).map_err(bad)?;
        // Any valid uid names the time bucket; its hash bucket does not matter here.
        let first = epoch.locate("reconcile", at).map_err(bad)?;
        for bucket in 0..(1u32 << epoch.n_bits) {
            addresses.push(
                ShardAddr::new(epoch.id, epoch.granularity, first.time_bucket, epoch.n_bits, bucket).map_err(bad)?,
            );
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(ReconcileError::Range(format!(
                "the created_at range spans more than {MAX_ADDRESSES} addresses; reconcile it in parts"
            )));
        }
        let (_, end) = first.time_range();
        if end <= at {
            break;
        }
        at = end;
    }
    Ok(addresses)
}
