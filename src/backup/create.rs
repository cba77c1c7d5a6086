//! `backup create`: stream keyspaces from the nodes into data objects, then the manifest.
//!
//! cp keyspaces come from the leader in one export, copied at one applied Raft index after a
//! read barrier. Each ap keyspace is read from every member at once and merged by
//! last-writer-wins as the pages arrive (each node sends its keys in order, so the merge holds
//! one page per node); tombstones and versions are kept. A member that cannot be read is named
//! in the manifest and in the command's output. With `--incremental-from` each keyspace the
//! parent chain holds goes through a [`Sink`] that stores only what changed ([`super::chain`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Streaming;

use super::chain::{Chain, Sink, Tally};
use super::chunk::{ChunkWriter, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN};
use super::manifest::{
    new_id, ClusterMember, KeyspaceEntry, Manifest, ObjectEntry, FORMAT_VERSION, FORMAT_VERSION_INCREMENTAL,
    MANIFEST_NAME,
};
use super::target::Target;
use crate::client::Client;
use crate::error::Error;
use crate::limits::RESPONSE_BYTES_MAX;
use crate::mode::Mode;
use crate::proto::{self, backup_client::BackupClient, BackupRecord, ExportPage};

/// The cluster as one node sees it: members and the leader.
pub struct ClusterView {
    pub members: Vec<ClusterMember>,
    pub leader: u64,
}

/// Asks the endpoints in turn for the membership and the leader.
pub async fn cluster_view(client: &Client) -> Result<ClusterView, Error> {
    let mut last = None;
    for i in 0..client.endpoints().len() {
        match client.status_of(i).await {
            Ok(status) => {
                let members = status
                    .members
                    .iter()
                    .map(|m| ClusterMember {
                        id: m.id,
                        address: m.address.clone(),
                    })
                    .collect();
                return Ok(ClusterView {
                    members,
                    leader: status.leader_id,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Unreachable("no endpoint answered".into())))
}

/// A Backup client for one node's address.
pub async fn node_client(address: &str, timeout: Duration) -> Result<BackupClient<Channel>, Error> {
    let endpoint = crate::net::peer_endpoint(address)?.connect_timeout(timeout);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| Error::Unreachable(format!("{address} did not accept a connection in time")))?
        .map_err(|e| Error::Unreachable(format!("cannot connect to {address}: {e}")))?;
    Ok(BackupClient::new(channel)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX))
}

async fn open_export(address: &str, keyspaces: Vec<String>, timeout: Duration) -> Result<Streaming<ExportPage>, Error> {
    let mut client = node_client(address, timeout).await?;
    let mut request = tonic::Request::new(proto::ExportRequest { keyspaces });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.export(request)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(Error::from_status(&status)),
        Err(_) => Err(Error::Unreachable(format!(
            "{address} did not start the export in time"
        ))),
    }
}

async fn next_page(
    stream: &mut Streaming<ExportPage>,
    from: u64,
    timeout: Duration,
) -> Result<Option<ExportPage>, Error> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(status)) => Err(Error::Unreachable(format!(
            "node {from} broke off the export: {}",
            Error::from_status(&status)
        ))),
        Err(_) => Err(Error::Unreachable(format!(
            "node {from} sent no export page within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// What `backup create` is asked for.
pub struct CreateOptions {
    /// Keyspaces to back up; all when empty.
    pub keyspaces: Vec<String>,
    /// The most one call (to a node or to the storage) may take.
    pub timeout: Duration,
    /// Bytes of records per data object, before compression.
    pub chunk_bytes: usize,
    /// Store only the changes since this backup (at the same URL); `latest` names the newest.
    pub incremental_from: Option<String>,
}

impl CreateOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&self.chunk_bytes) {
            return Err(Error::InvalidInput(format!(
                "--chunk-bytes {} is out of range: it must be between {CHUNK_BYTES_MIN} and {CHUNK_BYTES_MAX}",
                self.chunk_bytes
            )));
        }
        Ok(())
    }
}

/// How often a coordinating node reports progress ([`create_through_node`]).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Has a node take the backup as coordinator: it reads from the members and writes to `url`
/// itself, so the data does not pass through this process. `progress` hears the bytes written
/// so far about once a second. A node that falls silent for longer than the timeout (plus two
/// progress intervals) is given up on; the backup it was writing then has no manifest.
pub async fn create_through_node(
    client: &Client,
    url: &str,
    options: &CreateOptions,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, Error> {
    options.validate()?;
    let request = proto::CreateBackupRequest {
        url: url.to_string(),
        keyspaces: options.keyspaces.clone(),
        chunk_bytes: options.chunk_bytes as u64,
        incremental_from: options.incremental_from.clone().unwrap_or_default(),
        call_timeout_ms: options.timeout.as_millis() as u64,
    };
    let mut stream = client.backup_create(request).await?;
    let silence = options.timeout + 2 * PROGRESS_EVERY;
    loop {
        let message = match tokio::time::timeout(silence, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(Error::OutcomeUnknown(
                    "the coordinating node ended the backup without a result; run `backup list` to see whether it completed".into(),
                ))
            }
            Ok(Err(status)) => return Err(Error::from_status(&status)),
            Err(_) => {
                return Err(Error::OutcomeUnknown(format!(
                    "the coordinating node reported nothing for {} ms; run `backup list` to see whether the backup completed",
                    silence.as_millis()
                )))
            }
        };
        if !message.manifest_json.is_empty() {
            return Manifest::from_json(message.manifest_json.as_bytes(), "the coordinating node's manifest");
        }
        progress(message.bytes);
    }
}

/// Takes a backup into `target`; returns its manifest.
pub async fn create(client: &Client, target: &Target, options: &CreateOptions) -> Result<Manifest, Error> {
    options.validate()?;
    let wanted = &options.keyspaces;
    let started = Instant::now();
    let now = chrono::Utc::now();
    // The parent chain is read (and its checksums checked) before the cluster is asked for anything.
    let parent = match &options.incremental_from {
        Some(id) => {
            let chosen = if id == "latest" { None } else { Some(id.as_str()) };
            Some(Chain::load(target, target.choose(chosen).await?).await?)
        }
        None => None,
    };
    let view = cluster_view(client).await?;
    let listed = client.list_keyspaces().await?.keyspaces;
    for name in wanted {
        if !listed.iter().any(|k| &k.name == name) {
            return Err(Error::UnknownKeyspace(name.clone()));
        }
    }
    let chosen: Vec<_> = listed
        .into_iter()
        .filter(|k| wanted.is_empty() || wanted.contains(&k.name))
        .collect();
    let mut manifest = Manifest {
        format_version: if parent.is_some() {
            FORMAT_VERSION_INCREMENTAL
        } else {
            FORMAT_VERSION
        },
        id: new_id(now),
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        created_unix_ms: now.timestamp_millis() as u64,
        capkv_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster: view.members.clone(),
        raft_index: 0,
        cp_exported_by: 0,
        hlc: "0.0".into(),
        keyspaces: Vec::new(),
        objects: Vec::new(),
        seconds: 0.0,
        parent: parent.as_ref().map(|c| c.last().id.clone()),
    };
    let cp: Vec<String> = chosen
        .iter()
        .filter(|k| k.mode() == proto::Mode::Cp)
        .map(|k| k.name.clone())
        .collect();
    if !cp.is_empty() {
        backup_cp(&view, target, &mut manifest, cp, options, parent.as_ref()).await?;
    }
    for k in chosen.iter().filter(|k| k.mode() == proto::Mode::Ap) {
        backup_ap(&view, target, &mut manifest, &k.name, options, parent.as_ref()).await?;
    }
    manifest.seconds = started.elapsed().as_secs_f64();
    target
        .put(&format!("{}/{MANIFEST_NAME}", manifest.id), manifest.to_json())
        .await?;
    Ok(manifest)
}

/// The writer of one keyspace: incremental when the parent chain holds it in the same mode.
fn sink<'a>(
    target: &'a Target,
    manifest: &Manifest,
    keyspace: &str,
    mode: Mode,
    options: &CreateOptions,
    parent: Option<&Chain>,
) -> Result<Sink<'a>, Error> {
    let writer = ChunkWriter::new(target, &manifest.id, keyspace, options.chunk_bytes);
    let reader = match parent {
        Some(chain) if chain.mode_of(keyspace) == Some(mode.to_string().as_str()) => {
            Some(chain.reader(target, keyspace)?)
        }
        _ => None,
    };
    Ok(Sink::new(writer, reader))
}

/// Copies every cp keyspace from the leader at one Raft index.
async fn backup_cp(
    view: &ClusterView,
    target: &Target,
    manifest: &mut Manifest,
    keyspaces: Vec<String>,
    options: &CreateOptions,
    parent: Option<&Chain>,
) -> Result<(), Error> {
    let timeout = options.timeout;
    let leader = view.members.iter().find(|m| m.id == view.leader).ok_or_else(|| {
        Error::NoQuorum(
            "no leader is known, so no cp keyspace can be copied; retry when the cluster has a majority".into(),
        )
    })?;
    let mut stream = open_export(&leader.address, keyspaces.clone(), timeout).await?;
    // The export sends keyspace after keyspace, so one writer is open at a time.
    let mut current: Option<(String, Sink)> = None;
    let mut done = Vec::new();
    while let Some(page) = next_page(&mut stream, leader.id, timeout).await? {
        manifest.raft_index = page.raft_index;
        if current.as_ref().map(|c| &c.0) != Some(&page.keyspace) {
            if let Some((name, finished)) = current.take() {
                done.push(finish(name, finished).await?);
            }
            let writer = sink(target, manifest, &page.keyspace, Mode::Cp, options, parent)?;
            current = Some((page.keyspace.clone(), writer));
        }
        let (_, writer) = current.as_mut().expect("set above");
        for record in &page.records {
            writer.push(record).await?;
        }
    }
    if let Some((name, finished)) = current.take() {
        done.push(finish(name, finished).await?);
    }
    manifest.cp_exported_by = leader.id;
    for name in keyspaces {
        let (tally, objects, incremental) = match done.iter().position(|d| d.0 == name) {
            Some(i) => {
                let (_, tally, objects, incremental) = done.swap_remove(i);
                (tally, objects, incremental)
            }
            // An empty keyspace sends no page; in an incremental backup its parent's keys are gone.
            None => {
                let (_, tally, objects, incremental) =
                    finish(name.clone(), sink(target, manifest, &name, Mode::Cp, options, parent)?).await?;
                (tally, objects, incremental)
            }
        };
        manifest.objects.extend(objects);
        manifest
            .keyspaces
            .push(entry(&name, Mode::Cp, &tally, incremental, vec![leader.id], vec![]));
    }
    Ok(())
}

async fn finish(name: String, sink: Sink<'_>) -> Result<(String, Tally, Vec<ObjectEntry>, bool), Error> {
    let incremental = sink.incremental();
    let (tally, objects) = sink.finish().await?;
    Ok((name, tally, objects, incremental))
}

fn entry(
    name: &str,
    mode: Mode,
    t: &Tally,
    incremental: bool,
    contributors: Vec<u64>,
    unreachable: Vec<u64>,
) -> KeyspaceEntry {
    KeyspaceEntry {
        name: name.to_string(),
        mode: mode.to_string(),
        keys: t.keys,
        bytes: t.bytes,
        tombstones: t.tombstones,
        contributors,
        unreachable,
        incremental,
        stored: t.stored,
    }
}

/// One replica's export of an ap keyspace, a page at a time.
struct Source {
    node: u64,
    stream: Streaming<ExportPage>,
    page: VecDeque<BackupRecord>,
    done: bool,
}

impl Source {
    /// Makes sure the next record (if any) is buffered.
    async fn fill(&mut self, timeout: Duration, hlc: &mut (u64, u32)) -> Result<(), Error> {
        while self.page.is_empty() && !self.done {
            match next_page(&mut self.stream, self.node, timeout).await? {
                Some(page) => {
                    if let Some(v) = page.hlc {
                        *hlc = (*hlc).max((v.physical_ms, v.logical));
                    }
                    self.page.extend(page.records);
                }
                None => self.done = true,
            }
        }
        Ok(())
    }
}

fn version_key(r: &BackupRecord) -> (u64, u32, u64) {
    r.ap_version
        .as_ref()
        .map_or((0, 0, 0), |v| (v.physical_ms, v.logical, v.node_id))
}

/// Merges every reachable replica of an ap keyspace by last-writer-wins, key by key.
async fn backup_ap(
    view: &ClusterView,
    target: &Target,
    manifest: &mut Manifest,
    keyspace: &str,
    options: &CreateOptions,
    parent: Option<&Chain>,
) -> Result<(), Error> {
    let timeout = options.timeout;
    let (mut sources, mut unreachable) = (Vec::new(), Vec::new());
    for m in &view.members {
        match open_export(&m.address, vec![keyspace.to_string()], timeout).await {
            Ok(stream) => sources.push(Source {
                node: m.id,
                stream,
                page: VecDeque::new(),
                done: false,
            }),
            Err(e) => {
                tracing::warn!(node = m.id, error = %e, "an ap replica could not be read for the backup");
                unreachable.push(m.id);
            }
        }
    }
    if sources.is_empty() {
        return Err(Error::Unreachable(format!(
            "no replica of ap keyspace '{keyspace}' could be read; nothing was backed up"
        )));
    }
    let mut hlc = (0u64, 0u32);
    let mut writer = sink(target, manifest, keyspace, Mode::Ap, options, parent)?;
    loop {
        for s in sources.iter_mut() {
            s.fill(timeout, &mut hlc).await?;
        }
        let Some(key) = sources
            .iter()
            .filter_map(|s| s.page.front().map(|r| r.key.clone()))
            .min()
        else {
            break;
        };
        let mut winner: Option<BackupRecord> = None;
        for s in sources.iter_mut() {
            if s.page.front().is_some_and(|r| r.key == key) {
                let r = s.page.pop_front().expect("front checked");
                if winner.as_ref().is_none_or(|w| version_key(&r) > version_key(w)) {
                    winner = Some(r);
                }
            }
        }
        let record = winner.expect("at least one source holds the smallest key");
        writer.push(&record).await?;
    }
    let (_, tally, objects, incremental) = finish(keyspace.to_string(), writer).await?;
    manifest.objects.extend(objects);
    let old = parse_hlc(&manifest.hlc);
    let newest = old.max(hlc);
    manifest.hlc = format!("{}.{}", newest.0, newest.1);
    let contributors = sources.iter().map(|s| s.node).collect();
    manifest.keyspaces.push(entry(
        keyspace,
        Mode::Ap,
        &tally,
        incremental,
        contributors,
        unreachable,
    ));
    Ok(())
}

fn parse_hlc(text: &str) -> (u64, u32) {
    let (p, l) = text.split_once('.').unwrap_or((text, "0"));
    (p.parse().unwrap_or(0), l.parse().unwrap_or(0))
}
