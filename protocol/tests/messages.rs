//! Message envelope round trips, hostile input, and backward compatibility with the
//! messages the first version wrote (fixtures under `tests/fixtures/envelope_v1/`).

use std::collections::BTreeMap;

use proptest::prelude::*;
use vera_protocol::Timestamp;
use vera_protocol::message::{
    AuditAction, AuditEvent, AuditOutcome, Envelope, EnvelopeError, Message, PackTask, RepackRequested, ShardSealed,
    Slot, TombstoneRequested, TraceContext,
};
use vera_protocol::routing::{RoutingEpoch, RoutingTable, locate_shard};
use vera_protocol::sidecar::TombstoneReason;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

/// One example of every message type, exactly as frozen in the fixtures.
fn examples() -> Vec<(&'static str, Envelope)> {
    let addr = locate_shard("receipt-000000001", at("2026-01-01T00:00:00Z"), 4).unwrap();
    let traced = |mut envelope: Envelope| {
        envelope.trace = Some(TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some("vera=p1".into()),
        });
        envelope
    };
    vec![
        (
            "pack_task",
            traced(Envelope::new(
                "msg-0001",
                at("2026-11-24T10:00:00Z"),
                Message::PackTask(PackTask {
                    task_id: "demo:100-200".into(),
                    source: "demo".into(),
                    slot: Slot::by_watermark(100, 200, 100, 1_638_400),
                    routing: RoutingTable::single(RoutingEpoch::v1(4).unwrap()),
                }),
            )),
        ),
        (
            "shard_sealed",
            Envelope::new(
                "msg-0002",
                at("2026-11-24T10:00:01Z"),
                Message::ShardSealed(ShardSealed {
                    task_id: "demo:100-200".into(),
                    addr,
                    generation: 0,
                    key: addr.segment_key(0),
                    version_id: Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY".into()),
                    object_hash: [0xab; 32],
                    merkle_root: [0x01; 32],
                    files: 100,
                    raw_bytes: 1_638_400,
                    object_bytes: 600_000,
                    retain_until: Some(at("2033-11-24T00:00:00Z")),
                    sealed_at: at("2026-11-24T10:00:01Z"),
                }),
            ),
        ),
        (
            "tombstone_requested",
            Envelope::new(
                "msg-0003",
                at("2026-11-24T11:00:00Z"),
                Message::TombstoneRequested(TombstoneRequested {
                    request_id: "gdpr-2026-0042".into(),
                    uid: "receipt-000000001".into(),
                    created_at: at("2026-01-01T00:00:00Z"),
                    addr,
                    reason: TombstoneReason::GdprErasure,
                    operator: "SHA256:Uj3yHr0bq1JvXbC4VPr2bqP8xYlbmA0m0S8dyWm0rOk".into(),
                    requested_at: at("2026-11-24T11:00:00Z"),
                }),
            ),
        ),
        (
            "repack_requested",
            Envelope::new(
                "msg-0004",
                at("2026-11-24T11:00:05Z"),
                Message::RepackRequested(RepackRequested {
                    addr,
                    generation: 0,
                    key: addr.segment_key(0),
                    tombstoned_bytes: 500_000,
                    total_bytes: 1_638_400,
                    threshold_ratio: 0.3,
                    requested_at: at("2026-11-24T11:00:05Z"),
                }),
            ),
        ),
        (
            "audit_event",
            Envelope::new(
                "msg-0005",
                at("2026-11-24T11:00:06Z"),
                Message::AuditEvent(AuditEvent {
                    action: AuditAction::Read,
                    outcome: AuditOutcome::Ok,
                    at: at("2026-11-24T11:00:06Z"),
                    actor: "vera-reader".into(),
                    request_id: Some("req-77".into()),
                    uid: Some("receipt-000000001".into()),
                    segment_key: Some(addr.segment_key(0)),
                    details: BTreeMap::from([("bytes".to_owned(), "1234".to_owned())]),
                }),
            ),
        ),
    ]
}

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envelope_v1").join(format!("{name}.json"))
}

#[test]
fn every_message_round_trips() {
    for (name, envelope) in examples() {
        let bytes = envelope.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope, "{name}");
    }
}

#[test]
fn first_version_fixtures_still_decode() {
    // The fixtures were written by the first version of this code and are never
    // regenerated. Set VERA_WRITE_FIXTURES=1 only when adding a *new* fixture file.
    let write_missing = std::env::var_os("VERA_WRITE_FIXTURES").is_some();
    for (name, expected) in examples() {
        let path = fixture_path(name);
        if write_missing && !path.exists() {
            std::fs::write(&path, expected.encode()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
        assert_eq!(Envelope::decode(&bytes).unwrap(), expected, "fixture {name} no longer decodes to the same value");
    }
}

#[test]
fn newer_minor_versions_with_extra_fields_still_decode() {
    let bytes = std::fs::read(fixture_path("pack_task")).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    value["priority"] = serde_json::json!(5);
    value["body"]["future_field"] = serde_json::json!({"x": 1});
    let decoded = Envelope::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert!(matches!(decoded.message, Message::PackTask(_)));
}

#[test]
fn hostile_input_gets_typed_errors() {
    type Expectation = fn(&EnvelopeError) -> bool;
    let cases: Vec<(&[u8], Expectation)> = vec![
        (b"", |e| matches!(e, EnvelopeError::Malformed { .. })),
        (b"\xff\xfe", |e| matches!(e, EnvelopeError::Malformed { .. })),
        (b"[1,2]", |e| matches!(e, EnvelopeError::Malformed { .. })),
        (br#"{"type":"pack_task"}"#, |e| matches!(e, EnvelopeError::Malformed { .. })),
        (br#"{"v":2,"type":"pack_task"}"#, |e| matches!(e, EnvelopeError::UnsupportedVersion { version: 2 })),
        (br#"{"v":1,"type":"launch_missiles","body":{}}"#, |e| matches!(e, EnvelopeError::UnknownType { .. })),
        (br#"{"v":1,"id":"x","sent_at":"2026-11-24T10:00:00Z","type":"pack_task","body":{}}"#, |e| {
            matches!(e, EnvelopeError::Malformed { .. })
        }),
    ];
    for (bytes, expected) in cases {
        let error = Envelope::decode(bytes).unwrap_err();
        assert!(expected(&error), "{:?} gave {error:?}", String::from_utf8_lossy(bytes));
    }
    let huge = vec![b' '; vera_protocol::message::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(Envelope::decode(&huge), Err(EnvelopeError::TooLarge { .. })));

    // Structurally valid JSON with semantically bad fields.
    let (_, sealed) = examples().remove(1);
    let mut value: serde_json::Value = serde_json::from_slice(&sealed.encode()).unwrap();
    value["body"]["key"] = serde_json::json!("e1/d2026-01-01/n04-5/g000009.vera");
    assert_eq!(
        Envelope::decode(&serde_json::to_vec(&value).unwrap()),
        Err(EnvelopeError::InvalidField { field: "key" })
    );
    let (_, tombstone) = examples().remove(2);
    let mut value: serde_json::Value = serde_json::from_slice(&tombstone.encode()).unwrap();
    value["body"]["operator"] = serde_json::json!("Jane Doe, DPO");
    assert!(matches!(Envelope::decode(&serde_json::to_vec(&value).unwrap()), Err(EnvelopeError::InvalidField { .. })));
}

#[test]
fn events_about_one_shard_share_an_ordering_key() {
    let examples = examples();
    let keys: Vec<Option<String>> = examples.iter().map(|(_, e)| e.ordering_key()).collect();
    assert_eq!(keys[0], None, "pack tasks are unordered");
    assert_eq!(keys[1].as_deref(), Some("e1/d2026-01-01/n04-5/"));
    assert_eq!(keys[1], keys[2]);
    assert_eq!(keys[1], keys[3]);
}

proptest! {
    #[test]
    fn audit_events_round_trip(
        actor in "[a-z0-9.-]{1,20}",
        uid in proptest::option::of("[a-zA-Z0-9_-]{1,40}"),
        micros in 0i64..4_000_000_000_000_000,
        details in proptest::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,30}", 0..5),
    ) {
        let envelope = Envelope::new(
            "id-1",
            Timestamp::from_micros(micros).unwrap(),
            Message::AuditEvent(AuditEvent {
                action: AuditAction::Pack,
                outcome: AuditOutcome::Failed,
                at: Timestamp::from_micros(micros).unwrap(),
                actor,
                request_id: None,
                uid,
                segment_key: None,
                details,
            }),
        );
        prop_assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }
}

#[test]
fn invalid_addresses_in_messages_are_refused() {
    let (_, sealed) = examples().remove(1);
    let mut value: serde_json::Value = serde_json::from_slice(&sealed.encode()).unwrap();
    value["body"]["addr"]["bucket"] = serde_json::json!(99);
    assert!(matches!(Envelope::decode(&serde_json::to_vec(&value).unwrap()), Err(EnvelopeError::Malformed { .. })));
    let (_, task) = examples().remove(0);
    let mut value: serde_json::Value = serde_json::from_slice(&task.encode()).unwrap();
    value["body"]["routing"]["epochs"][0]["epoch"]["n_bits"] = serde_json::json!(40);
    assert!(matches!(Envelope::decode(&serde_json::to_vec(&value).unwrap()), Err(EnvelopeError::Malformed { .. })));
}

/// A slot of a horizon-ordered source: its watermark may go down from start to end, as
/// long as the pair `(horizon, watermark)` goes up; a reversed pair is refused.
#[test]
fn horizon_slots_round_trip_and_reversed_ones_are_refused() {
    use vera_protocol::message::{HorizonBounds, ScanPosition};
    let task = |horizon: HorizonBounds| {
        let slot = Slot { after: 50, up_to: 10, rows: 3, bytes: 30, horizon: Some(horizon) };
        Envelope::new(
            "msg-h",
            at("2026-12-04T10:00:00Z"),
            Message::PackTask(PackTask {
                task_id: "pg:7.50-9.10".into(),
                source: "pg".into(),
                slot,
                routing: RoutingTable::single(RoutingEpoch::v1(2).unwrap()),
            }),
        )
    };
    let forward = task(HorizonBounds { after: Some(7), up_to: 9 });
    let decoded = Envelope::decode(&forward.encode()).expect("a horizon slot decodes");
    assert_eq!(decoded, forward);
    let Message::PackTask(decoded_task) = decoded.message else { panic!("a pack task") };
    assert_eq!(decoded_task.slot.start(), ScanPosition { horizon: Some(7), watermark: 50 });
    assert!(decoded_task.slot.contains(ScanPosition { horizon: Some(8), watermark: 1 }));
    assert!(!decoded_task.slot.contains(ScanPosition { horizon: Some(9), watermark: 11 }));
    let first = task(HorizonBounds { after: None, up_to: 9 });
    assert!(Envelope::decode(&first.encode()).is_ok(), "the first slot has no lower bound");
    let reversed = task(HorizonBounds { after: Some(9), up_to: 7 });
    assert!(matches!(Envelope::decode(&reversed.encode()), Err(EnvelopeError::InvalidField { field: "slot" })));
}
