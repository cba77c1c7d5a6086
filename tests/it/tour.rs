//! The user-facing tour: a CP keyspace under a partition, keyspace administration, scans, the
//! HTTP endpoints and client-side endpoint failover.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    expect_value, free_ports, has_value, http_get, metric_value, poll_for, wait_until, Client, Cluster,
};

/// Which node the partition cuts off in [`cp_tour`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isolate {
    Follower,
    Leader,
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The banking tour of README: a CP keyspace keeps its promise when one node is cut off.
fn cp_tour(isolate: Isolate) {
    let cluster = Cluster::start(3);
    let all = cluster.client();

    all.create_keyspace("bank", "cp");
    let put = all.put("bank", "alice", "100");
    let json = put.ok_json();
    assert!(put.u64_field("revision").unwrap_or(0) > 0, "{}", put.describe());
    assert_eq!(json["keyspace"], "bank", "{}", put.describe());
    assert_eq!(json["key"], "alice", "{}", put.describe());
    expect_value(&all.get("bank", "alice"), "100");

    let cas = all.run(&["cas", "bank", "alice", "--expect", "100", "90"]);
    assert_eq!(cas.ok_json()["succeeded"], Value::Bool(true), "{}", cas.describe());
    let cas = all.run(&["cas", "bank", "alice", "--expect", "100", "90"]);
    cas.expect_code(1);
    if let Some(json) = &cas.json {
        // A mismatch is an answer, not an error: the cas object says what is there now.
        assert_eq!(json["succeeded"], Value::Bool(false), "{}", cas.describe());
        assert_eq!(json["current"], "90", "{}", cas.describe());
    }

    let leader = cluster.leader_id();
    let isolated = match isolate {
        Isolate::Leader => leader,
        Isolate::Follower => cluster.other_than(leader),
    };
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != isolated).collect();
    // The isolated node must hold alice=90 before the cut, or its local read cannot show it.
    poll_for(Duration::from_secs(10), "node replicas to apply alice=90", || {
        let out = cluster.client_at(isolated).get_local("bank", "alice");
        if has_value(&out, "90") {
            Ok(())
        } else {
            Err(out.describe())
        }
    });

    let groups = [join_ids(&majority), isolated.to_string()];
    let part = all.run(&["fault", "partition", &groups[0], &groups[1]]);
    let json = part.ok_json();
    assert_eq!(json["enabled"], Value::Bool(true), "{}", part.describe());
    assert_eq!(json["groups"].as_array().map(Vec::len), Some(2), "{}", part.describe());
    let status = all.run(&["fault", "status"]);
    assert_eq!(
        status.ok_json()["groups"].as_array().map(Vec::len),
        Some(2),
        "{}",
        status.describe()
    );
    let cut_at = Instant::now();
    println!("partitioned {groups:?} (leader was {leader}, isolated {isolated})");
    let lonely = cluster.client_at(isolated).with_timeout("3s");

    if isolate == Isolate::Leader {
        // Right after the cut the old leader cannot know it lost its majority: until its
        // check-quorum fires (about one election timeout) it still proposes writes, which then
        // cannot commit. Such a write must answer 3 or 4 within --timeout, never 0.
        let early = lonely.put("bank", "carol", "1");
        assert!(
            early.code == 3 || early.code == 4,
            "a write to a just-isolated leader must be refused (3) or unknown (4)\n{}",
            early.describe()
        );
        early.expect_error(early.code);
        assert!(early.elapsed < Duration::from_millis(3500), "{}", early.describe());
        // The majority elects a new leader; by then the old one has noticed it is alone.
        let new_leader = cluster.wait_for_leader_among(&majority, Duration::from_secs(15));
        println!(
            "early write to the isolated leader: exit {}; node {new_leader} leads the majority {:?} after the cut",
            early.code,
            cut_at.elapsed()
        );
    }

    // The minority side refuses, fast, and never serves a linearizable value.
    let put = lonely.put("bank", "bob", "5");
    put.expect_error(3);
    assert!(
        put.elapsed < Duration::from_millis(3500),
        "a minority write must be refused within --timeout\n{}",
        put.describe()
    );
    let get = lonely.get("bank", "alice");
    get.expect_error(3);
    assert!(
        get.json_obj().get("value").is_none_or(Value::is_null),
        "a minority linearizable read must not carry a value\n{}",
        get.describe()
    );
    assert!(
        get.elapsed < Duration::from_millis(3500),
        "a minority read must be refused within --timeout\n{}",
        get.describe()
    );
    // ... but its local replica is still readable, explicitly stale-allowed.
    expect_value(&lonely.get_local("bank", "alice"), "90");

    // The majority side keeps serving (after electing a new leader if it lost the old one).
    let majority_client = cluster.client_of(&majority).with_timeout("3s");
    let started = Instant::now();
    let put = majority_client.put_retrying("bank", "bob", "5", Duration::from_secs(10));
    put.expect_code(0);
    println!(
        "majority write acknowledged in {:?} ({:?} after the cut)",
        started.elapsed(),
        cut_at.elapsed()
    );
    expect_value(&majority_client.get("bank", "alice"), "90");

    let heal = all.run(&["fault", "heal"]);
    let json = heal.ok_json();
    assert_eq!(json["groups"].as_array().map(Vec::len), Some(0), "{}", heal.describe());

    // The cut-off node catches up and serves linearizable reads again.
    let back = cluster.client_at(isolated).with_timeout("3s");
    poll_for(Duration::from_secs(15), "the healed node to serve bob=5", || {
        let out = back.get("bank", "bob");
        if has_value(&out, "5") {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    expect_value(&back.get("bank", "alice"), "90");
    if isolate == Isolate::Leader {
        // The early write's outcome was unknown: it may exist, but only with its own value.
        let carol = back.get("bank", "carol");
        assert!(carol.code == 1 || has_value(&carol, "1"), "{}", carol.describe());
    }

    let leader = cluster.wait_ready(Duration::from_secs(15));
    let status = all.run(&["cluster", "status"]);
    let json = status.ok_json();
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{}", status.describe());
    assert!(
        nodes.iter().all(|n| n["reachable"] == Value::Bool(true)),
        "{}",
        status.describe()
    );
    assert_eq!(json["leader_id"], leader, "{}", status.describe());
}

#[test]
fn cp_tour_isolated_follower() {
    cp_tour(Isolate::Follower);
}

#[test]
fn cp_tour_isolated_leader() {
    cp_tour(Isolate::Leader);
}

#[test]
fn keyspace_list_describe() {
    let cluster = Cluster::start(3);
    let c = cluster.client();

    c.create_keyspace("accounts", "cp");
    let list = c.run(&["keyspace", "list"]);
    let spaces = list.ok_json()["keyspaces"].as_array().cloned().unwrap_or_default();
    let accounts = spaces
        .iter()
        .find(|k| k["name"] == "accounts")
        .unwrap_or_else(|| panic!("accounts is not listed\n{}", list.describe()));
    assert_eq!(accounts["mode"], "cp", "{}", list.describe());
    assert!(
        accounts["created_revision"].as_u64().unwrap_or(0) > 0,
        "{}",
        list.describe()
    );

    c.put("accounts", "a", "1").expect_code(0);
    let describe = c.run(&["keyspace", "describe", "accounts"]);
    let json = describe.ok_json();
    assert_eq!(json["name"], "accounts", "{}", describe.describe());
    assert_eq!(json["mode"], "cp", "{}", describe.describe());
    assert!(json["keys"].is_u64(), "{}", describe.describe());

    c.run(&["keyspace", "describe", "nosuch"]).expect_error(3);

    // AP keyspaces are metadata in Raft, so creating one works whether or not the AP data path
    // exists yet.
    c.create_keyspace("carts", "ap");
    let describe = c.run(&["keyspace", "describe", "carts"]);
    assert_eq!(describe.ok_json()["mode"], "ap", "{}", describe.describe());
    let list = c.run(&["keyspace", "list"]);
    let names: Vec<String> = list.ok_json()["keyspaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.contains(&"accounts".to_string()) && names.contains(&"carts".to_string()),
        "{}",
        list.describe()
    );

    // Data operations on an AP keyspace are served (the AP path has landed; before it, this
    // accepted a refusal with exit 3). `get` reads the answering node's replica, the one that took
    // the write here, since both go to the first endpoint.
    c.put("carts", "apple", "2").expect_code(0);
    expect_value(&c.get("carts", "apple"), "2");

    // CAS on an AP keyspace is refused, and the sentence points to `cp`.
    let cas = c.run(&["cas", "carts", "apple", "--expect-absent", "3"]);
    cas.expect_error(3);
    assert!(
        cas.stderr.to_lowercase().contains("cp"),
        "the refusal must say that CAS needs a cp keyspace\n{}",
        cas.describe()
    );
}

#[test]
fn scan_prefix_limit() {
    let cluster = Cluster::start(3);
    let c = cluster.client();
    c.create_keyspace("shop", "cp");

    let mut keys: Vec<String> = (0..15)
        .map(|i| format!("user/{i:02}"))
        .chain((0..10).map(|i| format!("order/{i:02}")))
        .collect();
    // Write in a scrambled order; a scan must come back sorted anyway.
    keys.sort_by_key(|k| k.bytes().rev().collect::<Vec<u8>>());
    for k in &keys {
        c.put("shop", k, &format!("val-{k}")).expect_code(0);
    }
    keys.sort();

    let scan_keys = |out: &crate::harness::Output| -> Vec<String> {
        let json = out.ok_json();
        let items = json["items"].as_array().expect("items");
        for item in items {
            let key = item["key"].as_str().expect("item key");
            assert_eq!(
                item["value"].as_str(),
                Some(format!("val-{key}").as_str()),
                "{}",
                out.describe()
            );
            assert!(item["mod_revision"].as_u64().unwrap_or(0) > 0, "{}", out.describe());
        }
        items.iter().map(|i| i["key"].as_str().unwrap().to_string()).collect()
    };

    let all = c.run(&["scan", "shop"]);
    assert_eq!(scan_keys(&all), keys, "{}", all.describe());
    assert_eq!(all.bool_field("more"), Some(false), "{}", all.describe());

    let users: Vec<String> = keys.iter().filter(|k| k.starts_with("user/")).cloned().collect();
    let out = c.run(&["scan", "shop", "--prefix", "user/"]);
    assert_eq!(scan_keys(&out), users, "{}", out.describe());
    assert_eq!(out.bool_field("more"), Some(false), "{}", out.describe());

    let out = c.run(&["scan", "shop", "--prefix", "user/", "--limit", "5"]);
    assert_eq!(scan_keys(&out), users[..5].to_vec(), "{}", out.describe());
    assert_eq!(out.bool_field("more"), Some(true), "{}", out.describe());

    // Exactly as many matches as the limit: nothing more to fetch.
    let orders: Vec<String> = keys.iter().filter(|k| k.starts_with("order/")).cloned().collect();
    let out = c.run(&["scan", "shop", "--prefix", "order/", "--limit", "10"]);
    assert_eq!(scan_keys(&out), orders, "{}", out.describe());
    assert_eq!(out.bool_field("more"), Some(false), "{}", out.describe());

    let out = c.run(&["scan", "shop", "--limit", "12"]);
    assert_eq!(scan_keys(&out), keys[..12].to_vec(), "{}", out.describe());
    assert_eq!(out.bool_field("more"), Some(true), "{}", out.describe());

    // A prefix that matches nothing is an empty answer, not an error.
    let out = c.run(&["scan", "shop", "--prefix", "nosuch/"]);
    assert!(scan_keys(&out).is_empty(), "{}", out.describe());
    assert_eq!(out.bool_field("more"), Some(false), "{}", out.describe());

    // A prefix that is a strict prefix of the keys' shared part: "user/1" matches 10..=14.
    let out = c.run(&["scan", "shop", "--prefix", "user/1"]);
    assert_eq!(
        scan_keys(&out),
        (10..15).map(|i| format!("user/{i}")).collect::<Vec<_>>(),
        "{}",
        out.describe()
    );

    // Deleted keys disappear from scans.
    let del = c.run(&["delete", "shop", "user/00"]);
    assert_eq!(del.ok_json()["deleted"], Value::Bool(true), "{}", del.describe());
    let out = c.run(&["scan", "shop", "--prefix", "user/", "--limit", "1"]);
    assert_eq!(scan_keys(&out), vec!["user/01".to_string()], "{}", out.describe());
}

#[test]
fn health_and_metrics() {
    let cluster = Cluster::start(3);
    for id in cluster.ids() {
        let addr = cluster.http_addr(id);
        let health = poll_for(Duration::from_secs(10), "GET /health = 200", || {
            match http_get(&addr, "/health") {
                Ok(r) if r.status == 200 => Ok(r),
                Ok(r) => Err(format!("status {}: {}", r.status, r.body)),
                Err(e) => Err(e.to_string()),
            }
        });
        let json: Value = serde_json::from_str(&health.body)
            .unwrap_or_else(|e| panic!("/health of node {id} is not JSON ({e}): {}", health.body));
        assert!(
            json["status"].is_string(),
            "/health of node {id} has no \"status\": {}",
            health.body
        );
    }

    // Requests through node 1 only, so node 1's request counter must move.
    let c = cluster.client_at(1);
    c.create_keyspace("metered", "cp");
    c.put("metered", "k", "v").expect_code(0);
    expect_value(&c.get("metered", "k"), "v");
    c.get("metered", "missing").expect_code(1);

    let addr = cluster.http_addr(1);
    let metrics = poll_for(Duration::from_secs(10), "node 1's /metrics to count requests", || {
        let r = http_get(&addr, "/metrics").map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("status {}: {}", r.status, r.body));
        }
        if metric_value(&r.body, "capkv_requests_total").is_some() {
            Ok(r.body)
        } else {
            Err("no capkv_requests_total sample yet".to_string())
        }
    });
    assert!(
        metric_value(&metrics, "capkv_requests_total").unwrap_or(0.0) >= 1.0,
        "capkv_requests_total must count the requests"
    );
    for id in cluster.ids() {
        let r = http_get(&cluster.http_addr(id), "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        let content_type = r
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        assert!(
            content_type.starts_with("text/plain"),
            "node {id}: /metrics must be Prometheus text, got content-type {content_type:?}"
        );
        let addr = cluster.http_addr(id);
        wait_until(
            Duration::from_secs(5),
            &format!("node {id}: capkv_raft_term >= 1 in /metrics"),
            || {
                http_get(&addr, "/metrics")
                    .ok()
                    .and_then(|r| metric_value(&r.body, "capkv_raft_term"))
                    .is_some_and(|term| term >= 1.0)
            },
        );
    }
}

#[test]
fn endpoint_failover() {
    let mut cluster = Cluster::start(3);
    // Nothing listens on `dead`: the client must move on to the next endpoint.
    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let live = cluster.endpoint(2);
    let c = Client::new(format!("{dead},{live}"));
    c.create_keyspace("fo", "cp");
    c.put("fo", "k1", "v1").expect_code(0);
    expect_value(&c.get("fo", "k1"), "v1");

    // A node that was part of the cluster and died: same thing, once the survivors have a leader.
    cluster.kill9(1);
    cluster.wait_for_leader_among(&[2, 3], Duration::from_secs(20));
    let c = cluster.client_of(&[1, 3]);
    c.put("fo", "k2", "v2").expect_code(0);
    expect_value(&c.get("fo", "k2"), "v2");
    expect_value(&c.get("fo", "k1"), "v1");
}
