//! HTTP ingest for systems without a bus: `PUT /v1/files/{uid}?created_at=…`.
//!
//! The body is the file. The answer is 201 only once the file is durable on the bus's
//! `ingest` topic: inline in a `file_arrived` event when it fits the bus's message limit,
//! otherwise written to the landing store (create-if-absent, named by its BLAKE3) and
//! announced by a staged event. An ingest worker then packs it like any pushed file.
//!
//! The PUT is create-if-absent (`If-None-Match: *` semantics): a uid already stored with
//! the same bytes answers 200 and publishes nothing; with other bytes 409, or 412 when
//! the request says `If-None-Match: *` (which refuses any existing file). An erased uid
//! answers 410. Two PUTs of one uid racing before either is packed both answer 201; the
//! ingest worker stores the first and dead-letters the second if its bytes differ.
//! A body over the size limit answers 413 before it is read; `Content-MD5`, `x-vera-blake3`
//! (hex) and `x-amz-checksum-sha256` (base64) are checked when sent (400 `bad_digest`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use sha2::Digest;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::ingest::{FileArrived, FileContent};
use vera_store::shards::ShardError;
use vera_store::{ObjectStore, PutOptions, StoreErrorKind};

use crate::{FileQuery, Reader};

/// Where uploads go.
pub struct HttpIngest {
    pub bus: Arc<dyn Bus>,
    /// Bodies too large for one bus message are written here, under `landing_prefix`.
    pub landing: Arc<dyn ObjectStore>,
    /// Must be the ingest workers' landing prefix.
    pub landing_prefix: String,
    /// Largest body accepted (the workers' `--max-file-bytes`).
    pub max_file_bytes: u64,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    metrics::counter!("vera_reader_ingest_total", "status" => status.as_u16().to_string()).increment(1);
    let body = serde_json::json!({ "error": code, "message": message.into() }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

fn created(status: StatusCode, uid: &str, created_at: Timestamp, hash: &[u8; 32], how: &str) -> Response {
    metrics::counter!("vera_reader_ingest_total", "status" => status.as_u16().to_string()).increment(1);
    let etag = format!("\"{}\"", vera_protocol::hex::encode(hash));
    let body = serde_json::json!({ "uid": uid, "created_at": created_at.to_rfc3339(), "blake3": vera_protocol::hex::encode(hash), "status": how });
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The handler of `PUT /v1/files/{uid}`.
pub(crate) async fn put_file(
    State(reader): State<Arc<Reader>>,
    Path(uid): Path<String>,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(ingest) = reader.ingest.as_ref() else {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this reader does not take uploads; run `vera serve --ingest` for PUT",
        );
    };
    if vera_protocol::routing::validate_uid(&uid).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_uid",
            "a uid is 1 to 255 bytes of UTF-8 without control characters",
        );
    }
    let Some(text) = query.created_at.as_deref() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_created_at",
            "the created_at query parameter is required (RFC 3339)",
        );
    };
    let created_at = match Timestamp::parse(text) {
        Ok(at) => at,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_created_at",
                format!("created_at {text:?} is not an RFC 3339 time: {e}"),
            );
        }
    };
    if let Err(e) = reader.routing.locate(&uid, created_at) {
        return error(StatusCode::BAD_REQUEST, "bad_created_at", format!("created_at {text} cannot be routed: {e}"));
    }
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) if vera_protocol::shard::writer::valid_content_type(value) => Some(value.to_owned()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_content_type",
                "Content-Type must be 1 to 127 bytes of printable ASCII",
            );
        }
    };
    let limit = ingest.max_file_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("a file is at most {limit} bytes"));
    }
    let bytes = match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(bytes) => bytes,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("a file is at most {limit} bytes")),
    };
    if let Err(message) = check_digests(&headers, &bytes) {
        return error(StatusCode::BAD_REQUEST, "bad_digest", message);
    }
    let hash = *blake3::hash(&bytes).as_bytes();
    let must_be_new = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == b"*");
    match reader.shards.locate(&reader.routing, &uid, created_at, reader.as_ref()).await {
        Ok(located) if located.is_tombstoned(&uid) => {
            return error(StatusCode::GONE, "gone", "this file was erased and will not be stored again");
        }
        Ok(located) => {
            let stored = located.index.find(&uid).map(|f| f.entry.content_hash);
            return match stored {
                _ if must_be_new => error(
                    StatusCode::PRECONDITION_FAILED,
                    "exists",
                    "a file with this uid is stored (If-None-Match: *)",
                ),
                Some(stored) if stored == hash => created(StatusCode::OK, &uid, created_at, &hash, "stored"),
                _ => error(StatusCode::CONFLICT, "conflict", "a file with this uid is stored with other content"),
            };
        }
        Err(ShardError::NotFound { .. }) => {}
        Err(ShardError::Gone { .. }) => {
            return error(StatusCode::GONE, "gone", "this file was erased and will not be stored again");
        }
        Err(ShardError::Store(e)) if e.kind != StoreErrorKind::Corrupt => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string());
        }
        Err(other) => return error(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_segment", other.to_string()),
    }
    let now = vera_store::Clock::now(&vera_store::SystemClock);
    let hex = vera_protocol::hex::encode(&hash);
    let inline = FileArrived::inline(&uid, created_at, content_type.as_deref(), &bytes).into_envelope(now).encode();
    let (payload, how) = if inline.len() <= ingest.bus.max_message_bytes() {
        (inline, "queued_inline")
    } else {
        let key = format!("{}http/{hex}", ingest.landing_prefix);
        let size = bytes.len() as u64;
        match ingest.landing.put(&key, bytes, PutOptions::create()).await {
            Ok(_) => {}
            // Named by its content: the same bytes are there already.
            Err(e) if e.kind == StoreErrorKind::AlreadyExists => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()),
        }
        let file = FileArrived {
            uid: uid.clone(),
            created_at,
            content_type,
            blake3: Some(hex),
            sha256: None,
            content: FileContent::Staged { key, size, etag: None },
        };
        (file.into_envelope(now).encode(), "queued_staged")
    };
    match ingest.bus.publish(topics::INGEST, vec![Outgoing { key: None, payload: Bytes::from(payload) }]).await {
        Ok(()) => created(StatusCode::CREATED, &uid, created_at, &hash, how),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", e.to_string()),
    }
}

/// Checks the digests a client sent with the body.
fn check_digests(headers: &HeaderMap, bytes: &[u8]) -> Result<(), String> {
    let base64 = base64::engine::general_purpose::STANDARD;
    if let Some(value) = headers.get("content-md5") {
        let expected =
            value.to_str().ok().and_then(|v| base64.decode(v.trim()).ok()).ok_or("Content-MD5 is not base64")?;
        if md5::Md5::digest(bytes).as_slice() != expected.as_slice() {
            return Err("the body does not match its Content-MD5".into());
        }
    }
    if let Some(value) = headers.get("x-amz-checksum-sha256") {
        let expected = value
            .to_str()
            .ok()
            .and_then(|v| base64.decode(v.trim()).ok())
            .ok_or("x-amz-checksum-sha256 is not base64")?;
        if sha2::Sha256::digest(bytes).as_slice() != expected.as_slice() {
            return Err("the body does not match its x-amz-checksum-sha256".into());
        }
    }
    if let Some(value) = headers.get("x-vera-blake3") {
        let expected = value.to_str().unwrap_or_default().trim().to_ascii_lowercase();
        if blake3::hash(bytes).to_hex().as_str() != expected {
            return Err("the body does not match its x-vera-blake3".into());
        }
    }
    Ok(())
}
