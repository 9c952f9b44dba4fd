//! Any bytes, read as a whole segment object: open from a suffix, look every file up,
//! decode it, and run a full verification. Nothing may panic or allocate without bound.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vera_protocol::shard::{verify_segment, ReadLimits, SegmentIndex, SuffixOpen};

fuzz_target!(|data: &[u8]| {
    let limits = ReadLimits { max_index_region_bytes: 1 << 20, max_index_raw_bytes: 1 << 22, max_file_bytes: 1 << 22 };
    let object_len = data.len() as u64;
    for suffix_len in [data.len().min(4096), data.len()] {
        let suffix = &data[data.len() - suffix_len..];
        if let Ok(SuffixOpen::Ready(index)) = SegmentIndex::open_suffix(suffix, object_len, &limits) {
            let uids: Vec<String> = index.files().map(|file| file.uid.to_owned()).collect();
            for uid in uids {
                let _ = index.read_file(&mut Cursor::new(data), &uid, &limits);
            }
        }
    }
    let _ = verify_segment(&mut Cursor::new(data), object_len, &limits);
});
