//! The report's plots, drawn by plotters into SVG: latency and throughput over time with the fault
//! windows shaded and the heal marked, a fault timeline, and grouped bar charts for the CAP page.
//!
//! Colours carry meaning: blue `ok`, red `fail`, amber `info` (unknown outcome); fault windows
//! are a pale red band ([`FAULT_FILL`]), the heal a dashed green line ([`HEAL`]). In the latency
//! plot the marker's shape is the operation (circle `read`, triangle `write`, cross `cas`, square
//! anything else).
//!
//! # Caveats
//!
//! * Large histories are downsampled for the latency plot: points that overlap on screen are
//!   merged, then each (outcome, operation) series is thinned evenly, keeping small series (the
//!   `fail` and `info` points, usually) whole. The returned note says how many points are shown.
//! * Times are what the runner recorded; if the history and the schedule disagree, the shaded
//!   windows do not line up with the data.
//! * plotters lays text out with a width estimate (no font files are read), so long labels may
//!   overlap.
//! * A plot that plotters fails to draw is replaced by a sentence saying why; the tables below it
//!   do not depend on it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::format::{fmt_num, outcome_legend, visible, OUTCOMES};
use crate::history::F;
use crate::pairing::{Event, Outcome, Paired};
use crate::results::{Results, ScheduledFault};

/// Most latency points drawn in one plot.
const MAX_POINTS: usize = 8000;
/// Most throughput buckets in one plot.
const MAX_BUCKETS: usize = 2000;
/// Size of the time plots, in SVG pixels.
const W: u32 = 1160;
const H: u32 = 340;
/// Size of one bar chart.
const BAR_H: u32 = 260;
/// Fill of a fault window (drawn at [`FAULT_ALPHA`]).
pub(super) const FAULT_FILL: RGBColor = RGBColor(0xfa, 0x52, 0x52);
const FAULT_ALPHA: f64 = 0.14;
/// The heal line.
pub(super) const HEAL: RGBColor = RGBColor(0x2b, 0x8a, 0x3e);
/// Bars of the cp and the ap run.
const MODE_COLOURS: [RGBColor; 2] = [RGBColor(0x1c, 0x7e, 0xd6), RGBColor(0xf0, 0x8c, 0x00)];
const GREY: RGBColor = RGBColor(0x49, 0x50, 0x57);
/// Shortest latency a log axis shows (1 µs).
const MIN_MS: f64 = 1e-3;

type PlotResult = Result<(), String>;

/// The plot colour of an outcome.
pub(super) fn outcome_rgb(o: Outcome) -> RGBColor {
    match o {
        Outcome::Ok => RGBColor(0x1c, 0x7e, 0xd6),
        Outcome::Fail => RGBColor(0xe0, 0x31, 0x31),
        Outcome::Unknown => RGBColor(0xf0, 0x8c, 0x00),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws with `draw` on a `w` x `h` SVG; a drawing error becomes a sentence in place of the plot.
fn svg(w: u32, h: u32, draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> PlotResult) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(err)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(err))
    };
    match result {
        Ok(()) => out,
        Err(e) => format!(
            r#"<p class="note">This plot could not be drawn: {}.</p>"#,
            super::format::esc(&e)
        ),
    }
}

fn start_s(e: &Event) -> f64 {
    e.invoke.time_ns as f64 / 1e9
}

fn end_s(e: &Event) -> f64 {
    e.completion.map_or(e.invoke.time_ns, |c| c.time_ns) as f64 / 1e9
}

fn latency_ms(e: &Event) -> f64 {
    (e.latency_ns().unwrap_or(0) as f64 / 1e6).max(MIN_MS)
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

fn log_axis(range: Range<f64>) -> LogCoord<f64> {
    range.log_scale().into()
}

/// The decades a log axis spans for latencies in `[lo, hi]` ms: at least one, at most 10^-3 to
/// 10^10 (anything outside is drawn at the edge).
pub(super) fn log_decades(lo: f64, hi: f64) -> (i32, i32) {
    let lo_e = (lo.max(MIN_MS).log10().floor() as i32).clamp(-3, 9);
    let hi_e = (hi.max(MIN_MS).log10().ceil() as i32).clamp(lo_e + 1, 10);
    (lo_e, hi_e)
}

/// Shades every fault window and labels it; marks the heal.
fn draw_faults<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<DB, Cartesian2d<RangedCoordf64, Y>>,
    faults: &[ScheduledFault],
    heal: Option<f64>,
    y: (f64, f64),
) -> PlotResult {
    let fill = FAULT_FILL.mix(FAULT_ALPHA).filled();
    chart
        .draw_series(
            faults
                .iter()
                .map(|f| Rectangle::new([(f.start_s, y.0), (f.stop_s, y.1)], fill)),
        )
        .map_err(err)?;
    let label = ("sans-serif", 12).into_font().color(&FAULT_FILL);
    chart
        .draw_series(faults.iter().enumerate().map(|(i, f)| {
            EmptyElement::at((f.start_s, y.1))
                + Text::new(visible(&f.nemesis), (4, 4 + 13 * (i as i32 % 3)), label.clone())
        }))
        .map_err(err)?;
    if let Some(h) = heal {
        chart
            .draw_series(DashedLineSeries::new([(h, y.0), (h, y.1)], 6, 4, HEAL.stroke_width(2)))
            .map_err(err)?
            .label(format!("heal {} s", fmt_num(h)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], HEAL.stroke_width(2)));
    }
    Ok(())
}

/// The outline of operation `f`'s marker around (0, 0), in pixels: circle (an octagon) for
/// `read`, triangle for `write`, cross for `cas`, square for anything else.
fn shape(f: F) -> Vec<(i32, i32)> {
    match f {
        F::Read => vec![
            (-1, -3),
            (1, -3),
            (3, -1),
            (3, 1),
            (1, 3),
            (-1, 3),
            (-3, 1),
            (-3, -1),
            (-1, -3),
        ],
        F::Write => vec![(0, -4), (4, 3), (-4, 3), (0, -4)],
        F::Cas => vec![(-3, -3), (3, 3), (0, 0), (3, -3), (-3, 3)],
        _ => vec![(-3, -3), (3, -3), (3, 3), (-3, 3), (-3, -3)],
    }
}

/// The legend glyph of operation `f`, in backend pixels.
fn legend_marker(f: F, (x, y): (i32, i32)) -> PathElement<(i32, i32)> {
    let points = shape(f)
        .into_iter()
        .map(|(dx, dy)| (x + 6 + dx, y + dy))
        .collect::<Vec<_>>();
    PathElement::new(points, GREY.stroke_width(1))
}

/// A latency series: (outcome, operation).
type SeriesKey = (Outcome, F);

/// Picks the points to draw: merges points on the same 2-pixel cell, then shares
/// [`MAX_POINTS`] out among the series, smallest first, so rare outcomes stay whole. Returns the
/// points per series and how many distinct points there were.
fn downsample(paired: &Paired, x_max: f64, decades: (i32, i32)) -> (BTreeMap<SeriesKey, Vec<(f64, f64)>>, usize) {
    let cell = |e: &Event| {
        let x = start_s(e) / x_max * f64::from(W) / 2.0;
        let frac = (latency_ms(e).log10() - f64::from(decades.0)) / f64::from(decades.1 - decades.0);
        (x as u32, (frac * f64::from(H) / 2.0) as i64)
    };
    // Per series: its points, and the 2-pixel cells already taken.
    type Cells = (Vec<(f64, f64)>, HashSet<(u32, i64)>);
    let mut series: BTreeMap<SeriesKey, Cells> = BTreeMap::new();
    for e in paired.completed() {
        let entry = series.entry((e.outcome(), e.invoke.f)).or_default();
        if entry.1.insert(cell(e)) {
            entry.0.push((start_s(e), latency_ms(e)));
        }
    }
    let distinct = series.values().map(|s| s.0.len()).sum();
    let mut by_size: Vec<(usize, SeriesKey)> = series.iter().map(|(k, v)| (v.0.len(), *k)).collect();
    by_size.sort();
    let mut budget = MAX_POINTS;
    let mut allot: HashMap<SeriesKey, usize> = HashMap::new();
    let n_series = by_size.len();
    for (i, (len, key)) in by_size.iter().enumerate() {
        let take = (*len).min(budget / (n_series - i));
        budget -= take;
        allot.insert(*key, take);
    }
    let picked = series
        .into_iter()
        .map(|(key, (points, _))| {
            let take = allot.get(&key).copied().unwrap_or(0);
            let thinned = (0..take).map(|i| points[i * points.len() / take]).collect();
            (key, thinned)
        })
        .collect();
    (picked, distinct)
}

/// The latency scatter plot and a sentence saying how many points it shows.
pub(super) fn latency_plot(
    paired: &Paired,
    x_max: f64,
    faults: &[ScheduledFault],
    heal: Option<f64>,
) -> (String, String) {
    let total = paired.completed().count();
    let (lo, hi) = paired
        .completed()
        .map(latency_ms)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let decades = if total == 0 { (0, 3) } else { log_decades(lo, hi) };
    let (points, distinct) = downsample(paired, x_max, decades);
    let shown: usize = points.values().map(Vec::len).sum();
    let ops: BTreeSet<F> = points.keys().map(|(_, f)| *f).collect();
    let y_range = 10f64.powi(decades.0)..10f64.powi(decades.1);
    let plot = svg(W, H, |root| {
        let mut chart = time_chart(root, "Latency over time", x_max, log_axis(y_range.clone()))?;
        chart
            .configure_mesh()
            .y_desc("latency (ms, log scale)")
            .x_desc("time since test start (s)")
            .y_label_formatter(&|v| fmt_num(*v))
            .x_label_formatter(&|v| fmt_num(*v))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        draw_faults(&mut chart, faults, heal, (y_range.start, y_range.end))?;
        for ((outcome, f), pts) in &points {
            let colour = outcome_rgb(*outcome);
            chart
                .draw_series(pts.iter().map(|&(x, y)| {
                    let c = (x, y.clamp(y_range.start, y_range.end));
                    EmptyElement::at(c) + PathElement::new(shape(*f), colour.stroke_width(1))
                }))
                .map_err(err)?;
        }
        for o in OUTCOMES {
            let colour = outcome_rgb(o);
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(outcome_legend(o))
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 9, y + 5)], colour.filled()));
        }
        for f in ops.iter().copied() {
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(f.to_string())
                .legend(move |c| legend_marker(f, c));
        }
        if total == 0 {
            let style = ("sans-serif", 14).into_font().color(&GREY);
            root.draw(&Text::new(
                "no paired operations in the history",
                (W as i32 / 2 - 120, H as i32 / 2),
                style,
            ))
            .map_err(err)?;
        }
        legend(&mut chart)
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
    (plot, note)
}

/// A chart over time (x: seconds since the test started) with the given y axis.
fn time_chart<'a, 'b, Y: Ranged<ValueType = f64>>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x_max: f64,
    y: Y,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>, String> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .margin_right(18)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y)
        .map_err(err)
}

fn legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> PlotResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY.mix(0.5))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)
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
    let span = |b: usize| (x_max - b as f64 * width_s).min(width_s).max(1e-9);
    let drawn = if n > 1 && span(n - 1) < 0.25 * width_s {
        n - 1
    } else {
        n
    };
    let rate = |b: usize, o: usize| f64::from(counts[b][o]) / span(b);
    let max_rate = (0..drawn)
        .flat_map(|b| (0..3).map(move |o| (b, o)))
        .map(|(b, o)| rate(b, o))
        .fold(0.0, f64::max);
    let y_max = if max_rate > 0.0 { max_rate * 1.1 } else { 1.0 };
    let y_desc = format!("completed ops/s ({} s buckets)", fmt_num(width_s));
    svg(W, H, |root| {
        let mut chart = time_chart(root, "Throughput over time", x_max, RangedCoordf64::from(0f64..y_max))?;
        chart
            .configure_mesh()
            .y_desc(y_desc.as_str())
            .y_label_formatter(&|v| fmt_num(*v))
            .x_label_formatter(&|v| fmt_num(*v))
            .x_desc("time since test start (s)")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        draw_faults(&mut chart, faults, heal, (0.0, y_max))?;
        for (o, outcome) in OUTCOMES.iter().enumerate() {
            if counts.iter().all(|c| c[o] == 0) {
                continue;
            }
            let colour = outcome_rgb(*outcome);
            let line = (0..drawn).map(|b| (b as f64 * width_s + span(b) / 2.0, rate(b, o)));
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)))
                .map_err(err)?
                .label(outcome_legend(*outcome))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        }
        legend(&mut chart)
    })
}

/// A fault timeline without data, for pages that have no history.
pub(super) fn timeline_plot(r: &Results, title: &str) -> String {
    let x_max = time_extent(r, None);
    let rows = r.fault_schedule.len().clamp(1, 8);
    svg(W, 200, |root| {
        let mut chart = time_chart(root, title, x_max, RangedCoordf64::from(0f64..rows as f64))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&|v| fmt_num(*v))
            .x_desc("time since test start (s)")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        draw_faults(&mut chart, &r.fault_schedule, Some(r.heal_s), (0.0, rows as f64))?;
        let style = ("sans-serif", 12).into_font().color(&GREY);
        chart
            .draw_series(r.fault_schedule.iter().enumerate().map(|(i, f)| {
                let row = (rows - 1 - i % rows) as f64 + 0.5;
                let text = format!(
                    "{} {}–{} s: majority {} | minority {}",
                    f.nemesis,
                    fmt_num(f.start_s),
                    fmt_num(f.stop_s),
                    super::format::node_list(&f.majority),
                    super::format::node_list(&f.minority)
                );
                EmptyElement::at((f.start_s, row)) + Text::new(visible(&text), (4, -6), style.clone())
            }))
            .map_err(err)?;
        if r.fault_schedule.is_empty() {
            root.draw(&Text::new("no fault windows recorded", (W as i32 / 2 - 80, 100), style))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// The y axis of a bar chart.
pub(super) enum BarAxis {
    /// From 0 to `max`.
    Linear(f64),
    /// Logarithmic, over the decades given by [`log_decades`].
    Log(i32, i32),
}

/// A grouped bar chart: for each group, a cp bar and an ap bar (`None`: shown as `n/a`).
pub(super) fn bar_chart(
    title: &str,
    y_desc: &str,
    groups: &[(String, [Option<f64>; 2])],
    y: BarAxis,
    unit: &str,
) -> String {
    let width = (80 + 150 * groups.len().max(1)) as u32;
    let x_range = 0f64..(groups.len().max(1) as f64);
    let draw = |root: &DrawingArea<SVGBackend, Shift>| -> PlotResult {
        match y {
            BarAxis::Linear(max) => {
                // Headroom above the tallest bar for its label.
                let y = RangedCoordf64::from(0f64..max * 1.15);
                bars(root, title, y_desc, groups, x_range.clone(), y, unit)
            }
            BarAxis::Log(lo, hi) => bars(
                root,
                title,
                y_desc,
                groups,
                x_range.clone(),
                log_axis(10f64.powi(lo)..10f64.powi(hi)),
                unit,
            ),
        }
    };
    svg(width, BAR_H, draw)
}

fn bars<Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    y_desc: &str,
    groups: &[(String, [Option<f64>; 2])],
    x: Range<f64>,
    y: Y,
    unit: &str,
) -> PlotResult {
    let (y_lo, y_hi) = {
        let r = y.range();
        (r.start, r.end)
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| visible(g)).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|v| {
            let i = (v - 0.5).round();
            let on_centre = (v - 0.5 - i).abs() < 1e-6 && i >= 0.0;
            names.get(i as usize).filter(|_| on_centre).cloned().unwrap_or_default()
        })
        .y_desc(y_desc)
        .y_label_formatter(&|v| fmt_num(*v))
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let label = ("sans-serif", 11).into_font().color(&GREY);
    for (g, (_, vals)) in groups.iter().enumerate() {
        for (i, v) in vals.iter().enumerate() {
            let left = g as f64 + 0.12 + 0.39 * i as f64;
            let right = left + 0.36;
            let mode = ["cp", "ap"][i];
            match v {
                Some(v) => {
                    let top = v.clamp(y_lo, y_hi);
                    chart
                        .draw_series([Rectangle::new([(left, y_lo), (right, top)], MODE_COLOURS[i].filled())])
                        .map_err(err)?;
                    chart
                        .draw_series([EmptyElement::at((left, top))
                            + Text::new(format!("{mode} {}{unit}", fmt_num(*v)), (0, -14), label.clone())])
                        .map_err(err)?;
                }
                None => {
                    chart
                        .draw_series([
                            EmptyElement::at((left, y_lo)) + Text::new(format!("{mode} n/a"), (0, -14), label.clone())
                        ])
                        .map_err(err)?;
                }
            }
        }
    }
    Ok(())
}
