//! Jepsen-style testing support for capkv.
//!
//! This crate holds the pieces of a Jepsen-style suite that do not need a running cluster:
//!
//! * [`history`]: the operation history a test runner records (invocations and their `ok`,
//!   `fail` or `info` completions), its JSON-lines serialization, and the pairing of invocations
//!   with completions into [`history::Operation`]s;
//! * [`linearizability`]: a checker deciding whether such a history is linearizable for a map of
//!   independent read/write/compare-and-set registers, with a readable counterexample when it is
//!   not.
//!
//! The runner that drives a cluster, injects faults and records histories is not part of this
//! crate yet.
//!
//! ```
//! use jepsen_style::history::Recorder;
//! use jepsen_style::linearizability::{check_history, Validity};
//!
//! let mut h = Recorder::new();
//! h.invoke_write(0, "k", "1");
//! h.ok(0);
//! h.invoke_write(0, "k", "2");
//! h.ok(0);
//! h.invoke_read(1, "k");
//! h.ok_read(1, Some("1")); // stale: "2" was acknowledged before this read began
//! let verdict = check_history(h.ops()).unwrap();
//! assert_eq!(verdict.valid, Validity::Invalid);
//! println!("{verdict}");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod history;
pub mod linearizability;
