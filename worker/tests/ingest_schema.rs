//! The `file_arrived` JSON Schema (protocol/schema/file_arrived.schema.json) against real
//! messages: what the ingest helpers and the HTTP endpoint publish validates, and the bad
//! events the ingest worker dead-letters fail it too.

use vera_protocol::Timestamp;
use vera_protocol::ingest::{FileArrived, FileContent};
use vera_worker::ingest::{file_event, inline_event};

const SCHEMA: &str = include_str!("../../protocol/schema/file_arrived.schema.json");

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

#[test]
fn published_events_validate_against_the_schema() {
    let validator = validator();
    let now = at("2026-11-24T10:00:00Z");
    let inline = inline_event("rcpt-1", at("2026-11-24T09:00:00Z"), Some("application/pdf"), b"%PDF-1.7", now);
    let staged = file_event(
        FileArrived {
            uid: "scan été 7".into(),
            created_at: at("2026-11-24T09:00:00+01:00"),
            content_type: None,
            blake3: None,
            sha256: Some("ab".repeat(32)),
            content: FileContent::Staged { key: "landing/scans/7.tif".into(), size: 1234, etag: Some("\"e\"".into()) },
        },
        now,
    );
    for event in [inline, staged] {
        let value = json(&event.payload);
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
    }
}

#[test]
fn bad_events_fail_the_schema() {
    let validator = validator();
    let good = json(&inline_event("a", at("2026-11-24T09:00:00Z"), None, b"x", at("2026-11-24T10:00:00Z")).payload);
    let mut cases = Vec::new();
    let mut no_uid = good.clone();
    no_uid["body"].as_object_mut().unwrap().remove("uid");
    cases.push(("no uid", no_uid));
    let mut bad_time = good.clone();
    bad_time["body"]["created_at"] = "last tuesday".into();
    cases.push(("created_at", bad_time));
    let mut control = good.clone();
    control["body"]["uid"] = "a\u{7}b".into();
    cases.push(("control character", control));
    let mut hash = good.clone();
    hash["body"]["blake3"] = "xyz".into();
    cases.push(("blake3", hash));
    let mut staged_without_size = good.clone();
    staged_without_size["body"]["form"] = "staged".into();
    staged_without_size["body"]["key"] = "landing/x".into();
    cases.push(("staged without size", staged_without_size));
    let mut other_type = good.clone();
    other_type["type"] = "pack_task".into();
    cases.push(("type", other_type));
    let mut version = good;
    version["v"] = 2.into();
    cases.push(("version", version));
    for (what, value) in cases {
        assert!(!validator.is_valid(&value), "{what}: {value} must fail the schema");
    }
}
