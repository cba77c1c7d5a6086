//! `capkv bench`: a closed-loop load generator with HDR latency histograms and an SLO verdict.
//!
//! `concurrency` workers each keep exactly one request in flight: send, wait for the answer,
//! record its latency, send the next. Throughput is what the system sustains at that
//! concurrency, and latency includes no queueing inside the generator (closed loop, so no
//! coordinated-omission correction is needed for the numbers to mean what they say, but it also
//! means a slow system is offered less load — compare runs at equal concurrency).
//!
//! The generator talks to a [`Target`], so the same workload drives capkv (through
//! [`CapkvTarget`]) and, in `scripts/bench-vs-etcd.sh`, etcd: identical load for both.
//!
//! Workloads (`--op`): `put` writes random values over `--keys` keys; `get` reads them (after
//! a preload that writes every key once); `mixed` reads with probability `--read-ratio`, writes
//! otherwise; `cas` swaps a key from the value the worker last saw to a new one (each worker owns
//! its own keys, so a refused swap means the store lost or reordered a write and is counted
//! under `no`).
//!
//! CAVEATS: latencies are measured on the client, so they include the client's own scheduling;
//! on a 2-core machine the generator competes with the nodes for CPU (both systems equally so in
//! a side-by-side run). Failed requests are counted by exit class and left out of the latency
//! percentiles, but they count against `--slo`.

pub mod capkv;
pub mod slo;
mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Client;
use crate::error::Error;
use crate::proto;
pub use slo::{Slo, Verdict};
use workload::Answer;
pub use workload::{Op, Workload};

/// Highest latency the histograms record; slower requests are clamped to it.
const LATENCY_MAX_US: u64 = 120_000_000;

/// Times a preload put is sent before the run gives up.
pub const PRELOAD_ATTEMPTS: u32 = 5;

/// Something the generator can load: capkv, or etcd in the side-by-side script.
pub trait Target: Send + Sync + 'static {
    fn put(&self, key: &[u8], value: &[u8]) -> impl Future<Output = Result<(), Error>> + Send;
    /// Reads a key; `linearizable = false` asks for the serving node's local (possibly stale) copy.
    fn get(&self, key: &[u8], linearizable: bool) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;
    /// Writes `new` only when the key holds `expected`; `Ok(false)` when it did not.
    fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// capkv through its own client, on one keyspace.
pub struct CapkvTarget {
    client: Client,
    keyspace: String,
    /// The consistency asked for on reads when the workload wants linearizable reads.
    strong: proto::Consistency,
    /// Replicas that must store an ap write before it is acknowledged (1 for cp keyspaces).
    acks: u32,
}

impl CapkvTarget {
    /// `strong` is the read consistency used for linearizable reads (quorum on ap keyspaces);
    /// `acks` the replicas an ap write waits for.
    pub fn new(client: Client, keyspace: &str, strong: proto::Consistency, acks: u32) -> Self {
        Self {
            client,
            keyspace: keyspace.to_string(),
            strong,
            acks,
        }
    }
}

impl Target for CapkvTarget {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.client
            .put_acks(&self.keyspace, key, value, self.acks)
            .await
            .map(|_| ())
    }

    async fn get(&self, key: &[u8], linearizable: bool) -> Result<Option<Vec<u8>>, Error> {
        let consistency = if linearizable {
            self.strong
        } else {
            proto::Consistency::Serializable
        };
        let r = self.client.get(&self.keyspace, key, consistency).await?;
        Ok(r.found.then(|| r.kv.map(|kv| kv.value).unwrap_or_default()))
    }

    async fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<bool, Error> {
        let r = self.client.cas(&self.keyspace, key, Some(expected), new).await?;
        Ok(r.succeeded)
    }
}

/// Live counters a progress line can show while the run goes on.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run measured. Field names are stable: `capkv bench -o json` prints this.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was loaded; filled in by the caller (e.g. [`capkv::bench`]).
    pub keyspace: String,
    pub mode: String,
    pub consistency: String,
    pub connections: usize,
    pub op: Op,
    pub concurrency: usize,
    pub duration_s: f64,
    pub keys: u64,
    pub value_size: usize,
    pub read_ratio: f64,
    pub linearizable_reads: bool,
    /// Requests that succeeded.
    pub ops: u64,
    pub ops_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: Errors,
    /// Present when an objective was given.
    pub slo: Option<Verdict>,
}

/// Failed requests by exit class (the CLI's exit codes: `no` 1, `not_applied` 3,
/// `outcome_unknown` 4, `error` 5).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors {
    pub total: u64,
    pub by_class: BTreeMap<&'static str, u64>,
    /// One example message per class, so a failing run says why.
    pub examples: BTreeMap<&'static str, String>,
}

impl Errors {
    fn record(&mut self, class: &'static str, message: impl FnOnce() -> String) {
        self.total += 1;
        *self.by_class.entry(class).or_default() += 1;
        self.examples.entry(class).or_insert_with(message);
    }

    fn merge(&mut self, other: Errors) {
        self.total += other.total;
        for (class, n) in other.by_class {
            *self.by_class.entry(class).or_default() += n;
        }
        for (class, e) in other.examples {
            self.examples.entry(class).or_insert(e);
        }
    }
}

fn exit_class(e: &Error) -> &'static str {
    match e.exit_code() {
        1 => "no",
        3 => "not_applied",
        4 => "outcome_unknown",
        _ => "error",
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Writes every key once so reads and swaps find values. Runs `concurrency` writers; a put that
/// fails is sent again, up to [`PRELOAD_ATTEMPTS`] times.
pub async fn preload<T: Target>(targets: &[Arc<T>], workload: &Workload, concurrency: usize) -> Result<(), Error> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let target = targets[w % targets.len()].clone();
        let next = next.clone();
        let workload = workload.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= workload.keys {
                    return Ok::<(), Error>(());
                }
                let (key, value) = (workload.key(i), workload.initial_value(i));
                // A put is idempotent, so a refused or unanswered one is simply sent again.
                let mut attempt = 1;
                while let Err(e) = target.put(&key, &value).await {
                    if attempt == PRELOAD_ATTEMPTS || exit_class(&e) == "error" {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::Internal(format!("a preload task failed: {e}")))??;
    }
    Ok(())
}

/// Runs the workload for `duration` with `concurrency` workers spread over `targets`
/// (one connection each), then returns what was measured.
pub async fn run<T: Target>(
    targets: &[Arc<T>],
    workload: &Workload,
    concurrency: usize,
    duration: Duration,
    slo: Option<Slo>,
    progress: Arc<Progress>,
) -> Report {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let target = targets[w % targets.len()].clone();
        let mut worker = workload.worker(w, concurrency);
        let progress = progress.clone();
        tasks.spawn(async move {
            let mut latencies = new_histogram();
            let mut errors = Errors::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match worker.step(&*target).await {
                    Ok(Answer::Done) => {
                        let us = (sent.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
                        latencies
                            .record(us)
                            .expect("latency is clamped into the histogram's range");
                        progress.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Answer::No(why)) => {
                        errors.record("no", || why);
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.record(exit_class(&e), || e.to_string());
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = new_histogram();
    let mut errors = Errors::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((h, e)) => {
                latencies.add(h).expect("histograms share bounds");
                errors.merge(e);
            }
            Err(e) => errors.record("error", || format!("a worker task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1e3;
    let at = |q: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            ms(latencies.value_at_quantile(q))
        }
    };
    Report {
        keyspace: String::new(),
        mode: String::new(),
        consistency: String::new(),
        connections: targets.len(),
        op: workload.op,
        concurrency,
        duration_s: elapsed,
        keys: workload.keys,
        value_size: workload.value_size,
        read_ratio: workload.read_ratio,
        linearizable_reads: workload.linearizable,
        ops: latencies.len(),
        ops_per_s: latencies.len() as f64 / elapsed.max(1e-9),
        mean_ms: if latencies.is_empty() {
            0.0
        } else {
            latencies.mean() / 1e3
        },
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: if latencies.is_empty() { 0.0 } else { ms(latencies.max()) },
        slo: slo.map(|s| s.judge(&latencies, errors.total)),
        errors,
    }
}

#[cfg(test)]
mod tests;
