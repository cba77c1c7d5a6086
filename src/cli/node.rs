//! `capkv node`: the server's flags, turned into [`NodeOptions`].

use std::path::PathBuf;

use clap::Args;

use crate::ap::replica::ReplicaOptions;
use crate::cp::raft::RaftOptions;
use crate::error::Error;
use crate::node::{own_peer_address, parse_peers, NodeOptions};
use crate::observe::logging::LogFormat;
use crate::tls::TlsFiles;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id (1, 2, ...), as listed in --peers.
    #[arg(long)]
    pub id: u64,
    /// gRPC address of the public API (clients).
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// gRPC address of the peer API (Raft, ap replication, fault control, forwarded requests),
    /// like etcd's peer port: keep it on a network only members reach. Without it the peer API
    /// shares --listen.
    #[arg(long)]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// HTTP address for /metrics, /health, /livez and /readyz.
    #[arg(long)]
    pub http: std::net::SocketAddr,
    /// Where this node keeps its data and logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every member as ID=HOST:PORT, comma-separated (this node included): their peer
    /// addresses (--peer-listen, or --listen for nodes without one). Starts a new cluster
    /// (the lowest id initializes it).
    #[arg(long, required_unless_present = "join", conflicts_with = "join")]
    pub peers: Option<String>,
    /// Join a running cluster instead: peer addresses (HOST:PORT, comma-separated) of some of
    /// its members. The node asks them to add it (`member add` with --id and its peer address),
    /// catches up, and votes; the membership then lives in its data dir.
    #[arg(long, value_name = "PEERS")]
    pub join: Option<String>,
    /// Check tokens on the client port: a file of `ROLE TOKEN` lines (roles readonly, readwrite,
    /// admin). Needs --peer-listen.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Requests served at once on the client port; more are refused at once with
    /// RESOURCE_EXHAUSTED (exit 3) instead of queueing.
    #[arg(long, default_value_t = crate::server::gate::REQUESTS_IN_FLIGHT_MAX)]
    pub max_requests_in_flight: usize,
    /// Client connections held open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = crate::server::connections::CONNECTIONS_MAX)]
    pub max_connections: usize,
    /// TLS on the client port: this node's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Demand client certificates signed by this CA on the client port.
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Mutual TLS on the peer port: this member's certificate, naming node-ID.capkv. Needs
    /// --peer-listen and --peer-trusted-ca-file.
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA that signed every member's peer certificate.
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Allow `capkv fault` commands to partition this node.
    #[arg(long)]
    pub fault_injection: bool,
    #[arg(long, default_value_t = RaftOptions::default().heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    #[arg(long, default_value_t = RaftOptions::default().election_timeout_ms_min)]
    pub election_timeout_ms_min: u64,
    #[arg(long, default_value_t = RaftOptions::default().election_timeout_ms_max)]
    pub election_timeout_ms_max: u64,
    /// Exactly-once sessions of clients idle for longer than this expire (e.g. 10m); a request
    /// retried after its session expired is applied again.
    #[arg(long, value_parser = crate::request::parse_duration, default_value = "10m")]
    pub session_ttl: std::time::Duration,
    /// How often this node compares ap digests with peers.
    #[arg(long, default_value_t = ReplicaOptions::default().anti_entropy_interval_ms)]
    pub anti_entropy_interval_ms: u64,
    /// Peers contacted per anti-entropy round.
    #[arg(long, default_value_t = ReplicaOptions::default().anti_entropy_fanout)]
    pub anti_entropy_fanout: usize,
    /// Hints kept per unreachable peer; beyond it, writes are left to anti-entropy (counted).
    #[arg(long, default_value_t = ReplicaOptions::default().hints_per_peer_max)]
    pub hints_per_peer_max: usize,
    /// Largest clock offset tolerated, in ms: a peer timestamp further ahead of this node's
    /// clock is refused (counted in capkv_ap_clock_refusals_total), and `capkv fault clock`
    /// beyond it is clamped to it.
    #[arg(long, alias = "max-clock-offset", default_value_t = ReplicaOptions::default().max_clock_offset_ms)]
    pub max_clock_offset_ms: u64,
    /// Encoded bytes of hints kept per unreachable peer; beyond it, writes are left to
    /// anti-entropy (counted).
    #[arg(long, default_value_t = ReplicaOptions::default().hints_bytes_max)]
    pub hints_bytes_max: u64,
    /// Take a backup this often (e.g. 1h) when this node leads; needs --backup-to.
    #[arg(long, env = "CAPKV_BACKUP_EVERY", value_parser = crate::request::parse_duration, requires = "backup_to")]
    pub backup_every: Option<std::time::Duration>,
    /// Where scheduled backups go: file:///path or s3://bucket/prefix.
    #[arg(long, env = "CAPKV_BACKUP_TO", requires = "backup_every")]
    pub backup_to: Option<String>,
    /// Scheduled backups kept; older ones are deleted, oldest first.
    #[arg(long, env = "CAPKV_BACKUP_KEEP", default_value_t = 24)]
    pub backup_keep: usize,
    /// A directory this node may write `backup create` file:// backups into when it
    /// coordinates them (repeatable; a file:// --backup-to counts too). Without one, file://
    /// backups are written by the CLI.
    #[arg(
        long = "backup-dir",
        value_name = "DIR",
        env = "CAPKV_BACKUP_DIR",
        value_delimiter = ','
    )]
    pub backup_dirs: Vec<std::path::PathBuf>,
    /// Threads that run the node's request handling, Raft and replication (default: the CPUs
    /// this process may use). 1 runs them all on one thread, which saves the hand-offs between
    /// threads when several nodes share few cores (`cluster up` gives each node its share).
    /// Disk syncs and other blocking work run on threads of their own either way.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    #[arg(long, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Log level (trace, debug, info, warn, error); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Builds node options from the command line.
pub fn node_options(args: &NodeArgs) -> Result<NodeOptions, Error> {
    Ok(NodeOptions {
        id: args.id,
        listen: args.listen,
        peer_listen: args.peer_listen,
        http: args.http,
        data_dir: args.data_dir.clone(),
        peers: match &args.peers {
            Some(peers) => parse_peers(peers)?,
            None => [(args.id, own_peer_address(args.listen, args.peer_listen))].into(),
        },
        join: args
            .join
            .as_deref()
            .map(crate::client::parse_endpoints)
            .unwrap_or_default(),
        fault_injection: args.fault_injection,
        auth_token_file: args.auth_token_file.clone(),
        max_requests_in_flight: args.max_requests_in_flight,
        max_connections: args.max_connections,
        tls: TlsFiles::from_flags(
            args.cert_file.as_deref(),
            args.key_file.as_deref(),
            args.trusted_ca_file.as_deref(),
            "",
        )?,
        peer_tls: TlsFiles::from_flags(
            args.peer_cert_file.as_deref(),
            args.peer_key_file.as_deref(),
            args.peer_trusted_ca_file.as_deref(),
            "peer-",
        )?,
        raft: RaftOptions {
            heartbeat_interval_ms: args.heartbeat_interval_ms,
            election_timeout_ms_min: args.election_timeout_ms_min,
            election_timeout_ms_max: args.election_timeout_ms_max,
            session_ttl_ms: args.session_ttl.as_millis().try_into().unwrap_or(u64::MAX),
        },
        ap: ReplicaOptions {
            anti_entropy_interval_ms: args.anti_entropy_interval_ms,
            anti_entropy_fanout: args.anti_entropy_fanout,
            hints_per_peer_max: args.hints_per_peer_max,
            max_clock_offset_ms: args.max_clock_offset_ms,
            hints_bytes_max: args.hints_bytes_max,
            ..ReplicaOptions::default()
        },
        backup: match (args.backup_every, &args.backup_to) {
            (Some(every), Some(to)) => Some(crate::backup::schedule::ScheduleOptions {
                every,
                to: to.clone(),
                keep: args.backup_keep,
            }),
            _ => None,
        },
        backup_dirs: args.backup_dirs.clone(),
    })
}
