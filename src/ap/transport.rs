//! The AP protocol over the peer gRPC service, through the fault filter (the edge of the AP
//! path; the protocol itself lives in [`super::replica`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;

use super::replica::{Request, Response, Transport, Unreachable};
use crate::fault::FaultFilter;
use crate::proto::ApMessage;
use crate::storage::codec::{decode, encode};

pub struct GrpcTransport {
    self_id: u64,
    fault: Arc<FaultFilter>,
    /// One lazily connecting channel per peer, with the address it was made for.
    channels: Mutex<BTreeMap<u64, (String, Channel)>>,
}

impl GrpcTransport {
    pub fn new(self_id: u64, peers: &BTreeMap<u64, String>, fault: Arc<FaultFilter>) -> Self {
        let transport = Self {
            self_id,
            fault,
            channels: Mutex::new(BTreeMap::new()),
        };
        transport.set_peers(peers);
        transport
    }

    /// Follows a membership change: keeps the channels of peers whose address did not change,
    /// opens (lazily) those of new peers, and drops those of peers that left.
    pub fn set_peers(&self, peers: &BTreeMap<u64, String>) {
        let mut channels = self.channels.lock().expect("channel lock is never poisoned");
        let previous = std::mem::take(&mut *channels);
        for (id, addr) in peers.iter().filter(|(id, _)| **id != self.self_id) {
            match previous.get(id) {
                Some((kept, channel)) if kept == addr => {
                    channels.insert(*id, (addr.clone(), channel.clone()));
                }
                _ => {
                    if let Ok(channel) = crate::net::peer_channel(addr) {
                        channels.insert(*id, (addr.clone(), channel));
                    }
                }
            }
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
            .lock()
            .expect("channel lock is never poisoned")
            .get(&to)
            .map(|(_, channel)| channel.clone())
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
