//! Everything `capkv node` is started with, checked as a whole before anything starts.
//!
//! Only the binary reads flags (see `cli/`); this module holds the options as plain data with a
//! [`NodeOptions::validate`] that checks the relations between them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ap::replica::ReplicaOptions;
use crate::cp::raft::RaftOptions;
use crate::cp::NodeId;
use crate::error::Error;

/// Everything `capkv node` is started with.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// Where the peer API is served (`--peer-listen`); `None`: on `listen`, with the public API.
    pub peer_listen: Option<SocketAddr>,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Every member's peer address (its `--peer-listen`, or its `--listen` without one), this
    /// node included.
    pub peers: BTreeMap<NodeId, String>,
    /// `--join`: endpoints of a running cluster to ask for membership; empty: the cluster is
    /// `peers`, bootstrapped by its lowest id. A joining node's `peers` is itself only.
    pub join: Vec<String>,
    pub fault_injection: bool,
    /// Tokens and roles the client port checks (`--auth-token-file`); `None`: no checks.
    pub auth_token_file: Option<PathBuf>,
    /// Requests in flight on the client port at most; more are refused (`RESOURCE_EXHAUSTED`).
    pub max_requests_in_flight: usize,
    /// Client connections held open at most; more are closed on accept.
    pub max_connections: usize,
    /// TLS of the client port (`--cert-file`, `--key-file`, `--trusted-ca-file`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Mutual TLS of the peer port (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`).
    pub peer_tls: Option<crate::tls::TlsFiles>,
    pub raft: RaftOptions,
    pub ap: ReplicaOptions,
    /// Scheduled backups (`--backup-every`, `--backup-to`, `--backup-keep`), when configured.
    pub backup: Option<crate::backup::schedule::ScheduleOptions>,
    /// Directories `backup create` may write file:// backups into with this node as the
    /// coordinator (`--backup-dir`); see [`NodeOptions::may_write_backups_to`].
    pub backup_dirs: Vec<PathBuf>,
}

impl NodeOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidInput("node ids start at 1; --id 0 is not allowed".into()));
        }
        if !self.join.is_empty() && self.peers.keys().any(|id| *id != self.id) {
            return Err(Error::InvalidInput(
                "give either --peers (a new cluster) or --join (a running one), not both".into(),
            ));
        }
        if !self.peers.contains_key(&self.id) {
            return Err(Error::InvalidInput(format!(
                "--peers must include this node (--id {}), e.g. --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
                self.id
            )));
        }
        if self.listen == self.http {
            return Err(Error::InvalidInput(format!(
                "--listen and --http are both {}; give them different ports",
                self.listen
            )));
        }
        if let Some(peer) = self.peer_listen {
            if peer == self.listen || peer == self.http {
                return Err(Error::InvalidInput(format!(
                    "--peer-listen {peer} is also --listen or --http; give the peer API a port of its own"
                )));
            }
        }
        if self.auth_token_file.is_some() && self.peer_listen.is_none() {
            return Err(Error::InvalidInput(
                "--auth-token-file needs --peer-listen: members call each other on the peer port, which does not check tokens; give the peer API a port of its own".into(),
            ));
        }
        if self.tls.is_some() && self.peer_listen.is_none() {
            return Err(Error::InvalidInput(
                "--cert-file needs --peer-listen: members reach each other on the peer port, which then keeps its own settings".into(),
            ));
        }
        if let Some(peer_tls) = &self.peer_tls {
            if self.peer_listen.is_none() {
                return Err(Error::InvalidInput(
                    "--peer-cert-file needs --peer-listen: the peer port demands member certificates, which clients do not have; give the peer API a port of its own".into(),
                ));
            }
            if peer_tls.trusted_ca.is_none() {
                return Err(Error::InvalidInput(
                    "--peer-cert-file needs --peer-trusted-ca-file, the CA that signed every member's certificate"
                        .into(),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(Error::InvalidInput("--max-connections must be at least 1".into()));
        }
        if self.max_requests_in_flight == 0 {
            return Err(Error::InvalidInput(
                "--max-requests-in-flight must be at least 1".into(),
            ));
        }
        self.raft.validate()?;
        if let Some(backup) = &self.backup {
            backup.validate()?;
        }
        if let Some(dir) = self.backup_dirs.iter().find(|d| !plain_absolute(d)) {
            return Err(Error::InvalidInput(format!(
                "--backup-dir {} must be an absolute path without '..' parts",
                dir.display()
            )));
        }
        self.ap.validate()
    }

    /// Whether a `backup create` this node coordinates may write to `url`. s3:// always (the
    /// node's AWS credentials decide); file:// only under a `--backup-dir` or a file://
    /// `--backup-to`, so a client cannot make the node write anywhere else on its disks.
    pub fn may_write_backups_to(&self, url: &str) -> Result<(), Error> {
        let Some(path) = url.strip_prefix("file://") else {
            return Ok(());
        };
        let path = std::path::Path::new(path);
        let scheduled = self
            .backup
            .as_ref()
            .and_then(|b| b.to.strip_prefix("file://"))
            .map(PathBuf::from);
        let allowed: Vec<PathBuf> = self.backup_dirs.iter().cloned().chain(scheduled).collect();
        if is_under(path, &allowed) {
            return Ok(());
        }
        let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
        Err(Error::Refused(format!(
            "node {} writes file:// backups only under its --backup-dir directories ({}), and {} is not under one; \
             start the nodes with --backup-dir covering it, or pass --via cli to write the backup from this machine",
            self.id,
            if dirs.is_empty() {
                "none are set".to_string()
            } else {
                dirs.join(", ")
            },
            path.display()
        )))
    }
}

/// Whether `path` is a plain absolute path inside one of `dirs` (or one of them).
fn is_under(path: &std::path::Path, dirs: &[PathBuf]) -> bool {
    plain_absolute(path) && dirs.iter().any(|dir| path.starts_with(dir))
}

/// An absolute path with no `..` parts (`Path::components` drops inner `.` ones): its prefix test cannot be escaped.
fn plain_absolute(path: &std::path::Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The address other members reach this node's peer API at: `--peer-listen`, else `--listen`.
pub fn own_peer_address(listen: SocketAddr, peer_listen: Option<SocketAddr>) -> String {
    peer_listen.unwrap_or(listen).to_string()
}

/// Parses `--peers 1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, Error> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let bad = || {
            Error::InvalidInput(format!(
                "'{part}' in --peers is not ID=HOST:PORT (e.g. 1=127.0.0.1:7001)"
            ))
        };
        let (id, addr) = part.trim().split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.parse().map_err(|_| bad())?;
        if id == 0 || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(bad());
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(Error::InvalidInput(format!("node {id} appears twice in --peers")));
        }
    }
    if peers.is_empty() {
        return Err(Error::InvalidInput(
            "--peers is empty; list every member as ID=HOST:PORT".into(),
        ));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "127.0.0.1:7002");
        for bad in [
            "",
            "1=host",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=a:1,1=b:2",
            "1:127.0.0.1:7001",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn node_written_backups_stay_inside_the_backup_dirs() {
        let dirs = [PathBuf::from("/srv/backups"), PathBuf::from("/mnt/nfs/capkv")];
        let under = |p: &str| is_under(std::path::Path::new(p), &dirs);
        assert!(under("/srv/backups"));
        assert!(under("/srv/backups/nightly"));
        assert!(under("/mnt/nfs/capkv/a/b"));
        assert!(under("/srv/backups/./x"), "a '.' part names the same directory");
        for outside in [
            "/srv/backups-other",
            "/srv",
            "/etc",
            "/srv/backups/../../etc",
            "srv/backups/x",
        ] {
            assert!(!under(outside), "{outside} must be refused");
        }
        assert!(!is_under(std::path::Path::new("/srv/backups"), &[]));
    }
}
