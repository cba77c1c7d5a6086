//! Bucketed digests of an AP keyspace, for cheap anti-entropy.
//!
//! Keys fall into [`BUCKETS`] buckets by a stable hash of the key. A bucket's digest is the
//! wrapping sum of a 64-bit hash of each (key, version, value) in it, so it does not depend on
//! order and two replicas with the same contents have the same digests. Anti-entropy compares
//! digests (one small message per keyspace) and exchanges entries only for buckets that differ.
//!
//! Caveat: digests are hashes. Two different contents collide with probability about 2^-64 per
//! bucket; anti-entropy would then miss that difference until either side changes again.

use super::version::Versioned;

/// Buckets per keyspace. 256 keeps a digest at 2 KiB and a differing bucket small (about 40
/// keys at 10,000 keys per keyspace).
pub const BUCKETS: usize = 256;

/// FNV-1a, then a splitmix64 finalizer: stable across processes and releases, unlike std's hasher.
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain((part.len() as u64).to_le_bytes().iter()) {
            h ^= *byte as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The bucket a key belongs to.
pub fn bucket_of(key: &[u8]) -> usize {
    (hash64(&[key]) % BUCKETS as u64) as usize
}

fn entry_hash(key: &[u8], v: &Versioned) -> u64 {
    let version = [
        v.version.hlc.physical_ms.to_le_bytes().as_slice(),
        v.version.hlc.logical.to_le_bytes().as_slice(),
        v.version.node.to_le_bytes().as_slice(),
    ]
    .concat();
    match &v.value {
        Some(value) => hash64(&[key, &version, b"v", value]),
        None => hash64(&[key, &version, b"t"]),
    }
}

/// The digests of one keyspace on one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest(pub Vec<u64>);

impl Digest {
    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a Versioned)>) -> Digest {
        let mut buckets = vec![0u64; BUCKETS];
        for (key, v) in entries {
            let b = bucket_of(key);
            buckets[b] = buckets[b].wrapping_add(entry_hash(key, v));
        }
        Digest(buckets)
    }

    /// Buckets whose digests differ (all of them if the other digest is malformed).
    pub fn differing(&self, other: &Digest) -> Vec<usize> {
        if other.0.len() != BUCKETS {
            return (0..BUCKETS).collect();
        }
        (0..BUCKETS).filter(|b| self.0[*b] != other.0[*b]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::hlc::Timestamp;
    use super::super::version::Version;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn arb_contents() -> impl Strategy<Value = BTreeMap<Vec<u8>, Versioned>> {
        prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 1..6),
            (
                0u64..4,
                1u64..4,
                prop::option::of(prop::collection::vec(any::<u8>(), 0..4)),
            )
                .prop_map(|(ms, node, value)| Versioned {
                    version: Version {
                        hlc: Timestamp {
                            physical_ms: ms,
                            logical: 0,
                        },
                        node,
                    },
                    value,
                }),
            0..30,
        )
    }

    fn digest(m: &BTreeMap<Vec<u8>, Versioned>) -> Digest {
        Digest::of(m.iter().map(|(k, v)| (k.as_slice(), v)))
    }

    proptest! {
        /// Digests are equal exactly when contents are equal (up to hash collisions).
        #[test]
        fn digest_equality_iff_contents_equal(a in arb_contents(), b in arb_contents()) {
            prop_assert_eq!(digest(&a) == digest(&b), a == b);
        }

        /// Order of insertion does not matter.
        #[test]
        fn digest_ignores_order(a in arb_contents()) {
            let reversed = Digest::of(a.iter().rev().map(|(k, v)| (k.as_slice(), v)));
            prop_assert_eq!(digest(&a), reversed);
        }

        /// The differing buckets are exactly those of the keys that differ.
        #[test]
        fn differing_buckets_locate_the_difference(a in arb_contents(), key in prop::collection::vec(any::<u8>(), 1..6)) {
            let mut b = a.clone();
            let v = Versioned { version: Version { hlc: Timestamp { physical_ms: 99, logical: 0 }, node: 9 }, value: None };
            b.insert(key.clone(), v);
            prop_assert_eq!(digest(&a).differing(&digest(&b)), vec![bucket_of(&key)]);
        }
    }
}
