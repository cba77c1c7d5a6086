//! A simulated [`Disk`] for tests: it loses at a crash exactly what the disk contract allows.
//!
//! Each file keeps its current bytes and its durable bytes (a copy taken at the last
//! `sync_data`). Creating and removing files is durable at once (the real disk syncs the
//! directory before returning). At a crash the disk dies: every later call on it fails, the way
//! a process stops at a power cut. [`SimDisk::reboot`] then builds the disk as it would be found
//! after power returns: each file holds its durable bytes, with, over the region that changed
//! since its last sync (from the first byte that differs to the end of the file), a torn prefix
//! of the unsynced bytes, some of which may be garbage (a sector that was half written, or
//! written out of order). A file that only shrank keeps its durable bytes. This is how
//! TigerBeetle and FoundationDB model storage faults, reduced to what a log needs.
//!
//! CAVEATS: it does not model lost or misdirected writes to synced data (bit rot, firmware
//! bugs), nor a directory sync that lies; those are corruption, which the WAL reports, and no
//! recovery can hide them.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

use super::disk::Disk;

#[derive(Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    dead: bool,
    /// Mutating calls left before the disk dies on its own; `None` is no planned crash.
    ops_left: Option<u64>,
}

/// A simulated disk; clones share the same files.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

fn crashed() -> io::Error {
    io::Error::other("the simulated disk crashed")
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, mutating: bool, f: impl FnOnce(&mut SimState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.state.lock().expect("the sim disk lock is never poisoned");
        if state.dead {
            return Err(crashed());
        }
        if mutating {
            if let Some(left) = state.ops_left.as_mut() {
                if *left == 0 {
                    state.dead = true;
                    return Err(crashed());
                }
                *left -= 1;
            }
        }
        f(&mut state)
    }

    /// Kills the disk now.
    pub fn crash(&self) {
        self.state.lock().expect("the sim disk lock is never poisoned").dead = true;
    }

    /// Kills the disk after `ops` more mutating calls (append, write_at, truncate, sync, create,
    /// remove).
    pub fn crash_after(&self, ops: u64) {
        self.state.lock().expect("the sim disk lock is never poisoned").ops_left = Some(ops);
    }

    /// The disk as found after power returns (see the module docs); `seed` picks what of the
    /// unsynced bytes survives. The old handle stays dead.
    pub fn reboot(&self, seed: u64) -> SimDisk {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut state = self.state.lock().expect("the sim disk lock is never poisoned");
        state.dead = true;
        let mut files = BTreeMap::new();
        for (name, file) in &state.files {
            let mut bytes = file.durable.clone();
            let start = file.data.iter().zip(&bytes).take_while(|(a, b)| a == b).count();
            let changed = file.data.len() > start;
            if changed && rng.gen_bool(0.5) {
                let unsynced = &file.data[start..];
                let kept = rng.gen_range(0..=unsynced.len());
                let end = start + kept;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[start..end].copy_from_slice(&unsynced[..kept]);
                if kept > 0 && rng.gen_bool(0.3) {
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(start..end);
                        bytes[at] = rng.gen();
                    }
                }
            }
            let file = SimFile {
                data: bytes.clone(),
                durable: bytes,
            };
            files.insert(name.clone(), file);
        }
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                files,
                dead: false,
                ops_left: None,
            })),
        }
    }

    /// Overwrites one byte of durable data, to test how corruption is reported.
    pub fn corrupt(&self, name: &str, offset: usize) {
        let mut state = self.state.lock().expect("the sim disk lock is never poisoned");
        let file = state.files.get_mut(name).expect("the file to corrupt exists");
        file.data[offset] ^= 0xff;
        file.durable = file.data.clone();
    }
}

fn missing(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name} on the simulated disk"))
}

impl Disk for SimDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        self.with(false, |s| Ok(s.files.keys().cloned().collect()))
    }

    fn create(&self, name: &str) -> io::Result<()> {
        self.with(true, |s| {
            if s.files.contains_key(name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_string()));
            }
            s.files.insert(name.to_string(), SimFile::default());
            Ok(())
        })
    }

    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.with(true, |s| {
            let file = s.files.get_mut(name).ok_or_else(|| missing(name))?;
            file.data.extend_from_slice(bytes);
            Ok(())
        })
    }

    fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.with(true, |s| {
            let file = s.files.get_mut(name).ok_or_else(|| missing(name))?;
            let (start, end) = (offset as usize, offset as usize + bytes.len());
            if file.data.len() < end {
                file.data.resize(end, 0);
            }
            file.data[start..end].copy_from_slice(bytes);
            Ok(())
        })
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(false, |s| {
            let file = s.files.get(name).ok_or_else(|| missing(name))?;
            let start = offset as usize;
            let Some(bytes) = file.data.get(start..start + buf.len()) else {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
            };
            buf.copy_from_slice(bytes);
            Ok(())
        })
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.with(false, |s| {
            Ok(s.files.get(name).ok_or_else(|| missing(name))?.data.len() as u64)
        })
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with(true, |s| {
            let file = s.files.get_mut(name).ok_or_else(|| missing(name))?;
            file.data.truncate(len as usize);
            Ok(())
        })
    }

    fn sync_data(&self, name: &str) -> io::Result<()> {
        self.with(true, |s| {
            let file = s.files.get_mut(name).ok_or_else(|| missing(name))?;
            file.durable = file.data.clone();
            Ok(())
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.with(true, |s| s.files.remove(name).map(|_| ()).ok_or_else(|| missing(name)))
    }
}
