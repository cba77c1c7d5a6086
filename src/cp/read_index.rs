//! Batched ReadIndex: one leadership confirmation serves every linearizable read that arrived
//! before it started.
//!
//! A linearizable read needs a confirmation that *began after the read arrived*: the leader
//! checks with a majority that it still leads, takes the commit index at that moment as the read
//! index, and waits until its state machine has applied it (openraft's `ensure_linearizable`).
//! Without batching every read pays a heartbeat round to the followers of its own. Here reads
//! queue, and one task takes the whole queue, runs one confirmation and hands its outcome to
//! every read in the batch. A read that arrives while a confirmation is running waits for the
//! next one, so every read is served by a confirmation that started after it arrived — the
//! condition ReadIndex needs (Raft dissertation, §6.4: batching reads this way is safe).
//!
//! CAVEATS: a read may wait for the confirmation already in flight to finish before its own
//! starts (at most one extra round trip). A confirmation is bounded by the latest deadline of
//! the reads in its batch; a read whose own deadline passes first answers "no quorum" on its own.

use std::future::Future;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// One read waiting for a confirmation.
struct Waiter {
    deadline: Instant,
    answer: oneshot::Sender<Result<(), Error>>,
}

/// Queues linearizable reads and confirms them in batches (see the module docs).
pub struct ReadBatcher {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl ReadBatcher {
    /// Starts the batching task. `confirm(deadline)` runs one confirmation that must not
    /// outlive `deadline`; it is called again only after the previous call returned.
    pub fn start<F, Fut>(confirm: F) -> Self
    where
        F: Fn(Instant) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(confirm, waiting));
        Self { queue }
    }

    /// Returns once a confirmation that started after this call has succeeded, or why not.
    pub async fn confirm(&self, node: u64, deadline: Instant) -> Result<(), Error> {
        let (answer, outcome) = oneshot::channel();
        self.queue.send(Waiter { deadline, answer }).map_err(|_| {
            Error::NoQuorum(format!(
                "node {node} is shutting down its Raft group; retry on another node"
            ))
        })?;
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline.into(), outcome).await {
            Err(_) => Err(Error::NoQuorum(format!(
                "node {node} could not confirm its leadership with a majority within {} ms",
                budget.as_millis()
            ))),
            // A read changes nothing, so a read that got no answer may simply go elsewhere.
            Ok(Err(_)) => Err(Error::NoQuorum(format!(
                "node {node} stopped confirming reads (its Raft group is shutting down); retry on another node"
            ))),
            Ok(Ok(outcome)) => outcome,
        }
    }
}

async fn run<F, Fut>(confirm: F, mut waiting: mpsc::UnboundedReceiver<Waiter>)
where
    F: Fn(Instant) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    while let Some(first) = waiting.recv().await {
        // Everything queued so far arrived before the confirmation below starts.
        let mut batch = vec![first];
        while let Ok(next) = waiting.try_recv() {
            batch.push(next);
        }
        batch.retain(|w| !w.answer.is_closed()); // readers that gave up
        let Some(deadline) = batch.iter().map(|w| w.deadline).max() else {
            continue;
        };
        metrics::histogram!("capkv_read_index_batch_size").record(batch.len() as f64);
        let outcome = confirm(deadline).await;
        for waiter in batch {
            let _ = waiter.answer.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Records when each confirmation started, and takes `round` to finish.
    fn recording(round: Duration) -> (ReadBatcher, Arc<Mutex<Vec<Instant>>>) {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let seen = starts.clone();
        let batcher = ReadBatcher::start(move |_deadline| {
            seen.lock().unwrap().push(Instant::now());
            async move {
                tokio::time::sleep(round).await;
                Ok(())
            }
        });
        (batcher, starts)
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_confirmation() {
        let (batcher, starts) = recording(Duration::from_millis(50));
        let batcher = Arc::new(batcher);
        // One read starts a confirmation; the twenty that queue behind it share the next one.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reads = Vec::new();
        for _ in 0..21 {
            let b = batcher.clone();
            reads.push(tokio::spawn(async move { b.confirm(1, deadline).await }));
        }
        for r in reads {
            r.await.unwrap().unwrap();
        }
        let n = starts.lock().unwrap().len();
        assert!(n <= 2, "21 concurrent reads took {n} confirmations");
    }

    #[tokio::test]
    async fn a_read_is_served_by_a_confirmation_that_started_after_it_arrived() {
        let (batcher, starts) = recording(Duration::from_millis(40));
        let batcher = Arc::new(batcher);
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.confirm(1, deadline).await })
        };
        // Arrive while the first confirmation is running.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let arrived = Instant::now();
        batcher.confirm(1, deadline).await.unwrap();
        first.await.unwrap().unwrap();
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 2, "the late read needs a confirmation of its own");
        assert!(
            starts[1] >= arrived,
            "the late read was served by a confirmation that began before it arrived"
        );
    }

    #[tokio::test]
    async fn a_failed_confirmation_fails_every_read_in_its_batch_and_a_read_past_its_deadline_says_no_quorum() {
        let batcher = ReadBatcher::start(|_| async { Err(Error::NoQuorum("lost the leadership".into())) });
        let e = batcher
            .confirm(1, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e, Error::NoQuorum("lost the leadership".into()));

        let slow = ReadBatcher::start(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        let e = slow
            .confirm(7, Instant::now() + Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::NoQuorum(m) if m.contains("node 7")),
            "unexpected error: {e}"
        );
    }
}
