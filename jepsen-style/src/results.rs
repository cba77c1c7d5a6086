//! `results.json`: the one typed record of a run.
//!
//! The runner ([`crate::run`]) builds a [`Results`] and serializes it; the report
//! ([`crate::report`]), the CLI summary and the tests read the same struct back. A field renamed
//! here is renamed everywhere or the crate does not compile, so no reader can silently lose a
//! figure.
//!
//! # Shape
//!
//! The JSON keeps the field names below (snake case). Maps keyed by phase (`before`, `during`,
//! `after`) and by operation (`read`, `write`, `cas`, `add`, `transfer`) use those words as keys.
//! `scripts/jepsen-ci.sh` greps anomaly kinds (`"kind": "linearizability"`, `"divergence"`), so
//! [`Anomaly::kind`] stays a plain string in pretty-printed JSON.
//!
//! Every file starts with `"format": "capkv-jepsen-results/1"` ([`FORMAT`]). [`Results::parse`]
//! refuses a file without it (written before the format was versioned, or by another tool) or
//! with another version, saying which it found and what to do.
//!
//! # Caveats
//!
//! * Figures that a run could not measure are `null` (`Option::None`): availability of a side
//!   with no operations, the recovery of a cp cluster that did not recover, the convergence of an
//!   ap cluster that did not converge. The report shows those as `n/a`.
//! * Durations are rounded (seconds to 0.01, latencies to 0.01 ms) when the runner records them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::F;
use crate::linearizability::Validity;

/// The format tag every `results.json` starts with. Bump the number when a change would make
/// an older file misread.
pub const FORMAT: &str = "capkv-jepsen-results/1";

/// Most op indexes listed in one anomaly (a lost-element anomaly may concern thousands).
pub const ANOMALY_OPS_MAX: usize = 50;

/// A run's mode: which kind of keyspace it tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Raft, linearizable.
    Cp,
    /// Last-writer-wins, always available.
    Ap,
}

impl Mode {
    /// `cp` or `ap`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cp => "cp",
            Mode::Ap => "ap",
        }
    }

    /// Parses `cp` or `ap`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "cp" => Ok(Mode::Cp),
            "ap" => Ok(Mode::Ap),
            other => Err(format!("unknown mode {other:?}: expected cp or ap")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When an operation was invoked, relative to the fault windows (see [`crate::stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the first fault window opened.
    Before,
    /// Inside a fault window.
    During,
    /// Outside every window once the first one opened.
    After,
}

impl Phase {
    /// `before`, `during` or `after`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// One anomaly a checker found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// One applied fault of the schedule (times in seconds since the test started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// The nemesis that chose it, e.g. `partition-halves`.
    pub nemesis: String,
    /// When every node had the fault.
    pub start_s: f64,
    /// When it was undone.
    pub stop_s: f64,
    /// The fault for humans, e.g. `partition {1,2} {3,4,5}`.
    pub detail: String,
    /// Nodes on the majority side (empty when the fault has no sides).
    pub majority: Vec<u64>,
    /// Nodes on the minority side.
    pub minority: Vec<u64>,
}

/// Operation counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Operations invoked.
    pub invoked: u64,
    /// Completed `ok`.
    pub ok: u64,
    /// Completed `fail`.
    pub fail: u64,
    /// Completed `info`, or never completed.
    pub unknown: u64,
}

impl Counts {
    /// `ok` as a percentage of `invoked` (`None` when nothing was invoked).
    pub fn ok_pct(&self) -> Option<f64> {
        (self.invoked > 0).then(|| round2(100.0 * self.ok as f64 / self.invoked as f64))
    }

    /// Adds `other` to these counts.
    pub fn merge(&mut self, other: &Counts) {
        self.invoked += other.invoked;
        self.ok += other.ok;
        self.fail += other.fail;
        self.unknown += other.unknown;
    }
}

/// Counts per phase and operation.
pub type PhaseCounts = BTreeMap<Phase, BTreeMap<F, Counts>>;

/// Availability of the operations invoked during faults (percent ok, see [`crate::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DuringFaults {
    /// Over every operation invoked during a fault.
    pub overall: Option<f64>,
    /// Over the operations sent to a node on the majority side.
    pub majority: Option<f64>,
    /// Over the operations sent to a node on the minority side.
    pub minority: Option<f64>,
    /// Per operation, over every side.
    pub by_op: BTreeMap<F, Option<f64>>,
    /// Raw counts per operation on the majority side.
    pub majority_by_op: BTreeMap<F, Counts>,
    /// Raw counts per operation on the minority side.
    pub minority_by_op: BTreeMap<F, Counts>,
}

/// `availability` in `results.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// The operations invoked inside fault windows.
    pub during_faults: DuringFaults,
}

/// Latency percentiles of one phase and operation, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Completed operations measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// Latency per phase and operation.
pub type PhaseLatency = BTreeMap<Phase, BTreeMap<F, Latency>>;

/// The cp run's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpFigures {
    /// Seconds of sampled time with no leader that heard from a quorum (`None`: not sampled).
    pub time_without_leader_s: Option<f64>,
    /// From the final heal until every node named the same leader (`None`: never did).
    pub recovery_after_heal_s: Option<f64>,
}

/// Stale reads among the ok reads of one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleCount {
    /// Ok reads checked.
    pub reads: u64,
    /// Of which stale.
    pub stale: u64,
}

/// Stale reads inside and outside the fault windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleReads {
    /// Reads invoked inside a fault window.
    pub during: StaleCount,
    /// The other reads.
    pub outside: StaleCount,
}

/// The ap run's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApFigures {
    /// From the final heal until every node agreed (`None`: not within the bound).
    pub convergence_s: Option<f64>,
    /// Stale reads (register workload only; `None` for the set workload).
    pub stale_reads: Option<StaleReads>,
    /// Acknowledged writes lost to last-writer-wins.
    pub lww_lost_writes: u64,
    /// Keys whose nodes disagreed after recovery.
    pub diverged_keys: u64,
}

/// The set workload's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFigures {
    /// Elements whose add was acknowledged.
    pub added: u64,
    /// Acknowledged elements missing from a final read.
    pub lost: u64,
    /// Elements a read missed after their add was acknowledged.
    pub stale: u64,
    /// Unknown adds nobody ever read.
    pub never_read: u64,
}

/// The bank workload's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankFigures {
    /// Ok reads checked.
    pub reads: u64,
    /// Reads whose total was wrong.
    pub bad_totals: u64,
    /// Reads holding a negative balance.
    pub negative_balances: u64,
    /// Number of accounts.
    pub accounts: usize,
    /// The total every read must see.
    pub total: i64,
}

/// Everything a run found: the contents of `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Always [`FORMAT`].
    pub format: String,
    /// The test's name, e.g. `cp-register-partition-halves`.
    pub test: String,
    /// The keyspace mode.
    pub mode: Mode,
    /// `register`, `set` or `bank`.
    pub workload: String,
    /// The nemesis, e.g. `partition-halves`.
    pub nemesis: String,
    /// The fault layer, `built-in` or `netns`.
    pub layer: String,
    /// Why that layer.
    pub layer_reason: String,
    /// Cluster size.
    pub nodes: usize,
    /// The seed of the schedule, shapes and client choices.
    pub seed: u64,
    /// Seconds of client traffic.
    pub time_limit_s: u64,
    /// Client tasks.
    pub concurrency: usize,
    /// The repository's revision (`unknown` outside a checkout).
    pub git_revision: String,
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    /// Wall-clock length of the whole run, in seconds.
    pub duration_s: f64,
    /// `verdict == valid`.
    pub valid: bool,
    /// The combined verdict of every check.
    pub verdict: Validity,
    /// Every anomaly found.
    pub anomalies: Vec<Anomaly>,
    /// The faults applied, in order.
    pub fault_schedule: Vec<ScheduledFault>,
    /// When everything was healed (seconds since the test started).
    pub heal_s: f64,
    /// Client operations per phase and operation.
    pub ops: PhaseCounts,
    /// Client operations per node (`unknown` when the node was not recorded).
    pub ops_by_node: BTreeMap<String, Counts>,
    /// Availability during faults.
    pub availability: Availability,
    /// Latency percentiles per phase and operation.
    pub latency_ms: PhaseLatency,
    /// cp figures (cp runs only).
    pub cp: Option<CpFigures>,
    /// ap figures (ap register and ap set runs).
    pub ap: Option<ApFigures>,
    /// Set workload figures.
    pub set: Option<SetFigures>,
    /// Bank workload figures.
    pub bank: Option<BankFigures>,
    /// What the phases mean, for a reader of the JSON.
    pub phases: String,
    /// cp register: keys that some node could not read at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_reads_missing_keys: Option<u64>,
    /// ap register: a few stale reads, as examples (not failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_read_examples: Option<Vec<Anomaly>>,
}

/// The sentence `results.json` carries under `phases`.
pub const PHASES_NOTE: &str =
    "before: before the first fault; during: inside a fault window; after: healed (gaps and tail)";

impl Results {
    /// Parses `results.json` text, refusing files of another format (see the module docs).
    pub fn parse(text: &str) -> Result<Results, String> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e}); expected a jepsen-style results.json"))?;
        match raw.get("format").and_then(serde_json::Value::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format!(
                    "results format {other:?}, but this jepsen-style reads {FORMAT:?}; \
                     render it with the jepsen-style revision that wrote it, or re-run the test"
                ))
            }
            None => {
                return Err(format!(
                    "no \"format\" field: written by an older jepsen-style or by another tool \
                     (this one reads {FORMAT:?}); re-run the test to get a current results.json"
                ))
            }
        }
        serde_json::from_value(raw).map_err(|e| format!("a {FORMAT} file with a bad field: {e}"))
    }

    /// Reads and parses `results.json` at `path`.
    pub fn load(path: &Path) -> Result<Results, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Results::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Pretty-printed JSON, as `results.json` holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("results serialize: every map key is a string")
    }

    /// Sum of every phase and operation.
    pub fn total_ops(&self) -> Counts {
        let mut sum = Counts::default();
        for c in self.ops.values().flat_map(BTreeMap::values) {
            sum.merge(c);
        }
        sum
    }
}

/// Rounds to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run with every optional part filled in.
    pub(crate) fn sample() -> Results {
        let counts = Counts {
            invoked: 10,
            ok: 7,
            fail: 2,
            unknown: 1,
        };
        Results {
            format: FORMAT.into(),
            test: "cp-register-partition-halves".into(),
            mode: Mode::Cp,
            workload: "register".into(),
            nemesis: "partition-halves".into(),
            layer: "built-in".into(),
            layer_reason: "asked for".into(),
            nodes: 5,
            seed: 7,
            time_limit_s: 15,
            concurrency: 10,
            git_revision: "abc1234".into(),
            started_at: "2026-12-04T14:00:00Z".into(),
            duration_s: 31.5,
            valid: false,
            verdict: Validity::Invalid,
            anomalies: vec![Anomaly::new("linearizability", "k1", "no linearization", vec![1, 2])],
            fault_schedule: vec![ScheduledFault {
                nemesis: "partition-halves".into(),
                start_s: 2.5,
                stop_s: 6.25,
                detail: "partition {1,2} {3,4,5}".into(),
                majority: vec![3, 4, 5],
                minority: vec![1, 2],
            }],
            heal_s: 11.0,
            ops: [(Phase::During, [(F::Write, counts)].into())].into(),
            ops_by_node: [("1".to_owned(), counts), ("unknown".to_owned(), counts)].into(),
            availability: Availability {
                during_faults: DuringFaults {
                    overall: Some(70.0),
                    majority: None,
                    minority: Some(0.0),
                    by_op: [(F::Write, Some(70.0)), (F::Cas, None)].into(),
                    majority_by_op: [(F::Write, counts)].into(),
                    minority_by_op: BTreeMap::new(),
                },
            },
            latency_ms: [(
                Phase::After,
                [(
                    F::Read,
                    Latency {
                        count: 3,
                        p50: 1.25,
                        p99: 9.5,
                        p999: 9.5,
                        max: 9.5,
                    },
                )]
                .into(),
            )]
            .into(),
            cp: Some(CpFigures {
                time_without_leader_s: Some(1.75),
                recovery_after_heal_s: None,
            }),
            ap: Some(ApFigures {
                convergence_s: Some(0.5),
                stale_reads: Some(StaleReads {
                    during: StaleCount { reads: 4, stale: 1 },
                    outside: StaleCount::default(),
                }),
                lww_lost_writes: 3,
                diverged_keys: 0,
            }),
            set: Some(SetFigures {
                added: 5,
                lost: 1,
                stale: 0,
                never_read: 2,
            }),
            bank: Some(BankFigures {
                reads: 9,
                bad_totals: 0,
                negative_balances: 0,
                accounts: 5,
                total: 500,
            }),
            phases: PHASES_NOTE.into(),
            final_reads_missing_keys: Some(0),
            stale_read_examples: Some(vec![Anomaly::new("stale-read", "k2", "old", vec![7])]),
        }
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = sample();
        let text = r.to_json();
        assert_eq!(Results::parse(&text).unwrap(), r);
        // The keys scripts/jepsen-ci.sh and the README rely on.
        assert!(text.contains("\"kind\": \"linearizability\""), "{text}");
        assert!(text.contains("\"during\": {"));
        assert!(text.contains("\"write\": {"));
        assert!(text.contains("\"verdict\": \"invalid\""));
        let mut bare = r;
        bare.cp = None;
        bare.ap = None;
        bare.set = None;
        bare.bank = None;
        bare.final_reads_missing_keys = None;
        bare.stale_read_examples = None;
        let text = bare.to_json();
        assert!(!text.contains("final_reads_missing_keys"));
        assert_eq!(Results::parse(&text).unwrap(), bare);
    }

    #[test]
    fn foreign_or_old_results_are_refused_with_a_reason() {
        let old = r#"{"test": "x", "valid": true}"#;
        let e = Results::parse(old).unwrap_err();
        assert!(e.contains("no \"format\" field") && e.contains("re-run"), "{e}");
        let future = r#"{"format": "capkv-jepsen-results/9"}"#;
        let e = Results::parse(future).unwrap_err();
        assert!(e.contains("capkv-jepsen-results/9") && e.contains(FORMAT), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["heal_s"] = serde_json::json!("soon");
        let e = Results::parse(&v.to_string()).unwrap_err();
        assert!(e.contains("bad field"), "{e}");
        assert!(Results::parse("[1,").unwrap_err().contains("not JSON"));
    }
}
