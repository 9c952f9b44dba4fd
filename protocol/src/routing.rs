//! `locate_shard`: where a file lives, computed instead of looked up.
//!
//! A file's shard address is a pure function of its uid, its `created_at` and the routing
//! epoch in force. The address has two parts:
//!
//! * a **time bucket**: `created_at` in UTC, floored to the epoch's granularity (hour, day
//!   or calendar month), so lifecycle and retention work on whole time ranges;
//! * a **hash bucket**: the top `n_bits` bits of a keyed BLAKE3 hash of the uid, so a busy
//!   day is spread across `2^n_bits` addresses.
//!
//! Everything here is frozen by golden vectors in `tests/routing_golden.rs`. Changing the
//! hash, its key, the granularity or `n_bits` for existing data would orphan every file
//! already written, so such a change is only ever a new [`RoutingEpoch`] that applies to
//! data created after it takes effect (see [`RoutingTable`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

use crate::timestamp::{Timestamp, TimestampError};

/// BLAKE3 `derive_key` context string for the uid hash. Never change it.
pub const ROUTING_HASH_CONTEXT: &str = "vera 2026-11-24 locate_shard uid hash v1";
/// Largest supported `n_bits`: 2^20 addresses per time bucket is far past any sane layout.
pub const MAX_N_BITS: u8 = 20;
/// Longest accepted uid, in bytes of UTF-8.
pub const MAX_UID_BYTES: usize = 255;

/// Why an input could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("n_bits out of range: {n_bits} (allowed 0..={MAX_N_BITS})")]
    NBitsOutOfRange { n_bits: u8 },
    #[error("uid is empty")]
    EmptyUid,
    #[error("uid too long: {len} bytes (max {MAX_UID_BYTES})")]
    UidTooLong { len: usize },
    #[error("uid contains a control character at byte {position}")]
    UidControlCharacter { position: usize },
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    #[error("unknown routing epoch {epoch}")]
    UnknownEpoch { epoch: u16 },
    #[error("time bucket {bucket} is outside the supported time range for {granularity:?}")]
    TimeBucketOutOfRange { bucket: i32, granularity: TimeGranularity },
    #[error("hash bucket {bucket} does not fit in {n_bits} bits")]
    BucketOutOfRange { bucket: u32, n_bits: u8 },
    #[error("not a shard address key prefix: {prefix:?}")]
    BadPrefix { prefix: String },
    #[error("routing table is empty or not sorted by effective_from")]
    BadTable,
}

/// How `created_at` is floored into a time bucket. Always UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeGranularity {
    /// Bucket = whole hours since 1970-01-01T00Z (floor division).
    Hour,
    /// Bucket = whole days since 1970-01-01 (floor division).
    Day,
    /// Bucket = `(year - 1970) * 12 + (month - 1)`.
    Month,
    /// Bucket = `year - 1970`: for sparse years, where a month holds too few files.
    Year,
}

impl TimeGranularity {
    /// The wire code stored in shard headers and FORMAT.md.
    pub fn code(self) -> u8 {
        match self {
            TimeGranularity::Hour => 1,
            TimeGranularity::Day => 2,
            TimeGranularity::Month => 3,
            TimeGranularity::Year => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TimeGranularity::Hour),
            2 => Some(TimeGranularity::Day),
            3 => Some(TimeGranularity::Month),
            4 => Some(TimeGranularity::Year),
            _ => None,
        }
    }

    /// The time bucket `created_at` falls in.
    pub fn bucket_of(self, created_at: Timestamp) -> i32 {
        let micros = created_at.as_micros();
        let bucket = match self {
            TimeGranularity::Hour => micros.div_euclid(3_600_000_000),
            TimeGranularity::Day => micros.div_euclid(86_400_000_000),
            TimeGranularity::Month => {
                let date = created_at.to_datetime().date();
                (i64::from(date.year()) - 1970) * 12 + i64::from(u8::from(date.month())) - 1
            }
            TimeGranularity::Year => i64::from(created_at.to_datetime().date().year()) - 1970,
        };
        // Timestamp's range keeps every granularity well inside i32.
        i32::try_from(bucket).unwrap_or(i32::MAX)
    }

    /// First instant of a bucket, or `None` if it lies outside the timestamp range.
    fn bucket_start(self, bucket: i32) -> Option<OffsetDateTime> {
        let start = match self {
            TimeGranularity::Hour => OffsetDateTime::from_unix_timestamp(i64::from(bucket) * 3600).ok()?,
            TimeGranularity::Day => OffsetDateTime::from_unix_timestamp(i64::from(bucket) * 86_400).ok()?,
            TimeGranularity::Month => {
                let months = i64::from(bucket);
                let year = i32::try_from(1970 + months.div_euclid(12)).ok()?;
                let month = Month::try_from(u8::try_from(months.rem_euclid(12) + 1).ok()?).ok()?;
                Date::from_calendar_date(year, month, 1).ok()?.with_time(Time::MIDNIGHT).assume_utc()
            }
            TimeGranularity::Year => {
                let year = i32::try_from(1970 + i64::from(bucket)).ok()?;
                Date::from_calendar_date(year, Month::January, 1).ok()?.with_time(Time::MIDNIGHT).assume_utc()
            }
        };
        let micros = i64::try_from(start.unix_timestamp_nanos() / 1000).ok()?;
        Timestamp::from_micros(micros).ok()?;
        Some(start)
    }

    fn prefix_tag(self) -> char {
        match self {
            TimeGranularity::Hour => 'h',
            TimeGranularity::Day => 'd',
            TimeGranularity::Month => 'm',
            TimeGranularity::Year => 'y',
        }
    }
}

/// One routing regime: hash and time rules that never change once data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RoutingEpochWire")]
pub struct RoutingEpoch {
    pub id: u16,
    pub granularity: TimeGranularity,
    pub n_bits: u8,
}

impl RoutingEpoch {
    /// Epoch 1: daily UTC buckets. `n_bits` is the deployment's choice.
    pub fn v1(n_bits: u8) -> Result<Self, RoutingError> {
        Self::new(1, TimeGranularity::Day, n_bits)
    }

    pub fn new(id: u16, granularity: TimeGranularity, n_bits: u8) -> Result<Self, RoutingError> {
        if n_bits > MAX_N_BITS {
            return Err(RoutingError::NBitsOutOfRange { n_bits });
        }
        if id == 0 {
            return Err(RoutingError::UnknownEpoch { epoch: id });
        }
        Ok(RoutingEpoch { id, granularity, n_bits })
    }

    /// Routes one file under this epoch.
    pub fn locate(&self, uid: &str, created_at: Timestamp) -> Result<ShardAddr, RoutingError> {
        if self.n_bits > MAX_N_BITS {
            return Err(RoutingError::NBitsOutOfRange { n_bits: self.n_bits });
        }
        validate_uid(uid)?;
        Ok(ShardAddr {
            epoch: self.id,
            granularity: self.granularity,
            time_bucket: self.granularity.bucket_of(created_at),
            n_bits: self.n_bits,
            bucket: hash_bucket(uid_hash(uid), self.n_bits),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingEpochWire {
    id: u16,
    granularity: TimeGranularity,
    n_bits: u8,
}

impl TryFrom<RoutingEpochWire> for RoutingEpoch {
    type Error = RoutingError;

    fn try_from(wire: RoutingEpochWire) -> Result<Self, Self::Error> {
        RoutingEpoch::new(wire.id, wire.granularity, wire.n_bits)
    }
}

/// Routing epochs in force over time. Data is routed by the epoch whose `effective_from`
/// is the latest one not after the file's `created_at`, so switching epochs only ever
/// moves data created after the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingTable {
    pub epochs: Vec<EpochEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochEntry {
    pub effective_from: Timestamp,
    pub epoch: RoutingEpoch,
}

impl RoutingTable {
    /// A table with a single epoch that covers all time.
    pub fn single(epoch: RoutingEpoch) -> Self {
        RoutingTable { epochs: vec![EpochEntry { effective_from: Timestamp::MIN, epoch }] }
    }

    /// Entries must start at `Timestamp::MIN`, be strictly increasing in time and in epoch
    /// id, and every epoch must itself be valid.
    pub fn validate(&self) -> Result<(), RoutingError> {
        let first = self.epochs.first().ok_or(RoutingError::BadTable)?;
        if first.effective_from != Timestamp::MIN {
            return Err(RoutingError::BadTable);
        }
        for pair in self.epochs.windows(2) {
            if pair[1].effective_from <= pair[0].effective_from || pair[1].epoch.id <= pair[0].epoch.id {
                return Err(RoutingError::BadTable);
            }
        }
        for entry in &self.epochs {
            RoutingEpoch::new(entry.epoch.id, entry.epoch.granularity, entry.epoch.n_bits)?;
        }
        Ok(())
    }

    pub fn epoch_for(&self, created_at: Timestamp) -> Result<RoutingEpoch, RoutingError> {
        self.epochs
            .iter()
            .rev()
            .find(|entry| entry.effective_from <= created_at)
            .map(|entry| entry.epoch)
            .ok_or(RoutingError::BadTable)
    }

    /// The time slice `created_at` falls in: its epoch and time bucket. All files of one
    /// slice share its addresses, so a producer that cuts slots at slice boundaries has
    /// each address written by one task (one segment generation).
    pub fn time_slice(&self, created_at: Timestamp) -> Result<(u16, i32), RoutingError> {
        let epoch = self.epoch_for(created_at)?;
        Ok((epoch.id, epoch.granularity.bucket_of(created_at)))
    }

    pub fn epoch_by_id(&self, id: u16) -> Result<RoutingEpoch, RoutingError> {
        self.epochs
            .iter()
            .find(|entry| entry.epoch.id == id)
            .map(|entry| entry.epoch)
            .ok_or(RoutingError::UnknownEpoch { epoch: id })
    }

    pub fn locate(&self, uid: &str, created_at: Timestamp) -> Result<ShardAddr, RoutingError> {
        self.epoch_for(created_at)?.locate(uid, created_at)
    }
}

/// `locate_shard(uid, created_at, n_bits)` under routing epoch 1 (daily UTC buckets).
pub fn locate_shard(uid: &str, created_at: Timestamp, n_bits: u8) -> Result<ShardAddr, RoutingError> {
    RoutingEpoch::v1(n_bits)?.locate(uid, created_at)
}

/// Checks a uid: 1..=255 bytes of UTF-8 without control characters.
pub fn validate_uid(uid: &str) -> Result<(), RoutingError> {
    if uid.is_empty() {
        return Err(RoutingError::EmptyUid);
    }
    if uid.len() > MAX_UID_BYTES {
        return Err(RoutingError::UidTooLong { len: uid.len() });
    }
    if let Some((position, _)) = uid.char_indices().find(|(_, c)| c.is_control()) {
        return Err(RoutingError::UidControlCharacter { position });
    }
    Ok(())
}

/// First 8 bytes, little-endian, of BLAKE3 in derive-key mode over the uid's UTF-8 bytes.
pub fn uid_hash(uid: &str) -> u64 {
    u64_at(&uid_digest(uid), 0)
}

/// The uid's fingerprint: bytes 8..16, little-endian, of the same digest as [`uid_hash`].
/// Format 2 segments store their files in fingerprint order. Unlike `uid_hash`, whose top
/// `n_bits` every file of an address shares, all of its bits vary within a segment.
pub fn uid_fingerprint(uid: &str) -> u64 {
    u64_at(&uid_digest(uid), 8)
}

/// The id of `uid` in erasure markers ([`ShardAddr::erasure_key`]): the hex of its
/// routing digest, so a marker names no uid in clear.
pub fn erasure_id(uid: &str) -> String {
    crate::hex::encode(&uid_digest(uid))
}

fn uid_digest(uid: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(ROUTING_HASH_CONTEXT);
    hasher.update(uid.as_bytes());
    *hasher.finalize().as_bytes()
}

fn u64_at(bytes: &[u8; 32], at: usize) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(eight)
}

fn hash_bucket(hash: u64, n_bits: u8) -> u32 {
    if n_bits == 0 {
        return 0;
    }
    // n_bits <= 20, so the shifted value fits in u32.
    (hash >> (64 - u32::from(n_bits))) as u32
}

/// Where a file lives: a key prefix under which its segments are stored. Deserialising
/// checks every field, so a `ShardAddr` from a message is always a valid address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "ShardAddrWire")]
pub struct ShardAddr {
    pub epoch: u16,
    pub granularity: TimeGranularity,
    pub time_bucket: i32,
    pub n_bits: u8,
    pub bucket: u32,
}

impl ShardAddr {
    /// Builds an address from its parts, checking every field.
    pub fn new(
        epoch: u16,
        granularity: TimeGranularity,
        time_bucket: i32,
        n_bits: u8,
        bucket: u32,
    ) -> Result<Self, RoutingError> {
        if epoch == 0 {
            return Err(RoutingError::UnknownEpoch { epoch });
        }
        if n_bits > MAX_N_BITS {
            return Err(RoutingError::NBitsOutOfRange { n_bits });
        }
        if u64::from(bucket) >= (1u64 << n_bits) {
            return Err(RoutingError::BucketOutOfRange { bucket, n_bits });
        }
        if granularity.bucket_start(time_bucket).is_none() {
            return Err(RoutingError::TimeBucketOutOfRange { bucket: time_bucket, granularity });
        }
        Ok(ShardAddr { epoch, granularity, time_bucket, n_bits, bucket })
    }

    /// The half-open UTC interval `[start, end)` of `created_at` values this address
    /// covers. `end` is clamped to `Timestamp::MAX` for the last bucket.
    pub fn time_range(&self) -> (Timestamp, Timestamp) {
        let to_timestamp = |instant: Option<OffsetDateTime>| {
            instant
                .and_then(|i| i64::try_from(i.unix_timestamp_nanos() / 1000).ok())
                .and_then(|micros| Timestamp::from_micros(micros).ok())
        };
        let start = to_timestamp(self.granularity.bucket_start(self.time_bucket)).unwrap_or(Timestamp::MIN);
        let end =
            to_timestamp(self.granularity.bucket_start(self.time_bucket.saturating_add(1))).unwrap_or(Timestamp::MAX);
        (start, end)
    }

    /// Object-key prefix, e.g. `e1/d2026-11-24/n04-a/`. Always ends in `/`.
    pub fn key_prefix(&self) -> String {
        format!("e{}/{}/n{:02}-{}/", self.epoch, self.time_label(), self.n_bits, self.bucket_hex())
    }

    /// The segment object key for generation `generation` under this address.
    pub fn segment_key(&self, generation: u32) -> String {
        format!("{}g{:06}.vera", self.key_prefix(), generation)
    }

    /// The sidecar object key for a segment.
    pub fn sidecar_key(&self, generation: u32) -> String {
        sidecar_key_of(&self.segment_key(generation))
    }

    fn bucket_hex(&self) -> String {
        let width = usize::from(self.n_bits).div_ceil(4).max(1);
        format!("{:0width$x}", self.bucket, width = width)
    }

    fn time_label(&self) -> String {
        let start = self.granularity.bucket_start(self.time_bucket).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let tag = self.granularity.prefix_tag();
        match self.granularity {
            TimeGranularity::Hour => format!(
                "{tag}{:04}-{:02}-{:02}T{:02}",
                start.year(),
                u8::from(start.month()),
                start.day(),
                start.hour()
            ),
            TimeGranularity::Day => {
                format!("{tag}{:04}-{:02}-{:02}", start.year(), u8::from(start.month()), start.day())
            }
            TimeGranularity::Month => format!("{tag}{:04}-{:02}", start.year(), u8::from(start.month())),
            TimeGranularity::Year => format!("{tag}{:04}", start.year()),
        }
    }

    /// Parses what [`ShardAddr::key_prefix`] produced (the trailing `/` is optional).
    /// Only the canonical spelling is accepted, so each address has exactly one prefix.
    pub fn from_key_prefix(prefix: &str) -> Result<Self, RoutingError> {
        let bad = || RoutingError::BadPrefix { prefix: prefix.chars().take(128).collect() };
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        let mut parts = trimmed.split('/');
        let (Some(epoch_part), Some(time_part), Some(bucket_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let epoch: u16 = epoch_part.strip_prefix('e').and_then(parse_decimal).ok_or_else(bad)?;
        let (granularity, time_bucket) = parse_time_label(time_part).ok_or_else(bad)?;
        let (bits_text, hex_text) =
            bucket_part.strip_prefix('n').and_then(|rest| rest.split_once('-')).ok_or_else(bad)?;
        let n_bits: u8 = parse_decimal(bits_text).ok_or_else(bad)?;
        if hex_text.is_empty() || !hex_text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let bucket = u32::from_str_radix(hex_text, 16).map_err(|_| bad())?;
        let addr = ShardAddr::new(epoch, granularity, time_bucket, n_bits, bucket)?;
        if addr.key_prefix().trim_end_matches('/') != trimmed {
            return Err(bad());
        }
        Ok(addr)
    }

    /// Parses a segment key produced by [`ShardAddr::segment_key`] (a packed segment,
    /// never a repacked one).
    pub fn from_segment_key(key: &str) -> Result<(Self, u32), RoutingError> {
        match Self::parse_any_segment_key(key)? {
            (addr, generation, 0) => Ok((addr, generation)),
            _ => Err(RoutingError::BadPrefix { prefix: key.chars().take(128).collect() }),
        }
    }

    /// The key of the segment that repack round `round` (1, 2, …) of generation
    /// `generation` writes: `…/g000000.r1.vera`. Round 0 is the packed segment itself.
    /// Readers never probe these keys: they reach them through the `superseded` link in
    /// the replaced segment's sidecar.
    pub fn repacked_segment_key(&self, generation: u32, round: u32) -> String {
        if round == 0 {
            return self.segment_key(generation);
        }
        format!("{}g{:06}.r{}.vera", self.key_prefix(), generation, round)
    }

    /// The key of a staging segment (ADR 0005): `…/s0123456789abcdef.vera`, named by the
    /// first 8 bytes of its object hash, so a retried task finds the same key.
    pub fn staging_segment_key(&self, object_hash: &[u8; 32]) -> String {
        let mut name = String::with_capacity(STAGING_NAME_HEX);
        for byte in &object_hash[..STAGING_NAME_HEX / 2] {
            name.push_str(&format!("{byte:02x}"));
        }
        format!("{}s{name}.vera", self.key_prefix())
    }

    /// The erasure marker of `uid` under this address: `x<64 hex>.erased`, the hex being
    /// [`erasure_id`]. `vera delete` writes it, so a file erased and then dropped by a
    /// repack or a compaction is never stored again by a replayed event (FORMAT.md §5.6).
    pub fn erasure_key(&self, uid: &str) -> String {
        format!("{}x{}.erased", self.key_prefix(), erasure_id(uid))
    }

    /// The erasure id in an erasure marker's key, if `key` is one under this address.
    pub fn erasure_id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(self.key_prefix().as_str())?.strip_prefix('x')?.strip_suffix(".erased")?;
        (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(name)
    }

    /// Parses a staging segment key produced by [`ShardAddr::staging_segment_key`]:
    /// `(address, hex name)`. Only the canonical spelling is accepted.
    pub fn from_staging_key(key: &str) -> Result<(Self, String), RoutingError> {
        let bad = || RoutingError::BadPrefix { prefix: key.chars().take(128).collect() };
        let (prefix, file) = key.rsplit_once('/').ok_or_else(bad)?;
        let name = file.strip_prefix('s').and_then(|rest| rest.strip_suffix(".vera")).ok_or_else(bad)?;
        if name.len() != STAGING_NAME_HEX || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok((Self::from_key_prefix(prefix)?, name.to_owned()))
    }

    /// Parses any segment key, packed or repacked: `(address, generation, round)`, with
    /// round 0 for a packed segment. Only the canonical spelling is accepted.
    pub fn parse_any_segment_key(key: &str) -> Result<(Self, u32, u32), RoutingError> {
        let bad = || RoutingError::BadPrefix { prefix: key.chars().take(128).collect() };
        let (prefix, file) = key.rsplit_once('/').ok_or_else(bad)?;
        let name = file.strip_prefix('g').and_then(|rest| rest.strip_suffix(".vera")).ok_or_else(bad)?;
        let (generation_text, round) = match name.split_once(".r") {
            None => (name, 0),
            Some((generation_text, round_text)) => {
                let round: u32 = parse_decimal(round_text).ok_or_else(bad)?;
                if round == 0 || round_text.starts_with('0') {
                    return Err(bad());
                }
                (generation_text, round)
            }
        };
        if generation_text.len() != 6 {
            return Err(bad());
        }
        let generation: u32 = parse_decimal(generation_text).ok_or_else(bad)?;
        let addr = Self::from_key_prefix(prefix)?;
        Ok((addr, generation, round))
    }
}

/// Hex digits of the object hash that name a staging segment.
pub const STAGING_NAME_HEX: usize = 16;

/// The generation a staging segment's header carries: it has none (ADR 0005).
pub const STAGING_GENERATION: u32 = u32::MAX;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardAddrWire {
    epoch: u16,
    granularity: TimeGranularity,
    time_bucket: i32,
    n_bits: u8,
    bucket: u32,
}

impl TryFrom<ShardAddrWire> for ShardAddr {
    type Error = RoutingError;

    fn try_from(wire: ShardAddrWire) -> Result<Self, Self::Error> {
        ShardAddr::new(wire.epoch, wire.granularity, wire.time_bucket, wire.n_bits, wire.bucket)
    }
}

impl fmt::Display for ShardAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key_prefix())
    }
}

fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_time_label(label: &str) -> Option<(TimeGranularity, i32)> {
    let mut chars = label.chars();
    let tag = chars.next()?;
    let rest = chars.as_str();
    let granularity = match tag {
        'h' => TimeGranularity::Hour,
        'd' => TimeGranularity::Day,
        'm' => TimeGranularity::Month,
        'y' => TimeGranularity::Year,
        _ => return None,
    };
    let field = |range: std::ops::Range<usize>| -> Option<i64> { parse_decimal(rest.get(range)?) };
    if granularity == TimeGranularity::Year {
        if rest.len() != 4 {
            return None;
        }
        return i32::try_from(field(0..4)? - 1970).ok().map(|bucket| (granularity, bucket));
    }
    let (year, month) = (field(0..4)?, field(5..7)?);
    if rest.get(4..5)? != "-" {
        return None;
    }
    let bucket = match granularity {
        // Parsed above: a year label has no month.
        TimeGranularity::Year => return None,
        TimeGranularity::Month => {
            if rest.len() != 7 {
                return None;
            }
            if !(1..=12).contains(&month) {
                return None;
            }
            (year - 1970) * 12 + month - 1
        }
        TimeGranularity::Day | TimeGranularity::Hour => {
            let day = field(8..10)?;
            if rest.get(7..8)? != "-" {
                return None;
            }
            let date = Date::from_calendar_date(
                i32::try_from(year).ok()?,
                Month::try_from(u8::try_from(month).ok()?).ok()?,
                u8::try_from(day).ok()?,
            )
            .ok()?;
            let days = i64::from(date.to_julian_day())
                - i64::from(Date::from_calendar_date(1970, Month::January, 1).ok()?.to_julian_day());
            if granularity == TimeGranularity::Day {
                if rest.len() != 10 {
                    return None;
                }
                days
            } else {
                if rest.len() != 13 || rest.get(10..11)? != "T" {
                    return None;
                }
                let hour = field(11..13)?;
                if hour > 23 {
                    return None;
                }
                days * 24 + hour
            }
        }
    };
    Some((granularity, i32::try_from(bucket).ok()?))
}

/// The sidecar (`.vera.meta`) object key of the segment stored at `segment_key`.
pub fn sidecar_key_of(segment_key: &str) -> String {
    format!("{segment_key}.meta")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn bad_inputs_get_typed_errors() {
        let t = ts("2026-11-24T10:00:00Z");
        assert_eq!(locate_shard("a", t, 21), Err(RoutingError::NBitsOutOfRange { n_bits: 21 }));
        assert_eq!(locate_shard("", t, 4), Err(RoutingError::EmptyUid));
        let long = "x".repeat(256);
        assert_eq!(locate_shard(&long, t, 4), Err(RoutingError::UidTooLong { len: 256 }));
        assert_eq!(locate_shard("a\nb", t, 4), Err(RoutingError::UidControlCharacter { position: 1 }));
        assert!(locate_shard(&"x".repeat(255), t, 4).is_ok());
    }

    #[test]
    fn time_buckets_are_utc_and_floor() {
        let a = locate_shard("u", ts("2026-11-24T00:00:00Z"), 0).unwrap();
        let b = locate_shard("u", ts("2026-11-24T23:59:59.999999Z"), 0).unwrap();
        let c = locate_shard("u", ts("2026-11-24T23:30:00-01:00"), 0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c, "23:30 at -01:00 is the next UTC day");
        let before_epoch = locate_shard("u", ts("1969-12-31T23:00:00Z"), 0).unwrap();
        assert_eq!(before_epoch.time_bucket, -1);
    }

    #[test]
    fn prefix_round_trips_for_every_granularity() {
        let all = [TimeGranularity::Hour, TimeGranularity::Day, TimeGranularity::Month, TimeGranularity::Year];
        for granularity in all {
            assert_eq!(TimeGranularity::from_code(granularity.code()), Some(granularity));
            for n_bits in [0u8, 1, 4, 5, 12, 20] {
                let epoch = RoutingEpoch::new(3, granularity, n_bits).unwrap();
                for (i, when) in
                    ["1900-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2026-11-24T10:11:12Z", "9999-12-31T23:59:59Z"]
                        .iter()
                        .enumerate()
                {
                    let addr = epoch.locate(&format!("uid-{i}"), ts(when)).unwrap();
                    let prefix = addr.key_prefix();
                    assert_eq!(ShardAddr::from_key_prefix(&prefix).unwrap(), addr, "{prefix}");
                    let key = addr.segment_key(7);
                    assert_eq!(ShardAddr::from_segment_key(&key).unwrap(), (addr, 7));
                }
            }
        }
    }

    #[test]
    fn year_buckets_count_calendar_years_from_1970() {
        let epoch = RoutingEpoch::new(2, TimeGranularity::Year, 0).unwrap();
        let first = epoch.locate("u", ts("2016-01-01T00:00:00Z")).unwrap();
        let last = epoch.locate("u", ts("2016-12-31T23:59:59.999999Z")).unwrap();
        assert_eq!((first.time_bucket, last.time_bucket), (46, 46));
        assert_eq!(epoch.locate("u", ts("1969-12-31T23:59:59Z")).unwrap().time_bucket, -1);
        assert_eq!(first.key_prefix(), "e2/y2016/n00-0/");
        assert_eq!(first.time_range(), (ts("2016-01-01T00:00:00Z"), ts("2017-01-01T00:00:00Z")));
    }

    #[test]
    fn non_canonical_prefixes_are_refused() {
        for bad in [
            "",
            "e1",
            "e1/d2026-11-24",
            "e1/d2026-11-24/n04-a/extra",
            "e01/d2026-11-24/n04-a",
            "e1/d2026-11-24/n4-a",
            "e1/d2026-11-24/n04-0a",
            "e1/d2026-11-24/n04-A",
            "e1/d2026-11-24/n04-10",
            "e1/d2026-02-30/n04-a",
            "e1/x2026-11-24/n04-a",
            "e0/d2026-11-24/n04-a",
            "e1/h2026-11-24T24/n04-a",
            "e1/m2026-13/n04-a",
            "e1/y26/n04-a",
            "e1/y2026-01/n04-a",
            "e1/y+026/n04-a",
            "e1/d2026-11-24/n21-00000",
            "e1/d+026-11-24/n04-a",
        ] {
            assert!(ShardAddr::from_key_prefix(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ShardAddr::from_segment_key("e1/d2026-11-24/n04-a/g1.vera").is_err());
        assert!(ShardAddr::from_segment_key("e1/d2026-11-24/n04-a/g000001.vera").is_ok());
        let parse = ShardAddr::parse_any_segment_key;
        let (addr, generation, round) = parse("e1/d2026-11-24/n04-a/g000001.r12.vera").unwrap();
        assert_eq!((generation, round), (1, 12));
        assert_eq!(addr.repacked_segment_key(1, 12), "e1/d2026-11-24/n04-a/g000001.r12.vera");
        assert_eq!(addr.repacked_segment_key(1, 0), addr.segment_key(1));
        assert!(ShardAddr::from_segment_key("e1/d2026-11-24/n04-a/g000001.r1.vera").is_err());
        let staging = ShardAddr::from_key_prefix("e1/d2026-11-24/n04-a/").unwrap().staging_segment_key(&[0xab; 32]);
        assert_eq!(staging, "e1/d2026-11-24/n04-a/sabababababababab.vera");
        let (addr, name) = ShardAddr::from_staging_key(&staging).unwrap();
        assert_eq!((addr.key_prefix().as_str(), name.as_str()), ("e1/d2026-11-24/n04-a/", "abababababababab"));
        assert!(ShardAddr::from_segment_key(&staging).is_err(), "a staging key is no generation");
        for bad in ["sABABABABABABABAB.vera", "sabab.vera", "sabababababababab.vera.meta", "g000001.vera"] {
            assert!(ShardAddr::from_staging_key(&format!("e1/d2026-11-24/n04-a/{bad}")).is_err(), "{bad} was accepted");
        }
        for bad in ["g000001.r0.vera", "g000001.r01.vera", "g000001.r.vera", "g000001.rx.vera", "g1.r1.vera"] {
            assert!(parse(&format!("e1/d2026-11-24/n04-a/{bad}")).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn time_range_covers_the_bucket() {
        let addr = locate_shard("u", ts("2026-11-24T13:00:00Z"), 2).unwrap();
        assert_eq!(addr.time_range(), (ts("2026-11-24T00:00:00Z"), ts("2026-11-25T00:00:00Z")));
        let month =
            RoutingEpoch::new(2, TimeGranularity::Month, 0).unwrap().locate("u", ts("2026-12-31T23:00:00Z")).unwrap();
        assert_eq!(month.time_range(), (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z")));
        let last = locate_shard("u", Timestamp::MAX, 0).unwrap();
        assert_eq!(last.time_range().1, Timestamp::MAX);
    }

    #[test]
    fn routing_table_picks_epoch_by_created_at() {
        let table = RoutingTable {
            epochs: vec![
                EpochEntry { effective_from: Timestamp::MIN, epoch: RoutingEpoch::v1(4).unwrap() },
                EpochEntry {
                    effective_from: ts("2027-01-01T00:00:00Z"),
                    epoch: RoutingEpoch::new(2, TimeGranularity::Hour, 6).unwrap(),
                },
            ],
        };
        table.validate().unwrap();
        let old = table.locate("abc", ts("2026-12-31T23:59:59Z")).unwrap();
        assert_eq!(old, locate_shard("abc", ts("2026-12-31T23:59:59Z"), 4).unwrap());
        let new = table.locate("abc", ts("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!((new.epoch, new.granularity, new.n_bits), (2, TimeGranularity::Hour, 6));
        let unsorted = RoutingTable { epochs: table.epochs.iter().rev().cloned().collect() };
        assert_eq!(unsorted.validate(), Err(RoutingError::BadTable));
        assert_eq!(RoutingTable { epochs: vec![] }.validate(), Err(RoutingError::BadTable));
    }
}
