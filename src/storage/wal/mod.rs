//! A write-ahead log: an append-only sequence of records in segment files, made durable with
//! group commit. It knows nothing about Raft; `cp/log_store.rs` gives the records meaning.
//!
//! FORMAT. The log is a directory of segment files named by the sequence number of their first
//! record (`00000000000000000042.wal`). A record is framed as
//! `length: u32 LE | crc32: u32 LE | payload`, the checksum (CRC-32, IEEE) covering the length
//! bytes and the payload. A segment is closed once it reaches [`SEGMENT_BYTES_MAX`]: it is
//! synced, and the next record goes to a new segment whose creation is made durable by a sync
//! of the directory. So only the last segment can ever hold unsynced bytes.
//!
//! ZEROED SPACE. A segment file is kept [`WalOptions::zeroed_bytes`] ahead of its records with
//! zeros that were written (not a hole, not `fallocate`d space), so an `fdatasync` of records
//! written over them changes no file metadata: ext4 then writes the data and flushes the disk
//! without committing its journal, which took 10-20% off a sync in interleaved cluster runs on
//! this project's test machine. Only the sync that also writes the next chunk of zeros (once per
//! chunk) grows the file. A segment therefore ends in zeros: after its last record, a run of zero
//! bytes to the end of the file is a clean end (no record has length 0).
//!
//! RECOVERY. [`Wal::open`] reads every segment in order and hands each record to the caller.
//! Where the bytes from a record's start to the end of the file are all zeros, the segment ends
//! cleanly (the zeroed space). Otherwise, in the last segment, the first record whose length is
//! impossible or whose checksum fails is a torn write from a crash: it and everything after it
//! were never acknowledged, so the file is cut there (and synced) and they are never returned.
//! The same fault in an older segment, or a gap between segment numbers, cannot come from a
//! crash (those segments were synced whole before the next one existed): it is corruption,
//! reported as [`WalError::Corrupt`] and never repaired silently.
//!
//! GROUP COMMIT. [`writer::Writer`] owns the log on a dedicated thread. Callers hand it batches
//! of records; it takes everything queued, writes it with one `write` per segment (and, once per
//! chunk, one more for the next zeros), calls one `fdatasync`, and only then tells each caller
//! that its records are durable. Many concurrent writers therefore share one sync. Tokio worker
//! threads never wait for the disk.
//!
//! [`disk::Disk`] is the file system the log sees; [`sim::SimDisk`] (tests only) loses at a
//! crash exactly what that contract allows, to test recovery.
//!
//! CAVEATS
//!
//! - Segments are read whole during recovery (up to [`SEGMENT_BYTES_MAX`] at a time).
//! - After a failed write or sync the log refuses all further writes (the state of the file is
//!   unknown, and retrying an `fdatasync` can report success for lost data); the node must be
//!   restarted, and recovery then finds what really reached the disk.
//! - CRC-32 detects torn and garbled writes; it is not a defence against deliberate tampering.
//! - A capkv from before zeroed space reads a log written since, until its first segment is
//!   closed; after that it takes the zeros that end a closed segment for corruption and refuses
//!   to start. Logs written before are read as they are.

pub mod disk;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;
pub mod writer;

use std::io;
use std::sync::Arc;

use disk::Disk;

/// Size at which a segment is closed and a new one started. Large enough that rotation (one
/// extra sync of the directory) is rare, small enough that a purged segment frees space soon.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Largest record payload. A Raft entry is at most a few MiB (see `limits.rs`); a larger length
/// read back during recovery can only be a torn or garbled header.
pub const RECORD_BYTES_MAX: usize = 32 * 1024 * 1024;

const HEADER_BYTES: usize = 8;

/// A write plus sync slower than this is logged: Raft's AppendEntries waits for it, and
/// openraft gives one AppendEntries a heartbeat interval (200 ms by default).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);
const SEGMENT_SUFFIX: &str = ".wal";

/// What went wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O failed ({what}): {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the write-ahead log is corrupt: segment {segment} at byte {offset}: {why}. This is not a torn write \
         from a crash (that segment was fully synced); the disk lost or changed data. Restore this node from \
         its peers: stop it, move its data dir away and start it empty"
    )]
    Corrupt { segment: String, offset: u64, why: String },
    #[error("a write-ahead log record of {0} bytes is over the limit of {RECORD_BYTES_MAX} bytes")]
    TooLarge(usize),
    #[error("the write-ahead log refused a record while recovering: {0}")]
    Rejected(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> WalError {
    let what = what.into();
    move |source| WalError::Io { what, source }
}

/// Zeros written ahead of the records, per chunk (see ZEROED SPACE in the module docs): the file
/// grows, and a sync commits ext4's journal, once per this many bytes of records.
pub const ZEROED_BYTES: u64 = 1024 * 1024;

/// Options of a log; tests use small segments and chunks to exercise rotation and zeroing.
#[derive(Clone, Debug)]
pub struct WalOptions {
    pub segment_bytes_max: u64,
    /// Chunk of zeros written ahead of the records; 0 writes none (every sync grows the file).
    pub zeroed_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            zeroed_bytes: ZEROED_BYTES,
        }
    }
}

/// The name of the segment whose first record has sequence number `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Frames one record: length, checksum of length and payload, payload.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The next record in `bytes` at `offset`: its payload range, or why there is none.
fn unframe(bytes: &[u8], offset: usize) -> Result<std::ops::Range<usize>, String> {
    let Some(header) = bytes.get(offset..offset + HEADER_BYTES) else {
        return Err("a record header is cut short".into());
    };
    let len_bytes: [u8; 4] = header[..4].try_into().expect("four bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("four bytes"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err(format!("a record length of {len} bytes is impossible"));
    }
    let start = offset + HEADER_BYTES;
    let Some(payload) = bytes.get(start..start + len) else {
        return Err(format!("a record of {len} bytes is cut short"));
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err("a record's checksum does not match".into());
    }
    Ok(start..start + len)
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    first_seq: u64,
    /// Bytes of records (buffered ones included).
    bytes: u64,
    /// Length of the file: the records written, then zeros.
    file_len: u64,
}

/// An open log: the segments on disk, and framed records not yet written to the last one.
pub struct Wal {
    disk: Arc<dyn Disk>,
    options: WalOptions,
    segments: Vec<Segment>,
    next_seq: u64,
    /// Framed records not yet handed to the disk (one `write` at the next sync).
    buffer: Vec<u8>,
    /// Whether the last segment has bytes written since its last sync.
    unsynced: bool,
}

impl Wal {
    /// Opens the log on `disk`, calling `visit(segment_first_seq, payload)` for every record in
    /// order (see RECOVERY in the module docs). A fresh disk gets its first segment.
    pub fn open(
        disk: Arc<dyn Disk>,
        options: WalOptions,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Wal, WalError> {
        let mut firsts: Vec<u64> = disk
            .list()
            .map_err(io_err("listing segments"))?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        firsts.sort_unstable();
        let mut wal = Wal {
            disk,
            options,
            segments: Vec::new(),
            next_seq: firsts.first().copied().unwrap_or(0),
            buffer: Vec::new(),
            unsynced: false,
        };
        for (i, first_seq) in firsts.iter().enumerate() {
            let last = i + 1 == firsts.len();
            wal.recover_segment(*first_seq, last, &mut visit)?;
        }
        if wal.segments.is_empty() {
            wal.create_segment()?;
        }
        Ok(wal)
    }

    fn recover_segment(
        &mut self,
        first_seq: u64,
        last: bool,
        visit: &mut impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), WalError> {
        let name = segment_name(first_seq);
        let corrupt = |offset: u64, why: String| WalError::Corrupt {
            segment: name.clone(),
            offset,
            why,
        };
        if first_seq != self.next_seq {
            return Err(corrupt(
                0,
                format!(
                    "it starts at record {first_seq} but the segment before it ends at record {}",
                    self.next_seq
                ),
            ));
        }
        let len = self.disk.len(&name).map_err(io_err(format!("reading {name}")))?;
        let mut bytes = vec![0; len as usize];
        self.disk
            .read_at(&name, 0, &mut bytes)
            .map_err(io_err(format!("reading {name}")))?;
        let mut offset = 0;
        while offset < bytes.len() {
            if bytes[offset..].iter().all(|b| *b == 0) {
                break; // the zeroed space after the last record
            }
            match unframe(&bytes, offset) {
                Ok(payload) => {
                    visit(first_seq, &bytes[payload.clone()]).map_err(WalError::Rejected)?;
                    self.next_seq += 1;
                    offset = payload.end;
                }
                Err(why) if !last => return Err(corrupt(offset as u64, why)),
                Err(why) => {
                    tracing::warn!(segment = %name, offset, %why, "dropping the torn tail of the write-ahead log");
                    self.cut(&name, offset as u64)?;
                    bytes.truncate(offset);
                    break;
                }
            }
        }
        self.segments.push(Segment {
            first_seq,
            bytes: offset as u64,
            file_len: bytes.len() as u64,
        });
        Ok(())
    }

    fn cut(&mut self, name: &str, len: u64) -> Result<(), WalError> {
        self.disk
            .truncate(name, len)
            .map_err(io_err(format!("cutting the torn tail of {name}")))?;
        self.disk
            .sync_data(name)
            .map_err(io_err(format!("syncing {name} after cutting its torn tail")))
    }

    fn create_segment(&mut self) -> Result<(), WalError> {
        let name = segment_name(self.next_seq);
        self.disk
            .create(&name)
            .map_err(io_err(format!("creating segment {name}")))?;
        self.segments.push(Segment {
            first_seq: self.next_seq,
            bytes: 0,
            file_len: 0,
        });
        Ok(())
    }

    fn current(&self) -> &Segment {
        self.segments.last().expect("an open log has a segment")
    }

    /// The sequence number of the first record of the segment the next record goes to.
    pub fn current_segment(&self) -> u64 {
        self.current().first_seq
    }

    /// First sequence numbers of all segments, oldest first.
    pub fn segments(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.first_seq).collect()
    }

    /// Whether the current segment is full (the caller rotates before writing more).
    pub fn is_full(&self) -> bool {
        self.current().bytes >= self.options.segment_bytes_max
    }

    /// Buffers one record for the current segment and returns its sequence number. It is on
    /// disk only after [`Wal::sync`].
    pub fn write(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        let before = self.buffer.len();
        frame(payload, &mut self.buffer);
        let framed = (self.buffer.len() - before) as u64;
        self.segments.last_mut().expect("an open log has a segment").bytes += framed;
        self.unsynced = true;
        self.next_seq += 1;
        Ok(self.next_seq - 1)
    }

    /// Writes the buffered records and makes the current segment durable (one `fdatasync`).
    /// Does nothing when nothing was written since the last sync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let name = segment_name(self.current_segment());
        let started = std::time::Instant::now();
        let bytes = self.buffer.len();
        if !self.buffer.is_empty() {
            let zeroed = self.options.zeroed_bytes;
            let segment = self.segments.last_mut().expect("an open log has a segment");
            let end = segment.bytes;
            self.disk
                .write_at(&name, end - bytes as u64, &self.buffer)
                .map_err(io_err(format!("writing to {name}")))?;
            segment.file_len = segment.file_len.max(end);
            self.buffer.clear();
            if zeroed > 0 && segment.file_len <= end {
                // The records reached the end of the zeros: write the next chunk (see ZEROED SPACE).
                let to = (end / zeroed + 1) * zeroed;
                self.disk
                    .append(&name, &vec![0; (to - end) as usize])
                    .map_err(io_err(format!("zeroing space ahead in {name}")))?;
                segment.file_len = to;
            }
        }
        if self.unsynced {
            let synced = std::time::Instant::now();
            self.disk
                .sync_data(&name)
                .map_err(io_err(format!("fdatasync of {name}")))?;
            metrics::histogram!("capkv_wal_fdatasync_seconds").record(synced.elapsed().as_secs_f64());
            self.unsynced = false;
        }
        let took = started.elapsed();
        if took >= SLOW_SYNC {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                bytes,
                "slow write-ahead log sync: the disk is busy or slow, and Raft waits for it"
            );
        }
        Ok(())
    }

    /// Closes the current segment (synced) and starts a new one.
    pub fn rotate(&mut self) -> Result<(), WalError> {
        self.sync()?;
        self.create_segment()
    }

    /// Removes, oldest first, every segment except the current one for which `disposable`
    /// says yes, stopping at the first it says no to. Returns the removed segments.
    pub fn remove_segments(&mut self, disposable: impl Fn(u64) -> bool) -> Result<Vec<u64>, WalError> {
        let mut removed = Vec::new();
        while self.segments.len() > 1 && disposable(self.segments[0].first_seq) {
            let first_seq = self.segments[0].first_seq;
            let name = segment_name(first_seq);
            self.disk
                .remove(&name)
                .map_err(io_err(format!("removing segment {name}")))?;
            self.segments.remove(0);
            removed.push(first_seq);
        }
        Ok(removed)
    }
}
