//! Raft snapshots of the CP state machine as files, built without stopping applies and installed
//! without holding the state in memory.
//!
//! FORMAT. A snapshot file is the magic `CAPKVSN1`, then one frame per key of the state machine
//! (`u32` key length, key, `u32` value length, value; little-endian), then an end mark
//! (`u32::MAX`), the number of frames (`u64`) and a CRC-32 of every byte before the end mark.
//! The same bytes travel to followers in openraft's InstallSnapshot chunks; the receiver writes
//! them to a file and checks lengths and checksum while it loads.
//!
//! BUILDING WITHOUT A PAUSE. sled has no point-in-time read, so a snapshot is taken copy-on-write:
//! when openraft asks for a builder (between two applies) a [`Capture`] starts, and from then on
//! every apply first records the value each key it changes had before (its pre-image, the first
//! time only). The builder walks the live tree on a blocking thread while applies go on, and
//! writes for each key its pre-image when one was recorded, otherwise the value it read; at the
//! end it adds the recorded pre-images of keys that were deleted before the walk reached them.
//! A key the walk read before an apply changed it is written twice with the same value, which is
//! harmless. The result is the state at the moment the capture started. Memory holds only the
//! pre-images of keys changed while the snapshot is written.
//!
//! INSTALLING WITHOUT A GAP. A received snapshot is loaded in bounded batches into a fresh sled
//! tree (`sm.N`); only when it is complete and its checksum matched is the tree made durable and
//! the pointer to the current tree switched, in one sled batch with the pointer to the current
//! snapshot file. A crash before the switch leaves the old state and a stray tree, dropped at the
//! next start; readers never see a half-loaded state. The old tree is dropped a little later, so
//! reads already running on it finish.
//!
//! CAVEATS: a snapshot copies the whole state, so its cost (disk and time, not memory) grows with
//! the data; it is taken every `SNAPSHOT_EVERY_ENTRIES` applied entries.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::Error;

const MAGIC: &[u8; 8] = b"CAPKVSN1";
const END: u32 = u32::MAX;
/// Frames longer than these are damage, not data: sled keys of capkv are small and values are
/// bounded by the request limits.
const KEY_BYTES_MAX: usize = 64 * 1024;
const VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of keys and values per sled batch while a snapshot is loaded.
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Writes a snapshot file frame by frame.
pub struct FrameWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    frames: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(MAGIC);
        Ok(Self { out, crc, frames: 0 })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        for part in [key, value] {
            let len = (part.len() as u32).to_le_bytes();
            self.out.write_all(&len)?;
            self.out.write_all(part)?;
            self.crc.update(&len);
            self.crc.update(part);
        }
        self.frames += 1;
        Ok(())
    }

    /// Writes the end mark, the frame count and the checksum; returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        let crc = self.crc.finalize();
        self.out.write_all(&END.to_le_bytes())?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.write_all(&crc.to_le_bytes())?;
        Ok(self.out)
    }
}

fn damaged(why: impl std::fmt::Display) -> Error {
    Error::Storage(format!("the Raft snapshot is damaged: {why}"))
}

/// Reads every frame of a snapshot into `each`, checking lengths, the end mark, the frame count
/// and the checksum; returns the number of frames. `each` may have run for frames before a
/// damage is found: load into something that can be thrown away.
pub fn read_frames(
    input: impl Read,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut input = BufReader::new(input);
    let mut crc = crc32fast::Hasher::new();
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| damaged(format!("no header ({e})")))?;
    if &magic != MAGIC {
        return Err(damaged("it does not start with the snapshot header"));
    }
    crc.update(&magic);
    let mut frames = 0u64;
    loop {
        let len_bytes = read_array::<4>(&mut input, "frame")?;
        let key_len = u32::from_le_bytes(len_bytes);
        if key_len == END {
            break;
        }
        crc.update(&len_bytes);
        let key = read_part(&mut input, key_len as usize, KEY_BYTES_MAX, "key")?;
        crc.update(&key);
        let len_bytes = read_array::<4>(&mut input, "value length")?;
        crc.update(&len_bytes);
        let value = read_part(
            &mut input,
            u32::from_le_bytes(len_bytes) as usize,
            VALUE_BYTES_MAX,
            "value",
        )?;
        crc.update(&value);
        each(key, value)?;
        frames += 1;
    }
    let trailer = read_array::<12>(&mut input, "trailer")?;
    let count = u64::from_le_bytes(trailer[..8].try_into().expect("eight bytes"));
    let stored_crc = u32::from_le_bytes(trailer[8..].try_into().expect("four bytes"));
    if count != frames {
        return Err(damaged(format!("{frames} frames, but the trailer says {count}")));
    }
    if stored_crc != crc.finalize() {
        return Err(damaged("its checksum does not match"));
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest).map_err(|e| damaged(e.to_string()))? != 0 {
        return Err(damaged("bytes follow its trailer"));
    }
    Ok(frames)
}

/// Reads `N` bytes, or names the part the file ends inside.
fn read_array<const N: usize>(input: &mut impl Read, what: &str) -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    input
        .read_exact(&mut bytes)
        .map_err(|e| damaged(format!("it ends inside a {what} ({e})")))?;
    Ok(bytes)
}

/// Reads a key or value of `len` bytes, refusing one over `max` before allocating it.
fn read_part(input: &mut impl Read, len: usize, max: usize, what: &str) -> Result<Vec<u8>, Error> {
    if len > max {
        return Err(damaged(format!("a {what} of {len} bytes")));
    }
    let mut part = vec![0u8; len];
    input
        .read_exact(&mut part)
        .map_err(|e| damaged(format!("it ends inside a {what} ({e})")))?;
    Ok(part)
}

/// Pre-images of the keys changed since a snapshot began: `Some(None)` for a key that did not
/// exist then. Inactive (no memory, one lock per apply) when no snapshot is being written.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Option<PreImages>>>);

/// Key → the value it had when the capture started (`None`: it did not exist).
type PreImages = HashMap<Vec<u8>, Option<Vec<u8>>>;

impl Capture {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PreImages>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts recording; call between two applies.
    pub fn start(&self) {
        *self.lock() = Some(HashMap::new());
    }

    /// Stops recording and returns what was recorded.
    pub fn stop(&self) -> PreImages {
        self.lock().take().unwrap_or_default()
    }

    /// Before an apply writes `keys` to `tree`: records the values they have now, the first time.
    pub fn record<'k>(&self, tree: &sled::Tree, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), Error> {
        let mut guard = self.lock();
        let Some(map) = guard.as_mut() else {
            return Ok(());
        };
        for key in keys {
            if !map.contains_key(key) {
                map.insert(key.to_vec(), tree.get(key)?.map(|v| v.to_vec()));
            }
        }
        Ok(())
    }

    /// The value `key` had when the capture started, if an apply changed it since.
    fn pre_image(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.lock().as_ref().and_then(|m| m.get(key).cloned())
    }
}

/// Writes the state of `tree` as of `capture`'s start to `path` (fsynced); returns its size.
/// Applies may run meanwhile. Stops the capture.
pub fn write_snapshot(tree: &sled::Tree, capture: &Capture, path: &Path) -> Result<u64, Error> {
    let result = write_file(path, |out, io| {
        for kv in tree.iter() {
            let (key, value) = kv?;
            match capture.pre_image(&key) {
                Some(Some(pre)) => out.push(&key, &pre).map_err(io)?,
                Some(None) => {}
                None => out.push(&key, &value).map_err(io)?,
            }
        }
        // Keys deleted before the walk reached them; the others are written again, unchanged.
        let mut rest: Vec<_> = capture.stop().into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        rest.sort();
        for (key, value) in rest {
            out.push(&key, &value).map_err(io)?;
        }
        Ok(())
    });
    capture.stop();
    result
}

/// The writer [`write_file`] fills, and the error its IO failures become.
type FileFrames = FrameWriter<BufWriter<File>>;
type IoError<'a> = &'a dyn Fn(std::io::Error) -> Error;

/// Creates the snapshot file `path`, lets `fill` push its frames, then ends and fsyncs it;
/// returns its size.
pub fn write_file(
    path: &Path,
    fill: impl FnOnce(&mut FileFrames, IoError<'_>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let io = |e: std::io::Error| Error::Storage(format!("cannot write the snapshot {}: {e}", path.display()));
    let file = File::create(path).map_err(io)?;
    let mut out = FrameWriter::new(BufWriter::new(file)).map_err(io)?;
    fill(&mut out, &io)?;
    let file = out.finish().map_err(io)?.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(file.metadata().map_err(io)?.len())
}

/// Loads the snapshot read from `input` into the empty tree `tree` in bounded batches, and
/// copies its bytes to `copy` (the file it will be served from); returns the number of keys.
pub fn load_snapshot(tree: &sled::Tree, input: impl Read, copy: &Path) -> Result<u64, Error> {
    let io = |e: std::io::Error| Error::Storage(format!("cannot write the snapshot {}: {e}", copy.display()));
    let out = File::create(copy).map_err(io)?;
    let mut tee = Tee {
        input,
        out: BufWriter::new(out),
    };
    let mut batch = sled::Batch::default();
    let mut bytes = 0;
    let frames = read_frames(&mut tee, |key, value| {
        bytes += key.len() + value.len();
        batch.insert(key, value);
        if bytes >= LOAD_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch))?;
            bytes = 0;
        }
        Ok(())
    })?;
    tree.apply_batch(batch)?;
    let out = tee.out.into_inner().map_err(|e| io(e.into_error()))?;
    out.sync_all().map_err(io)?;
    Ok(frames)
}

/// Passes reads through and keeps a copy of every byte read.
struct Tee<R: Read, W: Write> {
    input: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The directory of snapshot files: the current one, one being built, one being received.
pub struct SnapshotDir {
    dir: PathBuf,
    /// Set for a temporary directory (tests): removed with this value.
    temporary: bool,
}

impl SnapshotDir {
    /// `<data-dir>/snapshots`, created (mode 0700) when missing; a temporary directory when the
    /// database has no data dir (tests).
    pub fn open(data_dir: Option<&Path>) -> Result<Self, Error> {
        let (dir, temporary) = match data_dir {
            Some(d) => (d.join("snapshots"), false),
            None => (
                std::env::temp_dir().join(format!(
                    "capkv-snapshots-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                )),
                true,
            ),
        };
        crate::storage::create_private_dir(&dir)
            .map_err(|e| Error::Storage(format!("cannot create the snapshot directory {}: {e}", dir.display())))?;
        Ok(Self { dir, temporary })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh name for a file being written (`prefix-<random>.tmp`).
    pub fn temp_name(&self, prefix: &str) -> String {
        format!("{prefix}-{:016x}.tmp", rand::random::<u64>())
    }

    /// Renames `from` to `to` inside the directory and makes the rename durable.
    pub fn publish(&self, from: &str, to: &str) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Storage(format!("cannot publish the snapshot {to}: {e}"));
        std::fs::rename(self.path(from), self.path(to)).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Removes every file but `keep` (stray temporary files, older snapshots).
    pub fn remove_all_but(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !keep.iter().any(|k| name == std::ffi::OsStr::new(k)) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old snapshot file");
                }
            }
        }
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn tree() -> sled::Tree {
        crate::storage::temporary_db().open_tree("t").unwrap()
    }

    fn file_of(frames: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new()).unwrap();
        for (k, v) in frames {
            w.push(k, v).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn frames_round_trip_and_any_damage_is_refused() {
        let bytes = file_of(&[(b"a", b"1"), (b"b", b""), (b"", b"3")]);
        let mut seen = Vec::new();
        let n = read_frames(bytes.as_slice(), |k, v| {
            seen.push((k, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen[1], (b"b".to_vec(), vec![]));
        for cut in 0..bytes.len() {
            assert!(read_frames(&bytes[..cut], |_, _| Ok(())).is_err(), "cut at {cut}");
        }
        for flip in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[flip] ^= 0x20;
            assert!(read_frames(bad.as_slice(), |_, _| Ok(())).is_err(), "flip at {flip}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_frames(longer.as_slice(), |_, _| Ok(())).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic the reader and never allocate beyond the frame limits.
        #[test]
        fn arbitrary_bytes_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut input = MAGIC.to_vec();
            input.extend(bytes);
            let _ = read_frames(input.as_slice(), |_, _| Ok(()));
        }

        /// A valid snapshot with bytes flipped, cut or appended is refused by the reader and by
        /// the loader (which a follower runs on what a leader sent), never a panic; when it is
        /// still accepted, the damage hit no byte the checksum covers.
        #[test]
        fn mutated_snapshots_are_refused_without_panic(
            frames in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..16), prop::collection::vec(any::<u8>(), 0..32)), 0..8),
            edits in prop::collection::vec((any::<usize>(), 1u8..), 1..4),
            keep in 0usize..512,
            extra in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let pairs: Vec<(&[u8], &[u8])> = frames.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let valid = file_of(&pairs);
            let mut bytes = valid.clone();
            for (at, xor) in &edits {
                let i = at % bytes.len();
                bytes[i] ^= xor;
            }
            bytes.truncate(keep);
            bytes.extend(&extra);
            let read = read_frames(bytes.as_slice(), |_, _| Ok(()));
            prop_assert!(read.is_err() || bytes == valid, "a damaged snapshot was accepted");
            let dir = tempfile::tempdir().unwrap();
            let loaded = load_snapshot(&tree(), bytes.as_slice(), &dir.path().join("copy"));
            prop_assert_eq!(loaded.is_ok(), read.is_ok());
        }

        /// A snapshot written while changes are applied shows exactly the state at its start.
        #[test]
        fn a_snapshot_shows_the_state_when_it_began(
            before in prop::collection::btree_map(0u8..40, any::<u8>(), 0..30),
            changes in prop::collection::vec((0u8..40, prop::option::of(any::<u8>())), 0..40),
        ) {
            let t = tree();
            for (k, v) in &before {
                t.insert([*k], vec![*v]).unwrap();
            }
            let capture = Capture::default();
            capture.start();
            for (k, v) in &changes {
                capture.record(&t, [[*k].as_slice()]).unwrap();
                match v {
                    Some(v) => t.insert([*k], vec![*v]).unwrap(),
                    None => t.remove([*k]).unwrap(),
                };
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            write_snapshot(&t, &capture, &path).unwrap();
            let loaded = tree();
            load_snapshot(&loaded, File::open(&path).unwrap(), &dir.path().join("copy")).unwrap();
            prop_assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(dir.path().join("copy")).unwrap());
            let got: BTreeMap<u8, u8> = loaded.iter().map(|kv| { let (k, v) = kv.unwrap(); (k[0], v[0]) }).collect();
            prop_assert_eq!(got, before);
            prop_assert!(capture.pre_image(&[0]).is_none(), "the capture stopped");
        }
    }

    /// The same with the changes applied by another thread while the snapshot is written: the
    /// walk meets keys before, during and after their changes.
    #[test]
    fn a_snapshot_written_during_applies_shows_the_state_when_it_began() {
        let t = tree();
        let before: BTreeMap<Vec<u8>, Vec<u8>> = (0..20_000u32)
            .filter(|i| i % 3 != 0)
            .map(|i| (i.to_be_bytes().to_vec(), (i * 7).to_le_bytes().to_vec()))
            .collect();
        for (k, v) in &before {
            t.insert(k, v.clone()).unwrap();
        }
        let capture = Capture::default();
        capture.start();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (t, capture, stop) = (t.clone(), capture.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545_f491u32;
                let mut applied = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || applied < 1000 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let key = (x % 20_000).to_be_bytes();
                    capture.record(&t, [key.as_slice()]).unwrap();
                    if x % 4 == 0 {
                        t.remove(key).unwrap();
                    } else {
                        t.insert(key, x.to_le_bytes().to_vec()).unwrap();
                    }
                    applied += 1;
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_snapshot(&t, &capture, &path).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        let loaded = tree();
        load_snapshot(&loaded, File::open(&path).unwrap(), &dir.path().join("copy")).unwrap();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = loaded
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        assert!(got == before, "the snapshot differs from the state when it began");
    }
}
