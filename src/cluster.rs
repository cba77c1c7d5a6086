//! `capkv cluster up|down|status`: a local cluster of `capkv node` processes on 127.0.0.1.
//!
//! `up` checks the ports, starts one process per node (fault injection on, logs under
//! `<data-dir>/node-N/`), records them in `<data-dir>/cluster.json`, waits until a leader is
//! elected and every node is healthy, prints the endpoints, and then either stays in the
//! foreground until Ctrl-C (stopping the nodes cleanly) or, with `--detach`, leaves them running
//! for `cluster down`. A second `up` on the same data dir reuses the data.
//!
//! Caveats: the launcher is for one machine and loopback only; nodes are supervised only while
//! `up` runs in the foreground (a node that dies is reported, not restarted).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Error;

/// Most nodes `cluster up` starts; a local demo cluster, not a fleet.
const NODES_MAX: u16 = 9;
/// How long `up` waits for a leader and healthy nodes.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const STATE_FILE: &str = "cluster.json";

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// gRPC port of node 1; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// HTTP port of node 1; node i serves HTTP on http-base-port + i - 1.
    #[arg(long, default_value_t = 8001)]
    pub http_base_port: u16,
    /// Peer port of node 1 (Raft and replication between nodes, apart from clients); node i
    /// uses peer-base-port + i - 1.
    #[arg(long, default_value_t = 7101)]
    pub peer_base_port: u16,
    #[arg(long, default_value = "./capkv-data")]
    pub data_dir: PathBuf,
    /// Leave the nodes running in the background; stop them with `capkv cluster down`.
    #[arg(long)]
    pub detach: bool,
    /// TLS: makes a CA and a certificate per node under <data-dir>/tls/ (kept when they exist),
    /// serves the client ports over TLS and the peer ports over mutual TLS.
    #[arg(long)]
    pub tls: bool,
    /// Check tokens: writes admin.token, readwrite.token and readonly.token (mode 0600) under
    /// <data-dir>/auth/ (kept when they exist) and starts the nodes with them.
    #[arg(long)]
    pub auth: bool,
    /// Worker threads of each node (`capkv node --worker-threads`). By default the nodes share
    /// this machine's CPUs: each gets CPUs / nodes, at least 1.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// The CPUs this process may use (its affinity mask and cgroup quota), 1 when unknown.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Each node's worker threads when `nodes` nodes share `cpus` CPUs: an equal share, at least 1.
/// More threads than cores only adds hand-offs between threads that wait for each other.
fn worker_share(cpus: usize, nodes: u16) -> usize {
    (cpus / usize::from(nodes.max(1))).max(1)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    id: u64,
    pid: i32,
    listen: String,
    /// Empty in the state file of a cluster started before peer ports existed.
    #[serde(default)]
    peer: String,
    http: String,
    log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClusterState {
    nodes: Vec<NodeRecord>,
}

impl UpArgs {
    /// `--worker-threads` of each node: as given, or the node's share of this machine's CPUs.
    fn node_worker_threads(&self) -> usize {
        self.worker_threads
            .map_or_else(|| worker_share(cpus(), self.nodes), usize::from)
    }

    fn validate(&self) -> Result<(), Error> {
        if self.nodes == 0 || self.nodes > NODES_MAX {
            return Err(Error::InvalidInput(format!(
                "--nodes must be between 1 and {NODES_MAX}, not {}",
                self.nodes
            )));
        }
        let ranges = [
            ("--base-port", self.base_port),
            ("--peer-base-port", self.peer_base_port),
            ("--http-base-port", self.http_base_port),
        ];
        for (flag, base) in ranges {
            if base as u32 + self.nodes as u32 > 65536 {
                return Err(Error::InvalidInput(format!(
                    "the port range of {flag} runs past 65535; lower {flag}"
                )));
            }
        }
        for (i, (flag_a, a)) in ranges.iter().enumerate() {
            for (flag_b, b) in &ranges[i + 1..] {
                let (a, b, n) = (*a as u32, *b as u32, self.nodes as u32);
                if a < b + n && b < a + n {
                    return Err(Error::InvalidInput(format!(
                        "the port ranges of {flag_a} and {flag_b} overlap ({n} nodes each); move one of them"
                    )));
                }
            }
        }
        Ok(())
    }

    fn grpc(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port as u64 + id - 1)
    }

    fn peer(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.peer_base_port as u64 + id - 1)
    }

    fn http(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.http_base_port as u64 + id - 1)
    }
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

fn read_state(data_dir: &Path) -> Option<ClusterState> {
    let text = std::fs::read_to_string(state_path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Is node `record` of this cluster still running? Its pid must run `node` with the node's own
/// data dir (the directory of its log), so a pid the kernel reused for another process, or for a
/// node of another cluster, is never signalled, whatever the capkv binary is called.
fn is_cluster_node(record: &NodeRecord) -> bool {
    let Some(dir) = record.log.parent() else {
        return false;
    };
    std::fs::read(format!("/proc/{}/cmdline", record.pid)).is_ok_and(|cmdline| runs_node_in(&cmdline, dir))
}

/// Does a NUL-separated command line run `<binary> node ... --data-dir <dir> ...`?
fn runs_node_in(cmdline: &[u8], dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.get(1) == Some(&&b"node"[..])
        && args
            .windows(2)
            .any(|pair| pair[0] == b"--data-dir" && pair[1] == dir.as_os_str().as_bytes())
}

fn check_port_free(addr: &str, what: &str) -> Result<(), Error> {
    TcpListener::bind(addr).map(drop).map_err(|e| {
        Error::Refused(format!("{addr} ({what}) is not free ({e}); stop what uses it or choose other ports with --base-port/--peer-base-port/--http-base-port"))
    })
}

/// The TLS flags of node `id` with the certificates `cluster up --tls` made under `dir`: the same
/// certificate on both ports, client certificates demanded on the peer port only.
fn tls_flags(dir: &Path, id: u64) -> Vec<std::ffi::OsString> {
    let cert = dir.join(format!("node-{id}.pem"));
    let key = dir.join(format!("node-{id}.key"));
    let ca = dir.join("ca.pem");
    let mut flags = Vec::new();
    for (flag, path) in [
        ("--cert-file", &cert),
        ("--key-file", &key),
        ("--peer-cert-file", &cert),
        ("--peer-key-file", &key),
        ("--peer-trusted-ca-file", &ca),
    ] {
        flags.push(flag.into());
        flags.push(path.as_os_str().to_owned());
    }
    flags
}

/// The node token file under `dir` and the admin token: written when missing, kept otherwise
/// (so tokens a user exported still work after a restart).
fn cluster_tokens(dir: &Path) -> Result<(PathBuf, String), Error> {
    let file = dir.join("tokens");
    let file = if file.exists() {
        file
    } else {
        crate::auth::write_cluster_tokens(dir)?
    };
    let admin = dir.join("admin.token");
    let token = std::fs::read_to_string(&admin).map_err(|e| {
        Error::InvalidInput(format!(
            "cannot read {} ({e}); remove {} to make new tokens",
            admin.display(),
            dir.display()
        ))
    })?;
    Ok((file, token.trim().to_string()))
}

fn spawn_node(
    args: &UpArgs,
    id: u64,
    peers: &str,
    tokens: Option<&PathBuf>,
    exe: &Path,
) -> Result<(Child, NodeRecord), Error> {
    let dir = args.data_dir.join(format!("node-{id}"));
    crate::storage::create_private_dir(&dir)
        .map_err(|e| Error::InvalidInput(format!("cannot create {}: {e}", dir.display())))?;
    let log = dir.join("node.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::Internal(format!("cannot open {}: {e}", log.display())))?;
    let stderr = file
        .try_clone()
        .map_err(|e| Error::Internal(format!("cannot open {}: {e}", log.display())))?;
    let mut command = std::process::Command::new(exe);
    command
        .args([
            "node",
            "--id",
            &id.to_string(),
            "--listen",
            &args.grpc(id),
            "--peer-listen",
            &args.peer(id),
            "--http",
            &args.http(id),
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--peers", peers, "--fault-injection"])
        .args(["--worker-threads".to_string(), args.node_worker_threads().to_string()])
        .args(
            tokens
                .map(|t| [std::ffi::OsStr::new("--auth-token-file"), t.as_os_str()])
                .into_iter()
                .flatten(),
        )
        .args(if args.tls {
            tls_flags(&args.data_dir.join("tls"), id)
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr);
    // Own process group: Ctrl-C in the terminal reaches the launcher, which stops nodes in order.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .map_err(|e| Error::Internal(format!("cannot start node {id}: {e}")))?;
    let record = NodeRecord {
        id,
        pid: child.id() as i32,
        listen: args.grpc(id),
        peer: args.peer(id),
        http: args.http(id),
        log,
    };
    Ok((child, record))
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn up(args: UpArgs, exe: PathBuf) -> Result<(), Error> {
    args.validate()?;
    crate::storage::create_private_dir(&args.data_dir)
        .map_err(|e| Error::InvalidInput(format!("cannot create the data dir {}: {e}", args.data_dir.display())))?;
    if let Some(state) = read_state(&args.data_dir) {
        let running: Vec<String> = state
            .nodes
            .iter()
            .filter(|n| is_cluster_node(n))
            .map(|n| n.pid.to_string())
            .collect();
        if !running.is_empty() {
            return Err(Error::Refused(format!(
                "a cluster from {} is already running (pids {}); stop it with `capkv cluster down --data-dir {}`",
                args.data_dir.display(),
                running.join(", "),
                args.data_dir.display()
            )));
        }
    }
    for id in 1..=args.nodes as u64 {
        check_port_free(&args.grpc(id), &format!("node {id} gRPC"))?;
        check_port_free(&args.peer(id), &format!("node {id} peer"))?;
        check_port_free(&args.http(id), &format!("node {id} HTTP"))?;
    }
    let peers: Vec<String> = (1..=args.nodes as u64)
        .map(|id| format!("{id}={}", args.peer(id)))
        .collect();
    let peers = peers.join(",");
    let auth = if args.auth {
        Some(cluster_tokens(&args.data_dir.join("auth"))?)
    } else {
        None
    };
    let tls_dir = args.data_dir.join("tls");
    let certs_missing = !tls_dir.join("ca.pem").exists()
        || (1..=args.nodes as u64).any(|id| !tls_dir.join(format!("node-{id}.pem")).exists());
    if args.tls && certs_missing {
        crate::tls::write_cluster_certs(&tls_dir, args.nodes as u64)?;
    }
    let mut children = Vec::new();
    let mut records = Vec::new();
    for id in 1..=args.nodes as u64 {
        let (child, record) = match spawn_node(&args, id, &peers, auth.as_ref().map(|a| &a.0), &exe) {
            Ok(spawned) => spawned,
            Err(e) => {
                stop_children(&mut children).await;
                return Err(e);
            }
        };
        children.push((id, child));
        records.push(record);
    }
    let state = ClusterState { nodes: records.clone() };
    std::fs::write(
        state_path(&args.data_dir),
        serde_json::to_string_pretty(&state).expect("cluster state serializes"),
    )
    .map_err(|e| Error::Internal(format!("cannot write {}: {e}", state_path(&args.data_dir).display())))?;
    eprintln!(
        "starting {} nodes (data and logs under {})...",
        args.nodes,
        args.data_dir.display()
    );
    let admin_token = auth.as_ref().map(|a| a.1.as_str());
    let client_tls = match args.tls {
        true => Some(crate::tls::client_config(&tls_dir.join("ca.pem"), None, None)?),
        false => None,
    };
    if let Err(e) = wait_ready(&records, &mut children, admin_token, client_tls).await {
        stop_children(&mut children).await;
        let _ = std::fs::remove_file(state_path(&args.data_dir));
        return Err(e);
    }
    print_endpoints(&records, &args);
    if args.detach {
        println!(
            "running in the background; stop with: capkv cluster down --data-dir {}",
            args.data_dir.display()
        );
        return Ok(());
    }
    println!("press Ctrl-C to stop the cluster");
    supervise(&mut children).await;
    eprintln!("stopping the nodes...");
    stop_children(&mut children).await;
    let _ = std::fs::remove_file(state_path(&args.data_dir));
    eprintln!("cluster stopped");
    Ok(())
}

/// Waits until every node answers, agrees on one leader, and reports itself healthy.
async fn wait_ready(
    records: &[NodeRecord],
    children: &mut [(u64, Child)],
    token: Option<&str>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<(), Error> {
    let endpoints: Vec<String> = records.iter().map(|r| r.listen.clone()).collect();
    let started = Instant::now();
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let record = records.iter().find(|r| r.id == *id).expect("every child has a record");
                return Err(Error::Refused(format!(
                    "node {id} exited ({status}) while starting; the end of {}:\n{}",
                    record.log.display(),
                    log_tail(&record.log, 15)
                )));
            }
        }
        let client = Client::new(endpoints.clone(), Duration::from_millis(1000))?
            .with_token(token)?
            .with_tls(tls.clone());
        let mut leaders = Vec::new();
        for index in 0..endpoints.len() {
            match client.status_of(index).await {
                Ok(s) if s.health != "failing" => leaders.push(s.leader_id),
                _ => leaders.push(0),
            }
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(Error::Refused(format!(
                "the cluster did not elect a leader within {} s; see the node logs",
                READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_endpoints(records: &[NodeRecord], args: &UpArgs) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["NODE", "GRPC (CLIENTS)", "PEER", "HTTP", "PID", "LOG"]);
    for r in records {
        t.add_row(vec![
            r.id.to_string(),
            r.listen.clone(),
            r.peer.clone(),
            format!("http://{}", r.http),
            r.pid.to_string(),
            r.log.display().to_string(),
        ]);
    }
    println!("{t}");
    let endpoints: Vec<String> = records.iter().map(|r| r.listen.clone()).collect();
    println!("cluster ready: {} nodes, leader elected, all healthy", args.nodes);
    println!("export CAPKV_ENDPOINTS={}", endpoints.join(","));
    if args.tls {
        println!(
            "export CAPKV_CACERT={}",
            args.data_dir.join("tls").join("ca.pem").display()
        );
    }
    if args.auth {
        let auth = args.data_dir.join("auth");
        println!(
            "export CAPKV_TOKEN=$(cat {})   # or readwrite.token, readonly.token in the same directory",
            auth.join("admin.token").display()
        );
    }
}

/// Runs until Ctrl-C or SIGTERM; reports a node that exits on its own.
async fn supervise(children: &mut [(u64, Child)]) {
    let signal = crate::node::run::shutdown_signal();
    tokio::pin!(signal);
    let mut reported = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = &mut signal => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                if reported.insert(*id) {
                    eprintln!("warning: node {id} exited ({status}); the others keep running");
                }
            }
        }
    }
}

async fn stop_children(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (id, child) in children.iter_mut() {
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("node {id} did not stop within {} s: killing it", STOP_TIMEOUT.as_secs());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops the nodes recorded in `<data-dir>/cluster.json`.
pub async fn down(data_dir: &Path) -> Result<(), Error> {
    let Some(state) = read_state(data_dir) else {
        eprintln!(
            "no cluster is running from {} (no {STATE_FILE} there)",
            data_dir.display()
        );
        return Ok(());
    };
    let running: Vec<&NodeRecord> = state.nodes.iter().filter(|n| is_cluster_node(n)).collect();
    for n in &running {
        let _ = kill(Pid::from_raw(n.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for n in &running {
        while is_cluster_node(n) {
            if Instant::now() > deadline {
                eprintln!(
                    "node {} did not stop within {} s: killing it",
                    n.id,
                    STOP_TIMEOUT.as_secs()
                );
                let _ = kill(Pid::from_raw(n.pid), Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = std::fs::remove_file(state_path(data_dir));
    println!("stopped {} node(s)", running.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(base: u16, peer: u16, http: u16) -> UpArgs {
        UpArgs {
            nodes: 3,
            base_port: base,
            peer_base_port: peer,
            http_base_port: http,
            data_dir: "./capkv-data".into(),
            detach: false,
            tls: false,
            auth: false,
            worker_threads: None,
        }
    }

    #[test]
    fn a_node_is_known_by_its_data_dir_whatever_the_binary_is_called() {
        let dir = Path::new("/data/node-2");
        let line = |args: &[&str]| args.join("\0").into_bytes();
        let node = |binary: &str, dir: &str| line(&[binary, "node", "--id", "2", "--data-dir", dir, "--peers", "x"]);
        assert!(runs_node_in(&node("/usr/bin/capkv", "/data/node-2"), dir));
        assert!(
            runs_node_in(&node("./target/release/capkv-v2", "/data/node-2"), dir),
            "a renamed binary"
        );
        assert!(!runs_node_in(&node("capkv", "/data/node-3"), dir), "another node");
        assert!(
            !runs_node_in(&node("capkv", "/other/node-2"), dir),
            "a node of another cluster"
        );
        assert!(
            !runs_node_in(&line(&["vim", "--data-dir", "/data/node-2"]), dir),
            "not a node"
        );
        assert!(
            !runs_node_in(&line(&["capkv", "get", "node", "--data-dir", "/data/node-2"]), dir),
            "a client command"
        );
    }

    #[test]
    fn nodes_on_one_machine_share_its_cpus_and_get_at_least_one_thread() {
        assert_eq!(worker_share(2, 3), 1);
        assert_eq!(worker_share(8, 3), 2);
        assert_eq!(worker_share(16, 1), 16);
        assert_eq!(worker_share(1, 5), 1);
        let mut args = up(7001, 7101, 8001);
        assert_eq!(args.node_worker_threads(), worker_share(cpus(), 3));
        args.worker_threads = Some(3);
        assert_eq!(args.node_worker_threads(), 3, "--worker-threads wins over the share");
    }

    #[test]
    fn the_three_port_ranges_must_not_overlap_or_overflow() {
        assert!(up(7001, 7101, 8001).validate().is_ok(), "the defaults");
        let err = up(7001, 7003, 8001).validate().unwrap_err().to_string();
        assert!(err.contains("--base-port and --peer-base-port overlap"), "{err}");
        let err = up(7001, 7101, 7102).validate().unwrap_err().to_string();
        assert!(err.contains("--peer-base-port and --http-base-port"), "{err}");
        let err = up(7001, 65534, 8001).validate().unwrap_err().to_string();
        assert!(err.contains("past 65535"), "{err}");
        assert!(up(7001, 7004, 7007).validate().is_ok(), "adjacent ranges are fine");
    }
}
