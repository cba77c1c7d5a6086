//! Forwarding a CP request from a follower to the leader, and riding through a failover.
//!
//! [`Cp::at_leader`] routes a request ([`super::route`]): when this node leads it returns and
//! the caller runs the request here; otherwise it forwards the client's request to the leader.
//! The forwarded request carries the forwarder's id, so the leader applies the fault filter on
//! its side too and never forwards it again. Errors the leader produced pass through unchanged.
//!
//! FAILOVER: a forward that could not be sent (the connection to the leader was refused or
//! timed out while opening: [`crate::error::never_sent`]) certainly did not reach the leader,
//! and neither did one the leader refused as "no quorum" (a deposed leader). Both are retried:
//! route again (which waits for a new leader when the old one falls silent) and forward to
//! whoever leads then, until the request's deadline. Only a failure after the request was sent
//! (no answer in time, a connection lost mid-call) makes a write's outcome unknown.
//!
//! Caveats: a leader killed after it received the request but before it answered leaves that
//! one write's outcome unknown; nothing at this layer can tell whether it was proposed.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::path::Cp;
use super::route::Route;
use super::NodeId;
use crate::error::{never_sent, Error};
use crate::request::{Ctx, FORWARDED_FROM_HEADER, LEADER_ENDPOINT_HEADER};

/// Pause before a forward that certainly did not apply is routed and sent again: long enough
/// not to spin on a dead leader's refused connections, short next to an election.
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Whether the forwarded operation changes state (and so may have happened when it times out).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
}

impl Cp {
    /// Runs `message` at the leader when another node leads (`Ok(Some(answer))`), or returns
    /// `Ok(None)` when this node leads and the caller runs it here. Retries forwards that
    /// certainly did not apply until the request's deadline.
    pub(super) async fn at_leader<Req, Resp, F, Fut>(
        &self,
        ctx: &Ctx,
        message: Req,
        effect: Effect,
        call: F,
    ) -> Result<Option<Resp>, Error>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        loop {
            let (leader, channel) = match self.route(ctx.deadline, ctx.forwarded_from).await? {
                Route::Local => return Ok(None),
                Route::Forward { leader, channel } => (leader, channel),
            };
            match forward(self.id, ctx, leader, channel, message.clone(), effect, &call).await {
                Err(e) if e.definitely_not_applied() && ctx.remaining() > FORWARD_RETRY_PAUSE => {
                    tracing::debug!(leader, error = %e, "forward did not reach a leader; routing again");
                    tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
                }
                result => return result.map(Some),
            }
        }
    }
}

/// Sends `message` from node `self_id` to the leader with what is left of the request's time.
pub async fn forward<Req, Resp, F, Fut>(
    self_id: NodeId,
    ctx: &Ctx,
    leader: NodeId,
    channel: Channel,
    message: Req,
    effect: Effect,
    call: &F,
) -> Result<Resp, Error>
where
    F: Fn(Channel, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_FROM_HEADER,
        self_id.to_string().parse().expect("a number is a valid header value"),
    );
    let remaining = ctx.remaining();
    request.set_timeout(remaining);
    match tokio::time::timeout(remaining, call(channel, request)).await {
        Err(_) => Err(lost(
            self_id,
            leader,
            effect,
            format!("got no answer within {} ms", remaining.as_millis()),
        )),
        Ok(Ok(response)) => {
            // The leader names its client address; our answer passes it on to the client.
            if let Some(endpoint) = response.metadata().get(LEADER_ENDPOINT_HEADER) {
                let _ = ctx.leader_endpoint.set(endpoint.clone());
            }
            Ok(response.into_inner())
        }
        Ok(Err(status)) => Err(forward_error(self_id, leader, effect, &status)),
    }
}

/// The error of a forward that failed with `status`: the leader's own error, "not sent" when
/// the connection could not be opened, else lost after sending.
fn forward_error(self_id: NodeId, leader: NodeId, effect: Effect, status: &Status) -> Error {
    if status.metadata().get("capkv-error").is_some() {
        return Error::from_status(status);
    }
    if never_sent(status) {
        return Error::Unreachable(format!(
            "node {self_id} could not connect to the leader, node {leader} ({}); the request was never sent",
            status.message()
        ));
    }
    lost(
        self_id,
        leader,
        effect,
        format!("the connection failed ({})", status.message()),
    )
}

/// A forward that failed after it was sent: a write's outcome is unknown.
fn lost(self_id: NodeId, leader: NodeId, effect: Effect, why: String) -> Error {
    match effect {
        Effect::Write => Error::OutcomeUnknown(format!(
            "node {self_id} forwarded the write to the leader, node {leader}, and {why}; it may or may not have been applied"
        )),
        Effect::Read => Error::NoQuorum(format!(
            "node {self_id} forwarded the read to the leader, node {leader}, and {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn connect_failures_are_not_applied_and_lost_writes_are_unknown() {
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))));
        let e = forward_error(2, 1, Effect::Write, &refused);
        assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
        assert_eq!(e.exit_code(), 3);
        let reset = Status::unavailable("connection reset");
        let e = forward_error(2, 1, Effect::Write, &reset);
        assert_eq!(
            e.exit_code(),
            4,
            "a write lost after sending may have been applied: {e:?}"
        );
        let e = forward_error(2, 1, Effect::Read, &reset);
        assert_eq!(e.exit_code(), 3, "a read has no effect: {e:?}");
        let leaders_own = Status::from(Error::NoQuorum("node 1 lost its majority".into()));
        assert!(matches!(
            forward_error(2, 1, Effect::Write, &leaders_own),
            Error::NoQuorum(_)
        ));
    }
}
