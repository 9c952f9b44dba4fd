//! The producer's watermark object, changed only by compare-and-swap.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vera_protocol::message::{ScanPosition, Slot};
use vera_store::{ObjectStore, PutOptions, StoreErrorKind};

use crate::ProducerError;

pub const WATERMARK_FORMAT: &str = "vera.watermark";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkState {
    pub format: String,
    /// 1: positions are watermarks; 2: they carry a horizon value (`committed_horizon`).
    pub version: u16,
    pub source: String,
    /// Every row at or before `(committed_horizon, committed)` in the source's scan order
    /// is in a published slot.
    pub committed: i64,
    /// The horizon part of the committed position, for a source scanned by a horizon
    /// column; `None` there means no slot has been published yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_horizon: Option<i64>,
    /// A slot claimed but perhaps not yet published.
    pub pending: Option<Slot>,
}

impl WatermarkState {
    /// The committed position: where the next slot starts.
    pub fn position(&self) -> ScanPosition {
        ScanPosition { horizon: self.committed_horizon, watermark: self.committed }
    }

    /// Moves the committed position to the end of a published slot.
    pub fn commit(&mut self, slot: &Slot) {
        let end = slot.end();
        self.committed = end.watermark;
        self.committed_horizon = end.horizon;
        self.version = if end.horizon.is_some() { 2 } else { 1 };
        self.pending = None;
    }
}

pub struct WatermarkStore {
    store: Arc<dyn ObjectStore>,
    source: String,
    key: String,
}

impl WatermarkStore {
    pub fn new(store: Arc<dyn ObjectStore>, source: &str) -> Self {
        WatermarkStore { store, source: source.to_owned(), key: format!("control/watermarks/{source}.json") }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Current state and ETag; creates the object (create-if-absent) on first use.
    pub async fn load_or_create(&self, start_after: i64) -> Result<(WatermarkState, String), ProducerError> {
        loop {
            match self.store.get(&self.key).await {
                Ok(found) => {
                    let state: WatermarkState =
                        serde_json::from_slice(&found.body).map_err(|e| ProducerError::Watermark(e.to_string()))?;
                    if state.format != WATERMARK_FORMAT
                        || !(1..=2).contains(&state.version)
                        || state.source != self.source
                    {
                        return Err(ProducerError::Watermark(format!(
                            "unexpected format/version/source in {}",
                            self.key
                        )));
                    }
                    if let Some(slot) = state.pending
                        && (slot.start() != state.position() || slot.end() < slot.start())
                    {
                        return Err(ProducerError::Watermark(
                            "pending slot does not start at the committed watermark".into(),
                        ));
                    }
                    return Ok((state, found.meta.etag));
                }
                Err(error) if error.kind == StoreErrorKind::NotFound => {
                    let initial = WatermarkState {
                        format: WATERMARK_FORMAT.into(),
                        version: 1,
                        source: self.source.clone(),
                        committed: start_after,
                        committed_horizon: None,
                        pending: None,
                    };
                    match self.store.put(&self.key, encode(&initial), PutOptions::create()).await {
                        Ok(outcome) => return Ok((initial, outcome.etag)),
                        Err(error) if error.kind == StoreErrorKind::AlreadyExists => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The current state, without creating the object: `None` before the first round.
    pub async fn peek(&self) -> Result<Option<WatermarkState>, ProducerError> {
        match self.store.get(&self.key).await {
            Ok(found) => {
                serde_json::from_slice(&found.body).map(Some).map_err(|e| ProducerError::Watermark(e.to_string()))
            }
            Err(error) if error.kind == StoreErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// CAS: `Some(new etag)` on success, `None` if someone else changed it first.
    pub async fn save(&self, state: &WatermarkState, etag: &str) -> Result<Option<String>, ProducerError> {
        match self.store.put(&self.key, encode(state), PutOptions::update(etag)).await {
            Ok(outcome) => Ok(Some(outcome.etag)),
            Err(error) if error.kind == StoreErrorKind::Precondition => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

fn encode(state: &WatermarkState) -> Bytes {
    Bytes::from(serde_json::to_vec(state).unwrap_or_default())
}
