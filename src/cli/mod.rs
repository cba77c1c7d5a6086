//! The `capkv` command line: server, local cluster launcher and client in one binary.
//!
//! Output is a table (or plain value) for people, or exactly one JSON object per command with
//! `-o json`. Exit codes (README, "Exit codes"): 0 ok, 1 the answer is no, 2 usage, 3 definitely
//! not applied, 4 outcome unknown, 5 any other error. Errors print one sentence on stderr.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::{json, Value};

mod bench;
mod cluster_status;

use crate::ap::replica::ReplicaOptions;
use crate::client::{Client, DEFAULT_ENDPOINTS};
use crate::cluster;
use crate::cp::raft::RaftOptions;
use crate::error::Error;
use crate::fault::parse_group;
use crate::keyspace::Mode;
use crate::node::{parse_peers, NodeOptions};
use crate::observe::logging::LogFormat;
use crate::proto;
pub use crate::request::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "capkv",
    version,
    about = "A replicated key-value store that lets you run the CAP theorem",
    propagate_version = true
)]
pub struct Cli {
    /// Nodes to talk to, comma-separated HOST:PORT; tried in turn when one is down.
    #[arg(long, env = "CAPKV_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, global = true)]
    pub endpoints: String,
    /// How long a client command may take in all (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Print values as hex (values are bytes; text output escapes bytes that are not UTF-8).
    #[arg(long, global = true)]
    pub hex: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one capkv node (server).
    Node(NodeArgs),
    /// Start, stop and inspect a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and describe keyspaces.
    #[command(subcommand)]
    Keyspace(KeyspaceCommand),
    /// Write a value.
    Put {
        keyspace: String,
        key: String,
        value: String,
        /// ap keyspaces: replicas that must store the write before it is acknowledged.
        #[arg(long, default_value_t = 1)]
        acks: u32,
    },
    /// Read a value (cp: linearizable by default; ap: the local replica by default).
    Get {
        keyspace: String,
        key: String,
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Delete a key (exit 1 when it did not exist).
    Delete {
        keyspace: String,
        key: String,
        /// ap keyspaces: replicas that must store the tombstone before it is acknowledged.
        #[arg(long, default_value_t = 1)]
        acks: u32,
    },
    /// List keys in order.
    Scan {
        keyspace: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most keys to return (default: all).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Compare-and-swap: write NEW only if the key holds OLD (or is absent).
    #[command(group(clap::ArgGroup::new("expectation").required(true).args(["expect", "expect_absent"])))]
    Cas {
        keyspace: String,
        key: String,
        #[arg(long, value_name = "OLD")]
        expect: Option<String>,
        #[arg(long)]
        expect_absent: bool,
        #[arg(value_name = "NEW")]
        new_value: String,
    },
    /// Inject faults into a cluster started with --fault-injection.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Closed-loop benchmark against a running cluster: throughput, latency percentiles, SLO verdict.
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// cp only: through the leader, with ReadIndex.
    Linearizable,
    /// The answering node's replica; may be stale.
    Serializable,
    /// ap only: the newest version among a majority, repairing stale replicas.
    Quorum,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id (1, 2, ...), as listed in --peers.
    #[arg(long)]
    pub id: u64,
    /// gRPC address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// HTTP address for /metrics, /health and /ready.
    #[arg(long)]
    pub http: std::net::SocketAddr,
    /// Where this node keeps its data and logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every member as ID=HOST:PORT, comma-separated (this node included).
    #[arg(long)]
    pub peers: String,
    /// Allow `capkv fault` commands to partition this node.
    #[arg(long)]
    pub fault_injection: bool,
    #[arg(long, default_value_t = RaftOptions::default().heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    #[arg(long, default_value_t = RaftOptions::default().election_timeout_ms_min)]
    pub election_timeout_ms_min: u64,
    #[arg(long, default_value_t = RaftOptions::default().election_timeout_ms_max)]
    pub election_timeout_ms_max: u64,
    /// How often this node compares ap digests with peers.
    #[arg(long, default_value_t = ReplicaOptions::default().anti_entropy_interval_ms)]
    pub anti_entropy_interval_ms: u64,
    /// Peers contacted per anti-entropy round.
    #[arg(long, default_value_t = ReplicaOptions::default().anti_entropy_fanout)]
    pub anti_entropy_fanout: usize,
    /// Hints kept per unreachable peer; beyond it, writes are left to anti-entropy (counted).
    #[arg(long, default_value_t = ReplicaOptions::default().hints_per_peer_max)]
    pub hints_per_peer_max: usize,
    #[arg(long, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Log level (trace, debug, info, warn, error); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Start a local cluster of N nodes on 127.0.0.1 and wait until it is healthy.
    Up(cluster::UpArgs),
    /// Stop a cluster started with `cluster up --detach`.
    Down {
        #[arg(long, default_value = "./capkv-data")]
        data_dir: PathBuf,
    },
    /// Show every node's role, term, indexes and health.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum KeyspaceCommand {
    /// Create a keyspace; its mode is fixed for life.
    Create {
        name: String,
        #[arg(long, value_parser = parse_mode)]
        mode: Mode,
    },
    List,
    Describe {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FaultCommand {
    /// Partition the cluster: each GROUP is node ids joined by commas (`1,2 3`).
    Partition {
        #[arg(required = true, num_args = 2.., value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Restore the network between all nodes.
    Heal,
    /// Show the current partition and clock offsets of every node.
    Status,
    /// Shift one node's clock (ap timestamps), e.g. `capkv fault clock 3 +5s`; heal clears it.
    Clock {
        node: u64,
        #[arg(value_parser = parse_offset_ms, allow_hyphen_values = true)]
        offset: i64,
    },
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse::<Mode>().map_err(|e| e.to_string())
}

/// What a command prints and how it exits.
pub struct Report {
    pub json: Value,
    pub text: String,
    /// Exit 1 with this sentence on stderr: the operation ran and the answer is no.
    pub no: Option<String>,
}

impl Report {
    pub fn ok(json: Value, text: impl Into<String>) -> Self {
        Self {
            json,
            text: text.into(),
            no: None,
        }
    }
}

/// Renders a value: text when it is UTF-8 (escaped otherwise), hex with --hex.
fn show(value: &[u8], hex: bool) -> String {
    if hex {
        return hex::encode(value);
    }
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => value.escape_ascii().to_string(),
    }
}

fn text_or_null(value: &[u8]) -> Value {
    std::str::from_utf8(value).map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn consistency(arg: Option<ConsistencyArg>) -> proto::Consistency {
    match arg {
        None => proto::Consistency::Default,
        Some(ConsistencyArg::Linearizable) => proto::Consistency::Linearizable,
        Some(ConsistencyArg::Serializable) => proto::Consistency::Serializable,
        Some(ConsistencyArg::Quorum) => proto::Consistency::Quorum,
    }
}

fn mode_name(mode: i32) -> &'static str {
    match proto::Mode::try_from(mode) {
        Ok(proto::Mode::Cp) => "cp",
        Ok(proto::Mode::Ap) => "ap",
        _ => "unknown",
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// Runs a client command against the cluster.
pub async fn run_client(cli: &Cli) -> Result<Report, Error> {
    let client = Client::from_list(&cli.endpoints, cli.timeout)?;
    let hex = cli.hex;
    match &cli.command {
        Command::Put {
            keyspace,
            key,
            value,
            acks,
        } => {
            let r = client
                .put_acks(keyspace, key.as_bytes(), value.as_bytes(), *acks)
                .await?;
            let json =
                json!({"keyspace": keyspace, "key": key, "revision": r.revision, "version": version_json(r.version)});
            Ok(Report::ok(json, "OK"))
        }
        Command::Get {
            keyspace,
            key,
            consistency: c,
        } => get(&client, keyspace, key, *c, hex).await,
        Command::Delete { keyspace, key, acks } => {
            let r = client.delete_acks(keyspace, key.as_bytes(), *acks).await?;
            let json = json!({"keyspace": keyspace, "key": key, "deleted": r.deleted, "revision": r.revision,
                "version": version_json(r.version)});
            Ok(Report {
                json,
                text: "deleted".into(),
                no: (!r.deleted).then(|| format!("key '{key}' was not found in keyspace '{keyspace}'")),
            })
        }
        Command::Scan {
            keyspace,
            prefix,
            limit,
            consistency: c,
        } => scan(&client, keyspace, prefix, *limit, *c, hex).await,
        Command::Cas {
            keyspace,
            key,
            expect,
            new_value,
            ..
        } => cas(&client, keyspace, key, expect.as_deref(), new_value, hex).await,
        Command::Keyspace(k) => keyspace_command(&client, k).await,
        Command::Fault(f) => fault_command(&client, f).await,
        Command::Bench(args) => bench::run(cli, args).await,
        Command::Cluster(ClusterCommand::Status) => cluster_status::status(&client).await,
        Command::Node(_) | Command::Cluster(_) => {
            unreachable!("server commands do not run as client commands")
        }
    }
}

async fn get(
    client: &Client,
    keyspace: &str,
    key: &str,
    c: Option<ConsistencyArg>,
    hex: bool,
) -> Result<Report, Error> {
    let r = client.get(keyspace, key.as_bytes(), consistency(c)).await?;
    let kv = r.kv.unwrap_or_default();
    let json = json!({
        "keyspace": keyspace, "key": key, "found": r.found,
        "value": if r.found { text_or_null(&kv.value) } else { Value::Null },
        "value_hex": if r.found { Value::String(hex::encode(&kv.value)) } else { Value::Null },
        "mod_revision": kv.mod_revision, "create_revision": kv.create_revision, "version": kv.version,
        "served_by": r.served_by, "version": version_json(kv.ap_version),
    });
    if !r.found {
        return Ok(Report {
            json,
            text: String::new(),
            no: Some(format!("key '{key}' was not found in keyspace '{keyspace}'")),
        });
    }
    Ok(Report::ok(json, show(&kv.value, hex)))
}

async fn scan(
    client: &Client,
    keyspace: &str,
    prefix: &str,
    limit: Option<usize>,
    c: Option<ConsistencyArg>,
    hex: bool,
) -> Result<Report, Error> {
    let mut items = Vec::new();
    let mut start_after = Vec::new();
    let mut more = true;
    while more && limit.is_none_or(|l| items.len() < l) {
        let want = limit.map_or(0, |l| (l - items.len()).min(u32::MAX as usize) as u32);
        let req = proto::ScanRequest {
            keyspace: keyspace.into(),
            prefix: prefix.as_bytes().to_vec(),
            start_after: start_after.clone(),
            limit: want,
            consistency: consistency(c) as i32,
        };
        let page = client.scan(req).await?;
        more = page.more;
        if let Some(last) = page.items.last() {
            start_after = last.key.clone();
        }
        items.extend(page.items);
    }
    let mut t = table(&["KEY", "VALUE", "REVISION"]);
    for kv in &items {
        t.add_row(vec![
            show(&kv.key, hex),
            show(&kv.value, hex),
            kv.mod_revision.to_string(),
        ]);
    }
    let json_items: Vec<Value> = items
        .iter()
        .map(|kv| json!({"key": text_or_null(&kv.key), "key_hex": hex::encode(&kv.key), "value": text_or_null(&kv.value), "value_hex": hex::encode(&kv.value), "mod_revision": kv.mod_revision}))
        .collect();
    let text = if items.is_empty() {
        "(no keys)".to_string()
    } else {
        t.to_string()
    };
    Ok(Report::ok(
        json!({"keyspace": keyspace, "items": json_items, "more": more}),
        text,
    ))
}

async fn cas(
    client: &Client,
    keyspace: &str,
    key: &str,
    expect: Option<&str>,
    new_value: &str,
    hex: bool,
) -> Result<Report, Error> {
    let r = client
        .cas(
            keyspace,
            key.as_bytes(),
            expect.map(str::as_bytes),
            new_value.as_bytes(),
        )
        .await?;
    let current = if r.current_found {
        text_or_null(&r.current)
    } else {
        Value::Null
    };
    let json =
        json!({"keyspace": keyspace, "key": key, "succeeded": r.succeeded, "current": current, "revision": r.revision});
    if r.succeeded {
        return Ok(Report::ok(json, "OK"));
    }
    let found = if r.current_found {
        format!("holds '{}'", show(&r.current, hex))
    } else {
        "does not exist".to_string()
    };
    let wanted = expect.map_or("to be absent".to_string(), |e| format!("'{e}'"));
    Ok(Report {
        json,
        text: String::new(),
        no: Some(format!(
            "compare-and-swap failed: key '{key}' {found}, expected {wanted}"
        )),
    })
}

async fn keyspace_command(client: &Client, command: &KeyspaceCommand) -> Result<Report, Error> {
    let info_json = |k: &proto::KeyspaceInfo| json!({"name": k.name, "mode": mode_name(k.mode), "created_revision": k.created_revision, "keys": k.keys});
    match command {
        KeyspaceCommand::Create { name, mode } => {
            let k = client.create_keyspace(name, *mode).await?;
            Ok(Report::ok(
                info_json(&k),
                format!("created keyspace '{}' (mode {})", k.name, mode_name(k.mode)),
            ))
        }
        KeyspaceCommand::List => {
            let list = client.list_keyspaces().await?;
            let mut t = table(&["NAME", "MODE", "CREATED AT"]);
            for k in &list.keyspaces {
                t.add_row(vec![
                    k.name.clone(),
                    mode_name(k.mode).to_string(),
                    k.created_revision.to_string(),
                ]);
            }
            let keyspaces: Vec<Value> = list
                .keyspaces
                .iter()
                .map(|k| json!({"name": k.name, "mode": mode_name(k.mode), "created_revision": k.created_revision}))
                .collect();
            let text = if list.keyspaces.is_empty() {
                "(no keyspaces)".to_string()
            } else {
                t.to_string()
            };
            Ok(Report::ok(json!({"keyspaces": keyspaces}), text))
        }
        KeyspaceCommand::Describe { name } => {
            let k = client.describe_keyspace(name).await?;
            let mut t = table(&["NAME", "MODE", "CREATED AT", "KEYS"]);
            t.add_row(vec![
                k.name.clone(),
                mode_name(k.mode).to_string(),
                k.created_revision.to_string(),
                k.keys.to_string(),
            ]);
            Ok(Report::ok(info_json(&k), t.to_string()))
        }
    }
}

/// The version of an ap write as JSON (null for cp keyspaces).
fn version_json(version: Option<proto::Version>) -> Value {
    match version {
        Some(v) => json!({"hlc": format!("{}.{}", v.physical_ms, v.logical), "physical_ms": v.physical_ms,
            "logical": v.logical, "node": v.node_id}),
        None => Value::Null,
    }
}

/// Parses a clock offset such as `+5s`, `-200ms` or `0`.
pub fn parse_offset_ms(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    let d = parse_duration(rest).map_err(|_| format!("'{text}' is not a clock offset; write e.g. +5s, -200ms or 0"))?;
    Ok(sign * d.as_millis() as i64)
}

fn groups_json(groups: &[proto::Group]) -> Value {
    json!(groups.iter().map(|g| g.nodes.clone()).collect::<Vec<_>>())
}

fn groups_text(groups: &[proto::Group]) -> String {
    let parts: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(
                "{{{}}}",
                g.nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    parts.join(" | ")
}

async fn fault_command(client: &Client, command: &FaultCommand) -> Result<Report, Error> {
    let r = match command {
        FaultCommand::Partition { groups } => {
            let groups = groups
                .iter()
                .map(|g| parse_group(g).map(|s| s.into_iter().collect()))
                .collect::<Result<Vec<Vec<u64>>, _>>()?;
            client.fault_partition(groups).await?
        }
        FaultCommand::Heal => client.fault_heal().await?,
        FaultCommand::Status => client.fault_status().await?,
        FaultCommand::Clock { node, offset } => client.fault_clock(*node, *offset).await?,
    };
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .map(|n| {
            json!({"node_id": n.node_id, "reached": n.reached, "error": n.error,
            "groups": groups_json(&n.groups), "clock_offset_ms": n.clock_offset_ms})
        })
        .collect();
    let json = json!({"enabled": r.enabled, "groups": groups_json(&r.groups), "nodes": nodes});
    let mut text = match (r.enabled, r.groups.is_empty()) {
        (false, _) => "fault injection is off on this node".to_string(),
        (true, true) => "network whole: no partition".to_string(),
        (true, false) => format!("partitioned: {}", groups_text(&r.groups)),
    };
    let unreached: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| !n.reached)
        .map(|n| format!("node {} ({})", n.node_id, n.error))
        .collect();
    let skewed: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| n.reached && n.clock_offset_ms != 0)
        .map(|n| format!("node {} {:+} ms", n.node_id, n.clock_offset_ms))
        .collect();
    if !skewed.is_empty() {
        text.push_str(&format!("\nclock offsets: {}", skewed.join(", ")));
    }
    if !unreached.is_empty() {
        text.push_str(&format!(
            "\nwarning: not told (keeps its previous state): {}",
            unreached.join(", ")
        ));
    }
    Ok(Report::ok(json, text))
}

/// Builds node options from the command line.
pub fn node_options(args: &NodeArgs) -> Result<NodeOptions, Error> {
    Ok(NodeOptions {
        id: args.id,
        listen: args.listen,
        http: args.http,
        data_dir: args.data_dir.clone(),
        peers: parse_peers(&args.peers)?,
        fault_injection: args.fault_injection,
        raft: RaftOptions {
            heartbeat_interval_ms: args.heartbeat_interval_ms,
            election_timeout_ms_min: args.election_timeout_ms_min,
            election_timeout_ms_max: args.election_timeout_ms_max,
        },
        ap: ReplicaOptions {
            anti_entropy_interval_ms: args.anti_entropy_interval_ms,
            anti_entropy_fanout: args.anti_entropy_fanout,
            hints_per_peer_max: args.hints_per_peer_max,
            ..ReplicaOptions::default()
        },
    })
}

/// Prints a report or an error and returns the exit code.
pub fn finish(output: Output, result: Result<Report, Error>) -> i32 {
    match result {
        Ok(report) => {
            match output {
                Output::Json => println!("{}", report.json),
                Output::Table if !report.text.is_empty() => println!("{}", report.text),
                Output::Table => {}
            }
            match report.no {
                Some(sentence) => {
                    eprintln!("{sentence}");
                    1
                }
                None => 0,
            }
        }
        Err(e) => {
            let code = e.exit_code();
            if output == Output::Json {
                println!("{}", json!({"error": e.to_string(), "exit_code": code}));
            }
            eprintln!("error: {e}");
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_safely() {
        assert_eq!(show(b"100", false), "100");
        assert_eq!(show(&[0xff, b'a'], false), "\\xffa");
        assert_eq!(show(&[0xff, b'a'], true), "ff61");
        assert_eq!(text_or_null(&[0xff]), Value::Null);
    }

    #[test]
    fn cli_parses_the_documented_commands() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("capkv").chain(args.iter().copied()));
        assert!(parse(&["put", "bank", "alice", "100"]).is_ok());
        assert!(parse(&[
            "--endpoints",
            "127.0.0.1:7003",
            "get",
            "bank",
            "alice",
            "--consistency",
            "serializable"
        ])
        .is_ok());
        assert!(parse(&["cas", "bank", "alice", "--expect", "100", "90"]).is_ok());
        assert!(parse(&["cas", "bank", "alice", "--expect-absent", "90"]).is_ok());
        assert!(
            parse(&["cas", "bank", "alice", "90"]).is_err(),
            "an expectation is required"
        );
        assert!(parse(&["cas", "bank", "alice", "--expect", "1", "--expect-absent", "90"]).is_err());
        assert!(parse(&["fault", "partition", "1,2", "3"]).is_ok());
        assert!(
            parse(&["fault", "partition", "1,2"]).is_err(),
            "a partition needs two groups"
        );
        assert!(parse(&["keyspace", "create", "bank", "--mode", "cp"]).is_ok());
        assert!(parse(&["keyspace", "create", "bank", "--mode", "xx"]).is_err());
        assert!(parse(&["-o", "json", "cluster", "status"]).is_ok());
        assert!(parse(&["scan", "bank", "--prefix", "a", "--limit", "10"]).is_ok());
    }
}
