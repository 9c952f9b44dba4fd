//! The pure core of VERA: everything two machines must agree on byte for byte.
//!
//! * [`routing`] — `locate_shard`, the pure function that replaces a location database.
//! * [`shard`] — the `.vera` container: a streaming deterministic writer and a reader that
//!   works from one suffix read.
//! * [`sidecar`] — the `.vera.meta` sidecar: tombstones, per-file retention, legal holds.
//! * [`compress`] — the per-file compression policy and per-shard zstd dictionaries.
//! * [`message`] — bus messages in a versioned JSON envelope.
//! * [`merkle`] — the RFC 9162-style Merkle tree over file hashes.
//!
//! This crate does no I/O beyond `std::io::{Read, Write, Seek}` on what the caller hands
//! it: no async runtime, no network, no cloud SDK. `FORMAT.md` at the repository root is
//! the normative byte-level specification; the code and the spec are tested against each
//! other.

#![forbid(unsafe_code)]

pub mod compress;
pub mod hex;
pub mod ids;
pub mod ingest;
pub mod merkle;
pub mod message;
pub mod routing;
pub mod shard;
pub mod sidecar;
pub mod timestamp;

pub use routing::{RoutingEpoch, RoutingError, ShardAddr, TimeGranularity, locate_shard};
pub use timestamp::Timestamp;
