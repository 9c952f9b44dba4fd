//! Lifecycle operations on immutable segments: what changes goes into the segment's
//! mutable `.vera.meta` sidecar, written by compare-and-swap; the segment itself is never
//! touched.
//!
//! [`Lifecycle::delete`] tombstones one file (GDPR erasure and friends): it finds the
//! segment holding the file, adds the tombstone to its sidecar (create-if-absent, or
//! `If-Match` on the ETag it read, re-reading and retrying when another writer got there
//! first), then publishes a `TombstoneRequested` event keyed by the shard address and a
//! DELETE audit event. Deleting a file twice changes nothing the second time (the event is
//! published again, so a crash between the write and the publish loses nothing; consumers
//! count tombstones per uid). The sidecar holds uids, times, reasons, request ids and
//! operator ids: never file content or other personal data.
//!
//! [`retention`] extends retention and sets legal holds per file, keeping the segment's
//! Object Lock in step; [`tracker`] turns tombstone events into repack requests;
//! [`repack`] rewrites a segment without its erased files. Every operation finds the file
//! through repacks (`ShardStore::locate`) and writes to the sidecar of the segment that
//! holds it now.

pub mod repack;
pub mod retention;
pub mod tracker;

pub use repack::{RepackReport, RepackSettings};
pub use retention::{HoldRequest, LockOutcome, RetainRequest};

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message, TombstoneRequested};
use vera_protocol::routing::{RoutingTable, ShardAddr, sidecar_key_of};
use vera_protocol::sidecar::{Change, Sidecar, SidecarError, Tombstone, TombstoneReason};
use vera_store::shards::{Located, META_OBJECT_HASH, ShardError, ShardStore, StoreSidecars};
use vera_store::{Clock, PutOptions, StoreError, StoreErrorKind};

/// How often a sidecar write is retried after losing a compare-and-swap race.
pub const DEFAULT_CAS_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no file {uid:?} created at {created_at} (check the uid and its own created_at)")]
    UnknownFile { uid: String, created_at: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the sidecar of {segment_key} is unreadable")]
    CorruptSidecar { segment_key: String, source: SidecarError },
    #[error("segment {segment_key} has no object hash in its metadata; it was not written by VERA")]
    MissingObjectHash { segment_key: String },
    #[error("the sidecar of {segment_key} kept changing: {attempts} compare-and-swap attempts lost")]
    Contended { segment_key: String, attempts: u32 },
    #[error("file {uid:?} was erased: a repack of {segment_key} dropped its bytes, nothing is left to change")]
    Erased { uid: String, segment_key: String },
    #[error("segment {segment_key} was replaced by a repack; its sidecar is frozen")]
    Superseded { segment_key: String },
    #[error("retention of {uid:?} cannot be shortened: it is kept until {current}, {requested} was asked")]
    WouldShortenRetention { uid: String, current: String, requested: String },
    #[error("the repack of {segment_key} cannot go on: {reason}")]
    Repack { segment_key: String, reason: String },
    #[error("reading the segments failed")]
    Shards(#[from] ShardError),
    #[error("object store request failed")]
    Store(#[from] StoreError),
    #[error("publishing to the bus failed")]
    Bus(#[from] vera_bus::BusError),
}

/// One file to tombstone, and who asks and why.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub uid: String,
    pub created_at: Timestamp,
    pub reason: TombstoneReason,
    /// The ticket or request this deletion answers (ids: `A-Z a-z 0-9 . _ : -`).
    pub request_id: String,
    pub operator: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The tombstone was written now.
    Tombstoned { segment_key: String },
    /// The file was already tombstoned; nothing changed.
    AlreadyTombstoned { segment_key: String },
}

impl DeleteOutcome {
    pub fn segment_key(&self) -> &str {
        match self {
            DeleteOutcome::Tombstoned { segment_key } | DeleteOutcome::AlreadyTombstoned { segment_key } => segment_key,
        }
    }
}

/// The lifecycle operations, over one store and bus.
pub struct Lifecycle {
    shards: ShardStore,
    routing: RoutingTable,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    cas_attempts: u32,
}

impl Lifecycle {
    pub fn new(shards: ShardStore, routing: RoutingTable, bus: Arc<dyn Bus>, clock: Arc<dyn Clock>) -> Self {
        Lifecycle { shards, routing, bus, clock, cas_attempts: DEFAULT_CAS_ATTEMPTS }
    }

    /// The shard store this lifecycle works on (and through it, the object store).
    pub fn shards(&self) -> &ShardStore {
        &self.shards
    }

    pub fn with_cas_attempts(mut self, attempts: u32) -> Self {
        self.cas_attempts = attempts.max(1);
        self
    }

    async fn locate(&self, uid: &str, created_at: Timestamp) -> Result<Located, LifecycleError> {
        let sidecars = StoreSidecars(self.shards.store().as_ref());
        match self.shards.locate(&self.routing, uid, created_at, &sidecars).await {
            Ok(located) => Ok(located),
            Err(ShardError::NotFound { .. }) => {
                Err(LifecycleError::UnknownFile { uid: uid.to_owned(), created_at: created_at.to_rfc3339() })
            }
            Err(ShardError::Routing { source, .. }) => Err(LifecycleError::InvalidRequest(source.to_string())),
            Err(ShardError::Sidecar { key, source }) => {
                Err(LifecycleError::CorruptSidecar { segment_key: key, source })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Applies `change` to the sidecar of the segment holding `uid` now. A repack that
    /// supersedes that segment meanwhile freezes its sidecar; the change then goes to
    /// the new segment's sidecar instead. Returns the segment key and the sidecar as
    /// written (or as found, when nothing changed).
    async fn change_file(
        &self,
        uid: &str,
        created_at: Timestamp,
        change: impl Fn(&mut Sidecar, &str) -> Result<Change, LifecycleError>,
    ) -> Result<(ShardAddr, String, Change, Sidecar), LifecycleError> {
        let mut previous: Option<String> = None;
        for _ in 0..=vera_store::shards::MAX_REPACK_HOPS {
            let located = self.locate(uid, created_at).await?;
            if previous.as_deref() == Some(located.key.as_str()) {
                // Superseded, yet the file is still found here: a repack dropped it.
                return Err(LifecycleError::Erased { uid: uid.to_owned(), segment_key: located.key });
            }
            match self.update_sidecar(&located.key, |sidecar| change(sidecar, &located.key)).await {
                Err(LifecycleError::Superseded { .. }) => previous = Some(located.key),
                Ok((changed, sidecar)) => return Ok((located.addr, located.key, changed, sidecar)),
                Err(other) => return Err(other),
            }
        }
        Err(LifecycleError::Contended { segment_key: uid.to_owned(), attempts: self.cas_attempts })
    }

    /// Tombstones one file; see the module docs.
    pub async fn delete(&self, request: &DeleteRequest) -> Result<DeleteOutcome, LifecycleError> {
        validate_request(&request.uid, &request.request_id, &request.operator)?;
        let now = self.clock.now();
        let tombstone = Tombstone {
            at: now,
            reason: request.reason,
            request_id: request.request_id.clone(),
            operator: request.operator.clone(),
        };
        let tombstone_in = |sidecar: &mut Sidecar, segment_key: &str| {
            sidecar
                .tombstone(&request.uid, tombstone.clone())
                .map_err(|source| LifecycleError::CorruptSidecar { segment_key: segment_key.to_owned(), source })
        };
        let (addr, mut segment_key, mut changed, _) =
            self.change_file(&request.uid, request.created_at, tombstone_in).await?;
        if ShardAddr::from_staging_key(&segment_key).is_ok() {
            // A compactor may have merged the file into a final generation while this
            // tombstone went to the staging copy (ADR 0005): tombstone what a read finds
            // now as well. The compactor, having written, reads the staging sidecar, so
            // one of the two always sees the other.
            let (_, now_key, now_changed, _) = self.change_file(&request.uid, request.created_at, tombstone_in).await?;
            if now_key != segment_key {
                (segment_key, changed) = (now_key, now_changed);
            }
        }
        self.mark_erased(&addr, &request.uid, &tombstone).await?;
        let event = Message::TombstoneRequested(TombstoneRequested {
            request_id: request.request_id.clone(),
            uid: request.uid.clone(),
            created_at: request.created_at,
            addr,
            reason: request.reason,
            operator: request.operator.clone(),
            requested_at: now,
        });
        let audit = Message::AuditEvent(AuditEvent {
            action: AuditAction::Delete,
            outcome: AuditOutcome::Ok,
            at: now,
            actor: request.operator.clone(),
            request_id: Some(request.request_id.clone()),
            uid: Some(request.uid.clone()),
            segment_key: Some(segment_key.clone()),
            details: BTreeMap::from([
                ("reason".to_owned(), format!("{:?}", request.reason)),
                ("changed".to_owned(), (changed == Change::Changed).to_string()),
            ]),
        });
        // Ids derived from the request, so a repeated delete publishes recognisable duplicates.
        let id = format!("{}/{}", request.request_id, request.uid);
        self.publish(topics::EVENTS, format!("tombstone/{id}"), now, event).await?;
        self.publish(topics::AUDIT, format!("delete/{id}"), now, audit).await?;
        tracing::info!(uid = %request.uid, segment = %segment_key, changed = ?changed, "file tombstoned");
        Ok(match changed {
            Change::Changed => DeleteOutcome::Tombstoned { segment_key },
            Change::Unchanged => DeleteOutcome::AlreadyTombstoned { segment_key },
        })
    }

    /// Writes the uid's erasure marker at its address (create-if-absent, FORMAT.md §5.6):
    /// the tombstone outlives the bytes, so a replayed ingest event or pack task never
    /// stores an erased file again after a repack or compaction dropped it.
    async fn mark_erased(&self, addr: &ShardAddr, uid: &str, tombstone: &Tombstone) -> Result<(), LifecycleError> {
        let marker = serde_json::json!({
            "erasure_id": vera_protocol::routing::erasure_id(uid),
            "at": tombstone.at,
            "reason": tombstone.reason,
            "request_id": tombstone.request_id,
        });
        let body = Bytes::from(serde_json::to_vec(&marker).unwrap_or_default());
        match self.shards.store().put(&addr.erasure_key(uid), body, PutOptions::create()).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind == StoreErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn publish(&self, topic: &str, id: String, at: Timestamp, message: Message) -> Result<(), LifecycleError> {
        let envelope = Envelope::new(id, at, message);
        let key = envelope.ordering_key();
        let payload = Bytes::from(envelope.encode());
        self.bus.publish(topic, vec![Outgoing { key, payload }]).await?;
        Ok(())
    }

    /// Reads the segment's sidecar (or starts one), applies `change`, and writes it back by
    /// compare-and-swap, retrying from a fresh read when another writer won.
    /// Refuses with [`LifecycleError::Superseded`] once a repack froze the sidecar.
    async fn update_sidecar(
        &self,
        segment_key: &str,
        change: impl Fn(&mut Sidecar) -> Result<Change, LifecycleError>,
    ) -> Result<(Change, Sidecar), LifecycleError> {
        let store = self.shards.store();
        let sidecar_key = sidecar_key_of(segment_key);
        for attempt in 1..=self.cas_attempts {
            let (mut sidecar, etag) = match store.get(&sidecar_key).await {
                Ok(got) => {
                    let sidecar = Sidecar::decode(&got.body).map_err(|source| LifecycleError::CorruptSidecar {
                        segment_key: segment_key.to_owned(),
                        source,
                    })?;
                    (sidecar, Some(got.meta.etag))
                }
                Err(error) if error.kind == StoreErrorKind::NotFound => (self.new_sidecar(segment_key).await?, None),
                Err(error) => return Err(error.into()),
            };
            if change(&mut sidecar)? == Change::Unchanged {
                return Ok((Change::Unchanged, sidecar));
            }
            if sidecar.superseded.is_some() {
                return Err(LifecycleError::Superseded { segment_key: segment_key.to_owned() });
            }
            let options = match etag {
                Some(etag) => PutOptions::update(etag),
                None => PutOptions::create(),
            };
            match store.put(&sidecar_key, Bytes::from(sidecar.encode()), options).await {
                Ok(_) => return Ok((Change::Changed, sidecar)),
                Err(error) if matches!(error.kind, StoreErrorKind::Precondition | StoreErrorKind::AlreadyExists) => {
                    tracing::debug!(sidecar = %sidecar_key, attempt, "sidecar changed meanwhile; reading it again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(LifecycleError::Contended { segment_key: segment_key.to_owned(), attempts: self.cas_attempts })
    }

    /// A fresh sidecar for a segment that has none, after tagging the segment as having
    /// one (readers skip the sidecar of an untagged segment).
    async fn new_sidecar(&self, segment_key: &str) -> Result<Sidecar, LifecycleError> {
        vera_store::shards::mark_has_sidecar(self.shards.store().as_ref(), segment_key).await?;
        let meta = self.shards.store().head(segment_key).await?;
        let hash = meta
            .metadata
            .get(META_OBJECT_HASH)
            .and_then(|hex| vera_protocol::hex::decode(hex))
            .ok_or_else(|| LifecycleError::MissingObjectHash { segment_key: segment_key.to_owned() })?;
        Ok(Sidecar::new(segment_key, hash))
    }
}

/// Claims batches from `topic` until `shutdown`, or, with `until_idle`, until a claim
/// comes back empty (the one-shot form a CronJob runs). Claim errors are retried.
pub(crate) async fn next_batch(
    bus: &dyn Bus,
    topic: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    until_idle: bool,
) -> Option<Vec<vera_bus::Delivery>> {
    while !shutdown.is_cancelled() {
        let claimed = match bus.claim(topic, 32, std::time::Duration::from_secs(300)).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, topic, "claiming failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if !claimed.is_empty() {
            return Some(claimed);
        }
        if until_idle {
            return None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
    None
}

/// Checks what every operator request carries: a uid, a request id and an operator id.
fn validate_request(uid: &str, request_id: &str, operator: &str) -> Result<(), LifecycleError> {
    vera_protocol::routing::validate_uid(uid)
        .map_err(|e| LifecycleError::InvalidRequest(format!("uid {uid:?}: {e}")))?;
    for (field, value) in [("request_id", request_id), ("operator", operator)] {
        if !vera_protocol::ids::is_valid_id(value) {
            return Err(LifecycleError::InvalidRequest(format!(
                "{field} {value:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
            )));
        }
    }
    Ok(())
}

/// A segment's sidecar, if it has one.
pub async fn sidecar_of(
    store: &dyn vera_store::ObjectStore,
    segment_key: &str,
) -> Result<Option<Sidecar>, LifecycleError> {
    vera_store::shards::sidecar_of(store, segment_key).await.map_err(|error| match error {
        ShardError::Sidecar { key, source } => LifecycleError::CorruptSidecar { segment_key: key, source },
        other => LifecycleError::Shards(other),
    })
}

/// The tombstone of `uid` in `segment_key`'s sidecar, if it has one.
pub async fn tombstone_of(
    store: &dyn vera_store::ObjectStore,
    segment_key: &str,
    uid: &str,
) -> Result<Option<Tombstone>, LifecycleError> {
    Ok(sidecar_of(store, segment_key).await?.and_then(|mut sidecar| sidecar.tombstones.remove(uid)))
}
