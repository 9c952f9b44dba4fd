//! Routing is deterministic and spreads uids uniformly over hash buckets.

use proptest::prelude::*;
use vera_protocol::Timestamp;
use vera_protocol::routing::{MAX_UID_BYTES, ShardAddr, locate_shard};

/// Chi-square upper critical value at significance 1e-6 for `df` degrees of freedom,
/// using the Wilson–Hilferty approximation (accurate to a few percent for df >= 1; the
/// z value is 4.7534). A fixed seed keeps the test reproducible.
fn chi_square_critical(df: f64) -> f64 {
    let z = 4.7534;
    let term = 1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt();
    df * term.powi(3)
}

#[test]
fn buckets_are_uniform_for_every_n_bits_up_to_16() {
    let created_at = Timestamp::parse("2026-11-24T12:00:00Z").unwrap();
    for n_bits in 0u8..=16 {
        let buckets = 1usize << n_bits;
        // At least 20 expected per bucket, and enough samples for the small cases.
        let samples = (buckets * 20).max(20_000);
        let mut counts = vec![0u64; buckets];
        for i in 0..samples {
            // Realistic, highly structured uids: sequential ids share long prefixes.
            let uid = format!("rcpt-{:012}", i);
            let addr = locate_shard(&uid, created_at, n_bits).unwrap();
            counts[addr.bucket as usize] += 1;
        }
        if buckets == 1 {
            assert_eq!(counts[0], samples as u64);
            continue;
        }
        let expected = samples as f64 / buckets as f64;
        let chi_square: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        let critical = chi_square_critical((buckets - 1) as f64);
        assert!(chi_square < critical, "n_bits={n_bits}: chi2={chi_square:.1} >= {critical:.1}");
    }
}

proptest! {
    #[test]
    fn routing_is_a_pure_function(uid in "[a-zA-Z0-9/_.:-]{1,64}", micros in -2_208_988_800_000_000i64..253_402_300_799_999_999, n_bits in 0u8..=20) {
        let created_at = Timestamp::from_micros(micros).unwrap();
        let first = locate_shard(&uid, created_at, n_bits).unwrap();
        let second = locate_shard(&uid.clone(), created_at, n_bits).unwrap();
        prop_assert_eq!(first, second);
        prop_assert!(u64::from(first.bucket) < (1u64 << n_bits));
        prop_assert_eq!(ShardAddr::from_key_prefix(&first.key_prefix()).unwrap(), first);
        // Fewer bits is a prefix of more bits: splitting a bucket never moves files across
        // the coarser bucket they were in.
        if n_bits > 0 {
            let coarser = locate_shard(&uid, created_at, n_bits - 1).unwrap();
            prop_assert_eq!(coarser.bucket, first.bucket >> 1);
        }
    }

    #[test]
    fn any_bad_input_is_an_error_never_a_panic(uid in ".{0,300}", micros in any::<i64>(), n_bits in any::<u8>()) {
        let outcome = Timestamp::from_micros(micros).map(|t| locate_shard(&uid, t, n_bits));
        if let Ok(Ok(addr)) = outcome {
            prop_assert!(!uid.is_empty() && uid.len() <= MAX_UID_BYTES && n_bits <= 20);
            prop_assert_eq!(ShardAddr::from_key_prefix(&addr.key_prefix()).unwrap(), addr);
        }
    }

    #[test]
    fn prefix_parser_never_panics(text in ".{0,80}") {
        let _ = ShardAddr::from_key_prefix(&text);
        let _ = ShardAddr::from_segment_key(&text);
    }
}
