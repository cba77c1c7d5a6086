//! One test run, end to end: cluster, clients, nemesis, recovery, final reads, checks, files.
//!
//! 1. Start a fresh cluster in `<store>/<test>/<UTC time>/`, wait for a leader, create the
//!    keyspace `jepsen` in the run's mode (and open the bank's accounts).
//! 2. Drive `concurrency` client tasks (see [`crate::workload`]) for the time limit while the
//!    nemesis follows its seeded schedule ([`crate::nemesis`]), recording every start and stop in
//!    the history and in `fault_schedule`. A monitor samples leadership every
//!    [`LEADER_SAMPLE_MS`] ms (cp).
//! 3. Heal everything (restart killed nodes, resume paused ones, `fault heal`); wait for a leader
//!    all nodes agree on (cp) or until every node returns the same value for every key and
//!    reports the same key count (ap), timing it from the heal.
//! 4. Final reads of every key on every node: linearizable for cp (recorded in the history, so the
//!    linearizability check covers them), local for ap.
//! 5. Check, write `history.jsonl`, `results.json`, `report.html`.
//!
//! Partitions go through the run's layer ([`crate::layer`]): capkv's own fault filter
//! (`built-in`) or iptables rules in per-node network namespaces (`netns`); kill and pause are
//! signals and clock skew is capkv's fault API on both. `results.json` records the layer and why
//! it was chosen (`layer`, `layer_reason`).
//!
//! Caveats: the runner bounds itself ([`RECOVERY_TIMEOUT`], [`CONVERGENCE_TIMEOUT`]) rather than
//! waiting forever; an ap run that does not converge in time is reported as diverged. Leadership
//! samples are coarse ([`LEADER_SAMPLE_MS`]), so `time_without_leader_s` is accurate to that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use capkv::proto;
use capkv::Client;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::ap_register::{self, FinalRead};
use crate::cluster::{Cluster, NodeBinary};
use crate::fault::Fault;
use crate::history::{self, Kind, Op, Value, F, NEMESIS_PROCESS};
use crate::layer::Layer;
use crate::linearizability::{self, Validity};
use crate::nemesis::{self, NemesisKind, Window};
use crate::results::{
    round2, Anomaly, ApFigures, BankFigures, CpFigures, Mode, Results, ScheduledFault, SetFigures, StaleReads, FORMAT,
    PHASES_NOTE,
};
use crate::stats::{self, FaultWindow, FINAL_PROCESS_BASE};
use crate::workload::{self, ClientTask, Shared, Workload, KEYSPACE};
use crate::{bank, set};

/// Client timeout of the workload's clients: short, so a partition shows as fail/info quickly.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Timeout of the runner's own admin calls (fault commands, setup).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh cluster may take to elect a leader.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a cp cluster may take to agree on a leader after the final heal.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an ap cluster may take to converge after the final heal.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(45);
/// Leadership sampling interval.
pub const LEADER_SAMPLE_MS: u64 = 250;
/// A leader that heard from a quorum longer ago than this does not count as one.
const QUORUM_ACK_MS_MAX: i64 = 1_000;
/// Attempts of one final read before the key is reported unreadable.
const FINAL_READ_ATTEMPTS: u32 = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `cp` or `ap`.
    pub mode: &'static str,
    /// The workload.
    pub workload: Workload,
    /// The nemesis.
    pub nemesis: NemesisKind,
    /// Seconds of client traffic.
    pub time_limit_s: u64,
    /// The seed of the schedule, shapes and client choices.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Client tasks.
    pub concurrency: usize,
    /// Where runs are stored.
    pub store: PathBuf,
    /// How nodes are started.
    pub binary: NodeBinary,
    /// The fault layer (resolved; see [`crate::layer::resolve`]).
    pub layer: Layer,
    /// Why this layer (recorded in `results.json`).
    pub layer_reason: String,
}

impl RunOptions {
    /// The test's name, e.g. `cp-register-partition-halves`.
    pub fn test_name(&self) -> String {
        format!("{}-{}-{}", self.mode, self.workload.name(), self.nemesis.name())
    }

    /// Checks the combination before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = self.nemesis.refusal_on(self.mode, self.layer) {
            return Err(why);
        }
        if self.workload == Workload::Bank && self.mode != "cp" {
            return Err("the bank workload needs transactions, which only cp keyspaces offer; use --mode cp".into());
        }
        if self.nodes < 3 {
            return Err("--nodes must be at least 3 (a partition needs a majority and a minority)".into());
        }
        if self.concurrency == 0 || self.time_limit_s == 0 {
            return Err("--concurrency and --time-limit must be positive".into());
        }
        Ok(())
    }
}

/// A finished run.
pub struct RunOutcome {
    /// Its directory.
    pub dir: PathBuf,
    /// `results.json`.
    pub results: Results,
    /// The history.
    pub ops: Vec<Op>,
}

/// A fault that was applied, for results and undo.
#[derive(Clone, Debug)]
struct Applied {
    window: Window,
    fault: Fault,
    start_ns: u64,
    stop_ns: u64,
}

/// Formats a `SystemTime` as UTC `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e7).round() / 100.0
}

/// Per-node clients for status queries (no failover, short timeout).
struct Probes {
    ids: Vec<u64>,
    clients: Vec<Client>,
}

impl Probes {
    fn new(cluster: &Cluster, timeout: Duration) -> Result<Self, String> {
        let ids = cluster.ids();
        let clients = ids
            .iter()
            .map(|&id| Client::new(vec![cluster.endpoint(id)], timeout).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self { ids, clients })
    }

    fn client(&self, id: u64) -> &Client {
        &self.clients[self.ids.iter().position(|&i| i == id).expect("known node")]
    }

    async fn statuses(&self) -> Vec<Option<proto::StatusResponse>> {
        let calls = self.clients.iter().map(|c| async move { c.status_of(0).await.ok() });
        futures::future::join_all(calls).await
    }

    /// The leader most reachable nodes name, if any.
    async fn leader(&self) -> Option<u64> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for s in self.statuses().await.into_iter().flatten() {
            if s.leader_id != 0 {
                *votes.entry(s.leader_id).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
    }

    /// Whether some node leads with a recent quorum ack.
    async fn has_active_leader(&self) -> bool {
        self.statuses()
            .await
            .into_iter()
            .flatten()
            .any(|s| s.role == "leader" && (0..=QUORUM_ACK_MS_MAX).contains(&s.millis_since_quorum_ack.max(0)))
    }

    /// Whether every node answers and all name the same leader.
    async fn all_agree_on_leader(&self) -> bool {
        let statuses = self.statuses().await;
        let first = statuses.first().and_then(|s| s.as_ref()).map(|s| s.leader_id);
        first.is_some_and(|l| l != 0 && statuses.iter().all(|s| s.as_ref().map(|s| s.leader_id) == Some(l)))
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, capkv::Error>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => return Err(format!("{what}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn setup(opts: &RunOptions, admin: &Client, probes: &Probes) -> Result<(), String> {
    wait_until(STARTUP_TIMEOUT, || probes.all_agree_on_leader())
        .await
        .ok_or_else(|| format!("the cluster elected no leader within {} s", STARTUP_TIMEOUT.as_secs()))?;
    let mode = if opts.mode == "cp" {
        capkv::Mode::Cp
    } else {
        capkv::Mode::Ap
    };
    retry("creating the keyspace", Duration::from_secs(20), || async {
        match admin.create_keyspace(KEYSPACE, mode).await {
            Err(capkv::Error::AlreadyExists(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await?;
    // Every node must know the keyspace before clients start (metadata goes through Raft).
    for id in &probes.ids {
        let c = probes.client(*id);
        retry(
            "waiting for the keyspace on every node",
            Duration::from_secs(20),
            || async { c.describe_keyspace(KEYSPACE).await.map(|_| ()) },
        )
        .await?;
    }
    if opts.workload == Workload::Bank {
        retry("opening the bank accounts", Duration::from_secs(20), || {
            admin.txn(workload::open_accounts())
        })
        .await?;
    }
    Ok(())
}

async fn apply(fault: &Fault, cluster: &Cluster, admin: &Client) -> Result<(), String> {
    match fault {
        Fault::Partition { .. } | Fault::PartitionOneway { .. } if cluster.net().is_some() => {
            let net = cluster.net().expect("checked");
            tokio::task::block_in_place(|| net.partition(fault))
        }
        Fault::PartitionOneway { .. } => Err("a one-way partition needs the netns layer".into()),
        Fault::Partition { groups, .. } => retry("partition", ADMIN_TIMEOUT, || admin.fault_partition(groups.clone()))
            .await
            .map(|_| ()),
        Fault::Kill { node } => cluster.kill(*node),
        Fault::Pause { node } => cluster.pause(*node),
        Fault::ClockSkew { node, offset_ms } => {
            retry("clock skew", ADMIN_TIMEOUT, || admin.fault_clock(*node, *offset_ms))
                .await
                .map(|_| ())
        }
    }
}

async fn undo(fault: &Fault, cluster: &Cluster, admin: &Client) -> Result<(), String> {
    match fault {
        Fault::Partition { .. } | Fault::PartitionOneway { .. } if cluster.net().is_some() => {
            let net = cluster.net().expect("checked");
            tokio::task::block_in_place(|| net.heal())
        }
        Fault::Partition { .. } | Fault::PartitionOneway { .. } => {
            retry("heal", ADMIN_TIMEOUT, || admin.fault_heal()).await.map(|_| ())
        }
        Fault::Kill { node } => cluster.spawn(*node),
        Fault::Pause { node } => cluster.resume(*node),
        Fault::ClockSkew { node, .. } => retry("clock reset", ADMIN_TIMEOUT, || admin.fault_clock(*node, 0))
            .await
            .map(|_| ()),
    }
}

fn nemesis_event(shared: &Shared, f: F, name: &str, detail: &str) {
    shared.record(
        NEMESIS_PROCESS,
        Kind::Info,
        f,
        name,
        Some(Value::single(detail)),
        None,
        None,
        None,
    );
}

async fn run_nemesis(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    admin: Arc<Client>,
    probes: Arc<Probes>,
    windows: Vec<Window>,
) -> Result<Vec<Applied>, String> {
    let mut applied = Vec::new();
    for window in windows {
        tokio::time::sleep_until((shared.t0 + Duration::from_millis(window.start_ms)).into()).await;
        let leader = probes.leader().await;
        let fault = nemesis::plan(window.kind, &probes.ids, window.seed, leader);
        apply(&fault, &cluster, &admin).await?;
        // The window opens once every node has the fault: operations invoked before that ran on
        // a whole network and must not count against availability during faults.
        let start_ns = shared.now_ns();
        nemesis_event(&shared, F::Start, window.kind.name(), &fault.detail());
        tokio::time::sleep_until((shared.t0 + Duration::from_millis(window.stop_ms)).into()).await;
        undo(&fault, &cluster, &admin).await?;
        let stop_ns = shared.now_ns();
        nemesis_event(&shared, F::Stop, window.kind.name(), &fault.detail());
        applied.push(Applied {
            window,
            fault,
            start_ns,
            stop_ns,
        });
    }
    Ok(applied)
}

async fn monitor_leader(probes: Arc<Probes>, shared: Arc<Shared>, until: Arc<Mutex<bool>>) -> (u64, u64) {
    let (mut samples, mut leaderless) = (0, 0);
    while !*until.lock().expect("monitor flag") {
        let tick = tokio::time::sleep(Duration::from_millis(LEADER_SAMPLE_MS));
        if Instant::now() < shared.deadline {
            samples += 1;
            if !probes.has_active_leader().await {
                leaderless += 1;
            }
        }
        tick.await;
    }
    (samples, leaderless)
}

/// Heals everything; returns the heal time (ns since start).
async fn final_heal(cluster: &Cluster, admin: &Client, shared: &Shared) -> Result<u64, String> {
    for id in cluster.ids() {
        if cluster.is_running(id) {
            let _ = cluster.resume(id);
        } else {
            cluster.spawn(id)?;
        }
    }
    if let Some(net) = cluster.net() {
        tokio::task::block_in_place(|| net.heal())?;
    }
    retry("final heal", Duration::from_secs(20), || admin.fault_heal()).await?;
    Ok(shared.now_ns())
}

/// Reads `key` on every node; `None` for a node that did not answer.
async fn local_values(probes: &Probes, key: &str) -> Vec<(u64, Option<proto::GetResponse>)> {
    let calls = probes.ids.iter().map(|&id| async move {
        let r = probes
            .client(id)
            .get(KEYSPACE, key.as_bytes(), proto::Consistency::Serializable)
            .await;
        (id, r.ok())
    });
    futures::future::join_all(calls).await
}

fn found_value(r: &proto::GetResponse) -> Option<String> {
    r.kv.as_ref()
        .filter(|_| r.found)
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// ap: polls until every node holds the same value for every key and the same key count.
async fn ap_converge(probes: &Probes, keys: &[String]) -> (Option<Duration>, Vec<FinalRead>) {
    let start = Instant::now();
    loop {
        let mut finals = Vec::new();
        let mut agree = true;
        for key in keys {
            let reads = local_values(probes, key).await;
            let first = reads[0].1.as_ref().map(found_value);
            agree &= reads
                .iter()
                .all(|(_, r)| r.as_ref().map(found_value) == first && r.is_some());
            for (node, r) in reads {
                let value = r.as_ref().and_then(found_value);
                let version = r
                    .as_ref()
                    .and_then(|r| r.kv.as_ref())
                    .and_then(|kv| kv.ap_version.as_ref());
                finals.push(FinalRead {
                    node,
                    key: key.clone(),
                    value,
                    version: version.map(workload::stamp),
                });
            }
        }
        if agree {
            let counts = futures::future::join_all(probes.clients.iter().map(|c| c.describe_keyspace(KEYSPACE))).await;
            let counts: Vec<Option<u64>> = counts.into_iter().map(|r| r.ok().map(|k| k.keys)).collect();
            if counts.iter().all(|c| c.is_some() && *c == counts[0]) {
                return (Some(start.elapsed()), finals);
            }
        }
        if start.elapsed() >= CONVERGENCE_TIMEOUT {
            return (None, finals);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// cp: a linearizable read of `key` on every node, recorded in the history.
async fn cp_final_reads(probes: &Probes, shared: &Shared, key: &str) -> Vec<(u64, Option<String>)> {
    let mut out = Vec::new();
    for &id in &probes.ids {
        let process = FINAL_PROCESS_BASE + id;
        for attempt in 0..FINAL_READ_ATTEMPTS {
            shared.record(process, Kind::Invoke, F::Read, key, None, Some(id), None, None);
            let r = probes
                .client(id)
                .get(KEYSPACE, key.as_bytes(), proto::Consistency::Linearizable)
                .await;
            match r {
                Ok(resp) => {
                    let v = found_value(&resp);
                    shared.record(
                        process,
                        Kind::Ok,
                        F::Read,
                        key,
                        v.clone().map(Value::Single),
                        Some(id),
                        None,
                        None,
                    );
                    out.push((id, v));
                    break;
                }
                Err(e) => {
                    shared.record(
                        process,
                        Kind::Fail,
                        F::Read,
                        key,
                        None,
                        Some(id),
                        None,
                        Some(e.to_string()),
                    );
                    if attempt + 1 < FINAL_READ_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
    }
    out
}

async fn bank_final_reads(cluster: &Cluster, shared: &Shared) {
    for id in cluster.ids() {
        let Ok(client) = Client::new(vec![cluster.endpoint(id)], ADMIN_TIMEOUT) else {
            continue;
        };
        let task = ClientTask {
            process: FINAL_PROCESS_BASE + id,
            node: id,
            client,
        };
        shared.record(
            task.process,
            Kind::Invoke,
            F::Read,
            bank::READ_KEY,
            None,
            Some(id),
            None,
            None,
        );
        match task.read_accounts().await {
            Ok(b) => shared.record(
                task.process,
                Kind::Ok,
                F::Read,
                bank::READ_KEY,
                Some(Value::single(bank::format_balances(&b))),
                Some(id),
                None,
                None,
            ),
            Err(e) => shared.record(
                task.process,
                Kind::Fail,
                F::Read,
                bank::READ_KEY,
                None,
                Some(id),
                None,
                Some(e.to_string()),
            ),
        };
    }
}

/// Runs one test. Errors are operational (the cluster did not start, a fault could not be set);
/// a failed check is an `Ok` outcome with `valid: false`.
pub async fn run(opts: &RunOptions) -> Result<RunOutcome, String> {
    opts.validate()?;
    let started_at = SystemTime::now();
    let dir = opts.store.join(opts.test_name()).join(utc(started_at).replace(':', ""));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    println!(
        "{}: seed {}, {} nodes, layer {} ({}), in {}",
        opts.test_name(),
        opts.seed,
        opts.nodes,
        opts.layer.name(),
        opts.layer_reason,
        dir.display()
    );
    let cluster = Arc::new(Cluster::start(&dir, opts.nodes, opts.binary.clone(), opts.layer)?);
    if let Some(net) = cluster.net() {
        if !net.leftovers.is_empty() {
            println!("removed leftovers of an earlier run: {}", net.leftovers.join(", "));
        }
        println!(
            "netns: bridge {} ({}), nodes {}",
            net.bridge(),
            net.bridge_ip(),
            cluster
                .ids()
                .iter()
                .map(|&id| format!("{}={}", net.ns(id), cluster.endpoint(id)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let endpoints: Vec<String> = cluster.ids().iter().map(|&id| cluster.endpoint(id)).collect();
    let admin = Arc::new(Client::new(endpoints, ADMIN_TIMEOUT).map_err(|e| e.to_string())?);
    let probes = Arc::new(Probes::new(&cluster, Duration::from_millis(500))?);
    let final_probes = Probes::new(&cluster, ADMIN_TIMEOUT)?;
    setup(opts, &admin, &probes).await?;

    let time_limit = Duration::from_secs(opts.time_limit_s);
    let shared = Arc::new(Shared::new(
        opts.mode,
        opts.workload,
        opts.concurrency as u64,
        time_limit,
    ));
    let windows = nemesis::schedule(opts.nemesis, opts.mode, time_limit.as_millis() as u64, opts.seed);
    let nemesis_task = tokio::spawn(run_nemesis(
        shared.clone(),
        cluster.clone(),
        admin.clone(),
        probes.clone(),
        windows,
    ));
    let stop_monitor = Arc::new(Mutex::new(false));
    let monitor = tokio::spawn(monitor_leader(probes.clone(), shared.clone(), stop_monitor.clone()));
    let mut clients = Vec::new();
    for w in 0..opts.concurrency {
        let node = cluster.ids()[w % opts.nodes];
        let client = Client::new(vec![cluster.endpoint(node)], CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
        let task = ClientTask {
            process: w as u64,
            node,
            client,
        };
        let rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(1_000_003).wrapping_add(w as u64));
        clients.push(tokio::spawn(workload::drive(shared.clone(), task, rng)));
    }
    for c in clients {
        c.await.map_err(|e| format!("a client task failed: {e}"))?;
    }
    let applied = nemesis_task.await.map_err(|e| format!("the nemesis failed: {e}"))??;
    let heal_ns = final_heal(&cluster, &admin, &shared).await?;
    println!("healed at {:.1} s; waiting for recovery", secs(heal_ns));

    let mut facts = Facts {
        heal_ns,
        applied,
        ..Facts::default()
    };
    if opts.mode == "cp" {
        facts.recovery = wait_until(RECOVERY_TIMEOUT, || probes.all_agree_on_leader()).await;
    }
    *stop_monitor.lock().expect("monitor flag") = true;
    let (samples, leaderless) = monitor.await.map_err(|e| format!("the leader monitor failed: {e}"))?;
    facts.leaderless_s = (samples > 0).then(|| leaderless as f64 * LEADER_SAMPLE_MS as f64 / 1000.0);

    let keys: Vec<String> = match opts.workload {
        Workload::Register => shared.register_keys(),
        Workload::Set => vec![workload::SET_KEY.to_owned()],
        Workload::Bank => Vec::new(),
    };
    if opts.mode == "ap" {
        let (converged, finals) = ap_converge(&final_probes, &keys).await;
        facts.convergence = converged;
        facts.ap_finals = finals;
    } else if opts.workload == Workload::Bank {
        bank_final_reads(&cluster, &shared).await;
    } else {
        for key in &keys {
            let reads = cp_final_reads(&final_probes, &shared, key).await;
            facts.cp_finals.insert(key.clone(), reads);
        }
    }
    cluster.stop_all();
    let ops = shared.history();
    let results = check_and_summarize(opts, &shared, &ops, &facts, started_at);
    write_outputs(&dir, &results, &ops)?;
    Ok(RunOutcome { dir, results, ops })
}

/// Everything measured outside the history.
#[derive(Default)]
struct Facts {
    heal_ns: u64,
    applied: Vec<Applied>,
    recovery: Option<Duration>,
    leaderless_s: Option<f64>,
    convergence: Option<Duration>,
    ap_finals: Vec<FinalRead>,
    cp_finals: BTreeMap<String, Vec<(u64, Option<String>)>>,
}

fn fault_windows(applied: &[Applied]) -> Vec<FaultWindow> {
    applied
        .iter()
        .map(|a| {
            let (majority, minority) = a.fault.sides();
            FaultWindow {
                start_ns: a.start_ns,
                stop_ns: a.stop_ns,
                majority,
                minority,
            }
        })
        .collect()
}

fn linearizability_anomalies(ops: &[Op]) -> (Validity, Vec<Anomaly>) {
    let register: Vec<Op> = ops
        .iter()
        .filter(|o| matches!(o.f, F::Read | F::Write | F::Cas))
        .cloned()
        .collect();
    let paired = match crate::pairing::operations(&register) {
        Ok(p) => p,
        Err(e) => {
            return (
                Validity::Invalid,
                vec![Anomaly::new("malformed-history", "", e.to_string(), Vec::new())],
            )
        }
    };
    let verdict = linearizability::check(&paired);
    let mut anomalies = Vec::new();
    for (key, kv) in &verdict.keys {
        match kv.valid {
            Validity::Valid => {}
            Validity::Unknown => anomalies.push(Anomaly::new(
                "linearizability-unknown",
                key,
                kv.note.clone().unwrap_or_else(|| "search budget exhausted".into()),
                Vec::new(),
            )),
            Validity::Invalid => {
                let ce = kv.counterexample.as_ref();
                let mut idx: Vec<u64> = Vec::new();
                let mut detail = String::from("no linearization exists");
                if let Some(ce) = ce {
                    for l in &ce.prefix {
                        idx.extend([Some(l.op.call), l.op.ret].into_iter().flatten());
                    }
                    for b in &ce.blocked {
                        idx.extend([Some(b.op.call), b.op.ret].into_iter().flatten());
                    }
                    let blocked: Vec<String> = ce.blocked.iter().map(|b| format!("{} ({})", b.op, b.reason)).collect();
                    detail = format!(
                        "longest linearizable prefix: {} ops, leaving the register at {}; none of these can go next: {}",
                        ce.prefix.len(),
                        history::show_value(ce.state.as_deref()),
                        blocked.join("; ")
                    );
                }
                idx.sort_unstable();
                idx.dedup();
                let tail = idx.len().saturating_sub(crate::results::ANOMALY_OPS_MAX);
                anomalies.push(Anomaly::new("linearizability", key, detail, idx.split_off(tail)));
            }
        }
    }
    (verdict.valid, anomalies)
}

fn round_secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| round2(d.as_secs_f64()))
}

fn check_and_summarize(
    opts: &RunOptions,
    shared: &Shared,
    ops: &[Op],
    facts: &Facts,
    started_at: SystemTime,
) -> Results {
    let windows = fault_windows(&facts.applied);
    let during = |t: u64| stats::window_at(t, &windows).is_some();
    let mut anomalies: Vec<Anomaly> = Vec::new();
    let mut verdict = Validity::Valid;
    let (mut cp, mut ap, mut set_figures, mut bank_figures) = (None, None, None, None);
    let (mut final_reads_missing_keys, mut stale_read_examples) = (None, None);
    if opts.mode == "cp" {
        cp = Some(CpFigures {
            time_without_leader_s: facts.leaderless_s,
            recovery_after_heal_s: round_secs(facts.recovery),
        });
        if facts.recovery.is_none() {
            verdict = Validity::Invalid;
            anomalies.push(Anomaly::new(
                "no-recovery",
                "",
                "no leader agreed by every node after the final heal",
                Vec::new(),
            ));
        }
    }
    match (opts.workload, opts.mode) {
        (Workload::Register, "cp") => {
            let (v, a) = linearizability_anomalies(ops);
            verdict = worst(verdict, v);
            anomalies.extend(a);
            let unread = facts.cp_finals.iter().filter(|(_, r)| r.len() < opts.nodes).count();
            final_reads_missing_keys = Some(unread as u64);
        }
        (Workload::Register, _) => {
            let out = ap_register::check(ops, &shared.versions(), &facts.ap_finals, during);
            if !out.anomalies.is_empty() || facts.convergence.is_none() {
                verdict = Validity::Invalid;
            }
            if facts.convergence.is_none() && out.diverged_keys == 0 {
                anomalies.push(Anomaly::new(
                    "no-convergence",
                    "",
                    "key counts still differ across nodes",
                    Vec::new(),
                ));
            }
            anomalies.extend(out.anomalies);
            stale_read_examples = Some(out.stale_examples);
            ap = Some(ApFigures {
                convergence_s: round_secs(facts.convergence),
                stale_reads: Some(StaleReads {
                    during: out.stale_during,
                    outside: out.stale_outside,
                }),
                lww_lost_writes: out.lww_lost_writes,
                diverged_keys: out.diverged_keys,
            });
        }
        (Workload::Set, mode) => {
            let finals: Vec<(u64, Option<String>)> = if mode == "cp" {
                facts.cp_finals.get(workload::SET_KEY).cloned().unwrap_or_default()
            } else {
                facts.ap_finals.iter().map(|f| (f.node, f.value.clone())).collect()
            };
            let out = set::check(ops, workload::SET_KEY, &finals, mode == "cp");
            let diverged = finals.iter().any(|(_, v)| *v != finals[0].1) || finals.len() < opts.nodes;
            if diverged {
                anomalies.push(Anomaly::new(
                    "divergence",
                    workload::SET_KEY,
                    "final reads differ across nodes (or some failed)",
                    Vec::new(),
                ));
            }
            if !out.anomalies.is_empty() || diverged {
                verdict = Validity::Invalid;
            }
            anomalies.extend(out.anomalies);
            set_figures = Some(SetFigures {
                added: out.added,
                lost: out.lost,
                stale: out.stale,
                never_read: out.never_read,
            });
            if mode == "ap" {
                ap = Some(ApFigures {
                    convergence_s: round_secs(facts.convergence),
                    stale_reads: None,
                    lww_lost_writes: out.lost,
                    diverged_keys: u64::from(diverged),
                });
            }
        }
        (Workload::Bank, _) => {
            let total = workload::BANK_BALANCE * workload::BANK_ACCOUNTS as i64;
            let out = bank::check(ops, workload::BANK_ACCOUNTS, total);
            if !out.anomalies.is_empty() {
                verdict = Validity::Invalid;
            }
            anomalies.extend(out.anomalies);
            bank_figures = Some(BankFigures {
                reads: out.reads,
                bad_totals: out.bad_totals,
                negative_balances: out.negative_balances,
                accounts: workload::BANK_ACCOUNTS,
                total,
            });
        }
    }
    let (op_counts, ops_by_node) = stats::op_counts(ops, &windows);
    let fault_schedule = facts
        .applied
        .iter()
        .map(|a| {
            let (majority, minority) = a.fault.sides();
            ScheduledFault {
                nemesis: a.window.kind.name().to_owned(),
                start_s: secs(a.start_ns),
                stop_s: secs(a.stop_ns),
                detail: a.fault.detail(),
                majority,
                minority,
            }
        })
        .collect();
    Results {
        format: FORMAT.to_owned(),
        test: opts.test_name(),
        mode: Mode::parse(opts.mode).expect("validated mode"),
        workload: opts.workload.name().to_owned(),
        nemesis: opts.nemesis.name().to_owned(),
        layer: opts.layer.name().to_owned(),
        layer_reason: opts.layer_reason.clone(),
        nodes: opts.nodes,
        seed: opts.seed,
        time_limit_s: opts.time_limit_s,
        concurrency: opts.concurrency,
        git_revision: git_revision(),
        started_at: utc(started_at),
        duration_s: (started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0) * 10.0).round() / 10.0,
        valid: verdict == Validity::Valid,
        verdict,
        anomalies,
        fault_schedule,
        heal_s: secs(facts.heal_ns),
        ops: op_counts,
        ops_by_node,
        availability: stats::availability(ops, &windows),
        latency_ms: stats::latency(ops, &windows),
        cp,
        ap,
        set: set_figures,
        bank: bank_figures,
        phases: PHASES_NOTE.to_owned(),
        final_reads_missing_keys,
        stale_read_examples,
    }
}

fn worst(a: Validity, b: Validity) -> Validity {
    match (a, b) {
        (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
        (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
        _ => Validity::Valid,
    }
}

fn write_outputs(dir: &Path, results: &Results, ops: &[Op]) -> Result<(), String> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write("history.jsonl", history::to_jsonl(ops))?;
    write("results.json", results.to_json())?;
    write("report.html", crate::report::render_run_html(results, ops))?;
    Ok(())
}

fn show<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "null".to_owned(), |x| x.to_string())
}

/// A short human summary of a run's results.
pub fn summary(results: &Results) -> String {
    let mut s = format!(
        "{} seed {}: {} ({} anomalies)\n",
        results.test,
        results.seed,
        results.verdict.to_string().to_uppercase(),
        results.anomalies.len()
    );
    let a = &results.availability.during_faults;
    s += &format!(
        "  availability during faults: overall {} %, majority {} %, minority {} %\n",
        show(a.overall),
        show(a.majority),
        show(a.minority)
    );
    if let Some(cp) = &results.cp {
        s += &format!(
            "  cp: time without leader {} s, recovery after heal {} s\n",
            show(cp.time_without_leader_s),
            show(cp.recovery_after_heal_s)
        );
    }
    let json = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
    if let Some(ap) = &results.ap {
        s += &format!("  ap: {}\n", json(serde_json::to_string(ap)));
    }
    if let Some(set) = &results.set {
        s += &format!("  set: {}\n", json(serde_json::to_string(set)));
    }
    if let Some(bank) = &results.bank {
        s += &format!("  bank: {}\n", json(serde_json::to_string(bank)));
    }
    for a in results.anomalies.iter().take(5) {
        s += &format!("  anomaly {:?} on {:?}: {:?}\n", a.kind, a.key, a.detail);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(utc(t), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn worst_validity() {
        assert_eq!(worst(Validity::Valid, Validity::Unknown), Validity::Unknown);
        assert_eq!(worst(Validity::Invalid, Validity::Unknown), Validity::Invalid);
        assert_eq!(worst(Validity::Valid, Validity::Valid), Validity::Valid);
    }

    #[test]
    fn stale_read_in_history_becomes_a_linearizability_anomaly() {
        let mut r = history::Recorder::new();
        r.invoke_write(0, "k", "1");
        r.ok(0);
        r.invoke_write(0, "k", "2");
        r.ok(0);
        r.invoke_read(1, "k");
        r.ok_read(1, Some("1"));
        let mut ops = r.into_ops();
        ops.insert(
            0,
            Op {
                index: 0,
                time_ns: 0,
                process: NEMESIS_PROCESS,
                kind: Kind::Info,
                f: F::Start,
                key: "partition-halves".into(),
                value: Some(Value::single("partition {1,2} {3,4,5}")),
                node: None,
                succeeded: None,
                error: None,
            },
        );
        for (i, op) in ops.iter_mut().enumerate() {
            op.index = i as u64;
        }
        let (v, a) = linearizability_anomalies(&ops);
        assert_eq!(v, Validity::Invalid);
        assert_eq!(a[0].kind, "linearizability");
        assert!(a[0].ops.contains(&5), "{:?}", a[0]);
    }
}
