//! Auditor exports end to end on the local store: pack with the real worker (PACK
//! anchors on the bus), erase and repack (DELETE and REPACK anchors), drain the audit
//! topic into a signed log, export, and verify offline; then tamper with the export.

use std::sync::Arc;

use vera_audit::AuditError;
use vera_audit::export::{IntegrityProof, PROOF_FILE, Selection, export, verify_export};
use vera_audit::log::AuditLog;
use vera_audit::note::{KeyFileSigner, Verifiers};
use vera_audit::writer::{WriterSettings, run_audit_writer};
use vera_bus::sqlite::SqliteBus;
use vera_lifecycle::repack::RepackSettings;
use vera_lifecycle::{DeleteRequest, Lifecycle};
use vera_protocol::Timestamp;
use vera_protocol::message::{PackTask, Slot};
use vera_protocol::routing::{RoutingEpoch, RoutingTable};
use vera_protocol::sidecar::TombstoneReason;
use vera_source::SourceMapping;
use vera_source::sqlite::SqliteSource;
use vera_store::local::LocalStore;
use vera_store::shards::ShardStore;
use vera_store::{ObjectStore, SystemClock};

const ROWS: i64 = 60;

fn routing() -> RoutingTable {
    RoutingTable::single(RoutingEpoch::v1(1).unwrap())
}

fn uid(id: i64) -> String {
    format!("f{id:04}")
}

fn created_at(id: i64) -> Timestamp {
    Timestamp::parse(&format!("2026-11-2{}T{:02}:00:00Z", id % 2 + 1, id % 24)).unwrap()
}

fn payload(id: i64) -> Vec<u8> {
    format!("ledger line {id}: {}", "y".repeat(id as usize * 3)).into_bytes()
}

struct World {
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    verifiers: Verifiers,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let path = dir.path().join("src.sqlite");
    let mut connection = vera_source::sqlite::create_demo_database(&path).await.unwrap();
    for id in 1..=ROWS {
        sqlx::query("INSERT INTO files VALUES (?, ?, ?, 'text/plain', ?)")
            .bind(id)
            .bind(uid(id))
            .bind(created_at(id).to_rfc3339())
            .bind(payload(id))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let source = SqliteSource::open("demo", &path, SourceMapping::demo()).await.unwrap();
    let task = PackTask {
        task_id: "demo:0-60".into(),
        source: "demo".into(),
        slot: Slot::by_watermark(0, ROWS, ROWS as u64, 0),
        routing: routing(),
    };
    let shards = ShardStore::new(Arc::clone(&store));
    // Generations, so that a repack can follow (staging segments are merged instead).
    let staging = vera_worker::settings::StagingSettings { direct_min_files: 0, ..Default::default() };
    let settings = vera_worker::WorkerSettings { staging, ..vera_worker::WorkerSettings::default() };
    let report = vera_worker::pack_task(&task, &source, &shards, &settings).await.unwrap();
    let bus = Arc::new(SqliteBus::open(dir.path().join("bus.sqlite"), 3).await.unwrap());
    vera_worker::run::publish_events(bus.as_ref(), "worker-1", &report, &SystemClock).await.unwrap();

    // Erase two files that share a segment with f0002, and repack that segment.
    let lifecycle = Lifecycle::new(ShardStore::new(Arc::clone(&store)), routing(), bus.clone(), Arc::new(SystemClock));
    for id in [4, 6] {
        lifecycle
            .delete(&DeleteRequest {
                uid: uid(id),
                created_at: created_at(id),
                reason: TombstoneReason::GdprErasure,
                request_id: format!("erase-{id}"),
                operator: "dpo.alice".into(),
            })
            .await
            .unwrap();
    }
    let segment = routing().locate(&uid(2), created_at(2)).unwrap().segment_key(0);
    lifecycle.repack(&segment, "repack-1", &RepackSettings::default()).await.unwrap();

    let signer = Arc::new(KeyFileSigner::new("audit.test", ed25519_dalek::SigningKey::from_bytes(&[3; 32])).unwrap());
    let verifiers = Verifiers::parse(&signer.verifier_key()).unwrap();
    let log = AuditLog::open(store.clone(), "w0", signer, None, Arc::new(SystemClock)).await.unwrap();
    let stats =
        run_audit_writer(&log, bus.as_ref(), &WriterSettings::default(), &Default::default(), true).await.unwrap();
    assert!(stats.appended >= 4, "PACK, DELETE and REPACK events logged: {stats:?}");
    World { dir, store, verifiers }
}

fn files(ids: &[i64]) -> Selection {
    Selection::Files(ids.iter().map(|id| (uid(*id), created_at(*id))).collect())
}

#[tokio::test]
async fn an_export_verifies_offline_and_names_what_it_left_out() {
    let w = world().await;
    let out = w.dir.path().join("export");
    let (proof, report) = export(
        &w.store,
        &routing(),
        &files(&[1, 2, 3, 4]),
        &out,
        Timestamp::parse("2026-11-25T12:00:00Z").unwrap(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(report.excluded, 1, "f0004 was erased");
    assert_eq!(proof.excluded[0].uid, "f0004");
    assert_eq!(report.anchored_segments, report.segments, "every segment has its PACK or REPACK anchor");
    for file in &proof.files {
        let id: i64 = file.uid[1..].parse().unwrap();
        assert_eq!(std::fs::read(out.join(&file.path)).unwrap(), payload(id));
    }
    // f0002 moved in the repack: its segment is the .r1 one and carries the old one's anchor.
    let moved = proof.files.iter().find(|f| f.uid == "f0002").unwrap();
    assert!(moved.segment_key.ends_with(".r1.vera"), "{}", moved.segment_key);
    let segment = &proof.segments[&moved.segment_key];
    assert_eq!(segment.repacked_from.len(), 1);
    assert!(segment.repacked_from[0].anchor.is_some());

    let checked = verify_export(&out, &w.verifiers).unwrap();
    assert_eq!(checked.files, 3);
    assert!(checked.unanchored_segments.is_empty());
    assert_eq!(checked.anchors, report.segments + 1);

    // A range export holds the same files created in the window, and never f0004.
    let ranged = w.dir.path().join("ranged");
    let (proof, _) = export(
        &w.store,
        &routing(),
        &Selection::Range {
            from: Timestamp::parse("2026-11-21T00:00:00Z").unwrap(),
            to: Timestamp::parse("2026-11-24T00:00:00Z").unwrap(),
        },
        &ranged,
        Timestamp::parse("2026-11-25T12:00:00Z").unwrap(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(proof.files.len() as i64, ROWS - 2);
    assert!(proof.files.iter().all(|f| f.uid != "f0004" && f.uid != "f0006"));
    verify_export(&ranged, &w.verifiers).unwrap();
}

#[tokio::test]
async fn a_tampered_export_fails_verification() {
    let w = world().await;
    let out = w.dir.path().join("export");
    let at = Timestamp::parse("2026-11-25T12:00:00Z").unwrap();
    export(&w.store, &routing(), &files(&[1, 2, 3]), &out, at, None).await.unwrap();
    let proof_path = out.join(PROOF_FILE);
    let original: IntegrityProof = serde_json::from_slice(&std::fs::read(&proof_path).unwrap()).unwrap();
    let expect_failure = |proof: &IntegrityProof, what: &str| {
        std::fs::write(&proof_path, serde_json::to_vec(proof).unwrap()).unwrap();
        let error = verify_export(&out, &w.verifiers).unwrap_err();
        assert!(matches!(error, AuditError::Proof(_)), "{what}: {error}");
    };

    // 1. A file's bytes changed.
    let first = out.join(&original.files[0].path);
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, [&bytes[..], b"!"].concat()).unwrap();
    expect_failure(&original, "changed file");
    std::fs::write(&first, &bytes).unwrap();
    verify_export(&out, &w.verifiers).unwrap();

    // 2. A file swapped for another one, with its hash updated to match.
    let mut proof = original.clone();
    std::fs::write(&first, b"forged").unwrap();
    proof.files[0].blake3 = *blake3::hash(b"forged").as_bytes();
    proof.files[0].bytes = 6;
    expect_failure(&proof, "substituted file");
    std::fs::write(&first, &bytes).unwrap();

    // 3. A segment's Merkle root or object hash rewritten.
    let mut proof = original.clone();
    let key = proof.files[0].segment_key.clone();
    proof.segments.get_mut(&key).unwrap().merkle_root[0] ^= 1;
    expect_failure(&proof, "merkle root");
    let mut proof = original.clone();
    proof.segments.get_mut(&key).unwrap().object_blake3[0] ^= 1;
    expect_failure(&proof, "object hash");

    // 4. The checkpoint note altered, or the anchor entry edited.
    let mut proof = original.clone();
    let log = proof.checkpoints.keys().next().unwrap().clone();
    let note = proof.checkpoints[&log].note.clone();
    proof.checkpoints.get_mut(&log).unwrap().note = note.replacen("time ", "time  ", 1);
    expect_failure(&proof, "checkpoint");
    let mut proof = original.clone();
    let anchor = proof.segments.get_mut(&key).unwrap().anchor.as_mut().unwrap();
    anchor.entry = anchor.entry.replacen("\"ok\"", "\"failed\"", 1);
    expect_failure(&proof, "anchor entry");

    // 5. Verified with keys that did not sign the checkpoint.
    std::fs::write(&proof_path, serde_json::to_vec(&original).unwrap()).unwrap();
    let stranger = KeyFileSigner::new("audit.test", ed25519_dalek::SigningKey::from_bytes(&[4; 32])).unwrap();
    let error = verify_export(&out, &Verifiers::parse(&stranger.verifier_key()).unwrap()).unwrap_err();
    assert!(matches!(error, AuditError::Proof(_)), "{error}");
}
