//! The `.vera` segment container: `[HEADER][DATA][INDEX REGION][FOOTER]`.
//!
//! * [`writer`] builds a segment from files given in any order, spilling payloads so its
//!   memory is bounded by the index, and emits byte-identical output for the same inputs.
//! * [`reader`] opens a segment from a suffix of the object (footer + index region), finds
//!   files by binary search on uid and decodes them with a hash check on every read.
//! * [`layout`] holds the fixed-size structures shared by both and mirrors FORMAT.md.

pub mod layout;
pub mod reader;
pub mod writer;

pub use layout::{FOOTER_LEN, FORMAT_VERSION, Footer, HEADER_LEN, Header, INDEX_ENTRY_LEN, IndexEntry, TRAILER_LEN};
pub use reader::{ReadError, ReadLimits, SegmentIndex, SuffixOpen, VerifyReport, verify_segment};
pub use writer::{FileInput, PreparedFile, SealedSegment, SegmentSettings, SegmentWriter, WriteError};
