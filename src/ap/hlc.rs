//! Hybrid logical clocks (Kulkarni et al., 2014): timestamps that follow the wall clock and
//! never go backwards, and that order every event after every timestamp the node has seen.
//!
//! A timestamp is (physical milliseconds, logical counter). `now` takes the larger of the wall
//! clock and the last timestamp, bumping the counter when the wall clock has not moved; `observe`
//! folds in a timestamp received from a peer the same way. The clock is pure: the wall time comes
//! in as a parameter, so tests drive it and the node adds its fault-injected offset at the edge.
//!
//! Caveat: a peer whose clock runs far ahead drags every clock that hears from it ahead too (the
//! physical part follows the largest time seen). capkv counts how far ahead remote timestamps run
//! (`max_ahead_ms`) rather than refusing them, so clock-skew faults show their effect on LWW.

use serde::{Deserialize, Serialize};

/// One hybrid logical clock timestamp. Ordered by physical time, then the logical counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub physical_ms: u64,
    pub logical: u32,
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

/// The clock of one node.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: Timestamp,
    /// The furthest a received timestamp was ahead of the local wall clock, in ms.
    max_ahead_ms: u64,
}

impl Hlc {
    /// A clock that starts after `last` (e.g. the largest timestamp found on disk).
    pub fn starting_after(last: Timestamp) -> Self {
        Self { last, max_ahead_ms: 0 }
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }

    pub fn max_ahead_ms(&self) -> u64 {
        self.max_ahead_ms
    }

    /// A timestamp for a local event at wall time `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        self.last = if wall_ms > self.last.physical_ms {
            Timestamp {
                physical_ms: wall_ms,
                logical: 0,
            }
        } else {
            self.bump(self.last)
        };
        self.last
    }

    /// Folds in a timestamp seen in a message, so later local events order after it.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Timestamp {
        self.max_ahead_ms = self.max_ahead_ms.max(remote.physical_ms.saturating_sub(wall_ms));
        let latest = self.last.max(remote);
        self.last = if wall_ms > latest.physical_ms {
            Timestamp {
                physical_ms: wall_ms,
                logical: 0,
            }
        } else {
            self.bump(latest)
        };
        self.last
    }

    fn bump(&self, t: Timestamp) -> Timestamp {
        match t.logical.checked_add(1) {
            Some(logical) => Timestamp {
                physical_ms: t.physical_ms,
                logical,
            },
            // 4 billion events within one millisecond: borrow the next millisecond.
            None => Timestamp {
                physical_ms: t.physical_ms + 1,
                logical: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Event {
        Local(u64),
        Receive(u64, u64, u32),
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..1000).prop_map(Event::Local),
            (0u64..1000, 0u64..2000, 0u32..5).prop_map(|(w, p, l)| Event::Receive(w, p, l)),
        ]
    }

    proptest! {
        /// Timestamps strictly increase, and each is after every timestamp the clock has seen.
        #[test]
        fn monotonic_and_causal(events in prop::collection::vec(arb_event(), 1..200)) {
            let mut clock = Hlc::default();
            let mut previous = Timestamp::default();
            let mut seen_max = Timestamp::default();
            for (i, event) in events.into_iter().enumerate() {
                let (t, wall) = match event {
                    Event::Local(wall) => (clock.now(wall), wall),
                    Event::Receive(wall, physical_ms, logical) => {
                        let remote = Timestamp { physical_ms, logical };
                        seen_max = seen_max.max(remote);
                        (clock.observe(remote, wall), wall)
                    }
                };
                if i > 0 { prop_assert!(t > previous, "{} is not after {}", t, previous); }
                prop_assert!(t > seen_max || seen_max == Timestamp::default(), "{} is not after seen {}", t, seen_max);
                // Bounded drift: the physical part never exceeds the wall clock or what was seen.
                prop_assert!(t.physical_ms <= wall.max(seen_max.physical_ms).max(previous.physical_ms) + 1);
                previous = t;
            }
        }
    }

    #[test]
    fn follows_the_wall_clock() {
        let mut clock = Hlc::default();
        assert_eq!(
            clock.now(100),
            Timestamp {
                physical_ms: 100,
                logical: 0
            }
        );
        assert_eq!(
            clock.now(100),
            Timestamp {
                physical_ms: 100,
                logical: 1
            }
        );
        assert_eq!(
            clock.now(90),
            Timestamp {
                physical_ms: 100,
                logical: 2
            },
            "wall clock went back"
        );
        assert_eq!(
            clock.now(150),
            Timestamp {
                physical_ms: 150,
                logical: 0
            }
        );
        let t = clock.observe(
            Timestamp {
                physical_ms: 5000,
                logical: 7,
            },
            160,
        );
        assert_eq!(
            t,
            Timestamp {
                physical_ms: 5000,
                logical: 8
            }
        );
        assert_eq!(clock.max_ahead_ms(), 4840);
    }
}
