//! Text for humans: number formats, the verdict and outcome words and colours, and escaping.

use std::fmt::Write as _;

use crate::linearizability::Validity;
use crate::pairing::Outcome;

/// What a missing figure is shown as.
pub(super) const NA: &str = "n/a";
/// What a figure that does not apply to a mode is shown as, in the CAP table.
pub(super) const NOT_APPLICABLE: &str = "-";

/// A number with at most three decimals, without trailing zeros.
pub(super) fn fmt_num(x: f64) -> String {
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

pub(super) fn fmt_pct(x: Option<f64>) -> String {
    match x {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}%"),
        Some(x) => format!("{x:.1}%"),
        None => NA.to_owned(),
    }
}

pub(super) fn fmt_secs(x: Option<f64>) -> String {
    x.map_or_else(|| NA.to_owned(), |x| format!("{} s", fmt_num(x)))
}

pub(super) fn fmt_ms(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => NA.to_owned(),
    }
}

/// `part` as a percentage of `whole`, when both are known and `whole > 0`.
pub(super) fn ratio_pct(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some(100.0 * p / w),
        _ => None,
    }
}

/// Sort key for node ids: numerically when they are numbers.
pub(super) fn node_rank(name: &str) -> (u64, String) {
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
pub(super) fn esc(s: &str) -> String {
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

/// Shows control and bidirectional-override characters as `\u{..}` escapes, which could hide or
/// reorder text; HTML escaping is left to the template engine.
pub(super) fn visible(s: &str) -> String {
    if !s.chars().any(is_suspicious) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_suspicious(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes text safe for a terminal: one line, no control characters.
pub(super) fn plain(s: &str) -> String {
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

/// The verdict's CSS class; never derived from user data.
pub(super) fn verdict_class(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    }
}

/// The verdict as shown in badges and tables.
pub(super) fn verdict_word(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "valid",
        Validity::Invalid => "INVALID",
        Validity::Unknown => "unknown",
    }
}

/// The outcomes of completed operations, in legend order.
pub(super) const OUTCOMES: [Outcome; 3] = [Outcome::Ok, Outcome::Fail, Outcome::Unknown];

/// `ok`, `fail` or `info` (a completed operation of unknown outcome completed `info`).
pub(super) fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Unknown => "info",
    }
}

/// The legend text of an outcome.
pub(super) fn outcome_legend(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Unknown => "info (unknown)",
    }
}

/// An optional count, or `n/a`.
pub(super) fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or_else(|| NA.to_owned(), |x| x.to_string())
}

/// Node ids as a list, `none` when empty.
pub(super) fn node_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}
