//! The AP protocol over the peer gRPC service, through the fault filter (the edge of the AP
//! path; the protocol itself lives in [`super::replica`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use super::replica::{Request, Response, Transport, Unreachable};
use crate::fault::FaultFilter;
use crate::proto::ApMessage;
use crate::storage::codec::{decode, encode};

pub struct GrpcTransport {
    self_id: u64,
    fault: Arc<FaultFilter>,
    channels: BTreeMap<u64, Channel>,
}

impl GrpcTransport {
    pub fn new(self_id: u64, peers: &BTreeMap<u64, String>, fault: Arc<FaultFilter>) -> Self {
        let channels = peers
            .iter()
            .filter(|(id, _)| **id != self_id)
            .filter_map(|(id, addr)| crate::net::peer_channel(addr).ok().map(|c| (*id, c)))
            .collect();
        Self {
            self_id,
            fault,
            channels,
        }
    }
}

impl Transport for GrpcTransport {
    async fn call(&self, to: u64, request: Request, timeout: Duration) -> Result<Response, Unreachable> {
        if !self.fault.allows(self.self_id, to) {
            // Silence, as on a cut cable.
            tokio::time::sleep(timeout).await;
            return Err(Unreachable(format!("node {to} is partitioned away")));
        }
        let channel = self
            .channels
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable(format!("node {to} is not a peer")))?;
        let mut client = crate::net::peer_client(channel);
        let mut message = tonic::Request::new(ApMessage {
            from: self.self_id,
            payload: encode(&request).into(),
        });
        message.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.ap(message)).await {
            Ok(Ok(answer)) => decode(&answer.into_inner().payload).map_err(|e| Unreachable(e.to_string())),
            Ok(Err(status)) => Err(Unreachable(format!(
                "node {to} answered with an error: {}",
                status.message()
            ))),
            Err(_) => Err(Unreachable(format!(
                "node {to} did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}
