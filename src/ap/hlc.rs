//! Hybrid logical clocks (Kulkarni et al., 2014): timestamps that follow the wall clock and
//! never go backwards, and that order every event after every timestamp the node has seen.
//!
//! A timestamp is (physical milliseconds, logical counter). `now` takes the larger of the wall
//! clock and the last timestamp, bumping the counter when the wall clock has not moved; `observe`
//! folds in a timestamp received from a peer the same way. The clock is pure: the wall time comes
//! in as a parameter, so tests drive it and the node adds its fault-injected offset at the edge.
//!
//! BOUNDED OFFSET (like CockroachDB's `--max-offset`): a clock never adopts a timestamp more than
//! `max_offset_ms` ahead of its own wall clock. [`Hlc::observe`] refuses such a remote timestamp
//! ([`ClockAhead`]) and leaves the clock untouched, and [`Hlc::now`] refuses to stamp an event
//! when the clock already ran more than the bound ahead of the wall clock (for example after a
//! restart on data stamped by a clock that was wrong). So one bad clock or one bad message cannot
//! drag every clock of the cluster ahead. All arithmetic saturates: no input panics.
//!
//! CAVEATS: the bound is checked against this node's wall clock, so two correct clocks may
//! still differ by up to the bound, and last-writer-wins between them follows that difference.
//! A clock pinned at `u64::MAX` ms cannot move forward; the bound keeps real clocks far from it.

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

/// A timestamp more than the bound ahead of the wall clock: refused, the clock is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {timestamp} is {ahead_ms} ms ahead of this node's clock, beyond the {max_offset_ms} ms bound (--max-clock-offset-ms)")]
pub struct ClockAhead {
    pub timestamp: Timestamp,
    pub ahead_ms: u64,
    pub max_offset_ms: u64,
}

/// The clock of one node.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: Timestamp,
    /// The furthest an accepted remote timestamp was ahead of the local wall clock, in ms.
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

    /// A timestamp for a local event at wall time `wall_ms`; refused when the clock has already
    /// run more than `max_offset_ms` ahead of the wall clock.
    pub fn now(&mut self, wall_ms: u64, max_offset_ms: u64) -> Result<Timestamp, ClockAhead> {
        check_bound(self.last, wall_ms, max_offset_ms)?;
        self.last = if wall_ms > self.last.physical_ms {
            Timestamp {
                physical_ms: wall_ms,
                logical: 0,
            }
        } else {
            bump(self.last)
        };
        Ok(self.last)
    }

    /// Folds in a timestamp seen in a message, so later local events order after it; refused
    /// (and the clock unchanged) when it is more than `max_offset_ms` ahead of `wall_ms`.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64, max_offset_ms: u64) -> Result<Timestamp, ClockAhead> {
        check_bound(remote, wall_ms, max_offset_ms)?;
        self.max_ahead_ms = self.max_ahead_ms.max(remote.physical_ms.saturating_sub(wall_ms));
        let latest = self.last.max(remote);
        self.last = if wall_ms > latest.physical_ms {
            Timestamp {
                physical_ms: wall_ms,
                logical: 0,
            }
        } else {
            bump(latest)
        };
        Ok(self.last)
    }
}

/// Refuses `t` when it is more than `max_offset_ms` ahead of `wall_ms`.
pub fn check_bound(t: Timestamp, wall_ms: u64, max_offset_ms: u64) -> Result<(), ClockAhead> {
    let ahead_ms = t.physical_ms.saturating_sub(wall_ms);
    if ahead_ms > max_offset_ms {
        return Err(ClockAhead {
            timestamp: t,
            ahead_ms,
            max_offset_ms,
        });
    }
    Ok(())
}

/// The next timestamp after `t`; saturates at the largest timestamp (never panics).
fn bump(t: Timestamp) -> Timestamp {
    match t.logical.checked_add(1) {
        Some(logical) => Timestamp {
            physical_ms: t.physical_ms,
            logical,
        },
        // 4 billion events within one millisecond: borrow the next millisecond.
        None => match t.physical_ms.checked_add(1) {
            Some(physical_ms) => Timestamp {
                physical_ms,
                logical: 0,
            },
            None => t,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNBOUNDED: u64 = u64::MAX;

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
                    Event::Local(wall) => (clock.now(wall, UNBOUNDED).unwrap(), wall),
                    Event::Receive(wall, physical_ms, logical) => {
                        let remote = Timestamp { physical_ms, logical };
                        seen_max = seen_max.max(remote);
                        (clock.observe(remote, wall, UNBOUNDED).unwrap(), wall)
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
            clock.now(100, UNBOUNDED).unwrap(),
            Timestamp {
                physical_ms: 100,
                logical: 0
            }
        );
        assert_eq!(
            clock.now(100, UNBOUNDED).unwrap(),
            Timestamp {
                physical_ms: 100,
                logical: 1
            }
        );
        assert_eq!(
            clock.now(90, UNBOUNDED).unwrap(),
            Timestamp {
                physical_ms: 100,
                logical: 2
            },
            "wall clock went back"
        );
        assert_eq!(
            clock.now(150, UNBOUNDED).unwrap(),
            Timestamp {
                physical_ms: 150,
                logical: 0
            }
        );
        let t = clock
            .observe(
                Timestamp {
                    physical_ms: 5000,
                    logical: 7,
                },
                160,
                UNBOUNDED,
            )
            .unwrap();
        assert_eq!(
            t,
            Timestamp {
                physical_ms: 5000,
                logical: 8
            }
        );
        assert_eq!(clock.max_ahead_ms(), 4840);
    }

    #[test]
    fn a_remote_timestamp_beyond_the_bound_is_refused_and_changes_nothing() {
        let mut clock = Hlc::default();
        clock.now(1_000, 500).unwrap();
        let within = Timestamp {
            physical_ms: 1_500,
            logical: 3,
        };
        assert_eq!(
            clock.observe(within, 1_000, 500).unwrap(),
            Timestamp {
                physical_ms: 1_500,
                logical: 4
            }
        );
        let beyond = Timestamp {
            physical_ms: 1_000 + 24 * 3600 * 1000,
            logical: 0,
        };
        let err = clock.observe(beyond, 1_000, 500).unwrap_err();
        assert_eq!((err.ahead_ms, err.max_offset_ms), (24 * 3600 * 1000, 500));
        assert!(err.to_string().contains("beyond the 500 ms bound"), "{err}");
        assert_eq!(clock.last().physical_ms, 1_500, "the refused timestamp was not adopted");
        assert_eq!(clock.max_ahead_ms(), 500);
    }

    #[test]
    fn a_clock_already_beyond_the_bound_refuses_to_stamp_until_the_wall_clock_catches_up() {
        // E.g. a restart on data stamped by a clock that ran a day ahead.
        let day = 24 * 3600 * 1000;
        let mut clock = Hlc::starting_after(Timestamp {
            physical_ms: 1_000 + day,
            logical: 0,
        });
        assert!(clock.now(1_000, 500).is_err());
        assert!(clock.now(day + 500, 500).is_ok(), "within the bound again");
    }

    #[test]
    fn the_largest_timestamp_saturates_instead_of_overflowing() {
        let top = Timestamp {
            physical_ms: u64::MAX,
            logical: u32::MAX,
        };
        let mut clock = Hlc::starting_after(top);
        assert_eq!(clock.now(u64::MAX, 0).unwrap(), top);
        assert_eq!(clock.observe(top, u64::MAX, 0).unwrap(), top);
        let almost = Timestamp {
            physical_ms: 7,
            logical: u32::MAX,
        };
        assert_eq!(
            Hlc::starting_after(almost).now(0, UNBOUNDED).unwrap(),
            Timestamp {
                physical_ms: 8,
                logical: 0
            }
        );
    }

    proptest! {
        /// No timestamp, wall time or bound panics the clock, and an accepted timestamp is never
        /// more than the bound ahead of the wall clock it was accepted at.
        #[test]
        fn no_input_panics_and_the_bound_holds(
            start in (any::<u64>(), any::<u32>()),
            events in prop::collection::vec((any::<bool>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()), 1..50),
        ) {
            let mut clock = Hlc::starting_after(Timestamp { physical_ms: start.0, logical: start.1 });
            for (local, wall, physical_ms, logical, bound) in events {
                let bound = bound % 10_000;
                let before = clock.last();
                let result = if local {
                    clock.now(wall, bound)
                } else {
                    clock.observe(Timestamp { physical_ms, logical }, wall, bound)
                };
                match result {
                    Ok(t) => {
                        prop_assert!(t >= before);
                        if local {
                            prop_assert!(t.physical_ms <= wall.saturating_add(bound).saturating_add(1));
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(clock.last(), before, "a refusal leaves the clock as it was");
                        prop_assert!(e.ahead_ms > bound);
                    }
                }
            }
        }
    }
}
