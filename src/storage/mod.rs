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

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Times a flush lets the runtime's other runnable tasks go first once it holds the turn, so
/// their writes share it. With each node on one worker thread, in six interleaved pairs of ap
/// put runs at concurrency 64, 4 yields beat none five times (by 2-19%) and lost once (by 11%);
/// 1 and 16 were mixed (ahead and behind by up to 17%).
const FLUSH_YIELDS: usize = 4;

/// Group commit: makes sled's writes durable with as few syncs as possible, one at a time.
///
/// A caller that has written asks for a flush; if a flush started after its write has finished
/// meanwhile, it is done without another one. A flush is sled's `flush` (it writes sled's
/// buffers and calls only `sync_file_range`, which does not make data durable) followed by an
/// `fdatasync` of sled's log and an `fsync` of whatever else in its directory changed
/// ([`SyncedFiles`]), which does. Flushes
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
    /// What the flushes synced so far (with `sled_dir`).
    synced: Option<Arc<Mutex<SyncedFiles>>>,
    state: Arc<FlushState>,
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
            synced: sled_dir.clone().map(|dir| Arc::new(Mutex::new(SyncedFiles::new(dir)))),
            sled_dir,
            state: Arc::new(state),
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
        // Tasks already runnable (requests read off connections, pushes from peers) get to
        // write and join this flush before it starts, instead of waiting for the next one.
        for _ in 0..FLUSH_YIELDS {
            tokio::task::yield_now().await;
        }
        let covers = self.state.requested.load(SeqCst);
        let db = self.db.clone();
        let synced = self.synced.clone();
        let result = tokio::task::spawn_blocking(move || flush_and_sync(&db, synced.as_deref()))
            .await
            .map_err(std::io::Error::other)?;
        if result.is_ok() {
            self.state.durable.fetch_max(covers, SeqCst);
        }
        result
    }
}

/// sled's flush, then a sync of what it changed ([`SyncedFiles`]).
fn flush_and_sync(db: &sled::Db, synced: Option<&std::sync::Mutex<SyncedFiles>>) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    db.flush().map_err(std::io::Error::other)?;
    metrics::histogram!("capkv_sled_flush_seconds").record(started.elapsed().as_secs_f64());
    let Some(synced) = synced else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    synced.lock().expect("the synced-files lock is never poisoned").sync()?;
    metrics::histogram!("capkv_sled_fsync_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// What a flush syncs after sled's own `flush`, kept between flushes so a flush syncs only what
/// changed.
///
/// sled 0.34 rewrites only its log file (`db`) in place. Every other file it writes under a new
/// name: `conf` once when the database is created, snapshots as `snap.*.generating` renamed to
/// `snap.*` (synced by sled before the rename), and a blob per large value (`blobs/<lsn>`,
/// written and never synced by sled). So a flush fdatasyncs the log through a handle it keeps
/// open, fsyncs any other file whose size differs from when it was last synced (one created
/// since, or one still being written when it was last seen), and fsyncs a directory when names
/// in it came or went. The first flush syncs everything; a file sled removed needs nothing.
/// One sync of the log is one write barrier on the disk, where syncing every file and directory
/// was five.
struct SyncedFiles {
    /// sled's directory.
    dir: PathBuf,
    /// sled's log, opened by the first flush.
    log: Option<std::fs::File>,
    /// Every directory under `dir` (itself included) with the names it held when last synced.
    dirs: HashMap<PathBuf, BTreeSet<OsString>>,
    /// Every file but the log, with its size when last synced.
    files: HashMap<PathBuf, u64>,
}

impl SyncedFiles {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            log: None,
            dirs: HashMap::new(),
            files: HashMap::new(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("db")
    }

    /// Makes everything sled wrote durable; returns the files and directories it synced besides
    /// the log. What it learns is kept only when every sync succeeded, so a failed flush is
    /// redone whole by the next one.
    fn sync(&mut self) -> std::io::Result<Vec<PathBuf>> {
        if self.log.is_none() {
            self.log = Some(std::fs::File::open(self.log_path())?);
        }
        if let Some(log) = &self.log {
            log.sync_data()?;
        }
        let (mut dirs, mut files, mut synced) = (HashMap::new(), HashMap::new(), Vec::new());
        self.sync_tree(&self.dir, &mut dirs, &mut files, &mut synced)?;
        self.dirs = dirs;
        self.files = files;
        Ok(synced)
    }

    /// Syncs what changed under `dir` and records what it holds now in `dirs` and `files`.
    fn sync_tree(
        &self,
        dir: &Path,
        dirs: &mut HashMap<PathBuf, BTreeSet<OsString>>,
        files: &mut HashMap<PathBuf, u64>,
        synced: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let log = self.log_path();
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let metadata = match entry.metadata() {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            if metadata.is_dir() {
                match self.sync_tree(&path, dirs, files, synced) {
                    Err(e) if gone(&e) => continue,
                    other => other?,
                }
            } else if path != log {
                let size = metadata.len();
                if self.files.get(&path) != Some(&size) {
                    match std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                        Err(e) if gone(&e) => continue,
                        other => other?,
                    }
                    synced.push(path.clone());
                }
                files.insert(path, size);
            }
            names.insert(entry.file_name());
        }
        if self.dirs.get(dir) != Some(&names) {
            wal::disk::sync_dir(dir)?;
            synced.push(dir.to_path_buf());
        }
        dirs.insert(dir.to_path_buf(), names);
        Ok(())
    }
}

/// A sled database for a test, removed when its last handle is dropped (sled's `temporary`),
/// in a directory of this test process under `/dev/shm`.
///
/// A test that leaks a handle keeps its database until the process ends, and sled's own
/// temporary databases (`/dev/shm/pagecache.tmp.*`) then stay in memory for good: runs of the
/// unit tests had left 22 GB of them on this machine. Here each test process keeps its databases
/// under `capkv-test-<pid>`, and the first database a test process opens removes the
/// directories of test processes that are gone.
#[cfg(test)]
pub fn temporary_db() -> sled::Db {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let root = ROOT.get_or_init(|| {
        let base = Some(PathBuf::from("/dev/shm"))
            .filter(|shm| shm.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("capkv-test-"));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base.join(format!("capkv-test-{}", std::process::id()))
    });
    sled::Config::new()
        .temporary(true)
        .path(root.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string()))
        .open()
        .expect("a temporary sled database opens")
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

    /// Each flush syncs the log and exactly what changed since the last one: a new file and its
    /// directory, a file that grew after it was synced (a blob sled was still writing), a
    /// directory a file left; nothing else.
    #[test]
    fn a_flush_syncs_the_log_and_only_what_changed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let write = |name: &str, bytes: &[u8]| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap();
            f.write_all(bytes).unwrap();
        };
        std::fs::create_dir(dir.join("blobs")).unwrap();
        write("db", b"log");
        write("conf", b"conf");
        let mut synced = SyncedFiles::new(dir.clone());
        let mut sync = || {
            let mut paths: Vec<String> = synced
                .sync()
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
                .collect();
            paths.sort();
            paths
        };

        assert_eq!(sync(), ["", "blobs", "conf"], "the first flush syncs everything");
        write("db", b"more log");
        assert!(
            sync().is_empty(),
            "the log alone changed: it is synced through its handle"
        );

        write("blobs/7", b"half");
        assert_eq!(sync(), ["blobs", "blobs/7"], "a new blob and its directory");
        write("blobs/7", b" and the rest");
        assert_eq!(sync(), ["blobs/7"], "a blob that grew after it was synced");

        write("snap.1.generating", b"snapshot");
        assert_eq!(sync(), ["", "snap.1.generating"]);
        std::fs::rename(dir.join("snap.1.generating"), dir.join("snap.1")).unwrap();
        assert_eq!(
            sync(),
            ["", "snap.1"],
            "a rename is a new name, and the directory changed"
        );
        std::fs::remove_file(dir.join("snap.1")).unwrap();
        assert_eq!(sync(), [""], "a removal syncs the directory");
        assert!(sync().is_empty());
    }
}
