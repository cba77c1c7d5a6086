//! Human-readable reports of Jepsen-style runs: one HTML page per run, and the CAP comparison of a
//! `cp` run and an `ap` run under the same faults, in the terminal and as an HTML page.
//!
//! # What the reports show
//!
//! * [`render_run_html`] renders one run from its `results.json` and its history: a header with the
//!   verdict (green valid, red invalid, amber unknown) and the run's parameters; a **latency**
//!   scatter plot (x: invocation time in seconds since the test started, y: latency in ms on a log
//!   scale; colour is the outcome, `ok` / `fail` / `info`, and the marker's shape is the operation,
//!   `read` / `write` / `cas` / …); a **throughput** plot (completed operations per second, one line
//!   per outcome); both with every fault window of the schedule shaded and labelled, and the heal
//!   marked by a dashed green line. Then the tables: operations per phase, operation and outcome;
//!   per node; availability during the faults; latency percentiles; the mode's figures (CP: time
//!   without a leader and recovery after the heal; AP: convergence, stale reads and writes lost to
//!   last-writer-wins); the set and bank figures; the fault schedule; and every anomaly with the
//!   history operations it names, shown as readable rows.
//! * [`render_cap_terminal`] is the product's headline: both modes under the same faults, side by
//!   side, in a plain-ASCII table at most 100 columns wide, followed by a few sentences that say
//!   what the numbers mean for the CAP trade-off.
//! * [`render_cap_html`] is the same comparison as one page: the table, the sentences, bar charts of
//!   availability and p99 latency during the faults, and for each mode its fault timeline and the
//!   run's tables. It has no history, so it has no per-operation plots: open each run's own
//!   `report.html` for those.
//!
//! # How to read them
//!
//! * **Outcomes**: `ok` means the operation took effect with a known result, `fail` means it
//!   definitely did not take effect (a CP minority refusing service is a `fail`), `info` means the
//!   outcome is unknown (a timeout after the request was sent). "unknown" in the tables is `info`.
//! * **Availability** is the share of operations invoked during the faults that completed `ok`,
//!   read from `results.json` as a percentage (0–100). The majority/minority split uses the side of
//!   the partition the contacted node was on.
//! * In the terminal table, `n/a` means the run did not report the figure, and `-` means the figure
//!   does not apply to that mode (e.g. LWW losses for a Raft keyspace).
//!
//! # Caveats
//!
//! * Times are what the runner recorded: history `time` is nanoseconds since the test started and
//!   the fault schedule is in seconds since the test started. If the two disagree, the shaded
//!   windows will not line up with the data.
//! * Invocations are paired with the next completion of the same process, for the same operation
//!   and key. Anything that cannot be paired (nemesis events, invocations still outstanding when the
//!   history ends) is left out of the plots; the page says how many events that was. The tables come
//!   from `results.json` and are exact.
//! * Large histories are downsampled for the latency plot: points that overlap on screen are
//!   merged, then each (outcome, operation) series is thinned evenly, keeping small series (the
//!   `fail` and `info` points, usually) whole. The page states how many points it shows.
//! * Every field of `results.json` may be missing or `null`; the reports then show `n/a`.
//! * All text from the run (keys, values, error messages, nemesis details) is HTML-escaped, and
//!   control and bidirectional-override characters are shown as `\u{..}` escapes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::Value as Json;

use crate::history::{Kind, Op, F, NEMESIS_PROCESS};

/// What a missing or `null` figure is shown as.
const NA: &str = "n/a";
/// What a figure that does not apply to a mode is shown as, in the CAP table.
const NOT_APPLICABLE: &str = "-";
/// Most latency points drawn in one plot.
const MAX_POINTS: usize = 8000;
/// Most throughput buckets in one plot.
const MAX_BUCKETS: usize = 2000;
/// Most anomalies rendered in full on a page, and most operations per anomaly.
const MAX_ANOMALIES: usize = 100;
const MAX_ANOMALY_OPS: usize = 30;
/// Width of the terminal table.
const TERMINAL_WIDTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// JSON access and number formatting
// ---------------------------------------------------------------------------------------------

/// The value at `path`, or `None` when any step is missing or the value is `null`.
fn get<'a>(v: &'a Json, path: &[&str]) -> Option<&'a Json> {
    let mut cur = v;
    for step in path {
        cur = cur.as_object()?.get(*step)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// A finite number at `path` (numeric strings are accepted too).
fn num(v: &Json, path: &[&str]) -> Option<f64> {
    match get(v, path)? {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

/// The value at `path` as display text (`n/a` when missing).
fn text(v: &Json, path: &[&str]) -> String {
    get(v, path).map_or_else(|| NA.to_owned(), show_json)
}

fn show_json(v: &Json) -> String {
    match v {
        Json::Null => NA.to_owned(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Json::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
        Json::String(s) => s.clone(),
        Json::Array(a) if a.is_empty() => "none".to_owned(),
        Json::Array(a) => a.iter().map(show_json).collect::<Vec<_>>().join(", "),
        Json::Object(_) => v.to_string(),
    }
}

/// A number with at most three decimals, without trailing zeros.
fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return NA.to_owned();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn fmt_pct(x: Option<f64>) -> String {
    match x {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}%"),
        Some(x) => format!("{x:.1}%"),
        None => NA.to_owned(),
    }
}

fn fmt_secs(x: Option<f64>) -> String {
    x.map_or_else(|| NA.to_owned(), |x| format!("{} s", fmt_num(x)))
}

fn fmt_ms(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => NA.to_owned(),
    }
}

/// `part` as a percentage of `whole`, when both are known and `whole > 0`.
fn ratio_pct(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some(100.0 * p / w),
        _ => None,
    }
}

/// The object at `path` as (key, value) pairs, in the map's order.
fn entries<'a>(v: &'a Json, path: &[&str]) -> Vec<(&'a str, &'a Json)> {
    get(v, path)
        .and_then(Json::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

/// Sort key that puts the usual operations first, then everything else alphabetically.
fn f_rank(name: &str) -> (u8, String) {
    let rank = match name {
        "read" => 0,
        "write" => 1,
        "cas" => 2,
        _ => 3,
    };
    (rank, name.to_owned())
}

/// Sort key for phases: before, during, after, then anything else.
fn phase_rank(name: &str) -> (u8, String) {
    let rank = match name {
        "before" => 0,
        "during" => 1,
        "after" => 2,
        _ => 3,
    };
    (rank, name.to_owned())
}

/// Sort key for node ids: numerically when they are numbers.
fn node_rank(name: &str) -> (u64, String) {
    (name.trim().parse().unwrap_or(u64::MAX), name.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------------------------

/// Characters shown as `\u{..}` escapes instead of literally: controls, bidirectional overrides
/// and the byte-order mark, which could hide or reorder text.
fn is_suspicious(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if is_suspicious(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Makes text safe for a terminal: one line, no control characters.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(' '),
            c if is_suspicious(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    fn of(r: &Json) -> Verdict {
        let word = get(r, &["verdict"])
            .and_then(Json::as_str)
            .map(|s| s.trim().to_ascii_lowercase());
        let flag = get(r, &["valid"]).and_then(Json::as_bool);
        match (word.as_deref(), flag) {
            (Some("invalid"), _) | (_, Some(false)) => Verdict::Invalid,
            (Some("valid"), _) | (None, Some(true)) => Verdict::Valid,
            _ => Verdict::Unknown,
        }
    }

    /// CSS class; never derived from user data.
    fn class(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "INVALID",
            Verdict::Unknown => "unknown",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pairing the history
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

const OUTCOMES: [Outcome; 3] = [Outcome::Ok, Outcome::Fail, Outcome::Info];

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info (unknown)",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Outcome::Ok => "#1c7ed6",
            Outcome::Fail => "#e03131",
            Outcome::Info => "#f08c00",
        }
    }

    fn of(kind: Kind) -> Option<Outcome> {
        if kind == Kind::Ok {
            Some(Outcome::Ok)
        } else if kind == Kind::Fail {
            Some(Outcome::Fail)
        } else if kind == Kind::Info {
            Some(Outcome::Info)
        } else {
            None
        }
    }
}

/// An invocation and its completion.
struct Pair<'a> {
    inv: &'a Op,
    done: &'a Op,
    outcome: Outcome,
    /// Index into [`Paired::f_names`].
    f: usize,
}

impl Pair<'_> {
    fn start_s(&self) -> f64 {
        self.inv.time_ns as f64 / 1e9
    }

    fn end_s(&self) -> f64 {
        self.done.time_ns as f64 / 1e9
    }

    fn latency_ms(&self) -> f64 {
        self.done.time_ns.saturating_sub(self.inv.time_ns) as f64 / 1e6
    }
}

struct Paired<'a> {
    pairs: Vec<Pair<'a>>,
    f_names: Vec<String>,
    /// Client events that could not be paired (dangling invocations, mismatches, orphans).
    unpaired: usize,
    /// Nemesis events (fault start/stop), which are not operations.
    nemesis: usize,
}

/// The name an operation function is serialized as (`read`, `write`, …), for any variant.
fn f_name(f: &F) -> String {
    match serde_json::to_value(f) {
        Ok(Json::String(s)) => s,
        Ok(Json::Object(m)) if m.len() == 1 => m.keys().next().cloned().unwrap_or_default(),
        _ => format!("{f:?}").to_lowercase(),
    }
}

/// Pairs every invocation with the next completion of the same process, when that completion is
/// for the same function and key; everything else is counted as unpaired and skipped.
fn pair_history(history: &[Op]) -> Paired<'_> {
    let mut open: HashMap<u64, &Op> = HashMap::new();
    let mut fs: Vec<&F> = Vec::new();
    let mut f_names = Vec::new();
    let mut pairs = Vec::new();
    let mut unpaired = 0;
    let mut nemesis = 0;
    for op in history {
        if op.process == NEMESIS_PROCESS || op.f.is_nemesis() {
            nemesis += 1;
            continue;
        }
        if op.kind == Kind::Invoke {
            if open.insert(op.process, op).is_some() {
                unpaired += 1;
            }
            continue;
        }
        let Some(outcome) = Outcome::of(op.kind) else {
            unpaired += 1;
            continue;
        };
        match open.remove(&op.process) {
            Some(inv) if inv.f == op.f && inv.key == op.key => {
                let f = match fs.iter().position(|f| **f == inv.f) {
                    Some(i) => i,
                    None => {
                        fs.push(&inv.f);
                        f_names.push(f_name(&inv.f));
                        fs.len() - 1
                    }
                };
                pairs.push(Pair {
                    inv,
                    done: op,
                    outcome,
                    f,
                });
            }
            Some(_) => unpaired += 2,
            None => unpaired += 1,
        }
    }
    unpaired += open.len();
    Paired {
        pairs,
        f_names,
        unpaired,
        nemesis,
    }
}

/// A history value for humans: strings quoted with escapes, CAS pairs as `expected → new`.
fn show_value(v: Option<&crate::history::Value>) -> String {
    fn scalar(j: &Json) -> String {
        match j {
            Json::Null => "absent".to_owned(),
            Json::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
    let Some(v) = v else {
        return "absent".to_owned();
    };
    match serde_json::to_value(v) {
        Ok(Json::Array(a)) if a.len() == 2 => format!("{} \u{2192} {}", scalar(&a[0]), scalar(&a[1])),
        Ok(j) => scalar(&j),
        Err(_) => format!("{v:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fault schedule
// ---------------------------------------------------------------------------------------------

struct Fault {
    nemesis: String,
    start: f64,
    stop: Option<f64>,
    detail: String,
    majority: String,
    minority: String,
}

/// The fault windows that have a start time (the others cannot be placed on a time axis).
fn faults(r: &Json) -> Vec<Fault> {
    let Some(list) = get(r, &["fault_schedule"]).and_then(Json::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|f| {
            Some(Fault {
                start: num(f, &["start_s"])?,
                stop: num(f, &["stop_s"]),
                nemesis: text(f, &["nemesis"]),
                detail: text(f, &["detail"]),
                majority: text(f, &["majority"]),
                minority: text(f, &["minority"]),
            })
        })
        .collect()
}

fn schedule_len(r: &Json) -> usize {
    get(r, &["fault_schedule"]).and_then(Json::as_array).map_or(0, Vec::len)
}

/// The end of the time axis: the latest event, fault boundary or heal, else the run's duration.
fn time_extent(r: &Json, paired: Option<&Paired>) -> f64 {
    let mut end: f64 = 0.0;
    if let Some(p) = paired {
        for pair in &p.pairs {
            end = end.max(pair.end_s());
        }
    }
    for f in faults(r) {
        end = end.max(f.start).max(f.stop.unwrap_or(0.0));
    }
    end = end.max(num(r, &["heal_s"]).unwrap_or(0.0));
    if paired.is_none() {
        let length = num(r, &["duration_s"])
            .or_else(|| num(r, &["time_limit_s"]))
            .unwrap_or(0.0);
        end = end.max(length);
    }
    if end <= 0.0 {
        end = num(r, &["duration_s"])
            .or_else(|| num(r, &["time_limit_s"]))
            .unwrap_or(1.0);
    }
    if end > 0.0 {
        end
    } else {
        1.0
    }
}

// ---------------------------------------------------------------------------------------------
// SVG plots
// ---------------------------------------------------------------------------------------------

const W: f64 = 1160.0;
const H: f64 = 340.0;
const ML: f64 = 70.0;
const MR: f64 = 18.0;
const MT: f64 = 38.0;
const MB: f64 = 46.0;

/// Tick spacing giving about `target` ticks over `range`: 1, 2 or 5 times a power of ten.
fn nice_step(range: f64, target: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

enum YAxis {
    /// From 0 to `max`, ticks every `step`.
    Linear { max: f64, step: f64 },
    /// From 10^lo to 10^hi.
    Log { lo: i32, hi: i32 },
}

impl YAxis {
    fn linear(data_max: f64) -> YAxis {
        let data_max = if data_max > 0.0 && data_max.is_finite() {
            data_max
        } else {
            1.0
        };
        let step = nice_step(data_max, 5.0);
        YAxis::Linear {
            max: (data_max / step).ceil().max(1.0) * step,
            step,
        }
    }

    fn log(min: f64, max: f64) -> YAxis {
        // 1 µs to 10^10 ms; anything outside is drawn at the edge.
        let lo = (min.max(1e-3).log10().floor() as i32).clamp(-3, 9);
        let hi = (max.max(1e-3).log10().ceil() as i32).clamp(lo + 1, 10);
        YAxis::Log { lo, hi }
    }

    fn py(&self, v: f64) -> f64 {
        let frac = match *self {
            YAxis::Linear { max, .. } => v / max,
            YAxis::Log { lo, hi } => (v.max(1e-3).log10() - f64::from(lo)) / f64::from(hi - lo),
        };
        H - MB - frac.clamp(0.0, 1.0) * (H - MT - MB)
    }

    /// (value, is_major) for each grid line.
    fn ticks(&self) -> Vec<(f64, bool)> {
        match *self {
            YAxis::Linear { max, step } => {
                let n = (max / step).round() as usize;
                (0..=n).map(|i| (i as f64 * step, true)).collect()
            }
            YAxis::Log { lo, hi } => {
                let mut t = Vec::new();
                for e in lo..=hi {
                    let base = 10f64.powi(e);
                    t.push((base, true));
                    if e < hi {
                        t.push((2.0 * base, false));
                        t.push((5.0 * base, false));
                    }
                }
                t
            }
        }
    }
}

fn px(x_max: f64, t: f64) -> f64 {
    ML + (t / x_max).clamp(0.0, 1.0) * (W - ML - MR)
}

#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
    Plus,
    Line,
    Swatch,
}

const SHAPES: [Shape; 6] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
    Shape::Cross,
    Shape::Plus,
];

/// Appends the path commands of one marker centred on (x, y).
fn marker(d: &mut String, shape: Shape, x: f64, y: f64) {
    let _ = match shape {
        Shape::Circle => write!(d, "M{:.1} {:.1}a3 3 0 1 0 6 0a3 3 0 1 0-6 0", x - 3.0, y),
        Shape::Square => write!(d, "M{:.1} {:.1}h5v5h-5z", x - 2.5, y - 2.5),
        Shape::Triangle => write!(d, "M{:.1} {:.1}l3.2 6h-6.4z", x, y - 3.5),
        Shape::Diamond => write!(d, "M{:.1} {:.1}l3.5 3.5-3.5 3.5-3.5-3.5z", x, y - 3.5),
        Shape::Cross => write!(d, "M{:.1} {:.1}l6 6m0-6l-6 6", x - 3.0, y - 3.0),
        Shape::Plus => write!(d, "M{:.1} {:.1}h7m-3.5-3.5v7", x - 3.5, y),
        Shape::Line => write!(d, "M{:.1} {:.1}h14", x - 7.0, y),
        Shape::Swatch => write!(d, "M{:.1} {:.1}h9v9h-9z", x - 4.5, y - 4.5),
    };
}

struct LegendItem {
    label: String,
    colour: &'static str,
    shape: Shape,
}

struct Plot<'a> {
    title: &'a str,
    y_label: &'a str,
    x_max: f64,
    y: YAxis,
    faults: &'a [Fault],
    heal: Option<f64>,
    /// SVG elements drawn inside the plot area (already escaped).
    body: String,
    legend: Vec<LegendItem>,
}

/// Renders a plot: frame, grid, ticks, fault windows (one `rect class="fault"` each), heal line,
/// body and legend.
fn plot_svg(p: &Plot) -> String {
    let mut s = String::with_capacity(p.body.len() + 8192);
    let (x0, x1, y0, y1) = (ML, W - MR, MT, H - MB);
    let _ = write!(
        s,
        r#"<svg class="plot" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(p.title)
    );
    let _ = write!(s, r#"<text class="title" x="{x0}" y="16">{}</text>"#, esc(p.title));
    let _ = write!(
        s,
        r#"<rect class="area" x="{x0}" y="{y0}" width="{:.1}" height="{:.1}"/>"#,
        x1 - x0,
        y1 - y0
    );

    // Fault windows underneath everything else.
    for f in p.faults {
        let a = px(p.x_max, f.start);
        let b = px(p.x_max, f.stop.unwrap_or(p.x_max));
        let _ = write!(
            s,
            r#"<rect class="fault" x="{a:.1}" y="{y0}" width="{:.1}" height="{:.1}"><title>{} {}–{} (majority {}; minority {}) {}</title></rect>"#,
            (b - a).max(1.0),
            y1 - y0,
            esc(&f.nemesis),
            fmt_secs(Some(f.start)),
            f.stop.map_or_else(|| "no stop".to_owned(), |t| fmt_secs(Some(t))),
            esc(&f.majority),
            esc(&f.minority),
            esc(&f.detail)
        );
    }

    // Grid and y ticks.
    for (v, major) in p.y.ticks() {
        let y = p.y.py(v);
        let class = if major { "grid" } else { "grid minor" };
        let _ = write!(
            s,
            r#"<line class="{class}" x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}"/>"#
        );
        if major && !p.y_label.is_empty() {
            let _ = write!(
                s,
                r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
    }
    // X ticks.
    let step = nice_step(p.x_max, 12.0);
    let mut t = 0.0;
    while t <= p.x_max + step * 1e-9 {
        let x = px(p.x_max, t);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y1 + 16.0,
            fmt_num(t)
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">time since test start (s)</text>"#,
        (x0 + x1) / 2.0,
        H - 8.0
    );
    let _ = write!(
        s,
        r#"<text class="axis" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        esc(p.y_label)
    );

    s.push_str(&p.body);

    // Fault labels and the heal on top of the data.
    for (i, f) in p.faults.iter().enumerate() {
        let a = px(p.x_max, f.start);
        let _ = write!(
            s,
            r#"<text class="fault-label" x="{:.1}" y="{:.1}">{}</text>"#,
            a + 3.0,
            y0 + 12.0 + (i % 3) as f64 * 12.0,
            esc(&f.nemesis)
        );
    }
    if let Some(h) = p.heal {
        let x = px(p.x_max, h);
        let _ = write!(
            s,
            r#"<line class="heal" x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text class="heal-label" x="{:.1}" y="{:.1}" text-anchor="{}">heal {}</text>"#,
            if x > x1 - 70.0 { x - 3.0 } else { x + 3.0 },
            y1 - 6.0,
            if x > x1 - 70.0 { "end" } else { "start" },
            fmt_secs(Some(h))
        );
    }

    // Legend, right-aligned in the top margin.
    let width: f64 = p
        .legend
        .iter()
        .map(|l| 26.0 + 6.5 * l.label.chars().count() as f64)
        .sum();
    let mut lx = (x1 - width).max(x0 + 260.0);
    for item in &p.legend {
        let mut d = String::new();
        marker(&mut d, item.shape, lx + 7.0, 24.0);
        let fill = if matches!(item.shape, Shape::Swatch) {
            item.colour
        } else {
            "none"
        };
        let _ = write!(
            s,
            r#"<path d="{d}" fill="{fill}" stroke="{}" stroke-width="1.5"/><text class="legend" x="{:.1}" y="28">{}</text>"#,
            item.colour,
            lx + 18.0,
            esc(&item.label)
        );
        lx += 26.0 + 6.5 * item.label.chars().count() as f64;
    }
    s.push_str("</svg>");
    s
}

/// A latency series: (outcome, index into [`Paired::f_names`]).
type SeriesKey = (Outcome, usize);

/// Points of a series in pixels, and the 2-pixel cells already taken.
#[derive(Default)]
struct Series(Vec<(f32, f32)>, HashSet<(u16, u16)>);

/// The latency scatter plot and a sentence saying how many points it shows.
fn latency_plot(paired: &Paired, x_max: f64, faults: &[Fault], heal: Option<f64>) -> (String, String) {
    // f display order and shapes.
    let mut order: Vec<usize> = (0..paired.f_names.len()).collect();
    order.sort_by_key(|&i| f_rank(&paired.f_names[i]));
    let mut shape_of = vec![Shape::Circle; paired.f_names.len()];
    for (n, &i) in order.iter().enumerate() {
        shape_of[i] = SHAPES[n % SHAPES.len()];
    }

    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for p in &paired.pairs {
        let l = p.latency_ms();
        lo = lo.min(l);
        hi = hi.max(l);
    }
    let y = if paired.pairs.is_empty() {
        YAxis::Log { lo: 0, hi: 3 }
    } else {
        YAxis::log(lo, hi)
    };

    // Series per (outcome, f), merging points that fall on the same 2-pixel cell.
    let mut series: BTreeMap<SeriesKey, Series> = BTreeMap::new();
    for p in &paired.pairs {
        let x = px(x_max, p.start_s());
        let yy = y.py(p.latency_ms());
        let entry = series.entry((p.outcome, p.f)).or_default();
        if entry.1.insert(((x / 2.0) as u16, (yy / 2.0) as u16)) {
            entry.0.push((x as f32, yy as f32));
        }
    }
    let distinct: usize = series.values().map(|s| s.0.len()).sum();

    // Share the point budget out, smallest series first, so rare outcomes stay whole.
    let mut by_size: Vec<(usize, SeriesKey)> = series.iter().map(|(k, v)| (v.0.len(), *k)).collect();
    by_size.sort();
    let mut budget = MAX_POINTS;
    let mut allot: HashMap<SeriesKey, usize> = HashMap::new();
    let n_series = by_size.len();
    for (i, (len, key)) in by_size.iter().enumerate() {
        let share = budget / (n_series - i);
        let take = (*len).min(share);
        budget -= take;
        allot.insert(*key, take);
    }

    let mut body = String::new();
    let mut shown = 0;
    for ((outcome, f), Series(points, _)) in &series {
        let take = allot.get(&(*outcome, *f)).copied().unwrap_or(0);
        if take == 0 {
            continue;
        }
        let mut d = String::with_capacity(take * 32);
        for i in 0..take {
            let (x, yy) = points[i * points.len() / take];
            marker(&mut d, shape_of[*f], f64::from(x), f64::from(yy));
        }
        shown += take;
        let _ = write!(
            body,
            r#"<path class="pts" d="{d}" stroke="{}"><title>{} {}</title></path>"#,
            outcome.colour(),
            esc(&paired.f_names[*f]),
            outcome.name()
        );
    }
    if paired.pairs.is_empty() {
        let _ = write!(
            body,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no paired operations in the history</text>"#,
            (ML + W - MR) / 2.0,
            (MT + H - MB) / 2.0
        );
    }

    let mut legend: Vec<LegendItem> = OUTCOMES
        .iter()
        .map(|o| LegendItem {
            label: o.legend().to_owned(),
            colour: o.colour(),
            shape: Shape::Swatch,
        })
        .collect();
    for &i in &order {
        legend.push(LegendItem {
            label: paired.f_names[i].clone(),
            colour: "#495057",
            shape: shape_of[i],
        });
    }
    let svg = plot_svg(&Plot {
        title: "Latency over time",
        y_label: "latency (ms, log scale)",
        x_max,
        y,
        faults,
        heal,
        body,
        legend,
    });
    let total = paired.pairs.len();
    let note = if shown < total {
        format!(
            "Showing {shown} of {total} operations (downsampled: {} points overlapped on screen and were merged, the \
             rest were thinned evenly per outcome and operation, keeping small series whole). Counts in the tables \
             are exact.",
            total - distinct
        )
    } else {
        format!("Showing all {total} operations.")
    };
    (svg, note)
}

/// The throughput plot: completions per second by outcome, by completion time.
fn throughput_plot(paired: &Paired, x_max: f64, faults: &[Fault], heal: Option<f64>) -> String {
    let width_s = (x_max / MAX_BUCKETS as f64).max(1.0);
    let n = ((x_max / width_s).ceil() as usize).clamp(1, MAX_BUCKETS);
    let mut counts = vec![[0u32; 3]; n];
    for p in &paired.pairs {
        let b = ((p.end_s() / width_s) as usize).min(n - 1);
        let o = OUTCOMES.iter().position(|o| *o == p.outcome).unwrap_or(0);
        counts[b][o] += 1;
    }
    // The last bucket may be cut short by the end of the history: divide by the time it covers,
    // and leave it out when it covers too little to give a meaningful rate.
    let span = |b: usize| (x_max - b as f64 * width_s).min(width_s);
    let drawn = if n > 1 && span(n - 1) < 0.25 * width_s {
        n - 1
    } else {
        n
    };
    let max_rate = counts[..drawn]
        .iter()
        .enumerate()
        .flat_map(|(b, c)| c.iter().map(move |&c| f64::from(c) / span(b).max(1e-9)))
        .fold(0.0, f64::max);
    let y = YAxis::linear(max_rate);
    let mut body = String::new();
    for (o, outcome) in OUTCOMES.iter().enumerate() {
        if counts.iter().all(|c| c[o] == 0) {
            continue;
        }
        let mut pts = String::with_capacity(n * 14);
        for (b, c) in counts[..drawn].iter().enumerate() {
            let x = px(x_max, b as f64 * width_s + span(b) / 2.0);
            let _ = write!(pts, "{x:.1},{:.1} ", y.py(f64::from(c[o]) / span(b).max(1e-9)));
        }
        let _ = write!(
            body,
            r#"<polyline class="rate" points="{}" stroke="{}"><title>{}</title></polyline>"#,
            pts.trim_end(),
            outcome.colour(),
            outcome.name()
        );
    }
    let legend = OUTCOMES
        .iter()
        .map(|o| LegendItem {
            label: o.legend().to_owned(),
            colour: o.colour(),
            shape: Shape::Line,
        })
        .collect();
    let y_label = if width_s > 1.0 {
        format!("completed ops/s ({} s buckets)", fmt_num(width_s))
    } else {
        "completed ops/s (1 s buckets)".to_owned()
    };
    plot_svg(&Plot {
        title: "Throughput over time",
        y_label: &y_label,
        x_max,
        y,
        faults,
        heal,
        body,
        legend,
    })
}

/// A fault timeline without data, for pages that have no history.
fn timeline_plot(r: &Json, title: &str) -> String {
    let fs = faults(r);
    let x_max = time_extent(r, None);
    let mut body = String::new();
    let rows = (((H - MT - MB - 40.0) / 22.0) as usize).max(1);
    for (i, f) in fs.iter().enumerate() {
        let (a, b) = (px(x_max, f.start), px(x_max, f.stop.unwrap_or(x_max)));
        let y = MT + 36.0 + (i % rows) as f64 * 22.0;
        let label = format!(
            "{} {}–{}: majority {} | minority {}",
            f.nemesis,
            fmt_num(f.start),
            f.stop.map_or_else(|| "…".to_owned(), fmt_num),
            f.majority,
            f.minority
        );
        // Put the label where there is room: right of the bar, or left of it near the end.
        let (lx, anchor) = if b + 8.0 + 6.0 * label.chars().count() as f64 <= W - MR {
            (b + 6.0, "start")
        } else {
            (a - 6.0, "end")
        };
        let _ = write!(
            body,
            r#"<rect class="window" x="{a:.1}" y="{y:.1}" width="{:.1}" height="12"/><text class="tick" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            (b - a).max(1.0),
            y + 10.0,
            esc(&label)
        );
    }
    if fs.is_empty() {
        let _ = write!(
            body,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no fault windows recorded</text>"#,
            (ML + W - MR) / 2.0,
            (MT + H - MB) / 2.0
        );
    }
    plot_svg(&Plot {
        title,
        y_label: "",
        x_max,
        y: YAxis::Linear { max: 1.0, step: 1.0 },
        faults: &fs,
        heal: num(r, &["heal_s"]),
        body,
        legend: Vec::new(),
    })
}

/// A grouped bar chart of cp and ap values.
fn bar_chart(title: &str, y_label: &str, groups: &[(String, [Option<f64>; 2])], y: YAxis, unit: &str) -> String {
    const BW: f64 = 300.0;
    let h = 260.0;
    let (mt, mb, ml) = (38.0, 40.0, 60.0);
    let group_w = 150.0;
    let w = (ml + 20.0 + group_w * groups.len().max(1) as f64).max(BW);
    let scale = |v: f64| -> f64 {
        // Reuse the plot axis maths on this chart's own height.
        let full = H - MT - MB;
        let frac = (H - MB - y.py(v)) / full;
        h - mb - frac * (h - mt - mb)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="bars" viewBox="0 0 {w} {h}" width="{w}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><text class="title" x="{ml}" y="16">{}</text>"#,
        esc(title),
        esc(title)
    );
    for (v, major) in y.ticks() {
        if !major {
            continue;
        }
        let yy = scale(v);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{ml}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            w - 10.0,
            ml - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        s,
        r#"<text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (mt + h - mb) / 2.0,
        esc(y_label)
    );
    let colours = ["#1c7ed6", "#f08c00"];
    let names = ["cp", "ap"];
    for (g, (label, vals)) in groups.iter().enumerate() {
        let gx = ml + 20.0 + g as f64 * group_w;
        for (i, v) in vals.iter().enumerate() {
            let bx = gx + i as f64 * 52.0;
            match v {
                Some(v) => {
                    let top = scale(*v);
                    let _ = write!(
                        s,
                        r#"<rect class="bar" x="{bx:.1}" y="{top:.1}" width="44" height="{:.1}" fill="{}"><title>{} {}: {}{}</title></rect><text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}{}</text>"#,
                        (h - mb - top).max(0.0),
                        colours[i],
                        names[i],
                        esc(label),
                        fmt_num(*v),
                        unit,
                        bx + 22.0,
                        top - 4.0,
                        fmt_num(*v),
                        unit
                    );
                }
                None => {
                    let _ = write!(
                        s,
                        r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{NA}</text>"#,
                        bx + 22.0,
                        h - mb - 4.0
                    );
                }
            }
            let _ = write!(
                s,
                r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bx + 22.0,
                h - mb + 14.0,
                names[i]
            );
        }
        let _ = write!(
            s,
            r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + 48.0,
            h - 8.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

// ---------------------------------------------------------------------------------------------
// HTML tables
// ---------------------------------------------------------------------------------------------

const CSS: &str =
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

fn page_start(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body><main>\n",
        esc(title)
    );
}

fn page_end(out: &mut String) {
    out.push_str("</main></body></html>\n");
}

/// A table of already-plain cells; every cell is escaped here. `class` is a fixed CSS class.
fn table(out: &mut String, class: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn para(out: &mut String, class: &str, text: &str) {
    let _ = writeln!(out, "<p class=\"{class}\">{}</p>", esc(text));
}

/// invoked / ok / fail / unknown cells and the ok share.
fn count_cells(v: &Json) -> Vec<String> {
    let mut cells: Vec<String> = ["invoked", "ok", "fail", "unknown"]
        .iter()
        .map(|k| text(v, &[*k]))
        .collect();
    cells.push(fmt_pct(ratio_pct(num(v, &["ok"]), num(v, &["invoked"]))));
    cells
}

const COUNT_HEAD: [&str; 5] = ["invoked", "ok", "fail", "unknown (info)", "ok %"];

fn params_rows(r: &Json) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (label, key) in [
        ("test", "test"),
        ("mode", "mode"),
        ("workload", "workload"),
        ("nemesis", "nemesis"),
        ("layer", "layer"),
        ("nodes", "nodes"),
        ("seed", "seed"),
        ("time limit (s)", "time_limit_s"),
        ("concurrency", "concurrency"),
        ("git revision", "git_revision"),
        ("started at", "started_at"),
        ("duration (s)", "duration_s"),
        ("heal at (s)", "heal_s"),
    ] {
        rows.push(vec![label.to_owned(), text(r, &[key])]);
    }
    rows
}

fn ops_section(out: &mut String, r: &Json) {
    out.push_str("<h2>Operations per phase</h2>\n");
    let mut phases = entries(r, &["ops"]);
    if phases.is_empty() {
        para(out, "note", "n/a: the run reported no operation counts.");
    } else {
        phases.sort_by_key(|(p, _)| phase_rank(p));
        let mut rows = Vec::new();
        for (phase, by_f) in phases {
            let mut fs = entries(by_f, &[]);
            fs.sort_by_key(|(f, _)| f_rank(f));
            for (f, counts) in fs {
                let mut row = vec![phase.to_owned(), f.to_owned()];
                row.extend(count_cells(counts));
                rows.push(row);
            }
        }
        let mut head = vec!["phase", "op"];
        head.extend(COUNT_HEAD);
        table(out, "num", &head, &rows);
    }

    out.push_str("<h2>Operations per node</h2>\n");
    let mut nodes = entries(r, &["ops_by_node"]);
    if nodes.is_empty() {
        para(out, "note", "n/a: the run reported no per-node counts.");
    } else {
        nodes.sort_by_key(|(n, _)| node_rank(n));
        let all = get(r, &["fault_schedule"])
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();
        let side_of = |node: &str, side: &str| {
            all.iter()
                .filter(|f| {
                    get(f, &[side])
                        .and_then(Json::as_array)
                        .is_some_and(|ids| ids.iter().any(|id| show_json(id) == node))
                })
                .count()
        };
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|(node, counts)| {
                let mut row = vec![node.to_string()];
                row.extend(count_cells(counts));
                let (maj, min) = (side_of(node, "majority"), side_of(node, "minority"));
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
}

fn availability_section(out: &mut String, r: &Json) {
    out.push_str("<h2>Availability during faults</h2>\n");
    let a = ["availability", "during_faults"];
    let mut rows = vec![
        vec!["overall".to_owned(), fmt_pct(num(r, &[a[0], a[1], "overall"]))],
        vec!["majority side".to_owned(), fmt_pct(num(r, &[a[0], a[1], "majority"]))],
        vec!["minority side".to_owned(), fmt_pct(num(r, &[a[0], a[1], "minority"]))],
    ];
    let mut by_op = entries(r, &[a[0], a[1], "by_op"]);
    by_op.sort_by_key(|(f, _)| f_rank(f));
    for (f, v) in by_op {
        rows.push(vec![format!("op: {f}"), fmt_pct(num(v, &[]))]);
    }
    table(out, "num", &["scope", "ok % of ops invoked during faults"], &rows);
}

fn latency_section(out: &mut String, r: &Json) {
    out.push_str("<h2>Latency percentiles (ms)</h2>\n");
    let mut phases = entries(r, &["latency_ms"]);
    if phases.is_empty() {
        para(out, "note", "n/a: the run reported no latency figures.");
        return;
    }
    phases.sort_by_key(|(p, _)| phase_rank(p));
    let mut rows = Vec::new();
    for (phase, by_f) in phases {
        let mut fs = entries(by_f, &[]);
        fs.sort_by_key(|(f, _)| f_rank(f));
        for (f, v) in fs {
            rows.push(vec![
                phase.to_owned(),
                f.to_owned(),
                text(v, &["count"]),
                fmt_ms(num(v, &["p50"])),
                fmt_ms(num(v, &["p99"])),
                fmt_ms(num(v, &["p999"])),
                fmt_ms(num(v, &["max"])),
            ]);
        }
    }
    table(
        out,
        "num",
        &["phase", "op", "count", "p50", "p99", "p99.9", "max"],
        &rows,
    );
}

fn stale_cell(r: &Json, when: &str) -> String {
    let reads = num(r, &["ap", "stale_reads", when, "reads"]);
    let stale = num(r, &["ap", "stale_reads", when, "stale"]);
    match (stale, reads) {
        (Some(s), Some(n)) => format!(
            "{} ({} of {})",
            fmt_pct(ratio_pct(Some(s), Some(n))),
            fmt_num(s),
            fmt_num(n)
        ),
        _ => NA.to_owned(),
    }
}

fn figures_section(out: &mut String, r: &Json) {
    let mode = get(r, &["mode"]).and_then(Json::as_str).unwrap_or("");
    if get(r, &["cp"]).is_some() || mode == "cp" {
        out.push_str("<h2>CP figures</h2>\n");
        table(
            out,
            "num",
            &["figure", "value"],
            &[
                vec![
                    "time without a leader".to_owned(),
                    fmt_secs(num(r, &["cp", "time_without_leader_s"])),
                ],
                vec![
                    "recovery after heal".to_owned(),
                    fmt_secs(num(r, &["cp", "recovery_after_heal_s"])),
                ],
            ],
        );
    }
    if get(r, &["ap"]).is_some() || mode == "ap" {
        out.push_str("<h2>AP figures</h2>\n");
        table(
            out,
            "num",
            &["figure", "value"],
            &[
                vec![
                    "convergence after heal".to_owned(),
                    fmt_secs(num(r, &["ap", "convergence_s"])),
                ],
                vec!["stale reads during faults".to_owned(), stale_cell(r, "during")],
                vec!["stale reads outside faults".to_owned(), stale_cell(r, "outside")],
                vec![
                    "acknowledged writes lost to LWW".to_owned(),
                    text(r, &["ap", "lww_lost_writes"]),
                ],
                vec!["keys diverged after heal".to_owned(), text(r, &["ap", "diverged_keys"])],
            ],
        );
    }
    if get(r, &["set"]).is_some() {
        out.push_str("<h2>Set workload</h2>\n");
        let rows: Vec<Vec<String>> = ["added", "lost", "stale", "never_read"]
            .iter()
            .map(|k| vec![k.replace('_', " "), text(r, &["set", *k])])
            .collect();
        table(out, "num", &["elements", "count"], &rows);
    }
    if get(r, &["bank"]).is_some() {
        out.push_str("<h2>Bank workload</h2>\n");
        let rows: Vec<Vec<String>> = [
            ("reads", "reads"),
            ("reads with a wrong total", "bad_totals"),
            ("reads with a negative balance", "negative_balances"),
        ]
        .iter()
        .map(|(l, k)| vec![(*l).to_owned(), text(r, &["bank", k])])
        .collect();
        table(out, "num", &["figure", "count"], &rows);
    }
}

fn schedule_section(out: &mut String, r: &Json) {
    out.push_str("<h2>Fault schedule</h2>\n");
    let list = get(r, &["fault_schedule"])
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        para(out, "note", "No faults were recorded for this run.");
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .enumerate()
            .map(|(i, f)| {
                vec![
                    (i + 1).to_string(),
                    text(f, &["nemesis"]),
                    text(f, &["start_s"]),
                    text(f, &["stop_s"]),
                    text(f, &["majority"]),
                    text(f, &["minority"]),
                    text(f, &["detail"]),
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
        &format!("Everything healed at {}.", fmt_secs(num(r, &["heal_s"]))),
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
    let pair_of: HashMap<u64, usize> = paired
        .pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(p.inv.index, i), (p.done.index, i)])
        .filter(|(idx, _)| wanted.contains(idx))
        .collect();
    let mut seen_pairs = HashSet::new();
    let mut rows = Vec::new();
    for idx in indexes {
        if let Some(&pi) = pair_of.get(idx) {
            if !seen_pairs.insert(pi) {
                continue;
            }
            let p = &paired.pairs[pi];
            let value = if p.inv.value.is_none() {
                format!("\u{2192} {}", show_value(p.done.value.as_ref()))
            } else if p.done.value.is_some() && p.done.value != p.inv.value {
                format!(
                    "{} \u{2192} {}",
                    show_value(p.inv.value.as_ref()),
                    show_value(p.done.value.as_ref())
                )
            } else {
                show_value(p.inv.value.as_ref())
            };
            let mut outcome = p.outcome.name().to_owned();
            if p.done.succeeded == Some(false) {
                outcome.push_str(" (not swapped)");
            }
            rows.push(vec![
                format!("{}\u{2192}{}", p.inv.index, p.done.index),
                fmt_num(p.start_s()),
                p.inv.process.to_string(),
                p.inv
                    .node
                    .or(p.done.node)
                    .map_or_else(|| NA.to_owned(), |n| n.to_string()),
                paired.f_names[p.f].clone(),
                format!("{:?}", p.inv.key),
                value,
                outcome,
                fmt_ms(Some(p.latency_ms())),
                p.done.error.clone().or_else(|| p.inv.error.clone()).unwrap_or_default(),
            ]);
        } else if let Some(op) = by_index.get(idx) {
            let kind = serde_json::to_value(op.kind)
                .ok()
                .map_or_else(|| format!("{:?}", op.kind), |j| show_json(&j));
            rows.push(vec![
                op.index.to_string(),
                fmt_num(op.time_ns as f64 / 1e9),
                op.process.to_string(),
                op.node.map_or_else(|| NA.to_owned(), |n| n.to_string()),
                f_name(&op.f),
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

fn anomalies_section(out: &mut String, r: &Json, history: Option<(&[Op], &Paired)>) {
    let Some(list) = get(r, &["anomalies"]).and_then(Json::as_array) else {
        out.push_str("<h2>Anomalies (n/a)</h2>\n");
        para(out, "note", "n/a: the run reported no anomaly list.");
        return;
    };
    let _ = writeln!(out, "<h2>Anomalies ({})</h2>", list.len());
    if list.is_empty() {
        para(out, "note", "None: the checker found no anomaly in this history.");
        return;
    }
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for a in list {
        *by_kind.entry(text(a, &["kind"])).or_default() += 1;
    }
    let rows: Vec<Vec<String>> = by_kind.iter().map(|(k, n)| vec![k.clone(), n.to_string()]).collect();
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
        let _ = writeln!(
            out,
            "<h3 class=\"anomaly\">{}. {} on key <span class=\"k\">{}</span></h3>",
            i + 1,
            esc(&text(a, &["kind"])),
            esc(&get(a, &["key"]).map_or_else(|| NA.to_owned(), |k| format!("{:?}", show_json(k))))
        );
        para(out, "detail", &text(a, &["detail"]));
        let indexes: Vec<u64> = get(a, &["ops"])
            .and_then(Json::as_array)
            .map(|ops| ops.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        if indexes.is_empty() {
            continue;
        }
        let shown = &indexes[..indexes.len().min(MAX_ANOMALY_OPS)];
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
        if indexes.len() > shown.len() {
            para(
                out,
                "note",
                &format!("… and {} more operations.", indexes.len() - shown.len()),
            );
        }
    }
}

/// All the tables of one run. With a history, anomaly operations are shown as rows.
fn run_tables(out: &mut String, r: &Json, history: Option<(&[Op], &Paired)>) {
    ops_section(out, r);
    availability_section(out, r);
    latency_section(out, r);
    figures_section(out, r);
    schedule_section(out, r);
    anomalies_section(out, r, history);
}

fn verdict_badge(r: &Json) -> String {
    let v = Verdict::of(r);
    format!("<span class=\"verdict {}\">{}</span>", v.class(), v.word())
}

// ---------------------------------------------------------------------------------------------
// The run page
// ---------------------------------------------------------------------------------------------

/// Renders one run as a self-contained HTML page (inline CSS and SVG, no scripts, nothing
/// external): verdict and parameters, latency and throughput plots with the fault windows shaded,
/// and the tables of `results.json`, with each anomaly's operations looked up in `history`.
///
/// Missing or `null` fields show as `n/a`; events that cannot be paired are skipped.
pub fn render_run_html(results: &serde_json::Value, history: &[crate::history::Op]) -> String {
    let r = results;
    let paired = pair_history(history);
    let fs = faults(r);
    let heal = num(r, &["heal_s"]);
    let x_max = time_extent(r, Some(&paired));

    let mut out = String::with_capacity(64 * 1024);
    let title = format!(
        "capkv {} — {} {} under {}",
        text(r, &["test"]),
        text(r, &["mode"]),
        text(r, &["workload"]),
        text(r, &["nemesis"])
    );
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
            paired.pairs.len(),
            paired.nemesis,
            paired.unpaired
        ),
    );
    if schedule_len(r) > fs.len() {
        para(
            &mut out,
            "note",
            &format!(
                "{} fault window(s) have no start time and are not shaded.",
                schedule_len(r) - fs.len()
            ),
        );
    }

    out.push_str("<h2>Latency</h2>\n");
    let (svg, note) = latency_plot(&paired, x_max, &fs, heal);
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
    out.push_str(&throughput_plot(&paired, x_max, &fs, heal));
    para(
        &mut out,
        "note",
        "Operations completed per second, by completion time and outcome.",
    );

    run_tables(&mut out, r, Some((history, &paired)));
    page_end(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// The CAP comparison
// ---------------------------------------------------------------------------------------------

struct CapRow {
    label: String,
    cp: String,
    ap: String,
}

fn row(label: impl Into<String>, cp: String, ap: String) -> CapRow {
    CapRow {
        label: label.into(),
        cp,
        ap,
    }
}

fn avail(r: &Json, scope: &str) -> Option<f64> {
    num(r, &["availability", "during_faults", scope])
}

/// Sum of one outcome over every phase and operation of `ops`.
fn total(r: &Json, outcome: &str) -> Option<f64> {
    let phases = entries(r, &["ops"]);
    let mut sum = None;
    for (_, by_f) in phases {
        for (_, counts) in entries(by_f, &[]) {
            if let Some(v) = num(counts, &[outcome]) {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

fn totals_cell(r: &Json) -> String {
    ["invoked", "ok", "fail", "unknown"]
        .iter()
        .map(|k| total(r, k).map_or_else(|| NA.to_owned(), fmt_num))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Writes acknowledged on the minority side during the faults, from the optional
/// `availability.during_faults.minority_by_op.write` counts.
fn minority_writes(r: &Json) -> String {
    let base = ["availability", "during_faults", "minority_by_op", "write"];
    let ok = num(r, &[base[0], base[1], base[2], base[3], "ok"]);
    let invoked = num(r, &[base[0], base[1], base[2], base[3], "invoked"]);
    match (ok, invoked) {
        (Some(ok), Some(inv)) => format!("{} of {}", fmt_num(ok), fmt_num(inv)),
        (Some(ok), None) => fmt_num(ok),
        _ => NA.to_owned(),
    }
}

fn anomaly_count(r: &Json) -> Option<usize> {
    get(r, &["anomalies"]).and_then(Json::as_array).map(Vec::len)
}

fn anomalies_cell(r: &Json) -> String {
    let Some(list) = get(r, &["anomalies"]).and_then(Json::as_array) else {
        return NA.to_owned();
    };
    if list.is_empty() {
        return "0".to_owned();
    }
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for a in list {
        *by_kind.entry(text(a, &["kind"])).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} ({})", list.len(), kinds.join(", "))
}

fn cap_rows(cp: &Json, ap: &Json) -> Vec<CapRow> {
    let both = |f: &dyn Fn(&Json) -> String| (f(cp), f(ap));
    let mut rows = Vec::new();
    let (a, b) = both(&|r| Verdict::of(r).word().to_owned());
    rows.push(row("verdict", a, b));
    let (a, b) = both(&|r| text(r, &["workload"]));
    rows.push(row("workload", a, b));
    for (label, scope) in [
        ("availability during faults", "overall"),
        ("  majority side", "majority"),
        ("  minority side", "minority"),
    ] {
        let (a, b) = both(&|r| fmt_pct(avail(r, scope)));
        rows.push(row(label, a, b));
    }
    let (a, b) = both(&minority_writes);
    rows.push(row("writes acked on minority side", a, b));
    let (a, b) = both(&anomalies_cell);
    rows.push(row("anomalies found by the checker", a, b));
    rows.push(row(
        "acked writes lost to LWW",
        NOT_APPLICABLE.to_owned(),
        text(ap, &["ap", "lww_lost_writes"]),
    ));
    rows.push(row(
        "stale reads during faults",
        NOT_APPLICABLE.to_owned(),
        stale_cell(ap, "during"),
    ));
    rows.push(row(
        "stale reads outside faults",
        NOT_APPLICABLE.to_owned(),
        stale_cell(ap, "outside"),
    ));
    rows.push(row(
        "keys diverged after heal",
        NOT_APPLICABLE.to_owned(),
        text(ap, &["ap", "diverged_keys"]),
    ));
    rows.push(row(
        "time without a leader",
        fmt_secs(num(cp, &["cp", "time_without_leader_s"])),
        NOT_APPLICABLE.to_owned(),
    ));
    rows.push(row(
        "recovery after heal",
        fmt_secs(num(cp, &["cp", "recovery_after_heal_s"])),
        NOT_APPLICABLE.to_owned(),
    ));
    rows.push(row(
        "convergence after heal",
        NOT_APPLICABLE.to_owned(),
        fmt_secs(num(ap, &["ap", "convergence_s"])),
    ));
    let mut fs: Vec<String> = entries(cp, &["latency_ms", "during"])
        .into_iter()
        .chain(entries(ap, &["latency_ms", "during"]))
        .map(|(f, _)| f.to_owned())
        .collect();
    fs.sort_by_key(|f| f_rank(f));
    fs.dedup();
    if fs.is_empty() {
        rows.push(row("p99 latency during faults", NA.to_owned(), NA.to_owned()));
    }
    for f in &fs {
        let (a, b) = both(&|r| {
            num(r, &["latency_ms", "during", f.as_str(), "p99"])
                .map_or_else(|| NA.to_owned(), |v| format!("{} ms", fmt_ms(Some(v))))
        });
        rows.push(row(format!("p99 latency during faults, {f}"), a, b));
    }
    let (a, b) = both(&totals_cell);
    rows.push(row("ops invoked / ok / fail / unknown", a, b));
    if get(cp, &["set"]).is_some() || get(ap, &["set"]).is_some() {
        let (a, b) = both(&|r| format!("{} / {}", text(r, &["set", "lost"]), text(r, &["set", "stale"])));
        rows.push(row("set: lost / stale elements", a, b));
    }
    if get(cp, &["bank"]).is_some() || get(ap, &["bank"]).is_some() {
        let (a, b) = both(&|r| {
            format!(
                "{} / {}",
                text(r, &["bank", "bad_totals"]),
                text(r, &["bank", "negative_balances"])
            )
        });
        rows.push(row("bank: bad totals / negative", a, b));
    }
    rows
}

/// One line describing the faults both runs went through (and a warning when they differ).
fn cap_heading(cp: &Json, ap: &Json) -> Vec<String> {
    let src = if get(cp, &["nemesis"]).is_some() { cp } else { ap };
    let mut lines = vec![format!(
        "CAP report: nemesis {}, {} layer, {} nodes, time limit {} s, seed {}",
        text(src, &["nemesis"]),
        text(src, &["layer"]),
        text(src, &["nodes"]),
        text(src, &["time_limit_s"]),
        text(src, &["seed"])
    )];
    for (label, key) in [
        ("nemesis", "nemesis"),
        ("seed", "seed"),
        ("layer", "layer"),
        ("nodes", "nodes"),
    ] {
        let (a, b) = (get(cp, &[key]), get(ap, &[key]));
        if a.is_some() && b.is_some() && a != b {
            lines.push(format!(
                "warning: the runs differ in {label} (cp {}, ap {}), so the comparison is not like for like",
                text(cp, &[key]),
                text(ap, &[key])
            ));
        }
    }
    lines
}

/// Two or three sentences on what the numbers say about the trade-off.
fn cap_sentences(cp: &Json, ap: &Json) -> Vec<String> {
    let mut out = Vec::new();

    // cp
    let mut parts = Vec::new();
    if let Some(min) = avail(cp, "minority") {
        parts.push(format!(
            "refused {} of requests on the minority side",
            fmt_pct(Some(100.0 - min))
        ));
    }
    if let Some(maj) = avail(cp, "majority") {
        parts.push(format!("served {} on the majority side", fmt_pct(Some(maj))));
    }
    if parts.is_empty() {
        if let Some(all) = avail(cp, "overall") {
            parts.push(format!("served {} of requests during the faults", fmt_pct(Some(all))));
        }
    }
    let cp_anoms = anomaly_count(cp);
    let consistency = match (cp_anoms, Verdict::of(cp)) {
        (Some(0), Verdict::Valid) => "stayed linearizable (0 anomalies)".to_owned(),
        (Some(n), _) if n > 0 => format!("was NOT linearizable: the checker found {n} anomalies"),
        (_, Verdict::Invalid) => "was NOT valid according to its checker".to_owned(),
        (_, Verdict::Valid) => "was found valid by its checker".to_owned(),
        _ => "has no consistency verdict".to_owned(),
    };
    if parts.is_empty() {
        out.push(format!("cp {consistency}."));
    } else {
        out.push(format!("During the faults cp {} and {consistency}.", parts.join(", ")));
    }

    // ap
    let mut parts = Vec::new();
    match (avail(ap, "minority"), avail(ap, "overall")) {
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
    if let Some(lost) = num(ap, &["ap", "lww_lost_writes"]) {
        parts.push(format!(
            "lost {} acknowledged writes to last-writer-wins",
            fmt_num(lost)
        ));
    }
    if let Some(rate) = ratio_pct(
        num(ap, &["ap", "stale_reads", "during", "stale"]),
        num(ap, &["ap", "stale_reads", "during", "reads"]),
    ) {
        parts.push(format!(
            "returned stale values for {} of reads during the faults",
            fmt_pct(Some(rate))
        ));
    }
    if let Some(c) = num(ap, &["ap", "convergence_s"]) {
        parts.push(format!("converged {} after the heal", fmt_secs(Some(c))));
    } else if Verdict::of(ap) == Verdict::Invalid {
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
    let (cp_min, ap_min) = (avail(cp, "minority"), avail(ap, "minority"));
    if cp_anoms.is_some_and(|n| n > 0) || Verdict::of(cp) == Verdict::Invalid {
        out.push(
            "Warning: the cp run broke its consistency guarantee, so this run does not show the CAP trade-off; \
                  see its report."
                .to_owned(),
        );
    } else if let (Some(c), Some(a)) = (cp_min, ap_min) {
        let lost = num(ap, &["ap", "lww_lost_writes"]).unwrap_or(0.0);
        let stale = num(ap, &["ap", "stale_reads", "during", "stale"]).unwrap_or(0.0);
        if a > c && (lost > 0.0 || stale > 0.0) {
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

/// Pads or truncates `s` to exactly `width` characters.
fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s}{}", " ".repeat(width - n))
    } else if width >= 3 {
        let mut t: String = s.chars().take(width - 3).collect();
        t.push_str("...");
        t
    } else {
        s.chars().take(width).collect()
    }
}

/// Renders the CAP comparison of a `cp` and an `ap` run for a terminal: a plain-ASCII table no
/// wider than 100 columns, then a few sentences that explain the trade-off in the numbers.
///
/// `n/a` marks figures a run did not report, `-` figures that do not apply to a mode.
pub fn render_cap_terminal(cp: &serde_json::Value, ap: &serde_json::Value) -> String {
    let rows = cap_rows(cp, ap);
    let head = CapRow {
        label: "same faults, both modes".to_owned(),
        cp: "cp (Raft)".to_owned(),
        ap: "ap (LWW)".to_owned(),
    };
    let clean = |r: &CapRow| [plain(&r.label), plain(&r.cp), plain(&r.ap)];
    let cells: Vec<[String; 3]> = std::iter::once(&head).chain(rows.iter()).map(clean).collect();
    let widest = |i: usize| cells.iter().map(|c| c[i].chars().count()).max().unwrap_or(0);
    // "| a | b | c |" costs 10 columns beyond the cells.
    let budget = TERMINAL_WIDTH - 10;
    let w0 = widest(0).min(36);
    let value_budget = budget - w0;
    let (mut w1, mut w2) = (widest(1).max(10), widest(2).max(10));
    if w1 + w2 > value_budget {
        let half = value_budget / 2;
        if w1 <= half {
            w2 = value_budget - w1;
        } else if w2 <= half {
            w1 = value_budget - w2;
        } else {
            w1 = half;
            w2 = value_budget - half;
        }
    }
    let rule = format!(
        "+{}+{}+{}+\n",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    let line = |c: &[String; 3]| format!("| {} | {} | {} |\n", fit(&c[0], w0), fit(&c[1], w1), fit(&c[2], w2));

    let mut out = String::new();
    for l in cap_heading(cp, ap) {
        for w in wrap(&plain(&l), TERMINAL_WIDTH) {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out.push_str(&rule);
    out.push_str(&line(&cells[0]));
    out.push_str(&rule);
    for c in &cells[1..] {
        out.push_str(&line(c));
    }
    out.push_str(&rule);
    out.push_str("n/a: not reported by the run; -: does not apply to the mode.\n\n");
    for s in cap_sentences(cp, ap) {
        for w in wrap(&plain(&s), TERMINAL_WIDTH) {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out
}

/// Renders the CAP comparison as one self-contained HTML page: the side-by-side table and its
/// explanation, bar charts of availability and p99 latency during the faults, and for each mode
/// its fault timeline and tables. Per-operation plots need a history: see each run's own report.
pub fn render_cap_html(cp: &serde_json::Value, ap: &serde_json::Value) -> String {
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

    out.push_str("<table class=\"num cap\"><thead><tr><th>same faults, both modes</th><th>cp (Raft)</th><th>ap (LWW)</th></tr></thead><tbody>\n");
    for r in cap_rows(cp, ap) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r.label.trim()),
            esc(&r.cp),
            esc(&r.ap)
        );
    }
    out.push_str("</tbody></table>\n");
    para(
        &mut out,
        "note",
        "n/a: not reported by the run; -: does not apply to the mode.",
    );
    para(&mut out, "trade", &cap_sentences(cp, ap).join(" "));

    out.push_str("<h2>During the faults</h2>\n<div class=\"cols\">");
    let groups: Vec<(String, [Option<f64>; 2])> = ["overall", "majority", "minority"]
        .iter()
        .map(|s| (s.to_string(), [avail(cp, s), avail(ap, s)]))
        .collect();
    out.push_str(&bar_chart(
        "Availability during faults",
        "ok % of ops",
        &groups,
        YAxis::Linear { max: 100.0, step: 20.0 },
        "%",
    ));
    let mut fs: Vec<String> = entries(cp, &["latency_ms", "during"])
        .into_iter()
        .chain(entries(ap, &["latency_ms", "during"]))
        .map(|(f, _)| f.to_owned())
        .collect();
    fs.sort_by_key(|f| f_rank(f));
    fs.dedup();
    let lat: Vec<(String, [Option<f64>; 2])> = fs
        .iter()
        .map(|f| {
            let p99 = |r: &Json| num(r, &["latency_ms", "during", f.as_str(), "p99"]);
            (f.clone(), [p99(cp), p99(ap)])
        })
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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Value;
    use serde_json::json;

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

    fn full_results(valid: bool, key: &str) -> Json {
        json!({
            "test": "register-cp", "mode": "cp", "workload": "register", "nemesis": "partition-halves",
            "layer": "built-in", "nodes": 5, "seed": 7, "time_limit_s": 20, "concurrency": 10,
            "git_revision": "f1b4db1", "started_at": "2026-11-01T10:00:00Z", "duration_s": 21.5,
            "valid": valid, "verdict": if valid { "valid" } else { "invalid" },
            "anomalies": if valid { json!([]) } else { json!([
                {"kind": "stale-read", "key": key, "detail": "read 0 after 1 was acknowledged", "ops": [0, 1, 8, 9, 999]}
            ]) },
            "fault_schedule": [
                {"nemesis": "partition-halves", "start_s": 5.0, "stop_s": 10.0, "detail": "{1,2,3} | {4,5}",
                 "majority": [1, 2, 3], "minority": [4, 5]},
                {"nemesis": "isolate-leader", "start_s": 12.0, "stop_s": 15.0, "detail": "leader 1 alone",
                 "majority": [2, 3, 4, 5], "minority": [1]}
            ],
            "heal_s": 15.0,
            "ops": {
                "before": {"write": {"invoked": 1, "ok": 1, "fail": 0, "unknown": 0}},
                "during": {"write": {"invoked": 1, "ok": 0, "fail": 1, "unknown": 0},
                           "cas": {"invoked": 1, "ok": 0, "fail": 0, "unknown": 1}},
                "after": {"read": {"invoked": 48213, "ok": 48200, "fail": 13, "unknown": 0}}
            },
            "ops_by_node": {"1": {"invoked": 3, "ok": 2, "fail": 1, "unknown": 0},
                            "4": {"invoked": 2, "ok": 1, "fail": 0, "unknown": 1}},
            "availability": {"during_faults": {"overall": 61.5, "majority": 99.2, "minority": 0.0,
                                               "by_op": {"read": 70.0, "write": 55.5},
                                               "minority_by_op": {"write": {"invoked": 812, "ok": 0}}}},
            "latency_ms": {"during": {"read": {"count": 10, "p50": 1.5, "p99": 4873.0, "p999": 5000.0, "max": 5001.0},
                                      "write": {"count": 5, "p50": 2.5, "p99": 12.4, "p999": 13.0, "max": 14.0}}},
            "cp": {"time_without_leader_s": 1.75, "recovery_after_heal_s": 0.42},
            "ap": null, "set": null,
            "bank": {"reads": 100, "bad_totals": 0, "negative_balances": 0}
        })
    }

    fn ap_results() -> Json {
        json!({
            "test": "register-ap", "mode": "ap", "workload": "register", "nemesis": "partition-halves",
            "layer": "built-in", "nodes": 5, "seed": 7, "time_limit_s": 20,
            "valid": true, "verdict": "valid", "anomalies": [],
            "fault_schedule": [{"nemesis": "partition-halves", "start_s": 5.0, "stop_s": 10.0,
                                "majority": [1, 2, 3], "minority": [4, 5]}],
            "heal_s": 10.0,
            "ops": {"during": {"write": {"invoked": 900, "ok": 900, "fail": 0, "unknown": 0}}},
            "availability": {"during_faults": {"overall": 100.0, "majority": 100.0, "minority": 100.0,
                                               "minority_by_op": {"write": {"invoked": 790, "ok": 790}}}},
            "latency_ms": {"during": {"read": {"count": 10, "p50": 0.8, "p99": 3.5, "p999": 4.0, "max": 4.0}}},
            "cp": null,
            "ap": {"convergence_s": 0.83, "stale_reads": {"during": {"reads": 400, "stale": 38},
                                                          "outside": {"reads": 1000, "stale": 2}},
                   "lww_lost_writes": 17, "diverged_keys": 0}
        })
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
        assert_eq!(nice_step(60.0, 12.0), 5.0);
        assert_eq!(nice_step(7.0, 5.0), 1.0);
        match YAxis::log(0.5, 4873.0) {
            YAxis::Log { lo, hi } => assert_eq!((lo, hi), (-1, 4)),
            YAxis::Linear { .. } => panic!("expected a log axis"),
        }
        // Absurd latencies (broken clocks) do not panic and keep a sane axis.
        for (lo, hi) in [(1e15, 1e16), (0.0, 0.0), (-5.0, f64::INFINITY), (7.0, 7.0)] {
            match YAxis::log(lo, hi) {
                YAxis::Log { lo, hi } => assert!(-3 <= lo && lo < hi && hi <= 10, "{lo} {hi}"),
                YAxis::Linear { .. } => panic!("expected a log axis"),
            }
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
            assert_eq!(svg.matches("class=\"fault\"").count(), 2, "one rect per fault window");
            assert_eq!(svg.matches("class=\"heal\"").count(), 1);
            assert!(svg.contains("partition-halves") && svg.contains("isolate-leader"));
        }
        // Markers for all three outcomes, legends for each op.
        for colour in ["#1c7ed6", "#e03131", "#f08c00"] {
            assert!(
                plots[0].contains(&format!("stroke=\"{colour}\"><title>")),
                "markers in {colour}"
            );
        }
        for f in ["read", "write", "cas"] {
            assert!(plots[0].contains(&format!(">{f}</text>")), "legend for {f}");
        }
        assert!(plots[0].contains("latency (ms, log scale)"));
        assert!(plots[1].contains("<polyline"));
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
    fn report_run_html_tolerates_nulls_and_missing_fields() {
        let nulls = json!({
            "test": null, "mode": null, "valid": null, "verdict": null, "anomalies": null,
            "fault_schedule": [{"nemesis": null, "start_s": null}, {"nemesis": "kill", "start_s": 1, "stop_s": null}],
            "heal_s": null, "ops": {"during": null, "before": {"read": null}}, "ops_by_node": null,
            "availability": {"during_faults": null}, "latency_ms": {"during": {"read": {"p50": null}}},
            "cp": null, "ap": null, "set": null, "bank": null
        });
        for r in [json!({}), Json::Null, json!([1, 2]), json!("x"), nulls] {
            for h in [Vec::new(), small_history("k")] {
                let html = render_run_html(&r, &h);
                assert!(html.contains("class=\"verdict unknown\""), "{r}");
                assert!(html.contains("n/a"));
                assert!(html.ends_with("</html>\n"));
                assert_eq!(svgs(&html).len(), 2);
            }
        }
        let html = render_run_html(&json!({"fault_schedule": [{"start_s": null}, {"start_s": 1}]}), &[]);
        assert!(html.contains("1 fault window(s) have no start time"));
        assert!(html.contains("no paired operations"));
    }

    #[test]
    fn report_pairing_skips_unpairable_events() {
        let mut h = small_history("k");
        // A completion with no invocation, a nemesis-like pair on another key, and a mismatched f.
        h.push(ev(11, 17100, 99, Kind::Info, F::Write, "nemesis", None));
        h.push(ev(12, 17200, 7, Kind::Invoke, F::Read, "k", None));
        h.push(ev(13, 17300, 7, Kind::Ok, F::Write, "k", None));
        h.push(ev(14, 17400, 8, Kind::Invoke, F::Read, "a", None));
        h.push(ev(15, 17500, 8, Kind::Ok, F::Read, "b", None));
        // Nemesis events pair up by process but are not operations.
        h.push(ev(16, 17600, NEMESIS_PROCESS, Kind::Invoke, F::Start, "", None));
        h.push(ev(17, 17700, NEMESIS_PROCESS, Kind::Info, F::Start, "", None));
        h.push(ev(18, 17800, NEMESIS_PROCESS, Kind::Info, F::Stop, "", None));
        let p = pair_history(&h);
        assert_eq!(p.nemesis, 3);
        assert_eq!(p.pairs.len(), 5);
        // Orphan completion, two mismatched pairs, and the dangling read of process 5.
        assert_eq!(p.unpaired, 1 + 2 + 2 + 1);
        let outcomes: Vec<Outcome> = p.pairs.iter().map(|p| p.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Ok, Outcome::Ok, Outcome::Fail, Outcome::Info, Outcome::Ok]
        );
        assert!((p.pairs[0].latency_ms() - 5.0).abs() < 1e-9);
        assert_eq!(p.f_names, ["write", "read", "cas"]);
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
        assert!(plots[0].matches("class=\"pts\"").count() >= 9);
        assert_eq!(plots[0].matches("class=\"fault\"").count(), 2);
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
                line.chars().count() <= TERMINAL_WIDTH,
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
    fn report_cap_terminal_tolerates_nulls_and_hostile_text() {
        for (cp, ap) in [
            (json!({}), json!({})),
            (Json::Null, json!(null)),
            (
                json!({"nemesis": "x\u{1b}[2J<y>", "availability": null, "ap": {"stale_reads": null}}),
                json!({"ap": null}),
            ),
        ] {
            let t = render_cap_terminal(&cp, &ap);
            assert!(t.contains("n/a"));
            assert!(!t.contains('\u{1b}'));
            assert!(t.lines().all(|l| l.chars().count() <= TERMINAL_WIDTH));
        }
        // Very long values are truncated rather than widening the table.
        let long = json!({"workload": "w".repeat(300), "nemesis": "n".repeat(300)});
        let t = render_cap_terminal(&long, &long);
        assert!(t.lines().all(|l| l.chars().count() <= TERMINAL_WIDTH), "{t}");
        assert!(t.contains("..."));
    }

    #[test]
    fn report_cap_html_has_table_bars_and_fault_windows() {
        let cp = full_results(true, "<k>");
        let mut ap = ap_results();
        ap["nemesis"] = json!("<script>bad</script>");
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
        assert!(plots[0].contains("class=\"bar\""));
        assert_eq!(plots[2].matches("class=\"fault\"").count(), 2);
        assert_eq!(plots[3].matches("class=\"fault\"").count(), 1);
        // Nulls everywhere still render.
        let html = render_cap_html(&json!({}), &Json::Null);
        assert!(html.contains("class=\"verdict unknown\""));
        assert!(html.contains("n/a"));
    }
}
