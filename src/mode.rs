//! The two sides of the CAP trade-off a keyspace can take.
//!
//! A keyspace's mode is fixed when it is created: `cp` keyspaces go through Raft and stay
//! linearizable, `ap` keyspaces stay writable on every side of a partition and converge by
//! last-writer-wins. This file holds only the name of the choice; what each mode does lives in
//! `cp/` and `ap/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which side of the CAP trade-off a keyspace takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Consistent under partitions: Raft, linearizable, the minority refuses.
    Cp,
    /// Available under partitions: every node accepts writes, replicas converge by LWW.
    Ap,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cp => "cp",
            Mode::Ap => "ap",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is neither `cp` nor `ap`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mode '{0}' is not known; use 'cp' (Raft, linearizable) or 'ap' (always writable, last-writer-wins)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "cp" => Ok(Mode::Cp),
            "ap" => Ok(Mode::Ap),
            other => Err(UnknownMode(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("cp".parse::<Mode>().unwrap(), Mode::Cp);
        assert_eq!("ap".parse::<Mode>().unwrap(), Mode::Ap);
        assert!("CP"
            .parse::<Mode>()
            .unwrap_err()
            .to_string()
            .contains("'CP' is not known"));
        assert_eq!(Mode::Ap.to_string(), "ap");
    }
}
