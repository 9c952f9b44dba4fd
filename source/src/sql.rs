//! What the SQL sources share: dialect-specific SQL text, row conversion, slot planning.
//!
//! Identifiers come from a validated [`SourceMapping`] (plain names only) and are quoted
//! in the dialect's style; values are always bound parameters.

use std::path::PathBuf;

use vera_protocol::message::{HorizonBounds, ScanPosition, Slot};

use crate::{PayloadKind, RowKey, RowPayload, SourceError, SourceMapping, SourceRow};

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

/// Numbers bound parameters in the dialect's style, in the order they are bound.
struct Params {
    dialect: Dialect,
    next: usize,
}

impl Params {
    fn new(dialect: Dialect) -> Self {
        Params { dialect, next: 1 }
    }

    fn next(&mut self) -> String {
        let placeholder = self.dialect.placeholder(self.next);
        self.next += 1;
        placeholder
    }
}

/// How one dialect reads and compares a horizon column as a 64-bit integer.
pub(crate) struct HorizonSql {
    /// The column, quoted.
    column: String,
    /// The column's value as BIGINT.
    value: String,
    dialect: Dialect,
}

impl HorizonSql {
    pub(crate) fn new(dialect: Dialect, mapping: &SourceMapping) -> Option<Self> {
        let column = dialect.quote(mapping.visibility.column()?);
        let value = match dialect {
            // xid8 prints as a decimal 64-bit number (epoch << 32 | xid).
            Dialect::Postgres => format!("CAST(CAST({column} AS TEXT) AS BIGINT)"),
            // Microseconds since the epoch; the connection's time zone is UTC.
            Dialect::MySql => format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) AS SIGNED)"),
            Dialect::Sqlite => column.clone(),
        };
        Some(HorizonSql { column, value, dialect })
    }

    /// A bound BIGINT parameter as a value of the column's own type, so indexes apply.
    fn param(&self, placeholder: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST(CAST(CAST({placeholder} AS BIGINT) AS TEXT) AS xid8)"),
            Dialect::MySql => format!("TIMESTAMPADD(MICROSECOND, {placeholder}, '1970-01-01 00:00:00')"),
            Dialect::Sqlite => placeholder.to_owned(),
        }
    }
}

/// `SELECT` of the current horizon as BIGINT, for a dialect with one.
pub(crate) fn horizon_sql(dialect: Dialect) -> Option<&'static str> {
    match dialect {
        Dialect::Postgres => Some("SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)"),
        // The server's clock; the settle window is taken off by the caller. Rows below it
        // whose transaction is still open are waited for by the planning query's locking
        // read (see `next_slot_sql`), not looked up: `information_schema.innodb_trx` is a
        // cache that frequent readers keep from refreshing, so it can miss a transaction.
        Dialect::MySql => Some("SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', NOW(6)) AS SIGNED)"),
        Dialect::Sqlite => None,
    }
}

/// Whether a planning query gave up waiting for a lock: a transaction that inserted
/// below the horizon is still open. Not an error: the slot is planned once it ends.
pub(crate) fn is_lock_wait_timeout(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => {
            database.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|mysql| mysql.number() == 1205)
        }
        _ => false,
    }
}

/// Which side of a bound a condition keeps.
#[derive(Clone, Copy)]
enum Side {
    /// After the bound: `(h, wm) > (?, ?)`, or `wm > ?`.
    After,
    /// At or before it: `(h, wm) <= (?, ?)`, or `wm <= ?`.
    UpTo,
}

/// The condition for one side of the position bound to the next parameters, written
/// so that an index on `(h, wm)` or `wm` serves it: `h >= X AND (h > X OR wm > Y)` for
/// `After`, `h <= X AND (h < X OR wm <= Y)` for `UpTo`.
fn bound_condition(horizon: Option<&HorizonSql>, watermark: &str, params: &mut Params, side: Side) -> String {
    let (loose, strict, last) = match side {
        Side::After => (">=", ">", ">"),
        Side::UpTo => ("<=", "<", "<="),
    };
    match horizon {
        Some(horizon) => {
            let value = horizon.param(&params.next());
            let column = &horizon.column;
            // The same parameter twice: MySQL's `?` cannot be referred to again.
            let again = horizon.param(&params.next());
            format!("{column} {loose} {value} AND ({column} {strict} {again} OR {watermark} {last} {})", params.next())
        }
        None => format!("{watermark} {last} {}", params.next()),
    }
}

fn order_by(horizon: Option<&HorizonSql>, watermark: &str) -> String {
    match horizon {
        Some(horizon) => format!("{}, {watermark}", horizon.column),
        None => watermark.to_owned(),
    }
}

/// Planning query: positions, sizes and `created_at` of the next rows in scan order.
/// Parameters: the lower bound (`h, h, wm` with a horizon, else `wm`) when `bounded`;
/// the horizon (with one); the row limit.
pub(crate) fn next_slot_sql(dialect: Dialect, mapping: &SourceMapping, bounded: bool) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let horizon = HorizonSql::new(dialect, mapping);
    let size = size_expression(dialect, mapping);
    let mut params = Params::new(dialect);
    let mut conditions = Vec::new();
    if bounded {
        conditions.push(bound_condition(horizon.as_ref(), &watermark, &mut params, Side::After));
    }
    if let Some(horizon) = &horizon {
        conditions.push(format!("{} < {}", horizon.column, horizon.param(&params.next())));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
    // MySQL/MariaDB: a locking read (under READ COMMITTED, so without gap locks) waits
    // for every transaction that has inserted a row in the range and not yet ended,
    // instead of reading past its invisible rows.
    let locking = match (dialect, &mapping.visibility) {
        (Dialect::MySql, crate::Visibility::InsertTime { .. }) => " LOCK IN SHARE MODE",
        _ => "",
    };
    format!(
        "SELECT {hz} AS hz, {wm} AS wm, {size} AS size, {created_at} AS created_at FROM {table}{filter} \
         ORDER BY {order} LIMIT {limit}{locking}",
        hz = horizon.as_ref().map_or_else(|| dialect.as_bigint("NULL"), |h| h.value.clone()),
        wm = dialect.as_bigint(&watermark),
        created_at = dialect.as_text(&dialect.quote(&mapping.created_at_column)),
        table = dialect.quote(&mapping.table),
        order = order_by(horizon.as_ref(), &watermark),
        limit = params.next(),
    )
}

/// `SELECT 1 … LIMIT 1` of a row after the bound position (as [`next_slot_sql`]'s
/// lower bound), ignoring the horizon; unbounded when not `bounded`.
pub(crate) fn any_row_after_sql(dialect: Dialect, mapping: &SourceMapping, bounded: bool) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let horizon = HorizonSql::new(dialect, mapping);
    let mut params = Params::new(dialect);
    let filter = if bounded {
        format!(" WHERE {}", bound_condition(horizon.as_ref(), &watermark, &mut params, Side::After))
    } else {
        String::new()
    };
    format!("SELECT 1 FROM {table}{filter} LIMIT 1", table = dialect.quote(&mapping.table))
}

/// `created_at` and payload size of every row.
pub(crate) fn sizes_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    format!(
        "SELECT {created_at} AS created_at, {size} AS size FROM {table}",
        created_at = dialect.as_text(&dialect.quote(&mapping.created_at_column)),
        size = size_expression(dialect, mapping),
        table = dialect.quote(&mapping.table),
    )
}

/// A row's inline payload size as BIGINT (0 for path payloads and NULLs).
fn size_expression(dialect: Dialect, mapping: &SourceMapping) -> String {
    match mapping.payload {
        PayloadKind::Inline => {
            dialect.as_bigint(&format!("COALESCE({}, 0)", dialect.byte_length(&dialect.quote(&mapping.payload_column))))
        }
        PayloadKind::Path { .. } => dialect.as_bigint("0"),
    }
}

/// The last row in scan order: `hz, wm` of `ORDER BY … DESC LIMIT 1`.
pub(crate) fn newest_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let horizon = HorizonSql::new(dialect, mapping);
    let order = match &horizon {
        Some(horizon) => format!("{} DESC, {watermark} DESC", horizon.column),
        None => format!("{watermark} DESC"),
    };
    format!(
        "SELECT {hz} AS hz, {wm} AS wm FROM {table} ORDER BY {order} LIMIT 1",
        hz = horizon.as_ref().map_or_else(|| dialect.as_bigint("NULL"), |h| h.value.clone()),
        wm = dialect.as_bigint(&watermark),
        table = dialect.quote(&mapping.table),
    )
}

/// The columns every row query selects: `hz, wm, uid, created_at`.
fn key_columns(dialect: Dialect, mapping: &SourceMapping, horizon: Option<&HorizonSql>) -> String {
    format!(
        "{hz} AS hz, {wm} AS wm, {uid} AS uid, {created_at} AS created_at",
        hz = horizon.map_or_else(|| dialect.as_bigint("NULL"), |h| h.value.clone()),
        wm = dialect.as_bigint(&dialect.quote(&mapping.watermark_column)),
        uid = dialect.as_text(&dialect.quote(&mapping.uid_column)),
        created_at = dialect.as_text(&dialect.quote(&mapping.created_at_column)),
    )
}

/// A slot's rows with their payloads, in scan order. Parameters: the lower bound when
/// `bounded` (as [`next_slot_sql`]), then the upper bound (`h, h, wm`, or `wm`). Bounds
/// are on the horizon column and the watermark when `by_horizon`, else on the watermark
/// alone (a slot planned without a horizon).
pub(crate) fn select_rows_sql(dialect: Dialect, mapping: &SourceMapping, by_horizon: bool, bounded: bool) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let selected_horizon = HorizonSql::new(dialect, mapping);
    let horizon = selected_horizon.as_ref().filter(|_| by_horizon);
    let mut params = Params::new(dialect);
    let mut conditions = Vec::new();
    if bounded {
        conditions.push(bound_condition(horizon, &watermark, &mut params, Side::After));
    }
    conditions.push(bound_condition(horizon, &watermark, &mut params, Side::UpTo));
    format!(
        "SELECT {columns} FROM {table} WHERE {filter} ORDER BY {order}",
        columns = row_columns(dialect, mapping),
        table = dialect.quote(&mapping.table),
        filter = conditions.join(" AND "),
        order = order_by(horizon, &watermark),
    )
}

/// Everything a row query selects: the key columns, `content_type` and `payload`.
fn row_columns(dialect: Dialect, mapping: &SourceMapping) -> String {
    let content_type = mapping
        .content_type_column
        .as_deref()
        .map_or_else(|| dialect.as_text("NULL"), |column| dialect.as_text(&dialect.quote(column)));
    let payload = match mapping.payload {
        PayloadKind::Inline => dialect.quote(&mapping.payload_column),
        PayloadKind::Path { .. } => dialect.as_text(&dialect.quote(&mapping.payload_column)),
    };
    format!(
        "{keys}, {content_type} AS content_type, {payload} AS payload",
        keys = key_columns(dialect, mapping, HorizonSql::new(dialect, mapping).as_ref()),
    )
}

/// Reads no row, but fails unless every mapped column can be read.
pub(crate) fn probe_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    format!("SELECT {} FROM {} WHERE 1 = 0", row_columns(dialect, mapping), dialect.quote(&mapping.table))
}

/// What a failed probe or check query says, for [`SourceError::Unprepared`].
pub(crate) fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database.message().to_owned(),
        other => other.to_string(),
    }
}

/// Every row's identity with `? < wm <= ?`, in watermark order (for reconciliation).
pub(crate) fn scan_keys_sql(dialect: Dialect, mapping: &SourceMapping) -> String {
    let watermark = dialect.quote(&mapping.watermark_column);
    let horizon = HorizonSql::new(dialect, mapping);
    format!(
        "SELECT {keys} FROM {table} WHERE {watermark} > {p1} AND {watermark} <= {p2} ORDER BY {watermark}",
        keys = key_columns(dialect, mapping, horizon.as_ref()),
        table = dialect.quote(&mapping.table),
        p1 = dialect.placeholder(1),
        p2 = dialect.placeholder(2),
    )
}

/// The values a bound of `position` binds, in the order the conditions above use them.
pub(crate) fn position_binds(position: ScanPosition) -> Vec<i64> {
    match position.horizon {
        Some(horizon) => vec![horizon, horizon, position.watermark],
        None => vec![position.watermark],
    }
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
    let key = convert_key(row)?;
    Ok(SourceRow {
        watermark: key.position.watermark,
        horizon: key.position.horizon,
        uid: key.uid,
        created_at: key.created_at,
        content_type: row.try_get("content_type").map_err(SourceError::Query)?,
        payload,
    })
}

/// Decodes the `hz, wm, uid, created_at` columns of a row query.
pub(crate) fn convert_key<R>(row: &R) -> Result<RowKey, SourceError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let created_at: Option<String> = row.try_get("created_at").map_err(SourceError::Query)?;
    Ok(RowKey {
        position: ScanPosition {
            horizon: row.try_get("hz").map_err(SourceError::Query)?,
            watermark: row.try_get("wm").map_err(SourceError::Query)?,
        },
        uid: row.try_get("uid").map_err(SourceError::Query)?,
        created_at: created_at.map(|text| normalize_sql_timestamp(&text)),
    })
}

/// Cuts one slot from rows in scan order: at most `max_rows` rows and `max_bytes`
/// inline bytes (always at least one row), and with a routing table, back to the last
/// time-slice boundary when a limit cut the slot inside a slice (see
/// [`crate::Source::next_slot_aligned`]).
pub struct SlotCutter<'a> {
    after: ScanPosition,
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
    /// Rows whose position equalled the row before them (duplicate watermark values).
    duplicates: u64,
}

impl<'a> SlotCutter<'a> {
    pub fn new(
        after: ScanPosition,
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
            duplicates: 0,
        }
    }

    pub fn after(&self) -> ScanPosition {
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
    pub fn push(&mut self, position: ScanPosition, size: u64, created_at: Option<&str>) -> bool {
        let last = self.slot.as_ref().map(Slot::end);
        if last == Some(position) {
            // A slot reads every row of its range, so a duplicate of the slot's last
            // position is already in it, whatever the limits say.
            self.duplicates += 1;
            if let Some(slot) = self.slot.as_mut() {
                slot.rows += 1;
                slot.bytes = slot.bytes.saturating_add(size);
            }
            return true;
        }
        debug_assert!(last.is_none_or(|last| position > last), "rows come in scan order");
        let slice = self.slice(created_at);
        let full = self.slot.as_ref().is_some_and(|slot| slot.rows >= self.max_rows);
        // The slot as it stands, before this row: it ends on a slice boundary if the row
        // starts a new slice.
        let before = self.slot;
        if full || !grow_slot(&mut self.slot, self.after, position, size, self.max_bytes) {
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
        if self.duplicates > 0 {
            tracing::warn!(
                after = %self.after,
                duplicates = self.duplicates,
                "rows share a watermark value with the row before them; each slot takes all rows of a value, \
                 so none is skipped, but the watermark column should be unique"
            );
        }
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
pub(crate) fn grow_slot(
    slot: &mut Option<Slot>,
    after: ScanPosition,
    position: ScanPosition,
    size: u64,
    max_bytes: u64,
) -> bool {
    let horizon = |up_to: Option<i64>| up_to.map(|up_to| HorizonBounds { after: after.horizon, up_to });
    match slot {
        None => {
            *slot = Some(Slot {
                after: after.watermark,
                up_to: position.watermark,
                rows: 1,
                bytes: size,
                horizon: horizon(position.horizon),
            });
            true
        }
        Some(current) if current.bytes.saturating_add(size) > max_bytes => false,
        Some(current) => {
            current.up_to = position.watermark;
            current.horizon = horizon(position.horizon);
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
            /// Fails, naming the table, unless every mapped column can be read.
            async fn probe_columns(&self) -> Result<(), $crate::SourceError> {
                sqlx::query(&$crate::sql::probe_sql($dialect, &self.mapping))
                    .fetch_optional(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(|error| $crate::SourceError::Unprepared {
                        table: self.mapping.table.clone(),
                        reason: format!("the mapped columns cannot be read: {}", $crate::sql::database_message(&error)),
                    })
            }

            /// Feeds the rows after the cutter's position, below the horizon (one more
            /// than its row limit, to see where the next slot would start) until the slot
            /// is complete.
            async fn cut_slot(
                &self,
                mut cutter: $crate::sql::SlotCutter<'_>,
            ) -> Result<Option<vera_protocol::message::Slot>, $crate::SourceError> {
                use futures::StreamExt;
                use sqlx::Row;
                let horizon = $crate::Source::horizon(self).await?;
                let after = cutter.after();
                // A source scanned by a horizon starts with no lower bound.
                let bounded = horizon.is_none() || after.horizon.is_some();
                let sql = $crate::sql::next_slot_sql($dialect, &self.mapping, bounded);
                let mut query = sqlx::query(&sql);
                if bounded {
                    for value in $crate::sql::position_binds(after) {
                        query = query.bind(value);
                    }
                }
                if let Some(horizon) = horizon {
                    query = query.bind(horizon);
                }
                let mut rows = query.bind(cutter.query_limit()).fetch(&self.pool);
                while let Some(row) = rows.next().await {
                    let row = match row {
                        Ok(row) => row,
                        Err(error) if $crate::sql::is_lock_wait_timeout(&error) => {
                            tracing::warn!(
                                after = %after,
                                "a transaction that inserted rows below the visibility horizon is still open; \
                                 waiting for it to end before planning past them"
                            );
                            return Ok(None);
                        }
                        Err(error) => return Err($crate::SourceError::Query(error)),
                    };
                    let position = vera_protocol::message::ScanPosition {
                        horizon: row.try_get("hz").map_err($crate::SourceError::Query)?,
                        watermark: row.try_get("wm").map_err($crate::SourceError::Query)?,
                    };
                    let size = row.try_get::<i64, _>("size").map_err($crate::SourceError::Query)?;
                    let created_at: Option<String> = row.try_get("created_at").map_err($crate::SourceError::Query)?;
                    if !cutter.push(position, u64::try_from(size).unwrap_or(0), created_at.as_deref()) {
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

            fn has_horizon(&self) -> bool {
                self.mapping.visibility.column().is_some()
            }

            async fn horizon(&self) -> Result<Option<i64>, $crate::SourceError> {
                let settle_micros = match &self.mapping.visibility {
                    $crate::Visibility::WatermarkOrder => return Ok(None),
                    $crate::Visibility::TransactionId { .. } => 0,
                    $crate::Visibility::InsertTime { settle_millis, .. } => {
                        i64::try_from(settle_millis.saturating_mul(1000)).unwrap_or(i64::MAX)
                    }
                };
                let Some(sql) = $crate::sql::horizon_sql($dialect) else {
                    return Err($crate::SourceError::Config("this database has no visibility horizon".into()));
                };
                let value: Option<i64> =
                    sqlx::query_scalar(sql).fetch_one(&self.pool).await.map_err($crate::SourceError::Query)?;
                let value = value.ok_or_else(|| {
                    $crate::SourceError::Config("the database returned no visibility horizon".into())
                })?;
                Ok(Some(value.saturating_sub(settle_micros)))
            }

            async fn has_rows_after(
                &self,
                after: vera_protocol::message::ScanPosition,
            ) -> Result<bool, $crate::SourceError> {
                let bounded = !$crate::Source::has_horizon(self) || after.horizon.is_some();
                let sql = $crate::sql::any_row_after_sql($dialect, &self.mapping, bounded);
                let mut query = sqlx::query(&sql);
                if bounded {
                    for value in $crate::sql::position_binds(after) {
                        query = query.bind(value);
                    }
                }
                Ok(query.fetch_optional(&self.pool).await.map_err($crate::SourceError::Query)?.is_some())
            }

            async fn newest_position(
                &self,
            ) -> Result<Option<vera_protocol::message::ScanPosition>, $crate::SourceError> {
                use sqlx::Row;
                let sql = $crate::sql::newest_sql($dialect, &self.mapping);
                let Some(row) = sqlx::query(&sql).fetch_optional(&self.pool).await.map_err($crate::SourceError::Query)?
                else {
                    return Ok(None);
                };
                Ok(Some(vera_protocol::message::ScanPosition {
                    horizon: row.try_get("hz").map_err($crate::SourceError::Query)?,
                    watermark: row.try_get("wm").map_err($crate::SourceError::Query)?,
                }))
            }

            async fn next_slot(
                &self,
                after: vera_protocol::message::ScanPosition,
                max_rows: u64,
                max_bytes: u64,
            ) -> Result<Option<vera_protocol::message::Slot>, $crate::SourceError> {
                self.cut_slot($crate::sql::SlotCutter::new(after, max_rows, max_bytes, None)).await
            }

            async fn next_slot_aligned(
                &self,
                after: vera_protocol::message::ScanPosition,
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
                let by_horizon = slot.horizon.is_some() && $crate::Source::has_horizon(self);
                let bounded = !by_horizon || slot.start().horizon.is_some();
                let sql = $crate::sql::select_rows_sql($dialect, &self.mapping, by_horizon, bounded);
                let (start, end) = if by_horizon {
                    (slot.start(), slot.end())
                } else {
                    (
                        vera_protocol::message::ScanPosition::watermark(slot.after),
                        vera_protocol::message::ScanPosition::watermark(slot.up_to),
                    )
                };
                let base_dir = $crate::sql::path_base(&self.mapping);
                let pool = self.pool.clone();
                // Rows stream straight from the cursor: memory holds one row at a time.
                async_stream::try_stream! {
                    let mut query = sqlx::query(&sql);
                    if bounded {
                        for value in $crate::sql::position_binds(start) {
                            query = query.bind(value);
                        }
                    }
                    for value in $crate::sql::position_binds(end) {
                        query = query.bind(value);
                    }
                    let mut rows = query.fetch(&pool);
                    while let Some(row) = rows.next().await {
                        let row = row.map_err($crate::SourceError::Query)?;
                        yield $crate::sql::convert_row(&row, base_dir.as_ref())?;
                    }
                }
                .boxed()
            }

            fn scan_sizes(
                &self,
            ) -> futures::stream::BoxStream<'_, Result<(Option<String>, u64), $crate::SourceError>> {
                use futures::StreamExt;
                use sqlx::Row;
                let sql = $crate::sql::sizes_sql($dialect, &self.mapping);
                let pool = self.pool.clone();
                async_stream::try_stream! {
                    let mut rows = sqlx::query(&sql).fetch(&pool);
                    while let Some(row) = rows.next().await {
                        let row = row.map_err($crate::SourceError::Query)?;
                        let created_at: Option<String> = row.try_get("created_at").map_err($crate::SourceError::Query)?;
                        let size: i64 = row.try_get("size").map_err($crate::SourceError::Query)?;
                        yield (created_at.map(|text| $crate::sql::normalize_sql_timestamp(&text)), u64::try_from(size).unwrap_or(0));
                    }
                }
                .boxed()
            }

            fn scan_keys(
                &self,
                from: i64,
                to: i64,
            ) -> futures::stream::BoxStream<'_, Result<$crate::RowKey, $crate::SourceError>> {
                use futures::StreamExt;
                let sql = $crate::sql::scan_keys_sql($dialect, &self.mapping);
                let pool = self.pool.clone();
                async_stream::try_stream! {
                    let mut rows = sqlx::query(&sql).bind(from).bind(to).fetch(&pool);
                    while let Some(row) = rows.next().await {
                        let row = row.map_err($crate::SourceError::Query)?;
                        yield $crate::sql::convert_key(&row)?;
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

#[cfg(test)]
mod cutter_tests {
    use vera_protocol::message::{HorizonBounds, ScanPosition};

    use super::SlotCutter;

    fn at(horizon: i64, watermark: i64) -> ScanPosition {
        ScanPosition { horizon: Some(horizon), watermark }
    }

    #[test]
    fn a_horizon_slot_spans_pairs_whose_watermark_goes_down() {
        let mut cutter = SlotCutter::new(ScanPosition::START, 3, u64::MAX, None);
        for position in [at(7, 50), at(8, 3), at(8, 4), at(9, 1)] {
            if !cutter.push(position, 10, None) {
                break;
            }
        }
        let slot = cutter.finish().expect("three rows");
        assert_eq!(slot.rows, 3);
        assert_eq!((slot.after, slot.up_to), (i64::MIN, 4));
        assert_eq!(slot.horizon, Some(HorizonBounds { after: None, up_to: 8 }));
        assert!(slot.contains(at(7, 50)) && slot.contains(at(8, 4)) && !slot.contains(at(9, 1)));
        let mut next = SlotCutter::new(slot.end(), 3, u64::MAX, None);
        assert!(next.push(at(9, 1), 10, None));
        assert_eq!(next.finish().and_then(|slot| slot.horizon), Some(HorizonBounds { after: Some(8), up_to: 9 }));
    }

    #[test]
    fn duplicate_watermarks_stay_in_one_slot_whatever_the_limit() {
        let mut cutter = SlotCutter::new(ScanPosition::watermark(0), 2, u64::MAX, None);
        let mut taken = 0;
        for watermark in [1, 2, 2, 2, 3] {
            if !cutter.push(ScanPosition::watermark(watermark), 1, None) {
                break;
            }
            taken += 1;
        }
        let slot = cutter.finish().expect("rows");
        // The slot reads every row with watermark 2, so it counts them all.
        assert_eq!((taken, slot.up_to, slot.rows), (4, 2, 4));
    }
}
