//! The CAP comparison of a cp run and an ap run under the same faults: the rows of the
//! side-by-side table, the heading, the sentences that explain the numbers, and the terminal
//! rendering (comfy-table, plain ASCII, at most [`TERMINAL_WIDTH`] columns).
//!
//! In the table, `n/a` means the run did not measure the figure, and `-` that it does not apply
//! to the mode (e.g. LWW losses for a Raft keyspace).

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{ContentArrangement, Table};

use super::format::{fmt_ms, fmt_pct, fmt_secs, opt, plain, ratio_pct, verdict_word, NA, NOT_APPLICABLE};
use super::tables::stale_cell;
use crate::history::F;
use crate::linearizability::Validity;
use crate::results::{Phase, Results};

/// Width of the terminal table.
pub(super) const TERMINAL_WIDTH: u16 = 100;

/// comfy-table's ASCII_FULL_CONDENSED with `-` under the header: `+---+` rules at the top,
/// under the header and at the bottom, `|` between columns.
const ASCII_RULED: &str = "||--+-++|    ++++++";

/// One row of the comparison.
pub(super) struct CapRow {
    pub(super) label: String,
    pub(super) cp: String,
    pub(super) ap: String,
}

fn row(label: impl Into<String>, cp: String, ap: String) -> CapRow {
    CapRow {
        label: label.into(),
        cp,
        ap,
    }
}

/// Writes acknowledged on the minority side during the faults.
fn minority_writes(r: &Results) -> String {
    match r.availability.during_faults.minority_by_op.get(&F::Write) {
        Some(c) => format!("{} of {}", c.ok, c.invoked),
        None => NA.to_owned(),
    }
}

fn anomalies_cell(r: &Results) -> String {
    if r.anomalies.is_empty() {
        return "0".to_owned();
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &r.anomalies {
        *by_kind.entry(&a.kind).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} ({})", r.anomalies.len(), kinds.join(", "))
}

/// The operations with latency figures during the faults in either run.
pub(super) fn ops_during(cp: &Results, ap: &Results) -> Vec<F> {
    [cp, ap]
        .iter()
        .filter_map(|r| r.latency_ms.get(&Phase::During))
        .flat_map(|m| m.keys().copied())
        .collect::<BTreeSet<F>>()
        .into_iter()
        .collect()
}

/// p99 latency of `f` during the faults.
pub(super) fn p99_during(r: &Results, f: F) -> Option<f64> {
    r.latency_ms.get(&Phase::During).and_then(|m| m.get(&f)).map(|l| l.p99)
}

/// The rows of the comparison, in display order.
pub(super) fn cap_rows(cp: &Results, ap: &Results) -> Vec<CapRow> {
    let both = |f: &dyn Fn(&Results) -> String| (f(cp), f(ap));
    let mut rows = Vec::new();
    let (a, b) = both(&|r| verdict_word(r.verdict).to_owned());
    rows.push(row("verdict", a, b));
    let (a, b) = both(&|r| r.workload.clone());
    rows.push(row("workload", a, b));
    let (a, b) = both(&|r| fmt_pct(r.availability.during_faults.overall));
    rows.push(row("availability during faults", a, b));
    let (a, b) = both(&|r| fmt_pct(r.availability.during_faults.majority));
    rows.push(row("  majority side", a, b));
    let (a, b) = both(&|r| fmt_pct(r.availability.during_faults.minority));
    rows.push(row("  minority side", a, b));
    let (a, b) = both(&minority_writes);
    rows.push(row("writes acked on minority side", a, b));
    let (a, b) = both(&anomalies_cell);
    rows.push(row("anomalies found by the checker", a, b));
    let ap_figs = ap.ap;
    let stale = ap_figs.and_then(|a| a.stale_reads);
    let na = || NOT_APPLICABLE.to_owned();
    rows.push(row(
        "acked writes lost to LWW",
        na(),
        opt(ap_figs.map(|a| a.lww_lost_writes)),
    ));
    rows.push(row(
        "stale reads during faults",
        na(),
        stale_cell(stale.map(|s| s.during)),
    ));
    rows.push(row(
        "stale reads outside faults",
        na(),
        stale_cell(stale.map(|s| s.outside)),
    ));
    rows.push(row(
        "keys diverged after heal",
        na(),
        opt(ap_figs.map(|a| a.diverged_keys)),
    ));
    let cp_figs = cp.cp.unwrap_or_default();
    rows.push(row(
        "time without a leader",
        fmt_secs(cp_figs.time_without_leader_s),
        na(),
    ));
    rows.push(row(
        "recovery after heal",
        fmt_secs(cp_figs.recovery_after_heal_s),
        na(),
    ));
    rows.push(row(
        "convergence after heal",
        na(),
        fmt_secs(ap_figs.and_then(|a| a.convergence_s)),
    ));
    let fs = ops_during(cp, ap);
    if fs.is_empty() {
        rows.push(row("p99 latency during faults", NA.to_owned(), NA.to_owned()));
    }
    for f in fs {
        let (a, b) = both(&|r| p99_during(r, f).map_or_else(|| NA.to_owned(), |v| format!("{} ms", fmt_ms(Some(v)))));
        rows.push(row(format!("p99 latency during faults, {f}"), a, b));
    }
    let (a, b) = both(&|r| {
        let t = r.total_ops();
        format!("{} / {} / {} / {}", t.invoked, t.ok, t.fail, t.unknown)
    });
    rows.push(row("ops invoked / ok / fail / unknown", a, b));
    if cp.set.is_some() || ap.set.is_some() {
        let (a, b) = both(&|r| format!("{} / {}", opt(r.set.map(|s| s.lost)), opt(r.set.map(|s| s.stale))));
        rows.push(row("set: lost / stale elements", a, b));
    }
    if cp.bank.is_some() || ap.bank.is_some() {
        let (a, b) = both(&|r| {
            format!(
                "{} / {}",
                opt(r.bank.map(|b| b.bad_totals)),
                opt(r.bank.map(|b| b.negative_balances))
            )
        });
        rows.push(row("bank: bad totals / negative", a, b));
    }
    rows
}

/// One line describing the faults both runs went through (and a warning when they differ).
pub(super) fn cap_heading(cp: &Results, ap: &Results) -> Vec<String> {
    let mut lines = vec![format!(
        "CAP report: nemesis {}, {} layer, {} nodes, time limit {} s, seed {}",
        cp.nemesis, cp.layer, cp.nodes, cp.time_limit_s, cp.seed
    )];
    let differs: [(&str, String, String); 4] = [
        ("nemesis", cp.nemesis.clone(), ap.nemesis.clone()),
        ("seed", cp.seed.to_string(), ap.seed.to_string()),
        ("layer", cp.layer.clone(), ap.layer.clone()),
        ("nodes", cp.nodes.to_string(), ap.nodes.to_string()),
    ];
    for (label, a, b) in differs {
        if a != b {
            lines.push(format!(
                "warning: the runs differ in {label} (cp {a}, ap {b}), so the comparison is not like for like"
            ));
        }
    }
    lines
}

/// Renders the CAP comparison of a `cp` and an `ap` run for a terminal: a plain-ASCII table no
/// wider than 100 columns (long cells wrap), then a few sentences that explain the
/// trade-off in the numbers.
pub fn render_cap_terminal(cp: &Results, ap: &Results) -> String {
    let mut table = Table::new();
    table
        .load_preset(ASCII_RULED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(TERMINAL_WIDTH)
        .set_header(vec!["same faults, both modes", "cp (Raft)", "ap (LWW)"]);
    for r in cap_rows(cp, ap) {
        table.add_row(vec![plain(&r.label), plain(&r.cp), plain(&r.ap)]);
    }
    let mut out = String::new();
    for l in cap_heading(cp, ap) {
        for w in wrap(&plain(&l), TERMINAL_WIDTH.into()) {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out.push_str("n/a: not reported by the run; -: does not apply to the mode.\n\n");
    for s in cap_sentences(cp, ap) {
        for w in wrap(&plain(&s), TERMINAL_WIDTH.into()) {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out
}

/// Greedy word wrap; words longer than a line are cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut words: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let chars: Vec<char> = word.chars().collect();
        words.extend(chars.chunks(width).map(|c| c.iter().collect::<String>()));
    }
    for word in &words {
        let cur_len = cur.chars().count();
        if cur_len > 0 && cur_len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Two or three sentences on what the numbers say about the trade-off.
pub(super) fn cap_sentences(cp: &Results, ap: &Results) -> Vec<String> {
    let mut out = Vec::new();

    // cp
    let mut parts = Vec::new();
    if let Some(min) = cp.availability.during_faults.minority {
        parts.push(format!(
            "refused {} of requests on the minority side",
            fmt_pct(Some(100.0 - min))
        ));
    }
    if let Some(maj) = cp.availability.during_faults.majority {
        parts.push(format!("served {} on the majority side", fmt_pct(Some(maj))));
    }
    if parts.is_empty() {
        if let Some(all) = cp.availability.during_faults.overall {
            parts.push(format!("served {} of requests during the faults", fmt_pct(Some(all))));
        }
    }
    let cp_anoms = cp.anomalies.len();
    let consistency = match (cp_anoms, cp.verdict) {
        (0, Validity::Valid) => "stayed linearizable (0 anomalies)".to_owned(),
        (n, _) if n > 0 => format!("was NOT linearizable: the checker found {n} anomalies"),
        (_, Validity::Invalid) => "was NOT valid according to its checker".to_owned(),
        (_, Validity::Valid) => "was found valid by its checker".to_owned(),
        _ => "has no consistency verdict".to_owned(),
    };
    if parts.is_empty() {
        out.push(format!("cp {consistency}."));
    } else {
        out.push(format!("During the faults cp {} and {consistency}.", parts.join(", ")));
    }

    // ap
    let mut parts = Vec::new();
    match (
        ap.availability.during_faults.minority,
        ap.availability.during_faults.overall,
    ) {
        (Some(min), Some(all)) => parts.push(format!(
            "served {} of requests on the minority side ({} overall)",
            fmt_pct(Some(min)),
            fmt_pct(Some(all))
        )),
        (Some(min), None) => parts.push(format!(
            "served {} of requests on the minority side",
            fmt_pct(Some(min))
        )),
        (None, Some(all)) => parts.push(format!("served {} of requests during the faults", fmt_pct(Some(all)))),
        (None, None) => {}
    }
    if let Some(lost) = ap.ap.map(|a| a.lww_lost_writes) {
        parts.push(format!("lost {} acknowledged writes to last-writer-wins", lost));
    }
    let stale_during = ap.ap.and_then(|a| a.stale_reads).map(|s| s.during);
    if let Some(rate) = ratio_pct(
        stale_during.map(|s| s.stale as f64),
        stale_during.map(|s| s.reads as f64),
    ) {
        parts.push(format!(
            "returned stale values for {} of reads during the faults",
            fmt_pct(Some(rate))
        ));
    }
    if let Some(c) = ap.ap.and_then(|a| a.convergence_s) {
        parts.push(format!("converged {} after the heal", fmt_secs(Some(c))));
    } else if ap.verdict == Validity::Invalid {
        parts.push("did not pass its convergence check".to_owned());
    }
    if !parts.is_empty() {
        let last = parts.pop().unwrap_or_default();
        let head = if parts.is_empty() {
            last
        } else {
            format!("{}, and {last}", parts.join(", "))
        };
        out.push(format!("ap {head}."));
    }

    // The trade-off, only when the numbers show it.
    let (cp_min, ap_min) = (
        cp.availability.during_faults.minority,
        ap.availability.during_faults.minority,
    );
    if cp_anoms > 0 || cp.verdict == Validity::Invalid {
        out.push(
            "Warning: the cp run broke its consistency guarantee, so this run does not show the CAP trade-off; \
                  see its report."
                .to_owned(),
        );
    } else if let (Some(c), Some(a)) = (cp_min, ap_min) {
        let lost = ap.ap.map_or(0, |a| a.lww_lost_writes);
        let stale = stale_during.map_or(0, |s| s.stale);
        if a > c && (lost > 0 || stale > 0) {
            out.push(
                "That is the CAP trade-off: under the partition cp gave up availability on the minority side to stay \
                 consistent, while ap stayed available everywhere and paid for it in consistency."
                    .to_owned(),
            );
        } else if a > c {
            out.push(
                "That is the CAP trade-off: under the partition cp gave up availability on the minority side to stay \
                 consistent; ap stayed available everywhere, and although this run lost no writes and saw no stale \
                 reads, nothing guarantees that when both sides write the same keys."
                    .to_owned(),
            );
        } else {
            out.push(
                "The minority side was not more available under ap than under cp in this run, so the partition may \
                 not have separated the clients from a majority; check the fault schedule."
                    .to_owned(),
            );
        }
    } else {
        out.push("Some figures are missing (n/a), so the comparison is incomplete.".to_owned());
    }
    out
}
