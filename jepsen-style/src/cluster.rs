//! A cluster of real capkv node processes on loopback, owned by one run.
//!
//! Nodes are started from the runner's own executable (`jepsen-style node ...`, which sets
//! `PR_SET_PDEATHSIG` so a dead runner takes its nodes along) or from an external `capkv` binary
//! (`--capkv-bin`). Every node gets free 127.0.0.1 ports, a data dir `n<id>/` inside the run's
//! directory and its stdout/stderr in `n<id>/stdout.log`. Dropping the [`Cluster`] SIGCONTs and
//! SIGKILLs every node it still runs, so cleanup also happens on panic and early returns.
//!
//! On the netns layer ([`crate::netns`]) each node runs in its own namespace through
//! `ip netns exec`, which execs the node (checked through `/proc/<pid>/exe` before the pid is
//! used for signals), listens on its namespace address with fixed ports, and the cluster owns the
//! [`Net`]: dropping the cluster kills the nodes first and then removes the namespaces and bridge.
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

use crate::layer::Layer;
use crate::netns::{self, Net};

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
    /// The namespaces and bridge (netns layer); dropped after the nodes are killed.
    net: Option<Net>,
}

/// `count` distinct free loopback addresses: every port stays bound until all are chosen, so
/// the kernel cannot hand out one twice (it once gave node 5's HTTP port to node 4's gRPC).
fn free_addrs(count: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free loopback port: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

impl Cluster {
    /// Allocates addresses and directories for `n` nodes under `dir` and starts them: on
    /// loopback (built-in layer) or each in its own network namespace (netns layer).
    pub fn start(dir: &Path, n: usize, binary: NodeBinary, layer: Layer) -> Result<Self, String> {
        let ids: Vec<u64> = (1..=n as u64).collect();
        let net = match layer {
            Layer::BuiltIn => None,
            Layer::Netns => Some(Net::setup(&ids)?),
        };
        let mut loopback = match &net {
            None => free_addrs(2 * n)?,
            Some(_) => Vec::new(),
        }
        .into_iter();
        let mut nodes = Vec::new();
        for &id in &ids {
            let data_dir = dir.join(format!("n{id}"));
            fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let (grpc, http) = match &net {
                None => (
                    loopback.next().expect("two addresses per node"),
                    loopback.next().expect("two addresses per node"),
                ),
                Some(net) => (
                    SocketAddr::new(net.ip(id).into(), netns::GRPC_PORT),
                    SocketAddr::new(net.ip(id).into(), netns::HTTP_PORT),
                ),
            };
            nodes.push(NodeSpec {
                id,
                grpc,
                http,
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
            net,
        };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The namespaces and bridge, on the netns layer.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
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
        self.spawn_with(id, ["--peers", self.peers.as_str()])
    }

    /// Starts node `id` with `--join` (the other members' addresses), so it asks to be added.
    pub fn spawn_joining(&self, id: u64) -> Result<(), String> {
        let others: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|o| *o != id)
            .map(|o| self.endpoint(o))
            .collect();
        self.spawn_with(id, ["--join", &others.join(",")])
    }

    /// Removes node `id`'s data (its log file stays), as a replacement machine would start.
    pub fn wipe(&self, id: u64) -> Result<(), String> {
        let dir = &self.spec(id).data_dir;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "stdout.log") {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn spawn_with(&self, id: u64, membership: [&str; 2]) -> Result<(), String> {
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
        let mut command = match &self.net {
            None => Command::new(program),
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(id)]).arg(program);
                c
            }
        };
        let mut child = command
            .arg(first)
            .args(["--id", &id.to_string()])
            .args(["--listen", &spec.grpc.to_string()])
            .args(["--http", &spec.http.to_string()])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(membership)
            .arg("--fault-injection")
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start node {id} from {}: {e}", program.display()))?;
        if self.net.is_some() {
            if let Err(e) = wait_for_exec(&mut child, program) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("node {id}: {e}"));
            }
        }
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

/// Waits until the child started through `ip netns exec` has exec'd `program`, so its pid is
/// the node's own (signals then reach the node, not a wrapper).
fn wait_for_exec(child: &mut Child, program: &Path) -> Result<(), String> {
    let want = fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let exe = PathBuf::from(format!("/proc/{}/exe", child.id()));
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("`ip netns exec` exited ({status}) before the node started"));
        }
        if let Ok(target) = fs::read_link(&exe) {
            // A rebuilt binary shows as "<path> (deleted)".
            if target.to_string_lossy().starts_with(&*want.to_string_lossy()) {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!(
        "pid {} did not become {} within 5 s (still `ip netns exec`?)",
        child.id(),
        want.display()
    ))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
