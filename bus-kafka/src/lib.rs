//! Kafka backend for VERA's [`Bus`], on rdkafka with its bundled librdkafka.
//!
//! Topics, for a VERA topic `t` and the default prefix `vera.`: `vera.t` carries the
//! messages and `vera.t.dlq` the dead letters. Messages are keyed by their ordering key
//! (the shard address for events), so one key always lands in one partition.
//!
//! Kafka has offsets, not per-message acknowledgements, so the bus builds SQS semantics on
//! top of a consumer group:
//!
//! - **Manual commits, only for durable work.** Each consumer tracks, per partition, the
//!   offsets it has received and not yet settled. A message is settled by `ack`, by being
//!   re-published for a retry, or by being written to the dead-letter topic; the group's
//!   committed offset then advances to the lowest unsettled offset. A worker that dies
//!   leaves its partitions' commits behind its unfinished work, so the next owner of those
//!   partitions is delivered that work again.
//! - **Attempts and retries.** Every message carries `vera-id` and `vera-attempt` headers.
//!   A `nack` (or a claim whose visibility timeout passes) re-publishes the message with
//!   the attempt number raised, and a `vera-not-before` header for the delay, then settles
//!   the original. At `max_attempts` it goes to the dead-letter topic instead. A retried
//!   message goes to the back of its partition, behind later messages of its key.
//! - **One claim per key** on ordered topics: a consumer owns whole partitions, so holding
//!   back later messages of a key it has in flight orders them across the whole group.
//! - **Idempotent producer** (`enable.idempotence`), `acks=all`, where the broker supports it.
//! - **Replay**: [`KafkaBus::replay`] moves the group's committed offsets back to an offset
//!   or a time, so stopped workers, restarted, process the topic again from there.
//!
//! - **Deliveries survive crashes.** Before a claim is handed out, the consumer commits
//!   its partition's offset (unchanged) with commit metadata recording how many times each
//!   in-flight offset has been delivered (`vera-delivered:OFFSET=COUNT,…`). A consumer that
//!   takes the partition over after a crash reads that metadata, so a message that kills
//!   every worker that touches it still reaches `max_attempts` and the dead-letter topic
//!   instead of looping forever. This needs a broker that returns commit metadata in
//!   OffsetFetch, as Kafka does; tansu 0.6 stores it but answers offsets only, so there a
//!   crashed delivery is not counted (handled failures still are, through `nack`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;
use vera_bus::{
    Bus, BusError, BusErrorKind, DeadLetter, Delivery, OrderedTopics, Outgoing, QueueDepth, check_message_sizes,
    validate_topic,
};

/// Kafka's default `message.max.bytes` is about 1 MB; stay under it by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000 - 4096;
const ID_HEADER: &str = "vera-id";
const ATTEMPT_HEADER: &str = "vera-attempt";
const NOT_BEFORE_HEADER: &str = "vera-not-before";
const REASON_HEADER: &str = "vera-reason";
/// Messages a consumer buffers before it stops polling for more.
const BUFFER_LIMIT: usize = 1000;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Bus::close`] waits for one consumer to leave its group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Prepended to VERA topic names.
    pub prefix: String,
    /// The consumer group every worker joins.
    pub group: String,
    pub max_attempts: u32,
    pub ordered: OrderedTopics,
    pub max_message_bytes: usize,
    /// Partitions and replication factor for `ensure_topics`.
    pub partitions: i32,
    pub replication: i32,
    pub idempotence: bool,
    /// How long an empty `claim` waits for a message.
    pub claim_wait: Duration,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, …).
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            prefix: "vera.".to_owned(),
            group: "vera-workers".to_owned(),
            max_attempts: 5,
            ordered: OrderedTopics::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            partitions: 6,
            replication: 1,
            idempotence: true,
            claim_wait: Duration::from_millis(200),
            extra: Vec::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("allow.auto.create.topics", "false");
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

fn kafka_error(context: &str, brokers: &str, error: KafkaError) -> BusError {
    let code = error.rdkafka_error_code();
    let (kind, hint) = match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            (BusErrorKind::Config, "the topic does not exist; run `vera setup-bus`")
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => (
            BusErrorKind::InvalidInput,
            "the broker refused the message size; raise the topic's max.message.bytes or lower VERA's max_message_bytes",
        ),
        Some(
            RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => (BusErrorKind::Config, "the broker refused the credentials or the ACLs"),
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut,
        ) => (BusErrorKind::Transient, "cannot reach the Kafka brokers; are they running and reachable?"),
        _ => (BusErrorKind::Other, "unexpected Kafka error"),
    };
    BusError::new(kind, format!("kafka {brokers}: {context} failed: {hint}")).with_source(error)
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A received message that is not yet settled.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    offset: i64,
    key: Option<String>,
    payload: Bytes,
    id: String,
    attempt: u32,
    not_before: u64,
    reason: Option<String>,
}

struct Claim {
    received: Received,
    deadline: Instant,
}

#[derive(Default)]
struct ConsumerState {
    buffer: VecDeque<Received>,
    claims: HashMap<String, Claim>,
    /// Per partition: offsets received and not settled.
    outstanding: HashMap<i32, BTreeSet<i64>>,
    /// Per partition: one past the highest offset received.
    high: HashMap<i32, i64>,
    /// Per partition: the offset last committed.
    committed: HashMap<i32, i64>,
    /// Per partition: earlier deliveries of unsettled offsets, as kept in commit metadata.
    delivered: HashMap<i32, HashMap<i64, u32>>,
    /// Partitions whose commit metadata has been read since they were assigned.
    loaded: HashSet<i32>,
}

const DELIVERED_PREFIX: &str = "vera-delivered:";

fn parse_delivered(metadata: &str) -> HashMap<i64, u32> {
    let Some(list) = metadata.strip_prefix(DELIVERED_PREFIX) else { return HashMap::new() };
    list.split(',')
        .filter_map(|pair| {
            let (offset, count) = pair.split_once('=')?;
            Some((offset.parse().ok()?, count.parse().ok()?))
        })
        .collect()
}

fn format_delivered(delivered: &HashMap<i64, u32>, from: i64) -> String {
    let mut entries: Vec<_> = delivered.iter().filter(|(offset, _)| **offset >= from).collect();
    entries.sort();
    let list: Vec<String> = entries.iter().map(|(offset, count)| format!("{offset}={count}")).collect();
    format!("{DELIVERED_PREFIX}{}", list.join(","))
}

impl ConsumerState {
    /// Forgets revoked partitions: their claims become stale, and their new owner starts
    /// from the committed offset.
    fn revoke(&mut self, partitions: &HashSet<i32>) {
        self.buffer.retain(|r| !partitions.contains(&r.partition));
        self.claims.retain(|_, c| !partitions.contains(&c.received.partition));
        for p in partitions {
            self.outstanding.remove(p);
            self.high.remove(p);
            self.committed.remove(p);
            self.delivered.remove(p);
            self.loaded.remove(p);
        }
    }

    /// The offset a commit of `partition` may name now: the lowest unsettled one.
    fn commit_point(&self, partition: i32) -> Option<i64> {
        self.outstanding.get(&partition).and_then(|o| o.first().copied()).or_else(|| self.high.get(&partition).copied())
    }

    /// Marks an offset settled; returns the offset to commit for its partition, if it moved.
    fn settle(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let outstanding = self.outstanding.get_mut(&partition)?;
        outstanding.remove(&offset);
        if let Some(delivered) = self.delivered.get_mut(&partition) {
            delivered.remove(&offset);
        }
        let target = self.commit_point(partition)?;
        (self.committed.get(&partition).copied().unwrap_or(-1) < target).then_some(target)
    }
}

struct GroupContext {
    state: Arc<Mutex<ConsumerState>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: HashSet<i32> = list.elements().iter().map(TopicPartitionListElem::partition).collect();
            tracing::info!(?partitions, "kafka partitions revoked; their claims are released");
            self.state.lock().expect("state lock").revoke(&partitions);
        }
    }
}

struct TopicConsumer {
    topic: String,
    consumer: Arc<BaseConsumer<GroupContext>>,
    state: Arc<Mutex<ConsumerState>>,
    arrived: Arc<Notify>,
    commit_lock: tokio::sync::Mutex<()>,
    stop: Arc<AtomicBool>,
    /// The poll thread, joined by [`Bus::close`].
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for TopicConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn header_str(message: &impl Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn received(message: &impl Message) -> Received {
    Received {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        id: header_str(message, ID_HEADER).unwrap_or_else(|| format!("{}-{}", message.partition(), message.offset())),
        attempt: header_str(message, ATTEMPT_HEADER).and_then(|a| a.parse().ok()).unwrap_or(1),
        not_before: header_str(message, NOT_BEFORE_HEADER).and_then(|a| a.parse().ok()).unwrap_or(0),
        reason: header_str(message, REASON_HEADER),
    }
}

/// Polls the consumer on its own thread (librdkafka's poll blocks, and runs the rebalance
/// callbacks) and fills the buffer.
fn poll_loop(
    consumer: Arc<BaseConsumer<GroupContext>>,
    state: Arc<Mutex<ConsumerState>>,
    arrived: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        if state.lock().expect("state lock").buffer.len() >= BUFFER_LIMIT {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let mut r = received(&message);
                let needs_load = !state.lock().expect("state lock").loaded.contains(&r.partition);
                if needs_load {
                    let mut list = TopicPartitionList::new();
                    list.add_partition(message.topic(), r.partition);
                    let delivered = match consumer.committed_offsets(list, METADATA_TIMEOUT) {
                        Ok(list) => list
                            .elements()
                            .first()
                            .map(|element| parse_delivered(element.metadata()))
                            .unwrap_or_default(),
                        Err(error) => {
                            tracing::warn!(%error, "kafka: cannot read commit metadata; delivery counts restart");
                            HashMap::new()
                        }
                    };
                    let mut state = state.lock().expect("state lock");
                    state.delivered.insert(r.partition, delivered);
                    state.loaded.insert(r.partition);
                }
                let mut state = state.lock().expect("state lock");
                if let Some(earlier) = state.delivered.get(&r.partition).and_then(|d| d.get(&r.offset)) {
                    r.attempt = r.attempt.saturating_add(*earlier);
                }
                state.outstanding.entry(r.partition).or_default().insert(r.offset);
                let high = state.high.entry(r.partition).or_insert(0);
                *high = (*high).max(r.offset + 1);
                state.buffer.push_back(r);
                drop(state);
                arrived.notify_waiters();
            }
            Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
            None => {}
        }
    }
    consumer.unsubscribe();
}

pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// A group member that never subscribes: reads and resets the group's offsets.
    meta: BaseConsumer,
    consumers: tokio::sync::Mutex<HashMap<String, Arc<TopicConsumer>>>,
    checked: Mutex<HashSet<String>>,
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// This offset in every partition (0 is the beginning).
    Offset(i64),
    /// The first message at or after this time, in milliseconds since the epoch.
    TimeMillis(i64),
}

impl KafkaBus {
    pub async fn connect(settings: KafkaSettings) -> Result<Self, BusError> {
        if settings.max_attempts == 0 {
            return Err(BusError::new(BusErrorKind::Config, "kafka: max_attempts must be at least 1"));
        }
        let brokers = settings.brokers.clone();
        let err = |context: &'static str| {
            let brokers = brokers.clone();
            move |e| kafka_error(context, &brokers, e)
        };
        let mut producer_config = settings.client_config();
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", if settings.idempotence { "true" } else { "false" })
            .set("message.max.bytes", (settings.max_message_bytes + 64 * 1024).to_string())
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = producer_config.create().map_err(err("create producer"))?;
        let admin: AdminClient<DefaultClientContext> =
            settings.client_config().create().map_err(err("create admin client"))?;
        let meta: BaseConsumer = settings
            .client_config()
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err("create consumer"))?;
        let inner = Arc::new(Inner {
            settings,
            producer,
            admin,
            meta,
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            checked: Mutex::new(HashSet::new()),
        });
        let bus = KafkaBus { inner };
        // Fail now, with a clear message, if no broker answers.
        bus.blocking("reach the brokers", |inner| inner.meta.fetch_metadata(None, METADATA_TIMEOUT).map(|_| ()))
            .await?;
        tokio::spawn(sweeper(Arc::downgrade(&bus.inner)));
        Ok(bus)
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.settings.prefix)
    }

    fn dead_name(&self, topic: &str) -> String {
        format!("{}{topic}.dlq", self.inner.settings.prefix)
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        context: &str,
        f: impl FnOnce(&Inner) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, BusError> {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| BusError::new(BusErrorKind::Other, format!("kafka: {context}: task failed")).with_source(e))?;
        result.map_err(|e| kafka_error(context, &self.inner.settings.brokers, e))
    }

    /// Partitions of a Kafka topic, or a Config error naming `vera setup-bus`.
    async fn partitions(&self, name: &str) -> Result<Vec<i32>, BusError> {
        let owned = name.to_owned();
        let metadata = self
            .blocking(&format!("read metadata of {name}"), move |inner| {
                inner.meta.fetch_metadata(Some(&owned), METADATA_TIMEOUT)
            })
            .await?;
        let topic = metadata.topics().iter().find(|t| t.name() == name);
        match topic {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().iter().map(|p| p.id()).collect())
            }
            _ => Err(BusError::new(
                BusErrorKind::Config,
                format!("kafka {}: topic `{name}` does not exist; run `vera setup-bus`", self.inner.settings.brokers),
            )),
        }
    }

    async fn require_topic(&self, topic: &str) -> Result<(), BusError> {
        if self.inner.checked.lock().expect("checked lock").contains(topic) {
            return Ok(());
        }
        self.partitions(&self.name(topic)).await?;
        self.partitions(&self.dead_name(topic)).await?;
        self.inner.checked.lock().expect("checked lock").insert(topic.to_owned());
        Ok(())
    }

    async fn send(
        &self,
        name: &str,
        r: &Received,
        attempt: u32,
        not_before: u64,
        reason: Option<&str>,
    ) -> Result<(), BusError> {
        let attempt_text = attempt.to_string();
        let not_before_text = not_before.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: ID_HEADER, value: Some(r.id.as_bytes()) })
            .insert(Header { key: ATTEMPT_HEADER, value: Some(attempt_text.as_bytes()) });
        if not_before > 0 {
            headers = headers.insert(Header { key: NOT_BEFORE_HEADER, value: Some(not_before_text.as_bytes()) });
        }
        if let Some(reason) = reason {
            headers = headers.insert(Header { key: REASON_HEADER, value: Some(reason.as_bytes()) });
        }
        let mut record = FutureRecord::to(name).payload(r.payload.as_ref()).headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key.as_bytes());
        }
        self.inner
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| kafka_error(&format!("publish to {name}"), &self.inner.settings.brokers, error))
    }

    async fn consumer(&self, topic: &str) -> Result<Arc<TopicConsumer>, BusError> {
        let mut consumers = self.inner.consumers.lock().await;
        if let Some(consumer) = consumers.get(topic) {
            return Ok(consumer.clone());
        }
        self.require_topic(topic).await?;
        let state = Arc::new(Mutex::new(ConsumerState::default()));
        let settings = &self.inner.settings;
        let consumer: BaseConsumer<GroupContext> = settings
            .client_config()
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.message.max.bytes", (settings.max_message_bytes + 64 * 1024).to_string())
            .create_with_context(GroupContext { state: state.clone() })
            .map_err(|e| kafka_error("create consumer", &settings.brokers, e))?;
        let name = self.name(topic);
        consumer.subscribe(&[&name]).map_err(|e| kafka_error(&format!("subscribe to {name}"), &settings.brokers, e))?;
        let consumer = Arc::new(consumer);
        let arrived = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (consumer, state, arrived, stop) = (consumer.clone(), state.clone(), arrived.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("kafka-poll-{topic}"))
                .spawn(move || poll_loop(consumer, state, arrived, stop))
                .map_err(|e| BusError::new(BusErrorKind::Other, "kafka: cannot start the poll thread").with_source(e))?
        };
        let consumer = Arc::new(TopicConsumer {
            topic: topic.to_owned(),
            consumer,
            state,
            arrived,
            commit_lock: tokio::sync::Mutex::new(()),
            stop,
            poller: Mutex::new(Some(poller)),
        });
        consumers.insert(topic.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// Claims up to `max` buffered messages, and names the partitions they came from.
    /// Messages already delivered `max_attempts` times (their earlier consumers died
    /// holding them) come back separately, to be dead-lettered instead of delivered.
    fn take(
        &self,
        consumer: &TopicConsumer,
        max: usize,
        visibility: Duration,
    ) -> (Vec<Delivery>, BTreeSet<i32>, Vec<Received>) {
        let max_attempts = self.inner.settings.max_attempts;
        let ordered = self.inner.settings.ordered.contains(&consumer.topic);
        let now = now_millis();
        let mut state = consumer.state.lock().expect("state lock");
        let mut busy: HashSet<String> = if ordered {
            state.claims.values().filter_map(|c| c.received.key.clone()).collect()
        } else {
            HashSet::new()
        };
        let mut out = Vec::new();
        let mut partitions = BTreeSet::new();
        let mut poison = Vec::new();
        let mut index = 0;
        while out.len() < max && index < state.buffer.len() {
            if state.buffer[index].attempt > max_attempts {
                poison.push(state.buffer.remove(index).expect("index in range"));
                continue;
            }
            let candidate = &state.buffer[index];
            let blocked = ordered && candidate.key.as_ref().is_some_and(|k| busy.contains(k));
            if blocked || candidate.not_before > now {
                if ordered && let Some(key) = &candidate.key {
                    busy.insert(key.clone());
                }
                index += 1;
                continue;
            }
            let r = state.buffer.remove(index).expect("index in range");
            if ordered && let Some(key) = &r.key {
                busy.insert(key.clone());
            }
            let receipt = format!("{}:{}:{:016x}", r.partition, r.offset, rand::random::<u64>());
            out.push(Delivery {
                topic: consumer.topic.clone(),
                message_id: r.id.clone(),
                receipt: receipt.clone(),
                key: r.key.clone(),
                payload: r.payload.clone(),
                attempt: r.attempt,
            });
            *state.delivered.entry(r.partition).or_default().entry(r.offset).or_insert(0) += 1;
            partitions.insert(r.partition);
            state.claims.insert(receipt, Claim { received: r, deadline: Instant::now() + visibility });
        }
        (out, partitions, poison)
    }

    /// Commits `partition` at its commit point with the delivery counts of its unsettled
    /// offsets as metadata. `only_if_moved` skips the commit when the offset is unchanged.
    async fn commit(&self, consumer: &TopicConsumer, partition: i32, only_if_moved: bool) -> Result<(), BusError> {
        let _guard = consumer.commit_lock.lock().await;
        let (target, metadata) = {
            let state = consumer.state.lock().expect("state lock");
            let Some(target) = state.commit_point(partition) else { return Ok(()) };
            if only_if_moved && state.committed.get(&partition).copied().unwrap_or(-1) >= target {
                return Ok(());
            }
            let empty = HashMap::new();
            (target, format_delivered(state.delivered.get(&partition).unwrap_or(&empty), target))
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.name(&consumer.topic), partition, Offset::Offset(target))
            .map_err(|e| kafka_error("build commit", &self.inner.settings.brokers, e))?;
        if let Some(mut element) = list.find_partition(&self.name(&consumer.topic), partition) {
            element.set_metadata(metadata);
        }
        let group_consumer = consumer.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || group_consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| BusError::new(BusErrorKind::Other, "kafka: commit task failed").with_source(e))?;
        match committed {
            Ok(()) => {
                consumer.state.lock().expect("state lock").committed.insert(partition, target);
                Ok(())
            }
            // The partition moved to another consumer: it will deliver the rest again.
            Err(error) => Err(BusError::new(
                BusErrorKind::StaleReceipt,
                format!("kafka: commit of partition {partition} failed; its messages may be delivered again"),
            )
            .with_source(error)),
        }
    }

    /// Takes claims, records them in commit metadata, and dead-letters messages that
    /// already had every attempt.
    async fn claim_now(
        &self,
        consumer: &TopicConsumer,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let (claims, partitions, poison) = self.take(consumer, max, visibility);
        for r in poison {
            let reason =
                format!("delivered {} times; every consumer holding it stopped before settling it", r.attempt - 1);
            self.send(&self.dead_name(&consumer.topic), &r, r.attempt - 1, 0, Some(&reason)).await?;
            self.settle(consumer, &r).await?;
        }
        for partition in partitions {
            if let Err(error) = self.commit(consumer, partition, false).await {
                tracing::warn!(%error, "kafka: could not record a delivery; a crash now would not count it");
            }
        }
        Ok(claims)
    }

    async fn existing_consumer(&self, topic: &str) -> Option<Arc<TopicConsumer>> {
        self.inner.consumers.lock().await.get(topic).cloned()
    }

    async fn take_claim(&self, delivery: &Delivery, what: &str) -> Result<(Arc<TopicConsumer>, Received), BusError> {
        let stale =
            || BusError::new(BusErrorKind::StaleReceipt, format!("kafka: {what}: receipt is no longer current"));
        let consumer = self.existing_consumer(&delivery.topic).await.ok_or_else(stale)?;
        let claim = consumer.state.lock().expect("state lock").claims.remove(&delivery.receipt).ok_or_else(stale)?;
        Ok((consumer, claim.received))
    }

    /// Settles an offset and commits the partition's new low-water mark.
    async fn settle(&self, consumer: &TopicConsumer, r: &Received) -> Result<(), BusError> {
        let moved = consumer.state.lock().expect("state lock").settle(r.partition, r.offset).is_some();
        if moved { self.commit(consumer, r.partition, true).await } else { Ok(()) }
    }

    /// Hands a claimed message back: re-published with the next attempt number, or
    /// dead-lettered when it has had `max_attempts`.
    async fn retry(&self, consumer: &TopicConsumer, r: Received, delay: Duration, why: &str) -> Result<(), BusError> {
        if r.attempt >= self.inner.settings.max_attempts {
            let reason = format!("{why} after {} attempts", r.attempt);
            self.send(&self.dead_name(&consumer.topic), &r, r.attempt, 0, Some(&reason)).await?;
        } else {
            let not_before = if delay.is_zero() { 0 } else { now_millis() + delay.as_millis() as u64 };
            self.send(&self.name(&consumer.topic), &r, r.attempt + 1, not_before, None).await?;
        }
        self.settle(consumer, &r).await
    }

    /// Moves the group's committed offsets for `topic` back to `from`, for disaster
    /// recovery. Stop every worker of the group first: Kafka refuses to move the offsets
    /// of a group with active members.
    pub async fn replay(&self, topic: &str, from: ReplayFrom) -> Result<Vec<(i32, i64)>, BusError> {
        validate_topic(topic)?;
        let name = self.name(topic);
        let partitions = self.partitions(&name).await?;
        let settings = self.inner.settings.clone();
        let offsets = self
            .blocking(&format!("reset offsets of {name}"), move |inner| {
                let mut list = TopicPartitionList::new();
                for p in &partitions {
                    let offset = match from {
                        ReplayFrom::Offset(o) => Offset::Offset(o),
                        ReplayFrom::TimeMillis(t) => Offset::Offset(t),
                    };
                    list.add_partition_offset(&name, *p, offset)?;
                }
                if let ReplayFrom::TimeMillis(_) = from {
                    list = inner.meta.offsets_for_times(list, METADATA_TIMEOUT)?;
                }
                let reader = match from {
                    ReplayFrom::TimeMillis(_) => Some(group_free_reader(&settings, "replay")?),
                    ReplayFrom::Offset(_) => None,
                };
                let mut resolved = Vec::new();
                let mut commit = TopicPartitionList::new();
                for element in list.elements() {
                    let (low, high) = inner.meta.fetch_watermarks(&name, element.partition(), METADATA_TIMEOUT)?;
                    let mut offset = match element.offset() {
                        Offset::Offset(o) => o.clamp(low, high),
                        // No message at or after the time: start at the end.
                        _ => high,
                    };
                    if let (Some(reader), ReplayFrom::TimeMillis(target)) = (&reader, from) {
                        offset = first_at_or_after(reader, &name, element.partition(), offset, high, target)?;
                    }
                    commit.add_partition_offset(&name, element.partition(), Offset::Offset(offset))?;
                    resolved.push((element.partition(), offset));
                }
                inner.meta.commit(&commit, CommitMode::Sync)?;
                Ok(resolved)
            })
            .await?;
        Ok(offsets)
    }
}

/// A consumer outside the worker group (its own throwaway group id, never committing),
/// for reading a topic without disturbing the workers.
fn group_free_reader(settings: &KafkaSettings, purpose: &str) -> Result<BaseConsumer, KafkaError> {
    settings
        .client_config()
        .set("group.id", format!("{}-{purpose}-{:08x}", settings.group, rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .create()
}

/// The first offset from `start` whose message is stamped at or after `target` (ms), or
/// the end of the partition. Brokers answer `offsets_for_times` with the right offset
/// (then this reads one message to confirm it); some (tansu) answer the earliest, and the
/// scan forward corrects that.
fn first_at_or_after(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    high: i64,
    target: i64,
) -> Result<i64, KafkaError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(start))?;
    reader.assign(&list)?;
    let mut offset = start;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while offset < high && std::time::Instant::now() < deadline {
        let Some(result) = reader.poll(Duration::from_millis(200)) else { continue };
        let message = result?;
        match message.timestamp().to_millis() {
            Some(stamp) if stamp < target => offset = message.offset() + 1,
            _ => return Ok(message.offset()),
        }
    }
    Ok(offset)
}

/// Retries claims whose visibility timeout passed.
async fn sweeper(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let consumers: Vec<Arc<TopicConsumer>> = inner.consumers.lock().await.values().cloned().collect();
        let bus = KafkaBus { inner };
        for consumer in consumers {
            let now = Instant::now();
            let expired: Vec<Received> = {
                let mut state = consumer.state.lock().expect("state lock");
                let keys: Vec<String> =
                    state.claims.iter().filter(|(_, c)| c.deadline <= now).map(|(k, _)| k.clone()).collect();
                keys.into_iter().filter_map(|k| state.claims.remove(&k)).map(|c| c.received).collect()
            };
            for r in expired {
                if let Err(error) = bus.retry(&consumer, r, Duration::ZERO, "visibility timeout passed").await {
                    tracing::warn!(%error, "kafka: could not hand back an expired claim; it is redelivered after a restart");
                }
            }
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), BusError> {
        validate_topic(topic)?;
        check_message_sizes("kafka", &messages, self.inner.settings.max_message_bytes)?;
        if messages.is_empty() {
            return Ok(());
        }
        self.require_topic(topic).await?;
        let name = self.name(topic);
        let sends = messages.into_iter().map(|message| {
            let r = Received {
                partition: -1,
                offset: -1,
                key: message.key,
                payload: message.payload,
                id: format!("{:032x}", rand::random::<u128>()),
                attempt: 1,
                not_before: 0,
                reason: None,
            };
            let name = name.clone();
            async move { self.send(&name, &r, 1, 0, None).await }
        });
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn claim(&self, topic: &str, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError> {
        validate_topic(topic)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let consumer = self.consumer(topic).await?;
        let claims = self.claim_now(&consumer, max, visibility).await?;
        if !claims.is_empty() {
            return Ok(claims);
        }
        let _ = tokio::time::timeout(self.inner.settings.claim_wait, consumer.arrived.notified()).await;
        self.claim_now(&consumer, max, visibility).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        let (consumer, r) = self.take_claim(delivery, "ack").await?;
        self.settle(&consumer, &r).await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        let (consumer, r) = self.take_claim(delivery, "nack").await?;
        self.retry(&consumer, r, delay, "handed back").await
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError> {
        let stale = || BusError::new(BusErrorKind::StaleReceipt, "kafka: extend: receipt is no longer current");
        let consumer = self.existing_consumer(&delivery.topic).await.ok_or_else(stale)?;
        let mut state = consumer.state.lock().expect("state lock");
        let claim = state.claims.get_mut(&delivery.receipt).ok_or_else(stale)?;
        claim.deadline = Instant::now() + visibility;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let (consumer, r) = self.take_claim(delivery, "dead-letter").await?;
        // In the dead-letter topic first, settled second: a crash between leaves two
        // copies, never none.
        self.send(&self.dead_name(&consumer.topic), &r, r.attempt, 0, Some(reason)).await?;
        self.settle(&consumer, &r).await
    }

    fn fans_out(&self) -> bool {
        true
    }

    /// A consumer outside every group, assigned each partition at its high watermark as
    /// read before this returns (so nothing published afterwards is missed), polled on
    /// its own thread until the stream is dropped. Retried messages (re-published) are
    /// seen again.
    async fn subscribe(&self, topic: &str) -> Result<vera_bus::Subscription, BusError> {
        vera_bus::check_broadcast_topic(topic)?;
        self.require_topic(topic).await?;
        let name = self.name(topic);
        let partitions = self.partitions(&name).await?;
        let settings = self.inner.settings.clone();
        let reader = self
            .blocking(&format!("subscribe to {name}"), move |inner| {
                let reader = group_free_reader(&settings, "subscriber")?;
                let mut list = TopicPartitionList::new();
                for partition in partitions {
                    let (_, high) = inner.meta.fetch_watermarks(&name, partition, METADATA_TIMEOUT)?;
                    list.add_partition_offset(&name, partition, Offset::Offset(high))?;
                }
                reader.assign(&list)?;
                Ok(reader)
            })
            .await?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, BusError>>(1024);
        let brokers = self.inner.settings.brokers.clone();
        std::thread::Builder::new()
            .name("vera-kafka-subscriber".to_owned())
            .spawn(move || {
                while !sender.is_closed() {
                    let next = match reader.poll(Duration::from_millis(200)) {
                        None => continue,
                        Some(Ok(message)) => Ok(Bytes::copy_from_slice(message.payload().unwrap_or_default())),
                        Some(Err(error)) => Err(kafka_error("read a subscription", &brokers, error)),
                    };
                    if sender.blocking_send(next).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| {
                BusError::new(BusErrorKind::Other, "kafka: cannot start a subscriber thread").with_source(e)
            })?;
        Ok(Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|next| (next, receiver))
        })))
    }

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError> {
        validate_topic(topic)?;
        self.require_topic(topic).await?;
        let (name, dead_name) = (self.name(topic), self.dead_name(topic));
        let (lag, dead) = self
            .blocking(&format!("read depth of {name}"), move |inner| {
                let metadata = inner.meta.fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
                let mut list = TopicPartitionList::new();
                let mut watermarks = HashMap::new();
                for t in metadata.topics() {
                    for p in t.partitions() {
                        list.add_partition(&name, p.id());
                        watermarks.insert(p.id(), inner.meta.fetch_watermarks(&name, p.id(), METADATA_TIMEOUT)?);
                    }
                }
                let committed = inner.meta.committed_offsets(list, METADATA_TIMEOUT)?;
                let mut lag = 0i64;
                for element in committed.elements() {
                    let (low, high) = watermarks.get(&element.partition()).copied().unwrap_or((0, 0));
                    let position = match element.offset() {
                        Offset::Offset(o) => o.max(low),
                        _ => low,
                    };
                    lag += (high - position).max(0);
                }
                let dead_metadata = inner.meta.fetch_metadata(Some(&dead_name), METADATA_TIMEOUT)?;
                let mut dead = 0i64;
                for t in dead_metadata.topics() {
                    for p in t.partitions() {
                        let (low, high) = inner.meta.fetch_watermarks(&dead_name, p.id(), METADATA_TIMEOUT)?;
                        dead += (high - low).max(0);
                    }
                }
                Ok((lag.max(0) as u64, dead.max(0) as u64))
            })
            .await?;
        let in_flight = match self.existing_consumer(topic).await {
            Some(consumer) => {
                let state = consumer.state.lock().expect("state lock");
                let now = now_millis();
                (state.claims.len() + state.buffer.iter().filter(|r| r.not_before > now).count()) as u64
            }
            None => 0,
        };
        // Re-published retries leave their original uncommitted until settled; count the
        // backlog once.
        Ok(QueueDepth { visible: lag.saturating_sub(in_flight), in_flight, dead })
    }

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        let dead_name = self.dead_name(topic);
        let partitions = self.partitions(&dead_name).await?;
        let settings = self.inner.settings.clone();
        self.blocking(&format!("read {dead_name}"), move |inner| {
            // A reader outside the group, from the beginning of every partition.
            let reader = group_free_reader(&settings, "dlq-reader")?;
            let mut list = TopicPartitionList::new();
            let mut remaining = 0i64;
            for p in &partitions {
                let (low, high) = inner.meta.fetch_watermarks(&dead_name, *p, METADATA_TIMEOUT)?;
                remaining += (high - low).max(0);
                list.add_partition_offset(&dead_name, *p, Offset::Offset(low))?;
            }
            reader.assign(&list)?;
            let mut out = Vec::new();
            let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
            while out.len() < max && remaining > 0 && std::time::Instant::now() < deadline {
                if let Some(result) = reader.poll(Duration::from_millis(100)) {
                    let r = received(&result?);
                    remaining -= 1;
                    out.push(DeadLetter {
                        message_id: r.id,
                        key: r.key,
                        payload: r.payload,
                        attempts: r.attempt,
                        reason: r.reason.unwrap_or_else(|| "dead-lettered".to_owned()),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        topics.iter().try_for_each(|topic| validate_topic(topic))?;
        let settings = &self.inner.settings;
        let max_bytes = (settings.max_message_bytes + 64 * 1024).to_string();
        let names: Vec<String> = topics.iter().flat_map(|t| [self.name(t), self.dead_name(t)]).collect();
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(name, settings.partitions, TopicReplication::Fixed(settings.replication))
                    .set("max.message.bytes", &max_bytes)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .inner
            .admin
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(|e| kafka_error("create topics", &settings.brokers, e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::new(
                        BusErrorKind::Config,
                        format!("kafka {}: cannot create topic `{name}`: {code}", settings.brokers),
                    ));
                }
            }
        }
        // Metadata can lag behind creation: wait until every topic is visible.
        for name in &names {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.partitions(name).await.is_err() {
                if Instant::now() > deadline {
                    return Err(BusError::new(
                        BusErrorKind::Transient,
                        format!("kafka: topic `{name}` did not appear"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Stops each consumer's poll thread and closes the consumer, which leaves the group:
    /// its partitions go to the other members at once. Without this, a process that
    /// exits stays a member until `session.timeout.ms` (10 s) passes, and the members
    /// that remain (or a worker started next) wait that long for the partitions.
    async fn close(&self) -> Result<(), BusError> {
        let consumers: Vec<Arc<TopicConsumer>> =
            self.inner.consumers.lock().await.drain().map(|(_, consumer)| consumer).collect();
        for consumer in consumers {
            consumer.stop.store(true, Ordering::SeqCst);
            let poller = consumer.poller.lock().expect("poller lock").take();
            let topic = consumer.topic.clone();
            // Joining the poll thread and dropping the consumer (rdkafka's close: leave
            // the group, wait until closed) both block; bounded, as a broker that has gone
            // must not keep the process from exiting.
            let close = tokio::task::spawn_blocking(move || {
                if let Some(poller) = poller {
                    let _ = poller.join();
                }
                drop(consumer);
            });
            if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
                tracing::warn!(%topic, "kafka: the consumer did not close within {CLOSE_TIMEOUT:?}; the group drops it after its session timeout");
            }
        }
        Ok(())
    }

    fn max_message_bytes(&self) -> usize {
        self.inner.settings.max_message_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_advance_only_past_settled_offsets() {
        let mut state = ConsumerState::default();
        state.outstanding.insert(0, [5, 6, 7].into_iter().collect());
        state.high.insert(0, 8);
        assert_eq!(state.settle(0, 6), Some(5), "5 is still open: commit stays at 5");
        state.committed.insert(0, 5);
        assert_eq!(state.settle(0, 6), None);
        assert_eq!(state.settle(0, 5), Some(7));
        state.committed.insert(0, 7);
        assert_eq!(state.settle(0, 7), Some(8), "all settled: commit past the last one");
        assert_eq!(state.settle(1, 0), None, "unknown partition");
    }

    #[test]
    fn delivery_counts_round_trip_through_commit_metadata() {
        let counts: HashMap<i64, u32> = [(7, 2), (9, 1), (3, 5)].into_iter().collect();
        let text = format_delivered(&counts, 5);
        assert_eq!(text, "vera-delivered:7=2,9=1", "offsets below the commit point are dropped");
        assert_eq!(parse_delivered(&text), [(7, 2), (9, 1)].into_iter().collect());
        assert!(parse_delivered("").is_empty());
        assert!(parse_delivered("someone else's metadata").is_empty());
    }

    #[test]
    fn revoked_partitions_forget_their_claims() {
        let mut state = ConsumerState::default();
        let r = |partition| Received {
            partition,
            offset: 0,
            key: None,
            payload: Bytes::new(),
            id: String::new(),
            attempt: 1,
            not_before: 0,
            reason: None,
        };
        state.claims.insert("a".into(), Claim { received: r(0), deadline: Instant::now() });
        state.claims.insert("b".into(), Claim { received: r(1), deadline: Instant::now() });
        state.buffer.push_back(r(0));
        state.revoke(&[0].into_iter().collect());
        assert!(!state.claims.contains_key("a"));
        assert!(state.claims.contains_key("b"));
        assert!(state.buffer.is_empty());
    }
}
