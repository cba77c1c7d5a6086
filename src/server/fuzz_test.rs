//! No panic from any bytes: property tests that feed arbitrary bytes, and mutated valid
//! encodings, to every decoder that bytes from the network reach.
//!
//! - the peer service's bincode payloads ([`crate::storage::codec::decode`]): openraft's
//!   AppendEntries, Vote and InstallSnapshot requests for our [`TypeConfig`], the answers a node
//!   decodes from its peers, and the ap protocol's [`Request`] and [`Response`];
//! - prost's decoding of every request message of the public and peer services.
//!
//! The snapshot frame reader has its own tests beside it (`cp/snapshot.rs`). A decoder may refuse
//! anything; it must not panic, and must not abort the process by trying to allocate what a
//! forged length prefix claims (a panic in a test is a failure, an abort kills the test binary).
//! Each property prints its failing input (proptest shrinks it and records it under
//! `proptest-regressions/`, so a failure replays).
//!
//! Caveats: these are property tests over a few hundred cases per run, not coverage-guided
//! fuzzing; they find crashes reachable by random and lightly mutated bytes, not deep ones.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use proptest::prelude::*;
use prost::Message;

use crate::ap::hlc::Timestamp;
use crate::ap::replica::protocol::{Request, Response};
use crate::ap::store::Entry as ApEntry;
use crate::ap::version::{Version, Versioned};
use crate::cp::{NodeId, TypeConfig};
use crate::proto;
use crate::storage::codec::{decode, encode};

/// Decodes `bytes` as every peer payload type; any answer is fine, a panic is not.
fn decode_every_peer_payload(bytes: &[u8]) {
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode::<VoteRequest<NodeId>>(bytes);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes);
    let _ = decode::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(bytes);
    let _ = decode::<Request>(bytes);
    let _ = decode::<Response>(bytes);
}

/// Decodes `bytes` as every request message of the public and peer services.
fn decode_every_proto_request(bytes: &[u8]) {
    let _ = proto::GetRequest::decode(bytes);
    let _ = proto::PutRequest::decode(bytes);
    let _ = proto::DeleteRequest::decode(bytes);
    let _ = proto::ScanRequest::decode(bytes);
    let _ = proto::CasRequest::decode(bytes);
    let _ = proto::TxnRequest::decode(bytes);
    let _ = proto::CreateKeyspaceRequest::decode(bytes);
    let _ = proto::ListKeyspacesRequest::decode(bytes);
    let _ = proto::DescribeKeyspaceRequest::decode(bytes);
    let _ = proto::StatusRequest::decode(bytes);
    let _ = proto::PartitionRequest::decode(bytes);
    let _ = proto::HealRequest::decode(bytes);
    let _ = proto::FaultStatusRequest::decode(bytes);
    let _ = proto::ClockRequest::decode(bytes);
    let _ = proto::ExportRequest::decode(bytes);
    let _ = proto::ImportApRequest::decode(bytes);
    let _ = proto::RaftMessage::decode(bytes);
    let _ = proto::SetPartitionRequest::decode(bytes);
    let _ = proto::PingRequest::decode(bytes);
    let _ = proto::ApMessage::decode(bytes);
}

fn membership() -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(format!("127.0.0.1:700{id}"))))
        .collect();
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    Membership::new(vec![voters], nodes)
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn ap_entry(key: &[u8], value: Option<&[u8]>) -> ApEntry {
    ApEntry {
        keyspace: "notes".into(),
        key: key.to_vec(),
        versioned: Versioned {
            version: Version {
                hlc: Timestamp {
                    physical_ms: 1_700_000_000_000,
                    logical: 3,
                },
                node: 2,
            },
            value: value.map(<[u8]>::to_vec),
        },
    }
}

/// Valid encodings of every peer payload type, as real nodes send them.
fn valid_peer_payloads() -> Vec<Vec<u8>> {
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(4, 1),
        prev_log_id: Some(log_id(3, 10)),
        entries: vec![
            Entry {
                log_id: log_id(4, 11),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(4, 12),
                payload: EntryPayload::Membership(membership()),
            },
        ],
        leader_commit: Some(log_id(4, 11)),
    };
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(4, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(4, 12)),
            last_membership: StoredMembership::new(Some(log_id(4, 12)), membership()),
            snapshot_id: "4-12-7".into(),
        },
        offset: 1024,
        data: b"CAPKVSN1 some frames".to_vec(),
        done: false,
    };
    let vote_ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse {
        vote: Vote::new(5, 2),
        vote_granted: true,
        last_log_id: Some(log_id(4, 12)),
    });
    vec![
        encode(&append),
        encode(&VoteRequest::new(Vote::new(5, 2), Some(log_id(4, 12)))),
        encode(&snapshot),
        encode(&vote_ok),
        encode(&Request::Push(vec![ap_entry(b"a", Some(b"1")), ap_entry(b"b", None)])),
        encode(&Request::Digest {
            keyspace: "notes".into(),
            level: 1,
            nodes: vec![0, 5],
            hashes: vec![7, 9],
            horizon: 42,
        }),
        encode(&Request::Fetch {
            keyspace: "notes".into(),
            buckets: vec![1, 2],
            after: Some(b"a".to_vec()),
            upto: None,
            entries: vec![ap_entry(b"c", Some(b"3"))],
        }),
        encode(&Request::Read {
            keyspace: "notes".into(),
            key: b"k".to_vec(),
        }),
        encode(&Response::Fetched {
            entries: vec![ap_entry(b"d", Some(b"4"))],
            truncated_at: Some(b"d".to_vec()),
            hints_pending: false,
        }),
        encode(&Response::Digest {
            hashes: vec![1, 2, 3],
            horizon: 9,
            hints_pending: true,
        }),
    ]
}

/// Valid encodings of public request messages with every kind of field filled.
fn valid_proto_requests() -> Vec<Vec<u8>> {
    let txn = proto::TxnRequest {
        keyspace: "bank".into(),
        compares: vec![proto::Compare {
            key: b"k".to_vec(),
            target: 2,
            op: 3,
            value: b"v".to_vec(),
            number: 9,
        }],
        success: vec![proto::TxnOp {
            op: Some(proto::txn_op::Op::Put(proto::PutOp {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })),
        }],
        failure: vec![proto::TxnOp {
            op: Some(proto::txn_op::Op::Get(proto::GetOp { key: b"k".to_vec() })),
        }],
        request_id: Some(proto::RequestId {
            client: vec![1; 16],
            sequence: 7,
            automatic: true,
        }),
    };
    let import = proto::ImportApRequest {
        keyspace: "notes".into(),
        records: vec![proto::BackupRecord {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            tombstone: false,
            ap_version: Some(proto::Version {
                physical_ms: 5,
                logical: 1,
                node_id: 2,
            }),
            removed: false,
        }],
    };
    let partition = proto::PartitionRequest {
        groups: vec![proto::Group { nodes: vec![1, 2] }, proto::Group { nodes: vec![3] }],
    };
    vec![
        txn.encode_to_vec(),
        import.encode_to_vec(),
        partition.encode_to_vec(),
        proto::RaftMessage {
            group_id: 0,
            from: 2,
            payload: vec![1, 2, 3].into(),
        }
        .encode_to_vec(),
    ]
}

/// `valid` with `edits` applied (each `(position, xor)`, positions taken modulo the length),
/// cut to `keep` bytes when shorter.
fn mutate(valid: &[u8], edits: &[(usize, u8)], keep: usize) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for (at, xor) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
    }
    bytes.truncate(keep);
    bytes
}

/// A bincode length prefix (standard config: varint, `253` then a little-endian `u64`).
fn huge_length(len: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend(len.to_le_bytes());
    bytes
}

#[test]
fn a_forged_length_prefix_is_refused_without_allocating_it() {
    // ap Read { keyspace: <string of 2^60 bytes> }: variant 3, then the keyspace's length.
    for len in [1u64 << 60, 1 << 40, 1 << 33, u64::MAX] {
        let mut bytes = vec![3];
        bytes.extend(huge_length(len));
        assert!(
            decode::<Request>(&bytes).is_err(),
            "a {len}-byte keyspace name in a short message"
        );
    }
    // Vote { leader_id: { term, node_id }, committed }, last_log_id: None, then trailing bytes
    // claiming a vector: refused as trailing bytes, never read as a length.
    let mut vote = encode(&VoteRequest::new(Vote::new(1, 2), None));
    vote.extend(huge_length(1 << 60));
    assert!(decode::<VoteRequest<NodeId>>(&vote).is_err());
    // A snapshot's id is a string: an absurd length there is refused too.
    let snapshot = encode(&InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        meta: SnapshotMeta::default(),
        offset: 0,
        data: vec![],
        done: true,
    });
    for at in 0..snapshot.len() {
        let mut forged = snapshot[..at].to_vec();
        forged.extend(huge_length(1 << 50));
        decode_every_peer_payload(&forged);
    }
}

#[test]
fn the_valid_samples_decode() {
    let payloads = valid_peer_payloads();
    assert!(decode::<AppendEntriesRequest<TypeConfig>>(&payloads[0]).is_ok());
    assert!(decode::<VoteRequest<NodeId>>(&payloads[1]).is_ok());
    assert!(decode::<InstallSnapshotRequest<TypeConfig>>(&payloads[2]).is_ok());
    assert!(decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(&payloads[3]).is_ok());
    for p in &payloads[4..8] {
        assert!(decode::<Request>(p).is_ok());
    }
    for p in &payloads[8..] {
        assert!(decode::<Response>(p).is_ok());
    }
    let requests = valid_proto_requests();
    assert_eq!(
        proto::TxnRequest::decode(requests[0].as_slice()).unwrap().success.len(),
        1
    );
    assert_eq!(
        proto::ImportApRequest::decode(requests[1].as_slice())
            .unwrap()
            .records
            .len(),
        1
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_a_peer_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_every_peer_payload(&bytes);
    }

    #[test]
    fn mutated_peer_payloads_never_panic_a_decoder(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), 1u8..), 1..6),
        keep in 0usize..2048,
    ) {
        let payloads = valid_peer_payloads();
        let bytes = mutate(which.get::<Vec<u8>>(&payloads), &edits, keep);
        decode_every_peer_payload(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_proto_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_every_proto_request(&bytes);
    }

    #[test]
    fn mutated_proto_requests_never_panic_a_decoder(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), 1u8..), 1..6),
        keep in 0usize..1024,
    ) {
        let requests = valid_proto_requests();
        let bytes = mutate(which.get::<Vec<u8>>(&requests), &edits, keep);
        decode_every_proto_request(&bytes);
    }
}
