//! What a cold read of each file costs in GETs, worked out from the segments' layout.
//!
//! [`ShardStore`](crate::shards::ShardStore)'s read path is deterministic, so the cost of
//! a cold read (nothing cached) follows from where the file lies. It probes the address's
//! generations in order:
//! - each generation up to the file's own costs one suffix GET (the generation 0 suffix,
//!   or the longer suffix of a later one), plus one more when its footer and index do not
//!   fit in that suffix; a missing generation 0 costs the GET that found it missing;
//! - in the file's own generation, the record costs one more range GET unless it lies
//!   inside the bytes that suffix fetched.
//!
//! The counts are GETs the server answers, for segments no repack has replaced, with the
//! configured suffixes before the store learns a longer one (it does after an index that
//! did not fit). `vera stats` reports them for a store, and the load test checks every
//! sampled cold read against them.

/// One segment's shape, as far as a cold read's GET count depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentShape {
    pub object_len: u64,
    /// Footer plus index region: what the suffix must hold for the index to open.
    pub index_and_footer_len: u64,
    /// The offset each file's record starts at.
    pub record_starts: Vec<u64>,
}

impl SegmentShape {
    /// The shape of an opened segment.
    pub fn of(index: &vera_protocol::shard::SegmentIndex) -> Self {
        SegmentShape {
            object_len: index.object_len(),
            index_and_footer_len: index.footer().index_region_len + vera_protocol::shard::FOOTER_LEN as u64,
            record_starts: index.files().map(|file| file.record_range().start).collect(),
        }
    }
}

/// An address's segments by generation, cut to what a probe reaches: generation 0 if it
/// is there (`None` if not: the probe goes on past it), then the unbroken run from
/// generation 1 (the probe stops at the first missing one, so segments past a gap are
/// never read).
pub fn probed_run<T>(mut by_generation: std::collections::BTreeMap<u32, T>) -> Vec<Option<T>> {
    let zero = by_generation.remove(&0);
    std::iter::once(zero)
        .chain(
            by_generation
                .into_iter()
                .zip(1u32..)
                .take_while(|((generation, _), expected)| generation == expected)
                .map(|((_, segment), _)| Some(segment)),
        )
        .collect()
}

/// GETs a cold read of each file costs, for one address's generations in order as
/// [`probed_run`] gives them: one list per generation, in `record_starts` order (empty
/// for a missing generation 0, which costs the GET that finds it missing).
pub fn cold_read_gets(generations: &[Option<SegmentShape>], suffix: u64, later_suffix: u64) -> Vec<Vec<u64>> {
    let mut probes = 0u64;
    generations
        .iter()
        .enumerate()
        .map(|(generation, segment)| {
            let Some(segment) = segment else {
                probes += 1;
                return Vec::new();
            };
            let suffix = if generation == 0 { suffix } else { later_suffix.max(suffix) };
            let index_fits = segment.index_and_footer_len <= suffix;
            probes += if index_fits { 1 } else { 2 };
            // The bytes that read fetched start here: the suffix, or (when the index did
            // not fit) the index region, which no record lies in.
            let fetched_from = if index_fits { segment.object_len.saturating_sub(suffix) } else { u64::MAX };
            segment.record_starts.iter().map(|start| probes + u64::from(*start < fetched_from)).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn segment(object_len: u64, index_and_footer_len: u64, record_starts: &[u64]) -> SegmentShape {
        SegmentShape { object_len, index_and_footer_len, record_starts: record_starts.to_vec() }
    }

    #[test]
    fn each_generation_probed_costs_a_get_and_a_record_outside_the_suffix_one_more() {
        let generations = [
            // 10 MiB, index in the last 100 KiB: the first record lies outside the 256 KiB
            // suffix, the second inside it.
            Some(segment(10_240 * KIB, 100 * KIB, &[0, 10_240 * KIB - 200 * KIB])),
            // A small later generation, wholly inside the 1 MiB later suffix.
            Some(segment(600 * KIB, 2 * KIB, &[0])),
            // A later generation of 2 MiB: its first record lies outside the suffix.
            Some(segment(2048 * KIB, 4 * KIB, &[0, 1536 * KIB])),
        ];
        assert_eq!(cold_read_gets(&generations, 256 * KIB, 1024 * KIB), vec![vec![2, 1], vec![2], vec![4, 3]]);
        // With the 256 KiB suffix for every generation, generation 1's record lies outside
        // its suffix too.
        assert_eq!(cold_read_gets(&generations, 256 * KIB, 256 * KIB)[1], vec![3]);
    }

    #[test]
    fn an_index_larger_than_the_suffix_costs_one_more_get_and_its_records_another() {
        // 400 KiB of index: the suffix read, then the index region, then the record (even
        // one that lay inside the first suffix: the store keeps the region's bytes).
        let generations =
            [Some(segment(8192 * KIB, 400 * KIB, &[0, 8192 * KIB - 500 * KIB])), Some(segment(64 * KIB, KIB, &[0]))];
        // Generation 0's two index GETs come before generation 1's suffix.
        assert_eq!(cold_read_gets(&generations, 256 * KIB, 1024 * KIB), vec![vec![3, 3], vec![3]]);
    }

    #[test]
    fn a_probe_reaches_the_generations_before_the_first_gap_after_generation_0() {
        let by_generation = std::collections::BTreeMap::from([(0, 'a'), (1, 'b'), (3, 'd')]);
        assert_eq!(probed_run(by_generation), vec![Some('a'), Some('b')]);
        // Late arrivals written before their slice's own rows: the probe goes past the
        // missing generation 0.
        let late_first = std::collections::BTreeMap::from([(1, 'b'), (2, 'c'), (4, 'e')]);
        assert_eq!(probed_run(late_first), vec![None, Some('b'), Some('c')]);
        assert_eq!(probed_run(std::collections::BTreeMap::<u32, char>::new()), vec![None]);
    }

    #[test]
    fn a_missing_generation_0_costs_the_get_that_finds_it_missing() {
        let generations = [None, Some(segment(600 * KIB, 2 * KIB, &[0, 300 * KIB]))];
        assert_eq!(cold_read_gets(&generations, 256 * KIB, 1024 * KIB), vec![vec![], vec![2, 2]]);
    }

    #[test]
    fn no_generations_no_costs() {
        assert!(cold_read_gets(&[], 256 * KIB, 1024 * KIB).is_empty());
        assert_eq!(cold_read_gets(&[None], 256 * KIB, 1024 * KIB), vec![Vec::<u64>::new()]);
    }
}
