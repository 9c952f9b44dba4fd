//! Files pushed by upstream systems: what the `ingest` topic carries (FORMAT.md §6.7).
//!
//! Three forms reach an ingest worker:
//!
//! * a `file_arrived` message in the usual envelope, **inline** (the bytes, base64, in the
//!   message) or **staged** (a reference to an object in the landing store);
//! * an **S3 Event Notification**: the `{"Records":[…]}` JSON that S3 sends to SQS for
//!   `ObjectCreated:*`, also wrapped by SNS (`{"Type":"Notification","Message":"…"}`) or
//!   sent by EventBridge (`{"source":"aws.s3","detail-type":"Object Created",…}`), so a
//!   landing bucket's notifications can point at the ingest queue with nothing in between;
//! * S3's `s3:TestEvent`, sent once when notifications are configured, which is ignored.
//!
//! [`decode_ingest`] tells them apart. Everything here is pure: fetching a staged object
//! and mapping a key to a uid are the worker's job.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::message::{Envelope, EnvelopeError, Message};
use crate::timestamp::Timestamp;

/// A file an upstream system announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileArrived {
    pub uid: String,
    /// Routes the file (with the uid); a reader asks for it with the same value.
    pub created_at: Timestamp,
    /// MIME type; sniffed from the bytes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// BLAKE3 of the file's bytes, 64 lowercase hex digits; checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// SHA-256 of the file's bytes, 64 lowercase hex digits; checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(flatten)]
    pub content: FileContent,
}

/// Where the bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum FileContent {
    /// In the message, standard base64 with padding.
    Inline { data: String },
    /// An object in the landing store, which the worker reads and checks.
    Staged {
        /// The object's key in the landing store.
        key: String,
        /// Its length in bytes.
        size: u64,
        /// Its ETag as S3 reports it (quotes optional); compared with the object's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
    },
}

/// Why a `file_arrived` message can never be ingested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("ingest topic carried a {kind} message, not file_arrived or an S3 event")]
    WrongType { kind: &'static str },
    #[error("not an ingest event: {reason}")]
    NotAnEvent { reason: String },
    #[error("inline data is not valid base64: {reason}")]
    BadBase64 { reason: String },
    #[error("S3 event notification is malformed: {reason}")]
    BadS3Event { reason: String },
}

impl FileArrived {
    /// An inline event for `bytes`, carrying their BLAKE3.
    pub fn inline(uid: &str, created_at: Timestamp, content_type: Option<&str>, bytes: &[u8]) -> Self {
        FileArrived {
            uid: uid.to_owned(),
            created_at,
            content_type: content_type.map(str::to_owned),
            blake3: Some(blake3::hash(bytes).to_hex().to_string()),
            sha256: None,
            content: FileContent::Inline { data: base64::engine::general_purpose::STANDARD.encode(bytes) },
        }
    }

    /// This event in its envelope, with an id derived from the uid and the content (the
    /// inline data, or the staged key), so a publisher's retry is a recognisable
    /// duplicate.
    pub fn into_envelope(self, now: Timestamp) -> Envelope {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.uid.as_bytes());
        hasher.update(&[0]);
        match &self.content {
            FileContent::Inline { data } => hasher.update(data.as_bytes()),
            FileContent::Staged { key, .. } => hasher.update(key.as_bytes()),
        };
        let id = format!("file/{}", &hasher.finalize().to_hex()[..32]);
        Envelope::new(id, now, Message::FileArrived(self))
    }

    /// The inline bytes, decoded; `None` for a staged file.
    pub fn inline_bytes(&self) -> Option<Result<Vec<u8>, IngestError>> {
        match &self.content {
            FileContent::Inline { data } => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|error| IngestError::BadBase64 { reason: error.to_string() }),
            ),
            FileContent::Staged { .. } => None,
        }
    }

    /// Field checks serde cannot express (called by [`Envelope::validate`]).
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        crate::routing::validate_uid(&self.uid).map_err(|_| EnvelopeError::InvalidField { field: "uid" })?;
        if self.content_type.as_deref().is_some_and(|c| !crate::shard::writer::valid_content_type(c)) {
            return Err(EnvelopeError::InvalidField { field: "content_type" });
        }
        let hex64 = |hex: &Option<String>| {
            hex.as_deref().is_none_or(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if !hex64(&self.blake3) {
            return Err(EnvelopeError::InvalidField { field: "blake3" });
        }
        if !hex64(&self.sha256) {
            return Err(EnvelopeError::InvalidField { field: "sha256" });
        }
        if let FileContent::Staged { key, .. } = &self.content
            && (key.is_empty() || key.len() > 1024)
        {
            return Err(EnvelopeError::InvalidField { field: "key" });
        }
        Ok(())
    }
}

/// One `ObjectCreated:*` record of an S3 event notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ObjectCreated {
    pub bucket: String,
    /// The object key, URL-decoded.
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: Option<String>,
    /// `ObjectCreated:Put`, `ObjectCreated:CompleteMultipartUpload`, …
    pub event_name: String,
    pub event_time: Option<Timestamp>,
}

/// What one message on the ingest topic asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestMessage {
    /// A `file_arrived` envelope, with its id.
    File { id: String, file: Box<FileArrived> },
    /// An S3 notification's created objects; `ignored` counts its other records
    /// (`ObjectRemoved:*` and the like), which need nothing.
    S3Created { objects: Vec<S3ObjectCreated>, ignored: usize },
    /// `s3:TestEvent`: nothing to do.
    S3Test,
}

/// Decodes a message from the ingest topic (untrusted bytes).
pub fn decode_ingest(bytes: &[u8]) -> Result<IngestMessage, IngestError> {
    if bytes.len() > crate::message::MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge { len: bytes.len() }.into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| IngestError::NotAnEvent { reason: e.to_string() })?;
    decode_value(bytes, &value, 0)
}

fn decode_value(bytes: &[u8], value: &serde_json::Value, depth: u8) -> Result<IngestMessage, IngestError> {
    let not_an_event = || IngestError::NotAnEvent {
        reason: "neither a VERA envelope (`v`), an S3 notification (`Records`), an SNS notification nor an \
                 EventBridge S3 event"
            .into(),
    };
    let Some(object) = value.as_object() else { return Err(not_an_event()) };
    if object.contains_key("v") {
        let envelope = Envelope::decode(bytes)?;
        return match envelope.message {
            Message::FileArrived(file) => Ok(IngestMessage::File { id: envelope.id, file: Box::new(file) }),
            other => Err(IngestError::WrongType { kind: other.type_name() }),
        };
    }
    if let Some(records) = object.get("Records") {
        return s3_records(records);
    }
    if object.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(IngestMessage::S3Test);
    }
    if object.get("Type").and_then(|t| t.as_str()) == Some("Notification") && depth == 0 {
        // SNS delivers the S3 JSON as a string in `Message` (unless raw delivery is on,
        // in which case it arrives as itself).
        let inner = object
            .get("Message")
            .and_then(|m| m.as_str())
            .ok_or_else(|| IngestError::BadS3Event { reason: "SNS notification has no string `Message`".into() })?;
        let value: serde_json::Value = serde_json::from_str(inner)
            .map_err(|e| IngestError::BadS3Event { reason: format!("SNS `Message` is not JSON: {e}") })?;
        return decode_value(inner.as_bytes(), &value, depth + 1);
    }
    if object.get("source").and_then(|s| s.as_str()) == Some("aws.s3") {
        return eventbridge(object);
    }
    Err(not_an_event())
}

fn bad(reason: impl Into<String>) -> IngestError {
    IngestError::BadS3Event { reason: reason.into() }
}

fn s3_records(records: &serde_json::Value) -> Result<IngestMessage, IngestError> {
    let records = records.as_array().ok_or_else(|| bad("`Records` is not an array"))?;
    let mut objects = Vec::new();
    let mut ignored = 0;
    for (n, record) in records.iter().enumerate() {
        let event_name = record
            .get("eventName")
            .and_then(|e| e.as_str())
            .ok_or_else(|| bad(format!("record {n} has no eventName")))?;
        if !event_name.starts_with("ObjectCreated:") {
            ignored += 1;
            continue;
        }
        let s3 = record.get("s3").ok_or_else(|| bad(format!("record {n} has no `s3`")))?;
        let bucket = s3
            .pointer("/bucket/name")
            .and_then(|b| b.as_str())
            .ok_or_else(|| bad(format!("record {n} has no bucket name")))?;
        let object = s3.get("object").ok_or_else(|| bad(format!("record {n} has no `object`")))?;
        let raw_key =
            object.get("key").and_then(|k| k.as_str()).ok_or_else(|| bad(format!("record {n} has no object key")))?;
        // S3 form-encodes keys in notifications: `+` is a space, `%XX` a byte.
        let key = url_decode(raw_key)
            .ok_or_else(|| bad(format!("record {n}: object key {raw_key:?} is not valid URL encoding of UTF-8")))?;
        let size =
            object.get("size").and_then(|s| s.as_u64()).ok_or_else(|| bad(format!("record {n} has no object size")))?;
        let etag = object.get("eTag").and_then(|e| e.as_str()).map(|e| e.trim_matches('"').to_owned());
        let event_time = record.get("eventTime").and_then(|t| t.as_str()).and_then(|t| Timestamp::parse(t).ok());
        objects.push(S3ObjectCreated {
            bucket: bucket.to_owned(),
            key,
            size,
            etag,
            event_name: event_name.to_owned(),
            event_time,
        });
    }
    Ok(IngestMessage::S3Created { objects, ignored })
}

fn eventbridge(object: &serde_json::Map<String, serde_json::Value>) -> Result<IngestMessage, IngestError> {
    let kind = object.get("detail-type").and_then(|d| d.as_str()).unwrap_or_default();
    if kind != "Object Created" {
        return Ok(IngestMessage::S3Created { objects: Vec::new(), ignored: 1 });
    }
    let detail = object.get("detail").ok_or_else(|| bad("EventBridge event has no `detail`"))?;
    let bucket = detail
        .pointer("/bucket/name")
        .and_then(|b| b.as_str())
        .ok_or_else(|| bad("EventBridge event has no bucket name"))?;
    let key = detail
        .pointer("/object/key")
        .and_then(|k| k.as_str())
        .ok_or_else(|| bad("EventBridge event has no object key"))?;
    let size = detail
        .pointer("/object/size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("EventBridge event has no object size"))?;
    let etag = detail.pointer("/object/etag").and_then(|e| e.as_str()).map(|e| e.trim_matches('"').to_owned());
    let event_time = object.get("time").and_then(|t| t.as_str()).and_then(|t| Timestamp::parse(t).ok());
    let reason = detail.get("reason").and_then(|r| r.as_str()).unwrap_or("PutObject");
    Ok(IngestMessage::S3Created {
        objects: vec![S3ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            etag,
            event_name: format!("ObjectCreated:{reason}"),
            event_time,
        }],
        ignored: 0,
    })
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
fn url_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn an_inline_event_round_trips_and_checks_its_fields() {
        let file = FileArrived::inline("rcpt-1", at("2026-11-24T10:00:00Z"), Some("application/pdf"), b"%PDF-1.7");
        let envelope = Envelope::new("push/1", at("2026-11-24T10:00:01Z"), Message::FileArrived(file.clone()));
        let decoded = decode_ingest(&envelope.encode()).unwrap();
        assert_eq!(decoded, IngestMessage::File { id: "push/1".into(), file: Box::new(file.clone()) });
        assert_eq!(file.inline_bytes().unwrap().unwrap(), b"%PDF-1.7");

        let mut bad_hash = file.clone();
        bad_hash.blake3 = Some("xyz".into());
        let bytes = Envelope::new("push/2", at("2026-11-24T10:00:01Z"), Message::FileArrived(bad_hash)).encode();
        assert_eq!(decode_ingest(&bytes), Err(IngestError::Envelope(EnvelopeError::InvalidField { field: "blake3" })));
        let mut bad_uid = file;
        bad_uid.uid = String::new();
        let bytes = Envelope::new("push/3", at("2026-11-24T10:00:01Z"), Message::FileArrived(bad_uid)).encode();
        assert_eq!(decode_ingest(&bytes), Err(IngestError::Envelope(EnvelopeError::InvalidField { field: "uid" })));
    }

    #[test]
    fn a_created_at_that_does_not_parse_is_named() {
        let text = br#"{"v":1,"id":"x","sent_at":"2026-11-24T10:00:00Z","type":"file_arrived","body":{"uid":"a","created_at":"yesterday","form":"inline","data":""}}"#;
        let error = decode_ingest(text).unwrap_err().to_string();
        assert!(error.contains("yesterday") || error.contains("created_at"), "{error}");
    }

    #[test]
    fn other_messages_on_the_ingest_topic_are_refused() {
        let audit = crate::message::AuditEvent {
            action: crate::message::AuditAction::Read,
            outcome: crate::message::AuditOutcome::Ok,
            at: at("2026-11-24T10:00:00Z"),
            actor: "reader".into(),
            request_id: None,
            uid: None,
            segment_key: None,
            details: Default::default(),
        };
        let bytes = Envelope::new("a", at("2026-11-24T10:00:00Z"), Message::AuditEvent(audit)).encode();
        assert_eq!(decode_ingest(&bytes), Err(IngestError::WrongType { kind: "audit_event" }));
        assert!(matches!(decode_ingest(b"[1,2]"), Err(IngestError::NotAnEvent { .. })));
        assert!(matches!(decode_ingest(b"{\"hello\":1}"), Err(IngestError::NotAnEvent { .. })));
        assert!(matches!(decode_ingest(b"not json"), Err(IngestError::NotAnEvent { .. })));
    }

    const S3_EVENT: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
        "eventTime":"2026-11-24T10:00:00.000Z","eventName":"ObjectCreated:Put",
        "s3":{"s3SchemaVersion":"1.0","configurationId":"vera","bucket":{"name":"landing","arn":"arn:aws:s3:::landing"},
        "object":{"key":"in/2026-11-24/scan+%C3%A9t%C3%A9.pdf","size":1024,"eTag":"0123456789abcdef0123456789abcdef","sequencer":"0A1B2C3D4E5F678901"}}},
        {"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"landing"},"object":{"key":"x"}}}]}"#;

    #[test]
    fn s3_notifications_raw_through_sns_and_eventbridge() {
        let expected = S3ObjectCreated {
            bucket: "landing".into(),
            key: "in/2026-11-24/scan été.pdf".into(),
            size: 1024,
            etag: Some("0123456789abcdef0123456789abcdef".into()),
            event_name: "ObjectCreated:Put".into(),
            event_time: Some(at("2026-11-24T10:00:00Z")),
        };
        let direct = decode_ingest(S3_EVENT.as_bytes()).unwrap();
        assert_eq!(direct, IngestMessage::S3Created { objects: vec![expected.clone()], ignored: 1 });
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": S3_EVENT});
        assert_eq!(decode_ingest(sns.to_string().as_bytes()).unwrap(), direct);
        let eventbridge = serde_json::json!({"version": "0", "id": "e", "detail-type": "Object Created", "source": "aws.s3",
            "time": "2026-11-24T10:00:00Z", "detail": {"version": "0", "bucket": {"name": "landing"},
            "object": {"key": "in/2026-11-24/scan été.pdf", "size": 1024, "etag": "0123456789abcdef0123456789abcdef"}, "reason": "PutObject"}});
        let from_eventbridge = S3ObjectCreated { event_name: "ObjectCreated:PutObject".into(), ..expected };
        assert_eq!(
            decode_ingest(eventbridge.to_string().as_bytes()).unwrap(),
            direct_without_ignored(from_eventbridge)
        );
        assert_eq!(
            decode_ingest(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"landing"}"#).unwrap(),
            IngestMessage::S3Test
        );
        let broken = S3_EVENT.replace("\"size\":1024,", "");
        assert!(matches!(decode_ingest(broken.as_bytes()), Err(IngestError::BadS3Event { .. })));
    }

    fn direct_without_ignored(object: S3ObjectCreated) -> IngestMessage {
        IngestMessage::S3Created { objects: vec![object], ignored: 0 }
    }
}
