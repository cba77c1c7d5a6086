//! Versioned AP values and their last-writer-wins merge.
//!
//! Every AP write (a value or a delete's tombstone) carries the coordinator's HLC timestamp and
//! node id. Of two versions of a key, the one with the higher (timestamp, node id) wins; the node
//! id breaks ties between nodes whose clocks agree to the millisecond and counter. Merge is a pure
//! function and is commutative, associative and idempotent, so replicas that see the same writes
//! in any order, any number of times, end equal.
//!
//! Caveat: last-writer-wins drops the loser of two concurrent writes. That is the AP promise,
//! not a bug; capkv counts such losses (`lww_losses`) instead of hiding them.

use serde::{Deserialize, Serialize};

use super::hlc::Timestamp;

/// The version of one AP write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub hlc: Timestamp,
    pub node: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.hlc, self.node)
    }
}

/// A value or a tombstone (`value: None`), with its version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    pub version: Version,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

impl Versioned {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The winner of two versions of one key: the higher version. Equal versions come from the same
/// write, so their values are equal; the value order only keeps merge total if that ever breaks.
pub fn merge(a: Versioned, b: Versioned) -> Versioned {
    if (b.version, &b.value) > (a.version, &a.value) {
        b
    } else {
        a
    }
}

/// Merges an incoming version into what is stored: `Some(winner)` when the store must change.
pub fn merge_into(stored: Option<&Versioned>, incoming: &Versioned) -> Option<Versioned> {
    match stored {
        None => Some(incoming.clone()),
        Some(current) => {
            let winner = merge(current.clone(), incoming.clone());
            (winner != *current).then_some(winner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_versioned() -> impl Strategy<Value = Versioned> {
        (
            0u64..5,
            0u32..3,
            1u64..4,
            prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        )
            .prop_map(|(physical_ms, logical, node, value)| Versioned {
                version: Version {
                    hlc: Timestamp { physical_ms, logical },
                    node,
                },
                value: value.map(|v| v.as_bytes().to_vec()),
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_versioned(), b in arb_versioned()) {
            prop_assert_eq!(merge(a.clone(), b.clone()), merge(b, a));
        }

        #[test]
        fn merge_is_associative(a in arb_versioned(), b in arb_versioned(), c in arb_versioned()) {
            prop_assert_eq!(merge(merge(a.clone(), b.clone()), c.clone()), merge(a, merge(b, c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_versioned()) {
            prop_assert_eq!(merge(a.clone(), a.clone()), a);
        }

        /// Any order and any repetition of the same writes ends in the same state.
        #[test]
        fn replicas_converge_in_any_order(writes in prop::collection::vec(arb_versioned(), 1..20), seed in any::<u64>()) {
            let fold = |ws: &[Versioned]| ws.iter().cloned().reduce(merge).expect("at least one write");
            let mut shuffled = writes.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            shuffled.extend(writes.iter().take(3).cloned());
            prop_assert_eq!(fold(&writes), fold(&shuffled));
        }
    }

    #[test]
    fn higher_version_wins_and_tombstones_win_over_older_values() {
        let v = |ms, node, value: Option<&str>| Versioned {
            version: Version {
                hlc: Timestamp {
                    physical_ms: ms,
                    logical: 0,
                },
                node,
            },
            value: value.map(|s| s.as_bytes().to_vec()),
        };
        assert_eq!(
            merge(v(1, 1, Some("book")), v(2, 1, Some("lamp"))).value.unwrap(),
            b"lamp"
        );
        assert_eq!(
            merge(v(2, 1, Some("book")), v(2, 3, Some("lamp"))).value.unwrap(),
            b"lamp",
            "node id breaks ties"
        );
        assert!(merge(v(5, 1, Some("x")), v(6, 2, None)).is_tombstone());
        assert_eq!(
            merge_into(Some(&v(6, 2, None)), &v(5, 1, Some("x"))),
            None,
            "an older write does not resurrect"
        );
    }
}
