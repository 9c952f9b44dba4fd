//! Retention extensions and legal holds, per file, under the segment's Object Lock.
//!
//! Object Lock works per object, so a segment's lock must cover its longest-kept file:
//! [`Lifecycle::retain`] records the file's new retain-until in the segment's sidecar and
//! raises the segment's lock retain-until to it (never lowers it); [`Lifecycle::hold`]
//! records or clears a file's legal hold and keeps the segment's legal hold on while any
//! file in it is held. Shortening is refused by VERA itself, before any request reaches
//! the store (some servers, moto among them, would accept it).
//!
//! Order is chosen so a crash errs towards keeping more: the lock is raised (or the hold
//! set) before the sidecar says so, and a hold is released on the object only after the
//! sidecar no longer lists any held file. Running the same request again finishes the job.

use std::collections::BTreeMap;

use vera_bus::topics;
use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome, Message};
use vera_protocol::sidecar::{Change, LegalHold, RetentionExtension, SidecarError};
use vera_store::{LockMode, Retention};

use crate::{Lifecycle, LifecycleError, validate_request};

/// Extend one file's retention to `retain_until`.
#[derive(Debug, Clone)]
pub struct RetainRequest {
    pub uid: String,
    pub created_at: Timestamp,
    pub retain_until: Timestamp,
    pub request_id: String,
    pub operator: String,
}

/// Set (`on`) or clear one file's legal hold.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub uid: String,
    pub created_at: Timestamp,
    pub on: bool,
    pub request_id: String,
    pub operator: String,
}

/// What a retain or hold did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockOutcome {
    pub segment_key: String,
    /// False when the sidecar already said so.
    pub changed: bool,
    /// The segment's Object Lock after the call, as the store reports it.
    pub segment_retain_until: Option<Timestamp>,
    pub segment_legal_hold: bool,
}

impl Lifecycle {
    /// Extends one file's retention; see the module docs.
    pub async fn retain(&self, request: &RetainRequest) -> Result<LockOutcome, LifecycleError> {
        validate_request(&request.uid, &request.request_id, &request.operator)?;
        let now = self.clock.now();
        if request.retain_until <= now {
            return Err(LifecycleError::InvalidRequest(format!(
                "retain_until {} is not in the future",
                request.retain_until.to_rfc3339()
            )));
        }
        let located = self.locate(&request.uid, request.created_at).await?;
        let current = self.effective_retention(&located.key, located.sidecar.as_deref(), &request.uid).await?;
        if let Some(current) = current
            && request.retain_until < current
        {
            return Err(LifecycleError::WouldShortenRetention {
                uid: request.uid.clone(),
                current: current.to_rfc3339(),
                requested: request.retain_until.to_rfc3339(),
            });
        }
        // Lock first: a crash here leaves the segment kept longer, never shorter.
        self.raise_lock(&located.key, request.retain_until).await?;
        let extension = RetentionExtension {
            retain_until: request.retain_until,
            set_at: now,
            request_id: request.request_id.clone(),
            operator: request.operator.clone(),
        };
        let (_, key, changed, _) = self
            .change_file(&request.uid, request.created_at, |sidecar, segment_key| {
                sidecar.extend_retention(&request.uid, extension.clone()).map_err(|error| match error {
                    SidecarError::WouldShortenRetention { uid, current, requested } => {
                        LifecycleError::WouldShortenRetention {
                            uid,
                            current: current.to_rfc3339(),
                            requested: requested.to_rfc3339(),
                        }
                    }
                    source => LifecycleError::CorruptSidecar { segment_key: segment_key.to_owned(), source },
                })
            })
            .await?;
        if key != located.key {
            // A repack moved the file meanwhile: its new segment must be locked as long.
            self.raise_lock(&key, request.retain_until).await?;
        }
        let details = [("retain_until".to_owned(), request.retain_until.to_rfc3339())];
        self.audit_lock(AuditAction::Retain, &request.uid, &request.request_id, &request.operator, &key, details)
            .await?;
        self.lock_outcome(key, changed == Change::Changed).await
    }

    /// Sets or clears one file's legal hold; see the module docs.
    pub async fn hold(&self, request: &HoldRequest) -> Result<LockOutcome, LifecycleError> {
        validate_request(&request.uid, &request.request_id, &request.operator)?;
        let now = self.clock.now();
        let located = self.locate(&request.uid, request.created_at).await?;
        let store = self.shards.store();
        if request.on {
            store.set_legal_hold(&located.key, true).await?;
        }
        let hold =
            LegalHold { set_at: now, request_id: request.request_id.clone(), operator: request.operator.clone() };
        let (_, key, changed, sidecar) = self
            .change_file(&request.uid, request.created_at, |sidecar, segment_key| {
                if request.on {
                    sidecar.set_hold(&request.uid, hold.clone()).map_err(|source| LifecycleError::CorruptSidecar {
                        segment_key: segment_key.to_owned(),
                        source,
                    })
                } else {
                    Ok(sidecar.clear_hold(&request.uid))
                }
            })
            .await?;
        if request.on {
            // Again after the write: the file may have moved, or a concurrent release
            // of the last other hold may have switched the object's hold off.
            store.set_legal_hold(&key, true).await?;
        } else if sidecar.holds.is_empty() {
            store.set_legal_hold(&key, false).await?;
            // A hold set on another file meanwhile must win over this release.
            let again = crate::sidecar_of(store.as_ref(), &key).await?;
            if again.is_some_and(|sidecar| !sidecar.holds.is_empty()) {
                store.set_legal_hold(&key, true).await?;
            }
        }
        let details = [("legal_hold".to_owned(), if request.on { "on" } else { "off" }.to_owned())];
        self.audit_lock(AuditAction::Hold, &request.uid, &request.request_id, &request.operator, &key, details).await?;
        self.lock_outcome(key, changed == Change::Changed).await
    }

    /// How long a file is kept now: the later of its segment's lock and its extension.
    async fn effective_retention(
        &self,
        segment_key: &str,
        sidecar: Option<&vera_protocol::sidecar::Sidecar>,
        uid: &str,
    ) -> Result<Option<Timestamp>, LifecycleError> {
        let lock = self.shards.store().head(segment_key).await?.retention.map(|r| r.retain_until);
        let extension = sidecar.and_then(|sidecar| sidecar.retention.get(uid)).map(|e| e.retain_until);
        Ok(lock.max(extension))
    }

    /// Raises the segment's Object Lock retain-until to at least `until`, keeping its mode
    /// (COMPLIANCE when it had no lock).
    async fn raise_lock(&self, segment_key: &str, until: Timestamp) -> Result<(), LifecycleError> {
        let store = self.shards.store();
        let current = store.head(segment_key).await?.retention;
        if current.is_some_and(|lock| lock.retain_until >= until) {
            return Ok(());
        }
        let mode = current.map_or(LockMode::Compliance, |lock| lock.mode);
        store.set_retention(segment_key, Retention { mode, retain_until: until }).await?;
        Ok(())
    }

    async fn audit_lock(
        &self,
        action: AuditAction,
        uid: &str,
        request_id: &str,
        operator: &str,
        segment_key: &str,
        details: [(String, String); 1],
    ) -> Result<(), LifecycleError> {
        let now = self.clock.now();
        let event = Message::AuditEvent(AuditEvent {
            action,
            outcome: AuditOutcome::Ok,
            at: now,
            actor: operator.to_owned(),
            request_id: Some(request_id.to_owned()),
            uid: Some(uid.to_owned()),
            segment_key: Some(segment_key.to_owned()),
            details: BTreeMap::from(details),
        });
        let kind = format!("{action:?}").to_lowercase();
        self.publish(topics::AUDIT, format!("{kind}/{request_id}/{uid}"), now, event).await
    }

    async fn lock_outcome(&self, segment_key: String, changed: bool) -> Result<LockOutcome, LifecycleError> {
        let meta = self.shards.store().head(&segment_key).await?;
        Ok(LockOutcome {
            segment_key,
            changed,
            segment_retain_until: meta.retention.map(|r| r.retain_until),
            segment_legal_hold: meta.legal_hold,
        })
    }
}
