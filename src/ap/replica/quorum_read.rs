//! Quorum reads with read repair: ask every reachable peer, need a majority of answers
//! (this replica included), return the newest version, and push it to every replica that
//! answered with something older.
//!
//! An answer carrying a version beyond the clock bound (see [`super::super::hlc`]) is counted
//! as a clock refusal and left out, as if that peer had not answered.
//!
//! CAVEATS: a quorum read is not linearizable: a write acknowledged with `acks = 1` may not
//! have reached the majority that answers. Repair of a remote replica is best effort (a lost
//! push is left to anti-entropy).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::hlc::check_bound;
use super::super::store::Entry;
use super::super::version::{merge, Versioned};
use super::{Replica, Request, Response, Transport};
use crate::error::Error;

impl<T: Transport> Replica<T> {
    /// Reads from a majority and returns the newest version, repairing stale replicas.
    pub async fn read_quorum(
        &self,
        keyspace: &str,
        key: &[u8],
        reachable: impl Fn(u64) -> bool,
        deadline: Instant,
    ) -> Result<Option<Versioned>, Error> {
        let peers = self.peers();
        let replicas = peers.len() + 1;
        let majority = replicas / 2 + 1;
        let live: Vec<u64> = peers.iter().copied().filter(|p| reachable(*p)).collect();
        if live.len() + 1 < majority {
            return Err(Error::NoQuorum(format!(
                "a quorum read needs {majority} replicas but node {} reaches only {}",
                self.id,
                live.len() + 1
            )));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let versions = self.versions(keyspace, key, &live, timeout).await?;
        if versions.len() < majority {
            return Err(Error::NoQuorum(format!(
                "a quorum read needs {majority} replicas but only {} answered node {} in time",
                versions.len(),
                self.id
            )));
        }
        let newest = versions.iter().filter_map(|(_, v)| v.clone()).reduce(merge);
        if let Some(newest) = &newest {
            let entry = Entry {
                keyspace: keyspace.to_string(),
                key: key.to_vec(),
                versioned: newest.clone(),
            };
            self.repair_stale(&entry, &versions, timeout).await?;
        }
        Ok(newest)
    }

    /// This replica's version of the key and those of the peers in `live` that answer in time.
    async fn versions(
        &self,
        keyspace: &str,
        key: &[u8],
        live: &[u64],
        timeout: Duration,
    ) -> Result<Vec<(u64, Option<Versioned>)>, Error> {
        let request = Request::Read {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
        };
        let calls = live.iter().map(|p| {
            let request = request.clone();
            async move { (*p, self.transport.call(*p, request, timeout).await) }
        });
        let answers = futures::future::join_all(calls).await;
        let mut versions = vec![(self.id, self.store.get(keyspace, key)?)];
        let (wall, bound) = (self.wall_ms(), self.options.max_clock_offset_ms);
        for (peer, answer) in answers {
            if let Ok(Response::Read(v)) = answer {
                // A version beyond the clock bound is not an answer: it could never be merged.
                if let Some(e) = v.as_ref().and_then(|v| check_bound(v.version.hlc, wall, bound).err()) {
                    self.stats.clock_refusals.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer, "ignored a quorum-read answer: {e}");
                    continue;
                }
                versions.push((peer, v));
            }
        }
        Ok(versions)
    }

    /// Gives `newest` to every replica that answered with something else (best effort remotely).
    async fn repair_stale(
        &self,
        newest: &Entry,
        versions: &[(u64, Option<Versioned>)],
        timeout: Duration,
    ) -> Result<(), Error> {
        for (replica, version) in versions {
            if version.as_ref() == Some(&newest.versioned) {
                continue;
            }
            self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
            if *replica == self.id {
                self.merge_all(self.id, std::slice::from_ref(newest)).await?;
            } else {
                let _ = self
                    .transport
                    .call(*replica, Request::Push(vec![newest.clone()]), timeout)
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::testkit::{far, run, Kit, KEYSPACE};
    use crate::error::Error;

    #[test]
    fn a_quorum_read_returns_the_newest_of_a_majority_and_repairs_stale_replicas() {
        run(async {
            let kit = Kit::new(3, Default::default());
            kit.write(1, "bob", Some("old"), 3).await.unwrap();
            kit.down(2);
            kit.down(3);
            kit.advance(5);
            let newest = kit.put(1, "bob", "new").await;
            kit.up(2);
            kit.up(3);
            assert_eq!(kit.value(2, "bob").as_deref(), Some("old"));
            let two = kit.node(2);
            let read = two.read_quorum(KEYSPACE, b"bob", kit.reachable(), far()).await.unwrap();
            assert_eq!(read, Some(newest));
            for id in 1..=3 {
                assert_eq!(kit.value(id, "bob").as_deref(), Some("new"), "node {id} repaired");
            }
            assert_eq!(two.stats.read_repairs.load(Relaxed), 2, "itself and node 3");
        });
    }

    #[test]
    fn a_quorum_read_needs_a_majority_reachable_and_answering() {
        run(async {
            let kit = Kit::new(3, Default::default());
            let one = kit.node(1);
            let err = one.read_quorum(KEYSPACE, b"bob", |_| false, far()).await.unwrap_err();
            assert!(
                matches!(err, Error::NoQuorum(_)) && err.to_string().contains("reaches only 1"),
                "{err}"
            );
            kit.down(2);
            kit.down(3);
            // Liveness still says they are up; they do not answer.
            let err = one.read_quorum(KEYSPACE, b"bob", |_| true, far()).await.unwrap_err();
            assert!(
                matches!(err, Error::NoQuorum(_)) && err.to_string().contains("only 1 answered"),
                "{err}"
            );
            kit.up(3);
            assert_eq!(one.read_quorum(KEYSPACE, b"bob", |_| true, far()).await.unwrap(), None);
        });
    }
}
