//! Which peers this node can reach right now: the one view both request paths consult.
//!
//! A peer is reachable when liveness has heard from it lately ([`super::Liveness`]) and the
//! fault filter lets messages through to it ([`crate::fault::FaultFilter`]). The CP path uses it
//! to decide whether forwarding to the leader can work, the AP path to decide whom to push to
//! and whom to hint, and the election watchdog to decide whether this node may campaign.
//!
//! Caveats: a peer that answers pings but drops other traffic is judged by its pings alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Liveness, PeerState};
use crate::fault::FaultFilter;

/// A cheap, cloneable handle on this node's liveness view and fault filter.
#[derive(Clone)]
pub struct Reach {
    id: u64,
    liveness: Arc<Mutex<Liveness>>,
    fault: Arc<FaultFilter>,
    started: Instant,
}

impl Reach {
    pub fn new(id: u64, liveness: Liveness, fault: Arc<FaultFilter>) -> Self {
        Self {
            id,
            liveness: Arc::new(Mutex::new(liveness)),
            fault,
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn fault(&self) -> &Arc<FaultFilter> {
        &self.fault
    }

    /// Runs `f` on the liveness view, under its lock.
    pub fn with_liveness<R>(&self, f: impl FnOnce(&mut Liveness) -> R) -> R {
        f(&mut self.liveness.lock().expect("liveness lock is never poisoned"))
    }

    /// Follows a membership change (see [`Liveness::set_members`]).
    pub fn set_members(&self, members: impl IntoIterator<Item = u64>, voters: std::collections::BTreeSet<u64>) {
        self.with_liveness(|l| l.set_members(members, voters));
    }

    /// Records an answer (or a message) from `peer`.
    pub fn heard_from(&self, peer: u64) {
        self.with_liveness(|l| l.heard_from(peer, Instant::now()));
    }

    /// Records that a connection to `peer` was refused (its process is gone).
    pub fn refused(&self, peer: u64) {
        self.with_liveness(|l| l.refused(peer, Instant::now()));
    }

    /// May a message to `peer` leave this node now? (the fault filter only)
    pub fn can_send(&self, peer: u64) -> bool {
        self.fault.allows(self.id, peer)
    }

    /// Is `peer` alive by liveness, and does the fault filter let messages through?
    pub fn reachable(&self, peer: u64) -> bool {
        let alive = self.with_liveness(|l| l.state(peer, Instant::now())) == PeerState::Alive;
        alive && self.can_send(peer)
    }

    /// How long `peer` has been silent, when liveness no longer counts it alive.
    pub fn silence(&self, peer: u64) -> Option<Duration> {
        let now = Instant::now();
        self.with_liveness(|l| match l.state(peer, now) {
            PeerState::Alive => None,
            _ => Some(l.silence(peer, now).unwrap_or_else(|| self.started.elapsed())),
        })
    }

    /// How long `peer` has been silent, when its connection was refused since it last answered
    /// (its process is gone); `None` while it answers or is merely silent.
    pub fn gone_for(&self, peer: u64) -> Option<Duration> {
        self.with_liveness(|l| l.gone_for(peer, Instant::now()))
    }

    /// Does this node hear from a majority of its members, itself included?
    pub fn hears_majority(&self) -> bool {
        self.with_liveness(|l| l.hears_majority(Instant::now()))
    }
}
