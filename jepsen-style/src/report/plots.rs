//! The report's SVG plots: latency and throughput over time with the fault windows shaded, a
//! fault timeline, and grouped bar charts for the CAP page.
//!
//! # Caveats
//!
//! * Large histories are downsampled for the latency plot: points that overlap on screen are
//!   merged, then each (outcome, operation) series is thinned evenly, keeping small series whole.
//! * Times are what the runner recorded; if the history and the schedule disagree, the shaded
//!   windows do not line up with the data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::format::{esc, fmt_num, fmt_secs, node_list, outcome_colour, outcome_legend, outcome_name, NA, OUTCOMES};
use crate::history::F;
use crate::pairing::{Event, Outcome, Paired};
use crate::results::{Results, ScheduledFault};

/// Most latency points drawn in one plot.
const MAX_POINTS: usize = 8000;
/// Most throughput buckets in one plot.
const MAX_BUCKETS: usize = 2000;

fn start_s(e: &Event) -> f64 {
    e.invoke.time_ns as f64 / 1e9
}

fn end_s(e: &Event) -> f64 {
    e.completion.map_or(e.invoke.time_ns, |c| c.time_ns) as f64 / 1e9
}

fn latency_ms(e: &Event) -> f64 {
    e.latency_ns().unwrap_or(0) as f64 / 1e6
}

/// The end of the time axis: the latest completion, fault boundary or heal; without a history,
/// at least the run's duration.
pub(super) fn time_extent(r: &Results, paired: Option<&Paired>) -> f64 {
    let mut end: f64 = 0.0;
    if let Some(p) = paired {
        for e in p.completed() {
            end = end.max(end_s(e));
        }
    } else {
        end = end.max(r.duration_s);
    }
    for f in &r.fault_schedule {
        end = end.max(f.start_s).max(f.stop_s);
    }
    end = end.max(r.heal_s);
    if end > 0.0 && end.is_finite() {
        end
    } else if r.duration_s > 0.0 {
        r.duration_s
    } else {
        (r.time_limit_s as f64).max(1.0)
    }
}

const W: f64 = 1160.0;
const H: f64 = 340.0;
const ML: f64 = 70.0;
const MR: f64 = 18.0;
const MT: f64 = 38.0;
const MB: f64 = 46.0;

/// Tick spacing giving about `target` ticks over `range`: 1, 2 or 5 times a power of ten.
pub(super) fn nice_step(range: f64, target: f64) -> f64 {
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

pub(super) enum YAxis {
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

    pub(super) fn log(min: f64, max: f64) -> YAxis {
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
    faults: &'a [ScheduledFault],
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
        let a = px(p.x_max, f.start_s);
        let b = px(p.x_max, f.stop_s);
        let _ = write!(
            s,
            r#"<rect class="fault" x="{a:.1}" y="{y0}" width="{:.1}" height="{:.1}"><title>{} {}–{} (majority {}; minority {}) {}</title></rect>"#,
            (b - a).max(1.0),
            y1 - y0,
            esc(&f.nemesis),
            fmt_secs(Some(f.start_s)),
            fmt_secs(Some(f.stop_s)),
            node_list(&f.majority),
            node_list(&f.minority),
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
        let a = px(p.x_max, f.start_s);
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

/// A latency series: (outcome, operation).
type SeriesKey = (Outcome, F);

/// Points of a series in pixels, and the 2-pixel cells already taken.
#[derive(Default)]
struct Series(Vec<(f32, f32)>, HashSet<(u16, u16)>);

/// The latency scatter plot and a sentence saying how many points it shows.
pub(super) fn latency_plot(
    paired: &Paired,
    x_max: f64,
    faults: &[ScheduledFault],
    heal: Option<f64>,
) -> (String, String) {
    // Operations in display order (read, write, cas, ...), each with its marker shape.
    let order: Vec<F> = paired
        .completed()
        .map(|e| e.invoke.f)
        .collect::<std::collections::BTreeSet<F>>()
        .into_iter()
        .collect();
    let shape_of: HashMap<F, Shape> = order
        .iter()
        .enumerate()
        .map(|(n, f)| (*f, SHAPES[n % SHAPES.len()]))
        .collect();

    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    let mut total = 0;
    for e in paired.completed() {
        let l = latency_ms(e);
        lo = lo.min(l);
        hi = hi.max(l);
        total += 1;
    }
    let y = if total == 0 {
        YAxis::Log { lo: 0, hi: 3 }
    } else {
        YAxis::log(lo, hi)
    };

    // Series per (outcome, f), merging points that fall on the same 2-pixel cell.
    let mut series: BTreeMap<SeriesKey, Series> = BTreeMap::new();
    for e in paired.completed() {
        let x = px(x_max, start_s(e));
        let yy = y.py(latency_ms(e));
        let entry = series.entry((e.outcome(), e.invoke.f)).or_default();
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
            marker(&mut d, shape_of[f], f64::from(x), f64::from(yy));
        }
        shown += take;
        let _ = write!(
            body,
            r#"<path class="pts" d="{d}" stroke="{}"><title>{} {}</title></path>"#,
            outcome_colour(*outcome),
            f,
            outcome_name(*outcome)
        );
    }
    if total == 0 {
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
            label: outcome_legend(*o).to_owned(),
            colour: outcome_colour(*o),
            shape: Shape::Swatch,
        })
        .collect();
    for f in &order {
        legend.push(LegendItem {
            label: f.to_string(),
            colour: "#495057",
            shape: shape_of[f],
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
pub(super) fn throughput_plot(paired: &Paired, x_max: f64, faults: &[ScheduledFault], heal: Option<f64>) -> String {
    let width_s = (x_max / MAX_BUCKETS as f64).max(1.0);
    let n = ((x_max / width_s).ceil() as usize).clamp(1, MAX_BUCKETS);
    let mut counts = vec![[0u32; 3]; n];
    for e in paired.completed() {
        let b = ((end_s(e) / width_s) as usize).min(n - 1);
        let o = OUTCOMES.iter().position(|o| *o == e.outcome()).unwrap_or(0);
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
            outcome_colour(*outcome),
            outcome_name(*outcome)
        );
    }
    let legend = OUTCOMES
        .iter()
        .map(|o| LegendItem {
            label: outcome_legend(*o).to_owned(),
            colour: outcome_colour(*o),
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
pub(super) fn timeline_plot(r: &Results, title: &str) -> String {
    let fs = &r.fault_schedule;
    let x_max = time_extent(r, None);
    let mut body = String::new();
    let rows = (((H - MT - MB - 40.0) / 22.0) as usize).max(1);
    for (i, f) in fs.iter().enumerate() {
        let (a, b) = (px(x_max, f.start_s), px(x_max, f.stop_s));
        let y = MT + 36.0 + (i % rows) as f64 * 22.0;
        let label = format!(
            "{} {}–{}: majority {} | minority {}",
            f.nemesis,
            fmt_num(f.start_s),
            fmt_num(f.stop_s),
            node_list(&f.majority),
            node_list(&f.minority)
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
        faults: fs,
        heal: Some(r.heal_s),
        body,
        legend: Vec::new(),
    })
}

/// A grouped bar chart of cp and ap values.
pub(super) fn bar_chart(
    title: &str,
    y_label: &str,
    groups: &[(String, [Option<f64>; 2])],
    y: YAxis,
    unit: &str,
) -> String {
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
