//! Serving peer messages: what this replica does when another replica calls it.
//!
//! Every request ends in a last-writer-wins merge or a read, so handling one twice is harmless.
//! Merging a peer's entries also advances this node's HLC past their timestamps, so a write made
//! here afterwards is ordered after what it has seen.
//!
//! CAVEATS: the sender's identity (`from`) is trusted; the fault filter checks it before a
//! message reaches this module.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::super::digest::Digest;
use super::super::store::Entry;
use super::{Replica, Request, Response, Transport};
use crate::error::Error;

impl<T: Transport> Replica<T> {
    /// Answers a request from `from`.
    pub async fn handle(&self, from: u64, request: Request) -> Result<Response, Error> {
        match request {
            Request::Push(entries) => {
                let changed = self.merge_all(&entries).await?;
                self.stats.pushes_applied.fetch_add(changed as u64, Ordering::Relaxed);
                Ok(Response::Pushed)
            }
            Request::Digest { keyspace, digest } => {
                let ours = self.store.digest(&keyspace)?;
                self.note_sync(from, &keyspace, &ours, &Digest(digest));
                Ok(Response::Digest(ours.0))
            }
            Request::Fetch {
                keyspace,
                buckets,
                entries,
            } => {
                let changed = self.merge_all(&entries).await?;
                self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
                let buckets: BTreeSet<usize> = buckets.into_iter().map(|b| b as usize).collect();
                Ok(Response::Fetched(self.store.entries(&keyspace, Some(&buckets))?))
            }
            Request::Read { keyspace, key } => Ok(Response::Read(self.store.get(&keyspace, &key)?)),
        }
    }

    /// Merges entries from a peer; returns how many changed the store.
    pub(super) async fn merge_all(&self, entries: &[Entry]) -> Result<usize, Error> {
        let mut changed = 0;
        for entry in entries {
            self.observe(entry.versioned.version.hlc);
            if self.store.merge(entry)? {
                changed += 1;
            }
        }
        if changed > 0 {
            self.store.flush().await?;
        }
        Ok(changed)
    }
}
