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
//!   side, in a plain-ASCII table at most 100 columns wide (long cells wrap), followed by a few
//!   sentences that say what the numbers mean for the CAP trade-off.
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
//!   a percentage (0–100). The majority/minority split uses the side of
//!   the partition the contacted node was on.
//! * In the terminal table, `n/a` means the run did not measure the figure, and `-` means the figure
//!   does not apply to that mode (e.g. LWW losses for a Raft keyspace).
//!
//! # Caveats
//!
//! * Times are what the runner recorded: history `time` is nanoseconds since the test started and
//!   the fault schedule is in seconds since the test started. If the two disagree, the shaded
//!   windows will not line up with the data.
//! * Invocations are paired by [`crate::pairing::pair`]: with the next completion of the same
//!   process, for the same operation and key. Anything that cannot be paired (nemesis events,
//!   invocations still outstanding when the history ends) is left out of the plots; the page says
//!   how many events that was. The tables come from `results.json` and are exact.
//! * Large histories are downsampled for the latency plot: points that overlap on screen are
//!   merged, then each (outcome, operation) series is thinned evenly, keeping small series (the
//!   `fail` and `info` points, usually) whole. The page states how many points it shows.
//! * The reports read the typed [`crate::results::Results`]; a figure the run could not measure
//!   (`null` in `results.json`) shows as `n/a`.
//! * All text from the run (keys, values, error messages, nemesis details) is HTML-escaped, and
//!   control and bidirectional-override characters are shown as `\u{..}` escapes.

//!
//! # Modules
//!
//! `format` holds number formats, verdict and outcome words, and escaping; `plots` the SVG plots
//! (drawn by plotters); `tables` the page skeleton and the tables of one run (HTML built with
//! maud, which escapes every inserted value); `cap` the CAP comparison rows, sentences and the
//! terminal table (comfy-table); `page` assembles the two HTML pages.

mod cap;
mod format;
mod page;
mod plots;
mod tables;
#[cfg(test)]
mod tests;

pub use cap::render_cap_terminal;
pub use page::{render_cap_html, render_run_html};
