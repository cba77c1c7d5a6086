//! Proposal batching: concurrent writes share one Raft entry, so one log sync covers them all.
//!
//! openraft 0.9 appends each proposal as its own entry and waits for the log to be synced
//! before it takes the next one, so without batching the leader syncs its log once per write and
//! throughput is bounded by the sync latency. Here writes queue; a task takes everything queued
//! (up to [`BATCH_COMMANDS_MAX`] commands and [`BATCH_BYTES_MAX`] bytes) and proposes it as one
//! [`Command::Batch`] entry, with at most [`BATCHES_IN_FLIGHT`] batches on their way through
//! Raft at once: while those are being synced and replicated, the next batch fills up. Under
//! light load a batch holds one command and is proposed as that command alone.
//!
//! No two commands of a batch touch the same key (a command that would is held back for the
//! next batch), so the commands of a batch are independent: applying them in any order gives
//! the same state, and a key's `mod_revision` (the index of the entry that last wrote it) still
//! names exactly one write. Metadata commands (creating a keyspace) always go alone.
//!
//! CAVEATS: commands of one batch share a revision, as writes of one etcd transaction do.
//! Batches that are in flight together may reach the Raft log in either order; they were
//! concurrent, so either order is linearizable. A write whose caller gave up before it was
//! proposed (deadline passed: the caller was told "outcome unknown") is dropped, never proposed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::command::{Answer, Applied, Cas, Command, Delete, Put, Txn, TxnOp};
use crate::cp::command::CompareTarget;

/// Commands per batch entry at most.
pub const BATCH_COMMANDS_MAX: usize = 256;

/// Payload bytes per batch entry at most (a single larger command goes alone); well under the
/// Raft message limit, so a batch always fits one AppendEntries.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Batches proposed and not yet applied, at most. More in flight means smaller batches (more
/// log syncs, Raft messages and state-machine writes per write); fewer means less pipelining
/// between the leader's sync and replication. On a 2-core machine, where writes are bound by
/// CPU, one batch at a time gave 10-30% more writes at concurrency 8 to 256 than two, with
/// less CPU per write (every Raft round costs each node a sync, messages and a state-machine write).
pub const BATCHES_IN_FLIGHT: usize = 1;

struct Pending<E> {
    command: Command,
    answer: oneshot::Sender<Result<Applied, E>>,
}

/// Queues writes and proposes them in batches (see the module docs).
pub struct WriteBatcher<E> {
    queue: mpsc::UnboundedSender<Pending<E>>,
}

impl<E: Clone + Send + 'static> WriteBatcher<E> {
    /// Starts the batching task. `submit(command)` proposes one entry and returns its applied
    /// answer (or the proposal's error); it is called with at most [`BATCHES_IN_FLIGHT`]
    /// entries outstanding.
    pub fn start<F, Fut>(submit: F) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Applied, E>> + Send + 'static,
    {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(submit), pending));
        Self { queue }
    }

    /// Proposes `command` with the next batch and returns its own answer; `None` when the
    /// batching task has stopped (the Raft group is shutting down) and nothing was proposed.
    pub async fn propose(&self, command: Command) -> Option<Result<Applied, E>> {
        let (answer, applied) = oneshot::channel();
        self.queue.send(Pending { command, answer }).ok()?;
        applied.await.ok()
    }
}

async fn run<F, Fut, E>(submit: Arc<F>, mut queue: mpsc::UnboundedReceiver<Pending<E>>)
where
    F: Fn(Command) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Applied, E>> + Send + 'static,
    E: Clone + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut held_back: Option<Pending<E>> = None;
    loop {
        let first = match held_back.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        if first.answer.is_closed() {
            continue;
        }
        // Wait for a slot first: the batch grows while earlier ones are synced and replicated.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        if let Some(keys) = key_hashes(&batch[0].command) {
            let mut seen: HashSet<u64> = keys.into_iter().collect();
            let mut bytes = payload_bytes(&batch[0].command);
            while batch.len() < BATCH_COMMANDS_MAX {
                let Ok(next) = queue.try_recv() else { break };
                if next.answer.is_closed() {
                    continue;
                }
                let fits = bytes + payload_bytes(&next.command) <= BATCH_BYTES_MAX;
                match key_hashes(&next.command) {
                    Some(keys) if fits && keys.iter().all(|k| !seen.contains(k)) => {
                        seen.extend(keys);
                        bytes += payload_bytes(&next.command);
                        batch.push(next);
                    }
                    _ => {
                        held_back = Some(next);
                        break;
                    }
                }
            }
        }
        let submit = submit.clone();
        tokio::spawn(async move {
            propose_batch(&*submit, batch).await;
            drop(slot);
        });
    }
}

async fn propose_batch<F, Fut, E>(submit: &F, batch: Vec<Pending<E>>)
where
    F: Fn(Command) -> Fut,
    Fut: Future<Output = Result<Applied, E>>,
    E: Clone,
{
    metrics::histogram!("capkv_raft_batch_commands").record(batch.len() as f64);
    if batch.len() == 1 {
        let pending = batch.into_iter().next().expect("one pending write");
        let outcome = submit(pending.command).await;
        let _ = pending.answer.send(outcome);
        return;
    }
    let (commands, answers): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.answer)).unzip();
    let n = commands.len();
    match submit(Command::Batch(commands)).await {
        Ok(Ok(Answer::Batch(applied))) if applied.len() == n => {
            for (answer, applied) in answers.into_iter().zip(applied) {
                let _ = answer.send(Ok(applied));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Ok(other) => panic!("the state machine answered a batch of {n} commands with {other:?}"),
    }
}

/// Hashes of the (keyspace, key) pairs a command touches; `None` when it must go alone. Two
/// different keys whose hashes collide only close a batch early.
fn key_hashes(command: &Command) -> Option<Vec<u64>> {
    let keys = command.touched_keys()?;
    Some(
        keys.into_iter()
            .map(|k| {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                h.finish()
            })
            .collect(),
    )
}

/// The bytes a command carries (keys and values), close to its encoded size.
fn payload_bytes(command: &Command) -> usize {
    match command {
        Command::CreateKeyspace(c) => c.name.len(),
        Command::Put(Put { keyspace, key, value }) => keyspace.len() + key.len() + value.len(),
        Command::Delete(Delete { keyspace, key }) => keyspace.len() + key.len(),
        Command::Cas(Cas {
            keyspace,
            key,
            expected,
            new_value,
        }) => keyspace.len() + key.len() + expected.as_ref().map_or(0, Vec::len) + new_value.len(),
        Command::Txn(Txn {
            keyspace,
            compares,
            success,
            failure,
        }) => {
            let compared: usize = compares
                .iter()
                .map(|c| {
                    c.key.len()
                        + match &c.target {
                            CompareTarget::Value(v) => v.len(),
                            _ => 8,
                        }
                })
                .sum();
            let operated: usize = success
                .iter()
                .chain(failure)
                .map(|op| match op {
                    TxnOp::Put { key, value } => key.len() + value.len(),
                    TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
                })
                .sum();
            keyspace.len() + compared + operated
        }
        Command::Batch(commands) => commands.iter().map(payload_bytes).sum(),
        Command::Once(once) => payload_bytes(&once.command) + 40,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::cp::command::{CreateKeyspace, PutAnswer};
    use crate::mode::Mode;

    fn put(key: &str) -> Command {
        Command::Put(Put {
            keyspace: "bank".into(),
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        })
    }

    /// A fake Raft group: records each proposed entry, answers after `delay` with the entry's
    /// position as the revision of each command in it.
    fn recording(delay: Duration) -> (WriteBatcher<String>, Arc<Mutex<Vec<Command>>>) {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let seen = entries.clone();
        let batcher = WriteBatcher::start(move |command: Command| {
            let index = {
                let mut entries = seen.lock().unwrap();
                entries.push(command.clone());
                entries.len() as u64
            };
            async move {
                tokio::time::sleep(delay).await;
                let answer = |_: &Command| {
                    Ok(Answer::Put(PutAnswer {
                        revision: index,
                        had_previous: false,
                    }))
                };
                Ok(match &command {
                    Command::Batch(commands) => Ok(Answer::Batch(commands.iter().map(answer).collect())),
                    other => answer(other),
                })
            }
        });
        (batcher, entries)
    }

    async fn propose_all(batcher: Arc<WriteBatcher<String>>, commands: Vec<Command>) -> Vec<Applied> {
        let tasks: Vec<_> = commands
            .into_iter()
            .map(|c| {
                let b = batcher.clone();
                tokio::spawn(async move { b.propose(c).await.expect("batcher runs").expect("no Raft error") })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
        let (batcher, entries) = recording(Duration::from_millis(20));
        let commands: Vec<_> = (0..100).map(|i| put(&format!("k{i}"))).collect();
        let answers = propose_all(Arc::new(batcher), commands).await;
        assert_eq!(answers.len(), 100);
        assert!(answers.iter().all(|a| matches!(a, Ok(Answer::Put(_)))), "{answers:?}");
        let n = entries.lock().unwrap().len();
        assert!(n <= 10, "100 concurrent writes took {n} entries");
    }

    #[tokio::test]
    async fn a_batch_never_holds_two_commands_on_one_key_nor_a_metadata_command() {
        let (batcher, entries) = recording(Duration::from_millis(10));
        let mut commands: Vec<_> = (0..40).map(|i| put(&format!("k{}", i % 4))).collect();
        commands.push(Command::CreateKeyspace(CreateKeyspace {
            name: "other".into(),
            mode: Mode::Cp,
        }));
        propose_all(Arc::new(batcher), commands).await;
        for entry in entries.lock().unwrap().iter() {
            if let Command::Batch(commands) = entry {
                let keys: Vec<_> = commands.iter().flat_map(|c| c.touched_keys().unwrap()).collect();
                let distinct: HashSet<_> = keys.iter().collect();
                assert_eq!(distinct.len(), keys.len(), "a batch touches one key twice: {keys:?}");
            }
        }
        let alone = entries
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Command::CreateKeyspace(_)))
            .count();
        assert_eq!(alone, 1, "the keyspace creation is an entry of its own");
    }

    #[tokio::test]
    async fn a_failed_entry_fails_every_write_in_it() {
        let batcher = Arc::new(WriteBatcher::start(|_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Err::<Applied, _>("lost the leadership".to_string())
        }));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.propose(put(&format!("k{i}"))).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(Err("lost the leadership".to_string())));
        }
    }

    #[test]
    fn payload_bytes_count_keys_and_values() {
        assert_eq!(payload_bytes(&put("abc")), "bank".len() + 3 + 1);
        let big = Command::Put(Put {
            keyspace: "b".into(),
            key: vec![0; 10],
            value: vec![0; BATCH_BYTES_MAX],
        });
        assert!(payload_bytes(&big) > BATCH_BYTES_MAX);
    }
}
