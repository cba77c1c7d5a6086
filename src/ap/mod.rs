//! The AP path: keyspaces that stay writable on every side of a partition and converge by
//! last-writer-wins on hybrid logical clocks.
//!
//! DESIGN
//!
//! Every node holds every key of every ap keyspace. A write is stamped by the node that receives
//! it ([`hlc`]), stored durably, acknowledged, and pushed to the peers; peers that cannot be
//! reached get hints, delivered when they return; anti-entropy rounds compare hash trees
//! ([`digest`]) and repair whatever push and hints missed ([`replica`], driven by [`repair`]). Merge is last-writer-wins
//! on (timestamp, node id) ([`version`]). AP operations never wait on Raft: the keyspace's mode is
//! read from the node's local copy of the metadata.
//!
//! GUARANTEES
//!
//! - Any node that a client reaches accepts writes, even alone.
//! - An acknowledged write is on the coordinator's disk (with `--acks N`, on N replicas' disks).
//! - After a partition heals, all replicas converge to the same value per key: the write with the
//!   highest (HLC timestamp, node id). A delete wins over older writes and does not come back.
//!
//! NOT PROMISED
//!
//! - Of two concurrent writes to one key, one is lost (last writer wins), and the "last" is by
//!   timestamp, so a node whose clock runs ahead wins more often.
//! - Read-your-writes holds only on the node that took the write; other nodes may lag until push,
//!   hints or anti-entropy reach them. `--consistency quorum` reads the newest of a majority.
//! - No compare-and-swap, transactions or linearizable reads: those need a cp keyspace.

pub mod digest;
pub mod hlc;
pub mod kv;
pub mod path;
pub mod repair;
pub mod replica;
pub mod store;
pub mod transport;
pub mod version;

#[cfg(test)]
mod sim_test;
