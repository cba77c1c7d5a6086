//! Serving peer messages: what this replica does when another replica calls it.
//!
//! Every request ends in a last-writer-wins merge or a read, so handling one twice is harmless.
//! Merging a peer's entries also advances this node's HLC past their timestamps, so a write made
//! here afterwards is ordered after what it has seen.
//!
//! A message another release or a bug could get wrong is checked before anything is merged: a
//! digest must name existing nodes of one level of the hash tree with one hash each, a fetch may
//! name only existing buckets (of [`BUCKETS`]), and the entries it carries must belong to the
//! keyspace, buckets and key range it names. A rejected message changes
//! nothing and is answered with an `InvalidInput` error that says what was wrong.
//!
//! Every timestamp a message carries is checked against the clock bound before anything is
//! merged: one more than `max_clock_offset_ms` ahead of this node's clock refuses the whole
//! message (counted in `clock_refusals`, logged), so a bad clock or a bad message cannot drag
//! this node's clock ahead or plant a version no local write could ever overwrite.
//!
//! CAVEATS: the sender's identity (`from`) is trusted; the fault filter checks it before a
//! message reaches this module.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::super::digest::{bucket_of, BUCKETS, DEPTH};
use super::super::store::{leaf_cursor, Entry};
use super::anti_entropy::TREE_NODES_PER_MESSAGE;
use super::{Replica, Request, Response, Transport};
use crate::error::Error;
use crate::limits::AP_BATCH_BYTES_MAX;

impl<T: Transport> Replica<T> {
    /// Answers a request from `from`.
    pub async fn handle(&self, from: u64, request: Request) -> Result<Response, Error> {
        match request {
            Request::Push(entries) => {
                let changed = self.merge_all(from, &entries).await?;
                self.stats.pushes_applied.fetch_add(changed as u64, Ordering::Relaxed);
                Ok(Response::Pushed)
            }
            Request::Digest {
                keyspace,
                level,
                nodes,
                hashes,
                horizon,
            } => {
                check_digest(from, &keyspace, level, &nodes, &hashes)?;
                let ours = self.store.tree_hashes(&keyspace, level as usize, &nodes)?.ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "node {from} asked for nodes of level {level} of the hash tree of '{keyspace}' that do not exist; are both nodes running the same capkv release?"
                    ))
                })?;
                if level > 0 {
                    return Ok(Response::Digest {
                        hashes: ours,
                        horizon: 0,
                        hints_pending: false,
                    });
                }
                let mine = self.acknowledged_horizon(&keyspace);
                self.note_exchange(from, &keyspace, ours == hashes, horizon);
                Ok(Response::Digest {
                    hashes: ours,
                    horizon: mine,
                    hints_pending: self.is_delivering_hints(from),
                })
            }
            Request::Fetch {
                keyspace,
                buckets,
                after,
                upto,
                entries,
            } => {
                let range = (after.as_deref(), upto.as_deref());
                let buckets = check_fetch(from, &keyspace, &buckets, range, &entries)?;
                let changed = self.merge_all(from, &entries).await?;
                self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
                if self.is_delivering_hints(from) {
                    return Ok(Response::Fetched {
                        entries: Vec::new(),
                        truncated_at: None,
                        hints_pending: true,
                    });
                }
                let (entries, truncated_at) =
                    self.store
                        .leaf_page(&keyspace, &buckets, range.0, range.1, AP_BATCH_BYTES_MAX)?;
                Ok(Response::Fetched {
                    entries,
                    truncated_at,
                    hints_pending: false,
                })
            }
            Request::Read { keyspace, key } => Ok(Response::Read(self.store.get(&keyspace, &key)?)),
        }
    }

    /// Merges entries from a peer; returns how many changed the store. Refuses them all, and
    /// merges nothing, when one carries a timestamp beyond the clock bound.
    pub(super) async fn merge_all(&self, from: u64, entries: &[Entry]) -> Result<usize, Error> {
        self.observe_all(from, entries.iter().map(|e| e.versioned.version.hlc))?;
        let mut accepted = Vec::with_capacity(entries.len());
        // The floor of the keyspace last seen: a batch is almost always one keyspace, so this
        // reads the floor once per batch instead of once per entry.
        let mut floor: Option<(&str, u64)> = None;
        for entry in entries {
            let keyspace_floor = match floor {
                Some((keyspace, f)) if keyspace == entry.keyspace => f,
                _ => {
                    let f = self.store.horizon_floor(&entry.keyspace)?;
                    floor = Some((&entry.keyspace, f));
                    f
                }
            };
            // A version below the floor of a key this node does not hold is a collected key
            // coming back: skipped.
            if entry.versioned.version.hlc.physical_ms < keyspace_floor
                && self.store.get(&entry.keyspace, &entry.key)?.is_none()
            {
                self.stats.stale_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            accepted.push(entry);
        }
        let changed = self.store.merge_many(accepted)?;
        if changed > 0 {
            self.store.flush().await?;
        }
        Ok(changed)
    }
}

/// A digest names one level of the tree, as many hashes as nodes, and not too many of them.
fn check_digest(from: u64, keyspace: &str, level: u32, nodes: &[u32], hashes: &[u64]) -> Result<(), Error> {
    let bad = |what: String| {
        Err(Error::InvalidInput(format!(
            "node {from} sent a bad digest of keyspace '{keyspace}': {what}; are both nodes running the same capkv release?"
        )))
    };
    if level as usize > DEPTH {
        return bad(format!(
            "level {level} is below the leaves (this node's tree has {DEPTH} levels)"
        ));
    }
    if nodes.len() != hashes.len() {
        return bad(format!("{} nodes but {} hashes", nodes.len(), hashes.len()));
    }
    if nodes.len() > TREE_NODES_PER_MESSAGE {
        return bad(format!(
            "{} nodes, over the {TREE_NODES_PER_MESSAGE} per message",
            nodes.len()
        ));
    }
    Ok(())
}

/// A fetch names existing buckets and carries only entries of that keyspace, those buckets and
/// its key range.
fn check_fetch(
    from: u64,
    keyspace: &str,
    buckets: &[u32],
    (after, upto): (Option<&[u8]>, Option<&[u8]>),
    entries: &[Entry],
) -> Result<BTreeSet<usize>, Error> {
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
        let key = entry.key.as_slice();
        let cursor = leaf_cursor(key);
        if after.is_some_and(|a| cursor.as_slice() <= a) || upto.is_some_and(|u| cursor.as_slice() > u) {
            return bad(format!(
                "it carries key {:?}, outside the key range it names",
                String::from_utf8_lossy(key)
            ));
        }
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::super::digest::{bucket_of, BUCKETS, DEPTH};
    use super::super::super::hlc::Timestamp;
    use super::super::super::store::Entry;
    use super::super::super::version::{Version, Versioned};
    use super::super::anti_entropy::TREE_NODES_PER_MESSAGE;
    use super::super::testkit::{run, Kit, EPOCH_MS, KEYSPACE};
    use super::super::{Request, Response};
    use crate::error::Error;

    fn entry(keyspace: &str, key: &str, physical_ms: u64) -> Entry {
        Entry {
            keyspace: keyspace.into(),
            key: key.as_bytes().to_vec(),
            versioned: Versioned {
                version: Version {
                    hlc: Timestamp {
                        physical_ms,
                        logical: 0,
                    },
                    node: 9,
                },
                value: Some(b"v".to_vec()),
            },
        }
    }

    fn invalid(result: Result<Response, Error>, expected: &str) {
        match result {
            Err(Error::InvalidInput(message)) => assert!(message.contains(expected), "{message}"),
            other => panic!("expected InvalidInput containing {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_push_is_merged_and_moves_the_clock_past_it() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let ahead = entry(KEYSPACE, "bob", EPOCH_MS + 400);
            let answer = one.handle(2, Request::Push(vec![ahead.clone()])).await.unwrap();
            assert!(matches!(answer, Response::Pushed));
            let answer = one.handle(2, Request::Push(vec![ahead.clone()])).await.unwrap();
            assert!(matches!(answer, Response::Pushed), "a duplicate push is harmless");
            assert_eq!(kit.value(1, "bob").as_deref(), Some("v"));
            let later = kit.put(1, "bob", "mine").await;
            assert!(
                later.version.hlc > ahead.versioned.version.hlc,
                "the clock moved past the push"
            );
            assert_eq!(kit.value(1, "bob").as_deref(), Some("mine"));
            let read = one
                .handle(
                    2,
                    Request::Read {
                        keyspace: KEYSPACE.into(),
                        key: b"bob".to_vec(),
                    },
                )
                .await
                .unwrap();
            assert!(matches!(read, Response::Read(Some(v)) if v == later));
        });
    }

    #[test]
    fn a_message_with_a_timestamp_beyond_the_clock_bound_is_refused_whole() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let before = one.clock().last();
            let fine = entry(KEYSPACE, "ann", EPOCH_MS + 500);
            let day_ahead = entry(KEYSPACE, "bob", EPOCH_MS + 24 * 3600 * 1000);
            let err = one
                .handle(2, Request::Push(vec![fine.clone(), day_ahead.clone()]))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{err:?}");
            assert!(err.to_string().contains("86400000 ms ahead"), "{err}");
            assert!(err.to_string().contains("node 2's clock"), "{err}");
            assert_eq!(
                (kit.stored(1, "ann"), kit.stored(1, "bob")),
                (None, None),
                "nothing merged"
            );
            assert_eq!(one.clock().last(), before, "the clock was not dragged ahead");
            assert_eq!(one.stats.clock_refusals.load(std::sync::atomic::Ordering::Relaxed), 1);
            let fetch = Request::Fetch {
                keyspace: KEYSPACE.into(),
                buckets: vec![bucket_of(b"bob") as u32],
                after: None,
                upto: None,
                entries: vec![day_ahead],
            };
            assert!(matches!(one.handle(2, fetch).await, Err(Error::Refused(_))));
            one.handle(2, Request::Push(vec![fine]))
                .await
                .expect("within the bound");
            assert_eq!(kit.value(1, "ann").as_deref(), Some("v"));
        });
    }

    #[test]
    fn a_bad_digest_is_rejected_and_a_good_one_answered_level_by_level() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let digest = |level: u32, nodes: Vec<u32>, hashes: Vec<u64>| Request::Digest {
                keyspace: KEYSPACE.into(),
                level,
                nodes,
                hashes,
                horizon: 0,
            };
            let one = kit.node(1);
            invalid(one.handle(2, digest(0, vec![0], vec![])).await, "1 nodes but 0 hashes");
            invalid(
                one.handle(2, digest(9, vec![0], vec![0])).await,
                "level 9 is below the leaves",
            );
            invalid(
                one.handle(2, digest(1, vec![16], vec![0])).await,
                "nodes of level 1 of the hash tree of 'carts' that do not exist",
            );
            let many = TREE_NODES_PER_MESSAGE as u32 + 1;
            invalid(
                one.handle(2, digest(DEPTH as u32, (0..many).collect(), vec![0; many as usize]))
                    .await,
                "over the 4096 per message",
            );
            let answer = one.handle(2, digest(0, vec![0], vec![0])).await.unwrap();
            assert!(
                matches!(answer, Response::Digest { ref hashes, .. } if hashes == &vec![0]),
                "{answer:?}"
            );
            kit.put(1, "bob", "book").await;
            let leaf = bucket_of(b"bob") as u32;
            let answer = one
                .handle(
                    2,
                    digest(DEPTH as u32, vec![leaf, (leaf + 1) % BUCKETS as u32], vec![0, 0]),
                )
                .await
                .unwrap();
            assert!(
                matches!(answer, Response::Digest { ref hashes, horizon: 0, .. } if hashes[0] != 0 && hashes[1] == 0),
                "only bob's leaf has a hash: {answer:?}"
            );
        });
    }

    #[test]
    fn a_fetch_while_hints_go_to_the_sender_merges_its_entries_and_sends_none_back() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let bucket = bucket_of(b"ann") as u32;
            let fetch = |entries: Vec<Entry>| Request::Fetch {
                keyspace: KEYSPACE.into(),
                buckets: vec![bucket],
                after: None,
                upto: None,
                entries,
            };
            let delivering = one.delivering_hints(2);
            let answer = one
                .handle(2, fetch(vec![entry(KEYSPACE, "ann", EPOCH_MS)]))
                .await
                .unwrap();
            assert!(
                matches!(answer, Response::Fetched { ref entries, truncated_at: None, hints_pending: true } if entries.is_empty()),
                "{answer:?}"
            );
            assert_eq!(
                kit.value(1, "ann").as_deref(),
                Some("v"),
                "what the sender sent is merged"
            );
            let root = Request::Digest {
                keyspace: KEYSPACE.into(),
                level: 0,
                nodes: vec![0],
                hashes: vec![0],
                horizon: 0,
            };
            let answer = one.handle(2, root.clone()).await.unwrap();
            assert!(
                matches!(
                    answer,
                    Response::Digest {
                        hints_pending: true,
                        ..
                    }
                ),
                "{answer:?}"
            );
            drop(delivering);
            let answer = one.handle(2, fetch(vec![])).await.unwrap();
            assert!(
                matches!(answer, Response::Fetched { ref entries, hints_pending: false, .. } if entries.len() == 1),
                "once the backlog is delivered, fetches are answered again: {answer:?}"
            );
            let answer = one.handle(2, root).await.unwrap();
            assert!(
                matches!(
                    answer,
                    Response::Digest {
                        hints_pending: false,
                        ..
                    }
                ),
                "{answer:?}"
            );
        });
    }

    #[test]
    fn a_bad_fetch_is_rejected_and_changes_nothing() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let fetch = |buckets: Vec<u32>, entries: Vec<Entry>| Request::Fetch {
                keyspace: KEYSPACE.into(),
                buckets,
                after: None,
                upto: None,
                entries,
            };
            invalid(
                one.handle(2, fetch(vec![BUCKETS as u32], vec![])).await,
                "bucket 65536 does not exist",
            );
            let bucket = bucket_of(b"bob") as u32;
            let foreign = entry("other", "bob", EPOCH_MS);
            invalid(
                one.handle(2, fetch(vec![bucket], vec![foreign])).await,
                "entry of keyspace 'other'",
            );
            let other_bucket = (0..BUCKETS as u32).find(|b| *b != bucket).unwrap();
            let stray = entry(KEYSPACE, "bob", EPOCH_MS);
            invalid(
                one.handle(2, fetch(vec![other_bucket], vec![stray.clone()])).await,
                "not one of the buckets it names",
            );
            assert_eq!(kit.stored(1, "bob"), None, "a rejected fetch merges nothing");

            let answer = one.handle(2, fetch(vec![bucket], vec![stray])).await.unwrap();
            assert!(
                matches!(answer, Response::Fetched { ref entries, truncated_at: None, hints_pending: false } if entries.len() == 1),
                "{answer:?}"
            );
            let outside = Request::Fetch {
                keyspace: KEYSPACE.into(),
                buckets: vec![bucket],
                // A range that starts after bob's own cursor (bucket, then key) leaves bob out.
                after: Some(super::leaf_cursor(b"bob")),
                upto: None,
                entries: vec![entry(KEYSPACE, "bob", EPOCH_MS)],
            };
            invalid(one.handle(2, outside).await, "outside the key range");
            let keys: BTreeSet<_> = one
                .store
                .entries(KEYSPACE, None)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect();
            assert_eq!(keys, BTreeSet::from([b"bob".to_vec()]));
        });
    }
}
