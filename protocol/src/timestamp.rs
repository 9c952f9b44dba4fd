//! `Timestamp`: a UTC instant in whole microseconds since the Unix epoch.
//!
//! Routing, index entries and messages all carry `created_at` in this one representation so
//! that no time zone, leap-second table or float rounding can make two machines disagree.
//! The accepted range is `1900-01-01T00:00:00Z` (inclusive) to `10000-01-01T00:00:00Z`
//! (exclusive); anything else is a typed error, never a wrapped or clamped value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Microseconds since 1970-01-01T00:00:00Z, UTC, no leap seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("timestamp out of range: {micros} us since the unix epoch (allowed 1900-01-01 to 9999-12-31 UTC)")]
    OutOfRange { micros: i64 },
    #[error("timestamp is not valid RFC 3339 or integer microseconds: {input:?}")]
    Unparseable { input: String },
}

impl Timestamp {
    /// 1900-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(-2_208_988_800_000_000);
    /// 9999-12-31T23:59:59.999999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_800_000_000 - 1);

    /// Checks the range; the only way to build a `Timestamp` from outside data.
    pub fn from_micros(micros: i64) -> Result<Self, TimestampError> {
        if !(Self::MIN.0..=Self::MAX.0).contains(&micros) {
            return Err(TimestampError::OutOfRange { micros });
        }
        Ok(Timestamp(micros))
    }

    pub fn from_unix_seconds(seconds: i64) -> Result<Self, TimestampError> {
        let micros = seconds
            .checked_mul(1_000_000)
            .ok_or(TimestampError::OutOfRange { micros: if seconds < 0 { i64::MIN } else { i64::MAX } })?;
        Self::from_micros(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (`2026-11-24T10:00:00Z`, any offset, converted to UTC) or a bare
    /// integer count of microseconds.
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let trimmed = input.trim();
        if let Ok(micros) = trimmed.parse::<i64>() {
            return Self::from_micros(micros);
        }
        let unparseable = || TimestampError::Unparseable { input: input.chars().take(64).collect() };
        let parsed = OffsetDateTime::parse(trimmed, &Rfc3339).map_err(|_| unparseable())?;
        let nanos = parsed.unix_timestamp_nanos();
        let micros = i64::try_from(nanos.div_euclid(1000)).map_err(|_| unparseable())?;
        Self::from_micros(micros)
    }

    /// The UTC calendar value, for formatting and calendar bucketing.
    pub fn to_datetime(self) -> OffsetDateTime {
        // In range by construction, so this cannot fail; fall back to the epoch defensively.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC)
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-24T10:00:00.000001Z`.
    pub fn to_rfc3339(self) -> String {
        let dt = self.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.microsecond()
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Messages carry timestamps as RFC 3339 strings so other teams' code can read them.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets_to_utc() {
        let a = Timestamp::parse("2026-11-24T10:00:00Z").unwrap();
        let b = Timestamp::parse("2026-11-24T11:00:00+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_micros(), 1_795_514_400_000_000);
        assert_eq!(a.to_rfc3339(), "2026-11-24T10:00:00.000000Z");
    }

    #[test]
    fn range_is_enforced() {
        assert!(Timestamp::from_micros(Timestamp::MIN.as_micros() - 1).is_err());
        assert!(Timestamp::from_micros(Timestamp::MAX.as_micros() + 1).is_err());
        assert!(Timestamp::from_unix_seconds(i64::MAX).is_err());
        assert!(Timestamp::parse("1899-12-31T23:59:59Z").is_err());
        assert_eq!(Timestamp::MIN.to_rfc3339(), "1900-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::MAX.to_rfc3339(), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(Timestamp::parse("yesterday"), Err(TimestampError::Unparseable { .. })));
        assert!(matches!(Timestamp::parse(""), Err(TimestampError::Unparseable { .. })));
    }

    #[test]
    fn serde_round_trip() {
        let t = Timestamp::from_micros(1_700_000_000_123_456).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123456Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }
}
