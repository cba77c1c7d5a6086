//! Anti-entropy: compare hash trees with a peer, exchange the entries of differing leaves
//! (buckets) both ways, merge by last-writer-wins on each side.
//!
//! One exchange of a keyspace costs one root comparison (a few bytes) when the replicas agree.
//! When they differ, the exchange descends level by level into the nodes whose hashes differ
//! (at most [`TREE_NODES_PER_MESSAGE`] hashes per message), so nodes that agree are never read
//! or sent. The differing leaves go in chunks of [`FETCH_BUCKETS_MAX`], and each chunk in
//! pages of at most [`AP_BATCH_BYTES_MAX`] each way (in key order), so a message stays under the
//! peer message limit however large the values and however far the replicas drifted.
//!
//! Each digest exchange also carries both sides' acknowledged tombstone horizons and records
//! whether the peer held exactly what we do; tombstone collection ([`super::tombstones`]) relies
//! on both.
//!
//! An exchange with a peer that is delivering its hint backlog to us stops early (the peer says
//! so in its root digest, or in a fetch answer if the delivery began meanwhile): the hints bring
//! the writes we missed while apart, and fetching those too would double the work of both nodes
//! while the backlog drains. What the hints do not carry (writes the peer missed from us, writes
//! its full hint queue left to anti-entropy) waits for the next round after the delivery, which
//! exchanges as usual. A delivery covers only the hints queued when it began, so it ends.
//!
//! The exchange yields to the runtime between messages, so a long repair does not hold an async
//! worker.
//!
//! CAVEATS: the first exchange of a keyspace after start-up builds its tree by one scan; a
//! difference spread over many leaves costs a descent through all of their ancestors.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::super::digest;
use super::{PeerError, Replica, Request, Response, Transport};
use crate::error::Error;
use crate::limits::AP_BATCH_BYTES_MAX;

/// Buckets (leaves) named in one anti-entropy fetch; their entries still go in byte-bounded
/// pages.
pub const FETCH_BUCKETS_MAX: usize = 1024;

/// Tree nodes compared in one digest message (8 bytes each).
pub const TREE_NODES_PER_MESSAGE: usize = 4096;

/// What one anti-entropy exchange found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Buckets whose digests differed (0: the two replicas held the same keyspace).
    pub differing_buckets: usize,
    /// Keys this replica changed by merging the peer's entries.
    pub repaired_here: usize,
    /// The peer was delivering its hint backlog to this replica, so the exchange stopped early
    /// (the hints bring the writes this replica missed); the replicas are not known to agree.
    pub deferred: bool,
}

impl<T: Transport> Replica<T> {
    /// One anti-entropy exchange of `keyspace` with `peer`.
    pub async fn anti_entropy(&self, peer: u64, keyspace: &str) -> Result<Exchange, PeerError> {
        let root = vec![self.store.tree_root(keyspace)?];
        let horizon = self.acknowledged_horizon(keyspace);
        let (theirs, their_horizon, hints_pending) = self.compare(peer, keyspace, 0, &[0], &root, horizon).await?;
        self.note_exchange(peer, keyspace, theirs == root, their_horizon);
        if hints_pending && theirs != root {
            return Ok(Exchange {
                deferred: true,
                ..Exchange::default()
            });
        }
        // Descend only into the nodes whose hashes differ, down to the leaves.
        let mut nodes = digest::differing(&[0], &root, &theirs);
        for level in 1..=digest::DEPTH {
            if nodes.is_empty() {
                return Ok(Exchange::default());
            }
            let mut next = Vec::new();
            for chunk in digest::children(&nodes).chunks(TREE_NODES_PER_MESSAGE) {
                let ours = self
                    .store
                    .tree_hashes(keyspace, level, chunk)?
                    .ok_or_else(|| Error::Internal(format!("the hash tree of '{keyspace}' has no level {level}")))?;
                let (theirs, ..) = self.compare(peer, keyspace, level, chunk, &ours, 0).await?;
                next.extend(digest::differing(chunk, &ours, &theirs));
            }
            nodes = next;
        }
        let differing: Vec<usize> = nodes.iter().map(|n| *n as usize).collect();
        if differing.is_empty() {
            return Ok(Exchange::default());
        }
        let mut exchange = Exchange {
            differing_buckets: differing.len(),
            ..Exchange::default()
        };
        // A few buckets per exchange, so one message stays small however far replicas drifted.
        for chunk in differing.chunks(FETCH_BUCKETS_MAX) {
            let (repaired, deferred) = self.repair_buckets(peer, keyspace, chunk).await?;
            exchange.repaired_here += repaired;
            if deferred {
                exchange.deferred = true;
                break;
            }
        }
        Ok(exchange)
    }

    /// Sends our hashes of `nodes` at `level` to `peer`; returns the peer's, its horizon and
    /// whether it is delivering hints to us.
    async fn compare(
        &self,
        peer: u64,
        keyspace: &str,
        level: usize,
        nodes: &[u32],
        hashes: &[u64],
        horizon: u64,
    ) -> Result<(Vec<u64>, u64, bool), PeerError> {
        let request = Request::Digest {
            keyspace: keyspace.to_string(),
            level: level as u32,
            nodes: nodes.to_vec(),
            hashes: hashes.to_vec(),
            horizon,
        };
        match self.call_peer(peer, request).await? {
            Response::Digest {
                hashes,
                horizon,
                hints_pending,
            } if hashes.len() == nodes.len() => Ok((hashes, horizon, hints_pending)),
            Response::Digest { .. } => Err(PeerError::UnexpectedAnswer {
                peer,
                asked: "digest",
                answered: "digest of another size",
            }),
            other => Err(PeerError::unexpected(peer, "digest", &other)),
        }
    }

    /// Exchanges the entries of `buckets` with `peer` both ways, page by page in key order: each
    /// fetch carries a page of ours and is answered with the peer's entries of the same key
    /// range (as far as its own page goes); the next page starts after the shorter of the two.
    /// Returns how many keys changed here, and whether the peer deferred the exchange (it
    /// began delivering hints to us).
    async fn repair_buckets(&self, peer: u64, keyspace: &str, buckets: &[usize]) -> Result<(usize, bool), PeerError> {
        let set: BTreeSet<usize> = buckets.iter().copied().collect();
        let (mut after, mut repaired) = (None::<Vec<u8>>, 0);
        loop {
            let (entries, our_end) =
                self.store
                    .leaf_page(keyspace, &set, after.as_deref(), None, AP_BATCH_BYTES_MAX)?;
            let request = Request::Fetch {
                keyspace: keyspace.to_string(),
                buckets: buckets.iter().map(|b| *b as u32).collect(),
                after: after.clone(),
                upto: our_end.clone(),
                entries,
            };
            let (theirs, their_end) = match self.call_peer(peer, request).await? {
                Response::Fetched {
                    hints_pending: true, ..
                } => return Ok((repaired, true)),
                Response::Fetched {
                    entries, truncated_at, ..
                } => (entries, truncated_at),
                other => return Err(PeerError::unexpected(peer, "fetch", &other)),
            };
            let changed = self.merge_all(peer, &theirs).await?;
            self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
            repaired += changed;
            tokio::task::yield_now().await;
            // Both pages end at or before `our_end`; the peer's may end earlier.
            match their_end.or(our_end) {
                Some(end) => after = Some(end),
                None => return Ok((repaired, false)),
            }
        }
    }

    /// One anti-entropy round over `keyspaces` with the given peers; true when all were in sync.
    pub async fn anti_entropy_round(&self, peers: &[u64], keyspaces: &[String]) -> bool {
        let mut in_sync = true;
        for peer in peers {
            for keyspace in keyspaces {
                match self.anti_entropy(*peer, keyspace).await {
                    Ok(Exchange {
                        differing_buckets: 0,
                        deferred: false,
                        ..
                    }) => {}
                    Ok(Exchange { deferred: true, .. }) => {
                        tracing::debug!(
                            peer,
                            keyspace,
                            "anti-entropy with node {peer} waits for its hint delivery to us"
                        );
                        self.stats.anti_entropy_deferred.fetch_add(1, Ordering::Relaxed);
                        in_sync = false;
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::super::digest::bucket_of;
    use super::super::testkit::{run, Kit, KEYSPACE};
    use super::super::{PeerError, Response};
    use super::Exchange;
    use crate::limits::AP_BATCH_BYTES_MAX;

    /// Two replicas, each holding a write the other missed (their hints are never delivered).
    async fn diverged() -> Kit {
        let kit = Kit::new(2, Default::default());
        kit.down(2);
        kit.put(1, "from-one", "a").await;
        kit.up(2);
        kit.down(1);
        kit.put(2, "from-two", "b").await;
        kit.up(1);
        kit
    }

    #[test]
    fn an_exchange_waits_while_the_peer_delivers_its_hints_to_us() {
        run(async {
            let kit = diverged().await;
            let two = kit.node(2);
            let delivering = two.delivering_hints(1);
            let exchange = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap();
            assert_eq!(
                exchange,
                Exchange {
                    deferred: true,
                    ..Exchange::default()
                },
                "the hints bring the keys: nothing is fetched"
            );
            assert_eq!(kit.value(1, "from-two"), None);
            assert!(
                !kit.node(1).anti_entropy_round(&[2], &[KEYSPACE.to_string()]).await,
                "a deferred exchange is not in sync"
            );
            assert_eq!(
                kit.node(1).stats.anti_entropy_deferred.load(Relaxed),
                1,
                "and is counted"
            );
            drop(delivering);
            let exchange = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap();
            assert_eq!((exchange.deferred, exchange.repaired_here), (false, 1));
            assert_eq!(kit.value(1, "from-two").as_deref(), Some("b"));
        });
    }

    #[test]
    fn one_exchange_repairs_a_divergent_key_both_ways() {
        run(async {
            let kit = diverged().await;
            let exchange = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap();
            assert!(exchange.differing_buckets >= 1, "{exchange:?}");
            assert_eq!(exchange.repaired_here, 1, "node 1 took node 2's key");
            for id in [1, 2] {
                assert_eq!(kit.value(id, "from-one").as_deref(), Some("a"), "node {id}");
                assert_eq!(kit.value(id, "from-two").as_deref(), Some("b"), "node {id}");
            }
            assert_eq!(
                kit.node(2).stats.keys_repaired.load(Relaxed),
                1,
                "node 2 took node 1's key"
            );
            let again = kit.node(2).anti_entropy(1, KEYSPACE).await.unwrap();
            assert_eq!(again, Exchange::default(), "in sync: only digests travel");
        });
    }

    #[test]
    fn a_large_bucket_is_repaired_both_ways_in_pages_under_the_message_limit() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let bucket = bucket_of(b"seed");
            let keys: Vec<String> = (0..)
                .map(|i| format!("key-{i}"))
                .filter(|k| bucket_of(k.as_bytes()) == bucket)
                .take(120)
                .collect();
            let value = "v".repeat(200 * 1024);
            // 60 keys (12 MiB, more than one page) only on node 1 and 60 only on node 2, all in
            // one bucket: one fetch of everything would be a 12 MiB message each way.
            for (i, key) in keys.iter().enumerate() {
                let holder = 1 + (i % 2) as u64;
                kit.down(3 - holder);
                kit.put(holder, key, &value).await;
                kit.up(3 - holder);
            }
            let exchange = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap();
            assert_eq!((exchange.differing_buckets, exchange.repaired_here), (1, 60));
            for key in &keys {
                for id in [1, 2] {
                    assert_eq!(
                        kit.value(id, key).as_deref(),
                        Some(value.as_str()),
                        "{key} on node {id}"
                    );
                }
            }
            let largest = kit.largest_message();
            assert!(
                largest <= AP_BATCH_BYTES_MAX + 256 * 1024,
                "pages are bounded by bytes: the largest message was {largest} bytes"
            );
            assert_eq!(
                kit.node(2).anti_entropy(1, KEYSPACE).await.unwrap(),
                Exchange::default()
            );
        });
    }

    #[test]
    fn last_writer_wins_picks_the_newer_hlc_whichever_side_starts() {
        run(async {
            for starter in [1, 2] {
                let kit = Kit::new(2, Default::default());
                kit.down(2);
                let older = kit.put(1, "bob", "old").await;
                kit.advance(10);
                kit.up(2);
                kit.down(1);
                let newer = kit.put(2, "bob", "new").await;
                kit.up(1);
                assert!(newer.version > older.version);
                let other = 3 - starter;
                kit.node(starter).anti_entropy(other, KEYSPACE).await.unwrap();
                for id in [1, 2] {
                    assert_eq!(
                        kit.value(id, "bob").as_deref(),
                        Some("new"),
                        "starter {starter}, node {id}"
                    );
                }
            }
        });
    }

    #[test]
    fn a_round_reports_sync_only_when_every_peer_agrees() {
        run(async {
            let kit = diverged().await;
            let one = kit.node(1);
            let keyspaces = vec![KEYSPACE.to_string()];
            assert!(
                !one.anti_entropy_round(&[2], &keyspaces).await,
                "the first round repairs"
            );
            assert_eq!(one.stats.last_in_sync_ms.load(Relaxed), 0);
            assert!(one.anti_entropy_round(&[2], &keyspaces).await);
            assert_eq!(one.stats.last_in_sync_ms.load(Relaxed), one.wall_ms());
            kit.down(2);
            assert!(
                !one.anti_entropy_round(&[2], &keyspaces).await,
                "a silent peer is not in sync"
            );
            assert_eq!(one.stats.anti_entropy_rounds.load(Relaxed), 3);
        });
    }

    #[test]
    fn a_silent_peer_and_a_wrong_answer_are_different_errors() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            let err = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap_err();
            assert!(matches!(err, PeerError::Unreachable { peer: 2, .. }), "{err:?}");
            kit.up(2);
            kit.forge(2, Response::Pushed);
            let err = kit.node(1).anti_entropy(2, KEYSPACE).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    PeerError::UnexpectedAnswer {
                        peer: 2,
                        asked: "digest",
                        answered: "pushed"
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("same capkv release"), "{err}");
        });
    }
}
