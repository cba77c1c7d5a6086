//! The two HTML pages: one run (plots from its history, then its tables) and the CAP comparison
//! (table, sentences, bar charts, and each run's timeline and tables).

use std::fmt::Write as _;

use super::cap::{cap_heading, cap_rows, cap_sentences, ops_during, p99_during};
use super::format::esc;
use super::plots::{bar_chart, latency_plot, throughput_plot, time_extent, timeline_plot, YAxis};
use super::tables::{page_end, page_start, para, params_rows, run_tables, table, verdict_badge};
use crate::history::Op;
use crate::pairing;
use crate::results::Results;

/// Renders one run as a self-contained HTML page (inline CSS and SVG, no scripts, nothing
/// external): verdict and parameters, latency and throughput plots with the fault windows shaded,
/// and the tables of `results.json`, with each anomaly's operations looked up in `history`.
///
/// Events that cannot be paired are skipped, and the page says how many there were.
pub fn render_run_html(r: &Results, history: &[Op]) -> String {
    let paired = pairing::pair(history);
    let heal = Some(r.heal_s);
    let x_max = time_extent(r, Some(&paired));

    let mut out = String::with_capacity(64 * 1024);
    let title = format!("capkv {} — {} {} under {}", r.test, r.mode, r.workload, r.nemesis);
    page_start(&mut out, &title);
    let _ = writeln!(out, "<h1>{} {}</h1>", verdict_badge(r), esc(&title));
    table(&mut out, "params", &["parameter", "value"], &params_rows(r));
    para(
        &mut out,
        "note",
        &format!(
            "History: {} events, {} paired operations, {} nemesis events; {} client events could not be paired \
             (operations still running at the end, or malformed) and are not plotted.",
            history.len(),
            paired.completed().count(),
            paired.nemesis,
            paired.unpaired()
        ),
    );

    out.push_str("<h2>Latency</h2>\n");
    let (svg, note) = latency_plot(&paired, x_max, &r.fault_schedule, heal);
    out.push_str(&svg);
    para(
        &mut out,
        "note",
        &format!(
            "{note} Each point is one operation at its invocation time; shaded bands are fault windows, the dashed \
             line is the heal."
        ),
    );
    out.push_str("<h2>Throughput</h2>\n");
    out.push_str(&throughput_plot(&paired, x_max, &r.fault_schedule, heal));
    para(
        &mut out,
        "note",
        "Operations completed per second, by completion time and outcome.",
    );

    run_tables(&mut out, r, Some((history, &paired)));
    page_end(&mut out);
    out
}

/// Renders the CAP comparison as one self-contained HTML page: the side-by-side table and its
/// explanation, bar charts of availability and p99 latency during the faults, and for each mode
/// its fault timeline and tables. Per-operation plots need a history: see each run's own report.
pub fn render_cap_html(cp: &Results, ap: &Results) -> String {
    let mut out = String::with_capacity(64 * 1024);
    page_start(&mut out, "capkv CAP report");
    let heading = cap_heading(cp, ap);
    let _ = writeln!(
        out,
        "<h1>{}</h1><p>cp {} &nbsp; ap {}</p>",
        esc(&heading[0]),
        verdict_badge(cp),
        verdict_badge(ap)
    );
    for w in &heading[1..] {
        para(&mut out, "note", w);
    }

    let rows: Vec<Vec<String>> = cap_rows(cp, ap)
        .into_iter()
        .map(|r| vec![r.label.trim().to_owned(), r.cp, r.ap])
        .collect();
    table(
        &mut out,
        "num cap",
        &["same faults, both modes", "cp (Raft)", "ap (LWW)"],
        &rows,
    );
    para(
        &mut out,
        "note",
        "n/a: not reported by the run; -: does not apply to the mode.",
    );
    para(&mut out, "trade", &cap_sentences(cp, ap).join(" "));

    out.push_str("<h2>During the faults</h2>\n<div class=\"cols\">");
    let (c, a) = (&cp.availability.during_faults, &ap.availability.during_faults);
    let groups: Vec<(String, [Option<f64>; 2])> = vec![
        ("overall".to_owned(), [c.overall, a.overall]),
        ("majority".to_owned(), [c.majority, a.majority]),
        ("minority".to_owned(), [c.minority, a.minority]),
    ];
    out.push_str(&bar_chart(
        "Availability during faults",
        "ok % of ops",
        &groups,
        YAxis::Linear { max: 100.0, step: 20.0 },
        "%",
    ));
    let lat: Vec<(String, [Option<f64>; 2])> = ops_during(cp, ap)
        .into_iter()
        .map(|f| (f.to_string(), [p99_during(cp, f), p99_during(ap, f)]))
        .collect();
    let (lo, hi) = lat
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let y = if hi > 0.0 {
        YAxis::log(lo, hi)
    } else {
        YAxis::Log { lo: 0, hi: 3 }
    };
    out.push_str(&bar_chart("p99 latency during faults", "ms (log scale)", &lat, y, ""));
    out.push_str("</div>\n");

    for (name, r) in [("cp", cp), ("ap", ap)] {
        let _ = writeln!(out, "<h2>The {name} run {}</h2>", verdict_badge(r));
        out.push_str(&timeline_plot(r, &format!("{name}: fault windows and heal")));
        table(&mut out, "params", &["parameter", "value"], &params_rows(r));
        run_tables(&mut out, r, None);
    }
    page_end(&mut out);
    out
}
