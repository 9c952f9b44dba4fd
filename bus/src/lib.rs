//! The message bus seam.
//!
//! One small trait, [`Bus`], with SQS-like semantics that every backend provides:
//! at-least-once delivery, a visibility timeout after which an unacknowledged message is
//! redelivered, an attempt count, dead-lettering after `max_attempts`, explicit `ack`,
//! `nack` and `extend`, and per-key ordering (messages with the same ordering key are
//! delivered one at a time, in publish order: the Kafka partition key / SQS FIFO group).
//!
//! Backends: [`sqlite::SqliteBus`], a durable queue in one SQLite file for single-machine
//! use, here; SQS (`vera-bus-sqs`), Kafka (`vera-bus-kafka`) and RabbitMQ
//! (`vera-bus-amqp`) in their own crates. All of them run [`conformance::run_all`].
//!
//! Per-key ordering is a property of a topic, not of every topic: backends take the set
//! of ordered topics in their settings ([`OrderedTopics`]); by default that is `events`.

pub mod conformance;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Topic names VERA uses.
pub mod topics {
    /// `PackTask`s from the producer to the workers.
    pub const PACK: &str = "pack";
    /// `ShardSealed` and `TombstoneRequested`: keyed by shard address; the lifecycle
    /// tracker consumes them.
    pub const EVENTS: &str = "events";
    /// `AuditEvent`s for the audit writer.
    pub const AUDIT: &str = "audit";
    /// `RepackRequested`: work for repack workers, from the lifecycle tracker.
    pub const REPACK: &str = "repack";
    /// Files pushed by upstream systems: `file_arrived` events and S3 event
    /// notifications, for ingest workers (`vera worker --ingest`).
    pub const INGEST: &str = "ingest";
    /// Every topic `vera setup-bus` creates.
    pub const ALL: [&str; 5] = [PACK, EVENTS, AUDIT, REPACK, INGEST];
    /// Whether a topic's messages also fan out to every [`crate::Bus::subscribe`]r:
    /// `events` (readers drop cached sidecars on the events about them) and the
    /// conformance suite's fan-out topics.
    pub fn fans_out(topic: &str) -> bool {
        topic == EVENTS || topic.starts_with(crate::conformance::FANOUT_TOPIC_PREFIX)
    }
}

/// A message to publish.
/// Payloads of a topic as [`Bus::subscribe`] delivers them.
pub type Subscription = futures::stream::BoxStream<'static, Result<Bytes, BusError>>;

/// Refuses a subscription to a topic that does not fan out.
pub fn check_broadcast_topic(topic: &str) -> Result<(), BusError> {
    validate_topic(topic)?;
    if topics::fans_out(topic) {
        Ok(())
    } else {
        Err(BusError::new(
            BusErrorKind::InvalidInput,
            format!("topic {topic} does not fan out to subscribers (only {} does)", topics::EVENTS),
        ))
    }
}

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

    /// Acks several deliveries, in one request where the backend can (SQS
    /// `DeleteMessageBatch`). Returns one result per delivery, in order.
    async fn ack_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), BusError>> {
        let mut results = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            results.push(self.ack(delivery).await);
        }
        results
    }

    /// Give the message back, visible again after `delay`.
    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError>;

    /// Still working: keep the message invisible for `visibility` from now.
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError>;

    /// The message can never succeed (malformed, permanently invalid): dead-letter it now.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError>;

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError>;

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Creates the queues (and dead-letter queues) behind `topics` if they are missing.
    /// Only deployment tooling (`vera setup-bus`) and tests call this: normal operation
    /// never creates anything, and reports a missing queue as a `Config` error that names
    /// the command to run.
    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError>;

    /// The largest payload `publish` accepts; bigger ones are refused with `InvalidInput`
    /// before anything is sent.
    fn max_message_bytes(&self) -> usize;

    /// Every message published on `topic` (one that [`topics::fans_out`]) from now on, as
    /// a stream of payloads, independently of the topic's consumers and without acks:
    /// each subscriber sees each message. For caches that must hear about changes (the
    /// reader's sidecars). Best effort: a subscriber that falls behind or reconnects can
    /// miss messages, so what it caches must still expire. The stream ends, or yields an
    /// error, when the subscription breaks; subscribe again. Backends without fan-out
    /// answer `Config`.
    /// Whether [`Bus::subscribe`] works on this backend.
    fn fans_out(&self) -> bool {
        false
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription, BusError> {
        Err(BusError::new(BusErrorKind::Config, format!("this bus cannot fan out topic {topic} to subscribers")))
    }

    /// Whether `ack`, `nack`, `extend` and `dead_letter` refuse an outdated receipt with
    /// `StaleReceipt`. SQS cannot: it accepts an outdated receipt (AWS then leaves the
    /// message in place; moto deletes it). Callers therefore ack only once their work is
    /// durable, so an ack that lands late, or twice, never loses anything.
    fn detects_stale_receipts(&self) -> bool {
        true
    }

    /// Leaves the bus cleanly before the process exits, after its last `ack`. Kafka's
    /// consumers leave their group here, so the partitions pass to the other members at
    /// once instead of after the session timeout; the other backends have nothing to
    /// release (a claim still held goes back when its visibility timeout passes or its
    /// connection closes). Calls after `close` reopen what they need.
    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Refuses a batch holding a payload over `limit` bytes, naming the limit and the setting.
pub fn check_message_sizes(backend: &str, messages: &[Outgoing], limit: usize) -> Result<(), BusError> {
    match messages.iter().find(|message| message.payload.len() > limit) {
        None => Ok(()),
        Some(message) => Err(BusError::new(
            BusErrorKind::InvalidInput,
            format!(
                "{backend}: a message of {} bytes exceeds the bus limit of {limit} bytes; \
                 raise the broker's limit and VERA's `max_message_bytes` together, or make the producer's \
                 slots smaller",
                message.payload.len()
            ),
        )),
    }
}

/// Which topics promise per-key ordering. Backends pay for ordering (SQS FIFO groups,
/// RabbitMQ single active consumer), so only these topics get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedTopics {
    /// A topic is ordered when it equals, or starts with, one of these.
    pub prefixes: Vec<String>,
}

impl Default for OrderedTopics {
    fn default() -> Self {
        OrderedTopics { prefixes: vec![topics::EVENTS.to_owned(), conformance::ORDERED_TOPIC_PREFIX.to_owned()] }
    }
}

impl OrderedTopics {
    pub fn contains(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|prefix| topic.starts_with(prefix.as_str()))
    }
}

/// A broker URL with its password replaced by `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let user = url[scheme_end + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Checks a topic name: 1..=64 characters of `[a-z0-9._-]`.
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    let ok = !topic.is_empty()
        && topic.len() <= 64
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(BusError::new(BusErrorKind::InvalidInput, format!("invalid topic name {topic:?}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("amqp://vera:s3cret@mq:5672/%2f"), "amqp://vera:***@mq:5672/%2f");
        assert_eq!(redact_url("amqp://mq:5672/%2f"), "amqp://mq:5672/%2f");
        assert_eq!(redact_url("nats://u:secret@h"), "nats://u:***@h");
    }
}
