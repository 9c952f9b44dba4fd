//! Tombstones on the embedded store and bus: delete → 410 from the reader, idempotence,
//! clear errors, compare-and-swap under concurrent deletes, events keyed by address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vera_bus::{Bus, topics};
use vera_lifecycle::{DeleteOutcome, LifecycleError};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, Message};
use vera_protocol::routing::sidecar_key_of;
use vera_protocol::sidecar::Sidecar;
use vera_store::ObjectStore;
use vera_store::shards::ShardStore;

mod common;

use common::*;

#[tokio::test]
async fn a_deleted_file_answers_410_and_the_deletion_is_published() {
    let world = world().await;
    let outcome = world.lifecycle.delete(&request(7, "gdpr-2026-0042")).await.unwrap();
    let DeleteOutcome::Tombstoned { segment_key } = &outcome else { panic!("{outcome:?}") };

    let sidecar = Sidecar::decode(&world.store.get(&sidecar_key_of(segment_key)).await.unwrap().body).unwrap();
    assert!(sidecar.is_tombstoned(&uid(7)));
    assert_eq!(sidecar.tombstones.len(), 1);
    assert_eq!(sidecar.tombstones[&uid(7)].operator, "dpo.alice");
    let encoded = String::from_utf8(sidecar.encode()).unwrap();
    assert!(!encoded.contains("secret payload"), "no file content in the sidecar");

    let events = messages(world.bus.as_ref(), topics::EVENTS).await;
    let addr = routing().locate(&uid(7), created_at(7)).unwrap();
    assert!(
        events.iter().any(|(key, message)| matches!(message, Message::TombstoneRequested(t) if t.uid == uid(7))
            && key.as_deref() == Some(addr.key_prefix().as_str())),
        "a tombstone event keyed by the shard address: {events:?}"
    );
    let audit = messages(world.bus.as_ref(), topics::AUDIT).await;
    assert!(audit.iter().any(|(_, m)| matches!(m, Message::AuditEvent(e) if e.action == AuditAction::Delete
        && e.uid.as_deref() == Some(uid(7).as_str()))));

    // The segment still has the bytes (it is immutable) but every read path consults the
    // sidecar and refuses them; other files in the segment are untouched.
    let shards = ShardStore::new(Arc::clone(&world.store));
    assert!(shards.read_file(&routing(), &uid(8), created_at(8)).await.is_ok());
    let gone = shards.read_file(&routing(), &uid(7), created_at(7)).await.unwrap_err();
    assert!(matches!(gone, vera_store::shards::ShardError::Gone { .. }), "{gone:?}");
}

#[tokio::test]
async fn deleting_twice_changes_nothing_the_second_time() {
    let world = world().await;
    let first = world.lifecycle.delete(&request(9, "req-1")).await.unwrap();
    let key = sidecar_key_of(first.segment_key());
    let before = world.store.get(&key).await.unwrap().body;
    let second = world.lifecycle.delete(&request(9, "req-2")).await.unwrap();
    assert_eq!(second, DeleteOutcome::AlreadyTombstoned { segment_key: first.segment_key().to_owned() });
    assert_eq!(world.store.get(&key).await.unwrap().body, before, "the sidecar is byte-identical");
    let sidecar = Sidecar::decode(&before).unwrap();
    assert_eq!(sidecar.tombstones[&uid(9)].request_id, "req-1", "the first request is the record");
}

#[tokio::test]
async fn unknown_and_malformed_files_are_clear_errors() {
    let world = world().await;
    let mut unknown = request(3, "req-3");
    unknown.uid = "f9999".into();
    match world.lifecycle.delete(&unknown).await {
        Err(LifecycleError::UnknownFile { uid, .. }) => assert_eq!(uid, "f9999"),
        other => panic!("{other:?}"),
    }
    let mut wrong_time = request(3, "req-3");
    wrong_time.created_at = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
    assert!(matches!(world.lifecycle.delete(&wrong_time).await, Err(LifecycleError::UnknownFile { .. })));
    let mut malformed = request(3, "req-3");
    malformed.uid = "control\u{7}character".into();
    let error = world.lifecycle.delete(&malformed).await.unwrap_err();
    assert!(matches!(error, LifecycleError::InvalidRequest(_)), "{error}");
    let mut bad_operator = request(3, "req-3");
    bad_operator.operator = String::new();
    assert!(world.lifecycle.delete(&bad_operator).await.unwrap_err().to_string().contains("operator"));
    assert!(messages(world.bus.as_ref(), topics::EVENTS).await.is_empty(), "nothing published for refusals");
}

#[tokio::test]
async fn concurrent_deletes_in_one_segment_all_land() {
    concurrent_deletes_land(world().await).await;
}

/// The same on S3 (moto, `VERA_TEST_S3_ENDPOINT`) with Object Lock: `If-Match` decides the
/// races, and the segment itself stays locked, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_with_object_lock_tombstones_race_safely_and_the_segment_stays_locked() {
    let s3 = s3_bucket("vera-lifecycle").await;
    let world = world_on(tempfile::tempdir().unwrap(), Arc::new(s3), thirty_days()).await;
    let store = Arc::clone(&world.store);
    let segment = concurrent_deletes_land(world).await;
    let error = store.delete(&segment).await.unwrap_err();
    assert_eq!(error.kind, vera_store::StoreErrorKind::Locked, "the segment is still under its lock");
}

/// Deletes up to 12 files of one segment at once; returns the segment's key.
async fn concurrent_deletes_land(world: World) -> String {
    let lifecycle = Arc::new(world.lifecycle);
    // Files with the same created_at day and address share a segment; delete 12 of them at once.
    let addr = routing().locate(&uid(2), created_at(2)).unwrap();
    let same: Vec<i64> =
        (1..=ROWS).filter(|id| routing().locate(&uid(*id), created_at(*id)).unwrap() == addr).take(12).collect();
    assert!(same.len() >= 6, "{same:?}");
    let handles: Vec<_> = same
        .iter()
        .map(|id| {
            let (lifecycle, request) = (Arc::clone(&lifecycle), request(*id, &format!("req-{id}")));
            tokio::spawn(async move { lifecycle.delete(&request).await })
        })
        .collect();
    let mut segment = None;
    for handle in handles {
        let outcome = handle.await.unwrap().unwrap();
        assert!(matches!(outcome, DeleteOutcome::Tombstoned { .. }), "{outcome:?}");
        segment = Some(outcome.segment_key().to_owned());
    }
    let sidecar = Sidecar::decode(&world.store.get(&sidecar_key_of(&segment.unwrap())).await.unwrap().body).unwrap();
    for id in &same {
        assert!(sidecar.is_tombstoned(&uid(*id)), "{} lost in a compare-and-swap race", uid(*id));
    }
    assert_eq!(sidecar.tombstones.len(), same.len());
    sidecar.segment_key
}

/// The reader answers 410 once its sidecar cache entry lapses (TTL) or is invalidated.
/// Measured here with a 1 s TTL; the seed's SLA is 48 hours.
#[tokio::test]
async fn the_reader_answers_410_within_its_sidecar_ttl() {
    let world = world().await;
    let reader = Probe::new(world.store.clone(), Duration::from_secs(1));
    assert_eq!(reader.status(11).await, 200);
    let deleted = Instant::now();
    world.lifecycle.delete(&request(11, "req-11")).await.unwrap();
    while reader.status(11).await != 410 {
        assert!(deleted.elapsed() < Duration::from_secs(5), "still served 5 s after the delete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = deleted.elapsed();
    eprintln!("delete → 410 in {} ms with a 1 s sidecar TTL", elapsed.as_millis());
    assert_eq!(reader.status(12).await, 200, "its neighbours are still served");
}

/// The tracker turns tombstone events into a repack request once 30 % of a segment's
/// stored bytes are tombstoned, and not before; a malformed event is dead-lettered.
#[tokio::test]
async fn tombstones_past_the_threshold_request_a_repack_by_themselves() {
    use vera_bus::Outgoing;
    use vera_lifecycle::tracker::{DEFAULT_THRESHOLD, run_tracker};
    let world = world().await;
    let bus: Arc<dyn Bus> = world.bus.clone();
    let lifecycle = Arc::new(world.lifecycle);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tracker =
        tokio::spawn(run_tracker(Arc::clone(&lifecycle), Arc::clone(&bus), DEFAULT_THRESHOLD, shutdown.clone()));
    let drained = |bus: Arc<dyn Bus>| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let depth = bus.depth(topics::EVENTS).await.unwrap();
            if depth.visible == 0 && depth.in_flight == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "events not consumed: {depth:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    bus.publish(topics::EVENTS, vec![Outgoing { key: None, payload: bytes::Bytes::from_static(b"{not json") }])
        .await
        .unwrap();

    let addr = routing().locate(&uid(2), created_at(2)).unwrap();
    let mut same: Vec<i64> =
        (1..=ROWS).filter(|id| routing().locate(&uid(*id), created_at(*id)).unwrap() == addr).collect();
    same.sort_by_key(|id| std::cmp::Reverse(*id)); // the largest files first
    let first = lifecycle.delete(&request(same[0], "req-first")).await.unwrap();
    let segment = first.segment_key().to_owned();
    drained(Arc::clone(&bus)).await;
    let (dead, total) = lifecycle.tombstoned_share(&segment).await.unwrap();
    assert!((dead as f64) < 0.3 * total as f64, "one file is under the threshold: {dead}/{total}");
    assert_eq!(bus.depth(topics::REPACK).await.unwrap().visible, 0, "no repack below the threshold");
    assert_eq!(bus.depth(topics::EVENTS).await.unwrap().dead, 1, "the malformed event is dead-lettered");

    for id in &same[1..] {
        lifecycle.delete(&request(*id, &format!("req-{id}"))).await.unwrap();
        let (dead, total) = lifecycle.tombstoned_share(&segment).await.unwrap();
        if dead as f64 >= 0.3 * total as f64 {
            break;
        }
    }
    drained(Arc::clone(&bus)).await;
    // The tracker reads the share when it handles an event, so events it handles after
    // the crossing each request the repack again (idempotent downstream); none before.
    let requests = messages(bus.as_ref(), topics::REPACK).await;
    assert!(!requests.is_empty(), "the crossing requested a repack");
    for (key, message) in &requests {
        let Message::RepackRequested(repack) = message else { panic!("{message:?}") };
        assert_eq!(key.as_deref(), Some(addr.key_prefix().as_str()), "keyed by shard address");
        assert_eq!(repack.key, segment);
        assert!(repack.tombstoned_bytes as f64 >= 0.3 * repack.total_bytes as f64, "{repack:?}");
    }
    shutdown.cancel();
    let stats = tracker.await.unwrap();
    assert_eq!(stats.dead_lettered, 1);
    let later = messages(bus.as_ref(), topics::REPACK).await.len();
    assert_eq!(stats.repacks_requested as usize, requests.len() + later, "every request is on the repack topic");
    assert!(stats.tombstone_events >= 2);
}
