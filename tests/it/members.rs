//! Membership at run time, as an operator does it with the CLI.
//!
//! - `a_node_joins_under_write_load_and_the_old_leader_leaves`: a 3-node cluster with cp and ap
//!   data takes a stream of writes while a 4th node starts with `--join`; the 4th node becomes
//!   a voter (`member list`: 4 voters) and ends up holding the earlier cp data (a serializable
//!   read of its own state machine; a bench first writes enough that the leader's log was
//!   purged below a snapshot, so the new node catches up from the snapshot) and ap data (its own replica, filled by anti-entropy). Then
//!   the leader is removed: writes continue through the others and `member list` shows 3.
//!   `cluster status` through one endpoint lists all four. Requests that cannot work (adding a
//!   member's id, removing a stranger) exit 5. Last, the
//!   new node is killed and restarted: it is still a member and serves writes.
//! - `cluster_up_starts_five_voters`: `cluster up --nodes 5` gives five voters, and a write
//!   through node 5 reads back through node 1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::harness::{free_ports, has_value, http_get, metric_value, poll_for, Client, Cluster};

/// A join includes catching up; on a loaded 2-core machine that can take a while.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Entries written before the join: twice the snapshot interval (500), so the leader's log is
/// purged below a snapshot by then.
const BENCH_ENTRIES_MIN: u64 = 1000;

/// The leader's `capkv_raft_purged_index` (0 while its log starts at the beginning).
fn purged_index(cluster: &Cluster) -> u64 {
    let leader = cluster.leader_id();
    http_get(&cluster.http_addr(leader), "/metrics")
        .ok()
        .and_then(|r| metric_value(&r.body, "capkv_raft_purged_index"))
        .unwrap_or(0.0) as u64
}

/// `member list -o json` through `client`: (id, role) of each member, or why not.
fn members(client: &Client) -> Result<Vec<(u64, String)>, String> {
    let out = client.run(&["member", "list"]);
    if out.code != 0 {
        return Err(out.describe());
    }
    let list = out.json_obj()["members"]
        .as_array()
        .ok_or_else(|| format!("no members array: {}", out.describe()))?;
    Ok(list
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

fn voters(client: &Client) -> Result<Vec<u64>, String> {
    Ok(members(client)?
        .into_iter()
        .filter(|(_, role)| role == "voter")
        .map(|(id, _)| id)
        .collect())
}

/// Writes `load-N` keys through `client` until `stop`; records each exit code.
fn spawn_writer(client: Client, codes: Arc<Mutex<Vec<i32>>>, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let out = client.put("bank", &format!("load-{n}"), &n.to_string());
            codes.lock().unwrap().push(out.code);
            n += 1;
        }
    })
}

#[test]
fn a_node_joins_under_write_load_and_the_old_leader_leaves() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.create_keyspace("cart", "ap");
    for i in 0..20 {
        client.put("bank", &format!("early-{i}"), &format!("v{i}")).ok_json();
    }
    client.put("cart", "item", "apple").ok_json();
    // Enough writes that the leader snapshots (every 500 entries) and purges its log below the
    // snapshot: the new node must catch up from a snapshot, not from the log alone.
    let mut ops = 0;
    for _ in 0..10 {
        let bench = client.run(&[
            "bench",
            "--keyspace",
            "bank",
            "--op",
            "put",
            "--concurrency",
            "8",
            "--duration",
            "2s",
            "--keys",
            "200",
        ]);
        ops += bench.ok_json()["ops"].as_u64().unwrap_or(0);
        if ops >= BENCH_ENTRIES_MIN && purged_index(&cluster) > 0 {
            break;
        }
    }
    assert!(ops >= BENCH_ENTRIES_MIN, "the bench wrote only {ops} entries");
    assert!(purged_index(&cluster) > 0, "the leader purged its log below a snapshot");

    let codes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client.clone(), Arc::clone(&codes), Arc::clone(&stop));

    let new = cluster.start_joining_node();
    poll_for(JOIN_TIMEOUT, "the joined node to be the 4th voter", || {
        cluster.assert_running();
        let v = voters(&client)?;
        if v == vec![1, 2, 3, new] {
            Ok(())
        } else {
            Err(format!("voters {v:?}"))
        }
    });
    let at_new = cluster.client_at(new);
    poll_for(JOIN_TIMEOUT, "the earlier cp data on the new node", || {
        let out = at_new.get_local("bank", "early-19");
        if has_value(&out, "v19") {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    poll_for(JOIN_TIMEOUT, "the earlier ap data on the new node", || {
        let out = at_new.get_local("cart", "item");
        if has_value(&out, "apple") {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    assert!(
        cluster.log_text(new).contains("installing a snapshot from the leader"),
        "node {new} caught up from a snapshot"
    );
    // `cluster status` through one endpoint lists every member the cluster knows.
    poll_for(
        Duration::from_secs(10),
        "cluster status via node 1 to list all four",
        || {
            let status = cluster.client_at(1).run(&["cluster", "status"]);
            let mut ids: Vec<u64> = status.ok_json()["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter_map(|n| n["id"].as_u64()).collect())
                .unwrap_or_default();
            ids.sort_unstable();
            if ids == vec![1, 2, 3, new] {
                Ok(())
            } else {
                Err(status.describe())
            }
        },
    );
    let during_join = codes.lock().unwrap().len();
    assert!(during_join > 0, "the writer ran while the node joined");

    // Requests that cannot work are refused as bad input, and change nothing.
    client
        .run(&["member", "add", "2", &cluster.endpoint(new)])
        .expect_error(5);
    client.run(&["member", "remove", "9"]).expect_error(5);
    assert_eq!(voters(&client).unwrap(), vec![1, 2, 3, new]);

    let old_leader = cluster.leader_id();
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old_leader).collect();
    let through_rest = cluster.client_of(&rest).with_timeout("10s");
    let removed = through_rest.run(&["member", "remove", &old_leader.to_string()]);
    let list: Vec<u64> = removed.ok_json()["members"]
        .as_array()
        .expect("the remove answers with the members")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert!(!list.contains(&old_leader), "{}", removed.describe());
    cluster.stop(old_leader);

    let leader = cluster.wait_for_leader_among(&rest, Duration::from_secs(30));
    assert_ne!(leader, old_leader);
    let written = through_rest.put_retrying("bank", "after-removal", "yes", Duration::from_secs(30));
    written.ok_json();
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer does not panic");
    let after = cluster.client_of(&rest);
    assert_eq!(
        voters(&after).unwrap(),
        rest,
        "member list shows the three that are left"
    );
    let codes = codes.lock().unwrap().clone();
    eprintln!(
        "[members] {} writes during the change, {} acknowledged, codes of the rest: {:?}",
        codes.len(),
        codes.iter().filter(|c| **c == 0).count(),
        codes.iter().filter(|c| **c != 0).collect::<Vec<_>>()
    );
    assert!(
        codes.iter().all(|c| [0, 3, 4].contains(c)),
        "writes fail only as not applied or unknown: {codes:?}"
    );
    poll_for(
        Duration::from_secs(10),
        "the write after the removal on the new node",
        || {
            let out = cluster.client_at(new).get_local("bank", "after-removal");
            if has_value(&out, "yes") {
                Ok(())
            } else {
                Err(out.describe())
            }
        },
    );

    // The joined node's membership is in its data dir: after a crash it serves as a member.
    cluster.kill9(new);
    cluster.restart(new);
    cluster.wait_for_leader_among(&rest, Duration::from_secs(30));
    let via_new = cluster.client_at(new).with_timeout("10s");
    via_new
        .put_retrying("bank", "via-restarted", "yes", Duration::from_secs(30))
        .ok_json();
    assert_eq!(voters(&via_new).unwrap(), rest);
}

/// `capkv member add` of a node that is not running runs out of time with exit 4: it was
/// proposed as a learner and stays one (the voters do not change). `member remove` takes such
/// a learner out again; and when the node does start later with `--join`, it finishes the add.
#[test]
fn an_add_before_the_node_runs_leaves_a_learner_that_remove_or_join_settles() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    let short = client.clone().with_timeout("2s");
    let learner_role = |id: u64| {
        poll_for(Duration::from_secs(10), &format!("node {id} listed"), || {
            let m = members(&client)?;
            match m.iter().find(|(member, _)| *member == id) {
                Some((_, role)) => Ok(role.clone()),
                None => Err(format!("members {m:?}")),
            }
        })
    };

    let nowhere = format!("127.0.0.1:{}", free_ports(1)[0]);
    short.run(&["member", "add", "5", &nowhere]).expect_error(4);
    assert_eq!(learner_role(5), "learner", "a node that never caught up does not vote");
    assert_eq!(voters(&client).unwrap(), vec![1, 2, 3]);
    client.run(&["member", "remove", "5"]).ok_json();
    let three: Vec<(u64, String)> = (1..=3).map(|id| (id, "voter".to_string())).collect();
    assert_eq!(members(&client).unwrap(), three);
    client.run(&["member", "remove", "5"]).expect_error(5);

    // The etcd order: `member add` first (it cannot finish: exit 4), then start the node.
    let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
    short.run(&["member", "add", "4", &listen]).expect_error(4);
    assert_eq!(learner_role(4), "learner");
    let new = cluster.start_joining_node_at(&listen);
    assert_eq!(new, 4);
    poll_for(JOIN_TIMEOUT, "the started node to be promoted to voter", || {
        cluster.assert_running();
        let v = voters(&client)?;
        if v == vec![1, 2, 3, 4] {
            Ok(())
        } else {
            Err(format!("voters {v:?}"))
        }
    });
}

/// `cluster up --nodes 5` as a user runs it: five voters, and a write through one node is read
/// through another.
#[test]
fn cluster_up_starts_five_voters() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = crate::harness::UpCluster::start_nodes(dir.path(), 5, &[]);
    let client = Client::new(cluster.endpoints());
    let members = client.run(&["member", "list", "-o", "json"]);
    let members = members.ok_json()["members"].as_array().expect("a member list").clone();
    assert_eq!(members.len(), 5, "{members:?}");
    assert!(members.iter().all(|m| m["role"] == "voter"), "{members:?}");
    client.create_keyspace("bank", "cp");
    Client::new(format!("127.0.0.1:{}", cluster.base + 4))
        .put("bank", "alice", "100")
        .expect_code(0);
    let got = Client::new(format!("127.0.0.1:{}", cluster.base)).get("bank", "alice");
    assert!(has_value(&got, "100"), "{}", got.describe());
}
