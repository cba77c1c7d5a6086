//! Figures from a history: ops per phase and node, availability during faults, latency.
//!
//! # Phases
//!
//! Each client operation belongs to the phase in which it was **invoked**:
//! * `before`: before the first fault window opened;
//! * `during`: inside a fault window (`start <= t < stop`);
//! * `after`: outside every window once the first one opened (the healed gaps between windows
//!   and the healed tail after the final heal).
//!
//! # Availability
//!
//! `ok / (ok + fail + unknown)` in percent over the operations invoked during faults. A CAS that
//! ran and did not match is `ok` (the system answered). `majority` / `minority` split the
//! operations by the side the client's node was on in the window that contained the invocation;
//! faults without sides (kill, pause, clock skew) contribute to `overall` only, and a side with no
//! operations is `null`. `majority_by_op` / `minority_by_op` give the raw counts per side and op.
//!
//! Caveat: final reads done by the runner after recovery use process ids from
//! [`FINAL_PROCESS_BASE`] up and are left out of every figure here.

use std::collections::BTreeMap;

use crate::history::{Op, F};
use crate::pairing::{pair_events, Event, Outcome};
use crate::results::{round2, Availability, Counts, DuringFaults, Latency, Phase, PhaseCounts, PhaseLatency};

/// Processes at or above this id are the runner's own final reads.
pub const FINAL_PROCESS_BASE: u64 = 900_000_000;

/// A fault window as the statistics need it (times in ns since the test started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultWindow {
    /// When the fault started.
    pub start_ns: u64,
    /// When it stopped.
    pub stop_ns: u64,
    /// Nodes on the majority side (empty when the fault has no sides).
    pub majority: Vec<u64>,
    /// Nodes on the minority side.
    pub minority: Vec<u64>,
}

/// The phase of an invocation at `t_ns`.
pub fn phase(t_ns: u64, windows: &[FaultWindow]) -> Phase {
    if window_at(t_ns, windows).is_some() {
        Phase::During
    } else if windows.first().is_some_and(|w| t_ns >= w.start_ns) {
        Phase::After
    } else {
        Phase::Before
    }
}

/// The window containing `t_ns`, if any.
pub fn window_at(t_ns: u64, windows: &[FaultWindow]) -> Option<&FaultWindow> {
    windows.iter().find(|w| w.start_ns <= t_ns && t_ns < w.stop_ns)
}

fn add(counts: &mut Counts, outcome: Outcome) {
    counts.invoked += 1;
    match outcome {
        Outcome::Ok => counts.ok += 1,
        Outcome::Fail => counts.fail += 1,
        Outcome::Unknown => counts.unknown += 1,
    }
}

fn client_events(history: &[Op]) -> Vec<Event<'_>> {
    pair_events(history)
        .into_iter()
        .filter(|e| e.invoke.process < FINAL_PROCESS_BASE)
        .collect()
}

/// `ops`: counts per phase and f (every phase present); `ops_by_node`: counts per node.
pub fn op_counts(history: &[Op], windows: &[FaultWindow]) -> (PhaseCounts, BTreeMap<String, Counts>) {
    let mut by_phase: PhaseCounts = [Phase::Before, Phase::During, Phase::After]
        .into_iter()
        .map(|p| (p, BTreeMap::new()))
        .collect();
    let mut by_node: BTreeMap<String, Counts> = BTreeMap::new();
    for e in client_events(history) {
        let p = phase(e.invoke.time_ns, windows);
        add(
            by_phase.entry(p).or_default().entry(e.invoke.f).or_default(),
            e.outcome(),
        );
        let node = e.invoke.node.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        add(by_node.entry(node).or_default(), e.outcome());
    }
    (by_phase, by_node)
}

/// `availability.during_faults`.
pub fn availability(history: &[Op], windows: &[FaultWindow]) -> Availability {
    let (mut overall, mut majority, mut minority) = (Counts::default(), Counts::default(), Counts::default());
    let mut by_op: BTreeMap<F, Counts> = BTreeMap::new();
    let mut side_by_op: [BTreeMap<F, Counts>; 2] = Default::default();
    for e in client_events(history) {
        let Some(w) = window_at(e.invoke.time_ns, windows) else {
            continue;
        };
        let outcome = e.outcome();
        let f = e.invoke.f;
        add(&mut overall, outcome);
        add(by_op.entry(f).or_default(), outcome);
        if let Some(node) = e.invoke.node {
            if w.majority.contains(&node) {
                add(&mut majority, outcome);
                add(side_by_op[0].entry(f).or_default(), outcome);
            } else if w.minority.contains(&node) {
                add(&mut minority, outcome);
                add(side_by_op[1].entry(f).or_default(), outcome);
            }
        }
    }
    let [majority_by_op, minority_by_op] = side_by_op;
    Availability {
        during_faults: DuringFaults {
            overall: overall.ok_pct(),
            majority: majority.ok_pct(),
            minority: minority.ok_pct(),
            by_op: by_op.into_iter().map(|(f, c)| (f, c.ok_pct())).collect(),
            majority_by_op,
            minority_by_op,
        },
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest-rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of nothing");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `latency_ms`: per phase and f, over every completed operation (ok, fail or info).
pub fn latency(history: &[Op], windows: &[FaultWindow]) -> PhaseLatency {
    let mut samples: BTreeMap<Phase, BTreeMap<F, Vec<f64>>> = BTreeMap::new();
    for e in client_events(history) {
        if let Some(ns) = e.latency_ns() {
            let p = phase(e.invoke.time_ns, windows);
            samples
                .entry(p)
                .or_default()
                .entry(e.invoke.f)
                .or_default()
                .push(ns as f64 / 1e6);
        }
    }
    samples
        .into_iter()
        .map(|(p, fs)| {
            let fs = fs
                .into_iter()
                .map(|(f, mut v)| {
                    v.sort_by(f64::total_cmp);
                    let l = Latency {
                        count: v.len() as u64,
                        p50: round2(quantile(&v, 0.5)),
                        p99: round2(quantile(&v, 0.99)),
                        p999: round2(quantile(&v, 0.999)),
                        max: round2(*v.last().expect("non-empty")),
                    };
                    (f, l)
                })
                .collect();
            (p, fs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    fn windows() -> Vec<FaultWindow> {
        vec![FaultWindow {
            start_ns: 100,
            stop_ns: 200,
            majority: vec![1, 2, 3],
            minority: vec![4, 5],
        }]
    }

    #[test]
    fn phases() {
        let w = windows();
        assert_eq!(phase(99, &w), Phase::Before);
        assert_eq!(phase(100, &w), Phase::During);
        assert_eq!(phase(199, &w), Phase::During);
        assert_eq!(phase(200, &w), Phase::After);
        assert_eq!(phase(5, &[]), Phase::Before);
    }

    fn history() -> Vec<Op> {
        let mut r = Recorder::new();
        r.at(10).invoke_read(0, "k");
        r.at(20).ok_read(0, None); // before
        r.at(110).invoke_write(1, "k", "a"); // during, node 1 (majority)
        r.at(112).ok(1);
        r.at(120).invoke_write(2, "k", "b"); // during, node 4 (minority)
        r.at(150).fail(2);
        r.at(130).invoke_write(3, "k", "c"); // during, node 5 (minority), never completes
        r.at(300).invoke_read(FINAL_PROCESS_BASE, "k"); // excluded
        r.at(301).ok_read(FINAL_PROCESS_BASE, None);
        let mut ops = r.into_ops();
        for (i, node) in [(2, 1), (3, 1), (4, 4), (5, 4), (6, 5)] {
            ops[i].node = Some(node);
        }
        ops
    }

    #[test]
    fn availability_math_splits_sides() {
        let a = availability(&history(), &windows());
        let d = &a.during_faults;
        assert_eq!(d.overall, Some(33.33));
        assert_eq!(d.majority, Some(100.0));
        assert_eq!(d.minority, Some(0.0));
        assert_eq!(d.by_op[&F::Write], Some(33.33));
        assert_eq!(
            d.minority_by_op[&F::Write],
            Counts {
                invoked: 2,
                ok: 0,
                fail: 1,
                unknown: 1
            }
        );
        assert_eq!(d.majority_by_op[&F::Write].ok, 1);
        let none = availability(&history(), &[]);
        assert_eq!(none.during_faults.overall, None);
    }

    #[test]
    fn counts_and_latency() {
        let (ops, nodes) = op_counts(&history(), &windows());
        let count = |invoked, ok, fail, unknown| Counts {
            invoked,
            ok,
            fail,
            unknown,
        };
        assert_eq!(ops[&Phase::Before][&F::Read], count(1, 1, 0, 0));
        assert_eq!(ops[&Phase::During][&F::Write], count(3, 1, 1, 1));
        assert!(ops[&Phase::After].is_empty());
        assert_eq!(nodes["4"].fail, 1);
        let l = latency(&history(), &windows());
        assert_eq!(l[&Phase::During][&F::Write].count, 2);
        assert_eq!(l[&Phase::During][&F::Write].max, 0.0); // 30 ns rounds to 0.00 ms
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
