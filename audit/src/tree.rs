//! The append-only Merkle tree of the audit log, kept as a *frontier*: the roots of the
//! perfect subtrees that make up a tree of `size` leaves, largest (leftmost) first, one
//! per set bit of `size`. Appending a leaf and computing the root need only these
//! `popcount(size)` hashes, so a writer restarts from one stored frontier instead of
//! re-reading the whole log.
//!
//! The tree is the RFC 9162 tree of [`vera_protocol::merkle`] (BLAKE3, `0x00` leaf and
//! `0x01` node prefixes), so roots computed here equal
//! [`vera_protocol::merkle::root_of_leaf_hashes`] over the same leaves, and inclusion
//! proofs from that module verify against them.

use vera_protocol::merkle::{Hash, node_hash};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    subtrees: Vec<Hash>,
}

/// A stored frontier does not fit its size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a frontier of {size} leaves has {expected} subtree roots, not {found}")]
pub struct FrontierError {
    pub size: u64,
    pub expected: u32,
    pub found: usize,
}

impl Frontier {
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds a frontier from its parts, checking that there is one root per set bit.
    pub fn from_parts(size: u64, subtrees: Vec<Hash>) -> Result<Self, FrontierError> {
        if subtrees.len() != size.count_ones() as usize {
            return Err(FrontierError { size, expected: size.count_ones(), found: subtrees.len() });
        }
        Ok(Frontier { size, subtrees })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn subtrees(&self) -> &[Hash] {
        &self.subtrees
    }

    /// Appends one leaf hash (`merkle::leaf_hash` of the entry).
    pub fn push(&mut self, leaf: Hash) {
        self.subtrees.push(leaf);
        self.size += 1;
        // Each trailing zero of the new size is a pair of equal subtrees to merge.
        for _ in 0..self.size.trailing_zeros() {
            let right = self.subtrees.pop().unwrap_or_default();
            let left = self.subtrees.pop().unwrap_or_default();
            self.subtrees.push(node_hash(&left, &right));
        }
    }

    /// The RFC 9162 root of the tree so far; `BLAKE3("")` when empty.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(last) = subtrees.next() else {
            return *blake3::hash(&[]).as_bytes();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }
}

#[cfg(test)]
mod tests {
    use vera_protocol::merkle::{leaf_hash, root_of_leaf_hashes};

    use super::*;

    #[test]
    fn roots_match_the_recursive_definition_at_every_size() {
        let mut frontier = Frontier::new();
        let mut leaves = Vec::new();
        assert_eq!(frontier.root(), root_of_leaf_hashes(&leaves));
        for i in 0u32..300 {
            let leaf = leaf_hash(&i.to_le_bytes());
            leaves.push(leaf);
            frontier.push(leaf);
            assert_eq!(frontier.root(), root_of_leaf_hashes(&leaves), "size {}", i + 1);
            assert_eq!(frontier.subtrees().len(), frontier.size().count_ones() as usize);
            let rebuilt = Frontier::from_parts(frontier.size(), frontier.subtrees().to_vec()).unwrap();
            assert_eq!(rebuilt, frontier);
        }
    }

    #[test]
    fn a_frontier_with_the_wrong_number_of_roots_is_refused() {
        let error = Frontier::from_parts(5, vec![[0; 32]]).unwrap_err();
        assert_eq!(error.expected, 2);
    }
}
