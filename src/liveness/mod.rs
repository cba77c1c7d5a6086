//! Liveness: which peers a node hears from, and whether it may start elections.
//!
//! Every node pings every peer ten times a second over the peer API (through the fault
//! filter, like all peer traffic). A peer heard from recently is `alive`, one silent for a while
//! `suspect`, one silent for long `down`. A peer whose connection was refused since it was last
//! heard from (its process is gone: nothing listens on its port) is at once no longer alive, so a
//! crashed leader stops counting within one ping interval instead of a silence threshold.
//! `cluster status` and `/health` show the result.
//!
//! The same view stands in for Raft's pre-vote, which openraft 0.9 lacks: a node that hears from
//! no majority keeps its election timer off, so a node cut off by a partition does not inflate
//! its term and force a needless election when the partition heals.
//!
//! [`Liveness`] is pure: time comes in as a parameter. The [`prober`] at the edge does the IO,
//! and [`Reach`] combines this view with the fault filter for the request paths.
//!
//! Caveats: one missed ping is not a verdict, but a peer that answers pings and drops Raft
//! traffic (or the reverse) is judged by pings alone.

pub mod prober;
mod reach;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use reach::Reach;

/// How often a node pings each peer (half a heartbeat interval of the default Raft timing).
pub const PING_INTERVAL: Duration = Duration::from_millis(100);
/// How long one ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_millis(400);
/// Silence after which a peer is suspect: six missed pings, so a loaded machine that delays a
/// few does not make a live peer look dead (a refused connection is faster, see above).
pub const SUSPECT_AFTER: Duration = Duration::from_millis(600);
/// Silence after which a peer is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Alive,
    Suspect,
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }
}

/// What one node knows of its peers' liveness.
#[derive(Debug, Clone)]
pub struct Liveness {
    self_id: u64,
    peers: BTreeSet<u64>,
    /// The members that vote (this node may be one); `None`: every member votes.
    voters: Option<BTreeSet<u64>>,
    last_heard: BTreeMap<u64, Instant>,
    /// When a connection to the peer was last refused.
    last_refused: BTreeMap<u64, Instant>,
}

impl Liveness {
    /// `members` includes this node.
    pub fn new(self_id: u64, members: impl IntoIterator<Item = u64>) -> Self {
        let peers = members.into_iter().filter(|id| *id != self_id).collect();
        Self {
            self_id,
            peers,
            voters: None,
            last_heard: BTreeMap::new(),
            last_refused: BTreeMap::new(),
        }
    }

    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.iter().copied()
    }

    /// Follows a membership change: `members` (this node may be among them) become the peers,
    /// of which `voters` count for a majority. A removed peer's history is forgotten; a new
    /// one starts as never heard from (down) until it answers.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = u64>, voters: BTreeSet<u64>) {
        self.peers = members.into_iter().filter(|id| *id != self.self_id).collect();
        self.last_heard.retain(|id, _| self.peers.contains(id));
        self.last_refused.retain(|id, _| self.peers.contains(id));
        self.voters = Some(voters);
    }

    pub fn heard_from(&mut self, peer: u64, at: Instant) {
        if self.peers.contains(&peer) {
            let last = self.last_heard.entry(peer).or_insert(at);
            *last = (*last).max(at);
        }
    }

    /// Records that a connection to `peer` was refused at `at`: nothing listens there now.
    pub fn refused(&mut self, peer: u64, at: Instant) {
        if self.peers.contains(&peer) {
            let last = self.last_refused.entry(peer).or_insert(at);
            *last = (*last).max(at);
        }
    }

    pub fn silence(&self, peer: u64, now: Instant) -> Option<Duration> {
        self.last_heard.get(&peer).map(|at| now.saturating_duration_since(*at))
    }

    /// Was a connection to `peer` refused after it was last heard from (its process is gone)?
    fn refused_since_heard(&self, peer: u64) -> bool {
        match (self.last_refused.get(&peer), self.last_heard.get(&peer)) {
            (Some(refused), Some(heard)) => refused >= heard,
            _ => false,
        }
    }

    /// How long `peer` has been silent, when its connection was refused since it last answered:
    /// its process is gone, not merely slow or cut off. `None` otherwise.
    pub fn gone_for(&self, peer: u64, now: Instant) -> Option<Duration> {
        if self.refused_since_heard(peer) {
            self.silence(peer, now)
        } else {
            None
        }
    }

    pub fn state(&self, peer: u64, now: Instant) -> PeerState {
        match self.silence(peer, now) {
            Some(s) if s < SUSPECT_AFTER && !self.refused_since_heard(peer) => PeerState::Alive,
            Some(s) if s < DOWN_AFTER => PeerState::Suspect,
            _ => PeerState::Down,
        }
    }

    /// Does this node hear from a majority of the voters (itself included, when it votes)?
    pub fn hears_majority(&self, now: Instant) -> bool {
        let all: BTreeSet<u64> = self.peers.iter().copied().chain([self.self_id]).collect();
        let voters = self.voters.as_ref().unwrap_or(&all);
        if voters.is_empty() {
            return true; // no membership yet: nothing to hear a majority of
        }
        let heard = voters
            .iter()
            .filter(|v| **v == self.self_id || self.state(**v, now) == PeerState::Alive)
            .count();
        heard * 2 > voters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_silence() {
        let t0 = Instant::now();
        let mut l = Liveness::new(1, [1, 2, 3]);
        assert_eq!(l.state(2, t0), PeerState::Down, "never heard is down");
        l.heard_from(2, t0);
        assert_eq!(l.state(2, t0 + Duration::from_millis(100)), PeerState::Alive);
        assert_eq!(l.state(2, t0 + SUSPECT_AFTER), PeerState::Suspect);
        assert_eq!(l.state(2, t0 + DOWN_AFTER), PeerState::Down);
        l.heard_from(2, t0 - Duration::from_secs(1));
        assert_eq!(
            l.silence(2, t0),
            Some(Duration::ZERO),
            "an older report does not move time back"
        );
        l.heard_from(9, t0);
        assert_eq!(l.peers().count(), 2, "strangers are ignored");
    }

    #[test]
    fn a_refused_connection_ends_alive_until_heard_again() {
        let t0 = Instant::now();
        let mut l = Liveness::new(1, [1, 2, 3]);
        l.heard_from(2, t0);
        l.heard_from(3, t0);
        l.refused(2, t0 + Duration::from_millis(50));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.state(2, t1), PeerState::Suspect, "refused after last heard");
        assert_eq!(l.state(3, t1), PeerState::Alive);
        assert_eq!(l.gone_for(2, t1), Some(Duration::from_millis(100)), "silent since t0");
        assert_eq!(l.gone_for(3, t1), None, "3 was never refused");
        assert!(l.hears_majority(t1), "1 and 3 are a majority of three");
        l.refused(3, t1);
        assert!(!l.hears_majority(t1), "alone of three");
        l.heard_from(2, t1 + Duration::from_millis(10));
        assert_eq!(
            l.state(2, t1 + Duration::from_millis(20)),
            PeerState::Alive,
            "an answer after the refusal"
        );
        assert_eq!(l.gone_for(2, t1 + Duration::from_millis(20)), None);
        assert_eq!(l.state(2, t1 + DOWN_AFTER + Duration::from_millis(10)), PeerState::Down);
    }

    #[test]
    fn membership_changes_replace_the_peers_and_only_voters_count() {
        let t0 = Instant::now();
        let mut l = Liveness::new(1, [1, 2, 3]);
        l.heard_from(2, t0);
        l.heard_from(3, t0);
        l.set_members([1, 2, 4], [1, 2, 4].into());
        assert_eq!(l.peers().collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(l.silence(3, t0), None, "a removed peer is forgotten");
        assert_eq!(l.state(4, t0), PeerState::Down, "a new peer is down until it answers");
        assert!(l.hears_majority(t0), "1 and 2 of 1, 2, 4");
        l.heard_from(3, t0);
        assert_eq!(l.silence(3, t0), None, "a stranger again");
        l.set_members([1, 2, 3, 4], [2, 3, 4].into());
        assert!(
            !l.hears_majority(t0),
            "a learner does not count itself: only 2 of 2, 3, 4"
        );
        l.heard_from(3, t0);
        assert!(l.hears_majority(t0), "2 and 3 of 2, 3, 4");
    }

    #[test]
    fn majority_needs_half_the_peers() {
        let t0 = Instant::now();
        let mut three = Liveness::new(3, [1, 2, 3]);
        assert!(!three.hears_majority(t0), "alone of three");
        three.heard_from(1, t0);
        assert!(three.hears_majority(t0));
        let mut five = Liveness::new(1, 1..=5);
        five.heard_from(2, t0);
        assert!(!five.hears_majority(t0), "two of five");
        five.heard_from(3, t0);
        assert!(five.hears_majority(t0));
        assert!(
            Liveness::new(1, [1]).hears_majority(t0),
            "a single node is its own majority"
        );
    }
}
