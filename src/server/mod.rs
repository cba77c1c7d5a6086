//! The edges of a node: gRPC services (public API, peer API, health, reflection) on `--listen`
//! and HTTP (`/metrics`, `/health`, `/ready`) on `--http`. Handlers check input, pick the path
//! by keyspace mode ([`kv`]), and map errors to statuses in one place ([`crate::error`]).

pub mod cluster;
pub mod fault;
pub mod http;
pub mod keyspaces;
pub mod kv;
pub mod peer;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::error::Error;
use crate::limits::{GRPC_CONCURRENCY_PER_CONNECTION_MAX, GRPC_MESSAGE_BYTES_MAX};
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

/// Serves every gRPC service of the node until `shutdown` completes.
pub async fn serve_grpc(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(crate::observe::health::run_grpc_health(node.clone(), health_reporter));
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
    macro_rules! sized {
        ($server:expr) => {
            $server
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        };
    }
    Server::builder()
        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION_MAX)
        .tcp_nodelay(true)
        .add_service(sized!(proto::kv_server::KvServer::new(kv::KvService::new(
            node.clone()
        ))))
        .add_service(sized!(proto::keyspaces_server::KeyspacesServer::new(
            keyspaces::KeyspacesService::new(node.clone())
        )))
        .add_service(proto::cluster_server::ClusterServer::new(cluster::ClusterService::new(
            node.clone(),
        )))
        .add_service(proto::fault_server::FaultServer::new(fault::FaultService::new(
            node.clone(),
        )))
        .add_service(sized!(proto::peer_server::PeerServer::new(peer::PeerService::new(
            node.clone()
        ))))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("the gRPC server failed: {e}")))
}
