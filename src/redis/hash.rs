//! Shard choice: the consistent hash channels_redis uses to pick a host ([contract §3.8](crate::contract)).

/// The index of the shard, out of `ring_size`, that channels_redis assigns to `name`.
///
/// The CRC-32 of the UTF-8 name is cut to its low 12 bits (0..=4095), and that value is divided
/// by `4096 / ring_size` in floating point, truncating toward zero. This is computed in `f64`
/// exactly as Python computes it: the integer shortcut `crc * ring_size / 4096` picks a
/// different shard for some names once `ring_size` reaches 186, which would send a Rust and a
/// Python process to different hosts.
///
/// The result is always below `ring_size`. A `ring_size` of 0 or 1 gives 0 (a layer always has
/// at least one host).
pub(crate) fn consistent_hash(name: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let bigval = crc32fast::hash(name.as_bytes()) & 0xfff;
    let shard = (f64::from(bigval) / (4096.0 / ring_size as f64)) as usize;
    // 4095 / (4096 / n) stays below n by far more than rounding can move it; the clamp only
    // documents the guarantee.
    shard.min(ring_size - 1)
}

#[cfg(test)]
mod tests {
    use super::consistent_hash;

    /// channels_redis's tests/test_utils.py vectors.
    #[test]
    fn matches_channels_redis_vectors() {
        assert_eq!(consistent_hash("key_one", 1), 0);
        assert_eq!(consistent_hash("key_two", 1), 0);
        assert_eq!(consistent_hash("key_one", 2), 1);
        assert_eq!(consistent_hash("key_two", 2), 0);
        assert_eq!(consistent_hash("key_one", 10), 6);
        assert_eq!(consistent_hash("key_two", 10), 4);
    }

    #[test]
    fn zero_or_one_shard_is_always_zero() {
        for name in ["", "a", "key_one", "specific.abc!", "ü"] {
            assert_eq!(consistent_hash(name, 0), 0);
            assert_eq!(consistent_hash(name, 1), 0);
        }
    }

    #[test]
    fn stays_in_range() {
        for size in 1..=300 {
            for i in 0..200 {
                let name = format!("specific.{i:032x}!");
                let shard = consistent_hash(&name, size);
                assert!(shard < size, "{name:?} with {size} shards gave {shard}");
            }
        }
        // Every 12-bit value, through the formula directly, at awkward sizes.
        assert!(consistent_hash("x", usize::MAX) < usize::MAX);
    }

    /// The float formula and the integer shortcut part ways for some sizes from 186 on; the
    /// float one is what Python computes.
    #[test]
    fn float_formula_differs_from_integer_shortcut() {
        let mut differs = false;
        for size in 2..=300usize {
            for bigval in 0..4096u32 {
                let float = (f64::from(bigval) / (4096.0 / size as f64)) as usize;
                let int = bigval as usize * size / 4096;
                if float != int {
                    assert!(
                        size >= 186,
                        "first difference expected from 186, got {size}"
                    );
                    differs = true;
                }
            }
        }
        assert!(differs);
    }
}
