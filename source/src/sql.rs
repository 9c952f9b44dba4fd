//! What the SQL sources share: dialect-specific SQL text, row conversion, slot planning.
//!
//! Identifiers come from a validated [`SourceMapping`] (plain names only) and are quoted
//! in the dialect's style; values are always bound parameters.

use std::path::PathBuf;

use vera_protocol::message::Slot;

use crate::{PayloadKind, RowPayload, SourceError, SourceMapping, SourceRow};

/// The differences between SQLite, PostgreSQL and MySQL/MariaDB that matter here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    fn quote(self, name: &str) -> String {
        match self {
            Dialect::MySql => format!("`{name}`"),
            Dialect::Sqlite | Dialect::Postgres => format!("\"{name}\""),
        }
    }

    fn placeholder(self, index: usize) -> String {
        match self {
            Dialect::Postgres => format!("${index}"),
            Dialect::Sqlite | Dialect::MySql => "?".to_owned(),
        }
    }

    fn as_text(self, expression: &str) -> String {
        match self {
            Dialect::Sqlite | Dialect::Postgres => format!("CAST({expression} AS TEXT)"),
            Dialect::MySql => format!("CAST({expression} AS CHAR)"),
        }
    }

    fn as_bigint(self, expression: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST({expression} AS INTEGER)"),
            Dialect::Postgres => format!("CAST({expression} AS BIGINT)"),
            Dialect::MySql => format!("CAST({expression} AS SIGNED)"),
        }
    }

    fn byte_length(self, expression: &str) -> String {
        match self {
            Dialect::Sqlite => format!("length({expression})"),
            Dialect::Postgres => format!("octet_length({expression})"),
            Dialect::MySql => format!("LENGTH({expression})"),
        }
    }
}

/// `SELECT wm, size … WHERE wm > ? ORDER BY wm LIMIT ?`.
pub(crate) fn next_slot_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let size = match mapping.payload {
        PayloadKind::Inline => {
            dialect.as_bigint(&format!("COALESCE({}, 0)", dialect.byte_length(&dialect.quote(&mapping.payload_column))))
        }
        PayloadKind::Path { .. } => dialect.as_bigint("0"),
    };
    format!(
        "SELECT {wm} AS wm, {size} AS size, {created_at} AS created_at FROM {table} WHERE {watermark} > {p1} \
         ORDER BY {watermark} LIMIT {p2}",
        wm = dialect.as_bigint(&watermark),
        created_at = dialect.as_text(&dialect.quote(&mapping.created_at_column)),
        table = dialect.quote(&mapping.table),
        p1 = dialect.placeholder(1),
        p2 = dialect.placeholder(2),
    )
}

/// `SELECT wm, uid, created_at, content_type, payload … WHERE after < wm <= up_to`.
pub(crate) fn select_rows_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let content_type = mapping
        .content_type_column
        .as_deref()
        .map_or_else(|| dialect.as_text("NULL"), |column| dialect.as_text(&dialect.quote(column)));
    let payload = match mapping.payload {
        PayloadKind::Inline => dialect.quote(&mapping.payload_column),
        PayloadKind::Path { .. } => dialect.as_text(&dialect.quote(&mapping.payload_column)),
    };
    format!(
        "SELECT {wm} AS wm, {uid} AS uid, {created_at} AS created_at, {content_type} AS content_type, {payload} AS payload \
         FROM {table} WHERE {watermark} > {p1} AND {watermark} <= {p2} ORDER BY {watermark}",
        wm = dialect.as_bigint(&watermark),
        uid = dialect.as_text(&dialect.quote(&mapping.uid_column)),
        created_at = dialect.as_text(&dialect.quote(&mapping.created_at_column)),
        table = dialect.quote(&mapping.table),
        p1 = dialect.placeholder(1),
        p2 = dialect.placeholder(2),
    )
}

/// Where path payloads resolve, or `None` for inline payloads.
pub(crate) fn path_base(mapping: &SourceMapping) -> Option<Option<PathBuf>> {
    match &mapping.payload {
        PayloadKind::Path { base_dir } => Some(base_dir.clone()),
        PayloadKind::Inline => None,
    }
}

/// Decodes one result row of [`select_rows_sql`], whatever the database.
pub(crate) fn convert_row<R>(row: &R, path_base: Option<&Option<PathBuf>>) -> Result<SourceRow, SourceError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let payload = match path_base {
        None => match row.try_get::<Option<Vec<u8>>, _>("payload").map_err(SourceError::Query)? {
            Some(bytes) => RowPayload::Inline(bytes),
            None => RowPayload::Null,
        },
        Some(base) => match row.try_get::<Option<String>, _>("payload").map_err(SourceError::Query)? {
            Some(path) => {
                let path = PathBuf::from(path);
                RowPayload::Path(match base {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path,
                })
            }
            None => RowPayload::Null,
        },
    };
    let created_at: Option<String> = row.try_get("created_at").map_err(SourceError::Query)?;
    Ok(SourceRow {
        watermark: row.try_get("wm").map_err(SourceError::Query)?,
        uid: row.try_get("uid").map_err(SourceError::Query)?,
        created_at: created_at.map(|text| normalize_sql_timestamp(&text)),
        content_type: row.try_get("content_type").map_err(SourceError::Query)?,
        payload,
    })
}

/// Cuts one slot from rows in watermark order: at most `max_rows` rows and `max_bytes`
/// inline bytes (always at least one row), and with a routing table, back to the last
/// time-slice boundary when a limit cut the slot inside a slice (see
/// [`crate::Source::next_slot_aligned`]).
pub struct SlotCutter<'a> {
    after: i64,
    max_rows: u64,
    max_bytes: u64,
    align: Option<&'a vera_protocol::routing::RoutingTable>,
    slot: Option<Slot>,
    /// The latest slice among the rows taken.
    max_slice: Option<(u16, i32)>,
    /// The slot as it was just before the row that started the latest slice. Rows of
    /// earlier slices that arrive late (out of `created_at` order) start nothing.
    before_last_change: Option<Slot>,
    /// `Some(slice of the first row left out)` once a limit cut the slot.
    cut_before: Option<Option<(u16, i32)>>,
}

impl<'a> SlotCutter<'a> {
    pub fn new(
        after: i64,
        max_rows: u64,
        max_bytes: u64,
        align: Option<&'a vera_protocol::routing::RoutingTable>,
    ) -> Self {
        SlotCutter {
            after,
            max_rows: max_rows.max(1),
            max_bytes,
            align,
            slot: None,
            max_slice: None,
            before_last_change: None,
            cut_before: None,
        }
    }

    pub fn after(&self) -> i64 {
        self.after
    }

    /// Rows to ask for: one past the row limit, to see the next slot's first row.
    pub fn query_limit(&self) -> i64 {
        i64::try_from(self.max_rows.saturating_add(1)).unwrap_or(i64::MAX)
    }

    fn slice(&self, created_at: Option<&str>) -> Option<(u16, i32)> {
        let routing = self.align?;
        let at = vera_protocol::Timestamp::parse(&normalize_sql_timestamp(created_at?)).ok()?;
        routing.time_slice(at).ok()
    }

    /// Offers the next row; `false` when it does not fit (the slot is complete).
    pub fn push(&mut self, watermark: i64, size: u64, created_at: Option<&str>) -> bool {
        let slice = self.slice(created_at);
        let full = self.slot.as_ref().is_some_and(|slot| slot.rows >= self.max_rows);
        // The slot as it stands, before this row: it ends on a slice boundary if the row
        // starts a new slice.
        let before = self.slot;
        if full || !grow_slot(&mut self.slot, self.after, watermark, size, self.max_bytes) {
            self.cut_before = Some(slice);
            return false;
        }
        if let Some(slice) = slice
            && self.max_slice.is_none_or(|max| slice > max)
        {
            if self.max_slice.is_some() {
                self.before_last_change = before;
            }
            self.max_slice = Some(slice);
        }
        true
    }

    /// The slot, cut back to its last slice boundary when a limit cut it inside a slice.
    pub fn finish(self) -> Option<Slot> {
        let slot = self.slot?;
        let Some(next_slice) = self.cut_before else { return Some(slot) };
        // The row left out would start a later slice: the slot already ends on a boundary.
        let inside_a_slice = !matches!((next_slice, self.max_slice), (Some(next), Some(max)) if next > max);
        match self.before_last_change {
            Some(before) if inside_a_slice && before.rows * 2 >= slot.rows => Some(before),
            _ => Some(slot),
        }
    }
}

/// Grows a slot by one row; `false` when the row does not fit (the slot is complete).
pub(crate) fn grow_slot(slot: &mut Option<Slot>, after: i64, watermark: i64, size: u64, max_bytes: u64) -> bool {
    match slot {
        None => {
            *slot = Some(Slot { after, up_to: watermark, rows: 1, bytes: size });
            true
        }
        Some(current) if current.bytes.saturating_add(size) > max_bytes => false,
        Some(current) => {
            current.up_to = watermark;
            current.rows += 1;
            current.bytes += size;
            true
        }
    }
}

/// Databases print timestamp columns as `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]`
/// (PostgreSQL `timestamptz` cast to text) or without a zone (MySQL `DATETIME`, taken as
/// UTC). Rewrites those to RFC 3339; anything else passes through unchanged for the
/// worker to accept or reject.
pub fn normalize_sql_timestamp(text: &str) -> String {
    let bytes = text.as_bytes();
    let looks_like_sql = bytes.len() >= 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b' '
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes.iter().take(19).enumerate().all(|(i, b)| matches!(i, 4 | 7 | 10 | 13 | 16) || b.is_ascii_digit());
    if !looks_like_sql {
        return text.to_owned();
    }
    let (date_time, rest) = text.split_at(19);
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (&rest[..=digits], &after_dot[digits..])
        }
        None => ("", rest),
    };
    let zone = match zone {
        "" | "Z" | "+00" | "+00:00" => "Z".to_owned(),
        z if (z.starts_with('+') || z.starts_with('-')) && z.len() == 3 => format!("{z}:00"),
        z => z.to_owned(),
    };
    format!("{}T{}{fraction}{zone}", &date_time[..10], &date_time[11..])
}

/// Implements [`crate::Source`] for a struct with `name`, `pool` and `mapping` fields.
/// The three SQL sources differ only in their pool type and dialect; sqlx's generic
/// bounds over `Database` would cost more lines than they save, so a macro it is.
macro_rules! impl_sql_source {
    ($source:ty, $dialect:expr) => {
        impl $source {
            /// Feeds the rows after the cutter's watermark (one more than its row limit,
            /// to see where the next slot would start) until the slot is complete.
            async fn cut_slot(
                &self,
                mut cutter: $crate::sql::SlotCutter<'_>,
            ) -> Result<Option<vera_protocol::message::Slot>, $crate::SourceError> {
                use futures::StreamExt;
                use sqlx::Row;
                let sql = $crate::sql::next_slot_sql($dialect, &self.mapping);
                let mut rows = sqlx::query(&sql).bind(cutter.after()).bind(cutter.query_limit()).fetch(&self.pool);
                while let Some(row) = rows.next().await {
                    let row = row.map_err($crate::SourceError::Query)?;
                    let watermark: i64 = row.try_get("wm").map_err($crate::SourceError::Query)?;
                    let size = row.try_get::<i64, _>("size").map_err($crate::SourceError::Query)?;
                    let created_at: Option<String> = row.try_get("created_at").map_err($crate::SourceError::Query)?;
                    if !cutter.push(watermark, u64::try_from(size).unwrap_or(0), created_at.as_deref()) {
                        break;
                    }
                }
                Ok(cutter.finish())
            }
        }

        #[async_trait::async_trait]
        impl $crate::Source for $source {
            fn name(&self) -> &str {
                &self.name
            }

            async fn next_slot(
                &self,
                after: i64,
                max_rows: u64,
                max_bytes: u64,
            ) -> Result<Option<vera_protocol::message::Slot>, $crate::SourceError> {
                self.cut_slot($crate::sql::SlotCutter::new(after, max_rows, max_bytes, None)).await
            }

            async fn next_slot_aligned(
                &self,
                after: i64,
                max_rows: u64,
                max_bytes: u64,
                routing: &vera_protocol::routing::RoutingTable,
            ) -> Result<Option<vera_protocol::message::Slot>, $crate::SourceError> {
                self.cut_slot($crate::sql::SlotCutter::new(after, max_rows, max_bytes, Some(routing))).await
            }

            fn read_slot(
                &self,
                slot: vera_protocol::message::Slot,
            ) -> futures::stream::BoxStream<'_, Result<$crate::SourceRow, $crate::SourceError>> {
                use futures::StreamExt;
                let sql = $crate::sql::select_rows_sql($dialect, &self.mapping);
                let base_dir = $crate::sql::path_base(&self.mapping);
                let pool = self.pool.clone();
                // Rows stream straight from the cursor: memory holds one row at a time.
                async_stream::try_stream! {
                    let mut rows = sqlx::query(&sql).bind(slot.after).bind(slot.up_to).fetch(&pool);
                    while let Some(row) = rows.next().await {
                        let row = row.map_err($crate::SourceError::Query)?;
                        yield $crate::sql::convert_row(&row, base_dir.as_ref())?;
                    }
                }
                .boxed()
            }
        }
    };
}
pub(crate) use impl_sql_source;

#[cfg(test)]
mod tests {
    use super::normalize_sql_timestamp as normalize;

    #[test]
    fn sql_timestamps_become_rfc3339() {
        assert_eq!(normalize("2026-11-24 10:00:00+00"), "2026-11-24T10:00:00Z");
        assert_eq!(normalize("2026-11-24 10:00:00.123456+01"), "2026-11-24T10:00:00.123456+01:00");
        assert_eq!(normalize("2026-11-24 10:00:00"), "2026-11-24T10:00:00Z");
        assert_eq!(normalize("2026-11-24 10:00:00-05:30"), "2026-11-24T10:00:00-05:30");
        assert_eq!(normalize("2026-11-24T10:00:00Z"), "2026-11-24T10:00:00Z");
        assert_eq!(normalize("1795514400000000"), "1795514400000000");
        assert_eq!(normalize("not a date"), "not a date");
        for text in ["2026-11-24 10:00:00+00", "2026-11-24 10:00:00.5", "2026-11-24 10:00:00-05:30"] {
            assert!(vera_protocol::Timestamp::parse(&normalize(text)).is_ok(), "{text}");
        }
    }
}
