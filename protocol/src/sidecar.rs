//! The `.vera.meta` sidecar: the mutable facts about one immutable segment.
//!
//! A segment never changes, so everything that must change after sealing lives here:
//! tombstones (logical deletion), per-file retention extensions, legal holds, and the
//! "superseded by" link a repack leaves. The store updates it by compare-and-swap, so
//! every operation here is a pure function from one sidecar value to the next.
//!
//! Encoding: canonical JSON (UTF-8, no insignificant whitespace, object keys in the order
//! of the structs below, maps sorted by uid). It holds no personal data beyond uids:
//! reasons are codes, and requests and operators are opaque ids (see [`crate::ids`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::is_valid_id;
use crate::merkle::Hash;
use crate::routing::validate_uid;
use crate::timestamp::Timestamp;

pub const SIDECAR_FORMAT: &str = "vera.meta";
pub const SIDECAR_VERSION: u16 = 1;
/// Largest sidecar accepted by [`Sidecar::decode`].
pub const MAX_SIDECAR_BYTES: usize = 64 * 1024 * 1024;

/// Why a sidecar was refused, or an operation on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar is {len} bytes, over the limit of {MAX_SIDECAR_BYTES}")]
    TooLarge { len: usize },
    #[error("sidecar is not valid: {reason}")]
    Malformed { reason: String },
    #[error("not a vera.meta sidecar (format {format:?})")]
    WrongFormat { format: String },
    #[error("unsupported sidecar version {version} (this code knows {SIDECAR_VERSION})")]
    UnsupportedVersion { version: u16 },
    #[error("invalid {field} in sidecar")]
    InvalidField { field: &'static str },
    #[error("retention for {uid:?} would be shortened from {current} to {requested}")]
    WouldShortenRetention { uid: String, current: Timestamp, requested: Timestamp },
}

/// Why a file was tombstoned. A code, never free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TombstoneReason {
    /// GDPR Art. 17 erasure request.
    GdprErasure,
    /// Retention ran out and policy says delete.
    RetentionExpired,
    /// Ingested by mistake (wrong tenant, duplicate, test data).
    IngestError,
    /// Any other operator decision, explained in the ticket behind `request_id`.
    OperatorRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub at: Timestamp,
    pub reason: TombstoneReason,
    pub request_id: String,
    pub operator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionExtension {
    pub retain_until: Timestamp,
    pub set_at: Timestamp,
    pub request_id: String,
    pub operator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    pub set_at: Timestamp,
    pub request_id: String,
    pub operator: String,
}

/// Set when a repack has replaced this segment; readers then use `segment_key`. From
/// then on this sidecar is frozen: lifecycle operations on the segment's files go to the
/// new segment's sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Superseded {
    /// The segment holding the live files now; `None` when the repack dropped every file
    /// (all of them were tombstoned and none was under retention or hold).
    pub segment_key: Option<String>,
    #[serde(with = "crate::hex::option")]
    pub segment_hash: Option<Hash>,
    pub at: Timestamp,
    pub request_id: String,
}

/// A repack, fixed before its segment is written so that an interrupted repack resumes
/// with the same inputs and writes byte-identical output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepackPlan {
    /// Key the repacked segment is written to (create-if-absent).
    pub target_key: String,
    /// Uids left out: tombstoned when the plan was made, and under neither a retention
    /// extension reaching past that moment nor a legal hold.
    pub dropped: BTreeSet<String>,
    pub planned_at: Timestamp,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub format: String,
    pub version: u16,
    /// Key of the segment this sidecar belongs to.
    pub segment_key: String,
    /// BLAKE3 of that segment object, so a sidecar can never be attached to another one.
    #[serde(with = "crate::hex")]
    pub segment_hash: Hash,
    #[serde(default)]
    pub tombstones: BTreeMap<String, Tombstone>,
    #[serde(default)]
    pub retention: BTreeMap<String, RetentionExtension>,
    #[serde(default)]
    pub holds: BTreeMap<String, LegalHold>,
    /// The repack of this segment, once planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repack: Option<RepackPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Superseded>,
    /// On a repacked segment's sidecar: the segment it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repacked_from: Option<String>,
}

/// Whether an operation changed the sidecar (and so needs a CAS write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Changed,
    Unchanged,
}

#[derive(Deserialize)]
struct VersionProbe {
    format: String,
    version: u16,
}

impl Sidecar {
    pub fn new(segment_key: impl Into<String>, segment_hash: Hash) -> Self {
        Sidecar {
            format: SIDECAR_FORMAT.to_owned(),
            version: SIDECAR_VERSION,
            segment_key: segment_key.into(),
            segment_hash,
            tombstones: BTreeMap::new(),
            retention: BTreeMap::new(),
            holds: BTreeMap::new(),
            repack: None,
            superseded: None,
            repacked_from: None,
        }
    }

    /// Parses and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Sidecar, SidecarError> {
        if bytes.len() > MAX_SIDECAR_BYTES {
            return Err(SidecarError::TooLarge { len: bytes.len() });
        }
        let malformed = |error: serde_json::Error| SidecarError::Malformed { reason: error.to_string() };
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        if probe.format != SIDECAR_FORMAT {
            return Err(SidecarError::WrongFormat { format: probe.format.chars().take(32).collect() });
        }
        if probe.version != SIDECAR_VERSION {
            return Err(SidecarError::UnsupportedVersion { version: probe.version });
        }
        let sidecar: Sidecar = serde_json::from_slice(bytes).map_err(malformed)?;
        sidecar.validate()?;
        Ok(sidecar)
    }

    /// Canonical encoding: the same value always gives the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs, strings and BTreeMaps to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), SidecarError> {
        if self.segment_key.is_empty() || self.segment_key.len() > 1024 {
            return Err(SidecarError::InvalidField { field: "segment_key" });
        }
        let uids = self.tombstones.keys().chain(self.retention.keys()).chain(self.holds.keys());
        for uid in uids {
            validate_uid(uid).map_err(|_| SidecarError::InvalidField { field: "uid" })?;
        }
        let ids = self
            .tombstones
            .values()
            .flat_map(|t| [&t.request_id, &t.operator])
            .chain(self.retention.values().flat_map(|r| [&r.request_id, &r.operator]))
            .chain(self.holds.values().flat_map(|h| [&h.request_id, &h.operator]))
            .chain(self.superseded.iter().map(|s| &s.request_id))
            .chain(self.repack.iter().map(|r| &r.request_id));
        for id in ids {
            if !is_valid_id(id) {
                return Err(SidecarError::InvalidField { field: "request_id or operator" });
            }
        }
        let other_key = |key: &str| !key.is_empty() && key.len() <= 1024 && key != self.segment_key;
        if let Some(superseded) = &self.superseded
            && (superseded.segment_key.as_deref().is_some_and(|key| !other_key(key))
                || superseded.segment_key.is_some() != superseded.segment_hash.is_some())
        {
            return Err(SidecarError::InvalidField { field: "superseded.segment_key" });
        }
        if let Some(plan) = &self.repack {
            if !other_key(&plan.target_key) {
                return Err(SidecarError::InvalidField { field: "repack.target_key" });
            }
            for uid in &plan.dropped {
                validate_uid(uid).map_err(|_| SidecarError::InvalidField { field: "repack.dropped" })?;
            }
        }
        if self.repacked_from.as_deref().is_some_and(|key| !other_key(key)) {
            return Err(SidecarError::InvalidField { field: "repacked_from" });
        }
        Ok(())
    }

    pub fn is_tombstoned(&self, uid: &str) -> bool {
        self.tombstones.contains_key(uid)
    }

    pub fn is_held(&self, uid: &str) -> bool {
        self.holds.contains_key(uid)
    }

    /// Whether repack must keep `uid`'s bytes at `now`: it is held, or a retention
    /// extension reaches past `now`. Tombstoned files under retention or hold stay hidden
    /// from readers but are never dropped.
    pub fn must_keep(&self, uid: &str, now: Timestamp) -> bool {
        self.is_held(uid) || self.retention.get(uid).is_some_and(|extension| extension.retain_until > now)
    }

    /// The state a repacked segment's sidecar starts from: this (frozen) sidecar's
    /// tombstones, retention extensions and holds for the files that moved.
    pub fn inherit(&self, new_key: &str, new_hash: Hash, moved: &BTreeSet<String>) -> Sidecar {
        fn moved_only<V: Clone>(map: &BTreeMap<String, V>, moved: &BTreeSet<String>) -> BTreeMap<String, V> {
            map.iter().filter(|(uid, _)| moved.contains(*uid)).map(|(uid, v)| (uid.clone(), v.clone())).collect()
        }
        let mut next = Sidecar::new(new_key, new_hash);
        next.tombstones = moved_only(&self.tombstones, moved);
        next.retention = moved_only(&self.retention, moved);
        next.holds = moved_only(&self.holds, moved);
        next.repacked_from = Some(self.segment_key.clone());
        next
    }

    /// Adds a tombstone; a second tombstone for the same uid changes nothing.
    pub fn tombstone(&mut self, uid: &str, tombstone: Tombstone) -> Result<Change, SidecarError> {
        validate_uid(uid).map_err(|_| SidecarError::InvalidField { field: "uid" })?;
        check_ids(&[&tombstone.request_id, &tombstone.operator])?;
        if self.tombstones.contains_key(uid) {
            return Ok(Change::Unchanged);
        }
        self.tombstones.insert(uid.to_owned(), tombstone);
        Ok(Change::Changed)
    }

    /// Extends one file's retention. Shortening is refused here, by VERA, whatever the
    /// storage server would allow.
    pub fn extend_retention(&mut self, uid: &str, extension: RetentionExtension) -> Result<Change, SidecarError> {
        validate_uid(uid).map_err(|_| SidecarError::InvalidField { field: "uid" })?;
        check_ids(&[&extension.request_id, &extension.operator])?;
        if let Some(current) = self.retention.get(uid) {
            if extension.retain_until < current.retain_until {
                return Err(SidecarError::WouldShortenRetention {
                    uid: uid.to_owned(),
                    current: current.retain_until,
                    requested: extension.retain_until,
                });
            }
            if extension.retain_until == current.retain_until {
                return Ok(Change::Unchanged);
            }
        }
        self.retention.insert(uid.to_owned(), extension);
        Ok(Change::Changed)
    }

    pub fn set_hold(&mut self, uid: &str, hold: LegalHold) -> Result<Change, SidecarError> {
        validate_uid(uid).map_err(|_| SidecarError::InvalidField { field: "uid" })?;
        check_ids(&[&hold.request_id, &hold.operator])?;
        if self.holds.contains_key(uid) {
            return Ok(Change::Unchanged);
        }
        self.holds.insert(uid.to_owned(), hold);
        Ok(Change::Changed)
    }

    pub fn clear_hold(&mut self, uid: &str) -> Change {
        match self.holds.remove(uid) {
            Some(_) => Change::Changed,
            None => Change::Unchanged,
        }
    }

    /// The latest per-file retain-until in this sidecar: the segment's Object Lock must
    /// reach at least this far.
    pub fn max_retain_until(&self) -> Option<Timestamp> {
        self.retention.values().map(|extension| extension.retain_until).max()
    }
}

fn check_ids(ids: &[&String]) -> Result<(), SidecarError> {
    if ids.iter().all(|id| is_valid_id(id)) {
        Ok(())
    } else {
        Err(SidecarError::InvalidField { field: "request_id or operator" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn tombstone() -> Tombstone {
        Tombstone {
            at: at("2026-11-24T10:00:00Z"),
            reason: TombstoneReason::GdprErasure,
            request_id: "req-1".into(),
            operator: "SHA256:op1".into(),
        }
    }

    #[test]
    fn round_trip_is_canonical() {
        let mut sidecar = Sidecar::new("e1/d2026-11-24/n04-a/g000000.vera", [3; 32]);
        assert_eq!(sidecar.tombstone("b", tombstone()).unwrap(), Change::Changed);
        assert_eq!(sidecar.tombstone("a", tombstone()).unwrap(), Change::Changed);
        assert_eq!(sidecar.tombstone("a", tombstone()).unwrap(), Change::Unchanged);
        let bytes = sidecar.encode();
        let decoded = Sidecar::decode(&bytes).unwrap();
        assert_eq!(decoded, sidecar);
        assert_eq!(decoded.encode(), bytes);
        assert!(String::from_utf8(bytes).unwrap().contains("\"tombstones\":{\"a\":"));
    }

    #[test]
    fn retention_can_only_grow() {
        let mut sidecar = Sidecar::new("k", [0; 32]);
        let extension = |until: &str| RetentionExtension {
            retain_until: at(until),
            set_at: at("2026-11-24T00:00:00Z"),
            request_id: "r".into(),
            operator: "o".into(),
        };
        assert_eq!(sidecar.extend_retention("u", extension("2030-01-01T00:00:00Z")).unwrap(), Change::Changed);
        assert!(matches!(
            sidecar.extend_retention("u", extension("2029-01-01T00:00:00Z")),
            Err(SidecarError::WouldShortenRetention { .. })
        ));
        assert_eq!(sidecar.extend_retention("u", extension("2030-01-01T00:00:00Z")).unwrap(), Change::Unchanged);
        assert_eq!(sidecar.max_retain_until(), Some(at("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn hostile_input_gets_typed_errors() {
        assert!(matches!(Sidecar::decode(b"{"), Err(SidecarError::Malformed { .. })));
        assert!(matches!(Sidecar::decode(b"[]"), Err(SidecarError::Malformed { .. })));
        assert!(matches!(
            Sidecar::decode(br#"{"format":"vera.meta","version":9}"#),
            Err(SidecarError::UnsupportedVersion { version: 9 })
        ));
        assert!(matches!(Sidecar::decode(br#"{"format":"zip","version":1}"#), Err(SidecarError::WrongFormat { .. })));
        let mut sidecar = Sidecar::new("k", [0; 32]);
        sidecar.tombstone("u", tombstone()).unwrap();
        let text = String::from_utf8(sidecar.encode()).unwrap();
        let free_text = text.replace("req-1", "Erase Jane Doe please");
        assert_eq!(
            Sidecar::decode(free_text.as_bytes()),
            Err(SidecarError::InvalidField { field: "request_id or operator" })
        );
        let extra = text.replacen('{', "{\"comment\":\"x\",", 1);
        assert!(matches!(Sidecar::decode(extra.as_bytes()), Err(SidecarError::Malformed { .. })));
        let bad_hash = text.replace(&"00".repeat(32), "zz");
        assert!(matches!(Sidecar::decode(bad_hash.as_bytes()), Err(SidecarError::Malformed { .. })));
        assert!(matches!(Sidecar::decode(&vec![b' '; MAX_SIDECAR_BYTES + 1]), Err(SidecarError::TooLarge { .. })));
    }
}
