//! The IO edge of liveness: pings every peer a few times a second and records who answered.
//!
//! A ping goes through the fault filter like every peer message: a partitioned peer is not
//! pinged at all (the ping would be lost), so it turns suspect and then down. A ping whose
//! connection could not be opened (refused: the peer's process is gone) is reported at once.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::transport::Channel;

use super::{Reach, PING_INTERVAL, PING_TIMEOUT};
use crate::error::never_sent;
use crate::proto::{self, peer_client::PeerClient};

/// Pings each peer every [`PING_INTERVAL`] until the task is aborted. `members` gives the
/// current member addresses by id (it follows membership changes); a channel is kept per
/// member and address.
pub async fn run(reach: Reach, members: impl Fn() -> BTreeMap<u64, String>) {
    let mut channels: BTreeMap<u64, (String, Channel)> = BTreeMap::new();
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        let members = members();
        channels.retain(|id, (addr, _)| members.get(id) == Some(addr));
        for (peer, addr) in members.iter().filter(|(id, _)| **id != reach.id()) {
            if !channels.contains_key(peer) {
                match crate::net::peer_channel(addr) {
                    Ok(channel) => channels.insert(*peer, (addr.clone(), channel)),
                    Err(_) => continue,
                };
            }
            let (_, channel) = &channels[peer];
            if reach.can_send(*peer) {
                tokio::spawn(ping(reach.clone(), *peer, channel.clone()));
            }
        }
    }
}

async fn ping(reach: Reach, peer: u64, channel: Channel) {
    let mut request = tonic::Request::new(proto::PingRequest { from: reach.id() });
    request.set_timeout(PING_TIMEOUT);
    let mut client = PeerClient::new(channel);
    match tokio::time::timeout(PING_TIMEOUT + Duration::from_millis(10), client.ping(request)).await {
        Ok(Ok(_)) => reach.heard_from(peer),
        Ok(Err(status)) if never_sent(&status) => reach.refused(peer),
        _ => {}
    }
}
