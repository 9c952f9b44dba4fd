//! The source seam: rows to pack, read in scan order.
//!
//! A source is a SQL table with a *watermark* column (an auto-increment id or a
//! sequence) and, on a live PostgreSQL or MySQL table, a *visibility horizon* column
//! ([`Visibility`]). The producer cuts the scan order into slots; a worker reads one
//! slot's rows. The horizon is what makes this safe while rows keep arriving: a slot only
//! ever ends below a position that no running or future transaction can still commit
//! under, so a row that commits out of watermark order is never passed over. Late files
//! are files with an old `created_at`, not an old watermark, and need nothing special.
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
use vera_protocol::message::{ScanPosition, Slot};

pub use config::{PayloadKind, SourceMapping, Visibility};

/// One row as stored, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub watermark: i64,
    /// The horizon column's value, for a source scanned by one.
    pub horizon: Option<i64>,
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

impl SourceRow {
    pub fn position(&self) -> ScanPosition {
        ScanPosition { horizon: self.horizon, watermark: self.watermark }
    }
}

/// One row's identity, without its payload: what `vera reconcile` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    pub position: ScanPosition,
    pub uid: Option<String>,
    /// As [`SourceRow::created_at`].
    pub created_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source configuration is invalid: {0}")]
    Config(String),
    /// The table lacks what a safe scan needs: a column, an index or a privilege.
    #[error("source table {table} is not ready for a safe scan: {reason}")]
    Unprepared { table: String, reason: String },
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

    /// Whether positions carry a horizon value (the source is scanned by a horizon
    /// column, see [`Visibility`]).
    fn has_horizon(&self) -> bool;

    /// The current visibility horizon: every row whose horizon value is below it is
    /// visible or will never be. `None` for a source scanned by its watermark alone.
    async fn horizon(&self) -> Result<Option<i64>, SourceError>;

    /// Plans the slot after `after`: the next rows in scan order below the visibility
    /// horizon, at most `max_rows` rows and `max_bytes` inline payload bytes (but always
    /// at least one row). `None` when there is no such row.
    async fn next_slot(&self, after: ScanPosition, max_rows: u64, max_bytes: u64) -> Result<Option<Slot>, SourceError>;

    /// [`Source::next_slot`], but a slot that a limit cut inside a time slice of `routing`
    /// (a day, under daily buckets) ends instead at the last slice boundary in it, as long
    /// as that keeps at least half its rows: each address of a slice is then written by
    /// one task, as one segment, and a reader finds its files in generation 0. A boundary
    /// is where a later slice than any before it begins; a row of an earlier slice that
    /// arrives late is none (it still adds a small segment to its own address). The
    /// default does not align.
    async fn next_slot_aligned(
        &self,
        after: ScanPosition,
        max_rows: u64,
        max_bytes: u64,
        routing: &vera_protocol::routing::RoutingTable,
    ) -> Result<Option<Slot>, SourceError> {
        let _ = routing;
        self.next_slot(after, max_rows, max_bytes).await
    }

    /// Whether any visible row lies after `after` in scan order, horizon or not: rows
    /// that [`Source::next_slot`] does not plan yet because their transactions may still
    /// be followed by earlier ones. A draining producer waits for them.
    async fn has_rows_after(&self, after: ScanPosition) -> Result<bool, SourceError>;

    /// The last visible row's position in scan order, horizon or not; `None` for an
    /// empty table. What the producer's pack-lag figures start from.
    async fn newest_position(&self) -> Result<Option<ScanPosition>, SourceError>;

    /// Streams every row's `created_at` (as [`SourceRow::created_at`]) and inline payload
    /// size, in no particular order: what `vera plan` builds its histogram from.
    fn scan_sizes(&self) -> BoxStream<'_, Result<(Option<String>, u64), SourceError>>;

    /// Streams the slot's rows in scan order.
    fn read_slot(&self, slot: Slot) -> BoxStream<'_, Result<SourceRow, SourceError>>;

    /// Streams the identity of every row with `from < watermark <= to` (the watermark
    /// column alone, whatever the scan order), in watermark order, without payloads.
    fn scan_keys(&self, from: i64, to: i64) -> BoxStream<'_, Result<RowKey, SourceError>>;
}
