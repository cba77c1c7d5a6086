//! The storage engine under both paths: one sled database per node, opened with an explicit
//! cache size, and the group-commit [`Flusher`] every durable write goes through.
//!
//! Each path keeps its own trees in this database: the CP path its Raft log, Raft metadata,
//! state machine and snapshot (`cp/log_store.rs`, `cp/state_machine.rs`), the AP path its data
//! and hints (`ap/store.rs`). [`codec`] is the one encoding of records on disk and on the wire.
//!
//! CAVEATS
//!
//! - sled is used directly by the stores; another engine means new store implementations (the
//!   boundary is openraft's storage traits on the CP side and `ApStore` on the AP side).

pub mod codec;

use std::path::Path;

use crate::error::Error;
use crate::limits::SLED_CACHE_BYTES;

/// Opens (or creates) the node's database under `dir`.
pub fn open(dir: &Path) -> Result<sled::Db, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::InvalidInput(format!("cannot create the data dir {}: {e}", dir.display())))?;
    sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(SLED_CACHE_BYTES)
        .open()
        .map_err(|e| open_error(dir, e))
}

fn open_error(dir: &Path, err: sled::Error) -> Error {
    let text = err.to_string();
    if text.contains("lock") {
        return Error::Refused(format!(
            "the data dir {} is in use by another capkv node (its database is locked); stop that node or choose another --data-dir",
            dir.display()
        ));
    }
    Error::Internal(format!("cannot open the database in {}: {text}", dir.display()))
}

/// Group commit: makes writes durable with as few fsyncs as possible, one at a time.
///
/// A caller that has written asks for a flush; if a flush started after its write has finished
/// meanwhile, it is done without another fsync. Flushes run on tokio's blocking pool with sled's
/// synchronous `flush`: many concurrent `flush_async` calls can exhaust sled 0.34's own thread
/// pool and hang it (seen here), so capkv never uses `flush_async`.
#[derive(Clone)]
pub struct Flusher {
    db: sled::Db,
    state: std::sync::Arc<FlushState>,
}

struct FlushState {
    /// Incremented by every flush request, after the caller's write.
    requested: std::sync::atomic::AtomicU64,
    /// The highest request number known to be on disk.
    durable: std::sync::atomic::AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Flusher {
    pub fn new(db: sled::Db) -> Self {
        let state = FlushState {
            requested: 0.into(),
            durable: 0.into(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        };
        Self {
            db,
            state: std::sync::Arc::new(state),
        }
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Returns once everything written before the call is on disk.
    pub async fn flush(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.state.requested.fetch_add(1, SeqCst) + 1;
        let _turn = self.state.one_at_a_time.lock().await;
        if self.state.durable.load(SeqCst) >= mine {
            return Ok(());
        }
        let covers = self.state.requested.load(SeqCst);
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(std::io::Error::other)?
            .map(|_| ())
            .map_err(std::io::Error::other);
        metrics::histogram!("capkv_sled_flush_seconds").record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            self.state.durable.fetch_max(covers, SeqCst);
        }
        result
    }
}
