//! The source seam: rows to pack, read by watermark.
//!
//! A source is a SQL table with a monotonically increasing *watermark* column (an
//! auto-increment id or a sequence: a new row must always get a larger value than every
//! row already committed). The producer cuts the watermark range into slots; a worker
//! reads one slot's rows. Late files are files with an old `created_at`, not an old
//! watermark, and need nothing special.
//!
//! Rows come back *raw* ([`SourceRow`]): a NULL payload, a bad timestamp or a missing
//! file is the worker's to reject, with a reason, so one bad row never sinks a slot.

pub mod config;
pub mod conformance;
pub mod corpus;
pub mod mysql;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use sql::normalize_sql_timestamp;

use std::path::PathBuf;

use async_trait::async_trait;
use futures::stream::BoxStream;
use vera_protocol::message::Slot;

pub use config::{PayloadKind, SourceMapping};

/// One row as stored, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub watermark: i64,
    pub uid: Option<String>,
    /// The `created_at` column as text: RFC 3339, or integer microseconds since the epoch.
    pub created_at: Option<String>,
    pub content_type: Option<String>,
    pub payload: RowPayload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowPayload {
    Null,
    Inline(Vec<u8>),
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source configuration is invalid: {0}")]
    Config(String),
    #[error("source query failed")]
    Query(#[source] sqlx::Error),
}

impl SourceError {
    /// Worth retrying (connection trouble) rather than a configuration mistake.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Query(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed))
    }
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The name tasks carry to say which source they read.
    fn name(&self) -> &str;

    /// Plans the slot after `after`: the rows with the next watermarks, at most
    /// `max_rows` rows and `max_bytes` inline payload bytes (but always at least one row).
    /// `None` when there is no row past `after`.
    async fn next_slot(&self, after: i64, max_rows: u64, max_bytes: u64) -> Result<Option<Slot>, SourceError>;

    /// [`Source::next_slot`], but a slot that a limit cut inside a time slice of `routing`
    /// (a day, under daily buckets) ends instead at the last slice boundary in it, as long
    /// as that keeps at least half its rows: each address of a slice is then written by
    /// one task, as one segment, and a reader finds its files in generation 0. A boundary
    /// is where a later slice than any before it begins; a row of an earlier slice that
    /// arrives late is none (it still adds a small segment to its own address). The
    /// default does not align.
    async fn next_slot_aligned(
        &self,
        after: i64,
        max_rows: u64,
        max_bytes: u64,
        routing: &vera_protocol::routing::RoutingTable,
    ) -> Result<Option<Slot>, SourceError> {
        let _ = routing;
        self.next_slot(after, max_rows, max_bytes).await
    }

    /// Streams the slot's rows (`after < watermark <= up_to`) in watermark order.
    fn read_slot(&self, slot: Slot) -> BoxStream<'_, Result<SourceRow, SourceError>>;
}
