//! Amazon SQS backend for VERA's [`Bus`], on aws-sdk-sqs.
//!
//! Queues, for a topic `t` and the default prefix `vera-`:
//!
//! - unordered topics (`pack`, `audit`): a standard queue `vera-t`, with a redrive policy
//!   (`maxReceiveCount = max_attempts`) to the standard queue `vera-t-dlq`;
//! - ordered topics (`events`, see [`OrderedTopics`]): a FIFO queue `vera-t.fifo` whose
//!   message group is the ordering key (the shard address), so SQS delivers one message
//!   per group at a time, in order; its dead-letter queue is `vera-t-dlq.fifo`. The
//!   deduplication id is the BLAKE3 of the payload, so a publish retried within SQS's
//!   five-minute window is stored once.
//!
//! Standard queues deliver at least once: SQS may, rarely, hand one message to two
//! consumers at once (moto's receive is not atomic either, and did so under load in CI).
//! A pack task done twice finds its files stored the second time, so nothing is written
//! twice; the conformance suite runs this backend with `Claims::AtLeastOnce`.
//!
//! SQS itself counts receives (`ApproximateReceiveCount` is the attempt number) and moves a
//! message to the DLQ on the receive after the last allowed one. `claim` long-polls,
//! `publish` uses `SendMessageBatch`, `ack` uses `DeleteMessage` (`ack_batch`
//! `DeleteMessageBatch`), `extend` and `nack` use
//! `ChangeMessageVisibility`. SQS visibility timeouts are whole seconds: shorter ones are
//! rounded up.
//!
//! Bodies are text in SQS. A payload that is valid SQS text (VERA's JSON envelopes are) is
//! sent as is; any other payload is base64 encoded and marked with the `vera-encoding`
//! attribute. Queues are created only by [`Bus::ensure_topics`] (`vera setup-bus`).
//!
//! Stale receipts: SQS accepts a `DeleteMessage` with an outdated receipt handle and
//! simply does not delete the message (AWS documents this; moto deletes it instead), so an
//! ack from a claim that expired cannot be told apart from a good one. VERA acks only after
//! the work is durable, so either outcome is safe: the message comes back and the
//! idempotent worker finds its output already stored, or it is gone because the work is
//! done.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use base64::Engine;
use bytes::Bytes;
use vera_bus::{
    Bus, BusError, BusErrorKind, DeadLetter, Delivery, OrderedTopics, Outgoing, QueueDepth, check_message_sizes,
    validate_topic,
};

/// SQS's classic message limit. AWS raised it to 1 MiB in 2025; other SQS-compatible
/// servers still enforce 256 KiB, so that is the default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
const KEY_ATTRIBUTE: &str = "vera-key";
const ENCODING_ATTRIBUTE: &str = "vera-encoding";
const REASON_ATTRIBUTE: &str = "vera-reason";
const ATTEMPTS_ATTRIBUTE: &str = "vera-attempts";
/// Room left for message attributes inside the batch size limit.
const ATTRIBUTE_ALLOWANCE: usize = 1024;

#[derive(Debug, Clone)]
pub struct SqsSettings {
    pub region: String,
    /// e.g. `http://127.0.0.1:5055` for moto or ElasticMQ; `None` for AWS.
    pub endpoint: Option<String>,
    /// Prepended to topic names to form queue names.
    pub prefix: String,
    /// Receives before SQS moves a message to the DLQ (its `maxReceiveCount`).
    pub max_attempts: u32,
    pub ordered: OrderedTopics,
    pub max_message_bytes: usize,
    /// Long-polling wait of an empty `claim`, in whole seconds (0..=20).
    pub wait_seconds: i32,
    /// SDK attempts per request; the SDK backs off with jitter on throttling and 5xx.
    pub max_request_attempts: u32,
}

impl Default for SqsSettings {
    fn default() -> Self {
        SqsSettings {
            region: "us-east-1".to_owned(),
            endpoint: None,
            prefix: "vera-".to_owned(),
            max_attempts: 5,
            ordered: OrderedTopics::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            wait_seconds: 5,
            max_request_attempts: 5,
        }
    }
}

pub struct SqsBus {
    client: Client,
    settings: SqsSettings,
    urls: Mutex<HashMap<String, String>>,
}

/// Whether `text` is made only of characters SQS accepts in a message body.
fn is_sqs_text(text: &str) -> bool {
    text.chars().all(|c| matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}'))
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder().data_type("String").string_value(value).build().expect("data type is set")
}

fn seconds_ceil(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.min(43_200)).unwrap_or(43_200)
}

impl SqsBus {
    /// Builds a client from the standard AWS configuration chain plus `settings`.
    pub async fn connect(settings: SqsSettings) -> Result<Self, BusError> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(&shared, settings)
    }

    /// Builds a client from an existing SDK configuration (tests pass static credentials).
    pub fn from_sdk_config(shared: &aws_config::SdkConfig, settings: SqsSettings) -> Result<Self, BusError> {
        if settings.max_attempts == 0 {
            return Err(BusError::new(BusErrorKind::Config, "sqs: max_attempts must be at least 1"));
        }
        if !(0..=20).contains(&settings.wait_seconds) {
            return Err(BusError::new(BusErrorKind::Config, "sqs: wait_seconds must be between 0 and 20"));
        }
        if settings.max_message_bytes > 1024 * 1024 {
            return Err(BusError::new(BusErrorKind::Config, "sqs: max_message_bytes cannot exceed SQS's 1 MiB"));
        }
        let mut builder = aws_sdk_sqs::config::Builder::from(shared).retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(settings.max_request_attempts.max(1)),
        );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(SqsBus { client: Client::from_conf(builder.build()), settings, urls: Mutex::new(HashMap::new()) })
    }

    fn fifo(&self, topic: &str) -> bool {
        self.settings.ordered.contains(topic)
    }

    fn queue_name(&self, topic: &str, dead: bool) -> String {
        let suffix = if dead { "-dlq" } else { "" };
        let fifo = if self.fifo(topic) { ".fifo" } else { "" };
        format!("{}{topic}{suffix}{fifo}", self.settings.prefix)
    }

    fn error<E>(&self, context: &str, error: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> BusError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self.settings.endpoint.as_deref().unwrap_or("AWS");
        let (kind, hint) = match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default();
                match code {
                    "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                        (BusErrorKind::Config, "the queue does not exist; run `vera setup-bus`".to_owned())
                    }
                    "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "UnrecognizedClientException"
                    | "ExpiredToken"
                    | "MissingAuthenticationToken" => (
                        BusErrorKind::Config,
                        format!("SQS refused the credentials ({code}); check the AWS credential chain"),
                    ),
                    "ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidParameterValue"
                        if context.starts_with("receipt") =>
                    {
                        (BusErrorKind::StaleReceipt, "the receipt is no longer current".to_owned())
                    }
                    "RequestThrottled" | "ThrottlingException" | "ServiceUnavailable" | "InternalError" => {
                        (BusErrorKind::Transient, format!("SQS is overloaded ({code}); retry later"))
                    }
                    "QueueAlreadyExists" => (
                        BusErrorKind::Config,
                        "a queue of that name exists with other attributes than VERA sets".to_owned(),
                    ),
                    _ => {
                        (BusErrorKind::Other, format!("SQS answered {code}: {}", service.err().message().unwrap_or("")))
                    }
                }
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                (BusErrorKind::Transient, format!("cannot reach SQS at {endpoint}; is it running and reachable?"))
            }
            _ => (BusErrorKind::Other, "the SQS request failed".to_owned()),
        };
        BusError::new(kind, format!("sqs: {context}: {hint}")).with_source(error)
    }

    async fn url(&self, topic: &str, dead: bool) -> Result<String, BusError> {
        let name = self.queue_name(topic, dead);
        if let Some(url) = self.urls.lock().expect("urls lock").get(&name) {
            return Ok(url.clone());
        }
        let output = self
            .client
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| self.error(&format!("find queue `{name}`"), e))?;
        let url = output.queue_url().unwrap_or_default().to_owned();
        self.urls.lock().expect("urls lock").insert(name, url.clone());
        Ok(url)
    }

    /// The body for a payload, and whether it is base64 encoded.
    fn body(payload: &[u8]) -> (String, bool) {
        match std::str::from_utf8(payload) {
            Ok(text) if is_sqs_text(text) => (text.to_owned(), false),
            _ => (base64::engine::general_purpose::STANDARD.encode(payload), true),
        }
    }

    /// The payload of a received message. A body marked base64 that does not decode is
    /// not ours to fix: it is passed on raw, so the worker dead-letters it as malformed.
    fn payload(message: &aws_sdk_sqs::types::Message) -> Bytes {
        let body = message.body().unwrap_or_default();
        let encoded = message
            .message_attributes()
            .and_then(|attributes| attributes.get(ENCODING_ATTRIBUTE))
            .and_then(|value| value.string_value())
            == Some("base64");
        if encoded {
            match base64::engine::general_purpose::STANDARD.decode(body) {
                Ok(decoded) => return Bytes::from(decoded),
                Err(error) => tracing::warn!(%error, "sqs: a message marked base64 does not decode; passed on raw"),
            }
        }
        Bytes::copy_from_slice(body.as_bytes())
    }

    fn attribute(message: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
        message.message_attributes()?.get(name)?.string_value().map(str::to_owned)
    }

    fn entry(&self, topic: &str, id: usize, message: &Outgoing) -> Result<SendMessageBatchRequestEntry, BusError> {
        let (body, encoded) = Self::body(&message.payload);
        if encoded && body.len() > self.settings.max_message_bytes {
            return Err(BusError::new(
                BusErrorKind::InvalidInput,
                format!(
                    "sqs: a binary message of {} bytes is {} bytes once base64 encoded, over the limit of {} bytes",
                    message.payload.len(),
                    body.len(),
                    self.settings.max_message_bytes
                ),
            ));
        }
        let mut entry = SendMessageBatchRequestEntry::builder().id(id.to_string()).message_body(body);
        if encoded {
            entry = entry.message_attributes(ENCODING_ATTRIBUTE, string_attribute("base64"));
        }
        if let Some(key) = &message.key {
            entry = entry.message_attributes(KEY_ATTRIBUTE, string_attribute(key));
        }
        if self.fifo(topic) {
            let group = match &message.key {
                Some(key) => key.clone(),
                // Unkeyed messages on a FIFO queue: a group of their own, so they do not
                // wait for each other.
                None => format!("m-{}", blake3::hash(&message.payload).to_hex()),
            };
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(blake3::hash(&message.payload).to_hex().to_string());
        }
        entry.build().map_err(|e| BusError::new(BusErrorKind::InvalidInput, "sqs: bad batch entry").with_source(e))
    }

    async fn set_visibility(&self, delivery: &Delivery, visibility: Duration, what: &str) -> Result<(), BusError> {
        let url = self.url(&delivery.topic, false).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(&delivery.receipt)
            .visibility_timeout(seconds_ceil(visibility))
            .send()
            .await
            .map_err(|e| self.error(&format!("receipt {what}"), e))?;
        Ok(())
    }

    async fn delete(&self, topic: &str, receipt: &str) -> Result<(), BusError> {
        let url = self.url(topic, false).await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| self.error("receipt ack", e))?;
        Ok(())
    }

    async fn count(&self, url: &str, names: &[QueueAttributeName]) -> Result<u64, BusError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| self.error("read queue depth", e))?;
        let attributes = output.attributes().cloned().unwrap_or_default();
        Ok(names.iter().filter_map(|name| attributes.get(name)?.parse::<u64>().ok()).sum())
    }

    async fn receive(
        &self,
        topic: &str,
        url: &str,
        max: usize,
        visibility: Duration,
        wait_seconds: i32,
    ) -> Result<Vec<Delivery>, BusError> {
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(10))
            .visibility_timeout(seconds_ceil(visibility))
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| self.error(&format!("claim from {topic}"), e))?;
        let mut deliveries = Vec::new();
        for message in output.messages() {
            let attempt = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            let payload = Self::payload(message);
            deliveries.push(Delivery {
                topic: topic.to_owned(),
                message_id: message.message_id().unwrap_or_default().to_owned(),
                receipt: message.receipt_handle().unwrap_or_default().to_owned(),
                key: Self::attribute(message, KEY_ATTRIBUTE),
                payload,
                attempt,
            });
        }
        Ok(deliveries)
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> Result<String, BusError> {
        let mut request = self.client.create_queue().queue_name(name);
        for (attribute, value) in attributes {
            request = request.attributes(attribute, value);
        }
        let output = request.send().await.map_err(|e| self.error(&format!("create queue `{name}`"), e))?;
        let url = output.queue_url().unwrap_or_default().to_owned();
        self.urls.lock().expect("urls lock").insert(name.to_owned(), url.clone());
        Ok(url)
    }
}

#[async_trait]
impl Bus for SqsBus {
    async fn publish(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), BusError> {
        validate_topic(topic)?;
        check_message_sizes("sqs", &messages, self.settings.max_message_bytes)?;
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, message)| self.entry(topic, i, message))
            .collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Ok(());
        }
        let url = self.url(topic, false).await?;
        // Batches of at most 10 entries and at most max_message_bytes in all.
        let mut batches: Vec<Vec<SendMessageBatchRequestEntry>> = vec![Vec::new()];
        let mut size = 0;
        for entry in entries {
            let entry_size = entry.message_body().len() + ATTRIBUTE_ALLOWANCE;
            let current = batches.last_mut().expect("one batch");
            if !current.is_empty() && (current.len() == 10 || size + entry_size > self.settings.max_message_bytes) {
                batches.push(Vec::new());
                size = 0;
            }
            size += entry_size;
            batches.last_mut().expect("one batch").push(entry);
        }
        for mut batch in batches {
            for round in 0..5 {
                let output = self
                    .client
                    .send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(batch.clone()))
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("publish to {topic}"), e))?;
                let failed: HashSet<&str> = output.failed().iter().map(|f| f.id()).collect();
                if failed.is_empty() {
                    break;
                }
                if let Some(permanent) = output.failed().iter().find(|f| f.sender_fault()) {
                    return Err(BusError::new(
                        BusErrorKind::InvalidInput,
                        format!(
                            "sqs: publish to {topic}: SQS refused a message: {} {}",
                            permanent.code(),
                            permanent.message().unwrap_or("")
                        ),
                    ));
                }
                if round == 4 {
                    return Err(BusError::new(
                        BusErrorKind::Transient,
                        format!("sqs: publish to {topic}: {} messages still failing after retries", failed.len()),
                    ));
                }
                batch.retain(|entry| failed.contains(entry.id()));
                tokio::time::sleep(Duration::from_millis(50 << round)).await;
            }
        }
        Ok(())
    }

    async fn claim(&self, topic: &str, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError> {
        validate_topic(topic)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let url = self.url(topic, false).await?;
        if !self.fifo(topic) {
            return self.receive(topic, &url, max.min(10), visibility, self.settings.wait_seconds).await;
        }
        // A FIFO receive may return several messages of one group at once. VERA promises
        // one message per key in flight, and handing extras back would count receives
        // against them, so ordered topics receive one message per call: SQS then serves
        // the next call from another group, since this one's group is in flight.
        let mut out = self.receive(topic, &url, 1, visibility, self.settings.wait_seconds).await?;
        while !out.is_empty() && out.len() < max {
            let next = self.receive(topic, &url, 1, visibility, 0).await?;
            if next.is_empty() {
                break;
            }
            out.extend(next);
        }
        Ok(out)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.delete(&delivery.topic, &delivery.receipt).await
    }

    async fn ack_batch(&self, deliveries: &[Delivery]) -> Vec<Result<(), BusError>> {
        let mut results: Vec<Option<Result<(), BusError>>> = deliveries.iter().map(|_| None).collect();
        // DeleteMessageBatch takes up to 10 entries of one queue.
        let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            by_topic.entry(delivery.topic.as_str()).or_default().push(i);
        }
        for (topic, indexes) in by_topic {
            let url = match self.url(topic, false).await {
                Ok(url) => url,
                Err(error) => {
                    for i in indexes {
                        results[i] = Some(Err(BusError::new(error.kind, error.message.clone())));
                    }
                    continue;
                }
            };
            for chunk in indexes.chunks(10) {
                let entries: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(&deliveries[i].receipt)
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect();
                match self.client.delete_message_batch().queue_url(&url).set_entries(Some(entries)).send().await {
                    Ok(output) => {
                        for failed in output.failed() {
                            if let Ok(i) = failed.id().parse::<usize>() {
                                results[i] = Some(Err(BusError::new(
                                    BusErrorKind::Other,
                                    format!("sqs: ack: {} {}", failed.code(), failed.message().unwrap_or("")),
                                )));
                            }
                        }
                        for &i in chunk {
                            results[i].get_or_insert(Ok(()));
                        }
                    }
                    Err(error) => {
                        let error = self.error("receipt ack batch", error);
                        for &i in chunk {
                            results[i] = Some(Err(BusError::new(error.kind, error.message.clone())));
                        }
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        self.set_visibility(delivery, delay, "nack").await
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), BusError> {
        self.set_visibility(delivery, visibility, "extend").await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let dead_url = self.url(&delivery.topic, true).await?;
        let (body, encoded) = Self::body(&delivery.payload);
        let mut request = self
            .client
            .send_message()
            .queue_url(dead_url)
            .message_body(body)
            .message_attributes(REASON_ATTRIBUTE, string_attribute(reason))
            .message_attributes(ATTEMPTS_ATTRIBUTE, string_attribute(&delivery.attempt.to_string()));
        if encoded {
            request = request.message_attributes(ENCODING_ATTRIBUTE, string_attribute("base64"));
        }
        if let Some(key) = &delivery.key {
            request = request.message_attributes(KEY_ATTRIBUTE, string_attribute(key));
        }
        if self.fifo(&delivery.topic) {
            request = request
                .message_group_id(delivery.key.clone().unwrap_or_else(|| delivery.message_id.clone()))
                .message_deduplication_id(blake3::hash(delivery.message_id.as_bytes()).to_hex().to_string());
        }
        request.send().await.map_err(|e| self.error(&format!("dead-letter from {}", delivery.topic), e))?;
        // In the DLQ first, deleted second: a crash between leaves two copies, never none.
        self.delete(&delivery.topic, &delivery.receipt).await
    }

    async fn depth(&self, topic: &str) -> Result<QueueDepth, BusError> {
        validate_topic(topic)?;
        let url = self.url(topic, false).await?;
        let dead_url = self.url(topic, true).await?;
        Ok(QueueDepth {
            visible: self.count(&url, &[QueueAttributeName::ApproximateNumberOfMessages]).await?,
            in_flight: self
                .count(
                    &url,
                    &[
                        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                    ],
                )
                .await?,
            dead: self.count(&dead_url, &[QueueAttributeName::ApproximateNumberOfMessages]).await?,
        })
    }

    async fn dead_letters(&self, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        let dead_url = self.url(topic, true).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Peek: receive with a zero visibility timeout, so every message stays visible.
        for _ in 0..(max / 10 + 3) {
            if out.len() >= max {
                break;
            }
            let output = self
                .client
                .receive_message()
                .queue_url(&dead_url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| self.error(&format!("read dead letters of {topic}"), e))?;
            if output.messages().is_empty() {
                break;
            }
            let before = out.len();
            for message in output.messages() {
                let id = message.message_id().unwrap_or_default().to_owned();
                if out.len() >= max || !seen.insert(id.clone()) {
                    continue;
                }
                let (reason, attempts) = match Self::attribute(message, REASON_ATTRIBUTE) {
                    Some(reason) => {
                        (reason, Self::attribute(message, ATTEMPTS_ATTRIBUTE).and_then(|a| a.parse().ok()).unwrap_or(0))
                    }
                    None => (
                        format!("SQS redrive: received {} times without success", self.settings.max_attempts),
                        self.settings.max_attempts,
                    ),
                };
                out.push(DeadLetter {
                    message_id: id,
                    key: Self::attribute(message, KEY_ATTRIBUTE),
                    payload: Self::payload(message),
                    attempts,
                    reason,
                });
            }
            if out.len() == before {
                break;
            }
        }
        Ok(out)
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        topics.iter().try_for_each(|topic| validate_topic(topic))?;
        for topic in topics {
            let fifo = self.fifo(topic);
            let mut base = Vec::new();
            if fifo {
                base.push((QueueAttributeName::FifoQueue, "true".to_owned()));
                base.push((QueueAttributeName::ContentBasedDeduplication, "false".to_owned()));
            }
            // 14 days, the SQS maximum, so dead letters wait for an operator.
            let mut dead_attributes = base.clone();
            dead_attributes.push((QueueAttributeName::MessageRetentionPeriod, "1209600".to_owned()));
            let dead_url = self.create_queue(&self.queue_name(topic, true), dead_attributes).await?;
            let arn_output = self
                .client
                .get_queue_attributes()
                .queue_url(&dead_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| self.error("read the dead-letter queue's ARN", e))?;
            let arn = arn_output
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .cloned()
                .ok_or_else(|| BusError::new(BusErrorKind::Other, "sqs: the dead-letter queue has no ARN"))?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": self.settings.max_attempts.to_string(),
            });
            let mut attributes = base;
            attributes.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
            attributes.push((QueueAttributeName::MessageRetentionPeriod, "1209600".to_owned()));
            attributes.push((QueueAttributeName::MaximumMessageSize, self.settings.max_message_bytes.to_string()));
            self.create_queue(&self.queue_name(topic, false), attributes).await?;
        }
        Ok(())
    }

    fn max_message_bytes(&self) -> usize {
        self.settings.max_message_bytes
    }

    fn detects_stale_receipts(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_text_when_they_can_be() {
        assert_eq!(SqsBus::body(br#"{"v":1}"#), (r#"{"v":1}"#.to_owned(), false));
        let (body, encoded) = SqsBus::body(&[0, 159, 146, 150]);
        assert!(encoded);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), vec![0, 159, 146, 150]);
        assert!(SqsBus::body("nul\u{0}inside".as_bytes()).1, "NUL is not SQS text");
    }

    #[test]
    fn visibility_rounds_up_to_whole_seconds() {
        assert_eq!(seconds_ceil(Duration::from_millis(300)), 1);
        assert_eq!(seconds_ceil(Duration::from_secs(2)), 2);
        assert_eq!(seconds_ceil(Duration::ZERO), 0);
        assert_eq!(seconds_ceil(Duration::from_secs(100_000)), 43_200);
    }
}
