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
/// A page also ends at [`SCAN_PAGE_BYTES_MAX`].
pub const SCAN_PAGE_ITEMS_MAX: usize = 1000;

/// The page size a scan request gets: what it asked for, at most [`SCAN_PAGE_ITEMS_MAX`];
/// 0 asks for a full page.
pub fn scan_page_items(requested: u32) -> usize {
    match requested as usize {
        0 => SCAN_PAGE_ITEMS_MAX,
        n => n.min(SCAN_PAGE_ITEMS_MAX),
    }
}

/// What is left of one scan page: items and bytes. The first item always fits, so a page
/// makes progress whatever the value sizes.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    items_left: usize,
    bytes_left: usize,
    taken: usize,
}

impl PageBudget {
    /// A page of at most `items` items (see [`scan_page_items`]) and [`SCAN_PAGE_BYTES_MAX`].
    pub fn new(items: usize) -> Self {
        Self {
            items_left: items,
            bytes_left: SCAN_PAGE_BYTES_MAX,
            taken: 0,
        }
    }

    /// Takes one item of `bytes` into the page; false when the page is full without it.
    pub fn take(&mut self, bytes: usize) -> bool {
        if self.items_left == 0 || (self.taken > 0 && bytes > self.bytes_left) {
            return false;
        }
        self.items_left -= 1;
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
        self.taken += 1;
        true
    }
}

/// Most compares plus operations in one transaction, so one entry cannot grow without bound.
pub const TXN_OPS_MAX: usize = 128;

/// Largest request the public API decodes: a put of a 1 MiB value with its key, or a
/// transaction up to [`TXN_BYTES_MAX`], with room for framing. Anything larger is refused before
/// it is decoded (etcd's `--max-request-bytes` default is 1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most key and value bytes one transaction carries (compares and operations together), so
/// every valid transaction fits [`REQUEST_BYTES_MAX`] and one Raft entry stays small.
pub const TXN_BYTES_MAX: usize = REQUEST_BYTES_MAX - 64 * 1024;

/// Largest response the public API encodes, and what clients (and nodes forwarding a request
/// to the leader) accept: a transaction of [`TXN_OPS_MAX`] gets of 1 MiB values with their keys.
pub const RESPONSE_BYTES_MAX: usize = 160 * 1024 * 1024;

/// Bytes of keys and values in one scan page (at least one item always fits), so a page of
/// large values stays far below [`RESPONSE_BYTES_MAX`]; the client pages through the rest.
pub const SCAN_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest message between nodes (peer API, both directions): a Raft batch of at most
/// [`RAFT_MESSAGE_BYTES_MAX`], snapshot chunks, AP pushes and repair batches, with headroom.
pub const PEER_MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Encoded bytes of ap entries in one hint batch or one anti-entropy repair page (each way).
/// One entry always fits, so a message stays under [`PEER_MESSAGE_BYTES_MAX`] whatever the value
/// sizes; what does not fit goes in the next batch or page.
pub const AP_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

const _: () = assert!(AP_BATCH_BYTES_MAX + VALUE_BYTES_MAX + KEY_BYTES_MAX + 64 * 1024 < PEER_MESSAGE_BYTES_MAX);

/// Default bound on the encoded bytes of hints queued for one peer (`--hints-bytes-max`):
/// past it, writes for that peer are not hinted (counted) and anti-entropy repairs them.
pub const HINTS_BYTES_PER_PEER_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Encoded bytes of entries in one AppendEntries message: a batch over it is split (openraft
/// retries with fewer entries). openraft gives an AppendEntries one heartbeat interval, so a
/// message must be sent, decoded and made durable on the follower well within that.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

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

/// Largest Raft snapshot a node receives (InstallSnapshot: a chunk's offset plus its length).
/// openraft writes each chunk at the offset the sender names into a file on this node's disk
/// (`begin_receiving_snapshot`), so without a bound one message with an offset near 2^64 makes
/// a sparse file of exabytes or fails deep in the file system, and a stream of chunks fills the
/// disk. A snapshot holds a node's whole cp state in sled; capkv's nodes are meant for data
/// that fits one laptop's sled database, so 64 GiB is far above any snapshot a node builds
/// while it still stops absurd offsets before they reach the disk.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Default client timeout, and the server's budget when a request carries no deadline.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Share of a request's deadline the server may spend before it answers on its own, so a
/// refusal ("no quorum") reaches the client before the client's own timer fires.
pub const SERVER_DEADLINE_SHARE_PERCENT: u64 = 80;

/// Most concurrent requests a node serves per connection.
pub const GRPC_CONCURRENCY_PER_CONNECTION_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_items_or_bytes_but_always_take_one() {
        let mut page = PageBudget::new(3);
        assert!(page.take(1) && page.take(1) && page.take(1));
        assert!(!page.take(1), "three items fill a page of three");
        let mut page = PageBudget::new(1000);
        let mib = 1024 * 1024;
        let taken = (0..100).take_while(|_| page.take(mib)).count();
        assert_eq!(taken, SCAN_PAGE_BYTES_MAX / mib, "1 MiB values fill a page by bytes");
        let mut page = PageBudget::new(10);
        assert!(
            page.take(SCAN_PAGE_BYTES_MAX * 2),
            "one oversized item still makes progress"
        );
        assert!(!page.take(1));
    }
}
