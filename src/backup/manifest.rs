//! The manifest: the one object that makes a backup complete, written after all its data.
//!
//! It names every data object with its size and SHA-256, every keyspace with its mode and
//! counts, the Raft index the cp keyspaces were copied at, and which replicas contributed to
//! the ap keyspaces. Its `format_version` lets a release refuse a format it cannot read: a full
//! backup is written as version 1 and an incremental one as version 2, so a release that knows
//! nothing of incremental backups refuses one instead of restoring only its changes.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The format of a full backup.
pub const FORMAT_VERSION: u32 = 1;

/// The format of an incremental backup (a full one plus `parent` and per-keyspace `incremental`).
pub const FORMAT_VERSION_INCREMENTAL: u32 = 2;

/// The manifest's object name inside a backup's directory.
pub const MANIFEST_NAME: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The backup's id: its directory under the URL, sortable by time.
    pub id: String,
    /// RFC 3339 UTC time at which the backup began.
    pub created_at: String,
    /// The same time, as milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The capkv release that wrote the backup.
    pub capkv_version: String,
    /// The cluster the backup came from: its members' ids and addresses.
    pub cluster: Vec<ClusterMember>,
    /// The applied Raft index at which every cp keyspace was copied (0 without cp keyspaces).
    pub raft_index: u64,
    /// The node that copied the cp keyspaces (the leader), 0 without cp keyspaces.
    pub cp_exported_by: u64,
    /// The largest HLC timestamp the contributing replicas had issued or seen (`physical.logical`).
    pub hlc: String,
    pub keyspaces: Vec<KeyspaceEntry>,
    pub objects: Vec<ObjectEntry>,
    /// Time the backup took, in seconds.
    pub seconds: f64,
    /// Incremental backups: the id of the backup this one stores the changes since (at the same
    /// URL). A restore needs every backup of the chain down to a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub id: u64,
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceEntry {
    pub name: String,
    /// `cp` or `ap`.
    pub mode: String,
    /// Live keys.
    pub keys: u64,
    /// Bytes of live keys and values, before compression.
    pub bytes: u64,
    /// ap: tombstones kept (deletes that a restore must still win against).
    pub tombstones: u64,
    /// ap: the replicas whose records were merged; cp: the leader that copied it.
    pub contributors: Vec<u64>,
    /// ap: the replicas that could not be read (their writes that reached no one else are missing).
    pub unreachable: Vec<u64>,
    /// True when this backup stores only the records that changed since the parent's copy of
    /// the keyspace (the counts above still describe the whole keyspace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incremental: bool,
    /// Records stored in this backup for the keyspace: all of them in a full backup; the
    /// changed ones and the removal markers in an incremental one.
    #[serde(default)]
    pub stored: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The object's path relative to the backup's directory.
    pub path: String,
    pub keyspace: String,
    /// Records in the object.
    pub records: u64,
    /// Stored (compressed) size.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes to JSON")
    }

    /// Parses a stored manifest; `what` names it in errors.
    pub fn from_json(bytes: &[u8], what: &str) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::Storage(format!(
                "the manifest {what} is not valid JSON ({e}); the backup is damaged"
            ))
        })?;
        let version = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if !(u64::from(FORMAT_VERSION)..=u64::from(FORMAT_VERSION_INCREMENTAL)).contains(&version) {
            return Err(Error::InvalidInput(format!(
                "the manifest {what} has format version {version}; this capkv reads versions {FORMAT_VERSION} to {FORMAT_VERSION_INCREMENTAL}: use the capkv release that wrote it"
            )));
        }
        serde_json::from_value(value).map_err(|e| Error::Storage(format!("the manifest {what} is damaged: {e}")))
    }

    /// Stored bytes of all data objects.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.bytes).sum()
    }

    pub fn keyspace(&self, name: &str) -> Option<&KeyspaceEntry> {
        self.keyspaces.iter().find(|k| k.name == name)
    }
}

/// A new backup id from the time it began: `20261204T150951Z-1a2b`, sortable by time.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix: u16 = rand::random();
    format!("{}-{suffix:04x}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            id: "20261204T150951.000Z-0001".into(),
            created_at: "2026-12-04T15:09:51Z".into(),
            created_unix_ms: 1_796_396_991_000,
            capkv_version: "0.1.0".into(),
            cluster: vec![ClusterMember {
                id: 1,
                address: "127.0.0.1:7001".into(),
            }],
            raft_index: 42,
            cp_exported_by: 1,
            hlc: "1796396991000.3".into(),
            keyspaces: vec![KeyspaceEntry {
                name: "bank".into(),
                mode: "cp".into(),
                keys: 2,
                bytes: 20,
                tombstones: 0,
                contributors: vec![1],
                unreachable: vec![],
                incremental: false,
                stored: 2,
            }],
            objects: vec![ObjectEntry {
                path: "data/bank/000000.pb.gz".into(),
                keyspace: "bank".into(),
                records: 2,
                bytes: 50,
                sha256: "ab".repeat(32),
            }],
            seconds: 0.5,
            parent: None,
        }
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json(), "test").unwrap(), m);
        assert_eq!(m.bytes(), 50);
    }

    #[test]
    fn an_incremental_manifest_round_trips_and_a_full_one_omits_the_chain_fields() {
        let full = sample();
        let text = String::from_utf8(full.to_json()).unwrap();
        assert!(!text.contains("parent") && !text.contains("incremental"), "{text}");
        let mut m = sample();
        m.format_version = FORMAT_VERSION_INCREMENTAL;
        m.parent = Some("20261204T150000.000Z-0002".into());
        m.keyspaces[0].incremental = true;
        assert_eq!(Manifest::from_json(&m.to_json(), "test").unwrap(), m);
    }

    #[test]
    fn another_format_version_is_refused_with_a_reason() {
        let mut m = sample();
        m.format_version = 99;
        let err = Manifest::from_json(&m.to_json(), "x/manifest.json").unwrap_err();
        assert!(err.to_string().contains("format version 99"), "{err}");
        let err = Manifest::from_json(b"{not json", "x/manifest.json").unwrap_err();
        assert!(err.to_string().contains("x/manifest.json"), "{err}");
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(chrono::DateTime::from_timestamp(1_000, 0).unwrap());
        let b = new_id(chrono::DateTime::from_timestamp(2_000, 0).unwrap());
        assert!(a < b, "{a} {b}");
    }
}
