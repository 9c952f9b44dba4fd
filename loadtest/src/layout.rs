//! What a cold read of every stored file costs in S3 GETs, worked out from the segments'
//! layout (`vera_store::cold_cost`) instead of sampled.
//!
//! A random sample of 1,000 cold reads rarely lands on the few files of a third generation
//! (late arrivals that crossed two slots), so "0 of 1,000 reads over 2 GETs" can hide
//! files that take 3. The load test works out every file's cost and checks each sampled
//! cold read against it.

use std::collections::{BTreeMap, HashMap};

use vera_store::cold_cost::{SegmentShape, cold_read_gets};

/// One address's segments in generation order as a probe reaches them (`None` for a
/// missing generation 0), with the uids of each in the order of its shape's
/// `record_starts`.
#[derive(Debug, Clone, Default)]
pub struct AddressLayout {
    pub generations: Vec<Option<SegmentShape>>,
    pub uids: Vec<Vec<String>>,
}

/// Every stored file's cold-read cost, and how many files cost each number of GETs.
#[derive(Debug, Clone, Default)]
pub struct ColdCosts {
    pub by_uid: HashMap<String, u64>,
    pub files_by_gets: BTreeMap<u64, u64>,
}

impl ColdCosts {
    pub fn of(addresses: &[AddressLayout], suffix: u64, later_suffix: u64) -> Self {
        let mut costs = ColdCosts::default();
        for address in addresses {
            let gets = cold_read_gets(&address.generations, suffix, later_suffix);
            for (uid, gets) in address.uids.iter().flatten().zip(gets.into_iter().flatten()) {
                *costs.files_by_gets.entry(gets).or_default() += 1;
                costs.by_uid.insert(uid.clone(), gets);
            }
        }
        costs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn files_are_counted_by_cost_across_addresses_and_found_by_uid() {
        let shape = |object_len: u64, starts: &[u64]| SegmentShape {
            object_len,
            index_and_footer_len: KIB,
            record_starts: starts.to_vec(),
        };
        let first = AddressLayout {
            generations: vec![Some(shape(100 * KIB, &[0, 50 * KIB])), Some(shape(10 * KIB, &[0]))],
            uids: vec![vec!["a".into(), "b".into()], vec!["c".into()]],
        };
        let second = AddressLayout { generations: vec![Some(shape(100 * KIB, &[0]))], uids: vec![vec!["d".into()]] };
        // Late arrivals only: generation 0 is missing.
        let third = AddressLayout {
            generations: vec![None, Some(shape(10 * KIB, &[0]))],
            uids: vec![vec![], vec!["e".into()]],
        };
        let costs = ColdCosts::of(&[first, second, third], 256 * KIB, 1024 * KIB);
        assert_eq!(costs.files_by_gets, BTreeMap::from([(1, 3), (2, 2)]));
        assert_eq!((costs.by_uid["a"], costs.by_uid["c"], costs.by_uid["d"], costs.by_uid["e"]), (1, 2, 1, 2));
        assert_eq!(costs.by_uid.len(), 5);
    }
}
