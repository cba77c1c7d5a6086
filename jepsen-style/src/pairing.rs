//! Pairing invocations with their completions: done here, once, for every reader of a history.
//!
//! [`pair`] walks a history in order and pairs each client invocation with the next completion
//! of the same process when that completion names the same `f` and key. It never fails: what
//! cannot be paired is recorded as a [`Problem`] (an orphan completion, a mismatched completion,
//! a second invocation while one is outstanding, a non-increasing index) and skipped, and nemesis
//! events are counted apart. Its users:
//!
//! * the set, bank and ap register checkers and [`crate::stats`], through [`pair_events`] (every
//!   client invocation, with its completion when it has one);
//! * the report's plots and anomaly tables, through [`Paired`] (which also says how many events
//!   could not be paired);
//! * the linearizability checker, through [`operations`], which refuses a history with any
//!   [`Problem`] and additionally validates each value's shape, producing register
//!   [`Operation`]s.
//!
//! # Caveats
//!
//! * An invocation whose completion does not match it (another `f` or key) is kept as an
//!   operation of unknown outcome; the completion is dropped.
//! * [`pair_events`] does not validate value shapes; run [`operations`] for that on register
//!   histories.

use std::collections::HashMap;

use crate::history::{HistoryError, Input, Kind, Op, Operation, Output, Value, F, NEMESIS_PROCESS};

/// An invocation and its completion (`None`: never completed, an unknown outcome).
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The invocation.
    pub invoke: &'a Op,
    /// The completion, if one was recorded.
    pub completion: Option<&'a Op>,
}

/// How an operation ended, from the checkers' point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
            Some(Value::Single(v)) => Some(v),
            _ => None,
        }
    }

    /// The invocation's value as a string.
    pub fn argument(&self) -> Option<&str> {
        match self.invoke.value.as_ref() {
            Some(Value::Single(v)) => Some(v),
            _ => None,
        }
    }
}

/// Something in a history that could not be paired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The history index of the offending event.
    pub index: u64,
    /// What is wrong with it.
    pub reason: String,
    /// How many client events it leaves unpaired (a mismatched pair leaves two).
    pub events: usize,
}

/// A whole history, paired.
#[derive(Clone, Debug, Default)]
pub struct Paired<'a> {
    /// Every client invocation, in invocation order, with its completion when it has one.
    pub events: Vec<Event<'a>>,
    /// Nemesis events (fault start/stop), which are not operations.
    pub nemesis: usize,
    /// What could not be paired, in history order.
    pub problems: Vec<Problem>,
}

impl Paired<'_> {
    /// The events that completed (ok, fail or info).
    pub fn completed(&self) -> impl Iterator<Item = &Event<'_>> {
        self.events.iter().filter(|e| e.completion.is_some())
    }

    /// Client events that are not part of a completed pair: invocations still running at the
    /// end, and everything listed in [`Paired::problems`].
    pub fn unpaired(&self) -> usize {
        let dangling = self.events.iter().filter(|e| e.completion.is_none()).count();
        let double_counted = self.problems.iter().filter(|p| p.events == 2).count();
        // A mismatched pair's invocation stays an event without completion, counted once above.
        dangling + self.problems.iter().map(|p| p.events).sum::<usize>() - double_counted
    }
}

/// Pairs each client invocation with the next completion of its process (see the module docs).
pub fn pair(history: &[Op]) -> Paired<'_> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut out = Paired::default();
    let mut last_index: Option<u64> = None;
    for op in history {
        if let Some(last) = last_index.filter(|&last| op.index <= last) {
            out.problems.push(Problem {
                index: op.index,
                reason: format!("index does not increase (previous index was {last})"),
                events: 0,
            });
        }
        last_index = Some(op.index);
        if op.process == NEMESIS_PROCESS || op.f.is_nemesis() {
            out.nemesis += 1;
            continue;
        }
        if op.kind == Kind::Invoke {
            if let Some(prev) = open.insert(op.process, out.events.len()) {
                out.problems.push(Problem {
                    index: op.index,
                    reason: format!(
                        "process {} invoked while its operation at index {} is still outstanding",
                        op.process, out.events[prev].invoke.index
                    ),
                    events: 0,
                });
            }
            out.events.push(Event {
                invoke: op,
                completion: None,
            });
            continue;
        }
        match open.remove(&op.process) {
            None => out.problems.push(Problem {
                index: op.index,
                reason: format!(
                    "{:?} completion for process {} with no outstanding invocation",
                    op.kind, op.process
                ),
                events: 1,
            }),
            Some(i) => {
                let invoke = out.events[i].invoke;
                if op.f == invoke.f && op.key == invoke.key {
                    out.events[i].completion = Some(op);
                } else {
                    out.problems.push(Problem {
                        index: op.index,
                        reason: format!(
                            "completion ({} {:?}) does not match its invocation at index {} ({} {:?})",
                            op.f, op.key, invoke.index, invoke.f, invoke.key
                        ),
                        events: 2,
                    });
                }
            }
        }
    }
    out
}

/// Every client invocation with its completion, if any, in invocation order (see [`pair`]).
pub fn pair_events(history: &[Op]) -> Vec<Event<'_>> {
    pair(history).events
}

fn malformed<T>(index: u64, reason: impl Into<String>) -> Result<T, HistoryError> {
    Err(HistoryError::Malformed {
        index,
        reason: reason.into(),
    })
}

/// Pairs every invocation with its process's next completion.
///
/// * `ok` completions produce an [`Operation`] with a known output and `ret = Some(index)`;
/// * `fail` completions are dropped: the operation definitely did not happen, so it plays no
///   part in any execution the checkers consider;
/// * `info` completions, and invocations still outstanding at the end of the history, produce an
///   [`Operation`] with [`Output::Unknown`] and `ret = None`;
/// * nemesis events ([`F::Start`], [`F::Stop`]) are skipped. Set and bank operations ([`F::Add`],
///   [`F::Transfer`]) are not register operations and are reported as malformed: filter them out
///   first (their checkers pair them with [`pair_events`]).
///
/// The result is sorted by invocation index.
///
/// # Errors
///
/// [`HistoryError::Malformed`] when indices are not strictly increasing, a process invokes while
/// it still has an operation outstanding, a completion has no matching invocation or names a
/// different `f` or `key` than its invocation, a value has the wrong shape for its `f`, or an
/// `ok` write/cas echoes a different value than was invoked.
pub fn operations(history: &[Op]) -> Result<Vec<Operation>, HistoryError> {
    let paired = pair(history);
    if let Some(p) = paired.problems.first() {
        return malformed(p.index, p.reason.clone());
    }
    let mut out = Vec::with_capacity(paired.events.len());
    for e in &paired.events {
        let invoke = e.invoke;
        if invoke.succeeded.is_some() {
            return malformed(invoke.index, "`succeeded` on an invocation");
        }
        let input = match (invoke.f, &invoke.value) {
            (F::Read, None) => Input::Read,
            (F::Write, Some(Value::Single(v))) => Input::Write(v.clone()),
            (F::Cas, Some(Value::Cas { expected, new })) => Input::Cas {
                expected: expected.clone(),
                new: new.clone(),
            },
            (f, v) => return malformed(invoke.index, format!("invalid value {v:?} for a {f} invocation")),
        };
        let Some(op) = e.completion else {
            out.push(Operation {
                process: invoke.process,
                key: invoke.key.clone(),
                input,
                output: Output::Unknown,
                call: invoke.index,
                ret: None,
                call_time_ns: invoke.time_ns,
                ret_time_ns: None,
                node: invoke.node,
            });
            continue;
        };
        if op.succeeded.is_some() && !(op.kind == Kind::Ok && op.f == F::Cas) {
            return malformed(op.index, "`succeeded` is only meaningful on an ok cas");
        }
        let output = match op.kind {
            Kind::Invoke => unreachable!("pair() never completes with an invocation"),
            Kind::Fail => continue,
            Kind::Info => Output::Unknown,
            Kind::Ok => match (&input, &op.value) {
                (Input::Read, None) => Output::Read(None),
                (Input::Read, Some(Value::Single(v))) => Output::Read(Some(v.clone())),
                (Input::Write(_), None) => Output::Write,
                (Input::Write(w), Some(Value::Single(v))) if v == w => Output::Write,
                (Input::Cas { .. }, None) => Output::Cas {
                    succeeded: op.succeeded.unwrap_or(true),
                },
                (Input::Cas { expected, new }, Some(Value::Cas { expected: e, new: n }))
                    if e == expected && n == new =>
                {
                    Output::Cas {
                        succeeded: op.succeeded.unwrap_or(true),
                    }
                }
                (_, v) => {
                    return malformed(
                        op.index,
                        format!("ok {} completion carries {v:?}, inconsistent with its invocation", op.f),
                    )
                }
            },
        };
        let known = op.kind == Kind::Ok;
        out.push(Operation {
            process: invoke.process,
            key: invoke.key.clone(),
            input,
            output,
            call: invoke.index,
            ret: known.then_some(op.index),
            call_time_ns: invoke.time_ns,
            ret_time_ns: known.then_some(op.time_ns),
            node: invoke.node.or(op.node),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{parse_jsonl, Recorder};

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

    fn ev(index: u64, process: u64, kind: Kind, f: F, key: &str) -> Op {
        Op {
            index,
            time_ns: index,
            process,
            kind,
            f,
            key: key.to_owned(),
            value: None,
            node: None,
            succeeded: None,
            error: None,
        }
    }

    #[test]
    fn unpairable_events_are_problems_and_counted() {
        let h = vec![
            ev(0, 1, Kind::Invoke, F::Read, "k"),
            ev(1, 1, Kind::Ok, F::Read, "k"),
            ev(2, 99, Kind::Info, F::Write, "x"), // orphan
            ev(3, 7, Kind::Invoke, F::Read, "k"),
            ev(4, 7, Kind::Ok, F::Write, "k"), // mismatched f
            ev(5, NEMESIS_PROCESS, Kind::Info, F::Start, "partition-halves"),
            ev(6, 8, Kind::Invoke, F::Read, "a"), // never completes
            ev(7, NEMESIS_PROCESS, Kind::Info, F::Stop, "partition-halves"),
        ];
        let p = pair(&h);
        assert_eq!(p.nemesis, 2);
        assert_eq!(p.events.len(), 3);
        assert_eq!(p.completed().count(), 1);
        assert_eq!(p.problems.iter().map(|p| p.index).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(p.unpaired(), 1 + 2 + 1);
        assert_eq!(
            p.events[1].outcome(),
            Outcome::Unknown,
            "a mismatched completion is dropped"
        );
    }

    #[test]
    fn integer_values_pair_like_strings() {
        let text = r#"
{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","value":5,"node":null}
{"index":1,"time":1,"process":0,"type":"ok","f":"write","key":"k","value":"5"}
"#;
        let ops = operations(&parse_jsonl(text).unwrap()).unwrap();
        assert_eq!(ops[0].output, Output::Write);
    }

    fn ok_read_op(index: u64, process: u64, key: &str, value: Option<&str>) -> Op {
        Op {
            index,
            time_ns: index * 10,
            process,
            kind: Kind::Ok,
            f: F::Read,
            key: key.to_owned(),
            value: value.map(Value::single),
            node: Some(1),
            succeeded: None,
            error: None,
        }
    }

    #[test]
    fn pairing_ok_fail_info_and_dangling() {
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a"); // 0
        r.invoke_read(1, "k"); // 1
        r.ok(0); // 2
        r.fail(1); // 3: dropped
        r.invoke_cas(0, "k", Some("a"), "b"); // 4
        r.info(0); // 5: unknown
        r.invoke_read(2, "k"); // 6
        r.ok_read(2, Some("b")); // 7
        r.invoke_write(3, "k", "c"); // 8: never completes
        let ops = operations(r.ops()).unwrap();
        assert_eq!(ops.len(), 4, "the failed read is dropped: {ops:#?}");
        assert_eq!((ops[0].call, ops[0].ret, &ops[0].output), (0, Some(2), &Output::Write));
        assert_eq!(ops[0].input, Input::Write("a".to_owned()));
        assert_eq!((ops[1].call, ops[1].ret, &ops[1].output), (4, None, &Output::Unknown));
        assert_eq!(ops[1].f(), F::Cas);
        assert_eq!(ops[2].output, Output::Read(Some("b".to_owned())));
        assert_eq!((ops[3].call, ops[3].ret, &ops[3].output), (8, None, &Output::Unknown));
        assert!(ops[3].is_unknown());
    }

    #[test]
    fn ok_cas_without_succeeded_means_swapped() {
        let mut r = Recorder::new();
        r.invoke_cas(0, "k", None, "x");
        r.ok(0);
        let ops = operations(r.ops()).unwrap();
        assert_eq!(ops[0].output, Output::Cas { succeeded: true });
    }

    #[test]
    fn pairing_rejects_malformed_histories() {
        // Completion without invocation.
        let orphan = vec![ok_read_op(0, 0, "k", None)];
        assert!(matches!(
            operations(&orphan),
            Err(HistoryError::Malformed { index: 0, .. })
        ));

        // Two outstanding operations on one process.
        let mut r = Recorder::new();
        r.invoke_read(0, "k");
        let mut ops = r.into_ops();
        let mut second = ops[0].clone();
        second.index = 1;
        ops.push(second);
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 1, .. })
        ));

        // Non-increasing indices.
        let mut r = Recorder::new();
        r.invoke_read(0, "k");
        r.ok_read(0, None);
        let mut ops = r.into_ops();
        ops[1].index = 0;
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 0, .. })
        ));

        // Completion for a different key.
        let mut r = Recorder::new();
        r.invoke_read(0, "k");
        r.ok_read(0, None);
        let mut ops = r.into_ops();
        ops[1].key = "other".to_owned();
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 1, .. })
        ));

        // A write completing with a different value than it wrote.
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        r.ok(0);
        let mut ops = r.into_ops();
        ops[1].value = Some(Value::single("b"));
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 1, .. })
        ));

        // A write invoked without a value, and a cas invoked with a single value.
        let mut r = Recorder::new();
        r.invoke_write(0, "k", "a");
        let mut ops = r.into_ops();
        ops[0].value = None;
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 0, .. })
        ));
        ops[0].f = F::Cas;
        ops[0].value = Some(Value::single("a"));
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 0, .. })
        ));

        // `succeeded` on a read.
        let mut r = Recorder::new();
        r.invoke_read(0, "k");
        r.ok_read(0, None);
        let mut ops = r.into_ops();
        ops[1].succeeded = Some(true);
        assert!(matches!(
            operations(&ops),
            Err(HistoryError::Malformed { index: 1, .. })
        ));
    }

    #[test]
    fn operation_display_is_readable() {
        let mut r = Recorder::new();
        r.invoke_cas(2, "k", None, "b");
        r.ok_cas(2, false);
        r.invoke_read(1, "k");
        let ops = operations(r.ops()).unwrap();
        assert_eq!(
            ops[0].to_string(),
            r#"[0..1] process 2 key "k": cas absent -> "b" => ok (mismatch, not swapped)"#
        );
        assert_eq!(
            ops[1].to_string(),
            r#"[2..?] process 1 key "k": read => unknown outcome"#
        );
    }
}
