//! Latency objectives in the seed's terms: "300 ms for 99.9% of requests", written `300ms@99.9`.
//!
//! A request that failed counts against the objective: it was not served within the bound. So an
//! objective is met when at least the given share of *all* requests succeeded within the bound.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::request::parse_duration;

/// A latency bound that a share of requests must meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    pub latency: Duration,
    /// Percent of requests, in (0, 100].
    pub percentile: f64,
}

impl FromStr for Slo {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "write an SLO as LATENCY@PERCENT, e.g. 300ms@99.9 (300 ms for 99.9% of requests)";
        let (latency, percentile) = text
            .split_once('@')
            .ok_or_else(|| format!("'{text}' has no '@'; {usage}"))?;
        let latency = parse_duration(latency.trim()).map_err(|e| format!("{e}; {usage}"))?;
        if latency.is_zero() {
            return Err(format!("the latency in '{text}' is zero; {usage}"));
        }
        let percentile: f64 = percentile
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("'{percentile}' is not a percentage; {usage}"))?;
        if !(percentile > 0.0 && percentile <= 100.0) {
            return Err(format!(
                "the percentage in '{text}' must be above 0 and at most 100; {usage}"
            ));
        }
        Ok(Slo { latency, percentile })
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms@{}", self.latency.as_secs_f64() * 1e3, self.percentile)
    }
}

/// The outcome of a run against an [`Slo`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// The objective as given, e.g. `300ms@99.9`.
    pub target: String,
    pub met: bool,
    /// Percent of all requests (failed ones included) that succeeded within the bound.
    pub within_percent: f64,
    /// How far the latency at the objective's percentile is over the bound, when it is.
    pub missed_by_ms: Option<f64>,
    /// One sentence, e.g. "300 ms for 99.9% of requests: met (99.98% within 300 ms)".
    pub sentence: String,
}

impl Slo {
    /// Judges a run: `ok` holds the latencies (microseconds) of successful requests, `failed`
    /// counts the requests that failed.
    pub fn judge(&self, ok: &Histogram<u64>, failed: u64) -> Verdict {
        let bound_us = self.latency.as_micros().min(u64::MAX as u128) as u64;
        let total = ok.len() + failed;
        let within = ok.count_between(0, bound_us);
        let within_percent = if total == 0 {
            0.0
        } else {
            within as f64 * 100.0 / total as f64
        };
        let head = format!(
            "{} ms for {}% of requests",
            fmt_ms(self.latency.as_secs_f64() * 1e3),
            self.percentile
        );
        if total == 0 {
            return Verdict {
                target: self.to_string(),
                met: false,
                within_percent,
                missed_by_ms: None,
                sentence: format!("{head}: missed (no request completed)"),
            };
        }
        // The request at the objective's rank, counting failures as slower than any success.
        let rank = ((self.percentile / 100.0) * total as f64).ceil().max(1.0) as u64;
        let met = within >= rank;
        let (missed_by_ms, detail) = if met {
            (
                None,
                format!(
                    "met ({within_percent:.3}% within {} ms)",
                    fmt_ms(self.latency.as_secs_f64() * 1e3)
                ),
            )
        } else if rank > ok.len() {
            (
                None,
                format!(
                    "missed: {failed} of {total} requests failed, more than the {:.3}% allowed",
                    100.0 - self.percentile
                ),
            )
        } else {
            let at_rank_ms = ok.value_at_quantile(rank as f64 / ok.len() as f64) as f64 / 1e3;
            let over = at_rank_ms - self.latency.as_secs_f64() * 1e3;
            (
                Some(over),
                format!(
                    "missed by {} ms ({within_percent:.3}% within the bound; the {}th percentile took {} ms)",
                    fmt_ms(over),
                    self.percentile,
                    fmt_ms(at_rank_ms)
                ),
            )
        };
        Verdict {
            target: self.to_string(),
            met,
            within_percent,
            missed_by_ms,
            sentence: format!("{head}: {detail}"),
        }
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latencies_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for l in latencies_us {
            h.record(*l).unwrap();
        }
        h
    }

    #[test]
    fn parses_the_seed_form_and_refuses_the_rest() {
        let slo: Slo = "300ms@99.9".parse().unwrap();
        assert_eq!(slo.latency, Duration::from_millis(300));
        assert_eq!(slo.percentile, 99.9);
        assert_eq!("1s@99%".parse::<Slo>().unwrap().percentile, 99.0);
        for bad in ["300ms", "300ms@0", "300ms@101", "0ms@99", "abc@99", "300ms@x"] {
            let err = bad.parse::<Slo>().unwrap_err();
            assert!(err.contains("LATENCY@PERCENT"), "{bad}: {err}");
        }
    }

    #[test]
    fn met_when_enough_requests_are_within_the_bound() {
        let slo: Slo = "10ms@99".parse().unwrap();
        // 99 fast requests and one slow: exactly 99% within 10 ms.
        let mut l = vec![1_000; 99];
        l.push(50_000);
        let v = slo.judge(&histogram(&l), 0);
        assert!(v.met, "{v:?}");
        assert!(
            v.sentence.contains("10.00 ms for 99% of requests: met"),
            "{}",
            v.sentence
        );
    }

    #[test]
    fn missed_by_says_how_far_over() {
        let slo: Slo = "10ms@99".parse().unwrap();
        let mut l = vec![1_000; 90];
        l.extend([25_000; 10]);
        let v = slo.judge(&histogram(&l), 0);
        assert!(!v.met);
        let over = v.missed_by_ms.unwrap();
        assert!((over - 15.0).abs() < 0.1, "{over}");
        assert!(v.sentence.contains("missed by 15.0"), "{}", v.sentence);
    }

    #[test]
    fn failures_count_against_the_objective() {
        let slo: Slo = "10ms@99".parse().unwrap();
        let v = slo.judge(&histogram(&[1_000; 98]), 2);
        assert!(!v.met);
        assert!(v.sentence.contains("2 of 100 requests failed"), "{}", v.sentence);
        assert!(!slo.judge(&histogram(&[]), 0).met);
    }
}
