//! The ap register checker: convergence, the LWW winner, stale reads and LWW losses.
//!
//! An ap keyspace promises availability, not linearizability, so this checker asks what an ap
//! store does promise, and measures what it trades away:
//!
//! * **convergence** (checked): after the final heal, every node returns the same value for every
//!   key (`divergence` otherwise);
//! * **the LWW winner** (checked): that value carries the highest (HLC timestamp, node id) among
//!   the writes that may have happened. An acknowledged write with a higher version than the final
//!   value was lost although it should have won (`lost-write`); a final value no client wrote is a
//!   `phantom-value`; a key with acknowledged writes that ends absent is a `lost-write` too;
//! * **stale reads** (measured): a read is stale when it returns a value older (by version) than
//!   the newest write acknowledged before the read began, or nothing although such a write exists.
//!   Counted separately for reads invoked during a fault window and outside them;
//! * **LWW-lost writes** (measured): acknowledged writes that no read ever observed (during the
//!   run or in the final reads) and that a *concurrent* write with a higher version superseded
//!   (one invoked before the lost write was acknowledged). This is what concurrent writers, for
//!   example on both sides of a partition, lose under last-writer-wins; a write simply followed by
//!   a later write is not counted.
//!
//! Versions come from the runner: every acknowledged put returns its version and every read
//! returns the version of the value it saw; values are unique per run, so a value names its write.
//!
//! # Caveats
//!
//! * Reads sample the register; a concurrent write that was overwritten before any read sampled it
//!   counts as lost even if, in some execution, it was briefly visible.
//! * Writes of unknown outcome whose value nobody observed have no known version; they cannot be
//!   the final winner's rival in the `lost-write` check (they may never have happened).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::history::{Kind, Op, F};
use crate::pairing::{pair_events, Outcome};
use crate::results::{Anomaly, StaleCount};

/// An ap version, ordered as capkv's LWW merge orders them: (physical ms, logical, node id).
pub type Stamp = (u64, u32, u64);

/// One node's final (local) read of one key after the heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalRead {
    /// The node whose replica answered.
    pub node: u64,
    /// The key.
    pub key: String,
    /// The value (`None`: not found).
    pub value: Option<String>,
    /// Its version, when found.
    pub version: Option<Stamp>,
}

/// What the ap checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApOutcome {
    /// Convergence and winner violations (these make the run invalid).
    pub anomalies: Vec<Anomaly>,
    /// Stale reads among reads invoked inside fault windows.
    pub stale_during: StaleCount,
    /// Stale reads among the other reads.
    pub stale_outside: StaleCount,
    /// Acknowledged writes never observed and superseded by a higher version.
    pub lww_lost_writes: u64,
    /// Keys whose nodes disagree after recovery.
    pub diverged_keys: u64,
    /// A few stale reads, as examples (not failures).
    pub stale_examples: Vec<Anomaly>,
}

/// Most stale-read examples kept.
const STALE_EXAMPLES_MAX: usize = 10;

struct Write {
    value: String,
    call: u64,
    ret: Option<u64>,
    acked: bool,
    index: u64,
}

struct Read {
    call: u64,
    ret: u64,
    time_ns: u64,
    value: Option<String>,
}

/// Checks an ap register history. `versions` maps every value to the version capkv gave its
/// write; `during(t_ns)` says whether an invocation at `t_ns` fell inside a fault window.
pub fn check(
    history: &[Op],
    versions: &HashMap<String, Stamp>,
    finals: &[FinalRead],
    during: impl Fn(u64) -> bool,
) -> ApOutcome {
    let mut writes: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    let mut reads: BTreeMap<&str, Vec<Read>> = BTreeMap::new();
    for e in pair_events(history) {
        let key = e.invoke.key.as_str();
        match (e.invoke.f, e.outcome()) {
            (F::Write, Outcome::Ok | Outcome::Unknown) => writes.entry(key).or_default().push(Write {
                value: e.argument().unwrap_or_default().to_owned(),
                call: e.invoke.index,
                ret: e.completion.filter(|c| c.kind == Kind::Ok).map(|c| c.index),
                acked: e.outcome() == Outcome::Ok,
                index: e.invoke.index,
            }),
            (F::Read, Outcome::Ok) => reads.entry(key).or_default().push(Read {
                call: e.invoke.index,
                ret: e.completion.map(|c| c.index).unwrap_or(e.invoke.index),
                time_ns: e.invoke.time_ns,
                value: e.result().map(str::to_owned),
            }),
            _ => {}
        }
    }
    let mut out = ApOutcome::default();
    let observed: BTreeSet<&str> = reads
        .values()
        .flatten()
        .filter_map(|r| r.value.as_deref())
        .chain(finals.iter().filter_map(|f| f.value.as_deref()))
        .collect();
    for (key, rs) in &reads {
        let ws = writes.get(key).map(Vec::as_slice).unwrap_or_default();
        stale_reads(key, rs, ws, versions, &during, &mut out);
    }
    let mut final_by_key: BTreeMap<&str, Vec<&FinalRead>> = BTreeMap::new();
    for f in finals {
        final_by_key.entry(f.key.as_str()).or_default().push(f);
    }
    for (key, fs) in final_by_key {
        let ws = writes.get(key).map(Vec::as_slice).unwrap_or_default();
        final_state(key, &fs, ws, versions, &observed, &mut out);
    }
    out
}

fn stale_reads(
    key: &str,
    reads: &[Read],
    writes: &[Write],
    versions: &HashMap<String, Stamp>,
    during: &impl Fn(u64) -> bool,
    out: &mut ApOutcome,
) {
    for r in reads {
        let newest = writes
            .iter()
            .filter(|w| w.acked && w.ret.is_some_and(|ret| ret < r.call))
            .filter_map(|w| versions.get(&w.value).map(|v| (*v, w)))
            .max_by_key(|(v, _)| *v);
        let seen = r.value.as_ref().and_then(|v| versions.get(v)).copied();
        let stale = match (newest, seen) {
            (Some((n, _)), Some(s)) => s < n,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let count = if during(r.time_ns) {
            &mut out.stale_during
        } else {
            &mut out.stale_outside
        };
        count.reads += 1;
        if stale {
            count.stale += 1;
            if out.stale_examples.len() < STALE_EXAMPLES_MAX {
                let (_, w) = newest.expect("stale implies a newer acknowledged write");
                out.stale_examples.push(Anomaly::new(
                    "stale-read",
                    key,
                    format!(
                        "read returned {:?} although write {:?} was acknowledged before the read began",
                        r.value, w.value
                    ),
                    vec![w.index, r.call, r.ret],
                ));
            }
        }
    }
}

fn final_state(
    key: &str,
    finals: &[&FinalRead],
    writes: &[Write],
    versions: &HashMap<String, Stamp>,
    observed: &BTreeSet<&str>,
    out: &mut ApOutcome,
) {
    let values: BTreeSet<&Option<String>> = finals.iter().map(|f| &f.value).collect();
    if values.len() > 1 {
        out.diverged_keys += 1;
        let per_node: Vec<String> = finals
            .iter()
            .map(|f| format!("node {}: {:?}", f.node, f.value))
            .collect();
        out.anomalies.push(Anomaly::new(
            "divergence",
            key,
            format!("nodes disagree after recovery: {}", per_node.join(", ")),
            Vec::new(),
        ));
        return;
    }
    let value = finals[0].value.as_deref();
    let final_version = finals[0]
        .version
        .or_else(|| value.and_then(|v| versions.get(v).copied()));
    if let Some(v) = value {
        if !writes.iter().any(|w| w.value == v) {
            out.anomalies.push(Anomaly::new(
                "phantom-value",
                key,
                format!("every node returns {v:?}, which no client wrote to this key"),
                Vec::new(),
            ));
            return;
        }
    }
    let mut lost_to_winner = Vec::new();
    for w in writes.iter().filter(|w| w.acked && Some(w.value.as_str()) != value) {
        let version = versions.get(&w.value).copied();
        match (version, final_version) {
            (Some(wv), Some(fv)) if wv > fv => lost_to_winner.push(w.index),
            (_, None) => lost_to_winner.push(w.index),
            (Some(wv), _)
                if !observed.contains(w.value.as_str()) && superseded_concurrently(w, wv, writes, versions) =>
            {
                out.lww_lost_writes += 1
            }
            _ => {}
        }
    }
    if !lost_to_winner.is_empty() {
        out.anomalies.push(Anomaly::new(
            "lost-write",
            key,
            format!(
                "{} acknowledged write(s) with a higher (HLC, node) version than the final value {value:?} are gone",
                lost_to_winner.len()
            ),
            lost_to_winner,
        ));
    }
}

/// Whether a write with a higher version than `w` was invoked before `w` was acknowledged.
fn superseded_concurrently(w: &Write, version: Stamp, writes: &[Write], versions: &HashMap<String, Stamp>) -> bool {
    let acked_at = w.ret.unwrap_or(u64::MAX);
    writes
        .iter()
        .any(|o| o.call < acked_at && versions.get(&o.value).is_some_and(|ov| *ov > version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    fn fin(node: u64, key: &str, value: Option<&str>, version: Option<Stamp>) -> FinalRead {
        FinalRead {
            node,
            key: key.into(),
            value: value.map(Into::into),
            version,
        }
    }

    fn versions(pairs: &[(&str, Stamp)]) -> HashMap<String, Stamp> {
        pairs.iter().map(|(v, s)| (v.to_string(), *s)).collect()
    }

    #[test]
    fn converged_highest_version_is_valid_and_counts_lww_losses() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        r.invoke_write(1, "k", "b");
        r.ok(0);
        r.ok(1);
        let v = versions(&[("a", (100, 0, 1)), ("b", (90, 0, 2))]);
        let finals = [
            fin(1, "k", Some("a"), Some((100, 0, 1))),
            fin(2, "k", Some("a"), Some((100, 0, 1))),
        ];
        let out = check(r.ops(), &v, &finals, |_| false);
        assert!(out.anomalies.is_empty(), "{:?}", out.anomalies);
        assert_eq!(
            out.lww_lost_writes, 1,
            "b lost by timestamp to a concurrent write and was never read"
        );
        let mut seq = Recorder::new();
        seq.invoke_write(0, "k", "b");
        seq.ok(0);
        seq.invoke_write(0, "k", "a");
        seq.ok(0);
        let out = check(seq.ops(), &v, &finals, |_| false);
        assert_eq!(out.lww_lost_writes, 0, "a sequential overwrite is not an LWW loss");
        assert_eq!(out.diverged_keys, 0);
    }

    #[test]
    fn divergence_is_rejected() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        r.ok(0);
        let v = versions(&[("a", (1, 0, 1))]);
        let finals = [fin(1, "k", Some("a"), Some((1, 0, 1))), fin(2, "k", None, None)];
        let out = check(r.ops(), &v, &finals, |_| false);
        assert_eq!(out.diverged_keys, 1);
        assert_eq!(out.anomalies[0].kind, "divergence");
    }

    #[test]
    fn lost_winner_and_phantom_are_rejected() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        r.ok(0);
        r.invoke_write(0, "k", "b");
        r.ok(0);
        let v = versions(&[("a", (1, 0, 1)), ("b", (2, 0, 1))]);
        let lost = check(r.ops(), &v, &[fin(1, "k", Some("a"), Some((1, 0, 1)))], |_| false);
        assert_eq!(lost.anomalies.len(), 1);
        assert_eq!(lost.anomalies[0].kind, "lost-write");
        assert_eq!(lost.anomalies[0].ops, vec![2]);
        let absent = check(r.ops(), &v, &[fin(1, "k", None, None)], |_| false);
        assert_eq!(absent.anomalies[0].kind, "lost-write");
        let phantom = check(r.ops(), &v, &[fin(1, "k", Some("zz"), Some((9, 0, 1)))], |_| false);
        assert_eq!(phantom.anomalies[0].kind, "phantom-value");
    }

    #[test]
    fn unknown_write_may_win() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        r.ok(0);
        r.invoke_write(1, "k", "b");
        r.info(1);
        let v = versions(&[("a", (1, 0, 1)), ("b", (2, 0, 3))]);
        let out = check(r.ops(), &v, &[fin(1, "k", Some("b"), Some((2, 0, 3)))], |_| false);
        assert!(out.anomalies.is_empty(), "{:?}", out.anomalies);
    }

    #[test]
    fn stale_reads_are_counted_by_period() {
        let mut r = Recorder::new();
        r.at(0).invoke_write(0, "k", "a");
        r.ok(0);
        r.invoke_write(0, "k", "b");
        r.ok(0);
        r.at(100).invoke_read(1, "k");
        r.ok_read(1, Some("a")); // stale, during
        r.at(200).invoke_read(1, "k");
        r.ok_read(1, Some("b")); // fresh, outside
        r.at(300).invoke_read(1, "k");
        r.ok_read(1, None); // stale (nothing), outside
        let v = versions(&[("a", (1, 0, 1)), ("b", (2, 0, 1))]);
        let out = check(r.ops(), &v, &[fin(1, "k", Some("b"), Some((2, 0, 1)))], |t| t == 100);
        assert_eq!(out.stale_during, StaleCount { reads: 1, stale: 1 });
        assert_eq!(out.stale_outside, StaleCount { reads: 2, stale: 1 });
        assert!(out.anomalies.is_empty(), "stale reads are measured, not failures in ap");
        assert_eq!(out.stale_examples.len(), 2);
    }
}
