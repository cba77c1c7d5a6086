//! Random bytes at every gRPC method of a running cluster: nothing panics, nothing dies, no data
//! changes, and the cluster serves afterwards.
//!
//! A tonic client with a codec that sends its bytes unchanged throws about 2000 payloads (seeded:
//! `CAPKV_GARBAGE_SEED` replays a run; the seed is printed) at every method of the public
//! services (Kv, Keyspaces, Cluster, Fault, Backup, gRPC health) and of the peer service, spread
//! over the three nodes. Half the payloads are random bytes (which mostly stop at protobuf
//! decoding); the other half are valid messages with random contents, so the checks behind
//! decoding see garbage too: public requests with random keyspaces, keys (never the ones this
//! test reads back), limits, partitions and clock offsets; peer envelopes (group 0, a member's
//! id, a stranger's, or the receiver's own) around random bincode payloads, some with a forged
//! length prefix (which aborted a node before the codec had a limit).
//!
//! Afterwards: every node process still runs and no node logged a panic; after a `fault heal`
//! (the fault API is open by design, so garbage that happens to decode as a partition or clock
//! offset is a legitimate command) every node answers `/health` with 200, the cp and ap keys
//! written before read back unchanged, and new puts succeed.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::harness::{expect_value, http_get, poll_for, Cluster};

/// Payloads thrown in all, spread over methods and nodes.
const PAYLOADS: usize = 2000;
/// How long one garbage call may take before the client gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Unary methods of the public services.
const PUBLIC_UNARY: &[&str] = &[
    "/capkv.v1.Kv/Get",
    "/capkv.v1.Kv/Put",
    "/capkv.v1.Kv/Delete",
    "/capkv.v1.Kv/Scan",
    "/capkv.v1.Kv/CompareAndSwap",
    "/capkv.v1.Kv/Txn",
    "/capkv.v1.Keyspaces/Create",
    "/capkv.v1.Keyspaces/List",
    "/capkv.v1.Keyspaces/Describe",
    "/capkv.v1.Cluster/Status",
    "/capkv.v1.Fault/Partition",
    "/capkv.v1.Fault/Heal",
    "/capkv.v1.Fault/Status",
    "/capkv.v1.Fault/Clock",
    "/capkv.v1.Backup/ImportAp",
    "/grpc.health.v1.Health/Check",
];

/// The server-streaming methods.
const STREAMING: &[&str] = &["/capkv.v1.Backup/Export", "/capkv.v1.Backup/Create"];

/// Methods of the peer service whose request is a `RaftMessage`.
const PEER_RAFT: &[&str] = &[
    "/capkv.v1.Peer/AppendEntries",
    "/capkv.v1.Peer/Vote",
    "/capkv.v1.Peer/InstallSnapshot",
];

/// The other peer methods.
const PEER_OTHER: &[&str] = &[
    "/capkv.v1.Peer/Ap",
    "/capkv.v1.Peer/Ping",
    "/capkv.v1.Peer/SetPartition",
    "/capkv.v1.Peer/SetClockOffset",
    "/capkv.v1.Peer/GetFaultState",
];

/// A codec that sends and returns message bytes unchanged.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Random bytes: mostly short, sometimes up to 64 KiB.
fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.gen_ratio(1, 20) {
        rng.gen_range(0..64 * 1024)
    } else {
        rng.gen_range(0..96)
    };
    (0..len).map(|_| rng.gen()).collect()
}

/// A bincode payload that claims a huge string or vector: a few random bytes (an enum variant, a
/// field or two), then a length prefix (`253` and a little-endian `u64`), then a short tail.
/// A decoder that allocates what the prefix claims aborts the node.
fn forged_length(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rng.gen_range(1..4)).map(|_| rng.gen_range(0..4)).collect();
    bytes.push(253);
    bytes.extend(rng.gen_range(1u64 << 32..u64::MAX).to_le_bytes());
    bytes.extend((0..rng.gen_range(0..8)).map(|_| rng.gen::<u8>()));
    bytes
}

/// A bincode payload: random bytes, or one with a forged length.
fn bincode_payload(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.3) {
        forged_length(rng)
    } else {
        random_bytes(rng)
    }
}

/// A sender id: a member, a stranger, 0, or the receiver itself (`to`).
fn random_sender(rng: &mut StdRng, to: u64) -> u64 {
    match rng.gen_range(0..5) {
        0 => to,
        1 => 0,
        2 => rng.gen(),
        _ => rng.gen_range(1..=3),
    }
}

/// A keyspace name: one that exists, a valid unknown one, an invalid one, or none.
fn keyspace(rng: &mut StdRng) -> String {
    match rng.gen_range(0..6) {
        0 | 1 => "bank".into(),
        2 | 3 => "notes".into(),
        4 => (0..rng.gen_range(1..70))
            .map(|_| rng.gen_range(b'a'..=b'z') as char)
            .collect(),
        _ => String::from_utf8_lossy(&random_bytes(rng)).into_owned(),
    }
}

/// A key this test never reads back (at least 8 bytes; the test's keys have 2), or an empty or
/// over-long one.
fn key(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => Vec::new(),
        1 => vec![b'x'; 4097],
        _ => (0..rng.gen_range(8..40)).map(|_| rng.gen()).collect(),
    }
}

/// A small random value, sometimes empty.
fn value(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect()
}

/// A valid request message for a public `method`, with random contents. Fields this test does
/// not fill (request messages gain fields over time) keep their defaults.
#[allow(clippy::needless_update)]
fn public_request(rng: &mut StdRng, method: &str) -> Vec<u8> {
    use capkv::proto::*;
    let name = method.rsplit('/').next().unwrap_or_default();
    let service = method.split('/').nth(1).unwrap_or_default();
    match (service, name) {
        ("capkv.v1.Kv", "Get") => GetRequest {
            keyspace: keyspace(rng),
            key: key(rng),
            consistency: rng.gen_range(-1..6),
            ..Default::default()
        }
        .encode_to_vec(),
        ("capkv.v1.Kv", "Put") => PutRequest {
            keyspace: keyspace(rng),
            key: key(rng),
            value: value(rng),
            acks: rng.gen_range(0..6),
            ..Default::default()
        }
        .encode_to_vec(),
        ("capkv.v1.Kv", "Delete") => DeleteRequest {
            keyspace: keyspace(rng),
            key: key(rng),
            acks: rng.gen(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("capkv.v1.Kv", "Scan") => ScanRequest {
            keyspace: keyspace(rng),
            prefix: value(rng),
            start_after: value(rng),
            limit: rng.gen(),
            consistency: rng.gen_range(-1..6),
        }
        .encode_to_vec(),
        ("capkv.v1.Kv", "CompareAndSwap") => CasRequest {
            keyspace: keyspace(rng),
            key: key(rng),
            expect_absent: rng.gen(),
            expected: value(rng),
            new_value: value(rng),
            ..Default::default()
        }
        .encode_to_vec(),
        ("capkv.v1.Kv", "Txn") => {
            let op = |rng: &mut StdRng| TxnOp {
                op: Some(match rng.gen_range(0..3) {
                    0 => txn_op::Op::Put(PutOp {
                        key: key(rng),
                        value: value(rng),
                    }),
                    1 => txn_op::Op::Delete(DeleteOp { key: key(rng) }),
                    _ => txn_op::Op::Get(GetOp { key: key(rng) }),
                }),
            };
            let compares = (0..rng.gen_range(0..4))
                .map(|_| Compare {
                    key: key(rng),
                    target: rng.gen_range(-1..5),
                    op: rng.gen_range(-1..5),
                    value: value(rng),
                    number: rng.gen(),
                })
                .collect();
            let success = (0..rng.gen_range(0..5)).map(|_| op(rng)).collect();
            let failure = (0..rng.gen_range(0..3)).map(|_| op(rng)).collect();
            TxnRequest {
                keyspace: keyspace(rng),
                compares,
                success,
                failure,
                ..Default::default()
            }
            .encode_to_vec()
        }
        ("capkv.v1.Keyspaces", "Create") => CreateKeyspaceRequest {
            name: keyspace(rng),
            mode: rng.gen_range(-1..4),
        }
        .encode_to_vec(),
        ("capkv.v1.Keyspaces", "Describe") => DescribeKeyspaceRequest { name: keyspace(rng) }.encode_to_vec(),
        // Always with a node that is not a member: a valid partition is a legitimate command
        // (the fault API is open by design), and one would slow every later call to a timeout.
        ("capkv.v1.Fault", "Partition") => PartitionRequest {
            groups: (0..rng.gen_range(1..4))
                .map(|i| Group {
                    nodes: std::iter::once(if i == 0 {
                        rng.gen_range(4..6)
                    } else {
                        rng.gen_range(0..6)
                    })
                    .chain((0..rng.gen_range(0..3)).map(|_| rng.gen_range(0..6)))
                    .collect(),
                })
                .collect(),
        }
        .encode_to_vec(),
        ("capkv.v1.Fault", "Clock") => ClockRequest {
            node_id: rng.gen_range(0..6),
            offset_ms: if rng.gen() {
                rng.gen()
            } else {
                rng.gen_range(-100_000..100_000)
            },
        }
        .encode_to_vec(),
        ("capkv.v1.Backup", "Export") => ExportRequest {
            keyspaces: (0..rng.gen_range(0..3)).map(|_| keyspace(rng)).collect(),
        }
        .encode_to_vec(),
        ("capkv.v1.Backup", "ImportAp") => ImportApRequest {
            keyspace: keyspace(rng),
            records: (0..rng.gen_range(0..4))
                .map(|_| BackupRecord {
                    key: key(rng),
                    value: value(rng),
                    tombstone: rng.gen(),
                    ap_version: rng.gen::<bool>().then(|| capkv::proto::Version {
                        physical_ms: rng.gen(),
                        logical: rng.gen(),
                        node_id: rng.gen(),
                    }),
                    removed: rng.gen(),
                })
                .collect(),
        }
        .encode_to_vec(),
        // List, Status, Heal, health Check: their requests have no fields worth filling.
        _ => random_bytes(rng),
    }
}

/// A payload for `method` on node `to`: random bytes, or a valid message with random contents.
fn payload(rng: &mut StdRng, method: &str, to: u64) -> Vec<u8> {
    if rng.gen_bool(0.5) {
        return random_bytes(rng);
    }
    let from = random_sender(rng, to);
    if !method.starts_with("/capkv.v1.Peer/") {
        public_request(rng, method)
    } else if PEER_RAFT.contains(&method) {
        capkv::proto::RaftMessage {
            group_id: if rng.gen_ratio(1, 10) { rng.gen() } else { 0 },
            from,
            payload: bincode_payload(rng).into(),
        }
        .encode_to_vec()
    } else if method.ends_with("/Ap") {
        capkv::proto::ApMessage {
            from,
            payload: bincode_payload(rng).into(),
        }
        .encode_to_vec()
    } else if method.ends_with("/Ping") {
        capkv::proto::PingRequest { from }.encode_to_vec()
    } else {
        random_bytes(rng)
    }
}

/// Sends `bytes` to `method` on `channel`; the status it ended with (`Ok` included).
async fn throw(channel: tonic::transport::Channel, method: &'static str, bytes: Vec<u8>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut request = tonic::Request::new(bytes);
    request.set_timeout(CALL_TIMEOUT);
    let call = async {
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::from_static(method);
        if STREAMING.contains(&method) {
            let mut pages = grpc.server_streaming(request, path, RawCodec).await?.into_inner();
            while pages.message().await?.is_some() {}
            Ok(())
        } else {
            grpc.unary(request, path, RawCodec).await.map(drop)
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(())) => (Code::Ok, String::new()),
        Ok(Err(status)) => (status.code(), status.message().to_string()),
        Err(_) => (Code::DeadlineExceeded, "no answer in time".into()),
    }
}

/// How often `method` ended with one status code, and one message it came with.
type Tally = Vec<((&'static str, Code), (usize, String))>;

/// Throws [`PAYLOADS`] payloads at every method of every node; returns the tally.
fn throw_garbage(cluster: &Cluster, seed: u64) -> Tally {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let methods: Vec<&'static str> = PUBLIC_UNARY
        .iter()
        .chain(STREAMING)
        .chain(PEER_RAFT)
        .chain(PEER_OTHER)
        .copied()
        .collect();
    let ids = cluster.ids();
    rt.block_on(async {
        let mut channels = Vec::new();
        for id in &ids {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(*id)))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(3))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to node {id}: {e}"));
            channels.push(channel);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = std::collections::BTreeMap::<(&'static str, i32), (usize, String)>::new();
        for i in 0..PAYLOADS {
            let method = methods[i % methods.len()];
            let node = rng.gen_range(0..ids.len());
            let bytes = payload(&mut rng, method, ids[node]);
            let (code, message) = throw(channels[node].clone(), method, bytes).await;
            let entry = counts.entry((method, code as i32)).or_insert((0, message));
            entry.0 += 1;
        }
        counts
            .into_iter()
            .map(|((m, c), n)| ((m, Code::from_i32(c)), n))
            .collect()
    })
}

#[test]
fn random_payloads_at_every_method_change_nothing_and_kill_nothing() {
    let seed = std::env::var("CAPKV_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("garbage seed {seed} (replay with CAPKV_GARBAGE_SEED={seed})");
    let cluster = Cluster::start(3);
    let c = cluster.client();
    c.create_keyspace("bank", "cp");
    c.create_keyspace("notes", "ap");
    let keys: Vec<(String, String)> = (0..5).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    for (k, v) in &keys {
        c.put("bank", k, v).expect_code(0);
        c.put("notes", k, v).expect_code(0);
    }

    let started = Instant::now();
    let counts = throw_garbage(&cluster, seed);
    println!(
        "{PAYLOADS} payloads in {:.1} s (seed {seed}):",
        started.elapsed().as_secs_f64()
    );
    for ((method, code), (n, message)) in &counts {
        let message: String = message.chars().take(90).collect();
        println!("  {method:<34} {:<18} {n:>4}  {message}", format!("{code:?}"));
    }
    cluster.assert_running();
    for id in cluster.ids() {
        let log = cluster.log_text(id);
        assert!(
            !log.contains("panicked"),
            "node {id} logged a panic (seed {seed}):\n{}",
            log.lines()
                .filter(|l| l.contains("panicked"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let answered: usize = counts
        .iter()
        .filter(|((_, code), _)| !matches!(code, Code::Unavailable | Code::DeadlineExceeded))
        .map(|(_, (n, _))| n)
        .sum();
    assert!(
        answered * 10 >= PAYLOADS * 9,
        "most payloads must get an answer (seed {seed}); only {answered} of {PAYLOADS} did"
    );

    c.run(&["fault", "heal"]).expect_code(0);
    cluster.wait_ready(Duration::from_secs(15));
    for id in cluster.ids() {
        let addr = cluster.http_addr(id);
        poll_for(
            Duration::from_secs(15),
            &format!("/health on node {id} = 200"),
            || match http_get(&addr, "/health") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}: {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    for (k, v) in &keys {
        expect_value(&c.get("bank", k), v);
        expect_value(&c.get("notes", k), v);
    }
    c.put("bank", "after", "garbage").expect_code(0);
    c.put("notes", "after", "garbage").expect_code(0);
    expect_value(&c.get("bank", "after"), "garbage");
    cluster.assert_running();
}

/// Sends one prost message to a peer method of `endpoint`; the status it ended with.
fn send_peer<M: Message + 'static>(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    method: &'static str,
    message: M,
) -> Status {
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        match throw(channel, method, message.encode_to_vec()).await {
            (Code::Ok, _) => Status::ok(""),
            (code, message) => Status::new(code, message),
        }
    })
}

/// The term node `id` reports.
fn term_of(cluster: &Cluster, id: u64) -> u64 {
    let out = cluster.client_at(id).run(&["cluster", "status", "-o", "json"]);
    let json = out.ok_json();
    let nodes = json["nodes"].as_array().cloned().unwrap_or_else(|| vec![json.clone()]);
    nodes
        .iter()
        .find(|n| n["node_id"].as_u64() == Some(id) || n["id"].as_u64() == Some(id))
        .and_then(|n| n["term"].as_u64())
        .unwrap_or_else(|| panic!("no term for node {id} in {json}"))
}

/// Forged peer messages on the wire: each bound of the peer service refuses them with
/// `invalid_argument` and a sentence naming what was wrong, and the term does not move.
#[test]
fn forged_peer_messages_are_refused_with_a_reason() {
    use capkv::proto::{ClockRequest, Group, PingRequest, RaftMessage, SetPartitionRequest};
    use openraft::raft::{InstallSnapshotRequest, VoteRequest};
    use openraft::{SnapshotMeta, Vote};

    let cluster = Cluster::start(3);
    let leader = cluster.leader_id();
    let target = cluster.other_than(leader);
    let endpoint = cluster.endpoint(target);
    let term = term_of(&cluster, target);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let raft = |from: u64, payload: Vec<u8>| RaftMessage {
        group_id: 0,
        from,
        payload: payload.into(),
    };
    let vote = |term: u64, candidate: u64| {
        capkv::storage::codec::encode(&VoteRequest::<u64>::new(Vote::new(term, candidate), None))
    };
    let member = cluster
        .ids()
        .into_iter()
        .find(|id| *id != target)
        .expect("another member");
    let other = cluster
        .ids()
        .into_iter()
        .find(|id| *id != target && *id != member)
        .expect("a third member");
    let snapshot = capkv::storage::codec::encode(&InstallSnapshotRequest::<capkv::cp::TypeConfig> {
        vote: Vote::new_committed(term + 100, member),
        meta: SnapshotMeta::default(),
        offset: u64::MAX - 4,
        data: vec![0; 8],
        done: false,
    });

    let cases: Vec<(&str, Status, &str)> = vec![
        (
            "a ping from a stranger",
            send_peer(&rt, &endpoint, "/capkv.v1.Peer/Ping", PingRequest { from: 99 }),
            "node 99 is not a member",
        ),
        (
            "a ping in this node's own name",
            send_peer(&rt, &endpoint, "/capkv.v1.Peer/Ping", PingRequest { from: target }),
            "names this node",
        ),
        (
            "a vote from a stranger",
            send_peer(&rt, &endpoint, "/capkv.v1.Peer/Vote", raft(7, vote(term + 100, 7))),
            "node 7 is not a member",
        ),
        (
            "a vote whose candidate is another member",
            send_peer(
                &rt,
                &endpoint,
                "/capkv.v1.Peer/Vote",
                raft(member, vote(term + 100, other)),
            ),
            "must name the same node",
        ),
        (
            "a snapshot chunk past the limit",
            send_peer(&rt, &endpoint, "/capkv.v1.Peer/InstallSnapshot", raft(member, snapshot)),
            "beyond the snapshot limit",
        ),
        (
            "a clock offset of two days",
            send_peer(
                &rt,
                &endpoint,
                "/capkv.v1.Peer/SetClockOffset",
                ClockRequest {
                    node_id: target,
                    offset_ms: 2 * 86_400_000,
                },
            ),
            "one day",
        ),
        (
            "a partition naming a stranger",
            send_peer(
                &rt,
                &endpoint,
                "/capkv.v1.Peer/SetPartition",
                SetPartitionRequest {
                    from: member,
                    groups: vec![Group { nodes: vec![1, 2] }, Group { nodes: vec![9] }],
                    reset_clock: false,
                },
            ),
            "node 9 is not a member",
        ),
    ];
    for (what, status, reason) in &cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{what}: '{}' should say '{reason}'",
            status.message()
        );
    }
    assert_eq!(term_of(&cluster, target), term, "a refused vote must not move the term");
    let out = cluster.client().run(&["fault", "status", "-o", "json"]);
    let text = out.stdout.clone();
    assert!(
        !text.contains("86400000") && !text.contains("172800000"),
        "no clock offset was set: {text}"
    );
    cluster.assert_running();
}
