//! Group commit: one thread owns the [`Wal`]; callers queue batches of records and hear back
//! once one `fdatasync` covers them.
//!
//! The writer thread takes the first queued job, then everything else already queued (up to
//! [`BATCH_BYTES_MAX`]), writes all of it, syncs once, and completes every job of the batch with
//! the outcome of that sync. Jobs are written in the order they were queued, so a caller that
//! queues from one task sees its records in its order on disk.
//!
//! The [`Tracker`] gives the records meaning without the log knowing it: it sees every record
//! written, supplies the records that restate the current state at the head of each new segment
//! and at the start of every run (so older segments hold nothing that a later one does not
//! restate, even when a crash tore the head of the last segment), and says which old segments
//! may be removed; the writer removes them after the sync that made the state durable.
//!
//! CAVEATS: after a failed write or sync the writer fails every later job (see the log's docs).

use std::io;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::{Wal, WalError};

/// Jobs that may wait for the writer; a full queue makes callers wait (back pressure).
pub const QUEUE_JOBS_MAX: usize = 4096;

/// Bytes of records one batch takes before it syncs, so one sync never waits on a huge write.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Told the outcome of the sync that covers a job's records.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Knows what the records mean (see the module docs).
pub trait Tracker: Send + 'static {
    /// Sees a record written to (or recovered from) segment `segment`.
    fn observe(&mut self, segment: u64, payload: &[u8]);
    /// Records restating the current state, written first in every new segment.
    fn head(&self) -> Vec<Vec<u8>>;
    /// Whether segment `segment`, not the current one, holds nothing still needed.
    fn disposable(&self, segment: u64) -> bool;
    /// Segment `segment` was removed.
    fn forget(&mut self, segment: u64);
}

struct Job {
    records: Vec<Vec<u8>>,
    done: Option<Done>,
}

/// The handle to a writer thread. Dropping it lets the thread finish the queue and stop.
pub struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread for `wal`.
    pub fn start(wal: Wal, tracker: impl Tracker) -> io::Result<Writer> {
        let (queue, jobs) = mpsc::channel(QUEUE_JOBS_MAX);
        let thread = std::thread::Builder::new()
            .name("capkv-wal".into())
            .spawn(move || run(wal, tracker, jobs))?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `records`; `done` hears the outcome of the sync that covers them (`None`: nobody
    /// waits, and the records ride along with the next sync instead of causing one).
    pub async fn submit(&self, records: Vec<Vec<u8>>, done: Option<Done>) {
        let queue = self.queue.as_ref().expect("the queue lives as long as the writer");
        if let Err(mpsc::error::SendError(job)) = queue.send(Job { records, done }).await {
            if let Some(done) = job.done {
                done(Err(io::Error::other("the write-ahead log writer has stopped")));
            }
        }
    }

    /// Queues `records` and returns once they are durable.
    pub async fn write(&self, records: Vec<Vec<u8>>) -> io::Result<()> {
        let (tell, told) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |outcome| {
            let _ = tell.send(outcome);
        });
        self.submit(records, Some(done)).await;
        told.await
            .unwrap_or_else(|_| Err(io::Error::other("the write-ahead log writer stopped before syncing")))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the write-ahead log writer thread panicked");
            }
        }
    }
}

fn run(mut wal: Wal, mut tracker: impl Tracker, mut jobs: mpsc::Receiver<Job>) {
    let mut failed = restate(&mut wal, &mut tracker).err().map(|e| e.to_string());
    while let Some(first) = jobs.blocking_recv() {
        let mut batch_bytes: usize = first.records.iter().map(Vec::len).sum();
        let mut batch = vec![first];
        while batch_bytes < BATCH_BYTES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            batch_bytes += job.records.iter().map(Vec::len).sum::<usize>();
            batch.push(job);
        }
        let outcome = match &failed {
            Some(why) => Err(why.clone()),
            None => commit(&mut wal, &mut tracker, &batch).map_err(|e| e.to_string()),
        };
        if let Err(why) = &outcome {
            if failed.is_none() {
                tracing::error!(%why, "the write-ahead log failed; the node must restart");
            }
            failed.get_or_insert_with(|| why.clone());
        }
        for job in batch {
            if let Some(done) = job.done {
                done(outcome.clone().map_err(|why| {
                    io::Error::other(format!(
                        "{why} (the write-ahead log refuses writes after a failure; restart the node)"
                    ))
                }));
            }
        }
    }
    if failed.is_none() {
        if let Err(e) = wal.sync() {
            tracing::error!("the write-ahead log could not sync its last records when stopping: {e}");
        }
    }
}

/// Restates the state at the start of a run: the last segment may have been created by a run
/// that crashed before its head records reached the disk, and an older segment may be removed
/// only once a later one restates what it holds.
fn restate(wal: &mut Wal, tracker: &mut impl Tracker) -> Result<(), WalError> {
    for head in tracker.head() {
        wal.write(&head)?;
        tracker.observe(wal.current_segment(), &head);
    }
    wal.sync()
}

/// Writes a batch, syncs once, then removes segments that became disposable. A batch nobody
/// waits for is only buffered: it reaches the disk with the next sync (or when the writer stops),
/// so records that need no durability cost no sync of their own.
fn commit(wal: &mut Wal, tracker: &mut impl Tracker, batch: &[Job]) -> Result<(), WalError> {
    for record in batch.iter().flat_map(|job| &job.records) {
        if wal.is_full() {
            wal.rotate()?;
            for head in tracker.head() {
                wal.write(&head)?;
                tracker.observe(wal.current_segment(), &head);
            }
        }
        wal.write(record)?;
        tracker.observe(wal.current_segment(), record);
    }
    if batch.iter().all(|job| job.done.is_none()) {
        return Ok(());
    }
    wal.sync()?;
    for removed in wal.remove_segments(|segment| tracker.disposable(segment))? {
        tracker.forget(removed);
    }
    Ok(())
}
