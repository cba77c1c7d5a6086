//! The faults a run injects, as data: what a nemesis schedules and what a fault layer applies.
//!
//! Kept apart from both so that the layers (`netns`) and the schedulers (`nemesis`) depend on it
//! and not on each other.

use serde::Serialize;

/// A concrete fault, ready for a layer to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// Network partition: `groups` as capkv's filter reads them.
    Partition {
        /// Groups of node ids; two nodes talk when some group holds both.
        groups: Vec<Vec<u64>>,
        /// Nodes that can still reach a majority of the cluster.
        majority: Vec<u64>,
        /// Nodes that cannot.
        minority: Vec<u64>,
    },
    /// SIGKILL this node, restart it at the end of the window.
    Kill {
        /// The victim.
        node: u64,
    },
    /// SIGSTOP this node, SIGCONT at the end of the window.
    Pause {
        /// The victim.
        node: u64,
    },
    /// One-way partition: packets from `from` to `to` are dropped, the other direction flows.
    PartitionOneway {
        /// The sending side whose packets are lost.
        from: Vec<u64>,
        /// The receiving side.
        to: Vec<u64>,
        /// The larger side (for availability by side).
        majority: Vec<u64>,
        /// The smaller side.
        minority: Vec<u64>,
    },
    /// `member remove` this node and kill it; at the end of the window it starts on an empty
    /// data dir with `--join` and is added back.
    Replace {
        /// The victim.
        node: u64,
    },
    /// Shift this node's clock.
    ClockSkew {
        /// The victim.
        node: u64,
        /// The offset, in ms.
        offset_ms: i64,
    },
}

impl Fault {
    /// A one-line description for humans and for `fault_schedule[].detail`.
    pub fn detail(&self) -> String {
        let show = |g: &[u64]| g.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        match self {
            Fault::Partition { groups, .. } => {
                let groups: Vec<String> = groups.iter().map(|g| format!("{{{}}}", show(g))).collect();
                format!("partition {}", groups.join(" "))
            }
            Fault::PartitionOneway { from, to, .. } => {
                format!("one-way partition {{{}}} -> {{{}}} dropped", show(from), show(to))
            }
            Fault::Kill { node } => format!("kill -9 node {node}, restart at stop"),
            Fault::Pause { node } => format!("SIGSTOP node {node}, SIGCONT at stop"),
            Fault::Replace { node } => {
                format!("member remove node {node} and kill it; at stop it rejoins with --join on an empty data dir")
            }
            Fault::ClockSkew { node, offset_ms } => format!("clock of node {node} shifted by {offset_ms:+} ms"),
        }
    }

    /// The nodes on the majority and minority side (both empty for non-partition faults).
    pub fn sides(&self) -> (Vec<u64>, Vec<u64>) {
        match self {
            Fault::Partition { majority, minority, .. } | Fault::PartitionOneway { majority, minority, .. } => {
                (majority.clone(), minority.clone())
            }
            _ => (Vec::new(), Vec::new()),
        }
    }
}
