//! capkv: a replicated key-value store that lets you run the CAP theorem.
//!
//! Each keyspace picks a side when it is created: `cp` keyspaces go through Raft and stay
//! linearizable, refusing service on the minority side of a partition; `ap` keyspaces accept
//! writes on every reachable node and converge by last-writer-wins on hybrid logical clocks.
//!
//! # A map of the crate, in the order a request meets it
//!
//! - [`cli`]: the `capkv` command line (server, local cluster, client), and [`client`]: the
//!   client library it uses, with endpoint failover and exit-code classification. [`cluster`]
//!   starts and stops a local cluster of node processes.
//! - [`server`]: a node's gRPC services and HTTP endpoints. The `Kv` service checks a request's
//!   input, looks up the keyspace's [`mode`], and dispatches to one of the two implementations of
//!   [`kv::KvPath`], with the request's deadline and origin in a [`request::Ctx`]:
//!   - [`cp`]: the CP path. Routing (here, the leader, or "no quorum"), forwarding, proposals to
//!     the Raft group (openraft), its log store, state machine, network and watchdog, and
//!     membership changes at the leader ([`cp::members`]).
//!   - [`ap`]: the AP path. Hybrid logical clocks, last-writer-wins versions, the replica (one
//!     module per concern: writes, hints, anti-entropy, quorum reads, tombstones, inbound), the
//!     repair loop ([`ap::repair`]), and its store.
//! - [`node`]: one running node: opens [`storage`] (sled, group commit), starts both paths, the
//!   servers and the background tasks, and stops them in order; [`node::membership`] hands
//!   membership changes to liveness and the ap replica, and joins a running cluster.
//! - Shared by both paths: [`liveness`] (which peers this node hears, and may reach),
//!   [`fault`] (the partition filter every peer message passes, and the node's clock skew), [`net`] (peer connections),
//!   [`keyspace`] (definitions and input validation), [`limits`], and [`error`] (errors named
//!   for what the caller does next, mapped to gRPC statuses and exit codes in one place).
//! - [`observe`]: metrics, health and logs.
//! - [`backup`]: backups of keyspaces to `file://` and `s3://`, verify and restore.
//!
//! `docs/ARCHITECTURE.md` walks a cp put and an ap put through these modules and says where
//! each guarantee is implemented and tested.
#![forbid(unsafe_code)]

pub mod ap;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cp;
pub mod error;
pub mod fault;
pub mod keyspace;
pub mod kv;
pub mod limits;
pub mod liveness;
pub mod mode;
pub mod net;
pub mod node;
pub mod observe;
pub mod proto;
pub mod request;
pub mod server;
pub mod storage;
pub mod tls;

pub use client::Client;
pub use error::Error;
pub use mode::Mode;
