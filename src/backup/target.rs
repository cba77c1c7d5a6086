//! Where backups live: `file:///path` or `s3://bucket/prefix`, through `object_store`.
//!
//! A backup is the directory `<url>/<id>/` holding `data/<keyspace>/<seq>.pb.gz` objects and,
//! written last, `manifest.json`. Listing looks for manifests: a directory without one is an
//! interrupted backup and is never offered for verify or restore.
//!
//! S3 settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible servers,
//! `AWS_ALLOW_HTTP=true` for plain HTTP). Every call is bounded by the operation timeout, and the
//! client's own retries stay inside it, so an unreachable server fails within `--timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};

use super::manifest::{Manifest, MANIFEST_NAME};
use crate::error::Error;

pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The key prefix under the bucket (s3) or root directory (file); empty for the root.
    prefix: String,
    url: String,
    /// The most one object call may take.
    op_timeout: Duration,
    /// Bytes stored through this target so far (progress of a backup).
    written: AtomicU64,
}

/// A complete backup found under a URL.
pub struct Listed {
    pub manifest: Manifest,
}

impl Target {
    /// Opens the target a `file://` or `s3://` URL names.
    pub fn open(url: &str, op_timeout: Duration) -> Result<Self, Error> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(path) = url.strip_prefix("file://") {
            (Arc::new(local(path)?), String::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            (Arc::new(s3(bucket, op_timeout)?), prefix.trim_matches('/').to_string())
        } else {
            return Err(Error::InvalidInput(format!(
                "'{url}' is not a backup URL; use file:///absolute/path or s3://bucket/prefix"
            )));
        };
        Ok(Self {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            op_timeout,
            written: AtomicU64::new(0),
        })
    }

    /// Bytes stored through this target so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Runs one object call within the operation timeout, naming `what` when it fails.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(Error::Storage(format!(
                "{what} at {}: the object is missing; the backup is incomplete or was damaged",
                self.url
            ))),
            Ok(Err(e)) => Err(Error::Unreachable(format!("{what} at {} failed: {e}", self.url))),
            Err(_) => Err(Error::Unreachable(format!(
                "{what} at {} got no answer within {} ms; is the storage reachable?",
                self.url,
                self.op_timeout.as_millis()
            ))),
        }
    }

    /// Stores one object (`relative` to the URL).
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let path = self.path(relative);
        let what = format!("writing {relative}");
        let len = bytes.len() as u64;
        self.bounded(&what, self.store.put(&path, PutPayload::from(bytes)))
            .await?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Reads one object whole (objects are bounded chunks).
    pub async fn get(&self, relative: &str) -> Result<Vec<u8>, Error> {
        let path = self.path(relative);
        let what = format!("reading {relative}");
        let result = self.bounded(&what, self.store.get(&path)).await?;
        self.bounded(&what, result.bytes()).await.map(|b| b.to_vec())
    }

    /// The complete backups under the URL, oldest first, and the ids of incomplete ones.
    pub async fn list(&self) -> Result<(Vec<Listed>, Vec<String>), Error> {
        let root = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let listing = self
            .bounded("listing backups", self.store.list_with_delimiter(root.as_ref()))
            .await?;
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        ids.sort();
        let (mut complete, mut incomplete) = (Vec::new(), Vec::new());
        for id in ids {
            match self.manifest(&id).await {
                Ok(manifest) => complete.push(Listed { manifest }),
                Err(Error::Storage(_)) => incomplete.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok((complete, incomplete))
    }

    /// The manifest of backup `id`; a missing one is an error that says the backup is incomplete.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, Error> {
        let name = format!("{id}/{MANIFEST_NAME}");
        let bytes = self.get(&name).await.map_err(|e| match e {
            Error::Storage(_) => Error::Storage(format!(
                "backup {id} at {} has no manifest: it is incomplete (interrupted) and cannot be used",
                self.url
            )),
            other => other,
        })?;
        Manifest::from_json(&bytes, &name)
    }

    /// Deletes backup `id`: its manifest first (so it is never seen half-deleted as complete),
    /// then every other object under it.
    pub async fn delete_backup(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting backup {id}");
        let manifest = self.path(&format!("{id}/{MANIFEST_NAME}"));
        match self.bounded(&what, self.store.delete(&manifest)).await {
            Ok(()) | Err(Error::Storage(_)) => {}
            Err(e) => return Err(e),
        }
        let dir = self.path(id);
        let objects: Vec<object_store::ObjectMeta> = self
            .bounded(&what, futures::TryStreamExt::try_collect(self.store.list(Some(&dir))))
            .await?;
        for object in objects {
            self.bounded(&what, self.store.delete(&object.location)).await?;
        }
        Ok(())
    }

    /// The manifest of backup `id`, or of the newest complete backup.
    pub async fn choose(&self, id: Option<&str>) -> Result<Manifest, Error> {
        if let Some(id) = id {
            return self.manifest(id).await;
        }
        let (complete, _) = self.list().await?;
        complete.into_iter().next_back().map(|l| l.manifest).ok_or_else(|| {
            Error::InvalidInput(format!(
                "there is no complete backup at {}; create one with `capkv backup create --to {}`",
                self.url, self.url
            ))
        })
    }
}

fn local(path: &str) -> Result<LocalFileSystem, Error> {
    if !path.starts_with('/') {
        return Err(Error::InvalidInput(format!(
            "file://{path} is not an absolute path; write file:///absolute/path"
        )));
    }
    std::fs::create_dir_all(path)
        .map_err(|e| Error::Storage(format!("cannot create the backup directory {path}: {e}")))?;
    LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Error::Storage(format!("cannot open the backup directory {path}: {e}")))
}

fn s3(bucket: &str, op_timeout: Duration) -> Result<object_store::aws::AmazonS3, Error> {
    if bucket.is_empty() {
        return Err(Error::InvalidInput(
            "the s3 URL names no bucket; write s3://bucket/prefix".into(),
        ));
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: op_timeout,
    };
    // These client options replace those `from_env` read, so plain HTTP is carried over here.
    let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let client = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(op_timeout)
        .with_connect_timeout(op_timeout.min(Duration::from_secs(2)));
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_client_options(client)
        .build()
        .map_err(|e| {
            Error::InvalidInput(format!(
                "cannot use s3://{bucket}: {e}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true for a local S3 server)"
            ))
        })
}
