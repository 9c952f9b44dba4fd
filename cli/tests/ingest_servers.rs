//! Ingest on real servers: inline events through RabbitMQ and Kafka (tansu), a Kafka
//! replay that rebuilds ingested files into an empty archive from the topic alone, and S3
//! Event Notifications that moto's S3 sends to moto's SQS for a landing bucket.
//!
//! Endpoints come from the environment with loopback defaults: VERA_AMQP_URI,
//! VERA_KAFKA_BROKERS, VERA_TEST_S3_ENDPOINT (moto, S3 and SQS).
#![cfg(all(feature = "s3", feature = "sqs", feature = "kafka", feature = "amqp"))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use vera_bus::{Bus, topics};
use vera_protocol::Timestamp;
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, PutOptions};
use vera_worker::WorkerSettings;
use vera_worker::ingest::{IngestSettings, IngestStats, IngestWorker, inline_event};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(1).unwrap())
}

fn body(i: usize) -> Vec<u8> {
    format!("{{\"trade\":{i},\"fields\":\"{}\"}}", "f".repeat(i % 200)).into_bytes()
}

fn created(i: usize) -> Timestamp {
    Timestamp::parse(&format!("2026-11-{:02}T{:02}:30:00Z", 20 + i % 2, i % 24)).unwrap()
}

fn now() -> Timestamp {
    vera_store::Clock::now(&vera_store::SystemClock)
}

/// Runs an ingest worker on `bus` into `store` until the ingest topic has been empty for
/// a second.
async fn ingest(
    bus: Arc<dyn Bus>,
    store: Arc<dyn ObjectStore>,
    landing: Arc<dyn ObjectStore>,
    ingest: IngestSettings,
) -> IngestStats {
    let runner = IngestWorker {
        worker_id: "ingest-servers".into(),
        bus: Arc::clone(&bus),
        shards: ShardStore::new(store),
        landing,
        routing: routing(),
        settings: Arc::new(WorkerSettings {
            retention: None,
            visibility_timeout_seconds: 60,
            ..WorkerSettings::default()
        }),
        ingest,
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let watcher = tokio::spawn(async move {
        let mut quiet = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match bus.depth(topics::INGEST).await {
                Ok(depth) if depth.visible == 0 && depth.in_flight == 0 => quiet += 1,
                _ => quiet = 0,
            }
            if quiet >= 4 {
                token.cancel();
                return;
            }
        }
    });
    let stats =
        tokio::time::timeout(Duration::from_secs(120), runner.run(shutdown)).await.expect("ingest drains the topic");
    watcher.await.unwrap();
    stats
}

fn settings() -> IngestSettings {
    IngestSettings { linger: Duration::from_millis(500), ..IngestSettings::default() }
}

/// Every file `0..n` reads back from `store` with its bytes.
async fn all_readable(store: Arc<dyn ObjectStore>, n: usize) {
    let shards = ShardStore::new(store);
    for i in 0..n {
        let file = shards.read_file(&routing(), &format!("t-{i:04}"), created(i)).await.unwrap();
        assert_eq!(file.bytes, body(i), "t-{i:04}");
    }
}

async fn publish_inline(bus: &dyn Bus, n: usize) {
    let events: Vec<_> =
        (0..n).map(|i| inline_event(&format!("t-{i:04}"), created(i), None, &body(i), now())).collect();
    for chunk in events.chunks(100) {
        bus.publish(topics::INGEST, chunk.to_vec()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_events_through_rabbitmq() {
    let uri = env_or("VERA_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let bus_settings = vera_bus_amqp::AmqpSettings {
        prefix: format!("vera-ingest-{}.", run_id()),
        prefetch: 2000,
        ..vera_bus_amqp::AmqpSettings::new(uri)
    };
    let bus: Arc<dyn Bus> = Arc::new(vera_bus_amqp::AmqpBus::connect(bus_settings).await.unwrap());
    bus.ensure_topics(&topics::ALL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    publish_inline(bus.as_ref(), 600).await;
    bus.publish(topics::INGEST, vec![vera_bus::Outgoing { key: None, payload: Bytes::from_static(b"{broken") }])
        .await
        .unwrap();
    let stats = ingest(Arc::clone(&bus), Arc::clone(&store), Arc::clone(&store), settings()).await;
    assert_eq!(stats.files_stored, 600);
    assert_eq!(stats.dead_lettered, 1);
    all_readable(store, 600).await;
    let dead = bus.dead_letters(topics::INGEST, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_events_through_kafka_and_a_replay_rebuilds_a_lost_archive() {
    let run = run_id();
    let kafka = vera_bus_kafka::KafkaSettings {
        prefix: format!("vera-ingest-{run}."),
        group: format!("vera-ingest-{run}"),
        partitions: 2,
        ..vera_bus_kafka::KafkaSettings::new(env_or("VERA_KAFKA_BROKERS", "127.0.0.1:9092"))
    };
    let kafka_bus = Arc::new(vera_bus_kafka::KafkaBus::connect(kafka.clone()).await.unwrap());
    let bus: Arc<dyn Bus> = kafka_bus.clone();
    bus.ensure_topics(&topics::ALL).await.unwrap();
    let first = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(first.path()).unwrap());
    publish_inline(bus.as_ref(), 500).await;
    let stats = ingest(Arc::clone(&bus), Arc::clone(&store), Arc::clone(&store), settings()).await;
    assert_eq!((stats.files_stored, stats.dead_lettered), (500, 0));
    all_readable(Arc::clone(&store), 500).await;

    // Disaster: the archive is gone, and so is every worker. The ingest topic alone
    // rebuilds it: rewind the group (`vera replay --topic ingest`) and ingest into an
    // empty store with new workers.
    bus.close().await.unwrap();
    drop(bus);
    kafka_bus.replay(topics::INGEST, vera_bus_kafka::ReplayFrom::Offset(0)).await.unwrap();
    drop(kafka_bus);
    let second = tempfile::tempdir().unwrap();
    let rebuilt: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(second.path()).unwrap());
    let bus: Arc<dyn Bus> = Arc::new(vera_bus_kafka::KafkaBus::connect(kafka).await.unwrap());
    let again = ingest(Arc::clone(&bus), Arc::clone(&rebuilt), Arc::clone(&rebuilt), settings()).await;
    assert_eq!(again.files_stored, 500);
    all_readable(Arc::clone(&rebuilt), 500).await;
    assert_eq!(file_hashes(store).await, file_hashes(rebuilt).await, "the same files with the same hashes");
}

/// uid → content hash of every file in every segment.
async fn file_hashes(store: Arc<dyn ObjectStore>) -> BTreeMap<String, String> {
    let shards = ShardStore::new(Arc::clone(&store));
    let mut files = BTreeMap::new();
    for meta in store.list("e").await.unwrap() {
        if meta.key.ends_with(".vera") {
            for file in shards.index(&meta.key).await.unwrap().files() {
                files.insert(file.uid.to_owned(), vera_protocol::hex::encode(&file.entry.content_hash));
            }
        }
    }
    files
}

fn moto() -> String {
    env_or("VERA_TEST_S3_ENDPOINT", "http://127.0.0.1:5055")
}

fn sdk_config() -> aws_config::SdkConfig {
    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "moto")))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_notifications_from_a_moto_landing_bucket_reach_the_ingest_queue() {
    use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
    let run = run_id();
    let sqs = vera_bus_sqs::SqsSettings {
        endpoint: Some(moto()),
        prefix: format!("vera-ingest-{run}-"),
        wait_seconds: 1,
        ..vera_bus_sqs::SqsSettings::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(vera_bus_sqs::SqsBus::from_sdk_config(&sdk_config(), sqs).unwrap());
    bus.ensure_topics(&topics::ALL).await.unwrap();
    let bucket = format!("vera-landing-{run}");
    let landing = vera_store_s3::S3Store::from_sdk_config(
        &sdk_config(),
        &vera_store_s3::S3Settings {
            endpoint: Some(moto()),
            force_path_style: true,
            ..vera_store_s3::S3Settings::new(&bucket)
        },
    );
    let setup = vera_store_s3::BucketSetup { default_retention: None, allow_without_object_lock: true };
    vera_store_s3::ensure_bucket(&landing, setup).await.unwrap();
    // What an operator configures once: the landing bucket notifies the ingest queue.
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:vera-ingest-{run}-ingest");
    let queue =
        QueueConfiguration::builder().queue_arn(queue_arn).events(Event::from("s3:ObjectCreated:*")).build().unwrap();
    landing
        .client()
        .put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(NotificationConfiguration::builder().queue_configurations(queue).build())
        .send()
        .await
        .unwrap();
    // Upstream drops files; uid and day come from the key.
    for i in 0..40 {
        let key = format!("landing/{}/t-{i:04}", &created(i).to_rfc3339()[..10]);
        landing.put(&key, Bytes::from(body(i)), PutOptions::create()).await.unwrap();
    }
    // Outside the landing prefix: dead-lettered with its reason.
    landing.put("elsewhere/stray.bin", Bytes::from_static(b"stray"), PutOptions::create()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let mut settings = settings();
    settings.landing.bucket = Some(bucket.clone());
    settings.landing.key_pattern = regex::Regex::new(r"(?P<created_at>\d{4}-\d{2}-\d{2})/(?P<uid>[^/]+)").unwrap();
    settings.landing.created_at = vera_worker::ingest::CreatedAtFrom::Key;
    settings.expire_staged = true;
    let landing: Arc<dyn ObjectStore> = Arc::new(landing);
    let stats = ingest(Arc::clone(&bus), Arc::clone(&store), Arc::clone(&landing), settings).await;
    assert_eq!(stats.files_stored, 40, "moto sent a notification for every object");
    assert_eq!(stats.dead_lettered, 1);
    let shards = ShardStore::new(store);
    for i in 0..40 {
        let day = Timestamp::parse(&format!("{}T00:00:00Z", &created(i).to_rfc3339()[..10])).unwrap();
        assert_eq!(shards.read_file(&routing(), &format!("t-{i:04}"), day).await.unwrap().bytes, body(i));
    }
    let left: Vec<String> = landing.list("landing/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert!(left.is_empty(), "stored files expire from the landing bucket: {left:?}");
}
