//! The routing table, kept in the store so that every role routes the same way.
//!
//! A reader that guessed `n_bits` from its own flags looked in the wrong place and
//! answered 404 for every file. So the table is an object in the bucket. Each version is
//! its own immutable key, `control/routing/v{version:06}.json`, written create-if-absent
//! (and locked where the store has Object Lock). The current table is the highest
//! version. Version 1 is written once, by `vera routing init`, `vera setup-bucket` or the
//! first producer. Each later version adds exactly one epoch, which takes effect at a
//! future `created_at`, so every existing address stays valid. FORMAT.md §11 specifies
//! the object.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;
use vera_protocol::routing::{EpochEntry, RoutingEpoch, RoutingTable};

use crate::{ObjectStore, PutOptions, Retention, StoreError, StoreErrorKind};

pub const ROUTING_PREFIX: &str = "control/routing/";
pub const ROUTING_FORMAT: &str = "vera.routing";

/// The key of one version of the table.
pub fn routing_key(version: u32) -> String {
    format!("{ROUTING_PREFIX}v{version:06}.json")
}

/// One stored version of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRouting {
    pub format: String,
    /// 1 for the first table; each later version adds one epoch to the one before.
    pub version: u32,
    pub written_at: Timestamp,
    pub table: RoutingTable,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingTableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the routing table {key} is invalid: {reason}")]
    Invalid { key: String, reason: String },
    #[error("the store already holds a different routing table ({key}); read it with `vera routing show`")]
    Different { key: String },
    #[error("another routing table version {key} was written first; read it and try again")]
    Raced { key: String },
    #[error("the epoch is refused: {0}")]
    Epoch(String),
}

impl StoredRouting {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    fn decode(key: &str, body: &[u8]) -> Result<Self, RoutingTableError> {
        let invalid = |reason: String| RoutingTableError::Invalid { key: key.to_owned(), reason };
        let stored: StoredRouting = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
        if stored.format != ROUTING_FORMAT {
            return Err(invalid(format!("format is {:?}, not {ROUTING_FORMAT:?}", stored.format)));
        }
        if routing_key(stored.version) != key {
            return Err(invalid(format!("it says it is version {}", stored.version)));
        }
        stored.table.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(stored)
    }
}

/// The current table: the highest version, checked to extend the one before it.
/// `None` when the store holds no table yet.
pub async fn load(store: &dyn ObjectStore) -> Result<Option<StoredRouting>, RoutingTableError> {
    let mut versions: Vec<(u32, String)> = store
        .list(ROUTING_PREFIX)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let version = meta.key.strip_prefix(ROUTING_PREFIX)?.strip_prefix('v')?.strip_suffix(".json")?;
            let version: u32 = version.parse().ok()?;
            (routing_key(version) == meta.key).then_some((version, meta.key))
        })
        .collect();
    versions.sort();
    let Some((latest, key)) = versions.pop() else { return Ok(None) };
    let current = StoredRouting::decode(&key, &store.get(&key).await?.body)?;
    if latest > 1 {
        let previous_key = routing_key(latest - 1);
        let previous = match store.get(&previous_key).await {
            Ok(found) => StoredRouting::decode(&previous_key, &found.body)?,
            Err(error) if error.kind == StoreErrorKind::NotFound => {
                return Err(RoutingTableError::Invalid { key, reason: format!("{previous_key} is missing") });
            }
            Err(error) => return Err(error.into()),
        };
        if !extends(&previous.table, &current.table) {
            return Err(RoutingTableError::Invalid {
                key,
                reason: format!("it does not keep every epoch of {previous_key} and add one"),
            });
        }
    }
    Ok(Some(current))
}

fn extends(previous: &RoutingTable, next: &RoutingTable) -> bool {
    next.epochs.len() == previous.epochs.len() + 1 && next.epochs[..previous.epochs.len()] == previous.epochs[..]
}

/// A version is locked with a legal hold: it has no end, as the table must outlive every
/// segment routed by it (plus `retention` where a caller gives one).
fn put_options(retention: Option<Retention>) -> PutOptions {
    let options = PutOptions { legal_hold: true, ..PutOptions::create() };
    match retention {
        Some(retention) => options.with_retention(retention),
        None => options,
    }
}

/// Writes a version create-if-absent and locked. A bucket without Object Lock (which
/// `setup-bucket` accepts only when told to) refuses the hold as an invalid request; the
/// version is then written unlocked, like every other object there, with a warning.
async fn put_version(
    store: &dyn ObjectStore,
    key: &str,
    body: Bytes,
    retention: Option<Retention>,
) -> Result<(), StoreError> {
    match store.put(key, body.clone(), put_options(retention)).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind == StoreErrorKind::InvalidInput => {
            tracing::warn!(key, %error, "the store refused to lock the routing table; writing it unlocked");
            store.put(key, body, PutOptions::create()).await.map(|_| ())
        }
        Err(error) => Err(error),
    }
}

/// Writes `table` as version 1 unless the store holds a table already. Returns the
/// stored table: `table` itself, or an equal one written earlier. A different one is an
/// error, whoever wrote it first.
pub async fn init(
    store: &dyn ObjectStore,
    table: &RoutingTable,
    now: Timestamp,
    retention: Option<Retention>,
) -> Result<StoredRouting, RoutingTableError> {
    table.validate().map_err(|e| RoutingTableError::Invalid { key: routing_key(1), reason: e.to_string() })?;
    if let Some(existing) = load(store).await? {
        return same_or_different(existing, table);
    }
    let stored = StoredRouting { format: ROUTING_FORMAT.into(), version: 1, written_at: now, table: table.clone() };
    match put_version(store, &routing_key(1), stored.encode(), retention).await {
        Ok(()) => Ok(stored),
        Err(error) if error.kind == StoreErrorKind::AlreadyExists => match load(store).await? {
            Some(existing) => same_or_different(existing, table),
            None => Err(error.into()),
        },
        Err(error) => Err(error.into()),
    }
}

fn same_or_different(existing: StoredRouting, table: &RoutingTable) -> Result<StoredRouting, RoutingTableError> {
    // Version 1 is what an init asks for; a later version extends it and is just as fine.
    if existing.table.epochs.first() == table.epochs.first() && table.epochs.len() == 1 {
        return Ok(existing);
    }
    if existing.table == *table {
        return Ok(existing);
    }
    Err(RoutingTableError::Different { key: routing_key(existing.version) })
}

/// Adds an epoch taking effect at `effective_from`, which must lie in the future (no file
/// created so far can route under it) and after every epoch already in the table. The
/// new epoch's id is the last one's plus one. Returns the new version.
pub async fn add_epoch(
    store: &dyn ObjectStore,
    effective_from: Timestamp,
    epoch: RoutingEpoch,
    now: Timestamp,
    retention: Option<Retention>,
) -> Result<StoredRouting, RoutingTableError> {
    let Some(current) = load(store).await? else {
        return Err(RoutingTableError::Epoch("the store holds no routing table yet; run `vera routing init`".into()));
    };
    if effective_from <= now {
        return Err(RoutingTableError::Epoch(format!(
            "it would start at {effective_from}, not after now ({now}): files already created would move"
        )));
    }
    let last = current.table.epochs.last().map(|entry| (entry.effective_from, entry.epoch.id));
    let Some((last_from, last_id)) = last else {
        return Err(RoutingTableError::Invalid { key: routing_key(current.version), reason: "no epochs".into() });
    };
    if effective_from <= last_from {
        return Err(RoutingTableError::Epoch(format!("it must start after the last epoch's start, {last_from}")));
    }
    let epoch = RoutingEpoch::new(last_id + 1, epoch.granularity, epoch.n_bits)
        .map_err(|e| RoutingTableError::Epoch(e.to_string()))?;
    let mut table = current.table.clone();
    table.epochs.push(EpochEntry { effective_from, epoch });
    table.validate().map_err(|e| RoutingTableError::Epoch(e.to_string()))?;
    let version = current.version + 1;
    let stored = StoredRouting { format: ROUTING_FORMAT.into(), version, written_at: now, table };
    match put_version(store, &routing_key(version), stored.encode(), retention).await {
        Ok(()) => Ok(stored),
        Err(error) if error.kind == StoreErrorKind::AlreadyExists => {
            Err(RoutingTableError::Raced { key: routing_key(version) })
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vera_protocol::routing::TimeGranularity;

    use super::*;
    use crate::local::LocalStore;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn table(n_bits: u8) -> RoutingTable {
        RoutingTable::single(RoutingEpoch::v1(n_bits).unwrap())
    }

    #[tokio::test]
    async fn the_first_table_wins_and_a_different_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let now = at("2026-12-04T10:00:00Z");
        assert_eq!(load(store.as_ref()).await.unwrap(), None);
        // Two different tables race: exactly one is stored, the other is told.
        let (two, four) = (table(2), table(4));
        let (a, b) = tokio::join!(init(store.as_ref(), &two, now, None), init(store.as_ref(), &four, now, None));
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(loser, Err(RoutingTableError::Different { .. })), "{loser:?}");
        let stored = load(store.as_ref()).await.unwrap().unwrap();
        assert_eq!(stored.version, 1);
        assert!(init(store.as_ref(), &stored.table, now, None).await.is_ok(), "the same table again is fine");
    }

    #[tokio::test]
    async fn epochs_are_added_for_the_future_only_and_versions_must_extend() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let now = at("2026-12-04T10:00:00Z");
        init(store.as_ref(), &table(2), now, None).await.unwrap();
        // Locked: no one deletes or replaces a version.
        assert!(store.head(&routing_key(1)).await.unwrap().legal_hold, "version 1 is under a legal hold");
        let deleted = store.delete(&routing_key(1)).await;
        assert!(deleted.is_err_and(|e| e.kind == StoreErrorKind::Locked), "a locked version was deleted");
        let finer = RoutingEpoch::new(9, TimeGranularity::Hour, 4).unwrap();
        let past = add_epoch(store.as_ref(), at("2026-12-01T00:00:00Z"), finer, now, None).await;
        assert!(matches!(past, Err(RoutingTableError::Epoch(_))), "{past:?}");
        let added = add_epoch(store.as_ref(), at("2027-01-01T00:00:00Z"), finer, now, None).await.unwrap();
        assert_eq!(added.version, 2);
        assert_eq!(added.table.epochs[1].epoch, RoutingEpoch::new(2, TimeGranularity::Hour, 4).unwrap());
        let loaded = load(store.as_ref()).await.unwrap().unwrap();
        assert_eq!(loaded, added);
        assert_eq!(loaded.table.locate("u", at("2026-12-24T10:00:00Z")).unwrap().epoch, 1, "old data stays put");
        assert_eq!(loaded.table.locate("u", at("2027-02-01T10:00:00Z")).unwrap().epoch, 2);
        // A version 3 that drops an epoch, and a corrupt one, are named.
        let forged = StoredRouting {
            version: 3,
            ..StoredRouting::decode(&routing_key(1), &store.get(&routing_key(1)).await.unwrap().body).unwrap()
        };
        store.put(&routing_key(3), forged.encode(), PutOptions::create()).await.unwrap();
        let error = load(store.as_ref()).await.unwrap_err();
        assert!(error.to_string().contains("v000003.json"), "{error}");
        store.put(&routing_key(4), Bytes::from_static(b"{not json"), PutOptions::create()).await.unwrap();
        assert!(
            matches!(load(store.as_ref()).await, Err(RoutingTableError::Invalid { key, .. }) if key.ends_with("v000004.json"))
        );
    }
}
