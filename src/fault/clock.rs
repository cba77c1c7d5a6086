//! Clock-skew injection: an offset added to one node's wall clock, set by `capkv fault clock`
//! and cleared by `capkv fault heal`.
//!
//! The AP replica reads its wall clock through [`ClockSkew::apply`], so a skewed node stamps its
//! writes as if its clock ran ahead (or behind) and last-writer-wins shows the effect. The CP path
//! does not read it: Raft orders writes by log position, not by time.
//!
//! CAVEATS: the offset shifts only this process's view of the wall clock; it is not persisted,
//! so a restarted node runs with offset 0. A negative offset never takes the clock below 0.

use std::sync::atomic::{AtomicI64, Ordering};

/// The injected offset of this node's wall clock, in milliseconds (0: no skew).
#[derive(Debug, Default)]
pub struct ClockSkew {
    offset_ms: AtomicI64,
}

impl ClockSkew {
    /// Shifts the clock by `offset_ms` from now on; 0 restores it.
    pub fn set(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// `wall_ms` as this node sees it: shifted by the offset, never below 0.
    pub fn apply(&self, wall_ms: u64) -> u64 {
        (wall_ms as i64).saturating_add(self.offset_ms()).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_shifts_both_ways_and_clears() {
        let skew = ClockSkew::default();
        assert_eq!(skew.apply(1_000), 1_000);
        skew.set(500);
        assert_eq!((skew.offset_ms(), skew.apply(1_000)), (500, 1_500));
        skew.set(-400);
        assert_eq!(skew.apply(1_000), 600);
        skew.set(-5_000);
        assert_eq!(skew.apply(1_000), 0, "the clock never goes below 0");
        skew.set(0);
        assert_eq!(skew.apply(1_000), 1_000);
    }
}
