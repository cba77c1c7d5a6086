//! Pushing coordinated writes to peers in batches: one queue and one sender task per peer.
//!
//! A write hands its entry to each live peer's queue and goes on; the peer's task takes
//! whatever has queued up since its last send (up to [`PUSH_BATCH_ENTRIES`] entries and
//! [`AP_BATCH_BYTES_MAX`] bytes) and sends it as one `Push`, with at most
//! [`PUSHES_IN_FLIGHT`] pushes to a peer at a time. Under load, one message, one merge pass and
//! one flush on the peer cover many writes, instead of one each. Each write learns on its
//! confirmation channel whether the peer stored it (for `--acks`). A batch in which some write's
//! coordinator waits for this peer's confirmation is sent at once, also when that write joins a
//! batch that was waiting, so batching adds no wait to a write's answer; a batch nobody waits for
//! (every write in it was `--acks 1`, or already had its acks) waits up to [`PUSH_LINGER`] for
//! more writes to join it. That makes pushes under load larger, and costs the peers at most that
//! much more replication lag.
//!
//! A push the peer does not answer hints every entry in it ([`super::hints`]), as a push of one
//! write did before. A queue holds at most [`QUEUED_BYTES_MAX`] bytes: past that a write is
//! hinted at once instead of queued, so a slow peer costs disk (bounded by the hint bounds), not
//! memory.
//!
//! CAVEATS: entries to one peer may arrive out of order (two pushes in flight); merges are
//! last-writer-wins, so order does not matter. The tasks hold only a weak reference to the
//! replica: they end when it is dropped or when the peer leaves the membership.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::super::store::Entry;
use super::{Replica, Request, Response, Transport};
use crate::limits::AP_BATCH_BYTES_MAX;

/// Entries per push message (also bounded by [`AP_BATCH_BYTES_MAX`] bytes).
pub const PUSH_BATCH_ENTRIES: usize = 512;
/// Pushes to one peer that may be in flight at once.
pub const PUSHES_IN_FLIGHT: usize = 2;
/// How long a push of writes nobody waits for (`--acks 1`) waits for more writes to join it.
pub const PUSH_LINGER: Duration = Duration::from_millis(2);
/// Bytes of writes queued for one peer before further writes are hinted instead.
pub const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A write waiting to be pushed, and where to say whether the peer stored it.
struct Pending {
    entry: Entry,
    confirm: mpsc::Sender<bool>,
}

/// The send side of one peer's queue.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<Pending>,
    /// Bytes in the queue, not yet taken into a push.
    queued: Arc<AtomicUsize>,
}

/// The push queues of one replica, one per peer, started on first use.
pub struct Pushers {
    queues: Mutex<HashMap<u64, Queue>>,
    /// Bytes one queue may hold ([`QUEUED_BYTES_MAX`]; smaller in tests).
    queued_max: AtomicUsize,
}

impl Default for Pushers {
    fn default() -> Self {
        Self {
            queues: Mutex::default(),
            queued_max: AtomicUsize::new(QUEUED_BYTES_MAX),
        }
    }
}

/// The bytes an entry counts for against the batch and queue bounds.
fn entry_bytes(entry: &Entry) -> usize {
    entry.keyspace.len() + entry.key.len() + entry.versioned.value.as_ref().map_or(0, Vec::len) + 64
}

impl Pushers {
    /// Stops pushing to peers not in `members`; writes still queued for them are dropped with
    /// their hints (the peer left the membership).
    pub fn retain(&self, members: &[u64]) {
        self.queues
            .lock()
            .expect("push queue lock is never poisoned")
            .retain(|peer, _| members.contains(peer));
    }

    #[cfg(test)]
    fn set_queued_max(&self, bytes: usize) {
        self.queued_max.store(bytes, Ordering::Relaxed);
    }
}

impl<T: Transport> Replica<T> {
    /// Queues `entry` for `peer`; `confirm` hears whether the peer stored it. A full queue
    /// hints the entry at once (and confirms false).
    pub(super) fn push(self: &Arc<Self>, peer: u64, entry: Entry, confirm: mpsc::Sender<bool>) {
        let queue = self.push_queue(peer);
        let bytes = entry_bytes(&entry);
        if queue.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.pushers.queued_max.load(Ordering::Relaxed) {
            queue.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.hint_or_log(peer, &entry);
            let _ = confirm.try_send(false);
            return;
        }
        if let Err(unsent) = queue.tx.send(Pending { entry, confirm }) {
            // The task is gone (the replica is shutting down): keep the write for later.
            queue.queued.fetch_sub(bytes, Ordering::Relaxed);
            let Pending { entry, confirm } = unsent.0;
            self.hint_or_log(peer, &entry);
            let _ = confirm.try_send(false);
        }
    }

    /// The queue of `peer`, starting its task the first time.
    fn push_queue(self: &Arc<Self>, peer: u64) -> Queue {
        let mut queues = self.pushers.queues.lock().expect("push queue lock is never poisoned");
        queues
            .entry(peer)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let queued = Arc::new(AtomicUsize::new(0));
                tokio::spawn(run(Arc::downgrade(self), peer, rx, queued.clone()));
                Queue { tx, queued }
            })
            .clone()
    }

    fn hint_or_log(&self, peer: u64, entry: &Entry) {
        if let Err(e) = self.hint(peer, entry) {
            tracing::error!(peer, "cannot store a hint: {e}");
        }
    }

    /// Sends one batch; hints all of it when the peer does not answer.
    async fn push_batch(&self, peer: u64, batch: Vec<Pending>) {
        let entries: Vec<Entry> = batch.iter().map(|p| p.entry.clone()).collect();
        let stored = matches!(self.call_peer(peer, Request::Push(entries)).await, Ok(Response::Pushed));
        for pending in batch {
            if !stored {
                self.hint_or_log(peer, &pending.entry);
            }
            let _ = pending.confirm.try_send(stored);
        }
    }
}

/// The writes of one push, as the sender gathers them.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    bytes: usize,
    /// Some write's coordinator waits for this peer's confirmation.
    waited_for: bool,
}

impl Batch {
    fn add(&mut self, next: Pending) {
        self.bytes += entry_bytes(&next.entry);
        self.waited_for |= !next.confirm.is_closed();
        self.pending.push(next);
    }

    fn full(&self) -> bool {
        self.pending.len() >= PUSH_BATCH_ENTRIES || self.bytes >= AP_BATCH_BYTES_MAX
    }
}

/// One peer's sender: takes what queued up, pushes it, at most [`PUSHES_IN_FLIGHT`] at a time.
async fn run<T: Transport>(
    replica: Weak<Replica<T>>,
    peer: u64,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    queued: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(Semaphore::new(PUSHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Batch::default();
        batch.add(first);
        let linger_until = tokio::time::Instant::now() + PUSH_LINGER;
        loop {
            while !batch.full() {
                match rx.try_recv() {
                    Ok(next) => batch.add(next),
                    Err(_) => break,
                }
            }
            // A write whose coordinator waits for this peer (`--acks` above 1) goes at once,
            // also when it joins a batch that is lingering; writes nobody waits for wait a
            // moment for others to share their push.
            if batch.full() || batch.waited_for {
                break;
            }
            match tokio::time::timeout_at(linger_until, rx.recv()).await {
                Ok(Some(next)) => batch.add(next),
                // The linger is over, or the replica is shutting down: send what there is.
                Ok(None) | Err(_) => break,
            }
        }
        let Batch {
            pending: batch, bytes, ..
        } = batch;
        queued.fetch_sub(bytes, Ordering::Relaxed);
        let Some(replica) = replica.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            replica.push_batch(peer, batch).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::super::super::hlc::Timestamp;
    use super::super::super::store::Entry;
    use super::super::super::version::{Version, Versioned};
    use super::super::testkit::{run, Kit, EPOCH_MS, KEYSPACE};
    use super::{entry_bytes, PUSH_LINGER};

    fn entry(i: u64) -> Entry {
        Entry {
            keyspace: KEYSPACE.into(),
            key: format!("k{i}").into_bytes(),
            versioned: Versioned {
                version: Version {
                    hlc: Timestamp {
                        physical_ms: EPOCH_MS,
                        logical: i as u32,
                    },
                    node: 1,
                },
                value: Some(b"v".to_vec()),
            },
        }
    }

    #[test]
    fn writes_queued_together_go_in_one_push_and_a_full_queue_hints_at_once() {
        run(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            one.pushers.set_queued_max(3 * entry_bytes(&entry(0)));
            let (tx, mut confirmations) = mpsc::channel(8);
            let before = kit.requests();
            // No await between the pushes: the sender task has not run yet, so they queue up.
            for i in 0..5 {
                one.push(2, entry(i), tx.clone());
            }
            assert_eq!(one.store.hint_count(2), 2, "the two past the bound are hinted at once");
            assert_eq!(confirmations.try_recv(), Ok(false));
            assert_eq!(confirmations.try_recv(), Ok(false));
            for _ in 0..3 {
                assert_eq!(confirmations.recv().await, Some(true), "node 2 stored the queued ones");
            }
            assert_eq!(kit.requests() - before, 1, "three queued writes went in one push");
            for i in 0..3 {
                assert_eq!(kit.value(2, &format!("k{i}")).as_deref(), Some("v"));
            }
            assert_eq!(kit.value(2, "k3"), None, "a hinted write waits for its delivery");
        });
    }

    /// Runs `body` with tokio's clock paused: it moves only to the next timer when every task
    /// waits, so a test sees exactly which waits a timer caused.
    fn run_paused<F: std::future::Future>(body: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a test runtime starts")
            .block_on(body)
    }

    #[test]
    fn writes_nobody_waits_for_linger_to_share_a_push_and_a_waited_for_write_goes_at_once() {
        run_paused(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let nobody_waits = || mpsc::channel(1).0; // the receiver is gone, as after --acks 1
            let (before, started) = (kit.requests(), tokio::time::Instant::now());
            one.push(2, entry(0), nobody_waits());
            for _ in 0..3 {
                tokio::task::yield_now().await; // the sender takes write 0 and lingers
            }
            one.push(2, entry(1), nobody_waits());
            one.push(2, entry(2), nobody_waits());
            while kit.value(2, "k2").is_none() {
                tokio::time::sleep(PUSH_LINGER / 4).await;
            }
            assert!(started.elapsed() >= PUSH_LINGER, "{:?}", started.elapsed());
            assert_eq!(kit.requests() - before, 1, "three writes in one push");
            assert_eq!(kit.value(2, "k0").as_deref(), Some("v"));

            let (tx, mut confirmations) = mpsc::channel(1);
            let (before, started) = (kit.requests(), tokio::time::Instant::now());
            one.push(2, entry(3), tx);
            assert_eq!(confirmations.recv().await, Some(true));
            assert_eq!(kit.requests() - before, 1);
            assert!(
                started.elapsed() < PUSH_LINGER,
                "a write its coordinator waits for does not linger: {:?}",
                started.elapsed()
            );
        });
    }

    #[test]
    fn a_waited_for_write_that_joins_a_lingering_push_sends_it_at_once() {
        run_paused(async {
            let kit = Kit::new(2, Default::default());
            let one = kit.node(1);
            let (before, started) = (kit.requests(), tokio::time::Instant::now());
            one.push(2, entry(0), mpsc::channel(1).0); // nobody waits for it: it lingers
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let (tx, mut confirmations) = mpsc::channel(1);
            one.push(2, entry(1), tx);
            assert_eq!(confirmations.recv().await, Some(true));
            assert!(
                started.elapsed() < PUSH_LINGER,
                "the waited-for write ended the linger: {:?}",
                started.elapsed()
            );
            assert_eq!(kit.requests() - before, 1, "both writes in one push");
            assert_eq!(kit.value(2, "k0").as_deref(), Some("v"));
        });
    }

    #[test]
    fn a_push_the_peer_does_not_answer_hints_every_write_in_it() {
        run(async {
            let kit = Kit::new(2, Default::default());
            kit.down(2);
            let one = kit.node(1);
            let (tx, mut confirmations) = mpsc::channel(8);
            for i in 0..3 {
                one.push(2, entry(i), tx.clone());
            }
            for _ in 0..3 {
                assert_eq!(confirmations.recv().await, Some(false));
            }
            assert_eq!(one.store.hint_count(2), 3);
        });
    }
}
