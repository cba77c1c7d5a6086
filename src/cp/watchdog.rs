//! The election watchdog, and the pre-vote stand-in.
//!
//! openraft 0.9 draws its random election timeout once per instance, so two survivors can keep
//! splitting their votes. The watchdog notices a node that has known no leader for a random
//! while and triggers an election, with fresh randomness each time.
//!
//! openraft 0.9 has no pre-vote either. The watchdog keeps this node's election timer off while
//! it hears from no majority (liveness pings through the fault filter, see
//! [`crate::liveness::Reach`]), so a node cut off by a partition does not inflate its term and
//! force a needless election when the partition heals.
//!
//! HEALING: a node that hears a majority again after a partition has not heard from the leader
//! for the whole partition, so openraft's timer would fire at once, before the leader's next
//! AppendEntries (delayed by its replication backoff) arrives, and the campaign would depose a
//! healthy leader. The [`ElectionGate`] therefore keeps elections off for a grace period (one
//! maximum election timeout) after a majority comes back; the leader's AppendEntries resets the
//! timer within it. A node that hears a majority throughout (its leader crashed) campaigns as
//! soon as openraft's timer says so.
//!
//! Caveats: a leader that stays unreachable (only to this node) after a heal for longer than the
//! grace period still lets this node campaign, which is what Raft wants in that case.

use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use super::raft::RaftOptions;
use super::Raft;
use crate::liveness::Reach;

/// Whether this node may campaign: it hears a majority, and has for a grace period.
#[derive(Debug)]
pub struct ElectionGate {
    grace: Duration,
    /// Since when this node has heard a majority without a break (None: it does not now).
    majority_since: Option<Instant>,
}

impl ElectionGate {
    /// `hears_majority_now`: a node that starts hearing a majority needs no grace.
    pub fn new(grace: Duration, hears_majority_now: bool, now: Instant) -> Self {
        Self {
            grace,
            majority_since: hears_majority_now.then(|| now.checked_sub(grace).unwrap_or(now)),
        }
    }

    /// Takes the latest liveness verdict; returns whether elections are allowed now.
    pub fn step(&mut self, hears_majority: bool, now: Instant) -> bool {
        if !hears_majority {
            self.majority_since = None;
            return false;
        }
        let since = *self.majority_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.grace
    }
}

/// Triggers an election when this node has known no leader for a random while.
pub async fn run(raft: Raft, options: RaftOptions, reach: Reach) {
    let mut leaderless_since: Option<Instant> = None;
    let mut patience = random_patience(&options);
    let grace = Duration::from_millis(options.election_timeout_ms_max);
    let mut gate = ElectionGate::new(grace, reach.hears_majority(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(options.heartbeat_interval_ms)).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let initialized = metrics.membership_config.membership().voter_ids().next().is_some();
        // Like pre-vote: a node that hears no majority does not campaign (and inflate its term),
        // nor does one that only just heard it again (see HEALING).
        let may_elect = gate.step(reach.hears_majority(), Instant::now());
        raft.runtime_config().elect(may_elect);
        let leaderless =
            initialized && may_elect && metrics.current_leader.is_none() && metrics.state != ServerState::Leader;
        if !leaderless {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= patience {
            tracing::info!(
                term = metrics.current_term,
                "no leader for {:?}: triggering an election",
                since.elapsed()
            );
            let _ = raft.trigger().elect().await;
            leaderless_since = None;
            patience = random_patience(&options);
        }
    }
}

fn random_patience(options: &RaftOptions) -> Duration {
    let ms = rand::thread_rng().gen_range(options.election_timeout_ms_min..=options.election_timeout_ms_max * 2);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_regained_opens_the_gate_only_after_the_grace() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut gate = ElectionGate::new(ms(600), false, t0);
        assert!(!gate.step(false, t0), "no majority: no elections");
        assert!(!gate.step(true, t0 + ms(100)), "just healed");
        assert!(!gate.step(true, t0 + ms(600)), "still within the grace");
        assert!(gate.step(true, t0 + ms(700)), "grace over");
        assert!(!gate.step(false, t0 + ms(800)), "cut off again");
        assert!(!gate.step(true, t0 + ms(900)), "a new grace after each heal");
        assert!(gate.step(true, t0 + ms(1500)));
    }

    #[test]
    fn a_node_that_keeps_its_majority_may_elect_at_once() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut gate = ElectionGate::new(Duration::from_millis(600), true, t0);
        assert!(gate.step(true, t0), "a leader crash must not wait for a grace period");
    }
}
