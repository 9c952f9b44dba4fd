//! What a cold read of every stored file costs in S3 GETs, worked out from the segments'
//! layout instead of sampled.
//!
//! A random sample of 1,000 cold reads rarely lands on the few files of a third generation
//! (late arrivals that crossed two slots), so "0 of 1,000 reads over 2 GETs" can hide
//! files that take 3. The reader's read path is deterministic, so the cost of every file
//! follows from where it lies. A cold read probes the address's generations in order:
//! - each generation up to the file's own costs one suffix GET (generation 0's suffix,
//!   or the longer suffix of a later one), plus one more when its footer and index do not
//!   fit in that suffix;
//! - in the file's own generation, the record costs one more range GET unless it lies
//!   inside the bytes that suffix fetched.
//!
//! The counts are GETs the server answers, with the reader's configured suffixes before it
//! learns a longer one (`ShardStore` does after an index that did not fit). The load test
//! checks each sampled cold read against this count.

use std::collections::{BTreeMap, HashMap};

/// One segment's shape, as far as a cold read's GET count depends on it.
#[derive(Debug, Clone)]
pub struct SegmentShape {
    pub object_len: u64,
    /// Footer plus index region: what the suffix must hold for the index to open.
    pub index_and_footer_len: u64,
    /// Each file's uid and the offset its record starts at.
    pub records: Vec<(String, u64)>,
}

/// GETs a cold read of each file costs, for one address's segments in generation order.
pub fn cold_gets(generations: &[SegmentShape], suffix: u64, later_suffix: u64) -> Vec<(String, u64)> {
    let mut costs = Vec::new();
    let mut probes = 0u64;
    for (generation, segment) in generations.iter().enumerate() {
        let suffix = if generation == 0 { suffix } else { later_suffix.max(suffix) };
        let index_fits = segment.index_and_footer_len <= suffix;
        probes += if index_fits { 1 } else { 2 };
        // The bytes that read fetched start here: the suffix, or (when the index did not
        // fit) the index region, which no record lies in.
        let fetched_from = if index_fits { segment.object_len.saturating_sub(suffix) } else { u64::MAX };
        for (uid, start) in &segment.records {
            costs.push((uid.clone(), probes + u64::from(*start < fetched_from)));
        }
    }
    costs
}

/// Every stored file's cold-read cost, and how many files cost each number of GETs.
#[derive(Debug, Clone, Default)]
pub struct ColdCosts {
    pub by_uid: HashMap<String, u64>,
    pub files_by_gets: BTreeMap<u64, u64>,
}

impl ColdCosts {
    /// From every address's segments, each list in generation order.
    pub fn of<'a>(addresses: impl IntoIterator<Item = &'a [SegmentShape]>, suffix: u64, later_suffix: u64) -> Self {
        let mut costs = ColdCosts::default();
        for generations in addresses {
            for (uid, gets) in cold_gets(generations, suffix, later_suffix) {
                *costs.files_by_gets.entry(gets).or_default() += 1;
                costs.by_uid.insert(uid, gets);
            }
        }
        costs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn segment(object_len: u64, index_and_footer_len: u64, records: &[(&str, u64)]) -> SegmentShape {
        SegmentShape {
            object_len,
            index_and_footer_len,
            records: records.iter().map(|(uid, start)| ((*uid).to_owned(), *start)).collect(),
        }
    }

    #[test]
    fn each_generation_probed_costs_a_get_and_a_record_outside_the_suffix_one_more() {
        let generations = [
            // 10 MiB, index in the last 100 KiB: "far" lies outside the 256 KiB suffix,
            // "near" inside it.
            segment(10_240 * KIB, 100 * KIB, &[("far", 0), ("near", 10_240 * KIB - 200 * KIB)]),
            // A small later generation, wholly inside the 1 MiB later suffix.
            segment(600 * KIB, 2 * KIB, &[("late", 0)]),
            // A later generation of 2 MiB: its first record lies outside the suffix.
            segment(2048 * KIB, 4 * KIB, &[("later-far", 0), ("later-near", 1536 * KIB)]),
        ];
        let costs: HashMap<String, u64> = cold_gets(&generations, 256 * KIB, 1024 * KIB).into_iter().collect();
        assert_eq!(costs["far"], 2);
        assert_eq!(costs["near"], 1);
        assert_eq!(costs["late"], 2);
        assert_eq!(costs["later-far"], 4);
        assert_eq!(costs["later-near"], 3);
        // With the 256 KiB suffix for every generation, "late" lies outside its suffix too.
        let short: HashMap<String, u64> = cold_gets(&generations, 256 * KIB, 256 * KIB).into_iter().collect();
        assert_eq!(short["late"], 3);
    }

    #[test]
    fn an_index_larger_than_the_suffix_costs_one_more_get_and_its_records_another() {
        // 400 KiB of index: the suffix read, then the index region, then the record (even
        // one that lay inside the first suffix: the reader keeps the region's bytes).
        let generations = [
            segment(8192 * KIB, 400 * KIB, &[("a", 0), ("b", 8192 * KIB - 500 * KIB)]),
            segment(64 * KIB, KIB, &[("c", 0)]),
        ];
        let costs: HashMap<String, u64> = cold_gets(&generations, 256 * KIB, 1024 * KIB).into_iter().collect();
        assert_eq!((costs["a"], costs["b"]), (3, 3));
        // Generation 0's two index GETs come before generation 1's suffix.
        assert_eq!(costs["c"], 3);
    }

    #[test]
    fn files_are_counted_by_cost_across_addresses() {
        let first = [segment(100 * KIB, KIB, &[("a", 0), ("b", 50 * KIB)]), segment(10 * KIB, KIB, &[("c", 0)])];
        let second = [segment(100 * KIB, KIB, &[("d", 0)])];
        let costs = ColdCosts::of([&first[..], &second[..]], 256 * KIB, 1024 * KIB);
        assert_eq!(costs.files_by_gets, BTreeMap::from([(1, 3), (2, 1)]));
        assert_eq!(costs.by_uid["c"], 2);
        assert_eq!(costs.by_uid.len(), 4);
    }
}
