//! `capkv-loadgen`: one closed-loop load generator that speaks both capkv's and etcd's API, so a
//! side-by-side comparison offers both systems exactly the same load (same workers, keys, values,
//! seeds, connections and histograms — the code in `capkv::bench`).
//!
//! `capkv-loadgen run --system etcd|capkv ...` runs one workload and prints its report as JSON;
//! `capkv-loadgen compare ...` runs the comparison matrix, interleaving the two systems round by
//! round, and prints the side-by-side table (`scripts/bench-vs-etcd.sh` starts both clusters and
//! calls it).
//!
//! CAVEATS: the generator shares the machine with both clusters (on a 2-core machine it takes a
//! large share of the CPU), which is why runs interleave and the table shows per-round ratios:
//! absolute figures move with the machine's load, ratios from neighbouring runs much less.

mod compare;
mod etcd;

/// The etcd v3 KV messages and client, generated from `proto/etcd.proto`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use std::sync::Arc;
use std::time::Duration;

use capkv::bench::{self, Op, Progress, Report, Workload};
use capkv::request::parse_duration;
use capkv::{proto, Error};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "capkv-loadgen",
    version,
    about = "Identical closed-loop load for capkv and etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one workload against one system and print the report as JSON.
    Run(RunArgs),
    /// Run the comparison matrix against both systems, interleaved, and print the table.
    Compare(compare::CompareArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Capkv,
    Etcd,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: System,
    /// HOST:PORT[,HOST:PORT...]: capkv nodes' or etcd members' client addresses.
    #[arg(long)]
    endpoints: String,
    /// capkv only: the keyspace to load (it must exist).
    #[arg(long, default_value = "bench")]
    keyspace: String,
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, default_value = "put")]
    op: Op,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Reads: linearizable (a ReadIndex round on both systems) or serializable (local copy).
    #[arg(long, value_enum, default_value = "linearizable")]
    consistency: Consistency,
    /// capkv ap keyspaces only: replicas each write waits for.
    #[arg(long, default_value_t = 1)]
    acks: u32,
}

/// The shape shared by every run of a comparison.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// How long to measure each run (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Client connections the workers share, spread over the endpoints.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

/// One run: which workload, at which concurrency, with which reads.
#[derive(Clone, Debug)]
pub struct Load {
    pub op: Op,
    pub concurrency: usize,
    pub linearizable: bool,
    /// capkv ap keyspaces: replicas each write waits for (etcd ignores it).
    pub acks: u32,
    pub args: LoadArgs,
}

impl Load {
    fn workload(&self) -> Workload {
        Workload {
            op: self.op,
            keys: self.args.keys,
            value_size: self.args.value_size,
            read_ratio: 0.5,
            linearizable: self.linearizable,
            seed: self.args.seed,
        }
    }
}

/// Loads capkv through `capkv::bench`, exactly as `capkv bench` does.
pub async fn run_capkv(endpoints: &[String], keyspace: &str, load: &Load) -> Result<Report, Error> {
    let options = bench::capkv::Options {
        endpoints: endpoints.to_vec(),
        token: None,
        tls: None,
        timeout: load.args.timeout,
        keyspace: keyspace.to_string(),
        workload: load.workload(),
        consistency: Some(if load.linearizable {
            proto::Consistency::Linearizable
        } else {
            proto::Consistency::Serializable
        }),
        acks: load.acks,
        concurrency: load.concurrency,
        connections: load.args.connections,
        duration: load.args.duration,
        slo: None,
        progress: false,
    };
    bench::capkv::bench(&options).await
}

/// Loads etcd with the same workers, preload and connection spread as [`run_capkv`].
pub async fn run_etcd(endpoints: &[String], load: &Load) -> Result<Report, Error> {
    let workload = load.workload();
    workload.validate(load.concurrency)?;
    if endpoints.is_empty() {
        return Err(Error::InvalidInput("no etcd endpoints given".into()));
    }
    let connections = load.args.connections.clamp(1, load.concurrency.max(1));
    let targets = (0..connections)
        .map(|c| etcd::EtcdTarget::new(&endpoints[c % endpoints.len()], load.args.timeout).map(Arc::new))
        .collect::<Result<Vec<_>, Error>>()?;
    if workload.needs_preload() {
        bench::preload(&targets, &workload, load.concurrency).await?;
    }
    let progress = Arc::new(Progress::default());
    let mut report = bench::run(
        &targets,
        &workload,
        load.concurrency,
        load.args.duration,
        None,
        progress,
    )
    .await;
    report.keyspace = "etcd".into();
    report.mode = "etcd".into();
    report.consistency = if load.linearizable {
        "linearizable"
    } else {
        "serializable"
    }
    .into();
    Ok(report)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => {
            let endpoints = capkv::client::parse_endpoints(&args.endpoints);
            let load = Load {
                op: args.op,
                concurrency: args.concurrency,
                linearizable: args.consistency == Consistency::Linearizable,
                acks: args.acks,
                args: args.load,
            };
            let report = match args.system {
                System::Capkv => run_capkv(&endpoints, &args.keyspace, &load).await,
                System::Etcd => run_etcd(&endpoints, &load).await,
            };
            report.map(|r| println!("{}", serde_json::to_string_pretty(&r).expect("a report serializes")))
        }
        Command::Compare(args) => compare::compare(&args).await,
    };
    if let Err(e) = outcome {
        eprintln!("capkv-loadgen: {e}");
        std::process::exit(e.exit_code());
    }
}
