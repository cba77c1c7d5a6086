//! Operating a cluster: `cluster up/down` as a user runs them, third-party gRPC tooling (health
//! and reflection), resource use at idle, and clock-skew fault injection on ap keyspaces.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    consecutive_free_ports, expect_value, http_get, run, wait_until, Client, Cluster, DetachedCluster,
};

/// A node must idle under this resident size (DESIGN: under 100 MiB).
const IDLE_RSS_BYTES_MAX: u64 = 100 * 1024 * 1024;

#[test]
fn cluster_up_detach_status_down_and_reuse() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 temp path").to_string();
    let base = consecutive_free_ports(3);
    let http = consecutive_free_ports(3);
    let peer = consecutive_free_ports(3);
    let (base_arg, http_arg, peer_arg) = (base.to_string(), http.to_string(), peer.to_string());
    let up = [
        "cluster",
        "up",
        "--base-port",
        &base_arg,
        "--http-base-port",
        &http_arg,
        "--peer-base-port",
        &peer_arg,
        "--data-dir",
        &data_arg,
        "--detach",
    ];
    let _guard = DetachedCluster(data.clone());
    let started = run(&up);
    started.expect_code(0);
    assert!(started.stdout.contains("cluster ready"), "{}", started.describe());
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::new(endpoints);
    let status = client.run(&["cluster", "status"]);
    let nodes = status.ok_json()["nodes"].as_array().expect("a node list").clone();
    assert_eq!(nodes.len(), 3, "{}", status.describe());
    assert!(
        status.ok_json()["leader_id"].as_u64().unwrap_or(0) > 0,
        "{}",
        status.describe()
    );
    for i in 0..3 {
        let health = http_get(&format!("127.0.0.1:{}", http + i), "/health").expect("GET /health");
        let json: Value = serde_json::from_str(&health.body).expect("JSON health");
        let rss = json["memory_rss_bytes"]
            .as_u64()
            .expect("the node reports its resident memory");
        println!("node {}: {} MiB resident at idle", i + 1, rss / (1024 * 1024));
        assert!(rss < IDLE_RSS_BYTES_MAX, "node {} uses {rss} bytes at idle", i + 1);
    }
    client.create_keyspace("bank", "cp");
    client.put("bank", "alice", "100").expect_code(0);
    assert!(
        started.stdout.contains(&format!("127.0.0.1:{peer}")),
        "{}",
        started.describe()
    );
    peer_api_only_on_peer_ports(base, peer);

    let again = run(&up);
    again.expect_code(3);
    assert!(again.stderr.contains("already running"), "{}", again.describe());

    run(&["cluster", "down", "--data-dir", &data_arg]).expect_code(0);
    client
        .clone()
        .with_timeout("1s")
        .run(&["cluster", "status"])
        .expect_code(3);

    // A second `up` on the same data dir reuses the data.
    run(&up).expect_code(0);
    expect_value(&client.get("bank", "alice"), "100");
    run(&["cluster", "down", "--data-dir", &data_arg]).expect_code(0);

    // A taken port is refused with a sentence that names it, before any node starts.
    let _squatter = TcpListener::bind(("127.0.0.1", base + 1)).expect("bind the port to take");
    let refused = run(&up);
    refused.expect_code(3);
    assert!(
        refused.stderr.contains(&format!("127.0.0.1:{}", base + 1)),
        "{}",
        refused.describe()
    );
    assert!(refused.stderr.contains("not free"), "{}", refused.describe());
}

/// `cluster up` gives every node a peer port: the client ports refuse the peer API, the peer
/// ports serve it, and writes sent to every node (followers forward to the leader's peer port)
/// succeed.
fn peer_api_only_on_peer_ports(base: u16, peer: u16) {
    use capkv::proto::{peer_client::PeerClient, PingRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ping = |port: u16| {
        rt.block_on(async move {
            let mut peer = PeerClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .expect("connects");
            peer.ping(PingRequest { from: 1 }).await
        })
    };
    for i in 0..3u16 {
        let refused = ping(base + i).expect_err("the client port has no peer API");
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
        // From node 1 (a member); node 1 itself refuses its own id as a sender.
        let answered = ping(peer + i);
        if i == 0 {
            assert_eq!(answered.expect_err("own id").code(), tonic::Code::InvalidArgument);
        } else {
            assert!(answered.is_ok(), "peer port of node {}: {answered:?}", i + 1);
        }
    }
    for i in 0..3u16 {
        let through = Client::new(format!("127.0.0.1:{}", base + i));
        through.put("bank", &format!("via{i}"), "1").expect_code(0);
    }
}

#[test]
fn grpc_health_and_reflection_serve_third_party_tools() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(3);
    let endpoint = format!("http://{}", cluster.endpoint(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        // The health service follows the node's health within half a second of a change.
        let mut status = ServingStatus::Unknown;
        for _ in 0..50 {
            let request = HealthCheckRequest {
                service: "capkv.v1.Kv".into(),
            };
            status = health.check(request).await.expect("health check").into_inner().status();
            if status == ServingStatus::Serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status,
            ServingStatus::Serving,
            "a healthy node reports SERVING on grpc.health.v1"
        );
        // Cut off, node 1 knows no reachable leader (or, leading, no majority): NOT_SERVING;
        // after the heal, SERVING again. Statuses are written on change only, so this checks
        // that both changes are written.
        let wait_for = |health: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus| {
            let mut health = health.clone();
            async move {
                let mut status = ServingStatus::Unknown;
                for _ in 0..100 {
                    let request = HealthCheckRequest {
                        service: "capkv.v1.Kv".into(),
                    };
                    status = health.check(request).await.expect("health check").into_inner().status();
                    if status == want {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                status
            }
        };
        cluster.client().run(&["fault", "partition", "1", "2,3"]).expect_code(0);
        assert_eq!(
            wait_for(&mut health, ServingStatus::NotServing).await,
            ServingStatus::NotServing,
            "a node cut off from the majority reports NOT_SERVING"
        );
        cluster.client().run(&["fault", "heal"]).expect_code(0);
        assert_eq!(
            wait_for(&mut health, ServingStatus::Serving).await,
            ServingStatus::Serving,
            "after the heal it reports SERVING again"
        );
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("a reflection answer")
            .expect("one message");
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    });
    for service in [
        "capkv.v1.Kv",
        "capkv.v1.Keyspaces",
        "capkv.v1.Cluster",
        "capkv.v1.Fault",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "reflection lists {service}: {services:?}"
        );
    }
}

#[test]
fn clock_skew_decides_last_writer_wins_until_heal() {
    let cluster = Cluster::start(3);
    let all = cluster.client();
    all.create_keyspace("carts", "ap");
    let skewed = all.run(&["fault", "clock", "3", "+60s"]);
    let nodes = skewed.ok_json()["nodes"]
        .as_array()
        .expect("per-node fault state")
        .clone();
    let offset_of = |nodes: &[Value], id: u64| {
        nodes
            .iter()
            .find(|n| n["node_id"] == id)
            .and_then(|n| n["clock_offset_ms"].as_i64())
    };
    assert_eq!(offset_of(&nodes, 3), Some(60_000), "{}", skewed.describe());
    assert_eq!(offset_of(&nodes, 1), Some(0), "{}", skewed.describe());
    // Concurrent writes on two sides of a partition (had node 1 seen node 3's write, its HLC
    // would order its own write after it). Node 3 writes first in real time, node 1 right after,
    // but node 3's clock is ahead (by the 500 ms clock bound: the minute is clamped), so its
    // write carries the higher timestamp and wins.
    all.run(&["fault", "partition", "1,2", "3"]).expect_code(0);
    cluster.client_at(3).put("carts", "bob", "early").expect_code(0);
    cluster.client_at(1).put("carts", "bob", "late").expect_code(0);
    // Heal clears the offset, but the timestamp node 3 gave its write stays.
    let healed = all.run(&["fault", "heal"]);
    let nodes = healed.ok_json()["nodes"]
        .as_array()
        .expect("per-node fault state")
        .clone();
    assert_eq!(
        offset_of(&nodes, 3),
        Some(0),
        "heal clears clock offsets: {}",
        healed.describe()
    );
    for id in cluster.ids() {
        let c = cluster.client_at(id);
        wait_until(
            Duration::from_secs(20),
            &format!("node {id} to converge on the skewed write"),
            || {
                let out = c.get("carts", "bob");
                out.code == 0 && out.str_field("value") == Some("early")
            },
        );
    }
    all.run(&["fault", "clock", "9", "+1s"]).expect_error(5);
    all.run(&["fault", "clock", "1", "+2d"]).expect_code(2);
}
