//! Hash trees of an AP keyspace, so anti-entropy costs what the replicas differ by, not what
//! they hold.
//!
//! Keys fall into [`BUCKETS`] buckets (65,536) by a stable hash of the key; the buckets are the
//! leaves of a tree of fan-out [`FANOUT`] and [`DEPTH`] levels below the root. A leaf's hash is
//! the wrapping sum of a 64-bit hash of each (key, version, value) in it, and an inner node's is
//! the wrapping sum of its children's, so a hash does not depend on order, two replicas with the
//! same contents have the same tree, and a change to one key updates one leaf and its `DEPTH`
//! ancestors by the same delta ([`HashTree::update`], called on every local write and merge).
//!
//! Anti-entropy compares roots (one message when replicas agree) and descends only into nodes
//! whose hashes differ: one differing key is found in `DEPTH` exchanges of at most `FANOUT`
//! hashes each, and only its leaf's entries are read and sent.
//!
//! CAVEATS: hashes can collide. Two different contents give the same node hash with probability
//! about 2^-64; anti-entropy would then miss that difference until either side changes again.
//! A tree takes about 560 KiB of memory per keyspace, and is rebuilt by one scan of the keyspace
//! the first time a process uses it, with the in-memory index of each leaf's keys that repair
//! reads leaves through (`ApStore`, a few tens of bytes per key).

use super::version::Versioned;

/// Children per inner node of the hash tree.
pub const FANOUT: usize = 16;
/// Levels below the root; the leaves are level `DEPTH`.
pub const DEPTH: usize = 4;
/// Leaves (hash buckets) per keyspace: `FANOUT ^ DEPTH`, about 15 keys each at a million keys.
pub const BUCKETS: usize = FANOUT.pow(DEPTH as u32);

/// Nodes at `level` (level 0 is the root).
pub fn width(level: usize) -> usize {
    FANOUT.pow(level as u32)
}

/// XXH3 (64 bits) of `parts`, each followed by its length so no two splits of the same bytes
/// hash alike: specified and stable across processes, releases and machines, unlike std's
/// hasher, as replicas compare these hashes.
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for part in parts {
        hasher.update(part);
        hasher.update(&(part.len() as u64).to_le_bytes());
    }
    hasher.digest()
}

/// The bucket (leaf of the hash tree) a key belongs to.
pub fn bucket_of(key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) % BUCKETS as u64) as usize
}

/// The hash of one stored version of a key; a leaf is the wrapping sum of its entries' hashes.
pub fn entry_hash(key: &[u8], v: &Versioned) -> u64 {
    let mut version = [0u8; 20];
    version[..8].copy_from_slice(&v.version.hlc.physical_ms.to_le_bytes());
    version[8..12].copy_from_slice(&v.version.hlc.logical.to_le_bytes());
    version[12..].copy_from_slice(&v.version.node.to_le_bytes());
    match &v.value {
        Some(value) => hash64(&[key, &version, b"v", value]),
        None => hash64(&[key, &version, b"t"]),
    }
}

/// The hash tree of one keyspace on one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    /// `levels[l]` holds the hashes of the `width(l)` nodes of level `l`.
    levels: Vec<Vec<u64>>,
}

impl Default for HashTree {
    fn default() -> Self {
        Self {
            levels: (0..=DEPTH).map(|l| vec![0; width(l)]).collect(),
        }
    }
}

impl HashTree {
    /// The tree of a set of entries (the rebuild at start-up).
    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a Versioned)>) -> HashTree {
        let mut tree = HashTree::default();
        for (key, v) in entries {
            tree.update(key, None, Some(v));
        }
        tree
    }

    /// Replaces `old` with `new` as the stored version of `key` (`None`: absent).
    pub fn update(&mut self, key: &[u8], old: Option<&Versioned>, new: Option<&Versioned>) {
        let delta = new
            .map_or(0, |v| entry_hash(key, v))
            .wrapping_sub(old.map_or(0, |v| entry_hash(key, v)));
        if delta == 0 {
            return;
        }
        let mut node = bucket_of(key);
        for level in (0..=DEPTH).rev() {
            self.levels[level][node] = self.levels[level][node].wrapping_add(delta);
            node /= FANOUT;
        }
    }

    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The hashes of `nodes` at `level`, or `None` when the level or a node does not exist.
    pub fn hashes(&self, level: usize, nodes: &[u32]) -> Option<Vec<u64>> {
        let row = self.levels.get(level)?;
        nodes.iter().map(|n| row.get(*n as usize).copied()).collect()
    }
}

/// The children of `nodes` (at some level), in order.
pub fn children(nodes: &[u32]) -> Vec<u32> {
    nodes
        .iter()
        .flat_map(|n| (0..FANOUT as u32).map(move |c| n * FANOUT as u32 + c))
        .collect()
}

/// The nodes of `nodes` whose hashes differ between `ours` and `theirs`.
pub fn differing(nodes: &[u32], ours: &[u64], theirs: &[u64]) -> Vec<u32> {
    nodes
        .iter()
        .zip(ours.iter().zip(theirs))
        .filter(|(_, (a, b))| a != b)
        .map(|(n, _)| *n)
        .collect()
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
            0..60,
        )
    }

    fn tree(m: &BTreeMap<Vec<u8>, Versioned>) -> HashTree {
        HashTree::of(m.iter().map(|(k, v)| (k.as_slice(), v)))
    }

    /// Descends from the root as anti-entropy does; returns the differing leaves and how many
    /// exchanges (one per level) it took.
    fn descend(a: &HashTree, b: &HashTree) -> (Vec<u32>, usize) {
        let (mut nodes, mut exchanges) = (vec![0u32], 0);
        for level in 0..=DEPTH {
            if level > 0 {
                nodes = children(&nodes);
            }
            exchanges += 1;
            nodes = differing(
                &nodes,
                &a.hashes(level, &nodes).unwrap(),
                &b.hashes(level, &nodes).unwrap(),
            );
            if nodes.is_empty() {
                break;
            }
        }
        (nodes, exchanges)
    }

    proptest! {
        /// Roots are equal exactly when contents are equal (up to hash collisions).
        #[test]
        fn equal_sets_give_equal_roots(a in arb_contents(), b in arb_contents()) {
            prop_assert_eq!(tree(&a).root() == tree(&b).root(), a == b);
            let reversed = HashTree::of(a.iter().rev().map(|(k, v)| (k.as_slice(), v)));
            prop_assert_eq!(tree(&a), reversed, "order does not matter");
        }

        /// Incremental updates (writes, overwrites, removals, in any order) equal a rebuild.
        #[test]
        fn incremental_updates_equal_a_rebuild(
            start in arb_contents(),
            changes in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..6), prop::option::of(0u64..9)), 0..40),
        ) {
            let mut contents = start.clone();
            let mut incremental = tree(&start);
            for (key, change) in changes {
                let old = contents.get(&key).cloned();
                let new = change.map(|ms| Versioned {
                    version: Version { hlc: Timestamp { physical_ms: ms, logical: 1 }, node: 7 },
                    value: Some(key.clone()),
                });
                incremental.update(&key, old.as_ref(), new.as_ref());
                match new {
                    Some(v) => { contents.insert(key, v); }
                    None => { contents.remove(&key); }
                }
            }
            prop_assert_eq!(incremental, tree(&contents));
        }

        /// One differing key is found in DEPTH + 1 exchanges (log of the key space), and the
        /// descent lands on exactly its leaf.
        #[test]
        fn one_difference_is_found_in_logarithmic_exchanges(a in arb_contents(), key in prop::collection::vec(any::<u8>(), 1..6)) {
            let mut b = a.clone();
            let v = Versioned { version: Version { hlc: Timestamp { physical_ms: 99, logical: 0 }, node: 9 }, value: None };
            b.insert(key.clone(), v);
            let (leaves, exchanges) = descend(&tree(&a), &tree(&b));
            prop_assert_eq!(leaves, vec![bucket_of(&key) as u32]);
            prop_assert_eq!(exchanges, DEPTH + 1);
            let (none, one) = descend(&tree(&a), &tree(&a));
            prop_assert!(none.is_empty());
            prop_assert_eq!(one, 1, "equal trees cost one exchange");
        }
    }

    #[test]
    fn hashes_of_missing_levels_or_nodes_are_none() {
        let t = HashTree::default();
        assert_eq!(t.hashes(0, &[0]), Some(vec![0]));
        assert_eq!(t.hashes(DEPTH + 1, &[0]), None);
        assert_eq!(t.hashes(1, &[FANOUT as u32]), None);
        assert_eq!(children(&[1]), (16..32).collect::<Vec<u32>>());
    }
}
