//! The SQS bus against the moto server (`VERA_TEST_SQS_ENDPOINT`, default
//! `http://127.0.0.1:5055`; `scripts/services` starts it).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use bytes::Bytes;
use vera_bus::{Bus, BusErrorKind, Outgoing, conformance};
use vera_bus_sqs::{SqsBus, SqsSettings};

fn endpoint() -> String {
    std::env::var("VERA_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".to_owned())
}

fn sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "moto")))
        .build()
}

fn settings() -> SqsSettings {
    SqsSettings {
        endpoint: Some(endpoint()),
        prefix: format!("vera-test-{:08x}-", rand::random::<u32>()),
        max_attempts: conformance::MAX_ATTEMPTS,
        wait_seconds: 0,
        ..SqsSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_bus_passes_conformance_on_moto() {
    let bus = SqsBus::from_sdk_config(&sdk_config(), settings()).unwrap();
    // Unordered topics are SQS standard queues: at-least-once delivery.
    conformance::run_all_with(&bus, conformance::Claims::AtLeastOnce).await;
}

#[tokio::test]
async fn binary_payloads_round_trip_and_ordered_topics_are_fifo() {
    let bus = SqsBus::from_sdk_config(&sdk_config(), settings()).unwrap();
    bus.ensure_topics(&["pack", "events"]).await.unwrap();
    let binary = Bytes::from(vec![0u8, 255, 1, 254, 0]);
    bus.publish("pack", vec![Outgoing { key: None, payload: binary.clone() }]).await.unwrap();
    let got = bus.claim("pack", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, binary);
    bus.ack(&got[0]).await.unwrap();

    // The same event published twice (a retried publish) is stored once: FIFO dedup.
    let event =
        Outgoing { key: Some("e1/d2026-11-25/n04-b".to_owned()), payload: Bytes::from_static(b"{\"sealed\":1}") };
    bus.publish("events", vec![event.clone()]).await.unwrap();
    bus.publish("events", vec![event]).await.unwrap();
    let got = bus.claim("events", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some("e1/d2026-11-25/n04-b"));
    bus.ack(&got[0]).await.unwrap();
    assert_eq!(bus.depth("events").await.unwrap().visible, 0);
}

#[tokio::test]
async fn missing_queues_and_unreachable_servers_get_errors_that_say_what_to_fix() {
    let bus = SqsBus::from_sdk_config(&sdk_config(), settings()).unwrap();
    let error = bus.publish("pack", vec![Outgoing { key: None, payload: Bytes::from_static(b"x") }]).await.unwrap_err();
    assert_eq!(error.kind, BusErrorKind::Config, "{error:?}");
    assert!(error.to_string().contains("vera setup-bus"), "{error}");

    let unreachable =
        SqsSettings { endpoint: Some("http://127.0.0.1:1".to_owned()), max_request_attempts: 1, ..settings() };
    let bus = SqsBus::from_sdk_config(&sdk_config(), unreachable).unwrap();
    let error = bus.depth("pack").await.unwrap_err();
    assert_eq!(error.kind, BusErrorKind::Transient);
    assert!(error.to_string().contains("cannot reach SQS at http://127.0.0.1:1"), "{error}");

    let error = SqsBus::from_sdk_config(&sdk_config(), SqsSettings { max_message_bytes: 2 << 20, ..settings() })
        .err()
        .expect("over SQS's limit");
    assert_eq!(error.kind, BusErrorKind::Config);
}
