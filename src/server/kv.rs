//! The public `Kv` service: a thin dispatcher in front of the two paths.
//!
//! Every handler does the same four things: admit the request (the fault filter holds a
//! forwarded request that crossed a partition), check its input against the limits once, look
//! up the keyspace's mode in this node's replica of the metadata, and hand the request to that
//! mode's implementation of [`KvPath`] (`cp/kv.rs` or `ap/kv.rs`). A keyspace this node does not
//! know yet goes to the CP path, whose leader has the final word. Every request is counted and
//! timed in the metrics, labelled by keyspace (`unknown` for names this node does not know),
//! mode, operation and outcome.
//!
//! An answer too large to send ([`RESPONSE_BYTES_MAX`]) is an error that says what the client
//! may assume: a write already ran (it was committed before its answer was built), so its
//! outcome is unknown to the client (exit 4), never "invalid" (exit 5, "nothing happened").

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::keyspace::{validate_key, validate_name, validate_value};
use crate::kv::KvPath;
use crate::limits::{KEY_BYTES_MAX, RESPONSE_BYTES_MAX, TXN_BYTES_MAX, TXN_OPS_MAX};
use crate::mode::Mode;
use crate::node::Node;
use crate::observe::metrics::record_request;
use crate::proto;
use crate::request::{Ctx, LeaderEndpoint, LEADER_ENDPOINT_HEADER};

pub struct KvService {
    node: Arc<Node>,
    /// This node's client address as a `capkv-leader-endpoint` value, made once; `None` when it
    /// listens on a wildcard (such as 0.0.0.0) that a client cannot dial.
    own_endpoint: Option<LeaderEndpoint>,
}

/// The metric labels of a keyspace: its name and mode when this node knows it.
struct Labels {
    keyspace: String,
    mode: &'static str,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        let listen = node.options().listen;
        let own_endpoint = (!listen.ip().is_unspecified())
            .then(|| LeaderEndpoint::try_from(listen.to_string()).ok())
            .flatten();
        Self { node, own_endpoint }
    }

    /// The metric labels of a request on `keyspace`, and the mode it is served by (cp when this
    /// node does not know the keyspace yet: the cp path answers for unknown keyspaces), from one
    /// read of its definition.
    fn labels_and_mode(&self, keyspace: &str) -> (Labels, Result<Mode, Error>) {
        let unknown = || Labels {
            keyspace: "unknown".into(),
            mode: "unknown",
        };
        match self.node.local_keyspace(keyspace) {
            Ok(Some(def)) => (
                Labels {
                    keyspace: def.name,
                    mode: def.mode.as_str(),
                },
                Ok(def.mode),
            ),
            Ok(None) => (unknown(), Ok(Mode::Cp)),
            Err(e) => (unknown(), Err(e)),
        }
    }

    /// Runs one request: admit, check, handle (in the keyspace's mode), record, map the error.
    async fn serve<Req, Resp, H, Fut>(
        &self,
        request: Request<Req>,
        op: &'static str,
        keyspace: impl Fn(&Req) -> &str,
        check: impl Fn(&Req) -> Result<(), Error>,
        handle: H,
    ) -> Result<Response<Resp>, Status>
    where
        H: FnOnce(Ctx, Req, Mode) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
        Resp: prost::Message,
    {
        let ctx = Ctx::of(&request);
        let (started, forwarded_leader) = (ctx.started, ctx.leader_endpoint.clone());
        let message = request.into_inner();
        let (labels, mode) = self.labels_and_mode(keyspace(&message));
        let admitted = super::admit(&self.node, &ctx).await.and_then(|_| check(&message));
        let result = match admitted.and(mode) {
            Ok(mode) => {
                handle(ctx, message, mode)
                    .await
                    .and_then(|resp| match oversized_answer(op, resp.encoded_len()) {
                        Some(e) => Err(e),
                        None => Ok(resp),
                    })
            }
            Err(e) => Err(e),
        };
        record_request(&labels.keyspace, labels.mode, op, &result, started.elapsed());
        if let Err(e) = &result {
            tracing::debug!(op, keyspace = labels.keyspace, error = %e, "request failed");
        }
        let mut response = result.map(Response::new).map_err(Status::from)?;
        if labels.mode == Mode::Cp.as_str() {
            // The leader that served it: the one our forward reached, or this node if it leads.
            let leader = match forwarded_leader.get() {
                Some(leader) => Some(leader),
                None => self.own_endpoint.as_ref().filter(|_| self.node.cp().leads()),
            };
            if let Some(leader) = leader {
                response.metadata_mut().insert(LEADER_ENDPOINT_HEADER, leader.clone());
            }
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl proto::kv_server::Kv for KvService {
    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<proto::GetResponse>, Status> {
        let check = |r: &proto::GetRequest| data_request(&r.keyspace, &r.key);
        self.serve(
            request,
            "get",
            |r| &r.keyspace,
            check,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().get(&ctx, req).await,
                    Mode::Ap => self.node.ap().get(&ctx, req).await,
                }
            },
        )
        .await
    }

    async fn put(&self, request: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        let check = |r: &proto::PutRequest| {
            data_request(&r.keyspace, &r.key)?;
            request_id(&r.request_id)?;
            validate_value(&r.value)
        };
        self.serve(
            request,
            "put",
            |r| &r.keyspace,
            check,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().put(&ctx, req).await,
                    Mode::Ap => {
                        ap_request_id(&req.keyspace, &req.request_id)?;
                        self.node.ap().put(&ctx, req).await
                    }
                }
            },
        )
        .await
    }

    async fn delete(&self, request: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        let check = |r: &proto::DeleteRequest| {
            data_request(&r.keyspace, &r.key)?;
            request_id(&r.request_id)
        };
        self.serve(
            request,
            "delete",
            |r| &r.keyspace,
            check,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().delete(&ctx, req).await,
                    Mode::Ap => {
                        ap_request_id(&req.keyspace, &req.request_id)?;
                        self.node.ap().delete(&ctx, req).await
                    }
                }
            },
        )
        .await
    }

    async fn scan(&self, request: Request<proto::ScanRequest>) -> Result<Response<proto::ScanResponse>, Status> {
        self.serve(
            request,
            "scan",
            |r| &r.keyspace,
            scan_request,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().scan(&ctx, req).await,
                    Mode::Ap => self.node.ap().scan(&ctx, req).await,
                }
            },
        )
        .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CasRequest>,
    ) -> Result<Response<proto::CasResponse>, Status> {
        let check = |r: &proto::CasRequest| {
            data_request(&r.keyspace, &r.key)?;
            request_id(&r.request_id)?;
            validate_value(&r.expected)?;
            validate_value(&r.new_value)
        };
        self.serve(
            request,
            "cas",
            |r| &r.keyspace,
            check,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().cas(&ctx, req).await,
                    Mode::Ap => {
                        ap_request_id(&req.keyspace, &req.request_id)?;
                        self.node.ap().cas(&ctx, req).await
                    }
                }
            },
        )
        .await
    }

    async fn txn(&self, request: Request<proto::TxnRequest>) -> Result<Response<proto::TxnResponse>, Status> {
        self.serve(
            request,
            "txn",
            |r| &r.keyspace,
            txn_request,
            |ctx, req, mode| async move {
                match mode {
                    Mode::Cp => self.node.cp().txn(&ctx, req).await,
                    Mode::Ap => {
                        ap_request_id(&req.keyspace, &req.request_id)?;
                        self.node.ap().txn(&ctx, req).await
                    }
                }
            },
        )
        .await
    }
}

/// The operations that change state (or, for a txn, may): their answer comes after the commit.
const WRITE_OPS: [&str; 4] = ["put", "delete", "cas", "txn"];

/// The error for an answer of `bytes` over the response limit, or `None` when it fits.
fn oversized_answer(op: &str, bytes: usize) -> Option<Error> {
    if bytes <= RESPONSE_BYTES_MAX {
        return None;
    }
    Some(if WRITE_OPS.contains(&op) {
        Error::OutcomeUnknown(format!(
            "the {op} was applied, but its answer is {bytes} bytes, over the {RESPONSE_BYTES_MAX}-byte limit of a response; read the keys to see the result"
        ))
    } else {
        Error::InvalidInput(format!(
            "the {op}'s answer would be {bytes} bytes, over the {RESPONSE_BYTES_MAX}-byte limit of a response; ask for less"
        ))
    })
}

/// Checks a write's request id (a client id of the right length).
fn request_id(id: &Option<proto::RequestId>) -> Result<(), Error> {
    crate::cp::kv::request_id(id.as_ref()).map(|_| ())
}

/// ap keyspaces ignore the ids the client library sets by itself, and refuse ids a user set:
/// they cannot honour "at most once", and saying nothing would suggest they do.
fn ap_request_id(keyspace: &str, id: &Option<proto::RequestId>) -> Result<(), Error> {
    match id {
        Some(id) if !id.automatic => Err(Error::InvalidInput(format!(
            "'{keyspace}' is an ap keyspace, and request ids (--request-id) make only cp writes exactly-once; drop the id (nothing was written)"
        ))),
        _ => Ok(()),
    }
}

fn data_request(keyspace: &str, key: &[u8]) -> Result<(), Error> {
    validate_name(keyspace)?;
    validate_key(key)
}

fn scan_request(req: &proto::ScanRequest) -> Result<(), Error> {
    validate_name(&req.keyspace)?;
    for (what, bytes) in [("prefix", &req.prefix), ("start_after", &req.start_after)] {
        if bytes.len() > KEY_BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "the scan's {what} is {} bytes, longer than any key can be ({KEY_BYTES_MAX} bytes)",
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// Checks a transaction against the limits: its size, and every key and value in it.
fn txn_request(req: &proto::TxnRequest) -> Result<(), Error> {
    use proto::txn_op::Op;
    validate_name(&req.keyspace)?;
    request_id(&req.request_id)?;
    let total = req.compares.len() + req.success.len() + req.failure.len();
    if total > TXN_OPS_MAX {
        return Err(Error::InvalidInput(format!(
            "the transaction has {total} compares and operations; the limit is {TXN_OPS_MAX}"
        )));
    }
    let mut bytes = 0;
    for compare in &req.compares {
        validate_key(&compare.key)?;
        validate_value(&compare.value)?;
        bytes += compare.key.len() + compare.value.len();
    }
    for op in req.success.iter().chain(&req.failure) {
        bytes += match &op.op {
            Some(Op::Put(p)) => {
                validate_key(&p.key)?;
                validate_value(&p.value)?;
                p.key.len() + p.value.len()
            }
            Some(Op::Delete(d)) => validate_key(&d.key).map(|_| d.key.len())?,
            Some(Op::Get(g)) => validate_key(&g.key).map(|_| g.key.len())?,
            None => {
                return Err(Error::InvalidInput(
                    "a transaction operation is empty; set put, delete or get".into(),
                ))
            }
        };
    }
    if bytes > TXN_BYTES_MAX {
        return Err(Error::InvalidInput(format!(
            "the transaction carries {bytes} bytes of keys and values; the limit is {TXN_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_answer_after_a_write_is_outcome_unknown() {
        assert!(oversized_answer("put", RESPONSE_BYTES_MAX).is_none());
        for op in WRITE_OPS {
            let e = oversized_answer(op, RESPONSE_BYTES_MAX + 1).expect("over the limit");
            assert_eq!(e.exit_code(), 4, "{op}: {e}");
        }
        for op in ["get", "scan"] {
            let e = oversized_answer(op, RESPONSE_BYTES_MAX + 1).expect("over the limit");
            assert_eq!(e.exit_code(), 5, "{op}: {e}");
        }
    }
}
