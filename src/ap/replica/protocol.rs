//! The messages replicas exchange, and the [`Transport`] that carries them.
//!
//! Four requests make the whole protocol: `Push` (writes, from a coordinator or a hint queue),
//! `Digest` (one keyspace's bucket digests, answered with the receiver's), `Fetch` (the
//! sender's entries of differing buckets, answered with the receiver's), and `Read` (one key,
//! for quorum reads). Every handler merges by last-writer-wins, so a message delivered twice or
//! late changes nothing.
//!
//! The transport is injected: gRPC between real nodes, an in-memory network in the seeded
//! simulation and the unit tests.
//!
//! CAVEATS: a [`Unreachable`] means only "no usable answer": the request may still have been
//! applied by the peer. That is harmless here because every request is idempotent.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::store::Entry;
use super::super::version::Versioned;

/// A request from one replica to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Push(Vec<Entry>),
    Digest {
        keyspace: String,
        digest: Vec<u64>,
    },
    /// The sender's entries of the differing buckets; the answer carries the receiver's.
    Fetch {
        keyspace: String,
        buckets: Vec<u32>,
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
    Digest(Vec<u64>),
    Fetched(Vec<Entry>),
    Read(Option<Versioned>),
}

/// A message that got no answer: lost, refused, or the peer is down.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

/// How replicas reach each other.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: u64,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, Unreachable>> + Send;
}
