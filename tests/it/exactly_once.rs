//! Exactly-once writes: request ids, replays, and retries across a leader kill.
//!
//! - `a_replayed_request_id_changes_nothing_and_answers_as_before`: the same `--request-id`
//!   sent again (with other content, through another node) returns the first answer and
//!   changes nothing, for put, delete, cas and txn, from the CLI and the library; an ap keyspace
//!   refuses a request id a user set.
//! - `writes_retried_across_a_leader_kill_are_applied_once`: writers stream transactions through
//!   the two followers while the leader is SIGKILLed; the library retries every write whose
//!   outcome it did not learn, with the same id. Each transaction bumps one shared counter key
//!   and writes a key of its own, so the counter's version (writes applied) equals the number of
//!   those keys (distinct writes applied) exactly when no write was applied twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capkv::proto::{self, txn_op};
use capkv::Client as Lib;

use crate::harness::{poll_for, runtime, Cluster};

#[test]
fn a_replayed_request_id_changes_nothing_and_answers_as_before() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.create_keyspace("cart", "ap");
    let leader = cluster.leader_id();
    let (at_leader, at_follower) = (cluster.client_at(leader), cluster.client_at(cluster.other_than(leader)));

    // put: the replay carries another value, and still answers with the first revision.
    let first = at_leader.run(&["put", "bank", "alice", "100", "--request-id", "order-1", "-o", "json"]);
    let revision = first.ok_json()["revision"].as_u64().expect("a revision");
    let replay = at_follower.run(&["put", "bank", "alice", "999", "--request-id", "order-1", "-o", "json"]);
    assert_eq!(
        replay.ok_json()["revision"].as_u64(),
        Some(revision),
        "{}",
        replay.describe()
    );
    let got = client.run(&["get", "bank", "alice", "-o", "json"]);
    assert_eq!(
        got.ok_json()["value"],
        "100",
        "the replay wrote nothing: {}",
        got.describe()
    );
    assert_eq!(got.ok_json()["write_count"].as_u64(), Some(1), "{}", got.describe());

    // txn: a counter bumped by the same request twice is bumped once.
    for _ in 0..2 {
        client
            .run(&["txn", "bank", "--success", "put visits 1", "--request-id", "visit-7"])
            .expect_code(0);
    }
    let visits = client.run(&["get", "bank", "visits", "-o", "json"]);
    assert_eq!(
        visits.ok_json()["write_count"].as_u64(),
        Some(1),
        "{}",
        visits.describe()
    );

    // cas: the replay of a swap that succeeded succeeds again, though the value moved on.
    let cas = [
        "cas",
        "bank",
        "alice",
        "--expect",
        "100",
        "150",
        "--request-id",
        "swap-1",
    ];
    client.run(&cas).expect_code(0);
    client.run(&cas).expect_code(0);
    let got = client.run(&["get", "bank", "alice", "-o", "json"]);
    assert_eq!(got.ok_json()["value"], "150");
    assert_eq!(
        got.ok_json()["write_count"].as_u64(),
        Some(2),
        "one swap applied: {}",
        got.describe()
    );

    // delete: the replay reports the key as deleted by it, as the first answer did.
    let delete = ["delete", "bank", "alice", "--request-id", "drop-1", "-o", "json"];
    assert_eq!(client.run(&delete).ok_json()["deleted"], true);
    assert_eq!(
        client.run(&delete).ok_json()["deleted"],
        true,
        "the first answer, replayed"
    );

    // The library: an explicit id sent twice.
    let rt = runtime();
    let lib = Lib::new(vec![cluster.endpoint(leader)], Duration::from_secs(10)).expect("a client");
    let id = proto::RequestId {
        client: vec![7; 16],
        sequence: 1,
        automatic: false,
    };
    let put = |value: &str| proto::PutRequest {
        keyspace: "bank".into(),
        key: b"bob".to_vec(),
        value: value.as_bytes().to_vec(),
        acks: 0,
        request_id: Some(id.clone()),
    };
    let (one, two) = rt.block_on(async { (lib.put_request(put("1")).await, lib.put_request(put("2")).await) });
    assert_eq!(one.expect("the put").revision, two.expect("the replay").revision);
    let got = client.run(&["get", "bank", "bob", "-o", "json"]);
    assert_eq!(got.ok_json()["value"], "1");

    // A malformed id is refused before anything happens.
    let bad = proto::PutRequest {
        request_id: Some(proto::RequestId {
            client: vec![1; 3],
            sequence: 1,
            automatic: false,
        }),
        ..put("3")
    };
    let err = rt.block_on(lib.put_request(bad)).expect_err("a 3-byte client id");
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("16"), "{err}");

    // ap keyspaces cannot promise "at most once": a user's id is refused, and nothing written.
    client
        .run(&["put", "cart", "apples", "3", "--request-id", "cart-1"])
        .expect_error(5);
    client.run(&["get", "cart", "apples"]).expect_code(1);
    // Ids the library sets on its own are ignored there, so plain ap writes work.
    client.put("cart", "apples", "3").expect_code(0);
}

/// One writer's outcome of one transaction.
struct Outcome {
    n: u64,
    code: i32,
    error: String,
}

#[test]
fn writes_retried_across_a_leader_kill_are_applied_once() {
    let mut cluster = Cluster::start(3);
    cluster.client().create_keyspace("bank", "cp");
    let leader = cluster.leader_id();
    let followers: Vec<String> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| cluster.endpoint(id))
        .collect();
    let rt = runtime();
    let lib = Arc::new(Lib::new(followers, Duration::from_secs(10)).expect("a client"));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (lib, outcomes, stop, next) = (lib.clone(), outcomes.clone(), stop.clone(), next.clone());
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let put = |key: String| proto::TxnOp {
                        op: Some(txn_op::Op::Put(proto::PutOp {
                            key: key.into_bytes(),
                            value: n.to_string().into_bytes(),
                        })),
                    };
                    let result = lib
                        .txn(proto::TxnRequest {
                            keyspace: "bank".into(),
                            compares: vec![],
                            success: vec![put("counter".into()), put(format!("seen/{n:06}"))],
                            failure: vec![],
                            request_id: None,
                        })
                        .await;
                    let (code, error) = match result {
                        Ok(_) => (0, String::new()),
                        Err(e) => (e.exit_code(), e.to_string()),
                    };
                    outcomes.lock().unwrap().push(Outcome { n, code, error });
                }
            })
        })
        .collect();
    let acked = || outcomes.lock().unwrap().iter().filter(|o| o.code == 0).count();
    poll_for(Duration::from_secs(30), "40 acknowledged writes", || {
        (acked() >= 40).then_some(()).ok_or(format!("{} acknowledged", acked()))
    });
    let killed_at = Instant::now();
    let before_kill = acked();
    cluster.kill9(leader);
    poll_for(Duration::from_secs(30), "40 writes acknowledged after the kill", || {
        let after = acked() - before_kill;
        (after >= 40)
            .then_some(())
            .ok_or(format!("{after} acknowledged after the kill"))
    });
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        rt.block_on(writer).expect("a writer does not panic");
    }
    let after_kill = acked() - before_kill;
    let written = outcomes.lock().unwrap().len();
    let failed = outcomes.lock().unwrap().iter().filter(|o| o.code != 0).count();
    println!(
        "{written} writes, {after_kill} acknowledged after the kill ({:?} ago), {failed} failed",
        killed_at.elapsed()
    );

    let survivor = cluster.other_than(leader);
    let reader = Lib::new(vec![cluster.endpoint(survivor)], Duration::from_secs(10)).expect("a client");
    let (counter, seen) = rt.block_on(async {
        let counter = reader
            .get("bank", b"counter", proto::Consistency::Linearizable)
            .await
            .expect("the counter reads");
        let mut seen = Vec::new();
        let mut start_after = Vec::new();
        loop {
            let page = reader
                .scan(proto::ScanRequest {
                    keyspace: "bank".into(),
                    prefix: b"seen/".to_vec(),
                    start_after: start_after.clone(),
                    limit: 0,
                    consistency: proto::Consistency::Linearizable as i32,
                })
                .await
                .expect("the scan reads");
            seen.extend(
                page.items
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
            );
            match page.items.last() {
                Some(last) if page.more => start_after = last.key.clone(),
                _ => break,
            }
        }
        (counter, seen)
    });
    let applications = counter.kv.expect("the counter exists").version;
    let outcomes = outcomes.lock().unwrap();
    for o in outcomes.iter().filter(|o| o.code == 0) {
        assert!(
            seen.contains(&format!("seen/{:06}", o.n)),
            "write {} was acknowledged but is not there",
            o.n
        );
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.code != 0)
        .map(|o| format!("#{} exit {}: {}", o.n, o.code, o.error))
        .collect();
    assert!(
        failed.iter().all(|f| f.contains("exit 4")),
        "only outcome-unknown may fail here: {failed:#?}"
    );
    assert_eq!(
        applications,
        seen.len() as u64,
        "the counter was written {applications} times by {} distinct writes: a write was applied twice",
        seen.len()
    );
}
