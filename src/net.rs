//! Connections from this node to other nodes: one place that decides how a peer channel is
//! opened (address form, connect timeout, TCP_NODELAY), so every peer client (Raft, AP
//! replication, liveness pings, forwarding, fault control) gets the same settings.
//!
//! Caveats: plain-text HTTP/2 only; peers are trusted by their address.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// How long a fresh connection to a peer may take before the peer counts as unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Opens a lazily connecting channel to a peer's gRPC address (`HOST:PORT`).
pub fn peer_channel(addr: &str) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::InvalidInput(format!("bad peer address {addr}: {e}")))?;
    Ok(endpoint
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}
