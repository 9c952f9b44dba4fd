//! The behaviour every `Bus` backend must show. Each backend's tests call [`run_all`]
//! (or [`run_all_with`], for a backend whose unordered topics deliver at least once) with
//! a bus configured for `max_attempts = 3`. Topics get a random suffix so the suite can
//! share a broker with other runs.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;

use crate::{Bus, BusErrorKind, Outgoing};

/// The `max_attempts` the bus under test must be configured with.
pub const MAX_ATTEMPTS: u32 = 3;
/// Topics starting with this are the suite's ordered topics; [`crate::OrderedTopics`]
/// includes it by default so backends under test order them.
pub const ORDERED_TOPIC_PREFIX: &str = "conf-ordered-";
/// Topics starting with this fan out to subscribers ([`crate::topics::fans_out`]).
pub const FANOUT_TOPIC_PREFIX: &str = "conf-fanout-";
const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

/// A fresh topic, created on the bus under test.
async fn topic(bus: &dyn Bus, name: &str) -> String {
    let topic = format!("conf-{name}-{:08x}", rand::random::<u32>());
    bus.ensure_topics(&[&topic]).await.expect("ensure_topics");
    topic
}

fn message(text: &str) -> Outgoing {
    Outgoing { key: None, payload: Bytes::copy_from_slice(text.as_bytes()) }
}

fn keyed(key: &str, text: &str) -> Outgoing {
    Outgoing { key: Some(key.to_owned()), payload: Bytes::copy_from_slice(text.as_bytes()) }
}

/// Claims until `want` messages arrive or `patience` passes.
async fn claim_n(
    bus: &dyn Bus,
    topic: &str,
    want: usize,
    visibility: Duration,
    patience: Duration,
) -> Vec<crate::Delivery> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        let batch = bus.claim(topic, want - got.len(), visibility).await.expect("claim");
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        got.extend(batch);
    }
    got
}

/// What a backend promises about concurrent claims on an unordered topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claims {
    /// A claimed message is invisible to every other consumer until it is acked, nacked
    /// or its visibility expires (SQLite, RabbitMQ, Kafka).
    Exclusive,
    /// At least once: the backend may, rarely, hand one message to two consumers at once
    /// (SQS standard queues, by AWS's own documentation; moto's receive is not atomic
    /// either). Every message must still arrive, and VERA's workers are idempotent.
    AtLeastOnce,
}

/// The whole suite for a backend whose claims are [`Claims::Exclusive`].
pub async fn run_all(bus: &dyn Bus) {
    run_all_with(bus, Claims::Exclusive).await;
}

/// The whole suite, with the claim guarantee the backend documents.
pub async fn run_all_with(bus: &dyn Bus, claims: Claims) {
    publish_claim_ack(bus).await;
    in_flight_messages_are_invisible_then_redelivered(bus).await;
    nack_and_extend(bus).await;
    dead_letter_after_max_attempts(bus).await;
    explicit_dead_letter(bus).await;
    stale_receipts_are_refused(bus).await;
    same_key_is_delivered_in_order_one_at_a_time(bus).await;
    concurrent_consumers_never_share_a_claim(bus, claims).await;
    bad_topics_are_refused(bus).await;
    oversized_messages_are_refused(bus).await;
    batched_acks(bus).await;
    ensure_topics_is_idempotent(bus).await;
    subscribers_each_see_every_message(bus).await;
}

pub async fn publish_claim_ack(bus: &dyn Bus) {
    let topic = topic(bus, "basic").await;
    bus.publish(&topic, vec![message("a"), message("b"), message("c")]).await.expect("publish");
    let got = claim_n(bus, &topic, 3, LONG, Duration::from_secs(10)).await;
    let payloads: HashSet<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(payloads.len(), 3, "all three messages delivered once: {got:?}");
    assert!(got.iter().all(|d| d.attempt == 1));
    for delivery in &got {
        bus.ack(delivery).await.expect("ack");
    }
    assert!(bus.claim(&topic, 10, LONG).await.expect("claim").is_empty(), "acked messages are gone");
    let depth = bus.depth(&topic).await.expect("depth");
    assert_eq!((depth.visible, depth.in_flight, depth.dead), (0, 0, 0));
}

pub async fn in_flight_messages_are_invisible_then_redelivered(bus: &dyn Bus) {
    let topic = topic(bus, "visibility").await;
    bus.publish(&topic, vec![message("x")]).await.expect("publish");
    let first = claim_n(bus, &topic, 1, SHORT, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    assert!(bus.claim(&topic, 1, SHORT).await.expect("claim").is_empty(), "in-flight message must be invisible");
    assert_eq!(bus.depth(&topic).await.expect("depth").in_flight, 1);
    let second = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1, "message comes back after the visibility timeout");
    assert_eq!(second[0].payload, first[0].payload);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
    bus.ack(&second[0]).await.expect("ack");
}

pub async fn nack_and_extend(bus: &dyn Bus) {
    let topic = topic(bus, "nack").await;
    bus.publish(&topic, vec![message("n")]).await.expect("publish");
    let first = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    bus.nack(&first[0], Duration::ZERO).await.expect("nack");
    let again = claim_n(bus, &topic, 1, SHORT, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1, "nacked message is redelivered");
    bus.extend(&again[0], LONG).await.expect("extend");
    tokio::time::sleep(SHORT * 2).await;
    assert!(bus.claim(&topic, 1, LONG).await.expect("claim").is_empty(), "extended message stays invisible");
    bus.ack(&again[0]).await.expect("ack after extend");
}

pub async fn dead_letter_after_max_attempts(bus: &dyn Bus) {
    let topic = topic(bus, "poison").await;
    bus.publish(&topic, vec![message("poison")]).await.expect("publish");
    for attempt in 1..=MAX_ATTEMPTS {
        let got = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "attempt {attempt} delivered");
        assert_eq!(got[0].attempt, attempt);
        bus.nack(&got[0], Duration::ZERO).await.expect("nack");
    }
    tokio::time::sleep(SHORT).await;
    assert!(bus.claim(&topic, 1, LONG).await.expect("claim").is_empty(), "no delivery beyond max_attempts");
    let dead = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].payload[..], b"poison");
    assert!(!dead[0].reason.is_empty());
    assert_eq!(bus.depth(&topic).await.expect("depth").dead, 1);
}

pub async fn explicit_dead_letter(bus: &dyn Bus) {
    let topic = topic(bus, "malformed").await;
    bus.publish(&topic, vec![message("{not json")]).await.expect("publish");
    let got = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    bus.dead_letter(&got[0], "malformed envelope").await.expect("dead-letter");
    let dead = bus.dead_letters(&topic, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "malformed envelope");
    assert!(bus.claim(&topic, 1, LONG).await.expect("claim").is_empty());
}

pub async fn stale_receipts_are_refused(bus: &dyn Bus) {
    let topic = topic(bus, "stale").await;
    bus.publish(&topic, vec![message("s")]).await.expect("publish");
    let first = claim_n(bus, &topic, 1, SHORT, Duration::from_secs(10)).await;
    let second = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1);
    if !bus.detects_stale_receipts() {
        // SQS: an outdated receipt is accepted (AWS leaves the message, moto deletes it).
        // VERA acks only after its work is durable, so neither loses anything; the
        // calls must still not fail with anything but StaleReceipt.
        for result in [bus.ack(&first[0]).await, bus.ack(&second[0]).await, bus.ack(&second[0]).await] {
            if let Err(error) = result {
                assert_eq!(error.kind, BusErrorKind::StaleReceipt, "{error}");
            }
        }
        tokio::time::sleep(SHORT).await;
        assert!(bus.claim(&topic, 1, LONG).await.expect("claim").is_empty(), "the acked message is gone");
        return;
    }
    let stale = bus.ack(&first[0]).await.expect_err("stale ack must fail");
    assert_eq!(stale.kind, BusErrorKind::StaleReceipt);
    bus.nack(&second[0], Duration::ZERO).await.expect("the stale ack left the current holder's claim alone");
    let third = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(third.len(), 1, "a stale ack did not delete the message");
    bus.ack(&third[0]).await.expect("current receipt acks");
    let twice = bus.ack(&third[0]).await.expect_err("double ack must fail");
    assert_eq!(twice.kind, BusErrorKind::StaleReceipt);
}

pub async fn same_key_is_delivered_in_order_one_at_a_time(bus: &dyn Bus) {
    let topic = topic(bus, "ordered").await;
    bus.publish(
        &topic,
        vec![keyed("shard-a", "a1"), keyed("shard-b", "b1"), keyed("shard-a", "a2"), keyed("shard-a", "a3")],
    )
    .await
    .expect("publish");
    let mut seen_a = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen_a.len() < 3 && tokio::time::Instant::now() < deadline {
        let batch = bus.claim(&topic, 10, LONG).await.expect("claim");
        let a_in_batch = batch.iter().filter(|d| d.key.as_deref() == Some("shard-a")).count();
        assert!(a_in_batch <= 1, "two messages of one key in flight at once: {batch:?}");
        for delivery in batch {
            if delivery.key.as_deref() == Some("shard-a") {
                seen_a.push(String::from_utf8_lossy(&delivery.payload).into_owned());
            }
            bus.ack(&delivery).await.expect("ack");
        }
        if seen_a.len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(seen_a, vec!["a1", "a2", "a3"]);
}

pub async fn concurrent_consumers_never_share_a_claim(bus: &dyn Bus, claims: Claims) {
    let topic = topic(bus, "compete").await;
    let total = 60;
    bus.publish(&topic, (0..total).map(|i| message(&format!("m{i}"))).collect()).await.expect("publish");
    let consumers = (0..4).map(|_| async {
        let mut mine = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let batch = bus.claim(&topic, 5, LONG).await.expect("claim");
            if batch.is_empty() {
                if tokio::time::Instant::now() > deadline
                    || bus.depth(&topic).await.map(|d| d.visible == 0).unwrap_or(true)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            for delivery in batch {
                mine.push(delivery.payload.clone());
                bus.ack(&delivery).await.expect("ack");
            }
        }
        mine
    });
    let all: Vec<Bytes> = futures::future::join_all(consumers).await.into_iter().flatten().collect();
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(unique.len(), total, "every message delivered");
    match claims {
        Claims::Exclusive => {
            assert_eq!(all.len(), total, "each message delivered exactly once to exactly one consumer")
        }
        Claims::AtLeastOnce => {
            // Rare duplicates only: a backend that handed most messages out twice would
            // not be at-least-once by accident.
            assert!(all.len() <= total + total / 10, "{} deliveries of {total} messages", all.len());
            if all.len() > total {
                eprintln!("at-least-once: {} deliveries of {total} messages", all.len());
            }
        }
    }
}

pub async fn bad_topics_are_refused(bus: &dyn Bus) {
    for bad in ["", "UPPER", "has space", &"x".repeat(65)] {
        let error = bus.publish(bad, vec![message("x")]).await.expect_err("bad topic");
        assert_eq!(error.kind, BusErrorKind::InvalidInput);
    }
}

pub async fn oversized_messages_are_refused(bus: &dyn Bus) {
    let topic = topic(bus, "oversize").await;
    let limit = bus.max_message_bytes();
    assert!(limit >= 64 * 1024, "a bus must carry at least 64 KiB messages, this one allows {limit}");
    let too_big = Outgoing { key: None, payload: Bytes::from(vec![b'x'; limit + 1]) };
    let error = bus.publish(&topic, vec![message("fits"), too_big]).await.expect_err("oversized message");
    assert_eq!(error.kind, BusErrorKind::InvalidInput);
    assert!(error.message.contains(&limit.to_string()), "the error names the limit: {error}");
    tokio::time::sleep(SHORT).await;
    assert!(bus.claim(&topic, 10, LONG).await.expect("claim").is_empty(), "a refused batch publishes nothing");
    let fits = Outgoing { key: None, payload: Bytes::from(vec![b'y'; limit.min(200 * 1024)]) };
    bus.publish(&topic, vec![fits.clone()]).await.expect("a message at the limit is accepted");
    let got = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, fits.payload);
    bus.ack(&got[0]).await.expect("ack");
}

pub async fn ensure_topics_is_idempotent(bus: &dyn Bus) {
    let topic = topic(bus, "ensure").await;
    bus.publish(&topic, vec![message("kept")]).await.expect("publish");
    bus.ensure_topics(&[&topic]).await.expect("ensure_topics again");
    let got = claim_n(bus, &topic, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "ensuring an existing topic keeps its messages");
    bus.ack(&got[0]).await.expect("ack");
}

pub async fn batched_acks(bus: &dyn Bus) {
    let topic = topic(bus, "batch").await;
    let total = 25;
    bus.publish(&topic, (0..total).map(|i| message(&format!("b{i}"))).collect()).await.expect("publish");
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < total && tokio::time::Instant::now() < deadline {
        // Backends may bound claims in flight (RabbitMQ's prefetch): ack each batch.
        let batch = bus.claim(&topic, 10, LONG).await.expect("claim");
        let results = bus.ack_batch(&batch).await;
        assert_eq!(results.len(), batch.len(), "one result per delivery");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        seen.extend(batch.into_iter().map(|d| d.payload));
    }
    assert_eq!(seen.len(), total);
    tokio::time::sleep(SHORT).await;
    assert!(bus.claim(&topic, 10, LONG).await.expect("claim").is_empty(), "every acked message is gone");
}

/// Every subscriber sees every message published after it subscribed, and the topic's
/// consumers still get each message once. A backend that cannot fan out says so.
pub async fn subscribers_each_see_every_message(bus: &dyn Bus) {
    use futures::StreamExt;
    let fanout = topic(bus, "fanout").await;
    let plain = topic(bus, "plain").await;
    let topic = fanout;
    assert!(crate::topics::fans_out(&topic), "{topic}");
    if !bus.fans_out() {
        let error = bus.subscribe(&topic).await.err().expect("a bus without fan-out refuses to subscribe");
        assert_eq!(error.kind, BusErrorKind::Config);
        return;
    }
    let refused = bus.subscribe(&plain).await.err().expect("only fan-out topics can be subscribed to");
    assert_eq!(refused.kind, BusErrorKind::InvalidInput);

    let mut first = bus.subscribe(&topic).await.expect("subscribe");
    let mut second = bus.subscribe(&topic).await.expect("subscribe");
    let sent = ["x", "y", "z"];
    bus.publish(&topic, sent.iter().map(|text| message(text)).collect()).await.expect("publish");
    for subscription in [&mut first, &mut second] {
        let mut seen = Vec::new();
        while seen.len() < sent.len() {
            let next = tokio::time::timeout(Duration::from_secs(20), subscription.next())
                .await
                .expect("a subscriber sees each message within 20 s")
                .expect("the subscription stays open");
            seen.push(String::from_utf8(next.expect("payload").to_vec()).unwrap());
        }
        seen.sort();
        assert_eq!(seen, sent, "each subscriber sees every message once");
    }
    let got = claim_n(bus, &topic, sent.len(), LONG, Duration::from_secs(20)).await;
    assert_eq!(got.len(), sent.len(), "consumers still get every message");
    for delivery in &got {
        bus.ack(delivery).await.expect("ack");
    }
}
