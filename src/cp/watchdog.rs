//! The election watchdog, and the pre-vote stand-in.
//!
//! openraft 0.9 draws its random election timeout once per instance, so two survivors can keep
//! splitting their votes. The watchdog notices a node that has known no leader for a random
//! while and triggers an election, with fresh randomness each time. It also shortens failover
//! when the leader's process is gone (see FAILOVER).
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
//! timer within it. A node that just started waits three grace periods the same way. A node
//! that hears a majority throughout (its leader crashed) campaigns as soon as openraft's timer
//! says so.
//!
//! HOLDING: with short election timeouts, a loaded machine can delay AppendEntries (a batch of
//! large entries, a slow disk) past openraft's election timer although the leader is fine; a
//! follower that campaigns then raises its term, and the leader steps down when it sees it.
//! Pre-vote would stop that (peers that hear their leader refuse to pre-vote); the stand-in is
//! that a follower whose leader answers its pings does not campaign. A leader that was deposed
//! but still answers pings does not hold anyone for long: it knows no leader itself, so its own
//! watchdog campaigns (or a new leader's AppendEntries reaches the followers first).
//!
//! FAILOVER: openraft's own timer campaigns only after its lease plus a random election
//! timeout, checked on ticks of one and a half heartbeats. When liveness knows the leader's
//! process is gone (its connection is refused, not merely silent: see [`crate::liveness`]), the
//! watchdog triggers the election as soon as every voter's lease on the old leader has run out
//! (the maximum election timeout and a heartbeat after its last answer); the survivors take
//! turns by id, a heartbeat apart, so they do not split their votes. A leader that is only cut off (a partition) is left
//! to openraft's timer; a live leader is never the subject of this shortcut.
//!
//! Caveats: a leader that stays unreachable (only to this node) after a heal for longer than the
//! grace period still lets this node campaign, which is what Raft wants in that case. A
//! campaign that comes before some voter's lease ran out is refused by that voter and retried.
//! A leader that answers pings while its Raft messages to this node fail (an asymmetric fault
//! that capkv's fault layer cannot produce, since it filters all peer traffic alike) is not
//! replaced by this node's campaign.

use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics, ServerState};
use rand::Rng;

use super::raft::RaftOptions;
use super::{NodeId, Raft};
use crate::liveness::Reach;

/// Grace periods a node that just started waits before it may campaign: a restarted node's
/// timer would fire at once, and the leader's first AppendEntries to it may wait out a
/// replication backoff, or carry a large batch of the entries it missed.
const STARTUP_GRACES: u32 = 3;

/// What the gate looks at on each step.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    /// Liveness: this node hears a majority, itself included.
    pub hears_majority: bool,
    /// The leader this node follows (another node) answers its pings.
    pub leader_alive: bool,
    /// This node knows a leader (itself or another); it has heard from one since it started.
    pub knows_leader: bool,
}

/// Whether this node may campaign (see HEALING and HOLDING).
#[derive(Debug)]
pub struct ElectionGate {
    /// After a majority comes back, how long elections stay off.
    grace: Duration,
    /// Since when this node has heard a majority without a break (None: it does not now).
    majority_since: Option<Instant>,
    /// No elections before this, unless a leader was heard first (a node that just started).
    quiet_until: Option<Instant>,
}

impl ElectionGate {
    /// A gate for a node that starts now: it waits [`STARTUP_GRACES`] grace periods for the
    /// leader's first AppendEntries, or until it knows a leader. One that already hears a majority (a single-node cluster)
    /// needs no grace.
    pub fn new(grace: Duration, hears_majority_now: bool, now: Instant) -> Self {
        let quiet = if hears_majority_now {
            Duration::ZERO
        } else {
            grace * STARTUP_GRACES
        };
        Self {
            grace,
            majority_since: hears_majority_now.then(|| now.checked_sub(grace).unwrap_or(now)),
            quiet_until: Some(now + quiet),
        }
    }

    /// Takes the latest observations; returns whether elections are allowed now.
    pub fn step(&mut self, seen: Observed, now: Instant) -> bool {
        if seen.knows_leader || self.quiet_until.is_some_and(|t| now >= t) {
            self.quiet_until = None; // the startup wait is over once a leader is heard from
        }
        if !seen.hears_majority {
            self.majority_since = None;
            return false;
        }
        let since = *self.majority_since.get_or_insert(now);
        if self.quiet_until.is_some() || now.saturating_duration_since(since) < self.grace {
            return false;
        }
        !seen.leader_alive
    }
}

/// How often the watchdog looks: small next to any election timeout.
const WATCHDOG_POLL: Duration = Duration::from_millis(50);

/// Keeps elections gated by liveness, and triggers one when this node has known no leader for
/// a random while, or when its leader's process is gone (see FAILOVER).
pub async fn run(raft: Raft, options: RaftOptions, reach: Reach) {
    let mut leaderless_since: Option<Instant> = None;
    let mut patience = random_patience(&options);
    let mut last_trigger: Option<Instant> = None;
    let grace = Duration::from_millis(options.election_timeout_ms_max);
    let mut gate = ElectionGate::new(grace, reach.hears_majority(), Instant::now());
    loop {
        tokio::time::sleep(WATCHDOG_POLL).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let initialized = metrics.membership_config.membership().voter_ids().next().is_some();
        // Like pre-vote: a node that hears no majority does not campaign (and inflate its term),
        // nor does one that only just heard it again (HEALING) or still hears its leader (HOLDING).
        let leader_alive = metrics
            .current_leader
            .is_some_and(|leader| leader != reach.id() && reach.reachable(leader));
        let seen = Observed {
            hears_majority: reach.hears_majority(),
            leader_alive,
            knows_leader: metrics.current_leader.is_some(),
        };
        let may_elect = gate.step(seen, Instant::now());
        raft.runtime_config().elect(may_elect);
        if !initialized || !may_elect || metrics.state == ServerState::Leader {
            leaderless_since = None;
            continue;
        }
        let settled =
            last_trigger.is_none_or(|t| t.elapsed() >= Duration::from_millis(options.election_timeout_ms_min));
        let why = match metrics.current_leader {
            Some(leader) if leader != reach.id() => {
                leaderless_since = None;
                let my_turn = gone_patience(&options, survivor_rank(&metrics, leader, reach.id()));
                match reach.gone_for(leader) {
                    Some(silence) if silence >= my_turn && metrics.state == ServerState::Follower => {
                        format!(
                            "the leader, node {leader}, is gone (its connection is refused; silent for {silence:?})"
                        )
                    }
                    _ => continue,
                }
            }
            Some(_) => continue,
            None => {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if since.elapsed() < patience {
                    continue;
                }
                format!("no leader for {:?}", since.elapsed())
            }
        };
        if !settled {
            continue;
        }
        tracing::info!(term = metrics.current_term, "{why}: triggering an election");
        let _ = raft.trigger().elect().await;
        last_trigger = Some(Instant::now());
        leaderless_since = None;
        patience = random_patience(&options);
    }
}

fn random_patience(options: &RaftOptions) -> Duration {
    let ms = rand::thread_rng().gen_range(options.election_timeout_ms_min..=options.election_timeout_ms_max * 2);
    Duration::from_millis(ms)
}

/// How long a gone leader must have been silent before this node campaigns: every voter's
/// lease on it (the maximum election timeout from its last AppendEntries, which may have come up
/// to a heartbeat after our last ping answer) has run out. The survivors take turns so they do
/// not split their votes: the one with the lowest id goes first, each next one a heartbeat
/// later (by then the first one's vote request has reached it).
fn gone_patience(options: &RaftOptions, rank: usize) -> Duration {
    let turn = rank as u64 * options.heartbeat_interval_ms;
    Duration::from_millis(options.election_timeout_ms_max + options.heartbeat_interval_ms + turn)
}

/// This node's turn among the voters other than the gone `leader` (0: the lowest id).
fn survivor_rank(metrics: &RaftMetrics<NodeId, BasicNode>, leader: NodeId, me: NodeId) -> usize {
    let voters = metrics.membership_config.membership().voter_ids();
    voters.filter(|id| *id != leader && *id < me).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn seen(hears_majority: bool, leader_alive: bool) -> Observed {
        Observed {
            hears_majority,
            leader_alive,
            knows_leader: leader_alive,
        }
    }
    const MAJORITY: Observed = seen(true, false);
    const ALONE: Observed = seen(false, false);

    #[test]
    fn a_majority_regained_opens_the_gate_only_after_the_grace() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut gate = ElectionGate::new(ms(600), false, t0);
        assert!(!gate.step(ALONE, t0), "no majority: no elections");
        assert!(!gate.step(MAJORITY, t0 + ms(100)), "just started");
        assert!(!gate.step(MAJORITY, t0 + ms(1700)), "a fresh node waits three graces");
        assert!(gate.step(MAJORITY, t0 + ms(1800)), "startup grace over");
        assert!(!gate.step(ALONE, t0 + ms(2000)), "cut off");
        assert!(!gate.step(MAJORITY, t0 + ms(2100)), "just healed");
        assert!(!gate.step(MAJORITY, t0 + ms(2600)), "still within the grace");
        assert!(gate.step(MAJORITY, t0 + ms(2700)), "grace over");
    }

    #[test]
    fn survivors_of_a_gone_leader_take_turns_by_id() {
        let options = RaftOptions::default();
        let first = gone_patience(&options, 0);
        assert!(
            first.as_millis() as u64 > options.election_timeout_ms_max,
            "after the voters' lease"
        );
        assert_eq!(
            gone_patience(&options, 1) - first,
            Duration::from_millis(options.heartbeat_interval_ms)
        );
    }

    #[test]
    fn a_fresh_node_that_heard_a_leader_needs_no_startup_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut gate = ElectionGate::new(ms(600), false, t0);
        assert!(!gate.step(seen(true, true), t0 + ms(100)), "its leader answers pings");
        assert!(
            gate.step(seen(true, false), t0 + ms(800)),
            "its leader died: one grace after the majority, not three"
        );
    }

    #[test]
    fn a_node_that_keeps_its_majority_may_elect_at_once() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut gate = ElectionGate::new(Duration::from_millis(600), true, t0);
        assert!(
            gate.step(MAJORITY, t0),
            "a leader crash must not wait for a grace period"
        );
    }

    #[test]
    fn a_leader_that_answers_pings_holds_elections_off() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let ms = Duration::from_millis;
        let mut gate = ElectionGate::new(ms(600), true, t0);
        assert!(!gate.step(seen(true, true), t0), "the leader answers pings");
        assert!(
            !gate.step(seen(true, true), t0 + ms(5000)),
            "however slow its AppendEntries are"
        );
        assert!(
            gate.step(seen(true, false), t0 + ms(5050)),
            "a silent or gone leader holds nothing"
        );
        assert!(
            !gate.step(seen(false, false), t0 + ms(5100)),
            "no majority: no elections"
        );
    }
}
