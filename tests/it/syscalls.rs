//! Durable before acknowledged, shown on the real binary with `strace`.
//!
//! One node (a one-node cluster) runs under `strace -f`, tracing reads and writes on files and
//! sockets and every `fdatasync`/`fsync`. A client puts a value nobody else could have written,
//! once into a cp keyspace and once into an ap one. For each, the trace must show, in this
//! order: the node reads the put from the client's socket; it writes the value to its store (cp:
//! a Raft log segment `wal/*.wal`; ap: a file of the sled database under `db/`); an
//! `fdatasync` or `fsync` of that same file completes; only then does it write the response
//! (the first HTTP/2 HEADERS or DATA frame) to that same socket. The node's metrics count those
//! syncs (`capkv_wal_fdatasync_seconds`, `capkv_sled_fsync_seconds`).
//!
//! Skipped, with the reason printed, when `strace` is missing or may not trace (no ptrace
//! permission); `scripts/test.sh` installs strace so CI runs it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{free_ports, http_get, metric_value, Client, BIN};

/// How long the traced node may take to elect itself and create a keyspace.
const TRACED_READY_TIMEOUT: Duration = Duration::from_secs(60);

const TRACED_CALLS: &str = "trace=read,readv,recvfrom,recvmsg,write,writev,pwrite64,sendto,sendmsg,fdatasync,fsync";

/// Why the test cannot run here, if it cannot.
fn strace_unusable() -> Option<String> {
    match Command::new("strace").args(["-f", "-o", "/dev/null", "true"]).output() {
        Err(e) => Some(format!("strace is not installed ({e}); scripts/test.sh installs it")),
        Ok(out) if !out.status.success() => Some(format!(
            "strace cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The traced node; dropping it kills the node and strace.
struct Traced {
    strace: Child,
}

impl Traced {
    fn start(dir: &Path, trace: &Path, listen: &str, http: &str) -> Traced {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-tt", "-yy", "-xx", "-s", "65536", "-e", TRACED_CALLS, "-o"])
            .arg(trace)
            .arg(BIN)
            .args(["node", "--id", "1", "--listen", listen, "--http", http, "--peers"])
            .arg(format!("1={listen}"))
            .arg("--data-dir")
            .arg(dir.join("node1"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Traced {
            strace: cmd.spawn().expect("strace starts"),
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // The node is strace's child; kill it first, or it would outlive a detaching strace.
        let pid = self.strace.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

/// One system call from the trace: where it starts and ends (line numbers) and its text.
#[derive(Debug)]
struct Call {
    name: String,
    start: usize,
    end: usize,
    text: String,
}

impl Call {
    /// The file or socket the first argument names (`-yy`), decoded.
    fn target(&self) -> String {
        let args = self.text.split_once('(').map_or("", |(_, a)| a);
        let Some((_, after)) = args.split_once('<') else {
            return String::new();
        };
        // A socket reads `TCP:[a:1->b:2]`, whose arrow holds a '>'; a path ends at the first '>'.
        if after.starts_with("TCP:[") {
            return format!("{}]", after.split_once("]>").map_or(after, |(t, _)| t));
        }
        decode(after.split_once('>').map_or(after, |(t, _)| t))
    }

    /// Every buffer the call shows (`-xx` prints them all as `\xHH`), concatenated.
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (i, quoted) in self.text.split('"').enumerate() {
            if i % 2 == 1 {
                bytes.extend(decode_bytes(quoted));
            }
        }
        bytes
    }

    fn is(&self, names: &[&str]) -> bool {
        names.contains(&self.name.as_str())
    }
}

fn decode_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let raw = text.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && raw.get(i + 1) == Some(&b'x') && i + 3 < raw.len() + 1 {
            if let Ok(b) = u8::from_str_radix(&text[i + 2..i + 4], 16) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn decode(text: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(text)).into_owned()
}

/// Parses `strace -f -tt` output, joining `<unfinished ...>` and `<... resumed>` halves.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: std::collections::HashMap<&str, Call> = std::collections::HashMap::new();
    for (line_no, line) in trace.lines().enumerate() {
        // `PID  HH:MM:SS.micros call(...)`; strace pads the pid with spaces.
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((_time, body)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        if let Some(resumed) = body.strip_prefix("<... ") {
            if let Some(mut call) = pending.remove(pid) {
                call.end = line_no;
                call.text.push_str(resumed);
                calls.push(call);
            }
        } else if let Some((name, _)) = body.split_once('(') {
            let call = Call {
                name: name.to_string(),
                start: line_no,
                end: line_no,
                text: body.to_string(),
            };
            if body.ends_with("<unfinished ...>") {
                pending.insert(pid, call);
            } else {
                calls.push(call);
            }
        }
    }
    calls
}

/// Whether `bytes` (one write to a socket) carries an HTTP/2 HEADERS or DATA frame.
fn has_response_frame(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
        let kind = bytes[at + 3];
        if kind == 0 || kind == 1 {
            return true;
        }
        at += 9 + len;
    }
    false
}

fn find<'a>(calls: &'a [Call], what: &str, pred: impl Fn(&Call) -> bool) -> Result<&'a Call, String> {
    calls
        .iter()
        .find(|c| pred(c))
        .ok_or_else(|| format!("the trace shows no {what}"))
}

/// Checks the order described in the module docs for a value stored in a file whose path
/// `is_store` accepts; returns the four calls as evidence.
fn check_order(trace: &str, value: &[u8], is_store: impl Fn(&str) -> bool) -> Result<String, String> {
    let calls = parse(trace);
    let contains = |c: &Call| c.bytes().windows(value.len()).any(|w| w == value);
    let request = find(&calls, "read of the put from a socket", |c| {
        c.is(&["read", "readv", "recvfrom", "recvmsg"]) && c.target().starts_with("TCP:") && contains(c)
    })?;
    let socket = request.target();
    let store_write = find(&calls, "write of the value to the store's file", |c| {
        c.is(&["write", "writev", "pwrite64"]) && is_store(&c.target()) && c.start > request.end && contains(c)
    })?;
    let file = store_write.target();
    let sync = find(&calls, "fdatasync or fsync of that file after the write", |c| {
        c.is(&["fdatasync", "fsync"]) && c.target() == file && c.start > store_write.end
    })?;
    let response = find(&calls, "response to the client's socket", |c| {
        c.is(&["write", "writev", "sendto", "sendmsg"])
            && c.target() == socket
            && c.start > request.end
            && has_response_frame(&c.bytes())
    })?;
    let evidence = format!(
        "request read on {socket} (trace line {}), write to {file} (line {}), {} done (line {}), \
         response write starts (line {})",
        request.end + 1,
        store_write.end + 1,
        sync.name,
        sync.end + 1,
        response.start + 1
    );
    if sync.end < response.start {
        Ok(evidence)
    } else {
        Err(format!("the response left before the sync completed: {evidence}"))
    }
}

#[test]
fn the_store_is_synced_before_a_put_is_answered() {
    if let Some(why) = strace_unusable() {
        eprintln!("SKIPPED the_store_is_synced_before_a_put_is_answered: {why}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("capkv-strace-")
        .tempdir()
        .expect("a temp dir");
    let trace_path = dir.path().join("trace.txt");
    let ports = free_ports(2);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let http = format!("127.0.0.1:{}", ports[1]);
    let node = Traced::start(dir.path(), &trace_path, &listen, &http);
    let client = Client::new(listen.clone());
    let deadline = Instant::now() + TRACED_READY_TIMEOUT;
    loop {
        let out = client.run(&["keyspace", "create", "traced", "--mode", "cp"]);
        if out.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the traced node never served: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    client.create_keyspace("tracedap", "ap");
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let cp_value = format!("durable-cp-{}-{nanos}", std::process::id());
    let ap_value = format!("durable-ap-{}-{nanos}", std::process::id());
    client.put("traced", "k", &cp_value).expect_code(0);
    client.put("tracedap", "k", &ap_value).expect_code(0);
    let metrics = http_get(&http, "/metrics")
        .expect("the traced node serves /metrics")
        .body;
    for synced in ["capkv_wal_fdatasync_seconds_count", "capkv_sled_fsync_seconds_count"] {
        let count = metric_value(&metrics, synced).unwrap_or(0.0);
        assert!(count >= 1.0, "{synced} is {count} after a cp and an ap put");
    }
    drop(node);
    let trace = fs::read_to_string(&trace_path).expect("strace wrote its trace");
    let checks = [
        ("cp put, WAL segment", check_order(&trace, cp_value.as_bytes(), is_wal)),
        ("ap put, sled file", check_order(&trace, ap_value.as_bytes(), is_sled)),
    ];
    let mut failed = Vec::new();
    for (what, outcome) in checks {
        match outcome {
            Ok(evidence) => eprintln!("{what}: {evidence}"),
            Err(why) => failed.push(format!("{what}: {why}")),
        }
    }
    if !failed.is_empty() {
        panic!(
            "{}\nthe trace is kept at {}",
            failed.join("\n"),
            dir.keep().join("trace.txt").display()
        );
    }
}

/// A segment of the Raft log.
fn is_wal(path: &str) -> bool {
    path.contains("/wal/") && path.ends_with(".wal")
}

/// A file of the sled database (the AP store and the CP state machine).
fn is_sled(path: &str) -> bool {
    path.contains("/node1/db/")
}

#[test]
fn the_order_check_refuses_a_response_before_the_sync() {
    let lines = [
        r#"7  10:00:00.000001 recvfrom(9<TCP:[127.0.0.1:7001->127.0.0.1:5000]>, "\x76\x31", 100, 0, NULL, NULL) = 2"#,
        r#"8 10:00:00.000002 write(12<\x2f\x77\x61\x6c\x2f\x61\x2e\x77\x61\x6c>, "\x76\x31", 2) = 2"#,
        r#"7 10:00:00.000003 writev(9<TCP:[127.0.0.1:7001->127.0.0.1:5000]>, [{iov_base="\x00\x00\x00\x01\x04\x00\x00\x00\x01", iov_len=9}], 1) = 9"#,
        r#"8 10:00:00.000004 fdatasync(12<\x2f\x77\x61\x6c\x2f\x61\x2e\x77\x61\x6c>) = 0"#,
    ];
    let early = lines.join("\n");
    let err = check_order(&early, b"v1", is_wal).expect_err("the response precedes the sync");
    assert!(err.contains("before the sync"), "{err}");
    let in_order = [lines[0], lines[1], lines[3], lines[2]].join("\n");
    check_order(&in_order, b"v1", is_wal).expect("sync, then response");
}
