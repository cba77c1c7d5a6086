//! The context of one client request as both paths see it: when it started, when the server
//! must answer on its own, and which node forwarded it (if any).
//!
//! The server builds a [`Ctx`] from the gRPC metadata: the client's `grpc-timeout` (or a default
//! when it sent none) shrunk to a share of itself, so that a refusal ("no quorum") reaches the
//! client before the client's own timer fires; and the `capkv-forwarded-from` header that a
//! follower sets when it forwards a cp request to the leader. A forward's answer names the
//! leader's client address ([`LEADER_ENDPOINT_HEADER`]); the context keeps it so the follower's
//! own answer passes it on.
//!
//! Caveats: the forwarder's id is taken from a header; peers are trusted.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::limits::{REQUEST_TIMEOUT_MS_DEFAULT, SERVER_DEADLINE_SHARE_PERCENT};

/// Metadata header naming the node that forwarded a request (peer traffic, fault-filtered).
pub const FORWARDED_FROM_HEADER: &str = "capkv-forwarded-from";

/// Response header with the client address (`HOST:PORT` of `--listen`) of the leader that served
/// a cp request, set by the leader and passed on by a follower that forwarded the request; a
/// client that has this address among its endpoints sends its next requests there.
pub const LEADER_ENDPOINT_HEADER: &str = "capkv-leader-endpoint";

/// A value of [`LEADER_ENDPOINT_HEADER`].
pub type LeaderEndpoint = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// The deadline and origin of one request.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub started: Instant,
    /// When the server answers on its own; a share of the client's timeout.
    pub deadline: Instant,
    pub forwarded_from: Option<u64>,
    /// The leader's client address as the leader's answer to a forward named it.
    pub leader_endpoint: Arc<OnceLock<LeaderEndpoint>>,
}

impl Ctx {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let metadata = request.metadata();
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let forwarded_from = metadata
            .get(FORWARDED_FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self::new(timeout, forwarded_from)
    }

    /// A context for a request with the client timeout `timeout` (None: the default).
    pub fn new(timeout: Option<Duration>, forwarded_from: Option<u64>) -> Self {
        let started = Instant::now();
        let timeout = timeout.unwrap_or(Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT));
        let budget = timeout.mul_f64(SERVER_DEADLINE_SHARE_PERCENT as f64 / 100.0);
        Self {
            started,
            deadline: started.checked_add(budget).unwrap_or(started + REQUEST_TIMEOUT_MAX),
            forwarded_from,
            leader_endpoint: Arc::default(),
        }
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The longest deadline a request can ask for; beyond it `grpc-timeout` saturates.
const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses the `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC spec allows; longer or malformed values are ignored. Saturates at a day.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout.min(REQUEST_TIMEOUT_MAX))
}

/// Parses durations such as `5s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; write e.g. 5s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{text}'; use ms, s, m or h")),
    };
    if seconds <= 0.0 || !seconds.is_finite() {
        return Err(format!("'{text}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(24 * 3600));
        for bad in ["", "x", "5d", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2500m"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999H"), Some(REQUEST_TIMEOUT_MAX));
        assert_eq!(parse_grpc_timeout("123456789S"), None, "the spec allows 8 digits");
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5s"), None);
    }

    proptest! {
        /// No header value can panic the request (it once overflowed `timeout * 80`).
        #[test]
        fn any_header_value_gives_a_bounded_deadline(text in "\\PC{0,24}") {
            let ctx = Ctx::new(parse_grpc_timeout(&text), None);
            prop_assert!(ctx.deadline <= ctx.started + REQUEST_TIMEOUT_MAX);
        }
    }
}
