//! The `netns` fault layer: every node in its own network namespace on a Linux bridge, partitions
//! as iptables DROP rules inside the namespaces, as Jepsen does it.
//!
//! Layout of one run (`<id>` is the runner's pid in base 36, `k` a free third octet):
//!
//! * bridge `cjb<id>` in the root namespace with `10.213.k.1/24` (the runner's clients reach the
//!   nodes through it);
//! * per node `i`: namespace `cj<id>-n<i>`, veth `cj<id>-v<i>` on the bridge and its peer
//!   `cj<id>-p<i>` inside the namespace with `10.213.k.(10+i)/24`, loopback up, and a chain
//!   [`CHAIN`] hooked into INPUT and OUTPUT. A partition replaces the chain's rules (one
//!   `iptables-restore --noflush` per namespace); heal flushes it.
//! * When `br_netfilter` makes bridged frames pass the root namespace's FORWARD chain
//!   (`net.bridge.bridge-nf-call-iptables = 1`), one `-i cjb<id> -o cjb<id> -j ACCEPT` rule is
//!   inserted there for the run, so a restrictive FORWARD policy cannot cut the bridge.
//!
//! Teardown ([`Net`]'s `Drop`, after the cluster killed its nodes) deletes the namespaces (which
//! takes the veths along), the bridge and the FORWARD rule. A run that was SIGKILLed leaves them
//! behind; the next run removes every `cj*` namespace, link and rule whose runner pid is gone.
//! Every command is bounded by [`CMD_TIMEOUT`].
//!
//! Caveat: a one-way cut is one-way for IP packets. TCP needs both directions, so new connections
//! fail both ways; on an established connection the receiving side's ACKs are lost, so what
//! survives depends on retransmission timing. That is the fault Jepsen's one-way partitions
//! inject as well.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::fault::Fault;

/// The iptables chain holding a run's partition rules inside each namespace.
pub const CHAIN: &str = "CAPKV-JEPSEN";
/// gRPC port of every node (each namespace has its own port space).
pub const GRPC_PORT: u16 = 7001;
/// HTTP port of every node.
pub const HTTP_PORT: u16 = 8001;
/// Bound of every external command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// First two octets of the run's subnet.
const NET_PREFIX: [u8; 2] = [10, 213];

/// The iptables argument vectors (without the `iptables` program) that each node's namespace
/// gets for `fault`, after its chain is flushed. Every node has an entry (maybe empty).
/// Symmetric partitions drop both directions on both sides; a one-way partition drops, on the
/// receiving side only, what comes from the sending side.
pub fn rules(nodes: &[u64], fault: &Fault, ip: impl Fn(u64) -> Ipv4Addr) -> BTreeMap<u64, Vec<Vec<String>>> {
    let drop_rule = |flag: &str, peer: u64| -> Vec<String> {
        ["-A", CHAIN, flag, &ip(peer).to_string(), "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut out: BTreeMap<u64, Vec<Vec<String>>> = nodes.iter().map(|&n| (n, Vec::new())).collect();
    match fault {
        Fault::Partition { groups, .. } => {
            for &n in nodes {
                for &m in nodes {
                    let talk = n == m || groups.iter().any(|g| g.contains(&n) && g.contains(&m));
                    if !talk {
                        let r = out.get_mut(&n).expect("every node has an entry");
                        r.push(drop_rule("-s", m));
                        r.push(drop_rule("-d", m));
                    }
                }
            }
        }
        Fault::PartitionOneway { from, to, .. } => {
            for &n in to {
                for &m in from {
                    if let Some(r) = out.get_mut(&n) {
                        r.push(drop_rule("-s", m));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// The `iptables-restore --noflush` input that flushes [`CHAIN`] and adds `rules`.
pub fn restore_input(rules: &[Vec<String>]) -> String {
    let mut s = format!("*filter\n-F {CHAIN}\n");
    for r in rules {
        s += &r.join(" ");
        s.push('\n');
    }
    s += "COMMIT\n";
    s
}

/// Runs `program args` with `stdin`, bounded by [`CMD_TIMEOUT`]; its stdout, or an error with
/// its stderr.
fn cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < CMD_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} did not finish within {} s", CMD_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut p) = child.stdout.take() {
        let _ = p.read_to_string(&mut out);
    }
    if let Some(mut p) = child.stderr.take() {
        let _ = p.read_to_string(&mut err);
    }
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{shown} failed ({status}): {}", err.trim()))
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// This process's effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether this process can use the netns layer; the reason when not. Creates and deletes one
/// probe namespace.
pub fn available() -> Result<(), String> {
    if effective_uid() != Some(0) {
        return Err("not running as root".into());
    }
    for p in ["ip", "iptables", "iptables-restore"] {
        if !on_path(p) {
            return Err(format!("`{p}` is not installed (apt-get install -y iptables iproute2)"));
        }
    }
    let probe = format!("cj{}-n0", short_id());
    let _ = cmd("ip", &["netns", "del", &probe], None);
    cmd("ip", &["netns", "add", &probe], None).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let works = cmd("ip", &["netns", "exec", &probe, "iptables", "-w", "5", "-S"], None);
    let _ = cmd("ip", &["netns", "del", &probe], None);
    works
        .map(|_| ())
        .map_err(|e| format!("iptables does not work inside a namespace: {e}"))
}

/// This runner's short id: its pid in base 36.
fn short_id() -> String {
    base36(std::process::id())
}

fn base36(mut v: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ascii digits")
}

/// The run id in a name this layer creates (`cjb<id>`, `cj<id>-n<i>`, `cj<id>-v<i>`,
/// `cj<id>-p<i>`), if it is one.
pub fn owner_id(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("cj")?;
    let id = match rest.split_once('-') {
        Some((id, tail)) => {
            let kind = tail.chars().next()?;
            let num = &tail[1..];
            if !"nvp".contains(kind) || num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            id
        }
        None => rest.strip_prefix('b')?,
    };
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())).then_some(id)
}

/// Whether the runner that owns `id` is gone.
fn stale(id: &str) -> bool {
    let Ok(pid) = u32::from_str_radix(id, 36) else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    // A SIGKILLed runner can linger as a zombie (still named jepsen-style) until it is reaped.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => zombie || comm.trim() != "jepsen-style",
        Err(_) => true,
    }
}

/// Removes namespaces, links and FORWARD rules left by runners that died without cleaning up.
/// Only names this layer creates, and only for runner pids that no longer run, are touched.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(list) = cmd("ip", &["netns", "list"], None) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_id(name).is_some_and(stale) {
                if let Ok(pids) = cmd("ip", &["netns", "pids", name], None) {
                    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                    }
                }
                if cmd("ip", &["netns", "del", name], None).is_ok() {
                    removed.push(format!("namespace {name}"));
                }
            }
        }
    }
    if let Ok(links) = cmd("ip", &["-o", "link", "show"], None) {
        for line in links.lines() {
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else {
                continue;
            };
            if owner_id(name).is_some_and(stale) && cmd("ip", &["link", "del", name], None).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    if let Ok(rules) = cmd("iptables", &["-w", "5", "-S", "FORWARD"], None) {
        for rule in rules.lines().filter(|l| l.starts_with("-A FORWARD -i cjb")) {
            let bridge = rule.split_whitespace().nth(3).unwrap_or("");
            if owner_id(bridge).is_some_and(stale) {
                let mut args: Vec<&str> = vec!["-w", "5", "-D"];
                args.extend(rule.split_whitespace().skip(1));
                if cmd("iptables", &args, None).is_ok() {
                    removed.push(format!("FORWARD rule for {bridge}"));
                }
            }
        }
    }
    removed
}

/// A third octet `k` such that no address or route on this machine is in `10.213.k.0/24`.
fn free_octet() -> Result<u8, String> {
    let mut used = cmd("ip", &["-o", "-4", "addr", "show"], None)?;
    used += &cmd("ip", &["-4", "route", "show", "table", "all"], None).unwrap_or_default();
    let start = (std::process::id() % 256) as usize;
    (0..256)
        .map(|i| ((start + i) % 256) as u8)
        .find(|k| !used.contains(&format!("{}.{}.{k}.", NET_PREFIX[0], NET_PREFIX[1])))
        .ok_or_else(|| "no free 10.213.k.0/24 subnet".into())
}

/// One run's bridge and namespaces. Dropping it tears everything down.
pub struct Net {
    id: String,
    octet: u8,
    nodes: Vec<u64>,
    forward_rule: AtomicBool,
    torn_down: AtomicBool,
    /// What [`remove_leftovers`] removed before setup.
    pub leftovers: Vec<String>,
}

impl Net {
    /// Creates the bridge, the namespaces and the chains for `nodes`. On error, whatever was
    /// created is removed again.
    pub fn setup(nodes: &[u64]) -> Result<Self, String> {
        let leftovers = remove_leftovers();
        let net = Net {
            id: short_id(),
            octet: free_octet()?,
            nodes: nodes.to_vec(),
            forward_rule: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            leftovers,
        };
        net.create()?;
        Ok(net)
    }

    fn create(&self) -> Result<(), String> {
        let br = self.bridge();
        let br_addr = format!("{}/24", self.bridge_ip());
        cmd("ip", &["link", "add", &br, "type", "bridge"], None)?;
        cmd("ip", &["addr", "add", &br_addr, "dev", &br], None)?;
        cmd("ip", &["link", "set", &br, "up"], None)?;
        let nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").unwrap_or_default();
        if nf.trim() == "1" {
            let rule = ["-i", &br, "-o", &br, "-j", "ACCEPT"];
            let mut args = vec!["-w", "5", "-I", "FORWARD"];
            args.extend(rule);
            cmd("iptables", &args, None)?;
            self.forward_rule.store(true, Ordering::SeqCst);
        }
        for &n in &self.nodes {
            let (ns, host, peer) = (self.ns(n), self.veth(n, 'v'), self.veth(n, 'p'));
            let addr = format!("{}/24", self.ip(n));
            cmd("ip", &["netns", "add", &ns], None)?;
            cmd(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
                None,
            )?;
            cmd("ip", &["link", "set", &host, "master", &br], None)?;
            cmd("ip", &["link", "set", &host, "up"], None)?;
            cmd("ip", &["link", "set", &peer, "netns", &ns], None)?;
            cmd("ip", &["-n", &ns, "addr", "add", &addr, "dev", &peer], None)?;
            cmd("ip", &["-n", &ns, "link", "set", &peer, "up"], None)?;
            cmd("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            self.iptables(n, &["-N", CHAIN])?;
            self.iptables(n, &["-I", "INPUT", "-j", CHAIN])?;
            self.iptables(n, &["-I", "OUTPUT", "-j", CHAIN])?;
        }
        Ok(())
    }

    fn iptables(&self, node: u64, args: &[&str]) -> Result<String, String> {
        let ns = self.ns(node);
        let mut all = vec!["netns", "exec", &ns, "iptables", "-w", "5"];
        all.extend(args);
        cmd("ip", &all, None)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("cjb{}", self.id)
    }

    /// Node `node`'s namespace.
    pub fn ns(&self, node: u64) -> String {
        format!("cj{}-n{node}", self.id)
    }

    fn veth(&self, node: u64, side: char) -> String {
        format!("cj{}-{side}{node}", self.id)
    }

    /// The bridge's address (the runner's side).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.octet, 1)
    }

    /// Node `node`'s address inside its namespace.
    pub fn ip(&self, node: u64) -> Ipv4Addr {
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.octet, (10 + node).min(254) as u8)
    }

    /// Replaces the partition rules with those of `fault` in every namespace.
    pub fn partition(&self, fault: &Fault) -> Result<(), String> {
        for (node, rules) in rules(&self.nodes, fault, |n| self.ip(n)) {
            let ns = self.ns(node);
            cmd(
                "ip",
                &["netns", "exec", &ns, "iptables-restore", "-w", "5", "--noflush"],
                Some(&restore_input(&rules)),
            )?;
        }
        Ok(())
    }

    /// Flushes the partition rules in every namespace.
    pub fn heal(&self) -> Result<(), String> {
        for &n in &self.nodes {
            self.iptables(n, &["-F", CHAIN])?;
        }
        Ok(())
    }

    /// Deletes the namespaces, veths, bridge and FORWARD rule; idempotent. Kill the nodes first.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        for &n in &self.nodes {
            let ns = self.ns(n);
            if let Ok(pids) = cmd("ip", &["netns", "pids", &ns], None) {
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
            let _ = cmd("ip", &["netns", "del", &ns], None);
            let _ = cmd("ip", &["link", "del", &self.veth(n, 'v')], None);
        }
        let br = self.bridge();
        let _ = cmd("ip", &["link", "del", &br], None);
        if self.forward_rule.load(Ordering::SeqCst) {
            let _ = cmd(
                "iptables",
                &["-w", "5", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"],
                None,
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis;

    const FIVE: [u64; 5] = [1, 2, 3, 4, 5];

    fn ip(n: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 7, 10 + n as u8)
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn halves_drop_both_directions_on_both_sides() {
        let f = nemesis::partition(&FIVE, vec![vec![1, 2], vec![3, 4, 5]]);
        let r = rules(&FIVE, &f, ip);
        assert_eq!(r.len(), 5, "every namespace gets an entry");
        assert_eq!(
            r[&1],
            vec![
                args(&["-A", CHAIN, "-s", "10.213.7.13", "-j", "DROP"]),
                args(&["-A", CHAIN, "-d", "10.213.7.13", "-j", "DROP"]),
                args(&["-A", CHAIN, "-s", "10.213.7.14", "-j", "DROP"]),
                args(&["-A", CHAIN, "-d", "10.213.7.14", "-j", "DROP"]),
                args(&["-A", CHAIN, "-s", "10.213.7.15", "-j", "DROP"]),
                args(&["-A", CHAIN, "-d", "10.213.7.15", "-j", "DROP"]),
            ]
        );
        assert_eq!(r[&3].len(), 4, "3 drops 1 and 2, both ways");
        assert!(r[&3].contains(&args(&["-A", CHAIN, "-s", "10.213.7.11", "-j", "DROP"])));
        assert!(!r[&3].iter().any(|a| a.contains(&"10.213.7.14".to_string())));
    }

    #[test]
    fn shapes_from_the_nemesis_match_the_talk_relation() {
        for seed in 0..20 {
            for f in [
                nemesis::majorities_ring(&FIVE, seed),
                nemesis::bridge(&FIVE, seed),
                nemesis::partition_halves(&FIVE, seed),
            ] {
                let Fault::Partition { groups, .. } = &f else {
                    unreachable!()
                };
                let r = rules(&FIVE, &f, ip);
                for &n in &FIVE {
                    for &m in &FIVE {
                        let talk = n == m || groups.iter().any(|g| g.contains(&n) && g.contains(&m));
                        let dropped = r[&n].contains(&args(&["-A", CHAIN, "-s", &ip(m).to_string(), "-j", "DROP"]));
                        assert_eq!(dropped, !talk, "seed {seed} {n}<-{m} in {f:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ring_keeps_every_node_with_two_peers() {
        let f = nemesis::majorities_ring(&FIVE, 3);
        for (n, r) in rules(&FIVE, &f, ip) {
            assert_eq!(r.len(), 4, "node {n} drops exactly two peers both ways: {r:?}");
        }
    }

    #[test]
    fn oneway_drops_only_on_the_receiving_side() {
        let f = Fault::PartitionOneway {
            from: vec![1, 2],
            to: vec![3, 4, 5],
            majority: vec![3, 4, 5],
            minority: vec![1, 2],
        };
        let r = rules(&FIVE, &f, ip);
        assert!(r[&1].is_empty() && r[&2].is_empty(), "the sending side keeps receiving");
        for n in [3, 4, 5] {
            assert_eq!(
                r[&n],
                vec![
                    args(&["-A", CHAIN, "-s", "10.213.7.11", "-j", "DROP"]),
                    args(&["-A", CHAIN, "-s", "10.213.7.12", "-j", "DROP"]),
                ]
            );
        }
        for seed in 0..10 {
            let f = nemesis::partition_oneway(&FIVE, seed);
            let Fault::PartitionOneway { from, to, .. } = &f else {
                unreachable!()
            };
            let r = rules(&FIVE, &f, ip);
            assert!(from.iter().all(|n| r[n].is_empty()));
            assert!(to.iter().all(|n| r[n].len() == from.len()));
            assert!(r.values().flatten().all(|a| a[2] == "-s"), "INPUT-side matches only");
        }
    }

    #[test]
    fn other_faults_have_no_rules_and_restore_input_flushes() {
        let r = rules(&FIVE, &Fault::Kill { node: 1 }, ip);
        assert!(r.values().all(Vec::is_empty));
        assert_eq!(
            restore_input(&[args(&["-A", CHAIN, "-s", "10.213.7.11", "-j", "DROP"])]),
            format!("*filter\n-F {CHAIN}\n-A {CHAIN} -s 10.213.7.11 -j DROP\nCOMMIT\n")
        );
        assert_eq!(restore_input(&[]), format!("*filter\n-F {CHAIN}\nCOMMIT\n"));
    }

    #[test]
    fn owner_ids_only_match_our_names() {
        assert_eq!(owner_id("cjb1a2b"), Some("1a2b"));
        assert_eq!(owner_id("cj1a2b-n3"), Some("1a2b"));
        assert_eq!(owner_id("cj1a2b-v12"), Some("1a2b"));
        assert_eq!(owner_id("cj1a2b-p1"), Some("1a2b"));
        for other in [
            "eth0",
            "cj",
            "cjb",
            "cj1a2b-x1",
            "cj1a2b-n",
            "cjX-n1",
            "docker0",
            "cj1a2b-nfoo",
        ] {
            assert_eq!(owner_id(other), None, "{other}");
        }
        assert_eq!(base36(0), "0");
        assert_eq!(u32::from_str_radix(&base36(4_194_303), 36), Ok(4_194_303));
    }
}
