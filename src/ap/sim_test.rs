//! Deterministic, seeded simulation of AP replication: in-memory network with drops, delays,
//! partitions and node restarts, virtual time, and the real replica code. Every seed must end
//! with all replicas equal and holding, for every key, the newest acknowledged write.
//!
//! A failing seed is printed; replay it with `CAPKV_SIM_SEED=<seed> cargo test sim_`.
//! `CAPKV_SIM_SEEDS=<n>` runs more seeds than the default.
//!
//! The deterministic unit tests of each mechanism use the test kit in `replica::testkit`
//! (same replica code, no randomness); this file is where faults are random.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::repair::Repair;
use super::replica::testkit::temp_store;
use super::replica::{Replica, ReplicaOptions, Request, Response, Transport, Unreachable};
use super::store::ApStore;
use super::version::{merge, Versioned};

const KEYSPACE: &str = "carts";

struct SimNet {
    nodes: RwLock<BTreeMap<u64, Arc<Replica<SimTransport>>>>,
    partition: RwLock<Vec<BTreeSet<u64>>>,
    down: RwLock<BTreeSet<u64>>,
    rng: Mutex<StdRng>,
    drop_percent: RwLock<u32>,
    /// Virtual time 0 of every node's wall clock (shared, so a restarted node's clock agrees).
    epoch: tokio::time::Instant,
}

impl SimNet {
    fn connected(&self, a: u64, b: u64) -> bool {
        let down = self.down.read().unwrap();
        if down.contains(&a) || down.contains(&b) {
            return false;
        }
        let groups = self.partition.read().unwrap();
        groups.is_empty() || groups.iter().any(|g| g.contains(&a) && g.contains(&b))
    }

    /// Whether one message is lost, and its delay.
    fn roll(&self, from: u64, to: u64) -> (bool, Duration) {
        let mut rng = self.rng.lock().unwrap();
        let dropped = rng.gen_range(0..100) < *self.drop_percent.read().unwrap();
        let delay = Duration::from_millis(rng.gen_range(1..20));
        (dropped || !self.connected(from, to), delay)
    }
}

#[derive(Clone)]
struct SimTransport {
    from: u64,
    net: Arc<SimNet>,
}

impl Transport for SimTransport {
    async fn call(&self, to: u64, request: Request, timeout: Duration) -> Result<Response, Unreachable> {
        let (lost, delay) = self.net.roll(self.from, to);
        if lost {
            tokio::time::sleep(timeout).await;
            return Err(Unreachable("lost".into()));
        }
        tokio::time::sleep(delay).await;
        let target = self
            .net
            .nodes
            .read()
            .unwrap()
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable("no such node".into()))?;
        let response = target
            .handle(self.from, request)
            .await
            .map_err(|e| Unreachable(e.to_string()))?;
        let (lost, delay) = self.net.roll(to, self.from);
        if lost {
            tokio::time::sleep(timeout).await;
            return Err(Unreachable("answer lost".into()));
        }
        tokio::time::sleep(delay).await;
        Ok(response)
    }
}

/// Short pushes, and hint queues so small that some writes a peer missed are not hinted but left
/// to anti-entropy (as when a real queue is full), so convergence needs both mechanisms.
fn options() -> ReplicaOptions {
    ReplicaOptions {
        push_timeout_ms: 200,
        hints_per_peer_max: 3,
        ..Default::default()
    }
}

fn replica(id: u64, ids: &[u64], store: ApStore, net: &Arc<SimNet>) -> Arc<Replica<SimTransport>> {
    replica_with(id, ids, store, net, options())
}

fn replica_with(
    id: u64,
    ids: &[u64],
    store: ApStore,
    net: &Arc<SimNet>,
    options: ReplicaOptions,
) -> Arc<Replica<SimTransport>> {
    let start = net.epoch;
    let wall = Arc::new(move || 1_700_000_000_000 + start.elapsed().as_millis() as u64);
    let transport = SimTransport {
        from: id,
        net: net.clone(),
    };
    Arc::new(
        Replica::new(id, ids.to_vec(), store, transport, wall, Default::default(), options).expect("valid options"),
    )
}

/// Runs one seeded scenario; returns a description of the divergence, if any.
async fn scenario(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.gen_range(3..=5u64);
    let ids: Vec<u64> = (1..=n).collect();
    let net = Arc::new(SimNet {
        nodes: RwLock::new(BTreeMap::new()),
        partition: RwLock::new(Vec::new()),
        down: RwLock::new(BTreeSet::new()),
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        drop_percent: RwLock::new(10),
        epoch: tokio::time::Instant::now(),
    });
    let mut stores = BTreeMap::new();
    for id in &ids {
        let store = temp_store();
        stores.insert(*id, store.clone());
        net.nodes.write().unwrap().insert(*id, replica(*id, &ids, store, &net));
    }
    let mut acknowledged: BTreeMap<Vec<u8>, Versioned> = BTreeMap::new();
    for _ in 0..120 {
        match rng.gen_range(0..100) {
            0..=79 => {
                let node = ids[rng.gen_range(0..ids.len())];
                if net.down.read().unwrap().contains(&node) {
                    continue;
                }
                let key = format!("k{}", rng.gen_range(0..8)).into_bytes();
                let value = (rng.gen_range(0..5) > 0).then(|| format!("v{}", rng.gen::<u16>()).into_bytes());
                let r = net.nodes.read().unwrap()[&node].clone();
                let deadline = std::time::Instant::now() + Duration::from_secs(3600);
                let written = r
                    .write(KEYSPACE, &key, value, 1, |_| true, deadline)
                    .await
                    .map_err(|e| e.to_string())?;
                let winner = match acknowledged.remove(&key) {
                    Some(previous) => merge(previous, written),
                    None => written,
                };
                acknowledged.insert(key, winner);
            }
            80..=87 => {
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.gen_range(0..=i));
                }
                let cut = rng.gen_range(1..shuffled.len());
                *net.partition.write().unwrap() = vec![
                    shuffled[..cut].iter().copied().collect(),
                    shuffled[cut..].iter().copied().collect(),
                ];
            }
            88..=91 => net.partition.write().unwrap().clear(),
            92..=95 => {
                // Restart a node: it keeps its disk, loses its memory (clock, sync state).
                let node = ids[rng.gen_range(0..ids.len())];
                let fresh = replica(node, &ids, stores[&node].clone(), &net);
                net.nodes.write().unwrap().insert(node, fresh);
            }
            _ => {
                let node = ids[rng.gen_range(0..ids.len())];
                let mut down = net.down.write().unwrap();
                if !down.remove(&node) {
                    down.insert(node);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
    }
    // Heal everything and let the nodes' repair rounds (hints, pipelined, then anti-entropy
    // with random peers, deferred while a peer delivers to us) run at the same time, as the
    // nodes' repair loops do, until the replicas agree.
    net.partition.write().unwrap().clear();
    net.down.write().unwrap().clear();
    *net.drop_percent.write().unwrap() = 0;
    let keyspaces = vec![KEYSPACE.to_string()];
    let nodes: Vec<_> = net.nodes.read().unwrap().values().cloned().collect();
    let mut repairs: Vec<(Repair<SimTransport>, StdRng)> = nodes
        .iter()
        .map(|r| (Repair::new(r.clone()), StdRng::seed_from_u64(seed ^ r.id)))
        .collect();
    for _round in 0..20 {
        let rounds = repairs
            .iter_mut()
            .map(|(repair, rng)| repair.round(&keyspaces, |_| true, rng));
        futures::future::join_all(rounds).await;
        if converged(&stores) {
            break;
        }
    }
    check(&stores, &acknowledged)
}

fn snapshot(store: &ApStore) -> BTreeMap<Vec<u8>, Versioned> {
    store
        .entries(KEYSPACE, None)
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.versioned))
        .collect()
}

fn converged(stores: &BTreeMap<u64, ApStore>) -> bool {
    let snapshots: Vec<_> = stores.values().map(snapshot).collect();
    snapshots.windows(2).all(|w| w[0] == w[1])
}

fn check(stores: &BTreeMap<u64, ApStore>, acknowledged: &BTreeMap<Vec<u8>, Versioned>) -> Result<(), String> {
    for (id, store) in stores {
        let got = snapshot(store);
        if &got != acknowledged {
            return Err(format!(
                "node {id} holds {got:?}, expected the newest acknowledged writes {acknowledged:?}"
            ));
        }
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("CAPKV_SIM_SEED") {
        return vec![seed.parse().expect("CAPKV_SIM_SEED is a number")];
    }
    let count = std::env::var("CAPKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    (0..count).collect()
}

#[test]
fn sim_replicas_converge_after_faults_for_every_seed() {
    for seed in seeds() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        if let Err(divergence) = runtime.block_on(scenario(seed)) {
            panic!("seed {seed} diverged (replay: CAPKV_SIM_SEED={seed} cargo test sim_): {divergence}");
        }
    }
}

/// Negative control: without anti-entropy and hints, the same faults leave replicas diverged,
/// so the convergence check above can fail.
#[test]
fn sim_without_repair_diverges() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let diverged = runtime.block_on(async {
        let net = Arc::new(SimNet {
            nodes: RwLock::new(BTreeMap::new()),
            partition: RwLock::new(vec![[1, 2].into(), [3].into()]),
            down: RwLock::new(BTreeSet::new()),
            rng: Mutex::new(StdRng::seed_from_u64(1)),
            drop_percent: RwLock::new(0),
            epoch: tokio::time::Instant::now(),
        });
        let ids = [1, 2, 3];
        let mut stores = BTreeMap::new();
        for id in ids {
            let store = temp_store();
            stores.insert(id, store.clone());
            net.nodes.write().unwrap().insert(id, replica(id, &ids, store, &net));
        }
        let one = net.nodes.read().unwrap()[&1].clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        one.write(KEYSPACE, b"bob", Some(b"book".to_vec()), 1, |p| p != 3, deadline)
            .await
            .unwrap();
        net.partition.write().unwrap().clear();
        !converged(&stores)
    });
    assert!(
        diverged,
        "a write made during a partition reached the cut-off node without any repair"
    );
}

/// Tombstones are collected only once every replica holds them, and then everywhere.
#[test]
fn sim_tombstones_are_collected_only_when_every_replica_has_them() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let ids = [1, 2, 3];
        let (net, stores) = eager_cluster(7, 0);
        let node = |id: u64| net.nodes.read().unwrap()[&id].clone();
        let far = std::time::Instant::now() + Duration::from_secs(3600);
        let keyspaces = vec![KEYSPACE.to_string()];
        node(1)
            .write(KEYSPACE, b"x", Some(b"1".to_vec()), 3, |_| true, far)
            .await
            .unwrap();
        *net.partition.write().unwrap() = vec![[1, 2].into(), [3].into()];
        node(1).write(KEYSPACE, b"x", None, 1, |p| p != 3, far).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for id in [1, 2] {
            node(id).anti_entropy_round(&node(id).peers(), &keyspaces).await;
            assert_eq!(
                node(id).collect_tombstones(KEYSPACE).unwrap(),
                0,
                "node {id} collected before node 3 had it"
            );
        }
        assert!(
            stores[&3]
                .get(KEYSPACE, b"x")
                .unwrap()
                .is_some_and(|v| !v.is_tombstone()),
            "node 3 missed the delete"
        );
        net.partition.write().unwrap().clear();
        for _ in 0..2 {
            for id in ids {
                node(id).anti_entropy_round(&node(id).peers(), &keyspaces).await;
            }
        }
        let collected: usize = ids
            .iter()
            .map(|id| node(*id).collect_tombstones(KEYSPACE).unwrap())
            .sum();
        assert!(
            collected >= 1,
            "once every replica holds the tombstone, it is collected"
        );
        for _ in 0..3 {
            for id in ids {
                node(id).anti_entropy_round(&node(id).peers(), &keyspaces).await;
                node(id).collect_tombstones(KEYSPACE).unwrap();
            }
        }
        for id in ids {
            assert_eq!(
                stores[&id].get(KEYSPACE, b"x").unwrap(),
                None,
                "node {id} still holds x (or got it back)"
            );
        }
    });
}

/// Three replicas with collection horizons short enough to cross in a few virtual
/// milliseconds, on a network that drops `drop_percent` of messages.
fn eager_cluster(seed: u64, drop_percent: u32) -> (Arc<SimNet>, BTreeMap<u64, ApStore>) {
    let net = Arc::new(SimNet {
        nodes: RwLock::new(BTreeMap::new()),
        partition: RwLock::new(Vec::new()),
        down: RwLock::new(BTreeSet::new()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        drop_percent: RwLock::new(drop_percent),
        epoch: tokio::time::Instant::now(),
    });
    let ids = [1, 2, 3];
    let eager = ReplicaOptions {
        hint_lifetime_ms: 0,
        tombstone_gc_after_ms: 2,
        max_clock_offset_ms: 1,
        ..options()
    };
    let mut stores = BTreeMap::new();
    for id in ids {
        let store = temp_store();
        stores.insert(id, store.clone());
        let replica = replica_with(id, &ids, store, &net, eager.clone());
        net.nodes.write().unwrap().insert(id, replica);
    }
    (net, stores)
}

/// One round of hint delivery and anti-entropy on each of `ids`, in order.
async fn repair_rounds(net: &SimNet, ids: &[u64], rounds: usize) {
    let keyspaces = vec![KEYSPACE.to_string()];
    for _ in 0..rounds {
        for id in ids {
            let r = net.nodes.read().unwrap()[id].clone();
            for peer in r.peers().to_vec() {
                let _ = r.deliver_hints(peer, 1000).await;
            }
            r.anti_entropy_round(&r.peers(), &keyspaces).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Fails if any of the replicas `ids` holds `key` as a live value.
fn nowhere_live(stores: &BTreeMap<u64, ApStore>, ids: &[u64], key: &[u8], when: &str) -> Result<(), String> {
    for (id, store) in stores.iter().filter(|(id, _)| ids.contains(id)) {
        if let Some(v) = store.get(KEYSPACE, key).unwrap() {
            if !v.is_tombstone() {
                return Err(format!("{when}: node {id} holds the deleted key live again: {v:?}"));
            }
        }
    }
    Ok(())
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// One node collects a tombstone while the others have not: anti-entropy and hint delivery do
/// not bring the tombstone (or the value it deleted) back to it.
async fn collect_on_one_node_only(seed: u64) -> Result<(), String> {
    let (net, stores) = eager_cluster(seed, 10);
    let node = |id: u64| net.nodes.read().unwrap()[&id].clone();
    let far = std::time::Instant::now() + Duration::from_secs(3600);
    *net.drop_percent.write().unwrap() = 0;
    node(2)
        .write(KEYSPACE, b"x", Some(b"old".to_vec()), 3, |_| true, far)
        .await
        .map_err(|e| e.to_string())?;
    node(3)
        .write(KEYSPACE, b"x", None, 3, |_| true, far)
        .await
        .map_err(|e| e.to_string())?;
    *net.drop_percent.write().unwrap() = 10;
    let mut collected = 0;
    for _ in 0..50 {
        repair_rounds(&net, &[1, 2, 3], 1).await;
        collected += node(1).collect_tombstones(KEYSPACE).map_err(|e| e.to_string())?;
        if collected > 0 {
            break;
        }
    }
    if collected != 1 {
        return Err(format!("node 1 never collected the tombstone (collected {collected})"));
    }
    if stores[&2].get(KEYSPACE, b"x").unwrap().is_none() {
        return Err("node 2 lost the tombstone without collecting".into());
    }
    // Nodes 2 and 3 still hold the tombstone and do not collect: repair runs on and on.
    for round in 0..20 {
        repair_rounds(&net, &[1, 2, 3], 1).await;
        if let Some(v) = stores[&1].get(KEYSPACE, b"x").unwrap() {
            return Err(format!("round {round}: node 1 took back {v:?} after collecting it"));
        }
        nowhere_live(&stores, &[1, 2, 3], b"x", &format!("round {round}"))?;
    }
    if node(1).stats.stale_refused.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return Err("the peers never offered the collected tombstone back".into());
    }
    // Then they collect too, and the replicas agree again.
    for _ in 0..50 {
        repair_rounds(&net, &[1, 2, 3], 1).await;
        for id in [2, 3] {
            node(id).collect_tombstones(KEYSPACE).map_err(|e| e.to_string())?;
        }
        if stores.values().all(|s| s.get(KEYSPACE, b"x").unwrap().is_none()) {
            return Ok(());
        }
    }
    Err("nodes 2 and 3 never collected the tombstone".into())
}

#[test]
fn sim_a_tombstone_collected_on_one_node_only_does_not_come_back() {
    for seed in 0..5 {
        let result = paused_runtime().block_on(collect_on_one_node_only(seed));
        assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
    }
}

/// A replica partitioned away through the whole collection window holds an older value of a
/// deleted key: nobody collects the tombstone while it is away, and after the heal the delete
/// wins on it and the key never comes back anywhere.
async fn partitioned_through_the_collection(seed: u64) -> Result<(), String> {
    let (net, stores) = eager_cluster(seed, 10);
    let node = |id: u64| net.nodes.read().unwrap()[&id].clone();
    let far = std::time::Instant::now() + Duration::from_secs(3600);
    *net.drop_percent.write().unwrap() = 0;
    node(1)
        .write(KEYSPACE, b"x", Some(b"old".to_vec()), 3, |_| true, far)
        .await
        .map_err(|e| e.to_string())?;
    repair_rounds(&net, &[1, 2, 3], 2).await;
    *net.drop_percent.write().unwrap() = 10;
    *net.partition.write().unwrap() = vec![[1, 2].into(), [3].into()];
    node(1)
        .write(KEYSPACE, b"x", None, 1, |p| p != 3, far)
        .await
        .map_err(|e| e.to_string())?;
    for round in 0..30 {
        repair_rounds(&net, &[1, 2, 3], 1).await;
        for id in [1, 2, 3] {
            if node(id).collect_tombstones(KEYSPACE).map_err(|e| e.to_string())? > 0 {
                return Err(format!("round {round}: node {id} collected while node 3 was away"));
            }
        }
    }
    net.partition.write().unwrap().clear();
    for round in 0..60 {
        repair_rounds(&net, &[1, 2, 3], 1).await;
        for id in [1, 2, 3] {
            node(id).collect_tombstones(KEYSPACE).map_err(|e| e.to_string())?;
        }
        // Node 3 holds the old value until repair reaches it; the others never again.
        nowhere_live(&stores, &[1, 2], b"x", &format!("round {round} after the heal"))?;
        if stores.values().all(|s| s.get(KEYSPACE, b"x").unwrap().is_none()) {
            return Ok(());
        }
    }
    Err("the tombstone was never collected after the heal".into())
}

#[test]
fn sim_a_replica_partitioned_through_the_collection_does_not_resurrect_the_key() {
    for seed in 0..5 {
        let result = paused_runtime().block_on(partitioned_through_the_collection(seed));
        assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
    }
}
