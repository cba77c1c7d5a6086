//! The CP path: one Raft group (openraft) that carries cluster metadata and every cp keyspace.
//!
//! DESIGN
//!
//! A cp request becomes a [`command::Command`] in the Raft log. The leader appends it, replicates
//! it to a majority (each of which flushes it to disk before answering), then applies it to the
//! state machine and answers the client with the [`command::Outcome`]. Linearizable reads go
//! through `ensure_linearizable()` (ReadIndex: the leader confirms with a majority that it still
//! leads, then waits until the state machine has applied up to its commit index), then read the
//! local state machine. A follower forwards cp requests to the leader.
//!
//! GUARANTEES
//!
//! - Writes, CAS, transactions and default reads are linearizable.
//! - A write is acknowledged only after a majority has it on disk.
//! - A node without a majority refuses (no quorum) instead of serving stale data. A leader that
//!   loses its majority notices it (check-quorum, from `millis_since_quorum_ack`) and refuses new
//!   writes; writes it had already proposed answer "outcome unknown".
//!
//! CAVEATS
//!
//! - One Raft group for everything: throughput is bounded by one leader. Peer messages carry a
//!   group id so multi-raft can come later.
//! - openraft 0.9 has no pre-vote: a node that was partitioned comes back with a higher term and
//!   forces one extra election (about one election timeout of unavailability after a heal).
//! - Membership is static (`--peers`); adding and removing members at run time comes later.

pub mod command;
pub mod network;
pub mod raft_node;

use std::io::Cursor;

pub use command::{Command, Outcome};

openraft::declare_raft_types!(
    /// The openraft type configuration of capkv's Raft group.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// The only Raft group today: metadata and all cp keyspaces.
pub const GROUP_ID: u64 = 0;
