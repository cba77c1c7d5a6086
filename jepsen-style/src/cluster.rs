//! A cluster of real capkv node processes on loopback, owned by one run.
//!
//! Nodes are started from the runner's own executable (`jepsen-style node ...`, which sets
//! `PR_SET_PDEATHSIG` so a dead runner takes its nodes along) or from an external `capkv` binary
//! (`--capkv-bin`). Every node gets free 127.0.0.1 ports, a data dir `n<id>/` inside the run's
//! directory and its stdout/stderr in `n<id>/stdout.log`. Dropping the [`Cluster`] SIGCONTs and
//! SIGKILLs every node it still runs, so cleanup also happens on panic and early returns.
//!
//! Caveats: free ports are found by binding port 0 and releasing it, so another process may take
//! one in between (the node then fails to start and the run reports it). An external binary gets
//! no death signal: if the runner is SIGKILLed, its nodes live on.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How the nodes are started.
#[derive(Clone, Debug)]
pub enum NodeBinary {
    /// This executable, with the hidden `node` subcommand.
    OwnExe(PathBuf),
    /// An external `capkv` binary, with its `node` subcommand.
    Capkv(PathBuf),
}

/// One node's addresses and directory.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node id (1-based).
    pub id: u64,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
}

/// The running cluster.
pub struct Cluster {
    binary: NodeBinary,
    /// The nodes, by id order.
    pub nodes: Vec<NodeSpec>,
    peers: String,
    children: Mutex<BTreeMap<u64, Child>>,
}

fn free_addr() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free loopback port: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

impl Cluster {
    /// Allocates ports and directories for `n` nodes under `dir` and starts them.
    pub fn start(dir: &Path, n: usize, binary: NodeBinary) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for id in 1..=n as u64 {
            let data_dir = dir.join(format!("n{id}"));
            fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            nodes.push(NodeSpec {
                id,
                grpc: free_addr()?,
                http: free_addr()?,
                data_dir,
            });
        }
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = Self {
            binary,
            nodes,
            peers,
            children: Mutex::new(BTreeMap::new()),
        };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The gRPC endpoint of node `id`.
    pub fn endpoint(&self, id: u64) -> String {
        self.spec(id).grpc.to_string()
    }

    fn spec(&self, id: u64) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node ids come from this cluster")
    }

    /// Starts node `id` (again) on its data dir.
    pub fn spawn(&self, id: u64) -> Result<(), String> {
        let spec = self.spec(id);
        let (program, first) = match &self.binary {
            NodeBinary::OwnExe(p) | NodeBinary::Capkv(p) => (p, "node"),
        };
        let log_path = spec.data_dir.join("stdout.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .arg(first)
            .args(["--id", &id.to_string()])
            .args(["--listen", &spec.grpc.to_string()])
            .args(["--http", &spec.http.to_string()])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--peers", &self.peers])
            .arg("--fault-injection")
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start node {id} from {}: {e}", program.display()))?;
        self.children.lock().expect("child table lock").insert(id, child);
        Ok(())
    }

    fn signal(&self, id: u64, signal: Signal) -> Result<(), String> {
        let children = self.children.lock().expect("child table lock");
        let child = children.get(&id).ok_or_else(|| format!("node {id} is not running"))?;
        kill(Pid::from_raw(child.id() as i32), signal).map_err(|e| format!("{signal} to node {id}: {e}"))
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&self, id: u64) -> Result<(), String> {
        let _ = self.signal(id, Signal::SIGCONT);
        self.signal(id, Signal::SIGKILL)?;
        if let Some(mut child) = self.children.lock().expect("child table lock").remove(&id) {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Whether node `id` has a live process.
    pub fn is_running(&self, id: u64) -> bool {
        self.children.lock().expect("child table lock").contains_key(&id)
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&self, id: u64) -> Result<(), String> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// SIGCONTs node `id`.
    pub fn resume(&self, id: u64) -> Result<(), String> {
        self.signal(id, Signal::SIGCONT)
    }

    /// Kills every node still running.
    pub fn stop_all(&self) {
        // Also runs from Drop during a panic: a poisoned lock must not abort the cleanup.
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut child) in std::mem::take(&mut *children) {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
