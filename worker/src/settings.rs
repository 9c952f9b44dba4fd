//! Worker settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vera_protocol::Timestamp;
use vera_protocol::compress::CompressionPolicy;
use vera_protocol::routing::ShardAddr;
use vera_store::{LockMode, Retention};

/// Object Lock retention for sealed segments: `retain_days` past the end of the
/// segment's time bucket, so retention runs from when the records were created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub mode: LockMode,
    pub retain_days: u32,
}

impl RetentionPolicy {
    /// A staging segment's lock: `days` from `now`, never past the final retention.
    pub fn staging_retention(&self, addr: &ShardAddr, now: Timestamp, days: u32) -> Retention {
        let full = self.retention_for(addr);
        let micros = now.as_micros().saturating_add(i64::from(days) * 86_400_000_000);
        let until = Timestamp::from_micros(micros).unwrap_or(Timestamp::MAX);
        Retention { mode: self.mode, retain_until: until.min(full.retain_until) }
    }

    pub fn retention_for(&self, addr: &ShardAddr) -> Retention {
        let (_, bucket_end) = addr.time_range();
        let micros = bucket_end.as_micros().saturating_add(i64::from(self.retain_days) * 86_400_000_000);
        Retention { mode: self.mode, retain_until: Timestamp::from_micros(micros).unwrap_or(Timestamp::MAX) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// How long a claimed task stays invisible; the worker extends it while working.
    pub visibility_timeout_seconds: u64,
    /// Files over this size are rejected.
    pub max_file_bytes: u64,
    pub compression: CompressionPolicy,
    /// `None` writes segments without Object Lock (tests and throwaway demos only).
    pub retention: Option<RetentionPolicy>,
    /// Where segment spill files go once a segment outgrows `spill_memory_bytes`; the
    /// system temp dir if unset.
    pub spill_dir: Option<PathBuf>,
    /// Payload bytes a segment keeps in memory before spilling to a temp file.
    pub spill_memory_bytes: usize,
    /// Segments written to the store at once.
    pub put_concurrency: usize,
    /// Rows hashed and compressed per batch on the CPU pool.
    pub batch_rows: usize,
    /// Delay before a failed task is retried.
    pub retry_delay_seconds: u64,
    /// When a task's files at one address are too few for a final generation.
    pub staging: StagingSettings,
}

/// Small writes go to staging segments that `vera compact` merges (ADR 0005).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingSettings {
    /// A task's files at one address become a final generation at once from this many
    /// on; fewer go to a staging segment. 0 turns staging off (every write is final).
    pub direct_min_files: u64,
    /// ... or from this many record bytes on.
    pub direct_min_bytes: u64,
    /// Object Lock on a staging segment, from its write (capped at the final retention);
    /// the compactor extends it while the segment is not merged yet.
    pub retention_days: u32,
}

impl Default for StagingSettings {
    fn default() -> Self {
        StagingSettings { direct_min_files: 1000, direct_min_bytes: 64 * 1024 * 1024, retention_days: 7 }
    }
}

impl StagingSettings {
    /// True when a group of `files` files and `bytes` record bytes is written final.
    pub fn is_direct(&self, files: u64, bytes: u64) -> bool {
        self.direct_min_files == 0 || files >= self.direct_min_files || bytes >= self.direct_min_bytes
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            visibility_timeout_seconds: 300,
            max_file_bytes: 64 * 1024 * 1024,
            compression: CompressionPolicy::default(),
            retention: Some(RetentionPolicy { mode: LockMode::Compliance, retain_days: 7 * 365 }),
            spill_dir: None,
            spill_memory_bytes: 64 * 1024 * 1024,
            put_concurrency: 4,
            batch_rows: 2048,
            retry_delay_seconds: 5,
            staging: StagingSettings::default(),
        }
    }
}

impl WorkerSettings {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_seconds.max(1))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.compression.validate().map_err(|e| e.to_string())?;
        if self.max_file_bytes == 0 || self.max_file_bytes > u64::from(u32::MAX) {
            return Err(format!("max_file_bytes must be 1..=4294967295, got {}", self.max_file_bytes));
        }
        if self.put_concurrency == 0 || self.batch_rows == 0 {
            return Err("put_concurrency and batch_rows must be at least 1".into());
        }
        if self.staging.direct_min_files > 0 && self.staging.retention_days == 0 {
            return Err("staging.retention_days must be at least 1 while staging is on".into());
        }
        Ok(())
    }
}
