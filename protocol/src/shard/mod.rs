//! The `.vera` segment container: `[HEADER][DATA][INDEX REGION][FOOTER]`.
//!
//! * [`writer`] builds a segment from files given in any order, spilling payloads so its
//!   memory is bounded by the index, and emits byte-identical output for the same inputs.
//! * [`reader`] opens a segment from a suffix of the object (footer + index region), finds
//!   files by binary search and decodes them with a hash check on every read; its
//!   [`reader::LookupIndex`] is the 12-bytes-per-file form a reader service caches.
//! * [`layout`] holds the fixed-size structures shared by both and mirrors FORMAT.md.

pub mod layout;
pub mod reader;
pub mod writer;

pub use layout::{
    FOOTER_LEN, FORMAT_VERSION, Footer, HEADER_LEN, Header, INDEX_ENTRY_LEN, IndexEntry, MIN_FORMAT_VERSION,
    RecordHeader, TRAILER_LEN,
};
pub use reader::{
    LookedUp, LookupIndex, ReadError, ReadLimits, SegmentIndex, SuffixOpen, VerifyReport, verify_segment,
};
pub use writer::{FileInput, PreparedFile, SealedSegment, SegmentSettings, SegmentWriter, WriteError};
