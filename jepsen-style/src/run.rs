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

use crate::ap_register::FinalRead;
use crate::bank;
use crate::cluster::Cluster;
use crate::fault::Fault;
use crate::history::{self, Kind, Op, Value, F, NEMESIS_PROCESS};
use crate::nemesis::{self, Window};
use crate::options::{utc, RunOptions};
use crate::results::Results;
use crate::stats::FINAL_PROCESS_BASE;
use crate::verdict::{check_and_summarize, secs, Applied, Facts};
use crate::workload::{self, ClientTask, Shared, Workload, KEYSPACE};

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

/// A finished run.
pub struct RunOutcome {
    /// Its directory.
    pub dir: PathBuf,
    /// `results.json`.
    pub results: Results,
    /// The history.
    pub ops: Vec<Op>,
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
        Fault::Replace { node } => {
            retry("member remove", ADMIN_TIMEOUT, || admin.member_remove(*node)).await?;
            cluster.kill(*node)?;
            cluster.wipe(*node)
        }
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
        Fault::Replace { node } => cluster.spawn_joining(*node),
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

fn write_outputs(dir: &Path, results: &Results, ops: &[Op]) -> Result<(), String> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write("history.jsonl", history::to_jsonl(ops))?;
    write("results.json", results.to_json())?;
    write("report.html", crate::report::render_run_html(results, ops))?;
    Ok(())
}
