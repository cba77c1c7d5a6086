//! etcd as a [`Target`]: the same workload capkv gets, sent through etcd's own v3 KV API.
//!
//! A put is `KV/Put`; a linearizable get is `KV/Range` (etcd runs a ReadIndex round for it) and a
//! serializable get is `KV/Range` with `serializable = true` (the member's local copy); a swap is a
//! `KV/Txn` whose one compare is "value equals expected" — the same three guarantees capkv's cp
//! keyspaces give, so the numbers compare like with like.

use std::time::Duration;

use capkv::bench::Target;
use capkv::Error;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::pb;
use crate::pb::kv_client::KvClient;

/// One connection to one etcd member.
pub struct EtcdTarget {
    kv: KvClient<Channel>,
    timeout: Duration,
}

impl EtcdTarget {
    /// Connects lazily to `addr` (`HOST:PORT`, a member's client URL without the scheme).
    pub fn new(addr: &str, timeout: Duration) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::InvalidInput(format!("bad etcd endpoint {addr}: {e}")))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            kv: KvClient::new(channel),
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}

/// Sorts etcd's answers into capkv's exit classes, so both systems' failures count alike.
fn from_status(status: Status) -> Error {
    let what = format!("etcd: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => Error::OutcomeUnknown(what),
        Code::Unavailable => Error::Unreachable(what),
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => Error::InvalidInput(what),
        _ => Error::Internal(what),
    }
}

impl Target for EtcdTarget {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let message = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        self.kv.clone().put(self.request(message)).await.map_err(from_status)?;
        Ok(())
    }

    async fn get(&self, key: &[u8], linearizable: bool) -> Result<Option<Vec<u8>>, Error> {
        let message = pb::RangeRequest {
            key: key.to_vec(),
            serializable: !linearizable,
            ..Default::default()
        };
        let answer = self
            .kv
            .clone()
            .range(self.request(message))
            .await
            .map_err(from_status)?;
        Ok(answer.into_inner().kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<bool, Error> {
        let compare = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            key: key.to_vec(),
            target_union: Some(pb::compare::TargetUnion::Value(expected.to_vec())),
        };
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: new.to_vec(),
                ..Default::default()
            })),
        };
        let message = pb::TxnRequest {
            compare: vec![compare],
            success: vec![put],
            failure: Vec::new(),
        };
        let answer = self.kv.clone().txn(self.request(message)).await.map_err(from_status)?;
        Ok(answer.into_inner().succeeded)
    }
}
