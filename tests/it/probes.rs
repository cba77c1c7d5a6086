//! The orchestrator probes: `/livez` never fails because of the network, `/readyz` answers for
//! a keyspace's mode.
//!
//! During a partition the minority node is live (200), not ready for a cp keyspace (503), and
//! ready for an ap keyspace (200); the majority stays ready for both; after the heal the
//! minority node is ready for cp again. A keyspace the node does not know is a 404.

use std::time::Duration;

use crate::harness::{http_get, poll_for, Cluster};

/// The status code of `GET path` on node `id`, polled until it is `want`.
#[track_caller]
fn wait_status(cluster: &Cluster, id: u64, path: &str, want: u16) -> String {
    let addr = cluster.http_addr(id);
    poll_for(
        Duration::from_secs(15),
        &format!("GET {path} on node {id} = {want}"),
        || match http_get(&addr, path) {
            Ok(r) if r.status == want => Ok(r.body),
            Ok(r) => Err(format!("status {}: {}", r.status, r.body.trim())),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// The status code of `GET path` on node `id` now.
#[track_caller]
fn status_now(cluster: &Cluster, id: u64, path: &str) -> (u16, String) {
    let r = http_get(&cluster.http_addr(id), path).unwrap_or_else(|e| panic!("GET {path} on node {id}: {e}"));
    (r.status, r.body)
}

#[test]
fn the_minority_is_live_ready_for_ap_and_not_for_cp() {
    let cluster = Cluster::start(3);
    let all = cluster.client();
    all.create_keyspace("bank", "cp");
    all.create_keyspace("notes", "ap");
    let leader = cluster.leader_id();
    let minority = cluster.other_than(leader);
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != minority).collect();
    for id in cluster.ids() {
        wait_status(&cluster, id, "/livez", 200);
        wait_status(&cluster, id, "/readyz?keyspace=bank", 200);
        wait_status(&cluster, id, "/readyz?keyspace=notes", 200);
        wait_status(&cluster, id, "/readyz", 200);
        wait_status(&cluster, id, "/ready", 200);
    }
    let (code, body) = status_now(&cluster, minority, "/readyz?keyspace=nope");
    assert_eq!(code, 404, "an unknown keyspace: {body}");

    let groups: Vec<String> = majority.iter().map(u64::to_string).collect();
    all.run(&["fault", "partition", &groups.join(","), &minority.to_string()])
        .expect_code(0);
    let body = wait_status(&cluster, minority, "/readyz?keyspace=bank", 503);
    println!("node {minority} cut off: /readyz?keyspace=bank says {}", body.trim());
    // The node knows a cp keyspace, so without a keyspace it is judged as cp; /ready is readyz.
    wait_status(&cluster, minority, "/readyz", 503);
    wait_status(&cluster, minority, "/ready", 503);
    for (path, want) in [
        ("/livez", 200),
        ("/readyz?keyspace=notes", 200),
        ("/readyz?keyspace=bank", 503),
    ] {
        let (code, body) = status_now(&cluster, minority, path);
        assert_eq!(code, want, "GET {path} on the minority node {minority}: {body}");
    }
    for id in &majority {
        wait_status(&cluster, *id, "/readyz?keyspace=bank", 200);
        let (code, body) = status_now(&cluster, *id, "/livez");
        assert_eq!(code, 200, "GET /livez on the majority node {id}: {body}");
    }

    all.run(&["fault", "heal"]).expect_code(0);
    wait_status(&cluster, minority, "/readyz?keyspace=bank", 200);
    wait_status(&cluster, minority, "/readyz", 200);
}
