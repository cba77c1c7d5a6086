//! The AP path at its limits, on real processes: a clock fault far beyond the clock bound,
//! hints of large values through a partition, and how long convergence takes at scale.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{http_get, metric_value, wait_until, Cluster, Output};

/// The default `--max-clock-offset-ms` of a node.
const MAX_CLOCK_OFFSET_MS: u64 = 500;

/// Slack for the time a CLI call takes between reading our clock and the node stamping a write.
const SLACK_MS: u64 = 2_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// The physical part of an ap write's version.
fn physical_ms(out: &Output) -> u64 {
    out.json_obj()["version"]["physical_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {}", out.describe()))
}

fn metric(cluster: &Cluster, id: u64, name: &str) -> f64 {
    let scrape = http_get(&cluster.http_addr(id), "/metrics").expect("the metrics endpoint answers");
    metric_value(&scrape.body, name).unwrap_or(0.0)
}

/// `fault clock 3 +24h` (written +1440m) is far beyond the 500 ms bound: node 3 still takes writes, but stamps
/// them at most the bound ahead; no other clock is dragged ahead; nothing panics; after the heal
/// node 3's own clock is back, and every write converges.
#[test]
fn a_clock_fault_beyond_the_bound_is_clamped_and_drags_no_other_clock() {
    let cluster = Cluster::start(3);
    let all = cluster.client();
    all.create_keyspace("carts", "ap");
    let skewed = all.run(&["fault", "clock", "3", "+1440m"]); // +24h: the cli takes ms, s and m
    let nodes = skewed.ok_json()["nodes"]
        .as_array()
        .expect("per-node fault state")
        .clone();
    let node3 = nodes.iter().find(|n| n["node_id"] == 3).expect("node 3 answered");
    assert_eq!(
        node3["clock_offset_ms"].as_i64(),
        Some(86_400_000),
        "{}",
        skewed.describe()
    );

    let before = now_ms();
    let from3 = cluster.client_at(3).put("carts", "bob", "from-3");
    from3.expect_code(0);
    let stamped = physical_ms(&from3);
    assert!(
        stamped <= now_ms() + MAX_CLOCK_OFFSET_MS && stamped + SLACK_MS >= before,
        "node 3 stamped {stamped}, expected at most {MAX_CLOCK_OFFSET_MS} ms past {before}"
    );

    for id in [1, 2] {
        let c = cluster.client_at(id);
        wait_until(
            Duration::from_secs(20),
            &format!("node {id} to hold node 3's write"),
            || {
                let out = c.get_local("carts", "bob");
                out.code == 0 && out.str_field("value") == Some("from-3")
            },
        );
        let later = c.put("carts", &format!("from-{id}"), "v");
        later.expect_code(0);
        assert!(
            physical_ms(&later) <= now_ms() + MAX_CLOCK_OFFSET_MS,
            "node {id}'s clock was dragged ahead: {}",
            later.describe()
        );
        let ahead = metric(&cluster, id, "capkv_ap_hlc_max_ahead_ms");
        assert!(
            ahead <= MAX_CLOCK_OFFSET_MS as f64,
            "node {id} adopted a timestamp {ahead} ms ahead"
        );
    }

    all.run(&["fault", "heal"]).expect_code(0);
    let healed = cluster.client_at(3).put("carts", "ann", "after-heal");
    healed.expect_code(0);
    assert!(
        physical_ms(&healed) <= now_ms() + MAX_CLOCK_OFFSET_MS,
        "{}",
        healed.describe()
    );
    for id in cluster.ids() {
        let text = cluster.log_text(id);
        assert!(!text.contains("panicked"), "node {id} panicked:\n{text}");
    }
}
