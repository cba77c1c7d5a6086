//! Operation histories as a Jepsen-style runner records them.
//!
//! A history is a flat, totally ordered list of [`Op`] events. Every client operation shows up as
//! an `invoke` event followed (usually) by exactly one completion from the same process:
//!
//! * `ok`: the operation definitely took effect, and its result is known;
//! * `fail`: the operation definitely did **not** take effect (for example the request was
//!   rejected before it reached the replicated log);
//! * `info`: the outcome is unknown (a timeout, a dropped connection, a crashed client). The
//!   operation may have taken effect at any moment after its invocation, or never.
//!
//! Each process has at most one outstanding operation. A process whose last operation ended in
//! `info` may go on invoking (the runner conventionally gives it a fresh process id, as Jepsen
//! does, but this module does not require that). An invocation with no completion by the end of
//! the history is treated exactly like an `info` completion.
//!
//! # Serialized form
//!
//! Histories are stored as JSON lines, one [`Op`] per line:
//!
//! ```json
//! {"index":0,"time":1200,"process":3,"type":"invoke","f":"cas","key":"k1","value":["a","b"],"node":2}
//! {"index":1,"time":5300,"process":3,"type":"ok","f":"cas","key":"k1","value":["a","b"],"node":2,"succeeded":true}
//! ```
//!
//! * `value` is `null`, a string, an integer, or for a `cas` an `[expected, new]` pair whose
//!   `expected` may be `null` (meaning "the key is absent"). capkv stores bytes, so integers are
//!   accepted on input and normalised to their decimal string: `5` and `"5"` are the same value.
//!   For a completed `read`, `null` means the key was not found.
//! * `succeeded` (optional, only meaningful on an `ok` `cas`) says whether the compare matched. A
//!   missing `succeeded` means `true`, which matches Jepsen's convention of recording a mismatched
//!   CAS as `fail`. Recording a mismatch as `ok` with `succeeded: false` is strictly more
//!   informative: the checker then verifies that the register did *not* hold the expected value.
//! * `error` (optional) is free text for humans, e.g. why an operation failed.
//!
//! # Ordering
//!
//! Real-time order is taken from `index`, never from `time`: the runner assigns indices from a
//! single counter at the moment it records each event, so `a.index < b.index` means event `a` was
//! observed before event `b`. `time` is kept for humans and for latency plots.
//!
//! [`crate::pairing::operations`] turns the event list into [`Operation`]s (one per invocation,
//! with its completion), validating the history's shape along the way.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The kind of a history event (`type` in the serialized form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The client is about to send the request.
    Invoke,
    /// The operation took effect and its result is known.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is unknown: the operation may or may not have taken effect.
    Info,
}

/// The function an operation applies to its key (Jepsen's `f`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    /// Read the key's current value.
    Read,
    /// Overwrite the key's value.
    Write,
    /// Compare-and-set: if the key holds `expected`, replace it with `new`.
    Cas,
    /// Set workload: add the element in `value` to the set stored at `key`.
    Add,
    /// Bank workload: move money between two accounts (`value` is `"from:to:amount"`).
    Transfer,
    /// Nemesis event: a fault begins (`process` is [`NEMESIS_PROCESS`], `type` is `info`).
    Start,
    /// Nemesis event: a fault ends (`process` is [`NEMESIS_PROCESS`], `type` is `info`).
    Stop,
}

/// The `process` of nemesis events ([`F::Start`] / [`F::Stop`]). Far above any client process id
/// yet exactly representable in JavaScript (below 2^53).
pub const NEMESIS_PROCESS: u64 = 1_000_000_000;

impl F {
    /// Whether this is a nemesis event rather than a client operation.
    pub fn is_nemesis(self) -> bool {
        matches!(self, F::Start | F::Stop)
    }
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Add => "add",
            F::Transfer => "transfer",
            F::Start => "start",
            F::Stop => "stop",
        })
    }
}

/// The `value` of an event.
///
/// Serialized as a JSON string for [`Value::Single`] and as an `[expected, new]` array for
/// [`Value::Cas`]. Integers are accepted wherever a string is and are normalised to their
/// decimal representation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// A register value: the argument of a write, or the result of a read.
    Single(String),
    /// The arguments of a compare-and-set. `expected: None` means "the key must be absent".
    Cas {
        /// The value the key must hold for the swap to happen (`None`: absent).
        expected: Option<String>,
        /// The value written when the comparison matches.
        new: String,
    },
}

impl Value {
    /// A single register value.
    pub fn single(v: impl Into<String>) -> Self {
        Value::Single(v.into())
    }

    /// Compare-and-set arguments.
    pub fn cas(expected: Option<&str>, new: impl Into<String>) -> Self {
        Value::Cas {
            expected: expected.map(str::to_owned),
            new: new.into(),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Single(v) => serializer.serialize_str(v),
            Value::Cas { expected, new } => (expected.as_deref(), new.as_str()).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an integer, or an [expected, new] pair")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Single(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Single(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Single(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Single(v.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let expected: Option<Scalar> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let new: Scalar = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(Value::Cas {
            expected: expected.map(|s| s.0),
            new: new.0,
        })
    }
}

/// A string-or-integer element of a CAS pair, normalised to a string.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One event of a history: an invocation or a completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history; strictly increasing. Defines real-time order.
    pub index: u64,
    /// Wall-clock or monotonic time of the event in nanoseconds (informational only).
    #[serde(rename = "time")]
    pub time_ns: u64,
    /// The logical client that issued the operation.
    pub process: u64,
    /// Invocation or completion kind (`type` in JSON).
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The function applied.
    pub f: F,
    /// The key operated on.
    pub key: String,
    /// Argument (on invocations) or result (on completions); see the module docs.
    #[serde(default)]
    pub value: Option<Value>,
    /// The capkv node the request was sent to, if known.
    #[serde(default)]
    pub node: Option<u64>,
    /// For an `ok` `cas`: whether the comparison matched. Absent means `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Free-text error description, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// Read the key.
    Read,
    /// Write this value.
    Write(String),
    /// Compare-and-set.
    Cas {
        /// Required current value (`None`: absent).
        expected: Option<String>,
        /// Value to install on a match.
        new: String,
    },
}

/// What a client learned about the outcome of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// No definite outcome (`info`, or no completion at all).
    Unknown,
    /// A read completed and observed this value (`None`: not found).
    Read(Option<String>),
    /// A write completed.
    Write,
    /// A compare-and-set completed; `succeeded` says whether the comparison matched.
    Cas {
        /// Whether the comparison matched and the new value was installed.
        succeeded: bool,
    },
}

/// An invocation paired with its completion: the unit the checkers work on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// The process that issued it.
    pub process: u64,
    /// The key it applies to.
    pub key: String,
    /// What was asked.
    pub input: Input,
    /// What was learned. [`Output::Unknown`] exactly when `ret` is `None`.
    pub output: Output,
    /// History index of the invocation.
    pub call: u64,
    /// History index of the completion; `None` when the outcome is unknown, i.e. the operation
    /// may take effect at any time after `call`, or never.
    pub ret: Option<u64>,
    /// `time` of the invocation event, in nanoseconds.
    pub call_time_ns: u64,
    /// `time` of the completion event, if the operation completed with a known outcome.
    pub ret_time_ns: Option<u64>,
    /// The node the request went to, if recorded.
    pub node: Option<u64>,
}

impl Operation {
    /// The function this operation applies.
    pub fn f(&self) -> F {
        match self.input {
            Input::Read => F::Read,
            Input::Write(_) => F::Write,
            Input::Cas { .. } => F::Cas,
        }
    }

    /// Whether the outcome is unknown (it may or may not have taken effect).
    pub fn is_unknown(&self) -> bool {
        self.ret.is_none()
    }
}

/// Formats a register value for humans: quoted, or `absent`.
pub(crate) fn show_value(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".to_owned(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ret {
            Some(ret) => write!(f, "[{}..{}]", self.call, ret)?,
            None => write!(f, "[{}..?]", self.call)?,
        }
        write!(f, " process {} key {:?}: ", self.process, self.key)?;
        match &self.input {
            Input::Read => f.write_str("read")?,
            Input::Write(v) => write!(f, "write {v:?}")?,
            Input::Cas { expected, new } => write!(f, "cas {} -> {new:?}", show_value(expected.as_deref()))?,
        }
        match &self.output {
            Output::Unknown => f.write_str(" => unknown outcome"),
            Output::Read(v) => write!(f, " => {}", show_value(v.as_deref())),
            Output::Write => f.write_str(" => ok"),
            Output::Cas { succeeded: true } => f.write_str(" => ok (swapped)"),
            Output::Cas { succeeded: false } => f.write_str(" => ok (mismatch, not swapped)"),
        }
    }
}

/// Errors reading or pairing a history.
#[derive(Debug)]
pub enum HistoryError {
    /// Reading the history failed.
    Io(io::Error),
    /// A line is not a valid [`Op`].
    Json {
        /// 1-based line number.
        line: usize,
        /// The underlying parse error.
        source: serde_json::Error,
    },
    /// The history is syntactically valid but not well-formed (see
    /// [`crate::pairing::operations`]).
    Malformed {
        /// `index` of the offending event.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io(e) => write!(f, "reading history: {e}"),
            HistoryError::Json { line, source } => write!(f, "history line {line}: {source}"),
            HistoryError::Malformed { index, reason } => write!(f, "malformed history at index {index}: {reason}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io(e) => Some(e),
            HistoryError::Json { source, .. } => Some(source),
            HistoryError::Malformed { .. } => None,
        }
    }
}

impl From<io::Error> for HistoryError {
    fn from(e: io::Error) -> Self {
        HistoryError::Io(e)
    }
}

/// Parses a JSON-lines history. Blank lines are ignored.
pub fn parse_jsonl(text: &str) -> Result<Vec<Op>, HistoryError> {
    read_jsonl(text.as_bytes())
}

/// Reads a JSON-lines history. Blank lines are ignored.
pub fn read_jsonl<R: BufRead>(reader: R) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Json { line: i + 1, source })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Writes a history as JSON lines, one op per line.
pub fn write_jsonl<W: Write>(mut writer: W, ops: &[Op]) -> io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut writer, op)?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// Renders a history as a JSON-lines string.
pub fn to_jsonl(ops: &[Op]) -> String {
    let mut buf = Vec::new();
    write_jsonl(&mut buf, ops).expect("writing to a Vec cannot fail");
    String::from_utf8(buf).expect("serde_json emits UTF-8")
}

/// Builds well-formed histories: assigns indices, tracks each process's outstanding invocation
/// and fills in completions from it. Used by tests, and meant for the runner.
///
/// Unless [`Recorder::at`] is called, an event's `time` equals its `index`.
///
/// Completion methods panic if the process has no outstanding invocation, or if the completion
/// does not fit it (e.g. [`Recorder::ok_read`] for a write): those are bugs in the caller.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    ops: Vec<Op>,
    time_ns: Option<u64>,
    outstanding: BTreeMap<u64, usize>,
}

impl Recorder {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `time_ns` as the `time` of subsequently recorded events.
    pub fn at(&mut self, time_ns: u64) -> &mut Self {
        self.time_ns = Some(time_ns);
        self
    }

    /// The events recorded so far.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Consumes the recorder, returning its events.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    fn push(
        &mut self,
        process: u64,
        kind: Kind,
        f: F,
        key: String,
        value: Option<Value>,
        succeeded: Option<bool>,
    ) -> u64 {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time_ns: self.time_ns.unwrap_or(index),
            process,
            kind,
            f,
            key,
            value,
            node: None,
            succeeded,
            error: None,
        });
        index
    }

    fn invoke(&mut self, process: u64, f: F, key: &str, value: Option<Value>) -> u64 {
        assert!(
            !self.outstanding.contains_key(&process),
            "process {process} already has an outstanding operation"
        );
        let index = self.push(process, Kind::Invoke, f, key.to_owned(), value, None);
        self.outstanding.insert(process, index as usize);
        index
    }

    fn complete(&mut self, process: u64, kind: Kind, value: Option<Option<Value>>, succeeded: Option<bool>) -> u64 {
        let at = self
            .outstanding
            .remove(&process)
            .unwrap_or_else(|| panic!("process {process} has no outstanding operation"));
        let invoke = self.ops[at].clone();
        let value = value.unwrap_or(invoke.value);
        self.push(process, kind, invoke.f, invoke.key, value, succeeded)
    }

    fn outstanding_f(&self, process: u64) -> Option<F> {
        self.outstanding.get(&process).map(|&i| self.ops[i].f)
    }

    /// Records the invocation of a read. Returns its index.
    pub fn invoke_read(&mut self, process: u64, key: &str) -> u64 {
        self.invoke(process, F::Read, key, None)
    }

    /// Records the invocation of a write. Returns its index.
    pub fn invoke_write(&mut self, process: u64, key: &str, value: &str) -> u64 {
        self.invoke(process, F::Write, key, Some(Value::single(value)))
    }

    /// Records the invocation of a compare-and-set. Returns its index.
    pub fn invoke_cas(&mut self, process: u64, key: &str, expected: Option<&str>, new: &str) -> u64 {
        self.invoke(process, F::Cas, key, Some(Value::cas(expected, new)))
    }

    /// Completes the process's outstanding read with the value it observed (`None`: not found).
    pub fn ok_read(&mut self, process: u64, observed: Option<&str>) -> u64 {
        assert_eq!(
            self.outstanding_f(process),
            Some(F::Read),
            "ok_read needs an outstanding read"
        );
        self.complete(process, Kind::Ok, Some(observed.map(Value::single)), None)
    }

    /// Completes the process's outstanding write, or its cas as having swapped.
    pub fn ok(&mut self, process: u64) -> u64 {
        let f = self.outstanding_f(process);
        assert!(
            matches!(f, Some(F::Write | F::Cas)),
            "ok needs an outstanding write or cas"
        );
        self.complete(process, Kind::Ok, None, None)
    }

    /// Completes the process's outstanding cas, with an explicit `succeeded` flag.
    pub fn ok_cas(&mut self, process: u64, succeeded: bool) -> u64 {
        assert_eq!(
            self.outstanding_f(process),
            Some(F::Cas),
            "ok_cas needs an outstanding cas"
        );
        self.complete(process, Kind::Ok, None, Some(succeeded))
    }

    /// Completes the process's outstanding operation as definitely not having happened.
    pub fn fail(&mut self, process: u64) -> u64 {
        self.complete(process, Kind::Fail, None, None)
    }

    /// Completes the process's outstanding operation with an unknown outcome.
    pub fn info(&mut self, process: u64) -> u64 {
        self.complete(process, Kind::Info, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_field_names_and_shapes() {
        let mut r = Recorder::new();
        r.at(7).invoke_cas(3, "k", None, "b");
        r.at(9).ok_cas(3, false);
        let text = to_jsonl(r.ops());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"index": 0, "time": 7, "process": 3, "type": "invoke", "f": "cas",
                               "key": "k", "value": [null, "b"], "node": null})
        );
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["type"], "ok");
        assert_eq!(second["succeeded"], false);
        assert_eq!(second["time"], 9);
    }

    #[test]
    fn jsonl_round_trip() {
        let mut r = Recorder::new();
        r.invoke_write(0, "a", "1");
        r.invoke_read(1, "a");
        r.ok(0);
        r.ok_read(1, None);
        r.invoke_cas(0, "a", Some("1"), "2");
        r.info(0);
        let mut ops = r.into_ops();
        ops[0].node = Some(4);
        ops[1].error = Some("boom".to_owned());
        let parsed = parse_jsonl(&to_jsonl(&ops)).unwrap();
        assert_eq!(parsed, ops);
    }

    #[test]
    fn integers_are_normalised_to_strings() {
        let text = r#"
{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","value":5,"node":null}

{"index":1,"time":1,"process":0,"type":"ok","f":"write","key":"k","value":"5"}
{"index":2,"time":2,"process":0,"type":"invoke","f":"cas","key":"k","value":[5,6]}
"#;
        let ops = parse_jsonl(text).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].value, Some(Value::single("5")));
        assert_eq!(ops[2].value, Some(Value::cas(Some("5"), "6")));
    }

    #[test]
    fn bad_json_reports_its_line() {
        let text = "{\"index\":0,\"time\":0,\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k\"}\n\
                    {\"index\":1,\"time\":0,\"process\":0,\"type\":\"bogus\",\"f\":\"read\",\"key\":\"k\"}\n";
        match parse_jsonl(text) {
            Err(HistoryError::Json { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a JSON error, got {other:?}"),
        }
        let cas_triple = r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"cas","key":"k","value":[1,2,3]}"#;
        assert!(matches!(
            parse_jsonl(cas_triple),
            Err(HistoryError::Json { line: 1, .. })
        ));
    }
}
