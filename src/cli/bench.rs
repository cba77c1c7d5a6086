//! `capkv bench`: flags, and the report rendered as a table or as JSON.

use std::time::Duration;

use clap::Args;

use serde::Serialize;

use super::kv::{consistency, ConsistencyArg};
use super::output::{table, View};
use super::{parse_duration, ClientFlags, ClientOverrides, Output};
use crate::error::Error;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    /// The keyspace to load (cp or ap); it must exist.
    #[arg(long)]
    pub keyspace: String,
    /// put, get, mixed (reads with probability --read-ratio) or cas.
    #[arg(long, default_value = "put")]
    pub op: crate::bench::Op,
    /// Requests in flight at once (one per worker, closed loop).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Client connections the workers share, spread over the endpoints.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Distinct keys, chosen uniformly at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per written value (at most 1 MiB).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// mixed only: share of requests that are reads, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Reads: the keyspace default when omitted (cp linearizable, ap the local replica).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// ap keyspaces: replicas that must store each write before it counts as done (as `put
    /// --acks`); cp writes always wait for a majority.
    #[arg(long, default_value_t = 1)]
    pub acks: u32,
    /// Latency objective LATENCY@PERCENT, e.g. 300ms@99.9; a missed objective exits 1.
    #[arg(long)]
    pub slo: Option<crate::bench::Slo>,
    /// Seed of the key and value choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The benchmark report: serialized as-is, drawn as a one-row table plus error and SLO lines.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct BenchView(pub crate::bench::Report);

pub async fn run(cli: &ClientFlags, args: &BenchArgs) -> Result<BenchView, Error> {
    if args.value_size > crate::limits::VALUE_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "--value-size {} is over the value limit of {} bytes",
            args.value_size,
            crate::limits::VALUE_BYTES_MAX
        )));
    }
    let options = crate::bench::capkv::Options {
        endpoints: crate::client::parse_endpoints(&cli.endpoints),
        token: cli.token.clone(),
        tls: cli.tls()?,
        timeout: cli.timeout,
        keyspace: args.keyspace.clone(),
        workload: crate::bench::Workload {
            op: args.op,
            keys: args.keys,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            linearizable: true,
            seed: args.seed,
        },
        consistency: args.consistency.map(|c| consistency(Some(c))),
        acks: args.acks,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        slo: args.slo,
        progress: cli.output == Output::Table && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    Ok(BenchView(crate::bench::capkv::bench(&options).await?))
}

impl View for BenchView {
    fn text(&self, _hex: bool) -> String {
        let r = &self.0;
        let mut t = table(&[
            "keyspace",
            "op",
            "concurrency",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "failed",
        ]);
        t.add_row(vec![
            format!("{} ({}, {})", r.keyspace, r.mode, r.consistency),
            r.op.to_string(),
            r.concurrency.to_string(),
            format!("{:.0}", r.ops_per_s),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p90_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}", r.p999_ms),
            format!("{:.2}", r.max_ms),
            r.errors.total.to_string(),
        ]);
        let mut text = t.to_string();
        for (class, n) in &r.errors.by_class {
            text.push_str(&format!("\nfailed ({class}): {n}, e.g. {}", r.errors.examples[class]));
        }
        if let Some(v) = &r.slo {
            text.push_str(&format!("\nSLO {}", v.sentence));
        }
        text
    }

    fn no(&self, _hex: bool) -> Option<String> {
        self.0
            .slo
            .as_ref()
            .filter(|v| !v.met)
            .map(|v| format!("SLO missed: {}", v.sentence))
    }
}
