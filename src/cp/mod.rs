//! The CP path: one Raft group (openraft) that carries cluster metadata and every cp keyspace.
//!
//! DESIGN
//!
//! A cp request reaches [`kv`] (data) or [`keyspaces`] (metadata) through the public services.
//! [`route`] decides where it runs: here when this node leads and a majority acknowledged it
//! lately (check-quorum), at the leader when one is known and reachable ([`forward`]; a forward
//! that could not be sent is routed again, to the next leader), or nowhere ("no quorum") when no
//! leader shows up before the request's deadline (within about one election when this node
//! hears no majority and so cannot help elect one). A write becomes a
//! [`command::Command`] in the Raft log ([`propose`]); the leader replicates it over
//! [`network`] to a majority, each of which makes it durable in its [`log_store`] before
//! answering; then every node applies it with the pure [`apply`] function to its
//! [`state_machine`], and the proposer gets the command's own typed answer. Linearizable reads
//! pass `ensure_linearizable()` (ReadIndex: the leader confirms with a majority that it still
//! leads, then waits until it has applied everything committed) and then read the local state
//! machine. [`raft`] starts the group and bootstraps a fresh cluster; the [`watchdog`] keeps
//! elections live and stands in for pre-vote. [`path::Cp`] is the handle the services hold.
//!
//! GUARANTEES
//!
//! - Writes, CAS, transactions and default reads are linearizable.
//! - A write is acknowledged only after a majority has it in its log on disk.
//! - A node without a majority refuses (no quorum) instead of serving stale data. A leader that
//!   loses its majority notices it (check-quorum, from `millis_since_quorum_ack`) and refuses new
//!   writes; writes it had already proposed answer "outcome unknown".
//! - "Definitely not applied" (exit 3) only for requests that never reached a leader's log: a
//!   forward or client connection that could not be opened, a refusal before proposing.
//! - A write with a request id is applied at most once per id while its client's session lives
//!   ([`session`]): a retry gets the first answer.
//!
//! CAVEATS
//!
//! - One Raft group for everything: throughput is bounded by one leader. Peer messages carry a
//!   group id so multi-raft can come later.
//! - openraft 0.9 has no pre-vote; the watchdog's stand-in keeps a node that hears no majority
//!   from campaigning, and keeps it from campaigning for one election timeout after it hears a
//!   majority again (so the leader's heartbeat reaches a healed node first). A node whose leader
//!   stays unreachable to it alone for longer than that still campaigns.
//! - Failover waits out the voters' leader lease (the maximum election timeout): under a second
//!   when the old leader's process is gone, lease plus a random election timeout (about
//!   1.0-1.5 s) when it is only cut off ([`raft::RaftOptions`], [`watchdog`]).
//! - A follower whose leader answers its pings never campaigns, however slow its AppendEntries.
//! - Membership changes one at a time ([`members`]), each through openraft's joint consensus;
//!   a new node votes only once it caught up as a learner.

pub mod apply;
pub mod batch;
pub mod command;
pub mod forward;
pub mod keys;
pub mod keyspaces;
pub mod kv;
pub mod log_store;
pub mod members;
pub mod network;
pub mod path;
pub mod propose;
pub mod raft;
pub mod read_index;
pub mod route;
pub mod session;
mod snapshot;
pub mod state_machine;
pub mod watchdog;

#[cfg(test)]
mod suite_test;

openraft::declare_raft_types!(
    /// The openraft type configuration of capkv's Raft group.
    pub TypeConfig:
        D = command::Command,
        R = command::Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// The only Raft group today: metadata and all cp keyspaces.
pub const GROUP_ID: u64 = 0;
