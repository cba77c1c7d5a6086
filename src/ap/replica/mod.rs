//! The AP replication protocol of one node: coordinated writes, push, hinted handoff,
//! anti-entropy, quorum reads with read repair, and tombstone collection.
//!
//! The transport and the clock are injected ([`Transport`], the `wall` function), so the same
//! code runs between real nodes over gRPC and between simulated nodes in seeded tests.
//!
//! WRITE PATH: the coordinator stamps the write with its HLC, merges it into its own store,
//! flushes, and then pushes it to every peer. A peer that liveness says is unreachable, or that
//! does not answer the push, gets a hint instead: a persisted copy delivered when it is back.
//! With `acks = N` the coordinator answers only once N replicas (itself included) stored the
//! write; it refuses up front (nothing written) when fewer than N replicas are reachable, and
//! answers "outcome unknown" when they are reachable but do not confirm in time.
//!
//! ANTI-ENTROPY: each round a node compares per-keyspace bucket digests with a few random peers
//! and exchanges the entries of differing buckets both ways; both sides merge by LWW.
//!
//! TOMBSTONES are collected only when every peer was last seen holding exactly the same bucket
//! (so it holds the tombstone), and only when the tombstone is older than the hint lifetime (so
//! no hint of an older write can still arrive and resurrect the key).
//!
//! Caveats: every node holds every key (no partitioning of the key space); a digest round scans
//! the keyspace locally; hints older than their lifetime are dropped (counted) and left to
//! anti-entropy.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::digest::{bucket_of, Digest};
use super::hlc::{Hlc, Timestamp};
use super::store::{ApStore, Entry, Hint};
use super::version::{merge, Version, Versioned};
use crate::error::Error;

/// Buckets exchanged in one anti-entropy fetch: about 40 keys each at 10,000 keys per keyspace.
const FETCH_BUCKETS_MAX: usize = 16;

/// A request from one replica to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Push(Vec<Entry>),
    Digest {
        keyspace: String,
        digest: Vec<u64>,
    },
    /// The sender's entries of the differing buckets; the answer carries the receiver's.
    Fetch {
        keyspace: String,
        buckets: Vec<u32>,
        entries: Vec<Entry>,
    },
    Read {
        keyspace: String,
        key: Vec<u8>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Pushed,
    Digest(Vec<u64>),
    Fetched(Vec<Entry>),
    Read(Option<Versioned>),
}

/// What one anti-entropy exchange found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Buckets whose digests differed (0: the two replicas held the same keyspace).
    pub differing_buckets: usize,
    /// Keys this replica changed by merging the peer's entries.
    pub repaired_here: usize,
}

/// A message that got no answer: lost, refused, or the peer is down.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

/// How replicas reach each other.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: u64,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, Unreachable>> + Send;
}

/// Tunables of the AP path, checked by [`ReplicaOptions::validate`].
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub anti_entropy_interval_ms: u64,
    /// Peers contacted per anti-entropy round.
    pub anti_entropy_fanout: usize,
    pub push_timeout_ms: u64,
    /// Hints kept per unreachable peer; further writes for it are not hinted (counted, and left
    /// to anti-entropy).
    pub hints_per_peer_max: usize,
    /// Hints older than this are dropped at delivery (counted, and left to anti-entropy).
    pub hint_lifetime_ms: u64,
    /// Tombstones younger than this are never collected; must exceed the hint lifetime.
    pub tombstone_gc_after_ms: u64,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            anti_entropy_interval_ms: 1000,
            anti_entropy_fanout: 2,
            push_timeout_ms: 1000,
            hints_per_peer_max: 100_000,
            hint_lifetime_ms: 3 * 3600 * 1000,
            tombstone_gc_after_ms: 4 * 3600 * 1000,
        }
    }
}

impl ReplicaOptions {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidInput(s));
        if self.anti_entropy_interval_ms < 10 {
            return bad("the anti-entropy interval must be at least 10 ms".into());
        }
        if self.anti_entropy_fanout == 0 {
            return bad("the anti-entropy fan-out must be at least 1".into());
        }
        if self.tombstone_gc_after_ms <= self.hint_lifetime_ms {
            return bad(format!(
                "tombstones ({} ms) must outlive hints ({} ms), or a late hint could resurrect a deleted key",
                self.tombstone_gc_after_ms, self.hint_lifetime_ms
            ));
        }
        Ok(())
    }
}

/// Counters of the AP path (exported as metrics by the node).
#[derive(Debug, Default)]
pub struct Stats {
    pub pushes_applied: AtomicU64,
    pub keys_repaired: AtomicU64,
    pub anti_entropy_rounds: AtomicU64,
    pub hints_stored: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub hints_dropped_full: AtomicU64,
    pub hints_dropped_expired: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub read_repairs: AtomicU64,
    /// Wall ms at which the last anti-entropy round found every contacted peer in sync.
    pub last_in_sync_ms: AtomicU64,
}

pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Replica<T: Transport> {
    pub id: u64,
    peers: Vec<u64>,
    pub store: ApStore,
    transport: T,
    clock: Mutex<Hlc>,
    offset_ms: AtomicI64,
    wall: WallClock,
    pub options: ReplicaOptions,
    pub stats: Stats,
    /// For (peer, keyspace, bucket): our bucket digest when the peer was last seen equal.
    in_sync: Mutex<HashMap<(u64, String, usize), u64>>,
}

impl<T: Transport> Replica<T> {
    pub fn new(
        id: u64,
        peers: Vec<u64>,
        store: ApStore,
        transport: T,
        wall: WallClock,
        options: ReplicaOptions,
    ) -> Result<Self, Error> {
        options.validate()?;
        let clock = Hlc::starting_after(store.max_timestamp()?);
        let peers = peers.into_iter().filter(|p| *p != id).collect();
        Ok(Self {
            id,
            peers,
            store,
            transport,
            clock: Mutex::new(clock),
            offset_ms: AtomicI64::new(0),
            wall,
            options,
            stats: Stats::default(),
            in_sync: Mutex::new(HashMap::new()),
        })
    }

    pub fn peers(&self) -> &[u64] {
        &self.peers
    }

    /// The node's wall clock in ms, including any injected offset.
    pub fn wall_ms(&self) -> u64 {
        ((self.wall)() as i64 + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Shifts this node's clock (clock-skew fault injection); 0 restores it.
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    pub fn clock_offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn clock(&self) -> Hlc {
        self.clock.lock().expect("clock lock is never poisoned").clone()
    }

    fn tick(&self) -> Timestamp {
        let wall = self.wall_ms();
        self.clock.lock().expect("clock lock is never poisoned").now(wall)
    }

    fn observe(&self, t: Timestamp) {
        let wall = self.wall_ms();
        self.clock
            .lock()
            .expect("clock lock is never poisoned")
            .observe(t, wall);
    }

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
        let replicas = self.peers.len() + 1;
        if acks == 0 || acks > replicas {
            return Err(Error::InvalidInput(format!(
                "--acks {acks} is out of range: it must be between 1 and the number of replicas ({replicas})"
            )));
        }
        let live: Vec<u64> = self.peers.iter().copied().filter(|p| reachable(*p)).collect();
        if live.len() + 1 < acks {
            return Err(Error::NoQuorum(format!(
                "the write asks for {acks} replicas but node {} reaches only {}; nothing was written",
                self.id,
                live.len() + 1
            )));
        }
        let versioned = Versioned {
            version: Version {
                hlc: self.tick(),
                node: self.id,
            },
            value,
        };
        let entry = Entry {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            versioned: versioned.clone(),
        };
        self.store.merge(&entry)?;
        self.store.flush().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.peers.len().max(1));
        for peer in self.peers.iter().copied() {
            if !live.contains(&peer) {
                self.hint(peer, &entry)?;
                continue;
            }
            let (this, entry, tx) = (self.clone(), entry.clone(), tx.clone());
            tokio::spawn(async move {
                let stored = this.push_or_hint(peer, entry).await;
                let _ = tx.send(stored).await;
            });
        }
        drop(tx);
        let mut confirmed = 1;
        while confirmed < acks {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
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
        Ok(versioned)
    }

    /// Pushes one write to a peer; stores a hint when the peer does not answer.
    async fn push_or_hint(&self, peer: u64, entry: Entry) -> bool {
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        match self
            .transport
            .call(peer, Request::Push(vec![entry.clone()]), timeout)
            .await
        {
            Ok(Response::Pushed) => true,
            _ => {
                if let Err(e) = self.hint(peer, &entry) {
                    tracing::error!(peer, "cannot store a hint: {e}");
                }
                false
            }
        }
    }

    fn hint(&self, peer: u64, entry: &Entry) -> Result<(), Error> {
        if cfg!(feature = "no-anti-entropy") {
            return Ok(()); // negative control: a write a peer missed stays missed
        }
        let hint = Hint {
            entry: entry.clone(),
            created_ms: self.wall_ms(),
        };
        if self.store.add_hint(peer, &hint, self.options.hints_per_peer_max)? {
            self.stats.hints_stored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.hints_dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Merges entries from a peer; returns how many changed the store.
    async fn merge_all(&self, entries: &[Entry]) -> Result<usize, Error> {
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

    /// Records which buckets a peer holds exactly as we do.
    fn note_sync(&self, peer: u64, keyspace: &str, ours: &Digest, theirs: &Digest) {
        let differing: BTreeSet<usize> = ours.differing(theirs).into_iter().collect();
        let mut in_sync = self.in_sync.lock().expect("sync lock is never poisoned");
        for (bucket, digest) in ours.0.iter().enumerate() {
            if !differing.contains(&bucket) {
                in_sync.insert((peer, keyspace.to_string(), bucket), *digest);
            }
        }
    }

    /// One anti-entropy exchange of `keyspace` with `peer`.
    pub async fn anti_entropy(&self, peer: u64, keyspace: &str) -> Result<Exchange, Unreachable> {
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        let internal = |e: Error| Unreachable(e.to_string());
        let ours = self.store.digest(keyspace).map_err(internal)?;
        let request = Request::Digest {
            keyspace: keyspace.to_string(),
            digest: ours.0.clone(),
        };
        let Response::Digest(theirs) = self.transport.call(peer, request, timeout).await? else {
            return Err(Unreachable("unexpected answer to a digest".into()));
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
            let entries = self.store.entries(keyspace, Some(&buckets)).map_err(internal)?;
            let request = Request::Fetch {
                keyspace: keyspace.to_string(),
                buckets: chunk.iter().map(|b| *b as u32).collect(),
                entries,
            };
            let Response::Fetched(theirs) = self.transport.call(peer, request, timeout).await? else {
                return Err(Unreachable("unexpected answer to a fetch".into()));
            };
            let changed = self.merge_all(&theirs).await.map_err(internal)?;
            self.stats.keys_repaired.fetch_add(changed as u64, Ordering::Relaxed);
            repaired += changed;
        }
        Ok(Exchange {
            differing_buckets: differing.len(),
            repaired_here: repaired,
        })
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
                    Err(Unreachable(e)) => {
                        tracing::debug!(peer, keyspace, "anti-entropy failed: {e}");
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

    /// Delivers stored hints to `peer`; returns how many were delivered.
    pub async fn deliver_hints(&self, peer: u64, batch: usize) -> Result<usize, Unreachable> {
        let internal = |e: Error| Unreachable(e.to_string());
        let hints = self.store.hints(peer, batch).map_err(internal)?;
        if hints.is_empty() {
            return Ok(0);
        }
        let now = self.wall_ms();
        let (fresh, expired): (Vec<_>, Vec<_>) = hints
            .into_iter()
            .partition(|(_, h)| now.saturating_sub(h.created_ms) <= self.options.hint_lifetime_ms);
        if !expired.is_empty() {
            self.stats
                .hints_dropped_expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            self.store
                .remove_hints(peer, &expired.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .map_err(internal)?;
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let entries = fresh.iter().map(|(_, h)| h.entry.clone()).collect();
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        match self.transport.call(peer, Request::Push(entries), timeout).await? {
            Response::Pushed => {
                self.store
                    .remove_hints(peer, &fresh.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                    .map_err(internal)?;
                self.stats
                    .hints_delivered
                    .fetch_add(fresh.len() as u64, Ordering::Relaxed);
                Ok(fresh.len())
            }
            _ => Err(Unreachable("unexpected answer to a push".into())),
        }
    }

    /// Reads from a majority and returns the newest version, repairing stale replicas.
    pub async fn read_quorum(
        &self,
        keyspace: &str,
        key: &[u8],
        reachable: impl Fn(u64) -> bool,
        deadline: Instant,
    ) -> Result<Option<Versioned>, Error> {
        let replicas = self.peers.len() + 1;
        let majority = replicas / 2 + 1;
        let live: Vec<u64> = self.peers.iter().copied().filter(|p| reachable(*p)).collect();
        if live.len() + 1 < majority {
            return Err(Error::NoQuorum(format!(
                "a quorum read needs {majority} replicas but node {} reaches only {}",
                self.id,
                live.len() + 1
            )));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let request = Request::Read {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
        };
        let calls = live.iter().map(|p| {
            let request = request.clone();
            async move { (*p, self.transport.call(*p, request, timeout).await) }
        });
        let answers = futures::future::join_all(calls).await;
        let mut versions: Vec<(u64, Option<Versioned>)> = vec![(self.id, self.store.get(keyspace, key)?)];
        for (peer, answer) in answers {
            if let Ok(Response::Read(v)) = answer {
                versions.push((peer, v));
            }
        }
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
            for (replica, version) in &versions {
                if version.as_ref() == Some(newest) {
                    continue;
                }
                self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                if *replica == self.id {
                    self.merge_all(std::slice::from_ref(&entry)).await?;
                } else {
                    let _ = self
                        .transport
                        .call(*replica, Request::Push(vec![entry.clone()]), timeout)
                        .await;
                }
            }
        }
        Ok(newest)
    }

    /// Collects tombstones every peer is known to hold and that no hint can predate.
    pub fn collect_tombstones(&self, keyspace: &str) -> Result<usize, Error> {
        let now = self.wall_ms();
        let digest = self.store.digest(keyspace)?;
        let in_sync = self.in_sync.lock().expect("sync lock is never poisoned").clone();
        let mut collected = 0;
        for entry in self.store.entries(keyspace, None)? {
            if !entry.versioned.is_tombstone()
                || now.saturating_sub(entry.versioned.version.hlc.physical_ms) < self.options.tombstone_gc_after_ms
            {
                continue;
            }
            let bucket = bucket_of(&entry.key);
            let everyone_has_it = self
                .peers
                .iter()
                .all(|p| in_sync.get(&(*p, keyspace.to_string(), bucket)) == Some(&digest.0[bucket]));
            if everyone_has_it && self.store.remove_tombstone(&entry)? {
                collected += 1;
            }
        }
        self.stats
            .tombstones_collected
            .fetch_add(collected as u64, Ordering::Relaxed);
        Ok(collected)
    }
}
