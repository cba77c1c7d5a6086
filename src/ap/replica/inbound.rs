//! Serving peer messages: what this replica does when another replica calls it.
//!
//! Every request ends in a last-writer-wins merge or a read, so handling one twice is harmless.
//! Merging a peer's entries also advances this node's HLC past their timestamps, so a write made
//! here afterwards is ordered after what it has seen.
//!
//! A message another release or a bug could get wrong is checked before anything is merged: a
//! digest must have [`BUCKETS`] buckets, a fetch may name only existing buckets, and the entries
//! it carries must belong to the keyspace and buckets it names. A rejected message changes
//! nothing and is answered with an `InvalidInput` error that says what was wrong.
//!
//! CAVEATS: the sender's identity (`from`) is trusted; the fault filter checks it before a
//! message reaches this module.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::super::digest::{bucket_of, Digest, BUCKETS};
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
                check_digest(from, &keyspace, &digest)?;
                let ours = self.store.digest(&keyspace)?;
                self.note_sync(from, &keyspace, &ours, &Digest(digest));
                Ok(Response::Digest(ours.0))
            }
            Request::Fetch {
                keyspace,
                buckets,
                entries,
            } => {
                let buckets = check_fetch(from, &keyspace, &buckets, &entries)?;
                let changed = self.merge_all(&entries).await?;
                self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
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

/// A digest must cover exactly the buckets this node uses.
fn check_digest(from: u64, keyspace: &str, digest: &[u64]) -> Result<(), Error> {
    if digest.len() != BUCKETS {
        return Err(Error::InvalidInput(format!(
            "node {from} sent a digest of keyspace '{keyspace}' with {} buckets, but this node uses {BUCKETS}; are both nodes running the same capkv release?",
            digest.len()
        )));
    }
    Ok(())
}

/// A fetch names existing buckets and carries only entries of that keyspace and those buckets.
fn check_fetch(from: u64, keyspace: &str, buckets: &[u32], entries: &[Entry]) -> Result<BTreeSet<usize>, Error> {
    let bad = |what: String| {
        Err(Error::InvalidInput(format!(
            "node {from} sent a bad fetch of keyspace '{keyspace}': {what}"
        )))
    };
    let buckets: BTreeSet<usize> = buckets.iter().map(|b| *b as usize).collect();
    if let Some(b) = buckets.iter().find(|b| **b >= BUCKETS) {
        return bad(format!("bucket {b} does not exist (there are {BUCKETS})"));
    }
    for entry in entries {
        if entry.keyspace != keyspace {
            return bad(format!("it carries an entry of keyspace '{}'", entry.keyspace));
        }
        if !buckets.contains(&bucket_of(&entry.key)) {
            return bad(format!(
                "it carries key {:?}, which is in bucket {}, not one of the buckets it names",
                String::from_utf8_lossy(&entry.key),
                bucket_of(&entry.key)
            ));
        }
    }
    Ok(buckets)
}
