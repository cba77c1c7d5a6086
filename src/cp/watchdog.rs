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
//! Caveats: between a heal and the first ping that gets through (up to one ping interval), a
//! node whose election timer fires may still campaign.

use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use super::raft::RaftOptions;
use super::Raft;
use crate::liveness::Reach;

/// Triggers an election when this node has known no leader for a random while.
pub async fn run(raft: Raft, options: RaftOptions, reach: Reach) {
    let mut leaderless_since: Option<Instant> = None;
    let mut patience = random_patience(&options);
    loop {
        tokio::time::sleep(Duration::from_millis(options.heartbeat_interval_ms)).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let initialized = metrics.membership_config.membership().voter_ids().next().is_some();
        let hears_majority = reach.hears_majority();
        // Like pre-vote: a node that hears no majority does not campaign (and inflate its term).
        raft.runtime_config().elect(hears_majority);
        let leaderless =
            initialized && hears_majority && metrics.current_leader.is_none() && metrics.state != ServerState::Leader;
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
