//! The reader service: a stateless HTTP front to the shards. Run any number of replicas.
//!
//! `GET /v1/files/{uid}?created_at=RFC3339` answers the file's bytes with its content type;
//! `HEAD` answers the headers only. The `ETag` is the file's BLAKE3 content hash, a single
//! `Range: bytes=…` inside the file is honoured (206, or 416 when unsatisfiable), and
//! `If-None-Match` with the current ETag answers 304.
//!
//! Read path: `locate_shard` → generation 0, 1, … of the address (past a missing
//! generation 0: late arrivals stored before their day's own rows) → the segment index from
//! the cache (one suffix GET on a miss) → one range GET → decode (with the segment's
//! dictionary) → BLAKE3 check. A warm read is that one range GET; a cold one adds the
//! suffix GET.
//!
//! Tombstones live in the segment's `.vera.meta` sidecar, and a writer tags the segment
//! (`vera-sidecar=1`) before it creates the sidecar. Every GET of a segment reports its tag
//! count (`x-amz-tagging-count`), so an untagged segment needs no sidecar GET at all, and
//! a segment that just gained its first sidecar is noticed by the very next read, which
//! then reads the sidecar before answering: a segment's first tombstone answers 410 at
//! once. A sidecar that exists is cached for `sidecar_ttl` (default 5 s) and dropped
//! earlier by the bus's `events` ([`events`]: tombstones and sealed segments, fanned out
//! to every replica). A segment a repack superseded sends the read on to its successor
//! (`ShardStore::locate`), so a repack never hides a live file or shows one twice.
//! While the events are followed, an address's missing generations are remembered for
//! as long (`ShardStore::cache_absence`), so asking again for a uid that is not there
//! costs no GET; a `ShardSealed` event for the address drops it.
//! Corrupt data answers 500 `corrupt_segment`, never wrong bytes, and counts in
//! `vera_reader_corrupt_total`.
//!
//! Errors are JSON `{"error": CODE, "message": TEXT}` with distinct statuses: 400
//! `malformed_uid` / `bad_created_at`, 404 `not_found`, 410 `gone`, 416
//! `range_not_satisfiable`, 500 `corrupt_segment` / `misconfigured`, 503
//! `storage_unavailable` (with `Retry-After`).
//!
//! A response is sent only after the whole file has been decoded and its BLAKE3 checked, so
//! the reader holds one file (at most `max_file_bytes`) in memory per request in flight and
//! never starts a 200 it would have to break off: corruption is a clean 500, not a
//! truncated body. `serve` sets TCP_NODELAY on every connection.
//!
//! Every successful read is audited: an `AuditEvent(READ)` goes to a channel that a
//! background task batches onto the bus's `audit` topic.

pub mod audit;
pub mod events;
pub mod ingest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome};
use vera_protocol::routing::{RoutingTable, sidecar_key_of};
use vera_protocol::sidecar::Sidecar;
use vera_store::shards::{FileRead, ShardError, ShardStore, Sidecars, sidecar_of};
use vera_store::{StoreError, StoreErrorKind};

/// The OpenAPI description served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// How long a sidecar (tombstones) is trusted before it is read again.
    pub sidecar_ttl: Duration,
    /// Sidecars kept in memory.
    pub sidecar_capacity: u64,
    /// Actor name in audit events.
    pub actor: String,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings { sidecar_ttl: Duration::from_secs(5), sidecar_capacity: 100_000, actor: "reader".to_owned() }
    }
}

pub struct Reader {
    shards: ShardStore,
    routing: RoutingTable,
    sidecars: moka::future::Cache<String, Option<Arc<Sidecar>>>,
    audit: Option<audit::AuditSender>,
    settings: ReaderSettings,
    store_counts: Option<Arc<vera_store::counting::RequestCounts>>,
    sidecar_fetches: std::sync::atomic::AtomicU64,
    /// Whether an [`events`] subscription is live (reported on `/metrics`).
    following_events: std::sync::atomic::AtomicBool,
    /// Takes uploads (`PUT`) when set.
    ingest: Option<ingest::HttpIngest>,
}

impl Reader {
    /// Exports these object-store request counts (from a `CountingStore` under the
    /// reader) on `/metrics` as `vera_reader_store_requests_total{op}`, so S3 calls per
    /// read is `rate(store requests) / rate(vera_reader_requests_total)`.
    pub fn with_store_counts(mut self, counts: Arc<vera_store::counting::RequestCounts>) -> Self {
        self.store_counts = Some(counts);
        self
    }

    /// Takes `PUT /v1/files/{uid}` uploads onto the bus's `ingest` topic ([`ingest`]).
    pub fn with_ingest(mut self, ingest: ingest::HttpIngest) -> Self {
        self.ingest = Some(ingest);
        self
    }

    fn export_store_counts(&self) {
        let cache = self.shards.cache_stats();
        metrics::counter!("vera_reader_index_cache_total", "result" => "hit").absolute(cache.hits);
        metrics::counter!("vera_reader_index_cache_total", "result" => "miss").absolute(cache.misses);
        metrics::gauge!("vera_reader_index_cache_bytes").set(cache.bytes as f64);
        metrics::gauge!("vera_reader_index_cache_dictionary_bytes").set(cache.dictionary_bytes as f64);
        metrics::gauge!("vera_reader_index_cache_files").set(cache.files as f64);
        let Some(counts) = &self.store_counts else { return };
        let snapshot = counts.snapshot();
        for (op, value) in
            [("get", snapshot.gets), ("head", snapshot.heads), ("list", snapshot.lists), ("put", snapshot.puts)]
        {
            metrics::counter!("vera_reader_store_requests_total", "op" => op).absolute(value);
        }
        metrics::counter!("vera_reader_store_bytes_read_total").absolute(snapshot.bytes_got);
    }

    pub fn new(
        shards: ShardStore,
        routing: RoutingTable,
        audit: Option<audit::AuditSender>,
        settings: ReaderSettings,
    ) -> Self {
        let sidecars = moka::future::Cache::builder()
            .max_capacity(settings.sidecar_capacity)
            .time_to_live(settings.sidecar_ttl)
            .support_invalidation_closures()
            .build();
        Reader {
            // Missing generations are trusted as long as sidecars, and only while the
            // reader follows the events that announce new segments.
            shards: shards.with_absence_ttl(settings.sidecar_ttl),
            routing,
            sidecars,
            audit,
            settings,
            store_counts: None,
            sidecar_fetches: Default::default(),
            following_events: Default::default(),
            ingest: None,
        }
    }

    /// Drops what is cached about a segment (its sidecar), e.g. on a tombstone event.
    pub async fn invalidate(&self, segment_key: &str) {
        self.sidecars.invalidate(&sidecar_key_of(segment_key)).await;
    }

    /// Drops the cached sidecars of every segment under `addr` (its generations and
    /// their repacks), and what was remembered missing there: what a `TombstoneRequested`
    /// or `ShardSealed` event about it means.
    pub async fn invalidate_address(&self, addr: &vera_protocol::routing::ShardAddr) {
        self.shards.forget_absent_under(addr);
        let prefix = addr.key_prefix();
        if let Err(error) = self.sidecars.invalidate_entries_if(move |key, _| key.starts_with(&prefix)) {
            tracing::error!(%error, "cannot invalidate sidecars by address; dropping them all");
            self.invalidate_all_sidecars().await;
        }
        self.sidecars.run_pending_tasks().await;
    }

    /// Drops every cached sidecar and every missing segment remembered (after a break in
    /// the events subscription).
    pub async fn invalidate_all_sidecars(&self) {
        self.shards.forget_all_absent();
        self.sidecars.invalidate_all();
        self.sidecars.run_pending_tasks().await;
    }

    fn set_following_events(&self, on: bool) {
        // A missing generation may be remembered only while new segments are announced.
        self.shards.cache_absence(on);
        self.following_events.store(on, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("vera_reader_following_events").set(if on { 1.0 } else { 0.0 });
    }

    /// Whether the reader is subscribed to the bus's events right now.
    pub fn following_events(&self) -> bool {
        self.following_events.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Empties every cache (indexes and sidecars), as a restart would: the next read of
    /// any file is a cold read. For measurements and operators.
    pub async fn forget_everything(&self) {
        self.shards.forget_all();
        self.sidecars.invalidate_all();
        self.sidecars.run_pending_tasks().await;
    }

    /// Sidecars read from the store so far (cache misses of the tombstone check).
    pub fn sidecar_fetches(&self) -> u64 {
        self.sidecar_fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shard store this reader reads through (its cache statistics, for instance).
    pub fn shards(&self) -> &ShardStore {
        &self.shards
    }
}

/// The reader's sidecar cache: each sidecar (or its absence) is trusted for
/// `sidecar_ttl`, then read again.
#[async_trait::async_trait]
impl Sidecars for Reader {
    async fn sidecar(&self, segment_key: &str) -> Result<Option<Arc<Sidecar>>, ShardError> {
        let store = self.shards.store().clone();
        let fetch_key = segment_key.to_owned();
        let fetches = &self.sidecar_fetches;
        self.sidecars
            .try_get_with(sidecar_key_of(segment_key), async move {
                fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("vera_reader_sidecar_fetches_total").increment(1);
                Ok::<_, ShardError>(sidecar_of(store.as_ref(), &fetch_key).await?.map(Arc::new))
            })
            .await
            .map_err(|shared: Arc<ShardError>| match shared.as_ref() {
                ShardError::Sidecar { key, source } => ShardError::Sidecar { key: key.clone(), source: source.clone() },
                ShardError::Store(error) => ShardError::Store(StoreError::new(error.kind, &error.key, &error.message)),
                other => ShardError::Store(StoreError::new(StoreErrorKind::Other, segment_key, other.to_string())),
            })
    }

    async fn forget(&self, segment_key: &str) {
        self.invalidate(segment_key).await;
    }
}

/// Why a read did not return bytes; each maps to one status and error code.
#[derive(Debug, Clone)]
enum ReadFailure {
    MalformedUid,
    BadCreatedAt(String),
    NotFound { uid: String, created_at: String },
    Gone,
    Corrupt(String),
    Unavailable(String),
    Misconfigured(String),
}

impl ReadFailure {
    fn from_store(error: StoreError) -> Self {
        match error.kind {
            StoreErrorKind::Config => ReadFailure::Misconfigured(error.to_string()),
            StoreErrorKind::Corrupt => ReadFailure::Corrupt(error.to_string()),
            _ => ReadFailure::Unavailable(error.to_string()),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ReadFailure::MalformedUid => (
                StatusCode::BAD_REQUEST,
                "malformed_uid",
                "a uid is 1 to 255 bytes of UTF-8 without control characters".to_owned(),
            ),
            ReadFailure::BadCreatedAt(why) => (StatusCode::BAD_REQUEST, "bad_created_at", why.clone()),
            ReadFailure::NotFound { uid, created_at } => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no file {uid} created at {created_at}; check the uid and the created_at, which must be the \
                     file's own (another created_at points at another shard)"
                ),
            ),
            ReadFailure::Gone => (StatusCode::GONE, "gone", "this file was erased".to_owned()),
            ReadFailure::Corrupt(why) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_segment", why.clone()),
            ReadFailure::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", why.clone()),
            ReadFailure::Misconfigured(why) => (StatusCode::INTERNAL_SERVER_ERROR, "misconfigured", why.clone()),
        }
    }
}

impl IntoResponse for ReadFailure {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        metrics::counter!("vera_reader_errors_total", "code" => code).increment(1);
        if matches!(self, ReadFailure::Corrupt(_)) {
            metrics::counter!("vera_reader_corrupt_total").increment(1);
            tracing::error!(%message, "corrupt data: refused to serve it");
        }
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    created_at: Option<String>,
}

/// A byte range inside a file of `len` bytes, from a `Range` header.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: answer the whole file, as RFC 9110 allows
    }
    let (start, end) = spec.split_once('-')?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (start, "") => (start.parse().ok()?, len.checked_sub(1)?),
        (start, end) => {
            let (s, e): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            if e < s {
                return None;
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if range.0 >= len { Some(Err(())) } else { Some(Ok(range)) }
}

async fn read(reader: &Reader, uid: &str, created_at: Option<&str>) -> Result<FileRead, ReadFailure> {
    if vera_protocol::routing::validate_uid(uid).is_err() {
        return Err(ReadFailure::MalformedUid);
    }
    let text = created_at
        .ok_or_else(|| ReadFailure::BadCreatedAt("the created_at query parameter is required (RFC 3339)".to_owned()))?;
    let at = Timestamp::parse(text)
        .map_err(|e| ReadFailure::BadCreatedAt(format!("created_at {text:?} is not an RFC 3339 time: {e}")))?;
    match reader.shards.read_file_with(&reader.routing, uid, at, reader).await {
        Ok(file) => Ok(file),
        Err(ShardError::NotFound { .. }) => {
            Err(ReadFailure::NotFound { uid: uid.to_owned(), created_at: at.to_rfc3339() })
        }
        Err(ShardError::Gone { .. }) => Err(ReadFailure::Gone),
        Err(ShardError::Routing { source, .. }) => {
            Err(ReadFailure::BadCreatedAt(format!("created_at {text} cannot be routed: {source}")))
        }
        Err(ShardError::Segment { key, source }) => Err(ReadFailure::Corrupt(format!("segment {key}: {source}"))),
        Err(ShardError::Sidecar { key, source }) => {
            Err(ReadFailure::Corrupt(format!("sidecar of {key} is unreadable: {source}")))
        }
        Err(ShardError::Store(error)) => Err(ReadFailure::from_store(error)),
    }
}

async fn file(
    State(reader): State<Arc<Reader>>,
    method: Method,
    Path(uid): Path<String>,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = read(&reader, &uid, query.created_at.as_deref()).await;
    let method_label = if method == Method::HEAD { "head" } else { "get" };
    let response = match result {
        Err(failure) => failure.into_response(),
        Ok(file) => {
            let etag = format!("\"{}\"", vera_protocol::hex::encode(&file.content_hash));
            if let Some(audit) = &reader.audit {
                audit.send(AuditEvent {
                    action: AuditAction::Read,
                    outcome: AuditOutcome::Ok,
                    at: vera_store::Clock::now(&vera_store::SystemClock),
                    actor: reader.settings.actor.clone(),
                    request_id: None,
                    uid: Some(uid.clone()),
                    segment_key: Some(file.key.clone()),
                    details: [("method".to_owned(), method_label.to_owned())].into_iter().collect(),
                });
            }
            respond(&method, &headers, file, etag)
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("vera_reader_requests_total", "method" => method_label, "status" => status).increment(1);
    metrics::histogram!("vera_reader_request_seconds", "method" => method_label)
        .record(started.elapsed().as_secs_f64());
    response
}

fn respond(method: &Method, headers: &HeaderMap, file: FileRead, etag: String) -> Response {
    let len = file.bytes.len() as u64;
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let etag_value = HeaderValue::from_str(&etag).expect("hex in quotes is a valid header");
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*")) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| parse_range(v, len));
    let (status, body, content_range) = match range {
        Some(Err(())) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                axum::Json(serde_json::json!({
                    "error": "range_not_satisfiable",
                    "message": format!("the file has {len} bytes"),
                })),
            )
                .into_response();
        }
        Some(Ok((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            bytes::Bytes::from(file.bytes).slice(start as usize..=end as usize),
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        None => (StatusCode::OK, bytes::Bytes::from(file.bytes), None),
    };
    metrics::counter!("vera_reader_bytes_total").increment(body.len() as u64);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, etag_value)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    let body = if *method == Method::HEAD { axum::body::Body::empty() } else { axum::body::Body::from(body) };
    response.body(body).expect("valid response parts")
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the object store answers (a missing probe key is an answer).
async fn readyz(State(reader): State<Arc<Reader>>) -> Response {
    match reader.shards.store().head("control/readyz-probe").await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(error) if error.kind == StoreErrorKind::NotFound => (StatusCode::OK, "ready").into_response(),
        Err(error) => ReadFailure::from_store(error).into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, with TCP_NODELAY on every
/// connection: without it a response written in two segments waits for the client's
/// delayed ACK (40 ms on Linux) before its second half leaves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// The service's routes. `metrics` renders `/metrics` when given.
pub fn router(reader: Arc<Reader>, metrics: Option<metrics_exporter_prometheus::PrometheusHandle>) -> Router {
    let mut router = Router::new()
        .route("/v1/files/{uid}", get(file).head(file).put(ingest::put_file))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }));
    if let Some(handle) = metrics {
        let render = move |State(reader): State<Arc<Reader>>| {
            reader.export_store_counts();
            std::future::ready(handle.render())
        };
        router = router.route("/metrics", get(render));
    }
    router.with_state(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))), "end clamped to the file");
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())), "starts past the end");
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), None, "invalid: ignored, whole file");
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None, "several ranges: whole file");
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
