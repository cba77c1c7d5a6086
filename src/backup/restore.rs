//! `backup verify` and `backup restore`.
//!
//! Verify re-reads every object of a backup and checks its size and SHA-256 against the
//! manifest. Restore verifies first (nothing is loaded from a damaged backup), then checks the
//! cluster's keyspaces (an existing one is refused unless `--replace`), creates each keyspace
//! with its mode and loads it object by object:
//! - cp: through Raft, as transactions of up to [`TXN_OPS_MAX`] puts, so every loaded key is
//!   linearizable like any other write (revisions are the new cluster's log indexes);
//! - ap: an `ImportAp` call to every member with the records and their original versions (HLC,
//!   node), merged like a peer's push: the restored key has the version it had in the backup.
//!   A member that cannot be reached catches up through anti-entropy.
//!
//! An incremental backup restores its whole chain: each keyspace is read back as the chain's
//! merge ([`super::chain`]), so the cluster gets the state the last backup saw.
//!
//! CAVEATS: `--replace` on a cp keyspace first deletes its keys through Raft, then loads: readers
//! may see it empty or partly loaded meanwhile. On an ap keyspace `--replace` merges: a key
//! written after the backup keeps its newer version (last-writer-wins), and a key the backup
//! does not have stays. Restore reads every object twice (verify, then load).

use std::time::Duration;

use tonic::transport::Channel;

use super::chain::{Chain, KeyspaceReader};
use super::chunk::fetch_verified;
use super::create::{cluster_view, node_client};
use super::manifest::Manifest;
use super::target::Target;
use crate::client::Client;
use crate::error::Error;
use crate::limits::{TXN_BYTES_MAX, TXN_OPS_MAX};
use crate::mode::Mode;
use crate::proto::{self, backup_client::BackupClient, BackupRecord};

/// Bytes of records per ap import call, below the request limit.
const IMPORT_BYTES_MAX: usize = 1024 * 1024;

/// Checks every object of `manifest` and, for an incremental backup, of every backup it
/// depends on; the error names the first bad one. Returns the chain (oldest first).
pub async fn verify(target: &Target, manifest: &Manifest) -> Result<Chain, Error> {
    let chain = Chain::load(target, manifest.clone()).await?;
    for m in chain.manifests() {
        for entry in &m.objects {
            fetch_verified(target, &m.id, entry).await?;
        }
    }
    Ok(chain)
}

/// What a restore loaded, per keyspace: (name, mode, records).
pub type Loaded = Vec<(String, String, u64)>;

/// Restores `wanted` keyspaces (all when empty) of `manifest` into the cluster `client` reaches.
pub async fn restore(
    client: &Client,
    target: &Target,
    manifest: &Manifest,
    wanted: &[String],
    replace: bool,
    timeout: Duration,
) -> Result<Loaded, Error> {
    for name in wanted {
        if manifest.keyspace(name).is_none() {
            return Err(Error::InvalidInput(format!(
                "backup {} has no keyspace '{name}'",
                manifest.id
            )));
        }
    }
    let chosen: Vec<_> = manifest
        .keyspaces
        .iter()
        .filter(|k| wanted.is_empty() || wanted.contains(&k.name))
        .collect();
    let existing = client.list_keyspaces().await?.keyspaces;
    for k in &chosen {
        if let Some(found) = existing.iter().find(|e| e.name == k.name) {
            let mode = if found.mode() == proto::Mode::Ap { "ap" } else { "cp" };
            if mode != k.mode {
                return Err(Error::Refused(format!(
                    "keyspace '{}' exists as {mode} but the backup holds it as {}; a keyspace's mode is fixed, restore into another cluster",
                    k.name, k.mode
                )));
            }
            if !replace {
                return Err(Error::Refused(format!(
                    "keyspace '{}' already exists; nothing was restored (pass --replace to overwrite it)",
                    k.name
                )));
            }
        }
    }
    // Every object of the chain is checked before anything is loaded.
    let chain = verify(target, manifest).await?;
    let view = cluster_view(client).await?;
    let mut loaded = Vec::new();
    for k in chosen {
        let mode: Mode = k
            .mode
            .parse()
            .map_err(|_| Error::Storage(format!("the manifest names an unknown mode '{}'", k.mode)))?;
        if existing.iter().any(|e| e.name == k.name) {
            if mode == Mode::Cp {
                clear_cp(client, &k.name).await?;
            }
        } else {
            client.create_keyspace(&k.name, mode).await?;
        }
        let reader = chain.reader(target, &k.name)?;
        let count = load(client, &view.members, &k.name, mode, reader, timeout).await?;
        loaded.push((k.name.clone(), k.mode.clone(), count));
    }
    Ok(loaded)
}

/// Streams one keyspace from the chain into the cluster in batches bounded by count and bytes;
/// returns the records loaded.
async fn load(
    client: &Client,
    members: &[super::manifest::ClusterMember],
    keyspace: &str,
    mode: Mode,
    mut reader: KeyspaceReader<'_>,
    timeout: Duration,
) -> Result<u64, Error> {
    let (ops_max, bytes_max) = match mode {
        Mode::Cp => (TXN_OPS_MAX, TXN_BYTES_MAX / 2),
        Mode::Ap => (usize::MAX, IMPORT_BYTES_MAX),
    };
    let mut clients = match mode {
        Mode::Cp => Vec::new(),
        Mode::Ap => ap_clients(members, timeout).await,
    };
    let mut count = 0;
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let record = reader.next().await?;
        let size = record.as_ref().map_or(0, |r| r.key.len() + r.value.len() + 64);
        let full = !batch.is_empty() && (batch.len() >= ops_max || bytes + size > bytes_max);
        if full || (record.is_none() && !batch.is_empty()) {
            count += batch.len() as u64;
            let records = std::mem::take(&mut batch);
            bytes = 0;
            match mode {
                Mode::Cp => load_cp(client, keyspace, records).await?,
                Mode::Ap => load_ap(&mut clients, keyspace, records, timeout).await?,
            }
        }
        let Some(record) = record else {
            return Ok(count);
        };
        bytes += size;
        batch.push(record);
    }
}

/// Loads one batch (within the transaction limits) through Raft.
async fn load_cp(client: &Client, keyspace: &str, records: Vec<BackupRecord>) -> Result<(), Error> {
    let success = records
        .into_iter()
        .map(|r| proto::TxnOp {
            op: Some(proto::txn_op::Op::Put(proto::PutOp {
                key: r.key,
                value: r.value,
            })),
        })
        .collect();
    unconditional_txn(client, keyspace, success).await
}

/// Runs `ops` as one transaction without compares: all of them apply, atomically, through Raft.
async fn unconditional_txn(client: &Client, keyspace: &str, ops: Vec<proto::TxnOp>) -> Result<(), Error> {
    client
        .txn(proto::TxnRequest {
            keyspace: keyspace.to_string(),
            compares: vec![],
            success: ops,
            failure: vec![],
            request_id: None,
        })
        .await?;
    Ok(())
}

/// Deletes every key of a cp keyspace through Raft (for `--replace`).
async fn clear_cp(client: &Client, keyspace: &str) -> Result<(), Error> {
    loop {
        let page = client
            .scan(proto::ScanRequest {
                keyspace: keyspace.to_string(),
                limit: TXN_OPS_MAX as u32,
                ..Default::default()
            })
            .await?;
        if page.items.is_empty() {
            return Ok(());
        }
        let success = page
            .items
            .into_iter()
            .map(|kv| proto::TxnOp {
                op: Some(proto::txn_op::Op::Delete(proto::DeleteOp { key: kv.key })),
            })
            .collect();
        unconditional_txn(client, keyspace, success).await?;
    }
}

/// A Backup client for every reachable member; a member that cannot be reached catches up
/// through anti-entropy.
async fn ap_clients(
    members: &[super::manifest::ClusterMember],
    timeout: Duration,
) -> Vec<(u64, BackupClient<Channel>)> {
    let mut clients = Vec::new();
    for m in members {
        match node_client(&m.address, timeout).await {
            Ok(c) => clients.push((m.id, c)),
            Err(e) => {
                tracing::warn!(node = m.id, error = %e, "restore skips an unreachable replica; anti-entropy will fill it")
            }
        }
    }
    clients
}

/// Imports one batch into every replica it can reach; at least one must take it.
async fn load_ap(
    clients: &mut [(u64, BackupClient<Channel>)],
    keyspace: &str,
    batch: Vec<BackupRecord>,
    timeout: Duration,
) -> Result<(), Error> {
    let mut stored = 0;
    let mut last_error = None;
    for (id, c) in clients.iter_mut() {
        let mut request = tonic::Request::new(proto::ImportApRequest {
            keyspace: keyspace.to_string(),
            records: batch.clone(),
        });
        request.set_timeout(timeout);
        match c.import_ap(request).await {
            Ok(_) => stored += 1,
            Err(status) => last_error = Some(format!("node {id}: {}", Error::from_status(&status))),
        }
    }
    if stored == 0 {
        return Err(Error::Unreachable(format!(
            "no replica of ap keyspace '{keyspace}' accepted the restored records ({})",
            last_error.unwrap_or_else(|| "none reachable".into())
        )));
    }
    Ok(())
}
