//! The audit log on S3: immutable segments of entries, and signed checkpoints.
//!
//! Every writer owns one log, named by its log id (for example the pod's ordinal, or
//! the bus partition it consumes). Writers never coordinate: a log's next segment key is
//! fixed by the log's size, and segments are written create-if-absent, so two writers
//! that were wrongly given the same id cannot both extend it; the loser reloads and
//! retries. `vera audit verify` checks every log it finds.
//!
//! Keys (the layout is specified in FORMAT.md §8):
//!
//! * `audit/logs/<log>/segments/<first index, 20 digits>.jsonl`
//! * `audit/logs/<log>/checkpoints/<tree size, 20 digits>.note`
//!
//! A segment is LF-terminated JSON lines: a header (`first_index`, `count`, and the
//! tree's frontier and root before the segment), `count` entries (each the envelope of
//! one `AuditEvent`, exactly as hashed), and a trailer with the size and root after it.
//! The leaf of an entry is `merkle::leaf_hash(entry line without its LF)`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use vera_protocol::Timestamp;
use vera_protocol::merkle::{Hash, leaf_hash};
use vera_protocol::message::{Envelope, Message};
use vera_store::{Clock, LockMode, ObjectStore, PutOptions, Retention, StoreErrorKind};

use crate::AuditError;
use crate::note::{Checkpoint, NoteSigner, Verifiers};
use crate::tree::Frontier;

pub const PREFIX: &str = "audit/logs/";
pub const SEGMENT_FORMAT: &str = "vera-audit-segment";
pub const SEGMENT_VERSION: u32 = 1;
/// Event ids remembered to drop redeliveries: a redelivered event whose first delivery
/// is among the last this many entries of the log is not appended again.
pub const DEDUPE_WINDOW: usize = 100_000;

pub fn segment_key(log: &str, first_index: u64) -> String {
    format!("{PREFIX}{log}/segments/{first_index:020}.jsonl")
}

pub fn checkpoint_key(log: &str, size: u64) -> String {
    format!("{PREFIX}{log}/checkpoints/{size:020}.note")
}

fn segments_prefix(log: &str) -> String {
    format!("{PREFIX}{log}/segments/")
}

fn checkpoints_prefix(log: &str) -> String {
    format!("{PREFIX}{log}/checkpoints/")
}

/// The number in a `…/<20 digits>.<ext>` key.
fn index_of(key: &str, ext: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?.strip_suffix(ext)?;
    if name.len() != 20 {
        return None;
    }
    name.parse().ok()
}

pub fn validate_log_id(log: &str) -> Result<(), AuditError> {
    if !vera_protocol::ids::is_valid_id(log) || log.contains(['/', '@', '+', '=']) {
        return Err(AuditError::Config(format!("log id {log:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct SegmentHeader {
    format: String,
    version: u32,
    log: String,
    first_index: u64,
    count: u64,
    #[serde(with = "hex_list")]
    prev_frontier: Vec<Hash>,
    #[serde(with = "vera_protocol::hex")]
    prev_root: Hash,
    written_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct SegmentTrailer {
    size: u64,
    #[serde(with = "vera_protocol::hex")]
    root: Hash,
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use vera_protocol::merkle::Hash;

    pub fn serialize<S: Serializer>(hashes: &[Hash], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(hashes.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Hash>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
                <Hash>::try_from(bytes.as_slice()).map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
            })
            .collect()
    }
}

/// A parsed segment.
#[derive(Debug, Clone)]
pub struct Segment {
    header: SegmentHeader,
    /// Entry lines, without their LF: the bytes each leaf hashes.
    pub entries: Vec<Bytes>,
    trailer: SegmentTrailer,
}

impl Segment {
    fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        out.extend_from_slice(&serde_json::to_vec(&self.header).unwrap_or_default());
        out.push(b'\n');
        for entry in &self.entries {
            out.extend_from_slice(entry);
            out.push(b'\n');
        }
        out.extend_from_slice(&serde_json::to_vec(&serde_json::json!({ "end": self.trailer })).unwrap_or_default());
        out.push(b'\n');
        Bytes::from(out)
    }

    /// Parses a segment's bytes; `key` only names it in errors.
    pub fn parse(key: &str, body: &Bytes) -> Result<Segment, AuditError> {
        let corrupt = |reason: String| AuditError::CorruptSegment { key: key.to_owned(), reason };
        if body.last() != Some(&b'\n') {
            return Err(corrupt("does not end with a newline: truncated".into()));
        }
        let mut lines: Vec<Bytes> = Vec::new();
        let mut start = 0;
        for (at, byte) in body.iter().enumerate() {
            if *byte == b'\n' {
                lines.push(body.slice(start..at));
                start = at + 1;
            }
        }
        if lines.len() < 2 {
            return Err(corrupt("needs a header and a trailer line".into()));
        }
        let header: SegmentHeader = serde_json::from_slice(&lines[0]).map_err(|e| corrupt(format!("header: {e}")))?;
        if header.format != SEGMENT_FORMAT || header.version != SEGMENT_VERSION {
            return Err(corrupt(format!("unknown format {:?} version {}", header.format, header.version)));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct End {
            end: SegmentTrailer,
        }
        let last = lines.pop().unwrap_or_default();
        let trailer = serde_json::from_slice::<End>(&last)
            .map_err(|e| corrupt(format!("trailer missing or malformed (truncated?): {e}")))?
            .end;
        let entries = lines.split_off(1);
        if entries.len() as u64 != header.count {
            return Err(corrupt(format!("header says {} entries, found {}", header.count, entries.len())));
        }
        Ok(Segment { header, entries, trailer })
    }
}

/// What [`AuditLog::append`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub appended: u64,
    /// Redeliveries of events already in the log, dropped.
    pub duplicates: u64,
    pub size: u64,
    pub segment_key: Option<String>,
}

struct State {
    frontier: Frontier,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    checkpointed: u64,
}

impl State {
    fn remember(&mut self, id: String) {
        if self.recent_set.insert(id.clone()) {
            self.recent.push_back(id);
        }
        while self.recent.len() > DEDUPE_WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }
}

/// One writer's log. See the module docs.
pub struct AuditLog {
    store: Arc<dyn ObjectStore>,
    log: String,
    signer: Arc<dyn NoteSigner>,
    /// COMPLIANCE retention of segments and checkpoints, in days; `None` only for tests
    /// and stores without Object Lock.
    retention_days: Option<u32>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl AuditLog {
    /// Opens (or starts) the log `log`: reads its last segments to restore the tree and
    /// the dedupe window, and checkpoints any entries the last run left unanchored.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        log: &str,
        signer: Arc<dyn NoteSigner>,
        retention_days: Option<u32>,
        clock: Arc<dyn Clock>,
    ) -> Result<AuditLog, AuditError> {
        validate_log_id(log)?;
        let state = load_state(store.as_ref(), log).await?;
        let audit_log =
            AuditLog { store, log: log.to_owned(), signer, retention_days, clock, state: Mutex::new(state) };
        audit_log.checkpoint().await?;
        Ok(audit_log)
    }

    pub async fn size(&self) -> u64 {
        self.state.lock().await.frontier.size()
    }

    fn put_options(&self) -> PutOptions {
        let options = PutOptions::create();
        match self.retention_days {
            Some(days) => options.with_retention(Retention {
                mode: LockMode::Compliance,
                retain_until: Timestamp::from_micros(
                    self.clock.now().as_micros().saturating_add(i64::from(days) * 86_400_000_000),
                )
                .unwrap_or(Timestamp::MAX),
            }),
            None => options,
        }
    }

    /// Appends events as one new segment. Events already in the dedupe window are
    /// dropped. When this returns `Ok`, the segment is durable; ack the deliveries then.
    pub async fn append(&self, events: &[Envelope]) -> Result<AppendOutcome, AuditError> {
        let mut state = self.state.lock().await;
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        let mut duplicates = 0;
        for envelope in events {
            if !matches!(envelope.message, Message::AuditEvent(_)) {
                return Err(AuditError::NotAnAuditEvent { id: envelope.id.clone() });
            }
            if state.recent_set.contains(&envelope.id) || !seen.insert(envelope.id.clone()) {
                duplicates += 1;
                continue;
            }
            fresh.push(envelope);
        }
        if fresh.is_empty() {
            return Ok(AppendOutcome { appended: 0, duplicates, size: state.frontier.size(), segment_key: None });
        }
        let before = state.frontier.clone();
        let mut after = before.clone();
        let entries: Vec<Bytes> = fresh.iter().map(|envelope| Bytes::from(envelope.encode())).collect();
        for entry in &entries {
            after.push(leaf_hash(entry));
        }
        let segment = Segment {
            header: SegmentHeader {
                format: SEGMENT_FORMAT.into(),
                version: SEGMENT_VERSION,
                log: self.log.clone(),
                first_index: before.size(),
                count: entries.len() as u64,
                prev_frontier: before.subtrees().to_vec(),
                prev_root: before.root(),
                written_at: self.clock.now(),
            },
            entries,
            trailer: SegmentTrailer { size: after.size(), root: after.root() },
        };
        let key = segment_key(&self.log, before.size());
        match self.store.put(&key, segment.encode(), self.put_options()).await {
            Ok(_) => {}
            Err(error) if error.kind == StoreErrorKind::AlreadyExists => {
                // Another writer extended this log: take its state and let the caller retry.
                *state = load_state(self.store.as_ref(), &self.log).await?;
                return Err(AuditError::Conflict { key });
            }
            Err(error) => return Err(error.into()),
        }
        state.frontier = after;
        for envelope in &fresh {
            state.remember(envelope.id.clone());
        }
        Ok(AppendOutcome {
            appended: fresh.len() as u64,
            duplicates,
            size: state.frontier.size(),
            segment_key: Some(key),
        })
    }

    /// Signs and stores a checkpoint of the current tree, unless one at this size exists.
    /// Returns the checkpoint's key when one was written.
    pub async fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        let mut state = self.state.lock().await;
        let size = state.frontier.size();
        if size == 0 || state.checkpointed == size {
            return Ok(None);
        }
        let checkpoint =
            Checkpoint { log: self.log.clone(), size, root: state.frontier.root(), time: self.clock.now() };
        let note = checkpoint.sign(self.signer.as_ref()).await?;
        let key = checkpoint_key(&self.log, size);
        match self.store.put(&key, Bytes::from(note), self.put_options()).await {
            Ok(_) => {}
            // A checkpoint at this size already exists (a crash after writing it): it
            // signs the same root, which verify checks.
            Err(error) if error.kind == StoreErrorKind::AlreadyExists => {}
            Err(error) => return Err(error.into()),
        }
        state.checkpointed = size;
        Ok(Some(key))
    }
}

/// A log's segment keys with their first index, in order.
async fn sorted_segments(store: &dyn ObjectStore, log: &str) -> Result<Vec<(u64, String)>, AuditError> {
    let mut segments: Vec<(u64, String)> = store
        .list(&segments_prefix(log))
        .await?
        .into_iter()
        .filter_map(|meta| index_of(&meta.key, ".jsonl").map(|index| (index, meta.key)))
        .collect();
    segments.sort();
    Ok(segments)
}

async fn load_state(store: &dyn ObjectStore, log: &str) -> Result<State, AuditError> {
    let segments = sorted_segments(store, log).await?;
    let checkpointed = store
        .list(&checkpoints_prefix(log))
        .await?
        .iter()
        .filter_map(|meta| index_of(&meta.key, ".note"))
        .max()
        .unwrap_or(0);
    let mut state =
        State { frontier: Frontier::new(), recent: VecDeque::new(), recent_set: HashSet::new(), checkpointed };
    // Newest first, until the dedupe window is full.
    let mut windows: Vec<Vec<String>> = Vec::new();
    let mut ids = 0;
    for (position, (_, key)) in segments.iter().rev().enumerate() {
        let body = store.get(key).await?.body;
        let segment = Segment::parse(key, &body)?;
        if position == 0 {
            let mut frontier = Frontier::from_parts(segment.header.first_index, segment.header.prev_frontier.clone())
                .map_err(|e| AuditError::CorruptSegment { key: key.clone(), reason: e.to_string() })?;
            for entry in &segment.entries {
                frontier.push(leaf_hash(entry));
            }
            if frontier.root() != segment.trailer.root || frontier.size() != segment.trailer.size {
                return Err(AuditError::CorruptSegment {
                    key: key.clone(),
                    reason: "entries do not hash to the trailer's root".into(),
                });
            }
            state.frontier = frontier;
        }
        let mut window = Vec::new();
        for entry in &segment.entries {
            if let Ok(envelope) = Envelope::decode(entry) {
                window.push(envelope.id);
            }
        }
        ids += window.len();
        windows.push(window);
        if ids >= DEDUPE_WINDOW {
            break;
        }
    }
    for id in windows.into_iter().rev().flatten() {
        state.remember(id);
    }
    Ok(state)
}

/// What `verify` found in one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogReport {
    pub log: String,
    pub segments: u64,
    pub entries: u64,
    #[serde(with = "vera_protocol::hex")]
    pub root: Hash,
    pub checkpoints: u64,
    pub latest_checkpoint: u64,
    /// Entries after the latest checkpoint: appended, but not yet signed.
    pub unanchored: u64,
    /// Entries by action (PACK, READ, …).
    pub actions: BTreeMap<String, u64>,
}

/// Every log id under `audit/logs/`.
pub async fn list_logs(store: &dyn ObjectStore) -> Result<Vec<String>, AuditError> {
    let mut logs: Vec<String> = store
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|meta| meta.key.strip_prefix(PREFIX)?.split('/').next().map(str::to_owned))
        .collect();
    logs.dedup();
    Ok(logs)
}

/// Recomputes a log from S3 and checks it against its signed checkpoints. Detects
/// deleted, changed, reordered and inserted entries, missing segments, and a truncated
/// tail (a checkpoint larger than the log).
pub async fn verify_log(store: &dyn ObjectStore, log: &str, verifiers: &Verifiers) -> Result<LogReport, AuditError> {
    validate_log_id(log)?;
    // Checkpoints first: the sizes at which the recomputed root must match.
    let mut expected: BTreeMap<u64, Hash> = BTreeMap::new();
    for meta in store.list(&checkpoints_prefix(log)).await? {
        let Some(size) = index_of(&meta.key, ".note") else {
            return Err(AuditError::BadCheckpoint(format!("unexpected object {}", meta.key)));
        };
        let body = store.get(&meta.key).await?.body;
        let text =
            std::str::from_utf8(&body).map_err(|_| AuditError::BadCheckpoint(format!("{} is not UTF-8", meta.key)))?;
        let checkpoint = Checkpoint::open(text, verifiers).map_err(|error| match error {
            AuditError::CheckpointSignature { key } => {
                AuditError::CheckpointSignature { key: format!("{key} on {}", meta.key) }
            }
            AuditError::BadCheckpoint(reason) => AuditError::BadCheckpoint(format!("{}: {reason}", meta.key)),
            other => other,
        })?;
        if checkpoint.log != log || checkpoint.size != size {
            return Err(AuditError::BadCheckpoint(format!(
                "{} signs log {:?} at size {}, not what its key says",
                meta.key, checkpoint.log, checkpoint.size
            )));
        }
        expected.insert(size, checkpoint.root);
    }
    let mut segments: Vec<(u64, String)> = Vec::new();
    for meta in store.list(&segments_prefix(log)).await? {
        let Some(index) = index_of(&meta.key, ".jsonl") else {
            return Err(AuditError::CorruptSegment { key: meta.key, reason: "not a segment key".into() });
        };
        segments.push((index, meta.key));
    }
    segments.sort();
    let mut frontier = Frontier::new();
    let mut actions: BTreeMap<String, u64> = BTreeMap::new();
    let mut matched = 0u64;
    for (index, key) in &segments {
        if *index != frontier.size() {
            return Err(AuditError::Gap { log: log.to_owned(), expected: frontier.size(), found: *index });
        }
        let body = store.get(key).await?.body;
        let segment = Segment::parse(key, &body)?;
        let header = &segment.header;
        if header.log != log || header.first_index != *index {
            return Err(AuditError::CorruptSegment {
                key: key.clone(),
                reason: "header names another log or index".into(),
            });
        }
        if header.prev_root != frontier.root() || header.prev_frontier != frontier.subtrees() {
            return Err(AuditError::ChainBroken { key: key.clone() });
        }
        for (offset, entry) in segment.entries.iter().enumerate() {
            let position = index + offset as u64;
            let envelope = Envelope::decode(entry).map_err(|e| AuditError::CorruptEntry {
                log: log.to_owned(),
                index: position,
                reason: e.to_string(),
            })?;
            let Message::AuditEvent(event) = &envelope.message else {
                return Err(AuditError::CorruptEntry {
                    log: log.to_owned(),
                    index: position,
                    reason: "not an audit event".into(),
                });
            };
            let action = serde_json::to_value(event.action).ok().and_then(|v| v.as_str().map(str::to_owned));
            *actions.entry(action.unwrap_or_default()).or_default() += 1;
            frontier.push(leaf_hash(entry));
            if let Some(root) = expected.get(&frontier.size()) {
                if *root != frontier.root() {
                    return Err(AuditError::CheckpointMismatch { log: log.to_owned(), size: frontier.size() });
                }
                matched += 1;
            }
        }
        if segment.trailer.size != frontier.size() || segment.trailer.root != frontier.root() {
            return Err(AuditError::CorruptSegment {
                key: key.clone(),
                reason: "entries do not hash to the trailer's root: an entry was changed, removed or reordered".into(),
            });
        }
    }
    let latest = expected.keys().next_back().copied().unwrap_or(0);
    if latest > frontier.size() {
        return Err(AuditError::Truncated { log: log.to_owned(), checkpoint_size: latest, log_size: frontier.size() });
    }
    debug_assert_eq!(matched, expected.len() as u64);
    Ok(LogReport {
        log: log.to_owned(),
        segments: segments.len() as u64,
        entries: frontier.size(),
        root: frontier.root(),
        checkpoints: expected.len() as u64,
        latest_checkpoint: latest,
        unanchored: frontier.size() - latest,
        actions,
    })
}

/// One entry of a log, with what an inclusion proof needs.
#[derive(Debug, Clone)]
pub struct FoundEntry {
    pub log: String,
    pub index: u64,
    pub entry: Bytes,
    pub envelope: Envelope,
}

/// Every entry of a log in order, each checked to decode (for exports and audits; the
/// caller verifies the log first).
pub async fn read_entries(store: &dyn ObjectStore, log: &str) -> Result<Vec<FoundEntry>, AuditError> {
    let segments = sorted_segments(store, log).await?;
    let mut entries = Vec::new();
    for (index, key) in segments {
        let segment = Segment::parse(&key, &store.get(&key).await?.body)?;
        for (offset, entry) in segment.entries.into_iter().enumerate() {
            let position = index + offset as u64;
            let envelope = Envelope::decode(&entry).map_err(|e| AuditError::CorruptEntry {
                log: log.to_owned(),
                index: position,
                reason: e.to_string(),
            })?;
            entries.push(FoundEntry { log: log.to_owned(), index: position, entry, envelope });
        }
    }
    Ok(entries)
}

/// The latest checkpoint note of a log, verbatim, with its size.
pub async fn latest_checkpoint(store: &dyn ObjectStore, log: &str) -> Result<Option<(u64, String)>, AuditError> {
    let latest = store
        .list(&checkpoints_prefix(log))
        .await?
        .into_iter()
        .filter_map(|meta| index_of(&meta.key, ".note").map(|size| (size, meta.key)))
        .max();
    let Some((size, key)) = latest else { return Ok(None) };
    let body = store.get(&key).await?.body;
    let text =
        String::from_utf8(body.to_vec()).map_err(|_| AuditError::BadCheckpoint(format!("{key} is not UTF-8")))?;
    Ok(Some((size, text)))
}
