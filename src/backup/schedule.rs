//! Scheduled backups with retention: `capkv node --backup-every 1h --backup-to URL --backup-keep 24`.
//!
//! Every node runs the schedule, but only the node that leads when a tick comes takes the
//! backup (the same coordinator as `backup create`, talking to its own gRPC address), so one
//! backup is taken per interval however many nodes have the flags. After a backup succeeds,
//! retention deletes the oldest complete backups beyond `--backup-keep` ([`expired`]): never the
//! newest, so never the only complete one, and never one that a kept incremental backup needs.
//! A backup is deleted manifest first, so a deletion that stops halfway leaves an incomplete
//! backup (never listed), not a damaged complete one.
//!
//! The node's metrics carry the last success time, its duration and size, and the failures;
//! `/health` reports an overdue backup ([`health`]) on the leader: none succeeded in two
//! intervals.
//!
//! CAVEATS: the schedule counts from the node's start, not from wall-clock boundaries; a leader
//! change may take one backup early or skip one; incomplete backups left by a crash are not
//! cleaned up by retention.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::chunk::CHUNK_BYTES_DEFAULT;
use super::create::{create, CreateOptions};
use super::target::Target;
use crate::client::Client;
use crate::error::Error;

/// The shortest interval accepted: a backup reads every keyspace, so more often is a mistake.
pub const BACKUP_EVERY_MIN: Duration = Duration::from_secs(1);

/// How long one call (to a node or to the storage) of a scheduled backup may take.
const SCHEDULED_CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ScheduleOptions {
    pub every: Duration,
    pub to: String,
    /// Complete backups kept; older ones are deleted.
    pub keep: usize,
}

impl ScheduleOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.every < BACKUP_EVERY_MIN {
            return Err(Error::InvalidInput(format!(
                "--backup-every {:?} is too short; take backups at most once a second",
                self.every
            )));
        }
        if self.keep == 0 {
            return Err(Error::InvalidInput(
                "--backup-keep 0 would delete every backup; keep at least 1".into(),
            ));
        }
        if !(self.to.starts_with("file:///") || self.to.starts_with("s3://")) {
            return Err(Error::InvalidInput(format!(
                "--backup-to '{}' is not a backup URL; use file:///absolute/path or s3://bucket/prefix",
                self.to
            )));
        }
        Ok(())
    }
}

/// The complete backups to delete (oldest first) so that `keep` remain: `backups` are
/// `(id, parent)` oldest first. A backup that a kept incremental backup depends on (directly or
/// through its chain) is kept too, so a restore of every kept backup still works.
pub fn expired(backups: &[(String, Option<String>)], keep: usize) -> Vec<String> {
    let keep = keep.max(1);
    let cut = backups.len().saturating_sub(keep);
    let mut needed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (_, parent) in &backups[cut..] {
        let mut next = parent.as_deref();
        while let Some(id) = next {
            if !needed.insert(id) {
                break;
            }
            next = backups.iter().find(|(b, _)| b == id).and_then(|(_, p)| p.as_deref());
        }
    }
    backups[..cut]
        .iter()
        .filter(|(id, _)| !needed.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect()
}

/// What the schedule last did, for `/health`.
struct Status {
    every: Duration,
    started: Instant,
    last_success: Option<Instant>,
    last_error: Option<String>,
}

static STATUS: Mutex<Option<Status>> = Mutex::new(None);

/// `None` without a schedule; otherwise whether backups are on time, and a sentence.
pub fn health(is_leader: bool) -> Option<(bool, String)> {
    let guard = STATUS.lock().expect("the schedule status lock is never poisoned");
    let status = guard.as_ref()?;
    if !is_leader {
        return Some((true, "scheduled backups are taken by the leader".into()));
    }
    let since = status.last_success.unwrap_or(status.started);
    let overdue = since.elapsed() > 2 * status.every;
    let detail = match (&status.last_success, overdue, &status.last_error) {
        (_, true, Some(e)) => format!(
            "backup overdue: none succeeded in {:?} (every {:?}); last error: {e}",
            since.elapsed(),
            status.every
        ),
        (_, true, None) => format!("backup overdue: none succeeded in {:?}", since.elapsed()),
        (Some(t), false, _) => format!("last backup {:?} ago", t.elapsed()),
        (None, false, _) => "no scheduled backup taken yet".into(),
    };
    Some((!overdue, detail))
}

fn record(result: &Result<(), Error>) {
    let mut guard = STATUS.lock().expect("the schedule status lock is never poisoned");
    if let Some(status) = guard.as_mut() {
        match result {
            Ok(()) => {
                status.last_success = Some(Instant::now());
                status.last_error = None;
            }
            Err(e) => status.last_error = Some(e.to_string()),
        }
    }
}

/// Runs the schedule until the task is aborted. `listen` is this node's gRPC address.
pub async fn run(options: ScheduleOptions, listen: String, is_leader: impl Fn() -> bool) {
    *STATUS.lock().expect("the schedule status lock is never poisoned") = Some(Status {
        every: options.every,
        started: Instant::now(),
        last_success: None,
        last_error: None,
    });
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + options.every, options.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !is_leader() {
            continue;
        }
        let result = take_one(&options, &listen).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, to = %options.to, "the scheduled backup failed");
            metrics::counter!("capkv_backup_failures_total").increment(1);
        }
        record(&result);
    }
}

/// A client of this node's own peer address (`listen`), with its peer certificate when the
/// peer port demands one: how a node coordinates a backup.
pub fn self_client(listen: &str, timeout: Duration) -> Result<Client, Error> {
    Ok(Client::new(vec![listen.to_string()], timeout)?.with_tls(crate::tls::peer_client().cloned()))
}

/// Updates the backup metrics after a backup this node took.
pub fn count_success(manifest: &super::Manifest) {
    let now_s = manifest.created_unix_ms as f64 / 1000.0 + manifest.seconds;
    metrics::gauge!("capkv_backup_last_success_timestamp_seconds").set(now_s);
    metrics::gauge!("capkv_backup_last_duration_seconds").set(manifest.seconds);
    metrics::gauge!("capkv_backup_last_bytes").set(manifest.bytes() as f64);
    metrics::counter!("capkv_backup_success_total").increment(1);
}

/// Takes one backup through this node, then applies retention.
async fn take_one(options: &ScheduleOptions, listen: &str) -> Result<(), Error> {
    let client = self_client(listen, SCHEDULED_CALL_TIMEOUT)?;
    let target = Target::open(&options.to, SCHEDULED_CALL_TIMEOUT)?;
    let create_options = CreateOptions {
        keyspaces: Vec::new(),
        timeout: SCHEDULED_CALL_TIMEOUT,
        chunk_bytes: CHUNK_BYTES_DEFAULT,
        incremental_from: None,
    };
    let manifest = create(&client, &target, &create_options).await?;
    count_success(&manifest);
    tracing::info!(id = %manifest.id, to = %options.to, seconds = manifest.seconds, "scheduled backup taken");
    let (complete, _) = target.list().await?;
    let backups: Vec<(String, Option<String>)> = complete
        .into_iter()
        .map(|l| (l.manifest.id, l.manifest.parent))
        .collect();
    for id in expired(&backups, options.keep) {
        target.delete_backup(&id).await?;
        tracing::info!(%id, "deleted an expired backup (retention)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(String, Option<String>)> {
        (0..n).map(|i| (format!("b{i}"), None)).collect()
    }

    #[test]
    fn retention_deletes_the_oldest_beyond_keep_and_never_the_newest() {
        assert_eq!(expired(&ids(4), 2), ["b0", "b1"]);
        assert!(expired(&ids(2), 2).is_empty());
        assert!(expired(&ids(1), 1).is_empty());
        assert_eq!(expired(&ids(3), 0), ["b0", "b1"], "keep 0 still keeps the newest");
    }

    #[test]
    fn retention_keeps_the_chain_a_kept_incremental_backup_needs() {
        let chain = |ids: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            ids.iter()
                .map(|(id, p)| (id.to_string(), p.map(str::to_string)))
                .collect()
        };
        // b0 full, b1 and b2 incremental on it (b2 on b1), b3 full.
        let backups = chain(&[("b0", None), ("b1", Some("b0")), ("b2", Some("b1")), ("b3", None)]);
        assert_eq!(expired(&backups, 2), Vec::<String>::new(), "b2 needs b1 and b0");
        assert_eq!(expired(&backups, 1), ["b0", "b1", "b2"]);
        let backups = chain(&[("b0", None), ("b1", None), ("b2", Some("b0"))]);
        assert_eq!(expired(&backups, 1), ["b1"], "b0 is kept for b2");
    }

    #[test]
    fn options_are_checked() {
        let ok = ScheduleOptions {
            every: Duration::from_secs(3600),
            to: "s3://bucket/x".into(),
            keep: 24,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            ScheduleOptions { keep: 0, ..ok.clone() },
            ScheduleOptions {
                every: Duration::from_millis(10),
                ..ok.clone()
            },
            ScheduleOptions {
                to: "ftp://x".into(),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
