//! Bus messages and their versioned envelope.
//!
//! **Encoding: JSON (RFC 8259), UTF-8.** Bus messages are a wire format that other teams'
//! code reads (SIEM pipelines, data catalogues, ops tooling), in whatever language they
//! use. JSON is readable in every one of them without a schema compiler, shows up legibly
//! in SQS/Kafka/RabbitMQ consoles and dead-letter queues, and evolves by adding optional
//! fields. The cost, a few hundred bytes and microseconds per message, is noise next to a
//! shard PUT. bincode 1/2 has no cross-language spec (and bincode 3 is an empty crate);
//! postcard is specified but Rust-centric and unreadable in a DLQ. See
//! `docs/adr/0002-message-encoding.md`.
//!
//! Envelope, with the body adjacently tagged:
//!
//! ```json
//! {"v":1,"id":"…","sent_at":"2026-11-24T10:00:00.000000Z",
//!  "trace":{"traceparent":"00-…-…-01"},"type":"pack_task","body":{…}}
//! ```
//!
//! Versioning: `v` is the envelope's major version; a decoder refuses any other value.
//! Within a major version, fields may be added (decoders ignore unknown fields) but never
//! removed, renamed or retyped. A new message `type` is a minor change too; decoders that
//! do not know it report [`EnvelopeError::UnknownType`] so the bus can dead-letter it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::is_valid_id;
use crate::merkle::Hash;
use crate::routing::{RoutingTable, ShardAddr};
use crate::sidecar::TombstoneReason;
use crate::timestamp::Timestamp;

pub const ENVELOPE_VERSION: u16 = 1;
/// Largest encoded message accepted by [`Envelope::decode`].
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why bytes from the bus are not a message we can act on. None of these can succeed on
/// redelivery, so consumers dead-letter them at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is {len} bytes, over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge { len: usize },
    #[error("message is not a valid envelope: {reason}")]
    Malformed { reason: String },
    #[error("unsupported envelope version {version} (this code knows {ENVELOPE_VERSION})")]
    UnsupportedVersion { version: u64 },
    #[error("unknown message type {kind:?}")]
    UnknownType { kind: String },
    #[error("invalid field {field}")]
    InvalidField { field: &'static str },
}

/// W3C Trace Context, carried so producer, worker and reader spans link up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    /// Unique per logical message; redeliveries keep it. Consumers may dedupe on it.
    pub id: String,
    pub sent_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    #[serde(flatten)]
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Message {
    PackTask(PackTask),
    ShardSealed(ShardSealed),
    TombstoneRequested(TombstoneRequested),
    RepackRequested(RepackRequested),
    AuditEvent(AuditEvent),
    /// A file pushed by an upstream system, on the `ingest` topic ([`crate::ingest`]).
    FileArrived(crate::ingest::FileArrived),
}

/// The message `type` names this code understands.
pub const MESSAGE_TYPES: &[&str] =
    &["pack_task", "shard_sealed", "tombstone_requested", "repack_requested", "audit_event", "file_arrived"];

impl Message {
    /// The `type` this message has on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::PackTask(_) => "pack_task",
            Message::ShardSealed(_) => "shard_sealed",
            Message::TombstoneRequested(_) => "tombstone_requested",
            Message::RepackRequested(_) => "repack_requested",
            Message::AuditEvent(_) => "audit_event",
            Message::FileArrived(_) => "file_arrived",
        }
    }
}

/// A slot of source rows for a worker to pack: the rows between two [`ScanPosition`]s
/// of the source's scan order (see [`Slot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackTask {
    /// Deterministic from the slot, so a re-published task is recognisably the same.
    pub task_id: String,
    /// Name of the configured source the rows come from.
    pub source: String,
    pub slot: Slot,
    /// The routing epochs every worker must use for this task.
    pub routing: RoutingTable,
}

/// A range of source rows in the source's scan order.
///
/// Without a visibility horizon column the scan order is the watermark column, and the
/// slot holds the rows with `after < watermark <= up_to`. A source with a horizon column
/// (PostgreSQL's inserting transaction id, MySQL's insert time) scans in the order
/// `(horizon, watermark)`, and `horizon` holds that column's values at the two bounds:
/// the slot holds the rows with `(horizon.after, after) < (h, watermark) <= (horizon.up_to, up_to)`,
/// compared as pairs; `horizon.after` is `None` for the first slot (no lower bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Exclusive lower bound on the watermark column (within `horizon.after`, if any).
    pub after: i64,
    /// Inclusive upper bound on the watermark column (within `horizon.up_to`, if any).
    pub up_to: i64,
    /// Rows the producer counted in the slot.
    pub rows: u64,
    /// Payload bytes the producer estimated for the slot.
    pub bytes: u64,
    /// The horizon column's values at the bounds, for a source scanned by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<HorizonBounds>,
}

/// The horizon column's values at a slot's bounds (see [`Slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HorizonBounds {
    /// Exclusive lower bound, paired with [`Slot::after`]; `None`: from the first row.
    pub after: Option<i64>,
    /// Inclusive upper bound, paired with [`Slot::up_to`].
    pub up_to: i64,
}

/// A point in a source's scan order: the watermark, preceded by the horizon column's
/// value for a source scanned by one. Ordered as a pair (`None` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScanPosition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<i64>,
    pub watermark: i64,
}

impl ScanPosition {
    /// Before every row of a source: the producer's starting point.
    pub const START: ScanPosition = ScanPosition { horizon: None, watermark: i64::MIN };

    /// A position in a source scanned by its watermark column alone.
    pub fn watermark(watermark: i64) -> Self {
        ScanPosition { horizon: None, watermark }
    }
}

impl std::fmt::Display for ScanPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.horizon {
            Some(horizon) => write!(f, "{horizon}.{}", self.watermark),
            None => write!(f, "{}", self.watermark),
        }
    }
}

impl Slot {
    /// The exclusive lower bound.
    pub fn start(&self) -> ScanPosition {
        ScanPosition { horizon: self.horizon.and_then(|bounds| bounds.after), watermark: self.after }
    }

    /// The inclusive upper bound.
    pub fn end(&self) -> ScanPosition {
        ScanPosition { horizon: self.horizon.map(|bounds| bounds.up_to), watermark: self.up_to }
    }

    /// A slot of a source scanned by its watermark column alone.
    pub fn by_watermark(after: i64, up_to: i64, rows: u64, bytes: u64) -> Self {
        Slot { after, up_to, rows, bytes, horizon: None }
    }

    /// Whether a row at `position` belongs to the slot.
    pub fn contains(&self, position: ScanPosition) -> bool {
        // `None` sorts first, so the first slot of a horizon-ordered source, whose start
        // has no horizon, holds every row up to its end.
        position > self.start() && position <= self.end()
    }
}

/// A segment was written and is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSealed {
    pub task_id: String,
    pub addr: ShardAddr,
    pub generation: u32,
    pub key: String,
    /// Object version id where the store has versioning (S3 with Object Lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(with = "crate::hex")]
    pub object_hash: Hash,
    #[serde(with = "crate::hex")]
    pub merkle_root: Hash,
    pub files: u64,
    pub raw_bytes: u64,
    pub object_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<Timestamp>,
    pub sealed_at: Timestamp,
}

/// An operator asked for one file to be logically deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneRequested {
    pub request_id: String,
    pub uid: String,
    pub created_at: Timestamp,
    pub addr: ShardAddr,
    pub reason: TombstoneReason,
    pub operator: String,
    pub requested_at: Timestamp,
}

/// A segment's tombstoned share crossed the threshold; rewrite its live files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepackRequested {
    pub addr: ShardAddr,
    pub generation: u32,
    pub key: String,
    pub tombstoned_bytes: u64,
    pub total_bytes: u64,
    pub threshold_ratio: f64,
    pub requested_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditAction {
    Pack,
    Read,
    Delete,
    Repack,
    Retain,
    Hold,
    Export,
    /// A completeness check of a source range (`vera reconcile --attest`).
    Reconcile,
    /// A routing epoch added to the store's routing table (`vera routing add-epoch`).
    Routing,
    /// Staging segments merged into a final generation (`vera compact`, ADR 0005).
    Compact,
    /// A landing object removed after its file was stored and verified (`vera worker
    /// --ingest --expire-staged`).
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    Denied,
    Failed,
}

/// One auditable operation. `details` holds short machine values (hashes, counts,
/// version ids), never free text about people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub at: Timestamp,
    /// Service name or operator id.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Probe {
    v: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Envelope {
    pub fn new(id: impl Into<String>, sent_at: Timestamp, message: Message) -> Self {
        Envelope { v: ENVELOPE_VERSION, id: id.into(), sent_at, trace: None, message }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data to a Vec: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes from the bus.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(EnvelopeError::TooLarge { len: bytes.len() });
        }
        let malformed = |error: serde_json::Error| EnvelopeError::Malformed { reason: error.to_string() };
        let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
        match probe.v {
            Some(version) if version == u64::from(ENVELOPE_VERSION) => {}
            Some(version) => return Err(EnvelopeError::UnsupportedVersion { version }),
            None => return Err(EnvelopeError::Malformed { reason: "missing field `v`".into() }),
        }
        match probe.kind {
            Some(kind) if MESSAGE_TYPES.contains(&kind.as_str()) => {}
            Some(kind) => return Err(EnvelopeError::UnknownType { kind: kind.chars().take(64).collect() }),
            None => return Err(EnvelopeError::Malformed { reason: "missing field `type`".into() }),
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Field checks serde cannot express.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if !is_valid_id(&self.id) {
            return Err(EnvelopeError::InvalidField { field: "id" });
        }
        let check_uid =
            |uid: &str| crate::routing::validate_uid(uid).map_err(|_| EnvelopeError::InvalidField { field: "uid" });
        match &self.message {
            Message::PackTask(task) => {
                if !is_valid_id(&task.task_id) || !is_valid_id(&task.source) {
                    return Err(EnvelopeError::InvalidField { field: "task_id or source" });
                }
                // With a horizon, the watermark alone may go down from start to end.
                if task.slot.end() < task.slot.start() {
                    return Err(EnvelopeError::InvalidField { field: "slot" });
                }
                task.routing.validate().map_err(|_| EnvelopeError::InvalidField { field: "routing" })?;
            }
            Message::ShardSealed(sealed) => {
                let staged = sealed.generation == crate::routing::STAGING_GENERATION
                    && ShardAddr::from_staging_key(&sealed.key).is_ok_and(|(addr, _)| addr == sealed.addr);
                if !staged && sealed.key != sealed.addr.segment_key(sealed.generation) {
                    return Err(EnvelopeError::InvalidField { field: "key" });
                }
            }
            Message::TombstoneRequested(request) => {
                check_uid(&request.uid)?;
                if !is_valid_id(&request.request_id) || !is_valid_id(&request.operator) {
                    return Err(EnvelopeError::InvalidField { field: "request_id or operator" });
                }
            }
            Message::RepackRequested(request) => {
                if request.key != request.addr.segment_key(request.generation) {
                    return Err(EnvelopeError::InvalidField { field: "key" });
                }
                if !(0.0..=1.0).contains(&request.threshold_ratio) {
                    return Err(EnvelopeError::InvalidField { field: "threshold_ratio" });
                }
            }
            Message::AuditEvent(event) => {
                if !is_valid_id(&event.actor) {
                    return Err(EnvelopeError::InvalidField { field: "actor" });
                }
                if let Some(uid) = &event.uid {
                    check_uid(uid)?;
                }
            }
            Message::FileArrived(file) => file.validate()?,
        }
        Ok(())
    }

    /// The key that keeps events about one shard in order (Kafka partition key, SQS FIFO
    /// message group). `None` when order does not matter.
    pub fn ordering_key(&self) -> Option<String> {
        match &self.message {
            Message::PackTask(_) => None,
            Message::ShardSealed(sealed) => Some(sealed.addr.key_prefix()),
            Message::TombstoneRequested(request) => Some(request.addr.key_prefix()),
            Message::RepackRequested(request) => Some(request.addr.key_prefix()),
            Message::AuditEvent(event) => event.segment_key.clone(),
            Message::FileArrived(_) => None,
        }
    }
}
