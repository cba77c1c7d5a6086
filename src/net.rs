//! Connections from this node to other nodes: one place that decides how a peer channel is
//! opened (address form, connect timeout, TCP_NODELAY) and which message limits each client
//! gets, so every peer client (Raft, AP replication, liveness pings, forwarding, fault control)
//! has the same settings.
//!
//! With peer TLS ([`crate::tls::set_peer_client`]) every peer channel is TLS with this node's
//! certificate; otherwise plain-text HTTP/2.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::Error;
use crate::limits::{PEER_MESSAGE_BYTES_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use crate::proto::keyspaces_client::KeyspacesClient;
use crate::proto::kv_client::KvClient;
use crate::proto::peer_client::PeerClient;

/// How long a fresh connection to a peer may take before the peer counts as unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The endpoint of a peer's gRPC address (`HOST:PORT`): TLS with this node's certificate when
/// the node has peer TLS.
pub fn peer_endpoint(addr: &str) -> Result<Endpoint, Error> {
    endpoint(addr, crate::tls::peer_client())
}

/// The endpoint of `addr`, over TLS with `tls` when given.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| Error::InvalidInput(format!("'{addr}' is not HOST:PORT ({e})")))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| Error::InvalidInput(format!("cannot use the TLS settings for {addr}: {e}"))),
        None => Ok(endpoint),
    }
}

/// Opens a lazily connecting channel to a peer's gRPC address (`HOST:PORT`).
pub fn peer_channel(addr: &str) -> Result<Channel, Error> {
    Ok(peer_endpoint(addr)?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A client of a node's public `Kv` service with capkv's message limits (a forwarded request
/// gets the same limits as the client that sent it).
pub fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_encoding_message_size(REQUEST_BYTES_MAX)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// A client of a node's public `Keyspaces` service with capkv's message limits.
pub fn keyspaces_client(channel: Channel) -> KeyspacesClient<Channel> {
    KeyspacesClient::new(channel)
        .max_encoding_message_size(REQUEST_BYTES_MAX)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// A client of another node's peer service with the peer message limit both ways.
pub fn peer_client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
}
