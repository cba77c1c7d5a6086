//! The set workload's checker: which added elements survived, and which reads missed them.
//!
//! Clients add unique elements to one key by read-modify-write (cp: read then `cas`; ap: read
//! then `put`). Reads return the whole set, stored as comma-separated elements. History shape:
//! `add` invocations carry the element as `value`; `read` completions carry the set.
//!
//! Per element:
//! * **lost**: its add was acknowledged but a final read (on some node) does not hold it;
//! * **stale**: it is in the final reads, but a read that began after its add was acknowledged
//!   did not hold it;
//! * **never read**: its add has an unknown outcome and no read ever held it (it may never have
//!   happened; not an error);
//! * **unexpected**: a read holds an element nobody tried to add (always an error).
//!
//! cp keyspaces must lose nothing and show no stale element (`strict`); on ap keyspaces
//! concurrent read-modify-writes on different nodes lose elements by last-writer-wins, so lost and
//! stale elements are measured and reported, not failures.
//!
//! Caveat: a final read is taken on every node; "lost" means missing from at least one of them.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, F};
use crate::pairing::{pair_events, Outcome};
use crate::results::Anomaly;

/// What the set checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOutcome {
    /// Elements whose add was acknowledged.
    pub added: u64,
    /// Acknowledged elements missing from a final read.
    pub lost: u64,
    /// Elements a read missed after their add was acknowledged, though they survive.
    pub stale: u64,
    /// Unknown adds nobody ever read.
    pub never_read: u64,
    /// Errors (only lost / stale under `strict`, and unexpected elements always).
    pub anomalies: Vec<Anomaly>,
}

/// Splits a stored set into its elements.
pub fn parse_elements(stored: Option<&str>) -> BTreeSet<String> {
    stored
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a set history for `key`. `finals` holds each node's final read of the key.
pub fn check(history: &[Op], key: &str, finals: &[(u64, Option<String>)], strict: bool) -> SetOutcome {
    let events = pair_events(history);
    let mut adds: BTreeMap<String, (Outcome, u64, Option<u64>)> = BTreeMap::new();
    let mut reads: Vec<(u64, u64, BTreeSet<String>)> = Vec::new();
    for e in events.iter().filter(|e| e.invoke.key == key) {
        match (e.invoke.f, e.outcome()) {
            (F::Add, outcome) => {
                let element = e.argument().unwrap_or_default().to_owned();
                let ret = e.completion.filter(|_| outcome == Outcome::Ok).map(|c| c.index);
                adds.insert(element, (outcome, e.invoke.index, ret));
            }
            (F::Read, Outcome::Ok) => {
                let ret = e.completion.map(|c| c.index).unwrap_or(e.invoke.index);
                reads.push((e.invoke.index, ret, parse_elements(e.result())));
            }
            _ => {}
        }
    }
    let final_sets: Vec<BTreeSet<String>> = finals.iter().map(|(_, v)| parse_elements(v.as_deref())).collect();
    let in_all_finals = |e: &str| !final_sets.is_empty() && final_sets.iter().all(|s| s.contains(e));
    let ever_read = |e: &str| reads.iter().any(|(_, _, s)| s.contains(e)) || final_sets.iter().any(|s| s.contains(e));

    let mut out = SetOutcome::default();
    let (mut lost_ops, mut stale_ops) = (Vec::new(), Vec::new());
    for (element, (outcome, call, ret)) in &adds {
        match outcome {
            Outcome::Ok => {
                out.added += 1;
                let ret = ret.expect("an ok add has a completion");
                if !in_all_finals(element) {
                    out.lost += 1;
                    lost_ops.push(*call);
                } else if let Some((rc, rr, _)) =
                    reads.iter().find(|(rcall, _, s)| *rcall > ret && !s.contains(element))
                {
                    out.stale += 1;
                    stale_ops.extend([*call, *rc, *rr]);
                }
            }
            Outcome::Unknown if !ever_read(element) => out.never_read += 1,
            _ => {}
        }
    }
    let unexpected: BTreeSet<&String> = reads
        .iter()
        .map(|(_, _, s)| s)
        .chain(final_sets.iter())
        .flatten()
        .filter(|e| !adds.contains_key(*e))
        .collect();
    if !unexpected.is_empty() {
        out.anomalies.push(Anomaly::new(
            "unexpected-element",
            key,
            format!("reads hold elements nobody added: {unexpected:?}"),
            Vec::new(),
        ));
    }
    if strict && out.lost > 0 {
        out.anomalies.push(Anomaly::new(
            "lost-element",
            key,
            format!("{} acknowledged element(s) are missing from the final reads", out.lost),
            lost_ops,
        ));
    }
    if strict && out.stale > 0 {
        out.anomalies.push(Anomaly::new(
            "stale-read",
            key,
            format!(
                "{} element(s) were missing from a read that began after their add was acknowledged",
                out.stale
            ),
            stale_ops,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Kind, Value};

    /// A tiny set-history builder: (process, kind, f, value).
    fn history(events: &[(u64, Kind, F, Option<&str>)]) -> Vec<Op> {
        events
            .iter()
            .enumerate()
            .map(|(i, (p, kind, f, v))| Op {
                index: i as u64,
                time_ns: i as u64,
                process: *p,
                kind: *kind,
                f: *f,
                key: "s".into(),
                value: v.map(Value::single),
                node: Some(1),
                succeeded: None,
                error: None,
            })
            .collect()
    }

    fn finals(v: &str) -> Vec<(u64, Option<String>)> {
        vec![(1, Some(v.into())), (2, Some(v.into()))]
    }

    #[test]
    fn all_elements_present_is_valid() {
        let h = history(&[
            (0, Kind::Invoke, F::Add, Some("1")),
            (0, Kind::Ok, F::Add, Some("1")),
            (1, Kind::Invoke, F::Add, Some("2")),
            (1, Kind::Info, F::Add, Some("2")),
            (2, Kind::Invoke, F::Add, Some("3")),
            (2, Kind::Info, F::Add, Some("3")),
            (0, Kind::Invoke, F::Read, None),
            (0, Kind::Ok, F::Read, Some("1,2")),
        ]);
        let out = check(&h, "s", &finals("1,2"), true);
        assert!(out.anomalies.is_empty(), "{:?}", out.anomalies);
        assert_eq!((out.added, out.lost, out.stale, out.never_read), (1, 0, 0, 1));
    }

    #[test]
    fn lost_element_is_rejected_in_cp_and_measured_in_ap() {
        let h = history(&[
            (0, Kind::Invoke, F::Add, Some("1")),
            (0, Kind::Ok, F::Add, Some("1")),
            (1, Kind::Invoke, F::Add, Some("2")),
            (1, Kind::Ok, F::Add, Some("2")),
        ]);
        let cp = check(&h, "s", &finals("2"), true);
        assert_eq!(cp.lost, 1);
        assert_eq!(cp.anomalies[0].kind, "lost-element");
        assert_eq!(cp.anomalies[0].ops, vec![0]);
        let ap = check(&h, "s", &finals("2"), false);
        assert_eq!(ap.lost, 1);
        assert!(ap.anomalies.is_empty());
    }

    #[test]
    fn stale_and_unexpected_elements_are_rejected() {
        let h = history(&[
            (0, Kind::Invoke, F::Add, Some("1")),
            (0, Kind::Ok, F::Add, Some("1")),
            (1, Kind::Invoke, F::Read, None),
            (1, Kind::Ok, F::Read, Some("")),
        ]);
        let out = check(&h, "s", &finals("1"), true);
        assert_eq!(out.stale, 1);
        assert_eq!(out.anomalies[0].kind, "stale-read");
        let out = check(&h, "s", &finals("1,99"), false);
        assert_eq!(out.anomalies[0].kind, "unexpected-element");
    }
}
