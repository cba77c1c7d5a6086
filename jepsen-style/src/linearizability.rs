//! A linearizability checker for a map of independent read/write/compare-and-set registers.
//!
//! # Model
//!
//! Every key is a register holding `Option<String>`; `None` means the key is absent, and every
//! key starts absent. Operations (see [`Input`] and [`Output`]):
//!
//! * a **read** that completed `ok` observed the current value (`None`: "not found");
//! * a **write** sets the value;
//! * a **cas**(expected, new) that completed `ok` with `succeeded: true` requires the current value
//!   to equal `expected` and then sets `new`; one that completed `ok` with `succeeded: false`
//!   changes nothing and requires the current value to differ from `expected`.
//!
//! Operations whose outcome is unknown (`info`, or never completed) are **optional**: they may
//! take effect at any single point after their invocation, or not at all. An unknown write or
//! cas is therefore checked as "returns at +infinity, and may be left out". An unknown read has
//! no effect on the register and constrains nothing, so it is dropped. A cas of unknown outcome
//! that "happened but did not match" is indistinguishable from one that never happened, so an
//! optional cas is only ever linearized as a successful swap. `fail`ed operations never reach the
//! checker (see [`crate::pairing::operations`]).
//!
//! # Algorithm
//!
//! Linearizability is *local* (Herlihy & Wing): a history of independent objects is
//! linearizable iff the sub-history of every object is. So the history is partitioned by key and
//! each key is checked on its own.
//!
//! For one key, the checker performs the Wing & Gong backtracking search with Lowe's memoization:
//! the operations' call and return events are put in one list sorted by history index (unknown
//! returns last, "at infinity"). Scanning from the front, an operation can be linearized next iff
//! its call comes before the first remaining return, i.e. it was invoked before every remaining
//! operation had to have returned. The search linearizes such an operation if the model accepts
//! it, removes its two events from the list and starts again from the front; when it reaches a
//! return event first, the operation that must already have happened cannot be placed, so it
//! backtracks. It succeeds when no finite return remains (every required operation is placed;
//! optional ones left over simply never happened). Lowe's improvement caches every
//! (set of linearized operations, register state) pair already reached: reaching one again
//! cannot lead anywhere new. The number of distinct configurations, rather than the number of
//! interleavings, then bounds the work, which keeps the search small for histories with bounded
//! concurrency and few unknown operations. Cached sets are stored run-length encoded, so a long
//! history whose linearized set is "everything so far, minus a few holes" costs little memory
//! per entry.
//!
//! The search is bounded by a step budget ([`DEFAULT_STEP_LIMIT`], configurable through
//! [`CheckOptions`]). Exceeding it yields [`Validity::Unknown`] for that key, never a pass.
//!
//! # Counterexamples
//!
//! For an invalid key, [`KeyVerdict::counterexample`] holds the longest prefix of operations the
//! search managed to linearize (the first such prefix found, with the register state after each
//! step) and the operations that could have gone next but which the model rejects in the state
//! the prefix leaves behind, each with the reason. For a stale read this names the read and the
//! value the register actually held.
//!
//! # Guarantees and caveats
//!
//! * Sound and complete for the model above, given a well-formed history: `Valid` means a
//!   linearization exists for every key; `Invalid` means none exists for the named key (the
//!   search exhausted every possibility); `Unknown` means the step budget ran out.
//! * Real-time order comes from history indices: the checker trusts that the runner recorded
//!   events in the order it observed them, from a single point of observation. Clock timestamps
//!   are not used.
//! * It checks safety only: not availability, latency, or that unknown operations eventually
//!   resolved. A history in which every operation failed is trivially valid.
//! * It models single-key registers with read, write and cas only: no deletes, range reads or
//!   multi-key transactions. (By locality, per-key linearizability is linearizability of the
//!   whole map, so no cross-key check is missing for these operations.) AP (eventually
//!   consistent) keyspaces are not expected to pass it.
//! * Every key is assumed to start absent. Histories against pre-populated keys must include the
//!   initial writes.
//! * A mismatched cas only contributes "current != expected"; if the store reports the value it
//!   found, that is not used (record a separate read to check it).
//! * The counterexample is the first deepest prefix found, not necessarily the most telling one
//!   when several orders were possible; the blocked operations are the ones the model rejects at
//!   that point.
//! * The problem is NP-complete in general; many concurrent unknown operations on one key make
//!   the search (and its cache, which holds one entry per explored configuration) expensive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{show_value, HistoryError, Input, Op, Operation, Output};
use crate::pairing::operations;

/// Default upper bound on search steps per key before giving up with [`Validity::Unknown`].
///
/// A step is one visit of a call or return event during the search. Memory use grows with the
/// number of steps: the memoization cache gains at most one entry per step, each the size of a
/// run-length encoded set of operations (small unless many operations are left unlinearized).
pub const DEFAULT_STEP_LIMIT: u64 = 2_000_000;

/// Tuning for [`check_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Maximum search steps per key; exceeding it makes that key [`Validity::Unknown`].
    pub step_limit: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            step_limit: DEFAULT_STEP_LIMIT,
        }
    }
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    /// A linearization exists.
    Valid,
    /// No linearization exists.
    Invalid,
    /// The search was cut off before reaching a conclusion.
    Unknown,
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Validity::Valid => "valid",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "unknown",
        })
    }
}

/// The result of checking a whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `Invalid` if any key is invalid, else `Unknown` if any key is unknown, else `Valid`.
    pub valid: Validity,
    /// Per-key results.
    pub keys: BTreeMap<String, KeyVerdict>,
}

impl Verdict {
    /// Whether the whole history is known to be linearizable.
    pub fn is_valid(&self) -> bool {
        self.valid == Validity::Valid
    }

    /// The keys found not to be linearizable.
    pub fn invalid_keys(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(|(_, v)| v.valid == Validity::Invalid)
            .map(|(k, _)| k.as_str())
    }
}

/// The result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyVerdict {
    /// The key's validity.
    pub valid: Validity,
    /// Operations that took part in the check.
    pub checked: usize,
    /// Operations dropped because they cannot constrain anything (reads of unknown outcome).
    pub dropped: usize,
    /// Search steps spent.
    pub steps: u64,
    /// For an invalid key: what could be linearized, and what could not go next.
    pub counterexample: Option<Counterexample>,
    /// Why the verdict is `Unknown`, if it is.
    pub note: Option<String>,
}

/// A human-readable explanation of why a key is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counterexample {
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<Linearized>,
    /// The register state after `prefix`.
    pub state: Option<String>,
    /// The operations that could have been linearized next in real-time order, and why the
    /// register model rejects each of them in `state`.
    pub blocked: Vec<Blocked>,
}

/// One step of a linearization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Linearized {
    /// The operation.
    pub op: Operation,
    /// The register state after applying it.
    pub state_after: Option<String>,
}

/// An operation that could not be linearized at the end of a counterexample prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// The operation.
    pub op: Operation,
    /// Why the model rejects it.
    pub reason: String,
}

/// Pairs a raw history (see [`operations`]) and checks it with default options.
///
/// # Errors
///
/// Whatever [`operations`] reports for a malformed history.
pub fn check_history(history: &[Op]) -> Result<Verdict, HistoryError> {
    Ok(check(&operations(history)?))
}

/// Checks paired operations with default options.
pub fn check(ops: &[Operation]) -> Verdict {
    check_with(ops, &CheckOptions::default())
}

/// Checks paired operations, key by key.
pub fn check_with(ops: &[Operation], options: &CheckOptions) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: BTreeMap<String, KeyVerdict> = by_key
        .into_iter()
        .map(|(key, ops)| (key.to_owned(), check_key(&ops, options.step_limit)))
        .collect();
    let any = |v: Validity| keys.values().any(|k| k.valid == v);
    let valid = if any(Validity::Invalid) {
        Validity::Invalid
    } else if any(Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    Verdict { valid, keys }
}

/// Register values interned to small integers; `ABSENT` is `None`.
type State = u32;
const ABSENT: State = 0;

#[derive(Default)]
struct Interner {
    ids: HashMap<String, State>,
    values: Vec<String>,
}

impl Interner {
    fn id(&mut self, v: Option<&str>) -> State {
        let Some(v) = v else { return ABSENT };
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        self.values.push(v.to_owned());
        let id = State::try_from(self.values.len()).expect("fewer than 2^32 distinct values");
        self.ids.insert(v.to_owned(), id);
        id
    }

    fn value(&self, id: State) -> Option<String> {
        (id != ABSENT).then(|| self.values[id as usize - 1].clone())
    }

    fn show(&self, id: State) -> String {
        show_value(self.value(id).as_deref())
    }
}

/// A register operation as the model sees it.
#[derive(Clone, Copy, Debug)]
enum Step {
    Read(State),
    Write(State),
    Cas { expected: State, new: State },
    CasMismatch { expected: State },
}

impl Step {
    /// The state after applying this step to `s`, or `None` if the model forbids it.
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(v) => (s == v).then_some(s),
            Step::Write(v) => Some(v),
            Step::Cas { expected, new } => (s == expected).then_some(new),
            Step::CasMismatch { expected } => (s != expected).then_some(s),
        }
    }

    fn explain_rejection(self, s: State, values: &Interner) -> String {
        let held = values.show(s);
        match self {
            Step::Read(v) => format!("read observed {} but the register held {held}", values.show(v)),
            Step::Write(_) => "a write is always allowed (unexpected)".to_owned(),
            Step::Cas { expected, .. } => {
                format!("cas expected {} but the register held {held}", values.show(expected))
            }
            Step::CasMismatch { expected } => format!(
                "cas reported a mismatch, but the register held the expected value {}",
                values.show(expected)
            ),
        }
    }
}

/// A fixed-size set of operation positions: the operations linearized so far.
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// A canonical run-length encoding: the positions at which membership flips, starting from
    /// "not a member" before position 0. Two sets of the same size are equal iff their encodings
    /// are. Costs one pass over the words plus one entry per flip.
    fn runs(&self) -> Box<[u32]> {
        let mut flips = Vec::new();
        let mut inside = 0u64;
        for (w, &word) in self.0.iter().enumerate() {
            // Bit j of `changed` is set iff membership at 64w+j differs from 64w+j-1.
            let mut changed = word ^ ((word << 1) | inside);
            while changed != 0 {
                let j = changed.trailing_zeros();
                flips.push(u32::try_from(w * 64).expect("fewer than 2^32 operations per key") + j);
                changed &= changed - 1;
            }
            inside = word >> 63;
        }
        flips.into_boxed_slice()
    }
}

/// Outcome of the search for one key.
enum Search {
    Linearizable,
    /// Exhausted. Holds the first deepest prefix reached (operation positions) and its state.
    NotLinearizable {
        prefix: Vec<usize>,
        state: State,
    },
    StepLimit,
}

/// The call/return event list for one key: a circular doubly linked list threaded through
/// arrays, with a sentinel, so that an operation's two events can be removed and later restored
/// in O(1) (restores happen in exact reverse order of removals).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For event `e`: the operation position, and whether it is the call event.
    op: Vec<(usize, bool)>,
    call_event: Vec<usize>,
    ret_event: Vec<usize>,
    head: usize,
}

impl Events {
    /// `times[i] = (call, ret)` with `ret = None` for "at infinity".
    fn new(times: &[(u64, Option<u64>)]) -> Self {
        let n = times.len();
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(2 * n);
        for (i, &(call, ret)) in times.iter().enumerate() {
            // Ties (only possible for hand-made operations) put calls first: treating the two
            // operations as concurrent is the permissive choice.
            order.push((call, 0, i, true));
            match ret {
                Some(ret) => order.push((ret, 1, i, false)),
                None => order.push((u64::MAX, 2, i, false)),
            }
        }
        order.sort_unstable();
        let head = 2 * n;
        let mut events = Events {
            next: vec![0; 2 * n + 1],
            prev: vec![0; 2 * n + 1],
            op: vec![(0, false); 2 * n],
            call_event: vec![0; n],
            ret_event: vec![0; n],
            head,
        };
        let mut last = head;
        for (e, &(_, _, i, is_call)) in order.iter().enumerate() {
            events.op[e] = (i, is_call);
            if is_call {
                events.call_event[i] = e;
            } else {
                events.ret_event[i] = e;
            }
            events.next[last] = e;
            events.prev[e] = last;
            last = e;
        }
        events.next[last] = head;
        events.prev[head] = last;
        events
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, i: usize) {
        self.unlink(self.call_event[i]);
        self.unlink(self.ret_event[i]);
    }

    fn unlift(&mut self, i: usize) {
        self.relink(self.ret_event[i]);
        self.relink(self.call_event[i]);
    }
}

fn search(steps_of: &[Step], times: &[(u64, Option<u64>)], step_limit: u64, steps: &mut u64) -> Search {
    let n = steps_of.len();
    let mut events = Events::new(times);
    let mut linearized = BitSet::new(n);
    let mut cache: HashSet<(Box<[u32]>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = ABSENT;
    let mut best: Vec<usize> = Vec::new();
    let mut best_state = ABSENT;

    let mut cur = events.next[events.head];
    loop {
        if cur == events.head {
            // No events left: everything has been linearized.
            return Search::Linearizable;
        }
        *steps += 1;
        if *steps > step_limit {
            return Search::StepLimit;
        }
        let (i, is_call) = events.op[cur];
        if is_call {
            if let Some(new_state) = steps_of[i].apply(state) {
                linearized.set(i);
                if cache.insert((linearized.runs(), new_state)) {
                    stack.push((i, state));
                    state = new_state;
                    events.lift(i);
                    if stack.len() > best.len() {
                        best = stack.iter().map(|&(i, _)| i).collect();
                        best_state = state;
                    }
                    cur = events.next[events.head];
                    continue;
                }
                linearized.clear(i);
            }
            cur = events.next[cur];
        } else if times[i].1.is_none() {
            // The first remaining return is "at infinity": every operation with a known
            // return has been linearized; the optional ones left never took effect.
            return Search::Linearizable;
        } else {
            // Operation `i` must have taken effect by now, but nothing placeable is left.
            let Some((j, prev_state)) = stack.pop() else {
                return Search::NotLinearizable {
                    prefix: best,
                    state: best_state,
                };
            };
            linearized.clear(j);
            state = prev_state;
            events.unlift(j);
            cur = events.next[events.call_event[j]];
        }
    }
}

fn check_key(ops: &[&Operation], step_limit: u64) -> KeyVerdict {
    let mut values = Interner::default();
    let mut kept: Vec<&Operation> = Vec::with_capacity(ops.len());
    let mut model: Vec<Step> = Vec::with_capacity(ops.len());
    let mut dropped = 0;
    for &op in ops {
        if let Some(ret) = op.ret {
            if ret < op.call {
                return KeyVerdict {
                    valid: Validity::Unknown,
                    checked: 0,
                    dropped: 0,
                    steps: 0,
                    counterexample: None,
                    note: Some(format!("malformed operation (returns before its call): {op}")),
                };
            }
        }
        let step = match (&op.input, &op.output) {
            (Input::Read, Output::Unknown) => {
                dropped += 1;
                continue;
            }
            (Input::Read, Output::Read(v)) => Step::Read(values.id(v.as_deref())),
            (Input::Write(v), Output::Write | Output::Unknown) => Step::Write(values.id(Some(v))),
            (Input::Cas { expected, new }, Output::Cas { succeeded: true } | Output::Unknown) => Step::Cas {
                expected: values.id(expected.as_deref()),
                new: values.id(Some(new)),
            },
            (Input::Cas { expected, .. }, Output::Cas { succeeded: false }) => Step::CasMismatch {
                expected: values.id(expected.as_deref()),
            },
            (input, output) => {
                return KeyVerdict {
                    valid: Validity::Unknown,
                    checked: 0,
                    dropped: 0,
                    steps: 0,
                    counterexample: None,
                    note: Some(format!("malformed operation ({input:?} with {output:?}): {op}")),
                }
            }
        };
        kept.push(op);
        model.push(step);
    }

    let times: Vec<(u64, Option<u64>)> = kept.iter().map(|op| (op.call, op.ret)).collect();
    let mut steps = 0;
    let outcome = search(&model, &times, step_limit, &mut steps);
    let mut verdict = KeyVerdict {
        valid: Validity::Valid,
        checked: kept.len(),
        dropped,
        steps,
        counterexample: None,
        note: None,
    };
    match outcome {
        Search::Linearizable => {}
        Search::StepLimit => {
            verdict.valid = Validity::Unknown;
            verdict.note = Some(format!(
                "step limit of {step_limit} exceeded after {} operations; result inconclusive",
                kept.len()
            ));
        }
        Search::NotLinearizable { prefix, state } => {
            verdict.valid = Validity::Invalid;
            verdict.counterexample = Some(counterexample(&kept, &model, &times, &prefix, state, &values));
        }
    }
    verdict
}

fn counterexample(
    ops: &[&Operation],
    model: &[Step],
    times: &[(u64, Option<u64>)],
    prefix: &[usize],
    end_state: State,
    values: &Interner,
) -> Counterexample {
    let mut placed = vec![false; ops.len()];
    let mut state = ABSENT;
    let mut steps = Vec::with_capacity(prefix.len());
    for &i in prefix {
        placed[i] = true;
        state = model[i].apply(state).expect("the prefix was accepted by the model");
        steps.push(Linearized {
            op: ops[i].clone(),
            state_after: values.value(state),
        });
    }
    debug_assert_eq!(state, end_state);

    // The operations that could go next are those invoked before the earliest remaining
    // (finite) return (ties count as before), exactly as in the search's event order.
    let deadline = (0..ops.len())
        .filter(|&i| !placed[i])
        .filter_map(|i| times[i].1)
        .min()
        .unwrap_or(u64::MAX);
    let blocked = (0..ops.len())
        .filter(|&i| !placed[i] && times[i].0 <= deadline)
        .map(|i| Blocked {
            op: ops[i].clone(),
            reason: match model[i].apply(state) {
                None => model[i].explain_rejection(state, values),
                Some(_) => "accepted by the model here, but no linearization continues from it".to_owned(),
            },
        })
        .collect();
    Counterexample {
        prefix: steps,
        state: values.value(state),
        blocked,
    }
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  longest linearizable prefix ({} ops):", self.prefix.len())?;
        for (n, step) in self.prefix.iter().enumerate() {
            writeln!(
                f,
                "    {:>3}. {}   [register: {}]",
                n + 1,
                step.op,
                show_value(step.state_after.as_deref())
            )?;
        }
        writeln!(f, "  register after prefix: {}", show_value(self.state.as_deref()))?;
        writeln!(f, "  could not linearize next:")?;
        for b in &self.blocked {
            writeln!(f, "    {}\n      because {}", b.op, b.reason)?;
        }
        Ok(())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |v: Validity| self.keys.values().filter(|k| k.valid == v).count();
        writeln!(
            f,
            "linearizability: {} ({} keys: {} valid, {} invalid, {} unknown)",
            self.valid,
            self.keys.len(),
            count(Validity::Valid),
            count(Validity::Invalid),
            count(Validity::Unknown)
        )?;
        for (key, k) in &self.keys {
            if k.valid == Validity::Valid {
                continue;
            }
            writeln!(
                f,
                "key {key:?}: {} ({} ops checked, {} dropped, {} steps)",
                k.valid, k.checked, k.dropped, k.steps
            )?;
            if let Some(note) = &k.note {
                writeln!(f, "  {note}")?;
            }
            if let Some(c) = &k.counterexample {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Kind, Recorder, Value, F};

    fn verdict(r: &Recorder) -> Verdict {
        check_history(r.ops()).expect("well-formed history")
    }

    /// Invocation indices of the operations the counterexample for `key` says are stuck.
    fn blocked_calls(v: &Verdict, key: &str) -> Vec<u64> {
        let c = v.keys[key]
            .counterexample
            .as_ref()
            .expect("an invalid key has a counterexample");
        c.blocked.iter().map(|b| b.op.call).collect()
    }

    fn prefix_calls(v: &Verdict, key: &str) -> Vec<u64> {
        let c = v.keys[key]
            .counterexample
            .as_ref()
            .expect("an invalid key has a counterexample");
        c.prefix.iter().map(|l| l.op.call).collect()
    }

    #[test]
    fn bitset_run_length_encoding_is_canonical() {
        let mut a = BitSet::new(200);
        assert!(a.runs().is_empty());
        for i in [0, 1, 2, 63, 64, 65, 130, 199] {
            a.set(i);
        }
        assert_eq!(&*a.runs(), &[0, 3, 63, 66, 130, 131, 199, 200]);
        let mut b = BitSet::new(200);
        for i in (0..200).rev() {
            b.set(i);
        }
        assert_eq!(&*b.runs(), &[0, 200]);
        b.clear(64);
        assert_eq!(&*b.runs(), &[0, 64, 65, 200]);
        // Exhaustively: encoding is injective on small sets.
        let mut seen = HashSet::new();
        for mask in 0u32..(1 << 10) {
            let mut s = BitSet::new(10);
            for i in 0..10 {
                if mask & (1 << i) != 0 {
                    s.set(i);
                }
            }
            assert!(seen.insert(s.runs()), "collision for {mask:#b}");
        }
    }

    #[test]
    fn long_sequential_history_is_cheap() {
        let mut h = Recorder::new();
        for i in 0..5_000 {
            let v = (i % 7).to_string();
            h.invoke_write(i % 3, "k", &v);
            h.ok(i % 3);
            h.invoke_read(3, "k");
            h.ok_read(3, Some(&v));
        }
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");
        assert!(v.keys["k"].steps < 25_000, "{} steps", v.keys["k"].steps);
    }

    #[test]
    fn empty_history_is_valid() {
        let v = check(&[]);
        assert_eq!(v.valid, Validity::Valid);
        assert!(v.keys.is_empty());
    }

    #[test]
    fn sequential_history_is_valid() {
        let mut h = Recorder::new();
        h.invoke_read(0, "k");
        h.ok_read(0, None); // initially absent
        h.invoke_cas(0, "k", None, "a");
        h.ok(0); // create-if-absent
        h.invoke_read(1, "k");
        h.ok_read(1, Some("a"));
        h.invoke_cas(1, "k", Some("a"), "b");
        h.ok_cas(1, true);
        h.invoke_cas(2, "k", Some("a"), "c");
        h.ok_cas(2, false); // mismatch: register holds "b"
        h.invoke_read(2, "k");
        h.ok_read(2, Some("b"));
        h.invoke_write(0, "k", "c");
        h.ok(0);
        h.invoke_read(1, "k");
        h.ok_read(1, Some("c"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");
        assert_eq!(v.keys["k"].checked, 8);
        assert_eq!(v.keys["k"].counterexample, None);
    }

    #[test]
    fn read_of_absent_key_after_acknowledged_write_is_invalid() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        let read = h.invoke_read(1, "k");
        h.ok_read(1, None);
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(blocked_calls(&v, "k"), vec![read]);
    }

    #[test]
    fn concurrent_writes_may_linearize_in_either_order() {
        for winner in ["b", "c"] {
            let mut h = Recorder::new();
            h.invoke_write(0, "k", "b");
            h.invoke_write(1, "k", "c");
            h.invoke_read(2, "k");
            h.ok(1);
            h.ok_read(2, Some(winner)); // concurrent read may see either
            h.ok(0);
            h.invoke_read(2, "k");
            h.ok_read(2, Some(winner));
            h.invoke_read(3, "k");
            h.ok_read(3, Some(winner));
            let v = verdict(&h);
            assert_eq!(v.valid, Validity::Valid, "final value {winner}: {v}");
        }
    }

    #[test]
    fn read_concurrent_with_write_may_see_old_or_new_value() {
        for seen in [None, Some("a")] {
            let mut h = Recorder::new();
            h.invoke_write(0, "k", "a");
            h.invoke_read(1, "k");
            h.ok_read(1, seen);
            h.ok(0);
            let v = verdict(&h);
            assert_eq!(v.valid, Validity::Valid, "read saw {seen:?}: {v}");
        }
    }

    #[test]
    fn value_cannot_flip_back_once_concurrent_writes_completed() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "b");
        h.invoke_write(1, "k", "c");
        h.ok(0);
        h.ok(1);
        h.invoke_read(2, "k");
        h.ok_read(2, Some("c")); // so "b" was linearized before "c"...
        let flip = h.invoke_read(3, "k");
        h.ok_read(3, Some("b")); // ...and can no longer be observed
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![flip]);
    }

    #[test]
    fn stale_read_is_invalid_and_named() {
        let mut h = Recorder::new();
        let w1 = h.invoke_write(0, "k", "1");
        h.ok(0);
        let w2 = h.invoke_write(0, "k", "2");
        h.ok(0);
        let stale = h.invoke_read(1, "k");
        h.ok_read(1, Some("1"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(v.invalid_keys().collect::<Vec<_>>(), vec!["k"]);
        let c = v.keys["k"].counterexample.as_ref().unwrap();
        assert_eq!(prefix_calls(&v, "k"), vec![w1, w2]);
        assert_eq!(c.prefix[1].state_after.as_deref(), Some("2"));
        assert_eq!(c.state.as_deref(), Some("2"));
        assert_eq!(blocked_calls(&v, "k"), vec![stale]);
        assert_eq!(c.blocked[0].reason, r#"read observed "1" but the register held "2""#);
    }

    #[test]
    fn lost_write_is_invalid() {
        // "b" is acknowledged, yet every later read still sees the older "a".
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_write(1, "k", "b");
        h.invoke_read(2, "k");
        h.ok_read(2, Some("a")); // fine: concurrent with the write of "b"
        h.ok(1);
        let first_late_read = h.invoke_read(2, "k");
        h.ok_read(2, Some("a"));
        h.invoke_read(3, "k");
        h.ok_read(3, Some("a"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![first_late_read]);
        let c = v.keys["k"].counterexample.as_ref().unwrap();
        assert_eq!(c.state.as_deref(), Some("b"));
    }

    #[test]
    fn cas_that_succeeded_from_the_wrong_value_is_invalid() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        let cas = h.invoke_cas(1, "k", Some("b"), "c");
        h.ok_cas(1, true);
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![cas]);
        let reason = &v.keys["k"].counterexample.as_ref().unwrap().blocked[0].reason;
        assert_eq!(reason, r#"cas expected "b" but the register held "a""#);
    }

    #[test]
    fn cas_reporting_mismatch_when_value_matched_is_invalid() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        let cas = h.invoke_cas(1, "k", Some("a"), "c");
        h.ok_cas(1, false);
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![cas]);
    }

    #[test]
    fn concurrent_successful_cas_ops_on_the_same_value_cannot_both_win() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_cas(1, "k", Some("a"), "b");
        h.invoke_cas(2, "k", Some("a"), "c");
        h.ok(1);
        h.ok(2);
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");

        // One of them reporting the mismatch instead makes it fine.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_cas(1, "k", Some("a"), "b");
        h.invoke_cas(2, "k", Some("a"), "c");
        h.ok(1);
        h.ok_cas(2, false);
        h.invoke_read(3, "k");
        h.ok_read(3, Some("b"));
        assert_eq!(verdict(&h).valid, Validity::Valid);
    }

    #[test]
    fn unknown_write_that_was_observed_is_valid() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "x");
        h.info(0);
        h.invoke_read(1, "k");
        h.ok_read(1, Some("x"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");

        // The same observation is impossible if the write definitely failed.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "x");
        h.fail(0);
        let read = h.invoke_read(1, "k");
        h.ok_read(1, Some("x"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![read]);
    }

    #[test]
    fn unknown_write_that_never_appears_is_valid() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_write(1, "k", "b");
        h.info(1);
        for p in 2..5 {
            h.invoke_read(p, "k");
            h.ok_read(p, Some("a"));
        }
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");

        // Had the write of "b" been acknowledged, the same reads would prove it lost.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_write(1, "k", "b");
        h.ok(1);
        for p in 2..5 {
            h.invoke_read(p, "k");
            h.ok_read(p, Some("a"));
        }
        assert_eq!(verdict(&h).valid, Validity::Invalid);
    }

    #[test]
    fn never_completed_write_is_treated_as_unknown() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "x"); // no completion at all
        h.invoke_read(1, "k");
        h.ok_read(1, None);
        h.invoke_read(1, "k");
        h.ok_read(1, Some("x"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");
        assert_eq!(v.keys["k"].checked, 3);
    }

    #[test]
    fn unknown_write_may_take_effect_long_after_its_invocation_but_only_once() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_write(1, "k", "b");
        h.info(1);
        for seen in ["a", "a", "b", "b"] {
            h.invoke_read(2, "k");
            h.ok_read(2, Some(seen));
        }
        assert_eq!(verdict(&h).valid, Validity::Valid);

        // "a" again after "b" would need a second write of "a".
        let back = h.invoke_read(2, "k");
        h.ok_read(2, Some("a"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![back]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invocation() {
        let mut h = Recorder::new();
        let read = h.invoke_read(0, "k");
        h.ok_read(0, Some("x")); // sees "x" ...
        h.invoke_write(1, "k", "x"); // ... before anyone tried to write it
        h.info(1);
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(blocked_calls(&v, "k"), vec![read]);
        assert!(prefix_calls(&v, "k").is_empty());
    }

    #[test]
    fn unknown_cas_is_an_optional_swap() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_cas(1, "k", Some("a"), "b");
        h.info(1);
        h.invoke_read(2, "k");
        h.ok_read(2, Some("b"));
        assert_eq!(verdict(&h).valid, Validity::Valid);

        // The unknown cas cannot have swapped: the register never held its expected value.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "z");
        h.ok(0);
        let cas = h.invoke_cas(1, "k", Some("a"), "b");
        h.info(1);
        let read = h.invoke_read(2, "k");
        h.ok_read(2, Some("b"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        // Both are named: the read, and the unknown cas that could have explained it.
        assert_eq!(blocked_calls(&v, "k"), vec![cas, read]);
        let c = v.keys["k"].counterexample.as_ref().unwrap();
        assert_eq!(c.blocked[0].reason, r#"cas expected "a" but the register held "z""#);
    }

    #[test]
    fn unknown_cas_may_never_take_effect_at_all() {
        // For a register, an unknown write can always be placed after everything else, so
        // "never happened" is only distinguishable with an operation that has a precondition:
        // this cas could not have applied at any point, and must be allowed to have never run.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_cas(1, "k", Some("z"), "b");
        h.info(1);
        h.invoke_read(2, "k");
        h.ok_read(2, Some("a"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");

        // Had it been acknowledged as swapped, the history would be invalid.
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_cas(1, "k", Some("z"), "b");
        h.ok(1);
        assert_eq!(verdict(&h).valid, Validity::Invalid);
    }

    #[test]
    fn unknown_reads_are_dropped() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "a");
        h.ok(0);
        h.invoke_read(1, "k");
        h.info(1);
        h.invoke_read(2, "k"); // never completes
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");
        assert_eq!((v.keys["k"].checked, v.keys["k"].dropped), (1, 2));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = Recorder::new();
        h.invoke_write(0, "x", "1");
        h.ok(0);
        // Conflating the keys into one register would make this read invalid.
        h.invoke_read(1, "y");
        h.ok_read(1, None);
        h.invoke_write(0, "y", "1");
        h.ok(0);
        h.invoke_write(0, "y", "2");
        h.ok(0);
        h.invoke_read(1, "x");
        h.ok_read(1, Some("1"));
        let stale = h.invoke_read(2, "y");
        h.ok_read(2, Some("1"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert_eq!(v.keys["x"].valid, Validity::Valid);
        assert_eq!(v.keys["y"].valid, Validity::Invalid);
        assert_eq!(v.invalid_keys().collect::<Vec<_>>(), vec!["y"]);
        assert_eq!(blocked_calls(&v, "y"), vec![stale]);
    }

    #[test]
    fn exceeding_the_step_limit_is_unknown_never_a_pass() {
        let mut h = Recorder::new();
        for (p, v) in [(0, "a"), (1, "b"), (2, "c")] {
            h.invoke_write(p, "k", v);
        }
        for p in 0..3 {
            h.ok(p);
        }
        h.invoke_read(3, "k");
        h.ok_read(3, Some("c"));
        let ops = operations(h.ops()).unwrap();
        assert_eq!(check(&ops).valid, Validity::Valid);
        let tight = CheckOptions { step_limit: 3 };
        let v = check_with(&ops, &tight);
        assert_eq!(v.valid, Validity::Unknown, "{v}");
        assert!(v.keys["k"].note.as_deref().unwrap().contains("step limit of 3"));
        assert_eq!(v.keys["k"].steps, 4, "stops at the first step over the limit");

        // An invalid history cut short is Unknown too, not Invalid.
        h.invoke_read(3, "k");
        h.ok_read(3, Some("nope"));
        let ops = operations(h.ops()).unwrap();
        assert_eq!(check(&ops).valid, Validity::Invalid);
        assert_eq!(check_with(&ops, &tight).valid, Validity::Unknown);
    }

    #[test]
    fn memoization_keeps_many_concurrent_unknown_writes_tractable() {
        // 14 writes of unknown outcome, all concurrent, then reads that see them one by one in an
        // order unrelated to invocation order. Plain Wing & Gong would try the writes'
        // permutations; with the cache the configurations are bounded by 2^14 subsets.
        const N: u64 = 14;
        let mut h = Recorder::new();
        for p in 0..N {
            h.invoke_write(p, "k", &format!("v{p}"));
        }
        for p in 0..N {
            h.info(p);
        }
        for i in 0..N {
            let seen = format!("v{}", (i * 5) % N);
            h.invoke_read(100, "k");
            h.ok_read(100, Some(&seen));
        }
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Valid, "{v}");

        // And the first re-read of an already overwritten value is caught.
        let repeat = h.invoke_read(100, "k");
        h.ok_read(100, Some("v0"));
        let v = verdict(&h);
        assert_eq!(v.valid, Validity::Invalid, "{v}");
        assert!(blocked_calls(&v, "k").contains(&repeat));
    }

    #[test]
    fn verdict_display_names_the_culprit() {
        let mut h = Recorder::new();
        h.invoke_write(0, "k", "1");
        h.ok(0);
        h.invoke_write(0, "k", "2");
        h.ok(0);
        h.invoke_read(7, "k");
        h.ok_read(7, Some("1"));
        let text = verdict(&h).to_string();
        assert!(
            text.starts_with("linearizability: INVALID (1 keys: 0 valid, 1 invalid, 0 unknown)"),
            "{text}"
        );
        assert!(text.contains(r#"[4..5] process 7 key "k": read => "1""#), "{text}");
        assert!(
            text.contains(r#"because read observed "1" but the register held "2""#),
            "{text}"
        );
        // The verdict is serializable for the runner's report.
        let json = serde_json::to_value(verdict(&h)).unwrap();
        assert_eq!(json["valid"], "invalid");
        assert_eq!(json["keys"]["k"]["counterexample"]["blocked"][0]["op"]["call"], 4);
    }

    #[test]
    fn malformed_hand_made_operation_is_unknown() {
        let mut h = Recorder::new();
        h.invoke_read(0, "k");
        h.ok_read(0, None);
        let mut ops = operations(h.ops()).unwrap();
        ops[0].output = Output::Write;
        let v = check(&ops);
        assert_eq!(v.valid, Validity::Unknown);
        assert!(v.keys["k"].note.as_deref().unwrap().contains("malformed"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        const KEYS: [&str; 2] = ["k0", "k1"];
        const NEVER_WRITTEN: &str = "never-written";

        fn val(i: u8) -> String {
            format!("v{}", i % 4)
        }

        /// `a == 0` means "expected absent".
        fn expected(a: u8) -> Option<String> {
            (a % 4 != 0).then(|| val(a))
        }

        /// A sequential history: each operation runs against a real register map and completes
        /// before the next is invoked. Outcomes are chosen at random among the truthful ones:
        /// `ok` with the real result, `fail` only if the operation had no effect, `info` either way.
        fn sequential(cmds: &[(u64, usize, u8, u8, u8, u8)]) -> Vec<Op> {
            let mut h = Recorder::new();
            let mut reg: BTreeMap<&str, Option<String>> = BTreeMap::new();
            for &(p, key, kind, a, b, outcome) in cmds {
                let key = KEYS[key];
                let cur = reg.entry(key).or_default();
                match kind % 3 {
                    0 => {
                        h.invoke_read(p, key);
                        if outcome % 8 == 7 {
                            h.info(p);
                        } else {
                            h.ok_read(p, cur.as_deref());
                        }
                    }
                    1 => {
                        h.invoke_write(p, key, &val(a));
                        match outcome % 8 {
                            5 => drop(h.fail(p)),
                            6 => {
                                *cur = Some(val(a));
                                h.info(p);
                            }
                            7 => drop(h.info(p)),
                            _ => {
                                *cur = Some(val(a));
                                h.ok(p);
                            }
                        }
                    }
                    _ => {
                        let exp = expected(a);
                        h.invoke_cas(p, key, exp.as_deref(), &val(b));
                        let matches = *cur == exp;
                        match (matches, outcome % 8) {
                            (_, 5) => drop(h.fail(p)),
                            (true, 6) => {
                                *cur = Some(val(b));
                                h.info(p);
                            }
                            (_, 7) => drop(h.info(p)),
                            (true, _) => {
                                *cur = Some(val(b));
                                h.ok(p);
                            }
                            (false, o) if o % 2 == 0 => drop(h.ok_cas(p, false)),
                            (false, _) => drop(h.fail(p)),
                        }
                    }
                }
            }
            h.into_ops()
        }

        #[derive(Clone)]
        enum Phase {
            Idle,
            Invoked { key: &'static str, kind: u8, a: u8, b: u8 },
            Applied { result: Result<Option<String>, bool> },
        }

        /// A concurrent history from an atomic register: each process invokes, later takes
        /// effect atomically at a random moment (its linearization point), and later still
        /// completes truthfully; or crashes (`info`) before or after taking effect, or fails
        /// before taking effect. Operations still open at the end are left without completion.
        fn concurrent(events: &[(usize, u8, usize, u8, u8, u8)]) -> Vec<Op> {
            let mut h = Recorder::new();
            let mut reg: BTreeMap<&str, Option<String>> = BTreeMap::new();
            let mut phase = vec![Phase::Idle; 5];
            for &(p, choice, key, kind, a, b) in events {
                let pid = p as u64;
                phase[p] = match phase[p].clone() {
                    Phase::Idle => {
                        let key = KEYS[key];
                        match kind % 3 {
                            0 => h.invoke_read(pid, key),
                            1 => h.invoke_write(pid, key, &val(a)),
                            _ => h.invoke_cas(pid, key, expected(a).as_deref(), &val(b)),
                        };
                        Phase::Invoked { key, kind, a, b }
                    }
                    Phase::Invoked { key, kind, a, b } => match choice % 4 {
                        0 | 1 => {
                            let cur = reg.entry(key).or_default();
                            // Ok(v): a read's observation; Err(swapped): a write or cas.
                            let result = match kind % 3 {
                                0 => Ok(cur.clone()),
                                1 => {
                                    *cur = Some(val(a));
                                    Err(true)
                                }
                                _ => {
                                    let swapped = *cur == expected(a);
                                    if swapped {
                                        *cur = Some(val(b));
                                    }
                                    Err(swapped)
                                }
                            };
                            Phase::Applied { result }
                        }
                        2 => {
                            h.fail(pid);
                            Phase::Idle
                        }
                        _ => {
                            h.info(pid);
                            Phase::Idle
                        }
                    },
                    Phase::Applied { result } => {
                        match (choice % 4, result) {
                            (3, _) => drop(h.info(pid)),
                            (_, Ok(seen)) => drop(h.ok_read(pid, seen.as_deref())),
                            (_, Err(true)) => drop(h.ok(pid)),
                            // A mismatched cas changed nothing: either report is truthful.
                            (0, Err(false)) => drop(h.fail(pid)),
                            (_, Err(false)) => drop(h.ok_cas(pid, false)),
                        }
                        Phase::Idle
                    }
                };
            }
            h.into_ops()
        }

        /// Replaces the result of the `pick`-th ok read (modulo their number) with a value no
        /// operation ever wrote. Returns the mutated read's completion index and key.
        fn corrupt_a_read(ops: &mut [Op], pick: usize) -> Option<(u64, String)> {
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].kind == Kind::Ok && ops[i].f == F::Read)
                .collect();
            let &i = reads.get(pick % reads.len().max(1))?;
            ops[i].value = Some(Value::single(NEVER_WRITTEN));
            Some((ops[i].index, ops[i].key.clone()))
        }

        fn seq_cmds() -> impl Strategy<Value = Vec<(u64, usize, u8, u8, u8, u8)>> {
            prop::collection::vec(
                (0u64..4, 0usize..2, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
                0..40,
            )
        }

        fn conc_events() -> impl Strategy<Value = Vec<(usize, u8, usize, u8, u8, u8)>> {
            prop::collection::vec(
                (0usize..5, any::<u8>(), 0usize..2, any::<u8>(), any::<u8>(), any::<u8>()),
                0..90,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn sequential_register_histories_are_valid(cmds in seq_cmds(), pick in any::<usize>()) {
                let mut ops = sequential(&cmds);
                let v = check_history(&ops).unwrap();
                prop_assert_eq!(v.valid, Validity::Valid, "{}", v);

                if let Some((ret, key)) = corrupt_a_read(&mut ops, pick) {
                    let v = check_history(&ops).unwrap();
                    prop_assert_eq!(v.valid, Validity::Invalid, "{}", v);
                    prop_assert_eq!(v.keys[&key].valid, Validity::Invalid);
                    let paired = operations(&ops).unwrap();
                    let unknown_on_key = paired.iter().any(|o| o.key == key && o.is_unknown());
                    if !unknown_on_key {
                        // Totally ordered: the only candidate after the true prefix is the read.
                        let c = v.keys[&key].counterexample.as_ref().unwrap();
                        let blocked: Vec<Option<u64>> = c.blocked.iter().map(|b| b.op.ret).collect();
                        prop_assert_eq!(blocked, vec![Some(ret)]);
                    }
                }
            }

            #[test]
            fn concurrent_atomic_register_histories_are_valid(events in conc_events(), pick in any::<usize>()) {
                let mut ops = concurrent(&events);
                let v = check_history(&ops).unwrap();
                prop_assert_eq!(v.valid, Validity::Valid, "{}", v);

                if let Some((_, key)) = corrupt_a_read(&mut ops, pick) {
                    let v = check_history(&ops).unwrap();
                    prop_assert_eq!(v.valid, Validity::Invalid, "{}", v);
                    prop_assert_eq!(v.keys[&key].valid, Validity::Invalid);
                    for (k, kv) in &v.keys {
                        if *k != key {
                            prop_assert_eq!(kv.valid, Validity::Valid);
                        }
                    }
                }
            }
        }
    }
}
