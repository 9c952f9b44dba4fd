//! The message bus seam.
//!
//! One small trait, [`Bus`], with SQS-like semantics that every backend provides:
//! at-least-once delivery, a visibility timeout after which an unacknowledged message is
//! redelivered, an attempt count, dead-lettering after `max_attempts`, explicit `ack`,
//! `nack` and `extend`, and per-key ordering (messages with the same ordering key are
//! delivered one at a time, in publish order: the Kafka partition key / SQS FIFO group).
//!
//! Backends: [`sqlite::SqliteBus`], a durable queue in one SQLite file for single-machine
//! use; SQS, Kafka and RabbitMQ arrive with the real-backends work. All of them run
//! [`conformance::run_all`].

pub mod conformance;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Topic names VERA uses.
pub mod topics {
    /// `PackTask`s from the producer to the workers.
    pub const PACK: &str = "pack";
    /// `ShardSealed`, `TombstoneRequested`, `RepackRequested`: keyed by shard address.
    pub const EVENTS: &str = "events";
    /// `AuditEvent`s for the audit writer.
    pub const AUDIT: &str = "audit";
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Ordering key; `None` means no ordering constraint.
    pub key: Option<String>,
    pub payload: Bytes,
}

/// A claimed message. It stays invisible to other consumers until its visibility
/// timeout passes; then it is redelivered with a new receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    /// Stable id of the message on this bus.
    pub message_id: String,
    /// Proof of this claim; acks and extends with an older receipt are refused.
    pub receipt: String,
    pub key: Option<String>,
    pub payload: Bytes,
    /// 1 on first delivery.
    pub attempt: u32,
}

/// A message that will not be delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub key: Option<String>,
    pub payload: Bytes,
    pub attempts: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Ready to be claimed now.
    pub visible: u64,
    /// Claimed and not yet acked, or delayed.
    pub in_flight: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// Retry later.
    Transient,
    /// The receipt is no longer current: the message was redelivered or already acked.
    StaleReceipt,
    InvalidInput,
    Config,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{message} (kind {kind:?})")]
pub struct BusError {
    pub kind: BusErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BusError {
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError { kind, message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Durably enqueues messages; when this returns they survive a crash.
    async fn publish(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), BusError>;

    /// Claims up to `max` visible messages for `visibility`. Messages that have already
    /// been delivered `max_attempts` times are dead-lettered instead of delivered.
    async fn claim(&self, topic: &str, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError>;

    /// Done with the message: it is gone for good.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError>;

    /// Give the message back, visible again after `delay`.
    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError>;

    /// Still working: keep the message invisible for `visibility` from now.
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError>;

    /// The message can never succeed (malformed, permanently invalid): dead-letter it now.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError>;

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError>;

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError>;
}

/// Checks a topic name: 1..=64 characters of `[a-z0-9._-]`.
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    let ok = !topic.is_empty()
        && topic.len() <= 64
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(BusError::new(BusErrorKind::InvalidInput, format!("invalid topic name {topic:?}"))) }
}
