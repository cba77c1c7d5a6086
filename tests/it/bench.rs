//! `capkv bench` against a real cluster: the JSON a script reads, and the SLO verdict.

use crate::harness::Cluster;

#[test]
fn bench_json_has_stable_fields_and_an_slo_verdict() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.create_keyspace("cart", "ap");

    // A generous objective that a healthy cluster meets: exit 0.
    let out = client.run(&[
        "bench",
        "--keyspace",
        "bank",
        "--op",
        "put",
        "--concurrency",
        "4",
        "--duration",
        "2s",
        "--keys",
        "100",
        "--slo",
        "10s@99",
    ]);
    let r = out.ok_json();
    for field in ["ops_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(r[field].as_f64().is_some(), "{field} missing in {r}");
    }
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["mode"], "cp");
    assert_eq!(r["consistency"], "linearizable");
    assert_eq!(r["errors"]["total"], 0, "{r}");
    assert_eq!(r["slo"]["target"], "10000ms@99");
    assert_eq!(r["slo"]["met"], true);
    assert!(r["slo"]["sentence"].as_str().unwrap().contains("met"), "{r}");
    let p = |f: &str| r[f].as_f64().unwrap();
    assert!(p("p50_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"));

    // Swaps on an ap keyspace and an objective no network meets: verdict missed, exit 1.
    let out = client.run(&[
        "bench",
        "--keyspace",
        "cart",
        "--op",
        "cas",
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--keys",
        "20",
        "--slo",
        "0.001ms@99.9",
    ]);
    out.expect_code(1);
    let r = out.json_obj();
    assert_eq!(r["mode"], "ap");
    assert_eq!(r["slo"]["met"], false, "{r}");
    assert!(r["slo"]["sentence"].as_str().unwrap().contains("missed"), "{r}");

    // Bad numbers are refused before any load, with what to change.
    client
        .run(&[
            "bench",
            "--keyspace",
            "bank",
            "--op",
            "cas",
            "--concurrency",
            "8",
            "--keys",
            "4",
        ])
        .expect_error(5);
    client
        .run(&["bench", "--keyspace", "bank", "--slo", "fast"])
        .expect_code(2);
    let acks_on_cp = client.run(&["bench", "--keyspace", "bank", "--acks", "2", "--duration", "1s"]);
    acks_on_cp.expect_error(5);
    assert!(
        acks_on_cp.stderr.contains("applies to ap keyspaces"),
        "{}",
        acks_on_cp.describe()
    );

    // ap writes that wait for two replicas: every put done, none failed.
    let out = client.run(&[
        "bench",
        "--keyspace",
        "cart",
        "--acks",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "1s",
    ]);
    let r = out.ok_json();
    assert!(r["ops"].as_u64().unwrap() > 0 && r["errors"]["total"] == 0, "{r}");
}
