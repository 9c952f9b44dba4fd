//! Merkle tree over file hashes, shaped exactly like RFC 9162 (Certificate Transparency
//! v2) §2.1 but with BLAKE3 as the hash: `leaf = BLAKE3(0x00 || data)`,
//! `node = BLAKE3(0x01 || left || right)`, the empty tree hashes to `BLAKE3("")`, and a
//! tree of `n > 1` leaves splits at the largest power of two below `n`.
//!
//! A shard footer carries the root over its files' content hashes in index order, so an
//! auditor can prove one file belongs to a sealed shard with an inclusion proof of
//! `log2(n)` hashes, without the other files.

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(data);
    *hasher.finalize().as_bytes()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// Root over already-hashed leaves (`leaf_hash` of each item).
pub fn root_of_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => *blake3::hash(&[]).as_bytes(),
        1 => leaves[0],
        n => {
            let split = largest_power_of_two_below(n);
            node_hash(&root_of_leaf_hashes(&leaves[..split]), &root_of_leaf_hashes(&leaves[split..]))
        }
    }
}

/// Root over items, each hashed as a leaf first.
pub fn root<T: AsRef<[u8]>>(items: &[T]) -> Hash {
    let leaves: Vec<Hash> = items.iter().map(|item| leaf_hash(item.as_ref())).collect();
    root_of_leaf_hashes(&leaves)
}

/// RFC 9162 §2.1.3.1 inclusion proof for leaf `index`, or `None` if out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    collect_path(leaves, index, &mut proof);
    Some(proof)
}

fn collect_path(leaves: &[Hash], index: usize, proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let split = largest_power_of_two_below(leaves.len());
    if index < split {
        collect_path(&leaves[..split], index, proof);
        proof.push(root_of_leaf_hashes(&leaves[split..]));
    } else {
        collect_path(&leaves[split..], index - split, proof);
        proof.push(root_of_leaf_hashes(&leaves[..split]));
    }
}

/// RFC 9162 §2.1.3.2 verification of an inclusion proof.
pub fn verify_inclusion(leaf: &Hash, index: u64, tree_size: u64, proof: &[Hash], expected_root: &Hash) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fn_, mut sn) = (index, tree_size - 1);
    let mut running = *leaf;
    for sibling in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            running = node_hash(sibling, &running);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            running = node_hash(&running, sibling);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && running == *expected_root
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_rfc9162() {
        let items: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i]).collect();
        let l: Vec<Hash> = items.iter().map(|i| leaf_hash(i)).collect();
        let expected = node_hash(&node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3])), &l[4]);
        assert_eq!(root(&items), expected);
        assert_eq!(root::<&[u8]>(&[]), *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        for n in 1..40usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            let tree_root = root_of_leaf_hashes(&leaves);
            for index in 0..n {
                let proof = inclusion_proof(&leaves, index).unwrap();
                assert!(verify_inclusion(&leaves[index], index as u64, n as u64, &proof, &tree_root));
                let wrong_leaf = leaf_hash(b"other");
                assert!(!verify_inclusion(&wrong_leaf, index as u64, n as u64, &proof, &tree_root));
                if n > 1 {
                    assert!(!verify_inclusion(&leaves[index], ((index + 1) % n) as u64, n as u64, &proof, &tree_root));
                }
            }
            assert!(inclusion_proof(&leaves, n).is_none());
        }
    }
}
