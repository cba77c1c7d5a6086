//! Data objects: records of one keyspace, framed, gzip-compressed, checksummed.
//!
//! A record is a `capkv.v1.BackupRecord` (protobuf) preceded by its length as 4 little-endian
//! bytes; a chunk is such records in key order, gzip-compressed. The writer closes a chunk once
//! it holds the chunk size ([`CHUNK_BYTES_DEFAULT`]) before compression, uploads it, and keeps only its
//! [`ObjectEntry`]: memory stays bounded by one chunk whatever the keyspace's size.

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use sha2::{Digest, Sha256};

use super::manifest::ObjectEntry;
use super::target::Target;
use crate::error::Error;
use crate::proto::BackupRecord;

/// Uncompressed bytes per data object by default: large enough that S3 requests are few, small
/// enough that one chunk in memory is cheap.
pub const CHUNK_BYTES_DEFAULT: usize = 8 * 1024 * 1024;

/// The smallest chunk size accepted (`--chunk-bytes`): smaller only multiplies requests.
pub const CHUNK_BYTES_MIN: usize = 64 * 1024;

/// The largest chunk size accepted: a chunk is held in memory while it fills.
pub const CHUNK_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes one keyspace's records as a sequence of data objects of backup `id`.
pub struct ChunkWriter<'a> {
    target: &'a Target,
    id: String,
    keyspace: String,
    encoder: GzEncoder<Vec<u8>>,
    raw_bytes: usize,
    records: u64,
    seq: u32,
    chunk_bytes: usize,
    pub objects: Vec<ObjectEntry>,
}

impl<'a> ChunkWriter<'a> {
    /// A writer that closes each object at `chunk_bytes` bytes before compression.
    pub fn new(target: &'a Target, id: &str, keyspace: &str, chunk_bytes: usize) -> Self {
        Self {
            target,
            id: id.to_string(),
            keyspace: keyspace.to_string(),
            encoder: GzEncoder::new(Vec::new(), Compression::fast()),
            raw_bytes: 0,
            records: 0,
            seq: 0,
            chunk_bytes,
            objects: Vec::new(),
        }
    }

    pub async fn push(&mut self, record: &BackupRecord) -> Result<(), Error> {
        let bytes = record.encode_to_vec();
        let frame = [&(bytes.len() as u32).to_le_bytes()[..], &bytes].concat();
        self.encoder
            .write_all(&frame)
            .expect("compressing into memory does not fail");
        self.raw_bytes += frame.len();
        self.records += 1;
        if self.raw_bytes >= self.chunk_bytes {
            self.upload().await?;
        }
        Ok(())
    }

    /// Uploads what is buffered (nothing when empty) and returns every object written.
    pub async fn finish(mut self) -> Result<Vec<ObjectEntry>, Error> {
        if self.records > 0 {
            self.upload().await?;
        }
        Ok(self.objects)
    }

    async fn upload(&mut self) -> Result<(), Error> {
        let encoder = std::mem::replace(&mut self.encoder, GzEncoder::new(Vec::new(), Compression::fast()));
        let bytes = encoder.finish().expect("compressing into memory does not fail");
        let path = format!("data/{}/{:06}.pb.gz", self.keyspace, self.seq);
        let entry = ObjectEntry {
            path: path.clone(),
            keyspace: self.keyspace.clone(),
            records: self.records,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        self.target.put(&format!("{}/{path}", self.id), bytes).await?;
        self.objects.push(entry);
        self.seq += 1;
        self.raw_bytes = 0;
        self.records = 0;
        Ok(())
    }
}

/// Reads object `entry` of backup `id` and checks its size and checksum; the error names it.
pub async fn fetch_verified(target: &Target, id: &str, entry: &ObjectEntry) -> Result<Vec<u8>, Error> {
    let name = format!("{id}/{}", entry.path);
    let bytes = target.get(&name).await?;
    let sha = sha256_hex(&bytes);
    if bytes.len() as u64 != entry.bytes || sha != entry.sha256 {
        return Err(Error::Storage(format!(
            "object {name} at {} is corrupt: {} bytes with SHA-256 {sha}, but the manifest says {} bytes with SHA-256 {}",
            target.url(),
            bytes.len(),
            entry.bytes,
            entry.sha256
        )));
    }
    Ok(bytes)
}

/// Decodes a verified object into its records.
pub fn decode(bytes: &[u8], name: &str) -> Result<Vec<BackupRecord>, Error> {
    let damaged = |e: String| Error::Storage(format!("object {name} cannot be decoded ({e}); the backup is damaged"));
    let mut raw = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .map_err(|e| damaged(e.to_string()))?;
    let mut records = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(damaged("a truncated record length".into()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("four bytes")) as usize;
        let body = rest
            .get(4..4 + len)
            .ok_or_else(|| damaged("a truncated record".into()))?;
        records.push(BackupRecord::decode(body).map_err(|e| damaged(e.to_string()))?);
        rest = &rest[4 + len..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(i: usize) -> BackupRecord {
        BackupRecord {
            key: format!("key-{i:05}").into_bytes(),
            value: vec![b'v'; i % 100],
            tombstone: false,
            ap_version: None,
            removed: false,
        }
    }

    #[tokio::test]
    async fn chunks_round_trip_and_a_corrupt_object_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let target = Target::open(&url, Duration::from_secs(5)).unwrap();
        let mut writer = ChunkWriter::new(&target, "b1", "ks", CHUNK_BYTES_DEFAULT);
        for i in 0..500 {
            writer.push(&record(i)).await.unwrap();
        }
        let objects = writer.finish().await.unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].records, 500);
        let bytes = fetch_verified(&target, "b1", &objects[0]).await.unwrap();
        let records = decode(&bytes, "b1").unwrap();
        assert_eq!(records, (0..500).map(record).collect::<Vec<_>>());

        let path = dir.path().join("b1").join(&objects[0].path);
        let mut stored = std::fs::read(&path).unwrap();
        stored[20] ^= 0xff;
        std::fs::write(&path, stored).unwrap();
        let err = fetch_verified(&target, "b1", &objects[0]).await.unwrap_err();
        assert!(err.to_string().contains("b1/data/ks/000000.pb.gz"), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[tokio::test]
    async fn a_backup_without_manifest_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let target = Target::open(&url, Duration::from_secs(5)).unwrap();
        let mut writer = ChunkWriter::new(&target, "20260101T000000.000Z-0001", "ks", CHUNK_BYTES_MIN);
        writer.push(&record(1)).await.unwrap();
        writer.finish().await.unwrap();
        let (complete, incomplete) = target.list().await.unwrap();
        assert!(complete.is_empty());
        assert_eq!(incomplete, ["20260101T000000.000Z-0001"]);
        let err = target.choose(None).await.unwrap_err();
        assert!(err.to_string().contains("no complete backup"), "{err}");
    }
}
