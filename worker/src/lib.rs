//! The pack worker.
//!
//! * [`rows`] — turns raw source rows into files or typed rejections.
//! * [`pack`] — packs one `PackTask`: route, compress, build segments, write them
//!   create-if-absent, skipping files an earlier attempt already stored.
//! * [`run`] — the claim loop: heartbeat, events, ack, retry and dead-letter.
//! * [`settings`] — what the worker is told (serde, rejecting unknown fields).
//! * [`ingest`] — the ingest worker: files pushed by upstream systems on the `ingest`
//!   topic, held per address and sealed by the same rules.
//!
//! Workers are stateless: everything they know comes from the task, the source and the
//! store, so any number of them (threads or processes) can share a bus, and a task can
//! be delivered twice or to two workers at once.

pub mod ingest;
pub mod metrics;
pub mod pack;
pub mod rows;
pub mod run;
pub mod settings;

pub use pack::{PackError, PackReport, SealedInfo, pack_task};
pub use run::{WorkerStats, run_worker};
pub use settings::{RetentionPolicy, WorkerSettings};
