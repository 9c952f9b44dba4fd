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

pub mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use vera_bus::{Bus, Outgoing, topics};
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Envelope, Message, TombstoneRequested};
use vera_protocol::routing::{RoutingTable, ShardAddr, sidecar_key_of};
use vera_protocol::sidecar::{Change, Sidecar, SidecarError, Tombstone, TombstoneReason};
use vera_store::shards::{META_OBJECT_HASH, ShardError, ShardStore};
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

    pub fn with_cas_attempts(mut self, attempts: u32) -> Self {
        self.cas_attempts = attempts.max(1);
        self
    }

    /// The segment holding `uid`, probing generations in order.
    async fn segment_of(&self, uid: &str, created_at: Timestamp) -> Result<(ShardAddr, String), LifecycleError> {
        let unknown = || LifecycleError::UnknownFile { uid: uid.to_owned(), created_at: created_at.to_rfc3339() };
        let addr = self.routing.locate(uid, created_at).map_err(|e| LifecycleError::InvalidRequest(e.to_string()))?;
        for generation in 0..=u32::MAX {
            let key = addr.segment_key(generation);
            match self.shards.index(&key).await {
                Ok(index) if index.find(uid).is_some() => return Ok((addr, key)),
                Ok(_) => continue,
                Err(ShardError::Store(error)) if error.kind == StoreErrorKind::NotFound => return Err(unknown()),
                Err(other) => return Err(other.into()),
            }
        }
        Err(unknown())
    }

    /// Tombstones one file; see the module docs.
    pub async fn delete(&self, request: &DeleteRequest) -> Result<DeleteOutcome, LifecycleError> {
        vera_protocol::routing::validate_uid(&request.uid)
            .map_err(|e| LifecycleError::InvalidRequest(format!("uid {:?}: {e}", request.uid)))?;
        for (field, value) in [("request_id", &request.request_id), ("operator", &request.operator)] {
            if !vera_protocol::ids::is_valid_id(value) {
                return Err(LifecycleError::InvalidRequest(format!(
                    "{field} {value:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
                )));
            }
        }
        let (addr, segment_key) = self.segment_of(&request.uid, request.created_at).await?;
        let now = self.clock.now();
        let tombstone = Tombstone {
            at: now,
            reason: request.reason,
            request_id: request.request_id.clone(),
            operator: request.operator.clone(),
        };
        let changed = self
            .update_sidecar(&segment_key, |sidecar| {
                sidecar
                    .tombstone(&request.uid, tombstone.clone())
                    .map_err(|source| LifecycleError::CorruptSidecar { segment_key: segment_key.clone(), source })
            })
            .await?;
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

    async fn publish(&self, topic: &str, id: String, at: Timestamp, message: Message) -> Result<(), LifecycleError> {
        let envelope = Envelope::new(id, at, message);
        let key = envelope.ordering_key();
        let payload = Bytes::from(envelope.encode());
        self.bus.publish(topic, vec![Outgoing { key, payload }]).await?;
        Ok(())
    }

    /// Reads the segment's sidecar (or starts one), applies `change`, and writes it back by
    /// compare-and-swap, retrying from a fresh read when another writer won.
    async fn update_sidecar(
        &self,
        segment_key: &str,
        change: impl Fn(&mut Sidecar) -> Result<Change, LifecycleError>,
    ) -> Result<Change, LifecycleError> {
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
                return Ok(Change::Unchanged);
            }
            let options = match etag {
                Some(etag) => PutOptions::update(etag),
                None => PutOptions::create(),
            };
            match store.put(&sidecar_key, Bytes::from(sidecar.encode()), options).await {
                Ok(_) => return Ok(Change::Changed),
                Err(error) if matches!(error.kind, StoreErrorKind::Precondition | StoreErrorKind::AlreadyExists) => {
                    tracing::debug!(sidecar = %sidecar_key, attempt, "sidecar changed meanwhile; reading it again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(LifecycleError::Contended { segment_key: segment_key.to_owned(), attempts: self.cas_attempts })
    }

    async fn new_sidecar(&self, segment_key: &str) -> Result<Sidecar, LifecycleError> {
        let meta = self.shards.store().head(segment_key).await?;
        let hash = meta
            .metadata
            .get(META_OBJECT_HASH)
            .and_then(|hex| vera_protocol::hex::decode(hex))
            .ok_or_else(|| LifecycleError::MissingObjectHash { segment_key: segment_key.to_owned() })?;
        Ok(Sidecar::new(segment_key, hash))
    }
}

/// A segment's sidecar, if it has one.
pub async fn sidecar_of(
    store: &dyn vera_store::ObjectStore,
    segment_key: &str,
) -> Result<Option<Sidecar>, LifecycleError> {
    match store.get(&sidecar_key_of(segment_key)).await {
        Ok(got) => Sidecar::decode(&got.body)
            .map(Some)
            .map_err(|source| LifecycleError::CorruptSidecar { segment_key: segment_key.to_owned(), source }),
        Err(error) if error.kind == StoreErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The tombstone of `uid` in `segment_key`'s sidecar, if it has one (what `vera get` and
/// any other reader outside the HTTP service must check before returning bytes).
pub async fn tombstone_of(
    store: &dyn vera_store::ObjectStore,
    segment_key: &str,
    uid: &str,
) -> Result<Option<Tombstone>, LifecycleError> {
    Ok(sidecar_of(store, segment_key).await?.and_then(|mut sidecar| sidecar.tombstones.remove(uid)))
}

/// The uids tombstoned in `segment_key`'s sidecar (none when it has no sidecar).
pub async fn tombstones_of(
    store: &dyn vera_store::ObjectStore,
    segment_key: &str,
) -> Result<BTreeSet<String>, LifecycleError> {
    Ok(sidecar_of(store, segment_key)
        .await?
        .map(|sidecar| sidecar.tombstones.into_keys().collect())
        .unwrap_or_default())
}
