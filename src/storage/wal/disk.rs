//! The file operations the WAL needs, as a trait, with the real implementation on `std::fs`.
//!
//! A [`Disk`] is one directory of flat files. Every operation that changes the directory
//! (create, remove) syncs the directory before it returns, so a file that was created is still
//! there after a power cut and a file that was removed stays removed. File contents are durable
//! only after [`Disk::sync_data`] (`fdatasync`). The simulated disk in `sim.rs` implements the
//! same trait and loses exactly what this contract allows.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A directory of files the WAL writes. Methods take `&self`; implementations lock inside.
pub trait Disk: Send + Sync + 'static {
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates an empty file (refusing an existing one) and syncs the directory.
    fn create(&self, name: &str) -> io::Result<()>;
    /// Appends bytes at the end of the file. Not durable until [`Disk::sync_data`].
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Writes bytes at `offset`, over what is there or past the end. Not durable until
    /// [`Disk::sync_data`].
    fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Current length of the file in bytes.
    fn len(&self, name: &str) -> io::Result<u64>;
    /// Cuts the file to `len` bytes. Not durable until [`Disk::sync_data`].
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable (`fdatasync`).
    fn sync_data(&self, name: &str) -> io::Result<()>;
    /// Removes the file and syncs the directory.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A [`Disk`] on a real directory. Open files are cached, one handle per file.
pub struct RealDisk {
    dir: PathBuf,
    files: Mutex<HashMap<String, Arc<File>>>,
}

impl RealDisk {
    /// Opens `dir`, creating it (mode 0700, and syncing its parent) when missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if !dir.exists() {
            crate::storage::create_private_dir(dir)?;
            sync_parent(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        })
    }

    fn file(&self, name: &str) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().expect("the file cache lock is never poisoned");
        if let Some(file) = files.get(name) {
            return Ok(file.clone());
        }
        // Not O_APPEND: Linux's pwrite ignores the offset of a file opened for appending.
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(self.dir.join(name))?);
        files.insert(name.to_string(), file.clone());
        Ok(file)
    }
}

/// fsyncs a directory, so entries created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the directory that holds `path` (the current directory for a bare name).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

impl Disk for RealDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        sync_dir(&self.dir)
    }

    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let file = self.file(name)?;
        file.write_all_at(bytes, file.metadata()?.len())
    }

    fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(bytes, offset)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(name)?.read_exact_at(buf, offset)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(self.file(name)?.metadata()?.len())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.file(name)?.set_len(len)
    }

    fn sync_data(&self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .lock()
            .expect("the file cache lock is never poisoned")
            .remove(name);
        std::fs::remove_file(self.dir.join(name))?;
        sync_dir(&self.dir)
    }
}
