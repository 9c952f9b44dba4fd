//! Repack, retention and legal hold on the embedded store and bus, and on moto S3 with
//! Object Lock: erased bytes leave, live files stay readable exactly once, a repack
//! interrupted at any store request resumes, holds and retention survive it, retention
//! never shortens.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use vera_bus::{Bus, topics};
use vera_lifecycle::repack::{ARCHIVE_TAG, RepackSettings, run_repacker};
use vera_lifecycle::tracker::{DEFAULT_THRESHOLD, run_tracker};
use vera_lifecycle::{HoldRequest, LifecycleError, RetainRequest};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, Message};
use vera_protocol::routing::sidecar_key_of;
use vera_protocol::sidecar::Sidecar;
use vera_store::shards::{ShardError, ShardStore};
use vera_store::{GetOutcome, ObjectMeta, ObjectStore, PutOptions, PutOutcome, Retention, StoreError, StoreErrorKind};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn retain(id: i64, until: &str) -> RetainRequest {
    RetainRequest {
        uid: uid(id),
        created_at: created_at(id),
        retain_until: at(until),
        request_id: format!("keep-{id}"),
        operator: "records.bob".into(),
    }
}

fn hold(id: i64, on: bool) -> HoldRequest {
    HoldRequest {
        uid: uid(id),
        created_at: created_at(id),
        on,
        request_id: "case-77".into(),
        operator: "legal.carol".into(),
    }
}

async fn sidecar(store: &dyn ObjectStore, segment: &str) -> Sidecar {
    Sidecar::decode(&store.get(&sidecar_key_of(segment)).await.unwrap().body).unwrap()
}

/// The file ids of one segment split as a test of repack wants them: `erased` are
/// tombstoned and droppable, `held` and `retained` are tombstoned but protected, `live`
/// are untouched.
struct Plan {
    segment: String,
    live: Vec<i64>,
    erased: Vec<i64>,
    held: i64,
    retained: i64,
}

/// Tombstones about half of one segment, one of them under a legal hold and one under a
/// retention extension.
async fn erase_half(world: &World) -> Plan {
    let same = same_segment_as_2();
    assert!(same.len() >= 10, "{same:?}");
    let (gone, live) = same.split_at(same.len() / 2);
    let (held, retained, erased) = (gone[0], gone[1], gone[2..].to_vec());
    world.lifecycle.hold(&hold(held, true)).await.unwrap();
    world.lifecycle.retain(&retain(retained, "2099-01-01T00:00:00Z")).await.unwrap();
    let mut segment = String::new();
    for id in gone {
        segment = world.lifecycle.delete(&request(*id, &format!("gdpr-{id}"))).await.unwrap().segment_key().to_owned();
    }
    Plan { segment, live: live.to_vec(), erased, held, retained }
}

/// Everything a finished repack of `plan.segment` must satisfy.
async fn check_repacked(world: &World, plan: &Plan) {
    let store = world.store.as_ref();
    let shards = ShardStore::new(Arc::clone(&world.store));
    let old = sidecar(store, &plan.segment).await;
    let superseded = old.superseded.clone().expect("the old segment is superseded");
    let new_key = superseded.segment_key.clone().expect("live files moved");
    assert!(new_key.ends_with(".r1.vera"), "{new_key}");

    // Live files: readable, byte-identical, from the new segment only.
    for id in &plan.live {
        let read = shards.read_file(&routing(), &uid(*id), created_at(*id)).await.unwrap();
        assert_eq!(read.bytes, payload(*id), "{}", uid(*id));
        assert_eq!(read.key, new_key, "{} is read from the new segment", uid(*id));
    }
    // Erased, held and retained files: gone for readers.
    for id in plan.erased.iter().chain([&plan.held, &plan.retained]) {
        let error = shards.read_file(&routing(), &uid(*id), created_at(*id)).await.unwrap_err();
        assert!(matches!(error, ShardError::Gone { .. }), "{}: {error:?}", uid(*id));
    }
    // The new segment holds exactly the live and the protected files; the erased bytes left.
    let index = shards.index(&new_key).await.unwrap();
    let in_new: BTreeSet<String> = index.files().map(|f| f.uid.to_owned()).collect();
    let expected: BTreeSet<String> = plan.live.iter().chain([&plan.held, &plan.retained]).map(|id| uid(*id)).collect();
    assert_eq!(in_new, expected);
    let body = store.get(&new_key).await.unwrap().body;
    for id in &plan.erased {
        let secret = format!("secret payload of file {id}:");
        assert!(!body.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} left bytes behind", uid(*id));
    }
    // State carried over: tombstones, the hold and the retention of moved files.
    let new = sidecar(store, &new_key).await;
    assert_eq!(new.repacked_from.as_deref(), Some(plan.segment.as_str()));
    assert!(new.is_held(&uid(plan.held)) && new.is_tombstoned(&uid(plan.held)));
    assert_eq!(new.retention[&uid(plan.retained)].retain_until, at("2099-01-01T00:00:00Z"));
    assert!(new.tombstones.keys().all(|u| expected.contains(u)), "no tombstone for a file not in it");
    assert!(new.superseded.is_none());
    // Locks: the new segment is held and kept as long as its longest-kept file.
    let meta = store.head(&new_key).await.unwrap();
    assert!(meta.legal_hold, "a held file moved in: the segment is held");
    assert!(!store.head(&plan.segment).await.unwrap().legal_hold, "the old copy is no longer held");
    assert!(meta.retention.unwrap().retain_until >= at("2099-01-01T00:00:00Z"));
    assert_eq!(
        store.tags(&plan.segment).await.unwrap().get(ARCHIVE_TAG.0).map(String::as_str),
        Some(ARCHIVE_TAG.1),
        "the old segment is tagged for the archive rule"
    );
}

async fn anchors(bus: &dyn Bus) -> Vec<vera_protocol::message::AuditEvent> {
    messages(bus, topics::AUDIT)
        .await
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::AuditEvent(event) if event.action == AuditAction::Repack => Some(event),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn repack_drops_erased_files_and_keeps_live_held_and_retained_ones() {
    let world = world().await;
    let plan = erase_half(&world).await;
    let reader = Probe::new(Arc::clone(&world.store), Duration::ZERO);
    let report = world.lifecycle.repack(&plan.segment, "repack-1", &RepackSettings::default()).await.unwrap();
    assert!(report.repacked && !report.already_superseded);
    assert_eq!(report.dropped, plan.erased.len() as u64);
    assert_eq!(report.moved, plan.live.len() as u64 + 2);
    assert_eq!(report.kept_tombstoned, 2);
    check_repacked(&world, &plan).await;
    for id in &plan.live {
        assert_eq!(reader.status(*id).await, 200);
    }
    for id in &plan.erased {
        assert_eq!(reader.status(*id).await, 410);
    }

    // The anchor links both hashes and commits to the moved uids.
    let anchor = anchors(world.bus.as_ref()).await.pop().expect("a REPACK anchor");
    let moved: BTreeSet<String> = plan.live.iter().chain([&plan.held, &plan.retained]).map(|id| uid(*id)).collect();
    let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
    let root = vera_protocol::hex::encode(&vera_protocol::merkle::root(&moved));
    assert_eq!(anchor.details["moved_uids_merkle_root"], root);
    assert_eq!(anchor.segment_key.as_deref(), Some(plan.segment.as_str()));
    let new_key = report.new_key.clone().unwrap();
    let new_hash = world.store.head(&new_key).await.unwrap().metadata["vera-object-blake3"].clone();
    assert_eq!(anchor.details["new_segment_hash"], new_hash);
    assert_eq!(
        anchor.details["old_segment_hash"],
        world.store.head(&plan.segment).await.unwrap().metadata["vera-object-blake3"]
    );

    // Again: nothing changes.
    let again = world.lifecycle.repack(&plan.segment, "repack-2", &RepackSettings::default()).await.unwrap();
    assert!(again.already_superseded);
    assert_eq!(world.store.head(&new_key).await.unwrap().metadata["vera-object-blake3"], new_hash);

    // Lifecycle operations now land on the new segment.
    let victim = plan.live[0];
    let outcome = world.lifecycle.delete(&request(victim, "gdpr-late")).await.unwrap();
    assert_eq!(outcome.segment_key(), new_key);
    assert_eq!(reader.status(victim).await, 410);
    let dropped = world.lifecycle.delete(&request(plan.erased[0], "gdpr-again")).await.unwrap();
    assert!(matches!(dropped, vera_lifecycle::DeleteOutcome::AlreadyTombstoned { .. }), "{dropped:?}");
    let erased = world.lifecycle.hold(&hold(plan.erased[0], true)).await.unwrap_err();
    assert!(matches!(erased, LifecycleError::Erased { .. }), "{erased:?}");
    assert!(sidecar(world.store.as_ref(), &plan.segment).await.tombstones.len() == plan.erased.len() + 2, "frozen");
}

/// A store that stops answering after `budget` requests, as a process killed mid-way.
struct DiesAfter {
    inner: Arc<dyn ObjectStore>,
    budget: AtomicI64,
}

impl DiesAfter {
    fn check(&self, key: &str) -> Result<(), StoreError> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) > 0 {
            Ok(())
        } else {
            Err(StoreError::new(StoreErrorKind::Transient, key, "the process died here"))
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for DiesAfter {
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<PutOutcome, StoreError> {
        self.check(key)?;
        self.inner.put(key, body, options).await
    }
    async fn get(&self, key: &str) -> Result<GetOutcome, StoreError> {
        self.check(key)?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        self.check(key)?;
        self.inner.get_range(key, range).await
    }
    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64), StoreError> {
        self.check(key)?;
        self.inner.get_suffix(key, len).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.check(key)?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.check(prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.delete(key).await
    }
    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.set_retention(key, retention).await
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.set_legal_hold(key, on).await
    }
    async fn set_tags(&self, key: &str, tags: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.set_tags(key, tags).await
    }
    async fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.check(key)?;
        self.inner.tags(key).await
    }
}

/// Kills the repack after 0, 1, 2, … store requests until one run gets through, and
/// resumes each interrupted one. At the moment of death every file is readable exactly
/// as before or after (never missing, never twice), and the resumed repack ends in the
/// same state as an uninterrupted one, with byte-identical segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repack_interrupted_at_any_request_resumes() {
    let mut reference_hash = None;
    for budget in 0.. {
        let world = world().await;
        let plan = erase_half(&world).await;
        let dying = Arc::new(DiesAfter { inner: Arc::clone(&world.store), budget: AtomicI64::new(budget) });
        let interrupted =
            lifecycle_on(&world, dying).repack(&plan.segment, "repack-1", &RepackSettings::default()).await;
        let shards = ShardStore::new(Arc::clone(&world.store));
        for id in &plan.live {
            let read = shards.read_file(&routing(), &uid(*id), created_at(*id)).await;
            assert_eq!(read.unwrap().bytes, payload(*id), "{} after death at request {budget}", uid(*id));
        }
        for id in &plan.erased {
            assert!(shards.read_file(&routing(), &uid(*id), created_at(*id)).await.is_err());
        }
        let finished = interrupted.is_ok();
        if !finished {
            let resumed = world.lifecycle.repack(&plan.segment, "repack-2", &RepackSettings::default()).await;
            assert!(resumed.is_ok(), "resume after death at request {budget}: {resumed:?}");
        }
        check_repacked(&world, &plan).await;
        let new_key = sidecar(world.store.as_ref(), &plan.segment).await.superseded.unwrap().segment_key.unwrap();
        let hash = world.store.head(&new_key).await.unwrap().metadata["vera-object-blake3"].clone();
        assert_eq!(reference_hash.get_or_insert(hash.clone()), &hash, "death at request {budget}");
        if finished {
            eprintln!("a repack takes {budget} store requests; each death point resumed");
            assert!(budget >= 10, "suspiciously few requests: {budget}");
            break;
        }
    }
}

#[tokio::test]
async fn retention_only_grows_and_holds_follow_the_files() {
    let world = world().await;
    let id = same_segment_as_2()[0];
    let first = world.lifecycle.retain(&retain(id, "2090-01-01T00:00:00Z")).await.unwrap();
    assert!(first.changed);
    assert_eq!(first.segment_retain_until, Some(at("2090-01-01T00:00:00Z")), "the segment lock follows");
    let segment = first.segment_key.clone();

    // Shorter: refused by VERA, nothing changes anywhere.
    let refused = world.lifecycle.retain(&retain(id, "2080-01-01T00:00:00Z")).await.unwrap_err();
    assert!(matches!(refused, LifecycleError::WouldShortenRetention { .. }), "{refused:?}");
    assert_eq!(
        sidecar(world.store.as_ref(), &segment).await.retention[&uid(id)].retain_until,
        at("2090-01-01T00:00:00Z")
    );
    // Shorter than the segment's own lock, for a file without an extension: refused too.
    let other = same_segment_as_2()[1];
    let refused = world.lifecycle.retain(&retain(other, "2085-01-01T00:00:00Z")).await.unwrap_err();
    assert!(matches!(refused, LifecycleError::WouldShortenRetention { .. }), "{refused:?}");
    let past = world.lifecycle.retain(&retain(id, "2001-01-01T00:00:00Z")).await.unwrap_err();
    assert!(matches!(past, LifecycleError::InvalidRequest(_)), "{past:?}");
    // The same extension again changes nothing.
    assert!(!world.lifecycle.retain(&retain(id, "2090-01-01T00:00:00Z")).await.unwrap().changed);

    // Holds: the segment stays held while any file in it is.
    let (a, b) = (same_segment_as_2()[2], same_segment_as_2()[3]);
    assert!(world.lifecycle.hold(&hold(a, true)).await.unwrap().segment_legal_hold);
    assert!(world.lifecycle.hold(&hold(b, true)).await.unwrap().segment_legal_hold);
    assert!(world.lifecycle.hold(&hold(a, false)).await.unwrap().segment_legal_hold, "b is still held");
    let released = world.lifecycle.hold(&hold(b, false)).await.unwrap();
    assert!(!released.segment_legal_hold && released.changed);
    assert!(!world.lifecycle.hold(&hold(b, false)).await.unwrap().changed, "clearing twice changes nothing");

    // Audit: RETAIN and HOLD events, by the operators who asked.
    let audit = messages(world.bus.as_ref(), topics::AUDIT).await;
    let actions: Vec<(AuditAction, String)> = audit
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::AuditEvent(e) => Some((e.action, e.actor)),
            _ => None,
        })
        .collect();
    assert!(actions.contains(&(AuditAction::Retain, "records.bob".to_owned())));
    assert!(actions.contains(&(AuditAction::Hold, "legal.carol".to_owned())));
}

/// Tombstones past the threshold → tracker → repack topic → repacker, with nobody
/// calling repack by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_past_the_threshold_repack_by_themselves_from_bus_events() {
    let world = world().await;
    let bus: Arc<dyn Bus> = world.bus.clone();
    let lifecycle = Arc::new(world.lifecycle);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tracker =
        tokio::spawn(run_tracker(Arc::clone(&lifecycle), Arc::clone(&bus), DEFAULT_THRESHOLD, shutdown.clone()));
    let repacker = tokio::spawn(run_repacker(
        Arc::clone(&lifecycle),
        Arc::clone(&bus),
        RepackSettings::default(),
        shutdown.clone(),
        false,
    ));
    let same = same_segment_as_2();
    let erased = &same[..same.len() / 2];
    let mut segment = String::new();
    for id in erased {
        segment = lifecycle.delete(&request(*id, &format!("gdpr-{id}"))).await.unwrap().segment_key().to_owned();
    }
    let store = ShardStore::new(Arc::clone(&world.store));
    // A deadline, not a speed goal: unloaded this takes well under a second, but CI once
    // missed 30 s while the machine's two cores were also compiling.
    let deadline = Instant::now() + Duration::from_secs(120);
    let new_key = loop {
        let old = vera_lifecycle::sidecar_of(world.store.as_ref(), &segment).await.unwrap().unwrap();
        if let Some(superseded) = old.superseded {
            break superseded.segment_key.unwrap();
        }
        assert!(Instant::now() < deadline, "no repack 120 s after crossing the threshold");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for id in &same[same.len() / 2..] {
        let read = store.read_file(&routing(), &uid(*id), created_at(*id)).await.unwrap();
        assert_eq!((read.bytes, read.key.as_str()), (payload(*id), new_key.as_str()));
    }
    for id in erased {
        assert!(store.read_file(&routing(), &uid(*id), created_at(*id)).await.is_err());
    }
    // Let the repeats (later tombstones re-request the same repack) drain, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bus.depth(topics::REPACK).await.unwrap().visible + bus.depth(topics::REPACK).await.unwrap().in_flight > 0 {
        assert!(Instant::now() < deadline, "repack requests not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    tracker.await.unwrap();
    let stats = repacker.await.unwrap();
    assert_eq!(stats.repacked, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(stats.requests, stats.repacked + stats.already_done + stats.nothing_to_drop);
}

/// On moto S3 with Object Lock: the repacked segment is locked at least as long, the old
/// one still refuses deletion and carries the archive tag, retention extends the lock
/// (and VERA refuses to shorten it), holds set the object's legal hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_repack_keeps_the_old_segment_locked_and_archives_it() {
    let s3 = s3_bucket("vera-repack").await;
    vera_store_s3::ensure_archive_rule(&s3, ARCHIVE_TAG, "GLACIER_IR", 1).await.unwrap();
    vera_store_s3::ensure_archive_rule(&s3, ARCHIVE_TAG, "STANDARD_IA", 30).await.unwrap();
    assert_eq!(
        vera_store_s3::archive_rule(&s3).await.unwrap(),
        Some(vec![("STANDARD_IA".to_owned(), 30)]),
        "installing the rule again replaces it"
    );
    for bad in ["PAPER", "DEEP_ARCHIVE", "GLACIER"] {
        let refused = vera_store_s3::ensure_archive_rule(&s3, ARCHIVE_TAG, bad, 1).await.unwrap_err();
        assert_eq!(refused.kind, StoreErrorKind::InvalidInput, "{bad}: readers need the index without a restore");
    }
    let world = world_on(tempfile::tempdir().unwrap(), Arc::new(s3), thirty_days()).await;
    let plan = erase_half(&world).await;
    let old_lock = world.store.head(&plan.segment).await.unwrap().retention.unwrap();
    assert!(old_lock.retain_until >= at("2099-01-01T00:00:00Z"), "retain raised the lock: {old_lock:?}");
    assert!(world.store.head(&plan.segment).await.unwrap().legal_hold, "hold set the object's legal hold");

    world.lifecycle.repack(&plan.segment, "repack-s3", &RepackSettings::default()).await.unwrap();
    check_repacked(&world, &plan).await;
    let error = world.store.delete(&plan.segment).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::Locked, "the old segment still refuses deletion");
    let new_key = sidecar(world.store.as_ref(), &plan.segment).await.superseded.unwrap().segment_key.unwrap();
    let new_lock = world.store.head(&new_key).await.unwrap().retention.unwrap();
    assert_eq!(new_lock.mode, vera_store::LockMode::Compliance);
    assert!(new_lock.retain_until >= old_lock.retain_until);

    // Retention of a moved file: shortening is refused by VERA; extending raises the new lock.
    let refused = world.lifecycle.retain(&retain(plan.retained, "2098-01-01T00:00:00Z")).await.unwrap_err();
    assert!(matches!(refused, LifecycleError::WouldShortenRetention { .. }), "{refused:?}");
    let extended = world.lifecycle.retain(&retain(plan.live[0], "2100-06-01T00:00:00Z")).await.unwrap();
    assert_eq!(extended.segment_key, new_key);
    assert_eq!(world.store.head(&new_key).await.unwrap().retention.unwrap().retain_until, at("2100-06-01T00:00:00Z"));
}
