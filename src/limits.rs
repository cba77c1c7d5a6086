//! Every limit capkv enforces, as named constants with the reason for each.
//!
//! Limits on user input are checked at the edge (the gRPC service) before anything is proposed
//! or stored, so a request over a limit costs the cluster nothing.

/// Largest key, in bytes. Keys are copied into every log entry and index; 4 KiB keeps them cheap.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest value, in bytes. A value travels in one Raft log entry; 1 MiB keeps entries well below
/// the gRPC message limit and keeps one slow write from stalling replication for everyone.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Longest keyspace name; names match `[a-z][a-z0-9_-]{0,62}`.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 63;

/// Most items one scan page returns; a client pages through larger ranges with `start_after`.
pub const SCAN_PAGE_ITEMS_MAX: usize = 1000;

/// The page size a scan request gets: what it asked for, at most [`SCAN_PAGE_ITEMS_MAX`];
/// 0 asks for a full page.
pub fn scan_page_items(requested: u32) -> usize {
    match requested as usize {
        0 => SCAN_PAGE_ITEMS_MAX,
        n => n.min(SCAN_PAGE_ITEMS_MAX),
    }
}

/// Most compares plus operations in one transaction, so one entry cannot grow without bound.
pub const TXN_OPS_MAX: usize = 128;

/// gRPC message limit on both ends. tonic's default of 4 MiB is too small for snapshot chunks
/// and batched log entries carrying 1 MiB values.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// sled's page cache per node. sled defaults to 1 GiB per database; a node must idle under
/// 100 MiB resident, and three of them must fit on a small laptop.
pub const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Raft entries per AppendEntries message; bounds one message to roughly this many values.
pub const RAFT_PAYLOAD_ENTRIES_MAX: u64 = 64;

/// Entries applied after the last snapshot before the next one is taken; the log is purged
/// up to the snapshot, so this also bounds how much log a node keeps.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 500;

/// Snapshot chunk size for InstallSnapshot; several chunks per message keep memory flat.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Default client timeout, and the server's budget when a request carries no deadline.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Share of a request's deadline the server may spend before it answers on its own, so a
/// refusal ("no quorum") reaches the client before the client's own timer fires.
pub const SERVER_DEADLINE_SHARE_PERCENT: u64 = 80;

/// Most concurrent requests a node serves per connection.
pub const GRPC_CONCURRENCY_PER_CONNECTION_MAX: usize = 256;
