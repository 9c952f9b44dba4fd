//! RabbitMQ backend for VERA's [`Bus`], on lapin (AMQP 0-9-1).
//!
//! Layout on the broker, for a topic `t` and the default prefix `vera.`:
//!
//! - `vera.t`: a durable **quorum queue**. Its `x-delivery-limit` is `max_attempts - 1`,
//!   so the broker itself counts deliveries (the `x-delivery-count` header) and, past the
//!   limit, dead-letters the message through the exchange `vera.dlx` with routing key
//!   `vera.t`. Ordered topics (see [`OrderedTopics`]) also get `x-single-active-consumer`,
//!   so one consumer at a time sees the queue in order.
//! - `vera.t.dlq`: the durable quorum queue bound to `vera.dlx` that holds dead letters.
//!
//! Publishing waits for **publisher confirms** and marks messages persistent and
//! `mandatory`, so a message to a missing queue comes back as an error instead of being
//! dropped. Consuming uses `basic.consume` with **manual ack** and a **prefetch** limit.
//!
//! AMQP has no visibility timeout: an unacknowledged message stays with its consumer until
//! the channel closes. The bus adds one on the client: a claim carries a deadline, and a
//! sweeper returns (`basic.nack` with requeue) every claim whose deadline has passed, which
//! the broker counts as a delivery. If the process dies, the broker requeues everything it
//! held. If the connection drops, the next call reconnects; claims made on the old
//! connection become stale receipts, because the broker has already requeued them.
//!
//! `depth()` reads ready and dead counts from the broker (`queue.declare` passive); the
//! `in_flight` figure is this process's own claims, since AMQP does not report unacked
//! counts without the management plugin.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;
use tokio::time::Instant;
use vera_bus::{
    Bus, BusError, BusErrorKind, DeadLetter, Delivery, OrderedTopics, Outgoing, QueueDepth, check_message_sizes,
    redact_url, validate_topic,
};

/// RabbitMQ's own default `max_message_size` is 128 MiB; VERA's messages are small, and a
/// lower limit keeps a runaway producer from filling the broker's memory.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Default [`AmqpSettings::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

const KEY_HEADER: &str = "x-vera-key";
const REASON_HEADER: &str = "x-vera-reason";
const ATTEMPTS_HEADER: &str = "x-vera-attempts";

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`).
    pub uri: String,
    /// Prepended to topic names to form queue and exchange names.
    pub prefix: String,
    /// Deliveries before the broker dead-letters a message (at least 1).
    pub max_attempts: u32,
    /// Unacknowledged deliveries the broker sends ahead, per topic.
    pub prefetch: u16,
    pub ordered: OrderedTopics,
    pub max_message_bytes: usize,
    /// How long an empty `claim` waits for a message before returning nothing.
    pub claim_wait: Duration,
    /// The longest any one bus call (connect, publish with its confirms, ack, a declare)
    /// may take. A broker that stops answering mid-call would otherwise stall the worker
    /// until the heartbeat gives up; past this bound the call fails as transient, the
    /// connection is dropped, and the next call reconnects.
    pub operation_timeout: Duration,
}

impl AmqpSettings {
    pub fn new(uri: impl Into<String>) -> Self {
        AmqpSettings {
            uri: uri.into(),
            prefix: "vera.".to_owned(),
            max_attempts: 5,
            prefetch: 4,
            ordered: OrderedTopics::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            claim_wait: Duration::from_millis(200),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AmqpSettings,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    generation: AtomicU64,
    claims: Mutex<HashMap<String, Claim>>,
    /// Messages handed back with a delay, still unacked on the broker, per topic.
    delayed: Mutex<HashMap<String, u64>>,
    ensured: Mutex<Vec<String>>,
}

struct Session {
    generation: u64,
    connection: Connection,
    publisher: Channel,
    consumers: tokio::sync::Mutex<HashMap<String, Arc<TopicConsumer>>>,
    /// Topics whose queue was seen to exist on this connection.
    checked: Mutex<HashSet<String>>,
}

struct TopicConsumer {
    _channel: Channel,
    buffer: Arc<Mutex<VecDeque<lapin::message::Delivery>>>,
    arrived: Arc<Notify>,
}

struct Claim {
    topic: String,
    key: Option<String>,
    deadline: Instant,
    acker: Acker,
    generation: u64,
    message_id: String,
    payload: Bytes,
    attempt: u32,
}

fn lapin_error(context: &str, uri: &str, error: lapin::Error) -> BusError {
    use lapin::ErrorKind as K;
    let text = error.to_string();
    let (kind, hint) = match error.kind() {
        K::IOError(_) | K::MissingHeartbeatError | K::InvalidConnectionState(_) | K::InvalidChannelState(..) => {
            (BusErrorKind::Transient, "is RabbitMQ running and reachable at that address?")
        }
        K::ProtocolError(amqp) => {
            let code = amqp.get_id();
            match code {
                403 => (BusErrorKind::Config, "the broker refused the credentials or the vhost permissions"),
                404 => (BusErrorKind::Config, "the queue or exchange does not exist; run `vera setup-bus`"),
                406 => (
                    BusErrorKind::Config,
                    "a queue exists with other arguments than VERA declares (type, delivery limit, dead-letter exchange)",
                ),
                320 | 541 => (BusErrorKind::Transient, "the broker closed the connection"),
                _ => (BusErrorKind::Other, "the broker refused the operation"),
            }
        }
        _ if text.contains("ACCESS_REFUSED") || text.to_lowercase().contains("auth") => {
            (BusErrorKind::Config, "the broker refused the credentials")
        }
        _ => (BusErrorKind::Other, "unexpected AMQP error"),
    };
    BusError::new(kind, format!("rabbitmq {}: {context} failed: {hint}", redact_url(uri))).with_source(error)
}

fn field_str(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

fn field_u64(table: Option<&FieldTable>, name: &str) -> Option<u64> {
    match table?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).parse().ok(),
        _ => None,
    }
}

/// The `reason` of the newest `x-death` entry: why the broker dead-lettered the message.
fn death_reason(table: Option<&FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = table?.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    field_str(Some(first), "reason")
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

impl AmqpBus {
    /// Connects (and checks the connection works). Queues are not created here; see
    /// [`Bus::ensure_topics`].
    pub async fn connect(settings: AmqpSettings) -> Result<Self, BusError> {
        if settings.max_attempts == 0 {
            return Err(BusError::new(BusErrorKind::Config, "rabbitmq: max_attempts must be at least 1"));
        }
        if settings.prefetch == 0 {
            return Err(BusError::new(BusErrorKind::Config, "rabbitmq: prefetch must be at least 1"));
        }
        if settings.operation_timeout.is_zero() {
            return Err(BusError::new(BusErrorKind::Config, "rabbitmq: operation_timeout must be above zero"));
        }
        let inner = Arc::new(Inner {
            settings,
            session: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            claims: Mutex::new(HashMap::new()),
            delayed: Mutex::new(HashMap::new()),
            ensured: Mutex::new(Vec::new()),
        });
        match tokio::time::timeout(inner.settings.operation_timeout, inner.session()).await {
            Ok(session) => session?,
            Err(_) => return Err(inner.timed_out("connect")),
        };
        tokio::spawn(sweeper(Arc::downgrade(&inner)));
        Ok(AmqpBus { inner })
    }

    /// Deletes the queues behind `topics` and their dead-letter queues, messages and all.
    /// For teardown of test or staging environments; never called in normal operation.
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        self.bounded("delete queues", self.delete_topics_now(topics)).await
    }

    async fn delete_topics_now(&self, topics: &[&str]) -> Result<(), BusError> {
        let session = self.inner.session().await?;
        let channel = session.connection.create_channel().await.map_err(self.error("open teardown channel"))?;
        for topic in topics {
            for queue in [self.queue(topic), self.dead_queue(topic)] {
                channel
                    .queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default())
                    .await
                    .map_err(self.error(&format!("delete queue {queue}")))?;
            }
        }
        let _ = channel.close(200, "done".into()).await;
        self.inner.ensured.lock().expect("ensured lock").retain(|t| !topics.contains(&t.as_str()));
        Ok(())
    }

    /// Topics this bus created or checked with `ensure_topics`, oldest first.
    pub fn ensured_topics(&self) -> Vec<String> {
        self.inner.ensured.lock().expect("ensured lock").clone()
    }

    /// Closes the current connection as a network failure would; the next call
    /// reconnects. For tests of the reconnect path.
    #[doc(hidden)]
    pub async fn drop_connection(&self) {
        if let Some(session) = self.inner.session.lock().await.as_ref() {
            // The broker's close-ok once never came (CI, 2026-11-26: the test hung, and
            // `rabbitmqctl list_connections` with it). The connection is closing either
            // way, so the next call reconnects; waiting longer proves nothing.
            let close = session.connection.close(320, "vera test: simulated connection loss".into());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
        }
    }

    fn queue(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.settings.prefix)
    }

    fn dead_queue(&self, topic: &str) -> String {
        format!("{}{topic}.dlq", self.inner.settings.prefix)
    }

    /// The fanout exchange a fan-out topic is published through: bound to the topic's
    /// queue, and to each subscriber's own exclusive queue.
    fn fanout_exchange(&self, topic: &str) -> String {
        format!("{}{topic}.fanout", self.inner.settings.prefix)
    }

    fn dlx(&self) -> String {
        format!("{}dlx", self.inner.settings.prefix)
    }

    /// Runs one bus call under [`AmqpSettings::operation_timeout`]. Past it, the call
    /// fails as transient and the connection is dropped, so the next call reconnects
    /// instead of waiting on a broker that stopped answering.
    async fn bounded<T>(&self, what: &str, call: impl Future<Output = Result<T, BusError>>) -> Result<T, BusError> {
        // Bound first, so the timed-out call (and any lock it held) is gone before the
        // session is dropped.
        let outcome = tokio::time::timeout(self.inner.settings.operation_timeout, call).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.inner.abandon_session().await;
                Err(self.inner.timed_out(what))
            }
        }
    }

    fn error(&self, context: &str) -> impl Fn(lapin::Error) -> BusError + '_ {
        let context = context.to_owned();
        move |error| lapin_error(&context, &self.inner.settings.uri, error)
    }

    /// Runs `f` on a fresh channel that is closed afterwards: passive declares that fail
    /// close their channel, so they must not run on a shared one.
    async fn on_scratch_channel<T>(
        &self,
        context: &str,
        f: impl AsyncFnOnce(&Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, BusError> {
        let session = self.inner.session().await?;
        let channel = session.connection.create_channel().await.map_err(self.error(context))?;
        let result = f(&channel).await.map_err(self.error(context));
        let _ = channel.close(200, "done".into()).await;
        result
    }

    /// Ready messages in `queue`, or a Config error naming the command when it is missing.
    async fn ready_count(&self, queue: &str) -> Result<u64, BusError> {
        let name = queue.to_owned();
        let declared = self
            .on_scratch_channel(&format!("check queue {queue}"), async move |channel| {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions::durable().passive(),
                        FieldTable::default(),
                    )
                    .await
            })
            .await?;
        Ok(u64::from(declared.message_count()))
    }

    async fn require_queue(&self, session: &Session, topic: &str) -> Result<(), BusError> {
        if session.checked.lock().expect("checked lock").contains(topic) {
            return Ok(());
        }
        let queue = self.queue(topic);
        let exchange = vera_bus::topics::fans_out(topic).then(|| self.fanout_exchange(topic));
        let checked = match exchange {
            Some(exchange) => self
                .on_scratch_channel(&format!("check exchange {exchange}"), async move |channel| {
                    let options = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
                    channel
                        .exchange_declare(
                            exchange.as_str().into(),
                            ExchangeKind::Fanout,
                            options,
                            FieldTable::default(),
                        )
                        .await
                })
                .await
                .map(|_| 0),
            None => Ok(0),
        };
        checked.and(self.ready_count(&queue).await).map_err(|error| {
            if error.kind == BusErrorKind::Config {
                BusError::new(
                    BusErrorKind::Config,
                    format!("rabbitmq: queue `{queue}` for topic `{topic}` is missing or misconfigured; run `vera setup-bus` ({error})"),
                )
            } else {
                error
            }
        })?;
        session.checked.lock().expect("checked lock").insert(topic.to_owned());
        Ok(())
    }

    async fn consumer(&self, session: &Session, topic: &str) -> Result<Arc<TopicConsumer>, BusError> {
        let mut consumers = session.consumers.lock().await;
        if let Some(consumer) = consumers.get(topic) {
            return Ok(consumer.clone());
        }
        self.require_queue(session, topic).await?;
        let context = format!("consume {}", self.queue(topic));
        let channel = session.connection.create_channel().await.map_err(self.error(&context))?;
        channel
            .basic_qos(self.inner.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(self.error(&context))?;
        let mut stream = channel
            .basic_consume(
                self.queue(topic).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(self.error(&context))?;
        let buffer = Arc::new(Mutex::new(VecDeque::new()));
        let arrived = Arc::new(Notify::new());
        let (task_buffer, task_arrived) = (buffer.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = stream.next().await {
                task_buffer.lock().expect("buffer lock").push_back(delivery);
                task_arrived.notify_waiters();
            }
            // Consumer cancelled or channel closed: the broker requeues what it held.
        });
        let consumer = Arc::new(TopicConsumer { _channel: channel, buffer, arrived });
        consumers.insert(topic.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// Takes up to `max` buffered deliveries, at most one per key in flight on ordered topics.
    fn take_claims(
        &self,
        generation: u64,
        topic: &str,
        consumer: &TopicConsumer,
        max: usize,
        visibility: Duration,
    ) -> Vec<Delivery> {
        let ordered = self.inner.settings.ordered.contains(topic);
        let mut claims = self.inner.claims.lock().expect("claims lock");
        let mut busy: HashSet<String> = if ordered {
            claims.values().filter(|c| c.topic == topic).filter_map(|c| c.key.clone()).collect()
        } else {
            HashSet::new()
        };
        let mut buffer = consumer.buffer.lock().expect("buffer lock");
        let mut out = Vec::new();
        let mut index = 0;
        while out.len() < max && index < buffer.len() {
            let headers = buffer[index].properties.headers().as_ref();
            let key = field_str(headers, KEY_HEADER);
            if let Some(key) = &key
                && ordered
                && busy.contains(key)
            {
                index += 1;
                continue;
            }
            let delivery = buffer.remove(index).expect("index is in range");
            let headers = delivery.properties.headers().as_ref();
            let attempt = field_u64(headers, "x-delivery-count").unwrap_or(0).saturating_add(1);
            let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_else(|| format!("tag-{}", delivery.delivery_tag));
            let receipt = format!("{generation}.{}.{:016x}", delivery.delivery_tag, rand::random::<u64>());
            let payload = Bytes::from(delivery.data);
            if let Some(key) = &key
                && ordered
            {
                busy.insert(key.clone());
            }
            claims.insert(
                receipt.clone(),
                Claim {
                    topic: topic.to_owned(),
                    key: key.clone(),
                    deadline: Instant::now() + visibility,
                    acker: delivery.acker,
                    generation,
                    message_id: message_id.clone(),
                    payload: payload.clone(),
                    attempt,
                },
            );
            out.push(Delivery { topic: topic.to_owned(), message_id, receipt, key, payload, attempt });
        }
        out
    }

    fn take_claim(&self, delivery: &Delivery, what: &str) -> Result<Claim, BusError> {
        let claim = self.inner.claims.lock().expect("claims lock").remove(&delivery.receipt);
        let current = self.inner.generation.load(Ordering::SeqCst);
        match claim {
            Some(claim) if claim.generation == current && claim.acker.usable() => Ok(claim),
            _ => Err(BusError::new(
                BusErrorKind::StaleReceipt,
                format!(
                    "rabbitmq: {what}: receipt is no longer current (expired, already settled, or the connection was lost)"
                ),
            )),
        }
    }
}

impl Inner {
    fn timed_out(&self, what: &str) -> BusError {
        BusError::new(
            BusErrorKind::Transient,
            format!(
                "rabbitmq {}: {what} did not complete within {:?}; the broker stopped answering, so the connection was dropped and the next call reconnects",
                redact_url(&self.settings.uri),
                self.settings.operation_timeout
            ),
        )
    }

    /// Drops the current connection after a call on it timed out. Its claims are
    /// forgotten (the broker requeues them when the connection goes); the close itself
    /// is not waited for, since the broker is not answering.
    async fn abandon_session(&self) {
        let Some(session) = self.session.lock().await.take() else { return };
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.claims.lock().expect("claims lock").retain(|_, claim| claim.generation != session.generation);
        tracing::warn!(uri = %redact_url(&self.settings.uri), "rabbitmq call timed out; dropping the connection");
        let limit = self.settings.operation_timeout;
        tokio::spawn(async move {
            let close = session.connection.close(320, "vera: broker stopped answering".into());
            let _ = tokio::time::timeout(limit, close).await;
        });
    }

    fn count_delayed(&self, topic: &str, delta: i64) {
        let mut delayed = self.delayed.lock().expect("delayed lock");
        let entry = delayed.entry(topic.to_owned()).or_default();
        *entry = entry.saturating_add_signed(delta);
    }

    /// The live session, reconnecting if the connection was lost.
    async fn session(&self) -> Result<Arc<Session>, BusError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref()
            && session.connection.status().connected()
            && session.publisher.status().connected()
        {
            return Ok(session.clone());
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if slot.take().is_some() {
            tracing::warn!(uri = %redact_url(&self.settings.uri), "rabbitmq connection lost; reconnecting");
            // Claims on the old connection were requeued by the broker.
            self.claims.lock().expect("claims lock").retain(|_, claim| claim.generation == generation);
        }
        let uri = &self.settings.uri;
        let properties = ConnectionProperties::default().with_connection_name("vera".into());
        let connection = Connection::connect(uri, properties).await.map_err(|e| lapin_error("connect", uri, e))?;
        let publisher = connection.create_channel().await.map_err(|e| lapin_error("open channel", uri, e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_error("enable publisher confirms", uri, e))?;
        let session = Arc::new(Session {
            generation,
            connection,
            publisher,
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            checked: Mutex::new(HashSet::new()),
        });
        *slot = Some(session.clone());
        Ok(session)
    }
}

/// Returns claims whose visibility deadline passed, as SQS would make them visible again.
async fn sweeper(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Claim> = {
            let mut claims = inner.claims.lock().expect("claims lock");
            let keys: Vec<String> = claims.iter().filter(|(_, c)| c.deadline <= now).map(|(k, _)| k.clone()).collect();
            keys.into_iter().filter_map(|k| claims.remove(&k)).collect()
        };
        for claim in expired {
            tracing::debug!(topic = %claim.topic, message_id = %claim.message_id, "visibility timeout passed; requeueing");
            // Bounded, so one stalled nack cannot stop the sweeps; an unanswered nack is
            // settled by the broker requeueing everything when the connection goes.
            let nack = claim.acker.nack(BasicNackOptions { multiple: false, requeue: true });
            let _ = tokio::time::timeout(inner.settings.operation_timeout, nack).await;
        }
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn publish(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), BusError> {
        self.bounded("publish", async {
            validate_topic(topic)?;
            check_message_sizes("rabbitmq", &messages, self.inner.settings.max_message_bytes)?;
            if messages.is_empty() {
                return Ok(());
            }
            let session = self.inner.session().await?;
            self.require_queue(&session, topic).await?;
            let queue = self.queue(topic);
            let context = format!("publish to {queue}");
            // Fan-out topics go through their fanout exchange (to the queue and to every
            // subscriber); the rest straight to the queue.
            let (exchange, routing_key) = if vera_bus::topics::fans_out(topic) {
                (self.fanout_exchange(topic), String::new())
            } else {
                (String::new(), queue.clone())
            };
            let mut confirms = Vec::with_capacity(messages.len());
            for message in &messages {
                let mut headers = FieldTable::default();
                if let Some(key) = &message.key {
                    headers.insert(KEY_HEADER.into(), long(key));
                }
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(format!("{:032x}", rand::random::<u128>())))
                    .with_headers(headers);
                let confirm = session
                    .publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                        &message.payload,
                        properties,
                    )
                    .await
                    .map_err(self.error(&context))?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = confirm.await.map_err(self.error(&context))?;
                if confirmation.is_nack() {
                    return Err(BusError::new(
                        BusErrorKind::Transient,
                        format!("rabbitmq: the broker refused (nacked) a message for {queue}; retry"),
                    ));
                }
                if confirmation.take_message().is_some() {
                    return Err(BusError::new(
                        BusErrorKind::Config,
                        format!("rabbitmq: no queue took a message for `{queue}`; run `vera setup-bus`"),
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    async fn claim(&self, topic: &str, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError> {
        self.bounded("claim", async {
            validate_topic(topic)?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let session = self.inner.session().await?;
            let consumer = self.consumer(&session, topic).await?;
            let claims = self.take_claims(session.generation, topic, &consumer, max, visibility);
            if !claims.is_empty() {
                return Ok(claims);
            }
            let _ = tokio::time::timeout(self.inner.settings.claim_wait, consumer.arrived.notified()).await;
            Ok(self.take_claims(session.generation, topic, &consumer, max, visibility))
        })
        .await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.bounded("ack", async {
            let claim = self.take_claim(delivery, "ack")?;
            let stale = || {
                BusError::new(
                    BusErrorKind::StaleReceipt,
                    "rabbitmq: ack failed because the channel closed; the broker will redeliver the message",
                )
            };
            match claim.acker.ack(BasicAckOptions::default()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(stale()),
                Err(error) => Err(stale().with_source(error)),
            }
        })
        .await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        self.bounded("nack", async {
            let claim = self.take_claim(delivery, "nack")?;
            if delay.is_zero() {
                claim
                    .acker
                    .nack(BasicNackOptions { multiple: false, requeue: true })
                    .await
                    .map_err(self.error("nack"))?;
                return Ok(());
            }
            // AMQP cannot requeue with a delay: keep the message unacked until the delay is
            // over. If this process dies first, the broker requeues it at once.
            self.inner.count_delayed(&claim.topic, 1);
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = claim.acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                if let Some(inner) = inner.upgrade() {
                    inner.count_delayed(&claim.topic, -1);
                }
            });
            Ok(())
        })
        .await
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError> {
        let mut claims = self.inner.claims.lock().expect("claims lock");
        let current = self.inner.generation.load(Ordering::SeqCst);
        match claims.get_mut(&delivery.receipt) {
            Some(claim) if claim.generation == current => {
                claim.deadline = Instant::now() + visibility;
                Ok(())
            }
            _ => Err(BusError::new(BusErrorKind::StaleReceipt, "rabbitmq: extend: receipt is no longer current")),
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        self.bounded("dead-letter", async {
            let claim = self.take_claim(delivery, "dead-letter")?;
            let session = self.inner.session().await?;
            let dead_queue = self.dead_queue(&claim.topic);
            let mut headers = FieldTable::default();
            headers.insert(REASON_HEADER.into(), long(reason));
            headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(i64::from(claim.attempt)));
            if let Some(key) = &claim.key {
                headers.insert(KEY_HEADER.into(), long(key));
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(claim.message_id.clone()))
                .with_headers(headers);
            let context = format!("dead-letter to {dead_queue}");
            let confirmation = session
                .publisher
                .basic_publish(
                    "".into(),
                    dead_queue.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    &claim.payload,
                    properties,
                )
                .await
                .map_err(self.error(&context))?
                .await
                .map_err(self.error(&context))?;
            if confirmation.is_nack() || confirmation.take_message().is_some() {
                // Not stored in the DLQ: give the message back so nothing is lost.
                let _ = claim.acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                return Err(BusError::new(
                    BusErrorKind::Config,
                    format!(
                        "rabbitmq: dead-letter queue `{dead_queue}` did not take the message; run `vera setup-bus`"
                    ),
                ));
            }
            // Stored in the DLQ first, removed from the queue second: a crash between the two
            // leaves a copy in both, never in neither.
            claim.acker.ack(BasicAckOptions::default()).await.map_err(self.error("ack dead-lettered message"))?;
            Ok(())
        })
        .await
    }

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError> {
        self.bounded("read depth", async {
            validate_topic(topic)?;
            let visible = self.ready_count(&self.queue(topic)).await?;
            let dead = self.ready_count(&self.dead_queue(topic)).await?;
            let claimed = self.inner.claims.lock().expect("claims lock").values().filter(|c| c.topic == topic).count();
            let delayed = self.inner.delayed.lock().expect("delayed lock").get(topic).copied().unwrap_or(0);
            Ok(QueueDepth { visible, in_flight: claimed as u64 + delayed, dead })
        })
        .await
    }

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.bounded("read dead letters", async {
            validate_topic(topic)?;
            let dead_queue = self.dead_queue(topic);
            let max_attempts = self.inner.settings.max_attempts;
            // Read without acking; closing the scratch channel puts every message back.
            let queue = dead_queue.clone();
            let peeked = self
                .on_scratch_channel(&format!("read {dead_queue}"), async move |channel| {
                    let mut out = Vec::new();
                    while out.len() < max {
                        let Some(message) =
                            channel.basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: false }).await?
                        else {
                            break;
                        };
                        let delivery = message.delivery;
                        let headers = delivery.properties.headers().as_ref();
                        let (reason, attempts) = match field_str(headers, REASON_HEADER) {
                            Some(reason) => (reason, field_u64(headers, ATTEMPTS_HEADER).unwrap_or(0)),
                            None => {
                                let why =
                                    death_reason(headers).unwrap_or_else(|| "dead-lettered by the broker".to_owned());
                                (
                                    format!("{why}: delivered {max_attempts} times without success"),
                                    u64::from(max_attempts),
                                )
                            }
                        };
                        out.push(DeadLetter {
                            message_id: delivery
                                .properties
                                .message_id()
                                .as_ref()
                                .map(|id| id.as_str().to_owned())
                                .unwrap_or_default(),
                            key: field_str(headers, KEY_HEADER),
                            payload: Bytes::from(delivery.data),
                            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                            reason,
                        });
                    }
                    Ok(out)
                })
                .await?;
            // The broker requeues them after the channel's close completes; wait (briefly)
            // until they count as ready again, so a depth read right after sees them.
            for _ in 0..100 {
                if self.ready_count(&queue).await? >= peeked.len() as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(peeked)
        })
        .await
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        self.bounded("set up queues", async {
            topics.iter().try_for_each(|topic| validate_topic(topic))?;
            let session = self.inner.session().await?;
            let channel = session.connection.create_channel().await.map_err(self.error("open setup channel"))?;
            let dlx = self.dlx();
            channel
                .exchange_declare(
                    dlx.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(self.error(&format!("declare exchange {dlx}")))?;
            for topic in topics {
                let queue = self.queue(topic);
                let dead_queue = self.dead_queue(topic);
                let mut quorum = FieldTable::default();
                quorum.insert("x-queue-type".into(), long("quorum"));
                channel
                    .queue_declare(dead_queue.as_str().into(), QueueDeclareOptions::durable(), quorum.clone())
                    .await
                    .map_err(self.error(&format!("declare queue {dead_queue}")))?;
                channel
                    .queue_bind(
                        dead_queue.as_str().into(),
                        dlx.as_str().into(),
                        queue.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(self.error(&format!("bind {dead_queue}")))?;
                let mut arguments = quorum;
                let limit = i64::from(self.inner.settings.max_attempts - 1);
                arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
                arguments.insert("x-dead-letter-exchange".into(), long(&dlx));
                arguments.insert("x-dead-letter-routing-key".into(), long(&queue));
                if self.inner.settings.ordered.contains(topic) {
                    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                }
                channel
                    .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), arguments)
                    .await
                    .map_err(self.error(&format!("declare queue {queue}")))?;
                if vera_bus::topics::fans_out(topic) {
                    let exchange = self.fanout_exchange(topic);
                    channel
                        .exchange_declare(
                            exchange.as_str().into(),
                            ExchangeKind::Fanout,
                            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                            FieldTable::default(),
                        )
                        .await
                        .map_err(self.error(&format!("declare exchange {exchange}")))?;
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            exchange.as_str().into(),
                            "".into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(self.error(&format!("bind {queue} to {exchange}")))?;
                }
                let mut ensured = self.inner.ensured.lock().expect("ensured lock");
                if !ensured.iter().any(|t| t == topic) {
                    ensured.push((*topic).to_owned());
                }
            }
            let _ = channel.close(200, "done".into()).await;
            Ok(())
        })
        .await
    }

    fn max_message_bytes(&self) -> usize {
        self.inner.settings.max_message_bytes
    }

    fn fans_out(&self) -> bool {
        true
    }

    /// An exclusive, auto-deleted, server-named queue bound to the topic's fanout
    /// exchange, consumed without acks on its own channel; the broker drops the queue when
    /// the stream (or the connection) goes.
    async fn subscribe(&self, topic: &str) -> Result<vera_bus::Subscription, BusError> {
        self.bounded("subscribe", async {
            vera_bus::check_broadcast_topic(topic)?;
            let session = self.inner.session().await?;
            self.require_queue(&session, topic).await?;
            let exchange = self.fanout_exchange(topic);
            let context = format!("subscribe to {exchange}");
            let channel = session.connection.create_channel().await.map_err(self.error(&context))?;
            let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
            let queue =
                channel.queue_declare("".into(), options, FieldTable::default()).await.map_err(self.error(&context))?;
            channel
                .queue_bind(
                    queue.name().as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(self.error(&context))?;
            let consumer = channel
                .basic_consume(
                    queue.name().as_str().into(),
                    "".into(),
                    BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(self.error(&context))?;
            let uri = self.inner.settings.uri.clone();
            // The channel lives as long as the stream.
            Ok::<vera_bus::Subscription, BusError>(Box::pin(futures::stream::unfold(
                (consumer, channel),
                move |(mut consumer, channel)| {
                    let uri = uri.clone();
                    async move {
                        let next = consumer.next().await?;
                        let item = next
                            .map(|delivery| Bytes::from(delivery.data))
                            .map_err(|error| lapin_error("read a subscription", &uri, error));
                        Some((item, (consumer, channel)))
                    }
                },
            )))
        })
        .await
    }
}
