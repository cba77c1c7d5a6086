//! The public `Backup` service: a node's side of `capkv backup create` and `restore`.
//!
//! `Export` streams one keyspace in pages, in key order, through a bounded channel, so a slow
//! reader slows the export down instead of growing memory.
//!
//! - cp keyspaces are exported by the leader only. It passes a read barrier (ReadIndex), so
//!   every write acknowledged before the export began is applied here, then copies the
//!   keyspace into a spool file under its data directory while holding the state machine's
//!   apply gate ([`crate::cp::state_machine::SmReader::copy_keyspace`]): the copy shows exactly
//!   one applied Raft index, which every page carries. The spool is streamed afterwards and
//!   deleted when the stream ends, however it ends.
//! - ap keyspaces are exported from this node's own replica, tombstones and versions included;
//!   the caller asks every replica and merges them by last-writer-wins.
//!
//! `Create` makes this node the coordinator of a whole backup (`backup create --via node`): it
//! runs the same [`crate::backup::create::create`] as the CLI would, through its own peer
//! address, writes the objects to the storage itself and streams progress, then the manifest.
//! A file:// URL must lie under one of the node's `--backup-dir` directories
//! ([`crate::node::NodeOptions::may_write_backups_to`]).
//!
//! `ImportAp` merges records into this node's ap replica through the same path as a peer's
//! push: each record keeps its version (HLC, node), the clock moves past it, and a record older
//! than what is stored changes nothing.
//!
//! CAVEATS: while a cp keyspace is copied to the spool, the leader's applies wait (writes stay
//! committed but are acknowledged after the copy); the spool needs free disk space about the size
//! of the keyspace. An ap export is not a point in time: a write that lands during the export may
//! or may not be in it (the merge across replicas still sees every write that reached one).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::ap::kv::version_to_proto;
use crate::ap::replica::Request as PeerRequest;
use crate::ap::store::Entry;
use crate::ap::version::{Version, Versioned};
use crate::backup::chunk::CHUNK_BYTES_DEFAULT;
use crate::backup::create::{create, CreateOptions, PROGRESS_EVERY};
use crate::backup::schedule::{count_success, self_client};
use crate::backup::Target;
use crate::cp::command::StoredValue;
use crate::cp::route::Route;
use crate::cp::state_machine::CopySink;
use crate::error::Error;
use crate::mode::Mode;
use crate::node::Node;
use crate::proto;
use crate::request::Ctx;

/// Records per exported page: pages stay far below the message limit for small values.
pub const EXPORT_PAGE_RECORDS_MAX: usize = 256;

/// Bytes of keys and values per exported page, so pages of large values stay bounded too.
pub const EXPORT_PAGE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Pages buffered between the exporting task and the gRPC stream (back-pressure beyond).
const EXPORT_PAGES_BUFFERED: usize = 2;

/// Distinguishes concurrent exports' spool files.
static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

type PageStream = Pin<Box<dyn Stream<Item = Result<proto::ExportPage, Status>> + Send>>;
type ProgressStream = Pin<Box<dyn Stream<Item = Result<proto::CreateBackupProgress, Status>> + Send>>;

/// The most one call of a backup this node coordinates may take, whatever the caller asks.
const COORDINATED_CALL_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The per-call timeout when the caller gives none.
const COORDINATED_CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

pub struct BackupService {
    node: Arc<Node>,
}

impl BackupService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn mode_of(&self, keyspace: &str) -> Result<Mode, Error> {
        crate::keyspace::validate_name(keyspace)?;
        match self.node.local_keyspace(keyspace)? {
            Some(def) => Ok(def.mode),
            None => Err(Error::UnknownKeyspace(keyspace.to_string())),
        }
    }

    /// The leader's copy of cp keyspaces, one spool file each, all at one applied index.
    async fn spool_cp(&self, ctx: &Ctx, keyspaces: &[String]) -> Result<(Vec<Spool>, u64), Error> {
        let cp = self.node.cp();
        if let Route::Forward { leader, .. } = cp.route(ctx.deadline, None).await? {
            return Err(Error::Refused(format!(
                "node {} does not lead; export cp keyspaces from the leader, node {leader}",
                self.node.id()
            )));
        }
        cp.read_barrier(ctx.deadline).await?;
        let mut writer = SpoolWriter::default();
        for keyspace in keyspaces {
            let path = self.node.options().data_dir.join(format!(
                "backup-spool-{}-{}.tmp",
                std::process::id(),
                SPOOL_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let file = File::create(&path).map_err(|e| spool_error(&path, e))?;
            writer.spools.push(Spool {
                keyspace: keyspace.clone(),
                path,
            });
            writer.outs.push(BufWriter::new(file));
        }
        let (index, writer) = cp.reader().copy_keyspaces(keyspaces.to_vec(), writer).await?;
        Ok((writer.finish()?, index))
    }
}

/// Writes copied cp records into one spool file per keyspace.
#[derive(Default)]
struct SpoolWriter {
    spools: Vec<Spool>,
    outs: Vec<BufWriter<File>>,
}

impl CopySink for SpoolWriter {
    fn record(&mut self, keyspace: usize, key: Vec<u8>, value: StoredValue) -> Result<(), Error> {
        let record = proto::BackupRecord {
            key,
            value: value.value,
            tombstone: false,
            ap_version: None,
            removed: false,
        };
        write_framed(&mut self.outs[keyspace], &record).map_err(|e| spool_error(&self.spools[keyspace].path, e))
    }
}

impl SpoolWriter {
    /// Flushes every spool to disk and hands them over for streaming.
    fn finish(mut self) -> Result<Vec<Spool>, Error> {
        for (out, spool) in self.outs.iter_mut().zip(&self.spools) {
            out.flush().map_err(|e| spool_error(&spool.path, e))?;
        }
        Ok(self.spools)
    }
}

/// A spool file, deleted when dropped (the export ended, or its reader went away).
struct Spool {
    keyspace: String,
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spool_error(path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!(
        "cannot write the backup spool file {}: {e}; free disk space under the data directory",
        path.display()
    ))
}

fn write_framed(out: &mut impl Write, record: &proto::BackupRecord) -> std::io::Result<()> {
    let bytes = record.encode_to_vec();
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)
}

/// The next record of a spool file, or `None` at its end.
fn read_framed(input: &mut impl Read) -> std::io::Result<Option<proto::BackupRecord>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    proto::BackupRecord::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Collects records into pages bounded by count and bytes.
struct Pager {
    page: Vec<proto::BackupRecord>,
    bytes: usize,
}

impl Pager {
    fn new() -> Self {
        Self {
            page: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a record; returns a full page when this one does not fit beside the others.
    fn push(&mut self, record: proto::BackupRecord) -> Option<Vec<proto::BackupRecord>> {
        let size = record.key.len() + record.value.len();
        let full = !self.page.is_empty()
            && (self.page.len() >= EXPORT_PAGE_RECORDS_MAX || self.bytes + size > EXPORT_PAGE_BYTES_MAX);
        let out = full.then(|| {
            self.bytes = 0;
            std::mem::take(&mut self.page)
        });
        self.bytes += size;
        self.page.push(record);
        out
    }
}

/// Runs a backup this node coordinates, reporting progress to `tx` every
/// [`PROGRESS_EVERY`]. When the caller goes away the backup is dropped where it stands: its
/// manifest is never written, so it is never listed as complete.
async fn coordinate(
    client: crate::client::Client,
    target: Target,
    options: CreateOptions,
    tx: mpsc::Sender<Result<proto::CreateBackupProgress, Status>>,
) {
    let job = create(&client, &target, &options);
    tokio::pin!(job);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let result = loop {
        tokio::select! {
            result = &mut job => break result,
            _ = ticks.tick() => {
                let progress = proto::CreateBackupProgress { bytes: target.written(), manifest_json: String::new() };
                if tx.send(Ok(progress)).await.is_err() {
                    tracing::warn!(to = %target.url(), "the caller of a backup went away; the backup is abandoned and has no manifest");
                    return;
                }
            }
        }
    };
    let last = match result {
        Ok(manifest) => {
            count_success(&manifest);
            tracing::info!(id = %manifest.id, to = %target.url(), seconds = manifest.seconds, "backup taken");
            Ok(proto::CreateBackupProgress {
                bytes: target.written(),
                manifest_json: String::from_utf8(manifest.to_json()).expect("JSON is UTF-8"),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, to = %target.url(), "a backup failed");
            metrics::counter!("capkv_backup_failures_total").increment(1);
            Err(e.into())
        }
    };
    let _ = tx.send(last).await;
}

/// Streams the spools in pages, one after the other; runs on a blocking thread (file reads).
fn stream_spools(spools: Vec<Spool>, node_id: u64, index: u64, tx: mpsc::Sender<Result<proto::ExportPage, Status>>) {
    for spool in spools {
        if !stream_spool(spool, node_id, index, &tx) {
            return;
        }
    }
}

/// Streams one spool in pages; false when the stream ended early (an error, or no reader).
fn stream_spool(spool: Spool, node_id: u64, index: u64, tx: &mpsc::Sender<Result<proto::ExportPage, Status>>) -> bool {
    let page_of = |records| proto::ExportPage {
        node_id,
        keyspace: spool.keyspace.clone(),
        raft_index: index,
        records,
        hlc: None,
    };
    let mut input = match File::open(&spool.path) {
        Ok(f) => BufReader::new(f),
        Err(e) => {
            let _ = tx.blocking_send(Err(spool_error(&spool.path, e).into()));
            return false;
        }
    };
    let mut pager = Pager::new();
    loop {
        match read_framed(&mut input) {
            Ok(Some(record)) => {
                if let Some(page) = pager.push(record) {
                    if tx.blocking_send(Ok(page_of(page))).is_err() {
                        return false; // the reader went away; the spool is deleted on drop
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(spool_error(&spool.path, e).into()));
                return false;
            }
        }
    }
    // The last page, possibly empty: an empty keyspace still tells the reader its index.
    tx.blocking_send(Ok(page_of(pager.page))).is_ok()
}

/// Streams this node's ap replica of `keyspace` in pages.
async fn stream_ap(node: Arc<Node>, keyspace: String, tx: mpsc::Sender<Result<proto::ExportPage, Status>>) {
    let replica = node.ap().replica().clone();
    let hlc = replica.clock().last();
    let hlc = version_to_proto(Version { hlc, node: node.id() });
    let mut start_after = Vec::new();
    loop {
        let (entries, more) =
            match replica
                .store
                .export_page(&keyspace, &start_after, EXPORT_PAGE_RECORDS_MAX, EXPORT_PAGE_BYTES_MAX)
            {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
        if let Some(last) = entries.last() {
            start_after = last.key.clone();
        }
        let page = proto::ExportPage {
            node_id: node.id(),
            keyspace: keyspace.clone(),
            raft_index: 0,
            records: entries.into_iter().map(record_of).collect(),
            hlc: Some(hlc),
        };
        if tx.send(Ok(page)).await.is_err() || !more {
            return;
        }
    }
}

fn record_of(entry: Entry) -> proto::BackupRecord {
    proto::BackupRecord {
        key: entry.key,
        tombstone: entry.versioned.is_tombstone(),
        value: entry.versioned.value.unwrap_or_default(),
        ap_version: Some(version_to_proto(entry.versioned.version)),
        removed: false,
    }
}

/// The ap entry a restored record stands for, with its original version.
fn entry_of(keyspace: &str, record: proto::BackupRecord) -> Result<Entry, Error> {
    if record.removed {
        return Err(Error::InvalidInput(format!(
            "a record for keyspace '{keyspace}' is an incremental backup's removal marker, which only a restore of the whole chain may interpret; restore with `capkv backup restore`"
        )));
    }
    let Some(v) = record.ap_version else {
        return Err(Error::InvalidInput(format!(
            "an ap record for keyspace '{keyspace}' has no version; restore ap keyspaces from an ap backup"
        )));
    };
    crate::keyspace::validate_key(&record.key)?;
    Ok(Entry {
        keyspace: keyspace.to_string(),
        key: record.key,
        versioned: Versioned {
            version: Version {
                hlc: crate::ap::hlc::Timestamp {
                    physical_ms: v.physical_ms,
                    logical: v.logical,
                },
                node: v.node_id,
            },
            value: (!record.tombstone).then_some(record.value),
        },
    })
}

#[tonic::async_trait]
impl proto::backup_server::Backup for BackupService {
    type ExportStream = PageStream;
    type CreateStream = ProgressStream;

    async fn create(&self, request: Request<proto::CreateBackupRequest>) -> Result<Response<ProgressStream>, Status> {
        let req = request.into_inner();
        self.node.options().may_write_backups_to(&req.url)?;
        // A node cut off from the leader could copy no cp keyspace; refusing before anything
        // starts lets the caller try the next endpoint.
        if self.node.cp().metrics().current_leader.is_none() {
            return Err(Error::NoQuorum(format!(
                "node {} knows no leader, so it cannot coordinate a backup; ask a node on the majority side",
                self.node.id()
            ))
            .into());
        }
        let timeout = match req.call_timeout_ms {
            0 => COORDINATED_CALL_TIMEOUT_DEFAULT,
            ms => Duration::from_millis(ms).min(COORDINATED_CALL_TIMEOUT_MAX),
        };
        let options = CreateOptions {
            keyspaces: req.keyspaces,
            timeout,
            chunk_bytes: match req.chunk_bytes {
                0 => CHUNK_BYTES_DEFAULT,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            incremental_from: Some(req.incremental_from).filter(|id| !id.is_empty()),
        };
        options.validate()?;
        let target = Target::open(&req.url, timeout)?;
        let client = self_client(&self.node.address(), timeout)?;
        let (tx, mut rx) = mpsc::channel(2);
        tokio::spawn(coordinate(client, target, options, tx));
        let messages = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(messages)))
    }

    async fn export(&self, request: Request<proto::ExportRequest>) -> Result<Response<PageStream>, Status> {
        let ctx = Ctx::of(&request);
        let keyspaces = request.into_inner().keyspaces;
        let (tx, mut rx) = mpsc::channel(EXPORT_PAGES_BUFFERED);
        let modes = keyspaces
            .iter()
            .map(|k| self.mode_of(k))
            .collect::<Result<Vec<_>, _>>()?;
        match (modes.as_slice(), keyspaces.first()) {
            ([Mode::Ap], Some(keyspace)) => {
                tokio::spawn(stream_ap(self.node.clone(), keyspace.clone(), tx));
            }
            _ if modes.iter().all(|m| *m == Mode::Cp) => {
                let (spools, index) = self.spool_cp(&ctx, &keyspaces).await?;
                let id = self.node.id();
                tokio::task::spawn_blocking(move || stream_spools(spools, id, index, tx));
            }
            _ => {
                return Err(Error::InvalidInput(
                    "export either cp keyspaces (together, at one Raft index) or one ap keyspace per request".into(),
                )
                .into())
            }
        }
        let pages = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(pages)))
    }

    async fn import_ap(
        &self,
        request: Request<proto::ImportApRequest>,
    ) -> Result<Response<proto::ImportApResponse>, Status> {
        let req = request.into_inner();
        let mode = self.mode_of(&req.keyspace)?;
        if mode != Mode::Ap {
            return Err(Error::ModeRefuses {
                op: "import_ap".into(),
                keyspace: req.keyspace,
                mode,
                needs: Mode::Ap,
            }
            .into());
        }
        let entries = req
            .records
            .into_iter()
            .map(|r| entry_of(&req.keyspace, r))
            .collect::<Result<Vec<_>, _>>()?;
        let replica = self.node.ap().replica();
        let before = replica.stats.pushes_applied.load(Ordering::Relaxed);
        replica.handle(self.node.id(), PeerRequest::Push(entries)).await?;
        let changed = replica
            .stats
            .pushes_applied
            .load(Ordering::Relaxed)
            .saturating_sub(before);
        Ok(Response::new(proto::ImportApResponse {
            node_id: self.node.id(),
            changed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value_bytes: usize) -> proto::BackupRecord {
        proto::BackupRecord {
            key: key.as_bytes().to_vec(),
            value: vec![7; value_bytes],
            tombstone: false,
            ap_version: None,
            removed: false,
        }
    }

    #[test]
    fn spool_frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        for i in 0..3 {
            write_framed(&mut buf, &record(&format!("k{i}"), i * 10)).unwrap();
        }
        let mut input = buf.as_slice();
        let mut keys = Vec::new();
        while let Some(r) = read_framed(&mut input).unwrap() {
            keys.push(String::from_utf8(r.key).unwrap());
        }
        assert_eq!(keys, ["k0", "k1", "k2"]);
    }

    #[test]
    fn pages_are_bounded_by_records_and_bytes() {
        let mut pager = Pager::new();
        let pages: Vec<_> = (0..EXPORT_PAGE_RECORDS_MAX + 1)
            .filter_map(|i| pager.push(record(&format!("{i:05}"), 1)))
            .collect();
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].len(), EXPORT_PAGE_RECORDS_MAX);
        let mut pager = Pager::new();
        assert!(pager.push(record("a", EXPORT_PAGE_BYTES_MAX - 10)).is_none());
        let full = pager.push(record("b", 100)).expect("the second value does not fit");
        assert_eq!(full.len(), 1);
    }
}
