//! The messages replicas exchange, and the [`Transport`] that carries them.
//!
//! Four requests make the whole protocol: `Push` (writes, from a coordinator or a hint queue),
//! `Digest` (hashes of some nodes of one level of a keyspace's hash tree, answered with the
//! receiver's), `Fetch` (one
//! page of the sender's entries of differing buckets, answered with a page of the receiver's), and `Read` (one key,
//! for quorum reads). Every handler merges by last-writer-wins, so a message delivered twice or
//! late changes nothing.
//!
//! The transport is injected: gRPC between real nodes, an in-memory network in the seeded
//! simulation and the unit tests.
//!
//! A replica that drives an exchange (anti-entropy, hint delivery) reports a [`PeerError`], which
//! keeps three failures apart: the peer gave no answer ([`Unreachable`]), the peer answered with
//! the wrong message (a protocol bug), or this node's own store failed (never mistaken for the
//! network).
//!
//! CAVEATS: a [`Unreachable`] means only "no usable answer": the request may still have been
//! applied by the peer. That is harmless here because every request is idempotent.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::store::Entry;
use super::super::version::Versioned;
use crate::error::Error;

/// A request from one replica to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Push(Vec<Entry>),
    /// The sender's hashes of some `nodes` of one `level` of its hash tree (level 0: the root),
    /// and, at the root, its acknowledged tombstone horizon; answered with the receiver's.
    Digest {
        keyspace: String,
        level: u32,
        nodes: Vec<u32>,
        hashes: Vec<u64>,
        horizon: u64,
    },
    /// The sender's entries of the differing buckets with keys in (`after`, `upto`] (unbounded
    /// when `None`); the answer carries the receiver's entries of the same range, as far as
    /// one page goes.
    Fetch {
        keyspace: String,
        buckets: Vec<u32>,
        after: Option<Vec<u8>>,
        upto: Option<Vec<u8>>,
        entries: Vec<Entry>,
    },
    Read {
        keyspace: String,
        key: Vec<u8>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Pushed,
    /// The receiver's hashes of the same nodes and, at the root, its acknowledged tombstone
    /// horizon and whether it is delivering a hint backlog to the sender (then the sender
    /// defers the exchange until the delivery ends: the hints bring the writes it missed).
    Digest {
        hashes: Vec<u64>,
        horizon: u64,
        hints_pending: bool,
    },
    /// The receiver's entries; `truncated_at` is the last key of a page that ended before the
    /// range did (the next fetch continues after it). With `hints_pending` the receiver began
    /// delivering a hint backlog to the sender meanwhile, sent no entries, and the sender stops
    /// the exchange.
    Fetched {
        entries: Vec<Entry>,
        truncated_at: Option<Vec<u8>>,
        hints_pending: bool,
    },
    Read(Option<Versioned>),
}

impl Response {
    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Pushed => "pushed",
            Response::Digest { .. } => "digest",
            Response::Fetched { .. } => "fetched",
            Response::Read(_) => "read",
        }
    }
}

/// A message that got no answer: lost, refused, or the peer is down.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Why an exchange this replica drove with a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No usable answer; the next round tries again.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: u64, reason: Unreachable },
    /// The peer answered with the wrong message: the two nodes do not speak the same protocol.
    #[error("node {peer} answered a {asked} request with a {answered} message; are both nodes running the same capkv release?")]
    UnexpectedAnswer {
        peer: u64,
        asked: &'static str,
        answered: &'static str,
    },
    /// This node's own store failed; not a network problem.
    #[error(transparent)]
    Local(#[from] Error),
}

impl PeerError {
    pub fn unreachable(peer: u64) -> impl FnOnce(Unreachable) -> PeerError {
        move |reason| PeerError::Unreachable { peer, reason }
    }

    pub fn unexpected(peer: u64, asked: &'static str, answer: &Response) -> PeerError {
        PeerError::UnexpectedAnswer {
            peer,
            asked,
            answered: answer.name(),
        }
    }
}

/// How replicas reach each other.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: u64,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, Unreachable>> + Send;
}
