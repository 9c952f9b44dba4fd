//! The RabbitMQ bus against the real broker on the machine (`VERA_AMQP_URI`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; `scripts/services` starts it).

use std::time::Duration;

use bytes::Bytes;
use vera_bus::{Bus, BusErrorKind, Outgoing, conformance};
use vera_bus_amqp::{AmqpBus, AmqpSettings};

fn uri() -> String {
    std::env::var("VERA_AMQP_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn settings() -> AmqpSettings {
    AmqpSettings {
        prefix: format!("vera-test-{:08x}.", rand_suffix()),
        max_attempts: conformance::MAX_ATTEMPTS,
        ..AmqpSettings::new(uri())
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_bus_passes_conformance() {
    let bus = AmqpBus::connect(settings()).await.expect("connect to RabbitMQ");
    conformance::run_all(&bus).await;
    tear_down(&bus).await;
}

async fn tear_down(bus: &AmqpBus) {
    let topics = bus.ensured_topics();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    bus.delete_topics(&topics).await.expect("delete test queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reopened_and_its_claims_come_back() {
    // It once hung in CI (the broker held the closing connection); a hang fails here, not
    // at CI's 90-minute limit.
    tokio::time::timeout(Duration::from_secs(120), dropped_connection_comes_back())
        .await
        .expect("the reconnect test finished within 120 s");
}

async fn dropped_connection_comes_back() {
    let bus = AmqpBus::connect(settings()).await.unwrap();
    bus.ensure_topics(&["pack"]).await.unwrap();
    bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"task") }]).await.unwrap();
    let first = wait_claim(&bus).await;
    assert_eq!(first.attempt, 1);
    bus.drop_connection().await;
    let error = bus.ack(&first).await.expect_err("a claim from a dead connection cannot be acked");
    assert_eq!(error.kind, BusErrorKind::StaleReceipt);
    let again = wait_claim(&bus).await;
    assert_eq!(again.payload, first.payload, "the broker requeued the message held by the lost connection");
    assert_eq!(again.attempt, 2, "the broker counted the lost delivery");
    bus.ack(&again).await.unwrap();
    bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"after") }]).await.unwrap();
    let after = wait_claim(&bus).await;
    assert_eq!(&after.payload[..], b"after");
    bus.ack(&after).await.unwrap();
    tear_down(&bus).await;
}

async fn wait_claim(bus: &AmqpBus) -> vera_bus::Delivery {
    for _ in 0..100 {
        if let Some(delivery) = bus.claim("pack", 1, Duration::from_secs(60)).await.unwrap().pop() {
            return delivery;
        }
    }
    panic!("no delivery within the wait");
}

#[tokio::test]
async fn missing_queues_and_wrong_credentials_get_errors_that_say_what_to_fix() {
    let bus = AmqpBus::connect(settings()).await.unwrap();
    let error = bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"x") }]).await.unwrap_err();
    assert_eq!(error.kind, BusErrorKind::Config);
    assert!(error.to_string().contains("vera setup-bus"), "{error}");
    let error = bus.claim("pack", 1, Duration::from_secs(1)).await.unwrap_err();
    assert!(error.to_string().contains("vera setup-bus"), "{error}");

    let wrong = AmqpSettings::new(uri().replacen("guest:guest", "guest:wrong-password", 1));
    let error = AmqpBus::connect(wrong).await.err().expect("wrong password is refused");
    assert_eq!(error.kind, BusErrorKind::Config, "{error:?}");
    assert!(!error.to_string().contains("wrong-password"), "the password never appears: {error}");

    let unreachable = AmqpSettings::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let error = AmqpBus::connect(unreachable).await.err().expect("nothing listens on port 1");
    assert_eq!(error.kind, BusErrorKind::Transient);
    assert!(error.to_string().contains("reachable"), "{error}");
}
