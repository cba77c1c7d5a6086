//! The AP path on real processes: availability on both sides of a partition, convergence to the
//! last-writer-wins winner after the heal, durability across kill -9, deletes that stay deleted,
//! `--acks` and quorum reads, and the convergence time of 10,000 keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{expect_value, has_value, poll_for, wait_until, Client, Cluster, Output};

/// How long replicas may take to converge after a heal in these tests (anti-entropy runs every
/// second; hints are delivered on the same loop).
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// Liveness needs a moment to call a partitioned peer suspect.
const LIVENESS_SETTLE: Duration = Duration::from_millis(1500);

/// An ap write's version as a sortable tuple (physical ms, logical, node).
type WriteVersion = (u64, u64, u64);

fn version_of(out: &Output) -> WriteVersion {
    let v = &out.json_obj()["version"];
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no {name} in {}", out.describe()))
    };
    (field("physical_ms"), field("logical"), field("node"))
}

fn partition(cluster: &Cluster, a: &str, b: &str) {
    cluster.client().run(&["fault", "partition", a, b]).expect_code(0);
}

fn heal(cluster: &Cluster) {
    cluster.client().run(&["fault", "heal"]).expect_code(0);
}

/// The value the answering node's own replica holds (`None`: not found); panics on errors.
#[track_caller]
fn local_value(client: &Client, keyspace: &str, key: &str) -> Option<String> {
    try_local_value(client, keyspace, key).unwrap_or_else(|e| panic!("unexpected answer\n{e}"))
}

/// Like [`local_value`], but an error (e.g. a node still starting) is returned, for polling.
fn try_local_value(client: &Client, keyspace: &str, key: &str) -> Result<Option<String>, String> {
    let out = client.get(keyspace, key);
    match out.code {
        0 => Ok(out.str_field("value").map(str::to_string)),
        1 => Ok(None),
        _ => Err(out.describe()),
    }
}

#[test]
fn ap_tour() {
    let cluster = Cluster::start(3);
    let (n1, n2, n3) = (cluster.client_at(1), cluster.client_at(2), cluster.client_at(3));
    cluster.client().create_keyspace("carts", "ap");
    cluster.client().create_keyspace("bank", "cp");
    partition(&cluster, "1,2", "3");
    let book = n1.put("carts", "bob", "book");
    book.expect_code(0);
    let lamp = n3.put("carts", "bob", "lamp");
    lamp.expect_code(0);
    expect_value(&n3.get("carts", "bob"), "lamp");
    expect_value(&n1.get("carts", "bob"), "book");
    // Once node 3 knows it has no leader, it still describes an ap keyspace it knows (from its
    // own copy of the definition, which never changes); a cp keyspace's needs the leader.
    wait_until(CONVERGE_WITHIN, "node 3 to refuse describing a cp keyspace", || {
        n3.run(&["keyspace", "describe", "bank"]).code == 3
    });
    let carts = n3.run(&["keyspace", "describe", "carts"]);
    assert_eq!(carts.ok_json()["mode"], "ap", "{}", carts.describe());
    assert_eq!(carts.ok_json()["keys"], 1, "node 3's own replica");
    heal(&cluster);
    let winner = if version_of(&lamp) > version_of(&book) {
        "lamp"
    } else {
        "book"
    };
    for client in [&n1, &n2, &n3] {
        wait_until(CONVERGE_WITHIN, "every node to answer the LWW winner", || {
            has_value(&client.get("carts", "bob"), winner)
        });
    }
    let cas = cluster.client().run(&["cas", "carts", "bob", "--expect", winner, "x"]);
    cas.expect_error(3);
    assert!(
        cas.stderr
            .contains("compare-and-swap needs a cp keyspace; 'carts' is ap"),
        "{}",
        cas.describe()
    );
    cluster
        .client()
        .run(&["get", "carts", "bob", "--consistency", "linearizable"])
        .expect_error(3);
    let status = cluster.client().run(&["cluster", "status"]);
    for node in status.ok_json()["nodes"].as_array().expect("a node list") {
        let peers = node["peers"].as_array().unwrap_or_else(|| panic!("no peers in {node}"));
        assert_eq!(peers.len(), 2, "each node reports its two peers: {node}");
    }
}

#[test]
fn ap_both_sides_stay_available_and_converge_to_the_lww_winner() {
    let cluster = Cluster::start(3);
    cluster.client().create_keyspace("carts", "ap");
    partition(&cluster, "1,2", "3");
    let sides = [
        (cluster.client_at(1), "left"),
        (cluster.client_at(2), "left"),
        (cluster.client_at(3), "right"),
    ];
    let mut acknowledged: BTreeMap<String, Vec<(WriteVersion, String)>> = BTreeMap::new();
    let (mut attempts, mut ok) = (0, 0);
    for i in 0..30 {
        let (client, side) = &sides[i % 3];
        let key = format!("item{}", i % 6);
        let value = format!("{side}-{i}");
        let out = client.put("carts", &key, &value);
        attempts += 1;
        if out.code == 0 {
            ok += 1;
            acknowledged.entry(key).or_default().push((version_of(&out), value));
        }
    }
    println!("availability during the partition: {ok}/{attempts} writes acknowledged");
    assert_eq!(
        ok, attempts,
        "an ap keyspace accepts every write on both sides of a partition"
    );
    heal(&cluster);
    let started = Instant::now();
    let mut losses = 0;
    for (key, writes) in &acknowledged {
        let (_, winner) = writes.iter().max().expect("at least one write");
        losses += writes.len() - 1;
        for id in cluster.ids() {
            let client = cluster.client_at(id);
            wait_until(CONVERGE_WITHIN, &format!("node {id} to hold {key}={winner}"), || {
                local_value(&client, "carts", key).as_deref() == Some(winner.as_str())
            });
        }
    }
    println!(
        "converged in {:?}; {losses} acknowledged writes lost to last-writer-wins (overwritten by newer ones)",
        started.elapsed()
    );
}

#[test]
fn ap_kill9_loses_no_acknowledged_write_and_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3);
    cluster.client().create_keyspace("carts", "ap");
    // Only node 1 takes these writes: it is alone, so its disk is the only copy.
    partition(&cluster, "1", "2,3");
    let n1 = cluster.client_at(1);
    for i in 0..10 {
        n1.put("carts", &format!("alone{i}"), &format!("v{i}")).expect_code(0);
    }
    cluster.kill9(1);
    cluster.restart(1);
    let n1 = cluster.client_at(1).with_timeout("10s");
    for i in 0..10 {
        let key = format!("alone{i}");
        let out = poll_for(Duration::from_secs(20), "node 1 to answer after its restart", || {
            let out = n1.get("carts", &key);
            if out.code == 0 || out.code == 1 {
                Ok(out)
            } else {
                Err(out.describe())
            }
        });
        expect_value(&out, &format!("v{i}"));
    }
    heal(&cluster);
    // Node 3 misses writes while it is down: hints and anti-entropy bring them when it returns.
    cluster.kill9(3);
    let n2 = cluster.client_at(2);
    for i in 0..20 {
        n2.put("carts", &format!("missed{i}"), &format!("m{i}")).expect_code(0);
    }
    cluster.restart(3);
    let n3 = cluster.client_at(3).with_timeout("10s");
    for (prefix, count, value) in [("missed", 20, "m"), ("alone", 10, "v")] {
        for i in 0..count {
            let key = format!("{prefix}{i}");
            wait_until(CONVERGE_WITHIN, &format!("restarted node 3 to hold {key}"), || {
                try_local_value(&n3, "carts", &key).ok().flatten().as_deref() == Some(format!("{value}{i}").as_str())
            });
        }
    }
}

#[test]
fn ap_delete_during_a_partition_does_not_come_back() {
    let cluster = Cluster::start(3);
    cluster.client().create_keyspace("carts", "ap");
    let n1 = cluster.client_at(1);
    n1.put("carts", "x", "1").expect_code(0);
    let n3 = cluster.client_at(3);
    wait_until(CONVERGE_WITHIN, "node 3 to receive x", || {
        local_value(&n3, "carts", "x").is_some()
    });
    partition(&cluster, "1,2", "3");
    n1.run(&["delete", "carts", "x"]).expect_code(0);
    assert_eq!(
        local_value(&n3, "carts", "x").as_deref(),
        Some("1"),
        "node 3 was cut off during the delete"
    );
    heal(&cluster);
    wait_until(CONVERGE_WITHIN, "the delete to reach node 3", || {
        local_value(&n3, "carts", "x").is_none()
    });
    // Several anti-entropy rounds later, the old value has not come back anywhere.
    std::thread::sleep(Duration::from_secs(3));
    for id in cluster.ids() {
        assert_eq!(
            local_value(&cluster.client_at(id), "carts", "x"),
            None,
            "x came back on node {id}"
        );
    }
    cluster.client_at(3).run(&["delete", "carts", "x"]).expect_code(1);
}

#[test]
fn ap_acks_and_quorum_reads_need_reachable_replicas() {
    let cluster = Cluster::start(3);
    cluster.client().create_keyspace("carts", "ap");
    partition(&cluster, "1,2", "3");
    std::thread::sleep(LIVENESS_SETTLE);
    let (n1, n3) = (cluster.client_at(1), cluster.client_at(3));
    let refused = n3.run(&["put", "carts", "k", "v", "--acks", "2"]);
    refused.expect_error(3);
    assert!(refused.stderr.contains("nothing was written"), "{}", refused.describe());
    n3.get("carts", "k").expect_code(1);
    n1.run(&["put", "carts", "k", "v2", "--acks", "2"]).expect_code(0);
    assert_eq!(
        local_value(&cluster.client_at(2), "carts", "k").as_deref(),
        Some("v2"),
        "--acks 2 answered only after a second replica stored the write"
    );
    n1.run(&["put", "carts", "k", "v3", "--acks", "3"]).expect_error(3);
    n1.run(&["put", "carts", "k", "v4", "--acks", "4"]).expect_error(5);
    n3.run(&["get", "carts", "k", "--consistency", "quorum"])
        .expect_error(3);
    expect_value(&n1.run(&["get", "carts", "k", "--consistency", "quorum"]), "v2");
}

#[test]
fn ap_ten_thousand_keys_converge_after_a_partition() {
    const KEYS: usize = 10_000;
    const WRITERS: usize = 16;
    let cluster = Cluster::start(3);
    cluster.client().create_keyspace("carts", "ap");
    partition(&cluster, "1,2", "3");
    std::thread::sleep(LIVENESS_SETTLE);
    let endpoint = cluster.endpoint(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let written = Instant::now();
    runtime.block_on(async {
        let client = std::sync::Arc::new(capkv::Client::new(vec![endpoint], Duration::from_secs(10)).unwrap());
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..KEYS).step_by(WRITERS) {
                    let key = format!("key{i:05}");
                    client
                        .put("carts", key.as_bytes(), b"v")
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.expect("a writer task");
        }
    });
    println!("wrote {KEYS} keys to node 3 alone in {:?}", written.elapsed());
    heal(&cluster);
    let healed = Instant::now();
    for id in cluster.ids() {
        let client = cluster.client_at(id);
        poll_for(
            Duration::from_secs(120),
            &format!("node {id} to hold all {KEYS} keys"),
            || {
                let out = client.run(&["keyspace", "describe", "carts"]);
                match out.json.as_ref().and_then(|j| j.get("keys")).and_then(Value::as_u64) {
                    Some(n) if n as usize == KEYS => Ok(()),
                    other => Err(format!("{other:?} keys")),
                }
            },
        );
    }
    println!(
        "{KEYS} keys converged on all 3 nodes {:?} after the heal",
        healed.elapsed()
    );
}
