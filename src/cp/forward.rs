//! Forwarding a CP request from a follower to the leader, once.
//!
//! The forwarded request carries the forwarder's id, so the leader applies the fault filter on
//! its side too and never forwards it again. Errors the leader produced pass through unchanged;
//! a transport failure after sending makes a write's outcome unknown.

use std::future::Future;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::NodeId;
use crate::error::Error;
use crate::request::{Ctx, FORWARDED_FROM_HEADER};

/// Whether the forwarded operation changes state (and so may have happened when it times out).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
}

/// Sends `message` from node `self_id` to the leader with what is left of the request's time.
pub async fn forward<Req, Resp, F, Fut>(
    self_id: NodeId,
    ctx: &Ctx,
    leader: NodeId,
    channel: Channel,
    message: Req,
    effect: Effect,
    call: F,
) -> Result<Resp, Error>
where
    F: FnOnce(Channel, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_FROM_HEADER,
        self_id.to_string().parse().expect("a number is a valid header value"),
    );
    let remaining = ctx.remaining();
    request.set_timeout(remaining);
    let failed = |why: String| match effect {
        Effect::Write => Error::OutcomeUnknown(format!(
            "node {} forwarded the write to the leader, node {leader}, and {why}; it may or may not have been applied",
            self_id
        )),
        Effect::Read => Error::NoQuorum(format!(
            "node {} forwarded the read to the leader, node {leader}, and {why}",
            self_id
        )),
    };
    match tokio::time::timeout(remaining, call(channel, request)).await {
        Err(_) => Err(failed(format!("got no answer within {} ms", remaining.as_millis()))),
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.metadata().get("capkv-error").is_some() => Err(Error::from_status(&status)),
        Ok(Err(status)) => Err(failed(format!("the connection failed ({})", status.message()))),
    }
}
