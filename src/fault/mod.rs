//! Built-in fault injection: one filter that every peer message passes, on both ends.
//!
//! A partition is a list of groups of node ids. Two nodes may talk when some group holds both;
//! a node listed in no group is cut off from everyone. Groups may overlap, which builds bridges
//! (a node in two groups talks to both sides while the sides cannot talk to each other).
//!
//! The sender checks the filter before a Raft or gossip message leaves, and the receiver checks it
//! again before handling one (with the sender's id carried in the message), so a partition holds
//! even when only one side has heard of it. A dropped message is silence, as with a cut cable:
//! the sender waits out its timeout and the receiver holds the request without answering.
//!
//! The filter's own control messages (set and heal) are never filtered, so `fault heal` always
//! gets through.
//!
//! Clock skew, the other fault a node can be given, lives in [`clock`]; the filter carries the
//! node's [`ClockSkew`] so that both faults are set, read and healed in one place.
//!
//! Caveats: partitions are symmetric; one-way partitions come with the Jepsen-style nemeses.
//! Clients talking to a node are never filtered: the filter models the network between nodes.

pub mod clock;

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crate::error::Error;
pub use clock::ClockSkew;

/// The faults injected into one node: the partition as it sees it, and its clock skew.
#[derive(Debug)]
pub struct FaultFilter {
    enabled: bool,
    groups: RwLock<Vec<BTreeSet<u64>>>,
    clock: Arc<ClockSkew>,
}

impl FaultFilter {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            groups: RwLock::new(Vec::new()),
            clock: Arc::new(ClockSkew::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// May a message from `from` reach `to`?
    pub fn allows(&self, from: u64, to: u64) -> bool {
        if from == to {
            return true;
        }
        let groups = self.groups.read().expect("fault filter lock is never poisoned");
        groups.is_empty() || groups.iter().any(|g| g.contains(&from) && g.contains(&to))
    }

    /// Replaces the partition; an empty list heals the network.
    pub fn set(&self, groups: Vec<BTreeSet<u64>>) -> Result<(), Error> {
        if !self.enabled {
            return Err(Error::Refused(
                "fault injection is off on this node; start nodes with --fault-injection (cluster up does)".into(),
            ));
        }
        *self.groups.write().expect("fault filter lock is never poisoned") = groups;
        Ok(())
    }

    /// This node's clock skew, which the AP replica's clock reads.
    pub fn clock(&self) -> &Arc<ClockSkew> {
        &self.clock
    }

    /// Shifts this node's clock by `offset_ms` (0 restores it); refused when fault injection is
    /// off or the offset is beyond [`CLOCK_OFFSET_MS_MAX`]. Both ways in (the public `Fault`
    /// service and a peer's `SetClockOffset`) end here, so both enforce the bound.
    pub fn set_clock_offset(&self, offset_ms: i64) -> Result<(), Error> {
        validate_clock_offset(offset_ms)?;
        if !self.enabled {
            return Err(Error::Refused(
                "fault injection is off on this node; start nodes with --fault-injection (cluster up does)".into(),
            ));
        }
        self.clock.set(offset_ms);
        Ok(())
    }

    pub fn groups(&self) -> Vec<BTreeSet<u64>> {
        self.groups.read().expect("fault filter lock is never poisoned").clone()
    }
}

/// Largest clock offset fault injection accepts: a day either way. An ap write stamped with a
/// clock far ahead wins every conflict until real time catches up, so the bound also bounds how
/// long one injected (or forged) offset can distort last-writer-wins.
pub const CLOCK_OFFSET_MS_MAX: i64 = 24 * 3600 * 1000;

/// Refuses a clock offset beyond [`CLOCK_OFFSET_MS_MAX`] either way.
pub fn validate_clock_offset(offset_ms: i64) -> Result<(), Error> {
    if offset_ms.unsigned_abs() > CLOCK_OFFSET_MS_MAX.unsigned_abs() {
        return Err(Error::InvalidInput(format!(
            "a clock offset of {offset_ms} ms is beyond the limit of ±{CLOCK_OFFSET_MS_MAX} ms (one day); give a smaller offset"
        )));
    }
    Ok(())
}

/// Parses one group as written on the command line: node ids joined by commas (`1,2`).
pub fn parse_group(text: &str) -> Result<BTreeSet<u64>, Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "'{text}' is not a group of node ids; write ids joined by commas, e.g. `capkv fault partition 1,2 3`"
        ))
    };
    let ids: Result<BTreeSet<u64>, _> = text.split(',').map(|id| id.trim().parse::<u64>()).collect();
    let ids = ids.map_err(|_| bad())?;
    if ids.is_empty() || ids.contains(&0) {
        return Err(bad());
    }
    Ok(ids)
}

/// Checks that a partition names only members and has at least two groups.
pub fn validate_partition(groups: &[BTreeSet<u64>], members: &BTreeSet<u64>) -> Result<(), Error> {
    if groups.len() < 2 {
        return Err(Error::InvalidInput(
            "a partition needs at least two groups, e.g. `capkv fault partition 1,2 3`; use `capkv fault heal` to restore the network".into(),
        ));
    }
    for id in groups.iter().flatten() {
        if !members.contains(id) {
            return Err(Error::InvalidInput(format!(
                "node {id} is not a member of this cluster (members: {members:?})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn halves_cut_both_directions() {
        let f = FaultFilter::new(true);
        f.set(vec![set(&[1, 2]), set(&[3])]).unwrap();
        assert!(f.allows(1, 2) && f.allows(2, 1));
        assert!(!f.allows(1, 3) && !f.allows(3, 1) && !f.allows(2, 3));
        assert!(f.allows(3, 3));
        f.set(vec![]).unwrap();
        assert!(f.allows(1, 3));
    }

    #[test]
    fn bridges_and_unlisted_nodes() {
        let f = FaultFilter::new(true);
        f.set(vec![set(&[1, 2, 3]), set(&[3, 4, 5])]).unwrap();
        assert!(f.allows(1, 3) && f.allows(5, 3));
        assert!(!f.allows(1, 5));
        f.set(vec![set(&[1, 2]), set(&[3])]).unwrap();
        assert!(!f.allows(4, 1), "a node listed nowhere is isolated");
    }

    #[test]
    fn disabled_filter_refuses_changes() {
        let f = FaultFilter::new(false);
        assert_eq!(f.set(vec![set(&[1])]).unwrap_err().exit_code(), 3);
        assert!(f.allows(1, 2));
        assert_eq!(f.set_clock_offset(500).unwrap_err().exit_code(), 3);
        assert_eq!(f.clock().offset_ms(), 0, "a refused offset changes nothing");
    }

    #[test]
    fn clock_offset_is_shared_with_whoever_holds_the_clock() {
        let f = FaultFilter::new(true);
        let clock = f.clock().clone();
        f.set_clock_offset(-250).unwrap();
        assert_eq!(clock.apply(1_000), 750);
        f.set_clock_offset(0).unwrap();
        assert_eq!(clock.apply(1_000), 1_000);
    }

    #[test]
    fn clock_offsets_beyond_a_day_are_refused_whoever_asks() {
        let f = FaultFilter::new(true);
        f.set_clock_offset(CLOCK_OFFSET_MS_MAX).unwrap();
        f.set_clock_offset(-CLOCK_OFFSET_MS_MAX).unwrap();
        assert_eq!(f.clock().offset_ms(), -CLOCK_OFFSET_MS_MAX);
        for bad in [CLOCK_OFFSET_MS_MAX + 1, -CLOCK_OFFSET_MS_MAX - 1, i64::MAX, i64::MIN] {
            let err = f.set_clock_offset(bad).unwrap_err();
            assert_eq!(err.exit_code(), 5, "{bad} is invalid input: {err}");
            assert!(err.to_string().contains("one day"), "{err}");
        }
        assert_eq!(
            f.clock().offset_ms(),
            -CLOCK_OFFSET_MS_MAX,
            "a refused offset changes nothing"
        );
        let off = FaultFilter::new(false);
        assert_eq!(
            off.set_clock_offset(i64::MIN).unwrap_err().exit_code(),
            5,
            "the bound comes first"
        );
    }

    #[test]
    fn groups_parse_and_validate() {
        assert_eq!(parse_group("1,2").unwrap(), set(&[1, 2]));
        assert!(parse_group("1,x").is_err());
        assert!(parse_group("").is_err());
        assert!(parse_group("0").is_err());
        let members = set(&[1, 2, 3]);
        assert!(validate_partition(&[set(&[1, 2]), set(&[3])], &members).is_ok());
        assert!(validate_partition(&[set(&[1, 2, 3])], &members).is_err());
        assert!(validate_partition(&[set(&[1]), set(&[9])], &members).is_err());
    }
}
