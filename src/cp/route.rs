//! Where a CP operation runs: here, at the leader, or nowhere.
//!
//! 1. This node leads: the operation runs here, unless no majority has acknowledged this leader
//!    for longer than the check-quorum limit (then "no quorum": a deposed leader that has not
//!    heard of its successor must not accept writes it cannot commit).
//! 2. Another node leads and is reachable (liveness hears it, the fault filter lets messages
//!    through): the operation is forwarded to it, once. A request that was itself forwarded is
//!    never forwarded again.
//! 3. No leader is known, or it cannot be reached: wait for that to change. While this node
//!    hears from a majority an election is under way or imminent (a leader crashed), so the
//!    request waits until its deadline and then runs: a client rides through a failover. A node
//!    that hears no majority (the minority side of a partition) cannot help elect anyone; it
//!    waits at most one election timeout and answers "no quorum" (definitely not applied), so
//!    the client has time left to try another node. A forwarded request that finds this node
//!    not leading answers at once: its forwarder routes it again ([`super::forward`]).
//!
//! Caveats: the check-quorum test relies on openraft's `millis_since_quorum_ack`; in the window
//! between losing the majority and noticing it (the check-quorum limit), new writes are proposed
//! and then answer "outcome unknown" rather than "no quorum".

use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use tonic::transport::Channel;

use super::path::Cp;
use super::NodeId;
use crate::error::Error;
use crate::net::peer_channel;

/// How often a request that waits for a leader looks again.
const ROUTE_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Where a CP operation runs.
pub enum Route {
    Local,
    Forward { leader: NodeId, channel: Channel },
}

impl Cp {
    /// Decides where a CP operation runs, waiting for a leader until `deadline` (or about one
    /// election, when this node hears no majority).
    pub async fn route(&self, deadline: Instant, forwarded_from: Option<NodeId>) -> Result<Route, Error> {
        let minority_wait_until = Instant::now() + Duration::from_millis(self.options.election_timeout_ms_max);
        loop {
            let e = match self.try_route(forwarded_from) {
                Ok(route) => return Ok(route),
                Err(e) => e,
            };
            let wait_until = if forwarded_from.is_some() {
                // The forwarder thought this node leads; it routes again sooner than we would.
                Instant::now()
            } else if self.reach.hears_majority() {
                deadline
            } else {
                deadline.min(minority_wait_until)
            };
            if Instant::now() + ROUTE_POLL_INTERVAL >= wait_until {
                return Err(e);
            }
            tokio::time::sleep(ROUTE_POLL_INTERVAL).await;
        }
    }

    fn try_route(&self, forwarded_from: Option<NodeId>) -> Result<Route, Error> {
        let metrics = self.metrics();
        if metrics.state == ServerState::Leader {
            self.check_quorum(&metrics)?;
            return Ok(Route::Local);
        }
        let Some(leader) = metrics.current_leader else {
            return Err(Error::NoQuorum(format!(
                "node {} knows no leader in term {}: it cannot reach a majority of the cluster",
                self.id, metrics.current_term
            )));
        };
        if let Some(from) = forwarded_from {
            return Err(Error::NoQuorum(format!(
                "node {} received a request forwarded by node {from} but is not the leader (node {leader} is); retry",
                self.id
            )));
        }
        if !self.reach.can_send(leader) {
            return Err(Error::NoQuorum(format!(
                "node {} cannot reach the leader, node {leader}: the network between them is partitioned",
                self.id
            )));
        }
        if let Some(silence) = self.reach.silence(leader) {
            return Err(Error::NoQuorum(format!(
                "node {} has not heard from the leader, node {leader}, for {} ms: it cannot reach it",
                self.id,
                silence.as_millis()
            )));
        }
        Ok(Route::Forward {
            leader,
            channel: self.forward_channel(leader)?,
        })
    }

    /// Fails with "no quorum" when this node leads but has not heard from a majority lately.
    pub fn check_quorum(&self, metrics: &RaftMetrics<NodeId, openraft::BasicNode>) -> Result<(), Error> {
        if metrics.membership_config.membership().voter_ids().count() <= 1 {
            return Ok(()); // a single voter is its own majority
        }
        let limit_ms = self.options.check_quorum_ms();
        match metrics.millis_since_quorum_ack {
            Some(ms) if ms <= limit_ms => Ok(()),
            ms => Err(Error::NoQuorum(format!(
                "node {} leads term {} but no majority has acknowledged it for {}; it refuses until one does",
                self.id,
                metrics.current_term,
                ms.map_or("ever".to_string(), |ms| format!("{ms} ms"))
            ))),
        }
    }

    /// How long the leader has been silent, when liveness no longer counts it alive.
    pub fn leader_silence(&self, leader: NodeId) -> Option<Duration> {
        self.reach.silence(leader)
    }

    fn forward_channel(&self, leader: NodeId) -> Result<Channel, Error> {
        let mut channels = self
            .forward_channels
            .lock()
            .expect("forward channel lock is never poisoned");
        let addr =
            self.members().get(&leader).cloned().ok_or_else(|| {
                Error::Internal(format!("the leader, node {leader}, has no address in the membership"))
            })?;
        let key = (leader, addr);
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let channel = peer_channel(&key.1)?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}
