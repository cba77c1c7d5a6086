//! Incremental backups: chains of backups, read back as one keyspace, and the writer that stores
//! only what changed.
//!
//! DESIGN
//!
//! An incremental backup (`backup create --incremental-from ID`) names its parent in the
//! manifest. For each keyspace the parent chain also holds, it stores only the records that
//! differ from the parent chain's copy (a new key, a new value, for ap a new version or a new
//! tombstone) and a removal marker for each key the parent had and the cluster no longer has.
//! Whether a record changed is decided by comparing it with the parent's record for the same
//! key, so it works the same for both modes and across clusters (a cp key's revision changes
//! when a backup is restored into a new cluster; its value does not). A keyspace the parent
//! chain does not hold is stored whole.
//!
//! Every backup's records of a keyspace are in key order, so a chain reads back as a merge of
//! sorted streams ([`KeyspaceReader`]): for each key the newest backup that mentions it wins,
//! and a removal marker drops the key. The comparison when writing ([`Sink`]) walks the parent
//! chain's merged stream beside the cluster's export the same way. Memory is one data object
//! per backup of the chain, whatever the keyspace's size.
//!
//! CAVEATS
//!
//! - An incremental backup still reads every record from the cluster (the nodes do not filter
//!   by revision or version); it saves storage and upload, not reading. It also reads its
//!   parent chain back from the storage.
//! - A restore needs every backup of the chain; retention never deletes a backup that a kept
//!   one depends on ([`crate::backup::schedule::expired`]).

use std::collections::VecDeque;

use super::chunk::{decode, fetch_verified, ChunkWriter};
use super::manifest::{Manifest, ObjectEntry};
use super::target::Target;
use crate::error::Error;
use crate::proto::BackupRecord;

/// The longest chain followed; deeper means a loop or a mistake, and a restore reading that many
/// backups would be slow anyway.
pub const CHAIN_DEPTH_MAX: usize = 1000;

/// A backup and the backups it is incremental from, oldest (a full backup) first.
pub struct Chain {
    manifests: Vec<Manifest>,
}

impl Chain {
    /// The chain that ends at `last`, following `parent` ids at the same URL.
    pub async fn load(target: &Target, last: Manifest) -> Result<Self, Error> {
        let mut manifests = vec![last];
        loop {
            let newest = manifests.last().expect("starts non-empty");
            let Some(parent) = newest.parent.clone() else {
                break;
            };
            if manifests.len() >= CHAIN_DEPTH_MAX || manifests.iter().any(|m| m.id == parent) {
                return Err(Error::Storage(format!(
                    "backup {} at {} has a chain of parents that loops or is deeper than {CHAIN_DEPTH_MAX}; take a full backup",
                    manifests[0].id,
                    target.url()
                )));
            }
            let child = newest.id.clone();
            let m = target.manifest(&parent).await.map_err(|e| match e {
                Error::Storage(why) => Error::Storage(format!(
                    "backup {child} is incremental from {parent}, which cannot be used ({why}); the chain is broken, so {} cannot be restored",
                    manifests[0].id
                )),
                other => other,
            })?;
            manifests.push(m);
        }
        manifests.reverse();
        Ok(Self { manifests })
    }

    /// The backup the chain ends at.
    pub fn last(&self) -> &Manifest {
        self.manifests.last().expect("a chain is never empty")
    }

    /// Every backup of the chain, oldest first.
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// Whether the chain's last backup holds `keyspace` (in any mode).
    pub fn mode_of(&self, keyspace: &str) -> Option<&str> {
        self.last().keyspace(keyspace).map(|k| k.mode.as_str())
    }

    /// The backups that hold `keyspace`'s records, oldest first: back from the last one to the
    /// first that stores it whole.
    fn layers(&self, keyspace: &str) -> Result<Vec<&Manifest>, Error> {
        let mut layers = Vec::new();
        for m in self.manifests.iter().rev() {
            let Some(entry) = m.keyspace(keyspace) else {
                let child = layers.last().map_or(&self.last().id, |c: &&Manifest| &c.id);
                return Err(Error::Storage(format!(
                    "backup {child} stores only the changes of keyspace '{keyspace}' since {}, which does not hold it; the chain is damaged",
                    m.id
                )));
            };
            layers.push(m);
            if !entry.incremental {
                layers.reverse();
                return Ok(layers);
            }
        }
        Err(Error::Storage(format!(
            "no backup of the chain of {} stores keyspace '{keyspace}' whole; the chain is damaged",
            self.last().id
        )))
    }

    /// Reads `keyspace` as the chain's last backup saw it, record by record in key order.
    pub fn reader<'a>(&self, target: &'a Target, keyspace: &str) -> Result<KeyspaceReader<'a>, Error> {
        let cursors = self
            .layers(keyspace)?
            .into_iter()
            .map(|m| Cursor {
                id: m.id.clone(),
                objects: m.objects.iter().filter(|o| o.keyspace == keyspace).cloned().collect(),
                page: VecDeque::new(),
            })
            .collect();
        Ok(KeyspaceReader {
            target,
            cursors,
            peeked: None,
        })
    }
}

/// One backup's records of one keyspace, an object at a time.
struct Cursor {
    id: String,
    objects: VecDeque<ObjectEntry>,
    page: VecDeque<BackupRecord>,
}

impl Cursor {
    /// The next record's key, loading (and verifying) the next object when the page is used up.
    async fn front_key(&mut self, target: &Target) -> Result<Option<Vec<u8>>, Error> {
        while self.page.is_empty() {
            let Some(object) = self.objects.pop_front() else {
                return Ok(None);
            };
            let bytes = fetch_verified(target, &self.id, &object).await?;
            self.page = decode(&bytes, &format!("{}/{}", self.id, object.path))?.into();
        }
        Ok(self.page.front().map(|r| r.key.clone()))
    }
}

/// A keyspace read back from a chain of backups: a merge of each backup's sorted records where
/// the newest backup mentioning a key wins and a removal marker drops it.
pub struct KeyspaceReader<'a> {
    target: &'a Target,
    /// Oldest backup first.
    cursors: Vec<Cursor>,
    peeked: Option<BackupRecord>,
}

impl KeyspaceReader<'_> {
    /// The next live record (an ap tombstone counts as live: a restore must load it).
    pub async fn next(&mut self) -> Result<Option<BackupRecord>, Error> {
        if let Some(r) = self.peeked.take() {
            return Ok(Some(r));
        }
        loop {
            let mut smallest: Option<Vec<u8>> = None;
            for c in self.cursors.iter_mut() {
                if let Some(key) = c.front_key(self.target).await? {
                    if smallest.as_ref().is_none_or(|s| key < *s) {
                        smallest = Some(key);
                    }
                }
            }
            let Some(key) = smallest else {
                return Ok(None);
            };
            let mut winner = None;
            for c in self.cursors.iter_mut() {
                if c.page.front().is_some_and(|r| r.key == key) {
                    winner = c.page.pop_front();
                }
            }
            let record = winner.expect("the smallest key is at some cursor's front");
            if !record.removed {
                return Ok(Some(record));
            }
        }
    }

    /// The next live record without taking it.
    pub async fn peek(&mut self) -> Result<Option<&BackupRecord>, Error> {
        if self.peeked.is_none() {
            self.peeked = self.next().await?;
        }
        Ok(self.peeked.as_ref())
    }
}

/// Counts of one keyspace's records as a backup writes them.
#[derive(Default)]
pub struct Tally {
    /// Live keys in the keyspace (stored or, in an incremental backup, unchanged).
    pub keys: u64,
    pub bytes: u64,
    pub tombstones: u64,
    /// Records written to this backup's objects, removal markers included.
    pub stored: u64,
}

impl Tally {
    fn add(&mut self, r: &BackupRecord) {
        if r.tombstone {
            self.tombstones += 1;
        } else {
            self.keys += 1;
            self.bytes += (r.key.len() + r.value.len()) as u64;
        }
    }
}

/// Whether two records of the same key say the same thing.
fn same(a: &BackupRecord, b: &BackupRecord) -> bool {
    a.value == b.value && a.tombstone == b.tombstone && a.ap_version == b.ap_version
}

/// Writes one keyspace of a backup: every record (full), or only what differs from the parent
/// chain's copy plus removal markers (incremental). Records must come in key order.
pub struct Sink<'a> {
    writer: ChunkWriter<'a>,
    parent: Option<KeyspaceReader<'a>>,
    pub tally: Tally,
}

impl<'a> Sink<'a> {
    pub fn new(writer: ChunkWriter<'a>, parent: Option<KeyspaceReader<'a>>) -> Self {
        Self {
            writer,
            parent,
            tally: Tally::default(),
        }
    }

    pub fn incremental(&self) -> bool {
        self.parent.is_some()
    }

    async fn store(&mut self, record: &BackupRecord) -> Result<(), Error> {
        self.tally.stored += 1;
        self.writer.push(record).await
    }

    /// Removal markers for the parent's keys below `bound` (all of them without a bound).
    async fn remove_parent_keys_below(&mut self, bound: Option<&[u8]>) -> Result<(), Error> {
        loop {
            let Some(parent) = self.parent.as_mut() else {
                return Ok(());
            };
            // A bounded batch of keys at a time, so memory stays small however many are gone.
            let mut gone = Vec::new();
            while let Some(p) = parent.peek().await? {
                if bound.is_some_and(|b| p.key.as_slice() >= b) || gone.len() >= 1024 {
                    break;
                }
                gone.push(parent.next().await?.expect("peeked").key);
            }
            if gone.is_empty() {
                return Ok(());
            }
            for key in gone {
                let marker = BackupRecord {
                    key,
                    removed: true,
                    ..Default::default()
                };
                self.store(&marker).await?;
            }
        }
    }

    /// Adds the cluster's next record of the keyspace.
    pub async fn push(&mut self, record: &BackupRecord) -> Result<(), Error> {
        self.tally.add(record);
        if self.parent.is_none() {
            return self.store(record).await;
        }
        self.remove_parent_keys_below(Some(&record.key)).await?;
        let parent = self.parent.as_mut().expect("checked above");
        let unchanged = match parent.peek().await? {
            Some(p) if p.key == record.key => {
                let unchanged = same(p, record);
                parent.next().await?;
                unchanged
            }
            _ => false,
        };
        if unchanged {
            Ok(())
        } else {
            self.store(record).await
        }
    }

    /// Marks the parent's remaining keys removed and closes the last object.
    pub async fn finish(mut self) -> Result<(Tally, Vec<ObjectEntry>), Error> {
        self.remove_parent_keys_below(None).await?;
        Ok((self.tally, self.writer.finish().await?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::chunk::CHUNK_BYTES_MIN;
    use super::super::manifest::{KeyspaceEntry, FORMAT_VERSION, FORMAT_VERSION_INCREMENTAL};
    use super::*;

    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    fn record(key: &[u8], value: &[u8]) -> BackupRecord {
        BackupRecord {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        }
    }

    /// Writes `state` as backup `id` (incremental from `parent` when given) and returns its manifest.
    async fn write(target: &Target, id: &str, state: &State, parent: Option<&Manifest>) -> Manifest {
        let chain = match parent {
            Some(p) => Some(Chain::load(target, p.clone()).await.unwrap()),
            None => None,
        };
        let reader = chain.as_ref().map(|c| c.reader(target, "ks").unwrap());
        let mut sink = Sink::new(ChunkWriter::new(target, id, "ks", CHUNK_BYTES_MIN), reader);
        for (k, v) in state {
            sink.push(&record(k, v)).await.unwrap();
        }
        let incremental = sink.incremental();
        let (tally, objects) = sink.finish().await.unwrap();
        let m = Manifest {
            format_version: if parent.is_some() {
                FORMAT_VERSION_INCREMENTAL
            } else {
                FORMAT_VERSION
            },
            id: id.into(),
            created_at: String::new(),
            created_unix_ms: 0,
            capkv_version: String::new(),
            cluster: vec![],
            raft_index: 0,
            cp_exported_by: 0,
            hlc: "0.0".into(),
            keyspaces: vec![KeyspaceEntry {
                name: "ks".into(),
                mode: "cp".into(),
                keys: tally.keys,
                bytes: tally.bytes,
                tombstones: tally.tombstones,
                contributors: vec![],
                unreachable: vec![],
                incremental,
                stored: tally.stored,
            }],
            objects,
            seconds: 0.0,
            parent: parent.map(|p| p.id.clone()),
        };
        target
            .put(&format!("{id}/{}", super::super::manifest::MANIFEST_NAME), m.to_json())
            .await
            .unwrap();
        m
    }

    async fn read(target: &Target, m: &Manifest) -> State {
        let chain = Chain::load(target, m.clone()).await.unwrap();
        let mut reader = chain.reader(target, "ks").unwrap();
        let mut out = State::new();
        while let Some(r) = reader.next().await.unwrap() {
            assert!(out.insert(r.key, r.value).is_none(), "a key came back twice");
        }
        out
    }

    fn state() -> impl Strategy<Value = State> {
        prop::collection::btree_map(
            prop::collection::vec(0u8..6, 1..3),
            prop::collection::vec(0u8..3, 0..3),
            0..25,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any sequence of states backed up as a full backup and a chain of incremental ones
        /// reads back, at every link, as the state it was taken from; and an unchanged key is
        /// never stored again.
        #[test]
        fn a_chain_reads_back_as_each_state(states in prop::collection::vec(state(), 1..5)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let target = Target::open(&format!("file://{}", dir.path().display()), Duration::from_secs(5)).unwrap();
                let mut parent: Option<Manifest> = None;
                let mut previous = State::new();
                for (i, s) in states.iter().enumerate() {
                    let m = write(&target, &format!("b{i}"), s, parent.as_ref()).await;
                    prop_assert_eq!(&read(&target, &m).await, s);
                    if parent.is_some() {
                        let changed = s.iter().filter(|(k, v)| previous.get(*k) != Some(*v)).count();
                        let removed = previous.keys().filter(|k| !s.contains_key(*k)).count();
                        prop_assert_eq!(m.keyspaces[0].stored, (changed + removed) as u64);
                    }
                    prop_assert_eq!(m.keyspaces[0].keys, s.len() as u64);
                    previous = s.clone();
                    parent = Some(m);
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn a_missing_parent_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(&format!("file://{}", dir.path().display()), Duration::from_secs(5)).unwrap();
        let base = write(&target, "b0", &State::from([(b"a".to_vec(), b"1".to_vec())]), None).await;
        let inc = write(&target, "b1", &State::new(), Some(&base)).await;
        target.delete_backup("b0").await.unwrap();
        let err = Chain::load(&target, inc).await.err().expect("the parent is gone");
        let text = err.to_string();
        assert!(
            text.contains("incremental from b0") && text.contains("chain is broken"),
            "{text}"
        );
    }
}
