//! TLS as `cluster up --tls` sets it up: TLS on the client ports, mutual TLS on the peer ports,
//! and node ids bound to certificates.
//!
//! `tls_keeps_strangers_out_and_members_to_their_own_name` (with `--auth` as well): a client that
//! trusts the cluster's CA works; a plaintext client and a client that trusts another CA are refused (exit 3, never
//! sent); on the peer port, a TLS client without a member certificate cannot even connect, and
//! node 3's certificate cannot send a message as node 1 (while it can as node 3).

use capkv::proto::{peer_client::PeerClient, PingRequest};

use crate::harness::{run, UpCluster};

#[test]
fn tls_keeps_strangers_out_and_members_to_their_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = UpCluster::start(dir.path(), &["--tls", "--auth"]);
    let (up, data, peer) = (&cluster.up, &cluster.data, cluster.peer);
    let tls = data.join("tls");
    let ca = tls.join("ca.pem");
    assert!(
        up.stdout.contains(&format!("export CAPKV_CACERT={}", ca.display())),
        "{}",
        up.describe()
    );
    let endpoints = cluster.endpoints();
    let ca_arg = ca.to_str().unwrap();
    // With --auth too: the tokens ride inside TLS.
    let admin = std::fs::read_to_string(data.join("auth").join("admin.token")).unwrap();
    let admin = admin.trim();
    let with = |extra: &[&str], args: &[&str]| {
        let mut all = vec!["--endpoints", &endpoints, "--timeout", "3s", "--token", admin];
        all.extend(extra);
        all.extend(args);
        run(&all)
    };

    with(&["--cacert", ca_arg], &["keyspace", "create", "bank", "--mode", "cp"]).expect_code(0);
    with(&["--cacert", ca_arg], &["put", "bank", "alice", "100"]).expect_code(0);
    let got = with(&["--cacert", ca_arg], &["get", "bank", "alice", "-o", "json"]);
    assert_eq!(got.ok_json()["value"], "100", "{}", got.describe());

    // A plaintext client cannot tell a TLS node from a broken connection: it fails (exit 4, as
    // any broken connection after sending) and says what to try.
    let plain = with(&[], &["get", "bank", "alice"]);
    plain.expect_code(4);
    assert!(plain.stderr.contains("pass --cacert"), "{}", plain.describe());
    let other = dir.path().join("other-ca");
    capkv::tls::write_cluster_certs(&other, 1).unwrap();
    let stranger = with(
        &["--cacert", other.join("ca.pem").to_str().unwrap()],
        &["get", "bank", "alice"],
    );
    stranger.expect_code(3);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ping = |cert: Option<u64>, from: u64, port: u16| {
        let (ca, tls) = (ca.clone(), tls.clone());
        rt.block_on(async move {
            let key = cert.map(|id| (tls.join(format!("node-{id}.pem")), tls.join(format!("node-{id}.key"))));
            let config = capkv::tls::client_config(
                &ca,
                key.as_ref().map(|k| k.0.as_path()),
                key.as_ref().map(|k| k.1.as_path()),
            )
            .unwrap();
            let endpoint = capkv::net::endpoint(&format!("127.0.0.1:{port}"), Some(&config)).unwrap();
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            PeerClient::new(channel)
                .ping(PingRequest { from })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    };
    // Node 2's peer port.
    let node2 = peer + 1;
    assert!(ping(None, 3, node2).is_err(), "no member certificate, no connection");
    let forged = ping(Some(3), 1, node2).expect_err("node 3's certificate speaking as node 1");
    assert!(forged.contains("does not name node-1.capkv"), "{forged}");
    ping(Some(3), 3, node2).expect("node 3 speaking as itself");
    // The data is still there and writable.
    with(&["--cacert", ca_arg], &["put", "bank", "bob", "5"]).expect_code(0);
}
