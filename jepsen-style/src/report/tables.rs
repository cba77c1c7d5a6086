//! The page skeleton and the tables of one run, shared by the run page and the CAP page.
//!
//! Pages are built with maud, which HTML-escapes every value it inserts; [`visible`] also shows
//! control and bidirectional-override characters as `\u{..}` escapes. Class names are fixed
//! strings, never run data. Only the CSS and the SVG plots are inserted unescaped.

use std::collections::{BTreeMap, HashMap, HashSet};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::format::{
    fmt_ms, fmt_num, fmt_pct, fmt_secs, node_list, node_rank, opt, outcome_name, ratio_pct, verdict_class,
    verdict_word, visible, NA, NOT_APPLICABLE,
};
use crate::history::{Kind, Op, Value};
use crate::pairing::Paired;
use crate::results::{Counts, Mode, Results, StaleCount};

/// Most anomalies rendered in full on a page, and most operations per anomaly.
const MAX_ANOMALIES: usize = 100;
const MAX_ANOMALY_OPS: usize = 30;

pub(super) const CSS: &str =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#212529;margin:0;background:#f8f9fa}\
main{max-width:1200px;margin:0 auto;padding:16px 20px 40px;background:#fff}\
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dee2e6}\
h3{font-size:15px;margin:18px 0 6px}\
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;color:#fff;font-weight:700;letter-spacing:.03em}\
.verdict.valid{background:#2b8a3e}.verdict.invalid{background:#c92a2a}.verdict.unknown{background:#e67700}\
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #dee2e6;padding:3px 8px;vertical-align:top}\
th{background:#f1f3f5;text-align:left}table.num td{text-align:right}table.num td:first-child{text-align:left}\
table.params td:first-child{font-weight:600}td.k{font-family:ui-monospace,monospace;word-break:break-all}\
table.ops td{font-family:ui-monospace,monospace;font-size:12px}\
.note{color:#495057;font-size:13px}.trade{font-size:15px;background:#f1f3f5;padding:10px 14px;border-radius:4px}\
svg{display:block;margin:6px 0 4px;max-width:100%;height:auto}\
svg .title{font-weight:700;font-size:14px}svg .area{fill:#fff;stroke:#adb5bd}\
svg .grid{stroke:#e9ecef}svg .grid.minor{stroke:#f5f5f5}svg .tick,svg .legend{font-size:11px;fill:#495057}\
svg .axis{font-size:12px;fill:#343a40}svg .fault{fill:#e03131;fill-opacity:.10}\
svg .fault-label{font-size:11px;fill:#c92a2a}svg .heal{stroke:#2b8a3e;stroke-width:1.5;stroke-dasharray:5 3}\
svg .heal-label{font-size:11px;fill:#2b8a3e}svg .window{fill:#c92a2a;fill-opacity:.55}svg .pts{fill:none;stroke-width:1;stroke-opacity:.75}\
svg .rate{fill:none;stroke-width:1.5}svg .empty{fill:#868e96;font-size:13px}\
.cols{display:flex;flex-wrap:wrap;gap:16px}";

/// The parts of a page, in order; [`page`] wraps them in the document.
pub(super) type Parts = Vec<Markup>;

/// A whole self-contained page: inline CSS, no scripts, nothing external.
pub(super) fn page(title: &str, parts: Parts) -> String {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (visible(title)) }
                style { (PreEscaped(CSS)) }
            }
            body { main { @for part in &parts { (part) "\n" } } }
        }
    };
    doc.into_string() + "\n"
}

/// A table of plain-text cells (maud escapes them). `class` is a fixed CSS class.
pub(super) fn table(out: &mut Parts, class: &str, head: &[&str], rows: &[Vec<String>]) {
    out.push(html! {
        table class=(class) {
            thead { tr { @for h in head { th { (visible(h)) } } } }
            tbody { @for row in rows { tr { @for cell in row { td { (visible(cell)) } } } } }
        }
    });
}

/// A paragraph of plain text.
pub(super) fn para(out: &mut Parts, class: &str, text: &str) {
    out.push(html! { p class=(class) { (visible(text)) } });
}

/// A section heading.
pub(super) fn h2(out: &mut Parts, text: &str) {
    out.push(html! { h2 { (visible(text)) } });
}

/// invoked / ok / fail / unknown cells and the ok share.
fn count_cells(c: &Counts) -> Vec<String> {
    vec![
        c.invoked.to_string(),
        c.ok.to_string(),
        c.fail.to_string(),
        c.unknown.to_string(),
        fmt_pct(ratio_pct(Some(c.ok as f64), Some(c.invoked as f64))),
    ]
}

const COUNT_HEAD: [&str; 5] = ["invoked", "ok", "fail", "unknown (info)", "ok %"];

pub(super) fn params_rows(r: &Results) -> Vec<Vec<String>> {
    [
        ("test", r.test.clone()),
        ("mode", r.mode.to_string()),
        ("workload", r.workload.clone()),
        ("nemesis", r.nemesis.clone()),
        ("layer", r.layer.clone()),
        ("nodes", r.nodes.to_string()),
        ("seed", r.seed.to_string()),
        ("time limit (s)", r.time_limit_s.to_string()),
        ("concurrency", r.concurrency.to_string()),
        ("git revision", r.git_revision.clone()),
        ("started at", r.started_at.clone()),
        ("duration (s)", fmt_num(r.duration_s)),
        ("heal at (s)", fmt_num(r.heal_s)),
    ]
    .into_iter()
    .map(|(label, value)| vec![label.to_owned(), value])
    .collect()
}

fn ops_section(out: &mut Parts, r: &Results) {
    h2(out, "Operations per phase");
    let rows: Vec<Vec<String>> = r
        .ops
        .iter()
        .flat_map(|(phase, by_f)| {
            by_f.iter().map(move |(f, counts)| {
                let mut row = vec![phase.name().to_owned(), f.to_string()];
                row.extend(count_cells(counts));
                row
            })
        })
        .collect();
    if rows.is_empty() {
        para(out, "note", "No client operations were recorded.");
    } else {
        let mut head = vec!["phase", "op"];
        head.extend(COUNT_HEAD);
        table(out, "num", &head, &rows);
    }

    h2(out, "Operations per node");
    let mut nodes: Vec<(&String, &Counts)> = r.ops_by_node.iter().collect();
    if nodes.is_empty() {
        para(out, "note", "No client operations were recorded.");
        return;
    }
    nodes.sort_by_key(|(n, _)| node_rank(n));
    let windows_on = |node: &str, side: fn(&crate::results::ScheduledFault) -> &[u64]| {
        r.fault_schedule
            .iter()
            .filter(|f| side(f).iter().any(|id| id.to_string() == node))
            .count()
    };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|(node, counts)| {
            let mut row = vec![node.to_string()];
            row.extend(count_cells(counts));
            let maj = windows_on(node, |f| &f.majority);
            let min = windows_on(node, |f| &f.minority);
            row.push(match (maj, min) {
                (0, 0) => NOT_APPLICABLE.to_owned(),
                (_, 0) => format!("majority ({maj} window(s))"),
                (0, _) => format!("minority ({min} window(s))"),
                _ => format!("majority {maj}, minority {min} window(s)"),
            });
            row
        })
        .collect();
    let mut head = vec!["node"];
    head.extend(COUNT_HEAD);
    head.push("side during faults");
    table(out, "num", &head, &rows);
}

fn availability_section(out: &mut Parts, r: &Results) {
    h2(out, "Availability during faults");
    let a = &r.availability.during_faults;
    let mut rows = vec![
        vec!["overall".to_owned(), fmt_pct(a.overall)],
        vec!["majority side".to_owned(), fmt_pct(a.majority)],
        vec!["minority side".to_owned(), fmt_pct(a.minority)],
    ];
    for (f, pct) in &a.by_op {
        rows.push(vec![format!("op: {f}"), fmt_pct(*pct)]);
    }
    table(out, "num", &["scope", "ok % of ops invoked during faults"], &rows);
}

fn latency_section(out: &mut Parts, r: &Results) {
    h2(out, "Latency percentiles (ms)");
    let rows: Vec<Vec<String>> = r
        .latency_ms
        .iter()
        .flat_map(|(phase, by_f)| {
            by_f.iter().map(move |(f, l)| {
                vec![
                    phase.name().to_owned(),
                    f.to_string(),
                    l.count.to_string(),
                    fmt_ms(Some(l.p50)),
                    fmt_ms(Some(l.p99)),
                    fmt_ms(Some(l.p999)),
                    fmt_ms(Some(l.max)),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        para(out, "note", "No operation completed, so there are no latency figures.");
        return;
    }
    table(
        out,
        "num",
        &["phase", "op", "count", "p50", "p99", "p99.9", "max"],
        &rows,
    );
}

/// `9.5% (38 of 400)`, or `n/a`.
pub(super) fn stale_cell(c: Option<StaleCount>) -> String {
    match c {
        Some(c) => format!(
            "{} ({} of {})",
            fmt_pct(ratio_pct(Some(c.stale as f64), Some(c.reads as f64))),
            c.stale,
            c.reads
        ),
        None => NA.to_owned(),
    }
}

fn figures_section(out: &mut Parts, r: &Results) {
    if r.cp.is_some() || r.mode == Mode::Cp {
        let cp = r.cp.unwrap_or_default();
        h2(out, "CP figures");
        table(
            out,
            "num",
            &["figure", "value"],
            &[
                vec!["time without a leader".to_owned(), fmt_secs(cp.time_without_leader_s)],
                vec!["recovery after heal".to_owned(), fmt_secs(cp.recovery_after_heal_s)],
            ],
        );
    }
    if r.ap.is_some() || r.mode == Mode::Ap {
        let ap = r.ap;
        let stale = ap.and_then(|a| a.stale_reads);
        h2(out, "AP figures");
        table(
            out,
            "num",
            &["figure", "value"],
            &[
                vec![
                    "convergence after heal".to_owned(),
                    fmt_secs(ap.and_then(|a| a.convergence_s)),
                ],
                vec![
                    "stale reads during faults".to_owned(),
                    stale_cell(stale.map(|s| s.during)),
                ],
                vec![
                    "stale reads outside faults".to_owned(),
                    stale_cell(stale.map(|s| s.outside)),
                ],
                vec![
                    "acknowledged writes lost to LWW".to_owned(),
                    opt(ap.map(|a| a.lww_lost_writes)),
                ],
                vec!["keys diverged after heal".to_owned(), opt(ap.map(|a| a.diverged_keys))],
            ],
        );
    }
    if let Some(set) = &r.set {
        h2(out, "Set workload");
        let rows: Vec<Vec<String>> = [
            ("added", set.added),
            ("lost", set.lost),
            ("stale", set.stale),
            ("never read", set.never_read),
        ]
        .iter()
        .map(|(k, v)| vec![(*k).to_owned(), v.to_string()])
        .collect();
        table(out, "num", &["elements", "count"], &rows);
    }
    if let Some(bank) = &r.bank {
        h2(out, "Bank workload");
        let rows: Vec<Vec<String>> = [
            ("reads", bank.reads),
            ("reads with a wrong total", bank.bad_totals),
            ("reads with a negative balance", bank.negative_balances),
        ]
        .iter()
        .map(|(l, v)| vec![(*l).to_owned(), v.to_string()])
        .collect();
        table(out, "num", &["figure", "count"], &rows);
    }
}

fn schedule_section(out: &mut Parts, r: &Results) {
    h2(out, "Fault schedule");
    if r.fault_schedule.is_empty() {
        para(out, "note", "No faults were recorded for this run.");
    } else {
        let rows: Vec<Vec<String>> = r
            .fault_schedule
            .iter()
            .enumerate()
            .map(|(i, f)| {
                vec![
                    (i + 1).to_string(),
                    f.nemesis.clone(),
                    fmt_num(f.start_s),
                    fmt_num(f.stop_s),
                    node_list(&f.majority),
                    node_list(&f.minority),
                    f.detail.clone(),
                ]
            })
            .collect();
        table(
            out,
            "schedule",
            &[
                "#",
                "nemesis",
                "start (s)",
                "stop (s)",
                "majority",
                "minority",
                "detail",
            ],
            &rows,
        );
    }
    para(
        out,
        "note",
        &format!("Everything healed at {}.", fmt_secs(Some(r.heal_s))),
    );
}

/// History rows for the anomaly tables: each referenced index, shown with its partner.
fn op_rows(indexes: &[u64], history: &[Op], paired: &Paired) -> Vec<Vec<String>> {
    let wanted: HashSet<u64> = indexes.iter().copied().collect();
    let by_index: HashMap<u64, &Op> = history
        .iter()
        .filter(|o| wanted.contains(&o.index))
        .map(|o| (o.index, o))
        .collect();
    let completed: Vec<_> = paired.completed().collect();
    let pair_of: HashMap<u64, usize> = completed
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            [
                (e.invoke.index, i),
                (e.completion.map_or(e.invoke.index, |c| c.index), i),
            ]
        })
        .filter(|(idx, _)| wanted.contains(idx))
        .collect();
    let mut seen_pairs = HashSet::new();
    let mut rows = Vec::new();
    for idx in indexes {
        if let Some(&pi) = pair_of.get(idx) {
            if !seen_pairs.insert(pi) {
                continue;
            }
            let e = completed[pi];
            let (inv, done) = (e.invoke, e.completion.expect("completed events have a completion"));
            let value = if inv.value.is_none() {
                format!("\u{2192} {}", show_value(done.value.as_ref()))
            } else if done.value.is_some() && done.value != inv.value {
                format!(
                    "{} \u{2192} {}",
                    show_value(inv.value.as_ref()),
                    show_value(done.value.as_ref())
                )
            } else {
                show_value(inv.value.as_ref())
            };
            let mut outcome = outcome_name(e.outcome()).to_owned();
            if done.succeeded == Some(false) {
                outcome.push_str(" (not swapped)");
            }
            rows.push(vec![
                format!("{}\u{2192}{}", inv.index, done.index),
                fmt_num(inv.time_ns as f64 / 1e9),
                inv.process.to_string(),
                opt(inv.node.or(done.node)),
                inv.f.to_string(),
                format!("{:?}", inv.key),
                value,
                outcome,
                fmt_ms(e.latency_ns().map(|ns| ns as f64 / 1e6)),
                done.error.clone().or_else(|| inv.error.clone()).unwrap_or_default(),
            ]);
        } else if let Some(op) = by_index.get(idx) {
            let kind = match op.kind {
                Kind::Invoke => "invoke",
                Kind::Ok => "ok",
                Kind::Fail => "fail",
                Kind::Info => "info",
            };
            rows.push(vec![
                op.index.to_string(),
                fmt_num(op.time_ns as f64 / 1e9),
                op.process.to_string(),
                opt(op.node),
                op.f.to_string(),
                format!("{:?}", op.key),
                show_value(op.value.as_ref()),
                format!("{kind} (unpaired)"),
                NA.to_owned(),
                op.error.clone().unwrap_or_default(),
            ]);
        } else {
            let mut row = vec![idx.to_string(), NA.to_owned()];
            row.extend(std::iter::repeat_n(String::new(), 5));
            row.push("not in the history".to_owned());
            row.extend([String::new(), String::new()]);
            rows.push(row);
        }
    }
    rows
}

fn anomalies_section(out: &mut Parts, r: &Results, history: Option<(&[Op], &Paired)>) {
    let list = &r.anomalies;
    h2(out, &format!("Anomalies ({})", list.len()));
    if list.is_empty() {
        para(out, "note", "None: the checker found no anomaly in this history.");
        return;
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in list {
        *by_kind.entry(&a.kind).or_default() += 1;
    }
    let rows: Vec<Vec<String>> = by_kind
        .iter()
        .map(|(k, n)| vec![(*k).to_owned(), n.to_string()])
        .collect();
    table(out, "num", &["kind", "count"], &rows);
    if list.len() > MAX_ANOMALIES {
        para(
            out,
            "note",
            &format!(
                "The first {MAX_ANOMALIES} of {} anomalies are shown in full.",
                list.len()
            ),
        );
    }
    for (i, a) in list.iter().take(MAX_ANOMALIES).enumerate() {
        out.push(html! {
            h3 class="anomaly" { (i + 1) ". " (visible(&a.kind)) " on key " span class="k" { (visible(&format!("{:?}", a.key))) } }
        });
        para(out, "detail", &a.detail);
        if a.ops.is_empty() {
            continue;
        }
        let shown = &a.ops[..a.ops.len().min(MAX_ANOMALY_OPS)];
        match history {
            Some((h, p)) => table(
                out,
                "ops",
                &[
                    "index",
                    "start (s)",
                    "process",
                    "node",
                    "op",
                    "key",
                    "value",
                    "outcome",
                    "latency (ms)",
                    "error",
                ],
                &op_rows(shown, h, p),
            ),
            None => para(
                out,
                "note",
                &format!(
                    "history indexes: {}",
                    shown.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
        if a.ops.len() > shown.len() {
            para(
                out,
                "note",
                &format!("… and {} more operations.", a.ops.len() - shown.len()),
            );
        }
    }
}

/// All the tables of one run. With a history, anomaly operations are shown as rows.
pub(super) fn run_tables(out: &mut Parts, r: &Results, history: Option<(&[Op], &Paired)>) {
    ops_section(out, r);
    availability_section(out, r);
    latency_section(out, r);
    figures_section(out, r);
    schedule_section(out, r);
    anomalies_section(out, r, history);
}

/// The verdict as a coloured badge.
pub(super) fn verdict_badge(r: &Results) -> Markup {
    html! { span class={ "verdict " (verdict_class(r.verdict)) } { (verdict_word(r.verdict)) } }
}

/// A history value for humans: strings quoted with escapes, CAS pairs as `expected → new`.
fn show_value(v: Option<&Value>) -> String {
    let quoted = |s: Option<&String>| s.map_or_else(|| "absent".to_owned(), |s| format!("{s:?}"));
    match v {
        None => "absent".to_owned(),
        Some(Value::Single(s)) => quoted(Some(s)),
        Some(Value::Cas { expected, new }) => format!("{} \u{2192} {}", quoted(expected.as_ref()), quoted(Some(new))),
    }
}
