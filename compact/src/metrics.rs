//! The compactor's metrics. Names follow `vera_<name>_<unit>`; counters end in `_total`.
//!
//! `vera_compact_staging_oldest_seconds` is the one to alert on: a staging segment older
//! than its lock minus a day means the compactor has not run for that long, and the
//! files in it are protected only until the lock it was written with ends.

use crate::CompactReport;

pub const FILES_MERGED: &str = "vera_compact_files_merged_total";
pub const SEGMENTS_WRITTEN: &str = "vera_compact_segments_written_total";
pub const STAGING_DELETED: &str = "vera_compact_staging_deleted_total";
pub const STAGING_EXTENDED: &str = "vera_compact_staging_extended_total";
pub const STAGING_SEGMENTS: &str = "vera_compact_staging_segments";
pub const STAGING_OLDEST: &str = "vera_compact_staging_oldest_seconds";
pub const ADDRESSES_WAITING: &str = "vera_compact_addresses_waiting";

/// Registers descriptions with whatever recorder is installed.
pub fn describe() {
    metrics::describe_counter!(FILES_MERGED, "Staged files written into final generations");
    metrics::describe_counter!(SEGMENTS_WRITTEN, "Final generations written by compaction");
    metrics::describe_counter!(STAGING_DELETED, "Staging segments deleted once redundant and unlocked");
    metrics::describe_counter!(STAGING_EXTENDED, "Staging segments whose lock was extended while not merged");
    metrics::describe_gauge!(STAGING_SEGMENTS, "Staging segments left after the last pass");
    metrics::describe_gauge!(
        STAGING_OLDEST,
        metrics::Unit::Seconds,
        "Age of the oldest staging segment left after the last pass"
    );
    metrics::describe_gauge!(ADDRESSES_WAITING, "Addresses with staging segments not due for merging yet");
}

/// Records one pass.
pub fn pass(report: &CompactReport) {
    metrics::counter!(FILES_MERGED).increment(report.files_merged);
    metrics::counter!(SEGMENTS_WRITTEN).increment(report.segments_written.len() as u64);
    metrics::counter!(STAGING_DELETED).increment(report.staging_deleted);
    metrics::counter!(STAGING_EXTENDED).increment(report.staging_extended);
    metrics::gauge!(STAGING_SEGMENTS).set(report.staging_left as f64);
    metrics::gauge!(STAGING_OLDEST).set(report.oldest_staging_seconds.unwrap_or(0) as f64);
    metrics::gauge!(ADDRESSES_WAITING).set(report.addresses_waiting as f64);
}
