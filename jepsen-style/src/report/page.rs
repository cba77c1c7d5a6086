//! The two HTML pages: one run (plots from its history, then its tables) and the CAP comparison
//! (table, sentences, bar charts, and each run's timeline and tables).

use maud::{html, PreEscaped};

use super::cap::{cap_heading, cap_rows, cap_sentences, ops_during, p99_during};
use super::format::visible;
use super::plots::{bar_chart, latency_plot, log_decades, throughput_plot, time_extent, timeline_plot, BarAxis};
use super::tables::{h2, page, para, params_rows, run_tables, table, verdict_badge, Parts};
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

    let mut out = Parts::new();
    let title = format!("capkv {} — {} {} under {}", r.test, r.mode, r.workload, r.nemesis);
    out.push(html! { h1 { (verdict_badge(r)) " " (visible(&title)) } });
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

    h2(&mut out, "Latency");
    let (svg, note) = latency_plot(&paired, x_max, &r.fault_schedule, heal);
    out.push(PreEscaped(svg));
    para(
        &mut out,
        "note",
        &format!(
            "{note} Each point is one operation at its invocation time; shaded bands are fault windows, the dashed \
             line is the heal."
        ),
    );
    h2(&mut out, "Throughput");
    out.push(PreEscaped(throughput_plot(&paired, x_max, &r.fault_schedule, heal)));
    para(
        &mut out,
        "note",
        "Operations completed per second, by completion time and outcome.",
    );

    run_tables(&mut out, r, Some((history, &paired)));
    page(&title, out)
}

/// Renders the CAP comparison as one self-contained HTML page: the side-by-side table and its
/// explanation, bar charts of availability and p99 latency during the faults, and for each mode
/// its fault timeline and tables. Per-operation plots need a history: see each run's own report.
pub fn render_cap_html(cp: &Results, ap: &Results) -> String {
    let mut out = Parts::new();
    let heading = cap_heading(cp, ap);
    out.push(html! {
        h1 { (visible(&heading[0])) }
        p { "cp " (verdict_badge(cp)) " \u{a0} ap " (verdict_badge(ap)) }
    });
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

    h2(&mut out, "During the faults");
    let (c, a) = (&cp.availability.during_faults, &ap.availability.during_faults);
    let groups: Vec<(String, [Option<f64>; 2])> = vec![
        ("overall".to_owned(), [c.overall, a.overall]),
        ("majority".to_owned(), [c.majority, a.majority]),
        ("minority".to_owned(), [c.minority, a.minority]),
    ];
    let availability = bar_chart(
        "Availability during faults",
        "ok % of ops",
        &groups,
        BarAxis::Linear(100.0),
        "%",
    );
    let lat: Vec<(String, [Option<f64>; 2])> = ops_during(cp, ap)
        .into_iter()
        .map(|f| (f.to_string(), [p99_during(cp, f), p99_during(ap, f)]))
        .collect();
    let (lo, hi) = lat
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let y = if hi > 0.0 {
        let (lo, hi) = log_decades(lo, hi);
        BarAxis::Log(lo, hi)
    } else {
        BarAxis::Log(0, 3)
    };
    let latency = bar_chart("p99 latency during faults", "ms (log scale)", &lat, y, "");
    out.push(html! { div class="cols" { (PreEscaped(availability)) (PreEscaped(latency)) } });

    for (name, r) in [("cp", cp), ("ap", ap)] {
        out.push(html! { h2 { "The " (name) " run " (verdict_badge(r)) } });
        out.push(PreEscaped(timeline_plot(r, &format!("{name}: fault windows and heal"))));
        table(&mut out, "params", &["parameter", "value"], &params_rows(r));
        run_tables(&mut out, r, None);
    }
    page("capkv CAP report", out)
}
