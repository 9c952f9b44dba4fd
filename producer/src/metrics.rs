//! The producer's metrics: where the source is, where the producer is, and how long the
//! oldest row it has seen but not yet planned has waited. With the workers'
//! `vera_task_age_seconds` they make the pack lag that the "pack lag > 30 min" alert
//! watches.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vera_protocol::message::ScanPosition;

pub const SOURCE_NEWEST_WATERMARK: &str = "vera_producer_source_newest_watermark";
pub const COMMITTED_WATERMARK: &str = "vera_producer_committed_watermark";
pub const UNPLANNED_AGE: &str = "vera_producer_unplanned_age_seconds";

pub fn describe() {
    metrics::describe_gauge!(SOURCE_NEWEST_WATERMARK, "Watermark of the last visible source row in scan order");
    metrics::describe_gauge!(COMMITTED_WATERMARK, "Watermark of the producer's committed position");
    metrics::describe_gauge!(
        UNPLANNED_AGE,
        metrics::Unit::Seconds,
        "How long ago the producer first saw a source row it has not yet published a task for; 0 when caught up"
    );
}

/// When the producer first saw each newest position: the first sighting past the
/// committed position dates the oldest row still waiting to be planned.
#[derive(Debug, Default)]
pub struct LagTracker {
    sightings: VecDeque<(ScanPosition, Instant)>,
}

impl LagTracker {
    /// Records the newest position seen now.
    pub fn saw(&mut self, newest: ScanPosition, now: Instant) {
        if self.sightings.back().is_none_or(|(last, _)| newest > *last) {
            self.sightings.push_back((newest, now));
        }
    }

    /// The age of the oldest unplanned row: since the first sighting past `committed`.
    pub fn unplanned_age(&mut self, committed: ScanPosition, now: Instant) -> Duration {
        while self.sightings.front().is_some_and(|(newest, _)| *newest <= committed) {
            self.sightings.pop_front();
        }
        self.sightings.front().map_or(Duration::ZERO, |(_, first_seen)| now.saturating_duration_since(*first_seen))
    }
}

pub fn positions(newest: Option<ScanPosition>, committed: ScanPosition, unplanned_age: Duration) {
    if let Some(newest) = newest {
        metrics::gauge!(SOURCE_NEWEST_WATERMARK).set(newest.watermark as f64);
    }
    metrics::gauge!(COMMITTED_WATERMARK).set(committed.watermark as f64);
    metrics::gauge!(UNPLANNED_AGE).set(unplanned_age.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_runs_from_the_first_sighting_past_the_committed_position() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut lag = LagTracker::default();
        lag.saw(ScanPosition::watermark(10), at(0));
        lag.saw(ScanPosition::watermark(10), at(5));
        lag.saw(ScanPosition::watermark(20), at(10));
        assert_eq!(lag.unplanned_age(ScanPosition::watermark(0), at(30)), Duration::from_secs(30));
        assert_eq!(lag.unplanned_age(ScanPosition::watermark(10), at(30)), Duration::from_secs(20));
        assert_eq!(lag.unplanned_age(ScanPosition::watermark(20), at(30)), Duration::ZERO, "caught up");
    }
}
