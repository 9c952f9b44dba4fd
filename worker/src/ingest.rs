//! The ingest worker: files pushed by upstream systems, from the bus's `ingest` topic.
//!
//! It claims `file_arrived` events (inline or staged) and S3 event notifications
//! ([`vera_protocol::ingest`]), resolves each to its bytes (decoding inline data, reading
//! a staged or notified object from the landing store and checking its size, ETag and
//! hashes), routes and compresses them, and holds them per shard address in a
//! `SegmentWriter` that spills to disk, exactly as a pack task's files are held.
//!
//! An address's group is sealed when it reaches the size or count of a final generation
//! ([`crate::settings::StagingSettings`]); everything held is sealed once the oldest held
//! event has waited `linger`, or the held files or bytes reach their bounds, or the worker
//! shuts down. Groups too small for a final generation go to staging segments, which
//! `vera compact` merges (ADR 0005): the same rules as packed rows.
//!
//! Sealing is [`crate::pack::seal_address`], so a file already stored with the same hash
//! is left out (a redelivered event is a no-op), the same uid stored with another hash is
//! rejected, and an erased uid is never stored again. An event is acked only after every
//! file it names is in a durable segment and that segment's `ShardSealed` and PACK audit
//! events are published: a crash at any point loses nothing, and the redelivered events
//! converge on the same files. An event that can never succeed is dead-lettered with its
//! reason, and the rest of the stream flows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sha2::Digest;
use tempfile::SpooledTempFile;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, Delivery, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::ingest::{FileArrived, FileContent, IngestMessage, S3ObjectCreated, decode_ingest};
use vera_protocol::merkle::Hash;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message};
use vera_protocol::routing::{RoutingTable, ShardAddr};
use vera_protocol::shard::{FileInput, PreparedFile, SegmentSettings, SegmentWriter};
use vera_store::shards::ShardStore;
use vera_store::{Clock, ObjectStore, StoreErrorKind, SystemClock};

use crate::pack::{PackReport, Placement, SealTarget, seal_address};
use crate::rows::RejectReason;
use crate::settings::WorkerSettings;

/// How an S3 notification's object key becomes a uid and a `created_at`.
#[derive(Debug, Clone)]
pub struct LandingSettings {
    /// Staged events and notifications must name keys under this prefix; others are
    /// dead-lettered, so an event cannot make the worker read any other object.
    pub prefix: String,
    /// Notifications from another bucket than this one are dead-lettered (`None`: any).
    pub bucket: Option<String>,
    /// Matched against the key after `prefix`, whole. Its named group `uid` is the uid,
    /// and its group `created_at`, if any, the creation time (RFC 3339, microseconds
    /// since the epoch, or a date `YYYY-MM-DD` for midnight UTC).
    pub key_pattern: regex::Regex,
    /// Where `created_at` comes from when the pattern has no `created_at` group.
    pub created_at: CreatedAtFrom,
}

/// Where a notified object's `created_at` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedAtFrom {
    /// The key pattern's `created_at` group.
    Key,
    /// The object's user metadata under this name (`x-amz-meta-<name>` on S3).
    Metadata(String),
    /// The notification's `eventTime`: when the object was written.
    EventTime,
}

impl Default for LandingSettings {
    fn default() -> Self {
        LandingSettings {
            prefix: "landing/".to_owned(),
            bucket: None,
            key_pattern: regex::Regex::new(DEFAULT_KEY_PATTERN).expect("valid default pattern"),
            created_at: CreatedAtFrom::Metadata("created-at".to_owned()),
        }
    }
}

/// The default key pattern: the key's last path segment is the uid.
pub const DEFAULT_KEY_PATTERN: &str = "(?:.*/)?(?P<uid>[^/]+)";

impl LandingSettings {
    /// Checks the pattern names a `uid` group, and a `created_at` group when the time is
    /// to come from the key.
    pub fn validate(&self) -> Result<(), String> {
        let names: Vec<&str> = self.key_pattern.capture_names().flatten().collect();
        if !names.contains(&"uid") {
            return Err(format!("landing key pattern {:?} has no (?P<uid>…) group", self.key_pattern.as_str()));
        }
        if self.created_at == CreatedAtFrom::Key && !names.contains(&"created_at") {
            return Err(format!(
                "created_at comes from the key, but the pattern {:?} has no (?P<created_at>…) group",
                self.key_pattern.as_str()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The longest an event waits in a worker before its file is sealed.
    pub linger: Duration,
    /// Events claimed per bus request.
    pub claim_batch: usize,
    /// Files held (claimed, not yet sealed) at most; reaching it seals everything.
    pub max_held_files: usize,
    /// Payload bytes held at most (they spill to disk past the worker's spill threshold).
    pub max_held_bytes: u64,
    pub landing: LandingSettings,
    /// Delete a staged object from the landing store once its file is durable and
    /// verified in a segment, with an EXPIRE audit event.
    pub expire_staged: bool,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            linger: Duration::from_secs(5),
            claim_batch: 500,
            max_held_files: 50_000,
            max_held_bytes: 512 * 1024 * 1024,
            landing: LandingSettings::default(),
            expire_staged: false,
        }
    }
}

impl IngestSettings {
    pub fn validate(&self, worker: &WorkerSettings) -> Result<(), String> {
        self.landing.validate()?;
        if self.claim_batch == 0 || self.max_held_files == 0 || self.max_held_bytes == 0 {
            return Err("claim batch and held files and bytes must be at least 1".into());
        }
        // An event is claimed for the visibility timeout and held up to `linger` before its
        // seal: the claim must outlast both, or every event would be delivered twice.
        if worker.visibility_timeout() <= self.linger * 2 {
            return Err(format!(
                "the visibility timeout ({} s) must exceed twice the linger ({} ms)",
                worker.visibility_timeout().as_secs(),
                self.linger.as_millis()
            ));
        }
        Ok(())
    }
}

/// What an ingest worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestStats {
    /// Events acked: every file they name is durable (or was already).
    pub events_acked: u64,
    pub files_stored: u64,
    /// Files found already stored with the same content (redeliveries, replays).
    pub already_stored: u64,
    /// Files left out because their uid was erased at the address.
    pub erased: u64,
    pub dead_lettered: u64,
    /// Events given back for a later retry (a store or bus failure).
    pub retried: u64,
    pub segments_written: u64,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    /// Publish (the envelope's `sent_at`, or the notification's `eventTime`) to ack, in
    /// milliseconds, one sample per acked event (at most 100,000, overwritten in turn).
    #[serde(skip)]
    pub publish_to_durable_ms: Vec<u64>,
}

/// One file an event names, resolved to its bytes.
struct Resolved {
    uid: String,
    created_at: Timestamp,
    content_type: Option<String>,
    bytes: Vec<u8>,
    /// The landing object it came from (for `expire_staged`).
    landing_key: Option<String>,
}

/// An event's files, or why not.
type Resolution = Result<Vec<Resolved>, Failure>;

/// Why an event cannot be ingested now.
enum Failure {
    /// Never: dead-letter with this reason.
    Permanent(String),
    /// Perhaps later: give it back.
    Transient(String),
}

/// A claimed event and the files of it not yet durable.
struct Held {
    delivery: Delivery,
    /// When its publisher sent it, for the publish-to-durable figure.
    sent_at: Option<Timestamp>,
    pending: usize,
    failed: Option<String>,
    retry: bool,
    /// Staged objects to expire once acked: (landing key, uid, segment key).
    expire: Vec<(String, String, String)>,
}

/// The files held for one address.
struct Group {
    writer: SegmentWriter<SpooledTempFile>,
    /// Raw bytes held.
    bytes: u64,
    /// uid → (content hash, held events naming it, landing key).
    members: HashMap<String, (Hash, Vec<usize>, Option<String>)>,
}

struct State {
    held: Vec<Option<Held>>,
    groups: HashMap<ShardAddr, Group>,
    files: usize,
    bytes: u64,
    oldest: Option<Instant>,
}

/// How long to wait when the topic is empty and nothing is held.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Landing objects read at once.
const LANDING_CONCURRENCY: usize = 16;
const MAX_LATENCY_SAMPLES: usize = 100_000;

/// Everything the ingest loop needs.
pub struct IngestWorker {
    pub worker_id: String,
    pub bus: Arc<dyn Bus>,
    pub shards: ShardStore,
    /// Where staged and notified objects are read from (and expired in).
    pub landing: Arc<dyn ObjectStore>,
    pub routing: RoutingTable,
    pub settings: Arc<WorkerSettings>,
    pub ingest: IngestSettings,
}

impl IngestWorker {
    /// Claims and ingests events until `shutdown`; then seals and settles what it holds.
    pub async fn run(&self, shutdown: CancellationToken) -> IngestStats {
        let mut stats = IngestStats::default();
        let mut state = State { held: Vec::new(), groups: HashMap::new(), files: 0, bytes: 0, oldest: None };
        loop {
            if shutdown.is_cancelled() {
                self.seal(&mut state, None, &mut stats).await;
                return stats;
            }
            let room = self.ingest.max_held_files.saturating_sub(state.files).max(1);
            let claimed = match self
                .bus
                .claim(topics::INGEST, self.ingest.claim_batch.min(room), self.settings.visibility_timeout())
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(worker = %self.worker_id, %error, "claim failed; backing off");
                    sleep_or(Duration::from_secs(1), &shutdown).await;
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            if !idle {
                self.take(&mut state, claimed, &mut stats).await;
            }
            // Groups big enough for a final generation go now.
            let full: Vec<ShardAddr> = state
                .groups
                .iter()
                .filter(|(_, group)| {
                    self.settings.staging.direct_min_files > 0
                        && self
                            .settings
                            .staging
                            .is_direct(group.writer.file_count() as u64, group.writer.spilled_bytes())
                })
                .map(|(addr, _)| *addr)
                .collect();
            if !full.is_empty() {
                self.seal(&mut state, Some(full), &mut stats).await;
            }
            let lingered = state.oldest.is_some_and(|oldest| oldest.elapsed() >= self.ingest.linger);
            if lingered || state.files >= self.ingest.max_held_files || state.bytes >= self.ingest.max_held_bytes {
                self.seal(&mut state, None, &mut stats).await;
            }
            if idle {
                sleep_or(IDLE_POLL, &shutdown).await;
            }
        }
    }

    /// Decodes, resolves and holds a batch of claimed events.
    async fn take(&self, state: &mut State, claimed: Vec<Delivery>, stats: &mut IngestStats) {
        let resolved: Vec<(Delivery, Option<Timestamp>, Resolution)> = futures::stream::iter(claimed)
            .map(|delivery| async move {
                let (sent_at, result) = self.resolve(&delivery).await;
                (delivery, sent_at, result)
            })
            .buffered(LANDING_CONCURRENCY)
            .collect()
            .await;
        let mut files: Vec<(usize, Resolved)> = Vec::new();
        for (delivery, sent_at, result) in resolved {
            match result {
                Err(Failure::Permanent(reason)) => self.dead_letter(&delivery, &reason, stats).await,
                Err(Failure::Transient(reason)) => {
                    tracing::warn!(message_id = %delivery.message_id, %reason, "event will be retried");
                    stats.retried += 1;
                    let _ = self.bus.nack(&delivery, Duration::from_secs(self.settings.retry_delay_seconds)).await;
                }
                Ok(found) if found.is_empty() => {
                    // A test event, or a notification with nothing created.
                    let _ = self.bus.ack(&delivery).await;
                    stats.events_acked += 1;
                }
                Ok(found) => {
                    let index = state.held.len();
                    state.held.push(Some(Held {
                        delivery,
                        sent_at,
                        pending: found.len(),
                        failed: None,
                        retry: false,
                        expire: Vec::new(),
                    }));
                    files.extend(found.into_iter().map(|file| (index, file)));
                }
            }
        }
        if files.is_empty() {
            return;
        }
        // Route, hash and compress off the executor.
        let settings = Arc::clone(&self.settings);
        let routing = self.routing.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            files
                .into_par_iter()
                .map(|(index, file)| {
                    let result =
                        routing.locate(&file.uid, file.created_at).map_err(|e| e.to_string()).and_then(|addr| {
                            let segment = segment_settings(&settings, addr);
                            let content_type = file
                                .content_type
                                .as_deref()
                                .filter(|c| vera_protocol::shard::writer::valid_content_type(c));
                            let input =
                                FileInput { uid: &file.uid, created_at: file.created_at, content_type, bytes: &[] };
                            let len = file.bytes.len() as u64;
                            PreparedFile::prepare_owned(&segment, input, file.bytes)
                                .map(|prepared| (addr, prepared, len))
                                .map_err(|e| e.to_string())
                        });
                    (index, file.uid, file.landing_key, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                // A panic in the CPU work: give every event of the batch back.
                tracing::error!(%error, "preparing files failed");
                for held in state.held.iter_mut().flatten().filter(|h| h.pending > 0) {
                    held.retry = true;
                }
                self.settle_ready(state, stats).await;
                return;
            }
        };
        let now = Instant::now();
        for (index, uid, landing_key, result) in prepared {
            let (addr, file, len) = match result {
                Ok(ok) => ok,
                Err(reason) => {
                    self.fail(state, index, format!("file {uid:?}: {reason}"));
                    continue;
                }
            };
            let group = match state.groups.entry(addr) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let spill = match &self.settings.spill_dir {
                        Some(dir) => SpooledTempFile::new_in(self.settings.spill_memory_bytes, dir),
                        None => SpooledTempFile::new(self.settings.spill_memory_bytes),
                    };
                    match SegmentWriter::new(segment_settings(&self.settings, addr), spill) {
                        Ok(writer) => entry.insert(Group { writer, bytes: 0, members: HashMap::new() }),
                        Err(error) => {
                            self.fail(state, index, format!("cannot start a segment: {error}"));
                            continue;
                        }
                    }
                }
            };
            let hash = *file.content_hash();
            if let Some((held_hash, events, _)) = group.members.get_mut(&uid) {
                if *held_hash == hash {
                    events.push(index);
                } else {
                    self.fail(state, index, format!("duplicate uid {uid:?} with different content in the same batch"));
                }
                continue;
            }
            if let Err(error) = group.writer.add_prepared(file) {
                self.fail(state, index, format!("file {uid:?}: {error}"));
                continue;
            }
            group.members.insert(uid, (hash, vec![index], landing_key));
            group.bytes += len;
            state.files += 1;
            state.bytes += len;
            stats.bytes_in += len;
            state.oldest.get_or_insert(now);
        }
        self.settle_ready(state, stats).await;
    }

    /// Marks one file of a held event as failed for good.
    fn fail(&self, state: &mut State, index: usize, reason: String) {
        if let Some(held) = state.held[index].as_mut() {
            held.pending -= 1;
            held.failed.get_or_insert(reason);
        }
    }

    /// Seals the groups at `only` (or every group), then settles the events whose files
    /// are all accounted for.
    async fn seal(&self, state: &mut State, only: Option<Vec<ShardAddr>>, stats: &mut IngestStats) {
        let addrs: Vec<ShardAddr> = match only {
            Some(addrs) => addrs,
            None => state.groups.keys().copied().collect(),
        };
        let mut groups = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if let Some(group) = state.groups.remove(&addr) {
                state.files -= group.members.len();
                state.bytes -= group.bytes;
                groups.push((addr, group));
            }
        }
        if state.groups.is_empty() {
            state.files = 0;
            state.bytes = 0;
            state.oldest = None;
        }
        let now = SystemClock.now();
        let outcomes: Vec<_> = futures::stream::iter(groups)
            .map(|(addr, group)| {
                let Group { writer, members, .. } = group;
                let files = writer.file_count() as u64;
                let direct = self.settings.staging.is_direct(files, writer.spilled_bytes());
                let placement = if direct { Placement::Final { late: false } } else { Placement::Staging };
                let retention = self.settings.retention.as_ref().map(|policy| match placement {
                    Placement::Final { .. } => policy.retention_for(&addr),
                    Placement::Staging => policy.staging_retention(&addr, now, self.settings.staging.retention_days),
                });
                let task_id = group_task_id(&members);
                async move {
                    let target = SealTarget { task_id: &task_id, placement, retention, look_in_staging: true };
                    let outcome = seal_address(target, addr, writer, &self.shards, Arc::clone(&self.settings)).await;
                    (task_id, members, outcome)
                }
            })
            .buffer_unordered(self.settings.put_concurrency)
            .collect()
            .await;
        for (task_id, members, outcome) in outcomes {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(%error, "sealing ingested files failed; their events will be retried");
                    for (_, events, _) in members.values() {
                        for index in events {
                            if let Some(held) = state.held[*index].as_mut() {
                                held.pending -= 1;
                                held.retry = true;
                            }
                        }
                    }
                    continue;
                }
            };
            let report =
                PackReport { task_id: task_id.clone(), segments: outcome.segments.clone(), ..PackReport::default() };
            let published = crate::run::publish_events(self.bus.as_ref(), &self.worker_id, &report, &SystemClock).await;
            let rejected: HashMap<&str, (RejectReason, &str)> = outcome
                .rejected
                .iter()
                .filter_map(|r| r.uid.as_deref().map(|uid| (uid, (r.reason, r.detail.as_str()))))
                .collect();
            stats.files_stored += outcome.packed_files;
            stats.already_stored += outcome.already_stored;
            for segment in outcome.segments.iter().filter(|s| s.written_now) {
                stats.segments_written += 1;
                stats.bytes_stored += segment.object_bytes;
            }
            crate::metrics::packed(
                outcome.packed_files,
                outcome.rejected.len() as u64,
                outcome.segments.iter().filter(|s| s.written_now).count() as u64,
                0,
                outcome.segments.iter().filter(|s| s.written_now).map(|s| s.object_bytes).sum(),
            );
            // The segment that holds each file now: the one just written, or the one
            // that held it already.
            let holder =
                outcome.segments.iter().find(|s| s.written_now).or(outcome.segments.first()).map(|s| s.key.clone());
            for (uid, (_, events, landing_key)) in &members {
                let verdict = rejected.get(uid.as_str()).copied();
                if verdict.is_some_and(|(reason, _)| reason == RejectReason::Erased) {
                    stats.erased += 1;
                }
                for index in events {
                    let Some(held) = state.held[*index].as_mut() else { continue };
                    held.pending -= 1;
                    if let Err(error) = &published {
                        tracing::warn!(%error, "publishing events failed; the event will be retried");
                        held.retry = true;
                        continue;
                    }
                    match verdict {
                        Some((RejectReason::Erased, _)) => {}
                        Some((_, detail)) => {
                            held.failed.get_or_insert(format!("file {uid:?}: {detail}"));
                        }
                        None => {
                            if let (Some(landing), Some(segment)) = (landing_key, &holder) {
                                held.expire.push((landing.clone(), uid.clone(), segment.clone()));
                            }
                        }
                    }
                }
            }
        }
        self.settle_ready(state, stats).await;
    }

    /// Acks, dead-letters or gives back every held event with nothing pending.
    async fn settle_ready(&self, state: &mut State, stats: &mut IngestStats) {
        let mut acks = Vec::new();
        for slot in state.held.iter_mut() {
            let ready = slot.as_ref().is_some_and(|held| held.pending == 0);
            if !ready {
                continue;
            }
            let Some(held) = slot.take() else { continue };
            if held.retry {
                stats.retried += 1;
                let _ = self.bus.nack(&held.delivery, Duration::from_secs(self.settings.retry_delay_seconds)).await;
            } else if let Some(reason) = &held.failed {
                self.dead_letter(&held.delivery, reason, stats).await;
            } else {
                acks.push(held);
            }
        }
        if !acks.is_empty() {
            let deliveries: Vec<Delivery> = acks.iter().map(|held| held.delivery.clone()).collect();
            let results = self.bus.ack_batch(&deliveries).await;
            let now = SystemClock.now();
            for (held, result) in acks.iter().zip(results) {
                if let Err(error) = result {
                    // Durable and idempotent: a redelivery finds everything stored.
                    tracing::warn!(%error, message_id = %held.delivery.message_id, "ack failed");
                }
                stats.events_acked += 1;
                if let Some(sent_at) = held.sent_at {
                    let millis = (now.as_micros() - sent_at.as_micros()).max(0) / 1000;
                    crate::metrics::ingest_age(millis as f64 / 1e3);
                    let sample = u64::try_from(millis).unwrap_or(0);
                    if stats.publish_to_durable_ms.len() < MAX_LATENCY_SAMPLES {
                        stats.publish_to_durable_ms.push(sample);
                    } else {
                        // Keep a spread of samples over a long run: overwrite in turn.
                        let slot = (stats.events_acked as usize) % MAX_LATENCY_SAMPLES;
                        stats.publish_to_durable_ms[slot] = sample;
                    }
                }
            }
            if self.ingest.expire_staged {
                for held in &acks {
                    for (landing, uid, segment) in &held.expire {
                        self.expire(landing, uid, segment).await;
                    }
                }
            }
        }
        // Forget settled slots once none is held, so the list does not grow.
        if state.held.iter().all(Option::is_none) {
            state.held.clear();
        }
    }

    /// Deletes a landing object whose file is durable, after checking the segment holds
    /// it with the same content, and audits it.
    async fn expire(&self, landing_key: &str, uid: &str, segment_key: &str) {
        let verified = match self.shards.index(segment_key).await {
            Ok(index) => index.find(uid).map(|found| found.entry.content_hash),
            Err(error) => {
                tracing::warn!(%error, segment = segment_key, "cannot verify before expiring; the landing object stays");
                return;
            }
        };
        let Some(hash) = verified else {
            tracing::warn!(uid, segment = segment_key, "segment does not list the file; the landing object stays");
            return;
        };
        if let Err(error) = self.landing.delete(landing_key).await
            && error.kind != StoreErrorKind::NotFound
        {
            tracing::warn!(%error, key = landing_key, "expiring the landing object failed; it stays");
            return;
        }
        let now = SystemClock.now();
        let audit = AuditEvent {
            action: AuditAction::Expire,
            outcome: AuditOutcome::Ok,
            at: now,
            actor: self.worker_id.clone(),
            request_id: None,
            uid: Some(uid.to_owned()),
            segment_key: Some(segment_key.to_owned()),
            details: BTreeMap::from([
                ("landing_key".to_owned(), landing_key.to_owned()),
                ("content_blake3".to_owned(), vera_protocol::hex::encode(&hash)),
            ]),
        };
        let id = format!("expire/{}", &blake3::hash(landing_key.as_bytes()).to_hex()[..32]);
        let envelope = Envelope::new(id, now, Message::AuditEvent(audit));
        let message = Outgoing { key: envelope.ordering_key(), payload: Bytes::from(envelope.encode()) };
        if let Err(error) = self.bus.publish(topics::AUDIT, vec![message]).await {
            tracing::warn!(%error, key = landing_key, "landing object expired, but its audit event was not published");
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str, stats: &mut IngestStats) {
        tracing::error!(message_id = %delivery.message_id, reason, "dead-lettering ingest event");
        stats.dead_lettered += 1;
        crate::metrics::task("dead_lettered");
        if let Err(error) = self.bus.dead_letter(delivery, reason).await {
            tracing::warn!(%error, "dead-letter failed; the bus dead-letters it after max_attempts");
        }
    }

    /// The files an event names, with their bytes, or why not.
    async fn resolve(&self, delivery: &Delivery) -> (Option<Timestamp>, Resolution) {
        let message = match decode_ingest(&delivery.payload) {
            Ok(message) => message,
            Err(error) => return (None, Err(Failure::Permanent(format!("undecodable event: {error}")))),
        };
        match message {
            IngestMessage::S3Test => (None, Ok(Vec::new())),
            IngestMessage::File { file, .. } => {
                let sent_at = Envelope::decode(&delivery.payload).ok().map(|e| e.sent_at);
                (sent_at, self.resolve_file(*file).await.map(|file| vec![file]))
            }
            IngestMessage::S3Created { objects, .. } => {
                let sent_at = objects.iter().filter_map(|o| o.event_time).min();
                let mut files = Vec::with_capacity(objects.len());
                for object in objects {
                    match self.resolve_notified(object).await {
                        Ok(file) => files.push(file),
                        Err(failure) => return (sent_at, Err(failure)),
                    }
                }
                (sent_at, Ok(files))
            }
        }
    }

    async fn resolve_file(&self, file: FileArrived) -> Result<Resolved, Failure> {
        let max = self.settings.max_file_bytes;
        let (bytes, landing_key) = match &file.content {
            FileContent::Inline { .. } => {
                let bytes = match file.inline_bytes() {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) => return Err(Failure::Permanent(error.to_string())),
                    None => Vec::new(),
                };
                (bytes, None)
            }
            FileContent::Staged { key, size, etag } => {
                let bytes = self.read_landing(key, *size, etag.as_deref()).await?;
                (bytes, Some(key.clone()))
            }
        };
        if bytes.len() as u64 > max {
            return Err(Failure::Permanent(format!(
                "file {:?} is {} bytes, over the limit of {max}",
                file.uid,
                bytes.len()
            )));
        }
        check_hashes(&file, &bytes)?;
        Ok(Resolved { uid: file.uid, created_at: file.created_at, content_type: file.content_type, bytes, landing_key })
    }

    /// Reads a landing object named by an event, checking its size and ETag first.
    async fn read_landing(&self, key: &str, size: u64, etag: Option<&str>) -> Result<Vec<u8>, Failure> {
        let prefix = &self.ingest.landing.prefix;
        if !key.starts_with(prefix.as_str()) {
            return Err(Failure::Permanent(format!("staged key {key:?} is outside the landing prefix {prefix:?}")));
        }
        let max = self.settings.max_file_bytes;
        if size > max {
            return Err(Failure::Permanent(format!("staged object {key:?} is {size} bytes, over the limit of {max}")));
        }
        let meta = match self.landing.head(key).await {
            Ok(meta) => meta,
            Err(error) if error.kind == StoreErrorKind::NotFound => {
                return Err(Failure::Permanent(format!("staged object {key:?} does not exist")));
            }
            Err(error) => return Err(Failure::Transient(format!("reading staged object {key:?}: {error}"))),
        };
        if meta.len != size {
            return Err(Failure::Permanent(format!(
                "staged object {key:?} is {} bytes, the event says {size}",
                meta.len
            )));
        }
        if let Some(etag) = etag
            && etag.trim_matches('"') != meta.etag.trim_matches('"')
        {
            return Err(Failure::Permanent(format!(
                "staged object {key:?} has ETag {}, the event says {etag}: it changed since",
                meta.etag
            )));
        }
        match self.landing.get(key).await {
            Ok(got) if got.body.len() as u64 == size => Ok(got.body.to_vec()),
            Ok(got) => Err(Failure::Permanent(format!(
                "staged object {key:?} read {} bytes, the event says {size}",
                got.body.len()
            ))),
            Err(error) if error.kind == StoreErrorKind::NotFound => {
                Err(Failure::Permanent(format!("staged object {key:?} does not exist")))
            }
            Err(error) => Err(Failure::Transient(format!("reading staged object {key:?}: {error}"))),
        }
    }

    /// An S3 notification's object, mapped to a uid and `created_at` by the landing
    /// settings, with its bytes.
    async fn resolve_notified(&self, object: S3ObjectCreated) -> Result<Resolved, Failure> {
        let landing = &self.ingest.landing;
        if let Some(bucket) = &landing.bucket
            && *bucket != object.bucket
        {
            return Err(Failure::Permanent(format!(
                "notification from bucket {:?}, not the landing bucket {bucket:?}",
                object.bucket
            )));
        }
        let Some(relative) = object.key.strip_prefix(landing.prefix.as_str()) else {
            return Err(Failure::Permanent(format!(
                "notified key {:?} is outside the landing prefix {:?}",
                object.key, landing.prefix
            )));
        };
        let captures = landing
            .key_pattern
            .captures(relative)
            .filter(|c| c.get(0).is_some_and(|m| m.start() == 0 && m.end() == relative.len()))
            .ok_or_else(|| {
                Failure::Permanent(format!(
                    "notified key {:?} does not match the landing key pattern {:?}",
                    object.key,
                    landing.key_pattern.as_str()
                ))
            })?;
        let uid = captures.name("uid").map(|m| m.as_str().to_owned()).unwrap_or_default();
        if let Err(error) = vera_protocol::routing::validate_uid(&uid) {
            return Err(Failure::Permanent(format!("notified key {:?} maps to an invalid uid: {error}", object.key)));
        }
        let key_time = captures.name("created_at").map(|m| m.as_str().to_owned());
        let bytes = self.read_landing(&object.key, object.size, object.etag.as_deref()).await?;
        let created_at = match (&landing.created_at, key_time) {
            (_, Some(text)) => parse_created_at(&text).map_err(|reason| {
                Failure::Permanent(format!("notified key {:?}: created_at {text:?} {reason}", object.key))
            })?,
            (CreatedAtFrom::EventTime, None) => object
                .event_time
                .ok_or_else(|| Failure::Permanent(format!("notification for {:?} has no eventTime", object.key)))?,
            (CreatedAtFrom::Metadata(name), None) => {
                let meta = self.landing.head(&object.key).await.map_err(|e| Failure::Transient(e.to_string()))?;
                let text = meta.metadata.get(name).ok_or_else(|| {
                    Failure::Permanent(format!(
                        "landing object {:?} has no metadata {name:?} for created_at",
                        object.key
                    ))
                })?;
                parse_created_at(text).map_err(|reason| {
                    Failure::Permanent(format!("landing object {:?}: created_at {text:?} {reason}", object.key))
                })?
            }
            (CreatedAtFrom::Key, None) => unreachable_key_group(&object.key)?,
        };
        Ok(Resolved { uid, created_at, content_type: None, bytes, landing_key: Some(object.key) })
    }
}

/// `validate` requires the group when the time comes from the key; a pattern whose
/// group did not take part in the match ends here.
fn unreachable_key_group(key: &str) -> Result<Timestamp, Failure> {
    Err(Failure::Permanent(format!("notified key {key:?}: the pattern's created_at group did not match")))
}

/// RFC 3339, microseconds since the epoch, or a date (midnight UTC).
fn parse_created_at(text: &str) -> Result<Timestamp, String> {
    let full = if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    Timestamp::parse(&full).map_err(|error| format!("does not parse: {error}"))
}

fn check_hashes(file: &FileArrived, bytes: &[u8]) -> Result<(), Failure> {
    if let Some(expected) = &file.blake3 {
        let actual = blake3::hash(bytes).to_hex().to_string();
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Failure::Permanent(format!(
                "file {:?}: BLAKE3 is {actual}, the event says {expected}",
                file.uid
            )));
        }
    }
    if let Some(expected) = &file.sha256 {
        let actual = vera_protocol::hex::encode(&sha2::Sha256::digest(bytes).into());
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Failure::Permanent(format!(
                "file {:?}: SHA-256 is {actual}, the event says {expected}",
                file.uid
            )));
        }
    }
    Ok(())
}

fn segment_settings(settings: &WorkerSettings, addr: ShardAddr) -> SegmentSettings {
    SegmentSettings {
        policy: settings.compression.clone(),
        max_file_bytes: settings.max_file_bytes,
        ..SegmentSettings::new(addr, 0)
    }
}

/// A stable name for a group's seal (the segment's `vera-task` metadata and events):
/// the same files give the same name, on any worker.
fn group_task_id(members: &HashMap<String, (Hash, Vec<usize>, Option<String>)>) -> String {
    let mut uids: Vec<(&String, &Hash)> = members.iter().map(|(uid, (hash, _, _))| (uid, hash)).collect();
    uids.sort();
    let mut hasher = blake3::Hasher::new();
    for (uid, hash) in uids {
        hasher.update(&(uid.len() as u64).to_le_bytes());
        hasher.update(uid.as_bytes());
        hasher.update(hash);
    }
    format!("ingest/{}", &hasher.finalize().to_hex()[..32])
}

async fn sleep_or(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// A `file_arrived` envelope for `bytes`, inline: what upstream systems (and the HTTP
/// ingest endpoint) publish. The id is derived from the uid and content, so a publisher's
/// retry is a recognisable duplicate.
pub fn inline_event(
    uid: &str,
    created_at: Timestamp,
    content_type: Option<&str>,
    bytes: &[u8],
    now: Timestamp,
) -> Outgoing {
    let file = FileArrived::inline(uid, created_at, content_type, bytes);
    file_event(file, now)
}

/// The envelope for a `file_arrived` event ([`FileArrived::into_envelope`]), to publish.
pub fn file_event(file: FileArrived, now: Timestamp) -> Outgoing {
    Outgoing { key: None, payload: Bytes::from(file.into_envelope(now).encode()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_from_a_key_takes_dates_times_and_micros() {
        assert_eq!(parse_created_at("2026-11-24").unwrap(), Timestamp::parse("2026-11-24T00:00:00Z").unwrap());
        assert_eq!(
            parse_created_at("2026-11-24T10:00:00Z").unwrap(),
            Timestamp::parse("2026-11-24T10:00:00Z").unwrap()
        );
        assert!(parse_created_at("yesterday").is_err());
    }

    #[test]
    fn landing_settings_need_the_groups_they_use() {
        let mut landing = LandingSettings::default();
        assert!(landing.validate().is_ok());
        landing.created_at = CreatedAtFrom::Key;
        assert!(landing.validate().unwrap_err().contains("created_at"));
        landing.key_pattern = regex::Regex::new(r"(?P<created_at>\d{4}-\d{2}-\d{2})/(?P<uid>[^/]+)").unwrap();
        assert!(landing.validate().is_ok());
        landing.key_pattern = regex::Regex::new(r"(?P<id>.+)").unwrap();
        assert!(landing.validate().unwrap_err().contains("uid"));
    }

    #[test]
    fn a_groups_task_id_depends_on_its_files_only() {
        let a: HashMap<String, (Hash, Vec<usize>, Option<String>)> =
            HashMap::from([("a".into(), ([1; 32], vec![0], None)), ("b".into(), ([2; 32], vec![3], None))]);
        let b: HashMap<String, (Hash, Vec<usize>, Option<String>)> =
            HashMap::from([("b".into(), ([2; 32], vec![9], None)), ("a".into(), ([1; 32], vec![1, 2], None))]);
        assert_eq!(group_task_id(&a), group_task_id(&b));
        assert!(vera_protocol::ids::is_valid_id(&group_task_id(&a)));
        let c: HashMap<String, (Hash, Vec<usize>, Option<String>)> =
            HashMap::from([("a".into(), ([1; 32], vec![0], None))]);
        assert_ne!(group_task_id(&a), group_task_id(&c));
    }
}
