//! The coordinator's side of a write: stamp, store, flush, push to every peer, count acks.
//!
//! The write is on this node's disk before any peer hears of it, so an acknowledged write
//! survives the coordinator's crash. Peers that liveness says are unreachable get a hint at
//! once; the others get the write through their push queues (concurrently, batched with other
//! writes: [`super::push`]), and a peer that does not answer the push gets a hint instead
//! ([`super::hints`]). With `acks = N` the caller waits for N replicas
//! (this one included).
//!
//! CAVEATS: acks count replicas that *stored* the write, not that a quorum read will see it
//! first; "outcome unknown" means the write is stored here and will still spread.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::super::store::Entry;
use super::super::version::{Version, Versioned};
use super::{Replica, Transport};
use crate::error::Error;

impl<T: Transport> Replica<T> {
    /// Coordinates a put (`Some(value)`) or delete (`None`) with `acks` replicas confirming.
    pub async fn write(
        self: &Arc<Self>,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        acks: usize,
        reachable: impl Fn(u64) -> bool,
        deadline: Instant,
    ) -> Result<Versioned, Error> {
        let live = self.reachable_for(acks, reachable)?;
        let entry = self.stamp_and_store(keyspace, key, value).await?;
        let confirmations = self.replicate(&entry, &live)?;
        self.await_acks(confirmations, acks, deadline).await?;
        Ok(entry.versioned)
    }

    /// The peers reachable now, or a refusal when they and this node are fewer than `acks`.
    fn reachable_for(&self, acks: usize, reachable: impl Fn(u64) -> bool) -> Result<Vec<u64>, Error> {
        let peers = self.peers();
        let replicas = peers.len() + 1;
        if acks == 0 || acks > replicas {
            return Err(Error::InvalidInput(format!(
                "--acks {acks} is out of range: it must be between 1 and the number of replicas ({replicas})"
            )));
        }
        let live: Vec<u64> = peers.iter().copied().filter(|p| reachable(*p)).collect();
        if live.len() + 1 < acks {
            return Err(Error::NoQuorum(format!(
                "the write asks for {acks} replicas but node {} reaches only {}; nothing was written",
                self.id,
                live.len() + 1
            )));
        }
        Ok(live)
    }

    /// Stamps the write with this node's HLC and makes it durable here.
    async fn stamp_and_store(&self, keyspace: &str, key: &[u8], value: Option<Vec<u8>>) -> Result<Entry, Error> {
        let entry = Entry {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            versioned: Versioned {
                version: Version {
                    hlc: self.tick()?,
                    node: self.id,
                },
                value,
            },
        };
        self.store.merge(&entry)?;
        // Merged but perhaps not durable: readers here may already see it, a crash may lose it.
        self.store.flush().await.map_err(|e| {
            Error::OutcomeUnknown(format!(
                "node {} stored the write but could not make it durable ({e}); it may or may not survive",
                self.id
            ))
        })?;
        Ok(entry)
    }

    /// Hints the write for unreachable peers and queues it for the `live` ones ([`super::push`]);
    /// each peer's push reports on the returned channel whether that peer stored it.
    fn replicate(self: &Arc<Self>, entry: &Entry, live: &[u64]) -> Result<mpsc::Receiver<bool>, Error> {
        let peers = self.peers();
        let (tx, rx) = mpsc::channel(peers.len().max(1));
        for peer in peers {
            if !live.contains(&peer) {
                // The write is stored and durable here; only its delivery to `peer` is in doubt.
                self.hint(peer, entry).map_err(|e| {
                    Error::OutcomeUnknown(format!(
                        "node {} stored the write but could not queue its hint for node {peer} ({e}); \
                         it is applied here and anti-entropy may still spread it",
                        self.id
                    ))
                })?;
                continue;
            }
            self.push(peer, entry.clone(), tx.clone());
        }
        Ok(rx)
    }

    /// Waits until `acks` replicas (this one included) stored the write, or the deadline.
    async fn await_acks(
        &self,
        mut confirmations: mpsc::Receiver<bool>,
        acks: usize,
        deadline: Instant,
    ) -> Result<(), Error> {
        let mut confirmed = 1;
        while confirmed < acks {
            match tokio::time::timeout_at(deadline.into(), confirmations.recv()).await {
                Ok(Some(true)) => confirmed += 1,
                Ok(Some(false)) => {}
                Ok(None) | Err(_) => {
                    return Err(Error::OutcomeUnknown(format!(
                        "node {} stored the write but only {confirmed} of the {acks} replicas asked for confirmed it in time; it will still spread",
                        self.id
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{run, Kit};
    use crate::error::Error;

    #[test]
    fn a_write_reaches_every_replica_and_waits_for_its_acks() {
        run(async {
            let kit = Kit::new(3, Default::default());
            let written = kit.write(1, "bob", Some("book"), 3).await.unwrap();
            assert_eq!(written.version.node, 1);
            for id in 1..=3 {
                assert_eq!(kit.value(id, "bob").as_deref(), Some("book"), "node {id}");
            }
            assert_eq!(kit.node(1).store.hint_count(2) + kit.node(1).store.hint_count(3), 0);
        });
    }

    #[test]
    fn too_few_reachable_replicas_refuse_up_front_and_write_nothing() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.down(3);
            let err = kit.write(1, "bob", Some("book"), 3).await.unwrap_err();
            assert!(matches!(err, Error::NoQuorum(_)), "{err:?}");
            assert!(err.to_string().contains("reaches only 2"), "{err}");
            assert_eq!(kit.stored(1, "bob"), None, "nothing was written");
            kit.write(1, "bob", Some("book"), 2)
                .await
                .expect("two reachable replicas are enough for --acks 2");
        });
    }

    #[test]
    fn acks_outside_one_to_replicas_are_invalid() {
        run(async {
            let kit = Kit::new(3, Default::default());
            for acks in [0, 4] {
                let err = kit.write(1, "bob", Some("book"), acks).await.unwrap_err();
                assert!(matches!(err, Error::InvalidInput(_)), "acks {acks}: {err:?}");
                assert!(err.to_string().contains("between 1 and the number of replicas (3)"));
            }
        });
    }

    #[test]
    fn a_replica_that_misses_the_push_is_hinted_and_the_outcome_is_unknown() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.down(3);
            let node = kit.node(1);
            // Liveness still believes node 3 is up, so the write is attempted and the push fails.
            let err = node
                .write(
                    super::super::testkit::KEYSPACE,
                    b"bob",
                    Some(b"book".to_vec()),
                    3,
                    |_| true,
                    super::super::testkit::far(),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::OutcomeUnknown(_)), "{err:?}");
            assert!(err.to_string().contains("only 2 of the 3"), "{err}");
            assert_eq!(
                kit.value(1, "bob").as_deref(),
                Some("book"),
                "the coordinator stored it"
            );
            assert_eq!(kit.value(2, "bob").as_deref(), Some("book"));
            assert_eq!(node.store.hint_count(3), 1, "node 3 gets it later");
        });
    }
}
