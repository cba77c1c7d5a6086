//! What a run is asked to do ([`RunOptions`]), checked before anything starts, and the UTC
//! timestamps that name runs.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::cluster::NodeBinary;
use crate::layer::Layer;
use crate::nemesis::NemesisKind;
use crate::workload::Workload;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `cp` or `ap`.
    pub mode: &'static str,
    /// The workload.
    pub workload: Workload,
    /// The nemesis.
    pub nemesis: NemesisKind,
    /// Seconds of client traffic.
    pub time_limit_s: u64,
    /// The seed of the schedule, shapes and client choices.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Client tasks.
    pub concurrency: usize,
    /// Where runs are stored.
    pub store: PathBuf,
    /// How nodes are started.
    pub binary: NodeBinary,
    /// The fault layer (resolved; see [`crate::layer::resolve`]).
    pub layer: Layer,
    /// Why this layer (recorded in `results.json`).
    pub layer_reason: String,
}

impl RunOptions {
    /// The test's name, e.g. `cp-register-partition-halves`.
    pub fn test_name(&self) -> String {
        format!("{}-{}-{}", self.mode, self.workload.name(), self.nemesis.name())
    }

    /// Checks the combination before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = self.nemesis.refusal_on(self.mode, self.layer) {
            return Err(why);
        }
        if self.workload == Workload::Bank && self.mode != "cp" {
            return Err("the bank workload needs transactions, which only cp keyspaces offer; use --mode cp".into());
        }
        if self.nodes < 3 {
            return Err("--nodes must be at least 3 (a partition needs a majority and a minority)".into());
        }
        if self.concurrency == 0 || self.time_limit_s == 0 {
            return Err("--concurrency and --time-limit must be positive".into());
        }
        Ok(())
    }
}

/// Formats a `SystemTime` as UTC `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(utc(t), "2024-02-29T23:59:59Z");
    }
}
