//! The `capkv` command line: server, local cluster launcher and client in one binary.
//!
//! One module per command group: [`kv`] (put, get, delete, scan, cas), [`txn`], [`keyspace`],
//! [`fault`], [`cluster`] (the CLI side of the local launcher), [`bench`], [`node`] (server
//! flags) and [`completion`]. Every client command returns one serde struct that implements
//! [`View`]; [`finish`] prints it as a table (or plain value) for people, or as exactly one JSON
//! object with `-o json`, and turns the outcome into the exit code: 0 ok, 1 the answer is no,
//! 2 usage, 3 definitely not applied, 4 outcome unknown, 5 any other error. Errors print one
//! sentence on stderr. Keys and values typed on the command line go through [`input`].
//!
//! Client flags (`--endpoints`, `--timeout`, `-o`, `--hex`) may stand before the command
//! (`capkv --endpoints X get ks k`) or after it (`capkv get ks k --endpoints X`); the later one
//! wins. They are not flags of `capkv node`, whose help lists server flags only.
//!
//! CAVEATS: a flag after the command overrides the same flag before it, and `CAPKV_ENDPOINTS`
//! is read for the flag before the command only (it is its default).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod backup;
mod bench;
mod cluster;
mod completion;
mod fault;
mod input;
mod keyspace;
mod kv;
mod member;
mod node;
mod output;
mod txn;

pub use crate::request::parse_duration;
pub use cluster::{ClusterArgs, ClusterCommand};
pub use completion::ShellArg;
pub use kv::ConsistencyArg;
pub use node::{node_options, NodeArgs};
pub use output::{Done, Report, View};

use crate::client::{Client, DEFAULT_ENDPOINTS};
use crate::error::Error;

#[derive(Parser, Debug)]
#[command(
    name = "capkv",
    version,
    about = "A replicated key-value store that lets you run the CAP theorem",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// Client flags given before the command, with their defaults.
#[derive(Args, Clone, Debug)]
pub struct ClientFlags {
    /// Nodes to talk to, comma-separated HOST:PORT; tried in turn when one is down.
    #[arg(long, env = "CAPKV_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,
    /// How long a client command may take in all (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Keys and values are hex, on input and output (output without it escapes non-UTF-8 bytes).
    #[arg(long)]
    pub hex: bool,
    /// Token for nodes started with --auth-token-file (sent as `authorization: Bearer TOKEN`).
    #[arg(long, env = "CAPKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connect over TLS, trusting this CA (PEM) for the nodes' certificates.
    #[arg(long, env = "CAPKV_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for nodes started with --trusted-ca-file; needs --key.
    #[arg(long = "cert", env = "CAPKV_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long = "key", env = "CAPKV_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The same client flags given after the command; each one set overrides [`ClientFlags`].
#[derive(Args, Clone, Debug, Default)]
pub struct ClientOverrides {
    /// Nodes to talk to, comma-separated HOST:PORT (default: CAPKV_ENDPOINTS or 127.0.0.1:7001-7003).
    #[arg(long = "endpoints", global = true, value_name = "ENDPOINTS")]
    pub endpoints: Option<String>,
    /// How long the command may take in all (e.g. 5s, 500ms; default 5s).
    #[arg(long = "timeout", global = true, value_parser = parse_duration, value_name = "TIMEOUT")]
    pub timeout: Option<Duration>,
    /// Output format (default: table).
    #[arg(short = 'o', long = "output", value_enum, global = true, value_name = "OUTPUT")]
    pub output: Option<Output>,
    /// Keys and values are hex, on input and output.
    #[arg(long = "hex", global = true)]
    pub hex: bool,
    /// Token for nodes that check tokens (default: CAPKV_TOKEN).
    #[arg(long = "token", global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// CA to trust over TLS (default: CAPKV_CACERT).
    #[arg(long = "cacert", global = true, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (default: CAPKV_CERT).
    #[arg(long = "cert", global = true, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Client certificate key (default: CAPKV_KEY).
    #[arg(long = "key", global = true, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ClientFlags {
    /// The TLS settings the flags ask for: `--cacert` turns TLS on.
    pub fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, Error> {
        match &self.cacert {
            Some(ca) => crate::tls::client_config(ca, self.tls_cert.as_deref(), self.tls_key.as_deref()).map(Some),
            None if self.tls_cert.is_some() || self.tls_key.is_some() => Err(Error::InvalidInput(
                "--cert and --key need --cacert (the CA that signed the nodes' certificates)".into(),
            )),
            None => Ok(None),
        }
    }

    fn merged(&self, later: &ClientOverrides) -> Self {
        Self {
            endpoints: later.endpoints.clone().unwrap_or_else(|| self.endpoints.clone()),
            timeout: later.timeout.unwrap_or(self.timeout),
            output: later.output.unwrap_or(self.output),
            hex: self.hex || later.hex,
            token: later.token.clone().or_else(|| self.token.clone()),
            cacert: later.cacert.clone().or_else(|| self.cacert.clone()),
            tls_cert: later.tls_cert.clone().or_else(|| self.tls_cert.clone()),
            tls_key: later.tls_key.clone().or_else(|| self.tls_key.clone()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// Parsed once per process: the size of the node's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one capkv node (server).
    Node(NodeArgs),
    /// Start, stop and inspect a local cluster.
    Cluster(ClusterArgs),
    /// Create, list and describe keyspaces.
    Keyspace(keyspace::KeyspaceArgs),
    /// Write a value (from the argument, stdin or a file).
    Put(kv::PutArgs),
    /// Read a value (cp: linearizable by default; ap: the local replica by default).
    Get(kv::GetArgs),
    /// Delete a key (exit 1 when it did not exist).
    Delete(kv::DeleteArgs),
    /// List keys in order.
    Scan(kv::ScanArgs),
    /// Compare-and-swap: write NEW only if the key holds OLD (or is absent).
    Cas(kv::CasArgs),
    /// Transaction (cp keyspaces): if every compare holds, run the success operations, else the
    /// failure ones.
    #[command(long_about = txn::LONG_ABOUT)]
    Txn(txn::TxnArgs),
    /// List, add and remove members of the cluster at run time.
    Member(member::MemberArgs),
    /// Inject faults into a cluster started with --fault-injection.
    Fault(fault::FaultArgs),
    /// Back up keyspaces to file:// or s3://, list, verify and restore backups.
    Backup(backup::BackupArgs),
    /// Closed-loop benchmark against a running cluster: throughput, latency percentiles, SLO verdict.
    Bench(bench::BenchArgs),
    /// Print a shell completion script: `source <(capkv completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: ShellArg,
    },
}

impl Cli {
    /// The client flags in force: those after the command override those before it.
    pub fn client_flags(&self) -> ClientFlags {
        let later = match &self.command {
            Command::Cluster(a) => &a.client,
            Command::Keyspace(a) => &a.client,
            Command::Put(a) => &a.client,
            Command::Get(a) => &a.client,
            Command::Delete(a) => &a.client,
            Command::Scan(a) => &a.client,
            Command::Cas(a) => &a.client,
            Command::Txn(a) => &a.client,
            Command::Fault(a) => &a.client,
            Command::Member(a) => &a.client,
            Command::Bench(a) => &a.client,
            Command::Backup(a) => &a.client,
            Command::Node(_) | Command::Completion { .. } => return self.client.clone(),
        };
        self.client.merged(later)
    }
}

/// Runs a client command against the cluster.
pub async fn run_client(cli: &Cli) -> Result<Report, Error> {
    let flags = cli.client_flags();
    let client = Client::from_list(&flags.endpoints, flags.timeout)?
        .with_token(flags.token.as_deref())?
        .with_tls(flags.tls()?);
    let hex = flags.hex;
    match &cli.command {
        Command::Put(a) => Ok(Report::of(&kv::put(&client, a, hex).await?, hex)),
        Command::Get(a) => Ok(Report::of(&kv::get(&client, a, hex).await?, hex)),
        Command::Delete(a) => Ok(Report::of(&kv::delete(&client, a, hex).await?, hex)),
        Command::Scan(a) => Ok(Report::of(&kv::scan(&client, a, hex).await?, hex)),
        Command::Cas(a) => Ok(Report::of(&kv::cas(&client, a, hex).await?, hex)),
        Command::Txn(a) => Ok(Report::of(&txn::run(&client, a, hex).await?, hex)),
        Command::Keyspace(a) => keyspace::run(&client, &a.command, hex).await,
        Command::Fault(a) => Ok(Report::of(&fault::run(&client, &a.command).await?, hex)),
        Command::Member(a) => Ok(Report::of(&member::run(&client, &a.command).await?, hex)),
        Command::Bench(a) => Ok(Report::of(&bench::run(&flags, a).await?, hex)),
        Command::Backup(a) => backup::run(&client, &a.command, hex).await,
        Command::Cluster(ClusterArgs {
            command: ClusterCommand::Status,
            ..
        }) => Ok(Report::of(&cluster::status(&client).await?, hex)),
        Command::Node(_) | Command::Cluster(_) | Command::Completion { .. } => Err(Error::Internal(
            "this command does not talk to a cluster; run it through the capkv binary".into(),
        )),
    }
}

/// Writes the completion script for `shell` to stdout.
pub fn print_completion(shell: ShellArg) -> i32 {
    completion::write(shell, &mut std::io::stdout());
    0
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
                println!("{}", serde_json::json!({"error": e.to_string(), "exit_code": code}));
            }
            eprintln!("error: {e}");
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capkv").chain(args.iter().copied()))
    }

    #[test]
    fn cli_parses_the_documented_commands() {
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
        assert!(parse(&["put", "bank", "alice", "-"]).is_ok());
        assert!(parse(&["put", "bank", "alice", "--value-file", "v.bin"]).is_ok());
        assert!(
            parse(&["put", "bank", "alice"]).is_err(),
            "a put needs a value or --value-file"
        );
        assert!(parse(&["member", "list", "-o", "json"]).is_ok());
        assert!(parse(&["member", "add", "4", "127.0.0.1:7004"]).is_ok());
        assert!(parse(&["member", "add", "4"]).is_err(), "an add needs an address");
        assert!(parse(&["member", "remove", "1"]).is_ok());
        assert!(parse(&["completion", "bash"]).is_ok());
        assert!(parse(&["completion", "tcsh"]).is_err());
    }

    #[test]
    fn client_flags_go_before_or_after_the_command() {
        let before = parse(&["--endpoints", "a:1", "-o", "json", "get", "bank", "k"]).unwrap();
        let flags = before.client_flags();
        assert_eq!((flags.endpoints.as_str(), flags.output), ("a:1", Output::Json));
        let after = parse(&["get", "bank", "k", "--endpoints", "b:2", "--timeout", "1s", "--hex"]).unwrap();
        let flags = after.client_flags();
        assert_eq!(flags.endpoints, "b:2");
        assert_eq!(flags.timeout, Duration::from_secs(1));
        assert!(flags.hex);
        let both = parse(&["-o", "table", "keyspace", "list", "-o", "json", "--endpoints", "c:3"]).unwrap();
        let flags = both.client_flags();
        assert_eq!((flags.endpoints.as_str(), flags.output), ("c:3", Output::Json));
        assert!(parse(&["fault", "--endpoints", "d:4", "heal"]).is_ok());
    }

    #[test]
    fn node_takes_server_flags_only() {
        let node = [
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7001",
            "--http",
            "127.0.0.1:8001",
        ];
        let mut args = node.to_vec();
        args.extend(["--data-dir", "d", "--peers", "1=127.0.0.1:7001"]);
        assert!(parse(&args).is_ok());
        for flag in [["--endpoints", "a:1"], ["-o", "json"], ["--timeout", "1s"]] {
            let mut with = args.clone();
            with.extend(flag);
            assert!(parse(&with).is_err(), "node accepted {flag:?}");
        }
        let mut join = node.to_vec();
        join.extend(["--data-dir", "d", "--join", "127.0.0.1:7001"]);
        assert!(parse(&join).is_ok());
        let mut both = args.clone();
        both.extend(["--join", "127.0.0.1:7001"]);
        assert!(parse(&both).is_err(), "--peers and --join exclude each other");
        let mut neither = node.to_vec();
        neither.extend(["--data-dir", "d"]);
        assert!(parse(&neither).is_err(), "one of --peers and --join is required");
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("node").unwrap().render_long_help().to_string();
        assert!(help.contains("--peers"), "{help}");
        for client_flag in ["--endpoints", "--timeout", "--output", "--hex"] {
            assert!(!help.contains(client_flag), "node --help lists {client_flag}:\n{help}");
        }
    }
}
