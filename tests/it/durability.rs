//! Acknowledged means durable: kill -9, full restarts and a node that falls behind the log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{expect_value, has_value, http_get, metric_value, poll_for, Client, Cluster};

/// What happened to one write.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// Exit 0: acknowledged, so it must survive.
    Acked,
    /// Exit 4: may or may not have happened.
    Unknown,
    /// Exit 3: definitely not applied.
    Refused,
    /// Anything else (recorded with its exit code).
    Other(i32),
}

#[derive(Default)]
struct History {
    /// key index -> (outcome, when it finished)
    writes: BTreeMap<u64, (Outcome, Instant)>,
    unexpected: Vec<String>,
}

impl History {
    fn count(&self, outcome: Outcome) -> usize {
        self.writes.values().filter(|(o, _)| *o == outcome).count()
    }

    fn acked_after(&self, t: Instant) -> usize {
        self.writes
            .values()
            .filter(|(o, at)| *o == Outcome::Acked && *at > t)
            .count()
    }
}

/// Reads `keys` (in a few parallel threads) and returns, per key, the last output seen.
/// A read that answers 3/4 is retried a few times: this checks data, not availability.
fn read_all(client: &Client, keyspace: &str, keys: &[u64]) -> Vec<(u64, crate::harness::Output)> {
    let chunks: Vec<Vec<u64>> = keys
        .chunks(keys.len().div_ceil(3).max(1))
        .map(<[u64]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let client = client.clone();
            let keyspace = keyspace.to_string();
            thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|n| {
                        let key = format!("k{n}");
                        let mut out = client.get(&keyspace, &key);
                        for _ in 0..5 {
                            if out.code != 3 && out.code != 4 {
                                break;
                            }
                            thread::sleep(Duration::from_millis(300));
                            out = client.get(&keyspace, &key);
                        }
                        (n, out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("reader thread"))
        .collect()
}

#[test]
fn kill_leader_during_writes_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let all = cluster.client();
    all.create_keyspace("bank", "cp");
    let leader = cluster.leader_id();

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = all.clone().with_timeout("3s");
        let history = Arc::clone(&history);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let hard_stop = Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                let out = client.put("bank", &format!("k{n}"), &n.to_string());
                let outcome = match out.code {
                    0 => Outcome::Acked,
                    3 => Outcome::Refused,
                    4 => Outcome::Unknown,
                    c => Outcome::Other(c),
                };
                let mut h = history.lock().unwrap();
                if let Outcome::Other(_) = outcome {
                    h.unexpected.push(out.describe());
                }
                h.writes.insert(n, (outcome, Instant::now()));
                drop(h);
                n += 1;
            }
        })
    };
    let acked = || history.lock().unwrap().count(Outcome::Acked);

    poll_for(Duration::from_secs(10), "20 acknowledged writes", || {
        let a = acked();
        if a >= 20 {
            Ok(())
        } else {
            Err(format!("{a} acknowledged"))
        }
    });
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let survivors: Vec<u64> = cluster.running_ids();
    let new_leader = cluster.wait_for_leader_among(&survivors, Duration::from_secs(20));
    println!(
        "killed leader {leader}; node {new_leader} leads after {:?}",
        killed_at.elapsed()
    );
    poll_for(
        Duration::from_secs(15),
        "writes to be acknowledged again after the leader was killed",
        || {
            let a = history.lock().unwrap().acked_after(killed_at);
            if a >= 5 {
                Ok(())
            } else {
                Err(format!("{a} acknowledged since the kill"))
            }
        },
    );
    cluster.restart(leader);
    let restarted_at = Instant::now();
    // Keep writing while the old leader rejoins and catches up.
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");

    let h = history.lock().unwrap();
    let acked_keys: Vec<u64> = h
        .writes
        .iter()
        .filter(|(_, (o, _))| *o == Outcome::Acked)
        .map(|(n, _)| *n)
        .collect();
    let unknown_keys: Vec<u64> = h
        .writes
        .iter()
        .filter(|(_, (o, _))| *o == Outcome::Unknown)
        .map(|(n, _)| *n)
        .collect();
    let refused_keys: Vec<u64> = h
        .writes
        .iter()
        .filter(|(_, (o, _))| *o == Outcome::Refused)
        .map(|(n, _)| *n)
        .collect();
    println!(
        "writes: {} attempted, {} acknowledged ({} after the kill, {} after the restart), \
         {} unknown (exit 4), {} refused (exit 3), {} other",
        h.writes.len(),
        acked_keys.len(),
        h.acked_after(killed_at),
        h.acked_after(restarted_at),
        unknown_keys.len(),
        refused_keys.len(),
        h.unexpected.len()
    );
    assert!(
        h.unexpected.is_empty(),
        "writes ended with unexpected exit codes:\n{}",
        h.unexpected.join("\n---\n")
    );
    drop(h);

    cluster.wait_ready(Duration::from_secs(30));
    let reader = cluster.client();
    let mut lost = Vec::new();
    for (n, out) in read_all(&reader, "bank", &acked_keys) {
        if !has_value(&out, &n.to_string()) {
            lost.push(out.describe());
        }
    }
    let mut unknown_applied = 0;
    let mut wrong = Vec::new();
    for (n, out) in read_all(&reader, "bank", &unknown_keys) {
        match out.code {
            0 if has_value(&out, &n.to_string()) => unknown_applied += 1,
            1 => {}
            _ => wrong.push(out.describe()),
        }
    }
    for (_, out) in read_all(&reader, "bank", &refused_keys) {
        // Exit 3 promised "definitely not applied".
        if out.code != 1 {
            wrong.push(format!("a write refused with exit 3 is visible:\n{}", out.describe()));
        }
    }
    println!(
        "verified: {} acknowledged keys read back, {lost_n} lost; {unknown_applied} of {} \
         unknown writes were applied",
        acked_keys.len() - lost.len(),
        unknown_keys.len(),
        lost_n = lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes were lost:\n{}",
        lost.len(),
        lost.join("\n---\n")
    );
    assert!(wrong.is_empty(), "inconsistent reads:\n{}", wrong.join("\n---\n"));

    // The restarted node has caught up with the last acknowledged write.
    if let Some(last) = acked_keys.last() {
        let back = cluster.client_at(leader);
        poll_for(
            Duration::from_secs(15),
            "the restarted node's replica to hold the last acknowledged write",
            || {
                let out = back.get_local("bank", &format!("k{last}"));
                if has_value(&out, &last.to_string()) {
                    Ok(())
                } else {
                    Err(out.describe())
                }
            },
        );
    }
}

#[test]
fn restart_all_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(3);
    let c = cluster.client();
    c.create_keyspace("ledger", "cp");
    for i in 0..50 {
        c.put("ledger", &format!("k{i}"), &format!("v{i}")).expect_code(0);
    }
    for id in cluster.ids() {
        cluster.kill9(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    let leader = cluster.wait_ready(Duration::from_secs(30));
    println!("all three nodes restarted; node {leader} leads");

    let describe = c.run(&["keyspace", "describe", "ledger"]);
    assert_eq!(describe.ok_json()["mode"], "cp", "{}", describe.describe());
    let keys: Vec<u64> = (0..50).collect();
    let mut lost = Vec::new();
    for (n, out) in read_all(&c, "ledger", &keys) {
        if !has_value(&out, &format!("v{n}")) {
            lost.push(out.describe());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 50 acknowledged writes are gone after a full restart:\n{}",
        lost.len(),
        lost.join("\n---\n")
    );
    // And the restarted cluster accepts writes.
    c.put("ledger", "after", "restart").expect_code(0);
    expect_value(&c.get("ledger", "after"), "restart");
}

/// Enough writes for the leader to take a snapshot and purge the log behind it: nodes snapshot
/// every 500 entries by default (openraft also keeps up to `max_in_snapshot_log_to_keep` entries
/// behind a snapshot, so the product must set that low for a purge to happen this early).
const SNAPSHOT_FILL_KEYS: usize = 1200;
const WRITER_THREADS: usize = 4;

#[test]
fn lagging_node_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3);
    let c = cluster.client();
    c.create_keyspace("lag", "cp");
    let leader = cluster.leader_id();
    let lagging = cluster.other_than(leader);
    cluster.stop(lagging);
    let live = cluster.running_ids();
    let writers = cluster.client_of(&live);

    let started = Instant::now();
    let handles: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let client = writers.clone();
            thread::spawn(move || {
                let mut failures = Vec::new();
                for i in (t..SNAPSHOT_FILL_KEYS).step_by(WRITER_THREADS) {
                    let out =
                        client.put_retrying("lag", &format!("k{i:05}"), &format!("v{i}"), Duration::from_secs(10));
                    if out.code != 0 {
                        failures.push(out.describe());
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} writes failed with two of three nodes up:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
    let last = SNAPSHOT_FILL_KEYS - 1;
    c.put("lag", "last", "written").expect_code(0);
    println!(
        "wrote {SNAPSHOT_FILL_KEYS} keys with node {lagging} down in {:?}",
        started.elapsed()
    );

    // Has the leader purged its log past everything the stopped node holds? Then the stopped
    // node can only catch up by installing a snapshot.
    let leader_addr = cluster.http_addr(leader);
    let scrape = || http_get(&leader_addr, "/metrics").map(|r| r.body).unwrap_or_default();
    let mut leader_metrics = scrape();
    let settle = Instant::now() + Duration::from_secs(5);
    while metric_value(&leader_metrics, "capkv_raft_purged_index").unwrap_or(0.0) <= 10.0 && Instant::now() < settle {
        thread::sleep(Duration::from_millis(250));
        leader_metrics = scrape();
    }
    let leader_snapshot = metric_value(&leader_metrics, "capkv_raft_snapshot_index");
    let leader_purged = metric_value(&leader_metrics, "capkv_raft_purged_index");
    println!(
        "leader {leader}: capkv_raft_snapshot_index = {leader_snapshot:?}, \
         capkv_raft_purged_index = {leader_purged:?}"
    );

    let restarted_at = Instant::now();
    cluster.restart(lagging);
    let back = cluster.client_at(lagging);
    poll_for(
        Duration::from_secs(30),
        "the restarted node to catch up to the last write",
        || {
            let out = back.get_local("lag", "last");
            if has_value(&out, "written") {
                Ok(())
            } else {
                Err(out.describe())
            }
        },
    );
    println!("node {lagging} caught up {:?} after restarting", restarted_at.elapsed());
    expect_value(&back.get_local("lag", "k00000"), "v0");
    expect_value(&back.get_local("lag", &format!("k{last:05}")), &format!("v{last}"));

    let log = cluster.log_text(lagging).to_lowercase();
    let install_lines = log
        .lines()
        .filter(|l| l.contains("snapshot") && l.contains("install"))
        .count();
    println!("node {lagging} log: {install_lines} lines mention installing a snapshot");

    // Proof of a snapshot install: the restarted node's own counter (it starts at 0 with the
    // process). Required when the leader's log no longer reaches back to the lagging node.
    let addr = cluster.http_addr(lagging);
    let installed = || {
        http_get(&addr, "/metrics")
            .ok()
            .and_then(|r| metric_value(&r.body, "capkv_raft_snapshots_installed_total"))
    };
    let must_install = leader_purged.is_some_and(|p| p > 10.0);
    if must_install {
        let n = poll_for(
            Duration::from_secs(10),
            "the caught-up node to report an installed snapshot",
            || match installed() {
                Some(n) if n >= 1.0 => Ok(n),
                n => Err(format!(
                    "capkv_raft_snapshots_installed_total = {n:?} on node {lagging}, although \
                     the leader purged its log up to {leader_purged:?}"
                )),
            },
        );
        println!("node {lagging} installed {n} snapshot(s)");
    } else {
        println!(
            "NOTE: the leader did not purge its log (capkv_raft_purged_index = \
             {leader_purged:?}); node {lagging} may have caught up from the log. \
             capkv_raft_snapshots_installed_total = {:?}",
            installed()
        );
    }
}
