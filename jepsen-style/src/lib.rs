//! Jepsen-style testing support for capkv.
//!
//! This crate holds a Jepsen-style suite for capkv. The pieces that need no cluster:
//!
//! * [`history`]: the operation history a test runner records (invocations and their `ok`,
//!   `fail` or `info` completions), its JSON-lines serialization, and the pairing of invocations
//!   with completions into [`history::Operation`]s;
//! * [`linearizability`]: a checker deciding whether such a history is linearizable for a map of
//!   independent read/write/compare-and-set registers, with a readable counterexample when it is
//!   not.
//!
//! and the runner around them:
//!
//! * [`nemesis`]: fault schedules and partition shapes (pure, seeded); [`layer`] and [`netns`]:
//!   the two fault layers (capkv's built-in filter; namespaces, a bridge and iptables);
//! * [`workload`]: the register, set and bank clients; [`cluster`]: node processes;
//!   [`options`]: what a run is asked to do; [`run`]: one test end to end (cluster, clients,
//!   nemesis, recovery, final reads); [`verdict`]: the checks and the typed results of a run;
//! * [`ap_register`], [`set`], [`bank`]: the other checkers; [`stats`]: phases, availability,
//!   latency; [`pairing`]: invocations with their completions;
//! * [`results`]: the typed `results.json` the runner writes and the report, CLI and tests read;
//! * [`report`]: HTML and terminal rendering of results.
//!
//! # Nemesis events in the history
//!
//! Each fault window adds two events with `process` [`history::NEMESIS_PROCESS`], `type`
//! `info`, `f` `start` or `stop`, `key` the nemesis name (e.g. `partition-halves`) and `value` a
//! description of the fault (e.g. `partition {1,2} {3,4,5}`), `node` null. [`pairing::pair`] counts them apart and
//! never pairs them.
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

pub mod ap_register;
pub mod bank;
pub mod cluster;
pub mod fault;
pub mod history;
pub mod layer;
pub mod linearizability;
pub mod nemesis;
pub mod netns;
pub mod options;
pub mod pairing;
pub mod report;
pub mod results;
pub mod run;
pub mod set;
pub mod stats;
pub mod verdict;
pub mod workload;
