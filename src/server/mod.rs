//! The edges of a node: gRPC services (public API, peer API, health, reflection) on `--listen`
//! and HTTP (`/metrics`, `/health`, `/livez`, `/readyz`) on `--http`. With `--peer-listen` the
//! peer API moves to a port of its own ([`Ports`]): the client port no longer serves it, so a
//! firewall can keep clients away from Raft. The peer port also serves the public API, because
//! members call each other there (a follower forwards a client's request to its leader's peer
//! address). Handlers check input, pick the path
//! by keyspace mode ([`kv`]), and map errors to statuses in one place ([`crate::error`]).

pub mod backup;
pub mod cluster;
pub mod connections;
pub mod fault;
pub mod gate;
pub mod http;
pub mod keyspaces;
pub mod kv;
pub mod peer;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::error::Error;
use crate::limits::{
    GRPC_CONCURRENCY_PER_CONNECTION_MAX, PEER_MESSAGE_BYTES_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX,
};
use crate::node::Node;
use crate::proto;
use crate::request::Ctx;

/// Applies the fault filter to a request forwarded by a peer: a request across a partition is
/// held without an answer until its deadline, like a packet lost on a cut cable.
pub async fn admit(node: &Node, ctx: &Ctx) -> Result<(), Error> {
    let Some(from) = ctx.forwarded_from else {
        return Ok(());
    };
    if node.fault().allows(from, node.id()) {
        return Ok(());
    }
    tokio::time::sleep(ctx.remaining()).await;
    Err(Error::NoQuorum(format!(
        "node {} dropped a request from node {from} (partitioned)",
        node.id()
    )))
}

/// Binds a listener, turning "address in use" into a sentence that says what to do.
pub async fn bind(addr: std::net::SocketAddr, flag: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => Error::Refused(format!(
            "{flag} {addr} is already in use by another process; stop it or choose another port"
        )),
        _ => Error::Refused(format!("cannot listen on {flag} {addr}: {e}")),
    })
}

/// Which services one gRPC port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// The public and the peer API on one port (no `--peer-listen`).
    Shared,
    /// The client port of a node with a peer port: everything but the peer API.
    Client,
    /// The peer port: the peer API, and the public API for calls between members.
    Peer,
}

/// How one gRPC port serves: which services, over TLS or not, and its guards.
pub struct Port {
    pub ports: Ports,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Token checks and the bound on requests in flight.
    pub gate: gate::GateLayer,
    /// The bound on open connections (`None`: unbounded).
    pub max_connections: Option<usize>,
    /// The node's grpc.health.v1 statuses: one set, kept by one task, served on every port.
    pub health: tonic_health::server::HealthReporter,
}

/// Serves the gRPC services of `port` until `shutdown` completes.
pub async fn serve_grpc(
    node: Arc<Node>,
    listener: TcpListener,
    port: Port,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Port {
        ports,
        tls,
        gate,
        max_connections,
        health,
    } = port;
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health),
    );
    fn reflection() -> tonic_reflection::server::Builder<'static> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("cannot build reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("cannot build reflection: {e}")))?;
    // Public services decode at most the largest legal request; peers exchange larger batches.
    macro_rules! public {
        ($server:expr) => {
            $server
                .max_decoding_message_size(REQUEST_BYTES_MAX)
                .max_encoding_message_size(RESPONSE_BYTES_MAX)
        };
    }
    // Small responses must not wait for the client's delayed ACK (Nagle): every accepted
    // socket gets TCP_NODELAY. (`Server::tcp_nodelay` only reaches sockets the server binds.)
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let incoming = connections::bounded(incoming, max_connections.unwrap_or(usize::MAX));
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::InvalidInput(format!("the TLS certificate or key cannot be used: {e}")))?;
    }
    builder
        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION_MAX)
        .layer(gate)
        .add_service(public!(proto::kv_server::KvServer::new(kv::KvService::new(
            node.clone()
        ))))
        .add_service(public!(proto::keyspaces_server::KeyspacesServer::new(
            keyspaces::KeyspacesService::new(node.clone())
        )))
        .add_service(public!(proto::cluster_server::ClusterServer::new(
            cluster::ClusterService::new(node.clone())
        )))
        .add_service(public!(proto::fault_server::FaultServer::new(
            fault::FaultService::new(node.clone())
        )))
        .add_service(public!(proto::backup_server::BackupServer::new(
            backup::BackupService::new(node.clone())
        )))
        .add_optional_service((ports != Ports::Client).then(|| {
            proto::peer_server::PeerServer::new(peer::PeerService::new(node.clone()))
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("the gRPC server failed: {e}")))
}

#[cfg(test)]
mod fuzz_test;
