//! Pairing for every kind of operation, and the anomaly record all checkers report.
//!
//! [`crate::history::pair`] builds register [`crate::history::Operation`]s for the
//! linearizability checker and validates their values strictly. The set, bank and statistics code
//! needs less: each client invocation with its completion event (if any), whatever its `f`.
//! [`pair_events`] gives exactly that, skipping nemesis events.
//!
//! Caveat: [`pair_events`] does not validate shapes; run [`crate::history::pair`] for that on
//! register histories.

use std::collections::HashMap;

use serde::Serialize;

use crate::history::{Kind, Op};

/// An invocation and its completion (`None`: never completed, an unknown outcome).
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The invocation.
    pub invoke: &'a Op,
    /// The completion, if one was recorded.
    pub completion: Option<&'a Op>,
}

/// How an operation ended, from the checkers' point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed `ok`.
    Ok,
    /// Completed `fail`: definitely not applied.
    Fail,
    /// `info`, or no completion: may or may not have been applied.
    Unknown,
}

impl Event<'_> {
    /// The outcome of this operation.
    pub fn outcome(&self) -> Outcome {
        match self.completion.map(|c| c.kind) {
            Some(Kind::Ok) => Outcome::Ok,
            Some(Kind::Fail) => Outcome::Fail,
            _ => Outcome::Unknown,
        }
    }

    /// Latency in ns, when the operation completed (ok, fail or info).
    pub fn latency_ns(&self) -> Option<u64> {
        self.completion.map(|c| c.time_ns.saturating_sub(self.invoke.time_ns))
    }

    /// The completion's value as a string (`None` when absent or not a single value).
    pub fn result(&self) -> Option<&str> {
        match self.completion.and_then(|c| c.value.as_ref()) {
            Some(crate::history::Value::Single(v)) => Some(v),
            _ => None,
        }
    }

    /// The invocation's value as a string.
    pub fn argument(&self) -> Option<&str> {
        match self.invoke.value.as_ref() {
            Some(crate::history::Value::Single(v)) => Some(v),
            _ => None,
        }
    }
}

/// Pairs each client invocation with the next completion of its process, in invocation order.
pub fn pair_events(history: &[Op]) -> Vec<Event<'_>> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<Event<'_>> = Vec::new();
    for op in history.iter().filter(|op| !op.f.is_nemesis()) {
        if op.kind == Kind::Invoke {
            open.insert(op.process, out.len());
            out.push(Event {
                invoke: op,
                completion: None,
            });
        } else if let Some(i) = open.remove(&op.process) {
            out[i].completion = Some(op);
        }
    }
    out
}

/// One anomaly, in the shape `results.json` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// What went wrong, e.g. `linearizability`, `stale-read`, `lost-write`, `divergence`.
    pub kind: String,
    /// The key (or set / account group) it concerns.
    pub key: String,
    /// A sentence for humans.
    pub detail: String,
    /// History indexes of the operations involved.
    pub ops: Vec<u64>,
}

/// Most op indexes listed in one anomaly (a lost-element anomaly may concern thousands).
pub const ANOMALY_OPS_MAX: usize = 50;

impl Anomaly {
    /// An anomaly; `ops` is cut to [`ANOMALY_OPS_MAX`].
    pub fn new(kind: &str, key: &str, detail: impl Into<String>, mut ops: Vec<u64>) -> Self {
        ops.truncate(ANOMALY_OPS_MAX);
        Self {
            kind: kind.into(),
            key: key.into(),
            detail: detail.into(),
            ops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    #[test]
    fn pairs_by_process_and_skips_nothing_but_nemesis() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "1");
        r.invoke_read(1, "k");
        r.ok_read(1, Some("1"));
        r.info(0);
        r.invoke_read(2, "k");
        let ops = r.into_ops();
        let events = pair_events(&ops);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].outcome(), Outcome::Unknown);
        assert_eq!(events[0].completion.unwrap().index, 3);
        assert_eq!(events[1].outcome(), Outcome::Ok);
        assert_eq!(events[1].result(), Some("1"));
        assert_eq!(events[1].latency_ns(), Some(1));
        assert!(events[2].completion.is_none());
    }
}
