//! `vera plan`: a routing table proposed from the source's `created_at` histogram.
//!
//! Files per PUT is about a time bucket's files divided by its addresses, so the table
//! decides how large segments get. For each calendar year of the source the planner
//! picks:
//!
//! 1. the finest granularity (hour, day, month) whose median non-empty bucket holds at
//!    least `min_files_per_segment` files. If none does, the year is sparse and gets month
//!    buckets, the coarsest there is;
//! 2. the most hash bits that keep the median bucket's addresses at that many files,
//!    raised if needed so that the largest bucket's addresses stay under
//!    `max_segment_bytes`.
//!
//! Adjacent years with the same choice form one epoch. The first epoch starts at
//! `Timestamp::MIN`, as every table's must.
//!
//! The expected count of segments assumes each bucket's files spread evenly over its
//! addresses, one segment per non-empty address. That is the bulk case, where slots end
//! on bucket boundaries. Late arrivals add later generations; the planner cannot know
//! them.

use std::collections::BTreeMap;

use serde::Serialize;
use vera_protocol::Timestamp;
use vera_protocol::routing::{EpochEntry, RoutingEpoch, RoutingTable, TimeGranularity};

#[derive(Debug, Clone)]
pub struct PlanTargets {
    /// A segment should hold at least this many files.
    pub min_files_per_segment: u64,
    /// And at most this many bytes.
    pub max_segment_bytes: u64,
    /// Hash bits at most, per epoch.
    pub max_n_bits: u8,
    /// The suffix a cold read fetches: a segment's footer, index and dictionary should
    /// fit in it, or its first cold read costs one GET more.
    pub cold_read_suffix_bytes: u64,
}

impl Default for PlanTargets {
    fn default() -> Self {
        PlanTargets {
            min_files_per_segment: 1000,
            max_segment_bytes: 256 << 20,
            max_n_bits: 12,
            cold_read_suffix_bytes: vera_store::shards::DEFAULT_SUFFIX_BYTES,
        }
    }
}

/// Index bytes per file, measured on the demo corpus (`vera stats`: 60.3), rounded up.
const INDEX_BYTES_PER_FILE: u64 = 64;
/// The footer, the content-type table and a segment's zstd dictionary at the default
/// policy's largest (16 KiB), with room to spare.
const INDEX_OVERHEAD_BYTES: u64 = 20 * 1024;

/// True when a segment of `files` files has an index region that fits `suffix` bytes.
fn index_fits(files: u64, suffix: u64) -> bool {
    files.saturating_mul(INDEX_BYTES_PER_FILE).saturating_add(INDEX_OVERHEAD_BYTES) <= suffix
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the source has no row with a readable created_at: there is nothing to plan for")]
    Empty,
    #[error("the planned table is invalid: {0}")]
    Invalid(String),
}

/// Files and bytes per hour of `created_at`.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    hours: BTreeMap<i32, (u64, u64)>,
    /// Rows whose `created_at` could not be read (they are rejected when packed).
    pub undated: u64,
}

impl Histogram {
    pub fn add(&mut self, created_at: Option<Timestamp>, bytes: u64) {
        let Some(at) = created_at else {
            self.undated += 1;
            return;
        };
        let entry = self.hours.entry(TimeGranularity::Hour.bucket_of(at)).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }

    pub fn files(&self) -> u64 {
        self.hours.values().map(|(files, _)| files).sum()
    }
}

/// One epoch of a plan, with what it is expected to produce.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochPlan {
    pub effective_from: Timestamp,
    pub granularity: TimeGranularity,
    pub n_bits: u8,
    pub files: u64,
    pub bytes: u64,
    /// Time buckets holding files.
    pub buckets: u64,
    pub expected_segments: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub table: RoutingTable,
    pub epochs: Vec<EpochPlan>,
    pub files: u64,
    pub undated: u64,
    pub expected_segments: u64,
    pub files_per_segment: f64,
    /// One PUT per segment (the bulk case; late arrivals add their own).
    pub expected_puts: u64,
}

const HOUR_MICROS: i64 = 3_600_000_000;

/// An hour bucket and its files and bytes.
type HourCounts = (i32, (u64, u64));

/// Consecutive years that got the same granularity and bits: one epoch.
struct EpochGroup {
    first_year: i32,
    granularity: TimeGranularity,
    n_bits: u8,
    hours: Vec<HourCounts>,
}

fn hour_start(hour: i32) -> Timestamp {
    Timestamp::from_micros(i64::from(hour) * HOUR_MICROS).unwrap_or(Timestamp::MIN)
}

fn year_of(hour: i32) -> i32 {
    hour_start(hour).to_datetime().year()
}

/// Files and bytes per bucket of `granularity`, from hours.
fn rebucket(hours: &[HourCounts], granularity: TimeGranularity) -> Vec<(u64, u64)> {
    let mut buckets: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for (hour, (files, bytes)) in hours {
        let entry = buckets.entry(granularity.bucket_of(hour_start(*hour))).or_default();
        entry.0 += files;
        entry.1 += bytes;
    }
    buckets.into_values().collect()
}

fn median_files(buckets: &[(u64, u64)]) -> u64 {
    let mut files: Vec<u64> = buckets.iter().map(|(files, _)| *files).collect();
    files.sort_unstable();
    files.get(files.len() / 2).copied().unwrap_or(0)
}

/// Non-empty addresses expected when `files` spread evenly over `2^n_bits` of them.
fn expected_segments(files: u64, n_bits: u8) -> u64 {
    let addresses = f64::from(1u32 << n_bits);
    let empty_share = (1.0 - 1.0 / addresses).powf(files as f64);
    (addresses * (1.0 - empty_share)).round().max(1.0) as u64
}

/// The granularity and hash bits for one year's hours.
fn choose(hours: &[HourCounts], targets: &PlanTargets) -> (TimeGranularity, u8) {
    let granularity = [TimeGranularity::Hour, TimeGranularity::Day, TimeGranularity::Month, TimeGranularity::Year]
        .into_iter()
        .find(|granularity| median_files(&rebucket(hours, *granularity)) >= targets.min_files_per_segment)
        .unwrap_or(TimeGranularity::Year);
    let buckets = rebucket(hours, granularity);
    let largest_bytes = buckets.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
    let largest_files = buckets.iter().map(|(files, _)| *files).max().unwrap_or(0);
    // As few addresses as the limits allow: every hash bit doubles the objects, and the
    // late rows of each address make one more (ADR 0005). The granularity above already
    // gives the median bucket at least the target file count.
    let mut n_bits = 0u8;
    while n_bits < targets.max_n_bits && largest_bytes >> n_bits > targets.max_segment_bytes {
        n_bits += 1;
    }
    // Even the largest bucket's segments keep their index in a cold read's suffix.
    while n_bits < targets.max_n_bits && !index_fits(largest_files >> n_bits, targets.cold_read_suffix_bytes) {
        n_bits += 1;
    }
    (granularity, n_bits)
}

pub fn propose(histogram: &Histogram, targets: &PlanTargets) -> Result<Plan, PlanError> {
    let hours: Vec<HourCounts> = histogram.hours.iter().map(|(hour, counts)| (*hour, *counts)).collect();
    if hours.is_empty() {
        return Err(PlanError::Empty);
    }
    // One choice per calendar year; adjacent years that agree share an epoch.
    let mut years: Vec<(i32, Vec<HourCounts>)> = Vec::new();
    for hour in hours {
        let year = year_of(hour.0);
        match years.last_mut() {
            Some((last, hours)) if *last == year => hours.push(hour),
            _ => years.push((year, vec![hour])),
        }
    }
    let mut groups: Vec<EpochGroup> = Vec::new();
    for (year, hours) in years {
        let (granularity, n_bits) = choose(&hours, targets);
        match groups.last_mut() {
            Some(group) if group.granularity == granularity && group.n_bits == n_bits => group.hours.extend(hours),
            _ => groups.push(EpochGroup { first_year: year, granularity, n_bits, hours }),
        }
    }
    let mut table = RoutingTable { epochs: Vec::new() };
    let mut plans = Vec::new();
    for (index, EpochGroup { first_year, granularity, n_bits, hours }) in groups.into_iter().enumerate() {
        let effective_from = if index == 0 {
            Timestamp::MIN
        } else {
            Timestamp::parse(&format!("{first_year:04}-01-01T00:00:00Z"))
                .map_err(|e| PlanError::Invalid(e.to_string()))?
        };
        let id = u16::try_from(index + 1).map_err(|_| PlanError::Invalid("too many epochs".into()))?;
        let epoch = RoutingEpoch::new(id, granularity, n_bits).map_err(|e| PlanError::Invalid(e.to_string()))?;
        table.epochs.push(EpochEntry { effective_from, epoch });
        let buckets = rebucket(&hours, granularity);
        plans.push(EpochPlan {
            effective_from,
            granularity,
            n_bits,
            files: buckets.iter().map(|(files, _)| files).sum(),
            bytes: buckets.iter().map(|(_, bytes)| bytes).sum(),
            buckets: buckets.len() as u64,
            expected_segments: buckets.iter().map(|(files, _)| expected_segments(*files, n_bits)).sum(),
        });
    }
    table.validate().map_err(|e| PlanError::Invalid(e.to_string()))?;
    let files = histogram.files();
    let segments: u64 = plans.iter().map(|plan| plan.expected_segments).sum();
    Ok(Plan {
        table,
        epochs: plans,
        files,
        undated: histogram.undated,
        expected_segments: segments,
        files_per_segment: files as f64 / segments.max(1) as f64,
        expected_puts: segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// `per_day` files of `bytes` each on every day from `from` for `days` days.
    fn fill(histogram: &mut Histogram, from: &str, days: i64, per_day: u64, bytes: u64) {
        let start = at(from).as_micros();
        for day in 0..days {
            for n in 0..per_day {
                let micros = start + day * 86_400_000_000 + (n as i64 * 86_400_000_000) / per_day as i64;
                histogram.add(Some(Timestamp::from_micros(micros).unwrap()), bytes);
            }
        }
    }

    #[test]
    fn a_dense_week_gets_daily_buckets_and_segments_of_at_least_the_target() {
        let mut histogram = Histogram::default();
        fill(&mut histogram, "2026-11-24T00:00:00Z", 7, 14_000, 16_000);
        let plan = propose(&histogram, &PlanTargets::default()).unwrap();
        assert_eq!(plan.table.epochs.len(), 1);
        let epoch = &plan.epochs[0];
        assert_eq!(epoch.granularity, TimeGranularity::Day, "{plan:?}");
        // As few addresses as the index allows: 3,500 files' index fits a 256 KiB suffix,
        // 7,000 do not.
        assert_eq!(epoch.n_bits, 2, "14,000 a day over 4 addresses is 3,500 a segment");
        assert_eq!(plan.expected_segments, 7 * 4);
        assert!(plan.files_per_segment >= 1000.0);
    }

    #[test]
    fn large_files_raise_the_bits_to_keep_segments_under_the_byte_limit() {
        let mut histogram = Histogram::default();
        fill(&mut histogram, "2026-11-24T00:00:00Z", 2, 2_000, 1 << 20);
        let plan = propose(&histogram, &PlanTargets::default()).unwrap();
        // 2,000 files of 1 MiB a day: 2 GiB, so 8 addresses or more for 256 MiB.
        assert!(plan.epochs[0].n_bits >= 3, "{plan:?}");
    }

    #[test]
    fn a_sparse_backfill_gets_year_buckets_and_a_dense_year_its_own_epoch() {
        let mut histogram = Histogram::default();
        fill(&mut histogram, "2016-01-01T00:00:00Z", 365 * 3, 3, 20_000);
        fill(&mut histogram, "2019-01-01T00:00:00Z", 365, 5_000, 20_000);
        let plan = propose(&histogram, &PlanTargets::default()).unwrap();
        assert_eq!(plan.epochs.len(), 2, "{plan:?}");
        // About 90 files a month, 1,095 a year: a month holds too few for a segment.
        assert_eq!(plan.epochs[0].granularity, TimeGranularity::Year);
        assert_eq!(plan.epochs[0].n_bits, 0, "one segment a year");
        assert_eq!(plan.epochs[1].effective_from, at("2019-01-01T00:00:00Z"));
        assert_eq!(plan.epochs[1].granularity, TimeGranularity::Day);
        assert_eq!(plan.table.locate("u", at("2017-06-01T00:00:00Z")).unwrap().epoch, 1);
        assert_eq!(plan.table.locate("u", at("2019-06-01T00:00:00Z")).unwrap().epoch, 2);
    }

    #[test]
    fn a_busy_day_gets_the_bits_that_keep_its_index_in_a_cold_reads_suffix() {
        let mut histogram = Histogram::default();
        fill(&mut histogram, "2026-11-01T00:00:00Z", 20, 1_500, 2_000);
        fill(&mut histogram, "2026-11-21T00:00:00Z", 1, 20_000, 2_000);
        let plan = propose(&histogram, &PlanTargets::default()).unwrap();
        // 1,500 files on most days: no bits by count; the 20,000-file day needs 2^3
        // addresses of 2,500 files for 160 KB of index beside a dictionary in 256 KiB.
        assert_eq!(plan.epochs[0].granularity, TimeGranularity::Day);
        assert_eq!(plan.epochs[0].n_bits, 3, "{plan:?}");
        assert!(index_fits(20_000 >> 3, 256 * 1024) && !index_fits(20_000 >> 2, 256 * 1024));
    }

    #[test]
    fn an_empty_source_is_a_clear_error() {
        let mut histogram = Histogram::default();
        histogram.add(None, 10);
        assert_eq!(propose(&histogram, &PlanTargets::default()), Err(PlanError::Empty));
    }
}
