//! From a finished run to its verdict: the checks that fit the run's mode and workload, the
//! statistics, and the typed [`Results`] that `results.json` holds; and the short summary the
//! CLI prints.
//!
//! A run's verdict is the worst of its checks: `invalid` beats `unknown` beats `valid`. A cp run
//! that found no agreed leader after the final heal is invalid (`no-recovery`); an ap register
//! run that did not converge within the runner's bound is invalid (`no-convergence`, or the
//! diverged keys).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::ap_register::{self, FinalRead};
use crate::fault::Fault;
use crate::history::{self, Op, F};
use crate::linearizability::{self, Validity};
use crate::nemesis::Window;
use crate::options::{utc, RunOptions};
use crate::results::{
    round2, Anomaly, ApFigures, BankFigures, CpFigures, Mode, Results, ScheduledFault, SetFigures, StaleReads, FORMAT,
    PHASES_NOTE,
};
use crate::stats::{self, FaultWindow};
use crate::workload::{self, Shared, Workload};
use crate::{bank, set};

/// A fault that was applied, for results and undo.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    pub(crate) window: Window,
    pub(crate) fault: Fault,
    pub(crate) start_ns: u64,
    pub(crate) stop_ns: u64,
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Nanoseconds as seconds, rounded to 0.01.
pub(crate) fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e7).round() / 100.0
}

/// Everything measured outside the history.
#[derive(Default)]
pub(crate) struct Facts {
    pub(crate) heal_ns: u64,
    pub(crate) applied: Vec<Applied>,
    pub(crate) recovery: Option<Duration>,
    pub(crate) leaderless_s: Option<f64>,
    pub(crate) convergence: Option<Duration>,
    pub(crate) ap_finals: Vec<FinalRead>,
    pub(crate) cp_finals: BTreeMap<String, Vec<(u64, Option<String>)>>,
}

fn fault_windows(applied: &[Applied]) -> Vec<FaultWindow> {
    applied
        .iter()
        .map(|a| {
            let (majority, minority) = a.fault.sides();
            FaultWindow {
                start_ns: a.start_ns,
                stop_ns: a.stop_ns,
                majority,
                minority,
            }
        })
        .collect()
}

fn linearizability_anomalies(ops: &[Op]) -> (Validity, Vec<Anomaly>) {
    let register: Vec<Op> = ops
        .iter()
        .filter(|o| matches!(o.f, F::Read | F::Write | F::Cas))
        .cloned()
        .collect();
    let paired = match crate::pairing::operations(&register) {
        Ok(p) => p,
        Err(e) => {
            return (
                Validity::Invalid,
                vec![Anomaly::new("malformed-history", "", e.to_string(), Vec::new())],
            )
        }
    };
    let verdict = linearizability::check(&paired);
    let mut anomalies = Vec::new();
    for (key, kv) in &verdict.keys {
        match kv.valid {
            Validity::Valid => {}
            Validity::Unknown => anomalies.push(Anomaly::new(
                "linearizability-unknown",
                key,
                kv.note.clone().unwrap_or_else(|| "search budget exhausted".into()),
                Vec::new(),
            )),
            Validity::Invalid => {
                let ce = kv.counterexample.as_ref();
                let mut idx: Vec<u64> = Vec::new();
                let mut detail = String::from("no linearization exists");
                if let Some(ce) = ce {
                    for l in &ce.prefix {
                        idx.extend([Some(l.op.call), l.op.ret].into_iter().flatten());
                    }
                    for b in &ce.blocked {
                        idx.extend([Some(b.op.call), b.op.ret].into_iter().flatten());
                    }
                    let blocked: Vec<String> = ce.blocked.iter().map(|b| format!("{} ({})", b.op, b.reason)).collect();
                    detail = format!(
                        "longest linearizable prefix: {} ops, leaving the register at {}; none of these can go next: {}",
                        ce.prefix.len(),
                        history::show_value(ce.state.as_deref()),
                        blocked.join("; ")
                    );
                }
                idx.sort_unstable();
                idx.dedup();
                let tail = idx.len().saturating_sub(crate::results::ANOMALY_OPS_MAX);
                anomalies.push(Anomaly::new("linearizability", key, detail, idx.split_off(tail)));
            }
        }
    }
    (verdict.valid, anomalies)
}

fn round_secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| round2(d.as_secs_f64()))
}

/// Checks the history and the measurements, and builds the run's [`Results`].
pub(crate) fn check_and_summarize(
    opts: &RunOptions,
    shared: &Shared,
    ops: &[Op],
    facts: &Facts,
    started_at: SystemTime,
) -> Results {
    let windows = fault_windows(&facts.applied);
    let during = |t: u64| stats::window_at(t, &windows).is_some();
    let mut anomalies: Vec<Anomaly> = Vec::new();
    let mut verdict = Validity::Valid;
    let (mut cp, mut ap, mut set_figures, mut bank_figures) = (None, None, None, None);
    let (mut final_reads_missing_keys, mut stale_read_examples) = (None, None);
    if opts.mode == "cp" {
        cp = Some(CpFigures {
            time_without_leader_s: facts.leaderless_s,
            recovery_after_heal_s: round_secs(facts.recovery),
        });
        if facts.recovery.is_none() {
            verdict = Validity::Invalid;
            anomalies.push(Anomaly::new(
                "no-recovery",
                "",
                "no leader agreed by every node after the final heal",
                Vec::new(),
            ));
        }
    }
    match (opts.workload, opts.mode) {
        (Workload::Register, "cp") => {
            let (v, a) = linearizability_anomalies(ops);
            verdict = worst(verdict, v);
            anomalies.extend(a);
            let unread = facts.cp_finals.iter().filter(|(_, r)| r.len() < opts.nodes).count();
            final_reads_missing_keys = Some(unread as u64);
        }
        (Workload::Register, _) => {
            let out = ap_register::check(ops, &shared.versions(), &facts.ap_finals, during);
            if !out.anomalies.is_empty() || facts.convergence.is_none() {
                verdict = Validity::Invalid;
            }
            if facts.convergence.is_none() && out.diverged_keys == 0 {
                anomalies.push(Anomaly::new(
                    "no-convergence",
                    "",
                    "key counts still differ across nodes",
                    Vec::new(),
                ));
            }
            anomalies.extend(out.anomalies);
            stale_read_examples = Some(out.stale_examples);
            ap = Some(ApFigures {
                convergence_s: round_secs(facts.convergence),
                stale_reads: Some(StaleReads {
                    during: out.stale_during,
                    outside: out.stale_outside,
                }),
                lww_lost_writes: out.lww_lost_writes,
                diverged_keys: out.diverged_keys,
            });
        }
        (Workload::Set, mode) => {
            let finals: Vec<(u64, Option<String>)> = if mode == "cp" {
                facts.cp_finals.get(workload::SET_KEY).cloned().unwrap_or_default()
            } else {
                facts.ap_finals.iter().map(|f| (f.node, f.value.clone())).collect()
            };
            let out = set::check(ops, workload::SET_KEY, &finals, mode == "cp");
            let diverged = finals.iter().any(|(_, v)| *v != finals[0].1) || finals.len() < opts.nodes;
            if diverged {
                anomalies.push(Anomaly::new(
                    "divergence",
                    workload::SET_KEY,
                    "final reads differ across nodes (or some failed)",
                    Vec::new(),
                ));
            }
            if !out.anomalies.is_empty() || diverged {
                verdict = Validity::Invalid;
            }
            anomalies.extend(out.anomalies);
            set_figures = Some(SetFigures {
                added: out.added,
                lost: out.lost,
                stale: out.stale,
                never_read: out.never_read,
            });
            if mode == "ap" {
                ap = Some(ApFigures {
                    convergence_s: round_secs(facts.convergence),
                    stale_reads: None,
                    lww_lost_writes: out.lost,
                    diverged_keys: u64::from(diverged),
                });
            }
        }
        (Workload::Bank, _) => {
            let total = workload::BANK_BALANCE * workload::BANK_ACCOUNTS as i64;
            let out = bank::check(ops, workload::BANK_ACCOUNTS, total);
            if !out.anomalies.is_empty() {
                verdict = Validity::Invalid;
            }
            anomalies.extend(out.anomalies);
            bank_figures = Some(BankFigures {
                reads: out.reads,
                bad_totals: out.bad_totals,
                negative_balances: out.negative_balances,
                accounts: workload::BANK_ACCOUNTS,
                total,
            });
        }
    }
    let (op_counts, ops_by_node) = stats::op_counts(ops, &windows);
    let fault_schedule = facts
        .applied
        .iter()
        .map(|a| {
            let (majority, minority) = a.fault.sides();
            ScheduledFault {
                nemesis: a.window.kind.name().to_owned(),
                start_s: secs(a.start_ns),
                stop_s: secs(a.stop_ns),
                detail: a.fault.detail(),
                majority,
                minority,
            }
        })
        .collect();
    Results {
        format: FORMAT.to_owned(),
        test: opts.test_name(),
        mode: Mode::parse(opts.mode).expect("validated mode"),
        workload: opts.workload.name().to_owned(),
        nemesis: opts.nemesis.name().to_owned(),
        layer: opts.layer.name().to_owned(),
        layer_reason: opts.layer_reason.clone(),
        nodes: opts.nodes,
        seed: opts.seed,
        time_limit_s: opts.time_limit_s,
        concurrency: opts.concurrency,
        git_revision: git_revision(),
        started_at: utc(started_at),
        duration_s: (started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0) * 10.0).round() / 10.0,
        valid: verdict == Validity::Valid,
        verdict,
        anomalies,
        fault_schedule,
        heal_s: secs(facts.heal_ns),
        ops: op_counts,
        ops_by_node,
        availability: stats::availability(ops, &windows),
        latency_ms: stats::latency(ops, &windows),
        cp,
        ap,
        set: set_figures,
        bank: bank_figures,
        phases: PHASES_NOTE.to_owned(),
        final_reads_missing_keys,
        stale_read_examples,
    }
}

fn worst(a: Validity, b: Validity) -> Validity {
    match (a, b) {
        (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
        (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
        _ => Validity::Valid,
    }
}

fn show<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "null".to_owned(), |x| x.to_string())
}

/// A short human summary of a run's results.
pub fn summary(results: &Results) -> String {
    let mut s = format!(
        "{} seed {}: {} ({} anomalies)\n",
        results.test,
        results.seed,
        results.verdict.to_string().to_uppercase(),
        results.anomalies.len()
    );
    let a = &results.availability.during_faults;
    s += &format!(
        "  availability during faults: overall {} %, majority {} %, minority {} %\n",
        show(a.overall),
        show(a.majority),
        show(a.minority)
    );
    if let Some(cp) = &results.cp {
        s += &format!(
            "  cp: time without leader {} s, recovery after heal {} s\n",
            show(cp.time_without_leader_s),
            show(cp.recovery_after_heal_s)
        );
    }
    let json = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
    if let Some(ap) = &results.ap {
        s += &format!("  ap: {}\n", json(serde_json::to_string(ap)));
    }
    if let Some(set) = &results.set {
        s += &format!("  set: {}\n", json(serde_json::to_string(set)));
    }
    if let Some(bank) = &results.bank {
        s += &format!("  bank: {}\n", json(serde_json::to_string(bank)));
    }
    for a in results.anomalies.iter().take(5) {
        s += &format!("  anomaly {:?} on {:?}: {:?}\n", a.kind, a.key, a.detail);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Kind, Value, NEMESIS_PROCESS};

    #[test]
    fn worst_validity() {
        assert_eq!(worst(Validity::Valid, Validity::Unknown), Validity::Unknown);
        assert_eq!(worst(Validity::Invalid, Validity::Unknown), Validity::Invalid);
        assert_eq!(worst(Validity::Valid, Validity::Valid), Validity::Valid);
    }

    #[test]
    fn stale_read_in_history_becomes_a_linearizability_anomaly() {
        let mut r = history::Recorder::new();
        r.invoke_write(0, "k", "1");
        r.ok(0);
        r.invoke_write(0, "k", "2");
        r.ok(0);
        r.invoke_read(1, "k");
        r.ok_read(1, Some("1"));
        let mut ops = r.into_ops();
        ops.insert(
            0,
            Op {
                index: 0,
                time_ns: 0,
                process: NEMESIS_PROCESS,
                kind: Kind::Info,
                f: F::Start,
                key: "partition-halves".into(),
                value: Some(Value::single("partition {1,2} {3,4,5}")),
                node: None,
                succeeded: None,
                error: None,
            },
        );
        for (i, op) in ops.iter_mut().enumerate() {
            op.index = i as u64;
        }
        let (v, a) = linearizability_anomalies(&ops);
        assert_eq!(v, Validity::Invalid);
        assert_eq!(a[0].kind, "linearizability");
        assert!(a[0].ops.contains(&5), "{:?}", a[0]);
    }
}
