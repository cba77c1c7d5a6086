//! Clock-skew injection: an offset added to one node's wall clock, set by `capkv fault clock`
//! and cleared by `capkv fault heal`.
//!
//! The AP replica reads its wall clock through [`ClockSkew::apply`], so a skewed node stamps its
//! writes as if its clock ran ahead (or behind) and last-writer-wins shows the effect. The CP path
//! does not read it: Raft orders writes by log position, not by time.
//!
//! The AP replica bounds how far its clock may run from the wall clock (`--max-clock-offset-ms`),
//! so it reads the offset through [`ClockSkew::apply_bounded`]: an offset beyond the bound (say
//! `capkv fault clock 3 +24h` with a 500 ms bound) moves its timestamps only as far as the bound.
//! Peers refuse timestamps further ahead than that anyway, so a larger shift could only make the
//! node's writes unreplicable; the clamp keeps the fault observable (its writes win conflicts
//! for up to the bound) without letting it drag other clocks ahead.
//!
//! CAVEATS: the offset shifts only this process's view of the wall clock; it is not persisted,
//! so a restarted node runs with offset 0. A negative offset never takes the clock below 0.
//! `capkv fault status` shows the offset that was set, not the clamped one.

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
        shift(wall_ms, self.offset_ms())
    }

    /// `wall_ms` shifted by the offset clamped to `max_offset_ms` either way.
    pub fn apply_bounded(&self, wall_ms: u64, max_offset_ms: u64) -> u64 {
        let bound = i64::try_from(max_offset_ms).unwrap_or(i64::MAX);
        shift(wall_ms, self.offset_ms().clamp(-bound, bound))
    }

    /// Whether the offset is beyond `max_offset_ms` (and so clamped by [`Self::apply_bounded`]).
    pub fn is_beyond(&self, max_offset_ms: u64) -> bool {
        self.offset_ms().unsigned_abs() > max_offset_ms
    }
}

/// `wall_ms` moved by `offset_ms`, saturating at 0 and `u64::MAX` (no input panics).
fn shift(wall_ms: u64, offset_ms: i64) -> u64 {
    if offset_ms >= 0 {
        wall_ms.saturating_add(offset_ms as u64)
    } else {
        wall_ms.saturating_sub(offset_ms.unsigned_abs())
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

    #[test]
    fn a_bounded_offset_is_clamped_both_ways_and_extremes_saturate() {
        let skew = ClockSkew::default();
        let day = 24 * 3600 * 1000;
        skew.set(day);
        assert!(skew.is_beyond(500));
        assert_eq!(skew.apply_bounded(10_000, 500), 10_500);
        assert_eq!(skew.apply(10_000), 10_000 + day as u64);
        skew.set(-day);
        assert_eq!(skew.apply_bounded(10_000, 500), 9_500);
        skew.set(300);
        assert!(!skew.is_beyond(500));
        assert_eq!(skew.apply_bounded(10_000, 500), 10_300, "within the bound: unchanged");
        skew.set(i64::MAX);
        assert_eq!(skew.apply(u64::MAX - 1), u64::MAX);
        assert_eq!(skew.apply_bounded(u64::MAX, u64::MAX), u64::MAX);
        skew.set(i64::MIN);
        assert_eq!(skew.apply(u64::MAX), u64::MAX - i64::MIN.unsigned_abs());
        assert_eq!(skew.apply_bounded(5, u64::MAX), 0);
    }
}
