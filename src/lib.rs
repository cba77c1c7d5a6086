//! capkv: a replicated key-value store that lets you run the CAP theorem.
//!
//! Each keyspace picks a side when it is created: `cp` keyspaces go through Raft and stay
//! linearizable, refusing service on the minority side of a partition; `ap` keyspaces accept
//! writes on every reachable node and converge by last-writer-wins (the AP path is being built).
//!
//! The library exposes the [`client`] so other programs (the Jepsen-style suite among them) can
//! drive a cluster, and the pieces of a node for tests.
#![forbid(unsafe_code)]

pub mod ap;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cp;
pub mod daemon;
pub mod error;
pub mod fault;
pub mod keyspace;
pub mod limits;
pub mod liveness;
pub mod node;
pub mod observe;
pub mod proto;
pub mod server;
pub mod storage;

pub use client::Client;
pub use error::Error;
pub use keyspace::Mode;
