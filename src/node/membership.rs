//! Following the replicated membership, and joining a running cluster.
//!
//! [`follow`] watches the Raft group's membership and hands every change to the parts built
//! for a member set: liveness (whom to ping, whose majority counts) and the ap replica (whom
//! to push to and hint for; a removed member's hints are dropped). A new member receives
//! earlier ap data through anti-entropy, like a replica that was away.
//!
//! [`join`] is what `capkv node --join ENDPOINTS` does once the node serves: until its own Raft
//! log lists it as a voter, it asks the cluster at the members' peer addresses (`member add`
//! with its own id and peer address, forwarded to the leader) to add it, and retries. The
//! leader's messages bring the log and the membership, which stay in this node's log and state
//! machine: restarted with the same flags, it finds itself a voter there and asks nothing.
//!
//! Caveats: a node added by an operator's `capkv member add` before it started is not
//! added twice: [`join`] first asks whether it is already listed (as a learner, it asks for the
//! promotion the operator's add could not finish). A node removed while it ran is not added
//! back, but one restarted with `--join` after its removal is.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::error::Error;
use crate::net::peer_channel;
use crate::proto::{self, cluster_client::ClusterClient};

/// How long one join attempt may take: the leader answers after the node caught up, which for
/// a large snapshot takes a while.
const JOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between join attempts that failed.
const JOIN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Applies each membership the Raft group adopts until the task is aborted.
pub async fn follow(node: Arc<Node>) {
    let mut metrics = node.cp().raft().metrics();
    let mut applied = None;
    loop {
        let log_id = metrics.borrow_and_update().membership_config.log_id().to_owned();
        if applied != Some(log_id) {
            node.apply_membership();
            applied = Some(log_id);
        }
        if metrics.changed().await.is_err() {
            return; // Raft stopped
        }
    }
}

/// Asks the cluster at `endpoints` (members' peer addresses) to add this node, until it is a
/// member.
pub async fn join(node: Arc<Node>, endpoints: Vec<String>) {
    let (id, address) = (node.id(), node.address());
    loop {
        if node.cp().voter_ids().contains(&id) {
            tracing::info!(id, "this node votes in the cluster's membership; joined");
            return;
        }
        let role = match ask(&endpoints, Ask::List).await {
            Ok(list) => list.members.into_iter().find(|m| m.id == id).map(|m| m.role),
            Err(e) => {
                tracing::warn!(id, "--join: cannot list the members yet: {e}");
                None
            }
        };
        // Not listed: add it. A learner (an operator's `member add` that ran out of time
        // before this node started): the same add promotes it once it caught up.
        if role.as_deref() != Some("voter") {
            tracing::info!(id, %address, ?role, "--join: asking the cluster to add this node");
            match ask(
                &endpoints,
                Ask::Add {
                    id,
                    address: address.clone(),
                },
            )
            .await
            {
                Ok(_) => tracing::info!(id, "--join: the cluster added this node as a voter"),
                Err(e) => tracing::warn!(id, "--join: adding this node failed, retrying: {e}"),
            }
        }
        tokio::time::sleep(JOIN_RETRY_PAUSE).await;
    }
}

enum Ask {
    List,
    Add { id: u64, address: String },
}

/// Sends one request to the endpoints in turn, over peer channels (the peer port serves the
/// public services without a client token, and carries this node's peer certificate).
async fn ask(endpoints: &[String], what: Ask) -> Result<proto::MemberListResponse, String> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        let mut client = match peer_channel(endpoint) {
            Ok(channel) => ClusterClient::new(channel),
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let answer = match &what {
            Ask::List => client.member_list(timed(proto::MemberListRequest {})).await,
            Ask::Add { id, address } => {
                let req = proto::MemberAddRequest {
                    id: *id,
                    address: address.clone(),
                };
                client.member_add(timed(req)).await
            }
        };
        match answer {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) => errors.push(format!("{endpoint}: {}", Error::from_status(&status))),
        }
    }
    Err(errors.join("; "))
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(JOIN_ATTEMPT_TIMEOUT);
    request
}
