//! Anti-entropy: compare bucket digests with a peer, exchange the entries of differing buckets
//! both ways, merge by last-writer-wins on each side.
//!
//! One exchange of a keyspace costs one digest message (2 KiB) when the replicas agree. When
//! they differ, the differing buckets go in chunks of [`FETCH_BUCKETS_MAX`], so a message stays
//! small however far the replicas drifted. Each exchange also records which buckets the peer
//! was seen holding exactly as we do; tombstone collection ([`super::tombstones`]) relies on it.
//!
//! CAVEATS: a digest is computed by scanning the keyspace; a round with `fanout` peers costs
//! `fanout` scans per keyspace.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::digest::Digest;
use super::{PeerError, Replica, Request, Response, Transport};

/// Buckets exchanged in one anti-entropy fetch: about 40 keys each at 10,000 keys per keyspace.
pub const FETCH_BUCKETS_MAX: usize = 16;

/// What one anti-entropy exchange found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Buckets whose digests differed (0: the two replicas held the same keyspace).
    pub differing_buckets: usize,
    /// Keys this replica changed by merging the peer's entries.
    pub repaired_here: usize,
}

impl<T: Transport> Replica<T> {
    /// Records which buckets a peer holds exactly as we do.
    pub(super) fn note_sync(&self, peer: u64, keyspace: &str, ours: &Digest, theirs: &Digest) {
        let differing: BTreeSet<usize> = ours.differing(theirs).into_iter().collect();
        let mut in_sync = self.in_sync.lock().expect("sync lock is never poisoned");
        for (bucket, digest) in ours.0.iter().enumerate() {
            if !differing.contains(&bucket) {
                in_sync.insert((peer, keyspace.to_string(), bucket), *digest);
            }
        }
    }

    /// One anti-entropy exchange of `keyspace` with `peer`.
    pub async fn anti_entropy(&self, peer: u64, keyspace: &str) -> Result<Exchange, PeerError> {
        let ours = self.store.digest(keyspace)?;
        let request = Request::Digest {
            keyspace: keyspace.to_string(),
            digest: ours.0.clone(),
        };
        let theirs = match self.call(peer, request).await? {
            Response::Digest(theirs) => theirs,
            other => return Err(PeerError::unexpected(peer, "digest", &other)),
        };
        self.note_sync(peer, keyspace, &ours, &Digest(theirs.clone()));
        let differing = ours.differing(&Digest(theirs));
        if differing.is_empty() {
            return Ok(Exchange::default());
        }
        let mut repaired = 0;
        // A few buckets per exchange, so one message stays small however far replicas drifted.
        for chunk in differing.chunks(FETCH_BUCKETS_MAX) {
            let buckets: BTreeSet<usize> = chunk.iter().copied().collect();
            let entries = self.store.entries(keyspace, Some(&buckets))?;
            let request = Request::Fetch {
                keyspace: keyspace.to_string(),
                buckets: chunk.iter().map(|b| *b as u32).collect(),
                entries,
            };
            let theirs = match self.call(peer, request).await? {
                Response::Fetched(theirs) => theirs,
                other => return Err(PeerError::unexpected(peer, "fetch", &other)),
            };
            let changed = self.merge_all(&theirs).await?;
            self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
            repaired += changed;
        }
        Ok(Exchange {
            differing_buckets: differing.len(),
            repaired_here: repaired,
        })
    }

    /// One call to `peer` with the push timeout.
    async fn call(&self, peer: u64, request: Request) -> Result<Response, PeerError> {
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        (self.transport.call(peer, request, timeout).await).map_err(PeerError::unreachable(peer))
    }

    /// One anti-entropy round over `keyspaces` with the given peers; true when all were in sync.
    pub async fn anti_entropy_round(&self, peers: &[u64], keyspaces: &[String]) -> bool {
        let mut in_sync = true;
        for peer in peers {
            for keyspace in keyspaces {
                match self.anti_entropy(*peer, keyspace).await {
                    Ok(Exchange {
                        differing_buckets: 0, ..
                    }) => {}
                    Ok(_) => in_sync = false,
                    Err(e) => {
                        match &e {
                            PeerError::Unreachable { .. } => tracing::debug!(keyspace, "anti-entropy failed: {e}"),
                            PeerError::UnexpectedAnswer { .. } => tracing::warn!(keyspace, "anti-entropy failed: {e}"),
                            PeerError::Local(_) => tracing::error!(keyspace, "anti-entropy failed: {e}"),
                        }
                        in_sync = false;
                    }
                }
            }
        }
        self.stats.anti_entropy_rounds.fetch_add(1, Ordering::Relaxed);
        if in_sync && !peers.is_empty() {
            self.stats.last_in_sync_ms.store(self.wall_ms(), Ordering::Relaxed);
        }
        in_sync
    }
}
