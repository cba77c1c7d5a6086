//! Large values and request sizes: Raft batches split by bytes, scans paged by bytes, and
//! requests over the limits refused with a clear error before anything is stored.

use std::time::Duration;

use capkv::proto::{self, compare, txn_op};
use capkv::Client as Lib;

use crate::harness::{poll_for, runtime, Cluster};

const MIB: usize = 1024 * 1024;
/// Values written while a follower is down: 100 MiB in all, far over one Raft message.
const LARGE_VALUES: usize = 100;

/// A 1 MiB value whose bytes say which key it belongs to.
fn large_value(i: usize) -> Vec<u8> {
    let mut value = vec![(i % 251) as u8; MIB];
    value[..8].copy_from_slice(&(i as u64).to_be_bytes());
    value
}

fn lib(endpoint: String) -> Lib {
    Lib::new(vec![endpoint], Duration::from_secs(30)).expect("a client for the endpoint")
}

#[test]
fn follower_catches_up_on_large_values_and_scans_page_by_bytes() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader_id();
    let follower = cluster.other_than(leader);
    cluster.client().create_keyspace("blobs", "cp");
    cluster.kill9(follower);
    let rt = runtime();
    let writer = lib(cluster.endpoint(leader));
    rt.block_on(async {
        for i in 0..LARGE_VALUES {
            let key = format!("v{i:03}");
            writer
                .put("blobs", key.as_bytes(), &large_value(i))
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
    });
    cluster.restart(follower);
    let reader = lib(cluster.endpoint(follower));
    poll_for(
        Duration::from_secs(90),
        &format!("node {follower} to hold all {LARGE_VALUES} values"),
        || {
            rt.block_on(async {
                let last = format!("v{:03}", LARGE_VALUES - 1);
                match reader
                    .get("blobs", last.as_bytes(), proto::Consistency::Serializable)
                    .await
                {
                    Ok(r) if r.found => Ok(()),
                    Ok(_) => Err("not there yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
        },
    );
    rt.block_on(async {
        for i in 0..LARGE_VALUES {
            let key = format!("v{i:03}");
            let r = reader
                .get("blobs", key.as_bytes(), proto::Consistency::Serializable)
                .await
                .unwrap_or_else(|e| panic!("local get {key} on node {follower}: {e}"));
            let kv = r.kv.unwrap_or_else(|| panic!("node {follower} lacks {key}"));
            assert!(
                kv.value == large_value(i),
                "node {follower} holds a wrong value for {key}"
            );
        }
        // A linearizable scan through the follower is forwarded to the leader; its pages end
        // by bytes, so a page holds a few 1 MiB values and the client pages through the rest.
        let (mut keys, mut pages, mut start_after) = (Vec::new(), 0, Vec::new());
        loop {
            let page = reader
                .scan(proto::ScanRequest {
                    keyspace: "blobs".into(),
                    start_after: start_after.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("scan page {pages} through node {follower}: {e}"));
            pages += 1;
            assert!(
                !page.items.is_empty() && page.items.len() <= capkv::limits::SCAN_PAGE_BYTES_MAX / MIB,
                "page {pages} holds {} items of 1 MiB",
                page.items.len()
            );
            for kv in &page.items {
                let i: usize = std::str::from_utf8(&kv.key[1..]).unwrap().parse().unwrap();
                assert!(kv.value == large_value(i), "scan returned a wrong value for key {i}");
                keys.push(kv.key.clone());
            }
            start_after = page.items.last().expect("a page is not empty").key.clone();
            if !page.more {
                break;
            }
        }
        let expected: Vec<Vec<u8>> = (0..LARGE_VALUES).map(|i| format!("v{i:03}").into_bytes()).collect();
        assert_eq!(keys, expected, "the scan returns every key once, in order");
        println!("scanned {LARGE_VALUES} values of 1 MiB in {pages} pages through node {follower}");
    });
}

#[test]
fn oversized_transactions_are_refused_and_store_nothing() {
    let cluster = Cluster::start(3);
    cluster.client().create_keyspace("bank", "cp");
    let rt = runtime();
    let client = lib(cluster.endpoint(1));
    let put = |key: &str, value: Vec<u8>| proto::TxnOp {
        op: Some(txn_op::Op::Put(proto::PutOp {
            key: key.as_bytes().to_vec(),
            value,
        })),
    };
    let compare_value = |value: Vec<u8>| proto::Compare {
        key: b"alice".to_vec(),
        target: compare::Target::Value as i32,
        op: compare::Op::Equal as i32,
        value,
        number: 0,
    };
    rt.block_on(async {
        let cases = [
            (
                "a compare value over 1 MiB",
                vec![compare_value(vec![b'x'; MIB + 1])],
                vec![put("alice", b"1".to_vec())],
            ),
            (
                "two 1 MiB puts (over the transaction byte limit)",
                vec![],
                vec![put("alice", vec![b'a'; MIB]), put("bob", vec![b'b'; MIB])],
            ),
        ];
        for (what, compares, success) in cases {
            let err = client
                .txn(proto::TxnRequest {
                    keyspace: "bank".into(),
                    compares,
                    success,
                    failure: vec![],
                    request_id: None,
                })
                .await
                .expect_err(what);
            assert_eq!(err.exit_code(), 5, "{what}: {err}");
            assert!(
                err.to_string().contains("limit") || err.to_string().contains("too large"),
                "{what}: the error says what was too big: {err}"
            );
        }
        for key in ["alice", "bob"] {
            let r = client
                .get("bank", key.as_bytes(), proto::Consistency::Linearizable)
                .await
                .unwrap();
            assert!(!r.found, "a refused transaction stored {key}");
        }
    });
}

/// Kills the node process on drop, even when the test fails half-way.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node past its bound of requests in flight refuses more at once with RESOURCE_EXHAUSTED
/// (exit 3) instead of queueing them. The node runs alone out of three members, so it never
/// has a leader and every keyspace creation holds its slot until its deadline.
#[test]
fn requests_past_the_in_flight_bound_are_refused_at_once() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let ports = crate::harness::free_ports(4);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let node = std::process::Command::new(crate::harness::BIN)
        .args(["node", "--id", "1", "--listen", &listen])
        .args(["--http", &format!("127.0.0.1:{}", ports[1])])
        .arg("--data-dir")
        .arg(dir.path().join("node1"))
        .args([
            "--peers",
            &format!("1={listen},2=127.0.0.1:{},3=127.0.0.1:{}", ports[2], ports[3]),
            "--max-requests-in-flight",
            "2",
            // Slow elections: the node gives up on a leader only after its requests' deadline.
            "--heartbeat-interval-ms",
            "2000",
            "--election-timeout-ms-min",
            "8000",
            "--election-timeout-ms-max",
            "9000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the node starts");
    let _node = Killed(node);
    let rt = runtime();
    let lib = std::sync::Arc::new(Lib::new(vec![listen.clone()], Duration::from_secs(4)).unwrap());
    poll_for(Duration::from_secs(20), "the node to answer", || {
        rt.block_on(lib.status_of(0)).map(|_| ()).map_err(|e| e.to_string())
    });
    rt.block_on(async {
        // Two creations fill both slots and wait for a leader that never comes.
        let holders: Vec<_> = (0..2)
            .map(|i| {
                let lib = lib.clone();
                tokio::spawn(async move { lib.create_keyspace(&format!("held{i}"), capkv::Mode::Cp).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let mut raw = capkv::proto::keyspaces_client::KeyspacesClient::connect(format!("http://{listen}"))
            .await
            .unwrap();
        let refused = raw
            .create(capkv::proto::CreateKeyspaceRequest {
                name: "third".into(),
                mode: capkv::proto::Mode::Cp as i32,
            })
            .await
            .expect_err("past the bound");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("limit of 2 requests"), "{refused:?}");
        let err = lib
            .create_keyspace("fourth", capkv::Mode::Cp)
            .await
            .expect_err("past the bound");
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once, not after a wait"
        );
        for holder in holders {
            let held = holder.await.unwrap().expect_err("no leader, ever");
            assert_ne!(held.exit_code(), 0, "{held}");
        }
    });
}
