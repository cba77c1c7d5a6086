//! A harness that runs real `capkv node` processes on loopback and drives them through the CLI.
//!
//! - [`Cluster::start`] picks free ports, starts one node per id with `--fault-injection`, each
//!   writing to its own log file in a temporary directory, and waits until every node agrees on
//!   a leader.
//! - [`Client`] runs `capkv --endpoints .. --timeout .. -o json <args>` and returns an [`Output`]
//!   with the exit code, stdout, stderr, the parsed JSON object and the elapsed time.
//! - Dropping a [`Cluster`] SIGKILLs its nodes; when the test is failing it first prints the tail
//!   of every node's log. Set `CAPKV_IT_KEEP=1` to keep the temporary directory for inspection.
//!
//! Clusters in one test binary run one at a time (a process-wide lock), so the tests do not
//! fight over the two cores even when libtest runs them on several threads.
//!
//! Nodes are started with `PR_SET_PDEATHSIG = SIGKILL`: if the test process dies (e.g. killed by
//! `timeout`), its nodes die with it. The signal follows the *thread* that spawned the node, so
//! start and restart nodes only from the test's own thread, never from a short-lived helper.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_capkv");

/// No single CLI invocation may take longer than this; the harness kills it and reports code -1.
const CLI_HARD_CAP: Duration = Duration::from_secs(45);

/// How long a fresh (or fully restarted) cluster may take to agree on a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of each node log are printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------------

/// What one CLI invocation did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, shortened for display.
    pub cmd: String,
    /// The exit code; -1 when the process was killed (by a signal or the harness's hard cap).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as one JSON value, when it is one.
    pub json: Option<Value>,
    pub elapsed: Duration,
}

impl Output {
    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {} (after {:?})\nstdout: {}\nstderr: {}",
            self.cmd,
            self.code,
            self.elapsed,
            shorten(self.stdout.trim_end(), 2000),
            shorten(self.stderr.trim_end(), 2000),
        )
    }

    /// Panics unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit code {code}\n{}", self.describe());
        self
    }

    /// Exit code 0, and the JSON object.
    #[track_caller]
    pub fn ok_json(&self) -> &Value {
        self.expect_code(0);
        self.json_obj()
    }

    /// Panics unless the command failed with `code` the way the contract says errors look:
    /// a non-empty sentence on stderr and, for codes 3-5 (`-o json`), `{"error","exit_code"}` on
    /// stdout.
    #[track_caller]
    pub fn expect_error(&self, code: i32) -> &Self {
        self.expect_code(code);
        assert!(
            !self.stderr.trim().is_empty(),
            "an error must explain itself on stderr\n{}",
            self.describe()
        );
        if code >= 3 {
            let json = self.json_obj();
            assert!(
                json.get("error").and_then(Value::as_str).is_some(),
                "error JSON must carry an \"error\" sentence\n{}",
                self.describe()
            );
            assert_eq!(
                json.get("exit_code").and_then(Value::as_i64),
                Some(i64::from(code)),
                "error JSON must carry the exit code\n{}",
                self.describe()
            );
        }
        self
    }

    /// The parsed JSON object on stdout; panics when stdout is not one JSON object.
    #[track_caller]
    pub fn json_obj(&self) -> &Value {
        match &self.json {
            Some(v) if v.is_object() => v,
            _ => panic!("expected exactly one JSON object on stdout\n{}", self.describe()),
        }
    }

    /// A string field of the JSON object, if present.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.json.as_ref()?.get(name)?.as_str()
    }

    /// An unsigned field of the JSON object, if present.
    pub fn u64_field(&self, name: &str) -> Option<u64> {
        self.json.as_ref()?.get(name)?.as_u64()
    }

    /// A bool field of the JSON object, if present.
    pub fn bool_field(&self, name: &str) -> Option<bool> {
        self.json.as_ref()?.get(name)?.as_bool()
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..cut], s.len())
}

fn display_arg(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if s.len() > 60 {
        format!("<{} bytes: {}…>", s.len(), shorten(&s, 20))
    } else if s.is_empty() || s.contains(char::is_whitespace) {
        format!("'{s}'")
    } else {
        s.into_owned()
    }
}

/// Runs the capkv binary with `args`, as is (no flags added). Panics if it cannot be started.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    try_run(args).unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"))
}

/// Runs the capkv binary with `args`; `Err` when the process could not be started at all
/// (e.g. E2BIG when one argument exceeds the kernel's 128 KiB per-argument limit).
pub fn try_run<S: AsRef<OsStr>>(args: &[S]) -> io::Result<Output> {
    let mut cmd_text = String::from("capkv");
    for a in args {
        cmd_text.push(' ');
        cmd_text.push_str(&display_arg(a.as_ref()));
    }
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("CAPKV_ENDPOINTS")
        .env_remove("CAPKV_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || read_all(stdout));
    let err_reader = thread::spawn(move || read_all(stderr));
    let deadline = started + CLI_HARD_CAP;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    let code = match status {
        Some(s) => s.code().unwrap_or(-1),
        None => {
            let _ = write!(stderr, "\n[harness] killed after the hard cap of {CLI_HARD_CAP:?}");
            -1
        }
    };
    let json = serde_json::from_str::<Value>(stdout.trim()).ok();
    Ok(Output {
        cmd: cmd_text,
        code,
        stdout,
        stderr,
        json,
        elapsed,
    })
}

fn read_all(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A CLI client: the `--endpoints` and `--timeout` it passes, always with `-o json`.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: String,
    timeout: String,
}

impl Client {
    pub fn new(endpoints: impl Into<String>) -> Self {
        Client {
            endpoints: endpoints.into(),
            timeout: "5s".to_string(),
        }
    }

    /// The same client with another `--timeout` (e.g. `"3s"`, `"500ms"`).
    pub fn with_timeout(mut self, timeout: &str) -> Self {
        self.timeout = timeout.to_string();
        self
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn full_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![
            "--endpoints",
            self.endpoints.as_str(),
            "--timeout",
            self.timeout.as_str(),
            "-o",
            "json",
        ];
        all.extend_from_slice(args);
        all
    }

    /// `capkv --endpoints E --timeout T -o json <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        run(&self.full_args(args))
    }

    /// Like [`Client::run`], but `Err` when the process cannot be started.
    pub fn try_run(&self, args: &[&str]) -> io::Result<Output> {
        try_run(&self.full_args(args))
    }

    pub fn put(&self, keyspace: &str, key: &str, value: &str) -> Output {
        self.run(&["put", keyspace, key, value])
    }

    /// A linearizable (default) get.
    pub fn get(&self, keyspace: &str, key: &str) -> Output {
        self.run(&["get", keyspace, key])
    }

    /// A get that reads the answering node's local replica.
    pub fn get_local(&self, keyspace: &str, key: &str) -> Output {
        self.run(&["get", keyspace, key, "--consistency", "serializable"])
    }

    /// `keyspace create NAME --mode MODE`, which must succeed.
    #[track_caller]
    pub fn create_keyspace(&self, name: &str, mode: &str) {
        let out = self.run(&["keyspace", "create", name, "--mode", mode]);
        let json = out.ok_json();
        assert_eq!(json["name"], name, "{}", out.describe());
        assert_eq!(json["mode"], mode, "{}", out.describe());
        // The creation is committed on a majority; wait until every reachable node has applied
        // it, so a test that partitions right away finds the keyspace known on both sides.
        let revision = json["created_revision"].as_u64().unwrap_or(0);
        wait_until(
            Duration::from_secs(15),
            "every node to apply the keyspace creation",
            || {
                let status = self.run(&["cluster", "status"]);
                status.code == 0
                    && status.json_obj()["nodes"].as_array().is_some_and(|nodes| {
                        nodes
                            .iter()
                            .all(|n| n["reachable"] != true || n["applied_index"].as_u64().unwrap_or(0) >= revision)
                    })
            },
        );
    }

    /// Puts, retrying for up to `within` while the answer is 3 or 4 (e.g. during an election).
    /// Retrying is safe because the tests write the same value again. Returns the last output.
    pub fn put_retrying(&self, keyspace: &str, key: &str, value: &str, within: Duration) -> Output {
        let deadline = Instant::now() + within;
        loop {
            let out = self.put(keyspace, key, value);
            if !(out.code == 3 || out.code == 4) || Instant::now() >= deadline {
                return out;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Asserts that a successful get returned `value`.
#[track_caller]
pub fn expect_value(out: &Output, value: &str) {
    let json = out.ok_json();
    assert_eq!(
        json.get("found").and_then(Value::as_bool),
        Some(true),
        "{}",
        out.describe()
    );
    assert_eq!(
        json.get("value").and_then(Value::as_str),
        Some(value),
        "{}",
        out.describe()
    );
}

/// True when `out` is a successful get that found `value`.
pub fn has_value(out: &Output, value: &str) -> bool {
    out.code == 0 && out.bool_field("found") == Some(true) && out.str_field("value") == Some(value)
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `cond` until it holds; panics after `timeout`, naming `what`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    poll_for(timeout, what, || if cond() { Ok(()) } else { Err(String::new()) })
}

/// Polls `f` until it returns `Ok`; panics after `timeout` with the last `Err` reason.
#[track_caller]
pub fn poll_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    loop {
        match f() {
            Ok(v) => return v,
            Err(reason) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state: {reason}");
                }
            }
        }
        thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and HTTP
// ---------------------------------------------------------------------------------------------

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// `n` consecutive loopback ports that are free now (for `cluster up --base-port` and the like),
/// starting at the returned port.
pub fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let first = free_ports(1)[0];
        if first > 65535 - n {
            continue;
        }
        if (first..first + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return first;
        }
    }
    panic!("no {n} consecutive free ports found");
}

/// A multi-threaded tokio runtime for tests that drive the client library.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime starts")
}

/// A `cluster up --detach` cluster on free ports, stopped on drop.
pub struct UpCluster {
    pub nodes: u16,
    pub base: u16,
    pub peer: u16,
    pub http: u16,
    pub data: std::path::PathBuf,
    /// What `cluster up` printed.
    pub up: Output,
    _down: DetachedCluster,
}

impl UpCluster {
    /// Runs `cluster up --detach` (3 nodes) with `flags` (e.g. `--tls`) under `dir`; panics
    /// unless it succeeds.
    pub fn start(dir: &std::path::Path, flags: &[&str]) -> UpCluster {
        Self::start_nodes(dir, 3, flags)
    }

    /// Runs `cluster up --detach --nodes N` with `flags` under `dir`; panics unless it succeeds.
    pub fn start_nodes(dir: &std::path::Path, nodes: u16, flags: &[&str]) -> UpCluster {
        let data = dir.join("data");
        let (base, peer, http) = (
            consecutive_free_ports(nodes),
            consecutive_free_ports(nodes),
            consecutive_free_ports(nodes),
        );
        let down = DetachedCluster(data.clone());
        let ports = [base.to_string(), peer.to_string(), http.to_string(), nodes.to_string()];
        let mut args = vec![
            "cluster",
            "up",
            "--detach",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ];
        args.extend([
            "--base-port",
            &ports[0],
            "--peer-base-port",
            &ports[1],
            "--http-base-port",
            &ports[2],
        ]);
        args.extend(["--nodes", &ports[3]]);
        args.extend(flags);
        let up = run(&args);
        up.expect_code(0);
        UpCluster {
            nodes,
            base,
            peer,
            http,
            data,
            up,
            _down: down,
        }
    }

    /// The client endpoints of all nodes.
    pub fn endpoints(&self) -> String {
        (0..self.nodes)
            .map(|i| format!("127.0.0.1:{}", self.base + i))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Stops a `cluster up --detach` cluster on drop, even when the test fails half-way.
pub struct DetachedCluster(pub std::path::PathBuf);

impl Drop for DetachedCluster {
    fn drop(&mut self) {
        let _ = run(&["cluster", "down", "--data-dir", self.0.to_str().expect("utf-8 path")]);
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A minimal HTTP/1.1 GET (no dependencies): `addr` is `host:port`, `path` starts with `/`.
pub fn http_get(addr: &str, path: &str) -> io::Result<HttpResponse> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = decode_chunked(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The value of a Prometheus metric in `text`: the largest sample over all its label sets.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .reduce(f64::max)
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

struct Node {
    id: u64,
    listen: String,
    http: String,
    data_dir: PathBuf,
    log: PathBuf,
    /// `--join` endpoints for a node added at run time; `None`: started with `--peers`.
    join: Option<String>,
    // A RefCell so that `&self` helpers can notice a node that exited on its own.
    child: RefCell<Option<Child>>,
}

/// A cluster of `capkv node` processes on loopback. Node ids are 1..=n.
pub struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    dir: Option<tempfile::TempDir>,
    // Declared last, so it is released only after the nodes are gone and the directory removed.
    _lock: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts `n` nodes and waits (up to [`READY_TIMEOUT`]) until they all agree on a leader.
    pub fn start(n: usize) -> Cluster {
        let lock = CLUSTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("capkv-it-")
            .tempdir()
            .expect("create a temporary directory");
        let ports = free_ports(2 * n);
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let id = i as u64 + 1;
                Node {
                    id,
                    listen: format!("127.0.0.1:{}", ports[2 * i]),
                    http: format!("127.0.0.1:{}", ports[2 * i + 1]),
                    data_dir: dir.path().join(format!("node{id}")),
                    log: dir.path().join(format!("node{id}.log")),
                    join: None,
                    child: RefCell::new(None),
                }
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.listen))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            peers,
            dir: Some(dir),
            _lock: lock,
        };
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster.wait_ready(READY_TIMEOUT);
        cluster
    }

    /// All node ids, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Ids of the nodes whose process is running (as far as the harness knows).
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.borrow().is_some())
            .map(|n| n.id)
            .collect()
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The gRPC `host:port` of node `id`.
    pub fn endpoint(&self, id: u64) -> String {
        self.node(id).listen.clone()
    }

    /// The HTTP `host:port` of node `id`.
    pub fn http_addr(&self, id: u64) -> String {
        self.node(id).http.clone()
    }

    /// The comma-separated endpoints of `ids`.
    pub fn endpoints_of(&self, ids: &[u64]) -> String {
        ids.iter().map(|id| self.endpoint(*id)).collect::<Vec<_>>().join(",")
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints_of(&self.ids()))
    }

    /// A client that talks to node `id` only.
    pub fn client_at(&self, id: u64) -> Client {
        Client::new(self.endpoint(id))
    }

    /// A client that talks to the nodes `ids` only.
    pub fn client_of(&self, ids: &[u64]) -> Client {
        Client::new(self.endpoints_of(ids))
    }

    /// The log file of node `id` as text.
    pub fn log_text(&self, id: u64) -> String {
        fs::read(&self.node(id).log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Starts one more node, `capkv node --join` with the endpoints of the nodes running now
    /// (it asks them to add it), and returns its id. It does not wait for the join.
    pub fn start_joining_node(&mut self) -> u64 {
        let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
        self.start_joining_node_at(&listen)
    }

    /// [`Cluster::start_joining_node`] with a given `--listen` address (e.g. one an operator
    /// already gave `member add`).
    pub fn start_joining_node_at(&mut self, listen: &str) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let join = self.endpoints_of(&self.running_ids());
        let dir = self
            .dir
            .as_ref()
            .expect("the cluster directory exists")
            .path()
            .to_path_buf();
        let http = free_ports(1)[0];
        self.nodes.push(Node {
            id,
            listen: listen.to_string(),
            http: format!("127.0.0.1:{http}"),
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            join: Some(join),
            child: RefCell::new(None),
        });
        self.spawn(id);
        id
    }

    fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let node = self.node_mut(id);
        assert!(node.child.borrow().is_none(), "node {id} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node log");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let _ = writeln!(
            log,
            "==== [harness] starting node {id} (unix time {:.3}) ====",
            now.as_secs_f64()
        );
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.listen)
            .arg("--http")
            .arg(&node.http)
            .arg("--data-dir")
            .arg(&node.data_dir);
        match &node.join {
            Some(endpoints) => cmd.arg("--join").arg(endpoints),
            None => cmd.arg("--peers").arg(&peers),
        };
        // Odd nodes run on one worker thread (what `cluster up` gives each node on a small
        // machine), even ones on the default (one per CPU): every cluster covers both runtimes.
        if id % 2 == 1 {
            cmd.args(["--worker-threads", "1"]);
        }
        cmd.arg("--fault-injection")
            .env_remove("RUST_LOG")
            .env_remove("CAPKV_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start node {id}: {e}"));
        *node.child.borrow_mut() = Some(child);
    }

    /// SIGKILLs node `id` and waits for it.
    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits (up to 15 s) for it to exit; panics if it does not.
    pub fn stop(&mut self, id: u64) {
        let node = self.node_mut(id);
        let Some(mut child) = node.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {id} did not exit within 15 s of SIGTERM");
                }
            }
        }
    }

    /// Starts node `id` again with the same ports and data directory.
    pub fn restart(&mut self, id: u64) {
        if self.node(id).child.borrow().is_some() {
            self.kill9(id);
        }
        self.spawn(id);
    }

    /// The cluster-status entries of the nodes, keyed by id, as seen by asking `ids`.
    fn status_entries(&self, ids: &[u64]) -> Result<Vec<(u64, Value)>, String> {
        let out = self.client_of(ids).with_timeout("2s").run(&["cluster", "status"]);
        let nodes = out
            .json
            .as_ref()
            .and_then(|j| j.get("nodes"))
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no node list in `cluster status`: {}", out.describe()))?;
        Ok(nodes
            .iter()
            .filter_map(|n| Some((n.get("id")?.as_u64()?, n.clone())))
            .collect())
    }

    /// Panics if a node the harness started has exited on its own (a crash, or a failed start).
    #[track_caller]
    pub fn assert_running(&self) {
        for node in &self.nodes {
            let mut child = node.child.borrow_mut();
            if let Some(c) = child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    *child = None;
                    panic!("node {} exited on its own: {status}", node.id);
                }
            }
        }
    }

    /// One check: do all of `ids` answer, and agree on a leader that is one of them?
    fn leader_among_once(&self, ids: &[u64]) -> Result<u64, String> {
        self.assert_running();
        let entries = self.status_entries(ids)?;
        let mut leader = None;
        for id in ids {
            let entry = match entries.iter().find(|(i, _)| i == id) {
                Some((_, e)) => e.clone(),
                // The CLI may report only the nodes it was pointed at: ask this one alone.
                None => self
                    .status_entries(&[*id])?
                    .into_iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, e)| e)
                    .ok_or_else(|| format!("node {id} is missing from `cluster status`"))?,
            };
            if entry.get("reachable").and_then(Value::as_bool) != Some(true) {
                return Err(format!("node {id} is not reachable: {entry}"));
            }
            let l = entry.get("leader_id").and_then(Value::as_u64).unwrap_or(0);
            if l == 0 {
                return Err(format!("node {id} knows no leader: {entry}"));
            }
            match leader {
                None => leader = Some(l),
                Some(prev) if prev != l => return Err(format!("nodes disagree on the leader ({prev} vs {l})")),
                _ => {}
            }
        }
        let leader = leader.ok_or("no nodes asked")?;
        if !ids.contains(&leader) {
            return Err(format!("the leader {leader} is not among {ids:?}"));
        }
        Ok(leader)
    }

    /// Waits until every node in `ids` is reachable and they agree on a leader among them.
    #[track_caller]
    pub fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        poll_for(timeout, &format!("a leader agreed on by nodes {ids:?}"), || {
            self.leader_among_once(ids)
        })
    }

    /// Waits until every running node is reachable and they agree on a leader.
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) -> u64 {
        let ids = self.running_ids();
        self.wait_for_leader_among(&ids, timeout)
    }

    /// The leader that all running nodes agree on (waits up to 15 s for one).
    #[track_caller]
    pub fn leader_id(&self) -> u64 {
        self.wait_ready(Duration::from_secs(15))
    }

    /// A running node other than `not`.
    pub fn other_than(&self, not: u64) -> u64 {
        *self
            .running_ids()
            .iter()
            .find(|id| **id != not)
            .expect("another running node")
    }

    fn print_log_tails(&self) {
        let mut report = String::new();
        for node in &self.nodes {
            let text = self.log_text(node.id);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let _ = writeln!(
                report,
                "----- node {} ({}, http {}) log, last {} of {} lines: {} -----",
                node.id,
                node.listen,
                node.http,
                lines.len() - start,
                lines.len(),
                node.log.display()
            );
            for l in &lines[start..] {
                let _ = writeln!(report, "{}", shorten(l, 500));
            }
        }
        eprintln!("{report}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = thread::panicking();
        if failing {
            self.print_log_tails();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("CAPKV_IT_KEEP").is_some() {
                let path = dir.keep();
                eprintln!("[harness] kept the cluster directory {}", path.display());
            } else if failing {
                eprintln!("[harness] set CAPKV_IT_KEEP=1 to keep the node logs and data");
            }
        }
    }
}
