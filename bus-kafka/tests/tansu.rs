//! The Kafka bus against a real Kafka-protocol broker: tansu on memory storage
//! (`VERA_KAFKA_BROKERS`, default `127.0.0.1:9092`; `scripts/services` starts it).

use std::time::Duration;

use bytes::Bytes;
use vera_bus::{Bus, BusErrorKind, Outgoing, conformance};
use vera_bus_kafka::{KafkaBus, KafkaSettings, ReplayFrom};

fn brokers() -> String {
    std::env::var("VERA_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn settings() -> KafkaSettings {
    let run = format!("{:08x}", rand::random::<u32>());
    KafkaSettings {
        prefix: format!("vera-test-{run}."),
        group: format!("vera-test-{run}"),
        max_attempts: conformance::MAX_ATTEMPTS,
        partitions: 3,
        ..KafkaSettings::new(brokers())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bus_passes_conformance_on_tansu() {
    let bus = KafkaBus::connect(settings()).await.expect("connect to the broker");
    conformance::run_all(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_the_topic_again_from_the_start() {
    let settings = settings();
    {
        let bus = KafkaBus::connect(settings.clone()).await.unwrap();
        bus.ensure_topics(&["pack"]).await.unwrap();
        let messages = (0..5).map(|i| Outgoing { key: None, payload: Bytes::from(format!("task-{i}")) }).collect();
        bus.publish("pack", messages).await.unwrap();
        let first = drain(&bus, 5).await;
        assert_eq!(first.len(), 5);
        assert_eq!(bus.depth("pack").await.unwrap().visible, 0, "all five acked and committed");
    }
    // The workers are gone (the group is empty): rewind it.
    let bus = KafkaBus::connect(settings).await.unwrap();
    let offsets = bus.replay("pack", ReplayFrom::Offset(0)).await.unwrap();
    assert_eq!(offsets.len(), 3, "every partition rewound: {offsets:?}");
    assert!(offsets.iter().all(|(_, offset)| *offset == 0));
    // tansu (memory storage) reports a partition's high watermark as one past the first
    // offset of its last record batch, so lag is undercounted for batched records; a real
    // Kafka broker shows 5 here. The redelivery below is the real check.
    assert!(bus.depth("pack").await.unwrap().visible > 0, "the topic is due again");
    let mut again = drain(&bus, 5).await;
    again.sort();
    assert_eq!(again, (0..5).map(|i| format!("task-{i}")).collect::<Vec<_>>());
}

async fn drain(bus: &KafkaBus, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want && tokio::time::Instant::now() < deadline {
        for delivery in bus.claim("pack", 10, Duration::from_secs(60)).await.unwrap() {
            got.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
            bus.ack(&delivery).await.unwrap();
        }
    }
    got
}

#[tokio::test]
async fn missing_topics_and_unreachable_brokers_get_errors_that_say_what_to_fix() {
    let bus = KafkaBus::connect(settings()).await.unwrap();
    let error = bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"x") }]).await.unwrap_err();
    assert_eq!(error.kind, BusErrorKind::Config, "{error:?}");
    assert!(error.to_string().contains("vera setup-bus"), "{error}");

    let unreachable = KafkaSettings {
        extra: vec![("socket.connection.setup.timeout.ms".into(), "2000".into())],
        ..KafkaSettings::new("127.0.0.1:1")
    };
    let error = KafkaBus::connect(unreachable).await.err().expect("nothing listens on port 1");
    assert_eq!(error.kind, BusErrorKind::Transient, "{error:?}");
    assert!(error.to_string().contains("cannot reach the Kafka brokers"), "{error}");
}

/// Needs a broker that returns commit metadata from OffsetFetch. Apache Kafka does; tansu
/// 0.6 does not (its dynostore `offset_fetch` returns offsets only), so CI skips this.
/// Run it against Kafka: `VERA_KAFKA_BROKERS=host:9092 cargo test -p vera-bus-kafka -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu drops commit metadata; run with --ignored against Apache Kafka"]
async fn a_message_whose_consumers_keep_dying_is_dead_lettered_not_looped() {
    let settings = settings();
    {
        let bus = KafkaBus::connect(settings.clone()).await.unwrap();
        bus.ensure_topics(&["pack"]).await.unwrap();
        bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"kills its worker") }])
            .await
            .unwrap();
    }
    for attempt in 1..=conformance::MAX_ATTEMPTS {
        // A fresh process each time, that dies holding the claim (no ack, no nack).
        let bus = KafkaBus::connect(settings.clone()).await.unwrap();
        let delivery = claim_one(&bus).await.expect("delivered again");
        assert_eq!(delivery.attempt, attempt, "the count survives the consumer's death");
    }
    let bus = KafkaBus::connect(settings).await.unwrap();
    assert!(claim_one(&bus).await.is_none(), "no delivery past max_attempts");
    let dead = bus.dead_letters("pack", 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(&dead[0].payload[..], b"kills its worker");
    assert!(dead[0].reason.contains("delivered 3 times"), "{}", dead[0].reason);
}

async fn claim_one(bus: &KafkaBus) -> Option<vera_bus::Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Some(delivery) = bus.claim("pack", 1, Duration::from_secs(60)).await.unwrap().pop() {
            return Some(delivery);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_time_skips_what_came_before() {
    let settings = settings();
    let bus = KafkaBus::connect(settings.clone()).await.unwrap();
    bus.ensure_topics(&["pack"]).await.unwrap();
    bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"before") }]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"after") }]).await.unwrap();
    assert_eq!(drain(&bus, 2).await.len(), 2);
    drop(bus);
    let bus = KafkaBus::connect(settings).await.unwrap();
    bus.replay("pack", ReplayFrom::TimeMillis(cut)).await.unwrap();
    let again = drain(&bus, 1).await;
    assert_eq!(again, vec!["after".to_owned()], "only what was published after the cut comes back");
    let extra = drain(&bus, 1).await;
    assert!(extra.is_empty(), "and nothing else: {extra:?}");
}

/// `close` leaves the group: another member takes the partition and its messages while
/// the closed bus (and its process) is still alive. Without `close`, the first consumer's
/// poll thread would keep the membership, and with it the one partition, possibly forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_consumer_leaves_the_group_and_another_member_takes_its_partition() {
    let settings = KafkaSettings { partitions: 1, ..settings() };
    let first = KafkaBus::connect(settings.clone()).await.unwrap();
    first.ensure_topics(&["pack"]).await.unwrap();
    first.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"one") }]).await.unwrap();
    assert_eq!(drain(&first, 1).await, ["one"]);
    first.close().await.unwrap();

    let second = KafkaBus::connect(settings).await.unwrap();
    second.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"two") }]).await.unwrap();
    assert_eq!(drain(&second, 1).await, ["two"], "the partition passed on, at the offset `first` committed");
    assert_eq!(second.depth("pack").await.unwrap().visible, 0);
    drop(first);
}
