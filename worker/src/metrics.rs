//! The worker's metrics, in one place. Names follow `vera_<name>_<unit>`, counters end
//! in `_total`, labels are bounded (topic names, a fixed set of states and outcomes).
//!
//! `vera_queue_depth` is what a deployment autoscales workers on (KEDA, HPA external
//! metrics): visible messages are work waiting, in-flight ones are work in hand.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vera_bus::Bus;

pub const QUEUE_DEPTH: &str = "vera_queue_depth";
pub const TASKS: &str = "vera_tasks_total";
pub const FILES_PACKED: &str = "vera_files_packed_total";
pub const ROWS_REJECTED: &str = "vera_rows_rejected_total";
pub const SEGMENTS_WRITTEN: &str = "vera_segments_written_total";
pub const BYTES_IN: &str = "vera_bytes_in_total";
pub const BYTES_STORED: &str = "vera_bytes_stored_total";
pub const TASK_AGE: &str = "vera_task_age_seconds";
pub const INGEST_AGE: &str = "vera_ingest_age_seconds";
/// Buckets of [`TASK_AGE`], up to the "pack lag > 30 min" alert and past it.
pub const TASK_AGE_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// Registers descriptions with whatever recorder is installed.
pub fn describe() {
    metrics::describe_gauge!(QUEUE_DEPTH, "Messages on a bus topic, by state (visible, in_flight, dead)");
    metrics::describe_counter!(TASKS, "Pack tasks handled, by outcome (packed, retried, dead_lettered)");
    metrics::describe_counter!(FILES_PACKED, "Files written into new segments");
    metrics::describe_counter!(ROWS_REJECTED, "Source rows rejected and reported");
    metrics::describe_counter!(SEGMENTS_WRITTEN, "Segments written to the store");
    metrics::describe_counter!(BYTES_IN, "Raw bytes of the files packed");
    metrics::describe_counter!(BYTES_STORED, "Bytes of the segments written");
    metrics::describe_histogram!(
        TASK_AGE,
        metrics::Unit::Seconds,
        "Age of a pack task when its segments were durable and it was acked, from the producer's send time"
    );
    metrics::describe_histogram!(
        INGEST_AGE,
        metrics::Unit::Seconds,
        "Age of an ingest event when its files were durable and it was acked, from its publisher's send time"
    );
}

/// An ingest event acked (its files durable) `seconds` after its publisher sent it.
pub fn ingest_age(seconds: f64) {
    metrics::histogram!(INGEST_AGE).record(seconds);
}

/// A task packed and acked `seconds` after the producer sent it.
pub fn task_age(seconds: f64) {
    metrics::histogram!(TASK_AGE).record(seconds);
}

pub fn task(outcome: &'static str) {
    metrics::counter!(TASKS, "outcome" => outcome).increment(1);
}

pub fn packed(files: u64, rejected: u64, segments: u64, bytes_in: u64, bytes_stored: u64) {
    metrics::counter!(FILES_PACKED).increment(files);
    metrics::counter!(ROWS_REJECTED).increment(rejected);
    metrics::counter!(SEGMENTS_WRITTEN).increment(segments);
    metrics::counter!(BYTES_IN).increment(bytes_in);
    metrics::counter!(BYTES_STORED).increment(bytes_stored);
}

/// Samples the depth of each topic once.
pub async fn sample_queue_depth(bus: &dyn Bus, topics: &[&'static str]) {
    for &topic in topics {
        match bus.depth(topic).await {
            Ok(depth) => {
                metrics::gauge!(QUEUE_DEPTH, "topic" => topic, "state" => "visible").set(depth.visible as f64);
                metrics::gauge!(QUEUE_DEPTH, "topic" => topic, "state" => "in_flight").set(depth.in_flight as f64);
                metrics::gauge!(QUEUE_DEPTH, "topic" => topic, "state" => "dead").set(depth.dead as f64);
            }
            Err(error) => tracing::warn!(topic, error = %error, "could not read queue depth"),
        }
    }
}

/// Samples queue depth every `every` until shutdown.
pub async fn report_queue_depth(
    bus: Arc<dyn Bus>,
    topics: Vec<&'static str>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        sample_queue_depth(bus.as_ref(), &topics).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
