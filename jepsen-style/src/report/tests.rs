//! Tests of the report: the run page, the CAP page and the terminal table, from typed results
//! (hand-made, and a stored run under `testdata/`).

use std::collections::BTreeMap;

use super::cap::TERMINAL_WIDTH;
use super::format::{esc, fmt_num, fmt_pct, plain, OUTCOMES};
use super::plots::log_decades;
use super::plots::{outcome_rgb, FAULT_FILL, HEAL};
use super::*;
use crate::history::{Kind, Op, Value, F, NEMESIS_PROCESS};
use crate::linearizability::Validity;
use crate::pairing::Outcome;
use crate::results::{
    Anomaly, ApFigures, Availability, BankFigures, Counts, CpFigures, DuringFaults, Latency, Mode, Phase, Results,
    ScheduledFault, StaleCount, StaleReads, FORMAT, PHASES_NOTE,
};

fn ev(index: u64, t_ms: u64, process: u64, kind: Kind, f: F, key: &str, value: Option<Value>) -> Op {
    Op {
        index,
        time_ns: t_ms * 1_000_000,
        process,
        kind,
        f,
        key: key.to_owned(),
        value,
        node: Some(process % 5 + 1),
        succeeded: None,
        error: None,
    }
}

/// Writes and reads on one key, with a fail and an info, and a dangling invocation.
fn small_history(key: &str) -> Vec<Op> {
    let v = |s: &str| Some(Value::single(s));
    vec![
        ev(0, 100, 0, Kind::Invoke, F::Write, key, v("1")),
        ev(1, 105, 0, Kind::Ok, F::Write, key, v("1")),
        ev(2, 2000, 1, Kind::Invoke, F::Read, key, None),
        ev(3, 2003, 1, Kind::Ok, F::Read, key, v("1")),
        ev(4, 6000, 2, Kind::Invoke, F::Write, key, v("<b>2</b>")),
        ev(5, 7000, 2, Kind::Fail, F::Write, key, v("<b>2</b>")),
        ev(6, 8000, 3, Kind::Invoke, F::Cas, key, Some(Value::cas(Some("1"), "3"))),
        ev(7, 13000, 3, Kind::Info, F::Cas, key, Some(Value::cas(Some("1"), "3"))),
        ev(8, 16000, 4, Kind::Invoke, F::Read, key, None),
        ev(9, 16010, 4, Kind::Ok, F::Read, key, v("0")),
        ev(10, 17000, 5, Kind::Invoke, F::Read, key, None),
    ]
}

fn counts(invoked: u64, ok: u64, fail: u64, unknown: u64) -> Counts {
    Counts {
        invoked,
        ok,
        fail,
        unknown,
    }
}

fn fault(nemesis: &str, start_s: f64, stop_s: f64, detail: &str, majority: &[u64], minority: &[u64]) -> ScheduledFault {
    ScheduledFault {
        nemesis: nemesis.into(),
        start_s,
        stop_s,
        detail: detail.into(),
        majority: majority.to_vec(),
        minority: minority.to_vec(),
    }
}

fn latency(count: u64, p50: f64, p99: f64, p999: f64, max: f64) -> Latency {
    Latency {
        count,
        p50,
        p99,
        p999,
        max,
    }
}

fn base(mode: Mode) -> Results {
    Results {
        format: FORMAT.into(),
        test: format!("{mode}-register-partition-halves"),
        mode,
        workload: "register".into(),
        nemesis: "partition-halves".into(),
        layer: "built-in".into(),
        layer_reason: "asked for".into(),
        nodes: 5,
        seed: 7,
        time_limit_s: 20,
        concurrency: 10,
        git_revision: "f1b4db1".into(),
        started_at: "2026-11-01T10:00:00Z".into(),
        duration_s: 21.5,
        valid: true,
        verdict: Validity::Valid,
        anomalies: Vec::new(),
        fault_schedule: Vec::new(),
        heal_s: 0.0,
        ops: BTreeMap::new(),
        ops_by_node: BTreeMap::new(),
        availability: Availability::default(),
        latency_ms: BTreeMap::new(),
        cp: None,
        ap: None,
        set: None,
        bank: None,
        phases: PHASES_NOTE.into(),
        final_reads_missing_keys: None,
        stale_read_examples: None,
    }
}

fn full_results(valid: bool, key: &str) -> Results {
    let mut r = base(Mode::Cp);
    r.valid = valid;
    r.verdict = if valid { Validity::Valid } else { Validity::Invalid };
    if !valid {
        r.anomalies = vec![Anomaly::new(
            "stale-read",
            key,
            "read 0 after 1 was acknowledged",
            vec![0, 1, 8, 9, 999],
        )];
    }
    r.fault_schedule = vec![
        fault("partition-halves", 5.0, 10.0, "{1,2,3} | {4,5}", &[1, 2, 3], &[4, 5]),
        fault("isolate-leader", 12.0, 15.0, "leader 1 alone", &[2, 3, 4, 5], &[1]),
    ];
    r.heal_s = 15.0;
    r.ops = [
        (Phase::Before, [(F::Write, counts(1, 1, 0, 0))].into()),
        (
            Phase::During,
            [(F::Write, counts(1, 0, 1, 0)), (F::Cas, counts(1, 0, 0, 1))].into(),
        ),
        (Phase::After, [(F::Read, counts(48213, 48200, 13, 0))].into()),
    ]
    .into();
    r.ops_by_node = [
        ("1".to_owned(), counts(3, 2, 1, 0)),
        ("4".to_owned(), counts(2, 1, 0, 1)),
    ]
    .into();
    r.availability.during_faults = DuringFaults {
        overall: Some(61.5),
        majority: Some(99.2),
        minority: Some(0.0),
        by_op: [(F::Read, Some(70.0)), (F::Write, Some(55.5))].into(),
        majority_by_op: BTreeMap::new(),
        minority_by_op: [(F::Write, counts(812, 0, 812, 0))].into(),
    };
    r.latency_ms = [(
        Phase::During,
        [
            (F::Read, latency(10, 1.5, 4873.0, 5000.0, 5001.0)),
            (F::Write, latency(5, 2.5, 12.4, 13.0, 14.0)),
        ]
        .into(),
    )]
    .into();
    r.cp = Some(CpFigures {
        time_without_leader_s: Some(1.75),
        recovery_after_heal_s: Some(0.42),
    });
    r.bank = Some(BankFigures {
        reads: 100,
        ..BankFigures::default()
    });
    r
}

fn ap_results() -> Results {
    let mut r = base(Mode::Ap);
    r.fault_schedule = vec![fault("partition-halves", 5.0, 10.0, "", &[1, 2, 3], &[4, 5])];
    r.heal_s = 10.0;
    r.ops = [(Phase::During, [(F::Write, counts(900, 900, 0, 0))].into())].into();
    r.availability.during_faults = DuringFaults {
        overall: Some(100.0),
        majority: Some(100.0),
        minority: Some(100.0),
        minority_by_op: [(F::Write, counts(790, 790, 0, 0))].into(),
        ..DuringFaults::default()
    };
    r.latency_ms = [(Phase::During, [(F::Read, latency(10, 0.8, 3.5, 4.0, 4.0))].into())].into();
    r.ap = Some(ApFigures {
        convergence_s: Some(0.83),
        stale_reads: Some(StaleReads {
            during: StaleCount { reads: 400, stale: 38 },
            outside: StaleCount { reads: 1000, stale: 2 },
        }),
        lww_lost_writes: 17,
        diverged_keys: 0,
    });
    r
}

/// `#RRGGBB` as plotters writes it.
fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Shaded fault windows in one plot.
fn fault_rects(svg: &str) -> usize {
    svg.lines()
        .filter(|l| l.starts_with("<rect") && l.contains(&format!("fill=\"{}\"", hex(FAULT_FILL))))
        .count()
}

/// Latency markers of one outcome (thin outlines in the outcome's colour).
fn markers(svg: &str, o: Outcome) -> usize {
    let stroke = format!("stroke=\"{}\" stroke-width=\"1\"", hex(outcome_rgb(o)));
    svg.lines()
        .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
        .count()
}

/// The text of every `<text>` element (plotters puts it on its own line).
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
        .map(|rest| rest.split("</text>").next().unwrap_or("").trim().to_owned())
        .collect()
}

/// The SVG elements of a page.
fn svgs(html: &str) -> Vec<&str> {
    html.split("<svg")
        .skip(1)
        .map(|s| s.split("</svg>").next().unwrap_or(""))
        .collect()
}

#[test]
fn report_escapes_html_and_control_characters() {
    assert_eq!(
        esc("<script>alert('x')&\"</script>"),
        "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
    );
    assert_eq!(esc("a\u{0}b\u{1b}[31m\u{202e}c"), "a\\u{0}b\\u{1b}[31m\\u{202e}c");
    assert_eq!(plain("x\ny\u{7}"), "x y\\u{7}");
}

#[test]
fn report_number_formatting_and_ticks() {
    assert_eq!(fmt_num(3.0), "3");
    assert_eq!(fmt_num(0.125), "0.125");
    assert_eq!(fmt_num(1.5000), "1.5");
    assert_eq!(fmt_num(f64::NAN), "n/a");
    assert_eq!(fmt_pct(Some(100.0)), "100%");
    assert_eq!(fmt_pct(Some(12.345)), "12.3%");
    assert_eq!(fmt_pct(None), "n/a");
    assert_eq!(log_decades(0.5, 4873.0), (-1, 4));
    // Absurd latencies (broken clocks) do not panic and keep a sane axis.
    for (lo, hi) in [(1e15, 1e16), (0.0, 0.0), (-5.0, f64::INFINITY), (7.0, 7.0)] {
        let (lo, hi) = log_decades(lo, hi);
        assert!(-3 <= lo && lo < hi && hi <= 10, "{lo} {hi}");
    }
}

#[test]
fn report_run_html_valid() {
    let h = small_history("k1");
    let html = render_run_html(&full_results(true, "k1"), &h);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("class=\"verdict valid\""));
    assert!(!html.contains("verdict invalid"));
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "no external resources"
    );
    let plots = svgs(&html);
    assert_eq!(plots.len(), 2, "latency and throughput");
    for svg in &plots {
        assert_eq!(fault_rects(svg), 2, "one rect per fault window");
        assert!(svg.contains(&format!("stroke=\"{}\"", hex(HEAL))), "the heal line");
        let texts = texts(svg);
        for label in ["partition-halves", "isolate-leader", "heal 15 s"] {
            assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
        }
    }
    // Markers for all three outcomes, legends for each outcome and op.
    for o in OUTCOMES {
        assert!(markers(plots[0], o) > 0, "markers for {o:?}");
    }
    let texts = texts(plots[0]);
    for label in [
        "ok",
        "fail",
        "info (unknown)",
        "read",
        "write",
        "cas",
        "latency (ms, log scale)",
    ] {
        assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
    }
    assert!(plots[1].contains(&format!(
        "stroke=\"{}\" stroke-width=\"2\"",
        hex(outcome_rgb(Outcome::Ok))
    )));
    // Parameters and key numbers.
    for needle in [
        "f1b4db1",
        "partition-halves",
        "built-in",
        "48213",
        "61.5%",
        "99.2%",
        "4873",
        "12.4",
        "1.75 s",
        "0.42 s",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    assert!(html.contains("Anomalies (0)"));
    assert!(html.contains("5 paired operations"), "the dangling read is not paired");
    assert!(html.contains("Showing all 5 operations"));
}

#[test]
fn report_run_html_invalid_shows_anomaly_ops_escaped() {
    let key = "<script>alert(1)</script>\u{0}\u{1b}";
    let h = small_history(key);
    let html = render_run_html(&full_results(false, key), &h);
    assert!(html.contains("class=\"verdict invalid\""));
    assert!(!html.contains("<script>"), "user data must be escaped");
    assert!(!html.contains('\u{0}') && !html.contains('\u{1b}'));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<b>"));
    assert!(html.contains("Anomalies (1)"));
    assert!(html.contains("read 0 after 1 was acknowledged"));
    // Ops 0 and 1 are one pair and 8/9 another: shown once each, plus the missing index.
    assert!(html.contains("0\u{2192}1"));
    assert!(html.contains("8\u{2192}9"));
    assert!(html.contains("\u{2192} &quot;0&quot;"), "the read's result is shown");
    assert!(html.contains("not in the history"));
    assert_eq!(html.matches("<table class=\"ops\">").count(), 1);
}

#[test]
fn report_run_html_shows_unmeasured_figures_as_na() {
    let mut r = base(Mode::Ap);
    r.verdict = Validity::Unknown;
    r.valid = false;
    r.ap = Some(ApFigures {
        convergence_s: None,
        stale_reads: None,
        lww_lost_writes: 0,
        diverged_keys: 0,
    });
    for h in [Vec::new(), small_history("k")] {
        let html = render_run_html(&r, &h);
        assert!(html.contains("class=\"verdict unknown\""));
        assert!(html.contains("<td>n/a</td>"), "unmeasured convergence and availability");
        assert!(html.contains("No faults were recorded"));
        assert!(html.ends_with("</html>\n"));
        assert_eq!(svgs(&html).len(), 2);
    }
    let html = render_run_html(&r, &[]);
    assert!(html.contains("no paired operations"));
    assert!(html.contains("No client operations were recorded."));
}

#[test]
fn report_counts_unpairable_events() {
    let mut h = small_history("k");
    // A completion with no invocation, a mismatched f, and a mismatched key.
    h.push(ev(11, 17100, 99, Kind::Info, F::Write, "nemesis", None));
    h.push(ev(12, 17200, 7, Kind::Invoke, F::Read, "k", None));
    h.push(ev(13, 17300, 7, Kind::Ok, F::Write, "k", None));
    h.push(ev(14, 17400, 8, Kind::Invoke, F::Read, "a", None));
    h.push(ev(15, 17500, 8, Kind::Ok, F::Read, "b", None));
    // Nemesis events are not operations.
    h.push(ev(16, 17600, NEMESIS_PROCESS, Kind::Invoke, F::Start, "", None));
    h.push(ev(17, 17700, NEMESIS_PROCESS, Kind::Info, F::Start, "", None));
    h.push(ev(18, 17800, NEMESIS_PROCESS, Kind::Info, F::Stop, "", None));
    let html = render_run_html(&full_results(true, "k"), &h);
    // Orphan completion, two mismatched pairs, and the dangling read of process 5.
    let note = "19 events, 5 paired operations, 3 nemesis events; 6 client events could not be paired";
    assert!(html.contains(note), "{}", &html[..3000.min(html.len())]);
}

#[test]
fn report_large_history_is_bounded() {
    let mut h = Vec::with_capacity(200_000);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // One invocation per ms: 100 s of history.
    for i in 0..100_000u64 {
        let t_ms = i;
        let process = i % 16;
        let f = [F::Read, F::Write, F::Cas][(rand() % 3) as usize];
        let value = if f == F::Read {
            None
        } else if f == F::Write {
            Some(Value::single(i.to_string()))
        } else {
            Some(Value::cas(Some("1"), i.to_string()))
        };
        let kind = match rand() % 100 {
            0..=89 => Kind::Ok,
            90..=96 => Kind::Fail,
            _ => Kind::Info,
        };
        let lat_us = 200 + rand() % 50_000;
        let key = format!("k{}", i % 50);
        h.push(Op {
            index: 2 * i,
            time_ns: t_ms * 1_000_000,
            process,
            kind: Kind::Invoke,
            f,
            key: key.clone(),
            value: value.clone(),
            node: Some(process % 5 + 1),
            succeeded: None,
            error: None,
        });
        h.push(Op {
            index: 2 * i + 1,
            time_ns: t_ms * 1_000_000 + lat_us * 1000,
            process,
            kind,
            f,
            key,
            value,
            node: Some(process % 5 + 1),
            succeeded: None,
            error: None,
        });
    }
    let r = full_results(true, "k1");
    let started = std::time::Instant::now();
    let html = render_run_html(&r, &h);
    let took = started.elapsed();
    assert!(html.len() < 1_500_000, "page is {} bytes", html.len());
    assert!(
        html.contains("Showing 8000 of 100000 operations (downsampled"),
        "{}",
        &html[..200]
    );
    // Every outcome is still drawn.
    let plots = svgs(&html);
    for o in OUTCOMES {
        assert!(markers(plots[0], o) > 100, "markers for {o:?}");
    }
    assert_eq!(fault_rects(plots[0]), 2);
    // Generous: debug build on a shared machine. Release is far faster.
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
}

#[test]
fn report_cap_terminal_fits_and_shows_the_numbers() {
    let cp = full_results(true, "k");
    let ap = ap_results();
    let t = render_cap_terminal(&cp, &ap);
    for line in t.lines() {
        assert!(
            line.chars().count() <= usize::from(TERMINAL_WIDTH),
            "too wide ({}): {line}",
            line.chars().count()
        );
        assert!(line.is_ascii(), "plain ASCII: {line}");
    }
    for needle in [
        "cp (Raft)",
        "ap (LWW)",
        "61.5%",
        "99.2%",
        "0 of 812",
        "790 of 790",
        "9.5% (38 of 400)",
        "0.2% (2 of 1000)",
        "17",
        "1.75 s",
        "0.42 s",
        "0.83 s",
        "4873 ms",
        "3.50 ms",
        "48216 / 48201 / 14 / 1",
        "refused 100% of requests on the minority side",
        "stayed linearizable",
        "lost 17 acknowledged writes",
        "CAP trade-off",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    let table_lines: Vec<&str> = t.lines().filter(|l| l.starts_with('|')).collect();
    assert!(table_lines.len() > 15);
    assert!(
        table_lines.iter().all(|l| l.len() == table_lines[0].len()),
        "aligned columns"
    );

    // Anomalies in cp change the story.
    let bad = full_results(false, "k");
    let t = render_cap_terminal(&bad, &ap);
    assert!(t.contains("INVALID") && t.contains("NOT linearizable") && t.contains("Warning"));
}

#[test]
fn report_cap_terminal_shows_na_and_cleans_hostile_text() {
    let mut cp = base(Mode::Cp);
    cp.nemesis = "x\u{1b}[2J<y>".into();
    let ap = base(Mode::Ap);
    let t = render_cap_terminal(&cp, &ap);
    assert!(t.contains("n/a"));
    assert!(!t.contains('\u{1b}'));
    assert!(t.contains("warning: the runs differ in nemesis"));
    assert!(t.lines().all(|l| l.chars().count() <= usize::from(TERMINAL_WIDTH)));
    // Very long values wrap rather than widening the table.
    let mut long = base(Mode::Cp);
    long.workload = "w".repeat(300);
    long.nemesis = "n".repeat(300);
    let t = render_cap_terminal(&long, &long);
    assert!(
        t.lines().all(|l| l.chars().count() <= usize::from(TERMINAL_WIDTH)),
        "{t}"
    );
    assert!(t.matches('w').count() >= 600, "nothing is cut: {t}");
}

#[test]
fn report_cap_html_has_table_bars_and_fault_windows() {
    let cp = full_results(true, "<k>");
    let mut ap = ap_results();
    ap.nemesis = "<script>bad</script>".into();
    let html = render_cap_html(&cp, &ap);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script>"));
    assert!(
        html.contains("&lt;script&gt;bad&lt;/script&gt;"),
        "differing nemesis is warned about, escaped"
    );
    assert_eq!(html.matches("class=\"verdict valid\"").count(), 4);
    assert!(html.contains("<table class=\"num cap\">"));
    for needle in ["0 of 812", "790 of 790", "lost 17 acknowledged writes", "4873 ms"] {
        assert!(html.contains(needle), "missing {needle}");
    }
    let plots = svgs(&html);
    // Two bar charts, then one timeline per mode.
    assert_eq!(plots.len(), 4);
    assert!(
        plots[0].contains("fill=\"#1C7ED6\"") && plots[0].contains("fill=\"#F08C00\""),
        "cp and ap bars"
    );
    assert_eq!(fault_rects(plots[2]), 2);
    assert_eq!(fault_rects(plots[3]), 1);
    // Runs without faults or figures still render.
    let mut unknown = base(Mode::Cp);
    unknown.verdict = Validity::Unknown;
    let html = render_cap_html(&unknown, &base(Mode::Ap));
    assert!(html.contains("class=\"verdict unknown\""));
    assert!(html.contains("n/a"));
}

/// A run stored under `testdata/` by a real short run (`--time-limit 15 --seed 7`, built-in
/// layer); the cp history is trimmed to its first half second and the nemesis events.
fn stored(name: &str) -> Results {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
        .join("results.json");
    Results::load(&path).unwrap()
}

fn stored_history(name: &str) -> Vec<Op> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
        .join("history.jsonl");
    crate::history::parse_jsonl(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn stored_run_renders_every_section() {
    let r = stored("cp-register-partition-halves");
    assert_eq!(Results::parse(&r.to_json()).unwrap(), r, "a stored run round-trips");
    let history = stored_history("cp-register-partition-halves");
    let html = render_run_html(&r, &history);
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    assert!(html.contains("class=\"verdict valid\""));
    for section in [
        "<h2>Latency</h2>",
        "<h2>Throughput</h2>",
        "<h2>Operations per phase</h2>",
        "<h2>Operations per node</h2>",
        "<h2>Availability during faults</h2>",
        "<h2>Latency percentiles (ms)</h2>",
        "<h2>CP figures</h2>",
        "<h2>Fault schedule</h2>",
        "<h2>Anomalies (0)</h2>",
    ] {
        assert!(html.contains(section), "missing section {section}");
    }
    assert!(!html.contains("<h2>AP figures</h2>"));
    let plots = svgs(&html);
    assert_eq!(plots.len(), 2);
    for svg in &plots {
        assert_eq!(fault_rects(svg), r.fault_schedule.len());
    }
    // Figures straight from the file.
    for needle in [
        r.fault_schedule[0].detail.as_str(),
        r.git_revision.as_str(),
        &fmt_pct(r.availability.during_faults.minority),
    ] {
        assert!(html.contains(&esc(needle)), "missing {needle}");
    }
    let ops: usize = history
        .iter()
        .filter(|o| o.kind != Kind::Invoke && !o.f.is_nemesis())
        .count();
    assert!(
        html.contains(&format!("{ops} paired operations")),
        "every completed op is paired"
    );
}

#[test]
fn stored_runs_fill_the_cap_table() {
    let cp = stored("cp-register-partition-halves");
    let ap = stored("ap-register-partition-halves");
    let labels = [
        "verdict",
        "workload",
        "availability during faults",
        "majority side",
        "minority side",
        "writes acked on minority side",
        "anomalies found by the checker",
        "acked writes lost to LWW",
        "stale reads during faults",
        "stale reads outside faults",
        "keys diverged after heal",
        "time without a leader",
        "recovery after heal",
        "convergence after heal",
        "p99 latency during faults, read",
        "p99 latency during faults, write",
        "p99 latency during faults, cas",
        "ops invoked / ok / fail / unknown",
    ];
    let t = render_cap_terminal(&cp, &ap);
    let rows: Vec<&str> = t.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), labels.len() + 1, "a header and one row per figure:\n{t}");
    for (row, label) in rows[1..].iter().zip(labels) {
        assert!(
            row.trim_start_matches("| ").trim_start().starts_with(label),
            "{row} is not {label}"
        );
        // ap registers have no compare-and-set, so that one figure is not reported for ap.
        if label != "p99 latency during faults, cas" {
            assert!(!row.contains("n/a"), "a real run reports every figure: {row}");
        }
    }
    let stale = ap.ap.and_then(|a| a.stale_reads).unwrap().during;
    assert!(t.contains(&format!("({} of {})", stale.stale, stale.reads)));
    assert!(t.contains("CAP trade-off"), "{t}");
    assert!(t.lines().all(|l| l.chars().count() <= usize::from(TERMINAL_WIDTH)));

    let html = render_cap_html(&cp, &ap);
    let table = html
        .split("<table class=\"num cap\">")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert_eq!(table.matches("<tr>").count(), labels.len() + 1);
    for label in labels {
        assert!(table.contains(&format!("<td>{label}</td>")), "missing row {label}");
    }
    assert_eq!(svgs(&html).len(), 4, "two bar charts and a timeline per run");
}
