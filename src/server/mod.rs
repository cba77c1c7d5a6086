//! The edges of a node: gRPC services (public API, peer API, health, reflection) on `--listen`
//! and HTTP (`/metrics`, `/health`, `/ready`) on `--http`. Handlers check input, pick the path
//! by keyspace mode, and map errors to statuses in one place ([`crate::error`]).

pub mod admin;
pub mod ap_kv;
pub mod fault;
pub mod forward;
pub mod http;
pub mod kv;
pub mod peer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::error::Error;
use crate::limits::{
    GRPC_CONCURRENCY_PER_CONNECTION_MAX, GRPC_MESSAGE_BYTES_MAX, REQUEST_TIMEOUT_MS_DEFAULT,
    SERVER_DEADLINE_SHARE_PERCENT,
};
use crate::node::Node;
use crate::proto;

/// Metadata header naming the node that forwarded a request (peer traffic, fault-filtered).
pub const FORWARDED_FROM_HEADER: &str = "capkv-forwarded-from";

/// The deadline and origin of one request.
#[derive(Clone, Copy, Debug)]
pub struct RequestCtx {
    pub started: Instant,
    /// When the server answers on its own; a share of the client's timeout.
    pub deadline: Instant,
    pub forwarded_from: Option<u64>,
}

impl RequestCtx {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let started = Instant::now();
        let metadata = request.metadata();
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT));
        let budget = timeout * SERVER_DEADLINE_SHARE_PERCENT as u32 / 100;
        let forwarded_from = metadata
            .get(FORWARDED_FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self {
            started,
            deadline: started + budget,
            forwarded_from,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Applies the fault filter to a request forwarded by a peer: a request across a partition
    /// is held without an answer until its deadline, like a packet lost on a cut cable.
    pub async fn admit(&self, node: &Node) -> Result<(), Error> {
        let Some(from) = self.forwarded_from else {
            return Ok(());
        };
        if node.fault.allows(from, node.id) {
            return Ok(());
        }
        tokio::time::sleep(self.remaining()).await;
        Err(Error::NoQuorum(format!(
            "node {} dropped a request from node {from} (partitioned)",
            node.id
        )))
    }
}

/// Parses the `grpc-timeout` header: an integer and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
            admin::KeyspacesService::new(node.clone())
        )))
        .add_service(proto::cluster_server::ClusterServer::new(admin::ClusterService::new(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2500m"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5s"), None);
    }
}
