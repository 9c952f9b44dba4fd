//! The embedded SQLite bus passes the shared Bus conformance suite, and survives being
//! reopened (what a restart after `kill -9` looks like to the queue).

use std::time::Duration;

use bytes::Bytes;
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, Outgoing, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bus_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(dir.path().join("bus.sqlite"), conformance::MAX_ATTEMPTS).await.unwrap();
    conformance::run_all(&bus).await;
}

#[tokio::test]
async fn messages_and_claims_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    {
        let bus = SqliteBus::open(&path, 5).await.unwrap();
        let messages = (0..3).map(|i| Outgoing { key: None, payload: Bytes::from(vec![i]) }).collect();
        bus.publish("pack", messages).await.unwrap();
        let claimed = bus.claim("pack", 1, Duration::from_millis(200)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        // Dropped without ack: the process "dies" holding a claim.
    }
    let bus = SqliteBus::open(&path, 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claimed = bus.claim("pack", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 3, "the abandoned claim is redelivered with the others");
    assert_eq!(claimed.iter().map(|d| d.attempt).max(), Some(2));
}

#[tokio::test]
async fn zero_max_attempts_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = SqliteBus::open(dir.path().join("b.sqlite"), 0).await.unwrap_err();
    assert_eq!(error.kind, vera_bus::BusErrorKind::Config);
}
