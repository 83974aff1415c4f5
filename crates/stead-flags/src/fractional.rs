//! Fractional splits as flagd computes them: MurmurHash3 (x86, 32 bits, seed 0) of the
//! bucketing value's UTF-8 bytes, scaled onto the total weight, then the first bucket whose
//! running sum of weights passes it.

use std::io::Cursor;

/// The largest total weight of a split (flagd refuses more).
pub const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// The bucket (an index into `weights`) that `value` falls into, or `None` when no bucket
/// can take it (every weight zero, or a total over [`MAX_TOTAL_WEIGHT`]).
pub fn bucket_of(value: &str, weights: &[u64]) -> Option<usize> {
    let total: u64 = weights.iter().sum();
    if total == 0 || total > MAX_TOTAL_WEIGHT {
        return None;
    }
    // Reading from a byte slice cannot fail.
    let hash = murmur3::murmur3_32(&mut Cursor::new(value.as_bytes()), 0).ok()?;
    let point = (u64::from(hash) * total) >> 32;
    let mut sum = 0;
    weights.iter().position(|w| {
        sum += w;
        sum > point
    })
}

/// The bucket of the default split of flag `flag_key` for `targeting_key`: flagd hashes the
/// flag key followed by the targeting key.
pub fn fractional_bucket(flag_key: &str, targeting_key: &str, weights: &[u64]) -> Option<usize> {
    bucket_of(&format!("{flag_key}{targeting_key}"), weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bucket_takes_a_split_without_weight_or_with_too_much() {
        assert_eq!(bucket_of("x", &[]), None);
        assert_eq!(bucket_of("x", &[0, 0]), None);
        assert_eq!(bucket_of("x", &[MAX_TOTAL_WEIGHT, 1]), None);
        assert_eq!(bucket_of("x", &[0, 7]), Some(1));
        assert_eq!(bucket_of("x", &[1]), Some(0));
    }
}
