//! The public `Kv` service: get, put, delete, scan, compare-and-swap and transactions.
//!
//! Each handler has the same four parts: admit (fault filter for forwarded requests), check the
//! input, route (here, the leader, or refuse), and answer. Metrics are recorded for every request.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::{forward, Effect};
use super::RequestCtx;
use crate::cp::command::{Compare, CompareOp, CompareTarget, StoredValue, TxnOp};
use crate::cp::{Command, Outcome};
use crate::error::Error;
use crate::keyspace::{validate_key, validate_name, validate_value, Mode};
use crate::limits::{scan_page_items, TXN_OPS_MAX};
use crate::node::{outcome_error, Node, Route};
use crate::observe::metrics::record_request;
use crate::proto::{self, kv_client::KvClient, Consistency};

pub struct KvService {
    pub(super) node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn mode_label(&self, keyspace: &str) -> &'static str {
        match self.node.local_keyspace(keyspace) {
            Ok(Some(def)) => def.mode.as_str(),
            _ => "unknown",
        }
    }

    /// Runs one request: admit, handle, record, map the error.
    async fn serve<Req, Resp, H, Fut>(
        &self,
        request: Request<Req>,
        op: &'static str,
        keyspace: impl Fn(&Req) -> String,
        handle: H,
    ) -> Result<Response<Resp>, Status>
    where
        H: FnOnce(RequestCtx, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Error>>,
    {
        let ctx = RequestCtx::of(&request);
        let message = request.into_inner();
        let keyspace = keyspace(&message);
        let result = match ctx.admit(&self.node).await {
            Ok(()) => handle(ctx, message).await,
            Err(e) => Err(e),
        };
        record_request(
            &keyspace,
            self.mode_label(&keyspace),
            op,
            &result,
            ctx.started.elapsed(),
        );
        if let Err(e) = &result {
            tracing::debug!(op, keyspace, error = %e, "request failed");
        }
        result.map(Response::new).map_err(Status::from)
    }

    /// Runs a command here when this node leads, or at the leader.
    async fn propose<Req, Resp, F, Fut>(
        &self,
        ctx: &RequestCtx,
        command: Command,
        message: Req,
        call: F,
    ) -> Result<Result<Outcome, Resp>, Error>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let op = command.op_name();
        match self.node.route(ctx.deadline, ctx.forwarded_from).await? {
            Route::Forward { leader, channel } => Ok(Err(forward(
                &self.node,
                ctx,
                leader,
                channel,
                message,
                Effect::Write,
                call,
            )
            .await?)),
            Route::Local => {
                let outcome = self.node.write(command, ctx.deadline).await?;
                match outcome_error(&outcome, op) {
                    Some(e) => Err(e),
                    None => Ok(Ok(outcome)),
                }
            }
        }
    }

    /// Makes a read linearizable here, or forwards it to the leader. `Ok(None)`: read locally.
    async fn linearize<Req, Resp, F, Fut>(
        &self,
        ctx: &RequestCtx,
        consistency: Consistency,
        message: Req,
        call: F,
    ) -> Result<Option<Resp>, Error>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        if consistency == Consistency::Serializable || cfg!(feature = "unsafe-local-reads") {
            return Ok(None);
        }
        match self.node.route(ctx.deadline, ctx.forwarded_from).await? {
            Route::Forward { leader, channel } => Ok(Some(
                forward(&self.node, ctx, leader, channel, message, Effect::Read, call).await?,
            )),
            Route::Local => {
                self.node.read_barrier(ctx.deadline).await?;
                Ok(None)
            }
        }
    }

    /// Checks that the local replica knows `keyspace` as a cp keyspace.
    fn local_cp_keyspace(&self, keyspace: &str, op: &str) -> Result<(), Error> {
        match self.node.local_keyspace(keyspace)? {
            None => Err(Error::UnknownKeyspace(keyspace.to_string())),
            Some(def) if def.mode == Mode::Ap => Err(super::ap_kv::mode_refuses(op, keyspace)),
            Some(_) => Ok(()),
        }
    }

    fn local_get(&self, keyspace: &str, key: &[u8]) -> Result<proto::GetResponse, Error> {
        self.local_cp_keyspace(keyspace, "get")?;
        let value = self.node.reader.get(keyspace, key).map_err(Error::Internal)?;
        Ok(proto::GetResponse {
            found: value.is_some(),
            kv: value.map(|v| to_kv(key.to_vec(), v)),
            served_by: self.node.id,
        })
    }

    fn local_scan(&self, req: &proto::ScanRequest) -> Result<proto::ScanResponse, Error> {
        self.local_cp_keyspace(&req.keyspace, "scan")?;
        let limit = scan_page_items(req.limit);
        let (items, more) = self
            .node
            .reader
            .scan(&req.keyspace, &req.prefix, &req.start_after, limit)
            .map_err(Error::Internal)?;
        Ok(proto::ScanResponse {
            items: items.into_iter().map(|(k, v)| to_kv(k, v)).collect(),
            more,
        })
    }
}

fn to_kv(key: Vec<u8>, v: StoredValue) -> proto::KeyValue {
    proto::KeyValue {
        key,
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        ap_version: None,
    }
}

fn check_data_request(keyspace: &str, key: &[u8]) -> Result<(), Error> {
    validate_name(keyspace)?;
    validate_key(key)
}

fn unexpected(outcome: Outcome) -> Error {
    Error::Internal(format!(
        "the state machine answered with an unexpected outcome: {outcome:?}"
    ))
}

#[tonic::async_trait]
impl proto::kv_server::Kv for KvService {
    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<proto::GetResponse>, Status> {
        self.serve(
            request,
            "get",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                check_data_request(&req.keyspace, &req.key)?;
                if self.is_ap(&req.keyspace)? {
                    return self.ap_get(&ctx, req).await;
                }
                let consistency = req.consistency();
                let (keyspace, key) = (req.keyspace.clone(), req.key.clone());
                match self
                    .linearize(
                        &ctx,
                        consistency,
                        req,
                        |c, r| async move { KvClient::new(c).get(r).await },
                    )
                    .await?
                {
                    Some(answer) => Ok(answer),
                    None => self.local_get(&keyspace, &key),
                }
            },
        )
        .await
    }

    async fn scan(&self, request: Request<proto::ScanRequest>) -> Result<Response<proto::ScanResponse>, Status> {
        self.serve(
            request,
            "scan",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                validate_name(&req.keyspace)?;
                if self.is_ap(&req.keyspace)? {
                    return self.ap_scan(&req);
                }
                let local = req.clone();
                match self
                    .linearize(&ctx, req.consistency(), req, |c, r| async move {
                        KvClient::new(c).scan(r).await
                    })
                    .await?
                {
                    Some(answer) => Ok(answer),
                    None => self.local_scan(&local),
                }
            },
        )
        .await
    }

    async fn put(&self, request: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        self.serve(
            request,
            "put",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                check_data_request(&req.keyspace, &req.key)?;
                validate_value(&req.value)?;
                if self.is_ap(&req.keyspace)? {
                    return self.ap_put(&ctx, req).await;
                }
                let command = Command::Put {
                    keyspace: req.keyspace.clone(),
                    key: req.key.clone(),
                    value: req.value.clone(),
                };
                match self
                    .propose(&ctx, command, req, |c, r| async move { KvClient::new(c).put(r).await })
                    .await?
                {
                    Err(answer) => Ok(answer),
                    Ok(Outcome::Put { revision, had_previous }) => Ok(proto::PutResponse {
                        revision,
                        had_previous,
                        version: None,
                    }),
                    Ok(other) => Err(unexpected(other)),
                }
            },
        )
        .await
    }

    async fn delete(&self, request: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        self.serve(
            request,
            "delete",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                check_data_request(&req.keyspace, &req.key)?;
                if self.is_ap(&req.keyspace)? {
                    return self.ap_delete(&ctx, req).await;
                }
                let command = Command::Delete {
                    keyspace: req.keyspace.clone(),
                    key: req.key.clone(),
                };
                match self
                    .propose(
                        &ctx,
                        command,
                        req,
                        |c, r| async move { KvClient::new(c).delete(r).await },
                    )
                    .await?
                {
                    Err(answer) => Ok(answer),
                    Ok(Outcome::Deleted { deleted, revision }) => Ok(proto::DeleteResponse {
                        deleted,
                        revision,
                        version: None,
                    }),
                    Ok(other) => Err(unexpected(other)),
                }
            },
        )
        .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CasRequest>,
    ) -> Result<Response<proto::CasResponse>, Status> {
        self.serve(
            request,
            "cas",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                check_data_request(&req.keyspace, &req.key)?;
                validate_value(&req.expected)?;
                validate_value(&req.new_value)?;
                self.refuse_ap(&req.keyspace, "compare-and-swap")?;
                let expected = (!req.expect_absent).then(|| req.expected.clone());
                let command = Command::Cas {
                    keyspace: req.keyspace.clone(),
                    key: req.key.clone(),
                    expected,
                    new_value: req.new_value.clone(),
                };
                match self
                    .propose(&ctx, command, req, |c, r| async move {
                        KvClient::new(c).compare_and_swap(r).await
                    })
                    .await?
                {
                    Err(answer) => Ok(answer),
                    Ok(Outcome::Cas {
                        succeeded,
                        current,
                        revision,
                    }) => Ok(proto::CasResponse {
                        succeeded,
                        current_found: current.is_some(),
                        current: current.map(|c| c.value).unwrap_or_default(),
                        revision,
                    }),
                    Ok(other) => Err(unexpected(other)),
                }
            },
        )
        .await
    }

    async fn txn(&self, request: Request<proto::TxnRequest>) -> Result<Response<proto::TxnResponse>, Status> {
        self.serve(
            request,
            "txn",
            |r| r.keyspace.clone(),
            |ctx, req| async move {
                let command = txn_command(&req)?;
                self.refuse_ap(&req.keyspace, "a transaction")?;
                match self
                    .propose(&ctx, command, req, |c, r| async move { KvClient::new(c).txn(r).await })
                    .await?
                {
                    Err(answer) => Ok(answer),
                    Ok(Outcome::Txn {
                        succeeded,
                        results,
                        revision,
                    }) => Ok(proto::TxnResponse {
                        succeeded,
                        results: results
                            .into_iter()
                            .map(|r| proto::TxnOpResult {
                                found: r.found.is_some(),
                                kv: r.found.map(|v| to_kv(r.key, v)),
                            })
                            .collect(),
                        revision,
                    }),
                    Ok(other) => Err(unexpected(other)),
                }
            },
        )
        .await
    }
}

/// Checks a transaction request and turns it into a command.
fn txn_command(req: &proto::TxnRequest) -> Result<Command, Error> {
    validate_name(&req.keyspace)?;
    let total = req.compares.len() + req.success.len() + req.failure.len();
    if total > TXN_OPS_MAX {
        return Err(Error::InvalidInput(format!(
            "the transaction has {total} compares and operations; the limit is {TXN_OPS_MAX}"
        )));
    }
    let compares = req.compares.iter().map(compare_from_proto).collect::<Result<_, _>>()?;
    let ops = |ops: &[proto::TxnOp]| ops.iter().map(op_from_proto).collect::<Result<Vec<_>, _>>();
    Ok(Command::Txn {
        keyspace: req.keyspace.clone(),
        compares,
        success: ops(&req.success)?,
        failure: ops(&req.failure)?,
    })
}

fn compare_from_proto(c: &proto::Compare) -> Result<Compare, Error> {
    use proto::compare::{Op, Target};
    validate_key(&c.key)?;
    let target = match c.target() {
        Target::Value => CompareTarget::Value(c.value.clone()),
        Target::Exists => CompareTarget::Exists(c.number != 0),
        Target::ModRevision => CompareTarget::ModRevision(c.number),
        Target::Version => CompareTarget::Version(c.number),
    };
    let op = match c.op() {
        Op::Equal => CompareOp::Equal,
        Op::NotEqual => CompareOp::NotEqual,
        Op::Less => CompareOp::Less,
        Op::Greater => CompareOp::Greater,
    };
    Ok(Compare {
        key: c.key.clone(),
        target,
        op,
    })
}

fn op_from_proto(op: &proto::TxnOp) -> Result<TxnOp, Error> {
    use proto::txn_op::Op;
    match &op.op {
        Some(Op::Put(p)) => {
            validate_key(&p.key)?;
            validate_value(&p.value)?;
            Ok(TxnOp::Put {
                key: p.key.clone(),
                value: p.value.clone(),
            })
        }
        Some(Op::Delete(d)) => validate_key(&d.key).map(|_| TxnOp::Delete { key: d.key.clone() }),
        Some(Op::Get(g)) => validate_key(&g.key).map(|_| TxnOp::Get { key: g.key.clone() }),
        None => Err(Error::InvalidInput(
            "a transaction operation is empty; set put, delete or get".into(),
        )),
    }
}
