//! The tamper suite: an audit log on the local store, changed behind the writer's back
//! the way an attacker with write access (or a GOVERNANCE bypass) could, and
//! `verify_log` naming each change: a deleted, modified or reordered entry, and a
//! truncated tail. Also: writer restarts, redeliveries and two writers on one log id.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use vera_audit::AuditError;
use vera_audit::log::{AuditLog, checkpoint_key, list_logs, segment_key, verify_log};
use vera_audit::note::{KeyFileSigner, Verifiers};
use vera_audit::tree::Frontier;
use vera_audit::writer::{WriterSettings, run_audit_writer};
use vera_bus::sqlite::SqliteBus;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::merkle::leaf_hash;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message};
use vera_store::local::LocalStore;
use vera_store::{ObjectStore, PutOptions, SystemClock};

fn event(n: u32) -> Envelope {
    let mut details = BTreeMap::new();
    details.insert("n".to_owned(), n.to_string());
    let at = Timestamp::from_unix_seconds(1_800_000_000 + i64::from(n)).unwrap();
    Envelope::new(
        format!("test/{n}"),
        at,
        Message::AuditEvent(AuditEvent {
            action: if n.is_multiple_of(2) { AuditAction::Read } else { AuditAction::Delete },
            outcome: AuditOutcome::Ok,
            at,
            actor: "tester".into(),
            request_id: Some(format!("req-{n}")),
            uid: Some(format!("uid-{n}")),
            segment_key: None,
            details,
        }),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    signer: Arc<KeyFileSigner>,
    verifiers: Verifiers,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let signer = Arc::new(KeyFileSigner::new("audit.test", ed25519_dalek::SigningKey::from_bytes(&[9; 32])).unwrap());
    let verifiers = Verifiers::parse(&signer.verifier_key()).unwrap();
    Fixture { _dir: dir, store, signer, verifiers }
}

/// Three segments of five entries, each followed by a checkpoint (sizes 5, 10, 15).
async fn three_segments(f: &Fixture) -> AuditLog {
    let log = AuditLog::open(f.store.clone(), "w0", f.signer.clone(), None, Arc::new(SystemClock)).await.unwrap();
    for batch in 0..3u32 {
        let events: Vec<Envelope> = (batch * 5..batch * 5 + 5).map(event).collect();
        let outcome = log.append(&events).await.unwrap();
        assert_eq!(outcome.appended, 5);
        assert!(log.checkpoint().await.unwrap().is_some());
    }
    log
}

/// Rewrites a segment's entries like a careful attacker: the header count and the
/// trailer are recomputed so the segment is self-consistent.
async fn rewrite_entries(store: &dyn ObjectStore, key: &str, change: impl FnOnce(&mut Vec<Bytes>)) {
    let body = store.get(key).await.unwrap().body;
    let text = std::str::from_utf8(&body).unwrap();
    let mut lines: Vec<Bytes> = text.lines().map(|l| Bytes::from(l.to_owned())).collect();
    let mut header: Value = serde_json::from_slice(&lines[0]).unwrap();
    lines.pop();
    let mut entries = lines.split_off(1);
    change(&mut entries);
    let prev: Vec<[u8; 32]> = header["prev_frontier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let mut frontier = Frontier::from_parts(header["first_index"].as_u64().unwrap(), prev).unwrap();
    for entry in &entries {
        frontier.push(leaf_hash(entry));
    }
    header["count"] = entries.len().into();
    let mut out = serde_json::to_vec(&header).unwrap();
    out.push(b'\n');
    for entry in &entries {
        out.extend_from_slice(entry);
        out.push(b'\n');
    }
    let trailer = serde_json::json!({"end": {"size": frontier.size(), "root": hex::encode(frontier.root())}});
    out.extend_from_slice(&serde_json::to_vec(&trailer).unwrap());
    out.push(b'\n');
    store.put(key, Bytes::from(out), PutOptions::overwrite()).await.unwrap();
}

#[tokio::test]
async fn an_untouched_log_verifies_and_counts_its_entries() {
    let f = fixture().await;
    three_segments(&f).await;
    let report = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap();
    assert_eq!((report.segments, report.entries, report.checkpoints, report.unanchored), (3, 15, 3, 0));
    assert_eq!(report.actions["READ"] + report.actions["DELETE"], 15);
    assert_eq!(list_logs(f.store.as_ref()).await.unwrap(), vec!["w0".to_owned()]);
}

#[tokio::test]
async fn a_deleted_entry_is_detected() {
    let f = fixture().await;
    three_segments(&f).await;
    rewrite_entries(f.store.as_ref(), &segment_key("w0", 5), |entries| {
        entries.remove(2);
    })
    .await;
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::Gap { expected: 9, found: 10, .. }), "{error}");
}

#[tokio::test]
async fn a_modified_entry_is_detected() {
    let f = fixture().await;
    three_segments(&f).await;
    // Self-consistent segment, the last one: only the signed checkpoint can tell.
    rewrite_entries(f.store.as_ref(), &segment_key("w0", 10), |entries| {
        let changed = String::from_utf8(entries[1].to_vec()).unwrap().replace("tester", "someone");
        entries[1] = Bytes::from(changed);
    })
    .await;
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::CheckpointMismatch { size: 15, .. }), "{error}");

    // A clumsier change (trailer left alone) in an earlier segment.
    let key = segment_key("w0", 0);
    let body = f.store.get(&key).await.unwrap().body;
    let changed = String::from_utf8(body.to_vec()).unwrap().replacen("uid-1", "uid-7", 1);
    f.store.put(&key, Bytes::from(changed), PutOptions::overwrite()).await.unwrap();
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::CorruptSegment { .. } | AuditError::CheckpointMismatch { .. }), "{error}");
}

#[tokio::test]
async fn reordered_entries_are_detected() {
    let f = fixture().await;
    three_segments(&f).await;
    rewrite_entries(f.store.as_ref(), &segment_key("w0", 5), |entries| entries.swap(0, 3)).await;
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    // The next segment's recorded frontier no longer matches, or the checkpoint at 10.
    assert!(
        matches!(error, AuditError::CheckpointMismatch { size: 10, .. } | AuditError::ChainBroken { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_truncated_tail_is_caught_by_the_checkpoint() {
    let f = fixture().await;
    three_segments(&f).await;
    f.store.delete(&segment_key("w0", 10)).await.unwrap();
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::Truncated { checkpoint_size: 15, log_size: 10, .. }), "{error}");

    // A segment cut short mid-file is corrupt, not silently shorter.
    let key = segment_key("w0", 5);
    let body = f.store.get(&key).await.unwrap().body;
    f.store.put(&key, body.slice(..body.len() - 40), PutOptions::overwrite()).await.unwrap();
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::CorruptSegment { .. }), "{error}");
}

#[tokio::test]
async fn forged_and_foreign_checkpoints_are_refused() {
    let f = fixture().await;
    three_segments(&f).await;
    let key = checkpoint_key("w0", 10);
    let note = String::from_utf8(f.store.get(&key).await.unwrap().body.to_vec()).unwrap();
    let lines: Vec<&str> = note.lines().collect();
    let forged = note.replacen(lines[2], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1);
    f.store.put(&key, Bytes::from(forged), PutOptions::overwrite()).await.unwrap();
    let error = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap_err();
    assert!(matches!(error, AuditError::CheckpointSignature { .. }), "{error}");

    let stranger = KeyFileSigner::new("audit.test", ed25519_dalek::SigningKey::from_bytes(&[1; 32])).unwrap();
    let others = Verifiers::parse(&stranger.verifier_key()).unwrap();
    let error = verify_log(f.store.as_ref(), "w0", &others).await.unwrap_err();
    assert!(matches!(error, AuditError::UnknownCheckpointKey), "{error}");
}

#[tokio::test]
async fn a_restarted_writer_continues_the_tree_and_drops_redeliveries() {
    let f = fixture().await;
    let first = three_segments(&f).await;
    drop(first);
    let log = AuditLog::open(f.store.clone(), "w0", f.signer.clone(), None, Arc::new(SystemClock)).await.unwrap();
    assert_eq!(log.size().await, 15);
    // Events 12..15 were already logged (a crash before the ack); 15..18 are new.
    let events: Vec<Envelope> = (12..18).map(event).collect();
    let outcome = log.append(&events).await.unwrap();
    assert_eq!((outcome.appended, outcome.duplicates, outcome.size), (3, 3, 18));
    log.checkpoint().await.unwrap();
    let report = verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap();
    assert_eq!((report.entries, report.unanchored), (18, 0));
}

#[tokio::test]
async fn two_writers_given_one_log_id_cannot_fork_it() {
    let f = fixture().await;
    let open = || AuditLog::open(f.store.clone(), "w0", f.signer.clone(), None, Arc::new(SystemClock));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    a.append(&[event(1)]).await.unwrap();
    let error = b.append(&[event(2)]).await.unwrap_err();
    assert!(matches!(error, AuditError::Conflict { .. }), "{error}");
    // b reloaded; its retry lands after a's entry.
    assert_eq!(b.append(&[event(2)]).await.unwrap().size, 2);
    b.checkpoint().await.unwrap();
    assert_eq!(verify_log(f.store.as_ref(), "w0", &f.verifiers).await.unwrap().entries, 2);
}

#[tokio::test]
async fn writers_drain_the_bus_into_separate_logs_without_loss_or_duplicates() {
    let f = fixture().await;
    let bus = SqliteBus::open(f._dir.path().join("bus.sqlite"), 3).await.unwrap();
    let mut messages: Vec<Outgoing> =
        (0..40).map(event).map(|e| Outgoing { key: None, payload: Bytes::from(e.encode()) }).collect();
    // Redeliveries of the same events, and one malformed message.
    messages.extend((0..5).map(|n| Outgoing { key: None, payload: Bytes::from(event(n).encode()) }));
    messages.push(Outgoing { key: None, payload: Bytes::from_static(b"{\"v\":1,\"nonsense\":true}") });
    bus.publish(topics::AUDIT, messages).await.unwrap();

    let settings = WriterSettings { batch: 7, ..WriterSettings::default() };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let a = AuditLog::open(f.store.clone(), "w0", f.signer.clone(), None, Arc::new(SystemClock)).await.unwrap();
    let b = AuditLog::open(f.store.clone(), "w1", f.signer.clone(), None, Arc::new(SystemClock)).await.unwrap();
    let (sa, sb) = tokio::join!(
        run_audit_writer(&a, &bus, &settings, &shutdown, true),
        run_audit_writer(&b, &bus, &settings, &shutdown, true)
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 1);

    let mut ids = std::collections::BTreeSet::new();
    let mut total = 0;
    for log in list_logs(f.store.as_ref()).await.unwrap() {
        let report = verify_log(f.store.as_ref(), &log, &f.verifiers).await.unwrap();
        assert_eq!(report.unanchored, 0);
        for entry in vera_audit::log::read_entries(f.store.as_ref(), &log).await.unwrap() {
            ids.insert(entry.envelope.id);
            total += 1;
        }
    }
    // Duplicates within one writer's window are dropped; two writers may each log one
    // copy of a redelivered event only if the copies were claimed by different writers.
    assert_eq!(ids.len(), 40, "every event is logged");
    assert!(total <= 45, "at most the redelivered copies appear twice, got {total}");
    assert_eq!(bus.depth(topics::AUDIT).await.unwrap().visible, 0);
}
