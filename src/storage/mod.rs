//! The storage engines under both paths: the write-ahead log [`wal`] that holds the Raft log
//! (`<data-dir>/wal/`), and one sled database per node (`<data-dir>/db/`), opened with an
//! explicit cache size, with the group-commit [`Flusher`] that makes its writes durable.
//!
//! The CP path keeps its state machine and snapshot in sled (`cp/state_machine.rs`) and its
//! Raft log in the WAL (`cp/log_store.rs`); the AP path keeps its data and hints in sled
//! (`ap/store.rs`). [`codec`] is the one encoding of records on disk and on the wire.
//!
//! CAVEATS
//!
//! - sled is used directly by the stores; another engine means new store implementations (the
//!   boundary is openraft's storage traits on the CP side and `ApStore` on the AP side).

pub mod codec;
pub mod wal;

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::limits::SLED_CACHE_BYTES;

/// Creates `dir` and any missing parents with mode 0700 (before the umask): a node's data is
/// readable only by the user who runs it. Directories that exist keep their mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens (or creates, mode 0700) the node's database under `dir`.
pub fn open(dir: &Path) -> Result<sled::Db, Error> {
    if !dir.exists() {
        create_private_dir(dir)
            .and_then(|()| wal::disk::sync_parent(dir))
            .map_err(|e| Error::InvalidInput(format!("cannot create the data dir {}: {e}", dir.display())))?;
    }
    // sled would create its directory with the umask's mode; make it first.
    create_private_dir(&dir.join("db"))
        .map_err(|e| Error::InvalidInput(format!("cannot create the database dir in {}: {e}", dir.display())))?;
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

/// Group commit: makes sled's writes durable with as few syncs as possible, one at a time.
///
/// A caller that has written asks for a flush; if a flush started after its write has finished
/// meanwhile, it is done without another one. A flush is sled's `flush` (it writes sled's
/// buffers and calls only `sync_file_range`, which does not make data durable) followed by an
/// `fsync` of every file in sled's directory and of the directory itself, which does. Flushes
/// run on tokio's blocking pool with sled's synchronous `flush`: many concurrent `flush_async`
/// calls can exhaust sled 0.34's own thread pool and hang it (seen here), so capkv never uses
/// `flush_async`.
///
/// The CP state machine flushes only when it builds or installs a snapshot (before the Raft
/// log is purged behind it); the AP store flushes every write batch before acknowledging it.
#[derive(Clone)]
pub struct Flusher {
    db: sled::Db,
    /// sled's directory, whose files are fsynced; `None` for a temporary database (tests),
    /// whose flushes cannot be durable.
    sled_dir: Option<PathBuf>,
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
    /// A flusher for a temporary database (tests): sled's flush only, nothing to fsync.
    pub fn new(db: sled::Db) -> Self {
        Self::with_dir(db, None)
    }

    /// A flusher for the database [`open`] opened under `data_dir`: flushes fsync its files.
    pub fn durable(db: sled::Db, data_dir: &Path) -> Self {
        Self::with_dir(db, Some(data_dir.join("db")))
    }

    fn with_dir(db: sled::Db, sled_dir: Option<PathBuf>) -> Self {
        let state = FlushState {
            requested: 0.into(),
            durable: 0.into(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        };
        Self {
            db,
            sled_dir,
            state: std::sync::Arc::new(state),
        }
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The node's data dir, when this flusher belongs to one.
    pub fn data_dir(&self) -> Option<&Path> {
        self.sled_dir.as_deref().and_then(Path::parent)
    }

    /// Returns once everything written before the call is on stable storage.
    pub async fn flush(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.state.requested.fetch_add(1, SeqCst) + 1;
        let _turn = self.state.one_at_a_time.lock().await;
        if self.state.durable.load(SeqCst) >= mine {
            return Ok(());
        }
        let covers = self.state.requested.load(SeqCst);
        let db = self.db.clone();
        let sled_dir = self.sled_dir.clone();
        let result = tokio::task::spawn_blocking(move || flush_and_sync(&db, sled_dir.as_deref()))
            .await
            .map_err(std::io::Error::other)?;
        if result.is_ok() {
            self.state.durable.fetch_max(covers, SeqCst);
        }
        result
    }
}

/// sled's flush, then an fsync of each of its files and directories.
fn flush_and_sync(db: &sled::Db, sled_dir: Option<&Path>) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    db.flush().map_err(std::io::Error::other)?;
    metrics::histogram!("capkv_sled_flush_seconds").record(started.elapsed().as_secs_f64());
    let Some(dir) = sled_dir else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    fsync_tree(dir)?;
    metrics::histogram!("capkv_sled_fsync_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// fsyncs every file under `dir`, then `dir` itself. sled may remove a file (an old snapshot of
/// its page table) while we walk; a file that is gone needs no sync.
fn fsync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let outcome = if entry.file_type()?.is_dir() {
            fsync_tree(&path)
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all())
        };
        match outcome {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    wal::disk::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_and_its_parents_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cluster").join("node-1");
        let db = open(&dir).unwrap();
        drop(db);
        assert_eq!(mode(&dir), 0o700, "the data dir");
        assert_eq!(mode(&root.path().join("cluster")), 0o700, "a parent it created");
        assert_eq!(mode(&dir.join("db")), 0o700, "sled's directory inside");
    }
}
